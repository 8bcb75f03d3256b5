/* tests/unit/test_tokenizer.c — tokenizer parity with the `tokenizers` package and robustness.
 *
 * Fixtures (tests/fixtures/tokenizer/, made by make_fixtures.py): corpus.txt (one case per
 * line) + multiline.json, and expected_<name>.jsonl with HF's ids (without / with special
 * tokens) and decoded text for the default tokenizer (models/stories260K) and two byte-level
 * BPE tokenizers trained on the corpus (GPT-2 pre-tokenizer; Llama-3 split regex).
 * Decode and streaming: decode_cases.jsonl (hand-made byte-token sequences) and
 * decode_random_<name>.jsonl (random byte-heavy id sequences) with `tokenizers`' decode, for
 * stories260K (byte fallback), gpt2bl and tiny_bl (byte-level with added tokens).
 * Broken tokenizer.json files: test_tokenizer_errors.c.
 * Run from the repository root.
 */
#include <cJSON.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/status.h"
#include "server/text/tokenizer.h"
#include "tests/harness/test.h"
#include "tests/harness/tok_corpus.h"

#define FIX "tests/fixtures/tokenizer"
#define STORIES "models/stories260K"

/* ---- fixture loading ---- */

typedef struct {
    int32_t *v;
    size_t n;
} ids_t;

static ids_t json_ids(const cJSON *a) {
    ids_t r = {malloc(((size_t)cJSON_GetArraySize(a) + 1) * sizeof(int32_t)), 0};
    const cJSON *it;
    cJSON_ArrayForEach(it, a) r.v[r.n++] = (int32_t)it->valuedouble;
    return r;
}

static void ids_cat(ids_t *dst, const cJSON *a) {
    const cJSON *it;
    dst->v = realloc(dst->v, (dst->n + (size_t)cJSON_GetArraySize(a) + 1) * sizeof(int32_t));
    cJSON_ArrayForEach(it, a) dst->v[dst->n++] = (int32_t)it->valuedouble;
}

typedef struct {
    size_t c; /* case index */
    ids_t plain, special;
    char *dec, *dec_all; /* decode(special ids) with / without skip_special_tokens */
} expect_t;

/* One record per case, or (files with "c") for a subset of the cases; *n_out = records. */
static expect_t *load_expected(const char *name, size_t n_cases, size_t *n_out) {
    char path[256];
    snprintf(path, sizeof(path), FIX "/expected_%s.jsonl", name);
    size_t len = 0;
    char *txt = test_read_file(path, &len);
    if (!txt) FAIL("cannot read %s", path);
    expect_t *e = calloc(n_cases, sizeof(*e));
    size_t k = 0;
    for (char *line = txt, *nl; *line && k < n_cases; line = nl + 1, k++) {
        nl = strchr(line, '\n');
        ASSERT(nl);
        *nl = 0;
        cJSON *o = cJSON_Parse(line);
        if (!o) FAIL("%s:%zu: bad JSON", path, k + 1);
        const cJSON *ci = cJSON_GetObjectItemCaseSensitive(o, "c");
        e[k].c = ci ? (size_t)ci->valuedouble : k;
        ASSERT(e[k].c < n_cases);
        e[k].plain = json_ids(cJSON_GetObjectItemCaseSensitive(o, "i"));
        if (cJSON_GetObjectItemCaseSensitive(o, "s")) {
            e[k].special = json_ids(cJSON_GetObjectItemCaseSensitive(o, "s"));
        } else {
            /* encode(text) == p + i + x */
            e[k].special = json_ids(cJSON_GetObjectItemCaseSensitive(o, "p"));
            ids_cat(&e[k].special, cJSON_GetObjectItemCaseSensitive(o, "i"));
            if (cJSON_GetObjectItemCaseSensitive(o, "x")) ids_cat(&e[k].special, cJSON_GetObjectItemCaseSensitive(o, "x"));
        }
        e[k].dec = strdup(cJSON_GetObjectItemCaseSensitive(o, "d")->valuestring);
        const cJSON *D = cJSON_GetObjectItemCaseSensitive(o, "D");
        e[k].dec_all = strdup(D ? D->valuestring : e[k].dec);
        cJSON_Delete(o);
    }
    free(txt);
    if (k == 0) FAIL("%s is empty", path);
    *n_out = k;
    return e;
}

static void free_expected(expect_t *e, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(e[i].plain.v);
        free(e[i].special.v);
        free(e[i].dec);
        free(e[i].dec_all);
    }
    free(e);
}

static tokenizer *load_tok(const char *dir) {
    tokenizer *t = NULL;
    char err[512];
    int rc = tokenizer_load(dir, &t, err, sizeof(err));
    if (rc) FAIL("tokenizer_load(%s) = %d: %s", dir, rc, err);
    return t;
}

