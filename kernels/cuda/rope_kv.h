/* kernels/cuda/rope_kv.h — rope_kv_store on the CUDA backend (rope_kv.cu). */
#ifndef PEFTD_KCUDA_ROPE_KV_H
#define PEFTD_KCUDA_ROPE_KV_H
#include "kernels/kernels.h"
#ifdef __cplusplus
extern "C" {
#endif
int kcuda__rope_kv_store(kbackend *kb, float *q, float *k, const float *v, const int32_t *pos, int n, int n_heads,
                         int n_kv_heads, int head_dim, int rot_dim, const krope_freqs *f, const int32_t *slots,
                         kdtype kv_dtype, void *k_cache, void *v_cache);
#ifdef __cplusplus
}
#endif
#endif
