/* kernels/cuda/qmatmul.h — y = beta*y + x·wᵀ for Q8_0 / Q4_K weights on the CUDA backend
 * (qmatmul.cu). kcuda__matmul dispatches here for those dtypes. */
#ifndef PEFTD_KCUDA_QMATMUL_H
#define PEFTD_KCUDA_QMATMUL_H
#include "kernels/kernels.h"
#ifdef __cplusplus
extern "C" {
#endif
int kcuda__qmatmul(kbackend *kb, const float *x, int n, const kmat *w, float *y, float beta);
#ifdef __cplusplus
}
#endif
#endif
