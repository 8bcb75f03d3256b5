/* server/replication/follower.h — a follower's replication thread (`store.follow = URL`):
 * mirrors the primary's catalogue by pulling its ordered change feed
 * (GET /v1/replication/changes, adapter_store/store_changes.h), fetching each new
 * version's blob by hash (GET /v1/replication/blobs/{sha256}) and verifying its sha256
 * against the feed before anything is stored, then applying the changes in order through
 * the adapter service (the same store-then-registry path as a local upload: hot swaps
 * behave identically). The position is persisted with each applied change, so a restart
 * resumes after the last one; a follower behind the primary's retained history resyncs
 * from GET /v1/replication/snapshot. When the primary cannot be reached the follower
 * keeps serving what it has and reports it (follower_get_status: /ready, /metrics).
 * libcurl is the HTTP client.
 *
 * Threads: one thread of its own; follower_get_status from any thread.
 */
#ifndef PEFTD_FOLLOWER_H
#define PEFTD_FOLLOWER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapter_store/store.h"
#include "server/adapters/adapter_service.h"

struct tenants;
typedef struct follower follower;

typedef struct {
    char primary[512];       /* the primary's base URL */
    bool reachable;          /* the last request to the primary was answered */
    uint64_t applied;        /* the last change applied here (store_changes.h's position) */
    uint64_t primary_last;   /* the primary's last sequence number, as last seen */
    double lag_s;            /* seconds since this follower last had every change the primary
                              * had (0 while caught up; grows while the primary is away) */
    uint64_t resyncs;        /* full resyncs done since start */
    uint64_t applied_total;  /* changes applied since start */
    char error[256];         /* the last failure ("" = none since the last success) */
} follower_status;

/* primary: base URL (http[s]://host:port); bearer: the key sent to it ("" = none);
 * poll_ms: how long a caught-up follower waits before asking again. store, svc and ts
 * (may be NULL) must outlive the follower. @note caller owns *out: follower_stop(). */
int follower_start(const char *primary, const char *bearer, int poll_ms, astore *store, adapter_service *svc,
                   struct tenants *ts, follower **out, char *err, size_t errlen);
/* Stops the thread (an HTTP transfer in flight is cut short) and frees; NULL: no-op. */
void follower_stop(follower *f);
void follower_get_status(follower *f, follower_status *out);

#endif
