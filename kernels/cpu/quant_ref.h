/* kernels/cpu/quant_ref.h — the ggml quantized block formats peftd reads from GGUF files, and
 * a scalar CPU reference that dequantizes them to f32 (and quantizes f32 to every one of them).
 *
 * This is the reference that faster kernels (CPU SIMD, CUDA) are tested against: written for
 * clarity, one element at a time, every float operation rounded separately in the order the
 * `gguf` Python package's quants.py computes it (no fused multiply-add), so the results are
 * bit-identical to gguf.quants.dequantize.
 *
 * Block layouts (little-endian; "f16" is an IEEE half; sizes are the on-disk bytes):
 *   Q8_0  32 elements, 34 bytes: f16 d; i8 qs[32].                 y[j] = d·qs[j]
 *   Q4_0  32 elements, 18 bytes: f16 d; u8 qs[16]. Element j < 16 is the low nibble of qs[j],
 *         element j + 16 its high nibble.                          y = d·(q − 8)
 *   Q5_0  32 elements, 22 bytes: f16 d; u8 qh[4]; u8 qs[16]. Element j takes bit j of the
 *         little-endian u32 qh as its 5th bit over the nibble of Q4_0's layout:
 *         q = nibble | bit << 4.                                   y = d·(q − 16)
 *   Q4_1  32 elements, 20 bytes: f16 d; f16 m; u8 qs[16] (Q4_0's nibble order), unsigned
 *         q = nibble.                                              y = d·q + m
 *   Q5_1  32 elements, 24 bytes: f16 d; f16 m; u8 qh[4]; u8 qs[16] (Q5_0's bits and nibbles),
 *         unsigned q = nibble | bit << 4.                          y = d·q + m
 *   IQ4_NL 32 elements, 18 bytes: f16 d; u8 qs[16] (Q4_0's nibble order); the nibble indexes
 *         the 16 int8 levels QREF_IQ4NL_LEVELS.                    y = d·level[q]
 *   IQ4_XS 256 elements (8 sub-blocks of 32), 136 bytes: f16 d; u16 scales_h; u8 scales_l[4];
 *         u8 qs[128]. Sub-block s has the 6-bit scale
 *         ls = ((scales_l[s/2] >> 4·(s%2)) & 15) | ((scales_h >> 2s) & 3) << 4 and its 32
 *         elements in qs[16s .. 16s+15] as IQ4_NL's nibbles.           y = (d·(ls − 32))·level[q]
 *   Q3_K  256 elements (16 groups of 16), 110 bytes: u8 hmask[32]; u8 qs[64]; u8 scales[12];
 *         f16 d. Element e = 128h + 32j + l (h < 2, j < 4, l < 32): low 2 bits
 *         (qs[32h + l] >> 2j) & 3, high bit (hmask[l] >> (4h + j)) & 1, q = low − (high ? 0 : 4);
 *         group g = e / 16 has the 6-bit scale sc_g: low 4 bits scales[g] & 15 (g < 8) or
 *         scales[g − 8] >> 4, high 2 bits (scales[8 + g % 4] >> 2·(g / 4)) & 3.
 *                                                                  y = (d·(sc_g − 32))·q
 *   Q2_K  256 elements (16 groups of 16), 84 bytes: u8 scales[16]; u8 qs[64]; f16 d; f16 dmin.
 *         Element e = 128h + 32j + l: q = (qs[32h + l] >> 2j) & 3 (Q3_K's low bits); group
 *         g = e / 16 has the 4-bit scale sc = scales[g] & 15 and min m = scales[g] >> 4.
 *                                                                  y = (d·sc)·q − dmin·m
 *   Q4_K  256 elements (8 sub-blocks of 32), 144 bytes: f16 d; f16 dmin; u8 scales[12];
 *         u8 qs[128]. Sub-block s has a 6-bit scale sc[s] and a 6-bit min m[s] packed in the
 *         12 bytes: for s < 4, sc = scales[s] & 63 and m = scales[s+4] & 63; for s ≥ 4,
 *         sc = (scales[s+4] & 15) | (scales[s-4] >> 6) << 4 and
 *         m = (scales[s+4] >> 4) | (scales[s] >> 6) << 4. Sub-blocks 2k and 2k+1 share the 32
 *         bytes qs[32k .. 32k+31]: low nibbles for 2k, high nibbles for 2k+1.
 *                                                                  y = (d·sc)·q − dmin·m
 *   Q5_K  256 elements, 176 bytes: f16 d; f16 dmin; u8 scales[12] (as Q4_K); u8 qh[32];
 *         u8 qs[128] (as Q4_K). Element l of sub-block s takes bit s of qh[l] as its 5th bit:
 *         q = nibble | ((qh[l] >> s) & 1) << 4.                    y = (d·sc)·q − dmin·m
 *   Q6_K  256 elements (16 groups of 16 sharing a scale), 210 bytes: u8 ql[128]; u8 qh[64];
 *         i8 scales[16]; f16 d. Element i = 128h + r (h = 0, 1; 0 ≤ r < 128):
 *         low 4 bits = (ql[64h + r%64] >> 4·(r/64)) & 15,
 *         high 2 bits = (qh[32h + r%32] >> 2·(r/32)) & 3, q = bits − 32.
 *                                                                  y = (d·scales[i/16])·q
 *   F32, F16, BF16: one element per "block" (BF16 is the top half of an f32).
 * The block structs below describe the layouts (their sizes are static-asserted); the code
 * reads blocks through memcpy, so source data need not be aligned.
 *
 * Type ids are ggml's (= GGUF's tensor types): F32 0, F16 1, Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7,
 * Q8_0 8, Q2_K 10, Q3_K 11, Q4_K 12, Q5_K 13, Q6_K 14, IQ4_NL 20, IQ4_XS 23, BF16 30.
 */
