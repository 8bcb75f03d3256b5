/* server/http/http_server.h — the HTTP front end (libmicrohttpd, epoll, suspend/resume).
 *
 * Routes: POST /v1/completions (JSON or SSE stream), GET /v1/models, GET /health,
 * GET /metrics. HTTP threads parse and validate requests, tokenize prompts, submit
 * engine_requests and format the engine's output; they never touch the model or the
 * backend. A client that disconnects cancels its request.
 */
#ifndef PEFTD_HTTP_SERVER_H
#define PEFTD_HTTP_SERVER_H

#include <stddef.h>

#include "adapter_store/registry.h"
#include "server/engine/engine.h"

typedef struct {
    const char *host;        /* bind address, e.g. "127.0.0.1" */
    int port;                /* 0 = pick a free port (see http_server_port) */
    size_t max_body_bytes;   /* larger request bodies get 413; 0 = 1 MiB */
    int threads;             /* libmicrohttpd worker threads (>= 1; 0 = 1) */
    int max_connections;     /* open connections at once; 0 = 4096 */
    int timeout_s;           /* idle connection timeout; 0 = 120 s (suspended ones never time out) */
} http_config;

typedef struct http_server http_server;

/* Starts listening. @note caller owns *out: http_server_stop(). e, tok, m and reg must
 * outlive the server. */
int http_server_start(const http_config *cfg, engine *e, const tokenizer *tok, const model *m,
                      adapter_registry *reg, http_server **out, char *err, size_t errlen);
int http_server_port(const http_server *s); /* the bound port */
/* Stops accepting connections, cancels in-flight streams' engine requests if the engine
 * is already stopped, waits for handlers to return, frees. NULL is a no-op. */
void http_server_stop(http_server *s);

#endif