static void print_ids(const char *what, const int32_t *v, size_t n) {
    fprintf(stderr, "    %s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", v[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

static bool ids_eq(const int32_t *a, size_t na, const ids_t *b) {
    return na == b->n && (na == 0 || !memcmp(a, b->v, na * sizeof(*a)));
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Full-corpus parity for one tokenizer: ids without / with special tokens, decoded text. */
static void check_parity(const char *name, const char *dir, bool subset) {
    tok_cases c = tok_corpus_load();
    size_t n_rec = 0;
    expect_t *e = load_expected(name, c.n, &n_rec);
    if (!subset && n_rec != c.n) FAIL("%s: %zu records for %zu cases", name, n_rec, c.n);
    tokenizer *t = load_tok(dir);
    size_t ok_plain = 0, ok_special = 0, ok_dec = 0, ok_dec_all = 0, total_ids = 0, bytes = 0;
    long first_bad = -1;
    double t_enc = 0;
    for (size_t r = 0; r < n_rec; r++) {
        size_t k = e[r].c;
        int32_t *ids = NULL, *sids = NULL;
        size_t n = 0, sn = 0;
        double t0 = now_s();
        ASSERT_EQ(tokenizer_encode(t, c.text[k], c.len[k], false, &ids, &n), 0);
        t_enc += now_s() - t0;
        ASSERT_EQ(tokenizer_encode(t, c.text[k], c.len[k], true, &sids, &sn), 0);
        total_ids += n;
        bytes += c.len[k];
        bool p = ids_eq(ids, n, &e[r].plain), s = ids_eq(sids, sn, &e[r].special);
        char *d = NULL, *da = NULL;
        size_t dl = 0;
        ASSERT_EQ(tokenizer_decode(t, e[r].special.v, e[r].special.n, true, &d, &dl), 0);
        ASSERT_EQ(tokenizer_decode(t, e[r].special.v, e[r].special.n, false, &da, NULL), 0);
        ASSERT_EQ(dl, strlen(d));
        bool dd = !strcmp(d, e[r].dec), dda = !strcmp(da, e[r].dec_all);
        ok_plain += p;
        ok_special += s;
        ok_dec += dd;
        ok_dec_all += dda;
        if ((!p || !s || !dd || !dda) && first_bad < 0) {
            first_bad = (long)k;
            fprintf(stderr, "    %s: first mismatch at case %zu (corpus line %zu): \"%.200s\"\n", name, k, k + 1,
                    c.text[k]);
            if (!p) { print_ids("want", e[r].plain.v, e[r].plain.n); print_ids("got ", ids, n); }
            if (!s) { print_ids("want+special", e[r].special.v, e[r].special.n); print_ids("got+special ", sids, sn); }
            if (!dd) fprintf(stderr, "    decode want \"%s\"\n    decode got  \"%s\"\n", e[r].dec, d);
            if (!dda) fprintf(stderr, "    decode(keep special) want \"%s\"\n    got \"%s\"\n", e[r].dec_all, da);
        }
        free(ids);
        free(sids);
        free(d);
        free(da);
    }
    printf("    %s: ids %zu/%zu, ids+special %zu/%zu, decode %zu/%zu, decode(keep special) %zu/%zu; "
           "encode %.1f ms for %zu bytes -> %zu ids (%.1f MB/s)\n",
           name, ok_plain, n_rec, ok_special, n_rec, ok_dec, n_rec, ok_dec_all, n_rec, t_enc * 1e3, bytes, total_ids,
           bytes / t_enc / 1e6);
    if (first_bad >= 0) FAIL("%s: parity mismatches (first at case %ld)", name, first_bad);
    tokenizer_free(t);
    free_expected(e, c.n);
    tok_corpus_free(&c);
}

TEST(parity_stories) { check_parity("stories", STORIES, false); }
TEST(parity_gpt2_bytelevel) { check_parity("gpt2bl", FIX "/gpt2bl", false); }
TEST(parity_llama3_bytelevel) { check_parity("llama3bl", FIX "/llama3bl", false); }
/* Normalizers: legacy Llama-2 conversion (Prepend + Replace), NFKC + Lowercase. */
TEST(parity_legacy_sentencepiece) { check_parity("legacy_sp", FIX "/legacy_sp", true); }
TEST(parity_nfkc_lowercase) { check_parity("nfkc_lower_bl", FIX "/nfkc_lower_bl", true); }

/* ---- streaming ---- */

/* Well-formed UTF-8 (Unicode table 3-7: no overlongs, surrogates or code points > U+10FFFF). */
static bool utf8_ok(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t k = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        unsigned lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80, hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        if (!k || i + k > n || (k > 1 && (u[i + 1] < lo || u[i + 1] > hi))) return false;
        for (size_t j = 2; j < k; j++)
            if ((u[i + j] & 0xC0) != 0x80) return false;
        i += k;
    }
    return true;
}

/* A "<0xNN>" byte-fallback piece. */
static bool byte_piece(const tokenizer *t, int32_t id) {
    const char *p = tokenizer_piece(t, id);
    return p && strlen(p) == 6 && !memcmp(p, "<0x", 3) && p[5] == '>';
}

static void check_stream(const char *dir) {
    tok_cases c = tok_corpus_load();
    tokenizer *t = load_tok(dir);
    for (int skip = 0; skip < 2; skip++) {
        for (size_t k = 0; k < c.n; k++) {
            int32_t *ids = NULL;
            size_t n = 0, dl = 0;
            char *full = NULL;
            ASSERT_EQ(tokenizer_encode(t, c.text[k], c.len[k], true, &ids, &n), 0);
            ASSERT_EQ(tokenizer_decode(t, ids, n, skip, &full, &dl), 0);
            tokenizer_stream *s = tokenizer_stream_new(t, skip);
            ASSERT(s);
            char *acc = malloc(dl + 64);
            size_t al = 0;
            for (size_t i = 0; i <= n; i++) {
                const char *piece = NULL;
                size_t pl = 0;
                if (i < n) ASSERT_EQ(tokenizer_stream_push(s, ids[i], &piece, &pl), 0);
                else ASSERT_EQ(tokenizer_stream_flush(s, &piece, &pl), 0);
                if (!utf8_ok(piece, pl)) FAIL("%s case %zu: piece %zu is not whole UTF-8 characters", dir, k, i);
                if (al + pl > dl) FAIL("%s case %zu: stream longer than the full decode", dir, k);
                memcpy(acc + al, piece, pl);
                al += pl;
                /* Only an open end is held for the flush: an incomplete character (U+FFFD for
                 * now) or a byte-fallback run that one more byte token could still change. */
                size_t last = n; /* the last id decode keeps */
                while (last > 0 && skip && tokenizer_is_special(t, ids[last - 1])) last--;
                if (i == n && pl && !(dl >= 3 && !memcmp(full + dl - 3, "\xEF\xBF\xBD", 3)) &&
                    !(last && byte_piece(t, ids[last - 1])))
                    FAIL("%s case %zu: flush had text left although the decode ends cleanly", dir, k);
            }
            acc[al] = 0;
            if (al != dl || memcmp(acc, full, dl))
                FAIL("%s case %zu (skip_special=%d): stream \"%s\" != decode \"%s\"", dir, k, skip, acc, full);
            tokenizer_stream_free(s);
            free(acc);
            free(full);
            free(ids);
        }
    }
    tokenizer_free(t);
    tok_corpus_free(&c);
}

TEST(stream_stories) { check_stream(STORIES); }
TEST(stream_gpt2_bytelevel) { check_stream(FIX "/gpt2bl"); }
TEST(stream_llama3_bytelevel) { check_stream(FIX "/llama3bl"); }

/* A byte-fallback character arrives in pieces: nothing is emitted until its run of byte
 * tokens ends (a complete character could still be spoiled by a later invalid byte). */
TEST(stream_holds_partial_utf8) {
    tokenizer *t = load_tok(STORIES);
    int32_t *ids = NULL;
    size_t n = 0;
    ASSERT_EQ(tokenizer_encode(t, "日本", strlen("日本"), false, &ids, &n), 0);
    /* "▁" then six <0xNN> byte tokens */
    ASSERT_EQ(n, 7);
    tokenizer_stream *s = tokenizer_stream_new(t, true);
    const char *p;
    size_t pl;
    ASSERT_EQ(tokenizer_stream_push(s, ids[0], &p, &pl), 0);
    ASSERT_EQ(tokenizer_stream_push(s, ids[1], &p, &pl), 0);
    ASSERT_EQ(pl, 0);
    ASSERT_EQ(tokenizer_stream_push(s, ids[2], &p, &pl), 0);
    ASSERT_EQ(pl, 0);
    ASSERT_EQ(tokenizer_stream_push(s, ids[3], &p, &pl), 0);
    ASSERT_EQ(pl, 0); /* "日" is complete, but the run is still open */
    ASSERT_EQ(tokenizer_stream_push(s, ids[0], &p, &pl), 0);
    ASSERT_STREQ(p, "日 "); /* the "▁" token closes the run */
    tokenizer_stream_free(s);
    free(ids);
    tokenizer_free(t);
}

TEST(stream_prime) {
    tokenizer *t = load_tok(STORIES);
    int32_t *ids = NULL, *gen = NULL;
    size_t n = 0, gn = 0;
    ASSERT_EQ(tokenizer_encode(t, "Once upon a time", 16, true, &ids, &n), 0);
    ASSERT_EQ(ids[0], tokenizer_bos_id(t));
    ASSERT_EQ(tokenizer_encode(t, "Once upon a time there", 22, false, &gen, &gn), 0);
    int32_t there = gen[gn - 1];
    ASSERT_STREQ(tokenizer_piece(t, there), "\xE2\x96\x81there"); /* "▁there" */
    const char *p;
    size_t pl;
    tokenizer_stream *s = tokenizer_stream_new(t, true);
    ASSERT_EQ(tokenizer_stream_prime(s, ids, n), 0);
    ASSERT_EQ(tokenizer_stream_push(s, there, &p, &pl), 0);
    ASSERT_STREQ(p, " there");
    ASSERT_EQ(pl, 6);
    ASSERT_EQ(tokenizer_stream_push(s, tokenizer_eos_id(t), &p, &pl), 0);
    ASSERT_EQ(pl, 0); /* skipped special token */
    tokenizer_stream_free(s);

    /* Without context the first word loses its dummy-prefix space, as in a full decode. */
    s = tokenizer_stream_new(t, true);
    ASSERT_EQ(tokenizer_stream_push(s, tokenizer_bos_id(t), &p, &pl), 0);
    ASSERT_EQ(pl, 0);
    ASSERT_EQ(tokenizer_stream_push(s, there, &p, &pl), 0);
    ASSERT_STREQ(p, "there");
    tokenizer_stream_free(s);

    /* Priming with a byte-level tokenizer keeps the Ġ space too. */
    tokenizer *b = load_tok(FIX "/gpt2bl");
    int32_t *bi = NULL;
    size_t bn = 0;
    ASSERT_EQ(tokenizer_encode(b, "Hello world", 11, false, &bi, &bn), 0);
    ASSERT(bn >= 2);
    s = tokenizer_stream_new(b, true);
    ASSERT_EQ(tokenizer_stream_prime(s, bi, bn - 1), 0);
    ASSERT_EQ(tokenizer_stream_push(s, bi[bn - 1], &p, &pl), 0);
    char *full = NULL, *head = NULL;
    ASSERT_EQ(tokenizer_decode(b, bi, bn, true, &full, NULL), 0);
    ASSERT_EQ(tokenizer_decode(b, bi, bn - 1, true, &head, NULL), 0);
    ASSERT_STREQ(p, full + strlen(head));
    free(full);
    free(head);
    tokenizer_stream_free(s);
    free(bi);
    tokenizer_free(b);
    free(ids);
    free(gen);
    tokenizer_free(t);
}

/* ---- decode and stream against `tokenizers`' decode on byte-heavy id sequences ----
 * decode_cases.jsonl (hand-made neighbours of issue 9 defect 14) and decode_random_<name>.jsonl
 * (500 random sequences each), made by make_fixtures.py. The contract (tokenizer.h): the
 * one-shot decode equals `tokenizers`' decode; the stream's pieces are each valid UTF-8 and,
 * after the flush, add up to it byte for byte. */

static const char *decode_tok_dir(const char *name) {
    if (!strcmp(name, "stories")) return STORIES;
    if (!strcmp(name, "gpt2bl")) return FIX "/gpt2bl";
    if (!strcmp(name, "tiny_bl")) return FIX "/tiny_bl";
    FAIL("unknown tokenizer \"%s\" in a decode fixture", name);
}

/* Streams ids[0..n) (after priming with ctx[0..nc)) into a malloc'ed string; every piece must
 * be valid UTF-8. */
static char *stream_all(const tokenizer *t, bool skip, const int32_t *ctx, size_t nc, const int32_t *ids,
                        size_t n, const char *what, size_t *out_len) {
    tokenizer_stream *s = tokenizer_stream_new(t, skip);
    ASSERT(s);
    if (nc) ASSERT_EQ(tokenizer_stream_prime(s, ctx, nc), 0);
    size_t cap = 64, al = 0;
    char *acc = malloc(cap);
    ASSERT(acc);
    for (size_t i = 0; i <= n; i++) {
        const char *p = NULL;
        size_t pl = 0;
        int rc = i < n ? tokenizer_stream_push(s, ids[i], &p, &pl) : tokenizer_stream_flush(s, &p, &pl);
        if (rc) FAIL("%s: stream %s %zu = %d", what, i < n ? "push" : "flush", i, rc);
        if (!utf8_ok(p, pl)) FAIL("%s: piece %zu (%zu bytes) is not valid UTF-8", what, i, pl);
        while (al + pl + 1 > cap) ASSERT(acc = realloc(acc, cap *= 2));
        memcpy(acc + al, p, pl);
        al += pl;
    }
    acc[al] = 0;
    tokenizer_stream_free(s);
    *out_len = al;
    return acc;
}

/* decode(ids) == want, valid UTF-8, and the stream adds up to it. */
static void check_decode(const tokenizer *t, const char *what, const int32_t *ids, size_t n, bool skip,
                         const char *want) {
    char *full = NULL;
    size_t dl = 0, al = 0;
    ASSERT_EQ(tokenizer_decode(t, ids, n, skip, &full, &dl), 0);
    if (dl != strlen(want) || memcmp(full, want, dl))
        FAIL("%s (skip_special=%d): decode \"%s\" != tokenizers' \"%s\"", what, skip, full, want);
    if (!utf8_ok(full, dl)) FAIL("%s: decode is not valid UTF-8", what);
    char *acc = stream_all(t, skip, NULL, 0, ids, n, what, &al);
    if (al != dl || memcmp(acc, full, dl))
        FAIL("%s (skip_special=%d): stream \"%s\" != decode \"%s\"", what, skip, acc, full);
    free(acc);
    free(full);
}

/* Priming with ids[0..j) then streaming the rest gives decode(all) minus decode(ids[0..j))
 * whenever the context ends final: not inside a byte-fallback run, not in an incomplete
 * character (a decode ending in U+FFFD may be one). Otherwise only validity is promised. */
static void check_primed(const tokenizer *t, const char *what, const int32_t *ids, size_t n, size_t j, bool skip) {
    char *full = NULL, *head = NULL;
    size_t fl = 0, hl = 0, al = 0, last = j;
    ASSERT_EQ(tokenizer_decode(t, ids, n, skip, &full, &fl), 0);
    ASSERT_EQ(tokenizer_decode(t, ids, j, skip, &head, &hl), 0);
    while (last > 0 && (ids[last - 1] < 0 || ids[last - 1] >= tokenizer_vocab_size(t) ||
                        (skip && tokenizer_is_special(t, ids[last - 1]))))
        last--;
    bool final = !(hl >= 3 && !memcmp(head + hl - 3, "\xEF\xBF\xBD", 3)) && !(last && byte_piece(t, ids[last - 1]));
    char *acc = stream_all(t, skip, ids, j, ids + j, n - j, what, &al);
    if (final && (hl > fl || memcmp(full, head, hl) || al != fl - hl || memcmp(acc, full + hl, al)))
        FAIL("%s (primed with %zu ids, skip_special=%d): stream \"%s\" != \"%s\" minus \"%s\"", what, j, skip, acc,
             full, head);
    free(acc);
    free(full);
    free(head);
}

/* Runs check_decode (and check_primed at every split) on each record of a decode fixture;
 * tok_name NULL: the record names its tokenizer ("tok"). */
static void check_decode_fixture(const char *file, const char *tok_name) {
    char path[256];
    snprintf(path, sizeof(path), FIX "/%s", file);
    char *txt = test_read_file(path, NULL);
    if (!txt) FAIL("cannot read %s (a committed fixture; run from the repository root)", path);
    tokenizer *t = tok_name ? load_tok(decode_tok_dir(tok_name)) : NULL;
    size_t rec = 0, n_ids = 0;
    for (char *line = txt, *nl; *line; line = nl + 1, rec++) {
        ASSERT(nl = strchr(line, '\n'));
        *nl = 0;
        cJSON *o = cJSON_Parse(line);
        if (!o) FAIL("%s:%zu: bad JSON", path, rec + 1);
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name"), *D = cJSON_GetObjectItemCaseSensitive(o, "D");
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "d");
        ASSERT(cJSON_IsString(d));
        ids_t ids = json_ids(cJSON_GetObjectItemCaseSensitive(o, "ids"));
        char what[300];
        snprintf(what, sizeof(what), "%s:%zu %s", file, rec + 1, cJSON_IsString(name) ? name->valuestring : "");
        tokenizer *rt = t;
        if (!tok_name) rt = load_tok(decode_tok_dir(cJSON_GetObjectItemCaseSensitive(o, "tok")->valuestring));
        check_decode(rt, what, ids.v, ids.n, true, d->valuestring);
        check_decode(rt, what, ids.v, ids.n, false, D ? D->valuestring : d->valuestring);
        for (size_t j = 1; j < ids.n; j++) {
            check_primed(rt, what, ids.v, ids.n, j, true);
            check_primed(rt, what, ids.v, ids.n, j, false);
        }
        if (!tok_name) tokenizer_free(rt);
        n_ids += ids.n;
        free(ids.v);
        cJSON_Delete(o);
    }
    if (rec == 0) FAIL("%s is empty", path);
    printf("    %s: %zu sequences, %zu ids\n", file, rec, n_ids);
    free(txt);
    tokenizer_free(t);
}

TEST(decode_cases_match_tokenizers) { check_decode_fixture("decode_cases.jsonl", NULL); }
TEST(decode_random_stories) { check_decode_fixture("decode_random_stories.jsonl", "stories"); }
TEST(decode_random_gpt2_bytelevel) { check_decode_fixture("decode_random_gpt2bl.jsonl", "gpt2bl"); }
TEST(decode_random_tiny_bytelevel) { check_decode_fixture("decode_random_tiny_bl.jsonl", "tiny_bl"); }

/* The id whose vocabulary piece is p (the test fails when there is none). */
static int32_t piece_id(const tokenizer *t, const char *p) {
    for (int32_t id = 0; id < tokenizer_vocab_size(t); id++)
        if (tokenizer_piece(t, id) && !strcmp(tokenizer_piece(t, id), p)) return id;
    FAIL("no token \"%s\"", p);
}

/* Issue 9 defect 14 as filed: a valid byte token then an invalid byte run. The run decodes as
 * one unit ("A" + two cut bytes = three U+FFFD, as `tokenizers` does), so "A" must not be sent
 * before the run ends; the old stream sent "A" and later "\xBF\xBD" + U+FFFD + U+FFFD (a
 * U+FFFD without its lead byte). */
TEST(stream_byte_run_spoiled_later) {
    tokenizer *t = load_tok(STORIES);
    const int32_t word = piece_id(t, "\xE2\x96\x81" "do"), A = piece_id(t, "<0x41>"), e4 = piece_id(t, "<0xE4>"),
                  b8 = piece_id(t, "<0xB8>");
    const int32_t ids[] = {word, A, e4, b8, word};
    static const char *const want[] = {"do", "", "", "", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD do", ""};
    tokenizer_stream *s = tokenizer_stream_new(t, true);
    for (size_t i = 0; i <= 5; i++) {
        const char *p = NULL;
        size_t pl = 0;
        ASSERT_EQ(i < 5 ? tokenizer_stream_push(s, ids[i], &p, &pl) : tokenizer_stream_flush(s, &p, &pl), 0);
        ASSERT_EQ(pl, strlen(want[i]));
        ASSERT_STREQ(p, want[i]);
    }
    tokenizer_stream_free(s);
    /* Ending inside the run: everything comes with the flush. */
    s = tokenizer_stream_new(t, true);
    const char *p = NULL;
    size_t pl = 0;
    for (size_t i = 0; i < 4; i++) ASSERT_EQ(tokenizer_stream_push(s, ids[i], &p, &pl), 0);
    ASSERT_STREQ(p, "");
    ASSERT_EQ(tokenizer_stream_flush(s, &p, &pl), 0);
    ASSERT_STREQ(p, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    tokenizer_stream_free(s);
    tokenizer_free(t);
}

/* Byte-level: the lossy decode replaces each maximal ill-formed subsequence, so a complete
 * character is final at once and an invalid byte after it is a U+FFFD of its own. */
TEST(stream_bytelevel_pieces) {
    tokenizer *t = load_tok(FIX "/gpt2bl");
    /* The byte-level characters of bytes C3, A9, FF, E4 are Ã © ÿ ä. */
    const int32_t c3 = piece_id(t, "\xC3\x83"), a9 = piece_id(t, "\xC2\xA9"), ff = piece_id(t, "\xC3\xBF"),
                  e4 = piece_id(t, "\xC3\xA4");
    const int32_t ids[] = {c3, a9, ff, e4, e4};
    static const char *const want[] = {"", "\xC3\xA9", "\xEF\xBF\xBD", "", "\xEF\xBF\xBD", "\xEF\xBF\xBD"};
    tokenizer_stream *s = tokenizer_stream_new(t, true);
    for (size_t i = 0; i <= 5; i++) {
        const char *p = NULL;
        size_t pl = 0;
        ASSERT_EQ(i < 5 ? tokenizer_stream_push(s, ids[i], &p, &pl) : tokenizer_stream_flush(s, &p, &pl), 0);
        if (strcmp(p, want[i])) FAIL("piece %zu: \"%s\", want \"%s\"", i, p, want[i]);
    }
    tokenizer_stream_free(s);
    tokenizer_free(t);
}

/* A prime is a hard boundary: a byte run open at the end of the context is decoded as it
 * stands, and generated byte tokens start a run of their own. */
TEST(stream_prime_ends_byte_run) {
    tokenizer *t = load_tok(STORIES);
    int32_t *ctx = NULL, *gen = NULL;
    size_t nc = 0, ng = 0;
    ASSERT_EQ(tokenizer_encode(t, "中", strlen("中"), false, &ctx, &nc), 0); /* ▁ <0xE4> <0xB8> <0xAD> */
    ASSERT_EQ(nc, 4);
    ASSERT_EQ(tokenizer_encode(t, "文 do", strlen("文 do"), false, &gen, &ng), 0); /* ▁ E6 96 87 ▁do */
    ASSERT_EQ(ng, 5);
    tokenizer_stream *s = tokenizer_stream_new(t, true);
    ASSERT_EQ(tokenizer_stream_prime(s, ctx, nc), 0);
    const char *p = NULL;
    size_t pl = 0;
    for (size_t i = 1; i < ng; i++) ASSERT_EQ(tokenizer_stream_push(s, gen[i], &p, &pl), 0);
    ASSERT_STREQ(p, "文 do"); /* not "中文 do": the context's character is not sent again */
    tokenizer_stream_free(s);
    free(ctx);
    free(gen);
    tokenizer_free(t);
}

/* ---- special tokens, ids, metadata ---- */

TEST(special_tokens_in_text) {
    tokenizer *t = load_tok(STORIES);
    int32_t *ids = NULL;
    size_t n = 0;
    ASSERT_EQ(tokenizer_encode(t, "<s>", 3, false, &ids, &n), 0);
    ASSERT_EQ(n, 1);
    ASSERT_EQ(ids[0], 1);
    free(ids);
    /* HF: "a<s>b" -> ▁a, <s>, b (no dummy prefix after the special token) */
    ASSERT_EQ(tokenizer_encode(t, "a<s>b</s>", 9, false, &ids, &n), 0);
    ASSERT_EQ(n, 4);
    ASSERT_STREQ(tokenizer_piece(t, ids[0]), "\xE2\x96\x81" "a");
    ASSERT_EQ(ids[1], 1);
    ASSERT_STREQ(tokenizer_piece(t, ids[2]), "b");
    ASSERT_EQ(ids[3], 2);
    char *d = NULL;
    ASSERT_EQ(tokenizer_decode(t, ids, n, true, &d, NULL), 0);
    ASSERT_STREQ(d, "ab");
    free(d);
    ASSERT_EQ(tokenizer_decode(t, ids, n, false, &d, NULL), 0);
    ASSERT_STREQ(d, "a<s>b</s>");
    free(d);
    free(ids);
    ASSERT(tokenizer_is_special(t, 0));
    ASSERT(tokenizer_is_special(t, 1));
    ASSERT(tokenizer_is_special(t, 2));
    ASSERT(!tokenizer_is_special(t, 3));
    ASSERT(!tokenizer_is_special(t, 100000));
    tokenizer_free(t);

    tokenizer *l3 = load_tok(FIX "/llama3bl");
    ASSERT_EQ(tokenizer_encode(l3, "x<|endoftext|>y", 15, false, &ids, &n), 0);
    ASSERT_EQ(n, 3);
    ASSERT_STREQ(tokenizer_piece(l3, ids[1]), "<|endoftext|>");
    ASSERT(tokenizer_is_special(l3, ids[1]));
    free(ids);
    tokenizer_free(l3);
}

TEST(bos_eos_metadata) {
    tokenizer *t = load_tok(STORIES);
    ASSERT_EQ(tokenizer_vocab_size(t), 512);
    ASSERT_EQ(tokenizer_bos_id(t), 1);
    ASSERT_EQ(tokenizer_eos_id(t), 2);
    ASSERT(tokenizer_adds_bos(t));
    ASSERT_STREQ(tokenizer_piece(t, 0), "<unk>");
    ASSERT_STREQ(tokenizer_piece(t, 13), "<0x0A>");
    ASSERT(tokenizer_piece(t, 512) == NULL);
    ASSERT(tokenizer_piece(t, -1) == NULL);
    int32_t *ids = NULL;
    size_t n = 99;
    ASSERT_EQ(tokenizer_encode(t, "", 0, true, &ids, &n), 0);
    ASSERT_EQ(n, 1);
    ASSERT_EQ(ids[0], 1);
    free(ids);
    ASSERT_EQ(tokenizer_encode(t, "", 0, false, &ids, &n), 0);
    ASSERT_EQ(n, 0);
    free(ids);
    tokenizer_free(t);

    tokenizer *g = load_tok(FIX "/gpt2bl");
    ASSERT(!tokenizer_adds_bos(g));
    ASSERT(tokenizer_bos_id(g) >= 0);
    ASSERT_STREQ(tokenizer_piece(g, tokenizer_eos_id(g)), "<|endoftext|>");
    ASSERT(tokenizer_vocab_size(g) >= 8000);
    tokenizer_free(g);

    tokenizer *l = load_tok(FIX "/llama3bl");
    ASSERT(tokenizer_adds_bos(l));
    ASSERT_STREQ(tokenizer_piece(l, tokenizer_bos_id(l)), "<|begin_of_text|>");
    ASSERT(tokenizer_vocab_size(l) >= 8000);
    tokenizer_free(l);
    tokenizer_free(NULL);
}

TEST(invalid_utf8_rejected) {
    static const char *bad[] = {
        "\xff", "a\x80", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xed\xa0\x80", /* surrogate */
        "\xf4\x90\x80\x80",                                                     /* > U+10FFFF */
        "\xf5\x80\x80\x80", "\xe6\x97",                                         /* truncated */
        "ok \xf0\x9f\x98", "\xfe\xfe",
    };
    const char *dirs[] = {STORIES, FIX "/gpt2bl", FIX "/llama3bl"};
    for (int d = 0; d < 3; d++) {
        tokenizer *t = load_tok(dirs[d]);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            int32_t *ids = NULL;
            size_t n = 0;
            ASSERT_EQ(tokenizer_encode(t, bad[i], strlen(bad[i]), true, &ids, &n), PEFTD_EINVAL);
            ASSERT(ids == NULL);
        }
        /* An embedded NUL is valid UTF-8 and encodes. */
        int32_t *ids = NULL;
        size_t n = 0;
        ASSERT_EQ(tokenizer_encode(t, "a\0b", 3, false, &ids, &n), 0);
        ASSERT(n >= 2);
        char *txt = NULL;
        size_t tl = 0;
        ASSERT_EQ(tokenizer_decode(t, ids, n, true, &txt, &tl), 0);
        ASSERT_EQ(tl, 3);
        ASSERT(!memcmp(txt, "a\0b", 3));
        free(txt);
        free(ids);
        tokenizer_free(t);
    }
}

/* Byte tokens that do not form UTF-8 decode to U+FFFD, as HF does. */
TEST(decode_invalid_bytes) {
    tokenizer *t = load_tok(STORIES);
    /* Values from `tokenizers` 0.23: a run of byte tokens that is not UTF-8 gives one U+FFFD
     * per byte (ByteFallback); <0x41> belongs to the run, the piece "A" (id 447) does not. */
    int32_t ids[] = {1, 3 + 0xE6, 3 + 0x97, 3 + 0x41};
    char *d = NULL;
    ASSERT_EQ(tokenizer_decode(t, ids, 4, true, &d, NULL), 0);
    ASSERT_STREQ(d, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    free(d);
    ids[3] = 447;
    ASSERT_STREQ(tokenizer_piece(t, 447), "A");
    ASSERT_EQ(tokenizer_decode(t, ids, 4, true, &d, NULL), 0);
    ASSERT_STREQ(d, "\xEF\xBF\xBD\xEF\xBF\xBD" "A");
    free(d);
    int32_t unknown[] = {5000, -3, 3 + 'h', 3 + 'i'};
    ASSERT_EQ(tokenizer_decode(t, unknown, 4, true, &d, NULL), 0);
    ASSERT_STREQ(d, "hi"); /* ids outside the vocabulary are skipped, as HF does */
    free(d);
    tokenizer_free(t);
}

/* Random text (all planes, combining marks, whitespace) round-trips through byte-level BPE. */
TEST(bytelevel_roundtrip_random) {
    tokenizer *t = load_tok(FIX "/llama3bl");
    uint64_t x = 88172645463325252ull;
    char buf[4096];
    for (int iter = 0; iter < 2000; iter++) {
        size_t len = 0;
        int nchar = 1 + iter % 60;
        for (int i = 0; i < nchar; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            uint32_t cp;
            switch (x % 6) {
            case 0: cp = 0x20 + (uint32_t)(x >> 8) % 0x5F; break;
            case 1: cp = " \t\n\r"[(x >> 8) % 4]; break;
            case 2: cp = 0x300 + (uint32_t)(x >> 8) % 0x70; break;
            case 3: cp = 0x4E00 + (uint32_t)(x >> 8) % 0x5000; break;
            case 4: cp = 0x1F300 + (uint32_t)(x >> 8) % 0x300; break;
            default: cp = 0x80 + (uint32_t)(x >> 8) % 0xD700; break;
            }
            if (cp >= 0xD800 && cp < 0xE000) cp = 'x';
            if (cp < 0x80) buf[len++] = (char)cp;
            else if (cp < 0x800) { buf[len++] = (char)(0xC0 | cp >> 6); buf[len++] = (char)(0x80 | (cp & 0x3F)); }
            else if (cp < 0x10000) {
                buf[len++] = (char)(0xE0 | cp >> 12);
                buf[len++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                buf[len++] = (char)(0x80 | (cp & 0x3F));
            } else {
                buf[len++] = (char)(0xF0 | cp >> 18);
                buf[len++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                buf[len++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                buf[len++] = (char)(0x80 | (cp & 0x3F));
            }
        }
        int32_t *ids = NULL;
        size_t n = 0, dl = 0;
        char *d = NULL;
        ASSERT_EQ(tokenizer_encode(t, buf, len, false, &ids, &n), 0);
        ASSERT_EQ(tokenizer_decode(t, ids, n, false, &d, &dl), 0);
        if (dl != len || memcmp(d, buf, len)) FAIL("round trip failed at iteration %d", iter);
        free(d);
        free(ids);
    }
    tokenizer_free(t);
}

TEST_MAIN(parity_stories, parity_gpt2_bytelevel, parity_llama3_bytelevel, parity_legacy_sentencepiece,
          parity_nfkc_lowercase, stream_stories,
          stream_gpt2_bytelevel, stream_llama3_bytelevel, stream_holds_partial_utf8, stream_prime,
          special_tokens_in_text, bos_eos_metadata, invalid_utf8_rejected, decode_invalid_bytes,
          bytelevel_roundtrip_random, decode_cases_match_tokenizers, decode_random_stories,
          decode_random_gpt2_bytelevel, decode_random_tiny_bytelevel, stream_byte_run_spoiled_later,
          stream_bytelevel_pieces, stream_prime_ends_byte_run)
