/* server/engine/request.c — engine_request: creation, refcount, the output buffer the
 * engine appends to and callers take from. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "server/engine/engine_internal.h"

void gen_params_default(gen_params *p) {
    memset(p, 0, sizeof *p);
    p->max_tokens = 16;
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->logprobs = -1;
    p->repetition_penalty = 1.0f;
    p->adapter_scale = 1.0f;
    p->tenant_weight = 1.0f;
}

const char *finish_reason_str(finish_reason f) {
    switch (f) {
    case FINISH_LENGTH: return "length";
    case FINISH_STOP: return "stop";
    case FINISH_CANCELLED: return "abort";
    case FINISH_ERROR: return "error";
    default: return NULL;
    }
}

engine_request *engine_request_create(const int32_t *prompt, int n_prompt, const gen_params *p) {
    if (n_prompt < 0 || p->n_stop < 0 || p->n_stop > ENGINE_MAX_STOP) return NULL;
    engine_request *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    atomic_init(&r->refs, 1);
    atomic_init(&r->cancel, false);
    r->params = *p;
    r->params.n_stop = 0;
    r->prompt = malloc(((size_t)n_prompt + 1) * sizeof(int32_t));
    if (!r->prompt) goto fail;
    if (n_prompt) memcpy(r->prompt, prompt, (size_t)n_prompt * sizeof(int32_t));
    r->n_prompt = n_prompt;
    for (int i = 0; i < p->n_stop; i++) {
        if (!(r->params.stop[i] = strdup(p->stop[i]))) goto fail;
        r->params.n_stop++;
    }
    if (p->n_bias > 0) {
        if (p->n_bias > ENGINE_MAX_LOGIT_BIAS || !(r->bias_id = malloc((size_t)p->n_bias * sizeof(int32_t))) ||
            !(r->bias_val = malloc((size_t)p->n_bias * sizeof(float))))
            goto fail;
        memcpy(r->bias_id, p->bias_id, (size_t)p->n_bias * sizeof(int32_t));
        memcpy(r->bias_val, p->bias_val, (size_t)p->n_bias * sizeof(float));
    }
    r->params.bias_id = r->bias_id;
    if (p->json_schema) jschema_ref(p->json_schema);
    r->params.bias_val = r->bias_val;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->done_cv, NULL);
    return r;
fail:
    for (int i = 0; i < r->params.n_stop; i++) free(r->params.stop[i]);
    free(r->bias_id);
    free(r->bias_val);
    free(r->prompt);
    free(r);
    return NULL;
}

void engine_request_set_notify(engine_request *r, void (*notify)(void *ud), void *ud) {
    r->notify = notify;
    r->notify_ud = ud;
}

void engine_request_ref(engine_request *r) { atomic_fetch_add(&r->refs, 1); }

void engine_request_unref(engine_request *r) {
    if (!r) return;
    int prev = atomic_fetch_sub(&r->refs, 1);
    if (prev <= 0) {
        LOGE("engine_request_unref: refcount below zero");
        abort(); /* programmer error: a double unref would be a use-after-free */
    }
    if (prev != 1) return;
    for (int i = 0; i < r->params.n_stop; i++) free(r->params.stop[i]);
    free(r->prompt);
    free(r->text);
    free(r->tokens);
    free(r->prompt_lp);
    free(r->hidden);
    free(r->labels);
    jschema_unref(r->params.json_schema);
    free(r->bias_id);
    free(r->bias_val);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->done_cv);
    free(r);
}

