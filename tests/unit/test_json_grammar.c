/* tests/unit/test_json_grammar.c — the json_object recognizer (json_grammar.h) against
 * Python's strict json parser on 375 labelled texts (tests/fixtures/json/cases.json: valid
 * objects and random one-byte mutations): a text is accepted complete exactly when Python
 * parses it to an object; every prefix of an object is accepted; plus nesting and
 * whitespace limits and the one-token-at-a-time use the engine makes of it. */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "server/engine/json_grammar.h"
#include "tests/harness/test.h"

static bool complete(const char *t) {
    jsong g;
    jsong_init(&g);
    return jsong_feed(&g, (const uint8_t *)t, strlen(t)) && g.done;
}

TEST(agrees_with_python_json_on_fixture_texts) {
    size_t len;
    char *txt = test_read_file("tests/fixtures/json/cases.json", &len);
    if (!txt) FAIL("missing fixture tests/fixtures/json/cases.json (run make_json_fixtures.py)");
    cJSON *doc = cJSON_ParseWithLength(txt, len);
    ASSERT(doc);
    int n = 0, objects = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "cases")) {
        const char *t = cJSON_GetObjectItem(c, "text")->valuestring;
        bool want = cJSON_IsTrue(cJSON_GetObjectItem(c, "object"));
        if (complete(t) != want) FAIL("%s: recognizer says %d, Python's json %d", t, !want, want);
        if (want) {
            /* every prefix continues; done only once the object closed */
            jsong g;
            jsong_init(&g);
            size_t L = strlen(t), close = L;
            while (close > 0 && t[close - 1] != '}') close--;
            for (size_t i = 0; i < L; i++) {
                if (!jsong_feed(&g, (const uint8_t *)t + i, 1)) FAIL("%s: prefix of %zu bytes refused", t, i + 1);
                if (g.done != (i + 1 >= close)) FAIL("%s: done=%d after %zu bytes", t, g.done, i + 1);
            }
            objects++;
        }
        n++;
    }
    printf("    %d texts, %d objects\n", n, objects);
    ASSERT_EQ(n, 375);
    ASSERT_EQ(objects, 93);
    cJSON_Delete(doc);
    free(txt);
}

TEST(limits_and_what_follows_the_object) {
    char deep[2 * JSONG_MAX_DEPTH + 8] = "";
    for (int i = 0; i < JSONG_MAX_DEPTH; i++) strcat(deep, i ? "[" : "{\"a\":");
    jsong g;
    jsong_init(&g);
    ASSERT(jsong_feed(&g, (const uint8_t *)deep, strlen(deep))); /* depth 32 */
    ASSERT(!jsong_feed(&g, (const uint8_t *)"[", 1));             /* 33 */
    char ws[JSONG_MAX_WS + 3] = "{";
    memset(ws + 1, ' ', JSONG_MAX_WS);
    jsong_init(&g);
    ASSERT(jsong_feed(&g, (const uint8_t *)ws, strlen(ws)));
    ASSERT(!jsong_feed(&g, (const uint8_t *)" ", 1));
    jsong_init(&g);
    ASSERT(jsong_feed(&g, (const uint8_t *)"{\"s\":\"           \"}", 19)); /* spaces in strings count not */
    ASSERT(g.done);
    ASSERT(jsong_feed(&g, (const uint8_t *)" \n", 2));
    jsong h = g;
    ASSERT(!jsong_feed(&h, (const uint8_t *)"x", 1));
    h = g;
    ASSERT(!jsong_feed(&h, (const uint8_t *)"{}", 2)); /* one object only */
    ASSERT(!complete("[]") && !complete("1") && !complete("\"x\"") && !complete("{\"a\":1"));
    ASSERT(!complete("{\"a\":1}x") && !complete("{'a':1}") && !complete("{\"a\":NaN}"));
}

TEST(token_by_token_with_copies) {
    /* the engine's use: try each candidate on a copy, keep the copy of the one taken */
    const char *toks[] = {" {", "\"na", "me\":", " \"J", "o\\", "u00e9\"", ",\"n\":", "-1", "2.", "5e", "+3", "}"};
    jsong g;
    jsong_init(&g);
    for (size_t i = 0; i < sizeof toks / sizeof toks[0]; i++) {
        jsong bad = g; /* a failed try leaves g as it was */
        (void)jsong_feed(&bad, (const uint8_t *)"}]", 2);
        jsong next = g;
        if (!jsong_feed(&next, (const uint8_t *)toks[i], strlen(toks[i]))) FAIL("token %zu '%s' refused", i, toks[i]);
        g = next;
    }
    ASSERT(g.done);
}

TEST_MAIN(agrees_with_python_json_on_fixture_texts, limits_and_what_follows_the_object, token_by_token_with_copies)
