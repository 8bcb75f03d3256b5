/* adapter_store/adapter_peft_lyco.c — PEFT VeRA, LoHa and LoKr adapters, converted at import to
 * the LoRA form the forward pass already applies per segment through SGMV (kind ADAPTER_LORA),
 * or, module by module, to a dense delta (adapter.h adapter_lora.delta) when that form would
 * read fewer bytes. PEFT 0.21.2 semantics (tuners/vera, loha, lokr):
 *
 *   VeRA  y += λ_b ⊙ (B_s (λ_d ⊙ (A_s x)))   A_s = vera_A[:, :in], B_s = vera_B[:out, :], shared
 *         frozen projections saved once per adapter (save_projection: true; without them the
 *         matrices would have to be regenerated from PEFT's PRNG: refused), per module
 *         vera_lambda_d [r] and vera_lambda_b [out]; no other scale (PEFT applies none).
 *         LoRA form, rank r, scale 1: A = A_s, B = diag(λ_b)·B_s·diag(λ_d). A_s is the same
 *         bytes for every module of that input width and for every adapter made with the same
 *         PRNG key and shapes: it is held once per process (adapter_shared.h, content-keyed,
 *         refcounted), outside the adapter's block; only B (λs folded in) is per adapter.
 *         PEFTD_VERA_SHARED=0 copies A_s into every module instead (to measure the saving).
 *   LoHa  ΔW = ((w1a w1b) ⊙ (w2a w2b))·alpha/r. By the face-splitting identity
 *         (P1 Q1) ⊙ (P2 Q2) = (P1 •ᵣ P2)(Q1 •꜀ Q2): exact LoRA form of rank r1·r2 with
 *         A[(i,j), :] = w1b[i, :] ⊙ w2b[j, :] and B[:, (i,j)] = w1a[:, i] ⊙ w2a[:, j].
 *   LoKr  ΔW = kron(w1, w2)·alpha/r, w1 = lokr_w1 or lokr_w1_a·lokr_w1_b [a, c], w2 = lokr_w2 or
 *         lokr_w2_a·lokr_w2_b [b, d] (out = a·b, in = c·d). Each factor written as a product
 *         w = P·Q (its decomposition, else I·w or w·I, whichever is narrower), the mixed-product
 *         rule gives kron(P1 Q1, P2 Q2) = kron(P1, P2)·kron(Q1, Q2): LoRA form of rank r1·r2.
 *
 * The rule (choose_dense), every kind, per module: the LoRA form of rank R reads R·(in + out)
 * elements per step and costs as many multiply-adds per row, the dense delta in·out of each;
 * the dense delta is materialised (scale folded in, summed in double, rounded once) when
 * R·(in + out) > in·out, and applied per segment as y[rows] += t·(x[rows]·ΔWᵀ) (the backend's
 * matmul with beta 1; t = the request's adapter_scale). PEFTD_LYCO_FORM=lora|dense forces one
 * form for every module (read per load), except that a rank above max(in, out) or 4096 is
 * always dense. One log line per adapter load says what was chosen
 * and the elements each form reads. rank_dropout / module_dropout are training-only
 * (PEFT applies them only when training); conv layers (lokr_t2 / hada_t1: CP decomposition,
 * use_effective_conv2d) and VeRA's bias other than "none" are refused naming the field.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"
#include "lib/log.h"

#define PREFIX "base_model.model."

/* Which form a LyCORIS module takes (PEFTD_LYCO_FORM, read per load). */
typedef enum { FORM_AUTO, FORM_LORA, FORM_DENSE } lyco_form;

static lyco_form form_forced(void) {
    const char *e = getenv("PEFTD_LYCO_FORM");
    return e && !strcmp(e, "lora") ? FORM_LORA : e && !strcmp(e, "dense") ? FORM_DENSE : FORM_AUTO;
}

/* f32 copy of t as a malloc'd [rows, cols] (checked shape done by the caller). */
static int get_f32(adapter__ctx *c, const st_tensor *t, float **out) { return adapter__to_f32(c, t, out); }

