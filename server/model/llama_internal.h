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

/* SGMV calls one (layer, module) may need in a step: 3 weight dtypes x the most (A, B) pairs
 * of a composition ("linear": ADAPTER_MAX_MIX²). */
#define LLAMA_MAX_SG (3 * ADAPTER_MAX_MIX * ADAPTER_MAX_MIX)

/* Where a bottleneck adapter sits: after self-attention or after the MLP. */
enum { LLAMA_PLACE_ATTN = 0, LLAMA_PLACE_FFN = 1 };

/* The adapters' work for one (layer, module) in this step. Pointer arrays live in the
 * backend's memory (uploaded once per step as one block). */
typedef struct {
    int n_sg;                    /* SGMV calls: one per weight dtype present (usually 1), per
                                  * pair layer of the compositions in the step (adapter_mix.h) */
    ksgmv sg[LLAMA_MAX_SG];
    int ld_t;                    /* largest rank among the segments */
    const float *const *dora;    /* [n_segs] DoRA output factors, or NULL when no segment has one */
    const float *const *ia3_out; /* [n_segs] IA3 output-side vectors, or NULL */
    const float *const *ia3_in;  /* [n_segs] IA3 input-side vectors, or NULL */
    const kmat **bias;           /* host [n_segs] trained bias replacing the base's (PEFT bias
                                  * "all"/"lora_only"), NULL = the base's; the array itself is
                                  * NULL when no segment replaces it (plan_init allocates) */
    bool any_bias;
    const kmat **delta;          /* host [n_segs] dense deltas (adapter_lora.delta) or NULL
                                  * entries; the array itself is allocated by plan_init */
    bool any_delta;
    /* OFT / BOFT: the per-segment rotations of this projection's input (rot.n_segs 0: no
     * segment rotates it); tables staged in the plan block */
    ksegrot rot;
} llama_plan_mod;

/* LoRA on embed_tokens / lm_head of one segment: a one-segment SGMV over its own rows
 * (embedding rows [row_start, row_end); logit rows [k0, k0 + n)), n_sg 0 when none. */
typedef struct {
    int n_sg;
    ksgmv sg;
    int rank;
    int k0, n;                   /* head: the segment's logit rows */
} llama_plan_top;

/* Bottleneck adapters at one place of one layer. */
typedef struct {
    int n_sg;
    ksgmv sg[3];
    int ld_t;
    unsigned char *input;        /* host [n_segs]: the adapter's input z, LLAMA_BN_IN_* */
} llama_plan_bn;

/* What a bottleneck adapter reads (llama_plan_bn.input), with a the sub-layer output and h
 * the residual stream before it. */
enum { LLAMA_BN_IN_A = 0, LLAMA_BN_IN_A_PLUS_H = 1 /* original_ln_before */, LLAMA_BN_IN_H = 2 /* parallel */ };

typedef struct {
    int n_segs;
    const int32_t *seg_start;    /* backend memory, [n_segs + 1] */
    llama_plan_mod *mod;         /* [n_layers * AMOD_COUNT] */
    llama_plan_bn *bn;           /* [n_layers * 2] */
    int max_rank;                /* workspace columns needed this step */
    int max_rows;                /* rows of this step's longest segment (ksgmv.max_rows) */
    const llama_segment *segs;   /* host: this step's segments */
    llama_plan_top *emb, *head;  /* [max_seqs] each */
    /* [max_seqs]: for a segment whose request scale t != 1 and whose adapter has dense
     * deltas, the backend tables that scale a delta's rows by t (seg_start {0, rows}, one
     * vector pointer, the vector of t); n_segs 0 otherwise */
    struct llama_plan_tscale {
        const int32_t *seg_start;
        const float *const *vec;
    } *tscale;
    bool any_emb, any_head;
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
    bool is_virtual;             /* prompt-tuning virtual tokens (negative ids) */
} llama_emb_run;

