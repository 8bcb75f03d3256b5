/* bench/bench_model_bytes.h — the bytes of weights one decode step reads, as the model is
 * loaded (after any --weights conversion: model_quant.h), for the benchmarks' roofline and
 * effective-bandwidth figures. Header-only (static inline), like bench_roofline.h. */
#ifndef PEFTD_BENCH_MODEL_BYTES_H
#define PEFTD_BENCH_MODEL_BYTES_H

#include "kernels/kernels.h"
#include "server/model/model.h"

static inline double bench_kmat_bytes(const kmat *w) {
    return w->data ? (double)w->rows * (double)kdtype_row_bytes(w->dtype, w->cols) : 0;
}

/* Every layer weight, the final norm and lm_head (the embedding table only when lm_head is tied
 * to it: a step reads one embedding row otherwise). Not m->weight_bytes, which is the files'
 * size as stored (all of the embeddings, and bf16 where the projections became q8_0 / q4_k). */
static inline double bench_step_weight_bytes(const model *m) {
    double w = bench_kmat_bytes(&m->final_norm) + bench_kmat_bytes(&m->lm_head);
    for (int i = 0; i < m->cfg.n_layers; i++) {
        const model_layer *l = &m->layers[i];
        const kmat *all[] = {&l->attn_norm, &l->wq, &l->wk, &l->wv, &l->wo, &l->ffn_norm, &l->w_gate, &l->w_up,
                             &l->w_down, &l->bq, &l->bk, &l->bv, &l->bo, &l->q_norm, &l->k_norm,
                             &l->post_attn_norm, &l->post_ffn_norm};
        for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) w += bench_kmat_bytes(all[k]);
    }
    return w;
}

#endif
