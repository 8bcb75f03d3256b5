/* clients/loadgen/loadgen.c — peftd-loadgen: drives a peftd (or any OpenAI-compatible
 * /v1/completions server) with many concurrent streaming clients from one process, over
 * libcurl's multi interface, and reports throughput, TTFT / inter-token / end-to-end
 * latency percentiles, a status histogram, per-tenant tokens and the daemon's RSS.
 *
 *   peftd-loadgen --url URL [--clients N] [--duration S] [--tenants K]
 *                 [--api-key K1,K2,... | --keys-file FILE]
 *                 [--adapters A,B,... | --adapter-prefix P --adapter-count M] [--zipf-s S]
 *                 [--max-tokens N] [--temperature T] [--no-stream] [--seed S]
 *                 [--pid PID] [--warmup S] [--json FILE] [--timeout S] [--drain S]
 *
 * Each client loops: pick a tenant (uniformly) and an adapter (zipf over the list: rank i
 * has weight 1/(i+1)^s), POST /v1/completions with stream:true and
 * stream_options.include_usage, and time the answer. A request counts as ok only when it
 * answered 200 and (streaming) ended with data: [DONE] and no error event; everything
 * else is a failure, by HTTP status (0 = transport failure: refused, reset, timeout).
 *
 * Tenants: with keys, tenant i sends "Authorization: Bearer <key i>"; without, tenant i is
 * told apart by the OpenAI `user` field ("tenant-<i>") only.
 *
 * Exit status: 0 all requests ok, 1 some failed, 2 usage error, 3 setup error.
 *
 * This file owns main, the setup, the libcurl-multi run loop, RSS sampling of --pid and the
 * cleanup; loadgen_internal.h says which file owns the rest.
 */
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <cJSON.h>

#include "clients/loadgen/loadgen_internal.h"

static volatile sig_atomic_t lg_interrupted;
static void on_sigint(int sig) {
    (void)sig;
    lg_interrupted = 1;
}

/* The base model's id from GET /v1/models (its first entry), for requests without an
 * adapter. */
static char *fetch_base_model(const lg_config *cfg) {
    CURL *h = curl_easy_init();
    if (!h) return NULL;
    char url[4096];
    snprintf(url, sizeof url, "%s/v1/models", cfg->url);
    struct {
        char *p;
        size_t n;
    } buf = {0};
    FILE *mem = open_memstream(&buf.p, &buf.n);
    struct curl_slist *hd = NULL;
    if (cfg->n_keys) {
        char auth[4200];
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", cfg->keys[0]);
        hd = curl_slist_append(NULL, auth);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, mem);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
    CURLcode res = curl_easy_perform(h);
    fclose(mem);
    curl_easy_cleanup(h);
    curl_slist_free_all(hd);
    char *id = NULL;
    if (res == CURLE_OK && buf.p) {
        cJSON *o = cJSON_Parse(buf.p);
        const cJSON *d = o ? cJSON_GetObjectItemCaseSensitive(o, "data") : NULL;
        const cJSON *m0 = cJSON_IsArray(d) ? cJSON_GetArrayItem(d, 0) : NULL;
        const cJSON *mid = m0 ? cJSON_GetObjectItemCaseSensitive(m0, "id") : NULL;
        if (cJSON_IsString(mid)) id = strdup(mid->valuestring);
        cJSON_Delete(o);
    } else {
        fprintf(stderr, "peftd-loadgen: GET %s failed: %s\n", url, curl_easy_strerror(res));
    }
    free(buf.p);
    return id;
}

static void rss_sample(lg_state *s, double t) {
    if (s->cfg.pid <= 0) return;
    long kib = lg_read_rss_kib(s->cfg.pid);
    if (kib < 0) return;
    if (kib > s->rss_max) s->rss_max = kib;
    if (s->rss_warm < 0 && t - s->t0 >= s->cfg.warmup_s) s->rss_warm = kib;
    s->rss_end = kib;
    lg_samples_add(&s->rss_series, t - s->t0);
    lg_samples_add(&s->rss_series, (double)kib);
}

/* Process-wide setup: descriptors, signals, libcurl, the base model's id when a request
 * may name no adapter. 0, or -1 (message printed where there is one). */
