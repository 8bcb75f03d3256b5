/* tests/unit/test_kernels_gemma.c — the CPU backend's Gemma ops against double-precision
 * references (the style of test_kernels_cpu.c): geglu (gelu_tanh(gate) * up), softcap
 * (tanh(y / c) * c) and attention with kattn_args.softcap (scores capped before the softmax),
 * alone and with a sliding window, on both CPU attention paths (row tasks for short decode
 * batches, (row, KV head) tasks for prefill / long contexts), and their argument checks.
 */
#include <math.h>

#include "kernels/kernels.h"
#include "lib/status.h"
#include "tests/harness/test.h"

#define U_F32 (1.0 / 16777216.0) /* 2^-24 */

static const int THREADS[] = {1, 2, 3};

static double gelu_tanh_ref(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

TEST(geglu) {
    for (size_t ti = 0; ti < 3; ti++) {
        kbackend *kb = kbackend_cpu_create(THREADS[ti]);
        static const int ns[] = {1, 7, 133}, dims[] = {1, 17, 768};
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                for (int alias = 0; alias < 2; alias++) {
                    int n = ns[a], dim = dims[b];
                    int64_t m = (int64_t)n * dim;
                    float *g = malloc(m * sizeof(float)), *u = malloc(m * sizeof(float));
                    test_fill(g, m);
                    test_fill(u, m);
                    for (int64_t i = 0; i < m; i++) g[i] *= 8; /* the tanh's whole range */
                    float *out = test_guarded_alloc(m);
                    if (alias) memcpy(out, g, m * sizeof(float));
                    ASSERT_EQ(kb->ops->geglu(kb, alias ? out : g, u, n, dim, out), 0);
                    for (int64_t i = 0; i < m; i++) {
                        /* gelu rounded once (1/2 u relative), one f32 multiply (1/2 u); plus
                         * libm tanh's ulp scaled by x/2: 4u relative, with an absolute floor
                         * where gelu(x) ~ 0 for large negative x. */
                        double ref = gelu_tanh_ref(g[i]) * u[i];
                        ASSERT_NEAR(out[i], ref, 4 * U_F32 * (fabs(ref) + fabs(g[i] * u[i])) + 1e-30);
                    }
                    test_guarded_check_free(out, m);
                    free(g);
                    free(u);
                }
        /* the tanh form, not erf's: at x = 1 they differ by ~1.6e-4 */
        float one = 1.0f, up = 1.0f, r;
        ASSERT_EQ(kb->ops->geglu(kb, &one, &up, 1, 1, &r), 0);
        ASSERT_NEAR(r, 0.8411920071, 1e-7);
        ASSERT_EQ(kb->ops->geglu(kb, &one, &up, -1, 1, &r), PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->geglu(kb, &one, &up, 1, 0, &r), PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->geglu(kb, NULL, &up, 1, 1, &r), PEFTD_EINVAL);
        kbackend_destroy(kb);
    }
}

TEST(softcap) {
    for (size_t ti = 0; ti < 3; ti++) {
        kbackend *kb = kbackend_cpu_create(THREADS[ti]);
        static const int64_t ms[] = {1, 17, 1000003};
        static const float caps[] = {30.0f, 2.5f, 50.0f};
        for (int a = 0; a < 3; a++) {
            int64_t m = ms[a];
            float *x = malloc(m * sizeof(float)), *y = test_guarded_alloc(m);
            test_fill(x, m);
            for (int64_t i = 0; i < m; i++) x[i] *= 100; /* below, around and far above the caps */
            memcpy(y, x, m * sizeof(float));
            float cap = caps[a];
            ASSERT_EQ(kb->ops->softcap(kb, y, m, cap), 0);
            for (int64_t i = 0; i < m; i++) {
                /* divide (1/2 u, carried through tanh' <= 1), tanh rounded once, multiply */
                double ref = tanh((double)x[i] / cap) * cap;
                ASSERT_NEAR(y[i], ref, 3 * U_F32 * (fabs(ref) + fabs((double)x[i])) + 1e-30);
                ASSERT(fabs(y[i]) <= cap);
            }
            test_guarded_check_free(y, m);
            free(x);
        }
        float v = 1.0f;
        ASSERT_EQ(kb->ops->softcap(kb, &v, 1, 0.0f), PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->softcap(kb, &v, 1, -3.0f), PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->softcap(kb, &v, 1, NAN), PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->softcap(kb, &v, -1, 3.0f), PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->softcap(kb, NULL, 1, 3.0f), PEFTD_EINVAL);
        ASSERT_EQ(kb->ops->softcap(kb, &v, 0, 3.0f), 0);
        kbackend_destroy(kb);
    }
}

/* ---- attention with soft-capped scores ---- */

typedef struct {
    int n_q, kv_len;
} cseq;

/* Max |out - reference| over a batch of sequences; scores scale·q·k, capped when cap > 0, the
 * window W as kattn_args (0 = full). q is scaled by 6 so that scores reach several times the
 * cap. *uncapped: the same op with softcap 0, max |out_capped - out_uncapped|. */
static double check_capped(const cseq *seqs, int n_seqs, int W, float cap, int threads, double *uncapped) {
    const int KVH = 2, group = 2, H = KVH * group, hd = 24, kv_dim = KVH * hd, qdim = H * hd, bs = 4;
    kbackend *kb = kbackend_cpu_create(threads);
    ASSERT(kb);
    int32_t q_start[8] = {0}, kv_len[8];
    int max_blocks = 0;
    for (int s = 0; s < n_seqs; s++) {
        q_start[s + 1] = q_start[s] + seqs[s].n_q;
        kv_len[s] = seqs[s].kv_len;
        if ((seqs[s].kv_len + bs - 1) / bs > max_blocks) max_blocks = (seqs[s].kv_len + bs - 1) / bs;
    }
    int T = q_start[n_seqs], n_blocks = n_seqs * max_blocks;
    int32_t *btab = malloc(sizeof(int32_t) * (size_t)n_blocks);
    for (int i = 0; i < n_blocks; i++) btab[i] = (i * 11) % n_blocks; /* scattered */
    int64_t cache_n = (int64_t)n_blocks * bs * kv_dim;
    float *kc = malloc(sizeof(float) * cache_n), *vc = malloc(sizeof(float) * cache_n);
    test_fill(kc, cache_n);
    test_fill(vc, cache_n);
    float *q = malloc(sizeof(float) * (size_t)T * qdim), *out = malloc(sizeof(float) * (size_t)T * qdim),
          *out0 = malloc(sizeof(float) * (size_t)T * qdim);
    test_fill(q, (int64_t)T * qdim);
    for (int64_t i = 0; i < (int64_t)T * qdim; i++) q[i] *= 6;
    float scale = 1.0f / sqrtf(20.0f); /* query_pre_attn_scalar 20 */
    kattn_args a = {.n_seqs = n_seqs, .q_start = q_start, .kv_len = kv_len, .block_table = btab,
                    .max_blocks = max_blocks, .block_size = bs, .n_heads = H, .n_kv_heads = KVH, .head_dim = hd,
                    .scale = scale, .q = q, .k_cache = kc, .v_cache = vc, .out = out, .window = W, .softcap = cap};
    ASSERT_EQ(kb->ops->attention(kb, &a), 0);
    a.softcap = 0;
    a.out = out0;
    ASSERT_EQ(kb->ops->attention(kb, &a), 0);
    double md = 0, w[1024];
    *uncapped = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int j = 0; j < seqs[s].n_q; j++) {
            int t = q_start[s] + j, p = seqs[s].kv_len - seqs[s].n_q + j, j0 = W > 0 && p - W + 1 > 0 ? p - W + 1 : 0;
            for (int h = 0; h < H; h++) {
                double mx = -INFINITY, sum = 0;
                for (int i = j0; i <= p; i++) {
                    int64_t row = ((int64_t)btab[s * max_blocks + i / bs] * bs + i % bs) * kv_dim;
                    double d = 0;
                    for (int c = 0; c < hd; c++) d += (double)q[(int64_t)t * qdim + h * hd + c] * kc[row + h / group * hd + c];
                    w[i] = d * scale;
                    if (cap > 0) w[i] = tanh(w[i] / cap) * cap;
                    if (w[i] > mx) mx = w[i];
                }
                for (int i = j0; i <= p; i++) sum += (w[i] = exp(w[i] - mx));
                for (int c = 0; c < hd; c++) {
                    double o = 0;
                    for (int i = j0; i <= p; i++) {
                        int64_t row = ((int64_t)btab[s * max_blocks + i / bs] * bs + i % bs) * kv_dim;
                        o += w[i] * vc[row + h / group * hd + c];
                    }
                    int64_t at = (int64_t)t * qdim + h * hd + c;
                    double d = fabs(out[at] - o / sum), d0 = fabs(out[at] - out0[at]);
                    if (!(d <= md)) md = d;
                    if (d0 > *uncapped) *uncapped = d0;
                }
            }
        }
    free(btab);
    free(kc);
    free(vc);
    free(q);
    free(out);
    free(out0);
    kbackend_destroy(kb);
    return md;
}

