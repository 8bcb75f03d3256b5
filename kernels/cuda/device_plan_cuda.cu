/* kernels/cuda/device_plan_cuda.cu — what the device memory plan (kernels/device_plan.h) reads
 * from the device: cudaMemGetInfo on kb's device (kernels_cuda.h: kbackend_cuda_mem_info). */
#include "kernels/cuda/cuda_internal.h"

extern "C" {
#include "kernels/kernels_cuda.h"
}

extern "C" int kbackend_cuda_mem_info(kbackend *kb, size_t *free_bytes, size_t *total_bytes) {
    if (!kb || kb->ops->is_host || !free_bytes || !total_bytes) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    CUDA_CHECK(cudaSetDevice(cb->device));
    CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return 0;
}
