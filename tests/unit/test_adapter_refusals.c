/* tests/unit/test_adapter_refusals.c — every refusal of adapter_load_dir() against the embedded
 * stories260K base, on synthetic PEFT and AdapterHub adapters (tests/harness/adapter_syn.h):
 * each must give the exact status and name the offending field, tensor or file. */
#include <cJSON.h>
#include <unistd.h>

#include "lib/half.h"
#include "tests/harness/adapter_syn.h"
#include "tests/harness/test.h"

/* adapter_internal.h's ADAPTER_MAX_PATTERNS (not a public header) */
#define ADAPTER_MAX_PATTERNS_FOR_TEST 1024

/* ---- refusals ---------------------------------------------------------------------- */

TEST(err_unknown_peft_type) {
    syn *s = syn_lora(2, "F32");
    syn_cfg_set(s, "peft_type", cJSON_CreateString("FOURIERFT"));
    syn_load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "peft_type", "FOURIERFT");
    syn_free(s);
}

TEST(err_fan_in_fan_out_and_bias) {
    syn *s = syn_lora(2, "F32");
    syn_cfg_set(s, "fan_in_fan_out", cJSON_CreateTrue());
    syn_load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "fan_in_fan_out", NULL);
    syn_cfg_set(s, "fan_in_fan_out", cJSON_CreateFalse());
    /* trained biases (issue 16): on a bias-free base PEFT saves none, so "lora_only" / "all"
     * load as plain LoRA; a value PEFT does not know is malformed */
    syn_cfg_set(s, "bias", cJSON_CreateString("lora_only"));
    adapter_free(syn_load_ok(syn_dir(s)));
    syn_cfg_set(s, "bias", cJSON_CreateString("some"));
    syn_load_fails(syn_dir(s), PEFTD_EFORMAT, "'bias'", "some");
    syn_cfg_set(s, "bias", cJSON_CreateString("none"));
    /* lora_bias: true needs lora_B.bias of every adapted module */
    syn_cfg_set(s, "lora_bias", cJSON_CreateTrue());
    syn_load_fails(syn_dir(s), PEFTD_EFORMAT, "lora_B.bias", "missing");
    syn_cfg_set(s, "lora_bias", cJSON_CreateFalse());
    syn_cfg_set(s, "layer_replication", cJSON_Parse("[[0, 2]]"));
    syn_load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "layer_replication", NULL);
    syn_free(s);
}

TEST(err_pickle_weights_refused) {
    syn *s = syn_lora(2, "F32");
    const char *d = syn_dir(s);
    char p[512];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
    ASSERT_EQ(unlink(p), 0);
    /* a pickle header: the loader must refuse by name, never read it */
    syn_write_file(d, "adapter_model.bin", "\x80\x02}q\x00.", 6);
    syn_load_fails(d, PEFTD_EUNSUPPORTED, "adapter_model.bin", "pickle weights are not loaded; save with safe_serialization=True");
    syn_free(s);

    s = syn_hub("x", 16, false);
    d = syn_dir(s);
    snprintf(p, sizeof p, "%s/adapter.safetensors", d);
    ASSERT_EQ(unlink(p), 0);
    syn_write_file(d, "pytorch_adapter.bin", "\x80\x02}q\x00.", 6);
    syn_load_fails(d, PEFTD_EUNSUPPORTED, "pytorch_adapter.bin", "pickle weights are not loaded");
    syn_free(s);
}

TEST(err_missing_files) {
    syn *s = syn_lora(2, "F32");
    const char *d = syn_dir(s);
    char p[512];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
    ASSERT_EQ(unlink(p), 0);
    syn_load_fails(d, PEFTD_EFORMAT, "adapter_model.safetensors", "missing");
    snprintf(p, sizeof p, "%s/adapter_config.json", d);
    ASSERT_EQ(unlink(p), 0);
    syn_load_fails(d, PEFTD_EFORMAT, "adapter_config.json", NULL);
    syn_free(s);
}

