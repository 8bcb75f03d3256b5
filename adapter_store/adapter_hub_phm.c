/* adapter_store/adapter_hub_phm.c — AdapterHub Compacter / Compacter++ (phm_layer: true):
 * the bottleneck's down and up projections as PHM layers, materialised at import.
 *
 * A PHM layer (adapters 1.3 methods/modeling.py PHMLayer) with phm_dim p maps x [in] to
 *   y = x · H + b,   H [in, out] = Σ_{i<p} kron(R_i, W_i),
 * R_i [p, p] the "phm rule" and W_i [in/p, out/p] (W_i = W_left_i · W_right_i, inner size
 * phm_rank, when factorized_phm_W). Element-wise,
 *   H[a·(in/p) + b, c·(out/p) + d] = Σ_i R_i[a, c] · W_i[b, d].
 * Hᵀ is an ordinary [out, in] Linear weight, so a Compacter is a bottleneck adapter whose
 * down/up weights are computed once here (in double, rounded to f32) and then served by the
 * same SGMV path as Pfeiffer/Houlsby: the batch never sees a PHM layer. Exact up to that
 * rounding (the library sums the p Kronecker terms in f32: |difference| ~1e-7 relative).
 *
 * Where the factors live in adapter.safetensors (per module prefix P =
 * "model.layers.L.<place>.adapters.<name>.adapter_down.0." or "...adapter_up."):
 *   W:    P W_left [p, in/p, rank] + P W_right [p, rank, out/p]   (factorized_phm_W)
 *         or P W [p, in/p, out/p];   with shared_W_phm one set for the adapter:
 *         model.shared_parameters.<name>.W_{down,up}_left/_right or W_{down,up}
 *   rule: model.shared_parameters.<name>.phm_rule [p, p, p]         (shared_phm_rule)
 *         or P phm_rule; factorized_phm_rule: phm_rule_left [p, p, 1] · phm_rule_right [p, 1, p]
 *   bias: P b [out]                                                  (phm_bias)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_hub_internal.h"

/* The 3-D tensor called name with shape [d0, d1, d2], as a malloc'd f32 copy. */
static int expect3(adapter__ctx *c, const char *name, int64_t d0, int64_t d1, int64_t d2, float **out) {
    const st_tensor *t = adapter__take(c, name);
    if (!t)
        return adapter__fail(c, PEFTD_EFORMAT, "%s: tensor '%s' is expected by adapter_config.json (phm_layer) but missing",
                             c->wname, name);
    if (t->ndim != 3 || t->shape[0] != d0 || t->shape[1] != d1 || t->shape[2] != d2)
        return adapter__fail(c, PEFTD_EINVAL, "%s: tensor '%s' must have shape [%lld, %lld, %lld] for base %s", c->wname,
                             name, (long long)d0, (long long)d1, (long long)d2, c->base->name);
    return adapter__to_f32(c, t, out);
}

/* out[i] = x[i] · y[i] for p batched [m, k] · [k, n] products, in double. */
static double *bmm(const float *x, const float *y, int p, int m, int k, int n) {
    double *o = calloc((size_t)p * m * n, sizeof *o);
    if (!o) return NULL;
    for (int i = 0; i < p; i++)
        for (int r = 0; r < m; r++)
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int q = 0; q < k; q++)
                    s += (double)x[((size_t)i * m + r) * k + q] * y[((size_t)i * k + q) * n + j];
                o[((size_t)i * m + r) * n + j] = s;
            }
    return o;
}

/* A factor F [p, m, n] that is either one tensor `base` or the product base_left · base_right
 * (inner size k), looked up under prefix. */
static int factor(adapter__ctx *c, const char *prefix, const char *base, bool factorized, int p, int m, int n, int k,
                  double **out) {
    char nm[600];
    float *x = NULL, *y = NULL;
    int rc;
    *out = NULL;
    if (factorized) {
        snprintf(nm, sizeof nm, "%s%s_left", prefix, base);
        if ((rc = expect3(c, nm, p, m, k, &x))) goto done;
        snprintf(nm, sizeof nm, "%s%s_right", prefix, base);
        if ((rc = expect3(c, nm, p, k, n, &y))) goto done;
        if (!(*out = bmm(x, y, p, m, k, n))) rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    } else {
        snprintf(nm, sizeof nm, "%s%s", prefix, base);
        if ((rc = expect3(c, nm, p, m, n, &x))) goto done;
        if (!(*out = malloc(sizeof(double) * (size_t)p * m * n))) {
            rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < (size_t)p * m * n; i++) (*out)[i] = x[i];
    }
done:
    free(x);
    free(y);
    return rc;
}

