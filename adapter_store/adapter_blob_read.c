/* adapter_store/adapter_blob_read.c — the blob reader (format and tensor names in
 * adapter_blob.c / adapter_blob.h): trusts nothing; every tensor must be the one the metadata
 * implies, with the exact shape the base gives, an allowed dtype and finite values; every
 * scalar is range-checked; tensors nobody claims are refused. Host memory only, any thread.
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

/* ================================================================ reading */

typedef struct {
    st_file *st;
    bool *used;
    const adapter_base *base;
    bdims d;
    adapter *a;
    adapter__stage stage; /* claimed tensors, borrowed from the blob */
    int mat_dtype[2]; /* one dtype for every LoRA A/B (0) / bottleneck down/up (1); -1 unset */
    int format;       /* the blob's format version */
    char *err;
    size_t errlen;
} rctx;

static int rfail(rctx *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int rfail(rctx *c, int status, const char *fmt, ...) {
    if (c->err && c->errlen) {
        int n = snprintf(c->err, c->errlen, "adapter blob: ");
        va_list ap;
        va_start(ap, fmt);
        if (n > 0 && (size_t)n < c->errlen) vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* NaN/Inf are all-ones exponents; testing the bits avoids converting every element. */
static bool all_finite(const void *data, kdtype dt, size_t n, size_t *bad) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        bool inf_nan;
        if (dt == KDT_F32) {
            uint32_t u;
            memcpy(&u, p + 4 * i, 4);
            inf_nan = (u & 0x7f800000u) == 0x7f800000u;
        } else {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            inf_nan = dt == KDT_F16 ? (h & 0x7c00u) == 0x7c00u : (h & 0x7f80u) == 0x7f80u;
        }
        if (inf_nan) {
            *bad = i;
            return false;
        }
    }
    return true;
}

/* Claims tensor name: exact shape (ndim 1: [d0]; 2: [d0, d1]), dtype F32 for vectors,
 * F32/F16/BF16 for matrices (group >= 0: the same for every matrix of that group),
 * finite values; staged for the adapter's block as *mat or *vec. */
static int claim(rctx *c, const char *name, int ndim, int64_t d0, int64_t d1, int group, kmat *mat,
                 const float **vec) {
    const st_tensor *t = st_find(c->st, name);
    if (!t) return rfail(c, PEFTD_EFORMAT, "tensor '%s' is missing", name);
    c->used[st_index(c->st, t)] = true;
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
        char want[64];
        if (ndim == 2) snprintf(want, sizeof want, "[%lld, %lld]", (long long)d0, (long long)d1);
        else snprintf(want, sizeof want, "[%lld]", (long long)d0);
        return rfail(c, PEFTD_EINVAL, "tensor '%s' does not fit base %s (expected shape %s)", name, c->base->name,
                     want);
    }
    kdtype kd;
    if (!st_dtype_to_kdtype(t->dtype, &kd) || (vec && kd != KDT_F32))
        return rfail(c, PEFTD_EFORMAT, "tensor '%s' has dtype %s", name, st_dtype_name(t->dtype));
    if (group >= 0) {
        if (c->mat_dtype[group] >= 0 && c->mat_dtype[group] != (int)kd)
            return rfail(c, PEFTD_EFORMAT, "tensor '%s' has dtype %s, unlike the adapter's other matrices", name,
                         st_dtype_name(t->dtype));
        c->mat_dtype[group] = (int)kd;
    }
    size_t bad;
    if (!all_finite(t->data, kd, (size_t)t->numel, &bad))
        return rfail(c, PEFTD_EINVAL, "tensor '%s' holds a non-finite value at element %zu", name, bad);
    if (adapter__stage_push(&c->stage, (void *)t->data, t->nbytes, false, mat, vec))
        return rfail(c, PEFTD_ENOMEM, "out of memory");
    if (mat) *mat = (kmat){.data = NULL, .dtype = kd, .rows = ndim == 2 ? d0 : 1, .cols = ndim == 2 ? d1 : d0};
    return 0;
}

/* ---- typed metadata fields (absent or wrong type -> PEFTD_EFORMAT naming the field) */

static int jint(rctx *c, const cJSON *o, const char *k, double lo, double hi, int64_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi)
        return rfail(c, PEFTD_EFORMAT, "metadata field '%s' is missing or out of range", k);
    *out = (int64_t)v->valuedouble;
    return 0;
}

static int jfloat(rctx *c, const cJSON *o, const char *k, float *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || fabs(v->valuedouble) > FLT_MAX)
        return rfail(c, PEFTD_EFORMAT, "metadata field '%s' is missing or not a finite float", k);
    *out = (float)v->valuedouble;
    return 0;
}

static int jbool(rctx *c, const cJSON *o, const char *k, bool *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsBool(v)) return rfail(c, PEFTD_EFORMAT, "metadata field '%s' is missing or not a boolean", k);
    *out = cJSON_IsTrue(v);
    return 0;
}

static int jstr(rctx *c, const cJSON *o, const char *k, char *dst, size_t cap) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= cap)
        return rfail(c, PEFTD_EFORMAT, "metadata field '%s' is missing, not a string or too long", k);
    memcpy(dst, v->valuestring, strlen(v->valuestring) + 1);
    return 0;
}

static int jarray(rctx *c, const cJSON *o, const char *k, const cJSON **out) {
    *out = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsArray(*out)) return rfail(c, PEFTD_EFORMAT, "metadata field '%s' is missing or not an array", k);
    return 0;
}

