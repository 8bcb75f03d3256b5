/* tests/unit/test_seg_rotate_cpu.c — the CPU backend's seg_rotate (OFT / BOFT input rotations,
 * kernels.h ksegrot) against a plain-loop reference written here in double:
 *   v·M with (v·M)[g(k·b + c)] = Σ_j v[g(k·b + j)]·R_k[j, c], chained over a segment's factors.
 *
 * Batches of T = 1, 7, 133 rows split into segments of the Punica spreads (distinct, uniform,
 * skewed, identical) with empty segments and factor-free segments (rows copied); factor chains
 * of 1-3 factors mixing block sizes 1, 3, 12, 16, 17, 48 (below, at and above the vector width,
 * and one dense block over the whole input), shared blocks, random permutations and the
 * identity; dims 48 and 96; 1/2/3 threads. Canary rows outside the covered range keep their bits.
 * Batch invariance: a row is bit-identical alone, in a big mixed batch and on another thread
 * count. A factor chain of a BOFT butterfly built by the importer's own helper
 * (adapter__butterfly_perm) is checked against the explicit dense product P·B·Pᵀ.
 * Bad arguments (a block that does not divide dim, a perm entry out of range, overlapping x / y,
 * too many factors) are refused with PEFTD_EINVAL and write nothing.
 *
 * Tolerance: one output is a chain of F dot products of b terms, each accumulated in f32 (FMA,
 * j ascending) from the previous factor's rounded outputs; first order, the error is within
 * Σ_f b_f·u·(the magnitude of the terms), u = 2^-24. The reference propagates the exact values,
 * so each stage's input rounding adds u·|v| more: the bound used is (Σ b_f + F)·u·4·max|v|
 * (the rotations here are orthogonal-ish and random, |R| <= 1, so magnitudes stay O(max|v|)
 * per stage; 4 is headroom). A wrong index moves an output by O(max|v|).
 */
#include <math.h>

#include "adapter_store/adapter_internal.h"
#include "kernels/kernels.h"
#include "tests/harness/test.h"

#define U_F32 (1.0 / 16777216.0)
#define CANARY 3.25f

static uint64_t RNG = 0x243F6A8885A308D3ull;
static uint32_t rnd(void) {
    RNG ^= RNG << 13, RNG ^= RNG >> 7, RNG ^= RNG << 17;
    return (uint32_t)(RNG >> 11);
}
static float frand(void) { return (float)((rnd() % 2000001) / 1000000.0 - 1.0); }

/* A factor with its host storage (the CPU backend reads host memory). */
typedef struct {
    krot_factor k;
    float *r;
    int32_t *perm;
} factor;

static factor make_factor(int dim, int block, bool shared, bool perm) {
    factor f = {0};
    size_t nr = (size_t)(shared ? block : dim) * block;
    f.r = malloc(nr * sizeof *f.r);
    for (size_t i = 0; i < nr; i++) f.r[i] = frand() / sqrtf((float)block);
    if (perm) {
        f.perm = malloc((size_t)dim * sizeof *f.perm);
        for (int i = 0; i < dim; i++) f.perm[i] = i;
        for (int i = dim - 1; i > 0; i--) { /* Fisher–Yates */
            int j = (int)(rnd() % (uint32_t)(i + 1)), t = f.perm[i];
            f.perm[i] = f.perm[j], f.perm[j] = t;
        }
    }
    f.k = (krot_factor){.r = f.r, .perm = f.perm, .block = block, .shared = shared};
    return f;
}

static void free_factor(factor *f) {
    free(f->r);
    free(f->perm);
}

/* v = v·M in double. */
static void ref_factor(double *v, int dim, const krot_factor *f) {
    double *out = malloc((size_t)dim * sizeof *out);
    int b = f->block;
    for (int k = 0; k < dim / b; k++)
        for (int c = 0; c < b; c++) {
            const float *R = f->r + (f->shared ? 0 : (size_t)k * b * b);
            double s = 0;
            for (int j = 0; j < b; j++) s += v[f->perm ? f->perm[k * b + j] : k * b + j] * (double)R[(size_t)j * b + c];
            out[f->perm ? f->perm[k * b + c] : k * b + c] = s;
        }
    memcpy(v, out, (size_t)dim * sizeof *v);
    free(out);
}

enum { SP_DISTINCT, SP_UNIFORM, SP_SKEWED, SP_IDENTICAL, SP_N };
static const char *const SP_NAMES[] = {"distinct", "uniform", "skewed", "identical"};

/* Segment sizes for T rows (an empty segment in every spread but identical). */
static int spread(int sp, int T, int *sz) {
    int n = 0;
    switch (sp) {
    case SP_DISTINCT:
        for (int i = 0; i < T; i++) sz[n++] = 1;
        break;
    case SP_UNIFORM:
        for (int left = T; left > 0;) {
            int k = left < 5 ? left : 5;
            sz[n++] = k, left -= k;
        }
        break;
    case SP_SKEWED:
        sz[n++] = T - T / 3;
        for (int i = 0; i < T / 3; i++) sz[n++] = 1;
        break;
    default: sz[n++] = T; return n;
    }
    sz[n++] = 0; /* an empty segment last */
    return n;
}

