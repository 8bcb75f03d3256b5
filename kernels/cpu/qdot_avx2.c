/* kernels/cpu/qdot_avx2.c — the AVX2 path of the quantized matmul (qmatmul.h). Q8_0, Q4_0:
 * tiles of up to 4 weight rows × 2 x rows; products by vpmaddubsw (u8 × s8 pairs → s16, which
 * never saturates here) then vpmaddwd by ones (→ s32 sums of 4 adjacent products), each block's
 * 8 lane partials summed exactly across the tile's rows (kq_hsum4), then one f32 lane per output:
 *   Q8_0: u8 = |w|, s8 = x with w's sign (|w|·sign(x, w) = w·x; |w| <= 128, |x| <= 127).
 *   Q4_0: the same on w = nibble − 8; Q5_0 on w = (nibble | 5th bit << 4) − 16; IQ4_NL on
 *   w = the level its nibble indexes (a vpshufb table, |w| <= 127); IQ4_XS as IQ4_NL per
 *   sub-block of 32, its scale d·(ls − 32).
 *   Batches of 8+ rows of either (x in the x16 layout, qx16.c): q8x_strip, x rows in lanes and
 *   4 weight codes broadcast at a time, so a block's sums need no horizontal adds.
 *   Q4_K: u8 = the nibble (0..15), s8 = x, then vpmaddwd by the sub-block scale: the
 *         super-block's lane sums stay int32 (qmatmul.h's K-quant order; tiles of up to 4 weight
 *         rows × 1 x row or 2 × 4, f32 work once per super-block and pair).
 *   Q5_K: u8 = nibble | 5th bit << 4 (0..31), s8 = x, as Q4_K.
 *   Q6_K: u8 = the 6-bit code (0..63), s8 = x, as Q4_K with 16-element groups; the −32 offset
 *         once per super-block from the x group sums (|pair sum| <= 2·63·127 < 32768).
 *   Q3_K: Q6_K's tile on the 3-bit code (0..7), scales sc − 32, offset 4 (qmatmul.h); Q2_K on
 *         the 2-bit code (0..3), its 4-bit scales, the mins' second f32 step as Q4_K's.
 *   Q4_K_SB8, Q6_K_SB16: Q4_K / Q6_K reordered so products add in 16-bit lanes before one
 *         vpmaddwd applies the scales (q4s_tile, q6s_tile).
 *   K-quant batches of 8+ rows (SB8 and SB16 included): qdot_avx2_x16k.c (x in the x16 layout);
 *         the SB16 tiles here then take decode and small batches, and a batch whose strip
 *         scratch cannot be had.
 * Compiled for AVX2 by target attributes; called only when the CPU has it. */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/qdot_kquant_x86.h"
#include "kernels/cpu/qmatmul.h"
#include "kernels/cpu/qstore_t.h"
#include "kernels/cpu/quant_ref.h"

#define KQ_TGT __attribute__((target("avx2,fma,f16c")))
#define KQ_INL static inline __attribute__((always_inline)) KQ_TGT

/* An accumulator lives in a register at this point. Without it GCC re-associates a super-block's
 * integer adds into a tree, computes every product first and spills them: with AVX2's 16 ymm
 * registers (an x86-64-v3 build) the 2 × 4 tiles ran 15-20% slower. */
#define KQ_PIN(v) __asm__("" : "+x"(v))

/* Lane partials (8 × s32) of u8 a · s8 b over 32 bytes. */
KQ_INL __m256i kq_dot32(__m256i a, __m256i b) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
}

/* The exact sums of four int32 vectors' lanes: lane k = Σ lanes of vk. */
KQ_INL __m128i kq_hsum4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    const __m256i c = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
}

/* The 32 fifth bits of a Q5_0 block (the u32 qh) as bytes 16 (set) or 0: byte e tests bit e —
 * qh's byte e / 8 shuffled to byte e (in-lane: every lane holds all four), then its bit e % 8. */
KQ_INL __m256i q50_fifth(const uint8_t *p) {
    uint32_t qh;
    memcpy(&qh, p + 2, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh),
                                               _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                                                2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(16));
}


/* The 32 codes of block p, low nibbles first: signed for Q8_0 (34 bytes), Q4_0 (18: nibble − 8),
 * Q5_0 (22: (nibble | 5th bit << 4) − 16, nibbles after the 4 bytes of 5th bits) and IQ4_NL
 * (18: the level of the nibble); unsigned
 * for Q4_1 (20: the nibble, after d and m) and Q5_1 (24: nibble | 5th bit << 4). */
/* The 32 levels of the 16 IQ4_NL nibble bytes at qs (IQ4_XS's sub-blocks too), signed. */
KQ_INL __m256i iq4_codes(const uint8_t *qs) {
    static const int8_t level[16] = QREF_IQ4NL_LEVELS;
    const __m128i q = _mm_loadu_si128((const __m128i *)qs), m4 = _mm_set1_epi8(15);
    const __m256i n = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
    return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)level)), n);
}