static int module_of(rctx *c, const cJSON *o, adapter_module *m) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "module");
    for (int i = 0; cJSON_IsString(v) && i < AMOD_COUNT; i++)
        if (!strcmp(v->valuestring, adapter_module_name((adapter_module)i))) {
            *m = (adapter_module)i;
            return 0;
        }
    return rfail(c, PEFTD_EFORMAT, "metadata field 'module' is missing or unknown");
}

/* ---- kinds */

/* DoRA row statistics into host memory: format >= 2 carries them ("lora.<l>.<m>.dora_stats",
 * claimed like any tensor but copied, not uploaded); format 1 did not, so they are
 * recomputed from the base's host weights and the blob's A, B and factor f = m/||W + ΔW||
 * (m_j = f_j·||W_j + ΔW_j||). */
static int read_dora_stats(rctx *c, int layer, adapter_module m, adapter_lora *l) {
    char nm[48];
    int64_t o = l->b.rows;
    if (!(l->dora_stats = malloc((size_t)o * ADAPTER_DORA_STATS * sizeof *l->dora_stats)))
        return rfail(c, PEFTD_ENOMEM, "out of memory");
    if (c->format >= 2) {
        snprintf(nm, sizeof nm, "lora.%d.%s.dora_stats", layer, adapter_module_name(m));
        const st_tensor *t = st_find(c->st, nm);
        if (!t) return rfail(c, PEFTD_EFORMAT, "tensor '%s' is missing", nm);
        c->used[st_index(c->st, t)] = true;
        size_t bad;
        if (t->ndim != 2 || t->shape[0] != o || t->shape[1] != ADAPTER_DORA_STATS || t->dtype != ST_F32)
            return rfail(c, PEFTD_EFORMAT, "tensor '%s' is not F32 [%lld, %d]", nm, (long long)o, ADAPTER_DORA_STATS);
        if (!all_finite(t->data, KDT_F32, (size_t)t->numel, &bad))
            return rfail(c, PEFTD_EINVAL, "tensor '%s' holds a non-finite value at element %zu", nm, bad);
        memcpy(l->dora_stats, t->data, t->nbytes);
        return 0;
    }
    const char *mn = adapter_module_name(m);
    const st_tensor *ta, *tb, *tf;
    snprintf(nm, sizeof nm, "lora.%d.%s.a", layer, mn);
    ta = st_find(c->st, nm);
    snprintf(nm, sizeof nm, "lora.%d.%s.b", layer, mn);
    tb = st_find(c->st, nm);
    snprintf(nm, sizeof nm, "lora.%d.%s.dora", layer, mn);
    tf = st_find(c->st, nm);
    float *ones = malloc((size_t)o * sizeof *ones), *inv = malloc((size_t)o * sizeof *inv), f1;
    if (!ones || !inv) {
        free(ones);
        free(inv);
        return rfail(c, PEFTD_ENOMEM, "out of memory");
    }
    for (int64_t j = 0; j < o; j++) ones[j] = 1.0f;
    char why[300] = "";
    /* claimed above: present, shapes checked, one of F32/F16/BF16 */
    int rc = adapter__dora_norms(c->base, layer, m, l, l->a.dtype, ta->data, tb->data, ones, inv, l->dora_stats,
                                 why, sizeof why);
    for (int64_t j = 0; rc == 0 && j < o; j++) {
        memcpy(&f1, (const unsigned char *)tf->data + 4 * j, 4);
        l->dora_stats[j * ADAPTER_DORA_STATS] = f1 / inv[j]; /* inv = 1/||W_j + ΔW_j|| */
    }
    free(ones);
    free(inv);
    if (rc) return rfail(c, rc, "format 1 DoRA module %d.%s: %s", layer, mn, why);
    return 0;
}

/* The blob's shared matrices (metadata "shared", tensors shared.<k>: F32, finite), each found
 * in or added to the process's table (adapter_shared.h): *sh[k] with one reference each, held
 * by the reader until read_lora ends (*sh malloc'd; *n counts the references taken). */
static int read_shared(rctx *c, const cJSON *meta, adapter_shared ***sh, int *n) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(meta, "shared"), *e;
    char nm[48];
    int rc;
    *sh = NULL, *n = 0;
    if (!arr) return 0;
    if ((rc = jarray(c, meta, "shared", &arr))) return rc;
    int cnt = cJSON_GetArraySize(arr);
    if (cnt > c->a->n_layers * AMOD_COUNT) return rfail(c, PEFTD_EFORMAT, "metadata field 'shared' lists %d matrices", cnt);
    if (cnt && !(*sh = calloc((size_t)cnt, sizeof **sh))) return rfail(c, PEFTD_ENOMEM, "out of memory");
    cJSON_ArrayForEach(e, arr) {
        int64_t rows, cols;
        if ((rc = jint(c, e, "rows", 1, ADAPTER_MAX_LORA_RANK, &rows)) || (rc = jint(c, e, "cols", 1, INT32_MAX, &cols)))
            return rc;
        snprintf(nm, sizeof nm, "shared.%d", *n);
        const st_tensor *t = st_find(c->st, nm);
        if (!t) return rfail(c, PEFTD_EFORMAT, "tensor '%s' is missing", nm);
        c->used[st_index(c->st, t)] = true;
        size_t bad;
        if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols || t->dtype != ST_F32)
            return rfail(c, PEFTD_EFORMAT, "tensor '%s' is not F32 [%lld, %lld]", nm, (long long)rows, (long long)cols);
        if (!all_finite(t->data, KDT_F32, (size_t)t->numel, &bad))
            return rfail(c, PEFTD_EINVAL, "tensor '%s' holds a non-finite value at element %zu", nm, bad);
        if ((rc = adapter__shared_get(t->data, rows, cols, &(*sh)[*n]))) return rfail(c, rc, "out of memory");
        (*n)++;
    }
    return 0;
}

