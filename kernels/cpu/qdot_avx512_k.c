/* kernels/cpu/qdot_avx512_k.c — the K-quants (Q4_K, Q5_K, Q6_K, Q3_K, Q2_K) on AVX-512 (the VNNI path of
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
 *   Q3_K: Q6_K's tiles on its 3-bit codes, scales sc − 32 and offset 4, with the chunk pairs
 *         (k, k + 4): one shift and and of the 64 qs bytes, one byte mask test of hmask each.
 *   Q2_K: the same pairs of its 2-bit codes (Q3_K's low bits), 4-bit scales, and its mins' term
 *         as Q4_K's (lanes 4-7 of the totals, the second f32 step).
 * The Q4_K/Q5_K decode tile reads 64 qs bytes at once instead (kq_q4k_codes4: chunks 4h, 4h + 2
 * in one zmm, 4h + 1, 4h + 3 in another, x built to match; the same integer totals).
 * Tiles: 4 weight rows × 1 x row (decode; 2 and 1 for the last rows); batches 1 weight row × up
 * to 8 x rows with the f32 step for two x rows per zmm (below). The first x group of a row
 * prefetches KQ_PF ahead, as the AVX2 tiles, except the Q6_K decode tile, which prefetches the
 * next strip of rows in order (kq_prefetch_strip: Q6_K 26-28 → 28-31 GB/s; for Q4_K it was
 * neutral on 2048 columns and worse on 8192, so Q4_K/Q5_K keep per-row prefetch). Compiled for
 * these instructions by target attributes; called only when the CPU has them. */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/qdot_kquant_avx512.h"
#include "kernels/cpu/qdot_kquant_x86.h"
#include "kernels/cpu/qmatmul.h"

#define KQ_TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define KQ_INL static inline __attribute__((always_inline)) KQ_TGT

/* Q4_K / Q5_K chunk pair k (kq_q4k_codes2) and its scales (scw: sc_0..7 in words 0-7) in the same
 * halves. */
KQ_INL void kq_q4k_pair(int FIVE, const uint8_t *p, int k, __m512i scw, __m512i *wv, __m512i *s) {
    *wv = kq_q4k_codes2(FIVE, p, k);
    *s = _mm512_permutexvar_epi16(kq_idx2(2 * k, 2 * k + 1), scw);
}

/* Q6_K chunk pair mm (kq_q6k_codes2) and its four 16-element groups' scales (scw: the 16 scales as
 * words), group 4mm + L in 128-bit lane L. */
KQ_INL void kq_q6k_pair(const uint8_t *p, int mm, __m512i scw, __m512i *wv, __m512i *s) {
    const int g = 4 * mm;
    const __m512i idx = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_setr_epi16(g, g, g, g, g, g, g, g, g + 1, g + 1, g + 1, g + 1, g + 1, g + 1, g + 1, g + 1)),
        _mm256_setr_epi16(g + 2, g + 2, g + 2, g + 2, g + 2, g + 2, g + 2, g + 2, g + 3, g + 3, g + 3, g + 3, g + 3, g + 3, g + 3,
                          g + 3),
        1);
    *wv = kq_q6k_codes2(p, mm);
    *s = _mm512_permutexvar_epi16(idx, scw);
}

/* I[r] (+)= the products of weight rows r (codes wv, scales s) and the x codes xv (the decode
 * tiles' inner loop); the first call starts the sums (vpmaddwd: no zeroed accumulator). xv is
 * pinned to a register (KQ_IN_REG): one load for the R rows. */
KQ_INL void kq_dot_rows(int R, const __m512i wv[4], const __m512i s[4], __m512i xv, int first, __m512i I[4]) {
    KQ_IN_REG(xv);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        I[r] = first ? _mm512_madd_epi16(_mm512_maddubs_epi16(wv[r], xv), s[r])
                     : _mm512_dpwssd_epi32(I[r], _mm512_maddubs_epi16(wv[r], xv), s[r]);
}

/* kq_dot_rows with the chunk pair's x codes at element offset off of x row 0 (Q6_K). */
KQ_INL void kq_dot_pairs(int R, const __m512i wv[4], const __m512i s[4], const kq_x *x, int64_t off, int first,
                         __m512i I[4]) {
    kq_dot_rows(R, wv, s, _mm512_loadu_si512(x->q + off), first, I);
}