TEST(err_wrong_shape) {
    syn *s = syn_lora(4, "F32");
    syn_drop(s, "base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight");
    syn_add(s, "F32", 4, 32, "base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight");
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "'base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight' has shape [4, 32]",
               "expected [4, 64]");
    syn_free(s);
    /* a rank that disagrees with r is a shape error too */
    s = syn_lora(4, "F32");
    syn_drop(s, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
    syn_add(s, "F32", 64, 8, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "q_proj.lora_B.weight' has shape [64, 8]", "expected [64, 4]");
    syn_free(s);
}

/* LyCORIS CP form (conv layers' core tensor hada_t1 / lokr_t2) is refused naming the tensor;
 * the same adapters without it load. */
TEST(err_lycoris_cp_form) {
    static const char *const TYPES[2] = {"LOHA", "LOKR"};
    for (int k = 0; k < 2; k++) {
        for (int with_cp = 0; with_cp < 2; with_cp++) {
            syn_base();
            syn *s = calloc(1, sizeof *s);
            s->weights = "adapter_model.safetensors";
            s->cfg = cJSON_CreateObject();
            cJSON_AddStringToObject(s->cfg, "peft_type", TYPES[k]);
            cJSON_AddStringToObject(s->cfg, "base_model_name_or_path", "models/stories260K");
            cJSON_AddNumberToObject(s->cfg, "r", 2);
            cJSON_AddNumberToObject(s->cfg, "alpha", 4);
            const char *tm[] = {"q_proj"};
            cJSON_AddItemToObject(s->cfg, "target_modules", cJSON_CreateStringArray(tm, 1));
            const char *pre = "base_model.model.model.layers.%d.self_attn.q_proj.%s";
            for (int l = 0; l < 5; l++) {
                if (k == 0) { /* LoHa: w1 = w1_a w1_b, w2 = w2_a w2_b over [64, 64] */
                    syn_add(s, "F32", 64, 2, pre, l, "hada_w1_a");
                    syn_add(s, "F32", 2, 64, pre, l, "hada_w1_b");
                    syn_add(s, "F32", 64, 2, pre, l, "hada_w2_a");
                    syn_add(s, "F32", 2, 64, pre, l, "hada_w2_b");
                    if (with_cp && l == 3) syn_add(s, "F32", 2, 2, pre, l, "hada_t1");
                } else { /* LoKr: kron(w1 [8, 8], w2 [8, 8]) with w2 factored */
                    syn_add(s, "F32", 8, 8, pre, l, "lokr_w1");
                    syn_add(s, "F32", 8, 2, pre, l, "lokr_w2_a");
                    syn_add(s, "F32", 2, 8, pre, l, "lokr_w2_b");
                    if (with_cp && l == 3) syn_add(s, "F32", 2, 2, pre, l, "lokr_t2");
                }
            }
            const char *d = syn_dir(s);
            if (with_cp) syn_load_fails(d, PEFTD_EUNSUPPORTED, k == 0 ? "layers.3.self_attn.q_proj.hada_t1" : "layers.3.self_attn.q_proj.lokr_t2",
                                    "CP form");
            else adapter_free(syn_load_ok(d));
            syn_free(s);
        }
    }
}

TEST(err_non_finite) {
    syn *s = syn_lora(2, "F32");
    syn_find(s, "base_model.model.model.layers.4.self_attn.q_proj.lora_B.weight")->vals[5] = NAN;
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "layers.4.self_attn.q_proj.lora_B.weight", "NaN");
    syn_free(s);
    s = syn_lora(2, "F16");
    syn_find(s, "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight")->vals[0] = 1e6f; /* f16 → Inf */
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "layers.1.self_attn.v_proj.lora_A.weight", "Inf");
    syn_free(s);
    s = syn_hub("x", 16, false);
    syn_find(s, "model.layers.0.output_adapters.adapters.x.adapter_up.bias")->vals[3] = -INFINITY;
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "adapter_up.bias", "Inf");
    syn_free(s);
}

