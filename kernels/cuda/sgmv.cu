/* kernels/cuda/sgmv.cu — segmented gather matmul (SGMV) for low-rank adapters on the
 * CUDA backend: sgmv_shrink, sgmv_expand and seg_scale (contracts: ksgmv in
 * kernels/kernels.h; semantics mirror kernels/cpu/sgmv.c).
 *
 * Every table (seg_start, per-segment A/B pointers, ranks, scales, biases, activations)
 * lives in device memory, so the grid is laid out from host-known bounds and each block
 * reads its own segment's entries:
 *   shrink: grid (n_segs, ceil(ld_t / SH_WARPS), row slices); warp w of block (i, c, z)
 *           owns rank row k = c*SH_WARPS + w of A_i (blocks past rank_i exit at once: ranks
 *           are mixed without padding and any rank <= ld_t works) and the groups of SH_ROWS
 *           batch rows z, z + Z, ... of segment i (Z = row slices = ceil(max_rows /
 *           SH_ROWS), so a segment of many rows — one adapter over the batch, prefill —
 *           spreads over many blocks); it writes t[r, k] = act(x_r · A_i[k] + bias_a[k])
 *           with an f32 accumulation. Lanes read A and x 8 elements (16 bytes of bf16) at a
 *           time, 8 loads in flight (kcuda_dot8_rows), when in_dim % 8 == 0 and the rows are
 *           aligned (else one element at a time); the chunks go to lanes round-robin and each lane
 *           sums its chunks in order, then the warp's fixed tree: a (row, rank) value never
 *           depends on which other rows share the block (batch invariance).
 *   expand: grid (n_segs, ceil(out_dim / EX_THREADS), row slices); thread j of a block owns
 *           output j and applies y[r, j] = fma(scale_i, t_r · B_i[j] + bias_b[j], y[r, j])
 *           for SH_ROWS rows at a time, ranks in ascending order; B_i[j] is read 8 ranks per
 *           16-byte load when the rank allows, EX_INFLIGHT loads issued before any is used,
 *           and t (a few floats per row, the same for every thread: broadcast loads from L1)
 *           straight from global memory, so no barrier orders them after a staging step.
 * Each weight byte is read from HBM once per call whatever the segment's row count
 * (Punica's SGMV property; row slices re-read it from L2); rank 0, NULL A_i/B_i and empty
 * segments do nothing.
 * Activations are evaluated in double (as the CPU's libm path), so both backends round
 * the same exact value. Bad device-side tables (a segment ending before it starts, a
 * rank above ld_t, an unknown activation) skip the segment and raise the error flag. */
#include <math.h>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/sgmv.h"

#define SH_WARPS 4     /* rank rows per shrink block */
#define SH_ROWS 8      /* batch rows per pass over a weight row (registers per lane) */
#define SH_MIN_BLOCKS 4 /* shrink blocks per SM the registers are set for (kcuda_dot8_rows's loads) */
#define EX_THREADS 128 /* outputs per expand block */
#define EX_INFLIGHT 4  /* 16-byte loads of B (8 ranks each) per thread in flight */

__device__ __forceinline__ float sg_act(int act, float v) {
    double x = v;
    switch (act) {
    case KACT_RELU: return x < 0 ? 0.0f : v;
    case KACT_SILU: return (float)(x / (1.0 + exp(-x)));
    case KACT_GELU: return (float)(0.5 * x * (1.0 + erf(x * 0.70710678118654752440)));
    case KACT_GELU_TANH: {
        const double k = 0.7978845608028654; /* sqrt(2 / pi), as the CPU */
        return (float)(0.5 * x * (1.0 + tanh(k * (x + 0.044715 * x * x * x))));
    }
    case KACT_TANH: return (float)tanh(x);
    case KACT_SIGMOID: return (float)(1.0 / (1.0 + exp(-x)));
    default: return v;
    }
}

/* Segment i's row range and rank, or false (segment skipped) when inactive or invalid
 * (invalid also raises the flag). */
