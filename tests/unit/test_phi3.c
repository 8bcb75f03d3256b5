/* tests/unit/test_phi3.c — Phi3ForCausalLM (issue 11): a tiny random Phi-3 whose fused
 * qkv_proj / gate_up_proj are split into row views at load, base and PEFT LoRA / DoRA / IA3
 * on the fused modules (split at import), against transformers + peft
 * (tests/fixtures/make_phi3_fixtures.py -> tests/fixtures/phi3/reference.json); the config
 * rules: partial_rotary_factor < 1 served (reference_partial.json), longrope refused, sliding_window honoured as Mistral;
 * a PEFT target that does not exist on Phi-3 (q_proj) refused.
 *
 * Tolerance 1e-4 on logits, as test_qwen2.c: only summation order differs.
 */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/logit_ref.h"
#include "tests/harness/test.h"

#define TOL 1e-4

/* Every prompt position's logits through llama_forward, one sequence, one segment. */
static void check_case_in(const char *file, const char *name) {
    logit_case q;
    logit_case_load(file, name, &q);
    logit_case_check(&q, name, q.n_ids, TOL, NULL, NULL);
    logit_case_free(&q);
}

static void check_case(const char *name) { check_case_in("tests/fixtures/phi3/reference.json", name); }

TEST(phi3_base) { check_case("base"); }
/* partial_rotary_factor 0.75 (Phi-4-mini): rot_dim 12 of head_dim 16 rotate, 4 pass through. */
TEST(phi3_partial_rotary) { check_case_in("tests/fixtures/phi3/reference_partial.json", "partial"); }
TEST(phi3_lora) { check_case("lora"); }
TEST(phi3_dora) { check_case("dora"); }
TEST(phi3_ia3) { check_case("ia3"); }

static int parse(const char *extra, model_config *cfg, char *err, size_t errlen) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"architectures\": [\"Phi3ForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128, "
             "\"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"vocab_size\": 512, "
             "\"max_position_embeddings\": 8192%s}",
             extra);
    return model_config_parse(json, strlen(json), cfg, err, errlen);
}

TEST(phi3_config_rules) {
    model_config cfg;
    char err[256] = "";
    ASSERT_EQ(parse("", &cfg, err, sizeof err), 0);
    ASSERT(cfg.fused_proj && !cfg.qkv_bias && !cfg.o_bias);
    ASSERT_EQ(parse(", \"sliding_window\": 2047", &cfg, err, sizeof err), 0);
    ASSERT_EQ(cfg.sliding_window, 2047);
    ASSERT_EQ(cfg.rope.rot_dim, 16);
    ASSERT_EQ(parse(", \"partial_rotary_factor\": 0.75", &cfg, err, sizeof err), 0);
    ASSERT_EQ(cfg.rope.rot_dim, 12);
    /* int(16 * 0.1) = 1: an odd rotary width cannot pair halves. */
    ASSERT_EQ(parse(", \"partial_rotary_factor\": 0.1", &cfg, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "partial_rotary_factor"));
    /* longrope (tests/unit/test_rope_seqlen.c runs it): lists of rot_dim / 2 numbers */
    ASSERT_EQ(parse(", \"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [1], \"long_factor\": [1]}",
                    &cfg, err, sizeof err),
              PEFTD_EFORMAT);
    ASSERT(strstr(err, "\"short_factor\" must be a list of 8 numbers"));
}

/* PEFT keys on Phi-3 are the fused names: a q_proj target names nothing in the base. */
TEST(phi3_unfused_target_refused) {
    char err[1024] = "", dir[] = "/tmp/peftd_phi3_XXXXXX", path[600];
    ASSERT(mkdtemp(dir));
    kbackend *kb = kbackend_cpu_create(1);
    model *m = NULL;
    adapter *ad = NULL;
    if (model_load("tests/fixtures/phi3/model", kb, &m, err, sizeof err) < 0) FAIL("model_load: %s", err);
    size_t len;
    char *cfg = test_read_file("tests/fixtures/phi3/lora/adapter_config.json", &len);
    ASSERT(cfg);
    char *hit = strstr(cfg, "\"qkv_proj\"");
    ASSERT(hit);
    memcpy(hit, "\"q_proj\"  ", 10);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "w");
    ASSERT(f);
    fwrite(cfg, 1, len, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    char *weights = realpath("tests/fixtures/phi3/lora/adapter_model.safetensors", NULL);
    ASSERT(weights);
    ASSERT_EQ(symlink(weights, path), 0);
    free(weights);
    ASSERT(model_load_adapter(m, dir, &ad, err, sizeof err) < 0);
    ASSERT(strstr(err, "q_proj"));
    unlink(path);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    unlink(path);
    rmdir(dir);
    free(cfg);
    model_free(m);
    kbackend_destroy(kb);
}

TEST_MAIN(phi3_base, phi3_partial_rotary, phi3_lora, phi3_dora, phi3_ia3, phi3_config_rules, phi3_unfused_target_refused)
