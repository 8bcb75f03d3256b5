/* kernels/cpu/qx16k.h — what the K-quant tiles on the x16 layout share (qdot_avx2_x16k.c: 8 x
 * rows per ymm; qdot_avx512_x16k.c: 16 per zmm): a strip of R <= 4 weight rows unpacked once per
 * call, and the walk over a super-block that both tiles take. Header-only, compiled for AVX2 by
 * target attributes (the AVX-512 caller's target includes it). Private to kernels/cpu/.
 *
 * THE WALK. The x16 layout holds a super-block's 256 codes as 64 groups of 4 (qx16.c: group P at
 * chunk P / 8, slot P % 8) in the order the quantizer wrote them: natural, or SB8 when the
 * weights were reordered for the AVX2 path (kernels.h; Q6_K_SB16's codes are unpacked to natural
 * order and walked as Q6_K's, its x16 activations natural too, qx16.c). A tile broadcasts a weight row's 4 unsigned
 * codes of group P (Q4_K 0..15, Q5_K 0..31, Q6_K 0..63, Q3_K 0..7, Q2_K 0..3) against the x rows'
 * 4 codes there. The groups come in units that share one scale:
 *   Q4_K, Q5_K  8 units (sub-blocks) × 8 groups, group P = 8s + u
 *   Q4_K_SB8    8 units × 8 groups, P = 8u + s (chunk u holds sub-block s in slot s)
 *   Q6_K, Q3_K, Q2_K 16 units (groups of 16 codes) × 4 groups, P = 4s + u
 * AVX2 (no vpdpbusd): vpmaddubsw gives 16-bit lanes of two products, added over at most
 * kqk_depth(dt) groups of a unit — 8 for Q4_K (8·2·15·127 = 30480), 4 for Q5_K (4·2·31·127 =
 * 31496), 2 for Q6_K (2·2·63·127 = 32004), 4 for Q3_K (4·2·7·127 = 7112) and Q2_K, below 2^15: no lane saturates or wraps (x codes are
 * within ±127, qmatmul.c) — then vpmaddwd by (sc, sc) into int32 lanes. VNNI: one vpdpbusd per
 * group into exact int32 lanes, then vpdpwssd by (sc, 0) per part of a unit whose sums fit 16
 * bits (qdot_avx512_x16k.c). Either way the lanes hold the
 * canonical totals of qmatmul.h (I for Q4_K/Q5_K, T for Q6_K / Q3_K). Then per super-block the
 * pairs of x code sums (kq_x.x16p) by vpmaddwd / vpdpwssd: Q4_K/Q5_K M = Σ m_j·X_j from the pairs
 * (m_2t, m_2t+1) (Q2_K's per 16, t < 8); Q6_K's −32 offset Σ (−32·sc_g)·G_g into T from (−32·sc_2t, −32·sc_2t+1)
 * (|−32·sc| <= 4096; Q3_K's −4·(sc − 32)). The totals are exact, so the f32 step —
 * fma((float)I, d·dx), then fma((float)M, −(dmin·dx)); Q6_K / Q3_K fma((float)T, d·dx) — gives
 * every path's bits. */
#ifndef PEFTD_KCPU_QX16K_H
#define PEFTD_KCPU_QX16K_H

#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/qdot_kquant_x86.h"
#include "kernels/cpu/qmatmul.h"

#define KQK_INL static inline __attribute__((always_inline, target("avx2,fma,f16c")))

/* A strip of R weight rows, per super-block b and row r (index br = b·R + r). */
typedef struct {
    uint8_t *code; /* [br][256]: the unsigned codes, at the x16 layout's positions (4P + e) */
    int32_t *sp;   /* [br][16]: unit s's scale sc as the pair sc | sc << 16 */
    int32_t *mp;   /* [br][8]: code-sum pairs' factors: Q4_K/Q5_K (m_2t, m_2t+1), t < 4; Q6_K
                    * (−32·sc_2t, −32·sc_2t+1), Q3_K (−4·sc'_2t, −4·sc'_2t+1) with sc' = sc − 32, Q2_K
                    * (m_2t, m_2t+1), t < 8 */
    float *d;      /* [br][2]: d, dmin (Q6_K, Q3_K: d, 0) */
} kqk_strip;

