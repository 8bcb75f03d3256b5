/* kernels/cpu/qdot_avx512.c — the AVX-512 VNNI path of the quantized matmul (qmatmul.h):
 * (Q4_0 runs the Q8_0 tiles on its nibbles − 8, Q5_0 on its 5-bit codes − 16, IQ4_NL on the
 * levels its nibbles index, IQ4_XS as IQ4_NL per sub-block with d·(ls − 32) for the scale,
 * Q4_1 / Q5_1 on their unsigned codes with the min's second fma.)
 * register tiles of up to 8 weight rows × 4 x rows, int8 products summed exactly by vpdpbusd
 * (u8 × s8 → s32, 4 per lane), each block's lane partials summed across the tile's rows by
 * permutes (q8_sums8), then one f32 lane per output in block order (the canonical order).
 *   Q8_0: vpdpbusd wants one unsigned operand: the weights are offset by 128 (w ^ 0x80) and
 *         the accumulator starts at -128·Σx of the lane (kq_x.corr), so the lane is Σ w·x
 *         exactly. Two blocks (2 × 32 codes) per zmm: lanes 0-7 even block, 8-15 odd.
 *   Batches of 8+ rows (x in the x16 layout, qx16.c): q8x_strip16, x rows in lanes and 4 weight
 *         codes broadcast at a time, one vpdpbusd per 64 products and no horizontal sums.
 *   Q4_K, Q5_K, Q6_K, Q3_K: qdot_avx512_k.c (their canonical order is an integer vpmaddubsw /
 *         vpdpwssd loop, not this one); their batches of 8+ rows qdot_avx512_x16k.c.
 * Weight rows are read once per x group of 4; the first group prefetches KQ_PF bytes ahead.
 * Compiled for these instructions by target attributes and only called when the CPU has
 * them (kq_path_available). */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/qdot_kquant_avx512.h"
#include "kernels/cpu/qmatmul.h"
#include "kernels/cpu/qstore_t.h"
#include "kernels/cpu/quant_ref.h"

#define KQ_TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")))
#define KQ_INL static inline __attribute__((always_inline)) KQ_TGT

/* The 32 codes of a 4- or 5-bit block: the 16 nibble bytes at qs (elements 0-15 the low
 * nibbles, 16-31 the high), with, when qh, bit e of the u32 at qh above element e's nibble
 * (vpmovm2b spreads the 32 bits over the 32 bytes), plus add:
 *   Q4_0: nibble + 120 = (nibble − 8) ^ 0x80, Q5_0: code + 112 = (code − 16) ^ 0x80 (signed codes
 *   offset to unsigned, as Q8_0's w ^ 0x80); Q4_1, Q5_1: the unsigned code as is. */
KQ_INL __m256i q32_nibbles(const uint8_t *qs, const uint8_t *qh, int add) {
    __m128i q = _mm_loadu_si128((const __m128i *)qs), m4 = _mm_set1_epi8(15);
    __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
    if (qh) {
        uint32_t h;
        memcpy(&h, qh, 4);
        v = _mm256_or_si256(v, _mm256_and_si256(_mm256_movm_epi8(h), _mm256_set1_epi8(16)));
    }
    return add ? _mm256_add_epi8(v, _mm256_set1_epi8((char)add)) : v;
}

/* IQ4_NL's levels offset to unsigned (level ^ 0x80), a vpshufb table in both 128-bit lanes. */
KQ_INL __m256i iq4nl_table(void) {
    static const int8_t level[16] = QREF_IQ4NL_LEVELS;
    const __m128i t = _mm_xor_si128(_mm_loadu_si128((const __m128i *)level), _mm_set1_epi8((char)0x80));
    return _mm256_broadcastsi128_si256(t);
}

/* The 32 levels of the 16 IQ4_NL nibble bytes at qs (IQ4_XS's sub-blocks too), offset to unsigned. */
KQ_INL __m256i iq4_codes(const uint8_t *qs) { return _mm256_shuffle_epi8(iq4nl_table(), q32_nibbles(qs, NULL, 0)); }

