/* kernels/cuda/qdequant.h — one 8-element group of a GGUF weight block dequantized to f32, for
 * every block type the CUDA matmul takes (kcuda__qdtype_ok): Q8_0, Q4_0, Q5_0, Q4_1, Q5_1,
 * IQ4_NL (32-element blocks, 4 groups) and Q4_K, Q5_K, Q6_K, Q3_K, Q2_K, IQ4_XS (256-element
 * super-blocks, 32 groups). Every group lies inside one scale's span (16 or 32 elements), so a
 * call reads each scale once.
 *
 * Written once for both sides: qmatmul.cu calls it in device code (nvcc: __host__ __device__),
 * and tests/unit/test_cuda_qdequant.c compiles the same text as C11 and checks it bit for bit
 * against kernels/cpu/quant_ref.c (itself bit-identical to gguf-py) on every machine, GPU or not.
 * Numerics: each value is computed with quant_ref.c's operations in its order, every product and
 * sum rounded on its own (device: __fmul_rn / __fadd_rn / __fsub_rn, never contracted into an
 * FMA; host: one function per operation, so no compiler contracts two). Blocks are read byte
 * by byte (their sizes — 34, 18, 22, 20, 24, 144, 176, 210, 110, 84, 136 bytes — leave them
 * 2-byte aligned at best). Pure functions: no state, any thread. */
#ifndef PEFTD_KCUDA_QDEQUANT_H
#define PEFTD_KCUDA_QDEQUANT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "kernels/kernels.h"
#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#define QD_FN static __host__ __device__ __forceinline__
#else
#define QD_FN static inline
#endif

#ifdef __CUDA_ARCH__
#define QD_UNROLL _Pragma("unroll")
#define QD_MUL(a, b) __fmul_rn((a), (b))
#define QD_ADD(a, b) __fadd_rn((a), (b))
#define QD_SUB(a, b) __fsub_rn((a), (b))
QD_FN float qd_f16(const uint8_t *p) {
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}
#else
#include "lib/half.h"
#define QD_UNROLL
/* functions, not expressions: clang's default -ffp-contract=on fuses a*b - c written in one
 * expression, never across a call */
static inline float qd_mul_(float a, float b) { return a * b; }
static inline float qd_add_(float a, float b) { return a + b; }
static inline float qd_sub_(float a, float b) { return a - b; }
#define QD_MUL(a, b) qd_mul_((a), (b))
#define QD_ADD(a, b) qd_add_((a), (b))
#define QD_SUB(a, b) qd_sub_((a), (b))
QD_FN float qd_f16(const uint8_t *p) { return f16_to_f32((uint16_t)(p[0] | (p[1] << 8))); }
#endif

/* Whether the group dequantizer below takes dt (its block layouts: kernels/cpu/quant_ref.h). */
QD_FN int qd_dtype_ok(kdtype dt) {
    return dt == KDT_Q8_0 || dt == KDT_Q4_0 || dt == KDT_Q5_0 || dt == KDT_Q4_1 || dt == KDT_Q5_1 ||
           dt == KDT_IQ4_NL || dt == KDT_Q4_K || dt == KDT_Q5_K || dt == KDT_Q6_K || dt == KDT_Q3_K ||
           dt == KDT_Q2_K || dt == KDT_IQ4_XS;
}

/* Every dtype qd_dtype_ok takes, as X(DT): for the switches that instantiate a kernel per dtype. */
#define QD_EACH_DTYPE(X)                                                                                       \
    X(KDT_Q8_0) X(KDT_Q4_0) X(KDT_Q5_0) X(KDT_Q4_1) X(KDT_Q5_1) X(KDT_IQ4_NL) X(KDT_Q4_K) X(KDT_Q5_K)          \
    X(KDT_Q6_K) X(KDT_Q3_K) X(KDT_Q2_K) X(KDT_IQ4_XS)

/* Elements per block and bytes per block (as kdtype_block_elems / kdtype_row_bytes, usable in
 * device code); 0 for a dtype qd_dtype_ok refuses. */