/* C[m, n] = A[m, k]·B[k, n] in double, rounded to f32. */
static float *matmul_f32(const float *A, const float *B, int m, int k, int n) {
    float *C = malloc((size_t)m * n * sizeof *C);
    if (!C) return NULL;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int t = 0; t < k; t++) s += (double)A[(size_t)i * k + t] * B[(size_t)t * n + j];
            C[(size_t)i * n + j] = (float)s;
        }
    return C;
}

/* kron(X [p, q], Y [s, t]) = [p·s, q·t]. */
static float *kron_f32(const float *X, int p, int q, const float *Y, int s, int t) {
    float *K = malloc((size_t)p * s * q * t * sizeof *K);
    if (!K) return NULL;
    for (int i = 0; i < p; i++)
        for (int k = 0; k < s; k++)
            for (int j = 0; j < q; j++)
                for (int l = 0; l < t; l++)
                    K[((size_t)i * s + k) * ((size_t)q * t) + (size_t)j * t + l] = X[(size_t)i * q + j] * Y[(size_t)k * t + l];
    return K;
}

static float *identity_f32(int n) {
    float *I = calloc((size_t)n * n, sizeof *I);
    if (I)
        for (int i = 0; i < n; i++) I[(size_t)i * n + i] = 1.0f;
    return I;
}

/* Rows [row0, row0 + rows) of an owned f32 [total, cols] matrix, as a new owned matrix. */
static float *take_rows(float *m, int row0, int rows, int cols) {
    float *r = malloc((size_t)rows * cols * sizeof *r);
    if (r) memcpy(r, m + (size_t)row0 * cols, (size_t)rows * cols * sizeof *r);
    free(m);
    return r;
}

/* Stages the LoRA pair (A [rank, in], B rows [row0, row0 + o) of [fo, rank]) of module i;
 * takes ownership of fa and fb. */
static int stage_pair(adapter__ctx *c, int i, float *fa, float *fb, int rank, int in, int row0, int o, float scale) {
    adapter_lora *L = &c->a->lora[i];
    if (!fa || !fb || !(fb = take_rows(fb, row0, o, rank))) {
        free(fa);
        free(fb);
        return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    }
    int rc = adapter__stage_own_mat(c, fa, rank, in, &L->a);
    if (rc) {
        free(fb);
        return rc;
    }
    if ((rc = adapter__stage_own_mat(c, fb, o, rank, &L->b))) return rc;
    L->rank = rank;
    L->scale = scale;
    adapter__note_rank(c->a, rank);
    return 0;
}

/* The rule, per module: the LoRA form of rank R reads R·(in + out) elements per step (and
 * costs as many multiply-adds per row), the dense delta in·out: the LoRA form unless it is
 * wider, or what PEFTD_LYCO_FORM forces. A rank above max(in, out) or ADAPTER_MAX_LORA_RANK
 * (LoHa's r², VeRA's r on a narrow module) is never a LoRA pair, forced or not: it is outside
 * the bounds every LoRA module is held to (the SGMV workspace, adapter_blob_read). */
static bool choose_dense(lyco_form forced, int rank, int in, int out) {
    if (rank > ADAPTER_MAX_LORA_RANK || rank > (in > out ? in : out)) return true;
    return forced == FORM_DENSE || (forced == FORM_AUTO && (double)rank * (in + out) > (double)in * out);
}

/* What one load chose, for its log line: modules per form, and the f32 elements a step reads
 * with the chosen forms, with every module as LoRA pairs, with every module dense. */
typedef struct {
    int n_lora, n_dense;
    double chosen, all_lora, all_dense;
} lyco_tally;

static void tally_lora(lyco_tally *t, int rank, int in, int out) {
    t->n_lora++;
    t->chosen += (double)rank * (in + out);
    t->all_lora += (double)rank * (in + out);
    t->all_dense += (double)in * out;
}

static void tally_dense(lyco_tally *t, int rank, int in, int out) {
    t->n_dense++;
    t->chosen += (double)in * out;
    t->all_lora += (double)rank * (in + out);
    t->all_dense += (double)in * out;
}

