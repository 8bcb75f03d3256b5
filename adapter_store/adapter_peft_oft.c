/* adapter_store/adapter_peft_oft.c — PEFT OFT adapters (peft_type "OFT", PEFT 0.21.2
 * tuners/oft): per targeted Linear, an orthogonal block-diagonal matrix rotates the layer's
 * INPUT (OFTRotationModule.forward, then the base layer with its bias unchanged):
 *   y = W (x·blockdiag(R_0 .. R_{n−1})) + b,   x_rot[k·b + c] = Σ_j x[k·b + j]·R_k[j, c].
 *
 * The saved <key>.oft_R.weight [n, b(b−1)/2] (or [1, …] with block_share: one block for all)
 * holds the strict upper triangle (row-major) of a skew-symmetric Q per block; R = the Cayley
 * transform (I − Q)(I + Q)⁻¹, or with use_cayley_neumann (the default) PEFT's truncated series
 * I + 2Q + 2Q² + … + Q^(terms−1); with coft, Q is first projected to Frobenius norm <= eps/√n
 * (n = saved blocks), as PEFT's forward does to its weight. The block size is PEFT's: from
 * oft_block_size or in / r, moved to the nearest divisor of the in-features as
 * OFTLayer.adjust_oft_parameters moves it (PEFT warns and trains that size).
 *
 * Each R_k is formed once here, in double; a module is then served in one of two forms,
 * whichever reads fewer bytes per token (adapter__rot_dense_wins; PEFTD_ROT_FORM=factored|dense
 * forces one; one log line per load says what was chosen):
 *   factored (adapter.h adapter_rot, one factor): the R_k stored f32 ([in, b], or [b, b]
 *             shared); the forward rotates each OFT segment's rows of the projection's input
 *             (kernels.h seg_rotate: in·b multiply-adds and in·b floats of R read per token — b²
 *             with block_share) into their own copy before the one shared base matmul, so
 *             q/k/v, which share an input, each see their own rotation and other segments' rows
 *             are copied unchanged (server/model/llama_adapters.c). No base weight is read.
 *   dense:    ΔW = W·(blockdiag(R)ᵀ − I) [out, in] (adapter_lora.delta, the path VeRA / LoHa /
 *             LoKr dense modules take), formed in double from the base's host weight
 *             (dequantized when quantized), y = W x + ΔW x + b: out·in floats per token, chosen
 *             only when that is fewer than the factored form's (blocks wider than out).
 *
 * PEFT's OFT has no adapter scale (set_scale warns and keeps 1): a request adapter_scale is
 * refused (adapter_accepts_scale). module_dropout is a training-only block dropout (an
 * inference no-op) and is accepted; bias "all" / "oft_only", conv layers (absent on Llama),
 * embed_tokens / lm_head targets and fan_in_fan_out are refused by name.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"
#include "lib/log.h"

#define PREFIX "base_model.model."

/* OFTLayer.adjust_oft_parameters(in, p): the divisor of in nearest to p (ties: the lower). */
static int adjust(int in, int p) {
    if (p >= in) return in;
    int hi = p, lo = p;
    while (hi <= in && in % hi) hi++;
    while (lo > 1 && in % lo) lo--;
    return p - lo <= hi - p ? lo : hi;
}

/* R of one block from its upper-triangle vector v (OFTRotationModule). */
static int block_rotation(const float *v, int b, bool coft, double eps_block, bool neumann, int terms, double *R) {
    size_t bb = (size_t)b * b;
    double *Q = calloc(bb, sizeof *Q);
    if (!Q) return PEFTD_ENOMEM;
    for (int i = 0, k = 0; i < b; i++)
        for (int j = i + 1; j < b; j++, k++) Q[i * b + j] = v[k], Q[j * b + i] = -(double)v[k];
    if (coft) { /* Q -> eps·Q/||Q||_F when ||Q||_F > eps (PEFT _project_batch; the weight is f32) */
        double n2 = 0;
        for (size_t k = 0; k < bb; k++) n2 += Q[k] * Q[k];
        double nrm = sqrt(n2);
        if (nrm > eps_block)
            for (size_t k = 0; k < bb; k++) Q[k] = (double)(float)(eps_block * (Q[k] / nrm));
    }
    int rc = neumann ? adapter__cayley_neumann(Q, b, terms, R) : adapter__cayley(Q, b, R);
    free(Q);
    return rc;
}

