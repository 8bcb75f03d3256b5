/* adapter_store/adapter_blob.c — one loaded adapter <-> one self-contained blob (format in
 * adapter_blob.h): the safetensors writer for it here, and the hostile-input reader that
 * rebuilds the adapter in its one host block in adapter_blob_read.c. Host memory only, any thread: the tiers
 * install a decoded adapter into a backend (adapter_install) on the engine thread.
 *
 * Tensor names (l = layer, m = adapter_module_name, all in the adapter's loaded dtypes):
 *   lora.<l>.<m>.a  [rank, in]   lora.<l>.<m>.b  [out, rank]   lora.<l>.<m>.dora  [out] F32
 *   shared.<k> [rows, cols] F32: a matrix held once per process (adapter_shared.h, VeRA's
 *   projection slices), written once however many modules read it; metadata "shared" =
 *   [{rows, cols}] in k order, and a module that reads shared.<k> as its A has "a_shared": k
 *   and no lora.<l>.<m>.a (absent in blobs without shared matrices)
 *   delta.<l>.<m> [out, in] (a materialised dense delta; metadata "delta" = [{layer, module}])
 *   lora.<l>.<m>.dora_stats [out, ADAPTER_DORA_STATS] F32 (format >= 2; kept in host memory)
 *   ia3.<l>.<m>     [out] or [in] F32 (side in ia3_input)
 *   prompt          [n_virtual, hidden]
 *   prefix.<l>.k / prefix.<l>.v   [n_virtual, n_kv_heads * head_dim] F32
 *   bn_attn.<l>.down [size, hidden]  .down_bias [size] F32  .up [hidden, size]  .up_bias [hidden] F32
 *   (bn_ffn.<l>.* likewise)
 *   lm_head, embed  [vocab, hidden]
 *   lora.<l>.<m>.bias [out] F32 (lora_bias)   lora.<l>.<m>.base_bias [out] (bias "all"/"lora_only")
 *   embed_lora.a [vocab, rank]  embed_lora.b [hidden, rank]   head_lora.a [rank, hidden]
 *   head_lora.b [vocab, rank]   (LoRA on embed_tokens / lm_head; metadata embed_lora /
 *   head_lora = {rank, scale}; the per-module "bias" flag and the "base_bias" list are
 *   optional: absent in blobs written before them, meaning none)
 *   cls_head [n_labels, hidden] F32 with metadata "labels" (SEQ_CLS; both absent otherwise)
 *   ln.<i> [1, hidden] (LN tuning: norm i's weight)
 *   rot.<l>.<m>.<f> [in or block, block] F32, rot.<l>.<m>.s [out] F32 (OFT / BOFT: factor f's
 *   blocks, BOFT's output scale; metadata "rot" describes each factor, collect_rot); OFT / BOFT
 *   modules served dense write delta.<l>.<m> as above
 * __metadata__["peftd"] is a JSON object: format, kind, source, sha256, n_params, bytes,
 * n_layers, max_rank, ranks, n_virtual, the base dims it was built for, per-module LoRA
 * rank / scale / DoRA flag, IA3 sides, per-module bottleneck settings.
 *
 * Reading trusts nothing: st_parse checks the container; here every tensor must be the one
 * the metadata implies, with the exact shape the base gives, an allowed dtype and finite
 * values; every scalar is range-checked; tensors nobody claims are refused. Floats go
 * through JSON as doubles, which cJSON prints with enough digits to round-trip exactly.
 */
#include "adapter_store/adapter_blob.h"

#include <cJSON.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_blob_internal.h"
#include "adapter_store/adapter_internal.h"
#include "adapter_store/safetensors.h"

static void learn(int *dst, int64_t v) {
    if (*dst < 0 && v > 0 && v <= INT32_MAX) *dst = (int)v;
}

