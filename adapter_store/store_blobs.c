/* adapter_store/store_blobs.c — the adapter store's blob records and their refcounts
 * ("blobs" and "refs", schema in store.h), and the writes that move them: put (blob +
 * refs + meta in one write transaction), delete, and the removal of an owner's records.
 * Meta records through store_meta.c's codec, transactions through store.c's helpers
 * (store_internal.h).
 *
 * Blob record ("blobs" value):  "PFB1" | 4 reserved zero bytes | sha256(payload) (32 bytes)
 *                               | payload (the bytes given to astore_put)
 * The key (store.h's sha256) is the adapter's content hash over the files as uploaded, so
 * it cannot check the stored bytes; the embedded checksum can, and astore_get_blob
 * verifies it on every read, so a corrupted blob is reported instead of decoded.
 */
#include "adapter_store/store.h"

#include <errno.h>
#include <lmdb.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapter_store/store_changes.h"
#include "adapter_store/store_internal.h"

#define BLOB_MAGIC "PFB1"
#define BLOB_HDR 40 /* magic 4 + reserved 4 + sha256 32 */

static int sha256(const void *p, size_t n, unsigned char out[32]) {
    unsigned int dl = 0;
    if (!EVP_Digest(p, n, out, &dl, EVP_sha256(), NULL) || dl != 32) return PEFTD_EIO;
    return 0;
}

/* ---------------------------------------------------------------- refs and blobs */

static int ref_get(astore *s, MDB_txn *txn, const char *sha, uint32_t *n) {
    MDB_val k = astore__val_str(sha), v;
    int rc = mdb_get(txn, s->refs, &k, &v);
    *n = 0;
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (v.mv_size != 4) return PEFTD_EFORMAT;
    const unsigned char *p = v.mv_data;
    *n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return 0;
}