KQ_INL __m256i q8_codes(kdtype DT, const uint8_t *p) {
    if (DT == KDT_Q8_0) return _mm256_loadu_si256((const __m256i *)(p + 2));
    if (DT == KDT_IQ4_NL) return iq4_codes(p + 2);
    const int five = DT == KDT_Q5_0 || DT == KDT_Q5_1, hb = kq_has_min(DT) ? 2 : 0; /* hb: m before qh / qs */
    const __m128i q = _mm_loadu_si128((const __m128i *)(p + 2 + hb + (five ? 4 : 0))), m4 = _mm_set1_epi8(15);
    __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
    if (five) v = _mm256_or_si256(v, q50_fifth(p + hb));
    if (kq_has_min(DT)) return v;
    return _mm256_sub_epi8(v, _mm256_set1_epi8(five ? 16 : 8));
}

/* X_b = Σ of block b's 32 x codes from its 8 VNNI corrections (−128 · Σ of 4 codes): exact. */
KQ_INL float q32_xsum(const int32_t *corr) {
    const __m256i c = _mm256_loadu_si256((const __m256i *)corr);
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(1, 0, 3, 2)));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1)));
    return (float)-(_mm_cvtsi128_si32(t) >> 7);
}

/* Q8_0 / Q4_0 / Q5_0: weight rows r < R (R <= 4; rows past R are skipped, their lanes
 * discarded) × x rows i0 + i, i < N (N <= 2). Per block: the rows' lane partials by vpmaddubsw / vpmaddwd, their exact
 * sums S_b with the rows in lanes (kq_hsum4), then the canonical fma by dw·dx — one lane per
 * output, in block order. */
KQ_INL void q8_tile(kdtype DT, int R, int N, const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y, int64_t ldy,
                    float beta) {
    const int64_t cols = x->cols, nb = cols / 32;
    const int BB = (int)kdtype_block_bytes(DT), MIN = kq_has_min(DT);
    __m128 acc[4];
    for (int i = 0; i < N; i++) acc[i] = _mm_setzero_ps();
    uint64_t xs_v[4] = {0, 0, 0, 0}; /* IQ4_XS: each row's 8 sub-block scales (ls, a byte each) */
    uint16_t xs_d[4] = {0, 0, 0, 0}; /* IQ4_XS: each row's d */
    for (int64_t b = 0; b < nb; b++) {
        __m256i wv[4], aw[4];
        uint16_t h[4] = {0}, hm[4] = {0};
        uint32_t xs = 0; /* IQ4_XS: the rows' ls of sub-block b, a byte each */
        if (DT == KDT_IQ4_XS && b % 8 == 0) /* a new super-block: its rows' scales and d once */
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *blk = w + r * rb + 136 * (b / 8);
                xs_v[r] = kq_iq4xs_scales8(blk);
                xs_d[r] = (uint16_t)(blk[0] | blk[1] << 8);
            }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            if (DT == KDT_IQ4_XS) {
                const uint8_t *qs = w + r * rb + 136 * (b / 8) + 8 + 16 * (b % 8);
                if (i0 == 0) __builtin_prefetch(qs + KQ_PF, 0, 2);
                wv[r] = iq4_codes(qs);
                aw[r] = _mm256_abs_epi8(wv[r]);
                h[r] = xs_d[r];
                xs |= (uint32_t)(uint8_t)(xs_v[r] >> 8 * (b % 8)) << 8 * r;
                continue;
            }
            const uint8_t *p = w + r * rb + BB * b;
            if (i0 == 0) __builtin_prefetch(p + KQ_PF, 0, 2);
            wv[r] = q8_codes(DT, p);
            aw[r] = MIN ? wv[r] : _mm256_abs_epi8(wv[r]); /* unsigned codes multiply x as it is */
            memcpy(&h[r], p, 2);
            if (MIN) memcpy(&hm[r], p + 2, 2);
        }
        /* the rows' scales built in a register (narrow stores and a wide load would stall) */
        __m128 dw = _mm_cvtph_ps(_mm_setr_epi16((short)h[0], (short)h[1], (short)h[2], (short)h[3], 0, 0, 0, 0));
        if (DT == KDT_IQ4_XS) /* d·(ls − 32), exact */
            dw = _mm_mul_ps(dw, _mm_cvtepi32_ps(_mm_sub_epi32(_mm_cvtepu8_epi32(_mm_cvtsi32_si128((int)xs)), _mm_set1_epi32(32))));
        const __m128 mw = MIN ? _mm_cvtph_ps(_mm_setr_epi16((short)hm[0], (short)hm[1], (short)hm[2], (short)hm[3], 0, 0, 0, 0))
                              : _mm_setzero_ps();
