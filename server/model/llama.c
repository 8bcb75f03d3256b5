/* server/model/llama.c — the Llama forward pass (RMSNorm, RoPE, GQA attention over the
 * paged KV cache, SwiGLU MLP) written once against the kbackend op table, with every
 * adapter kind applied per segment inside the one shared batch. Gemma 2/3 take the same
 * loop with their differences switched on by model_config: scaled embeddings, post-norms on
 * the sub-layer outputs (no fused residual), GeGLU, attention / final logit soft-caps, and
 * (Gemma 3) a local RoPE table on sliding layers.
 *
 * Per layer, all T rows of the step go through each base projection in one matmul, so
 * every weight byte is read once per step whatever the batch size; adapters add their
 * deltas per segment (SGMV shrink/expand for LoRA/DoRA and bottleneck adapters, per-segment
 * vector scales for IA3 and DoRA). The residual add is fused into the o_proj / down_proj
 * matmuls (beta = 1) in steps without adapters (not on Gemma, whose post-norms come between).
 * Only the rows whose logits are wanted go
 * through the final norm and lm_head (usually one row per sequence).
 */
#include "server/model/llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/model/llama_internal.h"
#include "server/model/rope_freqs.h"

/* What llama__rope_init (llama_rope.c) leaves to the families: Gemma's softmax scale
 * query_pre_attn_scalar^-0.5 (a Python float, rounded to f32 by torch's multiply), Gemma 3's
 * second RoPE table for sliding layers (rope_local_theta, no scaling, as transformers'
 * rotary_emb_local) and Gemma's embedding scale vector. */
static int setup_tables(llama_ctx *c) {
    const model_config *cfg = &c->m->cfg;
    kbackend *kb = c->kb;
    if (cfg->query_pre_attn_scalar > 0) c->attn_scale = (float)pow(cfg->query_pre_attn_scalar, -0.5);
    int half = cfg->rope.rot_dim / 2, H = cfg->hidden_size;
    float *v = malloc((size_t)(half > H ? half : H) * sizeof(float));
    if (!v) return PEFTD_ENOMEM;
    int st = 0;
    if (c->inv_freq_local) {
        model_config local = *cfg;
        local.rope_theta = cfg->rope_local_theta;
        memset(&local.rope, 0, sizeof local.rope);
        local.rope.rot_dim = cfg->rope.rot_dim;
        double s;
        rope_freqs(&local, v, &s);
        st = kb->ops->upload(kb, c->inv_freq_local, v, (size_t)half * sizeof(float));
    }
    if (st == 0 && cfg->gemma) {
        /* transformers multiplies by a hidden-dtype tensor of sqrt(hidden): f32 here */
        for (int i = 0; i < H; i++) v[i] = (float)sqrt((double)H);
        st = kb->ops->upload(kb, c->emb_scale, v, (size_t)H * sizeof(float));
    }
    free(v);
    return st;
}

/* Gemma: x[r] *= sqrt(hidden) for every run of rows, except (Gemma 3) prompt-tuning virtual
 * tokens, which PEFT feeds as inputs_embeds past the scaled embed_tokens. */
