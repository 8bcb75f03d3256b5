/* kernels/cpu/matmul.c — y[n, rows] = beta*y + x[n, cols] · wᵀ for f32/f16/bf16 w.
 *
 * Work is split over blocks of output rows (weight rows) across the pool. Two
 * paths per block:
 *   - register tiles (decode, small n): MM_MR weight rows × MM_NR x rows held as
 *     MM_MR*MM_NR vector accumulators; weights are widened to f32 in registers,
 *     x stays f32. A tile's weight rows are read from DRAM once (software-
 *     prefetched into L2 ahead of use) and served from L1 to the following x
 *     groups, so DRAM traffic is one pass over w per call whatever n.
 *       f32 : plain loads.  f16 : vcvtph2ps.  bf16 : zero-extend to 32 bits
 *       and shift left by 16 (exact). At n >= 8 the tiles are FMA-bound
 *       (~35-40 GFMA/s per Zen 4 core, its 1 zmm FMA/cycle), so cheaper bf16
 *       widening (even/odd lanes by shift/and on a repacked x) measured no gain
 *       and was dropped.
 *   - OpenBLAS sgemm (f32, n >= MM_BLAS_MIN_N, where its packed GEMM wins by
 *     5-15%), only when the backend was told kbackend_cpu_set_fast_prefill():
 *     sgemm sums in another order than the tiles, so a row's result would depend
 *     on how many rows share the call and a greedy request could answer
 *     differently under load. By default every row goes through the tiles,
 *     whose per-row summation order is fixed: outputs are batch-invariant.
 *     Called single-threaded on the block's rows inside the pool's tasks.
 *     For f16/bf16 the tiles won at every n measured (up to 256) against
 *     widening to f32 panels + sgemm, so they never use BLAS.
 * Quantized weights (Q8_0, Q4_K) go to qmatmul.c.
 * Column tails use masked/partial loads, so any cols >= 1 works. y must not
 * overlap x or w.
 */
#include <cblas.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/dot_tile.h"
#include "kernels/cpu/mm_job.h"
#include "kernels/cpu/simd.h"

/* Tile shape (dot_tile.h): 4 weight rows × 6 x rows. 6 x rows rather than 4 cut the
 * weight loads (and widenings) per FMA: measured 1 thread, 2048×768 f32, n = 32: 1.27
 * vs 1.52 ms. */
#define MM_MR DT_MR
#define MM_NR DT_NR

/* Software prefetch distance, bytes ahead in the (contiguous) weight stream,
 * into L2. Measured on the target (EPYC Zen 4, 1 thread, 2048×768, n=1): no
 * prefetch 14 GB/s f32 / 11 GB/s bf16; 4 KiB 18/16; 16-32 KiB 23/26; 128 KiB
 * 22/21. The hardware prefetcher alone does not keep 4 interleaved row streams
 * busy; an L1 hint (T0) was no better than none. */
#define MM_PF_BYTES 16384

/* Weight rows per task: a few tasks per thread so a thread slowed by other
 * processes on the machine is covered by the others (the group runs them as
 * kpool_parallel_shares: a thread's own tasks in order, then the others' last). */
#define MM_TASKS_PER_THREAD 4

/* Minimum rows per task: below ~16 rows the per-task overhead (an atomic and a
 * function call, ~50 ns) starts to show against a 16×768 GEMV slice (~1 us). */
#define MM_MIN_BLOCK 16

/* n from which OpenBLAS sgemm replaces the register tiles for f32 weights:
 * measured (bench/README.md, 2 threads) the 4×6 tiles win at n <= 64 and sgemm
 * is mostly 5-15% faster from n = 128; the crossover lies in between. */
#define MM_BLAS_MIN_N 96

kcpu_mm_path kcpu__mm_path = KCPU_MM_AUTO;

/* w: first weight row of the tile; pf: where to prefetch (NULL: none); cols:
 * weight row length; x: first x row, rows ldx apart; y: y[i0, r0], rows ldy apart. */
