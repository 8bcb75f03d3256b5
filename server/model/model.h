/* server/model/model.h — a Llama-family base model: HF config.json + safetensors weights.
 *
 * model_load() reads <dir>/config.json (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
 * Qwen3ForCausalLM, Phi3ForCausalLM and the same architecture under other names: RMSNorm, RoPE,
 * SwiGLU, GQA, optional attention projection biases, optional per-head q/k RMSNorm; and
 * Gemma2ForCausalLM / Gemma3ForCausalLM (text): (1 + w) norms, post-norms, GeGLU), memory-maps
 * <dir>/model.safetensors or every shard named by <dir>/model.safetensors.index.json,
 * checks every tensor's name, dtype (f32/f16/bf16) and shape against the config, and
 * exposes the weights as kmat views in the backend's memory. On the CPU backend the views
 * point straight into the read-only mappings (no copy); other backends get a copy, and the
 * mappings stay open for host_layers.
 * A hostile or broken file gives a negative status and a message in err, never a crash.
 */
#ifndef PEFTD_MODEL_H
#define PEFTD_MODEL_H

#include <stdbool.h>
#include <stddef.h>

#include "kernels/kernels.h"
#include "server/model/model_eos.h"

/* config.json "rope_scaling", parsed (server/model/model_config.c); the frequencies it implies
 * are computed by server/model/rope_freqs.c. ROPE_DYNAMIC and ROPE_LONGROPE depend on the
 * sequence length (rope_freqs_at; semantics in model_config.c cfg_rope_scaling). */
typedef enum {
    ROPE_DEFAULT = 0,
    ROPE_LINEAR,
    ROPE_LLAMA3,
    ROPE_YARN,
    ROPE_DYNAMIC,
    ROPE_LONGROPE,
    ROPE_FREQ_FACTORS /* GGUF rope_freqs.weight: inv_freq[i] = base[i] / freq_factors[i] (what
                       * llama.cpp's converter writes for Llama 3.x's "llama3" scaling) */
} rope_kind;

/* Most rotary pairs per head (rot_dim / 2): the rope op's head_dim limit is 1024. */
#define ROPE_MAX_PAIRS 512

/* Most layers a config may declare (model_config.c bounds num_hidden_layers by it). */
#define MODEL_MAX_LAYERS 1024 /* Llama-3 405B: 126 */
/* config.json fields named as ignored at start-up (more are counted, not kept). */
#define MODEL_MAX_IGNORED 32

typedef struct {
    rope_kind kind;
    double factor;                       /* linear, llama3, yarn, dynamic; longrope:
                                          * max_position_embeddings / original max */
    double low_freq_factor, high_freq_factor;       /* llama3 */
    int original_max_position_embeddings;           /* llama3, yarn (0: absent); longrope:
                                          * Phi3's top-level field (default 4096): a sequence
                                          * longer than this uses long_factor */
    double attention_factor;             /* yarn: < 0 when absent (derived from factor);
                                          * longrope: explicit or derived, always > 0 */
    double mscale, mscale_all_dim;       /* yarn: 0 when absent */
    double beta_fast, beta_slow;         /* yarn (defaults 32, 1) */
    bool truncate;                       /* yarn (default true) */
    float short_factor[ROPE_MAX_PAIRS];  /* longrope: rot_dim / 2 each */
    float long_factor[ROPE_MAX_PAIRS];
    float freq_factors[ROPE_MAX_PAIRS]; /* ROPE_FREQ_FACTORS: rot_dim / 2 divisors (> 0) */
    int rot_dim;   /* dims rotated per head: head_dim * partial_rotary_factor (Phi3 only,
                    * e.g. Phi-4-mini 0.75), head_dim otherwise; the rest pass through */
} rope_scaling;

