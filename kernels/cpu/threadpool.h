/* kernels/cpu/threadpool.h — persistent worker pool for the CPU backend (kpool_*).
 *
 * kpool_parallel_for(pool, n_tasks, fn, ctx) runs fn(ctx, task, thread) for every
 * task in [0, n_tasks) across the pool's threads and returns when all have run.
 * The calling thread participates as thread 0; workers are threads 1..n-1. Tasks
 * are handed out dynamically (an atomic counter), so uneven tasks and a machine
 * shared with other processes still balance. Idle workers spin briefly, then
 * sleep on a condition variable.
 *
 * @note One caller at a time: a pool is not re-entrant (fn must not call
 *       kpool_parallel_for on the same pool) and is not shared between threads
 *       that dispatch concurrently. The engine thread owns its backend's pool.
 */
#ifndef PEFTD_KPOOL_H
#define PEFTD_KPOOL_H

typedef struct kpool kpool;
typedef struct kpool_share kpool_share;

/* fn(ctx, task, thread): thread in [0, kpool_n_threads(pool)), usable to index
 * per-thread scratch. */
typedef void (*kpool_fn)(void *ctx, int task, int thread);

/* n_threads <= 0: one per usable CPU (cpu_usable_count(): affinity mask capped by the
 * cgroup CPU quota). Returns 0 and *out, or a negative status.
 * @note caller owns *out: kpool_free(). */
int kpool_create(int n_threads, kpool **out);

/* Joins the workers. kpool_free(NULL) is a no-op. */
void kpool_free(kpool *pool);

int kpool_n_threads(const kpool *pool);

/* Runs all tasks; returns when every task has finished (memory effects of the
 * tasks are visible to the caller on return). n_tasks <= 0 is a no-op. */
void kpool_parallel_for(kpool *pool, int n_tasks, kpool_fn fn, void *ctx);

/* As kpool_parallel_for, for tasks that stream adjacent memory (task i+1's bytes follow task
 * i's): the tasks are cut into one contiguous share per thread; thread t runs share t's tasks
 * in increasing order, so its reads continue one stream (prefetched ahead across task ends),
 * and a thread out of work takes the last tasks of the share with the most left. The plain
 * dispatch hands tasks out round-robin, so every task end starts a new stream and the
 * prefetch past it fetches bytes another thread reads. Fewer tasks than threads, or more
 * than 65535, run as kpool_parallel_for. Same threading rules. */
void kpool_parallel_shares(kpool *pool, int n_tasks, kpool_fn fn, void *ctx);

#endif
