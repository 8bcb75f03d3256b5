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
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <curl/curl.h>

#define LG_MAX_STATUS 600
/* More tenants than this is a configuration mistake for a load test, not a workload. */
#define LG_MAX_TENANTS 1024
/* An SSE event larger than this is not a completions chunk: fail the request. */
#define LG_MAX_EVENT (1u << 20)
/* After a transport failure (refused, reset) a client waits this long before its next
 * request, so a dead server is not hammered in a tight loop of refused connects. */
#define LG_RETRY_DELAY_S 0.1
/* RSS sampling period: fine enough to catch a growth trend over a 60 s run. */
#define LG_RSS_PERIOD_S 0.5

static const char *const lg_prompts[] = {
    "Once upon a time",
    "The little dog",
    "Lily wanted to",
    "One day, a boy named Tim",
    "The sun was shining and",
    "In a small house lived",
    "Sara found a big red ball",
    "The cat and the bird",
    "Mom said, \"Let's go to the park",
    "There was a tall tree",
};
#define LG_N_PROMPTS (sizeof lg_prompts / sizeof lg_prompts[0])

/* ---- small utilities ---- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* splitmix64: a seeded, reproducible choice sequence (the seed is reported). */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

typedef struct {
    double *v;
    size_t n, cap;
} samples;

static int samples_add(samples *s, double x) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        double *p = realloc(s->v, cap * sizeof *p);
        if (!p) return -1;
        s->v = p;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted samples; NAN when there are none. */
static double pct(const samples *s, double p) {
    if (!s->n) return NAN;
    size_t k = (size_t)ceil(p / 100.0 * (double)s->n);
    if (k < 1) k = 1;
    if (k > s->n) k = s->n;
    return s->v[k - 1];
}

static double mean(const samples *s) {
    if (!s->n) return NAN;
    double t = 0;
    for (size_t i = 0; i < s->n; i++) t += s->v[i];
    return t / (double)s->n;
}

/* Splits a comma-separated list into a NULL-terminated array of strdup'd, trimmed items. */
static char **split_list(const char *s, int *n) {
    int cap = 8, k = 0;
    char **v = malloc((size_t)cap * sizeof *v);
    if (!v) return NULL;
    const char *p = s;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
        if (len) {
            if (k + 1 >= cap) {
                cap *= 2;
                char **nv = realloc(v, (size_t)cap * sizeof *v);
                if (!nv) return NULL;
                v = nv;
            }
            v[k++] = strndup(p, len);
        }
        if (!e) break;
        p = e + 1;
    }
    v[k] = NULL;
    *n = k;
    return v;
}

static char **read_keys_file(const char *path, int *n) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    int cap = 8, k = 0;
    char **v = malloc((size_t)cap * sizeof *v);
    char line[4096];
    while (v && fgets(line, sizeof line, f)) {
        size_t len = strcspn(line, "\r\n");
        line[len] = 0;
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (!*p || *p == '#') continue;
        if (k + 1 >= cap) {
            cap *= 2;
            char **nv = realloc(v, (size_t)cap * sizeof *v);
            if (!nv) break;
            v = nv;
        }
        v[k++] = strdup(p);
    }
    fclose(f);
    if (v) v[k] = NULL;
    *n = k;
    return v;
}

/* VmRSS of a process in KiB, or -1. */
static long read_rss_kib(long pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kib;
}

/* ---- configuration and state ---- */

typedef struct {
    const char *url;
    int clients;
    double duration_s, warmup_s, timeout_s, drain_s;
    int tenants;
    char **keys;
    int n_keys;
    char **adapters; /* NULL entry = the base model */
    int n_adapters;
    double zipf_s;
    int max_tokens;
    double temperature;
    bool stream;
    uint64_t seed;
    long pid;
    const char *json_path;
    const char *model; /* the `model` field when no adapter is chosen */
    bool quiet;
} lg_config;

typedef struct {
    uint64_t requests, ok, failed, tokens;
} lg_tenant;

typedef struct {
    int id;
    CURL *h;
    struct curl_slist *hdrs;
    char *body;
    char err[CURL_ERROR_SIZE];
    /* the current request */
    int tenant, adapter;
    double t_start, t_first, t_last;
    int chunks;
    long usage_tokens;
    bool done, stream_error, bad_event;
    char *ev; /* SSE bytes not yet split into events */
    size_t ev_len, ev_cap;
    samples itl; /* this request's gaps, moved to the totals when it succeeds */
    double t_retry;  /* > 0: waiting to start the next request (after a transport failure) */
} lg_client;

