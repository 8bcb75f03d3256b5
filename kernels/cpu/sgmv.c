/* kernels/cpu/sgmv.c — segmented gather matmul (SGMV) for low-rank adapters on the CPU:
 * sgmv_shrink, sgmv_expand and seg_scale (contracts: ksgmv in kernels/kernels.h).
 *
 * Decode batches hold few rows per adapter (often one), so both ops are bound by
 * reading A_i / B_i. Work items are (segment, chunk of A rows or of outputs, block of
 * batch rows); a chunk's weights stream from DRAM once (software-prefetched into L2)
 * and are served from L1/L2 to every row of its segment, so each weight byte crosses
 * the memory bus once per call whatever the segment's row count. Chunk sizes are
 * chosen so the pool gets a few items per thread whether the batch has one large
 * segment or many small ones; ranks are used as given (no padding to a maximum).
 *
 *   shrink: tiles of SH_MR A rows × SH_NR x rows, vectorised along in_dim (one
 *           accumulator vector per (row, rank) pair, reduced at the end); bias and
 *           activation applied on the scalar result, in double with libm.
 *   expand: blocks of KV_W outputs; for each output j one accumulator vector over
 *           the rank dimension (B row j is contiguous, rank elements), then the
 *           KV_W accumulators are reduced together into one vector of KV_W sums
 *           (a transpose-and-add tree), so y is updated a vector at a time. A segment
 *           of 2+ rows transposes each block of B once instead and gives every row
 *           the same sums in the same order (ex_piece): the same bits.
 *
 * Batch invariance: a (row, output) value is always computed by the same sequence of
 * operations, fixed by in_dim / rank / out_dim alone (vector chunks along the reduced
 * dimension, a fixed reduction tree, output blocks aligned to multiples of KV_W from
 * column 0); the chunking into work items and the number of rows sharing a tile never
 * change it, so a row's result does not depend on the rest of the batch or the
 * thread count.
 */
#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/dot_tile.h"
#include "kernels/cpu/simd.h"

/* Shrink tile (dot_tile.h): SH_MR A rows × SH_NR x rows = 16 accumulators + 4 A
 * vectors + 1 x vector of the 32 zmm (AVX-512); AVX2's 16 ymm fit 4×2 + 4 + 1. */
#define SH_MR DT_MR
#if KV_W == 16
#define SH_NR 4
#else
#define SH_NR 2
#endif

/* Expand block: one output per lane of the reduced vector. */
#define EX_JB KV_W

/* Batch rows per work item: a segment with more rows (prefill) is split so it still
 * spreads over the pool; its weight chunk is re-read from L2/L3, not DRAM, by each
 * row block (a chunk is at most a few hundred KiB). */
#define SG_ROWS_PER_TASK 64

/* Work items per thread: a few, so a thread slowed by other processes is covered
 * by the others (the pool hands items out dynamically). */
#define SG_TASKS_PER_THREAD 4

/* Smallest weight chunk per work item: below ~16 KiB (~1 us of DRAM traffic on
 * one core) the per-item overhead (an atomic, a call, prefetch ramp-up) shows. */
#define SG_MIN_TASK_BYTES 16384

/* Software prefetch distance into L2, bytes ahead in a chunk's contiguous weight
 * stream; the same distance matmul.c measured best (16-32 KiB) on this machine. */
#define SG_PF_BYTES 16384

/* seg_scale: elements per work item (64 KiB of y), as elementwise.c. */
#define SS_CHUNK 16384

/* Prefetches [p, p + bytes) into L2, one hint per cache line. */
static inline void sg_prefetch(const char *p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 2);
}

/* ---- activations (double precision libm: the f32 result is the correctly rounded
 * value of the exact function, or within an ulp of it) ---- */

