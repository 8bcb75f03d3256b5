/* kernels/cuda/backend_cuda.cu — the CUDA backend object: device detection, its
 * kbackend_ops table, memory (cudaMalloc; copies on the backend's streams), the error
 * path's flag (kernels report out-of-range device-resident indices through a device error
 * flag read here). What the op files share (the error path, entering an op, scratch) is
 * in cuda_runtime.cu, below them all.
 *
 * Streams: `stream` carries every op and the owner thread's uploads, so those stay in
 * issue order with the ops (a per-step upload of token ids can never overtake the
 * previous step's kernels still reading the buffer). Threads follow kernels.h: every
 * call here is engine-only (the generic owner check in kernels.c enforces it). Within
 * that, the "stream owner" is the thread that issued the last op (the engine thread);
 * copies made before the first op (model load on the bring-up thread) go on `up_stream`
 * and are waited for before returning, so they are complete when the engine starts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/backend_cuda.h"
#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/matmul_glu.h"
#include "kernels/cuda/norm_rope_elementwise.h"
#include "kernels/cuda/rope_kv.h"
#include "kernels/cuda/rotate.h"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/sgmv.h"

/* cudaMalloc granularity is 256 B or more anyway; a 0-byte request still gets a valid,
 * unique, freeable pointer (as on the CPU backend). */
#define KCUDA_MIN_ALLOC 256

/* Reads and clears the device error flag; call after `stream` is synchronised. */
static int kcuda_take_flag(kcuda_backend *cb) {
    int f = *cb->h_err;
    if (!f) return 0;
    *cb->h_err = 0;
    CUDA_CHECK(cudaMemsetAsync(cb->d_err, 0, sizeof(int), cb->stream));
    CUDA_CHECK(cudaStreamSynchronize(cb->stream));
    LOGW("cuda: a kernel found a device-resident index out of range (flag %d)", f);
    return PEFTD_ERANGE;
}

static void *kcuda_alloc(kbackend *kb, size_t bytes) {
    kcuda_backend *cb = kcuda__impl(kb);
    void *p = NULL;
    if (cudaSetDevice(cb->device) != cudaSuccess) return NULL;
    cudaError_t e = cudaMalloc(&p, bytes < KCUDA_MIN_ALLOC ? KCUDA_MIN_ALLOC : bytes);
    if (e != cudaSuccess) {
        LOGW("cuda: cudaMalloc(%zu) failed: %s", bytes, cudaGetErrorString(e));
        (void)cudaGetLastError(); /* out-of-memory is not sticky: clear it */
        return NULL;
    }
    return p;
}

static void kcuda_free(kbackend *kb, void *p) {
    kcuda_backend *cb = kcuda__impl(kb);
    if (!p) return;
    (void)cudaSetDevice(cb->device);
    /* cudaFree waits for the device to finish work that may still use p. */
    cudaError_t e = cudaFree(p);
    if (e != cudaSuccess) LOGE("cuda: cudaFree failed: %s", cudaGetErrorString(e));
}

/* Copy (or zero) from a thread that is not the owner: on up_stream, waited for. */
static int kcuda_side_copy(kcuda_backend *cb, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    pthread_mutex_lock(&cb->up_mu);
    cudaError_t e = src ? cudaMemcpyAsync(dst, src, bytes, kind, cb->up_stream)
                        : cudaMemsetAsync(dst, 0, bytes, cb->up_stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(cb->up_stream);
    pthread_mutex_unlock(&cb->up_mu);
    if (e != cudaSuccess) return kcuda__fail(src ? "cudaMemcpyAsync (upload stream)" : "cudaMemsetAsync (upload stream)",
                                             cudaGetErrorString(e), __FILE__, __LINE__);
    return 0;
}

/* True when p is page-locked host memory: an async copy from it really is asynchronous,
 * so the owner's upload must wait for it (the contract lets the caller reuse src at once). */
static int kcuda_is_pinned(const void *p) {
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return at.type == cudaMemoryTypeHost;
}

static int kcuda_upload(kbackend *kb, void *dst, const void *src, size_t bytes) {
    kcuda_backend *cb = kcuda__impl(kb);
    if (bytes && (!dst || !src)) return PEFTD_EINVAL;
    if (!bytes) return 0;
    CUDA_CHECK(cudaSetDevice(cb->device));
    if (!kcuda__is_owner(cb)) return kcuda_side_copy(cb, dst, src, bytes, cudaMemcpyHostToDevice);
    /* From pageable memory cudaMemcpyAsync returns once src has been staged, so src may
     * be reused on return while the copy stays ordered with the ops on `stream`. */
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cb->stream));
    if (kcuda_is_pinned(src)) CUDA_CHECK(cudaStreamSynchronize(cb->stream));
    return 0;
}