static int scale_embeddings(llama_ctx *c, int n_runs, int T) {
    const model_config *cfg = &c->m->cfg;
    kbackend *kb = c->kb;
    for (int i = 0; i < n_runs; i++) {
        const llama_emb_run *r = &c->runs[i];
        bool virt = r->is_virtual;
        c->emb_seg[i] = r->start;
        c->emb_vec[i] = virt && !cfg->embed_scale_virtual ? NULL : c->emb_scale;
    }
    c->emb_seg[n_runs] = T;
    CHECK(kb->ops->upload(kb, c->d_emb_seg, c->emb_seg, ((size_t)n_runs + 1) * 4));
    CHECK(kb->ops->upload(kb, (void *)c->d_emb_vec, c->emb_vec, (size_t)n_runs * sizeof(float *)));
    return kb->ops->seg_scale(kb, c->x, cfg->hidden_size, n_runs, c->d_emb_seg, c->d_emb_vec);
}

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
    void *bufs[] = {c->x, c->xn, c->q, c->k, c->v, c->att, c->gate, c->up, c->sel, c->logits, c->tmp,
                    c->tmp_in, c->inv_freq, c->d_tokens, c->d_emb_ids, c->d_pos, c->d_slots, c->d_qstart,
                    c->d_kvlen, c->d_kvstart, c->d_btab, c->d_rows, c->ws, c->plan_dev, c->d_rope_tab,
                    c->inv_freq_local, c->emb_scale, c->d_emb_seg, (void *)c->d_emb_vec, c->d_stemp, c->d_stopp,
                    c->d_slp, c->d_stopk, c->d_sids, c->d_su, c->dense_tmp,
                    c->rot_in};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) kb->ops->free(kb, bufs[i]);
    llama__plan_free(c);
    llama__rope_free(c);
    free(c->plan_host);
    free(c->emb_ids);
    free(c->runs);
    free(c->emb_seg);
    free((void *)c->emb_vec);
    if (c->plan) {
        if (c->plan->mod)
            for (int i = 0; i < AMOD_COUNT * c->m->cfg.n_layers; i++) {
                free(c->plan->mod[i].bias);
                free((void *)c->plan->mod[i].delta);
            }
        free(c->plan->mod);
        free(c->plan->tscale);
        free(c->plan->emb);
        free(c->plan->head);
        if (c->plan->bn)
            for (int i = 0; i < 2 * c->m->cfg.n_layers; i++) free(c->plan->bn[i].input);
        free(c->plan->bn);
    }
    free(c->plan);
    free(c);
}

