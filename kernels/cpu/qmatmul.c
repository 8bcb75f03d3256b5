/* kernels/cpu/qmatmul.c — y[n, rows] = beta*y + x[n, cols] · wᵀ for quantized w (Q8_0, Q4_0, Q5_0,
 * Q4_1, Q5_1, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K):
 * the driver (x quantized once per call, weight rows split over the pool as matmul.c does),
 * the activation quantizer every path shares, and the scalar path that spells out the
 * canonical order of qmatmul.h (the SIMD paths in qdot_avx512.c / qdot_avx2.c reproduce it
 * bit for bit). */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/mm_job.h"
#include "kernels/cpu/qmatmul.h"
#include "kernels/cpu/quant_ref.h"
#include "kernels/cpu/simd.h"
#include "lib/half.h"
#include "lib/log.h"

kq_path kcpu__q_path = KQ_AUTO;

bool kq_path_available(kq_path p) {
    switch (p) {
    case KQ_SCALAR: return true;
    case KQ_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case KQ_VNNI:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vnni");
    case KQ_AMX: return kq_path_available(KQ_VNNI) && kq_amx_usable();
    case KQ_AUTO: return true;
    }
    return false;
}

kq_path kq_best_path(void) {
    return kq_path_available(KQ_AMX)    ? KQ_AMX
           : kq_path_available(KQ_VNNI) ? KQ_VNNI
           : kq_path_available(KQ_AVX2) ? KQ_AVX2
                                        : KQ_SCALAR;
}

static kq_path kq_resolve(void) {
    kq_path p = kcpu__q_path;
    if (p == KQ_AUTO) {
        const char *e = getenv("PEFTD_CPU_QPATH");
        if (e && !strcmp(e, "amx")) p = KQ_AMX;
        else if (e && !strcmp(e, "vnni")) p = KQ_VNNI;
        else if (e && !strcmp(e, "avx2")) p = KQ_AVX2;
        else if (e && !strcmp(e, "scalar")) p = KQ_SCALAR;
    }
    if (p == KQ_AUTO || !kq_path_available(p)) p = kq_best_path();
    return p;
}

kdtype kq_preferred_dtype(kdtype dt) {
    if (kq_resolve() != KQ_AVX2) return dt;
    return dt == KDT_Q4_K ? KDT_Q4_K_SB8 : dt == KDT_Q6_K ? KDT_Q6_K_SB16 : dt;
}

/* Whether x of n rows is also laid out as x16 (qx16.c) for the path that will multiply it: every
 * SIMD path's batches of KQ_X16_MIN_N rows or more (AMX multiplies those of KQ_AMX_MIN_N and
 * hands the smaller ones to the VNNI path, which reads it too). Q6_K_SB16 too: since the walk's
 * x vector stays in a register (KQ_IN_REG) it beats SB16's own tile on batches (kernels_bench,
 * one thread, 2048², 32 / 256 rows: 118 / 130 against 94 / 92 GFLOP/s on the AMX Xeon). */
static bool kq_x16_wanted(int n) {
    const kq_path p = kq_resolve();
    return p != KQ_SCALAR && n >= KQ_X16_MIN_N;
}

/* ---- activation quantization ---- */

/* One block of len codes: d = max|x|/127, q = round-half-even(x / d) (0 when d == 0; a NaN
 * element is skipped by the max and coded 0). */
