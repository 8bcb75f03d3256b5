/* tests/unit/test_sgmv_cpu.c — the CPU backend's SGMV ops (sgmv_shrink, sgmv_expand,
 * seg_scale) against plain-loop references written here (double accumulation).
 *
 * Batches follow Punica's test matrix: adapter spreads distinct (one row per adapter),
 * uniform (rows spread evenly over a few adapters), zipf (popularity ∝ 1/rank), identical
 * (one adapter) and skewed (one huge segment + many one-row ones); T = 1, 7, 133 rows;
 * ranks 1, 2, 8, 16, 33, 64, 128 mixed in one batch; empty segments (rank > 0, no rows),
 * rank-0, NULL-A and NULL-B segments; f32/f16/bf16 weights; LoRA mode (no bias/act
 * arrays) and bottleneck mode (per-segment bias, NULL bias and every activation);
 * odd dims; 1/2/3 threads. Canaries: guard floats around t and y, t columns beyond a
 * segment's rank and rows of skipped / uncovered segments must keep their exact bits.
 * Batch invariance: a row's t and y are bit-identical alone and inside a large mixed
 * batch run on another thread count.
 *
 * Tolerances: u = 2^-24 is the f32 unit roundoff. A sum of K products computed in f32
 * in any order (vector lanes, a reduction tree) is within K·u·Σ|terms| of the exact
 * sum (Higham, "Accuracy and Stability of Numerical Algorithms", §3.1: (K-1)u for the
 * additions, plus u for each product's rounding, first order). Weights are rounded to
 * their stored dtype first and the reference uses the same rounded values, so only
 * accumulation error is measured; a missing or doubled term (≈ Σ|terms|/K) is far
 * outside the bound for the K used here. */
#include "kernels/cpu/cpu_internal.h"
#include "kernels/kernels.h"
#include "lib/half.h"
#include "tests/harness/test.h"
#include "tests/harness/test_dtype.h"

#define U_F32 (1.0 / 16777216.0) /* 2^-24 */

#define CANARY_N TEST_CANARY_N
#define CANARY_V TEST_CANARY_V


static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

static const kdtype DTYPES[] = {KDT_F32, KDT_F16, KDT_BF16};
static const int THREADS[] = {1, 2, 3};
static const int RANKS[] = {1, 2, 8, 16, 33, 64, 128};
enum { N_RANKS = 7 };

/* ---- reference activations (double; definitions as torch) ---- */

static double ref_act(int act, double x) {
    switch (act) {
    case KACT_RELU: return x > 0 ? x : 0;
    case KACT_SILU: return x / (1 + exp(-x));
    case KACT_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case KACT_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case KACT_TANH: return tanh(x);
    case KACT_SIGMOID: return 1 / (1 + exp(-x));
    default: return x;
    }
}

/* ---- a batch of segments ---- */

enum { SPREAD_DISTINCT, SPREAD_UNIFORM, SPREAD_ZIPF, SPREAD_IDENTICAL, SPREAD_SKEWED, N_SPREADS };
static const char *const SPREAD_NAMES[] = {"distinct", "uniform", "zipf", "identical", "skewed"};

#define MAX_SEGS 512

typedef struct {
    kdtype dt;
    int in, out;
    int lead;     /* rows before seg_start[0] (no segment) */
    int n_rows;   /* all rows of x / t / y: lead + segment rows + trailing rows */
    int n_segs;
    int ld_t;
    int32_t seg_start[MAX_SEGS + 1];
    int32_t rank[MAX_SEGS];
    float scale[MAX_SEGS];
    int32_t act[MAX_SEGS];
    const void *a[MAX_SEGS], *b[MAX_SEGS];
    const float *bias_a[MAX_SEGS], *bias_b[MAX_SEGS];
    float *af[MAX_SEGS], *bf[MAX_SEGS]; /* dtype-rounded values, for the reference */
    void *as[MAX_SEGS], *bs[MAX_SEGS];  /* storage (freed) */
    int bottleneck;                      /* bias/act arrays present */
    float *x;                            /* [n_rows, in] */
} sg_case;

static int seg_active(const sg_case *c, int i) { return c->rank[i] > 0 && c->a[i] && c->b[i]; }