static float sg_act(int act, float v) {
    double x = v;
    switch (act) {
    case KACT_RELU: return x < 0 ? 0.0f : v; /* NaN propagates, as torch.relu */
    case KACT_SILU: return (float)(x / (1.0 + exp(-x)));
    case KACT_GELU: return (float)(0.5 * x * (1.0 + erf(x * M_SQRT1_2)));
    case KACT_GELU_TANH: {
        /* torch approximate='tanh': 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) */
        const double k = 0.7978845608028654; /* sqrt(2 / pi) */
        return (float)(0.5 * x * (1.0 + tanh(k * (x + 0.044715 * x * x * x))));
    }
    case KACT_TANH: return (float)tanh(x);
    case KACT_SIGMOID: return (float)(1.0 / (1.0 + exp(-x)));
    default: return v;
    }
}

/* ---- argument checks and the work plan ---- */

static inline int sg_active(const ksgmv *s, int i) { return s->rank[i] > 0 && s->a[i] && s->b[i]; }

static inline int sg_rows(const ksgmv *s, int i) { return s->seg_start[i + 1] - s->seg_start[i]; }

/* Checks the segment table; *any: some active segment has rows (the op has work). */
static int sg_check(const ksgmv *s, int ld_t, int *any) {
    *any = 0;
    if (!s || s->n_segs < 0 || ld_t < 0) return PEFTD_EINVAL;
    if (s->n_segs == 0) return 0;
    if (!s->seg_start || !s->a || !s->b || !s->rank || !kcpu__dtype_ok(s->dtype)) return PEFTD_EINVAL;
    if (s->seg_start[0] < 0) return PEFTD_EINVAL;
    for (int i = 0; i < s->n_segs; i++) {
        if (s->seg_start[i + 1] < s->seg_start[i] || s->rank[i] < 0) return PEFTD_EINVAL;
        if (s->act && (s->act[i] < KACT_NONE || s->act[i] > KACT_SIGMOID)) return PEFTD_EINVAL;
        if (!sg_active(s, i)) continue;
        if (s->rank[i] > ld_t) return PEFTD_EINVAL;
        if (sg_rows(s, i) > 0) *any = 1;
    }
    return 0;
}

/* One piece of work: segment seg, weight chunk [k0, k1) (A rows for shrink, outputs for
 * expand), batch rows [r0, r1); the chunk's weights are the wlen contiguous bytes at w.
 * A work item handed to the pool is a run of consecutive pieces (sg_plan's groups). */
typedef struct {
    int32_t seg, k0, k1, r0, r1;
    const char *w;
    size_t wlen;
} sg_task;

/* Prefetches (into L2) bytes [pos, pos + bytes) of the weight stream formed by the
 * chunks of pieces tk, tk + 1, ... < end laid end to end: a work item's pieces are
 * separate matrices (one per adapter in a decode batch, 12-65 KB each), and without
 * this every one of them would start cold (thousands per decode step). */
static inline void sg_prefetch_ahead(const sg_task *tk, const sg_task *end, size_t pos, size_t bytes) {
    while (bytes > 0 && tk < end) {
        if (pos >= tk->wlen) {
            pos -= tk->wlen;
            tk++;
            continue;
        }
        size_t n = tk->wlen - pos < bytes ? tk->wlen - pos : bytes;
        sg_prefetch(tk->w + pos, n);
        pos += n;
        bytes -= n;
    }
}

/* Splits the active, non-empty segments into work items. span(i) is the chunked
 * dimension (rank_i for shrink, out_dim for expand), cut in multiples of `unit`;
 * each segment's weights are rank_i × dim elements. Returns the item count or a
 * negative status; *out is malloc'ed (caller frees); *work = multiply-adds. */
