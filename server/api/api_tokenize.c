/* server/api/api_tokenize.c — POST /tokenize and POST /detokenize in vLLM's shapes, with
 * llama.cpp's accepted too:
 *   /tokenize   {"model"?, "prompt": str, "add_special_tokens"?: bool (default true)}
 *               {"model"?, "messages": [...], "add_generation_prompt"?, "add_special_tokens"?
 *                (default false: the chat template writes the BOS)}
 *               {"content": str, "add_special"?: bool (default false)}   (llama.cpp)
 *            -> {"count", "max_model_len", "tokens"}   (llama.cpp reads "tokens" alone)
 *   /detokenize {"model"?, "tokens": [ids]} -> {"prompt", "content"} ("content": llama.cpp's key)
 * The ids are what /v1/completions and /v1/chat/completions feed the engine: the same
 * tokenizer, the same BOS rule (a text prompt gets the tokenizer's specials, a rendered
 * conversation none) and the same model resolution (api_parse_model: the tenant scoping,
 * 404 for an adapter the caller may not use). Adapters carry no tokenizer of their own:
 * every adapter tokenizes as its base. Decoding keeps special tokens (vLLM's decode).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/status.h"
#include "server/api/api_completions.h"

static const char *const TOKENIZE_KEYS[] = {"model", "adapter", "prompt", "messages", "add_special_tokens",
                                            "add_generation_prompt", "content", "add_special", NULL};
static const char *const DETOKENIZE_KEYS[] = {"model", "adapter", "tokens", NULL};

static int check_keys(const cJSON *root, const char *const *keys, api_err *err) {
    for (const cJSON *it = root->child; it; it = it->next) {
        bool known = false;
        for (int i = 0; keys[i] && !known; i++) known = !strcmp(keys[i], it->string);
        if (!known)
            return api_fail(err, "unknown_parameter", "unknown parameter '%.*s'",
                            (int)http_utf8_prefix(it->string, 64), it->string);
    }
    return 0;
}

static int get_bool(const cJSON *root, const char *name, bool *out, api_err *err) {
    const cJSON *v = api_field(root, name);
    if (!v) return 0;
    if (!cJSON_IsBool(v)) return api_fail(err, "invalid_type", "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* The prompt of a /tokenize body into p: exactly one of prompt, messages, content. */
static int tokenize_prompt(const api_server *s, const cJSON *root, api_prompt *p, api_err *err) {
    const cJSON *prompt = api_field(root, "prompt"), *msgs = api_field(root, "messages"),
                *content = api_field(root, "content");
    if (!!prompt + !!msgs + !!content != 1)
        return api_fail(err, "invalid_value", "give exactly one of 'prompt', 'messages' or 'content'");
    bool add_special = !msgs && !content; /* vLLM: true for a prompt, false for messages; llama.cpp: false */
    int rc = get_bool(root, content ? "add_special" : "add_special_tokens", &add_special, err);
    if (!rc && content && api_field(root, "add_special_tokens"))
        rc = api_fail(err, "invalid_value", "with 'content' (llama.cpp's shape) use 'add_special'");
    if (!rc && !content && api_field(root, "add_special"))
        rc = api_fail(err, "invalid_value", "'add_special' goes with 'content'; with '%s' use 'add_special_tokens'",
                      msgs ? "messages" : "prompt");
    if (!rc && !msgs && api_field(root, "add_generation_prompt"))
        rc = api_fail(err, "invalid_value", "'add_generation_prompt' goes with 'messages'");
    if (rc) return rc;
    if (msgs) return api_chat_tokenize(s, root, add_special, p, err);
    const cJSON *t = prompt ? prompt : content;
    const char *name = prompt ? "prompt" : "content";
    if (!cJSON_IsString(t)) return api_fail(err, "invalid_type", "'%s' must be a string", name);
    size_t len = strlen(t->valuestring);
    if (!http_utf8_valid(t->valuestring, len)) return api_fail(err, "invalid_value", "'%s' is not valid UTF-8", name);
    rc = tokenizer_encode(s->tok, t->valuestring, len, add_special, &p->ids, &p->n_ids);
    if (rc == PEFTD_ENOMEM) return rc;
    if (rc) return api_fail(err, "invalid_value", "cannot tokenize '%s': %s", name, peftd_strerror(rc));
    return 0;
}

