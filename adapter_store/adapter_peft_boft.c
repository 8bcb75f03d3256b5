/* adapter_store/adapter_peft_boft.c — PEFT BOFT adapters (peft_type "BOFT", PEFT 0.21.2
 * tuners/boft). Per targeted Linear, boft_R [F, n, b, b] (full matrices; each block's rotation
 * is Cayley(½(M − Mᵀ))) and boft_s [out, 1]. With Bᵢ = blockdiag(factor i's blocks) and Pᵢ
 * PEFT's block-butterfly permutation (block_butterfly_perm(in, n / 2ⁱ, b / 2); the identity when
 * F = 1), Mᵢ = Pᵢ Bᵢ Pᵢᵀ, Rot = M_{F−1} ⋯ M_1 M_0 and BOFT's Linear.forward is
 *   y = s ⊙ (W (x·Rot)) + b = s ⊙ (W (x·M_{F−1}·…·M_0)) + b     (the bias is not scaled).
 * F is read from the tensor: PEFT builds the butterfly factors only where its CUDA extension
 * loads and silently keeps one elsewhere, so the config's boft_n_butterfly_factor is F or 1.
 *
 * Served per module in one of two forms, whichever reads fewer bytes per token (the rule:
 * adapter__rot_dense_wins, logged per adapter; PEFTD_ROT_FORM=factored|dense forces one):
 *   factored: rotations of the projection's input (adapter.h adapter_rot): the F factors in the
 *             order they act on a row (PEFT's factor F−1 first), each [in, b] f32 blocks + an
 *             int32 permutation unless it is the identity (factor 0's always is):
 *             F·in·b·4 + (non-identity permutations)·in·4 bytes, F·in·b multiply-adds;
 *   dense:    the delta ΔW = diag(s)·W·Rotᵀ − W [out, in] (adapter_lora.delta, s folded in),
 *             formed at import in double from the base's host weight (dequantized when
 *             quantized), one row at a time through the factors: out·in·4 bytes and out·in
 *             multiply-adds; chosen only when out < F·b (+1 per permutation), i.e. butterflies
 *             of a few very large blocks.
 * Factored, boft_s goes to the output scale the forward applies before the bias (it splits by
 * rows on a fused Phi-3 module, as it does inside the dense delta); that form reads no base
 * weight. BOFT has no adapter scale in PEFT (set_scale warns and keeps 1): a request
 * adapter_scale is refused. boft_dropout is training-only and accepted; bias "all" /
 * "boft_only", conv layers, embed_tokens / lm_head targets and fan_in_fan_out are refused by
 * name.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"
#include "lib/log.h"

#define PREFIX "base_model.model."

/* One module's factors (Rd: F·nb blocks of bs², PEFT's factor order), staged factored. */
static int stage_module(adapter__ctx *c, adapter_rot *ro, int in, int F, int nb, int bs, const double *Rd,
                        const char *key) {
    size_t per = (size_t)nb * bs * bs; /* = in·bs doubles per factor */
    int rc = 0;
    ro->n_factors = F;
    if (!(ro->f = calloc((size_t)ro->n_factors, sizeof *ro->f))) return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    for (int f = 0; f < F && rc == 0; f++) {
        int i = F - 1 - f; /* x·M_{F−1} first */
        float *rf = malloc(per * sizeof *rf);
        if (!rf) return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        for (size_t e = 0; e < per; e++) rf[e] = (float)Rd[(size_t)i * per + e];
        rc = adapter__rot_stage_factor(&c->stage, in, bs, false, F > 1 ? nb >> i : 0, bs / 2, rf, &ro->f[f]);
    }
    if (rc) return adapter__fail(c, rc, "%s: staging the rotation of %s failed", c->wname, key);
    return 0;
}

