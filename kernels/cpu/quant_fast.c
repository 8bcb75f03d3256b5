/* kernels/cpu/quant_fast.c — the Q4_K and Q5_K quantizers of quant_ref.c, vectorised: the
 * same search, the 8 sub-blocks of a super-block in the 8 lanes of an AVX2 register; and the
 * load-time reorderings Q4_K -> SB8, Q6_K -> SB16 with 16-byte shuffles (same bytes).
 *
 * Why the output is bit-identical to qref_quantize_q4_k / _q5_k: each lane runs exactly the
 * reference's sequence of f32 operations for its sub-block (same order of every sum over the
 * 32 elements, separate multiplies and adds — the build does not contract them: -std=c11
 * means -ffp-contract=off, and no FMA intrinsic is used here), min/max by compare-select,
 * round-half-even by vcvtps2dq in the default rounding mode (= lrintf), the same clamps, and
 * the same "first strictly better candidate wins" rule per lane. What differs is only which
 * lanes run together (two blocks' 16 sub-blocks in two interleaved registers); lanes never
 * mix. The scale packing and final levels are the reference's
 * own code (qref__k4_finish). tests/unit/test_quant_fast.c compares the two on random,
 * outlier, constant and all-zero blocks, byte for byte.
 *
 * Without AVX2 the reference runs. */
#include "kernels/cpu/quant_fast.h"

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "kernels/cpu/quant_ref.h"
#include "lib/half.h"
#include "lib/status.h"

#define QF_TGT __attribute__((target("avx2")))

/* The 6-bit scale and min of sub-block s (quant_ref.h's packing). */
static void kq_scale_min(const uint8_t *q, int s, int *sc, int *m) {
    if (s < 4) {
        *sc = q[s] & 63;
        *m = q[s + 4] & 63;
    } else {
        *sc = (q[s + 4] & 15) | ((q[s - 4] >> 6) << 4);
        *m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
    }
}

/* lrintf of qref_nearest (clamped to ±1e9; NaN → −1e9), then clamped to [lo, hi]. */
static inline QF_TGT __m256i qf_level(__m256 v, __m256i lo, __m256i hi) {
    v = _mm256_max_ps(v, _mm256_set1_ps(-1e9f)); /* NaN → the second operand */
    v = _mm256_min_ps(v, _mm256_set1_ps(1e9f));
    __m256i l = _mm256_cvtps_epi32(v);
    return _mm256_min_epi32(_mm256_max_epi32(l, lo), hi);
}

/* qref_fit_scale_min for the 8 sub-blocks of NB blocks at once (NB independent lane sets,
 * interleaved so the sums' add chains overlap): X[k][i], W[k][i] lane s = element i of
 * sub-block s of block k. Writes the levels (Lout[k][i] lane s), the scale and the min
 * (already negated) per lane. */
