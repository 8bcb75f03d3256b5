/* adapter_store/adapter_hub.c — AdapterHub (adapters 1.3 save_adapter) bottleneck adapters:
 * seq_bn (Pfeiffer), double_seq_bn (Houlsby) and any BnConfig the forward pass can serve.
 *
 * adapter_config.json: {"config": {BnConfig fields}, "name", "hidden_size", "model_type",
 * ...}; "architecture" absent, null or "bottleneck" means a bottleneck adapter (adapters'
 * AdapterConfig.load). Weights in adapter.safetensors, per layer l and place P
 * ("attention_adapters" when mh_adapter, "output_adapters" when output_adapter):
 *   model.layers.l.P.adapters.<name>.adapter_down.0.{weight [size, hidden], bias [size]}
 *   model.layers.l.P.adapters.<name>.adapter_up.{weight [hidden, size], bias [hidden]}
 *   model.layers.l.P.adapters.<name>.scaling [1]            (scaling "learned" only)
 * with size = max(1, int(hidden // reduction_factor)) (methods/bottleneck.py + Adapter's
 * clamp to 1), reduction_factor a number or {"<layer>": f, "default": f}; layers listed in
 * leave_out have none. The head files save_adapter writes next to it (model_head.*,
 * head_config.json) hold the base's own LM head and are not read.
 *
 * Forward (methods/modeling.py Adapter.forward): up(act(down(h))) · scaling + residual,
 * which is SGMV shrink (bias, activation) then expand (bias, scale); the placement flags
 * are copied for server/model. par_bn (is_parallel: ParallelAdapter) is the same module
 * reading the residual stream before the sub-layer instead of its output. Options that add
 * layers or change that math (layer norms inside the adapter, gating, PHM, invertible
 * adapters, per-channel scaling, residual_before_ln "post_add") are refused.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "adapter_store/adapter_hub_internal.h"

/* The activation adapters' Activation_Function_Class builds for a name (lower-cased and
 * looked up in transformers' ACT2FN; None → identity). */
int adapter__hub_act(adapter__ctx *c, const char *name, kact *out) {
    static const struct {
        const char *name;
        kact act;
    } acts[] = {
        {"relu", KACT_RELU},        {"swish", KACT_SILU},         {"silu", KACT_SILU},
        {"gelu", KACT_GELU},        /* GELUActivation: exact erf form */
        {"gelu_new", KACT_GELU_TANH}, {"gelu_pytorch_tanh", KACT_GELU_TANH},
        {"gelu_fast", KACT_GELU_TANH}, /* same tanh formula, constants rounded to 1e-10 */
        {"tanh", KACT_TANH},        {"sigmoid", KACT_SIGMOID},    {"linear", KACT_NONE},
    };
    if (!name) {
        *out = KACT_NONE;
        return 0;
    }
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) {
        if (!strcasecmp(name, acts[i].name)) {
            *out = acts[i].act;
            return 0;
        }
    }
    return adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: config.non_linearity '%.64s' is not served",
                         name);
}

/* Python's float floor division a // b (b > 0), as adapters computes hidden // factor. */
static double py_floordiv(double a, double b) {
    double mod = fmod(a, b), div = (a - mod) / b;
    if (mod != 0 && ((b < 0) != (mod < 0))) div -= 1.0;
    double fl = floor(div);
    if (div - fl > 0.5) fl += 1.0;
    return fl;
}

static int layer_factor(adapter__ctx *c, const cJSON *rf, int layer, double *out) {
    const cJSON *v = rf;
    if (cJSON_IsObject(rf)) {
        char k[16];
        snprintf(k, sizeof k, "%d", layer);
        v = cJSON_GetObjectItemCaseSensitive(rf, k);
        if (!v) v = cJSON_GetObjectItemCaseSensitive(rf, "default");
        if (!v)
            return adapter__fail(c, PEFTD_EFORMAT,
                                 "adapter_config.json: config.reduction_factor has no entry for layer %d and no "
                                 "'default'",
                                 layer);
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0))
        return adapter__fail(c, PEFTD_EFORMAT,
                             "adapter_config.json: config.reduction_factor must be a positive number or a map of them");
    /* hidden // factor is the bottleneck width: it must be a width we can hold in an int
     * (a factor of 1e-300 would make it 1e302) */
    double q = isfinite(v->valuedouble) ? py_floordiv((double)c->base->hidden, v->valuedouble) : 0;
    if (!isfinite(v->valuedouble) || !(q <= (double)ADAPTER_MAX_RANK))
        return adapter__fail(c, PEFTD_EINVAL,
                             "adapter_config.json: config.reduction_factor %g gives a bottleneck width of %g for "
                             "hidden size %d (at most %lld)",
                             v->valuedouble, q, c->base->hidden, ADAPTER_MAX_RANK);
    *out = v->valuedouble;
    return 0;
}

