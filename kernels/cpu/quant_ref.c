/* kernels/cpu/quant_ref.c — scalar reference dequantization of the ggml block formats
 * (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q4_K, Q5_K, Q6_K, F16, BF16, F32) and quantization to Q8_0 and Q4_K. See
 * quant_ref.h for the layouts. Written from the published format facts; each float operation
 * is a separate statement so no compiler contracts two into a fused multiply-add (results
 * must match gguf-py's numpy, which rounds every operation).
 */
#include "kernels/cpu/quant_ref.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "lib/half.h"
#include "lib/status.h"

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

_Static_assert(sizeof(qref_block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(qref_block_q4_0) == 18, "Q4_0 block is 18 bytes");
_Static_assert(sizeof(qref_block_q5_0) == 22, "Q5_0 block is 22 bytes");
_Static_assert(sizeof(qref_block_q4_1) == 20, "Q4_1 block is 20 bytes");
_Static_assert(sizeof(qref_block_q5_1) == 24, "Q5_1 block is 24 bytes");
_Static_assert(sizeof(qref_block_iq4_nl) == 18, "IQ4_NL block is 18 bytes");
_Static_assert(sizeof(qref_block_iq4_xs) == 136, "IQ4_XS block is 136 bytes");
_Static_assert(sizeof(qref_block_q3_k) == 110, "Q3_K block is 110 bytes");
_Static_assert(sizeof(qref_block_q2_k) == 84, "Q2_K block is 84 bytes");
_Static_assert(sizeof(qref_block_q4_k) == 144, "Q4_K block is 144 bytes");
_Static_assert(sizeof(qref_block_q5_k) == 176, "Q5_K block is 176 bytes");
_Static_assert(sizeof(qref_block_q6_k) == 210, "Q6_K block is 210 bytes");

int qref_block_elems(uint32_t type) {
    switch (type) {
    case QREF_F32: case QREF_F16: case QREF_BF16: return 1;
    case QREF_Q8_0: case QREF_Q4_0: case QREF_Q5_0: case QREF_Q4_1: case QREF_Q5_1: case QREF_IQ4_NL: return QREF_QK;
    case QREF_Q4_K: case QREF_Q5_K: case QREF_Q6_K: case QREF_Q4_K_SB8: case QREF_Q6_K_SB16: case QREF_IQ4_XS: case QREF_Q3_K: case QREF_Q2_K: return QREF_QK_K;
    default: return 0;
    }
}

int qref_block_bytes(uint32_t type) {
    switch (type) {
    case QREF_F32: return 4;
    case QREF_F16: case QREF_BF16: return 2;
    case QREF_Q8_0: return (int)sizeof(qref_block_q8_0);
    case QREF_Q4_0: return (int)sizeof(qref_block_q4_0);
    case QREF_Q5_0: return (int)sizeof(qref_block_q5_0);
    case QREF_Q4_1: return (int)sizeof(qref_block_q4_1);
    case QREF_Q5_1: return (int)sizeof(qref_block_q5_1);
    case QREF_IQ4_NL: return (int)sizeof(qref_block_iq4_nl);
    case QREF_IQ4_XS: return (int)sizeof(qref_block_iq4_xs);
    case QREF_Q3_K: return (int)sizeof(qref_block_q3_k);
    case QREF_Q2_K: return (int)sizeof(qref_block_q2_k);
    case QREF_Q4_K: case QREF_Q4_K_SB8: return (int)sizeof(qref_block_q4_k);
    case QREF_Q5_K: return (int)sizeof(qref_block_q5_k);
    case QREF_Q6_K: case QREF_Q6_K_SB16: return (int)sizeof(qref_block_q6_k);
    default: return 0;
    }
}

void qref_dequant_q8_0(const void *src, float *dst, int64_t nb) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < nb; b++) {
        qref_block_q8_0 blk;
        memcpy(&blk, p + b * (int64_t)sizeof blk, sizeof blk);
        float d = f16_to_f32(blk.d);
        for (int j = 0; j < QREF_QK; j++) dst[b * QREF_QK + j] = (float)blk.qs[j] * d;
    }
}

/* Q4_0 and IQ4_NL (same 18-byte blocks): y = d·level[nibble], level[q] = q − 8 for Q4_0. */
static void qref_dequant_nibbles(const void *src, float *dst, int64_t nb, const int8_t level[16]) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < nb; b++) {
        qref_block_q4_0 blk;
        memcpy(&blk, p + b * (int64_t)sizeof blk, sizeof blk);
        float d = f16_to_f32(blk.d);
        float *y = dst + b * QREF_QK;
        for (int j = 0; j < QREF_QK / 2; j++) {
            y[j] = d * (float)level[blk.qs[j] & 15];
            y[j + QREF_QK / 2] = d * (float)level[blk.qs[j] >> 4];
        }
    }
}

void qref_dequant_q4_0(const void *src, float *dst, int64_t nb) {
    static const int8_t level[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};
    qref_dequant_nibbles(src, dst, nb, level);
}

