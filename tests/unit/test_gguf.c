/* tests/unit/test_gguf.c — the GGUF reader (server/model/gguf.{h,c}) and the reference block
 * formats (kernels/cpu/quant_ref.{h,c}) against files and values written by the `gguf` Python
 * package (tests/fixtures/gguf/make_gguf_fixtures.py): every metadata value type, tensor
 * views, dequantization of F32/F16/BF16/Q8_0/Q4_0/Q5_0/Q4_1/Q5_1/IQ4_NL/IQ4_XS/Q2_K/Q3_K/Q4_K/Q5_K/Q6_K bit-exact against
 * gguf.quants.dequantize, Q8_0, Q5_0, Q4_1 and Q5_1 quantization bit-exact against
 * gguf.quants.quantize (the last three: block32.gguf, make_block32_fixtures.py), and Q4_K
 * quantization round-trip error bounds (gguf-py has no Q4_K quantizer). Hostile inputs are in
 * test_gguf_hostile.c.
 */
#include "tests/harness/test.h"

#include <errno.h>

#include "kernels/cpu/quant_ref.h"
#include "server/model/gguf.h"

#define FIX "tests/fixtures/gguf/"

static gguf_file *open_fixture(const char *name) {
    char path[256], err[512] = "";
    snprintf(path, sizeof path, FIX "%s", name);
    gguf_file *f = NULL;
    int rc = gguf_open(path, &f, err, sizeof err);
    if (rc != 0) FAIL("gguf_open(%s) = %d: %s (run make_gguf_fixtures.py?)", path, rc, err);
    return f;
}

static float *read_ref(const char *name, int64_t n) {
    char path[256];
    size_t len = 0;
    snprintf(path, sizeof path, FIX "ref_%s.bin", name);
    float *p = (float *)test_read_file(path, &len);
    if (!p) FAIL("missing fixture %s", path);
    if (len != (size_t)n * 4) FAIL("%s: %zu bytes, expected %lld", path, len, (long long)n * 4);
    return p;
}

TEST(meta_scalars) {
    gguf_file *f = open_fixture("meta.gguf");
    char err[512];
    ASSERT_EQ(gguf_version(f), 3);
    ASSERT_EQ(gguf_alignment(f), 32);
    ASSERT_EQ(gguf_kv_count(f), 20);
    ASSERT_STREQ(gguf_kv_key(f, 0), "general.architecture");
    ASSERT(gguf_kv_key(f, 20) == NULL);
    ASSERT_EQ(gguf_kv_type(f, 20), GGUF_VT_COUNT);
    const char *s;
    size_t n;
    ASSERT_EQ(gguf_get_str(f, "general.architecture", &s, &n, err, sizeof err), 0);
    ASSERT(n == 5 && memcmp(s, "llama", 5) == 0);
    ASSERT_EQ(gguf_get_str(f, "test.str", &s, &n, err, sizeof err), 0);
    ASSERT(n == strlen("héllo, GGUF") && memcmp(s, "héllo, GGUF", n) == 0);
    uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
    uint64_t u64; int64_t i64; float f32; double f64; bool b;
    ASSERT_EQ(gguf_get_u8(f, "test.u8", &u8, err, sizeof err), 0);
    ASSERT_EQ(u8, 200);
    ASSERT_EQ(gguf_get_i8(f, "test.i8", &i8, err, sizeof err), 0);
    ASSERT_EQ(i8, -100);
    ASSERT_EQ(gguf_get_u16(f, "test.u16", &u16, err, sizeof err), 0);
    ASSERT_EQ(u16, 60000);
    ASSERT_EQ(gguf_get_i16(f, "test.i16", &i16, err, sizeof err), 0);
    ASSERT_EQ(i16, -30000);
    ASSERT_EQ(gguf_get_u32(f, "test.u32", &u32, err, sizeof err), 0);
    ASSERT_EQ(u32, 4000000000u);
    ASSERT_EQ(gguf_get_i32(f, "test.i32", &i32, err, sizeof err), 0);
    ASSERT_EQ(i32, -2000000000);
    ASSERT_EQ(gguf_get_u64(f, "test.u64", &u64, err, sizeof err), 0);
    ASSERT(u64 == 18000000000000000000ull);
    ASSERT_EQ(gguf_get_i64(f, "test.i64", &i64, err, sizeof err), 0);
    ASSERT(i64 == -9000000000000000000ll);
    ASSERT_EQ(gguf_get_f32(f, "test.f32", &f32, err, sizeof err), 0);
    ASSERT(f32 == 0.15625f);
    ASSERT_EQ(gguf_get_f64(f, "test.f64", &f64, err, sizeof err), 0);
    ASSERT(f64 == -2.718281828459045);
    ASSERT_EQ(gguf_get_bool(f, "test.bool", &b, err, sizeof err), 0);
    ASSERT(b);
    /* The lenient unsigned lookup: any integer type, refusing negatives and non-integers. */
    ASSERT_EQ(gguf_get_uint(f, "llama.context_length", &u64, err, sizeof err), 0);
    ASSERT_EQ(u64, 128);
    ASSERT_EQ(gguf_get_uint(f, "test.u64", &u64, err, sizeof err), 0);
    ASSERT(u64 == 18000000000000000000ull);
    ASSERT_EQ(gguf_get_uint(f, "test.u8", &u64, err, sizeof err), 0);
    ASSERT_EQ(u64, 200);
    ASSERT_EQ(gguf_get_uint(f, "test.i8", &u64, err, sizeof err), PEFTD_ERANGE);
    ASSERT_EQ(gguf_get_uint(f, "test.f32", &u64, err, sizeof err), PEFTD_EFORMAT);
    ASSERT_EQ(gguf_get_uint(f, "test.bool", &u64, err, sizeof err), PEFTD_EFORMAT);
    gguf_close(f);
}

