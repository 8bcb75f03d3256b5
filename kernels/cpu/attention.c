/* kernels/cpu/attention.c — causal attention of one layer over a ragged batch,
 * reading K/V from the paged cache (semantics: kattn_args in kernels.h; a
 * query at slot p attends to slots [max(kv_start, p - window + 1), p], kv_start = 0
 * when absent, window = 0 for full attention).
 *
 * One task per (query row, KV head): the task handles the n_heads/n_kv_heads
 * query heads that share that KV head together, so each K and V row is read
 * once per task. Exact two-pass softmax in f32: scores s_j = scale * q·k_j
 * (soft-capped when a->softcap > 0) into per-thread scratch, then w_j = exp(s_j - max) (vector exp, simd.h) and
 * out = Σ w_j v_j / Σ w_j. K/V are f32 or f16 (a->kv_dtype): f16 rows are widened to f32 as
 * they are loaded, every other operation the same; each task body is instantiated for
 * both (the bool H, a compile-time constant in each). */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/simd.h"

/* Row tasks prefetch K/V rows this many slots ahead: a slot's row of one KV head
 * (head_dim floats, 256 B at head_dim 64) sits kv_dim floats from the next
 * slot's, a stride the hardware prefetcher follows poorly. Measured (decode,
 * 32 seqs × 1024 slots, 32/8 heads, head_dim 64): none 24 ms, 4 slots 15 ms,
 * 16-32 slots 14 ms.
 * (Tasks over all KV heads of a row, reading each slot's whole K/V row
 * sequentially with a slot-outer P·V, measured the same for decode and 15%
 * slower for a 512-token prefill, 1 thread: 48 vs 41 ms.)
 * The streams run ahead into L2, not L1 (the first rows of a task go to L1: needed
 * at once): the L1's few miss buffers held a strided stream to ~7 GB/s. The
 * (row, KV head) tasks prefetch ATTN_HEAD_PF_BYTES of their own pieces ahead (16
 * slots of f32 at head_dim 64, 32 of f16). Measured from DRAM, 2 threads, the 110M
 * shape (12 KV heads, head_dim 64): one decode row over 928 slots f32 282 -> 157-174
 * us a layer, f16 181 -> 84-91 us (16 slots into L1 before; 8-96 slots into L1 or L2
 * tried); row tasks, 32 rows over 400 slots f32 2650 -> 2160 us, f16 1570 -> 1430. */
#ifndef ATTN_PF_SLOTS
#define ATTN_PF_SLOTS 16
#endif
#ifndef ATTN_HEAD_PF_BYTES
#define ATTN_HEAD_PF_BYTES 4096
#endif

/* Largest n_heads / n_kv_heads (per-task inverse sums live on the stack);
 * current GQA models use ≤ 16 (e.g. 64 heads / 4 KV heads). */
#define ATTN_MAX_GROUP 64

/* Row tasks (attn_row_task) when no sequence has more KV slots than this. */
#ifndef ATTN_ROW_MAX_SLOTS
#define ATTN_ROW_MAX_SLOTS 512
#endif
/* ... and the model has at most this many query heads (inverse sums on the stack). */
#define ATTN_ROW_MAX_HEADS 256

typedef struct {
    kcpu_backend *cb;
    const kattn_args *a;
    int kv_dim;
    int32_t max_slots; /* row stride of the per-thread score scratch */
    int bs_shift;      /* log2(block_size) when it is a power of two, else -1 */
    int by_row;        /* tasks are query rows (all KV heads), not (row, KV head) pairs */
} attn_ctx;

/* The score of dot = q·k: scale * dot, soft-capped when softcap > 0 (tanh(s / c) * c: f32
 * divide and multiply, tanh in double rounded once). */
static inline float attn_score(const kattn_args *a, float dot) {
    float s = a->scale * dot;
    if (a->softcap > 0.0f) s = (float)tanh((double)(s / a->softcap)) * a->softcap;
    return s;
}

