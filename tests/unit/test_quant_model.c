/* tests/unit/test_quant_model.c — at-load quantized weights ("weights": "q8_0" | "q4_k") end to
 * end against tests/fixtures/quant/reference.json (make_quant_fixtures.py: transformers in
 * f32 on weights quantized by gguf-py (Q8_0) or by peftd's quantizer and dequantized by
 * gguf-py (Q4_K)), plus the at-load rule, LoRA on top, and mixed batches bit-identical to
 * solo runs. The other GGUF block types (Q4_0, Q5_K, Q6_K, and a Q4_K_M-style mix: v_proj and
 * down_proj Q6_K, the rest Q4_K) under the tiny-k256 model against reference_types.json (same
 * generator, same two references; the blocks from peftd's quant_ref.c quantizers, Q4_0's
 * byte-identical to gguf-py's, all dequantized by gguf-py), with the same tolerances.
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

#include "kernels/cpu/qmatmul.h"
#include "kernels/cpu/quant_ref.h"
#include "kernels/kernels.h"
#include "lib/half.h"
#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "server/model/model_quant.h"
#include "tests/harness/seq_batch.h"
#include "tests/harness/test.h"

#define REF "tests/fixtures/quant/reference.json"
#define REF_TYPES "tests/fixtures/quant/reference_types.json"
#define TOL_ACTQ 1e-4
#define MAX_IDS 64

typedef struct {
    char name[64], model[256], weights[16], adapter[256];
    int n, vocab;
    int32_t ids[MAX_IDS], greedy_f32[32], greedy_actq[32];
    float *lf, *lq; /* [n, vocab] */
    double format_diff;
} qcase;

static cJSON *ref_root(const char *file) {
    size_t len;
    char *text = test_read_file(file, &len);
    if (!text) FAIL("cannot read %s (fixture missing: run tests/fixtures/make_quant_fixtures.py)", file);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) FAIL("%s: not JSON", file);
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

static void case_load_from(const char *file, const char *name, qcase *q) {
    cJSON *root = ref_root(file);
    const cJSON *c = NULL, *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(root, "cases")) if (!strcmp(cJSON_GetObjectItem(it, "name")->valuestring, name)) c = it;
    if (!c) FAIL("%s: no case %s", file, name);
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

static void case_load(const char *name, qcase *q) { case_load_from(REF, name, q); }

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

/* Quantizes rows of a stored (f32/f16/bf16) projection with a quant_ref.c quantizer into a
 * new buffer (freed by the caller after the model) and points w at it. */
static void requant(kmat *w, kdtype dt, void **buf) {
    size_t rb = kdtype_row_bytes(dt, w->cols);
    ASSERT(rb && !kdtype_is_quant(w->dtype));
    uint8_t *dst = malloc(rb * (size_t)w->rows);
    float *row = malloc(sizeof(float) * (size_t)w->cols);
    ASSERT(dst && row);
    for (int64_t r = 0; r < w->rows; r++) {
        const uint8_t *p = (const uint8_t *)w->data + kdtype_row_bytes(w->dtype, w->cols) * (size_t)r;
        for (int64_t k = 0; k < w->cols; k++) {
            if (w->dtype == KDT_F32) {
                memcpy(&row[k], p + 4 * k, 4);
            } else {
                uint16_t h;
                memcpy(&h, p + 2 * k, 2);
                row[k] = w->dtype == KDT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
            }
        }
        ASSERT_EQ(dt == KDT_Q6_K   ? qref_quantize_q6_k(row, dst + rb * r, w->cols)
                  : dt == KDT_Q8_0 ? qref_quantize_q8_0(row, dst + rb * r, w->cols)
                                   : PEFTD_EINVAL,
                  0);
    }
    free(row);
    w->data = dst;
    w->dtype = dt;
    *buf = dst;
}

/* The stored model with its projections converted to the case's block type(s) by the C
 * quantizers the generator used: "q4_0", "q5_k", "q6_k" through model_quantize_projections;
 * "q4_k_m": v_proj and down_proj Q6_K (requant), then every other projection Q4_K;
 * "q8_0_proj": the projections that fit the 32-blocks Q8_0 (requant), nothing else. */
