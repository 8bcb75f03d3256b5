/* tests/unit/test_quant_model.c — at-load quantized weights ("weights": "q8_0" | "q4_k") end to
 * end against tests/fixtures/quant/reference.json (make_quant_fixtures.py: transformers in
 * f32 on weights quantized by gguf-py (Q8_0) or by peftd's quantizer and dequantized by
 * gguf-py (Q4_K)), plus the at-load rule, LoRA on top, and mixed batches bit-identical to
 * solo runs.
 *
 * Tolerances. The fixture carries two references per case: logits_actq (activations quantized
 * per block as peftd's kernel does) and logits_f32 (f32 activations), and format_diff = max
 * |logits_f32 − logits_actq|, the effect of 8-bit activations measured by the reference
 * itself. peftd computes the same math as logits_actq up to f32 summation order (and, rarely,
 * an activation code rounded to the other side of a .5 tie by that noise), so:
 *   |peftd − actq| <= TOL_ACTQ = 1e-4 (the family tests' f32 tolerance; measured <= 9e-6:
 *                                       no activation code flipped on these prompts)
 *   |peftd − f32|  <= format_diff + TOL_ACTQ (triangle inequality).
 * Greedy: 32 tokens equal to greedy_actq for every case, and equal to greedy_f32 where the
 * reference's two variants agree (stories260K: the acceptance criterion's default model). */
#include <cJSON.h>
#include <math.h>
#include <string.h>

#include "kernels/kernels.h"
#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "server/model/model_quant.h"
#include "tests/harness/seq_batch.h"
#include "tests/harness/test.h"

#define REF "tests/fixtures/quant/reference.json"
#define TOL_ACTQ 1e-4
#define MAX_IDS 64

typedef struct {
    char name[64], model[256], weights[16], adapter[256];
    int n, vocab;
    int32_t ids[MAX_IDS], greedy_f32[32], greedy_actq[32];
    float *lf, *lq; /* [n, vocab] */
    double format_diff;
} qcase;

static cJSON *ref_root(void) {
    size_t len;
    char *text = test_read_file(REF, &len);
    if (!text) FAIL("cannot read %s (fixture missing: run tests/fixtures/make_quant_fixtures.py)", REF);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) FAIL("%s: not JSON", REF);
    return root;
}

static void rows_of(const cJSON *a, int n, int vocab, float **out) {
    ASSERT(cJSON_GetArraySize(a) == n);
    *out = malloc(sizeof(float) * (size_t)n * vocab);
    ASSERT(*out);
    for (int i = 0; i < n; i++) {
        const cJSON *r = cJSON_GetArrayItem(a, i);
        ASSERT(cJSON_GetArraySize(r) == vocab);
        for (int j = 0; j < vocab; j++) (*out)[(size_t)i * vocab + j] = (float)cJSON_GetArrayItem(r, j)->valuedouble;
    }
}

static void case_load(const char *name, qcase *q) {
    cJSON *root = ref_root();
    const cJSON *c = NULL, *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(root, "cases")) if (!strcmp(cJSON_GetObjectItem(it, "name")->valuestring, name)) c = it;
    if (!c) FAIL("%s: no case %s", REF, name);
    memset(q, 0, sizeof *q);
    snprintf(q->name, sizeof q->name, "%s", name);
    snprintf(q->model, sizeof q->model, "%s", cJSON_GetObjectItem(c, "model")->valuestring);
    snprintf(q->weights, sizeof q->weights, "%s", cJSON_GetObjectItem(c, "weights")->valuestring);
    snprintf(q->adapter, sizeof q->adapter, "%s", cJSON_GetObjectItem(c, "adapter")->valuestring);
    const cJSON *ids = cJSON_GetObjectItem(c, "input_ids");
    q->n = cJSON_GetArraySize(ids);
    ASSERT(q->n > 0 && q->n <= MAX_IDS);
    for (int i = 0; i < q->n; i++) q->ids[i] = cJSON_GetArrayItem(ids, i)->valueint;
    const cJSON *lf = cJSON_GetObjectItem(c, "logits_f32");
    q->vocab = cJSON_GetArraySize(cJSON_GetArrayItem(lf, 0));
    rows_of(lf, q->n, q->vocab, &q->lf);
    rows_of(cJSON_GetObjectItem(c, "logits_actq"), q->n, q->vocab, &q->lq);
    for (int i = 0; i < 32; i++) {
        q->greedy_f32[i] = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "greedy_f32"), i)->valueint;
        q->greedy_actq[i] = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "greedy_actq"), i)->valueint;
    }
    q->format_diff = cJSON_GetObjectItem(c, "format_diff")->valuedouble;
    cJSON_Delete(root);
}

