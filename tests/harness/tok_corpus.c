/* tests/harness/tok_corpus.c — loads the tokenizer test corpus (tok_corpus.h). */
#include "tests/harness/tok_corpus.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "tests/harness/test.h"

#define TOK_FIX "tests/fixtures/tokenizer"

static void add_case(tok_cases *c, const char *s, size_t len) {
    c->text = realloc(c->text, (c->n + 1) * sizeof(*c->text));
    c->len = realloc(c->len, (c->n + 1) * sizeof(*c->len));
    ASSERT(c->text && c->len);
    c->text[c->n] = malloc(len + 1);
    ASSERT(c->text[c->n]);
    memcpy(c->text[c->n], s, len);
    c->text[c->n][len] = 0;
    c->len[c->n++] = len;
}

tok_cases tok_corpus_load(void) {
    tok_cases c = {0};
    size_t len = 0;
    char *corpus = test_read_file(TOK_FIX "/corpus.txt", &len);
    if (!corpus) FAIL("the committed fixture " TOK_FIX "/corpus.txt is missing");
    size_t start = 0;
    for (size_t i = 0; i < len; i++)
        if (corpus[i] == '\n') {
            add_case(&c, corpus + start, i - start);
            start = i + 1;
        }
    ASSERT_EQ(start, len); /* the file ends with a newline */
    free(corpus);
    ASSERT(c.n >= 2000);
    char *ml = test_read_file(TOK_FIX "/multiline.json", NULL);
    if (!ml) FAIL("the committed fixture " TOK_FIX "/multiline.json is missing");
    cJSON *arr = cJSON_Parse(ml), *it;
    ASSERT(cJSON_IsArray(arr));
    cJSON_ArrayForEach(it, arr) {
        ASSERT(cJSON_IsString(it));
        add_case(&c, it->valuestring, strlen(it->valuestring));
    }
    cJSON_Delete(arr);
    free(ml);
    return c;
}

void tok_corpus_free(tok_cases *c) {
    for (size_t i = 0; i < c->n; i++) free(c->text[i]);
    free(c->text);
    free(c->len);
    memset(c, 0, sizeof *c);
}
