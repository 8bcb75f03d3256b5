/* adapter_store/adapter_rot.c — the rotation math OFT and BOFT share (adapter_peft_oft.c,
 * adapter_peft_boft.c) and the staging of a rotation factor, also used by the blob reader
 * (adapter_blob_read.c): the Cayley transform and PEFT's Cayley–Neumann series of a
 * skew-symmetric block (in double), PEFT's block-butterfly permutation, one
 * adapter_rot_factor (its f32 blocks and its permutation, rebuilt from the recipe) staged for
 * the adapter's block, and the other form a rotated module can take: the rule that picks it
 * (PEFTD_ROT_FORM) and the dense delta ΔW = diag(s)·W·Rotᵀ − W formed from the base's host
 * weight. Host memory only, any thread.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"
#include "kernels/cpu/quant_ref.h"

/* C = A·B for b×b doubles. */
static void mm(const double *A, const double *B, double *C, int b) {
    for (int i = 0; i < b; i++)
        for (int j = 0; j < b; j++) {
            double s = 0;
            for (int k = 0; k < b; k++) s += A[i * b + k] * B[k * b + j];
            C[i * b + j] = s;
        }
}

/* Gauss–Jordan with partial pivoting on (I + Q)ᵀ Rᵀ = (I − Q)ᵀ. */
int adapter__cayley(const double *Q, int b, double *R) {
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

/* PEFT's loop (OFTRotationModule._cayley_batch): R = I, then + 2Q, + 2Q², + 2Q³ … for
 * powers up to terms − 2, and + Q^(terms − 1) once (terms 1: I; 2: I + 2Q). */
int adapter__cayley_neumann(const double *Q, int b, int terms, double *R) {
    size_t bb = (size_t)b * b;
    double *P = malloc(bb * sizeof *P), *T = malloc(bb * sizeof *T);
    if (!P || !T) {
        free(P), free(T);
        return PEFTD_ENOMEM;
    }
    for (size_t k = 0; k < bb; k++) R[k] = 0;
    for (int i = 0; i < b; i++) R[i * b + i] = 1;
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
    free(P), free(T);
    return 0;
}

/* PEFT's block_butterfly_perm(n, nb, r) with n_butterfly_factor != 0: in every run of
 * s = n / nb positions, the chunks of r positions are reordered evens first, then odds
 * (idx[s0 + t] = s0 + order[t]); the op's g is its inverse (kernels.h: x·P·B·Pᵀ gathers x at
 * idx⁻¹ and scatters there). PEFT refuses nb·r·2 > n; the chunk count s / r must be whole. */
int adapter__butterfly_perm(int n, int nb, int r, int32_t *g, bool *identity) {
    if (n < 1 || nb < 1 || r < 1 || n % nb || (n / nb) % r || (int64_t)nb * r * 2 > n) return PEFTD_EINVAL;
    int s = n / nb, steps = s / r, k = 0, *order = malloc((size_t)s * sizeof *order);
    if (!order) return PEFTD_ENOMEM;
    for (int pos = 0; pos < steps; pos += 2)
        for (int t = 0; t < r; t++) order[k++] = pos * r + t;
    for (int pos = 1; pos < steps; pos += 2)
        for (int t = 0; t < r; t++) order[k++] = pos * r + t;
    *identity = true;
    for (int s0 = 0; s0 < n; s0 += s)
        for (int t = 0; t < s; t++) {
            g[s0 + order[t]] = s0 + t; /* idx[s0 + t] = s0 + order[t] */
            *identity &= order[t] == t;
        }
    free(order);
    return 0;
}

int adapter__rot_stage_perm(adapter__stage *s, int in, int block, bool shared, int perm_blocks, int perm_half,
                            adapter_rot_factor *f) {
    int rc = 0;
    int32_t *g = NULL;
    bool identity = true;
    if (block < 1 || in % block || perm_blocks < 0 || (shared && perm_blocks)) return PEFTD_EINVAL;
    if (perm_blocks) {
        if (!(g = malloc((size_t)in * sizeof *g))) return PEFTD_ENOMEM;
        if ((rc = adapter__butterfly_perm(in, perm_blocks, perm_half, g, &identity))) {
            free(g);
            return rc;
        }
    }
    f->block = block;
    f->shared = shared;
    f->perm_blocks = perm_blocks;
    f->perm_half = perm_blocks ? perm_half : 0;
    f->perm = NULL;
    if (g && !identity) return adapter__stage_push_ivec(s, g, (size_t)in, &f->perm);
    free(g);
    return 0;
}

int adapter__rot_stage_factor(adapter__stage *s, int in, int block, bool shared, int perm_blocks, int perm_half,
                              float *r, adapter_rot_factor *f) {
    int rc = adapter__rot_stage_perm(s, in, block, shared, perm_blocks, perm_half, f);
    if (rc) {
        free(r);
        return rc;
    }
    int64_t rows = shared ? block : in;
    if ((rc = adapter__stage_push(s, r, (size_t)rows * block * sizeof *r, true, &f->r, NULL))) return rc;
    f->r = (kmat){.data = NULL, .dtype = KDT_F32, .rows = rows, .cols = block};
    return 0;
}

adapter__rot_form adapter__rot_form_forced(void) {
    const char *e = getenv("PEFTD_ROT_FORM");
    return e && !strcmp(e, "factored") ? ADAPTER_ROT_FACTORED : e && !strcmp(e, "dense") ? ADAPTER_ROT_DENSE
                                                                                        : ADAPTER_ROT_AUTO;
}

bool adapter__rot_dense_wins(adapter__rot_form forced, double factored_bytes, int out, int in, const kmat *w) {
    if (forced != ADAPTER_ROT_AUTO) return forced == ADAPTER_ROT_DENSE;
    if (!w || !w->data || w->rows != out || w->cols != in) return false; /* no base weight to form it from */
    return 4.0 * out * in < factored_bytes;
}

/* dst = src·Mᵀ for one factor M (x·M gathers x at g, multiplies by the blocks, scatters at g):
 * dst[g(k·b + j)] = Σ_c src[g(k·b + c)]·R_k[j, c]. */
static void apply_t(const double *src, double *dst, int in, const adapter__rot_d *f) {
    int b = f->block;
    for (int k = 0; k < in / b; k++) {
        const double *Rk = f->R + (f->shared ? 0 : (size_t)k * b * b);
        int base = k * b;
        for (int j = 0; j < b; j++) {
            double s = 0;
            for (int cc = 0; cc < b; cc++) s += src[f->g ? f->g[base + cc] : base + cc] * Rk[(size_t)j * b + cc];
            dst[f->g ? f->g[base + j] : base + j] = s;
        }
    }
}

int adapter__rot_dense(adapter__ctx *c, const kmat *w, int out, int in, const adapter__rot_d *f, int n_f,
                       const float *s, kmat *delta, const char *key) {
    if (!w || !w->data || w->rows != out || w->cols != in)
        return adapter__fail(c, PEFTD_EINVAL, "the dense form of %s needs the base weight [%d, %d], which base %s "
                             "did not provide", key, out, in, c->base->name);
    double *u = malloc((size_t)in * sizeof *u), *v = malloc((size_t)in * sizeof *v);
    float *tmp = malloc((size_t)in * sizeof *tmp), *dw = malloc((size_t)out * in * sizeof *dw);
    if (!u || !v || !tmp || !dw) {
        free(u), free(v), free(tmp), free(dw);
        return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    }
    size_t row_bytes = kdtype_row_bytes(w->dtype, in);
    for (int j = 0; j < out; j++) { /* row j of W·Rotᵀ = W_j·f[n−1]ᵀ⋯f[0]ᵀ (x·Rot = x·f[0]⋯f[n−1]) */
        const unsigned char *row = (const unsigned char *)w->data + (size_t)j * row_bytes;
        if (kdtype_is_quant(w->dtype)) qref_dequantize(kdtype_ggml_type(w->dtype), row, tmp, in);
        else
            for (int i = 0; i < in; i++) tmp[i] = adapter__elem(row, w->dtype, (size_t)i);
        for (int i = 0; i < in; i++) u[i] = tmp[i];
        for (int k = n_f - 1; k >= 0; k--) {
            apply_t(u, v, in, &f[k]);
            double *t = u;
            u = v, v = t;
        }
        double sj = s ? s[j] : 1.0;
        for (int i = 0; i < in; i++) dw[(size_t)j * in + i] = (float)(sj * u[i] - (double)tmp[i]);
    }
    free(u), free(v), free(tmp);
    return adapter__stage_own_mat(c, dw, out, in, delta);
}

int adapter__rot_begin(adapter__ctx *c, const char *const *defaults, bool **sel) {
    adapter *a = c->a;
    int n = c->base->n_layers * AMOD_COUNT;
    *sel = calloc((size_t)n, sizeof **sel);
    a->rot = calloc((size_t)n, sizeof *a->rot);
    a->lora = calloc((size_t)n, sizeof *a->lora); /* the dense form's deltas */
    if (!*sel || !a->rot || !a->lora) {
        free(*sel), *sel = NULL;
        return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    }
    int rc = adapter__select_targets(c, defaults, defaults, *sel, NULL);
    if (rc) free(*sel), *sel = NULL;
    return rc;
}
