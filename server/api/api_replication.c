/* server/api/api_replication.c — the primary's replication endpoints (what followers pull,
 * server/replication/follower.h) and the follower's refusal of writes:
 *   GET /v1/replication/changes?after=N&limit=M   {"feed_id","last_seq","oldest_seq","resync","changes":[...]}
 *       the change records after N (store_changes.h), at most M (default 256, max 4096);
 *       "resync": true when records after N were dropped by retention (then use snapshot)
 *   GET /v1/replication/snapshot                  the whole catalogue at one sequence number
 *   GET /v1/replication/blobs/{sha256}            a version's blob payload (octet-stream),
 *       verified against the store's own checksum on read; 404 once no name refers to it
 * With auth on these need the admin key (they expose every tenant's adapters and key
 * hashes). On a follower (store.follow) every write answers 307 to the same path on the
 * primary, with an error body saying so (clients that do not follow redirects see why);
 * so do the replication endpoints (a follower of a follower is sent to the primary).
 * Also the replication part of /metrics and of /ready's details (both roles).
 */
#include <cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/store_changes.h"
#include "lib/status.h"
#include "server/api/api_internal.h"
#include "server/http/http_auth.h"
#include "server/replication/follower.h"

#define CHANGES_DEFAULT 256
#define CHANGES_MAX 4096

static bool repl_denied(http_req *req, struct MHD_Connection *conn, enum MHD_Result *ret) {
    api_server *s = api_of(req);
    /* a follower's own feed is empty (what it applies is not re-published): a follower
     * pointed at it is sent on to the primary */
    if (api_replica_refuses(req, conn, ret)) return true;
    if (!s->store) {
        *ret = api_adapters__no_store(req, conn);
        return true;
    }
    if (http_auth_on(req->srv) && req->who.role != TENANTS_ADMIN) {
        *ret = http_error(req, conn, MHD_HTTP_FORBIDDEN, "permission_denied", "replication needs the admin key");
        return true;
    }
    return false;
}

/* A decimal u64 query argument; def when absent; false when malformed. */
static bool arg_u64(struct MHD_Connection *conn, const char *key, uint64_t def, uint64_t *out) {
    const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, key);
    *out = def;
    if (!v) return true;
    if (!*v || strspn(v, "0123456789") != strlen(v) || strlen(v) > 19) return false;
    *out = strtoull(v, NULL, 10);
    return true;
}

static enum MHD_Result changes_get(http_req *req, struct MHD_Connection *conn) {
    api_server *s = api_of(req);
    uint64_t after, limit;
    if (!arg_u64(conn, "after", 0, &after))
        return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_value", "'after' must be a sequence number");
    if (!arg_u64(conn, "limit", CHANGES_DEFAULT, &limit) || limit < 1 || limit > CHANGES_MAX)
        return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_value", "'limit' must be in [1, %d]", CHANGES_MAX);
    char *arr;
    int n;
    uint64_t last, oldest;
    bool resync;
    int rc = astore_changes_read(s->store, after, (int)limit, &arr, &n, &last, &oldest, &resync);
    if (rc < 0) return api_fail_status(req, conn, rc, "reading the change feed", NULL);
    char id[33];
    size_t cap = strlen(arr) + 220;
    char *body = (rc = astore_feed_id(s->store, id)) < 0 ? NULL : malloc(cap);
    if (!body) {
        free(arr);
        return api_fail_status(req, conn, rc < 0 ? rc : PEFTD_ENOMEM, "reading the change feed", NULL);
    }
    int len = snprintf(body, cap,
                       "{\"feed_id\":\"%s\",\"last_seq\":%" PRIu64 ",\"oldest_seq\":%" PRIu64
                       ",\"resync\":%s,\"changes\":%s}",
                       id, last, oldest, resync ? "true" : "false", arr);
    free(arr);
    enum MHD_Result ret = http_respond(req, conn, MHD_HTTP_OK, "application/json", body, (size_t)len, NULL, NULL);
    free(body);
    return ret;
}

enum MHD_Result api_replication_changes(http_req *req, struct MHD_Connection *conn) {
    enum MHD_Result ret;
    if (repl_denied(req, conn, &ret)) return ret;
    return changes_get(req, conn);
}

enum MHD_Result api_replication_snapshot(http_req *req, struct MHD_Connection *conn) {
    enum MHD_Result ret;
    if (repl_denied(req, conn, &ret)) return ret;
    char *j;
    int rc = astore_snapshot(api_of(req)->store, &j);
    if (rc < 0) return api_fail_status(req, conn, rc, "reading the catalogue", NULL);
    ret = http_respond(req, conn, MHD_HTTP_OK, "application/json", j, strlen(j), NULL, NULL);
    free(j);
    return ret;
}

enum MHD_Result api_replication_blob(http_req *req, struct MHD_Connection *conn) {
    enum MHD_Result ret;
    if (repl_denied(req, conn, &ret)) return ret;
    const char *sha = req->arg ? req->arg : "";
    if (strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64)
        return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_value", "a blob is named by 64 lowercase hex digits");
    void *blob;
    size_t len;
    int rc = astore_get_blob(api_of(req)->store, sha, &blob, &len);
    if (rc == PEFTD_ENOTFOUND)
        return http_error(req, conn, MHD_HTTP_NOT_FOUND, "not_found", "no stored version has this blob (any more)");
    if (rc < 0) return api_fail_status(req, conn, rc, "reading the blob", NULL);
    ret = http_respond(req, conn, MHD_HTTP_OK, "application/octet-stream", blob, len, NULL, NULL);
    free(blob);
    return ret;
}

/* Appends s to the Location being built, percent-encoding every byte but unreserved ones
 * and those in keep (NULL: nothing encoded). */
