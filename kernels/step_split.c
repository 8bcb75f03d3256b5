/* kernels/step_split.c — the transfer-only / ops-only passes of a step (step_split.h): a
 * wrapping kbackend_ops table installed in kb->ops for one pass; each entry counts the call
 * and forwards to the saved table or skips it. */
#include "kernels/step_split.h"

#include <stdint.h>
#include <string.h>

static __thread step_split *cur;

/* FNV-1a over 64-bit words: the step's op sequence with every host argument. */
static void mixv(step_split *s, int n, const uint64_t *v) {
    for (int i = 0; i < n; i++) {
        s->sig ^= v[i];
        s->sig *= 1099511628211ull;
    }
}
#define U(x) ((uint64_t)(uintptr_t)(x))
#define F(x) ((uint64_t)fbits(x))
static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
#define MIX(...)                                              \
    do {                                                      \
        const uint64_t v_[] = {__VA_ARGS__};                  \
        mixv(s, (int)(sizeof v_ / sizeof v_[0]), v_);         \
    } while (0)
#define KM(m) U((m)->data), U((m)->dtype), U((m)->rows), U((m)->cols)

static void note(step_split *s, bool is_op, bool is_sync) {
    if (is_op) s->last_op = s->calls;
    if (is_sync && s->first_sync < 0 && s->pass == STEP_PASS_OPS) s->first_sync = s->calls;
    s->calls++;
}

/* An op: runs in the OPS pass only. */
#define OPW(name, params, args, ...)                 \
    static int w_##name params {                     \
        step_split *s = cur;                         \
        note(s, true, false);                        \
        MIX((uint64_t)__LINE__, __VA_ARGS__);        \
        if (s->pass != STEP_PASS_OPS) {              \
            s->n_skipped++;                          \
            return 0;                                \
        }                                            \
        s->n_ops++;                                  \
        return s->saved->name args;                  \
    }
/* A transfer into the device: runs in the TRANSFERS pass only. */
#define XFW(name, params, args)                      \
    static int w_##name params {                     \
        step_split *s = cur;                         \
        note(s, false, false);                       \
        MIX((uint64_t)__LINE__, U(dst), U(bytes));   \
        if (s->pass != STEP_PASS_TRANSFERS) {        \
            s->n_skipped++;                          \
            return 0;                                \
        }                                            \
        s->n_transfers++;                            \
        return s->saved->name args;                  \
    }
/* A host wait (download, synchronize): runs in the OPS pass only, after the ops. */
#define SYW(name, params, args)                      \
    static int w_##name params {                     \
        step_split *s = cur;                         \
        note(s, false, true);                        \
        if (s->pass != STEP_PASS_OPS) {              \
            s->n_skipped++;                          \
            return 0;                                \
        }                                            \
        return s->saved->name args;                  \
    }

XFW(upload, (kbackend * kb, void *dst, const void *src, size_t bytes), (kb, dst, src, bytes))
OPW(memset0, (kbackend * kb, void *dst, size_t bytes), (kb, dst, bytes), U(dst), U(bytes))
SYW(download, (kbackend * kb, void *dst, const void *src, size_t bytes), (kb, dst, src, bytes))
SYW(synchronize, (kbackend * kb), (kb))
OPW(copy, (kbackend * kb, void *dst, const void *src, size_t bytes), (kb, dst, src, bytes), U(dst), U(src), U(bytes))
OPW(get_rows, (kbackend * kb, const kmat *t, const int32_t *ids, int n, float *out), (kb, t, ids, n, out), KM(t),
    U(ids), U(n), U(out))
OPW(matmul, (kbackend * kb, const float *x, int n, const kmat *w, float *y, float beta), (kb, x, n, w, y, beta),
    U(x), U(n), KM(w), U(y), F(beta))
OPW(rmsnorm, (kbackend * kb, const float *x, const kmat *w, int n, int dim, float eps, float *y),
    (kb, x, w, n, dim, eps, y), U(x), KM(w), U(n), U(dim), F(eps), U(y))
