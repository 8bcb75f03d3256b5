/* kernels/cuda/norm_rope_elementwise.cu — the small ops of a layer on the CUDA backend:
 * get_rows (embedding gather), rmsnorm, rope, kv_store, swiglu, geglu, softcap, add, add_bias. Each launcher checks
 * its host-visible arguments as the CPU backend does; indices that live in device memory
 * (token ids, positions, KV slots) are checked by the kernels, which skip the offending
 * row and raise the backend's error flag (the next synchronize/download returns
 * PEFTD_ERANGE): never a silent out-of-bounds access.
 * Numerics follow kernels/cpu: rmsnorm sums squares in double; rope takes the angle
 * pos*inv_freq in f32 and cosf/sinf (CUDA: <= 2 ulp) as transformers does; swiglu uses
 * expf (CUDA: <= 2 ulp; the CPU's vector exp is within ~1 ulp). */
#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/norm_rope_elementwise.h"

/* Threads per block of the row kernels: 256 covers a 2048-4096-wide row in 8-16
 * elements per thread, and 8 warps hide the latency of the row's loads. */
#define NRE_THREADS 256

/* ---- get_rows ---- */

template <kdtype DT>
__global__ void k_get_rows(const void *table, int64_t rows, int64_t cols, const int32_t *ids, float *out, int *err) {
    int i = blockIdx.x;
    int32_t id = ids[i];
    if (id < 0 || id >= rows) {
        if (threadIdx.x == 0) kcuda_flag(err, KCUDA_ERR_RANGE);
        return;
    }
    const char *src = (const char *)table + (size_t)id * (size_t)cols * (DT == KDT_F32 ? 4 : 2);
    float *o = out + (int64_t)i * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = kcuda_ld<DT>(src, c);
}

/* A quantized table (the GGUF block types of qdequant.h): row ids[i] dequantized group by group,
 * the values quant_ref.c gives (a Q4_K_M file's Q6_K / Q4_K token_embd stays quantized on the
 * device instead of a dequantized f32 copy: 4.1 vs 0.82 bytes per weight for Q6_K). */
template <kdtype DT>
__global__ void k_get_rows_q(const unsigned char *table, int64_t rows, int64_t cols, const int32_t *ids, float *out,
                             int *err) {
    const int BE = qd_block_elems(DT), BB = qd_block_bytes(DT), GPB = BE / 8;
    int i = blockIdx.x;
    int32_t id = ids[i];
    if (id < 0 || id >= rows) {
        if (threadIdx.x == 0) kcuda_flag(err, KCUDA_ERR_RANGE);
        return;
    }
    const unsigned char *src = table + (size_t)id * (size_t)(cols / BE) * BB;
    float *o = out + (int64_t)i * cols;
    for (int64_t g = threadIdx.x; g < cols / 8; g += blockDim.x) {
        float v[8];
        qd_deq8(DT, src + (g / GPB) * BB, (int)(g % GPB), v);
#pragma unroll
        for (int k = 0; k < 8; k++) o[8 * g + k] = v[k];
    }
}

extern "C" int kcuda__get_rows(kbackend *kb, const kmat *table, const int32_t *ids, int n, float *out) {
    if (!table || n < 0 || !(kcuda__dtype_ok(table->dtype) || kcuda__qdtype_ok(table->dtype)) || table->rows <= 0 ||
        table->cols <= 0 || table->cols % kdtype_block_elems(table->dtype))
        return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!ids || !out || !table->data) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    dim3 g((unsigned)n), b(NRE_THREADS);
    switch (table->dtype) {
    case KDT_F32: k_get_rows<KDT_F32><<<g, b, 0, cb->stream>>>(table->data, table->rows, table->cols, ids, out, cb->d_err); break;
    case KDT_F16: k_get_rows<KDT_F16><<<g, b, 0, cb->stream>>>(table->data, table->rows, table->cols, ids, out, cb->d_err); break;
    case KDT_BF16: k_get_rows<KDT_BF16><<<g, b, 0, cb->stream>>>(table->data, table->rows, table->cols, ids, out, cb->d_err); break;
#define NRE_GET_ROWS_Q(DT)                                                                                     \
    case DT:                                                                                                   \
        k_get_rows_q<DT><<<g, b, 0, cb->stream>>>((const unsigned char *)table->data, table->rows, table->cols, ids, \
                                                  out, cb->d_err);                                             \
        break;
        QD_EACH_DTYPE(NRE_GET_ROWS_Q)
#undef NRE_GET_ROWS_Q
    default: break; /* checked above */
    }
    KCUDA_LAUNCH_CHECK();
    return 0;
}

