/* tests/unit/test_lora_bias_variants.c — PEFT LoRA with trained projection biases (bias "all"
 * / "lora_only", issue 16) on a base that has biases: tests/fixtures/qwen2/llama_bias (a tiny
 * LlamaForCausalLM with attention_bias, GQA), adapters and references from
 * tests/fixtures/adapters/make_lora_variant_fixtures.py, in tests/fixtures/adapters_bias_base/
 * (PEFT 0.21.2 reloaded from disk):
 *   - logits of every prompt position through llama_forward (one segment) within TOL;
 *   - 24 greedy tokens through the engine equal PEFT's;
 *   - a mixed batch (both adapters, a plain LoRA on the same base, base-only sequences) gives
 *     each sequence the tokens and logprobs, bit for bit, it gets alone: the per-segment bias
 *     replacement must not leak into other segments' rows.
 * Tolerance 1e-4 on logits, as test_adapter_forward.c (f32 math on the stored weights; only
 * the summation order differs). A bias left at the base's moves logits by > 1e-2 here.
 */
#include <cJSON.h>
#include <math.h>

#include "adapter_store/adapter_blob.h"
#include "server/engine/engine.h"
#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/greedy_run.h"
#include "tests/harness/test.h"

#define TOL 1e-4
#define N_GREEDY 24
#define BASE "tests/fixtures/qwen2/llama_bias"

static const char *FIX[] = {"lora_bias_all", "lora_bias_only"};

typedef struct {
    int n_cases, n_ids[4], vocab;
    int32_t ids[4][64], greedy[4][N_GREEDY];
    float *logits[4];
} reference;

static void ref_load(const char *name, reference *rf) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/adapters_bias_base/%s/reference.json", name);
    size_t len;
    char *text = test_read_file(path, &len);
    if (!text) FAIL("cannot read %s", path);
    cJSON *root = cJSON_ParseWithLength(text, len), *c, *v, *r;
    ASSERT(root);
    ASSERT_STREQ(cJSON_GetObjectItem(root, "base")->valuestring, BASE);
    memset(rf, 0, sizeof *rf);
    rf->vocab = 512;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        ASSERT(rf->n_cases < 4);
        int k = rf->n_cases++, g = 0, row = 0;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "input_ids")) rf->ids[k][rf->n_ids[k]++] = v->valueint;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "greedy")) if (g < N_GREEDY) rf->greedy[k][g++] = v->valueint;
        ASSERT_EQ(g, N_GREEDY);
        rf->logits[k] = malloc(sizeof(float) * (size_t)rf->n_ids[k] * rf->vocab);
        cJSON_ArrayForEach(r, cJSON_GetObjectItem(c, "logits")) {
            int col = 0;
            cJSON_ArrayForEach(v, r) rf->logits[k][(size_t)row * rf->vocab + col++] = (float)v->valuedouble;
            ASSERT_EQ(col, rf->vocab);
            row++;
        }
        ASSERT_EQ(row, rf->n_ids[k]);
    }
    cJSON_Delete(root);
    free(text);
}

static void ref_free(reference *rf) {
    for (int k = 0; k < rf->n_cases; k++) free(rf->logits[k]);
}

typedef struct {
    kbackend *kb;
    model *m;
    tokenizer *tok;
} rig;

static void rig_open(rig *r) {
    char err[1024] = "";
    memset(r, 0, sizeof *r);
    r->kb = kbackend_cpu_create(2);
    ASSERT(r->kb);
    if (model_load(BASE, r->kb, &r->m, err, sizeof err) < 0) FAIL("model_load: %s", err);
    if (tokenizer_load(BASE, &r->tok, err, sizeof err) < 0) FAIL("tokenizer_load: %s", err);
}

static adapter *load_ad(rig *r, const char *dir) {
    char err[1024] = "";
    adapter *a = NULL;
    if (model_load_adapter(r->m, dir, &a, err, sizeof err) < 0) FAIL("%s: %s", dir, err);
    return a;
}

static void rig_close(rig *r) {
    tokenizer_free(r->tok);
    model_free(r->m);
    kbackend_destroy(r->kb);
}

/* The adapter after a round trip through its store blob (what an upload serves). */
static adapter *via_blob(rig *r, adapter *a) {
    adapter_base base;
    void *blob = NULL;
    size_t len = 0;
    char err[512] = "";
    adapter *out = NULL;
    ASSERT_EQ(model_adapter_base(r->m, &base), 0);
    ASSERT_EQ(adapter_blob_write_base(a, &base, &blob, &len), 0);
    if (adapter_blob_read(blob, len, &base, &out, err, sizeof err) < 0) FAIL("adapter_blob_read: %s", err);
    if (adapter_install(out, r->kb, err, sizeof err) < 0) FAIL("adapter_install: %s", err);
    free(blob);
    model_adapter_base_free(&base);
    adapter_free(a);
    return out;
}

