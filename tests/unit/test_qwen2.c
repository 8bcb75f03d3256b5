/* tests/unit/test_qwen2.c — attention projection biases (issue 11): a tiny random
 * Qwen2ForCausalLM (q/k/v biases) and a tiny LlamaForCausalLM with attention_bias = true
 * (q/k/v/o biases), base and PEFT LoRA / IA3 / DoRA, against transformers + peft
 * (tests/fixtures/make_qwen2_fixtures.py -> tests/fixtures/qwen2/reference.json); the
 * add_bias op against a plain loop; the Qwen2 sliding-window rule of config.json.
 *
 * Tolerance 1e-4 on logits, as test_adapter_forward.c: the references are f32 math on
 * exactly the stored weights, so only summation order differs (~1e-6 at these sizes: dims
 * <= 128, |logit| < 5); a missing, doubled or mis-scaled bias moves logits by ~0.1 and more.
 */
#include <cJSON.h>
#include <math.h>

#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/test.h"

#define TOL 1e-4
#define VOCAB 512
#define MAX_IDS 32

typedef struct {
    char model[128], adapter[128];
    int n_ids;
    int32_t ids[MAX_IDS];
    float *logits; /* [n_ids, VOCAB] */
} qcase;

static void case_load(const char *name, qcase *q) {
    size_t len;
    char *text = test_read_file("tests/fixtures/qwen2/reference.json", &len);
    if (!text) FAIL("cannot read tests/fixtures/qwen2/reference.json");
    cJSON *root = cJSON_ParseWithLength(text, len);
    ASSERT(root);
    const cJSON *c = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "cases"), name), *v, *r;
    if (!c) FAIL("reference.json: no case %s", name);
    memset(q, 0, sizeof *q);
    snprintf(q->model, sizeof q->model, "%s", cJSON_GetObjectItem(c, "model")->valuestring);
    const cJSON *ad = cJSON_GetObjectItem(c, "adapter");
    if (cJSON_IsString(ad)) snprintf(q->adapter, sizeof q->adapter, "%s", ad->valuestring);
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "input_ids")) {
        ASSERT(q->n_ids < MAX_IDS);
        q->ids[q->n_ids++] = v->valueint;
    }
    q->logits = malloc(sizeof(float) * (size_t)q->n_ids * VOCAB);
    int row = 0;
    cJSON_ArrayForEach(r, cJSON_GetObjectItem(c, "logits")) {
        int col = 0;
        cJSON_ArrayForEach(v, r) q->logits[(size_t)row * VOCAB + col++] = (float)v->valuedouble;
        ASSERT_EQ(col, VOCAB);
        row++;
    }
    ASSERT_EQ(row, q->n_ids);
    cJSON_Delete(root);
    free(text);
}

/* Every prompt position's logits through llama_forward, one sequence, one segment. */
static void check_case(const char *name) {
    qcase q;
    case_load(name, &q);
    char err[1024] = "";
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    model *m = NULL;
    adapter *ad = NULL;
    if (model_load(q.model, kb, &m, err, sizeof err) < 0) FAIL("model_load %s: %s", q.model, err);
    if (q.adapter[0] && model_load_adapter(m, q.adapter, &ad, err, sizeof err) < 0)
        FAIL("adapter %s: %s", q.adapter, err);
    const int bs = 4, max_blocks = 16;
    llama_ctx_params p = {.max_tokens = 64, .max_seqs = 2, .block_size = bs, .n_blocks = 32, .max_blocks = max_blocks};
    llama_ctx *c = NULL;
    if (llama_ctx_create(m, &p, &c, err, sizeof err) < 0) FAIL("llama_ctx_create: %s", err);
    int32_t pos[MAX_IDS], slots[MAX_IDS], rows[MAX_IDS], btab[16], qstart[2] = {0, q.n_ids}, kvlen[1] = {q.n_ids};
    for (int i = 0; i < max_blocks; i++) btab[i] = 3 + i;
    for (int j = 0; j < q.n_ids; j++) {
        pos[j] = j;
        slots[j] = btab[j / bs] * bs + j % bs;
        rows[j] = j;
    }
    llama_segment seg = {.ad = ad, .scale = 1.0f, .row_start = 0, .row_end = q.n_ids};
    llama_batch b = {.n_tokens = q.n_ids, .tokens = q.ids, .positions = pos, .slots = slots, .n_seqs = 1,
                     .q_start = qstart, .kv_len = kvlen, .block_table = btab, .n_segs = 1, .segs = &seg,
                     .n_logits = q.n_ids, .logit_rows = rows};
    float *out = malloc(sizeof(float) * (size_t)q.n_ids * VOCAB);
    int st = llama_forward(c, &b, out);
    if (st < 0) FAIL("%s: llama_forward: %s", name, peftd_strerror(st));
    double md = 0;
    for (size_t i = 0; i < (size_t)q.n_ids * VOCAB; i++) {
        double d = fabs((double)out[i] - q.logits[i]);
        if (!(d <= md)) md = d;
    }
    printf("    %-16s (%d tokens): max |logit diff| %.3g\n", name, q.n_ids, md);
    if (!(md <= TOL)) FAIL("%s: max |logit diff| %.3g > %g", name, md, TOL);
    free(out);
    free(q.logits);
    llama_ctx_free(c);
    adapter_free(ad);
    model_free(m);
    kbackend_destroy(kb);
}

