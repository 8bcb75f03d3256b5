/* server/api/api_chat.c — POST /v1/chat/completions on the completions machinery.
 *
 * A chat request is a completions request whose one prompt is the model's chat template
 * applied to `messages` (server/text/chat_template.h, add_generation_prompt on), tokenized
 * as HF's apply_chat_template(tokenize=True) does: no BOS added by the tokenizer (the
 * template writes it). The messages are validated here; everything else goes through the
 * steps /v1/completions takes (api_completions.h): api_parse_begin, api_parse_common (model
 * and adapter selection, sampling options, stop strings, n, stream, logprobs in chat's
 * shape, max_completion_tokens) and the context rule api_parse_fit, so the same field
 * answers the same on both routes. The job, the engine requests, streaming and
 * cancellation are api_completions.c's; only the response shapes differ (chat.completion
 * and chat.completion.chunk: delta.role first, then delta.content, then finish_reason),
 * and api_completions_format.c hands those to the api_chat_format_* functions below when
 * req.chat is set.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/log.h"
#include "lib/status.h"
#include "server/api/api_completions.h"
#include "server/http/sse.h"
#include "server/text/chat_template.h"

#define CHAT_MAX_MESSAGES 4096 /* far beyond any context the served models have */


/* One message's content: a string, or an array of {"type":"text","text":...} parts joined
 * with "\n" (vLLM's "string" content format). @note *out is malloc'd. */
static int chat_content(const cJSON *c, int i, bool assistant, char **out, api_err *err) {
    if (!c) {
        if (!assistant) return api_fail(err, "invalid_value", "'messages[%d].content' is required", i);
        *out = strdup("");
        return *out ? 0 : PEFTD_ENOMEM;
    }
    if (cJSON_IsString(c)) {
        *out = strdup(c->valuestring);
        return *out ? 0 : PEFTD_ENOMEM;
    }
    if (!cJSON_IsArray(c))
        return api_fail(err, "invalid_type", "'messages[%d].content' must be a string or an array of content parts", i);
    http_buf b = {0};
    int k = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type)) {
            http_buf_free(&b);
            return api_fail(err, "invalid_type", "'messages[%d].content[%d]' must be an object with a 'type'", i, k);
        }
        if (strcmp(type->valuestring, "text") != 0) {
            int n = (int)http_utf8_prefix(type->valuestring, 40);
            http_buf_free(&b);
            return api_fail(err, "invalid_value",
                             "'messages[%d].content[%d]': content parts of type '%.*s' are not supported (text only)", i, k,
                             n, type->valuestring);
        }
        if (!cJSON_IsString(text)) {
            http_buf_free(&b);
            return api_fail(err, "invalid_type", "'messages[%d].content[%d].text' must be a string", i, k);
        }
        if ((k && http_buf_puts(&b, "\n")) || http_buf_puts(&b, text->valuestring)) {
            http_buf_free(&b);
            return PEFTD_ENOMEM;
        }
        k++;
    }
    *out = b.p ? b.p : strdup("");
    return *out ? 0 : PEFTD_ENOMEM;
}

typedef struct {
    chat_message *msgs;
    char **content;
    int n;
} chat_msgs;

static void chat_msgs_free(chat_msgs *m) {
    for (int i = 0; i < m->n; i++) free(m->content[i]);
    free(m->content);
    free(m->msgs);
}