/* Without a base, the dims follow from the adapter's own tensors where any shows them. */
static bdims dims_of_adapter(const adapter *a) {
    bdims d = {-1, -1, a->n_layers, -1, -1, -1};
    int n = a->n_layers * AMOD_COUNT;
    for (int i = 0; a->kind == ADAPTER_LORA && a->lora && i < n; i++) {
        const adapter_lora *l = &a->lora[i];
        if (!l->rank) continue;
        int *o, *in;
        switch ((adapter_module)(i % AMOD_COUNT)) {
        case AMOD_Q: o = &d.q_dim, in = &d.hidden; break;
        case AMOD_K:
        case AMOD_V: o = &d.kv_dim, in = &d.hidden; break;
        case AMOD_O: o = &d.hidden, in = &d.q_dim; break;
        case AMOD_GATE:
        case AMOD_UP: o = &d.intermediate, in = &d.hidden; break;
        default: o = &d.hidden, in = &d.intermediate; break;
        }
        learn(o, l->b.rows);
        learn(in, l->a.cols);
    }
    if (a->lm_head.data) learn(&d.hidden, a->lm_head.cols), learn(&d.vocab, a->lm_head.rows);
    if (a->embed.data) learn(&d.hidden, a->embed.cols), learn(&d.vocab, a->embed.rows);
    if (a->kind == ADAPTER_PROMPT_TUNING && a->prompt.data) learn(&d.hidden, a->prompt.cols);
    for (int l = 0; a->kind == ADAPTER_BOTTLENECK && a->bn_attn && a->bn_ffn && l < a->n_layers; l++) {
        if (a->bn_attn[l].size) learn(&d.hidden, a->bn_attn[l].down.cols);
        if (a->bn_ffn[l].size) learn(&d.hidden, a->bn_ffn[l].down.cols);
    }
    /* prefix tuning's only tensor was prompt_embeddings [n_virtual, 2 * L * kv], all of
     * it counted in n_params */
    if (a->kind == ADAPTER_PREFIX_TUNING && !a->prefix_from_zero && a->n_virtual > 0 && a->n_layers > 0) {
        int64_t per = (int64_t)2 * a->n_layers * a->n_virtual;
        if (a->n_params > 0 && a->n_params % per == 0) learn(&d.kv_dim, a->n_params / per);
    }
    return d;
}

/* ================================================================ writing */

typedef struct {
    char name[48];
    kdtype dtype;
    int ndim;
    int64_t d0, d1;  /* d1 = 1 for vectors */
    const void *src; /* host memory */
    size_t bytes;
} wtensor;

typedef struct {
    wtensor *t;
    size_t n, cap;
} wlist;

static int wl_add(wlist *w, const char *name, kdtype dt, int ndim, int64_t d0, int64_t d1, const void *src) {
    if (d0 < 0 || d1 < 0) return PEFTD_EINVAL; /* a dim only the base knows */
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        wtensor *t = realloc(w->t, cap * sizeof *t);
        if (!t) return PEFTD_ENOMEM;
        w->t = t;
        w->cap = cap;
    }
    wtensor *t = &w->t[w->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dt;
    t->ndim = ndim;
    t->d0 = d0;
    t->d1 = ndim == 2 ? d1 : 1;
    t->src = src;
    t->bytes = (size_t)(t->d0 * t->d1) * kdtype_size(dt);
    return 0;
}

static int wl_mat(wlist *w, const char *name, const kmat *m) {
    return wl_add(w, name, m->dtype, 2, m->rows, m->cols, m->data);
}

/* cJSON's Add* return NULL on allocation failure. */
static bool add_num(cJSON *o, const char *k, double v) { return cJSON_AddNumberToObject(o, k, v) != NULL; }
static bool add_bool(cJSON *o, const char *k, bool v) { return cJSON_AddBoolToObject(o, k, v) != NULL; }

static bool add_item(cJSON *arr, cJSON *it) {
    if (it && cJSON_AddItemToArray(arr, it)) return true;
    cJSON_Delete(it);
    return false;
}

