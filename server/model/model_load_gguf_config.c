/* server/model/model_load_gguf_config.c — GGUF metadata → model_config (model_load_gguf.h):
 * the {arch}.* hyper-parameters are written into the config.json transformers would read for
 * the same model, which model_config_parse then checks and fills exactly as for a Hugging Face
 * directory; plus the stop ids from tokenizer.ggml.*.
 */
#include "server/model/model_load_gguf.h"

#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *gguf;   /* general.architecture */
    const char *hf;     /* config.json "architectures"[0] */
    const char *type;   /* config.json "model_type" */
} gc_arch;

static const gc_arch GC_ARCHS[] = {
    {"llama", "LlamaForCausalLM", "llama"},   {"qwen2", "Qwen2ForCausalLM", "qwen2"},
    {"qwen3", "Qwen3ForCausalLM", "qwen3"},   {"phi3", "Phi3ForCausalLM", "phi3"},
    {"gemma2", "Gemma2ForCausalLM", "gemma2"}, {"gemma3", "Gemma3ForCausalLM", "gemma3_text"},
};

/* {arch}.* keys this file reads (anything else under {arch}. goes to cfg->ignored). */
static const char *const GC_READ[] = {
    "context_length", "embedding_length", "block_count", "feed_forward_length", "vocab_size",
    "attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
    "attention.key_length", "attention.value_length", "attention.sliding_window",
    "attention.sliding_window_pattern", "attention.scale", "rope.freq_base", "rope.freq_base_swa",
    "rope.dimension_count", "rope.scaling.type", "rope.scaling.factor", "rope.scaling.original_context_length",
    "rope.scaling.yarn_beta_fast", "rope.scaling.yarn_beta_slow", "rope.scaling.yarn_attn_factor",
    "rope.scaling.yarn_ext_factor", "attn_logit_softcapping", "final_logit_softcapping", "expert_count",
    "expert_used_count",
};

typedef struct {
    const gguf_file *f;
    const char *label, *arch;
    char *err;
    size_t errlen;
} gc_ctx;

