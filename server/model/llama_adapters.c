/* server/model/llama_adapters.c — applying adapters per segment inside one batch.
 *
 * Once per step, llama__plan_build() walks the batch's segments and, for every (layer,
 * module) and bottleneck place, gathers the segments' adapter tensors into the pointer
 * tables the SGMV / seg_scale ops read (one staging block, uploaded once). The layer loop
 * then calls llama__project() / llama__sublayer_out(), which run the base matmul over all
 * rows and add each segment's delta:
 *   LoRA      y += scale·B(A x)                    (SGMV shrink + expand)
 *   DoRA      y  = f ⊙ (W x + t·scale·B(A x))      (f = m/||W + t·scale·BA||: precomputed for
 *                                                  t = 1; other request scales t from the
 *                                                  adapter's row statistics, cached per
 *                                                  (content, t), see llama_dora_entry)
 *   IA3       y  = l ⊙ (W x)  or  y = W (l ⊙ x)    (output- or input-side vector)
 *   OFT       y  = W (x·M) + b                     (M block-diagonal: the segment's rows of x
 *                                                  rotated into a copy of the input, seg_rotate,
 *                                                  before the one base matmul; the other rows
 *                                                  copied unchanged — in floats per row of the
 *                                                  step, for each rotated projection, next to
 *                                                  the in·b multiply-adds of an OFT row)
 *   BOFT      y  = s ⊙ (W (x·M_0·M_1⋯)) + b        (the factors chained in one seg_rotate; s at
 *                                                  DoRA's place: after the deltas, before b)
 *   OFT / BOFT modules served dense (adapter_rot.c's rule): y += x·ΔWᵀ, s folded into ΔW
 *   lora_bias y += scale·(B(A x) + b_B)            (the SGMV expand's bias)
 *   trained projection bias (PEFT bias "all"/"lora_only"): the segment's rows add its bias
 *             instead of the base's (per-segment add_bias)
 *   LoRA on embed_tokens: x[t] += scale·B·A[:, id_t]   (gather A's rows, one-segment expand)
 *   LoRA on lm_head: logits += scale·B(A h)         (one-segment shrink + expand per segment)
 *   A projection bias b (Qwen2 q/k/v, Llama attention_bias) is part of "W x" above, as in
 *   PEFT's base_layer(x) — except for DoRA, whose factor f does not scale it (y = f ⊙ (…) + b).
 *   bottleneck (AdapterHub, on Llama where the library passes no layer norm), with a the
 *   sub-layer output and h the residual stream before it:
 *             z = h for a parallel adapter (par_bn), else a + h if original_ln_before, else a
 *             x' = h + a + scaling·(U act(D z + d) + u)
 *   (tests/fixtures/adapters/SEMANTICS.md derives this from the library.)
 * Segments without an adapter, or whose adapter has nothing at a place, get rank 0 /
 * NULL entries and cost nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/model/llama_internal.h"

/* DoRA cache entries beyond the max_seqs one step can pin: a few request scales of a few
 * DoRA adapters stay computed across steps (a new one costs O(sum of out dims) + 1 upload). */
#define LLAMA_DORA_SPARE 16

const adapter *llama__row_adapter(const llama_batch *b, int r) {
    int lo = 0, hi = b->n_segs - 1;
    while (lo <= hi) { /* segments are ordered by row */
        int mid = (lo + hi) / 2;
        if (r < b->segs[mid].row_start) hi = mid - 1;
        else if (r >= b->segs[mid].row_end) lo = mid + 1;
        else return b->segs[mid].ad;
    }
    return NULL;
}

/* Staging arrays: n_segs entries per table; worst case per step, per (layer, module):
 * 3 dtypes × (a, b, rank, scale) + dora + ia3_out + ia3_in, and per bottleneck place:
 * 3 dtypes × (a, b, rank, scale, bias_a, bias_b, act). 16 bytes of alignment per array. */
int llama__plan_init(llama_ctx *c) {
    const model_config *cfg = &c->m->cfg;
    size_t S = (size_t)c->p.max_seqs, L = (size_t)cfg->n_layers;
    size_t per_mod = 3 * (4 * (8 * S + 16)) + 3 * (8 * S + 16);
    size_t per_bn = 3 * (7 * (8 * S + 16));
    /* a one-segment SGMV (embed / lm_head LoRA) per segment: 4 tables of 1 + seg_start of 2 */
    size_t per_top = 5 * (8 + 16);
    c->plan_cap = L * (AMOD_COUNT * per_mod + 2 * per_bn) + 4 * (S + 1) + 2 * S * per_top + 64;
    c->plan_host = malloc(c->plan_cap);
    c->plan_dev = c->kb->ops->alloc(c->kb, c->plan_cap);
    c->plan = calloc(1, sizeof *c->plan);
    if (!c->plan_host || !c->plan_dev || !c->plan) return PEFTD_ENOMEM;
    c->plan->mod = calloc(L * AMOD_COUNT, sizeof(llama_plan_mod));
    c->plan->bn = calloc(L * 2, sizeof(llama_plan_bn));
    if (!c->plan->mod || !c->plan->bn) return PEFTD_ENOMEM;
    for (size_t i = 0; i < L * 2; i++)
        if (!(c->plan->bn[i].input = calloc(S, 1))) return PEFTD_ENOMEM;
    for (size_t i = 0; i < L * AMOD_COUNT; i++)
        if (!(c->plan->mod[i].bias = calloc(S, sizeof(kmat *))) || !(c->plan->mod[i].delta = calloc(S, sizeof(kmat *))))
            return PEFTD_ENOMEM;
    if (!(c->plan->tscale = calloc(S, sizeof *c->plan->tscale))) return PEFTD_ENOMEM;
    c->plan->emb = calloc(S, sizeof(llama_plan_top));
    c->plan->head = calloc(S, sizeof(llama_plan_top));
    if (!c->plan->emb || !c->plan->head) return PEFTD_ENOMEM;
    /* One step pins at most max_seqs (adapter, scale) pairs; LLAMA_DORA_SPARE more keep
     * recently used scales warm across steps. Each entry is O(sum of DoRA out dims) floats. */
    c->dora_cap = c->p.max_seqs + LLAMA_DORA_SPARE;
    if (!(c->dora = calloc((size_t)c->dora_cap, sizeof *c->dora))) return PEFTD_ENOMEM;
    return 0;
}

