/* tests/unit/test_kernels_cpu.c — the CPU backend's ops against plain-loop
 * references written here (double accumulation), over odd shapes, all weight
 * dtypes, beta 0/1 and 1/2/3 threads; canary values around every output catch
 * out-of-bounds writes. Also: the worker pool, and bad shapes -> error codes.
 *
 * Tolerances: u = 2^-24 is the f32 unit roundoff. A sum of K products computed
 * in f32 in any order (FMA chains, lane-wise partial sums, BLAS blocking) is
 * within (K-1)·u·Σ|terms| of the exact sum (Higham, "Accuracy and Stability of
 * Numerical Algorithms", §3.1, recursive/blocked summation), so matmul-like ops
 * are checked against that worst-case bound: a single missing or doubled term
 * (|term| ≈ Σ|terms|/K) is still far outside it for the K used here. Weights
 * are converted to their stored dtype first and the reference uses the same
 * rounded values, so only accumulation error is measured. */
#include <stdatomic.h>
#include <unistd.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/threadpool.h"
#include "kernels/kernels.h"
#include "lib/half.h"
#include "tests/harness/test.h"
#include "tests/harness/test_dtype.h"

#define U_F32 (1.0 / 16777216.0) /* 2^-24 */

#define CANARY_N TEST_CANARY_N
#define CANARY_V TEST_CANARY_V


static const kdtype DTYPES[] = {KDT_F32, KDT_F16, KDT_BF16};
static const int THREADS[] = {1, 2, 3};

/* ---- thread pool ---- */

typedef struct {
    atomic_int *hits;
    atomic_int bad_thread;
    int n_threads;
} pool_ctx;

static void pool_fn(void *vc, int task, int thread) {
    pool_ctx *c = vc;
    atomic_fetch_add(&c->hits[task], 1);
    if (thread < 0 || thread >= c->n_threads) atomic_store(&c->bad_thread, 1);
}

TEST(pool_runs_each_task_once) {
    for (int nt = 1; nt <= 4; nt++) {
        kpool *p = NULL;
        ASSERT_EQ(kpool_create(nt, &p), 0);
        ASSERT_EQ(kpool_n_threads(p), nt);
        enum { MAXT = 257 };
        atomic_int hits[MAXT];
        pool_ctx c = {.hits = hits, .n_threads = nt};
        atomic_init(&c.bad_thread, 0);
        /* Many back-to-back dispatches of varying size: catches lost wake-ups,
         * a worker missing a generation, and early returns. */
        for (int rep = 0; rep < 2000; rep++) {
            int n = 1 + rep % MAXT;
            for (int i = 0; i < n; i++) atomic_init(&hits[i], 0);
            kpool_parallel_for(p, n, pool_fn, &c);
            for (int i = 0; i < n; i++)
                if (atomic_load(&hits[i]) != 1) FAIL("nt=%d rep=%d task %d ran %d times", nt, rep, i, atomic_load(&hits[i]));
            if (rep % 500 == 499) usleep(20000); /* let workers fall asleep on the condvar */
        }
        ASSERT_EQ(atomic_load(&c.bad_thread), 0);
        kpool_parallel_for(p, 0, pool_fn, &c);
        kpool_free(p);
    }
    kpool_free(NULL);
    kpool *p = NULL;
    ASSERT_EQ(kpool_create(0, &p), 0);
    ASSERT(kpool_n_threads(p) >= 1);
    kpool_free(p);
}

TEST(backend_basics) {
    kbackend *kb = kbackend_cpu_create(0);
    ASSERT(kb);
    ASSERT_STREQ(kb->ops->name, "cpu");
    ASSERT_STREQ(kdtype_name(KDT_F32), "f32");
    ASSERT_STREQ(kdtype_name(KDT_F16), "f16");
    ASSERT_STREQ(kdtype_name(KDT_BF16), "bf16");
    char *buf = kb->ops->alloc(kb, 1000);
    ASSERT(buf);
    ASSERT_EQ((uintptr_t)buf % 64, 0);
    char src[1000], dst[1000];
    for (int i = 0; i < 1000; i++) src[i] = (char)i;
    ASSERT_EQ(kb->ops->upload(kb, buf, src, 1000), 0);
    ASSERT_EQ(kb->ops->synchronize(kb), 0);
    ASSERT_EQ(kb->ops->download(kb, dst, buf, 1000), 0);
    ASSERT(memcmp(src, dst, 1000) == 0);
    ASSERT_EQ(kb->ops->memset0(kb, buf, 1000), 0);
    for (int i = 0; i < 1000; i++) ASSERT_EQ(buf[i], 0);
    kb->ops->free(kb, buf);
    kbackend_destroy(kb);
    kbackend_destroy(NULL);
}

/* ---- matmul ---- */

static void check_matmul(kbackend *kb, kdtype dt, int n, int rows, int cols, float beta) {
    float *wv = malloc((size_t)rows * cols * sizeof(float)), *x = malloc((size_t)n * cols * sizeof(float));
    ASSERT(wv && x);
    test_fill(wv, (int64_t)rows * cols);
    test_fill(x, (int64_t)n * cols);
    void *ws = test_to_dtype(dt, wv, (int64_t)rows * cols);
    int64_t ny = (int64_t)n * rows;
    float *y = test_guarded_alloc(ny), *y0 = malloc((size_t)ny * sizeof(float));
    ASSERT(y0);
    if (beta != 0.0f) test_fill(y0, ny);
    else for (int64_t i = 0; i < ny; i++) y0[i] = NAN; /* beta 0 must overwrite, not scale */
    memcpy(y, y0, (size_t)ny * sizeof(float));
    kmat w = {.data = ws, .dtype = dt, .rows = rows, .cols = cols};
    ASSERT_EQ(kb->ops->matmul(kb, x, n, &w, y, beta), 0);
    for (int i = 0; i < n; i++)
        for (int r = 0; r < rows; r++) {
            double s = 0, sa = 0;
            for (int k = 0; k < cols; k++) {
                double t = (double)x[(int64_t)i * cols + k] * wv[(int64_t)r * cols + k];
                s += t;
                sa += fabs(t);
            }
            double base = beta != 0.0f ? y0[(int64_t)i * rows + r] : 0.0;
            /* (K-1)u·Σ|x·w| for the dot product (header), plus one rounding of
             * the final beta add: (cols + 1)·u·(Σ|x·w| + |y0|). */
            double tol = (cols + 1) * U_F32 * (sa + fabs(base)) + 1e-30;
            double got = y[(int64_t)i * rows + r];
            if (!(fabs(got - (s + base)) <= tol))
                FAIL("%s n=%d rows=%d cols=%d beta=%g y[%d,%d]=%.9g ref %.9g tol %.3g", kdtype_name(dt), n, rows,
                     cols, beta, i, r, got, s + base, tol);
        }
    test_guarded_check_free(y, ny);
    free(y0);
    free(ws);
    free(wv);
    free(x);
}