/* The vpermw indices of the decode tile's scales (kq_q4k_scales4's words: row 2j + o at 16o):
 * [o][h][0] picks sc_4h (low 256 bits) and sc_4h+2 (high) of row o, [o][h][1] sc_4h+1 and
 * sc_4h+3 — kq_q4k_codes4's chunk order. Loaded from memory: built in registers, GCC
 * rematerialized them (broadcast + insert) in every super-block. */
#define KQ_SIDX(o, h, c) {[0 ... 15] = 16 * (o) + 4 * (h) + (c), [16 ... 31] = 16 * (o) + 4 * (h) + (c) + 2}
static const int16_t kq_q4k_sidx[2][2][2][32] __attribute__((aligned(64))) = {
    {{KQ_SIDX(0, 0, 0), KQ_SIDX(0, 0, 1)}, {KQ_SIDX(0, 1, 0), KQ_SIDX(0, 1, 1)}},
    {{KQ_SIDX(1, 0, 0), KQ_SIDX(1, 0, 1)}, {KQ_SIDX(1, 1, 0), KQ_SIDX(1, 1, 1)}}};
#undef KQ_SIDX

/* Byte a in every byte of the low 256 bits, b in the high 256 bits. */
KQ_INL __m512i kq_bytes2(int a, int b) {
    return _mm512_inserti64x4(_mm512_set1_epi8((char)a), _mm256_set1_epi8((char)b), 1);
}

/* Q3_K's chunk pairs are (k, k + 4), k < 4: chunk k's low 2 bits are bits 2k, 2k + 1 of qs bytes
 * 0-31 and chunk k + 4's the same bits of bytes 32-63, so one shift and one and of the 64 qs bytes
 * Q give both; their high bits are bits k and k + 4 of the 32 hmask bytes H (in both halves): a
 * byte mask test and a masked add of 4. Codes 0..7, chunk k below, k + 4 above. */
KQ_INL __m512i kq_q3k_codes_k4(__m512i Q, __m512i H, int k) {
    const __m512i lo = _mm512_and_si512(_mm512_srli_epi16(Q, 2 * k), _mm512_set1_epi8(3));
    return _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(H, kq_bytes2(1 << k, 1 << (k + 4))), lo, _mm512_set1_epi8(4));
}

/* Q2_K's pair (k, k + 4): Q3_K's low bits alone, from its 64 qs bytes Q. */
KQ_INL __m512i kq_q2k_codes_k4(__m512i Q, int k) { return _mm512_and_si512(_mm512_srli_epi16(Q, 2 * k), _mm512_set1_epi8(3)); }

/* The vpermw indices of Q3_K pair k's scales (16 words): groups 2k, 2k + 1 (chunk k) in 128-bit
 * lanes 0, 1, groups 2k + 8, 2k + 9 (chunk k + 4) in lanes 2, 3. */
#define KQ3_SIDX(k) {[0 ... 7] = 2 * (k), [8 ... 15] = 2 * (k) + 1, [16 ... 23] = 2 * (k) + 8, [24 ... 31] = 2 * (k) + 9}
static const int16_t kq_q3k_sidx[4][32] __attribute__((aligned(64))) = {KQ3_SIDX(0), KQ3_SIDX(1), KQ3_SIDX(2), KQ3_SIDX(3)};
#undef KQ3_SIDX

/* The x codes of Q3_K pair k: the 32 at q (chunk k) below, the 32 at q + 128 (chunk k + 4) above. */
KQ_INL __m512i kq_q3k_x(const int8_t *q) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)q)),
                              _mm256_loadu_si256((const __m256i *)(q + 128)), 1);
}

/* Q4_K / Q5_K chunks 4h .. 4h + 3 of the super-block at p from one 64-byte load of its qs bytes
 * [64h, 64h + 64): *lo = [chunk 4h | chunk 4h + 2] (low nibbles), *hi = [chunk 4h + 1 | chunk
 * 4h + 3] (high nibbles); Q5_K: + 16 where the chunk's bit of qh[l] is set. One load, one shift
 * and two ands for four chunks where kq_q4k_codes2 takes a broadcast, a masked shift and an and
 * for two (the decode tile's inner loop is bound by these vector ops, not by memory). */
