/* tests/unit/test_http_metrics.c — the HTTP layer's metric primitives: histogram buckets
 * (cumulative, +Inf = count, sum), TTFT / inter-token accounting per choice, the bounded
 * tenant label table, and log.c's JSON string escape (valid JSON whatever the bytes). */
#include <pthread.h>

#include "lib/log.h"
#include "server/http/http_metrics.h"
#include "tests/harness/test.h"

TEST(histogram_cumulative) {
    http_histogram *h = &http_metrics_get()->e2e;
    uint64_t cum[HTTP_HIST_MAX_BUCKETS + 1];
    double sum;
    http_histogram_observe_ns(h, 0);                      /* first bucket */
    http_histogram_observe_ns(h, h->le_ns[0]);            /* le is inclusive */
    http_histogram_observe_ns(h, h->le_ns[0] + 1);        /* second bucket */
    http_histogram_observe_ns(h, h->le_ns[h->n - 1] * 2); /* +Inf only */
    http_histogram_snapshot(h, cum, &sum);
    ASSERT_EQ(cum[0], 2);
    ASSERT_EQ(cum[1], 3);
    ASSERT_EQ(cum[h->n - 1], 3);
    ASSERT_EQ(cum[h->n], 4);
    for (int k = 1; k <= h->n; k++) ASSERT(cum[k] >= cum[k - 1]);
    double want = (double)(h->le_ns[0] * 2 + 1 + h->le_ns[h->n - 1] * 2) / 1e9;
    ASSERT(fabs(sum - want) < 1e-9);
}

static void *observe_many(void *arg) {
    for (int i = 0; i < 100000; i++) http_histogram_observe_ns(arg, (uint64_t)i * 1000);
    return NULL;
}

TEST(histogram_concurrent) {
    http_histogram *h = &http_metrics_get()->itl;
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, observe_many, h);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    uint64_t cum[HTTP_HIST_MAX_BUCKETS + 1];
    double sum;
    http_histogram_snapshot(h, cum, &sum);
    ASSERT_EQ(cum[h->n], 400000);
}

TEST(ttft_then_itl) {
    http_metrics *m = http_metrics_get();
    uint64_t cum[HTTP_HIST_MAX_BUCKETS + 1];
    double sum;
    uint64_t t0 = http_now_ns(), last = 0;
    http_metrics_on_tokens(t0, &last, 0); /* a finish-only delta observes nothing */
    ASSERT_EQ(last, 0);
    http_metrics_on_tokens(t0, &last, 1); /* TTFT */
    ASSERT(last >= t0);
    http_metrics_on_tokens(t0, &last, 1); /* one gap */
    http_metrics_on_tokens(t0, &last, 3); /* one gap carrying three tokens: three ITLs */
    http_histogram_snapshot(&m->ttft, cum, &sum);
    ASSERT_EQ(cum[m->ttft.n], 1);
    http_histogram_snapshot(&m->itl, cum, &sum);
    ASSERT_EQ(cum[m->itl.n], 4);
    uint64_t t1 = http_now_ns(), l2 = 0;
    http_metrics_on_tokens(t1, &l2, 2); /* first delta with two tokens: TTFT + one ITL of 0 */
    http_histogram_snapshot(&m->ttft, cum, &sum);
    ASSERT_EQ(cum[m->ttft.n], 2);
    http_histogram_snapshot(&m->itl, cum, &sum);
    ASSERT_EQ(cum[m->itl.n], 5);
    ASSERT(cum[0] >= 1);
}

TEST(tenant_labels_bounded) {
    char out[80], name[32];
    ASSERT(http_tenant_label("", out, sizeof out));
    ASSERT(!strcmp(out, HTTP_TENANT_ANON));
    ASSERT(!http_tenant_label(HTTP_TENANT_OTHER, out, sizeof out)); /* never its own series */
    ASSERT(!strcmp(out, HTTP_TENANT_OTHER));
    int own = 1; /* the anonymous tenant above */
    for (int i = 0; i < 200; i++) {
        snprintf(name, sizeof name, "t%03d", i);
        bool o = http_tenant_label(name, out, sizeof out);
        own += o;
        ASSERT(!strcmp(out, o ? name : HTTP_TENANT_OTHER));
    }
    ASSERT_EQ(own, HTTP_TENANT_SERIES - 1); /* + "other" = HTTP_TENANT_SERIES series */
    /* Sticky: an early tenant keeps its series, a late one stays folded. */
    ASSERT(http_tenant_label("t000", out, sizeof out) && !strcmp(out, "t000"));
    ASSERT(!http_tenant_label("t199", out, sizeof out) && !strcmp(out, HTTP_TENANT_OTHER));
}

TEST(json_escape) {
    char buf[64];
    size_t len = 0;
    const char in[] = "a\"b\\c\n\x01\xff\xc3\xa9";
    log_json_escape(buf, sizeof buf, &len, in, sizeof in - 1);
    ASSERT(!strcmp(buf, "a\\\"b\\\\c\\n\\u0001\\ufffd\xc3\xa9"));
    /* Truncation never splits an escape. */
    char small[8];
    len = 0;
    size_t used = log_json_escape(small, sizeof small, &len, "\n\n\n\n", 4);
    ASSERT_EQ(used, 3);
    ASSERT(!strcmp(small, "\\n\\n\\n"));
    ASSERT_EQ(log_level_parse("warn"), LOG_WARN);
    ASSERT_EQ(log_level_parse("loud"), -1);
    ASSERT_EQ(log_format_parse("json"), LOG_FORMAT_JSON);
}

TEST_MAIN(histogram_cumulative, histogram_concurrent, ttft_then_itl, tenant_labels_bounded, json_escape)