void qref_dequant_q5_0(const void *src, float *dst, int64_t nb) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < nb; b++) {
        qref_block_q5_0 blk;
        memcpy(&blk, p + b * (int64_t)sizeof blk, sizeof blk);
        float d = f16_to_f32(blk.d);
        uint32_t qh = (uint32_t)blk.qh[0] | (uint32_t)blk.qh[1] << 8 | (uint32_t)blk.qh[2] << 16 | (uint32_t)blk.qh[3] << 24;
        float *y = dst + b * QREF_QK;
        for (int j = 0; j < QREF_QK / 2; j++) {
            int lo = (blk.qs[j] & 15) | (int)((qh >> j) & 1) << 4;
            int hi = (blk.qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = d * (float)(lo - 16);
            y[j + QREF_QK / 2] = d * (float)(hi - 16);
        }
    }
}

void qref_dequant_iq4_nl(const void *src, float *dst, int64_t nb) {
    static const int8_t level[16] = QREF_IQ4NL_LEVELS;
    qref_dequant_nibbles(src, dst, nb, level);
}

/* (d·(ls − 32))·level as gguf-py's dl * qs; d·(ls − 32) is exact in f32 (11 × 6 bits). */
void qref_dequant_iq4_xs(const void *src, float *dst, int64_t nb) {
    static const int8_t level[16] = QREF_IQ4NL_LEVELS;
    const uint8_t *p = src;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = p + b * (int64_t)sizeof(qref_block_iq4_xs);
        uint16_t h;
        memcpy(&h, blk, 2);
        const float d = f16_to_f32(h);
        for (int s = 0; s < 8; s++) {
            const float dl = d * (float)(qref_iq4xs_scale(blk, s) - 32);
            const uint8_t *qs = blk + 8 + 16 * s;
            float *y = dst + b * QREF_QK_K + 32 * s;
            for (int j = 0; j < 16; j++) {
                y[j] = dl * (float)level[qs[j] & 15];
                y[j + 16] = dl * (float)level[qs[j] >> 4];
            }
        }
    }
}

/* (d·(sc − 32))·q as gguf-py's dl * q (every product exact in f32: 11 × 6 × 3 bits). */
void qref_dequant_q3_k(const void *src, float *dst, int64_t nb) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < nb; b++) {
        qref_block_q3_k blk;
        memcpy(&blk, p + b * (int64_t)sizeof blk, sizeof blk);
        const float d = f16_to_f32(blk.d);
        float *y = dst + b * QREF_QK_K;
        for (int e = 0; e < QREF_QK_K; e++) {
            const int h = e / 128, j = e % 128 / 32, l = e % 32;
            const int q = (blk.qs[32 * h + l] >> 2 * j & 3) - (blk.hmask[l] >> (4 * h + j) & 1 ? 0 : 4);
            y[e] = d * (float)(qref_q3k_scale(blk.scales, e / 16) - 32) * (float)q;
        }
    }
}

/* (d·sc)·q − dmin·m, each operation rounded as gguf-py's dl * q - ml. */
void qref_dequant_q2_k(const void *src, float *dst, int64_t nb) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < nb; b++) {
        qref_block_q2_k blk;
        memcpy(&blk, p + b * (int64_t)sizeof blk, sizeof blk);
        const float d = f16_to_f32(blk.d), dmin = f16_to_f32(blk.dmin);
        float *y = dst + b * QREF_QK_K;
        for (int e = 0; e < QREF_QK_K; e++) {
            const int h = e / 128, j = e % 128 / 32, l = e % 32, sc = blk.scales[e / 16];
            const float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
            y[e] = dl * (float)(blk.qs[32 * h + l] >> 2 * j & 3) - ml;
        }
    }
}

/* Q4_1 (five = 0) and Q5_1 (five = 1): y = d·q + m, each operation rounded as gguf-py's
 * (d * qs) + m. */
static void qref_dequant_q41_51(const void *src, float *dst, int64_t nb, int five) {
    const uint8_t *p = src;
    const size_t bb = five ? sizeof(qref_block_q5_1) : sizeof(qref_block_q4_1);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = p + b * (int64_t)bb, *qs = blk + (five ? 8 : 4);
        uint16_t hd, hm;
        memcpy(&hd, blk, 2);
        memcpy(&hm, blk + 2, 2);
        uint32_t qh = 0;
        if (five) qh = (uint32_t)blk[4] | (uint32_t)blk[5] << 8 | (uint32_t)blk[6] << 16 | (uint32_t)blk[7] << 24;
        float d = f16_to_f32(hd), m = f16_to_f32(hm);
        float *y = dst + b * QREF_QK;
        for (int j = 0; j < QREF_QK / 2; j++) {
            int lo = (qs[j] & 15) | (int)((qh >> j) & 1) << 4, hi = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            float a = d * (float)lo, c = d * (float)hi;
            y[j] = a + m;
            y[j + QREF_QK / 2] = c + m;
        }
    }
}

void qref_dequant_q4_1(const void *src, float *dst, int64_t nb) { qref_dequant_q41_51(src, dst, nb, 0); }
void qref_dequant_q5_1(const void *src, float *dst, int64_t nb) { qref_dequant_q41_51(src, dst, nb, 1); }

/* The 6-bit scale and min of sub-block s (0..7) from the 12 packed bytes. */
static void qref_scale_min_k4(const uint8_t *q, int s, int *sc, int *m) {
    if (s < 4) {
        *sc = q[s] & 63;
        *m = q[s + 4] & 63;
    } else {
        *sc = (q[s + 4] & 15) | ((q[s - 4] >> 6) << 4);
        *m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
    }
}