typedef struct {
    char architecture[64];   /* e.g. "LlamaForCausalLM" */
    char model_type[32];     /* e.g. "llama" */
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;          /* num_key_value_heads (defaults to n_heads) */
    int head_dim;            /* head_dim (defaults to hidden_size / n_heads; Qwen3: 128) */
    int max_position_embeddings;
    float rms_norm_eps;
    float rope_theta;
    rope_scaling rope;       /* kind ROPE_DEFAULT when rope_scaling is absent/null/"default" */
    bool tie_word_embeddings;
    int32_t bos_token_id;    /* -1 when absent */
    int32_t eos_token_id;    /* -1 when absent (first one when a list) */
    char torch_dtype[16];    /* as written in config.json ("" when absent) */
    int sliding_window;      /* Mistral/Qwen2/Qwen3 sliding-window attention span W; 0 when no
                              * layer slides. A windowed layer's query at position p attends
                              * to keys at positions > p - W (transformers' masking_utils). */
    bool layer_window[MODEL_MAX_LAYERS]; /* layer l uses sliding_window (Mistral: all layers;
                              * Qwen2/3: layer_types / max_window_layers) */
    bool qkv_bias;           /* q/k/v projections have biases (Qwen2; Llama attention_bias) */
    bool o_bias;             /* o_proj has a bias (Llama attention_bias) */
    bool fused_proj;         /* Phi-3: weights stored as fused qkv_proj / gate_up_proj, split
                              * into wq/wk/wv and w_gate/w_up row views at load */
    bool qk_norm;            /* per-head RMSNorm on q and k (Qwen3, Gemma 3), weights [head_dim],
                              * eps rms_norm_eps, after q/k_proj and before RoPE */
    /* Gemma 2 / Gemma 3 text (gemma): every RMSNorm multiplies by (1 + w) (model_load stores
     * 1 + w as f32 copies, so the rmsnorm op is unchanged); the embeddings are multiplied by
     * sqrt(hidden_size) (f32); each sub-layer output goes through its own norm before the
     * residual add (post_attention_layernorm / post_feedforward_layernorm, model_layer
     * post_attn_norm / post_ffn_norm); the MLP is GeGLU with the tanh GELU. */
    bool gemma;
    bool embed_scale_virtual; /* prompt-tuning virtual tokens are scaled too (Gemma 2 scales
                              * inputs_embeds; Gemma 3 scales inside embed_tokens, which PEFT's
                              * virtual tokens bypass) */
    float query_pre_attn_scalar; /* > 0: softmax scale query_pre_attn_scalar^-0.5 (Gemma);
                              * 0: 1/sqrt(head_dim) */
    float attn_softcap;      /* > 0: attention scores s -> tanh(s / c) * c before the mask
                              * (attn_logit_softcapping); 0: none */
    float final_softcap;     /* > 0: logits z -> tanh(z / c) * c (final_logit_softcapping) */
    bool layer_local[MODEL_MAX_LAYERS]; /* Gemma: layer l is a "sliding_attention" layer (kept
                              * when the window itself is dropped for spanning every context) */
    float rope_local_theta;  /* > 0 (Gemma 3): sliding layers (layer_local) rotate with this base and no
                              * rope_scaling (rope_local_base_freq); global layers use
                              * rope_theta + rope. 0: one table for every layer */
    /* Top-level config.json fields that were not read and are not known to leave the outputs
     * unchanged (model_config_check.c): logged one line each at start-up. Names are truncated
     * to 63 bytes, control characters / quotes / backslashes shown as '?'. */
    char ignored[MODEL_MAX_IGNORED][64];
    int n_ignored;           /* all of them, even beyond MODEL_MAX_IGNORED */
} model_config;

/* Parses a config.json text. @note err gets a message on failure. */
int model_config_parse(const char *json, size_t len, model_config *cfg, char *err, size_t errlen);

