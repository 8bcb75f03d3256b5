/* kernels/cuda/norm_rope_elementwise.h — rmsnorm, rope, swiglu, geglu, softcap, add, get_rows and
 * kv_store on the CUDA backend (norm_rope_elementwise.cu). */
#ifndef PEFTD_KCUDA_NORM_ROPE_ELEMENTWISE_H
#define PEFTD_KCUDA_NORM_ROPE_ELEMENTWISE_H
#include "kernels/kernels.h"
#ifdef __cplusplus
extern "C" {
#endif
int kcuda__get_rows(kbackend *kb, const kmat *table, const int32_t *ids, int n, float *out);
int kcuda__rmsnorm(kbackend *kb, const float *x, const kmat *w, int n, int dim, float eps, float *y);
int kcuda__rope(kbackend *kb, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
                int rot_dim, const krope_freqs *f);
/* rope's host-side argument checks (rope and rope_kv_store share them): 0, PEFTD_EINVAL or
 * PEFTD_EUNSUPPORTED. */
int kcuda__rope_check(const float *x, const int32_t *pos, int n, int n_heads, int head_dim, int rot_dim,
                      const krope_freqs *f);
int kcuda__kv_store(kbackend *kb, const float *k, const float *v, const int32_t *slots, int n,
                    int kv_dim, kdtype kv_dtype, void *k_cache, void *v_cache);
int kcuda__swiglu(kbackend *kb, const float *gate, const float *up, int n, int dim, float *out);
int kcuda__add(kbackend *kb, float *y, const float *x, int64_t n);
int kcuda__geglu(kbackend *kb, const float *gate, const float *up, int n, int dim, float *out);
int kcuda__softcap(kbackend *kb, float *y, int64_t n, float cap);
int kcuda__add_bias(kbackend *kb, float *y, int n, const kmat *b);
#ifdef __cplusplus
}
#endif
#endif