static void dora_entry_clear(llama_ctx *c, llama_dora_entry *e) {
    if (e->dev) c->kb->ops->free(c->kb, e->dev);
    free(e->vec);
    memset(e, 0, sizeof *e);
}

void llama__plan_free(llama_ctx *c) {
    for (int i = 0; c->dora && i < c->dora_n; i++) dora_entry_clear(c, &c->dora[i]);
    free(c->dora);
    c->dora = NULL;
    c->dora_n = 0;
}

/* The DoRA factor tables of adapter ad at request scale t (t != 1), from the cache or built
 * now: host math from ad's row statistics, one upload. *out = NULL when ad has no DoRA. */
static int dora_at_scale(llama_ctx *c, const adapter *ad, float t, const float *const **out) {
    int n = ad->n_layers * AMOD_COUNT;
    size_t total = 0;
    *out = NULL;
    for (int i = 0; i < n; i++)
        if (ad->lora[i].rank > 0 && ad->lora[i].dora) {
            if (!ad->lora[i].dora_stats) return PEFTD_EINVAL; /* every loaded DoRA module has them */
            total += (size_t)ad->lora[i].b.rows;
        }
    if (total == 0) return 0;
    llama_dora_entry *e = NULL;
    for (int i = 0; i < c->dora_n && !e; i++)
        if (c->dora[i].scale == t && !strcmp(c->dora[i].sha256, ad->sha256)) e = &c->dora[i];
    if (!e) {
        if (c->dora_n < c->dora_cap) {
            e = &c->dora[c->dora_n++];
        } else { /* least recently used among those this step does not use */
            for (int i = 0; i < c->dora_n; i++)
                if (c->dora[i].used != c->step && (!e || c->dora[i].used < e->used)) e = &c->dora[i];
            if (!e) return PEFTD_ENOMEM; /* cannot happen: a step pins at most max_seqs */
            dora_entry_clear(c, e);
        }
        float *host = malloc(total * sizeof *host);
        e->vec = calloc((size_t)n, sizeof *e->vec);
        e->dev = c->kb->ops->alloc(c->kb, total * sizeof(float));
        int rc = host && e->vec && e->dev ? 0 : PEFTD_ENOMEM;
        size_t off = 0;
        for (int i = 0; rc == 0 && i < n; i++) {
            const adapter_lora *lr = &ad->lora[i];
            if (lr->rank <= 0 || !lr->dora) continue;
            adapter_dora_scale_vector(lr->dora_stats, lr->b.rows, t, host + off);
            e->vec[i] = (const float *)e->dev + off;
            off += (size_t)lr->b.rows;
        }
        if (rc == 0) rc = c->kb->ops->upload(c->kb, e->dev, host, total * sizeof *host);
        free(host);
        if (rc < 0) {
            dora_entry_clear(c, e); /* an empty slot: its sha256 "" matches no adapter */
            return rc;
        }
        snprintf(e->sha256, sizeof e->sha256, "%s", ad->sha256);
        e->scale = t;
    }
    e->used = c->step;
    *out = e->vec;
    return 0;
}

/* Bump allocation in the staging block; returns the host address, *dev the device one. */
static void *stage(llama_ctx *c, size_t bytes, void **dev) {
    size_t off = (c->plan_used + 15) & ~(size_t)15;
    if (off + bytes > c->plan_cap) {
        c->plan_overflow = true; /* llama__plan_build grows the block and builds again */
        return NULL;
    }
    c->plan_used = off + bytes;
    *dev = c->plan_dev + off;
    return c->plan_host + off;
}

#define STAGE(c, type, n, devp) ((type *)stage((c), sizeof(type) * (size_t)(n), (void **)(devp)))

static int plan_top(llama_ctx *c, const llama_batch *b);

/* One ksgmv per weight dtype among the segments that have a (non-empty) low-rank pair. */
typedef struct {
    const void *a, *b;
    int rank;
    float scale;
    const float *bias_a, *bias_b;
    kact act;
    kdtype dtype;
} seg_pair;