/* Every case of the fixture as one sequence each, all in one batch with one segment. */
static void check_logits(const char *name, bool blob) {
    rig R;
    rig_open(&R);
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fixtures/adapters_bias_base/%s", name);
    adapter *ad = load_ad(&R, dir);
    if (blob) ad = via_blob(&R, ad);
    reference rf;
    ref_load(name, &rf);
    const int bs = 4, max_blocks = 64;
    llama_ctx_params p = {.max_tokens = 256, .max_seqs = 8, .block_size = bs, .n_blocks = 256, .max_blocks = max_blocks};
    llama_ctx *c = NULL;
    char err[512];
    if (llama_ctx_create(R.m, &p, &c, err, sizeof err) < 0) FAIL("llama_ctx_create: %s", err);
    int32_t tokens[256], pos[256], slots[256], qstart[9], kvlen[8], btab[8 * 64] = {0}, rows[256];
    int T = 0;
    for (int s = 0; s < rf.n_cases; s++) {
        qstart[s] = T;
        for (int j = 0; j < rf.n_ids[s]; j++, T++) {
            int blk = 40 * s + j / bs;
            btab[s * max_blocks + j / bs] = blk;
            tokens[T] = rf.ids[s][j], pos[T] = j, slots[T] = blk * bs + j % bs, rows[T] = T;
        }
        kvlen[s] = rf.n_ids[s];
    }
    qstart[rf.n_cases] = T;
    llama_segment seg = {.ad = ad, .scale = 1.0f, .row_start = 0, .row_end = T};
    llama_batch b = {.n_tokens = T, .tokens = tokens, .positions = pos, .slots = slots, .n_seqs = rf.n_cases,
                     .q_start = qstart, .kv_len = kvlen, .block_table = btab, .n_segs = 1, .segs = &seg,
                     .n_logits = T, .logit_rows = rows};
    float *out = malloc(sizeof(float) * (size_t)T * rf.vocab);
    int st = llama_forward(c, &b, out);
    if (st < 0) FAIL("%s: llama_forward: %s", name, peftd_strerror(st));
    for (int s = 0, r0 = 0; s < rf.n_cases; r0 += rf.n_ids[s], s++) {
        double md = 0;
        for (size_t i = 0; i < (size_t)rf.n_ids[s] * rf.vocab; i++) {
            double d = fabs((double)out[(size_t)r0 * rf.vocab + i] - rf.logits[s][i]);
            if (!(d <= md)) md = d;
        }
        printf("    %-14s case %d (%2d tokens): max |logit diff| %.3g\n", name, s, rf.n_ids[s], md);
        if (!(md <= TOL)) FAIL("%s case %d: max |logit diff| %.3g > %g", name, s, md, TOL);
    }
    free(out);
    ref_free(&rf);
    llama_ctx_free(c);
    adapter_free(ad);
    rig_close(&R);
}

TEST(logits_lora_bias_all) { check_logits(FIX[0], false); }
TEST(logits_lora_bias_only) { check_logits(FIX[1], false); }
TEST(logits_after_blob_round_trip) {
    check_logits(FIX[0], true);
    check_logits(FIX[1], true);
}

typedef greedy_run run;

static engine *open_engine(rig *R, int max_seqs, int max_batch_tokens) {
    engine_config ec;
    engine_config_default(&ec);
    ec.max_seqs = max_seqs;
    ec.max_batch_tokens = max_batch_tokens;
    ec.kv_cache_mb = 64;
    engine *e = NULL;
    char err[512];
    if (engine_create(&ec, R->m, R->kb, R->tok, &e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    ASSERT_EQ(engine_start(e), 0);
    return e;
}

static void submit(engine *e, run *rn, const int32_t *ids, int n, const adapter *ad) {
    greedy_submit(e, rn, ids, n, N_GREEDY, ad, 1.0f, NULL);
}

static void collect(run *rn) { greedy_collect(rn, NULL, 0); }

TEST(greedy_and_mixed_batch) {
    rig R;
    rig_open(&R);
    adapter *ads[3] = {load_ad(&R, "tests/fixtures/adapters_bias_base/lora_bias_all"),
                       load_ad(&R, "tests/fixtures/adapters_bias_base/lora_bias_only"),
                       load_ad(&R, "tests/fixtures/qwen2/llama_bias_lora")};
    reference rf[2];
    ref_load(FIX[0], &rf[0]);
    ref_load(FIX[1], &rf[1]);
    enum { N = 12 }; /* (3 adapters + base) x 3 prompts */
    engine *e = open_engine(&R, N, 16);
    run alone[N], together[N];
    for (int i = 0; i < N; i++) {
        int a = i / 3, k = i % 3;
        submit(e, &alone[i], rf[0].ids[k], rf[0].n_ids[k], a < 3 ? ads[a] : NULL);
        collect(&alone[i]);
        ASSERT_EQ(alone[i].n, N_GREEDY);
        if (a < 2)
            for (int t = 0; t < N_GREEDY; t++)
                if (alone[i].ids[t] != rf[a].greedy[k][t])
                    FAIL("%s case %d: greedy token %d is %d, PEFT says %d", FIX[a], k, t, alone[i].ids[t],
                         rf[a].greedy[k][t]);
    }
    for (int i = 0; i < N; i++) submit(e, &together[i], rf[0].ids[i % 3], rf[0].n_ids[i % 3], i / 3 < 3 ? ads[i / 3] : NULL);
    for (int i = 0; i < N; i++) collect(&together[i]);
    for (int i = 0; i < N; i++)
        for (int t = 0; t < N_GREEDY; t++)
            if (alone[i].ids[t] != together[i].ids[t] || memcmp(&alone[i].lps[t], &together[i].lps[t], 4))
                FAIL("sequence %d (adapter %d): token %d (or its logprob, bit for bit) differs in the mixed batch", i,
                     i / 3, t);
    engine_free(e);
    for (int i = 0; i < 3; i++) adapter_free(ads[i]);
    ref_free(&rf[0]);
    ref_free(&rf[1]);
    rig_close(&R);
}

TEST_MAIN(logits_lora_bias_all, logits_lora_bias_only, logits_after_blob_round_trip, greedy_and_mixed_batch)
