/* server/model/llama_internal.h — the llama_ctx layout and the adapter-application helpers
 * shared by llama.c (the layer loop) and llama_adapters.c (the per-step adapter plan). */
#ifndef PEFTD_LLAMA_INTERNAL_H
#define PEFTD_LLAMA_INTERNAL_H

#include "server/model/llama.h"

#define CHECK(expr)                                                                           \
    do {                                                                                      \
        int st_ = (expr);                                                                     \
        if (st_ < 0) return st_;                                                              \
    } while (0)

/* Where a bottleneck adapter sits: after self-attention or after the MLP. */
enum { LLAMA_PLACE_ATTN = 0, LLAMA_PLACE_FFN = 1 };

/* The adapters' work for one (layer, module) in this step. Pointer arrays live in the
 * backend's memory (uploaded once per step as one block). */
typedef struct {
    int n_sg;                    /* SGMV calls: one per weight dtype present (usually 1) */
    ksgmv sg[3];
    int ld_t;                    /* largest rank among the segments */
    const float *const *dora;    /* [n_segs] DoRA output factors, or NULL when no segment has one */
    const float *const *ia3_out; /* [n_segs] IA3 output-side vectors, or NULL */
    const float *const *ia3_in;  /* [n_segs] IA3 input-side vectors, or NULL */
} llama_plan_mod;

/* Bottleneck adapters at one place of one layer. */
typedef struct {
    int n_sg;
    ksgmv sg[3];
    int ld_t;
    bool *ln_before;             /* host [n_segs]: z = a + h (original_ln_before) */
} llama_plan_bn;

typedef struct {
    int n_segs;
    const int32_t *seg_start;    /* backend memory, [n_segs + 1] */
    llama_plan_mod *mod;         /* [n_layers * AMOD_COUNT] */
    llama_plan_bn *bn;           /* [n_layers * 2] */
    int max_rank;                /* workspace columns needed this step */
    const llama_segment *segs;   /* host: this step's segments */
} llama_plan;

/* DoRA factors m/||W + t·ΔW|| of one adapter content at one request scale t != 1 (issue 9
 * #13: t sits inside the norm), for every DoRA module, computed on the engine thread from
 * the adapter's host row statistics (adapter_dora_scale_vector, O(out) per module) and
 * uploaded once. Keyed by content (sha256) and scale, never by pointer or name. */
typedef struct {
    char sha256[65];
    float scale;
    uint64_t used;               /* step that last used it; the current step's are never evicted */
    void *dev;                   /* backend block holding every module's [out] factors */
    const float **vec;           /* host [n_layers * AMOD_COUNT]: pointers into dev, NULL = not DoRA */
} llama_dora_entry;

typedef struct {
    const kmat *tab;
    int start, end;
} llama_emb_run;

struct llama_ctx {
    model *m;
    kbackend *kb;
    llama_ctx_params p;
    float **k_cache, **v_cache;  /* [n_layers] pools of [n_blocks, block_size, kv_dim] */
    /* activation scratch, [max_tokens, ...] */
    float *x, *xn, *q, *k, *v, *att, *gate, *up, *sel, *logits;
    float *tmp;                  /* [T, hidden]: a sub-layer's output when it can't be fused */
    float *tmp_in;               /* [T, max(hidden, inter)]: an input scaled by IA3 */
    float *inv_freq;             /* [rope.rot_dim / 2] */
    float attn_scale;            /* softmax scale: 1/sqrt(head_dim), times the rope's
                                  * cos/sin factor squared (yarn; server/model/rope_freqs.c) */
    float rope_factor;           /* that cos/sin factor s (1 = none): prefix-tuning keys, which
                                  * transformers never rotates nor scales, are stored as k / s */
    /* device copies of the batch's index arrays */
    int32_t *d_tokens, *d_emb_ids, *d_pos, *d_slots, *d_qstart, *d_kvlen, *d_kvstart, *d_btab, *d_rows;
    int32_t *emb_ids;            /* host [T] */
    llama_emb_run *runs;         /* host [T] */
    /* per-step adapter plan */
    llama_plan *plan;
    unsigned char *plan_host, *plan_dev; /* staging for the plan's pointer/scalar arrays */
    size_t plan_cap, plan_used;
    float *ws;                   /* SGMV workspace [T, ws_cols] */
    int ws_cols;
    /* DoRA factors at request scales != 1: at most dora_cap entries (LRU) */
    llama_dora_entry *dora;
    int dora_n, dora_cap;
    uint64_t step;               /* plan builds so far (stamps dora entries) */
};

int llama__plan_init(llama_ctx *c);
/* Releases the DoRA factor cache (llama_ctx_free). */
void llama__plan_free(llama_ctx *c);
/* Analyses the batch's segments and uploads this step's adapter tables. */
int llama__plan_build(llama_ctx *c, const llama_batch *b);
/* The adapter of row r (NULL for base rows). */
const adapter *llama__row_adapter(const llama_batch *b, int r);
/* out[T, W.rows] = in · Wᵀ plus the adapters' deltas for (layer, module). */
int llama__project(llama_ctx *c, int layer, adapter_module m, const kmat *w, const float *in, int T, float *out,
                   bool accumulate);
/* x += the sub-layer output proj(in) (o_proj or down_proj), with adapters and the
 * bottleneck adapters of `place`. */
int llama__sublayer_out(llama_ctx *c, int layer, adapter_module m, const kmat *w, const float *in, int T,
                        int place);

#endif