static float kq_quant_block(const float *x, int len, int8_t *q) {
    float amax = 0.0f;
    for (int j = 0; j < len; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f;
    for (int j = 0; j < len; j++) {
        float v = d != 0.0f ? nearbyintf(x[j] / d) : 0.0f;
        q[j] = (int8_t)(v != v ? 0 : v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v);
    }
    return d;
}

static void kq_quantize_row(kdtype dt, bool simd, const float *x, int64_t cols, int8_t *q, int32_t *corr, float *d,
                            int16_t *gsum) {
    float (*quant)(const float *, int, int8_t *) = simd ? kq_quant_block_avx2 : kq_quant_block;
    if (!kdtype_is_kquant(dt)) { /* Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL, IQ4_XS: blocks of 32 */
        for (int64_t b = 0; b < cols / 32; b++) d[b] = quant(x + 32 * b, 32, q + 32 * b);
        for (int64_t l = 0; l < cols / 4; l++)
            corr[l] = -128 * (q[4 * l] + q[4 * l + 1] + q[4 * l + 2] + q[4 * l + 3]);
        return;
    }
    for (int64_t b = 0; b < cols / 256; b++) d[b] = quant(x + 256 * b, 256, q + 256 * b);
    const int g = kq_gsum_group(dt);
    for (int64_t k = 0; k < cols / g; k++) {
        int sum = 0;
        for (int j = 0; j < g; j++) sum += q[g * k + j];
        gsum[k] = (int16_t)sum; /* |sum| <= 32 · 127 */
    }
    if (dt == KDT_Q4_K_SB8) /* the codes in the weights' SB8 order (kernels.h); sums per sub-block kept */
        for (int64_t b = 0; b < cols / 256; b++) {
            int8_t nat[256], *o = q + 256 * b;
            memcpy(nat, o, sizeof nat);
            for (int k = 0; k < 4; k++)
                for (int h = 0; h < 2; h++)
                    for (int j = 0; j < 8; j++) memcpy(o + 64 * k + 32 * h + 4 * j, nat + 32 * j + 16 * h + 4 * k, 4);
        }
    if (dt == KDT_Q6_K_SB16) /* register t, byte 2g + o: element 16g + 2t + o (kernels.h); sums per 16 kept */
        for (int64_t b = 0; b < cols / 256; b++) {
            int8_t nat[256];
            memcpy(nat, q + 256 * b, sizeof nat);
            kq_sb16_permute(nat, q + 256 * b, true);
        }
}

/* ---- the scalar path (the canonical order, spelled out) ---- */

/* Q8_0, Q4_0 (whose codes are q - 8: the low nibbles of qs[0..15] are elements 0-15, the
 * high nibbles 16-31), Q5_0 (q - 16, bit e of the u32 qh above element e's nibble), IQ4_NL
 * (the level the nibble indexes), IQ4_XS (IQ4_NL per sub-block, scale d·(ls − 32)), and the
 * unsigned Q4_1 / Q5_1 (q as is; their min m adds the second fma of the canonical order). */
static float kq_dot_q8_0_scalar(kdtype dt, const uint8_t *w, const int8_t *xq, const float *xd, int64_t nb) {
    float L = 0.0f;
    const size_t bb = kdtype_block_bytes(dt);
    const bool min = kq_has_min(dt);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = dt == KDT_IQ4_XS ? w : w + bb * b; /* IQ4_XS: kq_iq4xs_sub below */
        uint16_t h, hm = 0;
        memcpy(&h, blk, 2);
        int wq[32];
        float dw = 0.0f;
        if (dt == KDT_Q8_0)
            for (int e = 0; e < 32; e++) wq[e] = (int8_t)blk[2 + e];
        else if (dt == KDT_IQ4_NL || dt == KDT_IQ4_XS) {
            static const int8_t level[16] = QREF_IQ4NL_LEVELS;
            const uint8_t *qs = blk + 2;
            if (dt == KDT_IQ4_XS) {
                int s;
                qs = kq_iq4xs_sub(w, b, &h, &s);
                dw = f16_to_f32(h) * (float)s;
            }
            for (int j = 0; j < 16; j++) {
                wq[j] = level[qs[j] & 15];
                wq[j + 16] = level[qs[j] >> 4];
            }
        } else {
            const bool five = dt == KDT_Q5_0 || dt == KDT_Q5_1;
            const int off = min ? 4 : 2, bias = min ? 0 : five ? 16 : 8;
            const uint8_t *qs = blk + off + (five ? 4 : 0);
            uint32_t qh = 0;
            if (five) memcpy(&qh, blk + off, 4);
            if (min) memcpy(&hm, blk + 2, 2);
            for (int j = 0; j < 16; j++) {
                wq[j] = ((qs[j] & 15) | (int)((qh >> j) & 1) << 4) - bias;
                wq[j + 16] = ((qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4) - bias;
            }
        }
        int32_t S = 0, X = 0;
        for (int e = 0; e < 32; e++) {
            S += wq[e] * xq[32 * b + e];
            X += xq[32 * b + e];
        }
        if (dt != KDT_IQ4_XS) dw = f16_to_f32(h);
        L = fmaf((float)S, dw * xd[b], L);
        if (min) L = fmaf((float)X, f16_to_f32(hm) * xd[b], L);
    }
    return L;
}

/* Q4_K and Q5_K (qh: the 32 bytes of 5th bits, at offset 16 of a 176-byte block). */
static float kq_dot_q4_k_scalar(kdtype dt, const uint8_t *w, const int8_t *xq, const float *xd, const int16_t *gs,
                                int64_t nb) {
    float L = 0.0f;
    const int five = dt == KDT_Q5_K, sb8 = dt == KDT_Q4_K_SB8; /* SB8: codes and x both in SB8 order */
    const size_t bb = kdtype_block_bytes(dt);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + bb * b, *qh = blk + 16, *qs = blk + (five ? 48 : 16);
        uint16_t h0, h1;
        memcpy(&h0, blk, 2);
        memcpy(&h1, blk + 2, 2);
        float d = f16_to_f32(h0), dmin = f16_to_f32(h1);
        const int8_t *xb = xq + 256 * b;
        int32_t I[8] = {0};
        for (int c = 0; c < 8; c++) {
            int sc, m;
            kq_q4k_scale_min(blk + 4, c, &sc, &m);
            const uint8_t *qb = qs + 32 * (c / 2);
            for (int j = 0; j < 8; j++) {
                int32_t p = 0;
                for (int e = 0; e < 4; e++) {
                    int l = 4 * j + e, q = c % 2 ? qb[l] >> 4 : qb[l] & 15;
                    if (five) q |= ((qh[l] >> c) & 1) << 4;
                    if (sb8) { /* element 32c + l at SB8 position 64k + 32h + 4c + e (kernels.h) */
                        int h = l / 16, k = l % 16 / 4, at = 64 * k + 32 * h + 4 * c + e % 4;
                        q = qs[32 * k + 4 * c + e % 4] >> 4 * h & 15;
                        p += q * xb[at];
                        continue;
                    }
                    p += q * xb[32 * c + l];
                }
                I[j] += sc * p;
            }
        }
        int32_t Isum = 0, M = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            kq_q4k_scale_min(blk + 4, j, &sc, &m);
            Isum += I[j];
            M += m * gs[8 * b + j];
        }
        L = fmaf((float)Isum, d * xd[b], L);
        L = fmaf((float)M, -(dmin * xd[b]), L);
    }
    return L;
}

