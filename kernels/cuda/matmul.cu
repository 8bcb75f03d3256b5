/* kernels/cuda/matmul.cu — y[n, out] = beta*y + x[n, in] · wᵀ (w: [out, in] in its stored
 * dtype) on the CUDA backend. Activations are f32 in this interface; the aim is numerics
 * as close to the CPU reference (f32 x, weights widened exactly to f32, f32 accumulation)
 * as the fast paths allow:
 *
 *   n <= MM_GEMV_ROWS (decode): a custom GEMV kernel, one warp per output row, reading
 *       the weight row once in 16-byte vectors in its stored dtype, 8 loads in flight per
 *       lane (kcuda_dot8_rows), and x in f32; f32 FMA accumulation. A row's result
 *       depends on its own x row only (the lane split and the reduction tree are fixed
 *       by `in`), so it is batch-invariant.
 *   bf16 weights, larger n (prefill, big decode batches): cuBLAS GemmEx on tensor cores.
 *       GemmEx needs A and B of one type (bf16 x bf16 -> f32 with CUBLAS_COMPUTE_32F;
 *       there is no bf16 x f32 combination), and rounding x to bf16 would cost ~3
 *       significant digits. So x is split exactly-ish: x = hi + lo with hi = bf16(x),
 *       lo = bf16(x - hi); both halves are stacked into one [2n, in] bf16 operand and one
 *       GEMM (the weight is read once) gives W·hi and W·lo in f32; y = beta*y + (W·hi +
 *       W·lo). bf16 products are exact in f32, so the only errors left are |x - hi - lo|
 *       <= 2^-16 |x| and f32 accumulation: the result agrees with the CPU's to ~1e-5
 *       relative instead of ~4e-3.
 *   f32 weights, larger n: cuBLAS GemmEx f32 x f32 -> f32, CUBLAS_COMPUTE_32F, default
 *       math mode (no TF32).
 *   f16 weights, larger n: the GEMV kernel over chunks of MM_GEMV_ROWS rows (the f16
 *       hi/lo split could overflow: f16 stops at 65504 and hidden states can exceed it).
 *       Slower for prefill (the weight is re-read per chunk, mostly from L2), exact. */
#include <stdint.h>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/qmatmul.h"

/* Rows per GEMV launch: at 8 rows a bf16 weight element feeds 8 FMAs per 2 bytes, about
 * where the H100/H200's f32 FMA rate (~33 TFMA/s) meets its HBM rate (~3.3-4.8 TB/s);
 * beyond it the tensor-core GEMM wins. */
#define MM_GEMV_ROWS 8
/* Output rows per GEMV block: one per warp. */
#define MM_WARPS 8
/* Blocks per SM the register budget is set for: 2 x 256 threads leave ~128 registers a thread,
 * enough for kcuda_dot8_rows's 8 weight loads (and their x) in flight. Left to itself the
 * compiler aims at full occupancy (32 registers) and issues the loads one or two at a time. */
#define MM_MIN_BLOCKS 2

/* y[r, j] = (beta ? y[r, j] : 0) + dot(x[r, :], w[j, :]) for r < n <= NR. VEC: `in` is a
 * multiple of 8 and every row 16-byte aligned (32 for f32), else scalar loads. */