int adapter__hub_phm_config(adapter__ctx *c, hub_phm *ph) {
    int rc;
    memset(ph, 0, sizeof *ph);
    if ((rc = adapter__json_bool(c, c->cfg, "phm_layer", false, &ph->on)) || !ph->on) return rc;
    if ((rc = adapter__json_int(c, c->cfg, "phm_dim", 4, 1, 4096, &ph->dim)) ||
        (rc = adapter__json_int(c, c->cfg, "phm_rank", 1, 1, 4096, &ph->rank)) ||
        (rc = adapter__json_bool(c, c->cfg, "factorized_phm_W", true, &ph->factorized_w)) ||
        (rc = adapter__json_bool(c, c->cfg, "shared_W_phm", false, &ph->shared_w)) ||
        (rc = adapter__json_bool(c, c->cfg, "shared_phm_rule", true, &ph->shared_rule)) ||
        (rc = adapter__json_bool(c, c->cfg, "factorized_phm_rule", false, &ph->factorized_rule)) ||
        (rc = adapter__json_bool(c, c->cfg, "phm_bias", true, &ph->bias)))
        return rc;
    if (c->base->hidden % ph->dim)
        return adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: config.phm_dim %d does not divide hidden size %d",
                             ph->dim, c->base->hidden);
    return 0;
}

int adapter__hub_phm_module(adapter__ctx *c, const hub_phm *ph, const char *name, const char *prefix, bool up,
                            int in, int out, float **weight, const st_tensor **bias) {
    int p = ph->dim, rc;
    char shared[300], nm[600];
    double *W = NULL, *R = NULL;
    *weight = NULL;
    *bias = NULL;
    if (in % p || out % p)
        return adapter__fail(c, PEFTD_EINVAL, "%s: PHM layer %sweight [%d, %d] is not divisible by phm_dim %d", c->wname,
                             prefix, out, in, p);
    int ip = in / p, op = out / p;
    snprintf(shared, sizeof shared, "model.shared_parameters.%s.", name);
    if (ph->shared_w) rc = factor(c, shared, up ? "W_up" : "W_down", ph->factorized_w, p, ip, op, ph->rank, &W);
    else rc = factor(c, prefix, "W", ph->factorized_w, p, ip, op, ph->rank, &W);
    if (rc) goto done;
    if ((rc = factor(c, ph->shared_rule ? shared : prefix, "phm_rule", ph->factorized_rule, p, p, p, 1, &R))) goto done;
    if (ph->bias) {
        snprintf(nm, sizeof nm, "%sb", prefix);
        if ((rc = adapter__expect(c, nm, 1, out, 0, bias))) goto done;
    }
    float *w = malloc(sizeof(float) * (size_t)out * in);
    if (!w) {
        rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        goto done;
    }
    /* weight[o][x] = H[x][o] with x = a·ip + b, o = cc·op + d */
    for (int a = 0; a < p; a++)
        for (int b = 0; b < ip; b++)
            for (int cc = 0; cc < p; cc++)
                for (int d = 0; d < op; d++) {
                    double s = 0;
                    for (int i = 0; i < p; i++)
                        s += R[((size_t)i * p + a) * p + cc] * W[((size_t)i * ip + b) * op + d];
                    float f = (float)s;
                    if (!isfinite(f)) {
                        free(w);
                        rc = adapter__fail(c, PEFTD_EINVAL, "%s: PHM layer %s materialises to a non-finite weight",
                                           c->wname, prefix);
                        goto done;
                    }
                    w[(size_t)(cc * op + d) * in + (a * ip + b)] = f;
                }
    *weight = w;
done:
    free(W);
    free(R);
    return rc;
}