int adapter__load_oft(adapter__ctx *c) {
    static const char *const defaults[] = {"q_proj", "v_proj", NULL}; /* PEFT's, for llama / qwen2 */
    adapter *a = c->a;
    const adapter_base *b = c->base;
    int n = b->n_layers * AMOD_COUNT, r, block, terms, rc, n_rot = 0, n_dense = 0;
    adapter__rot_form forced = adapter__rot_form_forced();
    bool coft, share, neumann, *sel = NULL;
    double eps, dropout;
    const char *bias;
    a->kind = ADAPTER_OFT;
    if ((rc = adapter__peft_check_common(c))) return rc;
    if ((rc = adapter__json_int(c, c->cfg, "r", 0, 0, ADAPTER_MAX_COUNT, &r)) ||
        (rc = adapter__json_int(c, c->cfg, "oft_block_size", 32, 0, ADAPTER_MAX_COUNT, &block)) ||
        (rc = adapter__json_bool(c, c->cfg, "coft", false, &coft)) ||
        (rc = adapter__json_num(c, c->cfg, "eps", 6e-5, ADAPTER_MAX_SCALE, &eps)) ||
        (rc = adapter__json_bool(c, c->cfg, "block_share", false, &share)) ||
        (rc = adapter__json_bool(c, c->cfg, "use_cayley_neumann", true, &neumann)) ||
        (rc = adapter__json_int(c, c->cfg, "num_cayley_neumann_terms", 5, 1, 64, &terms)) ||
        (rc = adapter__json_num(c, c->cfg, "module_dropout", 0.0, 1.0, &dropout)) ||
        (rc = adapter__json_str(c, c->cfg, "bias", "none", &bias)))
        return rc;
    if (strcmp(bias, "none"))
        return adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: OFT with bias \"%.32s\" is not served", bias);
    if ((r != 0) == (block != 0)) /* OFTConfig.__post_init__: exactly one of the two */
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: OFT needs exactly one of 'r' (%d) and "
                                               "'oft_block_size' (%d) non-zero", r, block);
    if (coft && !(eps > 0))
        return adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: 'eps' must be > 0 with coft (got %g)", eps);
    if ((rc = adapter__rot_begin(c, defaults, &sel))) return rc;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!sel[i]) continue;
        int l = i / AMOD_COUNT, o, in;
        adapter_module m = (adapter_module)(i % AMOD_COUNT);
        char key[128], name[256];
        adapter__module_key(b, l, m, key, sizeof key);
        adapter_module_shape(b, m, &o, &in);
        /* OFTLayer.update_layer: the block size and block count PEFT trains */
        int bs = block, nb = r;
        if (r == 0) {
            if (in % bs || bs > in) bs = adjust(in, bs);
            nb = in / bs;
        } else {
            if (in % r || r > in) nb = adjust(in, r);
            bs = in / nb;
        }
        int nel = bs * (bs - 1) / 2, nsaved = share ? 1 : nb;
        snprintf(name, sizeof name, PREFIX "%s.oft_R.weight", key);
        const st_tensor *t;
        if (bs < 2) { /* blocks of 1: R = I, nothing to rotate (PEFT saves an empty tensor) */
            if (!adapter__take(c, name))
                rc = adapter__fail(c, PEFTD_EFORMAT, "%s: tensor '%s' is missing", c->wname, name);
            continue;
        }
        float *v = NULL, *rf = NULL;
        double *R = NULL;
        size_t bb = (size_t)bs * bs;
        if ((rc = adapter__expect(c, name, 2, nsaved, nel, &t)) || (rc = adapter__to_f32(c, t, &v))) break;
        R = malloc((size_t)nsaved * bb * sizeof *R);
        if (!R) rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        double eps_block = eps / sqrt((double)nsaved); /* PEFT: eps / sqrt(blocks saved) */
        for (int k = 0; k < nsaved && rc == 0; k++) {
            int st = block_rotation(v + (size_t)k * nel, bs, coft, eps_block, neumann, terms, R + (size_t)k * bb);
            if (st == PEFTD_ENOMEM) rc = adapter__fail(c, st, "out of memory");
            else if (st) rc = adapter__fail(c, PEFTD_EINVAL, "%s: block %d of '%s' is singular (I + Q)", c->wname, k, name);
        }
        free(v);
        const kmat *w = b->layer_w ? &b->layer_w[l * AMOD_COUNT + m] : NULL;
        if (rc == 0 && adapter__rot_dense_wins(forced, 4.0 * (share ? bs : in) * bs, o, in, w)) {
            adapter__rot_d f = {.R = R, .block = bs, .shared = share, .g = NULL};
            rc = adapter__rot_dense(c, w, o, in, &f, 1, NULL, &a->lora[i].delta, key);
            free(R);
            if (rc) break;
            n_dense++;
            continue;
        }
        adapter_rot *ro = &a->rot[i];
        rf = rc ? NULL : malloc((size_t)nsaved * bb * sizeof *rf);
        ro->f = rc ? NULL : calloc(1, sizeof *ro->f);
        if (rc == 0 && (!rf || !ro->f)) rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        for (size_t e = 0; rc == 0 && e < (size_t)nsaved * bb; e++) rf[e] = (float)R[e];
        free(R);
        if (rc) {
            free(rf);
            break;
        }
        ro->n_factors = 1;
        if ((rc = adapter__rot_stage_factor(&c->stage, in, bs, share, 0, 0, rf, &ro->f[0]))) {
            rc = adapter__fail(c, rc, "%s: staging the rotation of %s failed", c->wname, key);
            break;
        }
        n_rot++;
    }
    if (rc == 0 && n_rot + n_dense == 0)
        rc = adapter__fail(c, PEFTD_EFORMAT, "%s: no oft_R tensor rotates anything (every block size is 1)", c->wname);
    if (rc == 0)
        LOGI("adapter %s: OFT: %d module(s) factored, %d dense (%s)", c->dir, n_rot, n_dense,
             forced == ADAPTER_ROT_AUTO ? "by bytes: in·b (b² shared) vs out·in" : "PEFTD_ROT_FORM");
    if (rc == 0 && n_dense == 0) free(a->lora), a->lora = NULL; /* all factored: no LoRA list, as a blob reads back */
    free(sel);
    return rc;
}
