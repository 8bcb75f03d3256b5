/* kernels/cpu/qmatmul.h — what the quantized matmul's files share (kernels/cpu/qmatmul.c:
 * driver, activation quantization, scalar path; qdot_avx512.c: AVX-512 VNNI (the 32-element types),
 * qdot_avx512_k.c: AVX-512 K-quants; qdot_avx2.c: AVX2). Private to kernels/cpu/.
 *
 * THE CANONICAL ORDER (what makes every path bit-identical and batch-invariant).
 * Q8_0, Q4_0: ONE f32 lane L per output: per block b (32 elements) the exact int32 sum
 *   S_b = Σ_{e<32} wq[e]·xq[32b + e] (|S_b| <= 32·128·127 < 2^24: (float)S_b is exact), then
 *   L = fma((float)S_b, dw_b·dx_b, L) for b = 0, 1, ... in order (dw_b·dx_b one f32 product);
 *   y = L. Only S_b is fixed, so the AVX2 / AVX-512 tiles (per-4 lane partials reduced across
 *   rows by transposing adds, then the fma chain with weight rows in lanes) and AMX's per-block
 *   tile products (qdot_amx.c) give the same bits.
 *   Q4_0 as Q8_0 with wq = nibble − 8 (element order: low nibbles of qs[0..15], then high);
 *   Q5_0 as Q4_0 with wq = (nibble | bit e of qh << 4) − 16 (no AMX tiles: its VNNI ones).
 *   IQ4_NL as Q4_0 with wq = level[nibble] (quant_ref.h's 16 int8 levels, |wq| <= 127; no AMX
 *   tiles: its VNNI ones).
 *   IQ4_XS per sub-block b of 32 as IQ4_NL, with dw_b = d·(ls_b − 32) (exact: 11 × 6 bits) for
 *   the f16 scale: L = fma((float)S_b, dw_b·dx_b, L). Activations per 32 as these types (finer
 *   than llama.cpp's Q8_K per 256 for it). No AMX tiles.
 *   Q4_1, Q5_1 (y = d·q + m, q unsigned: the nibble, or nibble | bit e of qh << 4): per block
 *   S_b = Σ q·xq and X_b = Σ xq (exact), then L = fma((float)S_b, dw_b·dx_b, L), then
 *   L = fma((float)X_b, mw_b·dx_b, L); y = L. X_b is −(Σ of the block's VNNI corrections) / 128
 *   (kq_x.corr, x16p), so every path reads it from what it already has. No AMX tiles.
 * K-quants (super-blocks of 256, x codes in natural order). Within a super-block everything is
 *   an exact int32 sum, so only the integer totals below are fixed.
 *   Chunk c = elements 32c .. 32c+31; lane j of chunk c = its elements 4j .. 4j+3;
 *   P(c, j) = Σ_{e<4} q[32c+4j+e]·xq[32c+4j+e] with q the unsigned code.
 *   Q4_K: q = the nibble (chunk c = sub-block c: qs byte 32·(c/2) + l, nibble c%2);
 *         ONE f32 lane L per output: per super-block the exact totals I = Σ_c sc_c·Σ_j P(c, j)
 *         and M = Σ_j m_j·X_j (X_j = Σ xq over sub-block j), then
 *         L = fma((float)I, d·dx, L), then L = fma((float)M, −(dmin·dx), L); y = L. Only the
 *         totals matter, so the AVX2/AVX-512 loops (vpmaddubsw, vpmaddwd / vpdpwssd by the
 *         16-bit scale, 8 int32 lanes added at the end) and AMX's per-chunk tile products
 *         (qdot_amx.c) give the same bits.
 *   Q5_K: as Q4_K with q = nibble | (bit c of qh[l]) << 4 (0..31).
 *   Q6_K: q = the 6-bit code (0..63) of ggml's layout; scale group g = 2c + j/4 (16 elements);
 *         one f32 lane: per super-block the exact total T = Σ_c Σ_j sc_g·P(c, j) +
 *         Σ_g (−32·sc_g)·G_g, with G_g = Σ xq over group g (the q − 32 offset), then
 *         L = fma((float)T, d·dx, L); y = L.
 *   Q3_K: as Q6_K with q = the 3-bit code (0..7: low 2 bits (qs[l] >> 2·(c % 4)) & 3 of qs byte
 *         32·(c/4) + l, high bit (hmask[l] >> c) & 1), its group scale sc_g − 32 (−32..31) in sc_g's
 *         place and the offset 4: T = Σ_c Σ_j (sc_g − 32)·P(c, j) + Σ_g (−4·(sc_g − 32))·G_g,
 *         L = fma((float)T, d·dx, L). Q6_K's tiles with another code and scale unpacking; an
 *         activation layout shared with Q6_K (Q3_K_M files mix the two). No AMX tiles.
 *   Q2_K: q = Q3_K's low 2 bits (0..3; qs at byte 16), group g's 4-bit scale sc_g and min m_g:
 *         T = Σ_c Σ_j sc_g·P(c, j) and M = Σ_g m_g·G_g exact, then L = fma((float)T, d·dx, L),
 *         L = fma((float)M, −(dmin·dx), L) (Q4_K's two steps on Q6_K's groups). Q6_K's tiles and
 *         activation layout; no AMX tiles.
 *   |I| < 2^26, |T| < 2^28 (Q3_K's < 2^24): every int32 exact ((float)I rounds to nearest past 2^24, in every path).
 * x is quantized once per call by the row quantizer in qmatmul.c (shared by every path): Q8_0,
 * Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL and IQ4_XS per 32 elements (kq_act_block), K-quants per 256
 * (d = max|x|/127, q = round-half-even(x/d)) —
 * for the K-quants this is ggml's Q8_K granularity (llama.cpp quantizes activations to Q8_K,
 * one f32 scale per 256, for its K-quant dot products; its scale is signed max/−127 where ours
 * is max|x|/127 with round-half-even: the same 8-bit, per-256 error bound), with the code sums
 * per 32 (Q4_K, Q5_K) or per 16 (Q6_K, Q3_K, Q2_K) that Q8_K's bsums hold.
 */