/* Appends to sg[*n_sg ...] (cap entries in all). */
static int build_sgmv(llama_ctx *c, const seg_pair *pairs, int n_segs, bool with_bias, int *n_sg, ksgmv *sg, int cap,
                      int *ld_t) {
    for (int dt = KDT_F32; dt <= KDT_BF16; dt++) {
        bool any = false;
        for (int i = 0; i < n_segs; i++) any |= pairs[i].rank > 0 && pairs[i].dtype == (kdtype)dt;
        if (!any) continue;
        if (*n_sg >= cap) return PEFTD_EINVAL;
        ksgmv *s = &sg[(*n_sg)++];
        memset(s, 0, sizeof *s);
        const void **a, **b;
        int32_t *rank;
        float *scale;
        void *d;
        if (!(a = STAGE(c, const void *, n_segs, &d))) return PEFTD_ENOMEM;
        s->a = d;
        if (!(b = STAGE(c, const void *, n_segs, &d))) return PEFTD_ENOMEM;
        s->b = d;
        if (!(rank = STAGE(c, int32_t, n_segs, &d))) return PEFTD_ENOMEM;
        s->rank = d;
        if (!(scale = STAGE(c, float, n_segs, &d))) return PEFTD_ENOMEM;
        s->scale = d;
        const float **ba = NULL, **bb = NULL;
        int32_t *act = NULL;
        if (with_bias) {
            if (!(ba = STAGE(c, const float *, n_segs, &d))) return PEFTD_ENOMEM;
            s->bias_a = d;
            if (!(bb = STAGE(c, const float *, n_segs, &d))) return PEFTD_ENOMEM;
            s->bias_b = d;
            if (!(act = STAGE(c, int32_t, n_segs, &d))) return PEFTD_ENOMEM;
            s->act = d;
        }
        for (int i = 0; i < n_segs; i++) {
            bool mine = pairs[i].rank > 0 && pairs[i].dtype == (kdtype)dt;
            a[i] = mine ? pairs[i].a : NULL;
            b[i] = mine ? pairs[i].b : NULL;
            rank[i] = mine ? pairs[i].rank : 0;
            scale[i] = mine ? pairs[i].scale : 0.0f;
            if (with_bias) {
                ba[i] = mine ? pairs[i].bias_a : NULL;
                bb[i] = mine ? pairs[i].bias_b : NULL;
                act[i] = mine ? (int32_t)pairs[i].act : KACT_NONE;
            }
            if (mine && pairs[i].rank > *ld_t) *ld_t = pairs[i].rank;
        }
        s->n_segs = n_segs;
        s->max_rows = c->plan->max_rows;
        s->seg_start = c->plan->seg_start;
        s->dtype = (kdtype)dt;
    }
    return 0;
}

/* A per-segment vector table, or NULL when no segment has a vector. */
static int build_vec(llama_ctx *c, const float *const *vecs, int n_segs, const float *const **out) {
    *out = NULL;
    bool any = false;
    for (int i = 0; i < n_segs; i++) any |= vecs[i] != NULL;
    if (!any) return 0;
    void *d;
    const float **v = STAGE(c, const float *, n_segs, &d);
    if (!v) return PEFTD_ENOMEM;
    memcpy(v, vecs, sizeof(*v) * (size_t)n_segs);
    *out = d;
    return 0;
}

/* The (A, B) pair of layer k (k >= 1: compositions only) of segment i at (l, m), or rank 0. */
static seg_pair mix_pair(const llama_segment *sg, int l, adapter_module m, int k) {
    adapter_mix_pair mp[ADAPTER_MAX_MIX * ADAPTER_MAX_MIX];
    int n = adapter_mix_pairs(sg->mix, l, m, sg->scale, mp);
    if (k >= n) return (seg_pair){0};
    const adapter_lora *la = &sg->mix->ad[mp[k].ia]->lora[l * AMOD_COUNT + m];
    const adapter_lora *lb = &sg->mix->ad[mp[k].ib]->lora[l * AMOD_COUNT + m];
    return (seg_pair){.a = la->a.data, .b = lb->b.data, .rank = la->rank, .scale = mp[k].scale, .dtype = la->a.dtype};
}

static int plan_build_once(llama_ctx *c, const llama_batch *b);

/* The OFT / BOFT rotations of projection (l, m) in this step (out->n_segs 0 when no segment
 * rotates it): per segment its factor count and a staged krot_factor array, one per run of
 * segments of the same adapter; and the scratch rows the rotated input is formed in. */
static int plan_rot(llama_ctx *c, const llama_batch *b, int l, int m, ksegrot *out) {
    const int n = b->n_segs, idx = l * AMOD_COUNT + m;
    memset(out, 0, sizeof *out);
    bool any = false;
    for (int i = 0; i < n && !any; i++) {
        const adapter *ad = b->segs[i].ad;
        any = ad && (ad->kind == ADAPTER_OFT || ad->kind == ADAPTER_BOFT) && ad->rot && ad->rot[idx].n_factors > 0;
    }
    if (!any) return 0;
    if (!c->rot_in) {
        const model_config *cfg = &c->m->cfg;
        size_t wide = (size_t)cfg->n_heads * cfg->head_dim;
        if ((size_t)cfg->hidden_size > wide) wide = (size_t)cfg->hidden_size;
        if ((size_t)cfg->intermediate_size > wide) wide = (size_t)cfg->intermediate_size;
        if (!(c->rot_in = c->kb->ops->alloc(c->kb, (size_t)c->p.max_tokens * wide * sizeof(float))))
            return PEFTD_ENOMEM;
    }
    void *d_nf, *d_fp, *d;
    int32_t *nf = STAGE(c, int32_t, n, &d_nf);
    const krot_factor **fp = nf ? STAGE(c, const krot_factor *, n, &d_fp) : NULL;
    if (!fp) return PEFTD_ENOMEM;
    const adapter_rot *prev = NULL;
    const krot_factor *prev_dev = NULL;
    int max_block = 1;
    for (int i = 0; i < n; i++) {
        const adapter *ad = b->segs[i].ad;
        const adapter_rot *ro = ad && (ad->kind == ADAPTER_OFT || ad->kind == ADAPTER_BOFT) && ad->rot ? &ad->rot[idx]
                                                                                                     : NULL;
        nf[i] = 0;
        fp[i] = NULL;
        if (!ro || ro->n_factors <= 0) continue;
        if (ro != prev) {
            krot_factor *kf = STAGE(c, krot_factor, ro->n_factors, &d);
            if (!kf) return PEFTD_ENOMEM;
            for (int f = 0; f < ro->n_factors; f++)
                kf[f] = (krot_factor){.r = ro->f[f].r.data, .perm = ro->f[f].perm, .block = ro->f[f].block,
                                      .shared = ro->f[f].shared};
            prev = ro, prev_dev = d;
        }
        nf[i] = ro->n_factors;
        fp[i] = prev_dev;
        for (int f = 0; f < ro->n_factors; f++)
            if (ro->f[f].block > max_block) max_block = ro->f[f].block;
    }
    *out = (ksegrot){.n_segs = n, .seg_start = c->plan->seg_start, .n_factors = d_nf, .factors = d_fp,
                     .max_block = max_block};
    return 0;
}

