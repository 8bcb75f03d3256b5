/* server/http/http_auth.c — see http_auth.h: the bearer-key check run on a request's
 * first call, before any body is read (an unauthenticated upload costs its headers only).
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "server/http/http_auth.h"
#include "server/http/http_server.h"

bool http_auth_on(const http_server *s) { return tenants_enabled(http_server_config(s)->tenants); }

const char *http_owner(const http_req *req) { return req->who.tenant; }

/* Routes that stay open with auth on: liveness, readiness and metrics are scraped by
 * infrastructure that holds no tenant key; the console's static files (/ and /console/<name>)
 * hold no data: the page asks for a key and sends it on its API calls. */
static bool open_route(const char *url) {
    return !strcmp(url, "/health") || !strcmp(url, "/ready") || !strcmp(url, "/metrics") ||
           !strcmp(url, "/") || !strncmp(url, "/console/", 9);
}

static bool unauthorized(http_req *req, struct MHD_Connection *conn, const char *msg, enum MHD_Result *ret) {
    req->answered = true;
    *ret = http_error_hdr(req, conn, MHD_HTTP_UNAUTHORIZED, "invalid_api_key", "WWW-Authenticate", "Bearer", msg);
    return false;
}

bool http_auth_request(http_req *req, struct MHD_Connection *conn, const char *url, enum MHD_Result *ret) {
    http_server *s = req->srv;
    memset(&req->who, 0, sizeof req->who);
    req->who.weight = 1.0f;
    if (!http_auth_on(s) || open_route(url)) return true;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || !*h)
        return unauthorized(req, conn, "You didn't provide an API key: send it as 'Authorization: Bearer KEY'", ret);
    if (strncasecmp(h, "Bearer ", 7) != 0)
        return unauthorized(req, conn, "The Authorization header must be 'Bearer KEY'", ret);
    const char *key = h + 7;
    while (*key == ' ') key++;
    /* the key is never echoed nor logged, not even a prefix of it */
    int rc = tenants_authenticate(http_server_config(s)->tenants, key, &req->who);
    if (rc == PEFTD_ENOTFOUND) return unauthorized(req, conn, "Incorrect or revoked API key", ret);
    if (rc < 0) {
        req->answered = true;
        *ret = http_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal_error", "cannot check the API key: %s",
                          peftd_strerror(rc));
        return false;
    }
    snprintf(req->acc.tenant, sizeof req->acc.tenant, "%s", req->who.tenant);
    if (!strncmp(url, "/v1/admin/", 10) && req->who.role != TENANTS_ADMIN) {
        req->answered = true;
        *ret = http_error(req, conn, MHD_HTTP_FORBIDDEN, "permission_denied",
                          "tenant administration needs the admin key");
        return false;
    }
    return true;
}
