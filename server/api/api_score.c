/* server/api/api_score.c — POST /v1/score: the log-likelihood of candidate continuations of
 * one prompt under the base model or an adapter (zero-shot classification, reranking).
 *
 *   {"model": base or adapter, "adapter"?, "adapter_scale"?, "user"?,
 *    "prompt": string | [token ids],
 *    "candidates": [string | [token ids], ...]}            (1 .. API_MAX_PROMPTS)
 *
 * Candidate i is scored as the sequence prompt_ids + candidate_ids: a text prompt gets the
 * tokenizer's BOS, a text candidate is tokenized on its own without special tokens (what
 * transformers' tokenizer(c, add_special_tokens=False) gives); token arrays are used as
 * given. Its logprob is the sum over its tokens t of log softmax(logits of the previous
 * position)[t] (temperature 1, raw logits). Each candidate is one engine request with
 * prompt_logprobs from the candidate on (gen.score_from) and max_tokens 0: a prefill-only
 * sequence in the shared batch. With the prefix cache on, candidate 0 runs first and the
 * others start from its cached full prompt blocks (api_completions.c job_submit_deferred).
 *
 * Response: {"object":"list","model","data":[{"object":"score","index","logprob",
 * "token_ids","token_logprobs"}],"usage":{"prompt_tokens","completion_tokens":0,"total_tokens"}}.
 */
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/status.h"
#include "server/api/api_completions.h"

static const char *const score_keys[] = {"model", "adapter", "adapter_scale", "adapters", "combination", "user",
                                           "prompt", "candidates", NULL};

/* Candidate ids (no special tokens for text) appended after the prompt into dst. */
static int add_candidate(const api_server *s, const api_prompt *pr, const cJSON *c, api_prompt *dst, api_err *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    int vocab = tokenizer_vocab_size(s->tok);
    if (cJSON_IsString(c)) {
        size_t len = strlen(c->valuestring);
        if (!http_utf8_valid(c->valuestring, len)) return api_fail(err, "invalid_value", "a candidate is not valid UTF-8");
        int rc = tokenizer_encode(s->tok, c->valuestring, len, false, &ids, &n);
        if (rc) return api_fail(err, "invalid_value", "cannot tokenize a candidate: %s", peftd_strerror(rc));
    } else if (cJSON_IsArray(c)) {
        int k = cJSON_GetArraySize(c);
        if (k > 0 && !(ids = malloc((size_t)k * sizeof *ids))) return PEFTD_ENOMEM;
        const cJSON *it;
        cJSON_ArrayForEach(it, c) {
            double v = cJSON_IsNumber(it) ? it->valuedouble : -1;
            if (v < 0 || v >= vocab || v != (double)(int32_t)v) {
                free(ids);
                return api_fail(err, "invalid_value", "candidate token ids must be integers in [0, %d)", vocab);
            }
            ids[n++] = (int32_t)v;
        }
    } else {
        return api_fail(err, "invalid_type", "'candidates' entries must be strings or arrays of token ids");
    }
    if (n == 0) {
        free(ids);
        return api_fail(err, "invalid_value", "a candidate must not be empty (it has no tokens)");
    }
    dst->ids = malloc((pr->n_ids + n) * sizeof *dst->ids);
    char *text = NULL;
    size_t tlen = 0;
    int rc = tokenizer_decode(s->tok, ids, n, true, &text, &tlen);
    if (dst->ids && !rc) dst->text = malloc(pr->text_len + tlen + 1);
    if (!dst->ids || rc || !dst->text) {
        free(ids);
        free(text);
        return rc ? api_fail(err, "invalid_value", "cannot decode a candidate: %s", peftd_strerror(rc)) : PEFTD_ENOMEM;
    }
    memcpy(dst->ids, pr->ids, pr->n_ids * sizeof *dst->ids);
    memcpy(dst->ids + pr->n_ids, ids, n * sizeof *ids);
    dst->n_ids = pr->n_ids + n;
    memcpy(dst->text, pr->text, pr->text_len);
    memcpy(dst->text + pr->text_len, text, tlen);
    dst->text_len = pr->text_len + tlen;
    dst->text[dst->text_len] = 0;
    free(ids);
    free(text);
    return 0;
}

