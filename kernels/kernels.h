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
 *   - Weights are kmat views in their stored dtype (f32, f16, bf16, or a quantized block
 *     dtype: q8_0, q4_k, q4_0), row-major [rows, cols]; a Linear layer of PyTorch is
 *     [out_features, in_features]. A row of a quantized kmat is kdtype_row_bytes bytes.
 *   - Every op returns 0 or a negative PEFTD_E* status (see lib/status.h);
 *     shapes are checked by the op, never trusted.
 *   - The CPU backend is the reference: every other backend's op is tested
 *     against it (tests/unit/test_kernels_*.c).
 *   - What a backend can do is asked of its table (is_host, supports_op,
 *     sgmv_workspace), never decided from its name.
 *
 * Threads (the contract, as LMDB and libuv write theirs):
 *   - A backend has at most one OWNER thread: the engine thread, which calls
 *     kbackend_set_owner() when it starts and kbackend_release_owner() before it
 *     ends. While no thread owns it (bring-up: model load; tear-down after the
 *     engine has stopped) one thread at a time may make any call.
 *   - ENGINE-ONLY (the owner, or the single bring-up/tear-down thread): every
 *     function of kbackend_ops marked [engine] below — memory (alloc, free,
 *     upload, download, memset0, copy), synchronize (which also reads and clears
 *     a backend's device error flag) and every op. On CUDA these share one
 *     stream and one error flag: a call from another thread would reorder the
 *     engine's work or steal its errors.
 *   - ANY THREAD: the fields and functions marked [any] (name, is_host,
 *     supports_op, sgmv_workspace), kdtype_name/kdtype_size, and the owner calls.
 *   - kbackend_destroy(): once no other thread uses the backend (after the engine
 *     thread has been joined).
 *   - So adapter import, validation, conversion and serialisation work on host
 *     memory (any thread); only the engine thread puts tensors into a backend.
 *   - Enforced in builds without NDEBUG (every build of this Makefile): an
 *     engine-only call from a thread other than the owner logs which function and
 *     aborts (tests/unit/test_backend_owner.c proves it fires).
 *
 * Ragged batch & paged KV cache: a step processes T token rows from S
 * sequences; rows of one sequence are contiguous. K/V of each layer live in a
 * pool of fixed-size blocks: k_cache[n_blocks][block_size][n_kv_heads*head_dim]
 * (same for V; elements f32, or f16 where the backend keeps them so:
 * kattn_args.kv_dtype); a sequence's KV slot s lives in block block_table[s/block_size]
 * at offset s%block_size. A "slot id" in kv_store is block*block_size+offset.
 */
#ifndef PEFTD_KERNELS_H
#define PEFTD_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>

#include "lib/status.h"

#ifdef __cplusplus
extern "C" { /* the CUDA backend (.cu) includes this header */
#endif

/* Weight dtypes. F32/F16/BF16 are one element per 4/2/2 bytes. The quantized dtypes are
 * ggml's block formats (layouts: kernels/cpu/quant_ref.h): a row of `cols` elements is
 * cols / kdtype_block_elems blocks of kdtype_block_bytes each, so cols must be a multiple of
 * the block (32 for Q8_0, Q4_0, Q5_0, Q4_1, Q5_1 and IQ4_NL, 256 for the K-quants Q4_K, Q5_K, Q6_K, Q3_K, Q2_K and IQ4_XS). Quantized dtypes are weights of MATMUL (and
 * GET_ROWS, which dequantizes) only, where supports_op says so; activations are always f32. */
typedef enum {
    KDT_F32 = 0, KDT_F16 = 1, KDT_BF16 = 2, KDT_Q8_0 = 3, KDT_Q4_K = 4, KDT_Q4_0 = 5, KDT_Q5_K = 6, KDT_Q6_K = 7,
    /* Q4_K with each super-block's 256 codes reordered (never in a file: a backend's
     * preferred_dtype, made at load by qref_reorder): the same 144-byte blocks, d, dmin and
     * scales as Q4_K, but qs byte 32k + 4j + e (k < 4, j < 8, e < 4) holds the codes of elements
     * 32j + 4k + e (low nibble) and 32j + 16 + 4k + e (high nibble) — 32-byte register k carries
     * 4 + 4 codes of every sub-block j in its 32-bit lane j, so an AVX2 tile sums a super-block
     * in 16-bit lanes and applies the 8 scales with one vpmaddwd (kernels/cpu/qdot_avx2.c). */
    KDT_Q4_K_SB8 = 8,
    /* Q6_K reordered the same way (kernels/cpu/qdot_avx2.c): the same 210-byte blocks, scales
     * and d as Q6_K; code t·2 + o of group g (t < 8, o < 2; element 16g + 2t + o) sits at byte
     * β = 2g + o of 32-byte register t: its low 4 bits in ql byte 32·(t/2) + β (nibble t%2), its
     * high 2 in qh byte 32·(t/4) + β (bits 2·(t%4)) — so 16-bit lane g of every code register
     * holds group g only, and one vpmaddwd applies all 16 scales. */
    KDT_Q6_K_SB16 = 9,
    /* ggml's Q5_0: 32 elements in 22 bytes, f16 d, 32 fifth bits, 16 bytes of nibbles; code
     * (nibble | bit << 4) − 16. llama-quantize's Q4_K fallback for rows not a multiple of 256
     * (Q4_K_M files of models 896, 1152 or 576 wide: Qwen2.5-0.5B, Gemma 3 1B, SmolLM2). */
    KDT_Q5_0 = 10,
    /* ggml's Q4_1 (20 bytes: f16 d, f16 m, 16 bytes of nibbles) and Q5_1 (24: d, m, 32 fifth
     * bits, nibbles): unsigned codes, y = d·q + m. Q5_1 is llama-quantize's Q5_K fallback (Q5_K_M
     * files of those widths); Q4_1 is a legacy whole-file type. */
    KDT_Q4_1 = 11,
    KDT_Q5_1 = 12,
    /* ggml's IQ4_NL: 32 elements in 18 bytes, f16 d and Q4_0's nibbles, each nibble an index into
     * the 16 non-linear int8 levels of quant_ref.h (y = d·level). llama-quantize's fallback for
     * rows not a multiple of 256 in Q2_K / Q3_K / IQ4_XS files, and a whole-file type. */
    KDT_IQ4_NL = 13,
    /* ggml's IQ4_XS: super-blocks of 256 in 136 bytes — f16 d, 8 six-bit sub-block scales (u16
     * high bits, 4 bytes of low nibbles), then IQ4_NL's nibbles per sub-block of 32; y =
     * d·(scale − 32)·level. Rows are whole super-blocks, but the kernels multiply it per 32
     * (kdtype_is_kquant is false: activations are quantized per 32, kernels/cpu/qmatmul.h). */
    KDT_IQ4_XS = 14,
    /* ggml's Q3_K: super-blocks of 256 in 110 bytes — 32 bytes of high bits, 64 of 2-bit low
     * codes, 16 six-bit group scales (12 bytes), f16 d; y = d·(scale − 32)·q, q in −4..3 (groups
     * of 16). A K-quant multiplied as Q6_K is (activations per 256, code sums per 16; kernels/cpu/
     * qmatmul.h). The main type of Q3_K_S / _M / _L files. */
    KDT_Q3_K = 15,
    /* ggml's Q2_K: super-blocks of 256 in 84 bytes — 16 bytes of 4-bit group scales and mins (low,
     * high nibble), 64 of 2-bit codes (Q3_K's low bits), f16 d, f16 dmin; y = d·sc·q − dmin·m, q in
     * 0..3 (groups of 16). A K-quant multiplied as Q6_K is with Q4_K's min term (kernels/cpu/
     * qmatmul.h). The main type of Q2_K files. */
    KDT_Q2_K = 16,
    KDT_COUNT
} kdtype;

static inline bool kdtype_is_quant(kdtype t) {
    return t == KDT_Q8_0 || t == KDT_Q4_K || t == KDT_Q4_0 || t == KDT_Q5_K || t == KDT_Q6_K || t == KDT_Q4_K_SB8 ||
           t == KDT_Q6_K_SB16 || t == KDT_Q5_0 || t == KDT_Q4_1 || t == KDT_Q5_1 || t == KDT_IQ4_NL || t == KDT_IQ4_XS || t == KDT_Q3_K ||
           t == KDT_Q2_K;
}
/* The K-quants (super-blocks of 256 elements, activations quantized per 256; not IQ4_XS). */
static inline bool kdtype_is_kquant(kdtype t) {
    return t == KDT_Q4_K || t == KDT_Q5_K || t == KDT_Q6_K || t == KDT_Q4_K_SB8 || t == KDT_Q6_K_SB16 || t == KDT_Q3_K ||
           t == KDT_Q2_K;
}
/* Elements per block: 1 for the float dtypes. */
static inline int64_t kdtype_block_elems(kdtype t) {
    return t == KDT_Q8_0 || t == KDT_Q4_0 || t == KDT_Q5_0 || t == KDT_Q4_1 || t == KDT_Q5_1 || t == KDT_IQ4_NL ? 32
           : kdtype_is_kquant(t) || t == KDT_IQ4_XS ? 256
                                 : 1;
}
/* Bytes per block (per element for the float dtypes). */
static inline size_t kdtype_block_bytes(kdtype t) {
    return t == KDT_F32    ? 4
           : t == KDT_Q8_0 ? 34
           : t == KDT_Q4_K || t == KDT_Q4_K_SB8 ? 144
           : t == KDT_Q4_0 || t == KDT_IQ4_NL ? 18
           : t == KDT_Q5_0 ? 22
           : t == KDT_Q4_1 ? 20
           : t == KDT_Q5_1 ? 24
           : t == KDT_Q5_K ? 176
           : t == KDT_IQ4_XS ? 136
           : t == KDT_Q3_K ? 110
           : t == KDT_Q2_K ? 84
           : t == KDT_Q6_K || t == KDT_Q6_K_SB16 ? 210
                           : 2;
}
/* The type id of a quantized dtype for kernels/cpu/quant_ref.h (QREF_*): ggml/GGUF's id, or for
 * a reordered dtype quant_ref's own (QREF_Q4_K_SB8 0x1000C, QREF_Q6_K_SB16 0x1000E: no GGUF
 * id); 0 otherwise. */
static inline uint32_t kdtype_ggml_type(kdtype t) {
    return t == KDT_Q8_0 ? 8 : t == KDT_Q4_K ? 12 : t == KDT_Q4_0 ? 2 : t == KDT_Q5_0 ? 6 : t == KDT_Q4_1 ? 3
         : t == KDT_Q5_1 ? 7 : t == KDT_Q5_K ? 13 : t == KDT_Q6_K ? 14 : t == KDT_Q4_K_SB8 ? 0x1000C
         : t == KDT_Q6_K_SB16 ? 0x1000E : t == KDT_IQ4_NL ? 20 : t == KDT_IQ4_XS ? 23 : t == KDT_Q3_K ? 11 : t == KDT_Q2_K ? 10 : 0;
}
/* Bytes per element of a FLOAT dtype (f32 4, f16/bf16 2); 0 for a quantized dtype, whose
 * sizes go through kdtype_row_bytes (code that computes rows * cols * kdtype_size must not
 * meet one: it checks kdtype_is_quant first). */
static inline size_t kdtype_size(kdtype t) { return kdtype_is_quant(t) ? 0 : t == KDT_F32 ? 4 : 2; }
/* Bytes of one row of cols elements; 0 when cols is not a multiple of the block. */
static inline size_t kdtype_row_bytes(kdtype t, int64_t cols) {
    int64_t be = kdtype_block_elems(t);
    return cols < 0 || cols % be ? 0 : (size_t)(cols / be) * kdtype_block_bytes(t);
}
const char *kdtype_name(kdtype t);

/* A weight matrix (or vector: rows == 1) in backend memory, stored dtype, row-major
 * (rows of kdtype_row_bytes(dtype, cols) bytes). */
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
    const void *k_cache;        /* [n_blocks, block_size, n_kv_heads * head_dim] of kv_dtype */
    const void *v_cache;        /* same shape and dtype as k_cache */
    float *out;                 /* [T, n_heads * head_dim] */
    const int32_t *kv_start;    /* NULL, or [n_seqs]: sequence s skips slots [0, kv_start[s])
                                 * (padding before a block-aligned shared prefix) */
    int window;                 /* sliding window (Mistral/Qwen2): 0 = full attention; W > 0: the
                                 * query at slot p also skips slots <= p - W (transformers' rule
                                 * kv_idx > q_idx - W: p attends to its last W slots, itself
                                 * included), combined with kv_start as max(kv_start, p - W + 1) */
    float softcap;              /* attention logit soft-capping (Gemma 2): 0 = none; c > 0: each
                                 * score s = scale * q·k becomes tanh(s / c) * c (f32 divide,
                                 * tanh, multiply, as transformers) before the mask and softmax */
    int max_rows;               /* host: >= T (the rows of q), or 0 = not known; a hint that
                                 * sizes a device backend's grid, never changes a result */
    kdtype kv_dtype;            /* the caches' element type: KDT_F32 (0, the default), or KDT_F16
                                 * where supports_op(KOP_ATTENTION, KDT_F16); K/V rows are widened
                                 * to f32 as they are read, so the math is that of f32 attention
                                 * over the stored (rounded) values */
} kattn_args;

/* The frequencies of one rope call (kbackend_ops.rope). inv_freq and table live in backend
 * memory. */
typedef struct {
    const float *inv_freq;       /* [n_tables, rot_dim / 2] */
    int n_tables;                /* >= 1 */
    const int32_t *table;        /* [n] table index per row, or NULL: every row uses table 0 */
    float scale;                 /* cos/sin multiplier (attention_scaling); 1 = none */
} krope_freqs;

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
    int max_rows;                /* host: >= every segment's row count, or 0 = not known (a
                                  * backend may then give a long segment fewer workers) */
} ksgmv;

