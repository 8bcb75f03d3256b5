/* adapter_store/adapter_peft_oft.c — PEFT OFT adapters (peft_type "OFT", PEFT 0.21.2
 * tuners/oft): per targeted Linear, an orthogonal block-diagonal R rotates the layer's input,
 * y = W (x·blockdiag(R_1..R_n)) + b.
 *
 * The saved <key>.oft_R.weight [n, b(b-1)/2] (n blocks of size b = in / n, or one shared block
 * with block_share) holds the strict upper triangle (row-major) of a skew-symmetric Q per block;
 * R = the Cayley transform (I − Q)(I + Q)⁻¹, or with use_cayley_neumann (the default) PEFT's
 * truncated series I + 2Q + 2Q² + … + Qᵏ exactly as its loop forms it; with coft, Q is first
 * projected to Frobenius norm <= eps / sqrt(n) (as PEFT's forward does to its weight).
 *
 * Served as a dense delta (adapter.h adapter_lora.delta, the path VeRA / LoHa / LoKr dense modules take):
 * ΔW = W·(blockdiag(R)ᵀ − I) per module, formed once at import in double from the base's host
 * weights (dequantized when quantized), so y = W x + ΔW x + b. That reads out·in per module per
 * step; rotating each OFT segment's input rows (in·b) would read less, and is not implemented:
 * the rule that picks between the two forms therefore has one candidate here. The request
 * scale t multiplies ΔW (t = 0: the base). Conv layers, bias training and block sizes that do not
 * divide the in-features are refused by name. BOFT (below) is served the same way.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"
#include "kernels/cpu/quant_ref.h"

#define PREFIX "base_model.model."

/* Row j of the base weight w [o, in] as doubles. */
static void base_row(const kmat *w, int j, int in, float *tmp, double *out) {
    const unsigned char *row = (const unsigned char *)w->data + (size_t)j * kdtype_row_bytes(w->dtype, in);
    if (kdtype_is_quant(w->dtype)) {
        qref_dequantize(kdtype_ggml_type(w->dtype), row, tmp, in);
        for (int i = 0; i < in; i++) out[i] = tmp[i];
    } else {
        for (int i = 0; i < in; i++) out[i] = adapter__elem(row, w->dtype, (size_t)i);
    }
}

/* C = A·B for b×b doubles. */
static void mm(const double *A, const double *B, double *C, int b) {
    for (int i = 0; i < b; i++)
        for (int j = 0; j < b; j++) {
            double s = 0;
            for (int k = 0; k < b; k++) s += A[i * b + k] * B[k * b + j];
            C[i * b + j] = s;
        }
}

/* R = (I − Q)(I + Q)⁻¹ (torch.linalg.solve(I + Q, I − Q, left=False)) for b×b doubles, by
 * Gauss–Jordan on (I + Q)ᵀ Rᵀ = (I − Q)ᵀ with partial pivoting. PEFTD_EINVAL: singular. */
static int cayley(const double *Q, int b, double *R) {
    size_t bb = (size_t)b * b;
    double *M = malloc(bb * sizeof *M), *X = malloc(bb * sizeof *X);
    int rc = M && X ? 0 : PEFTD_ENOMEM;
    for (int i = 0; rc == 0 && i < b; i++)
        for (int j = 0; j < b; j++) {
            M[i * b + j] = (i == j) + Q[j * b + i]; /* (I + Q)ᵀ */
            X[i * b + j] = (i == j) - Q[j * b + i]; /* (I − Q)ᵀ */
        }
    for (int c = 0; c < b && rc == 0; c++) {
        int p = c;
        for (int r = c + 1; r < b; r++)
            if (fabs(M[r * b + c]) > fabs(M[p * b + c])) p = r;
        if (fabs(M[p * b + c]) < 1e-300) {
            rc = PEFTD_EINVAL;
            break;
        }
        for (int j = 0; j < b; j++) {
            double t = M[c * b + j];
            M[c * b + j] = M[p * b + j], M[p * b + j] = t;
            t = X[c * b + j];
            X[c * b + j] = X[p * b + j], X[p * b + j] = t;
        }
        double d = M[c * b + c];
        for (int j = 0; j < b; j++) M[c * b + j] /= d, X[c * b + j] /= d;
        for (int r = 0; r < b; r++) {
            if (r == c || M[r * b + c] == 0) continue;
            double f = M[r * b + c];
            for (int j = 0; j < b; j++) M[r * b + j] -= f * M[c * b + j], X[r * b + j] -= f * X[c * b + j];
        }
    }
    for (int i = 0; rc == 0 && i < b; i++)
        for (int j = 0; j < b; j++) R[i * b + j] = X[j * b + i]; /* R = Xᵀ */
    free(M), free(X);
    return rc;
}

