/* adapter_store/store_changes.h — the store's ordered change feed (primary side) and the
 * follower's side of replication (applying changes in order, idempotently).
 *
 * Feed ("changes" sub-database): every catalogue write (adapter put / delete, tenant
 * create / update / delete, key add / revoke) appends one record keyed by the next
 * sequence number (u64 big-endian, so key order is sequence order) in the SAME LMDB write
 * transaction as the change itself: the feed can never disagree with the store, and a
 * crash loses both or neither. A record is compact JSON:
 *   {"seq":N,"time":unix_s,"op":OP,"key":K, ...}
 *   op "put"            K = meta key (name / owner/name), "blob_sha256": sha256 hex of the
 *                       blob payload (what GET /v1/replication/blobs/{sha256} returns),
 *                       "meta": the meta record (store.h) with its version and times
 *   op "delete"         K = meta key
 *   op "tenant_put"     K = tenant id, "record": the tenant record (tenant_store.h)
 *   op "tenant_delete"  K = tenant id (its keys and adapters go with it)
 *   op "key_put"        K = key sha256, "record": the key record
 *   op "key_revoke"     K = tenant id, "key_id": the key's id
 * Only the last changes_retain records are kept (astore_options); info "change_seq" holds
 * the last number given, so numbers never repeat even when every record was dropped.
 * info "feed_id" (32 random hex digits, made when the store is created) names this
 * history: a follower that finds another id behind the same URL (a primary restored from
 * a backup, replaced, or a promoted follower) resyncs in full instead of trusting numbers
 * that belong to another history.
 *
 * Follower: its own store holds info "replica_seq", the last change applied, written in
 * the same transaction as the applied change (so a restart resumes exactly after it).
 * astore_apply_* with seq <= that position change nothing and return 1 (idempotent);
 * seq 0 is a resync's write: applied, position untouched (astore_apply_position sets it
 * once the whole snapshot is in). Applied changes are not appended to the follower's feed.
 *
 * Thread-safety: as store.h.
 */
#ifndef PEFTD_STORE_CHANGES_H
#define PEFTD_STORE_CHANGES_H

#include <stdint.h>

#include "adapter_store/store.h"

/* last: the last sequence number given (0: none yet); oldest: the oldest retained
 * record's (0: none retained). */
int astore_changes_info(astore *s, uint64_t *last, uint64_t *oldest);
/* This store's feed identity (see above). */
int astore_feed_id(astore *s, char out[33]);

/* The records after `after`, at most limit of them (limit >= 1), as the text of a JSON
 * array in *json, read in one snapshot with *last / *oldest (astore_changes_info).
 * *resync = true when records after `after` were already dropped (after + 1 < oldest, or
 * none retained while last > after), or when after > last (the reader followed another
 * history): it must resync in full (*json is "[]").
 * @note caller frees *json. */
int astore_changes_read(astore *s, uint64_t after, int limit, char **json, int *n, uint64_t *last,
                        uint64_t *oldest, bool *resync);

/* The whole catalogue in one read snapshot, for a follower's full resync:
 *   {"seq":last,"feed_id":"...","adapters":[{"key","blob_sha256","meta"}...],"tenants":[record...],
 *    "keys":[record...]}
 * @note caller frees *json. */
int astore_snapshot(astore *s, char **json);

/* ---- follower side */

/* A meta record's JSON (as in a "put" change) decoded and checked like one read from
 * disk: PEFTD_EFORMAT when a field is missing or of the wrong type. */
int astore_meta_parse(const char *json, size_t len, astore_meta *out);

/* The last change applied (0: none). */
int astore_replica_seq(astore *s, uint64_t *seq);
/* Stores blob under meta's key as given (version, created, updated kept: the primary's),
 * in one transaction with the position. 1: seq already applied (nothing changed).
 * stored / dropped as astore_put (dropped: a blob no name refers to any more, or ""). */
int astore_apply_put(astore *s, uint64_t seq, const astore_meta *meta, const void *blob, size_t len,
                     astore_meta *stored, char dropped[65]);
/* Removes key (a meta key) when present (absent is not an error: idempotent). */
int astore_apply_delete(astore *s, uint64_t seq, const char *key, char dropped[65]);
/* A tenant / key change (op as in the feed); record: the record's JSON, or NULL for
 * deletions; key_id for key_revoke. *removed (may be NULL): the adapters a tenant's
 * deletion took with it (@note caller frees: astore_removed_free). */
int astore_apply_tenant(astore *s, uint64_t seq, const char *op, const char *key, const char *record,
                        const char *key_id, astore_removed *removed);
/* Sets the position to seq (a change this follower has nothing to do for, or the end of
 * a resync); force: also when seq is not above the current position. */
int astore_apply_position(astore *s, uint64_t seq, bool force);
/* The end of a resync: position seq of the primary's feed feed_id, in one transaction. */
int astore_apply_resynced(astore *s, uint64_t seq, const char *feed_id);
/* The feed id of the primary whose position this store holds ("" when none recorded). */
int astore_replica_feed(astore *s, char out[33]);

#endif
