/* kernels/cpu/qdot_kquant_x86.h — the K-quant pieces the AVX2 (qdot_avx2.c), AVX-512
 * (qdot_avx512_k.c) and AMX (qdot_amx.c) code shares: the Q4_K/Q5_K scale unpacking and each
 * super-block's f32 step, which is where the canonical order (qmatmul.h) touches floats. The
 * SIMD tiles hand over their exact int32 lane sums; the step adds them up exactly (integers)
 * and does the one-lane f32 work, so the floats are the same instructions on the same values
 * in every path: bit-identity rests on the integer totals alone. Header-only; compiled for AVX2
 * by target attributes (AVX-512/AMX callers inline them: their targets include AVX2). Private
 * to kernels/cpu/. */
#ifndef PEFTD_KCPU_QDOT_KQUANT_X86_H
#define PEFTD_KCPU_QDOT_KQUANT_X86_H

#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/qmatmul.h"

#define KQX_INL static inline __attribute__((always_inline, target("avx2,fma,f16c")))

/* vpshufb control that puts 16-bit word a in every word of the low 128-bit lane and word b
 * in every word of the high lane. */
KQX_INL __m256i kq_word_bcast(int a, int b) {
    const int lo = (2 * a) | (2 * a + 1) << 8, hi = (2 * b) | (2 * b + 1) << 8;
    return _mm256_setr_epi16(lo, lo, lo, lo, lo, lo, lo, lo, hi, hi, hi, hi, hi, hi, hi, hi);
}

/* Prefetch the super-block KQ_PF ahead of p (BB bytes: Q4_K 144, Q5_K 176, Q6_K 210, Q3_K 110,
 * Q2_K 84): Q4_K/Q5_K its first two lines and its last byte, the Q6_K family every 64 bytes (the
 * tiles' measured choice). */
KQX_INL void kq_prefetch_sb(const uint8_t *p, int BB) {
    if (BB == 210 || BB == 110 || BB == 84) {
        for (int o = 0; o < BB; o += 64) __builtin_prefetch(p + KQ_PF + o, 0, 2);
        return;
    }
    __builtin_prefetch(p + KQ_PF, 0, 2);
    __builtin_prefetch(p + KQ_PF + 64, 0, 2);
    __builtin_prefetch(p + KQ_PF + BB - 1, 0, 2);
}

/* The least distance kq_prefetch_strip asks ahead, in bytes: a strip of 4 rows of 768 columns
 * (2.5 KiB in Q6_K, the lm_head of a 768-wide model) is too close to hide DRAM latency (32000 ×
 * 768 at 22 GB/s one strip ahead, 31-35 at 8 KiB; 2048 columns are unchanged: bench/README
 * "Quantized, fourteenth run"). */
#define KQ_PF_STRIP_MIN 8192

/* Prefetch for a decode tile about to read super-block b of row r of its strip of R rows (w:
 * the strip's first row, rows rb bytes apart and contiguous, so the strip is R·rb bytes in one
 * piece and the next strips follow it). The tile reads its R rows side by side — R streams — but
 * prefetches ahead in the matrix's own order: step (b, r) asks for the bytes at (b·R + r)·BB past
 * the start of the next strip (or KQ_PF_STRIP_MIN past this one, when farther), every 32 bytes
 * and the last, so one strip's worth is asked for while this one is read, as one monotonic stream
 * per thread. Used by the AVX-512 Q6_K decode tile (bench/README "eleventh run": 26-28 → 28-31
 * GB/s); the asks every 32 bytes measured better than one per line. */
KQX_INL void kq_prefetch_strip(const uint8_t *w, size_t rb, int R, int BB, int64_t b, int r) {
    const size_t ahead = (size_t)R * rb > KQ_PF_STRIP_MIN ? (size_t)R * rb : KQ_PF_STRIP_MIN;
    const uint8_t *q = w + ahead + (b * R + r) * BB;
    for (int o = 0; o < BB; o += 32) __builtin_prefetch(q + o, 0, 2);
    __builtin_prefetch(q + BB - 1, 0, 2);
}

