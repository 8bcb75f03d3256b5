/* tests/unit/test_json_schema.c — the json_schema compiler and recognizer (json_schema.h)
 * on hand-written cases: for each schema, texts that must be accepted complete, prefixes
 * that must be accepted but are not complete, and texts that must be refused (at the byte
 * where they stop being a prefix of a valid text, checked one byte at a time); refused
 * schemas with the keyword named in the message; the byte sets the recognizer allows at
 * chosen points (what the engine's per-token mask is built from). */
#include <cJSON.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "lib/status.h"
#include "server/engine/json_schema.h"
#include "tests/harness/test.h"

static jschema *compile(const char *src) {
    cJSON *doc = cJSON_Parse(src);
    if (!doc) FAIL("test schema does not parse: %s", src);
    jschema *s = NULL;
    char err[256] = "";
    int rc = jschema_compile(doc, &s, err, sizeof err);
    cJSON_Delete(doc);
    if (rc) FAIL("schema %s refused: %s", src, err);
    return s;
}

/* 1: complete (can end), 0: a valid prefix only, -1: refused */
static int run(const jschema *s, const char *text) {
    jsm m;
    jsm_init(&m, s);
    for (size_t i = 0; text[i]; i++)
        if (!jsm_feed(&m, (const uint8_t *)text + i, 1)) return -1;
    return jsm_can_end(&m) ? 1 : 0;
}

static void expect(const jschema *s, const char *schema, const char *text, int want) {
    int got = run(s, text);
    if (got != want) FAIL("schema %s, text %s: got %d, want %d", schema, text, got, want);
}

typedef struct {
    const char *schema;
    const char *ok[8];      /* complete */
    const char *prefix[6];  /* valid prefixes, not complete */
    const char *bad[10];    /* refused */
} kase;

