/* tests/unit/test_engine_rope.c — greedy generation through the real engine on models with
 * sequence-length-dependent rope_scaling, against transformers' generate() (fixtures:
 * tests/fixtures/rope_seqlen, make_seqlen_rope_fixtures.py): dynamic NTK past
 * max_position_embeddings (the engine's context is max_position_embeddings * factor), and
 * longrope on Phi3 across original_max_position_embeddings, where the engine recomputes the
 * sequence with the long table (step.c step_longrope_recompute). Every token id must equal
 * transformers', and each token's logprob must equal log_softmax of transformers' logits at
 * that step (1e-4). Also: alone vs batched with a prompt already past the original max
 * (short and long tables in one step), and under KV-pool preemption (recompute by
 * re-prefill keeps the rows' tables). */
#include <cJSON.h>
#include <math.h>
#include <unistd.h>

#include "server/engine/engine.h"
#include "tests/harness/test.h"

#define N_MAX 64

typedef struct {
    kbackend *kb;
    model *m;
    tokenizer *tok;
    engine *e;
} rig;

static void rig_open(rig *r, const char *dir, int max_batch_tokens, int kv_blocks) {
    char err[512] = "";
    memset(r, 0, sizeof *r);
    r->kb = kbackend_cpu_create(2);
    ASSERT(r->kb);
    if (model_load(dir, r->kb, &r->m, err, sizeof err) < 0) FAIL("model_load %s: %s", dir, err);
    if (tokenizer_load(dir, &r->tok, err, sizeof err) < 0) FAIL("tokenizer_load: %s", err);
    engine_config c;
    engine_config_default(&c);
    c.max_seqs = 4;
    c.max_batch_tokens = max_batch_tokens;
    c.max_queue = 16;
    c.kv_cache_mb = 16;
    c.kv_blocks = kv_blocks;
    c.block_size = 4;
    if (engine_create(&c, r->m, r->kb, r->tok, &r->e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    ASSERT_EQ(engine_start(r->e), 0);
}

static void rig_close(rig *r) {
    engine_free(r->e);
    tokenizer_free(r->tok);
    model_free(r->m);
    kbackend_destroy(r->kb);
}

typedef struct {
    int32_t prompt[N_MAX], tokens[N_MAX];
    int n_prompt, n_new;
    double lp[N_MAX]; /* log_softmax of transformers' logits at each step, at its token */
} gen_ref;

static void ref_load(const char *dir, gen_ref *g) {
    char path[256];
    size_t len;
    snprintf(path, sizeof path, "%s/reference.json", dir);
    char *text = test_read_file(path, &len);
    if (!text) FAIL("cannot read %s (missing fixture)", path);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    ASSERT(root);
    const cJSON *gen = cJSON_GetObjectItem(root, "generate"), *v, *row;
    ASSERT(gen);
    memset(g, 0, sizeof *g);
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(gen, "prompt")) g->prompt[g->n_prompt++] = v->valueint;
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(gen, "tokens")) g->tokens[g->n_new++] = v->valueint;
    int k = 0;
    cJSON_ArrayForEach(row, cJSON_GetObjectItem(gen, "logits")) {
        double mx = -INFINITY, sum = 0;
        cJSON_ArrayForEach(v, row) mx = v->valuedouble > mx ? v->valuedouble : mx;
        cJSON_ArrayForEach(v, row) sum += exp(v->valuedouble - mx);
        g->lp[k] = cJSON_GetArrayItem(row, g->tokens[k])->valuedouble - mx - log(sum);
        k++;
    }
    ASSERT_EQ(k, g->n_new);
    cJSON_Delete(root);
}

static engine_request *submit(rig *r, const int32_t *ids, int n, int max_tokens) {
    gen_params p;
    gen_params_default(&p);
    p.max_tokens = max_tokens;
    p.temperature = 0;
    p.logprobs = 0;
    p.ignore_eos = true;
    engine_request *q = engine_request_create(ids, n, &p);
    ASSERT(q);
    int st = engine_submit(r->e, q);
    if (st < 0) FAIL("engine_submit: %s", peftd_strerror(st));
    return q;
}