/* Dense deltas (adapter_lora.delta): "delta": [{layer, module}], tensor delta.<layer>.<module>. */
static int collect_delta(const adapter *a, wlist *w, cJSON *meta) {
    char nm[48];
    int rc;
    cJSON *arr = NULL;
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) {
        const adapter_lora *l = &a->lora[i];
        if (!l->delta.data) continue;
        if (!arr && !(arr = cJSON_AddArrayToObject(meta, "delta"))) return PEFTD_ENOMEM;
        int layer = i / AMOD_COUNT;
        const char *mn = adapter_module_name((adapter_module)(i % AMOD_COUNT));
        cJSON *o = cJSON_CreateObject();
        if (!add_item(arr, o) || !add_num(o, "layer", layer) || !cJSON_AddStringToObject(o, "module", mn))
            return PEFTD_ENOMEM;
        snprintf(nm, sizeof nm, "delta.%d.%s", layer, mn);
        if ((rc = wl_mat(w, nm, &l->delta))) return rc;
    }
    return 0;
}

/* The distinct shared matrices the modules' A read (adapter_shared.h), in first-use order: *sh
 * (malloc'd, n_sh of them; NULL when none), tensors shared.<k> and metadata "shared". */
static int collect_shared(const adapter *a, wlist *w, cJSON *meta, adapter_shared ***sh, int *n_sh) {
    char nm[48];
    int rc;
    cJSON *arr = NULL;
    *sh = NULL, *n_sh = 0;
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) {
        adapter_shared *s = a->lora[i].rank ? adapter__shared_of(a, &a->lora[i].a) : NULL;
        int k = 0;
        while (s && k < *n_sh && (*sh)[k] != s) k++;
        if (!s || k < *n_sh) continue;
        adapter_shared **p = realloc(*sh, (size_t)(*n_sh + 1) * sizeof *p);
        if (!p) return PEFTD_ENOMEM;
        *sh = p;
        p[(*n_sh)++] = s;
        cJSON *o = cJSON_CreateObject();
        if ((!arr && !(arr = cJSON_AddArrayToObject(meta, "shared"))) || !add_item(arr, o) ||
            !add_num(o, "rows", (double)adapter__shared_rows(s)) || !add_num(o, "cols", (double)adapter__shared_cols(s)))
            return PEFTD_ENOMEM;
        snprintf(nm, sizeof nm, "shared.%d", k);
        if ((rc = wl_add(w, nm, KDT_F32, 2, adapter__shared_rows(s), adapter__shared_cols(s), adapter__shared_host(s))))
            return rc;
    }
    return 0;
}