/* The tables that scale segment i's dense-delta rows by its request scale t (once per segment
 * and step; nothing when t == 1: the delta is added by the matmul itself), and the scratch
 * rows they are formed in. */
static int plan_tscale(llama_ctx *c, const llama_batch *b, int i) {
    struct llama_plan_tscale *ts = &c->plan->tscale[i];
    const llama_segment *sg = &b->segs[i];
    if (sg->scale == 1.0f || ts->seg_start) return 0;
    const model_config *cfg = &c->m->cfg;
    size_t wide = (size_t)cfg->n_heads * cfg->head_dim;
    if ((size_t)cfg->hidden_size > wide) wide = (size_t)cfg->hidden_size;
    if ((size_t)cfg->intermediate_size > wide) wide = (size_t)cfg->intermediate_size;
    if (!c->dense_tmp) {
        if (!(c->dense_tmp = c->kb->ops->alloc(c->kb, (size_t)c->p.max_tokens * wide * sizeof(float))))
            return PEFTD_ENOMEM;
        c->dense_cols = wide;
    }
    void *d_ss, *d_tab, *d_vec;
    int32_t *ss = STAGE(c, int32_t, 2, &d_ss);
    const float **tab = ss ? STAGE(c, const float *, 1, &d_tab) : NULL;
    float *vec = tab ? STAGE(c, float, wide, &d_vec) : NULL;
    if (!vec) return PEFTD_ENOMEM;
    ss[0] = 0, ss[1] = sg->row_end - sg->row_start;
    tab[0] = d_vec;
    for (size_t k = 0; k < wide; k++) vec[k] = sg->scale;
    ts->seg_start = d_ss;
    ts->vec = d_tab;
    return 0;
}

int llama__plan_build(llama_ctx *c, const llama_batch *b) {
    for (;;) {
        c->plan_overflow = false;
        int rc = plan_build_once(c, b);
        if (rc != PEFTD_ENOMEM || !c->plan_overflow) return rc;
        /* compositions need more tables than plan_init's estimate: a bigger block, again */
        size_t cap = c->plan_cap * 2;
        unsigned char *h = malloc(cap), *d = c->kb->ops->alloc(c->kb, cap);
        if (!h || !d) {
            free(h);
            if (d) c->kb->ops->free(c->kb, d);
            return PEFTD_ENOMEM;
        }
        free(c->plan_host);
        c->kb->ops->free(c->kb, c->plan_dev);
        c->plan_host = h, c->plan_dev = d, c->plan_cap = cap;
    }
}

