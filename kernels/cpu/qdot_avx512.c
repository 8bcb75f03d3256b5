/* kernels/cpu/qdot_avx512.c — the AVX-512 VNNI path of the quantized matmul (qmatmul.h):
 * (Q4_0 runs the Q8_0 tiles on its nibbles − 8.)
 * register tiles of up to 4 weight rows × 4 x rows, 16-lane f32 accumulators in the
 * canonical order, int8 products summed exactly by vpdpbusd (u8 × s8 → s32, 4 per lane).
 *   Q8_0: vpdpbusd wants one unsigned operand: the weights are offset by 128 (w ^ 0x80) and
 *         the accumulator starts at -128·Σx of the lane (kq_x.corr), so the lane is Σ w·x
 *         exactly. Two blocks (2 × 32 codes) per zmm: lanes 0-7 even block, 8-15 odd.
 *   Q4_K: the nibbles (0..15) are already unsigned; one zmm of 64 qs bytes gives two
 *         32-code sub-blocks per nibble half, matched by kq_x's permuted x layout.
 *   Q5_K: as Q4_K, each byte's 5th bit (0..31) added under a vptestmb mask of the qh bytes.
 *   Q6_K: the 6-bit codes unsigned (0..63: one zmm per 64 elements from 64 ql bytes and the
 *         32 qh bytes on both halves), the −32 offset folded in by starting the accumulator at
 *         −32·Σx of the lane (kq_x.corr); per-lane group scales by one permute of the 16.
 * Weight rows are read once per x group of 4; the first group prefetches KQ_PF bytes ahead.
 * Compiled for these instructions by target attributes and only called when the CPU has
 * them (kq_path_available). */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/qmatmul.h"

#define KQ_TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")))
#define KQ_INL static inline __attribute__((always_inline)) KQ_TGT
#define KQ_PF 16384 /* bytes ahead in each weight row (matmul.c measured 16-32 KiB best) */

KQ_INL float kq_h(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* The canonical reduction (kq_reduce16) of one 16-lane accumulator. */
KQ_INL float kq_r16(__m512 a) {
    __m256 t = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    __m128 v = _mm_add_ps(u, _mm_movehl_ps(u, u));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

KQ_INL void kq_store(int R, int N, __m512 acc[4][4], float *y, int64_t ldy, float beta) {
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            float s = kq_r16(acc[r][i]), *yp = y + i * ldy + r;
            *yp = beta != 0.0f ? *yp + s : s;
        }
}

KQ_INL uint16_t kq_u16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

/* The 32 codes of the Q4_0 block at p (elements 0-15: low nibbles, 16-31: high), as
 * nibble + 120 = (nibble - 8) ^ 0x80: the signed code offset to unsigned, as for Q8_0. */
KQ_INL __m256i q40_codes(const uint8_t *p) {
    __m128i q = _mm_loadu_si128((const __m128i *)(p + 2)), m4 = _mm_set1_epi8(15);
    __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
    return _mm256_add_epi8(v, _mm256_set1_epi8(120));
}

/* The codes of blocks p and p + BB (Q8_0: 34 bytes, Q4_0: 18) in one zmm, offset to unsigned
 * (w ^ 0x80). */
KQ_INL __m512i q8_wpair(kdtype dt, const uint8_t *p, __m512i x80, int pf) {
    if (dt == KDT_Q4_0) {
        if (pf) __builtin_prefetch(p + KQ_PF, 0, 2);
        return _mm512_inserti64x4(_mm512_castsi256_si512(q40_codes(p)), q40_codes(p + 18), 1);
    }
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p + 2))),
                                   _mm256_loadu_si256((const __m256i *)(p + 36)), 1);
    if (pf) {
        __builtin_prefetch(p + KQ_PF, 0, 2);
        __builtin_prefetch(p + KQ_PF + 64, 0, 2);
    }
    return _mm512_xor_si512(v, x80);
}

/* One step of two blocks (b, b + 1) for every (weight row, x row) pair of the tile. */
KQ_INL void q8_step(int R, int N, const __m512i wv[4], const __m512 dw[4], const kq_x *x, int i0, int64_t b,
                    __m512 acc[4][4]) {
    const int64_t cols = x->cols, nb = cols / 32;
#pragma GCC unroll 4
    for (int i = 0; i < N; i++) {
        int64_t row = i0 + i;
        __m512i xv = _mm512_loadu_si512(x->q + row * cols + 32 * b);
        __m512i xc = _mm512_loadu_si512(x->corr + row * (cols / 4) + 8 * b);
        const float *xd = x->d + row * nb + b;
        __m512 dx = _mm512_insertf32x8(_mm512_set1_ps(xd[0]), _mm256_set1_ps(xd[1]), 1);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m512i s = _mm512_dpbusd_epi32(xc, wv[r], xv);
            acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw[r], dx), acc[r][i]);
        }
    }
}

