/* adapter_store/adapter_hub_prefix.c — AdapterHub prefix tuning (adapters 1.3
 * PrefixTuningConfig, architecture "prefix_tuning"), alone or as the prefix half of a
 * ConfigUnion such as MAM; the per-layer K/V table is computed here, once, at import.
 *
 * What the file holds (methods/prefix_tuning.py, location "self_prefix" on a decoder-only
 * model), under P = "model.prefix_tuning.prefix_tunings.<name>.self_prefix.":
 *   flat false: P wte.weight [prefix_length, hidden] and the reparametrisation MLP
 *               P control_trans.0.{weight [bottleneck, hidden], bias} and
 *               P control_trans.2.{weight [L·2·n_kv·head_dim, bottleneck], bias};
 *               the table is control_trans.2(act(control_trans.0(wte(arange(prefix_length)))))
 *               with act = non_linearity (tanh by default);
 *   flat true:  P control_trans [prefix_length · L·2·n_kv·head_dim], the table itself.
 * Row p of the table is [L·2][n_kv][head_dim]: layer l's key is slot 2l, its value 2l+1
 * (PrefixTuning.forward: view(…, n_layers·2, n_heads, head_dim).permute(2, 0, 3, 1, 4)
 * .split(2)), n_heads being the base's num_key_value_heads. save_adapter also writes each
 * layer's view of the same pool ("model.layers.L.self_attn.prefix_tuning.pool.…"): those
 * copies must equal the pool's and are otherwise ignored.
 *
 * Served as prefix tuning with one difference from PEFT's (adapters/models/llama
 * LlamaAttentionWithAdapters): the prefix K/V are concatenated to the attention's keys and
 * values without RoPE, while the prompt keeps positions 0, 1, … (PEFT continues them after
 * the prefix): adapter.prefix_from_zero. The saved MLP runs here in double, rounded to f32
 * (the library runs it in f32 on every forward: ~1e-7 relative apart).
 *
 * adapters 1.3.0's save_adapter(use_safetensors=True) fails on prefix tuning (the pool is
 * shared between layers); pytorch_adapter.bin is a pickle, never read:
 * clients/hub_bin_to_safetensors.py writes the adapter.safetensors read here.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_hub_internal.h"

static double act_host(kact a, double x) {
    switch (a) {
    case KACT_RELU: return x > 0 ? x : 0;
    case KACT_SILU: return x / (1 + exp(-x));
    case KACT_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case KACT_GELU_TANH: return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    case KACT_TANH: return tanh(x);
    case KACT_SIGMOID: return 1 / (1 + exp(-x));
    default: return x;
    }
}

/* y[rows, out] = x[rows, in] · wᵀ + b, w [out, in], in double. */
static void linear(const double *x, int rows, int in, const float *w, const float *b, int out, double *y) {
    for (int r = 0; r < rows; r++)
        for (int o = 0; o < out; o++) {
            double s = b ? b[o] : 0;
            for (int i = 0; i < in; i++) s += x[(size_t)r * in + i] * w[(size_t)o * in + i];
            y[(size_t)r * out + o] = s;
        }
}

/* Marks the per-layer views of the pool used, after checking they hold the pool's bytes. */
static int claim_layer_copies(adapter__ctx *c, const char *name) {
    const char *mid = ".self_attn.prefix_tuning.pool.prefix_tunings.";
    char pool[400];
    for (size_t i = 0; i < st_count(c->st); i++) {
        const st_tensor *t = st_get(c->st, i), *p;
        const char *s = strstr(t->name, mid);
        if (strncmp(t->name, "model.layers.", 13) || !s) continue;
        snprintf(pool, sizeof pool, "model.prefix_tuning.prefix_tunings.%s", s + strlen(mid));
        p = st_find(c->st, pool);
        if (!p || p->dtype != t->dtype || p->numel != t->numel || memcmp(p->data, t->data, t->nbytes))
            return adapter__fail(c, PEFTD_EFORMAT, "%s: tensor '%s' is not a copy of the prefix pool's '%s'", c->wname,
                                 t->name, pool);
        c->used[i] = true;
    }
    (void)name;
    return 0;
}