static int sg_plan(const ksgmv *s, int n_threads, int64_t dim, int expand, int unit, sg_task **out,
                   int32_t **groups, int *n_groups, double *work) {
    size_t esz = kdtype_size(s->dtype);
    double total = 0;
    *work = 0;
    for (int i = 0; i < s->n_segs; i++)
        if (sg_active(s, i) && sg_rows(s, i) > 0) {
            total += (double)s->rank[i] * (double)dim * (double)esz;
            *work += (double)s->rank[i] * (double)dim * sg_rows(s, i);
        }
    double target = total / ((double)n_threads * SG_TASKS_PER_THREAD);
    if (target < SG_MIN_TASK_BYTES) target = SG_MIN_TASK_BYTES;
    if (n_threads == 1) target = total + 1;
    /* Two passes: count, then fill. */
    sg_task *tasks = NULL;
    int64_t n = 0;
    for (int pass = 0; pass < 2; pass++) {
        n = 0;
        for (int i = 0; i < s->n_segs; i++) {
            int rows = sg_rows(s, i);
            if (!sg_active(s, i) || rows <= 0) continue;
            int64_t span = expand ? dim : s->rank[i];
            int64_t n_units = (span + unit - 1) / unit;
            double bytes = (double)s->rank[i] * (double)dim * (double)esz;
            int64_t nk = (int64_t)ceil(bytes / target);
            if (nk < 1) nk = 1;
            if (nk > n_units) nk = n_units;
            int64_t per = (n_units + nk - 1) / nk * unit;
            for (int64_t k = 0; k < span; k += per)
                for (int r = 0; r < rows; r += SG_ROWS_PER_TASK) {
                    if (pass == 1) {
                        int32_t r0 = s->seg_start[i] + r;
                        int64_t k1 = k + per < span ? k + per : span;
                        /* A rows [k, k1) of in_dim each, or B rows (outputs) of rank each:
                         * contiguous either way. */
                        size_t row_bytes = (size_t)(expand ? s->rank[i] : dim) * esz;
                        tasks[n] = (sg_task){.seg = i,
                                             .k0 = (int32_t)k,
                                             .k1 = (int32_t)k1,
                                             .r0 = r0,
                                             .r1 = r0 + (rows - r < SG_ROWS_PER_TASK ? rows - r : SG_ROWS_PER_TASK),
                                             .w = (const char *)(expand ? s->b[i] : s->a[i]) + (size_t)k * row_bytes,
                                             .wlen = (size_t)(k1 - k) * row_bytes};
                    }
                    n++;
                }
        }
        if (n > INT32_MAX) return PEFTD_EUNSUPPORTED;
        if (pass == 0 && !(tasks = malloc((size_t)(n ? n : 1) * sizeof *tasks))) return PEFTD_ENOMEM;
    }
    /* Work items: runs of consecutive pieces of about `target` bytes, so a decode batch's
     * one-row segments (one small matrix each) are streamed back to back by one thread,
     * its prefetch running from one matrix into the next. Which thread computes a piece
     * never changes its arithmetic. groups[g] is item g's first piece; groups[n_groups]
     * = n. */
    int32_t *g = malloc((size_t)(n + 1) * sizeof *g);
    if (!g) {
        free(tasks);
        return PEFTD_ENOMEM;
    }
    int ng = 0;
    double acc = 0;
    for (int64_t t = 0; t < n; t++) {
        if (t == 0 || acc >= target) {
            g[ng++] = (int32_t)t;
            acc = 0;
        }
        acc += (double)tasks[t].wlen;
    }
    g[ng] = (int32_t)n;
    *out = tasks;
    *groups = g;
    *n_groups = ng;
    return (int)n;
}

/* Plans the work items of one op (sg_plan's arguments), points the op's context at them
 * (*tasks, *groups: fields of ctx) and runs fn over the items on the pool. */
static int sg_run(kcpu_backend *cb, const ksgmv *s, int64_t dim, int expand, int unit, kpool_fn fn,
                  void *ctx, const sg_task **tasks, const int32_t **groups) {
    sg_task *tk;
    int32_t *g;
    int n_groups;
    double work;
    int n = sg_plan(s, cb->n_threads, dim, expand, unit, &tk, &g, &n_groups, &work);
    if (n < 0) return n;
    *tasks = tk;
    *groups = g;
    kcpu__parallel(cb, n_groups, work, fn, ctx);
    free(g);
    free(tk);
    return 0;
}

