/* server/model/model_config.c — model_config_parse(): a Hugging Face config.json of the
 * Llama family → model_config, with type checks, bounds and the transformers defaults.
 *
 * Only architectures that are exactly "RMSNorm → attention with RoPE (rotate_half) and GQA
 * → RMSNorm → SwiGLU MLP" with per-layer q/k/v/o and gate/up/down projections are
 * accepted; anything else must fail here with a clear message rather than load and
 * produce wrong text. A JSON null counts as "absent" (transformers writes nulls for unset
 * optional fields such as head_dim or sliding_window).
 */
#include "server/model/model.h"

#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "server/model/model_config_check.h"

/* Bounds well above every released model and far below sizes that would overflow the
 * int arithmetic of the engine (e.g. vocab × hidden or n_heads × head_dim). */
#define CFG_MAX_VOCAB (1 << 22)        /* largest released vocabularies are ~256k */
#define CFG_MAX_HIDDEN (1 << 16)       /* Llama-3 405B: 16384 */
#define CFG_MAX_INTER (1 << 20)        /* Llama-3 405B: 53248 */
#define CFG_MAX_LAYERS MODEL_MAX_LAYERS /* Llama-3 405B: 126 */
#define CFG_MAX_HEADS 1024             /* Llama-3 405B: 128 */
#define CFG_MAX_HEAD_DIM 1024          /* released models use 64..256 */
#define CFG_MAX_POSITIONS (1 << 24)    /* 16M tokens, beyond any released context */

typedef struct {
    const char *name;
    int default_max_positions; /* transformers' default when the config omits it */
} cfg_arch;

/* LlamaForCausalLM: the reference. LLaMAForCausalLM: the spelling written by the first
 * (early 2023) conversions of the original LLaMA weights. MistralForCausalLM: Llama plus
 * an optional sliding window on every layer (layer_window[], applied by the attention op).
 * Qwen2ForCausalLM: Llama plus q/k/v biases (qkv_bias) and a sliding window on the layers
 * from max_window_layers on. attention_bias = true on the Llama names: q/k/v AND o biases,
 * as transformers' LlamaAttention builds them.
 * Qwen3ForCausalLM: Llama plus a per-head RMSNorm on q and k before RoPE (qk_norm), head_dim
 * defaulting to 128 rather than hidden/heads, attention_bias on q/k/v/o as in Llama, and
 * Qwen2's sliding-window rules.
 * Phi3ForCausalLM: Llama with fused qkv_proj ([q; k; v] rows) and gate_up_proj ([gate; up]
 * rows), split at load (fused_proj); Mistral-style sliding_window; partial_rotary_factor
 * < 1 (Phi-4-mini) served; longrope (Phi-3.5 / Phi-4-mini 128k) served (cfg_rope_scaling).
 * Gemma2ForCausalLM / Gemma3ForCausalLM (model_type gemma2 / gemma3_text), as transformers
 * 4.57 computes them: RMSNorm by (1 + w) (f32), embeddings × sqrt(hidden_size), GeGLU MLP
 * (hidden_activation gelu_pytorch_tanh only), post-attention and post-feedforward norms on
 * the sub-layer outputs, softmax scale query_pre_attn_scalar^-0.5, attention and final logit
 * soft-capping (Gemma 2 defaults 50 / 30, Gemma 3 none), head_dim default 256, tied
 * embeddings by default, sliding/global layers from layer_types or the family rule (Gemma 2:
 * layer i slides iff i is even; Gemma 3: iff (i + 1) % sliding_window_pattern != 0, pattern
 * default 6); Gemma 3 adds (1 + w) q/k norms and a second RoPE table for sliding layers
 * (rope_local_base_freq, default 10000, no scaling; rope_theta default 1e6 + rope_scaling on
 * global layers). Refused by name: use_bidirectional_attention (EmbeddingGemma), model_type
 * "gemma3" (the multimodal config) and Gemma3ForConditionalGeneration.
 * Not accepted on purpose: Gemma 1 (GemmaForCausalLM), Olmo, Granite, Cohere (extra
 * multipliers / norms). */
static const cfg_arch cfg_archs[] = {
    {"LlamaForCausalLM", 2048},
    {"LLaMAForCausalLM", 2048},
    {"MistralForCausalLM", 4096 * 32},
    {"Qwen2ForCausalLM", 32768},
    {"Qwen3ForCausalLM", 32768},
    {"Phi3ForCausalLM", 4096},
    {"Gemma2ForCausalLM", 8192},
    {"Gemma3ForCausalLM", 131072},
};

static bool cfg_is_gemma3(const cfg_arch *arch) { return strcmp(arch->name, "Gemma3ForCausalLM") == 0; }
static bool cfg_is_gemma(const cfg_arch *arch) {
    return cfg_is_gemma3(arch) || strcmp(arch->name, "Gemma2ForCausalLM") == 0;
}

static void cfg_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void cfg_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* The member, or NULL when absent or null. Duplicate keys are refused: cJSON keeps both
 * and a reader that picks the first would disagree with Python's json (last wins). */