TEST(matmul_odd_shapes) {
    static const int shapes[][3] = {
        /* n, rows, cols */
        {1, 1, 1},    {1, 3, 17},   {7, 5, 17},    {7, 37, 172},   {1, 1000, 172}, {7, 1000, 33},
        {133, 9, 17}, {133, 67, 172}, {133, 131, 768}, {1, 64, 768}, {7, 257, 768},  {2, 6, 16},
        {5, 4, 15},   {30, 100, 100}, {64, 97, 200},   {24, 50, 31}, {48, 40, 65},   {133, 1, 1},
        {9, 13, 40},  {3, 1000, 768},
    };
    /* Each path (auto choice, forced register tiles, forced OpenBLAS) at every shape. */
    for (int path = KCPU_MM_AUTO; path <= KCPU_MM_BLAS; path++)
        for (size_t ti = 0; ti < sizeof THREADS / sizeof *THREADS; ti++) {
            kcpu__mm_path = (kcpu_mm_path)path;
            kbackend *kb = kbackend_cpu_create(THREADS[ti]);
            ASSERT(kb);
            test_rng_seed(ti + 1);
            for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
                for (int d = 0; d < 3; d++)
                    for (int b = 0; b < 2; b++)
                        check_matmul(kb, DTYPES[d], shapes[s][0], shapes[s][1], shapes[s][2], (float)b);
            kbackend_destroy(kb);
        }
}

TEST(matmul_bad_args) {
    kbackend *kb = kbackend_cpu_create(2);
    float x[4] = {0}, y[4] = {0}, wd[4] = {0};
    kmat w = {.data = wd, .dtype = KDT_F32, .rows = 2, .cols = 2};
    ASSERT_EQ(kb->ops->matmul(kb, x, 2, &w, y, 0.5f), PEFTD_EINVAL);
    ASSERT_EQ(kb->ops->matmul(kb, x, -1, &w, y, 0.0f), PEFTD_EINVAL);
    ASSERT_EQ(kb->ops->matmul(kb, x, 0, &w, y, 0.0f), 0);
    kmat bad = w;
    bad.dtype = (kdtype)7;
    ASSERT_EQ(kb->ops->matmul(kb, x, 1, &bad, y, 0.0f), PEFTD_EINVAL);
    bad = w;
    bad.cols = 0;
    ASSERT_EQ(kb->ops->matmul(kb, x, 1, &bad, y, 0.0f), PEFTD_EINVAL);
    ASSERT_EQ(kb->ops->matmul(kb, NULL, 1, &w, y, 0.0f), PEFTD_EINVAL);
    ASSERT_EQ(kb->ops->matmul(kb, x, 1, NULL, y, 0.0f), PEFTD_EINVAL);
    kbackend_destroy(kb);
}

/* ---- rmsnorm ---- */

TEST(rmsnorm) {
    static const int dims[] = {1, 17, 172, 768};
    static const int ns[] = {1, 7, 133};
    for (size_t ti = 0; ti < 3; ti++) {
        kbackend *kb = kbackend_cpu_create(THREADS[ti]);
        for (int d = 0; d < 3; d++)
            for (size_t di = 0; di < 4; di++)
                for (size_t ni = 0; ni < 3; ni++)
                    for (int inplace = 0; inplace < 2; inplace++) {
                        int dim = dims[di], n = ns[ni];
                        float eps = 1e-5f;
                        float *wv = malloc(dim * sizeof(float)), *x = malloc((size_t)n * dim * sizeof(float));
                        test_fill(wv, dim);
                        test_fill(x, (int64_t)n * dim);
                        if (n > 1) memset(x, 0, dim * sizeof(float)); /* all-zero row: eps keeps it finite */
                        void *ws = test_to_dtype(DTYPES[d], wv, dim);
                        kmat w = {.data = ws, .dtype = DTYPES[d], .rows = 1, .cols = dim};
                        float *y = test_guarded_alloc((int64_t)n * dim);
                        memcpy(y, x, (size_t)n * dim * sizeof(float));
                        ASSERT_EQ(kb->ops->rmsnorm(kb, inplace ? y : x, &w, n, dim, eps, y), 0);
                        for (int i = 0; i < n; i++) {
                            double ss = 0;
                            for (int k = 0; k < dim; k++) ss += (double)x[i * dim + k] * x[i * dim + k];
                            double inv = 1.0 / sqrt(ss / dim + eps);
                            for (int k = 0; k < dim; k++) {
                                double ref = x[i * dim + k] * inv * wv[k];
                                /* inv rounded to f32 plus two f32 multiplies: 3 roundings,
                                 * each ≤ u relative; 4u leaves a margin. */
                                ASSERT_NEAR(y[i * dim + k], ref, 4 * U_F32 * fabs(ref) + 1e-30);
                            }
                        }
                        test_guarded_check_free(y, (int64_t)n * dim);
                        free(ws);
                        free(wv);
                        free(x);
                    }
        kmat w1 = {.data = (float[]){1, 1}, .dtype = KDT_F32, .rows = 1, .cols = 2};
        float x3[3] = {1, 2, 3};
        ASSERT_EQ(kb->ops->rmsnorm(kb, x3, &w1, 1, 3, 1e-5f, x3), PEFTD_EINVAL); /* w length != dim */
        kbackend_destroy(kb);
    }
}

/* ---- rope ---- */