/* Shared by Q4_K and Q5_K: y = (d·sc)·q − dmin·m over the 8 sub-blocks; qh may be NULL. */
static void qref_dequant_k4(uint16_t d16, uint16_t dmin16, const uint8_t *scales,
                            const uint8_t *qs, const uint8_t *qh, float *y) {
    float d = f16_to_f32(d16), dmin = f16_to_f32(dmin16);
    for (int s = 0; s < 8; s++) {
        int sc, m;
        qref_scale_min_k4(scales, s, &sc, &m);
        float d1 = d * (float)sc;
        float m1 = dmin * (float)m;
        const uint8_t *q = qs + 32 * (s / 2);
        for (int l = 0; l < 32; l++) {
            int v = (s & 1) ? q[l] >> 4 : q[l] & 15;
            if (qh) v |= ((qh[l] >> s) & 1) << 4;
            float t = d1 * (float)v;
            y[32 * s + l] = t - m1;
        }
    }
}

void qref_dequant_q4_k(const void *src, float *dst, int64_t nb) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < nb; b++) {
        qref_block_q4_k blk;
        memcpy(&blk, p + b * (int64_t)sizeof blk, sizeof blk);
        qref_dequant_k4(blk.d, blk.dmin, blk.scales, blk.qs, NULL, dst + b * QREF_QK_K);
    }
}

void qref_dequant_q5_k(const void *src, float *dst, int64_t nb) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < nb; b++) {
        qref_block_q5_k blk;
        memcpy(&blk, p + b * (int64_t)sizeof blk, sizeof blk);
        qref_dequant_k4(blk.d, blk.dmin, blk.scales, blk.qs, blk.qh, dst + b * QREF_QK_K);
    }
}

void qref_dequant_q6_k(const void *src, float *dst, int64_t nb) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < nb; b++) {
        qref_block_q6_k blk;
        memcpy(&blk, p + b * (int64_t)sizeof blk, sizeof blk);
        float d = f16_to_f32(blk.d);
        float *y = dst + b * QREF_QK_K;
        for (int i = 0; i < QREF_QK_K; i++) {
            int h = i / 128, r = i % 128;
            int lo = (blk.ql[64 * h + r % 64] >> (4 * (r / 64))) & 15;
            int hi = (blk.qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
            float ds = d * (float)blk.scales[i / 16];
            y[i] = ds * (float)((lo | hi << 4) - 32);
        }
    }
}

/* Where the 6-bit code of element e sits in a Q6_K block, in ggml's order (six = 0: element
 * 128h + 32m + l is nibble m/2 of ql[64h + 32(m%2) + l] with bits 2m of qh[32h + l]) or
 * QREF_Q6_K_SB16's (six = 1, kernels.h): ql byte, its nibble, qh byte (from the block start), bit. */
static void qref_q6_at(int six, int e, int *lb, int *ln, int *hb, int *hs) {
    if (!six) {
        int h = e / 128, m = e % 128 / 32, l = e % 32;
        *lb = 64 * h + 32 * (m % 2) + l, *ln = m / 2, *hb = 128 + 32 * h + l, *hs = 2 * m;
    } else {
        int t = e % 16 / 2, beta = 2 * (e / 16) + e % 2;
        *lb = 32 * (t / 2) + beta, *ln = t % 2, *hb = 128 + 32 * (t / 4) + beta, *hs = 2 * (t % 4);
    }
}

static int16_t qref_q6_tab[2][QREF_QK_K][4]; /* [order][element]: qref_q6_at, filled once */
static pthread_once_t qref_tabs_once = PTHREAD_ONCE_INIT;
static void qref_q6_fill_tab(void) {
    for (int e = 0; e < QREF_QK_K; e++)
        for (int six = 0; six < 2; six++) {
            int v[4];
            qref_q6_at(six, e, &v[0], &v[1], &v[2], &v[3]);
            for (int k = 0; k < 4; k++) qref_q6_tab[six][e][k] = (int16_t)v[k];
        }
}

/* at[e]: where element e's code sits in each Q4_K order, as (byte << 1) | high nibble — [0]
 * ggml's: byte 32·(e/64) + e%32, high for e%64 >= 32; [1] SB8 (kernels.h): element 32j + 16h +
 * 4k + e' at byte 32k + 4j + e', nibble h. */
static uint16_t qref_q4_at[2][QREF_QK_K];

/* The reorderings' position tables, filled once per process (they were rebuilt per call, i.e.
 * per block when dequantizing a reordered weight). */
static void qref_tabs_fill(void) {
    qref_q6_fill_tab();
    for (int e = 0; e < QREF_QK_K; e++) {
        int j = e / 32, h = e % 32 / 16, k = e % 16 / 4, ee = e % 4;
        qref_q4_at[0][e] = (uint16_t)((32 * (e / 64) + e % 32) << 1 | (e % 64 >= 32));
        qref_q4_at[1][e] = (uint16_t)((32 * k + 4 * j + ee) << 1 | h);
    }
}

