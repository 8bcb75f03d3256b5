/* bench/bench_roofline.h — the memory roofline the CPU kernel benchmarks compare against
 * (kernels_bench.c, sgmv_bench.c): a parallel streaming sum on the backend's own pool,
 * with the same L2 software prefetch distance as the kernels (16 KiB ahead), so it reads
 * as fast as this machine lets a kernel read. Header-only (static inline), like
 * bench_time.h. Threads: the tasks run on the given pool; call from its dispatching thread.
 */
#ifndef PEFTD_BENCH_ROOFLINE_H
#define PEFTD_BENCH_ROOFLINE_H

#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "bench/bench_time.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/threadpool.h"

/* Task t of a streaming sum reads floats [t·n_per_task, (t+1)·n_per_task) of p (a multiple
 * of 4·KV_W each) and leaves its sum in sums[t] (so the reads cannot be optimised away). */
typedef struct {
    const float *p;
    int64_t n_per_task;
    double *sums;
} bench_bw_ctx;

static inline void bench_bw_task(void *vc, int task, int thread) {
    (void)thread;
    bench_bw_ctx *c = vc;
    const float *p = c->p + (int64_t)task * c->n_per_task;
    kv_f32 a0 = kv_zero(), a1 = kv_zero(), a2 = kv_zero(), a3 = kv_zero();
    for (int64_t i = 0; i < c->n_per_task; i += 4 * KV_W) {
        /* one 64-byte line per prefetch, 16 KiB ahead into L2 (as the kernels) */
        for (int l = 0; l < 4 * KV_W; l += 16) __builtin_prefetch(p + i + 4096 + l, 0, 2);
        a0 = kv_add(a0, kv_load(p + i));
        a1 = kv_add(a1, kv_load(p + i + KV_W));
        a2 = kv_add(a2, kv_load(p + i + 2 * KV_W));
        a3 = kv_add(a3, kv_load(p + i + 3 * KV_W));
    }
    c->sums[task] = kv_hsum(kv_add(kv_add(a0, a1), kv_add(a2, a3)));
}

/* At least `floor` bytes and at least `times` × this machine's L3 (sysconf; 32 MiB when it does
 * not say): the size of a buffer that must come from DRAM. The benchmarks' old fixed sizes
 * (128 / 256 MiB, 4-8× a 32 MiB L3) sit inside the 480 MiB L3 of some Xeons, where they
 * measured the cache. */
static inline size_t bench_beyond_l3(size_t floor, int times) {
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    size_t want = (size_t)(l3 > 0 ? l3 : 32l << 20) * (size_t)times;
    return want > floor ? want : floor;
}

/* Best-of-5 parallel streaming read bandwidth over a fresh buffer of `bytes` (make it
 * several times the L3), GB/s; 0 when the buffer cannot be allocated. */
static inline double bench_read_bandwidth(kpool *pool, size_t bytes) {
    size_t n = bytes / sizeof(float);
    float *buf = aligned_alloc(64, bytes);
    if (!buf) return 0;
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
    enum { TASKS = 64 };
    double sums[TASKS];
    bench_bw_ctx c = {.p = buf, .n_per_task = (int64_t)n / TASKS, .sums = sums};
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = bench_now_s();
        kpool_parallel_for(pool, TASKS, bench_bw_task, &c);
        double gbs = (double)bytes / (bench_now_s() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    free(buf);
    return best;
}

#endif
