/* tests/fuzz/fuzz_gguf.c — libFuzzer target for the GGUF reader (server/model/gguf*.c), the
 * GGUF tokenizer (server/text/tokenizer_gguf.c) and the reference block formats
 * (kernels/cpu/quant_ref.c): parses the input as a GGUF image, builds a tokenizer from its
 * tokenizer.ggml.* metadata (refusal: one line; success: encode + decode round trip),
 * reads every metadata value through the typed lookups and array accessors (nested arrays
 * included), and checks every tensor view against the invariants the reader promises (data
 * inside the buffer, size = rows × row bytes, lookups by name return the same view, no shared
 * bytes), then dequantizes (a bounded prefix of) every supported tensor and re-quantizes
 * finite rows to Q8_0 / Q4_K, trapping on any broken invariant.
 *
 * Built and run by `make fuzz` (seeds: tests/fixtures/gguf/tiny.gguf and meta.gguf,
 * tests/fixtures/tokenizer_gguf/stories_spm.gguf and qwen2bl.gguf); by hand:
 *   clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -I. -I/usr/include/cjson \
 *       tests/fuzz/fuzz_gguf.c server/model/gguf.c server/model/gguf_tensors.c server/text/tokenizer*.c \
 *       kernels/cpu/quant_ref.c lib/status.c -lcjson -lpcre2-8 -lutf8proc -lm -o /tmp/fuzz_gguf
 *   mkdir -p /tmp/gguf_corpus && cp tests/fixtures/gguf/tiny.gguf tests/fixtures/gguf/meta.gguf \
 *       tests/fixtures/tokenizer_gguf/stories_spm.gguf tests/fixtures/tokenizer_gguf/qwen2bl.gguf /tmp/gguf_corpus/
 *   /tmp/fuzz_gguf -max_total_time=60 -max_len=65536 /tmp/gguf_corpus
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant_ref.h"
#include "server/model/gguf.h"
#include "server/text/tokenizer.h"

#define CHECK(x) do { if (!(x)) __builtin_trap(); } while (0)
#define MAX_DEQUANT 4096 /* elements per tensor */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned sum_bytes(const void *p, size_t n) {
    unsigned s = 0;
    for (size_t i = 0; i < n; i++) s += ((const uint8_t *)p)[i];
    return s;
}

/* Reads every element of a through the accessor for its type; recurses into nested ones. */
static unsigned walk_array(const gguf_array *a, const uint8_t *lo, const uint8_t *hi, int depth) {
    CHECK(depth <= GGUF_MAX_DEPTH);
    CHECK(a->data >= lo && a->data <= hi && a->nbytes <= (uint64_t)(hi - a->data));
    unsigned s = 0;
    for (uint64_t i = 0; i < a->count; i++) {
        int64_t v;
        double d;
        const char *str;
        size_t n;
        gguf_array sub;
        switch (a->elem_type) {
        case GGUF_VT_F32: case GGUF_VT_F64: CHECK(gguf_arr_float(a, i, &d) == 0); break;
        case GGUF_VT_STR:
            CHECK(gguf_arr_str(a, i, &str, &n) == 0);
            CHECK((const uint8_t *)str >= a->data && n <= (uint64_t)(a->data + a->nbytes - (const uint8_t *)str));
            s += sum_bytes(str, n);
            break;
        case GGUF_VT_ARR:
            CHECK(gguf_arr_arr(a, i, &sub) == 0);
            CHECK(sub.data >= a->data && sub.data + sub.nbytes <= a->data + a->nbytes);
            s += walk_array(&sub, lo, hi, depth + 1);
            break;
        default: {
            int rc = gguf_arr_int(a, i, &v);
            CHECK(rc == 0 || (rc == PEFTD_ERANGE && a->elem_type == GGUF_VT_U64));
        }
        }
    }
    int64_t v;
    CHECK(gguf_arr_int(a, a->count, &v) == PEFTD_ERANGE);
    return s;
}

static unsigned walk_metadata(const gguf_file *f, const uint8_t *lo, const uint8_t *hi) {
    unsigned s = 0;
    char err[256];
    for (size_t i = 0; i < gguf_kv_count(f); i++) {
        const char *key = gguf_kv_key(f, i);
        CHECK(key && key[0] && gguf_find_key(f, key) == (long)i);
        gguf_vtype t = gguf_kv_type(f, i);
        uint64_t u;
        float x;
        bool b;
        const char *str;
        size_t n;
        gguf_array a;
        /* The wrong-type lookups fail, the right one succeeds. */
        CHECK((gguf_get_f32(f, key, &x, err, sizeof err) == 0) == (t == GGUF_VT_F32));
        CHECK((gguf_get_bool(f, key, &b, err, sizeof err) == 0) == (t == GGUF_VT_BOOL));
        (void)gguf_get_uint(f, key, &u, err, sizeof err);
        CHECK(memchr(err, 0, sizeof err) != NULL);
        if (t == GGUF_VT_STR) {
            CHECK(gguf_get_str(f, key, &str, &n, err, sizeof err) == 0);
            CHECK((const uint8_t *)str >= lo && n <= (uint64_t)(hi - (const uint8_t *)str));
            s += sum_bytes(str, n);
        } else if (t == GGUF_VT_ARR) {
            CHECK(gguf_get_arr(f, key, GGUF_VT_COUNT, &a, err, sizeof err) == 0);
            s += walk_array(&a, lo, hi, 1);
        }
    }
    CHECK(gguf_kv_key(f, gguf_kv_count(f)) == NULL);
    return s;
}

