/* kernels/cpu/attention.c — causal attention of one layer over a ragged batch,
 * reading K/V from the paged cache (semantics: kattn_args in kernels.h).
 *
 * One task per (query row, KV head): the task handles the n_heads/n_kv_heads
 * query heads that share that KV head, so their K/V rows come from cache after
 * the first head. Per query head: exact two-pass softmax in f32 — scores
 * s_j = scale * q·k_j into per-thread scratch, then w_j = exp(s_j - max)
 * (vector exp, simd.h) and out = Σ w_j v_j / Σ w_j. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/simd.h"

typedef struct {
    kcpu_backend *cb;
    const kattn_args *a;
    int kv_dim;
} attn_ctx;

/* Sequence owning query row t: the last s with q_start[s] <= t (empty sequences
 * share their start with the next one, so "last" skips them). */
static int attn_seq_of_row(const int32_t *q_start, int n_seqs, int32_t t) {
    int lo = 0, hi = n_seqs - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (q_start[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

static inline const float *attn_slot(const attn_ctx *c, const float *cache, const int32_t *btab, int slot,
                                     int kvh) {
    const kattn_args *a = c->a;
    int64_t blk = btab[slot / a->block_size], off = slot % a->block_size;
    return cache + (blk * a->block_size + off) * c->kv_dim + (int64_t)kvh * a->head_dim;
}

static void attn_task(void *vc, int task, int thread) {
    const attn_ctx *c = vc;
    const kattn_args *a = c->a;
    int32_t t = a->q_start[0] + task / a->n_kv_heads;
    int kvh = task % a->n_kv_heads;
    int s = attn_seq_of_row(a->q_start, a->n_seqs, t);
    int n_q = a->q_start[s + 1] - a->q_start[s];
    int p = a->kv_len[s] - n_q + (t - a->q_start[s]); /* this query's slot */
    const int32_t *btab = a->block_table + (int64_t)s * a->max_blocks;
    int hd = a->head_dim, group = a->n_heads / a->n_kv_heads;
    float *sc = kcpu__scratch(c->cb, thread);

    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        const float *q = a->q + (int64_t)t * a->n_heads * hd + (int64_t)h * hd;
        float *out = a->out + (int64_t)t * a->n_heads * hd + (int64_t)h * hd;
        float mx = -INFINITY;
        for (int j = 0; j <= p; j++) {
            sc[j] = a->scale * kv_dot(q, attn_slot(c, a->k_cache, btab, j, kvh), hd);
            if (sc[j] > mx) mx = sc[j];
        }
        kv_f32 vmx = kv_set1(mx), vsum = kv_zero();
        int j = 0;
        for (; j + KV_W <= p + 1; j += KV_W) {
            kv_f32 e = kv_exp(kv_sub(kv_load(sc + j), vmx));
            kv_store(sc + j, e);
            vsum = kv_add(vsum, e);
        }
        float sum = kv_hsum(vsum);
        for (; j <= p; j++) {
            sc[j] = expf(sc[j] - mx);
            sum += sc[j];
        }
        memset(out, 0, (size_t)hd * sizeof *out);
        for (int j = 0; j <= p; j++) kv_scale_axpy(out, 1.0f, sc[j], attn_slot(c, a->v_cache, btab, j, kvh), hd);
        kv_scale_axpy(out, 1.0f / sum, 0.0f, out, hd);
    }
}

int kcpu__attention(kbackend *kb, const kattn_args *a) {
    if (!a || a->n_seqs < 0) return PEFTD_EINVAL;
    if (a->n_seqs == 0) return 0;
    if (!a->q_start || !a->kv_len || !a->block_table || !a->q || !a->k_cache || !a->v_cache || !a->out)
        return PEFTD_EINVAL;
    if (a->n_heads <= 0 || a->n_kv_heads <= 0 || a->n_heads % a->n_kv_heads || a->head_dim <= 0 ||
        a->block_size <= 0 || a->max_blocks < 0 || !isfinite(a->scale))
        return PEFTD_EINVAL;
    if ((int64_t)a->n_kv_heads * a->head_dim > INT32_MAX) return PEFTD_EUNSUPPORTED;
    if (a->q_start[0] < 0) return PEFTD_EINVAL;
    int32_t max_kv = 0;
    double work = 0;
    int64_t cap = (int64_t)a->max_blocks * a->block_size;
    for (int s = 0; s < a->n_seqs; s++) {
        int32_t n_q = a->q_start[s + 1] - a->q_start[s], kv = a->kv_len[s];
        if (n_q < 0) return PEFTD_EINVAL;
        if (kv < n_q || kv > cap) return PEFTD_ERANGE;
        if (n_q == 0) continue;
        const int32_t *btab = a->block_table + (int64_t)s * a->max_blocks;
        for (int b = 0; b < (kv + a->block_size - 1) / a->block_size; b++)
            if (btab[b] < 0) return PEFTD_ERANGE;
        if (kv > max_kv) max_kv = kv;
        work += (double)n_q * kv * a->n_heads * a->head_dim * 2;
    }
    int64_t rows = a->q_start[a->n_seqs] - a->q_start[0];
    if (rows == 0) return 0;
    if (rows * a->n_kv_heads > INT32_MAX) return PEFTD_EUNSUPPORTED;
    kcpu_backend *cb = kcpu__impl(kb);
    int rc = kcpu__scratch_reserve(cb, (size_t)max_kv);
    if (rc) return rc;
    attn_ctx c = {.cb = cb, .a = a, .kv_dim = a->n_kv_heads * a->head_dim};
    kcpu__parallel(cb, (int)(rows * a->n_kv_heads), work, attn_task, &c);
    return 0;
}
