/* server/http/http_server.h — the HTTP front end (libmicrohttpd, epoll, suspend/resume).
 *
 * Routes: POST /v1/completions (JSON or SSE stream), GET /v1/models, GET /health,
 * GET /metrics, and the adapter resource: PUT (multipart upload) / GET / DELETE
 * /v1/adapters/{name}, GET /v1/adapters (paginated). HTTP threads parse and validate requests, tokenize prompts, submit
 * engine_requests and format the engine's output; they never touch the model or the
 * backend. A client that disconnects cancels its request.
 */
#ifndef PEFTD_HTTP_SERVER_H
#define PEFTD_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "adapter_store/registry.h"
#include "adapter_store/store.h"
#include "server/adapter_service.h"
#include "server/engine/engine.h"

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
    struct tenants *tenants; /* API keys, tenants and quotas (server/tenants/tenants.h); NULL or
                              * disabled = no authentication, every adapter public */
} http_config;

typedef struct http_server http_server;

/* Binds and listens on host:port (0 = a free port) without SO_REUSEPORT, so a second
 * daemon on the same address fails here ("address already in use"), before it loads
 * anything. @note caller owns *fd: pass it to http_server_start (or close it). */
int http_listen(const char *host, int port, int *fd, char *err, size_t errlen);

/* Starts listening. @note caller owns *out: http_server_stop(). e, tok, m, reg, store and
 * svc must outlive the server. store and svc may be NULL (no adapter store): the
 * /v1/adapters routes then answer 503 and /v1/models lists the registry. */
int http_server_start(const http_config *cfg, engine *e, const tokenizer *tok, const model *m,
                      adapter_registry *reg, astore *store, adapter_service *svc, http_server **out,
                      char *err, size_t errlen);
int http_server_port(const http_server *s); /* the bound port */
/* Stops accepting connections, cancels in-flight streams' engine requests if the engine
 * is already stopped, waits for handlers to return, frees. NULL is a no-op. */
void http_server_stop(http_server *s);

#endif