/* Two blocks of IQ4_NL nibbles (16 code bytes each, q: the first in the low 128 bits) as one
 * zmm of levels offset to unsigned: the nibbles split in a zmm, 128-bit lanes ordered (low, high
 * nibbles of the first; low, high of the second), one vpshufb. IQ4_XS sub-blocks 2k, 2k + 1 are
 * 32 adjacent bytes; IQ4_NL's two blocks 18 apart. */
KQ_INL __m512i iq4_pair(__m256i q) {
    __m512i z = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1),
                                 _mm512_set1_epi8(15));
    z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));
    return _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm256_castsi256_si128(iq4nl_table())), z);
}

/* The 32 codes of a 32-element type's block as vpdpbusd's unsigned operand (IQ4_XS: its
 * sub-blocks through kq_iq4xs_sub instead). */
KQ_INL __m256i q32_codes(kdtype dt, const uint8_t *p) {
    return dt == KDT_Q4_0   ? q32_nibbles(p + 2, NULL, 120)
           : dt == KDT_IQ4_NL ? iq4_codes(p + 2)
           : dt == KDT_Q5_0 ? q32_nibbles(p + 6, p + 2, 112)
           : dt == KDT_Q4_1 ? q32_nibbles(p + 4, NULL, 0)
           : dt == KDT_Q5_1 ? q32_nibbles(p + 8, p + 4, 0)
                            : _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 2)), _mm256_set1_epi8((char)0x80));
}

/* X_b = Σ of block b's 32 x codes, in every lane of its 8-lane half, from the block's VNNI
 * corrections (corr lanes: −128 · Σ of 4 codes): the 8 lanes summed, then −(sum >> 7) — exact. */
KQ_INL __m512 q32_xsums(__m512i xc) {
    __m512i t = _mm512_add_epi32(xc, _mm512_shuffle_epi32(xc, _MM_PERM_BADC));
    t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_CDAB));
    t = _mm512_add_epi32(t, _mm512_shuffle_i32x4(t, t, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_setzero_si512(), _mm512_srai_epi32(t, 7)));
}

/* The codes of blocks p and p + BB in one zmm, as vpdpbusd's unsigned operand (q32_codes). */
KQ_INL __m512i q8_wpair(kdtype dt, const uint8_t *p, __m512i x80, int pf) {
    if (dt == KDT_IQ4_NL) {
        if (pf) __builtin_prefetch(p + KQ_PF, 0, 2);
        return iq4_pair(_mm256_loadu2_m128i((const __m128i *)(p + 18 + 2), (const __m128i *)(p + 2)));
    }
    if (dt != KDT_Q8_0) {
        if (pf) __builtin_prefetch(p + KQ_PF, 0, 2);
        return _mm512_inserti64x4(_mm512_castsi256_si512(q32_codes(dt, p)), q32_codes(dt, p + (int)kdtype_block_bytes(dt)), 1);
    }
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p + 2))),
                                   _mm256_loadu_si256((const __m256i *)(p + 36)), 1);
    if (pf) {
        __builtin_prefetch(p + KQ_PF, 0, 2);
        __builtin_prefetch(p + KQ_PF + 64, 0, 2);
    }
    return _mm512_xor_si512(v, x80);
}

/* The exact block sums of 8 weight rows: s[r] holds row r's lane partials of blocks b (lanes
 * 0-7) and b + 1 (lanes 8-15); out lane r = S_b of row r, lane 8 + r = S_b+1 of row r. Three
 * rounds of pairwise adds through two-source permutes: each round halves the lanes per sum. */
KQ_INL __m512i q8_sums8(const __m512i s[8]) {
    /* items of 4 lanes: (2k, b), (2k, b+1), (2k+1, b), (2k+1, b+1) */
    const __m512i c0 = kq_pairsum(s[0], s[1]), c1 = kq_pairsum(s[2], s[3]), c2 = kq_pairsum(s[4], s[5]),
                  c3 = kq_pairsum(s[6], s[7]);
    /* items of 2 lanes: (4m, b), (4m, b+1), ..., (4m+3, b+1) */
    const __m512i d0 = kq_pairsum(c0, c1), d1 = kq_pairsum(c2, c3);
    /* item (r, b) sits at lane 4(r%4) of d[r/4], (r, b+1) two lanes later */
    const __m512i F = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 2, 6, 10, 14, 18, 22, 26, 30);
    return _mm512_add_epi32(_mm512_permutex2var_epi32(d0, F, d1),
                            _mm512_permutex2var_epi32(d0, _mm512_add_epi32(F, _mm512_set1_epi32(1)), d1));
}

