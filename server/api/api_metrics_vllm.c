/* server/api/api_metrics_vllm.c — the model-server metrics of the Kubernetes Gateway API
 * Inference Extension's protocol, in vLLM's shape, appended to GET /metrics:
 *
 *   peftd_lora_requests_info{max_lora,running_lora_adapters,waiting_lora_adapters} <unix ts>
 *   vllm:lora_requests_info{...same labels...}                                  <unix ts>
 *   vllm:num_requests_waiting{model_name}   = peftd_waiting_requests
 *   vllm:num_requests_running{model_name}   = peftd_running_requests
 *   vllm:gpu_cache_usage_perc{model_name}   = peftd_kv_cache_usage_ratio (0..1; vLLM V0's name)
 *   vllm:kv_cache_usage_perc{model_name}    = the same (vLLM V1's name)
 *
 * The vllm:-named families are aliases, given only with http.vllm_metric_aliases, so that
 * an endpoint picker with its defaults scrapes peftd unchanged; off by default because
 * `promtool check metrics` lints colons in metric names (vLLM's own exposition fails that
 * lint the same way). deploy/SCALING.md gives the picker flags for the peftd_ names. running_lora_adapters lists, comma-separated in name order, every
 * served adapter whose current version is resident in the slot pool (max_lora slots);
 * waiting_lora_adapters the adapters that queued requests wait for and that are not
 * resident, in queue order (engine_get_lora_info). The value is the time of the view, as
 * vLLM sets it. Adapter names are [A-Za-z0-9._-] segments joined by '/' (a tenant's:
 * "tenant/name"), so a list never holds a comma, quote or backslash.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/registry.h"
#include "lib/status.h"
#include "server/api/api_internal.h"

typedef struct {
    char (*shas)[65];  /* resident hashes, sorted */
    int n;
    http_buf *out;     /* the running list */
    int listed;
    int rc;
} running_walk;

static int cmp_sha(const void *a, const void *b) { return strcmp((const char *)a, (const char *)b); }

static void add_running(void *ud, const adapter_handle *h) {
    running_walk *w = ud;
    if (w->rc || !bsearch(h->meta.sha256, w->shas, (size_t)w->n, sizeof *w->shas, cmp_sha)) return;
    char key[ENGINE_LORA_KEY_MAX + 1];
    if (h->meta.owner[0]) snprintf(key, sizeof key, "%s%s/%s", w->listed ? "," : "", h->meta.owner, h->meta.name);
    else snprintf(key, sizeof key, "%s%s", w->listed ? "," : "", h->meta.name);
    w->rc = http_buf_puts(w->out, key);
    w->listed++;
}

/* The label values of the LoRA info gauge. */
static int lora_lists(api_server *s, engine_lora_info *li, http_buf *running, http_buf *waiting) {
    qsort(li->resident, (size_t)li->n_resident, sizeof li->resident[0], cmp_sha);
    running_walk w = {.shas = li->resident, .n = li->n_resident, .out = running};
    if (s->reg) registry_foreach(s->reg, add_running, &w);
    int rc = w.rc ? w.rc : http_buf_puts(running, "");
    for (int i = 0; i < li->n_waiting && !rc; i++) {
        if (i) rc = http_buf_puts(waiting, ",");
        if (!rc) rc = http_buf_puts(waiting, li->waiting[i]);
    }
    return rc ? rc : http_buf_puts(waiting, "");
}

static int put_lora_info(api_server *s, http_buf *b, const char *name) {
    engine_lora_info *li = malloc(sizeof *li);
    if (!li) return PEFTD_ENOMEM;
    int rc = 0;
    if (engine_get_lora_info(s->e, li) == 0) {
        http_buf run = {0}, wait = {0};
        rc = lora_lists(s, li, &run, &wait);
        char head[512], line[160];
        snprintf(head, sizeof head,
                 "# HELP %s Adapters resident in the slot pool (running_lora_adapters) and those queued "
                 "requests wait for (waiting_lora_adapters); the value is the view's unix time.\n"
                 "# TYPE %s gauge\n%s{max_lora=\"%d\",running_lora_adapters=\"",
                 name, name, name, li->max_lora);
        snprintf(line, sizeof line, "\"} %.3f\n", li->updated);
        if (!rc) rc = http_buf_puts(b, head);
        if (!rc) rc = http_buf_puts(b, run.p);
        if (!rc) rc = http_buf_puts(b, "\",waiting_lora_adapters=\"");
        if (!rc) rc = http_buf_puts(b, wait.p);
        if (!rc) rc = http_buf_puts(b, line);
        http_buf_free(&run);
        http_buf_free(&wait);
    }
    free(li);
    return rc;
}

/* A gauge with vLLM's model_name label; the served id is a model directory's name, which
 * may hold any byte but a slash: quotes, backslashes and line feeds are escaped. */
static int put_vllm_gauge(http_buf *b, const char *name, const char *help, const char *model, double v) {
    char esc[512];
    size_t o = 0;
    for (const char *p = model; *p && o + 3 < sizeof esc; p++) {
        if (*p == '\\' || *p == '"' || *p == '\n') esc[o++] = '\\';
        esc[o++] = *p == '\n' ? 'n' : *p;
    }
    esc[o] = '\0';
    char line[1024];
    snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s gauge\n%s{model_name=\"%s\"} %.6g\n", name, help, name, name,
             esc, v);
    return http_buf_puts(b, line);
}

int api_metrics_vllm(api_server *s, const engine_stats *stats, http_buf *b) {
    const engine_stats st = *stats; /* the scrape's one snapshot (its peftd_ families read it too) */
    double kv = st.kv_blocks_total ? (double)st.kv_blocks_used / st.kv_blocks_total : 0.0;
    char model[256];
    http_utf8_sanitize(s->m->name, model, sizeof model);
    int rc = put_lora_info(s, b, "peftd_lora_requests_info");
    if (rc || !s->cfg.vllm_metric_aliases) return rc;
    rc = put_lora_info(s, b, "vllm:lora_requests_info");
    if (!rc) rc = put_vllm_gauge(b, "vllm:num_requests_waiting", "Requests queued for admission (alias of peftd_waiting_requests).", model, st.waiting);
    if (!rc) rc = put_vllm_gauge(b, "vllm:num_requests_running", "Sequences in the running batch (alias of peftd_running_requests).", model, st.running);
    if (!rc) rc = put_vllm_gauge(b, "vllm:gpu_cache_usage_perc", "KV-cache usage, 1 = full (alias of peftd_kv_cache_usage_ratio).", model, kv);
    if (!rc) rc = put_vllm_gauge(b, "vllm:kv_cache_usage_perc", "KV-cache usage, 1 = full (alias of peftd_kv_cache_usage_ratio).", model, kv);
    return rc;
}