#pragma GCC unroll 2
        for (int i = 0; i < N; i++) {
            const int64_t row = i0 + i;
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + row * cols + 32 * b));
            __m256i s[4];
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                s[r] = r >= R ? _mm256_setzero_si256() : kq_dot32(aw[r], MIN ? xv : _mm256_sign_epi8(xv, wv[r]));
            const __m128 S = _mm_cvtepi32_ps(kq_hsum4(s[0], s[1], s[2], s[3]));
            const __m128 dx = _mm_set1_ps(x->d[row * nb + b]);
            acc[i] = _mm_fmadd_ps(S, _mm_mul_ps(dw, dx), acc[i]);
            if (MIN) acc[i] = _mm_fmadd_ps(_mm_set1_ps(q32_xsum(x->corr + row * (cols / 4) + 8 * b)), _mm_mul_ps(mw, dx), acc[i]);
        }
    }
    kq_store1(R, N, acc, y, ldy, beta);
}

/* Q8_0 / Q4_0 / Q5_0 batches with x in the x16 layout (qx16.c: x rows in lanes, 4 codes per
 * lane), a strip of R <= 4 weight rows at a time. The strip's |codes| and scales as f32 (dw[r·nb + b])
 * are unpacked once — aw[(b·R + r)·Q8X_AW(DT) + e], and for Q4_0 / Q5_0 the signed codes after
 * them, where Q8_0 reads its codes from the weights; then per 8 x rows and block b, per
 * 4-code group k and row r: the row's 4 |codes| and 4 codes broadcast (loads only) against the
 * 8 rows' 4 codes, vpmaddubsw(|w|, sign(x, w)) (|w| <= 128, |x| <= 127: pairs never saturate),
 * vpmaddwd by ones, added — lane j holds S_b of x row j exactly after the 8 groups, with no
 * horizontal sums — then the canonical fma by dw·dx, x rows in lanes. Same bits as q8_tile.
 * Q4_1 / Q5_1: their unsigned codes (no signs) and mins unpacked (after the scales); the 8 rows'
 * X_b from the layout's −128·Σx (x16p), then the min's fma. */
#define Q8X_AW(DT) ((DT) == KDT_Q8_0 || kq_has_min(DT) ? 32 : 64)

unsigned long kq_avx2_x16_strips; /* strips of weight rows done this way (relaxed atomic; tests) */

KQ_INL void q8x_unpack(kdtype DT, int R, const uint8_t *w, size_t rb, int64_t nb, uint8_t *aw, float *dw) {
    const int BB = (int)kdtype_block_bytes(DT);
    float *mw = dw + (size_t)R * (size_t)nb;
    for (int64_t b = 0; b < nb; b++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            uint8_t *o = aw + (b * R + r) * Q8X_AW(DT);
            if (DT == KDT_IQ4_XS) {
                uint16_t d;
                int sc;
                const uint8_t *qs = kq_iq4xs_sub(w + r * rb, b, &d, &sc);
                __builtin_prefetch(qs + KQ_PF, 0, 2);
                const __m256i c = iq4_codes(qs);
                _mm256_store_si256((__m256i *)o, _mm256_abs_epi8(c));
                _mm256_store_si256((__m256i *)(o + 32), c);
                dw[r * nb + b] = _cvtsh_ss(d) * (float)sc;
                continue;
            }
            const uint8_t *p = w + r * rb + BB * b;
            __builtin_prefetch(p + KQ_PF, 0, 2);
            const __m256i c = q8_codes(DT, p);
            _mm256_store_si256((__m256i *)o, kq_has_min(DT) ? c : _mm256_abs_epi8(c));
            if (Q8X_AW(DT) == 64) _mm256_store_si256((__m256i *)(o + 32), c);
            uint16_t h;
            memcpy(&h, p, 2);
            dw[r * nb + b] = _cvtsh_ss(h);
            if (kq_has_min(DT)) {
                memcpy(&h, p + 2, 2);
                mw[r * nb + b] = _cvtsh_ss(h);
            }
        }
}

