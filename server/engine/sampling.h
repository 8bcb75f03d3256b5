/* server/engine/sampling.h — token sampling from logits: greedy, temperature, top-k,
 * top-p, per-request seeded RNG, and log-probabilities of the chosen token and the top
 * alternatives. Pure functions over host memory; used by the engine thread only. */
#ifndef PEFTD_SAMPLING_H
#define PEFTD_SAMPLING_H

#include <stdint.h>

#include "server/engine/engine.h"

/* xoshiro256** state: small, fast, and reproducible from a 64-bit seed. */
typedef struct {
    uint64_t s[4];
} rng_state;

void rng_seed(rng_state *r, uint64_t seed);
uint64_t rng_next(rng_state *r);
double rng_uniform(rng_state *r); /* [0, 1) with 53 random bits */

/* Scratch for one vocabulary-sized sampling call (reused across calls). */
typedef struct {
    int vocab;
    float *probs;
    int32_t *idx;
} sampler_scratch;

int sampler_scratch_init(sampler_scratch *s, int vocab);
void sampler_scratch_free(sampler_scratch *s);

/* Picks the next token from logits[vocab] according to p. When want_logprobs >= 0, fills
 * lp->logprob (log-softmax of the raw logits at the chosen id) and the want_logprobs most
 * likely alternatives. Greedy (temperature 0) takes the lowest id among equal maxima. */
int32_t sampler_pick(const float *logits, const gen_params *p, rng_state *rng, sampler_scratch *s,
                     int want_logprobs, gen_token *lp);

#endif