int adapter__load_boft(adapter__ctx *c) {
    static const char *const defaults[] = {"q_proj", "v_proj", NULL}; /* PEFT's, for llama / qwen2 */
    adapter *a = c->a;
    const adapter_base *b = c->base;
    int n = b->n_layers * AMOD_COUNT, cfg_f, cfg_bs, cfg_nb, rc, n_fact = 0, n_dense = 0;
    bool *sel = NULL;
    double dropout;
    const char *bias;
    adapter__rot_form forced = adapter__rot_form_forced();
    a->kind = ADAPTER_BOFT;
    if ((rc = adapter__peft_check_common(c))) return rc;
    if ((rc = adapter__json_int(c, c->cfg, "boft_n_butterfly_factor", 1, 1, KROT_MAX_FACTORS, &cfg_f)) ||
        (rc = adapter__json_int(c, c->cfg, "boft_block_size", 4, 0, ADAPTER_MAX_COUNT, &cfg_bs)) ||
        (rc = adapter__json_int(c, c->cfg, "boft_block_num", 0, 0, ADAPTER_MAX_COUNT, &cfg_nb)) ||
        (rc = adapter__json_num(c, c->cfg, "boft_dropout", 0.0, 1.0, &dropout)) ||
        (rc = adapter__json_str(c, c->cfg, "bias", "none", &bias)))
        return rc;
    if (strcmp(bias, "none"))
        return adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: BOFT with bias \"%.32s\" is not served", bias);
    if ((cfg_bs != 0) == (cfg_nb != 0)) /* BOFTConfig.__post_init__ */
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: BOFT needs exactly one of 'boft_block_size' (%d) "
                                               "and 'boft_block_num' (%d) non-zero", cfg_bs, cfg_nb);
    if ((rc = adapter__rot_begin(c, defaults, &sel))) return rc;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!sel[i]) continue;
        int l = i / AMOD_COUNT, o, in, row0, fo;
        adapter_module m = (adapter_module)(i % AMOD_COUNT);
        char key[128], name[256];
        adapter__module_key(b, l, m, key, sizeof key);
        adapter_module_shape(b, m, &o, &in);
        adapter__fused_rows(b, m, &row0, &fo);
        snprintf(name, sizeof name, PREFIX "%s.boft_R", key);
        const st_tensor *tr = adapter__take(c, name), *ts; /* 4-D: adapter__expect takes 1-D / 2-D */
        if (!tr || tr->ndim != 4 || tr->shape[2] != tr->shape[3] || tr->shape[1] * tr->shape[2] != in ||
            (tr->shape[0] != cfg_f && tr->shape[0] != 1) || (cfg_bs && tr->shape[2] != cfg_bs) ||
            (cfg_nb && tr->shape[1] != cfg_nb)) {
            rc = adapter__fail(c, PEFTD_EFORMAT, "%s: '%s' must be [factors (%d, or 1), blocks, b, b] with blocks·b = %d "
                               "(boft_block_size %d / boft_block_num %d)", c->wname, name, cfg_f, in, cfg_bs, cfg_nb);
            break;
        }
        int F = (int)tr->shape[0], nb = (int)tr->shape[1], bs = (int)tr->shape[2];
        if (F > 1 && (nb % 2 || bs % 2 || nb % (1 << (F - 1)))) { /* BOFTLayer.update_layer's checks */
            rc = adapter__fail(c, PEFTD_EINVAL, "%s: %d butterfly factors of %d blocks of %d do not form PEFT's "
                               "butterfly", name, F, nb, bs);
            break;
        }
        snprintf(name, sizeof name, PREFIX "%s.boft_s", key);
        st_tensor rows;
        if ((rc = adapter__expect(c, name, 2, fo, 1, &ts))) break;
        rows = adapter__tensor_rows(ts, row0, o); /* fused module (Phi-3): this part's rows */
        adapter_rot *ro = &a->rot[i];
        float *vr = NULL;
        if ((rc = adapter__to_f32(c, tr, &vr))) break;
        size_t bb = (size_t)bs * bs;
        double *S = malloc(bb * sizeof *S), *Rd = malloc((size_t)F * nb * bb * sizeof *Rd);
        int32_t *g[KROT_MAX_FACTORS] = {0};
        bool ident[KROT_MAX_FACTORS];
        if (!S || !Rd) rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        for (int k = 0; rc == 0 && k < F * nb; k++) { /* cayley_batch: Cayley(½(M − Mᵀ)) */
            const float *M = vr + (size_t)k * bb;
            for (int p = 0; p < bs; p++)
                for (int q = 0; q < bs; q++) S[p * bs + q] = 0.5 * ((double)M[p * bs + q] - (double)M[q * bs + p]);
            int st = adapter__cayley(S, bs, Rd + (size_t)k * bb);
            if (st == PEFTD_ENOMEM) rc = adapter__fail(c, st, "out of memory");
            else if (st) rc = adapter__fail(c, PEFTD_EINVAL, "%s: block %d of '%s.boft_R' is singular (I + S)", c->wname, k, key);
        }
        /* the permutations (identity without butterflies) and the byte rule */
        double factored = 0;
        for (int f = 0; rc == 0 && f < F; f++) {
            ident[f] = true;
            if (F > 1) {
                if (!(g[f] = malloc((size_t)in * sizeof *g[f]))) rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
                else if (adapter__butterfly_perm(in, nb >> f, bs / 2, g[f], &ident[f]))
                    rc = adapter__fail(c, PEFTD_EINVAL, "%s: factor %d's butterfly (%d blocks, half %d) is not "
                                       "PEFT's", key, f, nb >> f, bs / 2);
            }
            if (rc == 0 && ident[f]) free(g[f]), g[f] = NULL;
            factored += 4.0 * in * bs + (ident[f] ? 0 : 4.0 * in);
        }
        const kmat *w = b->layer_w ? &b->layer_w[l * AMOD_COUNT + m] : NULL;
        if (rc == 0 && adapter__rot_dense_wins(forced, factored, o, in, w)) {
            adapter__rot_d fd[KROT_MAX_FACTORS];
            float *vs = NULL;
            for (int f = 0; f < F; f++) /* x·Rot = x·M_{F−1}⋯M_0 */
                fd[f] = (adapter__rot_d){.R = Rd + (size_t)(F - 1 - f) * nb * bb, .block = bs, .g = g[F - 1 - f]};
            if ((rc = adapter__to_f32(c, &rows, &vs)) == 0)
                rc = adapter__rot_dense(c, w, o, in, fd, F, vs, &a->lora[i].delta, key);
            free(vs);
            if (rc == 0) n_dense++;
        } else if (rc == 0 && (rc = adapter__stage_vec(c, &rows, &ro->out_scale)) == 0 &&
                   (rc = stage_module(c, ro, in, F, nb, bs, Rd, key)) == 0) {
            n_fact++;
        }
        for (int f = 0; f < F; f++) free(g[f]);
        free(vr), free(S), free(Rd);
    }
    if (rc == 0)
        LOGI("adapter %s: BOFT: %d module(s) factored, %d dense (%s)", c->dir, n_fact, n_dense,
             forced == ADAPTER_ROT_AUTO ? "by bytes: F·in·b (+ in per permutation) vs out·in" : "PEFTD_ROT_FORM");
    if (rc == 0 && n_dense == 0) free(a->lora), a->lora = NULL; /* all factored: no LoRA list, as a blob reads back */
    free(sel);
    return rc;
}
