/* tests/unit/test_cuda_qdequant.c — the CUDA matmul's block dequantizer (kernels/cuda/qdequant.h,
 * the one text nvcc compiles into qmatmul.cu's kernels) compiled here as C11 and run on the CPU,
 * on every machine, GPU or not: each 8-element group of every block type it takes equals
 *   - gguf-py's dequantization bit for bit on the fixture tensors (tests/fixtures/gguf: meta.gguf's
 *     quantized tensors and block32.gguf's random blocks, made by make_gguf_fixtures.py /
 *     make_block32_fixtures.py), and
 *   - kernels/cpu/quant_ref.c's bit for bit on 4096 random blocks per type (every byte random, the
 *     f16 scales drawn over normals, subnormals, zero and both signs) and on the extreme codes.
 * The device side differs only in how a product is rounded (__fmul_rn & co., the same IEEE
 * single rounding) and how an f16 is read (__half2float, exact); the GPU parity harness
 * (test_backend_parity qmatmul_parity) checks the kernels themselves where a GPU is lent. */
#include "tests/harness/test.h"

#include "kernels/cpu/quant_ref.h"
#include "kernels/cuda/qdequant.h"
#include "server/model/gguf.h"

static const kdtype TYPES[] = {KDT_Q8_0, KDT_Q4_0, KDT_Q5_0, KDT_Q4_1, KDT_Q5_1, KDT_IQ4_NL,
                               KDT_Q4_K, KDT_Q5_K, KDT_Q6_K, KDT_Q3_K, KDT_Q2_K, KDT_IQ4_XS};
#define N_TYPES ((int)(sizeof TYPES / sizeof TYPES[0]))

/* Byte offsets of a block's f16 fields (d, and dmin / m where the type has one); -1 = none. */
static void f16_fields(kdtype dt, int at[2]) {
    at[1] = -1;
    switch (dt) {
    case KDT_Q4_1: case KDT_Q5_1: case KDT_Q4_K: case KDT_Q5_K: at[0] = 0, at[1] = 2; break;
    case KDT_Q6_K: at[0] = 208; break;
    case KDT_Q3_K: at[0] = 108; break;
    case KDT_Q2_K: at[0] = 80, at[1] = 82; break;
    default: at[0] = 0; break;
    }
}

/* A finite f16: mostly normal magnitudes near the ones real scales have, some subnormals,
 * zeros and the largest exponents. */
static uint16_t rand_f16(void) {
    uint32_t r = test_rng_u32();
    uint16_t sign = (uint16_t)((r & 1) << 15), man = (uint16_t)((r >> 1) & 0x3ff);
    int kind = (int)((r >> 11) % 16), exp;
    if (kind == 0) exp = 0;                          /* subnormal (or zero when man == 0) */
    else if (kind == 1) exp = 30;                    /* the largest finite exponent */
    else exp = 1 + (int)((r >> 15) % 14);            /* 2^-14 .. 2^-1 */
    if (kind == 2) man = 0, exp = 0;                 /* ±0 */
    return (uint16_t)(sign | exp << 10 | man);
}

/* Dequantizes n elements (whole blocks) of src through qd_deq8, group by group, into out. */
static void deq_groups(kdtype dt, const uint8_t *src, int64_t n, float *out) {
    const int be = qd_block_elems(dt), bb = qd_block_bytes(dt);
    for (int64_t e = 0; e < n; e += 8) qd_deq8(dt, src + e / be * bb, (int)(e % be / 8), out + e);
}

static int64_t count_diff(const float *a, const float *b, int64_t n, int64_t *first) {
    int64_t bad = 0;
    *first = -1;
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], 4) != 0) {
            if (*first < 0) *first = i;
            bad++;
        }
    return bad;
}

