/* server/engine/engine_device_plan.c — sizes the KV cache of an engine on a device backend
 * from the device memory plan (kernels/device_plan.h) when engine.kv_cache_mb is 0: the
 * bytes cudaMemGetInfo reports free now plus the weights already loaded, split between the
 * weights, the adapter slot pool the engine will create (engine_slot_pool.c), the step's
 * activations, the sampled rows' logits, a 1 GiB headroom, and the KV cache (90% of the rest,
 * in engine.kv_dtype's bytes: f32 on CUDA today). The CPU backend keeps kv_cache_mb. */
#include <stdio.h>

#include "kernels/device_plan.h"
#include "kernels/kernels_cuda.h"
#include "lib/log.h"
#include "server/engine/engine_internal.h"

int engine__device_kv_budget(const engine *e, size_t *budget, char *err, size_t errlen) {
#ifdef PEFTD_CUDA
    if (e->kb->ops->is_host || e->cfg.kv_cache_mb != 0) return 0;
    size_t free_b = 0, total_b = 0;
    int rc = kbackend_cuda_mem_info(e->kb, &free_b, &total_b);
    if (rc < 0) {
        snprintf(err, errlen, "engine: cannot read the device's free memory for the KV cache plan");
        return rc;
    }
    const model_config *c = &e->m->cfg;
    device_plan_model dm = {c->n_layers,  c->hidden_size, c->intermediate_size, c->n_heads, c->n_kv_heads,
                            c->head_dim, c->vocab_size,   (uint64_t)e->m->weight_bytes};
    int rank = 0;
    size_t slot = engine__slot_bytes(e, &rank);
    bool pool = engine__slot_pool_wanted(e, e->kb);
    int rows = e->cfg.max_batch_tokens > e->cfg.max_seqs ? e->cfg.max_batch_tokens : e->cfg.max_seqs;
    device_plan_config dc = {pool ? e->cfg.adapter_slots : 0, pool ? slot : 0, e->cfg.max_seqs, rows, rank,
                             e->cfg.block_size, 1ull << 30, 0.9, e->cfg.block_size,
                             (int)kdtype_size(e->kv_dtype)};
    device_plan p;
    rc = device_plan_make((uint64_t)free_b + (uint64_t)e->m->weight_bytes, &dm, &dc, &p, err, errlen);
    if (rc < 0) return rc;
    char line[512];
    device_plan_describe(&p, line, sizeof line);
    LOGI("%s", line);
    *budget = (size_t)p.kv;
    return 0;
#else
    (void)e, (void)budget, (void)err, (void)errlen;
    return 0;
#endif
}
