/* kernels/cpu/qdot_avx2.c — the AVX2 path of the quantized matmul (qmatmul.h): tiles of up
 * to 2 weight rows × 2 x rows, each output's 16 canonical lanes held as two 8-lane halves
 * (lo: lanes 0-7, hi: lanes 8-15). Products by vpmaddubsw (u8 × s8 pairs → s16, which never
 * saturates here) then vpmaddwd by ones (→ s32 sums of 4 adjacent products, the same lane
 * partials as vpdpbusd):
 *   Q8_0: u8 = |w|, s8 = x with w's sign (|w|·sign(x, w) = w·x; |w| <= 128, |x| <= 127).
 *   Q4_0: the same on w = nibble − 8.
 *   Q4_K: u8 = the nibble (0..15), s8 = x.
 *   Q5_K: u8 = nibble | 5th bit << 4 (0..31), s8 = x.
 *   Q6_K: u8 = the 6-bit code (0..63), s8 = x, then + kq_x.corr (−32·Σx per lane): the same
 *         exact Σ (q6 − 32)·x as the other paths (|pair sum| <= 2·63·127 < 32768).
 * Compiled for AVX2 by target attributes; called only when the CPU has it. */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/qmatmul.h"

#define KQ_TGT __attribute__((target("avx2,fma,f16c")))
#define KQ_INL static inline __attribute__((always_inline)) KQ_TGT

KQ_INL float kq_h(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* The canonical reduction of lanes lo (0-7) and hi (8-15). */
KQ_INL float kq_r16(__m256 lo, __m256 hi) {
    __m256 t = _mm256_add_ps(lo, hi);
    __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    __m128 v = _mm_add_ps(u, _mm_movehl_ps(u, u));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

/* Lane partials (8 × s32) of u8 a · s8 b over 32 bytes. */
KQ_INL __m256i kq_dot32(__m256i a, __m256i b) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
}

KQ_INL void kq_store(int R, int N, __m256 acc[2][2][2], float *y, int64_t ldy, float beta) {
    for (int r = 0; r < R; r++)
        for (int i = 0; i < N; i++) {
            float s = kq_r16(acc[r][i][0], acc[r][i][1]), *yp = y + i * ldy + r;
            *yp = beta != 0.0f ? *yp + s : s;
        }
}

KQ_INL void q8_tile(kdtype DT, int R, int N, const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y, int64_t ldy,
                    float beta) {
    const int64_t cols = x->cols, nb = cols / 32;
    __m256 acc[2][2][2];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < N; i++) acc[r][i][0] = acc[r][i][1] = _mm256_setzero_ps();
    /* two blocks per pass so that h (= b % 2, the lane half) is a constant and the
     * accumulators stay in registers */
    for (int64_t b0 = 0; b0 < nb; b0 += 2)
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        const int64_t b = b0 + h;
        if (b >= nb) break;
        __m256i wv[2], aw[2];
        __m256 dw[2];
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + (DT == KDT_Q8_0 ? 34 : 18) * b;
            if (DT == KDT_Q4_0) { /* nibble - 8: low nibbles are elements 0-15, high 16-31 */
                __m128i q = _mm_loadu_si128((const __m128i *)(p + 2)), m4 = _mm_set1_epi8(15);
                wv[r] = _mm256_sub_epi8(_mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4)),
                                        _mm256_set1_epi8(8));
            } else {
                wv[r] = _mm256_loadu_si256((const __m256i *)(p + 2));
            }
            aw[r] = _mm256_abs_epi8(wv[r]);
            dw[r] = _mm256_set1_ps(kq_h(p));
        }
        #pragma GCC unroll 8
        for (int i = 0; i < N; i++) {
            int64_t row = i0 + i;
            __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + row * cols + 32 * b));
            __m256 dx = _mm256_set1_ps(x->d[row * nb + b]);
            #pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                __m256i s = kq_dot32(aw[r], _mm256_sign_epi8(xv, wv[r]));
                acc[r][i][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw[r], dx), acc[r][i][h]);
            }
        }
    }
    kq_store(R, N, acc, y, ldy, beta);
}

/* The 8 sub-block factors of a Q4_K / Q5_K super-block at p: dsc[s] = d·(float)sc_s and
 * negm[s] = -(dmin·(float)m_s) (the scalar path's f32 operations), the 6-bit fields unpacked
 * four at a time from the 12 scale bytes read as 32-bit words (as qdot_avx512.c does). */
