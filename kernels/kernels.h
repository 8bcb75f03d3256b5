/* kernels/kernels.h — the backend interface: a table of functions (ggml-backend style).
 *
 * A backend owns a memory space ("device" memory: plain host memory on the CPU
 * backend, GPU memory on CUDA) and a stream of ops over it. Every pointer given
 * to an op lives in the backend's memory space, including the small index
 * arrays (token ids, positions, KV slots, block tables). Ops are issued in
 * order; `synchronize` waits for all of them (a no-op on the CPU backend).
 *
 * Conventions:
 *   - Activations are f32, row-major, contiguous: a batch of n rows of `dim`.
 *   - Weights are kmat views in their stored dtype (f32, f16 or bf16), row-major
 *     [rows, cols]; a Linear layer of PyTorch is [out_features, in_features].
 *   - Every op returns 0 or a negative PEFTD_E* status (see util/status.h);
 *     shapes are checked by the op, never trusted.
 *   - The CPU backend is the reference: every other backend's op is tested
 *     against it (tests/unit/test_kernels_*.c).
 *
 * Ragged batch & paged KV cache: a step processes T token rows from S
 * sequences; rows of one sequence are contiguous. K/V of each layer live in a
 * pool of fixed-size blocks: k_cache[n_blocks][block_size][n_kv_heads*head_dim]
 * (same for V); a sequence's KV slot s lives in block block_table[s/block_size]
 * at offset s%block_size. A "slot id" in kv_store is block*block_size+offset.
 */
#ifndef PEFTD_KERNELS_H
#define PEFTD_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/status.h"

typedef enum { KDT_F32 = 0, KDT_F16 = 1, KDT_BF16 = 2 } kdtype;

static inline size_t kdtype_size(kdtype t) { return t == KDT_F32 ? 4 : 2; }
const char *kdtype_name(kdtype t);

/* A weight matrix (or vector: rows == 1) in backend memory, stored dtype, row-major. */
typedef struct {
    const void *data;
    kdtype dtype;
    int64_t rows, cols;
} kmat;

/* Causal attention of one layer over a ragged batch, reading K/V from the paged cache.
 * Sequence s owns query rows [q_start[s], q_start[s+1]) of q/out; after this step's
 * kv_store it has kv_len[s] valid KV slots. Its n_q = q_start[s+1]-q_start[s] query rows
 * are its last n_q slots: query j sits at slot p = kv_len[s] - n_q + j and attends to
 * slots [0, p]. (Slots before the prompt — e.g. prefix-tuning K/V — are simply earlier
 * slots.) GQA: query head h reads KV head h / (n_heads / n_kv_heads). */
typedef struct {
    int n_seqs;
    const int32_t *q_start;     /* [n_seqs + 1] */
    const int32_t *kv_len;      /* [n_seqs] */
    const int32_t *block_table; /* [n_seqs * max_blocks] physical block ids */
    int max_blocks;             /* row stride of block_table */
    int block_size;             /* slots per block */
    int n_heads, n_kv_heads, head_dim;
    float scale;                /* softmax scale, usually 1/sqrt(head_dim) */
    const float *q;             /* [T, n_heads * head_dim] */
    const float *k_cache;       /* [n_blocks, block_size, n_kv_heads * head_dim] */
    const float *v_cache;       /* same shape as k_cache */
    float *out;                 /* [T, n_heads * head_dim] */
    const int32_t *kv_start;    /* NULL, or [n_seqs]: sequence s skips slots [0, kv_start[s])
                                 * (padding before a block-aligned shared prefix) */
} kattn_args;

/* Activation applied between SGMV shrink and expand (bottleneck adapters). */
typedef enum {
    KACT_NONE = 0,
    KACT_RELU,
    KACT_SILU,      /* x * sigmoid(x), a.k.a. swish */
    KACT_GELU,      /* exact erf form, torch.nn.GELU() */
    KACT_GELU_TANH, /* tanh approximation, gelu_new / gelu_pytorch_tanh */
    KACT_TANH,
    KACT_SIGMOID,
} kact;

/* Segmented gather matmul (SGMV, Punica/S-LoRA): a ragged batch of T rows is split into
 * n_segs contiguous segments; segment i = rows [seg_start[i], seg_start[i+1]) uses its own
 * low-rank pair (A_i, B_i) of rank rank[i] — ranks differ per segment, rank 0 (or a NULL
 * A_i) skips the segment, empty segments are allowed. All arrays live in backend memory.
 *   shrink: t[r, 0:rank_i] = act_i(x[r, :] · A_iᵀ + bias_a_i)       A_i: [rank_i, in_dim]
 *   expand: y[r, :]       += scale_i · (t[r, 0:rank_i] · B_iᵀ + bias_b_i)  B_i: [out_dim, rank_i]
 * t is an f32 workspace [T, ld_t] with ld_t >= max(rank_i); entries beyond rank_i are not
 * written. LoRA/DoRA use no bias and KACT_NONE; bottleneck adapters use both. */