static ksgmv case_view(const sg_case *c) {
    return (ksgmv){.n_segs = c->n_segs,
                   .seg_start = c->seg_start,
                   .a = c->a,
                   .b = c->b,
                   .rank = c->rank,
                   .scale = c->scale,
                   .bias_a = c->bottleneck ? c->bias_a : NULL,
                   .bias_b = c->bottleneck ? c->bias_b : NULL,
                   .act = c->bottleneck ? c->act : NULL,
                   .dtype = c->dt};
}

/* Row counts per adapter for a spread over T rows (zeros are empty segments). */
static int spread_counts(int spread, int T, int *counts) {
    int n = 0;
    switch (spread) {
    case SPREAD_DISTINCT:
        for (int i = 0; i < T; i++) counts[n++] = 1;
        break;
    case SPREAD_UNIFORM: {
        int k = T < 5 ? T : 5;
        for (int i = 0; i < k; i++) counts[n++] = T / k + (i < T % k);
        break;
    }
    case SPREAD_ZIPF: {
        /* 12 adapters, each row picks adapter a with probability ∝ 1/(a+1). */
        enum { K = 12 };
        double h = 0;
        for (int a = 0; a < K; a++) h += 1.0 / (a + 1);
        for (int a = 0; a < K; a++) counts[a] = 0;
        for (int r = 0; r < T; r++) {
            double u = (double)test_rng_u32() / 4294967296.0 * h, acc = 0;
            int a = 0;
            for (; a < K - 1; a++)
                if ((acc += 1.0 / (a + 1)) > u) break;
            counts[a]++;
        }
        n = K;
        break;
    }
    case SPREAD_IDENTICAL: counts[n++] = T; break;
    case SPREAD_SKEWED: {
        int m = T - 1 < 16 ? T - 1 : 16, big = T - m;
        for (int i = 0; i < m / 2; i++) counts[n++] = 1;
        counts[n++] = big;
        for (int i = m / 2; i < m; i++) counts[n++] = 1;
        break;
    }
    }
    return n;
}

/* Adds segment i with `rows` rows and rank; A/B/bias drawn at random. kind: 0 normal,
 * 1 NULL A, 2 NULL B. */
static void add_segment(sg_case *c, int rows, int rank, int kind) {
    int i = c->n_segs++;
    ASSERT(i < MAX_SEGS);
    c->seg_start[i + 1] = c->seg_start[i] + rows;
    c->rank[i] = rank;
    c->scale[i] = 0.25f + 1.75f * (test_rng_f() + 1.0f) / 2;
    c->act[i] = (int32_t)(test_rng_u32() % (KACT_SIGMOID + 1));
    int64_t na = (int64_t)rank * c->in, nb = (int64_t)c->out * rank;
    c->af[i] = malloc((size_t)(na ? na : 1) * sizeof(float));
    c->bf[i] = malloc((size_t)(nb ? nb : 1) * sizeof(float));
    ASSERT(c->af[i] && c->bf[i]);
    test_fill(c->af[i], na);
    test_fill(c->bf[i], nb);
    c->as[i] = test_to_dtype(c->dt, c->af[i], na);
    c->bs[i] = test_to_dtype(c->dt, c->bf[i], nb);
    /* A rank-0 segment still gets (valid, unread) pointers: rank alone must skip it. */
    c->a[i] = kind == 1 ? NULL : c->as[i];
    c->b[i] = kind == 2 ? NULL : c->bs[i];
    float *ba = NULL, *bb = NULL;
    if (test_rng_u32() % 4 != 0) { /* 1 in 4 segments has no bias (NULL pointers) */
        ba = malloc((size_t)(rank ? rank : 1) * sizeof(float));
        bb = malloc((size_t)c->out * sizeof(float));
        ASSERT(ba && bb);
        test_fill(ba, rank);
        test_fill(bb, c->out);
    }
    c->bias_a[i] = ba;
    c->bias_b[i] = bb;
}

