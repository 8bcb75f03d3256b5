/* tests/unit/test_model_config_check.c — model_config_parse's refusals by name (one case per
 * family: MoE, Granite, OLMo, Cohere, multimodal, quantized) and its ignored-field list
 * (server/model/model_config_check.c): an unknown field is named; the config.json of five
 * released checkpoints (tests/fixtures/configs/) parse with exactly the expected list.
 * Run from the repository root.
 */
#include <glob.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lib/status.h"
#include "server/model/model.h"
#include "tests/harness/test.h"

#define FIX "tests/fixtures/configs"

/* A small valid Llama config with `extra` members appended ("" for none). */
static char *llama_with(const char *extra) {
    static char buf[8192];
    snprintf(buf, sizeof buf,
             "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"vocab_size\":32,"
             "\"hidden_size\":16,\"intermediate_size\":32,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
             "\"num_key_value_heads\":2,\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,\"hidden_act\":\"silu\","
             "\"transformers_version\":\"4.57.0\",\"use_cache\":true%s%s}",
             extra[0] ? "," : "", extra);
    return buf;
}

/* The same with architectures replaced. */
static char *arch(const char *name) {
    static char buf[8192];
    char *base = llama_with("");
    char *p = strstr(base, "LlamaForCausalLM");
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(p - base), base, name, p + strlen("LlamaForCausalLM"));
    return buf;
}

static void expect_refused(const char *json, const char *needle) {
    model_config c;
    char err[512] = "";
    int rc = model_config_parse(json, strlen(json), &c, err, sizeof err);
    if (rc != PEFTD_EUNSUPPORTED || !strstr(err, needle) || strchr(err, '\n'))
        FAIL("want PEFTD_EUNSUPPORTED naming \"%s\" on one line; got %d: %s", needle, rc, err);
    printf("    %s\n", err);
}

TEST(refuses_moe) {
    expect_refused(arch("MixtralForCausalLM"), "MixtralForCausalLM");
    expect_refused(arch("Qwen2MoeForCausalLM"), "Qwen2MoeForCausalLM");
    expect_refused(arch("Qwen3MoeForCausalLM"), "Qwen3MoeForCausalLM");
    expect_refused(arch("DeepseekV2ForCausalLM"), "DeepseekV2ForCausalLM");
    expect_refused(arch("DeepseekV3ForCausalLM"), "DeepseekV3ForCausalLM");
    expect_refused(llama_with("\"num_local_experts\":8,\"num_experts_per_tok\":2"), "num_local_experts");
    expect_refused(llama_with("\"num_experts\":64"), "num_experts");
    expect_refused(llama_with("\"n_routed_experts\":256"), "n_routed_experts");
}

TEST(refuses_granite) {
    expect_refused(arch("GraniteForCausalLM"), "GraniteForCausalLM");
    expect_refused(llama_with("\"embedding_multiplier\":12.0"), "embedding_multiplier");
    expect_refused(llama_with("\"residual_multiplier\":0.22"), "residual_multiplier");
    expect_refused(llama_with("\"attention_multiplier\":0.0078125"), "attention_multiplier");
    expect_refused(llama_with("\"logits_scaling\":8.0"), "logits_scaling");
}

TEST(refuses_olmo) {
    expect_refused(arch("OlmoForCausalLM"), "OlmoForCausalLM");
    expect_refused(arch("Olmo2ForCausalLM"), "Olmo2ForCausalLM");
}

TEST(refuses_cohere) {
    expect_refused(arch("CohereForCausalLM"), "CohereForCausalLM");
    expect_refused(arch("Cohere2ForCausalLM"), "Cohere2ForCausalLM");
}

TEST(refuses_multimodal) {
    expect_refused(arch("LlavaForConditionalGeneration"), "LlavaForConditionalGeneration");
    expect_refused(arch("Qwen2VLForConditionalGeneration"), "Qwen2VLForConditionalGeneration");
    expect_refused(arch("Gemma3ForConditionalGeneration"), "Gemma3ForConditionalGeneration");
    expect_refused(arch("MllamaForConditionalGeneration"), "MllamaForConditionalGeneration");
    expect_refused(llama_with("\"vision_config\":{\"hidden_size\":1024}"), "vision_config");
    expect_refused(llama_with("\"text_config\":{\"hidden_size\":16}"), "text_config");
    expect_refused(llama_with("\"use_mrope\":true"), "use_mrope");
}

TEST(refuses_quantized) {
    expect_refused(llama_with("\"quantization_config\":{\"quant_method\":\"gptq\",\"bits\":4}"), "quantization_config");
    expect_refused(llama_with("\"quantization_config\":{\"quant_method\":\"awq\"}"), "awq");
}

/* pretraining_tp: transformers 4.57 does not read it in Llama's modeling: accepted, not listed. */
TEST(pretraining_tp_accepted) {
    model_config c;
    char err[256] = "";
    const char *j = llama_with("\"pretraining_tp\":2");
    ASSERT_EQ(model_config_parse(j, strlen(j), &c, err, sizeof err), 0);
    ASSERT_EQ(c.n_ignored, 0);
}