static const kase CASES[] = {
    {"{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\"}},"
     "\"required\":[\"name\",\"age\"],\"additionalProperties\":false}",
     {"{\"name\":\"Bo\",\"age\":3}", "{\"name\":\"\",\"age\":-10}", "{\"name\":\"\\u00e9\\n\",\"age\":0}"},
     {"{", "{\"name\":\"Bo\"", "{\"name\":\"Bo\",\"age\":3", "{\"na"},
     {"{}", "{\"age\":3,\"name\":\"x\"}", "{\"name\":\"x\"}", "{\"name\":3", "{\"name\":\"x\",\"age\":1.5}",
      "{\"name\":\"x\",\"age\":01}", "{ \"name\"", "{\"name\":\"x\",\"age\":3,", "{\"nam\":", "{\"name\":\"\\ud800\""}},
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"boolean\"},\"ab\":{\"type\":\"null\"},"
     "\"b\":{\"type\":\"number\"}},\"required\":[\"b\"]}",
     {"{\"b\":1}", "{\"a\":true,\"b\":2.5e-3}", "{\"ab\":null,\"b\":-0}", "{\"a\":false,\"ab\":null,\"b\":1E+22}"},
     {"{\"a", "{\"ab\":null,\"b\":1."},
     {"{\"ab\":null,\"a\":true,\"b\":1}", "{\"a\":true}", "{\"b\":1,\"a\":true}", "{\"c\":1", "{\"b\":1.}",
      "{\"b\":1e}", "{\"b\":.5}", "{\"b\":1,}"}},
    {"{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2,\"maxItems\":3}",
     {"[1,2]", "[1,2,3]", "[0,-7,123456789012]"},
     {"[", "[1", "[1,2,3"},
     {"[]", "[1]", "[1,2,3,4]", "[1,]", "[1.0,2]", "[1,2,3,", "[1234567890123"}},
    {"{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}",
     {"\"ab\"", "\"abc\"", "\"\\\"\\\\\"", "\"\xc3\xa9\xc3\xa9\"", "\"\xf0\x9f\x98\x80\xe2\x82\xac\""},
     {"\"a", "\"\xc3"},
     {"\"\"", "\"a\"", "\"abcd", "\"\xc3\"", "\"\x80", "\"\xed\xa0\x80", "\"\x01", "\"\\x"}},
    {"{\"enum\":[\"red\",\"green\",1,12,null,{\"k\":[true]}]}",
     {"\"red\"", "\"green\"", "1", "12", "null", "{\"k\":[true]}"},
     {"\"re", "{\"k\":["},
     {"\"blue\"", "2", "123", "13", "true", "{\"k\":[]}", "\"red\" ", "\"gre\""}},
    {"{\"type\":[\"string\",\"null\"],\"maxLength\":1}",
     {"null", "\"\"", "\"x\""},
     {"nu", "\""},
     {"\"xy", "1", "nul1"}},
    {"{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"x\":{\"const\":1}},\"required\":[\"x\"],"
     "\"additionalProperties\":false},{\"type\":\"object\",\"properties\":{\"x\":{\"const\":\"s\"},\"y\":"
     "{\"type\":\"boolean\"}},\"required\":[\"x\",\"y\"],\"additionalProperties\":false}]}",
     {"{\"x\":1}", "{\"x\":\"s\",\"y\":false}"},
     {"{\"x\":"},
     {"{\"x\":1,\"y\":true}", "{\"x\":\"s\"}", "{\"x\":2}"}},
    {"{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},\"kids\":{\"type\":"
     "\"array\",\"items\":{\"$ref\":\"#/$defs/node\"},\"maxItems\":2}},\"required\":[\"v\",\"kids\"],"
     "\"additionalProperties\":false}},\"$ref\":\"#/$defs/node\"}",
     {"{\"v\":1,\"kids\":[]}", "{\"v\":1,\"kids\":[{\"v\":2,\"kids\":[{\"v\":3,\"kids\":[]}]},{\"v\":4,\"kids\":[]}]}"},
     {"{\"v\":1,\"kids\":[{"},
     {"{\"v\":1}", "{\"v\":1,\"kids\":[{},", "{\"v\":1,\"kids\":[1]"}},
    {"{\"type\":\"object\",\"properties\":{\"next\":{\"anyOf\":[{\"$ref\":\"#\"},{\"type\":\"null\"}]}},"
     "\"required\":[\"next\"],\"additionalProperties\":false}",
     {"{\"next\":null}", "{\"next\":{\"next\":{\"next\":null}}}"},
     {"{\"next\":{\"next\":"},
     {"{}", "{\"next\":1}"}},
    {"{\"type\":\"object\"}",
     {"{}", "{\"a\":[1,{\"b\":null}],\"c\":\"d\",\"e\":-1.5e3}"},
     {"{\"a\":[", "{\"a\""},
     {"[]", "{\"a\"}", "{a:1}", "{\"a\":tru}"}},
    {"{\"type\":\"number\"}", {"0", "-12.5", "3e7"}, {"-", "1.", "1e", "1e+"}, {"01", "+1", "1.5.", "--1"}},
    {"{\"const\":\"a\\\"b\"}", {"\"a\\\"b\""}, {"\"a\\"}, {"\"a\"", "\"a\\u0022b\""}},
};

TEST(hand_written_cases) {
    int n = 0;
    for (size_t k = 0; k < sizeof CASES / sizeof CASES[0]; k++) {
        const kase *c = &CASES[k];
        jschema *s = compile(c->schema);
        for (int i = 0; i < 8 && c->ok[i]; i++, n++) {
            expect(s, c->schema, c->ok[i], 1);
            /* every proper prefix is a valid one */
            char buf[512];
            size_t L = strlen(c->ok[i]);
            for (size_t j = 1; j < L; j++) {
                memcpy(buf, c->ok[i], j);
                buf[j] = '\0';
                if (run(s, buf) < 0) FAIL("schema %s: prefix %s of %s refused", c->schema, buf, c->ok[i]);
            }
        }
        for (int i = 0; i < 6 && c->prefix[i]; i++, n++) expect(s, c->schema, c->prefix[i], 0);
        for (int i = 0; i < 10 && c->bad[i]; i++, n++) expect(s, c->schema, c->bad[i], -1);
        jschema_unref(s);
    }
    printf("    %d texts on %zu schemas\n", n, sizeof CASES / sizeof CASES[0]);
}