TEST(err_targets_the_base_lacks) {
    syn *s = syn_lora(2, "F32");
    const char *tm[] = {"q_proj", "c_attn"};
    syn_cfg_set(s, "target_modules", cJSON_CreateStringArray(tm, 2));
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "c_attn", "not found in base");
    const char *tm2[] = {"q_proj", "v_proj", "lm_head"};
    syn_cfg_set(s, "target_modules", cJSON_CreateStringArray(tm2, 3));
    /* lm_head is a LoRA target since issue 16: its tensors are then required */
    syn_load_fails(syn_dir(s), PEFTD_EFORMAT, "lm_head.lora_A.weight", "missing");
    const char *tm4[] = {"q_proj", "input_layernorm"};
    syn_cfg_set(s, "target_modules", cJSON_CreateStringArray(tm4, 2));
    syn_load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "input_layernorm", NULL);
    const char *tm3[] = {"q_proj", "v_proj"};
    syn_cfg_set(s, "target_modules", cJSON_CreateStringArray(tm3, 2));
    syn_cfg_set(s, "layers_to_transform", cJSON_CreateIntArray((int[]){1, 5}, 2));
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "layers_to_transform", "is 5; must be an integer in [0, 4]");
    syn_cfg_set(s, "layers_to_transform", cJSON_CreateNumber(9));
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "layers_to_transform", "is 9; must be an integer in [0, 4]");
    syn_free(s);
}

TEST(err_missing_and_unexpected_tensors) {
    syn *s = syn_lora(2, "F32");
    syn_drop(s, "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight");
    syn_load_fails(syn_dir(s), PEFTD_EFORMAT, "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight", "missing");
    syn_free(s);
    s = syn_lora(2, "F32");
    syn_add(s, "F32", 64, 0, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias");
    syn_load_fails(syn_dir(s), PEFTD_EFORMAT, "unexpected tensor", "q_proj.lora_B.bias");
    syn_free(s);
}

TEST(base_model_name_is_informational) {
    syn *s = syn_lora(2, "F32");
    syn_cfg_set(s, "base_model_name_or_path", cJSON_CreateString("meta-llama/Llama-2-70b-hf"));
    syn_cfg_set(s, "revision", cJSON_CreateString("main"));
    adapter *a = syn_load_ok(syn_dir(s));
    adapter_free(a);
    syn_free(s);
}

TEST(err_config_types) {
    static const struct {
        const char *field, *json, *want;
    } cases[] = {
        {"r", "\"4\"", "'r'"},
        {"r", "2.5", "'r'"},
        {"lora_alpha", "\"8\"", "'lora_alpha'"},
        {"use_dora", "\"yes\"", "'use_dora'"},
        {"target_modules", "5", "'target_modules'"},
        {"target_modules", "[\"q_proj\", 3]", "'target_modules'"},
        {"target_modules", "\"(unclosed\"", "invalid regex"},
        {"rank_pattern", "[]", "'rank_pattern'"},
        {"rank_pattern", "{\"q_proj\": \"big\"}", "rank_pattern['q_proj']"},
        {"layers_to_transform", "\"0\"", "'layers_to_transform'"},
        {"modules_to_save", "\"lm_head\"", "'modules_to_save'"},
        {"peft_type", "7", "'peft_type'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        syn *s = syn_lora(2, "F32");
        syn_cfg_set(s, cases[i].field, cJSON_Parse(cases[i].json));
        syn_load_fails(syn_dir(s), PEFTD_EFORMAT, cases[i].want, NULL);
        syn_free(s);
    }
    syn *s = syn_lora(2, "F32");
    const char *d = syn_dir(s);
    syn_write_file(d, "adapter_config.json", "[1, 2]", 6);
    syn_load_fails(d, PEFTD_EFORMAT, "not a JSON object", NULL);
    syn_write_file(d, "adapter_config.json", "{\"peft_type\": \"LORA\",", 21);
    syn_load_fails(d, PEFTD_EFORMAT, "not valid JSON", NULL);
    syn_write_file(d, "adapter_config.json", "{\"hello\": 1}", 12);
    syn_load_fails(d, PEFTD_EFORMAT, "peft_type", NULL);
    syn_write_file(d, "adapter_config.json", "{\"config\": 1}", 13);
    syn_load_fails(d, PEFTD_EFORMAT, "'config'", NULL);
    syn_free(s);
}

TEST(err_ia3_and_prompt) {
    syn_base();
    syn *s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"IA3\",\"target_modules\":[\"k_proj\",\"down_proj\"],"
                         "\"feedforward_modules\":[\"down_proj\"],\"fan_in_fan_out\":false}");
    for (int l = 0; l < 5; l++) {
        syn_add(s, "BF16", 32, 1, "base_model.model.model.layers.%d.self_attn.k_proj.ia3_l", l);
        syn_add(s, "BF16", 1, 172, "base_model.model.model.layers.%d.mlp.down_proj.ia3_l", l);
    }
    adapter *a = syn_load_ok(syn_dir(s));
    ASSERT(a->ia3_input[AMOD_DOWN] && !a->ia3_input[AMOD_K]);
    ASSERT(a->ia3[AMOD_V] == NULL);
    ASSERT_EQ(a->ia3[2 * AMOD_COUNT + AMOD_DOWN][171],
              bf16_to_f32(f32_to_bf16(syn_find(s, "base_model.model.model.layers.2.mlp.down_proj.ia3_l")->vals[171])));
    adapter_free(a);
    /* an output-side vector where the config says feedforward (input side) */
    syn_cfg_set(s, "feedforward_modules", cJSON_CreateStringArray((const char *[]){"k_proj"}, 1));
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "k_proj.ia3_l' has shape [32, 1]", "expected [1, 64]");
    syn_cfg_set(s, "feedforward_modules", cJSON_CreateStringArray((const char *[]){"o_proj"}, 1));
    syn_load_fails(syn_dir(s), PEFTD_EFORMAT, "feedforward_modules", "o_proj");
    syn_free(s);

    s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":4,\"token_dim\":64}");
    syn_add(s, "F16", 4, 64, "prompt_embeddings");
    a = syn_load_ok(syn_dir(s));
    ASSERT_EQ(a->n_virtual, 4);
    ASSERT_EQ(a->prompt.dtype, KDT_F32);
    adapter_free(a);
    syn_cfg_set(s, "num_virtual_tokens", cJSON_CreateNumber(5));
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "prompt_embeddings", "expected [5, 64]");
    syn_free(s);
}