/* The bytes of a strip of R rows over nb super-blocks, and its carving from 64-byte aligned p. */
KQK_INL size_t kqk_bytes(int R, int64_t nb) { return (size_t)R * (size_t)nb * (256 + 64 + 32 + 8); }
KQK_INL void kqk_carve(int R, int64_t nb, void *p, kqk_strip *u) {
    const size_t n = (size_t)R * (size_t)nb;
    u->code = p;
    u->sp = (int32_t *)(u->code + n * 256);
    u->mp = u->sp + n * 16;
    u->d = (float *)(u->mp + n * 8);
}

/* Q6_K, Q3_K, Q2_K: 16 units of 16 codes; the first two fold their code offset into T (no mins). */
KQK_INL bool kqk_units16(kdtype dt) { return dt == KDT_Q6_K || dt == KDT_Q3_K || dt == KDT_Q2_K; }
KQK_INL bool kqk_six(kdtype dt) { return dt == KDT_Q6_K || dt == KDT_Q3_K; }
KQK_INL int kqk_units(kdtype dt) { return kqk_units16(dt) ? 16 : 8; }
KQK_INL int kqk_depth(kdtype dt) {
    return dt == KDT_Q4_K || dt == KDT_Q4_K_SB8 ? 8 : dt == KDT_Q5_K || dt == KDT_Q3_K || dt == KDT_Q2_K ? 4 : 2;
}
/* group P of unit s, its u-th */
KQK_INL int kqk_group(kdtype dt, int s, int u) {
    return dt == KDT_Q4_K_SB8 ? 8 * u + s : kqk_units16(dt) ? 4 * s + u : 8 * s + u;
}

/* A Q6_K_SB16 super-block's 256 codes (0..63) in natural order (element e at code[e]). SB16's
 * 32-byte register t holds in 16-bit word g the codes of elements 16g + 2t, 16g + 2t + 1
 * (kernels.h), so natural order is the transpose of 8 registers × 16 words: three rounds of
 * unpacks per 128-bit lane leave group j (words t = 0..7) in the low lane of out[j] and group
 * j + 8 in its high lane. */
KQK_INL void kqk_sb16_codes(const uint8_t *p, uint8_t *code) {
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    __m256i v[8], a[8], c[8];
    for (int t = 0; t < 8; t++) { /* low 4 bits: nibble t%2 of ql 32(t/2); high 2: bits 2(t%4) of qh 32(t/4) */
        const __m256i ql = _mm256_loadu_si256((const __m256i *)(p + 32 * (t / 2)));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * (t / 4)));
        const __m256i lo = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (t % 2))), m4);
        const __m256i hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * (t % 4))), m3);
        v[t] = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
    }
    for (int k = 0; k < 4; k++) { /* a[2k]: groups 0-3 (per lane) of t = 2k, 2k+1; a[2k+1]: groups 4-7 */
        a[2 * k] = _mm256_unpacklo_epi16(v[2 * k], v[2 * k + 1]);
        a[2 * k + 1] = _mm256_unpackhi_epi16(v[2 * k], v[2 * k + 1]);
    }
    for (int h = 0; h < 2; h++) { /* c[4h + ..]: groups 4h + (0,1 | 2,3) of t = 0-3 and t = 4-7 */
        c[4 * h] = _mm256_unpacklo_epi32(a[h], a[2 + h]);
        c[4 * h + 1] = _mm256_unpackhi_epi32(a[h], a[2 + h]);
        c[4 * h + 2] = _mm256_unpacklo_epi32(a[4 + h], a[6 + h]);
        c[4 * h + 3] = _mm256_unpackhi_epi32(a[4 + h], a[6 + h]);
    }
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 2; i++) { /* groups j = 4h + 2i, 4h + 2i + 1 (and + 8) */
            const __m256i e = _mm256_unpacklo_epi64(c[4 * h + i], c[4 * h + 2 + i]);
            const __m256i f = _mm256_unpackhi_epi64(c[4 * h + i], c[4 * h + 2 + i]);
            const int j = 4 * h + 2 * i;
            _mm_storeu_si128((__m128i *)(code + 16 * j), _mm256_castsi256_si128(e));
            _mm_storeu_si128((__m128i *)(code + 16 * (j + 8)), _mm256_extracti128_si256(e, 1));
            _mm_storeu_si128((__m128i *)(code + 16 * (j + 1)), _mm256_castsi256_si128(f));
            _mm_storeu_si128((__m128i *)(code + 16 * (j + 9)), _mm256_extracti128_si256(f, 1));
        }
}