TEST(meta_type_confusion) {
    gguf_file *f = open_fixture("meta.gguf");
    char err[512] = "";
    uint32_t u32;
    ASSERT_EQ(gguf_get_u32(f, "test.str", &u32, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "metadata key 'test.str' is string, expected u32"));
    ASSERT_EQ(gguf_get_u32(f, "test.u64", &u32, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "'test.u64' is u64, expected u32"));
    ASSERT_EQ(gguf_get_u32(f, "no.such.key", &u32, err, sizeof err), PEFTD_ENOTFOUND);
    ASSERT(strstr(err, "'no.such.key' not found"));
    const char *s;
    size_t n;
    ASSERT_EQ(gguf_get_str(f, "test.arr_str", &s, &n, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "'test.arr_str' is array, expected string"));
    gguf_array a;
    ASSERT_EQ(gguf_get_arr(f, "test.arr_str", GGUF_VT_I32, &a, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "array of string, expected an array of i32"));
    ASSERT_EQ(gguf_get_arr(f, "test.u8", GGUF_VT_COUNT, &a, err, sizeof err), PEFTD_EFORMAT);
    float x;
    ASSERT_EQ(gguf_get_f32(f, "test.f64", &x, NULL, 0), PEFTD_EFORMAT); /* err may be NULL */
    gguf_close(f);
}

