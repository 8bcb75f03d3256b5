/* server/api/api_admin.c — tenant administration (admin key only; http_auth.c checks it):
 *   POST   /v1/admin/tenants                 {"id", "weight"?, "limits"?: {...}}  -> 201 tenant
 *   GET    /v1/admin/tenants                 -> list
 *   GET    /v1/admin/tenants/{id}            -> tenant (+ usage)
 *   PATCH  /v1/admin/tenants/{id}            {"weight"?, "limits"?: {...}}        -> tenant
 *   DELETE /v1/admin/tenants/{id}            -> the tenant, its keys and its adapters go
 *   POST   /v1/admin/tenants/{id}/keys       -> 201 {"id", "key", ...}: the key, shown this once
 *   GET    /v1/admin/tenants/{id}/keys       -> list (ids and prefixes, never a key)
 *   DELETE /v1/admin/tenants/{id}/keys/{kid} -> revoked
 * limits: {"max_concurrent", "tokens_per_min", "max_storage_bytes"}: integers >= 0, 0 =
 * unlimited; a PATCH changes only the fields it names.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <openssl/crypto.h>

#include "adapter_store/json_check.h"
#include "lib/status.h"
#include "server/api/api_internal.h"
#include "server/http/http_auth.h"
#include "server/http/http_metrics.h"

/* Upper bound of a tenant's weight: weights are ratios of service, 1000:1 is plenty. */
#define ADMIN_WEIGHT_MAX 1000.0