typedef struct {
    lg_config cfg;
    CURLM *multi;
    lg_client *cl;
    uint64_t rng;
    double *zipf_cdf;
    double t0, t_end;
    bool stopping;
    /* results */
    uint64_t started, ok, failed, transport_failures, incomplete, stream_errors, tokens;
    uint64_t timed_out; /* transport failures that were the per-request deadline */
    uint64_t status_hist[LG_MAX_STATUS];
    uint64_t *adapter_requests;
    lg_tenant *tenant;
    samples ttft, itl, latency;
    double t_last_done;
    /* RSS (KiB) of --pid */
    long rss_start, rss_warm, rss_end, rss_max;
    samples rss_series; /* t, kib pairs */
    double rss_next;
} lg_state;

static volatile sig_atomic_t lg_interrupted;
static void on_sigint(int sig) {
    (void)sig;
    lg_interrupted = 1;
}

/* ---- SSE handling ---- */

static void client_event(lg_client *c, const char *ev, size_t len) {
    /* An event is one or more "field: value" lines; completions send one "data:" line. */
    const char *p = ev, *end = ev + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t ll = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (ll && p[ll - 1] == '\r') ll--;
        if (ll >= 5 && strncmp(p, "data:", 5) == 0) {
            const char *d = p + 5;
            size_t dl = ll - 5;
            if (dl && *d == ' ') d++, dl--;
            if (dl == 6 && strncmp(d, "[DONE]", 6) == 0) {
                c->done = true;
            } else {
                cJSON *o = cJSON_ParseWithLength(d, dl);
                if (!o) {
                    c->bad_event = true;
                } else {
                    if (cJSON_GetObjectItemCaseSensitive(o, "error")) c->stream_error = true;
                    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(o, "choices");
                    const cJSON *c0 = cJSON_IsArray(ch) ? cJSON_GetArrayItem(ch, 0) : NULL;
                    const cJSON *t = c0 ? cJSON_GetObjectItemCaseSensitive(c0, "text") : NULL;
                    if (cJSON_IsString(t) && t->valuestring[0]) {
                        double now = now_s();
                        if (c->chunks == 0)
                            c->t_first = now;
                        else
                            samples_add(&c->itl, now - c->t_last);
                        c->t_last = now;
                        c->chunks++;
                    }
                    const cJSON *u = cJSON_GetObjectItemCaseSensitive(o, "usage");
                    const cJSON *ct = u ? cJSON_GetObjectItemCaseSensitive(u, "completion_tokens") : NULL;
                    if (cJSON_IsNumber(ct)) c->usage_tokens = (long)ct->valuedouble;
                    cJSON_Delete(o);
                }
            }
        }
        if (!nl) break;
        p = nl + 1;
    }
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud) {
    lg_client *c = ud;
    size_t n = size * nmemb;
    if (c->ev_len + n + 1 > c->ev_cap) {
        size_t cap = c->ev_cap ? c->ev_cap : 4096;
        while (cap < c->ev_len + n + 1) cap *= 2;
        if (cap > LG_MAX_EVENT * 2) {
            c->bad_event = true;
            return 0;
        }
        char *p = realloc(c->ev, cap);
        if (!p) return 0;
        c->ev = p;
        c->ev_cap = cap;
    }
    memcpy(c->ev + c->ev_len, data, n);
    c->ev_len += n;
    c->ev[c->ev_len] = 0;
    long status = 0;
    curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) return n; /* an error body: kept whole, not parsed as SSE */
    /* Split off complete events ("\n\n"-terminated). */
    size_t start = 0;
    for (;;) {
        char *sep = strstr(c->ev + start, "\n\n");
        if (!sep) break;
        size_t elen = (size_t)(sep - (c->ev + start));
        client_event(c, c->ev + start, elen);
        start += elen + 2;
    }
    if (start) {
        memmove(c->ev, c->ev + start, c->ev_len - start + 1);
        c->ev_len -= start;
    }
    return n;
}

/* ---- requests ---- */

