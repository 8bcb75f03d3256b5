/* kernels/cuda/cuda_internal.h — what the CUDA backend's files share (kcuda__*):
 * the backend struct (streams, cuBLAS handle, device error flag, scratch), the
 * CUDA_CHECK / CUBLAS_CHECK macros (errors -> PEFTD_EBACKEND + one log line, never
 * exit()), launch checks, and device helpers to read weights in their stored dtype. */
#ifndef PEFTD_KCUDA_INTERNAL_H
#define PEFTD_KCUDA_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

extern "C" {
#include "kernels/kernels.h"
#include "lib/log.h"
}
#include "kernels/cuda/qdequant.h"

/* Codes a kernel writes into the device error flag (read back by synchronize/download). */
#define KCUDA_ERR_RANGE 1

typedef struct {
    kbackend base; /* base.impl points back to this struct */
    int device;
    int n_sm;                  /* streaming multiprocessors (grid sizing) */
    cudaStream_t stream;       /* every op, and uploads from the owner thread */
    cudaStream_t up_stream;    /* uploads/memsets made before the first op (bring-up) */
    pthread_mutex_t up_mu;     /* serialises use of up_stream */
    pthread_t owner;           /* thread that issued the last op (the stream owner; the
                                * threading contract's owner is kbackend.owner) */
    int has_owner;
    cublasHandle_t blas;
    int *d_err;                /* device error flag (KCUDA_ERR_*) */
    int *h_err;                /* pinned host copy */
    void *scratch;             /* matmul split buffers (grown on demand) */
    size_t scratch_cap;
} kcuda_backend;

static inline kcuda_backend *kcuda__impl(kbackend *kb) { return (kcuda_backend *)kb->impl; }

/* Logs "cuda: <what> failed at file:line: <error>" and returns PEFTD_EBACKEND. */
int kcuda__fail(const char *what, const char *err, const char *file, int line);
const char *kcuda__cublas_str(cublasStatus_t s);