/* Issue 9 #2: numbers a config may hold but the forward cannot use (a float that overflows
 * when narrowed, an index/count outside int) are refused at import with PEFTD_EINVAL (HTTP
 * 422) naming the field. Before: lora_alpha 1e308 / 3.5e38 / alpha_pattern 1e308 / hub
 * scaling loaded (scale Inf, every completion failed), layers_to_transform [1e300] and
 * reduction_factor 1e-300 were float->int casts out of range (undefined behaviour). */
TEST(err_numbers_the_forward_cannot_use) {
    static const struct {
        const char *field, *json, *want;
    } lora[] = {
        {"lora_alpha", "1e308", "'lora_alpha' is 1e+308"},
        {"lora_alpha", "3.5e38", "'lora_alpha' is 3.5e+38"},
        {"lora_alpha", "-2e6", "'lora_alpha' is -2e+06"},
        {"alpha_pattern", "{\"q_proj\": 1e308}", "alpha_pattern['q_proj'] is 1e+308"},
        {"r", "1e300", "'r' is 1e+300"},
        {"r", "0", "'r' is 0"},
        {"rank_pattern", "{\"v_proj\": 1e300}", "rank_pattern['v_proj'] is 1e+300"},
        {"layers_to_transform", "[1e300]", "'layers_to_transform'"},
        {"layers_to_transform", "[-1e300]", "'layers_to_transform'"},
        {"layers_to_transform", "1e300", "'layers_to_transform'"},
    };
    for (size_t i = 0; i < sizeof lora / sizeof lora[0]; i++) {
        syn *s = syn_lora(2, "F32");
        syn_cfg_set(s, lora[i].field, cJSON_Parse(lora[i].json));
        syn_load_fails(syn_dir(s), PEFTD_EINVAL, lora[i].want, NULL);
        syn_free(s);
    }
    static const struct {
        const char *field, *json, *want;
    } hub[] = {
        {"scaling", "1e308", "'scaling' is 1e+308"},
        {"scaling", "3.5e38", "'scaling' is 3.5e+38"},
        {"reduction_factor", "1e-300", "reduction_factor 1e-300"},
        {"reduction_factor", "{\"default\": 1e-300}", "reduction_factor"},
        {"leave_out", "[1e300]", "leave_out"},
    };
    for (size_t i = 0; i < sizeof hub / sizeof hub[0]; i++) {
        syn *s = syn_hub("x", 16, false);
        syn_hub_set(s, hub[i].field, cJSON_Parse(hub[i].json));
        syn_load_fails(syn_dir(s), PEFTD_EINVAL, hub[i].want, NULL);
        syn_free(s);
    }
    syn *s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":1e300,\"token_dim\":64}");
    syn_add(s, "F32", 4, 64, "prompt_embeddings");
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "'num_virtual_tokens' is 1e+300", NULL);
    syn_cfg_set(s, "num_virtual_tokens", cJSON_CreateNumber(4));
    syn_cfg_set(s, "token_dim", cJSON_Parse("-1e300"));
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "'token_dim'", NULL);
    syn_free(s);
    /* the largest accepted values still load and give a finite scale */
    s = syn_lora(2, "F32");
    syn_cfg_set(s, "lora_alpha", cJSON_CreateNumber(1e6));
    adapter *a = syn_load_ok(syn_dir(s));
    ASSERT_NEAR(a->lora[AMOD_Q].scale, 5e5, 0);
    adapter_free(a);
    syn_free(s);
}

