/* server/main.c — the peftd command line.
 *
 *   peftd serve    [--config FILE] [--model DIR] [--host H] [--port N] [--threads N]
 *   peftd generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T] [--seed S]
 *                  [--top-p P] [--top-k K] [--threads N]
 *
 * serve: loads the model, starts the engine thread and the HTTP server, and waits for
 * SIGTERM/SIGINT on a libuv loop; then stops accepting work, lets in-flight requests finish
 * for shutdown_grace_s (a second signal cancels them at once) and exits 0. SIGHUP re-reads
 * the config file and applies what can change without a restart (the "log" section; tenants'
 * limits and weights through the reload hook) while requests keep running.
 * generate: offline generation to stdout through the same engine (no server).
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "adapter_store/registry.h"
#include "adapter_store/store.h"
#include "server/tenants/tenants.h"
#include "server/adapter_service.h"
#include "kernels/kernels.h"
#include "kernels/kernels_cuda.h"
#include "lib/log.h"
#include "server/config.h"
#include "server/engine/engine.h"
#include "server/http/access_log.h"
#include "server/http/http_metrics.h"
#include "server/api/api_server.h"
#include "server/http/http_server.h"
#include "server/model/model.h"
#include "server/model/model_adapter_base.h"
#include "server/text/tokenizer.h"

#define PEFTD_VERSION "0.1.0"

static void usage(FILE *f) {
    fprintf(f,
            "peftd " PEFTD_VERSION " — multi-tenant adapter-serving inference daemon\n"
            "usage:\n"
            "  peftd serve [--config FILE] [--model DIR] [--host H] [--port N] [--threads N]\n"
            "              [--store DIR] [--adapter NAME=DIR]...\n"
            "  peftd generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T]\n"
            "                 [--seed S] [--top-p P] [--top-k K] [--threads N]\n"
            "                 [--adapter DIR [--adapter-scale X]]\n");
}

static int parse_long(const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "peftd: %s expects an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi)) {
        fprintf(stderr, "peftd: %s expects a number in [%g, %g], got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* The resident base model: backend, weights, tokenizer, engine. */
typedef struct {
    kbackend *kb;
    model *m;
    tokenizer *tok;
    engine *e;
} runtime;

static void runtime_close(runtime *rt) {
    engine_free(rt->e);
    model_free(rt->m);
    tokenizer_free(rt->tok);
    kbackend_destroy(rt->kb);
    memset(rt, 0, sizeof *rt);
}

/* backend: "auto" (CUDA when a device is usable, else CPU with one log line), "cpu" or
 * "cuda" (no fallback: a clean start-up failure); PEFTD_BACKEND overrides it. */
static int runtime_open(runtime *rt, const char *model_dir, int threads, bool fast_prefill, const char *backend,
                        const engine_config *ec) {
    char err[1024] = "";
    memset(rt, 0, sizeof *rt);
    const char *env = getenv("PEFTD_BACKEND");
    if (env && *env) backend = env;
    if (!backend || !*backend) backend = "auto";
    if (strcmp(backend, "auto") && strcmp(backend, "cpu") && strcmp(backend, "cuda")) {
        fprintf(stderr, "peftd: backend must be auto, cpu or cuda, got '%s'\n", backend);
        return -1;
    }
#ifdef PEFTD_CUDA
    if (!strcmp(backend, "cuda") || (!strcmp(backend, "auto") && kbackend_cuda_available())) {
        rt->kb = kbackend_cuda_create(0, err, sizeof err);
        if (!rt->kb) {
            fprintf(stderr, "peftd: cannot create the CUDA backend: %s\n", err);
            return -1;
        }
        LOGI("backend: cuda");
    } else if (!strcmp(backend, "auto")) {
        LOGI("backend: cpu (no CUDA device: running on the CPU backend)");
    } else {
        LOGI("backend: cpu (as configured)");
    }
#else
    if (!strcmp(backend, "cuda")) {
        fprintf(stderr, "peftd: backend \"cuda\" asked for, but this build has no CUDA backend\n");
        return -1;
    }
    LOGI("backend: cpu (this build has no CUDA backend)");
#endif
    if (!rt->kb) {
        rt->kb = kbackend_cpu_create(threads);
        if (!rt->kb) {
            fprintf(stderr, "peftd: cannot create the CPU backend\n");
            return -1;
        }
        kbackend_cpu_set_fast_prefill(rt->kb, fast_prefill);
    }
    int st = model_load(model_dir, rt->kb, &rt->m, err, sizeof err);
    if (st < 0) {
        fprintf(stderr, "peftd: cannot load model from %s: %s\n", model_dir, err);
        goto fail;
    }
    st = tokenizer_load(model_dir, &rt->tok, err, sizeof err);
    if (st < 0) {
        fprintf(stderr, "peftd: cannot load tokenizer from %s: %s\n", model_dir, err);
        goto fail;
    }
    if (tokenizer_vocab_size(rt->tok) > rt->m->cfg.vocab_size) {
        fprintf(stderr, "peftd: tokenizer has %d tokens but the model only %d\n", tokenizer_vocab_size(rt->tok),
                rt->m->cfg.vocab_size);
        goto fail;
    }
    st = engine_create(ec, rt->m, rt->kb, rt->tok, &rt->e, err, sizeof err);
    if (st < 0) {
        fprintf(stderr, "peftd: cannot create the engine: %s\n", err);
        goto fail;
    }
    if (engine_start(rt->e) < 0) {
        fprintf(stderr, "peftd: cannot start the engine thread\n");
        goto fail;
    }
    return 0;
fail:
    runtime_close(rt);
    return -1;
}

