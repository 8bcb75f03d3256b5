/* server/model/llama.c — the Llama forward pass (RMSNorm, RoPE, GQA attention over the
 * paged KV cache, SwiGLU MLP) written once against the kbackend op table.
 *
 * Per layer, all T rows of the step go through each projection in one matmul, so every
 * weight byte is read once per step whatever the batch size. Residual adds are fused into
 * the o_proj / down_proj matmuls (beta = 1). Only the rows whose logits are wanted go
 * through the final norm and lm_head (usually one row per sequence).
 */
#include "server/model/llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct llama_ctx {
    model *m;
    kbackend *kb;
    llama_ctx_params p;
    float **k_cache, **v_cache;  /* [n_layers] pools of [n_blocks, block_size, kv_dim] */
    /* activation scratch, [max_tokens, ...] */
    float *x, *xn, *q, *k, *v, *att, *gate, *up, *sel, *logits;
    float *inv_freq;             /* [head_dim / 2] */
    /* device copies of the batch's index arrays */
    int32_t *d_tokens, *d_pos, *d_slots, *d_qstart, *d_kvlen, *d_btab, *d_rows;
};

#define CHECK(expr)                                                                           \
    do {                                                                                      \
        int st_ = (expr);                                                                     \
        if (st_ < 0) return st_;                                                              \
    } while (0)

void llama_ctx_free(llama_ctx *c) {
    if (!c) return;
    kbackend *kb = c->kb;
    if (c->k_cache)
        for (int l = 0; l < c->m->cfg.n_layers; l++) {
            kb->ops->free(kb, c->k_cache[l]);
            kb->ops->free(kb, c->v_cache[l]);
        }
    free(c->k_cache);
    free(c->v_cache);
    void *bufs[] = {c->x, c->xn, c->q, c->k, c->v, c->att, c->gate, c->up, c->sel, c->logits,
                    c->inv_freq, c->d_tokens, c->d_pos, c->d_slots, c->d_qstart, c->d_kvlen,
                    c->d_btab, c->d_rows};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) kb->ops->free(kb, bufs[i]);
    free(c);
}

int llama_ctx_create(model *m, const llama_ctx_params *p, llama_ctx **out, char *err, size_t errlen) {
    const model_config *cfg = &m->cfg;
    if (p->max_tokens < 1 || p->max_seqs < 1 || p->block_size < 1 || p->n_blocks < 1 || p->max_blocks < 1) {
        snprintf(err, errlen, "llama_ctx: invalid sizes");
        return PEFTD_EINVAL;
    }
    llama_ctx *c = calloc(1, sizeof *c);
    if (!c) return PEFTD_ENOMEM;
    c->m = m;
    c->kb = m->kb;
    c->p = *p;
    kbackend *kb = m->kb;
    size_t T = (size_t)p->max_tokens;
    size_t q_dim = (size_t)cfg->n_heads * cfg->head_dim, kv_dim = (size_t)cfg->n_kv_heads * cfg->head_dim;
    size_t kv_bytes = (size_t)p->n_blocks * p->block_size * kv_dim * sizeof(float);

    c->k_cache = calloc((size_t)cfg->n_layers, sizeof(float *));
    c->v_cache = calloc((size_t)cfg->n_layers, sizeof(float *));
    if (!c->k_cache || !c->v_cache) goto oom;
    for (int l = 0; l < cfg->n_layers; l++) {
        if (!(c->k_cache[l] = kb->ops->alloc(kb, kv_bytes))) goto oom;
        if (!(c->v_cache[l] = kb->ops->alloc(kb, kv_bytes))) goto oom;
    }
    size_t H = (size_t)cfg->hidden_size, I = (size_t)cfg->intermediate_size;
    size_t n_logit_rows = T < (size_t)p->max_seqs ? (size_t)p->max_seqs : T;
#define ALLOC(ptr, bytes) if (!((ptr) = kb->ops->alloc(kb, (bytes)))) goto oom
    ALLOC(c->x, T * H * 4);
    ALLOC(c->xn, T * H * 4);
    ALLOC(c->q, T * q_dim * 4);
    ALLOC(c->k, T * kv_dim * 4);
    ALLOC(c->v, T * kv_dim * 4);
    ALLOC(c->att, T * q_dim * 4);
    ALLOC(c->gate, T * I * 4);
    ALLOC(c->up, T * I * 4);
    ALLOC(c->sel, n_logit_rows * H * 4);
    ALLOC(c->logits, n_logit_rows * (size_t)cfg->vocab_size * 4);
    ALLOC(c->inv_freq, (size_t)cfg->head_dim / 2 * 4);
    ALLOC(c->d_tokens, T * 4);
    ALLOC(c->d_pos, T * 4);
    ALLOC(c->d_slots, T * 4);
    ALLOC(c->d_qstart, ((size_t)p->max_seqs + 1) * 4);
    ALLOC(c->d_kvlen, (size_t)p->max_seqs * 4);
    ALLOC(c->d_btab, (size_t)p->max_seqs * p->max_blocks * 4);
    ALLOC(c->d_rows, n_logit_rows * 4);
#undef ALLOC
    {
        /* HF LlamaRotaryEmbedding: inv_freq[i] = theta^(-2i/head_dim), computed in double
         * then rounded once, as torch computes it in f32 from an int64 arange. */
        int half = cfg->head_dim / 2;
        float *f = malloc((size_t)half * sizeof(float));
        if (!f) goto oom;
        for (int i = 0; i < half; i++)
            f[i] = (float)(1.0 / pow((double)cfg->rope_theta, (double)(2 * i) / cfg->head_dim));
        int st = kb->ops->upload(kb, c->inv_freq, f, (size_t)half * sizeof(float));
        free(f);
        if (st < 0) {
            llama_ctx_free(c);
            snprintf(err, errlen, "llama_ctx: upload failed");
            return st;
        }
    }
    *out = c;
    return 0;
oom:
    snprintf(err, errlen, "llama_ctx: out of backend memory (KV cache %zu MiB per layer pair)",
             2 * kv_bytes >> 20);
    llama_ctx_free(c);
    return PEFTD_ENOMEM;
}