/* R from one block's upper-triangle vector v (PEFT's OFTRotationModule). */
static int block_rotation(const float *v, int b, bool coft, double eps_block, bool neumann, int terms, double *R) {
    size_t bb = (size_t)b * b;
    double *Q = calloc(bb, sizeof *Q), *P = malloc(bb * sizeof *P), *T = malloc(bb * sizeof *T);
    int rc = Q && P && T ? 0 : PEFTD_ENOMEM;
    if (rc) goto out;
    for (int i = 0, k = 0; i < b; i++)
        for (int j = i + 1; j < b; j++, k++) Q[i * b + j] = v[k], Q[j * b + i] = -(double)v[k];
    if (coft) { /* Q -> eps·Q/||Q|| when ||Q|| > eps (the norm of the whole skew matrix) */
        double n2 = 0;
        for (size_t k = 0; k < bb; k++) n2 += Q[k] * Q[k];
        double nrm = sqrt(n2);
        if (nrm > eps_block)
            for (size_t k = 0; k < bb; k++) Q[k] = (double)(float)(eps_block * (Q[k] / nrm)); /* saved as f32 */
    }
    for (size_t k = 0; k < bb; k++) R[k] = 0;
    for (int i = 0; i < b; i++) R[i * b + i] = 1;
    if (neumann) { /* PEFT's loop: I (+2Q (+2Q² (+2Q³ ... ) + Q^last)) */
        if (terms > 1) {
            for (size_t k = 0; k < bb; k++) R[k] += 2 * Q[k];
            if (terms > 2) {
                mm(Q, Q, P, b); /* P = Q² */
                for (size_t k = 0; k < bb; k++) R[k] += 2 * P[k];
                for (int t = 3; t < terms - 1; t++) {
                    mm(P, Q, T, b);
                    memcpy(P, T, bb * sizeof *P);
                    for (size_t k = 0; k < bb; k++) R[k] += 2 * P[k];
                }
                mm(P, Q, T, b);
                for (size_t k = 0; k < bb; k++) R[k] += T[k];
            }
        }
    } else {
        rc = cayley(Q, b, R);
    }
out:
    free(Q), free(P), free(T);
    return rc;
}