static int plan_build_once(llama_ctx *c, const llama_batch *b) {
    llama_plan *p = c->plan;
    const model_config *cfg = &c->m->cfg;
    int L = cfg->n_layers, n = b->n_segs;
    bool any = false;
    for (int i = 0; i < n; i++) any |= b->segs[i].ad != NULL || b->segs[i].mix != NULL;
    if (n > c->p.max_seqs) return PEFTD_EINVAL;
    p->n_segs = 0;
    if (!any) return 0; /* base only: the layer loop runs plain matmuls */
    c->plan_used = 0;
    p->n_segs = n;
    p->segs = b->segs;
    p->max_rank = 0;
    memset(p->tscale, 0, sizeof *p->tscale * (size_t)n);
    void *d;
    int32_t *ss = STAGE(c, int32_t, n + 1, &d);
    if (!ss) return PEFTD_ENOMEM;
    p->seg_start = d;
    for (int i = 0; i < n; i++) {
        if (b->segs[i].row_start != (i ? b->segs[i - 1].row_end : 0) || b->segs[i].row_end < b->segs[i].row_start)
            return PEFTD_EINVAL;
        ss[i] = b->segs[i].row_start;
    }
    ss[n] = b->segs[n - 1].row_end;
    if (ss[n] != b->n_tokens) return PEFTD_EINVAL;
    p->max_rows = 0;
    for (int i = 0; i < n; i++)
        if (ss[i + 1] - ss[i] > p->max_rows) p->max_rows = ss[i + 1] - ss[i];

    /* DoRA factor tables of segments whose request scale is not 1 */
    const float *const *seg_dora[n];
    c->step++;
    for (int i = 0; i < n; i++) {
        const adapter *ad = b->segs[i].ad;
        seg_dora[i] = NULL;
        if (ad && ad->kind == ADAPTER_LORA && ad->lora && b->segs[i].scale != 1.0f)
            CHECK(dora_at_scale(c, ad, b->segs[i].scale, &seg_dora[i]));
    }

    seg_pair pairs[n];
    const float *dora[n], *ia3o[n], *ia3i[n];
    for (int l = 0; l < L; l++) {
        for (int m = 0; m < AMOD_COUNT; m++) {
            bool with_bias = false; /* some segment's LoRA has a lora_B bias */
            llama_plan_mod *pm = &p->mod[l * AMOD_COUNT + m];
            const kmat **seg_bias = pm->bias;
            /* every field but the sg[] tables (n_sg says how many are valid) */
            pm->n_sg = pm->ld_t = 0;
            pm->dora = pm->ia3_out = pm->ia3_in = NULL;
            pm->any_bias = pm->any_delta = false;
            for (int i = 0; i < n; i++) {
                const adapter *ad = b->segs[i].ad;
                memset(&pairs[i], 0, sizeof pairs[i]);
                dora[i] = ia3o[i] = ia3i[i] = NULL;
                seg_bias[i] = NULL;
                pm->delta[i] = NULL;
                if (!ad) continue;
                if (ad->kind == ADAPTER_LORA && ad->lora) {
                    const adapter_lora *lr = &ad->lora[l * AMOD_COUNT + m];
                    if (lr->delta.data) {
                        pm->delta[i] = &lr->delta;
                        pm->any_delta = true;
                        CHECK(plan_tscale(c, b, i));
                    }
                    if (lr->rank > 0) {
                        pairs[i] = (seg_pair){.a = lr->a.data, .b = lr->b.data, .rank = lr->rank,
                                              .scale = lr->scale * b->segs[i].scale, .bias_b = lr->bias,
                                              .dtype = lr->a.dtype};
                        dora[i] = lr->dora && seg_dora[i] ? seg_dora[i][l * AMOD_COUNT + m] : lr->dora;
                        with_bias |= lr->bias != NULL;
                    }
                    if (lr->base_bias.data) {
                        seg_bias[i] = &lr->base_bias;
                        pm->any_bias = true;
                    }
                } else if (ad->kind == ADAPTER_IA3 && ad->ia3) {
                    const float *v = ad->ia3[l * AMOD_COUNT + m];
                    if (ad->ia3_input[m]) ia3i[i] = v;
                    else ia3o[i] = v;
                } else if (ad->kind == ADAPTER_OFT || ad->kind == ADAPTER_BOFT) {
                    /* factored: BOFT's s at DoRA's place (the rotation itself: plan_rot); dense: the delta */
                    if (ad->rot) dora[i] = ad->rot[l * AMOD_COUNT + m].out_scale;
                    if (ad->lora && ad->lora[l * AMOD_COUNT + m].delta.data) {
                        pm->delta[i] = &ad->lora[l * AMOD_COUNT + m].delta;
                        pm->any_delta = true;
                        CHECK(plan_tscale(c, b, i));
                    }
                }
            }
            for (int i = 0; i < n; i++)
                if (b->segs[i].mix) pairs[i] = mix_pair(&b->segs[i], l, (adapter_module)m, 0);
            CHECK(build_sgmv(c, pairs, n, with_bias, &pm->n_sg, pm->sg, LLAMA_MAX_SG, &pm->ld_t));
            /* compositions: their further pairs, one SGMV layer each, in the pairs' fixed order
             * (a composed row gets its deltas added in the same order in any batch) */
            for (int k = 1;; k++) {
                bool more = false;
                for (int i = 0; i < n; i++) {
                    pairs[i] = b->segs[i].mix ? mix_pair(&b->segs[i], l, (adapter_module)m, k) : (seg_pair){0};
                    more |= pairs[i].rank > 0;
                }
                if (!more) break;
                CHECK(build_sgmv(c, pairs, n, false, &pm->n_sg, pm->sg, LLAMA_MAX_SG, &pm->ld_t));
            }
            CHECK(build_vec(c, dora, n, &pm->dora));
            CHECK(plan_rot(c, b, l, m, &pm->rot));
            CHECK(build_vec(c, ia3o, n, &pm->ia3_out));
            CHECK(build_vec(c, ia3i, n, &pm->ia3_in));
            if (pm->ld_t > p->max_rank) p->max_rank = pm->ld_t;
        }
        for (int place = 0; place < 2; place++) {
            llama_plan_bn *pb = &p->bn[l * 2 + place];
            unsigned char *in = pb->input;
            memset(pb, 0, sizeof *pb);
            pb->input = in;
            for (int i = 0; i < n; i++) {
                const adapter *ad = b->segs[i].ad;
                memset(&pairs[i], 0, sizeof pairs[i]);
                in[i] = LLAMA_BN_IN_A;
                if (!ad || ad->kind != ADAPTER_BOTTLENECK) continue;
                const adapter_bottleneck *bn = place == LLAMA_PLACE_ATTN ? ad->bn_attn : ad->bn_ffn;
                if (!bn || bn[l].size <= 0) continue;
                /* the only residual wiring served (validated at load): x' = h + a + Δ */
                if (!bn[l].residual_before_ln || !bn[l].original_ln_after) return PEFTD_EUNSUPPORTED;
                in[i] = bn[l].parallel             ? LLAMA_BN_IN_H
                        : bn[l].original_ln_before ? LLAMA_BN_IN_A_PLUS_H
                                                   : LLAMA_BN_IN_A;
                pairs[i] = (seg_pair){.a = bn[l].down.data, .b = bn[l].up.data, .rank = bn[l].size,
                                      .scale = bn[l].scaling, .bias_a = bn[l].down_bias, .bias_b = bn[l].up_bias,
                                      .act = bn[l].act, .dtype = bn[l].down.dtype};
            }
            CHECK(build_sgmv(c, pairs, n, true, &pb->n_sg, pb->sg, 3, &pb->ld_t));
            if (pb->ld_t > p->max_rank) p->max_rank = pb->ld_t;
        }
    }
    CHECK(plan_top(c, b));
    CHECK(c->kb->ops->upload(c->kb, c->plan_dev, c->plan_host, c->plan_used));
    if (p->max_rank > c->ws_cols) { /* grow the SGMV workspace to the widest rank seen */
        if (c->ws) c->kb->ops->free(c->kb, c->ws);
        /* rows: every token of a step, or every logit row (lm_head LoRA), whichever is more */
        int rows = c->p.max_tokens > c->p.max_seqs ? c->p.max_tokens : c->p.max_seqs;
        c->ws = c->kb->ops->alloc(c->kb, c->kb->ops->sgmv_workspace(c->kb, rows, p->max_rank));
        c->ws_cols = c->ws ? p->max_rank : 0;
        if (!c->ws) return PEFTD_ENOMEM;
    }
    return 0;
}