KQ_INL void kq_q4k_codes4(int FIVE, const uint8_t *p, int h, __m512i *lo, __m512i *hi) {
    const int QS = FIVE ? 48 : 16;
    const __m512i q = _mm512_loadu_si512(p + QS + 64 * h), m4 = _mm512_set1_epi8(15);
    *lo = _mm512_and_si512(q, m4);
    *hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
    if (FIVE) {
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + 16)));
        const __m512i b0 = kq_bytes2(1 << 4 * h, 1 << (4 * h + 2)), b1 = kq_bytes2(2 << 4 * h, 2 << (4 * h + 2));
        *lo = _mm512_mask_add_epi8(*lo, _mm512_test_epi8_mask(qh, b0), *lo, _mm512_set1_epi8(16));
        *hi = _mm512_mask_add_epi8(*hi, _mm512_test_epi8_mask(qh, b1), *hi, _mm512_set1_epi8(16));
    }
}

/* x row 0's chunks at element offsets off and off + 64 side by side (the x of kq_q4k_codes4's
 * halves: chunks 4h, 4h + 2 at off = 256b + 128h, chunks 4h + 1, 4h + 3 at off + 32). */
KQ_INL __m512i kq_x_chunks(const kq_x *x, int64_t off) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(x->q + off))),
                              _mm256_loadu_si256((const __m256i *)(x->q + off + 64)), 1);
}

/* y[r] (+)= lane r of acc for r < R: a decode tile's outputs. */
KQ_INL void kq_store_rows(int R, __m128 acc, float *y, float beta) {
    float a[4];
    _mm_storeu_ps(a, acc);
    for (int r = 0; r < R; r++) y[r] = beta != 0.0f ? y[r] + a[r] : a[r];
}

/* The decode tiles' exact totals of weight rows r < R (R <= 4) against one x row: from the pair
 * sums I[r] (chunk halves unfolded) and add[r] (8 int32 lanes to add to them: Q6_K's −32 offset) or
 * MV (Q4_K/Q5_K: the mins products of rows 2j, 2j + 1 in the low and high 256 bits of MV[j]),
 * lanes 0-3 = Σ I_r(+add_r), lanes 4-7 = M_r (0 for Q6_K). Each row folds into one zmm
 * [I lo + I hi (+ add) | its M lanes], then three rounds of two-source permutes and
 * adds halve the lanes per sum (the AVX2 transpose-add of kq_hsum8x8 takes 21 µops, this 20 on
 * fewer shuffles). Exact integers, so the same totals as every other path. */
KQ_INL __m256i kq_totals4(int R, const __m512i I[4], const __m256i add[4], const __m512i MV[2]) {
    __m512i c[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
        if (r >= R) {
            c[r] = _mm512_setzero_si512();
            continue;
        }
        const __m512i t = add ? _mm512_add_epi32(I[r], _mm512_castsi256_si512(add[r])) : I[r];
        /* u = [I hi | row r's half of MV[r / 2]]; lanes 0-7 += I lo */
        const __m512i mv = MV ? MV[r / 2] : _mm512_setzero_si512();
        const __m512i u = r % 2 ? _mm512_shuffle_i64x2(t, mv, 0xEE) : _mm512_shuffle_i64x2(t, mv, 0x4E);
        c[r] = _mm512_mask_add_epi32(u, 0x00FF, u, t);
    }
    /* items of 4 lanes: (0, I), (0, M), (1, I), (1, M) | the same for rows 2, 3; then of 2 lanes:
     * (0, I), (0, M), (1, I), (1, M), (2, I), ... */
    const __m512i e = kq_pairsum(kq_pairsum(c[0], c[1]), kq_pairsum(c[2], c[3]));
    /* (r, I) at lane 4r, (r, M) at 4r + 2 */
    const __m512i F = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i f = _mm512_add_epi32(_mm512_permutexvar_epi32(F, e),
                                       _mm512_permutexvar_epi32(_mm512_add_epi32(F, _mm512_set1_epi32(1)), e));
    return _mm512_castsi512_si256(f);
}

/* The scales, mins, d and dmin of super-block b of weight rows r < 4 (rows past R repeat row 0) in
 * one pass: each row's first 16 block bytes (d, dmin, the 12 scale bytes) in one 128-bit lane, the
 * 6-bit unpacking of kq_q4k_scales8 done once for the four. Out: W[j] = rows 2j, 2j + 1 as words,
 * [sc_0..7, m_0..7] per row (16 words each); dd = [d_0..3 | dmin_0..3]. */