int llama_ctx_create(model *m, const llama_ctx_params *p, llama_ctx **out, char *err, size_t errlen) {
    const model_config *cfg = &m->cfg;
    if (p->max_tokens < 1 || p->max_seqs < 1 || p->block_size < 1 || p->n_blocks < 1 || p->max_blocks < 1) {
        snprintf(err, errlen, "llama_ctx: invalid sizes");
        return PEFTD_EINVAL;
    }
    if ((p->kv_dtype != KDT_F32 && p->kv_dtype != KDT_F16) || !m->kb->ops->supports_op(m->kb, KOP_KV_STORE, p->kv_dtype) ||
        !m->kb->ops->supports_op(m->kb, KOP_ATTENTION, p->kv_dtype)) {
        snprintf(err, errlen, "llama_ctx: the %s backend cannot keep the KV cache in %s", m->kb->ops->name,
                 kdtype_name(p->kv_dtype));
        return PEFTD_EUNSUPPORTED;
    }
    llama_ctx *c = calloc(1, sizeof *c);
    if (!c) return PEFTD_ENOMEM;
    c->m = m;
    c->kb = m->kb;
    c->p = *p;
    kbackend *kb = m->kb;
    size_t T = (size_t)p->max_tokens;
    size_t q_dim = (size_t)cfg->n_heads * cfg->head_dim, kv_dim = (size_t)cfg->n_kv_heads * cfg->head_dim;
    size_t kv_bytes = (size_t)p->n_blocks * p->block_size * kv_dim * kdtype_size(p->kv_dtype);

    c->k_cache = calloc((size_t)cfg->n_layers, sizeof(void *));
    c->v_cache = calloc((size_t)cfg->n_layers, sizeof(void *));
    if (!c->k_cache || !c->v_cache) goto oom;
    for (int l = 0; l < cfg->n_layers; l++) {
        if (!(c->k_cache[l] = kb->ops->alloc(kb, kv_bytes))) goto oom;
        if (!(c->v_cache[l] = kb->ops->alloc(kb, kv_bytes))) goto oom;
    }
    size_t H = (size_t)cfg->hidden_size, I = (size_t)cfg->intermediate_size;
    size_t wide = H > I ? H : I;
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
    ALLOC(c->tmp, T * H * 4);
    ALLOC(c->tmp_in, T * wide * 4);
    ALLOC(c->sel, n_logit_rows * H * 4);
    ALLOC(c->logits, n_logit_rows * (size_t)cfg->vocab_size * 4);
    ALLOC(c->d_tokens, T * 4);
    ALLOC(c->d_emb_ids, T * 4);
    ALLOC(c->d_pos, T * 4);
    ALLOC(c->d_slots, T * 4);
    ALLOC(c->d_qstart, ((size_t)p->max_seqs + 1) * 4);
    ALLOC(c->d_kvlen, (size_t)p->max_seqs * 4);
    ALLOC(c->d_kvstart, (size_t)p->max_seqs * 4);
    ALLOC(c->d_btab, (size_t)p->max_seqs * p->max_blocks * 4);
    ALLOC(c->d_rows, n_logit_rows * 4);
    ALLOC(c->d_stemp, n_logit_rows * 4);
    ALLOC(c->d_stopp, n_logit_rows * 4);
    ALLOC(c->d_slp, n_logit_rows * 4);
    ALLOC(c->d_stopk, n_logit_rows * 4);
    ALLOC(c->d_sids, n_logit_rows * 4);
    ALLOC(c->d_su, n_logit_rows * 8);
    if (!(c->emb_ids = malloc(T * 4)) || !(c->runs = malloc(T * sizeof *c->runs))) goto oom;
    if (llama__plan_init(c) < 0) goto oom;
    if (cfg->gemma) {
        ALLOC(c->emb_scale, H * 4);
        ALLOC(c->d_emb_seg, (T + 1) * 4);
        ALLOC(c->d_emb_vec, T * sizeof(float *));
        if (!(c->emb_seg = malloc((T + 1) * 4)) || !(c->emb_vec = malloc(T * sizeof(float *)))) goto oom;
    }
    if (cfg->rope_local_theta > 0) ALLOC(c->inv_freq_local, (size_t)cfg->rope.rot_dim / 2 * 4);
#undef ALLOC
    int st = llama__rope_init(c);
    if (st == 0) st = setup_tables(c);
    if (st < 0) {
        llama_ctx_free(c);
        snprintf(err, errlen, st == PEFTD_ENOMEM ? "llama_ctx: out of memory" : "llama_ctx: upload failed");
        return st;
    }
    *out = c;
    return 0;
oom:
    snprintf(err, errlen, "llama_ctx: out of backend memory (KV cache %zu MiB per layer pair)",
             2 * kv_bytes >> 20);
    llama_ctx_free(c);
    return PEFTD_ENOMEM;
}

/* Prefix-tuning K/V as given: transformers never rotates nor scales them, and the rope op
 * puts the cos/sin factor s (yarn, longrope) on the rotated q and k only, so a query attends
 * to them with s·(q·k) as transformers does. */
int llama_store_prefix(llama_ctx *c, const adapter *ad, const int32_t *blocks, int pad) {
    kbackend *kb = c->kb;
    const model_config *cfg = &c->m->cfg;
    int bs = c->p.block_size, kv_dim = cfg->n_kv_heads * cfg->head_dim, nv = ad->n_virtual;
    if (!adapter_has_prefix(ad) || ad->n_layers != cfg->n_layers)
        return PEFTD_EINVAL;
    /* in chunks of the step's slot buffer (a prefix may be longer than one step) */
    for (int j0 = 0; j0 < nv; j0 += c->p.max_tokens) {
        int n = nv - j0 < c->p.max_tokens ? nv - j0 : c->p.max_tokens;
        for (int j = 0; j < n; j++) {
            int s = pad + j0 + j;
            c->emb_ids[j] = blocks[s / bs] * bs + s % bs;
        }
        CHECK(kb->ops->upload(kb, c->d_slots, c->emb_ids, (size_t)n * 4));
        for (int l = 0; l < cfg->n_layers; l++)
            CHECK(kb->ops->kv_store(kb, ad->prefix_k[l] + (size_t)j0 * kv_dim, ad->prefix_v[l] + (size_t)j0 * kv_dim,
                                    c->d_slots, n, kv_dim, c->p.kv_dtype, c->k_cache[l], c->v_cache[l]));
    }
    return kb->ops->synchronize(kb);
}