/* The 8 six-bit scales and mins of a Q4_K / Q5_K super-block at p (quant_ref.h's packing),
 * unpacked in one xmm from the 12 scale bytes as 32-bit words u0..u2: scales 0-3 = u0 & 0x3f..,
 * 4-7 = (u2 & 0x0f..) | (u0 >> 2 & 0x30..); mins 0-3 = u1 & 0x3f.., 4-7 = (u2 >> 4 & 0x0f..) |
 * (u1 >> 2 & 0x30..). Out: the scales as 16-bit words 0-7 in both 128-bit lanes
 * (kq_word_bcast(c, c) picks sc_c for vpmaddwd), the mins as 8 int32. Reads p + 4 .. p + 19
 * (inside the block). */
KQX_INL void kq_q4k_scales8(const uint8_t *p, __m256i *sc16, __m256i *m32) {
    const __m128i v = _mm_loadu_si128((const __m128i *)(p + 4));
    const __m128i lo = _mm_and_si128(v, _mm_set1_epi8(0x3f));                          /* [sc0-3, m0-3, .] */
    const __m128i u2 = _mm_srlv_epi32(_mm_shuffle_epi32(v, 0xaa), _mm_setr_epi32(0, 4, 0, 0)); /* [u2, u2>>4] */
    const __m128i hi = _mm_or_si128(_mm_and_si128(u2, _mm_set1_epi8(0x0f)),
                                    _mm_and_si128(_mm_srli_epi32(v, 2), _mm_set1_epi8(0x30)));  /* [sc4-7, m4-7] */
    const __m128i sm = _mm_unpacklo_epi32(lo, hi);                                     /* sc0-7 | m0-7 */
    const __m128i s16 = _mm_cvtepu8_epi16(sm);
    *sc16 = _mm256_set_m128i(s16, s16);
    *m32 = _mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8));
}

/* The exact sums of eight int32 vectors' lanes: lane k of the result = Σ lanes of v[k]. */
KQX_INL __m256i kq_hsum8x8(const __m256i v[8]) {
    const __m256i a = _mm256_hadd_epi32(v[0], v[1]), b = _mm256_hadd_epi32(v[2], v[3]);
    const __m256i c = _mm256_hadd_epi32(v[4], v[5]), d = _mm256_hadd_epi32(v[6], v[7]);
    const __m256i ab = _mm256_hadd_epi32(a, b), cd = _mm256_hadd_epi32(c, d); /* [Σlo 0-3 | Σhi 0-3] */
    return _mm256_add_epi32(_mm256_permute2x128_si256(ab, cd, 0x20), _mm256_permute2x128_si256(ab, cd, 0x31));
}

/* [d_0..d_3 | dmin_0..dmin_3] of the Q4_K / Q5_K super-block b of weight rows r < R (R <= 4;
 * rows past R repeat row 0: their lanes are discarded). */
