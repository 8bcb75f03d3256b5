/* kernels/cuda/rotate.cu — seg_rotate on the CUDA backend (contract: ksegrot / krot_factor in
 * kernels/kernels.h; semantics mirror kernels/cpu/rotate.c).
 *
 * Grid (n_segs, RT_ROW_SPLIT): block (i, q) takes rows seg_start[i] + q, + RT_ROW_SPLIT, ... of
 * segment i (the tables are device memory: the host does not know the row counts). A row is
 * staged in shared memory and ping-pongs between two [dim] buffers, one factor per pass: thread
 * t computes the outputs p = t, t + RT_THREADS, ... as fmaf(v[g(kb + j)], R_k[j, c], s) over j
 * ascending from s = 0 — the CPU's kv_fmadd sequence, so both backends round alike — and writes
 * them to g(p). Rows of segments without factors are copied. Bad device-side tables (a segment
 * ending before it starts, a factor count outside [0, KROT_MAX_FACTORS], a block that does not
 * divide dim, a perm entry outside [0, dim)) raise the error flag and leave the segment's rows
 * unwritten.
 *
 * Shared memory is 2·dim floats (above 48 KiB the kernel's limit is raised to fit; dims beyond
 * the device's opt-in limit -> PEFTD_EUNSUPPORTED). Written against the CPU reference; run by
 * tests/unit/test_backend_parity.c (seg_rotate_parity) on a GPU. */
#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/rotate.h"

#define RT_THREADS 256
#define RT_ROW_SPLIT 8

__global__ void k_seg_rotate(const float *x, int dim, const int32_t *seg_start, const int32_t *n_factors,
                             const krot_factor *const *factors, float *y, int *err) {
    extern __shared__ float rt_sm[];
    const int i = blockIdx.x, tid = threadIdx.x;
    const int32_t r0 = seg_start[i], r1 = seg_start[i + 1];
    const int F = n_factors[i];
    const krot_factor *fs = F > 0 ? factors[i] : NULL;
    bool bad = r0 < 0 || r1 < r0 || F < 0 || F > KROT_MAX_FACTORS || (F > 0 && !fs);
    for (int f = 0; !bad && f < F; f++) bad = !fs[f].r || fs[f].block < 1 || dim % fs[f].block != 0;
    if (bad) {
        if (tid == 0 && blockIdx.y == 0) kcuda_flag(err, KCUDA_ERR_RANGE);
        return;
    }
    for (int32_t r = r0 + (int32_t)blockIdx.y; r < r1; r += RT_ROW_SPLIT) {
        const float *xr = x + (int64_t)r * dim;
        float *yr = y + (int64_t)r * dim;
        if (F == 0) {
            for (int p = tid; p < dim; p += RT_THREADS) yr[p] = xr[p];
            continue;
        }
        float *src = rt_sm, *dst = rt_sm + dim;
        for (int p = tid; p < dim; p += RT_THREADS) src[p] = xr[p];
        __syncthreads();
        int oob = 0;
        for (int f = 0; f < F; f++) {
            const krot_factor fc = fs[f];
            const int b = fc.block;
            for (int p = tid; p < dim; p += RT_THREADS) {
                const int k = p / b, c = p - k * b, base = k * b;
                const float *R = fc.r + (fc.shared ? 0 : (int64_t)k * b * b);
                float s = 0.0f;
                for (int j = 0; j < b; j++) {
                    int gi = fc.perm ? fc.perm[base + j] : base + j;
                    if ((unsigned)gi >= (unsigned)dim) oob = 1, gi = 0;
                    s = fmaf(src[gi], R[(int64_t)j * b + c], s);
                }
                int go = fc.perm ? fc.perm[p] : p;
                if ((unsigned)go >= (unsigned)dim) oob = 1, go = 0;
                dst[go] = s;
            }
            __syncthreads();
            float *t = src;
            src = dst, dst = t;
        }
        if (oob) kcuda_flag(err, KCUDA_ERR_RANGE);
        for (int p = tid; p < dim; p += RT_THREADS) yr[p] = src[p];
        __syncthreads(); /* the next row reuses the buffers */
    }
}

extern "C" int kcuda__seg_rotate(kbackend *kb, const float *x, int dim, const ksegrot *s, float *y) {
    if (dim <= 0 || !s || s->n_segs < 0) return PEFTD_EINVAL;
    if (s->n_segs == 0) return 0;
    if (!s->seg_start || !s->n_factors || !s->factors || s->max_block < 1 || !x || !y) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    size_t smem = 2 * (size_t)dim * sizeof(float);
    if (smem > 48 * 1024) {
        int max_optin = 0;
        CUDA_CHECK(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, cb->device));
        if (smem > (size_t)max_optin) return PEFTD_EUNSUPPORTED;
        CUDA_CHECK(cudaFuncSetAttribute(k_seg_rotate, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    }
    k_seg_rotate<<<dim3((unsigned)s->n_segs, RT_ROW_SPLIT), RT_THREADS, smem, cb->stream>>>(
        x, dim, s->seg_start, s->n_factors, s->factors, y, cb->d_err);
    KCUDA_LAUNCH_CHECK();
    return 0;
}