/* A one-segment SGMV over rows [0, rows) of L (rank, scale·t, bias-free), staged. */
static int stage_top(llama_ctx *c, const adapter_lora *L, float t, int rows, llama_plan_top *pt) {
    void *d;
    const void **a, **b;
    int32_t *rank, *ss;
    float *scale;
    memset(pt, 0, sizeof *pt);
    if (!(a = STAGE(c, const void *, 1, &d))) return PEFTD_ENOMEM;
    pt->sg.a = d;
    if (!(b = STAGE(c, const void *, 1, &d))) return PEFTD_ENOMEM;
    pt->sg.b = d;
    if (!(rank = STAGE(c, int32_t, 1, &d))) return PEFTD_ENOMEM;
    pt->sg.rank = d;
    if (!(scale = STAGE(c, float, 1, &d))) return PEFTD_ENOMEM;
    pt->sg.scale = d;
    if (!(ss = STAGE(c, int32_t, 2, &d))) return PEFTD_ENOMEM;
    pt->sg.seg_start = d;
    a[0] = L->a.data, b[0] = L->b.data, rank[0] = L->rank, scale[0] = L->scale * t;
    ss[0] = 0, ss[1] = rows;
    pt->sg.n_segs = 1;
    pt->sg.max_rows = rows;
    pt->sg.dtype = L->a.dtype;
    pt->n_sg = 1;
    pt->rank = L->rank;
    return 0;
}

/* The embed_tokens / lm_head LoRA of each segment. A segment's logit rows are contiguous
 * (logit rows are in row order, segments are row ranges). */
static int plan_top(llama_ctx *c, const llama_batch *b) {
    llama_plan *p = c->plan;
    p->any_emb = p->any_head = false;
    for (int i = 0, k = 0; i < p->n_segs; i++) {
        const llama_segment *sg = &b->segs[i];
        const adapter *ad = sg->ad;
        int k0 = k;
        while (k < b->n_logits && b->logit_rows[k] < sg->row_end) {
            if (b->logit_rows[k] < sg->row_start) return PEFTD_EINVAL; /* not in row order */
            k++;
        }
        memset(&p->emb[i], 0, sizeof p->emb[i]);
        memset(&p->head[i], 0, sizeof p->head[i]);
        if (!ad || ad->kind != ADAPTER_LORA) continue;
        if (ad->embed_lora.rank > 0 && sg->row_end > sg->row_start) {
            CHECK(stage_top(c, &ad->embed_lora, sg->scale, sg->row_end - sg->row_start, &p->emb[i]));
            p->any_emb = true;
            if (ad->embed_lora.rank > p->max_rank) p->max_rank = ad->embed_lora.rank;
        }
        if (ad->head_lora.rank > 0 && k > k0) {
            CHECK(stage_top(c, &ad->head_lora, sg->scale, k - k0, &p->head[i]));
            p->head[i].k0 = k0, p->head[i].n = k - k0;
            p->any_head = true;
            if (ad->head_lora.rank > p->max_rank) p->max_rank = ad->head_lora.rank;
        }
    }
    return 0;
}

int llama__embed_lora(llama_ctx *c) {
    const llama_plan *p = c->plan;
    kbackend *kb = c->kb;
    int H = c->m->cfg.hidden_size;
    if (!p->n_segs || !p->any_emb) return 0;
    for (int i = 0; i < p->n_segs; i++) {
        const llama_plan_top *pt = &p->emb[i];
        if (!pt->n_sg) continue;
        const adapter *ad = p->segs[i].ad;
        int r0 = p->segs[i].row_start, n = p->segs[i].row_end - r0;
        /* t = A[:, ids] as rows [n, rank] (A stored transposed), then x += scale·t·Bᵀ */
        CHECK(kb->ops->get_rows(kb, &ad->embed_lora.a, c->d_emb_ids + r0, n, c->ws));
        CHECK(kb->ops->sgmv_expand(kb, c->ws, pt->rank, &pt->sg, H, c->x + (size_t)r0 * H));
    }
    return 0;
}

int llama__head_lora(llama_ctx *c, const float *sel, float *logits) {
    const llama_plan *p = c->plan;
    kbackend *kb = c->kb;
    int H = c->m->cfg.hidden_size, V = c->m->cfg.vocab_size;
    if (!p->n_segs || !p->any_head) return 0;
    for (int i = 0; i < p->n_segs; i++) {
        const llama_plan_top *pt = &p->head[i];
        if (!pt->n_sg) continue;
        CHECK(kb->ops->sgmv_shrink(kb, sel + (size_t)pt->k0 * H, H, &pt->sg, c->ws, pt->rank));
        CHECK(kb->ops->sgmv_expand(kb, c->ws, pt->rank, &pt->sg, V, logits + (size_t)pt->k0 * V));
    }
    return 0;
}

/* The norm weight row r of the step uses at site (llama__norm). */
static const kmat *norm_weight(const llama_batch *b, int r, int site, const kmat *w) {
    const adapter *ad = llama__row_adapter(b, r);
    return ad && ad->kind == ADAPTER_LN_TUNING && ad->ln && ad->ln[site].data ? &ad->ln[site] : w;
}

int llama__norm(llama_ctx *c, const llama_batch *b, int site, const kmat *w, const float *x, float *out) {
    kbackend *kb = c->kb;
    const model_config *cfg = &c->m->cfg;
    const int H = cfg->hidden_size;
    bool final = site == 2 * cfg->n_layers, any = false;
    int n = final ? b->n_logits : b->n_tokens;
    for (int i = 0; i < b->n_segs && !any; i++)
        any = b->segs[i].ad && b->segs[i].ad->kind == ADAPTER_LN_TUNING && b->segs[i].ad->ln &&
              b->segs[i].ad->ln[site].data;
    if (!any) return kb->ops->rmsnorm(kb, x, w, n, H, cfg->rms_norm_eps, out);
    /* runs of rows (token rows; at the final norm the logit rows, in row order) sharing a weight */
    for (int r0 = 0; r0 < n;) {
        const kmat *wr = norm_weight(b, final ? b->logit_rows[r0] : r0, site, w);
        int r1 = r0 + 1;
        while (r1 < n && norm_weight(b, final ? b->logit_rows[r1] : r1, site, w) == wr) r1++;
        CHECK(kb->ops->rmsnorm(kb, x + (size_t)r0 * H, wr, r1 - r0, H, cfg->rms_norm_eps, out + (size_t)r0 * H));
        r0 = r1;
    }
    return 0;
}