/* One factor of a per-segment input rotation (kbackend_ops.seg_rotate; OFT / BOFT): a
 * block-diagonal f32 matrix of dim / block blocks R_k [block, block] (row-major), seen through
 * a column permutation g. Applied to a row v:
 *   (v·M)[g(k·b + c)] = Σ_{j < b} v[g(k·b + j)] · R_k[j, c]      k < dim / b, c < b, b = block
 * summed over j in ascending order, in f32. In backend memory. */
typedef struct {
    const float *r;              /* R_k at r + k·b·b, or at r for every k when shared != 0 */
    const int32_t *perm;         /* [dim] a permutation g of [0, dim), or NULL: g(i) = i */
    int32_t block;               /* b >= 1, divides dim */
    int32_t shared;              /* nonzero: one block for all (PEFT OFT's block_share) */
} krot_factor;

/* Per-segment rotations of a ragged batch's rows (kbackend_ops.seg_rotate): rows of segment
 * i = [seg_start[i], seg_start[i+1]) go through n_factors[i] factors, factors[i][0] first;
 * n_factors[i] == 0 copies the rows unchanged. seg_start, n_factors, factors and the factor
 * arrays live in backend memory; n_segs and max_block are host values. */
typedef struct {
    int n_segs;
    const int32_t *seg_start;          /* [n_segs + 1] */
    const int32_t *n_factors;          /* [n_segs], each in [0, KROT_MAX_FACTORS] */
    const krot_factor *const *factors; /* [n_segs] arrays of n_factors[i] (NULL when 0) */
    int max_block;                     /* >= every factor's block (workspace sizing) */
} ksegrot;