__device__ __forceinline__ bool sg_seg(const ksgmv &s, int i, int ld_t, int32_t *r0, int32_t *r1, int *rank,
                                       int *err) {
    *r0 = s.seg_start[i];
    *r1 = s.seg_start[i + 1];
    *rank = s.rank[i];
    int act = s.act ? s.act[i] : KACT_NONE;
    if (*r0 < 0 || *r1 < *r0 || *rank < 0 || act < KACT_NONE || act > KACT_SIGMOID ||
        (*rank > ld_t && s.a[i] && s.b[i])) {
        if (threadIdx.x == 0 && blockIdx.y == 0) kcuda_flag(err, KCUDA_ERR_RANGE);
        return false;
    }
    return *rank > 0 && s.a[i] && s.b[i] && *r1 > *r0;
}

/* The shrink's dot products of one rank row `arow` with rows rb .. rb + nr - 1 of x, one
 * f32 partial per row in this lane (summed over the warp by the caller). VEC: 8 elements per
 * load (in % 8 == 0, aligned rows). */
template <kdtype DT, int NR, bool VEC>
__device__ __forceinline__ void sh_dots(const void *arow, const float *__restrict__ x, int in, int32_t rb, int nr,
                                        int lane, float acc[NR]) {
    if (VEC) {
        kcuda_dot8_rows<DT, NR>(arow, x + (int64_t)rb * in, in, nr, lane, acc);
    } else {
        for (int c = lane; c < in; c += 32) {
            float w = kcuda_ld<DT>(arow, c);
#pragma unroll
            for (int g = 0; g < NR; g++)
                if (g < nr) acc[g] = fmaf(w, __ldg(x + (int64_t)(rb + g) * in + c), acc[g]);
        }
    }
}

/* NR: batch rows per pass, SH_ROWS or 1 (every segment one row: a decode batch of distinct
 * adapters; a (row, rank) value is the same sum in the same order either way). */
template <kdtype DT, int NR>
__global__ void __launch_bounds__(SH_WARPS * 32, SH_MIN_BLOCKS) k_shrink(const float *__restrict__ x, int in, ksgmv s,
                                                          float *__restrict__ t, int ld_t, int *err) {
    int i = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int32_t r0, r1;
    int rank;
    if (!sg_seg(s, i, ld_t, &r0, &r1, &rank, err)) return;
    int k = blockIdx.y * SH_WARPS + warp;
    if (k >= rank) return;
    const void *arow = (const char *)s.a[i] + (size_t)k * (size_t)in * (DT == KDT_F32 ? 4 : 2);
    const float *bias = s.bias_a ? s.bias_a[i] : NULL;
    int act = s.act ? s.act[i] : KACT_NONE;
    /* 16-byte loads: whole 8-element chunks and aligned rows (x's rows are then aligned too) */
    bool vec = in % 8 == 0 && ((uintptr_t)arow % 16) == 0 && ((uintptr_t)x % 16) == 0;
    for (int32_t rb = r0 + (int32_t)blockIdx.z * NR; rb < r1; rb += (int32_t)gridDim.z * NR) {
        int nr = r1 - rb < NR ? r1 - rb : NR;
        float acc[NR];
#pragma unroll
        for (int g = 0; g < NR; g++) acc[g] = 0.0f;
        if (vec)
            sh_dots<DT, NR, true>(arow, x, in, rb, nr, lane, acc);
        else
            sh_dots<DT, NR, false>(arow, x, in, rb, nr, lane, acc);
#pragma unroll
        for (int g = 0; g < NR; g++) {
            if (g < nr) {
                float v = kcuda_warp_sum(acc[g]);
                if (lane == 0) {
                    if (bias) v = __fadd_rn(v, bias[k]);
                    t[(int64_t)(rb + g) * ld_t + k] = act == KACT_NONE ? v : sg_act(act, v);
                }
            }
        }
    }
}

