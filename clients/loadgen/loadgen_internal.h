/* clients/loadgen/loadgen_internal.h — peftd-loadgen's shared types and the functions its
 * files share (private to clients/loadgen/; not an installed header).
 *
 * Who owns what:
 *   loadgen.c         main, setup (limits, signals, base model, zipf table, clients), the
 *                     libcurl-multi run loop, RSS sampling of --pid, cleanup.
 *   loadgen_args.c    option parsing, validation, --help text (lg_args_parse, lg_usage).
 *   loadgen_client.c  one client's request: body + headers, SSE parsing, finishing and
 *                     counting a request (lg_client_init/start/finish).
 *   loadgen_report.c  the text report on stdout and the --json report (lg_report).
 *   loadgen_util.c    leaf helpers: clock, seeded rng, sample lists + percentiles, VmRSS.
 *
 * Calls go one way: loadgen.c -> args, client, report, util; client and report -> util;
 * args and util call none of the others.
 */
#ifndef PEFTD_LOADGEN_INTERNAL_H
#define PEFTD_LOADGEN_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

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

/* lg_args_parse's answer when --help was printed: exit 0 without running. */
#define LG_ARGS_HELP 1

typedef struct {
    double *v;
    size_t n, cap;
} samples;

typedef struct {
    const char *url; /* points into url_buf once lg_args_parse succeeded */
    char *url_buf;   /* owned: --url without trailing '/' */
    int clients;
    double duration_s, warmup_s, timeout_s, drain_s;
    int tenants;
    char **keys; /* owned, NULL-terminated */
    int n_keys;
    char **adapters; /* owned; NULL entry = the base model */
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
    samples itl;    /* this request's gaps, moved to the totals when it succeeds */
    double t_retry; /* > 0: waiting to start the next request (after a transport failure) */
} lg_client;

typedef struct {
    lg_config cfg;
    CURLM *multi;
    lg_client *cl;
    uint64_t rng;
    double *zipf_cdf;
    double t0, t_end;
    bool stopping;
    char *base_model; /* owned: the base model's id from /v1/models, or NULL */
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

/* ---- loadgen_util.c ---- */

double lg_now_s(void);
uint64_t lg_rng_next(uint64_t *s);
double lg_rng_unit(uint64_t *s);
int lg_samples_add(samples *s, double x);
/* Sorts the samples ascending (lg_pct and the max need sorted samples). */
void lg_samples_sort(samples *s);
/* Nearest-rank percentile of sorted samples; NAN when there are none. */
double lg_pct(const samples *s, double p);
double lg_mean(const samples *s);
/* VmRSS of a process in KiB, or -1. */
long lg_read_rss_kib(long pid);

/* ---- loadgen_args.c ---- */

void lg_usage(FILE *f);
/* Fills cfg (defaults, then argv). Returns 0 to run, LG_ARGS_HELP when --help was printed,
 * -1 on a usage error (already printed: exit 2). On 0, cfg owns keys, adapters, url_buf. */
int lg_args_parse(lg_config *cfg, int argc, char **argv);

/* ---- loadgen_client.c ---- */

/* Creates c's easy handle with its callbacks and timeouts; 0 or -1. */
int lg_client_init(const lg_config *cfg, lg_client *c, int id);
/* Picks a tenant, adapter and prompt and adds the request to s->multi; 0 or -1. */
int lg_client_start(lg_state *s, lg_client *c);
/* Counts a finished request (res: its transfer result) into s's totals. */
void lg_client_finish(lg_state *s, lg_client *c, CURLcode res);

/* ---- loadgen_report.c ---- */

/* Prints the report and writes --json; 0, or -1 when the JSON could not be written.
 * Sorts s's sample lists. */
int lg_report(lg_state *s);

#endif
