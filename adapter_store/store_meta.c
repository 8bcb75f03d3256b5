/* adapter_store/store_meta.c — the adapter store's "meta" records (schema in store.h):
 * the record codec (compact JSON with a schema version, type-checked on read), the
 * owner-scoped keys ("name" / "owner/name") and the reads of meta records: one record,
 * a page in key order, and the merged page an owner sees (its own shadowing the public).
 * Transactions through store.c's helpers (store_internal.h).
 */
#include "adapter_store/store.h"

#include <cJSON.h>
#include <lmdb.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/store_internal.h"

/* ---------------------------------------------------------------- checks */

bool astore__sha_valid(const char *h) {
    if (!h) return false;
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f'))) return false;
    return h[64] == 0;
}

bool astore__name_valid(const char *n) {
    size_t l = n ? strnlen(n, ASTORE_NAME_MAX + 1) : 0;
    return l >= 1 && l <= ASTORE_NAME_MAX && !memchr(n, ':', l);
}

/* ---------------------------------------------------------------- meta codec */

static const adapter_kind KINDS[] = {ADAPTER_LORA, ADAPTER_IA3, ADAPTER_PROMPT_TUNING, ADAPTER_PREFIX_TUNING,
                                     ADAPTER_BOTTLENECK, ADAPTER_LN_TUNING, ADAPTER_OFT, ADAPTER_BOFT};

/* Compact JSON; integers go through double, exact up to 2^53 (versions, times, bytes and
 * parameter counts stay far below). @note caller frees the result. */
char *astore__meta_encode(const astore_meta *m) {
    cJSON *o = cJSON_CreateObject(), *r = NULL;
    char *out = NULL;
    int nr = m->n_ranks < 0 ? 0 : m->n_ranks > 8 ? 8 : m->n_ranks;
    if (!o) return NULL;
    if (!cJSON_AddNumberToObject(o, "schema", ASTORE_SCHEMA) || !cJSON_AddStringToObject(o, "name", m->name) ||
        !cJSON_AddStringToObject(o, "owner", m->owner) ||
        !cJSON_AddStringToObject(o, "kind", adapter_kind_name(m->kind)) ||
        !cJSON_AddStringToObject(o, "sha256", m->sha256) ||
        !cJSON_AddNumberToObject(o, "version", (double)m->version) ||
        !cJSON_AddNumberToObject(o, "created", (double)m->created) ||
        !cJSON_AddNumberToObject(o, "updated", (double)m->updated) ||
        !cJSON_AddNumberToObject(o, "bytes", (double)m->bytes) ||
        !cJSON_AddNumberToObject(o, "n_params", (double)m->n_params) ||
        !(r = cJSON_AddArrayToObject(o, "ranks")) || !cJSON_AddNumberToObject(o, "n_virtual", m->n_virtual) ||
        !cJSON_AddStringToObject(o, "targets", m->targets) ||
        !cJSON_AddStringToObject(o, "base", m->base_fingerprint))
        goto fail;
    for (int i = 0; i < nr; i++) {
        cJSON *n = cJSON_CreateNumber(m->ranks[i]);
        if (!n || !cJSON_AddItemToArray(r, n)) {
            cJSON_Delete(n);
            goto fail;
        }
    }
    out = cJSON_PrintUnformatted(o);
fail:
    cJSON_Delete(o);
    return out;
}

bool astore__json_str(const cJSON *o, const char *k, char *dst, size_t cap) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= cap) return false;
    memcpy(dst, v->valuestring, strlen(v->valuestring) + 1);
    return true;
}

bool astore__json_int(const cJSON *o, const char *k, double lo, double hi, int64_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return false;
    *out = (int64_t)v->valuedouble;
    return true;
}