/* Scores of one query head against K rows k[0..n), 1 <= n <= KV_W: s[i] = attn_score(q·k_i),
 * each dot exactly kv_dot's (its lanes, summed by kv_hsum_each: the same bits as one kv_dot at
 * a time, whichever rows share the block), KV_W rows per horizontal sum instead of one. */
static inline __attribute__((always_inline)) void attn_scores(bool H, const kattn_args *a, const float *q,
                                                              const void *const *k, int n, int hd, float *s) {
    kv_f32 acc[KV_W];
#pragma GCC unroll 16
    for (int i = 0; i < KV_W; i++)
        acc[i] = i >= n ? kv_zero() : kv__dot_lanes(H, q, k[i], hd);
    kv_f32 dots = kv_hsum_each(acc);
    if (n == KV_W && !(a->softcap > 0.0f)) { /* attn_score's multiply, KV_W at once */
        kv_store(s, kv_mul(kv_set1(a->scale), dots));
        return;
    }
    float t[KV_W];
    kv_store(t, dots);
    for (int i = 0; i < n; i++) s[i] = attn_score(a, t[i]);
}

/* First slot attended by the query at slot p of a sequence whose first slot is k0. */
static inline int attn_first_slot(const kattn_args *a, int k0, int p) {
    return a->window > 0 && p - a->window + 1 > k0 ? p - a->window + 1 : k0;
}

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

/* KV head kvh's row at a sequence's slot (H: f16 elements, else f32). */
static inline const void *attn_slot(bool H, const attn_ctx *c, const void *cache, const int32_t *btab, int slot,
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
    return (const char *)cache + ((blk * a->block_size + off) * c->kv_dim + (int64_t)kvh * a->head_dim) * (H ? 2 : 4);
}

/* Prefetches the n elements at p into L1 (a task's first rows). */
static inline void attn_prefetch_row(bool H, const void *p, int n) {
    for (int i = 0; i < n * (H ? 2 : 4); i += 64) __builtin_prefetch((const char *)p + i, 0, 3);
}

/* The same into L2 (the streams ahead of use). */
static inline void attn_prefetch_l2(bool H, const void *p, int n) {
    for (int i = 0; i < n * (H ? 2 : 4); i += 64) __builtin_prefetch((const char *)p + i, 0, 2);
}

/* How many slots ahead a (row, KV head) task prefetches its head_dim-element pieces. */
static inline int attn_head_pf_slots(bool H, int hd) {
    int n = ATTN_HEAD_PF_BYTES / (hd * (H ? 2 : 4));
    return n < 4 ? 4 : n > 64 ? 64 : n;
}

/* Heads and head_dim vectors per register tile of the P·V pass: 2 × 4 = 8
 * accumulators + 4 V vectors + 2 weights; two heads share each V load. */
#define ATTN_PV_HEADS 2
#define ATTN_PV_VECS 4

/* out[g*hd + v*KV_W + i] = Σ_j w[g*ld + j] · V_j[d0 + v*KV_W + i] for g < NG,
 * v < NV (the last vector has `last` lanes). NG, NV are compile-time constants
 * in each instantiation, so the accumulators stay in registers (no store ->
 * load chain through `out` per slot). */