/* The bytes allowed next: the mask the engine builds is this, lifted to tokens. */
static void allowed(const jschema *s, const char *text, char *out) {
    jsm m;
    jsm_init(&m, s);
    if (!jsm_feed(&m, (const uint8_t *)text, strlen(text))) FAIL("prefix %s refused", text);
    int k = 0;
    for (int b = 1; b < 256; b++) {
        jsm c;
        jsm_copy(&c, &m);
        if (jsm_feed(&c, (const uint8_t[]){(uint8_t)b}, 1)) out[k++] = b >= 0x20 && b < 0x7f ? (char)b : '?';
    }
    out[k] = '\0';
}

TEST(allowed_bytes_at_chosen_points) {
    jschema *s = compile("{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"},\"ok\":{\"type\":"
                         "\"boolean\"},\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"x\",\"y\"]},\"maxItems\":1}},"
                         "\"required\":[\"id\",\"tags\"],\"additionalProperties\":false}");
    char a[300];
    allowed(s, "", a);
    ASSERT_STREQ(a, "{");
    allowed(s, "{", a);
    ASSERT_STREQ(a, "\"");
    allowed(s, "{\"", a);
    ASSERT_STREQ(a, "i"); /* "id" is required first */
    allowed(s, "{\"id\":", a);
    ASSERT_STREQ(a, "-0123456789");
    allowed(s, "{\"id\":0", a);
    ASSERT_STREQ(a, ","); /* integer: no '.', no 'e'; not closable: tags is required */
    allowed(s, "{\"id\":0,\"", a);
    ASSERT_STREQ(a, "ot");
    allowed(s, "{\"id\":0,\"tags\":[", a);
    ASSERT_STREQ(a, "\"]");
    allowed(s, "{\"id\":0,\"tags\":[\"x\"", a);
    ASSERT_STREQ(a, "]"); /* maxItems 1 */
    allowed(s, "{\"id\":0,\"tags\":[]", a);
    ASSERT_STREQ(a, "}");
    jsm m;
    jsm_init(&m, s);
    ASSERT(jsm_feed(&m, (const uint8_t *)"{\"id\":0,\"tags\":[]}", 18));
    ASSERT(jsm_can_end(&m) && jsm_done(&m));
    allowed(s, "{\"id\":0,\"tags\":[]}", a);
    ASSERT_STREQ(a, "");
    jschema_unref(s);

    s = compile("{\"type\":\"string\",\"maxLength\":2}");
    allowed(s, "\"ab", a);
    ASSERT_STREQ(a, "\"");
    allowed(s, "\"a\\", a);
    ASSERT_STREQ(a, "\"/\\bfnrtu");
    jschema_unref(s);
    s = compile("{\"type\":\"integer\"}"); /* a top-level number may end or go on */
    jsm_init(&m, s);
    ASSERT(jsm_feed(&m, (const uint8_t *)"12", 2));
    ASSERT(jsm_can_end(&m) && !jsm_done(&m));
    jschema_unref(s);
}

static void refused(const char *src, const char *needle) {
    cJSON *doc = cJSON_Parse(src);
    ASSERT(doc);
    jschema *s = NULL;
    char err[256] = "";
    int rc = jschema_compile(doc, &s, err, sizeof err);
    cJSON_Delete(doc);
    if (rc != PEFTD_EINVAL || s) FAIL("schema %s: accepted (rc %d)", src, rc);
    if (!strstr(err, needle)) FAIL("schema %s: message '%s' does not name '%s'", src, err, needle);
}

