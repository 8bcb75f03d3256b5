/* adapter_store/adapter_hub_internal.h — what the AdapterHub importers share
 * (adapter_hub.c: bottleneck family and dispatch; adapter_hub_phm.c: Compacter's PHM layers;
 * adapter_hub_lora.c: AdapterHub LoRA and IA3). Not part of the public API. */
#ifndef PEFTD_ADAPTER_HUB_INTERNAL_H
#define PEFTD_ADAPTER_HUB_INTERNAL_H

#include "adapter_store/adapter_internal.h"

/* Compacter settings of a BnConfig (phm_layer true), adapter_hub_phm.c. */
typedef struct {
    bool on;                 /* phm_layer */
    int dim, rank;           /* phm_dim, phm_rank */
    bool factorized_w, shared_w, shared_rule, factorized_rule, bias;
} hub_phm;

/* Reads config's PHM fields into ph (ph->on false when phm_layer is absent/false). */
int adapter__hub_phm_config(adapter__ctx *c, hub_phm *ph);

/* One PHM layer of adapter `name` whose own tensors start with prefix (e.g.
 * "model.layers.0.output_adapters.adapters.x.adapter_down.0."), up = the adapter_up
 * module, mapping in → out features: *weight = the materialised [out, in] f32 Linear
 * weight (malloc'd, caller frees), *bias = its "b" tensor (NULL without phm_bias). */
int adapter__hub_phm_module(adapter__ctx *c, const hub_phm *ph, const char *name, const char *prefix, bool up,
                            int in, int out, float **weight, const st_tensor **bias);

/* The activation adapters' Activation_Function_Class builds for a name (NULL: identity). */
int adapter__hub_act(adapter__ctx *c, const char *name, kact *out);

/* AdapterHub prefix tuning of adapter `name` from config object cfg (the root config, or a
 * ConfigUnion member): the K/V table computed from the saved pool; adapter_hub_prefix.c. */
int adapter__load_hub_prefix(adapter__ctx *c, const cJSON *cfg, const char *name);

/* AdapterHub LoRAConfig (architecture "lora"): composition_mode "add" → ADAPTER_LORA,
 * "scale" (IA3Config) → ADAPTER_IA3; adapter_hub_lora.c. */
int adapter__load_hub_lora(adapter__ctx *c, const char *name);

#endif