static inline __attribute__((always_inline)) void attn_pv(bool H, int NG, int NV, const attn_ctx *c, const int32_t *btab,
                                                          int kvh, int j0, int n_slots, const float *w, size_t ld,
                                                          float *out, int hd, int d0, int last, int pfd) {
    const kattn_args *a = c->a;
    kv_f32 acc[ATTN_PV_HEADS][ATTN_PV_VECS];
#pragma GCC unroll 2
    for (int g = 0; g < NG; g++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[g][v] = kv_zero();
    for (int j = 0; j < n_slots; j++) {
        if (j + pfd < n_slots && d0 == 0) attn_prefetch_l2(H, attn_slot(H, c, a->v_cache, btab, j0 + j + pfd, kvh), hd);
        const void *vr = attn_slot(H, c, a->v_cache, btab, j0 + j, kvh);
        kv_f32 vv[ATTN_PV_VECS];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            vv[v] = v == NV - 1 && last != KV_W ? kv_load_any_part(H, vr, d0 + v * KV_W, last)
                                                : kv_load_any(H, vr, d0 + v * KV_W);
#pragma GCC unroll 2
        for (int g = 0; g < NG; g++) {
            kv_f32 wj = kv_set1(w[g * ld + j]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[g][v] = kv_fmadd(wj, vv[v], acc[g][v]);
        }
    }
#pragma GCC unroll 2
    for (int g = 0; g < NG; g++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            float *o = out + (int64_t)g * hd + v * KV_W;
            if (v == NV - 1 && last != KV_W) kv_store_part(o, acc[g][v], last);
            else kv_store(o, acc[g][v]);
        }
}

typedef void (*attn_pv_fn)(const attn_ctx *c, const int32_t *btab, int kvh, int j0, int n_slots, const float *w, size_t ld,
                           float *out, int hd, int d0, int last, int pfd);
#define ATTN_PV_DEF(T, H, NG, NV)                                                                                 \
    static void attn_pv_##T##_##NG##_##NV(const attn_ctx *c, const int32_t *btab, int kvh, int j0, int n_slots,   \
                                          const float *w, size_t ld, float *out, int hd, int d0, int last,        \
                                          int pfd) {                                                              \
        attn_pv(H, NG, NV, c, btab, kvh, j0, n_slots, w, ld, out, hd, d0, last, pfd);                             \
    }
#define ATTN_PV_DEFS(T, H)                                                                                        \
    ATTN_PV_DEF(T, H, 1, 1) ATTN_PV_DEF(T, H, 1, 2) ATTN_PV_DEF(T, H, 1, 3) ATTN_PV_DEF(T, H, 1, 4)               \
    ATTN_PV_DEF(T, H, 2, 1) ATTN_PV_DEF(T, H, 2, 2) ATTN_PV_DEF(T, H, 2, 3) ATTN_PV_DEF(T, H, 2, 4)
ATTN_PV_DEFS(f32, false)
ATTN_PV_DEFS(f16, true)
/* [H][heads - 1][vectors - 1] */
static const attn_pv_fn attn_pv_fns[2][ATTN_PV_HEADS][ATTN_PV_VECS] = {
    {{attn_pv_f32_1_1, attn_pv_f32_1_2, attn_pv_f32_1_3, attn_pv_f32_1_4},
     {attn_pv_f32_2_1, attn_pv_f32_2_2, attn_pv_f32_2_3, attn_pv_f32_2_4}},
    {{attn_pv_f16_1_1, attn_pv_f16_1_2, attn_pv_f16_1_3, attn_pv_f16_1_4},
     {attn_pv_f16_2_1, attn_pv_f16_2_2, attn_pv_f16_2_3, attn_pv_f16_2_4}},
};

/* w[j] = exp(w[j] - max) in place; returns 1 / Σ_j w[j]. */
static float attn_softmax(float *w, int n_slots) {
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
    return 1.0f / sum;
}

/* One query row over all its KV heads (decode batches: few slots per sequence). A slot's
 * K/V rows for all heads are contiguous (kv_dim floats), and a block's slots are
 * contiguous rows, so this reads each block as one stream instead of n_kv_heads
 * head_dim-float pieces at a kv_dim stride (which measured latency-bound: ~12 GB/s).
 * Every value is computed by exactly the operations attn_task uses — the same kv_dot
 * per (head, slot), the same softmax, and per output element the same chain
 * acc = fma(w_j, v_j, acc) from acc = 0 in slot order, then the same final scaling —
 * only the loop nest differs (accumulators in `out`, which stays in L1, instead of
 * registers). So results are bit-identical to the per-head path, and the choice of
 * path (per dispatch) never depends on or changes a row's numbers. */
static inline __attribute__((always_inline)) void attn_row_body(bool H, void *vc, int task, int thread) {
    const attn_ctx *c = vc;
    const kattn_args *a = c->a;
    int32_t t = a->q_start[0] + task;
    int s = attn_seq_of_row(a->q_start, a->n_seqs, t);
    int n_q = a->q_start[s + 1] - a->q_start[s];
    int p = a->kv_len[s] - n_q + (t - a->q_start[s]);
    int j0 = attn_first_slot(a, a->kv_start ? a->kv_start[s] : 0, p);
    int n_slots = p + 1 - j0;
    const int32_t *btab = a->block_table + (int64_t)s * a->max_blocks;
    int hd = a->head_dim, NH = a->n_heads, KVH = a->n_kv_heads, group = NH / KVH, kv_dim = c->kv_dim;
    const float *q = a->q + (int64_t)t * NH * hd;
    float *out = a->out + (int64_t)t * NH * hd;
    float *sc = kcpu__scratch(c->cb, thread); /* [n_heads][n_slots] */
    size_t ld = (size_t)c->max_slots;
    /* The first ATTN_PF_SLOTS K rows (whole rows: kv_dim elements) into L1, needed at once;
     * the loop below streams the rest ATTN_PF_SLOTS ahead into L2. */
    for (int j = 0; j < n_slots && j < ATTN_PF_SLOTS; j++) {
        attn_prefetch_row(H, attn_slot(H, c, a->k_cache, btab, j0 + j, 0), kv_dim);
        if (n_slots <= ATTN_PF_SLOTS) attn_prefetch_row(H, attn_slot(H, c, a->v_cache, btab, j0 + j, 0), kv_dim);
    }
    for (int j = 0; j < n_slots; j += KV_W) { /* KV_W slots at a time (attn_scores) */
        int nb = n_slots - j < KV_W ? n_slots - j : KV_W;
        const char *kr[KV_W];
        for (int i = 0; i < nb; i++) {
            int jj = j + i;
            if (jj + ATTN_PF_SLOTS < n_slots)
                attn_prefetch_l2(H, attn_slot(H, c, a->k_cache, btab, j0 + jj + ATTN_PF_SLOTS, 0), kv_dim);
            else if (n_slots > ATTN_PF_SLOTS) /* then the first V rows, in order */
                attn_prefetch_row(H, attn_slot(H, c, a->v_cache, btab, j0 + jj + ATTN_PF_SLOTS - n_slots, 0), kv_dim);
            kr[i] = attn_slot(H, c, a->k_cache, btab, j0 + jj, 0);
        }
        for (int kvh = 0; kvh < KVH; kvh++) {
            const void *kh[KV_W];
            for (int i = 0; i < nb; i++) kh[i] = kr[i] + (int64_t)kvh * hd * (H ? 2 : 4);
            for (int g = 0; g < group; g++) {
                int h = kvh * group + g;
                attn_scores(H, a, q + (int64_t)h * hd, kh, nb, hd, sc + h * ld + j);
            }
        }
    }
    float inv[ATTN_ROW_MAX_HEADS];
    for (int h = 0; h < NH; h++) inv[h] = attn_softmax(sc + h * ld, n_slots);
    for (int64_t i = 0; i < (int64_t)NH * hd; i++) out[i] = 0.0f;
    int full = hd / KV_W * KV_W, last = hd - full;
    for (int j = 0; j < n_slots; j++) {
        if (j + ATTN_PF_SLOTS < n_slots)
            attn_prefetch_l2(H, attn_slot(H, c, a->v_cache, btab, j0 + j + ATTN_PF_SLOTS, 0), kv_dim);
        const void *vrow = attn_slot(H, c, a->v_cache, btab, j0 + j, 0);
        for (int kvh = 0; kvh < KVH; kvh++) {
            const int64_t vr = (int64_t)kvh * hd; /* this head's first element in vrow */
            for (int g = 0; g < group; g++) {
                int h = kvh * group + g;
                kv_f32 wj = kv_set1(sc[h * ld + j]);
                float *o = out + (int64_t)h * hd;
                int d = 0;
                for (; d < full; d += KV_W)
                    kv_store(o + d, kv_fmadd(wj, kv_load_any(H, vrow, vr + d), kv_load(o + d)));
                if (last)
                    kv_store_part(o + d, kv_fmadd(wj, kv_load_any_part(H, vrow, vr + d, last), kv_load_part(o + d, last)),
                                  last);
            }
        }
    }
    for (int h = 0; h < NH; h++)
        kv_scale_axpy(out + (int64_t)h * hd, inv[h], 0.0f, out + (int64_t)h * hd, hd);
}
static void attn_row_task_f32(void *vc, int task, int thread) { attn_row_body(false, vc, task, thread); }
static void attn_row_task_f16(void *vc, int task, int thread) { attn_row_body(true, vc, task, thread); }

static inline __attribute__((always_inline)) void attn_head_body(bool H, void *vc, int task, int thread) {
    const attn_ctx *c = vc;
    const kattn_args *a = c->a;
    int32_t t = a->q_start[0] + task / a->n_kv_heads;
    int kvh = task % a->n_kv_heads;
    int s = attn_seq_of_row(a->q_start, a->n_seqs, t);
    int n_q = a->q_start[s + 1] - a->q_start[s];
    int p = a->kv_len[s] - n_q + (t - a->q_start[s]); /* this query's slot */
    int j0 = attn_first_slot(a, a->kv_start ? a->kv_start[s] : 0, p); /* first slot attended */
    int n_slots = p + 1 - j0;
    const int32_t *btab = a->block_table + (int64_t)s * a->max_blocks;
    int hd = a->head_dim, group = a->n_heads / a->n_kv_heads;
    const float *q = a->q + (int64_t)t * a->n_heads * hd + (int64_t)kvh * group * hd;
    float *out = a->out + (int64_t)t * a->n_heads * hd + (int64_t)kvh * group * hd;
    float *sc = kcpu__scratch(c->cb, thread); /* [group][n_slots] scores, then weights */
    size_t ld = (size_t)c->max_slots;

    /* The first pfd K and V rows are requested together up front (the loops below
     * prefetch pfd ahead only from there on): a decode task reads only ~40 slots, so
     * otherwise its first K rows and V rows would be demand misses one after another. */
    const int pfd = attn_head_pf_slots(H, hd);
    for (int j = 0; j < n_slots && j < pfd; j++) { /* into L1: the first needed at once */
        attn_prefetch_row(H, attn_slot(H, c, a->k_cache, btab, j0 + j, kvh), hd);
        attn_prefetch_row(H, attn_slot(H, c, a->v_cache, btab, j0 + j, kvh), hd);
    }
    /* Scores: each K row is read once for all `group` query heads. */
    for (int j = 0; j < n_slots; j += KV_W) { /* KV_W slots at a time (attn_scores) */
        int nb = n_slots - j < KV_W ? n_slots - j : KV_W;
        const void *k[KV_W];
        for (int i = 0; i < nb; i++) {
            if (j + i + pfd < n_slots) attn_prefetch_l2(H, attn_slot(H, c, a->k_cache, btab, j0 + j + i + pfd, kvh), hd);
            k[i] = attn_slot(H, c, a->k_cache, btab, j0 + j + i, kvh);
        }
        for (int g = 0; g < group; g++) attn_scores(H, a, q + (int64_t)g * hd, k, nb, hd, sc + (size_t)g * ld + j);
    }
    /* Softmax weights (unnormalised) and their sums. */
    float inv_sum[ATTN_MAX_GROUP];
    for (int g = 0; g < group; g++) inv_sum[g] = attn_softmax(sc + g * ld, n_slots);
    /* out_g = Σ_j w_gj v_j / Σ_j w_gj, accumulated in registers: ATTN_PV_HEADS
     * heads × up to ATTN_PV_VECS vectors of head_dim per pass over the slots. */
    for (int g0 = 0; g0 < group;) {
        int ng = group - g0 >= ATTN_PV_HEADS ? ATTN_PV_HEADS : 1;
        for (int d0 = 0; d0 < hd; d0 += ATTN_PV_VECS * KV_W) {
            int left = hd - d0, nv = (left + KV_W - 1) / KV_W;
            if (nv > ATTN_PV_VECS) nv = ATTN_PV_VECS;
            int last = left >= nv * KV_W ? KV_W : left - (nv - 1) * KV_W;
            attn_pv_fns[H][ng - 1][nv - 1](c, btab, kvh, j0, n_slots, sc + (size_t)g0 * ld, ld, out + (int64_t)g0 * hd + d0,
                                         hd, d0, last, pfd);
        }
        g0 += ng;
    }
    for (int g = 0; g < group; g++) kv_scale_axpy(out + (int64_t)g * hd, inv_sum[g], 0.0f, out + (int64_t)g * hd, hd);
}
static void attn_task_f32(void *vc, int task, int thread) { attn_head_body(false, vc, task, thread); }
static void attn_task_f16(void *vc, int task, int thread) { attn_head_body(true, vc, task, thread); }

int kcpu__attention(kbackend *kb, const kattn_args *a) {
    if (!a || a->n_seqs < 0) return PEFTD_EINVAL;
    if (a->n_seqs == 0) return 0;
    if (!a->q_start || !a->kv_len || !a->block_table || !a->q || !a->k_cache || !a->v_cache || !a->out)
        return PEFTD_EINVAL;
    if (a->n_heads <= 0 || a->n_kv_heads <= 0 || a->n_heads % a->n_kv_heads || a->head_dim <= 0 ||
        a->block_size <= 0 || a->max_blocks < 0 || !isfinite(a->scale) || a->window < 0 ||
        !(a->softcap >= 0.0f) || !isfinite(a->softcap))
        return PEFTD_EINVAL;
    if (a->kv_dtype != KDT_F32 && a->kv_dtype != KDT_F16) return PEFTD_EUNSUPPORTED;
    if ((int64_t)a->n_kv_heads * a->head_dim > INT32_MAX || a->n_heads / a->n_kv_heads > ATTN_MAX_GROUP)
        return PEFTD_EUNSUPPORTED;
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
     * apart would map the group's scores of one slot to the same L1 set. */
    int32_t ld = (max_kv + 15) / 16 * 16;
    if ((ld / 16) % 2 == 0) ld += 16;
    /* Row tasks for short contexts (decode batches; see attn_row_task): their scores
     * for all heads fit the scratch, and there are enough rows to spread over the pool.
     * Long contexts and prefill keep (row, KV head) tasks, measured faster there. Both
     * give bit-identical results. */
    int by_row = max_kv <= ATTN_ROW_MAX_SLOTS && rows >= 2 * cb->n_threads && a->n_heads <= ATTN_ROW_MAX_HEADS;
    int rc = kcpu__scratch_reserve(cb, (size_t)ld * (size_t)(by_row ? a->n_heads : a->n_heads / a->n_kv_heads));
    if (rc) return rc;
    attn_ctx c = {.cb = cb, .a = a, .kv_dim = a->n_kv_heads * a->head_dim, .max_slots = ld, .bs_shift = -1,
                  .by_row = by_row};
    if ((a->block_size & (a->block_size - 1)) == 0)
        for (c.bs_shift = 0; (1 << c.bs_shift) < a->block_size; c.bs_shift++) {}
    /* Shares (threadpool.h): a thread's (row, KV head) tasks are adjacent heads, so its reads
     * of a slot's K/V row are adjacent too. Measured against the plain dispatch, 2 threads:
     * kernels_bench decode 32 seqs x 1024 slots 10.5-15.7 -> 8.8-9.3 ms, prefill 512 the same
     * (25-26 ms); 110M Q4_K_M single-stream decode (alternated by round in one process) +2-4%
     * a token at 264 positions, +8% at 520. */
    const bool f16 = a->kv_dtype == KDT_F16;
    if (by_row) kcpu__parallel(cb, (int)rows, work, f16 ? attn_row_task_f16 : attn_row_task_f32, &c);
    else kcpu__parallel_shares(cb, (int)(rows * a->n_kv_heads), work, f16 ? attn_task_f16 : attn_task_f32, &c);
    return 0;
}
