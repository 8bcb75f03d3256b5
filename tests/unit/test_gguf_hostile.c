/* tests/unit/test_gguf_hostile.c — hostile GGUF images, built byte by byte, each refused by
 * gguf_parse with the expected status and a one-line message naming what is wrong: bad
 * magic, huge counts, strings/arrays past the end, unknown value and tensor types, bool
 * bytes, nesting depth, absurd dims and element-count overflow, rows that are not whole
 * blocks, misaligned / out-of-file / overlapping offsets, duplicate keys and tensor names,
 * general.alignment of the wrong type or value. Every image is parsed from a buffer of its
 * exact size, so an over-read is an ASan error under `make asan`.
 */
#include "tests/harness/test.h"

#include "server/model/gguf.h"

typedef struct {
    uint8_t *p;
    size_t n, cap;
} gbuf;

static void put(gbuf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        ASSERT(b->p);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u32(gbuf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(gbuf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(gbuf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void header(gbuf *b, uint64_t n_tensors, uint64_t n_kv) {
    put(b, "GGUF", 4);
    put_u32(b, 3);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}
static void kv_u32(gbuf *b, const char *key, uint32_t v) {
    put_str(b, key);
    put_u32(b, GGUF_VT_U32);
    put_u32(b, v);
}
/* A tensor info with dims ne[0..nd). */
static void tinfo(gbuf *b, const char *name, uint32_t nd, const uint64_t *ne, uint32_t type,
                  uint64_t off) {
    put_str(b, name);
    put_u32(b, nd);
    for (uint32_t i = 0; i < nd; i++) put_u64(b, ne[i]);
    put_u32(b, type);
    put_u64(b, off);
}
static void pad_to(gbuf *b, size_t align) {
    static const uint8_t z[64];
    while (b->n % align) put(b, z, 1);
}
static void zeros(gbuf *b, size_t n) {
    for (size_t i = 0; i < n; i++) put(b, "", 1);
}

/* Parses b (an exact-size copy), expects rc and a message containing want; frees b. */
static void expect(gbuf *b, int rc, const char *want) {
    uint8_t *copy = malloc(b->n ? b->n : 1);
    memcpy(copy, b->p, b->n);
    char err[512] = "";
    gguf_file *f = NULL;
    int got = gguf_parse(copy, b->n, "bad.gguf", &f, err, sizeof err);
    if (got >= 0) gguf_close(f);
    if (got != rc || !strstr(err, want) || strchr(err, '\n'))
        FAIL("rc %d (want %d), message '%s' (want '%s')", got, rc, err, want);
    printf("  refused: %s\n", err);
    ASSERT(f == NULL);
    free(copy);
    free(b->p);
    *b = (gbuf){0};
}

/* A valid image with one F32 tensor [4] named t at offset 0: the base the tensor cases edit. */
static void one_tensor(gbuf *b, uint32_t nd, const uint64_t *ne, uint32_t type, uint64_t off,
                       size_t data) {
    header(b, 1, 0);
    tinfo(b, "t", nd, ne, type, off);
    pad_to(b, 32);
    zeros(b, data);
}

TEST(valid_base_accepted) {
    gbuf b = {0};
    uint64_t ne[] = {4};
    one_tensor(&b, 1, ne, GGUF_T_F32, 0, 16);
    gguf_file *f = NULL;
    char err[256];
    ASSERT_EQ(gguf_parse(b.p, b.n, "ok", &f, err, sizeof err), 0);
    ASSERT(gguf_find_tensor(f, "t")->nbytes == 16);
    gguf_close(f);
    free(b.p);
    /* No tensors, no KVs, nothing after the header: valid. */
    b = (gbuf){0};
    header(&b, 0, 0);
    ASSERT_EQ(gguf_parse(b.p, b.n, "empty", &f, err, sizeof err), 0);
    ASSERT_EQ(gguf_tensor_count(f), 0);
    gguf_close(f);
    free(b.p);
    /* n_dims 0 is a scalar. */
    b = (gbuf){0};
    one_tensor(&b, 0, NULL, GGUF_T_F32, 0, 4);
    ASSERT_EQ(gguf_parse(b.p, b.n, "scalar", &f, err, sizeof err), 0);
    ASSERT(gguf_tensor_at(f, 0)->numel == 1);
    gguf_close(f);
    free(b.p);
}

TEST(header_refused) {
    gbuf b = {0};
    put(&b, "GGML", 4);
    put_u32(&b, 3);
    expect(&b, PEFTD_EFORMAT, "bad.gguf: not a GGUF file (magic 47 47 4d 4c");
    put(&b, "GG", 2);
    expect(&b, PEFTD_EFORMAT, "header: truncated: magic needs 4 bytes at byte 0, 2 left");
    header(&b, ((uint64_t)1 << 62), 0);
    expect(&b, PEFTD_EFORMAT, "4611686018427387904 tensors cannot fit in the 0 bytes left");
    header(&b, 0, UINT64_MAX);
    zeros(&b, 100);
    expect(&b, PEFTD_EFORMAT, "18446744073709551615 metadata entries cannot fit in a file of");
    header(&b, 3, 0);
    zeros(&b, 70);
    expect(&b, PEFTD_EFORMAT, "3 tensors cannot fit");
}

TEST(metadata_refused) {
    gbuf b = {0};
    /* A string value whose length runs past the end. */
    header(&b, 0, 1);
    put_str(&b, "k");
    put_u32(&b, GGUF_VT_STR);
    put_u64(&b, 1000);
    put(&b, "abc", 3);
    expect(&b, PEFTD_EFORMAT, "key 'k': truncated: string needs 1000 bytes at byte 45, 3 left");
    /* A key length of 2^64-1. */
    header(&b, 0, 1);
    put_u64(&b, UINT64_MAX);
    zeros(&b, 16);
    expect(&b, PEFTD_EFORMAT, "metadata entry 0: key length 18446744073709551615 at byte 24");
    /* Empty key. */
    header(&b, 0, 1);
    put_u64(&b, 0);
    zeros(&b, 16);
    expect(&b, PEFTD_EFORMAT, "key length 0");
    /* Key with a NUL byte. */
    header(&b, 0, 1);
    put_u64(&b, 3);
    put(&b, "a\0b", 3);
    zeros(&b, 16);
    expect(&b, PEFTD_EFORMAT, "metadata entry 0: key at byte 24 holds control byte 0x00");
    /* A newline in a tensor name (it would split the message line). */
    uint64_t ne1[] = {1};
    header(&b, 1, 0);
    tinfo(&b, "a\nb", 1, ne1, GGUF_T_F32, 0);
    pad_to(&b, 32);
    zeros(&b, 4);
    expect(&b, PEFTD_EFORMAT, "tensor info 0: tensor name at byte 24 holds control byte 0x0a");
    /* Unknown value type. */
    header(&b, 0, 1);
    put_str(&b, "k");
    put_u32(&b, 13);
    zeros(&b, 16);
    expect(&b, PEFTD_EFORMAT, "key 'k': unknown value type 13 at byte 33");
    /* Bool byte 2. */
    header(&b, 0, 1);
    put_str(&b, "flag");
    put_u32(&b, GGUF_VT_BOOL);
    put(&b, "\2", 1);
    expect(&b, PEFTD_EFORMAT, "key 'flag': bool byte 2");
    /* An array of 2^61 u64s. */
    header(&b, 0, 1);
    put_str(&b, "arr");
    put_u32(&b, GGUF_VT_ARR);
    put_u32(&b, GGUF_VT_U64);
    put_u64(&b, (uint64_t)1 << 61);
    zeros(&b, 64);
    expect(&b, PEFTD_EFORMAT, "key 'arr': array of 2305843009213693952 u64 at byte 51 cannot fit");
    /* An array of strings, the third one's length past the end. */
    header(&b, 0, 1);
    put_str(&b, "toks");
    put_u32(&b, GGUF_VT_ARR);
    put_u32(&b, GGUF_VT_STR);
    put_u64(&b, 3);
    put_str(&b, "a");
    put_str(&b, "b");
    put_u64(&b, 99);
    put(&b, "c", 1);
    expect(&b, PEFTD_EFORMAT, "key 'toks': truncated: string needs 99 bytes");
    /* Unknown array element type. */
    header(&b, 0, 1);
    put_str(&b, "arr");
    put_u32(&b, GGUF_VT_ARR);
    put_u32(&b, 77);
    put_u64(&b, 1);
    zeros(&b, 8);
    expect(&b, PEFTD_EFORMAT, "key 'arr': unknown array element type 77");
    /* Arrays nested 5 deep. */
    header(&b, 0, 1);
    put_str(&b, "deep");
    put_u32(&b, GGUF_VT_ARR);
    for (int i = 0; i < 5; i++) {
        put_u32(&b, GGUF_VT_ARR);
        put_u64(&b, 1);
    }
    put_u32(&b, GGUF_VT_U8);
    put_u64(&b, 1);
    zeros(&b, 1);
    expect(&b, PEFTD_EFORMAT, "key 'deep': arrays nested deeper than 4");
    /* Duplicate key. */
    header(&b, 0, 3);
    kv_u32(&b, "a", 1);
    kv_u32(&b, "b", 2);
    kv_u32(&b, "a", 3);
    expect(&b, PEFTD_EFORMAT, "bad.gguf: duplicate metadata key 'a'");
}

TEST(alignment_refused) {
    gbuf b = {0};
    header(&b, 0, 1);
    kv_u32(&b, "general.alignment", 48);
    expect(&b, PEFTD_EFORMAT, "general.alignment 48 is not a power of two in 1..65536");
    header(&b, 0, 1);
    kv_u32(&b, "general.alignment", 0);
    expect(&b, PEFTD_EFORMAT, "general.alignment 0 is not a power of two");
    /* Type confusion: alignment written as a string. */
    header(&b, 0, 1);
    put_str(&b, "general.alignment");
    put_u32(&b, GGUF_VT_STR);
    put_str(&b, "32");
    expect(&b, PEFTD_EFORMAT, "metadata key 'general.alignment' is string, expected u32");
    /* Alignment 64 makes offset 32 misaligned. */
    header(&b, 1, 1);
    kv_u32(&b, "general.alignment", 64);
    uint64_t ne[] = {8};
    tinfo(&b, "w", 1, ne, GGUF_T_F32, 32);
    pad_to(&b, 64);
    zeros(&b, 128);
    expect(&b, PEFTD_EFORMAT, "tensor 'w': offset 32 is not a multiple of the alignment 64");
}

TEST(tensors_refused) {
    gbuf b = {0};
    uint64_t ne4[] = {4}, ne0[] = {4, 0}, big[] = {(uint64_t)1 << 40, (uint64_t)1 << 40},
             huge[] = {UINT64_MAX}, five[] = {1, 1, 1, 1, 1}, ne33[] = {33};
    one_tensor(&b, 1, ne4, 99, 0, 16);
    expect(&b, PEFTD_EFORMAT, "tensor 't': unknown ggml type 99");
    one_tensor(&b, 1, ne4, 4, 0, 16); /* a retired id (Q4_2) */
    expect(&b, PEFTD_EFORMAT, "tensor 't': unknown ggml type 4");
    one_tensor(&b, 2, ne0, GGUF_T_F32, 0, 16);
    expect(&b, PEFTD_EFORMAT, "tensor 't': dim 1 is 0 (must be 1..2^48)");
    one_tensor(&b, 1, huge, GGUF_T_F32, 0, 16);
    expect(&b, PEFTD_EFORMAT, "tensor 't': dim 0 is 18446744073709551615");
    one_tensor(&b, 2, big, GGUF_T_F32, 0, 16);
    expect(&b, PEFTD_EFORMAT, "tensor 't': element count overflows");
    one_tensor(&b, 5, five, GGUF_T_F32, 0, 16);
    expect(&b, PEFTD_EFORMAT, "tensor 't': 5 dims (at most 4)");
    one_tensor(&b, 1, ne33, GGUF_T_Q8_0, 0, 64);
    expect(&b, PEFTD_EFORMAT, "tensor 't': row length 33 is not a multiple of Q8_0's block of 32");
    one_tensor(&b, 1, ne4, GGUF_T_F32, 0, 15);
    expect(&b, PEFTD_EFORMAT, "tensor 't': bytes [0, +16) of the data section run past the end");
    one_tensor(&b, 1, ne4, GGUF_T_F32, (uint64_t)-32, 16);
    expect(&b, PEFTD_EFORMAT, "tensor 't': bytes [18446744073709551584, +16)");
    one_tensor(&b, 1, ne4, GGUF_T_F32, 64, 16);
    expect(&b, PEFTD_EFORMAT, "run past the end of the file");
    one_tensor(&b, 1, ne4, GGUF_T_F32, 8, 64);
    expect(&b, PEFTD_EFORMAT, "tensor 't': offset 8 is not a multiple of the alignment 32");
    /* Tensor info truncated inside the dims (the count check passes: 44 bytes left). */
    header(&b, 1, 0);
    put_str(&b, "tttttttttttttttttttt");
    put_u32(&b, 2);
    put_u64(&b, 4);
    put_u32(&b, 0);
    expect(&b, PEFTD_EFORMAT, "tensor 'tttttttttttttttttttt': truncated: dim needs 8 bytes at byte 64, 4 left");
    /* The data section (aligned) starts past the end. */
    header(&b, 1, 0);
    tinfo(&b, "t", 1, ne4, GGUF_T_F32, 0);
    expect(&b, PEFTD_EFORMAT, "truncated: the data section (byte 64) starts past the end of the file (57 bytes)");
    /* Duplicate names; overlapping tensors. */
    header(&b, 2, 0);
    tinfo(&b, "t", 1, ne4, GGUF_T_F32, 0);
    tinfo(&b, "t", 1, ne4, GGUF_T_F32, 32);
    pad_to(&b, 32);
    zeros(&b, 64);
    expect(&b, PEFTD_EFORMAT, "bad.gguf: duplicate tensor name 't'");
    uint64_t ne16[] = {16};
    header(&b, 2, 0);
    tinfo(&b, "a", 1, ne16, GGUF_T_F32, 0);
    tinfo(&b, "b", 1, ne4, GGUF_T_F32, 32);
    pad_to(&b, 32);
    zeros(&b, 128);
    expect(&b, PEFTD_EFORMAT, "tensors 'a' and 'b' overlap (offsets 0 and 32)");
    /* A tensor name longer than GGUF_MAX_NAME. */
    header(&b, 1, 0);
    put_u64(&b, GGUF_MAX_NAME + 1);
    zeros(&b, GGUF_MAX_NAME + 64);
    expect(&b, PEFTD_EFORMAT, "tensor info 0: tensor name length 1025 at byte 24 (must be 1..1024)");
}

TEST_MAIN(valid_base_accepted, header_refused, metadata_refused, alignment_refused,
          tensors_refused)
