/* kernels/cuda/sgmv.h — SGMV shrink/expand and seg_scale on the CUDA backend (sgmv.cu). */
#ifndef PEFTD_KCUDA_SGMV_H
#define PEFTD_KCUDA_SGMV_H
#include "kernels/kernels.h"
#ifdef __cplusplus
extern "C" {
#endif
int kcuda__sgmv_shrink(kbackend *kb, const float *x, int in_dim, const ksgmv *s, float *t, int ld_t);
int kcuda__sgmv_expand(kbackend *kb, const float *t, int ld_t, const ksgmv *s, int out_dim, float *y);
int kcuda__seg_scale(kbackend *kb, float *y, int dim, int n_segs, const int32_t *seg_start,
                     const float *const *v);
#ifdef __cplusplus
}
#endif
#endif
