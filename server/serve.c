/* server/serve.c — `peftd serve` (see serve.h): bring-up in the order that fails fast (the
 * listening socket and the store's lock before the slow model load), the libuv signal loop
 * (SIGTERM/SIGINT: stop accepting work, let in-flight requests finish for
 * shutdown_grace_s, a second signal cancels them at once; SIGHUP: re-read the config's
 * "log" section and the tenants' limits while requests keep running), and teardown. */
#include "server/serve.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "adapter_store/registry.h"
#include "adapter_store/store.h"
#include "lib/log.h"
#include "lib/status.h"
#include "server/adapters/adapter_service.h"
#include "server/api/api_server.h"
#include "server/http/access_log.h"
#include "server/http/http_metrics.h"
#include "server/http/http_server.h"
#include "server/model/model_quant_cache.h"
#include "server/replication/follower.h"
#include "server/runtime.h"
#include "server/tenants/tenants.h"

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

void serve_catch_signals(void) {
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

/* Runs the signal loop until SIGTERM/SIGINT and the drain end it, then stops the engine
 * and the HTTP server (srv is freed here) and closes the loop. */
static void serve_loop_run(const peftd_config *cfg, const char *config_path, engine *e, tenants *tn,
                           api_server *srv) {
    serve_loop s = {.e = e, .grace_ms = (uint64_t)cfg->shutdown_grace_s * 1000, .config_path = config_path};
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
    engine_stop(e, false); /* cancels what is left, joins the engine thread */
    api_server_stop(srv);
    uv_close((uv_handle_t *)&s.sigterm, NULL);
    uv_close((uv_handle_t *)&s.sigint, NULL);
    uv_close((uv_handle_t *)&s.sighup, NULL);
    uv_close((uv_handle_t *)&s.poll, NULL);
    uv_run(&s.loop, UV_RUN_DEFAULT);
    serve_catch_signals(); /* closing libuv's handles restored SIG_DFL: a late signal is moot */
    uv_loop_close(&s.loop);
}

/* Adapter directories from the config (or --adapter) are imported into the store once:
 * a name the store already has is left as stored (upload a new version to change it).
 * A broken one is logged and skipped; requests naming it get the reason (422). Then every
 * stored adapter is published. Returns 0, or -1 when the store cannot be read. */
static int load_adapters(const peftd_config *cfg, astore *store, adapter_registry *reg, adapter_service *svc) {
    char err[1024] = "";
    if (cfg->store.follow[0] && cfg->n_adapters)
        LOGW("replication: %d configured adapters not imported: a follower's catalogue is the primary's", cfg->n_adapters);
    for (int i = 0; i < cfg->n_adapters && !cfg->store.follow[0]; i++) {
        const char *name = cfg->adapters[i].name, *dir = cfg->adapters[i].dir;
        astore_meta have;
        if (adapter_service_name_is_base(svc, name)) {
            LOGE("adapter %s (%s) not imported: it is the base model's id; give it another name", name, dir);
            continue;
        }
        char key[ASTORE_KEY_MAX + 1];
        if (astore_key("", name, key) < 0) continue; /* config_add_adapter checked the name */
        if (astore_get_meta(store, key, &have) == 0) continue;
        int st = adapter_service_import_dir(svc, name, "", 0, dir, NULL, err, sizeof err);
        if (st < 0) {
            LOGE("adapter %s (%s) not imported: %s", name, dir, err);
            registry_put_failure(reg, key, st, err);
        }
    }
    int n_pub = 0, n_skip = 0;
    if (adapter_service_publish_all(svc, &n_pub, &n_skip) < 0) {
        fprintf(stderr, "peftd: cannot read the adapter store %s\n", cfg->store.dir);
        return -1;
    }
    LOGI("adapter store %s: %d adapters served%s", cfg->store.dir, n_pub, n_skip ? " (some skipped: see above)" : "");
    return 0;
}

/* store.follow: the replication thread, with the key named by store.follow_key_env. */
static int start_follower(const peftd_config *cfg, astore *store, adapter_service *svc, tenants *tn,
                          follower **out) {
    char err[512] = "";
    const char *key = "";
    if (cfg->store.follow_key_env[0]) {
        key = getenv(cfg->store.follow_key_env);
        if (!key || !*key) {
            fprintf(stderr, "peftd: store.follow_key_env names %s, which is not set\n", cfg->store.follow_key_env);
            return -1;
        }
    }
    if (follower_start(cfg->store.follow, key, cfg->store.follow_poll_ms, store, svc, tn, out, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: %s\n", err);
        return -1;
    }
    return 0;
}

/* The listening socket and the store's lock, before anything slow: a second daemon on
 * the same port or store exits 1 at once, with the reason, instead of loading a model
 * first (and a second listener never shares the port). The engine's tiers read from the
 * store: cfg->engine gets it. Returns 0, or -1 with the reason on stderr. */
static int open_listener_and_store(peftd_config *cfg, int *listen_fd, astore **store) {
    char err[1024] = "";
    if (http_listen(cfg->host, cfg->port, listen_fd, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: cannot listen on %s:%d: %s\n", cfg->host, cfg->port, err);
        return -1;
    }
    astore_options so = {.map_bytes = (size_t)cfg->store.map_mb << 20,
                         .max_map_bytes = (size_t)cfg->store.max_map_mb << 20,
                         .exclusive = true,
                         .changes_retain = (uint64_t)cfg->store.changes_retain};
    if (mkdir_p(cfg->store.dir) < 0 || astore_open(cfg->store.dir, &so, store, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: cannot open the adapter store %s: %s\n", cfg->store.dir, err[0] ? err : strerror(errno));
        close(*listen_fd);
        *listen_fd = -1;
        return -1;
    }
    cfg->engine.store = *store;
    cfg->engine.host_cache_bytes = (size_t)cfg->store.host_cache_mb << 20;
    cfg->engine.adapter_slots = cfg->store.slots;
    return 0;
}

int serve_run(peftd_config *cfg, const char *config_path) {
    char err[1024] = "";
    if (config_check_exposure(cfg, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: %s\n", err);
        return 2;
    }
    int lst = apply_log_config(cfg);
    if (lst < 0) {
        fprintf(stderr, "peftd: cannot open the access log %s: %s\n", cfg->log.access, strerror(-lst));
        return 2;
    }
    int listen_fd = -1;
    astore *store = NULL;
    if (open_listener_and_store(cfg, &listen_fd, &store) < 0) return 1;
    runtime rt;
    adapter_registry *reg = NULL;
    adapter_service *svc = NULL;
    api_server *srv = NULL;
    tenants *tn = NULL;
    follower *fol = NULL;
    int rc = 1;
    char wcache[4200];
    snprintf(wcache, sizeof wcache, "%s/weights-cache", cfg->store.dir);
    if (runtime_open_weights(&rt, cfg->model_dir, cfg->threads, cfg->fast_prefill, cfg->backend, cfg->weights,
                             cfg->weights_cache ? wcache : NULL, !cfg->mmap, &cfg->engine) < 0)
        goto out_store;
    /* after the load, whose conversion (if any) is now the most recently used file */
    int prc = cfg->weights_cache ? mqc_prune(wcache, (uint64_t)cfg->weights_cache_max_mb << 20) : 0;
    if (prc < 0) LOGW("weights cache %s: not pruned (%s)", wcache, peftd_strerror(prc));
    if (runtime_start(&rt) < 0) goto out;
    char tmp_root[4200];
    snprintf(tmp_root, sizeof tmp_root, "%s/tmp", cfg->store.dir);
    if (registry_create(&reg) < 0 ||
        adapter_service_create(rt.m, store, reg, engine_tiers(rt.e), tmp_root, &svc, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: cannot set up adapters: %s\n", err);
        goto out;
    }
    if (load_adapters(cfg, store, reg, svc) < 0 || open_tenants(cfg, store, &tn) < 0) goto out;
    if (cfg->store.follow[0] && start_follower(cfg, store, svc, tn, &fol) < 0) goto out;
    http_config hc = {.host = cfg->host, .port = cfg->port, .max_body_bytes = cfg->max_body_bytes,
                      .max_upload_bytes = (uint64_t)cfg->store.max_upload_mb << 20, .threads = cfg->http_threads,
                      .tenants = tn, .chat_template = cfg->chat_template, .timeout_s = cfg->http_timeout_s,
                      .max_connections = cfg->http_max_connections, .max_uploads = cfg->http_max_uploads,
                      .import_threads = cfg->http_import_threads, .import_queue = cfg->http_import_queue,
                      .vllm_metric_aliases = cfg->http_vllm_metric_aliases, .backend = rt.kb ? rt.kb->ops->name : NULL,
                      .cors_origins = {cfg->cors_origins[0], cfg->cors_origins[1], cfg->cors_origins[2],
                                       cfg->cors_origins[3], cfg->cors_origins[4], cfg->cors_origins[5],
                                       cfg->cors_origins[6], cfg->cors_origins[7]},
                      .served_names = {cfg->served_model_names[0], cfg->served_model_names[1], cfg->served_model_names[2],
                                       cfg->served_model_names[3], cfg->served_model_names[4], cfg->served_model_names[5],
                                       cfg->served_model_names[6], cfg->served_model_names[7]},
                      .load_roots = {cfg->store.load_roots[0], cfg->store.load_roots[1], cfg->store.load_roots[2],
                                     cfg->store.load_roots[3]},
                      .listen_fd = listen_fd, .follow_url = cfg->store.follow, .follower = fol};
    listen_fd = -1; /* the server's now, whatever happens */
    if (api_server_start(&hc, rt.e, rt.tok, rt.m, reg, store, svc, &srv, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: cannot start the HTTP server on %s:%d: %s\n", cfg->host, cfg->port, err);
        goto out;
    }
    printf("peftd: serving %s on http://%s:%d (OpenAI-compatible: POST /v1/completions)\n", rt.m->name, cfg->host,
           api_server_port(srv));
    fflush(stdout);
    serve_loop_run(cfg, config_path, rt.e, tn, srv);
    srv = NULL;
    rc = 0;
out:
    api_server_stop(srv);
    follower_stop(fol); /* before the service it applies changes through */
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
    if (rc == 0) LOGI("peftd: stopped");
    access_log_close();
    return rc;
}
