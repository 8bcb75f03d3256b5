/* kernels/cuda/membw.cu — the device's measured read bandwidth: the denominator of the
 * decode roofline (a decode step only reads its weights). A read-only reduction over a
 * buffer far larger than L2, timed with events on the backend's stream. Not an op: a
 * measurement bench/bench_gpu asks for (declared in kernels/kernels_cuda.h). */
#include "kernels/cuda/cuda_internal.h"

extern "C" {
#include "kernels/kernels_cuda.h"
}

/* Every thread xors 16-byte words of p in a grid-stride loop, four independent loads in
 * flight per iteration; lane 0 of each warp folds its warp's value into *sink (so the
 * loads cannot be dropped). Every byte is read exactly once; only *sink is written. */
__global__ void kcuda_read_xor_kernel(const uint4 *__restrict__ p, size_t n, unsigned *sink) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned acc = 0;
    for (; i + 3 * stride < n; i += 4 * stride) {
        uint4 a = p[i], b = p[i + stride], c = p[i + 2 * stride], d = p[i + 3 * stride];
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n; i += stride) {
        uint4 a = p[i];
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc ^= __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) atomicXor(sink, acc);
}

extern "C" int kbackend_cuda_read_bandwidth(kbackend *kb, size_t bytes, int passes, double *gbps) {
    if (!kb || kb->impl_ops->is_host || !gbps || passes < 1 || bytes < (1u << 20)) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int st = kcuda__enter_op(cb);
    if (st < 0) return st;
    const size_t n = bytes / sizeof(uint4);
    uint4 *buf = NULL;
    unsigned *sink = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    float best_ms = 0;
    st = PEFTD_EBACKEND;
    if (cudaMalloc(&buf, n * sizeof(uint4)) != cudaSuccess || cudaMalloc(&sink, sizeof(unsigned)) != cudaSuccess ||
        cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        LOGE("cuda: read bandwidth: cannot allocate %zu bytes (or events)", bytes);
        goto out;
    }
    if (cudaMemsetAsync(buf, 0x5a, n * sizeof(uint4), cb->stream) != cudaSuccess ||
        cudaMemsetAsync(sink, 0, sizeof(unsigned), cb->stream) != cudaSuccess)
        goto out;
    {
        /* 8 blocks of 256 threads per SM: enough loads in flight to saturate HBM (each
         * thread keeps four 16-byte loads outstanding). */
        const unsigned blocks = (unsigned)cb->n_sm * 8;
        for (int pass = 0; pass <= passes; pass++) { /* pass 0 warms up (clocks, TLB) */
            cudaEventRecord(e0, cb->stream);
            kcuda_read_xor_kernel<<<blocks, 256, 0, cb->stream>>>(buf, n, sink);
            cudaEventRecord(e1, cb->stream);
            if (cudaGetLastError() != cudaSuccess || cudaEventSynchronize(e1) != cudaSuccess) goto out;
            float ms = 0;
            if (cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess) goto out;
            if (pass > 0 && (best_ms == 0 || ms < best_ms)) best_ms = ms;
        }
    }
    if (best_ms <= 0) goto out;
    *gbps = (double)(n * sizeof(uint4)) / (best_ms * 1e-3) / 1e9;
    st = 0;
out:
    if (st < 0) LOGE("cuda: read bandwidth: %s", cudaGetErrorString(cudaGetLastError()));
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(sink);
    cudaFree(buf);
    return st;
}