/* Issue 9 #12: AdapterHub wirings the forward cannot run were accepted, then failed every
 * step (plan build) and with it every other sequence of the batch. Refused at import now;
 * residual_before_ln false without original_ln_before is the served math and loads. */
TEST(err_hub_residual_wiring_not_served) {
    syn *s = syn_hub("x", 16, false);
    syn_hub_set(s, "original_ln_after", cJSON_CreateFalse());
    syn_load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "original_ln_after is false", NULL);
    syn_free(s);
    s = syn_hub("x", 16, false); /* original_ln_before true */
    syn_hub_set(s, "residual_before_ln", cJSON_CreateFalse());
    syn_load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "residual_before_ln is false", NULL);
    syn_hub_set(s, "original_ln_before", cJSON_CreateFalse());
    adapter *a = syn_load_ok(syn_dir(s));
    for (int l = 0; l < 5; l++) {
        ASSERT(a->bn_ffn[l].size > 0);
        ASSERT(a->bn_ffn[l].residual_before_ln && a->bn_ffn[l].original_ln_after && !a->bn_ffn[l].original_ln_before);
    }
    adapter_free(a);
    syn_free(s);
}

/* Issue 9 #6: 20 catastrophic rank_pattern regexes in an 814-byte config held a thread for
 * 12 s. Every match now runs under PCRE2 match/depth limits, pattern maps and lists are
 * capped, and the config's size and JSON value count are bounded before parsing. Each
 * hostile config below is refused with PEFTD_EINVAL (422) and the reason; on the old code
 * the first one ran until the harness timeout (exponential backtracking on every key). */