/* Module l's A as shared matrix k ("a_shared"): [rank, in] F32 like the adapter's other A/B. */
static int attach_shared(rctx *c, const cJSON *e, adapter_shared **sh, int n_sh, int64_t rank, int in,
                         adapter_lora *l) {
    int64_t k;
    int rc;
    if ((rc = jint(c, e, "a_shared", 0, n_sh - 1, &k))) return rc;
    if (adapter__shared_rows(sh[k]) != rank || adapter__shared_cols(sh[k]) != in)
        return rfail(c, PEFTD_EINVAL, "shared.%lld is [%lld, %lld], not the [%lld, %d] of a module that reads it",
                     (long long)k, (long long)adapter__shared_rows(sh[k]), (long long)adapter__shared_cols(sh[k]),
                     (long long)rank, in);
    if (c->mat_dtype[0] >= 0 && c->mat_dtype[0] != (int)KDT_F32)
        return rfail(c, PEFTD_EFORMAT, "shared.%lld is F32, unlike the adapter's other matrices", (long long)k);
    c->mat_dtype[0] = (int)KDT_F32;
    adapter__shared_ref(sh[k]);
    if (adapter__attach_shared(c->a, sh[k], &l->a)) return rfail(c, PEFTD_ENOMEM, "out of memory");
    return 0;
}

static int read_lora_modules(rctx *c, const cJSON *meta, adapter_shared **sh, int n_sh);

/* Dense deltas: metadata "delta" = [{layer, module}] (optional), tensors delta.<l>.<m> [out, in]
 * into a->lora (allocated here when the kind has no LoRA list: OFT / BOFT modules served dense);
 * *found (optional) counts them. */
static int read_delta(rctx *c, const cJSON *meta, int *found) {
    adapter *a = c->a;
    int L = a->n_layers, rc;
    const cJSON *e, *dl = cJSON_GetObjectItemCaseSensitive(meta, "delta");
    char nm[48];
    if (found) *found = 0;
    if (!dl) return 0;
    if ((rc = jarray(c, meta, "delta", &dl))) return rc;
    if (!a->lora && !(a->lora = calloc((size_t)L * AMOD_COUNT, sizeof *a->lora)))
        return rfail(c, PEFTD_ENOMEM, "out of memory");
    cJSON_ArrayForEach(e, dl) { /* dense deltas [out, in] */
        int64_t layer;
        adapter_module m = AMOD_Q;
        int o, in;
        if ((rc = jint(c, e, "layer", 0, L - 1, &layer)) || (rc = module_of(c, e, &m))) return rc;
        adapter_lora *l = &a->lora[layer * AMOD_COUNT + m];
        if (l->rank || l->delta.rows || (a->rot && a->rot[layer * AMOD_COUNT + m].n_factors))
            return rfail(c, PEFTD_EFORMAT, "delta %lld.%s listed twice or beside a LoRA pair or a rotation",
                         (long long)layer, adapter_module_name(m));
        module_dims(&c->d, m, &o, &in);
        snprintf(nm, sizeof nm, "delta.%lld.%s", (long long)layer, adapter_module_name(m));
        if ((rc = claim(c, nm, 2, o, in, 0, &l->delta, NULL))) return rc;
        if (found) ++*found;
    }
    return 0;
}

static int read_lora(rctx *c, const cJSON *meta) {
    adapter_shared **sh = NULL;
    int n_sh = 0, rc = read_shared(c, meta, &sh, &n_sh);
    if (rc == 0) rc = read_lora_modules(c, meta, sh, n_sh);
    for (int k = 0; k < n_sh; k++) adapter__shared_put(sh[k]); /* the modules hold their own */
    free(sh);
    return rc;
}

