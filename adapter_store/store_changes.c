/* adapter_store/store_changes.c — the change feed's records and reads, the snapshot for a
 * full resync, and the follower's position (contract in store_changes.h). The writes that
 * append to the feed are store_blobs.c's and tenant_store.c's: each calls
 * astore__change_txn inside its own write transaction.
 */
#include "adapter_store/store_changes.h"

#include <cJSON.h>
#include <inttypes.h>
#include <openssl/rand.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapter_store/store_internal.h"

/* ---------------------------------------------------------------- helpers */

static void be64_put(unsigned char b[8], uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8) b[i] = (unsigned char)v;
}

static uint64_t be64_get(const unsigned char b[8]) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | b[i];
    return v;
}

/* An "info" counter (decimal text); 0 when absent. */
static int info_u64(astore *s, MDB_txn *txn, const char *name, uint64_t *out) {
    MDB_val k = astore__val_str(name), v;
    *out = 0;
    int rc = mdb_get(txn, s->info, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    char buf[24] = {0};
    if (v.mv_size == 0 || v.mv_size >= sizeof buf) return PEFTD_EFORMAT;
    memcpy(buf, v.mv_data, v.mv_size);
    char *end;
    unsigned long long n = strtoull(buf, &end, 10);
    if (*end) return PEFTD_EFORMAT;
    *out = n;
    return 0;
}

static int info_set_u64(astore *s, MDB_txn *txn, const char *name, uint64_t n) {
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRIu64, n);
    MDB_val k = astore__val_str(name), v = astore__val_str(buf);
    return mdb_put(txn, s->info, &k, &v, 0);
}

/* An "info" string of up to 32 characters into out ("" when absent). */
static int info_str32(astore *s, MDB_txn *txn, const char *name, char out[33]) {
    MDB_val k = astore__val_str(name), v;
    out[0] = 0;
    int rc = mdb_get(txn, s->info, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (v.mv_size > 32) return PEFTD_EFORMAT;
    memcpy(out, v.mv_data, v.mv_size);
    out[v.mv_size] = 0;
    return 0;
}

int astore__feed_init_txn(astore *s, MDB_txn *txn) {
    char id[33];
    int rc = info_str32(s, txn, "feed_id", id);
    if (rc || id[0]) return rc;
    unsigned char r[16];
    if (RAND_bytes(r, sizeof r) != 1) return PEFTD_EIO;
    for (int i = 0; i < 16; i++) snprintf(id + 2 * i, 3, "%02x", r[i]);
    MDB_val k = astore__val_str("feed_id"), v = astore__val_str(id);
    return mdb_put(txn, s->info, &k, &v, 0);
}

/* A growable text buffer (NUL-terminated). */
typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} tbuf;

static void tb_add(tbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 1024;
        while (c < b->len + n + 1) c *= 2;
        char *p = realloc(b->p, c);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = c;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void tb_puts(tbuf *b, const char *s) { tb_add(b, s, strlen(s)); }

/* s as a JSON string literal (quotes included) in out; false when it does not fit. Keys
 * written through the HTTP API are plain ([A-Za-z0-9._-/]), but the store's own API takes
 * any bytes, and a record must stay valid JSON whatever it names. */
static bool json_quote(const char *s, char *out, size_t cap) {
    size_t o = 0;
    out[o++] = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (o + 8 >= cap) return false;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    if (o + 2 > cap) return false;
    out[o++] = '"';
    out[o] = 0;
    return true;
}

/* ---------------------------------------------------------------- feed writes */

static int oldest_txn(astore *s, MDB_txn *txn, uint64_t *oldest) {
    MDB_cursor *cur;
    MDB_val k, v;
    *oldest = 0;
    int rc = mdb_cursor_open(txn, s->changes, &cur);
    if (rc) return rc;
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    if (rc == 0 && k.mv_size != 8) rc = PEFTD_EFORMAT;
    if (rc == 0) *oldest = be64_get(k.mv_data);
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int astore__change_txn(astore *s, MDB_txn *txn, const char *op, const char *key, const char *extra) {
    uint64_t seq;
    int rc = info_u64(s, txn, "change_seq", &seq);
    if (rc) return rc;
    seq++;
    char head[1024], qkey[6 * ASTORE_KEY_MAX + 8];
    if (!json_quote(key, qkey, sizeof qkey)) return PEFTD_EINVAL;
    int n = snprintf(head, sizeof head, "{\"seq\":%" PRIu64 ",\"time\":%lld,\"op\":\"%s\",\"key\":%s%s", seq,
                     (long long)time(NULL), op, qkey, extra && extra[0] ? "," : "");
    if (n < 0 || (size_t)n >= sizeof head) return PEFTD_EINVAL;
    size_t xl = extra ? strlen(extra) : 0;
    unsigned char kb[8];
    be64_put(kb, seq);
    MDB_val k = {.mv_size = 8, .mv_data = kb}, v = {.mv_size = (size_t)n + xl + 1, .mv_data = NULL};
    if ((rc = mdb_put(txn, s->changes, &k, &v, MDB_RESERVE))) return rc;
    memcpy(v.mv_data, head, (size_t)n);
    if (xl) memcpy((char *)v.mv_data + n, extra, xl);
    ((char *)v.mv_data)[n + xl] = '}';
    if ((rc = info_set_u64(s, txn, "change_seq", seq))) return rc;
    /* retention: drop what falls out of the last s->retain records (one or two per
     * append once the bound is reached) */
    if (seq <= s->retain) return 0;
    uint64_t keep_from = seq - s->retain + 1;
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, s->changes, &cur))) return rc;
    MDB_val ck, cv;
    while ((rc = mdb_cursor_get(cur, &ck, &cv, MDB_FIRST)) == 0 && ck.mv_size == 8 &&
           be64_get(ck.mv_data) < keep_from)
        if ((rc = mdb_cursor_del(cur, 0))) break;
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : rc;
}