static int pick_adapter(lg_state *s) {
    double u = rng_unit(&s->rng);
    int lo = 0, hi = s->cfg.n_adapters - 1;
    while (lo < hi) { /* first rank whose cumulative weight exceeds u */
        int mid = (lo + hi) / 2;
        if (s->zipf_cdf[mid] > u)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static int client_start(lg_state *s, lg_client *c) {
    const lg_config *cfg = &s->cfg;
    c->tenant = (int)(rng_next(&s->rng) % (uint64_t)cfg->tenants);
    c->adapter = pick_adapter(s);
    const char *prompt = lg_prompts[rng_next(&s->rng) % LG_N_PROMPTS];

    cJSON *o = cJSON_CreateObject();
    const char *ad = cfg->adapters[c->adapter];
    cJSON_AddStringToObject(o, "model", ad ? ad : cfg->model);
    cJSON_AddStringToObject(o, "prompt", prompt);
    cJSON_AddNumberToObject(o, "max_tokens", cfg->max_tokens);
    cJSON_AddNumberToObject(o, "temperature", cfg->temperature);
    cJSON_AddNumberToObject(o, "seed", (double)(rng_next(&s->rng) >> 33));
    char user[32];
    snprintf(user, sizeof user, "tenant-%d", c->tenant);
    cJSON_AddStringToObject(o, "user", user);
    if (cfg->stream) {
        cJSON_AddBoolToObject(o, "stream", true);
        cJSON *so = cJSON_AddObjectToObject(o, "stream_options");
        cJSON_AddBoolToObject(so, "include_usage", true);
    }
    free(c->body);
    c->body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!c->body) return -1;

    curl_slist_free_all(c->hdrs);
    c->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    c->hdrs = curl_slist_append(c->hdrs, "Expect:");
    if (cfg->n_keys) {
        char auth[4200];
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", cfg->keys[c->tenant % cfg->n_keys]);
        c->hdrs = curl_slist_append(c->hdrs, auth);
    }
    if (!c->hdrs) return -1;

    char url[4096];
    snprintf(url, sizeof url, "%s/v1/completions", cfg->url);
    curl_easy_setopt(c->h, CURLOPT_URL, url);
    curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, c->hdrs);
    c->ev_len = 0;
    c->chunks = 0;
    c->usage_tokens = -1;
    c->done = c->stream_error = c->bad_event = false;
    c->itl.n = 0;
    c->err[0] = 0;
    c->t_start = now_s();
    c->t_first = c->t_last = 0;
    s->started++;
    s->tenant[c->tenant].requests++;
    s->adapter_requests[c->adapter]++;
    return curl_multi_add_handle(s->multi, c->h) == CURLM_OK ? 0 : -1;
}

/* Tokens of a finished response: the usage the server reported, else the chunk count. */
static long response_tokens(lg_client *c) {
    if (c->usage_tokens >= 0) return c->usage_tokens;
    if (c->ev_len && !c->chunks) { /* non-streaming: parse the whole body */
        cJSON *o = cJSON_ParseWithLength(c->ev, c->ev_len);
        const cJSON *u = o ? cJSON_GetObjectItemCaseSensitive(o, "usage") : NULL;
        const cJSON *ct = u ? cJSON_GetObjectItemCaseSensitive(u, "completion_tokens") : NULL;
        long n = cJSON_IsNumber(ct) ? (long)ct->valuedouble : 0;
        cJSON_Delete(o);
        return n;
    }
    return c->chunks;
}

static void client_finish(lg_state *s, lg_client *c, CURLcode res) {
    double t = now_s();
    long status = 0;
    curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &status);
    if (res != CURLE_OK) status = 0; /* refused, reset, timed out: no (whole) answer */
    bool ok = status == 200;
    if (ok && s->cfg.stream) {
        if (c->stream_error) s->stream_errors++;
        if (!c->done) s->incomplete++;
        ok = c->done && !c->stream_error && !c->bad_event;
    }
    s->status_hist[status < LG_MAX_STATUS ? status : 0]++;
    if (res != CURLE_OK) {
        s->transport_failures++;
        if (res == CURLE_OPERATION_TIMEDOUT) s->timed_out++; /* past --timeout: a stall */
        if (!s->cfg.quiet && s->transport_failures <= 5)
            fprintf(stderr, "peftd-loadgen: transport failure: %s\n", c->err[0] ? c->err : curl_easy_strerror(res));
    } else if (!ok && !s->cfg.quiet && s->failed < 5) {
        fprintf(stderr, "peftd-loadgen: HTTP %ld%s: %.300s\n", status,
                status == 200 ? (c->done ? " (error event)" : " (stream ended without [DONE])") : "",
                c->ev_len ? c->ev : "");
    }
    lg_tenant *tn = &s->tenant[c->tenant];
    if (ok) {
        long toks = response_tokens(c);
        s->ok++;
        tn->ok++;
        s->tokens += (uint64_t)toks;
        tn->tokens += (uint64_t)toks;
        samples_add(&s->latency, t - c->t_start);
        if (c->chunks) samples_add(&s->ttft, c->t_first - c->t_start);
        for (size_t i = 0; i < c->itl.n; i++) samples_add(&s->itl, c->itl.v[i]);
    } else {
        s->failed++;
        tn->failed++;
    }
    s->t_last_done = t;
}

/* ---- RSS ---- */

static void rss_sample(lg_state *s, double t) {
    if (s->cfg.pid <= 0) return;
    long kib = read_rss_kib(s->cfg.pid);
    if (kib < 0) return;
    if (kib > s->rss_max) s->rss_max = kib;
    if (s->rss_warm < 0 && t - s->t0 >= s->cfg.warmup_s) s->rss_warm = kib;
    s->rss_end = kib;
    samples_add(&s->rss_series, t - s->t0);
    samples_add(&s->rss_series, (double)kib);
}

/* ---- the report ---- */

static void fmt_ms(char *b, size_t n, double sec) {
    if (isnan(sec))
        snprintf(b, n, "-");
    else
        snprintf(b, n, "%.1f", sec * 1e3);
}

