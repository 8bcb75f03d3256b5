/* server/http/http_metrics.h — what the HTTP layer measures itself for /metrics: lock-free
 * latency histograms (time to first token, inter-token latency, end-to-end request
 * latency), the process's readiness flag (/ready), and the bounded table of tenants that
 * get their own label value in the per-tenant families.
 *
 * Everything here is process-wide (like a Prometheus client's default registry): one
 * daemon serves one HTTP server. Observing is a clock read and two relaxed atomic adds,
 * cheap enough for the engine thread's notify path. This header does not include
 * http_internal.h, so main.c may use the readiness part.
 */
#ifndef PEFTD_HTTP_METRICS_H
#define PEFTD_HTTP_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_HIST_MAX_BUCKETS 20

/* A histogram over fixed upper bounds. Buckets are counted non-cumulatively (one add per
 * observation); http_histogram_snapshot makes them cumulative, so a scrape is always
 * monotone in le even while observations race with it. */
typedef struct {
    int n;                                             /* finite bounds */
    const uint64_t *le_ns;                             /* ascending, nanoseconds */
    const char *const *le_text;                        /* the same bounds as le="" text */
    atomic_uint_fast64_t bucket[HTTP_HIST_MAX_BUCKETS + 1]; /* [n]: above the last bound */
    atomic_uint_fast64_t sum_ns;
} http_histogram;

typedef struct {
    http_histogram ttft;  /* request arrival -> first token of a choice */
    http_histogram itl;   /* between consecutive tokens of a choice */
    http_histogram e2e;   /* completion request arrival -> connection done */
} http_metrics;

/* The process's histograms (static storage, never NULL). */
http_metrics *http_metrics_get(void);

uint64_t http_now_ns(void); /* CLOCK_MONOTONIC */

void http_histogram_observe_ns(http_histogram *h, uint64_t ns);
/* Cumulative counts: cum[0..n] (cum[n] = +Inf = count); *sum_s the sum in seconds. */
void http_histogram_snapshot(const http_histogram *h, uint64_t cum[HTTP_HIST_MAX_BUCKETS + 1], double *sum_s);

/* Called from a completion's notify (engine thread) when a choice received new_tokens more
 * generated tokens: the first ones observe TTFT from t0_ns (the request's arrival), later
 * ones the inter-token gap since *t_last_ns (a gap carrying k tokens counts k observations
 * of gap/k). *t_last_ns (0 before the first token) is the choice's own state. */
void http_metrics_on_tokens(uint64_t t0_ns, uint64_t *t_last_ns, int new_tokens);

/* Readiness: set when the daemon starts shutting down (SIGTERM), so /ready answers 503 and
 * load balancers stop sending work while in-flight requests finish. */
void http_set_draining(bool draining);
bool http_is_draining(void);

/* Tenant label values, bounded: the first HTTP_TENANT_SERIES - 1 tenants seen keep their
 * own series for the life of the process (so counters never jump between series); later
 * ones share HTTP_TENANT_OTHER. "" (auth off) is shown as HTTP_TENANT_ANON. Writes the
 * label value (unescaped) to out and returns true when the tenant has its own series. */
#define HTTP_TENANT_SERIES 64
#define HTTP_TENANT_OTHER "other"
#define HTTP_TENANT_ANON "_anonymous"
bool http_tenant_label(const char *tenant, char *out, size_t cap);

/* ---- http_metrics_requests.c: per-adapter counters, finish reasons, queue time ---- */
/* Adapter label values, bounded like tenants': the first HTTP_ADAPTER_SERIES - 1 adapter
 * names seen keep their own series for the life of the process, later ones share
 * HTTP_TENANT_OTHER; the base model (no adapter) is HTTP_ADAPTER_BASE. */
#define HTTP_ADAPTER_SERIES 64
#define HTTP_ADAPTER_BASE "_base"
/* Finish reasons counted (the order of peftd_request_finish_total's label values). */
enum { HTTP_FINISH_STOP, HTTP_FINISH_LENGTH, HTTP_FINISH_CANCELLED, HTTP_FINISH_ERROR, HTTP_FINISH_N };
extern const char *const http_finish_names[HTTP_FINISH_N];

typedef struct {
    char label[65];
    uint64_t requests, prompt_tokens, generation_tokens;
} http_adapter_row;

/* A completion request was accepted for adapter (NULL or "" = the base model). */
void http_metrics_on_request(const char *adapter);
/* One choice finished with reason (HTTP_FINISH_*) after prompt_tokens prefilled and
 * completion_tokens generated for adapter. */
void http_metrics_on_finish(const char *adapter, int reason, int prompt_tokens, int completion_tokens);
/* Submit -> first admission of one engine request (engine_delta.queue_ns). */
void http_metrics_on_queue(uint64_t ns);
/* Snapshot of the adapter rows (at most HTTP_ADAPTER_SERIES); returns how many. */
int http_metrics_adapters(http_adapter_row *out, int cap);
/* Choices finished, by reason, and the queue-time histogram. */
void http_metrics_finishes(uint64_t out[HTTP_FINISH_N]);
const http_histogram *http_metrics_queue(void);

#endif