/* Q6_K in ggml's layout: element 128h + 32k + l (h, k < 4, l < 32) is the nibble k/2 of
 * ql[64h + 32(k%2) + l] with bits 2k, 2k+1 of qh[32h + l] above it. */
static float kq_dot_q6_k_scalar(bool sb16, const uint8_t *w, const int8_t *xq, const float *xd, const int16_t *gs,
                                int64_t nb) {
    float L = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + 210 * b, *ql = blk, *qh = blk + 128;
        const int8_t *sc = (const int8_t *)(blk + 192);
        uint16_t h;
        memcpy(&h, blk + 208, 2);
        float d = f16_to_f32(h);
        const int8_t *xb = xq + 256 * b;
        int32_t T[8] = {0};
        for (int c = 0; c < 8; c++) {
            const int hh = c / 4, k = c % 4;
            for (int j = 0; j < 8; j++) {
                int32_t p = 0;
                for (int e = 0; e < 4; e++) {
                    int l = 4 * j + e;
                    if (sb16) { /* element 32c + l = 16g + 2t + o at register t, byte 2g + o (kernels.h) */
                        int E = 32 * c + l, t = E % 16 / 2, at = 2 * (E / 16) + E % 2;
                        int lo = (ql[32 * (t / 2) + at] >> (4 * (t % 2))) & 15, hi = (qh[32 * (t / 4) + at] >> (2 * (t % 4))) & 3;
                        p += (lo | hi << 4) * xb[32 * t + at];
                        continue;
                    }
                    int lo = (ql[64 * hh + 32 * (k % 2) + l] >> (4 * (k / 2))) & 15;
                    int hi = (qh[32 * hh + l] >> (2 * k)) & 3;
                    p += (lo | hi << 4) * xb[32 * c + l];
                }
                T[j] += sc[2 * c + j / 4] * p;
            }
        }
        int32_t Tsum = 0;
        for (int j = 0; j < 8; j++)
            Tsum += T[j] + -32 * sc[2 * j] * gs[16 * b + 2 * j] + -32 * sc[2 * j + 1] * gs[16 * b + 2 * j + 1];
        L = fmaf((float)Tsum, d * xd[b], L);
    }
    return L;
}

