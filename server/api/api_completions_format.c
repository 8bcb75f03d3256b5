/* server/api/api_completions_format.c — what /v1/completions sends back: the OpenAI
 * response object, the completions `logprobs` object (tokens, token_logprobs,
 * top_logprobs, text_offset) and the SSE chunks of a stream.
 */
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/status.h"
#include "server/api/api_completions.h"
#include "server/http/sse.h"

/* A token's text as it reads after prev: decode(prev, id) - decode(prev), so "▁there"
 * after "time" is " there" (a lone decode would strip the space). A token whose bytes do
 * not finish a UTF-8 character on their own shows its vocabulary piece instead. */
char *api_token_text(const tokenizer *tok, int32_t prev, int32_t id, unsigned char *bytes, size_t cap,
                     size_t *n_bytes) {
    const char *piece = NULL;
    size_t len = 0, raw_n = 0;
    unsigned char raw[API_TOKEN_MAX_BYTES];
    http_buf text = {0};
    bool is_raw = tokenizer_token_bytes(tok, id, raw, sizeof raw, &raw_n) == 0;
    if (is_raw && !http_utf8_valid((const char *)raw, raw_n)) {
        /* part of a character: OpenAI's spelling of such a token, the bytes themselves below */
        if (http_buf_puts(&text, "bytes:")) goto fail;
        for (size_t i = 0; i < raw_n; i++) {
            char hex[8];
            snprintf(hex, sizeof hex, "\\x%02x", raw[i]);
            if (http_buf_puts(&text, hex)) goto fail;
        }
    } else {
        /* the text the token adds after prev (" there" after "Once upon a time"), flushed so
         * that held-back bytes count */
        tokenizer_stream *st = tokenizer_stream_new(tok, false);
        if (st && (prev < 0 || tokenizer_stream_prime(st, &prev, 1) == 0) &&
            tokenizer_stream_push(st, id, &piece, &len) == 0 && !http_buf_append(&text, piece, len) &&
            tokenizer_stream_flush(st, &piece, &len) == 0)
            http_buf_append(&text, piece, len);
        tokenizer_stream_free(st);
        if (!text.len) {
            const char *p = tokenizer_piece(tok, id);
            if (http_buf_puts(&text, p ? p : "")) goto fail;
        }
    }
    if (!text.p && http_buf_puts(&text, "")) goto fail;
    if (bytes) {
        const unsigned char *src = is_raw ? raw : (const unsigned char *)text.p;
        size_t n = is_raw ? raw_n : text.len;
        *n_bytes = n < cap ? n : cap;
        memcpy(bytes, src, *n_bytes);
    }
    return text.p; /* malloc'ed by http_buf */
fail:
    http_buf_free(&text);
    return NULL;
}

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

cJSON *api_format_usage(const api_job *job) {
    int prompt = 0, completion = 0;
    for (int i = 0; i < job->req.n_prompts; i++) prompt += (int)job->req.prompts[i].n_ids;
    for (int i = 0; i < job->n_choices; i++) completion += job->choices[i].completion_tokens;
    cJSON *u = cJSON_CreateObject();
    if (!cJSON_AddNumberToObject(u, "prompt_tokens", prompt) ||
        !cJSON_AddNumberToObject(u, "completion_tokens", completion) ||
        !cJSON_AddNumberToObject(u, "total_tokens", prompt + completion)) {
        cJSON_Delete(u);
        return NULL;
    }
    return u;
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
