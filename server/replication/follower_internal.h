/* server/replication/follower_internal.h — what follower.c (the thread, its HTTP client
 * and status) and follower_apply.c (applying a page of changes, the full resync) share.
 */
#ifndef PEFTD_FOLLOWER_INTERNAL_H
#define PEFTD_FOLLOWER_INTERNAL_H

#include <cJSON.h>
#include <pthread.h>
#include <stdatomic.h>

#include "server/replication/follower.h"

/* A response body. */
typedef struct {
    char *p;
    size_t len, cap;
} fol_buf;

struct follower {
    char primary[512];
    char auth[640];          /* "Authorization: Bearer ..." or "" */
    int poll_ms;
    astore *store;
    adapter_service *svc;
    struct tenants *ts;
    void *curl;              /* CURL *, used by the thread only */
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t mu;      /* guards st, caught_up_at and the stop wait */
    pthread_cond_t cv;
    follower_status st;
    double caught_up_at;     /* monotonic seconds when last caught up */
};

/* GET primary + path into *b (reset first); *status: the HTTP status. 0, or a negative
 * status when no answer came (err says why). */
int fol_get(follower *f, const char *path, fol_buf *b, long *status, char *err, size_t errlen);
void fol_buf_free(fol_buf *b);
/* Records a failure for the status ("" clears). */
void fol_set_error(follower *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Applies the "changes" array of one feed page in order; returns how many were handled
 * (applied or already applied), or a negative status after recording why it stopped
 * (the rest is retried from the stored position). */
int fol_apply_page(follower *f, const cJSON *changes);
/* The full resync from GET /v1/replication/snapshot: 0, or a negative status. */
int fol_resync(follower *f);

#endif