/* Factors one segment's rotation may chain: PEFT's BOFT has at most log2(in) + 1. */
#define KROT_MAX_FACTORS 32

typedef struct kbackend kbackend;

/* Op families, for supports_op. */
typedef enum {
    KOP_GET_ROWS = 0, KOP_MATMUL, KOP_RMSNORM, KOP_ROPE, KOP_KV_STORE, KOP_ATTENTION, KOP_SWIGLU,
    KOP_ADD, KOP_SGMV, KOP_SEG_SCALE,
    KOP_SAMPLE, /* kbackend_ops.sample (logits are f32: ask with KDT_F32) */
    KOP_SEG_ROTATE, /* kbackend_ops.seg_rotate (f32 rotations: ask with KDT_F32) */
    KOP_COUNT
} kop;

/* One step's token choice on the backend (kbackend_ops.sample): row r of logits picks ids[r]
 * exactly as the engine's host sampler (server/engine/sampling.c, whose math is
 * kernels/cpu/sample_ref.h's) would from the same row and the same uniform draw u[r]:
 *   temperature[r] <= 0: greedy, the lowest id among equal maxima (NaN never wins);
 *   else p_i = (float)exp((logit_i - max) / T) (in double), optionally truncated to the
 *   top_k[r] most likely ids and then to the smallest prefix (by descending p, ascending id)
 *   whose mass reaches top_p[r]·(sum of p), and the id where u[r]·(kept mass) falls in the
 *   cumulative sum in that order.
 * The RNG stays with the caller (one xoshiro stream per request, drawn once per sampled
 * token as today): seeded reproducibility and batch invariance do not depend on the backend.
 * All pointers are backend memory. Only ids (and logprob when asked) come back to the host:
 * n_rows int32 instead of n_rows x vocab floats. */
