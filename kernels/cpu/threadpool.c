/* kernels/cpu/threadpool.c — the persistent worker pool (see threadpool.h).
 *
 * Dispatch protocol. `claim` packs (generation << 32 | next task index). The
 * caller first closes the previous generation (claim = 0: generation 0 is never
 * claimable), then writes fn/ctx/n_tasks (release), zeroes `done`, stores
 * claim = (g << 32 | 0) and bumps `gen` to g (release, under the mutex) and
 * broadcasts. Anyone (caller included) claims task i by CAS claim from (g, i) to
 * (g, i + 1) while i < n_tasks; only after a successful claim does it read
 * fn/ctx, which are stable until every task of generation g has finished. Each
 * finished task increments `done`; the caller returns when done == n_tasks
 * (spinning first, then on the `all_done` condvar, signalled under the mutex by
 * the last task).
 *
 * Why the close comes first: a worker still draining generation g-1 holds
 * c = (g-1, n_old) and then reads n_tasks. Were the new, larger n_tasks published
 * while claim still read (g-1, n_old), its CAS would succeed and it would run
 * index n_old of the old generation with the new job's fn — outside any dispatch,
 * possibly twice, and `done` would overshoot so the caller waits forever (issue 9,
 * defect 3). With the close first, a worker that reads the new n_tasks (acquire,
 * paired with its release store) also sees claim changed, so its CAS fails.
 *
 * The caller never waits for a worker that has not woken up yet: on a machine
 * shared with other processes (or the HTTP threads) a descheduled worker
 * simply claims nothing, and the caller runs the tasks itself. A late worker
 * sees a newer generation in `claim` and its CAS fails, so it can never run a
 * task of the wrong dispatch.
 */
#include "kernels/cpu/threadpool.h"
#include "kernels/cpu/cpu_quota.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "lib/status.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KPOOL_RELAX() _mm_pause()
#else
#define KPOOL_RELAX() ((void)0)
#endif

/* A test build widens the windows between a worker's load of `claim` and of
 * `n_tasks`, and between the dispatcher's publication of `n_tasks` and of `claim`
 * (tests/unit/test_threadpool.c includes this file with a yield in both), so that
 * a protocol race shows up in thousands of dispatches, not millions. */
#ifndef KPOOL_TEST_RACE_WINDOW
#define KPOOL_TEST_RACE_WINDOW() ((void)0)
#endif

/* How long an idle worker (and a waiting caller) polls before sleeping. The
 * engine issues ~10 ops per layer back to back, so the next dispatch usually
 * arrives within microseconds: a futex sleep + wake costs ~5-20 us per op,
 * while 4096 pause iterations are ~20-100 us on Zen 4 (pause ≈ tens of cycles)
 * — long enough to bridge consecutive ops, short enough not to burn a core of
 * a machine shared with HTTP threads when the engine idles. */
#define KPOOL_SPIN_ITERS 4096

struct kpool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, all_done;
    atomic_uint_fast32_t gen;   /* generation of the latest dispatch (0: none yet) */
    atomic_uint_fast64_t claim; /* gen << 32 | next unclaimed task */
    atomic_int n_tasks;         /* of the latest dispatch */
    atomic_int done;            /* finished tasks of the latest dispatch */
    kpool_fn fn;                /* of the latest dispatch; read only after a claim */
    void *ctx;
    int stop; /* under mu */
    kpool_share *shares; /* [n_threads]: kpool_parallel_shares' words */
};

typedef struct {
    kpool *pool;
    int id;
} kpool_worker_arg;

/* A share word, alone on its cache line (the owner's claims never contend with the
 * other threads' lines). */
struct kpool_share {
    _Alignas(64) atomic_uint_fast64_t w; /* gen << 32 | front << 16 | back */
};

/* The most tasks a shares dispatch takes (16-bit front/back); more go to the plain one. */
#define KPOOL_SHARES_MAX_TASKS 0xFFFF

/* Claims and runs tasks of generation g until none is left. */
static void kpool_drain(kpool *p, uint32_t g, int thread) {
    uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(c >> 32) != g) return;
        KPOOL_TEST_RACE_WINDOW();
        int n = atomic_load_explicit(&p->n_tasks, memory_order_acquire);
        uint32_t i = (uint32_t)c;
        if (i >= (uint32_t)n) return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue; /* c reloaded */
        /* Task i of generation g is ours: the dispatch cannot end before it
         * does, so fn/ctx/n are generation g's. */
        p->fn(p->ctx, (int)i, thread);
        if (atomic_fetch_add_explicit(&p->done, 1, memory_order_acq_rel) + 1 == n) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->all_done);
            pthread_mutex_unlock(&p->mu);
            return;
        }
        c = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
}

/* Adds the `ran` tasks this thread finished to `done`; the add that completes the dispatch
 * wakes a caller sleeping on all_done. */
static void kpool_done_add(kpool *p, int ran) {
    int n = atomic_load_explicit(&p->n_tasks, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&p->done, ran, memory_order_acq_rel) + ran == n) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_signal(&p->all_done);
        pthread_mutex_unlock(&p->mu);
    }
}

/* Runs this thread's share of generation g front to back, then takes tasks from the back
 * of the share with the most left until none is left anywhere. */