/* Q3_K: as Q6_K with the 3-bit code q (0..7) of chunk c = 4h + k at qs[32h + l] bits 2k, 2k + 1
 * and hmask[l] bit c, the group scale sc_g − 32 and the offset 4 (qmatmul.h). */
static float kq_dot_q3_k_scalar(const uint8_t *w, const int8_t *xq, const float *xd, const int16_t *gs, int64_t nb) {
    float L = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + 110 * b;
        uint64_t lo, hi;
        kq_q3k_scales16(blk, &lo, &hi);
        int sc[16];
        for (int g = 0; g < 16; g++) sc[g] = (int)((g < 8 ? lo >> 8 * g : hi >> 8 * (g - 8)) & 0xFF) - 32;
        const int8_t *xb = xq + 256 * b;
        int32_t T = 0;
        for (int c = 0; c < 8; c++) {
            const uint8_t *qs = kq_q3k_qs(blk, c);
            for (int j = 0; j < 8; j++) {
                int32_t p = 0;
                for (int e = 0; e < 4; e++) {
                    const int l = 4 * j + e, q = (qs[l] >> 2 * (c % 4) & 3) | (blk[l] >> c & 1) << 2;
                    p += q * xb[32 * c + l];
                }
                T += sc[2 * c + j / 4] * p;
            }
        }
        for (int g = 0; g < 16; g++) T += -4 * sc[g] * gs[16 * b + g];
        L = fmaf((float)T, f16_to_f32(kq_q3k_d(blk)) * xd[b], L);
    }
    return L;
}

/* Q2_K: chunk c's 2-bit codes as Q3_K's low bits (qs at byte 16), group g's scale sc_g =
 * scales[g] & 15 and min m_g = scales[g] >> 4; Q4_K's two f32 steps (qmatmul.h). */
static float kq_dot_q2_k_scalar(const uint8_t *w, const int8_t *xq, const float *xd, const int16_t *gs, int64_t nb) {
    float L = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + 84 * b, *sc = blk;
        uint16_t h0, h1;
        memcpy(&h0, blk + 80, 2);
        memcpy(&h1, blk + 82, 2);
        const int8_t *xb = xq + 256 * b;
        int32_t T = 0, M = 0;
        for (int c = 0; c < 8; c++) {
            const uint8_t *qs = blk + 16 + 32 * (c / 4);
            for (int j = 0; j < 8; j++) {
                int32_t p = 0;
                for (int e = 0; e < 4; e++) p += (qs[4 * j + e] >> 2 * (c % 4) & 3) * xb[32 * c + 4 * j + e];
                T += (sc[2 * c + j / 4] & 15) * p;
            }
        }
        for (int g = 0; g < 16; g++) M += (sc[g] >> 4) * gs[16 * b + g];
        L = fmaf((float)T, f16_to_f32(h0) * xd[b], L);
        L = fmaf((float)M, -(f16_to_f32(h1) * xd[b]), L);
    }
    return L;
}