typedef struct {
    int n_rows, vocab;
    const float *logits;      /* [n_rows, ld], ld >= vocab */
    int ld;
    const float *temperature; /* [n_rows]; <= 0: greedy */
    const int32_t *top_k;     /* [n_rows]; <= 0 or >= vocab: off */
    const float *top_p;       /* [n_rows]; <= 0 or >= 1: off */
    const double *u;          /* [n_rows] in [0, 1): the caller's draws (ignored by greedy rows) */
    int32_t *ids;             /* [n_rows] out */
    float *logprob;           /* NULL, or [n_rows] out: log-softmax of the row at ids[r] (logsumexp
                               * in double, as sampler_logprobs) */
    bool any_truncated;       /* host-side: true when some row may use top_k or top_p (a backend
                               * may skip its sorting work otherwise). A truncating row with this
                               * false is an error: PEFTD_EINVAL on the CPU; on CUDA that row's id
                               * is -1 and the next synchronize/download reports PEFTD_ERANGE */
} ksample_args;

typedef struct kbackend_ops {
    const char *name; /* [any] for messages only: capabilities are the fields below */
    void (*destroy)(kbackend *kb); /* through kbackend_destroy() */

    /* [engine] Memory. alloc returns NULL on failure; memory is not zeroed. */
    void *(*alloc)(kbackend *kb, size_t bytes);
    void (*free)(kbackend *kb, void *p);
    /* [engine] upload: src_host may be reused on return. download waits for the ops
     * before it (the bytes may be an op's result) and reports the device error flag. */
    int (*upload)(kbackend *kb, void *dst, const void *src_host, size_t bytes);
    int (*download)(kbackend *kb, void *dst_host, const void *src, size_t bytes);
    int (*memset0)(kbackend *kb, void *dst, size_t bytes);
    /* [engine] Waits for every issued op; reports (and clears) the device error flag:
     * PEFTD_ERANGE when a kernel found a device-resident index out of range. */
    int (*synchronize)(kbackend *kb);

    /* [engine] Every op below. */

    /* out[i,:] = f32(table[ids[i], :]) for i < n; ids outside [0, rows) -> PEFTD_ERANGE.
     * A quantized table's rows are dequantized (exactly as kernels/cpu/quant_ref.c).
     * Also serves as a row gather of f32 activations (table.dtype == KDT_F32). */
    int (*get_rows)(kbackend *kb, const kmat *table, const int32_t *ids, int n, float *out);

    /* y[n, w.rows] = beta * y + x[n, w.cols] · wᵀ, beta ∈ {0, 1}.
     * Quantized w (KDT_Q8_0, KDT_Q4_0, KDT_Q5_0, KDT_Q4_1, KDT_Q5_1, KDT_IQ4_NL, KDT_IQ4_XS, KDT_Q2_K, KDT_Q3_K, KDT_Q4_K, KDT_Q5_K, KDT_Q6_K; where
     * supports_op(KOP_MATMUL, dt)): each x row is quantized per block to 8 bits first
     * (Q8_0/Q4_0: per 32 elements d = max|x|/127; K-quants: per 256, like ggml's Q8_K), the block dot products are exact int32 sums scaled in f32, so the result is
     * that of the dequantized w times the quantized x (error bound: tests/unit/
     * test_kernels_quant.c). Every row's result is independent of n (batch-invariant,
     * bit-exact), on every CPU code path (AVX-512 VNNI, AVX2, scalar). */
    int (*matmul)(kbackend *kb, const float *x, int n, const kmat *w, float *y, float beta);

    /* y[i,:] = x[i,:] / sqrt(mean(x[i,:]²) + eps) * w (w: [1, dim]); y may equal x. */
    int (*rmsnorm)(kbackend *kb, const float *x, const kmat *w, int n, int dim, float eps, float *y);

    /* In-place rotary embedding, Hugging Face "rotate_half" layout on the first rot_dim dims
     * of each head (partial rotary, Phi-4-mini; rot_dim == head_dim otherwise): pairs
     * (i, i + rot_dim/2) rotate by angle pos[row] * inv_freq[t][i], i < rot_dim/2, with
     * t = f->table ? f->table[row] : 0, and cos/sin multiplied by f->scale (transformers'
     * attention_scaling; 1 = none) before use, in f32; dims [rot_dim, head_dim) pass through.
     * x: [n, n_heads * head_dim]; f->inv_freq: [f->n_tables, rot_dim / 2] (per-row tables:
     * dynamic NTK and longrope pick a row's frequencies from its sequence's length);
     * rot_dim even, 0 < rot_dim <= head_dim. A negative position or a table index outside
     * [0, n_tables) -> PEFTD_ERANGE (CUDA: reported by synchronize, row left as it was). */
    int (*rope)(kbackend *kb, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
                int rot_dim, const krope_freqs *f);

    /* Writes k[i,:], v[i,:] (kv_dim floats each) to slot slots[i] of the layer's caches, whose
     * elements are kv_dtype: KDT_F32 as they are, KDT_F16 (where supports_op(KOP_KV_STORE,
     * KDT_F16)) rounded to nearest even as lib/half.h's f32_to_f16 (the one rounding of a
     * value, so a row's stored bits never depend on the batch). Rows are
     * written in any order, concurrently: rows sharing a slot leave one of them there, not
     * a defined one (the engine writes each real slot once per step; only decode_pad's
     * padding rows share their "trash" slot). */
    int (*kv_store)(kbackend *kb, const float *k, const float *v, const int32_t *slots, int n,
                    int kv_dim, kdtype kv_dtype, void *k_cache, void *v_cache);

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

    /* ---- capabilities (ggml-backend style) ---- */

    /* [any] Backend memory IS host memory (CPU): host buffers (e.g. read-only mappings of
     * the weights, an adapter's host block) may be given to ops as they are, no copy. */
    bool is_host;
    /* [engine] dst = src, both in backend memory, ordered with the ops (overlap allowed). */
    int (*copy)(kbackend *kb, void *dst, const void *src, size_t bytes);
    /* [any] Whether op family `op` takes weights (kmat / ksgmv operands) of dtype dt; for
     * KOP_KV_STORE and KOP_ATTENTION, whether the K/V cache may be of dtype dt. */
    bool (*supports_op)(const kbackend *kb, kop op, kdtype dt);
    /* [any] Bytes of the f32 workspace `t` one SGMV shrink/expand pair needs for n_rows rows
     * of ranks up to max_rank (ld_t = max_rank). */
    size_t (*sgmv_workspace)(const kbackend *kb, int n_rows, int max_rank);

    /* [engine] A Linear layer's bias: y[i, j] += b[j] for i < n, j < b->cols (b: [1, dim]
     * in its stored dtype, y: [n, dim] f32). Asked of supports_op as KOP_ADD. Last in the
     * table so the positional CUDA table keeps its order. */
    int (*add_bias)(kbackend *kb, float *y, int n, const kmat *b);

    /* [engine] GeGLU (Gemma's MLP, hidden_activation gelu_pytorch_tanh): out[i] =
     * gelu_tanh(gate[i]) * up[i] over n*dim elements, gelu_tanh(x) = 0.5·x·(1 + tanh(√(2/π)·(x +
     * 0.044715·x³))) (torch's approximate='tanh'; evaluated in double, rounded once, then the
     * f32 product); out may alias gate. Beside swiglu; appended for the positional CUDA table. */
    int (*geglu)(kbackend *kb, const float *gate, const float *up, int n, int dim, float *out);
    /* [engine] Soft-capping in place (Gemma final_logit_softcapping): y[i] = tanh(y[i] / cap) *
     * cap for i < n, cap > 0; the divide and the multiply are f32 ops (as torch's three ops),
     * tanh is evaluated in double and rounded once. */
    int (*softcap)(kbackend *kb, float *y, int64_t n, float cap);
    /* [engine] Sampling on the backend (ksample_args); asked of supports_op as KOP_SAMPLE with
     * KDT_F32. Appended last for the positional CUDA table. */
    int (*sample)(kbackend *kb, const ksample_args *a);
    /* [engine] Per-segment input rotation (ksegrot; OFT / BOFT): y[r, :] = x[r, :]·M_0·M_1⋯ for
     * the rows of each segment (rows with no factors copied as they are), x and y [*, dim] f32,
     * rows outside [seg_start[0], seg_start[n_segs]) untouched; y must not overlap x. A row's
     * result depends on that row and its factors only (batch-invariant). A factor whose block
     * does not divide dim, or a perm entry outside [0, dim) -> PEFTD_EINVAL (CPU; CUDA checks
     * the host fields and reports a device-side bad entry as PEFTD_ERANGE at synchronize).
     * Asked of supports_op as KOP_SEG_ROTATE with KDT_F32. Appended for the positional CUDA
     * table. */
    int (*seg_rotate)(kbackend *kb, const float *x, int dim, const ksegrot *s, float *y);
    /* [engine] Several matmuls over one x: y[g] = beta·y[g] + x·w[g]ᵀ for g < count
     * (1 <= count <= KMATMUL_GROUP_MAX, every w[g] with the same cols; no y[g] overlaps x or
     * another), each exactly as matmul would give it, bit for bit (q/k/v, gate/up). The CPU
     * backend quantizes x once per activation layout and runs every weight's row tasks in one
     * dispatch. NULL in a backend's table: call kops_matmul_group(), which falls back to one
     * matmul per weight. Appended last for the positional CUDA table. */
    int (*matmul_group)(kbackend *kb, const float *x, int n, int count, const kmat *const *w, float *const *y,
                        float beta);
    /* [any] The dtype this backend's op `op` runs fastest on for weights stored as dt, when that
     * is a lossless reordering of dt's blocks (qref_reorder converts, same results bit for bit),
     * else dt. The loader asks it once per weight before upload. NULL: dt. Appended last for the
     * positional CUDA table. */
    kdtype (*preferred_dtype)(const kbackend *kb, kop op, kdtype dt);
    /* [engine] rope(q), rope(k), then kv_store(k, v) of one layer: q [n, n_heads, head_dim],
     * k and v [n, n_kv_heads * head_dim], exactly those three calls' results and error
     * returns, bit for bit, in one call (on a GPU one kernel instead of three small ones per
     * layer). NULL in a backend's table: call kops_rope_kv_store(), which makes the three
     * calls. Appended last for the positional CUDA table. */
    int (*rope_kv_store)(kbackend *kb, float *q, float *k, const float *v, const int32_t *pos, int n, int n_heads,
                         int n_kv_heads, int head_dim, int rot_dim, const krope_freqs *f, const int32_t *slots,
                         kdtype kv_dtype, void *k_cache, void *v_cache);
    /* [engine] A feed-forward block's gated unit straight from its input: out[n, rows] =
     * act(x·w_gateᵀ) ⊙ (x·w_upᵀ), act KACT_SILU (swiglu) or KACT_GELU_TANH (geglu), exactly what
     * matmul_group(x -> out, up) then swiglu / geglu(out, up -> out) give, bit for bit (w_gate
     * and w_up: one dtype and shape; out and up [n, rows], overlapping neither x nor each
     * other). up is scratch the backend may use (CUDA fuses one x row, its batch-1 decode,
     * into one kernel that leaves it alone, and takes the three steps otherwise). NULL:
     * kops_matmul_glu() makes the three steps. Appended last for the positional CUDA table. */
    int (*matmul_glu)(kbackend *kb, const float *x, int n, const kmat *w_gate, const kmat *w_up, kact act,
                      float *up, float *out);
} kbackend_ops;

