/* server/http/http_pool.c — a small pool of dedicated threads with a bounded FIFO queue,
 * for the work an HTTP request needs that is too slow for a libmicrohttpd thread: the
 * import of a finished adapter upload (parse, validate, convert, serialise, LMDB put —
 * seconds on a large adapter). A libmicrohttpd thread serves every connection it holds,
 * so /health and completions sharing it would wait behind such work; the handler
 * suspends its connection instead and the job resumes it (api_adapters_upload.c).
 *
 * Dedicated threads, not libuv's threadpool: the engine's cache tiers load adapters on
 * libuv's pool, and a burst of imports there would starve them.
 *
 * Test hook: with delay_ms > 0 (PEFTD_DEBUG_IMPORT_DELAY_MS, read once by
 * http_server_start) every job waits that long before it runs, so that tests can hold an
 * import in flight deterministically. The wait ends early at http_pool_stop: the job then
 * runs as abandoned.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "lib/log.h"
#include "lib/status.h"
#include "server/http/http_request.h"

typedef struct pool_job {
    void (*run)(void *arg, bool abandoned);
    void *arg;
    struct pool_job *next;
} pool_job;

struct http_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* a job was queued, or stopping */
    pool_job *head, *tail;
    int queued, queue_max;
    int running;            /* jobs taken by a worker and not finished */
    bool stopping;
    unsigned delay_ms;
    int n_threads;
    pthread_t *threads;
};

/* Under p->mu: waits out the test delay; false when the pool stops meanwhile. */
static bool pool_delay_locked(http_pool *p) {
    if (!p->delay_ms) return !p->stopping;
    LOGI("http: pool: a job starts: waiting %u ms first (PEFTD_DEBUG_IMPORT_DELAY_MS)", p->delay_ms);
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += p->delay_ms / 1000;
    until.tv_nsec += (long)(p->delay_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (!p->stopping)
        if (pthread_cond_timedwait(&p->cv, &p->mu, &until) == ETIMEDOUT) break;
    return !p->stopping;
}

static void *pool_main(void *arg) {
    http_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->stopping) pthread_cond_wait(&p->cv, &p->mu);
        pool_job *j = p->head;
        if (!j) break; /* stopping with an empty queue */
        p->head = j->next;
        if (!p->head) p->tail = NULL;
        p->queued--;
        p->running++;
        bool live = pool_delay_locked(p);
        pthread_mutex_unlock(&p->mu);
        j->run(j->arg, !live);
        free(j);
        pthread_mutex_lock(&p->mu);
        p->running--;
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int http_pool_create(int threads, int queue_max, unsigned delay_ms, http_pool **out) {
    *out = NULL;
    if (threads < 1 || queue_max < 1) return PEFTD_EINVAL;
    http_pool *p = calloc(1, sizeof *p);
    if (!p) return PEFTD_ENOMEM;
    p->threads = calloc((size_t)threads, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return PEFTD_ENOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the delay's deadline ignores clock steps */
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    p->queue_max = queue_max;
    p->delay_ms = delay_ms;
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&p->threads[i], NULL, pool_main, p) != 0) {
            http_pool_free(p);
            return PEFTD_ENOMEM;
        }
        p->n_threads++;
    }
    *out = p;
    return 0;
}

int http_pool_submit(http_pool *p, void (*run)(void *arg, bool abandoned), void *arg) {
    pool_job *j = malloc(sizeof *j);
    if (!j) return PEFTD_ENOMEM;
    j->run = run;
    j->arg = arg;
    j->next = NULL;
    int rc = 0;
    pthread_mutex_lock(&p->mu);
    if (p->stopping) rc = PEFTD_ECANCELED;
    else if (p->queued >= p->queue_max) rc = PEFTD_EBUSY;
    else {
        if (p->tail) p->tail->next = j;
        else p->head = j;
        p->tail = j;
        p->queued++;
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    if (rc) free(j);
    return rc;
}

void http_pool_stop(http_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    p->n_threads = 0;
    /* A queue left with no worker (none could be started): abandon what is in it. */
    for (pool_job *j = p->head, *next; j; j = next) {
        next = j->next;
        j->run(j->arg, true);
        free(j);
    }
    p->head = p->tail = NULL;
    p->queued = 0;
}

void http_pool_free(http_pool *p) {
    if (!p) return;
    http_pool_stop(p);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}
