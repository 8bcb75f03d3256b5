/* kernels/cpu/quant_fast.c — the Q4_K and Q5_K quantizers of quant_ref.c, vectorised: the
 * same search, the 8 sub-blocks of a super-block in the 8 lanes of an AVX2 register.
 *
 * Why the output is bit-identical to qref_quantize_q4_k / _q5_k: each lane runs exactly the
 * reference's sequence of f32 operations for its sub-block (same order of every sum over the
 * 32 elements, separate multiplies and adds — the build does not contract them: -std=c11
 * means -ffp-contract=off, and no FMA intrinsic is used here), min/max by compare-select,
 * round-half-even by vcvtps2dq in the default rounding mode (= lrintf), the same clamps, and
 * the same "first strictly better candidate wins" rule per lane. What differs is only which
 * lanes run together; lanes never mix. The scale packing and final levels are the reference's
 * own code (qref__k4_finish). tests/unit/test_quant_fast.c compares the two on random,
 * outlier, constant and all-zero blocks, byte for byte.
 *
 * Without AVX2 (or with PEFTD_QUANT_REF=1 in the environment) the reference runs. */
#include "kernels/cpu/quant_fast.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant_ref.h"
#include "lib/half.h"
#include "lib/status.h"

#define QF_TGT __attribute__((target("avx2")))

/* lrintf of qref_nearest (clamped to ±1e9; NaN → −1e9), then clamped to [lo, hi]. */
static inline QF_TGT __m256i qf_level(__m256 v, __m256i lo, __m256i hi) {
    v = _mm256_max_ps(v, _mm256_set1_ps(-1e9f)); /* NaN → the second operand */
    v = _mm256_min_ps(v, _mm256_set1_ps(1e9f));
    __m256i l = _mm256_cvtps_epi32(v);
    return _mm256_min_epi32(_mm256_max_epi32(l, lo), hi);
}

/* qref_fit_scale_min for 8 sub-blocks at once: X[i], W[i] lane s = element i of sub-block s.
 * Writes the levels (Lout[i] lane s), the scale and the min (already negated) per lane. */
static QF_TGT void qf_fit8(int nmax, const __m256 *X, const __m256 *W, __m256i *Lout, __m256 *scale_out,
                           __m256 *min_out, float rmin, float rdelta, int nstep) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256i ilo = _mm256_setzero_si256(), ihi = _mm256_set1_epi32(nmax);
    __m256 min = X[0], max = X[0], sum_w = W[0], sum_x = _mm256_mul_ps(W[0], X[0]);
    for (int i = 1; i < 32; i++) {
        min = _mm256_blendv_ps(min, X[i], _mm256_cmp_ps(X[i], min, _CMP_LT_OQ));
        max = _mm256_blendv_ps(max, X[i], _mm256_cmp_ps(X[i], max, _CMP_GT_OQ));
        sum_w = _mm256_add_ps(sum_w, W[i]);
        sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(W[i], X[i]));
    }
    min = _mm256_blendv_ps(min, zero, _mm256_cmp_ps(min, zero, _CMP_GT_OQ));
    const __m256 flat = _mm256_cmp_ps(max, min, _CMP_EQ_OQ); /* the reference's early return */
    __m256 iscale = _mm256_div_ps(_mm256_set1_ps((float)nmax), _mm256_sub_ps(max, min));
    __m256 scale = _mm256_div_ps(_mm256_set1_ps(1.0f), iscale), best = zero;
    for (int i = 0; i < 32; i++) {
        Lout[i] = qf_level(_mm256_mul_ps(iscale, _mm256_sub_ps(X[i], min)), ilo, ihi);
        __m256 diff = _mm256_mul_ps(scale, _mm256_cvtepi32_ps(Lout[i]));
        diff = _mm256_add_ps(diff, min);
        diff = _mm256_sub_ps(diff, X[i]);
        best = _mm256_add_ps(best, _mm256_mul_ps(W[i], _mm256_mul_ps(diff, diff)));
    }
    __m256i aux[32];
    for (int is = 0; is <= nstep; is++) {
        float steps = rmin + rdelta * (float)is;
        /* (max - min) with the min of the best fit so far, as the reference */
        iscale = _mm256_div_ps(_mm256_set1_ps(steps + (float)nmax), _mm256_sub_ps(max, min));
        __m256 sum_l = zero, sum_l2 = zero, sum_xl = zero;
        for (int i = 0; i < 32; i++) {
            aux[i] = qf_level(_mm256_mul_ps(iscale, _mm256_sub_ps(X[i], min)), ilo, ihi);
            __m256 l = _mm256_cvtepi32_ps(aux[i]);
            __m256 wl = _mm256_mul_ps(W[i], l);
            sum_l = _mm256_add_ps(sum_l, wl);
            sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, l));
            sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, X[i]));
        }
        __m256 D = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
        __m256 ok = _mm256_cmp_ps(D, zero, _CMP_GT_OQ);
        if (_mm256_testz_ps(ok, ok)) continue;
        __m256 this_scale = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)), D);
        __m256 this_min = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)), D);
        __m256 pos = _mm256_cmp_ps(this_min, zero, _CMP_GT_OQ);
        this_min = _mm256_blendv_ps(this_min, zero, pos);
        this_scale = _mm256_blendv_ps(this_scale, _mm256_div_ps(sum_xl, sum_l2), pos);
        __m256 err = zero;
        for (int i = 0; i < 32; i++) {
            __m256 diff = _mm256_mul_ps(this_scale, _mm256_cvtepi32_ps(aux[i]));
            diff = _mm256_add_ps(diff, this_min);
            diff = _mm256_sub_ps(diff, X[i]);
            err = _mm256_add_ps(err, _mm256_mul_ps(W[i], _mm256_mul_ps(diff, diff)));
        }
        __m256 upd = _mm256_and_ps(ok, _mm256_cmp_ps(err, best, _CMP_LT_OQ));
        if (_mm256_testz_ps(upd, upd)) continue;
        __m256i updi = _mm256_castps_si256(upd);
        for (int i = 0; i < 32; i++) Lout[i] = _mm256_blendv_epi8(Lout[i], aux[i], updi);
        best = _mm256_blendv_ps(best, err, upd);
        scale = _mm256_blendv_ps(scale, this_scale, upd);
        min = _mm256_blendv_ps(min, this_min, upd);
    }
    /* flat sub-blocks: levels 0, scale 0, the min as found */
    for (int i = 0; i < 32; i++) Lout[i] = _mm256_andnot_si256(_mm256_castps_si256(flat), Lout[i]);
    *scale_out = _mm256_blendv_ps(scale, zero, flat);
    *min_out = _mm256_xor_ps(min, _mm256_set1_ps(-0.0f)); /* -min: the reference's unary minus */
}