int adapter__load_oft(adapter__ctx *c) {
    static const char *const defaults[] = {"q_proj", "v_proj", NULL};
    adapter *a = c->a;
    const adapter_base *b = c->base;
    int n = b->n_layers * AMOD_COUNT, r, block, terms, rc;
    bool coft, share, neumann, *sel = NULL;
    double eps;
    const char *bias;
    a->kind = ADAPTER_LORA;
    if ((rc = adapter__peft_check_common(c))) return rc;
    if ((rc = adapter__json_int(c, c->cfg, "r", 0, 0, ADAPTER_MAX_COUNT, &r)) ||
        (rc = adapter__json_int(c, c->cfg, "oft_block_size", 32, 0, 1 << 16, &block)) ||
        (rc = adapter__json_bool(c, c->cfg, "coft", false, &coft)) ||
        (rc = adapter__json_num(c, c->cfg, "eps", 6e-5, ADAPTER_MAX_SCALE, &eps)) ||
        (rc = adapter__json_bool(c, c->cfg, "block_share", false, &share)) ||
        (rc = adapter__json_bool(c, c->cfg, "use_cayley_neumann", true, &neumann)) ||
        (rc = adapter__json_int(c, c->cfg, "num_cayley_neumann_terms", 5, 1, 64, &terms)) ||
        (rc = adapter__json_str(c, c->cfg, "bias", "none", &bias)))
        return rc;
    if (strcmp(bias, "none"))
        return adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: OFT with bias \"%s\" is not served", bias);
    sel = calloc((size_t)n, sizeof *sel);
    a->lora = calloc((size_t)n, sizeof *a->lora);
    if (!sel || !a->lora) {
        free(sel);
        return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    }
    if ((rc = adapter__select_targets(c, defaults, defaults, sel, NULL))) goto out;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!sel[i]) continue;
        int l = i / AMOD_COUNT, o, in;
        adapter_module m = (adapter_module)(i % AMOD_COUNT);
        char key[128], name[256];
        adapter__module_key(b, l, m, key, sizeof key);
        adapter_module_shape(b, m, &o, &in);
        /* PEFT: block size from oft_block_size, or in / r */
        int bs = block > 0 ? block : r > 0 && in % r == 0 ? in / r : 0;
        if (bs < 2 || in % bs) {
            rc = adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: OFT blocks of %d do not divide %s's %d in-features",
                               bs, key, in);
            break;
        }
        int nb = in / bs, nel = bs * (bs - 1) / 2, nsaved = share ? 1 : nb;
        const st_tensor *t;
        float *v = NULL;
        snprintf(name, sizeof name, PREFIX "%s.oft_R.weight", key);
        if ((rc = adapter__expect(c, name, 2, nsaved, nel, &t)) || (rc = adapter__to_f32(c, t, &v))) break;
        const kmat *w = b->layer_w ? &b->layer_w[l * AMOD_COUNT + m] : NULL;
        if (!w || !w->data || w->rows != o || w->cols != in) {
            free(v);
            rc = adapter__fail(c, PEFTD_EINVAL, "OFT on %s needs the base weight [%d, %d], which base %s did not provide",
                               key, o, in, b->name);
            break;
        }
        double *R = malloc((size_t)nsaved * bs * bs * sizeof *R), *wr = malloc((size_t)in * sizeof *wr);
        float *tmp = malloc((size_t)in * sizeof *tmp), *dw = malloc((size_t)o * in * sizeof *dw);
        if (!R || !wr || !tmp || !dw) {
            rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        } else {
            double eps_block = eps / sqrt((double)nsaved);
            for (int k = 0; k < nsaved && rc == 0; k++)
                if (block_rotation(v + (size_t)k * nel, bs, coft, eps_block, neumann, terms, R + (size_t)k * bs * bs))
                    rc = adapter__fail(c, PEFTD_EINVAL, "%s: block %d of '%s' is singular (I + Q)", c->wname, k, name);
            /* ΔW[j, rb + c] = Σ_k W[j, rb + k]·R_r[c, k] − W[j, rb + c] */
            for (int j = 0; j < o && rc == 0; j++) {
                base_row(w, j, in, tmp, wr);
                for (int blk = 0; blk < nb; blk++) {
                    const double *Rb = R + (size_t)(share ? 0 : blk) * bs * bs;
                    const double *x = wr + (size_t)blk * bs;
                    for (int cc = 0; cc < bs; cc++) {
                        double s = 0;
                        for (int k = 0; k < bs; k++) s += x[k] * Rb[cc * bs + k];
                        dw[(size_t)j * in + (size_t)blk * bs + cc] = (float)(s - x[cc]);
                    }
                }
            }
        }
        free(v), free(R), free(wr), free(tmp);
        if (rc == 0) rc = adapter__stage_own_mat(c, dw, o, in, &a->lora[i].delta);
        else free(dw);
    }
out:
    free(sel);
    return rc;
}

