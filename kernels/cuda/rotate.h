/* kernels/cuda/rotate.h — seg_rotate (OFT / BOFT input rotations) on the CUDA backend (rotate.cu). */
#ifndef PEFTD_KCUDA_ROTATE_H
#define PEFTD_KCUDA_ROTATE_H
#include "kernels/kernels.h"
#ifdef __cplusplus
extern "C" {
#endif
int kcuda__seg_rotate(kbackend *kb, const float *x, int dim, const ksegrot *s, float *y);
#ifdef __cplusplus
}
#endif
#endif
