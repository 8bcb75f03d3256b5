/* server/http/http_internal.h — what the files of server/http/ share: the server struct,
 * the per-request context, the response helpers (http_errors.c), the growable buffer and
 * UTF-8 check (http_buf.c), the request counters (api_metrics.c) and the route handlers.
 * Nothing outside server/http/ includes this header.
 */
#ifndef PEFTD_HTTP_INTERNAL_H
#define PEFTD_HTTP_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <microhttpd.h>

#include "server/http/access_log.h"
#include "server/http/http_server.h"
#include "server/tenants/tenants.h"

typedef enum {
    HTTP_EP_COMPLETIONS = 0,
    HTTP_EP_CHAT,      /* /v1/chat/completions */
    HTTP_EP_MODELS,
    HTTP_EP_HEALTH,
    HTTP_EP_READY,
    HTTP_EP_METRICS,
    HTTP_EP_ADAPTERS,  /* /v1/adapters and /v1/adapters/{name} */
    HTTP_EP_OTHER,   /* unknown paths: counted together so a scanner can't grow the table */
    HTTP_EP_COUNT,
} http_endpoint;

const char *http_endpoint_name(http_endpoint ep);

/* One (endpoint, status) pair of peftd_requests_total. Statuses are few (200, 201, 400,
 * 404, 405, 413, 415, 422, 500, 503, 507), so a small fixed table under a mutex is
 * enough. */
#define HTTP_MAX_COUNTERS 64
typedef struct {
    http_endpoint ep;
    unsigned status;
    uint64_t n;
} http_counter;

struct api_job;
typedef struct http_pool http_pool;

struct http_server {
    struct MHD_Daemon *mhd;
    engine *e;
    const tokenizer *tok;
    const model *m;
    adapter_registry *reg;       /* served adapters (may be empty) */
    astore *store;               /* the adapter store; NULL = none (/v1/adapters answers 503) */
    adapter_service *svc;        /* imports and deletes; NULL together with store */
    http_config cfg;
    struct chat_template *chat;  /* the model's chat template; NULL = none (chat answers 400) */
    char chat_error[256];        /* why the model's template could not be used, for that 400 */
    int port;
    time_t created;              /* "created" of the served model in /v1/models */
    atomic_bool stopping;        /* set first thing in http_server_stop: nobody suspends after it */
    atomic_uint_fast64_t next_id;

    pthread_mutex_t jobs_mu;     /* guards jobs: live completion jobs, resumed at shutdown */
    struct api_job *jobs;

    /* Adapter uploads: each open one holds a staging file besides its socket, so their
     * number is bounded (cfg.max_uploads, sized with max_connections from RLIMIT_NOFILE);
     * their imports run on a pool of import threads with the connection suspended. */
    atomic_int uploads_open;     /* uploads holding a staging directory (api_adapters_upload.c) */
    atomic_int imports_open;     /* uploads handed to the import pool, until their connection closes */
    http_pool *imports;          /* NULL when there is no store */

    pthread_mutex_t stats_mu;    /* guards counters */
    http_counter counters[HTTP_MAX_COUNTERS];
    int n_counters;
};

/* Request methods, as flags (a route lists the ones it accepts). */
enum {
    HTTP_M_GET = 1,
    HTTP_M_HEAD = 2,
    HTTP_M_POST = 4,
    HTTP_M_PUT = 8,
    HTTP_M_DELETE = 16,
    HTTP_M_OTHER = 32,
};

struct api_upload;

/* Per-request context (MHD's con_cls), from the first handler call to the completed
 * callback. */
typedef struct {
    http_server *srv;
    http_endpoint ep;
    unsigned method;            /* HTTP_M_* */
    char *arg;                  /* the rest of the path after a prefix route ({name}),
                                 * percent-decoded by MHD; NULL for exact routes */
    bool answered;              /* a response was queued on the first call (early 4xx/5xx) */
    bool keep_body;             /* only POST /v1/completions needs its body */
    char *body;
    size_t len, cap;
    bool too_large;
    struct api_job *job;        /* a completion in flight (api_completions.c) */
    struct api_upload *upload;  /* an adapter upload being received (api_adapters.c) */
    tenants_principal who;      /* who sent it (http_auth.c); role ANON with auth off */
    http_access acc;            /* request id, timing, status for the access log (access_log.c) */
} http_req;

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
/* OpenAI-style {"error":{"message","type","code"}}; type and code from the status unless
 * code is given. */