static model *load_q(kbackend *kb, const char *dir, const char *weights) {
    model_load_opts o = {.weights = -1, .threads = 2};
    ASSERT_EQ(model_weights_parse(weights, &o.weights), 0);
    char err[1024] = "";
    model *m = NULL;
    if (model_load_ex(dir, kb, &o, &m, err, sizeof err) < 0) FAIL("model_load_ex %s %s: %s", dir, weights, err);
    return m;
}

static double maxdiff(const float *a, const float *b, size_t n) {
    double md = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d;
    }
    return md;
}

static void check_case(const char *name) {
    qcase q;
    case_load(name, &q);
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    model *m = load_q(kb, q.model, q.weights);
    ASSERT_EQ(m->cfg.vocab_size, q.vocab);
    adapter *ad = NULL;
    char err[1024] = "";
    if (q.adapter[0] && model_load_adapter(m, q.adapter, &ad, err, sizeof err) < 0) FAIL("adapter: %s", err);
    llama_ctx *c = seq_batch_ctx(m);
    seq_spec sp = {.ids = q.ids, .n = q.n, .ad = ad};
    float *out = malloc(sizeof(float) * (size_t)q.n * q.vocab);
    ASSERT(out);
    for (int pass = 0; pass < 2; pass++) { /* one prefill; then one token per step */
        seq_prefill_decode(c, m, &sp, pass ? 1 : q.n, out);
        size_t nv = (size_t)q.n * q.vocab;
        double dq = maxdiff(out, q.lq, nv), df = maxdiff(out, q.lf, nv);
        printf("    %-16s %-7s: max |diff| vs actq ref %.3g (tol %g), vs f32 ref %.3g (tol %.3g = format %.3g + %g)\n",
               q.name, pass ? "decode" : "prefill", dq, TOL_ACTQ, df, q.format_diff + TOL_ACTQ, q.format_diff,
               TOL_ACTQ);
        if (!(dq <= TOL_ACTQ)) FAIL("%s: |peftd - actq ref| %.3g > %g", q.name, dq, TOL_ACTQ);
        if (!(df <= q.format_diff + TOL_ACTQ)) FAIL("%s: |peftd - f32 ref| %.3g", q.name, df);
    }
    int32_t g[32];
    seq_greedy(c, m, &sp, 32, g);
    if (memcmp(g, q.greedy_actq, sizeof g)) FAIL("%s: greedy tokens differ from the actq reference", q.name);
    bool ref_agree = !memcmp(q.greedy_f32, q.greedy_actq, sizeof g);
    if (ref_agree && memcmp(g, q.greedy_f32, sizeof g)) FAIL("%s: greedy tokens differ from the f32 reference", q.name);
    printf("    %-16s 32 greedy tokens: equal to actq ref; %s\n", q.name,
           ref_agree ? "equal to f32 ref" : "f32 ref's own tokens differ from its actq variant (not compared)");
    free(out);
    llama_ctx_free(c);
    adapter_free(ad);
    model_free(m);
    kbackend_destroy(kb);
    free(q.lf);
    free(q.lq);
}

TEST(stories260k_q8_0) { check_case("s260k_q8_0"); }
TEST(stories260k_q8_0_lora) { check_case("s260k_q8_0_lora"); }
TEST(stories260k_q8_0_dora) { check_case("s260k_q8_0_dora"); } /* norms of the dequantized base */
TEST(k256_q8_0) { check_case("k256_q8_0"); }
TEST(k256_q4_k) { check_case("k256_q4_k"); }

/* The rule of model_quant.h: projections whose in-features fit the block are converted, the
 * rest (stories260K's down_proj: 172) and embeddings / lm_head / norms stay as stored. */