/* The most weights one matmul_group call takes. */
#define KMATMUL_GROUP_MAX 4

/* [engine] kb->ops->matmul_group where the backend has it, else one matmul per weight (same
 * bits either way). */
int kops_matmul_group(kbackend *kb, const float *x, int n, int count, const kmat *const *w, float *const *y,
                      float beta);

/* [engine] kb->ops->rope_kv_store where the backend has it, else rope(q), rope(k) and
 * kv_store(k, v) (same bits either way). */
int kops_rope_kv_store(kbackend *kb, float *q, float *k, const float *v, const int32_t *pos, int n, int n_heads,
                       int n_kv_heads, int head_dim, int rot_dim, const krope_freqs *f, const int32_t *slots,
                       kdtype kv_dtype, void *k_cache, void *v_cache);

/* [engine] kb->ops->matmul_glu where the backend has it, else matmul_group(x -> out, up) then
 * swiglu / geglu(out, up -> out). Same bits either way. */
int kops_matmul_glu(kbackend *kb, const float *x, int n, const kmat *w_gate, const kmat *w_up, kact act, float *up,
                    float *out);

/* [any] kb->ops->preferred_dtype(kb, op, dt) where the backend has it, else dt. */
kdtype kops_preferred_dtype(const kbackend *kb, kop op, kdtype dt);