#ifndef PEFTD_KCPU_QMATMUL_H
#define PEFTD_KCPU_QMATMUL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "kernels/kernels.h"

/* Q4_1 and Q5_1: unsigned codes and a per-block min (the second fma of the canonical order). */
static inline bool kq_has_min(kdtype dt) { return dt == KDT_Q4_1 || dt == KDT_Q5_1; }
/* The 32-element types' row in the SIMD paths' tile tables: Q8_0 0, Q4_0 1, Q5_0 2, Q4_1 3, Q5_1 4,
 * IQ4_NL 5, IQ4_XS 6 (multiplied per 32 of its super-blocks: the canonical order above). */
#define Q32_TYPES 7
/* The same list for the SIMD files' definitions and tables: X(tag, dtype, a, b) per type, in
 * q32_index order (a, b: the caller's, e.g. a tile's row and x-row counts). */
#define Q32_EACH(X, a, b)                                                                                     \
    X(q8, KDT_Q8_0, a, b) X(q40, KDT_Q4_0, a, b) X(q50, KDT_Q5_0, a, b) X(q41, KDT_Q4_1, a, b)                \
    X(q51, KDT_Q5_1, a, b) X(qnl, KDT_IQ4_NL, a, b) X(qxs, KDT_IQ4_XS, a, b)