OPW(rope, (kbackend * kb, float *x, const int32_t *pos, int n, int nh, int hd, int rd, const krope_freqs *f),
    (kb, x, pos, n, nh, hd, rd, f), U(x), U(pos), U(n), U(nh), U(hd), U(rd), U(f->inv_freq), U(f->n_tables),
    U(f->table), F(f->scale))
OPW(kv_store, (kbackend * kb, const float *k, const float *v, const int32_t *slots, int n, int kv_dim, kdtype kt,
               void *kc, void *vc),
    (kb, k, v, slots, n, kv_dim, kt, kc, vc), U(k), U(v), U(slots), U(n), U(kv_dim), U(kt), U(kc), U(vc))
OPW(attention, (kbackend * kb, const kattn_args *a), (kb, a), U(a->n_seqs), U(a->q_start), U(a->kv_len),
    U(a->block_table), U(a->max_blocks), U(a->block_size), U(a->n_heads), U(a->n_kv_heads), U(a->head_dim),
    F(a->scale), U(a->q), U(a->k_cache), U(a->v_cache), U(a->out), U(a->kv_start), U(a->window), F(a->softcap),
    U(a->max_rows), U(a->kv_dtype))
OPW(swiglu, (kbackend * kb, const float *g, const float *u, int n, int dim, float *out), (kb, g, u, n, dim, out),
    U(g), U(u), U(n), U(dim), U(out))
OPW(add, (kbackend * kb, float *y, const float *x, int64_t n), (kb, y, x, n), U(y), U(x), U(n))
#define SG(g) U((g)->n_segs), U((g)->seg_start), U((g)->a), U((g)->b), U((g)->rank), U((g)->scale), U((g)->bias_a), \
              U((g)->bias_b), U((g)->act), U((g)->dtype), U((g)->max_rows)
OPW(sgmv_shrink, (kbackend * kb, const float *x, int in_dim, const ksgmv *sg, float *t, int ld_t),
    (kb, x, in_dim, sg, t, ld_t), U(x), U(in_dim), SG(sg), U(t), U(ld_t))
OPW(sgmv_expand, (kbackend * kb, const float *t, int ld_t, const ksgmv *sg, int out_dim, float *y),
    (kb, t, ld_t, sg, out_dim, y), U(t), U(ld_t), SG(sg), U(out_dim), U(y))
OPW(add_bias, (kbackend * kb, float *y, int n, const kmat *b), (kb, y, n, b), U(y), U(n), KM(b))
OPW(geglu, (kbackend * kb, const float *g, const float *u, int n, int dim, float *out), (kb, g, u, n, dim, out),
    U(g), U(u), U(n), U(dim), U(out))
OPW(softcap, (kbackend * kb, float *y, int64_t n, float cap), (kb, y, n, cap), U(y), U(n), F(cap))
OPW(sample, (kbackend * kb, const ksample_args *a), (kb, a), U(a->n_rows), U(a->vocab), U(a->logits), U(a->ld),
    U(a->temperature), U(a->top_k), U(a->top_p), U(a->u), U(a->ids), U(a->logprob), U(a->any_truncated))
OPW(seg_scale, (kbackend * kb, float *y, int dim, int n, const int32_t *seg, const float *const *v),
    (kb, y, dim, n, seg, v), U(y), U(dim), U(n), U(seg), U(v))
OPW(seg_rotate, (kbackend * kb, const float *x, int dim, const ksegrot *sr, float *y), (kb, x, dim, sr, y), U(x),
    U(dim), U(sr->n_segs), U(sr->seg_start), U(sr->n_factors), U(sr->factors), U(sr->max_block), U(y))

