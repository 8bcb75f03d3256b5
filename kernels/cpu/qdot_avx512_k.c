/* kernels/cpu/qdot_avx512_k.c — the K-quants (Q4_K, Q5_K, Q6_K) on AVX-512 (the VNNI path of
 * qmatmul.h; Q8_0 and Q4_0 are in qdot_avx512.c).
 *
 * The AVX2 tiles' integer loop (qdot_avx2.c) at twice the width: one zmm holds two 32-code
 * chunks of a super-block (2k in the low 256 bits, 2k + 1 in the high), vpmaddubsw makes the
 * pair sums (u8 code × s8 x, never saturating: at most 2·63·127) and vpdpwssd multiplies them
 * by each chunk's 16-bit scale and adds to the int32 lanes in one instruction (the AVX2 path's
 * vpmaddwd + vpaddd). At the end of a super-block the two halves are added, giving exactly the
 * AVX2 path's 8 int32 lane sums, and the f32 step is the shared one (qdot_kquant_x86.h):
 * bit-identical to AVX2 and scalar (tests/unit/test_kernels_quant.c runs every path).
 *   Q4_K: the 32 qs bytes of chunks 2k, 2k+1 once, low nibbles below, high nibbles above.
 *   Q5_K: as Q4_K, + 16 where bit c of qh[l] is set (a byte mask test, a masked add).
 *   Q6_K: chunks 4h + 2m, 4h + 2m + 1 are the 64 ql bytes at 64h, nibble m, with bits 4m + .. of
 *         the 32 qh bytes at 128 + 32h (a variable 16-bit shift per half); scale groups
 *         4m' .. 4m' + 3 (m' = 2h + m) in the four 128-bit lanes.
 * Tiles: 4 weight rows × 1 x row (decode), 2 × up to 4 (batches), 1 × up to 4 (the last row);
 * the first x group of a row tile prefetches KQ_PF ahead, as the AVX2 tiles. Compiled for
 * these instructions by target attributes; called only when the CPU has them. */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/qdot_kquant_x86.h"
#include "kernels/cpu/qmatmul.h"

#define KQ_TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define KQ_INL static inline __attribute__((always_inline)) KQ_TGT

/* The exact int32 lane sums of the low and high chunk of each zmm, added: AVX2's 8 lanes. */
KQ_INL __m256i kq_fold(__m512i I) {
    return _mm256_add_epi32(_mm512_castsi512_si256(I), _mm512_extracti64x4_epi64(I, 1));
}

/* vpermw index: word a in the low 256 bits, word b in the high 256 bits. */
KQ_INL __m512i kq_idx2(int a, int b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)a)), _mm256_set1_epi16((short)b), 1);
}

/* Q4_K (FIVE = 0) and Q5_K (FIVE = 1): R weight rows × N x rows. */
KQ_INL void q4k_tile(int FIVE, int R, int N, const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y,
                     int64_t ldy, float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const int BB = FIVE ? 176 : 144, QS = FIVE ? 48 : 16;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < N; i++) acc[r][i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i sc16[4], m32[4], I8[4][4];
        __m512i scw[4], I[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + BB * b;
            if (i0 == 0) {
                __builtin_prefetch(p + KQ_PF, 0, 2);
                __builtin_prefetch(p + KQ_PF + 64, 0, 2);
                __builtin_prefetch(p + KQ_PF + BB - 1, 0, 2);
            }
            kq_q4k_scales8(p, &sc16[r], &m32[r]);
            scw[r] = _mm512_castsi256_si512(sc16[r]); /* words 0-7: sc_0..7 */
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) I[r][i] = _mm512_setzero_si512();
        }
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            __m512i wv[4], s[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *p = w + r * rb + BB * b;
                __m256i q = _mm256_loadu_si256((const __m256i *)(p + QS + 32 * k));
                wv[r] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(q, m4)),
                                           _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), 1);
                if (FIVE) { /* + 16 where bit 2k (low chunk) / 2k + 1 (high) of qh[l] is set */
                    __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + 16)));
                    __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << 2 * k)),
                                                     _mm256_set1_epi8((char)(1 << (2 * k + 1))), 1);
                    wv[r] = _mm512_mask_add_epi8(wv[r], _mm512_test_epi8_mask(qh, bit), wv[r], _mm512_set1_epi8(16));
                }
                s[r] = _mm512_permutexvar_epi16(kq_idx2(2 * k, 2 * k + 1), scw[r]);
            }
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) {
                __m512i xv = _mm512_loadu_si512(x->q + (i0 + i) * cols + 256 * b + 64 * k);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) I[r][i] = _mm512_dpwssd_epi32(I[r][i], _mm512_maddubs_epi16(wv[r], xv), s[r]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) I8[r][i] = kq_fold(I[r][i]);
        kq_q4k_finish(R, N, w, rb, BB, b, x, i0, I8, m32, acc);
    }
    kq_store8(R, N, acc, y, ldy, beta);
}

/* Q6_K: R weight rows × N x rows. */
KQ_INL void q6k_tile(int R, int N, const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y, int64_t ldy,
                     float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    /* bits 2k, 2k+1 of qh to bits 4, 5: k = 0, 1 shift left by 4, 2; k = 2, 3 by 0, right by 2
     * (16-bit shifts: bits crossing a byte boundary land outside the 0x30 mask) */
    const __m512i shl01 = kq_idx2(4, 2), shr23 = kq_idx2(0, 2);
    __m256 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < N; i++) acc[r][i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i scw[4], I[4][4];
        __m256i I8[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + 210 * b;
            if (i0 == 0)
                for (int o = 0; o < 210; o += 64) __builtin_prefetch(p + KQ_PF + o, 0, 2);
            scw[r] = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 192))));
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) I[r][i] = _mm512_setzero_si512();
        }
