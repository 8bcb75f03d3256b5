/* clients/loadgen/loadgen_client.c — one peftd-loadgen client's requests: its easy handle,
 * the request it sends (tenant, zipf-chosen adapter, prompt; JSON body and headers), the
 * SSE parsing of the answer as it arrives, and counting the finished request into the run's
 * totals (ok only for 200 and, streaming, data: [DONE] with no error event).
 * Calls only loadgen_util.c.
 */
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "clients/loadgen/loadgen_internal.h"

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
                        double now = lg_now_s();
                        if (c->chunks == 0)
                            c->t_first = now;
                        else
                            lg_samples_add(&c->itl, now - c->t_last);
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
    double u = lg_rng_unit(&s->rng);
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

int lg_client_init(const lg_config *cfg, lg_client *c, int id) {
    c->id = id;
    if (!(c->h = curl_easy_init())) return -1;
    curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c->h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->h, CURLOPT_PRIVATE, c);
    curl_easy_setopt(c->h, CURLOPT_ERRORBUFFER, c->err);
    curl_easy_setopt(c->h, CURLOPT_TIMEOUT_MS, (long)(cfg->timeout_s * 1000));
    /* 30 s to connect: a listening server accepts in far less, even under load. */
    curl_easy_setopt(c->h, CURLOPT_CONNECTTIMEOUT_MS, 30000L);
    curl_easy_setopt(c->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->h, CURLOPT_TCP_NODELAY, 1L);
    return 0;
}

int lg_client_start(lg_state *s, lg_client *c) {
    const lg_config *cfg = &s->cfg;
    c->tenant = (int)(lg_rng_next(&s->rng) % (uint64_t)cfg->tenants);
    c->adapter = pick_adapter(s);
    const char *prompt = lg_prompts[lg_rng_next(&s->rng) % LG_N_PROMPTS];

    cJSON *o = cJSON_CreateObject();
    const char *ad = cfg->adapters[c->adapter];
    cJSON_AddStringToObject(o, "model", ad ? ad : cfg->model);
    cJSON_AddStringToObject(o, "prompt", prompt);
    cJSON_AddNumberToObject(o, "max_tokens", cfg->max_tokens);
    cJSON_AddNumberToObject(o, "temperature", cfg->temperature);
    cJSON_AddNumberToObject(o, "seed", (double)(lg_rng_next(&s->rng) >> 33));
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
    c->t_start = lg_now_s();
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

void lg_client_finish(lg_state *s, lg_client *c, CURLcode res) {
    double t = lg_now_s();
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
        lg_samples_add(&s->latency, t - c->t_start);
        if (c->chunks) lg_samples_add(&s->ttft, c->t_first - c->t_start);
        for (size_t i = 0; i < c->itl.n; i++) lg_samples_add(&s->itl, c->itl.v[i]);
    } else {
        s->failed++;
        tn->failed++;
    }
    s->t_last_done = t;
}