int llama_forward(llama_ctx *c, const llama_batch *b, float *logits) {
    const model *m = c->m;
    const model_config *cfg = &m->cfg;
    kbackend *kb = c->kb;
    const kbackend_ops *op = kb->ops;
    int T = b->n_tokens, S = b->n_seqs;
    if (T < 1 || T > c->p.max_tokens || S < 1 || S > c->p.max_seqs || b->n_logits < 0 ||
        b->n_logits > (T > c->p.max_seqs ? T : c->p.max_seqs))
        return PEFTD_EINVAL;
    int hd = cfg->head_dim, H = cfg->hidden_size, I = cfg->intermediate_size;
    int kv_dim = cfg->n_kv_heads * hd;

    CHECK(op->upload(kb, c->d_tokens, b->tokens, (size_t)T * 4));
    CHECK(op->upload(kb, c->d_pos, b->positions, (size_t)T * 4));
    CHECK(op->upload(kb, c->d_slots, b->slots, (size_t)T * 4));
    CHECK(op->upload(kb, c->d_qstart, b->q_start, ((size_t)S + 1) * 4));
    CHECK(op->upload(kb, c->d_kvlen, b->kv_len, (size_t)S * 4));
    CHECK(op->upload(kb, c->d_btab, b->block_table, (size_t)S * c->p.max_blocks * 4));
    if (b->n_logits) CHECK(op->upload(kb, c->d_rows, b->logit_rows, (size_t)b->n_logits * 4));

    CHECK(op->get_rows(kb, &m->embed, c->d_tokens, T, c->x));
    kattn_args a = {
        .n_seqs = S, .q_start = c->d_qstart, .kv_len = c->d_kvlen, .block_table = c->d_btab,
        .max_blocks = c->p.max_blocks, .block_size = c->p.block_size, .n_heads = cfg->n_heads,
        .n_kv_heads = cfg->n_kv_heads, .head_dim = hd, .scale = 1.0f / sqrtf((float)hd),
        .q = c->q, .out = c->att,
    };
    for (int l = 0; l < cfg->n_layers; l++) {
        const model_layer *L = &m->layers[l];
        CHECK(op->rmsnorm(kb, c->x, &L->attn_norm, T, H, cfg->rms_norm_eps, c->xn));
        CHECK(op->matmul(kb, c->xn, T, &L->wq, c->q, 0.0f));
        CHECK(op->matmul(kb, c->xn, T, &L->wk, c->k, 0.0f));
        CHECK(op->matmul(kb, c->xn, T, &L->wv, c->v, 0.0f));
        CHECK(op->rope(kb, c->q, c->d_pos, T, cfg->n_heads, hd, c->inv_freq));
        CHECK(op->rope(kb, c->k, c->d_pos, T, cfg->n_kv_heads, hd, c->inv_freq));
        CHECK(op->kv_store(kb, c->k, c->v, c->d_slots, T, kv_dim, c->k_cache[l], c->v_cache[l]));
        a.k_cache = c->k_cache[l];
        a.v_cache = c->v_cache[l];
        CHECK(op->attention(kb, &a));
        CHECK(op->matmul(kb, c->att, T, &L->wo, c->x, 1.0f));
        CHECK(op->rmsnorm(kb, c->x, &L->ffn_norm, T, H, cfg->rms_norm_eps, c->xn));
        CHECK(op->matmul(kb, c->xn, T, &L->w_gate, c->gate, 0.0f));
        CHECK(op->matmul(kb, c->xn, T, &L->w_up, c->up, 0.0f));
        CHECK(op->swiglu(kb, c->gate, c->up, T, I, c->gate));
        CHECK(op->matmul(kb, c->gate, T, &L->w_down, c->x, 1.0f));
    }
    if (b->n_logits == 0) return op->synchronize(kb);
    kmat xs = {.data = c->x, .dtype = KDT_F32, .rows = T, .cols = H};
    CHECK(op->get_rows(kb, &xs, c->d_rows, b->n_logits, c->sel));
    CHECK(op->rmsnorm(kb, c->sel, &m->final_norm, b->n_logits, H, cfg->rms_norm_eps, c->sel));
    CHECK(op->matmul(kb, c->sel, b->n_logits, &m->lm_head, c->logits, 0.0f));
    CHECK(op->download(kb, logits, c->logits, (size_t)b->n_logits * cfg->vocab_size * 4));
    return op->synchronize(kb);
}