static int qref_reorder_q6(bool fwd, const uint8_t *s, uint8_t *d, int64_t n) {
    const size_t bb = sizeof(qref_block_q6_k);
    pthread_once(&qref_tabs_once, qref_tabs_fill);
    if (fwd) {
        for (int64_t b = 0; b < n / QREF_QK_K; b++, s += bb, d += bb) {
            /* ql: for group g and register pair k, SB16 bytes 32k + 2g, +1 take the nibbles of ggml's
             * 4 consecutive bytes at its element 16g + 4k (qref_q6_at): c0 | c2 << 4, c1 | c3 << 4 */
            for (int g = 0; g < 16; g++) {
                const int mb = g / 2, h = mb / 4, m = mb % 4, base = 64 * h + 32 * (m % 2) + 16 * (g % 2);
                for (int k = 0; k < 4; k++) {
                    uint32_t v;
                    memcpy(&v, s + base + 4 * k, 4);
                    v = v >> 4 * (m / 2) & 0x0f0f0f0fu;
                    uint16_t o = (uint16_t)((v & 0x0f0fu) | (v >> 12 & 0xf0f0u));
                    memcpy(d + 32 * k + 2 * g, &o, 2);
                }
            }
            /* qh: SB16 bytes 128 + 32mm + 2g, +1 take bits 2m of ggml's 8 qh bytes at element 16g + 8mm:
             * bytes 0, 2, 4, 6 into the first, 1, 3, 5, 7 into the second, 2 bits each */
            for (int g = 0; g < 16; g++) {
                const int mb = g / 2, h = mb / 4, m = mb % 4;
                for (int mm = 0; mm < 2; mm++) {
                    uint64_t u;
                    memcpy(&u, s + 128 + 32 * h + 16 * (g % 2) + 8 * mm, 8);
                    u = u >> 2 * m & 0x0303030303030303ull;
                    d[128 + 32 * mm + 2 * g] = (uint8_t)((u & 3) | (u >> 14 & 0xc) | (u >> 28 & 0x30) | (u >> 42 & 0xc0));
                    d[128 + 32 * mm + 2 * g + 1] =
                        (uint8_t)((u >> 8 & 3) | (u >> 22 & 0xc) | (u >> 36 & 0x30) | (u >> 50 & 0xc0));
                }
            }
            memcpy(d + 192, s + 192, bb - 192); /* scales, d */
        }
        return 0;
    }
    const int16_t (*ai)[4] = qref_q6_tab[1], (*ao)[4] = qref_q6_tab[0];
    for (int64_t b = 0; b < n / QREF_QK_K; b++, s += bb, d += bb) {
        memset(d, 0, 192);
        memcpy(d + 192, s + 192, bb - 192); /* scales, d */
        for (int e = 0; e < QREF_QK_K; e++) {
            int lo = s[ai[e][0]] >> 4 * ai[e][1] & 15, hi = s[ai[e][2]] >> ai[e][3] & 3;
            d[ao[e][0]] |= (uint8_t)(lo << 4 * ao[e][1]);
            d[ao[e][2]] |= (uint8_t)(hi << ao[e][3]);
        }
    }
    return 0;
}

int qref_reorder(uint32_t to, uint32_t from, const void *src, void *dst, int64_t n) {
    bool six_fwd = from == QREF_Q6_K && to == QREF_Q6_K_SB16, six_back = from == QREF_Q6_K_SB16 && to == QREF_Q6_K;
    if ((six_fwd || six_back) && (n < 0 || n % QREF_QK_K)) return PEFTD_EINVAL;
    if (six_fwd || six_back) return qref_reorder_q6(six_fwd, src, dst, n);
    bool fwd = from == QREF_Q4_K && to == QREF_Q4_K_SB8, back = from == QREF_Q4_K_SB8 && to == QREF_Q4_K;
    if (!fwd && !back) return PEFTD_EUNSUPPORTED;
    if (n < 0 || n % QREF_QK_K) return PEFTD_EINVAL;
    pthread_once(&qref_tabs_once, qref_tabs_fill);
    const uint16_t *ai = qref_q4_at[1], *ao = qref_q4_at[0]; /* the back direction's (below) */
    const uint8_t *s = src;
    uint8_t *d = dst;
    const size_t bb = sizeof(qref_block_q4_k), qs = offsetof(qref_block_q4_k, qs);
    for (int64_t b = 0; b < n / QREF_QK_K; b++, s += bb, d += bb) {
        memcpy(d, s, qs); /* d, dmin, scales */
        uint8_t *o = d + qs;
        if (fwd) { /* the same, byte-wise (loading a big model): sub-blocks 2g, 2g + 1 are the low and
                    * high nibbles of Q4_K bytes 32g .. 32g + 31 */
            const uint8_t *q = s + qs;
            for (int k = 0; k < 4; k++)
                for (int g = 0; g < 4; g++)
                    for (int e = 0; e < 4; e++) {
                        uint8_t a = q[32 * g + 4 * k + e], c = q[32 * g + 16 + 4 * k + e];
                        o[32 * k + 8 * g + e] = (uint8_t)((a & 15) | (c & 15) << 4);
                        o[32 * k + 8 * g + 4 + e] = (uint8_t)((a >> 4) | (c & 0xf0));
                    }
            continue;
        }
        memset(o, 0, QREF_QK_K / 2);
        for (int e = 0; e < QREF_QK_K; e++) {
            int code = s[qs + (ai[e] >> 1)] >> 4 * (ai[e] & 1) & 15;
            o[ao[e] >> 1] |= (uint8_t)(code << 4 * (ao[e] & 1));
        }
    }
    return 0;
}

