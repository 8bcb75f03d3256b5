/* server/api/api_server.c — the API's route table (path, methods, handler and hooks: the
 * data the transport routes by) and its lifecycle: the chat template and the import
 * threads at start; at stop, in order: quiesce the transport, wake and cancel what is
 * suspended, abandon queued imports, let finished answers reach their clients, stop the
 * transport.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/status.h"
#include "server/api/api_internal.h"
#include "server/text/chat_template.h"

/* At shutdown, how long in-flight completions and imports get to send what they have:
 * bounded so that a client that stopped reading cannot hold the shutdown. */
#define API_STOP_FLUSH_MS 3000

static const http_route api_routes[] = {
    {.path = "/v1/completions", .label = "/v1/completions", .methods = HTTP_M_POST, .allow = "POST",
     .handle = api_completions_post, .resume = api_completions_continue, .closed = api_completions_closed},
    {.path = "/v1/chat/completions", .label = "/v1/chat/completions", .methods = HTTP_M_POST, .allow = "POST",
     .handle = api_chat_post, .resume = api_completions_continue, .closed = api_completions_closed},
    {.path = "/v1/score", .label = "/v1/score", .methods = HTTP_M_POST, .allow = "POST",
     .handle = api_score_post, .resume = api_completions_continue, .closed = api_completions_closed},
    {.path = "/v1/embeddings", .label = "/v1/embeddings", .methods = HTTP_M_POST, .allow = "POST",
     .handle = api_embeddings_post, .resume = api_completions_continue, .closed = api_completions_closed},
    {.path = "/v1/classify", .label = "/v1/classify", .methods = HTTP_M_POST, .allow = "POST",
     .handle = api_classify_post, .resume = api_completions_continue, .closed = api_completions_closed},
    {.path = "/v1/models", .label = "/v1/models", .methods = HTTP_M_READ, .allow = "GET, HEAD",
     .handle = api_models_get},
    {.path = "/v1/models/", .prefix = true, .label = "/v1/models", .methods = HTTP_M_READ, .allow = "GET, HEAD",
     .handle = api_models_item},
    {.path = "/tokenize", .label = "/tokenize", .methods = HTTP_M_POST, .allow = "POST", .handle = api_tokenize_post},
    {.path = "/detokenize", .label = "/detokenize", .methods = HTTP_M_POST, .allow = "POST",
     .handle = api_detokenize_post},
    {.path = "/v1/adapters", .label = "/v1/adapters", .methods = HTTP_M_READ, .allow = "GET, HEAD",
     .handle = api_adapters_list},
    {.path = "/v1/adapters/", .prefix = true, .label = "/v1/adapters",
     .methods = HTTP_M_READ | HTTP_M_PUT | HTTP_M_DELETE, .allow = "GET, HEAD, PUT, DELETE",
     .handle = api_adapters_item, .stream_methods = HTTP_M_PUT, .begin = api_adapters_put_begin,
     .data = api_adapters_put_data, .resume = api_adapters_put_finish, .closed = api_adapters_closed},
    {.path = "/v1/load_lora_adapter", .label = "/v1/load_lora_adapter", .methods = HTTP_M_POST, .allow = "POST",
     .handle = api_lora_load, .resume = api_lora_load_resume, .closed = api_lora_load_closed},
    {.path = "/v1/unload_lora_adapter", .label = "/v1/unload_lora_adapter", .methods = HTTP_M_POST, .allow = "POST",
     .handle = api_lora_unload},
    {.path = "/health", .label = "/health", .methods = HTTP_M_READ, .allow = "GET, HEAD", .handle = api_health_get},
    {.path = "/ready", .label = "/ready", .methods = HTTP_M_READ, .allow = "GET, HEAD", .handle = api_ready_get},
    {.path = "/metrics", .label = "/metrics", .methods = HTTP_M_READ, .allow = "GET, HEAD", .handle = api_metrics_get},
    {.path = "/v1/replication/changes", .label = "other", .methods = HTTP_M_READ, .allow = "GET, HEAD",
     .handle = api_replication_changes},
    {.path = "/v1/replication/snapshot", .label = "other", .methods = HTTP_M_READ, .allow = "GET, HEAD",
     .handle = api_replication_snapshot},
    {.path = "/v1/replication/blobs/", .prefix = true, .label = "other", .methods = HTTP_M_READ,
     .allow = "GET, HEAD", .handle = api_replication_blob},
    {.path = "/v1/admin/tenants", .label = "other", .methods = HTTP_M_READ | HTTP_M_POST, .allow = "GET, HEAD, POST",
     .handle = api_admin_tenants},
    {.path = "/v1/admin/tenants/", .prefix = true, .label = "other",
     .methods = HTTP_M_READ | HTTP_M_POST | HTTP_M_PATCH | HTTP_M_DELETE, .allow = "GET, HEAD, POST, PATCH, DELETE",
     .handle = api_admin_tenant_item},
    {.path = "/", .label = "/console", .methods = HTTP_M_READ, .allow = "GET, HEAD", .handle = api_console_get},
    {.path = "/console/", .prefix = true, .label = "/console", .methods = HTTP_M_READ, .allow = "GET, HEAD",
     .handle = api_console_get},
};

