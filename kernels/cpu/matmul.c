/* kernels/cpu/matmul.c — y[n, rows] = beta*y + x[n, cols] · wᵀ for f32/f16/bf16 w.
 *
 * Work is split over blocks of output rows (weight rows) across the pool. Two
 * paths per block:
 *   - register tiles (decode, small n): MM_MR weight rows × MM_NR x rows held as
 *     MM_MR*MM_NR vector accumulators; weights are widened to f32 in registers
 *     (bf16 by a 16-bit shift, f16 by vcvtph2ps), x stays f32. The MM_MR weight
 *     rows of a tile are read from memory once and then served from L1/L2 to the
 *     following x groups, so DRAM traffic is one pass over w per call whatever n.
 *   - OpenBLAS sgemm (larger n, where its packed GEMM wins): called single-
 *     threaded on the block's rows; f16/bf16 blocks are first widened to f32
 *     into a per-thread panel (cost amortised over the n rows).
 * Column tails use masked/partial loads, so any cols >= 1 works.
 */
#include <cblas.h>
#include <math.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/simd.h"

/* Tile shape: 4 weight rows × 4 x rows = 16 accumulators + 4 weight vectors +
 * 1 x vector = 21 of the 32 zmm. AVX2 has 16 ymm: 4×2 + 4 + 1 = 13 fit. */
#define MM_MR 4
#if KV_W == 16
#define MM_NR 4
#else
#define MM_NR 2
#endif

/* Weight rows per task: a few tasks per thread so a thread slowed by other
 * processes on the machine is covered by the others (dynamic scheduling). */
#define MM_TASKS_PER_THREAD 4

/* Minimum rows per task: below ~16 rows the per-task overhead (an atomic and a
 * function call, ~50 ns) starts to show against a 16×768 GEMV slice (~1 us). */
#define MM_MIN_BLOCK 16

/* n from which OpenBLAS sgemm replaces the register tiles. Measured with
 * bench/kernels_bench.c (see bench/README.md): below it the tiles are faster. */
#define MM_BLAS_MIN_N_F32 24
#define MM_BLAS_MIN_N_HALF 48

/* Widened f16/bf16 panel for the sgemm path: at most this many floats (256 KiB)
 * so it stays in L2 (1 MiB/core on the target) while sgemm packs it. */
#define MM_PANEL_FLOATS 65536

typedef void (*mm_tile_fn)(const void *w, int64_t cols, const float *x, float *y, int64_t ldy,
                           float beta);

static inline __attribute__((always_inline)) kv_f32 mm_load_w(kdtype dt, const void *w, int64_t off) {
    if (dt == KDT_F32) return kv_load((const float *)w + off);
    if (dt == KDT_F16) return kv_load_f16((const uint16_t *)w + off);
    return kv_load_bf16((const uint16_t *)w + off);
}

static inline __attribute__((always_inline)) kv_f32 mm_load_w_part(kdtype dt, const void *w, int64_t off,
                                                                   int n) {
    if (dt == KDT_F32) return kv_load_part((const float *)w + off, n);
    if (dt == KDT_F16) return kv_load_f16_part((const uint16_t *)w + off, n);
    return kv_load_bf16_part((const uint16_t *)w + off, n);
}

/* y[i*ldy + r] (+)= dot(w row r, x row i) for r < R, i < N; w and x rows are
 * `cols` long and contiguous. R, N, dt are compile-time constants in each
 * instantiation below, so the accumulator arrays live in registers. */
static inline __attribute__((always_inline)) void mm_tile(kdtype dt, int R, int N, const void *w,
                                                          int64_t cols, const float *x, float *y,
                                                          int64_t ldy, float beta) {
    kv_f32 acc[MM_MR][MM_NR];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < N; i++) acc[r][i] = kv_zero();
    int64_t k = 0;
    for (; k + KV_W <= cols; k += KV_W) {
        kv_f32 wv[MM_MR];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = mm_load_w(dt, w, r * cols + k);
#pragma GCC unroll 8
        for (int i = 0; i < N; i++) {
            kv_f32 xv = kv_load(x + i * cols + k);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][i] = kv_fmadd(wv[r], xv, acc[r][i]);
        }
    }
    if (k < cols) {
        int rem = (int)(cols - k);
        kv_f32 wv[MM_MR];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = mm_load_w_part(dt, w, r * cols + k, rem);
#pragma GCC unroll 8
        for (int i = 0; i < N; i++) {
            kv_f32 xv = kv_load_part(x + i * cols + k, rem);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][i] = kv_fmadd(wv[r], xv, acc[r][i]);
        }
    }
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

#define MM_TILE_DEF(DT, TAG, R, N)                                                               \
    static void mm_tile_##TAG##_##R##_##N(const void *w, int64_t cols, const float *x, float *y, \
                                          int64_t ldy, float beta) {                             \
        mm_tile(DT, R, N, w, cols, x, y, ldy, beta);                                             \
    }
#if MM_NR == 4
#define MM_TILE_DEFS(DT, TAG, R)                                                                 \
    MM_TILE_DEF(DT, TAG, R, 1) MM_TILE_DEF(DT, TAG, R, 2) MM_TILE_DEF(DT, TAG, R, 3)             \
    MM_TILE_DEF(DT, TAG, R, 4)