KQ_INL void kq_q4k_scales8(const uint8_t *p, __m256 *dsc, __m256 *negm) {
    uint32_t u[3];
    memcpy(u, p + 4, 12);
    uint64_t sc = (uint64_t)(u[0] & 0x3f3f3f3fu) | (uint64_t)((u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u)) << 32;
    uint64_t m = (uint64_t)(u[1] & 0x3f3f3f3fu) |
                 (uint64_t)(((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u)) << 32;
    __m256 scf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc)));
    __m256 mf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)m)));
    *dsc = _mm256_mul_ps(_mm256_set1_ps(kq_h(p)), scf);
    *negm = _mm256_xor_ps(_mm256_mul_ps(_mm256_set1_ps(kq_h(p + 2)), mf), _mm256_set1_ps(-0.0f));
}

KQ_INL void q4k_tile(int FIVE, int R, int N, const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y,
                     int64_t ldy, float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const int BB = FIVE ? 176 : 144, QS = FIVE ? 48 : 16;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc[2][2][2];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < N; i++) acc[r][i][0] = acc[r][i][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256 dsc[2], negm[2], dscx[2][2]; /* dscx[r][i] = (d·sc_s)·dx_i, the canonical factor */
        for (int r = 0; r < R; r++) kq_q4k_scales8(w + r * rb + BB * b, &dsc[r], &negm[r]);
        for (int i = 0; i < N; i++) {
            __m256 dx = _mm256_set1_ps(x->d[(i0 + i) * nb + b]);
            for (int r = 0; r < R; r++) dscx[r][i] = _mm256_mul_ps(dsc[r], dx);
        }
        #pragma GCC unroll 8
        for (int v = 0; v < 4; v++)
            #pragma GCC unroll 8
            for (int h = 0; h < 2; h++) {
                const int s = 4 * (v / 2) + v % 2 + 2 * h;
                const __m256i si = _mm256_set1_epi32(s);
                __m256i wv[2];
                #pragma GCC unroll 8
                for (int r = 0; r < R; r++) {
                    const uint8_t *p = w + r * rb + BB * b;
                    __m256i q = _mm256_loadu_si256((const __m256i *)(p + QS + 64 * (v / 2) + 32 * h));
                    wv[r] = v % 2 ? _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) : _mm256_and_si256(q, m4);
                    if (FIVE) { /* | 16 where bit s of qh[l] is set */
                        const __m256i bit = _mm256_set1_epi8((char)(1 << s));
                        __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 16));
                        __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                        wv[r] = _mm256_or_si256(wv[r], _mm256_and_si256(set, _mm256_set1_epi8(16)));
                    }
                }
                #pragma GCC unroll 8
                for (int i = 0; i < N; i++) {
                    int64_t row = i0 + i;
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + row * cols + 256 * b + 32 * (2 * v + h)));
                    #pragma GCC unroll 8
                    for (int r = 0; r < R; r++) {
                        __m256i p = kq_dot32(wv[r], xv);
                        __m256 f = _mm256_permutevar8x32_ps(dscx[r][i], si); /* (d·sc_s)·dx in every lane */
                        acc[r][i][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), f, acc[r][i][h]);
                    }
                }
            }
        for (int i = 0; i < N; i++) {
            __m256 xs = _mm256_loadu_ps(x->xs + (i0 + i) * (cols / 32) + 8 * b);
            for (int r = 0; r < R; r++) acc[r][i][0] = _mm256_fmadd_ps(negm[r], xs, acc[r][i][0]);
        }
    }
    kq_store(R, N, acc, y, ldy, beta);
}

