/* kernels/cpu/qx16.c — the 16-row interleaved layout of a call's quantized activations
 * (kq_x.x16v / x16p / x16d, qmatmul.h): x rows in lanes, 4 codes per lane. The AMX tiles take
 * it as their B operand (qdot_amx.c); the AVX2 and AVX-512 VNNI batch tiles (qdot_avx2.c,
 * qdot_avx512.c; K-quants qdot_avx2_x16k.c, qdot_avx512_x16k.c) broadcast 4 weight codes against
 * 8 or 16 of its rows at a time, so a block's exact sums build up lane by lane with no
 * horizontal adds. Built once per call, one x row at a time, by the activation quantizer's
 * tasks (qmatmul.c: a task owns 16 rows, which share cache lines here). Plain C. */
#include <string.h>

#include "kernels/cpu/qmatmul.h"

/* Sizes: v mp·cols, p (int32 per x row and block: kq_x16_pairs(dt) per super-block for the
 * K-quants, 1 per block of 32 for Q8_0/Q4_0), d (one float per x row and block of the type: 32
 * or 256 elements); mp = n rounded up to 16. */
static size_t x16_p_bytes(kdtype dt, size_t mp, size_t nb) {
    return mp * nb * 4 * (size_t)(kdtype_is_kquant(dt) ? kq_x16_pairs(dt) : 1);
}

size_t kq_x16_bytes(kdtype dt, int n, int64_t cols) {
    const size_t mp = (size_t)(n + 15) / 16 * 16, nb = (size_t)(cols / kq_act_block(dt));
    return mp * (size_t)cols + x16_p_bytes(dt, mp, nb) + mp * nb * 4;
}

void kq_x16_carve(kdtype dt, int n, int64_t cols, uint8_t *p, kq_x *qx) {
    const size_t mp = (size_t)(n + 15) / 16 * 16, nb = (size_t)(cols / kq_act_block(dt));
    const size_t xp = x16_p_bytes(dt, mp, nb);
    qx->x16v = (int8_t *)p;
    qx->x16p = (int32_t *)(p + mp * (size_t)cols);
    qx->x16d = (float *)(p + mp * (size_t)cols + xp);
}

/* Row i (< the padded count; rows >= x->n write zeros) into the layout, with nc = cols / 32
 * chunks of 32 codes and nb blocks of the type (Q8_0, Q4_0: nb = nc; K-quants nb = nc / 8):
 *   v[(mb·nc + c)·512 + 64·(k/4) + 4m + k%4] = xq[16mb + m][32c + k] (k < 32: a chunk is the
 *      8 tile rows of B for one tdpbusd; a K-quant super-block's 8 chunks are consecutive, so
 *      a Q6_K group of 16 codes is 4 consecutive rows)
 *   p[((mb·nb + b)·NP + t)·16 + m] = X_2t | X_2t+1 << 16 (K-quants, NP = kq_x16_pairs(dt): the
 *      code sums of groups 2t, 2t+1 of super-block b — Q4_K/Q5_K's 8 sub-blocks of 32, Q6_K's 16
 *      groups of 16; in natural order also for the SB8 codes)
 *   (Q6_K_SB16: v holds the codes in natural order — the AVX2 walk unpacks its weights so — while
 *      kq_x.q keeps SB16's for that path's own tiles)
 *   p[(mb·nb + b)·16 + m] = −128 · Σ of block b's 32 codes (Q8_0/Q4_0: the start of a VNNI lane
 *      whose weights are offset to unsigned; the sum of kq_x.corr's 8 entries of the block, which
 *      the row's quantization wrote first)
 *   d[(mb·nb + b)·16 + m] = the row's scale of block b. */
void kq_x16_row(kq_x *qx, int i, kdtype dt) {
    const int64_t cols = qx->cols, nb = cols / kq_act_block(dt), mb = i / 16, m = i % 16;
    const bool live = i < qx->n;
    const int8_t *q = qx->q + (int64_t)i * cols;
    int8_t *dst = qx->x16v + mb * 16 * cols + 4 * m;
    int8_t nat[256];
    for (int64_t k4 = 0; k4 < cols / 4; k4++) { /* codes 4·k4 .. + 3: tile row k4, 64 bytes apart */
        int32_t v = 0;
        if (live && dt == KDT_Q6_K_SB16) { /* natural order, as the walk unpacks SB16 (qx16k.h) */
            if (k4 % 64 == 0) kq_sb16_permute(q + 4 * k4, nat, false);
            memcpy(&v, nat + 4 * (k4 % 64), 4);
        } else if (live)
            memcpy(&v, q + 4 * k4, 4);
        memcpy(dst + 64 * k4, &v, 4);
    }
    const bool kq = kdtype_is_kquant(dt);
    for (int64_t b = 0; b < nb && !kq; b++) { /* the quantizer's corr, per 4 codes, summed */
        const int32_t *c = qx->corr + (int64_t)i * (cols / 4) + 8 * b;
        qx->x16p[(mb * nb + b) * 16 + m] = live ? c[0] + c[1] + c[2] + c[3] + c[4] + c[5] + c[6] + c[7] : 0;
    }
    const int np = kq ? kq_x16_pairs(dt) : 0;
    for (int64_t b = 0; b < nb && kq; b++)
        for (int t = 0; t < np; t++) {
            int32_t v = 0;
            if (live) {
                const int16_t *g = qx->gsum + (int64_t)i * (cols / kq_gsum_group(dt)) + 2 * np * b + 2 * t;
                v = (int32_t)((uint32_t)(uint16_t)g[0] | (uint32_t)(uint16_t)g[1] << 16);
            }
            qx->x16p[((mb * nb + b) * np + t) * 16 + m] = v;
        }
    for (int64_t b = 0; b < nb; b++) qx->x16d[(mb * nb + b) * 16 + m] = live ? qx->d[(int64_t)i * nb + b] : 0.0f;
}
