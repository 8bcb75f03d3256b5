/* adapter_store/store.h — the adapter store on LMDB: the source of truth for adapters.
 *
 * One environment (a directory) with named sub-databases:
 *   "meta"   key  <name>                         value  astore_meta, serialised as JSON
 *   "blobs"  key  <sha256 hex>                   value  the version's blob (adapter_blob.h)
 *   "refs"   key  <sha256 hex>                   value  uint32 LE: meta records naming it
 *   "info"   key  "schema" / "base"              value  schema version / base fingerprint
 *   "tenants", "keys"                            tenants and hashed API keys (tenant_store.h)
 *   "changes" key  <u64 big-endian sequence>     value  one change record (store_changes.h)
 *
 * Owner scoping (multi-tenant, server/tenants/tenants.h): a "meta" key is the adapter's
 * name for a public adapter (owner "", published by the admin or any single-user run) and
 * "<owner>/<name>" for a tenant's private one. Tenant ids never contain '/'. Names may
 * (Hugging Face-style ids "org/name"): in a key each '/' of the name is written ':', a
 * byte no name or tenant id may hold, so a key's only '/' is the owner separator —
 * public "x/a" is key "x:a", tenant x's "a" is "x/a", tenant x's "org/a" is "x/org:a";
 * no two (owner, name) pairs share a key. Stores written before names could hold '/'
 * have no ':' in any key and read unchanged (no migration), and two tenants can both own
 * "support-bot". The *_scoped functions build that key from (owner, name); the plain ones
 * take the key as given (for a name without '/' the key is the name).
 * A blob is shared by every name whose current version has the same content. Uploading
 * is ONE write transaction (blob + refs + meta), so an adapter is either entirely present
 * or absent, whatever happens to the process. The map grows automatically (doubling) up
 * to max_map_bytes; beyond that a put fails with PEFTD_ENOSPC and nothing stored is lost.
 *
 * Thread-safety: any thread may call any function (LMDB serialises writers; readers use
 * short read transactions with MDB_NOTLS and copy values out before the transaction ends).
 */
#ifndef PEFTD_STORE_H
#define PEFTD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapter_store/adapter.h"

#define ASTORE_NAME_MAX 64

/* What the store knows about one adapter without loading it. */
typedef struct {
    char name[ASTORE_NAME_MAX + 1];
    char owner[ASTORE_NAME_MAX + 1];   /* tenant id; "" = public / single-user */
    adapter_kind kind;
    char sha256[65];                   /* content hash of the current version */
    uint64_t version;                  /* 1, 2, ... per name (increments on each upload) */
    int64_t created;                   /* unix seconds of the first upload of the name */
    int64_t updated;                   /* unix seconds of the current version */
    uint64_t bytes;                    /* blob bytes */
    int64_t n_params;
    int n_ranks;
    int ranks[8];
    int n_virtual;                     /* prompt/prefix tuning */
    char targets[256];                 /* comma-separated target modules */
    char base_fingerprint[65];         /* the base model it was validated against */
} astore_meta;

typedef struct astore astore;

typedef struct {
    size_t map_bytes;       /* initial map size (0: 64 MiB); a reopened store keeps the size it grew to */
    size_t max_map_bytes;   /* growth limit: beyond it puts fail with PEFTD_ENOSPC (0: 64 GiB) */
    bool exclusive;         /* take an exclusive flock on <dir>/peftd.lock for the store's life:
                             * a second process asking the same gets PEFTD_EBUSY (the daemon sets
                             * it: two daemons on one store would disagree about its contents) */
    uint64_t changes_retain; /* change records kept for followers (0: 100000); older ones
                             * are dropped and a follower behind them resyncs in full */
} astore_options;

/* Opens (creating if needed) the store in dir. A store whose "info" schema is newer than
 * this build's is refused with PEFTD_EUNSUPPORTED; a data.mdb shorter than its own meta
 * page says (truncated: touching it would be SIGBUS) with PEFTD_EFORMAT; a store locked by
 * another process (opt->exclusive) with PEFTD_EBUSY. err names the file and the reason.
 * @note caller owns *out: astore_close(). */
int astore_open(const char *dir, const astore_options *opt, astore **out, char *err, size_t errlen);
void astore_close(astore *s); /* NULL is a no-op */

/* Stores blob as the new current version of meta->name (under its public key,
 * astore_key("", name)) in one transaction; meta->version
 * and created/updated are assigned (returned through *stored). The previous version's
 * blob is dropped when no name refers to it any more (*old_sha256 gets its hash, "" when
 * none, so caches can drop it). PEFTD_ENOSPC: the store is full (nothing changed). */