KQ_INL void kq_q4k_scales4(int R, const uint8_t *w, size_t rb, int BB, int64_t b, __m512i W[2], __m256 *dd) {
    const uint8_t *p = w + BB * b;
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + (R > 1 ? rb : 0))), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + (R > 2 ? 2 * rb : 0))), 2);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + (R > 3 ? 3 * rb : 0))), 3);
    /* per lane the dwords [d | dmin, u0, u1, u2] */
    const __m512i lo = _mm512_and_si512(v, _mm512_set1_epi8(0x3f)); /* dword 1: sc0-3, dword 2: m0-3 */
    const __m512i u2 = _mm512_srlv_epi32(_mm512_shuffle_epi32(v, _MM_PERM_DDDD), _mm512_set4_epi32(0, 4, 0, 0));
    const __m512i hi = _mm512_or_si512(_mm512_and_si512(u2, _mm512_set1_epi8(0x0f)),
                                       _mm512_and_si512(_mm512_srli_epi32(v, 2), _mm512_set1_epi8(0x30)));
    /* dword 1: sc4-7, dword 2: m4-7; gathered per lane to [sc0-3, sc4-7, m0-3, m4-7] */
    const __m512i sm = _mm512_permutex2var_epi32(lo, _mm512_setr_epi32(1, 17, 2, 18, 5, 21, 6, 22, 9, 25, 10, 26, 13, 29, 14, 30), hi);
    W[0] = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(sm));
    W[1] = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(sm, 1));
    const __m128i h = _mm512_castsi512_si128(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), v));
    *dd = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(h), _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)); /* d0 m0 d1 m1 .. */
}

/* Q4_K (FIVE = 0) and Q5_K (FIVE = 1), decode: weight rows r < R (R <= 4) × x row 0. Per
 * super-block: the four rows' scales in one pass (kq_q4k_scales4), each row's codes four chunks
 * per load (kq_q4k_codes4), a chunk pair's scale words by one vpermw from its row pair's words
 * (indices kq_q4k_sidx), the mins term of two rows by one vpmaddwd against the x
 * code sums placed under the mins' words, the totals (kq_totals4), kq_q4k_finish's f32 step. */
KQ_INL void q4k_tile(int FIVE, int R, const uint8_t *w, size_t rb, const kq_x *x, float *y, float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const int BB = FIVE ? 176 : 144;
    __m128 acc = _mm_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i W[2], I[4];
        __m256 dd;
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) kq_prefetch_sb(w + r * rb + BB * b, BB);
        kq_q4k_scales4(R, w, rb, BB, b, W, &dd);
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m512i lo[4], hi[4], s[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) kq_q4k_codes4(FIVE, w + r * rb + BB * b, h, &lo[r], &hi[r]);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                s[r] = _mm512_permutexvar_epi16(_mm512_load_si512(kq_q4k_sidx[r % 2][h][0]), W[r / 2]);
            kq_dot_rows(R, lo, s, kq_x_chunks(x, 256 * b + 128 * h), h == 0, I);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                s[r] = _mm512_permutexvar_epi16(_mm512_load_si512(kq_q4k_sidx[r % 2][h][1]), W[r / 2]);
            kq_dot_rows(R, hi, s, kq_x_chunks(x, 256 * b + 128 * h + 32), 0, I);
        }
        /* the x code sums under each row's mins words (lanes 1 and 3), zeros under the scales */
        const __m512i XW = _mm512_maskz_mov_epi64(0xCC, _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(x->gsum + 8 * b))));
        const __m512i MV[2] = {_mm512_madd_epi16(W[0], XW), _mm512_madd_epi16(W[1], XW)};
        const __m256 t = _mm256_cvtepi32_ps(kq_totals4(R, I, NULL, MV)); /* [I_0..3 | M_0..3] */
        const __m256 f = _mm256_xor_ps(_mm256_mul_ps(dd, _mm256_set1_ps(x->d[b])),
                                       _mm256_setr_ps(0, 0, 0, 0, -0.0f, -0.0f, -0.0f, -0.0f)); /* d·dx | −(dmin·dx) */
        acc = _mm_fmadd_ps(_mm256_castps256_ps128(t), _mm256_castps256_ps128(f), acc);
        acc = _mm_fmadd_ps(_mm256_extractf128_ps(t, 1), _mm256_extractf128_ps(f, 1), acc);
    }
    kq_store_rows(R, acc, y, beta);
}