/* The 32-element types: weight rows r < R (R <= 8; rows past R are skipped, their lanes
 * discarded) × x rows i0 + i, i < N. Per two blocks: vpdpbusd lane partials (two blocks per zmm), the rows' exact block
 * sums with rows in lanes (q8_sums8), then the canonical fma by dw·dx for block b, then b + 1 — one
 * lane per output. An odd last block runs with its second half zero and one fma. */
KQ_INL void q8_tile(kdtype DT, int R, int N, const uint8_t *w, size_t rb, int pf, const kq_x *x, int i0, float *y,
                    int64_t ldy, float beta) {
    const int64_t cols = x->cols, nb = cols / 32;
    const __m512i x80 = _mm512_set1_epi8((char)0x80);
    const int BB = (int)kdtype_block_bytes(DT), MIN = kq_has_min(DT);
    __m256 acc[4];
#pragma GCC unroll 4
    for (int i = 0; i < N; i++) acc[i] = _mm256_setzero_ps();
    __m512i xs_sc = _mm512_setzero_si512(); /* IQ4_XS: qword r = row r's 8 sub-block scales − 32 */
    __m512 xs_d = _mm512_setzero_ps();      /* IQ4_XS: lanes r and 8 + r = row r's d */
    for (int64_t b = 0; b < nb; b += 2) {
        const int two = b + 1 < nb;
        __m512i wv[8];
        if (DT == KDT_IQ4_XS && b % 8 == 0) { /* a new super-block: its rows' scales and d once */
            uint64_t v[8] = {0, 0, 0, 0, 0, 0, 0, 0}, gd[2] = {0, 0};
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const uint8_t *blk = w + r * rb + 136 * (b / 8);
                v[r] = kq_iq4xs_scales8(blk);
                gd[r / 4] |= (uint64_t)(blk[0] | blk[1] << 8) << 16 * (r % 4);
            }
            xs_sc = _mm512_sub_epi8(_mm512_set_epi64((long long)v[7], (long long)v[6], (long long)v[5], (long long)v[4],
                                                     (long long)v[3], (long long)v[2], (long long)v[1], (long long)v[0]),
                                    _mm512_set1_epi8(32));
            xs_d = _mm512_cvtph_ps(_mm256_broadcastsi128_si256(_mm_set_epi64x((long long)gd[1], (long long)gd[0])));
        }
        /* the 16 f16 scales (rows 0-7 of block b, then of b + 1) packed four to a general
         * register, then one vector: 16 word inserts were the tile's busiest shuffle port;
         * Q4_1 / Q5_1's mins (the next f16 of each block) the same way */
        uint64_t g[4] = {0, 0, 0, 0}, gm[4] = {0, 0, 0, 0};
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            if (DT == KDT_IQ4_XS) { /* sub-blocks b, b + 1 (b even: one super-block, 32 code bytes) */
                const uint8_t *qs = w + r * rb + 136 * (b / 8) + 8 + 16 * (b % 8);
                if (pf) __builtin_prefetch(qs + KQ_PF, 0, 2);
                wv[r] = iq4_pair(_mm256_loadu_si256((const __m256i *)qs));
                continue;
            }
            const uint8_t *p = w + r * rb + BB * b;
            uint16_t h0, h1 = 0;
            if (two) {
                wv[r] = q8_wpair(DT, p, x80, pf);
                memcpy(&h1, p + BB, 2);
            } else {
                wv[r] = _mm512_zextsi256_si512(q32_codes(DT, p));
            }
            memcpy(&h0, p, 2);
            g[r / 4] |= (uint64_t)h0 << 16 * (r % 4);
            g[2 + r / 4] |= (uint64_t)h1 << 16 * (r % 4);
            if (MIN) {
                uint16_t m0, m1 = 0;
                memcpy(&m0, p + 2, 2);
                if (two) memcpy(&m1, p + BB + 2, 2);
                gm[r / 4] |= (uint64_t)m0 << 16 * (r % 4);
                gm[2 + r / 4] |= (uint64_t)m1 << 16 * (r % 4);
            }
        }
        __m512 dw;
        if (DT == KDT_IQ4_XS) { /* d·(ls − 32), exact: the scales of sub-blocks b, b + 1 (bytes 2k, 2k + 1 of each row's qword) */
            const unsigned k = (unsigned)(b % 8) / 2;
            const __m128i s0 = _mm512_cvtepi64_epi8(_mm512_srli_epi64(xs_sc, 16 * k)),
                          s1 = _mm512_cvtepi64_epi8(_mm512_srli_epi64(xs_sc, 16 * k + 8));
            dw = _mm512_mul_ps(xs_d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpacklo_epi64(s0, s1))));
        } else
            dw = _mm512_cvtph_ps(_mm256_set_epi64x((long long)g[3], (long long)g[2], (long long)g[1], (long long)g[0]));
        const __m512 mw = MIN ? _mm512_cvtph_ps(_mm256_set_epi64x((long long)gm[3], (long long)gm[2], (long long)gm[1],
                                                                  (long long)gm[0]))
                              : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int i = 0; i < N; i++) {
            const int64_t row = i0 + i;
            __m512i xv, xc;
            __m512 dx;
            const float *xd = x->d + row * nb + b;
            if (two) {
                xv = _mm512_loadu_si512(x->q + row * cols + 32 * b);
                xc = _mm512_loadu_si512(x->corr + row * (cols / 4) + 8 * b);
                dx = _mm512_insertf32x8(_mm512_set1_ps(xd[0]), _mm256_set1_ps(xd[1]), 1);
            } else {
                xv = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(x->q + row * cols + 32 * b)));
                xc = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(x->corr + row * (cols / 4) + 8 * b)));
                dx = _mm512_set1_ps(xd[0]);
            }
            __m512i s[8];
            /* signed codes start at the correction (their unsigned offset: 128); Q4_1 / Q5_1's at 0 */
            const __m512i start = MIN ? _mm512_setzero_si512() : xc;
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) s[r] = r < R ? _mm512_dpbusd_epi32(start, wv[r], xv) : _mm512_setzero_si512();
            const __m512 S = _mm512_cvtepi32_ps(q8_sums8(s)), f = _mm512_mul_ps(dw, dx);
            acc[i] = _mm256_fmadd_ps(_mm512_castps512_ps256(S), _mm512_castps512_ps256(f), acc[i]);
            __m512 X = _mm512_setzero_ps(), fm = X;
            if (MIN) {
                X = q32_xsums(xc);
                fm = _mm512_mul_ps(mw, dx);
                acc[i] = _mm256_fmadd_ps(_mm512_castps512_ps256(X), _mm512_castps512_ps256(fm), acc[i]);
            }
            if (two) {
                acc[i] = _mm256_fmadd_ps(_mm512_extractf32x8_ps(S, 1), _mm512_extractf32x8_ps(f, 1), acc[i]);
                if (MIN) acc[i] = _mm256_fmadd_ps(_mm512_extractf32x8_ps(X, 1), _mm512_extractf32x8_ps(fm, 1), acc[i]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < N; i++) {
        float a[8];
        _mm256_storeu_ps(a, acc[i]);
        for (int r = 0; r < R; r++) {
            float *yp = y + i * ldy + r;
            *yp = beta != 0.0f ? *yp + a[r] : a[r];
        }
    }
}