static cJSON *tokenize_body(const api_server *s, const api_prompt *p) {
    cJSON *o = cJSON_CreateObject();
    cJSON *toks = NULL;
    if (!cJSON_AddNumberToObject(o, "count", (double)p->n_ids) ||
        !cJSON_AddNumberToObject(o, "max_model_len", engine_context_length(s->e)) ||
        !(toks = cJSON_AddArrayToObject(o, "tokens"))) {
        cJSON_Delete(o);
        return NULL;
    }
    for (size_t i = 0; i < p->n_ids; i++) {
        cJSON *n = cJSON_CreateNumber(p->ids[i]);
        if (!n || !cJSON_AddItemToArray(toks, n)) {
            cJSON_Delete(n);
            cJSON_Delete(o);
            return NULL;
        }
    }
    return o;
}

/* /detokenize's ids into p->ids: integers in [0, vocab). */
static int detokenize_ids(const api_server *s, const cJSON *root, api_prompt *p, api_err *err) {
    const cJSON *t = api_field(root, "tokens");
    if (!t) return api_fail(err, "invalid_value", "'tokens' is required");
    if (!cJSON_IsArray(t)) return api_fail(err, "invalid_type", "'tokens' must be an array of token ids");
    int n = cJSON_GetArraySize(t), vocab = tokenizer_vocab_size(s->tok);
    if (n && !(p->ids = malloc((size_t)n * sizeof *p->ids))) return PEFTD_ENOMEM;
    const cJSON *it;
    cJSON_ArrayForEach(it, t) {
        double v = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (!(v >= 0 && v < vocab && v == (double)(int32_t)v))
            return api_fail(err, "invalid_value", "'tokens[%zu]' must be an integer token id in [0, %d)", p->n_ids,
                            vocab);
        p->ids[p->n_ids++] = (int32_t)v;
    }
    int rc = tokenizer_decode(s->tok, p->ids, p->n_ids, false, &p->text, &p->text_len);
    if (rc == PEFTD_ENOMEM) return rc;
    if (rc) return api_fail(err, "invalid_value", "cannot decode 'tokens': %s", peftd_strerror(rc));
    return 0;
}

static enum MHD_Result tok_route(http_req *req, struct MHD_Connection *conn, bool detok) {
    api_server *s = api_of(req);
    api_request r;
    api_err err;
    cJSON *root = NULL;
    int rc = api_parse_begin(&req->who, req->body, req->len, &r, &root, &err);
    if (!rc) rc = check_keys(root, detok ? DETOKENIZE_KEYS : TOKENIZE_KEYS, &err);
    if (!rc) rc = api_parse_model(s, &req->who, root, &r, &err);
    if (!rc) rc = detok ? detokenize_ids(s, root, &r.prompts[0], &err) : tokenize_prompt(s, root, &r.prompts[0], &err);
    cJSON *out = NULL;
    if (!rc && detok) {
        out = cJSON_CreateObject();
        if (!cJSON_AddStringToObject(out, "prompt", r.prompts[0].text ? r.prompts[0].text : "") ||
            !cJSON_AddStringToObject(out, "content", r.prompts[0].text ? r.prompts[0].text : "")) {
            cJSON_Delete(out);
            out = NULL;
        }
    } else if (!rc) {
        out = tokenize_body(s, &r.prompts[0]);
    }
    if (!rc && !out) rc = PEFTD_ENOMEM;
    if (api_parse_end(rc, root, &r, &err)) return http_error(req, conn, err.status, err.code, "%s", err.message);
    api_request_free(&r);
    return http_respond_json(req, conn, MHD_HTTP_OK, out);
}

enum MHD_Result api_tokenize_post(http_req *req, struct MHD_Connection *conn) { return tok_route(req, conn, false); }
enum MHD_Result api_detokenize_post(http_req *req, struct MHD_Connection *conn) { return tok_route(req, conn, true); }