/* Input embeddings: runs of rows that read the same table (the base embedding, an
 * adapter's embed_tokens replacement, or a prompt-tuning adapter's virtual tokens). */
static int embed_rows(llama_ctx *c, const llama_batch *b) {
    const model *m = c->m;
    kbackend *kb = c->kb;
    int T = b->n_tokens, H = m->cfg.hidden_size, n_runs = 0;
    const kmat *prev = NULL;
    for (int r = 0; r < T; r++) {
        const adapter *ad = llama__row_adapter(b, r);
        int32_t id = b->tokens[r];
        const kmat *tab;
        if (id < 0) {
            if (!ad || ad->kind != ADAPTER_PROMPT_TUNING || -(int64_t)id - 1 >= ad->n_virtual) return PEFTD_EINVAL;
            tab = &ad->prompt;
            c->emb_ids[r] = -id - 1;
        } else {
            tab = ad && ad->embed.data ? &ad->embed : &m->embed;
            c->emb_ids[r] = id;
        }
        if (r == 0 || tab != prev) {
            if (r > 0) c->runs[n_runs - 1].end = r;
            c->runs[n_runs].tab = tab;
            c->runs[n_runs].is_virtual = id < 0;
            c->runs[n_runs].start = r;
            n_runs++;
            prev = tab;
        }
    }
    c->runs[n_runs - 1].end = T;
    CHECK(kb->ops->upload(kb, c->d_emb_ids, c->emb_ids, (size_t)T * 4));
    for (int i = 0; i < n_runs; i++) {
        int s = c->runs[i].start, n = c->runs[i].end - s;
        CHECK(kb->ops->get_rows(kb, c->runs[i].tab, c->d_emb_ids + s, n, c->x + (size_t)s * H));
    }
    CHECK(llama__embed_lora(c));
    return m->cfg.gemma ? scale_embeddings(c, n_runs, T) : 0;
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

    CHECK(llama__plan_build(c, b));
    CHECK(op->upload(kb, c->d_tokens, b->tokens, (size_t)T * 4));
    CHECK(op->upload(kb, c->d_pos, b->positions, (size_t)T * 4));
    CHECK(op->upload(kb, c->d_slots, b->slots, (size_t)T * 4));
    CHECK(op->upload(kb, c->d_qstart, b->q_start, ((size_t)S + 1) * 4));
    CHECK(op->upload(kb, c->d_kvlen, b->kv_len, (size_t)S * 4));
    if (b->kv_start) CHECK(op->upload(kb, c->d_kvstart, b->kv_start, (size_t)S * 4));
    CHECK(op->upload(kb, c->d_btab, b->block_table, (size_t)S * c->p.max_blocks * 4));
    if (b->n_logits) CHECK(op->upload(kb, c->d_rows, b->logit_rows, (size_t)b->n_logits * 4));

    CHECK(embed_rows(c, b));
    krope_freqs rf;
    CHECK(llama__rope_step(c, b, &rf));
    kattn_args a = {
        .n_seqs = S, .q_start = c->d_qstart, .kv_len = c->d_kvlen, .block_table = c->d_btab,
        .max_blocks = c->p.max_blocks, .block_size = c->p.block_size, .n_heads = cfg->n_heads,
        .n_kv_heads = cfg->n_kv_heads, .head_dim = hd, .scale = c->attn_scale,
        .q = c->q, .out = c->att, .kv_start = b->kv_start ? c->d_kvstart : NULL,
        .softcap = cfg->attn_softcap, .max_rows = T, .kv_dtype = c->p.kv_dtype,
    };
    for (int l = 0; l < cfg->n_layers; l++) {
        const model_layer *L = &m->layers[l];
        CHECK(llama__norm(c, b, 2 * l, &L->attn_norm, c->x, c->xn));
        {
            const adapter_module qkv[3] = {AMOD_Q, AMOD_K, AMOD_V};
            const kmat *wqkv[3] = {&L->wq, &L->wk, &L->wv};
            float *yqkv[3] = {c->q, c->k, c->v};
            CHECK(llama__project_group(c, l, 3, qkv, wqkv, c->xn, T, yqkv));
        }
        if (L->q_norm.data) {
            /* Qwen3: RMSNorm over each head of q and k (after the adapters' deltas, which PEFT
             * adds inside q_proj / k_proj), before RoPE. */
            CHECK(op->rmsnorm(kb, c->q, &L->q_norm, T * cfg->n_heads, hd, cfg->rms_norm_eps, c->q));
            CHECK(op->rmsnorm(kb, c->k, &L->k_norm, T * cfg->n_kv_heads, hd, cfg->rms_norm_eps, c->k));
        }
        /* Gemma 3: sliding layers use the local table (rope_local_theta, unscaled) */
        bool local = c->inv_freq_local && cfg->layer_local[l];
        krope_freqs rf_local = {.inv_freq = c->inv_freq_local, .n_tables = 1, .table = NULL, .scale = 1.0f};
        const krope_freqs *rl = local ? &rf_local : &rf;
        CHECK(kops_rope_kv_store(kb, c->q, c->k, c->v, c->d_pos, T, cfg->n_heads, cfg->n_kv_heads, hd,
                                 cfg->rope.rot_dim, rl, c->d_slots, c->p.kv_dtype, c->k_cache[l], c->v_cache[l]));
        a.k_cache = c->k_cache[l];
        a.v_cache = c->v_cache[l];
        a.window = cfg->layer_window[l] ? cfg->sliding_window : 0;
        CHECK(op->attention(kb, &a));
        const kmat *post_attn = L->post_attn_norm.data ? &L->post_attn_norm : NULL;
        const kmat *post_ffn = L->post_ffn_norm.data ? &L->post_ffn_norm : NULL;
        CHECK(llama__sublayer_out(c, b, l, AMOD_O, &L->wo, c->att, T, LLAMA_PLACE_ATTN, post_attn));
        CHECK(llama__norm(c, b, 2 * l + 1, &L->ffn_norm, c->x, c->xn));
        const kact glu = cfg->gemma ? KACT_GELU_TANH : KACT_SILU;
        if (llama__mod_idle(c, l, AMOD_GATE) && llama__mod_idle(c, l, AMOD_UP)) {
            /* no segment adapts gate or up in this step: the gated unit straight from xn (one
             * kernel on a GPU at batch 1), the same bits as the steps below */
            CHECK(kops_matmul_glu(kb, c->xn, T, &L->w_gate, &L->w_up, glu, c->up, c->gate));
        } else {
            const adapter_module gu[2] = {AMOD_GATE, AMOD_UP};
            const kmat *wgu[2] = {&L->w_gate, &L->w_up};
            float *ygu[2] = {c->gate, c->up};
            CHECK(llama__project_group(c, l, 2, gu, wgu, c->xn, T, ygu));
            if (glu == KACT_GELU_TANH) CHECK(op->geglu(kb, c->gate, c->up, T, I, c->gate));
            else CHECK(op->swiglu(kb, c->gate, c->up, T, I, c->gate));
        }
        CHECK(llama__sublayer_out(c, b, l, AMOD_DOWN, &L->w_down, c->gate, T, LLAMA_PLACE_FFN, post_ffn));
    }
    if (b->n_logits == 0) return op->synchronize(kb);
    kmat xs = {.data = c->x, .dtype = KDT_F32, .rows = T, .cols = H};
    CHECK(op->get_rows(kb, &xs, c->d_rows, b->n_logits, c->sel));
    CHECK(llama__norm(c, b, 2 * cfg->n_layers, &m->final_norm, c->sel, c->sel));
    /* lm_head, per run of logit rows sharing a head (modules_to_save replaces it) */
    for (int i = 0; i < b->n_logits;) {
        const adapter *ad = llama__row_adapter(b, b->logit_rows[i]);
        const kmat *head = ad && ad->lm_head.data ? &ad->lm_head : &m->lm_head;
        int j = i + 1;
        while (j < b->n_logits) {
            const adapter *ad2 = llama__row_adapter(b, b->logit_rows[j]);
            if ((ad2 && ad2->lm_head.data ? &ad2->lm_head : &m->lm_head) != head) break;
            j++;
        }
        CHECK(op->matmul(kb, c->sel + (size_t)i * H, j - i, head, c->logits + (size_t)i * cfg->vocab_size, 0.0f));
        i = j;
    }
    CHECK(llama__head_lora(c, c->sel, c->logits));
    if (cfg->final_softcap > 0)
        CHECK(op->softcap(kb, c->logits, (int64_t)b->n_logits * cfg->vocab_size, cfg->final_softcap));
    if (!logits) return 0; /* llama_sample picks the tokens on the backend */
    CHECK(op->download(kb, logits, c->logits, (size_t)b->n_logits * cfg->vocab_size * 4));
    return op->synchronize(kb);
}

