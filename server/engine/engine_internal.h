/* server/engine/engine_internal.h — the request object shared by request.c (caller side)
 * and engine.c (engine side). Not for use outside server/engine/. */
#ifndef PEFTD_ENGINE_INTERNAL_H
#define PEFTD_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "server/engine/engine.h"

struct engine_request {
    atomic_int refs;
    atomic_bool cancel;            /* set by engine_cancel; read by the engine thread */
    /* immutable after engine_request_create */
    int32_t *prompt;
    int n_prompt;
    gen_params params;             /* stop strings are owned copies */
    void (*notify)(void *ud);
    void *notify_ud;
    /* output, guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t done_cv;
    char *text;                    /* published completion text */
    size_t text_len, text_cap, text_taken;
    gen_token *tokens;
    int n_tokens, tokens_cap, tokens_taken;
    int completion_tokens;
    bool finished;
    finish_reason finish;
    char error[256];
    /* engine queue link (guarded by the engine's queue lock) */
    struct engine_request *next;
    bool adapter_fetching;         /* engine thread: a fetch of its adapter was started */
    bool skip;                     /* engine thread: passed over in this admission round */
    struct vtc_tenant *vt;         /* engine thread: its tenant's fairness counter */
    struct seq *preempted;         /* engine thread: its sequence, waiting to be recomputed */
};

/* Engine side: append published text / a token record; finish. Each takes r->mu. */
int engine__publish(engine_request *r, const char *text, size_t len, const gen_token *tok,
                    int completion_tokens);
void engine__finish(engine_request *r, finish_reason f, const char *error);
void engine__notify(engine_request *r);

#endif