int astore_put(astore *s, const astore_meta *meta, const void *blob, size_t len, astore_meta *stored,
               char old_sha256[65]);
/* Details of astore_put: stored->bytes is set to len. Blobs are content-addressed by
 * meta->sha256: when a blob with that hash is already stored it is kept and blob is not
 * written again. *old_sha256 is set only when a blob was actually dropped (the last name
 * referring to it moved on), so a cache may forget exactly that hash. stored / old_sha256
 * may be NULL. PEFTD_EINVAL: a name of 0 or > ASTORE_NAME_MAX bytes, sha256 not 64
 * lowercase hex digits, an unknown kind, negative counts, or unterminated strings. */

/* The "meta" key of (owner, name): "name" when owner is "", else "owner/name", with each
 * '/' of name written ':' (owner scoping above). PEFTD_EINVAL for a name of 0 or more
 * than ASTORE_NAME_MAX bytes or holding ':', or an owner that is too long or holds '/'
 * or ':'. */
#define ASTORE_KEY_MAX (2 * ASTORE_NAME_MAX + 1)
int astore_key(const char *owner, const char *name, char out[ASTORE_KEY_MAX + 1]);

/* astore_put under the scoped key of (meta->owner, meta->name). quota_bytes > 0 (tenants
 * only): -EDQUOT when the owner's stored bytes (the sum of its records' bytes, a shared
 * blob counted once per name) would exceed it after this put; checked inside the write
 * transaction, so concurrent uploads cannot overshoot together. */
int astore_put_scoped(astore *s, const astore_meta *meta, uint64_t quota_bytes, const void *blob, size_t len,
                      astore_meta *stored, char old_sha256[65]);
/* astore_put_scoped for a tenant's adapter (meta->owner != ""): stored only if the
 * owner's tenant record (tenant_store.h) exists when the write transaction runs, so an
 * upload racing its tenant's deletion can never leave an adapter behind: -ENOENT then. */
int astore_put_tenant(astore *s, const astore_meta *meta, uint64_t quota_bytes, const void *blob, size_t len,
                      astore_meta *stored, char old_sha256[65]);
/* What a bulk removal took away, for the registry and the caches to follow: the meta keys
 * deleted and the blob hashes dropped (no name refers to them any more).
 * @note the owner frees the arrays with astore_removed_free(). */
typedef struct {
    char (*keys)[ASTORE_KEY_MAX + 1];
    int n_keys;
    char (*dropped)[65];
    int n_dropped;
} astore_removed;
void astore_removed_free(astore_removed *r); /* frees the arrays, zeroes *r; NULL is a no-op */
int astore_get_meta_scoped(astore *s, const char *owner, const char *name, astore_meta *out);
int astore_delete_scoped(astore *s, const char *owner, const char *name, char old_sha256[65]);
/* What owner sees, in key order of the names after `after` (a name; the order of the
 * names' key forms, '/' sorting as ':'): its own records merged with the public ones, its
 * own shadowing a public one of the same name. owner "" = the public ones only. */
int astore_list_visible(astore *s, const char *owner, const char *after, int limit, astore_meta *out, int *n,
                        bool *more);
/* The sum of owner's (non-empty) records' bytes. */
int astore_owner_bytes(astore *s, const char *owner, uint64_t *bytes);

/* PEFTD_ENOTFOUND when absent. name is a key (astore_key: "name", "org:name", "owner/name"). */
int astore_get_meta(astore *s, const char *name, astore_meta *out);
/* Copies the blob with this content hash out. @note caller frees *blob.
 * Every stored blob carries a sha256 of its own bytes (separate from the content hash
 * that keys it, which is over the uploaded files); a mismatch on read -> PEFTD_EIO, so a
 * damaged blob is never handed to the decoder. PEFTD_ENOTFOUND when absent. */
int astore_get_blob(astore *s, const char *sha256, void **blob, size_t *len);
/* Removes the record under key name (as astore_get_meta; and its blob if unshared);
 * *old_sha256 as for astore_put. */
int astore_delete(astore *s, const char *name, char old_sha256[65]);

/* Up to limit metas in key order, strictly after the key `after` ("" = from the start);
 * *more tells whether others follow. */
int astore_list(astore *s, const char *after, int limit, astore_meta *out, int *n, bool *more);
int astore_count(astore *s, uint64_t *n);

typedef struct {
    uint64_t map_bytes, used_bytes, entries, blobs;
} astore_stats;
int astore_get_stats(astore *s, astore_stats *st);

#endif
