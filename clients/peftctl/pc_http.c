/* clients/peftctl/pc_http.c — see pc_http.h. */
#include "clients/peftctl/pc_http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

/* Redraw the progress bar at most this often: a 10 Hz bar looks live without costing
 * anything next to the transfer. */
#define PC_PROGRESS_INTERVAL_S 0.1
#define PC_BAR_WIDTH 30

typedef struct {
    const pc_req *r;
    CURL *h;
    pc_resp *out;
    size_t cap;
    bool stopped; /* on_chunk asked to stop */
    /* progress */
    bool bar;
    bool drawn;
    bool waiting_shown;
    double t0, last;
} pc_xfer;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud) {
    pc_xfer *x = ud;
    size_t n = size * nmemb;
    long status = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
    if (x->r->on_chunk && status >= 200 && status < 300) {
        if (!x->r->on_chunk(x->r->ud, data, n)) {
            x->stopped = true;
            return 0; /* aborts the transfer */
        }
        return n;
    }
    pc_resp *o = x->out;
    if (o->len + n + 1 > x->cap) {
        size_t cap = x->cap ? x->cap : 4096;
        while (cap < o->len + n + 1) cap *= 2;
        char *p = realloc(o->body, cap);
        if (!p) return 0;
        o->body = p;
        x->cap = cap;
    }
    memcpy(o->body + o->len, data, n);
    o->len += n;
    o->body[o->len] = '\0';
    return n;
}

static void human_bytes(double b, char *buf, size_t len) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        u++;
    }
    snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    pc_xfer *x = ud;
    if (!x->bar || ultotal <= 0) return 0;
    double t = now_s();
    bool done = ulnow >= ultotal;
    if (done && x->waiting_shown) return 0;
    if (!done && t - x->last < PC_PROGRESS_INTERVAL_S) return 0;
    x->last = t;
    double frac = (double)ulnow / (double)ultotal;
    int fill = (int)(frac * PC_BAR_WIDTH);
    char bar[PC_BAR_WIDTH + 1];
    for (int i = 0; i < PC_BAR_WIDTH; i++) bar[i] = i < fill ? '#' : '.';
    bar[PC_BAR_WIDTH] = '\0';
    char now_b[32], tot_b[32], rate_b[32];
    human_bytes((double)ulnow, now_b, sizeof now_b);
    human_bytes((double)ultotal, tot_b, sizeof tot_b);
    double dt = t - x->t0;
    human_bytes(dt > 0 ? (double)ulnow / dt : 0, rate_b, sizeof rate_b);
    fprintf(stderr, "\r\033[K[%s] %3d%%  %s / %s  %s/s%s", bar, (int)(frac * 100), now_b, tot_b, rate_b,
            done ? "  validating..." : "");
    fflush(stderr);
    x->drawn = true;
    if (done) x->waiting_shown = true;
    return 0;
}

int pc_request(const pc_ctx *c, const pc_req *r, pc_resp *out) {
    memset(out, 0, sizeof *out);
    CURL *h = curl_easy_init();
    if (!h) {
        fprintf(stderr, "peftctl: cannot initialise libcurl\n");
        return PC_NOCONNECT;
    }
    size_t base_len = strlen(c->url);
    while (base_len && c->url[base_len - 1] == '/') base_len--;
    size_t ulen = base_len + strlen(r->path) + 1;
    char *url = malloc(ulen);
    struct curl_slist *hdrs = NULL;
    char *auth = NULL;
    int rc = PC_NOCONNECT;
    if (!url) goto out;
    snprintf(url, ulen, "%.*s%s", (int)base_len, c->url, r->path);

    pc_xfer x = {.r = r, .h = h, .out = out};
    x.bar = r->progress && isatty(STDERR_FILENO);
    x.t0 = x.last = now_s();
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "peftctl/1");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    if (c->timeout_s > 0) curl_easy_setopt(h, CURLOPT_TIMEOUT, c->timeout_s);
    if (c->api_key && c->api_key[0]) {
        size_t alen = strlen(c->api_key) + 32;
        if (!(auth = malloc(alen))) goto out;
        snprintf(auth, alen, "Authorization: Bearer %s", c->api_key);
        hdrs = curl_slist_append(hdrs, auth);
    }
    if (r->json) {
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, r->json);
    }
    if (r->mime) curl_easy_setopt(h, CURLOPT_MIMEPOST, r->mime);
    if (strcmp(r->method, "GET") != 0 && strcmp(r->method, "POST") != 0)
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, r->method);
    if (hdrs) curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    if (x.bar) {
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, &x);
    }

    CURLcode cr = curl_easy_perform(h);
    if (x.drawn) {
        fprintf(stderr, "\r\033[K");
        fflush(stderr);
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
    if (cr == CURLE_WRITE_ERROR && x.stopped) cr = CURLE_OK;
    if (cr != CURLE_OK) {
        /* An answer that arrived before the connection broke (the server refusing an
         * upload before reading it all) still counts. */
        if (out->status >= 400 && out->len) {
            rc = PC_OK;
            goto out;
        }
        fprintf(stderr, "peftctl: %s: %s\n", c->url, errbuf[0] ? errbuf : curl_easy_strerror(cr));
        if (cr == CURLE_COULDNT_CONNECT || cr == CURLE_COULDNT_RESOLVE_HOST)
            fprintf(stderr, "peftctl: is peftd running? (set --url or PEFTD_URL)\n");
        goto out;
    }
    if (!out->body && !(out->body = calloc(1, 1))) goto out;
    rc = PC_OK;
out:
    if (rc != PC_OK) pc_resp_free(out);
    curl_slist_free_all(hdrs);
    free(auth);
    free(url);
    curl_easy_cleanup(h);
    return rc;
}

void pc_resp_free(pc_resp *r) {
    free(r->body);
    r->body = NULL;
    r->len = 0;
}

int pc_report_error(const pc_resp *r) {
    cJSON *root = r->body ? cJSON_ParseWithLength(r->body, r->len) : NULL;
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(err, "message");
    if (cJSON_IsString(msg))
        fprintf(stderr, "peftctl: %s (HTTP %ld)\n", msg->valuestring, r->status);
    else
        fprintf(stderr, "peftctl: the server answered HTTP %ld%s%.*s\n", r->status, r->len ? ": " : "",
                (int)(r->len > 300 ? 300 : r->len), r->body ? r->body : "");
    cJSON_Delete(root);
    return PC_REFUSED;
}

char *pc_escape(const char *name) { return curl_easy_escape(NULL, name, 0); }