static const int BLOCKS[] = {1, 3, 12, 16, 17, 48};
#define N_BLOCKS 6

/* One batch: T rows of dim in segments `sp`, segment i getting chain i % 5 of the pool. */
static void run_case(kbackend *kb, int dim, int T, int sp) {
    int sz[200], n = spread(sp, T, sz);
    factor pool[5][3];
    int nf[5] = {0, 1, 2, 3, 1};
    for (int ch = 0; ch < 5; ch++)
        for (int f = 0; f < nf[ch]; f++) {
            int b;
            do b = BLOCKS[rnd() % N_BLOCKS];
            while (dim % b);
            if (ch == 4) b = dim; /* one dense block over the whole input */
            pool[ch][f] = make_factor(dim, b, ch == 2 && f == 1, (ch + f) % 2 == 1);
        }
    krot_factor chains[5][3];
    int max_block = 1;
    for (int ch = 0; ch < 5; ch++)
        for (int f = 0; f < nf[ch]; f++) {
            chains[ch][f] = pool[ch][f].k;
            if (pool[ch][f].k.block > max_block) max_block = pool[ch][f].k.block;
        }
    int32_t seg[201], nfac[200];
    const krot_factor *fac[200];
    seg[0] = 1; /* row 0 is a canary row outside the segments */
    for (int i = 0; i < n; i++) {
        seg[i + 1] = seg[i] + sz[i];
        nfac[i] = nf[i % 5];
        fac[i] = nf[i % 5] ? chains[i % 5] : NULL;
    }
    int rows = seg[n] + 1; /* and one after */
    float *x = malloc((size_t)rows * dim * sizeof *x), *y = malloc((size_t)rows * dim * sizeof *y);
    for (int i = 0; i < rows * dim; i++) x[i] = frand(), y[i] = CANARY;
    ksegrot s = {.n_segs = n, .seg_start = seg, .n_factors = nfac, .factors = fac, .max_block = max_block};
    ASSERT_EQ(kb->ops->seg_rotate(kb, x, dim, &s, y), 0);
    double *v = malloc((size_t)dim * sizeof *v);
    for (int c = 0; c < dim; c++) {
        if (y[c] != CANARY || y[(size_t)(rows - 1) * dim + c] != CANARY) FAIL("a row outside the segments was written");
    }
    for (int i = 0; i < n; i++)
        for (int r = seg[i]; r < seg[i + 1]; r++) {
            double vmax = 0, sum_b = 0;
            for (int c = 0; c < dim; c++) v[c] = x[(size_t)r * dim + c], vmax = fmax(vmax, fabs(v[c]));
            for (int f = 0; f < nfac[i]; f++) ref_factor(v, dim, &fac[i][f]), sum_b += fac[i][f].block;
            double tol = (sum_b + nfac[i]) * U_F32 * 4 * vmax;
            for (int c = 0; c < dim; c++) {
                double d = fabs((double)y[(size_t)r * dim + c] - v[c]);
                if (nfac[i] == 0 ? y[(size_t)r * dim + c] != x[(size_t)r * dim + c] : !(d <= tol))
                    FAIL("dim %d T %d %s: segment %d (%d factors) row %d col %d: %.9g vs %.9g (tol %.3g)", dim, T,
                         SP_NAMES[sp], i, nfac[i], r, c, y[(size_t)r * dim + c], v[c], tol);
            }
        }
    /* batch invariance: every row of segment i alone, as a one-segment batch */
    float *y1 = malloc((size_t)dim * sizeof *y1);
    for (int i = 0; i < n; i++)
        for (int r = seg[i]; r < seg[i + 1]; r++) {
            int32_t s1[2] = {0, 1};
            ksegrot one = {.n_segs = 1, .seg_start = s1, .n_factors = &nfac[i], .factors = &fac[i],
                           .max_block = max_block};
            ASSERT_EQ(kb->ops->seg_rotate(kb, x + (size_t)r * dim, dim, &one, y1), 0);
            if (memcmp(y1, y + (size_t)r * dim, (size_t)dim * sizeof *y1))
                FAIL("dim %d %s: row %d differs alone and in its batch", dim, SP_NAMES[sp], r);
        }
    free(y1), free(v), free(x), free(y);
    for (int ch = 0; ch < 5; ch++)
        for (int f = 0; f < nf[ch]; f++) free_factor(&pool[ch][f]);
}

TEST(spreads_chains_and_threads) {
    static const int TS[] = {1, 7, 133}, THREADS[] = {1, 2, 3}, DIMS[] = {48, 96};
    for (int th = 0; th < 3; th++) {
        kbackend *kb = kbackend_cpu_create(THREADS[th]);
        ASSERT(kb);
        for (int d = 0; d < 2; d++)
            for (int t = 0; t < 3; t++)
                for (int sp = 0; sp < SP_N; sp++) run_case(kb, DIMS[d], TS[t], sp);
        kbackend_destroy(kb);
    }
}