QD_FN int qd_block_elems(kdtype dt) {
    return dt == KDT_Q4_K || dt == KDT_Q5_K || dt == KDT_Q6_K || dt == KDT_Q3_K || dt == KDT_Q2_K ||
                   dt == KDT_IQ4_XS
               ? 256
           : qd_dtype_ok(dt) ? 32
                             : 0;
}
QD_FN int qd_block_bytes(kdtype dt) {
    return dt == KDT_Q8_0     ? 34
           : dt == KDT_Q4_0 || dt == KDT_IQ4_NL ? 18
           : dt == KDT_Q5_0  ? 22
           : dt == KDT_Q4_1  ? 20
           : dt == KDT_Q5_1  ? 24
           : dt == KDT_Q4_K  ? 144
           : dt == KDT_Q5_K  ? 176
           : dt == KDT_Q6_K  ? 210
           : dt == KDT_Q3_K  ? 110
           : dt == KDT_Q2_K  ? 84
           : dt == KDT_IQ4_XS ? 136
                              : 0;
}

/* IQ4_NL / IQ4_XS level of nibble q (ggml's kvalues_iq4nl: -127, -104, -83, -65, -49, -35, -22,
 * -10, 1, 13, 25, 38, 53, 69, 89, 113), from two packed constants (no table in device memory). */
QD_FN int qd_iq4nl_level(int q) {
    const uint64_t v = q < 8 ? 0xf6eaddcfbfad9881ull : 0x7159453526190d01ull;
    return (int)(int8_t)(uint8_t)(v >> (8 * (q & 7)));
}

/* Q4_K / Q5_K sub-block s's 6-bit scale and min from the 12 packed bytes. */
QD_FN void qd_scale_min_k4(const uint8_t *sc12, int s, int *sc, int *m) {
    if (s < 4) {
        *sc = sc12[s] & 63;
        *m = sc12[s + 4] & 63;
    } else {
        *sc = (sc12[s + 4] & 15) | ((sc12[s - 4] >> 6) << 4);
        *m = (sc12[s + 4] >> 4) | ((sc12[s] >> 6) << 4);
    }
}

/* Q3_K group t's (16 elements) 6-bit scale from the 12 scale bytes. */
QD_FN int qd_q3k_scale(const uint8_t *sc12, int t) {
    const int lo = t < 8 ? sc12[t] & 15 : sc12[t - 8] >> 4;
    return lo | ((sc12[8 + t % 4] >> 2 * (t / 4)) & 3) << 4;
}

/* 32-element blocks: element e < 16 is the low nibble of qs[e], e >= 16 the high one of
 * qs[e - 16]; Q5_0 / Q5_1 add bit e of the 32-bit qh as the fifth bit. */