/* Decodes a meta record; records are hostile (disk), so every field is type-checked. */
int astore__meta_decode(const void *data, size_t len, astore_meta *m) {
    const double big = ASTORE_JSON_BIG;
    int rc = PEFTD_EFORMAT;
    int64_t d;
    cJSON *o = cJSON_ParseWithLength(data, len);
    memset(m, 0, sizeof *m);
    if (!cJSON_IsObject(o)) goto fail;
    if (!astore__json_int(o, "schema", 1, big, &d)) goto fail;
    if (d > ASTORE_SCHEMA) {
        rc = PEFTD_EUNSUPPORTED;
        goto fail;
    }
    char kind[32];
    if (!astore__json_str(o, "name", m->name, sizeof m->name) ||
        !astore__json_str(o, "owner", m->owner, sizeof m->owner) || !astore__json_str(o, "kind", kind, sizeof kind) ||
        !astore__json_str(o, "sha256", m->sha256, sizeof m->sha256) ||
        !astore__json_str(o, "targets", m->targets, sizeof m->targets) ||
        !astore__json_str(o, "base", m->base_fingerprint, sizeof m->base_fingerprint) || !astore__sha_valid(m->sha256))
        goto fail;
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++)
        if (!strcmp(kind, adapter_kind_name(KINDS[i]))) m->kind = KINDS[i];
    if (!m->kind) goto fail;
    if (!astore__json_int(o, "version", 1, big, &d)) goto fail;
    m->version = (uint64_t)d;
    if (!astore__json_int(o, "created", -big, big, &d)) goto fail;
    m->created = (int64_t)d;
    if (!astore__json_int(o, "updated", -big, big, &d)) goto fail;
    m->updated = (int64_t)d;
    if (!astore__json_int(o, "bytes", 0, big, &d)) goto fail;
    m->bytes = (uint64_t)d;
    if (!astore__json_int(o, "n_params", 0, big, &d)) goto fail;
    m->n_params = (int64_t)d;
    if (!astore__json_int(o, "n_virtual", 0, INT32_MAX, &d)) goto fail;
    m->n_virtual = (int)d;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "ranks"), *e;
    if (!cJSON_IsArray(r) || cJSON_GetArraySize(r) > 8) goto fail;
    cJSON_ArrayForEach(e, r) {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 ||
            e->valuedouble > INT32_MAX)
            goto fail;
        m->ranks[m->n_ranks++] = (int)e->valuedouble;
    }
    rc = 0;
fail:
    cJSON_Delete(o);
    return rc;
}

/* A record under key k must describe the name k, or (an owner-scoped record, store.h)
 * owner/name: anything else is a damaged store. */
int astore__meta_decode_key(const MDB_val *k, const MDB_val *v, void *out) {
    astore_meta *m = out;
    int rc = astore__meta_decode(v->mv_data, v->mv_size, m);
    if (rc) return rc;
    char key[ASTORE_KEY_MAX + 1];
    bool plain = astore_key("", m->name, key) == 0 && strlen(key) == k->mv_size &&
                 !memcmp(key, k->mv_data, k->mv_size);
    bool scoped = astore_key(m->owner, m->name, key) == 0 && strlen(key) == k->mv_size &&
                  !memcmp(key, k->mv_data, k->mv_size);
    return plain || scoped ? 0 : PEFTD_EFORMAT;
}

/* What meta_decode would refuse must never be written: one bad field would make the
 * record (and every listing page holding it) unreadable. */
bool astore__meta_storable(const astore_meta *m) {
    bool kind = false;
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++) kind |= m->kind == KINDS[i];
    if (!kind || !astore__name_valid(m->name) || !astore__sha_valid(m->sha256) ||
        strnlen(m->owner, sizeof m->owner) > ASTORE_NAME_MAX ||
        strnlen(m->targets, sizeof m->targets) >= sizeof m->targets ||
        strnlen(m->base_fingerprint, sizeof m->base_fingerprint) >= sizeof m->base_fingerprint ||
        m->n_params < 0 || m->n_params > ((int64_t)1 << 53) || m->n_virtual < 0 || m->n_ranks < 0 || m->n_ranks > 8)
        return false;
    for (int i = 0; i < m->n_ranks; i++)
        if (m->ranks[i] < 0) return false;
    return true;
}

/* ---------------------------------------------------------------- owner scoping */

/* store.h: a name's '/' is written ':' in keys, so a key's only '/' separates the owner. */
int astore_key(const char *owner, const char *name, char out[ASTORE_KEY_MAX + 1]) {
    out[0] = 0;
    if (!owner || !astore__name_valid(name) || strnlen(owner, ASTORE_NAME_MAX + 1) > ASTORE_NAME_MAX ||
        strchr(owner, '/') || strchr(owner, ':'))
        return PEFTD_EINVAL;
    int n = snprintf(out, ASTORE_KEY_MAX + 1, "%s%s%s", owner, owner[0] ? "/" : "", name);
    for (char *p = out + (n - (int)strlen(name)); *p; p++)
        if (*p == '/') *p = ':';
    return 0;
}