static sg_case *case_build(int spread, int T, kdtype dt, int in, int out, int bottleneck, int lead, int trail) {
    sg_case *c = calloc(1, sizeof *c);
    ASSERT(c);
    c->dt = dt;
    c->in = in;
    c->out = out;
    c->lead = lead;
    c->bottleneck = bottleneck;
    c->seg_start[0] = lead;
    int counts[MAX_SEGS];
    int n = spread_counts(spread, T, counts);
    int r0 = (int)(test_rng_u32() % N_RANKS);
    add_segment(c, 0, RANKS[(r0 + 3) % N_RANKS], 0); /* empty segment first */
    for (int s = 0; s < n; s++) {
        int rank = RANKS[(r0 + s) % N_RANKS], kind = 0;
        /* With enough segments, some are skipped: rank 0, NULL A, NULL B. */
        if (n >= 4 && s % 6 == 3) rank = 0;
        else if (n >= 4 && s % 6 == 5) kind = 1 + (s / 6) % 2;
        add_segment(c, counts[s], rank, kind);
        if (s == n / 2) add_segment(c, 0, RANKS[(r0 + 5) % N_RANKS], 0); /* empty segment mid-batch */
    }
    add_segment(c, 0, 0, 0); /* empty rank-0 segment last */
    c->n_rows = c->seg_start[c->n_segs] + trail;
    c->ld_t = 0;
    for (int i = 0; i < c->n_segs; i++)
        if (seg_active(c, i) && c->rank[i] > c->ld_t) c->ld_t = c->rank[i];
    c->ld_t += 3; /* columns past every rank, which must stay untouched */
    c->x = malloc((size_t)c->n_rows * in * sizeof(float));
    ASSERT(c->x);
    test_fill(c->x, (int64_t)c->n_rows * in);
    return c;
}

static void case_free(sg_case *c) {
    for (int i = 0; i < c->n_segs; i++) {
        free(c->af[i]);
        free(c->bf[i]);
        free(c->as[i]);
        free(c->bs[i]);
        free((void *)c->bias_a[i]);
        free((void *)c->bias_b[i]);
    }
    free(c->x);
    free(c);
}

/* Segment of row r, or -1. */
static int row_seg(const sg_case *c, int r) {
    for (int i = 0; i < c->n_segs; i++)
        if (r >= c->seg_start[i] && r < c->seg_start[i + 1]) return i;
    return -1;
}

/* ---- checks ---- */

/* Runs shrink into a canary-filled t and checks every entry. Returns t (caller frees
 * with test_guarded_check_free(t, n_rows * ld_t)). */
static float *check_shrink(kbackend *kb, const sg_case *c, const char *what) {
    int64_t nt = (int64_t)c->n_rows * c->ld_t;
    float *t = test_guarded_alloc(nt);
    for (int64_t i = 0; i < nt; i++) t[i] = CANARY_V;
    ksgmv s = case_view(c);
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, c->x, c->in, &s, t, c->ld_t), 0);
    for (int r = 0; r < c->n_rows; r++) {
        int i = row_seg(c, r);
        int rank = i >= 0 && seg_active(c, i) ? c->rank[i] : 0;
        const float *tr = t + (int64_t)r * c->ld_t;
        for (int k = 0; k < c->ld_t; k++) {
            if (k >= rank) {
                if (!same_bits(tr[k], CANARY_V))
                    FAIL("%s: t[%d,%d] written (segment %d, rank %d): %g", what, r, k, i, rank, tr[k]);
                continue;
            }
            double sum = 0, sa = 0;
            for (int d = 0; d < c->in; d++) {
                double p = (double)c->x[(int64_t)r * c->in + d] * c->af[i][(int64_t)k * c->in + d];
                sum += p;
                sa += fabs(p);
            }
            int act = KACT_NONE;
            if (c->bottleneck) {
                if (c->bias_a[i]) {
                    sum += c->bias_a[i][k];
                    sa += fabs(c->bias_a[i][k]);
                }
                act = c->act[i];
            }
            double ref = ref_act(act, sum);
            /* Pre-activation: in_dim products + the bias add, (in+1)·u·(Σ|x·A| + |bias|).
             * The activation scales that error by at most max|f'| (gelu ≈ 1.13, silu ≈ 1.10,
             * tanh/relu 1, sigmoid 1/4): 1.13. Its own evaluation (double libm) and the
             * final rounding to f32 add ≤ u·|f| (2u allowed). */
            double tol = 1.13 * (c->in + 1) * U_F32 * sa + 2 * U_F32 * fabs(ref) + 1e-30;
            if (!(fabs(tr[k] - ref) <= tol))
                FAIL("%s: t[%d,%d] (segment %d rank %d act %d) = %.9g, ref %.9g, tol %.3g", what, r, k, i, rank,
                     act, tr[k], ref, tol);
        }
    }
    return t;
}