/* R weight rows × the 8 x rows at xv / dx (rows < `rows` are stored). */
KQ_INL void q8x_tile(kdtype DT, int R, const uint8_t *w, size_t rb, int64_t nb, const uint8_t *aw, const float *dw,
                     const int8_t *xv, const int32_t *xp, const float *dx, float *y, int64_t ldy, int rows,
                     float beta) {
    const float *mw = dw + (size_t)R * (size_t)nb;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++) {
        const int8_t *xb = xv + b * 512;
        __m256i s[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) s[r] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            __m256i xk = _mm256_load_si256((const __m256i *)(xb + 64 * k));
            KQ_IN_REG(xk);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *o = aw + (b * R + r) * Q8X_AW(DT);
                int32_t a4;
                memcpy(&a4, o + 4 * k, 4);
                __m256i xs = xk;
                if (!kq_has_min(DT)) {
                    int32_t c4;
                    memcpy(&c4, DT == KDT_Q8_0 ? w + r * rb + 34 * b + 2 + 4 * k : o + 32 + 4 * k, 4);
                    xs = _mm256_sign_epi8(xk, _mm256_set1_epi32(c4));
                }
                s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi32(a4), xs), ones));
            }
        }
        const __m256 dxb = _mm256_load_ps(dx + b * 16);
        /* Q4_1 / Q5_1: X_b of each x row, −(x16p >> 7) exactly */
        const __m256 X = kq_has_min(DT) ? _mm256_cvtepi32_ps(_mm256_sub_epi32(
                                           _mm256_setzero_si256(),
                                           _mm256_srai_epi32(_mm256_load_si256((const __m256i *)(xp + b * 16)), 7)))
                                     : _mm256_setzero_ps();
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r]), _mm256_mul_ps(_mm256_set1_ps(dw[r * nb + b]), dxb), acc[r]);
            if (kq_has_min(DT)) acc[r] = _mm256_fmadd_ps(X, _mm256_mul_ps(_mm256_set1_ps(mw[r * nb + b]), dxb), acc[r]);
        }
    }
    kq_store_tile8(R, acc, rows, y, ldy, beta);
}

KQ_INL void q8x_strip(kdtype DT, int R, uint8_t *aw, float *dw, const uint8_t *w, size_t rb, const kq_x *x, float *y,
                      int64_t ldy, float beta) {
    const int64_t nb = x->cols / 32;
    q8x_unpack(DT, R, w, rb, nb, aw, dw);
    for (int i = 0; i < x->n; i += 8) { /* x rows i .. i + 7: half (i / 8) % 2 of group i / 16 */
        const int64_t mb = i / 16, h = (i / 8) % 2;
        q8x_tile(DT, R, w, rb, nb, aw, dw, x->x16v + mb * nb * 512 + 32 * h, x->x16p + mb * nb * 16 + 8 * h,
                 x->x16d + mb * nb * 16 + 8 * h, y + (int64_t)i * ldy, ldy, x->n - i < 8 ? x->n - i : 8, beta);
    }
}

/* One strip function per type and row count; its unpacked rows in the thread's scratch
 * (Q8X_BYTES for 4 rows, which kq_rows_avx2 made sure of). */
#define Q8X_BYTES(DT, R, NB) ((size_t)(R) * (size_t)(NB) * (Q8X_AW(DT) + (kq_has_min(DT) ? 8 : 4)))
#define Q8X_DEF(TAG, DT, R)                                                                                   \
    static KQ_TGT void q8x_##TAG##_##R(const uint8_t *w, size_t rb, const kq_x *x, float *y, int64_t ldy,      \
                                       float beta) {                                                          \
        const int64_t nb = x->cols / 32;                                                                      \
        uint8_t *aw = kq_thread_scratch(Q8X_BYTES(DT, 4, nb));                                                 \
        q8x_strip(DT, R, aw, (float *)(aw + (size_t)R * (size_t)nb * Q8X_AW(DT)), w, rb, x, y, ldy, beta);      \
    }
#define Q8X_DEF3(TAG, DT, a, b) Q8X_DEF(TAG, DT, 4) Q8X_DEF(TAG, DT, 2) Q8X_DEF(TAG, DT, 1)
Q32_EACH(Q8X_DEF3, 0, 0)

/* Q4_K (FIVE = 0) and Q5_K (FIVE = 1): R weight rows × N x rows. Per super-block the lanes'
 * integer sums I (qmatmul.h) stay in registers; per chunk c and pair: vpmaddubsw (nibble ×
 * x code, pairs → s16: at most 2·31·127), vpmaddwd by sc_c, add. sc_c is broadcast in a
 * register for one x row, or once into sc[r][c] (a memory operand) for several. The f32
 * lanes are touched once per super-block. */