template <kdtype DT>
__global__ void __launch_bounds__(EX_THREADS, 8) k_expand(const float *__restrict__ t, int ld_t, ksgmv s, int out,
                                                       float *__restrict__ y, int *err) {
    int i = blockIdx.x;
    int32_t r0, r1;
    int rank;
    if (!sg_seg(s, i, ld_t, &r0, &r1, &rank, err)) return;
    int j = blockIdx.y * EX_THREADS + threadIdx.x;
    if (j >= out) return;
    const void *brow = (const char *)s.b[i] + (size_t)j * (size_t)rank * (DT == KDT_F32 ? 4 : 2);
    /* 8 ranks per 16-byte load when B's rows are whole, aligned 8-element chunks */
    bool vec = rank % 8 == 0 && ((uintptr_t)s.b[i] % 16) == 0;
    const float *bias = s.bias_b ? s.bias_b[i] : NULL;
    float scale = s.scale[i];
    for (int32_t rb = r0 + (int32_t)blockIdx.z * SH_ROWS; rb < r1; rb += (int32_t)gridDim.z * SH_ROWS) {
        int nr = r1 - rb < SH_ROWS ? r1 - rb : SH_ROWS;
        const float *tb = t + (int64_t)rb * ld_t;
        float acc[SH_ROWS];
#pragma unroll
        for (int g = 0; g < SH_ROWS; g++) acc[g] = 0.0f;
        if (vec) {
            int nc = rank / 8;
            for (int c0 = 0; c0 < nc; c0 += EX_INFLIGHT) {
                float w[EX_INFLIGHT][8];
                /* every load issued first; a chunk past the rank re-reads the last one (a valid
                 * address) and is not used */
#pragma unroll
                for (int u = 0; u < EX_INFLIGHT; u++) kcuda_ld8<DT>(brow, c0 + u < nc ? c0 + u : nc - 1, w[u]);
#pragma unroll
                for (int g = 0; g < SH_ROWS; g++) {
                    if (g < nr) {
                        const float *tr = tb + (int64_t)g * ld_t + 8 * c0;
#pragma unroll
                        for (int u = 0; u < EX_INFLIGHT; u++) {
                            if (c0 + u < nc) {
#pragma unroll
                                for (int e = 0; e < 8; e++) acc[g] = fmaf(w[u][e], __ldg(tr + 8 * u + e), acc[g]);
                            }
                        }
                    }
                }
            }
        } else {
            for (int c = 0; c < rank; c++) {
                float w = kcuda_ld<DT>(brow, c);
#pragma unroll
                for (int g = 0; g < SH_ROWS; g++)
                    if (g < nr) acc[g] = fmaf(w, __ldg(tb + (int64_t)g * ld_t + c), acc[g]);
            }
        }
        float bj = bias ? bias[j] : 0.0f;
#pragma unroll
        for (int g = 0; g < SH_ROWS; g++) {
            if (g < nr) {
                float *yp = y + (int64_t)(rb + g) * out + j;
                *yp = fmaf(scale, __fadd_rn(acc[g], bj), *yp);
            }
        }
    }
}

/* Row slices of a launch: enough groups of `rows` for the longest segment (the host's bound,
 * ksgmv.max_rows; 0 = unknown: one slice walks every group). */
static unsigned sg_row_slices(const ksgmv *s, int rows) {
    int64_t z = s->max_rows > 0 ? ((int64_t)s->max_rows + rows - 1) / rows : 1;
    return (unsigned)(z > 65535 ? 65535 : z);
}

template <kdtype DT>
static void sg_shrink_launch(cudaStream_t st, const float *x, int in_dim, const ksgmv *s, float *t, int ld_t, int *err,
                             unsigned gy) {
    /* one row per segment (ksgmv.max_rows == 1): the one-row kernel keeps 8 loads in flight */
    if (s->max_rows == 1)
        k_shrink<DT, 1><<<dim3((unsigned)s->n_segs, gy, 1), SH_WARPS * 32, 0, st>>>(x, in_dim, *s, t, ld_t, err);
    else
        k_shrink<DT, SH_ROWS><<<dim3((unsigned)s->n_segs, gy, sg_row_slices(s, SH_ROWS)), SH_WARPS * 32, 0, st>>>(
            x, in_dim, *s, t, ld_t, err);
}

/* Host-visible checks (the CPU's sg_check minus what only the device can see). */
static int sg_host_check(const ksgmv *s, int ld_t) {
    if (!s || s->n_segs < 0 || ld_t < 0) return PEFTD_EINVAL;
    if (s->n_segs == 0) return 0;
    if (!s->seg_start || !s->a || !s->b || !s->rank || !kcuda__dtype_ok(s->dtype)) return PEFTD_EINVAL;
    if (s->n_segs > 65535 * 1024) return PEFTD_EUNSUPPORTED;
    return 0;
}

