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
#include "tests/harness/logit_ref.h"
#include "tests/harness/test.h"

#define TOL 1e-4

/* Every prompt position's logits through llama_forward, one sequence, one segment. */
static void check_case(const char *name) {
    logit_case q;
    logit_case_load("tests/fixtures/qwen2/reference.json", name, &q);
    logit_case_check(&q, name, q.n_ids, TOL, NULL, NULL);
    logit_case_free(&q);
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