typedef void (*tile_fn)(const uint8_t *w, size_t rb, int pf, const kq_x *x, int i0, float *y, int64_t ldy,
                        float beta);
#define TILE_FN(TAG, DT, R, N)                                                                                \
    static KQ_TGT void TAG##_##R##_##N(const uint8_t *w, size_t rb, int pf, const kq_x *x, int i0, float *y,  \
                                       int64_t ldy, float beta) {                                             \
        q8_tile(DT, R, N, w, rb, pf, x, i0, y, ldy, beta);                                                    \
    }
#define TILE_DEF(R, N) Q32_EACH(TILE_FN, R, N)
TILE_DEF(8, 1) TILE_DEF(8, 2) TILE_DEF(8, 3) TILE_DEF(8, 4)
TILE_DEF(4, 1) TILE_DEF(4, 2) TILE_DEF(4, 3) TILE_DEF(4, 4)
TILE_DEF(1, 1) TILE_DEF(1, 2) TILE_DEF(1, 3) TILE_DEF(1, 4)
/* [q32_index][8 | 4 | 1 rows][N - 1] */
#define TILE_ROWS(TAG, DT, a, b)                                                                              \
    {{TAG##_8_1, TAG##_8_2, TAG##_8_3, TAG##_8_4},                                                            \
     {TAG##_4_1, TAG##_4_2, TAG##_4_3, TAG##_4_4},                                                            \
     {TAG##_1_1, TAG##_1_2, TAG##_1_3, TAG##_1_4}},
static const tile_fn q32_tiles[Q32_TYPES][3][4] = {Q32_EACH(TILE_ROWS, 0, 0)};

/* The 32-element types' batches with x in the x16 layout (qx16.c: 16 x rows in a zmm, 4 codes per
 * lane), a strip of R <= 4 weight rows at a time. The strip's codes offset to unsigned (w ^ 0x80,
 * Q4_0's nibble + 120, Q5_0's code + 112, IQ4_NL's level ^ 0x80; q32_codes) and scales as f32 are unpacked once; then per 16 x
 * rows and block b, each lane starts at −128·Σx of its row (kq_x.x16p) and takes one vpdpbusd
 * per 4-code group k and weight row — the row's 4 codes broadcast against the 16 rows' codes — so
 * after the 8 groups lane m holds S_b of x row m exactly, with no horizontal sums; then the
 * canonical fma by dw·dx. Same bits as q8_tile. */

unsigned long kq_vnni_x16_strips; /* strips of weight rows done this way (relaxed atomic; tests) */

KQ_INL void q8x_tile16(kdtype DT, int R, const uint8_t *uw, const float *dw, const float *mw, int64_t nb,
                       const int8_t *xv, const int32_t *xp, const float *dx, float *y, int64_t ldy, int rows,
                       float beta) {
    const int MIN = kq_has_min(DT);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t b = 0; b < nb; b++) {
        const int8_t *xb = xv + b * 512;
        const __m512i xpb = _mm512_load_si512((const void *)(xp + b * 16));
        /* signed codes start at −128·Σx (their unsigned offset); Q4_1 / Q5_1's at 0 */
        const __m512i start = MIN ? _mm512_setzero_si512() : xpb;
        __m512i s[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) s[r] = start;
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            __m512i xk = _mm512_load_si512((const void *)(xb + 64 * k));
            KQ_IN_REG(xk);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                int32_t c4;
                memcpy(&c4, uw + (b * R + r) * 32 + 4 * k, 4);
                s[r] = _mm512_dpbusd_epi32(s[r], _mm512_set1_epi32(c4), xk);
            }
        }
        const __m512 dxb = _mm512_load_ps(dx + b * 16);
        /* Q4_1 / Q5_1: X_b of each x row, −(x16p >> 7) exactly */
        const __m512 X = MIN ? _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_setzero_si512(), _mm512_srai_epi32(xpb, 7)))
                             : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), _mm512_mul_ps(_mm512_set1_ps(dw[r * nb + b]), dxb), acc[r]);
            if (MIN) acc[r] = _mm512_fmadd_ps(X, _mm512_mul_ps(_mm512_set1_ps(mw[r * nb + b]), dxb), acc[r]);
        }
    }
    kq_store_tile16(R, acc, rows, y, ldy, beta);
}

