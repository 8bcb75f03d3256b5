/* server/model/model_adapter_base.c — describes the loaded base model to adapter_store
 * (which knows nothing of server/model) and loads adapter directories against it (import
 * to host memory, then install on the model's backend). */
#include "server/model/model_adapter_base.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int model_adapter_base(const model *m, adapter_base *b) {
    memset(b, 0, sizeof *b);
    const model_config *c = &m->cfg;
    kmat *w = calloc((size_t)c->n_layers * AMOD_COUNT, sizeof(kmat));
    if (!w) return PEFTD_ENOMEM;
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *L = &m->host_layers[l]; /* host views: import never reads the backend */
        kmat *row = w + (size_t)l * AMOD_COUNT;
        row[AMOD_Q] = L->wq;
        row[AMOD_K] = L->wk;
        row[AMOD_V] = L->wv;
        row[AMOD_O] = L->wo;
        row[AMOD_GATE] = L->w_gate;
        row[AMOD_UP] = L->w_up;
        row[AMOD_DOWN] = L->w_down;
    }
    snprintf(b->name, sizeof b->name, "%s", m->name);
    snprintf(b->model_type, sizeof b->model_type, "%s", c->model_type);
    b->hidden = c->hidden_size;
    b->intermediate = c->intermediate_size;
    b->n_layers = c->n_layers;
    b->n_heads = c->n_heads;
    b->n_kv_heads = c->n_kv_heads;
    b->head_dim = c->head_dim;
    b->vocab = c->vocab_size;
    /* the engine's context rule (engine.c): max_position_embeddings */
    b->context_length = c->max_position_embeddings;
    b->sliding_window = c->sliding_window;
    b->post_norms = c->gemma;
    b->layer_w = w;
    b->embed = &m->embed;
    return 0;
}

void model_adapter_base_free(adapter_base *b) {
    free((void *)b->layer_w);
    b->layer_w = NULL;
}

int model_load_adapter(const model *m, const char *dir, adapter **out, char *err, size_t errlen) {
    adapter_base b;
    int st = model_adapter_base(m, &b);
    if (st < 0) {
        snprintf(err, errlen, "out of memory");
        return st;
    }
    st = adapter_load_dir(dir, &b, out, err, errlen);
    model_adapter_base_free(&b);
    if (st == 0 && (st = adapter_install(*out, m->kb, err, errlen)) < 0) {
        adapter_free(*out);
        *out = NULL;
    }
    return st;
}