KQX_INL __m256 kq_q4k_dd4(int R, const uint8_t *w, size_t rb, int BB, int64_t b) {
    int32_t h0, h1, h2, h3; /* in registers: four narrow stores and one wide load would stall */
    memcpy(&h0, w + BB * b, 4);
    memcpy(&h1, w + (R > 1 ? 1 : 0) * rb + BB * b, 4);
    memcpy(&h2, w + (R > 2 ? 2 : 0) * rb + BB * b, 4);
    memcpy(&h3, w + (R > 3 ? 3 : 0) * rb + BB * b, 4);
    const __m256 dd = _mm256_cvtph_ps(_mm_setr_epi32(h0, h1, h2, h3)); /* d0 m0 d1 m1 .. */
    return _mm256_permutevar8x32_ps(dd, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}

/* The AVX2 tiles' outputs as pairs p = i·R + r (weight row r < R <= 4, x row i0 + i, i < N <= 8;
 * R·N <= 8),
 * one f32 lane each of an 8-lane accumulator. */

/* The f32 factors of the pairs' lanes for super-block b: d_r·dx_i and −(dmin_r·dx_i) (the same
 * products kq_q4k_finish always made: bit for bit the other paths' f32 step). dd = [d_0..d_3 |
 * dmin_0..dmin_3] (kq_q4k_dd4; Q6_K: d in the low half, fm NULL). Lanes past R·N repeat pair 0. */
KQX_INL void kq_pair_factors(int R, int N, __m256 dd, const kq_x *x, int i0, int64_t b, __m256 *fd, __m256 *fm) {
    const int64_t nb = x->cols / 256;
#define KQ_PI(p) ((p) < R * N ? (p) / R : 0)
#define KQ_PR(p) ((p) < R * N ? (p) % R : 0)
    /* dx of each pair's x row, gathered in one instruction (8 narrow stores to an array and a
     * wide load from it stalled on store forwarding: ~5% of the 2 × 4 tile) */
    const __m256i xi = _mm256_setr_epi32(KQ_PI(0), KQ_PI(1), KQ_PI(2), KQ_PI(3), KQ_PI(4), KQ_PI(5), KQ_PI(6), KQ_PI(7));
    const __m256 dx8 = _mm256_i32gather_ps(x->d + i0 * nb + b, _mm256_mullo_epi32(xi, _mm256_set1_epi32((int)nb)), 4);
    const __m256i ir = _mm256_setr_epi32(KQ_PR(0), KQ_PR(1), KQ_PR(2), KQ_PR(3), KQ_PR(4), KQ_PR(5), KQ_PR(6), KQ_PR(7));
#undef KQ_PI
#undef KQ_PR
    *fd = _mm256_mul_ps(_mm256_permutevar8x32_ps(dd, ir), dx8);
    if (fm)
        *fm = _mm256_xor_ps(_mm256_mul_ps(_mm256_permutevar8x32_ps(dd, _mm256_add_epi32(ir, _mm256_set1_epi32(4))), dx8),
                            _mm256_set1_ps(-0.0f));
}

/* The two f32 steps of the pairs with a min term (Q4_K, Q5_K, Q2_K), pair p = weight row p % R,
 * x row p / R (P = R·N <= 8): lane p of acc = fma((float)Σ lanes I[r·ldI + i], fd, acc), then
 * fma((float)Σ lanes m[r]·X[i] (vpmaddwd), fm, acc). The totals of all pairs from one
 * horizontal-sum tree (two for P > 4). */
KQX_INL void kq_two_steps_pairs(int R, int N, const __m256i *I, int ldI, const __m256i *m, const __m256i *X, __m256 fd,
                                __m256 fm, __m256 *acc) {
    const int P = R * N;
    __m256i iv[8], mv[8];
#pragma GCC unroll 8
    for (int p = 0; p < 8; p++) {
        iv[p] = p < P ? I[(p % R) * ldI + p / R] : _mm256_setzero_si256();
        mv[p] = p < P ? _mm256_madd_epi16(m[p % R], X[p / R]) : _mm256_setzero_si256();
    }
    if (P <= 4) {
        const __m256i v[8] = {iv[0], iv[1], iv[2], iv[3], mv[0], mv[1], mv[2], mv[3]};
        const __m256 s = _mm256_cvtepi32_ps(kq_hsum8x8(v)); /* [I_0..3 | M_0..3] */
        __m128 a = _mm256_castps256_ps128(*acc);
        a = _mm_fmadd_ps(_mm256_castps256_ps128(s), _mm256_castps256_ps128(fd), a);
        a = _mm_fmadd_ps(_mm256_extractf128_ps(s, 1), _mm256_castps256_ps128(fm), a);
        *acc = _mm256_castps128_ps256(a);
        return;
    }
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(kq_hsum8x8(iv)), fd, *acc);
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(kq_hsum8x8(mv)), fm, *acc);
}

/* Q4_K / Q5_K super-block b (BB bytes each) of weight rows r < R against x rows i0 + i, i < N
 * (R·N <= 8): I[r][i] = the lanes' integer sums, m32[r] = the row's mins. The canonical f32 step
 * (qmatmul.h): the exact totals I = Σ lanes, M = Σ_j m_j·X_j, then lane p of acc =
 * fma((float)I, d·dx, acc), fma((float)M, −(dmin·dx), acc). The totals of all pairs come from
 * one horizontal-sum tree (two for R·N > 4). */
KQX_INL void kq_q4k_finish_pairs(int R, int N, const uint8_t *w, size_t rb, int BB, int64_t b, const kq_x *x, int i0,
                           __m256i I[4][8], const __m256i m32[4], __m256 *acc) {
    const int64_t cols = x->cols;
    __m256i X[8];
    for (int i = 0; i < N; i++)
        X[i] = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(x->gsum + (i0 + i) * (cols / 32) + 8 * b)));
    __m256 fd, fm;
    kq_pair_factors(R, N, kq_q4k_dd4(R, w, rb, BB, b), x, i0, b, &fd, &fm);
    /* m·X: m (0..63) in each int32's low word, high word 0, so vpmaddwd gives m·X exactly */
    kq_two_steps_pairs(R, N, &I[0][0], 8, m32, X, fd, fm, acc);
}

