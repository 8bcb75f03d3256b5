/* adapter_store/tenant_store.c — the "tenants" and "keys" databases (schema in
 * tenant_store.h): record codecs (JSON, type-checked on read, with store_meta.c's field
 * readers) and the transactions, through store.c's helpers (store_internal.h) so they
 * share its locking, map growth and read-and-decode.
 */
#include "adapter_store/tenant_store.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapter_store/registry.h"
#include "adapter_store/store_changes.h"
#include "adapter_store/store_internal.h"

/* Version of the tenant and key record layouts. */
#define TSTORE_SCHEMA 1
#define TSTORE_BIG ASTORE_JSON_BIG

bool tstore_id_valid(const char *id) { return registry_id_valid(id); }

static bool tenant_valid(const tstore_tenant *t) {
    return t && tstore_id_valid(t->id) && t->weight > 0 && isfinite(t->weight) && t->max_concurrent >= 0 &&
           t->tokens_per_min >= 0 && t->max_storage_bytes >= 0 && t->max_storage_bytes < (int64_t)TSTORE_BIG &&
           t->tokens_per_min < (int64_t)TSTORE_BIG && t->max_concurrent < (int64_t)TSTORE_BIG;
}

static bool key_valid(const tstore_key *k) {
    return k && tstore_id_valid(k->tenant) && k->id[0] && strnlen(k->id, sizeof k->id) < sizeof k->id &&
           strnlen(k->prefix, sizeof k->prefix) < sizeof k->prefix && astore__sha_valid(k->sha256);
}

/* ---------------------------------------------------------------- codecs */

static char *tenant_encode(const tstore_tenant *t) {
    cJSON *o = cJSON_CreateObject();
    char *out = NULL;
    if (o && cJSON_AddNumberToObject(o, "schema", TSTORE_SCHEMA) && cJSON_AddStringToObject(o, "id", t->id) &&
        cJSON_AddNumberToObject(o, "weight", t->weight) &&
        cJSON_AddNumberToObject(o, "max_concurrent", (double)t->max_concurrent) &&
        cJSON_AddNumberToObject(o, "tokens_per_min", (double)t->tokens_per_min) &&
        cJSON_AddNumberToObject(o, "max_storage_bytes", (double)t->max_storage_bytes) &&
        cJSON_AddNumberToObject(o, "created", (double)t->created))
        out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return out;
}

static char *key_encode(const tstore_key *k) {
    cJSON *o = cJSON_CreateObject();
    char *out = NULL;
    if (o && cJSON_AddNumberToObject(o, "schema", TSTORE_SCHEMA) && cJSON_AddStringToObject(o, "id", k->id) &&
        cJSON_AddStringToObject(o, "tenant", k->tenant) && cJSON_AddStringToObject(o, "prefix", k->prefix) &&
        cJSON_AddStringToObject(o, "sha256", k->sha256) &&
        cJSON_AddNumberToObject(o, "created", (double)k->created))
        out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return out;
}

