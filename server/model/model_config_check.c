/* server/model/model_config_check.c — config.json checks around model_config_parse's field
 * reading: the architectures and fields refused by name, and the fields it ignores.
 *
 * Refused (PEFTD_EUNSUPPORTED, one line naming the architecture or the field):
 *   - mixture-of-experts architectures (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3, ...) and
 *     expert-count fields on any architecture (num_local_experts, num_experts, n_routed_experts);
 *   - Granite (GraniteForCausalLM) and Granite's multipliers wherever they appear
 *     (embedding_multiplier, residual_multiplier, attention_multiplier, logits_scaling): they
 *     change the math; on a Llama name transformers would silently drop them, which can only be
 *     a mislabelled Granite checkpoint;
 *   - OLMo / OLMo 2 / OLMo 3 (other norm placement, q/k norms), Cohere / Cohere2 (LayerNorm,
 *     parallel blocks, logit_scale);
 *   - multimodal models: any *ForConditionalGeneration (Llava, Qwen2-VL, Gemma 3, Mllama, ...),
 *     MllamaForCausalLM, a text config carrying vision_config / audio_config / text_config,
 *     use_mrope = true (Qwen2-VL's multimodal RoPE);
 *   - quantization_config (quantized base weights are not served).
 *   pretraining_tp > 1 is NOT refused: transformers 4.57's Llama modeling no longer reads it
 *   (the tensor-parallel slicing of the projections, an equal sum, was removed).
 *
 * Ignored fields: cfg_get marks every top-level member it finds (present, null included).
 * A member never read is listed in model_config.ignored unless it is on the allow-list below
 * (fields that cannot change the outputs) or consumed by a rule (read-but-unused because the
 * feature it qualifies is off).
 */
#include "server/model/model_config_check.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "lib/status.h"

#define TRACK_MAX 512 /* members tracked; real configs have < 60 */

static _Thread_local struct {
    const cJSON *root;
    unsigned char read[TRACK_MAX];
} t_track;

void model_config__track_begin(const cJSON *root) {
    memset(&t_track, 0, sizeof t_track);
    t_track.root = root;
}

void model_config__track_end(void) { t_track.root = NULL; }

void model_config__mark_read(const cJSON *obj, const cJSON *member) {
    if (!obj || obj != t_track.root) return;
    int i = 0;
    for (const cJSON *c = obj->child; c && i < TRACK_MAX; c = c->next, i++)
        if (c == member) t_track.read[i] = 1;
}

/* ---- refusals ---- */

typedef struct {
    const char *name;
    const char *why;
} refusal;

static const char k_moe[] = "mixture-of-experts (MoE) models are not served";
static const char k_mm[] = "multimodal models (vision/audio towers) are not served; only text decoders";

static const refusal k_archs[] = {
    {"MixtralForCausalLM", k_moe},        {"Qwen2MoeForCausalLM", k_moe},
    {"Qwen3MoeForCausalLM", k_moe},       {"DeepseekV2ForCausalLM", k_moe},
    {"DeepseekV3ForCausalLM", k_moe},     {"PhimoeForCausalLM", k_moe},
    {"OlmoeForCausalLM", k_moe},          {"GraniteMoeForCausalLM", k_moe},
    {"GraniteMoeSharedForCausalLM", k_moe}, {"GraniteMoeHybridForCausalLM", k_moe},
    {"DbrxForCausalLM", k_moe},           {"JambaForCausalLM", k_moe},
    {"JetMoeForCausalLM", k_moe},         {"Llama4ForCausalLM", k_moe},
    {"GptOssForCausalLM", k_moe},         {"Qwen3NextForCausalLM", k_moe},
    {"GraniteForCausalLM", "Granite's embedding/residual/attention multipliers and logits_scaling are not implemented"},
    {"OlmoForCausalLM", "OLMo (non-parametric LayerNorm, q/k clipping) is not implemented"},
    {"Olmo2ForCausalLM", "OLMo 2 (post-norms, q/k RMSNorm over all heads) is not implemented"},
    {"Olmo3ForCausalLM", "OLMo 3 (post-norms, q/k RMSNorm, sliding layers) is not implemented"},
    {"CohereForCausalLM", "Cohere (LayerNorm, parallel attention/MLP, logit_scale) is not implemented"},
    {"Cohere2ForCausalLM", "Cohere 2 (LayerNorm, parallel attention/MLP, logit_scale) is not implemented"},
    {"MllamaForCausalLM", k_mm},
};

/* Fields refused whatever their value (null counts as absent). */
static const refusal k_fields[] = {
    {"quantization_config", "quantized base weights are not served (use f32/f16/bf16 weights)"},
    {"vision_config", k_mm},
    {"audio_config", k_mm},
    {"text_config", "a nested text_config (a multimodal or composite model) is not served"},
    {"num_local_experts", k_moe},
    {"num_experts", k_moe},
    {"n_routed_experts", k_moe},
    {"embedding_multiplier", "Granite's multipliers are not implemented (a Granite checkpoint?)"},
    {"residual_multiplier", "Granite's multipliers are not implemented (a Granite checkpoint?)"},
    {"attention_multiplier", "Granite's multipliers are not implemented (a Granite checkpoint?)"},
    {"logits_scaling", "Granite's logits_scaling is not implemented (a Granite checkpoint?)"},
};