static inline __attribute__((always_inline)) QF_TGT void qf_fit(const int NB, int nmax, __m256 X[][32], __m256 W[][32],
                                                                __m256i Lout[][32], __m256 *scale_out, __m256 *min_out,
                                                                float rmin, float rdelta, int nstep) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256i ilo = _mm256_setzero_si256(), ihi = _mm256_set1_epi32(nmax);
    __m256 min[2], max[2], sum_w[2], sum_x[2], flat[2], scale[2], best[2];
    for (int k = 0; k < NB; k++) {
        min[k] = max[k] = X[k][0];
        sum_w[k] = W[k][0];
        sum_x[k] = _mm256_mul_ps(W[k][0], X[k][0]);
    }
    for (int i = 1; i < 32; i++)
        for (int k = 0; k < NB; k++) {
            min[k] = _mm256_blendv_ps(min[k], X[k][i], _mm256_cmp_ps(X[k][i], min[k], _CMP_LT_OQ));
            max[k] = _mm256_blendv_ps(max[k], X[k][i], _mm256_cmp_ps(X[k][i], max[k], _CMP_GT_OQ));
            sum_w[k] = _mm256_add_ps(sum_w[k], W[k][i]);
            sum_x[k] = _mm256_add_ps(sum_x[k], _mm256_mul_ps(W[k][i], X[k][i]));
        }
    for (int k = 0; k < NB; k++) {
        min[k] = _mm256_blendv_ps(min[k], zero, _mm256_cmp_ps(min[k], zero, _CMP_GT_OQ));
        flat[k] = _mm256_cmp_ps(max[k], min[k], _CMP_EQ_OQ); /* the reference's early return */
        __m256 iscale = _mm256_div_ps(_mm256_set1_ps((float)nmax), _mm256_sub_ps(max[k], min[k]));
        scale[k] = _mm256_div_ps(_mm256_set1_ps(1.0f), iscale);
        best[k] = zero;
        for (int i = 0; i < 32; i++) {
            Lout[k][i] = qf_level(_mm256_mul_ps(iscale, _mm256_sub_ps(X[k][i], min[k])), ilo, ihi);
            __m256 diff = _mm256_mul_ps(scale[k], _mm256_cvtepi32_ps(Lout[k][i]));
            diff = _mm256_add_ps(diff, min[k]);
            diff = _mm256_sub_ps(diff, X[k][i]);
            best[k] = _mm256_add_ps(best[k], _mm256_mul_ps(W[k][i], _mm256_mul_ps(diff, diff)));
        }
    }
    __m256i aux[2][32];
    __m256 lf[2][32];
    for (int is = 0; is <= nstep; is++) {
        float steps = rmin + rdelta * (float)is;
        __m256 iscale[2], sum_l[2], sum_l2[2], sum_xl[2];
        for (int k = 0; k < NB; k++) {
            /* (max - min) with the min of the best fit so far, as the reference */
            iscale[k] = _mm256_div_ps(_mm256_set1_ps(steps + (float)nmax), _mm256_sub_ps(max[k], min[k]));
            sum_l[k] = sum_l2[k] = sum_xl[k] = zero;
        }
        for (int i = 0; i < 32; i++)
            for (int k = 0; k < NB; k++) {
                aux[k][i] = qf_level(_mm256_mul_ps(iscale[k], _mm256_sub_ps(X[k][i], min[k])), ilo, ihi);
                __m256 l = lf[k][i] = _mm256_cvtepi32_ps(aux[k][i]);
                __m256 wl = _mm256_mul_ps(W[k][i], l);
                sum_l[k] = _mm256_add_ps(sum_l[k], wl);
                sum_l2[k] = _mm256_add_ps(sum_l2[k], _mm256_mul_ps(wl, l));
                sum_xl[k] = _mm256_add_ps(sum_xl[k], _mm256_mul_ps(wl, X[k][i]));
            }
        __m256 ok[2], this_scale[2], this_min[2], err[2];
        int any = 0;
        for (int k = 0; k < NB; k++) {
            __m256 D = _mm256_sub_ps(_mm256_mul_ps(sum_w[k], sum_l2[k]), _mm256_mul_ps(sum_l[k], sum_l[k]));
            ok[k] = _mm256_cmp_ps(D, zero, _CMP_GT_OQ);
            any |= !_mm256_testz_ps(ok[k], ok[k]);
            this_scale[k] = _mm256_div_ps(
                _mm256_sub_ps(_mm256_mul_ps(sum_w[k], sum_xl[k]), _mm256_mul_ps(sum_x[k], sum_l[k])), D);
            this_min[k] = _mm256_div_ps(
                _mm256_sub_ps(_mm256_mul_ps(sum_l2[k], sum_x[k]), _mm256_mul_ps(sum_l[k], sum_xl[k])), D);
            __m256 pos = _mm256_cmp_ps(this_min[k], zero, _CMP_GT_OQ);
            this_min[k] = _mm256_blendv_ps(this_min[k], zero, pos);
            this_scale[k] = _mm256_blendv_ps(this_scale[k], _mm256_div_ps(sum_xl[k], sum_l2[k]), pos);
            err[k] = zero;
        }
        if (!any) continue;
        for (int i = 0; i < 32; i++)
            for (int k = 0; k < NB; k++) {
                __m256 diff = _mm256_mul_ps(this_scale[k], lf[k][i]);
                diff = _mm256_add_ps(diff, this_min[k]);
                diff = _mm256_sub_ps(diff, X[k][i]);
                err[k] = _mm256_add_ps(err[k], _mm256_mul_ps(W[k][i], _mm256_mul_ps(diff, diff)));
            }
        for (int k = 0; k < NB; k++) {
            __m256 upd = _mm256_and_ps(ok[k], _mm256_cmp_ps(err[k], best[k], _CMP_LT_OQ));
            if (_mm256_testz_ps(upd, upd)) continue;
            __m256i updi = _mm256_castps_si256(upd);
            for (int i = 0; i < 32; i++) Lout[k][i] = _mm256_blendv_epi8(Lout[k][i], aux[k][i], updi);
            best[k] = _mm256_blendv_ps(best[k], err[k], upd);
            scale[k] = _mm256_blendv_ps(scale[k], this_scale[k], upd);
            min[k] = _mm256_blendv_ps(min[k], this_min[k], upd);
        }
    }
    for (int k = 0; k < NB; k++) {
        /* flat sub-blocks: levels 0, scale 0, the min as found */
        for (int i = 0; i < 32; i++) Lout[k][i] = _mm256_andnot_si256(_mm256_castps_si256(flat[k]), Lout[k][i]);
        scale_out[k] = _mm256_blendv_ps(scale[k], zero, flat[k]);
        min_out[k] = _mm256_xor_ps(min[k], _mm256_set1_ps(-0.0f)); /* -min: the reference's unary minus */
    }
}