/* Runs expand on a random t (NaN beyond each rank and in rows without an active
 * segment: reading them would poison y) and checks y. */
static void check_expand(kbackend *kb, const sg_case *c, const char *what) {
    int64_t nt = (int64_t)c->n_rows * c->ld_t, ny = (int64_t)c->n_rows * c->out;
    float *t = malloc((size_t)nt * sizeof(float)), *y0 = malloc((size_t)ny * sizeof(float));
    float *y = test_guarded_alloc(ny);
    ASSERT(t && y0);
    for (int r = 0; r < c->n_rows; r++) {
        int i = row_seg(c, r);
        int rank = i >= 0 && seg_active(c, i) ? c->rank[i] : 0;
        for (int k = 0; k < c->ld_t; k++) t[(int64_t)r * c->ld_t + k] = k < rank ? test_rng_f() * 4 : NAN;
    }
    test_fill(y0, ny);
    memcpy(y, y0, (size_t)ny * sizeof(float));
    ksgmv s = case_view(c);
    ASSERT_EQ(kb->ops->sgmv_expand(kb, t, c->ld_t, &s, c->out, y), 0);
    for (int r = 0; r < c->n_rows; r++) {
        int i = row_seg(c, r);
        int rank = i >= 0 && seg_active(c, i) ? c->rank[i] : 0;
        const float *bias = c->bottleneck && rank ? c->bias_b[i] : NULL;
        for (int j = 0; j < c->out; j++) {
            int64_t o = (int64_t)r * c->out + j;
            if (!rank) {
                if (!same_bits(y[o], y0[o])) FAIL("%s: y[%d,%d] written (segment %d skipped)", what, r, j, i);
                continue;
            }
            double sum = 0, sa = 0;
            for (int k = 0; k < rank; k++) {
                double p = (double)t[(int64_t)r * c->ld_t + k] * c->bf[i][(int64_t)j * rank + k];
                sum += p;
                sa += fabs(p);
            }
            if (bias) {
                sum += bias[j];
                sa += fabs(bias[j]);
            }
            double ref = y0[o] + (double)c->scale[i] * sum;
            /* rank products and the bias add: (rank+1)·u·(Σ|t·B| + |bias|), times |scale|;
             * then the scale multiply and the add to y each round once (≤ u of their
             * magnitudes): (rank+3)·u·(|scale|·(Σ|t·B| + |bias|) + |y0|) covers all. */
            double tol = (rank + 3) * U_F32 * (fabs(c->scale[i]) * sa + fabs(y0[o])) + 1e-30;
            if (!(fabs(y[o] - ref) <= tol))
                FAIL("%s: y[%d,%d] (segment %d rank %d) = %.9g, ref %.9g, tol %.3g", what, r, j, i, rank, y[o], ref,
                     tol);
        }
    }
    test_guarded_check_free(y, ny);
    free(t);
    free(y0);
}

/* Every dtype × dims × T × mode (LoRA / bottleneck with rows outside the segments)
 * × threads for one spread. */
