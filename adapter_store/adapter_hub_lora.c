/* adapter_store/adapter_hub_lora.c — AdapterHub's own LoRA and (IA)^3 (adapters 1.3
 * LoRAConfig, architecture "lora"), imported into the forms peftd already serves.
 *
 * Which projections (adapters/models/llama/mixin_llama.py): selfattn_lora wraps q/k/v as
 * listed in attn_matrices ("q", "k", "v"); intermediate_lora wraps mlp.down_proj and
 * output_lora mlp.up_proj (the library's names for Llama); layers in leave_out have none.
 * Tensors: model.layers.L.self_attn.{q,k,v}_proj.loras.<name>.lora_A / lora_B and
 * model.layers.L.mlp.{down,up}_proj.loras.<name>.lora_A / lora_B.
 *
 * composition_mode "add" (methods/lora.py LoRA): y = W x + b + scaling·B(A x) with
 *   scaling = alpha / r — PEFT's LoRA exactly → ADAPTER_LORA.
 * composition_mode "scale" (IA3Config; methods/lora.py IA3, r must be 1): y = (W x + b) ⊙
 *   (scaling·lora_B) with lora_B [out, 1] — an output-side (IA)^3 vector on every wrapped
 *   module, down_proj included (PEFT scales down_proj's INPUT instead) → ADAPTER_IA3 with
 *   every side "output"; scaling·lora_B is formed here in f32, as the library does.
 * Refused with the field named: use_gating (a learned gate per token), use_dora, VeRA
 * (vera_d / vera_b set), other composition modes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_hub_internal.h"

/* The adapted modules of one layer, as the library wraps them. */
static int hub_lora_modules(adapter__ctx *c, bool *mods) {
    bool sa, inter, outp;
    const cJSON *am, *e;
    int rc;
    memset(mods, 0, sizeof(bool) * AMOD_COUNT);
    if ((rc = adapter__json_bool(c, c->cfg, "selfattn_lora", true, &sa)) ||
        (rc = adapter__json_bool(c, c->cfg, "intermediate_lora", false, &inter)) ||
        (rc = adapter__json_bool(c, c->cfg, "output_lora", false, &outp)) ||
        (rc = adapter__json_str_list(c, c->cfg, "attn_matrices", &am)))
        return rc;
    if (sa) {
        if (!am) mods[AMOD_Q] = mods[AMOD_V] = true; /* LoRAConfig default ["q", "v"] */
        cJSON_ArrayForEach(e, am) {
            const char *s = e->valuestring;
            if (!strcmp(s, "q")) mods[AMOD_Q] = true;
            else if (!strcmp(s, "k")) mods[AMOD_K] = true;
            else if (!strcmp(s, "v")) mods[AMOD_V] = true;
            else
                return adapter__fail(c, PEFTD_EUNSUPPORTED,
                                     "adapter_config.json: config.attn_matrices entry '%.32s' is not served on Llama "
                                     "(\"q\", \"k\", \"v\" are)",
                                     s);
        }
    }
    mods[AMOD_DOWN] = inter;
    mods[AMOD_UP] = outp;
    for (int m = 0; m < AMOD_COUNT; m++)
        if (mods[m]) return 0;
    return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: the LoRA config adapts no module");
}

static int hub_lora_refusals(adapter__ctx *c, bool *scale_mode) {
    bool gating, dora;
    const char *mode;
    int rc;
    if ((rc = adapter__json_bool(c, c->cfg, "use_gating", false, &gating)) ||
        (rc = adapter__json_bool(c, c->cfg, "use_dora", false, &dora)) ||
        (rc = adapter__json_str(c, c->cfg, "composition_mode", "add", &mode)))
        return rc;
    if (gating)
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: config.use_gating is true; gated AdapterHub LoRA is not served");
    if (dora)
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: config.use_dora is true; AdapterHub DoRA is not served (PEFT's "
                             "use_dora is)");
    static const char *const vera[] = {"vera_d", "vera_b"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->cfg, vera[i]);
        if (v && !cJSON_IsNull(v))
            return adapter__fail(c, PEFTD_EUNSUPPORTED,
                                 "adapter_config.json: config.%s is set (AdapterHub VeRA); it is not served", vera[i]);
    }
    if (strcmp(mode, "add") && strcmp(mode, "scale"))
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: config.composition_mode '%.32s' is not served (\"add\" and "
                             "\"scale\" are)",
                             mode);
    *scale_mode = !strcmp(mode, "scale");
    return 0;
}

