/* tests/unit/test_safetensors.c — the safetensors reader: exact tensor info for valid
 * images, exact status codes (and no crash) for hostile ones, and a round trip through a
 * temporary file and mmap. Images are built in memory by st_image(). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapter_store/safetensors.h"
#include "tests/harness/test.h"

/* An image: 8-byte LE header length (= strlen(header) unless hlen_override >= 0), the
 * header, then data_len bytes counting up from 0. Caller frees. */
static uint8_t *st_image_ex(const char *header, int64_t hlen_override, size_t data_len,
                            size_t *len) {
    size_t hl = strlen(header);
    uint64_t written = hlen_override >= 0 ? (uint64_t)hlen_override : hl;
    *len = 8 + hl + data_len;
    uint8_t *b = malloc(*len ? *len : 1);
    ASSERT(b);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(written >> (8 * i));
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) b[8 + hl + i] = (uint8_t)i;
    return b;
}

static uint8_t *st_image(const char *header, size_t data_len, size_t *len) {
    return st_image_ex(header, -1, data_len, len);
}

/* Parses header + data_len bytes; returns the status, closing any file. */
static int parse_rc(const char *header, size_t data_len, char *err, size_t errlen) {
    size_t len;
    uint8_t *b = st_image(header, data_len, &len);
    st_file *f = (st_file *)1;
    err[0] = 0;
    int rc = st_parse(b, len, "t.safetensors", &f, err, errlen);
    if (rc == 0) ASSERT(f != NULL);
    else ASSERT(f == NULL);
    st_close(f);
    free(b);
    return rc;
}

/* Asserts that parsing fails with `want` and that the message contains `needle`. */
static void expect_fail(const char *header, size_t data_len, int want, const char *needle) {
    char err[512];
    int rc = parse_rc(header, data_len, err, sizeof err);
    if (rc != want) FAIL("header %.200s: rc %d (%s), want %d; err: %s", header, rc,
                         peftd_strerror(rc), want, err);
    if (needle && !strstr(err, needle))
        FAIL("header %.200s: error \"%s\" lacks \"%s\"", header, err, needle);
}

TEST(valid_file_exact_info) {
    const char *h =
        "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"},"
        "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[24,30]},"
        "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[30,38]},"
        "\"e\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[38,38]}}";
    size_t len;
    uint8_t *b = st_image(h, 38, &len);
    st_file *f;
    char err[256] = "";
    ASSERT_EQ(st_parse(b, len, "x", &f, err, sizeof err), 0);
    ASSERT_EQ(st_count(f), 4);
    const uint8_t *data = b + 8 + strlen(h);

    const st_tensor *w = st_get(f, 0);
    ASSERT_STREQ(w->name, "w");
    ASSERT_EQ(w->dtype, ST_F32);
    ASSERT_EQ(w->ndim, 2);
    ASSERT_EQ(w->shape[0], 2);
    ASSERT_EQ(w->shape[1], 3);
    ASSERT_EQ(w->numel, 6);
    ASSERT_EQ(w->offset, 0);
    ASSERT_EQ(w->nbytes, 24);
    ASSERT(w->data == data);

    const st_tensor *bt = st_find(f, "b");
    ASSERT(bt == st_get(f, 1));
    ASSERT_EQ(st_index(f, bt), 1);
    ASSERT_EQ(bt->dtype, ST_BF16);
    ASSERT_EQ(bt->ndim, 1);
    ASSERT_EQ(bt->shape[0], 3);
    ASSERT_EQ(bt->nbytes, 6);
    ASSERT(bt->data == data + 24);

    const st_tensor *s = st_find(f, "s");
    ASSERT_EQ(s->ndim, 0);
    ASSERT_EQ(s->numel, 1);
    ASSERT_EQ(s->nbytes, 8);
    /* Offset 30 is not 8-aligned: the reader hands out unaligned pointers as they are. */
    ASSERT(s->data == data + 30);

    const st_tensor *e = st_find(f, "e");
    ASSERT_EQ(e->numel, 0);
    ASSERT_EQ(e->nbytes, 0);

    ASSERT(st_find(f, "nope") == NULL);
    ASSERT(st_find(f, "") == NULL);
    ASSERT(st_get(f, 4) == NULL);

    kdtype kd;
    ASSERT(st_dtype_to_kdtype(w->dtype, &kd) && kd == KDT_F32);
    ASSERT(st_dtype_to_kdtype(bt->dtype, &kd) && kd == KDT_BF16);
    ASSERT(st_dtype_to_kdtype(ST_F16, &kd) && kd == KDT_F16);
    ASSERT(!st_dtype_to_kdtype(s->dtype, &kd));

    ASSERT_EQ(st_metadata_count(f), 2);
    const char *k, *v;
    ASSERT_EQ(st_metadata_get(f, 1, &k, &v), 0);
    ASSERT_STREQ(k, "note");
    ASSERT_STREQ(v, "x");
    ASSERT_EQ(st_metadata_get(f, 2, &k, &v), PEFTD_ERANGE);
    ASSERT_STREQ(st_metadata_find(f, "format"), "pt");
    ASSERT(st_metadata_find(f, "missing") == NULL);
    ASSERT_STREQ(st_label(f), "x");
    st_close(f);
    free(b);
}

