/* server/engine/sampling.c — see sampling.h. */
#include "server/engine/sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    if (!s->probs || !s->idx) {
        sampler_scratch_free(s);
        return PEFTD_ENOMEM;
    }
    return 0;
}

void sampler_scratch_free(sampler_scratch *s) {
    free(s->probs);
    free(s->idx);
    s->probs = NULL;
    s->idx = NULL;
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Sort context for qsort_r: descending probability, then ascending id (deterministic). */
static int cmp_desc(const void *a, const void *b, void *ctx) {
    const float *p = ctx;
    int32_t ia = *(const int32_t *)a, ib = *(const int32_t *)b;
    if (p[ia] > p[ib]) return -1;
    if (p[ia] < p[ib]) return 1;
    return (ia > ib) - (ia < ib);
}

static void fill_logprobs(const float *logits, int vocab, int32_t chosen, int want, gen_token *lp) {
    /* log-softmax in double: logsumexp over up to 256K logits loses ~1e-7 relative in f32. */
    float mx = logits[argmax(logits, vocab)];
    double sum = 0;
    for (int i = 0; i < vocab; i++) sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
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
    int V = s->vocab;
    int32_t tok;
    if (p->temperature <= 0.0f) {
        tok = argmax(logits, V);
    } else {
        float mx = logits[argmax(logits, V)];
        double inv_t = 1.0 / p->temperature, sum = 0;
        for (int i = 0; i < V; i++) {
            s->probs[i] = (float)exp(((double)logits[i] - mx) * inv_t);
            sum += s->probs[i];
        }
        int n = V;
        bool truncate = (p->top_k > 0 && p->top_k < V) || (p->top_p > 0.0f && p->top_p < 1.0f);
        if (truncate) {
            for (int i = 0; i < V; i++) s->idx[i] = i;
            qsort_r(s->idx, (size_t)V, sizeof(int32_t), cmp_desc, s->probs);
            if (p->top_k > 0 && p->top_k < n) n = p->top_k;
            if (p->top_p > 0.0f && p->top_p < 1.0f) {
                double kept = 0, lim = p->top_p * sum;
                int j = 0;
                /* smallest prefix whose mass reaches top_p (at least one token) */
                while (j < n) {
                    kept += s->probs[s->idx[j++]];
                    if (kept >= lim) break;
                }
                n = j;
            }
            sum = 0;
            for (int j = 0; j < n; j++) sum += s->probs[s->idx[j]];
        }
        double u = rng_uniform(rng) * sum, acc = 0;
        tok = -1;
        for (int j = 0; j < n; j++) {
            int32_t id = truncate ? s->idx[j] : j;
            acc += s->probs[id];
            if (u < acc) {
                tok = id;
                break;
            }
        }
        if (tok < 0) tok = truncate ? s->idx[n - 1] : argmax(logits, V); /* rounding at the tail */
    }
    if (want_logprobs >= 0 && lp) fill_logprobs(logits, V, tok, want_logprobs, lp);
    return tok;
}
