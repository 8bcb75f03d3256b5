/* kernels/cpu/quant_fast.h — fast Q4_K / Q5_K quantizers for at-load conversion
 * (server/model/model_quant.c): quant_ref.c's search vectorised over the 8 sub-blocks of a
 * super-block (quant_fast.c), output bit-identical to qref_quantize_q4_k / _q5_k; and the
 * load-time reordering of Q4_K into SB8 and Q6_K into SB16 with 16-byte shuffles, bytes identical
 * to qref_reorder.
 * Thread-safe (no state but a cached CPU check); one call runs on the calling thread. */
#ifndef PEFTD_QUANT_FAST_H
#define PEFTD_QUANT_FAST_H

#include <stdint.h>

/* n floats (a multiple of 256, finite) to n/256 blocks at dst. 0, or PEFTD_EINVAL for a bad n. */
int qfast_quantize_q4_k(const float *src, void *dst, int64_t n);
int qfast_quantize_q5_k(const float *src, void *dst, int64_t n);
/* qref_reorder (quant_ref.h), the same bytes; Q4_K -> QREF_Q4_K_SB8 and Q6_K -> QREF_Q6_K_SB16
 * vectorised (SSE2), every other conversion by qref_reorder itself. */
int qfast_reorder(uint32_t to, uint32_t from, const void *src, void *dst, int64_t n);

#endif
