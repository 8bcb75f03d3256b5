/* server/api/api_completions.c — POST /v1/completions in flight: one job per HTTP
 * request holding one engine request per choice, the engine's notify callback, the
 * suspend/resume handshake with libmicrohttpd, the streaming content reader, cancellation
 * when the client goes away, and the wake-up of every job at shutdown.
 *
 * Threads: notify runs on the engine thread; everything else on MHD threads (and
 * api_completions_shutdown on the stopping thread). job->mu orders them: the HTTP side
 * collects pending output and decides to suspend under the lock, and notify appends
 * output and resumes under the same lock, so a wake-up is never lost and a connection is
 * never resumed twice or after it closed.
 *
 * Lifetime: a job is refcounted — the connection (until the completed callback), each
 * submitted engine request (until notify delivers its finish: the engine calls notify
 * no more after that), and a streaming response (until MHD frees it).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <sys/socket.h>

#include "lib/log.h"
#include "lib/status.h"
#include "server/api/api_completions.h"
#include "server/http/http_metrics.h"
#include "server/http/sse.h"

/* Bytes MHD asks the reader for at most per call; SSE chunks are a few hundred bytes. */
#define API_STREAM_BLOCK (16 * 1024)

static void job_unref(api_job *job) {
    if (atomic_fetch_sub(&job->refs, 1) != 1) return;
    for (int i = 0; i < job->n_choices; i++) {
        api_choice *ch = &job->choices[i];
        engine_request_unref(ch->r);
        http_buf_free(&ch->pend_text);
        http_buf_free(&ch->text);
        free(ch->pend_tok);
        free(ch->tok);
        free(ch->ptok);
        free(ch->pend_ptok);
        free(ch->hidden);
        free(ch->labels);
    }
    free(job->choices);
    api_request_free(&job->req);
    http_buf_free(&job->out);
    pthread_mutex_destroy(&job->mu);
    free(job);
}

static int api_tok_append(gen_token **arr, int *n, int *cap, const gen_token *src, int k) {
    if (k <= 0) return 0;
    if (*n + k > *cap) {
        int c = *cap ? *cap : 16;
        while (c < *n + k) c *= 2;
        gen_token *p = realloc(*arr, (size_t)c * sizeof *p);
        if (!p) return PEFTD_ENOMEM;
        *arr = p;
        *cap = c;
    }
    memcpy(*arr + *n, src, (size_t)k * sizeof *src);
    *n += k;
    return 0;
}

/* Under job->mu, after a choice finished: once every choice has, the request holds no
 * sequence in the engine any more, so its tenant's quota hold is given back now, before
 * the connection is woken to send the last bytes. Released later (at the last reference)
 * a client that sends its next request as soon as it read the answer could find its own
 * finished request still counted against max_concurrent. */
static void job_release_quota_if_done_locked(api_job *job) {
    if (!job->req.tenants) return;
    for (int i = 0; i < job->n_choices; i++)
        if (!job->choices[i].finished) return;
    tenants_release(job->req.tenants, &job->req.ticket);
}

/* /v1/score shares the prompt's KV across candidates through the prefix cache: candidate 0
 * runs first (its full prompt blocks are cached as it computes them), the others are
 * submitted when it finished (engine thread, from its notify) and find those blocks cached.
 * If candidate 0 did not finish normally, or a submission is refused, the rest finish with
 * that outcome and the connection is woken. */