#define MM_TILE_ROW(TAG, R) {mm_tile_##TAG##_##R##_1, mm_tile_##TAG##_##R##_2, mm_tile_##TAG##_##R##_3, mm_tile_##TAG##_##R##_4}
#else
#define MM_TILE_DEFS(DT, TAG, R) MM_TILE_DEF(DT, TAG, R, 1) MM_TILE_DEF(DT, TAG, R, 2)
#define MM_TILE_ROW(TAG, R) {mm_tile_##TAG##_##R##_1, mm_tile_##TAG##_##R##_2}
#endif
MM_TILE_DEFS(KDT_F32, f32, 4)
MM_TILE_DEFS(KDT_F32, f32, 1)
MM_TILE_DEFS(KDT_F16, f16, 4)
MM_TILE_DEFS(KDT_F16, f16, 1)
MM_TILE_DEFS(KDT_BF16, bf16, 4)
MM_TILE_DEFS(KDT_BF16, bf16, 1)

/* [dtype][0: MM_MR rows, 1: one row][N-1] */
static const mm_tile_fn mm_tiles[3][2][MM_NR] = {
    {MM_TILE_ROW(f32, 4), MM_TILE_ROW(f32, 1)},
    {MM_TILE_ROW(f16, 4), MM_TILE_ROW(f16, 1)},
    {MM_TILE_ROW(bf16, 4), MM_TILE_ROW(bf16, 1)},
};

typedef struct {
    kcpu_backend *cb;
    const float *x;
    int n;
    const kmat *w;
    float *y;
    float beta;
    int64_t block; /* weight rows per task */
    int use_blas;
    int64_t panel_rows;
} mm_ctx;

static void mm_rows_tiles(const mm_ctx *c, int64_t r0, int64_t r1) {
    const kmat *w = c->w;
    int64_t cols = w->cols, rows = w->rows;
    size_t esz = kdtype_size(w->dtype);
    const char *wd = w->data;
    for (int64_t r = r0; r < r1;) {
        int tall = r1 - r >= MM_MR;
        int R = tall ? MM_MR : 1;
        const mm_tile_fn *row = mm_tiles[w->dtype][tall ? 0 : 1];
        for (int i = 0; i < c->n; i += MM_NR) {
            int N = c->n - i < MM_NR ? c->n - i : MM_NR;
            row[N - 1](wd + (size_t)(r * cols) * esz, cols, c->x + (int64_t)i * cols, c->y + (int64_t)i * rows + r,
                       rows, c->beta);
        }
        r += R;
    }
}

static void mm_rows_blas(const mm_ctx *c, int64_t r0, int64_t r1, int thread) {
    const kmat *w = c->w;
    int64_t cols = w->cols, rows = w->rows;
    if (w->dtype == KDT_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->n, (int)(r1 - r0), (int)cols, 1.0f, c->x,
                    (int)cols, (const float *)w->data + r0 * cols, (int)cols, c->beta, c->y + r0, (int)rows);
        return;
    }
    float *panel = kcpu__scratch(c->cb, thread);
    size_t esz = kdtype_size(w->dtype);
    for (int64_t p0 = r0; p0 < r1; p0 += c->panel_rows) {
        int64_t p1 = p0 + c->panel_rows < r1 ? p0 + c->panel_rows : r1;
        kv_row_to_f32(w->dtype, (const char *)w->data + (size_t)(p0 * cols) * esz, panel, (p1 - p0) * cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->n, (int)(p1 - p0), (int)cols, 1.0f, c->x,
                    (int)cols, panel, (int)cols, c->beta, c->y + p0, (int)rows);
    }
}

static void mm_task(void *vc, int task, int thread) {
    const mm_ctx *c = vc;
    int64_t r0 = (int64_t)task * c->block;
    int64_t r1 = r0 + c->block < c->w->rows ? r0 + c->block : c->w->rows;
    if (c->use_blas) mm_rows_blas(c, r0, r1, thread);
    else mm_rows_tiles(c, r0, r1);
}

int kcpu__matmul(kbackend *kb, const float *x, int n, const kmat *w, float *y, float beta) {
    if (!w || n < 0 || (beta != 0.0f && beta != 1.0f)) return PEFTD_EINVAL;
    if (!kcpu__dtype_ok(w->dtype) || w->rows <= 0 || w->cols <= 0) return PEFTD_EINVAL;
    /* BLAS takes int dimensions and strides. */
    if (w->rows > INT32_MAX || w->cols > INT32_MAX) return PEFTD_EUNSUPPORTED;
    if (n == 0) return 0;
    if (!x || !y || !w->data) return PEFTD_EINVAL;

    kcpu_backend *cb = kcpu__impl(kb);
    mm_ctx c = {.cb = cb, .x = x, .n = n, .w = w, .y = y, .beta = beta};
    c.use_blas = n >= (w->dtype == KDT_F32 ? MM_BLAS_MIN_N_F32 : MM_BLAS_MIN_N_HALF);
    double work = (double)n * (double)w->rows * (double)w->cols;
    int nt = cb->n_threads;
    int64_t block = w->rows;
    if (nt > 1) {
        int64_t want = (w->rows + (int64_t)nt * MM_TASKS_PER_THREAD - 1) / ((int64_t)nt * MM_TASKS_PER_THREAD);
        if (want < MM_MIN_BLOCK) want = MM_MIN_BLOCK;
        block = (want + MM_MR - 1) / MM_MR * MM_MR;
    }
    c.block = block;
    if (c.use_blas && w->dtype != KDT_F32) {
        c.panel_rows = MM_PANEL_FLOATS / w->cols;
        if (c.panel_rows < 1) c.panel_rows = 1;
        int rc = kcpu__scratch_reserve(cb, (size_t)(c.panel_rows * w->cols));
        if (rc) return rc;
    }
    int n_tasks = (int)((w->rows + block - 1) / block);
    kcpu__parallel(cb, n_tasks, work, mm_task, &c);
    return 0;
}