void kq_rows_scalar(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                    int64_t ldy, float beta) {
    int64_t cols = x->cols;
    for (int64_t r = r0; r < r1; r++)
        for (int i = 0; i < x->n; i++) {
            const int8_t *xq = x->q + (int64_t)i * cols;
            float s = !kdtype_is_kquant(dt)
                          ? kq_dot_q8_0_scalar(dt, w + r * rb, xq, x->d + (int64_t)i * (cols / 32), cols / 32)
                      : dt == KDT_Q2_K ? kq_dot_q2_k_scalar(w + r * rb, xq, x->d + (int64_t)i * (cols / 256),
                                                            x->gsum + (int64_t)i * (cols / 16), cols / 256)
                      : dt == KDT_Q3_K ? kq_dot_q3_k_scalar(w + r * rb, xq, x->d + (int64_t)i * (cols / 256),
                                                            x->gsum + (int64_t)i * (cols / 16), cols / 256)
                      : dt == KDT_Q6_K || dt == KDT_Q6_K_SB16
                          ? kq_dot_q6_k_scalar(dt == KDT_Q6_K_SB16, w + r * rb, xq, x->d + (int64_t)i * (cols / 256),
                                                            x->gsum + (int64_t)i * (cols / 16), cols / 256)
                                       : kq_dot_q4_k_scalar(dt, w + r * rb, xq, x->d + (int64_t)i * (cols / 256),
                                                            x->gsum + (int64_t)i * (cols / 32), cols / 256);
            float *yp = y + i * ldy + r;
            *yp = beta != 0.0f ? *yp + s : s;
        }
}

static float *kq_thread_ystage(size_t bytes);

/* y rows j < n, columns [0, m) (+)= the stage's (rows KQ_STAGE_ROWS floats apart); whole vectors
 * (a full chunk is one on AVX-512), the scalar loop of GCC's -O2 took 4% of a 32-LoRA step. */
#define KQ_STAGE_ROWS 16
static void kq_stage_add(const float *st, int m, int n, float *y, int64_t ldy, float beta) {
    for (int j = 0; j < n; j++) {
        float *yp = y + j * ldy;
        const float *sp = st + j * KQ_STAGE_ROWS;
        for (int k = 0; k < m; k += KV_W) {
            const int w = m - k < KV_W ? m - k : KV_W;
            kv_f32 v = w == KV_W ? kv_load(sp + k) : kv_load_part(sp + k, w);
            if (beta != 0.0f) v = kv_add(w == KV_W ? kv_load(yp + k) : kv_load_part(yp + k, w), v);
            if (w == KV_W) kv_store(yp + k, v);
            else kv_store_part(yp + k, v, w);
        }
    }
}

/* Weight rows [r0, r1) in chunks of KQ_STAGE_ROWS: each chunk's strips store into a per-thread
 * stage with rows KQ_STAGE_ROWS floats apart (one 64-byte line per x row), which is then added
 * to y row by row. The strips' own stores go 4 floats to a row, 16 rows of y at a time; straight
 * into y those are 16 partial lines ldy·4 bytes apart — on a 2048- or 8192-column y one L1 set
 * for all 16 — and took 13% of a 256-token prefill on Zen 4 (perf). Same values, same bits
 * (the stage holds what the strips computed; y (+)= it as kq_store_lanes would). Direct calls:
 * from a conditional choice of function (or a constant table of them) GCC 12.2 at -O2
 * -march=sapphirerapids called the 2-row strip for a last single row (a cmovne testing flags
 * that an inc in between had set; tests/unit/test_kernels_quant.c caught it). */