static int refuse_flags(adapter__ctx *c) {
    static const struct {
        const char *field;
        const char *why;
    } flags[] = {
        {"ln_before", "a layer norm inside the adapter"},
        {"ln_after", "a layer norm inside the adapter"},
        {"use_gating", "gated adapters"},
        {"cross_adapter", "cross-attention adapters (encoder-decoder)"},
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        bool v;
        int rc = adapter__json_bool(c, c->cfg, flags[i].field, false, &v);
        if (rc) return rc;
        if (v)
            return adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: config.%s is true; %s are not served",
                                 flags[i].field, flags[i].why);
    }
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(c->cfg, "inv_adapter");
    if (inv && !cJSON_IsNull(inv))
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: config.inv_adapter is set; invertible adapters are not served");
    return 0;
}

/* The adapter's name as used in tensor names: "name" in the file, else read off a tensor. */
static int adapter_name(adapter__ctx *c, char *buf, size_t n) {
    const char *nm;
    int rc = adapter__json_str(c, c->root, "name", NULL, &nm);
    if (rc) return rc;
    if (nm) {
        if (strlen(nm) >= n) return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field 'name' is too long");
        snprintf(buf, n, "%s", nm);
        return 0;
    }
    for (size_t i = 0; i < st_count(c->st); i++) {
        const char *t = st_get(c->st, i)->name, *p = strstr(t, ".adapters."), *e;
        size_t k = 10;
        if (!p && (p = strstr(t, ".loras."))) k = 7;                /* AdapterHub LoRA / IA3 */
        if (!p && (p = strstr(t, ".prefix_tunings."))) k = 16;      /* prefix tuning */
        if (p && (e = strchr(p + k, '.')) && (size_t)(e - p - k) < n) {
            snprintf(buf, n, "%.*s", (int)(e - p - k), p + k);
            return 0;
        }
    }
    return adapter__fail(c, PEFTD_EFORMAT, "%s: no '...adapters.<name>...' tensor and no 'name' in adapter_config.json",
                         c->wname);
}

typedef struct {
    const st_tensor *dw, *db, *uw, *ub, *sc;
    float *dwm, *uwm;        /* Compacter: materialised [size, hidden] / [hidden, size] (owned) */
    int size;                /* bottleneck width */
} bn_src;

/* The settings of config that the forward serves (one set for every layer). */
typedef struct {
    bool mh, outp, olb, ola, rbl, par;
    kact act;
    double scaling;
    const char *scaling_str;  /* "learned": per-module tensors */
    const cJSON *rf;          /* reduction_factor */
    hub_phm phm;              /* Compacter (phm_layer) */
} hub_cfg;

