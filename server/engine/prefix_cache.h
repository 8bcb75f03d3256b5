/* server/engine/prefix_cache.h — automatic prefix caching: full KV blocks of prompts,
 * found by a 32-byte key (the hash chain of engine_prefix.c: the adapter version and
 * everything else that changes those K/V, then the tokens of the block and of every block
 * before it). An entry owns its block while cached; `refs` counts the sequences whose
 * block table holds it. Entries nobody references sit in an LRU list and are evicted
 * (their blocks go back to the pool) when the pool needs room or the budget is reached.
 * Host-side bookkeeping only (the K/V stay where they were written). Engine thread only. */
#ifndef PEFTD_PREFIX_CACHE_H
#define PEFTD_PREFIX_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "server/engine/kv_blocks.h"

typedef struct {
    uint8_t key[32];
    int32_t block;
    int refs;
    int hnext;        /* next entry in the hash bucket, -1 = end */
    int lprev, lnext; /* LRU list of unreferenced entries (oldest at the head), -1 = end */
} pcache_entry;

typedef struct {
    int cap;          /* entries at most: the budget (<= the pool's blocks) */
    int n;            /* entries (cached blocks) */
    pcache_entry *ent;
    int *free_ent;    /* stack of unused entry indices */
    int n_free_ent;
    int *bucket;      /* [n_bucket] first entry, -1 = empty */
    int n_bucket;     /* a power of two */
    int *by_block;    /* [n_blocks] the entry caching that block, -1 = none */
    int n_blocks;
    int lru_head, lru_tail, n_lru;
    uint64_t evictions;
} pcache;

/* cap: cached blocks at most (0 = as many as the pool has). */
int pcache_init(pcache *c, int n_blocks, int cap);
void pcache_free(pcache *c);
/* The entry with this key, or -1. */
int pcache_find(const pcache *c, const uint8_t key[32]);
/* One more sequence uses entry i: returns its block (taken out of the LRU list). */
int32_t pcache_acquire(pcache *c, int i);
/* A sequence drops a block: true when the cache holds it (refs-1; at 0 it becomes the
 * newest in the LRU list), false when it is not cached (the caller frees it). */
bool pcache_release(pcache *c, int32_t block);
/* Caches a block its sequence just filled (refs 1). At the budget, the oldest unreferenced
 * entry is evicted first (its block back to kv); false when nothing could be evicted or the
 * key is present (the block then stays the sequence's own). */
bool pcache_insert(pcache *c, kv_blocks *kv, const uint8_t key[32], int32_t block);
/* Evicts up to n unreferenced entries, oldest first, their blocks back to kv. Returns how many. */
int pcache_evict(pcache *c, kv_blocks *kv, int n);

#endif
