/* tests/unit/test_http_text.c — the HTTP layer's text guards: error messages that quote
 * client bytes become valid UTF-8 (http_utf8_sanitize, used by every error body), and
 * JSON bodies holding a NUL character (raw or \u0000), which C strings would silently
 * truncate, are recognised (http_json_has_nul); a byte token's logprobs text is valid
 * UTF-8 and its "bytes" are the byte itself (api_token_text). */
#include "server/api/api_completions.h"
#include "server/api/api_internal.h"
#include "server/text/tokenizer.h"
#include "tests/harness/test.h"

static const char *clean(const char *in, size_t outlen) {
    static char out[4096];
    ASSERT(outlen <= sizeof out);
    size_t n = http_utf8_sanitize(in, out, outlen);
    ASSERT_EQ(n, strlen(out));
    ASSERT(http_utf8_valid(out, n));
    return out;
}

TEST(sanitize_replaces_every_invalid_byte) {
    ASSERT_STREQ(clean("plain ascii", 64), "plain ascii");
    ASSERT_STREQ(clean("caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80", 64), "caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80");
    ASSERT_STREQ(clean("a\xff" "b", 64), "a\xef\xbf\xbd" "b");
    ASSERT_STREQ(clean("\xff\xfe", 64), "\xef\xbf\xbd\xef\xbf\xbd");
    ASSERT_STREQ(clean("x\xc3", 64), "x\xef\xbf\xbd");                 /* cut lead byte */
    ASSERT_STREQ(clean("\xf0\x9f\x98", 64), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"); /* cut 4-byte */
    ASSERT_STREQ(clean("\xc0\xaf", 64), "\xef\xbf\xbd\xef\xbf\xbd");     /* overlong '/' */
    ASSERT_STREQ(clean("\xed\xa0\x80", 64), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"); /* surrogate */
    ASSERT_STREQ(clean("\xf4\x90\x80\x80", 64), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
}

TEST(sanitize_never_cuts_a_character) {
    /* 5 bytes of room: "ab" + a 3-byte char fits only without the NUL, so it is left out */
    ASSERT_STREQ(clean("ab\xe2\x98\x83", 5), "ab");
    ASSERT_STREQ(clean("ab\xe2\x98\x83", 6), "ab\xe2\x98\x83");
    ASSERT_STREQ(clean("a\xff", 4), "a");
    char out[1];
    ASSERT_EQ(http_utf8_sanitize("abc", out, 1), 0);
    ASSERT_EQ(out[0], 0);
}

static bool has_nul(const char *s) { return http_json_has_nul(s, strlen(s)); }

TEST(json_nul_escapes_are_found) {
    ASSERT(has_nul("{\"prompt\": \"a\\u0000b\"}"));
    ASSERT(has_nul("\\u0000"));
    ASSERT(has_nul("\\\\\\u0000"));            /* \\ then \u0000 */
    ASSERT(!has_nul("{\"prompt\": \"a\\\\u0000b\"}")); /* an escaped backslash, then text */
    ASSERT(!has_nul("\\\\\\\\u0000"));
    ASSERT(!has_nul("\\u0001"));
    ASSERT(!has_nul("\\u000"));                /* cut short at the end */
    ASSERT(!has_nul("plain"));
    ASSERT(http_json_has_nul("ab\0cd", 5));    /* a raw NUL byte */
    ASSERT(!http_json_has_nul("abcd", 4));
}

static int32_t id_of(const tokenizer *t, const char *piece) {
    for (int32_t i = 0; i < tokenizer_vocab_size(t); i++) {
        const char *p = tokenizer_piece(t, i);
        if (p && !strcmp(p, piece)) return i;
    }
    FAIL("no token '%s'", piece);
}

/* stories260K is a SentencePiece byte-fallback vocabulary: "<0xE4>" alone is not a
 * character. Its logprobs entry read "<0xE4>" with the bytes of that spelling. */
TEST(byte_tokens_in_logprobs) {
    tokenizer *t = NULL;
    char err[256];
    ASSERT_EQ(tokenizer_load("models/stories260K", &t, err, sizeof err), 0);
    unsigned char raw[API_TOKEN_MAX_BYTES];
    size_t n = 0;
    int32_t e4 = id_of(t, "<0xE4>"), a = id_of(t, "<0x41>"), once = id_of(t, "\xe2\x96\x81Once");
    ASSERT_EQ(tokenizer_token_bytes(t, e4, raw, sizeof raw, &n), 0);
    ASSERT_EQ(n, 1);
    ASSERT_EQ(raw[0], 0xE4);
    ASSERT_EQ(tokenizer_token_bytes(t, once, raw, sizeof raw, &n), PEFTD_ENOTFOUND);

    char *s = api_token_text(t, -1, e4, raw, sizeof raw, &n);
    ASSERT_STREQ(s, "bytes:\\xe4");
    ASSERT(n == 1 && raw[0] == 0xE4);
    free(s);
    s = api_token_text(t, -1, a, raw, sizeof raw, &n); /* a whole character: its text */
    ASSERT_STREQ(s, "A");
    ASSERT(n == 1 && raw[0] == 'A');
    free(s);
    s = api_token_text(t, a, once, raw, sizeof raw, &n); /* after "A": " Once" */
    ASSERT_STREQ(s, " Once");
    ASSERT(n == 5 && !memcmp(raw, " Once", 5));
    free(s);
    tokenizer_free(t);
}

TEST_MAIN(sanitize_replaces_every_invalid_byte, sanitize_never_cuts_a_character, json_nul_escapes_are_found,
          byte_tokens_in_logprobs)
