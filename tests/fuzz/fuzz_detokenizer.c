/* tests/fuzz/fuzz_detokenizer.c — libFuzzer target for decode and the streaming detokenizer
 * (tokenizer.h's contract) on arbitrary id sequences, for the default byte-fallback tokenizer
 * (models/stories260K) and two byte-level fixtures (gpt2bl; tiny_bl, whose added tokens mix
 * byte-map and other characters). It traps when a promise breaks:
 *   - tokenizer_decode succeeds and gives valid UTF-8;
 *   - every stream piece is valid UTF-8 and, after the flush, the pieces add up to the decode
 *     byte for byte (skip_special true and false);
 *   - primed with the first j ids, the pieces are valid UTF-8 and add up to decode(all) minus
 *     decode(first j) whenever the context ends final (not in a byte-fallback run, and its
 *     decode does not end in U+FFFD).
 * Parity of the decode with `tokenizers` itself is the unit tests' job (fixtures).
 *
 * Input: byte 0 picks the split j; then two bytes per id: 0b1xxxxxxx b = the byte token of b
 * (<0xNN> or the byte-level character), 0b01xxxxxx k = a special token, else 14 bits modulo
 * (vocab + 16) (ids past the vocabulary are skipped by decode).
 *
 * Built and run by `make fuzz`; by hand, from the repository root (after building
 * build-fuzz/libpeftd.a as the Makefile's fuzz target does):
 *   clang -g -O1 -std=c11 -D_GNU_SOURCE -march=native -fsanitize=fuzzer,address,undefined -I. \
 *       $(pkg-config --cflags libcjson) tests/fuzz/fuzz_detokenizer.c build-fuzz/libpeftd.a \
 *       $(pkg-config --libs libmicrohttpd libcjson libuv lmdb openblas libpcre2-8 libutf8proc libcrypto) \
 *       -lm -lpthread -o build-fuzz/fuzz_detokenizer
 *   build-fuzz/fuzz_detokenizer -max_total_time=60 -max_len=512
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/text/tokenizer.h"
#include "tests/fuzz/fuzz_utf8.h"

#define CHECK(x) do { if (!(x)) __builtin_trap(); } while (0)
#define N_TOK 3
#define MAX_IDS 256 /* longer inputs are cut: long runs add time, not new states */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    tokenizer *t;
    bool bytefallback;
    int32_t byte_id[256];
    int32_t special[8];
    int n_special;
} fz_tok;

static fz_tok g[N_TOK];

/* GPT-2's byte -> character map, as UTF-8: printable Latin-1 bytes map to themselves, the
 * others to U+0100 + n in byte order. */
static void bytelevel_char(int b, char out[3]) {
    int cp = b, extra = 0;
    bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    if (!keep) {
        for (int x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE))) extra++;
        cp = 256 + extra;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

static void fz_init(fz_tok *f, const char *dir, bool bytefallback) {
    char err[256];
    if (tokenizer_load(dir, &f->t, err, sizeof err)) __builtin_trap(); /* run from the repo root */
    f->bytefallback = bytefallback;
    for (int b = 0; b < 256; b++) {
        char want[8];
        if (bytefallback) snprintf(want, sizeof want, "<0x%02X>", b);
        else bytelevel_char(b, want);
        f->byte_id[b] = -1;
        for (int32_t id = 0; id < tokenizer_vocab_size(f->t); id++) {
            const char *p = tokenizer_piece(f->t, id);
            if (p && !strcmp(p, want)) {
                f->byte_id[b] = id;
                break;
            }
        }
        CHECK(f->byte_id[b] >= 0);
    }
    for (int32_t id = 0; id < tokenizer_vocab_size(f->t) && f->n_special < 8; id++)
        if (tokenizer_is_special(f->t, id)) f->special[f->n_special++] = id;
    CHECK(f->n_special > 0);
}