/* Positions cur at the first key starting with prefix; MDB_NOTFOUND when there is none. */
int astore__prefix_first(MDB_cursor *cur, const char *prefix, MDB_val *k, MDB_val *v) {
    *k = astore__val_str(prefix);
    int rc = mdb_cursor_get(cur, k, v, MDB_SET_RANGE);
    if (rc == 0 && (k->mv_size < strlen(prefix) || memcmp(k->mv_data, prefix, strlen(prefix)))) rc = MDB_NOTFOUND;
    return rc;
}

/* Sum of the bytes of owner's records (keys "owner/..."), inside txn. */
int astore__owner_bytes_txn(astore *s, MDB_txn *txn, const char *owner, uint64_t *sum) {
    char prefix[ASTORE_NAME_MAX + 2];
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    astore_meta m;
    *sum = 0;
    snprintf(prefix, sizeof prefix, "%s/", owner);
    int rc = mdb_cursor_open(txn, s->meta, &cur);
    if (rc) return rc;
    for (rc = astore__prefix_first(cur, prefix, &k, &v); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < strlen(prefix) || memcmp(k.mv_data, prefix, strlen(prefix))) break;
        if ((rc = astore__meta_decode_key(&k, &v, &m))) break;
        *sum += m.bytes;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : rc;
}

int astore_owner_bytes(astore *s, const char *owner, uint64_t *bytes) {
    *bytes = 0;
    if (!s || !owner || !*owner || strchr(owner, '/')) return PEFTD_EINVAL;
    MDB_txn *txn;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    rc = astore__owner_bytes_txn(s, txn, owner, bytes);
    astore__read_end(s, txn);
    return astore__status(rc);
}

/* ---------------------------------------------------------------- reads */

int astore_get_meta_scoped(astore *s, const char *owner, const char *name, astore_meta *out) {
    char key[ASTORE_KEY_MAX + 1];
    if (astore_key(owner, name, key)) return PEFTD_EINVAL;
    return astore_get_meta(s, key, out);
}

int astore_get_meta(astore *s, const char *name, astore_meta *out) {
    if (!s || !out || !name || !*name || strnlen(name, ASTORE_KEY_MAX + 1) > ASTORE_KEY_MAX) return PEFTD_EINVAL;
    return astore__get_decoded(s, s->meta, name, astore__meta_decode_key, out);
}

int astore_list(astore *s, const char *after, int limit, astore_meta *out, int *n, bool *more) {
    if (n) *n = 0;
    if (more) *more = false;
    if (!s || !n || (limit > 0 && !out)) return PEFTD_EINVAL;
    if (!after) after = "";
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    MDB_val k = astore__val_str(after), v;
    if ((rc = mdb_cursor_open(txn, s->meta, &cur))) goto done;
    if (*after) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        if (rc == 0 && k.mv_size == strlen(after) && !memcmp(k.mv_data, after, k.mv_size))
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    } else {
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    }
    int i = 0;
    while (rc == 0 && i < limit) {
        if ((rc = astore__meta_decode_key(&k, &v, &out[i]))) goto done;
        i++;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (rc == 0 && more) *more = true;
    if (rc == MDB_NOTFOUND) rc = 0;
    *n = i;
done:
    if (cur) mdb_cursor_close(cur);
    astore__read_end(s, txn);
    return astore__status(rc);
}

/* One side of astore_list_visible's merge: a cursor over either the owner's keys
 * ("owner/" prefix) or the public ones (no '/'), with the current record's name. */
typedef struct {
    MDB_cursor *cur;
    const char *prefix; /* "owner/", or NULL for the public side */
    MDB_val k, v;
    int rc;             /* 0: positioned on a record; MDB_NOTFOUND: exhausted */
} vis_side;

static const char *vis_name(const vis_side *x, size_t *len) {
    size_t skip = x->prefix ? strlen(x->prefix) : 0;
    *len = x->k.mv_size - skip;
    return (const char *)x->k.mv_data + skip;
}