static cJSON *json_pcts(const samples *x) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "count", (double)x->n);
    const double ps[] = {50, 90, 99};
    const char *names[] = {"p50_ms", "p90_ms", "p99_ms"};
    for (int i = 0; i < 3; i++) {
        double v = pct(x, ps[i]);
        if (isnan(v))
            cJSON_AddNullToObject(o, names[i]);
        else
            cJSON_AddNumberToObject(o, names[i], round(v * 1e6) / 1e3);
    }
    double m = mean(x);
    if (isnan(m))
        cJSON_AddNullToObject(o, "mean_ms");
    else
        cJSON_AddNumberToObject(o, "mean_ms", round(m * 1e6) / 1e3);
    double mx = x->n ? x->v[x->n - 1] : NAN;
    if (isnan(mx))
        cJSON_AddNullToObject(o, "max_ms");
    else
        cJSON_AddNumberToObject(o, "max_ms", round(mx * 1e6) / 1e3);
    return o;
}

static int report(lg_state *s) {
    qsort(s->ttft.v, s->ttft.n, sizeof(double), cmp_double);
    qsort(s->itl.v, s->itl.n, sizeof(double), cmp_double);
    qsort(s->latency.v, s->latency.n, sizeof(double), cmp_double);
    const lg_config *cfg = &s->cfg;
    double elapsed = (s->t_last_done > s->t0 ? s->t_last_done : now_s()) - s->t0;
    if (elapsed <= 0) elapsed = 1e-9;
    double rps = (double)s->ok / elapsed, tps = (double)s->tokens / elapsed;

    char a[32], b[32], c[32], d[32];
    printf("peftd-loadgen: %s, %d clients, %d tenant%s, %d adapter%s (zipf s=%.2f), %.0f s, max_tokens %d, %s\n",
           cfg->url, cfg->clients, cfg->tenants, cfg->tenants == 1 ? "" : "s", cfg->n_adapters,
           cfg->n_adapters == 1 ? "" : "s", cfg->zipf_s, cfg->duration_s, cfg->max_tokens,
           cfg->stream ? "streaming" : "non-streaming");
    printf("  requests      %" PRIu64 " ok, %" PRIu64 " failed (%" PRIu64 " transport of which %" PRIu64
           " past the %.0f s deadline, %" PRIu64 " incomplete streams, %" PRIu64 " error events), %" PRIu64
           " unfinished at the end\n",
           s->ok, s->failed, s->transport_failures, s->timed_out, cfg->timeout_s, s->incomplete, s->stream_errors,
           s->started - s->ok - s->failed);
    printf("  status        ");
    uint64_t s5xx = 0;
    for (int i = 0; i < LG_MAX_STATUS; i++) {
        if (!s->status_hist[i]) continue;
        if (i >= 500) s5xx += s->status_hist[i];
        printf("%s%d: %" PRIu64 "  ", i ? "" : "transport/", i, s->status_hist[i]);
    }
    printf("(5xx: %" PRIu64 ")\n", s5xx);
    printf("  throughput    %.2f req/s, %.1f generated tok/s (%" PRIu64 " tokens in %.1f s)\n", rps, tps,
           s->tokens, elapsed);
    printf("  %-12s %9s %9s %9s %9s %9s\n", "latency (ms)", "p50", "p90", "p99", "mean", "max");
    const struct {
        const char *name;
        const samples *x;
    } rows[] = {{"TTFT", &s->ttft}, {"ITL", &s->itl}, {"end-to-end", &s->latency}};
    for (int i = 0; i < 3; i++) {
        char e[32];
        fmt_ms(a, sizeof a, pct(rows[i].x, 50));
        fmt_ms(b, sizeof b, pct(rows[i].x, 90));
        fmt_ms(c, sizeof c, pct(rows[i].x, 99));
        fmt_ms(d, sizeof d, mean(rows[i].x));
        fmt_ms(e, sizeof e, rows[i].x->n ? rows[i].x->v[rows[i].x->n - 1] : NAN);
        printf("  %-12s %9s %9s %9s %9s %9s\n", rows[i].name, a, b, c, d, e);
    }
    printf("  %-12s %9s %9s %9s %12s\n", "tenant", "requests", "ok", "failed", "tokens");
    for (int i = 0; i < cfg->tenants; i++)
        printf("  %-12d %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %12" PRIu64 "\n", i, s->tenant[i].requests,
               s->tenant[i].ok, s->tenant[i].failed, s->tenant[i].tokens);
    if (cfg->pid > 0)
        printf("  daemon RSS    start %.1f MiB, after %.0f s warm-up %.1f MiB, end %.1f MiB, max %.1f MiB "
               "(end/warm %.2f)\n",
               s->rss_start / 1024.0, cfg->warmup_s, s->rss_warm / 1024.0, s->rss_end / 1024.0,
               s->rss_max / 1024.0, s->rss_warm > 0 ? (double)s->rss_end / (double)s->rss_warm : NAN);
    fflush(stdout);

    if (!cfg->json_path) return 0;
    cJSON *o = cJSON_CreateObject();
    cJSON *setup = cJSON_AddObjectToObject(o, "setup");
    cJSON_AddStringToObject(setup, "url", cfg->url);
    cJSON_AddNumberToObject(setup, "clients", cfg->clients);
    cJSON_AddNumberToObject(setup, "duration_s", cfg->duration_s);
    cJSON_AddNumberToObject(setup, "tenants", cfg->tenants);
    cJSON_AddBoolToObject(setup, "auth", cfg->n_keys > 0);
    cJSON_AddNumberToObject(setup, "adapters", cfg->n_adapters);
    cJSON_AddNumberToObject(setup, "zipf_s", cfg->zipf_s);
    cJSON_AddNumberToObject(setup, "max_tokens", cfg->max_tokens);
    cJSON_AddNumberToObject(setup, "temperature", cfg->temperature);
    cJSON_AddBoolToObject(setup, "stream", cfg->stream);
    cJSON_AddNumberToObject(setup, "seed", (double)cfg->seed);
    cJSON *rq = cJSON_AddObjectToObject(o, "requests");
    cJSON_AddNumberToObject(rq, "started", (double)s->started);
    cJSON_AddNumberToObject(rq, "ok", (double)s->ok);
    cJSON_AddNumberToObject(rq, "failed", (double)s->failed);
    cJSON_AddNumberToObject(rq, "transport_failures", (double)s->transport_failures);
    cJSON_AddNumberToObject(rq, "timed_out", (double)s->timed_out);
    cJSON_AddNumberToObject(rq, "incomplete_streams", (double)s->incomplete);
    cJSON_AddNumberToObject(rq, "stream_error_events", (double)s->stream_errors);
    cJSON_AddNumberToObject(rq, "unfinished", (double)(s->started - s->ok - s->failed));
    cJSON_AddNumberToObject(rq, "status_5xx", (double)s5xx);
    cJSON *hist = cJSON_AddObjectToObject(o, "status");
    for (int i = 0; i < LG_MAX_STATUS; i++) {
        if (!s->status_hist[i]) continue;
        char k[16];
        snprintf(k, sizeof k, "%d", i);
        cJSON_AddNumberToObject(hist, k, (double)s->status_hist[i]);
    }
    cJSON *tp = cJSON_AddObjectToObject(o, "throughput");
    cJSON_AddNumberToObject(tp, "elapsed_s", round(elapsed * 1e3) / 1e3);
    cJSON_AddNumberToObject(tp, "requests_per_s", round(rps * 1e3) / 1e3);
    cJSON_AddNumberToObject(tp, "tokens_per_s", round(tps * 10) / 10);
    cJSON_AddNumberToObject(tp, "tokens", (double)s->tokens);
    cJSON_AddItemToObject(o, "ttft", json_pcts(&s->ttft));
    cJSON_AddItemToObject(o, "itl", json_pcts(&s->itl));
    cJSON_AddItemToObject(o, "latency", json_pcts(&s->latency));
    cJSON *tn = cJSON_AddArrayToObject(o, "tenants");
    for (int i = 0; i < cfg->tenants; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "tenant", i);
        cJSON_AddNumberToObject(t, "requests", (double)s->tenant[i].requests);
        cJSON_AddNumberToObject(t, "ok", (double)s->tenant[i].ok);
        cJSON_AddNumberToObject(t, "failed", (double)s->tenant[i].failed);
        cJSON_AddNumberToObject(t, "tokens", (double)s->tenant[i].tokens);
        cJSON_AddItemToArray(tn, t);
    }
    cJSON *ar = cJSON_AddArrayToObject(o, "adapter_requests"); /* by zipf rank */
    for (int i = 0; i < cfg->n_adapters; i++) cJSON_AddItemToArray(ar, cJSON_CreateNumber((double)s->adapter_requests[i]));
    if (cfg->pid > 0) {
        cJSON *r = cJSON_AddObjectToObject(o, "rss_kib");
        cJSON_AddNumberToObject(r, "pid", (double)cfg->pid);
        cJSON_AddNumberToObject(r, "start", (double)s->rss_start);
        cJSON_AddNumberToObject(r, "after_warmup", (double)s->rss_warm);
        cJSON_AddNumberToObject(r, "warmup_s", cfg->warmup_s);
        cJSON_AddNumberToObject(r, "end", (double)s->rss_end);
        cJSON_AddNumberToObject(r, "max", (double)s->rss_max);
        cJSON *ser = cJSON_AddArrayToObject(r, "series"); /* [seconds, KiB] pairs */
        for (size_t i = 0; i + 1 < s->rss_series.n; i += 2) {
            cJSON *pair = cJSON_CreateArray();
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(round(s->rss_series.v[i] * 100) / 100));
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(s->rss_series.v[i + 1]));
            cJSON_AddItemToArray(ser, pair);
        }
    }
    char *txt = cJSON_Print(o);
    cJSON_Delete(o);
    FILE *f = txt ? fopen(cfg->json_path, "w") : NULL;
    if (!f || fputs(txt, f) < 0 || fputc('\n', f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "peftd-loadgen: cannot write %s: %s\n", cfg->json_path, strerror(errno));
        cJSON_free(txt);
        return -1;
    }
    cJSON_free(txt);
    return 0;
}