int qref_dequantize(uint32_t type, const void *src, float *dst, int64_t n) {
    int be = qref_block_elems(type);
    if (!be) return PEFTD_EUNSUPPORTED;
    if (n < 0 || n % be) return PEFTD_EINVAL;
    const uint8_t *p = src;
    int64_t nb = n / be;
    switch (type) {
    case QREF_F32: memcpy(dst, src, (size_t)n * 4); break;
    case QREF_F16:
    case QREF_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = type == QREF_F16 ? f16_to_f32(h) : bf16_to_f32(h);
        }
        break;
    case QREF_Q8_0: qref_dequant_q8_0(src, dst, nb); break;
    case QREF_Q4_0: qref_dequant_q4_0(src, dst, nb); break;
    case QREF_Q5_0: qref_dequant_q5_0(src, dst, nb); break;
    case QREF_Q4_1: qref_dequant_q4_1(src, dst, nb); break;
    case QREF_Q5_1: qref_dequant_q5_1(src, dst, nb); break;
    case QREF_IQ4_NL: qref_dequant_iq4_nl(src, dst, nb); break;
    case QREF_IQ4_XS: qref_dequant_iq4_xs(src, dst, nb); break;
    case QREF_Q3_K: qref_dequant_q3_k(src, dst, nb); break;
    case QREF_Q2_K: qref_dequant_q2_k(src, dst, nb); break;
    case QREF_Q4_K: qref_dequant_q4_k(src, dst, nb); break;
    case QREF_Q6_K_SB16:
    case QREF_Q4_K_SB8: { /* one block back to ggml's order at a time, then as that type */
        bool six = type == QREF_Q6_K_SB16;
        const size_t bb = six ? sizeof(qref_block_q6_k) : sizeof(qref_block_q4_k);
        uint8_t blk[sizeof(qref_block_q6_k)];
        for (int64_t b = 0; b < nb; b++) {
            qref_reorder(six ? QREF_Q6_K : QREF_Q4_K, type, p + b * bb, blk, QREF_QK_K);
            (six ? qref_dequant_q6_k : qref_dequant_q4_k)(blk, dst + b * QREF_QK_K, 1);
        }
        break;
    }
    case QREF_Q5_K: qref_dequant_q5_k(src, dst, nb); break;
    default: qref_dequant_q6_k(src, dst, nb); break;
    }
    return 0;
}

int qref_quantize_q8_0(const float *src, void *dst, int64_t n) {
    if (n < 0 || n % QREF_QK) return PEFTD_EINVAL;
    uint8_t *p = dst;
    for (int64_t b = 0; b < n / QREF_QK; b++) {
        const float *x = src + b * QREF_QK;
        qref_block_q8_0 blk;
        float amax = 0.0f;
        for (int j = 0; j < QREF_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < QREF_QK; j++) {
            float v = x[j] * id;
            /* |v| ≤ 127 (+ an ulp) for finite input; the clamp only keeps a subnormal amax
             * (1/d = inf) or a NaN from being an undefined float → int conversion. */
            v = fminf(fmaxf(v, -127.0f), 127.0f);
            blk.qs[j] = (int8_t)roundf(v); /* half away from zero, as gguf-py's np_roundf */
        }
        blk.d = f32_to_f16(d);
        memcpy(p + b * (int64_t)sizeof blk, &blk, sizeof blk);
    }
    return 0;
}

/* Round to nearest, ties to even (the default rounding mode), as an int. */
static int qref_nearest(float v) {
    if (!(v > -1e9f)) v = -1e9f; /* also NaN: the callers clamp to their level range */
    if (v > 1e9f) v = 1e9f;
    return (int)lrintf(v);
}

static int qref_clamp(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Fits x[0..n) ≈ scale·L − the_min with L in 0..nmax, minimising Σ w·(scale·L + min − x)²:
 * first the plain min/max grid, then nstep + 1 candidate grids (nmax + rmin + k·rdelta
 * steps over the range), each refined by the weighted least-squares scale and min for its
 * levels (min clamped to ≤ 0); the best fit wins. Returns the scale; L receives the levels. */
static float qref_fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L,
                                float *the_min, float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0], sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        float wx = w[i] * x[i];
        sum_x += wx;
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.0f;
    }
    float iscale = (float)nmax / (max - min), scale = 1.0f / iscale, best = 0.0f;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)qref_clamp(qref_nearest(iscale * (x[i] - min)), 0, nmax);
        float diff = scale * (float)L[i];
        diff = diff + min;
        diff = diff - x[i];
        float e = w[i] * (diff * diff);
        best += e;
    }
    uint8_t aux[QREF_QK_K];
    for (int is = 0; is <= nstep; is++) {
        float steps = rmin + rdelta * (float)is;
        iscale = (steps + (float)nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = qref_clamp(qref_nearest(iscale * (x[i] - min)), 0, nmax);
            aux[i] = (uint8_t)l;
            float wl = w[i] * (float)l;
            sum_l += wl;
            float wll = wl * (float)l;
            sum_l2 += wll;
            float wlx = wl * x[i];
            sum_xl += wlx;
        }
        float a = sum_w * sum_l2, b = sum_l * sum_l, D = a - b;
        if (!(D > 0)) continue;
        float p = sum_w * sum_xl, q = sum_x * sum_l;
        float this_scale = (p - q) / D;
        p = sum_l2 * sum_x;
        q = sum_l * sum_xl;
        float this_min = (p - q) / D;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        float err = 0;
        for (int i = 0; i < n; i++) {
            float diff = this_scale * (float)aux[i];
            diff = diff + this_min;
            diff = diff - x[i];
            float e = w[i] * (diff * diff);
            err += e;
        }
        if (err < best) {
            memcpy(L, aux, (size_t)n);
            best = err;
            scale = this_scale;
            min = this_min;
        }
    }
    *the_min = -min;
    return scale;
}