/* Layout facts against kernels.h (the CPU side's sizes) and the dtypes the header refuses. */
TEST(block_sizes_match_kernels_h) {
    for (int k = 0; k < N_TYPES; k++) {
        kdtype dt = TYPES[k];
        ASSERT(qd_dtype_ok(dt));
        ASSERT_EQ(qd_block_elems(dt), (int)kdtype_block_elems(dt));
        ASSERT_EQ((size_t)qd_block_bytes(dt), kdtype_row_bytes(dt, kdtype_block_elems(dt)));
        ASSERT_EQ(qd_block_bytes(dt), qref_block_bytes(kdtype_ggml_type(dt)));
    }
    static const kdtype NOT[] = {KDT_F32, KDT_F16, KDT_BF16, KDT_Q4_K_SB8, KDT_Q6_K_SB16};
    for (size_t k = 0; k < sizeof NOT / sizeof NOT[0]; k++) {
        ASSERT(!qd_dtype_ok(NOT[k]));
        ASSERT_EQ(qd_block_elems(NOT[k]), 0);
        ASSERT_EQ(qd_block_bytes(NOT[k]), 0);
    }
    static const int L[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    for (int q = 0; q < 16; q++) ASSERT_EQ(qd_iq4nl_level(q), L[q]);
}

/* The fixture tensors of the dequantizer's types against gguf-py's own output. */
TEST(groups_equal_gguf_py_fixtures) {
    static const char *FILES[] = {"meta.gguf", "block32.gguf"};
    int checked = 0, seen[KDT_COUNT] = {0};
    for (int fi = 0; fi < 2; fi++) {
        char path[256], err[512] = "";
        snprintf(path, sizeof path, "tests/fixtures/gguf/%s", FILES[fi]);
        gguf_file *f = NULL;
        if (gguf_open(path, &f, err, sizeof err) != 0) FAIL("gguf_open(%s): %s", path, err);
        for (int i = 0; gguf_tensor_at(f, i); i++) {
            const gguf_tensor *t = gguf_tensor_at(f, i);
            kdtype dt = KDT_COUNT;
            for (int k = 0; k < N_TYPES; k++)
                if (kdtype_ggml_type(TYPES[k]) == t->type) dt = TYPES[k];
            if (dt == KDT_COUNT) continue;
            snprintf(path, sizeof path, "tests/fixtures/gguf/ref_%s.bin", t->name);
            size_t len = 0;
            float *ref = (float *)test_read_file(path, &len), *out = malloc((size_t)t->numel * 4);
            if (!ref) FAIL("missing fixture %s (tensor %s of %s)", path, t->name, FILES[fi]);
            ASSERT(out && len == (size_t)t->numel * 4);
            deq_groups(dt, t->data, t->numel, out);
            int64_t first, bad = count_diff(out, ref, t->numel, &first);
            printf("  %-12s %-7s %5lld values, %lld not bit-identical to gguf-py\n", t->name, kdtype_name(dt),
                   (long long)t->numel, (long long)bad);
            if (bad)
                FAIL("%s (%s) element %lld: %.9g, gguf-py %.9g", t->name, kdtype_name(dt), (long long)first,
                     out[first], ref[first]);
            free(ref), free(out);
            checked++, seen[dt] = 1;
        }
        gguf_close(f);
    }
    /* every type the dequantizer takes has a gguf-py fixture tensor */
    for (int k = 0; k < N_TYPES; k++)
        if (!seen[TYPES[k]]) FAIL("no gguf-py fixture tensor of %s", kdtype_name(TYPES[k]));
    printf("  %d fixture tensors\n", checked);
}

/* Random blocks and the extreme codes against the scalar reference. */
TEST(groups_equal_quant_ref_random_blocks) {
    enum { NB = 4096 };
    test_rng_seed(29);
    for (int k = 0; k < N_TYPES; k++) {
        const kdtype dt = TYPES[k];
        const int be = qd_block_elems(dt), bb = qd_block_bytes(dt);
        int at[2];
        f16_fields(dt, at);
        uint8_t *q = malloc((size_t)NB * bb);
        float *ref = malloc((size_t)NB * be * 4), *out = malloc((size_t)NB * be * 4);
        ASSERT(q && ref && out);
        for (int b = 0; b < NB; b++) {
            uint8_t *blk = q + (size_t)b * bb;
            /* blocks 0..3: every byte 0x00, 0xff, 0x55, 0xaa (codes, scales and mins at their
             * ends); the rest random */
            for (int i = 0; i < bb; i++)
                blk[i] = b < 4 ? (uint8_t)(b == 0 ? 0 : b == 1 ? 0xff : b == 2 ? 0x55 : 0xaa) : (uint8_t)test_rng_u32();
            for (int j = 0; j < 2; j++)
                if (at[j] >= 0) {
                    uint16_t h = b < 4 ? (uint16_t)(j ? 0xb800 : 0x3c00) : rand_f16(); /* 1.0, -0.5 */
                    blk[at[j]] = (uint8_t)h, blk[at[j] + 1] = (uint8_t)(h >> 8);
                }
        }
        ASSERT_EQ(qref_dequantize(kdtype_ggml_type(dt), q, ref, (int64_t)NB * be), 0);
        deq_groups(dt, q, (int64_t)NB * be, out);
        int64_t first, bad = count_diff(out, ref, (int64_t)NB * be, &first);
        printf("  %-7s %7d values from %d blocks, %lld not bit-identical to quant_ref.c\n", kdtype_name(dt), NB * be,
               NB, (long long)bad);
        if (bad)
            FAIL("%s element %lld (block %lld, group %lld): %.9g, quant_ref.c %.9g", kdtype_name(dt), (long long)first,
                 (long long)(first / be), (long long)(first % be / 8), out[first], ref[first]);
        free(q), free(ref), free(out);
    }
}

TEST_MAIN(block_sizes_match_kernels_h, groups_equal_gguf_py_fixtures, groups_equal_quant_ref_random_blocks)
