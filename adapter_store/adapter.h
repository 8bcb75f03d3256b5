/* adapter_store/adapter.h — the internal, kind-independent layout of one loaded adapter
 * version, and loading it from a directory written by `save_pretrained` (Hugging Face
 * PEFT: adapter_config.json + adapter_model.safetensors; AdapterHub: adapter_config.json
 * + adapter.safetensors).
 *
 * Everything the forward pass needs is precomputed at load time so a step only gathers:
 * LoRA scales (alpha/r, alpha/sqrt(r) for rsLoRA, rank/alpha patterns), DoRA's per-output
 * factor m / ||W + scale·B·A||_row, IA3 vectors, prompt/prefix tables, bottleneck weights.
 * Import (adapter_load_dir, adapter_blob_read) parses, validates, converts and lays out
 * every tensor in one HOST block, on any thread, touching no backend. adapter_install()
 * then makes the adapter usable by a backend's ops, on the thread that owns the backend
 * (kernels.h): on is_host backends (CPU) the host block is used as it is; elsewhere it is
 * uploaded once and the host copy freed. DoRA's per-row statistics (for request scales
 * other than 1) always stay in host memory. VeRA's projection slices are the one exception
 * to "one block": content-keyed matrices held once per process and referenced by every
 * adapter (and module) that reads them (adapter_shared.h, adapter_bytes_held). An adapter
 * is immutable once installed and is shared by every sequence that uses it.
 *
 * adapter_store depends only on kernels/: the base model is described by adapter_base.
 */
#ifndef PEFTD_ADAPTER_H
#define PEFTD_ADAPTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

typedef enum {
    ADAPTER_LORA = 1,       /* LoRA, rsLoRA, DoRA (PEFT peft_type "LORA") */
    ADAPTER_IA3,            /* PEFT "IA3" */
    ADAPTER_PROMPT_TUNING,  /* PEFT "PROMPT_TUNING" */
    ADAPTER_PREFIX_TUNING,  /* PEFT "PREFIX_TUNING" */
    ADAPTER_BOTTLENECK,     /* AdapterHub seq_bn (Pfeiffer) / double_seq_bn (Houlsby) */
    ADAPTER_LN_TUNING,      /* PEFT "LN_TUNING": trained copies of the RMSNorm weights */
    ADAPTER_OFT,            /* PEFT "OFT": block-diagonal rotations of projection inputs */
    ADAPTER_BOFT,           /* PEFT "BOFT": butterfly products of them, and an output scale */
} adapter_kind;

const char *adapter_kind_name(adapter_kind k); /* "lora", "ia3", ... */

/* The Llama projections an adapter can target, in a fixed order. */
typedef enum {
    AMOD_Q = 0, AMOD_K, AMOD_V, AMOD_O, AMOD_GATE, AMOD_UP, AMOD_DOWN, AMOD_COUNT
} adapter_module;

const char *adapter_module_name(adapter_module m); /* "q_proj", ... */

/* What an adapter is validated against and built for. */
typedef struct {
    char name[128];            /* served base model id */
    char model_type[32];       /* config.json model_type, e.g. "llama" */
    int hidden, intermediate, n_layers, n_heads, n_kv_heads, head_dim, vocab;
    int context_length;        /* positions a sequence may use: max_position_embeddings; 0 = unknown */
    int sliding_window;        /* the base's sliding-window span (model_config); 0 = none */
    bool post_norms;           /* sub-layer outputs are normed before the residual add (Gemma):
                                * bottleneck adapters (placed on that residual) are refused */
    /* [n_layers * AMOD_COUNT] base projections for DoRA norms, in HOST memory (the model's
     * read-only mappings): import runs on any thread and never reads backend memory. */
    const kmat *layer_w;
    const kmat *embed;         /* [vocab, hidden] */
} adapter_base;

/* In/out features of module m on the base ([out, in] like its weight). */
void adapter_module_shape(const adapter_base *b, adapter_module m, int *out, int *in);