static void run_spread(int spread) {
    static const int dims[][2] = {{17, 100}, {100, 17}, {768, 768}};
    static const int Ts[] = {1, 7, 133};
    kbackend *kbs[3];
    for (int ti = 0; ti < 3; ti++) ASSERT(kbs[ti] = kbackend_cpu_create(THREADS[ti]));
    test_rng_seed(100 + (uint64_t)spread);
    for (int d = 0; d < 3; d++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
            for (size_t Ti = 0; Ti < sizeof Ts / sizeof *Ts; Ti++)
                for (int mode = 0; mode < 2; mode++) {
                    sg_case *c = case_build(spread, Ts[Ti], DTYPES[d], dims[di][0], dims[di][1], mode, mode ? 2 : 0,
                                            mode ? 3 : 0);
                    for (int ti = 0; ti < 3; ti++) {
                        char what[160];
                        snprintf(what, sizeof what, "%s T=%d %s in=%d out=%d %s threads=%d", SPREAD_NAMES[spread],
                                 Ts[Ti], kdtype_name(DTYPES[d]), dims[di][0], dims[di][1],
                                 mode ? "bottleneck" : "lora", THREADS[ti]);
                        float *t = check_shrink(kbs[ti], c, what);
                        test_guarded_check_free(t, (int64_t)c->n_rows * c->ld_t);
                        check_expand(kbs[ti], c, what);
                    }
                    case_free(c);
                }
    for (int ti = 0; ti < 3; ti++) kbackend_destroy(kbs[ti]);
}

TEST(sgmv_spread_distinct) { run_spread(SPREAD_DISTINCT); }
TEST(sgmv_spread_uniform) { run_spread(SPREAD_UNIFORM); }
TEST(sgmv_spread_zipf) { run_spread(SPREAD_ZIPF); }
TEST(sgmv_spread_identical) { run_spread(SPREAD_IDENTICAL); }
TEST(sgmv_spread_skewed) { run_spread(SPREAD_SKEWED); }

/* Every rank of the list as the only adapter of a batch, every activation with and
 * without bias, at in/out dims around the vector width. */
TEST(sgmv_each_rank_and_activation) {
    static const int dims[][2] = {{1, 1}, {15, 16}, {16, 15}, {33, 31}, {100, 768}};
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    test_rng_seed(7);
    for (int d = 0; d < 3; d++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
            for (int ri = 0; ri < N_RANKS; ri++)
                for (int act = KACT_NONE; act <= KACT_SIGMOID; act++) {
                    sg_case *c = calloc(1, sizeof *c);
                    ASSERT(c);
                    c->dt = DTYPES[d];
                    c->in = dims[di][0];
                    c->out = dims[di][1];
                    c->bottleneck = 1;
                    add_segment(c, 5, RANKS[ri], 0);
                    c->act[0] = act;
                    if (act % 2) { /* odd activations run without bias */
                        free((void *)c->bias_a[0]);
                        free((void *)c->bias_b[0]);
                        c->bias_a[0] = c->bias_b[0] = NULL;
                    }
                    c->n_rows = 5;
                    c->ld_t = RANKS[ri];
                    c->x = malloc((size_t)5 * c->in * sizeof(float));
                    ASSERT(c->x);
                    /* Spread the pre-activations over the activations' interesting range. */
                    for (int i = 0; i < 5 * c->in; i++) c->x[i] = test_rng_f() * 3;
                    char what[96];
                    snprintf(what, sizeof what, "%s in=%d out=%d rank=%d act=%d", kdtype_name(c->dt), c->in, c->out,
                             RANKS[ri], act);
                    float *t = check_shrink(kb, c, what);
                    test_guarded_check_free(t, (int64_t)c->n_rows * c->ld_t);
                    check_expand(kb, c, what);
                    case_free(c);
                }
    kbackend_destroy(kb);
}

/* The activations at chosen points against their definitions: large |x| (saturation,
 * exp overflow), zero, and the points where the forms differ most. */
TEST(sgmv_activation_values) {
    static const float xs[] = {-100.0f, -20.0f, -5.5f, -1.0f, -0.3f, 0.0f, 1e-8f, 0.7f, 1.5f, 3.0f, 25.0f, 90.0f};
    enum { NX = sizeof xs / sizeof *xs };
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    /* A = [1] (rank 1, in_dim 1): t = act(x) exactly as the op evaluates it. */
    float one = 1.0f;
    const void *a[1] = {&one}, *b[1] = {&one};
    int32_t rank[1] = {1}, seg[2] = {0, NX}, act[1];
    float scale[1] = {1.0f};
    for (int f = KACT_NONE; f <= KACT_SIGMOID; f++) {
        act[0] = f;
        ksgmv s = {.n_segs = 1, .seg_start = seg, .a = a, .b = b, .rank = rank, .scale = scale, .act = act,
                   .dtype = KDT_F32};
        float t[NX];
        ASSERT_EQ(kb->ops->sgmv_shrink(kb, xs, 1, &s, t, 1), 0);
        for (int i = 0; i < NX; i++) {
            double ref = ref_act(f, xs[i]);
            /* one rounding of the exact value to f32 (the op evaluates in double) */
            if (!(fabs(t[i] - ref) <= U_F32 * fabs(ref) + 1e-45))
                FAIL("act %d at %g: %.9g, ref %.9g", f, xs[i], t[i], ref);
        }
    }
    /* relu keeps NaN, as torch.relu */
    act[0] = KACT_RELU;
    float xn = NAN, tn = 0;
    int32_t seg1[2] = {0, 1};
    ksgmv s = {.n_segs = 1, .seg_start = seg1, .a = a, .b = b, .rank = rank, .scale = scale, .act = act,
               .dtype = KDT_F32};
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, &xn, 1, &s, &tn, 1), 0);
    ASSERT(isnan(tn));
    kbackend_destroy(kb);
}