static int read_lora_modules(rctx *c, const cJSON *meta, adapter_shared **sh, int n_sh) {
    adapter *a = c->a;
    int L = a->n_layers, rc;
    const cJSON *arr, *e;
    char nm[48];
    if ((rc = jarray(c, meta, "lora", &arr))) return rc;
    if (!(a->lora = calloc((size_t)L * AMOD_COUNT, sizeof *a->lora))) return rfail(c, PEFTD_ENOMEM, "out of memory");
    cJSON_ArrayForEach(e, arr) {
        int64_t layer, rank;
        adapter_module m = AMOD_Q;
        bool dora = false;
        float scale;
        int o, in;
        if ((rc = jint(c, e, "layer", 0, L - 1, &layer)) || (rc = module_of(c, e, &m)) ||
            (rc = jint(c, e, "rank", 1, INT32_MAX, &rank)) || (rc = jfloat(c, e, "scale", &scale)) ||
            (rc = jbool(c, e, "dora", &dora)))
            return rc;
        adapter_lora *l = &a->lora[layer * AMOD_COUNT + m];
        if (l->rank) return rfail(c, PEFTD_EFORMAT, "LoRA module %lld.%s listed twice", (long long)layer, adapter_module_name(m));
        module_dims(&c->d, m, &o, &in);
        const char *mn = adapter_module_name(m);
        if (rank > ADAPTER_MAX_LORA_RANK || rank > (o > in ? o : in)) /* the importer's bounds */
            return rfail(c, PEFTD_EINVAL, "LoRA module %lld.%s: rank %lld is above max(in, out) = %d or %lld",
                         (long long)layer, mn, (long long)rank, o > in ? o : in, ADAPTER_MAX_LORA_RANK);
        l->rank = (int)rank;
        l->scale = scale;
        snprintf(nm, sizeof nm, "lora.%lld.%s.a", (long long)layer, mn);
        if (cJSON_GetObjectItemCaseSensitive(e, "a_shared")) {
            if ((rc = attach_shared(c, e, sh, n_sh, rank, in, l))) return rc;
        } else if ((rc = claim(c, nm, 2, rank, in, 0, &l->a, NULL))) {
            return rc;
        }
        snprintf(nm, sizeof nm, "lora.%lld.%s.b", (long long)layer, mn);
        if ((rc = claim(c, nm, 2, o, rank, 0, &l->b, NULL))) return rc;
        snprintf(nm, sizeof nm, "lora.%lld.%s.dora", (long long)layer, mn);
        if (dora && (rc = claim(c, nm, 1, o, 0, -1, NULL, &l->dora))) return rc;
        if (dora && (rc = read_dora_stats(c, (int)layer, m, l))) return rc;
        const cJSON *hb = cJSON_GetObjectItemCaseSensitive(e, "bias");
        bool has_bias = false;
        if (hb && (rc = jbool(c, e, "bias", &has_bias))) return rc;
        snprintf(nm, sizeof nm, "lora.%lld.%s.bias", (long long)layer, mn);
        if (has_bias && (rc = claim(c, nm, 1, o, 0, -1, NULL, &l->bias))) return rc;
    }
    if ((rc = read_delta(c, meta, NULL))) return rc;
    const cJSON *bb = cJSON_GetObjectItemCaseSensitive(meta, "base_bias");
    if (bb && (rc = jarray(c, meta, "base_bias", &bb))) return rc;
    cJSON_ArrayForEach(e, bb) {
        int64_t layer;
        adapter_module m = AMOD_Q;
        int o, in;
        if ((rc = jint(c, e, "layer", 0, L - 1, &layer)) || (rc = module_of(c, e, &m))) return rc;
        if (m > AMOD_O) return rfail(c, PEFTD_EFORMAT, "trained bias on %s (only q/k/v/o carry one)", adapter_module_name(m));
        adapter_lora *l = &a->lora[layer * AMOD_COUNT + m];
        if (l->base_bias.rows)
            return rfail(c, PEFTD_EFORMAT, "trained bias %lld.%s listed twice", (long long)layer, adapter_module_name(m));
        module_dims(&c->d, m, &o, &in);
        snprintf(nm, sizeof nm, "lora.%lld.%s.base_bias", (long long)layer, adapter_module_name(m));
        if ((rc = claim(c, nm, 1, o, 0, -1, &l->base_bias, NULL))) return rc;
    }
    /* LoRA on embed_tokens / lm_head: [vocab, r] + [hidden, r], and [r, hidden] + [vocab, r] */
    static const char *const top_name[2] = {"embed_lora", "head_lora"};
    adapter_lora *top[2] = {&a->embed_lora, &a->head_lora};
    for (int k = 0; k < 2; k++) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(meta, top_name[k]);
        if (!o) continue;
        int64_t rank;
        if (!cJSON_IsObject(o)) return rfail(c, PEFTD_EFORMAT, "metadata field '%s' is not an object", top_name[k]);
        if ((rc = jint(c, o, "rank", 1, ADAPTER_MAX_LORA_RANK, &rank)) || (rc = jfloat(c, o, "scale", &top[k]->scale)))
            return rc;
        top[k]->rank = (int)rank;
        int64_t a0 = k ? rank : c->d.vocab, a1 = k ? c->d.hidden : rank, b0 = k ? c->d.vocab : c->d.hidden;
        snprintf(nm, sizeof nm, "%s.a", top_name[k]);
        if ((rc = claim(c, nm, 2, a0, a1, -1, &top[k]->a, NULL))) return rc;
        snprintf(nm, sizeof nm, "%s.b", top_name[k]);
        if ((rc = claim(c, nm, 2, b0, rank, -1, &top[k]->b, NULL))) return rc;
        if (top[k]->a.dtype != KDT_F32 || top[k]->b.dtype != KDT_F32)
            return rfail(c, PEFTD_EFORMAT, "tensors of '%s' must be F32", top_name[k]);
    }
    return 0;
}

static int read_ia3(rctx *c, const cJSON *meta) {
    adapter *a = c->a;
    int n = a->n_layers * AMOD_COUNT, rc;
    const cJSON *arr, *e;
    char nm[48];
    if ((rc = jarray(c, meta, "ia3_input", &arr))) return rc;
    if (cJSON_GetArraySize(arr) != AMOD_COUNT)
        return rfail(c, PEFTD_EFORMAT, "metadata field 'ia3_input' must list %d booleans", AMOD_COUNT);
    int m = 0;
    cJSON_ArrayForEach(e, arr) {
        if (!cJSON_IsBool(e)) return rfail(c, PEFTD_EFORMAT, "metadata field 'ia3_input' must list booleans");
        a->ia3_input[m++] = cJSON_IsTrue(e);
    }
    if (!(a->ia3 = calloc((size_t)n, sizeof *a->ia3))) return rfail(c, PEFTD_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        adapter_module mod = (adapter_module)(i % AMOD_COUNT);
        int o, in;
        snprintf(nm, sizeof nm, "ia3.%d.%s", i / AMOD_COUNT, adapter_module_name(mod));
        if (!st_find(c->st, nm)) continue;
        module_dims(&c->d, mod, &o, &in);
        if ((rc = claim(c, nm, 1, a->ia3_input[mod] ? in : o, 0, -1, NULL, &a->ia3[i]))) return rc;
    }
    return 0;
}