typedef struct {
    kmat attn_norm;                  /* [1, hidden] */
    kmat wq, wk, wv, wo;             /* [n_heads*hd, hidden], [n_kv*hd, hidden] x2, [hidden, n_heads*hd] */
    kmat ffn_norm;                   /* [1, hidden] */
    kmat w_gate, w_up, w_down;       /* [inter, hidden] x2, [hidden, inter] */
    /* Frozen projection biases, [1, out] each; .data == NULL when the model has none
     * (config qkv_bias / o_bias). Added to the base projection before any adapter delta's
     * output-side scale (see llama__project). */
    kmat bq, bk, bv, bo;
    /* Qwen3 / Gemma 3 q_norm / k_norm, [1, head_dim] each; .data == NULL unless config qk_norm. */
    kmat q_norm, k_norm;
    /* Gemma: post_attention_layernorm / post_feedforward_layernorm (applied to the sub-layer
     * output before the residual add); .data == NULL otherwise. On Gemma attn_norm is
     * input_layernorm and ffn_norm pre_feedforward_layernorm. All Gemma norms are f32 1 + w. */
    kmat post_attn_norm, post_ffn_norm;
} model_layer;

struct gguf_file;

typedef struct model {
    model_config cfg;
    model_eos eos;                   /* generation_config.json's eos ids, else config.json's */
    char dir[4096];                  /* HF: the model directory; GGUF: the directory holding the
                                      * .gguf (tokenizer.json / tokenizer_config.json beside it) */
    char name[128];                  /* served model id: the directory's base name (GGUF: the
                                      * file's name without .gguf) */
    /* GGUF models (server/model/model_load_gguf.h): the open file (its tensors are the weights'
     * storage; tokenizer.ggml.* lives here) and tokenizer.chat_template as a NUL-terminated copy
     * (NULL when absent). Both NULL for HF models; owned by the model, valid until model_free. */
    const struct gguf_file *gguf;
    const char *chat_template;
    kmat embed;                      /* [vocab, hidden] */
    kmat final_norm;                 /* [1, hidden] */
    kmat lm_head;                    /* [vocab, hidden]; == embed when tied */
    model_layer *layers;             /* [n_layers] */
    /* [n_layers] the same weights in HOST memory (the read-only mappings): == layers on the
     * CPU backend; kept open on others for adapter import (DoRA norms), which runs on any
     * thread and must not read the backend. Clean file pages: the kernel may drop them. */
    const model_layer *host_layers;
    size_t weight_bytes;             /* bytes of all weights as stored (lm_head counted once if tied) */
    struct model_storage *storage;   /* mappings / backend copies; private */
    kbackend *kb;                    /* backend holding the weights (not owned) */
} model;

/* dir: a Hugging Face model directory, a .gguf file, or a directory holding exactly one .gguf
 * file and no config.json (server/model/model_load_gguf.h).
 * @note caller owns *out: model_free(). kb must outlive the model. */
int model_load(const char *dir, kbackend *kb, model **out, char *err, size_t errlen);

/* Load options. weights: -1 keeps every weight as stored; KDT_BF16, KDT_Q8_0 or KDT_Q4_K
 * converts the layer projections at load (the rule: server/model/model_quant.h), refused with
 * PEFTD_EUNSUPPORTED when the backend's supports_op(KOP_MATMUL, dtype) says no. threads: for
 * the conversion (<= 0: one per online core). no_mmap: the weight files (safetensors shards,
 * the GGUF) are read once into private huge-page-advised memory instead of mapped
 * (lib/file_map.h; --no-mmap, config "mmap": false); the same bytes either way. */
typedef struct {
    int weights;
    int threads;
    bool no_mmap;
    const char *weights_cache; /* NULL: none; else the directory of the conversion's cache
                                * (server/model/model_quant_cache.h; config "weights_cache") */
} model_load_opts;

/* model_load with options (NULL: as model_load). */
int model_load_ex(const char *dir, kbackend *kb, const model_load_opts *opts, model **out, char *err,
                  size_t errlen);
void model_free(model *m); /* NULL is a no-op */

#endif
