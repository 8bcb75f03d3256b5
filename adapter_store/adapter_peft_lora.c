/* adapter_store/adapter_peft_lora.c — PEFT LoRA adapters (plain, rsLoRA, DoRA, rank/alpha
 * patterns) and PEFT's modules_to_save replacements.
 *
 * Tensors (PEFT 0.21 save_pretrained, adapter name stripped), per adapted module <key>:
 *   base_model.model.<key>.lora_A.weight          [r, in]
 *   base_model.model.<key>.lora_B.weight          [out, r]
 *   base_model.model.<key>.lora_magnitude_vector  [out]   (DoRA; older files add ".weight")
 * scale = alpha / r, or alpha / sqrt(r) with use_rslora, r and alpha after rank_pattern /
 * alpha_pattern (PEFT LoraLayer.update_layer).
 *
 * DoRA (peft/tuners/lora/dora.py): y = (m / ||W + scale·B·A||_row) ⊙ (W x + scale·B A x),
 * the norm taken per output row (torch.linalg.norm(weight, dim=1)) with the scale inside.
 * That factor depends only on the adapter and the base, so it is computed here, in double,
 * and the forward pass applies it as a per-output scale after base + LoRA.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"

#define PREFIX "base_model.model."
/* Base rows fetched per backend download while computing DoRA norms. */
#define DORA_ROW_CHUNK 256

typedef struct {
    const st_tensor *a, *b, *mag;
    int rank;
    double alpha;
} lora_src;

/* r and alpha of one module after rank_pattern / alpha_pattern. */
static int module_r_alpha(adapter__ctx *c, const char *key, int r, double alpha, int *r_out, double *alpha_out) {
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(c->cfg, "rank_pattern");
    const cJSON *ap = cJSON_GetObjectItemCaseSensitive(c->cfg, "alpha_pattern");
    const cJSON *hit;
    int rc;
    if (rp && cJSON_IsNull(rp)) rp = NULL;
    if (ap && cJSON_IsNull(ap)) ap = NULL;
    if (rp && !cJSON_IsObject(rp))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field 'rank_pattern' must be an object");
    if (ap && !cJSON_IsObject(ap))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field 'alpha_pattern' must be an object");
    if ((rc = adapter__pattern_value(c, rp, "rank_pattern", key, &hit))) return rc;
    *r_out = r;
    char what[300];
    if (hit) {
        snprintf(what, sizeof what, "rank_pattern['%.200s']", hit->string);
        if ((rc = adapter__num_int(c, hit, what, 1, ADAPTER_MAX_RANK, r_out))) return rc;
    }
    if ((rc = adapter__pattern_value(c, ap, "alpha_pattern", key, &hit))) return rc;
    *alpha_out = alpha;
    if (hit) {
        snprintf(what, sizeof what, "alpha_pattern['%.200s']", hit->string);
        if ((rc = adapter__num_float(c, hit, what, ADAPTER_MAX_SCALE, alpha_out))) return rc;
    }
    return 0;
}