static int read_prefix(rctx *c) {
    adapter *a = c->a;
    int rc;
    char nm[48];
    if (!(a->prefix_k = calloc((size_t)a->n_layers, sizeof *a->prefix_k)) ||
        !(a->prefix_v = calloc((size_t)a->n_layers, sizeof *a->prefix_v)))
        return rfail(c, PEFTD_ENOMEM, "out of memory");
    for (int l = 0; l < a->n_layers; l++) {
        snprintf(nm, sizeof nm, "prefix.%d.k", l);
        if ((rc = claim(c, nm, 2, a->n_virtual, c->d.kv_dim, -1, NULL, &a->prefix_k[l]))) return rc;
        snprintf(nm, sizeof nm, "prefix.%d.v", l);
        if ((rc = claim(c, nm, 2, a->n_virtual, c->d.kv_dim, -1, NULL, &a->prefix_v[l]))) return rc;
    }
    return 0;
}

/* The prefix K/V and "prefix_from_zero" (AdapterHub prefix tuning; absent: PEFT's, as in
 * blobs written before it was served). */
static int read_prefix_meta(rctx *c, const cJSON *meta) {
    int rc;
    if (cJSON_HasObjectItem(meta, "prefix_from_zero") &&
        (rc = jbool(c, meta, "prefix_from_zero", &c->a->prefix_from_zero)))
        return rc;
    return read_prefix(c);
}

/* LN tuning: tensors ln.<i> [1, hidden] where the adapter replaces norm i (adapter.h; blobs
 * written before the Gemma sites hold i < 2 n_layers + 1 only, the same indices). */
static int read_ln(rctx *c) {
    adapter *a = c->a;
    int n = adapter_ln_sites(a), rc, found = 0;
    char nm[48];
    if (!(a->ln = calloc((size_t)n, sizeof *a->ln))) return rfail(c, PEFTD_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        snprintf(nm, sizeof nm, "ln.%d", i);
        if (!st_find(c->st, nm)) continue;
        if ((rc = claim(c, nm, 2, 1, c->d.hidden, -1, &a->ln[i], NULL))) return rc;
        found++;
    }
    return found ? 0 : rfail(c, PEFTD_EFORMAT, "an LN-tuning blob without any ln.<i> tensor");
}

/* OFT / BOFT: metadata "rot" and tensors rot.<l>.<m>.<f> (F32 [in or block, block]) and
 * rot.<l>.<m>.s (F32 [out]) for the factored modules, each factor's permutation rebuilt from its
 * recipe; then the dense ones (read_delta). "rot" may be absent when every module is dense. */
static int read_rot(rctx *c, const cJSON *meta) {
    adapter *a = c->a;
    int L = a->n_layers, rc, found = 0, dense = 0;
    const cJSON *arr = NULL, *e, *fs, *fe;
    char nm[48];
    if (cJSON_GetObjectItemCaseSensitive(meta, "rot") && (rc = jarray(c, meta, "rot", &arr))) return rc;
    if (!(a->rot = calloc((size_t)L * AMOD_COUNT, sizeof *a->rot))) return rfail(c, PEFTD_ENOMEM, "out of memory");
    cJSON_ArrayForEach(e, arr) {
        int64_t layer;
        adapter_module m = AMOD_Q;
        bool scale = false;
        int o, in;
        if ((rc = jint(c, e, "layer", 0, L - 1, &layer)) || (rc = module_of(c, e, &m)) ||
            (rc = jbool(c, e, "out_scale", &scale)) || (rc = jarray(c, e, "factors", &fs)))
            return rc;
        adapter_rot *ro = &a->rot[layer * AMOD_COUNT + m];
        const char *mn = adapter_module_name(m);
        int nf = cJSON_GetArraySize(fs);
        if (ro->f) return rfail(c, PEFTD_EFORMAT, "rotation %lld.%s listed twice", (long long)layer, mn);
        if (nf < 1 || nf > KROT_MAX_FACTORS)
            return rfail(c, PEFTD_EFORMAT, "rotation %lld.%s: %d factors (1..%d)", (long long)layer, mn, nf,
                         KROT_MAX_FACTORS);
        if (!(ro->f = calloc((size_t)nf, sizeof *ro->f))) return rfail(c, PEFTD_ENOMEM, "out of memory");
        ro->n_factors = nf;
        module_dims(&c->d, m, &o, &in);
        int f = 0;
        cJSON_ArrayForEach(fe, fs) {
            int64_t block, pb, ph;
            bool shared = false;
            adapter_rot_factor *rf = &ro->f[f];
            if ((rc = jint(c, fe, "block", 1, in, &block)) || (rc = jbool(c, fe, "shared", &shared)) ||
                (rc = jint(c, fe, "perm_blocks", 0, in, &pb)) || (rc = jint(c, fe, "perm_half", 0, in, &ph)))
                return rc;
            if ((rc = adapter__rot_stage_perm(&c->stage, in, (int)block, shared, (int)pb, (int)ph, rf)))
                return rfail(c, rc, "rotation %lld.%s factor %d: block %lld / permutation (%lld, %lld) does not fit "
                             "in-features %d", (long long)layer, mn, f, (long long)block, (long long)pb, (long long)ph,
                             in);
            snprintf(nm, sizeof nm, "rot.%lld.%s.%d", (long long)layer, mn, f);
            if ((rc = claim(c, nm, 2, shared ? block : in, block, -1, &rf->r, NULL))) return rc;
            if (rf->r.dtype != KDT_F32) return rfail(c, PEFTD_EFORMAT, "tensor '%s' must be F32", nm);
            f++;
        }
        snprintf(nm, sizeof nm, "rot.%lld.%s.s", (long long)layer, mn);
        if (scale && (rc = claim(c, nm, 1, o, 0, -1, NULL, &ro->out_scale))) return rc;
        found++;
    }
    if ((rc = read_delta(c, meta, &dense))) return rc;
    return found + dense ? 0 : rfail(c, PEFTD_EFORMAT, "an OFT / BOFT blob without any rotation");
}

