/* server/engine/sampling.c — see sampling.h: the RNG, temperature / top-k / top-p sampling
 * (the choice itself is kernels/cpu/sample_ref.h's ksample_pick_ref, which the backends'
 * sample op shares, so the host and the op pick the same id from the same draw), logprobs,
 * and the logit processing before them (min_tokens, logit_bias, repetition / frequency /
 * presence penalties). */
#include "server/engine/sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/sample_ref.h"

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void rng_seed(rng_state *r, uint64_t seed) {
    /* splitmix64 expands the seed into the four state words (never all zero). */
    for (int i = 0; i < 4; i++) {
        uint64_t z = (seed += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        r->s[i] = z ^ (z >> 31);
    }
}

uint64_t rng_next(rng_state *r) {
    uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double rng_uniform(rng_state *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

int sampler_scratch_init(sampler_scratch *s, int vocab) {
    s->vocab = vocab;
    s->probs = malloc((size_t)vocab * sizeof(float));
    s->idx = malloc((size_t)vocab * sizeof(int32_t));
    s->work = malloc((size_t)vocab * sizeof(float));
    s->count = calloc((size_t)vocab, sizeof(int32_t));
    if (!s->probs || !s->idx || !s->work || !s->count) {
        sampler_scratch_free(s);
        return PEFTD_ENOMEM;
    }
    return 0;
}

void sampler_scratch_free(sampler_scratch *s) {
    free(s->probs);
    free(s->idx);
    free(s->work);
    free(s->count);
    s->probs = NULL;
    s->idx = NULL;
    s->work = NULL;
    s->count = NULL;
}

void sampler_logprobs(const float *logits, int vocab, int32_t chosen, int want, gen_token *lp) {
    /* log-softmax in double: logsumexp over up to 256K logits loses ~1e-7 relative in f32. */
    double lse = ksample_lse(logits, vocab);
    lp->id = chosen;
    lp->logprob = (float)(logits[chosen] - lse);
    int n = want < vocab ? want : vocab;
    if (n > ENGINE_MAX_LOGPROBS) n = ENGINE_MAX_LOGPROBS;
    lp->n_top = 0;
    for (int i = 0; i < vocab && n > 0; i++) {
        /* insertion into the small sorted top list (n <= 20) */
        int k = lp->n_top;
        if (k == n && logits[i] <= logits[lp->top_id[k - 1]]) continue;
        if (k < n) lp->n_top++;
        else k--;
        while (k > 0 && logits[i] > logits[lp->top_id[k - 1]]) {
            lp->top_id[k] = lp->top_id[k - 1];
            k--;
        }
        lp->top_id[k] = i;
    }
    for (int i = 0; i < lp->n_top; i++) lp->top_logprob[i] = (float)(logits[lp->top_id[i]] - lse);
}

int32_t sampler_pick(const float *logits, const gen_params *p, rng_state *rng, sampler_scratch *s,
                     int want_logprobs, gen_token *lp) {
    return sampler_pick_raw(logits, logits, p, rng, s, want_logprobs, lp);
}

int32_t sampler_pick_raw(const float *logits, const float *raw, const gen_params *p, rng_state *rng,
                         sampler_scratch *s, int want_logprobs, gen_token *lp) {
    /* one uniform draw per sampled (non-greedy) token, as the backends' sample op takes it */
    double u = p->temperature > 0.0f ? rng_uniform(rng) : 0.0;
    int32_t tok = ksample_pick_ref(logits, s->vocab, p->temperature, p->top_k, p->top_p, u, s->probs, s->idx);
    if (want_logprobs >= 0 && lp) sampler_logprobs(raw, s->vocab, tok, want_logprobs, lp);
    return tok;
}

bool sampler_needs_processing(const gen_params *p, int n_generated) {
    return n_generated < p->min_tokens || p->n_bias > 0 || p->repetition_penalty != 1.0f ||
           (n_generated > 0 && (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f));
}

const float *sampler_process(const float *logits, const gen_params *p, const int32_t *prompt, int n_prompt,
                             const int32_t *output, int n_output, const int32_t *eos, int n_eos,
                             sampler_scratch *s) {
    const int V = s->vocab;
    float *w = s->work;
    memcpy(w, logits, (size_t)V * sizeof(float));
    if (n_output < p->min_tokens)
        for (int i = 0; i < n_eos; i++)
            if (eos[i] >= 0 && eos[i] < V) w[eos[i]] = -INFINITY;
    for (int i = 0; i < p->n_bias; i++) w[p->bias_id[i]] += p->bias_val[i];
    if (p->repetition_penalty != 1.0f) {
        /* each id of prompt and output once (count marks it), as a gather/scatter does */
        const float rp = p->repetition_penalty;
        for (int pass = 0; pass < 2; pass++) {
            const int32_t *ids = pass ? output : prompt;
            int n = pass ? n_output : n_prompt;
            for (int i = 0; i < n; i++) {
                int32_t id = ids[i];
                if (id < 0 || id >= V || s->count[id]) continue;
                s->count[id] = 1;
                w[id] = w[id] > 0 ? w[id] / rp : w[id] * rp;
            }
        }
        for (int pass = 0; pass < 2; pass++) {
            const int32_t *ids = pass ? output : prompt;
            int n = pass ? n_output : n_prompt;
            for (int i = 0; i < n; i++)
                if (ids[i] >= 0 && ids[i] < V) s->count[ids[i]] = 0;
        }
    }
    if (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f) {
        for (int i = 0; i < n_output; i++)
            if (output[i] >= 0 && output[i] < V) s->count[output[i]]++;
        for (int i = 0; i < n_output; i++) {
            int32_t id = output[i];
            if (id < 0 || id >= V || s->count[id] == 0) continue;
            w[id] -= p->frequency_penalty * (float)s->count[id] + p->presence_penalty;
            s->count[id] = 0; /* applied once per id */
        }
    }
    return w;
}