/* ---- batch invariance ---- */

/* One row of segment i of c alone: a one-segment batch run on kb1; t and y rows must be
 * bit-identical to those of the full batch (t_all / y_all). */
static void check_row_alone(kbackend *kb1, const sg_case *c, int i, int r, const float *t_all, const float *y_all,
                            const float *y0_all) {
    int32_t seg[2] = {0, 1};
    ksgmv s = {.n_segs = 1,
               .seg_start = seg,
               .a = &c->a[i],
               .b = &c->b[i],
               .rank = &c->rank[i],
               .scale = &c->scale[i],
               .bias_a = c->bottleneck ? &c->bias_a[i] : NULL,
               .bias_b = c->bottleneck ? &c->bias_b[i] : NULL,
               .act = c->bottleneck ? &c->act[i] : NULL,
               .dtype = c->dt};
    int rank = c->rank[i];
    float *t = malloc((size_t)rank * sizeof(float)), *y = malloc((size_t)c->out * sizeof(float));
    ASSERT(t && y);
    ASSERT_EQ(kb1->ops->sgmv_shrink(kb1, c->x + (int64_t)r * c->in, c->in, &s, t, rank), 0);
    for (int k = 0; k < rank; k++)
        if (!same_bits(t[k], t_all[(int64_t)r * c->ld_t + k]))
            FAIL("row %d (segment %d rank %d): t[%d] alone %.9g, in batch %.9g", r, i, rank, k, t[k],
                 t_all[(int64_t)r * c->ld_t + k]);
    memcpy(y, y0_all + (int64_t)r * c->out, (size_t)c->out * sizeof(float));
    ASSERT_EQ(kb1->ops->sgmv_expand(kb1, t, rank, &s, c->out, y), 0);
    for (int j = 0; j < c->out; j++)
        if (!same_bits(y[j], y_all[(int64_t)r * c->out + j]))
            FAIL("row %d (segment %d rank %d): y[%d] alone %.9g, in batch %.9g", r, i, rank, j, y[j],
                 y_all[(int64_t)r * c->out + j]);
    free(t);
    free(y);
}

/* Runs shrink + expand over the whole batch on kb, then every row alone on kb1. */
static void check_invariance(kbackend *kb, kbackend *kb1, const sg_case *c) {
    int64_t nt = (int64_t)c->n_rows * c->ld_t, ny = (int64_t)c->n_rows * c->out;
    float *t = malloc((size_t)nt * sizeof(float)), *y = malloc((size_t)ny * sizeof(float)),
          *y0 = malloc((size_t)ny * sizeof(float));
    ASSERT(t && y && y0);
    test_fill(y0, ny);
    memcpy(y, y0, (size_t)ny * sizeof(float));
    ksgmv s = case_view(c);
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, c->x, c->in, &s, t, c->ld_t), 0);
    ASSERT_EQ(kb->ops->sgmv_expand(kb, t, c->ld_t, &s, c->out, y), 0);
    for (int i = 0; i < c->n_segs; i++)
        if (seg_active(c, i))
            for (int r = c->seg_start[i]; r < c->seg_start[i + 1]; r++) check_row_alone(kb1, c, i, r, t, y, y0);
    free(t);
    free(y);
    free(y0);
}