/* Rows [0, R) of w (rb bytes apart; Q4_K, Q5_K, Q6_K, Q3_K, Q2_K, Q4_K_SB8 or Q6_K_SB16), super-blocks [0, nb), into u. */
KQK_INL void kqk_unpack(kdtype dt, int R, const uint8_t *w, size_t rb, int64_t nb, const kqk_strip *u) {
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    const int BB = (int)kdtype_block_bytes(dt);
    for (int64_t b = 0; b < nb; b++)
        for (int r = 0; r < R; r++) {
            const uint8_t *p = w + r * rb + BB * b;
            for (int o = 0; o < BB; o += 64) __builtin_prefetch(p + KQ_PF + o, 0, 2);
            const int64_t br = b * R + r;
            uint8_t *code = u->code + br * 256;
            int32_t *sp = u->sp + br * 16, *mp = u->mp + br * 8;
            if (dt == KDT_Q3_K || dt == KDT_Q2_K) {
                /* chunk c: low 2 bits of qs bytes 32 + 32(c/4) (Q2_K 16 + 32(c/4)) at 2(c%4); Q3_K's
                 * bit c of hmask above them */
                const bool q3 = dt == KDT_Q3_K;
                const __m256i hm = _mm256_loadu_si256((const __m256i *)p), m1 = _mm256_set1_epi8(1);
                for (int c = 0; c < 8; c++) {
                    const __m256i qs = _mm256_loadu_si256((const __m256i *)(p + (q3 ? 32 : 16) + 32 * (c / 4)));
                    const __m256i lo = _mm256_and_si256(_mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * (c % 4))), m3);
                    const __m256i hi = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(c)), m1);
                    _mm256_storeu_si256((__m256i *)(code + 32 * c), q3 ? _mm256_or_si256(lo, _mm256_slli_epi16(hi, 2)) : lo);
                }
                /* the 16 scales as words (Q3_K sc − 32): sp[s] = sc | sc << 16; mp's pairs in order:
                 * Q3_K's offset factors −4·sc, Q2_K's mins */
                const __m256i sw = q3 ? kq_q3k_sc16(p) : kq_k16_sc16(2, p);
                const __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(sw));
                const __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(sw, 1));
                _mm256_storeu_si256((__m256i *)sp, _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(lo, 16)));
                _mm256_storeu_si256((__m256i *)(sp + 8), _mm256_or_si256(_mm256_and_si256(hi, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(hi, 16)));
                _mm256_storeu_si256((__m256i *)mp, q3 ? _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sw, 2)) : kq_q2k_m16(p));
                uint16_t h0, h1;
                memcpy(&h0, p + (q3 ? 108 : 80), 2);
                memcpy(&h1, p + 82, 2); /* Q2_K's dmin (unused for Q3_K) */
                u->d[2 * br] = _cvtsh_ss(h0);
                u->d[2 * br + 1] = q3 ? 0.0f : _cvtsh_ss(h1);
                continue;
            }
            if (dt == KDT_Q6_K_SB16) /* the same codes, their order undone (the walk is Q6_K's) */
                kqk_sb16_codes(p, code);
            if (dt == KDT_Q6_K) {
                /* chunk c = 4h + k (32 codes at 32c): nibble k/2 of ql bytes 64h + 32(k%2) with bits
                 * 2k, 2k+1 of qh bytes 32h above it (qmatmul.h) */
                for (int c = 0; c < 8; c++) {
                    const int h = c / 4, k = c % 4;
                    const int qlo = 64 * h + 32 * (k % 2), qls = 4 * (k / 2), qho = 32 * h, qhs = 2 * k;
                    const __m256i ql = _mm256_loadu_si256((const __m256i *)(p + qlo));
                    const __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 128 + qho));
                    const __m256i lo = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(qls)), m4);
                    const __m256i hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(qhs)), m3);
                    _mm256_storeu_si256((__m256i *)(code + 32 * c), _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)));
                }
            }
            if (dt == KDT_Q6_K || dt == KDT_Q6_K_SB16) { /* SB16 keeps Q6_K's scales and d */
                /* the 16 signed scales as words: sp[s] = sc_s | sc_s << 16, mp's pairs −32·sc in order */
                const __m256i sw = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 192)));
                const __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(sw));
                const __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(sw, 1));
                _mm256_storeu_si256((__m256i *)sp, _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(lo, 16)));
                _mm256_storeu_si256((__m256i *)(sp + 8), _mm256_or_si256(_mm256_and_si256(hi, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(hi, 16)));
                _mm256_storeu_si256((__m256i *)mp, _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sw, 5)));
                uint16_t hd;
                memcpy(&hd, p + 208, 2);
                u->d[2 * br] = _cvtsh_ss(hd);
                u->d[2 * br + 1] = 0.0f;
                continue;
            }
            /* Q4_K, Q5_K, SB8: 32-byte register k of qs, low nibbles to 64k, high to 64k + 32 —
             * natural sub-blocks 2k, 2k + 1; SB8 chunks 2k, 2k + 1 (the same bytes, other meaning) */
            const bool five = dt == KDT_Q5_K;
            const uint8_t *qs = p + (five ? 48 : 16);
            for (int k = 0; k < 4; k++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
                __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if (five) { /* | 16 where bit c of qh[l] is set, c = the sub-block */
                    const __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 16)), s16 = _mm256_set1_epi8(16);
                    const __m256i b0 = _mm256_set1_epi8((char)(1 << 2 * k)), b1 = _mm256_set1_epi8((char)(1 << (2 * k + 1)));
                    lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b0), b0), s16));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b1), b1), s16));
                }
                _mm256_storeu_si256((__m256i *)(code + 64 * k), lo);
                _mm256_storeu_si256((__m256i *)(code + 64 * k + 32), hi);
            }
            /* the 6-bit scales and mins (< 64): sp[s] = sc_s | sc_s << 16; mins as words in order */
            __m256i sc16, m32;
            kq_q4k_scales8(p, &sc16, &m32);
            const __m256i sc32 = _mm256_cvtepu16_epi32(_mm256_castsi256_si128(sc16));
            _mm256_storeu_si256((__m256i *)sp, _mm256_or_si256(sc32, _mm256_slli_epi32(sc32, 16)));
            _mm_storeu_si128((__m128i *)mp, _mm_packus_epi32(_mm256_castsi256_si128(m32), _mm256_extracti128_si256(m32, 1)));
            uint16_t h0, h1;
            memcpy(&h0, p, 2);
            memcpy(&h1, p + 2, 2);
            u->d[2 * br] = _cvtsh_ss(h0);
            u->d[2 * br + 1] = _cvtsh_ss(h1);
        }
}

#endif