/* ---- shrink ---- */

/* sums[i][r] = dot(A row r, x row i) for r < R, i < N (R, N, dt compile-time in every
 * instantiation, so the accumulators stay in registers). a: first A row of the tile;
 * pf: where to prefetch the tile's rows from (NULL: none). */
static inline __attribute__((always_inline)) void sh_tile(kdtype dt, int R, int N, const void *a, const char *pf,
                                                          int64_t in, const float *x, int64_t ldx,
                                                          float sums[SH_NR][SH_MR]) {
    kv_f32 acc[DT_MR][DT_NR];
    dt_tile(dt, R, N, a, pf, in, x, ldx, acc);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) sums[i][r] = kv_hsum(acc[r][i]);
}

typedef void (*sh_tile_fn)(const void *a, const char *pf, int64_t in, const float *x, int64_t ldx,
                           float sums[SH_NR][SH_MR]);

#define SH_DEF(TAG, DT, R, N)                                                                                 \
    static void sh_tile_##TAG##_##R##_##N(const void *a, const char *pf, int64_t in, const float *x,        \
                                          int64_t ldx, float sums[SH_NR][SH_MR]) {                           \
        sh_tile(DT, R, N, a, pf, in, x, ldx, sums);                                                          \
    }
#define SH_DEF3(R, N) SH_DEF(f32, KDT_F32, R, N) SH_DEF(f16, KDT_F16, R, N) SH_DEF(bf16, KDT_BF16, R, N)
SH_DEF3(4, 1)
SH_DEF3(4, 2)
SH_DEF3(1, 1)
SH_DEF3(1, 2)
#if SH_NR == 4
SH_DEF3(4, 3)
SH_DEF3(4, 4)
SH_DEF3(1, 3)
SH_DEF3(1, 4)
#define SH_ROW(TAG, R) {sh_tile_##TAG##_##R##_1, sh_tile_##TAG##_##R##_2, sh_tile_##TAG##_##R##_3, sh_tile_##TAG##_##R##_4}
#else
#define SH_ROW(TAG, R) {sh_tile_##TAG##_##R##_1, sh_tile_##TAG##_##R##_2}
#endif

/* [dtype][0: SH_MR A rows, 1: one A row][N - 1] */
static const sh_tile_fn sh_tiles[3][2][SH_NR] = {
    {SH_ROW(f32, 4), SH_ROW(f32, 1)},
    {SH_ROW(f16, 4), SH_ROW(f16, 1)},
    {SH_ROW(bf16, 4), SH_ROW(bf16, 1)},
};

typedef struct {
    const float *x;
    int64_t in;
    const ksgmv *s;
    float *t;
    int64_t ld_t;
    const sg_task *tasks;
    const int32_t *groups;
} sh_ctx;