/* ---- rmsnorm ---- */

/* Block-wide sum of a double per thread (NRE_THREADS threads). */
__device__ double nre_block_sum(double v) {
    __shared__ double part[NRE_THREADS / 32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    if (l == 0) part[w] = v;
    __syncthreads();
    double s = 0;
    for (int i = 0; i < NRE_THREADS / 32; i++) s += part[i];
    return s;
}

/* One block per row. PT > 0 (dim <= PT * NRE_THREADS): the thread's PT elements of x and of w
 * are loaded at once into registers before the sum (one memory round trip instead of a
 * strided loop's several, and no second read of x); PT == 0: any dim, two strided passes.
 * Both sum a thread's squares in the same order, so the result is the same bits. */
template <kdtype DT, int PT>
__global__ void k_rmsnorm(const float *x, const void *w, int dim, float eps, float *y) {
    const float *xr = x + (int64_t)blockIdx.x * dim;
    float *yr = y + (int64_t)blockIdx.x * dim;
    double ss = 0;
    if constexpr (PT > 0) {
        float xv[PT], wv[PT];
#pragma unroll
        for (int k = 0; k < PT; k++) {
            int i = threadIdx.x + k * NRE_THREADS;
            xv[k] = i < dim ? xr[i] : 0.0f;
            wv[k] = i < dim ? kcuda_ld<DT>(w, i) : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < PT; k++)
            if ((int)threadIdx.x + k * NRE_THREADS < dim) ss += (double)xv[k] * xv[k];
        ss = nre_block_sum(ss);
        float inv = (float)(1.0 / sqrt(ss / dim + (double)eps));
        /* Each thread rewrites only the elements it read: safe when y == x. Same rounding
         * as the CPU: (x * inv) * w. */
#pragma unroll
        for (int k = 0; k < PT; k++) {
            int i = threadIdx.x + k * NRE_THREADS;
            if (i < dim) yr[i] = __fmul_rn(__fmul_rn(xv[k], inv), wv[k]);
        }
    } else {
        for (int i = threadIdx.x; i < dim; i += NRE_THREADS) ss += (double)xr[i] * xr[i];
        ss = nre_block_sum(ss);
        float inv = (float)(1.0 / sqrt(ss / dim + (double)eps));
        for (int i = threadIdx.x; i < dim; i += NRE_THREADS)
            yr[i] = __fmul_rn(__fmul_rn(xr[i], inv), kcuda_ld<DT>(w, i));
    }
}

template <kdtype DT>
static void rmsnorm_launch(cudaStream_t st, const float *x, const void *w, int n, int dim, float eps, float *y) {
    if (dim <= 1 * NRE_THREADS) k_rmsnorm<DT, 1><<<n, NRE_THREADS, 0, st>>>(x, w, dim, eps, y);
    else if (dim <= 4 * NRE_THREADS) k_rmsnorm<DT, 4><<<n, NRE_THREADS, 0, st>>>(x, w, dim, eps, y);
    else if (dim <= 8 * NRE_THREADS) k_rmsnorm<DT, 8><<<n, NRE_THREADS, 0, st>>>(x, w, dim, eps, y);
    else if (dim <= 16 * NRE_THREADS) k_rmsnorm<DT, 16><<<n, NRE_THREADS, 0, st>>>(x, w, dim, eps, y);
    else k_rmsnorm<DT, 0><<<n, NRE_THREADS, 0, st>>>(x, w, dim, eps, y);
}

extern "C" int kcuda__rmsnorm(kbackend *kb, const float *x, const kmat *w, int n, int dim, float eps, float *y) {
    if (!w || n < 0 || dim <= 0 || !(eps >= 0.0f)) return PEFTD_EINVAL;
    if (!kcuda__dtype_ok(w->dtype) || w->rows * w->cols != dim) return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!x || !y || !w->data) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    switch (w->dtype) {
    case KDT_F32: rmsnorm_launch<KDT_F32>(cb->stream, x, w->data, n, dim, eps, y); break;
    case KDT_F16: rmsnorm_launch<KDT_F16>(cb->stream, x, w->data, n, dim, eps, y); break;
    case KDT_BF16: rmsnorm_launch<KDT_BF16>(cb->stream, x, w->data, n, dim, eps, y); break;
    default: break; /* quantized dtypes: refused by kcuda__dtype_ok above */
    }
    KCUDA_LAUNCH_CHECK();
    return 0;
}

