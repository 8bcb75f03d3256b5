/* tests/unit/test_adapter_forward.c — every adapter kind against the library that made it
 * (Hugging Face PEFT 0.21 / AdapterHub adapters 1.3, fixtures from
 * tests/fixtures/adapters/make_adapter_fixtures.py and make_lora_variant_fixtures.py), on the
 * default model:
 *   - logits of every prompt position, through llama_forward with one adapter segment;
 *   - 24 greedy tokens through the engine (the serving path);
 *   - a mixed batch: every fixture adapter plus base-only sequences at once returns, for
 *     each sequence, the tokens it gets alone.
 *
 * Tolerance 1e-4 on logits: the references are f32 computations on exactly the stored
 * weights (bf16 adapters are upcast), so only summation order differs — ~1e-5 at these
 * sizes (|logit| < 25, dims <= 172, ranks <= 64); a wrong scale, layout, position or
 * placement moves logits by orders of magnitude more.
 */
#include <cJSON.h>
#include <unistd.h>

#include "server/engine/engine.h"
#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/greedy_run.h"
#include "tests/harness/test.h"

#define TOL 1e-4
#define N_GREEDY 24

static const char *FIXTURES[] = {
    "lora_r1_all", "lora_r8_all", "lora_r64_all", "lora_rslora", "lora_dora", "lora_patterns", "lora_layers",
    "lora_lm_head", "lora_bf16", "ia3", "prompt_tuning", "prefix_tuning", "pfeiffer", "houlsby",
    /* issue 16 LoRA variants (make_lora_variant_fixtures.py; the bias "all"/"lora_only" ones need
     * a base with biases: tests/fixtures/adapters_bias_base, test_lora_bias_variants.c) */
    "lora_bias", "lora_embed_head", "lora_embed_tied", "lora_mts_tied", "adalora", "p_tuning", "prefix_projection",
};
#define N_FIXTURES (int)(sizeof FIXTURES / sizeof FIXTURES[0])

typedef struct {
    int n_cases;
    int n_ids[4];
    int32_t ids[4][64];
    float *logits[4];
    int32_t greedy[4][N_GREEDY];
    int vocab;
} reference;

static void ref_load(const char *name, reference *rf) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/adapters/%s/reference.json", name);
    size_t len;
    char *text = test_read_file(path, &len);
    if (!text) FAIL("cannot read %s", path);
    cJSON *root = cJSON_ParseWithLength(text, len), *c, *v;
    ASSERT(root);
    memset(rf, 0, sizeof *rf);
    rf->vocab = 512;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        ASSERT(rf->n_cases < 4);
        int k = rf->n_cases++;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "input_ids")) rf->ids[k][rf->n_ids[k]++] = v->valueint;
        int g = 0;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "greedy")) if (g < N_GREEDY) rf->greedy[k][g++] = v->valueint;
        ASSERT_EQ(g, N_GREEDY);
        rf->logits[k] = malloc(sizeof(float) * (size_t)rf->n_ids[k] * rf->vocab);
        int row = 0;
        cJSON *r;
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
    adapter *ad[N_FIXTURES];
} rig;

static void rig_open(rig *r) {
    char err[1024] = "";
    memset(r, 0, sizeof *r);
    r->kb = kbackend_cpu_create(2);
    ASSERT(r->kb);
    if (model_load("models/stories260K", r->kb, &r->m, err, sizeof err) < 0) FAIL("model_load: %s", err);
    if (tokenizer_load("models/stories260K", &r->tok, err, sizeof err) < 0) FAIL("tokenizer_load: %s", err);
}

static adapter *rig_adapter(rig *r, int i) {
    if (!r->ad[i]) {
        char dir[256], err[1024] = "";
        snprintf(dir, sizeof dir, "tests/fixtures/adapters/%s", FIXTURES[i]);
        if (model_load_adapter(r->m, dir, &r->ad[i], err, sizeof err) < 0) FAIL("%s: %s", FIXTURES[i], err);
    }
    return r->ad[i];
}

