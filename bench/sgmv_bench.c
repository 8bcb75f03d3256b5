/* bench/sgmv_bench.c — CPU SGMV (LoRA shrink + expand) on decode shapes against the
 * memory roofline.
 *
 * Build (after `make` has built build/libpeftd.a):
 *   cc -std=c11 -D_GNU_SOURCE -O2 -march=native -I. $(pkg-config --cflags openblas) \
 *      bench/sgmv_bench.c build/libpeftd.a $(pkg-config --libs openblas) -lm -lpthread -o build/sgmv_bench
 * Usage: build/sgmv_bench [n_threads] [seconds per config] [rows]
 *
 * For 32 batch rows (or `rows`: 256 is a prefill of 32 prompts of 8 tokens, 8 rows per adapter)
 * spread over {1 adapter, 32 distinct adapters}, rank {8, 16},
 * in→out {768→768, 768→2048} and weights {bf16, f32}, it times shrink, expand and the
 * pair, and reports the adapter weight traffic (bytes of every distinct A_i and B_i the
 * call reads, divided by its time) against the measured read bandwidth of this machine
 * (a parallel streaming sum over a buffer beyond the L3, with L2 software prefetch).
 * Adapter copies are cycled so each call reads its weights from DRAM, as in a decode
 * step where every layer's adapters pass through the caches once. Times are medians.
 * Output: one JSON object on stdout; a table on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_roofline.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/simd.h"
#include "kernels/kernels.h"
#include "lib/half.h"

/* Adapter bytes cycled through per timed loop so weights are not served from the
 * L3: 128 MiB or 2× the L3 (bench_roofline.h). */
#define BENCH_WSET_BYTES bench_beyond_l3(128u << 20, 2)
/* Read-bandwidth buffer: 256 MiB or 2× the L3. */
#define BENCH_BW_BYTES bench_beyond_l3(256u << 20, 2)
/* Batch rows by default (a decode step), and at most. */
#define BENCH_ROWS 32
#define BENCH_MAX_ROWS 4096
/* Distinct adapters at most (segments). */
#define BENCH_MAX_ADAPTERS 32
/* Timed repetitions kept at most per config (median taken). */
#define BENCH_MAX_REPS 4096

/* One set of n_adapters adapters: the segment table and the weights. */
typedef struct {
    const void *a[BENCH_MAX_ADAPTERS], *b[BENCH_MAX_ADAPTERS];
} adapter_set;

typedef struct {
    int n_adapters, rank, in, out;
    kdtype dt;
    double bytes;            /* distinct A + B bytes read per shrink + expand */
    double t_sh, t_ex, t_pair; /* median seconds */
} bench_result;

static void *random_weights(kbackend *kb, kdtype dt, int64_t n) {
    void *p = kb->ops->alloc(kb, (size_t)n * kdtype_size(dt));
    if (!p) return NULL;
    for (int64_t i = 0; i < n; i++) {
        float v = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        if (dt == KDT_F32) ((float *)p)[i] = v * 0.05f;
        else ((uint16_t *)p)[i] = f32_to_bf16(v * 0.05f);
    }
    return p;
}

