/* server/model/model_load_internal.h — what model_load.c (Hugging Face directories) and
 * model_load_gguf*.c (GGUF files) share: the model's private storage and the two steps every
 * load ends with (asking the backend about each weight, the upload to a non-host backend).
 * Not for use outside server/model/model_load*.c. */
#ifndef PEFTD_MODEL_LOAD_INTERNAL_H
#define PEFTD_MODEL_LOAD_INTERNAL_H

#include "server/model/gguf.h"
#include "server/model/model.h"

struct model_storage {
    struct st_file **shards; /* mapped safetensors files (open for the model's lifetime: host_layers) */
    char **shard_names;  /* plain file names inside the directory */
    int n_shards;
    void *device;        /* one backend allocation holding every weight (non-CPU) */
    model_layer *host_layers; /* non-CPU: the layers' host views, taken before the upload */
    float *gemma_norms;  /* Gemma: every norm weight as f32 1 + w (the views point here) */
    void *converted;     /* at-load "weights": the converted projections (the views point here) */
    void *reordered;     /* weights in the backend's preferred_dtype (model_reorder_projections) */
    gguf_file *gguf;     /* GGUF: the mapped file (views point into it), closed by model_free */
    void *gguf_host;     /* GGUF: un-permuted Q/K rows and a dequantized embedding, if any */
    char *chat_template; /* GGUF: tokenizer.chat_template, NUL-terminated */
};

/* Every weight asked of the backend (supports_op for its op family and dtype); one line in err
 * naming the weight and dtype when it says no. */
int model__check_ops(model *m, char *err, size_t errlen);
/* Non-host backends: one allocation, every weight copied in; host_layers keeps the host views. */
int model__upload(model *m, char *err, size_t errlen);
/* At-load "weights" conversion (opts->weights >= 0), asked of the backend first. */
int model__convert(model *m, const model_load_opts *opts, char *err, size_t errlen);

#endif
