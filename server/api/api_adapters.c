/* server/api/api_adapters.c — the adapter resource, read and delete side:
 * GET /v1/adapters (paginated by name), GET /v1/adapters/{name}, DELETE /v1/adapters/{name},
 * the adapter description every answer uses (status mapping: api_status.c). Uploads (PUT) stream through api_adapters_upload.c.
 *
 * The store is the source of truth: listing and showing read it (short LMDB read
 * transactions, copied out), deleting goes through the adapter service so that the
 * registry and the caches follow.
 *
 * With auth on every operation is scoped to the caller (http_owner): a tenant sees its
 * own adapters and the public ones (its own shadowing a public one of the same name),
 * deletes only its own (a public one: 403), and another tenant's adapter answers exactly
 * like a missing one (404, same body). The admin works on the public adapters.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/status.h"
#include "server/http/http_auth.h"
#include "server/api/api_internal.h"

/* Page sizes of GET /v1/adapters: OpenAI's list endpoints default to 20 and cap at 100;
 * our entries are small (~300 bytes of JSON), so a page of 100 by default and 1000 at
 * most keeps one answer under ~300 KiB. */
#define API_ADAPTERS_LIMIT_DEFAULT 100
#define API_ADAPTERS_LIMIT_MAX 1000

cJSON *api_adapter_meta_json(const astore_meta *m) {
    cJSON *o = cJSON_CreateObject(), *ranks = NULL;
    if (!cJSON_AddStringToObject(o, "id", m->name) || !cJSON_AddStringToObject(o, "object", "adapter") ||
        !cJSON_AddNumberToObject(o, "version", (double)m->version) ||
        !cJSON_AddStringToObject(o, "kind", adapter_kind_name(m->kind)) ||
        !(ranks = cJSON_AddArrayToObject(o, "ranks")) ||
        !cJSON_AddNumberToObject(o, "n_params", (double)m->n_params) ||
        !cJSON_AddNumberToObject(o, "bytes", (double)m->bytes) || !cJSON_AddStringToObject(o, "sha256", m->sha256) ||
        !cJSON_AddNumberToObject(o, "created", (double)m->created) ||
        !cJSON_AddNumberToObject(o, "updated", (double)m->updated) ||
        !cJSON_AddNumberToObject(o, "n_virtual", m->n_virtual))
        goto fail;
    for (int i = 0; i < m->n_ranks && i < (int)(sizeof m->ranks / sizeof m->ranks[0]); i++) {
        cJSON *r = cJSON_CreateNumber(m->ranks[i]);
        if (!r || !cJSON_AddItemToArray(ranks, r)) goto fail;
    }
    cJSON *targets = cJSON_AddArrayToObject(o, "targets");
    if (!targets) goto fail;
    /* meta.targets is comma-separated; the API gives a list. */
    char buf[sizeof m->targets];
    snprintf(buf, sizeof buf, "%s", m->targets);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        cJSON *s = cJSON_CreateString(t);
        if (!s || !cJSON_AddItemToArray(targets, s)) goto fail;
    }
    if (m->owner[0] && !cJSON_AddStringToObject(o, "owner", m->owner)) goto fail;
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

enum MHD_Result api_adapters__no_store(http_req *req, struct MHD_Connection *conn) {
    return http_error(req, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "store_not_configured",
                      "adapter store not configured (start peftd with --store DIR)");
}

enum MHD_Result api_adapters__bad_name(http_req *req, struct MHD_Connection *conn, const char *name) {
    /* The name is client bytes: quote it only as valid UTF-8, cut at a character. */
    bool ok = http_utf8_valid(name, strlen(name));
    return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_name",
                      "invalid adapter name '%.*s'%s: use 1-%d characters, segments of [A-Za-z0-9._-] separated "
                      "by '/' (a Hugging Face id org/name), none empty or starting with '.' or '-'",
                      ok ? (int)http_utf8_prefix(name, 80) : 0, ok ? name : "",
                      ok ? (strlen(name) > 80 ? "..." : "") : "(not UTF-8)", ASTORE_NAME_MAX);
}

/* A query parameter as an integer in [lo, hi]; absent = dflt. -1 when malformed. */
static int api_query_int(struct MHD_Connection *conn, const char *key, long lo, long hi, long dflt, long *out) {
    const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, key);
    if (!v) {
        *out = dflt;
        return 0;
    }
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