static int cfg_get(const cJSON *root, const char *key, const cJSON **out, char *err,
                   size_t errlen) {
    const cJSON *found = NULL, *c;
    cJSON_ArrayForEach(c, root) {
        if (strcmp(c->string, key) != 0) continue;
        if (found) {
            cfg_err(err, errlen, "config.json: duplicate field \"%s\"", key);
            return PEFTD_EFORMAT;
        }
        found = c;
    }
    model_config__mark_read(root, found);
    *out = cJSON_IsNull(found) ? NULL : found;
    return 0;
}

static bool cfg_is_int(const cJSON *v, double lo, double hi) {
    return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && v->valuedouble >= lo &&
           v->valuedouble <= hi;
}

/* An integer field in [lo, hi]; when absent: *out = def, or an error if required. */
static int cfg_int(const cJSON *root, const char *key, bool required, int def, int lo, int hi,
                   int *out, char *err, size_t errlen) {
    const cJSON *v;
    int rc = cfg_get(root, key, &v, err, errlen);
    if (rc < 0) return rc;
    if (!v) {
        if (required) {
            cfg_err(err, errlen, "config.json: missing required field \"%s\"", key);
            return PEFTD_EFORMAT;
        }
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble)) {
        cfg_err(err, errlen, "config.json: \"%s\" must be an integer", key);
        return PEFTD_EFORMAT;
    }
    if (!cfg_is_int(v, lo, hi)) {
        cfg_err(err, errlen, "config.json: \"%s\" = %.17g is out of range [%d, %d]", key,
                v->valuedouble, lo, hi);
        return PEFTD_ERANGE;
    }
    *out = (int)v->valuedouble;
    return 0;
}

/* A finite float field > 0 and < hi. */
static int cfg_float(const cJSON *root, const char *key, float def, double hi, float *out,
                     char *err, size_t errlen) {
    const cJSON *v;
    int rc = cfg_get(root, key, &v, err, errlen);
    if (rc < 0) return rc;
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v)) {
        cfg_err(err, errlen, "config.json: \"%s\" must be a number", key);
        return PEFTD_EFORMAT;
    }
    if (!(v->valuedouble > 0.0 && v->valuedouble < hi)) {
        cfg_err(err, errlen, "config.json: \"%s\" = %.17g is out of range (0, %g)", key,
                v->valuedouble, hi);
        return PEFTD_ERANGE;
    }
    *out = (float)v->valuedouble;
    return 0;
}

static int cfg_bool(const cJSON *root, const char *key, bool def, bool *out, char *err,
                    size_t errlen) {
    const cJSON *v;
    int rc = cfg_get(root, key, &v, err, errlen);
    if (rc < 0) return rc;
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) {
        cfg_err(err, errlen, "config.json: \"%s\" must be true or false", key);
        return PEFTD_EFORMAT;
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

/* A string field copied into dst[cap]; "" when absent. */
static int cfg_str(const cJSON *root, const char *key, char *dst, size_t cap, char *err,
                   size_t errlen) {
    const cJSON *v;
    int rc = cfg_get(root, key, &v, err, errlen);
    if (rc < 0) return rc;
    dst[0] = 0;
    if (!v) return 0;
    if (!cJSON_IsString(v)) {
        cfg_err(err, errlen, "config.json: \"%s\" must be a string", key);
        return PEFTD_EFORMAT;
    }
    if (strlen(v->valuestring) >= cap) {
        cfg_err(err, errlen, "config.json: \"%s\" is longer than %zu bytes", key, cap - 1);
        return PEFTD_EFORMAT;
    }
    memcpy(dst, v->valuestring, strlen(v->valuestring) + 1);
    return 0;
}

/* bos_token_id / eos_token_id: an int, a list of ints (the first is used), or absent. */
static int cfg_token(const cJSON *root, const char *key, int vocab, int32_t *out, char *err,
                     size_t errlen) {
    const cJSON *v;
    int rc = cfg_get(root, key, &v, err, errlen);
    if (rc < 0) return rc;
    *out = -1;
    if (!v) return 0;
    if (cJSON_IsArray(v)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            if (!cfg_is_int(e, 0, vocab - 1)) {
                cfg_err(err, errlen, "config.json: \"%s\" must hold token ids in [0, %d)", key,
                        vocab);
                return PEFTD_EFORMAT;
            }
        }
        v = cJSON_GetArrayItem(v, 0);
        if (!v) return 0; /* an empty list: no such token */
    }
    if (!cfg_is_int(v, 0, vocab - 1)) {
        cfg_err(err, errlen, "config.json: \"%s\" must be a token id in [0, %d)", key, vocab);
        return PEFTD_EFORMAT;
    }
    *out = (int32_t)v->valuedouble;
    return 0;
}

