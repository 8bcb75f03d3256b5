/* server/http/access_log.h — request ids and the access log: one line per completed HTTP
 * request (JSON or text, see log.h's formats) on stderr or in a file.
 *
 * Every request gets an id: the client's X-Request-Id when it sent a usable one (1..64
 * characters of [A-Za-z0-9._:-]), else the completion id (cmpl-…) for completions, else a
 * generated req-…; the id is echoed in the X-Request-Id response header and logged.
 * The line holds time, id, method, path, status, duration_ms, bytes, tenant,
 * model/adapter, prompt/completion tokens and the client address — never request headers
 * (Authorization, keys) or bodies.
 *
 * Hooks: access_log_begin on a request's first handler call, access_log_response wherever a
 * response is queued, access_log_end in the request-completed callback.
 */
#ifndef PEFTD_ACCESS_LOG_H
#define PEFTD_ACCESS_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>

/* Per-request access state (embedded in http_req). */
typedef struct {
    uint64_t t0_ns;        /* arrival (first handler call), CLOCK_MONOTONIC */
    char id[72];           /* request id ("" until access_log_begin) */
    bool client_id;        /* id is the client's X-Request-Id */
    char method[16];
    char path[200];        /* raw bytes, escaped when written */
    unsigned status;       /* status queued; 0 = none (the client left first) */
    uint64_t bytes;        /* response body bytes queued (streams: counted by the job) */
    char tenant[65];       /* authenticated tenant, set by the auth layer; "" = none */
    /* Filled by the route that served a generation (its closed hook), else left 0/"": */
    bool generation;       /* observe the end-to-end latency histogram */
    char model[160];       /* the model id the request named */
    char adapter[160];     /* the adapter it ran with */
    int prompt_tokens, completion_tokens;
} http_access;

/* Where access lines go: path NULL, "" or "off" = nowhere, "-" or "stderr" = stderr,
 * else appended to that file (reopened on each call: SIGHUP after logrotate). format is
 * LOG_FORMAT_*. Thread-safe; returns 0 or -errno (the previous sink stays then). */
int access_log_configure(const char *path, int format);
/* Releases the sink (closes a file). */
void access_log_close(void);

/* First call of a request: arrival time, id (X-Request-Id or generated), method, path. */
void access_log_begin(http_access *a, struct MHD_Connection *conn, const char *method, const char *url,
                      uint64_t seq);
/* A completion job took over the request: its id becomes the request id unless the client
 * gave one. */
void access_log_adopt_id(http_access *a, const char *id);
/* A response is being queued: adds the X-Request-Id header to resp, records status and
 * body length. */
void access_log_response(http_access *a, struct MHD_Response *resp, unsigned status, size_t body_len);
/* The request is done (completed callback): observes end-to-end latency for generations
 * and writes the access line. */
void access_log_end(http_access *a, struct MHD_Connection *conn, enum MHD_RequestTerminationCode toe);

#endif
