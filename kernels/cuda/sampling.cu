/* kernels/cuda/sampling.cu — kbackend_ops.sample on the CUDA backend: one step's token ids
 * chosen on the device (greedy / temperature / top-k / top-p from the caller's uniform
 * draws), so only n_rows ids (and logprobs when asked) come back instead of n_rows x vocab
 * logits. The math is kernels/cpu/sample_ref.h's (the host sampler's):
 *   k_sample_rows (one block per row): argmax with the CPU's tie rule (lowest id among equal
 *     maxima, NaN never wins); greedy rows end there. Otherwise p_i = (float)exp((x_i - max)
 *     / T) in double into a scratch row, each thread over one contiguous chunk in index order;
 *     a non-truncating row then finds u·sum in the cumulative sum: the chunk sums' block
 *     scan picks the chunk, whose thread scans it in index order. logprob: log-sum-exp in
 *     double by a block reduction.
 *   truncating rows (top_k / top_p; only when any_truncated): CUB's segmented radix sort
 *     (stable, descending: ties keep ascending id = the CPU's qsort order), then
 *     k_sample_truncated (one thread per row) walks the sorted row exactly as the CPU does,
 *     sequentially, in the same order and precision.
 * Differences from the CPU: the full-row sums (the non-truncating draw's u·sum, the
 * logsumexp) add the same double terms in a tree instead of left to right (relative
 * difference ~1e-16: a draw changes token only when it lands within that of a boundary),
 * and exp is CUDA's double exp (<= 1 ulp in double, almost always the same float after
 * rounding). Cost note: k_sample_truncated is sequential per row (up to 2·vocab double adds);
 * a parallel scan of the sorted row is the next step if top-p rows show in profiles. */
#include <cub/device/device_segmented_radix_sort.cuh>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/sampling.h"

#define KS_THREADS 1024

__device__ __forceinline__ bool ks_truncates(int k, float p, int V) { return (k > 0 && k < V) || (p > 0.0f && p < 1.0f); }

/* (value, index) of the CPU's argmax: strictly greater wins, equal values keep the lower
 * index; a thread starts from (x[0], 0), so NaN never wins unless x[0] is NaN (then 0). */
__device__ void ks_better(float &bv, int &bi, float v, int i) {
    if (v > bv || (v == bv && i < bi)) {
        bv = v;
        bi = i;
    }
}

__global__ void k_sample_rows(const float *logits, int ld, int V, const float *temp, const int32_t *top_k,
                              const float *top_p, const double *u, int32_t *ids, float *logprob, float *probs,
                              int any_truncated, int *err) {
    __shared__ float s_v[KS_THREADS / 32];
    __shared__ int s_i[KS_THREADS / 32];
    __shared__ double s_d[KS_THREADS];
    __shared__ int s_pick, s_amax;
    const int r = blockIdx.x, t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const float *x = logits + (size_t)r * (size_t)ld;

    /* argmax */
    float bv = x[0];
    int bi = 0;
    for (int i = t; i < V; i += KS_THREADS) {
        float v = x[i];
        if (v > bv) { /* strided order: a later index of this thread only on strictly greater */
            bv = v;
            bi = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        ks_better(bv, bi, ov, oi);
    }
    if (lane == 0) {
        s_v[warp] = bv;
        s_i[warp] = bi;
    }
    if (t == 0) s_pick = -1;
    __syncthreads();
    if (warp == 0) {
        bv = s_v[lane];
        bi = s_i[lane];
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            ks_better(bv, bi, ov, oi);
        }
        if (lane == 0) s_amax = bi;
    }
    __syncthreads();
    const int amax = s_amax;
    const float mx = x[amax];
    const float T = temp[r];
    const bool trunc = T > 0.0f && ks_truncates(top_k[r], top_p[r], V);
    if (trunc && !any_truncated && t == 0) kcuda_flag(err, KCUDA_ERR_RANGE);

    /* logprob needs log-sum-exp over the raw row (the chosen id comes later) */
    double lse = 0;
    if (logprob) {
        double s = 0;
        for (int i = t; i < V; i += KS_THREADS) s += exp((double)x[i] - mx);
        s_d[t] = s;
        __syncthreads();
        for (int w = KS_THREADS / 2; w > 0; w >>= 1) {
            if (t < w) s_d[t] += s_d[t + w];
            __syncthreads();
        }
        lse = mx + log(s_d[0]);
        __syncthreads();
    }

    int chosen = amax;
    if (T > 0.0f) {
        /* probabilities, thread t over the contiguous chunk [c0, c1) in index order */
        const int C = (V + KS_THREADS - 1) / KS_THREADS;
        const int c0 = min(t * C, V), c1 = min(c0 + C, V);
        float *p = probs + (size_t)r * (size_t)V;
        const double inv_t = 1.0 / T;
        double cs = 0;
        for (int i = c0; i < c1; i++) {
            float v = (float)exp(((double)x[i] - mx) * inv_t);
            p[i] = v;
            cs += v;
        }
        if (!trunc) {
            /* inclusive scan of the chunk sums over the threads (Hillis-Steele in shared) */
            s_d[t] = cs;
            __syncthreads();
            for (int w = 1; w < KS_THREADS; w <<= 1) {
                double add = t >= w ? s_d[t - w] : 0.0;
                __syncthreads();
                s_d[t] += add;
                __syncthreads();
            }
            const double incl = s_d[t], total = s_d[KS_THREADS - 1];
            const double target = u[r] * total;
            if (c1 > c0 && target < incl && (t == 0 || target >= s_d[t - 1])) {
                double acc = t == 0 ? 0.0 : s_d[t - 1];
                int id = c1 - 1; /* rounding inside the chunk: its last id */
                for (int i = c0; i < c1; i++) {
                    acc += p[i];
                    if (target < acc) {
                        id = i;
                        break;
                    }
                }
                s_pick = id;
            }
            __syncthreads();
            chosen = s_pick >= 0 ? s_pick : amax; /* rounding at the tail: the CPU's argmax */
        } else {
            chosen = -1; /* k_sample_truncated picks it */
        }
    }
    if (t == 0) {
        ids[r] = chosen;
        if (logprob && chosen >= 0) logprob[r] = (float)((double)x[chosen] - lse);
        else if (logprob) logprob[r] = (float)lse; /* for k_sample_truncated (f32: see there) */
    }
}