#define MAX_BUFS 64
static model *load_types(kbackend *kb, const qcase *q, void **bufs, int *n_bufs) {
    model *m = load_q(kb, q->model, "stored");
    char err[512] = "";
    *n_bufs = 0;
    if (!strcmp(q->weights, "q8_0_proj")) {
        for (int i = 0; i < m->cfg.n_layers; i++) {
            model_layer *l = &m->layers[i];
            kmat *w[7] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
            for (int k = 0; k < 7; k++)
                if (w[k]->cols % 32 == 0) {
                    ASSERT(*n_bufs < MAX_BUFS);
                    requant(w[k], KDT_Q8_0, &bufs[(*n_bufs)++]);
                }
        }
        ASSERT(!kdtype_is_quant(m->embed.dtype));
        return m;
    }
    kdtype dt = !strcmp(q->weights, "q4_0") ? KDT_Q4_0 : !strcmp(q->weights, "q5_k") ? KDT_Q5_K : KDT_Q6_K;
    if (!strcmp(q->weights, "q4_k_m")) {
        ASSERT(2 * m->cfg.n_layers + 1 <= MAX_BUFS);
        for (int i = 0; i < m->cfg.n_layers; i++) {
            requant(&m->layers[i].wv, KDT_Q6_K, &bufs[(*n_bufs)++]);
            requant(&m->layers[i].w_down, KDT_Q6_K, &bufs[(*n_bufs)++]);
        }
        dt = KDT_Q4_K;
    } else {
        ASSERT(!strcmp(q->weights, "q4_0") || !strcmp(q->weights, "q5_k") || !strcmp(q->weights, "q6_k"));
    }
    if (model_quantize_projections(m, dt, 2, NULL, &bufs[(*n_bufs)++], err, sizeof err) < 0) FAIL("%s", err);
    for (int i = 0; i < m->cfg.n_layers; i++) { /* every projection of the fixture fits the blocks */
        const model_layer *l = &m->layers[i];
        bool mix = !strcmp(q->weights, "q4_k_m");
        ASSERT_EQ(l->wq.dtype, dt);
        ASSERT_EQ(l->w_up.dtype, dt);
        ASSERT_EQ(l->wv.dtype, (mix ? KDT_Q6_K : dt));
        ASSERT_EQ(l->w_down.dtype, (mix ? KDT_Q6_K : dt));
    }
    return m;
}

static void check_case_in(const char *file, const char *name) {
    qcase q;
    case_load_from(file, name, &q);
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    void *bufs[MAX_BUFS];
    int n_bufs = 0;
    bool types = !strcmp(file, REF_TYPES) || !strcmp(q.weights, "q8_0_proj");
    model *m = types ? load_types(kb, &q, bufs, &n_bufs) : load_q(kb, q.model, q.weights);
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
    for (int i = 0; i < n_bufs; i++) free(bufs[i]);
    kbackend_destroy(kb);
    free(q.lf);
    free(q.lq);
}

static void check_case(const char *name) { check_case_in(REF, name); }

TEST(stories260k_q8_0) { check_case("s260k_q8_0"); }
TEST(stories260k_q8_0_lora) { check_case("s260k_q8_0_lora"); }
TEST(stories260k_q8_0_dora) { check_case("s260k_q8_0_dora"); } /* norms of the dequantized base */
/* Only the projections Q8_0 (embedding and lm_head f32): here the reference's two variants keep
 * the same 32 greedy tokens, and peftd must give them (the f32 tokens of the Q8_0 weights). */
TEST(stories260k_q8_0_proj) {
    qcase q;
    case_load("s260k_q8_0_proj", &q);
    ASSERT(!memcmp(q.greedy_f32, q.greedy_actq, sizeof q.greedy_f32));
    free(q.lf);
    free(q.lq);
    check_case("s260k_q8_0_proj");
}
TEST(k256_q8_0) { check_case("k256_q8_0"); }
TEST(k256_q4_k) { check_case("k256_q4_k"); }
TEST(k256_q4_0) { check_case_in(REF_TYPES, "k256_q4_0"); }
TEST(k256_q5_k) { check_case_in(REF_TYPES, "k256_q5_k"); }
TEST(k256_q6_k) { check_case_in(REF_TYPES, "k256_q6_k"); }
TEST(k256_q4_k_m) { check_case_in(REF_TYPES, "k256_q4_k_m"); }

/* The rule of model_quant.h: projections whose in-features fit the block are converted; under
 * q8_0 the rest (stories260K's down_proj: 172) become F16 and the embedding (tied lm_head)
 * Q8_0, as llama.cpp's converter does; q4_k keeps the misfits, embeddings and lm_head as
 * stored; norms stay. */
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
        ASSERT_EQ(l->w_down.dtype, KDT_F16);
        ASSERT_EQ(m->host_layers[i].wq.dtype, KDT_Q8_0);
        ASSERT_EQ(l->attn_norm.dtype, KDT_F32);
    }
    ASSERT_EQ(m->embed.dtype, KDT_Q8_0);
    ASSERT(m->lm_head.data == m->embed.data && m->lm_head.dtype == KDT_Q8_0); /* tied: one tensor */
    ASSERT_EQ(m->final_norm.dtype, KDT_F32);
    model_free(m);
    m = load_q(kb, "tests/fixtures/models/tiny-k256-bf16", "q4_k");
    /* Q4_K, in the layout this CPU's matmul path prefers (the AVX2 path: KDT_Q4_K_SB8) */
    ASSERT_EQ(m->layers[0].wq.dtype, kops_preferred_dtype(kb, KOP_MATMUL, KDT_Q4_K));
    ASSERT_EQ(m->layers[0].w_down.dtype, kops_preferred_dtype(kb, KOP_MATMUL, KDT_Q4_K));
    ASSERT_EQ(m->embed.dtype, KDT_BF16);
    model_free(m);
    m = load_q(kb, "models/stories260K", "q4_k"); /* 64 in-features: nothing fits 256-blocks */
    ASSERT_EQ(m->layers[0].wq.dtype, KDT_F32);
    ASSERT_EQ(m->layers[0].w_down.dtype, KDT_F32);
    ASSERT_EQ(m->embed.dtype, KDT_F32);
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