static int chat_parse_messages(const cJSON *root, chat_msgs *out, api_err *err) {
    const cJSON *ms = api_field(root, "messages");
    if (!ms) return api_fail(err, "missing_field", "'messages' is required");
    if (!cJSON_IsArray(ms)) return api_fail(err, "invalid_type", "'messages' must be an array of messages");
    int n = cJSON_GetArraySize(ms);
    if (n == 0) return api_fail(err, "invalid_value", "'messages' must not be empty");
    if (n > CHAT_MAX_MESSAGES) return api_fail(err, "invalid_value", "at most %d messages per request", CHAT_MAX_MESSAGES);
    out->msgs = calloc((size_t)n, sizeof *out->msgs);
    out->content = calloc((size_t)n, sizeof *out->content);
    if (!out->msgs || !out->content) return PEFTD_ENOMEM;
    const cJSON *m;
    int i = 0;
    cJSON_ArrayForEach(m, ms) {
        if (!cJSON_IsObject(m)) return api_fail(err, "invalid_type", "'messages[%d]' must be an object", i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsString(role)) return api_fail(err, "invalid_type", "'messages[%d].role' must be a string", i);
        /* OpenAI's "developer" role is the newer name of "system" */
        static const char *const roles[] = {"system", "user", "assistant", "developer"};
        const char *r = NULL;
        for (size_t k = 0; k < sizeof roles / sizeof roles[0]; k++)
            if (!strcmp(role->valuestring, roles[k])) r = k == 3 ? "system" : roles[k];
        if (!r) {
            int nn = (int)http_utf8_prefix(role->valuestring, 40);
            return api_fail(err, "invalid_value",
                             "'messages[%d].role' must be 'system', 'user' or 'assistant' (got '%.*s'; tools are not supported)",
                             i, nn, role->valuestring);
        }
        int rc = chat_content(api_field(m, "content"), i, !strcmp(r, "assistant"), &out->content[i], err);
        if (rc) return rc;
        out->n = i + 1;
        out->msgs[i].role = r;
        out->msgs[i].content = out->content[i];
        i++;
    }
    return 0;
}

/* The conversation as the prompt: the chat template applied to the messages
 * (add_generation_prompt on unless the body says otherwise: vLLM's extension), tokenized
 * without an added BOS (the template writes it). */
static int chat_prompt(const api_server *s, const cJSON *root, const chat_msgs *msgs, api_prompt *p, api_err *err) {
    char bos[128] = "", eos[128] = "";
    int32_t bid = tokenizer_bos_id(s->tok), eid = tokenizer_eos_id(s->tok);
    if (bid >= 0 && tokenizer_piece(s->tok, bid)) snprintf(bos, sizeof bos, "%s", tokenizer_piece(s->tok, bid));
    if (eid >= 0 && tokenizer_piece(s->tok, eid)) snprintf(eos, sizeof eos, "%s", tokenizer_piece(s->tok, eid));
    chat_render_opts o = {.add_generation_prompt = true, .bos_token = bid >= 0 ? bos : NULL, .eos_token = eid >= 0 ? eos : NULL};
    const cJSON *agp = api_field(root, "add_generation_prompt");
    if (agp) {
        if (!cJSON_IsBool(agp)) return api_fail(err, "invalid_type", "'add_generation_prompt' must be a boolean");
        o.add_generation_prompt = cJSON_IsTrue(agp);
    }
    char terr[400] = "";
    int rc = chat_template_render(s->chat, msgs->msgs, msgs->n, &o, &p->text, &p->text_len, terr, sizeof terr);
    if (rc == PEFTD_ENOMEM) return rc;
    if (rc) return api_fail(err, "invalid_messages", "the model's chat template rejected the messages: %s", terr);
    if ((rc = tokenizer_encode(s->tok, p->text, p->text_len, false, &p->ids, &p->n_ids)))
        return api_fail(err, "invalid_value", "cannot tokenize the rendered conversation: %s", peftd_strerror(rc));
    if (p->n_ids == 0) return api_fail(err, "invalid_value", "the messages render to an empty prompt");
    return 0;
}

int api_chat_tokenize(const api_server *s, const cJSON *root, bool add_special, api_prompt *p, api_err *err) {
    chat_msgs msgs = {0};
    if (!s->chat)
        return api_fail(err, "chat_template_missing", "The model '%s' has no chat template: tokenize a 'prompt' instead",
                        s->m->name);
    int rc = chat_parse_messages(root, &msgs, err);
    if (!rc) rc = chat_prompt(s, root, &msgs, p, err);
    chat_msgs_free(&msgs);
    if (rc || !add_special) return rc;
    /* vLLM's add_special_tokens on a conversation: the tokenizer's specials (BOS) go in
     * front of what the template wrote */
    int32_t *ids = NULL;
    size_t n = 0;
    if ((rc = tokenizer_encode(s->tok, p->text, p->text_len, true, &ids, &n)))
        return api_fail(err, "invalid_value", "cannot tokenize the rendered conversation: %s", peftd_strerror(rc));
    free(p->ids);
    p->ids = ids;
    p->n_ids = n;
    return 0;
}