/* ---- main ---- */

static void usage(FILE *f) {
    fprintf(f,
            "usage: peftd-loadgen [options]\n"
            "  --url URL               server base URL (default http://127.0.0.1:8080)\n"
            "  --clients N             concurrent streaming clients (default 16)\n"
            "  --duration S            seconds to start new requests (default 10); in-flight ones finish\n"
            "  --tenants K             tenants (default: the number of keys, else 1)\n"
            "  --api-key K1,K2,...     one key per tenant (Authorization: Bearer); none = auth off\n"
            "  --keys-file FILE        keys, one per line\n"
            "  --adapters A,B,...      adapter names in popularity order ('-' = the base model)\n"
            "  --adapter-prefix P --adapter-count M\n"
            "                          adapters P0 .. P(M-1)\n"
            "  --zipf-s S              zipf exponent of adapter popularity (default 1.0; 0 = uniform)\n"
            "  --model NAME            the `model` when no adapter is named (default: the base, by /v1/models)\n"
            "  --max-tokens N          per request (default 64)\n"
            "  --temperature T         (default 1.0)\n"
            "  --stream / --no-stream  SSE streaming (default on)\n"
            "  --seed S                choice sequence seed (default 1)\n"
            "  --timeout S             per request (default 300)\n"
            "  --drain S               after --duration, wait this long for in-flight requests (default 120)\n"
            "  --pid P                 sample VmRSS of process P (start, after warm-up, end, max)\n"
            "  --warmup S              when the after-warm-up RSS sample is taken (default 10)\n"
            "  --json FILE             write the report as JSON\n"
            "  --quiet                 no per-failure messages\n"
            "exit status: 0 every request ok, 1 some failed, 2 usage, 3 setup error\n");
}

