/* kernels/cuda/qmatmul.cu — y[n, out] = beta*y + x[n, in] · wᵀ for quantized weights on the CUDA
 * backend: every GGUF block type the CPU backend multiplies (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1,
 * IQ4_NL, Q4_K, Q5_K, Q6_K, Q3_K, Q2_K, IQ4_XS — so Q4_K_M, Q5_K_M, Q6_K, Q3_K_M, Q2_K and IQ4
 * files serve whole), dequantizing kernels, no activation quantization.
 *
 * Numerics: every weight element is dequantized exactly as kernels/cpu/quant_ref.c (and the
 * `gguf` package) computes it, by the one group dequantizer of qdequant.h (checked bit for bit
 * on the CPU by test_cuda_qdequant), and multiplied with the f32 activations in f32. So the
 * result is the f32 matmul of the dequantized weight up to f32 summation order: the parity
 * harness compares it with the CPU backend's f32 matmul of qref_dequantize()'s output at the
 * same tolerance as f32 weights. (The CPU backend's own quantized path rounds activations to 8
 * bits per block, like llama.cpp; CUDA keeps them f32 — more accurate, and the GPU has the
 * FLOPs to spare.)
 *
 *   n <= QMM_GEMV_ROWS (decode; x 16-byte aligned): one warp per output row, lane l taking the
 *       row's 8-element groups l, l + 32, ... (for K-quants: elements 8l..8l+7 of every
 *       super-block). The lane split and the reduction tree depend only on `in`, so a row's
 *       result is batch-invariant.
 *   otherwise (prefill, big decode batches, unaligned views): the weight is dequantized to f32 in chunks of
 *       output rows into the scratch buffer (≤ QMM_CHUNK_BYTES) and each chunk multiplied
 *       with cuBLAS SGEMM (CUBLAS_COMPUTE_32F, no TF32): exact dequantized values, one weight
 *       read per chunk. Chunking keeps a 128k-row output matrix from needing gigabytes.
 */
#include <stdint.h>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/qdequant.h"
#include "kernels/cuda/qmatmul.h"

#define QMM_GEMV_ROWS 8
#define QMM_WARPS 8
#define QMM_CHUNK_BYTES ((size_t)64 << 20)

/* GEMV: warp j takes output row j; lane l dequantizes the 8-element groups l, l + 32, ... of
 * the row (for 256-element blocks: group l of every block; for 32-element blocks: group l % 4
 * of blocks l / 4, l / 4 + 8, ...) and multiplies them with x's matching 8 floats (two float4
 * loads: x + 8g is 32-byte aligned when x is 16-byte aligned). */
template <kdtype DT, int NR>
__global__ void __launch_bounds__(QMM_WARPS * 32) k_gemv_q(const float *__restrict__ x, int n,
                                                            const unsigned char *__restrict__ w, int64_t in,
                                                            int64_t out, float *__restrict__ y, int beta) {
    const int BE = qd_block_elems(DT), BB = qd_block_bytes(DT), GPB = BE / 8; /* folded per DT */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int64_t j = (int64_t)blockIdx.x * QMM_WARPS + warp;
    if (j >= out) return;
    const unsigned char *wr = w + (size_t)j * (size_t)(in / BE) * BB;
    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.0f;
    for (int64_t g = lane; g < in / 8; g += 32) {
        float wf[8];
        qd_deq8(DT, wr + (g / GPB) * BB, (int)(g % GPB), wf);
#pragma unroll
        for (int r = 0; r < NR; r++) {
            if (r < n) {
                const float4 *xr = (const float4 *)(x + (int64_t)r * in + g * 8);
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

/* rows [0, rows) of a quantized matrix → f32 [rows, in]; one thread per 8-element group. */
template <kdtype DT>
__global__ void k_dequant_rows(const unsigned char *__restrict__ w, int64_t rows, int64_t in, float *__restrict__ dst) {
    const int BE = qd_block_elems(DT), BB = qd_block_bytes(DT);
    int64_t groups = rows * (in / 8);
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
         g += (int64_t)gridDim.x * blockDim.x) {
        int64_t e = g * 8, r = e / in, k = e % in;
        float v[8];
        qd_deq8(DT, w + (size_t)r * (size_t)(in / BE) * BB + (k / BE) * BB, (int)(k % BE / 8), v);
        float4 *o = (float4 *)(dst + e);
        o[0] = make_float4(v[0], v[1], v[2], v[3]);
        o[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
}

template <int NR>
static void qmm_gemv_launch(cudaStream_t st, kdtype dt, const float *x, int n, const unsigned char *w, int64_t in,
                            int64_t out, float *y, int beta) {
    dim3 g(kcuda__blocks(out, QMM_WARPS)), b(QMM_WARPS * 32);
    switch (dt) {
#define QMM_GEMV_CASE(DT)                                                                                      \
    case DT: k_gemv_q<DT, NR><<<g, b, 0, st>>>(x, n, w, in, out, y, beta); break;
        QD_EACH_DTYPE(QMM_GEMV_CASE)
#undef QMM_GEMV_CASE
    default: break; /* kcuda__qdtype_ok (checked by the caller) */
    }
}

static void qmm_dequant_launch(cudaStream_t st, unsigned grid, kdtype dt, const unsigned char *w, int64_t rows,
                               int64_t in, float *dst) {
    switch (dt) {
#define QMM_DEQ_CASE(DT)                                                                                       \
    case DT: k_dequant_rows<DT><<<grid, 256, 0, st>>>(w, rows, in, dst); break;
        QD_EACH_DTYPE(QMM_DEQ_CASE)
#undef QMM_DEQ_CASE
    default: break;
    }
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

    /* The GEMV's vector loads need x 16-byte aligned (backend allocations are 256-byte aligned;
     * other views take the dequantize + SGEMM path); weight blocks are read byte by byte. */
    if (n <= QMM_GEMV_ROWS && (uintptr_t)x % 16 == 0) {
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
        qmm_dequant_launch(st, grid < cap ? grid : cap, w->dtype, wd + (size_t)r0 * row_bytes, m, in, wf);
        KCUDA_LAUNCH_CHECK();
        /* column-major view: y is [out x n] with ld out; this chunk is rows r0..r0+m of it. */
        CUBLAS_CHECK(cublasGemmEx(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)m, n, (int)in, &one, wf, CUDA_R_32F,
                                  (int)in, x, CUDA_R_32F, (int)in, &beta, y + r0, CUDA_R_32F, (int)out,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    return 0;
}