/* ---- BOFT (peft_type "BOFT", tuners/boft) ----
 * Per module: boft_R [F, n, b, b] (full matrices; block R = Cayley(½(M − Mᵀ))) and boft_s
 * [out, 1]; with Bᵢ = blockdiag(Rᵢ blocks) and Pᵢ PEFT's block-butterfly permutation
 * (block_butterfly_perm), Rot = M_{F-1} ⋯ M_0 with Mᵢ = Pᵢ Bᵢ Pᵢᵀ, and
 *   y = s ⊙ (W (x·Rot)) + b        (the bias is not scaled).
 * F is read from the tensor: PEFT builds the butterfly factors only where its CUDA extension
 * loads and silently keeps one elsewhere, so the config's boft_n_butterfly_factor is F or 1.
 * Served as the dense delta ΔW = diag(s)·W·Rotᵀ − W, formed as W·M_0ᵀ·M_1ᵀ⋯ (each product
 * touches b entries per element: out·in·b per factor). */

/* PEFT's block_butterfly_perm(n, nb, r, f): indices idx with (P x)[i] = x[idx[i]]. */
static void butterfly_perm(int n, int nb, int r, int f, int *idx) {
    for (int i = 0; i < n; i++) idx[i] = i;
    if (f == 0) return;
    int bsz = n / nb, steps = bsz / r, *order = malloc((size_t)bsz * sizeof *order), k = 0;
    if (!order) return;
    for (int pos = 0; pos < steps; pos += 2) /* evens, then odds: blocks of r */
        for (int t = 0; t < r; t++) order[k++] = pos * r + t;
    for (int pos = 1; pos < steps; pos += 2)
        for (int t = 0; t < r; t++) order[k++] = pos * r + t;
    for (int s0 = 0; s0 < n; s0 += bsz) {
        int tmp[bsz];
        for (int t = 0; t < bsz; t++) tmp[t] = idx[s0 + order[t]];
        memcpy(idx + s0, tmp, sizeof tmp);
    }
    free(order);
}