/* One line per adapter load: the forms chosen and why, and the elements each would read. */
static void log_tally(adapter__ctx *c, const char *kind, const lyco_tally *t, lyco_form forced, bool shared) {
    LOGI("adapter %s: %s: %d module(s) as LoRA pairs, %d as dense deltas (%s); f32 elements read per step %.0f "
         "(all LoRA form %.0f, all dense %.0f)%s",
         c->dir, kind, t->n_lora, t->n_dense,
         forced == FORM_AUTO ? "rule: dense where rank*(in+out) > in*out" : "forced by PEFTD_LYCO_FORM", t->chosen,
         t->all_lora, t->all_dense,
         shared && t->n_lora ? "; projection slices vera_A[:, :in] held once per process (adapter_shared.h)" : "");
}

/* Stages module i as the dense delta scale·B·A [o, in] (B [o, R], A [R, in], taken and freed),
 * summed in double and rounded once. */
static int stage_dense(adapter__ctx *c, int i, float *A, float *B, int R, int in, int o, double scale,
                       lyco_tally *t) {
    float *K = A && B ? malloc((size_t)o * in * sizeof *K) : NULL;
    if (K)
        for (int y = 0; y < o; y++)
            for (int x = 0; x < in; x++) {
                double s = 0;
                for (int k = 0; k < R; k++) s += (double)B[(size_t)y * R + k] * A[(size_t)k * in + x];
                K[(size_t)y * in + x] = (float)(s * scale);
            }
    free(A), free(B);
    if (!K) return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    tally_dense(t, R, in, o);
    return adapter__stage_own_mat(c, K, o, in, &c->a->lora[i].delta);
}

/* Targets and the per-module key / shapes, as LoRA's. */
typedef struct {
    int layer, o, in, row0, fo;
    adapter_module m;
    char key[128];
} lyco_mod;

static void mod_of(adapter__ctx *c, int i, lyco_mod *md) {
    md->layer = i / AMOD_COUNT;
    md->m = (adapter_module)(i % AMOD_COUNT);
    adapter__module_key(c->base, md->layer, md->m, md->key, sizeof md->key);
    adapter_module_shape(c->base, md->m, &md->o, &md->in);
    adapter__fused_rows(c->base, md->m, &md->row0, &md->fo);
}

static int begin(adapter__ctx *c, const char *const *defaults, bool **sel) {
    adapter *a = c->a;
    int n = c->base->n_layers * AMOD_COUNT, rc;
    a->kind = ADAPTER_LORA;
    if ((rc = adapter__peft_check_common(c))) return rc;
    *sel = calloc((size_t)n, sizeof **sel);
    a->lora = calloc((size_t)n, sizeof *a->lora);
    if (!*sel || !a->lora) return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    return adapter__select_targets(c, defaults, defaults, *sel, NULL);
}

/* A config field this loader does not implement, when set to something but its default. */
static int refuse_set(adapter__ctx *c, const char *field) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->cfg, field);
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v) || (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 0) ||
        (cJSON_IsObject(v) && !v->child) || (cJSON_IsString(v) && !strcmp(v->valuestring, "none")))
        return 0;
    return adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: field '%s' is set: not served for %s", field,
                         cJSON_GetObjectItemCaseSensitive(c->cfg, "peft_type")->valuestring);
}

/* ---- VeRA ---- */

/* Whether VeRA's projection slices are shared (adapter_shared.h; PEFTD_VERA_SHARED=0: one
 * copy per module in the adapter's block, for measuring what sharing saves). */
static bool vera_shared(void) {
    const char *e = getenv("PEFTD_VERA_SHARED");
    return !(e && !strcmp(e, "0"));
}

