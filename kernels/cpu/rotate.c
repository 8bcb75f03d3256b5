/* kernels/cpu/rotate.c — seg_rotate on the CPU (contract: ksegrot / krot_factor in
 * kernels/kernels.h): the per-segment block-diagonal rotations of OFT / BOFT applied to the
 * activations, x·M_0·M_1⋯ per row.
 *
 * One row at a time: a factor's output block k is Σ_j v[g(kb + j)]·R_k[j, :] (the b inputs
 * gathered once), accumulated as vectors along c (row j of R_k is contiguous) with j ascending
 * — scalar FMAs, the same rounding, for columns past the last whole vector — then scattered
 * to g(kb + c). Chained factors ping-pong between two rows of the thread's scratch; the last
 * one writes y. So a row costs Σ_f dim·b_f multiply-adds and reads its factors' blocks
 * (dim·b floats, b² with a shared block) — from cache for every row after the first of a
 * segment. The operation sequence of a (row, column) depends on the row's values and its
 * factors only: the chunking into work items and the thread count never change it
 * (batch-invariant, bit-exact).
 */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/simd.h"

/* Rows per work item: ~64 KiB of activations (as seg_scale), at least one. */
#define RT_CHUNK 16384

typedef struct {
    const float *x;
    float *y;
    int64_t dim;
    const ksegrot *s;
    kcpu_backend *cb;
    int64_t rows_per_task, r_begin, r_end;
} rt_ctx;

/* dst = src·M for one factor (dst != src); tmp: 2·b floats of scratch. Per block, the b inputs
 * are gathered once; an output is fmaf(v_j, R_k[j, c], s) over j ascending from s = 0 — as a
 * vector lane (kv_fmadd) for whole KV_W-column chunks, as a scalar fmaf for the rest and for
 * blocks narrower than a vector (a masked vector store read back by scalar loads stalls store
 * forwarding): one rounding per step either way, so the lanes and the scalars agree bit for bit. */
static void rt_factor(const float *src, float *dst, int64_t dim, const krot_factor *f, float *tmp) {
    const int b = f->block;
    const int32_t *g = f->perm;
    const int64_t nb = dim / b;
    float *xin = tmp, *acc = tmp + b;
    for (int64_t k = 0; k < nb; k++) {
        const float *R = f->r + (f->shared ? 0 : k * (int64_t)b * b);
        const int64_t base = k * b;
        const float *v = src + base;
        if (g) {
            for (int j = 0; j < b; j++) xin[j] = src[g[base + j]];
            v = xin;
        }
        float *out = g ? acc : dst + base;
        int c = 0;
        for (; c + KV_W <= b; c += KV_W) {
            kv_f32 s = kv_zero();
            for (int j = 0; j < b; j++) s = kv_fmadd(kv_set1(v[j]), kv_load(R + (int64_t)j * b + c), s);
            kv_store(out + c, s);
        }
        for (; c < b; c++) {
            float s = 0.0f;
            for (int j = 0; j < b; j++) s = fmaf(v[j], R[(int64_t)j * b + c], s);
            out[c] = s;
        }
        if (g)
            for (int cc = 0; cc < b; cc++) dst[g[base + cc]] = acc[cc];
    }
}

static void rt_task(void *vc, int task, int thread) {
    const rt_ctx *c = vc;
    const ksegrot *s = c->s;
    int64_t r0 = c->r_begin + (int64_t)task * c->rows_per_task;
    int64_t r1 = r0 + c->rows_per_task < c->r_end ? r0 + c->rows_per_task : c->r_end;
    float *sc = kcpu__scratch(c->cb, thread), *buf[2] = {sc, sc + c->dim}, *tmp = sc + 2 * c->dim;
    int lo = 0, hi = s->n_segs; /* first segment ending after r0 */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (s->seg_start[mid + 1] <= r0) lo = mid + 1;
        else hi = mid;
    }
    for (int i = lo; i < s->n_segs && s->seg_start[i] < r1; i++) {
        int64_t a = s->seg_start[i] > r0 ? s->seg_start[i] : r0;
        int64_t e = s->seg_start[i + 1] < r1 ? s->seg_start[i + 1] : r1;
        int F = s->n_factors[i];
        for (int64_t r = a; r < e; r++) {
            const float *src = c->x + r * c->dim;
            float *yr = c->y + r * c->dim;
            if (F == 0) {
                memcpy(yr, src, (size_t)c->dim * sizeof *yr);
                continue;
            }
            for (int f = 0; f < F; f++) {
                float *dst = f == F - 1 ? yr : buf[f & 1];
                rt_factor(src, dst, c->dim, &s->factors[i][f], tmp);
                src = dst;
            }
        }
    }
}

/* The host-visible checks: every factor's block divides dim, perms stay inside [0, dim). */
static int rt_check(const ksegrot *s, int dim) {
    for (int i = 0; i < s->n_segs; i++) {
        if (s->seg_start[i + 1] < s->seg_start[i]) return PEFTD_EINVAL;
        int F = s->n_factors[i];
        if (F < 0 || F > KROT_MAX_FACTORS || (F > 0 && !s->factors[i])) return PEFTD_EINVAL;
        for (int f = 0; f < F; f++) {
            const krot_factor *k = &s->factors[i][f];
            if (!k->r || k->block < 1 || k->block > s->max_block || dim % k->block) return PEFTD_EINVAL;
            for (int j = 0; k->perm && j < dim; j++)
                if (k->perm[j] < 0 || k->perm[j] >= dim) return PEFTD_EINVAL;
        }
    }
    return 0;
}

int kcpu__seg_rotate(kbackend *kb, const float *x, int dim, const ksegrot *s, float *y) {
    if (dim <= 0 || !s || s->n_segs < 0) return PEFTD_EINVAL;
    if (s->n_segs == 0) return 0;
    if (!s->seg_start || !s->n_factors || !s->factors || s->seg_start[0] < 0 || s->max_block < 1 || !x || !y)
        return PEFTD_EINVAL;
    int rc = rt_check(s, dim);
    if (rc) return rc;
    int64_t rows = (int64_t)s->seg_start[s->n_segs] - s->seg_start[0];
    if (rows <= 0) return 0;
    const float *x0 = x + (int64_t)s->seg_start[0] * dim;
    const float *y0 = y + (int64_t)s->seg_start[0] * dim;
    if (x0 < y0 + rows * dim && y0 < x0 + rows * dim) return PEFTD_EINVAL; /* overlapping rows */
    kcpu_backend *cb = kcpu__impl(kb);
    if (kcpu__scratch_reserve(cb, 2 * (size_t)dim + 2 * (size_t)s->max_block) != 0) return PEFTD_ENOMEM;
    rt_ctx c = {.x = x, .y = y, .dim = dim,
                .s = s, .cb = cb, .r_begin = s->seg_start[0], .r_end = s->seg_start[s->n_segs]};
    c.rows_per_task = RT_CHUNK / dim > 0 ? RT_CHUNK / dim : 1;
    int n_tasks = (int)((rows + c.rows_per_task - 1) / c.rows_per_task);
    double work = 0;
    for (int i = 0; i < s->n_segs; i++)
        for (int f = 0; f < s->n_factors[i]; f++)
            work += (double)(s->seg_start[i + 1] - s->seg_start[i]) * dim * s->factors[i][f].block;
    kcpu__parallel(cb, n_tasks, work > (double)rows * dim ? work : (double)rows * dim, rt_task, &c);
    return 0;
}