#ifndef PEFTD_QUANT_REF_H
#define PEFTD_QUANT_REF_H

#include <stddef.h>
#include <stdint.h>

#define QREF_QK 32   /* elements per Q8_0 / Q4_0 / Q5_0 / Q4_1 / Q5_1 / IQ4_NL block */
#define QREF_QK_K 256 /* elements per K-quant super-block */

enum {
    QREF_F32 = 0,
    QREF_F16 = 1,
    QREF_Q4_0 = 2,
    QREF_Q4_1 = 3,
    QREF_Q5_0 = 6,
    QREF_Q5_1 = 7,
    QREF_Q8_0 = 8,
    QREF_Q2_K = 10,
    QREF_Q3_K = 11,
    QREF_Q4_K = 12,
    QREF_Q5_K = 13,
    QREF_Q6_K = 14,
    QREF_IQ4_NL = 20,
    QREF_IQ4_XS = 23,
    QREF_BF16 = 30,
    /* not a GGUF type: Q4_K with its codes reordered (kernels.h KDT_Q4_K_SB8) */
    QREF_Q4_K_SB8 = 0x1000C,
    QREF_Q6_K_SB16 = 0x1000E, /* Q6_K reordered (KDT_Q6_K_SB16) */
};

typedef struct { uint16_t d; int8_t qs[QREF_QK]; } qref_block_q8_0;
typedef struct { uint16_t d; uint8_t qs[QREF_QK / 2]; } qref_block_q4_0;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QREF_QK / 2]; } qref_block_q5_0;
typedef struct { uint16_t d, m; uint8_t qs[QREF_QK / 2]; } qref_block_q4_1;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QREF_QK / 2]; } qref_block_q5_1;
typedef struct { uint16_t d; uint8_t qs[QREF_QK / 2]; } qref_block_iq4_nl;
/* IQ4_NL's 16 levels (ggml's kvalues_iq4nl): a nibble q stands for d·QREF_IQ4NL_LEVELS[q]. */
#define QREF_IQ4NL_LEVELS {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}
typedef struct { uint16_t d, scales_h; uint8_t scales_l[QREF_QK_K / 64]; uint8_t qs[QREF_QK_K / 2]; } qref_block_iq4_xs;
/* IQ4_XS sub-block s's 6-bit scale (0..63; the weight scale is d·(ls − 32)) from the block's bytes. */
static inline int qref_iq4xs_scale(const uint8_t *blk, int s) {
    const int h = (blk[2] | blk[3] << 8) >> 2 * s & 3;
    return (blk[4 + s / 2] >> 4 * (s % 2) & 15) | h << 4;
}
typedef struct {
    uint8_t hmask[QREF_QK_K / 8];
    uint8_t qs[QREF_QK_K / 4];
    uint8_t scales[12];
    uint16_t d;
} qref_block_q3_k;
/* Q3_K group g's 6-bit scale (0..63; the weight scale is d·(sc − 32)) from the 12 scale bytes. */
static inline int qref_q3k_scale(const uint8_t *sc12, int g) {
    const int lo = g < 8 ? sc12[g] & 15 : sc12[g - 8] >> 4;
    return lo | (sc12[8 + g % 4] >> 2 * (g / 4) & 3) << 4;
}
typedef struct { uint8_t scales[QREF_QK_K / 16]; uint8_t qs[QREF_QK_K / 4]; uint16_t d, dmin; } qref_block_q2_k;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[QREF_QK_K / 2]; } qref_block_q4_k;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[QREF_QK_K / 8];
    uint8_t qs[QREF_QK_K / 2];
} qref_block_q5_k;
typedef struct {
    uint8_t ql[QREF_QK_K / 2];
    uint8_t qh[QREF_QK_K / 4];
    int8_t scales[QREF_QK_K / 16];
    uint16_t d;
} qref_block_q6_k;

/* Elements per block and bytes per block of a type above; 0 for any other id. */
int qref_block_elems(uint32_t type);
int qref_block_bytes(uint32_t type);

/* Dequantizes n elements (n a multiple of the type's block) from src to dst.
 * Returns 0, PEFTD_EUNSUPPORTED for a type not listed above, PEFTD_EINVAL when n is not a
 * multiple of the block size or negative. Thread-safe (no state). */
