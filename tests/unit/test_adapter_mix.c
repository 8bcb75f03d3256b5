/* tests/unit/test_adapter_mix.c — compositions of LoRA adapters applied per sequence inside the
 * shared batch (adapter_store/adapter_mix.h), against PEFT's own composed adapter
 * (tests/fixtures/adapters/make_compose_fixtures.py: add_weighted_adapter "linear" and "cat"
 * of two and three adapters; a negative weight; rsLoRA first; mixed ranks, rank_pattern,
 * layers_to_transform and a bf16 adapter under "cat"), on models/stories260K:
 *   - logits of every prompt row within TOL (one prefill batch; and prefill + decode steps),
 *     32 greedy tokens equal, also with the adapters read back from their store blobs;
 *   - every composition, the single adapters and base rows in ONE batch give each sequence
 *     the bits it gets alone;
 *   - the refusals: DoRA / biases / modules_to_save in a composition, "linear" across ranks or
 *     weight dtypes, too many adapters, weights out of range.
 * TOL 1e-4 as test_adapter_forward.c: f32 math on the same weights; PEFT forms the combined
 * A and B first, peftd sums the pairs' deltas (the same sum, rounded in another order). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "adapter_store/adapter_blob.h"
#include "adapter_store/adapter_mix.h"
#include "server/engine/engine.h"
#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/seq_batch.h"
#include "tests/harness/greedy_run.h"
#include "tests/harness/test.h"

#define REF "tests/fixtures/compose/reference.json"
#define BASE "models/stories260K"
#define TOL 1e-4
#define N_GREEDY 32
#define MAX_CASES 8
#define MAX_PROMPTS 4
#define MAX_IDS 32

typedef struct {
    char name[32];
    adapter_mix_kind how;
    int n;
    char dir[ADAPTER_MAX_MIX][128];
    float weight[ADAPTER_MAX_MIX];
    int n_prompts;
    int32_t ids[MAX_PROMPTS][MAX_IDS];
    int n_ids[MAX_PROMPTS];
    int32_t greedy[MAX_PROMPTS][N_GREEDY];
    float *logits[MAX_PROMPTS]; /* [n_ids, vocab] */
} mcase;

static int g_vocab;

static int load_cases(mcase *cs) {
    size_t len;
    char *text = test_read_file(REF, &len);
    if (!text) FAIL("cannot read %s (run tests/fixtures/adapters/make_compose_fixtures.py)", REF);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    ASSERT(root);
    int n = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        ASSERT(n < MAX_CASES);
        mcase *m = &cs[n++];
        memset(m, 0, sizeof *m);
        snprintf(m->name, sizeof m->name, "%s", cJSON_GetObjectItem(c, "name")->valuestring);
        ASSERT_EQ(adapter_mix_kind_parse(cJSON_GetObjectItem(c, "combination")->valuestring, &m->how), 0);
        const cJSON *a;
        cJSON_ArrayForEach(a, cJSON_GetObjectItem(c, "adapters")) {
            ASSERT(m->n < ADAPTER_MAX_MIX);
            snprintf(m->dir[m->n], sizeof m->dir[0], "%s", cJSON_GetObjectItem(a, "dir")->valuestring);
            m->weight[m->n++] = (float)cJSON_GetObjectItem(a, "weight")->valuedouble;
        }
        const cJSON *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItem(c, "cases")) {
            ASSERT(m->n_prompts < MAX_PROMPTS);
            int k = m->n_prompts++, i = 0;
            const cJSON *v, *row;
            cJSON_ArrayForEach(v, cJSON_GetObjectItem(p, "input_ids")) {
                ASSERT(i < MAX_IDS);
                m->ids[k][i++] = v->valueint;
            }
            m->n_ids[k] = i;
            i = 0;
            cJSON_ArrayForEach(v, cJSON_GetObjectItem(p, "greedy")) {
                ASSERT(i < N_GREEDY);
                m->greedy[k][i++] = v->valueint;
            }
            ASSERT_EQ(i, N_GREEDY);
            const cJSON *lg = cJSON_GetObjectItem(p, "logits");
            ASSERT_EQ(cJSON_GetArraySize(lg), m->n_ids[k]);
            g_vocab = cJSON_GetArraySize(cJSON_GetArrayItem(lg, 0));
            m->logits[k] = malloc(sizeof(float) * (size_t)m->n_ids[k] * g_vocab);
            ASSERT(m->logits[k]);
            int r = 0;
            cJSON_ArrayForEach(row, lg) {
                int j = 0;
                cJSON_ArrayForEach(v, row) m->logits[k][(size_t)r * g_vocab + j++] = (float)v->valuedouble;
                ASSERT_EQ(j, g_vocab);
                r++;
            }
        }
    }
    cJSON_Delete(root);
    ASSERT(n >= 6);
    return n;
}