static int collect_lora(const adapter *a, wlist *w, cJSON *meta) {
    char nm[48];
    int rc, n_sh = 0;
    adapter_shared **sh = NULL;
    cJSON *arr = cJSON_AddArrayToObject(meta, "lora");
    if (!arr) return PEFTD_ENOMEM;
    if ((rc = collect_delta(a, w, meta)) || (rc = collect_shared(a, w, meta, &sh, &n_sh))) {
        free(sh);
        return rc;
    }
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) {
        const adapter_lora *l = &a->lora[i];
        if (!l->rank) continue;
        int layer = i / AMOD_COUNT;
        const char *mn = adapter_module_name((adapter_module)(i % AMOD_COUNT));
        cJSON *o = cJSON_CreateObject();
        adapter_shared *s = adapter__shared_of(a, &l->a);
        int k = 0;
        while (s && sh[k] != s) k++; /* collect_shared listed every one */
        if (!add_item(arr, o) || !add_num(o, "layer", layer) || !cJSON_AddStringToObject(o, "module", mn) ||
            !add_num(o, "rank", l->rank) || !add_num(o, "scale", l->scale) || !add_bool(o, "dora", l->dora) ||
            !add_bool(o, "bias", l->bias) || (s && !add_num(o, "a_shared", k))) {
            free(sh);
            return PEFTD_ENOMEM;
        }
        snprintf(nm, sizeof nm, "lora.%d.%s.bias", layer, mn);
        if (l->bias && (rc = wl_add(w, nm, KDT_F32, 1, l->b.rows, 1, l->bias))) break;
        snprintf(nm, sizeof nm, "lora.%d.%s.a", layer, mn);
        if (!s && (rc = wl_mat(w, nm, &l->a))) break;
        snprintf(nm, sizeof nm, "lora.%d.%s.b", layer, mn);
        if ((rc = wl_mat(w, nm, &l->b))) break;
        snprintf(nm, sizeof nm, "lora.%d.%s.dora", layer, mn);
        if (l->dora && (rc = wl_add(w, nm, KDT_F32, 1, l->b.rows, 1, l->dora))) break;
        snprintf(nm, sizeof nm, "lora.%d.%s.dora_stats", layer, mn);
        if (l->dora && !l->dora_stats) rc = PEFTD_EINVAL; /* every loaded DoRA module has them */
        if (rc || (l->dora && (rc = wl_add(w, nm, KDT_F32, 2, l->b.rows, ADAPTER_DORA_STATS, l->dora_stats)))) break;
    }
    free(sh);
    if (rc) return rc;
    cJSON *bb = cJSON_AddArrayToObject(meta, "base_bias");
    if (!bb) return PEFTD_ENOMEM;
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) {
        const adapter_lora *l = &a->lora[i];
        if (!l->base_bias.data) continue;
        int layer = i / AMOD_COUNT;
        const char *mn = adapter_module_name((adapter_module)(i % AMOD_COUNT));
        cJSON *o = cJSON_CreateObject();
        if (!add_item(bb, o) || !add_num(o, "layer", layer) || !cJSON_AddStringToObject(o, "module", mn))
            return PEFTD_ENOMEM;
        snprintf(nm, sizeof nm, "lora.%d.%s.base_bias", layer, mn);
        kmat v = l->base_bias;
        v.rows = v.cols, v.cols = 1; /* written 1-D: [out] */
        if ((rc = wl_add(w, nm, v.dtype, 1, v.rows, 1, v.data))) return rc;
    }
    const adapter_lora *top[2] = {&a->embed_lora, &a->head_lora};
    static const char *const top_name[2] = {"embed_lora", "head_lora"};
    for (int k = 0; k < 2; k++) {
        if (!top[k]->rank) continue;
        cJSON *o = cJSON_AddObjectToObject(meta, top_name[k]);
        if (!o || !add_num(o, "rank", top[k]->rank) || !add_num(o, "scale", top[k]->scale)) return PEFTD_ENOMEM;
        snprintf(nm, sizeof nm, "%s.a", top_name[k]);
        if ((rc = wl_mat(w, nm, &top[k]->a))) return rc;
        snprintf(nm, sizeof nm, "%s.b", top_name[k]);
        if ((rc = wl_mat(w, nm, &top[k]->b))) return rc;
    }
    return 0;
}

/* OFT / BOFT (adapter_rot): "rot": [{layer, module, out_scale, factors: [{block, shared,
 * perm_blocks, perm_half}]}], tensors rot.<l>.<m>.<f> [rows, block] F32 (the factor's blocks)
 * and rot.<l>.<m>.s [out] F32 (BOFT's boft_s). Permutations are not written: the reader rebuilds
 * them from their recipe (adapter__rot_stage_factor), as the importer did. */