TEST(rope) {
    static const int hds[] = {2, 8, 64, 128};
    for (size_t ti = 0; ti < 3; ti++) {
        kbackend *kb = kbackend_cpu_create(THREADS[ti]);
        for (size_t hi = 0; hi < 4; hi++) {
            int hd = hds[hi], nh = 3, n = 133, dim = nh * hd;
            float *inv = malloc(hd / 2 * sizeof(float));
            for (int i = 0; i < hd / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / hd);
            int32_t *pos = malloc(n * sizeof(int32_t));
            for (int i = 0; i < n; i++) pos[i] = i < 5 ? i : (int32_t)(test_rng_u32() % 8192);
            float *x = malloc((size_t)n * dim * sizeof(float)), *y = test_guarded_alloc((int64_t)n * dim);
            test_fill(x, (int64_t)n * dim);
            memcpy(y, x, (size_t)n * dim * sizeof(float));
            ASSERT_EQ(kb->ops->rope(kb, y, pos, n, nh, hd, hd, &(krope_freqs){inv, 1, NULL, 1.0f}), 0);
            for (int r = 0; r < n; r++)
                for (int h = 0; h < nh; h++)
                    for (int i = 0; i < hd / 2; i++) {
                        /* the angle is an f32 product, as in transformers */
                        double ang = (float)((float)pos[r] * inv[i]);
                        const float *xh = x + (int64_t)r * dim + h * hd;
                        double a = xh[i], b = xh[i + hd / 2];
                        double ra = a * cos(ang) - b * sin(ang), rb = b * cos(ang) + a * sin(ang);
                        /* cosf/sinf ≤ 1 ulp (glibc), then a product and a sum in f32:
                         * ≤ ~3u·(|a|+|b|); 4u leaves a margin. */
                        double tol = 4 * U_F32 * (fabs(a) + fabs(b));
                        ASSERT_NEAR(y[(int64_t)r * dim + h * hd + i], ra, tol);
                        ASSERT_NEAR(y[(int64_t)r * dim + h * hd + i + hd / 2], rb, tol);
                    }
            test_guarded_check_free(y, (int64_t)n * dim);
            free(x);
            free(pos);
            free(inv);
        }
        float x[4] = {0}, inv_[2] = {1, 1};
        const krope_freqs *inv = &(krope_freqs){inv_, 1, NULL, 1.0f};
        ASSERT_EQ(kb->ops->rope(kb, x, (int32_t[]){0}, 1, 1, 3, 3, inv), PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->rope(kb, x, (int32_t[]){-1}, 1, 1, 4, 4, inv), PEFTD_ERANGE);
        ASSERT_EQ(kb->ops->rope(kb, x, (int32_t[]){0}, 1, 1, 4, 3, inv), PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->rope(kb, x, (int32_t[]){0}, 1, 1, 4, 6, inv), PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->rope(kb, x, (int32_t[]){0}, 1, 1, 4, 0, inv), PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->rope(kb, x, (int32_t[]){0}, 1, 1, 4, 4, NULL), PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->rope(kb, x, (int32_t[]){0}, 1, 1, 4, 4, &(krope_freqs){inv_, 0, NULL, 1.0f}),
                  PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->rope(kb, x, (int32_t[]){0}, 1, 1, 4, 4, &(krope_freqs){inv_, 1, (int32_t[]){1}, 1.0f}),
                  PEFTD_ERANGE);
        ASSERT_EQ(kb->ops->rope(kb, x, (int32_t[]){0}, 1, 1, 4, 4, &(krope_freqs){inv_, 1, (int32_t[]){-1}, 1.0f}),
                  PEFTD_ERANGE);
        kbackend_destroy(kb);
    }
}

/* Partial rotary (transformers' Phi3: q_rot = q[..., :rot_dim], q_pass = q[..., rot_dim:]):
 * pairs (i, i + rot/2) of the first rot dims rotate, the rest are left bit-identical. */
TEST(rope_partial) {
    static const int cases[][2] = {{8, 6}, {16, 12}, {64, 48}, {96, 72}, {128, 2}};
    kbackend *kb = kbackend_cpu_create(4);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int hd = cases[ci][0], rot = cases[ci][1], nh = 3, n = 37, dim = nh * hd;
        float *inv = malloc(rot / 2 * sizeof(float));
        for (int i = 0; i < rot / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / rot);
        int32_t *pos = malloc(n * sizeof(int32_t));
        for (int i = 0; i < n; i++) pos[i] = i < 5 ? i : (int32_t)(test_rng_u32() % 8192);
        float *x = malloc((size_t)n * dim * sizeof(float)), *y = test_guarded_alloc((int64_t)n * dim);
        test_fill(x, (int64_t)n * dim);
        memcpy(y, x, (size_t)n * dim * sizeof(float));
        ASSERT_EQ(kb->ops->rope(kb, y, pos, n, nh, hd, rot, &(krope_freqs){inv, 1, NULL, 1.0f}), 0);
        for (int r = 0; r < n; r++)
            for (int h = 0; h < nh; h++) {
                const float *xh = x + (int64_t)r * dim + h * hd, *yh = y + (int64_t)r * dim + h * hd;
                for (int i = 0; i < rot / 2; i++) {
                    double ang = (float)((float)pos[r] * inv[i]);
                    double a = xh[i], b = xh[i + rot / 2];
                    /* tolerance as in TEST(rope): 1-ulp cosf/sinf plus two f32 roundings */
                    double tol = 4 * U_F32 * (fabs(a) + fabs(b));
                    ASSERT_NEAR(yh[i], a * cos(ang) - b * sin(ang), tol);
                    ASSERT_NEAR(yh[i + rot / 2], b * cos(ang) + a * sin(ang), tol);
                }
                ASSERT(memcmp(yh + rot, xh + rot, (size_t)(hd - rot) * sizeof(float)) == 0);
            }
        test_guarded_check_free(y, (int64_t)n * dim);
        free(x);
        free(pos);
        free(inv);
    }
    kbackend_destroy(kb);
}

/* Per-row tables (dynamic NTK / longrope) and the cos/sin scale (attention_scaling): row r
 * rotates by pos[r] * inv[table[r]][i] with cos and sin times scale, each rounded to f32 as
 * transformers does (emb.cos() * attention_scaling); partial rotary dims pass through. */
