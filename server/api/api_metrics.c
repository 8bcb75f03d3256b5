/* server/api/api_metrics.c — GET /metrics (Prometheus text format 0.0.4, accepted by
 * `promtool check metrics`), GET /ready (the peftd_requests_total counters are the transport's:
 * http_server_counters).
 *
 * Families: request counts by endpoint/status; engine gauges and counters from
 * engine_get_stats() (safe from HTTP threads) including the step batch-size histogram;
 * the HTTP layer's own latency histograms (http_metrics.h); adapter tier and store
 * figures; per-tenant counters from engine_get_tenant_stats() with at most
 * HTTP_TENANT_SERIES tenant label values. Every family gets HELP and TYPE once, counters
 * end in _total, label values are escaped.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/tiers.h"
#include "lib/status.h"
#include "server/api/api_internal.h"
#include "server/http/http_metrics.h"

static int put_family(http_buf *b, const char *name, const char *type, const char *help) {
    char line[512];
    snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    return http_buf_puts(b, line);
}

static int put_u64(http_buf *b, const char *name, const char *type, const char *help, uint64_t v) {
    char line[128];
    snprintf(line, sizeof line, "%s %" PRIu64 "\n", name, v);
    int rc = put_family(b, name, type, help);
    return rc ? rc : http_buf_puts(b, line);
}

/* A label value per the text format: backslash, double quote and line feed escaped.
 * Invalid UTF-8 bytes become '?' so the exposition stays valid UTF-8. */
static void label_escape(char *out, size_t cap, const char *v) {
    size_t o = 0, n = strlen(v);
    for (size_t i = 0; i < n && o + 5 < cap;) {
        unsigned char c = (unsigned char)v[i];
        size_t k = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        if (c == '\\' || c == '"' || c == '\n') {
            out[o++] = '\\';
            out[o++] = c == '\n' ? 'n' : (char)c;
        } else if (k == 1) {
            out[o++] = (char)c;
        } else if (i + k <= n && http_utf8_valid(v + i, k)) {
            memcpy(out + o, v + i, k);
            o += k;
        } else {
            out[o++] = '?';
            k = 1;
        }
        i += k;
    }
    out[o] = '\0';
}

static int put_histogram(http_buf *b, const char *name, const char *help, const http_histogram *h) {
    uint64_t cum[HTTP_HIST_MAX_BUCKETS + 1];
    double sum;
    http_histogram_snapshot(h, cum, &sum);
    int rc = put_family(b, name, "histogram", help);
    char line[256];
    for (int k = 0; k <= h->n && !rc; k++) {
        snprintf(line, sizeof line, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", name, k < h->n ? h->le_text[k] : "+Inf",
                 cum[k]);
        rc = http_buf_puts(b, line);
    }
    snprintf(line, sizeof line, "%s_sum %.9g\n%s_count %" PRIu64 "\n", name, sum, name, cum[h->n]);
    return rc ? rc : http_buf_puts(b, line);
}

/* The engine's step sizes: buckets are already cumulative, bounds 1, 2, 4, ... rows. */
static int put_batch_rows(http_buf *b, const engine_stats *st) {
    int rc = put_family(b, "peftd_batch_rows", "histogram", "Token rows per engine step (prefill chunks and decode tokens).");
    char line[256];
    for (int k = 0; k < ENGINE_BATCH_BUCKETS && !rc; k++) {
        if (k < ENGINE_BATCH_BUCKETS - 1)
            snprintf(line, sizeof line, "peftd_batch_rows_bucket{le=\"%d\"} %" PRIu64 "\n", 1 << k, st->batch_rows_bucket[k]);
        else
            snprintf(line, sizeof line, "peftd_batch_rows_bucket{le=\"+Inf\"} %" PRIu64 "\n", st->batch_rows_bucket[k]);
        rc = http_buf_puts(b, line);
    }
    snprintf(line, sizeof line, "peftd_batch_rows_sum %" PRIu64 "\npeftd_batch_rows_count %" PRIu64 "\n",
             st->batch_rows_sum, st->batch_rows_bucket[ENGINE_BATCH_BUCKETS - 1]);
    return rc ? rc : http_buf_puts(b, line);
}

typedef struct {
    char label[65];
    uint64_t prompt, generated;
    int64_t running, waiting;
} tenant_row;

/* Per-tenant families. Label values are bounded by http_tenant_label; rows with the same
 * label (the overflow "other", or names that collide after mapping) are summed, so no
 * series is ever duplicated. */