/* NB consecutive blocks of bb bytes (nmax 15: Q4_K into qs; 31: Q5_K into qs and qh). */
static inline __attribute__((always_inline)) QF_TGT void qf_blocks(const int NB, const float *x, int nmax, float rmin,
                                                                   float rdelta, int nstep, uint8_t *blk, size_t bb) {
    __m256 X[2][32], W[2][32], sc[2], mn[2];
    __m256i Lv[2][32];
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int k = 0; k < NB; k++) {
        const float *xb = x + 256 * k;
        float xt[32][8];
        for (int s = 0; s < 8; s++)
            for (int l = 0; l < 32; l++) xt[l][s] = xb[32 * s + l];
        for (int l = 0; l < 32; l++) X[k][l] = _mm256_loadu_ps(xt[l]);
        __m256 sum_x2 = _mm256_mul_ps(X[k][0], X[k][0]);
        for (int l = 1; l < 32; l++) sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(X[k][l], X[k][l]));
        __m256 av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.0f)));
        for (int l = 0; l < 32; l++) W[k][l] = _mm256_add_ps(av_x, _mm256_and_ps(X[k][l], absmask));
    }
    qf_fit(NB, nmax, X, W, Lv, sc, mn, rmin, rdelta, nstep);
    for (int k = 0; k < NB; k++) {
        float scales[8], mins[8];
        _mm256_storeu_ps(scales, sc[k]);
        _mm256_storeu_ps(mins, mn[k]);
        uint8_t *p = blk + bb * k;
        uint16_t d16, dmin16;
        qref__k4_finish(x + 256 * k, scales, mins, nmax, p + 4, &d16, &dmin16, NULL);
        memcpy(p, &d16, 2);
        memcpy(p + 2, &dmin16, 2);
        /* the levels: the search's where a sub-block's decoded scale is 0, else recomputed
         * against the decoded scales, 8 elements per register (as qref__k4_finish) */
        int32_t lt[32][8];
        for (int l = 0; l < 32; l++) _mm256_storeu_si256((__m256i *)lt[l], Lv[k][l]);
        uint8_t L[256];
        const float *xb = x + 256 * k;
        for (int s = 0; s < 8; s++) {
            int scv, m;
            kq_scale_min(p + 4, s, &scv, &m);
            float d = f16_to_f32(d16) * (float)scv;
            if (d == 0.0f) {
                for (int l = 0; l < 32; l++) L[32 * s + l] = (uint8_t)lt[l][s];
                continue;
            }
            float dm = f16_to_f32(dmin16) * (float)m;
            const __m256 vd = _mm256_set1_ps(d), vdm = _mm256_set1_ps(dm);
            const __m256i ilo = _mm256_setzero_si256(), ihi = _mm256_set1_epi32(nmax);
            for (int l = 0; l < 32; l += 8) {
                __m256 v = _mm256_add_ps(_mm256_loadu_ps(xb + 32 * s + l), vdm);
                __m256i q = qf_level(_mm256_div_ps(v, vd), ilo, ihi);
                __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
                _mm_storel_epi64((__m128i *)(L + 32 * s + l), _mm_packus_epi16(q16, q16));
            }
        }
        if (nmax == 15) qref__k4_pack(L, p + 16, NULL);
        else qref__k4_pack(L, p + 48, p + 16);
    }
}