TEST(rope_row_tables_and_scale) {
    kbackend *kb = kbackend_cpu_create(4);
    const int hd = 16, rot = 12, half = rot / 2, nh = 3, n = 41, dim = nh * hd, nt = 5;
    const float scale = 1.2247449f;
    float inv[5 * 6];
    for (int t = 0; t < nt; t++)
        for (int i = 0; i < half; i++) inv[t * half + i] = (float)pow(10000.0 * (1 + t), -2.0 * i / rot);
    int32_t pos[41], tab[41];
    for (int i = 0; i < n; i++) pos[i] = (int32_t)(test_rng_u32() % 4096), tab[i] = (int32_t)(test_rng_u32() % nt);
    float *x = malloc((size_t)n * dim * sizeof(float)), *y = test_guarded_alloc((int64_t)n * dim);
    test_fill(x, (int64_t)n * dim);
    memcpy(y, x, (size_t)n * dim * sizeof(float));
    ASSERT_EQ(kb->ops->rope(kb, y, pos, n, nh, hd, rot, &(krope_freqs){inv, nt, tab, scale}), 0);
    for (int r = 0; r < n; r++)
        for (int h = 0; h < nh; h++) {
            const float *xh = x + (int64_t)r * dim + h * hd, *yh = y + (int64_t)r * dim + h * hd;
            for (int i = 0; i < half; i++) {
                double ang = (float)((float)pos[r] * inv[tab[r] * half + i]);
                double a = xh[i], b = xh[i + half], c = cos(ang) * scale, s = sin(ang) * scale;
                double tol = 5 * U_F32 * scale * (fabs(a) + fabs(b));
                ASSERT_NEAR(yh[i], a * c - b * s, tol);
                ASSERT_NEAR(yh[i + half], b * c + a * s, tol);
            }
            ASSERT(memcmp(yh + rot, xh + rot, (size_t)(hd - rot) * sizeof(float)) == 0);
        }
    /* table NULL == every row on table 0; scale 1 == the plain op, bit for bit */
    float *z = malloc((size_t)n * dim * sizeof(float));
    int32_t zero[41] = {0};
    memcpy(y, x, (size_t)n * dim * sizeof(float));
    memcpy(z, x, (size_t)n * dim * sizeof(float));
    ASSERT_EQ(kb->ops->rope(kb, y, pos, n, nh, hd, rot, &(krope_freqs){inv, nt, zero, 1.0f}), 0);
    ASSERT_EQ(kb->ops->rope(kb, z, pos, n, nh, hd, rot, &(krope_freqs){inv, 1, NULL, 1.0f}), 0);
    ASSERT(memcmp(y, z, (size_t)n * dim * sizeof(float)) == 0);
    free(z);
    test_guarded_check_free(y, (int64_t)n * dim);
    free(x);
    kbackend_destroy(kb);
}

/* ---- elementwise, get_rows, kv_store ---- */

TEST(swiglu_and_add) {
    for (size_t ti = 0; ti < 3; ti++) {
        kbackend *kb = kbackend_cpu_create(THREADS[ti]);
        static const int ns[] = {1, 7, 133};
        static const int dims[] = {1, 17, 768};
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                for (int alias = 0; alias < 2; alias++) {
                    int n = ns[a], dim = dims[b];
                    int64_t m = (int64_t)n * dim;
                    float *g = malloc(m * sizeof(float)), *u = malloc(m * sizeof(float));
                    test_fill(g, m);
                    test_fill(u, m);
                    for (int64_t i = 0; i < m; i++) g[i] *= 12; /* cover exp's range around 0 */
                    float *out = test_guarded_alloc(m);
                    if (alias) memcpy(out, g, m * sizeof(float));
                    ASSERT_EQ(kb->ops->swiglu(kb, alias ? out : g, u, n, dim, out), 0);
                    for (int64_t i = 0; i < m; i++) {
                        double ref = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
                        /* expf ≤ 1 ulp, then add, divide, multiply in f32: ≤ ~5u
                         * relative (1 + e^-g never cancels); 8u leaves a margin. */
                        ASSERT_NEAR(out[i], ref, 8 * U_F32 * fabs(ref) + 1e-30);
                    }
                    /* add: one f32 addition per element, exact vs the f32 reference */
                    float *y = test_guarded_alloc(m);
                    memcpy(y, u, m * sizeof(float));
                    ASSERT_EQ(kb->ops->add(kb, y, g, m), 0);
                    for (int64_t i = 0; i < m; i++) ASSERT(y[i] == u[i] + g[i]);
                    test_guarded_check_free(y, m);
                    test_guarded_check_free(out, m);
                    free(g);
                    free(u);
                }
        /* a large add exercises the chunked parallel path */
        int64_t m = 1000003;
        float *y = test_guarded_alloc(m), *x = malloc(m * sizeof(float));
        for (int64_t i = 0; i < m; i++) { y[i] = (float)i; x[i] = 1.0f; }
        ASSERT_EQ(kb->ops->add(kb, y, x, m), 0);
        for (int64_t i = 0; i < m; i++) ASSERT(y[i] == (float)i + 1.0f);
        test_guarded_check_free(y, m);
        free(x);
        kbackend_destroy(kb);
    }
}

TEST(vector_exp) {
    /* kv_exp (simd.h) over the whole finite f32 range of e^x, plus saturation
     * and NaN. Tolerance 4u relative: Taylor truncation ≤ u/8, the 7 Horner
     * FMAs ≤ ~2u, the Cody-Waite reduction with FMA ≤ u/4 for |n| ≤ 127;
     * scaling by 2^n is exact for normal results (subnormal results are
     * checked absolutely at the subnormal spacing). */
    float xs[KV_W], ys[KV_W];
    double worst = 0;
    for (double x0 = -103.0; x0 < 88.7; x0 += 0.00137 * KV_W) {
        for (int i = 0; i < KV_W; i++) xs[i] = (float)(x0 + 0.00137 * i);
        kv_store(ys, kv_exp(kv_load(xs)));
        for (int i = 0; i < KV_W; i++) {
            double ref = exp((double)xs[i]), err = fabs(ys[i] - ref);
            if (ref >= 1.1754943508222875e-38) {
                ASSERT_NEAR(ys[i], ref, 4 * U_F32 * ref);
                if (err / ref > worst) worst = err / ref;
            } else {
                ASSERT_NEAR(ys[i], ref, 1.4e-45 * 2); /* 2 subnormal spacings */
            }
        }
    }
    printf("    kv_exp: max relative error %.3g u\n", worst / U_F32);
    /* saturation far outside the range, infinities, NaN, 0 */
    static const float special[8] = {100.0f, -200.0f, NAN, 0.0f, 1e30f, -1e30f, INFINITY, -INFINITY};
    static const float expect[8] = {INFINITY, 0.0f, NAN, 1.0f, INFINITY, 0.0f, INFINITY, 0.0f};
    for (int i = 0; i < KV_W; i++) xs[i] = special[i % 8];
    kv_store(ys, kv_exp(kv_load(xs)));
    for (int i = 0; i < KV_W; i++) {
        if (isnan(expect[i % 8])) ASSERT(isnan(ys[i]));
        else if (ys[i] != expect[i % 8]) FAIL("exp(%g) = %g, want %g", xs[i], ys[i], expect[i % 8]);
    }
}

