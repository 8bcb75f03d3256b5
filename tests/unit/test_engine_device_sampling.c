/* tests/unit/test_engine_device_sampling.c — the engine's device-sampling path
 * (engine_config.device_sampling: tokens chosen by kbackend_ops.sample, one id per sequence
 * downloaded) against its host path on models/stories260K with the CPU backend forced through
 * it: a mixed batch (greedy; seeded temperature, top-k, top-p, both; a repetition-penalty
 * request, which sends its steps to the host path; one without logprobs) gives the same ids,
 * logprobs and text either way, alone and batched (batch invariance), and the sample op really
 * ran (a counting wrapper around the backend's table) only when asked. */
#include <stdlib.h>
#include <string.h>

#include "server/engine/engine.h"
#include "server/engine/engine_internal.h"
#include "tests/harness/test.h"

static const char *MODEL_DIR = "models/stories260K";
#define N_REQ 7
#define MAX_TOK 24

static const kbackend_ops *g_inner;
static kbackend_ops g_wrapped;
static int g_sample_calls; /* engine thread writes; read after engine_free (joined) */
static uint64_t g_captures, g_replays; /* decode graphs (PEFTD_CUDA_GRAPHS=1), read when idle */
static int w_sample(kbackend *kb, const ksample_args *a) {
    g_sample_calls++;
    return g_inner->sample(kb, a);
}

typedef struct {
    int32_t ids[MAX_TOK];
    float lp[MAX_TOK];
    int n;
    char text[1024];
} outcome;

static gen_params req_params(int i) {
    gen_params p;
    gen_params_default(&p);
    p.max_tokens = i == 5 ? 10 : MAX_TOK; /* the penalty request ends early: later steps go device */
    p.ignore_eos = true;
    p.logprobs = i == 6 ? -1 : 0;
    p.has_seed = true;
    p.seed = 1000 + (uint64_t)i;
    static const float T[N_REQ] = {0, 0.8f, 1.0f, 1.2f, 0.7f, 0.9f, 1.1f};
    static const int K[N_REQ] = {0, 0, 20, 0, 5, 0, 50};
    static const float P[N_REQ] = {1, 1, 1, 0.9f, 0.5f, 1, 0.8f};
    p.temperature = T[i], p.top_k = K[i], p.top_p = P[i];
    if (i == 5) p.repetition_penalty = 1.3f;
    return p;
}

