/* tests/unit/test_quant_fast.c — kernels/cpu/quant_fast.c's Q4_K / Q5_K quantizers byte for
 * byte against quant_ref.c's (the same search, vectorised: any difference is a defect, so
 * the comparison is exact), on blocks that exercise every branch of the search: random
 * values at several magnitudes, outliers, all-positive blocks (min clamped to 0), constant
 * and all-zero sub-blocks (the early return), subnormal-small and large values, and an odd
 * number of blocks (the one-block tail). Plus the new reference quantizers (Q4_0, Q5_K, Q6_K)
 * decode to within their format's step of the input. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant_fast.h"
#include "kernels/cpu/quant_ref.h"
#include "lib/half.h"
#include "lib/status.h"
#include "tests/harness/test.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static float frand(void) { /* uniform in [-1, 1) */
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 40) / 8388608.0 - 1.0);
}

/* nb blocks of test data; block kind by index. */
static float *make_blocks(int nb) {
    float *x = malloc((size_t)nb * 256 * sizeof *x);
    ASSERT(x);
    for (int b = 0; b < nb; b++) {
        float *v = x + 256 * b;
        int kind = b % 9;
        float mag = kind == 6 ? 1e-30f : kind == 7 ? 3e4f : (float)(1 << (b % 5)) * 0.01f;
        for (int i = 0; i < 256; i++) v[i] = frand() * mag;
        if (kind == 1)
            for (int i = 0; i < 256; i += 37) v[i] *= 40.0f; /* outliers */
        if (kind == 2)
            for (int i = 0; i < 256; i++) v[i] = fabsf(v[i]) + 0.5f; /* all positive: min 0 */
        if (kind == 3)
            for (int i = 64; i < 96; i++) v[i] = 0.125f; /* one constant sub-block */
        if (kind == 4) memset(v + 160, 0, 32 * sizeof *v); /* one all-zero sub-block */
        if (kind == 5) memset(v, 0, 256 * sizeof *v);      /* all zero */
        if (kind == 8)
            for (int i = 0; i < 256; i++) v[i] = -fabsf(v[i]) - 0.25f; /* all negative */
    }
    return x;
}

static void compare(int nb, uint32_t type) {
    float *x = make_blocks(nb);
    size_t bb = (size_t)qref_block_bytes(type);
    uint8_t *a = malloc(bb * nb), *b = malloc(bb * nb);
    ASSERT(a && b);
    int64_t n = (int64_t)nb * 256;
    if (type == QREF_Q4_K) {
        ASSERT_EQ(qref_quantize_q4_k(x, a, n), 0);
        ASSERT_EQ(qfast_quantize_q4_k(x, b, n), 0);
    } else {
        ASSERT_EQ(qref_quantize_q5_k(x, a, n), 0);
        ASSERT_EQ(qfast_quantize_q5_k(x, b, n), 0);
    }
    for (int k = 0; k < nb; k++)
        if (memcmp(a + bb * k, b + bb * k, bb)) FAIL("type %u block %d (kind %d): fast differs from reference", type, k, k % 9);
    free(a);
    free(b);
    free(x);
}

TEST(q4_k_fast_equals_reference) {
    compare(1, QREF_Q4_K);
    compare(2, QREF_Q4_K);
    compare(333, QREF_Q4_K);
    printf("    Q4_K: 336 blocks identical\n");
}

TEST(q5_k_fast_equals_reference) {
    compare(1, QREF_Q5_K);
    compare(333, QREF_Q5_K);
    printf("    Q5_K: 334 blocks identical\n");
}

TEST(fast_bad_length) {
    float x[256] = {0};
    uint8_t y[176];
    ASSERT_EQ(qfast_quantize_q4_k(x, y, 100), PEFTD_EINVAL);
    ASSERT_EQ(qfast_quantize_q5_k(x, y, -256), PEFTD_EINVAL);
    ASSERT_EQ(qref_quantize_q6_k(x, y, 32), PEFTD_EINVAL);
    ASSERT_EQ(qref_quantize_q4_0(x, y, 16), PEFTD_EINVAL);
}

/* Round trips. Q4_0: every element within d/2 of its level except the block's largest
 * magnitude, which maps to −8·d exactly (up to the f16 rounding of d: 2^-11 relative), and
 * values clipped at level 15 (within d + that). Q6_K: each level is the nearest of −32..31
 * times the decoded group step d·sc, so within step/2 of the input unless it clamps (then
 * |x| − 31·step more). F16_FLOOR: the f16 rounding of a tiny d is
 * absolute (half the smallest subnormal, 2^-25), times at most 32 levels: 1e-6 covers it. Q5_K: the Q4_K search with 32 levels: within the sub-block's step
 * d·sc + dmin·m (a coarse bound; the fit minimises the weighted error, not the max). */