typedef struct {
    int rank;                  /* 0: this module is not adapted in this layer */
    float scale;               /* lora_alpha / r (or / sqrt(r) with use_rslora), per pattern */
    kmat a;                    /* [rank, in] */
    kmat b;                    /* [out, rank] */
    const float *dora;         /* DoRA: [out] m / ||W + scale·B·A||_row; NULL for plain LoRA */
    /* DoRA, HOST memory owned by the adapter: [out, ADAPTER_DORA_STATS] per output row j:
     * m_j, ||W_j||², <W_j, ΔW_j>, ||ΔW_j||² with ΔW = scale·B·A (see adapter_dora_scale_vector) */
    float *dora_stats;
    /* PEFT lora_bias: lora_B's own bias [out] (f32) or NULL; the delta is
     * scale·(B(A x) + bias), so a request scale multiplies it too. */
    const float *bias;
    /* PEFT bias "all" / "lora_only": the trained bias of this projection [1, out] (f32),
     * which REPLACES the base's bias for this adapter's rows (data NULL: the base's). Set
     * on q/k/v/o only (the projections that carry a bias); may be set where rank is 0
     * (bias "all" trains every bias, targeted or not). Not scaled by a request scale. */
    kmat base_bias;
    /* A materialised delta instead of (or, never, beside) the pair: scale·ΔW [out, in] f32,
     * rank 0, applied y += t·(x·deltaᵀ) per segment with the request scale t (a VeRA / LoHa /
     * LoKr module whose LoRA form would read more bytes than ΔW, or PEFTD_LYCO_FORM=dense:
     * adapter_peft_lyco.c; an OFT / BOFT module served dense, t always 1: adapter_rot.c). data
     * NULL otherwise. */
    kmat delta;
} adapter_lora;

#define ADAPTER_DORA_STATS 4

/* DoRA's per-output factor at request scale t (PEFT: scaling = t·scale sits inside the norm):
 *   out[j] = m_j / ||W_j + t·ΔW_j|| = m_j / sqrt(||W_j||² + 2t<W_j,ΔW_j> + t²||ΔW_j||²),
 * in double, O(rows). A row whose norm vanishes (W_j + t·ΔW_j = 0, so its output is 0
 * whatever the factor; PEFT divides 0 by 0 there) gets 0, keeping the output finite. */
void adapter_dora_scale_vector(const float *stats, int64_t rows, double t, float *out);

/* One factor of an OFT / BOFT input rotation (kernels.h krot_factor): x -> x·M with M
 * block-diagonal in blocks R_k of size `block`, seen through the column permutation perm. */
typedef struct {
    kmat r;                    /* f32 [in, block] (R_k = rows [k·b, (k+1)·b)), or [block, block]
                                * when shared (one block for all: OFT block_share) */
    const int32_t *perm;       /* [in] the gather/scatter index g, or NULL (identity) */
    int block;
    bool shared;
    /* the permutation's recipe, what the blob stores instead of perm: PEFT's
     * block_butterfly_perm(in, perm_blocks, perm_half) inverted (adapter__butterfly_perm);
     * perm_blocks 0: identity */
    int perm_blocks, perm_half;
} adapter_rot_factor;

/* OFT / BOFT on one projection: its input rows are rotated, x -> x·M_0·M_1⋯, before the base
 * matmul, and (BOFT) its output scaled before the bias: y = s ⊙ (W x_rot) + b. */
typedef struct {
    int n_factors;             /* 0: this projection is not rotated */
    adapter_rot_factor *f;     /* [n_factors], f[0] applied first; owned (adapter_free) */
    const float *out_scale;    /* BOFT's boft_s [out], or NULL */
} adapter_rot;

/* One AdapterHub bottleneck module; the exact placement math is in server/model (llama.c)
 * and documented in tests/fixtures/adapters/SEMANTICS.md. */
typedef struct {
    int size;                  /* bottleneck width; 0 = absent */
    kmat down;                 /* [size, hidden] */
    const float *down_bias;    /* [size] or NULL */
    kmat up;                   /* [hidden, size] */
    const float *up_bias;      /* [hidden] or NULL */
    kact act;
    float scaling;
    bool residual_before_ln;   /* AdapterHub flags that change the math on Llama */
    bool original_ln_before;
    bool original_ln_after;
    bool parallel;             /* is_parallel (par_bn): reads the residual stream h, not the
                                * sub-layer output; the two flags above are then unused */
} adapter_bottleneck;

#define ADAPTER_LABEL_MAX 64   /* bytes of a SEQ_CLS label name, NUL included */
#define ADAPTER_MAX_LABELS 1024