struct llama_ctx {
    model *m;
    kbackend *kb;
    llama_ctx_params p;
    void **k_cache, **v_cache;   /* [n_layers] pools of [n_blocks, block_size, kv_dim] of p.kv_dtype */
    /* activation scratch, [max_tokens, ...] */
    float *x, *xn, *q, *k, *v, *att, *gate, *up, *sel, *logits;
    float *tmp;                  /* [T, hidden]: a sub-layer's output when it can't be fused */
    float *tmp_in;               /* [T, max(hidden, inter)]: an input scaled by IA3 */
    float *dense_tmp;            /* [T, widest projection output]: a dense delta's rows at a
                                  * request scale != 1; allocated at the first such step */
    size_t dense_cols;
    float *rot_in;               /* [T, max(hidden, inter, q_dim)]: a projection's input with the
                                  * OFT / BOFT segments' rows rotated; allocated at the first such step */
    float *inv_freq;             /* [rope_max_tables, rope.rot_dim / 2] (llama_rope.c) */
    int rope_max_tables;
    float rope_scale;            /* cos/sin factor (yarn, longrope; server/model/rope_freqs.c) */
    float *rope_host;            /* host staging of the tables */
    int32_t *d_rope_tab, *rope_tab; /* [max_tokens] row -> table (dynamic / longrope), device / host */
    int *rope_keys;              /* host [rope_max_tables]: rope_table_key of each table this step */
    float attn_scale;            /* softmax scale: 1/sqrt(head_dim) (Gemma: query_pre_attn_scalar^-0.5) */
    float *inv_freq_local;       /* Gemma 3 sliding layers' table (rope_local_theta), or NULL */
    /* Gemma: embeddings × sqrt(hidden), per run of rows (embed_rows) */
    float *emb_scale;            /* [hidden] sqrt(hidden) */
    int32_t *d_emb_seg, *emb_seg; /* device / host [T + 1]: run starts */
    const float **d_emb_vec, **emb_vec; /* device / host [T]: emb_scale or NULL per run */
    /* device copies of the batch's index arrays */
    int32_t *d_tokens, *d_emb_ids, *d_pos, *d_slots, *d_qstart, *d_kvlen, *d_kvstart, *d_btab, *d_rows;
    /* llama_sample's per-row arrays (n_logit_rows each) */
    float *d_stemp, *d_stopp, *d_slp;
    int32_t *d_stopk, *d_sids;
    double *d_su;
    int32_t *emb_ids;            /* host [T] */
    llama_emb_run *runs;         /* host [T] */
    /* per-step adapter plan */
    llama_plan *plan;
    unsigned char *plan_host, *plan_dev; /* staging for the plan's pointer/scalar arrays */
    size_t plan_cap, plan_used;
    bool plan_overflow;          /* a stage() did not fit: llama__plan_build grows the block */
    float *ws;                   /* SGMV workspace [T, ws_cols] */
    int ws_cols;
    /* DoRA factors at request scales != 1: at most dora_cap entries (LRU) */
    llama_dora_entry *dora;
    int dora_n, dora_cap;
    uint64_t step;               /* plan builds so far (stamps dora entries) */
};

/* Allocates and uploads the rope tables (llama_ctx_create); frees the host side. */
int llama__rope_init(llama_ctx *c);
void llama__rope_free(llama_ctx *c);
/* The frequencies of this step's rows (dynamic / longrope: per-row tables, uploaded). */
int llama__rope_step(llama_ctx *c, const llama_batch *b, krope_freqs *f);

int llama__plan_init(llama_ctx *c);
/* Releases the DoRA factor cache (llama_ctx_free). */
void llama__plan_free(llama_ctx *c);
/* Analyses the batch's segments and uploads this step's adapter tables. */
int llama__plan_build(llama_ctx *c, const llama_batch *b);
/* x rows of segments with a LoRA on embed_tokens += scale·B·A[:, id] (after embed_rows'
 * gather, before any embedding scale); uses c->d_emb_ids. */
int llama__embed_lora(llama_ctx *c);
/* logits [n_logits, vocab] += the lm_head LoRA deltas of their segments, from the normed
 * hidden rows sel [n_logits, hidden]. */
int llama__head_lora(llama_ctx *c, const float *sel, float *logits);
/* The adapter of row r (NULL for base rows). */
const adapter *llama__row_adapter(const llama_batch *b, int r);
/* RMSNorm site `site` (adapter.ln's index: 2l, 2l + 1, 2 n_layers = the final norm over the
 * step's logit rows, or a Gemma post-norm adapter_ln_post) of x into out (may alias), with w the
 * base's weight: rows whose
 * segment's adapter is an LN-tuning one with a weight there use that weight (one rmsnorm per
 * run of rows sharing a weight), the others w. */
int llama__norm(llama_ctx *c, const llama_batch *b, int site, const kmat *w, const float *x, float *out);

/* out[T, W.rows] (+)= in · Wᵀ plus the adapters' deltas for (layer, module). */
int llama__project(llama_ctx *c, int layer, adapter_module m, const kmat *w, const float *in, int T, float *out,
                   bool accumulate);
/* llama__project (accumulate false) of count projections over the same input (q/k/v, gate/up):
 * their base matmuls share one kops_matmul_group when none transforms its input, then each
 * adds its adapters as llama__project does. Same bits as count llama__project calls. */
int llama__project_group(llama_ctx *c, int layer, int count, const adapter_module *m, const kmat *const *w,
                         const float *in, int T, float *const *out);
/* Whether no segment of this step adapts projection (layer, m) in any way (no plan, or no
 * SGMV, DoRA, IA3, trained bias, dense delta or rotation there): its output is the base
 * matmul's alone. */
bool llama__mod_idle(const llama_ctx *c, int layer, adapter_module m);
/* x += the sub-layer output proj(in) (o_proj or down_proj), with adapters and the
 * bottleneck adapters of `place`; with post_norm (Gemma), x += post_norm(proj(in)) — the
 * adapters' deltas inside proj, as PEFT wraps the projection (no bottleneck adapters), and the
 * post-norm an LN-tuning segment's own where it has one (llama__norm at adapter_ln_post). */
int llama__sublayer_out(llama_ctx *c, const llama_batch *b, int layer, adapter_module m, const kmat *w,
                        const float *in, int T, int place, const kmat *post_norm);

#endif