static void rig_close(rig *r) {
    for (int i = 0; i < N_FIXTURES; i++) adapter_free(r->ad[i]);
    tokenizer_free(r->tok);
    model_free(r->m);
    kbackend_destroy(r->kb);
}

/* Logits of every real prompt position for one adapter, one sequence per case, all cases
 * of the fixture in one batch with one adapter segment. */
static void check_logits(int fi) {
    rig R;
    rig_open(&R);
    const adapter *ad = rig_adapter(&R, fi);
    reference rf;
    ref_load(FIXTURES[fi], &rf);
    const int bs = 4, max_blocks = 64;
    llama_ctx_params p = {.max_tokens = 256, .max_seqs = 8, .block_size = bs, .n_blocks = 256, .max_blocks = max_blocks};
    llama_ctx *c = NULL;
    char err[512];
    if (llama_ctx_create(R.m, &p, &c, err, sizeof err) < 0) FAIL("llama_ctx_create: %s", err);

    int nv_prompt = ad->kind == ADAPTER_PROMPT_TUNING ? ad->n_virtual : 0;
    int nv_prefix = ad->kind == ADAPTER_PREFIX_TUNING ? ad->n_virtual : 0;
    /* prefix tuning: K/V in shared blocks 0.., padded to end on a block boundary */
    int pad = nv_prefix ? (bs - nv_prefix % bs) % bs : 0, n_pfx_blocks = nv_prefix ? (pad + nv_prefix) / bs : 0;
    int32_t pfx_blocks[32];
    for (int i = 0; i < n_pfx_blocks; i++) pfx_blocks[i] = 200 + i;
    if (nv_prefix) ASSERT_EQ(llama_store_prefix(c, ad, pfx_blocks, pad), 0);

    int32_t tokens[256], pos[256], slots[256], qstart[9], kvlen[8], kvstart[8], btab[8 * 64], rows[256];
    int T = 0, NL = 0, first_row[4];
    memset(btab, 0, sizeof btab);
    for (int s = 0; s < rf.n_cases; s++) {
        qstart[s] = T;
        int32_t *row = btab + s * max_blocks;
        for (int i = 0; i < n_pfx_blocks; i++) row[i] = pfx_blocks[i];
        int n_tok = nv_prompt + rf.n_ids[s], kv_off = n_pfx_blocks * bs;
        for (int i = 0; i * bs < n_tok; i++) row[n_pfx_blocks + i] = 40 * s + i; /* private blocks */
        for (int j = 0; j < n_tok; j++, T++) {
            tokens[T] = j < nv_prompt ? -(j + 1) : rf.ids[s][j - nv_prompt];
            pos[T] = nv_prefix + j;
            int kv = kv_off + j;
            slots[T] = row[kv / bs] * bs + kv % bs;
            if (j == nv_prompt) first_row[s] = NL;
            if (j >= nv_prompt) rows[NL++] = T;
        }
        kvlen[s] = kv_off + n_tok;
        kvstart[s] = pad;
    }
    qstart[rf.n_cases] = T;
    llama_segment seg = {.ad = ad, .scale = 1.0f, .row_start = 0, .row_end = T};
    llama_batch b = {.n_tokens = T, .tokens = tokens, .positions = pos, .slots = slots, .n_seqs = rf.n_cases,
                     .q_start = qstart, .kv_len = kvlen, .block_table = btab, .kv_start = kvstart, .n_segs = 1,
                     .segs = &seg, .n_logits = NL, .logit_rows = rows};
    float *out = malloc(sizeof(float) * (size_t)NL * rf.vocab);
    int st = llama_forward(c, &b, out);
    if (st < 0) FAIL("%s: llama_forward: %s", FIXTURES[fi], peftd_strerror(st));
    for (int s = 0; s < rf.n_cases; s++) {
        double md = 0;
        const float *got = out + (size_t)first_row[s] * rf.vocab;
        for (size_t i = 0; i < (size_t)rf.n_ids[s] * rf.vocab; i++) {
            double d = fabs((double)got[i] - rf.logits[s][i]);
            if (!(d <= md)) md = d;
        }
        printf("    %-14s case %d (%2d tokens): max |logit diff| %.3g\n", FIXTURES[fi], s, rf.n_ids[s], md);
        if (!(md <= TOL)) FAIL("%s case %d: max |logit diff| %.3g > %g", FIXTURES[fi], s, md, TOL);
    }
    free(out);
    ref_free(&rf);
    llama_ctx_free(c);
    rig_close(&R);
}

