/* server/engine/kv_blocks.h — the paged KV cache's block allocator (host-side bookkeeping;
 * the K/V memory itself lives in the llama_ctx on the backend). A block holds block_size
 * KV slots of every layer. Engine thread only. */
#ifndef PEFTD_KV_BLOCKS_H
#define PEFTD_KV_BLOCKS_H

#include <stdint.h>

typedef struct {
    int n_blocks;
    int n_free;
    int32_t *free_ids; /* stack of free block ids */
} kv_blocks;

int kv_blocks_init(kv_blocks *kv, int n_blocks);
void kv_blocks_free(kv_blocks *kv);
/* Takes n blocks into out[] or none at all (PEFTD_ENOMEM). */
int kv_blocks_alloc(kv_blocks *kv, int n, int32_t *out);
void kv_blocks_release(kv_blocks *kv, const int32_t *ids, int n);
static inline int kv_blocks_used(const kv_blocks *kv) { return kv->n_blocks - kv->n_free; }

#endif