static int read_bn(rctx *c, const cJSON *meta) {
    adapter *a = c->a;
    int L = a->n_layers, H = c->d.hidden, rc;
    const cJSON *arr, *e;
    char nm[48], place[16];
    if ((rc = jarray(c, meta, "bottleneck", &arr))) return rc;
    if (!(a->bn_attn = calloc((size_t)L, sizeof *a->bn_attn)) || !(a->bn_ffn = calloc((size_t)L, sizeof *a->bn_ffn)))
        return rfail(c, PEFTD_ENOMEM, "out of memory");
    cJSON_ArrayForEach(e, arr) {
        int64_t layer, size, act;
        bool db = false, ub = false;
        if ((rc = jstr(c, e, "place", place, sizeof place)) || (rc = jint(c, e, "layer", 0, L - 1, &layer)) ||
            (rc = jint(c, e, "size", 1, INT32_MAX, &size)) || (rc = jint(c, e, "act", KACT_NONE, KACT_SIGMOID, &act)))
            return rc;
        bool ffn = !strcmp(place, "bn_ffn");
        if (!ffn && strcmp(place, "bn_attn")) return rfail(c, PEFTD_EFORMAT, "unknown bottleneck place '%s'", place);
        adapter_bottleneck *B = ffn ? &a->bn_ffn[layer] : &a->bn_attn[layer];
        if (B->size) return rfail(c, PEFTD_EFORMAT, "bottleneck %s.%lld listed twice", place, (long long)layer);
        B->size = (int)size;
        B->act = (kact)act;
        if ((rc = jfloat(c, e, "scaling", &B->scaling)) ||
            (rc = jbool(c, e, "residual_before_ln", &B->residual_before_ln)) ||
            (rc = jbool(c, e, "original_ln_before", &B->original_ln_before)) ||
            (rc = jbool(c, e, "original_ln_after", &B->original_ln_after)) ||
            /* "parallel": absent in blobs written before par_bn was served (= false) */
            (cJSON_HasObjectItem(e, "parallel") && (rc = jbool(c, e, "parallel", &B->parallel))) ||
            (rc = jbool(c, e, "down_bias", &db)) ||
            (rc = jbool(c, e, "up_bias", &ub)))
            return rc;
        /* the wiring the forward serves, as the importer decides it (adapter_hub.c): a blob
         * claiming another one is refused here rather than failing every step later */
        if (!B->original_ln_before || B->parallel) B->residual_before_ln = true;
        if (B->parallel) B->original_ln_before = false;
        if (!B->residual_before_ln || !B->original_ln_after)
            return rfail(c, PEFTD_EUNSUPPORTED, "bottleneck %s.%lld: residual_before_ln %s / original_ln_after %s is not "
                                                "served",
                         place, (long long)layer, B->residual_before_ln ? "true" : "false",
                         B->original_ln_after ? "true" : "false");
        snprintf(nm, sizeof nm, "%s.%lld.down", place, (long long)layer);
        if ((rc = claim(c, nm, 2, size, H, 1, &B->down, NULL))) return rc;
        snprintf(nm, sizeof nm, "%s.%lld.down_bias", place, (long long)layer);
        if (db && (rc = claim(c, nm, 1, size, 0, -1, NULL, &B->down_bias))) return rc;
        snprintf(nm, sizeof nm, "%s.%lld.up", place, (long long)layer);
        if ((rc = claim(c, nm, 2, H, size, 1, &B->up, NULL))) return rc;
        snprintf(nm, sizeof nm, "%s.%lld.up_bias", place, (long long)layer);
        if (ub && (rc = claim(c, nm, 1, H, 0, -1, NULL, &B->up_bias))) return rc;
    }
    return 0;
}

/* Ranks as the importer records them (same visiting order), so a blob cannot claim a
 * max_rank smaller than a tensor it carries (it sizes the SGMV workspace). */
