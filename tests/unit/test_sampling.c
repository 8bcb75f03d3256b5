/* tests/unit/test_sampling.c — sampler: greedy ties, top-k / top-p support sets, the
 * empirical distribution at temperature 1, seeds, and log-probabilities against a direct
 * double-precision computation. */
#include <math.h>
#include "server/engine/sampling.h"
#include "tests/harness/test.h"

static gen_params params(float t, float top_p, int top_k) {
    gen_params p;
    gen_params_default(&p);
    p.temperature = t;
    p.top_p = top_p;
    p.top_k = top_k;
    return p;
}

TEST(greedy_picks_lowest_id_among_ties) {
    float logits[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f, 2.0f};
    sampler_scratch s;
    ASSERT_EQ(sampler_scratch_init(&s, 6), 0);
    rng_state r;
    rng_seed(&r, 1);
    gen_params p = params(0, 1, 0);
    ASSERT_EQ(sampler_pick(logits, &p, &r, &s, -1, NULL), 1);
    sampler_scratch_free(&s);
}

TEST(top_k_and_top_p_restrict_the_support) {
    /* probabilities at T=1: softmax of log(p) = p: 0.5 0.25 0.15 0.1 */
    float logits[4] = {logf(0.5f), logf(0.25f), logf(0.15f), logf(0.1f)};
    sampler_scratch s;
    ASSERT_EQ(sampler_scratch_init(&s, 4), 0);
    rng_state r;
    rng_seed(&r, 7);
    int count[4] = {0};
    gen_params k2 = params(1, 1, 2);
    for (int i = 0; i < 20000; i++) count[sampler_pick(logits, &k2, &r, &s, -1, NULL)]++;
    ASSERT_EQ(count[2] + count[3], 0);
    /* renormalised: 2/3 vs 1/3; 20000 draws give a std of ~0.0033, 0.02 is 6 sigma */
    ASSERT_NEAR(count[0] / 20000.0, 2.0 / 3, 0.02);
    memset(count, 0, sizeof count);
    gen_params p8 = params(1, 0.8f, 0); /* 0.5 + 0.25 = 0.75 < 0.8: needs the third token */
    for (int i = 0; i < 20000; i++) count[sampler_pick(logits, &p8, &r, &s, -1, NULL)]++;
    ASSERT_EQ(count[3], 0);
    ASSERT(count[2] > 0);
    ASSERT_NEAR(count[0] / 20000.0, 0.5 / 0.9, 0.02);
    sampler_scratch_free(&s);
}

TEST(temperature_one_follows_softmax) {
    float logits[3] = {1.0f, 2.0f, 3.0f};
    double z = exp(1) + exp(2) + exp(3);
    sampler_scratch s;
    ASSERT_EQ(sampler_scratch_init(&s, 3), 0);
    rng_state r;
    rng_seed(&r, 42);
    int count[3] = {0};
    gen_params p = params(1, 1, 0);
    for (int i = 0; i < 30000; i++) count[sampler_pick(logits, &p, &r, &s, -1, NULL)]++;
    for (int i = 0; i < 3; i++) ASSERT_NEAR(count[i] / 30000.0, exp(i + 1) / z, 0.015); /* ~5 sigma */
    sampler_scratch_free(&s);
}

TEST(same_seed_same_sequence) {
    float logits[50];
    for (int i = 0; i < 50; i++) logits[i] = (float)sin(i * 0.7);
    sampler_scratch s;
    ASSERT_EQ(sampler_scratch_init(&s, 50), 0);
    rng_state a, b;
    rng_seed(&a, 123);
    rng_seed(&b, 123);
    gen_params p = params(0.8f, 0.95f, 20);
    for (int i = 0; i < 200; i++) ASSERT_EQ(sampler_pick(logits, &p, &a, &s, -1, NULL), sampler_pick(logits, &p, &b, &s, -1, NULL));
    sampler_scratch_free(&s);
}

