/* server/http/http_cors.c — CORS for browser clients (http.cors_origins): a request whose
 * Origin header is one of the configured origins gets Access-Control-Allow-Origin with
 * that origin (and Vary: Origin) on every response, streams included; a preflight
 * (OPTIONS with Access-Control-Request-Method) is answered here, before authentication
 * (browsers send no credentials on it): 204 with the allowed methods and headers, or 403
 * for an origin not configured. "*" in the list allows every origin and is answered as
 * "*"; Access-Control-Allow-Credentials is never sent (API keys travel in the
 * Authorization header, which a page sets itself; no cookies), so "*" never goes with
 * credentials. With no origins configured nothing here applies: OPTIONS answers 405.
 */
#include <string.h>
#include <strings.h>

#include "server/http/http_internal.h"

#define CORS_ALLOW_HEADERS "Authorization, Content-Type, X-Request-Id"
#define CORS_EXPOSE_HEADERS "Retry-After, X-Request-Id, WWW-Authenticate"
#define CORS_MAX_AGE "600"
#define CORS_ALL_METHODS "GET, HEAD, POST, PUT, PATCH, DELETE"

static bool cors_on(const http_server *s) { return s->cfg.cors_origins[0] && s->cfg.cors_origins[0][0]; }

void http_cors_begin(http_req *req, struct MHD_Connection *conn) {
    req->cors_origin = NULL;
    if (!cors_on(req->srv)) return;
    const char *o = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    if (!o || !*o) return;
    for (int i = 0; i < HTTP_MAX_CORS_ORIGINS; i++) {
        const char *c = req->srv->cfg.cors_origins[i];
        if (!c || !c[0]) break;
        if (!strcmp(c, "*")) req->cors_origin = "*";
        else if (!strcasecmp(c, o)) { /* scheme and host are case-insensitive */
            req->cors_origin = c;
            return;
        }
    }
}

void http_cors_decorate(const http_req *req, struct MHD_Response *resp) {
    if (!req->cors_origin) return;
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", req->cors_origin);
    if (strcmp(req->cors_origin, "*")) MHD_add_response_header(resp, "Vary", "Origin");
    MHD_add_response_header(resp, "Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS);
}

bool http_cors_preflight(http_req *req, struct MHD_Connection *conn, const char *method, enum MHD_Result *ret) {
    if (!cors_on(req->srv) || strcmp(method, "OPTIONS") ||
        !MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Access-Control-Request-Method"))
        return false;
    req->answered = true;
    if (!req->cors_origin) {
        *ret = http_error(req, conn, MHD_HTTP_FORBIDDEN, "cors_origin_not_allowed",
                          "this origin is not in http.cors_origins");
        return true;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        *ret = MHD_NO;
        return true;
    }
    http_cors_decorate(req, resp);
    MHD_add_response_header(resp, "Access-Control-Allow-Methods", req->route ? req->route->allow : CORS_ALL_METHODS);
    MHD_add_response_header(resp, "Access-Control-Allow-Headers", CORS_ALLOW_HEADERS);
    MHD_add_response_header(resp, "Access-Control-Max-Age", CORS_MAX_AGE);
    access_log_response(&req->acc, resp, MHD_HTTP_NO_CONTENT, 0);
    *ret = MHD_queue_response(conn, MHD_HTTP_NO_CONTENT, resp);
    if (*ret == MHD_YES) http_server__count(req->srv, req->route, MHD_HTTP_NO_CONTENT);
    MHD_destroy_response(resp);
    return true;
}
