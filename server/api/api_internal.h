/* server/api/api_internal.h — what the files of server/api/ share: the API's context
 * (api_server: the engine, tokenizer, model, registry, store and adapter service it
 * serves, the chat template, the live jobs and uploads), the route handlers and hooks
 * (api_server.c lists them in the route table), and the one status -> HTTP table
 * (api_status.c). Nothing outside server/api/ includes this header.
 */
#ifndef PEFTD_API_INTERNAL_H
#define PEFTD_API_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "server/api/api_server.h"
#include "server/http/http_request.h"

struct api_job;
struct chat_template;

struct api_server {
    http_server *http;           /* the transport; NULL until http_server_start returns, which is
                                  * after the listening socket takes requests: handlers use req->srv */
    engine *e;
    const tokenizer *tok;
    const model *m;
    adapter_registry *reg;       /* served adapters (may be empty) */
    astore *store;               /* the adapter store; NULL = none (/v1/adapters answers 503) */
    adapter_service *svc;        /* imports and deletes; NULL together with store */
    http_config cfg;             /* resolved (http_config_resolve) */
    struct chat_template *chat;  /* the model's chat template; NULL = none (chat answers 400) */
    char chat_error[256];        /* why the model's template could not be used, for that 400 */
    time_t created;              /* "created" of the served model in /v1/models */
    atomic_uint_fast64_t next_id; /* completion ids (scrambled: api_completions.c) */

    pthread_mutex_t jobs_mu;     /* guards jobs: live completion jobs, resumed at shutdown */
    struct api_job *jobs;

    /* Adapter uploads: each open one holds a staging file besides its socket, so their
     * number is bounded (cfg.max_uploads, sized with max_connections from RLIMIT_NOFILE);
     * their imports run on a pool of import threads with the connection suspended. */
    atomic_int uploads_open;     /* uploads holding a staging directory (api_adapters_upload.c) */
    atomic_int imports_open;     /* uploads and loads handed to the import pool, until their connection closes */
    http_pool *imports;          /* NULL when there is no store */
};

/* The API context of a request. */
static inline api_server *api_of(const http_req *req) { return (api_server *)req->app; }
/* name is the base model's: its directory name or one of its served_names aliases. */
static inline bool api_is_base(const api_server *s, const char *name) {
    if (!strcmp(name, s->m->name)) return true;
    for (int i = 0; i < 8; i++)
        if (s->cfg.served_names[i] && s->cfg.served_names[i][0] && !strcmp(s->cfg.served_names[i], name)) return true;
    return false;
}
/* The transport is stopping: nothing may suspend any more. */
static inline bool api_stopping(const api_server *s) { return s->http && http_server_stopping(s->http); }

/* ---- api_status.c: the one status -> HTTP table ---- */
/* What a status code answers on every route: HTTP status, OpenAI error code, and whether
 * a Retry-After goes with it. */
typedef struct {
    unsigned http;
    const char *code;
    bool retry;
} api_status_map;
const api_status_map *api_status_http(int rc);
/* Answers rc per the table: "<what>: <detail or peftd_strerror(rc)>". */
enum MHD_Result api_fail_status(http_req *req, struct MHD_Connection *conn, int rc, const char *what,
                                const char *detail);

/* ---- api_metrics.c / api_health.c / api_models.c ---- */
enum MHD_Result api_metrics_get(http_req *req, struct MHD_Connection *conn);
/* api_metrics_vllm.c: the LoRA info gauge and the vllm:-named aliases, appended to b; the gauges
 * from st, the engine snapshot the peftd_ families of the same scrape were written from. */
int api_metrics_vllm(api_server *s, const engine_stats *st, http_buf *b);
/* api_metrics_process.c: peftd_build_info and the standard process_* families, appended to b. */
int api_metrics_process(api_server *s, http_buf *b);
enum MHD_Result api_ready_get(http_req *req, struct MHD_Connection *conn); /* GET /ready */
enum MHD_Result api_health_get(http_req *req, struct MHD_Connection *conn);
/* api_console.c: the web console's embedded static files (/ and /console/<name>) */
enum MHD_Result api_console_get(http_req *req, struct MHD_Connection *conn);
enum MHD_Result api_models_get(http_req *req, struct MHD_Connection *conn);
enum MHD_Result api_models_item(http_req *req, struct MHD_Connection *conn); /* GET /v1/models/{id} */
/* api_tokenize.c: POST /tokenize and /detokenize (vLLM's shapes, llama.cpp's accepted) */
enum MHD_Result api_tokenize_post(http_req *req, struct MHD_Connection *conn);
enum MHD_Result api_detokenize_post(http_req *req, struct MHD_Connection *conn);

/* ---- api_adapters.c: the adapter resource ---- */
/* GET /v1/adapters?limit=N&after=NAME. */
enum MHD_Result api_adapters_list(http_req *req, struct MHD_Connection *conn);
/* GET / DELETE /v1/adapters/{name} (req->arg). */
enum MHD_Result api_adapters_item(http_req *req, struct MHD_Connection *conn);
/* An adapter's public description {"id","object":"adapter","version","kind",...}; NULL
 * when out of memory. @note caller owns the result. */