TEST(get_rows) {
    for (size_t ti = 0; ti < 3; ti++) {
        kbackend *kb = kbackend_cpu_create(THREADS[ti]);
        static const int colss[] = {1, 17, 768};
        for (int d = 0; d < 3; d++)
            for (int ci = 0; ci < 3; ci++) {
                int rows = 1000, cols = colss[ci], n = 133;
                float *tv = malloc((size_t)rows * cols * sizeof(float));
                test_fill(tv, (int64_t)rows * cols);
                void *ts = test_to_dtype(DTYPES[d], tv, (int64_t)rows * cols);
                kmat t = {.data = ts, .dtype = DTYPES[d], .rows = rows, .cols = cols};
                int32_t ids[133];
                for (int i = 0; i < n; i++) ids[i] = i == 0 ? 0 : i == 1 ? rows - 1 : (int32_t)(test_rng_u32() % rows);
                float *out = test_guarded_alloc((int64_t)n * cols);
                ASSERT_EQ(kb->ops->get_rows(kb, &t, ids, n, out), 0);
                /* widening f16/bf16 to f32 is exact */
                for (int i = 0; i < n; i++)
                    ASSERT(memcmp(out + (int64_t)i * cols, tv + (int64_t)ids[i] * cols, cols * sizeof(float)) == 0);
                ids[5] = rows;
                ASSERT_EQ(kb->ops->get_rows(kb, &t, ids, n, out), PEFTD_ERANGE);
                ids[5] = -1;
                ASSERT_EQ(kb->ops->get_rows(kb, &t, ids, n, out), PEFTD_ERANGE);
                test_guarded_check_free(out, (int64_t)n * cols);
                free(ts);
                free(tv);
            }
        kbackend_destroy(kb);
    }
}

TEST(kv_store_slots) {
    kbackend *kb = kbackend_cpu_create(2);
    int kv_dim = 24, n_slots = 40, n = 7;
    float *kc = test_guarded_alloc((int64_t)n_slots * kv_dim), *vc = test_guarded_alloc((int64_t)n_slots * kv_dim);
    for (int i = 0; i < n_slots * kv_dim; i++) kc[i] = vc[i] = -1.0f;
    float k[7 * 24], v[7 * 24];
    test_fill(k, n * kv_dim);
    test_fill(v, n * kv_dim);
    int32_t slots[7] = {39, 0, 17, 5, 16, 31, 1};
    ASSERT_EQ(kb->ops->kv_store(kb, k, v, slots, n, kv_dim, KDT_F32, kc, vc), 0);
    for (int s = 0; s < n_slots; s++) {
        int src = -1;
        for (int i = 0; i < n; i++)
            if (slots[i] == s) src = i;
        for (int d = 0; d < kv_dim; d++) {
            ASSERT(kc[s * kv_dim + d] == (src < 0 ? -1.0f : k[src * kv_dim + d]));
            ASSERT(vc[s * kv_dim + d] == (src < 0 ? -1.0f : v[src * kv_dim + d]));
        }
    }
    slots[3] = -2;
    ASSERT_EQ(kb->ops->kv_store(kb, k, v, slots, n, kv_dim, KDT_F32, kc, vc), PEFTD_ERANGE);
    test_guarded_check_free(kc, (int64_t)n_slots * kv_dim);
    test_guarded_check_free(vc, (int64_t)n_slots * kv_dim);
    kbackend_destroy(kb);
}

TEST(kv_store_f16_rounds_to_nearest_even) {
    /* Every element, in the vector body and the row's tail (kv_dim 24 = 16 + 8 on AVX-512,
     * 3 x 8 on AVX2; 37 leaves a 5-element tail), is stored as f32_to_f16 gives it: ties to
     * even, the largest finite, overflow to inf, subnormals, signed zero. */
    static const float edge[] = {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 65504.0f, 65519.99f, 65520.0f, -1e6f,
                                 0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-14f, 0x1.ffcp-15f, -0.0f, 3.14159265f,
                                 -2.5e-6f, 1e-9f, 0.33333334f};
    enum { NE = sizeof edge / sizeof *edge };
    static const int dims[] = {24, 37, 64, 5};
    for (size_t ti = 0; ti < 3; ti++) {
        kbackend *kb = kbackend_cpu_create(THREADS[ti]);
        for (int di = 0; di < 4; di++) {
            int kv_dim = dims[di], n = 6, n_slots = 9;
            float *k = malloc((size_t)n * kv_dim * sizeof(float)), *v = malloc((size_t)n * kv_dim * sizeof(float));
            test_fill(k, (int64_t)n * kv_dim);
            test_fill(v, (int64_t)n * kv_dim);
            for (int i = 0; i < n * kv_dim; i++)
                if (i % 3 == 0) k[i] = edge[(i / 3) % NE] * (i % 2 ? -1.0f : 1.0f), v[i] = edge[(i / 3 + 5) % NE];
            uint16_t *kc = malloc((size_t)n_slots * kv_dim * 2), *vc = malloc((size_t)n_slots * kv_dim * 2);
            for (int i = 0; i < n_slots * kv_dim; i++) kc[i] = vc[i] = 0xABCD;
            int32_t slots[6] = {8, 0, 3, 5, 1, 7};
            ASSERT_EQ(kb->ops->kv_store(kb, k, v, slots, n, kv_dim, KDT_F16, kc, vc), 0);
            for (int s = 0; s < n_slots; s++) {
                int src = -1;
                for (int i = 0; i < n; i++)
                    if (slots[i] == s) src = i;
                for (int d = 0; d < kv_dim; d++) {
                    uint16_t wk = src < 0 ? 0xABCD : f32_to_f16(k[src * kv_dim + d]);
                    uint16_t wv = src < 0 ? 0xABCD : f32_to_f16(v[src * kv_dim + d]);
                    if (kc[s * kv_dim + d] != wk || vc[s * kv_dim + d] != wv)
                        FAIL("kv_dim %d slot %d elem %d: k %04x (want %04x), v %04x (want %04x)", kv_dim, s, d,
                             kc[s * kv_dim + d], wk, vc[s * kv_dim + d], wv);
                }
            }
            ASSERT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3c00); /* the reference itself: a tie goes to even */
            ASSERT_EQ(f32_to_f16(65520.0f), 0x7c00);
            ASSERT_EQ(kb->ops->kv_store(kb, k, v, slots, n, kv_dim, KDT_BF16, kc, vc), PEFTD_EUNSUPPORTED);
            free(k);
            free(v);
            free(kc);
            free(vc);
        }
        kbackend_destroy(kb);
    }
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb->ops->supports_op(kb, KOP_KV_STORE, KDT_F16) && kb->ops->supports_op(kb, KOP_ATTENTION, KDT_F16));
    ASSERT(!kb->ops->supports_op(kb, KOP_KV_STORE, KDT_BF16) && !kb->ops->supports_op(kb, KOP_ATTENTION, KDT_Q8_0));
    kbackend_destroy(kb);
}

