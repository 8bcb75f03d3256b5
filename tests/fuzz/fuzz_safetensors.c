/* tests/fuzz/fuzz_safetensors.c — libFuzzer target for the safetensors reader: parses the
 * input as a safetensors image and walks every tensor and metadata entry, trapping when an
 * accepted file breaks an invariant the reader promises (data inside the buffer, sizes
 * consistent, lookups by name returning the same entry, no shared bytes).
 *
 * Built and run by `make fuzz`; by hand, from the repository root:
 *   clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -I. \
 *       -I/usr/include/cjson tests/fuzz/fuzz_safetensors.c adapter_store/safetensors.c \
 *       lib/status.c -lcjson -o /tmp/fuzz_safetensors
 *   mkdir -p /tmp/st_corpus && cp models/stories260K/model.safetensors /tmp/st_corpus/
 *   /tmp/fuzz_safetensors -dict=tests/fuzz/safetensors.dict -max_total_time=60 \
 *       -max_len=65536 /tmp/st_corpus
 * Note: the system cJSON is not instrumented, so coverage guidance and ASan stop at its
 * boundary; our own parsing and every check on its results are instrumented.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/safetensors.h"

#define CHECK(x) do { if (!(x)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_file *f = NULL;
    char err[256];
    int rc = st_parse(data, size, "fuzz", &f, err, sizeof err);
    if (rc < 0) {
        CHECK(f == NULL);
        CHECK(memchr(err, 0, sizeof err) != NULL);
        return 0;
    }
    const uint8_t *end = data + size;
    uint64_t total = 0;
    unsigned sum = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_get(f, i);
        CHECK(t && t->name && t->name[0]);
        CHECK(st_find(f, t->name) == t);
        CHECK(st_index(f, t) == i);
        CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS);
        int64_t n = 1;
        for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
        CHECK(n == t->numel);
        CHECK((uint64_t)t->numel * st_dtype_size(t->dtype) == t->nbytes);
        const uint8_t *p = t->data;
        CHECK(p >= data && p <= end && t->nbytes <= (size_t)(end - p));
        /* Touch every byte so ASan sees any read outside the input. */
        for (size_t b = 0; b < t->nbytes; b++) sum += p[b];
        total += t->nbytes;
        kdtype kd;
        (void)st_dtype_to_kdtype(t->dtype, &kd);
        (void)st_dtype_name(t->dtype);
    }
    /* Tensors own disjoint bytes of the input. */
    CHECK(total <= size);
    for (size_t i = 0; i < st_metadata_count(f); i++) {
        const char *k, *v;
        CHECK(st_metadata_get(f, i, &k, &v) == 0);
        CHECK(st_metadata_find(f, k) == v);
    }
    CHECK(st_get(f, st_count(f)) == NULL);
    st_close(f);
    return (int)(sum & 0);
}