int api_chat_parse(const api_server *s, const tenants_principal *who, const char *body, size_t len, api_request *r,
                   api_err *err) {
    cJSON *root;
    chat_msgs msgs = {0};
    long long max_tokens = 0;
    int rc = api_parse_begin(who, body, len, r, &root, err);
    if (!rc) rc = api_check_fields(root, true, err); /* a refused field first, whatever the model */
    if (!rc && !s->chat)
        rc = api_fail(err, "chat_template_missing",
                      "The model '%s' has no chat template (no 'chat_template' in its tokenizer_config.json and none "
                      "configured with the \"chat_template\" setting): use /v1/completions with a plain prompt%s%s",
                      s->m->name, s->chat_error[0] ? "; " : "", s->chat_error);
    if (!rc) rc = chat_parse_messages(root, &msgs, err);
    if (!rc) rc = api_parse_common(s, who, root, true, r, &max_tokens, err);
    if (!rc) {
        r->chat = true;
        r->n_prompts = 1;
        rc = chat_prompt(s, root, &msgs, &r->prompts[0], err);
    }
    if (!rc) rc = api_parse_fit(s, r, max_tokens, err);
    chat_msgs_free(&msgs);
    return api_parse_end(rc, root, r, err);
}

void api_chat_job_init(api_job *job) {
    /* "cmpl-<16 hex>" -> "chatcmpl-<16 hex>", OpenAI's prefix (ids are 21 bytes: room) */
    size_t n = strlen(job->id);
    if (n + 4 < sizeof job->id) {
        memmove(job->id + 4, job->id, n + 1);
        memcpy(job->id, "chat", 4);
    }
}

/* ---- responses ---- */

/* A token's text after prev (decode(prev, id) - decode(prev)); its vocabulary piece when
 * its bytes do not finish a character. */
/* {"token","logprob","bytes"} (+ "top_logprobs" when top is set) */
static cJSON *chat_logprob_entry(const tokenizer *tok, int32_t prev, int32_t id, float lp, bool with_top) {
    unsigned char raw[API_TOKEN_MAX_BYTES];
    size_t n_raw = 0;
    char *text = api_token_text(tok, prev, id, raw, sizeof raw, &n_raw);
    cJSON *e = text ? cJSON_CreateObject() : NULL;
    cJSON *bytes = NULL;
    if (!e || !cJSON_AddStringToObject(e, "token", text) || !cJSON_AddNumberToObject(e, "logprob", lp) ||
        !(bytes = cJSON_AddArrayToObject(e, "bytes")) || (with_top && !cJSON_AddArrayToObject(e, "top_logprobs"))) {
        free(text);
        cJSON_Delete(e);
        return NULL;
    }
    free(text);
    for (size_t i = 0; i < n_raw; i++) cJSON_AddItemToArray(bytes, cJSON_CreateNumber(raw[i]));
    return e;
}