TEST(meta_arrays) {
    gguf_file *f = open_fixture("meta.gguf");
    char err[512];
    gguf_array a, sub;
    int64_t v;
    double d;
    const char *s;
    size_t n;
    ASSERT_EQ(gguf_get_arr(f, "test.arr_u8", GGUF_VT_U8, &a, err, sizeof err), 0);
    ASSERT_EQ(a.count, 3);
    ASSERT(gguf_arr_int(&a, 2, &v) == 0 && v == 255);
    ASSERT_EQ(gguf_arr_int(&a, 3, &v), PEFTD_ERANGE);
    ASSERT_EQ(gguf_arr_float(&a, 0, &d), PEFTD_EFORMAT);
    ASSERT_EQ(gguf_get_arr(f, "test.arr_i32", GGUF_VT_I32, &a, err, sizeof err), 0);
    const int64_t i32s[] = {-1, 0, 7, 2147483647};
    ASSERT_EQ(a.count, 4);
    for (int i = 0; i < 4; i++) ASSERT(gguf_arr_int(&a, i, &v) == 0 && v == i32s[i]);
    ASSERT_EQ(gguf_get_arr(f, "test.arr_f32", GGUF_VT_F32, &a, err, sizeof err), 0);
    const double f32s[] = {0.5, -1.25, 3.0};
    for (int i = 0; i < 3; i++) ASSERT(gguf_arr_float(&a, i, &d) == 0 && d == f32s[i]);
    ASSERT_EQ(gguf_get_arr(f, "test.arr_bool", GGUF_VT_BOOL, &a, err, sizeof err), 0);
    for (int i = 0; i < 3; i++) ASSERT(gguf_arr_int(&a, i, &v) == 0 && v == (i != 1));
    ASSERT_EQ(gguf_get_arr(f, "test.arr_str", GGUF_VT_STR, &a, err, sizeof err), 0);
    const char *strs[] = {"a", "", "ünïcode", "<0x0A>"};
    ASSERT_EQ(a.count, 4);
    for (int i = 3; i >= 0; i--) { /* out of order: the index, not a walk */
        ASSERT_EQ(gguf_arr_str(&a, i, &s, &n), 0);
        ASSERT(n == strlen(strs[i]) && memcmp(s, strs[i], n) == 0);
    }
    ASSERT_EQ(gguf_arr_int(&a, 0, &v), PEFTD_EFORMAT);
    /* [[1, 2], [3], ["x", "yz"]]: element types i32, i32, string. */
    ASSERT_EQ(gguf_get_arr(f, "test.arr_nested", GGUF_VT_ARR, &a, err, sizeof err), 0);
    ASSERT_EQ(a.count, 3);
    ASSERT_EQ(gguf_arr_arr(&a, 0, &sub), 0);
    ASSERT(sub.elem_type == GGUF_VT_I32 && sub.count == 2 && sub.nbytes == 8);
    ASSERT(gguf_arr_int(&sub, 1, &v) == 0 && v == 2);
    ASSERT_EQ(gguf_arr_arr(&a, 1, &sub), 0);
    ASSERT(sub.count == 1 && gguf_arr_int(&sub, 0, &v) == 0 && v == 3);
    ASSERT_EQ(gguf_arr_arr(&a, 2, &sub), 0);
    ASSERT(sub.elem_type == GGUF_VT_STR && sub.count == 2 && sub.nbytes == 8 + 1 + 8 + 2);
    ASSERT(gguf_arr_str(&sub, 1, &s, &n) == 0 && n == 2 && memcmp(s, "yz", 2) == 0);
    ASSERT(gguf_arr_str(&sub, 0, &s, &n) == 0 && n == 1 && s[0] == 'x');
    ASSERT_EQ(gguf_arr_arr(&a, 3, &sub), PEFTD_ERANGE);
    gguf_close(f);
}

/* Offsets and sizes as gguf-py's GGUFReader reports them for meta.gguf. */
static const struct {
    const char *name;
    uint32_t type;
    int n_dims;
    int64_t ne[4];
    uint64_t offset, nbytes;
} meta_tensors[] = {
    {"f32_src", GGUF_T_F32, 2, {64, 4, 1, 1}, 0, 1024},
    {"f32_3d", GGUF_T_F32, 3, {32, 3, 2, 1}, 1024, 768},
    {"f16", GGUF_T_F16, 2, {64, 2, 1, 1}, 1792, 256},
    {"bf16", GGUF_T_BF16, 2, {64, 4, 1, 1}, 2048, 512},
    {"q8_0", GGUF_T_Q8_0, 2, {64, 4, 1, 1}, 2560, 272},
    {"q4_0", GGUF_T_Q4_0, 2, {64, 4, 1, 1}, 2848, 144},
    {"q4_k", GGUF_T_Q4_K, 2, {512, 3, 1, 1}, 3008, 864},
    {"q5_k", GGUF_T_Q5_K, 2, {512, 3, 1, 1}, 3872, 1056},
    {"q6_k", GGUF_T_Q6_K, 2, {512, 3, 1, 1}, 4928, 1260},
};
enum { N_META_TENSORS = sizeof meta_tensors / sizeof meta_tensors[0] };