static void job_submit_deferred(api_job *job, finish_reason first) {
    bool wake = false;
    for (int i = 1; i < job->n_choices; i++) {
        api_choice *ch = &job->choices[i];
        int rc = PEFTD_ECANCELED;
        pthread_mutex_lock(&job->mu);
        bool go = first == FINISH_LENGTH && !job->closed;
        pthread_mutex_unlock(&job->mu);
        if (go) {
            atomic_fetch_add(&job->refs, 1);
            rc = engine_submit(job->srv->e, ch->r);
            if (rc) atomic_fetch_sub(&job->refs, 1); /* never the last: the connection holds one */
            else atomic_store(&ch->submitted, true);
        }
        if (!rc) continue;
        pthread_mutex_lock(&job->mu);
        ch->finished = wake = true;
        ch->finish = first == FINISH_LENGTH ? FINISH_ERROR : first;
        if (ch->finish == FINISH_ERROR)
            snprintf(ch->error, sizeof ch->error, "%s", first == FINISH_LENGTH ? peftd_strerror(rc) : "candidate 0 failed");
        job_release_quota_if_done_locked(job);
        pthread_mutex_unlock(&job->mu);
    }
    pthread_mutex_lock(&job->mu);
    if (wake && job->suspended && !job->closed) {
        job->suspended = false;
        MHD_resume_connection(job->conn);
    }
    pthread_mutex_unlock(&job->mu);
}

/* Engine thread: move the new output into the choice, wake the connection. */
static void job_notify(void *ud) {
    api_choice *ch = ud;
    api_job *job = ch->job;
    engine_delta d;
    memset(&d, 0, sizeof d);
    int rc = engine_request_take(ch->r, &d);
    bool last = false;

    pthread_mutex_lock(&job->mu);
    if (rc == 0 && !ch->finished) {
        if (http_buf_append(&ch->pend_text, d.text ? d.text : "", d.text_len) ||
            api_tok_append(&ch->pend_tok, &ch->n_pend_tok, &ch->cap_pend_tok, d.tokens, d.n_tokens) ||
            api_tok_append(&ch->pend_ptok, &ch->n_pend_ptok, &ch->cap_pend_ptok, d.prompt_tokens_lp, d.n_prompt_lp))
            snprintf(ch->error, sizeof ch->error, "out of memory while collecting output");
        for (int k = 0; k < d.n_tokens; k++) ch->cum_logprob += d.tokens[k].logprob;
        if (d.hidden) { /* pool: the pooled hidden state arrives with the finish */
            free(ch->hidden);
            ch->hidden = d.hidden;
            ch->n_hidden = d.n_hidden;
            d.hidden = NULL;
            free(ch->labels);
            ch->labels = d.labels;
            d.labels = NULL;
        }
        http_metrics_on_tokens(job->t0_ns, &ch->t_last_ns, d.completion_tokens - ch->completion_tokens);
        /* the tenant's tokens-per-minute window counts tokens as they are generated */
        if (job->req.tenants)
            tenants_count_tokens(job->req.tenants, &job->req.ticket, d.completion_tokens - ch->completion_tokens);
        ch->completion_tokens = d.completion_tokens;
        if (d.queue_ns && !ch->queue_seen) {
            ch->queue_seen = true;
            http_metrics_on_queue(d.queue_ns);
        }
        if (d.finished) {
            ch->finished = last = true;
            ch->finish = d.finish;
            int why = d.finish == FINISH_STOP       ? HTTP_FINISH_STOP
                      : d.finish == FINISH_LENGTH    ? HTTP_FINISH_LENGTH
                      : d.finish == FINISH_CANCELLED ? HTTP_FINISH_CANCELLED
                                                     : HTTP_FINISH_ERROR;
            http_metrics_on_finish(job->req.adapter ? job->req.adapter->meta.name : NULL, why,
                                   d.queue_ns ? d.prompt_tokens : 0, d.completion_tokens);
            if (d.finish == FINISH_ERROR) snprintf(ch->error, sizeof ch->error, "%s", d.error);
            job_release_quota_if_done_locked(job);
        }
    }
    if (job->suspended && !job->closed) {
        job->suspended = false;
        MHD_resume_connection(job->conn);
    }
    pthread_mutex_unlock(&job->mu);
    engine_delta_free(&d);
    if (rc) LOGW("http: %s: taking engine output failed: %s", job->id, peftd_strerror(rc));
    if (last && job->deferred && ch->index == 0) job_submit_deferred(job, ch->finish);
    if (last) job_unref(job);
}

/* Under job->mu: moves every choice's pending output to its HTTP-side buffers. Returns
 * PEFTD_ENOMEM when it could not; *all_finished tells whether every choice is done. */