int adapter__load_vera(adapter__ctx *c) {
    static const char *const defaults[] = {"q_proj", "v_proj", NULL};
    const adapter_base *b = c->base;
    int n = b->n_layers * AMOD_COUNT, r, rc;
    bool save_projection, *sel = NULL, share = vera_shared();
    float *fA = NULL, *fB = NULL;
    lyco_form forced = form_forced();
    lyco_tally tl = {0};
    if ((rc = begin(c, defaults, &sel))) goto out;
    if ((rc = adapter__json_int(c, c->cfg, "r", 256, 1, ADAPTER_MAX_LORA_RANK, &r)) ||
        (rc = adapter__json_bool(c, c->cfg, "save_projection", true, &save_projection)) ||
        (rc = refuse_set(c, "bias")))
        goto out;
    if (!save_projection) {
        rc = adapter__fail(c, PEFTD_EUNSUPPORTED,
                           "adapter_config.json: save_projection is false: the shared vera_A / vera_B are not in the "
                           "file (save the adapter with save_projection=True)");
        goto out;
    }
    const st_tensor *tA = st_find(c->st, "base_model.vera_A"), *tB = st_find(c->st, "base_model.vera_B");
    if (!tA || !tB || tA->ndim != 2 || tB->ndim != 2 || tA->shape[0] != r || tB->shape[1] != r) {
        rc = adapter__fail(c, PEFTD_EFORMAT, "%s: tensors 'base_model.vera_A' [%d, in] and 'base_model.vera_B' "
                           "[out, %d] are required", c->wname, r, r);
        goto out;
    }
    int max_in = (int)tA->shape[1], max_out = (int)tB->shape[0];
    if ((rc = adapter__expect(c, "base_model.vera_A", 2, r, max_in, &tA)) ||
        (rc = adapter__expect(c, "base_model.vera_B", 2, max_out, r, &tB)) || (rc = get_f32(c, tA, &fA)) ||
        (rc = get_f32(c, tB, &fB)))
        goto out;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!sel[i]) continue;
        lyco_mod md;
        mod_of(c, i, &md);
        char name[256];
        const st_tensor *td, *tb;
        float *ld = NULL, *lb = NULL;
        if (md.in > max_in || md.fo > max_out) {
            rc = adapter__fail(c, PEFTD_EINVAL, "%s: %s [%d, %d] does not fit the shared vera_A [%d, %d] / vera_B "
                               "[%d, %d]", c->wname, md.key, md.fo, md.in, r, max_in, max_out, r);
            break;
        }
        snprintf(name, sizeof name, PREFIX "%s.vera_lambda_d", md.key);
        if ((rc = adapter__expect(c, name, 1, r, 0, &td))) break;
        snprintf(name, sizeof name, PREFIX "%s.vera_lambda_b", md.key);
        if ((rc = adapter__expect(c, name, 1, md.fo, 0, &tb))) break;
        if ((rc = get_f32(c, td, &ld)) || (rc = get_f32(c, tb, &lb))) {
            free(ld);
            break;
        }
        /* A_s = vera_A[:, :in]; B' = diag(λ_b)·vera_B[:fo]·diag(λ_d) (this module's rows) */
        float *A = malloc((size_t)r * md.in * sizeof *A), *B = malloc((size_t)md.o * r * sizeof *B);
        if (A && B) {
            for (int k = 0; k < r; k++) memcpy(A + (size_t)k * md.in, fA + (size_t)k * max_in, (size_t)md.in * sizeof *A);
            for (int j = 0; j < md.o; j++)
                for (int k = 0; k < r; k++)
                    B[(size_t)j * r + k] = lb[md.row0 + j] * fB[(size_t)(md.row0 + j) * r + k] * ld[k];
        }
        free(ld);
        free(lb);
        if (!A || !B) {
            free(A), free(B);
            rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
            break;
        }
        adapter_lora *L = &c->a->lora[i];
        if (choose_dense(forced, r, md.in, md.o)) {
            rc = stage_dense(c, i, A, B, r, md.in, md.o, 1.0, &tl);
            continue;
        }
        tally_lora(&tl, r, md.in, md.o);
        if (!share) {
            rc = stage_pair(c, i, A, B, r, md.in, 0, md.o, 1.0f);
            continue;
        }
        adapter_shared *sh = NULL;
        rc = adapter__shared_get(A, r, md.in, &sh);
        free(A);
        if (rc) {
            free(B);
            rc = adapter__fail(c, rc, "out of memory");
            break;
        }
        if ((rc = adapter__attach_shared(c->a, sh, &L->a))) {
            free(B);
            rc = adapter__fail(c, rc, "out of memory");
            break;
        }
        if ((rc = adapter__stage_own_mat(c, B, md.o, r, &L->b))) break;
        L->rank = r;
        L->scale = 1.0f;
        adapter__note_rank(c->a, r);
    }
    if (rc == 0) log_tally(c, "VeRA", &tl, forced, share);