/* y[i·ldy + r] (+)= lane r of acc[i]: the one-lane outputs of the Q8_0 / Q4_0 tiles. */
KQX_INL void kq_store1(int R, int N, const __m128 acc[4], float *y, int64_t ldy, float beta) {
    for (int i = 0; i < N; i++) {
        float a[4];
        _mm_storeu_ps(a, acc[i]);
        for (int r = 0; r < R; r++) {
            float *yp = y + i * ldy + r;
            *yp = beta != 0.0f ? *yp + a[r] : a[r];
        }
    }
}

/* y[i·ldy + r] (+)= lane i·R + r of acc: the K-quant tiles' outputs (pairs, above). */
KQX_INL void kq_store_pairs(int R, int N, __m256 acc, float *y, int64_t ldy, float beta) {
    float a[8];
    _mm256_storeu_ps(a, acc);
    for (int p = 0; p < R * N; p++) {
        float *yp = y + (p / R) * ldy + p % R;
        *yp = beta != 0.0f ? *yp + a[p] : a[p];
    }
}

/* Q3_K: the 16 group scales sc_g − 32 (−32..31) of the super-block at p as words (kq_q3k_scales16). */
KQX_INL __m256i kq_q3k_sc16(const uint8_t *p) {
    /* the 12 scale bytes b (p + 96): sc_g's low 4 bits are b[g] & 15 (g < 8) or b[g − 8] >> 4,
     * its high 2 bits (b[8 + g % 4] >> 2·(g / 4)) & 3 — the same shift for the 4 bytes of dword
     * g / 4, so one vpsrlvd; (the scalar spelling is kq_q3k_scales16) */
    int32_t h4;
    memcpy(&h4, p + 104, 4);
    const __m128i v = _mm_insert_epi32(_mm_loadl_epi64((const __m128i *)(p + 96)), h4, 2), m4 = _mm_set1_epi8(15);
    const __m128i low = _mm_unpacklo_epi64(_mm_and_si128(v, m4), _mm_and_si128(_mm_srli_epi16(v, 4), m4));
    const __m128i hb = _mm_shuffle_epi8(v, _mm_setr_epi8(8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11));
    const __m128i high = _mm_and_si128(_mm_srlv_epi32(hb, _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));
    return _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_or_si128(low, _mm_slli_epi16(high, 4))), _mm256_set1_epi16(32));
}

/* The Q6_K family (BITS: Q6_K 6, Q3_K 3, Q2_K 2): 16 groups of 16 codes, one f32 step per
 * super-block of kq_k16_bytes(BITS) bytes. */
KQX_INL int kq_k16_bytes(int BITS) { return BITS == 6 ? 210 : BITS == 3 ? 110 : 84; }

/* The 16 group scales as words of the super-block at p: Q6_K's int8 sc_g, Q3_K's sc_g − 32,
 * Q2_K's scales[g] & 15. */
KQX_INL __m256i kq_k16_sc16(int BITS, const uint8_t *p) {
    if (BITS == 3) return kq_q3k_sc16(p);
    if (BITS == 2) return _mm256_and_si256(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)), _mm256_set1_epi16(15));
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 192)));
}

/* Q2_K's 16 group mins scales[g] >> 4 as words. */
KQX_INL __m256i kq_q2k_m16(const uint8_t *p) {
    return _mm256_srli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)), 4);
}

/* Super-block b of weight rows r < R (R <= 4) of the Q6_K family: nsc[r] = the code offset's
 * factors −32·sc_g (Q6_K, |·| <= 4096) or −4·(sc_g − 32) (Q3_K), or Q2_K's mins m_g, as 16 words;
 * the rows' d in lanes 0..R-1 (returned) and, for Q2_K, their dmin in *dmin's. */