/* The Q6_K family (BITS: Q6_K 6, Q3_K 3, Q2_K 2), decode: weight rows r < R (R <= 4) × x row 0;
 * the totals (kq_totals4, with the code offset's terms added to the lanes; Q2_K's mins' terms in
 * lanes 4-7, as Q4_K's), then kq_q6k_finish's f32 step. */
KQ_INL void q6k_tile(int BITS, int R, const uint8_t *w, size_t rb, const kq_x *x, float *y, float beta) {
    const int64_t nb = x->cols / 256;
    const int BB = kq_k16_bytes(BITS);
    __m128 acc = _mm_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i scw[4], I[4], Q3[4], H3[4]; /* Q3[r], H3[r]: Q3_K's (Q2_K's) qs and hmask bytes (kq_q3k_codes_k4) */
        __m256i v[4], mg[4];                 /* Q2_K: mg[r] = the mins' products with the x group sums */
        uint16_t hd[4] = {0}, hm[4] = {0};
        const __m256i G = _mm256_loadu_si256((const __m256i *)(x->gsum + 16 * b));
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + BB * b;
            kq_prefetch_strip(w, rb, R, BB, b, r);
            const __m256i sc16 = kq_k16_sc16(BITS, p);
            scw[r] = _mm512_castsi256_si512(sc16);
            if (BITS == 2) {
                mg[r] = _mm256_madd_epi16(kq_q2k_m16(p), G);
                memcpy(&hd[r], p + 80, 2);
                memcpy(&hm[r], p + 82, 2);
                Q3[r] = _mm512_loadu_si512(p + 16);
                continue;
            }
            /* −32·sc_g (Q3_K −4·sc_g) as 16 words (|·| <= 4096) times the x group sums */
            v[r] = _mm256_madd_epi16(_mm256_mullo_epi16(sc16, _mm256_set1_epi16(BITS == 3 ? -4 : -32)), G);
            memcpy(&hd[r], p + BB - 2, 2);
            if (BITS == 3) {
                Q3[r] = _mm512_loadu_si512(p + 32);
                H3[r] = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p));
            }
        }
#pragma GCC unroll 4
        for (int mm = 0; mm < 4; mm++) { /* chunks 2mm, 2mm + 1 (Q3_K, Q2_K: mm, mm + 4) */
            __m512i wv[4], s[4];
            if (BITS < 6) {
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    wv[r] = BITS == 2 ? kq_q2k_codes_k4(Q3[r], mm) : kq_q3k_codes_k4(Q3[r], H3[r], mm);
                    s[r] = _mm512_permutexvar_epi16(_mm512_load_si512(kq_q3k_sidx[mm]), scw[r]);
                }
                kq_dot_rows(R, wv, s, kq_q3k_x(x->q + 256 * b + 32 * mm), mm == 0, I);
                continue;
            }
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) kq_q6k_pair(w + r * rb + BB * b, mm, scw[r], &wv[r], &s[r]);
            kq_dot_pairs(R, wv, s, x, 256 * b + 64 * mm, mm == 0, I);
        }
        /* built in a register (four narrow stores and one wide load would stall) */
        const __m128 d = _mm_cvtph_ps(_mm_setr_epi16((short)hd[0], (short)hd[1], (short)hd[2], (short)hd[3], 0, 0, 0, 0));
        if (BITS == 2) { /* [T_0..3 | M_0..3], then kq_q6k_finish's two steps */
            const __m512i MV[2] = {_mm512_inserti64x4(_mm512_castsi256_si512(mg[0]), mg[R > 1 ? 1 : 0], 1),
                                   _mm512_inserti64x4(_mm512_castsi256_si512(mg[R > 2 ? 2 : 0]), mg[R > 3 ? 3 : 0], 1)};
            const __m256 t = _mm256_cvtepi32_ps(kq_totals4(R, I, NULL, MV));
            const __m128 dm = _mm_cvtph_ps(_mm_setr_epi16((short)hm[0], (short)hm[1], (short)hm[2], (short)hm[3], 0, 0, 0, 0));
            const __m128 dx = _mm_set1_ps(x->d[b]);
            acc = _mm_fmadd_ps(_mm256_castps256_ps128(t), _mm_mul_ps(d, dx), acc);
            acc = _mm_fmadd_ps(_mm256_extractf128_ps(t, 1), _mm_xor_ps(_mm_mul_ps(dm, dx), _mm_set1_ps(-0.0f)), acc);
            continue;
        }
        const __m128 T = _mm_cvtepi32_ps(_mm256_castsi256_si128(kq_totals4(R, I, v, NULL)));
        acc = _mm_fmadd_ps(T, _mm_mul_ps(d, _mm_set1_ps(x->d[b])), acc);
    }
    kq_store_rows(R, acc, y, beta);
}