static void dequant_requant(const gguf_tensor *t) {
    if (!gguf_type_supported(t->type)) return;
    int64_t be = gguf_type_block(t->type), n = t->numel < MAX_DEQUANT ? t->numel : MAX_DEQUANT;
    n -= n % be;
    static float y[MAX_DEQUANT];
    static uint8_t q[MAX_DEQUANT / 32 * 34];
    CHECK(qref_dequantize(t->type, t->data, y, n) == 0);
    bool finite = true;
    for (int64_t i = 0; i < n; i++) finite = finite && isfinite(y[i]) && fabsf(y[i]) < 1e30f;
    if (!finite) return;
    CHECK(qref_quantize_q8_0(y, q, n - n % 32) == 0);
    CHECK(qref_quantize_q4_k(y, q, n - n % 256) == 0);
}

/* The tokenizer from the metadata: refused with one line, or usable (encode, decode). */
static void check_tokenizer(const gguf_file *f) {
    char err[256];
    tokenizer *t = NULL;
    int rc = tokenizer_load_gguf(f, &t, err, sizeof err);
    if (rc < 0) {
        CHECK(t == NULL && err[0] && memchr(err, 0, sizeof err) && !strchr(err, '\n'));
        return;
    }
    static const char text[] = "Once upon a time <s> \xe4\xbd\xa0\xe5\xa5\xbd 123\n\t!";
    int32_t *ids = NULL;
    size_t n = 0;
    char *out = NULL;
    CHECK(tokenizer_encode(t, text, sizeof(text) - 1, true, &ids, &n) == 0);
    for (size_t i = 0; i < n; i++) CHECK(ids[i] >= 0 && ids[i] < tokenizer_vocab_size(t));
    CHECK(tokenizer_decode(t, ids, n, false, &out, NULL) == 0);
    free(out);
    free(ids);
    tokenizer_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gguf_file *f = NULL;
    char err[256];
    int rc = gguf_parse(data, size, "fuzz", &f, err, sizeof err);
    if (rc < 0) {
        CHECK(f == NULL);
        CHECK(memchr(err, 0, sizeof err) != NULL && err[0] && !strchr(err, '\n'));
        return 0;
    }
    const uint8_t *end = data + size;
    unsigned sum = walk_metadata(f, data, end);
    uint32_t align = gguf_alignment(f);
    /* A file without tensors may end before the padding (llama.cpp's vocab-only files do):
     * its data section is then the empty end of the file. */
    CHECK(align && (align & (align - 1)) == 0 &&
          (gguf_data_offset(f) % align == 0 || (gguf_tensor_count(f) == 0 && gguf_data_offset(f) == size)));
    CHECK(gguf_data_offset(f) <= size);
    uint64_t total = 0;
    for (size_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        CHECK(t && t->name && t->name[0] && gguf_find_tensor(f, t->name) == t);
        CHECK(t->n_dims >= 0 && t->n_dims <= GGUF_MAX_DIMS);
        int64_t n = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) {
            CHECK(t->ne[d] >= 1 && (d < t->n_dims || t->ne[d] == 1));
            n *= t->ne[d];
        }
        CHECK(n == t->numel && n <= GGUF_MAX_NUMEL);
        CHECK(gguf_row_bytes(t->type, t->ne[0]) * (uint64_t)(n / t->ne[0]) == t->nbytes);
        CHECK(t->offset % align == 0);
        const uint8_t *p = t->data;
        CHECK(p == data + gguf_data_offset(f) + t->offset);
        CHECK(p >= data && p <= end && t->nbytes <= (uint64_t)(end - p));
        sum += sum_bytes(p, t->nbytes); /* ASan sees any read outside the input */
        total += t->nbytes;
        dequant_requant(t);
    }
    CHECK(total <= size); /* tensors own disjoint bytes */
    check_tokenizer(f);
    CHECK(gguf_tensor_at(f, gguf_tensor_count(f)) == NULL);
    gguf_close(f);
    return (int)(sum & 0);
}