QD_FN void qd_deq8_b32(kdtype dt, const uint8_t *blk, int g, float w[8]) {
    const float d = qd_f16(blk);
    if (dt == KDT_Q8_0) {
        const int8_t *q = (const int8_t *)(blk + 2) + 8 * g;
        QD_UNROLL for (int i = 0; i < 8; i++) w[i] = QD_MUL((float)q[i], d);
        return;
    }
    const int five = dt == KDT_Q5_0 || dt == KDT_Q5_1, one = dt == KDT_Q4_1 || dt == KDT_Q5_1;
    const uint8_t *qs = blk + 2 + 2 * one + 4 * five + 8 * (g & 1);
    const int shift = 4 * (g >> 1);
    uint32_t qh = 0;
    if (five) {
        const uint8_t *h = blk + 2 + 2 * one;
        qh = ((uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24) >> (8 * g);
    }
    const float m = one ? qd_f16(blk + 2) : 0.0f;
    QD_UNROLL for (int i = 0; i < 8; i++) {
        const int v = ((qs[i] >> shift) & 15) | (int)((qh >> i) & 1) << 4;
        if (dt == KDT_IQ4_NL) w[i] = QD_MUL(d, (float)qd_iq4nl_level(v));
        else if (one) w[i] = QD_ADD(QD_MUL(d, (float)v), m);
        else w[i] = QD_MUL(d, (float)(v - (five ? 16 : 8)));
    }
}

/* 256-element super-blocks. */
QD_FN void qd_deq8_b256(kdtype dt, const uint8_t *blk, int g, float w[8]) {
    const int e0 = 8 * g;
    if (dt == KDT_Q4_K || dt == KDT_Q5_K) { /* sub-block s = g/4; 2k and 2k+1 share 32 qs bytes */
        const int five = dt == KDT_Q5_K, s = g >> 2, l0 = (g & 3) * 8;
        int sc, m;
        qd_scale_min_k4(blk + 4, s, &sc, &m);
        const float ds = QD_MUL(qd_f16(blk), (float)sc), dm = QD_MUL(qd_f16(blk + 2), (float)m);
        const uint8_t *q = blk + 16 + 32 * five + 32 * (s >> 1) + l0, *qh = blk + 16 + l0;
        const int shift = (s & 1) * 4;
        QD_UNROLL for (int i = 0; i < 8; i++) {
            const int v = ((q[i] >> shift) & 15) | (five ? ((qh[i] >> s) & 1) << 4 : 0);
            w[i] = QD_SUB(QD_MUL(ds, (float)v), dm);
        }
    } else if (dt == KDT_Q6_K) { /* ql[128], qh[64], int8 scales[16], d */
        const int h = e0 >> 7, r = e0 & 127;
        const uint8_t *ql = blk + 64 * h + (r & 63), *qh = blk + 128 + 32 * h + (r & 31);
        const int ls = 4 * (r >> 6), hs = 2 * (r >> 5);
        const float ds = QD_MUL(qd_f16(blk + 208), (float)(int8_t)blk[192 + (e0 >> 4)]);
        QD_UNROLL for (int i = 0; i < 8; i++) {
            const int v = ((ql[i] >> ls) & 15) | ((qh[i] >> hs) & 3) << 4;
            w[i] = QD_MUL(ds, (float)(v - 32));
        }
    } else if (dt == KDT_Q3_K || dt == KDT_Q2_K) { /* 2-bit codes: element 128h + 32j + l in qs[32h + l] bits 2j */
        const int two = dt == KDT_Q2_K, h = e0 >> 7, j = (e0 & 127) >> 5, l0 = e0 & 31;
        const uint8_t *qs = blk + (two ? 16 : 32) + 32 * h + l0;
        if (two) { /* scales[16] (scale | min << 4), qs[64], d, dmin */
            const int sc = blk[e0 >> 4];
            const float dl = QD_MUL(qd_f16(blk + 80), (float)(sc & 15)), ml = QD_MUL(qd_f16(blk + 82), (float)(sc >> 4));
            QD_UNROLL for (int i = 0; i < 8; i++) w[i] = QD_SUB(QD_MUL(dl, (float)((qs[i] >> 2 * j) & 3)), ml);
        } else { /* hmask[32], qs[64], scales[12], d; the code is 4 lower where hmask's bit is clear */
            const float dl = QD_MUL(qd_f16(blk + 108), (float)(qd_q3k_scale(blk + 96, e0 >> 4) - 32));
            const uint8_t *hm = blk + l0;
            QD_UNROLL for (int i = 0; i < 8; i++) {
                const int q = ((qs[i] >> 2 * j) & 3) - (((hm[i] >> (4 * h + j)) & 1) ? 0 : 4);
                w[i] = QD_MUL(dl, (float)q);
            }
        }
    } else { /* IQ4_XS: d, scales_h, scales_l[4], qs[128]; sub-block s = e/32 as IQ4_NL's halves */
        const int s = e0 >> 5, j0 = e0 & 15, shift = 4 * ((e0 & 31) >> 4);
        const int ls = ((blk[4 + s / 2] >> 4 * (s % 2)) & 15) | (((blk[2] | blk[3] << 8) >> 2 * s) & 3) << 4;
        const float dl = QD_MUL(qd_f16(blk), (float)(ls - 32));
        const uint8_t *qs = blk + 8 + 16 * s + j0;
        QD_UNROLL for (int i = 0; i < 8; i++) w[i] = QD_MUL(dl, (float)qd_iq4nl_level((qs[i] >> shift) & 15));
    }
}

/* Elements 8g .. 8g + 7 of the block at blk (g < qd_block_elems(dt) / 8) → w. */
QD_FN void qd_deq8(kdtype dt, const uint8_t *blk, int g, float w[8]) {
    if (qd_block_elems(dt) == 32) qd_deq8_b32(dt, blk, g, w);
    else qd_deq8_b256(dt, blk, g, w);
}

#endif
