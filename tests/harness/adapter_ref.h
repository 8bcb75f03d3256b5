/* tests/harness/adapter_ref.h — an adapter fixture's reference.json (written by the generators
 * in tests/fixtures/adapters/make_*_fixtures.py from the library's own reloaded model):
 * per case the prompt ids, the library's greedy continuation and the logits of every prompt
 * row. Failures end the test (FAIL). */
#ifndef PEFTD_TEST_ADAPTER_REF_H
#define PEFTD_TEST_ADAPTER_REF_H

#include <stdint.h>

#define ADAPTER_REF_MAX_CASES 4
#define ADAPTER_REF_MAX_IDS 64
#define ADAPTER_REF_MAX_GREEDY 64

typedef struct {
    char base[128];                 /* "base" (the model directory the adapter is for) */
    int n_cases, vocab;
    int n_ids[ADAPTER_REF_MAX_CASES], n_greedy[ADAPTER_REF_MAX_CASES];
    int32_t ids[ADAPTER_REF_MAX_CASES][ADAPTER_REF_MAX_IDS];
    int32_t greedy[ADAPTER_REF_MAX_CASES][ADAPTER_REF_MAX_GREEDY];
    float *logits[ADAPTER_REF_MAX_CASES]; /* [n_ids, vocab] @note owned: adapter_ref_free */
} adapter_ref;

/* Reads dir/reference.json; every case must hold logits for every prompt row. */
void adapter_ref_load(const char *dir, adapter_ref *r);
void adapter_ref_free(adapter_ref *r);

#endif