TEST(every_dtype_parses_with_its_size) {
    static const struct { const char *name; st_dtype t; size_t size; } dts[] = {
        {"BOOL", ST_BOOL, 1}, {"U8", ST_U8, 1},     {"I8", ST_I8, 1},
        {"F8_E4M3", ST_F8_E4M3, 1}, {"F8_E5M2", ST_F8_E5M2, 1}, {"F8_E8M0", ST_F8_E8M0, 1},
        {"I16", ST_I16, 2},   {"U16", ST_U16, 2},   {"F16", ST_F16, 2},
        {"BF16", ST_BF16, 2}, {"I32", ST_I32, 4},   {"U32", ST_U32, 4},
        {"F32", ST_F32, 4},   {"I64", ST_I64, 8},   {"U64", ST_U64, 8},
        {"F64", ST_F64, 8},   {"C64", ST_C64, 8},
    };
    for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++) {
        char h[256], err[256];
        size_t len;
        snprintf(h, sizeof h, "{\"t\":{\"dtype\":\"%s\",\"shape\":[5],\"data_offsets\":[0,%zu]}}",
                 dts[i].name, 5 * dts[i].size);
        uint8_t *b = st_image(h, 5 * dts[i].size, &len);
        st_file *f;
        int rc = st_parse(b, len, NULL, &f, err, sizeof err);
        if (rc) FAIL("%s: %s", dts[i].name, err);
        ASSERT_EQ(st_get(f, 0)->dtype, dts[i].t);
        ASSERT_EQ(st_dtype_size(dts[i].t), dts[i].size);
        ASSERT_STREQ(st_dtype_name(dts[i].t), dts[i].name);
        st_close(f);
        free(b);
    }
}

TEST(empty_header_object_and_padding) {
    char err[256];
    ASSERT_EQ(parse_rc("{}", 0, err, sizeof err), 0);
    /* Writers pad with spaces to align the data area. */
    ASSERT_EQ(parse_rc("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}     ", 1,
                       err, sizeof err),
              0);
    ASSERT_EQ(parse_rc("  {} \n\t", 0, err, sizeof err), 0);
    /* Trailing data bytes and gaps between tensors are harmless. */
    ASSERT_EQ(parse_rc("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[4,5]}}", 16, err,
                       sizeof err),
              0);
    ASSERT_EQ(parse_rc("{\"__metadata__\":null}", 0, err, sizeof err), 0);
}