static int job_collect_locked(api_job *job, bool *all_finished) {
    int rc = 0;
    *all_finished = true;
    for (int i = 0; i < job->n_choices; i++) {
        api_choice *ch = &job->choices[i];
        if (!rc && (http_buf_append(&ch->text, ch->pend_text.p, ch->pend_text.len) ||
                    api_tok_append(&ch->tok, &ch->n_tok, &ch->cap_tok, ch->pend_tok, ch->n_pend_tok) ||
                    api_tok_append(&ch->ptok, &ch->n_ptok, &ch->cap_ptok, ch->pend_ptok, ch->n_pend_ptok)))
            rc = PEFTD_ENOMEM;
        http_buf_reset(&ch->pend_text);
        ch->n_pend_tok = 0;
        ch->n_pend_ptok = 0;
        if (!ch->finished) *all_finished = false;
    }
    return rc;
}

/* Cancels the submitted, unfinished requests. Finished ones are skipped: the engine may
 * already be stopped, and a finished request needs nothing. */
static void job_cancel_all(api_job *job) {
    for (int i = 0; i < job->n_choices; i++) {
        api_choice *ch = &job->choices[i];
        pthread_mutex_lock(&job->mu);
        bool live = atomic_load(&ch->submitted) && !ch->finished;
        pthread_mutex_unlock(&job->mu);
        if (live) engine_cancel(job->srv->e, ch->r);
    }
}

/* ---- non-streaming ---- */

static enum MHD_Result job_respond(http_req *req, struct MHD_Connection *conn, api_job *job) {
    for (int i = 0; i < job->n_choices; i++) {
        const api_choice *ch = &job->choices[i];
        if (ch->finish == FINISH_ERROR &&
            (!strcmp(ch->error, ENGINE_ERR_NOT_CLASSIFIER) || !strcmp(ch->error, ENGINE_ERR_CLASSIFIER_ONLY)))
            return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_value", "'%s': %s", job->req.model_id,
                              ch->error);
        if (ch->finish == FINISH_ERROR && !strncmp(ch->error, ENGINE_ERR_MIX, strlen(ENGINE_ERR_MIX)))
            return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_value", "'adapters': %s", ch->error);
        if (ch->finish == FINISH_ERROR || ch->error[0])
            return http_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "engine_error",
                              "generation failed: %s", ch->error[0] ? ch->error : "engine error");
        if (ch->finish == FINISH_CANCELLED)
            return http_error_hdr(req, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting_down", NULL,
                                  NULL, "the request was cancelled: the server is shutting down");
    }
    cJSON *o = api_format_response(job);
    if (!o) return http_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
    return http_respond_json(req, conn, MHD_HTTP_OK, o);
}

/* libmicrohttpd does not watch a suspended connection, so a client that hangs up while
 * its non-streaming completion runs would go unnoticed until the end. Each resume (one
 * per engine output) peeks at the socket instead: a read of 0 bytes means the peer
 * closed its side. */
static bool peer_closed(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    char c;
    ssize_t n = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0;
}

enum MHD_Result api_completions_continue(http_req *req, struct MHD_Connection *conn) {
    api_job *job = req->ctx;
    bool all_finished;
    pthread_mutex_lock(&job->mu);
    int rc = job_collect_locked(job, &all_finished);
    if (!rc && !all_finished && peer_closed(conn)) {
        pthread_mutex_unlock(&job->mu);
        job_cancel_all(job);
        return MHD_NO; /* closes the connection; the completed callback releases the job */
    }
    if (!rc && !all_finished && !api_stopping(job->srv)) {
        job->suspended = true;
        MHD_suspend_connection(conn);
        pthread_mutex_unlock(&job->mu);
        return MHD_YES;
    }
    pthread_mutex_unlock(&job->mu);
    if (rc) {
        job_cancel_all(job);
        return http_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
    }
    if (!all_finished) {
        job_cancel_all(job);
        return http_error_hdr(req, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting_down", NULL, NULL,
                              "the server is shutting down");
    }
    return job_respond(req, conn, job);
}

/* ---- streaming ---- */

