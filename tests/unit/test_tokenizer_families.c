/* tests/unit/test_tokenizer_families.c — per-family tokenizer parity with transformers'
 * AutoTokenizer: Qwen2-style (qwen2bl) and Gemma-style (gemma_sp) tokenizers on the whole corpus
 * plus special-token text, and each family's add-BOS/EOS rules (bos_rules.jsonl).
 *
 * Fixtures: tests/fixtures/tokenizer/, made by make_family_fixtures.py (see its header for the
 * record format). The Llama-3-style tokenizer's corpus parity is test_tokenizer's
 * parity_llama3_bytelevel (make_family_fixtures.py asserts AutoTokenizer gives the same ids).
 * A missing fixture fails. Run from the repository root.
 */
#include <cJSON.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/status.h"
#include "server/text/tokenizer.h"
#include "tests/harness/test.h"
#include "tests/harness/tok_corpus.h"

#define FIX "tests/fixtures/tokenizer"

static tokenizer *load_tok(const char *dir) {
    tokenizer *t = NULL;
    char err[512];
    int rc = tokenizer_load(dir, &t, err, sizeof(err));
    if (rc) FAIL("tokenizer_load(%s) = %d: %s", dir, rc, err);
    return t;
}

/* Every corpus case, then the records carrying their own text ("t"). */
static void check_family(const char *name) {
    char path[256], dir[256];
    snprintf(path, sizeof(path), FIX "/expected_%s.jsonl", name);
    snprintf(dir, sizeof(dir), FIX "/%s", name);
    tok_cases c = tok_corpus_load();
    tokenizer *t = load_tok(dir);
    size_t n_extra = tok_check_expected(t, name, path, &c);
    if (n_extra < 10) FAIL("%s: only %zu records with their own text", path, n_extra);
    tokenizer_free(t);
    tok_corpus_free(&c);
}

TEST(parity_qwen2_style) { check_family("qwen2bl"); }
TEST(parity_gemma_style) { check_family("gemma_sp"); }

/* ---- streaming ---- */

/* Well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF). */
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

/* The incremental detokenizer on every case: pieces are whole characters, add up to the full
 * decode, and text comes out before the flush (these decoder chains are prefix-stable). */
static void check_stream(const char *name) {
    char dir[256];
    snprintf(dir, sizeof(dir), FIX "/%s", name);
    tok_cases c = tok_corpus_load();
    tokenizer *t = load_tok(dir);
    size_t early = 0, total = 0;
    for (int skip = 0; skip < 2; skip++) {
        for (size_t k = 0; k < c.n; k++) {
            int32_t *ids = NULL;
            size_t n = 0, dl = 0, al = 0;
            char *full = NULL;
            ASSERT_EQ(tokenizer_encode(t, c.text[k], c.len[k], true, &ids, &n), 0);
            ASSERT_EQ(tokenizer_decode(t, ids, n, skip, &full, &dl), 0);
            tokenizer_stream *s = tokenizer_stream_new(t, skip);
            ASSERT(s);
            char *acc = malloc(dl + 64);
            for (size_t i = 0; i <= n; i++) {
                const char *piece = NULL;
                size_t pl = 0;
                if (i < n) ASSERT_EQ(tokenizer_stream_push(s, ids[i], &piece, &pl), 0);
                else ASSERT_EQ(tokenizer_stream_flush(s, &piece, &pl), 0);
                if (!utf8_ok(piece, pl)) FAIL("%s case %zu: piece %zu is not whole UTF-8 characters", name, k, i);
                if (al + pl > dl) FAIL("%s case %zu: stream longer than the full decode", name, k);
                memcpy(acc + al, piece, pl);
                al += pl;
                if (i < n) early += pl;
            }
            total += dl;
            if (al != dl || memcmp(acc, full, dl))
                FAIL("%s case %zu (skip_special=%d): stream \"%.*s\" != decode \"%s\"", name, k, skip, (int)al, acc,
                     full);
            tokenizer_stream_free(s);
            free(acc);
            free(full);
            free(ids);
        }
    }
    printf("    %s: %zu of %zu streamed bytes came out before the flush\n", name, early, total);
    ASSERT(early * 10 > total * 9);
    tokenizer_free(t);
    tok_corpus_free(&c);
}

TEST(stream_qwen2_style) { check_stream("qwen2bl"); }
TEST(stream_gemma_style) { check_stream("gemma_sp"); }

/* ---- add-BOS/EOS rules ---- */

static void write_text(const char *path, const char *s, size_t len) {
    FILE *f = fopen(path, "wb");
    ASSERT(f);
    ASSERT_EQ(fwrite(s, 1, len, f), len);
    fclose(f);
}

static void write_json(const char *dir, const char *name, const cJSON *j) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    char *s = cJSON_PrintUnformatted(j);
    ASSERT(s);
    write_text(path, s, strlen(s));
    free(s);
}

