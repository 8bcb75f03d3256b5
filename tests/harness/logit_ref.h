/* tests/harness/logit_ref.h — reference logits captured from transformers/peft
 * (tests/fixtures/<family>/reference*.json: {"cases": {name: {model, adapter?, input_ids,
 * logits}}}) and the check every model-family test makes against them: load the model (and
 * adapter), run the prompt through llama_forward as one prefill of n_pre tokens then
 * one-token decode steps (reading earlier K/V back from the cache), and compare every
 * position's logits. Failures end the test (FAIL). */
#ifndef PEFTD_TEST_LOGIT_REF_H
#define PEFTD_TEST_LOGIT_REF_H

#include <stdint.h>

#include "server/model/model.h"

#define LOGIT_REF_MAX_IDS 64

typedef struct {
    char model[128], adapter[128]; /* adapter "" = the base alone */
    int n_ids, vocab;
    int32_t ids[LOGIT_REF_MAX_IDS];
    float *logits; /* [n_ids, vocab] @note owned: logit_case_free */
} logit_case;

void logit_case_load(const char *file, const char *name, logit_case *q);
void logit_case_free(logit_case *q);

/* inspect (may be NULL) sees the loaded model first, for a test's own assertions about it.
 * n_pre >= n_ids: the whole prompt in one prefill. Prints and returns the max |diff|. */
double logit_case_check(const logit_case *q, const char *label, int n_pre, double tol,
                        void (*inspect)(const model *m, void *ud), void *ud);

#endif