int qref_dequantize(uint32_t type, const void *src, float *dst, int64_t n);

/* Converts n elements between a type and a reordering of it (Q4_K <-> QREF_Q4_K_SB8, Q6_K <->
 * QREF_Q6_K_SB16: the same blocks with the codes permuted, kernels.h states the orders), src to
 * dst (not overlapping). 0,
 * PEFTD_EUNSUPPORTED for any other pair, PEFTD_EINVAL when n is not whole blocks. Thread-safe. */
int qref_reorder(uint32_t to, uint32_t from, const void *src, void *dst, int64_t n);

/* Per-format entry points (nb = number of blocks). */
void qref_dequant_q8_0(const void *src, float *dst, int64_t nb);
void qref_dequant_q4_0(const void *src, float *dst, int64_t nb);
void qref_dequant_q5_0(const void *src, float *dst, int64_t nb);
void qref_dequant_q4_1(const void *src, float *dst, int64_t nb);
void qref_dequant_q5_1(const void *src, float *dst, int64_t nb);
void qref_dequant_iq4_nl(const void *src, float *dst, int64_t nb);
void qref_dequant_iq4_xs(const void *src, float *dst, int64_t nb);
void qref_dequant_q3_k(const void *src, float *dst, int64_t nb);
void qref_dequant_q2_k(const void *src, float *dst, int64_t nb);
void qref_dequant_q4_k(const void *src, float *dst, int64_t nb);
void qref_dequant_q5_k(const void *src, float *dst, int64_t nb);
void qref_dequant_q6_k(const void *src, float *dst, int64_t nb);

/* Quantizes n floats (a multiple of 32) to Q8_0 blocks at dst (n/32 × 34 bytes):
 * d = max|x|/127, q = round-half-away(x·(1/d)) — bit-identical to gguf.quants.quantize for
 * finite input (NaN/inf give unspecified but in-range blocks). */
int qref_quantize_q8_0(const float *src, void *dst, int64_t n);

/* Quantizes n floats (a multiple of 256) to Q4_K blocks at dst (n/256 × 144 bytes) with the
 * search llama.cpp's reference quantizer uses (facts of its algorithm, not its code): per
 * sub-block, weights |x| + rms, a min/scale fit over 21 candidate scales minimising the
 * weighted squared error, then 6-bit scales/mins relative to the block's largest, and the
 * nibbles recomputed against the rounded scales. Inputs must be finite. */
int qref_quantize_q4_k(const float *src, void *dst, int64_t n);

/* Quantizes n floats (a multiple of 32) to Q4_0 blocks: d = (the largest-magnitude value)/−8,
 * q = min(15, trunc(x·(1/d) + 8.5)) — bit-identical to gguf.quants.quantize (Q4_0) for finite
 * input (checked by tests/fixtures/make_quant_fixtures.py). */
int qref_quantize_q4_0(const float *src, void *dst, int64_t n);

/* Quantizes n floats (a multiple of 32) to Q5_0 blocks: d = (the largest-magnitude value)/−16,
 * q = min(31, trunc(x·(1/d) + 16.5)) — gguf.quants.quantize's Q5_0 (checked by
 * tests/fixtures/make_quant_fixtures.py's ref). For tests and benchmarks: peftd reads Q5_0 from
 * GGUF files and offers no at-load Q5_0. */
int qref_quantize_q5_0(const float *src, void *dst, int64_t n);

/* Quantizes n floats (a multiple of 32) to Q4_1 / Q5_1 blocks as gguf.quants.quantize does:
 * m = the block's min, d = (max − min) / (2^bits − 1), q = min(2^bits − 1, trunc((x − m)·(1/d)
 * + 0.5)) (checked against gguf-py's bytes in tests/unit/test_gguf.c). For tests and benchmarks. */
int qref_quantize_q4_1(const float *src, void *dst, int64_t n);
int qref_quantize_q5_1(const float *src, void *dst, int64_t n);

/* Quantizes n floats (a multiple of 256) to Q5_K blocks: the Q4_K search with 32 levels
 * (llama.cpp's Q5_K parameters), 5th bits packed into qh. Inputs must be finite. */
int qref_quantize_q5_k(const float *src, void *dst, int64_t n);

/* Quantizes n floats (a multiple of 256) to Q6_K blocks: per 16-element group a symmetric
 * scale fitted by weighted least squares over 19 candidates (llama.cpp's search, weights x²),
 * 8-bit group scales under one f16 d. Inputs must be finite. */
int qref_quantize_q6_k(const float *src, void *dst, int64_t n);

/* Internal (quant_ref.c, quant_fast.c): the Q4_K / Q5_K block's scales, d, dmin and levels
 * (skipped when L is NULL) from its 8 sub-block fits; and the packing of levels into qs (and qh for Q5_K). */
void qref__k4_finish(const float *x, const float *scales, const float *mins, int nmax, uint8_t *sc12,
                     uint16_t *d16, uint16_t *dmin16, uint8_t *L);
void qref__k4_pack(const uint8_t *L, uint8_t *qs, uint8_t *qh);

#endif
