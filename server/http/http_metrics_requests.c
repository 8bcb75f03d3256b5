/* server/http/http_metrics_requests.c — see http_metrics.h: the per-adapter request and
 * token counters (bounded label values, like the tenants'), the finish-reason counters
 * and the queue-time histogram (engine submit -> first admission). Process-wide, lock-free
 * once an adapter has its row (claiming a row takes a mutex, once per name). */
#include "server/http/http_metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define MS(x) ((uint64_t)((x) * 1e6))
/* Queue time: from 0.1 ms (an idle engine admits at the next wake) to 2 minutes (a long
 * queue behind max_seqs). */
static const uint64_t queue_ns[] = {MS(0.1), MS(0.5), MS(1), MS(2.5), MS(5), MS(10), MS(25), MS(50), MS(100),
                                    MS(250), MS(500), MS(1000), MS(2500), MS(5000), MS(10000), MS(30000), MS(60000),
                                    MS(120000)};
static const char *const queue_tx[] = {"0.0001", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
                                       "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "120"};
_Static_assert(sizeof queue_ns / sizeof queue_ns[0] == sizeof queue_tx / sizeof queue_tx[0], "bounds and text differ");
_Static_assert(sizeof queue_ns / sizeof queue_ns[0] <= HTTP_HIST_MAX_BUCKETS, "too many bounds");

static http_histogram g_queue = {.n = (int)(sizeof queue_ns / sizeof queue_ns[0]), .le_ns = queue_ns, .le_text = queue_tx};

const char *const http_finish_names[HTTP_FINISH_N] = {"stop", "length", "cancelled", "error"};
static atomic_uint_fast64_t g_finish[HTTP_FINISH_N];

typedef struct {
    char label[65];
    atomic_uint_fast64_t requests, prompt, generation;
} adapter_slot;

/* [HTTP_ADAPTER_SERIES - 1] is the overflow row "other". */
static adapter_slot g_adapters[HTTP_ADAPTER_SERIES];
static atomic_int g_n_adapters; /* rows claimed (labels written before the count is raised) */
static pthread_mutex_t g_adapters_mu = PTHREAD_MUTEX_INITIALIZER;

static adapter_slot *slot_of(const char *adapter) {
    const char *name = adapter && *adapter ? adapter : HTTP_ADAPTER_BASE;
    adapter_slot *other = &g_adapters[HTTP_ADAPTER_SERIES - 1];
    if (!strcmp(name, HTTP_TENANT_OTHER) || strlen(name) >= sizeof other->label) return other;
    int n = atomic_load_explicit(&g_n_adapters, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (!strcmp(g_adapters[i].label, name)) return &g_adapters[i];
    pthread_mutex_lock(&g_adapters_mu);
    adapter_slot *s = other;
    n = atomic_load_explicit(&g_n_adapters, memory_order_relaxed);
    for (int i = 0; i < n && s == other; i++)
        if (!strcmp(g_adapters[i].label, name)) s = &g_adapters[i];
    if (s == other && n < HTTP_ADAPTER_SERIES - 1) {
        s = &g_adapters[n];
        snprintf(s->label, sizeof s->label, "%s", name);
        atomic_store_explicit(&g_n_adapters, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&g_adapters_mu);
    return s;
}

void http_metrics_on_request(const char *adapter) {
    atomic_fetch_add_explicit(&slot_of(adapter)->requests, 1, memory_order_relaxed);
}

void http_metrics_on_finish(const char *adapter, int reason, int prompt_tokens, int completion_tokens) {
    adapter_slot *s = slot_of(adapter);
    if (prompt_tokens > 0) atomic_fetch_add_explicit(&s->prompt, (uint64_t)prompt_tokens, memory_order_relaxed);
    if (completion_tokens > 0)
        atomic_fetch_add_explicit(&s->generation, (uint64_t)completion_tokens, memory_order_relaxed);
    if (reason >= 0 && reason < HTTP_FINISH_N) atomic_fetch_add_explicit(&g_finish[reason], 1, memory_order_relaxed);
}

void http_metrics_on_queue(uint64_t ns) { http_histogram_observe_ns(&g_queue, ns); }

int http_metrics_adapters(http_adapter_row *out, int cap) {
    int n = atomic_load_explicit(&g_n_adapters, memory_order_acquire), k = 0;
    for (int i = 0; i < n && k < cap; i++, k++) {
        memcpy(out[k].label, g_adapters[i].label, sizeof out[k].label);
        out[k].requests = atomic_load_explicit(&g_adapters[i].requests, memory_order_relaxed);
        out[k].prompt_tokens = atomic_load_explicit(&g_adapters[i].prompt, memory_order_relaxed);
        out[k].generation_tokens = atomic_load_explicit(&g_adapters[i].generation, memory_order_relaxed);
    }
    const adapter_slot *o = &g_adapters[HTTP_ADAPTER_SERIES - 1];
    uint64_t r = atomic_load_explicit(&o->requests, memory_order_relaxed);
    if (r && k < cap) { /* "other" only once something overflowed into it */
        snprintf(out[k].label, sizeof out[k].label, "%s", HTTP_TENANT_OTHER);
        out[k].requests = r;
        out[k].prompt_tokens = atomic_load_explicit(&o->prompt, memory_order_relaxed);
        out[k].generation_tokens = atomic_load_explicit(&o->generation, memory_order_relaxed);
        k++;
    }
    return k;
}

void http_metrics_finishes(uint64_t out[HTTP_FINISH_N]) {
    for (int i = 0; i < HTTP_FINISH_N; i++) out[i] = atomic_load_explicit(&g_finish[i], memory_order_relaxed);
}

const http_histogram *http_metrics_queue(void) { return &g_queue; }