KQ_INL void q4k_tile(int FIVE, int R, int N, const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y,
                     int64_t ldy, float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const int BB = FIVE ? 176 : 144, QS = FIVE ? 48 : 16;
    const __m256i m4 = _mm256_set1_epi8(15);
    /* one x row: lane r of acc1[0] (the row form); several: lane i·R + r of acc (kq_store_pairs) */
    __m128 acc1[4] = {_mm_setzero_ps()};
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i sc16[4], sc[4][8], m32[4], I[4][8];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + BB * b;
            if (i0 == 0) kq_prefetch_sb(p, BB);
            kq_q4k_scales8(p, &sc16[r], &m32[r]);
            if (N > 1)
#pragma GCC unroll 8
                for (int c = 0; c < 8; c++) sc[r][c] = _mm256_shuffle_epi8(sc16[r], kq_word_bcast(c, c));
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) I[r][i] = _mm256_setzero_si256();
        }
        #pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            __m256i wv[4];
            #pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *p = w + r * rb + BB * b;
                __m256i q = _mm256_loadu_si256((const __m256i *)(p + QS + 32 * (c / 2)));
                wv[r] = c % 2 ? _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) : _mm256_and_si256(q, m4);
                if (FIVE) { /* | 16 where bit c of qh[l] is set */
                    const __m256i bit = _mm256_set1_epi8((char)(1 << c));
                    __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 16));
                    __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                    wv[r] = _mm256_or_si256(wv[r], _mm256_and_si256(set, _mm256_set1_epi8(16)));
                }
            }
            #pragma GCC unroll 4
            for (int i = 0; i < N; i++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + (i0 + i) * cols + 256 * b + 32 * c));
                #pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    __m256i s = N > 1 ? sc[r][c] : _mm256_shuffle_epi8(sc16[r], kq_word_bcast(c, c));
                    I[r][i] = _mm256_add_epi32(I[r][i], _mm256_madd_epi16(_mm256_maddubs_epi16(wv[r], xv), s));
                    KQ_PIN(I[r][i]);
                }
            }
        }
        if (N == 1) kq_q4k_finish(R, 1, w, rb, BB, b, x, i0, I, m32, acc1);
        else kq_q4k_finish_pairs(R, N, w, rb, BB, b, x, i0, I, m32, &acc);
    }
    if (N == 1) kq_store1(R, 1, acc1, y, ldy, beta);
    else kq_store_pairs(R, N, acc, y, ldy, beta);
}

/* Q4_K in the SB8 order (kernels.h KDT_Q4_K_SB8; x codes in the same order, qmatmul.c): 32-byte
 * register k of a super-block's qs carries, in its 32-bit lane j, codes of sub-block j only — 4
 * in the low nibbles, 4 in the high ones. So the 8 vpmaddubsw of a super-block and pair (nibble ×
 * x code, pairs → s16) add up in 16-bit lanes — each lane sums 16 products, at most 16·15·127 =
 * 30480 < 2^15, no wrap — and ONE vpmaddwd by (sc_j, sc_j) per lane pair gives the lanes of
 * I = Σ_j sc_j·Σ q·x: the same integer totals as q4k_tile (the f32 step is shared), with 9 multiply
 * instructions per 256 codes and pair instead of 16. */
KQ_INL void q4s_tile(int R, int N, const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y, int64_t ldy,
                     float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m128 acc1[4] = {_mm_setzero_ps()};
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i scp[4], m32[4], A[4][8], I[4][8];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + 144 * b;
            if (i0 == 0) kq_prefetch_sb(p, 144);
            __m256i sc16;
            kq_q4k_scales8(p, &sc16, &m32[r]);
            const __m128i s = _mm256_castsi256_si128(sc16); /* sc0..sc7 as words */
            scp[r] = _mm256_set_m128i(_mm_unpackhi_epi16(s, s), _mm_unpacklo_epi16(s, s)); /* (sc_j, sc_j) */
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) A[r][i] = _mm256_setzero_si256();
        }
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            __m256i wl[4], wh[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(w + r * rb + 144 * b + 16 + 32 * k));
                wl[r] = _mm256_and_si256(q, m4);
                wh[r] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            }
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) {
                const int8_t *xp = x->q + (i0 + i) * cols + 256 * b + 64 * k;
                const __m256i xl = _mm256_loadu_si256((const __m256i *)xp);
                const __m256i xh = _mm256_loadu_si256((const __m256i *)(xp + 32));
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    A[r][i] = _mm256_add_epi16(A[r][i], _mm256_add_epi16(_mm256_maddubs_epi16(wl[r], xl),
                                                                         _mm256_maddubs_epi16(wh[r], xh)));
                    KQ_PIN(A[r][i]);
                }
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) I[r][i] = _mm256_madd_epi16(A[r][i], scp[r]);
        if (N == 1) kq_q4k_finish(R, 1, w, rb, 144, b, x, i0, I, m32, acc1);
        else kq_q4k_finish_pairs(R, N, w, rb, 144, b, x, i0, I, m32, &acc);
    }
    if (N == 1) kq_store1(R, 1, acc1, y, ldy, beta);
    else kq_store_pairs(R, N, acc, y, ldy, beta);
}