static int cfg_architecture(const cJSON *root, model_config *cfg, const cfg_arch **arch,
                            char *err, size_t errlen) {
    const cJSON *v;
    int rc = cfg_get(root, "architectures", &v, err, errlen);
    if (rc < 0) return rc;
    if (!v) {
        cfg_err(err, errlen, "config.json: missing required field \"architectures\"");
        return PEFTD_EFORMAT;
    }
    const cJSON *first = cJSON_IsArray(v) ? cJSON_GetArrayItem(v, 0) : NULL;
    if (!cJSON_IsString(first)) {
        cfg_err(err, errlen, "config.json: \"architectures\" must be a non-empty list of strings");
        return PEFTD_EFORMAT;
    }
    const char *name = first->valuestring;
    for (size_t i = 0; i < sizeof cfg_archs / sizeof cfg_archs[0]; i++) {
        if (strcmp(name, cfg_archs[i].name) == 0) {
            *arch = &cfg_archs[i];
            snprintf(cfg->architecture, sizeof cfg->architecture, "%s", name);
            return 0;
        }
    }
    if (strcmp(name, "Gemma3ForConditionalGeneration") == 0) {
        cfg_err(err, errlen, "config.json: architecture \"Gemma3ForConditionalGeneration\" (Gemma 3 "
                "vision/multimodal) is not supported: only the text model Gemma3ForCausalLM");
        return PEFTD_EUNSUPPORTED;
    }
    cfg_err(err, errlen,
            "config.json: architecture \"%.64s\" is not supported (supported: LlamaForCausalLM, "
            "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, "
            "Gemma2ForCausalLM, Gemma3ForCausalLM)",
            name);
    return PEFTD_EUNSUPPORTED;
}

/* A rope_scaling number in (0, hi); when absent (or null): *out = def, or an error if required. */
static int rope_num(const cJSON *rs, const char *key, bool required, double def, double hi,
                    double *out, char *err, size_t errlen) {
    const cJSON *v;
    int rc = cfg_get(rs, key, &v, err, errlen);
    if (rc < 0) return rc;
    if (!v) {
        if (required) {
            cfg_err(err, errlen, "config.json: rope_scaling needs \"%s\"", key);
            return PEFTD_EFORMAT;
        }
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0.0 && v->valuedouble < hi)) {
        cfg_err(err, errlen, "config.json: rope_scaling \"%s\" must be a number in (0, %g)", key, hi);
        return PEFTD_ERANGE;
    }
    *out = v->valuedouble;
    return 0;
}

/* The fields of one rope_type (names and defaults as transformers' modeling_rope_utils). */
static int rope_fields(const cJSON *rs, model_config *cfg, char *err, size_t errlen) {
    rope_scaling *r = &cfg->rope;
    double omax = 0;
    int rc;
    bool yarn = r->kind == ROPE_YARN, llama3 = r->kind == ROPE_LLAMA3;
    if ((rc = rope_num(rs, "factor", true, 1, 1e6, &r->factor, err, errlen)) < 0 ||
        (rc = rope_num(rs, "original_max_position_embeddings", llama3,
                       cfg->max_position_embeddings, CFG_MAX_POSITIONS + 1.0, &omax, err,
                       errlen)) < 0)
        return rc;
    r->original_max_position_embeddings = (int)omax;
    if (llama3 && ((rc = rope_num(rs, "low_freq_factor", true, 0, 1e6, &r->low_freq_factor, err,
                                  errlen)) < 0 ||
                   (rc = rope_num(rs, "high_freq_factor", true, 0, 1e6, &r->high_freq_factor,
                                  err, errlen)) < 0))
        return rc;
    if (llama3 && r->low_freq_factor == r->high_freq_factor) {
        cfg_err(err, errlen, "config.json: rope_scaling low_freq_factor == high_freq_factor");
        return PEFTD_EFORMAT;
    }
    if (!yarn) return 0;
    bool truncate = true;
    if ((rc = rope_num(rs, "attention_factor", false, -1, 1e6, &r->attention_factor, err,
                       errlen)) < 0 ||
        (rc = rope_num(rs, "mscale", false, 0, 1e6, &r->mscale, err, errlen)) < 0 ||
        (rc = rope_num(rs, "mscale_all_dim", false, 0, 1e6, &r->mscale_all_dim, err, errlen)) <
            0 ||
        (rc = rope_num(rs, "beta_fast", false, 32, 1e6, &r->beta_fast, err, errlen)) < 0 ||
        (rc = rope_num(rs, "beta_slow", false, 1, 1e6, &r->beta_slow, err, errlen)) < 0 ||
        (rc = cfg_bool(rs, "truncate", true, &truncate, err, errlen)) < 0)
        return rc;
    r->truncate = truncate;
    return 0;
}

/* A longrope factor list: exactly rot_dim / 2 positive numbers. */
static int rope_factor_list(const cJSON *rs, const char *key, int n, float *out, char *err,
                            size_t errlen) {
    const cJSON *v, *x;
    int rc = cfg_get(rs, key, &v, err, errlen), i = 0;
    if (rc < 0) return rc;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n) {
        cfg_err(err, errlen, "config.json: rope_scaling \"%s\" must be a list of %d numbers "
                "(rotary dims / 2)", key, n);
        return PEFTD_EFORMAT;
    }
    cJSON_ArrayForEach(x, v) {
        if (!cJSON_IsNumber(x) || !(x->valuedouble > 0 && x->valuedouble < 1e6)) {
            cfg_err(err, errlen, "config.json: rope_scaling \"%s\"[%d] must be a number in "
                    "(0, 1e6)", key, i);
            return PEFTD_ERANGE;
        }
        out[i++] = (float)x->valuedouble; /* torch.tensor(list, dtype=float32) */
    }
    return 0;
}

