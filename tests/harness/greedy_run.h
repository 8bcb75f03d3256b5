/* tests/harness/greedy_run.h — one greedy request through the engine, as the engine tests
 * make them: ignore_eos, temperature 0, an adapter (with its request scale) or a composition,
 * token ids and logprobs collected. Failures end the test (FAIL) unless the caller asks for
 * the error text. */
#ifndef PEFTD_TEST_GREEDY_RUN_H
#define PEFTD_TEST_GREEDY_RUN_H

#include <stddef.h>
#include <stdint.h>

#include "server/engine/engine.h"

#define GREEDY_RUN_MAX 64 /* tokens */

typedef struct {
    engine_request *q;
    int32_t ids[GREEDY_RUN_MAX];
    float lps[GREEDY_RUN_MAX];
    int n;
} greedy_run;

/* Submits prompt ids[0..n) for max_tokens (<= GREEDY_RUN_MAX) greedy tokens with adapter ad
 * (NULL: base) at request scale `scale`, or the composition mx (ad NULL) when mx is not NULL. */
void greedy_submit(engine *e, greedy_run *rn, const int32_t *ids, int n, int max_tokens, const adapter *ad,
                   float scale, const adapter_mix *mx);
/* Waits for rn and takes its tokens (at most GREEDY_RUN_MAX). error NULL: a failed generation
 * fails the test; otherwise the failure's text is written there ("" when it succeeded). */
void greedy_collect(greedy_run *rn, char *error, size_t errlen);

#endif
