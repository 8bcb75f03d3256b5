/* bench/bench_prof.h — bench_adapters' op wrappers: every op of a backend's function table
 * is wrapped, on every backend, and
 *   - counts SGMV shrink calls (the proof that adapters are applied: bench_adapters checks
 *     it for cpu and cuda alike, through this one code path);
 *   - when timing is on, adds the op's wall time to one category per op (matmul_group, the
 *     fused q/k/v and gate/up, counts as matmul). Timing needs
 *     synchronous ops (the CPU backend: two clock_gettime per op, ~500 ops per decode step:
 *     < 0.1% of a step); an asynchronous backend (CUDA) only enqueues, so prof_install is
 *     told not to time there and the categories stay 0 — unless it is told to synchronize
 *     after every op (PROF_SYNC, bench_adapters --sync-ops: a profiling run, its throughput
 *     is not the backend's): each op's time is then its launch + execution + one wait, less
 *     the cost of an empty wait measured at install (g_sync_s), so the split says where a
 *     step's device time goes while its tok/s do not count.
 * Header-only with file-scope state: include it from one .c file (bench_adapters.c).
 * Threads: the ops run on the engine thread; see g_prof for who reads what when.
 */
#ifndef PEFTD_BENCH_PROF_H
#define PEFTD_BENCH_PROF_H

#include <stdint.h>
#include <stdlib.h>

#include "bench/bench_time.h"
#include "kernels/kernels.h"

enum { P_MATMUL, P_LMHEAD, P_SHRINK, P_EXPAND, P_ATTN, P_SAMPLE, P_OTHER, P_COUNT };
static const char *const prof_name[P_COUNT] = {"matmul", "lm_head", "sgmv_shrink", "sgmv_expand", "attention",
                                               "sample", "other_ops"};

/* Written by the engine thread only (ops and notify callbacks both run there); read by
 * the main thread after a request's finish, which the request's mutex orders. */
static double g_prof[P_COUNT];
static uint64_t g_shrink_calls; /* proves the adapters are applied at all */
static const kbackend_ops *g_inner;
static int64_t g_vocab;
enum { PROF_OFF = 0, PROF_TIMED = 1, PROF_SYNC = 2 };
static int g_timed;     /* PROF_TIMED: ops are synchronous, time them; PROF_SYNC: wait after each */
static double g_sync_s; /* PROF_SYNC: the median empty synchronize, subtracted from each op */
static kbackend_ops g_prof_ops;

#define TIMED(cat, call)                                                 \
    do {                                                                 \
        if (!g_timed) return (call);                                     \
        double t0_ = bench_now_s();                                      \
        int st_ = (call);                                                \
        if (g_timed == PROF_SYNC && st_ == 0) st_ = g_inner->synchronize(kb); \
        double dt_ = bench_now_s() - t0_ - g_sync_s;                     \
        g_prof[(cat)] += dt_ > 0 ? dt_ : 0;                              \
        return st_;                                                      \
    } while (0)

