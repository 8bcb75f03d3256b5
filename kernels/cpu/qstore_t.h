/* kernels/cpu/qstore_t.h — the x16/x8 batch tiles' result stores: a strip of 4 weight rows holds
 * its results with x rows in the lanes (one vector per weight row); these write them to y with
 * weight rows along the row, y[j·ldy + r] = lane j of a[r] for r < 4, j < rows — the 4 × lanes
 * block transposed in registers (two rounds of shuffles leave 4 x rows per 128-bit block) and
 * stored 4 floats per x row, where kq_store_lanes (qmatmul.h, any R, beta 1) moves one float at
 * a time. Values are only moved: same bits. Each helper carries its own target attribute and
 * is called only on CPUs with those instructions. */
#ifndef PEFTD_KCPU_QSTORE_T_H
#define PEFTD_KCPU_QSTORE_T_H

#include <immintrin.h>
#include <stdint.h>

#include "kernels/cpu/qmatmul.h"

/* 16 lanes (AVX-512): rows <= 16 */
static inline __attribute__((always_inline, target("avx512f"))) void kq_store4_t16(const __m512 a[4], int rows,
                                                                                    float *y, int64_t ldy) {
    const __m512 t0 = _mm512_unpacklo_ps(a[0], a[1]), t1 = _mm512_unpackhi_ps(a[0], a[1]);
    const __m512 t2 = _mm512_unpacklo_ps(a[2], a[3]), t3 = _mm512_unpackhi_ps(a[2], a[3]);
    /* block b of c[k] = x row 4b + k's four values */
    const __m512 c[4] = {_mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
                         _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2))};
#define KQ_ST16(b)                                                                                                \
    for (int k = 0; k < 4 && 4 * (b) + k < rows; k++) _mm_storeu_ps(y + (4 * (b) + k) * ldy, _mm512_extractf32x4_ps(c[k], b));
    KQ_ST16(0) KQ_ST16(1) KQ_ST16(2) KQ_ST16(3)
#undef KQ_ST16
}

/* 8 lanes (AVX2): rows <= 8 */
static inline __attribute__((always_inline, target("avx2"))) void kq_store4_t8(const __m256 a[4], int rows, float *y,
                                                                                int64_t ldy) {
    const __m256 t0 = _mm256_unpacklo_ps(a[0], a[1]), t1 = _mm256_unpackhi_ps(a[0], a[1]);
    const __m256 t2 = _mm256_unpacklo_ps(a[2], a[3]), t3 = _mm256_unpackhi_ps(a[2], a[3]);
    const __m256 c[4] = {_mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
                         _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2))};
    for (int k = 0; k < 4 && k < rows; k++) _mm_storeu_ps(y + k * ldy, _mm256_castps256_ps128(c[k]));
    for (int k = 0; k < 4 && 4 + k < rows; k++) _mm_storeu_ps(y + (4 + k) * ldy, _mm256_extractf128_ps(c[k], 1));
}

/* A tile's results a[r], r < R (x rows in lanes), to y: transposed 4 floats at a time for a full
 * strip written fresh (beta 0), else kq_store_lanes. */
static inline __attribute__((always_inline, target("avx512f"))) void kq_store_tile16(int R, const __m512 a[4], int rows,
                                                                                      float *y, int64_t ldy, float beta) {
    if (R == 4 && beta == 0.0f) {
        kq_store4_t16(a, rows, y, ldy);
        return;
    }
    float t[4 * 16];
    for (int r = 0; r < R; r++) _mm512_storeu_ps(t + 16 * r, a[r]);
    kq_store_lanes(R, rows, t, y, ldy, beta);
}

static inline __attribute__((always_inline, target("avx2"))) void kq_store_tile8(int R, const __m256 a[4], int rows,
                                                                                  float *y, int64_t ldy, float beta) {
    if (R == 4 && beta == 0.0f) {
        kq_store4_t8(a, rows, y, ldy);
        return;
    }
    float t[4 * 16];
    for (int r = 0; r < R; r++) _mm256_storeu_ps(t + 16 * r, a[r]);
    kq_store_lanes(R, rows, t, y, ldy, beta);
}

#endif
