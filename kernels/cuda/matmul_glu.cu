/* kernels/cuda/matmul_glu.cu — matmul_glu on the CUDA backend (contract: kbackend_ops.matmul_glu
 * in kernels/kernels.h): a feed-forward block's gated unit straight from its input row,
 * out[j] = act(x·w_gate[j]) · (x·w_up[j]), in one launch instead of the grouped gate/up GEMV
 * and the swiglu / geglu kernel after it. Taken for one x row (batch-1 decode) with x staged
 * in shared memory, as matmul.cu's one-row GEMV: warp w of a block computes row j's two dot
 * products one after the other (each kcuda_dot8_sx: the one-row GEMV's sum, term for term),
 * reduces them with the same warp tree and applies the gated units' formula
 * (kcuda_silu_mul / kcuda_gelu_tanh_mul): the same bits as the three-step path. Other shapes
 * take the three steps (this backend's own grouped matmul and gated unit, with `up` as the
 * scratch the contract gives). */
#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/matmul_glu.h"
#include "kernels/cuda/norm_rope_elementwise.h"

#define GLU_WARPS 8      /* rows per block pass, one per warp */
#define GLU_MIN_BLOCKS 4 /* the registers kcuda_dot8_sx's 8 loads in flight need */

template <kdtype DT, kact ACT>
__global__ void __launch_bounds__(GLU_WARPS * 32, GLU_MIN_BLOCKS)
    k_glu1_sx(const float *__restrict__ x, int64_t in, const void *__restrict__ wg, const void *__restrict__ wu,
              int64_t rows, float *__restrict__ out) {
    extern __shared__ float4 sx4[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    kcuda_stage_x(sx4, x, in);
    const size_t row_bytes = (size_t)in * (DT == KDT_F32 ? 4 : 2);
    for (int64_t j = (int64_t)blockIdx.x * GLU_WARPS + warp; j < rows; j += (int64_t)gridDim.x * GLU_WARPS) {
        float g = kcuda_warp_sum(kcuda_dot8_sx<DT>((const char *)wg + (size_t)j * row_bytes, sx4, in, lane));
        float u = kcuda_warp_sum(kcuda_dot8_sx<DT>((const char *)wu + (size_t)j * row_bytes, sx4, in, lane));
        if (lane == 0) out[j] = ACT == KACT_SILU ? kcuda_silu_mul(g, u) : kcuda_gelu_tanh_mul(g, u);
    }
}

template <kdtype DT>
static void glu_launch(const kcuda_backend *cb, kact act, const float *x, int64_t in, const void *wg, const void *wu,
                       int64_t rows, float *out) {
    int64_t blocks = (rows + GLU_WARPS - 1) / GLU_WARPS, cap = (int64_t)cb->n_sm * GLU_MIN_BLOCKS;
    dim3 g((unsigned)(blocks < cap ? blocks : cap)), b(GLU_WARPS * 32);
    size_t smem = (size_t)in * sizeof(float);
    if (act == KACT_SILU) k_glu1_sx<DT, KACT_SILU><<<g, b, smem, cb->stream>>>(x, in, wg, wu, rows, out);
    else k_glu1_sx<DT, KACT_GELU_TANH><<<g, b, smem, cb->stream>>>(x, in, wg, wu, rows, out);
}

static int glu_aligned(const void *p) { return ((uintptr_t)p % 16) == 0; }

/* The three steps: the grouped matmul into out and up, then the gated unit into out. */
static int glu_steps(kbackend *kb, const float *x, int n, const kmat *w_gate, const kmat *w_up, kact act, float *up,
                     float *out) {
    const kmat *w[2] = {w_gate, w_up};
    float *y[2] = {out, up};
    int rc = kcuda__matmul_group(kb, x, n, 2, w, y, 0.0f);
    if (rc) return rc;
    int dim = (int)w_gate->rows;
    return act == KACT_SILU ? kcuda__swiglu(kb, out, up, n, dim, out) : kcuda__geglu(kb, out, up, n, dim, out);
}

extern "C" int kcuda__matmul_glu(kbackend *kb, const float *x, int n, const kmat *w_gate, const kmat *w_up, kact act,
                                 float *up, float *out) {
    if (!w_gate || !w_up || n < 0 || (act != KACT_SILU && act != KACT_GELU_TANH)) return PEFTD_EINVAL;
    if (w_gate->dtype != w_up->dtype || w_gate->rows != w_up->rows || w_gate->cols != w_up->cols ||
        w_gate->rows <= 0 || w_gate->cols <= 0)
        return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!x || !out || !up || !w_gate->data || !w_up->data) return PEFTD_EINVAL;
    if (w_gate->rows > INT32_MAX || w_gate->cols > INT32_MAX) return PEFTD_EUNSUPPORTED;
    int64_t in = w_gate->cols, rows = w_gate->rows;
    /* the one-row shared-memory form; any other shape the three steps */
    if (n != 1 || !kcuda__dtype_ok(w_gate->dtype) || in % 8 || in > KCUDA_SX_MAX_IN || !glu_aligned(x) ||
        !glu_aligned(w_gate->data) || !glu_aligned(w_up->data))
        return glu_steps(kb, x, n, w_gate, w_up, act, up, out);
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    switch (w_gate->dtype) {
    case KDT_F32: glu_launch<KDT_F32>(cb, act, x, in, w_gate->data, w_up->data, rows, out); break;
    case KDT_F16: glu_launch<KDT_F16>(cb, act, x, in, w_gate->data, w_up->data, rows, out); break;
    case KDT_BF16: glu_launch<KDT_BF16>(cb, act, x, in, w_gate->data, w_up->data, rows, out); break;
    default: break; /* kcuda__dtype_ok above */
    }
    KCUDA_LAUNCH_CHECK();
    return 0;
}
