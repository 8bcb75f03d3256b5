/* adapter_store/adapter_blob_internal.h — what the blob writer (adapter_blob.c) and reader
 * (adapter_blob_read.c) share: the base dims a blob's shapes depend on. Private to them. */
#ifndef PEFTD_ADAPTER_BLOB_INTERNAL_H
#define PEFTD_ADAPTER_BLOB_INTERNAL_H

#include "adapter_store/adapter.h"

/* The base dims a blob's shapes depend on; -1 = unknown (writing without a base). */
typedef struct {
    int hidden, intermediate, n_layers, q_dim, kv_dim, vocab;
} bdims;

static const char *const DIM_KEYS[6] = {"hidden", "intermediate", "n_layers", "q_dim", "kv_dim", "vocab"};

static inline int dim_at(const bdims *d, int i) {
    const int v[6] = {d->hidden, d->intermediate, d->n_layers, d->q_dim, d->kv_dim, d->vocab};
    return v[i];
}

static inline bdims dims_of_base(const adapter_base *b) {
    return (bdims){b->hidden, b->intermediate, b->n_layers, b->n_heads * b->head_dim, b->n_kv_heads * b->head_dim,
                   b->vocab};
}

/* [out, in] of module m, -1 where a dim is unknown. */
static inline void module_dims(const bdims *d, adapter_module m, int *out, int *in) {
    switch (m) {
    case AMOD_Q: *out = d->q_dim, *in = d->hidden; break;
    case AMOD_K:
    case AMOD_V: *out = d->kv_dim, *in = d->hidden; break;
    case AMOD_O: *out = d->hidden, *in = d->q_dim; break;
    case AMOD_GATE:
    case AMOD_UP: *out = d->intermediate, *in = d->hidden; break;
    default: *out = d->hidden, *in = d->intermediate; break;
    }
}

#endif
