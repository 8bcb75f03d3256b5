/* tests/harness/tok_corpus.h — the tokenizer test corpus (tests/fixtures/tokenizer/corpus.txt,
 * one case per line split on '\n' only, then the strings of multiline.json), loaded once per
 * test by every tokenizer parity test. A missing or malformed fixture FAILs the test. */
#ifndef PEFTD_TEST_TOK_CORPUS_H
#define PEFTD_TEST_TOK_CORPUS_H

#include <stddef.h>

typedef struct {
    char **text; /* NUL-terminated copies; len[i] bytes each (text may hold NULs before it) */
    size_t *len;
    size_t n;
} tok_cases;

tok_cases tok_corpus_load(void);
void tok_corpus_free(tok_cases *c);

#endif
