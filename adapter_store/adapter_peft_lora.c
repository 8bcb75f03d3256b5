/* adapter_store/adapter_peft_lora.c — PEFT LoRA adapters (plain, rsLoRA, DoRA, rank/alpha
 * patterns) and PEFT's modules_to_save replacements.
 *
 * Tensors (PEFT 0.21 save_pretrained, adapter name stripped), per adapted module <key>:
 *   base_model.model.<key>.lora_A.weight          [r, in]
 *   base_model.model.<key>.lora_B.weight          [out, r]
 *   base_model.model.<key>.lora_magnitude_vector  [out]   (DoRA; older files add ".weight")
 * scale = alpha / r, or alpha / sqrt(r) with use_rslora, r and alpha after rank_pattern /
 * alpha_pattern (PEFT LoraLayer.update_layer). Trained biases and LoRA on embed_tokens /
 * lm_head: adapter_peft_lora_ext.c.
 *
 * DoRA (peft/tuners/lora/dora.py): y = (m / ||W + scale·B·A||_row) ⊙ (W x + scale·B A x),
 * the norm taken per output row (torch.linalg.norm(weight, dim=1)) with the scale inside.
 * That factor depends only on the adapter and the base, so it is computed here, in double,
 * and the forward pass applies it as a per-output scale after base + LoRA. A request's
 * adapter_scale t multiplies scale inside the norm too (PEFT set_scale), so the three row
 * statistics ||W||², <W, ΔW>, ||ΔW||² are kept as well: ||W + tΔW||² is a quadratic in t.
 * The base W is read from the host (adapter_base.layer_w), never from the backend.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"
#include "kernels/cpu/quant_ref.h"

#define PREFIX "base_model.model."

typedef struct {
    const st_tensor *a, *b, *mag;
    st_tensor b_rows, mag_rows; /* this module's rows of a fused module's B / magnitude */
    int rank;
    double alpha;
} lora_src;

int adapter__module_r_alpha(adapter__ctx *c, const char *key, int r, double alpha, int *r_out, double *alpha_out,
                          char *r_field, size_t r_field_len) {
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
    snprintf(r_field, r_field_len, "field 'r'");
    if (hit) {
        snprintf(what, sizeof what, "rank_pattern['%.200s']", hit->string);
        if ((rc = adapter__num_int(c, hit, what, 1, ADAPTER_MAX_LORA_RANK, r_out))) return rc;
        snprintf(r_field, r_field_len, "%s", what);
    }
    if ((rc = adapter__pattern_value(c, ap, "alpha_pattern", key, &hit))) return rc;
    *alpha_out = alpha;
    if (hit) {
        snprintf(what, sizeof what, "alpha_pattern['%.200s']", hit->string);
        if ((rc = adapter__num_float(c, hit, what, ADAPTER_MAX_SCALE, alpha_out))) return rc;
    }
    return 0;
}

/* DoRA of one module from host memory only (import runs on any thread): per output row j,
 * in double, with ΔW = scale·B·A,
 *   f[j] = m[j] / ||W_j + ΔW_j||           (the factor at request scale 1, exact)
 *   stats[j] = {m[j], ||W_j||², <W_j, ΔW_j>, ||ΔW_j||²}   (any other scale, see adapter.h)
 * W is the base's host view (adapter_base.layer_w); A, B are host copies in dtype dt. */