/* One bos_rules.jsonl record: tokenizer.json of the base fixture + the record's configs. */
static bool check_rule(const cJSON *o, const char *tmp) {
    const char *name = cJSON_GetObjectItemCaseSensitive(o, "name")->valuestring;
    const char *base = cJSON_GetObjectItemCaseSensitive(o, "base")->valuestring;
    char path[512];
    snprintf(path, sizeof(path), FIX "/%s/tokenizer.json", base);
    size_t len = 0;
    char *tj = test_read_file(path, &len);
    if (!tj) FAIL("the committed fixture %s is missing", path);
    snprintf(path, sizeof(path), "%s/tokenizer.json", tmp);
    write_text(path, tj, len);
    free(tj);
    write_json(tmp, "tokenizer_config.json", cJSON_GetObjectItemCaseSensitive(o, "tc"));
    snprintf(path, sizeof(path), "%s/config.json", tmp);
    unlink(path);
    const cJSON *mc = cJSON_GetObjectItemCaseSensitive(o, "mc");
    if (mc) write_json(tmp, "config.json", mc);

    tokenizer *t = NULL;
    char err[512] = "";
    int rc = tokenizer_load(tmp, &t, err, sizeof(err));
    if (cJSON_GetObjectItemCaseSensitive(o, "error")) {
        bool ok = rc < 0 && !t && strstr(err, "bos_token");
        printf("    %-36s refused: %s\n", name, err);
        if (!ok) fprintf(stderr, "    %s: transformers refuses this config; tokenizer_load gave %d\n", name, rc);
        tokenizer_free(t);
        return ok;
    }
    if (rc) {
        fprintf(stderr, "    %s: tokenizer_load = %d: %s\n", name, rc, err);
        return false;
    }
    bool ok = true;
    const cJSON *it;
    int n_ok = 0, n_all = 0;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "cases")) {
        const char *text = cJSON_GetArrayItem(it, 0)->valuestring;
        tok_ids want = {0};
        tok_ids_cat(&want, cJSON_GetArrayItem(it, 1));
        int32_t *ids = NULL;
        size_t n = 0;
        ASSERT_EQ(tokenizer_encode(t, text, strlen(text), true, &ids, &n), 0);
        bool same = tok_ids_eq(ids, n, want.v, want.n);
        n_all++;
        n_ok += same;
        if (!same && ok) {
            fprintf(stderr, "    %s: \"%s\"\n", name, text);
            tok_print_ids("want", want.v, want.n);
            tok_print_ids("got ", ids, n);
        }
        ok &= same;
        /* tokenizer_adds_bos() tells the chat path whether encode already puts BOS first. */
        if (!strcmp(text, "Hello world")) {
            bool first_is_bos = want.n && want.v[0] == tokenizer_bos_id(t);
            if (tokenizer_adds_bos(t) != first_is_bos) {
                fprintf(stderr, "    %s: tokenizer_adds_bos = %d, transformers adds BOS: %d\n", name,
                        tokenizer_adds_bos(t), first_is_bos);
                ok = false;
            }
        }
        free(ids);
        free(want.v);
    }
    printf("    %-36s %d/%d (%s)\n", name, n_ok, n_all, cJSON_GetObjectItemCaseSensitive(o, "class")->valuestring);
    tokenizer_free(t);
    return ok;
}

TEST(bos_rules_match_transformers) {
    char *txt = test_read_file(FIX "/bos_rules.jsonl", NULL);
    if (!txt) FAIL("the committed fixture " FIX "/bos_rules.jsonl is missing");
    char tmp[] = "/tmp/peftd_bos_rules_XXXXXX";
    ASSERT(mkdtemp(tmp));
    int bad = 0, n = 0;
    for (char *line = txt, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        ASSERT(nl);
        *nl = 0;
        cJSON *o = cJSON_Parse(line);
        ASSERT(o);
        bad += !check_rule(o, tmp);
        n++;
        cJSON_Delete(o);
    }
    free(txt);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    ASSERT_EQ(system(cmd), 0);
    ASSERT(n >= 15);
    if (bad) FAIL("%d of %d BOS/EOS rule configurations differ from transformers", bad, n);
}

/* The families' published metadata as peftd reports it. */
TEST(family_bos_metadata) {
    tokenizer *q = load_tok(FIX "/qwen2bl");
    ASSERT(!tokenizer_adds_bos(q));
    ASSERT_EQ(tokenizer_bos_id(q), -1);
    ASSERT_STREQ(tokenizer_piece(q, tokenizer_eos_id(q)), "<|endoftext|>");
    tokenizer_free(q);
    tokenizer *g = load_tok(FIX "/gemma_sp");
    ASSERT(tokenizer_adds_bos(g));
    ASSERT_STREQ(tokenizer_piece(g, tokenizer_bos_id(g)), "<bos>");
    ASSERT_STREQ(tokenizer_piece(g, tokenizer_eos_id(g)), "<eos>");
    ASSERT(tokenizer_is_special(g, tokenizer_bos_id(g)));
    tokenizer_free(g);
}

TEST_MAIN(parity_qwen2_style, parity_gemma_style, stream_qwen2_style, stream_gemma_style, bos_rules_match_transformers,
          family_bos_metadata)