out:
    free(fA);
    free(fB);
    free(sel);
    return rc;
}

/* ---- LoHa ---- */

/* Module i dense: ΔW[y, x] = scale·(w1a w1b)[y, x]·(w2a w2b)[y, x] over this module's rows,
 * each product summed in double and ΔW rounded once (f = w1a [fo, r], w1b [r, in], w2a, w2b;
 * O(out·in·r), not the r² of the LoRA form). */
static int loha_dense(adapter__ctx *c, int i, float *const f[4], int r, const lyco_mod *md, double scale,
                      lyco_tally *t) {
    float *K = malloc((size_t)md->o * md->in * sizeof *K);
    if (!K) return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    for (int y = 0; y < md->o; y++) {
        const float *a1 = f[0] + (size_t)(md->row0 + y) * r, *a2 = f[2] + (size_t)(md->row0 + y) * r;
        for (int x = 0; x < md->in; x++) {
            double s1 = 0, s2 = 0;
            for (int k = 0; k < r; k++) {
                s1 += (double)a1[k] * f[1][(size_t)k * md->in + x];
                s2 += (double)a2[k] * f[3][(size_t)k * md->in + x];
            }
            K[(size_t)y * md->in + x] = (float)(s1 * s2 * scale);
        }
    }
    tally_dense(t, r * r, md->in, md->o);
    return adapter__stage_own_mat(c, K, md->o, md->in, &c->a->lora[i].delta);
}

/* The LoHa / LoKr loaders' common start: the selected modules, r and alpha; the conv-only
 * option refused. */
static int lyco_begin(adapter__ctx *c, const char *const *defaults, bool **sel, int *r, double *alpha) {
    int rc;
    if ((rc = begin(c, defaults, sel))) return rc;
    if ((rc = adapter__json_int(c, c->cfg, "r", 8, 1, ADAPTER_MAX_LORA_RANK, r)) ||
        (rc = adapter__json_num(c, c->cfg, "alpha", 8, ADAPTER_MAX_SCALE, alpha)))
        return rc;
    return refuse_set(c, "use_effective_conv2d");
}

/* Module i of a LoHa / LoKr adapter: its key and shape, its rank and alpha (rank_pattern /
 * alpha_pattern); refused when it carries the CP (conv) form's core tensor `cp`. */
static int lyco_module(adapter__ctx *c, int i, int r, double alpha, const char *cp, const char *kind, lyco_mod *md,
                       int *rr, double *al) {
    char name[256], r_field[300];
    mod_of(c, i, md);
    int rc = adapter__module_r_alpha(c, md->key, r, alpha, rr, al, r_field, sizeof r_field);
    if (rc) return rc;
    snprintf(name, sizeof name, PREFIX "%s.%s", md->key, cp);
    if (st_find(c->st, name))
        return adapter__fail(c, PEFTD_EUNSUPPORTED, "%s: '%s': %s's CP form (conv layers) is not served", c->wname, name,
                             kind);
    return 0;
}

