/* server/api/api_embeddings.c — POST /v1/embeddings (OpenAI's shape) under the base model or
 * an adapter.
 *
 *   {"model": base or adapter, "adapter"?, "adapter_scale"?, "user"?,
 *    "input": string | [strings] | [token ids] | [[token ids]]   (1 .. API_MAX_PROMPTS inputs),
 *    "encoding_format": "float" (default) | "base64" (little-endian f32, as OpenAI),
 *    "pooling": "mean" (default) | "last"      (peftd),
 *    "normalize": true (default) | false       (peftd: L2-normalised, as OpenAI's are)}
 *
 * The vector is the model's last hidden state after its final norm (transformers'
 * last_hidden_state, i.e. what lm_head reads), averaged over the input's tokens (mean: a
 * text input's BOS included, prompt-tuning virtual tokens not) or taken at its last token;
 * then divided by its L2 norm unless normalize is false. Each input is one prefill-only
 * engine request (gen.pool) in the shared batch. "dimensions" is refused (no truncation).
 *
 * Response: {"object":"list","data":[{"object":"embedding","index","embedding"}],"model",
 * "usage":{"prompt_tokens","total_tokens"}}.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/status.h"
#include "server/api/api_completions.h"

static const char *const embed_keys[] = {"model", "adapter", "adapter_scale", "adapters", "combination", "user", "input",
                                         "encoding_format", "pooling", "normalize", NULL};

static int parse_options(const cJSON *root, api_request *r, api_err *err) {
    const cJSON *f = api_field(root, "encoding_format"), *p = api_field(root, "pooling"),
                *n = api_field(root, "normalize");
    if (f && (!cJSON_IsString(f) || (strcmp(f->valuestring, "float") && strcmp(f->valuestring, "base64"))))
        return api_fail(err, "invalid_value", "'encoding_format' must be \"float\" or \"base64\"");
    r->base64 = f && !strcmp(f->valuestring, "base64");
    if (p && (!cJSON_IsString(p) || (strcmp(p->valuestring, "mean") && strcmp(p->valuestring, "last"))))
        return api_fail(err, "invalid_value", "'pooling' must be \"mean\" or \"last\"");
    r->gen.pool = p && !strcmp(p->valuestring, "last") ? ENGINE_POOL_LAST : ENGINE_POOL_MEAN;
    if (n && !cJSON_IsBool(n)) return api_fail(err, "invalid_type", "'normalize' must be a boolean");
    r->normalize = !n || cJSON_IsTrue(n);
    return 0;
}

int api_embeddings_parse(const api_server *s, const tenants_principal *who, const char *body, size_t len,
                         api_request *r, api_err *err) {
    cJSON *root;
    int rc = api_parse_begin(who, body, len, r, &root, err);
    r->kind = API_KIND_EMBEDDINGS;
    if (!rc && api_field(root, "dimensions"))
        rc = api_fail(err, "unsupported_parameter", "'dimensions' is not supported: peftd returns the model's "
                                                    "hidden size");
    if (!rc) rc = api_check_keys(root, embed_keys, "/v1/embeddings", err);
    if (!rc) rc = api_parse_model(s, who, root, r, err);
    if (!rc) rc = parse_options(root, r, err);
    if (!rc) rc = api_parse_prompts(s, root, "input", r, err);
    if (!rc) rc = api_parse_fit_prefill(s, r, err);
    return api_parse_end(rc, root, r, err);
}

static char *base64_f32(const float *v, int n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len = (size_t)n * 4;
    unsigned char *b = malloc(len);
    char *out = malloc((len + 2) / 3 * 4 + 1);
    if (!b || !out) {
        free(b);
        free(out);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        for (int k = 0; k < 4; k++) b[i * 4 + k] = (unsigned char)(u >> (8 * k)); /* little-endian */
    }
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t w = (uint32_t)b[i] << 16 | (i + 1 < len ? (uint32_t)b[i + 1] << 8 : 0) | (i + 2 < len ? b[i + 2] : 0);
        out[o++] = tab[w >> 18 & 63];
        out[o++] = tab[w >> 12 & 63];
        out[o++] = i + 1 < len ? tab[w >> 6 & 63] : '=';
        out[o++] = i + 2 < len ? tab[w & 63] : '=';
    }
    out[o] = 0;
    free(b);
    return out;
}

/* A choice's vector as the response carries it (normalised when asked), or NULL. */
static cJSON *embedding_value(const api_request *r, const api_choice *ch) {
    int n = ch->n_hidden;
    float *v = malloc((size_t)n * sizeof *v);
    if (!v) return NULL;
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)ch->hidden[i] * ch->hidden[i];
    double inv = r->normalize && ss > 0 ? 1.0 / sqrt(ss) : 1.0;
    for (int i = 0; i < n; i++) v[i] = (float)(ch->hidden[i] * inv);
    cJSON *out = NULL;
    if (r->base64) {
        char *b = base64_f32(v, n);
        if (b) out = cJSON_CreateString(b);
        free(b);
    } else if ((out = cJSON_CreateArray())) {
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(out, cJSON_CreateNumber(v[i]));
    }
    free(v);
    return out;
}

cJSON *api_embeddings_format(api_job *job) {
    cJSON *o = cJSON_CreateObject(), *data = NULL, *u = NULL;
    if (!o || !cJSON_AddStringToObject(o, "object", "list") || !(data = cJSON_AddArrayToObject(o, "data")))
        goto fail;
    for (int i = 0; i < job->n_choices; i++) {
        const api_choice *ch = &job->choices[i];
        cJSON *d = cJSON_CreateObject(), *v;
        if (!d) goto fail;
        cJSON_AddItemToArray(data, d);
        if (!ch->hidden || !cJSON_AddStringToObject(d, "object", "embedding") ||
            !cJSON_AddNumberToObject(d, "index", i) || !(v = embedding_value(&job->req, ch)))
            goto fail;
        cJSON_AddItemToObject(d, "embedding", v);
    }
    if (!cJSON_AddStringToObject(o, "model", job->req.model_id) || !(u = api_format_usage(job))) goto fail;
    cJSON_DeleteItemFromObject(u, "completion_tokens"); /* OpenAI's embeddings usage has none */
    cJSON_AddItemToObject(o, "usage", u);
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}