static int ref_set(astore *s, MDB_txn *txn, const char *sha, uint32_t n) {
    MDB_val k = astore__val_str(sha);
    if (n == 0) {
        int rc = mdb_del(txn, s->refs, &k, NULL);
        return rc == MDB_NOTFOUND ? 0 : rc;
    }
    unsigned char b[4] = {(unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
                          (unsigned char)(n >> 24)};
    MDB_val v = {.mv_size = 4, .mv_data = b};
    return mdb_put(txn, s->refs, &k, &v, 0);
}

/* One more name refers to sha; stores the blob record when it is not there yet (blobs are
 * content-addressed: an existing record for the same hash is kept as is). */
static int ref_inc(astore *s, MDB_txn *txn, const char *sha, const void *blob, size_t len,
                   const unsigned char sum[32]) {
    uint32_t n;
    int rc = ref_get(s, txn, sha, &n);
    if (rc) return rc;
    if (n == UINT32_MAX) return PEFTD_ERANGE;
    MDB_val k = astore__val_str(sha), v;
    rc = mdb_get(txn, s->blobs, &k, &v);
    if (rc == MDB_NOTFOUND) {
        /* MDB_RESERVE: write the record straight into the map, no staging copy */
        v = (MDB_val){.mv_size = BLOB_HDR + len, .mv_data = NULL};
        if ((rc = mdb_put(txn, s->blobs, &k, &v, MDB_RESERVE))) return rc;
        unsigned char *p = v.mv_data;
        memcpy(p, BLOB_MAGIC, 4);
        memset(p + 4, 0, 4);
        memcpy(p + 8, sum, 32);
        if (len) memcpy(p + BLOB_HDR, blob, len);
    } else if (rc) {
        return rc;
    }
    return ref_set(s, txn, sha, n + 1);
}

/* One name fewer refers to sha; the blob goes with the last reference (dropped[] = sha
 * then). A missing count means the records disagree: reported as a corrupt store rather
 * than aborting the daemon over bytes on disk. */
static int ref_dec(astore *s, MDB_txn *txn, const char *sha, char dropped[65]) {
    uint32_t n;
    int rc = ref_get(s, txn, sha, &n);
    if (rc) return rc;
    if (n == 0) return PEFTD_EFORMAT;
    if ((rc = ref_set(s, txn, sha, n - 1))) return rc;
    if (n == 1) {
        MDB_val k = astore__val_str(sha);
        rc = mdb_del(txn, s->blobs, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) return rc;
        memcpy(dropped, sha, 65);
    }
    return 0;
}

int astore_get_blob(astore *s, const char *sha, void **blob, size_t *len) {
    if (blob) *blob = NULL;
    if (len) *len = 0;
    if (!s || !blob || !len || !sha || strnlen(sha, 65) != 64 || !astore__sha_valid(sha)) return PEFTD_EINVAL;
    MDB_txn *txn;
    unsigned char want[32], got[32];
    void *copy = NULL;
    size_t n = 0;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    MDB_val k = astore__val_str(sha), v;
    rc = mdb_get(txn, s->blobs, &k, &v);
    if (rc == 0) {
        if (v.mv_size < BLOB_HDR || memcmp(v.mv_data, BLOB_MAGIC, 4)) {
            rc = PEFTD_EFORMAT;
        } else {
            n = v.mv_size - BLOB_HDR;
            copy = malloc(n ? n : 1);
            if (!copy) {
                rc = PEFTD_ENOMEM;
            } else {
                memcpy(want, (const unsigned char *)v.mv_data + 8, 32);
                memcpy(copy, (const unsigned char *)v.mv_data + BLOB_HDR, n);
            }
        }
    }
    astore__read_end(s, txn);
    rc = astore__status(rc);
    /* verified after the transaction ended: hashing megabytes need not pin the snapshot */
    if (rc == 0 && (rc = sha256(copy, n, got)) == 0 && memcmp(want, got, 32)) rc = PEFTD_EIO;
    if (rc) {
        free(copy);
        return rc;
    }
    *blob = copy;
    *len = n;
    return 0;
}


/* ---------------------------------------------------------------- put / delete */

typedef struct {
    const astore_meta *in;
    const char *key;         /* the record's key: the name, or owner/name (scoped) */
    uint64_t quota;          /* scoped puts: the owner's byte limit (0 = none) */
    bool need_tenant;        /* astore_put_tenant: the owner's tenant record must exist */
    const void *blob;
    size_t len;
    unsigned char sum[32];
    int64_t now;
    bool replica;            /* astore_apply_put: meta as given, position instead of feed */
    uint64_t seq;            /* its change's sequence number (0: a resync's write) */
    bool skip;               /* that change was applied before: nothing written */
    astore_meta out;
    char dropped[65];
} put_ctx;

static void hex32(const unsigned char b[32], char out[65]) {
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* The feed record of a put: the payload checksum and the stored meta record (json). */
static int put_change(astore *s, MDB_txn *txn, const put_ctx *p, const char *json) {
    char sum[65];
    hex32(p->sum, sum);
    size_t n = strlen(json) + 128;
    char *extra = malloc(n);
    if (!extra) return PEFTD_ENOMEM;
    snprintf(extra, n, "\"blob_sha256\":\"%s\",\"meta\":%s", sum, json);
    int rc = astore__change_txn(s, txn, "put", p->key, extra);
    free(extra);
    return rc;
}

static int put_fn(astore *s, MDB_txn *txn, void *vctx) {
    put_ctx *p = vctx;
    astore_meta old;
    bool had = false;
    MDB_val k = astore__val_str(p->key), v;
    p->dropped[0] = 0;
    int rc;
    if (p->replica && ((rc = astore__position_txn(s, txn, p->seq, &p->skip)) || p->skip)) return rc;
    if (p->need_tenant) {
        /* in the same transaction as the put: a tenant deleted before it commits (its
         * adapters with it, tenant_store.c) makes this put fail, never outlive it */
        MDB_val tk = astore__val_str(p->in->owner), tv;
        rc = mdb_get(txn, s->tenants, &tk, &tv);
        if (rc == MDB_NOTFOUND) return -ENOENT;
        if (rc) return rc;
    }
    rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == 0) {
        if ((rc = astore__meta_decode(v.mv_data, v.mv_size, &old))) return rc;
        had = true;
    } else if (rc != MDB_NOTFOUND) {
        return rc;
    }
    if (p->quota) {
        /* inside the write transaction, so two concurrent uploads cannot both fit */
        uint64_t used = 0;
        if ((rc = astore__owner_bytes_txn(s, txn, p->in->owner, &used))) return rc;
        if (had) used -= used >= old.bytes ? old.bytes : used;
        if (used + p->len > p->quota) return -EDQUOT;
    }
    p->out = *p->in;
    if (!p->replica) {
        p->out.version = had ? old.version + 1 : 1;
        p->out.created = had ? old.created : p->now;
        p->out.updated = p->now;
    }
    p->out.bytes = p->len;
    if (!had || strcmp(old.sha256, p->in->sha256)) {
        if ((rc = ref_inc(s, txn, p->in->sha256, p->blob, p->len, p->sum))) return rc;
        if (had && (rc = ref_dec(s, txn, old.sha256, p->dropped))) return rc;
    }
    char *json = astore__meta_encode(&p->out);
    if (!json) return PEFTD_ENOMEM;
    v = astore__val_str(json);
    rc = mdb_put(txn, s->meta, &k, &v, 0);
    if (rc == 0 && !p->replica) rc = put_change(s, txn, p, json);
    free(json);
    return rc;
}

static int put_key(astore *s, const astore_meta *meta, const char *key, uint64_t quota, bool need_tenant,
                   const void *blob, size_t len, astore_meta *stored, char old_sha256[65]) {
    if (old_sha256) old_sha256[0] = 0;
    if (!s || !meta || (!blob && len) || !astore__meta_storable(meta)) return PEFTD_EINVAL;
    if (len > SIZE_MAX - BLOB_HDR) return PEFTD_ENOSPC;
    put_ctx p = {.in = meta, .key = key, .quota = quota, .need_tenant = need_tenant, .blob = blob, .len = len,
                 .now = (int64_t)time(NULL)};
    /* hashed before the transaction: a write txn blocks every other writer */
    int rc = sha256(blob ? blob : "", len, p.sum);
    if (rc) return rc;
    if ((rc = astore__write_txn(s, put_fn, &p))) return rc;
    if (stored) *stored = p.out;
    if (old_sha256) memcpy(old_sha256, p.dropped, 65);
    return 0;
}

int astore_put(astore *s, const astore_meta *meta, const void *blob, size_t len, astore_meta *stored,
               char old_sha256[65]) {
    char key[ASTORE_KEY_MAX + 1];
    if (old_sha256) old_sha256[0] = 0;
    if (!meta || astore_key("", meta->name, key)) return PEFTD_EINVAL;
    return put_key(s, meta, key, 0, false, blob, len, stored, old_sha256);
}

int astore_put_scoped(astore *s, const astore_meta *meta, uint64_t quota_bytes, const void *blob, size_t len,
                      astore_meta *stored, char old_sha256[65]) {
    char key[ASTORE_KEY_MAX + 1];
    if (old_sha256) old_sha256[0] = 0;
    if (!meta || astore_key(meta->owner, meta->name, key)) return PEFTD_EINVAL;
    return put_key(s, meta, key, meta->owner[0] ? quota_bytes : 0, false, blob, len, stored, old_sha256);
}

int astore_put_tenant(astore *s, const astore_meta *meta, uint64_t quota_bytes, const void *blob, size_t len,
                      astore_meta *stored, char old_sha256[65]) {
    char key[ASTORE_KEY_MAX + 1];
    if (old_sha256) old_sha256[0] = 0;
    if (!meta || !meta->owner[0] || astore_key(meta->owner, meta->name, key)) return PEFTD_EINVAL;
    return put_key(s, meta, key, quota_bytes, true, blob, len, stored, old_sha256);
}

void astore_removed_free(astore_removed *r) {
    if (!r) return;
    free(r->keys);
    free(r->dropped);
    memset(r, 0, sizeof *r);
}

static int removed_add(astore_removed *r, const char *key, const char *dropped) {
    if (!r) return 0;
    if (key) {
        void *p = realloc(r->keys, (size_t)(r->n_keys + 1) * sizeof *r->keys);
        if (!p) return PEFTD_ENOMEM;
        r->keys = p;
        snprintf(r->keys[r->n_keys++], sizeof r->keys[0], "%s", key);
    }
    if (dropped && dropped[0]) {
        void *p = realloc(r->dropped, (size_t)(r->n_dropped + 1) * sizeof *r->dropped);
        if (!p) return PEFTD_ENOMEM;
        r->dropped = p;
        snprintf(r->dropped[r->n_dropped++], sizeof r->dropped[0], "%s", dropped);
    }
    return 0;
}

int astore__delete_owner_txn(astore *s, MDB_txn *txn, const char *owner, astore_removed *r) {
    char prefix[ASTORE_NAME_MAX + 2];
    size_t pl = (size_t)snprintf(prefix, sizeof prefix, "%s/", owner);
    if (!owner[0] || strchr(owner, '/') || pl >= sizeof prefix) return PEFTD_EINVAL;
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    astore_meta m;
    int rc = mdb_cursor_open(txn, s->meta, &cur);
    if (rc) return rc;
    /* every key of the owner's block, however many public or other owners' keys sort
     * around it: the cursor stays inside the "owner/" prefix (MDB_NEXT after
     * mdb_cursor_del yields the record that followed the deleted one) */
    for (rc = astore__prefix_first(cur, prefix, &k, &v); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < pl || memcmp(k.mv_data, prefix, pl)) break;
        char key[ASTORE_KEY_MAX + 1], dropped[65] = "";
        if (k.mv_size > ASTORE_KEY_MAX) {
            rc = PEFTD_EFORMAT;
            break;
        }
        memcpy(key, k.mv_data, k.mv_size);
        key[k.mv_size] = 0;
        if ((rc = astore__meta_decode_key(&k, &v, &m))) break;
        if ((rc = mdb_cursor_del(cur, 0))) break;
        if ((rc = ref_dec(s, txn, m.sha256, dropped))) break;
        if ((rc = removed_add(r, key, dropped))) break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

typedef struct {
    const char *key;
    bool replica;     /* astore_apply_delete: absent is fine, position instead of feed */
    uint64_t seq;
    bool skip;
    char dropped[65];
} del_ctx;

static int del_fn(astore *s, MDB_txn *txn, void *vctx) {
    del_ctx *d = vctx;
    astore_meta old;
    MDB_val k = astore__val_str(d->key), v;
    d->dropped[0] = 0;
    int rc;
    if (d->replica && ((rc = astore__position_txn(s, txn, d->seq, &d->skip)) || d->skip)) return rc;
    rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == MDB_NOTFOUND && d->replica) return 0;
    if (rc) return rc;
    if ((rc = astore__meta_decode(v.mv_data, v.mv_size, &old))) return rc;
    if ((rc = mdb_del(txn, s->meta, &k, NULL))) return rc;
    if ((rc = ref_dec(s, txn, old.sha256, d->dropped))) return rc;
    return d->replica ? 0 : astore__change_txn(s, txn, "delete", d->key, NULL);
}

int astore_delete(astore *s, const char *name, char old_sha256[65]) {
    if (old_sha256) old_sha256[0] = 0;
    if (!s || !name || !*name || strnlen(name, ASTORE_KEY_MAX + 1) > ASTORE_KEY_MAX) return PEFTD_EINVAL;
    del_ctx d = {.key = name};
    int rc = astore__write_txn(s, del_fn, &d);
    if (rc == 0 && old_sha256) memcpy(old_sha256, d.dropped, 65);
    return rc;
}

int astore_delete_scoped(astore *s, const char *owner, const char *name, char old_sha256[65]) {
    char key[ASTORE_KEY_MAX + 1];
    if (old_sha256) old_sha256[0] = 0;
    if (!s || astore_key(owner, name, key)) return PEFTD_EINVAL;
    del_ctx d = {.key = key};
    int rc = astore__write_txn(s, del_fn, &d);
    if (rc == 0 && old_sha256) memcpy(old_sha256, d.dropped, 65);
    return rc;
}

/* ---------------------------------------------------------------- replication */

int astore__blob_sum_txn(astore *s, MDB_txn *txn, const char *sha, char out[65]) {
    MDB_val k = astore__val_str(sha), v;
    int rc = mdb_get(txn, s->blobs, &k, &v);
    if (rc) return rc;
    if (v.mv_size < BLOB_HDR || memcmp(v.mv_data, BLOB_MAGIC, 4)) return PEFTD_EFORMAT;
    hex32((const unsigned char *)v.mv_data + 8, out);
    return 0;
}

int astore_apply_put(astore *s, uint64_t seq, const astore_meta *meta, const void *blob, size_t len,
                     astore_meta *stored, char dropped[65]) {
    char key[ASTORE_KEY_MAX + 1];
    if (dropped) dropped[0] = 0;
    if (!s || !meta || (!blob && len) || !astore__meta_storable(meta) || meta->version < 1 ||
        astore_key(meta->owner, meta->name, key))
        return PEFTD_EINVAL;
    if (len > SIZE_MAX - BLOB_HDR) return PEFTD_ENOSPC;
    put_ctx p = {.in = meta, .key = key, .blob = blob, .len = len, .replica = true, .seq = seq};
    int rc = sha256(blob ? blob : "", len, p.sum);
    if (rc) return rc;
    if ((rc = astore__write_txn(s, put_fn, &p))) return rc;
    if (p.skip) return 1;
    if (stored) *stored = p.out;
    if (dropped) memcpy(dropped, p.dropped, 65);
    return 0;
}

int astore_apply_delete(astore *s, uint64_t seq, const char *key, char dropped[65]) {
    if (dropped) dropped[0] = 0;
    if (!s || !key || !*key || strnlen(key, ASTORE_KEY_MAX + 1) > ASTORE_KEY_MAX) return PEFTD_EINVAL;
    del_ctx d = {.key = key, .replica = true, .seq = seq};
    int rc = astore__write_txn(s, del_fn, &d);
    if (rc) return rc;
    if (d.skip) return 1;
    if (dropped) memcpy(dropped, d.dropped, 65);
    return 0;
}
