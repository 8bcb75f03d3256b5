/* kernels/cpu/norm.c — RMSNorm: y = x / sqrt(mean(x²) + eps) * w, row by row.
 * The sum of squares is accumulated in double (two f64 vectors per f32 vector:
 * cheap next to the memory traffic), so long rows lose no precision. */
#include <math.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/simd.h"

typedef struct {
    const float *x;
    const kmat *w;
    int dim;
    float eps;
    float *y;
    const float *w32; /* w widened to f32 (points into scratch or w->data) */
} norm_ctx;

static double norm_sumsq(const float *x, int dim) {
    int i = 0;
#if KV_W == 16
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    for (; i + 16 <= dim; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        a0 = _mm512_fmadd_pd(lo, lo, a0);
        a1 = _mm512_fmadd_pd(hi, hi, a1);
    }
    double s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
#else
    double s = 0.0;
#endif
    for (; i < dim; i++) s += (double)x[i] * x[i];
    return s;
}

static void norm_task(void *vc, int row, int thread) {
    (void)thread;
    const norm_ctx *c = vc;
    const float *x = c->x + (int64_t)row * c->dim;
    float *y = c->y + (int64_t)row * c->dim;
    float inv = (float)(1.0 / sqrt(norm_sumsq(x, c->dim) / c->dim + (double)c->eps));
    kv_f32 vinv = kv_set1(inv);
    int i = 0;
    for (; i + KV_W <= c->dim; i += KV_W)
        kv_store(y + i, kv_mul(kv_mul(kv_load(x + i), vinv), kv_load(c->w32 + i)));
    if (i < c->dim) {
        int r = c->dim - i;
        kv_store_part(y + i, kv_mul(kv_mul(kv_load_part(x + i, r), vinv), kv_load_part(c->w32 + i, r)), r);
    }
}

int kcpu__rmsnorm(kbackend *kb, const float *x, const kmat *w, int n, int dim, float eps, float *y) {
    if (!w || n < 0 || dim <= 0 || !(eps >= 0.0f)) return PEFTD_EINVAL;
    if (!kcpu__dtype_ok(w->dtype) || w->rows * w->cols != dim) return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!x || !y || !w->data) return PEFTD_EINVAL;
    kcpu_backend *cb = kcpu__impl(kb);
    norm_ctx c = {.x = x, .w = w, .dim = dim, .eps = eps, .y = y};
    if (w->dtype == KDT_F32) {
        c.w32 = w->data;
    } else {
        /* Widen the weight once per call into the caller's scratch (thread 0's,
         * which no task uses as scratch during this op). */
        int rc = kcpu__scratch_reserve(cb, (size_t)dim);
        if (rc) return rc;
        float *w32 = kcpu__scratch(cb, 0);
        kv_row_to_f32(w->dtype, w->data, w32, dim);
        c.w32 = w32;
    }
    kcpu__parallel(cb, n, (double)n * dim * 4, norm_task, &c);
    return 0;
}