/* One block (nmax 15: Q4_K into qs; 31: Q5_K into qs and qh). */
static QF_TGT void qf_block(const float *x, int nmax, float rmin, float rdelta, int nstep, uint8_t *blk) {
    __m256 X[32], W[32];
    float xt[32][8];
    for (int s = 0; s < 8; s++)
        for (int l = 0; l < 32; l++) xt[l][s] = x[32 * s + l];
    for (int l = 0; l < 32; l++) X[l] = _mm256_loadu_ps(xt[l]);
    __m256 sum_x2 = _mm256_mul_ps(X[0], X[0]);
    for (int l = 1; l < 32; l++) sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(X[l], X[l]));
    __m256 av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.0f)));
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int l = 0; l < 32; l++) W[l] = _mm256_add_ps(av_x, _mm256_and_ps(X[l], absmask));
    __m256i Lv[32];
    __m256 sc, mn;
    qf_fit8(nmax, X, W, Lv, &sc, &mn, rmin, rdelta, nstep);
    float scales[8], mins[8];
    _mm256_storeu_ps(scales, sc);
    _mm256_storeu_ps(mins, mn);
    int32_t lt[32][8];
    for (int l = 0; l < 32; l++) _mm256_storeu_si256((__m256i *)lt[l], Lv[l]);
    uint8_t L[256];
    for (int s = 0; s < 8; s++)
        for (int l = 0; l < 32; l++) L[32 * s + l] = (uint8_t)lt[l][s];
    uint16_t d16, dmin16;
    qref__k4_finish(x, scales, mins, nmax, blk + 4, &d16, &dmin16, L);
    memcpy(blk, &d16, 2);
    memcpy(blk + 2, &dmin16, 2);
    if (nmax == 15) qref__k4_pack(L, blk + 16, NULL);
    else qref__k4_pack(L, blk + 48, blk + 16);
}

static int qf_use_simd(void) {
    static int v = -1;
    int c = __atomic_load_n(&v, __ATOMIC_RELAXED);
    if (c < 0) {
        const char *e = getenv("PEFTD_QUANT_REF");
        c = __builtin_cpu_supports("avx2") && !(e && e[0] == '1');
        __atomic_store_n(&v, c, __ATOMIC_RELAXED);
    }
    return c;
}

int qfast_quantize_q4_k(const float *src, void *dst, int64_t n) {
    if (n < 0 || n % 256) return PEFTD_EINVAL;
    if (!qf_use_simd()) return qref_quantize_q4_k(src, dst, n);
    for (int64_t b = 0; b < n / 256; b++) qf_block(src + 256 * b, 15, -1.0f, 0.1f, 20, (uint8_t *)dst + 144 * b);
    return 0;
}

int qfast_quantize_q5_k(const float *src, void *dst, int64_t n) {
    if (n < 0 || n % 256) return PEFTD_EINVAL;
    if (!qf_use_simd()) return qref_quantize_q5_k(src, dst, n);
    for (int64_t b = 0; b < n / 256; b++) qf_block(src + 256 * b, 31, -0.5f, 0.1f, 15, (uint8_t *)dst + 176 * b);
    return 0;
}