static int put_tenants(api_server *s, http_buf *b) {
    int cap = 256, n;
    engine_tenant_stats *ts = NULL;
    for (;;) { /* grow until the snapshot is not truncated */
        engine_tenant_stats *p = realloc(ts, (size_t)cap * sizeof *ts);
        if (!p) {
            free(ts);
            return PEFTD_ENOMEM;
        }
        ts = p;
        n = engine_get_tenant_stats(s->e, ts, cap);
        if (n < cap || cap >= (1 << 20)) break;
        cap *= 2;
    }
    tenant_row rows[HTTP_TENANT_SERIES];
    int nr = 0;
    for (int i = 0; i < n; i++) {
        char label[65];
        http_tenant_label(ts[i].tenant, label, sizeof label);
        int j = 0;
        while (j < nr && strcmp(rows[j].label, label)) j++;
        if (j == nr) {
            if (nr == HTTP_TENANT_SERIES) continue; /* unreachable: labels are bounded */
            memset(&rows[nr], 0, sizeof rows[nr]);
            snprintf(rows[nr].label, sizeof rows[nr].label, "%s", label);
            nr++;
        }
        rows[j].prompt += ts[i].prompt_tokens;
        rows[j].generated += ts[i].generated_tokens;
        rows[j].running += ts[i].running;
        rows[j].waiting += ts[i].waiting;
    }
    free(ts);
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"peftd_tenant_prompt_tokens_total", "counter", "Prompt tokens processed, by tenant (at most 64 tenant values, the rest summed as other)."},
        {"peftd_tenant_generated_tokens_total", "counter", "Tokens generated, by tenant."},
        {"peftd_tenant_running", "gauge", "Running sequences, by tenant."},
        {"peftd_tenant_waiting", "gauge", "Queued requests, by tenant."},
    };
    int rc = 0;
    char line[512], esc[65 * 4 + 1];
    for (size_t f = 0; f < sizeof fam / sizeof fam[0] && !rc; f++) {
        rc = put_family(b, fam[f].name, fam[f].type, fam[f].help);
        for (int j = 0; j < nr && !rc; j++) {
            label_escape(esc, sizeof esc, rows[j].label);
            uint64_t v = f == 0 ? rows[j].prompt : f == 1 ? rows[j].generated
                       : (uint64_t)(f == 2 ? rows[j].running : rows[j].waiting);
            snprintf(line, sizeof line, "%s{tenant=\"%s\"} %" PRIu64 "\n", fam[f].name, esc, v);
            rc = http_buf_puts(b, line);
        }
    }
    return rc;
}

/* Per-adapter request and token counters (bounded label values: http_metrics.h), the
 * finish reasons of choices and the queue-time histogram. */
static int put_requests(http_buf *b) {
    http_adapter_row rows[HTTP_ADAPTER_SERIES];
    int n = http_metrics_adapters(rows, HTTP_ADAPTER_SERIES);
    static const struct {
        const char *name, *help;
    } fam[] = {
        {"peftd_adapter_requests_total",
         "Completion requests accepted, by adapter (_base: the base model; at most 64 adapter values, the rest summed as other)."},
        {"peftd_adapter_prompt_tokens_total", "Prompt tokens prefilled for finished choices, by adapter."},
        {"peftd_adapter_generation_tokens_total", "Tokens generated by finished choices, by adapter."},
    };
    int rc = 0;
    char line[512], esc[65 * 4 + 1];
    for (size_t f = 0; f < sizeof fam / sizeof fam[0] && !rc; f++) {
        rc = put_family(b, fam[f].name, "counter", fam[f].help);
        for (int j = 0; j < n && !rc; j++) {
            label_escape(esc, sizeof esc, rows[j].label);
            uint64_t v = f == 0 ? rows[j].requests : f == 1 ? rows[j].prompt_tokens : rows[j].generation_tokens;
            snprintf(line, sizeof line, "%s{adapter=\"%s\"} %" PRIu64 "\n", fam[f].name, esc, v);
            rc = http_buf_puts(b, line);
        }
    }
    uint64_t fin[HTTP_FINISH_N];
    http_metrics_finishes(fin);
    if (!rc) rc = put_family(b, "peftd_request_finish_total", "counter", "Choices finished, by finish reason.");
    for (int i = 0; i < HTTP_FINISH_N && !rc; i++) {
        snprintf(line, sizeof line, "peftd_request_finish_total{finish_reason=\"%s\"} %" PRIu64 "\n",
                 http_finish_names[i], fin[i]);
        rc = http_buf_puts(b, line);
    }
    return rc ? rc
              : put_histogram(b, "peftd_request_queue_seconds",
                              "Time an engine request waited from submission to its first admission.",
                              http_metrics_queue());
}

/* srv: the request's server (api_server.http is assigned only once http_server_start returns,
 * and the listening socket may take requests before that) */