int adapter__dora_norms(const adapter_base *b, int layer, adapter_module mod, const adapter_lora *L, kdtype dt,
                        const void *ha, const void *hb, const float *m, float *f, float *stats, char *err,
                        size_t errlen) {
    int o, in;
    adapter_module_shape(b, mod, &o, &in);
    const kmat *w = b->layer_w ? &b->layer_w[layer * AMOD_COUNT + mod] : NULL;
    if (!w || !w->data || w->rows != o || w->cols != in) {
        if (err && errlen)
            snprintf(err, errlen, "DoRA on layer %d %s needs the base weight [%d, %d], which base %s did not provide",
                 layer, adapter_module_name(mod), o, in, b->name);
        return PEFTD_EINVAL;
    }
    double *dw = malloc((size_t)in * sizeof *dw);
    /* A quantized base (at-load q8_0/q4_k) is read dequantized, row by row (quant_ref.c):
     * the norms are those of the weights the matmul uses. */
    bool quant = kdtype_is_quant(w->dtype);
    float *wq = quant ? malloc((size_t)in * sizeof *wq) : NULL;
    if (!dw || (quant && !wq)) {
        free(dw);
        free(wq);
        if (err && errlen) snprintf(err, errlen, "out of memory computing DoRA norms");
        return PEFTD_ENOMEM;
    }
    for (int j = 0; j < o; j++) {
        const void *wrow = (const unsigned char *)w->data + (size_t)j * kdtype_row_bytes(w->dtype, in);
        kdtype wdt = w->dtype;
        if (quant) {
            qref_dequantize(kdtype_ggml_type(wdt), wrow, wq, in);
            wrow = wq;
            wdt = KDT_F32;
        }
        for (int i = 0; i < in; i++) dw[i] = 0;
        for (int k = 0; k < L->rank; k++) {
            double bjk = (double)L->scale * adapter__elem(hb, dt, (size_t)j * L->rank + k);
            for (int i = 0; i < in; i++) dw[i] += bjk * adapter__elem(ha, dt, (size_t)k * in + i);
        }
        double ww = 0, wd = 0, dd = 0, n1 = 0;
        for (int i = 0; i < in; i++) {
            double wi = adapter__elem(wrow, wdt, (size_t)i), s = wi + dw[i];
            ww += wi * wi, wd += wi * dw[i], dd += dw[i] * dw[i], n1 += s * s;
        }
        if (!(n1 > 0)) {
            free(dw);
            free(wq);
            if (err && errlen) snprintf(err, errlen, "DoRA: row %d of layer %d %s has zero norm", j, layer, adapter_module_name(mod));
            return PEFTD_EINVAL;
        }
        f[j] = (float)(m[j] / sqrt(n1));
        float *st = stats + (size_t)j * ADAPTER_DORA_STATS;
        st[0] = m[j], st[1] = (float)ww, st[2] = (float)wd, st[3] = (float)dd;
    }
    free(dw);
    free(wq);
    return 0;
}

/* PEFT's _set_trainable: a modules_to_save entry names every module whose key ends with it
 * (no "." boundary). peftd serves full replacements of lm_head and embed_tokens only. */