static inline int q32_index(kdtype dt) {
    return dt == KDT_Q4_0 ? 1 : dt == KDT_Q5_0 ? 2 : dt == KDT_Q4_1 ? 3 : dt == KDT_Q5_1 ? 4 : dt == KDT_IQ4_NL ? 5
         : dt == KDT_IQ4_XS ? 6 : 0;
}
/* Q3_K (quant_ref.h; 110 bytes: hmask[32], qs[64], 12 scale bytes, f16 d): the 16 group scales
 * sc (0..63) of the super-block at blk, byte g of (*lo | *hi << 64) = sc_g, by shifts and masks;
 * its f16 d; and chunk c's (elements 32c .. 32c + 31) code bytes: low 2 bits
 * (qs[l] >> 2·(c % 4)) & 3 and high bit (hmask[l] >> c) & 1 of byte l, q = low | high << 2. */
static inline void kq_q3k_scales16(const uint8_t *blk, uint64_t *lo, uint64_t *hi) {
    uint64_t L = 0, H = 0;
    for (int i = 0; i < 8; i++) L |= (uint64_t)blk[96 + i] << 8 * i;
    for (int i = 0; i < 4; i++) H |= (uint64_t)blk[104 + i] << 8 * i;
    const uint64_t m2 = 0x03030303u, m4 = 0x0F0F0F0F0F0F0F0Full;
    *lo = (L & m4) | ((H & m2) | ((H >> 2) & m2) << 32) << 4;
    *hi = ((L >> 4) & m4) | (((H >> 4) & m2) | ((H >> 6) & m2) << 32) << 4;
}
static inline uint16_t kq_q3k_d(const uint8_t *blk) { return (uint16_t)(blk[108] | blk[109] << 8); }
static inline const uint8_t *kq_q3k_qs(const uint8_t *blk, int c) { return blk + 32 + 32 * (c / 4); }
/* Elements per activation scale: 256 for the K-quants (Q3_K included), 32 for the rest (IQ4_XS
 * included). */
static inline int64_t kq_act_block(kdtype dt) { return kdtype_is_kquant(dt) ? 256 : 32; }

/* One super-block's 256 codes between natural order and Q6_K_SB16's (kernels.h: register t,
 * byte 2g + o holds element 16g + 2t + o): to_sb16 permutes src into SB16 order, otherwise back.
 * src and dst must not overlap. */
static inline void kq_sb16_permute(const int8_t *src, int8_t *dst, bool to_sb16) {
    for (int t = 0; t < 8; t++)
        for (int g = 0; g < 16; g++) {
            const int sb = 32 * t + 2 * g, nat = 16 * g + 2 * t;
            memcpy(dst + (to_sb16 ? sb : nat), src + (to_sb16 ? nat : sb), 2);
        }
}
/* The 8 six-bit sub-block scales ls (0..63) of the IQ4_XS super-block at blk, byte s = ls_s: the
 * low nibbles (u32 at blk + 4, nibble s) and high 2 bits (u16 at blk + 2, bits 2s) spread to
 * bytes by shifts and masks (the SIMD tiles take a row's 8 at once per super-block). */
static inline uint64_t kq_iq4xs_scales8(const uint8_t *blk) {
    uint64_t lo = (uint64_t)blk[4] | (uint64_t)blk[5] << 8 | (uint64_t)blk[6] << 16 | (uint64_t)blk[7] << 24;
    uint64_t hi = (uint64_t)blk[2] | (uint64_t)blk[3] << 8;
    lo = (lo | lo << 16) & 0x0000FFFF0000FFFFull;
    lo = (lo | lo << 8) & 0x00FF00FF00FF00FFull;
    lo = (lo | lo << 4) & 0x0F0F0F0F0F0F0F0Full;
    hi = (hi | hi << 24) & 0x000000FF000000FFull;
    hi = (hi | hi << 12) & 0x000F000F000F000Full;
    hi = (hi | hi << 6) & 0x0303030303030303ull;
    return lo | hi << 4;
}
/* IQ4_XS sub-block b (of 32 elements) of a row: its 16 code bytes, *d its super-block's f16 d and
 * *s its scale ls − 32 (−32..31; the weight scale is d·s, exact in f32). */
