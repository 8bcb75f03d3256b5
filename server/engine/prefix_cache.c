/* server/engine/prefix_cache.c — see prefix_cache.h. */
#include "server/engine/prefix_cache.h"

#include <stdlib.h>
#include <string.h>

#include "lib/status.h"

int pcache_init(pcache *c, int n_blocks, int cap) {
    memset(c, 0, sizeof *c);
    c->cap = cap > 0 && cap < n_blocks ? cap : n_blocks;
    c->n_blocks = n_blocks;
    c->n_bucket = 16;
    while (c->n_bucket < 2 * c->cap) c->n_bucket *= 2;
    c->ent = calloc((size_t)c->cap, sizeof *c->ent);
    c->free_ent = malloc((size_t)c->cap * sizeof(int));
    c->bucket = malloc((size_t)c->n_bucket * sizeof(int));
    c->by_block = malloc((size_t)n_blocks * sizeof(int));
    if (!c->ent || !c->free_ent || !c->bucket || !c->by_block) {
        pcache_free(c);
        return PEFTD_ENOMEM;
    }
    for (int i = 0; i < c->cap; i++) c->free_ent[i] = c->cap - 1 - i;
    c->n_free_ent = c->cap;
    memset(c->bucket, 0xff, (size_t)c->n_bucket * sizeof(int));
    memset(c->by_block, 0xff, (size_t)n_blocks * sizeof(int));
    c->lru_head = c->lru_tail = -1;
    return 0;
}

void pcache_free(pcache *c) {
    free(c->ent);
    free(c->free_ent);
    free(c->bucket);
    free(c->by_block);
    memset(c, 0, sizeof *c);
}

static int bucket_of(const pcache *c, const uint8_t key[32]) {
    uint32_t h;
    memcpy(&h, key, sizeof h); /* the key is a sha256: any 4 bytes are uniform */
    return (int)(h & (uint32_t)(c->n_bucket - 1));
}

int pcache_find(const pcache *c, const uint8_t key[32]) {
    if (!c->ent) return -1;
    for (int i = c->bucket[bucket_of(c, key)]; i >= 0; i = c->ent[i].hnext)
        if (!memcmp(c->ent[i].key, key, 32)) return i;
    return -1;
}

static void lru_unlink(pcache *c, int i) {
    pcache_entry *e = &c->ent[i];
    if (e->lprev >= 0) c->ent[e->lprev].lnext = e->lnext;
    else c->lru_head = e->lnext;
    if (e->lnext >= 0) c->ent[e->lnext].lprev = e->lprev;
    else c->lru_tail = e->lprev;
    c->n_lru--;
}

static void lru_push(pcache *c, int i) {
    pcache_entry *e = &c->ent[i];
    e->lprev = c->lru_tail;
    e->lnext = -1;
    if (c->lru_tail >= 0) c->ent[c->lru_tail].lnext = i;
    else c->lru_head = i;
    c->lru_tail = i;
    c->n_lru++;
}

int32_t pcache_acquire(pcache *c, int i) {
    if (c->ent[i].refs++ == 0) lru_unlink(c, i);
    return c->ent[i].block;
}

bool pcache_release(pcache *c, int32_t block) {
    if (!c->by_block || block < 0 || block >= c->n_blocks) return false;
    int i = c->by_block[block];
    if (i < 0) return false;
    if (--c->ent[i].refs == 0) lru_push(c, i);
    return true;
}

/* Removes unreferenced entry i; its block goes back to kv. */
static void evict_one(pcache *c, kv_blocks *kv, int i) {
    pcache_entry *e = &c->ent[i];
    lru_unlink(c, i);
    int *pp = &c->bucket[bucket_of(c, e->key)];
    while (*pp != i) pp = &c->ent[*pp].hnext;
    *pp = e->hnext;
    c->by_block[e->block] = -1;
    kv_blocks_release(kv, &e->block, 1);
    c->free_ent[c->n_free_ent++] = i;
    c->n--;
    c->evictions++;
}

int pcache_evict(pcache *c, kv_blocks *kv, int n) {
    int k = 0;
    if (!c->ent) return 0;
    while (k < n && c->lru_head >= 0) {
        evict_one(c, kv, c->lru_head);
        k++;
    }
    return k;
}

bool pcache_insert(pcache *c, kv_blocks *kv, const uint8_t key[32], int32_t block) {
    if (!c->ent || pcache_find(c, key) >= 0 || c->by_block[block] >= 0) return false;
    if (c->n_free_ent == 0 && pcache_evict(c, kv, 1) == 0) return false;
    int i = c->free_ent[--c->n_free_ent];
    pcache_entry *e = &c->ent[i];
    memcpy(e->key, key, 32);
    e->block = block;
    e->refs = 1;
    e->lprev = e->lnext = -1;
    int b = bucket_of(c, key);
    e->hnext = c->bucket[b];
    c->bucket[b] = i;
    c->by_block[block] = i;
    c->n++;
    return true;
}