static int metrics_render(api_server *s, http_server *srv, http_buf *b) {
    char line[1024];
    int rc = put_family(b, "peftd_requests_total", "counter", "HTTP responses by endpoint and status.");
    http_counter counters[HTTP_MAX_COUNTERS];
    int n = http_server_counters(srv, counters, HTTP_MAX_COUNTERS);
    for (int i = 0; i < n && rc == 0; i++) {
        snprintf(line, sizeof line, "peftd_requests_total{endpoint=\"%s\",status=\"%u\"} %" PRIu64 "\n",
                 counters[i].label, counters[i].status, counters[i].n);
        rc = http_buf_puts(b, line);
    }
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
        {"peftd_waiting_requests", "gauge", "Requests queued for admission (queue depth).", (uint64_t)st.waiting},
        {"peftd_kv_blocks_used", "gauge", "KV cache blocks in use.", (uint64_t)st.kv_blocks_used},
        {"peftd_kv_blocks_capacity", "gauge", "KV cache blocks in the pool.", (uint64_t)st.kv_blocks_total},
        {"peftd_preemptions_total", "counter", "Sequences preempted when KV blocks ran out (recomputed later).",
         st.preemptions},
        {"peftd_prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache at admission.",
         st.prefix_cache_queries},
        {"peftd_prefix_cache_hits_total", "counter", "Prompt tokens whose KV came from the prefix cache.",
         st.prefix_cache_hits},
        {"peftd_prefix_cache_evictions_total", "counter", "Cached prompt KV blocks evicted (LRU).",
         st.prefix_cache_evictions},
        {"peftd_prefix_cache_blocks", "gauge", "KV blocks held by the prefix cache.", (uint64_t)st.prefix_cache_blocks},
        {"peftd_rope_recomputes_total", "counter",
         "Sequences recomputed with the long table when generation passed longrope's original max.",
         st.rope_recomputes},
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
        {"peftd_adapter_slots_capacity", "gauge", "Slot pool capacity.", (uint64_t)ts.slots_total},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if ((rc = put_u64(b, rows[i].name, rows[i].type, rows[i].help, rows[i].v))) return rc;
    snprintf(line, sizeof line,
             "# HELP peftd_kv_cache_usage_ratio Fraction of KV cache blocks in use.\n"
             "# TYPE peftd_kv_cache_usage_ratio gauge\npeftd_kv_cache_usage_ratio %.6f\n"
             "# HELP peftd_adapter_load_seconds_total Time from fetch to resident, summed over loads.\n"
             "# TYPE peftd_adapter_load_seconds_total counter\npeftd_adapter_load_seconds_total %.6f\n",
             st.kv_blocks_total ? (double)st.kv_blocks_used / st.kv_blocks_total : 0.0, ts.load_seconds_sum);
    if ((rc = http_buf_puts(b, line))) return rc;
    if ((rc = put_batch_rows(b, &st))) return rc;

    http_metrics *hm = http_metrics_get();
    if ((rc = put_histogram(b, "peftd_time_to_first_token_seconds",
                            "Time from request arrival to the first generated token of each choice.", &hm->ttft)) ||
        (rc = put_histogram(b, "peftd_inter_token_latency_seconds",
                            "Time between consecutive generated tokens of a choice.", &hm->itl)) ||
        (rc = put_histogram(b, "peftd_e2e_request_latency_seconds",
                            "Completion requests: arrival to the end of the response.", &hm->e2e)))
        return rc;
    if ((rc = put_tenants(s, b))) return rc;
    if ((rc = put_requests(b))) return rc;
    if ((rc = api_metrics_process(s, b))) return rc;
    if ((rc = api_metrics_vllm(s, &st, b))) return rc; /* the same snapshot: an alias equals its family */
    if ((rc = api_replication_metrics(s, b))) return rc;

    if (s->store) {
        astore_stats as = {0};
        if (astore_get_stats(s->store, &as) == 0 &&
            ((rc = put_u64(b, "peftd_store_adapters", "gauge", "Adapters in the store.", as.entries)) ||
             (rc = put_u64(b, "peftd_store_map_bytes", "gauge", "LMDB map size.", as.map_bytes)) ||
             (rc = put_u64(b, "peftd_store_used_bytes", "gauge", "LMDB pages in use.", as.used_bytes))))
            return rc;
    }
    return 0;
}

enum MHD_Result api_metrics_get(http_req *req, struct MHD_Connection *conn) {
    http_buf b = {0};
    enum MHD_Result r;
    if (metrics_render(api_of(req), req->srv, &b))
        r = http_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
    else
        r = http_respond(req, conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", b.p,
                         b.len, NULL, NULL);
    http_buf_free(&b);
    return r;
}

/* GET /ready: 200 while the daemon takes work — the model is loaded and the engine thread
 * started (both before the server starts listening), the adapter store answers, and no
 * shutdown has begun; 503 otherwise, so a load balancer drains us before we stop. */
enum MHD_Result api_ready_get(http_req *req, struct MHD_Connection *conn) {
    api_server *s = api_of(req);
    bool draining = http_is_draining() || api_stopping(s);
    astore_stats as;
    bool store_ok = s->store && astore_get_stats(s->store, &as) == 0;
    bool ready = !draining && store_ok;
    /* a follower whose primary is away stays ready: it serves what it has, and says so */
    char repl[1024], body[1280];
    api_replication_ready(s, repl, sizeof repl);
    snprintf(body, sizeof body,
             "{\"status\":\"%s\",\"model\":true,\"engine\":%s,\"store\":%s,\"draining\":%s,\"replication\":%s}",
             ready ? "ready" : "not_ready", draining ? "false" : "true", store_ok ? "true" : "false",
             draining ? "true" : "false", repl);
    return http_respond(req, conn, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, "application/json", body,
                        strlen(body), ready ? NULL : "Retry-After", ready ? NULL : "5");
}