TEST(tensor_views) {
    gguf_file *f = open_fixture("meta.gguf");
    size_t flen = 0;
    char *raw = test_read_file(FIX "meta.gguf", &flen);
    ASSERT(raw);
    ASSERT_EQ(gguf_tensor_count(f), N_META_TENSORS);
    ASSERT_EQ(gguf_data_offset(f), 1184);
    for (int i = 0; i < N_META_TENSORS; i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        ASSERT(t && gguf_find_tensor(f, meta_tensors[i].name) == t);
        ASSERT_STREQ(t->name, meta_tensors[i].name);
        ASSERT_EQ(t->type, meta_tensors[i].type);
        ASSERT(gguf_type_supported(t->type));
        ASSERT_EQ(t->n_dims, meta_tensors[i].n_dims);
        int64_t numel = 1;
        for (int d = 0; d < 4; d++) {
            ASSERT_EQ(t->ne[d], meta_tensors[i].ne[d]);
            numel *= t->ne[d];
        }
        ASSERT_EQ(t->numel, numel);
        ASSERT_EQ(t->offset, meta_tensors[i].offset);
        ASSERT_EQ(t->nbytes, meta_tensors[i].nbytes);
        ASSERT_EQ(gguf_row_bytes(t->type, t->ne[0]) * (t->numel / t->ne[0]), t->nbytes);
        /* The view's bytes are the file's bytes at data section + offset. */
        uint64_t at = gguf_data_offset(f) + t->offset;
        ASSERT(at + t->nbytes <= flen);
        ASSERT(memcmp(t->data, raw + at, t->nbytes) == 0);
    }
    ASSERT(gguf_tensor_at(f, N_META_TENSORS) == NULL);
    ASSERT(gguf_find_tensor(f, "nope") == NULL);
    ASSERT(gguf_find_tensor(f, "q4_") == NULL);
    ASSERT_STREQ(gguf_type_name(GGUF_T_Q5_K), "Q5_K");
    ASSERT_STREQ(gguf_type_name(4), "?");
    ASSERT_EQ(gguf_type_block(GGUF_T_Q6_K), 256);
    ASSERT_EQ(gguf_type_bytes(GGUF_T_Q6_K), 210);
    ASSERT(gguf_type_supported(GGUF_T_Q4_1) && gguf_type_bytes(GGUF_T_Q4_1) == 20);
    ASSERT(!gguf_type_supported(GGUF_T_Q8_1) && gguf_type_bytes(GGUF_T_Q8_1) == 40);
    ASSERT_EQ(gguf_row_bytes(GGUF_T_Q4_K, 300), 0);
    free(raw);
    gguf_close(f);
}

/* Every tensor of meta.gguf dequantized by qref_dequantize equals gguf-py's values bit for
 * bit: both compute d·q (and d·sc·q − dmin·m) with the same f32 roundings, f16→f32 is exact. */
TEST(dequantize_vs_gguf_py) {
    gguf_file *f = open_fixture("meta.gguf");
    for (int i = 0; i < N_META_TENSORS; i++) {
        const gguf_tensor *t = gguf_find_tensor(f, meta_tensors[i].name);
        ASSERT(t);
        float *ref = read_ref(t->name, t->numel);
        float *out = malloc((size_t)t->numel * 4);
        ASSERT_EQ(qref_dequantize(t->type, t->data, out, t->numel), 0);
        int64_t mismatches = 0;
        double maxd = 0;
        for (int64_t j = 0; j < t->numel; j++) {
            if (memcmp(&out[j], &ref[j], 4) != 0) mismatches++;
            double dd = fabs((double)out[j] - ref[j]);
            if (dd > maxd) maxd = dd;
        }
        printf("  %-8s %-5s %6lld values: max |diff| %.3g, %lld not bit-identical\n", t->name,
               gguf_type_name(t->type), (long long)t->numel, maxd, (long long)mismatches);
        if (mismatches) FAIL("%s: %lld values differ from gguf-py", t->name, (long long)mismatches);
        free(ref);
        free(out);
    }
    /* Unsupported types and partial blocks are refused. */
    float y[256];
    ASSERT_EQ(qref_dequantize(GGUF_T_Q8_1, y, y, 32), PEFTD_EUNSUPPORTED);
    ASSERT_EQ(qref_dequantize(GGUF_T_Q4_K, y, y, 128), PEFTD_EINVAL);
    gguf_close(f);
}