/* ---- rope ---- */

/* Largest head_dim, as the CPU backend (kernels/cpu/rope.c). */
#define ROPE_MAX_HEAD_DIM 1024

/* Threads per rope block. */
#define ROPE_THREADS 256

/* Block (row, c) rotates pairs [c * ROPE_THREADS, (c + 1) * ROPE_THREADS) of the row's
 * n_heads * rot_dim/2 pairs: thread (h, i) takes cos/sin of pair i (from the row's table,
 * times scale) and rotates it in head h; dims [rot_dim, head_dim) are not touched (partial
 * rotary). Every pair is its own thread (one block per row walking the heads in turn kept a
 * decode step's 32 heads in one 32-thread block: 15 us on an H200 for 8 KB). */
__global__ void k_rope(float *x, const int32_t *pos, int n_heads, int head_dim, int rot_dim, const float *inv_freq,
                       const int32_t *table, int n_tables, float scale, int *err) {
    int row = blockIdx.x, half = rot_dim / 2;
    int32_t p = pos[row], t = table ? table[row] : 0;
    if (p < 0 || t < 0 || t >= n_tables) {
        if (threadIdx.x == 0 && blockIdx.y == 0) kcuda_flag(err, KCUDA_ERR_RANGE);
        return;
    }
    int pair = (int)blockIdx.y * ROPE_THREADS + (int)threadIdx.x;
    if (pair >= n_heads * half) return;
    int h = pair / half, i = pair % half;
    kcuda_rope_pair(x + ((int64_t)row * n_heads + h) * head_dim, i, half, p, inv_freq[(int64_t)t * half + i], scale);
}

int kcuda__rope_check(const float *x, const int32_t *pos, int n, int n_heads, int head_dim, int rot_dim,
                      const krope_freqs *f) {
    if (n < 0 || n_heads <= 0 || head_dim <= 0 || head_dim % 2 || head_dim > ROPE_MAX_HEAD_DIM || rot_dim <= 0 ||
        rot_dim % 2 || rot_dim > head_dim)
        return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!x || !pos || !f || !f->inv_freq || f->n_tables < 1 || !isfinite(f->scale)) return PEFTD_EINVAL;
    if ((int64_t)n_heads * (rot_dim / 2) > INT32_MAX - ROPE_THREADS) return PEFTD_EUNSUPPORTED;
    return 0;
}

extern "C" int kcuda__rope(kbackend *kb, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
                           int rot_dim, const krope_freqs *f) {
    int rc = kcuda__rope_check(x, pos, n, n_heads, head_dim, rot_dim, f);
    if (rc || n == 0) return rc;
    kcuda_backend *cb = kcuda__impl(kb);
    if ((rc = kcuda__enter_op(cb)) != 0) return rc;
    unsigned gy = kcuda__blocks((int64_t)n_heads * (rot_dim / 2), ROPE_THREADS);
    if (gy > 65535) return PEFTD_EUNSUPPORTED;
    k_rope<<<dim3((unsigned)n, gy), ROPE_THREADS, 0, cb->stream>>>(x, pos, n_heads, head_dim, rot_dim, f->inv_freq,
                                                                   f->table, f->n_tables, f->scale, cb->d_err);
    KCUDA_LAUNCH_CHECK();
    return 0;
}

/* ---- kv_store ---- */

/* One block per row: k/v row i -> cache row slots[i] (layout: kernels.h). */
__global__ void k_kv_store(const float *k, const float *v, const int32_t *slots, int kv_dim, float *kc, float *vc,
                           int *err) {
    int i = blockIdx.x;
    int32_t s = slots[i];
    if (s < 0) {
        if (threadIdx.x == 0) kcuda_flag(err, KCUDA_ERR_RANGE);
        return;
    }
    const float *kr = k + (int64_t)i * kv_dim, *vr = v + (int64_t)i * kv_dim;
    float *kd = kc + (int64_t)s * kv_dim, *vd = vc + (int64_t)s * kv_dim;
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) {
        kd[c] = kr[c];
        vd[c] = vr[c];
    }
}

extern "C" int kcuda__kv_store(kbackend *kb, const float *k, const float *v, const int32_t *slots, int n, int kv_dim,
                               kdtype kv_dtype, void *k_cache, void *v_cache) {
    if (n < 0 || kv_dim <= 0) return PEFTD_EINVAL;
    if (kv_dtype != KDT_F32) return PEFTD_EUNSUPPORTED; /* f32 K/V only (supports_op) */
    if (n == 0) return 0;
    if (!k || !v || !slots || !k_cache || !v_cache) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    k_kv_store<<<n, NRE_THREADS, 0, cb->stream>>>(k, v, slots, kv_dim, (float *)k_cache, (float *)v_cache, cb->d_err);
    KCUDA_LAUNCH_CHECK();
    return 0;
}

