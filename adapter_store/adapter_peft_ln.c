/* adapter_store/adapter_peft_ln.c — PEFT LN tuning (peft_type "LN_TUNING", tuners/ln_tuning):
 * the adapter is a trained copy of some RMSNorm weights, saved as
 * base_model.model.<norm>.ln_tuning_layers.weight [hidden] for each targeted norm (PEFT's
 * default targets on Llama-family models: every layer's input_layernorm and
 * post_attention_layernorm and the final model.norm). Served per segment: those rows are
 * normed with the adapter's weight instead of the base's (server/model/llama_adapters.c
 * llama__norm). Which norms are tuned is what the file holds; target_modules may only name
 * these three kinds of norm (a Qwen3 q_norm / k_norm or a Gemma norm is refused by name,
 * and so is a Gemma base, whose norms the model stores as 1 + w).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"

#define PREFIX "base_model.model."

/* Whether a target_modules entry names a norm this loader serves. */
static bool served_target(const char *t) {
    static const char *const ok[] = {"input_layernorm", "post_attention_layernorm", "norm", "model.norm", NULL};
    for (int i = 0; ok[i]; i++)
        if (!strcmp(t, ok[i])) return true;
    return false;
}

int adapter__load_ln_tuning(adapter__ctx *c) {
    adapter *a = c->a;
    const adapter_base *b = c->base;
    int L = b->n_layers, n = 2 * L + 1, rc, found = 0;
    a->kind = ADAPTER_LN_TUNING;
    if ((rc = adapter__peft_check_task(c))) return rc;
    if (b->post_norms)
        return adapter__fail(c, PEFTD_EUNSUPPORTED, "LN tuning on base %s (a Gemma: norms stored as 1 + w) is not served",
                             b->name);
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(c->cfg, "target_modules"), *it;
    if (cJSON_IsArray(tm))
        cJSON_ArrayForEach(it, tm) {
            if (!cJSON_IsString(it))
                return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: target_modules must hold strings");
            if (!served_target(it->valuestring))
                return adapter__fail(c, PEFTD_EUNSUPPORTED,
                                     "adapter_config.json: LN tuning of '%.64s' is not served (input_layernorm, "
                                     "post_attention_layernorm and norm are)",
                                     it->valuestring);
        }
    else if (tm && !cJSON_IsNull(tm) && !cJSON_IsString(tm))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: target_modules must be a list or a string");
    if ((rc = (cJSON_GetObjectItemCaseSensitive(c->cfg, "modules_to_save") &&
               !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c->cfg, "modules_to_save")))
                  ? adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: modules_to_save with LN tuning is not served")
                  : 0))
        return rc;
    if (!(a->ln = calloc((size_t)n, sizeof *a->ln))) return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        char name[160];
        if (i == n - 1) snprintf(name, sizeof name, PREFIX "model.norm.ln_tuning_layers.weight");
        else
            snprintf(name, sizeof name, PREFIX "model.layers.%d.%s.ln_tuning_layers.weight", i / 2,
                     i % 2 ? "post_attention_layernorm" : "input_layernorm");
        if (!st_find(c->st, name)) continue;
        const st_tensor *t;
        float *w;
        if ((rc = adapter__expect(c, name, 1, b->hidden, 0, &t)) || (rc = adapter__to_f32(c, t, &w))) return rc;
        if ((rc = adapter__stage_own_mat(c, w, 1, b->hidden, &a->ln[i]))) return rc;
        found++;
    }
    if (!found)
        return adapter__fail(c, PEFTD_EFORMAT, "%s: no '<norm>.ln_tuning_layers.weight' tensor for base %s", c->wname,
                             b->name);
    return 0;
}