/* Under job->mu, after collecting: the echoed prompt can go out — with prompt logprobs
 * only once the engine scored all of it (it does before the first generated token). */
static bool echo_ready(const api_job *job, const api_choice *ch) {
    if (!job->req.echo) return false;
    if (!job->req.gen.prompt_logprobs) return true;
    const api_prompt *p = &job->req.prompts[ch->prompt];
    return ch->finished || ch->n_ptok >= (int)p->n_ids - 1;
}

/* Formats what the choices produced since the last call into job->out, or suspends the
 * connection when there is nothing. */
static int job_stream_fill(api_job *job) {
    bool all_finished, finished[API_MAX_N * API_MAX_PROMPTS], echo_ok[API_MAX_N * API_MAX_PROMPTS];
    pthread_mutex_lock(&job->mu);
    int rc = job_collect_locked(job, &all_finished);
    bool any = false;
    for (int i = 0; i < job->n_choices; i++) {
        api_choice *ch = &job->choices[i];
        finished[i] = ch->finished;
        echo_ok[i] = echo_ready(job, ch);
        if (ch->text.len || ch->n_tok || (ch->finished && !ch->finish_sent) || (echo_ok[i] && !ch->echo_sent))
            any = true;
    }
    bool stopping = api_stopping(job->srv);
    if (!rc && !any && !stopping) {
        job->suspended = true;
        MHD_suspend_connection(job->conn);
        pthread_mutex_unlock(&job->mu);
        return 0;
    }
    pthread_mutex_unlock(&job->mu);
    if (rc) return rc;

    http_buf text = {0};
    for (int i = 0; i < job->n_choices && !rc; i++) {
        api_choice *ch = &job->choices[i];
        const api_prompt *p = &job->req.prompts[ch->prompt];
        bool fin = finished[i] && !ch->finish_sent;
        bool echo = echo_ok[i] && !ch->echo_sent;
        if (!ch->text.len && !ch->n_tok && !fin && !echo) continue;
        if (echo && job->req.gen.prompt_logprobs && job->req.gen.logprobs >= 0) {
            /* the echoed prompt's own chunk, with its logprobs */
            cJSON *plp = api_format_prompt_logprobs(job->srv->tok, p, ch->ptok, ch->n_ptok, &ch->lp_base);
            ch->has_lp_base = true;
            rc = plp ? api_format_prompt_chunk(job, ch, p, plp, &job->out) : PEFTD_ENOMEM;
            if (rc) break;
            ch->echo_sent = true;
            echo = false;
            if (!ch->text.len && !ch->n_tok && !fin) continue;
        }
        http_buf_reset(&text);
        if ((echo && http_buf_append(&text, p->text, p->text_len)) ||
            http_buf_append(&text, ch->text.p, ch->text.len)) {
            rc = PEFTD_ENOMEM;
            break;
        }
        rc = api_format_chunk(job, ch, text.p, text.len, ch->tok, ch->n_tok,
                              ch->has_lp_base ? ch->lp_base : job->req.echo ? p->text_len : 0,
                              fin && ch->finish != FINISH_ERROR, &job->out);
        if (!rc && fin && (ch->finish == FINISH_ERROR || ch->error[0]))
            rc = api_format_stream_error(ch->error[0] ? ch->error : "engine error", &job->out);
        ch->echo_sent = ch->echo_sent || echo;
        ch->finish_sent = ch->finish_sent || fin;
        http_buf_reset(&ch->text);
        ch->n_tok = 0;
    }
    http_buf_free(&text);
    if (rc) return rc;
    if (all_finished) {
        rc = api_format_stream_end(job, &job->out);
        job->done = true;
    } else if (stopping && !any) {
        /* Woken for shutdown with the engine silent: end the stream rather than wait. */
        rc = api_format_stream_error("the server is shutting down", &job->out);
        if (!rc) rc = sse_append_done(&job->out);
        job->done = true;
    }
    return rc;
}

