/* server/runtime.h — the resident base model of one daemon or one offline run: the kernels
 * backend (auto/cpu/cuda), the model's weights, its tokenizer and the engine over them,
 * opened together and closed together. runtime_open leaves the caller's thread owning the
 * backend (kernels.h), so it can still place weights (an adapter given on the command line)
 * before runtime_start hands the backend to the engine thread. */
#ifndef PEFTD_RUNTIME_H
#define PEFTD_RUNTIME_H

#include <stdbool.h>

#include "kernels/kernels.h"
#include "server/engine/engine.h"
#include "server/model/model.h"
#include "server/text/tokenizer.h"

typedef struct {
    kbackend *kb;
    model *m;
    tokenizer *tok;
    engine *e;
} runtime;

/* Opens the backend, loads model_dir's weights and tokenizer, creates the engine with ec
 * (not started: runtime_start). backend: "auto" (CUDA when a device is usable, else CPU with one log
 * line), "cpu" or "cuda" (no fallback: a clean start-up failure); the PEFTD_BACKEND
 * environment variable overrides it. threads and fast_prefill apply to the CPU backend.
 * Returns 0, or -1 with the reason on stderr and *rt zeroed. */
int runtime_open(runtime *rt, const char *model_dir, int threads, bool fast_prefill, const char *backend,
                 const engine_config *ec);
/* runtime_open with the at-load weight conversion: weights "stored" (or NULL), "bf16", "q8_0"
 * or "q4_k" (server/model/model_quant.h); weights_cache: the conversion's cache directory
 * (NULL: none; model_load_opts.weights_cache); no_mmap: the weight files read into huge-page
 * memory instead of mapped (model_load_opts.no_mmap). */
int runtime_open_weights(runtime *rt, const char *model_dir, int threads, bool fast_prefill, const char *backend,
                         const char *weights, const char *weights_cache, bool no_mmap, const engine_config *ec);
/* Starts the engine thread, which owns the backend from then on. 0, or -1 with the reason
 * on stderr (the runtime stays open: runtime_close it). */
/* The tokenizer of a loaded model: tokenizer.json (+ tokenizer_config.json) in m->dir when
 * there is one, else, for a GGUF model, the file's tokenizer.ggml.* metadata
 * (tokenizer_load_gguf). The one rule every program that loads a model uses. */
int runtime_tokenizer_load(const model *m, tokenizer **out, char *err, size_t errlen);

int runtime_start(runtime *rt);
/* Frees the engine (stopping its thread), the model, the tokenizer and the backend, in
 * that order; a zeroed runtime is a no-op. */
void runtime_close(runtime *rt);

#endif