/* longrope (transformers' _compute_longrope_parameters with Phi3's config): original max =
 * the top-level original_max_position_embeddings (Phi3Config default 4096; rope_scaling's
 * own "original_max_position_embeddings" and "factor" are then unused), factor =
 * max_position_embeddings / original max, attention_factor = rope_scaling's when given, else
 * 1 when factor <= 1, else sqrt(1 + ln(factor) / ln(original max)). */
static int rope_longrope(const cJSON *root, const cJSON *rs, model_config *cfg, char *err,
                         size_t errlen) {
    rope_scaling *r = &cfg->rope;
    int half = r->rot_dim / 2, omax, rc;
    if (half > ROPE_MAX_PAIRS) {
        cfg_err(err, errlen, "config.json: longrope with %d rotary pairs (at most %d)", half,
                ROPE_MAX_PAIRS);
        return PEFTD_EUNSUPPORTED;
    }
    if ((rc = rope_factor_list(rs, "short_factor", half, r->short_factor, err, errlen)) < 0 ||
        (rc = rope_factor_list(rs, "long_factor", half, r->long_factor, err, errlen)) < 0 ||
        (rc = cfg_int(root, "original_max_position_embeddings", false, 4096, 1,
                      CFG_MAX_POSITIONS, &omax, err, errlen)) < 0 ||
        (rc = rope_num(rs, "attention_factor", false, -1, 1e6, &r->attention_factor, err,
                       errlen)) < 0)
        return rc;
    r->original_max_position_embeddings = omax;
    r->factor = (double)cfg->max_position_embeddings / omax;
    if (r->attention_factor < 0)
        r->attention_factor = r->factor <= 1.0 || omax == 1
                                  ? 1.0 : sqrt(1 + log(r->factor) / log((double)omax));
    return 0;
}

/* rope_scaling: null/absent, or a dict whose rope_type (or legacy "type") is "default"
 * (transformers treats that as no scaling), "linear", "llama3", "yarn", "dynamic" or
 * "longrope". The last two pick their frequencies from the sequence length in transformers
 * (modeling_rope_utils.dynamic_rope_update); peftd reproduces what generate() does on one
 * sequence with a per-row rule, stable under recompute (llama_batch.rope_len, the engine's
 * seq.rope_len):
 *   dynamic (NTK): a forward of seq_len = max(position_ids) + 1 uses base' = base *
 *     (factor * seq_len / max_position_embeddings - (factor - 1))^(dim / (dim - 2)) when
 *     seq_len > max_position_embeddings, the unscaled table otherwise; cached keys keep the
 *     rotation of the forward that computed them. So a row at position p of a sequence whose
 *     prompt has n_prompt tokens uses seq_len = max(n_prompt, p + 1): prompt rows n_prompt,
 *     decode rows p + 1. Not on Phi3ForCausalLM (transformers' Phi3Config accepts longrope
 *     only). The engine's context becomes max_position_embeddings * factor (factor > 1).
 *   longrope (Phi3ForCausalLM only; Phi-3.5 / Phi-4-mini 128k): inv_freq = 1 /
 *     (ext * base^(2i/dim)) with ext = long_factor when the sequence is longer than the
 *     original max (top-level original_max_position_embeddings), short_factor otherwise;
 *     cos/sin times attention_factor in both cases (rope_longrope). A prompt longer than the
 *     original max is long from the start; a shorter one is short until generation crosses
 *     the original max: there Phi3's prepare_inputs_for_generation drops the KV cache and the
 *     whole sequence is recomputed with the long table, as the engine does
 *     (server/engine/step.c). "type" "su" / "yarn" mean longrope on Phi3 (Phi3Config's
 *     _rope_scaling_adjustment).
 * partial_rotary_factor < 1: Phi3 rotates the first int(head_dim * factor) dims of each head
 * and passes the rest (Phi-4-mini: 0.75); transformers' Llama/Mistral/Qwen2 rotate the whole
 * head (they fail on a partial table), so there it is refused. */