static ssize_t job_stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    api_job *job = cls;
    for (;;) {
        if (job->out_pos < job->out.len) {
            size_t n = job->out.len - job->out_pos;
            if (n > max) n = max;
            memcpy(buf, job->out.p + job->out_pos, n);
            job->out_pos += n;
            job->bytes_sent += n;
            return (ssize_t)n;
        }
        http_buf_reset(&job->out);
        job->out_pos = 0;
        if (job->done) return MHD_CONTENT_READER_END_OF_STREAM;
        if (job_stream_fill(job)) {
            LOGW("http: %s: stream aborted: out of memory", job->id);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        /* Nothing formatted and not done: job_stream_fill suspended the connection. MHD
         * calls again once notify resumes it. */
        if (job->out.len == 0 && !job->done) return 0;
    }
}

static void job_stream_free(void *cls) { job_unref(cls); }

static enum MHD_Result job_start_stream(http_req *req, struct MHD_Connection *conn, api_job *job) {
    struct MHD_Response *resp = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, API_STREAM_BLOCK, job_stream_read, job, job_stream_free);
    if (!resp) {
        job_cancel_all(job);
        return http_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
    }
    atomic_fetch_add(&job->refs, 1); /* the response's; job_stream_free drops it */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    http_cors_decorate(req, resp);
    /* Tells reverse proxies (nginx) not to buffer the stream. */
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    access_log_response(&req->acc, resp, MHD_HTTP_OK, 0);
    enum MHD_Result r = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    if (r == MHD_YES) http_count_response(req, MHD_HTTP_OK);
    return r;
}

/* ---- setup and teardown ---- */

static api_job *job_create(api_server *s, struct MHD_Connection *conn) {
    api_job *job = calloc(1, sizeof *job);
    if (!job) return NULL;
    atomic_init(&job->refs, 1);
    pthread_mutex_init(&job->mu, NULL);
    job->srv = s;
    job->conn = conn;
    job->created = time(NULL);
    /* Multiplying by an odd constant is a bijection on 64-bit values: ids stay unique but
     * don't reveal how many requests the server has seen. */
    uint64_t n = atomic_fetch_add(&s->next_id, 1) * UINT64_C(0x9E3779B97F4A7C15);
    snprintf(job->id, sizeof job->id, "cmpl-%016" PRIx64, n);
    return job;
}

/* One engine request per candidate: best_of per prompt (n unless best_of is given; the n
 * best are chosen when formatting). */
static int job_make_choices(api_job *job) {
    const api_request *rq = &job->req;
    int per = rq->best_of > rq->n ? rq->best_of : rq->n;
    job->n_choices = rq->n_prompts * per;
    job->choices = calloc((size_t)job->n_choices, sizeof *job->choices);
    if (!job->choices) return PEFTD_ENOMEM;
    for (int p = 0; p < rq->n_prompts; p++) {
        for (int i = 0; i < per; i++) {
            api_choice *ch = &job->choices[p * per + i];
            const api_prompt *pr = &rq->prompts[p];
            gen_params gp = rq->gen;
            /* n choices of one seeded request must differ from each other yet be
             * reproducible: choice i samples with seed + i. */
            if (gp.has_seed) gp.seed += (uint64_t)i;
            ch->job = job;
            ch->index = p * per + i; /* best_of > n: renumbered when chosen */
            ch->prompt = p;
            ch->last_id = pr->n_ids ? pr->ids[pr->n_ids - 1] : -1;
            ch->r = engine_request_create(pr->ids, (int)pr->n_ids, &gp);
            if (!ch->r) return PEFTD_ENOMEM;
            engine_request_set_notify(ch->r, job_notify, ch);
        }
    }
    return 0;
}

static enum MHD_Result job_submit_failed(http_req *req, struct MHD_Connection *conn, int rc) {
    return api_fail_status(req, conn, rc, "cannot submit the request",
                           rc == PEFTD_EBUSY       ? "the server is overloaded: too many queued requests, retry later"
                           : rc == PEFTD_ECANCELED ? "the server is shutting down"
                           : rc == PEFTD_ERANGE    ? "the prompt plus max_tokens do not fit the model's context or "
                                                     "the KV cache"
                                                   : NULL);
}