/* One piece; pieces tk + 1 .. end follow it in the same work item. */
static void sh_piece(const sh_ctx *c, const sg_task *tk, const sg_task *end) {
    const ksgmv *s = c->s;
    int i = tk->seg;
    int64_t in = c->in;
    size_t esz = kdtype_size(s->dtype);
    const char *a = s->a[i];
    const float *bias = s->bias_a ? s->bias_a[i] : NULL;
    int act = s->act ? s->act[i] : KACT_NONE;
    for (int k = tk->k0; k < tk->k1;) {
        int tall = tk->k1 - k >= SH_MR;
        int R = tall ? SH_MR : 1;
        const sh_tile_fn *fns = sh_tiles[s->dtype][tall ? 0 : 1];
        size_t off = (size_t)k * (size_t)in * esz, tb = (size_t)R * (size_t)in * esz;
        size_t pos = off - (size_t)tk->k0 * (size_t)in * esz; /* in this piece's chunk */
        /* The first x group streams the tile's rows from DRAM and prefetches the
         * same-shaped region SG_PF_BYTES further on, interleaved with its loads, when
         * that region is still in this chunk; otherwise it is prefetched here, from
         * wherever it falls in the item's next pieces. */
        const char *pf = NULL;
        if (pos + SG_PF_BYTES + tb <= tk->wlen) pf = a + off + SG_PF_BYTES;
        else sg_prefetch_ahead(tk, end, pos + SG_PF_BYTES, tb);
        for (int r = tk->r0; r < tk->r1;) {
            int N = tk->r1 - r < SH_NR ? tk->r1 - r : SH_NR;
            float sums[SH_NR][SH_MR];
            fns[N - 1](a + off, r == tk->r0 ? pf : NULL, in, c->x + (int64_t)r * in, in, sums);
            for (int n = 0; n < N; n++) {
                float *tr = c->t + (int64_t)(r + n) * c->ld_t + k;
                for (int q = 0; q < R; q++) {
                    float v = bias ? sums[n][q] + bias[k + q] : sums[n][q];
                    tr[q] = act == KACT_NONE ? v : sg_act(act, v);
                }
            }
            r += N;
        }
        k += R;
    }
}

static void sh_task(void *vc, int item, int thread) {
    (void)thread;
    const sh_ctx *c = vc;
    const sg_task *tk = c->tasks + c->groups[item], *end = c->tasks + c->groups[item + 1];
    sg_prefetch_ahead(tk, end, 0, SG_PF_BYTES); /* the item's first matrix starts cold */
    for (; tk < end; tk++) sh_piece(c, tk, end);
}

int kcpu__sgmv_shrink(kbackend *kb, const float *x, int in_dim, const ksgmv *s, float *t, int ld_t) {
    int any, rc;
    if (in_dim <= 0) return PEFTD_EINVAL;
    if ((rc = sg_check(s, ld_t, &any)) != 0) return rc;
    if (!any) return 0;
    if (!x || !t) return PEFTD_EINVAL;
    sh_ctx c = {.x = x, .in = in_dim, .s = s, .t = t, .ld_t = ld_t};
    return sg_run(kcpu__impl(kb), s, in_dim, 0, SH_MR, sh_task, &c, &c.tasks, &c.groups);
}

/* ---- expand ---- */

/* Lane jj < jn of the result = dot(t[0:R], B row jj) over the block's rows b (row-major,
 * R elements each); lanes >= jn are 0. Rank is vectorised: one accumulator per output. */
static inline __attribute__((always_inline)) kv_f32 ex_block(kdtype dt, const void *b, int R, int jn,
                                                             const float *t) {
    kv_f32 acc[EX_JB];
#pragma GCC unroll 16
    for (int jj = 0; jj < EX_JB; jj++) acc[jj] = kv_zero();
    int c = 0;
    for (; c + KV_W <= R; c += KV_W) {
        kv_f32 tv = kv_load(t + c);
#pragma GCC unroll 16
        for (int jj = 0; jj < EX_JB; jj++)
            if (jj < jn) acc[jj] = kv_fmadd(dt_load_w(dt, b, (int64_t)jj * R + c), tv, acc[jj]);
    }
    if (c < R) {
        int rem = R - c;
        kv_f32 tv = kv_load_part(t + c, rem);
#pragma GCC unroll 16
        for (int jj = 0; jj < EX_JB; jj++)
            if (jj < jn) acc[jj] = kv_fmadd(dt_load_w_part(dt, b, (int64_t)jj * R + c, rem), tv, acc[jj]);
    }
    return kv_hsum_each(acc);
}

typedef kv_f32 (*ex_block_fn)(const void *b, int R, int jn, const float *t);
static kv_f32 ex_block_f32(const void *b, int R, int jn, const float *t) { return ex_block(KDT_F32, b, R, jn, t); }
static kv_f32 ex_block_f16(const void *b, int R, int jn, const float *t) { return ex_block(KDT_F16, b, R, jn, t); }
static kv_f32 ex_block_bf16(const void *b, int R, int jn, const float *t) { return ex_block(KDT_BF16, b, R, jn, t); }
static const ex_block_fn ex_blocks[3] = {ex_block_f32, ex_block_f16, ex_block_bf16};