/* ---- swiglu, add ---- */

__global__ void k_swiglu(const float *g, const float *u, int64_t n, float *out) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = kcuda_silu_mul(g[i], u[i]);
}

/* geglu / softcap: tanh in double, rounded once (the CPU's values, up to libm vs CUDA tanh ulps). */
__global__ void k_geglu(const float *g, const float *u, int64_t n, float *out) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = kcuda_gelu_tanh_mul(g[i], u[i]);
}

__global__ void k_softcap(float *y, int64_t n, float cap) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __fmul_rn((float)tanh((double)__fdiv_rn(y[i], cap)), cap);
}

__global__ void k_add(float *y, const float *x, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __fadd_rn(y[i], x[i]);
}

/* Grid of a grid-stride elementwise kernel: enough blocks to fill the device a few
 * times over, no more (each thread then handles several elements). */
static unsigned nre_grid(const kcuda_backend *cb, int64_t n) {
    unsigned b = kcuda__blocks(n, NRE_THREADS), cap = (unsigned)cb->n_sm * 16;
    return b < cap ? b : cap;
}

/* The gated-unit launchers share their checks: kernel is k_swiglu or k_geglu. */
static int glu_launch(kbackend *kb, void (*kernel)(const float *, const float *, int64_t, float *),
                      const float *gate, const float *up, int n, int dim, float *out) {
    if (n < 0 || dim <= 0) return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!gate || !up || !out) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    int64_t total = (int64_t)n * dim;
    kernel<<<nre_grid(cb, total), NRE_THREADS, 0, cb->stream>>>(gate, up, total, out);
    KCUDA_LAUNCH_CHECK();
    return 0;
}

extern "C" int kcuda__swiglu(kbackend *kb, const float *gate, const float *up, int n, int dim, float *out) {
    return glu_launch(kb, k_swiglu, gate, up, n, dim, out);
}

extern "C" int kcuda__geglu(kbackend *kb, const float *gate, const float *up, int n, int dim, float *out) {
    return glu_launch(kb, k_geglu, gate, up, n, dim, out);
}

extern "C" int kcuda__softcap(kbackend *kb, float *y, int64_t n, float cap) {
    if (n < 0 || !(cap > 0.0f) || !isfinite(cap)) return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!y) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    k_softcap<<<nre_grid(cb, n), NRE_THREADS, 0, cb->stream>>>(y, n, cap);
    KCUDA_LAUNCH_CHECK();
    return 0;
}

extern "C" int kcuda__add(kbackend *kb, float *y, const float *x, int64_t n) {
    if (n < 0) return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!y || !x) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    k_add<<<nre_grid(cb, n), NRE_THREADS, 0, cb->stream>>>(y, x, n);
    KCUDA_LAUNCH_CHECK();
    return 0;
}

/* ---- add_bias ---- */

template <kdtype DT>
__global__ void k_add_bias(float *y, const void *b, int dim, int64_t total) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __fadd_rn(y[i], kcuda_ld<DT>(b, i % dim));
}

extern "C" int kcuda__add_bias(kbackend *kb, float *y, int n, const kmat *b) {
    if (!b || n < 0 || b->rows != 1 || b->cols <= 0 || b->cols > INT32_MAX || !kcuda__dtype_ok(b->dtype))
        return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!y || !b->data) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    int dim = (int)b->cols;
    int64_t total = (int64_t)n * dim;
    switch (b->dtype) {
    case KDT_F32: k_add_bias<KDT_F32><<<nre_grid(cb, total), NRE_THREADS, 0, cb->stream>>>(y, b->data, dim, total); break;
    case KDT_F16: k_add_bias<KDT_F16><<<nre_grid(cb, total), NRE_THREADS, 0, cb->stream>>>(y, b->data, dim, total); break;
    case KDT_BF16: k_add_bias<KDT_BF16><<<nre_grid(cb, total), NRE_THREADS, 0, cb->stream>>>(y, b->data, dim, total); break;
    default: break; /* quantized dtypes: refused by kcuda__dtype_ok above */
    }
    KCUDA_LAUNCH_CHECK();
    return 0;
}
