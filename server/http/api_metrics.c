/* server/http/api_metrics.c — GET /metrics (Prometheus text format 0.0.4) and the
 * peftd_requests_total counters every response adds to. Engine gauges and counters come
 * from engine_get_stats(), which is safe to call from HTTP threads. */
#include <inttypes.h>
#include <stdio.h>

#include "adapter_store/tiers.h"
#include "server/http/http_internal.h"

const char *http_endpoint_name(http_endpoint ep) {
    switch (ep) {
    case HTTP_EP_COMPLETIONS: return "/v1/completions";
    case HTTP_EP_MODELS: return "/v1/models";
    case HTTP_EP_HEALTH: return "/health";
    case HTTP_EP_METRICS: return "/metrics";
    case HTTP_EP_ADAPTERS: return "/v1/adapters";
    default: return "other";
    }
}

void http_count_request(http_server *s, http_endpoint ep, unsigned status) {
    pthread_mutex_lock(&s->stats_mu);
    for (int i = 0; i < s->n_counters; i++) {
        if (s->counters[i].ep == ep && s->counters[i].status == status) {
            s->counters[i].n++;
            goto out;
        }
    }
    /* The table is sized for every (endpoint, status) we ever answer; a full table drops
     * the count rather than the response. */
    if (s->n_counters < HTTP_MAX_COUNTERS)
        s->counters[s->n_counters++] = (http_counter){.ep = ep, .status = status, .n = 1};
out:
    pthread_mutex_unlock(&s->stats_mu);
}

static int metrics_render(http_server *s, http_buf *b) {
    char line[1024];
    int rc = http_buf_puts(b, "# HELP peftd_requests_total HTTP responses by endpoint and status.\n"
                              "# TYPE peftd_requests_total counter\n");
    pthread_mutex_lock(&s->stats_mu);
    for (int i = 0; i < s->n_counters && rc == 0; i++) {
        snprintf(line, sizeof line, "peftd_requests_total{endpoint=\"%s\",status=\"%u\"} %" PRIu64 "\n",
                 http_endpoint_name(s->counters[i].ep), s->counters[i].status, s->counters[i].n);
        rc = http_buf_puts(b, line);
    }
    pthread_mutex_unlock(&s->stats_mu);
    if (rc) return rc;

    engine_stats st = {0};
    engine_get_stats(s->e, &st);
    tiers_stats ts = {0};
    if (engine_tiers(s->e)) tiers_get_stats(engine_tiers(s->e), &ts);
    const struct {
        const char *name, *type, *help;
        uint64_t v;
    } rows[] = {
        {"peftd_running_requests", "gauge", "Sequences in the running batch.", (uint64_t)st.running},
        {"peftd_waiting_requests", "gauge", "Requests queued for admission.", (uint64_t)st.waiting},
        {"peftd_kv_blocks_used", "gauge", "KV cache blocks in use.", (uint64_t)st.kv_blocks_used},
        {"peftd_kv_blocks_total", "gauge", "KV cache blocks in the pool.", (uint64_t)st.kv_blocks_total},
        {"peftd_engine_steps_total", "counter", "Engine steps run.", st.steps},
        {"peftd_generated_tokens_total", "counter", "Tokens generated.", st.tokens_generated},
        {"peftd_prompt_tokens_total", "counter", "Prompt tokens processed.", st.prompt_tokens},
        {"peftd_adapter_slot_hits_total", "counter", "Admissions whose adapter was resident in a slot.",
         ts.slot_hits},
        {"peftd_adapter_slot_misses_total", "counter", "Admission attempts whose adapter was not resident.",
         ts.slot_misses},
        {"peftd_adapter_slot_evictions_total", "counter", "Adapters evicted from the slot pool.", ts.slot_evictions},
        {"peftd_adapter_loads_total", "counter", "Adapters loaded into the slot pool.", ts.loads},
        {"peftd_adapter_load_failures_total", "counter", "Adapter loads that failed.", ts.load_failures},
        {"peftd_adapter_host_hits_total", "counter", "Loads served from the host tier.", ts.host_hits},
        {"peftd_adapter_host_misses_total", "counter", "Loads that read the store.", ts.host_misses},
        {"peftd_adapter_host_evictions_total", "counter", "Blobs evicted from the host tier.", ts.host_evictions},
        {"peftd_adapter_host_bytes", "gauge", "Bytes of adapter blobs in the host tier.", ts.host_bytes_used},
        {"peftd_adapter_slots_used", "gauge", "Adapters resident in the slot pool.", (uint64_t)ts.slots_used},
        {"peftd_adapter_slots_pinned", "gauge", "Resident adapters used by running sequences.",
         (uint64_t)ts.slots_pinned},
        {"peftd_adapter_slots_total", "gauge", "Slot pool capacity.", (uint64_t)ts.slots_total},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", rows[i].name,
                 rows[i].help, rows[i].name, rows[i].type, rows[i].name, rows[i].v);
        if ((rc = http_buf_puts(b, line))) return rc;
    }
    snprintf(line, sizeof line,
             "# HELP peftd_adapter_load_seconds_sum Time from fetch to resident, summed over loads.\n"
             "# TYPE peftd_adapter_load_seconds_sum counter\npeftd_adapter_load_seconds_sum %.6f\n",
             ts.load_seconds_sum);
    if ((rc = http_buf_puts(b, line))) return rc;
    if (s->store) {
        astore_stats as = {0};
        if (astore_get_stats(s->store, &as) == 0) {
            snprintf(line, sizeof line,
                     "# HELP peftd_store_adapters Adapters in the store.\n# TYPE peftd_store_adapters gauge\n"
                     "peftd_store_adapters %" PRIu64 "\n"
                     "# HELP peftd_store_map_bytes LMDB map size.\n# TYPE peftd_store_map_bytes gauge\n"
                     "peftd_store_map_bytes %" PRIu64 "\n"
                     "# HELP peftd_store_used_bytes LMDB pages in use.\n# TYPE peftd_store_used_bytes gauge\n"
                     "peftd_store_used_bytes %" PRIu64 "\n",
                     as.entries, as.map_bytes, as.used_bytes);
            if ((rc = http_buf_puts(b, line))) return rc;
        }
    }
    return 0;
}

enum MHD_Result api_metrics_get(http_req *req, struct MHD_Connection *conn) {
    http_buf b = {0};
    enum MHD_Result r;
    if (metrics_render(req->srv, &b))
        r = http_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
    else
        r = http_respond(req, conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", b.p,
                         b.len, NULL, NULL);
    http_buf_free(&b);
    return r;
}