TEST(quantize_q8_0_vs_gguf_py) {
    gguf_file *f = open_fixture("meta.gguf");
    const gguf_tensor *src = gguf_find_tensor(f, "f32_src"), *q = gguf_find_tensor(f, "q8_0");
    ASSERT(src && q);
    uint8_t *out = malloc(q->nbytes);
    ASSERT_EQ(qref_quantize_q8_0(src->data, out, src->numel), 0);
    for (uint64_t b = 0; b < q->nbytes; b++)
        if (out[b] != ((const uint8_t *)q->data)[b])
            FAIL("byte %llu: %u, gguf-py wrote %u", (unsigned long long)b, out[b],
                 ((const uint8_t *)q->data)[b]);
    ASSERT_EQ(qref_quantize_q8_0(src->data, out, 33), PEFTD_EINVAL);
    free(out);
    gguf_close(f);
}

/* Q4_K quantization: gguf-py cannot quantize Q4_K, so the check is dequant(quant(x)) against
 * x: per 32-element sub-block, |error| < 1 step of range/15 (0.5 from rounding the level, the
 * rest from the 6-bit scale/min and f16 d/dmin roundings), and
 * the relative RMS error of 4-bit quantization (≈ 1/(15·√12) of the range, ~2-4% of the RMS
 * of uniform/normal data). Exact cases: zeros stay zeros, a block whose values are exactly on
 * a Q4_K grid is reproduced. */
TEST(quantize_q4_k_roundtrip) {
    enum { N = 256 * 64 };
    float *x = malloc(N * 4), *y = malloc(N * 4);
    uint8_t *q = malloc(N / 256 * 144);
    test_rng_seed(7);
    for (int dist = 0; dist < 3; dist++) {
        for (int i = 0; i < N; i++) {
            float u = test_rng_f();
            x[i] = dist == 0 ? u : dist == 1 ? u * u * u * 4.0f /* heavy near 0 */
                                             : u + (i % 256 < 32 ? 3.0f : 0.0f); /* offset */
        }
        ASSERT_EQ(qref_quantize_q4_k(x, q, N), 0);
        ASSERT_EQ(qref_dequantize(GGUF_T_Q4_K, q, y, N), 0);
        double se = 0, sx = 0, worst = 0;
        for (int s = 0; s < N / 32; s++) {
            float lo = 0, hi = 0; /* the fit always includes 0 in its range */
            for (int l = 0; l < 32; l++) {
                lo = fminf(lo, x[32 * s + l]);
                hi = fmaxf(hi, x[32 * s + l]);
            }
            for (int l = 0; l < 32; l++) {
                double e = fabs((double)y[32 * s + l] - x[32 * s + l]);
                double r = e / ((hi - lo) / 15.0);
                if (r > worst) worst = r;
                se += e * e;
                sx += (double)x[32 * s + l] * x[32 * s + l];
            }
        }
        double rel = sqrt(se / sx);
        printf("  dist %d: rel RMS error %.4f, worst |err| %.3f steps of range/15\n", dist, rel,
               worst);
        /* Measured 0.0545 / 0.0714 / 0.0319; the plain min/max grid without the scale
         * search gives 0.0586 / 0.0762 / 0.0340 and must fail. */
        static const double max_rel[3] = {0.057, 0.074, 0.0332};
        ASSERT(rel < max_rel[dist]);
        ASSERT(worst < 1.0);
    }
    memset(x, 0, 256 * 4);
    ASSERT_EQ(qref_quantize_q4_k(x, q, 256), 0);
    ASSERT_EQ(qref_dequantize(GGUF_T_Q4_K, q, y, 256), 0);
    for (int i = 0; i < 256; i++) ASSERT(y[i] == 0.0f);
    ASSERT_EQ(qref_quantize_q4_k(x, q, 100), PEFTD_EINVAL);
    free(x);
    free(y);
    free(q);
}

