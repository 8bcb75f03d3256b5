/* kernels/cuda/sampling.h — the sample op on the CUDA backend (sampling.cu). */
#ifndef PEFTD_KCUDA_SAMPLING_H
#define PEFTD_KCUDA_SAMPLING_H
#include "kernels/kernels.h"
#ifdef __cplusplus
extern "C" {
#endif
int kcuda__sample(kbackend *kb, const ksample_args *a);
#ifdef __cplusplus
}
#endif
#endif