TEST(err_hostile_patterns_and_configs) {
    syn *s = syn_lora(2, "F32");
    cJSON *rp = cJSON_CreateObject();
    for (int i = 0; i < 20; i++) {
        char k[64];
        snprintf(k, sizeof k, "(.*.*.*.*.*.*.*.*.*.*)*[#%%]%d", i);
        cJSON_AddNumberToObject(rp, k, 4);
    }
    syn_cfg_set(s, "rank_pattern", rp);
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "rank_pattern", "exceeds the match limits");
    /* target_modules as a regex goes through the same limits */
    syn_cfg_set(s, "rank_pattern", cJSON_CreateObject());
    syn_cfg_set(s, "target_modules", cJSON_CreateString("(.*.*.*.*.*.*.*.*.*.*)*[#%]"));
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "target_modules", "exceeds the match limits");
    syn_cfg_set(s, "target_modules", cJSON_CreateStringArray((const char *[]){"q_proj", "v_proj"}, 2));
    /* more pattern keys than any real model has modules */
    rp = cJSON_CreateObject();
    for (int i = 0; i < ADAPTER_MAX_PATTERNS_FOR_TEST + 1; i++) {
        char k[64];
        snprintf(k, sizeof k, "model.layers.%d.self_attn.q_proj", i);
        cJSON_AddNumberToObject(rp, k, 2);
    }
    syn_cfg_set(s, "alpha_pattern", rp);
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "alpha_pattern", "at most 1024");
    syn_cfg_set(s, "alpha_pattern", cJSON_CreateObject());
    /* a list of 1025 modules_to_save */
    cJSON *l = cJSON_CreateArray();
    for (int i = 0; i < ADAPTER_MAX_PATTERNS_FOR_TEST + 1; i++) cJSON_AddItemToArray(l, cJSON_CreateString("score"));
    syn_cfg_set(s, "modules_to_save", l);
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "modules_to_save", "more than 1024 entries");
    syn_cfg_set(s, "modules_to_save", cJSON_CreateNull());
    /* a config of 70,000 JSON values (a few hundred kB) and one over 1 MiB */
    l = cJSON_CreateArray();
    for (int i = 0; i < 70000; i++) cJSON_AddItemToArray(l, cJSON_CreateNumber(0));
    syn_cfg_set(s, "padding", l);
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "adapter_config.json holds about", "JSON values");
    char *big = malloc((1u << 20) + 2);
    ASSERT(big);
    memset(big, 'x', (1u << 20) + 1);
    big[(1u << 20) + 1] = 0;
    syn_cfg_set(s, "padding", cJSON_CreateString(big));
    free(big);
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "adapter_config.json is larger than", NULL);
    syn_free(s);
}

TEST(names_and_shapes) {
    syn_base();
    adapter_free(NULL);
    ASSERT_STREQ(adapter_kind_name(ADAPTER_BOTTLENECK), "bottleneck");
    ASSERT_STREQ(adapter_kind_name(ADAPTER_PREFIX_TUNING), "prefix_tuning");
    ASSERT_STREQ(adapter_module_name(AMOD_GATE), "gate_proj");
    int o, in;
    adapter_module_shape(syn_base(), AMOD_K, &o, &in);
    ASSERT_EQ(o, 32);
    ASSERT_EQ(in, 64);
    adapter_module_shape(syn_base(), AMOD_DOWN, &o, &in);
    ASSERT_EQ(o, 64);
    ASSERT_EQ(in, 172);
}

/* Issue 9 import gaps: a LoRA rank above max(in, out) of its module (stories260K q_proj is
 * [64, 64], v_proj [32, 64]) or above the absolute bound (one huge rank sized the engine's
 * SGMV workspace for the whole batch and failed every sequence of the step), and prompt
 * tuning with num_virtual_tokens >= the base's context (512 positions: no room for a
 * prompt). Both loaded on the old code; now PEFTD_EINVAL (HTTP 422) naming the field. */