/* ---- Batches: one weight row × up to 8 x rows ----
 * A weight chunk pair is unpacked once for 8 x rows; each super-block's exact totals of the 8
 * (row, x row) pairs are summed in one transpose-add (kq_hsum8x8) and its f32 step runs on the
 * 8 x rows in the lanes of one ymm: the same products and fmas as kq_q4k_finish /
 * kq_q6k_finish, so the bits of the decode tiles and of AVX2. */
#define KQ_NB 8

/* The offsets into x->d of x rows i0 .. i0 + 7 (rows past N repeat the last one: their lanes are
 * discarded), for a gather of the 8 rows' scales of one super-block. */
KQ_INL __m256i kq_xrows8(int i0, int N, int64_t nb) {
    const __m256i i = _mm256_min_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(N - 1));
    return _mm256_mullo_epi32(_mm256_add_epi32(i, _mm256_set1_epi32(i0)), _mm256_set1_epi32((int)nb));
}

/* Q4_K (FIVE = 0), Q5_K (FIVE = 1): weight row w × x rows i0 .. i0 + N - 1 (N <= 8); the f32
 * step (kq_q4k_finish's, one lane per x row) runs on the 8 x rows in one ymm. */
KQ_INL void q4k_tile_b(int FIVE, int N, const uint8_t *w, const kq_x *x, int i0, float *y, int64_t ldy,
                       float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const int BB = FIVE ? 176 : 144;
    __m256 acc = _mm256_setzero_ps();
    const __m256i xrow = kq_xrows8(i0, N, nb);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + BB * b;
        if (i0 == 0) kq_prefetch_sb(p, BB);
        __m256i sc16, m32;
        kq_q4k_scales8(p, &sc16, &m32);
        const __m512i scw = _mm512_castsi256_si512(sc16);
        __m512i I[KQ_NB];
#pragma GCC unroll 8
        for (int i = 0; i < N; i++) I[i] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            __m512i wv, s;
            kq_q4k_pair(FIVE, p, k, scw, &wv, &s);
#pragma GCC unroll 8
            for (int i = 0; i < N; i++) {
                __m512i xv = _mm512_loadu_si512(x->q + (i0 + i) * cols + 256 * b + 64 * k);
                I[i] = _mm512_dpwssd_epi32(I[i], _mm512_maddubs_epi16(wv, xv), s);
            }
        }
        __m256i vi[KQ_NB], vm[KQ_NB];
#pragma GCC unroll 8
        for (int i = 0; i < KQ_NB; i++) {
            if (i < N) {
                vi[i] = _mm256_add_epi32(_mm512_castsi512_si256(I[i]), _mm512_extracti64x4_epi64(I[i], 1));
                vm[i] = _mm256_madd_epi16(m32, _mm256_cvtepi16_epi32(_mm_loadu_si128(
                                                   (const __m128i *)(x->gsum + (i0 + i) * (cols / 32) + 8 * b))));
            } else
                vi[i] = vm[i] = _mm256_setzero_si256();
        }
        int32_t h2;
        memcpy(&h2, p, 4);
        const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(h2));
        const __m256 dx = _mm256_i32gather_ps(x->d + b, xrow, 4);
        const __m256 fd = _mm256_mul_ps(_mm256_set1_ps(_mm_cvtss_f32(dd)), dx);
        const __m256 fm = _mm256_xor_ps(_mm256_mul_ps(_mm256_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(dd))), dx),
                                        _mm256_set1_ps(-0.0f)); /* −(dmin·dx) */
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(kq_hsum8x8(vi)), fd, acc);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(kq_hsum8x8(vm)), fm, acc);
    }
    float a[KQ_NB];
    _mm256_storeu_ps(a, acc);
    for (int i = 0; i < N; i++) {
        float *yp = y + i * ldy;
        *yp = beta != 0.0f ? *yp + a[i] : a[i];
    }
}