TEST(logits_lora_r1_all) { check_logits(0); }
TEST(logits_lora_r8_all) { check_logits(1); }
TEST(logits_lora_r64_all) { check_logits(2); }
TEST(logits_lora_rslora) { check_logits(3); }
TEST(logits_lora_dora) { check_logits(4); }
TEST(logits_lora_patterns) { check_logits(5); }
TEST(logits_lora_layers) { check_logits(6); }
TEST(logits_lora_lm_head) { check_logits(7); }
TEST(logits_lora_bf16) { check_logits(8); }
TEST(logits_ia3) { check_logits(9); }
TEST(logits_prompt_tuning) { check_logits(10); }
TEST(logits_prefix_tuning) { check_logits(11); }
TEST(logits_pfeiffer) { check_logits(12); }
TEST(logits_houlsby) { check_logits(13); }
TEST(logits_lora_bias) { check_logits(14); }
TEST(logits_lora_embed_head) { check_logits(15); }
TEST(logits_lora_embed_tied) { check_logits(16); }
TEST(logits_lora_mts_tied) { check_logits(17); }
TEST(logits_adalora) { check_logits(18); }
TEST(logits_p_tuning) { check_logits(19); }
TEST(logits_prefix_projection) { check_logits(20); }

/* ---- through the engine ---- */

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

static void submit_scaled(engine *e, run *rn, const int32_t *ids, int n, const adapter *ad, float scale) {
    greedy_submit(e, rn, ids, n, N_GREEDY, ad, scale, NULL); /* the references: N_GREEDY argmax steps whatever the token */
}

static void submit(engine *e, run *rn, const int32_t *ids, int n, const adapter *ad) {
    submit_scaled(e, rn, ids, n, ad, 1.0f);
}

static void collect(run *rn) { greedy_collect(rn, NULL, 0); }

TEST(greedy_tokens_match_the_libraries) {
    rig R;
    rig_open(&R);
    engine *e = open_engine(&R, 8, 64);
    for (int fi = 0; fi < N_FIXTURES; fi++) {
        reference rf;
        ref_load(FIXTURES[fi], &rf);
        const adapter *ad = rig_adapter(&R, fi);
        for (int k = 0; k < rf.n_cases; k++) {
            run rn;
            submit(e, &rn, rf.ids[k], rf.n_ids[k], ad);
            collect(&rn);
            ASSERT_EQ(rn.n, N_GREEDY);
            for (int i = 0; i < N_GREEDY; i++)
                if (rn.ids[i] != rf.greedy[k][i])
                    FAIL("%s case %d: greedy token %d is %d, the library says %d", FIXTURES[fi], k, i, rn.ids[i],
                         rf.greedy[k][i]);
        }
        ref_free(&rf);
    }
    engine_free(e);
    rig_close(&R);
}