/* Reads and checks config's bottleneck settings into h. */
static int hub_read_config(adapter__ctx *c, hub_cfg *h) {
    const adapter_base *b = c->base;
    const cJSON *cfg = c->cfg;
    int rc, hs;
    bool arbl;
    const char *arch, *act_name = NULL;
    *h = (hub_cfg){.act = KACT_NONE, .scaling = 1.0, .rbl = true};
    if ((rc = adapter__json_str(c, cfg, "architecture", "bottleneck", &arch))) return rc;
    if (strcmp(arch, "bottleneck"))
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: AdapterHub config.architecture '%.64s' is not served "
                             "(bottleneck, lora and ia3 adapters are)",
                             arch);
    if ((rc = adapter__json_int(c, c->root, "hidden_size", b->hidden, 0, ADAPTER_MAX_COUNT, &hs))) return rc;
    if (hs != b->hidden)
        return adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: hidden_size %d does not match base %s (%d)", hs,
                             b->name, b->hidden);
    if ((rc = refuse_flags(c)) || (rc = adapter__hub_phm_config(c, &h->phm))) return rc;
    if ((rc = adapter__json_bool(c, cfg, "mh_adapter", false, &h->mh)) ||
        (rc = adapter__json_bool(c, cfg, "output_adapter", false, &h->outp)) ||
        (rc = adapter__json_bool(c, cfg, "original_ln_before", false, &h->olb)) ||
        (rc = adapter__json_bool(c, cfg, "original_ln_after", true, &h->ola)) ||
        (rc = adapter__json_bool(c, cfg, "adapter_residual_before_ln", false, &arbl)) ||
        (rc = adapter__json_bool(c, cfg, "is_parallel", false, &h->par)) ||
        (rc = adapter__json_str(c, cfg, "non_linearity", NULL, &act_name)) || (rc = adapter__hub_act(c, act_name, &h->act)))
        return rc;
    /* adapter_residual_before_ln only orders the residual add against ln_after, refused above */
    (void)arbl;
    if (!h->mh && !h->outp)
        return adapter__fail(c, PEFTD_EFORMAT,
                             "adapter_config.json: neither config.mh_adapter nor config.output_adapter is true");

    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, "residual_before_ln");
    if (h->par) {
        /* ParallelAdapter (methods/modeling.py): pre_forward hands it the residual stream h
         * whatever original_ln_before / residual_before_ln say; post_forward adds a and,
         * with original_ln_after, h: x' = h + a + Δ(h). Without original_ln_after h is
         * dropped, which is refused as for the sequential form. */
        if (!h->ola)
            return adapter__fail(c, PEFTD_EUNSUPPORTED,
                                 "adapter_config.json: config.original_ln_after is false (the adapter output replaces "
                                 "the residual stream); only original_ln_after true is served");
        h->olb = false;
        h->rbl = true;
        goto scaling;
    }
    if (cJSON_IsString(v))
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: config.residual_before_ln '%.32s' is not served (true or false are)",
                             v->valuestring);
    if ((rc = adapter__json_bool(c, cfg, "residual_before_ln", true, &h->rbl))) return rc;
    /* What the forward serves is x' = h + a + Δ (see server/model/llama_adapters.c). Per
     * Adapter.pre_forward/post_forward with layer_norm None (SEMANTICS.md): without
     * original_ln_after the residual stream h is dropped (x' = a + Δ), and
     * residual_before_ln false makes the residual z = a + h when original_ln_before, so h is
     * added twice (x' = 2h + a + Δ). Neither is served: refused here, at upload, never at
     * run time. residual_before_ln false with original_ln_before false gives residual = a,
     * the served math exactly, so it is accepted as residual_before_ln true. */
    if (!h->ola)
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: config.original_ln_after is false (the adapter output replaces "
                             "the residual stream); only original_ln_after true is served");
    if (!h->rbl && h->olb)
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: config.residual_before_ln is false with original_ln_before true "
                             "(the residual stream is added twice); only residual_before_ln true is served with it");
    h->rbl = true;

scaling:
    v = cJSON_GetObjectItemCaseSensitive(cfg, "scaling");
    if (cJSON_IsString(v)) {
        h->scaling_str = v->valuestring;
        if (strcmp(h->scaling_str, "learned"))
            return adapter__fail(c, PEFTD_EUNSUPPORTED,
                                 "adapter_config.json: config.scaling '%.32s' is not served (a number or \"learned\" "
                                 "are)",
                                 h->scaling_str);
    } else if ((rc = adapter__json_num(c, cfg, "scaling", 1.0, ADAPTER_MAX_SCALE, &h->scaling))) {
        return rc;
    }

    h->rf = cJSON_GetObjectItemCaseSensitive(cfg, "reduction_factor");
    if (!h->rf || cJSON_IsNull(h->rf))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: config.reduction_factor is missing");
    return 0;
}

/* config.leave_out into skip[n_layers]. */
static int hub_leave_out(adapter__ctx *c, bool *skip) {
    const cJSON *lo = cJSON_GetObjectItemCaseSensitive(c->cfg, "leave_out"), *e;
    if (!lo || cJSON_IsNull(lo)) return 0;
    if (!cJSON_IsArray(lo))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: config.leave_out must be a list of integers");
    cJSON_ArrayForEach(e, lo) {
        int li, rc;
        if ((rc = adapter__num_int(c, e, "config.leave_out (a list of layer indices of the base)", 0,
                                   c->base->n_layers - 1, &li)))
            return rc;
        skip[li] = true;
    }
    return 0;
}

/* Pass 1: every expected tensor with its shape into src[l * 2 + place]; *kd = the one
 * dtype of every down/up matrix (one SGMV dtype per adapter; f32 when mixed). */