/* dora[j] = m[j] / ||W[j,:] + scale·(B·A)[j,:]||_2 in double; W read from the backend. */
static int dora_factor(adapter__ctx *c, int layer, adapter_module mod, const adapter_lora *L, const void *ha,
                       const void *hb, const float *m, float **out) {
    const adapter_base *b = c->base;
    int o, in;
    adapter_module_shape(b, mod, &o, &in);
    const kmat *w = b->layer_w ? &b->layer_w[layer * AMOD_COUNT + mod] : NULL;
    if (!w || !w->data || w->rows != o || w->cols != in)
        return adapter__fail(c, PEFTD_EINVAL, "DoRA on layer %d %s needs the base weight [%d, %d], which base %s did "
                                              "not provide",
                             layer, adapter_module_name(mod), o, in, b->name);
    size_t esz = kdtype_size(w->dtype), row_bytes = (size_t)in * esz;
    int chunk = DORA_ROW_CHUNK;
    unsigned char *rows = malloc((size_t)chunk * row_bytes);
    double *acc = malloc((size_t)in * sizeof *acc);
    float *f = malloc((size_t)o * sizeof *f);
    int rc = 0;
    if (!rows || !acc || !f) {
        rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory computing DoRA norms");
        goto fail;
    }
    for (int j0 = 0; j0 < o; j0 += chunk) {
        int nr = o - j0 < chunk ? o - j0 : chunk;
        rc = c->a->kb->ops->download(c->a->kb, rows, (const unsigned char *)w->data + (size_t)j0 * row_bytes,
                                     (size_t)nr * row_bytes);
        if (rc) {
            rc = adapter__fail(c, rc, "DoRA: reading base weight of layer %d %s: %s", layer, adapter_module_name(mod),
                               peftd_strerror(rc));
            goto fail;
        }
        for (int jj = 0; jj < nr; jj++) {
            int j = j0 + jj;
            for (int i = 0; i < in; i++) acc[i] = adapter__elem(rows + (size_t)jj * row_bytes, w->dtype, (size_t)i);
            for (int k = 0; k < L->rank; k++) {
                double bjk = (double)L->scale * adapter__elem(hb, L->b.dtype, (size_t)j * L->rank + k);
                for (int i = 0; i < in; i++) acc[i] += bjk * adapter__elem(ha, L->a.dtype, (size_t)k * in + i);
            }
            double s = 0;
            for (int i = 0; i < in; i++) s += acc[i] * acc[i];
            double n = sqrt(s);
            if (!(n > 0)) {
                rc = adapter__fail(c, PEFTD_EINVAL, "DoRA: row %d of layer %d %s has zero norm", j, layer,
                                   adapter_module_name(mod));
                goto fail;
            }
            f[j] = (float)(m[j] / n);
        }
    }
    free(rows);
    free(acc);
    *out = f;
    return 0;
fail:
    free(rows);
    free(acc);
    free(f);
    return rc;
}

/* PEFT's _set_trainable: a modules_to_save entry names every module whose key ends with it
 * (no "." boundary). peftd serves full replacements of lm_head and embed_tokens only. */
