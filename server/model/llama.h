/* server/model/llama.h — the Llama-family forward pass over a ragged step batch.
 *
 * A llama_ctx holds what one engine needs on its backend to run steps: the paged KV
 * cache (one K and one V pool per layer), activation scratch sized for the largest
 * step, and device copies of the step's index arrays. It is owned by the engine thread.
 */
#ifndef PEFTD_LLAMA_H
#define PEFTD_LLAMA_H

#include <stdint.h>

#include "adapter_store/adapter.h"
#include "adapter_store/adapter_mix.h"
#include "kernels/kernels.h"
#include "server/model/model.h"

/* Rows [row_start, row_end) of a step use one adapter (or none) at one strength. The
 * engine orders sequences so that each (adapter, scale) pair owns one contiguous segment.
 * A composition of LoRA adapters (adapter_mix.h, checked by adapter_mix_check) comes as mix
 * with ad NULL: its rows take part in one SGMV pass per (A, B) pair, whose deltas add. */
typedef struct {
    const adapter *ad;          /* NULL = the bare base model (or mix) */
    float scale;                /* multiplies LoRA-family deltas (per-request adapter_scale) */
    int row_start, row_end;
    const adapter_mix *mix;     /* NULL, or the composition these rows use (ad NULL) */
} llama_segment;

/* One step: T token rows from S sequences (rows of a sequence contiguous), host arrays. */
typedef struct {
    int n_tokens;                /* T */
    const int32_t *tokens;       /* [T] token ids; -(k+1) = virtual token k of the row's
                                  * prompt-tuning adapter */
    const int32_t *positions;    /* [T] RoPE positions */
    const int32_t *slots;        /* [T] physical KV slot (block * block_size + offset) */
    int n_seqs;                  /* S */
    const int32_t *q_start;      /* [S + 1] */
    const int32_t *kv_len;       /* [S] valid KV slots after this step */
    const int32_t *block_table;  /* [S * max_blocks] */
    const int32_t *kv_start;     /* [S] first KV slot a sequence attends to, or NULL (all 0) */
    const int32_t *rope_len;     /* [S] or NULL; only read for rope_scaling dynamic / longrope:
                                  * a row at position p of sequence s gets the rope table of
                                  * sequence length max(rope_len[s], p + 1) (the engine: the
                                  * prompt length, or the length at Phi3's longrope recompute).
                                  * NULL: max(positions of s in this batch) + 1, i.e. each
                                  * sequence as one transformers forward call */
    int n_segs;                  /* adapter segments covering [0, T) in order; 0 = all base */
    const llama_segment *segs;
    int n_logits;                /* rows whose logits are wanted */
    const int32_t *logit_rows;   /* [n_logits] row indices in [0, T) */
} llama_batch;

typedef struct llama_ctx llama_ctx;

typedef struct {
    int max_tokens;      /* most token rows in one step */
    int max_seqs;        /* most sequences in one step */
    int block_size;      /* KV slots per block */
    int n_blocks;        /* KV blocks in the pool */
    int max_blocks;      /* block-table row stride (blocks per sequence at most) */
    kdtype kv_dtype;     /* K/V cache elements: KDT_F32 (0), or KDT_F16 where the backend's
                          * supports_op(KOP_KV_STORE / KOP_ATTENTION, KDT_F16) */
} llama_ctx_params;

/* @note caller owns *out: llama_ctx_free(). m must outlive it. */
int llama_ctx_create(model *m, const llama_ctx_params *p, llama_ctx **out, char *err, size_t errlen);
void llama_ctx_free(llama_ctx *c); /* NULL is a no-op */

/* Writes a prefix-tuning adapter's per-layer K/V into KV slots pad .. pad+n_virtual-1 of
 * the given blocks (the engine shares those blocks among the adapter's sequences). */
int llama_store_prefix(llama_ctx *c, const adapter *ad, const int32_t *blocks, int pad);

/* Runs the batch; writes n_logits rows of vocab_size f32 logits to logits (host memory).
 * logits NULL: the logits stay in backend memory for llama_sample (no n_logits x vocab
 * download; errors of the issued ops surface at llama_sample). */
int llama_forward(llama_ctx *c, const llama_batch *b, float *logits);

/* After llama_forward(c, b, logits) (logits not NULL): the hidden state after the final norm
 * (what lm_head reads) of logits rows [row0, row0 + n) into out (host, n x hidden_size). */
int llama_hidden_rows(llama_ctx *c, int row0, int n, float *out);

/* After llama_forward(c, b, NULL): the token of each of the n (= b->n_logits) logits rows
 * chosen on the backend (kbackend_ops.sample, KOP_SAMPLE) from the per-row parameters and
 * uniform draws u (host arrays of n; see ksample_args), into ids (host, n); logprob (host, n,
 * or NULL) gets the chosen token's log-softmax. Uploads 4 small arrays, downloads n ids (+ n
 * logprobs). any_truncated: some row has top_k or top_p on. */
int llama_sample(llama_ctx *c, int n, const float *temperature, const int32_t *top_k, const float *top_p,
                 const double *u, bool any_truncated, int32_t *ids, float *logprob);

#endif