int adapter__load_loha(adapter__ctx *c) {
    static const char *const defaults[] = {"q_proj", "v_proj", NULL}; /* PEFT has none for LoHa: as LoRA */
    const adapter_base *b = c->base;
    int n = b->n_layers * AMOD_COUNT, r, rc;
    double alpha;
    bool *sel = NULL;
    lyco_form forced = form_forced();
    lyco_tally tl = {0};
    if ((rc = lyco_begin(c, defaults, &sel, &r, &alpha))) goto out;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!sel[i]) continue;
        lyco_mod md;
        char name[256];
        int rr;
        double al;
        if ((rc = lyco_module(c, i, r, alpha, "hada_t1", "LoHa", &md, &rr, &al))) break;
        const st_tensor *t[4];
        static const char *const part[4] = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"};
        float *f[4] = {0};
        for (int k = 0; k < 4 && rc == 0; k++) {
            snprintf(name, sizeof name, PREFIX "%s.%s", md.key, part[k]);
            rc = adapter__expect(c, name, 2, k % 2 ? rr : md.fo, k % 2 ? md.in : rr, &t[k]);
            if (rc == 0) rc = get_f32(c, t[k], &f[k]);
        }
        int R = rr * rr; /* the LoRA form's rank */
        if (rc) {
            for (int k = 0; k < 4; k++) free(f[k]);
            break;
        }
        if (choose_dense(forced, R, md.in, md.o)) {
            rc = loha_dense(c, i, f, rr, &md, al / rr, &tl);
            for (int k = 0; k < 4; k++) free(f[k]);
            continue;
        }
        float *A = malloc((size_t)R * md.in * sizeof *A), *B = malloc((size_t)md.o * R * sizeof *B);
        if (A && B) { /* B: this module's rows [row0, row0 + o) of the (fused) output */
            for (int p = 0; p < rr; p++)
                for (int q = 0; q < rr; q++) {
                    int k = p * rr + q;
                    for (int x = 0; x < md.in; x++)
                        A[(size_t)k * md.in + x] = f[1][(size_t)p * md.in + x] * f[3][(size_t)q * md.in + x];
                    for (int y = 0; y < md.o; y++)
                        B[(size_t)y * R + k] = f[0][(size_t)(md.row0 + y) * rr + p] * f[2][(size_t)(md.row0 + y) * rr + q];
                }
        }
        for (int k = 0; k < 4; k++) free(f[k]);
        tally_lora(&tl, R, md.in, md.o);
        rc = stage_pair(c, i, A, B, R, md.in, 0, md.o, (float)(al / rr));
    }
    if (rc == 0) log_tally(c, "LoHa", &tl, forced, false);
out:
    free(sel);
    return rc;
}

/* ---- LoKr ---- */

/* One Kronecker factor w [rows, cols] as P [rows, rk]·Q [rk, cols] (owned, f32): from its
 * saved decomposition (<base>_a, <base>_b) or the full tensor (<base>) with an identity on the
 * narrower side. */
static int lokr_factor(adapter__ctx *c, const char *key, const char *base, int rows, int cols, float **P, float **Q,
                       int *rk) {
    char name[256], na[256], nb[256];
    const st_tensor *t, *ta, *tb;
    int rc;
    *P = *Q = NULL;
    snprintf(name, sizeof name, PREFIX "%s.%s", key, base);
    snprintf(na, sizeof na, PREFIX "%s.%s_a", key, base);
    snprintf(nb, sizeof nb, PREFIX "%s.%s_b", key, base);
    if (st_find(c->st, name)) {
        if ((rc = adapter__expect(c, name, 2, rows, cols, &t))) return rc;
        float *w;
        if ((rc = get_f32(c, t, &w))) return rc;
        if (rows <= cols) {
            *P = identity_f32(rows), *Q = w, *rk = rows;
        } else {
            *P = w, *Q = identity_f32(cols), *rk = cols;
        }
    } else {
        ta = st_find(c->st, na);
        if (!ta || ta->ndim != 2)
            return adapter__fail(c, PEFTD_EFORMAT, "%s: neither '%s' nor '%s' / '%s' is there", c->wname, name, na, nb);
        int k = (int)ta->shape[1];
        if ((rc = adapter__expect(c, na, 2, rows, k, &ta)) || (rc = adapter__expect(c, nb, 2, k, cols, &tb)) ||
            (rc = get_f32(c, ta, P)) || (rc = get_f32(c, tb, Q)))
            return rc;
        *rk = k;
    }
    return *P && *Q ? 0 : adapter__fail(c, PEFTD_ENOMEM, "out of memory");
}