static int setup_process(lg_state *st) {
    lg_config *cfg = &st->cfg;
    /* One descriptor per client plus curl's own: raise the soft limit to the hard one. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_sigint);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return -1;

    bool need_base = false;
    for (int i = 0; i < cfg->n_adapters; i++) need_base |= cfg->adapters[i] == NULL;
    if (need_base && !cfg->model) {
        if (!(st->base_model = fetch_base_model(cfg))) {
            fprintf(stderr, "peftd-loadgen: cannot read the base model's id from %s/v1/models (give --model)\n",
                    cfg->url);
            return -1;
        }
        cfg->model = st->base_model;
    }
    return 0;
}

/* The run's tables, the zipf CDF, the first RSS sample and the clients' first requests:
 * 0, or -1 (message printed where there is one). */
static int setup_run(lg_state *st) {
    const lg_config *cfg = &st->cfg;
    st->zipf_cdf = malloc((size_t)cfg->n_adapters * sizeof *st->zipf_cdf);
    st->adapter_requests = calloc((size_t)cfg->n_adapters, sizeof *st->adapter_requests);
    st->tenant = calloc((size_t)cfg->tenants, sizeof *st->tenant);
    st->cl = calloc((size_t)cfg->clients, sizeof *st->cl);
    st->multi = curl_multi_init();
    if (!st->zipf_cdf || !st->adapter_requests || !st->tenant || !st->cl || !st->multi) {
        fprintf(stderr, "peftd-loadgen: out of memory\n");
        return -1;
    }
    double z = 0;
    for (int i = 0; i < cfg->n_adapters; i++) z += 1.0 / pow(i + 1, cfg->zipf_s);
    double acc = 0;
    for (int i = 0; i < cfg->n_adapters; i++) st->zipf_cdf[i] = (acc += 1.0 / pow(i + 1, cfg->zipf_s) / z);
    st->zipf_cdf[cfg->n_adapters - 1] = 1.0 + 1e-9; /* rounding never picks past the end */
    st->rng = cfg->seed;
    st->rss_start = st->rss_warm = st->rss_end = st->rss_max = -1;
    /* One connection per client: requests of a client reuse it (keep-alive). */
    curl_multi_setopt(st->multi, CURLMOPT_MAXCONNECTS, (long)cfg->clients + 16);

    st->t0 = lg_now_s();
    st->t_end = st->t0 + cfg->duration_s;
    if (cfg->pid > 0) {
        st->rss_start = lg_read_rss_kib(cfg->pid);
        if (st->rss_start < 0) {
            fprintf(stderr, "peftd-loadgen: cannot read /proc/%ld/status\n", cfg->pid);
            return -1;
        }
        st->rss_max = st->rss_end = st->rss_start;
        if (cfg->warmup_s <= 0) st->rss_warm = st->rss_start;
        st->rss_next = st->t0 + LG_RSS_PERIOD_S;
    }
    for (int i = 0; i < cfg->clients; i++) {
        lg_client *c = &st->cl[i];
        if (lg_client_init(cfg, c, i)) return -1;
        if (lg_client_start(st, c)) {
            fprintf(stderr, "peftd-loadgen: cannot start client %d\n", i);
            return -1;
        }
    }
    return 0;
}

/* Runs until --duration is over and the in-flight requests finished (or the drain time
 * passed, or a second ^C). */
static void run(lg_state *st) {
    const lg_config *cfg = &st->cfg;
    int running = cfg->clients;
    double drain_deadline = st->t_end + cfg->drain_s;
    while (running > 0) {
        int still = 0;
        curl_multi_perform(st->multi, &still);
        CURLMsg *msg;
        int left;
        double t = lg_now_s();
        if (lg_interrupted && !st->stopping) {
            fprintf(stderr, "peftd-loadgen: interrupted: waiting for in-flight requests (again to abort)\n");
            st->stopping = true;
            lg_interrupted = 0;
            drain_deadline = t + cfg->drain_s;
        }
        if (t >= st->t_end) st->stopping = true;
        while ((msg = curl_multi_info_read(st->multi, &left))) {
            if (msg->msg != CURLMSG_DONE) continue;
            lg_client *c = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
            CURLcode res = msg->data.result;
            curl_multi_remove_handle(st->multi, c->h);
            lg_client_finish(st, c, res);
            if (st->stopping)
                running--;
            else if (res != CURLE_OK)
                c->t_retry = t + LG_RETRY_DELAY_S;
            else if (lg_client_start(st, c))
                running--;
        }
        for (int i = 0; i < cfg->clients; i++) { /* clients backing off after a failure */
            lg_client *c = &st->cl[i];
            if (c->t_retry <= 0 || (t < c->t_retry && !st->stopping)) continue;
            c->t_retry = 0;
            if (st->stopping || lg_client_start(st, c)) running--;
        }
        if (t >= st->rss_next && cfg->pid > 0) {
            rss_sample(st, t);
            st->rss_next = t + LG_RSS_PERIOD_S;
        }
        if (st->stopping && (t >= drain_deadline || lg_interrupted)) {
            fprintf(stderr, "peftd-loadgen: %d request%s still in flight after the drain time: abandoned\n",
                    running, running == 1 ? "" : "s");
            break;
        }
        /* 50 ms: wakes for the deadline, the retries and the RSS period without spinning. */
        if (running > 0) curl_multi_poll(st->multi, NULL, 0, 50, NULL);
    }
}

static void cleanup(lg_state *st) {
    lg_config *cfg = &st->cfg;
    for (int i = 0; i < cfg->clients; i++) {
        lg_client *c = &st->cl[i];
        curl_multi_remove_handle(st->multi, c->h);
        curl_easy_cleanup(c->h);
        curl_slist_free_all(c->hdrs);
        free(c->body);
        free(c->ev);
        free(c->itl.v);
    }
    curl_multi_cleanup(st->multi);
    curl_global_cleanup();
    for (int i = 0; i < cfg->n_adapters; i++) free(cfg->adapters[i]);
    free(cfg->adapters);
    for (int i = 0; i < cfg->n_keys; i++) free(cfg->keys[i]);
    free(cfg->keys);
    free(st->zipf_cdf);
    free(st->adapter_requests);
    free(st->tenant);
    free(st->cl);
    free(st->ttft.v);
    free(st->itl.v);
    free(st->latency.v);
    free(st->rss_series.v);
    free(st->base_model);
    free(cfg->url_buf);
}

int main(int argc, char **argv) {
    lg_state st = {0};
    int rc = lg_args_parse(&st.cfg, argc, argv);
    if (rc) return rc == LG_ARGS_HELP ? 0 : 2;
    if (setup_process(&st) || setup_run(&st)) return 3;
    run(&st);
    if (st.cfg.pid > 0) {
        rss_sample(&st, lg_now_s());
        if (st.rss_warm < 0) st.rss_warm = st.rss_end; /* the run was shorter than the warm-up */
    }
    rc = lg_report(&st) ? 3 : st.failed ? 1 : 0;
    cleanup(&st);
    return rc;
}