void kq_rows_strips(kq_strip_fn f4, kq_strip_fn f2, kq_strip_fn f1, const uint8_t *w, size_t rb, int64_t r0, int64_t r1,
                    const kq_x *x, float *y, int64_t ldy, float beta, unsigned long *counter) {
    unsigned long strips = 0;
    float *st = kq_thread_ystage((size_t)x->n * KQ_STAGE_ROWS * sizeof(float));
    for (int64_t c0 = r0; c0 < r1; c0 += KQ_STAGE_ROWS) {
        const int64_t c1 = r1 - c0 < KQ_STAGE_ROWS ? r1 : c0 + KQ_STAGE_ROWS;
        /* without a stage (out of memory): the strips store into y themselves */
#define KQ_OUT(r) (st ? st + ((r) - c0) : y + (r))
        const int64_t ldt = st ? KQ_STAGE_ROWS : ldy;
        const float bt = st ? 0.0f : beta;
        int64_t r = c0;
        for (; c1 - r >= 4; r += 4, strips++) f4(w + r * rb, rb, x, KQ_OUT(r), ldt, bt);
        if (c1 - r >= 2) {
            f2(w + r * rb, rb, x, KQ_OUT(r), ldt, bt);
            r += 2;
            strips++;
        }
        if (c1 - r == 1) {
            f1(w + r * rb, rb, x, KQ_OUT(r), ldt, bt);
            strips++;
        }
#undef KQ_OUT
        if (!st) continue;
        kq_stage_add(st, (int)(c1 - c0), x->n, y + c0, ldy, beta);
    }
    __atomic_fetch_add(counter, strips, __ATOMIC_RELAXED);
}

/* Two per-thread buffers: the x16 tiles' unpacked strips (kq_thread_scratch) and the output
 * stage of kq_rows_strips; grown on demand, freed at the thread's exit through one key each. */
typedef struct {
    void *p; /* also a root for leak checkers while the thread lives */
    size_t cap;
} kq_tbuf;
static pthread_key_t kq_scratch_key[2];
static pthread_once_t kq_scratch_once = PTHREAD_ONCE_INIT;
static _Thread_local kq_tbuf kq_tbufs[2];

static void kq_scratch_key_make(void) {
    (void)pthread_key_create(&kq_scratch_key[0], free);
    (void)pthread_key_create(&kq_scratch_key[1], free);
}

static void *kq_tbuf_get(int which, size_t bytes) {
    kq_tbuf *b = &kq_tbufs[which];
    if (bytes <= b->cap) return b->p;
    pthread_once(&kq_scratch_once, kq_scratch_key_make);
    size_t cap = (bytes + 4095) / 4096 * 4096;
    void *p = NULL;
    if (posix_memalign(&p, 64, cap)) return NULL;
    free(b->p);
    b->p = p;
    b->cap = cap;
    (void)pthread_setspecific(kq_scratch_key[which], p); /* freed at the thread's exit */
    return p;
}

void *kq_thread_scratch(size_t bytes) { return kq_tbuf_get(0, bytes); }
static float *kq_thread_ystage(size_t bytes) { return kq_tbuf_get(1, bytes); }

void kq_store_lanes(int R, int rows, const float *a, float *y, int64_t ldy, float beta) {
    for (int r = 0; r < R; r++)
        for (int j = 0; j < rows; j++) {
            float *yp = y + j * ldy + r;
            *yp = beta != 0.0f ? *yp + a[r * 16 + j] : a[r * 16 + j];
        }
}

/* ---- the pool work (kernels/cpu/mm_job.h; matmul_group.c dispatches it) ---- */