/* Segment offsets and the id payload of the sort: off[r] = r·V, vals[r·V + i] = i. */
__global__ void k_sample_iota(int n_rows, int V, int *off, int32_t *vals) {
    size_t n = (size_t)n_rows * (size_t)V;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        vals[i] = (int32_t)(i % (size_t)V);
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r <= n_rows; r += gridDim.x * blockDim.x) off[r] = r * V;
}

/* Truncating rows, one thread each, exactly the CPU's walk: the full sum in index order,
 * the top_k cut, the smallest prefix reaching top_p·sum, the kept sum, the draw. */
__global__ void k_sample_truncated(int n_rows, int V, const float *logits, int ld, const float *temp,
                                   const int32_t *top_k, const float *top_p, const double *u, const float *probs,
                                   const float *sorted_p, const int32_t *sorted_id, int32_t *ids, float *logprob) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_rows || !(temp[r] > 0.0f) || !ks_truncates(top_k[r], top_p[r], V)) return;
    const float *p = probs + (size_t)r * V, *sp = sorted_p + (size_t)r * V;
    const int32_t *sid = sorted_id + (size_t)r * V;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += p[i];
    int n = V;
    if (top_k[r] > 0 && top_k[r] < n) n = top_k[r];
    if (top_p[r] > 0.0f && top_p[r] < 1.0f) {
        double kept = 0, lim = top_p[r] * sum;
        int j = 0;
        while (j < n) {
            kept += sp[j++];
            if (kept >= lim) break;
        }
        n = j;
    }
    sum = 0;
    for (int j = 0; j < n; j++) sum += sp[j];
    double target = u[r] * sum, acc = 0;
    int32_t id = sid[n - 1];
    for (int j = 0; j < n; j++) {
        acc += sp[j];
        if (target < acc) {
            id = sid[j];
            break;
        }
    }
    ids[r] = id;
    if (logprob) logprob[r] = (float)((double)logits[(size_t)r * ld + id] - (double)logprob[r]);
}

static size_t ks_align(size_t b) { return (b + 255) & ~(size_t)255; }

extern "C" int kcuda__sample(kbackend *kb, const ksample_args *a) {
    if (!a || a->n_rows < 0 || a->vocab < 1 || a->ld < a->vocab) return PEFTD_EINVAL;
    if (a->n_rows == 0) return 0;
    if (!a->logits || !a->temperature || !a->top_k || !a->top_p || !a->u || !a->ids) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    const size_t rv = (size_t)a->n_rows * (size_t)a->vocab;
    if (rv > (size_t)INT32_MAX) return PEFTD_EINVAL; /* CUB's segment offsets are int */
    /* scratch: probs [rv] f32; when sorting also sorted probs, ids in/out, offsets, CUB temp */
    size_t cub_bytes = 0;
    if (a->any_truncated)
        CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
            (void *)NULL, cub_bytes, (const float *)NULL, (float *)NULL, (const int32_t *)NULL, (int32_t *)NULL,
            (int)rv, a->n_rows, (const int *)NULL, (const int *)NULL, 0, 32, cb->stream));
    size_t o_probs = 0, o_sp = ks_align(rv * 4), o_vin = o_sp + ks_align(rv * 4), o_vout = o_vin + ks_align(rv * 4),
           o_off = o_vout + ks_align(rv * 4), o_cub = o_off + ks_align(((size_t)a->n_rows + 1) * 4);
    size_t need = a->any_truncated ? o_cub + ks_align(cub_bytes) : ks_align(rv * 4);
    rc = kcuda__scratch_reserve(cb, need);
    if (rc) return rc;
    char *ws = (char *)cb->scratch;
    float *probs = (float *)(ws + o_probs);
    k_sample_rows<<<a->n_rows, KS_THREADS, 0, cb->stream>>>(a->logits, a->ld, a->vocab, a->temperature, a->top_k,
                                                             a->top_p, a->u, a->ids, a->logprob, probs,
                                                             a->any_truncated ? 1 : 0, cb->d_err);
    KCUDA_LAUNCH_CHECK();
    if (!a->any_truncated) return 0;
    float *sp = (float *)(ws + o_sp);
    int32_t *vin = (int32_t *)(ws + o_vin), *vout = (int32_t *)(ws + o_vout);
    int *off = (int *)(ws + o_off);
    const unsigned iota_blocks = kcuda__blocks((int64_t)rv, 256) < 4096 ? kcuda__blocks((int64_t)rv, 256) : 4096;
    k_sample_iota<<<iota_blocks, 256, 0, cb->stream>>>(a->n_rows, a->vocab, off, vin);
    KCUDA_LAUNCH_CHECK();
    CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(ws + o_cub, cub_bytes, probs, sp, vin, vout, (int)rv,
                                                                  a->n_rows, off, off + 1, 0, 32, cb->stream));
    k_sample_truncated<<<kcuda__blocks(a->n_rows, 64), 64, 0, cb->stream>>>(
        a->n_rows, a->vocab, a->logits, a->ld, a->temperature, a->top_k, a->top_p, a->u, probs, sp, vout, a->ids,
        a->logprob);
    KCUDA_LAUNCH_CHECK();
    return 0;
}