/* What a validated request can cost its tenant at most: every choice is a sequence that
 * prefills its prompt and may generate max_tokens. */
static tenants_cost request_cost(const api_request *r) {
    int per = r->best_of > r->n ? r->best_of : r->n;
    tenants_cost c = {.seqs = r->n_prompts * per, .max_new = r->gen.max_tokens};
    for (int i = 0; i < r->n_prompts; i++) c.prompt_tokens += (int64_t)r->prompts[i].n_ids * per;
    return c;
}

typedef int (*job_parse_fn)(const api_server *s, const tenants_principal *who, const char *body, size_t len,
                            api_request *out, api_err *err);

static enum MHD_Result job_post(http_req *req, struct MHD_Connection *conn, bool chat, job_parse_fn parse) {
    api_server *s = api_of(req);
    if (api_stopping(s))
        return http_error_hdr(req, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting_down", NULL, NULL,
                              "the server is shutting down");
    api_job *job = job_create(s, conn);
    if (!job) return http_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
    api_err err;
    if (chat) api_chat_job_init(job);
    if (parse(s, &req->who, req->body, req->len, &job->req, &err)) {
        job_unref(job);
        return http_error(req, conn, err.status, err.code, "%s", err.message);
    }
    if (req->who.role == TENANTS_TENANT) {
        /* quotas after validation: a malformed request costs nothing; the ticket is held
         * until the job is freed (api_request_free), so a stream counts until it ends */
        tenants_cost cost = request_cost(&job->req);
        int retry = 1, rc = tenants_admit(s->cfg.tenants, req->who.tenant, &cost, &job->req.ticket, &retry);
        if (rc < 0) {
            tenants_quota q = rc == PEFTD_EQUOTA ? job->req.ticket.refused : TENANTS_QUOTA_NONE;
            job_unref(job);
            char ra[16], msg[256];
            snprintf(ra, sizeof ra, "%d", retry);
            tstore_tenant lim = {0};
            tenants_get(s->cfg.tenants, req->who.tenant, &lim);
            if (q == TENANTS_QUOTA_NEVER_FITS)
                snprintf(msg, sizeof msg,
                         "this request runs %d sequences at once (prompts x n) but this tenant may run at most %lld: "
                         "send fewer prompts or a smaller n", cost.seqs, (long long)lim.max_concurrent);
            else if (q == TENANTS_QUOTA_CONCURRENT)
                snprintf(msg, sizeof msg,
                         "this tenant's running sequences would exceed its limit of %lld: retry later",
                         (long long)lim.max_concurrent);
            else if (q == TENANTS_QUOTA_TOKENS)
                snprintf(msg, sizeof msg,
                         "this tenant's tokens-per-minute limit (%lld, prompt + generated, counting the "
                         "worst case of requests in flight) is reached: retry later", (long long)lim.tokens_per_min);
            else
                snprintf(msg, sizeof msg, "unknown tenant");
            /* every refusal here is the tenant's quota (an unknown tenant has none left) */
            const api_status_map *m = api_status_http(PEFTD_EQUOTA);
            return http_error_hdr(req, conn, m->http, m->code, MHD_HTTP_HEADER_RETRY_AFTER, ra, msg);
        }
        job->req.tenants = s->cfg.tenants;
    }
    if (job_make_choices(job)) {
        job_unref(job);
        return http_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
    }
    job->t0_ns = req->acc.t0_ns;
    access_log_adopt_id(&req->acc, job->id);
    /* From here the completed callback owns the connection's reference. */
    req->ctx = job;
    pthread_mutex_lock(&s->jobs_mu);
    job->next = s->jobs;
    if (s->jobs) s->jobs->prev = job;
    s->jobs = job;
    job->in_list = true;
    pthread_mutex_unlock(&s->jobs_mu);