static inline const uint8_t *kq_iq4xs_sub(const uint8_t *row, int64_t b, uint16_t *d, int *s) {
    const uint8_t *blk = row + 136 * (b / 8);
    const int k = (int)(b % 8);
    *d = (uint16_t)(blk[0] | blk[1] << 8);
    *s = ((blk[4 + k / 2] >> 4 * (k % 2) & 15) | (((blk[2] | blk[3] << 8) >> 2 * k & 3) << 4)) - 32;
    return blk + 8 + 16 * k;
}

/* The quantized activations of one call: n rows of cols. */
typedef struct {
    int n;
    int64_t cols;
    int8_t *q;      /* [n][cols], natural order */
    int32_t *corr;  /* the 32-element types: [n][cols/4] = -128 · Σ of each 4 codes (VNNI's unsigned offset) */
    float *d;       /* [n][cols / block] */
    int16_t *gsum;  /* K-quants: Σ codes of each group, [n][cols/32] (Q4_K, Q5_K) or [n][cols/16] (Q6_K, Q3_K, Q2_K) */
    /* the same codes with x rows in lanes (kernels/cpu/qx16.c), or NULL: built when the path in
     * use reads it (kq_x16_wanted in qmatmul.c: the SIMD paths' batches of at least
     * KQ_X16_MIN_N rows; Q6_K_SB16's codes there in natural order); 64-byte aligned */
    int8_t *x16v;
    int32_t *x16p;
    float *x16d;
} kq_x;

/* y[i·ldy + r] (+)= dot(w row r, x row i) for weight rows [r0, r1) and every x row, in the
 * canonical order. w: the matrix's first row, rows rb bytes apart. pf: prefetch hint. */
typedef void (*kq_rows_fn)(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x,
                           float *y, int64_t ldy, float beta);

void kq_rows_scalar(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                    int64_t ldy, float beta);
void kq_rows_avx2(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                  int64_t ldy, float beta);
/* The activation quantizer's block (qmatmul.c: d = max|x|/127, q = round-half-even(x/d), 0
 * when d == 0) with AVX2, bit-identical (IEEE division and rounding); len a multiple of 8.
 * Used by every path but the scalar one, which keeps the plain C reference. */
float kq_quant_block_avx2(const float *x, int len, int8_t *q);
void kq_rows_vnni(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                  int64_t ldy, float beta);
/* The AMX path (qdot_amx.c): batches (every quantized type) with x->x16v on tile registers,
 * the rest forwarded to kq_rows_vnni. kq_amx_usable: the CPU has AMX-INT8 and the kernel granted the
 * tile state (asked once per process; thread-safe). */
#define KQ_AMX_MIN_N 16
bool kq_amx_usable(void);
extern unsigned long kq_amx_groups; /* groups of 16 weight rows the tiles computed (relaxed atomic; tests) */
/* A strip of weight rows (from w, rb bytes apart) × every x row, into y + row (ldy apart). */
typedef void (*kq_strip_fn)(const uint8_t *w, size_t rb, const kq_x *x, float *y, int64_t ldy, float beta);
/* Weight rows [r0, r1) in strips of 4, then 2, then 1 (f4, f2, f1); adds the strips to *counter
 * (relaxed atomic). */
void kq_rows_strips(kq_strip_fn f4, kq_strip_fn f2, kq_strip_fn f1, const uint8_t *w, size_t rb, int64_t r0, int64_t r1,
                    const kq_x *x, float *y, int64_t ldy, float beta, unsigned long *counter);
/* A buffer of at least `bytes`, 64-byte aligned, owned by the calling thread: the x16 tiles'
 * unpacked strip of weight rows. Grown on demand, kept for the thread's life (freed when it
 * exits) and valid until the thread's next call; NULL when out of memory (the callers then take
 * their other tiles, which need none). */
void *kq_thread_scratch(size_t bytes);
/* y[j·ldy + r] (+)= a[r·16 + j] for r < R, j < rows: the x16 tiles' outputs (x rows in lanes). */
void kq_store_lanes(int R, int rows, const float *a, float *y, int64_t ldy, float beta);

