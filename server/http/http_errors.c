/* server/http/http_errors.c — queuing responses: plain bodies, JSON bodies and the
 * OpenAI-style error object {"error":{"message","type","code"}} with its status. Every
 * response goes through http_respond(), which also counts it for /metrics.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <cJSON.h>

#include "lib/log.h"
#include "server/http/http_internal.h"

enum MHD_Result http_respond_hdrs(http_req *req, struct MHD_Connection *conn, unsigned status,
                                  const char *content_type, const char *body, size_t len, bool persistent,
                                  const char *const (*hdrs)[2], int n_hdrs) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, (void *)body, persistent ? MHD_RESPMEM_PERSISTENT : MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    enum MHD_Result ret = MHD_NO;
    if (content_type && MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) != MHD_YES)
        goto out;
    for (int i = 0; i < n_hdrs; i++)
        if (MHD_add_response_header(resp, hdrs[i][0], hdrs[i][1]) != MHD_YES) goto out;
    http_cors_decorate(req, resp);
    access_log_response(&req->acc, resp, status, len);
    ret = MHD_queue_response(conn, status, resp);
    if (ret == MHD_YES) http_server__count(req->srv, req->route, status);
out:
    MHD_destroy_response(resp);
    return ret;
}

enum MHD_Result http_respond(http_req *req, struct MHD_Connection *conn, unsigned status,
                             const char *content_type, const char *body, size_t len,
                             const char *hdr_name, const char *hdr_value) {
    const char *const h[1][2] = {{hdr_name, hdr_value}};
    return http_respond_hdrs(req, conn, status, content_type, body, len, false, h, hdr_name ? 1 : 0);
}

void http_count_response(http_req *req, unsigned status) { http_server__count(req->srv, req->route, status); }

enum MHD_Result http_respond_json(http_req *req, struct MHD_Connection *conn, unsigned status,
                                  struct cJSON *obj) {
    char *text = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!text) {
        /* Out of memory while printing: a fixed body still tells the client what
         * happened. */
        static const char oom[] =
            "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"code\":null}}";
        return http_respond(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "application/json", oom,
                            sizeof oom - 1, NULL, NULL);
    }
    enum MHD_Result r = http_respond(req, conn, status, "application/json", text, strlen(text),
                                     NULL, NULL);
    cJSON_free(text);
    return r;
}

/* OpenAI's error types: client mistakes are invalid_request_error, ours are server_error. */
static const char *http_error_type(unsigned status) {
    return status >= 500 ? "server_error" : "invalid_request_error";
}

static const char *http_default_code(unsigned status) {
    switch (status) {
    case MHD_HTTP_NOT_FOUND: return "not_found";
    case MHD_HTTP_METHOD_NOT_ALLOWED: return "method_not_allowed";
    case MHD_HTTP_CONTENT_TOO_LARGE: return "request_too_large";
    case MHD_HTTP_SERVICE_UNAVAILABLE: return "overloaded";
    case MHD_HTTP_INTERNAL_SERVER_ERROR: return "internal_error";
    default: return NULL;
    }
}

enum MHD_Result http_error_hdr(http_req *req, struct MHD_Connection *conn, unsigned status,
                               const char *code, const char *hdr_name, const char *hdr_value,
                               const char *message) {
    if (!code) code = http_default_code(status);
    /* Messages quote client bytes (names, paths, values) and may be cut mid-character by
     * a bounded snprintf: the JSON body is valid UTF-8 whatever they held. */
    char clean[3 * 1024 + 1];
    http_utf8_sanitize(message, clean, sizeof clean);
    message = clean;
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    if (!err || !cJSON_AddStringToObject(err, "message", message) ||
        !cJSON_AddStringToObject(err, "type", http_error_type(status)) ||
        !(code ? cJSON_AddStringToObject(err, "code", code) : cJSON_AddNullToObject(err, "code"))) {
        cJSON_Delete(root);
        return http_respond_json(req, conn, status, NULL);
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) return http_respond_json(req, conn, status, NULL);
    if (status >= 500) LOGW("http: %u %s", status, message);
    else LOGD("http: %u %s", status, message);
    enum MHD_Result r = http_respond(req, conn, status, "application/json", text, strlen(text),
                                     hdr_name, hdr_value);
    cJSON_free(text);
    return r;
}

enum MHD_Result http_error(http_req *req, struct MHD_Connection *conn, unsigned status,
                           const char *code, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return http_error_hdr(req, conn, status, code, NULL, NULL, msg);
}
