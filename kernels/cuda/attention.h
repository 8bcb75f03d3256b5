/* kernels/cuda/attention.h — paged causal attention on the CUDA backend (attention.cu). */
#ifndef PEFTD_KCUDA_ATTENTION_H
#define PEFTD_KCUDA_ATTENTION_H
#include "kernels/kernels.h"
#ifdef __cplusplus
extern "C" {
#endif
int kcuda__attention(kbackend *kb, const kattn_args *a);
#ifdef __cplusplus
}
#endif
#endif