typedef struct adapter {
    adapter_kind kind;
    char source[4096];         /* directory it was loaded from */
    char sha256[65];           /* content hash of the files as uploaded: the cache key */
    int n_layers;
    int max_rank;              /* largest LoRA rank / bottleneck size (workspace sizing) */

    /* LORA: [n_layers * AMOD_COUNT], index layer * AMOD_COUNT + module (OFT / BOFT: the dense
     * form's deltas only) */
    adapter_lora *lora;
    /* PEFT LoRA config facts a composition needs (adapter_mix.h): use_rslora, and the rank
     * PEFT's add_weighted_adapter counts for it (r, or the largest of r and rank_pattern's
     * values); false / 0 for adapters that are not PEFT LoRA. */
    bool rslora;
    int config_r;

    /* IA3: [n_layers * AMOD_COUNT] vectors or NULL. ia3_input[m] tells which side:
     * output-side vectors are [out] and scale the projection's output (k, v, ...);
     * input-side ones ("feedforward_modules", e.g. down_proj) are [in] and scale its input. */
    const float **ia3;
    bool ia3_input[AMOD_COUNT];

    /* PROMPT_TUNING: n_virtual learned input embeddings placed before the prompt.
     * PREFIX_TUNING: per layer K/V for n_virtual slots before the prompt:
     *   prefix_k/v[l] = [n_virtual, n_kv_heads * head_dim] f32 (already in KV-cache layout). */
    int n_virtual;
    kmat prompt;               /* [n_virtual, hidden] */
    const float **prefix_k;    /* [n_layers] */
    const float **prefix_v;    /* [n_layers] */
    bool prefix_from_zero;     /* AdapterHub prefix tuning: the prompt's RoPE positions start at 0;
                                * PEFT's continue after the prefix (n_virtual, n_virtual + 1, …) */

    /* LN_TUNING: [adapter_ln_sites(a)] norm weights [1, hidden] f32 replacing the base's for
     * this adapter's rows, data NULL where the base's stays, as the base's norm views hold them
     * (Gemma: 1 + w). Index 2l = layer l's attention-input norm (input_layernorm), 2l + 1 its
     * MLP-input norm (post_attention_layernorm; Gemma 2/3: pre_feedforward_layernorm),
     * 2 n_layers the final norm (adapter_ln_final), and on Gemma 2/3 the sub-layer output norms
     * adapter_ln_post(a, l, 0) (post_attention_layernorm) and (a, l, 1)
     * (post_feedforward_layernorm). */
    kmat *ln;

    /* OFT / BOFT: [n_layers * AMOD_COUNT] rotations of the projections' inputs (the factored
     * form); modules served dense have n_factors 0 here and their delta in lora[i].delta */
    adapter_rot *rot;

    /* BOTTLENECK: [n_layers] each, size 0 where a layer has none */
    adapter_bottleneck *bn_attn;  /* after self-attention ("mh_adapter") */
    adapter_bottleneck *bn_ffn;   /* after the MLP ("output_adapter") */

    /* modules_to_save replacements (data NULL when absent); also PEFT's saved
     * embed_tokens/lm_head base_layer.weight when it differs from the served base's */
    kmat lm_head;              /* [vocab, hidden] */
    kmat embed;                /* [vocab, hidden] */

    /* LORA on embed_tokens (rank 0: none): embed_lora.a = lora_embedding_A TRANSPOSED,
     * [vocab, rank] (one row per token id, gathered like an embedding table), embed_lora.b
     * = lora_embedding_B [hidden, rank]; x[t] += scale·B·A[:, id_t] (PEFT lora.Embedding).
     * LORA on lm_head: head_lora.a [rank, hidden], head_lora.b [vocab, rank]; logits +=
     * scale·B(A h). dora / bias / base_bias are unused on both. */
    adapter_lora embed_lora;
    adapter_lora head_lora;

    /* PEFT task_type SEQ_CLS (LoRA family): the sequence-classification head `score` saved
     * from modules_to_save, [n_labels, hidden] F32 (data NULL: a causal-LM adapter), applied
     * to the final-normed hidden state of the last token (engine_pool.c, /v1/classify);
     * labels: n_labels names (id2label of a config.json beside the adapter, else
     * "LABEL_<i>" as transformers names them), owned, freed by adapter_free. */
    int n_labels;
    kmat cls_head;
    char (*labels)[ADAPTER_LABEL_MAX];

    int64_t n_params;          /* trainable parameters as stored */
    size_t bytes;              /* bytes of the stored tensors */
    int ranks[8];              /* distinct LoRA ranks (for reporting), n_ranks of them */
    int n_ranks;

    kbackend *kb;              /* the backend it is installed on (adapter_install), NULL while
                                * it is host-only; not owned */
    struct adapter_storage *storage; /* private (adapter_core.c) */
} adapter;

