/* clients/loadgen/loadgen_report.c — peftd-loadgen's report: the text summary on stdout
 * (requests, status histogram, throughput, TTFT / ITL / end-to-end percentiles, tenants,
 * the daemon's RSS) and the same numbers as JSON for --json (read by
 * tests/integration/test_load.py: keep its keys stable). Calls only loadgen_util.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "clients/loadgen/loadgen_internal.h"

/* What both reports show, computed once. */
typedef struct {
    double elapsed, rps, tps;
    uint64_t s5xx;
} lg_totals;

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
        double v = lg_pct(x, ps[i]);
        if (isnan(v))
            cJSON_AddNullToObject(o, names[i]);
        else
            cJSON_AddNumberToObject(o, names[i], round(v * 1e6) / 1e3);
    }
    double m = lg_mean(x);
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

static void print_text(const lg_state *s, const lg_totals *tt) {
    const lg_config *cfg = &s->cfg;
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
    for (int i = 0; i < LG_MAX_STATUS; i++) {
        if (!s->status_hist[i]) continue;
        printf("%s%d: %" PRIu64 "  ", i ? "" : "transport/", i, s->status_hist[i]);
    }
    printf("(5xx: %" PRIu64 ")\n", tt->s5xx);
    printf("  throughput    %.2f req/s, %.1f generated tok/s (%" PRIu64 " tokens in %.1f s)\n", tt->rps, tt->tps,
           s->tokens, tt->elapsed);
    printf("  %-12s %9s %9s %9s %9s %9s\n", "latency (ms)", "p50", "p90", "p99", "mean", "max");
    const struct {
        const char *name;
        const samples *x;
    } rows[] = {{"TTFT", &s->ttft}, {"ITL", &s->itl}, {"end-to-end", &s->latency}};
    for (int i = 0; i < 3; i++) {
        char e[32];
        fmt_ms(a, sizeof a, lg_pct(rows[i].x, 50));
        fmt_ms(b, sizeof b, lg_pct(rows[i].x, 90));
        fmt_ms(c, sizeof c, lg_pct(rows[i].x, 99));
        fmt_ms(d, sizeof d, lg_mean(rows[i].x));
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
}

/* "setup" and "requests". */
static void json_setup_requests(cJSON *o, const lg_state *s, const lg_totals *tt) {
    const lg_config *cfg = &s->cfg;
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
    cJSON_AddNumberToObject(rq, "status_5xx", (double)tt->s5xx);
}

/* "rss_kib" (only with --pid). */
static void json_rss(cJSON *o, const lg_state *s) {
    const lg_config *cfg = &s->cfg;
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

/* The whole --json document, keys in the order the text report shows them. */
static cJSON *json_build(const lg_state *s, const lg_totals *tt) {
    const lg_config *cfg = &s->cfg;
    cJSON *o = cJSON_CreateObject();
    json_setup_requests(o, s, tt);
    cJSON *hist = cJSON_AddObjectToObject(o, "status");
    for (int i = 0; i < LG_MAX_STATUS; i++) {
        if (!s->status_hist[i]) continue;
        char k[16];
        snprintf(k, sizeof k, "%d", i);
        cJSON_AddNumberToObject(hist, k, (double)s->status_hist[i]);
    }
    cJSON *tp = cJSON_AddObjectToObject(o, "throughput");
    cJSON_AddNumberToObject(tp, "elapsed_s", round(tt->elapsed * 1e3) / 1e3);
    cJSON_AddNumberToObject(tp, "requests_per_s", round(tt->rps * 1e3) / 1e3);
    cJSON_AddNumberToObject(tp, "tokens_per_s", round(tt->tps * 10) / 10);
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
    if (cfg->pid > 0) json_rss(o, s);
    return o;
}

int lg_report(lg_state *s) {
    lg_samples_sort(&s->ttft);
    lg_samples_sort(&s->itl);
    lg_samples_sort(&s->latency);
    const lg_config *cfg = &s->cfg;
    lg_totals tt = {0};
    tt.elapsed = (s->t_last_done > s->t0 ? s->t_last_done : lg_now_s()) - s->t0;
    if (tt.elapsed <= 0) tt.elapsed = 1e-9;
    tt.rps = (double)s->ok / tt.elapsed;
    tt.tps = (double)s->tokens / tt.elapsed;
    for (int i = 500; i < LG_MAX_STATUS; i++) tt.s5xx += s->status_hist[i];
    print_text(s, &tt);

    if (!cfg->json_path) return 0;
    cJSON *o = json_build(s, &tt);
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