int adapter__load_lokr(adapter__ctx *c) {
    static const char *const defaults[] = {"q_proj", "v_proj", NULL};
    const adapter_base *b = c->base;
    int n = b->n_layers * AMOD_COUNT, r, rc;
    double alpha;
    bool *sel = NULL;
    lyco_form forced = form_forced();
    lyco_tally tl = {0};
    if ((rc = lyco_begin(c, defaults, &sel, &r, &alpha))) goto out;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!sel[i]) continue;
        lyco_mod md;
        char name[256];
        int rr, r1 = 0, r2 = 0;
        double al;
        if ((rc = lyco_module(c, i, r, alpha, "lokr_t2", "LoKr", &md, &rr, &al))) break;
        /* the factors' shapes: w1 [a, c] from lokr_w1 or lokr_w1_a [a, k], lokr_w1_b [k, c] */
        const st_tensor *t1 = st_find(c->st, (snprintf(name, sizeof name, PREFIX "%s.lokr_w1", md.key), name));
        const st_tensor *t1a = st_find(c->st, (snprintf(name, sizeof name, PREFIX "%s.lokr_w1_a", md.key), name));
        const st_tensor *t1b = st_find(c->st, (snprintf(name, sizeof name, PREFIX "%s.lokr_w1_b", md.key), name));
        int64_t A_ = t1 && t1->ndim == 2 ? t1->shape[0] : t1a && t1a->ndim == 2 ? t1a->shape[0] : 0;
        int64_t C_ = t1 && t1->ndim == 2 ? t1->shape[1] : t1b && t1b->ndim == 2 ? t1b->shape[1] : 0;
        if (A_ <= 0 || C_ <= 0 || md.fo % A_ || md.in % C_) {
            rc = adapter__fail(c, PEFTD_EFORMAT, "%s: %s: lokr_w1 (or lokr_w1_a / lokr_w1_b) missing or not a "
                               "factor of [%d, %d]", c->wname, md.key, md.fo, md.in);
            break;
        }
        int a = (int)A_, cc = (int)C_, bb = md.fo / a, d = md.in / cc;
        float *P1, *Q1, *P2, *Q2;
        if ((rc = lokr_factor(c, md.key, "lokr_w1", a, cc, &P1, &Q1, &r1))) break;
        if ((rc = lokr_factor(c, md.key, "lokr_w2", bb, d, &P2, &Q2, &r2))) {
            free(P1), free(Q1);
            break;
        }
        int R = r1 * r2;
        float scale = (float)(al / rr);
        if (!choose_dense(forced, R, md.in, md.o)) {
            float *Bf = kron_f32(P1, a, r1, P2, bb, r2), *Af = kron_f32(Q1, r1, cc, Q2, r2, d);
            rc = stage_pair(c, i, Af, Bf, R, md.in, md.row0, md.o, scale);
            tally_lora(&tl, R, md.in, md.o);
        } else { /* scale·kron(w1, w2), this module's rows */
            float *w1 = matmul_f32(P1, Q1, a, r1, cc), *w2 = matmul_f32(P2, Q2, bb, r2, d);
            float *K = w1 && w2 ? kron_f32(w1, a, cc, w2, bb, d) : NULL;
            free(w1), free(w2);
            if (K && (K = take_rows(K, md.row0, md.o, md.in))) {
                for (size_t k = 0; k < (size_t)md.o * md.in; k++) K[k] *= scale;
                rc = adapter__stage_own_mat(c, K, md.o, md.in, &c->a->lora[i].delta);
            } else {
                free(K);
                rc = adapter__fail(c, PEFTD_ENOMEM, "out of memory");
            }
            tally_dense(&tl, R, md.in, md.o);
        }
        free(P1), free(Q1), free(P2), free(Q2);
    }
    if (rc == 0) log_tally(c, "LoKr", &tl, forced, false);
out:
    free(sel);
    return rc;
}
