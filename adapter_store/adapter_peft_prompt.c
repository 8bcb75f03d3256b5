/* adapter_store/adapter_peft_prompt.c — PEFT prompt tuning and prefix tuning.
 *
 * Both store one tensor, "prompt_embeddings" (the prompt encoder's embedding table):
 *   PROMPT_TUNING: [num_virtual_tokens · num_transformer_submodules, token_dim = hidden],
 *                  input embeddings placed before the prompt's.
 *   PREFIX_TUNING: [num_virtual_tokens, 2 · num_layers · token_dim], token_dim = kv_dim
 *                  (PEFT sets token_dim = head_dim · num_key_value_heads and
 *                  num_attention_heads = num_key_value_heads on GQA bases). PeftModel.get_prompt
 *                  views a row as [2·L, n_kv_heads, head_dim], permutes to
 *                  [2·L, batch, heads, tokens, head_dim] and splits in pairs: layer l's K is
 *                  slice 2l and its V slice 2l+1. A row's slice is therefore the KV-cache row
 *                  itself (head-major), and is used as-is: HF caches K after RoPE and PEFT
 *                  never rotates the prefix, so neither do we (nor scale it: under yarn's
 *                  cos/sin factor s the engine stores it as k / s, llama_store_prefix).
 *                  Sliding-window bases (Mistral, Phi-3, windowed Qwen2 layers) are served:
 *                  peft 0.21 hands the prefix to transformers 4.57 as DynamicCache(legacy
 *                  tuples), plain full-length layers, so the prefix is cache positions
 *                  0..n_virtual-1, the prompt's positions (RoPE and mask) start at n_virtual and
 *                  the window rule kv_idx > q_idx - W counts the prefix slots like any others:
 *                  exactly the engine's layout (prefix slots right before the prompt's, the
 *                  attention op's window over slots). tests/unit/test_families.c checks it.
 * prefix_projection: true and P-tuning (PEFT "P_TUNING", a prompt-encoder MLP/LSTM) save the
 * ENCODED table (get_prompt_embedding_to_save runs the encoder) and PEFT's inference path
 * (inference_mode, set by from_pretrained) reads that table directly (get_prompt): both are
 * served as plain prefix / prompt tuning (checked against peft 0.21.2 by
 * tests/fixtures/adapters/make_lora_variant_fixtures.py: p_tuning, prefix_projection).
 */
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"

/* num_virtual_tokens, and the checks both kinds share. */
static int common(adapter__ctx *c, int *nv) {
    int nts, rc = adapter__peft_check_task(c);
    if (rc) return rc;
    if ((rc = adapter__json_int(c, c->cfg, "num_virtual_tokens", 0, 0, ADAPTER_MAX_COUNT, nv)) ||
        (rc = adapter__json_int(c, c->cfg, "num_transformer_submodules", 1, 0, ADAPTER_MAX_COUNT, &nts)))
        return rc;
    if (*nv < 1)
        return adapter__fail(c, PEFTD_EFORMAT,
                             "adapter_config.json: field 'num_virtual_tokens' must be a positive integer");
    /* the virtual tokens take context positions before the prompt's: this many would leave
     * none for a single prompt token */
    if (c->base->context_length > 0 && *nv >= c->base->context_length)
        return adapter__fail(c, PEFTD_EINVAL,
                             "adapter_config.json: field 'num_virtual_tokens' is %d; base %s has a context of %d "
                             "positions, which leaves no room for a prompt",
                             *nv, c->base->name, c->base->context_length);
    if (nts != 1)
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: num_transformer_submodules %d (encoder-decoder) is not served", nts);
    return 0;
}

int adapter__load_prompt(adapter__ctx *c) {
    adapter *a = c->a;
    const adapter_base *b = c->base;
    int nv, dim, rc;
    const st_tensor *t;
    a->kind = ADAPTER_PROMPT_TUNING;
    if ((rc = common(c, &nv)) ||
        (rc = adapter__json_int(c, c->cfg, "token_dim", b->hidden, 0, ADAPTER_MAX_COUNT, &dim)))
        return rc;
    if (dim != b->hidden)
        return adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: token_dim %d does not match hidden size %d of base %s",
                             dim, b->hidden, b->name);
    if ((rc = adapter__expect(c, "prompt_embeddings", 2, nv, b->hidden, &t))) return rc;
    a->n_virtual = nv;
    return adapter__stage_mat(c, t, KDT_F32, &a->prompt, NULL);
}

int adapter__load_prefix(adapter__ctx *c) {
    adapter *a = c->a;
    const adapter_base *b = c->base;
    int L = b->n_layers, kv = b->n_kv_heads * b->head_dim, nv, dim, nl, nh, rc;
    bool proj;
    const st_tensor *t;
    float *emb = NULL;
    a->kind = ADAPTER_PREFIX_TUNING;
    /* prefix_projection: the table saved is already the MLP's output (PeftModel
     * .get_prompt_embedding_to_save runs the prompt encoder), and a model loaded for inference
     * (from_pretrained: inference_mode) uses that table as is, never the MLP: served as such */
    if ((rc = adapter__json_bool(c, c->cfg, "prefix_projection", false, &proj))) return rc;
    (void)proj;
    if ((rc = common(c, &nv)) || (rc = adapter__json_int(c, c->cfg, "token_dim", kv, 0, ADAPTER_MAX_COUNT, &dim)) ||
        (rc = adapter__json_int(c, c->cfg, "num_layers", L, 0, ADAPTER_MAX_COUNT, &nl)) ||
        (rc = adapter__json_int(c, c->cfg, "num_attention_heads", b->n_kv_heads, 0, ADAPTER_MAX_COUNT, &nh)))
        return rc;
    if (nl != L)
        return adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: num_layers %d does not match the %d layers of base %s",
                             nl, L, b->name);
    if (dim != kv || nh != b->n_kv_heads)
        return adapter__fail(c, PEFTD_EINVAL,
                             "adapter_config.json: token_dim %d / num_attention_heads %d do not match base %s's KV "
                             "layout (%d KV heads of %d)",
                             dim, nh, b->name, b->n_kv_heads, b->head_dim);
    if ((rc = adapter__expect(c, "prompt_embeddings", 2, nv, (int64_t)2 * L * kv, &t))) return rc;
    if ((rc = adapter__to_f32(c, t, &emb))) return rc;
    a->n_virtual = nv;
    a->prefix_k = calloc((size_t)L, sizeof *a->prefix_k);
    a->prefix_v = calloc((size_t)L, sizeof *a->prefix_v);
    if (!a->prefix_k || !a->prefix_v) {
        rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        goto fail;
    }
    for (int l = 0; l < L; l++) {
        for (int side = 0; side < 2; side++) {
            float *dst = malloc((size_t)nv * kv * sizeof *dst);
            if (!dst) {
                rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
                goto fail;
            }
            for (int r = 0; r < nv; r++)
                memcpy(dst + (size_t)r * kv, emb + (size_t)r * 2 * L * kv + (size_t)(2 * l + side) * kv,
                       (size_t)kv * sizeof *dst);
            if ((rc = adapter__stage_own(c, dst, (size_t)nv * kv, side ? &a->prefix_v[l] : &a->prefix_k[l])))
                goto fail;
        }
    }
fail:
    free(emb);
    return rc;
}
