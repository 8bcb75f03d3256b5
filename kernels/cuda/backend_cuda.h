/* kernels/cuda/backend_cuda.h — the CUDA backend object (backend_cuda.cu); its public
 * API is kernels/kernels_cuda.h, the shared internals cuda_internal.h. */
#ifndef PEFTD_KCUDA_BACKEND_H
#define PEFTD_KCUDA_BACKEND_H
#include "kernels/kernels_cuda.h"
#endif
