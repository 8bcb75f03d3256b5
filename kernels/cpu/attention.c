/* kernels/cpu/attention.c — causal attention of one layer over a ragged batch,
 * reading K/V from the paged cache (semantics: kattn_args in kernels.h; a
 * query at slot p attends to slots [kv_start, p], kv_start = 0 when absent).
 *
 * One task per (query row, range of KV heads): all KV heads when there are
 * enough rows, fewer when the batch is small. A task walks the slots once for
 * K and once for V, reading each slot's contiguous K/V row segment of its KV
 * heads (a sequential stream within a block) for all the query heads that
 * share them (GQA). Exact two-pass softmax in f32: scores s_j = scale * q·k_j
 * into per-thread scratch, then w_j = exp(s_j - max) / Σ (vector exp, simd.h)
 * and out = Σ w_j v_j. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/simd.h"

/* K/V rows are prefetched this many slots ahead: a task reads a segment of
 * each slot's row, kv_dim floats apart, and slots of consecutive blocks are
 * not adjacent; the hardware prefetcher follows that poorly. Measured (decode,
 * 32 seqs × 1024 slots, 32/8 heads, head_dim 64, one KV head per task): none
 * 24 ms, 4 slots 15 ms, 16-32 slots 14 ms. */
#define ATTN_PF_SLOTS 16

/* Tasks wanted per thread: query rows are split further, by ranges of KV
 * heads, only when rows alone give fewer (e.g. a single decode sequence). */
#define ATTN_TASKS_PER_THREAD 4

typedef struct {
    kcpu_backend *cb;
    const kattn_args *a;
    int kv_dim;
    int32_t max_slots; /* row stride of the per-thread score scratch */
    int kv_per_task;   /* KV heads per task */
    int n_ranges;      /* tasks per query row: ceil(n_kv_heads / kv_per_task) */
    int bs_shift;      /* log2(block_size) when it is a power of two, else -1 */
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
    int64_t blk, off;
    if (c->bs_shift >= 0) { /* the usual case: no integer division per slot */
        blk = btab[slot >> c->bs_shift];
        off = slot & (a->block_size - 1);
    } else {
        blk = btab[slot / a->block_size];
        off = slot % a->block_size;
    }
    return cache + (blk * a->block_size + off) * c->kv_dim + (int64_t)kvh * a->head_dim;
}

/* Prefetches n floats at p (into L1) ahead of use, one 64-byte line at a time. */
static inline void attn_prefetch(const float *p, int n) {
    for (int i = 0; i < n; i += 16) __builtin_prefetch(p + i, 0, 3);
}