static int cfg_rope_scaling(const cJSON *root, model_config *cfg, char *err, size_t errlen) {
    static const char *const names[] = {"default", "linear", "llama3", "yarn", "dynamic", "longrope"};
    const cJSON *v;
    double prf = 1.0;
    int rc = rope_num(root, "partial_rotary_factor", false, 1.0, 1.0 + 1e-9, &prf, err, errlen);
    if (rc < 0) return rc;
    bool phi3 = strcmp(cfg->architecture, "Phi3ForCausalLM") == 0;
    if (prf != 1.0 && !phi3) {
        cfg_err(err, errlen, "config.json: partial_rotary_factor %g is not supported (only 1)", prf);
        return PEFTD_EUNSUPPORTED;
    }
    memset(&cfg->rope, 0, sizeof cfg->rope);
    /* transformers: int(head_dim * partial_rotary_factor), in double, truncated. */
    cfg->rope.rot_dim = prf == 1.0 ? cfg->head_dim : (int)(cfg->head_dim * prf);
    if (cfg->rope.rot_dim <= 0 || cfg->rope.rot_dim % 2) {
        cfg_err(err, errlen, "config.json: partial_rotary_factor %g gives %d rotary dims of %d "
                "(must be even and > 0)", prf, cfg->rope.rot_dim, cfg->head_dim);
        return PEFTD_EFORMAT;
    }
    if ((rc = cfg_get(root, "rope_scaling", &v, err, errlen)) < 0 || !v) return rc;
    if (!cJSON_IsObject(v)) {
        cfg_err(err, errlen, "config.json: \"rope_scaling\" must be an object or null");
        return PEFTD_EFORMAT;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "rope_type");
    bool legacy = !t;
    if (!t) t = cJSON_GetObjectItemCaseSensitive(v, "type");
    const char *name = cJSON_IsString(t) ? t->valuestring : "?";
    if (phi3 && legacy && (strcmp(name, "su") == 0 || strcmp(name, "yarn") == 0)) name = "longrope";
    for (int k = 0; k < (int)(sizeof names / sizeof names[0]); k++) {
        if (strcmp(name, names[k]) != 0) continue;
        cfg->rope.kind = (rope_kind)k;
        if (k == ROPE_LONGROPE && !phi3) {
            cfg_err(err, errlen, "config.json: rope_scaling type \"longrope\" is only supported "
                    "on Phi3ForCausalLM (not %.64s)", cfg->architecture);
            return PEFTD_EUNSUPPORTED;
        }
        if (k == ROPE_DYNAMIC && phi3) {
            cfg_err(err, errlen, "config.json: rope_scaling type \"dynamic\" is not supported "
                    "on Phi3ForCausalLM (transformers' Phi3Config accepts only longrope)");
            return PEFTD_EUNSUPPORTED;
        }
        if (k == ROPE_LONGROPE) return rope_longrope(root, v, cfg, err, errlen);
        return k == ROPE_DEFAULT ? 0 : rope_fields(v, cfg, err, errlen);
    }
    cfg_err(err, errlen,
            "config.json: \"rope_scaling\" (type \"%.32s\") is not supported (supported: "
            "default, linear, llama3, yarn, dynamic, longrope)",
            name);
    return PEFTD_EUNSUPPORTED;
}

/* Qwen2 with use_sliding_window: transformers' Qwen2Config gives layer i the window when
 * layer_types[i] == "sliding_attention", layer_types defaulting to "sliding" for
 * i >= max_window_layers (default 28). Fills cfg->layer_window; *use = false when no layer
 * slides. */
static int cfg_qwen2_window_layers(const cJSON *root, model_config *cfg, bool *use, char *err,
                                   size_t errlen) {
    const cJSON *types, *t;
    int rc, mwl;
    if ((rc = cfg_get(root, "layer_types", &types, err, errlen)) < 0) return rc;
    if (types) {
        if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != cfg->n_layers) {
            cfg_err(err, errlen, "config.json: \"layer_types\" must be a list of %d strings",
                    cfg->n_layers);
            return PEFTD_EFORMAT;
        }
        int l = 0;
        *use = false;
        cJSON_ArrayForEach(t, types) {
            if (!cJSON_IsString(t)) {
                cfg_err(err, errlen, "config.json: \"layer_types\" must be a list of strings");
                return PEFTD_EFORMAT;
            }
            cfg->layer_window[l] = strcmp(t->valuestring, "sliding_attention") == 0;
            *use = *use || cfg->layer_window[l];
            l++;
        }
        return 0;
    }
    if ((rc = cfg_int(root, "max_window_layers", false, 28, 0, CFG_MAX_LAYERS, &mwl, err, errlen)) < 0)
        return rc;
    for (int l = 0; l < cfg->n_layers; l++) cfg->layer_window[l] = l >= mwl;
    *use = mwl < cfg->n_layers;
    return 0;
}

static int cfg_sliding_window(const cJSON *root, const cfg_arch *arch, model_config *cfg,
                              char *err, size_t errlen) {
    bool use;
    int rc;
    /* Qwen2 and Qwen3 write sliding_window but only apply it when use_sliding_window is true
     * (default false), per layer_types / max_window_layers alike; Mistral applies it whenever
     * it is set. */
    bool use_default = strcmp(arch->name, "Qwen2ForCausalLM") != 0 && !cfg->qk_norm;
    if ((rc = cfg_bool(root, "use_sliding_window", use_default, &use, err, errlen)) < 0)
        return rc;
    if ((rc = cfg_int(root, "sliding_window", false, 0, 0, CFG_MAX_POSITIONS,
                      &cfg->sliding_window, err, errlen)) < 0)
        return rc;
    memset(cfg->layer_window, 0, sizeof cfg->layer_window);
    if (use && use_default) /* Mistral (and Phi-3): every layer */
        for (int l = 0; l < cfg->n_layers; l++) cfg->layer_window[l] = true;
    if (use && !use_default && (rc = cfg_qwen2_window_layers(root, cfg, &use, err, errlen)) < 0) return rc;
    /* a window as long as every context is full attention */
    if (!use || cfg->sliding_window >= cfg->max_position_embeddings) cfg->sliding_window = 0;
    if (!cfg->sliding_window) memset(cfg->layer_window, 0, sizeof cfg->layer_window);
    return 0;
}