typedef struct {
    kbackend *kb;
    model *m;
    llama_ctx *c;
} rig;

static void rig_open(rig *r) {
    char err[1024] = "";
    memset(r, 0, sizeof *r);
    ASSERT((r->kb = kbackend_cpu_create(2)));
    if (model_load(BASE, r->kb, &r->m, err, sizeof err) < 0) FAIL("%s", err);
    r->c = seq_batch_ctx(r->m);
}

static void rig_close(rig *r) {
    llama_ctx_free(r->c);
    model_free(r->m);
    kbackend_destroy(r->kb);
}

static adapter *load_ad(rig *r, const char *dir, bool blob) {
    char err[1024] = "";
    adapter *a = NULL;
    if (model_load_adapter(r->m, dir, &a, err, sizeof err) < 0) FAIL("%s: %s", dir, err);
    if (!blob) return a;
    adapter_base base;
    void *b = NULL;
    size_t len = 0;
    adapter *out = NULL;
    ASSERT_EQ(model_adapter_base(r->m, &base), 0);
    ASSERT_EQ(adapter_blob_write_base(a, &base, &b, &len), 0);
    if (adapter_blob_read(b, len, &base, &out, err, sizeof err) < 0) FAIL("adapter_blob_read: %s", err);
    if (adapter_install(out, r->kb, err, sizeof err) < 0) FAIL("adapter_install: %s", err);
    free(b);
    model_adapter_base_free(&base);
    adapter_free(a);
    return out;
}

static void mix_open(rig *r, const mcase *m, bool blob, adapter_mix *mx) {
    memset(mx, 0, sizeof *mx);
    mx->n = m->n;
    mx->how = m->how;
    for (int i = 0; i < m->n; i++) {
        mx->ad[i] = load_ad(r, m->dir[i], blob);
        mx->weight[i] = m->weight[i];
    }
    char err[512] = "";
    if (adapter_mix_check(mx, err, sizeof err) < 0) FAIL("%s: %s", m->name, err);
}

static void mix_close(adapter_mix *mx) {
    for (int i = 0; i < mx->n; i++) adapter_free((adapter *)mx->ad[i]);
}

static double max_diff(const float *a, const float *b, size_t n) {
    double md = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d;
    }
    return md;
}

