/* server/api/api_completions_format.c — what /v1/completions sends back: the OpenAI
 * response object, the completions `logprobs` object (tokens, token_logprobs,
 * top_logprobs, text_offset) and the SSE chunks of a stream (chat's shapes are
 * api_chat.c's; what both share is in api_format_common.c).
 */
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/status.h"
#include "server/api/api_completions.h"
#include "server/http/sse.h"

cJSON *api_format_logprobs(const tokenizer *tok, const gen_token *toks, int n, size_t offset_base,
                           int32_t *last_id) {
    cJSON *o = cJSON_CreateObject();
    cJSON *tokens = cJSON_AddArrayToObject(o, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    if (!tokens || !lps || !tops || !offs) goto fail;
    for (int i = 0; i < n; i++) {
        const gen_token *t = &toks[i];
        char *text = api_token_text(tok, *last_id, t->id, NULL, 0, NULL);
        cJSON *top = cJSON_CreateObject();
        if (!text || !top) {
            free(text);
            cJSON_Delete(top);
            goto fail;
        }
        cJSON_AddItemToArray(tokens, cJSON_CreateString(text));
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(t->logprob));
        /* Like OpenAI and vLLM, the dict holds the top alternatives plus the sampled token.
         * Two ids can read the same; the dict keeps the first (largest) value. */
        for (int k = 0; k < t->n_top && k < ENGINE_MAX_LOGPROBS; k++) {
            char *alt = api_token_text(tok, *last_id, t->top_id[k], NULL, 0, NULL);
            if (alt && !cJSON_GetObjectItemCaseSensitive(top, alt))
                cJSON_AddNumberToObject(top, alt, t->top_logprob[k]);
            free(alt);
        }
        if (!cJSON_GetObjectItemCaseSensitive(top, text)) cJSON_AddNumberToObject(top, text, t->logprob);
        cJSON_AddItemToArray(tops, top);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(offset_base + t->text_offset)));
        free(text);
        *last_id = t->id;
    }
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

static cJSON *api_format_head(const api_job *job) {
    cJSON *o = cJSON_CreateObject();
    if (!cJSON_AddStringToObject(o, "id", job->id) ||
        !cJSON_AddStringToObject(o, "object", "text_completion") ||
        !cJSON_AddNumberToObject(o, "created", (double)job->created) ||
        !cJSON_AddStringToObject(o, "model", job->req.model_id)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static bool api_add_choice(cJSON *choices, int index, const char *text, size_t text_len,
                           cJSON *logprobs, const char *finish) {
    cJSON *c = cJSON_CreateObject();
    char *t = strndup(text ? text : "", text_len);
    bool ok = c && t && cJSON_AddNumberToObject(c, "index", index) &&
              cJSON_AddStringToObject(c, "text", t);
    free(t);
    if (ok) {
        if (logprobs) cJSON_AddItemToObject(c, "logprobs", logprobs);
        else ok = cJSON_AddNullToObject(c, "logprobs") != NULL;
        logprobs = NULL;
    }
    if (ok) ok = finish ? cJSON_AddStringToObject(c, "finish_reason", finish) != NULL
                        : cJSON_AddNullToObject(c, "finish_reason") != NULL;
    cJSON_Delete(logprobs);
    if (!ok) {
        cJSON_Delete(c);
        return false;
    }
    cJSON_AddItemToArray(choices, c);
    return true;
}

cJSON *api_format_response(api_job *job) {
    if (job->req.chat) return api_chat_format_response(job);
    cJSON *o = api_format_head(job);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    http_buf text = {0};
    if (!choices) goto fail;
    for (int i = 0; i < job->n_choices; i++) {
        api_choice *ch = &job->choices[i];
        const api_prompt *p = &job->req.prompts[ch->prompt];
        http_buf_reset(&text);
        if ((job->req.echo && http_buf_append(&text, p->text, p->text_len)) ||
            http_buf_append(&text, ch->text.p, ch->text.len))
            goto fail;
        cJSON *lp = NULL;
        if (job->req.gen.logprobs >= 0) {
            int32_t last = p->n_ids ? p->ids[p->n_ids - 1] : -1;
            lp = api_format_logprobs(job->srv->tok, ch->tok, ch->n_tok,
                                     job->req.echo ? p->text_len : 0, &last);
            if (!lp) goto fail;
        }
        if (!api_add_choice(choices, ch->index, text.p, text.len, lp, finish_reason_str(ch->finish)))
            goto fail;
    }
    cJSON *u = api_format_usage(job);
    if (!u) goto fail;
    cJSON_AddItemToObject(o, "usage", u);
    http_buf_free(&text);
    return o;
fail:
    http_buf_free(&text);
    cJSON_Delete(o);
    return NULL;
}

int api_format_chunk(api_job *job, api_choice *ch, const char *text, size_t text_len,
                     const gen_token *toks, int n_toks, size_t offset_base, bool finish,
                     http_buf *out) {
    if (job->req.chat) return api_chat_format_chunk(job, ch, text, text_len, toks, n_toks, finish, out);
    cJSON *o = api_format_head(job);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *lp = NULL;
    if (!choices) goto fail;
    if (job->req.gen.logprobs >= 0 && n_toks > 0) {
        lp = api_format_logprobs(job->srv->tok, toks, n_toks, offset_base, &ch->last_id);
        if (!lp) goto fail;
    }
    if (!api_add_choice(choices, ch->index, text, text_len, lp,
                        finish ? finish_reason_str(ch->finish) : NULL))
        goto fail;
    return sse_append_json(out, o);
fail:
    cJSON_Delete(o);
    return PEFTD_ENOMEM;
}

int api_format_stream_end(api_job *job, http_buf *out) {
    if (job->req.include_usage) {
        /* OpenAI's shape on both routes: one extra chunk (the route's chunk object) with
         * empty choices and the usage. */
        cJSON *o = job->req.chat ? api_chat_format_head(job, "chat.completion.chunk") : api_format_head(job);
        cJSON *u = api_format_usage(job);
        if (!o || !u || !cJSON_AddArrayToObject(o, "choices")) {
            cJSON_Delete(o);
            cJSON_Delete(u);
            return PEFTD_ENOMEM;
        }
        cJSON_AddItemToObject(o, "usage", u);
        int rc = sse_append_json(out, o);
        if (rc) return rc;
    }
    return sse_append_done(out);
}

int api_format_stream_error(const char *message, http_buf *out) {
    char clean[3 * 256 + 1]; /* engine errors are < 256 bytes, possibly cut mid-character */
    http_utf8_sanitize(message, clean, sizeof clean);
    message = clean;
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(o, "error");
    if (!e || !cJSON_AddStringToObject(e, "message", message) ||
        !cJSON_AddStringToObject(e, "type", "server_error") ||
        !cJSON_AddStringToObject(e, "code", "engine_error")) {
        cJSON_Delete(o);
        return PEFTD_ENOMEM;
    }
    return sse_append_json(out, o);
}
