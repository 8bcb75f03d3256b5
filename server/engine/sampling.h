/* server/engine/sampling.h — token sampling from logits: greedy, temperature, top-k,
 * top-p, per-request seeded RNG, and log-probabilities of the chosen token and the top
 * alternatives. Pure functions over host memory; used by the engine thread only. */
#ifndef PEFTD_SAMPLING_H
#define PEFTD_SAMPLING_H

#include <stdbool.h>
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
    float *work;     /* processed logits (sampler_process) */
    int32_t *count;  /* per-id counts, all zero between calls */
} sampler_scratch;

int sampler_scratch_init(sampler_scratch *s, int vocab);
void sampler_scratch_free(sampler_scratch *s);

/* Picks the next token from logits[vocab] according to p. When want_logprobs >= 0, fills
 * lp->logprob (log-softmax of the raw logits at the chosen id) and the want_logprobs most
 * likely alternatives. Greedy (temperature 0) takes the lowest id among equal maxima. */
int32_t sampler_pick(const float *logits, const gen_params *p, rng_state *rng, sampler_scratch *s,
                     int want_logprobs, gen_token *lp);
/* The same, sampling from logits but reporting logprobs of raw (the distribution before
 * sampler_process; raw == logits is sampler_pick). */
int32_t sampler_pick_raw(const float *logits, const float *raw, const gen_params *p, rng_state *rng,
                         sampler_scratch *s, int want_logprobs, gen_token *lp);

/* True when p's logit processing (engine.h: min_tokens, logit_bias, penalties) changes
 * anything once n_generated tokens were generated. */
bool sampler_needs_processing(const gen_params *p, int n_generated);
/* Writes logits[vocab] processed by p into s->work and returns it: min_tokens masks the
 * eos ids while n_output < p->min_tokens, then logit_bias, repetition_penalty over the
 * ids of prompt and output, frequency / presence penalty over the output counts.
 * Negative ids (prompt tuning's virtual tokens) are skipped. */
const float *sampler_process(const float *logits, const gen_params *p, const int32_t *prompt, int n_prompt,
                             const int32_t *output, int n_output, const int32_t *eos, int n_eos,
                             sampler_scratch *s);
/* Log-softmax of logits[vocab] at id, and the want (<= 20) most likely alternatives into
 * lp (the logprob record of sampler_pick). */
void sampler_logprobs(const float *logits, int vocab, int32_t id, int want, gen_token *lp);

#endif