static void check_case(const mcase *m, bool blob) {
    rig R;
    rig_open(&R);
    ASSERT_EQ(R.m->cfg.vocab_size, g_vocab);
    adapter_mix mx;
    mix_open(&R, m, blob, &mx);
    seq_spec sp[MAX_PROMPTS];
    float *out[MAX_PROMPTS];
    for (int k = 0; k < m->n_prompts; k++) {
        sp[k] = (seq_spec){.ids = m->ids[k], .n = m->n_ids[k], .mix = &mx};
        ASSERT((out[k] = malloc(sizeof(float) * (size_t)m->n_ids[k] * g_vocab)));
    }
    seq_batch_prefill(R.c, R.m, sp, m->n_prompts, out);
    double worst = 0;
    for (int k = 0; k < m->n_prompts; k++) {
        double md = max_diff(out[k], m->logits[k], (size_t)m->n_ids[k] * g_vocab);
        if (!(md <= TOL)) FAIL("%s prompt %d: max |logit diff| %.3g > %g", m->name, k, md, TOL);
        if (md > worst) worst = md;
    }
    int last = m->n_prompts - 1;
    seq_prefill_decode(R.c, R.m, &sp[last], 3, out[last]);
    double md = max_diff(out[last], m->logits[last], (size_t)m->n_ids[last] * g_vocab);
    if (!(md <= TOL)) FAIL("%s: prefill + decode max |logit diff| %.3g > %g", m->name, md, TOL);
    for (int k = 0; k < m->n_prompts; k++) {
        int32_t g[N_GREEDY];
        seq_greedy(R.c, R.m, &sp[k], N_GREEDY, g);
        for (int t = 0; t < N_GREEDY; t++)
            if (g[t] != m->greedy[k][t])
                FAIL("%s prompt %d: greedy token %d is %d, PEFT's composed adapter says %d", m->name, k, t, g[t],
                     m->greedy[k][t]);
        free(out[k]);
    }
    printf("    %-22s %-6s %d adapters%s: max |logit diff| %.3g (prefill+decode %.3g), 32 greedy tokens x %d prompts "
           "equal\n",
           m->name, adapter_mix_kind_name(m->how), m->n, blob ? " (blobs)" : "", worst, md, m->n_prompts);
    mix_close(&mx);
    rig_close(&R);
}

static mcase g_cases[MAX_CASES];
static int g_n;

TEST(compositions_match_peft) {
    g_n = load_cases(g_cases);
    for (int i = 0; i < g_n; i++) check_case(&g_cases[i], false);
}

TEST(compositions_from_blobs_match_peft) {
    g_n = load_cases(g_cases);
    for (int i = 0; i < g_n; i++) check_case(&g_cases[i], true);
}

/* Every composition, each of their adapters alone, and the base: one batch, each sequence
 * bit-identical to the same sequence run alone. */
TEST(mixed_batch_bit_identical_to_solo) {
    g_n = load_cases(g_cases);
    rig R;
    rig_open(&R);
    adapter_mix mx[MAX_CASES];
    seq_spec sp[SEQ_BATCH_MAX_SEQS];
    int n = 0;
    for (int i = 0; i < g_n && n < SEQ_BATCH_MAX_SEQS - 3; i++) {
        mix_open(&R, &g_cases[i], false, &mx[i]);
        sp[n++] = (seq_spec){.ids = g_cases[i].ids[(i % 2) + 1], .n = g_cases[i].n_ids[(i % 2) + 1], .mix = &mx[i]};
    }
    const mcase *c0 = &g_cases[0];
    sp[n++] = (seq_spec){.ids = c0->ids[2], .n = c0->n_ids[2]};                      /* base */
    sp[n++] = (seq_spec){.ids = c0->ids[1], .n = c0->n_ids[1], .ad = mx[1].ad[0]};  /* a single LoRA */
    sp[n++] = (seq_spec){.ids = c0->ids[2], .n = c0->n_ids[2], .ad = mx[5].ad[1]};  /* another */
    float *all[SEQ_BATCH_MAX_SEQS], *solo = malloc(sizeof(float) * MAX_IDS * (size_t)g_vocab);
    ASSERT(solo);
    for (int s = 0; s < n; s++) ASSERT((all[s] = malloc(sizeof(float) * (size_t)sp[s].n * g_vocab)));
    seq_batch_prefill(R.c, R.m, sp, n, all);
    for (int s = 0; s < n; s++) {
        seq_batch_prefill(R.c, R.m, &sp[s], 1, &solo);
        if (memcmp(solo, all[s], sizeof(float) * (size_t)sp[s].n * g_vocab))
            FAIL("sequence %d: batched logits differ from solo (max |diff| %.3g)", s,
                 max_diff(solo, all[s], (size_t)sp[s].n * g_vocab));
        free(all[s]);
    }
    printf("    %d sequences (%d compositions, base, 2 single LoRAs) in one batch: bit-identical to solo\n", n,
           n - 3);
    free(solo);
    for (int i = 0; i < g_n; i++) mix_close(&mx[i]);
    rig_close(&R);
}