static void attn_task(void *vc, int task, int thread) {
    const attn_ctx *c = vc;
    const kattn_args *a = c->a;
    int32_t t = a->q_start[0] + task / c->n_ranges;
    int k0 = task % c->n_ranges * c->kv_per_task; /* KV heads [k0, k1) */
    int k1 = k0 + c->kv_per_task < a->n_kv_heads ? k0 + c->kv_per_task : a->n_kv_heads;
    int s = attn_seq_of_row(a->q_start, a->n_seqs, t);
    int n_q = a->q_start[s + 1] - a->q_start[s];
    int p = a->kv_len[s] - n_q + (t - a->q_start[s]); /* this query's slot */
    int j0 = a->kv_start ? a->kv_start[s] : 0;       /* first slot attended */
    int n_slots = p + 1 - j0;
    const int32_t *btab = a->block_table + (int64_t)s * a->max_blocks;
    int hd = a->head_dim, group = a->n_heads / a->n_kv_heads, nh = (k1 - k0) * group;
    /* The task's query heads are contiguous: local head l = (kvh - k0) * group + g. */
    const float *q = a->q + (int64_t)t * a->n_heads * hd + (int64_t)k0 * group * hd;
    float *out = a->out + (int64_t)t * a->n_heads * hd + (int64_t)k0 * group * hd;
    float *sc = kcpu__scratch(c->cb, thread); /* [nh][max_slots]: scores, then weights */
    size_t ld = (size_t)c->max_slots;
    int span = (k1 - k0) * hd; /* contiguous floats of one slot's row read by this task */

    /* Scores: each slot's K row (all the task's KV heads) is read once. */
    for (int j = 0; j < n_slots; j++) {
        if (j + ATTN_PF_SLOTS < n_slots) attn_prefetch(attn_slot(c, a->k_cache, btab, j0 + j + ATTN_PF_SLOTS, k0), span);
        const float *k = attn_slot(c, a->k_cache, btab, j0 + j, k0);
        for (int l = 0; l < nh; l++)
            sc[l * ld + j] = a->scale * kv_dot(q + (int64_t)l * hd, k + (int64_t)(l / group) * hd, hd);
    }
    /* Softmax weights (unnormalised), then out_l = Σ_j w_lj v_j / Σ_j w_lj. */
    for (int l = 0; l < nh; l++) {
        float *w = sc + l * ld;
        kv_f32 vmx = kv_set1(-INFINITY);
        int j = 0;
        for (; j + KV_W <= n_slots; j += KV_W) vmx = kv_max(vmx, kv_load(w + j));
        float mx = kv_hmax(vmx);
        for (; j < n_slots; j++) mx = w[j] > mx ? w[j] : mx;
        vmx = kv_set1(mx);
        kv_f32 vsum = kv_zero();
        for (j = 0; j + KV_W <= n_slots; j += KV_W) {
            kv_f32 e = kv_exp(kv_sub(kv_load(w + j), vmx));
            kv_store(w + j, e);
            vsum = kv_add(vsum, e);
        }
        float sum = kv_hsum(vsum);
        for (; j < n_slots; j++) {
            w[j] = expf(w[j] - mx);
            sum += w[j];
        }
        /* Fold 1/Σ into the weights: out needs no final pass. */
        float inv = 1.0f / sum;
        kv_f32 vinv = kv_set1(inv);
        for (j = 0; j + KV_W <= n_slots; j += KV_W) kv_store(w + j, kv_mul(kv_load(w + j), vinv));
        for (; j < n_slots; j++) w[j] *= inv;
    }
    /* Slot-outer: each V row is read once, and consecutive updates of one output
     * vector are nh heads apart, so they do not serialise on store -> load. */
    memset(out, 0, (size_t)nh * hd * sizeof *out);
    for (int j = 0; j < n_slots; j++) {
        if (j + ATTN_PF_SLOTS < n_slots) attn_prefetch(attn_slot(c, a->v_cache, btab, j0 + j + ATTN_PF_SLOTS, k0), span);
        const float *v = attn_slot(c, a->v_cache, btab, j0 + j, k0);
        for (int l = 0; l < nh; l++) kv_axpy(out + (int64_t)l * hd, sc[l * ld + j], v + (int64_t)(l / group) * hd, hd);
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
    if ((int64_t)a->n_heads * a->head_dim > INT32_MAX) return PEFTD_EUNSUPPORTED;
    if (a->q_start[0] < 0) return PEFTD_EINVAL;
    int32_t max_kv = 0;
    double work = 0;
    int64_t cap = (int64_t)a->max_blocks * a->block_size;
    for (int s = 0; s < a->n_seqs; s++) {
        int32_t n_q = a->q_start[s + 1] - a->q_start[s], kv = a->kv_len[s];
        if (n_q < 0) return PEFTD_EINVAL;
        if (kv < n_q || kv > cap) return PEFTD_ERANGE;
        if (n_q == 0) continue;
        /* Every query must keep at least one slot: kv_start <= its first slot. */
        int32_t k0 = a->kv_start ? a->kv_start[s] : 0;
        if (k0 < 0 || k0 > kv - n_q) return PEFTD_ERANGE;
        const int32_t *btab = a->block_table + (int64_t)s * a->max_blocks;
        for (int b = k0 / a->block_size; b < (kv + a->block_size - 1) / a->block_size; b++)
            if (btab[b] < 0) return PEFTD_ERANGE;
        if (kv > max_kv) max_kv = kv;
        work += (double)n_q * kv * a->n_heads * a->head_dim * 2;
    }
    int64_t rows = a->q_start[a->n_seqs] - a->q_start[0];
    if (rows == 0) return 0;
    if (rows * a->n_kv_heads > INT32_MAX) return PEFTD_EUNSUPPORTED;
    kcpu_backend *cb = kcpu__impl(kb);
    /* Score rows padded to an odd number of cache lines: rows a power of two
     * apart would map the nh scores of one slot to the same L1 set. */
    int32_t ld = (max_kv + 15) / 16 * 16;
    if ((ld / 16) % 2 == 0) ld += 16;
    attn_ctx c = {.cb = cb, .a = a, .kv_dim = a->n_kv_heads * a->head_dim, .max_slots = ld, .bs_shift = -1};
    int64_t want = (int64_t)cb->n_threads * ATTN_TASKS_PER_THREAD;
    int64_t ranges = rows >= want ? 1 : (want + rows - 1) / rows;
    if (ranges > a->n_kv_heads) ranges = a->n_kv_heads;
    c.kv_per_task = (int)((a->n_kv_heads + ranges - 1) / ranges);
    c.n_ranges = (a->n_kv_heads + c.kv_per_task - 1) / c.kv_per_task;
    size_t heads = (size_t)c.kv_per_task * (size_t)(a->n_heads / a->n_kv_heads);
    int rc = kcpu__scratch_reserve(cb, heads * (size_t)ld);
    if (rc) return rc;
    if ((a->block_size & (a->block_size - 1)) == 0)
        for (c.bs_shift = 0; (1 << c.bs_shift) < a->block_size; c.bs_shift++) {}
    kcpu__parallel(cb, (int)(rows * c.n_ranges), work, attn_task, &c);
    return 0;
}
