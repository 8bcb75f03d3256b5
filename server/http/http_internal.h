/* server/http/http_internal.h — what the transport's own files share: the server struct
 * (http_server.c creates and runs it; http_state.c, a leaf below the other files, answers
 * the small questions every file asks of it). Nothing outside server/http/ includes this
 * header.
 */
#ifndef PEFTD_HTTP_INTERNAL_H
#define PEFTD_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

#include "server/http/http_server.h"

struct http_server {
    struct MHD_Daemon *mhd;
    http_config cfg;
    const http_route *routes;
    int n_routes;
    void *app;                   /* handed to every request */
    int port;
    atomic_bool stopping;        /* set by http_server_quiesce: nobody suspends after it */
    atomic_uint_fast64_t next_id;
    pthread_mutex_t stats_mu;    /* guards counters */
    http_counter counters[HTTP_MAX_COUNTERS];
    int n_counters;
};

/* Counts a queued response in peftd_requests_total under r's label ("other" for NULL).
 * Any thread. */
/* http_cors.c: the request's allowed origin (req->cors_origin); a preflight answered
 * (true, *ret set) or not one (false). */
void http_cors_begin(http_req *req, struct MHD_Connection *conn);
bool http_cors_preflight(http_req *req, struct MHD_Connection *conn, const char *method, enum MHD_Result *ret);
void http_server__count(http_server *s, const http_route *r, unsigned status);

#endif
