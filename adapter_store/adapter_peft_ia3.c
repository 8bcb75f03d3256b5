/* adapter_store/adapter_peft_ia3.c — PEFT (IA)^3 adapters.
 *
 * One learned vector per adapted module, tensor base_model.model.<key>.ia3_l:
 *   [out, 1] for ordinary modules: scales the module's output (k_proj, v_proj);
 *   [1, in]  for feedforward_modules: scales the module's input (down_proj).
 * (peft/tuners/ia3/layer.py: is_feedforward picks the shape, forward multiplies x or the
 * result.) Which modules are feedforward follows IA3Model._check_target_module_feedforward.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"

/* IA3Config.__post_init__: feedforward_modules ⊆ target_modules when both are lists. */
static int check_subset(adapter__ctx *c) {
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(c->cfg, "target_modules");
    const cJSON *ff = cJSON_GetObjectItemCaseSensitive(c->cfg, "feedforward_modules"), *e, *f;
    if (!cJSON_IsArray(tm) || !cJSON_IsArray(ff)) return 0;
    cJSON_ArrayForEach(f, ff) {
        bool in = false;
        cJSON_ArrayForEach(e, tm) in |= cJSON_IsString(e) && cJSON_IsString(f) && !strcmp(e->valuestring, f->valuestring);
        if (!in && cJSON_IsString(f))
            return adapter__fail(c, PEFTD_EFORMAT,
                                 "adapter_config.json: feedforward_modules entry '%.200s' is not in target_modules",
                                 f->valuestring);
    }
    return 0;
}

int adapter__load_ia3(adapter__ctx *c) {
    adapter *a = c->a;
    const adapter_base *b = c->base;
    int n = b->n_layers * AMOD_COUNT, rc;
    bool *sel = NULL, seen[AMOD_COUNT] = {false};
    static const char *const def_llama[] = {"k_proj", "v_proj", "down_proj", NULL};
    static const char *const def_qwen[] = {"q_proj", "v_proj", "down_proj", NULL};
    a->kind = ADAPTER_IA3;

    if ((rc = adapter__peft_check_common(c)) || (rc = check_subset(c))) return rc;
    sel = calloc((size_t)n, sizeof *sel);
    a->ia3 = calloc((size_t)n, sizeof *a->ia3);
    if (!sel || !a->ia3) {
        rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = adapter__select_targets(c, def_llama, def_qwen, sel, NULL))) goto fail;
    for (int i = 0; i < n; i++) {
        if (!sel[i]) continue;
        int l = i / AMOD_COUNT, o, in, row0, fo;
        adapter_module m = (adapter_module)(i % AMOD_COUNT);
        char key[128], name[256];
        bool ff;
        const st_tensor *t;
        st_tensor rows;
        adapter__module_key(b, l, m, key, sizeof key);
        adapter_module_shape(b, m, &o, &in);
        adapter__fused_rows(b, m, &row0, &fo);
        if ((rc = adapter__is_feedforward(c, key, &ff))) goto fail;
        /* the forward pass keeps one side per module kind, not per layer */
        if (seen[m] && a->ia3_input[m] != ff) {
            rc = adapter__fail(c, PEFTD_EUNSUPPORTED,
                               "adapter_config.json: feedforward_modules marks %s as feedforward in some layers only",
                               adapter_module_name(m));
            goto fail;
        }
        seen[m] = true;
        a->ia3_input[m] = ff;
        snprintf(name, sizeof name, "base_model.model.%s.ia3_l", key);
        if ((rc = adapter__expect(c, name, 2, ff ? 1 : fo, ff ? in : 1, &t))) goto fail;
        /* fused module (Phi-3): an output-side vector splits by rows, an input-side one
         * scales the shared input of every part */
        if (!ff) rows = adapter__tensor_rows(t, row0, o), t = &rows;
        if ((rc = adapter__stage_vec(c, t, &a->ia3[i]))) goto fail;
    }
    rc = adapter__load_modules_to_save(c);
fail:
    free(sel);
    return rc;
}
