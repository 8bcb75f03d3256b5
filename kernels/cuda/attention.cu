/* kernels/cuda/attention.cu — causal attention of one layer over a ragged batch,
 * reading K/V from the paged cache (contract: kattn_args in kernels/kernels.h; a query
 * at slot p attends to slots [max(kv_start, p - window + 1), p], window 0 = full).
 *
 * The number of query rows T = q_start[n_seqs] - q_start[0] lives in device memory, so
 * the grid is a fixed, device-filling set of blocks that stride over the work items
 * (query row, query head); each block reads T itself. One item = one block of
 * ATT_WARPS warps: warp w takes slots j0+w, j0+w+ATT_WARPS, ... and keeps an online
 * softmax (running max m, sum l, f32 accumulator of head_dim spread over the lanes);
 * the warps' partial states are merged in shared memory at the end. All math is f32:
 * scores scale*q·k (soft-capped tanh(s/c)*c when a.softcap > 0), weights expf(s - m). Against the CPU's exact two-pass softmax the
 * difference is a few ulp of the output (rescaling by expf(m_old - m_new)).
 *
 * Arguments that live in device memory (q_start, kv_len, kv_start, block_table) are
 * checked by the kernel as the CPU checks them on the host; an item that finds them
 * out of range writes nothing and raises the error flag (PEFTD_ERANGE at the next
 * synchronize/download). */
#include <math.h>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_internal.h"

/* 8 warps share an item's slots: a decode step's items (one per head) walk their slots in
 * turn, one dependent K load per slot, so the chain is slots / ATT_WARPS long. */
#define ATT_WARPS 8
/* head_dim up to 32 * ATT_MAX_PER_LANE = 256 (largest of current Llama-family models). */
#define ATT_MAX_PER_LANE 8

/* Element d of KV head kvh at slot `off` of physical block `blk` (layout: kernels.h). */
__device__ __forceinline__ const float *att_row(const float *cache, int64_t blk, int off, int kvh, int block_size,
                                                int n_kv_heads, int head_dim) {
    return cache + ((blk * block_size + off) * n_kv_heads + kvh) * (int64_t)head_dim;
}

template <int PL>
__global__ void __launch_bounds__(ATT_WARPS * 32) k_attention(kattn_args a, int *err) {
    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][32 * PL];
    __shared__ int s_ok;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int hd = a.head_dim, group = a.n_heads / a.n_kv_heads;
    const int32_t t0 = a.q_start[0];
    const int64_t rows = (int64_t)a.q_start[a.n_seqs] - t0;
    const int64_t items = rows * a.n_heads;
    const int64_t cap = (int64_t)a.max_blocks * a.block_size;
    for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
        int32_t t = t0 + (int32_t)(item / a.n_heads);
        int h = (int)(item % a.n_heads), kvh = h / group;
        /* Sequence of row t: the last s with q_start[s] <= t. */
        int lo = 0, hi = a.n_seqs - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (a.q_start[mid] <= t) lo = mid;
            else hi = mid - 1;
        }
        int s = lo;
        int32_t n_q = a.q_start[s + 1] - a.q_start[s], kv = a.kv_len[s];
        int32_t j0 = a.kv_start ? a.kv_start[s] : 0;
        int32_t p = kv - n_q + (t - a.q_start[s]);
        const int32_t *btab = a.block_table + (int64_t)s * a.max_blocks;
        /* Validation (the CPU's host checks): every thread computes the same verdict. */
        bool ok = n_q > 0 && kv >= n_q && kv <= cap && j0 >= 0 && j0 <= kv - n_q;
        if (threadIdx.x == 0) s_ok = ok;
        __syncthreads();
        if (ok)
            for (int b = j0 / a.block_size + threadIdx.x; b < (kv + a.block_size - 1) / a.block_size; b += blockDim.x)
                if (btab[b] < 0) s_ok = 0;
        __syncthreads();
        ok = s_ok;
        __syncthreads();
        if (!ok) {
            if (threadIdx.x == 0) kcuda_flag(err, KCUDA_ERR_RANGE);
            continue;
        }
        const float *q = a.q + (int64_t)t * a.n_heads * hd + (int64_t)h * hd;
        float qv[PL], acc[PL];