/* ---------- generate ---------- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool ready;
} waiter;

static void waiter_notify(void *ud) {
    waiter *w = ud;
    pthread_mutex_lock(&w->mu);
    w->ready = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int cmd_generate(int argc, char **argv) {
    const char *model_dir = NULL, *prompt = NULL, *adapter_dir = NULL;
    long max_tokens = 16, seed = 0, top_k = 0, threads = 0;
    double temperature = 1.0, top_p = 1.0, adapter_scale = 1.0;
    bool has_seed = false, scale_set = false;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "peftd: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--adapter")) adapter_dir = v;
        else if (!strcmp(a, "--adapter-scale")) { if (parse_float(a, v, 0, 16, &adapter_scale)) return 2; scale_set = true; }
        else if (!strcmp(a, "--max-tokens")) { if (parse_long(a, v, 1, INT_MAX / 2, &max_tokens)) return 2; }
        else if (!strcmp(a, "--temperature")) { if (parse_float(a, v, 0, 100, &temperature)) return 2; }
        else if (!strcmp(a, "--top-p")) { if (parse_float(a, v, 1e-6, 1, &top_p)) return 2; }
        else if (!strcmp(a, "--top-k")) { if (parse_long(a, v, 0, INT_MAX, &top_k)) return 2; }
        else if (!strcmp(a, "--threads")) { if (parse_long(a, v, 0, 1024, &threads)) return 2; }
        else if (!strcmp(a, "--seed")) { if (parse_long(a, v, LONG_MIN, LONG_MAX, &seed)) return 2; has_seed = true; }
        else {
            fprintf(stderr, "peftd: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model_dir || !prompt) {
        fprintf(stderr, "peftd generate: --model and --prompt are required\n");
        return 2;
    }
    log_set_level(getenv("PEFTD_LOG") ? LOG_INFO : LOG_WARN); /* stdout is the text only */
    runtime rt;
    engine_config ec;
    engine_config_default(&ec);
    ec.max_seqs = 1;
    if (runtime_open(&rt, model_dir, (int)threads, false, "auto", &ec) < 0) return 1;
    int rc = 1;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    engine_request *r = NULL;
    adapter *ad = NULL;
    char err[1024];
    if (adapter_dir && model_load_adapter(rt.m, adapter_dir, &ad, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: cannot load adapter %s: %s\n", adapter_dir, err);
        goto out;
    }
    /* the HTTP API's rule (adapter_check_scale): refused, never silently ignored */
    if (scale_set && (!ad || adapter_check_scale(ad, adapter_scale, err, sizeof err) < 0)) {
        fprintf(stderr, "peftd: --adapter-scale: %s\n", ad ? err : "needs --adapter");
        rc = 2;
        goto out;
    }
    if (tokenizer_encode(rt.tok, prompt, strlen(prompt), true, &ids, &n_ids) < 0) {
        fprintf(stderr, "peftd: the prompt is not valid UTF-8\n");
        goto out;
    }
    if (n_ids == 0) {
        fprintf(stderr, "peftd: the prompt is empty and this tokenizer adds no BOS token\n");
        goto out;
    }
    int ctx = engine_context_length(rt.e);
    int nv = ad && (ad->kind == ADAPTER_PROMPT_TUNING || ad->kind == ADAPTER_PREFIX_TUNING) ? ad->n_virtual : 0;
    if ((long)n_ids + nv + max_tokens > ctx) {
        fprintf(stderr, "peftd: prompt (%zu tokens%s) + max-tokens (%ld) exceeds the context length %d\n", n_ids,
                nv ? " + the adapter's virtual tokens" : "", max_tokens, ctx);
        goto out;
    }
    gen_params p;
    gen_params_default(&p);
    p.max_tokens = (int)max_tokens;
    p.temperature = (float)temperature;
    p.top_p = (float)top_p;
    p.top_k = (int)top_k;
    p.seed = (uint64_t)seed;
    p.has_seed = has_seed;
    p.adapter = ad;
    p.adapter_scale = (float)adapter_scale;
    waiter w = {.ready = false};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    r = engine_request_create(ids, (int)n_ids, &p);
    if (!r) goto out;
    engine_request_set_notify(r, waiter_notify, &w);
    int st = engine_submit(rt.e, r);
    if (st < 0) {
        fprintf(stderr, "peftd: submit failed: %s\n", peftd_strerror(st));
        goto out;
    }
    for (;;) {
        engine_delta d;
        if (engine_request_take(r, &d) < 0) goto out;
        fwrite(d.text, 1, d.text_len, stdout);
        fflush(stdout);
        bool done = d.finished;
        finish_reason fin = d.finish;
        char error[256];
        memcpy(error, d.error, sizeof error);
        engine_delta_free(&d);
        if (done) {
            if (fin == FINISH_ERROR) fprintf(stderr, "peftd: generation failed: %s\n", error);
            rc = fin == FINISH_ERROR ? 1 : 0;
            break;
        }
        pthread_mutex_lock(&w.mu);
        while (!w.ready) pthread_cond_wait(&w.cv, &w.mu);
        w.ready = false;
        pthread_mutex_unlock(&w.mu);
    }
out:
    /* stop the engine before the waiter goes out of scope: no notify can follow */
    if (rt.e) engine_stop(rt.e, false);
    engine_request_unref(r);
    free(ids);
    adapter_free(ad);
    runtime_close(&rt);
    return rc;
}