/* Opens a record: a JSON object whose schema this build reads. */
static cJSON *record_open(const MDB_val *v, int *rc) {
    cJSON *o = cJSON_ParseWithLength(v->mv_data, v->mv_size);
    int64_t schema = 0;
    *rc = 0;
    if (!cJSON_IsObject(o) || !astore__json_int(o, "schema", 1, TSTORE_BIG, &schema)) *rc = PEFTD_EFORMAT;
    else if (schema > TSTORE_SCHEMA) *rc = PEFTD_EUNSUPPORTED;
    if (*rc) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* An astore__decode_fn: out is a tstore_tenant. */
static int tenant_decode(const MDB_val *k, const MDB_val *v, void *out) {
    tstore_tenant *t = out;
    int rc;
    memset(t, 0, sizeof *t);
    cJSON *o = record_open(v, &rc);
    if (!o) return rc;
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(o, "weight");
    rc = PEFTD_EFORMAT;
    if (astore__json_str(o, "id", t->id, sizeof t->id) && cJSON_IsNumber(w) &&
        astore__json_int(o, "max_concurrent", 0, TSTORE_BIG, &t->max_concurrent) &&
        astore__json_int(o, "tokens_per_min", 0, TSTORE_BIG, &t->tokens_per_min) &&
        astore__json_int(o, "max_storage_bytes", 0, TSTORE_BIG, &t->max_storage_bytes) &&
        astore__json_int(o, "created", -TSTORE_BIG, TSTORE_BIG, &t->created)) {
        t->weight = w->valuedouble;
        /* the record must describe its key */
        if (tenant_valid(t) && strlen(t->id) == k->mv_size && !memcmp(t->id, k->mv_data, k->mv_size)) rc = 0;
    }
    cJSON_Delete(o);
    return rc;
}

/* An astore__decode_fn: vout is a tstore_key. */
static int key_decode(const MDB_val *k, const MDB_val *v, void *vout) {
    tstore_key *out = vout;
    int rc;
    memset(out, 0, sizeof *out);
    cJSON *o = record_open(v, &rc);
    if (!o) return rc;
    rc = PEFTD_EFORMAT;
    if (astore__json_str(o, "id", out->id, sizeof out->id) && astore__json_str(o, "tenant", out->tenant, sizeof out->tenant) &&
        astore__json_str(o, "prefix", out->prefix, sizeof out->prefix) && astore__json_str(o, "sha256", out->sha256, sizeof out->sha256) &&
        astore__json_int(o, "created", -TSTORE_BIG, TSTORE_BIG, &out->created) && key_valid(out) &&
        k->mv_size == 64 && !memcmp(out->sha256, k->mv_data, 64))
        rc = 0;
    cJSON_Delete(o);
    return rc;
}

/* ---------------------------------------------------------------- feed */

/* The change record of a tenant/key write carrying its stored record (json). */
static int record_change(astore *s, MDB_txn *txn, const char *op, const char *key, const char *json) {
    size_t n = strlen(json) + 16;
    char *extra = malloc(n);
    if (!extra) return PEFTD_ENOMEM;
    snprintf(extra, n, "\"record\":%s", json);
    int rc = astore__change_txn(s, txn, op, key, extra);
    free(extra);
    return rc;
}

/* ---------------------------------------------------------------- tenants */

typedef struct {
    const tstore_tenant *t;
    bool create;
} tenant_put_ctx;

static int tenant_put_fn(astore *s, MDB_txn *txn, void *vctx) {
    tenant_put_ctx *c = vctx;
    tstore_tenant rec = *c->t, old;
    MDB_val k = astore__val_str(rec.id), v;
    int rc = mdb_get(txn, s->tenants, &k, &v);
    if (rc && rc != MDB_NOTFOUND) return rc;
    if (c->create && rc == 0) return PEFTD_EEXIST;
    if (!c->create && rc == MDB_NOTFOUND) return PEFTD_ENOTFOUND;
    if (rc == 0) {
        if ((rc = tenant_decode(&k, &v, &old))) return rc;
        rec.created = old.created;
    } else {
        rec.created = (int64_t)time(NULL);
    }
    char *json = tenant_encode(&rec);
    if (!json) return PEFTD_ENOMEM;
    v = astore__val_str(json);
    rc = mdb_put(txn, s->tenants, &k, &v, 0);
    if (rc == 0) rc = record_change(s, txn, "tenant_put", rec.id, json);
    free(json);
    return rc;
}

int tstore_tenant_create(astore *s, const tstore_tenant *t) {
    if (!s || !tenant_valid(t)) return PEFTD_EINVAL;
    tenant_put_ctx c = {.t = t, .create = true};
    return astore__write_txn(s, tenant_put_fn, &c);
}

int tstore_tenant_update(astore *s, const tstore_tenant *t) {
    if (!s || !tenant_valid(t)) return PEFTD_EINVAL;
    tenant_put_ctx c = {.t = t, .create = false};
    return astore__write_txn(s, tenant_put_fn, &c);
}

int tstore_tenant_get(astore *s, const char *id, tstore_tenant *out) {
    if (!s || !out || !tstore_id_valid(id)) return PEFTD_EINVAL;
    return astore__get_decoded(s, s->tenants, id, tenant_decode, out);
}

/* Every record of dbi that keep(record, arg) accepts (keep NULL: all), decoded in key
 * order inside one read transaction into a malloc'ed array of size-byte records.
 * @note caller frees *out (NULL when *n is 0 or on failure). */
static int list_decoded(astore *s, MDB_dbi dbi, astore__decode_fn decode, size_t size,
                        bool (*keep)(const void *rec, const void *arg), const void *arg, void **out, int *n) {
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    char *arr = NULL;
    int cnt = 0, cap = 0;
    *out = NULL;
    *n = 0;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    MDB_val k, v;
    if ((rc = mdb_cursor_open(txn, dbi, &cur)) == 0)
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            if (cnt == cap) { /* room for the next record: it is decoded in place */
                int c = cap ? 2 * cap : 8;
                void *p = realloc(arr, (size_t)c * size);
                if (!p) {
                    rc = PEFTD_ENOMEM;
                    break;
                }
                arr = p;
                cap = c;
            }
            void *rec = arr + (size_t)cnt * size;
            if ((rc = decode(&k, &v, rec))) break;
            if (!keep || keep(rec, arg)) cnt++;
        }
    if (cur) mdb_cursor_close(cur);
    astore__read_end(s, txn);
    if (rc == MDB_NOTFOUND) rc = 0;
    if (rc || cnt == 0) {
        free(arr);
        return astore__status(rc);
    }
    *out = arr;
    *n = cnt;
    return 0;
}