OPW(rope_kv_store,
    (kbackend * kb, float *q, float *k, const float *v, const int32_t *pos, int n, int nh, int nkv, int hd, int rd,
     const krope_freqs *f, const int32_t *slots, kdtype kt, void *kc, void *vc),
    (kb, q, k, v, pos, n, nh, nkv, hd, rd, f, slots, kt, kc, vc), U(q), U(k), U(v), U(pos), U(n), U(nh), U(nkv),
    U(hd), U(rd), U(f->inv_freq), U(f->n_tables), U(f->table), F(f->scale), U(slots), U(kt), U(kc), U(vc))

OPW(matmul_glu,
    (kbackend * kb, const float *x, int n, const kmat *wg, const kmat *wu, kact act, float *up, float *out),
    (kb, x, n, wg, wu, act, up, out), U(x), U(n), KM(wg), KM(wu), U(act), U(up), U(out))

/* matmul_group (q/k/v, gate/up) is an op like matmul; a backend without it gets no wrapper
 * (kops_matmul_group then calls the wrapped matmul per weight). Unwrapped, it ran its GEMVs in
 * the transfers pass too: every replayed decode step computed q/k/v and gate/up twice. */
static int w_matmul_group(kbackend *kb, const float *x, int n, int count, const kmat *const *w, float *const *y,
                          float beta) {
    step_split *s = cur;
    note(s, true, false);
    MIX((uint64_t)__LINE__, U(x), U(n), U(count), F(beta));
    for (int g = 0; w && y && g < count && g < KMATMUL_GROUP_MAX; g++) {
        if (w[g]) MIX(KM(w[g]));
        MIX(U(y[g]));
    }
    if (s->pass != STEP_PASS_OPS) {
        s->n_skipped++;
        return 0;
    }
    s->n_ops++;
    return s->saved->matmul_group(kb, x, n, count, w, y, beta);
}

/* Allocation runs in either pass (a step that allocates is not capturable: counted). */
static void *w_alloc(kbackend *kb, size_t bytes) {
    step_split *s = cur;
    note(s, false, false);
    MIX(1, U(bytes));
    s->n_alloc++;
    return s->saved->alloc(kb, bytes);
}
static void w_free(kbackend *kb, void *p) {
    step_split *s = cur;
    note(s, false, false);
    s->n_alloc++;
    s->saved->free(kb, p);
}

void step_split_begin(step_split *s, kbackend *kb, step_pass pass) {
    memset(s, 0, sizeof *s);
    s->kb = kb;
    s->saved = kb->ops;
    s->pass = pass;
    s->last_op = s->first_sync = -1;
    s->sig = 14695981039346656037ull;
    s->table = *kb->ops; /* name, destroy, capabilities as they are */
    kbackend_ops *t = &s->table;
    t->alloc = w_alloc, t->free = w_free, t->upload = w_upload, t->download = w_download;
    t->memset0 = w_memset0, t->synchronize = w_synchronize, t->copy = w_copy, t->get_rows = w_get_rows;
    t->matmul = w_matmul, t->rmsnorm = w_rmsnorm, t->rope = w_rope, t->kv_store = w_kv_store;
    t->attention = w_attention, t->swiglu = w_swiglu, t->add = w_add, t->sgmv_shrink = w_sgmv_shrink;
    t->sgmv_expand = w_sgmv_expand, t->seg_scale = w_seg_scale, t->add_bias = w_add_bias, t->geglu = w_geglu;
    t->softcap = w_softcap, t->sample = w_sample, t->seg_rotate = w_seg_rotate;
    t->matmul_group = s->saved->matmul_group ? w_matmul_group : NULL;
    t->rope_kv_store = s->saved->rope_kv_store ? w_rope_kv_store : NULL;
    t->matmul_glu = s->saved->matmul_glu ? w_matmul_glu : NULL;
    cur = s;
    kb->ops = &s->table;
}

void step_split_end(step_split *s) {
    s->kb->ops = s->saved;
    cur = NULL;
}

bool step_split_capturable(const step_split *s) {
    return s->pass == STEP_PASS_OPS && s->n_alloc == 0 && (s->first_sync < 0 || s->first_sync > s->last_op);
}
