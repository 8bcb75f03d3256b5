/* server/api/api_status.c — the one status -> HTTP table: what every route answers for a
 * project status code (HTTP status, OpenAI error code, Retry-After). Routes never map a
 * code themselves; a message may say more, the status and code come from here.
 */
#include <errno.h>
#include <stdio.h>

#include "lib/status.h"
#include "server/api/api_internal.h"

static const struct {
    int rc;
    api_status_map map;
} api_status_table[] = {
    {PEFTD_EINVAL, {MHD_HTTP_BAD_REQUEST, "invalid_value", false}},
    {PEFTD_EFORMAT, {MHD_HTTP_BAD_REQUEST, "invalid_adapter", false}},
    /* valid but not servable on this base: the adapter does not fit it */
    {PEFTD_EUNSUPPORTED, {MHD_HTTP_UNPROCESSABLE_CONTENT, "adapter_incompatible", false}},
    {PEFTD_ERANGE, {MHD_HTTP_BAD_REQUEST, "context_length_exceeded", false}},
    {PEFTD_E2BIG, {MHD_HTTP_BAD_REQUEST, "limit_exceeded", false}},
    {PEFTD_ENOTFOUND, {MHD_HTTP_NOT_FOUND, "not_found", false}},
    {PEFTD_EEXIST, {MHD_HTTP_CONFLICT, "conflict", false}},
    {PEFTD_EQUOTA, {MHD_HTTP_TOO_MANY_REQUESTS, "rate_limit_exceeded", true}},
    {PEFTD_EBUSY, {MHD_HTTP_SERVICE_UNAVAILABLE, "overloaded", true}},
    {PEFTD_ECANCELED, {MHD_HTTP_SERVICE_UNAVAILABLE, "shutting_down", false}},
    {PEFTD_ENOSPC, {MHD_HTTP_INSUFFICIENT_STORAGE, "insufficient_storage", false}},
    {-ENOSPC, {MHD_HTTP_INSUFFICIENT_STORAGE, "insufficient_storage", false}},
    /* a tenant's storage quota (max_storage_bytes): the store is full for it */
    {-EDQUOT, {MHD_HTTP_INSUFFICIENT_STORAGE, "insufficient_storage", false}},
    /* the uploading tenant was deleted meanwhile (adapter_service_import_dir) */
    {-ENOENT, {MHD_HTTP_FORBIDDEN, "tenant_deleted", false}},
};

const api_status_map *api_status_http(int rc) {
    static const api_status_map internal = {MHD_HTTP_INTERNAL_SERVER_ERROR, "internal_error", false};
    for (size_t i = 0; i < sizeof api_status_table / sizeof api_status_table[0]; i++)
        if (api_status_table[i].rc == rc) return &api_status_table[i].map;
    return &internal;
}

enum MHD_Result api_fail_status(http_req *req, struct MHD_Connection *conn, int rc, const char *what,
                                const char *detail) {
    const api_status_map *m = api_status_http(rc);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s: %s", what, detail && detail[0] ? detail : peftd_strerror(rc));
    return http_error_hdr(req, conn, m->http, m->code, m->retry ? MHD_HTTP_HEADER_RETRY_AFTER : NULL,
                          m->retry ? "1" : NULL, msg);
}
