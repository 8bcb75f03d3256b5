/* tests/harness/tok_corpus.h — the tokenizer test corpus (tests/fixtures/tokenizer/corpus.txt,
 * one case per line split on '\n' only, then the strings of multiline.json), loaded once per
 * test by every tokenizer parity test. A missing or malformed fixture FAILs the test. */
#ifndef PEFTD_TEST_TOK_CORPUS_H
#define PEFTD_TEST_TOK_CORPUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "server/text/tokenizer.h"

typedef struct {
    char **text; /* NUL-terminated copies; len[i] bytes each (text may hold NULs before it) */
    size_t *len;
    size_t n;
} tok_cases;

tok_cases tok_corpus_load(void);
void tok_corpus_free(tok_cases *c);

/* A growable id list (tok_ids_cat appends a JSON array of numbers). */
typedef struct {
    int32_t *v;
    size_t n;
} tok_ids;
void tok_ids_cat(tok_ids *dst, const cJSON *a);
bool tok_ids_eq(const int32_t *a, size_t na, const int32_t *b, size_t nb);
void tok_print_ids(const char *what, const int32_t *v, size_t n); /* first 40, to stderr */

/* Checks t against every record of an expected_*.jsonl made by the fixture scripts with
 * `tokenizers` (the corpus cases in order, then records carrying their own text "t"): ids
 * without / with special tokens ("i", "s" or "p" + "i" + "x"), decode with / without
 * skip_special_tokens ("d", "D"). Prints the counts under name; FAILs on the first mismatch
 * (after counting all) or a malformed file. Returns the number of "t" records. */
size_t tok_check_expected(const tokenizer *t, const char *name, const char *path, const tok_cases *c);

#endif