/* The 6-bit scales and mins of a Q4_K / Q5_K block (the 12 bytes of quant_ref.h), d and
 * dmin, and (L not NULL) the levels L[256] (0..nmax) recomputed against the scales as they
 * decode, from the 8 sub-block fits. Shared by the reference and the fast quantizer (quant_fast.c). */
void qref__k4_finish(const float *x, const float *scales, const float *mins, int nmax, uint8_t *sc12,
                     uint16_t *d16, uint16_t *dmin16, uint8_t *L) {
    float max_scale = 0, max_min = 0;
    for (int s = 0; s < 8; s++) {
        if (scales[s] > max_scale) max_scale = scales[s];
        if (mins[s] > max_min) max_min = mins[s];
    }
    float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    memset(sc12, 0, 12);
    for (int s = 0; s < 8; s++) {
        int ls = qref_clamp(qref_nearest(inv_scale * scales[s]), 0, 63);
        int lm = qref_clamp(qref_nearest(inv_min * mins[s]), 0, 63);
        if (s < 4) {
            sc12[s] = (uint8_t)ls;
            sc12[s + 4] = (uint8_t)lm;
        } else {
            sc12[s + 4] = (uint8_t)((ls & 15) | ((lm & 15) << 4));
            sc12[s - 4] |= (uint8_t)((ls >> 4) << 6);
            sc12[s] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d16 = f32_to_f16(max_scale / 63.0f);
    *dmin16 = f32_to_f16(max_min / 63.0f);
    if (!L) return;
    /* Levels again, against the scales as they will be decoded. */
    for (int s = 0; s < 8; s++) {
        int sc, m;
        qref_scale_min_k4(sc12, s, &sc, &m);
        float d = f16_to_f32(*d16) * (float)sc;
        if (d == 0.0f) continue;
        float dm = f16_to_f32(*dmin16) * (float)m;
        for (int l = 0; l < 32; l++) {
            float v = x[32 * s + l] + dm;
            L[32 * s + l] = (uint8_t)qref_clamp(qref_nearest(v / d), 0, nmax);
        }
    }
}

/* Packs levels L[256] into a Q4_K (qh NULL) or Q5_K block's qs (and qh: bit s of qh[l] is
 * the 5th bit of element l of sub-block s). */
void qref__k4_pack(const uint8_t *L, uint8_t *qs, uint8_t *qh) {
    if (qh) memset(qh, 0, 32);
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 32; l++) {
            int a = L[64 * k + l], b = L[64 * k + 32 + l];
            if (qh) qh[l] |= (uint8_t)(((a >> 4) & 1) << (2 * k) | ((b >> 4) & 1) << (2 * k + 1));
            qs[32 * k + l] = (uint8_t)((a & 15) | ((b & 15) << 4));
        }
}

/* The sub-block weights of the K4 search: |x| + rms of the sub-block. */
static void qref_k4_weights(const float *xs, float *w) {
    float sum_x2 = 0;
    for (int l = 0; l < 32; l++) {
        float sq = xs[l] * xs[l];
        sum_x2 += sq;
    }
    float av_x = sqrtf(sum_x2 / 32.0f);
    for (int l = 0; l < 32; l++) w[l] = av_x + fabsf(xs[l]);
}

/* One Q4_K block from 256 floats. */
static void qref_quantize_block_q4_k(const float *x, qref_block_q4_k *y) {
    uint8_t L[QREF_QK_K];
    float scales[8], mins[8], w[32];
    for (int s = 0; s < 8; s++) {
        qref_k4_weights(x + 32 * s, w);
        scales[s] = qref_fit_scale_min(32, 15, x + 32 * s, w, L + 32 * s, &mins[s], -1.0f, 0.1f, 20);
    }
    qref__k4_finish(x, scales, mins, 15, y->scales, &y->d, &y->dmin, L);
    qref__k4_pack(L, y->qs, NULL);
}

/* One Q5_K block: the Q4_K search with 32 levels (llama.cpp's parameters for Q5_K: 31 levels
 * above the min, candidate steps from −0.5 by 0.1, 16 candidates). */
static void qref_quantize_block_q5_k(const float *x, qref_block_q5_k *y) {
    uint8_t L[QREF_QK_K];
    float scales[8], mins[8], w[32];
    for (int s = 0; s < 8; s++) {
        qref_k4_weights(x + 32 * s, w);
        scales[s] = qref_fit_scale_min(32, 31, x + 32 * s, w, L + 32 * s, &mins[s], -0.5f, 0.1f, 15);
    }
    qref__k4_finish(x, scales, mins, 31, y->scales, &y->d, &y->dmin, L);
    qref__k4_pack(L, y->qs, y->qh);
}

/* Symmetric fit of a 16-element group to levels −nmax..nmax−1 (llama.cpp's Q6_K search, the
 * facts: start at the largest-magnitude value mapped to −nmax, weights x², then 18 nearby
 * candidate scales −(nmax + 0.1·k)/max, k = ±1..±9, keeping the best weighted least-squares
 * fit). L receives level + nmax; returns the scale. */
static float qref_fit_symmetric(int n, int nmax, const float *x, uint8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < 1e-15f) {
        memset(L, (uint8_t)nmax, (size_t)n);
        return 0.0f;
    }
    float best = 0, scale = 0;
    for (int k = 0; k <= 18; k++) {
        int is = k == 0 ? 0 : k <= 9 ? k - 10 : k - 9; /* 0, then -9..-1, 1..9 */
        float num = (float)nmax + 0.1f * (float)is;
        float iscale = -num / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = qref_clamp(qref_nearest(iscale * x[i]), -nmax, nmax - 1);
            float w = x[i] * x[i];
            float wx = w * x[i];
            float wxl = wx * (float)l;
            sumlx += wxl;
            float wl = w * (float)l;
            float wll = wl * (float)l;
            suml2 += wll;
        }
        if (k == 0) {
            scale = suml2 > 0 ? sumlx / suml2 : 0.0f;
            best = scale * sumlx;
        } else {
            float a = sumlx * sumlx, b = best * suml2;
            if (!(suml2 > 0 && a > b)) continue;
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
        for (int i = 0; i < n; i++)
            L[i] = (uint8_t)(nmax + qref_clamp(qref_nearest(iscale * x[i]), -nmax, nmax - 1));
    }
    return scale;
}

