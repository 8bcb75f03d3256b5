/* kernels/cuda/cuda_runtime.cu — what every CUDA op file shares: the error path
 * (CUDA_CHECK/CUBLAS_CHECK -> kcuda__fail -> PEFTD_EBACKEND, never exit()), entering an op
 * (device, stream owner) and the growable scratch buffer. A leaf: it calls nothing of the
 * op files or of backend_cuda.cu (which owns the backend object and its table). */
#include "kernels/cuda/cuda_internal.h"

int kcuda__fail(const char *what, const char *err, const char *file, int line) {
    LOGE("cuda: %s failed at %s:%d: %s", what, file, line, err ? err : "?");
    return PEFTD_EBACKEND;
}

const char *kcuda__cublas_str(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "alloc failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "arch mismatch";
    case CUBLAS_STATUS_MAPPING_ERROR: return "mapping error";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "license error";
    default: return "unknown cublas status";
    }
}

int kcuda__is_owner(kcuda_backend *cb) {
    return __atomic_load_n(&cb->has_owner, __ATOMIC_ACQUIRE) &&
           pthread_equal(__atomic_load_n(&cb->owner, __ATOMIC_RELAXED), pthread_self());
}

int kcuda__enter_op(kcuda_backend *cb) {
    CUDA_CHECK(cudaSetDevice(cb->device));
    if (!kcuda__is_owner(cb)) {
        __atomic_store_n(&cb->owner, pthread_self(), __ATOMIC_RELAXED);
        __atomic_store_n(&cb->has_owner, 1, __ATOMIC_RELEASE);
    }
    return 0;
}

int kcuda__scratch_reserve(kcuda_backend *cb, size_t bytes) {
    if (bytes <= cb->scratch_cap) return 0;
    size_t cap = cb->scratch_cap * 2 > bytes ? cb->scratch_cap * 2 : bytes;
    /* Ops already queued may still read the old buffer: wait for them first. */
    CUDA_CHECK(cudaStreamSynchronize(cb->stream));
    if (cb->scratch) CUDA_CHECK(cudaFree(cb->scratch));
    cb->scratch = NULL;
    cb->scratch_cap = 0;
    CUDA_CHECK(cudaMalloc(&cb->scratch, cap));
    cb->scratch_cap = cap;
    return 0;
}