static QF_TGT void qf_row(const float *x, int64_t nb, int nmax, float rmin, float rdelta, int nstep, uint8_t *dst,
                          size_t bb) {
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) qf_blocks(2, x + 256 * b, nmax, rmin, rdelta, nstep, dst + bb * b, bb);
    if (b < nb) qf_blocks(1, x + 256 * b, nmax, rmin, rdelta, nstep, dst + bb * b, bb);
}

static int qf_use_simd(void) {
    static int v = -1;
    int c = __atomic_load_n(&v, __ATOMIC_RELAXED);
    if (c < 0) {
        c = __builtin_cpu_supports("avx2");
        __atomic_store_n(&v, c, __ATOMIC_RELAXED);
    }
    return c;
}

int qfast_quantize_q4_k(const float *src, void *dst, int64_t n) {
    if (n < 0 || n % 256) return PEFTD_EINVAL;
    if (!qf_use_simd()) return qref_quantize_q4_k(src, dst, n);
    qf_row(src, n / 256, 15, -1.0f, 0.1f, 20, dst, 144);
    return 0;
}

int qfast_quantize_q5_k(const float *src, void *dst, int64_t n) {
    if (n < 0 || n % 256) return PEFTD_EINVAL;
    if (!qf_use_simd()) return qref_quantize_q5_k(src, dst, n);
    qf_row(src, n / 256, 31, -0.5f, 0.1f, 15, dst, 176);
    return 0;
}

/* ---- Q4_K -> SB8 (quant_ref.c's qref_reorder, forward) ----
 * Per super-block, with A_g / C_g the bytes 32g .. +15 / 32g+16 .. +31 of qs (g < 4): the SB8
 * byte 32k + 8g + e is (A_g[4k+e] & 15) | (C_g[4k+e] & 15) << 4 and byte 32k + 8g + 4 + e is
 * (A_g[4k+e] >> 4) | (C_g[4k+e] & 0xf0): two nibble merges per g (L_g, H_g), then a transpose
 * of 4-byte groups — dword k of L_g and of H_g make qword g of output row k. */
#if defined(__SSE2__)
static void qf_q4k_sb8_block(const uint8_t *q, uint8_t *o) {
    const __m128i m4 = _mm_set1_epi8(15), mh = _mm_set1_epi8((char)0xf0);
    __m128i P[4][2]; /* P[g][0]: qwords k = 0, 1 of g; P[g][1]: k = 2, 3 */
    for (int g = 0; g < 4; g++) {
        const __m128i a = _mm_loadu_si128((const __m128i *)(q + 32 * g));
        const __m128i c = _mm_loadu_si128((const __m128i *)(q + 32 * g + 16));
        const __m128i lo = _mm_or_si128(_mm_and_si128(a, m4), _mm_slli_epi16(_mm_and_si128(c, m4), 4));
        const __m128i hi = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4), _mm_and_si128(c, mh));
        P[g][0] = _mm_unpacklo_epi32(lo, hi);
        P[g][1] = _mm_unpackhi_epi32(lo, hi);
    }
    for (int k = 0; k < 4; k++) {
        const int h = k / 2;
        const __m128i q01 = k % 2 ? _mm_unpackhi_epi64(P[0][h], P[1][h]) : _mm_unpacklo_epi64(P[0][h], P[1][h]);
        const __m128i q23 = k % 2 ? _mm_unpackhi_epi64(P[2][h], P[3][h]) : _mm_unpacklo_epi64(P[2][h], P[3][h]);
        _mm_storeu_si128((__m128i *)(o + 32 * k), q01);
        _mm_storeu_si128((__m128i *)(o + 32 * k + 16), q23);
    }
}
#endif

#if defined(__SSE2__)
/* One Q6_K block's 192 code bytes (ql 128, qh 64) into the SB16 order (kernels.h; quant_ref.c's
 * qref_reorder): the 256 codes unpacked to bytes in natural order (element 128h + 32k + l:
 * nibble k/2 of ql[64h + 32(k%2) + l], crumb k of qh[32h + l]), the 16 × 8 matrix of code pairs
 * (row g: elements 16g .. 16g + 15) transposed as two 8 × 8 blocks of 16-bit units, so that
 * register t holds elements 16g + 2t + o at byte 2g + o, and packed back: register t's low
 * nibbles to ql bytes 32(t/2) at nibble t%2, its high crumbs to qh bytes 32(t/4) at crumb t%4. */