/* One Q6_K block: 16 group scales from qref_fit_symmetric, 8-bit group scales relative to
 * the largest-magnitude one (mapped to −128, capped at 127), the levels recomputed against
 * the decoded scales. */
static void qref_quantize_block_q6_k(const float *x, qref_block_q6_k *y) {
    uint8_t L[QREF_QK_K];
    float scales[16], max_scale = 0, max_abs = 0;
    for (int g = 0; g < 16; g++) {
        scales[g] = qref_fit_symmetric(16, 32, x + 16 * g, L + 16 * g);
        if (fabsf(scales[g]) > max_abs) {
            max_abs = fabsf(scales[g]);
            max_scale = scales[g];
        }
    }
    memset(y, 0, sizeof *y);
    if (max_abs < 1e-15f) {
        memset(L, 32, sizeof L); /* code 32 = 0 */
    } else {
        float iscale = -128.0f / max_scale;
        y->d = f32_to_f16(1.0f / iscale);
        for (int g = 0; g < 16; g++) {
            int v = qref_nearest(iscale * scales[g]);
            y->scales[g] = (int8_t)(v > 127 ? 127 : v < -128 ? -128 : v);
        }
        for (int g = 0; g < 16; g++) {
            float d = f16_to_f32(y->d) * (float)y->scales[g];
            if (d == 0.0f) continue;
            for (int i = 0; i < 16; i++)
                L[16 * g + i] = (uint8_t)(32 + qref_clamp(qref_nearest(x[16 * g + i] / d), -32, 31));
        }
    }
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t *Lh = L + 128 * h;
            y->ql[64 * h + l] = (uint8_t)((Lh[l] & 15) | (Lh[l + 64] & 15) << 4);
            y->ql[64 * h + l + 32] = (uint8_t)((Lh[l + 32] & 15) | (Lh[l + 96] & 15) << 4);
            y->qh[32 * h + l] = (uint8_t)((Lh[l] >> 4) | (Lh[l + 32] >> 4) << 2 | (Lh[l + 64] >> 4) << 4 |
                                          (Lh[l + 96] >> 4) << 6);
        }
}

int qref_quantize_q4_k(const float *src, void *dst, int64_t n) {
    if (n < 0 || n % QREF_QK_K) return PEFTD_EINVAL;
    uint8_t *p = dst;
    for (int64_t b = 0; b < n / QREF_QK_K; b++) {
        qref_block_q4_k blk;
        qref_quantize_block_q4_k(src + b * QREF_QK_K, &blk);
        memcpy(p + b * (int64_t)sizeof blk, &blk, sizeof blk);
    }
    return 0;
}

int qref_quantize_q5_k(const float *src, void *dst, int64_t n) {
    if (n < 0 || n % QREF_QK_K) return PEFTD_EINVAL;
    uint8_t *p = dst;
    for (int64_t b = 0; b < n / QREF_QK_K; b++) {
        qref_block_q5_k blk;
        qref_quantize_block_q5_k(src + b * QREF_QK_K, &blk);
        memcpy(p + b * (int64_t)sizeof blk, &blk, sizeof blk);
    }
    return 0;
}

