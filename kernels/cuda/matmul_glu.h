/* kernels/cuda/matmul_glu.h — matmul_glu on the CUDA backend (matmul_glu.cu). */
#ifndef PEFTD_KCUDA_MATMUL_GLU_H
#define PEFTD_KCUDA_MATMUL_GLU_H
#include "kernels/kernels.h"
#ifdef __cplusplus
extern "C" {
#endif
int kcuda__matmul_glu(kbackend *kb, const float *x, int n, const kmat *w_gate, const kmat *w_up, kact act,
                      float *up, float *out);
#ifdef __cplusplus
}
#endif
#endif