template <kdtype DT, int NR, bool VEC>
__device__ __forceinline__ void gemv_block(const float *__restrict__ x, int n, const void *__restrict__ w, int64_t in,
                                           int64_t out, float *__restrict__ y, int beta, int64_t block) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int64_t j = block * MM_WARPS + warp;
    if (j >= out) return;
    const char *wr = (const char *)w + (size_t)j * (size_t)in * (DT == KDT_F32 ? 4 : 2);
    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.0f;
    if (VEC) {
        kcuda_dot8_rows<DT, NR>(wr, x, in, n, lane, acc);
    } else {
        for (int64_t k = lane; k < in; k += 32) {
            float wf = kcuda_ld<DT>(wr, k);
#pragma unroll
            for (int r = 0; r < NR; r++)
                if (r < n) acc[r] = fmaf(wf, __ldg(x + (int64_t)r * in + k), acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < NR; r++) {
        if (r < n) {
            float s = kcuda_warp_sum(acc[r]);
            if (lane == 0) {
                float *yp = y + (int64_t)r * out + j;
                *yp = beta ? __fadd_rn(*yp, s) : s;
            }
        }
    }
}

template <kdtype DT, int NR, bool VEC>
__global__ void __launch_bounds__(MM_WARPS * 32, MM_MIN_BLOCKS)
    k_gemv(const float *__restrict__ x, int n, const void *__restrict__ w, int64_t in, int64_t out,
           float *__restrict__ y, int beta) {
    gemv_block<DT, NR, VEC>(x, n, w, in, out, y, beta, blockIdx.x);
}

/* Several weights of one dtype over the same x (q/k/v, gate/up) in one launch: block b
 * belongs to weight g with first[g] <= b < first[g + 1], and computes exactly what k_gemv's
 * block b - first[g] would for that weight alone. */
struct mm_group_args {
    const void *w[KMATMUL_GROUP_MAX];
    float *y[KMATMUL_GROUP_MAX];
    int64_t out[KMATMUL_GROUP_MAX];
    int64_t first[KMATMUL_GROUP_MAX + 1];
    int count;
};

template <kdtype DT, int NR, bool VEC>
__global__ void __launch_bounds__(MM_WARPS * 32, MM_MIN_BLOCKS)
    k_gemv_group(const float *__restrict__ x, int n, int64_t in, mm_group_args a, int beta) {
    int g = 0;
    while (g + 1 < a.count && (int64_t)blockIdx.x >= a.first[g + 1]) g++;
    gemv_block<DT, NR, VEC>(x, n, a.w[g], in, a.out[g], a.y[g], beta, (int64_t)blockIdx.x - a.first[g]);
}

template <kdtype DT, bool VEC>
static void mm_gemv_group_launch(cudaStream_t st, const float *x, int n, int64_t in, const mm_group_args &a, int beta) {
    dim3 g((unsigned)a.first[a.count]), b(MM_WARPS * 32);
    if (n <= 1) k_gemv_group<DT, 1, VEC><<<g, b, 0, st>>>(x, n, in, a, beta);
    else if (n <= 2) k_gemv_group<DT, 2, VEC><<<g, b, 0, st>>>(x, n, in, a, beta);
    else if (n <= 4) k_gemv_group<DT, 4, VEC><<<g, b, 0, st>>>(x, n, in, a, beta);
    else k_gemv_group<DT, 8, VEC><<<g, b, 0, st>>>(x, n, in, a, beta);
}

template <kdtype DT, bool VEC>
static void mm_gemv_launch(cudaStream_t st, const float *x, int n, const void *w, int64_t in, int64_t out, float *y,
                           int beta) {
    dim3 g(kcuda__blocks(out, MM_WARPS)), b(MM_WARPS * 32);
    if (n <= 1) k_gemv<DT, 1, VEC><<<g, b, 0, st>>>(x, n, w, in, out, y, beta);
    else if (n <= 2) k_gemv<DT, 2, VEC><<<g, b, 0, st>>>(x, n, w, in, out, y, beta);
    else if (n <= 4) k_gemv<DT, 4, VEC><<<g, b, 0, st>>>(x, n, w, in, out, y, beta);
    else k_gemv<DT, 8, VEC><<<g, b, 0, st>>>(x, n, w, in, out, y, beta);
}

template <kdtype DT>
static void mm_gemv(cudaStream_t st, bool vec, const float *x, int n, const void *w, int64_t in, int64_t out, float *y,
                    int beta) {
    if (vec) mm_gemv_launch<DT, true>(st, x, n, w, in, out, y, beta);
    else mm_gemv_launch<DT, false>(st, x, n, w, in, out, y, beta);
}

/* ---- one x row (batch-1 decode) with x in shared memory ----
 * gemv_block holds every chunk's x values in registers beside its weights' (112 registers a
 * thread: 16 warps per SM, 64 KB of weight loads in flight per SM; an H200 then read the
 * gate/up weights at ~3.5 TB/s of its ~4.5). With one x row of at most MM_SX_MAX_IN floats,
 * each block stages x once in shared memory and reads it as it is used, so a thread needs
 * ~64 registers: 4 blocks (32 warps) per SM, twice the bytes in flight. The blocks loop over
 * the rows (a grid that fills the SMs once: x is staged once per block, not per 8 rows).
 * A row's sum is gemv_block's, term for term (same lanes, same chunk order, kcuda_fma8v):
 * the same bits. */
#define MM_SX_MAX_IN KCUDA_SX_MAX_IN
#define MM_SX_MIN_BLOCKS 4

template <kdtype DT>
__global__ void __launch_bounds__(MM_WARPS * 32, MM_SX_MIN_BLOCKS) k_gemv1_sx(const float *__restrict__ x, int64_t in,
                                                                             mm_group_args a, int beta) {
    extern __shared__ float4 sx4[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    kcuda_stage_x(sx4, x, in);
    for (int64_t vb = blockIdx.x; vb < a.first[a.count]; vb += gridDim.x) {
        int g = 0;
        while (g + 1 < a.count && vb >= a.first[g + 1]) g++;
        int64_t j = (vb - a.first[g]) * MM_WARPS + warp;
        if (j >= a.out[g]) continue;
        const char *wr = (const char *)a.w[g] + (size_t)j * (size_t)in * (DT == KDT_F32 ? 4 : 2);
        float s = kcuda_warp_sum(kcuda_dot8_sx<DT>(wr, sx4, in, lane));
        if (lane == 0) {
            float *yp = a.y[g] + j;
            *yp = beta ? __fadd_rn(*yp, s) : s;
        }
    }
}

/* Whether the one-row shared-memory GEMV takes this call: one x row, 16-byte vectors, x small
 * enough for shared memory. */
static bool mm_sx_ok(int n, bool vec, int64_t in) { return n == 1 && vec && in <= MM_SX_MAX_IN; }

static void mm_sx_launch(const kcuda_backend *cb, kdtype dt, const float *x, int64_t in, const mm_group_args &a,
                         int beta) {
    int64_t blocks = a.first[a.count], cap = (int64_t)cb->n_sm * MM_SX_MIN_BLOCKS;
    dim3 g((unsigned)(blocks < cap ? blocks : cap)), b(MM_WARPS * 32);
    size_t smem = (size_t)in * sizeof(float);
    switch (dt) {
    case KDT_F32: k_gemv1_sx<KDT_F32><<<g, b, smem, cb->stream>>>(x, in, a, beta); break;
    case KDT_F16: k_gemv1_sx<KDT_F16><<<g, b, smem, cb->stream>>>(x, in, a, beta); break;
    case KDT_BF16: k_gemv1_sx<KDT_BF16><<<g, b, smem, cb->stream>>>(x, in, a, beta); break;
    default: break; /* dense dtypes only (callers checked) */
    }
}

/* x [n, in] f32 -> xs [2n, in] bf16: rows 0..n-1 = bf16(x), rows n..2n-1 = bf16(x - hi). */
__global__ void k_split_bf16(const float *x, int64_t total, __nv_bfloat16 *xs) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        float v = x[i];
        __nv_bfloat16 hi = __float2bfloat16_rn(v);
        xs[i] = hi;
        xs[total + i] = __float2bfloat16_rn(__fsub_rn(v, __bfloat162float(hi)));
    }
}