/* The Q6_K family (BITS): weight row w × x rows i0 .. i0 + N - 1 (N <= 8); the f32 step
 * (kq_q6k_finish's) on the 8 x rows in one ymm. */
KQ_INL void q6k_tile_b(int BITS, int N, const uint8_t *w, const kq_x *x, int i0, float *y, int64_t ldy, float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    const int BB = kq_k16_bytes(BITS);
    __m256 acc = _mm256_setzero_ps();
    const __m256i xrow = kq_xrows8(i0, N, nb);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = w + BB * b;
        if (i0 == 0) kq_prefetch_sb(p, BB);
        const __m256i sc16 = kq_k16_sc16(BITS, p);
        const __m512i scw = _mm512_castsi256_si512(sc16);
        __m512i I[KQ_NB];
#pragma GCC unroll 8
        for (int i = 0; i < N; i++) I[i] = _mm512_setzero_si512();
        const __m512i Q3 = BITS < 6 ? _mm512_loadu_si512(p + (BITS == 3 ? 32 : 16)) : _mm512_setzero_si512(),
                      H3 = BITS == 3 ? _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p)) : _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int mm = 0; mm < 4; mm++) { /* chunks 2mm, 2mm + 1 (Q3_K, Q2_K: mm, mm + 4) */
            __m512i wv, s;
            if (BITS < 6) {
                wv = BITS == 2 ? kq_q2k_codes_k4(Q3, mm) : kq_q3k_codes_k4(Q3, H3, mm);
                s = _mm512_permutexvar_epi16(_mm512_load_si512(kq_q3k_sidx[mm]), scw);
            } else
                kq_q6k_pair(p, mm, scw, &wv, &s);
#pragma GCC unroll 8
            for (int i = 0; i < N; i++) {
                const int8_t *xq = x->q + (i0 + i) * cols + 256 * b;
                __m512i xv = BITS < 6 ? kq_q3k_x(xq + 32 * mm) : _mm512_loadu_si512(xq + 64 * mm);
                I[i] = _mm512_dpwssd_epi32(I[i], _mm512_maddubs_epi16(wv, xv), s);
            }
        }
        /* the offset's factors (Q6_K, Q3_K) or Q2_K's mins, times each x row's group sums */
        const __m256i nsc = BITS == 2 ? kq_q2k_m16(p) : _mm256_mullo_epi16(sc16, _mm256_set1_epi16(BITS == 3 ? -4 : -32));
        __m256i v[KQ_NB], vm[KQ_NB];
#pragma GCC unroll 8
        for (int i = 0; i < KQ_NB; i++) {
            if (i >= N) {
                v[i] = vm[i] = _mm256_setzero_si256();
                continue;
            }
            const __m256i t = _mm256_add_epi32(_mm512_castsi512_si256(I[i]), _mm512_extracti64x4_epi64(I[i], 1));
            const __m256i o = _mm256_madd_epi16(nsc, _mm256_loadu_si256((const __m256i *)(x->gsum + (i0 + i) * (cols / 16) + 16 * b)));
            v[i] = BITS == 2 ? t : _mm256_add_epi32(t, o);
            vm[i] = o;
        }
        uint16_t hd, hm;
        memcpy(&hd, p + (BITS == 2 ? 80 : BB - 2), 2);
        const __m256 dx = _mm256_i32gather_ps(x->d + b, xrow, 4);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(kq_hsum8x8(v)), _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(hd)), dx), acc);
        if (BITS == 2) { /* −(dmin·dx) */
            memcpy(&hm, p + 82, 2);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(kq_hsum8x8(vm)),
                                  _mm256_xor_ps(_mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(hm)), dx), _mm256_set1_ps(-0.0f)), acc);
        }
    }
    float a[KQ_NB];
    _mm256_storeu_ps(a, acc);
    for (int i = 0; i < N; i++) {
        float *yp = y + i * ldy;
        *yp = beta != 0.0f ? *yp + a[i] : a[i];
    }
}