TEST(header_length_bounds) {
    char err[256];
    size_t len;
    st_file *f;
    uint8_t *b = st_image("{}", 0, &len);
    ASSERT_EQ(st_parse(b, 0, "t", &f, err, sizeof err), PEFTD_EFORMAT);
    ASSERT_EQ(st_parse(b, 7, "t", &f, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "too short"));
    ASSERT_EQ(st_parse(NULL, 0, "t", &f, err, sizeof err), PEFTD_EFORMAT);
    free(b);

    static const int64_t bad[] = {0, 3, 1000, (int64_t)ST_MAX_HEADER + 1, INT64_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        b = st_image_ex("{}", bad[i], 0, &len);
        int rc = st_parse(b, len, "t", &f, err, sizeof err);
        if (rc != PEFTD_EFORMAT) FAIL("hlen %lld: rc %d", (long long)bad[i], rc);
        ASSERT(strstr(err, "header length"));
        free(b);
    }
    /* 2^64 - 1: the LE decode must not wrap. */
    b = st_image("{}", 0, &len);
    memset(b, 0xff, 8);
    ASSERT_EQ(st_parse(b, len, "t", &f, err, sizeof err), PEFTD_EFORMAT);
    free(b);
    /* Header length one short: the JSON is cut off. */
    b = st_image_ex("{}", 1, 0, &len);
    ASSERT_EQ(st_parse(b, len, "t", &f, err, sizeof err), PEFTD_EFORMAT);
    free(b);
}

TEST(header_not_json_or_not_object) {
    expect_fail("not json", 0, PEFTD_EFORMAT, "not valid JSON");
    expect_fail("{\"a\":", 0, PEFTD_EFORMAT, "not valid JSON");
    expect_fail("[1,2]", 0, PEFTD_EFORMAT, "not a JSON object");
    expect_fail("\"str\"", 0, PEFTD_EFORMAT, "not a JSON object");
    expect_fail("42", 0, PEFTD_EFORMAT, "not a JSON object");
    expect_fail("null", 0, PEFTD_EFORMAT, "not a JSON object");
    expect_fail("{} x", 0, PEFTD_EFORMAT, "after the header JSON");
    expect_fail("{}{}", 0, PEFTD_EFORMAT, "after the header JSON");
    /* Deep nesting hits cJSON's nesting limit, not the stack. */
    char deep[20001];
    memset(deep, '[', 20000);
    deep[20000] = 0;
    expect_fail(deep, 0, PEFTD_EFORMAT, "not valid JSON");
}

TEST(header_with_nul_byte) {
    const char h[] = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    size_t len;
    uint8_t *b = st_image(h, 1, &len);
    b[8 + 3] = 0; /* inside the name: JSON forbids raw control characters in strings */
    st_file *f;
    char err[256];
    ASSERT_EQ(st_parse(b, len, "t", &f, err, sizeof err), PEFTD_EFORMAT);
    free(b);
}

TEST(offsets_hostile) {
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 3,
                PEFTD_EFORMAT, "outside the data area");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[1000000,1000004]}}", 8,
                PEFTD_EFORMAT, "'a'");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,2]}}", 8,
                PEFTD_EFORMAT, "outside the data area");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 8,
                PEFTD_EFORMAT, "data_offsets");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 8,
                PEFTD_EFORMAT, "data_offsets");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 8,
                PEFTD_EFORMAT, "data_offsets");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[\"0\",\"1\"]}}", 8,
                PEFTD_EFORMAT, "data_offsets");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":{\"0\":1}}}", 8,
                PEFTD_EFORMAT, "data_offsets");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                "\"data_offsets\":[18446744073709551615,18446744073709551616]}}",
                8, PEFTD_EFORMAT, "data_offsets");
}

TEST(overlap_rejected) {
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[3,7]}}",
                8, PEFTD_EFORMAT, "overlap");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]},"
                "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}",
                8, PEFTD_EFORMAT, "overlap");
    /* Two names for the same bytes. */
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                "\"b\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
                8, PEFTD_EFORMAT, "overlap");
    /* Adjacent is fine; an empty tensor inside another owns no bytes. */
    char err[256];
    ASSERT_EQ(parse_rc("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                       "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[2,2]},"
                       "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
                       8, err, sizeof err),
              0);
}

TEST(size_must_match_shape_and_dtype) {
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 16,
                PEFTD_EFORMAT, "'a'");
    expect_fail("{\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16,
                PEFTD_EFORMAT, "shape");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,0]}}", 16,
                PEFTD_EFORMAT, "'a'");
}