#pragma unroll
        for (int i = 0; i < PL; i++) {
            int d = lane + 32 * i;
            qv[i] = d < hd ? q[d] : 0.0f;
            acc[i] = 0.0f;
        }
        float m = -INFINITY, l = 0.0f;
        /* sliding window: the last `window` slots up to p (validation above used kv_start) */
        if (a.window > 0 && p - a.window + 1 > j0) j0 = p - a.window + 1;
        for (int32_t j = j0 + warp; j <= p; j += ATT_WARPS) {
            int64_t blk = btab[j / a.block_size];
            int off = j % a.block_size;
            const float *kr = att_row((const float *)a.k_cache, blk, off, kvh, a.block_size, a.n_kv_heads, hd);
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < PL; i++) {
                int d = lane + 32 * i;
                if (d < hd) dot = fmaf(qv[i], kr[d], dot);
            }
            float sc = a.scale * kcuda_warp_sum(dot);
            if (a.softcap > 0.0f) sc = __fmul_rn((float)tanh((double)__fdiv_rn(sc, a.softcap)), a.softcap);
            float mn = fmaxf(m, sc);
            float corr = expf(m - mn); /* 0 on the first slot (m = -inf) */
            float wj = expf(sc - mn);
            l = l * corr + wj;
            const float *vr = att_row((const float *)a.v_cache, blk, off, kvh, a.block_size, a.n_kv_heads, hd);
#pragma unroll
            for (int i = 0; i < PL; i++) {
                int d = lane + 32 * i;
                if (d < hd) acc[i] = fmaf(wj, vr[d], acc[i] * corr);
            }
            m = mn;
        }
        if (lane == 0) {
            s_m[warp] = m;
            s_l[warp] = l;
        }
#pragma unroll
        for (int i = 0; i < PL; i++) s_acc[warp][lane + 32 * i] = acc[i];
        __syncthreads();
        float M = -INFINITY;
        for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, s_m[w]);
        float L = 0.0f, f[ATT_WARPS];
        for (int w = 0; w < ATT_WARPS; w++) {
            f[w] = s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - M); /* a warp with no slot */
            L += s_l[w] * f[w];
        }
        float inv = 1.0f / L;
        float *o = a.out + (int64_t)t * a.n_heads * hd + (int64_t)h * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float v = 0.0f;
            for (int w = 0; w < ATT_WARPS; w++) v += s_acc[w][d] * f[w];
            o[d] = v * inv;
        }
        __syncthreads(); /* shared state is reused by the next item */
    }
}

extern "C" int kcuda__attention(kbackend *kb, const kattn_args *a) {
    if (!a || a->n_seqs < 0) return PEFTD_EINVAL;
    if (a->n_seqs == 0) return 0;
    if (!a->q_start || !a->kv_len || !a->block_table || !a->q || !a->k_cache || !a->v_cache || !a->out)
        return PEFTD_EINVAL;
    if (a->n_heads <= 0 || a->n_kv_heads <= 0 || a->n_heads % a->n_kv_heads || a->head_dim <= 0 ||
        a->block_size <= 0 || a->max_blocks < 0 || !isfinite(a->scale) || a->window < 0 ||
        !(a->softcap >= 0.0f) || !isfinite(a->softcap))
        return PEFTD_EINVAL;
    if (a->head_dim > 32 * ATT_MAX_PER_LANE || (int64_t)a->n_kv_heads * a->head_dim > INT32_MAX ||
        a->kv_dtype != KDT_F32) /* f32 K/V only (supports_op) */
        return PEFTD_EUNSUPPORTED;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    /* Enough blocks for every SM to hold several (a block is 128 threads and ~4-9 KiB of
     * shared memory); items beyond the grid are picked up by the stride loop. No more than
     * the host's bound on the items (a decode step of one row has 32: 2,112 blocks cost a
     * few microseconds of block launches that find nothing to do). */
    unsigned grid = (unsigned)cb->n_sm * 16;
    if (a->max_rows > 0 && (int64_t)a->max_rows * a->n_heads < grid) grid = (unsigned)(a->max_rows * a->n_heads);
    int pl = (a->head_dim + 31) / 32;
    if (pl <= 1) k_attention<1><<<grid, ATT_WARPS * 32, 0, cb->stream>>>(*a, cb->d_err);
    else if (pl <= 2) k_attention<2><<<grid, ATT_WARPS * 32, 0, cb->stream>>>(*a, cb->d_err);
    else if (pl <= 4) k_attention<4><<<grid, ATT_WARPS * 32, 0, cb->stream>>>(*a, cb->d_err);
    else k_attention<8><<<grid, ATT_WARPS * 32, 0, cb->stream>>>(*a, cb->d_err);
    KCUDA_LAUNCH_CHECK();
    return 0;
}