static void kpool_drain_shares(kpool *p, uint32_t g, int thread) {
    int ran = 0;
    atomic_uint_fast64_t *own = &p->shares[thread].w;
    uint64_t c = atomic_load_explicit(own, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(c >> 32) != g) return; /* another dispatch: nothing of g is ours to run */
        KPOOL_TEST_RACE_WINDOW();
        uint32_t f = (uint32_t)(c >> 16) & 0xFFFF, b = (uint32_t)c & 0xFFFF;
        if (f >= b) break;
        if (!atomic_compare_exchange_weak_explicit(own, &c, c + (1u << 16), memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        p->fn(p->ctx, (int)f, thread);
        ran++;
        c = atomic_load_explicit(own, memory_order_acquire);
    }
    for (;;) {
        int from = -1;
        uint32_t most = 0;
        uint64_t seen = 0;
        for (int s = 0; s < p->n_threads; s++) {
            uint64_t w = atomic_load_explicit(&p->shares[s].w, memory_order_acquire);
            uint32_t f = (uint32_t)(w >> 16) & 0xFFFF, b = (uint32_t)w & 0xFFFF;
            if ((uint32_t)(w >> 32) == g && b > f && b - f > most) from = s, most = b - f, seen = w;
        }
        if (from < 0) break;
        KPOOL_TEST_RACE_WINDOW();
        if (!atomic_compare_exchange_strong_explicit(&p->shares[from].w, &seen, seen - 1, memory_order_acq_rel,
                                                     memory_order_acquire))
            continue;
        p->fn(p->ctx, (int)((uint32_t)seen & 0xFFFF) - 1, thread);
        ran++;
    }
    if (ran) kpool_done_add(p, ran);
}

static void *kpool_worker(void *argp) {
    kpool_worker_arg *arg = argp;
    kpool *p = arg->pool;
    int id = arg->id;
    free(arg);
    uint32_t seen = 0; /* generation 0 is "no dispatch yet" */
    for (;;) {
        uint32_t g = seen;
        for (int i = 0; i < KPOOL_SPIN_ITERS && g == seen; i++) {
            KPOOL_RELAX();
            g = (uint32_t)atomic_load_explicit(&p->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while ((g = (uint32_t)atomic_load_explicit(&p->gen, memory_order_acquire)) == seen && !p->stop)
                pthread_cond_wait(&p->wake, &p->mu);
            int stop = p->stop;
            pthread_mutex_unlock(&p->mu);
            if (stop) return NULL;
        }
        seen = g;
        kpool_drain(p, g, id); /* returns at once unless g is a plain dispatch */
        kpool_drain_shares(p, g, id); /* likewise unless g is a shares dispatch */
    }
}

int kpool_create(int n_threads, kpool **out) {
    *out = NULL;
    if (n_threads <= 0) n_threads = cpu_usable_count();
    kpool *p = calloc(1, sizeof *p);
    if (!p) return PEFTD_ENOMEM;
    p->n_threads = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->all_done, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->claim, 0);
    atomic_init(&p->n_tasks, 0);
    atomic_init(&p->done, 0);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    p->shares = aligned_alloc(_Alignof(kpool_share), (size_t)n_threads * sizeof *p->shares);
    if (!p->threads || !p->shares) goto fail;
    for (int i = 0; i < n_threads; i++) atomic_init(&p->shares[i].w, 0);
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
    pthread_cond_destroy(&p->all_done);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p->shares);
    free(p);
}

int kpool_n_threads(const kpool *p) { return p->n_threads; }

/* Publishes the next generation's job and returns its number: closes `claim`, writes
 * fn/ctx/n_tasks, opens the generation's claims (plain: `claim`; shares: the share words),
 * then bumps gen and wakes the workers. */
static uint32_t kpool_publish(kpool *p, int n_tasks, kpool_fn fn, void *ctx, bool shares) {
    /* Generation 0 means "none": skip it when the 32-bit counter wraps. */
    uint32_t g = (uint32_t)atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
    if (g == 0) g = 1;
    /* close generation g-1 before anything of g is visible (see the header) */
    atomic_store_explicit(&p->claim, 0, memory_order_relaxed);
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->n_tasks, n_tasks, memory_order_release);
    KPOOL_TEST_RACE_WINDOW();
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    if (shares) {
        int nt = p->n_threads;
        for (int t = 0; t < nt; t++) {
            uint64_t f = (uint64_t)n_tasks * (uint64_t)t / (uint64_t)nt;
            uint64_t b = (uint64_t)n_tasks * (uint64_t)(t + 1) / (uint64_t)nt;
            atomic_store_explicit(&p->shares[t].w, (uint64_t)g << 32 | f << 16 | b, memory_order_release);
        }
    } else {
        atomic_store_explicit(&p->claim, (uint64_t)g << 32, memory_order_release);
    }
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->gen, g, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    return g;
}

/* Returns when all n_tasks of the dispatch have finished: spins, then sleeps on all_done. */
static void kpool_wait(kpool *p, int n_tasks) {
    for (int i = 0; i < KPOOL_SPIN_ITERS; i++) {
        if (atomic_load_explicit(&p->done, memory_order_acquire) == n_tasks) return;
        KPOOL_RELAX();
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->done, memory_order_acquire) != n_tasks) pthread_cond_wait(&p->all_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void kpool_parallel_for(kpool *p, int n_tasks, kpool_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    kpool_drain(p, kpool_publish(p, n_tasks, fn, ctx, false), 0);
    kpool_wait(p, n_tasks);
}

void kpool_parallel_shares(kpool *p, int n_tasks, kpool_fn fn, void *ctx) {
    if (n_tasks > KPOOL_SHARES_MAX_TASKS || n_tasks < p->n_threads) {
        kpool_parallel_for(p, n_tasks, fn, ctx);
        return;
    }
    if (p->n_threads == 1) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    kpool_drain_shares(p, kpool_publish(p, n_tasks, fn, ctx, true), 0);
    kpool_wait(p, n_tasks);
}