/* ---------- serve ---------- */

/* mkdir -p for the store directory. */
static int mkdir_p(const char *path) {
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    for (char *q = p + 1; *q; q++)
        if (*q == '/') {
            *q = 0;
            if (mkdir(p, 0755) < 0 && errno != EEXIST) return -1;
            *q = '/';
        }
    return mkdir(p, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

/* The "log" section: event level and format, access log sink. Returns 0 or -errno from
 * opening the access log file (the previous sink stays then). */
static int apply_log_config(const peftd_config *c) {
    int level = log_level_parse(c->log.level), format = log_format_parse(c->log.format);
    if (level >= 0) log_set_level(level);
    if (format >= 0) log_set_format(format);
    return access_log_configure(c->log.access, format >= 0 ? format : LOG_FORMAT_TEXT);
}

/* The tenant layer from the "auth" section: the admin key is hashed here (from the named
 * environment variable, or given as a hash) and only the hash is kept. */
static int open_tenants(const peftd_config *cfg, astore *store, tenants **out) {
    tenants_config tc = {.enabled = cfg->auth.enabled};
    char err[256] = "";
    snprintf(tc.admin_sha256, sizeof tc.admin_sha256, "%s", cfg->auth.admin_key_sha256);
    if (cfg->auth.admin_key_env[0]) {
        const char *k = getenv(cfg->auth.admin_key_env);
        if (!k || !*k) {
            fprintf(stderr, "peftd: auth.admin_key_env names %s, which is not set\n", cfg->auth.admin_key_env);
            return PEFTD_EINVAL;
        }
        if (tenants_sha256_hex(k, tc.admin_sha256) < 0) return PEFTD_EIO;
    }
    if (cfg->auth.enabled && !tc.admin_sha256[0])
        LOGW("auth: enabled without an admin key: tenants can only be managed by another peftd on this store");
    int rc = tenants_open(store, &tc, out, err, sizeof err);
    if (rc < 0) fprintf(stderr, "peftd: %s\n", err);
    else if (cfg->auth.enabled) LOGI("auth: on (Bearer API keys; /health, /ready, /metrics open)");
    return rc;
}

static int reload_tenants(void *ud) { return tenants_reload(ud); }

typedef struct {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint, sighup;
    const char *config_path;   /* re-read on SIGHUP; NULL = none given */
    /* SIGHUP hook for the tenant layer: reload_fn(reload_ud) re-reads tenants' limits and
     * weights (tenants_reload) — set by whoever creates the tenants; NULL = nothing. */
    int (*reload_fn)(void *ud);
    void *reload_ud;
    uv_timer_t poll;
    engine *e;
    int signals;
    uint64_t grace_ms, deadline;
} serve_loop;

static void on_poll(uv_timer_t *t) {
    serve_loop *s = t->data;
    engine_stats st;
    engine_get_stats(s->e, &st);
    if ((st.running == 0 && st.waiting == 0) || uv_now(&s->loop) >= s->deadline) {
        if (st.running || st.waiting)
            LOGW("shutdown: grace period over, cancelling %d running and %d waiting requests", st.running,
                 st.waiting);
        uv_stop(&s->loop);
    }
}

static void on_signal(uv_signal_t *h, int signum) {
    serve_loop *s = h->data;
    if (++s->signals > 1) {
        LOGW("second signal: cancelling in-flight requests");
        uv_stop(&s->loop);
        return;
    }
    LOGI("received %s: finishing in-flight requests, accepting no new ones", strsignal(signum));
    http_set_draining(true); /* /ready answers 503 from now on */
    engine_shutdown(s->e, true);
    s->deadline = uv_now(&s->loop) + s->grace_ms;
    uv_timer_start(&s->poll, on_poll, 0, 20);
}

/* SIGHUP: runs on the loop thread; nothing here blocks requests (log settings are atomics,
 * the access log swaps its descriptor under a lock held only per line). A config file
 * that does not parse changes nothing. Settings that need a restart (model, port, engine,
 * store) are read but ignored. */
static void on_sighup(uv_signal_t *h, int signum) {
    serve_loop *s = h->data;
    char err[1024] = "";
    if (s->config_path) {
        peftd_config c;
        config_default(&c);
        int st = config_load(&c, s->config_path, err, sizeof err);
        if (st < 0) {
            config_free(&c);
            LOGE("SIGHUP: config not reloaded: %s", err);
            return;
        }
        if ((st = apply_log_config(&c)) < 0)
            LOGE("SIGHUP: cannot open the access log %s: %s", c.log.access, strerror(-st));
        config_free(&c);
    }
    if (s->reload_fn && s->reload_fn(s->reload_ud) < 0) LOGE("SIGHUP: tenants not reloaded");
    LOGI("SIGHUP: reloaded %s%s", s->config_path ? s->config_path : "(no config file)",
         s->reload_fn ? " and tenants" : "");
}

/* The signals serve handles on its libuv loop, and what came before the loop's handlers
 * existed. Blocking them in main is not enough: libraries start threads from their
 * constructors (OpenBLAS's pool) before main runs, and a process-directed signal goes to
 * any thread that does not block it. So until libuv's handlers are installed (and again
 * after they are removed at shutdown), a plain handler records the signal; the recorded
 * ones are re-raised once libuv handles them. */
static const int serve_signals[] = {SIGTERM, SIGINT, SIGHUP};
static volatile sig_atomic_t serve_pending[3];

static void serve_record_signal(int sig) {
    for (int i = 0; i < 3; i++)
        if (serve_signals[i] == sig) serve_pending[i] = 1;
}

static void serve_catch_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = serve_record_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int i = 0; i < 3; i++) sigaction(serve_signals[i], &sa, NULL);
}