/* Segments of EX_T_MIN_ROWS rows or more, ranks up to EX_T_MAX_RANK: the block's B rows are
 * widened and transposed once (ex_bt: bt[c·KV_W + jj] = B row jj, element c; zeros for jj >= jn
 * and for c from rank up to its next multiple of KV_W), and each row then takes ex_row_t: lane
 * jj of p[l] = ex_block's accumulator jj, lane l (the same fma chain over c ≡ l mod KV_W, the
 * tail's zero lanes included), summed over l by kv_hsum_each's halving tree (l with l + W/2,
 * then W/4, ...). The same operations on the same values, so the same bits as ex_block; the
 * widening and the shuffles are paid once per block instead of once per row (sgmv_bench, one
 * segment of 32 rows, 768→2048 rank 16 bf16: see bench/README). */
#define EX_T_MIN_ROWS 2
#define EX_T_MAX_RANK 256

static inline __attribute__((always_inline)) void ex_bt(kdtype dt, const void *b, int R, int jn, float *bt) {
    for (int c = 0; c < R; c += KV_W) {
        const int rem = R - c < KV_W ? R - c : KV_W;
        kv_f32 v[KV_W];
#pragma GCC unroll 16
        for (int jj = 0; jj < KV_W; jj++)
            v[jj] = jj >= jn          ? kv_zero()
                    : rem == KV_W ? dt_load_w(dt, b, (int64_t)jj * R + c)
                                  : dt_load_w_part(dt, b, (int64_t)jj * R + c, rem);
        kv_transpose(v);
#pragma GCC unroll 16
        for (int l = 0; l < KV_W; l++) kv_store(bt + (int64_t)(c + l) * KV_W, v[l]);
    }
}

typedef void (*ex_bt_fn)(const void *b, int R, int jn, float *bt);
static void ex_bt_f32(const void *b, int R, int jn, float *bt) { ex_bt(KDT_F32, b, R, jn, bt); }
static void ex_bt_f16(const void *b, int R, int jn, float *bt) { ex_bt(KDT_F16, b, R, jn, bt); }
static void ex_bt_bf16(const void *b, int R, int jn, float *bt) { ex_bt(KDT_BF16, b, R, jn, bt); }
static const ex_bt_fn ex_bts[3] = {ex_bt_f32, ex_bt_f16, ex_bt_bf16};

/* One row against a transposed block (ex_bt): lane jj = ex_block's lane jj, bit for bit. */
static inline __attribute__((always_inline)) kv_f32 ex_row_t(const float *bt, int R, const float *t) {
    kv_f32 p[KV_W];
#pragma GCC unroll 16
    for (int l = 0; l < KV_W; l++) p[l] = kv_zero();
    int c = 0;
    for (; c + KV_W <= R; c += KV_W)
#pragma GCC unroll 16
        for (int l = 0; l < KV_W; l++) p[l] = kv_fmadd(kv_load(bt + (int64_t)(c + l) * KV_W), kv_set1(t[c + l]), p[l]);
    if (c < R) { /* ex_block's partial loads: lanes from rank on multiply 0 by 0 */
        const int rem = R - c;
#pragma GCC unroll 16
        for (int l = 0; l < KV_W; l++)
            p[l] = kv_fmadd(kv_load(bt + (int64_t)(c + l) * KV_W), kv_set1(l < rem ? t[c + l] : 0.0f), p[l]);
    }
#if KV_W >= 16
#pragma GCC unroll 8
    for (int l = 0; l < 8; l++) p[l] = kv_add(p[l], p[l + 8]);
#endif
#if KV_W >= 8
#pragma GCC unroll 4
    for (int l = 0; l < 4; l++) p[l] = kv_add(p[l], p[l + 4]);
#pragma GCC unroll 2
    for (int l = 0; l < 2; l++) p[l] = kv_add(p[l], p[l + 2]);
    p[0] = kv_add(p[0], p[1]);
#endif
    return p[0];
}

