/* kernels/device_plan.h — the device memory plan: how the memory a GPU has free at start-up
 * (cudaMemGetInfo) is split between the base weights, the adapter slot pool
 * (kernels/slot_pool.h), the step's activations, the logits sampling needs, a headroom,
 * and the KV cache (bf16, paged in blocks), which gets what is left. A pure function of
 * its inputs (no device, no globals): tested on the CPU with a table of cases
 * (tests/unit/test_device_plan.c); the CUDA start-up passes it cudaMemGetInfo's free bytes.
 *
 * The parts (bytes):
 *   weights      as given (the loaded model's device bytes in their stored dtypes)
 *   slot pool    n_slots x slot_bytes (slot_bytes rounded up to SLOT_POOL_ALIGN)
 *   activations  max_rows x 4 x (3·hidden + 2·q_dim + 2·kv_dim + 2·intermediate + max_rank):
 *                f32 rows of one step (x, residual, normed x, q, attention out, k, v, gate,
 *                up, SGMV shrink workspace). One set serves every decode-graph bucket (the
 *                buckets replay one at a time), so graphs cost no extra activation memory.
 *   logits       max_seqs x vocab x 4: only the rows that sample (one per sequence), never
 *                a prefill chunk's every token; plus max_seqs x 32 bytes of sampling
 *                arguments and results (temperature, top-k, top-p, u, id, logprob).
 *   headroom     config (CUDA context growth, cuBLAS workspace, allocator rounding)
 *   KV           kv_fraction of what remains, in whole blocks of block_size tokens; one
 *                token costs 2 (K and V) x n_layers x kv_dim x 2 bytes (bf16; kv_elem_bytes
 *                4 while the attention kernels keep f32 K/V).
 * It does not fit (PEFTD_ENOMEM, with one start-up line naming every part and the free
 * bytes) when the fixed parts exceed the free bytes, or when the KV cache would hold fewer
 * tokens than min_kv_tokens (one full context).
 *
 * Threads: any (pure). */
#ifndef PEFTD_DEVICE_PLAN_H
#define PEFTD_DEVICE_PLAN_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_layers, hidden, intermediate, n_heads, n_kv_heads, head_dim, vocab;
    uint64_t weight_bytes;
} device_plan_model;

typedef struct {
    int n_slots;             /* adapter slot pool (0: no pool) */
    uint64_t slot_bytes;
    int max_seqs;            /* sequences per step (rows that sample) */
    int max_rows;            /* token rows per step (decode rows + a prefill chunk) */
    int max_rank;            /* SGMV workspace per row */
    int block_size;          /* KV tokens per block */
    uint64_t headroom_bytes;
    double kv_fraction;      /* (0, 1]: share of the remainder given to the KV cache */
    int min_kv_tokens;       /* the KV cache must hold at least this many tokens */
    int kv_elem_bytes;       /* bytes of one K/V element: 0 or 2 = bf16 (the target); 4 = f32
                              * (the kernels' KV today) */
} device_plan_config;

typedef struct {
    uint64_t free_bytes;
    uint64_t weights, slot_pool, activations, logits, headroom, kv;
    uint64_t kv_token_bytes;  /* bytes of one token's K and V over every layer */
    int64_t kv_blocks, kv_tokens;
    uint64_t unused;          /* free - every part */
} device_plan;

/* Fills *out (always, as far as computed). 0 when the plan fits; PEFTD_ENOMEM when it does
 * not, PEFTD_EINVAL for an argument out of range: err then holds the one start-up line. */
int device_plan_make(uint64_t free_bytes, const device_plan_model *m, const device_plan_config *c,
                     device_plan *out, char *err, size_t errlen);

/* One start-up line describing a plan ("device memory plan: ... GiB free = weights ..."). */
void device_plan_describe(const device_plan *p, char *buf, size_t len);

#endif
