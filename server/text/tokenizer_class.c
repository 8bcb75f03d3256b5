/* server/text/tokenizer_class.c — which add-BOS/EOS rule transformers applies to a model
 * directory's tokenizer, as AutoTokenizer (transformers 4.57) resolves it.
 *
 * AutoTokenizer picks the tokenizer class from tokenizer_config.json's "tokenizer_class", else
 * config.json's "tokenizer_class", else config.json's "model_type" (TOKENIZER_MAPPING). Most
 * fast classes (PreTrainedTokenizerFast for Llama 3, Qwen2TokenizerFast, GPT2TokenizerFast)
 * apply tokenizer.json's post_processor as it is and never read add_bos_token/add_eos_token.
 * A few (LlamaTokenizerFast — Llama 2, Mistral, Phi-3 —, CodeLlamaTokenizerFast,
 * GemmaTokenizerFast, GPTNeoXTokenizerFast, CohereTokenizerFast) replace the post_processor at
 * load time (update_post_processor) by "[bos] $A [eos]" from add_bos_token / add_eos_token,
 * with their constructor defaults when the config leaves them (or bos/eos_token) out.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/text/tokenizer_internal.h"

static const tok_class_rule k_rebuild[] = {
    {"LlamaTokenizer", "<s>", "</s>", true, false},
    {"CodeLlamaTokenizer", "<s>", "</s>", true, false},
    {"GemmaTokenizer", "<bos>", "<eos>", true, false},
    {"GPTNeoXTokenizer", "<|endoftext|>", "<|endoftext|>", false, false},
    {"CohereTokenizer", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", true, false},
};

/* model_type -> fast class, for the model types whose class rebuilds the post_processor
 * (transformers' TOKENIZER_MAPPING_NAMES; every other model_type keeps tokenizer.json's). */
static const char *const k_model_types[][2] = {
    {"llama", "LlamaTokenizer"},  {"mistral", "LlamaTokenizer"},     {"mixtral", "LlamaTokenizer"},
    {"phi3", "LlamaTokenizer"},   {"gemma", "GemmaTokenizer"},       {"gemma2", "GemmaTokenizer"},
    {"gemma3", "GemmaTokenizer"}, {"gemma3_text", "GemmaTokenizer"}, {"cohere", "CohereTokenizer"},
    {"cohere2", "CohereTokenizer"}, {"gpt_neox", "GPTNeoXTokenizer"}, {"olmo", "GPTNeoXTokenizer"},
};

static const tok_class_rule *rule_for(const char *cls) {
    size_t n = strlen(cls);
    if (n > 4 && !strcmp(cls + n - 4, "Fast")) n -= 4; /* LlamaTokenizerFast == LlamaTokenizer */
    for (size_t i = 0; i < sizeof(k_rebuild) / sizeof(k_rebuild[0]); i++)
        if (strlen(k_rebuild[i].cls) == n && !strncmp(cls, k_rebuild[i].cls, n)) return &k_rebuild[i];
    return NULL;
}

/* config.json next to the tokenizer, or NULL (absent or unreadable: AutoTokenizer would then
 * have no class to pick from the model either). */
static cJSON *model_config(const char *dir) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    cJSON *j = NULL;
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n > 0 && n < (16L << 20) && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n)) &&
        fread(buf, 1, (size_t)n, f) == (size_t)n)
        j = cJSON_ParseWithLength(buf, (size_t)n);
    free(buf);
    fclose(f);
    return j;
}

const tok_class_rule *tokenizer__class_rule(const char *dir, const cJSON *tok_cfg) {
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(tok_cfg, "tokenizer_class");
    if (cJSON_IsString(cls)) return rule_for(cls->valuestring);
    cJSON *mc = model_config(dir);
    const tok_class_rule *r = NULL;
    cls = cJSON_GetObjectItemCaseSensitive(mc, "tokenizer_class");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(mc, "model_type");
    if (cJSON_IsString(cls)) {
        r = rule_for(cls->valuestring);
    } else if (cJSON_IsString(mt)) {
        for (size_t i = 0; i < sizeof(k_model_types) / sizeof(k_model_types[0]); i++)
            if (!strcmp(mt->valuestring, k_model_types[i][0])) r = rule_for(k_model_types[i][1]);
    }
    cJSON_Delete(mc);
    return r;
}