static int w_get_rows(kbackend *kb, const kmat *t, const int32_t *ids, int n, float *out) {
    TIMED(P_OTHER, g_inner->get_rows(kb, t, ids, n, out));
}
static int w_matmul(kbackend *kb, const float *x, int n, const kmat *w, float *y, float beta) {
    /* the only weight with vocab rows is the LM head (tied or not) */
    TIMED(w->rows == g_vocab ? P_LMHEAD : P_MATMUL, g_inner->matmul(kb, x, n, w, y, beta));
}
static int w_rmsnorm(kbackend *kb, const float *x, const kmat *w, int n, int dim, float eps, float *y) {
    TIMED(P_OTHER, g_inner->rmsnorm(kb, x, w, n, dim, eps, y));
}
static int w_rope(kbackend *kb, float *x, const int32_t *pos, int n, int nh, int hd, int rd,
                  const krope_freqs *f) {
    TIMED(P_OTHER, g_inner->rope(kb, x, pos, n, nh, hd, rd, f));
}
static int w_kv_store(kbackend *kb, const float *k, const float *v, const int32_t *slots, int n, int kv_dim,
                      kdtype kt, void *kc, void *vc) {
    TIMED(P_OTHER, g_inner->kv_store(kb, k, v, slots, n, kv_dim, kt, kc, vc));
}
static int w_attention(kbackend *kb, const kattn_args *a) { TIMED(P_ATTN, g_inner->attention(kb, a)); }
static int w_swiglu(kbackend *kb, const float *g, const float *u, int n, int dim, float *out) {
    TIMED(P_OTHER, g_inner->swiglu(kb, g, u, n, dim, out));
}
static int w_add(kbackend *kb, float *y, const float *x, int64_t n) { TIMED(P_OTHER, g_inner->add(kb, y, x, n)); }
static int w_shrink(kbackend *kb, const float *x, int in_dim, const ksgmv *s, float *t, int ld_t) {
    g_shrink_calls++;
    TIMED(P_SHRINK, g_inner->sgmv_shrink(kb, x, in_dim, s, t, ld_t));
}
static int w_expand(kbackend *kb, const float *t, int ld_t, const ksgmv *s, int out_dim, float *y) {
    TIMED(P_EXPAND, g_inner->sgmv_expand(kb, t, ld_t, s, out_dim, y));
}
static int w_matmul_group(kbackend *kb, const float *x, int n, int count, const kmat *const *w, float *const *y,
                          float beta) {
    TIMED(P_MATMUL, g_inner->matmul_group(kb, x, n, count, w, y, beta));
}
static int w_add_bias(kbackend *kb, float *y, int n, const kmat *b) { TIMED(P_OTHER, g_inner->add_bias(kb, y, n, b)); }
static int w_geglu(kbackend *kb, const float *g, const float *u, int n, int dim, float *out) {
    TIMED(P_OTHER, g_inner->geglu(kb, g, u, n, dim, out));
}
static int w_softcap(kbackend *kb, float *y, int64_t n, float cap) { TIMED(P_OTHER, g_inner->softcap(kb, y, n, cap)); }
static int w_sample(kbackend *kb, const ksample_args *a) { TIMED(P_SAMPLE, g_inner->sample(kb, a)); }
static int w_matmul_glu(kbackend *kb, const float *x, int n, const kmat *wg, const kmat *wu, kact act, float *up,
                        float *out) {
    TIMED(P_MATMUL, g_inner->matmul_glu(kb, x, n, wg, wu, act, up, out));
}
static int w_rope_kv_store(kbackend *kb, float *q, float *k, const float *v, const int32_t *pos, int n, int nh, int nkv,
                           int hd, int rd, const krope_freqs *f, const int32_t *slots, kdtype kt, void *kc,
                           void *vc) {
    TIMED(P_OTHER, g_inner->rope_kv_store(kb, q, k, v, pos, n, nh, nkv, hd, rd, f, slots, kt, kc, vc));
}
static int w_seg_rotate(kbackend *kb, const float *x, int dim, const ksegrot *s, float *y) {
    TIMED(P_OTHER, g_inner->seg_rotate(kb, x, dim, s, y));
}
static int w_seg_scale(kbackend *kb, float *y, int dim, int n, const int32_t *ss, const float *const *v) {
    TIMED(P_OTHER, g_inner->seg_scale(kb, y, dim, n, ss, v));
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Swaps kb's table for the wrapping one (no backend's ops call through kb->ops). Every
 * backend gets it (the SGMV count); timed: PROF_TIMED (synchronous backends) or PROF_SYNC
 * (wait after every op; the empty wait's median cost is measured here and subtracted). */
static void prof_install(kbackend *kb, int64_t vocab, int timed) {
    g_inner = kb->ops;
    g_vocab = vocab;
    g_timed = timed;
    g_sync_s = 0;
    if (timed == PROF_SYNC) {
        double t[101];
        for (int i = 0; i < 101; i++) {
            double t0 = bench_now_s();
            (void)kb->ops->synchronize(kb);
            t[i] = bench_now_s() - t0;
        }
        qsort(t, 101, sizeof t[0], cmp_double);
        g_sync_s = t[50];
    }
    g_prof_ops = *kb->ops;
    g_prof_ops.get_rows = w_get_rows;
    g_prof_ops.matmul = w_matmul;
    g_prof_ops.rmsnorm = w_rmsnorm;
    g_prof_ops.rope = w_rope;
    g_prof_ops.kv_store = w_kv_store;
    g_prof_ops.attention = w_attention;
    g_prof_ops.swiglu = w_swiglu;
    g_prof_ops.add = w_add;
    g_prof_ops.sgmv_shrink = w_shrink;
    g_prof_ops.sgmv_expand = w_expand;
    g_prof_ops.seg_scale = w_seg_scale;
    /* optional ops: wrapped only where the backend has them (NULL keeps its fallback) */
    if (kb->ops->matmul_group) g_prof_ops.matmul_group = w_matmul_group;
    if (kb->ops->add_bias) g_prof_ops.add_bias = w_add_bias;
    if (kb->ops->geglu) g_prof_ops.geglu = w_geglu;
    if (kb->ops->softcap) g_prof_ops.softcap = w_softcap;
    if (kb->ops->sample) g_prof_ops.sample = w_sample;
    if (kb->ops->seg_rotate) g_prof_ops.seg_rotate = w_seg_rotate;
    if (kb->ops->rope_kv_store) g_prof_ops.rope_kv_store = w_rope_kv_store;
    if (kb->ops->matmul_glu) g_prof_ops.matmul_glu = w_matmul_glu;
    kb->ops = &g_prof_ops;
}

static void prof_uninstall(kbackend *kb) {
    if (g_inner) kb->ops = g_inner;
}

#endif
