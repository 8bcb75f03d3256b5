/* kernels/device_plan.c — the device memory plan (device_plan.h): a pure split of the free
 * bytes into weights, slot pool, activations, logits, headroom and a bf16 KV cache. */
#include "kernels/device_plan.h"

#include <stdio.h>
#include <string.h>

#include "kernels/slot_pool.h"
#include "lib/status.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

static double gib(uint64_t b) { return (double)b / GIB; }

int device_plan_make(uint64_t free_bytes, const device_plan_model *m, const device_plan_config *c,
                     device_plan *out, char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    if (!out) return PEFTD_EINVAL;
    memset(out, 0, sizeof *out);
    out->free_bytes = free_bytes;
    if (!m || !c || m->n_layers < 1 || m->hidden < 1 || m->intermediate < 1 || m->n_heads < 1 ||
        m->n_kv_heads < 1 || m->head_dim < 1 || m->vocab < 1 || c->n_slots < 0 || c->max_seqs < 1 ||
        c->max_rows < c->max_seqs || c->max_rank < 0 || c->block_size < 1 || !(c->kv_fraction > 0) ||
        c->kv_fraction > 1 || c->min_kv_tokens < 0 || (c->kv_elem_bytes != 0 && c->kv_elem_bytes != 2 &&
        c->kv_elem_bytes != 4)) {
        if (err && errlen) snprintf(err, errlen, "device memory plan: a model dimension or setting is out of range");
        return PEFTD_EINVAL;
    }
    uint64_t q_dim = (uint64_t)m->n_heads * (uint64_t)m->head_dim;
    uint64_t kv_dim = (uint64_t)m->n_kv_heads * (uint64_t)m->head_dim;
    uint64_t slot = (c->slot_bytes + SLOT_POOL_ALIGN - 1) / SLOT_POOL_ALIGN * SLOT_POOL_ALIGN;
    out->weights = m->weight_bytes;
    out->slot_pool = (uint64_t)c->n_slots * slot;
    out->activations = (uint64_t)c->max_rows * 4u *
                       (3u * (uint64_t)m->hidden + 2u * q_dim + 2u * kv_dim + 2u * (uint64_t)m->intermediate +
                        (uint64_t)c->max_rank);
    out->logits = (uint64_t)c->max_seqs * ((uint64_t)m->vocab * 4u + 32u);
    out->headroom = c->headroom_bytes;
    out->kv_token_bytes = 2u * (uint64_t)m->n_layers * kv_dim * (uint64_t)(c->kv_elem_bytes ? c->kv_elem_bytes : 2);
    uint64_t fixed = out->weights + out->slot_pool + out->activations + out->logits + out->headroom;
    if (fixed > free_bytes) {
        if (err && errlen)
            snprintf(err, errlen,
                     "device memory plan does not fit: %.2f GiB free < %.2f GiB for weights %.2f + adapter slots "
                     "%.2f (%d x %.1f MiB) + activations %.2f + logits %.2f + headroom %.2f, before any KV cache: "
                     "lower adapter slots, max batch or use a smaller/quantized model",
                     gib(free_bytes), gib(fixed), gib(out->weights), gib(out->slot_pool), c->n_slots,
                     (double)slot / 1048576.0, gib(out->activations), gib(out->logits), gib(out->headroom));
        return PEFTD_ENOMEM;
    }
    uint64_t rest = free_bytes - fixed;
    uint64_t kv_budget = (uint64_t)((double)rest * c->kv_fraction);
    if (kv_budget > rest) kv_budget = rest; /* double rounding */
    uint64_t block_bytes = out->kv_token_bytes * (uint64_t)c->block_size;
    out->kv_blocks = (int64_t)(kv_budget / block_bytes);
    out->kv = (uint64_t)out->kv_blocks * block_bytes;
    out->kv_tokens = out->kv_blocks * (int64_t)c->block_size;
    out->unused = free_bytes - fixed - out->kv;
    if (out->kv_tokens < (int64_t)c->min_kv_tokens) {
        if (err && errlen)
            snprintf(err, errlen,
                     "device memory plan does not fit: the KV cache gets %.2f GiB = %lld tokens (%llu bytes each, "
                     "K+V), fewer than one context of %d; %.2f GiB free, weights %.2f, adapter slots %.2f, "
                     "activations %.2f, logits %.2f, headroom %.2f",
                     gib(out->kv), (long long)out->kv_tokens, (unsigned long long)out->kv_token_bytes,
                     c->min_kv_tokens, gib(free_bytes), gib(out->weights), gib(out->slot_pool),
                     gib(out->activations), gib(out->logits), gib(out->headroom));
        return PEFTD_ENOMEM;
    }
    return 0;
}

void device_plan_describe(const device_plan *p, char *buf, size_t len) {
    if (!buf || !len) return;
    if (!p) {
        buf[0] = 0;
        return;
    }
    snprintf(buf, len,
             "device memory plan: %.2f GiB free = weights %.2f + adapter slots %.2f + activations %.2f + logits "
             "%.2f + headroom %.2f + KV %.2f (%llu B/token, %lld blocks, %lld tokens) + unused %.2f",
             gib(p->free_bytes), gib(p->weights), gib(p->slot_pool), gib(p->activations), gib(p->logits),
             gib(p->headroom), gib(p->kv), (unsigned long long)p->kv_token_bytes, (long long)p->kv_blocks, (long long)p->kv_tokens, gib(p->unused));
}