static int kcuda_download(kbackend *kb, void *dst, const void *src, size_t bytes) {
    kcuda_backend *cb = kcuda__impl(kb);
    if (bytes && (!dst || !src)) return PEFTD_EINVAL;
    CUDA_CHECK(cudaSetDevice(cb->device));
    /* Always on `stream` (the bytes may be an op's result), with the error flag. */
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cb->stream));
    CUDA_CHECK(cudaMemcpyAsync(cb->h_err, cb->d_err, sizeof(int), cudaMemcpyDeviceToHost, cb->stream));
    CUDA_CHECK(cudaStreamSynchronize(cb->stream));
    return kcuda_take_flag(cb);
}

static int kcuda_memset0(kbackend *kb, void *dst, size_t bytes) {
    kcuda_backend *cb = kcuda__impl(kb);
    if (bytes && !dst) return PEFTD_EINVAL;
    if (!bytes) return 0;
    CUDA_CHECK(cudaSetDevice(cb->device));
    if (!kcuda__is_owner(cb)) return kcuda_side_copy(cb, dst, NULL, bytes, cudaMemcpyHostToDevice);
    CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, cb->stream));
    return 0;
}

static int kcuda_synchronize(kbackend *kb) {
    kcuda_backend *cb = kcuda__impl(kb);
    CUDA_CHECK(cudaSetDevice(cb->device));
    CUDA_CHECK(cudaMemcpyAsync(cb->h_err, cb->d_err, sizeof(int), cudaMemcpyDeviceToHost, cb->stream));
    CUDA_CHECK(cudaStreamSynchronize(cb->stream));
    return kcuda_take_flag(cb);
}

static int kcuda_copy(kbackend *kb, void *dst, const void *src, size_t bytes) {
    kcuda_backend *cb = kcuda__impl(kb);
    if (bytes && (!dst || !src)) return PEFTD_EINVAL;
    if (!bytes) return 0;
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cb->stream));
    return 0;
}

/* Every op reads weights in each float dtype (kcuda_ld); the quantized dtypes (the GGUF block
 * types of qdequant.h) are read by the matmul and the embedding gather only, so the model
 * loader refuses them elsewhere by capability. */
static bool kcuda_supports_op(const kbackend *kb, kop op, kdtype dt) {
    (void)kb;
    if ((unsigned)op >= KOP_COUNT) return false;
    if (op == KOP_SAMPLE || op == KOP_SEG_ROTATE) return dt == KDT_F32; /* f32 logits / rotations */
    if (op == KOP_KV_STORE || op == KOP_ATTENTION) return dt == KDT_F32; /* the K/V cache's dtype: f32 only */
    return kcuda__dtype_ok(dt) || ((op == KOP_MATMUL || op == KOP_GET_ROWS) && kcuda__qdtype_ok(dt));
}

static size_t kcuda_sgmv_workspace(const kbackend *kb, int n_rows, int max_rank) {
    (void)kb;
    return n_rows > 0 && max_rank > 0 ? (size_t)n_rows * (size_t)max_rank * sizeof(float) : 0;
}

static void kcuda_destroy(kbackend *kb) {
    kcuda_backend *cb = kcuda__impl(kb);
    (void)cudaSetDevice(cb->device);
    if (cb->stream) (void)cudaStreamSynchronize(cb->stream);
    if (cb->blas) cublasDestroy(cb->blas);
    if (cb->scratch) cudaFree(cb->scratch);
    if (cb->d_err) cudaFree(cb->d_err);
    if (cb->h_err) cudaFreeHost(cb->h_err);
    if (cb->up_stream) cudaStreamDestroy(cb->up_stream);
    if (cb->stream) cudaStreamDestroy(cb->stream);
    pthread_mutex_destroy(&cb->up_mu);
    free(cb);
}