static int parse_num(const char *opt, const char *v, double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || !end || *end || d < lo || d > hi) {
        fprintf(stderr, "peftd-loadgen: %s expects a number in [%g, %g], got '%s'\n", opt, lo, hi, v);
        return -1;
    }
    *out = d;
    return 0;
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

int main(int argc, char **argv) {
    lg_state st = {0};
    lg_config *cfg = &st.cfg;
    *cfg = (lg_config){.url = "http://127.0.0.1:8080", .clients = 16, .duration_s = 10, .warmup_s = 10,
                       .timeout_s = 300, .drain_s = 120, .tenants = 0, .zipf_s = 1.0, .max_tokens = 64,
                       .temperature = 1.0, .stream = true, .seed = 1};
    const char *adapters = NULL, *prefix = NULL, *keys = NULL, *keys_file = NULL;
    int adapter_count = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        double d;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--stream")) { cfg->stream = true; continue; }
        if (!strcmp(a, "--no-stream")) { cfg->stream = false; continue; }
        if (!strcmp(a, "--quiet")) { cfg->quiet = true; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "peftd-loadgen: %s needs a value (see --help)\n", a);
            return 2;
        }
        const char *v = argv[++i];
#define NUM(lo, hi) \
    if (parse_num(a, v, lo, hi, &d)) return 2
        if (!strcmp(a, "--url")) cfg->url = v;
        else if (!strcmp(a, "--clients")) { NUM(1, 100000); cfg->clients = (int)d; }
        else if (!strcmp(a, "--duration")) { NUM(0, 1e7); cfg->duration_s = d; }
        else if (!strcmp(a, "--tenants")) { NUM(1, LG_MAX_TENANTS); cfg->tenants = (int)d; }
        else if (!strcmp(a, "--api-key")) keys = v;
        else if (!strcmp(a, "--keys-file")) keys_file = v;
        else if (!strcmp(a, "--adapters")) adapters = v;
        else if (!strcmp(a, "--adapter-prefix")) prefix = v;
        else if (!strcmp(a, "--adapter-count")) { NUM(1, 1e6); adapter_count = (int)d; }
        else if (!strcmp(a, "--zipf-s")) { NUM(0, 100); cfg->zipf_s = d; }
        else if (!strcmp(a, "--model")) cfg->model = v;
        else if (!strcmp(a, "--max-tokens")) { NUM(1, 1e6); cfg->max_tokens = (int)d; }
        else if (!strcmp(a, "--temperature")) { NUM(0, 100); cfg->temperature = d; }
        else if (!strcmp(a, "--seed")) { NUM(0, 9e15); cfg->seed = (uint64_t)d; }
        else if (!strcmp(a, "--timeout")) { NUM(0.001, 1e7); cfg->timeout_s = d; }
        else if (!strcmp(a, "--drain")) { NUM(0, 1e7); cfg->drain_s = d; }
        else if (!strcmp(a, "--pid")) { NUM(1, 1e9); cfg->pid = (long)d; }
        else if (!strcmp(a, "--warmup")) { NUM(0, 1e7); cfg->warmup_s = d; }
        else if (!strcmp(a, "--json")) cfg->json_path = v;
        else {
            fprintf(stderr, "peftd-loadgen: unknown option %s (see --help)\n", a);
            return 2;
        }