static int parse_candidates(const api_server *s, const cJSON *root, api_request *r, api_err *err) {
    const cJSON *c = api_field(root, "candidates");
    if (!c) return api_fail(err, "missing_field", "'candidates' is required");
    if (!cJSON_IsArray(c)) return api_fail(err, "invalid_type", "'candidates' must be an array");
    int n = cJSON_GetArraySize(c);
    if (n < 1 || n > API_MAX_PROMPTS)
        return api_fail(err, "invalid_value", "'candidates' must hold 1 to %d entries (it has %d)", API_MAX_PROMPTS, n);
    if (r->n_prompts != 1) return api_fail(err, "invalid_value", "'prompt' must be one prompt (a string or token ids)");
    api_prompt pr = r->prompts[0];
    r->prompts[0] = (api_prompt){0};
    r->n_prompts = 0;
    int rc = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, c) {
        if ((rc = add_candidate(s, &pr, it, &r->prompts[r->n_prompts], err))) break;
        r->n_prompts++;
    }
    r->score_prompt = (int)pr.n_ids;
    free(pr.ids);
    free(pr.text);
    return rc;
}

int api_score_parse(const api_server *s, const tenants_principal *who, const char *body, size_t len, api_request *r,
                    api_err *err) {
    cJSON *root;
    int rc = api_parse_begin(who, body, len, r, &root, err);
    r->kind = API_KIND_SCORE;
    if (!rc) rc = api_check_keys(root, score_keys, "/v1/score", err);
    if (!rc) rc = api_parse_model(s, who, root, r, err);
    if (!rc) rc = api_parse_prompts(s, root, "prompt", r, err);
    if (!rc) rc = parse_candidates(s, root, r, err);
    if (!rc) rc = api_parse_fit_prefill(s, r, err);
    if (!rc) {
        r->score_only = true;
        r->gen.prompt_logprobs = true;
        r->gen.logprobs = 0;
        r->gen.score_from = r->score_prompt;
    }
    return api_parse_end(rc, root, r, err);
}

cJSON *api_score_format(api_job *job) {
    cJSON *o = cJSON_CreateObject(), *data = NULL, *u = NULL;
    if (!o || !cJSON_AddStringToObject(o, "object", "list") || !cJSON_AddStringToObject(o, "model", job->req.model_id) ||
        !(data = cJSON_AddArrayToObject(o, "data")))
        goto fail;
    for (int i = 0; i < job->n_choices; i++) {
        const api_choice *ch = &job->choices[i];
        const api_prompt *p = &job->req.prompts[ch->prompt];
        int n = (int)p->n_ids - job->req.score_prompt;
        if (ch->n_ptok != n) goto fail; /* the engine scores every candidate token */
        cJSON *d = cJSON_CreateObject(), *ids, *lps;
        if (!d) goto fail;
        cJSON_AddItemToArray(data, d);
        double sum = 0;
        if (!cJSON_AddStringToObject(d, "object", "score") || !cJSON_AddNumberToObject(d, "index", i) ||
            !(ids = cJSON_AddArrayToObject(d, "token_ids")) || !(lps = cJSON_AddArrayToObject(d, "token_logprobs")))
            goto fail;
        for (int k = 0; k < n; k++) {
            sum += ch->ptok[k].logprob;
            cJSON_AddItemToArray(ids, cJSON_CreateNumber(p->ids[job->req.score_prompt + k]));
            cJSON_AddItemToArray(lps, cJSON_CreateNumber(ch->ptok[k].logprob));
        }
        if (!cJSON_AddNumberToObject(d, "logprob", sum)) goto fail;
    }
    if (!(u = api_format_usage(job))) goto fail;
    cJSON_AddItemToObject(o, "usage", u);
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}