static const char *suffix(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf) ? s + n - m : NULL;
}

static int refuse_arch(const char *name, char *err, size_t errlen) {
    const char *why = NULL;
    for (size_t i = 0; i < sizeof k_archs / sizeof k_archs[0] && !why; i++)
        if (!strcmp(name, k_archs[i].name)) why = k_archs[i].why;
    if (!why && suffix(name, "ForConditionalGeneration")) why = k_mm;
    if (!why) return 0;
    snprintf(err, errlen, "config.json: architecture \"%.64s\" is not supported: %s", name, why);
    return PEFTD_EUNSUPPORTED;
}

int model_config__refuse(const cJSON *root, char *err, size_t errlen) {
    char dummy[8];
    if (!err || !errlen) err = dummy, errlen = sizeof dummy;
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures"), *a;
    if (!cJSON_IsArray(archs)) archs = NULL;
    cJSON_ArrayForEach(a, archs) {
        int rc = cJSON_IsString(a) ? refuse_arch(a->valuestring, err, errlen) : 0;
        if (rc) return rc;
    }
    for (size_t i = 0; i < sizeof k_fields / sizeof k_fields[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, k_fields[i].name);
        if (!v || cJSON_IsNull(v)) continue;
        const cJSON *qm = cJSON_GetObjectItemCaseSensitive(v, "quant_method");
        if (cJSON_IsString(qm))
            snprintf(err, errlen, "config.json: \"%s\" (quant_method \"%.32s\") is not supported: %s", k_fields[i].name,
                     qm->valuestring, k_fields[i].why);
        else
            snprintf(err, errlen, "config.json: \"%s\" is not supported: %s", k_fields[i].name, k_fields[i].why);
        return PEFTD_EUNSUPPORTED;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_mrope"))) {
        snprintf(err, errlen, "config.json: \"use_mrope\" = true is not supported: %s", k_mm);
        return PEFTD_EUNSUPPORTED;
    }
    return 0;
}

/* ---- ignored fields ---- */

/* Members that cannot change what the model computes at inference. */
static const char *const k_allow[] = {
    "transformers_version", /* provenance */
    "_name_or_path",        /* provenance */
    "architectures",        /* read (the class) */
    "model_type",           /* read */
    "use_cache",            /* transformers' KV cache on/off: same outputs */
    "initializer_range",    /* weight initialisation: training only */
    "initializer_factor",   /* idem */
    "pad_token_id",         /* padding for batched training/generate; peftd never pads */
    "torch_dtype", "dtype", /* read: the stored dtype; peftd computes from the file's tensors */
    "output_attentions", "output_hidden_states", "return_dict", /* what forward() returns */
    "auto_map",             /* remote-code classes: transformers runs its built-in class (which
                               peftd implements) unless trust_remote_code */
    "tokenizer_class",      /* read by the tokenizer loader (server/text/tokenizer_class.c) */
    "pretraining_tp",       /* not read by transformers 4.57's Llama modeling (equal math) */
};

static bool is_dropout(const char *k) {
    /* attention_dropout, hidden_dropout, embd_pdrop, resid_pdrop, ...: off in eval mode */
    return suffix(k, "dropout") || suffix(k, "pdrop") || suffix(k, "dropout_prob");
}

/* Read-but-unused: members that only qualify a feature the config switches off. */
static bool consumed_by_rule(const cJSON *root, const char *k, const model_config *cfg) {
    bool qwen = !strcmp(cfg->architecture, "Qwen2ForCausalLM") || !strcmp(cfg->architecture, "Qwen3ForCausalLM");
    /* Qwen2/Qwen3: which layers slide, when use_sliding_window is false (its default);
     * max_window_layers also when layer_types is given (transformers then derives nothing
     * from it) */
    if (qwen && (!strcmp(k, "max_window_layers") || !strcmp(k, "layer_types"))) {
        const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
        return !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_sliding_window")) ||
               (!strcmp(k, "max_window_layers") && lt && !cJSON_IsNull(lt));
    }
    /* Phi-3 & co: the pre-extension context of scaled RoPE, unused by plain RoPE */
    if (!strcmp(k, "original_max_position_embeddings")) return cfg->rope.kind == ROPE_DEFAULT;
    /* false: text-only RoPE (true is refused) */
    if (!strcmp(k, "use_mrope")) return true;
    return false;
}

void model_config__list_ignored(const cJSON *root, model_config *cfg) {
    cfg->n_ignored = 0;
    int i = 0;
    for (const cJSON *c = root->child; c; c = c->next, i++) {
        if (i < TRACK_MAX && t_track.root == root && t_track.read[i]) continue;
        bool allowed = is_dropout(c->string);
        for (size_t k = 0; k < sizeof k_allow / sizeof k_allow[0] && !allowed; k++) allowed = !strcmp(c->string, k_allow[k]);
        if (allowed || consumed_by_rule(root, c->string, cfg)) continue;
        if (cfg->n_ignored < MODEL_MAX_IGNORED) {
            char *dst = cfg->ignored[cfg->n_ignored];
            snprintf(dst, sizeof cfg->ignored[0], "%s", c->string);
            for (char *p = dst; *p; p++) /* one log line per field, whatever the key holds */
                if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '"' || *p == '\\') *p = '?';
        }
        cfg->n_ignored++;
    }
}