/* Row tasks per pool thread. The group runs them as kpool_parallel_shares (matmul_group.c), so
 * a thread's tasks continue one stream and the count only sets how finely the last rows are
 * shared out: 4, 8, 16 and 32 decode the 110M Q8_0 within 2% of each other (16 best by a hair);
 * with the plain round-robin dispatch 16 was 20% slower than 4. */
#define KQ_TASKS_PER_THREAD 16
#define KQ_MIN_BLOCK 16

/* Where this thread's last task's rows ended: a task that starts there continues the stream
 * the tiles have been prefetching ahead (kpool_parallel_shares runs a thread's tasks in order). */
static _Thread_local const uint8_t *kq_stream_end;

static void kq_task(void *vc, int task, int thread) {
    (void)thread;
    const kcpu_kq_ctx *c = vc;
    int64_t r0 = (int64_t)task * c->block;
    int64_t r1 = r0 + c->block < c->rows ? r0 + c->block : c->rows;
    /* the tiles prefetch KQ_PF ahead: a task that starts a new stream asks for its first KQ_PF
     * bytes here (a small matrix's task is only a few times that long) */
    const uint8_t *p0 = c->w + r0 * c->rb;
    size_t len = (size_t)(r1 - r0) * c->rb;
    if (p0 != kq_stream_end)
        for (size_t o = 0; o < len && o < KQ_PF; o += 64) __builtin_prefetch(p0 + o, 0, 2);
    kq_stream_end = p0 + len;
    c->fn(c->dt, c->w, c->rb, r0, r1, c->x, c->y, c->rows, c->beta);
}

typedef struct {
    kdtype dt;
    bool simd; /* the AVX2 block quantizer (same bits as kq_quant_block) */
    bool x16;  /* also the x16 layout (tasks for the padded row count) */
    const float *x;
    kq_x *qx;
} kq_qctx;

static void kq_quant_row_task(const kq_qctx *c, int i) {
    kq_x *q = c->qx;
    int64_t cols = q->cols, be = kq_act_block(c->dt);
    kq_quantize_row(c->dt, c->simd, c->x + i * cols, cols, q->q + i * cols, q->corr ? q->corr + i * (cols / 4) : NULL,
                    q->d + i * (cols / be), q->gsum ? q->gsum + i * (cols / kq_gsum_group(c->dt)) : NULL);
}

/* Task i: row i, or with the x16 layout rows 16i .. 16i + 15 (one task owns a block's layout
 * bytes: rows of a block share cache lines there). */
static void kq_quant_task(void *vc, int i, int thread) {
    (void)thread;
    const kq_qctx *c = vc;
    if (!c->x16) {
        kq_quant_row_task(c, i);
        return;
    }
    for (int r = 16 * i; r < 16 * i + 16; r++) {
        if (r < c->qx->n) kq_quant_row_task(c, r);
        kq_x16_row(c->qx, r, c->dt);
    }
}

#define KQ_A64(b) (((b) + 63) / 64 * 64)

/* The parts of one layout's kq_x, in carving order: codes, scales, code sums or VNNI corrections
 * (one int32 per 4 codes), the AMX layout when wanted. */
static void kq_x_parts(kdtype dt, int n, int64_t cols, size_t part[4]) {
    const size_t nq = (size_t)n * (size_t)cols;
    part[0] = KQ_A64(nq);
    part[1] = KQ_A64((size_t)n * (size_t)(cols / kq_act_block(dt)) * sizeof(float));
    part[2] = KQ_A64(kdtype_is_kquant(dt) ? (size_t)n * (size_t)(cols / kq_gsum_group(dt)) * sizeof(int16_t) : nq);
    part[3] = kq_x16_wanted(n) ? KQ_A64(kq_x16_bytes(dt, n, cols)) : 0;
}

size_t kq_x_bytes(kdtype dt, int n, int64_t cols) {
    size_t part[4];
    kq_x_parts(dt, n, cols, part);
    return part[0] + part[1] + part[2] + part[3];
}