int adapter__load_modules_to_save(adapter__ctx *c) {
    const cJSON *mts, *e;
    int rc = adapter__json_str_list(c, c->cfg, "modules_to_save", &mts);
    if (rc || !mts) return rc;
    static const char *const others[] = {"model", "model.layers", "model.norm", "model.rotary_emb", "self_attn", "mlp",
                                         "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                         "qkv_proj", "gate_up_proj", "act_fn", "input_layernorm", "post_attention_layernorm", NULL};
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
    /* ensure_weight_tying on a tied base: PEFT rewrites modules_to_save to the embedding and
     * ties the lm_head copy to it; save_pretrained writes both (equal) tables. */
    bool tie;
    if ((rc = adapter__json_bool(c, c->cfg, "ensure_weight_tying", false, &tie))) return rc;
    if (tie && want_embed && st_find(c->st, PREFIX "lm_head.weight")) want_head = true;
    if (tie && want_head && st_find(c->st, PREFIX "model.embed_tokens.weight")) want_embed = true;
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
    if ((rc = adapter__json_int(c, cfg, "r", 8, 1, ADAPTER_MAX_LORA_RANK, &r)) ||
        (rc = adapter__json_num(c, cfg, "lora_alpha", 8, ADAPTER_MAX_SCALE, &alpha)) ||
        (rc = adapter__json_bool(c, cfg, "use_rslora", false, &rslora)) ||
        (rc = adapter__json_bool(c, cfg, "use_dora", false, &dora)) ||
        (rc = adapter__json_bool(c, cfg, "lora_bias", false, &lora_bias)) ||
        (rc = adapter__json_str(c, cfg, "bias", "none", &bias)))
        return rc;
    sel = calloc((size_t)n, sizeof *sel);
    src = calloc((size_t)n, sizeof *src);
    a->lora = calloc((size_t)n, sizeof *a->lora);
    if (!sel || !src || !a->lora) {
        rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        goto fail;
    }
    bool extra[2]; /* embed_tokens, lm_head */
    if ((rc = adapter__select_targets(c, defaults, defaults, sel, extra))) goto fail;

    /* pass 1: names, shapes, dtypes */
    int dtype_mask = 0;
    for (int i = 0; i < n; i++) {
        if (!sel[i]) continue;
        int l = i / AMOD_COUNT, o, in, rr = r, row0, fo;
        adapter_module m = (adapter_module)(i % AMOD_COUNT);
        char key[128], name[256], r_field[300];
        adapter__module_key(b, l, m, key, sizeof key);
        adapter_module_shape(b, m, &o, &in);
        adapter__fused_rows(b, m, &row0, &fo);
        if ((rc = adapter__module_r_alpha(c, key, r, alpha, &rr, &src[i].alpha, r_field, sizeof r_field))) goto fail;
        if (rr > (o > in ? o : in)) {
            rc = adapter__fail(c, PEFTD_EINVAL,
                               "adapter_config.json: %s is %d, above max(in, out) = %d of %s [%d, %d] in base %s",
                               r_field, rr, o > in ? o : in, key, o, in, b->name);
            goto fail;
        }
        src[i].rank = rr;
        snprintf(name, sizeof name, PREFIX "%s.lora_A.weight", key);
        if ((rc = adapter__expect(c, name, 2, rr, in, &src[i].a))) goto fail;
        snprintf(name, sizeof name, PREFIX "%s.lora_B.weight", key);
        if ((rc = adapter__expect(c, name, 2, fo, rr, &src[i].b))) goto fail;
        src[i].b_rows = adapter__tensor_rows(src[i].b, row0, o);
        src[i].b = &src[i].b_rows;
        if (dora) {
            snprintf(name, sizeof name, PREFIX "%s.lora_magnitude_vector", key);
            if (!st_find(c->st, name)) snprintf(name, sizeof name, PREFIX "%s.lora_magnitude_vector.weight", key);
            if ((rc = adapter__expect(c, name, 1, fo, 0, &src[i].mag))) goto fail;
            src[i].mag_rows = adapter__tensor_rows(src[i].mag, row0, o);
            src[i].mag = &src[i].mag_rows;
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
            float *mag = NULL, *f = malloc((size_t)L->b.rows * sizeof *f);
            L->dora_stats = malloc((size_t)L->b.rows * ADAPTER_DORA_STATS * sizeof *L->dora_stats);
            if (!f || !L->dora_stats) {
                free(f);
                rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory computing DoRA norms");
                goto fail;
            }
            if ((rc = adapter__to_f32(c, src[i].mag, &mag))) {
                free(f);
                goto fail;
            }
            rc = adapter__dora_norms(b, i / AMOD_COUNT, (adapter_module)(i % AMOD_COUNT), L, kd, ha, hb, mag, f,
                                     L->dora_stats, c->err, c->errlen);
            free(mag);
            if (rc) {
                free(f);
                goto fail;
            }
            if ((rc = adapter__stage_own(c, f, (size_t)L->b.rows, &L->dora))) goto fail;
        }
    }
    a->rslora = rslora;
    a->config_r = r;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(cfg, "rank_pattern"), *it;
    cJSON_ArrayForEach(it, rp) if (cJSON_IsNumber(it) && it->valuedouble > a->config_r) a->config_r = (int)it->valuedouble;
    if ((rc = adapter__load_lora_biases(c, bias, lora_bias))) goto fail;
    if ((rc = adapter__load_modules_to_save(c))) goto fail;
    rc = adapter__load_lora_top(c, extra, r, alpha, rslora, dora);
fail:
    free(sel);
    free(src);
    return rc;
}
