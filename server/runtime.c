/* server/runtime.c — brings up the resident base model (see runtime.h): backend choice,
 * weights, tokenizer, engine; and takes it down in the reverse order. */
#include "server/runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/kernels_cuda.h"
#include "lib/log.h"
#include "server/model/model_quant.h"

void runtime_close(runtime *rt) {
    engine_free(rt->e);
    model_free(rt->m);
    tokenizer_free(rt->tok);
    kbackend_destroy(rt->kb);
    memset(rt, 0, sizeof *rt);
}

/* The backend named by `backend` (already checked to be auto, cpu or cuda), or NULL with
 * the reason on stderr. */
static kbackend *open_backend(const char *backend, int threads, bool fast_prefill) {
    kbackend *kb = NULL;
#ifdef PEFTD_CUDA
    char err[1024] = "";
    if (!strcmp(backend, "cuda") || (!strcmp(backend, "auto") && kbackend_cuda_available())) {
        kb = kbackend_cuda_create(0, err, sizeof err);
        if (!kb) {
            fprintf(stderr, "peftd: cannot create the CUDA backend: %s\n", err);
            return NULL;
        }
        LOGI("backend: cuda");
        return kb;
    } else if (!strcmp(backend, "auto")) {
        LOGI("backend: cpu (no CUDA device: running on the CPU backend)");
    } else {
        LOGI("backend: cpu (as configured)");
    }
#else
    if (!strcmp(backend, "cuda")) {
        fprintf(stderr, "peftd: backend \"cuda\" asked for, but this build has no CUDA backend\n");
        return NULL;
    }
    LOGI("backend: cpu (this build has no CUDA backend)");
#endif
    kb = kbackend_cpu_create(threads);
    if (!kb) {
        fprintf(stderr, "peftd: cannot create the CPU backend\n");
        return NULL;
    }
    kbackend_cpu_set_fast_prefill(kb, fast_prefill);
    return kb;
}

/* config.json fields (GGUF: {arch}.* metadata keys) peftd does not read (and that may matter):
 * one line each, never dropped silently (model_config_check.c decides which fields cannot
 * matter). */
static void log_ignored_fields(const model *m) {
    const model_config *c = &m->cfg;
    const char *src = m->gguf ? "GGUF metadata" : "config.json";
    for (int i = 0; i < c->n_ignored && i < MODEL_MAX_IGNORED; i++)
        LOGW("%s: ignored %s \"%s\" (peftd does not implement it: if it changes the model, outputs differ from "
             "transformers)", src, m->gguf ? "key" : "field", c->ignored[i]);
    if (c->n_ignored > MODEL_MAX_IGNORED)
        LOGW("%s: %d more ignored fields (not named)", src, c->n_ignored - MODEL_MAX_IGNORED);
}

/* The tokenizer: tokenizer.json (+ tokenizer_config.json) in the model directory — for a GGUF
 * model, the directory holding the .gguf. A GGUF without one beside it needs the tokenizer from
 * its tokenizer.ggml.* metadata: the one call site for that is marked below. */
int runtime_tokenizer_load(const model *m, tokenizer **out, char *err, size_t errlen) {
    char path[sizeof m->dir + 32];
    snprintf(path, sizeof path, "%s/tokenizer.json", m->dir);
    if (!m->gguf || access(path, F_OK) == 0) return tokenizer_load(m->dir, out, err, errlen);
    return tokenizer_load_gguf(m->gguf, out, err, errlen);
}

int runtime_open(runtime *rt, const char *model_dir, int threads, bool fast_prefill, const char *backend,
                 const engine_config *ec) {
    return runtime_open_weights(rt, model_dir, threads, fast_prefill, backend, NULL, NULL, false, ec);
}

int runtime_open_weights(runtime *rt, const char *model_dir, int threads, bool fast_prefill, const char *backend,
                         const char *weights, const char *weights_cache, bool no_mmap, const engine_config *ec) {
    char err[1024] = "";
    model_load_opts mo = {.weights = -1, .threads = threads, .no_mmap = no_mmap, .weights_cache = weights_cache};
    if (model_weights_parse(weights, &mo.weights) < 0) {
        fprintf(stderr, "peftd: weights must be stored, bf16, q8_0 or q4_k, got '%s'\n", weights);
        return -1;
    }
    memset(rt, 0, sizeof *rt);
    const char *env = getenv("PEFTD_BACKEND");
    if (env && *env) backend = env;
    if (!backend || !*backend) backend = "auto";
    if (strcmp(backend, "auto") && strcmp(backend, "cpu") && strcmp(backend, "cuda")) {
        fprintf(stderr, "peftd: backend must be auto, cpu or cuda, got '%s'\n", backend);
        return -1;
    }
    if (!(rt->kb = open_backend(backend, threads, fast_prefill))) return -1;
    int st = model_load_ex(model_dir, rt->kb, &mo, &rt->m, err, sizeof err);
    if (st < 0) {
        fprintf(stderr, "peftd: cannot load model from %s: %s\n", model_dir, err);
        goto fail;
    }
    log_ignored_fields(rt->m);
    st = runtime_tokenizer_load(rt->m, &rt->tok, err, sizeof err);
    if (st < 0) {
        fprintf(stderr, "peftd: cannot load tokenizer from %s: %s\n", model_dir, err);
        goto fail;
    }
    if (tokenizer_vocab_size(rt->tok) > rt->m->cfg.vocab_size) {
        fprintf(stderr, "peftd: tokenizer has %d tokens but the model only %d\n", tokenizer_vocab_size(rt->tok),
                rt->m->cfg.vocab_size);
        goto fail;
    }
    st = engine_create(ec, rt->m, rt->kb, rt->tok, &rt->e, err, sizeof err);
    if (st < 0) {
        fprintf(stderr, "peftd: cannot create the engine: %s\n", err);
        goto fail;
    }
    return 0;
fail:
    runtime_close(rt);
    return -1;
}

int runtime_start(runtime *rt) {
    if (engine_start(rt->e) < 0) {
        fprintf(stderr, "peftd: cannot start the engine thread\n");
        return -1;
    }
    return 0;
}