static int hub_find_tensors(adapter__ctx *c, const hub_cfg *h, const bool *skip, const char *name, bn_src *src,
                            kdtype *kd) {
    int L = c->base->n_layers, hidden = c->base->hidden, rc;
    int dtype_mask = 0;
    kdtype first = KDT_F32;
    for (int l = 0; l < L; l++) {
        if (skip[l]) continue;
        double f = 1.0;
        if ((rc = layer_factor(c, h->rf, l, &f))) return rc;
        double q = py_floordiv((double)hidden, f);
        int size = q < 1 ? 1 : (int)q;
        for (int p = 0; p < 2; p++) {
            if (!(p ? h->outp : h->mh)) continue;
            bn_src *s = &src[l * 2 + p];
            char pre[512], nm[600];
            snprintf(pre, sizeof pre, "model.layers.%d.%s.adapters.%s.", l, p ? "output_adapters" : "attention_adapters",
                     name);
            if (h->phm.on) { /* Compacter: weights materialised from their PHM factors (f32) */
                snprintf(nm, sizeof nm, "%sadapter_down.0.", pre);
                if ((rc = adapter__hub_phm_module(c, &h->phm, name, nm, false, hidden, size, &s->dwm, &s->db)))
                    return rc;
                snprintf(nm, sizeof nm, "%sadapter_up.", pre);
                if ((rc = adapter__hub_phm_module(c, &h->phm, name, nm, true, size, hidden, &s->uwm, &s->ub)))
                    return rc;
                s->size = size;
                goto scaling_tensor;
            }
            snprintf(nm, sizeof nm, "%sadapter_down.0.weight", pre);
            if ((rc = adapter__expect(c, nm, 2, size, hidden, &s->dw))) return rc;
            snprintf(nm, sizeof nm, "%sadapter_down.0.bias", pre);
            if ((rc = adapter__expect(c, nm, 1, size, 0, &s->db))) return rc;
            snprintf(nm, sizeof nm, "%sadapter_up.weight", pre);
            if ((rc = adapter__expect(c, nm, 2, hidden, size, &s->uw))) return rc;
            snprintf(nm, sizeof nm, "%sadapter_up.bias", pre);
            if ((rc = adapter__expect(c, nm, 1, hidden, 0, &s->ub))) return rc;
            if (!dtype_mask) st_dtype_to_kdtype(s->dw->dtype, &first);
            dtype_mask |= (1 << s->dw->dtype) | (1 << s->uw->dtype);
        scaling_tensor:
            if (h->scaling_str) {
                snprintf(nm, sizeof nm, "%sscaling", pre);
                if ((rc = adapter__expect(c, nm, 1, 1, 0, &s->sc))) return rc;
            }
        }
    }
    *kd = h->phm.on || (dtype_mask & (dtype_mask - 1)) ? KDT_F32 : first;
    return 0;
}

/* Pass 2: one bottleneck module from its tensors s, staged. */
static int hub_stage(adapter__ctx *c, const hub_cfg *h, bn_src *s, kdtype kd, adapter_bottleneck *B) {
    int rc;
    B->size = s->dwm ? s->size : (int)s->dw->shape[0];
    B->act = h->act;
    B->scaling = (float)h->scaling;
    B->residual_before_ln = h->rbl;
    B->original_ln_before = h->olb;
    B->original_ln_after = h->ola;
    B->parallel = h->par;
    if (s->sc) {
        float *sc = NULL;
        if ((rc = adapter__to_f32(c, s->sc, &sc))) return rc;
        B->scaling = sc[0];
        free(sc);
        if (!(fabsf(B->scaling) <= (float)ADAPTER_MAX_SCALE))
            return adapter__fail(c, PEFTD_EINVAL, "%s: learned scaling '%s' is %g; its magnitude must be at most %g",
                                 c->wname, s->sc->name, B->scaling, ADAPTER_MAX_SCALE);
    }
    if (s->dwm) { /* Compacter: stage the materialised f32 weights (the stage owns them now) */
        int H = c->base->hidden;
        rc = adapter__stage_own_mat(c, s->dwm, B->size, H, &B->down);
        s->dwm = NULL;
        if (rc == 0) rc = adapter__stage_own_mat(c, s->uwm, H, B->size, &B->up);
        s->uwm = NULL;
        if (rc || (s->db && (rc = adapter__stage_vec(c, s->db, &B->down_bias))) ||
            (s->ub && (rc = adapter__stage_vec(c, s->ub, &B->up_bias))))
            return rc;
    } else if ((rc = adapter__stage_mat(c, s->dw, kd, &B->down, NULL)) ||
               (rc = adapter__stage_vec(c, s->db, &B->down_bias)) ||
               (rc = adapter__stage_mat(c, s->uw, kd, &B->up, NULL)) || (rc = adapter__stage_vec(c, s->ub, &B->up_bias))) {
        return rc;
    }
    adapter__note_rank(c->a, B->size);
    return 0;
}

