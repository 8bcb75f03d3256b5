/* server/api/api_console.c — GET / and GET /console/<name>: the web console's static
 * files, compiled into the binary (api_console.h). Each answer carries its Content-Type,
 * a strong ETag (If-None-Match → 304), Cache-Control: no-cache (revalidate: a new build
 * serves new files at once), a strict Content-Security-Policy (scripts and styles from
 * this origin only, no inline code, API calls to this origin only) and nosniff. */
#include <string.h>

#include "server/api/api_console.h"
#include "server/api/api_internal.h"

#define CONSOLE_CSP                                                                                  \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "             \
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

static const console_asset *console_find(const char *name) {
    for (int i = 0; i < console_n_assets; i++)
        if (!strcmp(console_assets[i].name, name)) return &console_assets[i];
    return NULL;
}

/* True when the If-None-Match header lists etag (or is "*"). */
static bool console_etag_matches(struct MHD_Connection *conn, const char *etag) {
    const char *inm = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
    if (!inm) return false;
    if (!strcmp(inm, "*")) return true;
    size_t n = strlen(etag);
    for (const char *p = strstr(inm, etag); p; p = strstr(p + 1, etag)) {
        bool start = p == inm || p[-1] == ' ' || p[-1] == ',' || (p - inm >= 2 && p[-1] == '/' && p[-2] == 'W');
        bool end = p[n] == '\0' || p[n] == ',' || p[n] == ' ';
        if (start && end) return true;
    }
    return false;
}

enum MHD_Result api_console_get(http_req *req, struct MHD_Connection *conn) {
    const char *name = req->arg && req->arg[0] ? req->arg : "index.html";
    const console_asset *a = console_find(name);
    if (!a)
        return http_error(req, conn, MHD_HTTP_NOT_FOUND, "not_found", "no console file '%.*s'",
                          http_utf8_valid(name, strlen(name)) ? (int)http_utf8_prefix(name, 80) : 0, name);
    const char *const hdrs[][2] = {
        {MHD_HTTP_HEADER_ETAG, a->etag},
        {MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache"},
        {"Content-Security-Policy", CONSOLE_CSP},
        {"X-Content-Type-Options", "nosniff"},
        {"Referrer-Policy", "no-referrer"},
        {"X-Frame-Options", "DENY"},
    };
    int n = (int)(sizeof hdrs / sizeof hdrs[0]);
    if (console_etag_matches(conn, a->etag))
        return http_respond_hdrs(req, conn, MHD_HTTP_NOT_MODIFIED, NULL, "", 0, true, hdrs, n);
    return http_respond_hdrs(req, conn, MHD_HTTP_OK, a->content_type, (const char *)a->data, a->len, true, hdrs,
                             n);
}
