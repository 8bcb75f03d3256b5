/* kernels/cpu/qmatmul.h — what the quantized matmul's files share (kernels/cpu/qmatmul.c:
 * driver, activation quantization, scalar path; qdot_avx512.c: AVX-512 VNNI; qdot_avx2.c:
 * AVX2). Private to kernels/cpu/.
 *
 * THE CANONICAL ORDER (what makes every path bit-identical and batch-invariant). One output
 * y = dot(w row, x row) is a sum over the row's blocks into 16 f32 lanes L[0..15], then
 * reduced as t[j] = L[j] + L[j+8], u[j] = t[j] + t[j+4], v[j] = u[j] + u[j+2], y = v[0] + v[1].
 * A lane's contribution is an exact int32 partial P (the sum of 4 products of adjacent
 * int8/uint8 codes) scaled in f32 with one fused multiply-add:
 *   Q8_0: blocks b = 0, 1, ... of 32; block b feeds lanes 8·(b%2) + j, j < 8, with
 *         P = Σ_{e<4} wq[4j+e]·xq[4j+e] and L = fma((float)P, dw_b·dx_b, L).
 *   Q4_0: as Q8_0 with wq = nibble − 8 (element order: low nibbles of qs[0..15], then high).
 *   Q4_K: super-blocks of 256; step v = 0..3 covers sub-blocks s(v,h) = 4·(v/2) + v%2 + 2h
 *         on lanes 8h + j (h = 0, 1; j < 8): P = Σ_{e<4} q[32s+4j+e]·xq[32s+4j+e],
 *         L = fma((float)P, (d·(float)sc_s)·dx, L); after the 4 steps, lanes j < 8:
 *         L = fma(-(dmin·(float)m_j), xs_j, L) with xs_j = dx·(float)Σ xq over sub-block j.
 *   Q5_K: exactly as Q4_K with q = nibble | (bit s of qh[l]) << 4 (0..31).
 *   Q6_K: super-blocks of 256 in natural element order; step t = 0..3 covers elements
 *         64t .. 64t+63, lane j (j < 16) elements 64t+4j+e (e < 4), which lie in the
 *         16-element group g = 4t + j/4: P = Σ_{e<4} (q6 − 32)·xq (exact int32),
 *         L = fma((float)P, (d·(float)sc_g)·dx, L).
 * x is quantized once per call by the row quantizer in qmatmul.c (shared by every path): Q8_0
 * and Q4_0 per 32 elements, K-quants per 256 (d = max|x|/127, q = round-half-even(x/d)) —
 * for the K-quants this is ggml's Q8_K granularity (llama.cpp quantizes activations to Q8_K,
 * one f32 scale per 256, for its K-quant dot products; its scale is signed max/−127 where ours
 * is max|x|/127 with round-half-even: the same 8-bit, per-256 error bound).
 */
#ifndef PEFTD_KCPU_QMATMUL_H
#define PEFTD_KCPU_QMATMUL_H

#include <stdint.h>

#include "kernels/kernels.h"

/* The quantized activations of one call: n rows of cols. */
typedef struct {
    int n;
    int64_t cols;
    int8_t *q;      /* [n][cols]; Q4_K, Q5_K: each 256 permuted to sub-blocks 0,2,1,3,4,6,5,7 */
    int32_t *corr;  /* Q8_0, Q4_0: [n][cols/4] = -128 · Σ of each 4 codes (VNNI's unsigned offset);
                     * Q6_K: [n][cols/4] = -32 · Σ of each 4 codes (the q6 − 32 offset) */
    float *d;       /* [n][cols / block] */
    float *xs;      /* Q4_K, Q5_K: [n][cols/32] = d · Σ codes of each sub-block (natural order) */
} kq_x;

/* y[i·ldy + r] (+)= dot(w row r, x row i) for weight rows [r0, r1) and every x row, in the
 * canonical order. w: the matrix's first row, rows rb bytes apart. pf: prefetch hint. */
typedef void (*kq_rows_fn)(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x,
                           float *y, int64_t ldy, float beta);

void kq_rows_scalar(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                    int64_t ldy, float beta);
void kq_rows_avx2(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                  int64_t ldy, float beta);
void kq_rows_vnni(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                  int64_t ldy, float beta);

/* The Q4_K 6-bit scale and min of sub-block s (quant_ref.h's packing). */
static inline void kq_q4k_scale_min(const uint8_t *sc12, int s, int *sc, int *m) {
    if (s < 4) {
        *sc = sc12[s] & 63;
        *m = sc12[s + 4] & 63;
    } else {
        *sc = (sc12[s + 4] & 15) | (sc12[s - 4] >> 6) << 4;
        *m = (sc12[s + 4] >> 4) | (sc12[s] >> 6) << 4;
    }
}

/* The canonical 16-lane reduction (above). */
static inline float kq_reduce16(const float L[16]) {
    float t[8], u[4], v[2];
    for (int j = 0; j < 8; j++) t[j] = L[j] + L[j + 8];
    for (int j = 0; j < 4; j++) u[j] = t[j] + t[j + 4];
    for (int j = 0; j < 2; j++) v[j] = u[j] + u[j + 2];
    return v[0] + v[1];
}

/* Code paths, for tests and benchmarks: KQ_AUTO picks the best the CPU has. Process-wide;
 * set before issuing ops. PEFTD_CPU_QPATH=vnni|avx2|scalar in the environment sets it too. */
typedef enum { KQ_AUTO = 0, KQ_VNNI, KQ_AVX2, KQ_SCALAR } kq_path;
extern kq_path kcpu__q_path;
/* The path KQ_AUTO resolves to on this CPU, and whether path p can run here. */
kq_path kq_best_path(void);
bool kq_path_available(kq_path p);

#endif