int engine_request_take(engine_request *r, engine_delta *d) {
    memset(d, 0, sizeof *d);
    pthread_mutex_lock(&r->mu);
    size_t n = r->text_len - r->text_taken;
    d->text = malloc(n + 1);
    int nt = r->n_tokens - r->tokens_taken, np = r->n_prompt_lp - r->prompt_lp_taken;
    if (nt > 0) d->tokens = malloc((size_t)nt * sizeof(gen_token));
    if (np > 0) d->prompt_tokens_lp = malloc((size_t)np * sizeof(gen_token));
    if (!d->text || (nt > 0 && !d->tokens) || (np > 0 && !d->prompt_tokens_lp)) {
        pthread_mutex_unlock(&r->mu);
        engine_delta_free(d);
        return PEFTD_ENOMEM;
    }
    if (n) memcpy(d->text, r->text + r->text_taken, n);
    d->text[n] = 0;
    d->text_len = n;
    r->text_taken = r->text_len;
    if (nt > 0) memcpy(d->tokens, r->tokens + r->tokens_taken, (size_t)nt * sizeof(gen_token));
    d->n_tokens = nt;
    r->tokens_taken = r->n_tokens;
    if (np > 0) memcpy(d->prompt_tokens_lp, r->prompt_lp + r->prompt_lp_taken, (size_t)np * sizeof(gen_token));
    d->n_prompt_lp = np > 0 ? np : 0;
    r->prompt_lp_taken = r->n_prompt_lp;
    if (r->finished && r->hidden && !r->hidden_taken) {
        if (!(d->hidden = malloc((size_t)r->n_hidden * sizeof(float)))) {
            pthread_mutex_unlock(&r->mu);
            engine_delta_free(d);
            return PEFTD_ENOMEM;
        }
        memcpy(d->hidden, r->hidden, (size_t)r->n_hidden * sizeof(float));
        d->n_hidden = r->n_hidden;
        if (r->labels && (d->labels = malloc(r->labels_len))) memcpy(d->labels, r->labels, r->labels_len);
        if (r->labels && !d->labels) {
            pthread_mutex_unlock(&r->mu);
            engine_delta_free(d);
            return PEFTD_ENOMEM;
        }
        r->hidden_taken = true;
    }
    d->finished = r->finished;
    d->finish = r->finish;
    memcpy(d->error, r->error, sizeof d->error);
    d->prompt_tokens = r->n_prompt;
    d->completion_tokens = r->completion_tokens;
    d->queue_ns = r->queue_ns;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

void engine_delta_free(engine_delta *d) {
    free(d->text);
    free(d->tokens);
    free(d->prompt_tokens_lp);
    free(d->hidden);
    free(d->labels);
    d->hidden = NULL;
    d->labels = NULL;
    d->text = NULL;
    d->tokens = NULL;
    d->prompt_tokens_lp = NULL;
}

void engine_request_wait(engine_request *r) {
    pthread_mutex_lock(&r->mu);
    while (!r->finished || !r->finish_notified) pthread_cond_wait(&r->done_cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
}

int engine__publish(engine_request *r, const char *text, size_t len, const gen_token *tok,
                    int completion_tokens) {
    int st = 0;
    pthread_mutex_lock(&r->mu);
    if (len && text) {
        if (r->text_len + len + 1 > r->text_cap) {
            size_t cap = r->text_cap ? r->text_cap : 256;
            while (cap < r->text_len + len + 1) cap *= 2;
            char *t = realloc(r->text, cap);
            if (!t) { st = PEFTD_ENOMEM; goto out; }
            r->text = t;
            r->text_cap = cap;
        }
        memcpy(r->text + r->text_len, text, len);
        r->text_len += len;
        r->text[r->text_len] = 0;
    }
    if (tok) {
        if (r->n_tokens == r->tokens_cap) {
            int cap = r->tokens_cap ? 2 * r->tokens_cap : 64;
            gen_token *t = realloc(r->tokens, (size_t)cap * sizeof *t);
            if (!t) { st = PEFTD_ENOMEM; goto out; }
            r->tokens = t;
            r->tokens_cap = cap;
        }
        r->tokens[r->n_tokens++] = *tok;
    }
    r->completion_tokens = completion_tokens;
out:
    pthread_mutex_unlock(&r->mu);
    return st;
}

int engine__publish_prompt(engine_request *r, const gen_token *tok) {
    int st = 0;
    pthread_mutex_lock(&r->mu);
    if (r->n_prompt_lp == r->prompt_lp_cap) {
        int cap = r->prompt_lp_cap ? 2 * r->prompt_lp_cap : 64;
        gen_token *t = realloc(r->prompt_lp, (size_t)cap * sizeof *t);
        if (!t) st = PEFTD_ENOMEM;
        else {
            r->prompt_lp = t;
            r->prompt_lp_cap = cap;
        }
    }
    if (!st) r->prompt_lp[r->n_prompt_lp++] = *tok;
    pthread_mutex_unlock(&r->mu);
    return st;
}

int engine__publish_hidden(engine_request *r, float *h, int n, char *labels, size_t labels_len) {
    pthread_mutex_lock(&r->mu);
    free(r->hidden);
    free(r->labels);
    r->hidden = h;
    r->n_hidden = n;
    r->labels = labels;
    r->labels_len = labels_len;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

void engine__finish(engine_request *r, finish_reason f, const char *error) {
    pthread_mutex_lock(&r->mu);
    if (!r->finished) {
        r->finished = true;
        r->finish = f;
        if (error) snprintf(r->error, sizeof r->error, "%s", error);
    }
    pthread_cond_broadcast(&r->done_cv);
    pthread_mutex_unlock(&r->mu);
}

void engine__finish_notified(engine_request *r) {
    pthread_mutex_lock(&r->mu);
    r->finish_notified = true;
    pthread_cond_broadcast(&r->done_cv);
    pthread_mutex_unlock(&r->mu);
}

void engine__notify(engine_request *r) {
    if (r->notify) r->notify(r->notify_ud);
}
