/* tests/fuzz/fuzz_tokenizer.c — libFuzzer target for the tokenizer: encodes arbitrary bytes with
 * the default (stories260K) and the Llama-3-style byte-level fixture tokenizers, and traps when
 * a promise breaks: invalid UTF-8 must be refused with PEFTD_EINVAL; valid input must encode to
 * in-range ids; byte-level decode (keeping special tokens) must give the input back exactly; streaming decode must add
 * up to the full decode, one whole UTF-8 character at a time.
 *
 * Built and run by `make fuzz`; by hand, from the repository root:
 *   clang -g -O1 -std=c11 -D_GNU_SOURCE -DUTF8PROC_EXPORTS -fsanitize=fuzzer,address,undefined \
 *       -I. -I/usr/include/cjson tests/fuzz/fuzz_tokenizer.c server/text/tokenizer*.c \
 *       lib/status.c -lcjson -lpcre2-8 -lutf8proc -lpthread -o /tmp/fuzz_tokenizer
 *   mkdir -p /tmp/tok_corpus && split -l 50 tests/fixtures/tokenizer/corpus.txt /tmp/tok_corpus/c
 *   /tmp/fuzz_tokenizer -max_total_time=60 -max_len=4096 /tmp/tok_corpus
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/status.h"
#include "server/text/tokenizer.h"
#include "tests/fuzz/fuzz_utf8.h"

#define CHECK(x) do { if (!(x)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static tokenizer *g_tok[2];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *dirs[2] = {"models/stories260K", "tests/fixtures/tokenizer/llama3bl"};
    for (int k = 0; k < 2; k++) {
        if (!g_tok[k]) {
            char err[256];
            if (tokenizer_load(dirs[k], &g_tok[k], err, sizeof err)) __builtin_trap(); /* run from the repo root */
        }
        tokenizer *t = g_tok[k];
        int32_t *ids = NULL;
        size_t n = 0;
        int rc = tokenizer_encode(t, (const char *)data, size, true, &ids, &n);
        if (!valid_utf8(data, size)) {
            CHECK(rc == PEFTD_EINVAL);
            continue;
        }
        CHECK(rc == 0);
        for (size_t i = 0; i < n; i++) CHECK(ids[i] >= 0 && ids[i] < tokenizer_vocab_size(t));
        char *text = NULL;
        size_t len = 0;
        CHECK(tokenizer_decode(t, ids, n, true, &text, &len) == 0);
        if (k == 1) {
            /* Byte-level BPE is lossless: without BOS, keeping special tokens, we get the input. */
            int32_t *plain = NULL;
            size_t pn = 0, rl = 0;
            char *round = NULL;
            CHECK(tokenizer_encode(t, (const char *)data, size, false, &plain, &pn) == 0);
            CHECK(tokenizer_decode(t, plain, pn, false, &round, &rl) == 0);
            CHECK(rl == size && !memcmp(round, data, size));
            free(round);
            free(plain);
        }
        tokenizer_stream *s = tokenizer_stream_new(t, true);
        CHECK(s);
        size_t got = 0;
        for (size_t i = 0; i <= n; i++) {
            const char *p;
            size_t pl;
            CHECK((i < n ? tokenizer_stream_push(s, ids[i], &p, &pl) : tokenizer_stream_flush(s, &p, &pl)) == 0);
            CHECK(valid_utf8((const uint8_t *)p, pl));
            CHECK(got + pl <= len && !memcmp(text + got, p, pl));
            got += pl;
        }
        CHECK(got == len);
        tokenizer_stream_free(s);
        free(text);
        free(ids);
    }
    return 0;
}