/* The chat template: a configured one must load; the model's own may be missing (chat
 * requests then get a 400 saying so) or beyond the interpreter (the same 400, with why). */
static int api_load_chat(api_server *a, char *err, size_t errlen) {
    const char *conf = a->cfg.chat_template;
    int rc;
    if ((!conf || !conf[0]) && a->m->chat_template) /* GGUF: tokenizer.chat_template */
        rc = chat_template_parse(a->m->chat_template, strlen(a->m->chat_template), &a->chat, a->chat_error,
                                 sizeof a->chat_error);
    else
        rc = chat_template_load(a->m->dir, conf, &a->chat, a->chat_error, sizeof a->chat_error);
    if (rc && conf && conf[0]) {
        snprintf(err, errlen, "chat template: %s", a->chat_error);
        return rc;
    }
    if (rc && rc != PEFTD_ENOTFOUND) LOGW("http: /v1/chat/completions disabled: %s", a->chat_error);
    if (rc == PEFTD_ENOTFOUND) a->chat_error[0] = '\0';
    if (a->chat) LOGI("http: chat template: %s", chat_template_family(a->chat));
    else if (rc == PEFTD_ENOTFOUND) LOGI("http: %s has no chat template: /v1/chat/completions answers 400", a->m->name);
    return 0;
}

static int api_start_imports(api_server *a, char *err, size_t errlen) {
    /* PEFTD_DEBUG_IMPORT_DELAY_MS: test hook, read once here (http_pool.c) */
    const char *d = getenv("PEFTD_DEBUG_IMPORT_DELAY_MS");
    unsigned delay_ms = d ? (unsigned)strtoul(d, NULL, 10) : 0;
    if (delay_ms)
        LOGW("http: PEFTD_DEBUG_IMPORT_DELAY_MS=%u: every adapter import waits that long (test hook)", delay_ms);
    int rc = http_pool_create(a->cfg.import_threads, a->cfg.import_queue, delay_ms, &a->imports);
    if (rc < 0) snprintf(err, errlen, "http: cannot start %d import threads", a->cfg.import_threads);
    return rc;
}

static void api_free(api_server *a) {
    http_pool_free(a->imports);
    chat_template_free(a->chat);
    pthread_mutex_destroy(&a->jobs_mu);
    free(a);
}

int api_server_start(const http_config *cfg, engine *e, const tokenizer *tok, const model *m, adapter_registry *reg,
                     astore *store, adapter_service *svc, api_server **out, char *err, size_t errlen) {
    *out = NULL;
    if (!cfg || !e || !tok || !m || !reg || !store != !svc || cfg->listen_fd < 0) {
        snprintf(err, errlen, "http: invalid configuration");
        if (cfg && cfg->listen_fd >= 0) close(cfg->listen_fd);
        return PEFTD_EINVAL;
    }
    api_server *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "http: out of memory");
        close(cfg->listen_fd);
        return PEFTD_ENOMEM;
    }
    a->e = e;
    a->tok = tok;
    a->m = m;
    a->reg = reg;
    a->store = store;
    a->svc = svc;
    a->cfg = *cfg;
    a->created = time(NULL);
    atomic_init(&a->next_id, ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid());
    atomic_init(&a->uploads_open, 0);
    atomic_init(&a->imports_open, 0);
    pthread_mutex_init(&a->jobs_mu, NULL);
    int rc = http_config_resolve(&a->cfg, err, errlen);
    if (!rc && svc) rc = api_start_imports(a, err, errlen);
    if (!rc) rc = api_load_chat(a, err, errlen);
    if (rc) {
        close(cfg->listen_fd);
        api_free(a);
        return rc;
    }
    rc = http_server_start(&a->cfg, api_routes, (int)(sizeof api_routes / sizeof api_routes[0]), a, &a->http, err,
                           errlen);
    if (rc) {
        api_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

int api_server_port(const api_server *a) { return a ? http_server_port(a->http) : -1; }

void api_server_stop(api_server *a) {
    if (!a) return;
    http_server_quiesce(a->http);
    /* libmicrohttpd refuses to stop with suspended connections: wake them all; with the
     * transport stopping none suspends again. */
    api_completions_shutdown(a);
    /* Imports: queued ones (and the test hook's waits) are abandoned, a running one
     * finishes; each resumes its connection with its answer (503 when abandoned). */
    http_pool_stop(a->imports);
    /* Let finished completions and imports reach their clients (the last SSE chunks, a
     * JSON body resumed just before the stop) instead of cutting them off. */
    for (int waited_ms = 0; waited_ms < API_STOP_FLUSH_MS; waited_ms += 10) {
        pthread_mutex_lock(&a->jobs_mu);
        bool idle = a->jobs == NULL && atomic_load(&a->imports_open) == 0;
        pthread_mutex_unlock(&a->jobs_mu);
        if (idle) break;
        nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
    }
    http_server_stop(a->http);
    api_free(a);
}