TEST(mixed_batch_equals_each_sequence_alone) {
    rig R;
    rig_open(&R);
    /* every fixture adapter + 2 base-only sequences; a small token budget mixes chunked
     * prefills with decodes of other adapters in the same steps */
    enum { N = N_FIXTURES + 2 };
    static const char *prompts[] = {"Once upon a time", "The little dog", "Lily and Tom", "One day"};
    int32_t *ids[N];
    size_t n_ids[N];
    const adapter *ads[N];
    for (int i = 0; i < N; i++) {
        const char *t = prompts[i < N_FIXTURES ? i % 4 : i - N_FIXTURES]; /* base: prompts 0, 1 */
        ASSERT_EQ(tokenizer_encode(R.tok, t, strlen(t), true, &ids[i], &n_ids[i]), 0);
        ads[i] = i < N_FIXTURES ? rig_adapter(&R, i) : NULL;
    }
    engine *e = open_engine(&R, N, 16);
    run alone[N], together[N];
    for (int i = 0; i < N; i++) {
        submit(e, &alone[i], ids[i], (int)n_ids[i], ads[i]);
        collect(&alone[i]);
    }
    for (int i = 0; i < N; i++) submit(e, &together[i], ids[i], (int)n_ids[i], ads[i]);
    for (int i = 0; i < N; i++) collect(&together[i]);
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(alone[i].n, together[i].n);
        for (int k = 0; k < alone[i].n; k++)
            if (alone[i].ids[k] != together[i].ids[k] || memcmp(&alone[i].lps[k], &together[i].lps[k], 4))
                FAIL("sequence %d (%s): token %d (or its logprob, bit for bit) differs in the mixed batch", i,
                     i < N_FIXTURES ? FIXTURES[i] : "base", k);
        free(ids[i]);
    }
    /* and the adapters really differ from the base: each changes its prompt's tokens */
    for (int i = 0; i < N_FIXTURES; i++) {
        if (i % 4 >= 2) continue; /* base sequences only ran prompts 0 and 1 */
        if (memcmp(alone[i].ids, alone[N_FIXTURES + i % 4].ids, sizeof(int32_t) * N_GREEDY) == 0)
            FAIL("%s generates exactly the base model's tokens", FIXTURES[i]);
    }
    engine_free(e);
    rig_close(&R);
}

/* Several distinct prompt- and prefix-tuning adapter objects at once (copies of one
 * fixture: same weights, separate prefix KV entries), many sequences each, against their
 * solo outputs — the shared prefix blocks come and go as sequences end. */
TEST(many_virtual_token_adapters_in_one_batch) {
    rig R;
    rig_open(&R);
    enum { COPIES = 4, PER = 4, N = 2 * COPIES * PER };
    adapter *ads[2 * COPIES];
    char err[512];
    for (int i = 0; i < 2 * COPIES; i++)
        if (model_load_adapter(R.m, i < COPIES ? "tests/fixtures/adapters/prompt_tuning" : "tests/fixtures/adapters/prefix_tuning",
                               &ads[i], err, sizeof err) < 0)
            FAIL("%s", err);
    static const char *prompts[] = {"Once upon a time", "The little dog", "Lily and Tom", "One day"};
    int32_t *ids[4];
    size_t n_ids[4];
    for (int i = 0; i < 4; i++) ASSERT_EQ(tokenizer_encode(R.tok, prompts[i], strlen(prompts[i]), true, &ids[i], &n_ids[i]), 0);
    engine *e = open_engine(&R, N, 16);
    run solo[N], all[N];
    for (int i = 0; i < N; i++) {
        submit(e, &solo[i], ids[i % 4], (int)n_ids[i % 4], ads[i / PER]);
        collect(&solo[i]);
    }
    for (int i = 0; i < N; i++) submit(e, &all[i], ids[i % 4], (int)n_ids[i % 4], ads[i / PER]);
    for (int i = 0; i < N; i++) collect(&all[i]);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < N_GREEDY; k++)
            if (solo[i].ids[k] != all[i].ids[k] || memcmp(&solo[i].lps[k], &all[i].lps[k], 4))
                FAIL("sequence %d (adapter copy %d): token %d differs", i, i / PER, k);
    engine_free(e);
    for (int i = 0; i < 2 * COPIES; i++) adapter_free(ads[i]);
    for (int i = 0; i < 4; i++) free(ids[i]);
    rig_close(&R);
}

