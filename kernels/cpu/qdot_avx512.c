/* kernels/cpu/qdot_avx512.c — the AVX-512 VNNI path of the quantized matmul (qmatmul.h):
 * (Q4_0 runs the Q8_0 tiles on its nibbles − 8.)
 * register tiles of up to 4 weight rows × 4 x rows, 16-lane f32 accumulators in the
 * canonical order, int8 products summed exactly by vpdpbusd (u8 × s8 → s32, 4 per lane).
 *   Q8_0: vpdpbusd wants one unsigned operand: the weights are offset by 128 (w ^ 0x80) and
 *         the accumulator starts at -128·Σx of the lane (kq_x.corr), so the lane is Σ w·x
 *         exactly. Two blocks (2 × 32 codes) per zmm: lanes 0-7 even block, 8-15 odd.
 *   Q4_K, Q5_K, Q6_K: qdot_avx512_k.c (their canonical order is an integer vpmaddubsw /
 *         vpdpwssd loop, not this one).
 * Weight rows are read once per x group of 4; the first group prefetches KQ_PF bytes ahead.
 * Compiled for these instructions by target attributes and only called when the CPU has
 * them (kq_path_available). */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/qmatmul.h"

#define KQ_TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")))
#define KQ_INL static inline __attribute__((always_inline)) KQ_TGT

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
    }
TILE_DEF(4, 1) TILE_DEF(4, 2) TILE_DEF(4, 3) TILE_DEF(4, 4)
TILE_DEF(1, 1) TILE_DEF(1, 2) TILE_DEF(1, 3) TILE_DEF(1, 4)
static const tile_fn q8_tiles[2][4] = {{q8_4_1, q8_4_2, q8_4_3, q8_4_4}, {q8_1_1, q8_1_2, q8_1_3, q8_1_4}};
static const tile_fn q40_tiles[2][4] = {{q40_4_1, q40_4_2, q40_4_3, q40_4_4}, {q40_1_1, q40_1_2, q40_1_3, q40_1_4}};

void kq_rows_vnni(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                  int64_t ldy, float beta) {
    if (kdtype_is_kquant(dt)) {
        kq_rows_avx512_k(dt, w, rb, r0, r1, x, y, ldy, beta);
        return;
    }
    for (int64_t r = r0; r < r1;) {
        int tall = r1 - r >= 4;
        const tile_fn *fns = (dt == KDT_Q8_0 ? q8_tiles : q40_tiles)[tall ? 0 : 1];
        for (int i = 0; i < x->n; i += 4) {
            int N = x->n - i < 4 ? x->n - i : 4;
            fns[N - 1](w + r * rb, rb, i == 0, x, i, y + (int64_t)i * ldy + r, ldy, beta);
        }
        r += tall ? 4 : 1;
    }
}