/* A bottleneck adapter (seq_bn, double_seq_bn, par_bn, Compacter) from the config c->cfg. */
static int load_bottleneck(adapter__ctx *c, const char *name) {
    adapter *a = c->a;
    int L = c->base->n_layers, rc;
    hub_cfg h;
    kdtype kd = KDT_F32;
    a->kind = ADAPTER_BOTTLENECK;
    if (c->base->post_norms)
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "bottleneck adapters are not served on base %s: its sub-layer outputs are normed "
                             "before the residual add (Gemma post-norms)",
                             c->base->name);
    if ((rc = hub_read_config(c, &h))) return rc;

    bool *skip = calloc((size_t)L, sizeof *skip);
    bn_src *src = calloc((size_t)L * 2, sizeof *src);
    a->bn_attn = calloc((size_t)L, sizeof *a->bn_attn);
    a->bn_ffn = calloc((size_t)L, sizeof *a->bn_ffn);
    if (!skip || !src || !a->bn_attn || !a->bn_ffn) {
        rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = hub_leave_out(c, skip)) || (rc = hub_find_tensors(c, &h, skip, name, src, &kd))) goto fail;
    for (int l = 0; l < L; l++)
        for (int p = 0; p < 2; p++)
            if ((src[l * 2 + p].dw || src[l * 2 + p].dwm) &&
                (rc = hub_stage(c, &h, &src[l * 2 + p], kd, p ? &a->bn_ffn[l] : &a->bn_attn[l])))
                goto fail;
fail:
    for (int i = 0; src && i < L * 2; i++) free(src[i].dwm), free(src[i].uwm);
    free(skip);
    free(src);
    return rc;
}

/* A ConfigUnion (architecture "union"): MAM and any other union of ONE prefix tuning and ONE
 * bottleneck config — both halves applied per request (the prefix as shared K/V blocks, the
 * bottleneck by SGMV); the adapter's kind is ADAPTER_BOTTLENECK with a prefix
 * (adapter_has_prefix). Other unions (e.g. UniPELT's gated ones) are refused. */
static int load_union(adapter__ctx *c, const char *name) {
    const cJSON *cfgs = cJSON_GetObjectItemCaseSensitive(c->cfg, "configs"), *e, *pfx = NULL, *bn = NULL;
    int rc;
    if (!cJSON_IsArray(cfgs))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: config.configs of a union must be a list");
    cJSON_ArrayForEach(e, cfgs) {
        const cJSON *arch = cJSON_GetObjectItemCaseSensitive(e, "architecture");
        const char *s = cJSON_IsString(arch) ? arch->valuestring : cJSON_IsObject(e) && !arch ? "bottleneck" : NULL;
        if (s && !strcmp(s, "prefix_tuning") && !pfx) pfx = e;
        else if (s && !strcmp(s, "bottleneck") && !bn) bn = e;
        else
            return adapter__fail(c, PEFTD_EUNSUPPORTED,
                                 "adapter_config.json: a union member with architecture '%.32s' is not served (one "
                                 "prefix_tuning and one bottleneck config, as MAM, are)",
                                 s ? s : "?");
    }
    if (!pfx || !bn)
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: a union is served as one prefix_tuning plus one bottleneck config "
                             "(MAM); this one lacks the %s",
                             pfx ? "bottleneck" : "prefix tuning");
    if ((rc = adapter__load_hub_prefix(c, pfx, name))) return rc;
    cJSON *whole = c->cfg;
    c->cfg = (cJSON *)bn;
    rc = load_bottleneck(c, name);
    c->cfg = whole;
    return rc;
}

int adapter__load_hub(adapter__ctx *c) {
    int rc;
    char name[256];
    const char *arch;
    if ((rc = adapter__json_str(c, c->cfg, "architecture", "bottleneck", &arch)) ||
        (rc = adapter_name(c, name, sizeof name)))
        return rc;
    if (!strcmp(arch, "lora")) return adapter__load_hub_lora(c, name);
    if (!strcmp(arch, "prefix_tuning")) return adapter__load_hub_prefix(c, c->cfg, name);
    if (!strcmp(arch, "union")) return load_union(c, name);
    return load_bottleneck(c, name);
}