/* After uv_signal_start: hands what was recorded to libuv's handlers. */
static void serve_replay_signals(void) {
    for (int i = 0; i < 3; i++)
        if (serve_pending[i]) {
            serve_pending[i] = 0;
            raise(serve_signals[i]);
        }
}

static int cmd_serve(int argc, char **argv) {
    /* A SIGTERM while the model loads, or after /health answers but before the loop's
     * handlers exist, is recorded and acted on once they do (exit 0), not the default
     * action's death by signal. */
    serve_catch_signals();
    /* A file-size limit (RLIMIT_FSIZE) must fail the write that passes it (EFBIG: the
     * upload answers 507), not kill the daemon with SIGXFSZ's default action. */
    signal(SIGXFSZ, SIG_IGN);
    peftd_config cfg;
    config_default(&cfg);
    char err[1024] = "";
    const char *config_path = NULL;
    for (int i = 2; i < argc; i++) /* the config file first, so flags override it */
        if (!strcmp(argv[i], "--config") && i + 1 < argc) config_path = argv[i + 1];
    if (config_path && config_load(&cfg, config_path, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: %s\n", err);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "peftd: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        long n;
        if (!strcmp(a, "--config")) continue;
        else if (!strcmp(a, "--model")) snprintf(cfg.model_dir, sizeof cfg.model_dir, "%s", v);
        else if (!strcmp(a, "--host")) snprintf(cfg.host, sizeof cfg.host, "%s", v);
        else if (!strcmp(a, "--port")) { if (parse_long(a, v, 0, 65535, &n)) return 2; cfg.port = (int)n; }
        else if (!strcmp(a, "--threads")) { if (parse_long(a, v, 0, 1024, &n)) return 2; cfg.threads = (int)n; }
        else if (!strcmp(a, "--store")) snprintf(cfg.store.dir, sizeof cfg.store.dir, "%s", v);
        else if (!strcmp(a, "--adapter")) {
            char name[128];
            const char *eq = strchr(v, '=');
            if (!eq || (size_t)(eq - v) >= sizeof name) {
                fprintf(stderr, "peftd: --adapter expects NAME=DIR, got '%s'\n", v);
                return 2;
            }
            memcpy(name, v, (size_t)(eq - v));
            name[eq - v] = 0;
            if (config_add_adapter(&cfg, name, eq + 1, err, sizeof err) < 0) {
                fprintf(stderr, "peftd: %s\n", err);
                config_free(&cfg);
                return 2;
            }
        } else {
            fprintf(stderr, "peftd: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    int lst = apply_log_config(&cfg);
    if (lst < 0) {
        fprintf(stderr, "peftd: cannot open the access log %s: %s\n", cfg.log.access, strerror(-lst));
        config_free(&cfg);
        return 2;
    }
    /* The listening socket and the store's lock before anything slow: a second daemon on
     * the same port or store exits 1 at once, with the reason, instead of loading a model
     * first (and a second listener never shares the port). */
    int listen_fd = -1;
    if (http_listen(cfg.host, cfg.port, &listen_fd, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: cannot listen on %s:%d: %s\n", cfg.host, cfg.port, err);
        config_free(&cfg);
        return 1;
    }
    /* the adapter store next: the engine's tiers read from it */
    astore *store = NULL;
    astore_options so = {.map_bytes = (size_t)cfg.store.map_mb << 20,
                         .max_map_bytes = (size_t)cfg.store.max_map_mb << 20,
                         .exclusive = true};
    if (mkdir_p(cfg.store.dir) < 0 || astore_open(cfg.store.dir, &so, &store, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: cannot open the adapter store %s: %s\n", cfg.store.dir, err[0] ? err : strerror(errno));
        close(listen_fd);
        config_free(&cfg);
        return 1;
    }
    cfg.engine.store = store;
    cfg.engine.host_cache_bytes = (size_t)cfg.store.host_cache_mb << 20;
    cfg.engine.adapter_slots = cfg.store.slots;
    runtime rt;
    adapter_registry *reg = NULL;
    adapter_service *svc = NULL;
    api_server *srv = NULL;
    tenants *tn = NULL;
    int rc = 1;
    if (runtime_open(&rt, cfg.model_dir, cfg.threads, cfg.fast_prefill, cfg.backend, &cfg.engine) < 0) goto out_store;
    char tmp_root[4200];
    snprintf(tmp_root, sizeof tmp_root, "%s/tmp", cfg.store.dir);
    if (registry_create(&reg) < 0 ||
        adapter_service_create(rt.m, store, reg, engine_tiers(rt.e), tmp_root, &svc, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: cannot set up adapters: %s\n", err);
        goto out;
    }
    /* Adapter directories from the config (or --adapter) are imported into the store once:
     * a name the store already has is left as stored (upload a new version to change it).
     * A broken one is logged and skipped; requests naming it get the reason (422). */
    for (int i = 0; i < cfg.n_adapters; i++) {
        const char *name = cfg.adapters[i].name, *dir = cfg.adapters[i].dir;
        astore_meta have;
        if (adapter_service_name_is_base(svc, name)) {
            LOGE("adapter %s (%s) not imported: it is the base model's id; give it another name", name, dir);
            continue;
        }
        if (astore_get_meta(store, name, &have) == 0) continue;
        int st = adapter_service_import_dir(svc, name, "", 0, dir, NULL, err, sizeof err);
        if (st < 0) {
            LOGE("adapter %s (%s) not imported: %s", name, dir, err);
            registry_put_failure(reg, name, st, err);
        }
    }
    int n_pub = 0, n_skip = 0;
    if (adapter_service_publish_all(svc, &n_pub, &n_skip) < 0) {
        fprintf(stderr, "peftd: cannot read the adapter store %s\n", cfg.store.dir);
        goto out;
    }
    LOGI("adapter store %s: %d adapters served%s", cfg.store.dir, n_pub, n_skip ? " (some skipped: see above)" : "");
    if (open_tenants(&cfg, store, &tn) < 0) goto out;
    http_config hc = {.host = cfg.host, .port = cfg.port, .max_body_bytes = cfg.max_body_bytes,
                      .max_upload_bytes = (uint64_t)cfg.store.max_upload_mb << 20, .threads = cfg.http_threads,
                      .tenants = tn, .chat_template = cfg.chat_template, .timeout_s = cfg.http_timeout_s,
                      .max_connections = cfg.http_max_connections, .max_uploads = cfg.http_max_uploads,
                      .import_threads = cfg.http_import_threads, .import_queue = cfg.http_import_queue,
                      .listen_fd = listen_fd};
    listen_fd = -1; /* the server's now, whatever happens */
    if (api_server_start(&hc, rt.e, rt.tok, rt.m, reg, store, svc, &srv, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: cannot start the HTTP server on %s:%d: %s\n", cfg.host, cfg.port, err);
        goto out;
    }
    printf("peftd: serving %s on http://%s:%d (OpenAI-compatible: POST /v1/completions)\n", rt.m->name, cfg.host,
           api_server_port(srv));
    fflush(stdout);

    serve_loop s = {.e = rt.e, .grace_ms = (uint64_t)cfg.shutdown_grace_s * 1000, .config_path = config_path};
    if (tenants_enabled(tn)) {
        s.reload_fn = reload_tenants;
        s.reload_ud = tn;
    }
    uv_loop_init(&s.loop);
    uv_signal_init(&s.loop, &s.sigterm);
    uv_signal_init(&s.loop, &s.sigint);
    uv_signal_init(&s.loop, &s.sighup);
    uv_timer_init(&s.loop, &s.poll);
    s.sigterm.data = s.sigint.data = s.sighup.data = s.poll.data = &s;
    uv_signal_start(&s.sighup, on_sighup, SIGHUP);
    uv_signal_start(&s.sigterm, on_signal, SIGTERM);
    uv_signal_start(&s.sigint, on_signal, SIGINT);
    signal(SIGPIPE, SIG_IGN);
    serve_replay_signals(); /* a signal that came early is handled now, by libuv */
    uv_run(&s.loop, UV_RUN_DEFAULT);
    engine_stop(rt.e, false); /* cancels what is left, joins the engine thread */
    api_server_stop(srv);
    srv = NULL;
    uv_close((uv_handle_t *)&s.sigterm, NULL);
    uv_close((uv_handle_t *)&s.sigint, NULL);
    uv_close((uv_handle_t *)&s.sighup, NULL);
    uv_close((uv_handle_t *)&s.poll, NULL);
    uv_run(&s.loop, UV_RUN_DEFAULT);
    serve_catch_signals(); /* closing libuv's handles restored SIG_DFL: a late signal is moot */
    uv_loop_close(&s.loop);
    rc = 0;
out:
    api_server_stop(srv);
    if (rt.e) engine_stop(rt.e, false);
    engine_free(rt.e); /* frees the tiers' slots before the backend goes */
    rt.e = NULL;
    tenants_close(tn);
    adapter_service_free(svc);
    registry_free(reg);
    runtime_close(&rt);
out_store:
    if (listen_fd >= 0) close(listen_fd);
    astore_close(store);
    config_free(&cfg);
    if (rc == 0) LOGI("peftd: stopped");
    access_log_close();
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("peftd %s\n", PEFTD_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "serve")) return cmd_serve(argc, argv);
    if (!strcmp(argv[1], "generate")) return cmd_generate(argc, argv);
    fprintf(stderr, "peftd: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