TEST(sgmv_batch_invariance) {
    kbackend *kb3 = kbackend_cpu_create(3), *kb1 = kbackend_cpu_create(1);
    ASSERT(kb3 && kb1);
    test_rng_seed(42);
    /* A large mixed batch (zipf: big and small segments, mixed ranks) and one
     * 133-row segment of a single adapter, all dtypes, both modes; the big batch runs
     * on 3 threads, each row alone on 1. */
    for (int d = 0; d < 3; d++)
        for (int mode = 0; mode < 2; mode++) {
            sg_case *c = case_build(SPREAD_ZIPF, 133, DTYPES[d], 768, 768, mode, 0, 0);
            check_invariance(kb3, kb1, c);
            case_free(c);
            c = case_build(SPREAD_IDENTICAL, 133, DTYPES[d], 100, 2048, mode, 0, 0);
            check_invariance(kb3, kb1, c);
            case_free(c);
            c = case_build(SPREAD_SKEWED, 133, DTYPES[d], 2048, 100, mode, 1, 1);
            check_invariance(kb3, kb1, c);
            case_free(c);
        }
    kbackend_destroy(kb3);
    kbackend_destroy(kb1);
}

/* ---- seg_scale ---- */

TEST(seg_scale_spreads) {
    static const int dims[] = {1, 17, 100, 768};
    static const int Ts[] = {1, 7, 133};
    test_rng_seed(9);
    for (int ti = 0; ti < 3; ti++) {
        kbackend *kb = kbackend_cpu_create(THREADS[ti]);
        ASSERT(kb);
        for (int sp = 0; sp < N_SPREADS; sp++)
            for (size_t Ti = 0; Ti < sizeof Ts / sizeof *Ts; Ti++)
                for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
                    int dim = dims[di], counts[MAX_SEGS];
                    int n = spread_counts(sp, Ts[Ti], counts);
                    int lead = 2, n_segs = 0;
                    int32_t seg[MAX_SEGS + 2];
                    const float *v[MAX_SEGS + 1];
                    float *vs[MAX_SEGS + 1];
                    seg[0] = lead;
                    /* an empty segment with a vector, then the spread with every third
                     * segment's vector NULL */
                    for (int s = -1; s < n; s++) {
                        int rows = s < 0 ? 0 : counts[s];
                        seg[n_segs + 1] = seg[n_segs] + rows;
                        vs[n_segs] = malloc((size_t)dim * sizeof(float));
                        ASSERT(vs[n_segs]);
                        test_fill(vs[n_segs], dim);
                        v[n_segs] = s % 3 == 2 ? NULL : vs[n_segs];
                        n_segs++;
                    }
                    int n_rows = seg[n_segs] + 3; /* rows after the last segment too */
                    int64_t ny = (int64_t)n_rows * dim;
                    float *y = test_guarded_alloc(ny), *y0 = malloc((size_t)ny * sizeof(float));
                    ASSERT(y0);
                    test_fill(y0, ny);
                    memcpy(y, y0, (size_t)ny * sizeof(float));
                    ASSERT_EQ(kb->ops->seg_scale(kb, y, dim, n_segs, seg, v), 0);
                    for (int r = 0; r < n_rows; r++) {
                        int i = -1;
                        for (int q = 0; q < n_segs; q++)
                            if (r >= seg[q] && r < seg[q + 1]) i = q;
                        for (int j = 0; j < dim; j++) {
                            int64_t o = (int64_t)r * dim + j;
                            /* one f32 multiply, correctly rounded: exact bits expected */
                            float ref = i >= 0 && v[i] ? y0[o] * v[i][j] : y0[o];
                            if (!same_bits(y[o], ref))
                                FAIL("%s T=%d dim=%d threads=%d: y[%d,%d] = %.9g, ref %.9g (segment %d)",
                                     SPREAD_NAMES[sp], Ts[Ti], dim, THREADS[ti], r, j, y[o], ref, i);
                        }
                    }
                    test_guarded_check_free(y, ny);
                    free(y0);
                    for (int q = 0; q < n_segs; q++) free(vs[q]);
                }
        kbackend_destroy(kb);
    }
}

/* ---- arguments ---- */

