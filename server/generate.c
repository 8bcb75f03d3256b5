/* server/generate.c — `peftd generate` (see generate.h): opens the runtime with one
 * sequence, loads the optional adapter, encodes the prompt, submits one request and
 * streams its text to stdout as the engine publishes it. */
#include "server/generate.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "server/model/model_adapter_base.h"
#include "server/runtime.h"

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool ready;
} waiter;

static void waiter_notify(void *ud) {
    waiter *w = ud;
    pthread_mutex_lock(&w->mu);
    w->ready = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* The request's parameters: the prompt encoded into *ids, the adapter loaded into *ad and
 * its scale checked, the context length respected. Returns 0, or the exit status. */
static int prepare(const generate_options *o, runtime *rt, int32_t **ids, size_t *n_ids, adapter **ad,
                   gen_params *p) {
    char err[1024];
    if (o->adapter_dir && model_load_adapter(rt->m, o->adapter_dir, ad, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: cannot load adapter %s: %s\n", o->adapter_dir, err);
        return 1;
    }
    /* the HTTP API's rule (adapter_check_scale): refused, never silently ignored */
    if (o->scale_set && (!*ad || adapter_check_scale(*ad, o->adapter_scale, err, sizeof err) < 0)) {
        fprintf(stderr, "peftd: --adapter-scale: %s\n", *ad ? err : "needs --adapter");
        return 2;
    }
    if (tokenizer_encode(rt->tok, o->prompt, strlen(o->prompt), true, ids, n_ids) < 0) {
        fprintf(stderr, "peftd: the prompt is not valid UTF-8\n");
        return 1;
    }
    if (*n_ids == 0) {
        fprintf(stderr, "peftd: the prompt is empty and this tokenizer adds no BOS token\n");
        return 1;
    }
    const adapter *a = *ad;
    int nv = adapter_n_virtual(a), n_new;
    if (engine_max_new_tokens(rt->e, (long long)*n_ids, nv, o->max_tokens, &n_new, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: %s\n", err); /* the one context rule, as the HTTP API words it */
        return 1;
    }
    gen_params_default(p);
    p->max_tokens = (int)o->max_tokens;
    p->temperature = (float)o->temperature;
    p->top_p = (float)o->top_p;
    p->top_k = (int)o->top_k;
    p->seed = (uint64_t)o->seed;
    p->has_seed = o->has_seed;
    p->adapter = a;
    p->adapter_scale = (float)o->adapter_scale;
    return 0;
}

/* Writes r's text to stdout as it comes until it finishes; returns the exit status. */
static int stream(engine_request *r, waiter *w) {
    for (;;) {
        engine_delta d;
        if (engine_request_take(r, &d) < 0) return 1;
        fwrite(d.text, 1, d.text_len, stdout);
        fflush(stdout);
        bool done = d.finished;
        finish_reason fin = d.finish;
        char error[256];
        memcpy(error, d.error, sizeof error);
        engine_delta_free(&d);
        if (done) {
            if (fin == FINISH_ERROR) fprintf(stderr, "peftd: generation failed: %s\n", error);
            return fin == FINISH_ERROR ? 1 : 0;
        }
        pthread_mutex_lock(&w->mu);
        while (!w->ready) pthread_cond_wait(&w->cv, &w->mu);
        w->ready = false;
        pthread_mutex_unlock(&w->mu);
    }
}

int generate_run(const generate_options *o) {
    log_set_level(getenv("PEFTD_LOG") ? LOG_INFO : LOG_WARN); /* stdout is the text only */
    runtime rt;
    engine_config ec;
    engine_config_default(&ec);
    ec.max_seqs = 1;
    if (runtime_open_weights(&rt, o->model_dir, (int)o->threads, false, "auto", o->weights, NULL, o->no_mmap, &ec) < 0) return 1;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    engine_request *r = NULL;
    adapter *ad = NULL;
    gen_params p;
    waiter w = {.ready = false};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    /* the adapter is placed on the backend before the engine thread owns it (kernels.h) */
    int rc = prepare(o, &rt, &ids, &n_ids, &ad, &p);
    if (rc) goto out;
    rc = 1;
    if (runtime_start(&rt) < 0) goto out;
    r = engine_request_create(ids, (int)n_ids, &p);
    if (!r) goto out;
    engine_request_set_notify(r, waiter_notify, &w);
    int st = engine_submit(rt.e, r);
    if (st < 0) {
        fprintf(stderr, "peftd: submit failed: %s\n", peftd_strerror(st));
        goto out;
    }
    rc = stream(r, &w);
out:
    /* stop the engine before the waiter goes out of scope: no notify can follow */
    if (rt.e) engine_stop(rt.e, false);
    engine_request_unref(r);
    free(ids);
    adapter_free(ad);
    runtime_close(&rt);
    return rc;
}
