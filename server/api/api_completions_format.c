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

/* One entry of the four arrays: the token's text, its logprob (NaN: null), its top
 * alternatives plus itself (top NULL: a null entry), its offset. */
static int lp_add(cJSON *o, const tokenizer *tok, int32_t prev, int32_t id, double logprob, const gen_token *top_src,
                  size_t offset, size_t *text_len) {
    cJSON *tokens = cJSON_GetObjectItemCaseSensitive(o, "tokens");
    cJSON *lps = cJSON_GetObjectItemCaseSensitive(o, "token_logprobs");
    cJSON *tops = cJSON_GetObjectItemCaseSensitive(o, "top_logprobs");
    cJSON *offs = cJSON_GetObjectItemCaseSensitive(o, "text_offset");
    char *text = api_token_text(tok, prev, id, NULL, 0, NULL);
    cJSON *top = top_src ? cJSON_CreateObject() : cJSON_CreateNull();
    if (!text || !top || !tokens || !lps || !tops || !offs) {
        free(text);
        cJSON_Delete(top);
        return PEFTD_ENOMEM;
    }
    cJSON_AddItemToArray(tokens, cJSON_CreateString(text));
    cJSON_AddItemToArray(lps, top_src ? cJSON_CreateNumber(logprob) : cJSON_CreateNull());
    /* Like OpenAI and vLLM, the dict holds the top alternatives plus the token itself. Two
     * ids can read the same; the dict keeps the first (largest) value. */
    for (int k = 0; top_src && k < top_src->n_top && k < ENGINE_MAX_LOGPROBS; k++) {
        char *alt = api_token_text(tok, prev, top_src->top_id[k], NULL, 0, NULL);
        if (alt && !cJSON_GetObjectItemCaseSensitive(top, alt)) cJSON_AddNumberToObject(top, alt, top_src->top_logprob[k]);
        free(alt);
    }
    if (top_src && !cJSON_GetObjectItemCaseSensitive(top, text)) cJSON_AddNumberToObject(top, text, logprob);
    cJSON_AddItemToArray(tops, top);
    cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)offset));
    if (text_len) *text_len = strlen(text);
    free(text);
    return 0;
}

static cJSON *lp_object(void) {
    cJSON *o = cJSON_CreateObject();
    if (!cJSON_AddArrayToObject(o, "tokens") || !cJSON_AddArrayToObject(o, "token_logprobs") ||
        !cJSON_AddArrayToObject(o, "top_logprobs") || !cJSON_AddArrayToObject(o, "text_offset")) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

int api_format_logprobs_append(cJSON *o, const tokenizer *tok, const gen_token *toks, int n, size_t offset_base,
                               int32_t *last_id) {
    for (int i = 0; i < n; i++) {
        const gen_token *t = &toks[i];
        if (lp_add(o, tok, *last_id, t->id, t->logprob, t, offset_base + t->text_offset, NULL)) return PEFTD_ENOMEM;
        *last_id = t->id;
    }
    return 0;
}

cJSON *api_format_logprobs(const tokenizer *tok, const gen_token *toks, int n, size_t offset_base,
                           int32_t *last_id) {
    cJSON *o = lp_object();
    if (o && api_format_logprobs_append(o, tok, toks, n, offset_base, last_id)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *api_format_prompt_logprobs(const tokenizer *tok, const api_prompt *p, const gen_token *pt, int n_pt,
                                  size_t *end) {
    cJSON *o = lp_object();
    size_t off = 0, len = 0;
    for (size_t i = 0; o && i < p->n_ids; i++) {
        const gen_token *t = i >= 1 && (int)i - 1 < n_pt ? &pt[i - 1] : NULL;
        if (i >= 1 && !t) break; /* not scored (cancelled): nothing more to say */
        if (lp_add(o, tok, i ? p->ids[i - 1] : -1, p->ids[i], t ? t->logprob : 0, t, off, &len)) {
            cJSON_Delete(o);
            return NULL;
        }
        off += len;
    }
    if (end) *end = off;
    return o;
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

/* best_of: the candidates of prompt p (per of them from index p * per) in the order
 * returned: highest cumulative logprob first, lower index among equals. */
static void best_order(const api_job *job, int p, int per, int *order) {
    for (int i = 0; i < per; i++) order[i] = p * per + i;
    for (int i = 1; i < per; i++)
        for (int k = i; k > 0 && job->choices[order[k]].cum_logprob > job->choices[order[k - 1]].cum_logprob; k--) {
            int t = order[k];
            order[k] = order[k - 1];
            order[k - 1] = t;
        }
}

/* The logprobs object of one choice: the prompt's when echoed and scored, then its tokens. */
static cJSON *choice_logprobs(api_job *job, const api_choice *ch, const api_prompt *p) {
    int32_t last = p->n_ids ? p->ids[p->n_ids - 1] : -1;
    size_t base = job->req.echo ? p->text_len : 0;
    if (!job->req.gen.prompt_logprobs) return api_format_logprobs(job->srv->tok, ch->tok, ch->n_tok, base, &last);
    cJSON *lp = api_format_prompt_logprobs(job->srv->tok, p, ch->ptok, ch->n_ptok, &base);
    if (lp && api_format_logprobs_append(lp, job->srv->tok, ch->tok, ch->n_tok, base, &last)) {
        cJSON_Delete(lp);
        return NULL;
    }
    return lp;
}

cJSON *api_format_response(api_job *job) {
    if (job->req.chat) return api_chat_format_response(job);
    if (job->req.kind == API_KIND_SCORE) return api_score_format(job);
    if (job->req.kind == API_KIND_EMBEDDINGS) return api_embeddings_format(job);
    if (job->req.kind == API_KIND_CLASSIFY) return api_classify_format(job);
    cJSON *o = api_format_head(job);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    http_buf text = {0};
    const int n = job->req.n, per = job->req.best_of > n ? job->req.best_of : n;
    int order[API_MAX_N];
    if (!choices) goto fail;
    for (int pi = 0; pi < job->req.n_prompts; pi++) {
        best_order(job, pi, per, order);
        if (per == n)
            for (int i = 0; i < n; i++) order[i] = pi * n + i; /* no choosing: as generated */
        for (int rank = 0; rank < n; rank++) {
            api_choice *ch = &job->choices[order[rank]];
            const api_prompt *p = &job->req.prompts[ch->prompt];
            http_buf_reset(&text);
            if ((job->req.echo && http_buf_append(&text, p->text, p->text_len)) ||
                http_buf_append(&text, ch->text.p, ch->text.len))
                goto fail;
            cJSON *lp = NULL;
            if (job->req.gen.logprobs >= 0 && !job->req.hide_logprobs && !(lp = choice_logprobs(job, ch, p))) goto fail;
            if (!api_add_choice(choices, pi * n + rank, text.p, text.len, lp, finish_reason_str(ch->finish)))
                goto fail;
        }
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

int api_format_prompt_chunk(api_job *job, api_choice *ch, const api_prompt *p, cJSON *lp, http_buf *out) {
    cJSON *o = api_format_head(job);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    if (!choices) cJSON_Delete(lp);
    if (!choices || !api_add_choice(choices, ch->index, p->text, p->text_len, lp, NULL)) {
        cJSON_Delete(o);
        return PEFTD_ENOMEM;
    }
    return sse_append_json(out, o);
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