typedef void (*mm_tile_fn)(const void *w, const char *pf, int64_t cols, const float *x, int64_t ldx, float *y,
                           int64_t ldy, float beta);

static inline __attribute__((always_inline)) void mm_store(int R, int N, kv_f32 acc[MM_MR][MM_NR], float *y,
                                                           int64_t ldy, float beta) {
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < N; i++) {
            float s = kv_hsum(acc[r][i]);
            float *yp = y + i * ldy + r;
            /* beta == 0 must overwrite y (it may hold NaN/garbage), never scale it. */
            *yp = beta != 0.0f ? *yp + s : s;
        }
}

/* y[i*ldy + r] (+)= dot(w row r, x row i) for r < R, i < N. R, N, dt are
 * compile-time constants in each instantiation below, so the accumulator
 * arrays live in registers. */
static inline __attribute__((always_inline)) void mm_tile(kdtype dt, int R, int N, const void *w, const char *pf,
                                                          int64_t cols, const float *x, int64_t ldx, float *y,
                                                          int64_t ldy, float beta) {
    kv_f32 acc[MM_MR][MM_NR];
    dt_tile(dt, R, N, w, pf, cols, x, ldx, acc);
    mm_store(R, N, acc, y, ldy, beta);
}

#define MM_TILE_DEF(TAG, CALL, R, N)                                                                          \
    static void mm_tile_##TAG##_##R##_##N(const void *w, const char *pf, int64_t cols, const float *x,      \
                                          int64_t ldx, float *y, int64_t ldy, float beta) {                 \
        CALL;                                                                                                \
    }
#define MM_TILE_DEF3(R, N)                                                                                    \
    MM_TILE_DEF(f32, mm_tile(KDT_F32, R, N, w, pf, cols, x, ldx, y, ldy, beta), R, N)                       \
    MM_TILE_DEF(f16, mm_tile(KDT_F16, R, N, w, pf, cols, x, ldx, y, ldy, beta), R, N)                       \
    MM_TILE_DEF(bf16, mm_tile(KDT_BF16, R, N, w, pf, cols, x, ldx, y, ldy, beta), R, N)
MM_TILE_DEF3(4, 1)
MM_TILE_DEF3(4, 2)
MM_TILE_DEF3(1, 1)
MM_TILE_DEF3(1, 2)
#if MM_NR == 6
MM_TILE_DEF3(4, 3)
MM_TILE_DEF3(4, 4)
MM_TILE_DEF3(4, 5)
MM_TILE_DEF3(4, 6)
MM_TILE_DEF3(1, 3)
MM_TILE_DEF3(1, 4)
MM_TILE_DEF3(1, 5)
MM_TILE_DEF3(1, 6)
#define MM_TILE_ROW(TAG, R)                                                                                       \
    {mm_tile_##TAG##_##R##_1, mm_tile_##TAG##_##R##_2, mm_tile_##TAG##_##R##_3,                                   \
     mm_tile_##TAG##_##R##_4, mm_tile_##TAG##_##R##_5, mm_tile_##TAG##_##R##_6}
#else
#define MM_TILE_ROW(TAG, R) {mm_tile_##TAG##_##R##_1, mm_tile_##TAG##_##R##_2}
#endif

/* [dtype][0: MM_MR rows, 1: one row][N-1] */
static const mm_tile_fn mm_tiles[3][2][MM_NR] = {
    {MM_TILE_ROW(f32, 4), MM_TILE_ROW(f32, 1)},
    {MM_TILE_ROW(f16, 4), MM_TILE_ROW(f16, 1)},
    {MM_TILE_ROW(bf16, 4), MM_TILE_ROW(bf16, 1)},
};

static void mm_rows_tiles(const kcpu_mm_ctx *c, int64_t r0, int64_t r1) {
    const kmat *w = c->w;
    int64_t cols = w->cols, rows = w->rows;
    size_t esz = kdtype_size(w->dtype);
    const char *wd = w->data;
    size_t wbytes = (size_t)(rows * cols) * esz;
    for (int64_t r = r0; r < r1;) {
        int tall = r1 - r >= MM_MR;
        int R = tall ? MM_MR : 1;
        const mm_tile_fn *fns = mm_tiles[w->dtype][tall ? 0 : 1];
        size_t off = (size_t)(r * cols) * esz;
        /* Only the first x group streams the rows from DRAM; it prefetches the
         * same-shaped region MM_PF_BYTES further on (inside the matrix). */
        const char *pf = off + (size_t)(R * cols) * esz + MM_PF_BYTES <= wbytes ? wd + off + MM_PF_BYTES : NULL;
        for (int i = 0; i < c->n; i += MM_NR) {
            int N = c->n - i < MM_NR ? c->n - i : MM_NR;
            fns[N - 1](wd + off, i == 0 ? pf : NULL, cols, c->x + i * c->ldx, c->ldx, c->y + (int64_t)i * rows + r,
                       rows, c->beta);
        }
        r += R;
    }
}

static void mm_rows_blas(const kcpu_mm_ctx *c, int64_t r0, int64_t r1) {
    const kmat *w = c->w;
    int cols = (int)w->cols;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->n, (int)(r1 - r0), cols, 1.0f, c->x, cols,
                (const float *)w->data + r0 * cols, cols, c->beta, c->y + r0, (int)w->rows);
}