/* A Gemma soft-cap: a number > 0, or null (no cap); absent: def (0 = none). */
static int cfg_softcap(const cJSON *root, const char *key, float def, float *out, char *err, size_t errlen) {
    const cJSON *v;
    int rc = cfg_get(root, key, &v, err, errlen);
    if (rc < 0) return rc;
    bool present = cJSON_GetObjectItemCaseSensitive(root, key) != NULL;
    if (!v) {
        *out = present ? 0.0f : def; /* an explicit null turns the cap off */
        return 0;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0.0 && v->valuedouble < 1e6)) {
        cfg_err(err, errlen, "config.json: \"%s\" must be null or a number in (0, 1e6)", key);
        return PEFTD_EFORMAT;
    }
    *out = (float)v->valuedouble;
    return 0;
}

/* Gemma's sliding/global layers: layer_types when present, else the family rule of
 * transformers' Gemma2Config (layer i slides iff (i + 1) % 2 != 0) / Gemma3TextConfig
 * (iff (i + 1) % sliding_window_pattern != 0, pattern default 6). */
static int cfg_gemma_windows(const cJSON *root, const cfg_arch *arch, model_config *cfg, char *err,
                             size_t errlen) {
    const cJSON *types, *t;
    int rc, pattern = 2;
    if ((rc = cfg_int(root, "sliding_window", false, 4096, 1, CFG_MAX_POSITIONS, &cfg->sliding_window, err,
                      errlen)) < 0 ||
        (rc = cfg_get(root, "layer_types", &types, err, errlen)) < 0)
        return rc;
    if (!cJSON_GetObjectItemCaseSensitive(root, "sliding_window")) cfg->sliding_window = 4096;
    else if (!cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(root, "sliding_window"))) cfg->sliding_window = 0;
    memset(cfg->layer_window, 0, sizeof cfg->layer_window);
    if (types) {
        if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != cfg->n_layers) {
            cfg_err(err, errlen, "config.json: \"layer_types\" must be a list of %d strings", cfg->n_layers);
            return PEFTD_EFORMAT;
        }
        int l = 0;
        cJSON_ArrayForEach(t, types) {
            bool slide = cJSON_IsString(t) && strcmp(t->valuestring, "sliding_attention") == 0;
            if (!slide && !(cJSON_IsString(t) && strcmp(t->valuestring, "full_attention") == 0)) {
                cfg_err(err, errlen, "config.json: \"layer_types\" entries must be \"sliding_attention\" or "
                        "\"full_attention\"");
                return PEFTD_EFORMAT;
            }
            cfg->layer_window[l++] = slide;
        }
    } else {
        if (cfg_is_gemma3(arch) &&
            (rc = cfg_int(root, "sliding_window_pattern", false, 6, 1, CFG_MAX_LAYERS, &pattern, err, errlen)) < 0)
            return rc;
        for (int l = 0; l < cfg->n_layers; l++) cfg->layer_window[l] = (l + 1) % pattern != 0;
    }
    /* with layer_types, Gemma3TextConfig's sliding_window_pattern (and the private copy
     * transformers writes as _sliding_window_pattern) only derived it: read, not ignored */
    if (types && cfg_is_gemma3(arch)) {
        const cJSON *unused;
        if ((rc = cfg_get(root, "sliding_window_pattern", &unused, err, errlen)) < 0 ||
            (rc = cfg_get(root, "_sliding_window_pattern", &unused, err, errlen)) < 0)
            return rc;
    }
    bool any = false;
    for (int l = 0; l < cfg->n_layers; l++) any |= cfg->layer_local[l] = cfg->layer_window[l];
    /* a window as long as every context is full attention */
    if (!any || cfg->sliding_window >= cfg->max_position_embeddings) cfg->sliding_window = 0;
    if (!cfg->sliding_window) memset(cfg->layer_window, 0, sizeof cfg->layer_window);
    return 0;
}