TEST(shape_hostile) {
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 8,
                PEFTD_EFORMAT, "shape[0]");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[2.5],\"data_offsets\":[0,0]}}", 8,
                PEFTD_EFORMAT, "non-integer");
    /* 3.0 equals 3 as a double, but a writer that emits it is not writing safetensors. */
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[3.0],\"data_offsets\":[0,3]}}", 8,
                PEFTD_EFORMAT, "non-integer");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[3e0],\"data_offsets\":[0,3]}}", 8,
                PEFTD_EFORMAT, "non-integer");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[\"3\"],\"data_offsets\":[0,3]}}", 8,
                PEFTD_EFORMAT, "shape[0]");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[null],\"data_offsets\":[0,3]}}", 8,
                PEFTD_EFORMAT, "shape[0]");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,[2]],\"data_offsets\":[0,2]}}", 8,
                PEFTD_EFORMAT, "shape[1]");
    /* Beyond 2^53 a double is no longer exact. */
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[100000000000000000000],"
                "\"data_offsets\":[0,0]}}",
                8, PEFTD_EFORMAT, "shape[0]");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[9007199254740992],\"data_offsets\":[0,0]}}",
                8, PEFTD_EFORMAT, "shape[0]");
    /* Products that overflow 64 bits, in elements or in bytes. */
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4294967296],"
                "\"data_offsets\":[0,0]}}",
                8, PEFTD_EFORMAT, "overflow");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
                "\"data_offsets\":[0,0]}}",
                8, PEFTD_EFORMAT, "overflow");
    expect_fail("{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,1073741824],"
                "\"data_offsets\":[0,0]}}",
                8, PEFTD_EFORMAT, "'a'");
    /* A zero dim makes the product 0 whatever follows. */
    char err[256];
    ASSERT_EQ(parse_rc("{\"a\":{\"dtype\":\"U8\",\"shape\":[0,9007199254740991,9007199254740991],"
                       "\"data_offsets\":[0,0]}}",
                       8, err, sizeof err),
              0);
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
                8, PEFTD_EFORMAT, "dims");
    ASSERT_EQ(parse_rc("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1],"
                       "\"data_offsets\":[0,1]}}",
                       8, err, sizeof err),
              0);
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":3,\"data_offsets\":[0,3]}}", 8,
                PEFTD_EFORMAT, "not an array");
}

TEST(dtype_hostile) {
    expect_fail("{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16,
                PEFTD_EUNSUPPORTED, "F128");
    expect_fail("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 16,
                PEFTD_EUNSUPPORTED, "f32");
    expect_fail("{\"a\":{\"dtype\":\"\",\"shape\":[1],\"data_offsets\":[0,4]}}", 16,
                PEFTD_EUNSUPPORTED, "dtype");
    expect_fail("{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 16, PEFTD_EFORMAT,
                "not a string");
    expect_fail("{\"a\":{\"dtype\":null,\"shape\":[1],\"data_offsets\":[0,4]}}", 16,
                PEFTD_EFORMAT, "not a string");
    expect_fail("{\"a\":{\"dtype\":[\"F32\"],\"shape\":[1],\"data_offsets\":[0,4]}}", 16,
                PEFTD_EFORMAT, "not a string");
}

TEST(entry_structure) {
    expect_fail("{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 8, PEFTD_EFORMAT,
                "missing \"dtype\"");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 8, PEFTD_EFORMAT,
                "missing \"shape\"");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 8, PEFTD_EFORMAT,
                "missing \"data_offsets\"");
    expect_fail("{\"a\":[1,2]}", 8, PEFTD_EFORMAT, "not an object");
    expect_fail("{\"a\":\"F32\"}", 8, PEFTD_EFORMAT, "not an object");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                8, PEFTD_EFORMAT, "duplicate key");
    /* Unknown keys are ignored, like the reference implementation. */
    char err[256];
    ASSERT_EQ(parse_rc("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":{}}}",
                       8, err, sizeof err),
              0);
}

