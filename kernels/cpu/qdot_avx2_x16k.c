/* kernels/cpu/qdot_avx2_x16k.c — the AVX2 path's K-quant batches (Q4_K, Q5_K, Q6_K, Q3_K, Q2_K and the
 * SB8 / SB16 reorderings of Q4_K / Q6_K; SB16's codes unpacked to natural order) with x in the x16 layout:
 * 8 x rows in the lanes of a ymm, a strip of R <= 4 weight rows unpacked once into the thread's
 * scratch (qx16k.h), then per super-block the walk of qx16k.h — one
 * broadcast, one vpmaddubsw and one 16-bit add per 32 products, no horizontal sums — and the
 * canonical f32 step with x rows in lanes. Same bits as every other path (qmatmul.h).
 * Compiled for AVX2 by target attributes; called only when the CPU has it. */
#include "kernels/cpu/qx16k.h"
#include "kernels/cpu/qstore_t.h"

#define KQ_TGT __attribute__((target("avx2,fma,f16c")))
#define KQ_INL static inline __attribute__((always_inline)) KQ_TGT

/* R weight rows × the 8 x rows whose codes start at xv (x16v of their group of 16 plus 32 for
 * the upper 8), code-sum pairs at xp, scales at dx (rows < `rows` are stored). */
KQ_INL void kqk_tile8(kdtype DT, int R, const kqk_strip *u, int64_t nb, const int8_t *xv, const int32_t *xp,
                      const float *dx, float *y, int64_t ldy, int rows, float beta) {
    const int U = kqk_units(DT), G = 64 / U, A = kqk_depth(DT), NP = kq_x16_pairs(DT);
    const bool six = kqk_six(DT);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++) {
        const int8_t *xb = xv + b * 8 * 512;
        __m256i I[4], t[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) I[r] = _mm256_setzero_si256();
#pragma GCC unroll 16
        for (int s = 0; s < U; s++) {
#pragma GCC unroll 8
            for (int g = 0; g < G; g++) {
                const int P = kqk_group(DT, s, g);
                __m256i xk = _mm256_load_si256((const __m256i *)(xb + (P / 8) * 512 + 64 * (P % 8)));
                KQ_IN_REG(xk);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    int32_t c4;
                    memcpy(&c4, u->code + (b * R + r) * 256 + 4 * P, 4);
                    const __m256i pr = _mm256_maddubs_epi16(_mm256_set1_epi32(c4), xk);
                    t[r] = g % A ? _mm256_add_epi16(t[r], pr) : pr;
                    /* one running sum each: GCC reassociated these chains into trees over all of a
                     * row's products and spilled them to the stack (16 ymm are few) */
                    KQ_IN_REG(t[r]);
                    if (g % A == A - 1) {
                        I[r] = _mm256_add_epi32(I[r], _mm256_madd_epi16(t[r], _mm256_set1_epi32(u->sp[(b * R + r) * 16 + s])));
                        KQ_IN_REG(I[r]);
                    }
                }
            }
        }
        const __m256 dxb = _mm256_load_ps(dx + b * 16);
        const int32_t *xpb = xp + b * NP * 16;
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const int32_t *mp = u->mp + (b * R + r) * 8;
            __m256i M = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int q = 0; q < NP; q++)
                M = _mm256_add_epi32(M, _mm256_madd_epi16(_mm256_load_si256((const __m256i *)(xpb + 16 * q)), _mm256_set1_epi32(mp[q])));
            const float *d = u->d + (b * R + r) * 2;
            if (six) {
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(I[r], M)), _mm256_mul_ps(_mm256_set1_ps(d[0]), dxb), acc[r]);
                continue;
            }
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(I[r]), _mm256_mul_ps(_mm256_set1_ps(d[0]), dxb), acc[r]);
            const __m256 nm = _mm256_xor_ps(_mm256_mul_ps(_mm256_set1_ps(d[1]), dxb), _mm256_set1_ps(-0.0f));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(M), nm, acc[r]);
        }
    }
    kq_store_tile8(R, acc, rows, y, ldy, beta);
}