/* The Gemma 2 / Gemma 3 fields (see the list above cfg_archs). */
static int cfg_gemma(const cJSON *root, const cfg_arch *arch, model_config *cfg, char *err, size_t errlen) {
    bool g3 = cfg_is_gemma3(arch), bidir;
    char act[32];
    int rc;
    cfg->gemma = true;
    cfg->embed_scale_virtual = !g3;
    /* the sequence-length-dependent tables (llama_rope.c) have no Gemma fixture: refused */
    if (cfg->rope.kind == ROPE_DYNAMIC || cfg->rope.kind == ROPE_LONGROPE) {
        cfg_err(err, errlen, "config.json: rope_scaling type \"%s\" is not supported on %s",
                cfg->rope.kind == ROPE_DYNAMIC ? "dynamic" : "longrope", arch->name);
        return PEFTD_EUNSUPPORTED;
    }
    if (g3 && cfg->model_type[0] && strcmp(cfg->model_type, "gemma3_text") != 0) {
        cfg_err(err, errlen, "config.json: model_type \"%s\" with Gemma3ForCausalLM is not supported (only "
                "\"gemma3_text\"; the multimodal \"gemma3\" config is refused)", cfg->model_type);
        return PEFTD_EUNSUPPORTED;
    }
    if ((rc = cfg_str(root, "hidden_activation", act, sizeof act, err, errlen)) < 0) return rc;
    if (act[0] && strcmp(act, "gelu_pytorch_tanh") != 0) {
        cfg_err(err, errlen, "config.json: hidden_activation \"%s\" is not supported (only gelu_pytorch_tanh)",
                act);
        return PEFTD_EUNSUPPORTED;
    }
    if ((rc = cfg_float(root, "query_pre_attn_scalar", 256.0f, 1e9, &cfg->query_pre_attn_scalar, err,
                        errlen)) < 0 ||
        (rc = cfg_softcap(root, "attn_logit_softcapping", g3 ? 0.0f : 50.0f, &cfg->attn_softcap, err,
                          errlen)) < 0 ||
        (rc = cfg_softcap(root, "final_logit_softcapping", g3 ? 0.0f : 30.0f, &cfg->final_softcap, err,
                          errlen)) < 0 ||
        (rc = cfg_gemma_windows(root, arch, cfg, err, errlen)) < 0)
        return rc;
    if (!g3) return 0;
    if ((rc = cfg_bool(root, "use_bidirectional_attention", false, &bidir, err, errlen)) < 0) return rc;
    if (bidir) {
        cfg_err(err, errlen, "config.json: use_bidirectional_attention = true is not supported (causal only)");
        return PEFTD_EUNSUPPORTED;
    }
    return cfg_float(root, "rope_local_base_freq", 10000.0f, 1e9, &cfg->rope_local_theta, err, errlen);
}