/* Q8_0: weight rows w (rb apart), x rows i0..i0+N-1; y at [i0, r0]. */
KQ_INL void q8_tile(kdtype DT, int R, int N, const uint8_t *w, size_t rb, int pf, const kq_x *x, int i0, float *y,
                    int64_t ldy, float beta) {
    const int64_t cols = x->cols, nb = cols / 32;
    const __m512i x80 = _mm512_set1_epi8((char)0x80);
    const int BB = DT == KDT_Q8_0 ? 34 : 18;
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) acc[r][i] = _mm512_setzero_ps();
    int64_t b = 0;
    /* 8 blocks at a time: their 8 f16 scales widened in one vcvtph2ps, then spread to the
     * two halves of each step by a permute (the same f32 values as one by one). */
    for (; b + 8 <= nb; b += 8) {
        __m512 d8[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + BB * b;
            __m128i h = _mm_setr_epi16(kq_u16(p), kq_u16(p + BB), kq_u16(p + 2 * BB), kq_u16(p + 3 * BB),
                                       kq_u16(p + 4 * BB), kq_u16(p + 5 * BB), kq_u16(p + 6 * BB), kq_u16(p + 7 * BB));
            d8[r] = _mm512_castps256_ps512(_mm256_cvtph_ps(h));
        }
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi32(2 * k), _mm256_set1_epi32(2 * k + 1), 1);
            __m512i wv[4];
            __m512 dw[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                wv[r] = q8_wpair(DT, w + r * rb + BB * (b + 2 * k), x80, pf);
                dw[r] = _mm512_permutexvar_ps(idx, d8[r]);
            }
            q8_step(R, N, wv, dw, x, i0, b + 2 * k, acc);
        }
    }
    for (; b + 2 <= nb; b += 2) {
        __m512i wv[4];
        __m512 dw[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + BB * b;
            wv[r] = q8_wpair(DT, p, x80, pf);
            dw[r] = _mm512_insertf32x8(_mm512_set1_ps(kq_h(p)), _mm256_set1_ps(kq_h(p + BB)), 1);
        }
        q8_step(R, N, wv, dw, x, i0, b, acc);
    }
    if (b < nb) { /* an odd last block: lanes 0-7 only */
        __m512i wv[4];
        __m512 dw[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + BB * b;
            wv[r] = _mm512_zextsi256_si512(
                DT == KDT_Q4_0 ? q40_codes(p)
                               : _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 2)), _mm256_set1_epi8((char)0x80)));
            dw[r] = _mm512_set1_ps(kq_h(p));
        }
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            int64_t row = i0 + i;
            __m512i xv = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(x->q + row * cols + 32 * b)));
            __m512i xc = _mm512_zextsi256_si512(
                _mm256_loadu_si256((const __m256i *)(x->corr + row * (cols / 4) + 8 * b)));
            __m512 dx = _mm512_set1_ps(x->d[row * nb + b]);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                __m512i s = _mm512_dpbusd_epi32(xc, wv[r], xv);
                acc[r][i] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw[r], dx), acc[r][i], 0x00FF);
            }
        }
    }
    kq_store(R, N, acc, y, ldy, beta);
}

/* The 8 sub-block factors of a Q4_K super-block at p: dsc[s] = d·(float)sc_s and
 * negm[s] = -(dmin·(float)m_s), the same f32 operations as the scalar path, the 6-bit fields
 * unpacked four at a time from the 12 scale bytes read as 32-bit words (quant_ref.h's packing:
 * sub-blocks 4-7 take their top 2 bits from bits 6-7 of bytes 0-3 / 4-7). */
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

