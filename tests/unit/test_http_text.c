/* tests/unit/test_http_text.c — the HTTP layer's text guards: error messages that quote
 * client bytes become valid UTF-8 (http_utf8_sanitize, used by every error body), and
 * JSON bodies holding a NUL character (raw or \u0000), which C strings would silently
 * truncate, are recognised (http_json_has_nul). */
#include "server/http/http_internal.h"
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

TEST_MAIN(sanitize_replaces_every_invalid_byte, sanitize_never_cuts_a_character, json_nul_escapes_are_found)