int astore__position_txn(astore *s, MDB_txn *txn, uint64_t seq, bool *skip) {
    *skip = false;
    if (seq == 0) return 0;
    uint64_t pos;
    int rc = info_u64(s, txn, "replica_seq", &pos);
    if (rc) return rc;
    if (seq <= pos) {
        *skip = true;
        return 0;
    }
    return info_set_u64(s, txn, "replica_seq", seq);
}

/* ---------------------------------------------------------------- feed reads */

int astore_changes_info(astore *s, uint64_t *last, uint64_t *oldest) {
    if (!s || !last || !oldest) return PEFTD_EINVAL;
    MDB_txn *txn;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    if (!(rc = info_u64(s, txn, "change_seq", last))) rc = oldest_txn(s, txn, oldest);
    astore__read_end(s, txn);
    return astore__status(rc);
}

int astore_changes_read(astore *s, uint64_t after, int limit, char **json, int *n, uint64_t *last,
                        uint64_t *oldest, bool *resync) {
    *json = NULL;
    *n = 0;
    *resync = false;
    if (!s || limit < 1) return PEFTD_EINVAL;
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    tbuf b = {0};
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    if ((rc = info_u64(s, txn, "change_seq", last)) || (rc = oldest_txn(s, txn, oldest))) goto done;
    tb_puts(&b, "[");
    if ((*last > after && (*oldest == 0 || after + 1 < *oldest)) || after > *last) {
        *resync = true;
        goto close;
    }
    if (*last <= after) goto close;
    if ((rc = mdb_cursor_open(txn, s->changes, &cur))) goto done;
    unsigned char kb[8];
    be64_put(kb, after + 1);
    MDB_val k = {.mv_size = 8, .mv_data = kb}, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && *n < limit;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8) {
            rc = PEFTD_EFORMAT;
            goto done;
        }
        if (*n) tb_puts(&b, ",");
        tb_add(&b, v.mv_data, v.mv_size);
        (*n)++;
    }
    if (rc == MDB_NOTFOUND) rc = 0;
    if (rc) goto done;
close:
    tb_puts(&b, "]");
    rc = b.oom ? PEFTD_ENOMEM : 0;
done:
    if (cur) mdb_cursor_close(cur);
    astore__read_end(s, txn);
    if (rc) {
        free(b.p);
        *n = 0;
        return astore__status(rc);
    }
    *json = b.p;
    return 0;
}

