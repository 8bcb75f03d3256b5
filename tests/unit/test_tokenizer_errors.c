/* tests/unit/test_tokenizer_errors.c — broken tokenizer.json files: every one refused with a
 * message naming what is wrong, never a crash (split from test_tokenizer.c).
 * Run from the repository root.
 */
#include <cJSON.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/status.h"
#include "server/text/tokenizer.h"
#include "tests/harness/test.h"

#define STORIES "models/stories260K"

/* ---- broken files: errors, never crashes ---- */

static char g_tmp[256];

static void write_file(const char *dir, const char *name, const char *data, size_t len) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ASSERT(f);
    ASSERT_EQ(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* Loads a tokenizer.json with the given text; expects a failure whose message contains `want`. */
static void expect_load_error(const char *json, size_t len, const char *want) {
    write_file(g_tmp, "tokenizer.json", json, len);
    tokenizer *t = NULL;
    char err[512] = "";
    int rc = tokenizer_load(g_tmp, &t, err, sizeof(err));
    if (rc >= 0) FAIL("loading a broken tokenizer.json succeeded (wanted \"%s\")", want);
    ASSERT(t == NULL);
    if (!strstr(err, want)) FAIL("error \"%s\" does not mention \"%s\"", err, want);
}

static const char *MINI =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"<s>\",\"special\":true}],\"normalizer\":null,"
    "\"pre_tokenizer\":%s,\"post_processor\":null,\"decoder\":%s,"
    "\"model\":{\"type\":\"%s\",\"vocab\":%s,\"merges\":%s}}";

static void expect_mini_error(const char *pre, const char *dec, const char *type, const char *vocab,
                              const char *merges, const char *want) {
    char json[2048];
    snprintf(json, sizeof(json), MINI, pre, dec, type, vocab, merges);
    expect_load_error(json, strlen(json), want);
}

TEST(broken_files) {
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/peftd_tok_test_%d", (int)getpid());
    mkdir(g_tmp, 0700);
    size_t len = 0;
    char *good = test_read_file(STORIES "/tokenizer.json", &len);
    ASSERT(good);
    /* truncated at many points */
    for (size_t cut = 0; cut < len; cut += len / 37 + 1) expect_load_error(good, cut, "tokenizer.json");
    expect_load_error("[]", 2, "not a valid JSON object");
    expect_load_error("{}", 2, "missing \"model\"");
    const char *V = "{\"<s>\":0,\"a\":1,\"b\":2,\"ab\":3}";
    /* "<0xNN>"-like pieces that are not two uppercase hex digits are plain pieces, never
     * byte-fallback entries: "<0x-1>" once wrote byte_ids[-1], over the flags stored just
     * before the table, which turned byte fallback off (é then encoded as <unk>) */
    {
        char json[2048];
        snprintf(json, sizeof(json), MINI, "null", "null", "BPE\",\"byte_fallback\":true,\"unk_token\":\"<unk>",
                 "{\"<s>\":0,\"<unk>\":1,\"<0x-1>\":2,\"<0x F>\":3,\"<0x+F>\":4,\"<0xC3>\":5,\"<0xA9>\":6}",
                 "[]");
        write_file(g_tmp, "tokenizer.json", json, strlen(json));
        tokenizer *t = NULL;
        char err[256];
        ASSERT_EQ(tokenizer_load(g_tmp, &t, err, sizeof(err)), 0);
        int32_t *ids = NULL;
        size_t n = 0;
        ASSERT_EQ(tokenizer_encode(t, "\xc3\xa9", 2, false, &ids, &n), 0);
        ASSERT_EQ(n, 2);
        ASSERT_EQ(ids[0], 5);
        ASSERT_EQ(ids[1], 6);
        free(ids);
        tokenizer_free(t);
    }
    /* sanity: the mini file itself loads */
    {
        char json[2048];
        snprintf(json, sizeof(json), MINI, "null", "null", "BPE", V, "[\"a b\"]");
        write_file(g_tmp, "tokenizer.json", json, strlen(json));
        tokenizer *t = NULL;
        char err[256];
        ASSERT_EQ(tokenizer_load(g_tmp, &t, err, sizeof(err)), 0);
        int32_t *ids = NULL;
        size_t n = 0;
        ASSERT_EQ(tokenizer_encode(t, "abab", 4, false, &ids, &n), 0);
        ASSERT_EQ(n, 2);
        ASSERT_EQ(ids[0], 3);
        free(ids);
        tokenizer_free(t);
    }
    expect_mini_error("null", "null", "Unigram", V, "[]", "unsupported model type 'Unigram'");
    expect_mini_error("null", "null", "WordPiece", V, "[]", "unsupported model type 'WordPiece'");
    expect_mini_error("{\"type\":\"Whitespace\"}", "null", "BPE", V, "[]",
                      "unsupported pre_tokenizer type 'Whitespace'");
    expect_mini_error("null", "{\"type\":\"WordPiece\",\"prefix\":\"##\"}", "BPE", V, "[]",
                      "unsupported decoder type 'WordPiece'");
    expect_mini_error("null", "null", "BPE", "[1,2]", "[]", "model.vocab must be an object");
    expect_mini_error("null", "null", "BPE", "{\"a\":\"x\"}", "[]", "not a valid id");
    expect_mini_error("null", "null", "BPE", "{\"a\":-4}", "[]", "not a valid id");
    /* A piece that is not UTF-8 would reach decode's text and logprobs' token strings as is
     * (`tokenizers` refuses such a file too: JSON text is UTF-8). */
    expect_mini_error("null", "null", "BPE", "{\"<s>\":0,\"a\xC3\":1}", "[]", "not valid UTF-8");
    expect_mini_error("null", "null", "BPE", V, "\"a b\"", "model.merges must be a list");
    expect_mini_error("null", "null", "BPE", V, "[\"a c\"]", "missing from the vocab");
    expect_mini_error("null", "null", "BPE", V, "[\"abc\"]", "is not \"a b\"");
    expect_mini_error("null", "null", "BPE", V, "[[1,2]]", "is not \"a b\"");
    expect_mini_error("{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(unclosed\"},\"behavior\":\"Isolated\"}", "null",
                      "BPE", V, "[]", "does not compile");
    expect_mini_error("{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Sideways\"}", "null", "BPE", V,
                      "[]", "unsupported Split behavior 'Sideways'");
    expect_mini_error("{\"type\":\"Sequence\",\"pretokenizers\":5}", "null", "BPE", V, "[]", "\"pretokenizers\" list");
    expect_mini_error("{\"type\":7}", "null", "BPE", V, "[]", "pre_tokenizer must be");
    {
        const char *j = "{\"normalizer\":{\"type\":\"Precompiled\",\"precompiled_charsmap\":\"\"},"
                        "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}";
        expect_load_error(j, strlen(j), "unsupported normalizer type 'Precompiled'");
        j = "{\"added_tokens\":5,\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}";
        expect_load_error(j, strlen(j), "added_tokens must be a list");
        j = "{\"added_tokens\":[{\"id\":\"x\",\"content\":\"a\"}],\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}";
        expect_load_error(j, strlen(j), "added_tokens[0]");
        j = "{\"post_processor\":{\"type\":\"Weird\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}";
        expect_load_error(j, strlen(j), "unsupported post_processor type 'Weird'");
        j = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],\"unk_token\":\"<unk>\"}}";
        expect_load_error(j, strlen(j), "unk_token");
        j = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],\"dropout\":0.1}}";
        expect_load_error(j, strlen(j), "dropout");
    }
    /* missing files */
    tokenizer *t = NULL;
    char err[256] = "";
    ASSERT(tokenizer_load("/nonexistent/dir", &t, err, sizeof(err)) < 0);
    ASSERT(t == NULL);
    ASSERT(strstr(err, "tokenizer.json"));
    /* a broken tokenizer_config.json next to a good tokenizer.json */
    write_file(g_tmp, "tokenizer.json", good, len);
    write_file(g_tmp, "tokenizer_config.json", "{\"bos_token\": ", 14);
    ASSERT(tokenizer_load(g_tmp, &t, err, sizeof(err)) < 0);
    ASSERT(strstr(err, "tokenizer_config.json"));
    free(good);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_tmp);
    ASSERT_EQ(system(cmd), 0);
}

TEST_MAIN(broken_files)
