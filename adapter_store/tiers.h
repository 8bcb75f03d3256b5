/* adapter_store/tiers.h — where adapter versions live between the store and the batch:
 *
 *   LMDB store (disk, all versions)
 *     -> host tier: a bounded LRU (bytes) of version blobs in host memory, keyed by sha256
 *     -> slot pool: a bounded set of decoded adapters in backend memory ("device" slots;
 *        plain memory on the CPU backend), keyed by sha256, LRU-evicted when no running
 *        sequence pins them.
 *
 * The engine thread owns the slot pool: tiers_pin() / tiers_unpin() / tiers_fetch() are
 * engine-thread only. A fetch reads the blob (host tier or LMDB) and decodes it into host
 * memory on the libuv thread pool, then installs it into the backend (adapter_install: the
 * one upload of adapter weights) and into a slot on the engine thread, so decoding never
 * stalls a step and no pool thread touches the backend. The host tier has its own lock: HTTP threads offer freshly uploaded
 * blobs to it. Keys are content hashes, never names: a replaced adapter can never serve
 * stale weights.
 */
#ifndef PEFTD_TIERS_H
#define PEFTD_TIERS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "adapter_store/adapter.h"
#include "adapter_store/store.h"

typedef struct tiers tiers;

typedef struct {
    size_t host_bytes;      /* host tier capacity (blob bytes) */
    int slots;              /* slot pool capacity (decoded adapters) */
} tiers_options;

typedef struct {
    uint64_t host_hits, host_misses, host_evictions;
    uint64_t slot_hits, slot_misses, slot_evictions, loads, load_failures;
    double load_seconds_sum;         /* time from fetch to resident, summed */
    uint64_t host_bytes_used;
    int slots_used, slots_pinned, slots_total;
} tiers_stats;

/* @note caller owns *out: tiers_free(). store, base (and its kmats), kb and loop must
 * outlive it. Create and use on the engine thread (the loop's thread). */
int tiers_create(const tiers_options *opt, astore *store, const adapter_base *base, kbackend *kb, uv_loop_t *loop,
                 tiers **out);
/* Engine thread, before the first fetch: adapter blocks go into this device slot pool
 * (kernels/slot_pool.h; as many slots as opt.slots) instead of an allocation each; a full
 * pool (every slot pinned) fails that fetch with the pool's message. The pool must outlive
 * t (tiers_free releases every slot into it). NULL: one allocation per adapter. */
struct slot_pool;
void tiers_set_device_pool(tiers *t, struct slot_pool *pool);
/* Waits for fetches in flight, frees every slot and the host tier. NULL is a no-op. */
void tiers_free(tiers *t);

/* Engine thread: the decoded adapter with this content hash, pinned (+1), or NULL when it
 * is not resident. Counts a slot hit or miss. */
adapter *tiers_pin(tiers *t, const char *sha256);
void tiers_unpin(tiers *t, adapter *a);

/* Engine thread: makes sha256 resident (no-op when it already is, or a fetch is in
 * flight). on_ready(ud) runs on the engine thread when the fetch ends, resident or
 * failed (then tiers_failure() tells why, until the next fetch of the same hash).
 * Returns PEFTD_EBUSY when every slot is pinned (retry when a sequence ends). */
int tiers_fetch(tiers *t, const char *sha256, void (*on_ready)(void *ud), void *ud);
/* The last fetch failure of sha256 (status < 0 and message), or 0. */
int tiers_failure(tiers *t, const char *sha256, char *msg, size_t len);

/* Any thread: puts a blob (copied) into the host tier, e.g. right after an upload. */
int tiers_offer_blob(tiers *t, const char *sha256, const void *blob, size_t len);
/* Any thread: drops sha256 from the host tier (the slot goes when unpinned and evicted);
 * a retained blob is dropped at its last release instead. */
void tiers_forget(tiers *t, const char *sha256);
/* Any thread: keeps sha256's blob in the host tier, never evicted, until as many
 * tiers_release() calls — read from the store first when it is not there. For a version
 * about to leave the store (replaced or deleted) while requests that were admitted on it
 * may still have to load it: they find it here. Returns 0 or the store's status. */
int tiers_retain(tiers *t, const char *sha256);
void tiers_release(tiers *t, const char *sha256);

void tiers_get_stats(tiers *t, tiers_stats *s); /* any thread */
/* Engine thread: the content hashes resident in the slot pool (at most max, in slot
 * order) into out; returns how many there are (may exceed max). */
int tiers_resident(const tiers *t, char (*out)[65], int max);

#endif