/* Settles x on a record of its side at or after its current position. */
static void vis_settle(vis_side *x) {
    while (x->rc == 0) {
        const char *kd = x->k.mv_data;
        if (x->prefix) {
            size_t pl = strlen(x->prefix);
            if (x->k.mv_size < pl || memcmp(kd, x->prefix, pl)) x->rc = MDB_NOTFOUND;
            return;
        }
        const char *slash = memchr(kd, '/', x->k.mv_size);
        if (!slash) return;
        /* an owner's block of keys: jump past all of it ('0' follows '/' in ASCII) */
        char next[ASTORE_KEY_MAX + 2];
        size_t ol = (size_t)(slash - kd);
        if (ol > ASTORE_KEY_MAX) {
            x->rc = MDB_CORRUPTED;
            return;
        }
        memcpy(next, kd, ol);
        next[ol] = '0';
        next[ol + 1] = 0;
        x->k = astore__val_str(next);
        x->rc = mdb_cursor_get(x->cur, &x->k, &x->v, MDB_SET_RANGE);
    }
}

/* Positions x at the first record of its side whose name is after `after`. */
static void vis_start(vis_side *x, const char *after) {
    char seek[ASTORE_KEY_MAX + 2];
    snprintf(seek, sizeof seek, "%s%s", x->prefix ? x->prefix : "", after);
    x->k = astore__val_str(seek);
    x->rc = seek[0] ? mdb_cursor_get(x->cur, &x->k, &x->v, MDB_SET_RANGE)
                    : mdb_cursor_get(x->cur, &x->k, &x->v, MDB_FIRST);
    vis_settle(x);
    size_t nl;
    const char *n = x->rc == 0 ? vis_name(x, &nl) : NULL;
    if (n && after[0] && nl == strlen(after) && !memcmp(n, after, nl)) {
        x->rc = mdb_cursor_get(x->cur, &x->k, &x->v, MDB_NEXT);
        vis_settle(x);
    }
}

static void vis_next(vis_side *x) {
    x->rc = mdb_cursor_get(x->cur, &x->k, &x->v, MDB_NEXT);
    vis_settle(x);
}

static int vis_cmp(const vis_side *a, const vis_side *b) {
    size_t la, lb;
    const char *na = vis_name(a, &la), *nb = vis_name(b, &lb);
    int c = memcmp(na, nb, la < lb ? la : lb);
    return c ? c : (la > lb) - (la < lb);
}

int astore_list_visible(astore *s, const char *owner, const char *after, int limit, astore_meta *out, int *n,
                        bool *more) {
    if (n) *n = 0;
    if (more) *more = false;
    if (!s || !n || !owner || strchr(owner, '/') || strlen(owner) > ASTORE_NAME_MAX || (limit > 0 && !out))
        return PEFTD_EINVAL;
    if (!after) after = "";
    char after_key[ASTORE_KEY_MAX + 1] = "";
    if (after[0] && astore_key("", after, after_key)) return PEFTD_EINVAL;
    after = after_key;
    char prefix[ASTORE_NAME_MAX + 2];
    snprintf(prefix, sizeof prefix, "%s/", owner);
    vis_side own = {.prefix = prefix, .rc = MDB_NOTFOUND}, pub = {.prefix = NULL};
    MDB_txn *txn;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    if ((rc = mdb_cursor_open(txn, s->meta, &pub.cur))) goto done;
    if (owner[0] && (rc = mdb_cursor_open(txn, s->meta, &own.cur))) goto done;
    vis_start(&pub, after);
    if (own.cur) vis_start(&own, after);
    int i = 0;
    /* merge by name; an owner's record shadows the public one of the same name */
    for (;;) {
        if ((pub.rc && pub.rc != MDB_NOTFOUND) || (own.rc && own.rc != MDB_NOTFOUND)) {
            rc = pub.rc && pub.rc != MDB_NOTFOUND ? pub.rc : own.rc;
            goto done;
        }
        if (pub.rc && own.rc) break;
        if (i == limit) {
            if (more) *more = true;
            break;
        }
        int c = pub.rc ? 1 : own.rc ? -1 : vis_cmp(&pub, &own);
        vis_side *take = c < 0 ? &pub : &own;
        if ((rc = astore__meta_decode_key(&take->k, &take->v, &out[i]))) goto done;
        i++;
        if (c == 0) vis_next(&pub);
        vis_next(take);
    }
    *n = i;
    rc = 0;
done:
    if (pub.cur) mdb_cursor_close(pub.cur);
    if (own.cur) mdb_cursor_close(own.cur);
    astore__read_end(s, txn);
    return astore__status(rc);
}