KQ_INL void q8x_strip16(kdtype DT, int R, uint8_t *uw, float *dw, const uint8_t *w, size_t rb, const kq_x *x, float *y,
                        int64_t ldy, float beta) {
    const int64_t nb = x->cols / 32;
    const int BB = (int)kdtype_block_bytes(DT), MIN = kq_has_min(DT);
    float *mw = dw + (size_t)R * (size_t)nb; /* Q4_1 / Q5_1's mins after the scales */
    for (int64_t b = 0; b < nb; b++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            if (DT == KDT_IQ4_XS) {
                uint16_t d;
                int sc;
                const uint8_t *qs = kq_iq4xs_sub(w + r * rb, b, &d, &sc);
                __builtin_prefetch(qs + KQ_PF, 0, 2);
                _mm256_storeu_si256((__m256i *)(uw + (b * R + r) * 32), iq4_codes(qs));
                dw[r * nb + b] = _cvtsh_ss(d) * (float)sc;
                continue;
            }
            const uint8_t *p = w + r * rb + BB * b;
            __builtin_prefetch(p + KQ_PF, 0, 2);
            const __m256i c = q32_codes(DT, p);
            _mm256_storeu_si256((__m256i *)(uw + (b * R + r) * 32), c);
            uint16_t h;
            memcpy(&h, p, 2);
            dw[r * nb + b] = _cvtsh_ss(h);
            if (MIN) {
                memcpy(&h, p + 2, 2);
                mw[r * nb + b] = _cvtsh_ss(h);
            }
        }
    for (int i = 0; i < x->n; i += 16) {
        const int64_t mb = i / 16;
        q8x_tile16(DT, R, uw, dw, mw, nb, x->x16v + mb * nb * 512, x->x16p + mb * nb * 16, x->x16d + mb * nb * 16,
                   y + (int64_t)i * ldy, ldy, x->n - i < 16 ? x->n - i : 16, beta);
    }
}