/* config.leave_out into skip[n_layers]. */
static int hub_lora_leave_out(adapter__ctx *c, bool *skip) {
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

static void module_prefix(const char *name, int l, adapter_module m, char *buf, size_t n) {
    bool mlp = m == AMOD_DOWN || m == AMOD_UP;
    snprintf(buf, n, "model.layers.%d.%s.%s.loras.%s.", l, mlp ? "mlp" : "self_attn", adapter_module_name(m), name);
}

/* scale mode: one [out, 1] vector per module, times scaling */
static int stage_ia3(adapter__ctx *c, const char *pre, int out, double scaling, const float **dst) {
    char nm[600];
    const st_tensor *t;
    float *v = NULL;
    int rc;
    snprintf(nm, sizeof nm, "%slora_B", pre);
    if ((rc = adapter__expect(c, nm, 2, out, 1, &t)) || (rc = adapter__to_f32(c, t, &v))) return rc;
    float s = (float)scaling;
    for (int j = 0; j < out; j++) v[j] *= s;
    return adapter__stage_own(c, v, (size_t)out, dst);
}

int adapter__load_hub_lora(adapter__ctx *c, const char *name) {
    adapter *a = c->a;
    const adapter_base *b = c->base;
    int L = b->n_layers, r, rc;
    double alpha;
    bool scale_mode = false, mods[AMOD_COUNT], *skip = NULL;
    if ((rc = hub_lora_refusals(c, &scale_mode)) || (rc = hub_lora_modules(c, mods)) ||
        (rc = adapter__json_int(c, c->cfg, "r", 8, 1, ADAPTER_MAX_LORA_RANK, &r)) ||
        (rc = adapter__json_num(c, c->cfg, "alpha", 8, ADAPTER_MAX_SCALE, &alpha)))
        return rc;
    if (scale_mode && r != 1)
        return adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: composition_mode \"scale\" needs r 1 (got %d)", r);
    double scaling = alpha / r;
    if (!(skip = calloc((size_t)L, sizeof *skip))) return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    if ((rc = hub_lora_leave_out(c, skip))) goto done;
    a->kind = scale_mode ? ADAPTER_IA3 : ADAPTER_LORA;
    if (scale_mode) a->ia3 = calloc((size_t)L * AMOD_COUNT, sizeof *a->ia3);
    else a->lora = calloc((size_t)L * AMOD_COUNT, sizeof *a->lora);
    if (scale_mode ? !a->ia3 : !a->lora) {
        rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        goto done;
    }
    /* one SGMV dtype per adapter: the files' dtype when A and B agree everywhere, else f32 */
    int dtype_mask = 0;
    kdtype kd = KDT_F32;
    for (int pass = 0; pass < 2 && !scale_mode; pass++) {
        for (int l = 0; l < L; l++) {
            for (int m = 0; m < AMOD_COUNT; m++) {
                if (skip[l] || !mods[m]) continue;
                int out, in;
                char pre[300], nm[600];
                const st_tensor *ta, *tb;
                adapter_module_shape(b, (adapter_module)m, &out, &in);
                module_prefix(name, l, (adapter_module)m, pre, sizeof pre);
                snprintf(nm, sizeof nm, "%slora_A", pre);
                if ((rc = adapter__expect(c, nm, 2, r, in, &ta))) goto done;
                snprintf(nm, sizeof nm, "%slora_B", pre);
                if ((rc = adapter__expect(c, nm, 2, out, r, &tb))) goto done;
                if (pass == 0) {
                    if (!dtype_mask) st_dtype_to_kdtype(ta->dtype, &kd);
                    dtype_mask |= (1 << ta->dtype) | (1 << tb->dtype);
                    continue;
                }
                adapter_lora *Lm = &a->lora[l * AMOD_COUNT + m];
                Lm->rank = r;
                Lm->scale = (float)scaling;
                if ((rc = adapter__stage_mat(c, ta, kd, &Lm->a, NULL)) || (rc = adapter__stage_mat(c, tb, kd, &Lm->b, NULL)))
                    goto done;
                adapter__note_rank(a, r);
            }
        }
        if (pass == 0 && (dtype_mask & (dtype_mask - 1))) kd = KDT_F32;
    }
    for (int l = 0; l < L && scale_mode; l++) {
        for (int m = 0; m < AMOD_COUNT; m++) {
            if (skip[l] || !mods[m]) continue;
            int out, in;
            char pre[300];
            adapter_module_shape(b, (adapter_module)m, &out, &in);
            module_prefix(name, l, (adapter_module)m, pre, sizeof pre);
            if ((rc = stage_ia3(c, pre, out, scaling, &a->ia3[l * AMOD_COUNT + m]))) goto done;
        }
    }
done:
    free(skip);
    return rc;
}