KQX_INL __m128 kq_q6k_nsc_d(int BITS, int R, const uint8_t *w, size_t rb, int64_t b, __m256i nsc[4], __m128 *dmin) {
    const int BB = kq_k16_bytes(BITS);
    uint16_t hd[4] = {0}, hm[4] = {0};
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        const uint8_t *p = w + r * rb + BB * b;
        if (BITS == 2) {
            nsc[r] = kq_q2k_m16(p);
            memcpy(&hd[r], p + 80, 2);
            memcpy(&hm[r], p + 82, 2);
            continue;
        }
        nsc[r] = _mm256_mullo_epi16(kq_k16_sc16(BITS, p), _mm256_set1_epi16(BITS == 3 ? -4 : -32));
        memcpy(&hd[r], p + BB - 2, 2);
    }
    /* built in a register (four narrow stores and one wide load would stall) */
    if (dmin) *dmin = _mm_cvtph_ps(_mm_setr_epi16((short)hm[0], (short)hm[1], (short)hm[2], (short)hm[3], 0, 0, 0, 0));
    return _mm_cvtph_ps(_mm_setr_epi16((short)hd[0], (short)hd[1], (short)hd[2], (short)hd[3], 0, 0, 0, 0));
}

/* Q6_K-family super-block b of weight rows r < R against x rows i0 + i, i < N (R·N <= 8): the
 * exact totals of every pair from horizontal-sum trees, then lane p of acc = fma((float)T, d·dx,
 * acc) (qmatmul.h). Q6_K, Q3_K: T = Σ lanes (I[r][i] + nsc_g·G_g, the code offset). Q2_K: T = Σ
 * lanes I[r][i] and M = Σ m_g·G_g, then fma((float)M, −(dmin·dx), acc) after. */
KQX_INL void kq_q6k_finish_pairs(int BITS, int R, int N, const uint8_t *w, size_t rb, int64_t b, const kq_x *x, int i0,
                           __m256i I[4][4], __m256 *acc) {
    const int64_t cols = x->cols;
    const int P = R * N;
    __m256i nsc[4], G[4];
    __m128 dm;
    const __m128 d = kq_q6k_nsc_d(BITS, R, w, rb, b, nsc, &dm);
    for (int i = 0; i < N; i++) G[i] = _mm256_loadu_si256((const __m256i *)(x->gsum + (i0 + i) * (cols / 16) + 16 * b));
    if (BITS == 2) { /* kq_q4k_finish_pairs's steps with the mins' products per 16 */
        __m256 fd, fm;
        kq_pair_factors(R, N, _mm256_set_m128(dm, d), x, i0, b, &fd, &fm);
        kq_two_steps_pairs(R, N, &I[0][0], 4, nsc, G, fd, fm, acc);
        return;
    }
#define KQ_T(p) ((p) < P ? _mm256_add_epi32(I[(p) % R][(p) / R], _mm256_madd_epi16(nsc[(p) % R], G[(p) / R])) \
                         : _mm256_setzero_si256())
    const __m256i v[8] = {KQ_T(0), KQ_T(1), KQ_T(2), KQ_T(3), KQ_T(4), KQ_T(5), KQ_T(6), KQ_T(7)};
#undef KQ_T
    const __m256 T = _mm256_cvtepi32_ps(kq_hsum8x8(v));
    __m256 fd;
    kq_pair_factors(R, N, _mm256_set_m128(d, d), x, i0, b, &fd, NULL);
    *acc = _mm256_fmadd_ps(T, fd, *acc);
}

/* The row form of kq_q4k_finish_pairs for one x row (decode: N = 1 with R <= 4, the lanes are
 * the rows), kept apart: the pair form measured ~4% slower there. Q4_K / Q5_K super-block b
 * (BB bytes each) of weight rows r < R (R <= 4) against x rows i0 + i,
 * i < N: I[r][i] = the lanes' integer sums, m32[r] = the row's mins. The canonical f32 step
 * (qmatmul.h): the exact totals I = Σ lanes, M = Σ_j m_j·X_j, then acc[i] (lane r) =
 * fma((float)I, d·dx, acc), fma((float)M, −(dmin·dx), acc). */