/* ---- attention ---- */

typedef struct {
    int n_q, kv_len;
    int kv_start; /* first slot attended (kattn_args.kv_start); 0 = all */
} seq_shape;

/* f32 -> f16 -> f32: what an f16 cache holds of x. */
static float f16_round(float x) { return f16_to_f32(f32_to_f16(x)); }

/* use_start: pass kattn_args.kv_start (else NULL, and seqs' kv_start must be 0). kvt: the cache's
 * dtype (KDT_F16: the reference attends over the f16-rounded K/V, so the same bound holds). */
static void check_attention_kv(kbackend *kb, const seq_shape *seqs, int n_seqs, int n_kv_heads, int group, int hd,
                               int bs, int use_start, kdtype kvt) {
    int n_heads = n_kv_heads * group, kv_dim = n_kv_heads * hd, qdim = n_heads * hd;
    int32_t q_start[16], kv_len[16], kv_start[16];
    int max_blocks = 0, total_blocks = 0;
    q_start[0] = 0;
    for (int s = 0; s < n_seqs; s++) {
        q_start[s + 1] = q_start[s] + seqs[s].n_q;
        kv_len[s] = seqs[s].kv_len;
        kv_start[s] = seqs[s].kv_start;
        int nb = (seqs[s].kv_len + bs - 1) / bs;
        total_blocks += nb;
        if (nb > max_blocks) max_blocks = nb;
    }
    max_blocks += 1; /* a row stride wider than needed; the extra entry is -1 */
    int n_blocks = total_blocks + 3, T = q_start[n_seqs];
    /* Physical blocks handed out in a shuffled order: tables are non-contiguous. */
    int32_t *perm = malloc(n_blocks * sizeof(int32_t));
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)(test_rng_u32() % (uint32_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int32_t *btab = malloc((size_t)n_seqs * max_blocks * sizeof(int32_t));
    for (int i = 0; i < n_seqs * max_blocks; i++) btab[i] = -1;
    int next = 0;
    /* Blocks wholly before kv_start stay unassigned (-1): they must not be read. */
    for (int s = 0; s < n_seqs; s++)
        for (int b = 0; b < (seqs[s].kv_len + bs - 1) / bs; b++)
            btab[s * max_blocks + b] = b < seqs[s].kv_start / bs ? -1 : perm[next++];
    /* The cache starts as NaN: reading any slot that is not a valid slot of the
     * sequence poisons the output. Valid slots are written with kv_store. */
    int64_t cache_n = (int64_t)n_blocks * bs * kv_dim;
    void *kc = malloc(cache_n * kdtype_size(kvt)), *vc = malloc(cache_n * kdtype_size(kvt));
    for (int64_t i = 0; i < cache_n; i++)
        if (kvt == KDT_F16) ((uint16_t *)kc)[i] = ((uint16_t *)vc)[i] = 0x7e00; /* f16 NaN */
        else ((float *)kc)[i] = ((float *)vc)[i] = NAN;
    float **K = malloc(n_seqs * sizeof(float *)), **V = malloc(n_seqs * sizeof(float *));
    for (int s = 0; s < n_seqs; s++) {
        int L = seqs[s].kv_len;
        K[s] = malloc(((size_t)L * kv_dim + 1) * sizeof(float));
        V[s] = malloc(((size_t)L * kv_dim + 1) * sizeof(float));
        test_fill(K[s], (int64_t)L * kv_dim);
        test_fill(V[s], (int64_t)L * kv_dim);
        /* Slots before kv_start are never written: they stay NaN. */
        int k0 = seqs[s].kv_start;
        int32_t *slots = malloc(((size_t)L + 1) * sizeof(int32_t));
        for (int p = k0; p < L; p++) slots[p - k0] = btab[s * max_blocks + p / bs] * bs + p % bs;
        ASSERT_EQ(kb->ops->kv_store(kb, K[s] + (int64_t)k0 * kv_dim, V[s] + (int64_t)k0 * kv_dim, slots, L - k0,
                                    kv_dim, kvt, kc, vc),
                  0);
        if (kvt == KDT_F16) /* the reference sees what the cache holds */
            for (int64_t i = 0; i < (int64_t)L * kv_dim; i++) K[s][i] = f16_round(K[s][i]), V[s][i] = f16_round(V[s][i]);
        free(slots);
    }
    float *q = malloc(((size_t)T * qdim + 1) * sizeof(float));
    test_fill(q, (int64_t)T * qdim);
    float *out = test_guarded_alloc((int64_t)T * qdim);
    float scale = 1.0f / sqrtf((float)hd);
    kattn_args a = {.n_seqs = n_seqs, .q_start = q_start, .kv_len = kv_len, .block_table = btab,
                    .max_blocks = max_blocks, .block_size = bs, .n_heads = n_heads, .n_kv_heads = n_kv_heads,
                    .head_dim = hd, .scale = scale, .q = q, .k_cache = kc, .v_cache = vc, .out = out,
                    .kv_start = use_start ? kv_start : NULL, .kv_dtype = kvt};
    ASSERT_EQ(kb->ops->attention(kb, &a), 0);
    double *sc = malloc(((size_t)max_blocks * bs + 1) * sizeof(double));
    for (int s = 0; s < n_seqs; s++)
        for (int j = 0; j < seqs[s].n_q; j++) {
            int t = q_start[s] + j, p = seqs[s].kv_len - seqs[s].n_q + j;
            for (int h = 0; h < n_heads; h++) {
                int kvh = h / group;
                const float *qh = q + (int64_t)t * qdim + h * hd;
                double mx = -INFINITY, sabs = 0, sum = 0;
                int k0 = seqs[s].kv_start;
                for (int i = k0; i <= p; i++) {
                    double d = 0, da = 0;
                    for (int c = 0; c < hd; c++) {
                        double prod = (double)qh[c] * K[s][(int64_t)i * kv_dim + kvh * hd + c];
                        d += prod;
                        da += fabs(prod);
                    }
                    sc[i] = d * scale;
                    if (da * scale > sabs) sabs = da * scale;
                    if (sc[i] > mx) mx = sc[i];
                }
                for (int i = k0; i <= p; i++) sum += (sc[i] = exp(sc[i] - mx));
                for (int c = 0; c < hd; c++) {
                    double o = 0;
                    for (int i = k0; i <= p; i++) o += sc[i] * V[s][(int64_t)i * kv_dim + kvh * hd + c];
                    o /= sum;
                    /* Scores: hd-term f32 dots, error ≤ hd·u·max Σ|q·k|·scale (absolute),
                     * which becomes a relative error of the softmax weights (exp, and
                     * the max cancel in the ratio); expf and the weight sum add ≤ (p+2)u
                     * relative; the output is a convex combination of |v| ≤ 1 values
                     * with p+1 f32 accumulations. Twice the sum as a margin. */
                    double tol = 2 * U_F32 * (hd * sabs + 2.0 * (p + 2) + 4);
                    double got = out[(int64_t)t * qdim + h * hd + c];
                    if (!(fabs(got - o) <= tol))
                        FAIL("%s hd=%d bs=%d group=%d seq %d q %d head %d c %d: %.9g vs %.9g (tol %.3g)",
                             kdtype_name(kvt), hd, bs, group, s, j, h, c, got, o, tol);
                }
            }
        }
    test_guarded_check_free(out, (int64_t)T * qdim);
    for (int s = 0; s < n_seqs; s++) {
        free(K[s]);
        free(V[s]);
    }
    free(K);
    free(V);
    free(sc);
    free(q);
    free(kc);
    free(vc);
    free(btab);
    free(perm);
}

static void check_attention(kbackend *kb, const seq_shape *seqs, int n_seqs, int n_kv_heads, int group, int hd,
                            int bs, int use_start) {
    check_attention_kv(kb, seqs, n_seqs, n_kv_heads, group, hd, bs, use_start, KDT_F32);
}

TEST(attention_ragged_paged) {
    /* decode (n_q 1), full prefill (n_q = kv_len), chunked prefill (n_q < kv_len),
     * an idle sequence (n_q 0) and a one-slot sequence, in one batch. */
    static const seq_shape seqs[] = {{1, 1, 0},  {1, 37, 0}, {20, 20, 0}, {5, 40, 0},
                                     {0, 10, 0}, {3, 3, 0},  {1, 70, 0}};
    /* kv_start: block-aligned (32 with block 16), unaligned, the whole prefix
     * before a chunk (kv_len - n_q), and 0. */
    static const seq_shape starts[] = {{1, 37, 32}, {4, 50, 7}, {6, 30, 24}, {2, 9, 0}, {1, 1, 0}};
    static const int hds[] = {8, 16, 64};
    static const int groups[] = {1, 2, 4};
    static const int bss[] = {16, 1};
    for (size_t ti = 0; ti < 3; ti++) {
        kbackend *kb = kbackend_cpu_create(THREADS[ti]);
        test_rng_seed(100 + ti);
        for (int hi = 0; hi < 3; hi++)
            for (int gi = 0; gi < 3; gi++)
                for (int bi = 0; bi < 2; bi++) {
                    check_attention(kb, seqs, (int)(sizeof seqs / sizeof *seqs), 2, groups[gi], hds[hi], bss[bi], 0);
                    check_attention(kb, starts, (int)(sizeof starts / sizeof *starts), 2, groups[gi], hds[hi],
                                    bss[bi], 1);
                }
        /* a long single decode and prefill, one KV head (MQA-like ratio 4) */
        static const seq_shape longs[] = {{1, 300, 0}, {133, 133, 0}};
        check_attention(kb, longs, 2, 1, 4, 64, 16, 0);
        /* head_dim 128 (two register chunks of the P·V pass), 24 (a partial
         * vector), an odd GQA group (3 = a pair of heads + a single head) */
        check_attention(kb, seqs, (int)(sizeof seqs / sizeof *seqs), 2, 3, 128, 16, 0);
        check_attention(kb, starts, (int)(sizeof starts / sizeof *starts), 3, 3, 24, 1, 1);
        /* Few query rows (fewer tasks than threads × 4) over 3 KV heads. */
        static const seq_shape few[] = {{1, 37, 0}, {3, 10, 0}}, one[] = {{1, 70, 5}};
        check_attention(kb, few, 2, 3, 2, 16, 16, 0);
        check_attention(kb, one, 1, 3, 2, 64, 16, 1);
        kbackend_destroy(kb);
    }
}

TEST(attention_f16_cache) {
    /* The same shapes with the cache in f16: decode, prefill, chunks, kv_start, GQA groups,
     * partial vectors (head_dim 24), two register chunks (128), block 1 and 16; both task
     * layouts (row tasks for many short rows, (row, KV head) tasks for few or long ones). */
    static const seq_shape seqs[] = {{1, 1, 0},  {1, 37, 0}, {20, 20, 0}, {5, 40, 0},
                                     {0, 10, 0}, {3, 3, 0},  {1, 70, 0}};
    static const seq_shape starts[] = {{1, 37, 32}, {4, 50, 7}, {6, 30, 24}, {2, 9, 0}, {1, 1, 0}};
    static const seq_shape longs[] = {{1, 600, 0}, {133, 133, 0}}, few[] = {{1, 37, 0}, {3, 10, 0}};
    static const seq_shape decode[] = {{1, 9, 0}, {1, 40, 0}, {1, 3, 0}, {1, 17, 0}, {1, 64, 0}, {1, 2, 0}};
    for (size_t ti = 0; ti < 3; ti++) {
        kbackend *kb = kbackend_cpu_create(THREADS[ti]);
        test_rng_seed(300 + ti);
        for (int g = 1; g <= 4; g *= 2) {
            check_attention_kv(kb, seqs, 7, 2, g, 64, 16, 0, KDT_F16);
            check_attention_kv(kb, starts, 5, 2, g, 16, 1, 1, KDT_F16);
            check_attention_kv(kb, decode, 6, 2, g, 64, 16, 0, KDT_F16);
        }
        check_attention_kv(kb, longs, 2, 1, 4, 64, 16, 0, KDT_F16);
        check_attention_kv(kb, seqs, 7, 2, 3, 128, 16, 0, KDT_F16);
        check_attention_kv(kb, starts, 5, 3, 3, 24, 1, 1, KDT_F16);
        check_attention_kv(kb, decode, 6, 3, 3, 24, 16, 0, KDT_F16);
        check_attention_kv(kb, few, 2, 3, 2, 8, 16, 0, KDT_F16);
        kbackend_destroy(kb);
    }
}

TEST(attention_batch_invariant_row_and_head_paths) {
    /* A decode batch runs one task per query row (all KV heads), a lone row one task per
     * (row, KV head): both must give bit-identical outputs, so a row's result never
     * depends on the batch it is in. 8 sequences, GQA group 2, block 16 and 3. */
    enum { S = 8, KVH = 3, G = 2, HD = 64, H = KVH * G, KVD = KVH * HD, QD = H * HD, MAXB = 40 };
    static const int lens[S] = {1, 17, 40, 16, 33, 5, 64, 100};
    static const int bss[] = {16, 3};
    for (size_t ti = 0; ti < 3; ti++) {
        kbackend *kb = kbackend_cpu_create(THREADS[ti]);
        test_rng_seed(7 + ti);
        for (int bi = 0; bi < 4; bi++) { /* block 16, 3; f32 then f16 caches */
            int bs = bss[bi % 2], nb = S * MAXB;
            kdtype kvt = bi < 2 ? KDT_F32 : KDT_F16;
            size_t cn = (size_t)nb * bs * KVD;
            float *kf = malloc(cn * sizeof(float)), *vf = malloc(cn * sizeof(float));
            test_fill(kf, (int64_t)cn);
            test_fill(vf, (int64_t)cn);
            void *kc = kf, *vc = vf;
            if (kvt == KDT_F16) {
                uint16_t *kh = malloc(cn * 2), *vh = malloc(cn * 2);
                for (size_t i = 0; i < cn; i++) kh[i] = f32_to_f16(kf[i]), vh[i] = f32_to_f16(vf[i]);
                free(kf);
                free(vf);
                kc = kh, vc = vh;
            }
            int32_t btab[S * MAXB], q_start[S + 1], kv_len[S];
            for (int i = 0; i < S * MAXB; i++) btab[i] = (i * 37) % nb; /* scattered blocks */
            for (int s = 0; s <= S; s++) q_start[s] = s;
            for (int s = 0; s < S; s++) kv_len[s] = lens[s];
            float q[S * QD], out_b[S * QD], out_1[QD];
            test_fill(q, S * QD);
            kattn_args a = {.n_seqs = S, .q_start = q_start, .kv_len = kv_len, .block_table = btab,
                            .max_blocks = MAXB, .block_size = bs, .n_heads = H, .n_kv_heads = KVH,
                            .head_dim = HD, .scale = 0.125f, .q = q, .k_cache = kc, .v_cache = vc, .out = out_b,
                            .kv_dtype = kvt};
            ASSERT_EQ(kb->ops->attention(kb, &a), 0);
            for (int s = 0; s < S; s++) {
                int32_t qs1[2] = {0, 1};
                kattn_args b = a;
                b.n_seqs = 1;
                b.q_start = qs1;
                b.kv_len = kv_len + s;
                b.block_table = btab + s * MAXB;
                b.q = q + s * QD;
                b.out = out_1;
                ASSERT_EQ(kb->ops->attention(kb, &b), 0);
                ASSERT(memcmp(out_1, out_b + s * QD, sizeof out_1) == 0);
            }
            free(kc);
            free(vc);
        }
        kbackend_destroy(kb);
    }
}

TEST(attention_bad_args) {
    kbackend *kb = kbackend_cpu_create(2);
    float q[64] = {0}, out[64], kc[256] = {0}, vc[256] = {0};
    int32_t q_start[2] = {0, 2}, kv_len[1] = {1}, btab[2] = {0, 1};
    kattn_args a = {.n_seqs = 1, .q_start = q_start, .kv_len = kv_len, .block_table = btab, .max_blocks = 2,
                    .block_size = 4, .n_heads = 2, .n_kv_heads = 1, .head_dim = 8, .scale = 0.35f,
                    .q = q, .k_cache = kc, .v_cache = vc, .out = out};
    ASSERT_EQ(kb->ops->attention(kb, &a), PEFTD_ERANGE); /* n_q 2 > kv_len 1 */
    kv_len[0] = 9;
    ASSERT_EQ(kb->ops->attention(kb, &a), PEFTD_ERANGE); /* kv_len > max_blocks*block_size */
    kv_len[0] = 5;
    btab[1] = -1;
    ASSERT_EQ(kb->ops->attention(kb, &a), PEFTD_ERANGE); /* slot 4 in an unassigned block */
    btab[1] = 1;
    ASSERT_EQ(kb->ops->attention(kb, &a), 0);
    a.kv_dtype = KDT_BF16; /* a cache dtype the backend does not keep */
    ASSERT_EQ(kb->ops->attention(kb, &a), PEFTD_EUNSUPPORTED);
    a.kv_dtype = KDT_F32;
    int32_t kv_start[1] = {4}; /* kv_len 5, n_q 2: the first query (slot 3) would see nothing */
    a.kv_start = kv_start;
    ASSERT_EQ(kb->ops->attention(kb, &a), PEFTD_ERANGE);
    kv_start[0] = -1;
    ASSERT_EQ(kb->ops->attention(kb, &a), PEFTD_ERANGE);
    kv_start[0] = 3;
    ASSERT_EQ(kb->ops->attention(kb, &a), 0);
    a.kv_start = NULL;
    a.n_kv_heads = 3;
    ASSERT_EQ(kb->ops->attention(kb, &a), PEFTD_EINVAL); /* n_heads % n_kv_heads */
    a.n_kv_heads = 1;
    a.block_size = 0;
    ASSERT_EQ(kb->ops->attention(kb, &a), PEFTD_EINVAL);
    kbackend_destroy(kb);
}

TEST_MAIN(pool_runs_each_task_once, attention_batch_invariant_row_and_head_paths, backend_basics, matmul_odd_shapes, matmul_bad_args, rmsnorm, rope, rope_partial, rope_row_tables_and_scale,
          swiglu_and_add, vector_exp, get_rows, kv_store_slots, kv_store_f16_rounds_to_nearest_even, attention_ragged_paged,
          attention_f16_cache, attention_bad_args)
