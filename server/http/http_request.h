/* server/http/http_request.h — what a request handler sees of the transport: the
 * per-request context (http_req), the route table entry with its hooks (http_route), the
 * response helpers (http_errors.c), the growable buffer and UTF-8 checks (http_buf.c) and
 * the pool of threads for slow work (http_pool.c). The API layer (server/api/) builds on
 * this header; the transport knows the API only through the routes it is handed.
 *
 * Threads: handlers and hooks run on libmicrohttpd's threads, one call at a time per
 * request (MHD serialises a connection's callbacks).
 */
#ifndef PEFTD_HTTP_REQUEST_H
#define PEFTD_HTTP_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>

#include "server/http/access_log.h"
#include "server/tenants/tenants.h"

typedef struct http_server http_server;
typedef struct http_pool http_pool;

/* Request methods, as flags (a route lists the ones it accepts). */
enum {
    HTTP_M_GET = 1,
    HTTP_M_HEAD = 2,
    HTTP_M_POST = 4,
    HTTP_M_PUT = 8,
    HTTP_M_DELETE = 16,
    HTTP_M_OTHER = 32,
    HTTP_M_PATCH = 64,
};
#define HTTP_M_READ (HTTP_M_GET | HTTP_M_HEAD)

struct http_route;

/* Per-request context (MHD's con_cls), from the first handler call to the completed
 * callback. */
typedef struct http_req {
    http_server *srv;
    void *app;                  /* the application's context given to http_server_start */
    const struct http_route *route; /* NULL: no route matched */
    unsigned method;            /* HTTP_M_* */
    char *arg;                  /* the rest of the path after a prefix route ({name}),
                                 * percent-decoded by MHD; NULL for exact routes */
    bool answered;              /* a response was queued on the first call (early 4xx/5xx) */
    bool keep_body;             /* POST and PATCH bodies are kept for the handler */
    char *body;
    size_t len, cap;
    bool too_large;
    void *ctx;                  /* the route's per-request state (a completion job, an
                                 * upload): set by its handler or begin hook; while set, the
                                 * transport calls the route's data/resume/closed hooks */
    const char *cors_origin;    /* Access-Control-Allow-Origin to send (http_cors.c); NULL = none */
    tenants_principal who;      /* who sent it (http_auth.c); role ANON with auth off */
    http_access acc;            /* request id, timing, status for the access log (access_log.c) */
} http_req;

typedef enum MHD_Result (*http_handler_fn)(http_req *req, struct MHD_Connection *conn);

/* One route: what the API layer hands the transport (http_server_start). The table and
 * its strings must outlive the server. */
typedef struct http_route {
    const char *path;
    bool prefix;       /* path is a prefix; the rest of the URL is the route's argument */
    const char *label; /* the endpoint label of peftd_requests_total ("other" to pool it) */
    unsigned methods;  /* HTTP_M_* accepted */
    const char *allow; /* the Allow header of a 405 */
    http_handler_fn handle; /* the whole body has arrived (kept in req->body) */
    /* Optional hooks. begin: first call, after authentication, for the methods in
     * stream_methods: the route reads the body itself (a large upload) and may set
     * req->ctx; no body size check applies then. */
    unsigned stream_methods;
    http_handler_fn begin;
    /* A piece of the body while req->ctx is set and the route streams it; MHD_NO closes. */
    enum MHD_Result (*data)(http_req *req, const char *data, size_t n);
    /* Called instead of handle while req->ctx is set (the body is complete, or the
     * connection was resumed): answer, or suspend again. */
    http_handler_fn resume;
    /* The connection is done (any termination code) while req->ctx is set: release it
     * and fill req->acc's request fields for the access log. */
    void (*closed)(http_req *req, enum MHD_RequestTerminationCode toe);
} http_route;

/* ---- http_buf.c: growable byte buffer and UTF-8 validation ---- */
typedef struct {
    char *p;
    size_t len, cap;
} http_buf;