int qref_quantize_q6_k(const float *src, void *dst, int64_t n) {
    if (n < 0 || n % QREF_QK_K) return PEFTD_EINVAL;
    uint8_t *p = dst;
    for (int64_t b = 0; b < n / QREF_QK_K; b++) {
        qref_block_q6_k blk;
        qref_quantize_block_q6_k(src + b * QREF_QK_K, &blk);
        memcpy(p + b * (int64_t)sizeof blk, &blk, sizeof blk);
    }
    return 0;
}

/* Q4_0 / Q5_0's symmetric codes of one block of 32 (gguf-py's quantize_blocks): d = (the
 * largest-magnitude value, the first of equal magnitudes as numpy's argmax) / −half,
 * q = min(2·half − 1, trunc(x·(1/d) + half + 0.5)); returns d. */
static float qref_sym_codes(const float *x, int half, uint8_t q[QREF_QK]) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < QREF_QK; j++)
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    float d = max / -(float)half;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < QREF_QK; j++) {
        float v = x[j] * id;
        v = v + ((float)half + 0.5f);
        v = fminf(fmaxf(v, 0.0f), (float)(2 * half - 1)); /* trunc then clip, as gguf-py (also NaN-safe) */
        q[j] = (uint8_t)v;
    }
    return d;
}

int qref_quantize_q4_0(const float *src, void *dst, int64_t n) {
    if (n < 0 || n % QREF_QK) return PEFTD_EINVAL;
    uint8_t *p = dst;
    for (int64_t b = 0; b < n / QREF_QK; b++) {
        qref_block_q4_0 blk;
        uint8_t q[QREF_QK];
        blk.d = f32_to_f16(qref_sym_codes(src + b * QREF_QK, 8, q));
        for (int j = 0; j < QREF_QK / 2; j++) blk.qs[j] = (uint8_t)(q[j] | q[j + QREF_QK / 2] << 4);
        memcpy(p + b * (int64_t)sizeof blk, &blk, sizeof blk);
    }
    return 0;
}

int qref_quantize_q5_0(const float *src, void *dst, int64_t n) {
    if (n < 0 || n % QREF_QK) return PEFTD_EINVAL;
    uint8_t *p = dst;
    for (int64_t b = 0; b < n / QREF_QK; b++) {
        qref_block_q5_0 blk;
        uint8_t q[QREF_QK];
        blk.d = f32_to_f16(qref_sym_codes(src + b * QREF_QK, 16, q));
        uint32_t qh = 0;
        for (int j = 0; j < QREF_QK; j++) qh |= (uint32_t)(q[j] >> 4) << j;
        for (int j = 0; j < QREF_QK / 2; j++) blk.qs[j] = (uint8_t)((q[j] & 15) | (q[j + QREF_QK / 2] & 15) << 4);
        for (int k = 0; k < 4; k++) blk.qh[k] = (uint8_t)(qh >> 8 * k);
        memcpy(p + b * (int64_t)sizeof blk, &blk, sizeof blk);
    }
    return 0;
}

/* Q4_1 (five = 0) / Q5_1 (five = 1) blocks, gguf-py's quantize_blocks. */
static int qref_quantize_q41_51(const float *src, void *dst, int64_t n, int five) {
    if (n < 0 || n % QREF_QK) return PEFTD_EINVAL;
    uint8_t *p = dst;
    const size_t bb = five ? sizeof(qref_block_q5_1) : sizeof(qref_block_q4_1);
    const float top = five ? 31.0f : 15.0f;
    for (int64_t b = 0; b < n / QREF_QK; b++) {
        const float *x = src + b * QREF_QK;
        float mx = x[0], mn = x[0];
        for (int j = 1; j < QREF_QK; j++) {
            mx = fmaxf(mx, x[j]);
            mn = fminf(mn, x[j]);
        }
        float d = mx - mn;
        d = d / top;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint8_t q[QREF_QK], blk[sizeof(qref_block_q5_1)];
        uint32_t qh = 0;
        for (int j = 0; j < QREF_QK; j++) {
            float v = x[j] - mn;
            v = v * id;
            v = v + 0.5f;
            v = fminf(fmaxf(v, 0.0f), top); /* trunc then clip, as gguf-py (also NaN-safe) */
            q[j] = (uint8_t)v;
            qh |= (uint32_t)(q[j] >> 4) << j;
        }
        uint16_t hd = f32_to_f16(d), hm = f32_to_f16(mn);
        memcpy(blk, &hd, 2);
        memcpy(blk + 2, &hm, 2);
        uint8_t *qs = blk + (five ? 8 : 4);
        if (five)
            for (int k = 0; k < 4; k++) blk[4 + k] = (uint8_t)(qh >> 8 * k);
        for (int j = 0; j < QREF_QK / 2; j++) qs[j] = (uint8_t)((q[j] & 15) | (q[j + QREF_QK / 2] & 15) << 4);
        memcpy(p + b * (int64_t)bb, blk, bb);
    }
    return 0;
}

int qref_quantize_q4_1(const float *src, void *dst, int64_t n) { return qref_quantize_q41_51(src, dst, n, 0); }
int qref_quantize_q5_1(const float *src, void *dst, int64_t n) { return qref_quantize_q41_51(src, dst, n, 1); }