KQX_INL void kq_q4k_finish(int R, int N, const uint8_t *w, size_t rb, int BB, int64_t b, const kq_x *x, int i0,
                           __m256i I[4][8], const __m256i m32[4], __m128 acc[4]) {
    const int64_t cols = x->cols, nb = cols / 256;
    const __m256 dd = kq_q4k_dd4(R, w, rb, BB, b);
    for (int i = 0; i < N; i++) {
        const int64_t row = i0 + i;
        const __m256i X = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(x->gsum + row * (cols / 32) + 8 * b)));
        __m256i v[8];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            v[r] = r < R ? I[r][i] : _mm256_setzero_si256();
            /* m·X: m (0..63) in each int32's low word, high word 0, so vpmaddwd gives m·X exactly */
            v[4 + r] = r < R ? _mm256_madd_epi16(m32[r], X) : _mm256_setzero_si256();
        }
        const __m256 s = _mm256_cvtepi32_ps(kq_hsum8x8(v)); /* [I_0..3 | M_0..3] */
        const __m256 f = _mm256_xor_ps(_mm256_mul_ps(dd, _mm256_set1_ps(x->d[row * nb + b])),
                                       _mm256_setr_ps(0, 0, 0, 0, -0.0f, -0.0f, -0.0f, -0.0f)); /* d·dx | −(dmin·dx) */
        acc[i] = _mm_fmadd_ps(_mm256_castps256_ps128(s), _mm256_castps256_ps128(f), acc[i]);
        acc[i] = _mm_fmadd_ps(_mm256_extractf128_ps(s, 1), _mm256_extractf128_ps(f, 1), acc[i]);
    }
}

/* The row form of kq_q6k_finish_pairs (decode, as kq_q4k_finish): super-block b of weight rows
 * r < R (R <= 4) against x rows i0 + i, i < N; acc[i] (lane r) as kq_q6k_finish_pairs's lanes. */
KQX_INL void kq_q6k_finish(int BITS, int R, int N, const uint8_t *w, size_t rb, int64_t b, const kq_x *x, int i0,
                           __m256i I[4][4], __m128 acc[4]) {
    const int64_t cols = x->cols, nb = cols / 256;
    __m256i nsc[4];
    __m128 dm;
    const __m128 d = kq_q6k_nsc_d(BITS, R, w, rb, b, nsc, &dm);
    for (int i = 0; i < N; i++) {
        const int64_t row = i0 + i;
        const __m256i G = _mm256_loadu_si256((const __m256i *)(x->gsum + row * (cols / 16) + 16 * b));
        const __m128 dx = _mm_set1_ps(x->d[row * nb + b]);
        __m256i v[8];
        if (BITS == 2) {
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                v[r] = r < R ? I[r][i] : _mm256_setzero_si256();
                v[4 + r] = r < R ? _mm256_madd_epi16(nsc[r], G) : _mm256_setzero_si256();
            }
            const __m256 s = _mm256_cvtepi32_ps(kq_hsum8x8(v)); /* [T_0..3 | M_0..3] */
            acc[i] = _mm_fmadd_ps(_mm256_castps256_ps128(s), _mm_mul_ps(d, dx), acc[i]);
            acc[i] = _mm_fmadd_ps(_mm256_extractf128_ps(s, 1), _mm_xor_ps(_mm_mul_ps(dm, dx), _mm_set1_ps(-0.0f)), acc[i]);
            continue;
        }
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++)
            v[r] = r < R ? _mm256_add_epi32(I[r][i], _mm256_madd_epi16(nsc[r], G)) : _mm256_setzero_si256();
        const __m128 T = _mm_cvtepi32_ps(_mm256_castsi256_si128(kq_hsum8x8(v)));
        acc[i] = _mm_fmadd_ps(T, _mm_mul_ps(d, dx), acc[i]);
    }
}

/* The five K-quant types as X(TAG, TILE, P, R, N): the tag of their entry points, the tile that runs
 * them and its type parameter (FIVE for q4k_tile, BITS for q6k_tile); R, N pass through. */
#define KQ_KTYPES_EACH(X, R, N)                                                                                \
    X(q4k, q4k_tile, 0, R, N) X(q5k, q4k_tile, 1, R, N) X(q6k, q6k_tile, 6, R, N) X(q3k, q6k_tile, 3, R, N)     \
    X(q2k, q6k_tile, 2, R, N)

/* The K-quant tiles' entry points of one R × N shape, q4k_R_N ... q2k_R_N (the tile_fn signature),
 * for a file that defines KQ_TGT and the inline q4k_tile(FIVE, R, N, ...) and q6k_tile(BITS, R, N,
 * ...) of its instruction set. */
#define KQ_KTILE_FN(TAG, TILE, P, R, N)                                                                        \
    static KQ_TGT void TAG##_##R##_##N(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y,          \
                                       int64_t ldy, float beta) {                                             \
        TILE(P, R, N, w, rb, x, i0, y, ldy, beta);                                                            \
    }
#define KQ_KTILE_DEF(R, N) KQ_KTYPES_EACH(KQ_KTILE_FN, R, N)

#endif