void kq_x_carve(kdtype dt, int n, int64_t cols, uint8_t *p, kq_x *qx) {
    size_t part[4];
    kq_x_parts(dt, n, cols, part);
    *qx = (kq_x){.n = n, .cols = cols};
    qx->q = (int8_t *)p;
    qx->d = (float *)(p + part[0]);
    if (kdtype_is_kquant(dt)) qx->gsum = (int16_t *)(p + part[0] + part[1]);
    else qx->corr = (int32_t *)(p + part[0] + part[1]);
    if (part[3]) kq_x16_carve(dt, n, cols, p + part[0] + part[1] + part[2], qx);
}

void kq_x_quantize(kcpu_backend *cb, kdtype dt, const float *x, kq_x *qx) {
    kq_qctx qc = {.dt = dt, .simd = kq_resolve() != KQ_SCALAR, .x16 = qx->x16v != NULL, .x = x, .qx = qx};
    int tasks = qc.x16 ? (qx->n + 15) / 16 : qx->n;
    kcpu__parallel(cb, tasks, (double)qx->n * (double)qx->cols * 4.0, kq_quant_task, &qc);
}

int kcpu__qmm_prepare(kcpu_backend *cb, int n, const kmat *w, float *y, float beta, kcpu_mm_job *job) {
    if (!w || n < 0 || (beta != 0.0f && beta != 1.0f)) return PEFTD_EINVAL;
    if (!kdtype_is_quant(w->dtype) || w->rows <= 0 || w->cols <= 0) return PEFTD_EINVAL;
    size_t rb = kdtype_row_bytes(w->dtype, w->cols);
    if (rb == 0) return PEFTD_EINVAL; /* cols not a multiple of the block */
    *job = (kcpu_mm_job){.quant = true};
    if (n == 0) return 0;
    if (!y || !w->data) return PEFTD_EINVAL;
    kq_path path = kq_resolve();
    /* SB8 / SB16 (the AVX2 path's reorderings) have AVX2 tiles and the scalar reference only */
    if ((w->dtype == KDT_Q4_K_SB8 || w->dtype == KDT_Q6_K_SB16) && path != KQ_SCALAR) path = kq_path_available(KQ_AVX2) ? KQ_AVX2 : KQ_SCALAR;
    /* Q5_0, Q4_1, Q5_1, IQ4_NL, IQ4_XS, Q3_K, Q2_K have no AMX tiles (never run on an AMX machine here): their VNNI tiles,
     * same bits */
    if ((w->dtype == KDT_Q5_0 || w->dtype == KDT_IQ4_NL || w->dtype == KDT_IQ4_XS || w->dtype == KDT_Q3_K || w->dtype == KDT_Q2_K ||
         kq_has_min(w->dtype)) &&
        path == KQ_AMX)
        path = KQ_VNNI;
    job->kq = (kcpu_kq_ctx){.fn = path == KQ_AMX    ? kq_rows_amx
                                  : path == KQ_VNNI ? kq_rows_vnni
                                  : path == KQ_AVX2 ? kq_rows_avx2
                                                    : kq_rows_scalar,
                            .dt = w->dtype, .w = w->data, .rb = rb, .rows = w->rows, .y = y, .beta = beta};
    int nt = cb->n_threads;
    int64_t block = w->rows;
    if (nt > 1) {
        int64_t want = (w->rows + (int64_t)nt * KQ_TASKS_PER_THREAD - 1) / ((int64_t)nt * KQ_TASKS_PER_THREAD);
        if (want < KQ_MIN_BLOCK) want = KQ_MIN_BLOCK;
        block = path == KQ_AMX && kq_x16_wanted(n) ? (want + 15) / 16 * 16 : (want + 3) / 4 * 4;
    }
    job->kq.block = block;
    job->task = kq_task;
    job->n_tasks = (int)((w->rows + block - 1) / block);
    job->work = (double)n * (double)w->rows * (double)w->cols;
    return 0;
}