KQ_INL void kqk_strip8(kdtype DT, int R, const kqk_strip *u, const uint8_t *w, size_t rb, const kq_x *x, float *y,
                       int64_t ldy, float beta) {
    const int64_t nb = x->cols / 256;
    const kdtype WT = DT == KDT_Q6_K_SB16 ? KDT_Q6_K : DT; /* SB16 unpacks to Q6_K's codes (qx16k.h) */
    const int NP = kq_x16_pairs(WT);
    kqk_unpack(DT, R, w, rb, nb, u);
    for (int i = 0; i < x->n; i += 8) { /* x rows i .. i + 7: half (i / 8) % 2 of group i / 16 */
        const int64_t mb = i / 16, h = (i / 8) % 2;
        kqk_tile8(WT, R, u, nb, x->x16v + mb * nb * 8 * 512 + 32 * h, x->x16p + mb * nb * NP * 16 + 8 * h,
                  x->x16d + mb * nb * 16 + 8 * h, y + (int64_t)i * ldy, ldy, x->n - i < 8 ? x->n - i : 8, beta);
    }
}

/* One strip function per type and row count; its unpacked rows in the thread's scratch, which
 * the dispatch below made big enough. */
#define KQK_DEF(TAG, DT, R)                                                                                   \
    static KQ_TGT void kqk_##TAG##_##R(const uint8_t *w, size_t rb, const kq_x *x, float *y, int64_t ldy,      \
                                       float beta) {                                                          \
        kqk_strip u;                                                                                          \
        kqk_carve(R, x->cols / 256, kq_thread_scratch(kqk_bytes(4, x->cols / 256)), &u);                       \
        kqk_strip8(DT, R, &u, w, rb, x, y, ldy, beta);                                                     \
    }
#define KQK_DEF3(TAG, DT) KQK_DEF(TAG, DT, 4) KQK_DEF(TAG, DT, 2) KQK_DEF(TAG, DT, 1)
KQK_DEF3(q4k, KDT_Q4_K) KQK_DEF3(q5k, KDT_Q5_K) KQK_DEF3(q6k, KDT_Q6_K) KQK_DEF3(q3k, KDT_Q3_K) KQK_DEF3(q2k, KDT_Q2_K) KQK_DEF3(q4s, KDT_Q4_K_SB8)
KQK_DEF3(q6s, KDT_Q6_K_SB16)

bool kq_rows_avx2_x16k(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                       int64_t ldy, float beta) {
    if (!x->x16v || !kq_thread_scratch(kqk_bytes(4, x->cols / 256))) return false;
    unsigned long *n = &kq_avx2_x16_strips;
    switch (dt) {
    case KDT_Q4_K: kq_rows_strips(kqk_q4k_4, kqk_q4k_2, kqk_q4k_1, w, rb, r0, r1, x, y, ldy, beta, n); return true;
    case KDT_Q5_K: kq_rows_strips(kqk_q5k_4, kqk_q5k_2, kqk_q5k_1, w, rb, r0, r1, x, y, ldy, beta, n); return true;
    case KDT_Q6_K: kq_rows_strips(kqk_q6k_4, kqk_q6k_2, kqk_q6k_1, w, rb, r0, r1, x, y, ldy, beta, n); return true;
    case KDT_Q3_K: kq_rows_strips(kqk_q3k_4, kqk_q3k_2, kqk_q3k_1, w, rb, r0, r1, x, y, ldy, beta, n); return true;
    case KDT_Q2_K: kq_rows_strips(kqk_q2k_4, kqk_q2k_2, kqk_q2k_1, w, rb, r0, r1, x, y, ldy, beta, n); return true;
    case KDT_Q4_K_SB8: kq_rows_strips(kqk_q4s_4, kqk_q4s_2, kqk_q4s_1, w, rb, r0, r1, x, y, ldy, beta, n); return true;
    case KDT_Q6_K_SB16: kq_rows_strips(kqk_q6s_4, kqk_q6s_2, kqk_q6s_1, w, rb, r0, r1, x, y, ldy, beta, n); return true;
    default: return false;
    }
}