int adapter__load_hub_prefix(adapter__ctx *c, const cJSON *cfg, const char *name) {
    adapter *a = c->a;
    const adapter_base *b = c->base;
    int L = b->n_layers, kv = b->n_kv_heads * b->head_dim, H = b->hidden, nv, bott, rc;
    bool flat, gating;
    const char *act_name;
    kact act;
    const cJSON *lo = cJSON_GetObjectItemCaseSensitive(cfg, "leave_out");
    if ((rc = adapter__json_int(c, cfg, "prefix_length", 30, 1, 4096, &nv)) ||
        (rc = adapter__json_int(c, cfg, "bottleneck_size", 512, 1, ADAPTER_MAX_RANK, &bott)) ||
        (rc = adapter__json_bool(c, cfg, "flat", false, &flat)) ||
        (rc = adapter__json_bool(c, cfg, "use_gating", false, &gating)) ||
        (rc = adapter__json_str(c, cfg, "non_linearity", "tanh", &act_name)) ||
        (rc = adapter__hub_act(c, act_name, &act)))
        return rc;
    if (gating)
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: prefix tuning config.use_gating is true; gated prefixes are not "
                             "served");
    if (cJSON_IsArray(lo) && cJSON_GetArraySize(lo) > 0)
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: prefix tuning config.leave_out is not empty; a prefix on some "
                             "layers only is not served");
    if ((rc = claim_layer_copies(c, name))) return rc;

    char pre[300], nm[400];
    snprintf(pre, sizeof pre, "model.prefix_tuning.prefix_tunings.%s.self_prefix.", name);
    size_t width = (size_t)L * 2 * kv;
    double *table = malloc(sizeof(double) * (size_t)nv * width), *h = NULL, *e = NULL;
    float *w0 = NULL, *b0 = NULL, *w2 = NULL, *b2 = NULL, *wte = NULL, *flat_t = NULL;
    const st_tensor *t;
    if (!table) return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    if (flat) {
        snprintf(nm, sizeof nm, "%scontrol_trans", pre);
        if ((rc = adapter__expect(c, nm, 1, (int64_t)(nv * width), 0, &t)) || (rc = adapter__to_f32(c, t, &flat_t)))
            goto done;
        for (size_t i = 0; i < nv * width; i++) table[i] = flat_t[i];
    } else {
        struct {
            const char *suffix;
            int ndim;
            int64_t d0, d1;
            float **dst;
        } parts[] = {
            {"wte.weight", 2, nv, H, &wte},
            {"control_trans.0.weight", 2, bott, H, &w0},
            {"control_trans.0.bias", 1, bott, 0, &b0},
            {"control_trans.2.weight", 2, (int64_t)width, bott, &w2},
            {"control_trans.2.bias", 1, (int64_t)width, 0, &b2},
        };
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            snprintf(nm, sizeof nm, "%s%s", pre, parts[i].suffix);
            if ((rc = adapter__expect(c, nm, parts[i].ndim, parts[i].d0, parts[i].d1, &t)) ||
                (rc = adapter__to_f32(c, t, parts[i].dst)))
                goto done;
        }
        if (!(e = malloc(sizeof(double) * (size_t)nv * H)) || !(h = malloc(sizeof(double) * (size_t)nv * bott))) {
            rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < (size_t)nv * H; i++) e[i] = wte[i];
        linear(e, nv, H, w0, b0, bott, h);
        for (size_t i = 0; i < (size_t)nv * bott; i++) h[i] = act_host(act, h[i]);
        linear(h, nv, bott, w2, b2, (int)width, table);
    }
    a->kind = ADAPTER_PREFIX_TUNING;
    a->n_virtual = nv;
    a->prefix_from_zero = true;
    a->prefix_k = calloc((size_t)L, sizeof *a->prefix_k);
    a->prefix_v = calloc((size_t)L, sizeof *a->prefix_v);
    if (!a->prefix_k || !a->prefix_v) {
        rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        goto done;
    }
    for (int l = 0; l < L && !rc; l++) {
        for (int side = 0; side < 2 && !rc; side++) {
            float *dst = malloc(sizeof(float) * (size_t)nv * kv);
            if (!dst) {
                rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
                break;
            }
            for (int p = 0; p < nv; p++)
                for (int j = 0; j < kv; j++) {
                    float f = (float)table[(size_t)p * width + (size_t)(2 * l + side) * kv + j];
                    if (!isfinite(f)) {
                        free(dst);
                        rc = adapter__fail(c, PEFTD_EINVAL, "%s: the prefix table of '%s' is not finite", c->wname,
                                           name);
                        goto done;
                    }
                    dst[(size_t)p * kv + j] = f;
                }
            rc = adapter__stage_own(c, dst, (size_t)nv * kv, side ? &a->prefix_v[l] : &a->prefix_k[l]);
        }
    }
done:
    free(table), free(h), free(e), free(w0), free(b0), free(w2), free(b2), free(wte), free(flat_t);
    return rc;
}