/* Runs requests `which` (indices into req_params) together on a fresh engine. */
static void run(int device_sampling, const int *which, int n, outcome *out, int *sample_calls) {
    char err[512] = "";
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    g_inner = kb->ops;
    g_wrapped = *kb->ops;
    g_wrapped.sample = w_sample;
    kb->ops = &g_wrapped;
    g_sample_calls = 0;
    model *m;
    tokenizer *tok;
    engine *e;
    if (model_load(MODEL_DIR, kb, &m, err, sizeof err) < 0) FAIL("model_load: %s", err);
    if (tokenizer_load(MODEL_DIR, &tok, err, sizeof err) < 0) FAIL("tokenizer_load: %s", err);
    engine_config c;
    engine_config_default(&c);
    c.kv_cache_mb = 64;
    c.device_sampling = device_sampling;
    if (engine_create(&c, m, kb, tok, &e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    engine_request *rq[N_REQ];
    for (int j = 0; j < n; j++) {
        int i = which[j];
        int32_t prompt[6] = {1, 20 + i, 40 + 3 * i, 7, 99, 300 - i};
        gen_params p = req_params(i);
        ASSERT((rq[j] = engine_request_create(prompt, 6, &p)));
        ASSERT_EQ(engine_submit(e, rq[j]), 0); /* before the start: one batch from the first step */
    }
    ASSERT_EQ(engine_start(e), 0);
    for (int j = 0; j < n; j++) {
        engine_request_wait(rq[j]);
        engine_delta d;
        ASSERT_EQ(engine_request_take(rq[j], &d), 0);
        if (!d.finished || d.finish != FINISH_LENGTH) FAIL("request %d: %s %s", which[j], finish_reason_str(d.finish), d.error);
        outcome *o = &out[which[j]];
        memset(o, 0, sizeof *o);
        o->n = d.n_tokens;
        for (int k = 0; k < d.n_tokens && k < MAX_TOK; k++) o->ids[k] = d.tokens[k].id, o->lp[k] = d.tokens[k].logprob;
        snprintf(o->text, sizeof o->text, "%s", d.text);
        engine_delta_free(&d);
        engine_request_unref(rq[j]);
    }
    engine__graphs_stats(e, &g_captures, &g_replays); /* every request done: the engine is idle */
    engine_free(e);
    *sample_calls = g_sample_calls;
    tokenizer_free(tok);
    model_free(m);
    kbackend_destroy(kb);
}

static void same(const outcome *a, const outcome *b, int i, const char *what) {
    if (a->n != b->n) FAIL("%s: request %d: %d vs %d tokens", what, i, a->n, b->n);
    for (int k = 0; k < a->n; k++) {
        if (a->ids[k] != b->ids[k]) FAIL("%s: request %d token %d: %d vs %d", what, i, k, a->ids[k], b->ids[k]);
        if (memcmp(&a->lp[k], &b->lp[k], sizeof(float)))
            FAIL("%s: request %d token %d: logprob %.9g vs %.9g", what, i, k, a->lp[k], b->lp[k]);
    }
    if (strcmp(a->text, b->text)) FAIL("%s: request %d: text differs", what, i);
}

TEST(device_sampling_equals_host_sampling_in_a_mixed_batch) {
    int all[N_REQ] = {0, 1, 2, 3, 4, 5, 6}, calls_host, calls_dev;
    outcome host[N_REQ], dev[N_REQ];
    run(0, all, N_REQ, host, &calls_host);
    run(1, all, N_REQ, dev, &calls_dev);
    ASSERT_EQ(calls_host, 0);
    /* the penalty request (10 tokens) keeps its steps on the host; the 14 later decode steps
     * have only plain rows and go to the device */
    if (calls_dev < MAX_TOK - 10) FAIL("sample op ran %d times, want >= %d", calls_dev, MAX_TOK - 10);
    for (int i = 0; i < N_REQ; i++) {
        ASSERT_EQ(host[i].n, i == 6 ? 0 : (i == 5 ? 10 : MAX_TOK));
        same(&host[i], &dev[i], i, "host vs device sampling");
    }
    /* the samplers really sample: the seeded temperature requests differ from greedy */
    ASSERT(memcmp(host[0].ids, host[1].ids, sizeof host[0].ids) != 0);
}

TEST(device_sampling_is_batch_invariant) {
    int all[N_REQ] = {0, 1, 2, 3, 4, 5, 6}, calls;
    outcome batch[N_REQ], alone[N_REQ];
    run(1, all, N_REQ, batch, &calls);
    for (int i = 0; i < N_REQ; i++) {
        run(1, &i, 1, alone, &calls);
        if (i != 5 && calls < MAX_TOK - 1) FAIL("request %d alone: sample op ran %d times", i, calls);
        same(&batch[i], &alone[i], i, "batched vs alone");
    }
}

/* PEFTD_CUDA_GRAPHS=1 (engine_graphs.c): device-sampling steps run as a transfers pass and an
 * ops pass keyed by the step's signature (captured/replayed on CUDA; split only, here): the
 * same tokens and logprobs as unsplit steps, and steady decode steps reuse their signature. */
TEST(graph_steps_equal_plain_steps) {
    int all[N_REQ] = {0, 1, 2, 3, 4, 5, 6}, calls;
    outcome plain[N_REQ], graphs[N_REQ];
    unsetenv("PEFTD_CUDA_GRAPHS");
    run(1, all, N_REQ, plain, &calls);
    ASSERT_EQ(g_replays, 0);
    setenv("PEFTD_CUDA_GRAPHS", "1", 1);
    run(1, all, N_REQ, graphs, &calls);
    unsetenv("PEFTD_CUDA_GRAPHS");
    for (int i = 0; i < N_REQ; i++) same(&plain[i], &graphs[i], i, "plain vs graph steps");
    /* 6 rows decode from step 11 to 24 with one shape: a warm-up, one capture, the rest replays */
    if (g_captures < 1 || g_replays < 8) FAIL("captures %llu, replays %llu", (unsigned long long)g_captures,
                                              (unsigned long long)g_replays);
}

TEST_MAIN(device_sampling_equals_host_sampling_in_a_mixed_batch, device_sampling_is_batch_invariant,
          graph_steps_equal_plain_steps)
