/* tests/unit/test_qwen3.c — Qwen3ForCausalLM (issue 11): a tiny random Qwen3 whose head_dim
 * (32) differs from hidden_size / num_attention_heads (16), with random per-head q_norm /
 * k_norm weights, base and PEFT LoRA (q,k,v,o + MLP), against transformers + peft
 * (tests/fixtures/make_qwen3_fixtures.py -> tests/fixtures/qwen3/reference.json); the Qwen3
 * rules of config.json (head_dim default 128, attention_bias on q/k/v/o, sliding window).
 *
 * Tolerance 1e-4 on logits, as test_qwen2.c: the references are f32 math on exactly the
 * stored weights, so only summation order differs (~1e-6 at these sizes); a missing q/k
 * norm, one applied before the LoRA delta or a head_dim taken as hidden/heads moves logits
 * by far more (or fails to load).
 */
#include <cJSON.h>
#include <math.h>

#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/logit_ref.h"
#include "tests/harness/test.h"

#define TOL 1e-4

static void has_qk_norm(const model *m, void *ud) {
    (void)ud;
    ASSERT_EQ(m->cfg.head_dim, 32);
    ASSERT(m->cfg.qk_norm && m->layers[0].q_norm.data && m->layers[1].k_norm.data);
}

/* Every prompt position's logits; a prefill of n_pre tokens, then decode steps (the normed,
 * rotated k of earlier steps read back from the KV cache). */
static void check_case(const char *name, int n_pre) {
    logit_case q;
    logit_case_load("tests/fixtures/qwen3/reference.json", name, &q);
    logit_case_check(&q, name, n_pre, TOL, has_qk_norm, NULL);
    logit_case_free(&q);
}

TEST(qwen3_base) { check_case("base", 13); }
TEST(qwen3_lora) { check_case("lora", 13); }
TEST(qwen3_base_decode) { check_case("base", 5); }
TEST(qwen3_lora_decode) { check_case("lora", 5); }

static int parse(const char *extra, model_config *cfg, char *err, size_t errlen) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"architectures\": [\"Qwen3ForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128, "
             "\"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"vocab_size\": 512, "
             "\"max_position_embeddings\": 8192%s}",
             extra);
    return model_config_parse(json, strlen(json), cfg, err, errlen);
}

/* transformers' Qwen3Config: head_dim defaults to 128 (not hidden/heads), attention_bias
 * (default false) on all four projections, Qwen2's sliding-window rule. */
TEST(qwen3_config_rules) {
    model_config cfg;
    char err[256] = "";
    ASSERT_EQ(parse("", &cfg, err, sizeof err), 0);
    ASSERT(cfg.qk_norm && !cfg.qkv_bias && !cfg.o_bias);
    ASSERT_EQ(cfg.head_dim, 128);
    ASSERT_EQ(cfg.sliding_window, 0);
    ASSERT_EQ(parse(", \"head_dim\": 24, \"attention_bias\": true", &cfg, err, sizeof err), 0);
    ASSERT_EQ(cfg.head_dim, 24);
    ASSERT(cfg.qkv_bias && cfg.o_bias);
    ASSERT_EQ(parse(", \"sliding_window\": 100", &cfg, err, sizeof err), 0);
    ASSERT_EQ(cfg.sliding_window, 0); /* use_sliding_window defaults to false */
    ASSERT_EQ(parse(", \"use_sliding_window\": true, \"sliding_window\": 100", &cfg, err, sizeof err), 0);
    ASSERT_EQ(cfg.sliding_window, 0); /* max_window_layers defaults to 28 >= 4 layers */
    ASSERT_EQ(parse(", \"use_sliding_window\": true, \"sliding_window\": 100, \"max_window_layers\": 2", &cfg,
                    err, sizeof err),
              0);
    ASSERT_EQ(cfg.sliding_window, 100);
    ASSERT(parse(", \"head_dim\": 31", &cfg, err, sizeof err) < 0);
}

TEST_MAIN(qwen3_base, qwen3_lora, qwen3_base_decode, qwen3_lora_decode, qwen3_config_rules)
