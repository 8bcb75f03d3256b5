/* kernels/cpu/dot_tile.h — the register-tiled dot kernel of the CPU backend, shared by
 * matmul.c (base projections) and sgmv.c (LoRA shrink): R weight rows × N x rows of
 * dot products held as R·N vector accumulators, weights widened to f32 in registers
 * from their stored dtype, x in f32.
 *
 * Everything here is static inline / always_inline and takes dt, R and N as
 * compile-time constants at each instantiation, so the accumulators live in
 * registers and each caller's code is what it was when it had its own copy. The
 * summation order of one (weight row, x row) value is fixed by cols alone (vector
 * chunks of KV_W from column 0, a masked tail, then kv_hsum), whatever R, N or the
 * tile a row lands in: this is what makes both ops batch-invariant.
 *
 * Private to kernels/cpu/ (no locking, no allocation; pure functions of their inputs).
 */
#ifndef PEFTD_KERNELS_CPU_DOT_TILE_H
#define PEFTD_KERNELS_CPU_DOT_TILE_H

#include "kernels/cpu/simd.h"
#include "kernels/kernels.h"

/* Tile bounds: DT_MR weight rows × up to DT_NR x rows = 24 accumulators + 4 weight
 * vectors + 1 x vector = 29 of AVX-512's 32 zmm; AVX2's 16 ymm fit 4×2 + 4 + 1 = 13.
 * A caller may use fewer x rows per tile (sgmv's shrink uses 4). */
#define DT_MR 4
#if KV_W == 16
#define DT_NR 6
#else
#define DT_NR 2
#endif

/* KV_W weights at element off of w, widened to f32. */
static inline __attribute__((always_inline)) kv_f32 dt_load_w(kdtype dt, const void *w, int64_t off) {
    if (dt == KDT_F32) return kv_load((const float *)w + off);
    if (dt == KDT_F16) return kv_load_f16((const uint16_t *)w + off);
    return kv_load_bf16((const uint16_t *)w + off);
}

/* The first n (< KV_W) weights at element off of w, widened; other lanes 0. */
static inline __attribute__((always_inline)) kv_f32 dt_load_w_part(kdtype dt, const void *w, int64_t off, int n) {
    if (dt == KDT_F32) return kv_load_part((const float *)w + off, n);
    if (dt == KDT_F16) return kv_load_f16_part((const uint16_t *)w + off, n);
    return kv_load_bf16_part((const uint16_t *)w + off, n);
}

/* acc[r][i] = lane-wise partial sums of dot(w row r, x row i) for r < R <= DT_MR,
 * i < N <= DT_NR (reduce each with kv_hsum). w: first weight row, rows cols elements
 * apart; x: first x row, rows ldx apart; pf: where to prefetch the same-shaped rows
 * into L2 alongside the loads (NULL: none). */
static inline __attribute__((always_inline)) void dt_tile(kdtype dt, int R, int N, const void *w, const char *pf,
                                                          int64_t cols, const float *x, int64_t ldx,
                                                          kv_f32 acc[DT_MR][DT_NR]) {
    const size_t esz = dt == KDT_F32 ? 4 : 2;
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < N; i++) acc[r][i] = kv_zero();
    int64_t k = 0;
    for (; k + KV_W <= cols; k += KV_W) {
        kv_f32 wv[DT_MR];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = dt_load_w(dt, w, r * cols + k);
        if (pf) {
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) __builtin_prefetch(pf + (size_t)(r * cols + k) * esz, 0, 2);
        }
#pragma GCC unroll 8
        for (int i = 0; i < N; i++) {
            kv_f32 xv = kv_load(x + i * ldx + k);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][i] = kv_fmadd(wv[r], xv, acc[r][i]);
        }
    }
    if (k < cols) {
        int rem = (int)(cols - k);
        kv_f32 wv[DT_MR];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = dt_load_w_part(dt, w, r * cols + k, rem);
#pragma GCC unroll 8
        for (int i = 0; i < N; i++) {
            kv_f32 xv = kv_load_part(x + i * ldx + k, rem);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][i] = kv_fmadd(wv[r], xv, acc[r][i]);
        }
    }
}

#endif