/* ---- DoRA at request scales other than 1 (issue 9 #13) ---- */

/* lora_dora/reference_scales.json: PEFT with set_scale(t) on every LoRA layer, which puts
 * t·scale inside DoRA's weight norm. */
typedef struct {
    int n;
    float scale[4];
    int n_ids;
    int32_t ids[64];
    float *logits[4];
    int32_t greedy[4][N_GREEDY];
} dora_scales_ref;

static void dora_scales_load(dora_scales_ref *rf) {
    size_t len;
    char *text = test_read_file("tests/fixtures/adapters/lora_dora/reference_scales.json", &len);
    if (!text) FAIL("cannot read lora_dora/reference_scales.json");
    cJSON *root = cJSON_ParseWithLength(text, len), *c, *v, *r;
    ASSERT(root);
    memset(rf, 0, sizeof *rf);
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "scales")) {
        ASSERT(rf->n < 4);
        int k = rf->n++;
        rf->scale[k] = (float)cJSON_GetObjectItem(c, "scale")->valuedouble;
        rf->n_ids = 0;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "input_ids")) rf->ids[rf->n_ids++] = v->valueint;
        int g = 0;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "greedy")) if (g < N_GREEDY) rf->greedy[k][g++] = v->valueint;
        ASSERT_EQ(g, N_GREEDY);
        rf->logits[k] = malloc(sizeof(float) * (size_t)rf->n_ids * 512);
        int row = 0;
        cJSON_ArrayForEach(r, cJSON_GetObjectItem(c, "logits")) {
            int col = 0;
            cJSON_ArrayForEach(v, r) rf->logits[k][(size_t)row * 512 + col++] = (float)v->valuedouble;
            ASSERT_EQ(col, 512);
            row++;
        }
        ASSERT_EQ(row, rf->n_ids);
    }
    ASSERT_EQ(rf->n, 3);
    cJSON_Delete(root);
    free(text);
}

/* Logits of every position of one sequence with adapter ad at request scale t. */
static void forward_one(rig *R, const adapter *ad, float t, const int32_t *ids, int n, float *out) {
    const int bs = 4, max_blocks = 64;
    llama_ctx_params p = {.max_tokens = 256, .max_seqs = 8, .block_size = bs, .n_blocks = 256, .max_blocks = max_blocks};
    llama_ctx *c = NULL;
    char err[512];
    if (llama_ctx_create(R->m, &p, &c, err, sizeof err) < 0) FAIL("llama_ctx_create: %s", err);
    int32_t pos[64], slots[64], qstart[2] = {0, n}, kvlen[1] = {n}, btab[64] = {0}, rows[64];
    for (int j = 0; j < n; j++) {
        btab[j / bs] = j / bs;
        pos[j] = j, slots[j] = j, rows[j] = j;
    }
    llama_segment seg = {.ad = ad, .scale = t, .row_start = 0, .row_end = n};
    llama_batch b = {.n_tokens = n, .tokens = ids, .positions = pos, .slots = slots, .n_seqs = 1, .q_start = qstart,
                     .kv_len = kvlen, .block_table = btab, .n_segs = 1, .segs = &seg, .n_logits = n,
                     .logit_rows = rows};
    int st = llama_forward(c, &b, out);
    if (st < 0) FAIL("llama_forward: %s", peftd_strerror(st));
    llama_ctx_free(c);
}

/* PEFT's logits at t = 0.5, 0 and 2: the norm ||W + t·scale·BA|| follows t. With the factor
 * of t = 1 (the old code) logits moved by up to ~2 at 0.5, and t = 0 was neither PEFT nor
 * the base. The tolerance is check_logits' TOL (same f32 sums, same sizes). */
