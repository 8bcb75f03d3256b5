/* adapter_store/adapter_peft_adalora.c — PEFT AdaLoRA adapters, converted at import to the
 * LoRA form the forward pass already applies (kind ADAPTER_LORA; nothing new per step).
 *
 * PEFT 0.21.2 (tuners/adalora/layer.py SVDLinear.forward, model.py):
 *   y = W x + ((x·(A ⊙ E)ᵀ)·Bᵀ) · scaling / (ranknum + 1e-5)
 *   A = <key>.lora_A [r', in], E = <key>.lora_E [r', 1] (singular values, broadcast over A's
 *   rows), B = <key>.lora_B [out, r'] — saved with no ".weight" suffix; r' is the module's rank
 *   after pruning (save_pretrained drops the pruned triplets per rank_pattern, so the saved
 *   shapes ARE the per-module ranks; a fully pruned module has r' = 0 and adds nothing).
 *   scaling = lora_alpha if lora_alpha > 0 else r' (update_layer after the resize on load);
 *   ranknum is NOT saved: it is init_r when the layer is built and resize_modules_by_rank_pattern
 *   copies it over, so it stays init_r whatever the pruning.
 * So the import folds E into A once (A'[k, :] = A[k, :]·E[k], the same f32 product PEFT forms
 * every forward) and the constant into the scale: scale = scaling / (init_r + 1e-5). A request
 * adapter_scale then multiplies the delta as for LoRA (PEFT's set_scale does not exist for
 * AdaLoRA; the served semantics are LoRA's). Target selection is LoRA's (AdaLoraConfig is a
 * LoraConfig); DoRA, biases, embed_tokens / lm_head targets are refused.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"

#define PREFIX "base_model.model."

int adapter__load_adalora(adapter__ctx *c) {
    adapter *a = c->a;
    const adapter_base *b = c->base;
    int n = b->n_layers * AMOD_COUNT, init_r, rc;
    double alpha;
    bool dora, lora_bias, rslora;
    const char *bias;
    static const char *const defaults[] = {"q_proj", "v_proj", NULL};
    a->kind = ADAPTER_LORA;
    if ((rc = adapter__peft_check_common(c))) return rc;
    if ((rc = adapter__json_int(c, c->cfg, "init_r", 12, 1, ADAPTER_MAX_LORA_RANK, &init_r)) ||
        (rc = adapter__json_num(c, c->cfg, "lora_alpha", 8, ADAPTER_MAX_SCALE, &alpha)) ||
        (rc = adapter__json_bool(c, c->cfg, "use_dora", false, &dora)) ||
        (rc = adapter__json_bool(c, c->cfg, "use_rslora", false, &rslora)) ||
        (rc = adapter__json_bool(c, c->cfg, "lora_bias", false, &lora_bias)) ||
        (rc = adapter__json_str(c, c->cfg, "bias", "none", &bias)))
        return rc;
    if (dora || rslora || lora_bias || strcmp(bias, "none"))
        return adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: AdaLoRA with %s is not served",
                             dora ? "use_dora" : rslora ? "use_rslora" : lora_bias ? "lora_bias" : "a trained bias");
    bool *sel = calloc((size_t)n, sizeof *sel);
    a->lora = calloc((size_t)n, sizeof *a->lora);
    if (!sel || !a->lora) {
        free(sel);
        return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    }
    if ((rc = adapter__select_targets(c, defaults, defaults, sel, NULL))) goto fail;
    for (int i = 0; i < n; i++) {
        if (!sel[i]) continue;
        int l = i / AMOD_COUNT, o, in, row0, fo;
        adapter_module m = (adapter_module)(i % AMOD_COUNT);
        char key[128], name[256];
        const st_tensor *ta, *tb, *te;
        adapter__module_key(b, l, m, key, sizeof key);
        adapter_module_shape(b, m, &o, &in);
        adapter__fused_rows(b, m, &row0, &fo);
        snprintf(name, sizeof name, PREFIX "%s.lora_A", key);
        ta = st_find(c->st, name);
        if (!ta || ta->ndim != 2) {
            rc = adapter__fail(c, PEFTD_EFORMAT, "%s: tensor '%s' [r, %d] is missing", c->wname, name, in);
            goto fail;
        }
        int r = (int)ta->shape[0];
        if (r > init_r) {
            rc = adapter__fail(c, PEFTD_EINVAL, "%s: '%s' has rank %d, above init_r %d", c->wname, name, r, init_r);
            goto fail;
        }
        if ((rc = adapter__expect(c, name, 2, r, in, &ta))) goto fail;
        snprintf(name, sizeof name, PREFIX "%s.lora_B", key);
        if ((rc = adapter__expect(c, name, 2, fo, r, &tb))) goto fail;
        snprintf(name, sizeof name, PREFIX "%s.lora_E", key);
        if ((rc = adapter__expect(c, name, 2, r, 1, &te))) goto fail;
        if (r == 0) continue; /* pruned to nothing: no delta */
        float *fa = NULL, *fe = NULL;
        if ((rc = adapter__to_f32(c, ta, &fa))) goto fail;
        if ((rc = adapter__to_f32(c, te, &fe))) {
            free(fa);
            goto fail;
        }
        for (int k = 0; k < r; k++)
            for (int j = 0; j < in; j++) fa[(size_t)k * in + j] *= fe[k];
        free(fe);
        adapter_lora *L = &a->lora[i];
        L->a = (kmat){.data = NULL, .dtype = KDT_F32, .rows = r, .cols = in};
        if (adapter__stage_push(&c->stage, fa, (size_t)r * in * sizeof(float), true, &L->a, NULL)) {
            rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
            goto fail;
        }
        st_tensor rows = adapter__tensor_rows(tb, row0, o);
        if ((rc = adapter__stage_mat(c, &rows, KDT_F32, &L->b, NULL))) goto fail;
        L->rank = r;
        /* PEFT: scaling / (ranknum + 1e-5) with ranknum = init_r as an f32 tensor */
        double scaling = alpha > 0 ? alpha : (double)r;
        L->scale = (float)(scaling / (double)((float)init_r + 1e-5f));
        adapter__note_rank(a, r);
    }
fail:
    free(sel);
    return rc;
}