/* OpenAI's chat logprobs: {"content": [{token, logprob, bytes, top_logprobs: [...]}]} */
static cJSON *chat_format_logprobs(const api_job *job, const gen_token *toks, int n, int32_t *last_id) {
    const tokenizer *tok = job->srv->tok;
    int k_top = job->req.gen.logprobs;
    cJSON *o = cJSON_CreateObject();
    cJSON *content = cJSON_AddArrayToObject(o, "content");
    if (!content) goto fail;
    for (int i = 0; i < n; i++) {
        const gen_token *t = &toks[i];
        cJSON *e = chat_logprob_entry(tok, *last_id, t->id, t->logprob, true);
        if (!e) goto fail;
        cJSON_AddItemToArray(content, e);
        cJSON *tops = cJSON_GetObjectItemCaseSensitive(e, "top_logprobs");
        for (int k = 0; k < t->n_top && k < k_top; k++) {
            cJSON *a = chat_logprob_entry(tok, *last_id, t->top_id[k], t->top_logprob[k], false);
            if (!a) goto fail;
            cJSON_AddItemToArray(tops, a);
        }
        *last_id = t->id;
    }
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

cJSON *api_chat_format_head(const api_job *job, const char *object) {
    cJSON *o = cJSON_CreateObject();
    if (!cJSON_AddStringToObject(o, "id", job->id) || !cJSON_AddStringToObject(o, "object", object) ||
        !cJSON_AddNumberToObject(o, "created", (double)job->created) ||
        !cJSON_AddStringToObject(o, "model", job->req.model_id) || !cJSON_AddNullToObject(o, "system_fingerprint")) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static char *chat_strndup(const char *s, size_t n) { return strndup(s ? s : "", n); }

cJSON *api_chat_format_response(api_job *job) {
    cJSON *o = api_chat_format_head(job, "chat.completion");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    if (!choices) goto fail;
    for (int i = 0; i < job->n_choices; i++) {
        api_choice *ch = &job->choices[i];
        cJSON *c = cJSON_CreateObject(), *msg = cJSON_CreateObject();
        char *t = chat_strndup(ch->text.p, ch->text.len);
        bool ok = c && msg && t && cJSON_AddNumberToObject(c, "index", ch->index) &&
                  cJSON_AddStringToObject(msg, "role", "assistant") && cJSON_AddStringToObject(msg, "content", t);
        free(t);
        if (ok) {
            cJSON_AddItemToObject(c, "message", msg);
            msg = NULL;
            cJSON *lp = NULL;
            if (job->req.chat_logprobs) {
                const api_prompt *p = &job->req.prompts[0];
                int32_t last = p->n_ids ? p->ids[p->n_ids - 1] : -1;
                lp = chat_format_logprobs(job, ch->tok, ch->n_tok, &last);
                ok = lp != NULL;
            }
            if (ok) ok = lp ? cJSON_AddItemToObject(c, "logprobs", lp) : cJSON_AddNullToObject(c, "logprobs") != NULL;
            if (ok) ok = cJSON_AddStringToObject(c, "finish_reason", finish_reason_str(ch->finish)) != NULL;
        }
        cJSON_Delete(msg);
        if (!ok) {
            cJSON_Delete(c);
            goto fail;
        }
        cJSON_AddItemToArray(choices, c);
    }
    cJSON *u = api_format_usage(job);
    if (!u) goto fail;
    cJSON_AddItemToObject(o, "usage", u);
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

/* One chat.completion.chunk with one choice: delta (role and/or content), logprobs,
 * finish_reason. */
static int chat_chunk(api_job *job, int index, const char *role, const char *text, size_t text_len, cJSON *logprobs,
                      const char *finish, http_buf *out) {
    cJSON *o = api_chat_format_head(job, "chat.completion.chunk");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON *delta = cJSON_AddObjectToObject(c, "delta");
    bool ok = choices && delta && cJSON_AddNumberToObject(c, "index", index);
    if (ok && role) ok = cJSON_AddStringToObject(delta, "role", role) != NULL;
    if (ok && text) {
        char *t = chat_strndup(text, text_len);
        ok = t && cJSON_AddStringToObject(delta, "content", t);
        free(t);
    }
    if (ok) {
        ok = logprobs ? cJSON_AddItemToObject(c, "logprobs", logprobs) : cJSON_AddNullToObject(c, "logprobs") != NULL;
        logprobs = NULL;
    }
    if (ok) ok = finish ? cJSON_AddStringToObject(c, "finish_reason", finish) != NULL : cJSON_AddNullToObject(c, "finish_reason") != NULL;
    /* with include_usage every chunk carries "usage": null, the last one the numbers */
    if (ok && job->req.include_usage) ok = cJSON_AddNullToObject(o, "usage") != NULL;
    cJSON_Delete(logprobs);
    if (!ok) {
        cJSON_Delete(c);
        cJSON_Delete(o);
        return PEFTD_ENOMEM;
    }
    cJSON_AddItemToArray(choices, c);
    return sse_append_json(out, o);
}

int api_chat_format_chunk(api_job *job, api_choice *ch, const char *text, size_t text_len, const gen_token *toks,
                          int n_toks, bool finish, http_buf *out) {
    int rc = 0;
    if (!ch->role_sent) { /* OpenAI's first chunk: the role and empty content */
        rc = chat_chunk(job, ch->index, "assistant", "", 0, NULL, NULL, out);
        if (rc) return rc;
        ch->role_sent = true;
    }
    if (text_len || n_toks) {
        cJSON *lp = NULL;
        if (job->req.chat_logprobs && n_toks > 0) {
            lp = chat_format_logprobs(job, toks, n_toks, &ch->last_id);
            if (!lp) return PEFTD_ENOMEM;
        }
        rc = chat_chunk(job, ch->index, NULL, text, text_len, lp, NULL, out);
        if (rc) return rc;
    }
    if (finish) rc = chat_chunk(job, ch->index, NULL, NULL, 0, NULL, finish_reason_str(ch->finish), out);
    return rc;
}