static void expect_refusal(rig *R, const char *const *dirs, int n, adapter_mix_kind how, float w0, const char *needle) {
    adapter_mix mx = {.n = n, .how = how};
    for (int i = 0; i < n; i++) {
        mx.ad[i] = load_ad(R, dirs[i], false);
        mx.weight[i] = i ? 0.5f : w0;
    }
    char err[512] = "";
    int rc = adapter_mix_check(&mx, err, sizeof err);
    if (rc >= 0) FAIL("composition of %s (%s) was accepted", dirs[n - 1], adapter_mix_kind_name(how));
    if (!strstr(err, needle)) FAIL("refusal '%s' does not say '%s'", err, needle);
    printf("    refused: %s\n", err);
    mix_close(&mx);
}

TEST(refusals_name_the_reason) {
    rig R;
    rig_open(&R);
    const char *dora[] = {"tests/fixtures/adapters/lora_r8_all", "tests/fixtures/adapters/lora_dora"};
    expect_refusal(&R, dora, 2, ADAPTER_MIX_CAT, 1.0f, "DoRA");
    const char *ia3[] = {"tests/fixtures/adapters/lora_r8_all", "tests/fixtures/adapters/ia3"};
    expect_refusal(&R, ia3, 2, ADAPTER_MIX_CAT, 1.0f, "not a LoRA");
    const char *bias[] = {"tests/fixtures/adapters/lora_r8_all", "tests/fixtures/adapters/lora_bias"};
    expect_refusal(&R, bias, 2, ADAPTER_MIX_CAT, 1.0f, "biases");
    const char *mts[] = {"tests/fixtures/adapters/lora_r8_all", "tests/fixtures/adapters/lora_lm_head"};
    expect_refusal(&R, mts, 2, ADAPTER_MIX_CAT, 1.0f, "modules_to_save");
    const char *ranks[] = {"tests/fixtures/adapters/lora_r8_all", "tests/fixtures/adapters/lora_layers"};
    expect_refusal(&R, ranks, 2, ADAPTER_MIX_LINEAR, 1.0f, "\"cat\"");
    const char *dt[] = {"tests/fixtures/adapters/lora_r8_all", "tests/fixtures/adapters/lora_bf16"};
    expect_refusal(&R, dt, 2, ADAPTER_MIX_LINEAR, 1.0f, "one dtype");
    const char *one[] = {"tests/fixtures/adapters/lora_r8_all"};
    expect_refusal(&R, one, 1, ADAPTER_MIX_CAT, 40.0f, "weight");
    adapter_mix empty = {.n = 0};
    char err[256];
    ASSERT(adapter_mix_check(&empty, err, sizeof err) < 0);
    rig_close(&R);
}

/* ---- through the engine (gen_params.n_mix with loaded adapters): PEFT's greedy tokens alone,
 * then every composition twice (the second from the prefix cache), single LoRAs and base rows
 * in one batch: tokens and logprobs bit-identical to the solo runs */

typedef greedy_run run;

static void submit(engine *e, run *rn, const int32_t *ids, int n, const adapter *ad, const adapter_mix *mx) {
    greedy_submit(e, rn, ids, n, N_GREEDY, ad, 1.0f, mx);
}

static void collect(run *rn, char *error, size_t errlen) { greedy_collect(rn, error, errlen); }