/* Q6_K: chunk c = 4h + k of a super-block (qmatmul.h) is ql[64h + 32(k%2) + l] nibble k/2 with
 * bits 2k, 2k+1 of qh[32h + l] above it; the 6-bit code (0..63) is unsigned, so vpmaddubsw
 * takes it as is (pairs at most 2·63·127) and the −32 offset is added once per super-block
 * from the x group sums: vpmaddwd of (−32·sc) and G (BITS = 6). Q3_K (BITS = 3): the same on
 * its 3-bit code, bits 2(c%4) of qs[32h + l] with bit c of hmask[l] above them, scales sc − 32,
 * offset 4. Q2_K (BITS = 2): the low 2 bits alone (qs at byte 16), its 4-bit scales, and the
 * mins' term M in the f32 step (kq_q6k_finish). */
KQ_INL void q6k_tile(int BITS, int R, int N, const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y, int64_t ldy,
                     float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const int BB = kq_k16_bytes(BITS);
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    /* one x row: lane r of acc1[0] (the row form); several: lane i·R + r of acc (kq_store_pairs) */
    __m128 acc1[4] = {_mm_setzero_ps()};
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i sc[4][8], I[4][4]; /* sc[r][c]: group 2c's scale in the low lane's words, 2c + 1's in the high */
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + BB * b;
            if (i0 == 0) kq_prefetch_sb(p, BB);
            const __m256i s16 = kq_k16_sc16(BITS, p);
            const __m256i sA = _mm256_permute2x128_si256(s16, s16, 0x00), sB = _mm256_permute2x128_si256(s16, s16, 0x11);
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++)
                sc[r][c] = _mm256_shuffle_epi8(c / 4 ? sB : sA, kq_word_bcast(2 * (c % 4), 2 * (c % 4) + 1));
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) I[r][i] = _mm256_setzero_si256();
        }
        #pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            const int h = c / 4, k = c % 4;
            __m256i wv[4];
            #pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *p = w + r * rb + BB * b;
                if (BITS < 6) {
                    const __m256i qs = _mm256_loadu_si256((const __m256i *)(p + (BITS == 3 ? 32 : 16) + 32 * h));
                    const __m256i lo = _mm256_and_si256(_mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * k)), _mm256_set1_epi8(3));
                    if (BITS == 2) {
                        wv[r] = lo;
                        continue;
                    }
                    const __m256i hm = _mm256_loadu_si256((const __m256i *)p);
                    const __m256i hi = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(c)), _mm256_set1_epi8(1));
                    wv[r] = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 2));
                    continue;
                }
                __m256i ql = _mm256_loadu_si256((const __m256i *)(p + 64 * h + 32 * (k % 2)));
                __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h));
                __m256i lo = _mm256_and_si256(k / 2 ? _mm256_srli_epi16(ql, 4) : ql, m4);
                /* bits 2k, 2k+1 of qh to bits 4, 5 in one 16-bit shift: bits crossing a byte
                 * boundary land outside the 0x30 mask */
                __m256i hs = k == 0 ? _mm256_slli_epi16(qh, 4)
                             : k == 1 ? _mm256_slli_epi16(qh, 2)
                             : k == 2 ? qh
                                      : _mm256_srli_epi16(qh, 2);
                wv[r] = _mm256_or_si256(lo, _mm256_and_si256(hs, m30));
            }
            #pragma GCC unroll 4
            for (int i = 0; i < N; i++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + (i0 + i) * cols + 256 * b + 32 * c));
                #pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    I[r][i] = _mm256_add_epi32(I[r][i], _mm256_madd_epi16(_mm256_maddubs_epi16(wv[r], xv), sc[r][c]));
                    KQ_PIN(I[r][i]);
                }
            }
        }
        if (N == 1) kq_q6k_finish(BITS, R, 1, w, rb, b, x, i0, I, acc1);
        else kq_q6k_finish_pairs(BITS, R, N, w, rb, b, x, i0, I, &acc);
    }
    if (N == 1) kq_store1(R, 1, acc1, y, ldy, beta);
    else kq_store_pairs(R, N, acc, y, ldy, beta);
}

/* Q6_K in the SB16 order (kernels.h KDT_Q6_K_SB16; x codes in the same order): 16-bit lane g of
 * code register t holds 2 codes of group g, so two vpmaddubsw (pairs at most 2·63·127 = 16002)
 * add in 16 bits (32004 < 2^15) and one vpmaddwd by the 16 group scales (sign-extended once per
 * super-block) gives the lanes of Σ_g sc_g·Σ q·x: q6k_tile's integer totals with 12 multiply
 * instructions per 256 codes and pair instead of 16, and one scale register per row instead of
 * eight broadcasts. The −32 offset and the f32 step are q6k_tile's. */
