/* adapter_store/adapter_mix.c — the rules and the (A, B) pairs of a per-request composition of
 * LoRA adapters (adapter_mix.h: PEFT add_weighted_adapter's "linear" and "cat"). */
#include "adapter_store/adapter_mix.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const char *adapter_mix_kind_name(adapter_mix_kind k) { return k == ADAPTER_MIX_CAT ? "cat" : "linear"; }

int adapter_mix_kind_parse(const char *s, adapter_mix_kind *k) {
    if (!s) return PEFTD_EINVAL;
    if (!strcmp(s, "linear")) *k = ADAPTER_MIX_LINEAR;
    else if (!strcmp(s, "cat")) *k = ADAPTER_MIX_CAT;
    else return PEFTD_EINVAL;
    return 0;
}

#define MIX_FAIL(code, ...) (snprintf(err, errlen, __VA_ARGS__), (code))

/* What adapter a carries that a composition cannot serve, or NULL. */
static const char *mix_refusal(const adapter *a) {
    if (a->kind != ADAPTER_LORA || !a->lora) return "it is not a LoRA adapter";
    if (a->embed_lora.rank > 0 || a->head_lora.rank > 0) return "it has a LoRA on embed_tokens / lm_head";
    if (a->embed.data || a->lm_head.data) return "it replaces embed_tokens / lm_head (modules_to_save)";
    if (a->cls_head.data) return "it is a sequence-classification adapter";
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) {
        const adapter_lora *l = &a->lora[i];
        if (l->dora) return "it is a DoRA adapter (its magnitude normalises its own delta)";
        if (l->bias || l->base_bias.data) return "it trains biases (lora_bias / bias \"all\" or \"lora_only\")";
        if (l->delta.data) return "it has dense deltas (VeRA / LoHa / LoKr modules served dense)";
    }
    return NULL;
}

int adapter_mix_check(const adapter_mix *m, char *err, size_t errlen) {
    if (!m || m->n < 1 || m->n > ADAPTER_MAX_MIX)
        return MIX_FAIL(PEFTD_EINVAL, "a composition holds 1 to %d adapters", ADAPTER_MAX_MIX);
    for (int i = 0; i < m->n; i++) {
        const adapter *a = m->ad[i];
        if (!a) return MIX_FAIL(PEFTD_EINVAL, "adapter %d of the composition is missing", i);
        if (!(fabsf(m->weight[i]) <= ADAPTER_MIX_MAX_WEIGHT))
            return MIX_FAIL(PEFTD_EINVAL, "adapter %d's weight %g is outside [-%g, %g]", i, m->weight[i],
                            ADAPTER_MIX_MAX_WEIGHT, ADAPTER_MIX_MAX_WEIGHT);
        const char *why = mix_refusal(a);
        if (why) return MIX_FAIL(PEFTD_EUNSUPPORTED, "adapter %d (%s) cannot be composed: %s", i, a->source, why);
        if (a->n_layers != m->ad[0]->n_layers)
            return MIX_FAIL(PEFTD_EINVAL, "adapter %d has %d layers, adapter 0 has %d", i, a->n_layers,
                            m->ad[0]->n_layers);
    }
    if (m->how != ADAPTER_MIX_LINEAR) return 0;
    /* linear: one rank and one weight dtype per module among the adapters targeting it */
    for (int k = 0; k < m->ad[0]->n_layers * AMOD_COUNT; k++) {
        const adapter_lora *first = NULL;
        int fi = -1;
        for (int i = 0; i < m->n; i++) {
            const adapter_lora *l = &m->ad[i]->lora[k];
            if (l->rank <= 0) continue;
            if (!first) {
                first = l, fi = i;
                continue;
            }
            const char *mod = adapter_module_name((adapter_module)(k % AMOD_COUNT));
            if (l->rank != first->rank)
                return MIX_FAIL(PEFTD_EUNSUPPORTED,
                                "\"combination\": \"linear\" needs one rank per module (PEFT combines the A and B "
                                "factors): layer %d %s has rank %d in adapter %d and %d in adapter %d; use "
                                "\"combination\": \"cat\" (the weighted sum of the deltas)",
                                k / AMOD_COUNT, mod, first->rank, fi, l->rank, i);
            if (l->a.dtype != first->a.dtype || l->b.dtype != first->b.dtype)
                return MIX_FAIL(PEFTD_EUNSUPPORTED,
                                "\"combination\": \"linear\" needs the adapters' weights in one dtype: layer %d %s "
                                "is %s in adapter %d and %s in adapter %d; use \"combination\": \"cat\"",
                                k / AMOD_COUNT, mod, kdtype_name(first->a.dtype), fi, kdtype_name(l->a.dtype), i);
        }
    }
    return 0;
}

/* The composed adapter's own scaling: PEFT gives it r = lora_alpha = new_rank and the first
 * adapter's use_rslora, so 1, or new_rank / sqrt(new_rank). */
static double mix_scaling(const adapter_mix *m) {
    if (!m->ad[0]->rslora) return 1.0;
    double r = 0;
    for (int i = 0; i < (m->how == ADAPTER_MIX_CAT ? m->n : 1); i++)
        r += m->ad[i]->config_r > 0 ? m->ad[i]->config_r : m->ad[i]->max_rank;
    return r / sqrt(r);
}

int adapter_mix_pairs(const adapter_mix *m, int layer, adapter_module mod, float t, adapter_mix_pair *out) {
    int k = layer * AMOD_COUNT + (int)mod, n = 0;
    double S = mix_scaling(m) * t;
    if (m->how == ADAPTER_MIX_CAT) {
        for (int i = 0; i < m->n; i++) {
            const adapter_lora *l = &m->ad[i]->lora[k];
            if (l->rank > 0) out[n++] = (adapter_mix_pair){i, i, (float)(S * m->weight[i] * l->scale)};
        }
        return n;
    }
    double a[ADAPTER_MAX_MIX], b[ADAPTER_MAX_MIX];
    for (int i = 0; i < m->n; i++) {
        const adapter_lora *l = &m->ad[i]->lora[k];
        double ws = (double)m->weight[i] * l->scale;
        a[i] = l->rank > 0 ? (ws < 0 ? -sqrt(-ws) : sqrt(ws)) : 0;
        b[i] = l->rank > 0 ? sqrt(fabs(ws)) : 0;
    }
    for (int i = 0; i < m->n; i++)
        for (int j = 0; j < m->n; j++)
            if (m->ad[i]->lora[k].rank > 0 && m->ad[j]->lora[k].rank > 0)
                out[n++] = (adapter_mix_pair){i, j, (float)(S * a[i] * b[j])};
    return n;
}