TEST(err_rank_and_virtual_tokens_beyond_the_base) {
    syn *s = syn_lora(65, "F32");
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "field 'r' is 65", "max(in, out) = 64");
    syn_free(s);
    s = syn_lora(64, "F32"); /* == max(in, out): served */
    adapter *a = syn_load_ok(syn_dir(s));
    ASSERT_EQ(a->max_rank, 64);
    adapter_free(a);
    syn_free(s);
    s = syn_lora(2, "F32");
    cJSON *rp = cJSON_CreateObject();
    cJSON_AddNumberToObject(rp, "v_proj", 65);
    syn_cfg_set(s, "rank_pattern", rp);
    for (int l = 0; l < 5; l++) {
        char n[128];
        snprintf(n, sizeof n, "base_model.model.model.layers.%d.self_attn.v_proj.lora_A.weight", l);
        syn_drop(s, n);
        snprintf(n, sizeof n, "base_model.model.model.layers.%d.self_attn.v_proj.lora_B.weight", l);
        syn_drop(s, n);
        syn_lora_module(s, l, AMOD_V, 65, "F32", false);
    }
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "rank_pattern['v_proj'] is 65", "v_proj [32, 64]");
    syn_free(s);
    s = syn_lora(2, "F32");
    syn_cfg_set(s, "r", cJSON_CreateNumber(5000));
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "'r'", "4096");
    syn_free(s);

    s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":512,\"token_dim\":64}");
    syn_add(s, "F32", 512, 64, "prompt_embeddings");
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "'num_virtual_tokens' is 512", "context of 512");
    syn_free(s);
    s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"PREFIX_TUNING\",\"num_virtual_tokens\":600,\"num_layers\":5,"
                         "\"token_dim\":32,\"num_attention_heads\":4}");
    syn_add(s, "F32", 600, 320, "prompt_embeddings");
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "'num_virtual_tokens' is 600", "no room for a prompt");
    syn_free(s);
    s = calloc(1, sizeof *s); /* 511: one position left, served */
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":511,\"token_dim\":64}");
    syn_add(s, "F32", 511, 64, "prompt_embeddings");
    a = syn_load_ok(syn_dir(s));
    adapter_free(a);
    syn_free(s);
}

/* Non-finite values in the half-precision encodings themselves (exponent all ones): bf16
 * NaN / Inf, f16 NaN, in LoRA, DoRA magnitude and prompt tables, each refused naming the
 * tensor. */
TEST(err_non_finite_half_encodings) {
    syn *s = syn_lora(2, "BF16");
    syn_find(s, "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight")->vals[7] = NAN;
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "layers.2.self_attn.q_proj.lora_A.weight", "NaN");
    syn_free(s);
    s = syn_lora(2, "BF16");
    syn_find(s, "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight")->vals[1] = INFINITY;
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "layers.0.self_attn.v_proj.lora_B.weight", "Inf");
    syn_free(s);
    s = syn_lora(2, "F16");
    syn_find(s, "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight")->vals[0] = NAN;
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "layers.3.self_attn.q_proj.lora_B.weight", "NaN");
    syn_free(s);
    s = syn_lora(2, "F32");
    syn_cfg_set(s, "use_dora", cJSON_CreateTrue());
    for (int l = 0; l < 5; l++)
        for (int m = AMOD_Q; m <= AMOD_V; m += AMOD_V - AMOD_Q) {
            int o;
            adapter_module_shape(syn_base(), (adapter_module)m, &o, NULL);
            wtensor *t = syn_add(s, "BF16", o, 0, "base_model.model.model.layers.%d.self_attn.%s.lora_magnitude_vector",
                                 l, adapter_module_name((adapter_module)m));
            for (int j = 0; j < o; j++) t->vals[j] = 1.0f;
            if (l == 4 && m == AMOD_V) t->vals[3] = -INFINITY;
        }
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "layers.4.self_attn.v_proj.lora_magnitude_vector", "Inf");
    syn_free(s);
    s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":4,\"token_dim\":64}");
    syn_add(s, "BF16", 4, 64, "prompt_embeddings")->vals[100] = NAN;
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "prompt_embeddings", "NaN");
    syn_free(s);
}

TEST_MAIN(err_unknown_peft_type, err_fan_in_fan_out_and_bias, err_pickle_weights_refused, err_missing_files,
          err_wrong_shape, err_lycoris_cp_form, err_non_finite, err_targets_the_base_lacks,
          err_missing_and_unexpected_tensors, base_model_name_is_informational, err_config_types, err_ia3_and_prompt,
          names_and_shapes, err_numbers_the_forward_cannot_use, err_hub_residual_wiring_not_served,
          err_hostile_patterns_and_configs, err_rank_and_virtual_tokens_beyond_the_base,
          err_non_finite_half_encodings)