TEST(tiny_and_versions) {
    gguf_file *f = open_fixture("tiny.gguf");
    char err[512] = "";
    ASSERT_EQ(gguf_alignment(f), 64);
    ASSERT_EQ(gguf_data_offset(f) % 64, 0);
    const gguf_tensor *b = gguf_find_tensor(f, "b.weight");
    ASSERT(b && b->type == GGUF_T_Q8_0 && b->offset == 64 && b->nbytes == 68);
    gguf_close(f);
    size_t len = 0;
    uint8_t *raw = (uint8_t *)test_read_file(FIX "tiny.gguf", &len);
    ASSERT(raw && len > 24);
    raw[4] = 2; /* v2 has v3's layout */
    ASSERT_EQ(gguf_parse(raw, len, "v2", &f, err, sizeof err), 0);
    ASSERT_EQ(gguf_version(f), 2);
    gguf_close(f);
    raw[4] = 1;
    ASSERT_EQ(gguf_parse(raw, len, "v1", &f, err, sizeof err), PEFTD_EUNSUPPORTED);
    ASSERT(f == NULL && strstr(err, "v1: GGUF version 1 is not supported"));
    raw[4] = 4;
    ASSERT_EQ(gguf_parse(raw, len, "v4", &f, err, sizeof err), PEFTD_EUNSUPPORTED);
    free(raw);
    ASSERT_EQ(gguf_open(FIX "big_endian.gguf", &f, err, sizeof err), PEFTD_EUNSUPPORTED);
    ASSERT(strstr(err, "big-endian GGUF file"));
    ASSERT_EQ(gguf_open(FIX "no_such.gguf", &f, err, sizeof err), -ENOENT);
    ASSERT(strstr(err, "no_such.gguf: cannot open"));
    ASSERT_EQ(gguf_open(FIX "make_gguf_fixtures.py", &f, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "not a GGUF file"));
}

/* Every prefix of the two fixtures: refused cleanly while a byte any tensor needs is
 * missing, accepted once only trailing padding is cut. */
TEST(truncated_every_length) {
    const char *names[] = {"tiny.gguf", "meta.gguf"};
    for (int k = 0; k < 2; k++) {
        char path[256], err[512];
        size_t len = 0;
        snprintf(path, sizeof path, FIX "%s", names[k]);
        uint8_t *raw = (uint8_t *)test_read_file(path, &len);
        ASSERT(raw);
        gguf_file *f = NULL;
        ASSERT_EQ(gguf_parse(raw, len, "full", &f, err, sizeof err), 0);
        uint64_t need = 0;
        for (size_t i = 0; i < gguf_tensor_count(f); i++) {
            const gguf_tensor *t = gguf_tensor_at(f, i);
            uint64_t end = gguf_data_offset(f) + t->offset + t->nbytes;
            if (end > need) need = end;
        }
        gguf_close(f);
        int refused = 0;
        for (size_t n = 0; n < len; n++) {
            uint8_t *cut = malloc(n ? n : 1); /* exact size: ASan sees any over-read */
            memcpy(cut, raw, n);
            err[0] = 0;
            int rc = gguf_parse(cut, n, "cut", &f, err, sizeof err);
            if (n < need) {
                if (rc >= 0) FAIL("%s cut to %zu bytes (< %llu) was accepted", names[k], n,
                                  (unsigned long long)need);
                if (!err[0] || strchr(err, '\n')) FAIL("cut to %zu: bad message '%s'", n, err);
                ASSERT(f == NULL);
                refused++;
            } else {
                if (rc != 0) FAIL("%s cut to %zu (>= %llu): %s", names[k], n,
                                  (unsigned long long)need, err);
                gguf_close(f);
            }
            free(cut);
        }
        printf("  %s: %d prefixes refused, %zu accepted\n", names[k], refused, len - refused);
        free(raw);
    }
}