TEST(unsupported_and_malformed_schemas_are_refused_by_name) {
    refused("{\"type\":\"string\",\"pattern\":\"^a$\"}", "'pattern'");
    refused("{\"type\":\"string\",\"format\":\"date-time\"}", "'format' (date-time)");
    refused("{\"type\":\"integer\",\"minimum\":3}", "'minimum'");
    refused("{\"oneOf\":[{\"type\":\"string\"}]}", "'oneOf'");
    refused("{\"allOf\":[{\"type\":\"string\"}]}", "'allOf'");
    refused("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"}}", "'additionalProperties'");
    refused("{\"type\":\"array\",\"items\":[{\"type\":\"string\"}]}", "'items'");
    refused("{\"type\":\"strin\"}", "unknown 'type' 'strin'");
    refused("{\"type\":[]}", "'type'");
    refused("{\"type\":\"object\",\"properties\":{},\"required\":[\"a\"]}", "'a'");
    refused("{\"$ref\":\"#/$defs/missing\"}", "'#/$defs/missing'");
    refused("{\"$ref\":\"http://x/y\"}", "'$ref'");
    refused("{\"enum\":[]}", "'enum'");
    refused("{\"type\":\"integer\",\"enum\":[\"a\",1.5]}", "'enum'");
    refused("{\"type\":\"string\",\"minLength\":3,\"maxLength\":2}", "admits no value");
    refused("{\"type\":\"string\",\"maxLength\":-1}", "'maxLength'");
    refused("{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#\"}},\"required\":[\"a\"]}", "admits no value");
    refused("{\"$defs\":{\"a\":{\"anyOf\":[{\"$ref\":\"#/$defs/a\"},{\"type\":\"null\"}]}},\"$ref\":\"#/$defs/a\"}",
            "cycle");
    refused("{\"anyOf\":[{\"type\":\"null\"}],\"type\":\"string\"}", "'anyOf' together with 'type'");
    refused("[1]", "schema must be an object");
    refused("{\"type\":\"object\",\"properties\":{\"a\":{\"$defs\":{}}}}", "'$defs'");
    /* size limits */
    char *big = malloc(1 << 20);
    size_t n = (size_t)sprintf(big, "{\"enum\":[");
    for (int i = 0; i < JSCH_MAX_ENUM + 1; i++) n += (size_t)sprintf(big + n, "%s%d", i ? "," : "", i);
    sprintf(big + n, "]}");
    refused(big, "more than 512 values");
    n = 0;
    for (int i = 0; i < JSCH_MAX_SCHEMA_DEPTH + 2; i++) n += (size_t)sprintf(big + n, "{\"type\":\"array\",\"items\":");
    n += (size_t)sprintf(big + n, "{\"type\":\"null\"}");
    for (int i = 0; i < JSCH_MAX_SCHEMA_DEPTH + 2; i++) big[n++] = '}';
    big[n] = '\0';
    refused(big, "deeper than");
    n = (size_t)sprintf(big, "{\"type\":\"object\",\"properties\":{");
    for (int i = 0; i < JSCH_MAX_PROPS + 1; i++) n += (size_t)sprintf(big + n, "%s\"p%d\":{}", i ? "," : "", i);
    sprintf(big + n, "}}");
    refused(big, "properties");
    free(big);
}

TEST(deep_recursion_stays_within_the_nesting_limit) {
    /* an optional recursion: at the limit the recursive alternative is no longer offered */
    jschema *s = compile("{\"type\":\"array\",\"items\":{\"$ref\":\"#\"}}");
    jsm m;
    jsm_init(&m, s);
    int opened = 0;
    while (jsm_feed(&m, (const uint8_t *)"[", 1)) opened++;
    ASSERT_EQ(opened, JSCH_MAX_DEPTH);
    jsm_init(&m, s);
    for (int i = 0; i < opened; i++) ASSERT(jsm_feed(&m, (const uint8_t *)"[", 1));
    for (int i = 0; i < opened; i++) ASSERT(jsm_feed(&m, (const uint8_t *)"]", 1));
    ASSERT(jsm_done(&m));
    jschema_unref(s);
}

