/* tests/harness/tok_corpus.c — loads the tokenizer test corpus (tok_corpus.h). */
#include "tests/harness/tok_corpus.h"

#include <cJSON.h>
#include <stdbool.h>
#include <stdio.h>
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

/* ---- expected_<name>.jsonl records ---- */


void tok_ids_cat(tok_ids *dst, const cJSON *a) {
    const cJSON *it;
    dst->v = realloc(dst->v, (dst->n + (size_t)cJSON_GetArraySize(a) + 1) * sizeof(int32_t));
    ASSERT(dst->v);
    cJSON_ArrayForEach(it, a) dst->v[dst->n++] = (int32_t)it->valuedouble;
}

bool tok_ids_eq(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || !memcmp(a, b, na * sizeof(*a)));
}

void tok_print_ids(const char *what, const int32_t *v, size_t n) {
    fprintf(stderr, "    %s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", v[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

typedef struct {
    size_t ok_plain, ok_special, ok_dec, ok_keep, n;
    long first_bad;
} tally_t;

static void check_record(const tokenizer *t, const cJSON *o, const char *text, size_t len, size_t k, tally_t *tl) {
    tok_ids plain = {0}, special = {0};
    tok_ids_cat(&plain, cJSON_GetObjectItemCaseSensitive(o, "i"));
    if (cJSON_GetObjectItemCaseSensitive(o, "s")) {
        tok_ids_cat(&special, cJSON_GetObjectItemCaseSensitive(o, "s"));
    } else {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "p"), *x = cJSON_GetObjectItemCaseSensitive(o, "x");
        if (p) tok_ids_cat(&special, p);
        tok_ids_cat(&special, cJSON_GetObjectItemCaseSensitive(o, "i"));
        if (x) tok_ids_cat(&special, x);
    }
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "d"), *D = cJSON_GetObjectItemCaseSensitive(o, "D");
    const char *want_d = d ? d->valuestring : text, *want_D = D ? D->valuestring : want_d;
    int32_t *ids = NULL, *sids = NULL;
    size_t n = 0, sn = 0;
    ASSERT_EQ(tokenizer_encode(t, text, len, false, &ids, &n), 0);
    ASSERT_EQ(tokenizer_encode(t, text, len, true, &sids, &sn), 0);
    char *got_d = NULL, *got_D = NULL;
    ASSERT_EQ(tokenizer_decode(t, special.v, special.n, true, &got_d, NULL), 0);
    ASSERT_EQ(tokenizer_decode(t, special.v, special.n, false, &got_D, NULL), 0);
    bool p = tok_ids_eq(ids, n, plain.v, plain.n), s = tok_ids_eq(sids, sn, special.v, special.n);
    bool dd = !strcmp(got_d, want_d), dk = !strcmp(got_D, want_D);
    tl->ok_plain += p;
    tl->ok_special += s;
    tl->ok_dec += dd;
    tl->ok_keep += dk;
    tl->n++;
    if ((!p || !s || !dd || !dk) && tl->first_bad < 0) {
        tl->first_bad = (long)k;
        fprintf(stderr, "    first mismatch at record %zu: \"%.200s\"\n", k, text);
        if (!p) { tok_print_ids("want", plain.v, plain.n); tok_print_ids("got ", ids, n); }
        if (!s) { tok_print_ids("want+special", special.v, special.n); tok_print_ids("got+special ", sids, sn); }
        if (!dd) fprintf(stderr, "    decode want \"%s\"\n    decode got  \"%s\"\n", want_d, got_d);
        if (!dk) fprintf(stderr, "    decode(keep special) want \"%s\"\n    got \"%s\"\n", want_D, got_D);
    }
    free(ids);
    free(sids);
    free(got_d);
    free(got_D);
    free(plain.v);
    free(special.v);
}

/* Every record of an expected_*.jsonl (corpus cases in order, then "t" records). */
size_t tok_check_expected(const tokenizer *t, const char *name, const char *path, const tok_cases *c) {
    char *txt = test_read_file(path, NULL);
    if (!txt) FAIL("the committed fixture %s is missing", path);
    tally_t tl = {.first_bad = -1};
    size_t k = 0, n_extra = 0;
    for (char *line = txt, *nl; *line; line = nl + 1, k++) {
        nl = strchr(line, '\n');
        ASSERT(nl);
        *nl = 0;
        cJSON *o = cJSON_Parse(line);
        if (!o) FAIL("%s:%zu: bad JSON", path, k + 1);
        const cJSON *tx = cJSON_GetObjectItemCaseSensitive(o, "t");
        if (cJSON_IsString(tx)) {
            check_record(t, o, tx->valuestring, strlen(tx->valuestring), k, &tl);
            n_extra++;
        } else {
            if (k >= c->n) FAIL("%s: more corpus records than cases", path);
            check_record(t, o, c->text[k], c->len[k], k, &tl);
        }
        cJSON_Delete(o);
    }
    if (k != c->n + n_extra) FAIL("%s: %zu records for %zu cases + %zu extra", path, k, c->n, n_extra);
    printf("    %s: ids %zu/%zu, ids+special %zu/%zu, decode %zu/%zu, decode(keep special) %zu/%zu\n",
           name, tl.ok_plain, tl.n, tl.ok_special, tl.n, tl.ok_dec, tl.n, tl.ok_keep, tl.n);
    if (tl.first_bad >= 0) FAIL("%s: parity mismatches (first at record %ld)", name, tl.first_bad);
    free(txt);
    return n_extra;
}