/* Q5_0, Q4_1, Q5_1, IQ4_NL, IQ4_XS, Q3_K, Q2_K (block32.gguf, make_block32_fixtures.py): gguf-py's quantization of
 * meta.gguf's source rows and random blocks (every code and 5th-bit pattern, subnormal / negative
 * / zero scales and mins) dequantized bit for bit as gguf-py does, the tensors read with their
 * type and size, and qref_quantize_* writing gguf-py's bytes (ties included). IQ4_NL, IQ4_XS,
 * Q3_K, Q2_K: random blocks only (neither gguf-py nor peftd quantizes to it; peftd reads it from files). */
TEST(block32_types_vs_gguf_py) {
    static const struct {
        const char *name, *type;
        uint32_t id, bytes;
        int (*quantize)(const float *, void *, int64_t);
    } T[] = {{"q5_0", "Q5_0", GGUF_T_Q5_0, 22, qref_quantize_q5_0},
             {"q4_1", "Q4_1", GGUF_T_Q4_1, 20, qref_quantize_q4_1},
             {"q5_1", "Q5_1", GGUF_T_Q5_1, 24, qref_quantize_q5_1},
             {"iq4_nl", "IQ4_NL", GGUF_T_IQ4_NL, 18, NULL},
             {"iq4_xs", "IQ4_XS", GGUF_T_IQ4_XS, 136, NULL},
             {"q3_k", "Q3_K", GGUF_T_Q3_K, 110, NULL},
             {"q2_k", "Q2_K", GGUF_T_Q2_K, 84, NULL}};
    gguf_file *f = open_fixture("block32.gguf");
    const gguf_tensor *src = gguf_find_tensor(f, "f32_src");
    ASSERT(src && src->type == GGUF_T_F32 && src->numel == 256);
    for (size_t k = 0; k < sizeof T / sizeof T[0]; k++) {
        for (int rnd = T[k].quantize ? 0 : 1; rnd < 2; rnd++) {
            char name[32];
            snprintf(name, sizeof name, "%s%s", T[k].name, rnd ? "_rnd" : "");
            const gguf_tensor *t = gguf_find_tensor(f, name);
            ASSERT(t && t->type == T[k].id);
            ASSERT_EQ(t->nbytes, (uint64_t)(t->numel / gguf_type_block(t->type) * T[k].bytes));
            ASSERT_STREQ(gguf_type_name(t->type), T[k].type);
            float *ref = read_ref(t->name, t->numel), *out = malloc((size_t)t->numel * 4);
            ASSERT(out);
            ASSERT_EQ(qref_dequantize(t->type, t->data, out, t->numel), 0);
            int64_t bad = 0;
            for (int64_t j = 0; j < t->numel; j++) bad += memcmp(&out[j], &ref[j], 4) != 0;
            printf("  %-8s %s %4lld values, %lld not bit-identical to gguf-py\n", t->name, T[k].type,
                   (long long)t->numel, (long long)bad);
            if (bad) FAIL("%s: %lld values differ from gguf-py", t->name, (long long)bad);
            free(ref);
            free(out);
        }
        if (!T[k].quantize) continue;
        const gguf_tensor *q = gguf_find_tensor(f, T[k].name);
        uint8_t *out = malloc(q->nbytes);
        ASSERT(out);
        ASSERT_EQ(T[k].quantize(src->data, out, src->numel), 0);
        for (uint64_t b = 0; b < q->nbytes; b++)
            if (out[b] != ((const uint8_t *)q->data)[b])
                FAIL("%s byte %llu: %u, gguf-py wrote %u", T[k].type, (unsigned long long)b, out[b],
                     ((const uint8_t *)q->data)[b]);
        ASSERT_EQ(T[k].quantize(src->data, out, 33), PEFTD_EINVAL);
        free(out);
    }
    gguf_close(f);
}

TEST_MAIN(meta_scalars, meta_type_confusion, meta_arrays, tensor_views, dequantize_vs_gguf_py,
          quantize_q8_0_vs_gguf_py, quantize_q4_k_roundtrip, tiny_and_versions,
          truncated_every_length, block32_types_vs_gguf_py)
