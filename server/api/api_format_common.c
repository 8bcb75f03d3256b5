/* server/api/api_format_common.c — the pieces of a response both completions and chat
 * write: a token's text and bytes for logprobs, and the usage object. A leaf of the
 * formatting files (api_completions_format.c dispatches to api_chat.c, and both call this).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/status.h"
#include "server/api/api_completions.h"

/* A token's text as it reads after prev: decode(prev, id) - decode(prev), so "▁there"
 * after "time" is " there" (a lone decode would strip the space). A token whose bytes do
 * not finish a UTF-8 character on their own is spelled "bytes:\\xNN" (see api_completions.h). */
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