static void gc_err(gc_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void gc_err(gc_ctx *c, const char *fmt, ...) {
    if (!c->err || !c->errlen) return;
    int n = snprintf(c->err, c->errlen, "%s: ", c->label);
    if (n < 0 || (size_t)n >= c->errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static void gc_key(const gc_ctx *c, const char *suffix, char *key, size_t cap) {
    snprintf(key, cap, "%s.%s", c->arch, suffix);
}

/* {arch}.suffix as an unsigned integer in [lo, hi]: 0 and *out; 1 when absent and optional. */
static int gc_uint(gc_ctx *c, const char *suffix, bool required, uint64_t lo, uint64_t hi, uint64_t *out) {
    char key[160];
    gc_key(c, suffix, key, sizeof key);
    char e[512] = "";
    int rc = gguf_get_uint(c->f, key, out, e, sizeof e);
    if (rc == PEFTD_ENOTFOUND) {
        if (!required) return 1;
        gc_err(c, "missing metadata key '%s'", key);
        return PEFTD_EFORMAT;
    }
    if (rc < 0) {
        gc_err(c, "metadata key '%s': %s", key, e);
        return PEFTD_EFORMAT;
    }
    if (*out < lo || *out > hi) {
        gc_err(c, "metadata key '%s' is %llu, outside [%llu, %llu]", key, (unsigned long long)*out,
               (unsigned long long)lo, (unsigned long long)hi);
        return PEFTD_EFORMAT;
    }
    return 0;
}

/* {arch}.suffix as a number (f32 or f64, or an integer): 0; 1 when absent and optional. */
static int gc_num(gc_ctx *c, const char *suffix, bool required, double *out) {
    char key[160], e[512] = "";
    gc_key(c, suffix, key, sizeof key);
    long i = gguf_find_key(c->f, key);
    if (i < 0) {
        if (!required) return 1;
        gc_err(c, "missing metadata key '%s'", key);
        return PEFTD_EFORMAT;
    }
    gguf_vtype t = gguf_kv_type(c->f, (size_t)i);
    int rc;
    if (t == GGUF_VT_F32) {
        float v;
        rc = gguf_get_f32(c->f, key, &v, e, sizeof e);
        *out = v;
    } else if (t == GGUF_VT_F64) {
        rc = gguf_get_f64(c->f, key, out, e, sizeof e);
    } else {
        uint64_t u;
        rc = gguf_get_uint(c->f, key, &u, e, sizeof e);
        *out = (double)u;
    }
    if (rc < 0 || !isfinite(*out)) {
        gc_err(c, "metadata key '%s' must be a finite number (%s)", key, rc < 0 ? e : "not finite");
        return PEFTD_EFORMAT;
    }
    return 0;
}

/* head_count_kv may be one number or one per layer (llama.cpp's writers use both): every
 * layer must have the same count here. */
static int gc_kv_heads(gc_ctx *c, uint64_t n_layers, uint64_t n_heads, uint64_t *out) {
    char key[160];
    gc_key(c, "attention.head_count_kv", key, sizeof key);
    long i = gguf_find_key(c->f, key);
    if (i < 0) {
        *out = n_heads;
        return 0;
    }
    if (gguf_kv_type(c->f, (size_t)i) != GGUF_VT_ARR) return gc_uint(c, "attention.head_count_kv", true, 1, 1024, out);
    gguf_array a;
    if (gguf_get_arr(c->f, key, GGUF_VT_COUNT, &a, NULL, 0) < 0 || a.count != n_layers) {
        gc_err(c, "metadata key '%s' is an array of %llu, expected %llu per-layer counts", key,
               (unsigned long long)a.count, (unsigned long long)n_layers);
        return PEFTD_EFORMAT;
    }
    for (uint64_t l = 0; l < a.count; l++) {
        int64_t v;
        if (gguf_arr_int(&a, l, &v) < 0 || v < 1 || v > 1024 || (l && (uint64_t)v != *out)) {
            gc_err(c, "metadata key '%s': per-layer KV head counts must be equal integers in [1, 1024] (layer %llu)",
                   key, (unsigned long long)l);
            return PEFTD_EUNSUPPORTED;
        }
        *out = (uint64_t)v;
    }
    return 0;
}

static const char *gc_str(const gguf_file *f, const char *key, char *buf, size_t cap) {
    const char *s;
    size_t n;
    if (gguf_get_str(f, key, &s, &n, NULL, 0) < 0) return NULL;
    if (n >= cap) n = cap - 1;
    memcpy(buf, s, n);
    buf[n] = 0;
    return buf;
}

/* rope.scaling.* → config "rope_scaling" (llama.cpp's converter writes linear and yarn here;
 * llama3 goes to the rope_freqs tensor, longrope to rope_factors_* tensors: gc_longrope). */
static int gc_rope_scaling(gc_ctx *c, cJSON *root) {
    char key[160], type[32];
    gc_key(c, "rope.scaling.type", key, sizeof key);
    if (gguf_find_key(c->f, key) < 0) return 0;
    if (!gc_str(c->f, key, type, sizeof type)) {
        gc_err(c, "metadata key '%s' must be a string", key);
        return PEFTD_EFORMAT;
    }
    if (!strcmp(type, "none")) return 0;
    if (strcmp(type, "linear") && strcmp(type, "yarn")) {
        gc_err(c, "metadata key '%s' is \"%s\": only none, linear and yarn are supported", key, type);
        return PEFTD_EUNSUPPORTED;
    }
    double factor, v;
    int rc = gc_num(c, "rope.scaling.factor", true, &factor);
    if (rc < 0) return rc;
    cJSON *rs = cJSON_AddObjectToObject(root, "rope_scaling");
    cJSON_AddStringToObject(rs, "rope_type", type);
    cJSON_AddNumberToObject(rs, "factor", factor);
    if (!strcmp(type, "linear")) return 0;
    uint64_t orig;
    if ((rc = gc_uint(c, "rope.scaling.original_context_length", true, 1, 1u << 24, &orig)) < 0) return rc;
    cJSON_AddNumberToObject(rs, "original_max_position_embeddings", (double)orig);
    static const struct { const char *gguf, *hf; } yk[] = {
        {"rope.scaling.yarn_beta_fast", "beta_fast"},
        {"rope.scaling.yarn_beta_slow", "beta_slow"},
        {"rope.scaling.yarn_attn_factor", "attention_factor"},
    };
    for (size_t k = 0; k < sizeof yk / sizeof yk[0]; k++) {
        if ((rc = gc_num(c, yk[k].gguf, false, &v)) < 0) return rc;
        if (rc == 0) cJSON_AddNumberToObject(rs, yk[k].hf, v);
    }
    if ((rc = gc_num(c, "rope.scaling.yarn_ext_factor", false, &v)) < 0) return rc;
    if (rc == 0 && v != 1.0) {
        gc_err(c, "metadata key '%s.rope.scaling.yarn_ext_factor' is %g: only 1 (transformers' yarn) is supported",
               c->arch, v);
        return PEFTD_EUNSUPPORTED;
    }
    return 0;
}

/* Phi-3 longrope (Phi-3.5, Phi-3 128k, Phi-4-mini): llama.cpp's converter stores the per-pair
 * factors as the tensors rope_factors_short / rope_factors_long (F32, rotary dims / 2) and the
 * cos/sin scale as rope.scaling.attn_factor. They become the config's rope_scaling
 * {"rope_type": "longrope", "short_factor", "long_factor", "attention_factor"}, parsed by the
 * Hugging Face path (model_config.c rope_longrope: the original context, the table switch, the
 * engine's recompute); the loader takes the two tensors as tables (model_load_gguf.c). */
static int gc_longrope(gc_ctx *c, cJSON *root, uint64_t half) {
    static const char *const names[2] = {"rope_factors_short.weight", "rope_factors_long.weight"};
    static const char *const keys[2] = {"short_factor", "long_factor"};
    const gguf_tensor *t[2] = {gguf_find_tensor(c->f, names[0]), gguf_find_tensor(c->f, names[1])};
    if (!t[0] && !t[1]) return 0;
    if (!t[0] || !t[1]) {
        gc_err(c, "tensor '%s' without '%s' (longrope needs both)", names[t[1] != NULL], names[t[0] != NULL]);
        return PEFTD_EFORMAT;
    }
    if (strcmp(c->arch, "phi3") != 0) {
        gc_err(c, "tensor '%s' on architecture %s (longrope is served on phi3)", names[0], c->arch);
        return PEFTD_EUNSUPPORTED;
    }
    if (cJSON_GetObjectItem(root, "rope_scaling")) {
        gc_err(c, "tensor '%s' cannot be combined with %s.rope.scaling.type", names[0], c->arch);
        return PEFTD_EFORMAT;
    }
    cJSON *rs = cJSON_AddObjectToObject(root, "rope_scaling");
    cJSON_AddStringToObject(rs, "rope_type", "longrope");
    for (int k = 0; k < 2; k++) {
        if (t[k]->type != GGUF_T_F32 || t[k]->n_dims != 1 || (uint64_t)t[k]->ne[0] != half) {
            gc_err(c, "tensor '%s' must be F32 [%llu] (rotary dims / 2); it is %s with %d dims, ne[0] %lld", names[k],
                   (unsigned long long)half, gguf_type_name(t[k]->type), t[k]->n_dims, (long long)t[k]->ne[0]);
            return PEFTD_EFORMAT;
        }
        cJSON *arr = cJSON_AddArrayToObject(rs, keys[k]);
        for (uint64_t i = 0; i < half; i++) {
            float v;
            memcpy(&v, (const uint8_t *)t[k]->data + 4 * i, 4);
            if (!(v > 0.0f && v < 1e6f)) {
                gc_err(c, "tensor '%s'[%llu] = %g is not a factor in (0, 1e6)", names[k], (unsigned long long)i,
                       (double)v);
                return PEFTD_EFORMAT;
            }
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(v));
        }
    }
    double af;
    int rc = gc_num(c, "rope.scaling.attn_factor", false, &af);
    if (rc < 0) return rc;
    if (rc == 0) cJSON_AddNumberToObject(rs, "attention_factor", af);
    return 0;
}

/* Gemma 3's sliding layers: {arch}.attention.sliding_window_pattern as a u32 period or a
 * per-layer bool array (true = sliding), when present; the family rule otherwise. */
static int gc_gemma3_pattern(gc_ctx *c, cJSON *root, uint64_t n_layers) {
    char key[160];
    gc_key(c, "attention.sliding_window_pattern", key, sizeof key);
    long i = gguf_find_key(c->f, key);
    if (i < 0) return 0;
    if (gguf_kv_type(c->f, (size_t)i) != GGUF_VT_ARR) {
        uint64_t p;
        int rc = gc_uint(c, "attention.sliding_window_pattern", true, 1, 1024, &p);
        if (rc < 0) return rc;
        cJSON_AddNumberToObject(root, "sliding_window_pattern", (double)p);
        return 0;
    }
    gguf_array a;
    if (gguf_get_arr(c->f, key, GGUF_VT_BOOL, &a, NULL, 0) < 0 || a.count != n_layers) {
        gc_err(c, "metadata key '%s' must be a u32 or an array of %llu bools", key, (unsigned long long)n_layers);
        return PEFTD_EFORMAT;
    }
    cJSON *types = cJSON_AddArrayToObject(root, "layer_types");
    for (uint64_t l = 0; l < a.count; l++) {
        int64_t v = 0;
        gguf_arr_int(&a, l, &v);
        cJSON_AddItemToArray(types, cJSON_CreateString(v ? "sliding_attention" : "full_attention"));
    }
    return 0;
}

/* A token id key: -1 when absent; refused when outside the vocabulary. */
static int gc_token(gc_ctx *c, const char *key, int vocab, int32_t *out) {
    uint64_t v;
    char e[256] = "";
    *out = -1;
    int rc = gguf_get_uint(c->f, key, &v, e, sizeof e);
    if (rc == PEFTD_ENOTFOUND) return 0;
    if (rc < 0 || v >= (uint64_t)vocab) {
        gc_err(c, "metadata key '%s' %s", key, rc < 0 ? e : "is outside the vocabulary");
        return PEFTD_EFORMAT;
    }
    *out = (int32_t)v;
    return 0;
}

static int gc_eos(gc_ctx *c, int vocab, model_config *cfg, model_eos *eos) {
    static const char *const keys[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                       "tokenizer.ggml.eom_token_id"};
    memset(eos, 0, sizeof *eos);
    int rc;
    int32_t id;
    if ((rc = gc_token(c, "tokenizer.ggml.bos_token_id", vocab, &cfg->bos_token_id)) < 0) return rc;
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        if ((rc = gc_token(c, keys[k], vocab, &id)) < 0) return rc;
        if (id < 0) continue;
        if (k == 0) cfg->eos_token_id = id;
        bool dup = false;
        for (int j = 0; j < eos->n; j++) dup |= eos->ids[j] == id;
        if (!dup) eos->ids[eos->n++] = id;
    }
    if (eos->n) eos->source = "GGUF tokenizer.ggml.eos/eot/eom_token_id";
    return 0;
}

/* {arch}.* keys not read: named in cfg->ignored (logged at start-up like config.json's). */
static void gc_ignored(const gc_ctx *c, model_config *cfg) {
    size_t al = strlen(c->arch);
    for (size_t i = 0; i < gguf_kv_count(c->f); i++) {
        const char *k = gguf_kv_key(c->f, i);
        if (strncmp(k, c->arch, al) != 0 || k[al] != '.') continue;
        bool read = false;
        for (size_t j = 0; j < sizeof GC_READ / sizeof GC_READ[0] && !read; j++) read = !strcmp(k + al + 1, GC_READ[j]);
        if (read) continue;
        if (cfg->n_ignored < MODEL_MAX_IGNORED) {
            char *d = cfg->ignored[cfg->n_ignored];
            size_t n = 0;
            for (; k[n] && n < sizeof cfg->ignored[0] - 1; n++)
                d[n] = (unsigned char)k[n] < 0x20 || k[n] == '"' || k[n] == '\\' ? '?' : k[n];
            d[n] = 0;
        }
        cfg->n_ignored++;
    }
}

static int gc_build(gc_ctx *c, cJSON *root, const gc_arch *a, int *vocab_out) {
    uint64_t L, d, ff, nh, nkv, ctx, hd, v;
    double eps, x;
    int rc;
    cJSON_AddItemToObject(root, "architectures", cJSON_CreateStringArray(&a->hf, 1));
    cJSON_AddStringToObject(root, "model_type", a->type);
    if ((rc = gc_uint(c, "expert_count", false, 0, 0, &v)) < 0) {
        gc_err(c, "metadata key '%s.expert_count' is %llu: mixture-of-experts models are not supported", c->arch,
               (unsigned long long)v);
        return PEFTD_EUNSUPPORTED;
    }
    if ((rc = gc_uint(c, "block_count", true, 1, MODEL_MAX_LAYERS, &L)) < 0 ||
        (rc = gc_uint(c, "embedding_length", true, 1, 1u << 16, &d)) < 0 ||
        (rc = gc_uint(c, "feed_forward_length", true, 1, 1u << 20, &ff)) < 0 ||
        (rc = gc_uint(c, "attention.head_count", true, 1, 1024, &nh)) < 0 ||
        (rc = gc_uint(c, "context_length", true, 1, 1u << 24, &ctx)) < 0 ||
        (rc = gc_num(c, "attention.layer_norm_rms_epsilon", true, &eps)) < 0 ||
        (rc = gc_kv_heads(c, L, nh, &nkv)) < 0)
        return rc;
    /* head_dim: key_length when written, else llama.cpp's n_embd / n_head */
    if ((rc = gc_uint(c, "attention.key_length", false, 2, 1024, &hd)) < 0) return rc;
    if (rc == 1) {
        if (d % nh) {
            gc_err(c, "embedding_length %llu is not divisible by head_count %llu and no key_length is given",
                   (unsigned long long)d, (unsigned long long)nh);
            return PEFTD_EFORMAT;
        }
        hd = d / nh;
    }
    if ((rc = gc_uint(c, "attention.value_length", false, 1, 1024, &v)) < 0) return rc;
    if (rc == 0 && v != hd) {
        gc_err(c, "value_length %llu differs from key_length %llu (not supported)", (unsigned long long)v,
               (unsigned long long)hd);
        return PEFTD_EUNSUPPORTED;
    }
    /* vocabulary: {arch}.vocab_size, else the embedding's rows */
    if ((rc = gc_uint(c, "vocab_size", false, 1, 1u << 22, &v)) < 0) return rc;
    if (rc == 1) {
        const gguf_tensor *t = gguf_find_tensor(c->f, "token_embd.weight");
        if (!t) {
            gc_err(c, "missing tensor 'token_embd.weight'");
            return PEFTD_EFORMAT;
        }
        v = t->n_dims == 2 ? (uint64_t)t->ne[1] : 0;
    }
    *vocab_out = (int)v;
    cJSON_AddNumberToObject(root, "vocab_size", (double)v);
    cJSON_AddNumberToObject(root, "hidden_size", (double)d);
    cJSON_AddNumberToObject(root, "intermediate_size", (double)ff);
    cJSON_AddNumberToObject(root, "num_hidden_layers", (double)L);
    cJSON_AddNumberToObject(root, "num_attention_heads", (double)nh);
    cJSON_AddNumberToObject(root, "num_key_value_heads", (double)nkv);
    cJSON_AddNumberToObject(root, "head_dim", (double)hd);
    cJSON_AddNumberToObject(root, "max_position_embeddings", (double)ctx);
    cJSON_AddNumberToObject(root, "rms_norm_eps", eps);
    /* llama.cpp's default base when the key is absent */
    if ((rc = gc_num(c, "rope.freq_base", false, &x)) < 0) return rc;
    cJSON_AddNumberToObject(root, "rope_theta", rc == 1 ? 10000.0 : x);
    cJSON_AddBoolToObject(root, "tie_word_embeddings", gguf_find_tensor(c->f, "output.weight") == NULL);
    bool gemma = !strncmp(c->arch, "gemma", 5), phi3 = !strcmp(c->arch, "phi3");
    if (!gemma && strcmp(c->arch, "qwen2") != 0)
        cJSON_AddBoolToObject(root, "attention_bias", gguf_find_tensor(c->f, "blk.0.attn_q.bias") != NULL);
    /* rope.dimension_count: rotated dims per head; only Phi-3 rotates part of a head */
    uint64_t rd;
    if ((rc = gc_uint(c, "rope.dimension_count", false, 2, 1024, &rd)) < 0) return rc;
    bool rd_given = rc == 0;
    if (rc == 0 && rd != hd) {
        if (!phi3 || rd > hd || rd % 2) {
            gc_err(c, "rope.dimension_count %llu differs from the head size %llu (partial rotary is only supported on "
                   "phi3, even and at most the head size)", (unsigned long long)rd, (unsigned long long)hd);
            return PEFTD_EUNSUPPORTED;
        }
        cJSON_AddNumberToObject(root, "partial_rotary_factor", (double)rd / (double)hd);
    }
    if ((rc = gc_rope_scaling(c, root)) < 0) return rc;
    if (phi3) {
        if ((rc = gc_uint(c, "rope.scaling.original_context_length", false, 1, 1u << 24, &v)) < 0) return rc;
        if (rc == 0) cJSON_AddNumberToObject(root, "original_max_position_embeddings", (double)v);
    }
    if ((rc = gc_longrope(c, root, (rd_given ? rd : hd) / 2)) < 0) return rc;
    uint64_t sw;
    if ((rc = gc_uint(c, "attention.sliding_window", false, 0, 1u << 24, &sw)) < 0) return rc;
    if (rc == 0 && sw > 0) cJSON_AddNumberToObject(root, "sliding_window", (double)sw);
    else if (gemma) cJSON_AddNullToObject(root, "sliding_window");
    if (gemma) {
        /* query_pre_attn_scalar: {arch}.attention.scale when a file has it; llama.cpp's
         * converter writes none, and llama.cpp scales by 1/sqrt(key_length) except on the 27B
         * shapes (Gemma 2: 46 layers, Gemma 3: 62), where the scalar is embedding_length /
         * head_count (144 and 168, as their config.json say; their head size is 128). */
        if ((rc = gc_num(c, "attention.scale", false, &x)) < 0) return rc;
        bool is_27b = (!strcmp(c->arch, "gemma2") && L == 46) || (!strcmp(c->arch, "gemma3") && L == 62);
        double qpas = rc == 0 ? 1.0 / (x * x) : is_27b ? (double)(d / nh) : (double)hd;
        cJSON_AddNumberToObject(root, "query_pre_attn_scalar", qpas);
        const char *caps[] = {"attn_logit_softcapping", "final_logit_softcapping"};
        for (int k = 0; k < 2; k++) {
            if ((rc = gc_num(c, caps[k], false, &x)) < 0) return rc;
            if (rc == 0) cJSON_AddNumberToObject(root, caps[k], x);
            else if (!strcmp(c->arch, "gemma3")) cJSON_AddNullToObject(root, caps[k]);
        }
        if (!strcmp(c->arch, "gemma3")) {
            if ((rc = gc_num(c, "rope.freq_base_swa", false, &x)) < 0) return rc;
            if (rc == 0) cJSON_AddNumberToObject(root, "rope_local_base_freq", x);
            char pk[160];
            gc_key(c, "attention.sliding_window_pattern", pk, sizeof pk);
            if (sw == 0 && gguf_find_key(c->f, pk) < 0) {
                /* the converter omits the window when sliding_window_pattern is 1: all global */
                cJSON *types = cJSON_AddArrayToObject(root, "layer_types");
                for (uint64_t l = 0; l < L; l++) cJSON_AddItemToArray(types, cJSON_CreateString("full_attention"));
            } else if ((rc = gc_gemma3_pattern(c, root, L)) < 0) {
                return rc;
            }
        }
    }
    return 0;
}

int model__gguf_config(const gguf_file *f, const char *label, model_config *cfg, model_eos *eos, char *err,
                       size_t errlen) {
    gc_ctx c = {.f = f, .label = label, .err = err, .errlen = errlen};
    char arch[64];
    memset(cfg, 0, sizeof *cfg);
    if (!gc_str(f, "general.architecture", arch, sizeof arch)) {
        gc_err(&c, "missing metadata key 'general.architecture' (a string)");
        return PEFTD_EFORMAT;
    }
    const gc_arch *a = NULL;
    for (size_t i = 0; i < sizeof GC_ARCHS / sizeof GC_ARCHS[0]; i++)
        if (!strcmp(arch, GC_ARCHS[i].gguf)) a = &GC_ARCHS[i];
    if (!a) {
        gc_err(&c, "general.architecture \"%s\" is not supported (supported: llama, qwen2, qwen3, phi3, gemma2, gemma3)",
               arch);
        return PEFTD_EUNSUPPORTED;
    }
    c.arch = a->gguf;
    cJSON *root = cJSON_CreateObject();
    if (!root) return PEFTD_ENOMEM;
    int vocab = 0, rc = gc_build(&c, root, a, &vocab);
    char *text = rc < 0 ? NULL : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (rc < 0) return rc;
    if (!text) return PEFTD_ENOMEM;
    char msg[768] = "";
    rc = model_config_parse(text, strlen(text), cfg, msg, sizeof msg);
    free(text);
    if (rc < 0) {
        /* the parser speaks of config.json: say which file and that it is its metadata */
        const char *m = !strncmp(msg, "config.json: ", 13) ? msg + 13 : msg;
        gc_err(&c, "metadata (as config.json): %s", m);
        return rc;
    }
    if ((rc = gc_eos(&c, vocab, cfg, eos)) < 0) return rc;
    gc_ignored(&c, cfg);
    return 0;
}