int http_buf_append(http_buf *b, const char *s, size_t n);  /* keeps p NUL-terminated */
int http_buf_puts(http_buf *b, const char *s);
void http_buf_reset(http_buf *b);                             /* len = 0, keeps memory */
void http_buf_free(http_buf *b);
/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF). */
bool http_utf8_valid(const char *s, size_t n);
/* Copies the NUL-terminated in to out (outlen bytes, NUL-terminated) as valid UTF-8: each
 * byte that does not start a valid character becomes U+FFFD; a character that would not
 * fit whole is left out. Returns the bytes written (without the NUL). */
size_t http_utf8_sanitize(const char *in, char *out, size_t outlen);
/* True when a JSON body holds a NUL character, raw or as the escape \u0000. C strings (and
 * so cJSON's) end at a NUL: such a body would be read as something shorter than sent. */
bool http_json_has_nul(const char *body, size_t len);
/* Length of the longest prefix of the valid UTF-8 string s of at most max bytes that
 * does not split a character: for quoting client strings in error messages. */
size_t http_utf8_prefix(const char *s, size_t max);

/* ---- http_pool.c: dedicated threads for slow work (adapter imports) ---- */
/* threads workers, at most queue_max jobs waiting; delay_ms: the test hook
 * (PEFTD_DEBUG_IMPORT_DELAY_MS), each job waits that long first. @note caller owns *out:
 * http_pool_free(). */
int http_pool_create(int threads, int queue_max, unsigned delay_ms, http_pool **out);
/* Queues run(arg, abandoned) for a worker. PEFTD_EBUSY: the queue is full; PEFTD_ECANCELED:
 * stopping; run is then never called. run is called exactly once otherwise, with
 * abandoned = true when the pool stopped before the job began (its work must be skipped). */
int http_pool_submit(http_pool *p, void (*run)(void *arg, bool abandoned), void *arg);
/* Stops: queued jobs (and waits of the test delay) are abandoned, a running job finishes;
 * joins the workers. Idempotent; NULL is a no-op. */
void http_pool_stop(http_pool *p);
void http_pool_free(http_pool *p); /* stops first; NULL is a no-op */

/* ---- http_errors.c: queuing responses ---- */
/* Queues body with status; counts the request in peftd_requests_total. hdr_name/hdr_value
 * add one extra header (NULL for none). Returns what the access handler must return. */
enum MHD_Result http_respond(http_req *req, struct MHD_Connection *conn, unsigned status,
                             const char *content_type, const char *body, size_t len,
                             const char *hdr_name, const char *hdr_value);
/* Like http_respond with n_hdrs extra {name, value} headers; persistent: body outlives the
 * response (static data, not copied); content_type NULL: none (a 304). */
enum MHD_Result http_respond_hdrs(http_req *req, struct MHD_Connection *conn, unsigned status,
                                  const char *content_type, const char *body, size_t len, bool persistent,
                                  const char *const (*hdrs)[2], int n_hdrs);
/* OpenAI-style {"error":{"message","type","code"}}; type and code from the status unless
 * code is given. */
enum MHD_Result http_error(http_req *req, struct MHD_Connection *conn, unsigned status,
                           const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Like http_error with one extra header (Allow for 405, Retry-After for 503). */
enum MHD_Result http_error_hdr(http_req *req, struct MHD_Connection *conn, unsigned status,
                               const char *code, const char *hdr_name, const char *hdr_value,
                               const char *message);
/* CORS headers (http_cors.c) for a response the handler builds itself (a stream);
 * http_respond adds them to the others. */
void http_cors_decorate(const http_req *req, struct MHD_Response *resp);
/* Counts a response the handler queued itself (a stream) in peftd_requests_total. */
void http_count_response(http_req *req, unsigned status);
/* Serializes obj (freed here) and queues it as application/json. */
struct cJSON;
enum MHD_Result http_respond_json(http_req *req, struct MHD_Connection *conn, unsigned status,
                                  struct cJSON *obj);

#endif