/* y = (beta ? y : 0) + (p[i] + p[total + i]). */
__global__ void k_combine(const float *p, int64_t total, float *y, int beta) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        float s = __fadd_rn(p[i], p[total + i]);
        y[i] = beta ? __fadd_rn(y[i], s) : s;
    }
}

static int mm_aligned(const void *p, size_t a) { return ((uintptr_t)p % a) == 0; }

extern "C" int kcuda__matmul(kbackend *kb, const float *x, int n, const kmat *w, float *y, float beta) {
    if (w && kcuda__qdtype_ok(w->dtype)) return kcuda__qmatmul(kb, x, n, w, y, beta);
    if (!w || n < 0 || !kcuda__dtype_ok(w->dtype) || w->rows <= 0 || w->cols <= 0) return PEFTD_EINVAL;
    if (beta != 0.0f && beta != 1.0f) return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!x || !y || !w->data) return PEFTD_EINVAL;
    if (w->cols > INT32_MAX || w->rows > INT32_MAX) return PEFTD_EUNSUPPORTED;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    int64_t in = w->cols, out = w->rows;
    int ib = beta != 0.0f;
    /* in % 8 == 0 keeps every weight and x row 16-byte aligned when the bases are. */
    bool vec = in % 8 == 0 && mm_aligned(w->data, 16) && mm_aligned(x, 16);
    cudaStream_t st = cb->stream;

    if (mm_sx_ok(n, vec, in)) {
        mm_group_args a = {};
        a.count = 1, a.w[0] = w->data, a.y[0] = y, a.out[0] = out, a.first[1] = kcuda__blocks(out, MM_WARPS);
        mm_sx_launch(cb, w->dtype, x, in, a, ib);
        KCUDA_LAUNCH_CHECK();
        return 0;
    }
    if (w->dtype == KDT_F16 || n <= MM_GEMV_ROWS) {
        for (int r0 = 0; r0 < n; r0 += MM_GEMV_ROWS) {
            int m = n - r0 < MM_GEMV_ROWS ? n - r0 : MM_GEMV_ROWS;
            const float *xr = x + (int64_t)r0 * in;
            float *yr = y + (int64_t)r0 * out;
            switch (w->dtype) {
            case KDT_F32: mm_gemv<KDT_F32>(st, vec, xr, m, w->data, in, out, yr, ib); break;
            case KDT_F16: mm_gemv<KDT_F16>(st, vec, xr, m, w->data, in, out, yr, ib); break;
            case KDT_BF16: mm_gemv<KDT_BF16>(st, vec, xr, m, w->data, in, out, yr, ib); break;
            default: break; /* quantized dtypes: refused by kcuda__dtype_ok above */
            }
            KCUDA_LAUNCH_CHECK();
        }
        return 0;
    }

    const float one = 1.0f, zero = 0.0f;
    if (w->dtype == KDT_F32) {
        CUBLAS_CHECK(cublasGemmEx(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, n, (int)in, &one, w->data, CUDA_R_32F,
                                  (int)in, x, CUDA_R_32F, (int)in, &beta, y, CUDA_R_32F, (int)out, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
        return 0;
    }

    /* bf16: split x, one GEMM over the stacked [2n, in] operand, combine. */
    int64_t xs_elems = 2 * (int64_t)n * in, p_elems = 2 * (int64_t)n * out;
    size_t xs_bytes = ((size_t)xs_elems * 2 + 255) / 256 * 256;
    if ((rc = kcuda__scratch_reserve(cb, xs_bytes + (size_t)p_elems * 4)) != 0) return rc;
    __nv_bfloat16 *xs = (__nv_bfloat16 *)cb->scratch;
    float *p = (float *)((char *)cb->scratch + xs_bytes);
    unsigned grid = kcuda__blocks((int64_t)n * in, 256), cap = (unsigned)cb->n_sm * 16;
    k_split_bf16<<<grid < cap ? grid : cap, 256, 0, st>>>(x, (int64_t)n * in, xs);
    KCUDA_LAUNCH_CHECK();
    CUBLAS_CHECK(cublasGemmEx(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, 2 * n, (int)in, &one, w->data, CUDA_R_16BF,
                              (int)in, xs, CUDA_R_16BF, (int)in, &zero, p, CUDA_R_32F, (int)out, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    grid = kcuda__blocks((int64_t)n * out, 256);
    k_combine<<<grid < cap ? grid : cap, 256, 0, st>>>(p, (int64_t)n * out, y, ib);
    KCUDA_LAUNCH_CHECK();
    return 0;
}

/* matmul_group: at decode sizes (n <= MM_GEMV_ROWS) with every weight of one dense dtype and
 * the same vector alignment, one k_gemv_group launch (the same bits as one k_gemv per
 * weight); otherwise one kcuda__matmul per weight. */
extern "C" int kcuda__matmul_group(kbackend *kb, const float *x, int n, int count, const kmat *const *w,
                                   float *const *y, float beta) {
    if (count < 1 || count > KMATMUL_GROUP_MAX || !w || !y) return PEFTD_EINVAL;
    bool one_launch = n >= 1 && n <= MM_GEMV_ROWS && x && (beta == 0.0f || beta == 1.0f);
    for (int g = 0; g < count && one_launch; g++) {
        const kmat *m = w[g];
        one_launch = m && y[g] && m->data && kcuda__dtype_ok(m->dtype) && m->dtype == w[0]->dtype &&
                     m->cols == w[0]->cols && m->rows > 0 && m->rows <= INT32_MAX && m->cols <= INT32_MAX &&
                     (m->cols % 8 == 0 && mm_aligned(m->data, 16)) == (w[0]->cols % 8 == 0 && mm_aligned(w[0]->data, 16));
    }
    if (!one_launch) {
        for (int g = 0; g < count; g++) {
            if (g > 0 && w[g] && w[0] && w[g]->cols != w[0]->cols) return PEFTD_EINVAL;
            int rc = kcuda__matmul(kb, x, n, w[g], y[g], beta);
            if (rc) return rc;
        }
        return 0;
    }
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    int64_t in = w[0]->cols;
    bool vec = in % 8 == 0 && mm_aligned(w[0]->data, 16) && mm_aligned(x, 16);
    mm_group_args a = {};
    a.count = count;
    for (int g = 0; g < count; g++) {
        a.w[g] = w[g]->data;
        a.y[g] = y[g];
        a.out[g] = w[g]->rows;
        a.first[g + 1] = a.first[g] + kcuda__blocks(w[g]->rows, MM_WARPS);
    }
    int ib = beta != 0.0f;
    cudaStream_t st = cb->stream;
    if (mm_sx_ok(n, vec, in)) {
        mm_sx_launch(cb, w[0]->dtype, x, in, a, ib);
        KCUDA_LAUNCH_CHECK();
        return 0;
    }
    switch (w[0]->dtype) {
    case KDT_F32:
        if (vec) mm_gemv_group_launch<KDT_F32, true>(st, x, n, in, a, ib);
        else mm_gemv_group_launch<KDT_F32, false>(st, x, n, in, a, ib);
        break;
    case KDT_F16:
        if (vec) mm_gemv_group_launch<KDT_F16, true>(st, x, n, in, a, ib);
        else mm_gemv_group_launch<KDT_F16, false>(st, x, n, in, a, ib);
        break;
    case KDT_BF16:
        if (vec) mm_gemv_group_launch<KDT_BF16, true>(st, x, n, in, a, ib);
        else mm_gemv_group_launch<KDT_BF16, false>(st, x, n, in, a, ib);
        break;
    default: break; /* kcuda__dtype_ok above */
    }
    KCUDA_LAUNCH_CHECK();
    return 0;
}