static int apply_sgmv(llama_ctx *c, int n_sg, const ksgmv *sg, int ld_t, const float *in, int in_dim, int out_dim,
                      float *out) {
    kbackend *kb = c->kb;
    for (int i = 0; i < n_sg; i++) {
        CHECK(kb->ops->sgmv_shrink(kb, in, in_dim, &sg[i], c->ws, ld_t));
        CHECK(kb->ops->sgmv_expand(kb, c->ws, ld_t, &sg[i], out_dim, out));
    }
    return 0;
}

/* dst[T, dim] = src (no device-to-device copy op: zero then add). */
static int copy_rows(kbackend *kb, float *dst, const float *src, int T, int dim) {
    CHECK(kb->ops->memset0(kb, dst, (size_t)T * dim * sizeof(float)));
    return kb->ops->add(kb, dst, src, (int64_t)T * dim);
}

/* The frozen bias of (layer, module), or NULL (no bias / not an attention projection). */
static const kmat *proj_bias(const llama_ctx *c, int layer, adapter_module m) {
    const model_layer *L = &c->m->layers[layer];
    const kmat *b = m == AMOD_Q ? &L->bq : m == AMOD_K ? &L->bk : m == AMOD_V ? &L->bv : m == AMOD_O ? &L->bo : NULL;
    return b && b->data ? b : NULL;
}

/* Whether projection (layer, m) multiplies a transformed copy of its input in this step
 * (OFT / BOFT rotation, IA3 on the input side): such a projection cannot share its base
 * matmul with others. */
static bool project_own_input(const llama_ctx *c, int layer, adapter_module m) {
    const llama_plan *p = c->plan;
    const llama_plan_mod *pm = p->n_segs ? &p->mod[layer * AMOD_COUNT + m] : NULL;
    return pm && (pm->ia3_in || pm->rot.n_segs);
}

/* What follows the base matmul out = in·Wᵀ of projection (layer, m): the adapters' deltas,
 * DoRA, bias, IA3 output scale. `in` is the input the base matmul read. */
static int project_tail(llama_ctx *c, int layer, adapter_module m, const kmat *w, const float *in, int T, float *out);

int llama__project(llama_ctx *c, int layer, adapter_module m, const kmat *w, const float *in, int T, float *out,
                   bool accumulate) {
    kbackend *kb = c->kb;
    const llama_plan *p = c->plan;
    const llama_plan_mod *pm = p->n_segs ? &p->mod[layer * AMOD_COUNT + m] : NULL;
    int in_dim = (int)w->cols;
    if (pm && pm->rot.n_segs) { /* OFT / BOFT rows: their own rotated copy of the input */
        CHECK(kb->ops->seg_rotate(kb, in, in_dim, &pm->rot, c->rot_in));
        in = c->rot_in;
    }
    if (pm && pm->ia3_in) {
        CHECK(copy_rows(kb, c->tmp_in, in, T, in_dim));
        CHECK(kb->ops->seg_scale(kb, c->tmp_in, in_dim, p->n_segs, p->seg_start, pm->ia3_in));
        in = c->tmp_in;
    }
    CHECK(kb->ops->matmul(kb, in, T, w, out, accumulate ? 1.0f : 0.0f));
    return project_tail(c, layer, m, w, in, T, out);
}

int llama__project_group(llama_ctx *c, int layer, int count, const adapter_module *m, const kmat *const *w,
                         const float *in, int T, float *const *out) {
    bool shared = count <= KMATMUL_GROUP_MAX;
    for (int g = 0; g < count && shared; g++) shared = !project_own_input(c, layer, m[g]);
    if (!shared) { /* one at a time, each with its own input */
        for (int g = 0; g < count; g++) CHECK(llama__project(c, layer, m[g], w[g], in, T, out[g], false));
        return 0;
    }
    CHECK(kops_matmul_group(c->kb, in, T, count, w, out, 0.0f));
    for (int g = 0; g < count; g++) CHECK(project_tail(c, layer, m[g], w[g], in, T, out[g]));
    return 0;
}