KQ_INL void q6s_tile(int R, int N, const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y, int64_t ldy,
                     float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    __m128 acc1[4] = {_mm_setzero_ps()};
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i sc[4], I[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + 210 * b;
            if (i0 == 0) kq_prefetch_sb(p, 210);
            sc[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 192)));
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) I[r][i] = _mm256_setzero_si256();
        }
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) { /* code registers 2u (low nibbles of ql register u), 2u + 1 (high) */
            __m256i c0[4], c1[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const uint8_t *p = w + r * rb + 210 * b;
                const __m256i ql = _mm256_loadu_si256((const __m256i *)(p + 32 * u));
                const __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * (u / 2)));
                /* bits 2·(t%4) of qh to bits 4, 5 (t = 2u: shift 4 or 0 ... as q6k_tile, 16-bit shifts
                 * whose byte-crossing bits land outside the 0x30 mask) */
                const __m256i h0 = u % 2 ? qh : _mm256_slli_epi16(qh, 4);
                const __m256i h1 = u % 2 ? _mm256_srli_epi16(qh, 2) : _mm256_slli_epi16(qh, 2);
                c0[r] = _mm256_or_si256(_mm256_and_si256(ql, m4), _mm256_and_si256(h0, m30));
                c1[r] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql, 4), m4), _mm256_and_si256(h1, m30));
            }
#pragma GCC unroll 4
            for (int i = 0; i < N; i++) {
                const int8_t *xp = x->q + (i0 + i) * cols + 256 * b + 64 * u;
                const __m256i x0 = _mm256_loadu_si256((const __m256i *)xp);
                const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xp + 32));
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(c0[r], x0), _mm256_maddubs_epi16(c1[r], x1));
                    I[r][i] = _mm256_add_epi32(I[r][i], _mm256_madd_epi16(s16, sc[r]));
                    KQ_PIN(I[r][i]);
                }
            }
        }
        if (N == 1) kq_q6k_finish(6, R, 1, w, rb, b, x, i0, I, acc1);
        else kq_q6k_finish_pairs(6, R, N, w, rb, b, x, i0, I, &acc);
    }
    if (N == 1) kq_store1(R, 1, acc1, y, ldy, beta);
    else kq_store_pairs(R, N, acc, y, ldy, beta);
}

KQ_TGT float kq_quant_block_avx2(const float *x, int len, int8_t *q) {
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < len; j += 8) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), absm), m); /* NaN: m (fmaxf) */
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float d = _mm_cvtss_f32(h) / 127.0f;
    if (d == 0.0f) {
        memset(q, 0, (size_t)len);
        return d;
    }
    const __m256 dv = _mm256_set1_ps(d), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    for (int j = 0; j < len; j += 8) {
        __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + j), dv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q)); /* NaN -> 0, as the scalar block */
        __m128i i32lo, i32hi;
        __m256i iv = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
        i32lo = _mm256_castsi256_si128(iv);
        i32hi = _mm256_extracti128_si256(iv, 1);
        __m128i w16 = _mm_packs_epi32(i32lo, i32hi);
        _mm_storel_epi64((__m128i *)(q + j), _mm_packs_epi16(w16, w16));
    }
    return d;
}

typedef void (*tile_fn)(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y, int64_t ldy, float beta);
#define TILE_FN(TAG, DT, R, N)                                                                                \
    static KQ_TGT void TAG##_##R##_##N(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y,          \
                                       int64_t ldy, float beta) {                                             \
        q8_tile(DT, R, N, w, rb, x, i0, y, ldy, beta);                                                        \
    }
#define TILE_DEF(R, N) Q32_EACH(TILE_FN, R, N)
TILE_DEF(4, 1) TILE_DEF(4, 2) TILE_DEF(2, 1) TILE_DEF(2, 2) TILE_DEF(1, 1) TILE_DEF(1, 2)
KQ_KTILE_DEF(4, 1) KQ_KTILE_DEF(2, 1) KQ_KTILE_DEF(2, 2) KQ_KTILE_DEF(2, 3) KQ_KTILE_DEF(2, 4)
KQ_KTILE_DEF(1, 1) KQ_KTILE_DEF(1, 2) KQ_KTILE_DEF(1, 3) KQ_KTILE_DEF(1, 4)
#define Q4S_DEF(R, N)                                                                                          \
    static KQ_TGT void q4s_##R##_##N(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y,            \
                                     int64_t ldy, float beta) {                                               \
        q4s_tile(R, N, w, rb, x, i0, y, ldy, beta);                                                           \
    }
Q4S_DEF(4, 1) Q4S_DEF(2, 1) Q4S_DEF(2, 2) Q4S_DEF(2, 3) Q4S_DEF(2, 4) Q4S_DEF(1, 1) Q4S_DEF(1, 2) Q4S_DEF(1, 3)
Q4S_DEF(1, 4)
#define Q6S_DEF(R, N)                                                                                          \
    static KQ_TGT void q6s_##R##_##N(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y,            \
                                     int64_t ldy, float beta) {                                               \
        q6s_tile(R, N, w, rb, x, i0, y, ldy, beta);                                                           \
    }