TEST(unknown_fields_named) {
    model_config c;
    char err[256] = "";
    const char *j = llama_with("\"frobnicate_scale\":2.0,\"attention_dropout\":0.1,\"temperature\":0.7,"
                               "\"pad_token_id\":0,\"weird\\nkey\":null");
    ASSERT_EQ(model_config_parse(j, strlen(j), &c, err, sizeof err), 0);
    ASSERT_EQ(c.n_ignored, 3);
    ASSERT_STREQ(c.ignored[0], "frobnicate_scale");
    ASSERT_STREQ(c.ignored[1], "temperature"); /* generation defaults: peftd takes them per request */
    ASSERT_STREQ(c.ignored[2], "weird?key");   /* one log line whatever the key holds */
    /* bounded: more names than MODEL_MAX_IGNORED are counted */
    char extra[4096] = "";
    size_t n = 0;
    for (int i = 0; i < MODEL_MAX_IGNORED + 5; i++)
        n += (size_t)snprintf(extra + n, sizeof extra - n, "%s\"unknown_%d\":%d", i ? "," : "", i, i);
    j = llama_with(extra);
    ASSERT_EQ(model_config_parse(j, strlen(j), &c, err, sizeof err), 0);
    ASSERT_EQ(c.n_ignored, MODEL_MAX_IGNORED + 5);
    ASSERT_STREQ(c.ignored[MODEL_MAX_IGNORED - 1], "unknown_31");
    /* a failed parse lists nothing */
    j = llama_with("\"frobnicate\":1,\"hidden_act\":\"gelu\"");
    ASSERT(model_config_parse(j, strlen(j), &c, err, sizeof err) < 0);
    ASSERT_EQ(c.n_ignored, 0);
}

/* Released configs: exactly these fields are named as ignored. */
static void expect_ignored(const char *file, const char *const *want, int n_want, const char *patch_from,
                           const char *patch_to) {
    char path[256];
    snprintf(path, sizeof path, FIX "/%s", file);
    size_t len = 0;
    char *txt = test_read_file(path, &len);
    if (!txt) FAIL("the committed fixture %s is missing", path);
    char buf[8192];
    if (patch_from) { /* one textual edit, for variants of the same file */
        char *p = strstr(txt, patch_from);
        ASSERT(p);
        snprintf(buf, sizeof buf, "%.*s%s%s", (int)(p - txt), txt, patch_to, p + strlen(patch_from));
    } else {
        snprintf(buf, sizeof buf, "%s", txt);
    }
    free(txt);
    model_config c;
    char err[512] = "";
    int rc = model_config_parse(buf, strlen(buf), &c, err, sizeof err);
    if (rc) FAIL("%s: %d: %s", file, rc, err);
    printf("    %s%s%s: %d ignored:", file, patch_from ? " with " : "", patch_from ? patch_to : "", c.n_ignored);
    for (int i = 0; i < c.n_ignored; i++) printf(" %s", c.ignored[i]);
    printf("\n");
    ASSERT_EQ(c.n_ignored, n_want);
    for (int i = 0; i < n_want; i++) ASSERT_STREQ(c.ignored[i], want[i]);
}

TEST(released_configs_ignored_fields) {
    expect_ignored("llama31_8b.json", NULL, 0, NULL, NULL);
    expect_ignored("qwen25_7b.json", NULL, 0, NULL, NULL); /* max_window_layers, use_mrope: consumed */
    expect_ignored("qwen3_8b.json", NULL, 0, NULL, NULL);
    expect_ignored("phi3_mini_4k.json", NULL, 0, NULL, NULL); /* original_max_position_embeddings: consumed */
    expect_ignored("mistral_7b_v03.json", NULL, 0, NULL, NULL);
    /* Qwen2.5 with the window switched on: max_window_layers is read, still not listed */
    expect_ignored("qwen25_7b.json", NULL, 0, "\"use_sliding_window\": false", "\"use_sliding_window\": true");
    /* Phi-3 with linear RoPE scaling: the top-level original_max_position_embeddings is unused */
    static const char *const phi[] = {"original_max_position_embeddings"};
    expect_ignored("phi3_mini_4k.json", phi, 1, "\"rope_scaling\": null",
                   "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}");
    /* Llama 3.1 carrying a generation default */
    static const char *const temp[] = {"temperature"};
    expect_ignored("llama31_8b.json", temp, 1, "\"use_cache\": true", "\"use_cache\": true, \"temperature\": 0.6");
}

/* Every config.json the repository carries (most saved by transformers 4.57): nothing ignored. */
TEST(fixture_configs_ignore_nothing) {
    glob_t g;
    memset(&g, 0, sizeof g);
    glob("tests/fixtures/*/*/config.json", 0, NULL, &g);
    glob("tests/fixtures/*/config.json", GLOB_APPEND, NULL, &g);
    glob("models/*/config.json", GLOB_APPEND, NULL, &g);
    ASSERT(g.gl_pathc >= 10);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        /* a config.json beside an adapter (a SEQ_CLS adapter's id2label, adapter_peft_seqcls.c)
         * is no model config */
        char side[512];
        snprintf(side, sizeof side, "%.*s/adapter_config.json", (int)(strrchr(g.gl_pathv[i], '/') - g.gl_pathv[i]),
                 g.gl_pathv[i]);
        if (access(side, F_OK) == 0) continue;
        size_t len = 0;
        char *txt = test_read_file(g.gl_pathv[i], &len);
        ASSERT(txt);
        model_config c;
        char err[512] = "";
        int rc = model_config_parse(txt, len, &c, err, sizeof err);
        free(txt);
        if (rc) FAIL("%s: %d: %s", g.gl_pathv[i], rc, err);
        if (c.n_ignored) FAIL("%s: ignores \"%s\"", g.gl_pathv[i], c.ignored[0]);
    }
    printf("    %zu committed config.json files: no ignored field\n", g.gl_pathc);
    globfree(&g);
}

TEST_MAIN(refuses_moe, refuses_granite, refuses_olmo, refuses_cohere, refuses_multimodal, refuses_quantized,
          pretraining_tp_accepted, unknown_fields_named, released_configs_ignored_fields,
          fixture_configs_ignore_nothing)
