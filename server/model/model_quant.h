/* server/model/model_quant.h — at-load conversion of a loaded model's layer projections to
 * another weight dtype (config "weights" / `peftd serve --weights`): q8_0, q4_k, or bf16.
 *
 * The rule (documented in README.md):
 *   - the seven layer projections (q, k, v, o, gate, up, down; Phi-3's fused qkv / gate_up
 *     as their row views) are converted; a projection whose in-features are not a multiple
 *     of the format's block (32 for q8_0, 256 for q4_k) is logged by name (stories260K's
 *     down_proj, 172 columns, is one) and becomes F16 under q8_0 (llama.cpp's converter falls
 *     back the same way), stays in its stored dtype otherwise;
 *   - q8_0 is llama.cpp's `convert_hf_to_gguf.py --outtype q8_0`, tensor for tensor: it also
 *     converts embed_tokens and an untied lm_head (same block rule), when the backend's
 *     supports_op gathers / multiplies the new dtype, so an HF directory loaded with q8_0 holds
 *     the bytes of the converter's Q8_0 GGUF of the same weights (test_model_gguf.c);
 *   - q4_k and bf16 keep embed_tokens and lm_head as stored (llama.cpp's Q4_K_M also keeps the
 *     output matrix at higher precision); norms and biases always stay as stored;
 *   - adapters (LoRA, DoRA, IA3, ...) keep their own dtype and apply on top: they read the
 *     base only through matmul / the gather, except DoRA's norms, which dequantize it.
 * Quantization matches kernels/cpu/quant_ref.c (Q8_0 bit-identical to gguf-py's quantize). */
#ifndef PEFTD_MODEL_QUANT_H
#define PEFTD_MODEL_QUANT_H

#include <stddef.h>

#include "server/model/model.h"

/* Converts m's float weights under the rule above (host views, before any upload; weights
 * already in a quantized dtype stay as they are) to dt into one new host buffer
 * (*buf, 64-byte aligned; caller frees it after the model). dt: KDT_Q8_0, KDT_Q4_K or
 * KDT_BF16 (the "weights" options), or KDT_Q4_0, KDT_Q5_K, KDT_Q6_K (not offered as options:
 * tests use them to put every GGUF block type under a model). cache_dir (NULL: none): a
 * quantized conversion is read from there when it holds this one, else written there after it
 * (model_quant_cache.h). Logs the time taken, whether it came from the cache, and the bytes
 * before/after. */
int model_quantize_projections(model *m, kdtype dt, int n_threads, const char *cache_dir, void **buf, char *err,
                               size_t errlen);

/* Reorders the weights whose dtype the backend runs faster in another layout of the same blocks
 * (kbackend_ops.preferred_dtype for MATMUL: the CPU's AVX2 path takes Q4_K as KDT_Q4_K_SB8, Q6_K
 * as KDT_Q6_K_SB16) into one new host buffer (*buf, as above; NULL when nothing is reordered):
 * the layer projections and the lm_head — a tied one with the embedding it is, when the
 * backend's GET_ROWS takes the new dtype (the CPU's does: it dequantizes rows); an untied
 * embedding stays as stored. Results are bit-identical to the stored layout's
 * (the kernels' canonical order); adapters that read the base (DoRA's norms) dequantize either.
 * Host views, before any upload; after model_quantize_projections. Logs the time taken. */
int model_reorder_projections(model *m, int n_threads, void **buf, char *err, size_t errlen);

/* "stored" → *dt = -1 (keep); "bf16", "q8_0", "q4_k" → that dtype. PEFTD_EINVAL otherwise. */
int model_weights_parse(const char *s, int *dt);

#endif
