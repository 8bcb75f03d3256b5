/* server/generate.h — `peftd generate`: offline generation of one prompt to stdout through
 * the same runtime and engine as the daemon (no server). The command line is parsed in
 * server/main.c; this runs it on the calling thread. */
#ifndef PEFTD_GENERATE_H
#define PEFTD_GENERATE_H

#include <stdbool.h>

typedef struct {
    const char *model_dir, *prompt;
    const char *adapter_dir; /* NULL: the base model */
    const char *weights;     /* NULL / "stored", "bf16", "q8_0", "q4_k" (model_quant.h) */
    bool no_mmap;            /* --no-mmap: weight files read into memory (model_load_opts) */
    long max_tokens, seed, top_k, threads;
    double temperature, top_p, adapter_scale;
    bool has_seed, scale_set; /* scale_set: --adapter-scale was given (needs --adapter) */
} generate_options;

/* Runs the generation and returns the process exit status: 0 done, 1 failure (reason on
 * stderr), 2 a refused option value. */
int generate_run(const generate_options *o);

#endif