#pragma GCC unroll 4
        for (int mm = 0; mm < 4; mm++) { /* chunks 2mm, 2mm + 1 = 4h + 2m, 4h + 2m + 1 */
            const int h = mm / 2, m = mm % 2;
            const __m512i idx = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_setr_epi16(4 * mm, 4 * mm, 4 * mm, 4 * mm, 4 * mm, 4 * mm, 4 * mm,
                                                          4 * mm, 4 * mm + 1, 4 * mm + 1, 4 * mm + 1, 4 * mm + 1,
                                                          4 * mm + 1, 4 * mm + 1, 4 * mm + 1, 4 * mm + 1)),
                _mm256_setr_epi16(4 * mm + 2, 4 * mm + 2, 4 * mm + 2, 4 * mm + 2, 4 * mm + 2, 4 * mm + 2, 4 * mm + 2,
                                  4 * mm + 2, 4 * mm + 3, 4 * mm + 3, 4 * mm + 3, 4 * mm + 3, 4 * mm + 3, 4 * mm + 3,
                                  4 * mm + 3, 4 * mm + 3),
                1);
            __m512i wv[4], s[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *p = w + r * rb + 210 * b;
                __m512i ql = _mm512_loadu_si512(p + 64 * h);
                __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h)));
                __m512i lo = _mm512_and_si512(m ? _mm512_srli_epi16(ql, 4) : ql, m4);
                __m512i hs = m ? _mm512_srlv_epi16(qh, shr23) : _mm512_sllv_epi16(qh, shl01);
                wv[r] = _mm512_or_si512(lo, _mm512_and_si512(hs, m30));
                s[r] = _mm512_permutexvar_epi16(idx, scw[r]);
            }
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) {
                __m512i xv = _mm512_loadu_si512(x->q + (i0 + i) * cols + 256 * b + 64 * mm);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) I[r][i] = _mm512_dpwssd_epi32(I[r][i], _mm512_maddubs_epi16(wv[r], xv), s[r]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) I8[r][i] = kq_fold(I[r][i]);
        kq_q6k_finish(R, N, w, rb, b, x, i0, I8, acc);
    }
    kq_store8(R, N, acc, y, ldy, beta);
}

typedef void (*tile_fn)(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y, int64_t ldy, float beta);
#define KTILE_DEF(R, N)                                                                                       \
    static KQ_TGT void q4k_##R##_##N(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y,            \
                                     int64_t ldy, float beta) {                                               \
        q4k_tile(0, R, N, w, rb, x, i0, y, ldy, beta);                                                        \
    }                                                                                                         \
    static KQ_TGT void q5k_##R##_##N(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y,            \
                                     int64_t ldy, float beta) {                                               \
        q4k_tile(1, R, N, w, rb, x, i0, y, ldy, beta);                                                        \
    }                                                                                                         \
    static KQ_TGT void q6k_##R##_##N(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y,            \
                                     int64_t ldy, float beta) {                                               \
        q6k_tile(R, N, w, rb, x, i0, y, ldy, beta);                                                           \
    }
KTILE_DEF(4, 1) KTILE_DEF(2, 1) KTILE_DEF(2, 2) KTILE_DEF(2, 3) KTILE_DEF(2, 4)
KTILE_DEF(1, 1) KTILE_DEF(1, 2) KTILE_DEF(1, 3) KTILE_DEF(1, 4)
/* [4 rows (one x row only) | 2 rows | 1 row][N - 1] */
static const tile_fn q4k_tiles[3][4] = {{q4k_4_1}, {q4k_2_1, q4k_2_2, q4k_2_3, q4k_2_4}, {q4k_1_1, q4k_1_2, q4k_1_3, q4k_1_4}};
static const tile_fn q5k_tiles[3][4] = {{q5k_4_1}, {q5k_2_1, q5k_2_2, q5k_2_3, q5k_2_4}, {q5k_1_1, q5k_1_2, q5k_1_3, q5k_1_4}};
static const tile_fn q6k_tiles[3][4] = {{q6k_4_1}, {q6k_2_1, q6k_2_2, q6k_2_3, q6k_2_4}, {q6k_1_1, q6k_1_2, q6k_1_3, q6k_1_4}};

void kq_rows_avx512_k(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                      int64_t ldy, float beta) {
    const tile_fn (*t)[4] = dt == KDT_Q5_K ? q5k_tiles : dt == KDT_Q6_K ? q6k_tiles : q4k_tiles;
    for (int64_t r = r0; r < r1;) {
        int R = x->n == 1 && r1 - r >= 4 ? 4 : r1 - r >= 2 ? 2 : 1;
        const tile_fn *fns = t[R == 4 ? 0 : R == 2 ? 1 : 2];
        for (int i = 0; i < x->n; i += 4) {
            int N = x->n - i < 4 ? x->n - i : 4;
            fns[N - 1](w + r * rb, rb, x, i, y + (int64_t)i * ldy + r, ldy, beta);
        }
        r += R;
    }
}