enum MHD_Result http_error(http_req *req, struct MHD_Connection *conn, unsigned status,
                           const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Like http_error with one extra header (Allow for 405, Retry-After for 503). */
enum MHD_Result http_error_hdr(http_req *req, struct MHD_Connection *conn, unsigned status,
                               const char *code, const char *hdr_name, const char *hdr_value,
                               const char *message);
/* Serializes obj (freed here) and queues it as application/json. */
struct cJSON;
enum MHD_Result http_respond_json(http_req *req, struct MHD_Connection *conn, unsigned status,
                                  struct cJSON *obj);

/* ---- api_metrics.c ---- */
void http_count_request(http_server *s, http_endpoint ep, unsigned status);
enum MHD_Result api_metrics_get(http_req *req, struct MHD_Connection *conn);
enum MHD_Result api_ready_get(http_req *req, struct MHD_Connection *conn); /* GET /ready */

/* ---- api_health.c / api_models.c ---- */
enum MHD_Result api_health_get(http_req *req, struct MHD_Connection *conn);
enum MHD_Result api_models_get(http_req *req, struct MHD_Connection *conn);

/* ---- api_adapters.c: the adapter resource ---- */
/* GET /v1/adapters?limit=N&after=NAME. */
enum MHD_Result api_adapters_list(http_req *req, struct MHD_Connection *conn);
/* GET / DELETE /v1/adapters/{name} (req->arg), and the end of a PUT's body. */
enum MHD_Result api_adapters_item(http_req *req, struct MHD_Connection *conn);
/* First call of PUT /v1/adapters/{name}: checks the store, the name, the content type and a
 * declared length, then prepares the streaming (staging directory + multipart parser).
 * May queue an error response (then sets req->answered). */
enum MHD_Result api_adapters_put_begin(http_req *req, struct MHD_Connection *conn);
/* A piece of the PUT body: parsed and written to the staging files. MHD_NO closes the
 * connection (a body far past the limit after an error). */
enum MHD_Result api_adapters_put_data(http_req *req, const char *data, size_t n);
/* The whole PUT body has arrived: checks the parts and hands the import to the import
 * pool with the connection suspended (503 + Retry-After when its queue is full); called
 * again once the import resumed the connection: answers. */
enum MHD_Result api_adapters_put_finish(http_req *req, struct MHD_Connection *conn);
/* The connection is done: drops the parser, the staging files and directory (once an
 * import in flight is over). */
void api_adapters_closed(http_req *req);
/* An adapter's public description {"id","object":"adapter","version","kind",...}; NULL
 * when out of memory. @note caller owns the result. */
struct cJSON *api_adapter_meta_json(const astore_meta *m);
/* 503 "adapter store not configured"; 400 for an invalid adapter name (quoted safely). */
enum MHD_Result api_adapters__no_store(http_req *req, struct MHD_Connection *conn);
enum MHD_Result api_adapters__bad_name(http_req *req, struct MHD_Connection *conn, const char *name);
/* Answers an error for a failed adapter-service/store call: status from the code. */
enum MHD_Result api_adapters_fail(http_req *req, struct MHD_Connection *conn, int rc, const char *what,
                                  const char *detail);

/* ---- api_completions.c ---- */
/* The whole body has arrived: parse, validate, submit, then respond or suspend. */
enum MHD_Result api_completions_post(http_req *req, struct MHD_Connection *conn);
/* The handler is called again after a resume (non-streaming): respond or suspend again. */
enum MHD_Result api_completions_continue(http_req *req, struct MHD_Connection *conn);
/* The connection is done (any termination code): cancel what is still running and drop
 * the connection's reference to the job. */
void api_completions_closed(http_req *req, enum MHD_RequestTerminationCode toe);
/* Shutdown: resume every suspended job so that MHD_stop_daemon finds none suspended, and
 * cancel their engine requests. Called after srv->stopping is set. */
void api_completions_shutdown(http_server *s);

#endif
