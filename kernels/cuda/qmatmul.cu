/* kernels/cuda/qmatmul.cu — y[n, out] = beta*y + x[n, in] · wᵀ for quantized weights (Q8_0,
 * Q4_K) on the CUDA backend: dequantizing kernels, no activation quantization.
 *
 * Numerics: every weight element is dequantized exactly as kernels/cpu/quant_ref.c (and the
 * `gguf` package) computes it — Q8_0 y = d·q; Q4_K y = (d·sc)·q − dmin·m, each product and
 * the difference rounded separately (__fmul_rn/__fsub_rn: no contraction into an FMA) — and
 * multiplied with the f32 activations in f32. So the result is the f32 matmul of the
 * dequantized weight up to f32 summation order: the parity harness compares it with the CPU
 * backend's f32 matmul of qref_dequantize()'s output at the same tolerance as f32 weights.
 * (The CPU backend's own quantized path rounds activations to 8 bits per block, like
 * llama.cpp; CUDA keeps them f32 — more accurate, and the GPU has the FLOPs to spare.)
 *
 *   n <= QMM_GEMV_ROWS (decode; x 16-byte aligned): one warp per output row. Q8_0: lane l takes the 32-element
 *       blocks l, l+32, ... (34-byte blocks are only 2-byte aligned: 16-bit loads). Q4_K: the
 *       warp walks the row one 256-element super-block at a time, lane l dequantizing
 *       elements 8l..8l+7 (one 32-bit load of 4 packed bytes per 8 nibbles). The lane split
 *       and the reduction tree depend only on `in`, so a row's result is batch-invariant.
 *   otherwise (prefill, big decode batches, unaligned views): the weight is dequantized to f32 in chunks of
 *       output rows into the scratch buffer (≤ QMM_CHUNK_BYTES) and each chunk multiplied
 *       with cuBLAS SGEMM (CUBLAS_COMPUTE_32F, no TF32): exact dequantized values, one weight
 *       read per chunk. Chunking keeps a 128k-row output matrix from needing gigabytes.
 */
#include <stdint.h>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/qmatmul.h"

#define QMM_GEMV_ROWS 8
#define QMM_WARPS 8
#define QMM_CHUNK_BYTES ((size_t)64 << 20)

#define QK8_0 32
#define Q8_0_BYTES 34
#define QK_K 256
#define Q4_K_BYTES 144

/* Unaligned little-endian loads from global memory (blocks are 2-byte aligned at best). */
__device__ __forceinline__ float qmm_f16(const unsigned char *p) {
    unsigned short u = (unsigned short)(p[0] | (p[1] << 8));
    return __half2float(__ushort_as_half(u));
}

/* Dequantizes Q8_0 block `b` (32 floats) into w. */
__device__ __forceinline__ void qmm_deq_q8_0(const unsigned char *blk, float w[QK8_0]) {
    float d = qmm_f16(blk);
    const unsigned short *qs = (const unsigned short *)(blk + 2); /* 2-byte aligned */
#pragma unroll
    for (int i = 0; i < QK8_0 / 2; i++) {
        unsigned short u = __ldg(qs + i);
        w[2 * i] = __fmul_rn((float)(signed char)(u & 0xff), d);
        w[2 * i + 1] = __fmul_rn((float)(signed char)(u >> 8), d);
    }
}

/* The 6-bit scale and min of sub-block s of a Q4_K super-block (layout in quant_ref.h). */
__device__ __forceinline__ void qmm_scale_min_k4(const unsigned char *sc12, int s, int *sc, int *m) {
    if (s < 4) {
        *sc = sc12[s] & 63;
        *m = sc12[s + 4] & 63;
    } else {
        *sc = (sc12[s + 4] & 15) | ((sc12[s - 4] >> 6) << 4);
        *m = (sc12[s + 4] >> 4) | ((sc12[s] >> 6) << 4);
    }
}

/* Elements 8l..8l+7 of a Q4_K super-block: sub-block s = l/4; sub-blocks 2k and 2k+1 share
 * qs[32k..32k+31] (low nibbles for 2k, high for 2k+1); element e of sub-block s reads
 * qs[32(s/2) + e]. */