/* One strip function per type and row count; its unpacked rows in the thread's scratch
 * (Q8X_BYTES for 4 rows, which kq_rows_vnni made sure of: codes, scales, mins). */
#define Q8X_BYTES(R, NB) ((size_t)(R) * (size_t)(NB) * (32 + 4 + 4))
#define Q8X_DEF(TAG, DT, R)                                                                                   \
    static KQ_TGT void q8x_##TAG##_##R(const uint8_t *w, size_t rb, const kq_x *x, float *y, int64_t ldy,      \
                                       float beta) {                                                          \
        const int64_t nb = x->cols / 32;                                                                      \
        uint8_t *uw = kq_thread_scratch(Q8X_BYTES(4, nb));                                                     \
        q8x_strip16(DT, R, uw, (float *)(uw + (size_t)R * (size_t)nb * 32), w, rb, x, y, ldy, beta);            \
    }
#define Q8X_DEF3(TAG, DT, a, b) Q8X_DEF(TAG, DT, 4) Q8X_DEF(TAG, DT, 2) Q8X_DEF(TAG, DT, 1)
Q32_EACH(Q8X_DEF3, 0, 0)

void kq_rows_vnni(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                  int64_t ldy, float beta) {
    if (kdtype_is_kquant(dt)) {
        if (!kq_rows_vnni_x16k(dt, w, rb, r0, r1, x, y, ldy, beta)) kq_rows_avx512_k(dt, w, rb, r0, r1, x, y, ldy, beta);
        return;
    }
    if (x->x16v && kq_thread_scratch(Q8X_BYTES(4, x->cols / 32))) {
#define STRIP_ROW(TAG, DT, a, b) {q8x_##TAG##_4, q8x_##TAG##_2, q8x_##TAG##_1},
        static const kq_strip_fn strips[Q32_TYPES][3] = {Q32_EACH(STRIP_ROW, 0, 0)};
        const kq_strip_fn *f = strips[q32_index(dt)];
        kq_rows_strips(f[0], f[1], f[2], w, rb, r0, r1, x, y, ldy, beta, &kq_vnni_x16_strips);
        return;
    }
    for (int64_t r = r0; r < r1;) {
        const int R = r1 - r >= 8 ? 8 : r1 - r >= 4 ? 4 : 1;
        const tile_fn *fns = q32_tiles[q32_index(dt)][R == 8 ? 0 : R == 4 ? 1 : 2];
        for (int i = 0; i < x->n; i += 4) {
            int N = x->n - i < 4 ? x->n - i : 4;
            fns[N - 1](w + r * rb, rb, i == 0, x, i, y + (int64_t)i * ldy + r, ldy, beta);
        }
        r += R;
    }
}