typedef void (*tile_b_fn)(const uint8_t *w, const kq_x *x, int i0, float *y, int64_t ldy, float beta);
#define BTILE_FN(TAG, TILE, P, N, _)                                                                          \
    static KQ_TGT void TAG##b_##N(const uint8_t *w, const kq_x *x, int i0, float *y, int64_t ldy, float beta) { \
        TILE##_b(P, N, w, x, i0, y, ldy, beta);                                                               \
    }
#define BTILE_DEF(N) KQ_KTYPES_EACH(BTILE_FN, N, 0)
BTILE_DEF(1) BTILE_DEF(2) BTILE_DEF(3) BTILE_DEF(4) BTILE_DEF(5) BTILE_DEF(6) BTILE_DEF(7) BTILE_DEF(8)
static const tile_b_fn q4kb_tiles[KQ_NB] = {q4kb_1, q4kb_2, q4kb_3, q4kb_4, q4kb_5, q4kb_6, q4kb_7, q4kb_8};
static const tile_b_fn q5kb_tiles[KQ_NB] = {q5kb_1, q5kb_2, q5kb_3, q5kb_4, q5kb_5, q5kb_6, q5kb_7, q5kb_8};
static const tile_b_fn q6kb_tiles[KQ_NB] = {q6kb_1, q6kb_2, q6kb_3, q6kb_4, q6kb_5, q6kb_6, q6kb_7, q6kb_8};
static const tile_b_fn q3kb_tiles[KQ_NB] = {q3kb_1, q3kb_2, q3kb_3, q3kb_4, q3kb_5, q3kb_6, q3kb_7, q3kb_8};
static const tile_b_fn q2kb_tiles[KQ_NB] = {q2kb_1, q2kb_2, q2kb_3, q2kb_4, q2kb_5, q2kb_6, q2kb_7, q2kb_8};

typedef void (*tile_fn)(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y, int64_t ldy, float beta);
#define DTILE_FN(TAG, TILE, P, R, N)                                                                          \
    static KQ_TGT void TAG##_##R##_##N(const uint8_t *w, size_t rb, const kq_x *x, int i0, float *y,          \
                                       int64_t ldy, float beta) {                                             \
        TILE(P, R, w, rb, x, y, beta);                                                                        \
    }
#define DTILE_DEF(R) KQ_KTYPES_EACH(DTILE_FN, R, 1)
DTILE_DEF(4) DTILE_DEF(2) DTILE_DEF(1)
/* decode (one x row): [4 rows | 2 rows | 1 row][0] */
static const tile_fn q4k_tiles[3][4] = {{q4k_4_1}, {q4k_2_1}, {q4k_1_1}};
static const tile_fn q5k_tiles[3][4] = {{q5k_4_1}, {q5k_2_1}, {q5k_1_1}};
static const tile_fn q6k_tiles[3][4] = {{q6k_4_1}, {q6k_2_1}, {q6k_1_1}};
static const tile_fn q3k_tiles[3][4] = {{q3k_4_1}, {q3k_2_1}, {q3k_1_1}};
static const tile_fn q2k_tiles[3][4] = {{q2k_4_1}, {q2k_2_1}, {q2k_1_1}};

void kq_rows_avx512_k(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                      int64_t ldy, float beta) {
    if (x->n > 1) { /* batches: one weight row × 8 x rows at a time */
        const tile_b_fn *t = dt == KDT_Q5_K ? q5kb_tiles : dt == KDT_Q6_K ? q6kb_tiles : dt == KDT_Q3_K ? q3kb_tiles : dt == KDT_Q2_K ? q2kb_tiles : q4kb_tiles;
        for (int64_t r = r0; r < r1; r++)
            for (int i = 0; i < x->n; i += KQ_NB) {
                int N = x->n - i < KQ_NB ? x->n - i : KQ_NB;
                t[N - 1](w + r * rb, x, i, y + (int64_t)i * ldy + r, ldy, beta);
            }
        return;
    }
    const tile_fn (*t)[4] = dt == KDT_Q5_K ? q5k_tiles : dt == KDT_Q6_K ? q6k_tiles : dt == KDT_Q3_K ? q3k_tiles : dt == KDT_Q2_K ? q2k_tiles : q4k_tiles;
    for (int64_t r = r0; r < r1;) {
        int R = r1 - r >= 4 ? 4 : r1 - r >= 2 ? 2 : 1;
        t[R == 4 ? 0 : R == 2 ? 1 : 2][0](w + r * rb, rb, x, 0, y + r, ldy, beta);
        r += R;
    }
}
