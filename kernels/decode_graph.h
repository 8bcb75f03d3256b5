/* kernels/decode_graph.h — host logic of graph-replayed decode steps: batch-size buckets,
 * padding a decode batch to its bucket, and when to capture, replay or run eagerly. Plain C
 * (no CUDA): tested in tests/unit/test_decode_graph.c; the capture/replay itself is
 * kernels/cuda/decode_graph_cuda.cu (kernels_cuda.h: kbackend_cuda_graph_*).
 *
 * A decode step is capturable when, inside it, nothing allocates, nothing waits on the host
 * and nothing copies from pageable memory: every per-step input (token ids, positions, KV
 * slots, kv lengths, block tables, SGMV segment tables) is written into FIXED device buffers
 * sized for the bucket before the replay (one upload from pinned memory), and kernel
 * arguments that are host integers (row count, segment count, block-table stride) are the
 * bucket's, not the batch's. Hence:
 *   - Buckets 1, 2, 4, 8, ... up to max_rows (the last bucket is max_rows itself when it is
 *     not a power of two). A batch of n rows runs as the smallest bucket >= n.
 *   - Padded rows (n .. bucket-1) are masked: token 0 at position 0, written to a reserved
 *     "trash" KV slot (its block repeated in their block-table row), kv_len 1 (they attend
 *     only to themselves), one sequence each, in a trailing SGMV segment with no adapter, and
 *     row_mask 0: their sampled ids are discarded. They never touch a real sequence's KV.
 *   - The SGMV segment table has bucket + 1 entries: the batch's segments, then the padding
 *     segment, then empty segments (seg_start repeated).
 *   - A captured graph is keyed by (layout_gen of the adapter slot pool, buffers_gen of the
 *     fixed buffers, max_blocks): slot addresses or buffer addresses may be baked into it, so
 *     any change recaptures. The first step of a key runs eagerly (a warm-up: scratch grows,
 *     cuBLAS picks its kernels, outside any capture); the second captures; later ones replay.
 *     A bucket whose capture failed DECODE_GRAPH_MAX_FAILS times stays eager.
 *   - Off by default: decode_graph_enabled() reads PEFTD_CUDA_GRAPHS (1 = on) until a GPU run
 *     has validated replay against eager steps (tests/gpu/run.sh runs both).
 * The engine (server/engine/engine_graphs.c) keys graphs by the step's signature
 * (kernels/step_split.h) and does not pad rows to the bucket yet: decode_pad is tested here
 * and ready, the step builder does not call it.
 *
 * Threads: the engine thread (it owns the backend and the graphs). */
#ifndef PEFTD_DECODE_GRAPH_H
#define PEFTD_DECODE_GRAPH_H

#include <stdbool.h>
#include <stdint.h>

#define DECODE_GRAPH_MAX_BUCKETS 24
#define DECODE_GRAPH_MAX_FAILS 2

typedef struct {
    int n;
    int size[DECODE_GRAPH_MAX_BUCKETS];
} decode_buckets;

/* 1, 2, 4, ... up to max_rows (>= 1). PEFTD_EINVAL when max_rows < 1. */
int decode_buckets_init(decode_buckets *b, int max_rows);
/* The index of the smallest bucket holding n_rows, or -1 (n_rows < 1 or > the largest). */
int decode_bucket_for(const decode_buckets *b, int n_rows);

/* One decode batch (one row per sequence) as the step builds it, host arrays. */
typedef struct {
    int n;                       /* rows = sequences */
    const int32_t *ids, *pos, *kv_slot, *kv_len;
    const int32_t *block_table;  /* [n * max_blocks] */
    int max_blocks;
    int n_segs;                  /* SGMV segments over the n rows */
    const int32_t *seg_start;    /* [n_segs + 1], seg_start[0] = 0, seg_start[n_segs] = n */
    const int32_t *seg_adapter;  /* [n_segs] adapter slot per segment, -1 = none */
} decode_batch;

/* The same padded to a bucket: every array has the bucket's size (caller-provided, e.g. the
 * pinned host mirror of the fixed device buffers). */
typedef struct {
    int32_t *ids, *pos, *kv_slot, *kv_len;  /* [bucket] */
    int32_t *q_start;                       /* [bucket + 1]: row i is sequence i */
    int32_t *block_table;                   /* [bucket * max_blocks] */
    int32_t *seg_start;                     /* [bucket + 2] */
    int32_t *seg_adapter;                   /* [bucket + 1] */
    uint8_t *row_mask;                      /* [bucket]: 1 real, 0 padding */
} decode_padded;

/* Pads `in` to `bucket` rows. trash_slot / trash_block: the reserved KV slot and its block.
 * PEFTD_EINVAL when bucket < in->n, in->n_segs > bucket or the segments do not cover [0, n). */
int decode_pad(const decode_batch *in, int bucket, int32_t trash_slot, int32_t trash_block, decode_padded *out);

typedef struct {
    uint64_t layout_gen;   /* slot_pool_layout_gen() */
    uint64_t buffers_gen;  /* bumped when a fixed buffer is reallocated */
    int max_blocks;
} decode_graph_key;

typedef enum { DECODE_EAGER = 0, DECODE_CAPTURE, DECODE_REPLAY } decode_action;

typedef struct {
    bool valid;            /* a graph is captured for key */
    bool warmed;           /* one eager step ran with key */
    int fails;
    decode_graph_key key;
} decode_graph_state;

typedef struct {
    bool enabled;
    decode_buckets buckets;
    decode_graph_state st[DECODE_GRAPH_MAX_BUCKETS];
    uint64_t captures, replays, eager_steps, invalidations, capture_failures;
} decode_graphs;

/* PEFTD_CUDA_GRAPHS=1 in the environment (anything else, or unset: off). */
bool decode_graph_enabled(void);
int decode_graphs_init(decode_graphs *g, int max_rows, bool enabled);
/* What to do for a batch of n_rows with key k; *bucket gets the bucket's rows (n_rows when
 * eager because disabled or too big). A valid graph with another key is invalidated here
 * (the caller destroys its exec graph when *invalidate is set). */
decode_action decode_graphs_plan(decode_graphs *g, int n_rows, const decode_graph_key *k, int *bucket,
                                 bool *invalidate);
/* The outcome of a DECODE_CAPTURE for n_rows' bucket. */
void decode_graphs_captured(decode_graphs *g, int n_rows, bool ok);
/* Forgets every graph (e.g. the backend's buffers were torn down). */
void decode_graphs_invalidate_all(decode_graphs *g);

#endif