/* model_reorder_projections on a TIED quantized table (what the 1B Q4_K_M GGUF is: token_embd
 * Q6_K used as lm_head too): under the AVX2 path the one table becomes KDT_Q6_K_SB16 for both the
 * gather and the lm_head matmul (still one tensor), the Q4_K projections KDT_Q4_K_SB8; logits of
 * a prefill and decode steps bit-identical to the stored order's (scalar path), and the embedding
 * rows gathered from the reordered table are the stored table's. SKIP without AVX2. */
TEST(tied_table_reordered_same_logits) {
    if (!kq_path_available(KQ_AVX2)) SKIP("no AVX2 on this CPU: the reorderings are not used");
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    model *m = load_q(kb, "tests/fixtures/models/tiny-k256-bf16", "stored");
    ASSERT(m->cfg.tie_word_embeddings && m->lm_head.data == m->embed.data);
    void *bufs[3] = {NULL, NULL, NULL};
    char err[512] = "";
    requant(&m->embed, KDT_Q6_K, &bufs[0]);
    m->lm_head = m->embed;
    if (model_quantize_projections(m, KDT_Q4_K, 2, NULL, &bufs[1], err, sizeof err) < 0) FAIL("%s", err);
    ASSERT_EQ(m->layers[0].wq.dtype, KDT_Q4_K);
    static const int32_t ids[9] = {1, 17, 200, 45, 3, 99, 128, 7, 250};
    const int n = 9, vocab = m->cfg.vocab_size;
    float *a = malloc(sizeof(float) * n * vocab), *b = malloc(sizeof(float) * n * vocab);
    float *ea = malloc(sizeof(float) * 3 * m->cfg.hidden_size), *eb = malloc(sizeof(float) * 3 * m->cfg.hidden_size);
    ASSERT(a && b && ea && eb);
    kq_path was = kcpu__q_path;
    kcpu__q_path = KQ_SCALAR;
    seq_spec sp = {.ids = ids, .n = n};
    llama_ctx *c = seq_batch_ctx(m);
    seq_prefill_decode(c, m, &sp, 5, a);
    llama_ctx_free(c);
    ASSERT_EQ(kb->ops->get_rows(kb, &m->embed, ids, 3, ea), 0);
    kcpu__q_path = KQ_AVX2;
    if (model_reorder_projections(m, 2, &bufs[2], err, sizeof err) < 0) FAIL("%s", err);
    ASSERT_EQ(m->embed.dtype, KDT_Q6_K_SB16);
    ASSERT(m->lm_head.data == m->embed.data && m->lm_head.dtype == KDT_Q6_K_SB16);
    ASSERT_EQ(m->layers[0].wq.dtype, KDT_Q4_K_SB8);
    ASSERT_EQ(kb->ops->get_rows(kb, &m->embed, ids, 3, eb), 0);
    ASSERT(memcmp(ea, eb, sizeof(float) * 3 * m->cfg.hidden_size) == 0);
    c = seq_batch_ctx(m);
    seq_prefill_decode(c, m, &sp, 5, b);
    llama_ctx_free(c);
    if (memcmp(a, b, sizeof(float) * n * vocab))
        FAIL("reordered tied table: logits differ from the stored order's (max |diff| %.3g)", maxdiff(a, b, (size_t)n * vocab));
    printf("    tied Q6_K table + Q4_K projections reordered (q6_k_sb16 / q4_k_sb8): 5-token prefill + 4 decode steps "
           "bit-identical, gathered rows equal\n");
    kcpu__q_path = was;
    model_free(m);
    for (int i = 0; i < 3; i++) free(bufs[i]);
    free(a);
    free(b);
    free(ea);
    free(eb);
    kbackend_destroy(kb);
}

TEST_MAIN(at_load_rule, tied_table_reordered_same_logits, refused_without_capability, stories260k_q8_0, stories260k_q8_0_lora, stories260k_q8_0_dora,
          stories260k_q8_0_proj,
          k256_q8_0, k256_q4_k, k256_q4_0, k256_q5_k, k256_q6_k, k256_q4_k_m,
          mixed_batch_bit_identical)