#define CUDA_CHECK(expr)                                                                        \
    do {                                                                                        \
        cudaError_t e_ = (expr);                                                                \
        if (e_ != cudaSuccess) return kcuda__fail(#expr, cudaGetErrorString(e_), __FILE__, __LINE__); \
    } while (0)

#define CUBLAS_CHECK(expr)                                                                      \
    do {                                                                                        \
        cublasStatus_t s_ = (expr);                                                             \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                        \
            return kcuda__fail(#expr, kcuda__cublas_str(s_), __FILE__, __LINE__);               \
    } while (0)

/* After every kernel launch: a bad configuration or an earlier asynchronous fault. */
#define KCUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

/* Called at the top of every op: makes the backend's device current on this thread
 * and records the thread as the owner (the one whose uploads stay stream-ordered). */
int kcuda__enter_op(kcuda_backend *cb);
/* Whether the calling thread issued the last op (the engine thread, once it runs). */
int kcuda__is_owner(kcuda_backend *cb);

/* Ensures the scratch buffer holds at least `bytes` (contents not kept). */
int kcuda__scratch_reserve(kcuda_backend *cb, size_t bytes);

static inline int kcuda__dtype_ok(kdtype t) { return t == KDT_F32 || t == KDT_F16 || t == KDT_BF16; }
/* Quantized weight dtypes the matmul op takes (qmatmul.cu: the GGUF block types of
 * qdequant.h); no other op reads them. */
static inline int kcuda__qdtype_ok(kdtype t) { return qd_dtype_ok(t); }

static inline unsigned kcuda__blocks(int64_t n, int per) {
    int64_t b = (n + per - 1) / per;
    return (unsigned)(b > 0x7fffffff ? 0x7fffffff : b);
}

/* ---- device helpers ---- */

/* Element i of a weight in its stored dtype, widened to f32 (exact). */
template <kdtype DT>
__device__ __forceinline__ float kcuda_ld(const void *w, int64_t i) {
    if (DT == KDT_F32) return __ldg((const float *)w + i);
    if (DT == KDT_F16) return __half2float(__ldg((const __half *)w + i));
    return __bfloat162float(__ldg((const __nv_bfloat16 *)w + i));
}

/* Elements [8c, 8c + 8) of a weight (16-byte aligned for 16-bit dtypes, 32 for f32),
 * widened to f32: one 16-byte load (two for f32). */
template <kdtype DT>
__device__ __forceinline__ void kcuda_ld8(const void *w, int64_t c, float v[8]) {
    if (DT == KDT_F32) {
        float4 a = __ldg((const float4 *)w + 2 * c), b = __ldg((const float4 *)w + 2 * c + 1);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
        return;
    }
    uint4 q = __ldg((const uint4 *)w + c);
    const uint32_t u[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int e = 0; e < 4; e++) {
        if (DT == KDT_F16) {
            __half2 h = *(const __half2 *)&u[e];
            v[2 * e] = __low2float(h), v[2 * e + 1] = __high2float(h);
        } else { /* bf16 -> f32 is the 16 bits moved up: exact */
            v[2 * e] = __uint_as_float(u[e] << 16), v[2 * e + 1] = __uint_as_float(u[e] & 0xffff0000u);
        }
    }
}

/* acc + Σ w[e] · x[e] over x = (p, q), as 8 fmas in element order. */
__device__ __forceinline__ float kcuda_fma8v(const float w[8], float4 p, float4 q, float acc) {
    acc = fmaf(w[0], p.x, acc), acc = fmaf(w[1], p.y, acc), acc = fmaf(w[2], p.z, acc), acc = fmaf(w[3], p.w, acc);
    acc = fmaf(w[4], q.x, acc), acc = fmaf(w[5], q.y, acc), acc = fmaf(w[6], q.z, acc), acc = fmaf(w[7], q.w, acc);
    return acc;
}

/* Chunks (8 elements: one 16-byte load of a 16-bit weight, two of f32) each lane keeps in
 * flight in kcuda_dot8_rows: 8 for one or two x rows (128 bytes of bf16 per lane, 4 KB per
 * warp), fewer as x rows are added (the x values of every chunk in flight are held too: at
 * 8 rows x 8 chunks the compiler ran out of registers and spilled), half for f32. */
__host__ __device__ constexpr int kcuda_dot_inflight(kdtype dt, int nr) {
    return (nr <= 2 ? 8 : nr <= 4 ? 4 : 2) / (dt == KDT_F32 ? 2 : 1);
}

/* acc[r] += this lane's share of dot(w row, x row r) for r < n <= NR, `in` a multiple of 8 and
 * the weight row 16-byte aligned (32 for f32). x is read through xc(r, c, p, q), which gives
 * elements [8c, 8c + 8) of x row r as two float4 (global or shared memory: the callers').
 * Lane l takes chunks l, l + 32, l + 64, ... in ascending order, each as kcuda_fma8v: the sums
 * and their order depend on `in` and the lane only (batch invariance; the caller adds the
 * lanes with a fixed tree). U chunks' weight loads are issued before any of them is used, so
 * U loads per lane are in flight: written as one loop with a per-row branch inside, the
 * compiler waits out each load's memory round trip before the next (an H200's GEMV then read
 * HBM at ~1/3 of its rate, 2026-12-04 ncu). */
template <kdtype DT, int NR, typename XC>
__device__ __forceinline__ void kcuda_dot8_rows_x(const void *__restrict__ w, int64_t in, int n, int lane,
                                                  float acc[NR], XC xc) {
    constexpr int U = kcuda_dot_inflight(DT, NR);
    const int64_t nc = in / 8;
    int64_t c = lane;
    for (; c + 32 * (U - 1) < nc; c += 32 * U) {
        float wf[U][8];
#pragma unroll
        for (int u = 0; u < U; u++) kcuda_ld8<DT>(w, c + 32 * u, wf[u]);
#pragma unroll
        for (int r = 0; r < NR; r++) {
            if (r < n) {
#pragma unroll
                for (int u = 0; u < U; u++) {
                    float4 p, q;
                    xc(r, c + 32 * u, p, q);
                    acc[r] = kcuda_fma8v(wf[u], p, q, acc[r]);
                }
            }
        }
    }
    for (; c < nc; c += 32) {
        float wf[8];
        kcuda_ld8<DT>(w, c, wf);
#pragma unroll
        for (int r = 0; r < NR; r++) {
            if (r < n) {
                float4 p, q;
                xc(r, c, p, q);
                acc[r] = kcuda_fma8v(wf, p, q, acc[r]);
            }
        }
    }
}

/* kcuda_dot8_rows_x with x [n, in] in global memory, its rows 16-byte aligned. */
template <kdtype DT, int NR>
__device__ __forceinline__ void kcuda_dot8_rows(const void *__restrict__ w, const float *__restrict__ x, int64_t in,
                                                int n, int lane, float acc[NR]) {
    kcuda_dot8_rows_x<DT, NR>(w, in, n, lane, acc, [x, in](int r, int64_t c, float4 &p, float4 &q) {
        const float4 *xp = (const float4 *)(x + (int64_t)r * in + 8 * c);
        p = __ldg(xp), q = __ldg(xp + 1);
    });
}

/* One x row of `in` floats (in % 4 == 0, 16-byte aligned) staged in shared memory by the whole
 * block, ready for every thread on return. At most KCUDA_SX_MAX_IN floats: 48 KB, the default
 * dynamic shared memory limit. */
#define KCUDA_SX_MAX_IN 12288
__device__ __forceinline__ void kcuda_stage_x(float4 *sx4, const float *__restrict__ x, int64_t in) {
    for (int64_t i = threadIdx.x; i < in / 4; i += blockDim.x) sx4[i] = __ldg((const float4 *)x + i);
    __syncthreads();
}

/* This lane's share of dot(w row, x) with x staged in shared memory (kcuda_stage_x): the sum
 * kcuda_dot8_rows gives for one row, term for term. */
template <kdtype DT>
__device__ __forceinline__ float kcuda_dot8_sx(const void *__restrict__ w, const float4 *sx4, int64_t in, int lane) {
    float acc[1] = {0.0f};
    kcuda_dot8_rows_x<DT, 1>(w, in, 1, lane, acc, [sx4](int, int64_t c, float4 &p, float4 &q) {
        p = sx4[2 * c], q = sx4[2 * c + 1];
    });
    return acc[0];
}

/* Same, with the dtype known only at run time. */
__device__ __forceinline__ float kcuda_ld_rt(kdtype dt, const void *w, int64_t i) {
    if (dt == KDT_F32) return kcuda_ld<KDT_F32>(w, i);
    if (dt == KDT_F16) return kcuda_ld<KDT_F16>(w, i);
    return kcuda_ld<KDT_BF16>(w, i);
}

__device__ __forceinline__ float kcuda_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ void kcuda_flag(int *err, int code) { atomicOr(err, code); }

/* The gated units' one formulas (swiglu, geglu and matmul_glu share them): silu(g)·u with expf
 * (CUDA: <= 2 ulp), and gelu_tanh(g)·u with tanh in double rounded once (the CPU's values, up
 * to libm vs CUDA tanh ulps). */
__device__ __forceinline__ float kcuda_silu_mul(float g, float u) {
    return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}
__device__ __forceinline__ float kcuda_gelu_tanh_mul(float g, float u) {
    const double k = 0.7978845608028654, x = g; /* sqrt(2 / pi) */
    float a = (float)(0.5 * x * (1.0 + tanh(k * (x + 0.044715 * x * x * x))));
    return __fmul_rn(a, u);
}

/* RoPE of one pair (x[i], x[i + half]) of a head at position p: the angle p * inv_freq in f32,
 * cosf/sinf times scale, separate roundings and no FMA contraction (the CPU build is -std=c11,
 * where GCC does not contract a*cs - b*sn either). The one formula of rope and rope_kv_store. */
__device__ __forceinline__ void kcuda_rope_pair(float *xh, int i, int half, int32_t p, float inv_freq, float scale) {
    float a = __fmul_rn((float)p, inv_freq);
    float cs = __fmul_rn(cosf(a), scale), sn = __fmul_rn(sinf(a), scale);
    float u = xh[i], v = xh[i + half];
    xh[i] = __fsub_rn(__fmul_rn(u, cs), __fmul_rn(v, sn));
    xh[i + half] = __fadd_rn(__fmul_rn(v, cs), __fmul_rn(u, sn));
}

#endif
