/* server/engine/sampling.c — see sampling.h: the RNG, argmax, temperature / top-k / top-p
 * sampling, logprobs, and the logit processing before them (min_tokens, logit_bias,
 * repetition / frequency / presence penalties). */
#include "server/engine/sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

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

/* Reference argmax: the lowest index among equal maxima; NaN never wins (and a NaN at
 * index 0 wins by default, as nothing compares greater than it). The vector versions
 * below return exactly this index. */
static int32_t argmax_scalar(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Vector argmax (greedy sampling is 32 × 32000 logits per decode step on the engine
 * thread: ~1.5 ms scalar). Every lane keeps the largest value it has seen and the index
 * of its first occurrence, starting from x[0] with index 0 and updating only on a strict
 * ">", so a lane's index is the lowest among its elements equal to its maximum (ties
 * with x[0] keep index 0). NaN compares false and never updates a lane, as in the scalar
 * loop. The result is the lowest index over the lanes holding the overall maximum:
 * exactly argmax_scalar's. Two accumulator sets break the compare->blend dependency. */
#if defined(__AVX512F__)
static int32_t argmax(const float *x, int n) {
    if (n < 64 || x[0] != x[0]) return argmax_scalar(x, n); /* x[0] NaN: index 0 */
    __m512 m0 = _mm512_set1_ps(x[0]), m1 = m0;
    __m512i i0 = _mm512_setzero_si512(), i1 = i0;
    __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step16 = _mm512_set1_epi32(16), step32 = _mm512_set1_epi32(32);
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        __mmask16 ga = _mm512_cmp_ps_mask(a, m0, _CMP_GT_OQ), gb = _mm512_cmp_ps_mask(b, m1, _CMP_GT_OQ);
        m0 = _mm512_mask_mov_ps(m0, ga, a);
        i0 = _mm512_mask_mov_epi32(i0, ga, idx);
        m1 = _mm512_mask_mov_ps(m1, gb, b);
        i1 = _mm512_mask_mov_epi32(i1, gb, _mm512_add_epi32(idx, step16));
        idx = _mm512_add_epi32(idx, step32);
    }
    for (; i < n; i += 16) {
        __mmask16 valid = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        __m512 a = _mm512_maskz_loadu_ps(valid, x + i);
        __mmask16 ga = _mm512_mask_cmp_ps_mask(valid, a, m0, _CMP_GT_OQ);
        m0 = _mm512_mask_mov_ps(m0, ga, a);
        i0 = _mm512_mask_mov_epi32(i0, ga, idx);
        idx = _mm512_add_epi32(idx, step16);
    }
    float mv[32];
    int32_t iv[32];
    _mm512_storeu_ps(mv, m0);
    _mm512_storeu_ps(mv + 16, m1);
    _mm512_storeu_si512(iv, i0);
    _mm512_storeu_si512(iv + 16, i1);
    float best_v = mv[0];
    int32_t best = iv[0];
    for (int l = 1; l < 32; l++)
        if (mv[l] > best_v || (mv[l] == best_v && iv[l] < best)) {
            best_v = mv[l];
            best = iv[l];
        }
    return best;
}
#elif defined(__AVX2__)
static int32_t argmax(const float *x, int n) {
    if (n < 32 || x[0] != x[0]) return argmax_scalar(x, n);
    __m256 m0 = _mm256_set1_ps(x[0]), m1 = m0;
    __m256i i0 = _mm256_setzero_si256(), i1 = i0;
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i step8 = _mm256_set1_epi32(8), step16 = _mm256_set1_epi32(16);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        __m256 ga = _mm256_cmp_ps(a, m0, _CMP_GT_OQ), gb = _mm256_cmp_ps(b, m1, _CMP_GT_OQ);
        m0 = _mm256_blendv_ps(m0, a, ga);
        i0 = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(i0), _mm256_castsi256_ps(idx), ga));
        m1 = _mm256_blendv_ps(m1, b, gb);
        i1 = _mm256_castps_si256(
            _mm256_blendv_ps(_mm256_castsi256_ps(i1), _mm256_castsi256_ps(_mm256_add_epi32(idx, step8)), gb));
        idx = _mm256_add_epi32(idx, step16);
    }
    float mv[16];
    int32_t iv[16];
    _mm256_storeu_ps(mv, m0);
    _mm256_storeu_ps(mv + 8, m1);
    _mm256_storeu_si256((__m256i *)iv, i0);
    _mm256_storeu_si256((__m256i *)(iv + 8), i1);
    float best_v = mv[0];
    int32_t best = iv[0];
    for (int l = 1; l < 16; l++)
        if (mv[l] > best_v || (mv[l] == best_v && iv[l] < best)) {
            best_v = mv[l];
            best = iv[l];
        }
    for (; i < n; i++) /* tail: strictly greater only, later indices lose ties */
        if (x[i] > best_v) {
            best_v = x[i];
            best = i;
        }
    return best;
}
#else
#define argmax argmax_scalar
#endif

/* Sort context for qsort_r: descending probability, then ascending id (deterministic). */
static int cmp_desc(const void *a, const void *b, void *ctx) {
    const float *p = ctx;
    int32_t ia = *(const int32_t *)a, ib = *(const int32_t *)b;
    if (p[ia] > p[ib]) return -1;
    if (p[ia] < p[ib]) return 1;
    return (ia > ib) - (ia < ib);
}

void sampler_logprobs(const float *logits, int vocab, int32_t chosen, int want, gen_token *lp) {
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
    return sampler_pick_raw(logits, logits, p, rng, s, want_logprobs, lp);
}

int32_t sampler_pick_raw(const float *logits, const float *raw, const gen_params *p, rng_state *rng,
                         sampler_scratch *s, int want_logprobs, gen_token *lp) {
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
    if (want_logprobs >= 0 && lp) sampler_logprobs(raw, V, tok, want_logprobs, lp);
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
