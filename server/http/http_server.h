/* server/http/http_server.h — the HTTP transport (libmicrohttpd, epoll, suspend/resume):
 * listening, connection and body limits, authentication, routing by a table the
 * application hands over (http_route, server/http/http_request.h), the request counters
 * of /metrics. It knows nothing of the resources it serves: server/api/ builds the routes
 * (api_server.h) and owns what they need.
 */
#ifndef PEFTD_HTTP_SERVER_H
#define PEFTD_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/http/http_request.h"

#define HTTP_MAX_CORS_ORIGINS 8

typedef struct {
    const char *host;        /* bind address, e.g. "127.0.0.1" (for messages: listen_fd is bound) */
    int port;                /* the port asked for (for messages; see http_server_port) */
    int listen_fd;           /* the listening socket from http_listen(): the server takes it over
                              * (closed by http_server_stop, or by a failed start) */
    size_t max_body_bytes;   /* larger request bodies get 413; 0 = 1 MiB */
    uint64_t max_upload_bytes; /* adapter upload bodies (PUT /v1/adapters/{name}): larger get
                                * 413; 0 = 2 GiB. Independent of max_body_bytes. */
    int threads;             /* libmicrohttpd worker threads (>= 1; 0 = 1) */
    int max_connections;     /* open connections at once; 0 = derived from RLIMIT_NOFILE (the
                              * soft limit is raised to the hard one first), at most 65536 */
    int max_uploads;         /* adapter uploads at once (each holds a staging file besides its
                              * socket); more get 503 + Retry-After; 0 = derived. Together:
                              * max_connections + max_uploads <= RLIMIT_NOFILE - a reserve
                              * (http_server.c), else the start fails. */
    int import_threads;      /* threads importing finished uploads off the HTTP threads; 0 = 2 */
    int import_queue;        /* finished uploads waiting for an import thread; beyond, 503; 0 =
                              * 8 per import thread */
    int timeout_s;           /* idle connection timeout; 0 = 15 s (suspended ones never time out) */
    const char *chat_template; /* chat template file overriding the model's (chat_template.h);
                                * NULL or "" = the model's tokenizer_config.json */
    const char *served_names[8]; /* aliases of the base model (NULL/"" = unused): `model` may name
                                  * them, /v1/models lists them */
    const char *cors_origins[HTTP_MAX_CORS_ORIGINS]; /* http.cors_origins (http_cors.c): browser
                              * origins allowed ("*" = any, never with credentials); none = no CORS */
    const char *backend;     /* the compute backend's name, for peftd_build_info (NULL = unknown) */
    bool vllm_metric_aliases; /* /metrics also gives the vllm:-named families (api_metrics_vllm.c) */
    const char *load_roots[4]; /* POST /v1/load_lora_adapter imports only from under these
                                * directories (NULL/"" = unused; none: the route answers 404) */
    struct tenants *tenants; /* API keys, tenants and quotas (server/tenants/tenants.h); NULL or
                              * disabled = no authentication, every adapter public */
    const char *follow_url;  /* a follower's primary (store.follow): writes answer 307 there;
                              * NULL or "" = this peftd is a primary */
    struct follower *follower; /* the replication thread's status for /ready and /metrics */
} http_config;

/* Binds and listens on host:port (0 = a free port) without SO_REUSEPORT, so a second
 * daemon on the same address fails here ("address already in use"), before it loads
 * anything. @note caller owns *fd: pass it to http_server_start (or close it). */
int http_listen(const char *host, int port, int *fd, char *err, size_t errlen);

/* Fills the defaults of the fields left 0 and sizes max_connections / max_uploads by the
 * descriptor limit (raising the soft limit to the hard one). A pair that does not fit is
 * PEFTD_EINVAL with the reason in err. Call it once before http_server_start. */
int http_config_resolve(http_config *cfg, char *err, size_t errlen);

/* Starts serving routes[0..n_routes) (first match wins) on cfg->listen_fd; cfg went
 * through http_config_resolve. app is handed to every request (http_req.app). @note
 * caller owns *out: http_server_stop(); routes and app must outlive the server. */
int http_server_start(const http_config *cfg, const http_route *routes, int n_routes, void *app,
                      http_server **out, char *err, size_t errlen);
int http_server_port(const http_server *s); /* the bound port */
const http_config *http_server_config(const http_server *s); /* the resolved configuration */
/* Stops accepting connections; from now on http_server_stopping() is true (handlers must not
 * suspend). The application then wakes what it suspended, before http_server_stop. */
void http_server_quiesce(http_server *s);
bool http_server_stopping(const http_server *s);
/* Stops libmicrohttpd (no connection may be suspended: see http_server_quiesce), waits for
 * handlers to return, frees. NULL is a no-op. */
void http_server_stop(http_server *s);

/* peftd_requests_total: one (route label, status) pair. Distinct pairs are few (statuses
 * 200, 201, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503, 507 times a dozen
 * labels at most answered in practice); a full table drops the count, not the response. */
#define HTTP_MAX_COUNTERS 128
typedef struct {
    const char *label;
    unsigned status;
    uint64_t n;
} http_counter;
/* Copies at most cap counters to out; returns how many. Any thread. */
int http_server_counters(http_server *s, http_counter *out, int cap);

#endif