enum MHD_Result api_adapters_list(http_req *req, struct MHD_Connection *conn) {
    api_server *s = api_of(req);
    if (!s->store) return api_adapters__no_store(req, conn);
    long limit = 0;
    if (api_query_int(conn, "limit", 1, API_ADAPTERS_LIMIT_MAX, API_ADAPTERS_LIMIT_DEFAULT, &limit) < 0)
        return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_value",
                          "'limit' must be an integer from 1 to %d", API_ADAPTERS_LIMIT_MAX);
    const char *after = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "after");
    if (!after) after = "";
    if (after[0] && !registry_name_valid(after))
        return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_value",
                          "'after' must be an adapter name (the last_id of the previous page)");

    astore_meta *metas = malloc((size_t)limit * sizeof *metas);
    if (!metas) return api_fail_status(req, conn, PEFTD_ENOMEM, "listing adapters", NULL);
    int n = 0;
    bool more = false;
    int rc = astore_list_visible(s->store, http_owner(req), after, (int)limit, metas, &n, &more);
    if (rc < 0) {
        free(metas);
        return api_fail_status(req, conn, rc, "listing adapters", NULL);
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    if (!data || !cJSON_AddStringToObject(root, "object", "list")) goto oom;
    for (int i = 0; i < n; i++) {
        cJSON *m = api_adapter_meta_json(&metas[i]);
        if (!m || !cJSON_AddItemToArray(data, m)) {
            cJSON_Delete(m);
            goto oom;
        }
    }
    if (!cJSON_AddBoolToObject(root, "has_more", more) ||
        !(n ? cJSON_AddStringToObject(root, "first_id", metas[0].name) : cJSON_AddNullToObject(root, "first_id")) ||
        !(n ? cJSON_AddStringToObject(root, "last_id", metas[n - 1].name) : cJSON_AddNullToObject(root, "last_id")))
        goto oom;
    free(metas);
    return http_respond_json(req, conn, MHD_HTTP_OK, root);
oom:
    free(metas);
    cJSON_Delete(root);
    return http_respond_json(req, conn, MHD_HTTP_OK, NULL);
}

enum MHD_Result api_adapters_item(http_req *req, struct MHD_Connection *conn) {
    api_server *s = api_of(req);
    /* a PUT's body goes to the route's hooks (api_adapters_upload.c); here only when its
     * begin hook answered nothing and set no upload */
    if (req->method == HTTP_M_PUT)
        return http_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "no upload in progress");
    if (!s->store) return api_adapters__no_store(req, conn);
    const char *name = req->arg ? req->arg : "";
    if (!registry_name_valid(name)) return api_adapters__bad_name(req, conn, name);

    const char *owner = http_owner(req);
    astore_meta meta;
    enum MHD_Result ret;
    if (req->method == HTTP_M_DELETE && api_replica_refuses(req, conn, &ret)) return ret;
    if (req->method == HTTP_M_DELETE) {
        int rc = adapter_service_delete(s->svc, owner, name);
        if (rc == PEFTD_ENOTFOUND && owner[0] && astore_get_meta_scoped(s->store, "", name, &meta) == 0)
            return http_error(req, conn, MHD_HTTP_FORBIDDEN, "permission_denied",
                              "'%s' is a public adapter: only the admin can delete it", name);
        if (rc == PEFTD_ENOTFOUND)
            return http_error(req, conn, MHD_HTTP_NOT_FOUND, api_status_http(PEFTD_ENOTFOUND)->code, "no adapter named '%s'", name);
        if (rc < 0) return api_fail_status(req, conn, rc, "deleting the adapter", NULL);
        cJSON *o = cJSON_CreateObject();
        if (!cJSON_AddStringToObject(o, "id", name) || !cJSON_AddStringToObject(o, "object", "adapter") ||
            !cJSON_AddBoolToObject(o, "deleted", true)) {
            cJSON_Delete(o);
            o = NULL;
        }
        return http_respond_json(req, conn, MHD_HTTP_OK, o);
    }

    /* the caller's own first, then the public one (owner "" for the admin and auth off) */
    int rc = astore_get_meta_scoped(s->store, owner, name, &meta);
    if (rc == PEFTD_ENOTFOUND && owner[0]) rc = astore_get_meta_scoped(s->store, "", name, &meta);
    if (rc == PEFTD_ENOTFOUND)
        return http_error(req, conn, MHD_HTTP_NOT_FOUND, api_status_http(PEFTD_ENOTFOUND)->code, "no adapter named '%s'", name);
    if (rc < 0) return api_fail_status(req, conn, rc, "reading the adapter", NULL);
    return http_respond_json(req, conn, MHD_HTTP_OK, api_adapter_meta_json(&meta));
}