static int collect_rot(const adapter *a, const bdims *d, wlist *w, cJSON *meta) {
    char nm[48];
    int rc;
    cJSON *arr = cJSON_AddArrayToObject(meta, "rot");
    if (!arr) return PEFTD_ENOMEM;
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) {
        const adapter_rot *ro = &a->rot[i];
        if (!ro->n_factors) continue;
        int layer = i / AMOD_COUNT, o, in;
        adapter_module m = (adapter_module)(i % AMOD_COUNT);
        const char *mn = adapter_module_name(m);
        cJSON *o_ = cJSON_CreateObject(), *fs;
        if (!add_item(arr, o_) || !add_num(o_, "layer", layer) || !cJSON_AddStringToObject(o_, "module", mn) ||
            !add_bool(o_, "out_scale", ro->out_scale) || !(fs = cJSON_AddArrayToObject(o_, "factors")))
            return PEFTD_ENOMEM;
        for (int f = 0; f < ro->n_factors; f++) {
            const adapter_rot_factor *rf = &ro->f[f];
            cJSON *e = cJSON_CreateObject();
            if (!add_item(fs, e) || !add_num(e, "block", rf->block) || !add_bool(e, "shared", rf->shared) ||
                !add_num(e, "perm_blocks", rf->perm_blocks) || !add_num(e, "perm_half", rf->perm_half))
                return PEFTD_ENOMEM;
            snprintf(nm, sizeof nm, "rot.%d.%s.%d", layer, mn, f);
            if ((rc = wl_mat(w, nm, &rf->r))) return rc;
        }
        module_dims(d, m, &o, &in);
        snprintf(nm, sizeof nm, "rot.%d.%s.s", layer, mn);
        if (ro->out_scale && (rc = wl_add(w, nm, KDT_F32, 1, o, 1, ro->out_scale))) return rc;
    }
    return 0;
}

static int collect_ia3(const adapter *a, const bdims *d, wlist *w, cJSON *meta) {
    char nm[48];
    int rc;
    cJSON *arr = cJSON_AddArrayToObject(meta, "ia3_input");
    if (!arr) return PEFTD_ENOMEM;
    for (int m = 0; m < AMOD_COUNT; m++)
        if (!add_item(arr, cJSON_CreateBool(a->ia3_input[m]))) return PEFTD_ENOMEM;
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) {
        if (!a->ia3[i]) continue;
        adapter_module m = (adapter_module)(i % AMOD_COUNT);
        int o, in;
        module_dims(d, m, &o, &in);
        snprintf(nm, sizeof nm, "ia3.%d.%s", i / AMOD_COUNT, adapter_module_name(m));
        if ((rc = wl_add(w, nm, KDT_F32, 1, a->ia3_input[m] ? in : o, 1, a->ia3[i]))) return rc;
    }
    return 0;
}

static int collect_bn(const adapter *a, wlist *w, cJSON *meta) {
    char nm[48];
    int rc;
    cJSON *arr = cJSON_AddArrayToObject(meta, "bottleneck");
    if (!arr) return PEFTD_ENOMEM;
    for (int l = 0; l < a->n_layers; l++) {
        for (int p = 0; p < 2; p++) {
            const adapter_bottleneck *B = p ? &a->bn_ffn[l] : &a->bn_attn[l];
            const char *pl = p ? "bn_ffn" : "bn_attn";
            if (!B->size) continue;
            cJSON *o = cJSON_CreateObject();
            if (!add_item(arr, o) || !cJSON_AddStringToObject(o, "place", pl) || !add_num(o, "layer", l) ||
                !add_num(o, "size", B->size) || !add_num(o, "act", B->act) || !add_num(o, "scaling", B->scaling) ||
                !add_bool(o, "residual_before_ln", B->residual_before_ln) ||
                !add_bool(o, "original_ln_before", B->original_ln_before) ||
                !add_bool(o, "original_ln_after", B->original_ln_after) || !add_bool(o, "parallel", B->parallel) ||
                !add_bool(o, "down_bias", B->down_bias) ||
                !add_bool(o, "up_bias", B->up_bias))
                return PEFTD_ENOMEM;
            snprintf(nm, sizeof nm, "%s.%d.down", pl, l);
            if ((rc = wl_mat(w, nm, &B->down))) return rc;
            snprintf(nm, sizeof nm, "%s.%d.down_bias", pl, l);
            if (B->down_bias && (rc = wl_add(w, nm, KDT_F32, 1, B->size, 1, B->down_bias))) return rc;
            snprintf(nm, sizeof nm, "%s.%d.up", pl, l);
            if ((rc = wl_mat(w, nm, &B->up))) return rc;
            snprintf(nm, sizeof nm, "%s.%d.up_bias", pl, l);
            if (B->up_bias && (rc = wl_add(w, nm, KDT_F32, 1, B->up.rows, 1, B->up_bias))) return rc;
        }
    }
    return 0;
}