TEST(engine_compositions) {
    g_n = load_cases(g_cases);
    rig R;
    rig_open(&R);
    tokenizer *tok = NULL;
    char err[512] = "";
    if (tokenizer_load(BASE, &tok, err, sizeof err) < 0) FAIL("%s", err);
    adapter_mix mx[MAX_CASES];
    for (int i = 0; i < g_n; i++) mix_open(&R, &g_cases[i], false, &mx[i]);
    engine_config ec;
    engine_config_default(&ec);
    ec.max_seqs = 2 * MAX_CASES + 4;
    ec.max_batch_tokens = 64;
    ec.kv_cache_mb = 64;
    engine *e = NULL;
    if (engine_create(&ec, R.m, R.kb, tok, &e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    ASSERT_EQ(engine_start(e), 0);
    enum { EXTRA = 3 };
    static run alone[2 * MAX_CASES + EXTRA], together[2 * MAX_CASES + EXTRA];
    int n = 0;
    const int32_t *ids[2 * MAX_CASES + EXTRA];
    int nid[2 * MAX_CASES + EXTRA];
    const adapter *ad[2 * MAX_CASES + EXTRA];
    const adapter_mix *mxs[2 * MAX_CASES + EXTRA];
    for (int i = 0; i < g_n; i++)
        for (int k = 1; k <= 2; k++, n++)
            ids[n] = g_cases[i].ids[k], nid[n] = g_cases[i].n_ids[k], ad[n] = NULL, mxs[n] = &mx[i];
    ids[n] = g_cases[0].ids[2], nid[n] = g_cases[0].n_ids[2], ad[n] = NULL, mxs[n++] = NULL;
    ids[n] = g_cases[0].ids[1], nid[n] = g_cases[0].n_ids[1], ad[n] = mx[1].ad[0], mxs[n++] = NULL;
    ids[n] = g_cases[0].ids[2], nid[n] = g_cases[0].n_ids[2], ad[n] = mx[5].ad[2], mxs[n++] = NULL;
    for (int i = 0; i < n; i++) {
        submit(e, &alone[i], ids[i], nid[i], ad[i], mxs[i]);
        collect(&alone[i], NULL, 0);
        ASSERT_EQ(alone[i].n, N_GREEDY);
        if (i < 2 * g_n && memcmp(alone[i].ids, g_cases[i / 2].greedy[1 + i % 2], sizeof(int32_t) * N_GREEDY))
            FAIL("%s prompt %d through the engine: greedy tokens differ from PEFT's", g_cases[i / 2].name, 1 + i % 2);
    }
    for (int i = 0; i < n; i++) submit(e, &together[i], ids[i], nid[i], ad[i], mxs[i]);
    for (int i = 0; i < n; i++) collect(&together[i], NULL, 0);
    for (int i = 0; i < n; i++)
        if (memcmp(alone[i].ids, together[i].ids, sizeof(int32_t) * N_GREEDY) ||
            memcmp(alone[i].lps, together[i].lps, sizeof(float) * N_GREEDY))
            FAIL("sequence %d: tokens or logprobs differ in the mixed batch", i);
    /* a composition the adapters cannot form ends that request alone, with ENGINE_ERR_MIX */
    adapter *dora = load_ad(&R, "tests/fixtures/adapters/lora_dora", false);
    adapter_mix bad = {.n = 2, .ad = {mx[0].ad[0], dora}, .weight = {1, 1}, .how = ADAPTER_MIX_CAT};
    run r;
    submit(e, &r, ids[0], nid[0], NULL, &bad);
    char why[300];
    collect(&r, why, sizeof why);
    if (strncmp(why, ENGINE_ERR_MIX, strlen(ENGINE_ERR_MIX))) FAIL("error '%s'", why);
    printf("    engine: %d compositions x 2 prompts give PEFT's tokens; %d sequences in one batch bit-identical to "
           "solo (tokens and logprobs); refused: %s\n",
           g_n, n, why);
    engine_free(e);
    adapter_free(dora);
    for (int i = 0; i < g_n; i++) mix_close(&mx[i]);
    tokenizer_free(tok);
    rig_close(&R);
}

TEST_MAIN(compositions_match_peft, compositions_from_blobs_match_peft, mixed_batch_bit_identical_to_solo,
          refusals_name_the_reason, engine_compositions)