static cJSON *tenant_json(const tstore_tenant *t) {
    cJSON *o = cJSON_CreateObject(), *l = NULL;
    if (!o || !cJSON_AddStringToObject(o, "id", t->id) || !cJSON_AddStringToObject(o, "object", "tenant") ||
        !cJSON_AddNumberToObject(o, "weight", t->weight) || !(l = cJSON_AddObjectToObject(o, "limits")) ||
        !cJSON_AddNumberToObject(l, "max_concurrent", (double)t->max_concurrent) ||
        !cJSON_AddNumberToObject(l, "tokens_per_min", (double)t->tokens_per_min) ||
        !cJSON_AddNumberToObject(l, "max_storage_bytes", (double)t->max_storage_bytes) ||
        !cJSON_AddNumberToObject(o, "created", (double)t->created)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *key_json(const tstore_key *k) {
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "id", k->id) || !cJSON_AddStringToObject(o, "object", "api_key") ||
        !cJSON_AddStringToObject(o, "tenant", k->tenant) || !cJSON_AddStringToObject(o, "prefix", k->prefix) ||
        !cJSON_AddNumberToObject(o, "created", (double)k->created)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *tenant_item(const void *t) { return tenant_json(t); }
static cJSON *key_item(const void *k) { return key_json(k); }

/* {"data": [item(v[0]), ...], "object": "list"}: every list route's shape; NULL when out
 * of memory. */
static cJSON *list_json(const void *v, size_t size, int n, cJSON *(*item)(const void *)) {
    cJSON *root = cJSON_CreateObject(), *data = cJSON_AddArrayToObject(root, "data");
    bool ok = data && cJSON_AddStringToObject(root, "object", "list");
    for (int i = 0; ok && i < n; i++) {
        cJSON *o = item((const char *)v + (size_t)i * size);
        ok = o && cJSON_AddItemToArray(data, o);
        if (!ok) cJSON_Delete(o);
    }
    if (!ok) {
        cJSON_Delete(root);
        root = NULL;
    }
    return root;
}

/* What a DELETE answers: {"id", "object", ("tenant",) <flag>: true}; NULL when out of memory. */
static cJSON *gone_json(const char *id, const char *object, const char *tenant, const char *flag) {
    cJSON *o = cJSON_CreateObject();
    if (!cJSON_AddStringToObject(o, "id", id) || !cJSON_AddStringToObject(o, "object", object) ||
        (tenant && !cJSON_AddStringToObject(o, "tenant", tenant)) || !cJSON_AddBoolToObject(o, flag, true)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* A non-negative integer field; absent leaves *out. false (message in err) when malformed. */
static bool get_limit(const cJSON *o, const char *k, int64_t *out, char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v) return true;
    /* 2^53: the largest integer JSON numbers carry exactly */
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
        v->valuedouble > 9007199254740991.0) {
        snprintf(err, errlen, "'limits.%s' must be an integer >= 0 (0 = unlimited)", k);
        return false;
    }
    *out = (int64_t)v->valuedouble;
    return true;
}

/* Applies the body's weight and limits to *t; allowed lists the accepted top-level keys. */
static bool apply_body(const cJSON *root, tstore_tenant *t, const char *const *allowed, char *err, size_t errlen) {
    static const char *const limit_keys[] = {"max_concurrent", "tokens_per_min", "max_storage_bytes", NULL};
    for (const cJSON *it = root->child; it; it = it->next) {
        bool ok = false;
        for (int i = 0; allowed[i]; i++) ok |= !strcmp(it->string, allowed[i]);
        if (!ok) {
            snprintf(err, errlen, "unknown field '%.64s'", it->string);
            return false;
        }
    }
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(root, "weight");
    if (w) {
        if (!cJSON_IsNumber(w) || !(w->valuedouble > 0) || w->valuedouble > ADMIN_WEIGHT_MAX) {
            snprintf(err, errlen, "'weight' must be a number in (0, %g]", ADMIN_WEIGHT_MAX);
            return false;
        }
        t->weight = w->valuedouble;
    }
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(root, "limits");
    if (l) {
        if (!cJSON_IsObject(l)) {
            snprintf(err, errlen, "'limits' must be an object");
            return false;
        }
        for (const cJSON *it = l->child; it; it = it->next) {
            bool ok = false;
            for (int i = 0; limit_keys[i]; i++) ok |= !strcmp(it->string, limit_keys[i]);
            if (!ok) {
                snprintf(err, errlen, "unknown limit '%.64s' (max_concurrent, tokens_per_min, max_storage_bytes)",
                         it->string);
                return false;
            }
        }
        if (!get_limit(l, "max_concurrent", &t->max_concurrent, err, errlen) ||
            !get_limit(l, "tokens_per_min", &t->tokens_per_min, err, errlen) ||
            !get_limit(l, "max_storage_bytes", &t->max_storage_bytes, err, errlen))
            return false;
    }
    return true;
}

static cJSON *parse_body(http_req *req, char *err, size_t errlen) {
    if (req->body && http_json_has_nul(req->body, req->len)) {
        snprintf(err, errlen, "the request body holds a NUL character (\\u0000) in a string: not allowed here");
        return NULL;
    }
    cJSON *root = req->body && req->len ? cJSON_ParseWithLength(req->body, req->len) : NULL;
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "the request body must be a JSON object");
        cJSON_Delete(root);
        return NULL;
    }
    const char *dup = json_duplicate_key(root);
    if (dup) {
        snprintf(err, errlen, "the request body has the key \"%.64s\" twice", dup);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static enum MHD_Result not_enabled(http_req *req, struct MHD_Connection *conn) {
    return http_error(req, conn, MHD_HTTP_NOT_FOUND, "auth_disabled",
                      "tenant administration needs auth.enabled in the daemon's configuration");
}

static enum MHD_Result tenants_create_req(http_req *req, struct MHD_Connection *conn) {
    tenants *ts = api_of(req)->cfg.tenants;
    char err[256];
    tstore_tenant t = {.weight = 1.0};
    cJSON *root = parse_body(req, err, sizeof err);
    static const char *const allowed[] = {"id", "weight", "limits", NULL};
    if (!root) return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_json", "%s", err);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
    bool ok = apply_body(root, &t, allowed, err, sizeof err);
    if (ok && (!cJSON_IsString(id) || !tstore_id_valid(id->valuestring))) {
        snprintf(err, sizeof err, "'id' must be 1-64 characters from [A-Za-z0-9._-], not starting with '.' or '-'");
        ok = false;
    }
    if (ok && (!strcmp(id->valuestring, HTTP_TENANT_OTHER) || !strcmp(id->valuestring, HTTP_TENANT_ANON))) {
        /* /metrics' tenant label uses these for anonymous traffic and for the tenants past
         * its series bound: a tenant of that name would be mixed with them */
        snprintf(err, sizeof err, "'%s' is reserved (a /metrics tenant label): choose another id", id->valuestring);
        ok = false;
    }
    if (ok) snprintf(t.id, sizeof t.id, "%s", id->valuestring);
    cJSON_Delete(root);
    if (!ok) return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_value", "%s", err);
    int rc = tenants_create(ts, &t);
    if (rc < 0) return api_fail_status(req, conn, rc, "tenant", NULL);
    tenants_get(ts, t.id, &t);
    return http_respond_json(req, conn, MHD_HTTP_CREATED, tenant_json(&t));
}

enum MHD_Result api_admin_tenants(http_req *req, struct MHD_Connection *conn) {
    if (!http_auth_on(req->srv)) return not_enabled(req, conn);
    enum MHD_Result ret;
    if (req->method == HTTP_M_POST && api_replica_refuses(req, conn, &ret)) return ret;
    if (req->method == HTTP_M_POST) return tenants_create_req(req, conn);
    tstore_tenant *v = NULL;
    int n = 0;
    int rc = tstore_tenant_list(api_of(req)->store, &v, &n);
    if (rc < 0) return api_fail_status(req, conn, rc, "listing tenants", NULL);
    cJSON *root = list_json(v, sizeof *v, n, tenant_item);
    free(v);
    return http_respond_json(req, conn, MHD_HTTP_OK, root);
}

static enum MHD_Result keys_req(http_req *req, struct MHD_Connection *conn, const char *id, const char *kid) {
    tenants *ts = api_of(req)->cfg.tenants;
    if (kid) {
        if (req->method != HTTP_M_DELETE)
            return http_error_hdr(req, conn, MHD_HTTP_METHOD_NOT_ALLOWED, NULL, MHD_HTTP_HEADER_ALLOW, "DELETE",
                                  "a key can only be revoked (DELETE)");
        int rc = tenants_key_revoke(ts, id, kid);
        if (rc < 0) return api_fail_status(req, conn, rc, "api key", NULL);
        return http_respond_json(req, conn, MHD_HTTP_OK, gone_json(kid, "api_key", id, "revoked"));
    }
    if (req->method == HTTP_M_POST) {
        char key[TENANTS_KEY_LEN + 1];
        tstore_key rec;
        int rc = tenants_key_create(ts, id, key, &rec);
        if (rc < 0) return api_fail_status(req, conn, rc, "tenant", NULL);
        cJSON *o = key_json(&rec);
        if (o && !cJSON_AddStringToObject(o, "key", key)) {
            cJSON_Delete(o);
            o = NULL;
        }
        OPENSSL_cleanse(key, sizeof key);
        return http_respond_json(req, conn, MHD_HTTP_CREATED, o);
    }
    if (!(req->method & (HTTP_M_GET | HTTP_M_HEAD)))
        return http_error_hdr(req, conn, MHD_HTTP_METHOD_NOT_ALLOWED, NULL, MHD_HTTP_HEADER_ALLOW, "GET, HEAD, POST",
                              "use GET (list) or POST (create) on a tenant's keys");
    tstore_tenant t;
    if (tenants_get(ts, id, &t) < 0) return api_fail_status(req, conn, PEFTD_ENOTFOUND, "tenant", NULL);
    tstore_key *v = NULL;
    int n = 0;
    int rc = tenants_key_list(ts, id, &v, &n);
    if (rc < 0) return api_fail_status(req, conn, rc, "listing keys", NULL);
    cJSON *root = list_json(v, sizeof *v, n, key_item);
    free(v);
    return http_respond_json(req, conn, MHD_HTTP_OK, root);
}

enum MHD_Result api_admin_tenant_item(http_req *req, struct MHD_Connection *conn) {
    api_server *s = api_of(req);
    tenants *ts = s->cfg.tenants;
    if (!http_auth_on(req->srv)) return not_enabled(req, conn);
    enum MHD_Result ret;
    if (!(req->method & HTTP_M_READ) && api_replica_refuses(req, conn, &ret)) return ret;
    /* {id}, {id}/keys or {id}/keys/{kid} */
    char id[TSTORE_ID_MAX + 1] = "", kid[32] = "";
    const char *arg = req->arg ? req->arg : "", *slash = strchr(arg, '/');
    size_t idlen = slash ? (size_t)(slash - arg) : strlen(arg);
    bool keys = false;
    if (idlen <= TSTORE_ID_MAX) {
        memcpy(id, arg, idlen);
        id[idlen] = 0;
    }
    if (slash) {
        const char *rest = slash + 1;
        if (!strcmp(rest, "keys")) {
            keys = true;
        } else if (!strncmp(rest, "keys/", 5) && strlen(rest + 5) > 0 && strlen(rest + 5) < sizeof kid &&
                   !strchr(rest + 5, '/')) {
            keys = true;
            snprintf(kid, sizeof kid, "%s", rest + 5);
        } else {
            return http_error(req, conn, MHD_HTTP_NOT_FOUND, "not_found",
                              "use /v1/admin/tenants/{id}, {id}/keys or {id}/keys/{key id}");
        }
    }
    if (!tstore_id_valid(id))
        return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_value",
                          "a tenant id is 1-64 characters from [A-Za-z0-9._-], not starting with '.' or '-'");
    if (keys) return keys_req(req, conn, id, kid[0] ? kid : NULL);

    tstore_tenant t;
    int rc;
    switch (req->method) {
    case HTTP_M_DELETE:
        /* the tenant, its keys and its adapters in one transaction (an upload racing it
         * fails); then the registry and caches drop the adapters */
        rc = s->svc ? adapter_service_delete_tenant(s->svc, ts, id) : tenants_delete(ts, id, NULL);
        if (rc < 0) return api_fail_status(req, conn, rc, "tenant", NULL);
        return http_respond_json(req, conn, MHD_HTTP_OK, gone_json(id, "tenant", NULL, "deleted"));
    case HTTP_M_PATCH: {
        char err[256];
        static const char *const allowed[] = {"weight", "limits", NULL};
        if ((rc = tenants_get(ts, id, &t)) < 0) return api_fail_status(req, conn, rc, "tenant", NULL);
        cJSON *root = parse_body(req, err, sizeof err);
        if (!root) return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_json", "%s", err);
        bool ok = apply_body(root, &t, allowed, err, sizeof err);
        cJSON_Delete(root);
        if (!ok) return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_value", "%s", err);
        if ((rc = tenants_update(ts, &t)) < 0) return api_fail_status(req, conn, rc, "tenant", NULL);
        tenants_get(ts, id, &t);
        return http_respond_json(req, conn, MHD_HTTP_OK, tenant_json(&t));
    }
    case HTTP_M_GET:
    case HTTP_M_HEAD: {
        if ((rc = tenants_get(ts, id, &t)) < 0) return api_fail_status(req, conn, rc, "tenant", NULL);
        uint64_t used = 0;
        astore_owner_bytes(s->store, id, &used);
        cJSON *o = tenant_json(&t), *u = o ? cJSON_AddObjectToObject(o, "usage") : NULL;
        if (!u || !cJSON_AddNumberToObject(u, "storage_bytes", (double)used)) {
            cJSON_Delete(o);
            o = NULL;
        }
        return http_respond_json(req, conn, MHD_HTTP_OK, o);
    }
    default:
        return http_error_hdr(req, conn, MHD_HTTP_METHOD_NOT_ALLOWED, NULL, MHD_HTTP_HEADER_ALLOW,
                              "GET, HEAD, PATCH, DELETE", "use GET, PATCH or DELETE on a tenant");
    }
}