extern "C" int kcuda__sgmv_shrink(kbackend *kb, const float *x, int in_dim, const ksgmv *s, float *t, int ld_t) {
    int rc;
    if (in_dim <= 0) return PEFTD_EINVAL;
    if ((rc = sg_host_check(s, ld_t)) != 0) return rc;
    if (s->n_segs == 0 || ld_t == 0) return 0;
    if (!x || !t) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    if ((rc = kcuda__enter_op(cb)) != 0) return rc;
    unsigned gy = kcuda__blocks(ld_t, SH_WARPS);
    if (gy > 65535) return PEFTD_EUNSUPPORTED;
    switch (s->dtype) {
    case KDT_F32: sg_shrink_launch<KDT_F32>(cb->stream, x, in_dim, s, t, ld_t, cb->d_err, gy); break;
    case KDT_F16: sg_shrink_launch<KDT_F16>(cb->stream, x, in_dim, s, t, ld_t, cb->d_err, gy); break;
    case KDT_BF16: sg_shrink_launch<KDT_BF16>(cb->stream, x, in_dim, s, t, ld_t, cb->d_err, gy); break;
    default: break; /* quantized dtypes: refused by kcuda__dtype_ok above */
    }
    KCUDA_LAUNCH_CHECK();
    return 0;
}

extern "C" int kcuda__sgmv_expand(kbackend *kb, const float *t, int ld_t, const ksgmv *s, int out_dim, float *y) {
    int rc;
    if (out_dim <= 0) return PEFTD_EINVAL;
    if ((rc = sg_host_check(s, ld_t)) != 0) return rc;
    if (s->n_segs == 0 || ld_t == 0) return 0;
    if (!t || !y || !s->scale) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    if ((rc = kcuda__enter_op(cb)) != 0) return rc;
    unsigned gy = kcuda__blocks(out_dim, EX_THREADS);
    if (gy > 65535) return PEFTD_EUNSUPPORTED;
    dim3 g((unsigned)s->n_segs, gy, sg_row_slices(s, SH_ROWS)), b(EX_THREADS);
    switch (s->dtype) {
    case KDT_F32: k_expand<KDT_F32><<<g, b, 0, cb->stream>>>(t, ld_t, *s, out_dim, y, cb->d_err); break;
    case KDT_F16: k_expand<KDT_F16><<<g, b, 0, cb->stream>>>(t, ld_t, *s, out_dim, y, cb->d_err); break;
    case KDT_BF16: k_expand<KDT_BF16><<<g, b, 0, cb->stream>>>(t, ld_t, *s, out_dim, y, cb->d_err); break;
    default: break; /* quantized dtypes: refused by kcuda__dtype_ok above */
    }
    KCUDA_LAUNCH_CHECK();
    return 0;
}

/* ---- seg_scale: block (i, c) scales columns [c*256, c*256+256) of segment i's rows ---- */

#define SS_THREADS 256

__global__ void k_seg_scale(float *y, int dim, const int32_t *seg_start, const float *const *v, int *err) {
    int i = blockIdx.x;
    int32_t r0 = seg_start[i], r1 = seg_start[i + 1];
    if (r0 < 0 || r1 < r0) {
        if (threadIdx.x == 0 && blockIdx.y == 0) kcuda_flag(err, KCUDA_ERR_RANGE);
        return;
    }
    const float *vi = v[i];
    int j = blockIdx.y * SS_THREADS + threadIdx.x;
    if (!vi || j >= dim) return;
    float f = vi[j];
    for (int32_t r = r0; r < r1; r++) {
        float *yp = y + (int64_t)r * dim + j;
        *yp = __fmul_rn(*yp, f);
    }
}

extern "C" int kcuda__seg_scale(kbackend *kb, float *y, int dim, int n_segs, const int32_t *seg_start,
                                const float *const *v) {
    if (dim <= 0 || n_segs < 0) return PEFTD_EINVAL;
    if (n_segs == 0) return 0;
    if (!seg_start || !v || !y) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    unsigned gy = kcuda__blocks(dim, SS_THREADS);
    if (gy > 65535) return PEFTD_EUNSUPPORTED;
    k_seg_scale<<<dim3((unsigned)n_segs, gy), SS_THREADS, 0, cb->stream>>>(y, dim, seg_start, v, cb->d_err);
    KCUDA_LAUNCH_CHECK();
    return 0;
}