static void mm_task(void *vc, int task, int thread) {
    (void)thread;
    const kcpu_mm_ctx *c = vc;
    int64_t r0 = (int64_t)task * c->block;
    int64_t r1 = r0 + c->block < c->w->rows ? r0 + c->block : c->w->rows;
    if (c->use_blas) mm_rows_blas(c, r0, r1);
    else mm_rows_tiles(c, r0, r1);
}


int kcpu__mm_prepare(kcpu_backend *cb, const float *x, int n, const kmat *w, float *y, float beta, kcpu_mm_job *job) {
    if (w && kdtype_is_quant(w->dtype)) return kcpu__qmm_prepare(cb, n, w, y, beta, job); /* qmatmul.c */
    if (!w || n < 0 || (beta != 0.0f && beta != 1.0f)) return PEFTD_EINVAL;
    if (!kcpu__dtype_ok(w->dtype) || w->rows <= 0 || w->cols <= 0) return PEFTD_EINVAL;
    /* BLAS takes int dimensions and strides. */
    if (w->rows > INT32_MAX || w->cols > INT32_MAX) return PEFTD_EUNSUPPORTED;
    *job = (kcpu_mm_job){0};
    if (n == 0) return 0;
    if (!x || !y || !w->data) return PEFTD_EINVAL;

    kcpu_mm_ctx c = {.x = x, .ldx = w->cols, .n = n, .w = w, .y = y, .beta = beta};
    if (w->dtype == KDT_F32)
        c.use_blas = kcpu__mm_path == KCPU_MM_AUTO ? cb->fast_prefill && n >= MM_BLAS_MIN_N
                                                   : kcpu__mm_path == KCPU_MM_BLAS;
    int nt = cb->n_threads;
    int64_t block = w->rows;
    if (nt > 1) {
        int64_t want = (w->rows + (int64_t)nt * MM_TASKS_PER_THREAD - 1) / ((int64_t)nt * MM_TASKS_PER_THREAD);
        if (want < MM_MIN_BLOCK) want = MM_MIN_BLOCK;
        block = (want + MM_MR - 1) / MM_MR * MM_MR;
    }
    c.block = block;
    job->mm = c;
    job->task = mm_task;
    job->n_tasks = (int)((w->rows + block - 1) / block);
    job->work = (double)n * (double)w->rows * (double)w->cols;
    return 0;
}