TEST(qwen2_base) { check_case("base"); }
TEST(qwen2_lora) { check_case("lora"); }
TEST(qwen2_ia3) { check_case("ia3"); }
TEST(qwen2_dora) { check_case("dora"); }
TEST(llama_attention_bias_base) { check_case("llama_bias"); }
TEST(llama_attention_bias_lora) { check_case("llama_bias_lora"); }

/* add_bias on the CPU backend (the reference for the others) against a plain loop, for
 * every stored dtype and odd widths (vector body + masked tail); exact: one f32 add each. */
TEST(add_bias_matches_a_loop) {
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    const int dims[] = {1, 7, 16, 37, 129}, n = 5;
    for (int di = 0; di < 5; di++) {
        int dim = dims[di];
        for (int dt = 0; dt < 3; dt++) {
            float y[5 * 129], want[5 * 129], b32[129];
            uint16_t b16[129];
            for (int j = 0; j < dim; j++) {
                float v = (float)(j % 11) * 0.25f - 1.0f; /* exact in f16 and bf16 */
                b32[j] = v;
                uint32_t u;
                memcpy(&u, &v, 4);
                b16[j] = dt == KDT_BF16 ? (uint16_t)(u >> 16) : 0;
            }
            if (dt == KDT_F16)
                for (int j = 0; j < dim; j++) {
                    _Float16 h = (_Float16)b32[j];
                    memcpy(&b16[j], &h, 2);
                }
            for (int i = 0; i < n * dim; i++) want[i] = y[i] = (float)i * 0.01f;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < dim; j++) want[i * dim + j] += b32[j];
            kmat b = {.data = dt == KDT_F32 ? (const void *)b32 : (const void *)b16, .dtype = (kdtype)dt, .rows = 1, .cols = dim};
            ASSERT_EQ(kb->ops->add_bias(kb, y, n, &b), 0);
            for (int i = 0; i < n * dim; i++)
                if (y[i] != want[i]) FAIL("dim %d dtype %d: y[%d] = %g, want %g", dim, dt, i, y[i], want[i]);
        }
    }
    kmat bad = {.data = NULL, .dtype = KDT_F32, .rows = 2, .cols = 4};
    float y[8];
    ASSERT(kb->ops->add_bias(kb, y, 1, &bad) < 0);
    kbackend_destroy(kb);
}

static int parse(const char *extra, model_config *cfg, char *err, size_t errlen) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128, "
             "\"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"vocab_size\": 512, "
             "\"max_position_embeddings\": 8192%s}",
             extra);
    return model_config_parse(json, strlen(json), cfg, err, errlen);
}

/* transformers' Qwen2Config: the window only on layers >= max_window_layers (or where
 * layer_types says sliding_attention); the engine caps the context when any layer slides. */
TEST(qwen2_sliding_window_rule) {
    model_config cfg;
    char err[256] = "";
    ASSERT_EQ(parse("", &cfg, err, sizeof err), 0);
    ASSERT(cfg.qkv_bias && !cfg.o_bias);
    ASSERT_EQ(cfg.sliding_window, 0);
    ASSERT_EQ(parse(", \"use_sliding_window\": false, \"sliding_window\": 100", &cfg, err, sizeof err), 0);
    ASSERT_EQ(cfg.sliding_window, 0);
    ASSERT_EQ(parse(", \"use_sliding_window\": true, \"sliding_window\": 100", &cfg, err, sizeof err), 0);
    ASSERT_EQ(cfg.sliding_window, 0); /* max_window_layers defaults to 28 >= 4 layers */
    ASSERT_EQ(parse(", \"use_sliding_window\": true, \"sliding_window\": 100, \"max_window_layers\": 2", &cfg,
                    err, sizeof err),
              0);
    ASSERT_EQ(cfg.sliding_window, 100);
    ASSERT_EQ(parse(", \"use_sliding_window\": true, \"sliding_window\": 100, \"max_window_layers\": 2, "
                    "\"layer_types\": [\"full_attention\", \"full_attention\", \"full_attention\", \"full_attention\"]",
                    &cfg, err, sizeof err),
              0);
    ASSERT_EQ(cfg.sliding_window, 0);
    ASSERT_EQ(parse(", \"use_sliding_window\": true, \"sliding_window\": 100, "
                    "\"layer_types\": [\"full_attention\", \"sliding_attention\", \"full_attention\", \"full_attention\"]",
                    &cfg, err, sizeof err),
              0);
    ASSERT_EQ(cfg.sliding_window, 100);
    ASSERT(parse(", \"use_sliding_window\": true, \"sliding_window\": 100, \"layer_types\": [\"full_attention\"]",
                 &cfg, err, sizeof err) < 0);
}

TEST_MAIN(qwen2_base, qwen2_lora, qwen2_ia3, qwen2_dora, llama_attention_bias_base, llama_attention_bias_lora,
          add_bias_matches_a_loop, qwen2_sliding_window_rule)
