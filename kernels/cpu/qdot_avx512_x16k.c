/* kernels/cpu/qdot_avx512_x16k.c — the AVX-512 VNNI path's K-quant batches (Q4_K, Q5_K, Q6_K, Q3_K, Q2_K)
 * with x in the x16 layout: 16 x rows in the lanes of a zmm, a strip of R <= 4 weight rows
 * unpacked once (qx16k.h), then per super-block and unit of one scale (qx16k.h's walk) one
 * vpdpbusd per group and weight row — the row's 4 unsigned codes broadcast against the 16 x
 * rows' codes, exact int32 lanes — and per two parts of a unit one vpdpwssd by its scale; the
 * code-sum pairs by vpdpwssd; then the canonical f32 step with x rows in lanes. Same bits as
 * every other path (qmatmul.h). On AMX machines this takes the batches of 8-15 rows that AMX
 * hands over. Compiled for these instructions by target attributes; called only when the CPU
 * has them. */
#include "kernels/cpu/qstore_t.h"
#include "kernels/cpu/qx16k.h"

#define KQ_TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,f16c,fma")))
#define KQ_INL static inline __attribute__((always_inline)) KQ_TGT

/* R weight rows × NG (1 or 2) groups of 16 x rows: group q's codes at xv + q·gv, code-sum pairs
 * at xp + q·gp, scales at dx + q·gd, results to y + 16q·ldy (its rows < rows[q] are stored); two
 * groups share each broadcast of a weight row's codes. */
/* (lo, hi) -> dword lanes [low word of lo | low word of hi]: two sums that fit 16 bits side by
 * side for one vpdpwssd (a shift and a bit select; vpermt2w measured 15% slower on Zen 4). */
#define KQK_WORDS(lo, hi) _mm512_ternarylogic_epi32(_mm512_slli_epi32(hi, 16), lo, _mm512_set1_epi32(0xffff), 0xF8)
KQ_INL void kqk_tile16(kdtype DT, int R, int NG, const kqk_strip *u, int64_t nb, const int8_t *xv, int64_t gv,
                       const int32_t *xp, int64_t gp, const float *dx, int64_t gd, float *y, int64_t ldy,
                       const int *rows, float beta) {
    const int U = kqk_units(DT), G = 64 / U, NP = kq_x16_pairs(DT);
    const bool six = kqk_six(DT);
    /* A unit's groups in GH parts whose sums S fit 16 bits — |S| <= 4·4·15·127 (Q4_K, 2 parts of 4
     * groups), 2·4·31·127 (Q5_K, 4 of 2), 4·63·127 (Q6_K, 4 of 1) < 2^15 — so two parts' sums T, S
     * go side by side as the words of one dword (KQK_WORDS) and one vpdpwssd by (sc, sc) adds
     * T·sc + S·sc to I exactly. On Zen 4 vpmulld + add took about three cycles of the multiplier
     * (zmm vpmulld 1.1 per ns vs vpdpwssd 3.6): one vpdpwssd per part instead, at 256 rows, one
     * thread, Q4_K 188 -> 207 GFLOP/s, Q5_K 185 -> 223, Q6_K 158 -> 177; one per two parts (the
     * shift and select run beside the multiplier) Q4_K 301 -> 321-329, Q5_K 253 -> 284-287, Q6_K
     * 191-197 -> 231-234. Q3_K, Q2_K: 2 parts of 2 groups (|S| <= 2·4·7·127). */
    const int GH = DT == KDT_Q4_K || DT == KDT_Q3_K || DT == KDT_Q2_K ? 2 : 4;
    __m512 acc[2][4];
#pragma GCC unroll 2
    for (int q = 0; q < NG; q++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) acc[q][r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const int8_t *xb = xv + b * 8 * 512;
        __m512i I[2][4], S[2][4], T[2][4];
#pragma GCC unroll 2
        for (int q = 0; q < NG; q++)
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) I[q][r] = _mm512_setzero_si512();
#pragma GCC unroll 16
        for (int s = 0; s < U; s++) {
#pragma GCC unroll 8
            for (int g = 0; g < G; g++) {
                if (g % (G / GH) == 0) /* a part starts */
#pragma GCC unroll 2
                    for (int q = 0; q < NG; q++)
#pragma GCC unroll 4
                        for (int r = 0; r < R; r++) S[q][r] = _mm512_setzero_si512();
                const int P = kqk_group(DT, s, g);
                __m512i xk[2];
#pragma GCC unroll 2
                for (int q = 0; q < NG; q++) {
                    xk[q] = _mm512_load_si512((const void *)(xb + q * gv + (P / 8) * 512 + 64 * (P % 8)));
                    KQ_IN_REG(xk[q]);
                }
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    int32_t c4;
                    memcpy(&c4, u->code + (b * R + r) * 256 + 4 * P, 4);
                    const __m512i w4 = _mm512_set1_epi32(c4);
#pragma GCC unroll 2
                    for (int q = 0; q < NG; q++) S[q][r] = _mm512_dpbusd_epi32(S[q][r], w4, xk[q]);
                }
                if ((g + 1) % (G / GH)) continue;
                if ((g / (G / GH)) % 2 == 0) { /* an even part: kept for the next one */
#pragma GCC unroll 2
                    for (int q = 0; q < NG; q++)
#pragma GCC unroll 4
                        for (int r = 0; r < R; r++) T[q][r] = S[q][r];
                    continue;
                }
                /* an odd part ends: I += (T, S)·(sc, sc) */
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    const __m512i sc = _mm512_set1_epi32(u->sp[(b * R + r) * 16 + s]); /* sc | sc << 16 */
#pragma GCC unroll 2
                    for (int q = 0; q < NG; q++) I[q][r] = _mm512_dpwssd_epi32(I[q][r], KQK_WORDS(T[q][r], S[q][r]), sc);
                }
            }
        }