#undef NUM
    }
    if ((adapters && prefix) || (prefix && adapter_count < 1) || (!prefix && adapter_count)) {
        fprintf(stderr, "peftd-loadgen: use --adapters, or --adapter-prefix with --adapter-count\n");
        return 2;
    }
    if (keys && keys_file) {
        fprintf(stderr, "peftd-loadgen: use --api-key or --keys-file, not both\n");
        return 2;
    }
    if (keys) cfg->keys = split_list(keys, &cfg->n_keys);
    if (keys_file && !(cfg->keys = read_keys_file(keys_file, &cfg->n_keys))) {
        fprintf(stderr, "peftd-loadgen: cannot read %s: %s\n", keys_file, strerror(errno));
        return 2;
    }
    if ((keys || keys_file) && cfg->n_keys == 0) {
        fprintf(stderr, "peftd-loadgen: no API keys given\n");
        return 2;
    }
    if (!cfg->tenants) cfg->tenants = cfg->n_keys ? cfg->n_keys : 1;
    if (cfg->n_keys && cfg->n_keys != cfg->tenants) {
        fprintf(stderr, "peftd-loadgen: %d keys for %d tenants: give one key per tenant\n", cfg->n_keys,
                cfg->tenants);
        return 2;
    }
    if (adapters) {
        cfg->adapters = split_list(adapters, &cfg->n_adapters);
        for (int i = 0; cfg->adapters && i < cfg->n_adapters; i++)
            if (!strcmp(cfg->adapters[i], "-")) {
                free(cfg->adapters[i]);
                cfg->adapters[i] = NULL;
            }
    } else if (prefix) {
        cfg->n_adapters = adapter_count;
        cfg->adapters = calloc((size_t)adapter_count + 1, sizeof *cfg->adapters);
        for (int i = 0; cfg->adapters && i < adapter_count; i++) {
            char name[512];
            snprintf(name, sizeof name, "%s%d", prefix, i);
            cfg->adapters[i] = strdup(name);
        }
    } else {
        cfg->n_adapters = 1;
        cfg->adapters = calloc(2, sizeof *cfg->adapters); /* the base model only */
    }
    if (!cfg->adapters || cfg->n_adapters < 1) {
        fprintf(stderr, "peftd-loadgen: no adapters\n");
        return 2;
    }
    size_t ul = strlen(cfg->url);
    char *url = strdup(cfg->url);
    while (ul && url[ul - 1] == '/') url[--ul] = 0;
    cfg->url = url;

    /* One descriptor per client plus curl's own: raise the soft limit to the hard one. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_sigint);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 3;

    bool need_base = false;
    for (int i = 0; i < cfg->n_adapters; i++) need_base |= cfg->adapters[i] == NULL;
    char *base = NULL;
    if (need_base && !cfg->model) {
        if (!(base = fetch_base_model(cfg))) {
            fprintf(stderr, "peftd-loadgen: cannot read the base model's id from %s/v1/models (give --model)\n",
                    cfg->url);
            return 3;
        }
        cfg->model = base;
    }

    st.zipf_cdf = malloc((size_t)cfg->n_adapters * sizeof *st.zipf_cdf);
    st.adapter_requests = calloc((size_t)cfg->n_adapters, sizeof *st.adapter_requests);
    st.tenant = calloc((size_t)cfg->tenants, sizeof *st.tenant);
    st.cl = calloc((size_t)cfg->clients, sizeof *st.cl);
    st.multi = curl_multi_init();
    if (!st.zipf_cdf || !st.adapter_requests || !st.tenant || !st.cl || !st.multi) {
        fprintf(stderr, "peftd-loadgen: out of memory\n");
        return 3;
    }
    double z = 0;
    for (int i = 0; i < cfg->n_adapters; i++) z += 1.0 / pow(i + 1, cfg->zipf_s);
    double acc = 0;
    for (int i = 0; i < cfg->n_adapters; i++) st.zipf_cdf[i] = (acc += 1.0 / pow(i + 1, cfg->zipf_s) / z);
    st.zipf_cdf[cfg->n_adapters - 1] = 1.0 + 1e-9; /* rounding never picks past the end */
    st.rng = cfg->seed;
    st.rss_start = st.rss_warm = st.rss_end = st.rss_max = -1;
    /* One connection per client: requests of a client reuse it (keep-alive). */
    curl_multi_setopt(st.multi, CURLMOPT_MAXCONNECTS, (long)cfg->clients + 16);

    st.t0 = now_s();
    st.t_end = st.t0 + cfg->duration_s;
    if (cfg->pid > 0) {
        st.rss_start = read_rss_kib(cfg->pid);
        if (st.rss_start < 0) {
            fprintf(stderr, "peftd-loadgen: cannot read /proc/%ld/status\n", cfg->pid);
            return 3;
        }
        st.rss_max = st.rss_end = st.rss_start;
        if (cfg->warmup_s <= 0) st.rss_warm = st.rss_start;
        st.rss_next = st.t0 + LG_RSS_PERIOD_S;
    }
    for (int i = 0; i < cfg->clients; i++) {
        lg_client *c = &st.cl[i];
        c->id = i;
        if (!(c->h = curl_easy_init())) return 3;
        curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, on_write);
        curl_easy_setopt(c->h, CURLOPT_WRITEDATA, c);
        curl_easy_setopt(c->h, CURLOPT_PRIVATE, c);
        curl_easy_setopt(c->h, CURLOPT_ERRORBUFFER, c->err);
        curl_easy_setopt(c->h, CURLOPT_TIMEOUT_MS, (long)(cfg->timeout_s * 1000));
        curl_easy_setopt(c->h, CURLOPT_CONNECTTIMEOUT_MS, 30000L);
        curl_easy_setopt(c->h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c->h, CURLOPT_TCP_NODELAY, 1L);
        if (client_start(&st, c)) {
            fprintf(stderr, "peftd-loadgen: cannot start client %d\n", i);
            return 3;
        }
    }

    int running = cfg->clients;
    double drain_deadline = st.t_end + cfg->drain_s;
    while (running > 0) {
        int still = 0;
        curl_multi_perform(st.multi, &still);
        CURLMsg *msg;
        int left;
        double t = now_s();
        if (lg_interrupted && !st.stopping) {
            fprintf(stderr, "peftd-loadgen: interrupted: waiting for in-flight requests (again to abort)\n");
            st.stopping = true;
            lg_interrupted = 0;
            drain_deadline = t + cfg->drain_s;
        }
        if (t >= st.t_end) st.stopping = true;
        while ((msg = curl_multi_info_read(st.multi, &left))) {
            if (msg->msg != CURLMSG_DONE) continue;
            lg_client *c = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
            CURLcode res = msg->data.result;
            curl_multi_remove_handle(st.multi, c->h);
            client_finish(&st, c, res);
            if (st.stopping)
                running--;
            else if (res != CURLE_OK)
                c->t_retry = t + LG_RETRY_DELAY_S;
            else if (client_start(&st, c))
                running--;
        }
        for (int i = 0; i < cfg->clients; i++) { /* clients backing off after a failure */
            lg_client *c = &st.cl[i];
            if (c->t_retry <= 0 || (t < c->t_retry && !st.stopping)) continue;
            c->t_retry = 0;
            if (st.stopping || client_start(&st, c)) running--;
        }
        if (t >= st.rss_next && cfg->pid > 0) {
            rss_sample(&st, t);
            st.rss_next = t + LG_RSS_PERIOD_S;
        }
        if (st.stopping && (t >= drain_deadline || lg_interrupted)) {
            fprintf(stderr, "peftd-loadgen: %d request%s still in flight after the drain time: abandoned\n",
                    running, running == 1 ? "" : "s");
            break;
        }
        if (running > 0) curl_multi_poll(st.multi, NULL, 0, 50, NULL);
    }
    if (cfg->pid > 0) {
        rss_sample(&st, now_s());
        if (st.rss_warm < 0) st.rss_warm = st.rss_end; /* the run was shorter than the warm-up */
    }
    int rc = report(&st) ? 3 : st.failed ? 1 : 0;

    for (int i = 0; i < cfg->clients; i++) {
        lg_client *c = &st.cl[i];
        curl_multi_remove_handle(st.multi, c->h);
        curl_easy_cleanup(c->h);
        curl_slist_free_all(c->hdrs);
        free(c->body);
        free(c->ev);
        free(c->itl.v);
    }
    curl_multi_cleanup(st.multi);
    curl_global_cleanup();
    for (int i = 0; i < cfg->n_adapters; i++) free(cfg->adapters[i]);
    free(cfg->adapters);
    for (int i = 0; i < cfg->n_keys; i++) free(cfg->keys[i]);
    free(cfg->keys);
    free(st.zipf_cdf);
    free(st.adapter_requests);
    free(st.tenant);
    free(st.cl);
    free(st.ttft.v);
    free(st.itl.v);
    free(st.latency.v);
    free(st.rss_series.v);
    free(base);
    free(url);
    return rc;
}
