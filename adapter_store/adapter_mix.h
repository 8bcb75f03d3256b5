/* adapter_store/adapter_mix.h — several LoRA adapters composed for one request
 * ("adapters": [{"name", "weight"}, ...]), applied unmerged inside the shared batch: the
 * sequence belongs to one SGMV segment per (A, B) pair below, and the pairs' deltas add.
 *
 * Semantics: those of PEFT's LoraModel.add_weighted_adapter on the adapters' unmerged
 * weights, with s_i the module's scaling of adapter i (lora_alpha / r after the patterns,
 * / sqrt(r) with use_rslora) and S the composed adapter's own scaling (PEFT makes it
 * lora_alpha = r = new_rank: S = 1, or sqrt(new_rank) when the FIRST adapter uses rsLoRA):
 *   "linear" (PEFT's default): A = Σ a_i A_i, B = Σ b_j B_j with a_i = sign(w_i s_i)·sqrt|w_i s_i|,
 *            b_j = sqrt|w_j s_j|, so ΔW = S·Σ_i Σ_j a_i b_j B_j A_i — PEFT's "linear" combines
 *            the A and B factors separately, which includes the cross terms B_j A_i (i != j);
 *            every adapter must have the same rank at a module (new_rank = that r). Applied
 *            as n² pairs (A_i, B_j) with scale S·a_i·b_j.
 *   "cat":   A = [w_1 s_1 A_1; ...], B = [B_1, ...]: ΔW = S·Σ_i w_i s_i B_i A_i, the weighted
 *            sum of the adapters' deltas (any ranks; new_rank = Σ r_i). Applied as n pairs.
 * A module only some adapters target sums over those (PEFT skips the others there).
 * Composable: plain LoRA / rsLoRA (PEFT, AdaLoRA as converted, AdapterHub LoRA) on the seven
 * projections. Refused with a message naming the adapter and what it carries: other kinds,
 * DoRA, lora_bias / trained projection biases, LoRA on embed_tokens / lm_head,
 * modules_to_save, classification heads; "linear" with different ranks at a module or
 * different weight dtypes between two adapters at a module (a cross pair reads A of one
 * and B of the other in one SGMV call). */
#ifndef PEFTD_ADAPTER_MIX_H
#define PEFTD_ADAPTER_MIX_H

#include "adapter_store/adapter.h"

#define ADAPTER_MAX_MIX 4       /* adapters in one composition */
#define ADAPTER_MIX_MAX_WEIGHT 16.0f

typedef enum { ADAPTER_MIX_LINEAR = 0, ADAPTER_MIX_CAT = 1 } adapter_mix_kind;

const char *adapter_mix_kind_name(adapter_mix_kind k); /* "linear", "cat" */
/* "linear" / "cat" → *k; PEFTD_EINVAL otherwise. */
int adapter_mix_kind_parse(const char *s, adapter_mix_kind *k);

/* One composition. The adapters are borrowed: the owner (a sequence) keeps them alive. */
typedef struct adapter_mix {
    int n;                                  /* 1..ADAPTER_MAX_MIX */
    const adapter *ad[ADAPTER_MAX_MIX];
    float weight[ADAPTER_MAX_MIX];          /* |w| <= ADAPTER_MIX_MAX_WEIGHT, may be negative */
    adapter_mix_kind how;
} adapter_mix;

/* Whether m can be served (the rules above). 0, or PEFTD_EUNSUPPORTED / PEFTD_EINVAL with
 * one line in err naming the adapter (by index and source) and the reason. Any thread. */
int adapter_mix_check(const adapter_mix *m, char *err, size_t errlen);

/* One (A, B) pair of a module: y += scale·B(A x), A from ad[ia], B from ad[ib]. */
typedef struct {
    int ia, ib;
    float scale;
} adapter_mix_pair;

/* The pairs of (layer, module) in a fixed order (linear: i major, then j; cat: i), at most
 * ADAPTER_MAX_MIX² of them; returns how many (0: no adapter targets it). m must have passed
 * adapter_mix_check. t: the request's adapter_scale, multiplying every pair. */
int adapter_mix_pairs(const adapter_mix *m, int layer, adapter_module mod, float t, adapter_mix_pair *out);

#endif