typedef struct {
    const float *t;
    int64_t ld_t;
    const ksgmv *s;
    int64_t out;
    float *y;
    const sg_task *tasks;
    const int32_t *groups;
} ex_ctx;

/* Block [j, j + jn) of piece tk: prefetches the item's stream of B chunks SG_PF_BYTES ahead and
 * returns the block's bias lanes (0 without a bias). */
static inline kv_f32 ex_block_start(const ex_ctx *c, const sg_task *tk, const sg_task *end, int j, int jn) {
    const ksgmv *s = c->s;
    const int R = s->rank[tk->seg];
    const size_t esz = kdtype_size(s->dtype), off = (size_t)j * (size_t)R * esz;
    sg_prefetch_ahead(tk, end, off - (size_t)tk->k0 * (size_t)R * esz + SG_PF_BYTES, (size_t)jn * (size_t)R * esz);
    const float *bias = s->bias_b ? s->bias_b[tk->seg] : NULL;
    if (!bias) return kv_zero();
    return jn == EX_JB ? kv_load(bias + j) : kv_load_part(bias + j, jn);
}

/* y[r, j + jj] += scale · d lane jj, jj < jn. */
static inline void ex_store(const ex_ctx *c, int r, int j, int jn, kv_f32 vscale, kv_f32 d) {
    float *yr = c->y + (int64_t)r * c->out + j;
    if (jn == EX_JB) kv_store(yr, kv_fmadd(vscale, d, kv_load(yr)));
    else kv_store_part(yr, kv_fmadd(vscale, d, kv_load_part(yr, jn)), jn);
}

/* One piece; pieces tk + 1 .. end follow it in the same work item. A piece of EX_T_MIN_ROWS rows
 * or more (rank up to EX_T_MAX_RANK) transposes each block once (ex_bt) and gives every row
 * ex_row_t; fewer rows take ex_block per row: the same bits either way. */
static void ex_piece(const ex_ctx *c, const sg_task *tk, const sg_task *end) {
    const ksgmv *s = c->s;
    const int R = s->rank[tk->seg];
    const bool shared = tk->r1 - tk->r0 >= EX_T_MIN_ROWS && R <= EX_T_MAX_RANK;
    const char *b = s->b[tk->seg];
    const kv_f32 vscale = kv_set1(s->scale[tk->seg]);
    const ex_block_fn blk = ex_blocks[s->dtype];
    const ex_bt_fn bt_fn = ex_bts[s->dtype];
    _Alignas(64) float bt[EX_T_MAX_RANK * KV_W];
    for (int j = tk->k0; j < tk->k1; j += EX_JB) {
        const int jn = tk->k1 - j < EX_JB ? tk->k1 - j : EX_JB;
        const kv_f32 bv = ex_block_start(c, tk, end, j, jn);
        const char *bj = b + (size_t)j * (size_t)R * kdtype_size(s->dtype);
        const float *t0 = c->t + (int64_t)tk->r0 * c->ld_t;
        if (shared) {
            bt_fn(bj, R, jn, bt);
            for (int r = tk->r0; r < tk->r1; r++, t0 += c->ld_t) ex_store(c, r, j, jn, vscale, kv_add(ex_row_t(bt, R, t0), bv));
        } else {
            for (int r = tk->r0; r < tk->r1; r++, t0 += c->ld_t) ex_store(c, r, j, jn, vscale, kv_add(blk(bj, R, jn, t0), bv));
        }
    }
}

