/* tests/unit/test_sample_op.c — the backends' sample op (kernels.h ksample_args) on the CPU
 * backend against the engine's host sampler (server/engine/sampling.c, itself tested against
 * independent references in test_sampling.c): for the same logits and the same seeded
 * request RNG, the op given the host's uniform draws picks the same ids and logprobs, bit for
 * bit, over greedy / temperature / top-k / top-p rows, tied maxima, -inf and NaN entries, a
 * row stride beyond the vocabulary and multi-step streams (seeded reproducibility); plus the
 * op's own argument checks. The CUDA op is compared with this one in test_backend_parity. */
#include <math.h>

#include "kernels/kernels.h"
#include "server/engine/sampling.h"
#include "tests/harness/test.h"

typedef struct {
    float t, p;
    int k;
} cfg;
static const cfg CFGS[] = {{0, 1, 0},    {0.8f, 1, 0},    {1, 1, 40},      {1.3f, 0.9f, 0}, {0.7f, 0.5f, 5},
                           {1, 0.3f, 1000000}, {2, 0.95f, 1}, {1, 0, 0},   {0.5f, 0.99f, 200}};
#define N_CFG ((int)(sizeof CFGS / sizeof CFGS[0]))

static uint64_t X = 88172645463325252ull;
static float frand(float scale) {
    X ^= X << 13, X ^= X >> 7, X ^= X << 17;
    return ((float)(X >> 40) / (float)(1 << 24) * 2 - 1) * scale;
}

/* One batch of n rows: host sampler (one RNG per row, seeded seed0 + r) vs the op (u drawn from
 * a second copy of each row's RNG exactly when the host draws: only for T > 0 rows). */
static void compare(int n, int V, int ld, int steps, uint64_t seed0) {
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    ASSERT(kb->ops->supports_op(kb, KOP_SAMPLE, KDT_F32));
    ASSERT(!kb->ops->supports_op(kb, KOP_SAMPLE, KDT_BF16));
    float *x = malloc(sizeof(float) * (size_t)n * ld), temp[64], tp[64], lp_op[64];
    int32_t k[64], ids[64];
    double u[64];
    rng_state rh[64], ro[64];
    sampler_scratch s;
    ASSERT(x && n <= 64);
    ASSERT_EQ(sampler_scratch_init(&s, V), 0);
    for (int r = 0; r < n; r++) rng_seed(&rh[r], seed0 + (uint64_t)r), rng_seed(&ro[r], seed0 + (uint64_t)r);
    for (int step = 0; step < steps; step++) {
        bool any_trunc = false;
        for (int r = 0; r < n; r++) {
            float *row = x + (size_t)r * ld;
            for (int c = 0; c < ld; c++) row[c] = c < V ? frand(5) : 1e30f; /* padding must be ignored */
            if ((r + step) % 5 == 2) row[V / 4] = row[V - 1] = 9.0f;         /* tied maxima */
            if ((r + step) % 6 == 1) row[(r * 7) % V] = -INFINITY;
            if ((r + step) % 7 == 3) row[(r * 11 + 1) % V] = NAN;            /* never wins */
            const cfg *c = &CFGS[(r + step) % N_CFG];
            temp[r] = c->t, tp[r] = c->p, k[r] = c->k;
            u[r] = c->t > 0 ? rng_uniform(&ro[r]) : 0.0;
            any_trunc |= c->t > 0 && ((c->k > 0 && c->k < V) || (c->p > 0 && c->p < 1));
        }
        ksample_args a = {n, V, x, ld, temp, k, tp, u, ids, lp_op, any_trunc};
        ASSERT_EQ(kb->ops->sample(kb, &a), 0);
        for (int r = 0; r < n; r++) {
            gen_params p;
            gen_params_default(&p);
            p.temperature = temp[r], p.top_p = tp[r], p.top_k = k[r];
            gen_token lp;
            int32_t want = sampler_pick(x + (size_t)r * ld, &p, &rh[r], &s, 0, &lp);
            if (ids[r] != want)
                FAIL("step %d row %d (T %g k %d p %g): op %d, host sampler %d", step, r, temp[r], k[r], tp[r], ids[r], want);
            if (memcmp(&lp_op[r], &lp.logprob, sizeof(float)))
                FAIL("step %d row %d: logprob op %.9g, host %.9g", step, r, lp_op[r], lp.logprob);
            ASSERT(ids[r] >= 0 && ids[r] < V);
            if (!isnan(x[(size_t)r * ld])) ASSERT(!isnan(x[(size_t)r * ld + ids[r]]));
        }
    }
    /* both RNG copies were drawn the same number of times: the streams are still in step */
    for (int r = 0; r < n; r++) ASSERT_EQ(rng_next(&rh[r]), rng_next(&ro[r]));
    sampler_scratch_free(&s);
    free(x);
    kbackend_destroy(kb);
}

TEST(op_matches_host_sampler_small_vocab) { compare(37, 1000, 1003, 6, 11); }
TEST(op_matches_host_sampler_large_vocab) { compare(9, 32000, 32000, 3, 99); }
TEST(op_matches_host_sampler_one_row) { compare(1, 512, 520, 20, 5); }

/* Independent facts the op must show whatever the host sampler does: greedy takes the lowest
 * id among tied maxima; top_k = 1 and a tiny top_p reduce sampling to that argmax; a NaN never
 * wins unless at id 0 (then id 0, as the reference argmax). */
TEST(op_greedy_and_degenerate_truncation_are_argmax) {
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    float x[4 * 6] = {0.5f, 2, -1, 2, 1, 2,   0.5f, 2, -1, 2, 1, 2,   0.5f, 2, -1, 2, 1, 2,   NAN, 3, 4, NAN, 1, 0};
    float temp[4] = {0, 1.5f, 1, 0}, tp[4] = {1, 1, 1e-6f, 1};
    int32_t k[4] = {0, 1, 0, 0}, ids[4] = {-1, -1, -1, -1};
    double u[4] = {0, 0.999, 0.999, 0};
    ksample_args a = {4, 6, x, 6, temp, k, tp, u, ids, NULL, true};
    ASSERT_EQ(kb->ops->sample(kb, &a), 0);
    ASSERT_EQ(ids[0], 1);
    ASSERT_EQ(ids[1], 1);
    ASSERT_EQ(ids[2], 1);
    ASSERT_EQ(ids[3], 0);
    kbackend_destroy(kb);
}

TEST(op_checks_its_arguments) {
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    float x[8] = {0}, temp[1] = {1}, tp[1] = {0.5f};
    int32_t k[1] = {0}, ids[1];
    double u[1] = {0.5};
    ksample_args a = {1, 8, x, 8, temp, k, tp, u, ids, NULL, false};
    ASSERT_EQ(kb->ops->sample(kb, &a), PEFTD_EINVAL); /* a top-p row, any_truncated false */
    a.any_truncated = true;
    ASSERT_EQ(kb->ops->sample(kb, &a), 0);
    a.ld = 7;
    ASSERT_EQ(kb->ops->sample(kb, &a), PEFTD_EINVAL); /* ld < vocab */
    a.ld = 8, a.ids = NULL;
    ASSERT_EQ(kb->ops->sample(kb, &a), PEFTD_EINVAL);
    a.ids = ids, a.n_rows = 0;
    ASSERT_EQ(kb->ops->sample(kb, &a), 0);
    kbackend_destroy(kb);
}

TEST_MAIN(op_matches_host_sampler_small_vocab, op_matches_host_sampler_large_vocab, op_matches_host_sampler_one_row,
          op_greedy_and_degenerate_truncation_are_argmax, op_checks_its_arguments)
