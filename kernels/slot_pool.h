/* kernels/slot_pool.h — the device adapter slot pool: one region of device memory,
 * allocated once, carved into n_slots fixed-size slots; an adapter version (its content
 * hash) occupies one slot. Plain C: every device action goes through a small vtable
 * (slot_dev_ops), implemented for CUDA in kernels/cuda/slot_pool_cuda.cu and by a
 * recording fake in tests/unit/test_slot_pool.c.
 *
 * What it owns and guarantees:
 *   - No device allocation or free after create: eviction only returns a slot to the pool
 *     (a cudaFree would synchronise the device mid-decode).
 *   - Uploads go host block -> pinned staging buffer (host memcpy) -> slot, as an async
 *     copy on the device's COPY stream, followed by an event recorded on that stream. The
 *     compute stream waits on that event (device-side, no host block) the first time a step
 *     uses the slot (slot_pool_use), so a load overlaps the steps before it.
 *   - A staging buffer is reused only once its last upload's event has completed.
 *   - Residency: LRU among slots that no in-flight sequence pins (pin counts) and whose
 *     upload is complete; a pinned slot is never evicted or overwritten.
 *   - Hot swap: versions are content hashes, so a new version loads into another slot while
 *     sequences admitted on the old one keep it pinned; slot_pool_retire() marks the old one
 *     so it is returned to the free list at its last unpin (before any LRU victim).
 *   - Exhaustion (every slot pinned or loading, or every staging buffer still in flight) is
 *     PEFTD_EBUSY with a one-line message for the request that asked: nothing else changes.
 *     An adapter larger than a slot is PEFTD_E2BIG (retrying cannot help).
 *   - layout_gen: bumped whenever a slot's contents change (a load, a retire-free); a
 *     captured decode graph that baked slot addresses is stale when it differs
 *     (kernels/decode_graph.h).
 *
 * Slot sizing (slot_pool_slot_bytes): a slot holds the largest adapter the configuration
 * admits: a LoRA of rank max_rank on every target module of every layer (A: rank x in,
 * B: out x rank, in the adapter dtype) plus one f32 vector of out floats per target (DoRA
 * magnitude / IA3 / bias room), every tensor rounded up to SLOT_POOL_ALIGN. Mixed ranks and
 * kinds share that one size: a rank-8 q,v LoRA uses a fraction of a slot sized for rank-16
 * all-linear; IA3, prompt and prefix adapters are far smaller. Anything bigger than the
 * slot is refused at load (PEFTD_E2BIG) naming both sizes. One size keeps allocation O(1),
 * makes every slot interchangeable for LRU and leaves no fragmentation.
 *
 * Threads: one thread (the engine thread, kernels.h's owner) makes every call. */
#ifndef PEFTD_SLOT_POOL_H
#define PEFTD_SLOT_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SLOT_POOL_ALIGN 256

/* The device side. ctx is the implementation's; events are small integers in
 * [0, n_slots + n_staging) the implementation maps to its own (e.g. cudaEvent_t). */
typedef struct {
    /* One region of `bytes` device bytes (called once, by create), NULL on failure. */
    void *(*region_alloc)(void *ctx, size_t bytes);
    void (*region_free)(void *ctx, void *p); /* by slot_pool_free only */
    /* Page-locked host memory for a staging buffer, NULL on failure. */
    void *(*host_alloc)(void *ctx, size_t bytes);
    void (*host_free)(void *ctx, void *p);
    /* Asynchronous host -> device copy on the copy stream. */
    int (*copy_async)(void *ctx, void *dst_dev, const void *src_host, size_t bytes);
    /* Records event ev on the copy stream (after every copy issued so far). */
    int (*event_record)(void *ctx, int ev);
    /* 1 when ev's work is complete, 0 when not yet, < 0 on a device error. Never blocks. */
    int (*event_query)(void *ctx, int ev);
    /* The compute stream waits (on the device) for ev before its later work. */
    int (*compute_wait)(void *ctx, int ev);
} slot_dev_ops;

typedef struct slot_pool slot_pool;

typedef struct {
    uint64_t hits, misses, loads, evictions, busy_refusals;
    int used, pinned, loading, total;
} slot_pool_stats;

/* Bytes of one slot (the rule above). in_dims/out_dims: the n_targets target modules of
 * one layer; dtype_bytes: 2 (bf16/f16) or 4 (f32). 0 when an argument is out of range. */
size_t slot_pool_slot_bytes(int n_layers, int n_targets, const int *in_dims, const int *out_dims, int max_rank,
                            int dtype_bytes);

/* One region of n_slots * slot_bytes (slot_bytes rounded up to SLOT_POOL_ALIGN) and
 * n_staging pinned buffers of slot_bytes. dev/ctx must outlive the pool.
 * @note caller owns *out: slot_pool_free(). */
int slot_pool_create(const slot_dev_ops *dev, void *ctx, size_t slot_bytes, int n_slots, int n_staging,
                     slot_pool **out, char *err, size_t errlen);
/* Frees the region and the staging buffers (the caller has synchronised the device).
 * NULL is a no-op. */
void slot_pool_free(slot_pool *p);

/* The slot holding `key` (a content hash, < 65 chars), or -1. Counts a hit or a miss and
 * touches the LRU clock on a hit. */
int slot_pool_find(slot_pool *p, const char *key);
/* Makes `key` resident: its slot when it already is (no copy), else a free or LRU-evicted
 * slot into which `bytes` of `host` are staged and uploaded (the upload is in flight on
 * return; host may be reused at once). *slot receives the slot. Errors: PEFTD_E2BIG (larger
 * than a slot), PEFTD_EBUSY (no slot can be taken, or no staging buffer is free: retry
 * after a sequence ends or a step completes), PEFTD_EINVAL, a device status. */
int slot_pool_load(slot_pool *p, const char *key, const void *host, size_t bytes, int *slot, char *err,
                   size_t errlen);
/* Pin counts of in-flight sequences: a pinned slot is never evicted or overwritten. */
int slot_pool_pin(slot_pool *p, int slot);
int slot_pool_unpin(slot_pool *p, int slot);
/* For a step about to read slot: the slot's device address; the first call after a load
 * makes the compute stream wait on the upload's event. NULL for a free slot. */
void *slot_pool_use(slot_pool *p, int slot);
/* Polls the events of uploads in flight (never blocks); a completed one becomes evictable
 * and its staging buffer reusable. Returns how many are still loading, or a device status. */
int slot_pool_poll(slot_pool *p);
/* True when every staging buffer still has an upload in flight (as of the last poll): a load
 * now would be refused for that reason alone, and a later poll will clear it. */
bool slot_pool_staging_busy(const slot_pool *p);
/* True once slot's upload has completed (as of the last poll). */
bool slot_pool_ready(const slot_pool *p, int slot);
/* A replaced/deleted version: `key`'s slot is freed now when unpinned, else at its last
 * unpin; it is no longer found. No-op when key is not resident. */
void slot_pool_retire(slot_pool *p, const char *key);
/* The device address of slot (no wait: for pointers a later step will read after its
 * slot_pool_use), or NULL for a free slot; the slot at a device address, or -1. */
void *slot_pool_addr(const slot_pool *p, int slot);
int slot_pool_slot_at(const slot_pool *p, const void *dev);

uint64_t slot_pool_layout_gen(const slot_pool *p);
size_t slot_pool_slot_size(const slot_pool *p);
void slot_pool_get_stats(const slot_pool *p, slot_pool_stats *s);

#endif