static void ex_task(void *vc, int item, int thread) {
    (void)thread;
    const ex_ctx *c = vc;
    const sg_task *tk = c->tasks + c->groups[item], *end = c->tasks + c->groups[item + 1];
    sg_prefetch_ahead(tk, end, 0, SG_PF_BYTES); /* the item's first matrix starts cold */
    for (; tk < end; tk++) ex_piece(c, tk, end);
}

int kcpu__sgmv_expand(kbackend *kb, const float *t, int ld_t, const ksgmv *s, int out_dim, float *y) {
    int any, rc;
    if (out_dim <= 0) return PEFTD_EINVAL;
    if ((rc = sg_check(s, ld_t, &any)) != 0) return rc;
    if (!any) return 0;
    if (!t || !y || !s->scale) return PEFTD_EINVAL;
    ex_ctx c = {.t = t, .ld_t = ld_t, .s = s, .out = out_dim, .y = y};
    return sg_run(kcpu__impl(kb), s, out_dim, 1, EX_JB, ex_task, &c, &c.tasks, &c.groups);
}

/* ---- seg_scale ---- */

typedef struct {
    float *y;
    int64_t dim;
    const int32_t *seg_start;
    const float *const *v;
    int n_segs;
    int64_t rows_per_task;
    int64_t r_begin, r_end; /* rows covered by the segments */
} ss_ctx;

static void ss_task(void *vc, int task, int thread) {
    (void)thread;
    const ss_ctx *c = vc;
    int64_t r0 = c->r_begin + (int64_t)task * c->rows_per_task;
    int64_t r1 = r0 + c->rows_per_task < c->r_end ? r0 + c->rows_per_task : c->r_end;
    /* First segment ending after r0 (segments are sorted; empty ones are skipped). */
    int lo = 0, hi = c->n_segs;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (c->seg_start[mid + 1] <= r0) lo = mid + 1;
        else hi = mid;
    }
    for (int i = lo; i < c->n_segs && c->seg_start[i] < r1; i++) {
        const float *v = c->v[i];
        if (!v) continue;
        int64_t a = c->seg_start[i] > r0 ? c->seg_start[i] : r0;
        int64_t e = c->seg_start[i + 1] < r1 ? c->seg_start[i + 1] : r1;
        for (int64_t r = a; r < e; r++) {
            float *yr = c->y + r * c->dim;
            int64_t j = 0;
            for (; j + KV_W <= c->dim; j += KV_W) kv_store(yr + j, kv_mul(kv_load(yr + j), kv_load(v + j)));
            if (j < c->dim) {
                int rem = (int)(c->dim - j);
                kv_store_part(yr + j, kv_mul(kv_load_part(yr + j, rem), kv_load_part(v + j, rem)), rem);
            }
        }
    }
}

int kcpu__seg_scale(kbackend *kb, float *y, int dim, int n_segs, const int32_t *seg_start,
                    const float *const *v) {
    if (dim <= 0 || n_segs < 0) return PEFTD_EINVAL;
    if (n_segs == 0) return 0;
    if (!seg_start || !v || seg_start[0] < 0) return PEFTD_EINVAL;
    int any = 0;
    for (int i = 0; i < n_segs; i++) {
        if (seg_start[i + 1] < seg_start[i]) return PEFTD_EINVAL;
        any |= v[i] && seg_start[i + 1] > seg_start[i];
    }
    if (!any) return 0;
    if (!y) return PEFTD_EINVAL;
    ss_ctx c = {.y = y, .dim = dim, .seg_start = seg_start, .v = v, .n_segs = n_segs,
                .r_begin = seg_start[0], .r_end = seg_start[n_segs]};
    c.rows_per_task = SS_CHUNK / dim > 0 ? SS_CHUNK / dim : 1;
    int64_t rows = c.r_end - c.r_begin;
    int n_tasks = (int)((rows + c.rows_per_task - 1) / c.rows_per_task);
    kcpu__parallel(kcpu__impl(kb), n_tasks, (double)rows * dim, ss_task, &c);
    return 0;
}