/* decode rows (many sequences: row tasks), prefill from 0, a chunk after earlier slots */
static const cseq SHORT[] = {{1, 5}, {1, 30}, {1, 12}, {1, 9}, {9, 9}, {4, 12}, {1, 3}};
/* past ATTN_ROW_MAX_SLOTS: (row, KV head) tasks */
static const cseq LONG[] = {{6, 6}, {1, 700}, {5, 600}};

TEST(attention_softcap) {
    static const float caps[] = {2.0f, 5.0f, 50.0f};
    static const int ws[] = {0, 3, 8};
    double worst = 0;
    for (int ci = 0; ci < 3; ci++)
        for (int wi = 0; wi < 3; wi++)
            for (int path = 0; path < 2; path++) {
                double unc, md = path ? check_capped(LONG, 3, ws[wi], caps[ci], 3, &unc)
                                      : check_capped(SHORT, 7, ws[wi], caps[ci], 1, &unc);
                /* f32 dots of 24 terms (|q·k|·scale up to ~15), tanh rounded once, softmax over
                 * <= 700 slots: ~1e-5 */
                if (!(md <= 2e-5)) FAIL("cap %g window %d path %d: max |diff| %.3g", caps[ci], ws[wi], path, md);
                if (md > worst) worst = md;
                /* the cap matters at 2 and 5 (scores reach ~15): outputs move by far more */
                if (caps[ci] < 10 && !(unc > 1e-2)) FAIL("cap %g: capped vs uncapped only %.3g", caps[ci], unc);
            }
    printf("    attention softcap: max |diff| vs double reference %.3g\n", worst);
}

TEST(attention_softcap_bad_args) {
    kbackend *kb = kbackend_cpu_create(1);
    float q[16] = {0}, out[16], kc[64] = {0}, vc[64] = {0};
    int32_t q_start[2] = {0, 1}, kv_len[1] = {1}, btab[1] = {0};
    kattn_args a = {.n_seqs = 1, .q_start = q_start, .kv_len = kv_len, .block_table = btab, .max_blocks = 1,
                    .block_size = 4, .n_heads = 2, .n_kv_heads = 1, .head_dim = 8, .scale = 0.35f,
                    .q = q, .k_cache = kc, .v_cache = vc, .out = out, .softcap = -1.0f};
    ASSERT_EQ(kb->ops->attention(kb, &a), PEFTD_EINVAL);
    a.softcap = NAN;
    ASSERT_EQ(kb->ops->attention(kb, &a), PEFTD_EINVAL);
    a.softcap = INFINITY;
    ASSERT_EQ(kb->ops->attention(kb, &a), PEFTD_EINVAL);
    a.softcap = 50.0f;
    ASSERT_EQ(kb->ops->attention(kb, &a), 0);
    kbackend_destroy(kb);
}

TEST_MAIN(geglu, softcap, attention_softcap, attention_softcap_bad_args)