/* Waits for q; checks its tokens and logprobs against g (g may be NULL: only collects). */
static int collect(engine_request *q, const gen_ref *g, int32_t *ids, float *lps, const char *what) {
    engine_request_wait(q);
    engine_delta d;
    ASSERT_EQ(engine_request_take(q, &d), 0);
    ASSERT(d.finished);
    int n = d.n_tokens < N_MAX ? d.n_tokens : N_MAX;
    double md = 0;
    for (int i = 0; i < n; i++) {
        ids[i] = d.tokens[i].id;
        lps[i] = d.tokens[i].logprob;
    }
    engine_delta_free(&d);
    engine_request_unref(q);
    if (!g) return n;
    ASSERT_EQ(n, g->n_new);
    for (int i = 0; i < n; i++) {
        if (ids[i] != g->tokens[i]) FAIL("%s: token %d is %d, transformers %d", what, i, ids[i], g->tokens[i]);
        double dd = fabs(lps[i] - g->lp[i]);
        if (dd > md) md = dd;
    }
    printf("    %-34s %d tokens equal, max |logprob diff| %.3g\n", what, n, md);
    if (!(md <= 1e-4)) FAIL("%s: logprob differs by %.3g", what, md);
    return n;
}

static void wait_idle(rig *r, engine_stats *st) {
    for (int i = 0; i < 500; i++) {
        engine_get_stats(r->e, st);
        if (st->kv_blocks_used == 0 && st->running == 0) return;
        usleep(10000);
    }
}

/* A prompt past the original max (long from the start) from the case's own prefill list. */
static int long_prompt(const char *dir, int32_t *ids) {
    char path[256];
    size_t len;
    snprintf(path, sizeof path, "%s/reference.json", dir);
    char *text = test_read_file(path, &len);
    ASSERT(text);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *v, *p = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "prefill"), 1);
    int n = 0;
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(p, "input_ids")) ids[n++] = v->valueint;
    cJSON_Delete(root);
    return n;
}

/* Alone; then with a long-prompt request in the same steps (chunked prefill budget 8);
 * then three copies at once in a 20-block pool (16 hold one full context) (preemptions). */
static void check_engine_model(const char *name, const char *model_dir, bool longrope) {
    char dir[128];
    snprintf(dir, sizeof dir, "tests/fixtures/rope_seqlen/%s", name);
    gen_ref g;
    ref_load(dir, &g);
    int32_t ids[N_MAX], other[N_MAX], lprompt[N_MAX];
    float lps[N_MAX], olps[N_MAX];
    char what[96];
    engine_stats st;
    rig r;

    rig_open(&r, model_dir, 64, 0);
    snprintf(what, sizeof what, "%s alone", name);
    collect(submit(&r, g.prompt, g.n_prompt, g.n_new), &g, ids, lps, what);
    int nl = long_prompt(dir, lprompt);
    int other_new = 8;
    /* the long prompt alone, for the batched comparison */
    int n_o = collect(submit(&r, lprompt, nl, other_new), NULL, other, olps, NULL);
    wait_idle(&r, &st);
    if (longrope) ASSERT_EQ(st.rope_recomputes, 1);
    rig_close(&r);

    rig_open(&r, model_dir, 8, 0);
    engine_request *a = submit(&r, g.prompt, g.n_prompt, g.n_new), *b = submit(&r, lprompt, nl, other_new);
    snprintf(what, sizeof what, "%s batched, prefill chunks of 8", name);
    collect(a, &g, ids, lps, what);
    int32_t ids2[N_MAX];
    float lps2[N_MAX];
    ASSERT_EQ(collect(b, NULL, ids2, lps2, NULL), n_o);
    for (int i = 0; i < n_o; i++)
        if (ids2[i] != other[i] || fabsf(lps2[i] - olps[i]) > 1e-5f)
            FAIL("%s: long-prompt request token %d differs batched (%d vs %d)", name, i, ids2[i], other[i]);
    rig_close(&r);

    rig_open(&r, model_dir, 64, 20);
    engine_request *q[3];
    for (int i = 0; i < 3; i++) q[i] = submit(&r, g.prompt, g.n_prompt, g.n_new);
    for (int i = 0; i < 3; i++) {
        snprintf(what, sizeof what, "%s x3 in 20 KV blocks (#%d)", name, i);
        collect(q[i], &g, ids, lps, what);
    }
    wait_idle(&r, &st);
    printf("    %-34s preemptions %llu, longrope recomputes %llu\n", model_dir, (unsigned long long)st.preemptions,
           (unsigned long long)st.rope_recomputes);
    ASSERT(st.preemptions > 0);
    if (longrope) ASSERT(st.rope_recomputes >= 3);
    rig_close(&r);
}