TEST(names_hostile) {
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                8, PEFTD_EFORMAT, "duplicate tensor name 'a'");
    expect_fail("{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 8,
                PEFTD_EFORMAT, "tensor name");
    /* \u0000 ends the C string early: both names become "a" and collide. */
    expect_fail("{\"a\\u0000x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                "\"a\\u0000y\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                8, PEFTD_EFORMAT, "duplicate");

    char *h = malloc(4096), *name = malloc(ST_MAX_NAME + 2), err[256];
    memset(name, 'n', ST_MAX_NAME);
    name[ST_MAX_NAME] = 0;
    snprintf(h, 4096, "{\"%s\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", name);
    ASSERT_EQ(parse_rc(h, 8, err, sizeof err), 0);
    name[ST_MAX_NAME] = 'n';
    name[ST_MAX_NAME + 1] = 0;
    snprintf(h, 4096, "{\"%s\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", name);
    expect_fail(h, 8, PEFTD_EFORMAT, "tensor name of 1025 bytes");
    free(h);
    free(name);
}

TEST(metadata_hostile) {
    expect_fail("{\"__metadata__\":{\"a\":1}}", 0, PEFTD_EFORMAT, "not a string");
    expect_fail("{\"__metadata__\":{\"a\":{}}}", 0, PEFTD_EFORMAT, "not a string");
    expect_fail("{\"__metadata__\":[\"a\"]}", 0, PEFTD_EFORMAT, "__metadata__");
    expect_fail("{\"__metadata__\":\"a\"}", 0, PEFTD_EFORMAT, "__metadata__");
    expect_fail("{\"__metadata__\":{},\"__metadata__\":{}}", 0, PEFTD_EFORMAT, "duplicate");
    expect_fail("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, PEFTD_EFORMAT, "duplicate");
}

/* Issue 9 #6: a header of huge shape arrays cost 2.46 GB of RSS (60 MB header) before it
 * was refused. Now the value count is bounded before cJSON allocates: a 7.9 MB header of
 * "[0,0,...]" (~4M values; ~256 MB of cJSON tree on the old code) is refused with the
 * reason, and the process grows by far less than that tree (loose bound: 64 MB). A
 * header over ST_MAX_HEADER (8 MiB) is refused by its length alone. */
TEST(hostile_header_bounded_before_parsing) {
    size_t hl = (size_t)ST_MAX_HEADER - 4096, off = 0;
    char *h = malloc(hl + 1);
    ASSERT(h);
    off += (size_t)snprintf(h, hl, "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,0],\"shape\":[0");
    while (off + 8 < hl) {
        h[off++] = ',';
        h[off++] = '0';
    }
    memcpy(h + off, "]}}", 4);
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    size_t len;
    uint8_t *b = st_image(h, 0, &len);
    free(h);
    st_file *f = (st_file *)1;
    char err[256];
    ASSERT_EQ(st_parse(b, len, "t", &f, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(f == NULL);
    ASSERT(strstr(err, "JSON values, over the limit"));
    free(b);
    getrusage(RUSAGE_SELF, &ru1);
    /* ru_maxrss is in kB; the image itself (8 MB) and the header copy count too */
    if (ru1.ru_maxrss - ru0.ru_maxrss > 64 * 1024)
        FAIL("peak RSS grew by %ld kB parsing a hostile header", ru1.ru_maxrss - ru0.ru_maxrss);
    /* just over the byte bound: refused from the length field */
    b = st_image_ex("{}", (int64_t)ST_MAX_HEADER + 1, 0, &len);
    ASSERT_EQ(st_parse(b, len, "t", &f, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "over the 8 MiB limit"));
    free(b);
    /* the value bound itself: quotes and escapes do not count, containers and commas do */
    const char *j = "{\"a,[{\\\"\":[1,2]}";
    ASSERT_EQ(st_json_value_bound(j, strlen(j)), 4);
}

TEST(many_tensors_find) {
    /* 2000 tensors listed in reverse name order: find must use the sorted index. */
    enum { N = 2000 };
    size_t cap = (size_t)N * 96 + 16, off = 0;
    char *h = malloc(cap);
    off += (size_t)snprintf(h + off, cap - off, "{");
    for (int i = N - 1; i >= 0; i--)
        off += (size_t)snprintf(h + off, cap - off,
                                "%s\"t%05d\":{\"dtype\":\"I16\",\"shape\":[2],"
                                "\"data_offsets\":[%d,%d]}",
                                i == N - 1 ? "" : ",", i, 4 * i, 4 * i + 4);
    snprintf(h + off, cap - off, "}");
    size_t len;
    uint8_t *b = st_image(h, 4 * N, &len);
    st_file *f;
    char err[256];
    ASSERT_EQ(st_parse(b, len, "t", &f, err, sizeof err), 0);
    ASSERT_EQ(st_count(f), N);
    for (int i = 0; i < N; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%05d", i);
        const st_tensor *t = st_find(f, name);
        ASSERT(t);
        ASSERT_STREQ(t->name, name);
        ASSERT_EQ(t->offset, 4 * i);
        ASSERT(st_get(f, (size_t)(N - 1 - i)) == t);
    }
    st_close(f);
    free(b);
    free(h);
}

TEST(roundtrip_file_mmap) {
    const char *h = "{\"__metadata__\":{\"format\":\"pt\"},"
                    "\"x\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                    "\"y\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]}}";
    size_t len;
    uint8_t *b = st_image(h, 22, &len);
    float xs[4] = {1.5f, -2.0f, 3.25f, 1e-3f};
    memcpy(b + 8 + strlen(h), xs, sizeof xs);
    char path[] = "/tmp/peftd_st_XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, b, len), (long long)len);
    close(fd);

    st_file *f;
    char err[256] = "";
    int rc = st_open(path, &f, err, sizeof err);
    if (rc) FAIL("%s", err);
    ASSERT_STREQ(st_label(f), path);
    ASSERT_EQ(st_count(f), 2);
    const st_tensor *x = st_find(f, "x");
    ASSERT(x && x->dtype == ST_F32 && x->nbytes == 16);
    ASSERT(x->data != b + 8 + strlen(h)); /* it is the mapping, not our buffer */
    ASSERT_EQ(memcmp(x->data, xs, sizeof xs), 0);
    const st_tensor *y = st_find(f, "y");
    ASSERT_EQ(memcmp(y->data, b + 8 + strlen(h) + 16, 6), 0);
    ASSERT_STREQ(st_metadata_find(f, "format"), "pt");
    st_close(f);

    /* A truncated file fails cleanly. */
    ASSERT_EQ(truncate(path, (off_t)(len - 1)), 0);
    ASSERT_EQ(st_open(path, &f, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, path) && strstr(err, "'y'"));
    ASSERT(f == NULL);
    ASSERT_EQ(truncate(path, 3), 0);
    ASSERT_EQ(st_open(path, &f, err, sizeof err), PEFTD_EFORMAT);
    ASSERT_EQ(truncate(path, 0), 0);
    ASSERT_EQ(st_open(path, &f, err, sizeof err), PEFTD_EFORMAT);
    unlink(path);
    free(b);
}

TEST(open_errors) {
    st_file *f = (st_file *)1;
    char err[256];
    ASSERT_EQ(st_open("/nonexistent/peftd.safetensors", &f, err, sizeof err), -ENOENT);
    ASSERT(f == NULL);
    ASSERT(strstr(err, "/nonexistent/peftd.safetensors"));
    ASSERT_EQ(st_open("/tmp", &f, err, sizeof err), PEFTD_EIO);
    ASSERT(strstr(err, "not a regular file"));
    st_close(NULL);
}

TEST(null_err_buffer) {
    size_t len;
    uint8_t *b = st_image("nope", 0, &len);
    st_file *f;
    ASSERT_EQ(st_parse(b, len, NULL, &f, NULL, 0), PEFTD_EFORMAT);
    free(b);
}

TEST_MAIN(hostile_header_bounded_before_parsing, valid_file_exact_info, every_dtype_parses_with_its_size, empty_header_object_and_padding,
          header_length_bounds, header_not_json_or_not_object, header_with_nul_byte,
          offsets_hostile, overlap_rejected, size_must_match_shape_and_dtype, shape_hostile,
          dtype_hostile, entry_structure, names_hostile, metadata_hostile, many_tensors_find,
          roundtrip_file_mmap, open_errors, null_err_buffer)