/* Builds the tensor list and the "peftd" metadata object of a. */
static int collect(const adapter *a, const bdims *d, wlist *w, cJSON *meta) {
    char nm[48];
    int rc;
    cJSON *ranks, *base;
    if (!add_num(meta, "format", ADAPTER_BLOB_FORMAT) ||
        !cJSON_AddStringToObject(meta, "kind", adapter_kind_name(a->kind)) ||
        !cJSON_AddStringToObject(meta, "source", a->source) || !cJSON_AddStringToObject(meta, "sha256", a->sha256) ||
        !add_num(meta, "n_params", (double)a->n_params) || !add_num(meta, "bytes", (double)a->bytes) ||
        !add_num(meta, "n_layers", a->n_layers) || !add_num(meta, "max_rank", a->max_rank) ||
        !add_num(meta, "n_virtual", a->n_virtual) || !(ranks = cJSON_AddArrayToObject(meta, "ranks")) ||
        !(base = cJSON_AddObjectToObject(meta, "base")))
        return PEFTD_ENOMEM;
    for (int i = 0; i < a->n_ranks && i < 8; i++)
        if (!add_item(ranks, cJSON_CreateNumber(a->ranks[i]))) return PEFTD_ENOMEM;
    if ((a->rslora && !add_bool(meta, "rslora", true)) || (a->config_r && !add_num(meta, "config_r", a->config_r)))
        return PEFTD_ENOMEM;
    for (int i = 0; i < 6; i++)
        if (!add_num(base, DIM_KEYS[i], dim_at(d, i))) return PEFTD_ENOMEM;

    if (a->kind == ADAPTER_LORA && a->lora && (rc = collect_lora(a, w, meta))) return rc;
    if (a->kind == ADAPTER_IA3 && a->ia3 && (rc = collect_ia3(a, d, w, meta))) return rc;
    if ((a->kind == ADAPTER_OFT || a->kind == ADAPTER_BOFT) && /* factored modules, then dense ones */
        ((a->rot && (rc = collect_rot(a, d, w, meta))) || (a->lora && (rc = collect_delta(a, w, meta)))))
        return rc;
    if (a->kind == ADAPTER_PROMPT_TUNING && a->prompt.data && (rc = wl_mat(w, "prompt", &a->prompt))) return rc;
    for (int i = 0; a->kind == ADAPTER_LN_TUNING && a->ln && i < adapter_ln_sites(a); i++) {
        snprintf(nm, sizeof nm, "ln.%d", i);
        if (a->ln[i].data && (rc = wl_mat(w, nm, &a->ln[i]))) return rc;
    }
    if (adapter_has_prefix(a)) {
        if (a->prefix_from_zero && !cJSON_AddTrueToObject(meta, "prefix_from_zero")) return PEFTD_ENOMEM;
        for (int l = 0; l < a->n_layers; l++) {
            snprintf(nm, sizeof nm, "prefix.%d.k", l);
            if (a->prefix_k[l] && (rc = wl_add(w, nm, KDT_F32, 2, a->n_virtual, d->kv_dim, a->prefix_k[l]))) return rc;
            snprintf(nm, sizeof nm, "prefix.%d.v", l);
            if (a->prefix_v[l] && (rc = wl_add(w, nm, KDT_F32, 2, a->n_virtual, d->kv_dim, a->prefix_v[l]))) return rc;
        }
    }
    if (a->kind == ADAPTER_BOTTLENECK && a->bn_attn && a->bn_ffn && (rc = collect_bn(a, w, meta))) return rc;
    if (a->lm_head.data && (rc = wl_mat(w, "lm_head", &a->lm_head))) return rc;
    if (a->embed.data && (rc = wl_mat(w, "embed", &a->embed))) return rc;
    if (a->cls_head.data) { /* SEQ_CLS: the head and "labels" (absent in other blobs) */
        cJSON *labels = cJSON_AddArrayToObject(meta, "labels");
        for (int i = 0; labels && i < a->n_labels; i++)
            if (!add_item(labels, cJSON_CreateString(a->labels[i]))) return PEFTD_ENOMEM;
        if (!labels) return PEFTD_ENOMEM;
        if ((rc = wl_mat(w, "cls_head", &a->cls_head))) return rc;
    }
    return 0;
}