static void qf_q6k_sb16_block(const uint8_t *s, uint8_t *d) {
    const __m128i m4 = _mm_set1_epi8(15), m3 = _mm_set1_epi8(3);
    __m128i nat[16]; /* nat[g]: elements 16g .. 16g + 15 */
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 4; k++)
            for (int half = 0; half < 2; half++) {
                const __m128i ql = _mm_loadu_si128((const __m128i *)(s + 64 * h + 32 * (k % 2) + 16 * half));
                const __m128i qh = _mm_loadu_si128((const __m128i *)(s + 128 + 32 * h + 16 * half));
                const __m128i lo = _mm_and_si128(_mm_srl_epi16(ql, _mm_cvtsi32_si128(4 * (k / 2))), m4);
                const __m128i hi = _mm_and_si128(_mm_srl_epi16(qh, _mm_cvtsi32_si128(2 * k)), m3);
                nat[8 * h + 2 * k + half] = _mm_or_si128(lo, _mm_slli_epi16(hi, 4));
            }
    __m128i reg[16]; /* reg[2t + blk]: register t's bytes 16·blk .. (the units of rows 8blk .. 8blk + 7) */
    for (int blk = 0; blk < 2; blk++) {
        const __m128i *r = nat + 8 * blk;
        __m128i a[8], b[8];
        for (int i = 0; i < 4; i++) {
            a[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
            a[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
        }
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) {
                b[4 * i + 2 * j] = _mm_unpacklo_epi32(a[4 * i + j], a[4 * i + 2 + j]);
                b[4 * i + 2 * j + 1] = _mm_unpackhi_epi32(a[4 * i + j], a[4 * i + 2 + j]);
            }
        /* b[4i + q]: unit t = 2q of rows 4i .. 4i + 3, then t = 2q + 1 of the same rows */
        for (int q = 0; q < 4; q++) {
            reg[2 * (2 * q) + blk] = _mm_unpacklo_epi64(b[q], b[4 + q]);
            reg[2 * (2 * q + 1) + blk] = _mm_unpackhi_epi64(b[q], b[4 + q]);
        }
    }
    for (int half = 0; half < 2; half++) {
        for (int j = 0; j < 4; j++) {
            const __m128i v = _mm_or_si128(_mm_and_si128(reg[2 * (2 * j) + half], m4),
                                           _mm_slli_epi16(_mm_and_si128(reg[2 * (2 * j + 1) + half], m4), 4));
            _mm_storeu_si128((__m128i *)(d + 32 * j + 16 * half), v);
        }
        for (int i = 0; i < 2; i++) {
            __m128i v = _mm_setzero_si128();
            for (int q = 0; q < 4; q++)
                v = _mm_or_si128(v, _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(reg[2 * (4 * i + q) + half], 4), m3), 2 * q));
            _mm_storeu_si128((__m128i *)(d + 128 + 32 * i + 16 * half), v);
        }
    }
}
#endif

int qfast_reorder(uint32_t to, uint32_t from, const void *src, void *dst, int64_t n) {
#if defined(__SSE2__)
    if (from == QREF_Q6_K && to == QREF_Q6_K_SB16) {
        if (n < 0 || n % QREF_QK_K) return PEFTD_EINVAL;
        const uint8_t *s = src;
        uint8_t *d = dst;
        for (int64_t b = 0; b < n / QREF_QK_K; b++, s += 210, d += 210) {
            qf_q6k_sb16_block(s, d);
            memcpy(d + 192, s + 192, 18); /* scales, d */
        }
        return 0;
    }
    if (from == QREF_Q4_K && to == QREF_Q4_K_SB8) {
        if (n < 0 || n % QREF_QK_K) return PEFTD_EINVAL;
        const size_t bb = sizeof(qref_block_q4_k), qs = offsetof(qref_block_q4_k, qs);
        const uint8_t *s = src;
        uint8_t *d = dst;
        for (int64_t b = 0; b < n / QREF_QK_K; b++, s += bb, d += bb) {
            memcpy(d, s, qs); /* d, dmin, scales */
            qf_q4k_sb8_block(s + qs, d + qs);
        }
        return 0;
    }
#endif
    return qref_reorder(to, from, src, dst, n);
}
