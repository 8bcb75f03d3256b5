/* tests/unit/test_engine_pool.c — prefill-only sequences that return a pooled hidden state
 * (gen_params.pool, engine_pool.c) on the default model:
 *   - the MEAN of a 300-token prompt (pooled over 5+ steps of at most 64 rows) equals the
 *     double-precision mean of the LAST states of its 300 prefixes (causal attention: row k
 *     of the prompt is the last row of prefix k+1), bit for bit;
 *   - several MEAN / LAST / CLASSIFY requests at once under a KV pool too small for all
 *     of them (preemption, recompute) give exactly their solo results;
 *   - a SEQ_CLS LoRA (tests/fixtures/endpoints/seqcls) survives the adapter blob: head
 *     bytes and label names equal after adapter_blob_write + adapter_blob_read.
 * The values themselves are checked against transformers/peft over HTTP
 * (tests/integration/test_classify_score_embed.py). */
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_blob.h"
#include "server/engine/engine.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/test.h"

#define NP 300

static kbackend *kb;
static model *m;
static tokenizer *tok;
static adapter *cls;

static void rig_open(void) {
    char err[512] = "";
    kb = kbackend_cpu_create(2);
    ASSERT(kb);
    if (model_load("models/stories260K", kb, &m, err, sizeof err) < 0) FAIL("model_load: %s", err);
    if (tokenizer_load("models/stories260K", &tok, err, sizeof err) < 0) FAIL("tokenizer_load: %s", err);
    if (model_load_adapter(m, "tests/fixtures/endpoints/seqcls", &cls, err, sizeof err) < 0) FAIL("seqcls: %s", err);
}

static void rig_close(void) {
    adapter_free(cls);
    tokenizer_free(tok);
    model_free(m);
    kbackend_destroy(kb);
}

static engine *open_engine(int kv_blocks, int max_context) {
    engine_config c;
    engine_config_default(&c);
    c.max_seqs = 8;
    c.max_batch_tokens = 64;
    c.kv_cache_mb = 64;
    c.kv_blocks = kv_blocks;
    c.max_context = max_context;
    engine *e = NULL;
    char err[512];
    if (engine_create(&c, m, kb, tok, &e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    ASSERT_EQ(engine_start(e), 0);
    return e;
}

static void prompt(int32_t *ids, int n, int seed) {
    ids[0] = 1;
    for (int i = 1; i < n; i++) ids[i] = 3 + (int32_t)((i * 37 + seed * 101) % 500);
}

static engine_request *submit(engine *e, const int32_t *ids, int n, int pool, const adapter *ad) {
    gen_params p;
    gen_params_default(&p);
    p.max_tokens = 0;
    p.pool = pool;
    p.adapter = ad;
    engine_request *r = engine_request_create(ids, n, &p);
    ASSERT(r);
    ASSERT_EQ(engine_submit(e, r), 0);
    return r;
}

/* Waits for r, returns its hidden vector (malloc'd) and count. */
static float *result(engine_request *r, int *n) {
    engine_request_wait(r);
    engine_delta d;
    ASSERT_EQ(engine_request_take(r, &d), 0);
    ASSERT(d.finished && d.finish == FINISH_LENGTH && d.hidden && d.n_tokens == 0);
    float *h = d.hidden;
    *n = d.n_hidden;
    d.hidden = NULL;
    engine_delta_free(&d);
    engine_request_unref(r);
    return h;
}

TEST(mean_equals_mean_of_prefix_last_states) {
    rig_open();
    engine *e = open_engine(0, 512);
    const int H = m->cfg.hidden_size;
    int32_t ids[NP];
    prompt(ids, NP, 1);
    int n;
    float *mean = result(submit(e, ids, NP, ENGINE_POOL_MEAN, NULL), &n);
    ASSERT_EQ(n, H);
    double *acc = calloc((size_t)H, sizeof *acc);
    for (int k = 1; k <= NP; k++) {
        float *last = result(submit(e, ids, k, ENGINE_POOL_LAST, NULL), &n);
        ASSERT_EQ(n, H);
        for (int i = 0; i < H; i++) acc[i] += last[i];
        free(last);
    }
    for (int i = 0; i < H; i++) ASSERT_EQ(mean[i], (float)(acc[i] / NP));
    free(acc);
    free(mean);
    engine_free(e);
    rig_close();
}

TEST(concurrent_under_preemption_equal_solo) {
    rig_open();
    enum { J = 6 };
    static int32_t ids[J][NP];
    int pools[J] = {ENGINE_POOL_MEAN, ENGINE_POOL_LAST, ENGINE_POOL_CLASSIFY, ENGINE_POOL_MEAN, ENGINE_POOL_CLASSIFY,
                    ENGINE_POOL_MEAN};
    float *solo[J];
    int ns[J];
    engine *e = open_engine(0, 512);
    for (int j = 0; j < J; j++) {
        prompt(ids[j], NP - 20 * j, j + 2);
        solo[j] = result(submit(e, ids[j], NP - 20 * j, pools[j], pools[j] == ENGINE_POOL_CLASSIFY ? cls : NULL), &ns[j]);
        ASSERT_EQ(ns[j], pools[j] == ENGINE_POOL_CLASSIFY ? 3 : m->cfg.hidden_size);
    }
    engine_free(e);
    e = open_engine(21, 320); /* 21 blocks of 16: one 300-token prompt at a time fits */
    engine_request *r[J];
    for (int j = 0; j < J; j++)
        r[j] = submit(e, ids[j], NP - 20 * j, pools[j], pools[j] == ENGINE_POOL_CLASSIFY ? cls : NULL);
    for (int j = 0; j < J; j++) {
        int n;
        float *h = result(r[j], &n);
        ASSERT_EQ(n, ns[j]);
        ASSERT(memcmp(h, solo[j], (size_t)n * sizeof(float)) == 0);
        free(h);
        free(solo[j]);
    }
    engine_stats st;
    engine_get_stats(e, &st);
    ASSERT(st.preemptions > 0);
    engine_free(e);
    rig_close();
}

TEST(seq_cls_head_and_labels_survive_the_blob) {
    rig_open();
    ASSERT_EQ(cls->n_labels, 3);
    ASSERT(!strcmp(cls->labels[0], "negative") && !strcmp(cls->labels[2], "positive"));
    ASSERT(cls->cls_head.data && cls->cls_head.rows == 3 && cls->cls_head.cols == m->cfg.hidden_size);
    void *blob = NULL;
    size_t len = 0;
    ASSERT_EQ(adapter_blob_write(cls, &blob, &len), 0);
    adapter_base b;
    ASSERT_EQ(model_adapter_base(m, &b), 0);
    adapter *back = NULL;
    char err[512];
    if (adapter_blob_read(blob, len, &b, &back, err, sizeof err) < 0) FAIL("blob read: %s", err);
    ASSERT_EQ(back->n_labels, 3);
    for (int i = 0; i < 3; i++) ASSERT(!strcmp(back->labels[i], cls->labels[i]));
    ASSERT(back->cls_head.rows == 3 && back->cls_head.dtype == KDT_F32);
    ASSERT(memcmp(back->cls_head.data, cls->cls_head.data, (size_t)3 * m->cfg.hidden_size * sizeof(float)) == 0);
    adapter_free(back);
    model_adapter_base_free(&b);
    free(blob);
    rig_close();
}

TEST_MAIN(mean_equals_mean_of_prefix_last_states, concurrent_under_preemption_equal_solo,
          seq_cls_head_and_labels_survive_the_blob)