static int check_ranks(rctx *c, const cJSON *meta) {
    adapter *a = c->a;
    int64_t max_rank;
    int rc;
    const cJSON *arr, *e;
    for (int i = 0; a->lora && i < a->n_layers * AMOD_COUNT; i++)
        if (a->lora[i].rank) adapter__note_rank(a, a->lora[i].rank);
    if (a->embed_lora.rank) adapter__note_rank(a, a->embed_lora.rank);
    if (a->head_lora.rank) adapter__note_rank(a, a->head_lora.rank);
    for (int l = 0; a->bn_attn && a->bn_ffn && l < a->n_layers; l++) {
        if (a->bn_attn[l].size) adapter__note_rank(a, a->bn_attn[l].size);
        if (a->bn_ffn[l].size) adapter__note_rank(a, a->bn_ffn[l].size);
    }
    if ((rc = jint(c, meta, "max_rank", 0, INT32_MAX, &max_rank)) || (rc = jarray(c, meta, "ranks", &arr))) return rc;
    int i = 0;
    bool same = max_rank == a->max_rank && cJSON_GetArraySize(arr) == a->n_ranks;
    cJSON_ArrayForEach(e, arr) {
        if (!same) break;
        same = cJSON_IsNumber(e) && e->valuedouble == a->ranks[i++];
    }
    if (!same) return rfail(c, PEFTD_EFORMAT, "metadata ranks / max_rank disagree with the tensors");
    return 0;
}

static bool hex64(const char *h) {
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f'))) return false;
    return h[64] == 0;
}

/* Checks the dims the blob was written for against the base (unknown ones are skipped),
 * so a blob for another model is refused with a message naming the dim. */
static int check_base(rctx *c, const cJSON *meta) {
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(meta, "base");
    if (!cJSON_IsObject(b)) return rfail(c, PEFTD_EFORMAT, "metadata field 'base' is missing");
    for (int i = 0; i < 6; i++) {
        int64_t v;
        int rc = jint(c, b, DIM_KEYS[i], -1, INT32_MAX, &v);
        if (rc) return rc;
        int want = dim_at(&c->d, i);
        if (v >= 0 && v != want)
            return rfail(c, PEFTD_EINVAL, "written for a base with %s %lld, base %s has %d", DIM_KEYS[i],
                         (long long)v, c->base->name, want);
    }
    return 0;
}

/* SEQ_CLS: "labels" (1..ADAPTER_MAX_LABELS strings) and the F32 head [labels, hidden]. */
static int read_cls(rctx *c, const cJSON *meta) {
    adapter *a = c->a;
    const cJSON *labels = cJSON_GetObjectItemCaseSensitive(meta, "labels"), *it;
    if (!labels) {
        if (st_find(c->st, "cls_head")) return rfail(c, PEFTD_EFORMAT, "tensor 'cls_head' without 'labels'");
        return 0;
    }
    int n = cJSON_IsArray(labels) ? cJSON_GetArraySize(labels) : 0;
    if (a->kind != ADAPTER_LORA || n < 1 || n > ADAPTER_MAX_LABELS)
        return rfail(c, PEFTD_EFORMAT, "metadata 'labels' must be 1..%d strings on a LoRA adapter", ADAPTER_MAX_LABELS);
    if (!(a->labels = calloc((size_t)n, sizeof *a->labels))) return rfail(c, PEFTD_ENOMEM, "out of memory");
    a->n_labels = 0;
    cJSON_ArrayForEach(it, labels) {
        if (!cJSON_IsString(it) || strlen(it->valuestring) >= ADAPTER_LABEL_MAX)
            return rfail(c, PEFTD_EFORMAT, "metadata 'labels' entries must be strings under %d bytes", ADAPTER_LABEL_MAX);
        snprintf(a->labels[a->n_labels++], ADAPTER_LABEL_MAX, "%s", it->valuestring);
    }
    const st_tensor *t = st_find(c->st, "cls_head");
    if (t && t->dtype != ST_F32) return rfail(c, PEFTD_EFORMAT, "tensor 'cls_head' must be F32");
    return claim(c, "cls_head", 2, n, c->d.hidden, -1, &a->cls_head, NULL);
}