typedef struct {
    int n_segs;
    const int32_t *seg_start;    /* [n_segs + 1] */
    const void *const *a;        /* [n_segs] A_i row-major in `dtype`, or NULL */
    const void *const *b;        /* [n_segs] B_i row-major in `dtype`, or NULL */
    const int32_t *rank;         /* [n_segs] */
    const float *scale;          /* [n_segs] */
    const float *const *bias_a;  /* NULL, or [n_segs] pointers ([rank_i] each, NULL = none) */
    const float *const *bias_b;  /* NULL, or [n_segs] pointers ([out_dim] each, NULL = none) */
    const int32_t *act;          /* NULL (= all KACT_NONE), or [n_segs] kact values */
    kdtype dtype;                /* of every A_i and B_i */
} ksgmv;

typedef struct kbackend kbackend;

typedef struct kbackend_ops {
    const char *name;
    void (*destroy)(kbackend *kb);

    /* Memory. alloc returns NULL on failure; memory is not zeroed. */
    void *(*alloc)(kbackend *kb, size_t bytes);
    void (*free)(kbackend *kb, void *p);
    int (*upload)(kbackend *kb, void *dst, const void *src_host, size_t bytes);
    int (*download)(kbackend *kb, void *dst_host, const void *src, size_t bytes);
    int (*memset0)(kbackend *kb, void *dst, size_t bytes);
    int (*synchronize)(kbackend *kb);

    /* out[i,:] = f32(table[ids[i], :]) for i < n; ids outside [0, rows) -> PEFTD_ERANGE.
     * Also serves as a row gather of f32 activations (table.dtype == KDT_F32). */
    int (*get_rows)(kbackend *kb, const kmat *table, const int32_t *ids, int n, float *out);

    /* y[n, w.rows] = beta * y + x[n, w.cols] · wᵀ, beta ∈ {0, 1}. */
    int (*matmul)(kbackend *kb, const float *x, int n, const kmat *w, float *y, float beta);

    /* y[i,:] = x[i,:] / sqrt(mean(x[i,:]²) + eps) * w (w: [1, dim]); y may equal x. */
    int (*rmsnorm)(kbackend *kb, const float *x, const kmat *w, int n, int dim, float eps, float *y);

    /* In-place rotary embedding, Hugging Face "rotate_half" layout: for each head,
     * pairs (i, i + head_dim/2) rotate by angle pos[row] * inv_freq[i], i < head_dim/2.
     * x: [n, n_heads * head_dim]; inv_freq: [head_dim / 2]. */
    int (*rope)(kbackend *kb, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
                const float *inv_freq);

    /* Writes k[i,:], v[i,:] (kv_dim floats each) to slot slots[i] of the layer's caches. */
    int (*kv_store)(kbackend *kb, const float *k, const float *v, const int32_t *slots, int n,
                    int kv_dim, float *k_cache, float *v_cache);

    int (*attention)(kbackend *kb, const kattn_args *a);

    /* out[i] = silu(gate[i]) * up[i] over n*dim elements; out may alias gate. */
    int (*swiglu)(kbackend *kb, const float *gate, const float *up, int n, int dim, float *out);

    /* y[i] += x[i], i < n. */
    int (*add)(kbackend *kb, float *y, const float *x, int64_t n);

    /* SGMV (see ksgmv). in_dim/out_dim are the columns of x / y. */
    int (*sgmv_shrink)(kbackend *kb, const float *x, int in_dim, const ksgmv *s, float *t, int ld_t);
    int (*sgmv_expand)(kbackend *kb, const float *t, int ld_t, const ksgmv *s, int out_dim, float *y);

    /* Per-segment elementwise scale (IA3 vectors, DoRA magnitude/norm): for rows r of
     * segment i, y[r, j] *= v[i][j] (j < dim); a NULL v[i] leaves the segment untouched.
     * seg_start: [n_segs + 1]; v: [n_segs] pointers to [dim] f32 vectors. */
    int (*seg_scale)(kbackend *kb, float *y, int dim, int n_segs, const int32_t *seg_start,
                     const float *const *v);
} kbackend_ops;

struct kbackend {
    const kbackend_ops *ops;
    void *impl;
};

/* CPU backend with n_threads workers (<= 0: one per online core).
 * @note caller owns the result: kbackend_destroy(). NULL on failure. */
kbackend *kbackend_cpu_create(int n_threads);

/* Lets large f32 batches (prefill) use OpenBLAS sgemm: 5-15% faster there, but a row's
 * result then depends on the batch it shares, so outputs are no longer batch-invariant
 * (off by default). No-op on other backends. */
void kbackend_cpu_set_fast_prefill(kbackend *kb, bool on);

/* kbackend_destroy(NULL) is a no-op. */
static inline void kbackend_destroy(kbackend *kb) {
    if (kb) kb->ops->destroy(kb);
}

#endif