/* Q4_K (FIVE = 0) and Q5_K (FIVE = 1): as q8_tile, super-blocks of 256. */
KQ_INL void q4k_tile(int FIVE, int R, int N, const uint8_t *w, size_t rb, int pf, const kq_x *x, int i0, float *y,
                     int64_t ldy, float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const int BB = FIVE ? 176 : 144, QS = FIVE ? 48 : 16;
    const __m512i m4 = _mm512_set1_epi8(15), b16 = _mm512_set1_epi8(16);
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) acc[r][i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256 dsc[4], negm[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + BB * b;
            kq_q4k_scales8(p, &dsc[r], &negm[r]);
            if (pf) {
                __builtin_prefetch(p + KQ_PF, 0, 2);
                __builtin_prefetch(p + KQ_PF + 64, 0, 2);
                __builtin_prefetch(p + KQ_PF + 128, 0, 2);
            }
        }
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            const int s0 = 4 * (v / 2) + v % 2, s1 = s0 + 2;
            const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi32(s0), _mm256_set1_epi32(s1), 1);
            const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << s0)), _mm256_set1_epi8((char)(1 << s1)), 1);
            __m512i wv[4];
            __m512 fs[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *p = w + r * rb + BB * b;
                __m512i q = _mm512_loadu_si512(p + QS + 64 * (v / 2));
                wv[r] = v % 2 ? _mm512_and_si512(_mm512_srli_epi16(q, 4), m4) : _mm512_and_si512(q, m4);
                if (FIVE) { /* + 16 where bit s of qh[l] is set (low half: s0, high half: s1) */
                    __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + 16)));
                    wv[r] = _mm512_mask_add_epi8(wv[r], _mm512_test_epi8_mask(qh, bit), wv[r], b16);
                }
                fs[r] = _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(dsc[r]));
            }
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) {
                int64_t row = i0 + i;
                __m512i xv = _mm512_loadu_si512(x->q + row * cols + 256 * b + 64 * v);
                __m512 dx = _mm512_set1_ps(x->d[row * nb + b]);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r], xv);
                    acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(fs[r], dx), acc[r][i]);
                }
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            __m512 xs = _mm512_zextps256_ps512(_mm256_loadu_ps(x->xs + (i0 + i) * (cols / 32) + 8 * b));
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                acc[r][i] = _mm512_mask3_fmadd_ps(_mm512_zextps256_ps512(negm[r]), xs, acc[r][i], 0x00FF);
        }
    }
    kq_store(R, N, acc, y, ldy, beta);
}

/* Q6_K: super-blocks of 256 (210 bytes: ql[128], qh[64], i8 scales[16], f16 d), 4 steps of 64
 * elements in natural order (qmatmul.h). */
KQ_INL void q6k_tile(int R, int N, const uint8_t *w, size_t rb, int pf, const kq_x *x, int i0, float *y,
                     int64_t ldy, float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    /* the 2 high bits to bits 4-5: shift 0/2 (even steps, low/high half) or 4/6 (odd steps) */
    const __m512i sl_even = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i sr_odd = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) acc[r][i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512 dsc[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + 210 * b;
            __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 192))));
            dsc[r] = _mm512_mul_ps(_mm512_set1_ps(kq_h(p + 208)), sc);
            if (pf) {
                __builtin_prefetch(p + KQ_PF, 0, 2);
                __builtin_prefetch(p + KQ_PF + 64, 0, 2);
                __builtin_prefetch(p + KQ_PF + 128, 0, 2);
                __builtin_prefetch(p + KQ_PF + 192, 0, 2);
            }
        }
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) {
            const int h = t / 2, odd = t % 2;
            const __m512i idx = _mm512_set_epi32(4 * t + 3, 4 * t + 3, 4 * t + 3, 4 * t + 3, 4 * t + 2, 4 * t + 2,
                                                 4 * t + 2, 4 * t + 2, 4 * t + 1, 4 * t + 1, 4 * t + 1, 4 * t + 1,
                                                 4 * t, 4 * t, 4 * t, 4 * t);
            __m512i wv[4];
            __m512 fs[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *p = w + r * rb + 210 * b;
                __m512i ql = _mm512_loadu_si512(p + 64 * h);
                __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h)));
                __m512i lo = odd ? _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4) : _mm512_and_si512(ql, m4);
                __m512i hi = odd ? _mm512_srlv_epi16(qh, sr_odd) : _mm512_sllv_epi16(qh, sl_even);
                wv[r] = _mm512_or_si512(lo, _mm512_and_si512(hi, m30));
                fs[r] = _mm512_permutexvar_ps(idx, dsc[r]);
            }
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) {
                int64_t row = i0 + i;
                __m512i xv = _mm512_loadu_si512(x->q + row * cols + 256 * b + 64 * t);
                __m512i xc = _mm512_loadu_si512(x->corr + row * (cols / 4) + 64 * b + 16 * t);
                __m512 dx = _mm512_set1_ps(x->d[row * nb + b]);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    __m512i sm = _mm512_dpbusd_epi32(xc, wv[r], xv);
                    acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sm), _mm512_mul_ps(fs[r], dx), acc[r][i]);
                }
            }
        }
    }
    kq_store(R, N, acc, y, ldy, beta);
}

