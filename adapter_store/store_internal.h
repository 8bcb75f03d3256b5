/* adapter_store/store_internal.h — what the store's files share with each other and with
 * the other files that keep records in the store's LMDB environment (tenant_store.c):
 *   store.c        the environment, its named databases, the transaction helpers with
 *                  their locking and map growth, and the read-and-decode of one record;
 *   store_meta.c   the meta record codec, owner-scoped keys and the reads of meta records;
 *   store_blobs.c  blob records, their refcounts, and the writes (put / delete) that move
 *                  them.
 * Calls point one way: store_blobs.c → store_meta.c → store.c (tenant_store.c uses all
 * three). Nothing outside adapter_store/ includes this header.
 *
 * Threads: every function here runs on any thread; the *_txn ones only inside the
 * transaction they are given (LMDB: one transaction per thread at a time).
 */
#ifndef PEFTD_STORE_INTERNAL_H
#define PEFTD_STORE_INTERNAL_H

#include <cJSON.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "adapter_store/store.h"

/* Version of the meta record layout and of the database set; "info"/"schema" holds it. A
 * store written by a newer peftd is refused rather than misread. */
#define ASTORE_SCHEMA 1
/* 2^53: integers beyond are not exact through JSON's doubles. */
#define ASTORE_JSON_BIG 9007199254740992.0

struct astore {
    MDB_env *env;
    MDB_dbi meta, blobs, refs, info;
    MDB_dbi tenants, keys; /* tenant_store.h's schema */
    MDB_dbi changes;       /* the change feed (store_changes.h) */
    uint64_t retain;       /* change records kept (astore_options.changes_retain) */
    size_t max_map;
    int lock_fd;           /* astore_options.exclusive: the flocked <dir>/peftd.lock; -1 = none */
    pthread_mutex_t write_lock;
    pthread_rwlock_t map_lock;
};

/* A C string as an LMDB key or value (not copied: s must outlive its use). */
static inline MDB_val astore__val_str(const char *s) {
    return (MDB_val){.mv_size = strlen(s), .mv_data = (void *)s};
}

/* ---- store.c: environment and transactions */

/* An LMDB or errno-style code as a project status (0 stays 0). */
int astore__status(int rc);

/* Starts a short read transaction; map_lock is held shared until astore__read_end. */
int astore__read_begin(astore *s, MDB_txn **txn);
void astore__read_end(astore *s, MDB_txn *txn);

/* The body of a write transaction: returns 0 to commit, an MDB or PEFTD code to abort. It
 * may run several times (after the map grew), so it must only write into txn and ctx. */
typedef int (*astore__write_fn)(astore *s, MDB_txn *txn, void *ctx);

/* Runs fn in one write transaction, growing the map and retrying on MDB_MAP_FULL; beyond
 * max_map the transaction is aborted (nothing changed) and PEFTD_ENOSPC returned. */
int astore__write_txn(astore *s, astore__write_fn fn, void *ctx);

/* Decodes the record v stored under key k into out (a record of the decoder's type):
 * 0, or a PEFTD code (records come from disk: hostile). */
typedef int (*astore__decode_fn)(const MDB_val *k, const MDB_val *v, void *out);

/* The record under key in dbi, decoded into out inside one short read transaction (the
 * value is decoded before the transaction ends: out owns copies). PEFTD_ENOTFOUND when
 * absent. */
int astore__get_decoded(astore *s, MDB_dbi dbi, const char *key, astore__decode_fn decode, void *out);

/* ---- store_meta.c: meta records and owner-scoped keys */

/* 64 lowercase hex digits then NUL (NULL: false). */
bool astore__sha_valid(const char *h);
/* 1 to ASTORE_NAME_MAX bytes without ':' (the key form of a name's '/'; NULL: false). */
bool astore__name_valid(const char *n);

/* o[k] as a string of fewer than cap bytes copied into dst / as an integral number in
 * [lo, hi] (|lo|, |hi| <= ASTORE_JSON_BIG); false when absent or of another type. */
bool astore__json_str(const cJSON *o, const char *k, char *dst, size_t cap);
bool astore__json_int(const cJSON *o, const char *k, double lo, double hi, int64_t *out);

/* A meta record as compact JSON. @note caller frees the result (NULL: out of memory). */
char *astore__meta_encode(const astore_meta *m);
/* Decodes a meta record, every field type-checked (PEFTD_EFORMAT, or PEFTD_EUNSUPPORTED
 * for a newer schema). */
int astore__meta_decode(const void *data, size_t len, astore_meta *m);
/* astore__meta_decode, and the record must describe its key (name, or owner/name);
 * an astore__decode_fn with out an astore_meta. */
int astore__meta_decode_key(const MDB_val *k, const MDB_val *v, void *out);
/* What astore__meta_decode would refuse must never be written. */
bool astore__meta_storable(const astore_meta *m);

/* Positions cur at the first key starting with prefix; MDB_NOTFOUND when there is none. */
int astore__prefix_first(MDB_cursor *cur, const char *prefix, MDB_val *k, MDB_val *v);
/* Sum of the bytes of owner's records (keys "owner/..."), inside txn. */
int astore__owner_bytes_txn(astore *s, MDB_txn *txn, const char *owner, uint64_t *sum);

/* ---- store_blobs.c: blobs, refcounts, put / delete */

/* Deletes every record owner owns (keys "owner/...") inside txn, with their blob
 * references (a blob goes with its last reference), and appends the deleted keys and the
 * dropped hashes to *r (may be NULL). owner must be a valid, non-empty tenant id. */
int astore__delete_owner_txn(astore *s, MDB_txn *txn, const char *owner, astore_removed *r);

/* ---- store_changes.c: the change feed and the follower's position (store_changes.h) */

/* Appends the change record {"seq","time","op","key"[,extra]} (extra: more JSON members
 * without the leading comma, or NULL) inside txn with the next sequence number, and drops
 * the oldest records beyond the retention bound. Every catalogue write calls it in its
 * own transaction, so the feed can never disagree with the store. */
int astore__change_txn(astore *s, MDB_txn *txn, const char *op, const char *key, const char *extra);
/* Follower side: when seq > 0, the position "replica_seq" must be below seq (else
 * *skip = true, 0 returned: the change was applied before) and is set to seq inside txn.
 * seq 0 (a resync's writes) leaves the position alone. */
int astore__position_txn(astore *s, MDB_txn *txn, uint64_t seq, bool *skip);
/* Gives the store its change feed's identity (info "feed_id", 32 random hex digits) when
 * it has none: followers tell a restored or replaced primary's feed from the one they
 * followed by it. */
int astore__feed_init_txn(astore *s, MDB_txn *txn);
/* The hex of the blob record's own payload checksum (store_blobs.c's header) under sha. */
int astore__blob_sum_txn(astore *s, MDB_txn *txn, const char *sha, char out[65]);

#endif