static const kbackend_ops kcuda_ops = {
    /* .name = */ "cuda",
    /* .destroy = */ kcuda_destroy,
    /* .alloc = */ kcuda_alloc,
    /* .free = */ kcuda_free,
    /* .upload = */ kcuda_upload,
    /* .download = */ kcuda_download,
    /* .memset0 = */ kcuda_memset0,
    /* .synchronize = */ kcuda_synchronize,
    /* .get_rows = */ kcuda__get_rows,
    /* .matmul = */ kcuda__matmul,
    /* .rmsnorm = */ kcuda__rmsnorm,
    /* .rope = */ kcuda__rope,
    /* .kv_store = */ kcuda__kv_store,
    /* .attention = */ kcuda__attention,
    /* .swiglu = */ kcuda__swiglu,
    /* .add = */ kcuda__add,
    /* .sgmv_shrink = */ kcuda__sgmv_shrink,
    /* .sgmv_expand = */ kcuda__sgmv_expand,
    /* .seg_scale = */ kcuda__seg_scale,
    /* .is_host = */ false,
    /* .copy = */ kcuda_copy,
    /* .supports_op = */ kcuda_supports_op,
    /* .sgmv_workspace = */ kcuda_sgmv_workspace,
    /* .add_bias = */ kcuda__add_bias,
    /* .geglu = */ kcuda__geglu,
    /* .softcap = */ kcuda__softcap,
    /* .sample = */ kcuda__sample,
    /* .seg_rotate = */ kcuda__seg_rotate,
    /* .matmul_group = */ kcuda__matmul_group,
    /* .preferred_dtype = */ NULL, /* weights as stored */
    /* .rope_kv_store = */ kcuda__rope_kv_store,
    /* .matmul_glu = */ kcuda__matmul_glu,
};

extern "C" int kbackend_cuda_available(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0;
}

#define KCUDA_CREATE_CHECK(expr, what)                                                     \
    do {                                                                                   \
        if ((expr) != cudaSuccess) {                                                       \
            cudaError_t e_ = cudaGetLastError();                                           \
            snprintf(err, errlen, "%s: %s", what, cudaGetErrorString(e_));                 \
            goto fail;                                                                     \
        }                                                                                  \
    } while (0)

extern "C" kbackend *kbackend_cuda_create(int device, char *err, size_t errlen) {
    char dummy[1];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = 0;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        snprintf(err, errlen, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "count 0");
        (void)cudaGetLastError();
        return NULL;
    }
    if (device < 0 || device >= n) {
        snprintf(err, errlen, "CUDA device %d out of range (%d present)", device, n);
        return NULL;
    }
    kcuda_backend *cb = (kcuda_backend *)calloc(1, sizeof *cb);
    if (!cb) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    kbackend__init(&cb->base, &kcuda_ops, cb);
    cb->device = device;
    pthread_mutex_init(&cb->up_mu, NULL);
    cudaDeviceProp prop;
    KCUDA_CREATE_CHECK(cudaSetDevice(device), "cudaSetDevice");
    KCUDA_CREATE_CHECK(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    if (prop.major < 8) {
        snprintf(err, errlen, "CUDA device %d (%s) is sm_%d%d: this build needs sm_80 or newer", device, prop.name,
                 prop.major, prop.minor);
        goto fail;
    }
    cb->n_sm = prop.multiProcessorCount;
    KCUDA_CREATE_CHECK(cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    KCUDA_CREATE_CHECK(cudaStreamCreateWithFlags(&cb->up_stream, cudaStreamNonBlocking), "cudaStreamCreate");
    KCUDA_CREATE_CHECK(cudaMalloc(&cb->d_err, sizeof(int)), "cudaMalloc");
    KCUDA_CREATE_CHECK(cudaMallocHost(&cb->h_err, sizeof(int)), "cudaMallocHost");
    *cb->h_err = 0;
    KCUDA_CREATE_CHECK(cudaMemset(cb->d_err, 0, sizeof(int)), "cudaMemset");
    {
        cublasStatus_t s = cublasCreate(&cb->blas);
        if (s != CUBLAS_STATUS_SUCCESS) {
            cb->blas = NULL;
            snprintf(err, errlen, "cublasCreate: %s", kcuda__cublas_str(s));
            goto fail;
        }
        /* fp32 math stays fp32: no TF32 (it would change f32-weight results by ~1e-3). */
        if (cublasSetStream(cb->blas, cb->stream) != CUBLAS_STATUS_SUCCESS ||
            cublasSetMathMode(cb->blas, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {
            snprintf(err, errlen, "cublasSetStream/MathMode failed");
            goto fail;
        }
    }
    LOGI("cuda backend: device %d %s (sm_%d%d, %d SMs, %.1f GiB)", device, prop.name, prop.major, prop.minor,
         cb->n_sm, (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    return &cb->base;
fail:
    kcuda_destroy(&cb->base);
    return NULL;
}