    /* score: candidate 0 first, the rest once its prompt blocks are cached (job_submit_deferred) */
    job->deferred = job->req.kind == API_KIND_SCORE && job->n_choices > 1 && engine_prefix_cache_on(s->e);
    for (int i = 0; i < (job->deferred ? 1 : job->n_choices); i++) {
        api_choice *ch = &job->choices[i];
        /* notify may run (and finish the request) before engine_submit returns, so the
         * engine's reference on the job exists before the engine can see the request. */
        atomic_fetch_add(&job->refs, 1);
        int rc = engine_submit(s->e, ch->r);
        if (rc) {
            atomic_fetch_sub(&job->refs, 1); /* never the last: the connection holds one */
            job_cancel_all(job);
            return job_submit_failed(req, conn, rc);
        }
        atomic_store(&ch->submitted, true);
    }
    http_metrics_on_request(job->req.adapter ? job->req.adapter->meta.name : NULL);
    LOGD("http: %s: %d choice%s, stream=%d", job->id, job->n_choices, job->n_choices > 1 ? "s" : "",
         job->req.stream);
    if (job->req.stream) return job_start_stream(req, conn, job);
    return api_completions_continue(req, conn);
}

enum MHD_Result api_completions_post(http_req *req, struct MHD_Connection *conn) {
    return job_post(req, conn, false, api_request_parse);
}
enum MHD_Result api_chat_post(http_req *req, struct MHD_Connection *conn) { return job_post(req, conn, true, api_chat_parse); }
enum MHD_Result api_score_post(http_req *req, struct MHD_Connection *conn) {
    return job_post(req, conn, false, api_score_parse);
}
enum MHD_Result api_embeddings_post(http_req *req, struct MHD_Connection *conn) {
    return job_post(req, conn, false, api_embeddings_parse);
}
enum MHD_Result api_classify_post(http_req *req, struct MHD_Connection *conn) {
    return job_post(req, conn, false, api_classify_parse);
}

/* What the access line says of a generation. */
static void job_account(api_job *job, http_access *a) {
    a->generation = true;
    if (!a->tenant[0]) snprintf(a->tenant, sizeof a->tenant, "%s", job->req.gen.tenant);
    snprintf(a->model, sizeof a->model, "%s", job->req.model_id);
    if (job->req.adapter) snprintf(a->adapter, sizeof a->adapter, "%s", job->req.adapter->meta.name);
    a->prompt_tokens = a->completion_tokens = 0;
    for (int i = 0; i < job->req.n_prompts; i++) a->prompt_tokens += (int)job->req.prompts[i].n_ids;
    pthread_mutex_lock(&job->mu); /* a cancelled choice may still be finishing */
    for (int i = 0; i < job->n_choices; i++) a->completion_tokens += job->choices[i].completion_tokens;
    pthread_mutex_unlock(&job->mu);
    if (job->req.stream) a->bytes = job->bytes_sent;
}

void api_completions_closed(http_req *req, enum MHD_RequestTerminationCode toe) {
    api_job *job = req->ctx;
    api_server *s = api_of(req);
    req->ctx = NULL;
    job_account(job, &req->acc);
    bool all_finished = true;
    pthread_mutex_lock(&job->mu);
    job->closed = true;
    for (int i = 0; i < job->n_choices; i++)
        if (atomic_load(&job->choices[i].submitted) && !job->choices[i].finished) all_finished = false;
    pthread_mutex_unlock(&job->mu);
    if (!all_finished) {
        LOGI("http: %s: client gone (termination %d): cancelling", job->id, (int)toe);
        job_cancel_all(job);
    }
    pthread_mutex_lock(&s->jobs_mu);
    if (job->in_list) {
        if (job->prev) job->prev->next = job->next;
        else s->jobs = job->next;
        if (job->next) job->next->prev = job->prev;
        job->in_list = false;
    }
    pthread_mutex_unlock(&s->jobs_mu);
    job_unref(job);
}

void api_completions_shutdown(api_server *s) {
    pthread_mutex_lock(&s->jobs_mu);
    for (api_job *job = s->jobs; job; job = job->next) {
        pthread_mutex_lock(&job->mu);
        if (job->suspended && !job->closed) {
            job->suspended = false;
            MHD_resume_connection(job->conn);
        }
        pthread_mutex_unlock(&job->mu);
        job_cancel_all(job);
    }
    pthread_mutex_unlock(&s->jobs_mu);
}