/* Appends the raw records of dbi (JSON objects) as array members, each checked to parse. */
static int snap_records(MDB_txn *txn, MDB_dbi dbi, tbuf *b) {
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, dbi, &cur), i = 0;
    if (rc) return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        cJSON *o = cJSON_ParseWithLength(v.mv_data, v.mv_size);
        bool ok = cJSON_IsObject(o);
        cJSON_Delete(o);
        if (!ok) {
            rc = PEFTD_EFORMAT;
            break;
        }
        if (i++) tb_puts(b, ",");
        tb_add(b, v.mv_data, v.mv_size);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int snap_adapters(astore *s, MDB_txn *txn, tbuf *b) {
    MDB_cursor *cur;
    MDB_val k, v;
    astore_meta m;
    int rc = mdb_cursor_open(txn, s->meta, &cur), i = 0;
    if (rc) return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        char key[ASTORE_KEY_MAX + 1], sum[65];
        if ((rc = astore__meta_decode_key(&k, &v, &m))) break;
        if ((rc = astore_key(m.owner, m.name, key)) || (rc = astore__blob_sum_txn(s, txn, m.sha256, sum))) break;
        char *mj = astore__meta_encode(&m);
        if (!mj) {
            rc = PEFTD_ENOMEM;
            break;
        }
        char head[1024], qkey[6 * ASTORE_KEY_MAX + 8];
        if (!json_quote(key, qkey, sizeof qkey)) {
            free(mj);
            rc = PEFTD_EFORMAT;
            break;
        }
        snprintf(head, sizeof head, "%s{\"key\":%s,\"blob_sha256\":\"%s\",\"meta\":", i++ ? "," : "", qkey, sum);
        tb_puts(b, head);
        tb_puts(b, mj);
        tb_puts(b, "}");
        free(mj);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int astore_snapshot(astore *s, char **json) {
    *json = NULL;
    if (!s) return PEFTD_EINVAL;
    MDB_txn *txn;
    tbuf b = {0};
    uint64_t last;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    char id[33];
    if (!(rc = info_u64(s, txn, "change_seq", &last)) && !(rc = info_str32(s, txn, "feed_id", id))) {
        char head[128];
        snprintf(head, sizeof head, "{\"seq\":%" PRIu64 ",\"feed_id\":\"%s\",\"adapters\":[", last, id);
        tb_puts(&b, head);
        if (!(rc = snap_adapters(s, txn, &b))) {
            tb_puts(&b, "],\"tenants\":[");
            if (!(rc = snap_records(txn, s->tenants, &b))) {
                tb_puts(&b, "],\"keys\":[");
                if (!(rc = snap_records(txn, s->keys, &b))) tb_puts(&b, "]}");
            }
        }
    }
    astore__read_end(s, txn);
    if (!rc && b.oom) rc = PEFTD_ENOMEM;
    if (rc) {
        free(b.p);
        return astore__status(rc);
    }
    *json = b.p;
    return 0;
}

/* ---------------------------------------------------------------- follower position */

int astore_meta_parse(const char *json, size_t len, astore_meta *out) {
    if (!json || !out) return PEFTD_EINVAL;
    int rc = astore__meta_decode(json, len, out);
    if (rc == 0 && !astore__meta_storable(out)) rc = PEFTD_EFORMAT;
    return rc;
}

int astore_replica_seq(astore *s, uint64_t *seq) {
    if (!s || !seq) return PEFTD_EINVAL;
    MDB_txn *txn;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    rc = info_u64(s, txn, "replica_seq", seq);
    astore__read_end(s, txn);
    return astore__status(rc);
}

typedef struct {
    uint64_t seq;
    bool force, skip;
} pos_ctx;

static int pos_fn(astore *s, MDB_txn *txn, void *vctx) {
    pos_ctx *c = vctx;
    if (c->force) return info_set_u64(s, txn, "replica_seq", c->seq);
    return astore__position_txn(s, txn, c->seq, &c->skip);
}

int astore_apply_position(astore *s, uint64_t seq, bool force) {
    if (!s) return PEFTD_EINVAL;
    pos_ctx c = {.seq = seq, .force = force};
    int rc = astore__write_txn(s, pos_fn, &c);
    return rc ? rc : c.skip ? 1 : 0;
}

/* ---------------------------------------------------------------- feed identity */

static int read_str32(astore *s, const char *name, char out[33]) {
    out[0] = 0;
    if (!s) return PEFTD_EINVAL;
    MDB_txn *txn;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    rc = info_str32(s, txn, name, out);
    astore__read_end(s, txn);
    return astore__status(rc);
}

int astore_feed_id(astore *s, char out[33]) { return read_str32(s, "feed_id", out); }

int astore_replica_feed(astore *s, char out[33]) { return read_str32(s, "replica_feed", out); }

typedef struct {
    uint64_t seq;
    const char *feed;
} resynced_ctx;

static int resynced_fn(astore *s, MDB_txn *txn, void *vctx) {
    resynced_ctx *c = vctx;
    MDB_val k = astore__val_str("replica_feed"), v = astore__val_str(c->feed);
    int rc = info_set_u64(s, txn, "replica_seq", c->seq);
    return rc ? rc : mdb_put(txn, s->info, &k, &v, 0);
}

int astore_apply_resynced(astore *s, uint64_t seq, const char *feed_id) {
    if (!s || !feed_id || strlen(feed_id) > 32) return PEFTD_EINVAL;
    resynced_ctx c = {.seq = seq, .feed = feed_id};
    return astore__write_txn(s, resynced_fn, &c);
}