typedef void (*tile_fn)(const uint8_t *w, size_t rb, int pf, const kq_x *x, int i0, float *y, int64_t ldy,
                        float beta);
#define TILE_DEF(R, N)                                                                                        \
    static KQ_TGT void q8_##R##_##N(const uint8_t *w, size_t rb, int pf, const kq_x *x, int i0, float *y,     \
                                    int64_t ldy, float beta) {                                                \
        q8_tile(KDT_Q8_0, R, N, w, rb, pf, x, i0, y, ldy, beta);                                              \
    }                                                                                                         \
    static KQ_TGT void q40_##R##_##N(const uint8_t *w, size_t rb, int pf, const kq_x *x, int i0, float *y,    \
                                     int64_t ldy, float beta) {                                               \
        q8_tile(KDT_Q4_0, R, N, w, rb, pf, x, i0, y, ldy, beta);                                              \
    }                                                                                                         \
    static KQ_TGT void q4k_##R##_##N(const uint8_t *w, size_t rb, int pf, const kq_x *x, int i0, float *y,    \
                                     int64_t ldy, float beta) {                                               \
        q4k_tile(0, R, N, w, rb, pf, x, i0, y, ldy, beta);                                                    \
    }                                                                                                         \
    static KQ_TGT void q5k_##R##_##N(const uint8_t *w, size_t rb, int pf, const kq_x *x, int i0, float *y,    \
                                     int64_t ldy, float beta) {                                               \
        q4k_tile(1, R, N, w, rb, pf, x, i0, y, ldy, beta);                                                    \
    }                                                                                                         \
    static KQ_TGT void q6k_##R##_##N(const uint8_t *w, size_t rb, int pf, const kq_x *x, int i0, float *y,    \
                                     int64_t ldy, float beta) {                                               \
        q6k_tile(R, N, w, rb, pf, x, i0, y, ldy, beta);                                                       \
    }
TILE_DEF(4, 1) TILE_DEF(4, 2) TILE_DEF(4, 3) TILE_DEF(4, 4)
TILE_DEF(1, 1) TILE_DEF(1, 2) TILE_DEF(1, 3) TILE_DEF(1, 4)
static const tile_fn q8_tiles[2][4] = {{q8_4_1, q8_4_2, q8_4_3, q8_4_4}, {q8_1_1, q8_1_2, q8_1_3, q8_1_4}};
static const tile_fn q40_tiles[2][4] = {{q40_4_1, q40_4_2, q40_4_3, q40_4_4}, {q40_1_1, q40_1_2, q40_1_3, q40_1_4}};
static const tile_fn q4k_tiles[2][4] = {{q4k_4_1, q4k_4_2, q4k_4_3, q4k_4_4}, {q4k_1_1, q4k_1_2, q4k_1_3, q4k_1_4}};
static const tile_fn q5k_tiles[2][4] = {{q5k_4_1, q5k_4_2, q5k_4_3, q5k_4_4}, {q5k_1_1, q5k_1_2, q5k_1_3, q5k_1_4}};
static const tile_fn q6k_tiles[2][4] = {{q6k_4_1, q6k_4_2, q6k_4_3, q6k_4_4}, {q6k_1_1, q6k_1_2, q6k_1_3, q6k_1_4}};

void kq_rows_vnni(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                  int64_t ldy, float beta) {
    for (int64_t r = r0; r < r1;) {
        int tall = r1 - r >= 4;
        const tile_fn *fns = (dt == KDT_Q8_0   ? q8_tiles
                              : dt == KDT_Q4_0 ? q40_tiles
                              : dt == KDT_Q5_K ? q5k_tiles
                              : dt == KDT_Q6_K ? q6k_tiles
                                               : q4k_tiles)[tall ? 0 : 1];
        for (int i = 0; i < x->n; i += 4) {
            int N = x->n - i < 4 ? x->n - i : 4;
            fns[N - 1](w + r * rb, rb, i == 0, x, i, y + (int64_t)i * ldy + r, ldy, beta);
        }
        r += tall ? 4 : 1;
    }
}