__device__ __forceinline__ void qmm_deq_q4_k8(const unsigned char *blk, int lane, float w[8]) {
    float d = qmm_f16(blk), dmin = qmm_f16(blk + 2);
    int s = lane >> 2, e0 = (lane & 3) * 8, sc, m;
    qmm_scale_min_k4(blk + 4, s, &sc, &m);
    float ds = __fmul_rn(d, (float)sc), dm = __fmul_rn(dmin, (float)m);
    const unsigned char *q = blk + 16 + 32 * (s >> 1) + e0;
    int shift = (s & 1) * 4;
#pragma unroll
    for (int i = 0; i < 8; i++) w[i] = __fsub_rn(__fmul_rn(ds, (float)((q[i] >> shift) & 15)), dm);
}

template <int NR>
__global__ void __launch_bounds__(QMM_WARPS * 32) k_gemv_q8_0(const float *__restrict__ x, int n,
                                                               const unsigned char *__restrict__ w, int64_t in,
                                                               int64_t out, float *__restrict__ y, int beta) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int64_t j = (int64_t)blockIdx.x * QMM_WARPS + warp;
    if (j >= out) return;
    int64_t nb = in / QK8_0;
    const unsigned char *wr = w + (size_t)j * (size_t)nb * Q8_0_BYTES;
    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.0f;
    for (int64_t b = lane; b < nb; b += 32) {
        float wf[QK8_0];
        qmm_deq_q8_0(wr + b * Q8_0_BYTES, wf);
#pragma unroll
        for (int r = 0; r < NR; r++) {
            if (r < n) {
                /* in % 32 == 0: every block of x is 128-byte aligned when x is 16-byte aligned */
                const float4 *xr = (const float4 *)(x + (int64_t)r * in + b * QK8_0);
                float s = acc[r];
#pragma unroll
                for (int i = 0; i < QK8_0 / 4; i++) {
                    float4 a = __ldg(xr + i);
                    s = fmaf(wf[4 * i], a.x, s); s = fmaf(wf[4 * i + 1], a.y, s);
                    s = fmaf(wf[4 * i + 2], a.z, s); s = fmaf(wf[4 * i + 3], a.w, s);
                }
                acc[r] = s;
            }
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

template <int NR>
__global__ void __launch_bounds__(QMM_WARPS * 32) k_gemv_q4_k(const float *__restrict__ x, int n,
                                                               const unsigned char *__restrict__ w, int64_t in,
                                                               int64_t out, float *__restrict__ y, int beta) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int64_t j = (int64_t)blockIdx.x * QMM_WARPS + warp;
    if (j >= out) return;
    int64_t nb = in / QK_K;
    const unsigned char *wr = w + (size_t)j * (size_t)nb * Q4_K_BYTES;
    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        float wf[8];
        qmm_deq_q4_k8(wr + b * Q4_K_BYTES, lane, wf);
#pragma unroll
        for (int r = 0; r < NR; r++) {
            if (r < n) {
                const float4 *xr = (const float4 *)(x + (int64_t)r * in + b * QK_K + lane * 8);
                float4 a = __ldg(xr), c = __ldg(xr + 1);
                float s = acc[r];
                s = fmaf(wf[0], a.x, s); s = fmaf(wf[1], a.y, s); s = fmaf(wf[2], a.z, s); s = fmaf(wf[3], a.w, s);
                s = fmaf(wf[4], c.x, s); s = fmaf(wf[5], c.y, s); s = fmaf(wf[6], c.z, s); s = fmaf(wf[7], c.w, s);
                acc[r] = s;
            }
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

/* rows [0, rows) of a quantized matrix → f32 [rows, in]; one thread per 8 elements. */
__global__ void k_dequant_rows(kdtype dt, const unsigned char *__restrict__ w, int64_t rows, int64_t in,
                               float *__restrict__ dst) {
    int64_t groups = rows * (in / 8);
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
         g += (int64_t)gridDim.x * blockDim.x) {
        int64_t e = g * 8, r = e / in, k = e % in;
        float v[8];
        if (dt == KDT_Q8_0) {
            const unsigned char *blk = w + (size_t)r * (size_t)(in / QK8_0) * Q8_0_BYTES + (k / QK8_0) * Q8_0_BYTES;
            float d = qmm_f16(blk);
            const signed char *q = (const signed char *)(blk + 2) + k % QK8_0;
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = __fmul_rn((float)q[i], d);
        } else {
            const unsigned char *blk = w + (size_t)r * (size_t)(in / QK_K) * Q4_K_BYTES + (k / QK_K) * Q4_K_BYTES;
            qmm_deq_q4_k8(blk, (int)((k % QK_K) / 8), v);
        }
        float *o = dst + e;
#pragma unroll
        for (int i = 0; i < 8; i++) o[i] = v[i];
    }
}

template <int NR>
static void qmm_gemv_launch(cudaStream_t st, kdtype dt, const float *x, int n, const unsigned char *w, int64_t in,
                            int64_t out, float *y, int beta) {
    dim3 g(kcuda__blocks(out, QMM_WARPS)), b(QMM_WARPS * 32);
    if (dt == KDT_Q8_0) k_gemv_q8_0<NR><<<g, b, 0, st>>>(x, n, w, in, out, y, beta);
    else k_gemv_q4_k<NR><<<g, b, 0, st>>>(x, n, w, in, out, y, beta);
}

extern "C" int kcuda__qmatmul(kbackend *kb, const float *x, int n, const kmat *w, float *y, float beta) {
    if (!w || n < 0 || !kcuda__qdtype_ok(w->dtype) || w->rows <= 0 || w->cols <= 0) return PEFTD_EINVAL;
    if (w->cols % kdtype_block_elems(w->dtype)) return PEFTD_EINVAL;
    if (beta != 0.0f && beta != 1.0f) return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!x || !y || !w->data) return PEFTD_EINVAL;
    if (w->cols > INT32_MAX || w->rows > INT32_MAX) return PEFTD_EUNSUPPORTED;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    int64_t in = w->cols, out = w->rows;
    int ib = beta != 0.0f;
    cudaStream_t st = cb->stream;
    const unsigned char *wd = (const unsigned char *)w->data;
    size_t row_bytes = kdtype_row_bytes(w->dtype, in);

    /* The GEMV's vector loads need x 16-byte and the Q8_0 codes 2-byte aligned (backend
     * allocations are 256-byte aligned; other views take the dequantize + SGEMM path). */
    if (n <= QMM_GEMV_ROWS && (uintptr_t)x % 16 == 0 && (uintptr_t)wd % 2 == 0) {
        if (n <= 1) qmm_gemv_launch<1>(st, w->dtype, x, n, wd, in, out, y, ib);
        else if (n <= 2) qmm_gemv_launch<2>(st, w->dtype, x, n, wd, in, out, y, ib);
        else if (n <= 4) qmm_gemv_launch<4>(st, w->dtype, x, n, wd, in, out, y, ib);
        else qmm_gemv_launch<8>(st, w->dtype, x, n, wd, in, out, y, ib);
        KCUDA_LAUNCH_CHECK();
        return 0;
    }

    /* Dequantize a chunk of output rows to f32, SGEMM it into y's matching columns. */
    int64_t chunk = (int64_t)(QMM_CHUNK_BYTES / ((size_t)in * sizeof(float)));
    if (chunk < 1) chunk = 1;
    if (chunk > out) chunk = out;
    if ((rc = kcuda__scratch_reserve(cb, (size_t)chunk * (size_t)in * sizeof(float))) != 0) return rc;
    float *wf = (float *)cb->scratch;
    const float one = 1.0f;
    unsigned cap = (unsigned)cb->n_sm * 16;
    for (int64_t r0 = 0; r0 < out; r0 += chunk) {
        int64_t m = out - r0 < chunk ? out - r0 : chunk;
        unsigned grid = kcuda__blocks(m * (in / 8), 256);
        k_dequant_rows<<<grid < cap ? grid : cap, 256, 0, st>>>(w->dtype, wd + (size_t)r0 * row_bytes, m, in, wf);
        KCUDA_LAUNCH_CHECK();
        /* column-major view: y is [out x n] with ld out; this chunk is rows r0..r0+m of it. */
        CUBLAS_CHECK(cublasGemmEx(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)m, n, (int)in, &one, wf, CUDA_R_32F,
                                  (int)in, x, CUDA_R_32F, (int)in, &beta, y + r0, CUDA_R_32F, (int)out,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    return 0;
}