static int cfg_fill(const cJSON *root, model_config *cfg, char *err, size_t errlen) {
    const cfg_arch *arch = NULL;
    bool has_head_dim, flag;
    const cJSON *v;
    char act[32];
    int rc;
    if ((rc = cfg_architecture(root, cfg, &arch, err, errlen)) < 0) return rc;
    if ((rc = cfg_str(root, "model_type", cfg->model_type, sizeof cfg->model_type, err,
                      errlen)) < 0)
        return rc;
    if ((rc = cfg_int(root, "vocab_size", true, 0, 1, CFG_MAX_VOCAB, &cfg->vocab_size, err,
                      errlen)) < 0 ||
        (rc = cfg_int(root, "hidden_size", true, 0, 1, CFG_MAX_HIDDEN, &cfg->hidden_size, err,
                      errlen)) < 0 ||
        (rc = cfg_int(root, "intermediate_size", true, 0, 1, CFG_MAX_INTER,
                      &cfg->intermediate_size, err, errlen)) < 0 ||
        (rc = cfg_int(root, "num_hidden_layers", true, 0, 1, CFG_MAX_LAYERS, &cfg->n_layers,
                      err, errlen)) < 0 ||
        (rc = cfg_int(root, "num_attention_heads", true, 0, 1, CFG_MAX_HEADS, &cfg->n_heads,
                      err, errlen)) < 0 ||
        (rc = cfg_int(root, "num_key_value_heads", false, cfg->n_heads, 1, CFG_MAX_HEADS,
                      &cfg->n_kv_heads, err, errlen)) < 0 ||
        (rc = cfg_int(root, "max_position_embeddings", false, arch->default_max_positions, 1,
                      CFG_MAX_POSITIONS, &cfg->max_position_embeddings, err, errlen)) < 0)
        return rc;
    if ((rc = cfg_get(root, "head_dim", &v, err, errlen)) < 0) return rc;
    /* Qwen3Config's head_dim defaults to 128 whatever hidden_size / num_attention_heads;
     * Gemma2Config's and Gemma3TextConfig's to 256. */
    cfg->qk_norm = strcmp(arch->name, "Qwen3ForCausalLM") == 0;
    bool gemma = cfg_is_gemma(arch);
    has_head_dim = v != NULL || cfg->qk_norm || gemma;
    /* An explicit head_dim (Mistral-Nemo: 5120 / 32 heads but head_dim 128) decouples the
     * heads from hidden_size, so divisibility only matters when head_dim is derived. */
    if (!has_head_dim && cfg->hidden_size % cfg->n_heads != 0) {
        cfg_err(err, errlen,
                "config.json: hidden_size %d is not divisible by num_attention_heads %d",
                cfg->hidden_size, cfg->n_heads);
        return PEFTD_EFORMAT;
    }
    if ((rc = cfg_int(root, "head_dim", false,
                      gemma ? 256 : cfg->qk_norm ? 128 : cfg->hidden_size / cfg->n_heads, 1, CFG_MAX_HEAD_DIM,
                      &cfg->head_dim, err, errlen)) < 0)
        return rc;
    if (cfg->head_dim % 2 != 0) {
        cfg_err(err, errlen, "config.json: head_dim %d is odd (RoPE rotates pairs of halves)",
                cfg->head_dim);
        return PEFTD_EFORMAT;
    }
    if (cfg->n_heads % cfg->n_kv_heads != 0) {
        cfg_err(err, errlen,
                "config.json: num_attention_heads %d is not divisible by num_key_value_heads %d",
                cfg->n_heads, cfg->n_kv_heads);
        return PEFTD_EFORMAT;
    }
    /* rms_norm_eps < 1: a larger epsilon would swamp the activations; 1e6 for rope_theta
     * is 2× above Llama-3's 500000 and leaves room for long-context variants. */
    if ((rc = cfg_float(root, "rms_norm_eps", 1e-6f, 1.0, &cfg->rms_norm_eps, err, errlen)) < 0 ||
        (rc = cfg_float(root, "rope_theta", cfg_is_gemma3(arch) ? 1e6f : 10000.0f, 1e9, &cfg->rope_theta, err,
                        errlen)) < 0 ||
        (rc = cfg_bool(root, "tie_word_embeddings", gemma, &cfg->tie_word_embeddings, err,
                       errlen)) < 0)
        return rc;
    if ((rc = cfg_str(root, "hidden_act", act, sizeof act, err, errlen)) < 0) return rc;
    /* transformers' ACT2FN maps "swish" to the same SiLU as "silu". Gemma's MLP reads
     * hidden_activation instead (cfg_gemma); a hidden_act next to it is unused. */
    if (!gemma && act[0] && strcmp(act, "silu") != 0 && strcmp(act, "swish") != 0) {
        cfg_err(err, errlen, "config.json: hidden_act \"%s\" is not supported (only silu)", act);
        return PEFTD_EUNSUPPORTED;
    }
    if ((rc = cfg_rope_scaling(root, cfg, err, errlen)) < 0) return rc;
    cfg->fused_proj = strcmp(arch->name, "Phi3ForCausalLM") == 0;
    /* Qwen2Attention always has q/k/v biases and never an o_proj bias (its config has no
     * attention_bias field); LlamaAttention and Qwen3Attention put attention_bias on all
     * four projections. */
    if (strcmp(arch->name, "Qwen2ForCausalLM") == 0) {
        cfg->qkv_bias = true;
    } else {
        if ((rc = cfg_bool(root, "attention_bias", false, &flag, err, errlen)) < 0) return rc;
        cfg->qkv_bias = cfg->o_bias = flag;
    }
    if ((rc = cfg_bool(root, "mlp_bias", false, &flag, err, errlen)) < 0) return rc;
    if (flag) {
        cfg_err(err, errlen, "config.json: mlp_bias = true is not supported");
        return PEFTD_EUNSUPPORTED;
    }
    if (gemma) {
        cfg->qk_norm = cfg_is_gemma3(arch);
        if ((rc = cfg_gemma(root, arch, cfg, err, errlen)) < 0) return rc;
    } else if ((rc = cfg_sliding_window(root, arch, cfg, err, errlen)) < 0) {
        return rc;
    }
    if ((rc = cfg_token(root, "bos_token_id", cfg->vocab_size, &cfg->bos_token_id, err,
                        errlen)) < 0 ||
        (rc = cfg_token(root, "eos_token_id", cfg->vocab_size, &cfg->eos_token_id, err,
                        errlen)) < 0)
        return rc;
    /* Older configs write torch_dtype, transformers ≥ 4.56 writes dtype. */
    if ((rc = cfg_str(root, "torch_dtype", cfg->torch_dtype, sizeof cfg->torch_dtype, err,
                      errlen)) < 0)
        return rc;
    if (!cfg->torch_dtype[0] &&
        (rc = cfg_str(root, "dtype", cfg->torch_dtype, sizeof cfg->torch_dtype, err, errlen)) < 0)
        return rc;
    return 0;
}

int model_config_parse(const char *json, size_t len, model_config *cfg, char *err,
                       size_t errlen) {
    memset(cfg, 0, sizeof *cfg);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        cfg_err(err, errlen, "config.json: not valid JSON");
        return PEFTD_EFORMAT;
    }
    int rc;
    while (end && end < json + len && (*end == ' ' || *end == '\t' || *end == '\n' ||
                                       *end == '\r' || *end == 0))
        end++;
    if (end && end < json + len) {
        cfg_err(err, errlen, "config.json: unexpected text after the JSON object");
        rc = PEFTD_EFORMAT;
    } else if (!cJSON_IsObject(root)) {
        cfg_err(err, errlen, "config.json: not a JSON object");
        rc = PEFTD_EFORMAT;
    } else {
        model_config__track_begin(root);
        rc = model_config__refuse(root, err, errlen);
        if (rc == 0) rc = cfg_fill(root, cfg, err, errlen);
        if (rc == 0) model_config__list_ignored(root, cfg);
        model_config__track_end();
    }
    cJSON_Delete(root);
    if (rc < 0) memset(cfg, 0, sizeof *cfg);
    return rc;
}