TEST(logprobs_match_direct_log_softmax) {
    enum { V = 1000 };
    float logits[V];
    for (int i = 0; i < V; i++) logits[i] = (float)(10 * sin(i * 1.3) + (i == 777 ? 30 : 0));
    double m = -1e30, z = 0;
    for (int i = 0; i < V; i++) m = fmax(m, logits[i]);
    for (int i = 0; i < V; i++) z += exp(logits[i] - m);
    double lse = m + log(z);
    sampler_scratch s;
    ASSERT_EQ(sampler_scratch_init(&s, V), 0);
    rng_state r;
    rng_seed(&r, 1);
    gen_params p = params(0, 1, 0);
    gen_token lp;
    ASSERT_EQ(sampler_pick(logits, &p, &r, &s, 5, &lp), 777);
    ASSERT_EQ(lp.id, 777);
    ASSERT_NEAR(lp.logprob, logits[777] - lse, 1e-5); /* f32 rounding of values near 0 */
    ASSERT_EQ(lp.n_top, 5);
    ASSERT_EQ(lp.top_id[0], 777);
    for (int k = 1; k < 5; k++) ASSERT(lp.top_logprob[k] <= lp.top_logprob[k - 1]);
    /* the 5 best really are the 5 largest logits */
    int better = 0;
    for (int i = 0; i < V; i++) better += logits[i] > logits[lp.top_id[4]];
    ASSERT_EQ(better, 4);
    sampler_scratch_free(&s);
}

/* The reference: lowest index among equal maxima, NaN never wins (index 0 when x[0] is). */
static int32_t ref_argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

TEST(greedy_argmax_matches_scalar_on_ties_tails_and_nan) {
    /* The vectorised argmax keeps one maximum per lane: ties across lanes, in the tail,
     * with x[0], and NaN / -inf inputs must all give the scalar loop's index. */
    enum { MAXV = 32000 + 37 };
    static float logits[MAXV];
    static const int sizes[] = {1, 2, 15, 16, 17, 31, 33, 63, 64, 65, 95, 127, 200, 1000, 32000, MAXV};
    uint64_t st = 12345;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        int V = sizes[si];
        sampler_scratch s;
        ASSERT_EQ(sampler_scratch_init(&s, V), 0);
        gen_params p = params(0, 1, 0);
        rng_state r;
        rng_seed(&r, 1);
        for (int trial = 0; trial < 40; trial++) {
            for (int i = 0; i < V; i++) {
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                /* few distinct values: many ties */
                logits[i] = (float)((st >> 33) % 7) - 3.0f;
            }
            int mode = trial % 8;
            if (mode == 1) logits[V - 1] = 10.0f;                           /* max in the tail */
            if (mode == 2) for (int i = 0; i < V; i++) logits[i] = 1.0f;    /* all equal: 0 */
            if (mode == 3) logits[(trial * 7919) % V] = NAN;                /* NaN ignored */
            if (mode == 4) logits[0] = NAN;                                 /* NaN at 0 wins */
            if (mode == 5) for (int i = 0; i < V; i++) logits[i] = -INFINITY;
            if (mode == 6) {                                                /* ties with x[0] */
                logits[0] = 100.0f;
                logits[V / 2] = 100.0f;
                logits[V - 1] = 100.0f;
            }
            if (mode == 7) {                                                /* two lanes tie */
                logits[V - 1] = 50.0f;
                logits[(V - 1) / 3] = 50.0f;
            }
            ASSERT_EQ(sampler_pick(logits, &p, &r, &s, -1, NULL), ref_argmax(logits, V));
        }
        sampler_scratch_free(&s);
    }
}

TEST_MAIN(greedy_picks_lowest_id_among_ties, greedy_argmax_matches_scalar_on_ties_tails_and_nan, top_k_and_top_p_restrict_the_support, temperature_one_follows_softmax,
          same_seed_same_sequence, logprobs_match_direct_log_softmax)