static int parse_meta(rctx *c, const cJSON *meta) {
    adapter *a = c->a;
    char kind[32];
    int64_t v;
    int rc;
    if ((rc = jint(c, meta, "format", 1, INT32_MAX, &v))) return rc;
    if (v < ADAPTER_BLOB_FORMAT_MIN || v > ADAPTER_BLOB_FORMAT)
        return rfail(c, PEFTD_EUNSUPPORTED, "format %lld is not %d..%d (written by another peftd version)",
                     (long long)v, ADAPTER_BLOB_FORMAT_MIN, ADAPTER_BLOB_FORMAT);
    c->format = (int)v;
    if ((rc = jint(c, meta, "n_layers", 1, INT32_MAX, &v))) return rc;
    if (v != c->base->n_layers)
        return rfail(c, PEFTD_EINVAL, "written for %lld layers, base %s has %d", (long long)v, c->base->name,
                     c->base->n_layers);
    a->n_layers = (int)v;
    if ((rc = check_base(c, meta))) return rc;
    if ((rc = jstr(c, meta, "kind", kind, sizeof kind)) || (rc = jstr(c, meta, "source", a->source, sizeof a->source)) ||
        (rc = jstr(c, meta, "sha256", a->sha256, sizeof a->sha256)))
        return rc;
    if (!hex64(a->sha256)) return rfail(c, PEFTD_EFORMAT, "metadata field 'sha256' is not a sha256 hex digest");
    static const adapter_kind kinds[] = {ADAPTER_LORA, ADAPTER_IA3, ADAPTER_PROMPT_TUNING, ADAPTER_PREFIX_TUNING,
                                         ADAPTER_BOTTLENECK, ADAPTER_LN_TUNING, ADAPTER_OFT, ADAPTER_BOFT};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (!strcmp(kind, adapter_kind_name(kinds[i]))) a->kind = kinds[i];
    if (!a->kind) return rfail(c, PEFTD_EFORMAT, "unknown adapter kind '%s'", kind);
    /* 2^53: the largest integer JSON (a double) carries exactly */
    const double big = 9007199254740992.0;
    if ((rc = jint(c, meta, "n_params", 0, big, &a->n_params))) return rc;
    if ((rc = jint(c, meta, "bytes", 0, big, &v))) return rc;
    a->bytes = (size_t)v;
    bool virt = a->kind == ADAPTER_PROMPT_TUNING || a->kind == ADAPTER_PREFIX_TUNING;
    /* non-virtual kinds must say 0: the engine reserves n_virtual slots for any adapter; a
     * bottleneck may carry a prefix (an AdapterHub MAM union) */
    if ((rc = jint(c, meta, "n_virtual", virt ? 1 : 0, virt || a->kind == ADAPTER_BOTTLENECK ? INT32_MAX : 0, &v)))
        return rc;
    a->n_virtual = (int)v;
    if (virt && c->base->context_length > 0 && a->n_virtual >= c->base->context_length)
        return rfail(c, PEFTD_EINVAL, "%d virtual tokens leave no room for a prompt in base %s's context of %d",
                     a->n_virtual, c->base->name, c->base->context_length);

    /* composition facts of a PEFT LoRA (adapter_mix.h); absent in blobs written before */
    if (cJSON_HasObjectItem(meta, "rslora") && (rc = jbool(c, meta, "rslora", &a->rslora))) return rc;
    if (cJSON_HasObjectItem(meta, "config_r")) {
        if ((rc = jint(c, meta, "config_r", 0, 1 << 20, &v))) return rc;
        a->config_r = (int)v;
    }
    switch (a->kind) {
    case ADAPTER_LORA: rc = read_lora(c, meta); break;
    case ADAPTER_IA3: rc = read_ia3(c, meta); break;
    case ADAPTER_PROMPT_TUNING: rc = claim(c, "prompt", 2, a->n_virtual, c->d.hidden, -1, &a->prompt, NULL); break;
    case ADAPTER_PREFIX_TUNING: rc = read_prefix_meta(c, meta); break;
    case ADAPTER_BOTTLENECK:
        if ((rc = read_bn(c, meta)) == 0 && a->n_virtual > 0) rc = read_prefix_meta(c, meta); /* MAM */
        break;
    case ADAPTER_LN_TUNING: rc = read_ln(c); break;
    case ADAPTER_OFT:
    case ADAPTER_BOFT: rc = read_rot(c, meta); break;
    }
    if (rc) return rc;
    if (st_find(c->st, "lm_head") && (rc = claim(c, "lm_head", 2, c->d.vocab, c->d.hidden, -1, &a->lm_head, NULL)))
        return rc;
    if (st_find(c->st, "embed") && (rc = claim(c, "embed", 2, c->d.vocab, c->d.hidden, -1, &a->embed, NULL)))
        return rc;
    return read_cls(c, meta);
}

int adapter_blob_read(const void *blob, size_t len, const adapter_base *base, adapter **out, char *err,
                      size_t errlen) {
    rctx c = {.base = base, .err = err, .errlen = errlen, .mat_dtype = {-1, -1}};
    cJSON *meta = NULL;
    int rc;
    if (err && errlen) err[0] = 0;
    if (out) *out = NULL;
    if (!blob || !base || !out || base->n_layers <= 0 || base->hidden <= 0)
        return rfail(&c, PEFTD_EINVAL, "missing blob or base");
    c.d = dims_of_base(base);
    if ((rc = st_parse(blob, len, "adapter blob", &c.st, err, errlen))) return rc;
    c.a = adapter__new(0); /* n_layers: from the metadata */
    c.used = calloc(st_count(c.st) + 1, sizeof *c.used);
    if (!c.a || !c.used) {
        rc = rfail(&c, PEFTD_ENOMEM, "out of memory");
        goto fail;
    }
    const char *ms = st_metadata_find(c.st, "peftd");
    if (!ms) {
        rc = rfail(&c, PEFTD_EFORMAT, "no peftd metadata (not an adapter blob)");
        goto fail;
    }
    meta = cJSON_Parse(ms);
    if (!cJSON_IsObject(meta)) {
        rc = rfail(&c, PEFTD_EFORMAT, "peftd metadata is not a JSON object");
        goto fail;
    }
    if ((rc = parse_meta(&c, meta))) goto fail;
    for (size_t i = 0; i < st_count(c.st); i++) {
        if (!c.used[i]) {
            rc = rfail(&c, PEFTD_EFORMAT, "unexpected tensor '%s'", st_get(c.st, i)->name);
            goto fail;
        }
    }
    if ((rc = check_ranks(&c, meta))) goto fail;
    if (adapter__stage_commit(c.a, &c.stage)) {
        rc = rfail(&c, PEFTD_ENOMEM, "out of memory for the adapter's tensors");
        goto fail;
    }
    *out = c.a;
    c.a = NULL;
fail:
    adapter_free(c.a);
    cJSON_Delete(meta);
    adapter__stage_clear(&c.stage);
    free(c.used);
    st_close(c.st);
    return rc;
}
