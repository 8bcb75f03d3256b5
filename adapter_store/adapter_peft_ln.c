/* adapter_store/adapter_peft_ln.c — PEFT LN tuning (peft_type "LN_TUNING", tuners/ln_tuning):
 * the adapter is a trained copy of some RMSNorm layers (LNTuningLayer deep-copies the norm and
 * runs the copy instead), saved as base_model.model.<norm>.ln_tuning_layers.weight [hidden] for
 * each targeted norm. PEFT's default targets: on llama / mistral every layer's input_layernorm
 * and post_attention_layernorm and the final model.norm; on gemma2 / gemma3_text also
 * pre_feedforward_layernorm and post_feedforward_layernorm (qwen2 / qwen3: only
 * post_attention_layernorm). Which norms are tuned is what the file holds; target_modules may
 * name only these norms (a Qwen3 / Gemma 3 q_norm / k_norm, an embedding or a projection is
 * refused by name).
 *
 * Served per segment (server/model/llama_adapters.c llama__norm): the adapter's rows are normed
 * with its weight instead of the base's, at the site adapter.h's ln layout gives the norm. On a
 * Gemma 2/3 base the norms scale by (1 + w) in f32 (Gemma2RMSNorm), so the weight is stored as
 * the base's norm views hold theirs, 1 + w (one f32 add, as torch), and the Gemma names map to
 * the model's roles: input_layernorm -> the attention input, post_attention_layernorm -> the
 * attention output, pre_feedforward_layernorm -> the MLP input, post_feedforward_layernorm ->
 * the MLP output.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"

#define PREFIX "base_model.model."

/* The norms of one layer PEFT may save, and the ln site each maps to (-1: not on this base). */
typedef struct {
    const char *name;
    int llama_site, gemma_site; /* 0: the attention input, 1: the MLP input, 2 / 3: the attention
                                 * / MLP output (Gemma post-norms) */
} ln_norm;

static const ln_norm NORMS[] = {
    {"input_layernorm", 0, 0},
    {"post_attention_layernorm", 1, 2},
    {"pre_feedforward_layernorm", -1, 1},
    {"post_feedforward_layernorm", -1, 3},
};
#define N_NORMS 4

/* Whether a target_modules entry names a norm this loader serves on this base. */
static bool served_target(const char *t, bool gemma) {
    if (!strcmp(t, "norm") || !strcmp(t, "model.norm")) return true;
    for (int i = 0; i < N_NORMS; i++)
        if (!strcmp(t, NORMS[i].name)) return gemma || NORMS[i].llama_site >= 0;
    return false;
}

/* adapter.ln's index of norm k of layer l. */
static int site_of(const adapter *a, int l, int k, bool gemma) {
    int s = gemma ? NORMS[k].gemma_site : NORMS[k].llama_site;
    return s < 2 ? 2 * l + s : adapter_ln_post(a, l, s - 2);
}

int adapter__load_ln_tuning(adapter__ctx *c) {
    adapter *a = c->a;
    const adapter_base *b = c->base;
    int L = b->n_layers, rc, found = 0;
    bool gemma = b->post_norms; /* Gemma 2/3: (1 + w) norms, post-norms on the sub-layer outputs */
    a->kind = ADAPTER_LN_TUNING;
    if ((rc = adapter__peft_check_task(c))) return rc;
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(c->cfg, "target_modules"), *it;
    if (cJSON_IsArray(tm))
        cJSON_ArrayForEach(it, tm) {
            if (!cJSON_IsString(it))
                return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: target_modules must hold strings");
            if (!served_target(it->valuestring, gemma))
                return adapter__fail(c, PEFTD_EUNSUPPORTED,
                                     "adapter_config.json: LN tuning of '%.64s' is not served (input_layernorm, "
                                     "post_attention_layernorm%s and norm are)",
                                     it->valuestring,
                                     gemma ? ", pre_feedforward_layernorm, post_feedforward_layernorm" : "");
        }
    else if (tm && !cJSON_IsNull(tm) && !cJSON_IsString(tm))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: target_modules must be a list or a string");
    const cJSON *mts = cJSON_GetObjectItemCaseSensitive(c->cfg, "modules_to_save");
    if (mts && !cJSON_IsNull(mts))
        return adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: modules_to_save with LN tuning is not served");
    if (!(a->ln = calloc((size_t)adapter_ln_sites(a), sizeof *a->ln)))
        return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    for (int l = 0; l <= L; l++)
        for (int k = 0; k < (l < L ? N_NORMS : 1); k++) {
            char name[192];
            int site = l < L ? site_of(a, l, k, gemma) : adapter_ln_final(a);
            if (l == L) snprintf(name, sizeof name, PREFIX "model.norm.ln_tuning_layers.weight");
            else snprintf(name, sizeof name, PREFIX "model.layers.%d.%s.ln_tuning_layers.weight", l, NORMS[k].name);
            if (!st_find(c->st, name)) continue;
            if (l < L && !gemma && NORMS[k].llama_site < 0)
                return adapter__fail(c, PEFTD_EINVAL, "%s: '%s' is a Gemma norm; base %s has none", c->wname, name,
                                     b->name);
            const st_tensor *t;
            float *w;
            if ((rc = adapter__expect(c, name, 1, b->hidden, 0, &t)) || (rc = adapter__to_f32(c, t, &w))) return rc;
            if (gemma)
                for (int j = 0; j < b->hidden; j++) w[j] = 1.0f + w[j]; /* as the base's views: 1 + w, f32 */
            if ((rc = adapter__stage_own_mat(c, w, 1, b->hidden, &a->ln[site]))) return rc;
            found++;
        }
    if (!found)
        return adapter__fail(c, PEFTD_EFORMAT, "%s: no '<norm>.ln_tuning_layers.weight' tensor for base %s", c->wname,
                             b->name);
    return 0;
}