/* Q6_K: step t of qmatmul.h in two halves h2 (lanes 8·h2 + j: elements 64t + 32·h2 + 4j + e). */
KQ_INL void q6k_tile(int R, int N, const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y, int64_t ldy,
                     float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    __m256 acc[2][2][2];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < N; i++) acc[r][i][0] = acc[r][i][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256 dsc[2][2][2]; /* [r][i][groups 0-7 | 8-15]: (d·(float)sc_g)·dx_i, the canonical factor */
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + 210 * b;
            __m256 d = _mm256_set1_ps(kq_h(p + 208));
            __m128i sc = _mm_loadu_si128((const __m128i *)(p + 192));
            __m256 s0 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)));
            __m256 s1 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8))));
            for (int i = 0; i < N; i++) {
                __m256 dx = _mm256_set1_ps(x->d[(i0 + i) * nb + b]);
                dsc[r][i][0] = _mm256_mul_ps(s0, dx);
                dsc[r][i][1] = _mm256_mul_ps(s1, dx);
            }
        }
        #pragma GCC unroll 8
        for (int t = 0; t < 4; t++)
            #pragma GCC unroll 8
            for (int h2 = 0; h2 < 2; h2++) {
                const int h = t / 2, odd = t % 2, g = 4 * t + 2 * h2, k = 2 * odd + h2;
                const __m256i gi = _mm256_setr_epi32(g % 8, g % 8, g % 8, g % 8, g % 8 + 1, g % 8 + 1, g % 8 + 1, g % 8 + 1);
                __m256i wv[2];
                #pragma GCC unroll 8
                for (int r = 0; r < R; r++) {
                    const uint8_t *p = w + r * rb + 210 * b;
                    __m256i ql = _mm256_loadu_si256((const __m256i *)(p + 64 * h + 32 * h2));
                    __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h));
                    __m256i lo = _mm256_and_si256(odd ? _mm256_srli_epi16(ql, 4) : ql, m4);
                    /* bits 2k, 2k+1 of qh to bits 4, 5 in one 16-bit shift: bits crossing a byte
                     * boundary land outside the 0x30 mask */
                    __m256i hs = k == 0 ? _mm256_slli_epi16(qh, 4)
                                 : k == 1 ? _mm256_slli_epi16(qh, 2)
                                 : k == 2 ? qh
                                          : _mm256_srli_epi16(qh, 2);
                    wv[r] = _mm256_or_si256(lo, _mm256_and_si256(hs, m30));
                }
                #pragma GCC unroll 8
                for (int i = 0; i < N; i++) {
                    int64_t row = i0 + i;
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + row * cols + 256 * b + 64 * t + 32 * h2));
                    __m256i xc = _mm256_loadu_si256((const __m256i *)(x->corr + row * (cols / 4) + 64 * b + 16 * t + 8 * h2));
                    #pragma GCC unroll 8
                    for (int r = 0; r < R; r++) {
                        __m256i pp = _mm256_add_epi32(kq_dot32(wv[r], xv), xc);
                        __m256 f = _mm256_permutevar8x32_ps(dsc[r][i][g / 8], gi); /* lanes 0-3: g, 4-7: g + 1 */
                        acc[r][i][h2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pp), f, acc[r][i][h2]);
                    }
                }
            }
    }
    kq_store(R, N, acc, y, ldy, beta);
}

typedef void (*tile_fn)(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y, int64_t ldy, float beta);
#define TILE_DEF(R, N)                                                                                        \
    static KQ_TGT void q8_##R##_##N(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y, int64_t ldy, \
                                    float beta) {                                                             \
        q8_tile(KDT_Q8_0, R, N, w, rb, x, i0, y, ldy, beta);                                                  \
    }                                                                                                         \
    static KQ_TGT void q40_##R##_##N(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y,            \
                                     int64_t ldy, float beta) {                                               \
        q8_tile(KDT_Q4_0, R, N, w, rb, x, i0, y, ldy, beta);                                                  \
    }                                                                                                         \
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
TILE_DEF(2, 1) TILE_DEF(2, 2) TILE_DEF(1, 1) TILE_DEF(1, 2)
static const tile_fn q8_tiles[2][2] = {{q8_2_1, q8_2_2}, {q8_1_1, q8_1_2}};
static const tile_fn q40_tiles[2][2] = {{q40_2_1, q40_2_2}, {q40_1_1, q40_1_2}};
static const tile_fn q4k_tiles[2][2] = {{q4k_2_1, q4k_2_2}, {q4k_1_1, q4k_1_2}};
static const tile_fn q5k_tiles[2][2] = {{q5k_2_1, q5k_2_2}, {q5k_1_1, q5k_1_2}};
static const tile_fn q6k_tiles[2][2] = {{q6k_2_1, q6k_2_2}, {q6k_1_1, q6k_1_2}};

void kq_rows_avx2(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                  int64_t ldy, float beta) {
    for (int64_t r = r0; r < r1;) {
        int tall = r1 - r >= 2;
        const tile_fn *fns = (dt == KDT_Q8_0   ? q8_tiles
                              : dt == KDT_Q4_0 ? q40_tiles
                              : dt == KDT_Q5_K ? q5k_tiles
                              : dt == KDT_Q6_K ? q6k_tiles
                                               : q4k_tiles)[tall ? 0 : 1];
        for (int i = 0; i < x->n; i += 2) {
            int N = x->n - i < 2 ? x->n - i : 2;
            fns[N - 1](w + r * rb, rb, x, i, y + (int64_t)i * ldy + r, ldy, beta);
        }
        r += tall ? 2 : 1;
    }
}