TEST(logits_lora_dora_at_scales) {
    rig R;
    rig_open(&R);
    const adapter *ad = rig_adapter(&R, 4);
    ASSERT_STREQ(FIXTURES[4], "lora_dora");
    dora_scales_ref rf;
    dora_scales_load(&rf);
    float *out = malloc(sizeof(float) * (size_t)rf.n_ids * 512);
    for (int k = 0; k < rf.n; k++) {
        forward_one(&R, ad, rf.scale[k], rf.ids, rf.n_ids, out);
        double md = 0;
        for (size_t i = 0; i < (size_t)rf.n_ids * 512; i++) {
            double d = fabs((double)out[i] - rf.logits[k][i]);
            if (!(d <= md)) md = d;
        }
        printf("    lora_dora at scale %g: max |logit diff| %.3g\n", rf.scale[k], md);
        if (!(md <= TOL)) FAIL("lora_dora at scale %g: max |logit diff| %.3g > %g", rf.scale[k], md, TOL);
    }
    free(out);
    for (int k = 0; k < rf.n; k++) free(rf.logits[k]);
    rig_close(&R);
}

/* Through the engine: PEFT's 24 greedy tokens at every scale, each sequence alone; then all
 * of them at once with scale 1 and 0.5 twice, in one engine (segments ordered by (adapter,
 * scale), the DoRA factor tables per scale from the engine's cache): the same tokens and
 * logprobs, bit for bit, as alone. */
TEST(dora_scales_in_one_batch_equal_alone) {
    rig R;
    rig_open(&R);
    const adapter *ad = rig_adapter(&R, 4);
    dora_scales_ref rf;
    dora_scales_load(&rf);
    reference r1;
    ref_load("lora_dora", &r1);
    enum { N = 6 };
    float scales[N] = {rf.scale[0], rf.scale[1], rf.scale[2], 1.0f, rf.scale[0], 1.0f};
    engine *e = open_engine(&R, N, 16);
    run alone[N], together[N];
    for (int i = 0; i < N; i++) {
        submit_scaled(e, &alone[i], rf.ids, rf.n_ids, ad, scales[i]);
        collect(&alone[i]);
        const int32_t *want = i < rf.n ? rf.greedy[i] : r1.greedy[2]; /* same 11-token prompt */
        ASSERT_EQ(r1.n_ids[2], rf.n_ids);
        for (int k = 0; k < N_GREEDY; k++)
            if (alone[i].ids[k] != want[k])
                FAIL("scale %g: greedy token %d is %d, PEFT says %d", scales[i], k, alone[i].ids[k], want[k]);
    }
    for (int i = 0; i < N; i++) submit_scaled(e, &together[i], rf.ids, rf.n_ids, ad, scales[i]);
    for (int i = 0; i < N; i++) collect(&together[i]);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < N_GREEDY; k++)
            if (alone[i].ids[k] != together[i].ids[k] || memcmp(&alone[i].lps[k], &together[i].lps[k], 4))
                FAIL("scale %g (sequence %d): token %d (or its logprob, bit for bit) differs in the mixed batch",
                     scales[i], i, k);
    engine_free(e);
    ref_free(&r1);
    for (int k = 0; k < rf.n; k++) free(rf.logits[k]);
    rig_close(&R);
}

TEST_MAIN(many_virtual_token_adapters_in_one_batch, logits_lora_r1_all, logits_lora_r8_all, logits_lora_r64_all, logits_lora_rslora, logits_lora_dora,
          logits_lora_patterns, logits_lora_layers, logits_lora_lm_head, logits_lora_bf16, logits_ia3,
          logits_prompt_tuning, logits_prefix_tuning, logits_pfeiffer, logits_houlsby, logits_lora_bias,
          logits_lora_embed_head, logits_lora_embed_tied, logits_lora_mts_tied, logits_adalora, logits_p_tuning, logits_prefix_projection, greedy_tokens_match_the_libraries, mixed_batch_equals_each_sequence_alone, logits_lora_dora_at_scales,
          dora_scales_in_one_batch_equal_alone)
