/* server/model/model_eos.h — the token ids that end a generation, as transformers'
 * generate() takes them: generation_config.eos_token_id, which comes from the model
 * directory's generation_config.json when that file names one (an int or a list: Llama 3.1
 * [128001, 128008, 128009], Qwen2.5-Instruct [151645, 151643], Gemma 3 [1, 106], Phi-3
 * [32000, 32001, 32007]) and otherwise from config.json's eos_token_id (an int or a list).
 * The engine stops on every id of the set; the tokenizer's eos is its fallback only when
 * neither file names one (server/engine/engine.c).
 */
#ifndef PEFTD_MODEL_EOS_H
#define PEFTD_MODEL_EOS_H

#include <stddef.h>
#include <stdint.h>

#define MODEL_MAX_EOS 16

typedef struct {
    int32_t ids[MODEL_MAX_EOS];
    int n;              /* 0: neither file names an eos id */
    const char *source; /* "generation_config.json", "config.json" or NULL when n == 0 */
} model_eos;

struct cJSON;

/* The "eos_token_id" member of root (a JSON object read from file, named in messages):
 * absent, null or [] -> *named = false; an int or a list of ints, each in [0, vocab), no
 * more than MODEL_MAX_EOS (duplicates dropped) -> the ids. Anything else (a string, a
 * float, an id outside the vocabulary, a duplicate key) is
 * PEFTD_EFORMAT with a message naming file and field. */
int model_eos_parse(const struct cJSON *root, const char *file, int vocab, model_eos *out, int *named, char *err,
                    size_t errlen);

/* The stop set of the model in dir: generation_config.json's eos_token_id when the file
 * exists and names one, else config_json's (the text of config.json). A missing
 * generation_config.json is not an error; an unreadable or broken one (not JSON, not an
 * object, a bad eos_token_id) is PEFTD_EFORMAT / PEFTD_EIO naming the file. */
int model_eos_load(const char *dir, const char *config_json, size_t config_len, int vocab, model_eos *out, char *err,
                   size_t errlen);

#endif