/* The engine's shortcut inside strings (jsm_plain_room) agrees with trying the bytes. */
TEST(plain_room_agrees_with_trying_the_bytes) {
    static const char *const cases[][2] = {
        {"{\"type\":\"string\",\"maxLength\":5}", "\"ab"},
        {"{\"type\":\"string\"}", "\"abc"},
        {"{\"type\":\"object\"}", "{\"k"},
        {"{\"anyOf\":[{\"type\":\"string\",\"maxLength\":2},{\"type\":\"string\",\"maxLength\":4}]}", "\"a"},
        {"{\"type\":\"string\",\"maxLength\":3}", "\"\\"},     /* after a backslash: no shortcut */
        {"{\"enum\":[\"abc\",\"abd\"]}", "\"a"},                  /* a literal: no shortcut */
        {"{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":1}}", "[\"x"},
    };
    static const int want_room[] = {3, INT_MAX, INT_MAX, 3, -1, -1, 0};
    unsigned x = 7;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        jschema *s = compile(cases[c][0]);
        jsm m, scratch[2];
        jsm_init(&m, s);
        ASSERT(jsm_feed(&m, (const uint8_t *)cases[c][1], strlen(cases[c][1])));
        int room = jsm_plain_room(&m);
        if (room != want_room[c]) FAIL("%s after %s: room %d, want %d", cases[c][0], cases[c][1], room, want_room[c]);
        for (int k = 0; k < 200 && room >= 0; k++) {
            uint8_t tok[12];
            int len = 1 + k % 12;
            for (int i = 0; i < len; i++) {
                do {
                    x = x * 1103515245u + 12345u;
                    tok[i] = (uint8_t)(0x20 + (x >> 16) % 95);
                } while (tok[i] == '"' || tok[i] == '\\');
            }
            if ((len <= room) != jsm_try(&m, tok, (size_t)len, scratch))
                FAIL("%s after %s: %d plain bytes, room %d disagrees with jsm_try", cases[c][0], cases[c][1], len, room);
        }
        jschema_unref(s);
    }
}

/* Random walks over the allowed bytes (what constrained sampling does): the recognizer
 * never leads into a dead end (no byte allowed means the value is complete), and every
 * text it calls complete is JSON cJSON parses. Feeding a text whole or byte by byte agrees. */
TEST(random_walks_never_dead_end_and_end_in_json) {
    unsigned x = 12345;
    int walks = 0, ended = 0;
    for (size_t k = 0; k < sizeof CASES / sizeof CASES[0]; k++) {
        jschema *s = compile(CASES[k].schema);
        for (int w = 0; w < 20; w++, walks++) {
            jsm m, scratch[2];
            jsm_init(&m, s);
            char text[260];
            int n = 0;
            for (;;) {
                uint8_t ok[256];
                int n_ok = 0, n_close = 0;
                uint8_t close[8];
                for (int b = 0; b < 256; b++)
                    if (jsm_try(&m, (const uint8_t[]){(uint8_t)b}, 1, scratch)) {
                        ok[n_ok++] = (uint8_t)b;
                        if ((b == '"' || b == '}' || b == ']') && n_close < 8) close[n_close++] = (uint8_t)b;
                    }
                if (n_ok == 0 && !jsm_can_end(&m)) FAIL("%s: dead end after %.*s", CASES[k].schema, n, text);
                x = x * 1103515245u + 12345u;
                if (n_ok == 0 || (jsm_can_end(&m) && (x >> 16) % 4 == 0)) {
                    text[n] = '\0';
                    cJSON *v = cJSON_Parse(text);
                    if (!v) FAIL("%s: complete but not JSON: %s", CASES[k].schema, text);
                    cJSON_Delete(v);
                    jsm whole;
                    jsm_init(&whole, s);
                    ASSERT(jsm_feed(&whole, (const uint8_t *)text, (size_t)n) && jsm_can_end(&whole));
                    ended++;
                    break;
                }
                if (n >= 250) break;
                x = x * 1103515245u + 12345u;
                uint8_t b = n_close && (x >> 16) % 3 == 0 ? close[(x >> 20) % n_close] : ok[(x >> 16) % n_ok];
                text[n++] = (char)b;
                ASSERT(jsm_feed(&m, &b, 1));
            }
        }
        jschema_unref(s);
    }
    printf("    %d walks, %d ended complete\n", walks, ended);
    ASSERT(ended >= walks / 2);
}

TEST_MAIN(plain_room_agrees_with_trying_the_bytes, random_walks_never_dead_end_and_end_in_json, hand_written_cases, allowed_bytes_at_chosen_points, unsupported_and_malformed_schemas_are_refused_by_name,
          deep_recursion_stays_within_the_nesting_limit)