static void check_engine(const char *name, bool longrope) {
    char dir[128];
    snprintf(dir, sizeof dir, "tests/fixtures/rope_seqlen/%s", name);
    check_engine_model(name, dir, longrope);
}

TEST(engine_dynamic_past_max_positions) {
    check_engine("dynamic-2", false);
    rig r;
    rig_open(&r, "tests/fixtures/rope_seqlen/dynamic-2", 64, 0);
    ASSERT_EQ(engine_context_length(r.e), 64); /* 32 * factor 2 */
    rig_close(&r);
}

TEST(engine_longrope_crossing_recomputes_phi35) { check_engine("longrope-full", true); }
TEST(engine_longrope_crossing_recomputes_phi4mini) { check_engine("longrope-partial", true); }

/* The same models as llama.cpp's converter writes them (make_gguf_model_fixtures.py
 * make_longrope: rope_factors_short / _long tensors, rope.scaling.attn_factor, bf16): the rope
 * configuration the GGUF loader builds is the HF directory's, field by field, and the engine
 * serves transformers' tokens across the original max. */
static void check_gguf(const char *name) {
    char hf[128], gg[128], err[512] = "";
    snprintf(hf, sizeof hf, "tests/fixtures/rope_seqlen/%s", name);
    snprintf(gg, sizeof gg, "tests/fixtures/gguf_models/phi3-%s", name);
    kbackend *kb = kbackend_cpu_create(1);
    model *a = NULL, *b = NULL;
    if (model_load(hf, kb, &a, err, sizeof err) < 0) FAIL("%s: %s", hf, err);
    if (model_load(gg, kb, &b, err, sizeof err) < 0) FAIL("%s: %s", gg, err);
    ASSERT(b->gguf != NULL);
    const rope_scaling *x = &a->cfg.rope, *y = &b->cfg.rope;
    ASSERT_EQ(y->kind, ROPE_LONGROPE);
    ASSERT_EQ(x->rot_dim, y->rot_dim);
    ASSERT_EQ(x->original_max_position_embeddings, y->original_max_position_embeddings);
    ASSERT_EQ(a->cfg.max_position_embeddings, b->cfg.max_position_embeddings);
    ASSERT(x->factor == y->factor);
    ASSERT(!memcmp(x->short_factor, y->short_factor, sizeof(float) * (size_t)(x->rot_dim / 2)));
    ASSERT(!memcmp(x->long_factor, y->long_factor, sizeof(float) * (size_t)(x->rot_dim / 2)));
    /* the file's attn_factor is the converter's f32 of the same formula */
    printf("    %s: rot_dim %d, original max %d, factor %g, attention_factor %.9g (HF) / %.9g (GGUF)\n", gg, y->rot_dim,
           y->original_max_position_embeddings, y->factor, x->attention_factor, y->attention_factor);
    ASSERT((float)x->attention_factor == (float)y->attention_factor);
    model_free(a);
    model_free(b);
    kbackend_destroy(kb);
    check_engine_model(name, gg, true);
}

TEST(engine_longrope_gguf_phi35) { check_gguf("longrope-full"); }
TEST(engine_longrope_gguf_phi4mini) { check_gguf("longrope-partial"); }

TEST_MAIN(engine_dynamic_past_max_positions, engine_longrope_crossing_recomputes_phi35,
          engine_longrope_crossing_recomputes_phi4mini, engine_longrope_gguf_phi35, engine_longrope_gguf_phi4mini)