Q6S_DEF(4, 1) Q6S_DEF(2, 1) Q6S_DEF(2, 2) Q6S_DEF(2, 3) Q6S_DEF(2, 4) Q6S_DEF(1, 1) Q6S_DEF(1, 2) Q6S_DEF(1, 3)
Q6S_DEF(1, 4)
/* the 32-element types: [q32_index][4 | 2 | 1 rows][N - 1] */
#define TILE_ROWS(TAG, DT, a, b) {{TAG##_4_1, TAG##_4_2}, {TAG##_2_1, TAG##_2_2}, {TAG##_1_1, TAG##_1_2}},
static const tile_fn q32_tiles[Q32_TYPES][3][2] = {Q32_EACH(TILE_ROWS, 0, 0)};
/* K-quants: [4 rows (one x row only) | 2 rows | 1 row][N - 1] */
static const tile_fn q4k_tiles[3][4] = {{q4k_4_1}, {q4k_2_1, q4k_2_2, q4k_2_3, q4k_2_4}, {q4k_1_1, q4k_1_2, q4k_1_3, q4k_1_4}};
static const tile_fn q5k_tiles[3][4] = {{q5k_4_1}, {q5k_2_1, q5k_2_2, q5k_2_3, q5k_2_4}, {q5k_1_1, q5k_1_2, q5k_1_3, q5k_1_4}};
static const tile_fn q4s_tiles[3][4] = {{q4s_4_1}, {q4s_2_1, q4s_2_2, q4s_2_3, q4s_2_4}, {q4s_1_1, q4s_1_2, q4s_1_3, q4s_1_4}};
static const tile_fn q6s_tiles[3][4] = {{q6s_4_1}, {q6s_2_1, q6s_2_2, q6s_2_3, q6s_2_4}, {q6s_1_1, q6s_1_2, q6s_1_3, q6s_1_4}};
static const tile_fn q6k_tiles[3][4] = {{q6k_4_1}, {q6k_2_1, q6k_2_2, q6k_2_3, q6k_2_4}, {q6k_1_1, q6k_1_2, q6k_1_3, q6k_1_4}};
static const tile_fn q3k_tiles[3][4] = {{q3k_4_1}, {q3k_2_1, q3k_2_2, q3k_2_3, q3k_2_4}, {q3k_1_1, q3k_1_2, q3k_1_3, q3k_1_4}};
static const tile_fn q2k_tiles[3][4] = {{q2k_4_1}, {q2k_2_1, q2k_2_2, q2k_2_3, q2k_2_4}, {q2k_1_1, q2k_1_2, q2k_1_3, q2k_1_4}};

/* K-quants: a single x row (decode) takes weight rows 4 at a time (x read once per 4 rows);
 * more x rows take 2 weight rows × up to 4 x rows, each unpacked weight chunk used 4 times. */
static void kq_rows_avx2_k(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                           int64_t ldy, float beta) {
    const tile_fn (*t)[4] = dt == KDT_Q5_K ? q5k_tiles : dt == KDT_Q6_K ? q6k_tiles : dt == KDT_Q4_K_SB8 ? q4s_tiles
                                  : dt == KDT_Q6_K_SB16 ? q6s_tiles : dt == KDT_Q3_K ? q3k_tiles : dt == KDT_Q2_K ? q2k_tiles : q4k_tiles;
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

void kq_rows_avx2(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                  int64_t ldy, float beta) {
    if (kdtype_is_kquant(dt)) {
        if (!kq_rows_avx2_x16k(dt, w, rb, r0, r1, x, y, ldy, beta)) kq_rows_avx2_k(dt, w, rb, r0, r1, x, y, ldy, beta);
        return;
    }
    if (x->x16v && kq_thread_scratch(Q8X_BYTES(dt, 4, x->cols / 32))) {
#define STRIP_ROW(TAG, DT, a, b) {q8x_##TAG##_4, q8x_##TAG##_2, q8x_##TAG##_1},
        static const kq_strip_fn strips[Q32_TYPES][3] = {Q32_EACH(STRIP_ROW, 0, 0)};
        const kq_strip_fn *f = strips[q32_index(dt)];
        kq_rows_strips(f[0], f[1], f[2], w, rb, r0, r1, x, y, ldy, beta, &kq_avx2_x16_strips);
        return;
    }
    for (int64_t r = r0; r < r1;) {
        const int R = r1 - r >= 4 ? 4 : r1 - r >= 2 ? 2 : 1;
        const tile_fn *fns = q32_tiles[q32_index(dt)][R == 4 ? 0 : R == 2 ? 1 : 2];
        for (int i = 0; i < x->n; i += 2) {
            int N = x->n - i < 2 ? x->n - i : 2;
            fns[N - 1](w + r * rb, rb, x, i, y + (int64_t)i * ldy + r, ldy, beta);
        }
        r += R;
    }
}