/* Median seconds of `which` (0 shrink, 1 expand, 2 both) over the cycled sets. */
static double time_op(kbackend *kb, int which, const adapter_set *sets, int n_sets, ksgmv *s, const float *x, int in,
                      float *t, int ld_t, float *y, int out, double budget) {
    static double ts[BENCH_MAX_REPS];
    int reps = 0;
    double t_end = bench_now_s() + budget;
    while ((bench_now_s() < t_end || reps < 5) && reps < BENCH_MAX_REPS) {
        const adapter_set *w = &sets[reps % n_sets];
        s->a = w->a;
        s->b = w->b;
        double t0 = bench_now_s();
        if (which != 1 && kb->ops->sgmv_shrink(kb, x, in, s, t, ld_t) != 0) return -1;
        if (which != 0 && kb->ops->sgmv_expand(kb, t, ld_t, s, out, y) != 0) return -1;
        ts[reps++] = bench_now_s() - t0;
    }
    qsort(ts, (size_t)reps, sizeof(double), bench_cmp_double);
    return ts[reps / 2];
}

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 0;
    double budget = argc > 2 ? atof(argv[2]) : 0.3;
    const int rows = argc > 3 ? atoi(argv[3]) : BENCH_ROWS;
    if (rows < BENCH_MAX_ADAPTERS || rows > BENCH_MAX_ROWS) {
        fprintf(stderr, "sgmv_bench: rows must be in [%d, %d]\n", BENCH_MAX_ADAPTERS, BENCH_MAX_ROWS);
        return 2;
    }
    kbackend *kb = kbackend_cpu_create(n_threads);
    if (!kb) return 1;
    kcpu_backend *cb = kcpu__impl(kb);
    n_threads = cb->n_threads;

    static const int n_adapters_list[] = {1, 32};
    static const int ranks[] = {8, 16};
    static const int shapes[][2] = {{768, 768}, {768, 2048}};
    static const kdtype dts[] = {KDT_BF16, KDT_F32};
    enum { N_RES = 2 * 2 * 2 * 2 };
    static bench_result res[N_RES];
    int n_res = 0;
    double rbw = 0;
    for (int si = 0; si < 2; si++)
        for (int di = 0; di < 2; di++) {
            /* The roofline is the best read bandwidth seen, measured again per shape:
             * one measurement on a loaded machine can be low. */
            double bw = bench_read_bandwidth(cb->pool, BENCH_BW_BYTES);
            if (bw > rbw) rbw = bw;
            for (int ri = 0; ri < 2; ri++)
                for (int ai = 0; ai < 2; ai++) {
                    int in = shapes[si][0], out = shapes[si][1], rank = ranks[ri], na = n_adapters_list[ai];
                    kdtype dt = dts[di];
                    size_t esz = kdtype_size(dt);
                    double set_bytes = (double)na * rank * (in + out) * esz;
                    int n_sets = (int)(BENCH_WSET_BYTES / set_bytes) + 1;
                    adapter_set *sets = calloc((size_t)n_sets, sizeof *sets);
                    if (!sets) return 1;
                    for (int c = 0; c < n_sets; c++)
                        for (int i = 0; i < na; i++) {
                            sets[c].a[i] = random_weights(kb, dt, (int64_t)rank * in);
                            sets[c].b[i] = random_weights(kb, dt, (int64_t)out * rank);
                            if (!sets[c].a[i] || !sets[c].b[i]) return 1;
                        }
                    int32_t seg[BENCH_MAX_ADAPTERS + 1], rk[BENCH_MAX_ADAPTERS];
                    float scale[BENCH_MAX_ADAPTERS];
                    for (int i = 0; i <= na; i++) seg[i] = i * rows / na;
                    for (int i = 0; i < na; i++) {
                        rk[i] = rank;
                        scale[i] = 2.0f;
                    }
                    ksgmv s = {.n_segs = na, .seg_start = seg, .rank = rk, .scale = scale, .dtype = dt};
                    float *x = kb->ops->alloc(kb, (size_t)rows * in * sizeof(float));
                    float *t = kb->ops->alloc(kb, (size_t)rows * rank * sizeof(float));
                    float *y = kb->ops->alloc(kb, (size_t)rows * out * sizeof(float));
                    if (!x || !t || !y) return 1;
                    for (int i = 0; i < rows * in; i++) x[i] = (float)(i % 13) * 0.1f;
                    memset(y, 0, (size_t)rows * out * sizeof(float));
                    bench_result *r = &res[n_res++];
                    *r = (bench_result){.n_adapters = na, .rank = rank, .in = in, .out = out, .dt = dt};
                    r->bytes = set_bytes;
                    r->t_sh = time_op(kb, 0, sets, n_sets, &s, x, in, t, rank, y, out, budget);
                    r->t_ex = time_op(kb, 1, sets, n_sets, &s, x, in, t, rank, y, out, budget);
                    r->t_pair = time_op(kb, 2, sets, n_sets, &s, x, in, t, rank, y, out, budget);
                    if (r->t_sh < 0 || r->t_ex < 0 || r->t_pair < 0) return 1;
                    for (int c = 0; c < n_sets; c++)
                        for (int i = 0; i < na; i++) {
                            kb->ops->free(kb, (void *)sets[c].a[i]);
                            kb->ops->free(kb, (void *)sets[c].b[i]);
                        }
                    free(sets);
                    kb->ops->free(kb, x);
                    kb->ops->free(kb, t);
                    kb->ops->free(kb, y);
                }
        }
    fprintf(stderr, "threads %d  read bandwidth (roofline) %.1f GB/s  rows %d\n", n_threads, rbw, rows);
    fprintf(stderr, "%-5s %-9s %4s %8s | %9s %9s %9s | %8s %5s\n", "dtype", "in->out", "rank", "adapters", "shrink us",
            "expand us", "pair us", "GB/s", "roof");
    printf("{\"bench\":\"sgmv\",\"threads\":%d,\"rows\":%d,\"read_bw_gbs\":%.2f,\"results\":[", n_threads, rows,
           rbw);
    for (int i = 0; i < n_res; i++) {
        const bench_result *r = &res[i];
        double gbs = r->bytes / r->t_pair / 1e9;
        fprintf(stderr, "%-5s %4d->%-4d %4d %8d | %9.2f %9.2f %9.2f | %8.1f %5.2f\n", kdtype_name(r->dt), r->in, r->out,
                r->rank, r->n_adapters, r->t_sh * 1e6, r->t_ex * 1e6, r->t_pair * 1e6, gbs, gbs / rbw);
        printf("%s{\"dtype\":\"%s\",\"in\":%d,\"out\":%d,\"rank\":%d,\"adapters\":%d,\"weight_bytes\":%.0f,"
               "\"shrink_us\":%.3f,\"expand_us\":%.3f,\"pair_us\":%.3f,\"pair_gbs\":%.2f,\"roofline_ratio\":%.3f}",
               i ? "," : "", kdtype_name(r->dt), r->in, r->out, r->rank, r->n_adapters, r->bytes, r->t_sh * 1e6,
               r->t_ex * 1e6, r->t_pair * 1e6, gbs, gbs / rbw);
    }
    printf("]}\n");
    kbackend_destroy(kb);
    return 0;
}