TEST(at_load_rule) {
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    model *m = load_q(kb, "models/stories260K", "q8_0");
    for (int i = 0; i < m->cfg.n_layers; i++) {
        const model_layer *l = &m->layers[i];
        ASSERT_EQ(l->wq.dtype, KDT_Q8_0);
        ASSERT_EQ(l->wk.dtype, KDT_Q8_0);
        ASSERT_EQ(l->wv.dtype, KDT_Q8_0);
        ASSERT_EQ(l->wo.dtype, KDT_Q8_0);
        ASSERT_EQ(l->w_gate.dtype, KDT_Q8_0);
        ASSERT_EQ(l->w_up.dtype, KDT_Q8_0);
        ASSERT_EQ(l->w_down.dtype, KDT_F32);
        ASSERT_EQ(m->host_layers[i].wq.dtype, KDT_Q8_0);
    }
    ASSERT_EQ(m->embed.dtype, KDT_F32);
    ASSERT_EQ(m->final_norm.dtype, KDT_F32);
    model_free(m);
    m = load_q(kb, "tests/fixtures/models/tiny-k256-bf16", "q4_k");
    ASSERT_EQ(m->layers[0].wq.dtype, KDT_Q4_K);
    ASSERT_EQ(m->layers[0].w_down.dtype, KDT_Q4_K);
    ASSERT_EQ(m->embed.dtype, KDT_BF16);
    model_free(m);
    m = load_q(kb, "tests/fixtures/models/tiny-k256-bf16", "stored");
    ASSERT_EQ(m->layers[0].wq.dtype, KDT_BF16);
    model_free(m);
    /* "bf16" rounds stored f32 projections to bf16 (every one: no block constraint) */
    m = load_q(kb, "models/stories260K", "bf16");
    ASSERT_EQ(m->layers[0].wq.dtype, KDT_BF16);
    ASSERT_EQ(m->layers[0].w_down.dtype, KDT_BF16);
    ASSERT_EQ(m->embed.dtype, KDT_F32);
    llama_ctx *c = seq_batch_ctx(m);
    int32_t ids[4] = {1, 403, 407, 261}, g[8];
    seq_spec sp = {.ids = ids, .n = 4};
    seq_greedy(c, m, &sp, 8, g);
    for (int i = 0; i < 8; i++) ASSERT(g[i] >= 0 && g[i] < m->cfg.vocab_size);
    llama_ctx_free(c);
    model_free(m);
    int dt;
    ASSERT_EQ(model_weights_parse("q5_k", &dt), PEFTD_EINVAL);
    kbackend_destroy(kb);
}

/* A backend whose supports_op refuses quantized matmul: the loader refuses by capability. */
static bool no_quant(const kbackend *kb, kop op, kdtype dt) {
    (void)kb;
    (void)op;
    return !kdtype_is_quant(dt);
}

TEST(refused_without_capability) {
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    kbackend_ops ops = *kb->impl_ops;
    ops.supports_op = no_quant;
    const kbackend_ops *saved = kb->ops;
    kb->ops = &ops;
    model_load_opts o = {.weights = KDT_Q8_0, .threads = 1};
    model *m = NULL;
    char err[1024] = "";
    ASSERT_EQ(model_load_ex("models/stories260K", kb, &o, &m, err, sizeof err), PEFTD_EUNSUPPORTED);
    ASSERT(m == NULL);
    ASSERT(strstr(err, "\"weights\": \"q8_0\"") != NULL);
    printf("    refused: %s\n", err);
    kb->ops = saved;
    kbackend_destroy(kb);
}

/* Base and LoRA sequences of different lengths in one batch give every row the bits of the
 * same sequence run alone (batch invariance of the quantized kernels through the model). */
TEST(mixed_batch_bit_identical) {
    qcase q;
    case_load("s260k_q8_0_lora", &q);
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    model *m = load_q(kb, q.model, q.weights);
    adapter *ad = NULL;
    char err[1024] = "";
    if (model_load_adapter(m, q.adapter, &ad, err, sizeof err) < 0) FAIL("adapter: %s", err);
    llama_ctx *c = seq_batch_ctx(m);
    seq_spec sp[3] = {{.ids = q.ids, .n = q.n, .ad = ad}, {.ids = q.ids, .n = q.n, .ad = NULL},
                      {.ids = q.ids + 2, .n = q.n - 5, .ad = ad}};
    float *mixed[3], *solo[3];
    for (int i = 0; i < 3; i++) {
        mixed[i] = malloc(sizeof(float) * (size_t)sp[i].n * q.vocab);
        solo[i] = malloc(sizeof(float) * (size_t)sp[i].n * q.vocab);
        ASSERT(mixed[i] && solo[i]);
    }
    seq_batch_prefill(c, m, sp, 3, mixed);
    for (int i = 0; i < 3; i++) {
        seq_batch_prefill(c, m, &sp[i], 1, &solo[i]);
        if (memcmp(mixed[i], solo[i], sizeof(float) * (size_t)sp[i].n * q.vocab))
            FAIL("sequence %d: mixed batch differs from solo", i);
        free(mixed[i]);
        free(solo[i]);
    }
    printf("    3 sequences (LoRA, base, LoRA), one batch: bit-identical to solo\n");
    llama_ctx_free(c);
    adapter_free(ad);
    model_free(m);
    kbackend_destroy(kb);
    free(q.lf);
    free(q.lq);
}

TEST_MAIN(at_load_rule, refused_without_capability, stories260k_q8_0, stories260k_q8_0_lora, stories260k_q8_0_dora,
          k256_q8_0, k256_q4_k,
          mixed_batch_bit_identical)