#pragma GCC unroll 2
        for (int q = 0; q < NG; q++) {
            const __m512 dxb = _mm512_load_ps(dx + q * gd + b * 16);
            const int32_t *xpb = xp + q * gp + b * NP * 16;
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const int32_t *mp = u->mp + (b * R + r) * 8;
                __m512i M = _mm512_setzero_si512();
#pragma GCC unroll 8
                for (int k = 0; k < NP; k++) M = _mm512_dpwssd_epi32(M, _mm512_load_si512((const void *)(xpb + 16 * k)), _mm512_set1_epi32(mp[k]));
                const float *d = u->d + (b * R + r) * 2;
                if (six) {
                    acc[q][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(I[q][r], M)), _mm512_mul_ps(_mm512_set1_ps(d[0]), dxb), acc[q][r]);
                    continue;
                }
                acc[q][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I[q][r]), _mm512_mul_ps(_mm512_set1_ps(d[0]), dxb), acc[q][r]);
                const __m512 nm = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(_mm512_mul_ps(_mm512_set1_ps(d[1]), dxb)),
                                                                       _mm512_set1_epi32((int)0x80000000u)));
                acc[q][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(M), nm, acc[q][r]);
            }
        }
    }
    for (int q = 0; q < NG; q++) kq_store_tile16(R, acc[q], rows[q], y + (int64_t)16 * q * ldy, ldy, beta);
}

/* The strip's x groups two at a time for Q4_K / Q5_K (one alone at the end when their count is
 * odd; one thread, Zen 4: Q4_K +5-9%, Q5_K +2%), one at a time for Q6_K (two measured 5% slower:
 * its 4 parts per unit keep twice the sums live) and for Q3_K / Q2_K (two measured within 6%, and
 * each pair-of-groups variant is a large unrolled function: with them clang's sanitizer build
 * (make fuzz) of this file took 619 s, with one group 286 s). */
KQ_INL void kqk_strip16(kdtype DT, int R, const kqk_strip *u, const uint8_t *w, size_t rb, const kq_x *x, float *y,
                        int64_t ldy, float beta) {
    const int64_t nb = x->cols / 256;
    const int NP = kq_x16_pairs(DT);
    const int64_t gv = nb * 8 * 512, gp = nb * NP * 16, gd = nb * 16;
    kqk_unpack(DT, R, w, rb, nb, u);
    const int step = kqk_units16(DT) ? 16 : 32;
    for (int i = 0; i < x->n; i += step) {
        const int64_t mb = i / 16;
        const int left = x->n - i;
        const int rows[2] = {left < 16 ? left : 16, left - 16 < 16 ? left - 16 : 16};
        const int8_t *xv = x->x16v + mb * gv;
        const int32_t *xp = x->x16p + mb * gp;
        const float *dx = x->x16d + mb * gd;
        if (step == 32 && left > 16) kqk_tile16(DT, R, 2, u, nb, xv, gv, xp, gp, dx, gd, y + (int64_t)i * ldy, ldy, rows, beta);
        else kqk_tile16(DT, R, 1, u, nb, xv, gv, xp, gp, dx, gd, y + (int64_t)i * ldy, ldy, rows, beta);
    }
}

/* One strip function per type and row count; its unpacked rows in the thread's scratch, which
 * the dispatch below made big enough. */
#define KQK_DEF(TAG, DT, R)                                                                                   \
    static KQ_TGT void kqk_##TAG##_##R(const uint8_t *w, size_t rb, const kq_x *x, float *y, int64_t ldy,      \
                                       float beta) {                                                          \
        kqk_strip u;                                                                                          \
        kqk_carve(R, x->cols / 256, kq_thread_scratch(kqk_bytes(4, x->cols / 256)), &u);                       \
        kqk_strip16(DT, R, &u, w, rb, x, y, ldy, beta);                                                     \
    }
#define KQK_DEF3(TAG, DT) KQK_DEF(TAG, DT, 4) KQK_DEF(TAG, DT, 2) KQK_DEF(TAG, DT, 1)
KQK_DEF3(q4k, KDT_Q4_K) KQK_DEF3(q5k, KDT_Q5_K) KQK_DEF3(q6k, KDT_Q6_K) KQK_DEF3(q3k, KDT_Q3_K) KQK_DEF3(q2k, KDT_Q2_K)

bool kq_rows_vnni_x16k(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                       int64_t ldy, float beta) {
    if (!x->x16v || !kq_thread_scratch(kqk_bytes(4, x->cols / 256))) return false;
    unsigned long *n = &kq_vnni_x16_strips;
    switch (dt) {
    case KDT_Q4_K: kq_rows_strips(kqk_q4k_4, kqk_q4k_2, kqk_q4k_1, w, rb, r0, r1, x, y, ldy, beta, n); return true;
    case KDT_Q5_K: kq_rows_strips(kqk_q5k_4, kqk_q5k_2, kqk_q5k_1, w, rb, r0, r1, x, y, ldy, beta, n); return true;
    case KDT_Q6_K: kq_rows_strips(kqk_q6k_4, kqk_q6k_2, kqk_q6k_1, w, rb, r0, r1, x, y, ldy, beta, n); return true;
    case KDT_Q3_K: kq_rows_strips(kqk_q3k_4, kqk_q3k_2, kqk_q3k_1, w, rb, r0, r1, x, y, ldy, beta, n); return true;
    case KDT_Q2_K: kq_rows_strips(kqk_q2k_4, kqk_q2k_2, kqk_q2k_1, w, rb, r0, r1, x, y, ldy, beta, n); return true;
    default: return false;
    }
}
