/* kernels/cpu/qdot_kquant_avx512.h — the K-quant code unpacking the AVX-512 tiles
 * (qdot_avx512_k.c) and the AMX tiles (qdot_amx.c) share: 64 codes of a super-block (two 32-code
 * chunks) as bytes in one zmm, in natural order; and the pairwise lane sums the AVX-512 tiles
 * reduce with. Header-only; compiled for AVX-512 by target
 * attributes (the AMX caller's target includes them). Private to kernels/cpu/. */
#ifndef PEFTD_KCPU_QDOT_KQUANT_AVX512_H
#define PEFTD_KCPU_QDOT_KQUANT_AVX512_H

#include <immintrin.h>
#include <stdint.h>

#define KQ5_INL static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512dq,avx2")))

/* vpermw / vpsllvw index: word a in the low 256 bits, word b in the high 256 bits. */
KQ5_INL __m512i kq_idx2(int a, int b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)a)), _mm256_set1_epi16((short)b), 1);
}

/* The pairwise lane sums of a and b side by side: lane j < 8 = a[2j] + a[2j+1], lane 8 + j =
 * b[2j] + b[2j+1] (two two-source permutes and an add). Rounds of it halve the lanes per sum: the
 * decode tiles' row totals (qdot_avx512_k.c) and the Q8_0 block sums (qdot_avx512.c). */
KQ5_INL __m512i kq_pairsum(__m512i a, __m512i b) {
    const __m512i E = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_add_epi32(_mm512_permutex2var_epi32(a, E, b),
                            _mm512_permutex2var_epi32(a, _mm512_add_epi32(E, _mm512_set1_epi32(1)), b));
}

/* Q4_K / Q5_K chunks 2k, 2k + 1 of the super-block at p as unsigned codes, low chunk below, high
 * above: the 32 qs bytes of the pair once, low nibbles below, high nibbles above (Q5_K: + 16
 * where bit 2k (low chunk) / 2k + 1 (high) of qh[l] is set, a byte mask test and a masked add). */
KQ5_INL __m512i kq_q4k_codes2(int FIVE, const uint8_t *p, int k) {
    const int QS = FIVE ? 48 : 16;
    /* the 32 bytes in both halves by a broadcast load (no shuffle-port insert), the high half
     * shifted by 4 under a mask, one and */
    const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + QS + 32 * k)));
    __m512i wv = _mm512_and_si512(_mm512_mask_srli_epi16(q, (__mmask32)0xFFFF0000u, q, 4), _mm512_set1_epi8(15));
    if (FIVE) {
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + 16)));
        const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << 2 * k)), _mm256_set1_epi8((char)(1 << (2 * k + 1))), 1);
        wv = _mm512_mask_add_epi8(wv, _mm512_test_epi8_mask(qh, bit), wv, _mm512_set1_epi8(16));
    }
    return wv;
}

/* Q6_K chunks 2mm, 2mm + 1 (= 4h + 2m, 4h + 2m + 1) of the super-block at p as 6-bit codes (0..63),
 * low chunk below, high above. Bits 2k, 2k+1 of qh go to bits 4, 5: k = 0, 1 shift left by 4, 2;
 * k = 2, 3 by 0, right by 2 (16-bit shifts: bits crossing a byte boundary land outside the 0x30
 * mask). */
KQ5_INL __m512i kq_q6k_codes2(const uint8_t *p, int mm) {
    const int h = mm / 2, m = mm % 2;
    const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    const __m512i ql = _mm512_loadu_si512(p + 64 * h);
    const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h)));
    const __m512i lo = _mm512_and_si512(m ? _mm512_srli_epi16(ql, 4) : ql, m4);
    const __m512i hs = m ? _mm512_srlv_epi16(qh, kq_idx2(0, 2)) : _mm512_sllv_epi16(qh, kq_idx2(4, 2));
    return _mm512_or_si512(lo, _mm512_and_si512(hs, m30));
}

#endif
