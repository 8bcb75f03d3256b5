/* server/engine/engine_slot_pool.c — puts a device adapter slot pool (kernels/slot_pool.h)
 * under the engine's adapter tiers when the backend is not host memory (CUDA builds): one
 * region of cfg->adapter_slots slots, each sized by slot_pool_slot_bytes for a LoRA of rank
 * PEFTD_SLOT_MAX_RANK (default 16) on all seven linear modules in f32 (the widest adapter
 * dtype), two pinned staging buffers. An adapter larger than a slot still loads, with its own
 * allocation (adapter_store/tiers.c). The CPU backend keeps host memory (is_host). */
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels_cuda.h"
#include "kernels/slot_pool.h"
#include "lib/log.h"
#include "server/engine/engine_internal.h"

#define ENGINE_SLOT_STAGING 2

size_t engine__slot_bytes(const engine *e, int *rank) {
    const char *r = getenv("PEFTD_SLOT_MAX_RANK");
    *rank = r && atoi(r) > 0 ? atoi(r) : 16;
    const model_config *c = &e->m->cfg;
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim, h = c->hidden_size,
        f = c->intermediate_size;
    /* q, k, v, o, gate, up, down as [out, in] (adapter_module_shape) */
    int out[AMOD_COUNT] = {q, kv, kv, h, f, f, h}, in[AMOD_COUNT] = {h, h, h, q, h, h, f};
    return slot_pool_slot_bytes(c->n_layers, AMOD_COUNT, in, out, *rank, 4);
}

bool engine__slot_pool_wanted(const engine *e, const kbackend *kb) {
    const char *off = getenv("PEFTD_SLOT_POOL");
    return !kb->ops->is_host && e->cfg.store && e->cfg.adapter_slots > 0 && !(off && !strcmp(off, "0"));
}

void engine__slot_pool_init(engine *e, kbackend *kb, int slots) {
#ifdef PEFTD_CUDA
    if (!engine__slot_pool_wanted(e, kb) || !e->tiers || slots < 1) return;
    int rank = 0;
    size_t bytes = engine__slot_bytes(e, &rank);
    const slot_dev_ops *ops = NULL;
    char err[256];
    if (bytes == 0 || kbackend_cuda_slot_dev(kb, slots + ENGINE_SLOT_STAGING, &ops, &e->spool_dev) < 0 ||
        slot_pool_create(ops, e->spool_dev, bytes, slots, ENGINE_SLOT_STAGING, &e->spool, err, sizeof err) < 0) {
        LOGW("engine: no device adapter slot pool (%s): adapters get an allocation each",
             bytes ? err : "slot size 0");
        kbackend_cuda_slot_dev_free(e->spool_dev);
        e->spool_dev = NULL;
        return;
    }
    tiers_set_device_pool(e->tiers, e->spool);
    LOGI("engine: device adapter slot pool: %d slots x %.1f MiB (rank %d, all linear, f32)", slots,
         (double)slot_pool_slot_size(e->spool) / 1048576.0, rank);
#else
    (void)e, (void)kb, (void)slots;
#endif
}

void engine__slot_pool_free(engine *e) {
    slot_pool_free(e->spool);
    e->spool = NULL;
#ifdef PEFTD_CUDA
    kbackend_cuda_slot_dev_free(e->spool_dev);
#endif
    e->spool_dev = NULL;
}