TEST(sgmv_bad_arguments) {
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    float x[8] = {0}, t[8], y[8] = {0}, w[8] = {0};
    const void *a[2] = {w, w}, *b[2] = {w, w};
    int32_t rank[2] = {2, 2}, seg[3] = {0, 1, 2}, act[2] = {0, 0};
    float scale[2] = {1, 1};
    ksgmv s = {.n_segs = 2, .seg_start = seg, .a = a, .b = b, .rank = rank, .scale = scale, .dtype = KDT_F32};
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, x, 2, &s, t, 2), 0);
    ASSERT_EQ(kb->ops->sgmv_expand(kb, t, 2, &s, 2, y), 0);
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, x, 0, &s, t, 2), PEFTD_EINVAL);  /* in_dim */
    ASSERT_EQ(kb->ops->sgmv_expand(kb, t, 2, &s, 0, y), PEFTD_EINVAL);  /* out_dim */
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, x, 2, &s, t, 1), PEFTD_EINVAL);  /* rank > ld_t */
    ASSERT_EQ(kb->ops->sgmv_expand(kb, t, 1, &s, 2, y), PEFTD_EINVAL);
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, NULL, 2, &s, t, 2), PEFTD_EINVAL); /* missing buffers */
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, x, 2, &s, NULL, 2), PEFTD_EINVAL);
    ASSERT_EQ(kb->ops->sgmv_expand(kb, t, 2, &s, 2, NULL), PEFTD_EINVAL);
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, x, 2, NULL, t, 2), PEFTD_EINVAL);
    seg[1] = 3; /* decreasing */
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, x, 2, &s, t, 2), PEFTD_EINVAL);
    ASSERT_EQ(kb->ops->sgmv_expand(kb, t, 2, &s, 2, y), PEFTD_EINVAL);
    seg[1] = 1;
    seg[0] = -1;
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, x, 2, &s, t, 2), PEFTD_EINVAL);
    seg[0] = 0;
    rank[1] = -1;
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, x, 2, &s, t, 2), PEFTD_EINVAL);
    rank[1] = 2;
    s.act = act;
    act[0] = KACT_SIGMOID + 1;
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, x, 2, &s, t, 2), PEFTD_EINVAL);
    act[0] = -1;
    ASSERT_EQ(kb->ops->sgmv_expand(kb, t, 2, &s, 2, y), PEFTD_EINVAL);
    act[0] = 0;
    s.dtype = (kdtype)7;
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, x, 2, &s, t, 2), PEFTD_EINVAL);
    s.dtype = KDT_F32;
    s.scale = NULL;
    ASSERT_EQ(kb->ops->sgmv_expand(kb, t, 2, &s, 2, y), PEFTD_EINVAL);
    s.scale = scale;
    /* Nothing to do: no segments, only empty or skipped segments — buffers unused. */
    s.n_segs = 0;
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, NULL, 2, &s, NULL, 0), 0);
    ASSERT_EQ(kb->ops->sgmv_expand(kb, NULL, 0, &s, 2, NULL), 0);
    s.n_segs = 2;
    rank[0] = rank[1] = 0;
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, NULL, 2, &s, NULL, 0), 0);
    ASSERT_EQ(kb->ops->sgmv_expand(kb, NULL, 0, &s, 2, NULL), 0);
    rank[0] = rank[1] = 2;
    seg[1] = seg[2] = 0;
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, NULL, 2, &s, NULL, 2), 0);
    seg[1] = 1;
    seg[2] = 2;
    /* seg_scale */
    const float *v[2] = {w, NULL};
    ASSERT_EQ(kb->ops->seg_scale(kb, y, 2, 2, seg, v), 0);
    ASSERT_EQ(kb->ops->seg_scale(kb, y, 0, 2, seg, v), PEFTD_EINVAL);
    ASSERT_EQ(kb->ops->seg_scale(kb, y, 2, -1, seg, v), PEFTD_EINVAL);
    ASSERT_EQ(kb->ops->seg_scale(kb, NULL, 2, 2, seg, v), PEFTD_EINVAL);
    ASSERT_EQ(kb->ops->seg_scale(kb, y, 2, 2, seg, NULL), PEFTD_EINVAL);
    ASSERT_EQ(kb->ops->seg_scale(kb, y, 2, 0, NULL, NULL), 0);
    seg[1] = 3;
    ASSERT_EQ(kb->ops->seg_scale(kb, y, 2, 2, seg, v), PEFTD_EINVAL);
    kbackend_destroy(kb);
}

TEST_MAIN(sgmv_spread_distinct, sgmv_spread_uniform, sgmv_spread_zipf, sgmv_spread_identical, sgmv_spread_skewed,
          sgmv_each_rank_and_activation, sgmv_activation_values, sgmv_batch_invariance, seg_scale_spreads,
          sgmv_bad_arguments)
