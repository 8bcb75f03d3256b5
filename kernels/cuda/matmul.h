/* kernels/cuda/matmul.h — y = beta*y + x·wᵀ on the CUDA backend (matmul.cu). */
#ifndef PEFTD_KCUDA_MATMUL_H
#define PEFTD_KCUDA_MATMUL_H
#include "kernels/kernels.h"
#ifdef __cplusplus
extern "C" {
#endif
int kcuda__matmul(kbackend *kb, const float *x, int n, const kmat *w, float *y, float beta);
/* kbackend_ops.matmul_group: one GEMV launch for decode-sized groups of one dense dtype. */
int kcuda__matmul_group(kbackend *kb, const float *x, int n, int count, const kmat *const *w, float *const *y,
                        float beta);
#ifdef __cplusplus
}
#endif
#endif