struct cJSON *api_adapter_meta_json(const astore_meta *m);
/* 503 "adapter store not configured"; 400 for an invalid adapter name (quoted safely). */
enum MHD_Result api_adapters__no_store(http_req *req, struct MHD_Connection *conn);
enum MHD_Result api_adapters__bad_name(http_req *req, struct MHD_Connection *conn, const char *name);

/* ---- api_adapters_upload.c: PUT /v1/adapters/{name}, the route's hooks ---- */
/* begin: checks the store, the name, the content type and a declared length, then
 * prepares the streaming (staging directory + multipart parser) and sets req->ctx. May
 * queue an error response (then sets req->answered). */
enum MHD_Result api_adapters_put_begin(http_req *req, struct MHD_Connection *conn);
/* data: a piece of the body, parsed and written to the staging files. MHD_NO closes the
 * connection (a body far past the limit after an error). */
enum MHD_Result api_adapters_put_data(http_req *req, const char *data, size_t n);
/* resume: the whole body has arrived: checks the parts and hands the import to the
 * import pool with the connection suspended (503 + Retry-After when its queue is full);
 * called again once the import resumed the connection: answers. */
enum MHD_Result api_adapters_put_finish(http_req *req, struct MHD_Connection *conn);
/* closed: drops the parser, the staging files and directory (once an import in flight is
 * over). */
void api_adapters_closed(http_req *req, enum MHD_RequestTerminationCode toe);

/* ---- api_lora_vllm.c: vLLM's POST /v1/load_lora_adapter and /v1/unload_lora_adapter ---- */
enum MHD_Result api_lora_load(http_req *req, struct MHD_Connection *conn);
/* The load's import runs on the import pool: its resume/closed route hooks. */
enum MHD_Result api_lora_load_resume(http_req *req, struct MHD_Connection *conn);
void api_lora_load_closed(http_req *req, enum MHD_RequestTerminationCode toe);
enum MHD_Result api_lora_unload(http_req *req, struct MHD_Connection *conn);

/* ---- api_admin.c ---- */
/* /v1/admin/tenants: GET list, POST create. */
enum MHD_Result api_admin_tenants(http_req *req, struct MHD_Connection *conn);
/* /v1/admin/tenants/{id}: GET, PATCH, DELETE; {id}/keys: GET, POST; {id}/keys/{key id}: DELETE. */
enum MHD_Result api_admin_tenant_item(http_req *req, struct MHD_Connection *conn);

/* ---- api_replication.c: the primary's feed endpoints and the follower's write refusal ---- */
enum MHD_Result api_replication_changes(http_req *req, struct MHD_Connection *conn);  /* GET .../changes */
enum MHD_Result api_replication_snapshot(http_req *req, struct MHD_Connection *conn); /* GET .../snapshot */
enum MHD_Result api_replication_blob(http_req *req, struct MHD_Connection *conn);     /* GET .../blobs/{sha} */
/* On a follower (cfg.follow_url set): answers the write with 307 to the primary and
 * returns true (*ret is the handler's result). false on a primary: nothing answered. */
bool api_replica_refuses(http_req *req, struct MHD_Connection *conn, enum MHD_Result *ret);
/* The peftd_replication_* families (both roles) appended to b: 0 or a PEFTD code. */
int api_replication_metrics(api_server *s, http_buf *b);
/* /ready's "replication" object as JSON text into out (snprintf's result). */
int api_replication_ready(api_server *s, char *out, size_t cap);

/* ---- api_completions.c: POST /v1/completions and /v1/chat/completions ---- */
/* handle: the whole body has arrived: parse, validate, submit, then respond or suspend
 * (sets req->ctx to the job). */
enum MHD_Result api_completions_post(http_req *req, struct MHD_Connection *conn);
enum MHD_Result api_chat_post(http_req *req, struct MHD_Connection *conn); /* the chat route's handle */
/* the prefill-only routes on the same job machinery (api_score.c, api_embeddings.c, api_classify.c) */
enum MHD_Result api_score_post(http_req *req, struct MHD_Connection *conn);
enum MHD_Result api_embeddings_post(http_req *req, struct MHD_Connection *conn);
enum MHD_Result api_classify_post(http_req *req, struct MHD_Connection *conn);
/* resume: called again after a resume (non-streaming): respond or suspend again. */
enum MHD_Result api_completions_continue(http_req *req, struct MHD_Connection *conn);
/* closed: cancel what is still running, fill the access line, drop the connection's
 * reference to the job. */
void api_completions_closed(http_req *req, enum MHD_RequestTerminationCode toe);
/* Shutdown: resume every suspended job so that the transport finds none suspended, and
 * cancel their engine requests. Called after the transport is quiesced. */
void api_completions_shutdown(api_server *s);

#endif
