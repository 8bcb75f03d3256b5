/* tests/unit/test_threadpool.c — the CPU worker pool's dispatch protocol under stress.
 *
 * Includes kernels/cpu/threadpool.c itself with KPOOL_TEST_RACE_WINDOW() defined as a
 * yield every few claims, which widens the window between a worker's load of `claim` and
 * of `n_tasks`: the race of issue 9 defect 3 (a late worker running a task of the old
 * generation with the new job's function, so a task ran twice, a dispatch returned with a
 * task still running, and `done` overshot so the next wait never ended) shows up here in
 * a few thousand dispatches instead of millions. Every dispatch checks, for every task
 * index, that it ran exactly once, inside its own dispatch, with its own context; spinner
 * threads keep the CPUs oversubscribed (the machine CI runs on is loaded). A hang is
 * caught by the harness's per-test timeout. `make tsan` runs this file under
 * ThreadSanitizer too. */
#include <sched.h>
#include <stdbool.h>
#include <stdatomic.h>

static atomic_uint kpool_test_yield_tick;
#define KPOOL_TEST_RACE_WINDOW()                                                    \
    do {                                                                            \
        if ((atomic_fetch_add_explicit(&kpool_test_yield_tick, 1, memory_order_relaxed) & 7) == 0) \
            sched_yield();                                                          \
    } while (0)
#include "kernels/cpu/threadpool.c"

#include <pthread.h>

#include "tests/harness/test.h"

#define MAX_TASKS 24

typedef struct {
    atomic_int active;            /* 1 while its dispatch runs */
    atomic_int runs[MAX_TASKS];   /* times each task index ran */
    atomic_int stray;             /* tasks that ran while their dispatch was not running */
    atomic_int bad_thread;        /* thread ids out of range */
    int n_threads;
} job;

static void run_task(void *ctx, int task, int thread) {
    job *j = ctx;
    if (!atomic_load(&j->active)) atomic_fetch_add(&j->stray, 1);
    if (thread < 0 || thread >= j->n_threads) atomic_fetch_add(&j->bad_thread, 1);
    if (task >= 0 && task < MAX_TASKS) atomic_fetch_add(&j->runs[task], 1);
    /* a little work of varying length, so completions interleave with claims */
    volatile unsigned x = (unsigned)task;
    for (int i = 0; i < (task & 3) * 16; i++) x = x * 1103515245u + 12345u;
}

static atomic_bool spin_stop;
static void *spinner(void *arg) {
    (void)arg;
    volatile unsigned long x = 0;
    while (!atomic_load_explicit(&spin_stop, memory_order_relaxed)) x++;
    return NULL;
}

/* n_dispatches with task counts drawn so that consecutive dispatches both grow and shrink. */
static void stress(int n_threads, int n_spinners, long n_dispatches) {
    kpool *p = NULL;
    ASSERT_EQ(kpool_create(n_threads, &p), 0);
    ASSERT_EQ(kpool_n_threads(p), n_threads);
    pthread_t sp[8];
    atomic_store(&spin_stop, false);
    for (int i = 0; i < n_spinners; i++) ASSERT_EQ(pthread_create(&sp[i], NULL, spinner, NULL), 0);
    static job jobs[2]; /* alternate contexts: a stale task lands in the other one */
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    long failures = 0;
    for (long d = 0; d < n_dispatches && !failures; d++) {
        job *j = &jobs[d & 1];
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        int n = 1 + (int)((rng >> 33) % MAX_TASKS);
        for (int t = 0; t < MAX_TASKS; t++) atomic_store(&j->runs[t], 0);
        j->n_threads = n_threads;
        atomic_store(&j->active, 1);
        kpool_parallel_for(p, n, run_task, j);
        atomic_store(&j->active, 0);
        for (int t = 0; t < MAX_TASKS; t++) {
            int want = t < n ? 1 : 0, got = atomic_load(&j->runs[t]);
            if (got != want) {
                fprintf(stderr, "dispatch %ld (%d tasks): task %d ran %d times\n", d, n, t, got);
                failures++;
            }
        }
        if (atomic_load(&jobs[0].stray) || atomic_load(&jobs[1].stray)) {
            fprintf(stderr, "dispatch %ld: a task ran outside its dispatch\n", d);
            failures++;
        }
    }
    atomic_store(&spin_stop, true);
    for (int i = 0; i < n_spinners; i++) pthread_join(sp[i], NULL);
    ASSERT_EQ(atomic_load(&jobs[0].bad_thread) + atomic_load(&jobs[1].bad_thread), 0);
    kpool_free(p);
    ASSERT_EQ(failures, 0);
}

/* Dispatch counts: enough for the widened window to hit the old race many times over (it
 * did within ~2,000 dispatches), small enough for `make test` on a loaded 2-core machine.
 * PEFTD_POOL_STRESS=N scales them up for a soak. */
static long scaled(long n) {
    const char *e = getenv("PEFTD_POOL_STRESS");
    long k = e ? atol(e) : 1;
    return n * (k > 0 ? k : 1);
}

TEST(every_task_runs_once_inside_its_dispatch) { stress(4, 1, scaled(50000)); }

TEST(more_workers_than_cores_under_contention) { stress(8, 2, scaled(5000)); }

TEST(two_threads_back_to_back) { stress(2, 0, scaled(100000)); }

TEST(single_task_and_single_thread_paths) {
    kpool *p = NULL;
    ASSERT_EQ(kpool_create(1, &p), 0);
    static job j;
    j.n_threads = 1;
    atomic_store(&j.active, 1);
    kpool_parallel_for(p, 5, run_task, &j);
    kpool_parallel_for(p, 0, run_task, &j);
    for (int t = 0; t < 5; t++) ASSERT_EQ(atomic_load(&j.runs[t]), 1);
    kpool_free(p);
    kpool_free(NULL);
}

TEST_MAIN(every_task_runs_once_inside_its_dispatch, more_workers_than_cores_under_contention,
          two_threads_back_to_back, single_task_and_single_thread_paths)