typedef struct {
    char *p;
    size_t cap, len;
} loc_buf;

static void loc_add(loc_buf *b, const char *s, const char *keep) {
    static const char hexd[] = "0123456789ABCDEF";
    for (; *s && b->len + 4 < b->cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (!keep || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            strchr("-._~", c) || strchr(keep, c)) {
            b->p[b->len++] = (char)c;
        } else {
            b->p[b->len++] = '%';
            b->p[b->len++] = hexd[c >> 4];
            b->p[b->len++] = hexd[c & 15];
        }
    }
    b->p[b->len] = 0;
}

static enum MHD_Result loc_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    loc_buf *b = cls;
    loc_add(b, strchr(b->p, '?') ? "&" : "?", NULL);
    loc_add(b, key, "");
    if (value) {
        loc_add(b, "=", NULL);
        loc_add(b, value, "");
    }
    return MHD_YES;
}

bool api_replica_refuses(http_req *req, struct MHD_Connection *conn, enum MHD_Result *ret) {
    api_server *s = api_of(req);
    const char *primary = s->cfg.follow_url;
    if (!primary || !primary[0]) return false;
    char loc[1024], msg[1400];
    size_t pl = strlen(primary);
    while (pl && primary[pl - 1] == '/') pl--;
    loc_buf lb = {.p = loc, .cap = sizeof loc};
    snprintf(loc, sizeof loc, "%.*s%s", (int)pl, primary, req->route ? req->route->path : "");
    lb.len = strlen(loc);
    if (req->route && req->route->prefix && req->arg) loc_add(&lb, req->arg, "/");
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, loc_arg, &lb);
    snprintf(msg, sizeof msg,
             "this peftd is a read-only follower of %.*s: adapters, tenants and keys are changed on the primary "
             "(Location: %s)",
             (int)pl, primary, loc);
    req->answered = true;
    *ret = http_error_hdr(req, conn, MHD_HTTP_TEMPORARY_REDIRECT, "read_only_replica", MHD_HTTP_HEADER_LOCATION, loc,
                          msg);
    return true;
}

/* ---------------------------------------------------------------- status */

int api_replication_metrics(api_server *s, http_buf *b) {
    char txt[1536];
    follower *f = s->cfg.follower;
    if (!f) {
        uint64_t last = 0, oldest = 0;
        if (!s->store || astore_changes_info(s->store, &last, &oldest) < 0) return 0;
        snprintf(txt, sizeof txt,
                 "# HELP peftd_replication_last_sequence Primary: the last change-feed sequence number; follower: "
                 "the last change applied.\n# TYPE peftd_replication_last_sequence gauge\n"
                 "peftd_replication_last_sequence %" PRIu64 "\n"
                 "# HELP peftd_replication_oldest_sequence The oldest change still retained for followers (0: none).\n"
                 "# TYPE peftd_replication_oldest_sequence gauge\npeftd_replication_oldest_sequence %" PRIu64 "\n",
                 last, oldest);
        return http_buf_puts(b, txt);
    }
    follower_status st;
    follower_get_status(f, &st);
    snprintf(txt, sizeof txt,
             "# HELP peftd_replication_last_sequence Primary: the last change-feed sequence number; follower: the "
             "last change applied.\n# TYPE peftd_replication_last_sequence gauge\n"
             "peftd_replication_last_sequence %" PRIu64 "\n"
             "# HELP peftd_replication_primary_sequence Follower: the primary's last sequence number, as last seen.\n"
             "# TYPE peftd_replication_primary_sequence gauge\npeftd_replication_primary_sequence %" PRIu64 "\n"
             "# HELP peftd_replication_lag_seconds Follower: seconds since it last had every change of the primary "
             "(0 while caught up).\n# TYPE peftd_replication_lag_seconds gauge\npeftd_replication_lag_seconds %.3f\n"
             "# HELP peftd_replication_primary_reachable Follower: 1 when the last request to the primary was "
             "answered.\n# TYPE peftd_replication_primary_reachable gauge\npeftd_replication_primary_reachable %d\n"
             "# HELP peftd_replication_resyncs_total Follower: full resyncs from a snapshot.\n"
             "# TYPE peftd_replication_resyncs_total counter\npeftd_replication_resyncs_total %" PRIu64 "\n",
             st.applied, st.primary_last, st.lag_s, st.reachable ? 1 : 0, st.resyncs);
    return http_buf_puts(b, txt);
}

int api_replication_ready(api_server *s, char *out, size_t cap) {
    follower *f = s->cfg.follower;
    if (!f) {
        uint64_t last = 0, oldest = 0;
        if (s->store) astore_changes_info(s->store, &last, &oldest);
        return snprintf(out, cap, "{\"role\":\"primary\",\"last_sequence\":%" PRIu64 ",\"oldest_sequence\":%" PRIu64 "}",
                        last, oldest);
    }
    follower_status st;
    follower_get_status(f, &st);
    cJSON *o = cJSON_CreateObject();
    if (!o) return snprintf(out, cap, "{\"role\":\"follower\"}");
    cJSON_AddStringToObject(o, "role", "follower");
    cJSON_AddStringToObject(o, "primary", st.primary);
    cJSON_AddBoolToObject(o, "primary_reachable", st.reachable);
    cJSON_AddNumberToObject(o, "last_sequence", (double)st.applied);
    cJSON_AddNumberToObject(o, "primary_sequence", (double)st.primary_last);
    cJSON_AddNumberToObject(o, "lag_seconds", st.lag_s);
    if (st.error[0]) cJSON_AddStringToObject(o, "error", st.error);
    char *j = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    int n = snprintf(out, cap, "%s", j ? j : "{\"role\":\"follower\"}");
    free(j);
    return n;
}