int adapter__load_boft(adapter__ctx *c) {
    static const char *const defaults[] = {"q_proj", "v_proj", NULL};
    adapter *a = c->a;
    const adapter_base *b = c->base;
    int n = b->n_layers * AMOD_COUNT, cfg_f, rc;
    bool *sel = NULL;
    const char *bias;
    a->kind = ADAPTER_LORA;
    if ((rc = adapter__peft_check_common(c))) return rc;
    if ((rc = adapter__json_int(c, c->cfg, "boft_n_butterfly_factor", 1, 1, 64, &cfg_f)) ||
        (rc = adapter__json_str(c, c->cfg, "bias", "none", &bias)))
        return rc;
    if (strcmp(bias, "none"))
        return adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: BOFT with bias \"%s\" is not served", bias);
    sel = calloc((size_t)n, sizeof *sel);
    a->lora = calloc((size_t)n, sizeof *a->lora);
    if (!sel || !a->lora) {
        free(sel);
        return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    }
    if ((rc = adapter__select_targets(c, defaults, defaults, sel, NULL))) goto out;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!sel[i]) continue;
        int l = i / AMOD_COUNT, o, in;
        adapter_module m = (adapter_module)(i % AMOD_COUNT);
        char key[128], name[256];
        adapter__module_key(b, l, m, key, sizeof key);
        adapter_module_shape(b, m, &o, &in);
        snprintf(name, sizeof name, PREFIX "%s.boft_R", key);
        const st_tensor *tr = st_find(c->st, name), *ts;
        if (!tr || tr->ndim != 4 || tr->shape[2] != tr->shape[3] || tr->shape[1] * tr->shape[2] != in ||
            (tr->shape[0] != cfg_f && tr->shape[0] != 1)) {
            rc = adapter__fail(c, PEFTD_EFORMAT, "%s: '%s' must be [factors (%d, or 1), blocks, b, b] with blocks·b = %d",
                               c->wname, name, cfg_f, in);
            break;
        }
        int F = (int)tr->shape[0], nb = (int)tr->shape[1], bs = (int)tr->shape[2];
        float *vr = NULL, *vs = NULL;
        if ((rc = adapter__to_f32(c, tr, &vr))) break;
        (void)adapter__take(c, name); /* marked used (4-D: adapter__expect takes 1-D / 2-D) */
        snprintf(name, sizeof name, PREFIX "%s.boft_s", key);
        if ((rc = adapter__expect(c, name, 2, o, 1, &ts)) || (rc = adapter__to_f32(c, ts, &vs))) {
            free(vr);
            break;
        }
        const kmat *w = b->layer_w ? &b->layer_w[l * AMOD_COUNT + m] : NULL;
        double *R = malloc((size_t)F * nb * bs * bs * sizeof *R), *X = malloc((size_t)o * in * sizeof *X),
               *Y = malloc((size_t)in * sizeof *Y), *S = malloc((size_t)bs * bs * sizeof *S);
        int *idx = malloc((size_t)F * in * sizeof *idx), *inv = malloc((size_t)F * in * sizeof *inv);
        float *tmp = malloc((size_t)in * sizeof *tmp), *dw = NULL;
        if (!w || !w->data || w->rows != o || w->cols != in) {
            rc = adapter__fail(c, PEFTD_EINVAL, "BOFT on %s needs the base weight [%d, %d], which base %s did not provide",
                               key, o, in, b->name);
        } else if (!R || !X || !Y || !S || !idx || !inv || !tmp || !(dw = malloc((size_t)o * in * sizeof *dw))) {
            rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
        } else if ((F > 1 && ((nb % 2) || (bs % 2) || nb % (1 << (F - 1)))) || nb < 1) {
            rc = adapter__fail(c, PEFTD_EINVAL, "%s: %d butterfly factors of %d blocks of %d do not form PEFT's butterfly",
                               name, F, nb, bs);
        }
        /* the blocks' rotations, the permutations (PEFT: n_butterfly_factor f = F - 1, factor i
         * groups nb / 2^i blocks of half-size r = bs / 2) */
        for (int k = 0; rc == 0 && k < F * nb; k++) {
            const float *M = vr + (size_t)k * bs * bs;
            for (int p = 0; p < bs; p++)
                for (int q = 0; q < bs; q++) S[p * bs + q] = 0.5 * ((double)M[p * bs + q] - (double)M[q * bs + p]);
            if (cayley(S, bs, R + (size_t)k * bs * bs) < 0)
                rc = adapter__fail(c, PEFTD_EINVAL, "%s: block %d of '%s.boft_R' is singular (I + S)", c->wname, k, key);
        }
        for (int f = 0; rc == 0 && f < F; f++) {
            butterfly_perm(in, nb >> f, bs / 2, F - 1, idx + (size_t)f * in);
            for (int t = 0; t < in; t++) inv[(size_t)f * in + idx[(size_t)f * in + t]] = t;
        }
        /* X = W, then X = X·M_fᵀ for f = 0 .. F-1, with (X Mᵀ)[j, a] = Σ_c X[j, c]·B[idx a, idx c] */
        for (int j = 0; rc == 0 && j < o; j++) {
            base_row(w, j, in, tmp, X + (size_t)j * in);
            for (int f = 0; f < F; f++) {
                const int *id = idx + (size_t)f * in, *iv = inv + (size_t)f * in;
                const double *Rf = R + (size_t)f * nb * bs * bs;
                double *x = X + (size_t)j * in;
                for (int aa = 0; aa < in; aa++) {
                    int ia = id[aa], blk = ia / bs, ra = ia % bs;
                    const double *Rb = Rf + (size_t)blk * bs * bs;
                    double s = 0;
                    for (int k = 0; k < bs; k++) s += x[iv[blk * bs + k]] * Rb[ra * bs + k];
                    Y[aa] = s;
                }
                memcpy(x, Y, (size_t)in * sizeof *Y);
            }
            base_row(w, j, in, tmp, Y); /* W again, for ΔW = s·(W Rotᵀ) − W */
            for (int k = 0; k < in; k++) dw[(size_t)j * in + k] = (float)((double)vs[j] * X[(size_t)j * in + k] - Y[k]);
        }
        free(vr), free(vs), free(R), free(X), free(Y), free(S), free(idx), free(inv), free(tmp);
        if (rc == 0) rc = adapter__stage_own_mat(c, dw, o, in, &a->lora[i].delta);
        else free(dw);
    }
out:
    free(sel);
    return rc;
}