int adapter__load_modules_to_save(adapter__ctx *c) {
    const cJSON *mts, *e;
    int rc = adapter__json_str_list(c, c->cfg, "modules_to_save", &mts);
    if (rc || !mts) return rc;
    static const char *const others[] = {"model", "model.layers", "model.norm", "model.rotary_emb", "self_attn", "mlp",
                                         "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                         "act_fn", "input_layernorm", "post_attention_layernorm", NULL};
    bool want_head = false, want_embed = false;
    cJSON_ArrayForEach(e, mts) {
        const char *s = e->valuestring;
        size_t n = strlen(s);
#define ENDS(k) (strlen(k) >= n && !strcmp((k) + strlen(k) - n, s))
        if (n && ENDS("lm_head")) want_head = true;
        if (n && ENDS("model.embed_tokens")) want_embed = true;
        for (int i = 0; n && others[i]; i++) {
            if (ENDS(others[i]))
                return adapter__fail(c, PEFTD_EUNSUPPORTED,
                                     "adapter_config.json: modules_to_save '%.200s' is not served (only lm_head and "
                                     "embed_tokens replacements are)",
                                     s);
        }
#undef ENDS
        /* PEFT ignores entries that name nothing (task-specific heads like "score"); a
         * tensor saved for one is then reported as unexpected. */
    }
    const adapter_base *b = c->base;
    const st_tensor *t;
    kdtype kd;
    if (want_head) {
        if ((rc = adapter__expect(c, PREFIX "lm_head.weight", 2, b->vocab, b->hidden, &t))) return rc;
        st_dtype_to_kdtype(t->dtype, &kd);
        if ((rc = adapter__stage_mat(c, t, kd, &c->a->lm_head, NULL))) return rc;
    }
    if (want_embed) {
        if ((rc = adapter__expect(c, PREFIX "model.embed_tokens.weight", 2, b->vocab, b->hidden, &t))) return rc;
        st_dtype_to_kdtype(t->dtype, &kd);
        if ((rc = adapter__stage_mat(c, t, kd, &c->a->embed, NULL))) return rc;
    }
    return 0;
}

int adapter__load_lora(adapter__ctx *c) {
    adapter *a = c->a;
    const adapter_base *b = c->base;
    const cJSON *cfg = c->cfg;
    int n = b->n_layers * AMOD_COUNT, r, rc;
    double alpha;
    bool rslora, dora, lora_bias;
    const char *bias;
    bool *sel = NULL;
    lora_src *src = NULL;
    static const char *const defaults[] = {"q_proj", "v_proj", NULL};
    a->kind = ADAPTER_LORA;

    if ((rc = adapter__peft_check_common(c))) return rc;
    if ((rc = adapter__json_int(c, cfg, "r", 8, 1, ADAPTER_MAX_RANK, &r)) ||
        (rc = adapter__json_num(c, cfg, "lora_alpha", 8, ADAPTER_MAX_SCALE, &alpha)) ||
        (rc = adapter__json_bool(c, cfg, "use_rslora", false, &rslora)) ||
        (rc = adapter__json_bool(c, cfg, "use_dora", false, &dora)) ||
        (rc = adapter__json_bool(c, cfg, "lora_bias", false, &lora_bias)) ||
        (rc = adapter__json_str(c, cfg, "bias", "none", &bias)))
        return rc;
    if (strcmp(bias, "none"))
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: field 'bias' is '%.32s'; only \"none\" is served (trained base "
                             "biases would change the base model)",
                             bias);
    if (lora_bias)
        return adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: field 'lora_bias' is true; LoRA B biases are "
                                                    "not served");

    sel = calloc((size_t)n, sizeof *sel);
    src = calloc((size_t)n, sizeof *src);
    a->lora = calloc((size_t)n, sizeof *a->lora);
    if (!sel || !src || !a->lora) {
        rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = adapter__select_targets(c, defaults, defaults, sel))) goto fail;

    /* pass 1: names, shapes, dtypes */
    int dtype_mask = 0;
    for (int i = 0; i < n; i++) {
        if (!sel[i]) continue;
        int l = i / AMOD_COUNT, o, in, rr = r;
        adapter_module m = (adapter_module)(i % AMOD_COUNT);
        char key[128], name[256];
        adapter__module_key(l, m, key, sizeof key);
        adapter_module_shape(b, m, &o, &in);
        if ((rc = module_r_alpha(c, key, r, alpha, &rr, &src[i].alpha))) goto fail;
        src[i].rank = rr;
        snprintf(name, sizeof name, PREFIX "%s.lora_A.weight", key);
        if ((rc = adapter__expect(c, name, 2, rr, in, &src[i].a))) goto fail;
        snprintf(name, sizeof name, PREFIX "%s.lora_B.weight", key);
        if ((rc = adapter__expect(c, name, 2, o, rr, &src[i].b))) goto fail;
        if (dora) {
            snprintf(name, sizeof name, PREFIX "%s.lora_magnitude_vector", key);
            if (!st_find(c->st, name)) snprintf(name, sizeof name, PREFIX "%s.lora_magnitude_vector.weight", key);
            if ((rc = adapter__expect(c, name, 1, o, 0, &src[i].mag))) goto fail;
        }
        dtype_mask |= 1 << src[i].a->dtype;
        dtype_mask |= 1 << src[i].b->dtype;
    }
    /* One dtype for every A/B of the adapter (the SGMV kernels take one): the stored one
     * when they agree, f32 otherwise (exact for f16 and bf16). */
    kdtype kd = KDT_F32;
    for (int i = 0; i < n; i++) {
        if (!sel[i]) continue;
        if ((dtype_mask & (dtype_mask - 1)) == 0) st_dtype_to_kdtype(src[i].a->dtype, &kd);
        break;
    }

    /* pass 2: convert, stage, DoRA */
    for (int i = 0; i < n; i++) {
        if (!sel[i]) continue;
        adapter_lora *L = &a->lora[i];
        const void *ha, *hb;
        L->rank = src[i].rank;
        L->scale = (float)(rslora ? src[i].alpha / sqrt((double)L->rank) : src[i].alpha / L->rank);
        if ((rc = adapter__stage_mat(c, src[i].a, kd, &L->a, &ha))) goto fail;
        if ((rc = adapter__stage_mat(c, src[i].b, kd, &L->b, &hb))) goto fail;
        adapter__note_rank(a, L->rank);
        if (dora) {
            float *mag = NULL, *f = NULL;
            if ((rc = adapter__to_f32(c, src[i].mag, &mag))) goto fail;
            rc = dora_factor(c, i / AMOD_COUNT, (adapter_module)(i % AMOD_COUNT), L, ha, hb, mag, &f);
            free(mag);
            if (rc) goto fail;
            if ((rc = adapter__stage_own(c, f, (size_t)L->b.rows, &L->dora))) goto fail;
        }
    }
    rc = adapter__load_modules_to_save(c);
fail:
    free(sel);
    free(src);
    return rc;
}