/* Index of a's final-norm weight in adapter.ln; the number of entries of adapter.ln; the index of
 * layer l's sub-layer output norm (place 0: after attention, 1: after the MLP; Gemma 2/3). */
static inline int adapter_ln_final(const adapter *a) { return 2 * a->n_layers; }
static inline int adapter_ln_sites(const adapter *a) { return 4 * a->n_layers + 1; }
static inline int adapter_ln_post(const adapter *a, int layer, int place) {
    return 2 * a->n_layers + 1 + 2 * layer + place;
}

/* Whether a carries per-layer prefix K/V (prefix tuning, or the prefix half of an AdapterHub
 * MAM union, whose kind is ADAPTER_BOTTLENECK): ask this, never the kind. */
static inline bool adapter_has_prefix(const adapter *a) {
    return a && a->prefix_k && a->prefix_v && a->n_virtual > 0;
}

/* Virtual KV slots a puts before the prompt: prompt tuning's rows or a prefix. */
static inline int adapter_n_virtual(const adapter *a) {
    return a && (a->kind == ADAPTER_PROMPT_TUNING || adapter_has_prefix(a)) ? a->n_virtual : 0;
}

/* Loads and validates an adapter directory against the base, into host memory (any
 * thread; no backend call). On failure returns a negative status and a message naming the
 * offending field/tensor/file in err; status PEFTD_EUNSUPPORTED for valid-but-unservable
 * adapters (e.g. fan_in_fan_out), PEFTD_EFORMAT for malformed files, PEFTD_EINVAL for
 * adapters incompatible with the base (shapes).
 * @note caller owns *out: adapter_free(). base's kmats must outlive the call only. */
int adapter_load_dir(const char *dir, const adapter_base *base, adapter **out, char *err, size_t errlen);

/* Makes a usable by kb's ops. Thread: kb's owner (the engine thread), or the one thread
 * using kb before the engine starts — this is the only place adapter weights reach a
 * backend. On is_host backends nothing is copied; otherwise one allocation and one upload,
 * after which the host block is freed. Installing again on the same kb is a no-op; another
 * kb → PEFTD_EINVAL. Returns 0 or a negative status with a message in err. */
int adapter_install(adapter *a, kbackend *kb, char *err, size_t errlen);
/* Where an adapter's block goes instead of a kb->ops->alloc of its own (the device slot
 * pool, kernels/slot_pool.h): place() copies `bytes` of `host` into device memory it owns
 * and returns the address (the copy may still be in flight: the placer orders it before
 * the ops that read it); release() gives that memory back when the adapter is freed. */
typedef struct {
    int (*place)(void *ud, const void *host, size_t bytes, void **dev, char *err, size_t errlen);
    void (*release)(void *ud, void *dev);
    void *ud;
} adapter_placer;
/* adapter_install with the block placed by p (is_host backends: as adapter_install). */
int adapter_install_placed(adapter *a, kbackend *kb, const adapter_placer *p, char *err, size_t errlen);
/* True while a's tensors are in host memory (not installed, or installed on an is_host
 * backend): what adapter_blob_write needs. Any thread. */
bool adapter_on_host(const adapter *a);
/* Host or device bytes a holds: *own, its own block (adapter_install's one upload), and
 * *shared, the matrices it reads that are held once per process however many adapters read
 * them (adapter_shared.h: VeRA's projection slices), each distinct one counted once. */
void adapter_bytes_held(const adapter *a, size_t *own, size_t *shared);
/* NULL is a no-op. An adapter installed on a device backend is freed on that backend's
 * owner thread (it frees backend memory); a host-only one on any thread. */
void adapter_free(adapter *a);

/* The one rule for a per-request adapter strength (HTTP "adapter_scale", CLI
 * --adapter-scale): only LoRA-family deltas are scaled (y += s·scale·BAx; DoRA with s
 * inside its weight norm, as PEFT's set_scale does); IA3, prompt and prefix tuning,
 * bottleneck, LN-tuning, OFT and BOFT adapters have no such scale (PEFT's OFT / BOFT
 * set_scale warns and keeps 1), so asking for one is an error, never silently ignored. The scale must lie in [0, ADAPTER_MAX_REQUEST_SCALE]. */
#define ADAPTER_MAX_REQUEST_SCALE 16.0
bool adapter_accepts_scale(adapter_kind kind);

/* adapter_accepts_scale for a loaded adapter, and the range. Returns 0, or PEFTD_EINVAL with
 * the reason in err. */
int adapter_check_scale(const adapter *a, double scale, char *err, size_t errlen);

#endif
