/* kernels/cpu/cpu_runtime.c — what every CPU op file shares: per-thread scratch buffers and
 * the "is this op worth a dispatch" helper over the backend's worker pool. A leaf: it calls
 * nothing of the op files or of backend_cpu.c (which owns the pool and the buffers' life). */
#include <stdint.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_internal.h"
#include "lib/status.h"

/* Below this many element-ops an op runs on the caller alone: one dispatch
 * (wake + join of the workers) costs ~2-10 us, the time of ~2^15 FMAs on one
 * core at ~4-16 GFMA/s. */
#define KCPU_PARALLEL_MIN_WORK 32768.0

int kcpu__scratch_reserve(kcpu_backend *cb, size_t n) {
    if (n <= cb->scratch_cap) return 0;
    /* Grow geometrically so a slowly growing context does not realloc each step. */
    size_t cap = cb->scratch_cap * 2 > n ? cb->scratch_cap * 2 : n;
    if (cap > SIZE_MAX / sizeof(float)) return PEFTD_ENOMEM;
    for (int i = 0; i < cb->n_threads; i++) {
        void *p = NULL;
        if (posix_memalign(&p, KCPU_ALIGN, cap * sizeof(float)) != 0) {
            /* Buffers already grown stay valid; cap records the smallest size. */
            return PEFTD_ENOMEM;
        }
        free(cb->scratch[i]);
        cb->scratch[i] = p;
    }
    cb->scratch_cap = cap;
    return 0;
}

/* kcpu__parallel and kcpu__parallel_shares: inline on the caller when the work is too small
 * to pay for a dispatch, else `dispatch` on the pool. */
static void kcpu_run(kcpu_backend *cb, int n_tasks, double work, kpool_fn fn, void *ctx,
                     void (*dispatch)(kpool *, int, kpool_fn, void *)) {
    if (work < KCPU_PARALLEL_MIN_WORK || cb->n_threads == 1) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    dispatch(cb->pool, n_tasks, fn, ctx);
}

void kcpu__parallel(kcpu_backend *cb, int n_tasks, double work, kpool_fn fn, void *ctx) {
    kcpu_run(cb, n_tasks, work, fn, ctx, kpool_parallel_for);
}

void kcpu__parallel_shares(kcpu_backend *cb, int n_tasks, double work, kpool_fn fn, void *ctx) {
    kcpu_run(cb, n_tasks, work, fn, ctx, kpool_parallel_shares);
}