int llama_hidden_rows(llama_ctx *c, int row0, int n, float *out) {
    kbackend *kb = c->kb;
    size_t H = (size_t)c->m->cfg.hidden_size;
    int rows = c->p.max_tokens > c->p.max_seqs ? c->p.max_tokens : c->p.max_seqs; /* as allocated */
    if (row0 < 0 || n < 1 || row0 + n > rows) return PEFTD_EINVAL;
    CHECK(kb->ops->download(kb, out, c->sel + (size_t)row0 * H, (size_t)n * H * 4));
    return kb->ops->synchronize(kb);
}

int llama_sample(llama_ctx *c, int n, const float *temperature, const int32_t *top_k, const float *top_p,
                 const double *u, bool any_truncated, int32_t *ids, float *logprob) {
    kbackend *kb = c->kb;
    const kbackend_ops *op = kb->ops;
    const int V = c->m->cfg.vocab_size;
    int rows = c->p.max_tokens > c->p.max_seqs ? c->p.max_tokens : c->p.max_seqs; /* as allocated */
    if (n < 1 || n > rows || !op->supports_op(kb, KOP_SAMPLE, KDT_F32)) return PEFTD_EINVAL;
    CHECK(op->upload(kb, c->d_stemp, temperature, (size_t)n * 4));
    CHECK(op->upload(kb, c->d_stopk, top_k, (size_t)n * 4));
    CHECK(op->upload(kb, c->d_stopp, top_p, (size_t)n * 4));
    CHECK(op->upload(kb, c->d_su, u, (size_t)n * 8));
    ksample_args a = {.n_rows = n, .vocab = V, .logits = c->logits, .ld = V, .temperature = c->d_stemp,
                      .top_k = c->d_stopk, .top_p = c->d_stopp, .u = c->d_su, .ids = c->d_sids,
                      .logprob = logprob ? c->d_slp : NULL, .any_truncated = any_truncated};
    CHECK(op->sample(kb, &a));
    CHECK(op->download(kb, ids, c->d_sids, (size_t)n * 4));
    if (logprob) CHECK(op->download(kb, logprob, c->d_slp, (size_t)n * 4));
    return op->synchronize(kb);
}