#define F16_FLOOR 1e-6
TEST(reference_quantizers_round_trip) {
    int nb = 45;
    float *x = make_blocks(nb), *y = malloc((size_t)nb * 256 * sizeof *y);
    uint8_t *q = malloc((size_t)nb * 210);
    ASSERT(y && q);
    int64_t n = (int64_t)nb * 256;
    ASSERT_EQ(qref_quantize_q4_0(x, q, n), 0);
    ASSERT_EQ(qref_dequantize(QREF_Q4_0, q, y, n), 0);
    for (int64_t b = 0; b < n / 32; b++) {
        uint16_t h;
        memcpy(&h, q + 18 * b, 2);
        double d = fabs(f16_to_f32(h));
        for (int j = 0; j < 32; j++) {
            double e = fabs((double)x[32 * b + j] - y[32 * b + j]);
            if (!(e <= d * 1.001 + F16_FLOOR)) FAIL("q4_0 block %lld elem %d: |err| %g > d %g", (long long)b, j, e, d);
        }
    }
    ASSERT_EQ(qref_quantize_q6_k(x, q, n), 0);
    ASSERT_EQ(qref_dequantize(QREF_Q6_K, q, y, n), 0);
    for (int64_t b = 0; b < nb; b++) {
        uint16_t h;
        memcpy(&h, q + 210 * b + 208, 2);
        for (int g = 0; g < 16; g++) {
            double step = fabs(f16_to_f32(h) * (double)(int8_t)q[210 * b + 192 + g]);
            for (int i = 0; i < 16; i++) {
                double xi = x[256 * b + 16 * g + i], e = fabs(xi - y[256 * b + 16 * g + i]);
                if (!(e <= step / 2 * 1.001 + fmax(0, fabs(xi) - 31 * step) + F16_FLOOR))
                    FAIL("q6_k block %lld group %d: |err| %g > step %g", (long long)b, g, e, step);
            }
        }
    }
    ASSERT_EQ(qref_quantize_q5_k(x, q, n), 0);
    ASSERT_EQ(qref_dequantize(QREF_Q5_K, q, y, n), 0);
    double se = 0, sx = 0;
    for (int64_t i = 0; i < n; i++) {
        se += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        sx += (double)x[i] * x[i];
    }
    printf("    relative rms error: q5_k %.4f\n", sqrt(se / sx));
    ASSERT(sqrt(se / sx) < 1.0 / 31); /* a 5-bit grid over each sub-block's range */
    free(x);
    free(y);
    free(q);
}

/* One reordering (from -> to, blocks of bb bytes) on nb random blocks (every byte value in
 * every position): qfast_reorder gives qref_reorder's bytes, and the way back (qfast_reorder,
 * which hands it to the reference) gives the original. */
static void reorder_case(uint32_t to, uint32_t from, size_t bb, size_t nb, uint32_t seed, const char *what) {
    uint8_t *src = malloc(nb * bb), *a = malloc(nb * bb), *b = malloc(nb * bb);
    ASSERT(src && a && b);
    uint32_t h = seed;
    for (size_t i = 0; i < nb * bb; i++) {
        h = h * 1664525u + 1013904223u;
        src[i] = (uint8_t)(h >> 24);
    }
    memset(a, 0xAA, nb * bb);
    memset(b, 0x55, nb * bb);
    ASSERT_EQ(qfast_reorder(to, from, src, a, (int64_t)nb * 256), 0);
    ASSERT_EQ(qref_reorder(to, from, src, b, (int64_t)nb * 256), 0);
    if (memcmp(a, b, nb * bb)) FAIL("%s: qfast_reorder differs from qref_reorder", what);
    ASSERT_EQ(qfast_reorder(from, to, a, b, (int64_t)nb * 256), 0);
    if (memcmp(b, src, nb * bb)) FAIL("%s: the way back does not give the original bytes", what);
    ASSERT_EQ(qfast_reorder(to, from, src, a, 255), PEFTD_EINVAL);
    free(src);
    free(a);
    free(b);
}

/* The load-time reorderings Q4_K -> SB8 and Q6_K -> SB16 (both vectorised): qref_reorder's
 * bytes, there and back; what qfast_reorder refuses, it refuses as the reference does. */
TEST(reorder_fast_equals_reference) {
    reorder_case(QREF_Q4_K_SB8, QREF_Q4_K, 144, 300, 12345, "Q4_K -> SB8");
    reorder_case(QREF_Q6_K_SB16, QREF_Q6_K, 210, 200, 54321, "Q6_K -> SB16");
    uint8_t blk[210] = {0}, out[210];
    ASSERT_EQ(qfast_reorder(QREF_Q4_K_SB8, QREF_Q5_K, blk, out, 256), PEFTD_EUNSUPPORTED);
}

TEST_MAIN(q4_k_fast_equals_reference, q5_k_fast_equals_reference, fast_bad_length, reference_quantizers_round_trip,
          reorder_fast_equals_reference)