static const char *st_dt(kdtype t) { return t == KDT_F32 ? "F32" : t == KDT_F16 ? "F16" : "BF16"; }

/* The safetensors header: __metadata__ first, then the tensors in data order. */
static char *header_json(const wlist *w, const cJSON *meta) {
    char *out = NULL, *ms = cJSON_PrintUnformatted(meta);
    cJSON *h = cJSON_CreateObject(), *md;
    uint64_t off = 0;
    if (!ms || !h || !(md = cJSON_AddObjectToObject(h, "__metadata__")) || !cJSON_AddStringToObject(md, "peftd", ms))
        goto fail;
    for (size_t i = 0; i < w->n; i++) {
        const wtensor *t = &w->t[i];
        cJSON *o = cJSON_AddObjectToObject(h, t->name), *sh, *of;
        if (!o || !cJSON_AddStringToObject(o, "dtype", st_dt(t->dtype)) || !(sh = cJSON_AddArrayToObject(o, "shape")) ||
            !add_item(sh, cJSON_CreateNumber((double)t->d0)) ||
            (t->ndim == 2 && !add_item(sh, cJSON_CreateNumber((double)t->d1))) ||
            !(of = cJSON_AddArrayToObject(o, "data_offsets")) || !add_item(of, cJSON_CreateNumber((double)off)) ||
            !add_item(of, cJSON_CreateNumber((double)(off + t->bytes))))
            goto fail;
        off += t->bytes;
    }
    out = cJSON_PrintUnformatted(h);
fail:
    cJSON_Delete(h);
    free(ms);
    return out;
}

int adapter_blob_write_base(const adapter *a, const adapter_base *base, void **blob, size_t *len) {
    wlist w = {0};
    cJSON *meta = NULL;
    char *hdr = NULL;
    unsigned char *buf = NULL;
    int rc;
    if (blob) *blob = NULL;
    if (len) *len = 0;
    if (!a || !blob || !len || a->n_layers <= 0 || !adapter_on_host(a)) return PEFTD_EINVAL;
    if (base && base->n_layers != a->n_layers) return PEFTD_EINVAL;
    bdims d = base ? dims_of_base(base) : dims_of_adapter(a);
    if (!(meta = cJSON_CreateObject())) {
        rc = PEFTD_ENOMEM;
        goto fail;
    }
    if ((rc = collect(a, &d, &w, meta))) goto fail;
    if (!(hdr = header_json(&w, meta))) {
        rc = PEFTD_ENOMEM;
        goto fail;
    }
    /* the header is padded with spaces to 8 bytes, as the safetensors writer does */
    size_t hl = strlen(hdr), hpad = (hl + 7) / 8 * 8, data = 0;
    for (size_t i = 0; i < w.n; i++) data += w.t[i].bytes;
    size_t total = 8 + hpad + data;
    if (!(buf = malloc(total))) {
        rc = PEFTD_ENOMEM;
        goto fail;
    }
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hpad >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    memset(buf + 8 + hl, ' ', hpad - hl);
    size_t off = 8 + hpad;
    for (size_t i = 0; i < w.n; i++) {
        if (w.t[i].bytes) memcpy(buf + off, w.t[i].src, w.t[i].bytes);
        off += w.t[i].bytes;
    }
    *blob = buf;
    *len = total;
    buf = NULL;
fail:
    free(buf);
    free(hdr);
    cJSON_Delete(meta);
    free(w.t);
    return rc;
}

int adapter_blob_write(const adapter *a, void **blob, size_t *len) { return adapter_blob_write_base(a, NULL, blob, len); }
