/* server/engine/kv_blocks.c — see kv_blocks.h. */
#include "server/engine/kv_blocks.h"

#include <stdlib.h>

#include "lib/status.h"

int kv_blocks_init(kv_blocks *kv, int n_blocks) {
    kv->free_ids = malloc((size_t)n_blocks * sizeof(int32_t));
    if (!kv->free_ids) return PEFTD_ENOMEM;
    kv->n_blocks = kv->n_free = n_blocks;
    /* hand out low ids first: block n_blocks-1 sits at the bottom of the stack */
    for (int i = 0; i < n_blocks; i++) kv->free_ids[i] = n_blocks - 1 - i;
    return 0;
}

void kv_blocks_free(kv_blocks *kv) {
    free(kv->free_ids);
    kv->free_ids = NULL;
    kv->n_blocks = kv->n_free = 0;
}

int kv_blocks_alloc(kv_blocks *kv, int n, int32_t *out) {
    if (n < 0 || n > kv->n_free) return PEFTD_ENOMEM;
    for (int i = 0; i < n; i++) out[i] = kv->free_ids[--kv->n_free];
    return 0;
}

void kv_blocks_release(kv_blocks *kv, const int32_t *ids, int n) {
    for (int i = 0; i < n; i++) kv->free_ids[kv->n_free++] = ids[i];
}
