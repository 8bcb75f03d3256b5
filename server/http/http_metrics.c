/* server/http/http_metrics.c — see http_metrics.h. */
#include "server/http/http_metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Bounds chosen for a CPU-to-GPU range of models: TTFT from 0.25 ms (a tiny model on an
 * idle engine) to a minute (a long prompt behind a full queue); ITL from 0.1 ms (the
 * embedded 260K-parameter model decodes at ~10 kHz) to 5 s (a stalled step); end to end
 * from 1 ms to 5 minutes (long generations). */
#define MS(x) ((uint64_t)((x) * 1e6))
static const uint64_t ttft_ns[] = {MS(0.25), MS(0.5), MS(1), MS(2.5), MS(5), MS(10), MS(25), MS(50), MS(100), MS(250),
                                   MS(500), MS(1000), MS(2500), MS(5000), MS(10000), MS(30000), MS(60000)};
static const char *const ttft_tx[] = {"0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                                      "0.5", "1", "2.5", "5", "10", "30", "60"};
static const uint64_t itl_ns[] = {MS(0.1), MS(0.25), MS(0.5), MS(1), MS(2.5), MS(5), MS(10), MS(25), MS(50),
                                  MS(100), MS(250), MS(500), MS(1000), MS(2500), MS(5000)};
static const char *const itl_tx[] = {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                                     "0.1", "0.25", "0.5", "1", "2.5", "5"};
static const uint64_t e2e_ns[] = {MS(1), MS(2.5), MS(5), MS(10), MS(25), MS(50), MS(100), MS(250), MS(500), MS(1000),
                                  MS(2500), MS(5000), MS(10000), MS(30000), MS(60000), MS(120000), MS(300000)};
static const char *const e2e_tx[] = {"0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
                                     "2.5", "5", "10", "30", "60", "120", "300"};
#define N_OF(a) ((int)(sizeof a / sizeof a[0]))
_Static_assert(N_OF(ttft_ns) == N_OF(ttft_tx) && N_OF(itl_ns) == N_OF(itl_tx) && N_OF(e2e_ns) == N_OF(e2e_tx),
               "bounds and their text differ");
_Static_assert(N_OF(ttft_ns) <= HTTP_HIST_MAX_BUCKETS && N_OF(itl_ns) <= HTTP_HIST_MAX_BUCKETS && N_OF(e2e_ns) <= HTTP_HIST_MAX_BUCKETS, "too many bounds");

/* Zero-initialised atomics are valid atomics (C11 7.17.2.1 for objects of static storage). */
static http_metrics g_metrics = {
    .ttft = {.n = N_OF(ttft_ns), .le_ns = ttft_ns, .le_text = ttft_tx},
    .itl = {.n = N_OF(itl_ns), .le_ns = itl_ns, .le_text = itl_tx},
    .e2e = {.n = N_OF(e2e_ns), .le_ns = e2e_ns, .le_text = e2e_tx},
};
static atomic_bool g_draining;

http_metrics *http_metrics_get(void) { return &g_metrics; }

uint64_t http_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void observe_n(http_histogram *h, uint64_t ns, uint64_t times) {
    int k = 0;
    while (k < h->n && ns > h->le_ns[k]) k++;
    atomic_fetch_add_explicit(&h->bucket[k], times, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, ns * times, memory_order_relaxed);
}

void http_histogram_observe_ns(http_histogram *h, uint64_t ns) { observe_n(h, ns, 1); }

void http_histogram_snapshot(const http_histogram *h, uint64_t cum[HTTP_HIST_MAX_BUCKETS + 1], double *sum_s) {
    uint64_t c = 0;
    for (int k = 0; k <= h->n; k++) {
        c += atomic_load_explicit(&h->bucket[k], memory_order_relaxed);
        cum[k] = c;
    }
    *sum_s = (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9;
}

void http_metrics_on_tokens(uint64_t t0_ns, uint64_t *t_last_ns, int new_tokens) {
    if (new_tokens <= 0) return;
    uint64_t now = http_now_ns();
    if (*t_last_ns == 0) {
        http_histogram_observe_ns(&g_metrics.ttft, now > t0_ns ? now - t0_ns : 0);
        new_tokens--;
    } else {
        uint64_t gap = now > *t_last_ns ? now - *t_last_ns : 0;
        observe_n(&g_metrics.itl, gap / (uint64_t)new_tokens, (uint64_t)new_tokens);
        new_tokens = 0;
    }
    /* Tokens that arrived together with the first one came out of the same step: gap 0. */
    if (new_tokens > 0) observe_n(&g_metrics.itl, 0, (uint64_t)new_tokens);
    *t_last_ns = now;
}

void http_set_draining(bool draining) { atomic_store(&g_draining, draining); }
bool http_is_draining(void) { return atomic_load(&g_draining); }

static pthread_mutex_t g_tenants_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_tenants[HTTP_TENANT_SERIES - 1][65];
static int g_n_tenants;

bool http_tenant_label(const char *tenant, char *out, size_t cap) {
    const char *name = tenant && *tenant ? tenant : HTTP_TENANT_ANON;
    /* A real tenant called "other" would duplicate the overflow series: it shares it. */
    bool own = false;
    if (strcmp(name, HTTP_TENANT_OTHER) != 0 && strlen(name) < sizeof g_tenants[0]) {
        pthread_mutex_lock(&g_tenants_mu);
        for (int i = 0; i < g_n_tenants && !own; i++) own = !strcmp(g_tenants[i], name);
        if (!own && g_n_tenants < HTTP_TENANT_SERIES - 1) {
            snprintf(g_tenants[g_n_tenants++], sizeof g_tenants[0], "%s", name);
            own = true;
        }
        pthread_mutex_unlock(&g_tenants_mu);
    }
    snprintf(out, cap, "%s", own ? name : HTTP_TENANT_OTHER);
    return own;
}