/* A two-factor BOFT butterfly (in 32, 4 blocks of 8) with the importer's permutations, applied
 * as PEFT writes it: x·(P₁B₁P₁ᵀ)·(P₀B₀P₀ᵀ) with P[i, idx[i]] = 1 and idx = g⁻¹. */
TEST(butterfly_matches_the_dense_product) {
    enum { N = 32, NB = 4, B = 8 };
    kbackend *kb = kbackend_cpu_create(2);
    factor f[2];
    bool ident[2];
    for (int i = 0; i < 2; i++) { /* PEFT factor i: block_butterfly_perm(N, NB >> i, B / 2) */
        f[i] = make_factor(N, B, false, false);
        f[i].perm = malloc(N * sizeof *f[i].perm);
        ASSERT_EQ(adapter__butterfly_perm(N, NB >> i, B / 2, f[i].perm, &ident[i]), 0);
        f[i].k.perm = f[i].perm;
    }
    ASSERT(ident[0] && !ident[1]); /* factor 0's butterfly is the identity, factor 1's is not */
    /* the dense product, in double: M_i = P_i B_i P_iᵀ, Rot = M_1 M_0 */
    static double M[2][N][N], Rot[N][N];
    for (int i = 0; i < 2; i++) {
        int idx[N];
        for (int a = 0; a < N; a++) idx[f[i].perm[a]] = a;
        for (int a = 0; a < N; a++)
            for (int c = 0; c < N; c++) { /* (P B Pᵀ)[a, c] = B[idx a, idx c] */
                int ia = idx[a], ic = idx[c];
                M[i][a][c] = ia / B == ic / B ? f[i].r[(size_t)(ia / B) * B * B + (ia % B) * B + ic % B] : 0;
            }
    }
    for (int a = 0; a < N; a++)
        for (int c = 0; c < N; c++) {
            double s = 0;
            for (int k = 0; k < N; k++) s += M[1][a][k] * M[0][k][c];
            Rot[a][c] = s;
        }
    float x[N], y[N];
    for (int i = 0; i < N; i++) x[i] = frand();
    krot_factor chain[2] = {f[1].k, f[0].k}; /* x·M_1 first */
    const krot_factor *fp = chain;
    int32_t seg[2] = {0, 1}, nf = 2;
    ksegrot s = {.n_segs = 1, .seg_start = seg, .n_factors = &nf, .factors = &fp, .max_block = B};
    ASSERT_EQ(kb->ops->seg_rotate(kb, x, N, &s, y), 0);
    for (int c = 0; c < N; c++) {
        double want = 0;
        for (int a = 0; a < N; a++) want += x[a] * Rot[a][c];
        if (!(fabs(want - y[c]) <= 1e-5)) FAIL("column %d: %.9g, the dense product says %.9g", c, y[c], want);
    }
    free_factor(&f[0]), free_factor(&f[1]);
    kbackend_destroy(kb);
}

TEST(bad_arguments_are_refused) {
    kbackend *kb = kbackend_cpu_create(1);
    enum { D = 12 };
    float x[2 * D], y[2 * D], r[D * D];
    int32_t perm[D], seg[2] = {0, 2}, nf = 1;
    for (int i = 0; i < 2 * D; i++) x[i] = 1, y[i] = CANARY;
    for (int i = 0; i < D * D; i++) r[i] = 0.5f;
    for (int i = 0; i < D; i++) perm[i] = i;
    krot_factor k = {.r = r, .perm = NULL, .block = 5, .shared = 0}; /* 5 does not divide 12 */
    const krot_factor *fp = &k;
    ksegrot s = {.n_segs = 1, .seg_start = seg, .n_factors = &nf, .factors = &fp, .max_block = D};
    ASSERT_EQ(kb->ops->seg_rotate(kb, x, D, &s, y), PEFTD_EINVAL);
    k.block = 4, k.perm = perm, perm[3] = D; /* out of range */
    ASSERT_EQ(kb->ops->seg_rotate(kb, x, D, &s, y), PEFTD_EINVAL);
    perm[3] = 3;
    ASSERT_EQ(kb->ops->seg_rotate(kb, x, D, &s, x + 1), PEFTD_EINVAL); /* overlapping */
    nf = KROT_MAX_FACTORS + 1;
    ASSERT_EQ(kb->ops->seg_rotate(kb, x, D, &s, y), PEFTD_EINVAL);
    nf = 1, s.max_block = 2; /* below a factor's block */
    ASSERT_EQ(kb->ops->seg_rotate(kb, x, D, &s, y), PEFTD_EINVAL);
    for (int i = 0; i < 2 * D; i++)
        if (y[i] != CANARY) FAIL("a refused call wrote y[%d]", i);
    s.max_block = D;
    ASSERT_EQ(kb->ops->seg_rotate(kb, x, D, &s, y), 0);
    ASSERT(kb->ops->supports_op(kb, KOP_SEG_ROTATE, KDT_F32) && !kb->ops->supports_op(kb, KOP_SEG_ROTATE, KDT_BF16));
    kbackend_destroy(kb);
}

TEST_MAIN(spreads_chains_and_threads, butterfly_matches_the_dense_product, bad_arguments_are_refused)