/* A backend object. Callers use kb->ops (and kb->impl inside the backend only). */
struct kbackend {
    const kbackend_ops *ops;       /* what callers call: == impl_ops, or the owner-checking
                                    * copy of it (builds without NDEBUG) */
    void *impl;
    const kbackend_ops *impl_ops;  /* the backend's own table */
    kbackend_ops checked;          /* impl_ops with [engine] entries behind the owner check */
    pthread_t owner;               /* valid while has_owner (atomic accesses) */
    int has_owner;
};

/* For backend implementations: fills kb's table pointers (ops, impl, impl_ops, the checked
 * copy). Call once in the backend's create function, before kb is shared. */
void kbackend__init(kbackend *kb, const kbackend_ops *ops, void *impl);

/* Any thread (the engine thread, on itself): from now on only the calling thread may make
 * [engine] calls on kb. */
void kbackend_set_owner(kbackend *kb);
/* The owner thread, before it ends (e.g. the engine thread leaving its loop): kb has no
 * owner again; the thread that joins it may then tear down (model_free, ...). */
void kbackend_release_owner(kbackend *kb);
/* The owner check itself (what the checked table runs): returns when kb has no owner or
 * the caller is the owner; otherwise logs "<backend>: <fn> called from a thread that does
 * not own the backend" and aborts (a programmer error: never a status). */
void kbackend_check_owner(kbackend *kb, const char *fn);

/* CPU backend with n_threads workers (<= 0: one per online core).
 * @note caller owns the result: kbackend_destroy(). NULL on failure. */
kbackend *kbackend_cpu_create(int n_threads);

/* Lets large f32 batches (prefill) use OpenBLAS sgemm: 5-15% faster there, but a row's
 * result then depends on the batch it shares, so outputs are no longer batch-invariant
 * (off by default). No-op on other backends. Call before the first op. */
void kbackend_cpu_set_fast_prefill(kbackend *kb, bool on);

/* kbackend_destroy(NULL) is a no-op. */
static inline void kbackend_destroy(kbackend *kb) {
    if (kb) kb->ops->destroy(kb);
}

#ifdef __cplusplus
}
#endif

#endif
