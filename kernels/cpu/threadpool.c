/* kernels/cpu/threadpool.c — the persistent worker pool (see threadpool.h).
 *
 * Dispatch protocol: the caller publishes (fn, ctx, n_tasks), resets the task
 * counter and the count of workers still busy, then bumps `gen` (release) under
 * the mutex and broadcasts. A worker that sees a new `gen` (acquire) claims tasks
 * with fetch_add until they run out, then decrements `busy`; the last one signals
 * `done` under the mutex. The caller claims tasks too, then waits for busy == 0
 * (spin first, then the condvar). Checking and signalling under the same mutex
 * means no wake-up is lost.
 */
#include "kernels/cpu/threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "kernels/util/status.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KPOOL_RELAX() _mm_pause()
#else
#define KPOOL_RELAX() ((void)0)
#endif

/* How long an idle worker (and a waiting caller) polls before sleeping. The
 * engine issues ~10 ops per layer back to back, so the next dispatch usually
 * arrives within microseconds: a futex sleep + wake costs ~5-20 us per op,
 * while 4096 pause iterations are ~20-50 us on Zen 4 (pause ≈ a few ns to
 * tens of cycles) — long enough to bridge consecutive ops, short enough not to
 * burn a core of a machine shared with HTTP threads when the engine idles. */
#define KPOOL_SPIN_ITERS 4096

struct kpool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    atomic_uint_fast64_t gen; /* bumped once per dispatch */
    atomic_int next;          /* next unclaimed task */
    atomic_int busy;          /* workers that have not finished the current dispatch */
    int n_tasks;
    kpool_fn fn;
    void *ctx;
    int stop; /* under mu */
};

typedef struct {
    kpool *pool;
    int id;
} kpool_worker_arg;

static void kpool_drain(kpool *p, int thread) {
    int n = p->n_tasks;
    for (;;) {
        int t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= n) break;
        p->fn(p->ctx, t, thread);
    }
}

static void *kpool_worker(void *argp) {
    kpool_worker_arg *arg = argp;
    kpool *p = arg->pool;
    int id = arg->id;
    free(arg);
    /* gen starts at 0 before any worker exists: starting from 0 (not from a fresh
     * load) means a dispatch issued before this thread first runs is not missed. */
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = seen;
        for (int i = 0; i < KPOOL_SPIN_ITERS; i++) {
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
            if (g != seen) break;
            KPOOL_RELAX();
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen && !p->stop)
                pthread_cond_wait(&p->wake, &p->mu);
            int stop = p->stop;
            pthread_mutex_unlock(&p->mu);
            if (stop) return NULL;
        }
        seen = g;
        kpool_drain(p, id);
        if (atomic_fetch_sub_explicit(&p->busy, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

int kpool_create(int n_threads, kpool **out) {
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    kpool *p = calloc(1, sizeof *p);
    if (!p) return PEFTD_ENOMEM;
    p->n_threads = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->next, 0);
    atomic_init(&p->busy, 0);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) goto fail;
    for (int i = 1; i < n_threads; i++) {
        kpool_worker_arg *arg = malloc(sizeof *arg);
        if (!arg) goto fail;
        arg->pool = p;
        arg->id = i;
        if (pthread_create(&p->threads[i], NULL, kpool_worker, arg) != 0) {
            free(arg);
            goto fail;
        }
        p->n_threads = i + 1;
    }
    *out = p;
    return 0;
fail:
    kpool_free(p);
    return PEFTD_ENOMEM;
}

void kpool_free(kpool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}

int kpool_n_threads(const kpool *p) { return p->n_threads; }

void kpool_parallel_for(kpool *p, int n_tasks, kpool_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->busy, p->n_threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    kpool_drain(p, 0);

    for (int i = 0; i < KPOOL_SPIN_ITERS; i++) {
        if (atomic_load_explicit(&p->busy, memory_order_acquire) == 0) return;
        KPOOL_RELAX();
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->busy, memory_order_acquire) != 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