int tstore_tenant_list(astore *s, tstore_tenant **out, int *n) {
    *out = NULL;
    *n = 0;
    if (!s) return PEFTD_EINVAL;
    return list_decoded(s, s->tenants, tenant_decode, sizeof **out, NULL, NULL, (void **)out, n);
}

/* Deletes the keys matching tenant (and key_id when given) inside txn; *deleted counts them. */
static int keys_delete_txn(astore *s, MDB_txn *txn, const char *tenant, const char *key_id, int *deleted) {
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    tstore_key rec;
    *deleted = 0;
    int rc = mdb_cursor_open(txn, s->keys, &cur);
    if (rc) return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if ((rc = key_decode(&k, &v, &rec))) break;
        if (strcmp(rec.tenant, tenant) || (key_id && strcmp(rec.id, key_id))) continue;
        if ((rc = mdb_cursor_del(cur, 0))) break;
        (*deleted)++;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

typedef struct {
    const char *tenant, *key_id;
    int deleted;
    astore_removed *removed;
} del_ctx;

static int tenant_del_fn(astore *s, MDB_txn *txn, void *vctx) {
    del_ctx *c = vctx;
    MDB_val k = astore__val_str(c->tenant);
    if (c->removed) { /* the body may run again after the map grew: start the report over */
        astore_removed_free(c->removed);
    }
    int rc = mdb_del(txn, s->tenants, &k, NULL);
    if (rc == MDB_NOTFOUND) return PEFTD_ENOTFOUND;
    if (rc) return rc;
    if ((rc = keys_delete_txn(s, txn, c->tenant, NULL, &c->deleted))) return rc;
    if ((rc = astore__delete_owner_txn(s, txn, c->tenant, c->removed))) return rc;
    return astore__change_txn(s, txn, "tenant_delete", c->tenant, NULL);
}

int tstore_tenant_delete(astore *s, const char *id, astore_removed *removed) {
    if (removed) memset(removed, 0, sizeof *removed);
    if (!s || !tstore_id_valid(id)) return PEFTD_EINVAL;
    del_ctx c = {.tenant = id, .removed = removed};
    int rc = astore__write_txn(s, tenant_del_fn, &c);
    if (rc && removed) astore_removed_free(removed);
    return rc;
}

/* ---------------------------------------------------------------- keys */

static int key_add_fn(astore *s, MDB_txn *txn, void *vctx) {
    const tstore_key *kr = vctx;
    MDB_val tk = astore__val_str(kr->tenant), tv;
    int rc = mdb_get(txn, s->tenants, &tk, &tv);
    if (rc == MDB_NOTFOUND) return PEFTD_ENOTFOUND;
    if (rc) return rc;
    char *json = key_encode(kr);
    if (!json) return PEFTD_ENOMEM;
    MDB_val k = astore__val_str(kr->sha256), v = astore__val_str(json);
    /* MDB_NOOVERWRITE: a 256-bit collision is impossible in practice; refusing is safer
     * than silently moving a key to another tenant */
    rc = mdb_put(txn, s->keys, &k, &v, MDB_NOOVERWRITE);
    if (rc == 0) rc = record_change(s, txn, "key_put", kr->sha256, json);
    free(json);
    return rc == MDB_KEYEXIST ? PEFTD_EEXIST : rc;
}

int tstore_key_add(astore *s, const tstore_key *k) {
    if (!s || !key_valid(k)) return PEFTD_EINVAL;
    return astore__write_txn(s, key_add_fn, (void *)k);
}

int tstore_key_find(astore *s, const char *sha, tstore_key *out) {
    if (!s || !out || !astore__sha_valid(sha)) return PEFTD_EINVAL;
    return astore__get_decoded(s, s->keys, sha, key_decode, out);
}

static bool key_of_tenant(const void *rec, const void *tenant) {
    return !strcmp(((const tstore_key *)rec)->tenant, tenant);
}

int tstore_key_list(astore *s, const char *tenant, tstore_key **out, int *n) {
    *out = NULL;
    *n = 0;
    if (!s || (tenant && !tstore_id_valid(tenant))) return PEFTD_EINVAL;
    return list_decoded(s, s->keys, key_decode, sizeof **out, tenant ? key_of_tenant : NULL, tenant, (void **)out, n);
}

static int key_revoke_fn(astore *s, MDB_txn *txn, void *vctx) {
    del_ctx *c = vctx;
    int rc = keys_delete_txn(s, txn, c->tenant, c->key_id, &c->deleted);
    if (rc == 0 && c->deleted == 0) rc = PEFTD_ENOTFOUND;
    if (rc == 0) {
        char extra[96];
        snprintf(extra, sizeof extra, "\"key_id\":\"%s\"", c->key_id);
        rc = astore__change_txn(s, txn, "key_revoke", c->tenant, extra);
    }
    return rc;
}

int tstore_key_revoke(astore *s, const char *tenant, const char *key_id) {
    if (!s || !tstore_id_valid(tenant) || !key_id || !*key_id) return PEFTD_EINVAL;
    del_ctx c = {.tenant = tenant, .key_id = key_id};
    return astore__write_txn(s, key_revoke_fn, &c);
}

/* ---------------------------------------------------------------- replication */

typedef struct {
    uint64_t seq;
    const char *op, *key, *record, *key_id;
    astore_removed *removed;
    bool skip;
} apply_ctx;

/* A replicated record is decoded like one read from disk before it is written. */
static int apply_record(MDB_txn *txn, MDB_dbi dbi, const char *key, const char *record, astore__decode_fn decode,
                        void *scratch) {
    MDB_val k = astore__val_str(key), v = astore__val_str(record);
    int rc = decode(&k, &v, scratch);
    return rc ? rc : mdb_put(txn, dbi, &k, &v, 0);
}

static int apply_fn(astore *s, MDB_txn *txn, void *vctx) {
    apply_ctx *c = vctx;
    tstore_tenant t;
    tstore_key kr;
    int rc, deleted;
    if (c->removed) astore_removed_free(c->removed);
    if ((rc = astore__position_txn(s, txn, c->seq, &c->skip)) || c->skip) return rc;
    if (!strcmp(c->op, "tenant_put")) {
        if (!c->record || !tstore_id_valid(c->key)) return PEFTD_EINVAL;
        return apply_record(txn, s->tenants, c->key, c->record, tenant_decode, &t);
    }
    if (!strcmp(c->op, "key_put")) {
        if (!c->record || !astore__sha_valid(c->key)) return PEFTD_EINVAL;
        return apply_record(txn, s->keys, c->key, c->record, key_decode, &kr);
    }
    if (!strcmp(c->op, "key_revoke")) {
        if (!tstore_id_valid(c->key) || !c->key_id || !*c->key_id) return PEFTD_EINVAL;
        return keys_delete_txn(s, txn, c->key, c->key_id, &deleted);
    }
    if (!strcmp(c->op, "key_delete")) { /* a resync: the record of this sha goes */
        if (!astore__sha_valid(c->key)) return PEFTD_EINVAL;
        MDB_val k = astore__val_str(c->key);
        rc = mdb_del(txn, s->keys, &k, NULL);
        return rc == MDB_NOTFOUND ? 0 : rc;
    }
    if (!strcmp(c->op, "tenant_delete")) {
        if (!tstore_id_valid(c->key)) return PEFTD_EINVAL;
        MDB_val k = astore__val_str(c->key);
        rc = mdb_del(txn, s->tenants, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) return rc;
        if ((rc = keys_delete_txn(s, txn, c->key, NULL, &deleted))) return rc;
        return astore__delete_owner_txn(s, txn, c->key, c->removed);
    }
    return PEFTD_EINVAL;
}

int astore_apply_tenant(astore *s, uint64_t seq, const char *op, const char *key, const char *record,
                        const char *key_id, astore_removed *removed) {
    if (removed) memset(removed, 0, sizeof *removed);
    if (!s || !op || !key) return PEFTD_EINVAL;
    apply_ctx c = {.seq = seq, .op = op, .key = key, .record = record, .key_id = key_id, .removed = removed};
    int rc = astore__write_txn(s, apply_fn, &c);
    if (rc && removed) astore_removed_free(removed);
    if (rc) return rc;
    return c.skip ? 1 : 0;
}