static int project_tail(llama_ctx *c, int layer, adapter_module m, const kmat *w, const float *in, int T, float *out) {
    kbackend *kb = c->kb;
    const llama_plan *p = c->plan;
    const llama_plan_mod *pm = p->n_segs ? &p->mod[layer * AMOD_COUNT + m] : NULL;
    int in_dim = (int)w->cols, out_dim = (int)w->rows;
    const kmat *bias = proj_bias(c, layer, m);
    /* DoRA scales W x + ΔW x but not the bias (PEFT's DoraLinearLayer subtracts it from the
     * base result first): the bias comes after that scale, and before the IA3 output scale
     * (which scales it, as PEFT's base_layer(x) includes it). One order for every row of
     * every batch with segments — W x, + delta, · DoRA factor, + b, · IA3 — so a row's
     * rounding does not depend on which adapters share its step (adding b before a LoRA
     * delta only in DoRA-free batches made a Qwen2 LoRA row differ by 1 ulp in a batch with
     * a DoRA row). PEFT adds a LoRA delta after b: the same sum, rounded in another order. */
    if (!pm) return bias ? kb->ops->add_bias(kb, out, T, bias) : 0;
    CHECK(apply_sgmv(c, pm->n_sg, pm->sg, pm->ld_t, in, in_dim, out_dim, out));
    if (pm->any_delta) /* dense deltas (adapter_lora.delta): y += t·(x·ΔWᵀ) */
        for (int i = 0; i < p->n_segs; i++) {
            const kmat *dw = pm->delta[i];
            int r0 = p->segs[i].row_start, nr = p->segs[i].row_end - r0;
            if (!dw || nr <= 0) continue;
            const float *xi = in + (size_t)r0 * in_dim;
            float *yi = out + (size_t)r0 * out_dim;
            const struct llama_plan_tscale *ts = &p->tscale[i];
            if (!ts->seg_start) {
                CHECK(kb->ops->matmul(kb, xi, nr, dw, yi, 1.0f));
                continue;
            }
            CHECK(kb->ops->matmul(kb, xi, nr, dw, c->dense_tmp, 0.0f));
            CHECK(kb->ops->seg_scale(kb, c->dense_tmp, out_dim, 1, ts->seg_start, ts->vec));
            CHECK(kb->ops->add(kb, yi, c->dense_tmp, (int64_t)nr * out_dim));
        }
    if (pm->dora) CHECK(kb->ops->seg_scale(kb, out, out_dim, p->n_segs, p->seg_start, pm->dora));
    if (pm->any_bias) { /* some segments replace the bias: each segment's rows add their own */
        for (int i = 0; i < p->n_segs; i++) {
            const kmat *sb = pm->bias[i] ? pm->bias[i] : bias;
            int r0 = p->segs[i].row_start, nr = p->segs[i].row_end - r0;
            if (sb && nr > 0) CHECK(kb->ops->add_bias(kb, out + (size_t)r0 * out_dim, nr, sb));
        }
    } else if (bias) {
        CHECK(kb->ops->add_bias(kb, out, T, bias));
    }
    if (pm->ia3_out) CHECK(kb->ops->seg_scale(kb, out, out_dim, p->n_segs, p->seg_start, pm->ia3_out));
    return 0;
}

/* Whether no segment of the step does anything to projection pm beyond the base matmul. */
static bool plan_mod_idle(const llama_plan_mod *pm) {
    return pm->n_sg == 0 && !pm->dora && !pm->ia3_out && !pm->ia3_in && !pm->any_bias && !pm->any_delta &&
           pm->rot.n_segs == 0;
}

bool llama__mod_idle(const llama_ctx *c, int layer, adapter_module m) {
    const llama_plan *p = c->plan;
    return !p->n_segs || plan_mod_idle(&p->mod[layer * AMOD_COUNT + m]);
}

int llama__sublayer_out(llama_ctx *c, const llama_batch *b, int layer, adapter_module m, const kmat *w,
                        const float *in, int T, int place, const kmat *post_norm) {
    kbackend *kb = c->kb;
    const llama_plan *p = c->plan;
    const llama_plan_bn *pb = p->n_segs ? &p->bn[layer * 2 + place] : NULL;
    bool bottleneck = pb && pb->n_sg > 0;
    if (post_norm) { /* Gemma: a = proj(in) with its deltas, x += post_norm(a); never fused */
        const model_config *cfg = &c->m->cfg;
        if (bottleneck) return PEFTD_EUNSUPPORTED; /* refused at load (model_load_adapter) */
        CHECK(llama__project(c, layer, m, w, in, T, c->tmp, false));
        CHECK(llama__norm(c, b, 2 * cfg->n_layers + 1 + 2 * layer + place, post_norm, c->tmp, c->tmp));
        return kb->ops->add(kb, c->x, c->tmp, (int64_t)T * cfg->hidden_size);
    }
    /* Without adapters, x += proj(in) is fused into the matmul (beta = 1, computed as
     * x + (W·in)). With adapters, the sub-layer output is always formed on its own first,
     * a = W·in + Δ, then x += a: the same rounding for a row whichever adapters share its
     * step, so a sequence's output does not depend on its batch. */
    /* ... and a projection with a bias (Llama attention_bias on o_proj) is never fused either:
     * x + (W·in) + b rounds differently from x + (W·in + b), which a row gets once another
     * segment of its step has an adapter (a base row changed by one ulp in a mixed batch). */
    /* ... and a module no segment adapts in this step (LoRA on q, v only: o_proj, down_proj)
     * is fused as in an adapter-free step: x + (W·in) is the same sum as a = W·in; x += a,
     * so a row's bits do not depend on it (the adapter-free step already relies on that). */
    if (llama__mod_idle(c, layer, m) && !bottleneck && !proj_bias(c, layer, m))
        return llama__project(c, layer, m, w, in, T, c->x, true);
    int H = c->m->cfg.hidden_size;
    CHECK(llama__project(c, layer, m, w, in, T, c->tmp, false)); /* a */
    if (!bottleneck) return kb->ops->add(kb, c->x, c->tmp, (int64_t)T * H);
    /* z = a; plus h for the segments whose adapter sets original_ln_before; h alone for the
     * parallel ones (x still holds h here) */
    CHECK(copy_rows(kb, c->tmp_in, c->tmp, T, H));
    for (int i = 0; i < p->n_segs; i++) {
        int r0 = p->segs[i].row_start, n = p->segs[i].row_end - r0;
        if (n <= 0) continue;
        if (pb->input[i] == LLAMA_BN_IN_A_PLUS_H)
            CHECK(kb->ops->add(kb, c->tmp_in + (size_t)r0 * H, c->x + (size_t)r0 * H, (int64_t)n * H));
        else if (pb->input[i] == LLAMA_BN_IN_H)
            CHECK(copy_rows(kb, c->tmp_in + (size_t)r0 * H, c->x + (size_t)r0 * H, n, H));
    }
    CHECK(kb->ops->add(kb, c->x, c->tmp, (int64_t)T * H)); /* x = h + a */
    return apply_sgmv(c, pb->n_sg, pb->sg, pb->ld_t, c->tmp_in, H, H, c->x);
}