static bool is_byte_piece(const tokenizer *t, int32_t id) {
    const char *p = tokenizer_piece(t, id);
    return p && strlen(p) == 6 && !memcmp(p, "<0x", 3) && p[5] == '>';
}

/* Streams ids (after priming with ctx) and checks each piece; returns the concatenation. */
static char *stream_all(const tokenizer *t, bool skip, const int32_t *ctx, size_t nc, const int32_t *ids, size_t n,
                        size_t *out_len) {
    tokenizer_stream *s = tokenizer_stream_new(t, skip);
    CHECK(s);
    if (nc) CHECK(tokenizer_stream_prime(s, ctx, nc) == 0);
    size_t cap = 64, al = 0;
    char *acc = malloc(cap);
    CHECK(acc);
    for (size_t i = 0; i <= n; i++) {
        const char *p = NULL;
        size_t pl = 0;
        CHECK((i < n ? tokenizer_stream_push(s, ids[i], &p, &pl) : tokenizer_stream_flush(s, &p, &pl)) == 0);
        CHECK(p && valid_utf8((const uint8_t *)p, pl) && strlen(p) <= pl);
        while (al + pl > cap) CHECK(acc = realloc(acc, cap *= 2));
        memcpy(acc + al, p, pl);
        al += pl;
    }
    tokenizer_stream_free(s);
    *out_len = al;
    return acc;
}

static void check(const fz_tok *f, const int32_t *ids, size_t n, size_t j, bool skip) {
    const tokenizer *t = f->t;
    char *full = NULL, *head = NULL, *acc;
    size_t fl = 0, hl = 0, al = 0;
    CHECK(tokenizer_decode(t, ids, n, skip, &full, &fl) == 0);
    CHECK(valid_utf8((const uint8_t *)full, fl));
    acc = stream_all(t, skip, NULL, 0, ids, n, &al);
    CHECK(al == fl && !memcmp(acc, full, fl));
    free(acc);
    if (j > 0 && j < n) {
        CHECK(tokenizer_decode(t, ids, j, skip, &head, &hl) == 0);
        size_t last = j; /* the context's last id that decode keeps */
        while (last > 0 && (ids[last - 1] >= tokenizer_vocab_size(t) || (skip && tokenizer_is_special(t, ids[last - 1]))))
            last--;
        bool final = !(hl >= 3 && !memcmp(head + hl - 3, "\xEF\xBF\xBD", 3)) &&
                     !(f->bytefallback && last && is_byte_piece(t, ids[last - 1]));
        acc = stream_all(t, skip, ids, j, ids + j, n - j, &al);
        if (final) CHECK(hl <= fl && !memcmp(full, head, hl) && al == fl - hl && !memcmp(acc, full + hl, al));
        free(acc);
        free(head);
    }
    free(full);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *dirs[N_TOK] = {"models/stories260K", "tests/fixtures/tokenizer/gpt2bl",
                                      "tests/fixtures/tokenizer/tiny_bl"};
    if (!g[0].t)
        for (int k = 0; k < N_TOK; k++) fz_init(&g[k], dirs[k], k == 0);
    if (size < 1) return 0;
    int32_t ids[MAX_IDS];
    for (int k = 0; k < N_TOK; k++) {
        const fz_tok *f = &g[k];
        int32_t range = tokenizer_vocab_size(f->t) + 16; /* 16 ids past the end: skipped */
        size_t n = 0;
        for (size_t i = 1; i + 1 < size && n < MAX_IDS; i += 2) {
            uint8_t a = data[i], b = data[i + 1];
            if (a & 0x80) ids[n++] = f->byte_id[b];
            else if (a & 0x40) ids[n++] = f->special[b % f->n_special];
            else ids[n++] = (int32_t)((((unsigned)a << 8) | b) % (unsigned)range);
        }
        size_t j = n ? data[0] % (n + 1) : 0;
        check(f, ids, n, j, true);
        check(f, ids, n, j, false);
    }
    return 0;
}