/* The batch tiles' x vector of a group is used by each of the strip's weight rows; left to itself
 * GCC 12 folds its load into every vpdpbusd / vpmaddubsw that uses it (R loads of 64 bytes where
 * one would do; on Zen 4, whose loads move 64 bytes a cycle, that bound the Q4_K VNNI tile: +8-10%
 * with the vector kept in a register). This empty asm makes the value a register's. */
#define KQ_IN_REG(v) __asm__("" : "+v"(v))
/* The AVX2 and VNNI paths read the x16 layout for batches of at least this many rows (every
 * quantized type); strips of weight rows their x16 tiles computed (relaxed atomics; tests). */
#define KQ_X16_MIN_N 8
extern unsigned long kq_avx2_x16_strips, kq_vnni_x16_strips;
/* The x16 layout (qx16.c): its bytes for n rows, its carving from 64-byte aligned p, and row i's
 * part (i < the rows rounded up to 16; rows past x->n are written as zeros), after row i is
 * quantized. */
size_t kq_x16_bytes(kdtype dt, int n, int64_t cols);
void kq_x16_carve(kdtype dt, int n, int64_t cols, uint8_t *p, kq_x *qx);
void kq_x16_row(kq_x *qx, int i, kdtype dt);
void kq_rows_amx(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                 int64_t ldy, float beta);
/* K-quant batches (Q4_K, Q5_K, Q6_K, Q3_K, Q2_K, Q4_K_SB8) with x in the x16 layout, strips counted in
 * kq_avx2_x16_strips (qdot_avx2_x16k.c); false, doing nothing, without x->x16v or when the
 * thread's scratch cannot hold the strip (kq_thread_scratch). */
bool kq_rows_avx2_x16k(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                       int64_t ldy, float beta);
/* The same on the VNNI path, Q4_K / Q5_K / Q6_K / Q3_K / Q2_K (qdot_avx512_x16k.c; kq_vnni_x16_strips). */
bool kq_rows_vnni_x16k(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                       int64_t ldy, float beta);
/* The K-quants of the VNNI path (qdot_avx512_k.c; kq_rows_vnni forwards them). */
void kq_rows_avx512_k(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
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

/* Software prefetch distance in the weight stream, bytes (matmul.c measured 16-32 KiB best:
 * the hardware prefetcher alone does not keep several row streams busy). The tiles prefetch
 * this far ahead while the first x group of a row tile streams the rows; the driver
 * prefetches each task's first KQ_PF bytes when the task starts. */
#define KQ_PF 16384

/* The K-quants' group size of kq_x.gsum. */
static inline int kq_gsum_group(kdtype dt) {
    return dt == KDT_Q6_K || dt == KDT_Q6_K_SB16 || dt == KDT_Q3_K || dt == KDT_Q2_K ? 16 : 32;
}
/* The x16 layout's code-sum pairs per x row and super-block (kq_x.x16p): 256 / group / 2. */
static inline int kq_x16_pairs(kdtype dt) { return 128 / kq_gsum_group(dt); }

/* Code paths, for tests and benchmarks: KQ_AUTO picks the best the CPU has. Process-wide;
 * set before issuing ops. PEFTD_CPU_QPATH=amx|vnni|avx2|scalar in the environment sets it too. */
typedef enum { KQ_AUTO = 0, KQ_VNNI, KQ_AVX2, KQ_SCALAR, KQ_AMX } kq_path;
extern kq_path kcpu__q_path;
/* The path KQ_AUTO resolves to on this CPU, and whether path p can run here. */
kq_path kq_best_path(void);
/* The dtype the path in use multiplies fastest for weights stored as dt (the CPU backend's
 * preferred_dtype for MATMUL): on the AVX2 path KDT_Q4_K_SB8 for Q4_K, KDT_Q6_K_SB16 for Q6_K;
 * else dt. */
kdtype kq_preferred_dtype(kdtype dt);
bool kq_path_available(kq_path p);

#endif
