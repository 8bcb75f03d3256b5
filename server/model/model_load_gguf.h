/* server/model/model_load_gguf.h — a model from a GGUF file (llama.cpp's format): what is read,
 * and how it maps onto the same model / model_config the Hugging Face path fills.
 *
 * Which path: model_load(path) takes a file whose name ends in ".gguf", or a directory that
 * holds exactly one *.gguf file and no config.json (a directory with config.json is a Hugging
 * Face model; one with several .gguf files is refused, naming them).
 *
 * What is read (model_load_gguf_config.c): general.architecture (llama, qwen2, qwen3, phi3,
 * gemma2, gemma3) and the {arch}.* hyper-parameters, turned into the config.json that
 * transformers would read for the same model and parsed by model_config_parse, so every
 * family rule (defaults, sliding layers, Gemma's norms and soft-caps) is the HF path's own.
 * Keys llama.cpp's converter (convert_hf_to_gguf.py) does not write are given llama.cpp's
 * meaning: Gemma's softmax scale is 1/sqrt(key_length) unless {arch}.attention.scale says
 * otherwise (query_pre_attn_scalar is not in the file); Gemma 3's sliding layers follow the
 * family pattern (every 6th layer global) unless {arch}.attention.sliding_window_pattern is
 * present. Llama 3.x "llama3" rope scaling arrives as the rope_freqs.weight tensor of
 * per-pair divisors (ROPE_FREQ_FACTORS). Stop ids: tokenizer.ggml.eos_token_id, then
 * eot_token_id and eom_token_id when present; tokenizer.chat_template becomes
 * model->chat_template. {arch}.* keys that are not read are listed in cfg.ignored.
 *
 * Tensors (model_load_gguf.c): token_embd, output_norm, output (absent: tied embeddings),
 * blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up,
 * ffn_down}, attn_{q,k,v,output}.bias (Qwen2; Llama/Qwen3 with attention biases),
 * attn_q_norm / attn_k_norm (Qwen3, Gemma 3), post_attention_norm / post_ffw_norm (Gemma: its
 * ffn_norm is pre_feedforward_layernorm), attn_qkv + a fused ffn_up [2 * ff] (Phi-3, split
 * into row views as the HF path splits qkv_proj / gate_up_proj). Shapes are checked against
 * the config; a tensor the model does not use is refused by name (it would change the
 * function). Gemma's converter stores every norm weight as 1 + w already (its modify_tensors
 * adds 1 to "*norm.weight"), so those are used as they are.
 *
 * Types: one table (model_load_gguf.c, GGUF_KDT) maps ggml tensor types to kdtypes; tensors
 * are used in place in the read-only mapping (no conversion step) when the backend's
 * supports_op takes the type for the op (MATMUL for projections and output, GET_ROWS for
 * token_embd; both backends take every mapped type for both) and refused at start-up by
 * capability otherwise. An unmapped type is refused at start-up with one line naming the
 * tensor and the type.
 *
 * Q/K rows: for general.architecture "llama", llama.cpp stores attn_q / attn_k (weights and
 * biases) with the rows of each head permuted for its interleaved ("NORM") RoPE: GGUF row
 * h*hd + 2j + s holds HF row h*hd + s*hd/2 + j (LlamaModel.permute). peftd UN-PERMUTES them
 * at load, copying whole rows (a quantized row is a run of whole blocks: nothing is
 * requantized) into one host buffer, so the base is exactly the HF model's and PEFT adapters,
 * named by HF modules (q_proj, k_proj, ...) with HF row order, apply unchanged (LoRA B,
 * DoRA magnitudes, IA3 vectors). The other families use the HF ("NEOX") layout: no permutation.
 *
 * Lifetime: the mapping stays open for the model's lifetime (the weights are views into it);
 * model->gguf exposes it (e.g. for tokenizer.ggml.*). Load runs on one thread.
 */
#ifndef PEFTD_MODEL_LOAD_GGUF_H
#define PEFTD_MODEL_LOAD_GGUF_H

#include <stddef.h>

#include "server/model/gguf.h"
#include "server/model/model.h"

/* 1 with the .gguf file's path in file when path is a .gguf file or a directory holding
 * exactly one .gguf and no config.json; 0 for anything else (a Hugging Face directory);
 * negative with a message when the directory holds several .gguf files and no config.json. */
int model__gguf_resolve(const char *path, char *file, size_t cap, char *err, size_t errlen);

/* Fills m (allocated, storage set, kb set) from the GGUF file at path. On failure m is left
 * for model_free. */
int model__load_gguf(model *m, const char *path, const model_load_opts *opts, char *err, size_t errlen);

/* The metadata → model_config mapping (model_load_gguf_config.c); label names the file in
 * messages. Also fills *eos from tokenizer.ggml.* ids. */
int model__gguf_config(const gguf_file *f, const char *label, model_config *cfg, model_eos *eos, char *err,
                       size_t errlen);

/* ggml tensor type → kdtype through the one table; false when peftd has no kdtype for it. */
bool model__gguf_kdtype(uint32_t ggml_type, kdtype *out);

#endif
