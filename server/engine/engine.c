/* server/engine/engine.c — the engine thread and its public API: the libuv loop (an async
 * handle coalesces wake-ups from any thread; an idle handle runs one step per loop
 * iteration while there is work, so new requests and cancellations are picked up between
 * steps), the submission queue, cancellation, statistics, shutdown.
 *
 * Threads: callers touch only the submission queue (qmu) and request objects; everything
 * else (sequences, KV blocks, the llama_ctx, the backend, the adapter tiers) belongs to
 * the engine thread. Admission lives in scheduler.c, the step in step.c, sequences in
 * sequence.c; they call nothing here (the adapter-ready wake-up reaches them as
 * e->adapter_ready).
 */
#include "server/engine/engine.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter_store/registry.h"
#include "lib/log.h"
#include "server/engine/engine_internal.h"
#include "server/model/model_adapter_base.h"

void engine_config_default(engine_config *c) {
    c->max_seqs = 64;
    c->max_batch_tokens = 256;
    c->block_size = 16;
    c->kv_blocks = 0;
    c->kv_cache_mb = 512;
    c->max_context = 0;
    c->max_queue = 1024;
    c->store = NULL;
    c->host_cache_bytes = (size_t)256 << 20;
    c->adapter_slots = 64;
    c->prefix_cache = true;
    c->prefix_cache_blocks = 0;
    c->device_sampling = -1;
    snprintf(c->kv_dtype, sizeof c->kv_dtype, "f32");
}

int engine_kv_dtype_parse(const char *s) {
    if (!s || !s[0] || !strcmp(s, "f32")) return KDT_F32;
    if (!strcmp(s, "f16")) return KDT_F16;
    return -1;
}

int engine_stop_ids(const engine *e, const int32_t **ids) {
    *ids = e->eos_ids;
    return e->n_eos;
}

int engine_context_length(const engine *e) { return e->ctx_len; }

tiers *engine_tiers(engine *e) { return e->tiers; }

static void on_idle(uv_idle_t *h);

static void ensure_idle(engine *e) {
    if (!e->idle_on && !e->closing && (e->w_head || e->n_running)) {
        uv_idle_start(&e->idle, on_idle);
        e->idle_on = true;
    }
}

/* ---------- loop ---------- */

static void close_all(engine *e) {
    if (e->closing) return;
    e->closing = true;
    pthread_mutex_lock(&e->qmu);
    e->wake_closed = true;
    pthread_mutex_unlock(&e->qmu);
    uv_idle_stop(&e->idle);
    uv_close((uv_handle_t *)&e->idle, NULL);
    uv_close((uv_handle_t *)&e->wake, NULL);
}

static void check_stop(engine *e) {
    pthread_mutex_lock(&e->qmu);
    int mode = e->stop_mode;
    pthread_mutex_unlock(&e->qmu);
    if (mode == STOP_NONE) return;
    engine__drain_queue(e);
    if (mode == STOP_CANCEL) engine__reap_cancelled(e, true);
    if (!e->w_head && e->n_running == 0) close_all(e);
}

static void update_gauges(engine *e) {
    pthread_mutex_lock(&e->smu);
    e->stats.running = e->n_running;
    e->stats.waiting = atomic_load(&e->n_queued);
    e->stats.kv_blocks_used = kv_blocks_used(&e->kv) - e->pc.n_lru; /* unreferenced cached blocks are reclaimable */
    e->stats.prefix_cache_blocks = e->pc.n;
    e->stats.prefix_cache_evictions = e->pc.evictions;
    pthread_mutex_unlock(&e->smu);
    engine__lora_info_refresh(e);
}

static void on_idle(uv_idle_t *h) {
    engine *e = h->data;
    bool worked = engine__step(e);
    update_gauges(e);
    check_stop(e);
    if (!worked && !e->closing) {
        uv_idle_stop(&e->idle);
        e->idle_on = false;
    }
}

/* tiers_fetch's completion callback (e->adapter_ready), on the engine thread. */
static void on_adapter_ready(void *ud) {
    engine *e = ud;
    ensure_idle(e); /* the next step retries admission */
}

static void on_wake(uv_async_t *h) {
    engine *e = h->data;
    engine__drain_queue(e);
    engine__reap_cancelled(e, false);
    update_gauges(e);
    check_stop(e);
    ensure_idle(e);
}

static void engine_thread(void *arg) {
    engine *e = arg;
    kbackend_set_owner(e->kb); /* kernels.h: the backend's [engine] calls are this thread's */
    uv_run(&e->loop, UV_RUN_DEFAULT);
    kbackend_release_owner(e->kb); /* the joining thread tears down */
}

/* The context (the longest sequence, prompt + completion, in tokens) and the KV pool's
 * size in blocks. engine.max_context, when set, must be <= max_position_embeddings and the
 * pool must hold one such sequence. Unset, the context is max_position_embeddings lowered
 * to what the pool holds, with a warning: Llama 3.1's 131072 positions need 8 GiB of f32 KV
 * on a 1B model and 32 GiB on an 8B one, and a default budget should serve shorter
 * contexts rather than refuse to start (vLLM's max_model_len, llama.cpp's n_ctx).
 * Sliding-window layers mask in the attention op (kattn_args.window): KV blocks stay
 * allocated for the whole sequence. */
static int size_context(engine *e, int *n_blocks_out, char *err, size_t errlen) {
    const engine_config *cfg = &e->cfg;
    const model_config *mc = &e->m->cfg;
    int max_pos = mc->max_position_embeddings, bs = cfg->block_size;
    /* dynamic NTK exists to run past max_position_embeddings: the model's context is factor
     * times it (model_config.c cfg_rope_scaling) */
    if (mc->rope.kind == ROPE_DYNAMIC && mc->rope.factor > 1) {
        double ctx = mc->max_position_embeddings * mc->rope.factor;
        max_pos = ctx < (1 << 24) ? (int)ctx : 1 << 24;
    }
    if (cfg->max_context > max_pos) {
        snprintf(err, errlen, "engine: max_context %d exceeds the model's max_position_embeddings %d",
                 cfg->max_context, max_pos);
        return PEFTD_EINVAL;
    }
    e->ctx_len = cfg->max_context > 0 ? cfg->max_context : max_pos;
    size_t per_block = (size_t)bs * mc->n_kv_heads * mc->head_dim * kdtype_size(e->kv_dtype) * 2 * (size_t)mc->n_layers;
    size_t budget = (size_t)(cfg->kv_cache_mb > 0 ? cfg->kv_cache_mb : 512) << 20;
    int prc = engine__device_kv_budget(e, &budget, err, errlen); /* kv_cache_mb 0 on a GPU */
    if (prc < 0) return prc;
    size_t pool = cfg->kv_blocks > 0 ? (size_t)cfg->kv_blocks : budget / per_block;
    if (cfg->max_context == 0 && pool < (size_t)engine__blocks_needed(e, e->ctx_len) && pool > 0) {
        e->ctx_len = (int)pool * bs;
        log_msg(LOG_WARN,
                "engine: context limited to %d tokens (max_position_embeddings %d): the KV cache holds %zu "
                "blocks of %d; raise engine.kv_cache_mb or set engine.max_context",
                e->ctx_len, max_pos, pool, bs);
    }
    /* a sequence's own blocks plus, for prefix tuning, the shared prefix blocks before them */
    e->max_blocks = 2 * engine__blocks_needed(e, e->ctx_len);
    size_t cap = (size_t)cfg->max_seqs * e->max_blocks; /* more could never be used */
    if (cfg->kv_blocks <= 0 && pool > cap) pool = cap;
    if (pool > INT_MAX) pool = INT_MAX;
    if (pool < (size_t)engine__blocks_needed(e, e->ctx_len)) {
        /* at least one full-context sequence must fit, or long prompts could never run */
        snprintf(err, errlen, "engine: KV cache of %zu blocks cannot hold one %d-token sequence (%d blocks)", pool,
                 e->ctx_len, engine__blocks_needed(e, e->ctx_len));
        return PEFTD_EINVAL;
    }
    *n_blocks_out = (int)pool;
    log_msg(LOG_INFO, "engine: KV cache %zu blocks of %d slots in %s (%.0f MiB), context %d tokens", pool, bs,
            kdtype_name(e->kv_dtype), (double)pool * per_block / (1 << 20), e->ctx_len);
    return 0;
}

/* ---------- public API ---------- */

int engine_create(const engine_config *cfg, model *m, kbackend *kb, const tokenizer *tok, engine **out,
                  char *err, size_t errlen) {
    engine *e = calloc(1, sizeof *e);
    if (!e) return PEFTD_ENOMEM;
    e->cfg = *cfg;
    e->adapter_ready = on_adapter_ready;
    e->m = m;
    e->kb = kb;
    e->tok = tok;
    /* transformers' generate() stops on generation_config.eos_token_id (the model's
     * generation_config.json, else config.json: m->eos); the tokenizer's eos only when
     * neither file names one */
    if (m->eos.n > 0) {
        memcpy(e->eos_ids, m->eos.ids, (size_t)m->eos.n * sizeof *e->eos_ids);
        e->n_eos = m->eos.n;
    } else if (tokenizer_eos_id(tok) >= 0) {
        e->eos_ids[e->n_eos++] = tokenizer_eos_id(tok);
    }
    pthread_mutex_init(&e->qmu, NULL);
    pthread_mutex_init(&e->smu, NULL);
    e->accepting = true;
    /* Test hook: integration tests that must catch requests mid-generation (hot swap,
     * shutdown) slow every step down instead of racing a fast model. */
    const char *delay = getenv("PEFTD_DEBUG_STEP_DELAY_US");
    if (delay) e->step_delay_us = (unsigned)strtoul(delay, NULL, 10);
    int st = PEFTD_EINVAL;
    if (cfg->max_seqs < 1 || cfg->max_batch_tokens < 1 || cfg->block_size < 1 || cfg->max_queue < 1) {
        snprintf(err, errlen, "engine: max_seqs, max_batch_tokens, block_size and max_queue must be >= 1");
        goto fail;
    }
    int kvt = engine_kv_dtype_parse(cfg->kv_dtype);
    if (kvt < 0) {
        snprintf(err, errlen, "engine: kv_dtype must be \"f32\" or \"f16\", got \"%s\"", cfg->kv_dtype);
        goto fail;
    }
    e->kv_dtype = (kdtype)kvt; /* whether the backend keeps it: llama_ctx_create asks supports_op */
    int n_blocks;
    if ((st = size_context(e, &n_blocks, err, errlen)) < 0) goto fail;
    e->cfg.kv_blocks = n_blocks;
    llama_ctx_params lp = {.max_tokens = cfg->max_batch_tokens + cfg->max_seqs, .max_seqs = cfg->max_seqs,
                           .block_size = cfg->block_size, .n_blocks = n_blocks, .max_blocks = e->max_blocks,
                           .kv_dtype = e->kv_dtype};
    /* + max_seqs rows: a step holds every decode row plus a prefill chunk of the budget */
    if ((st = llama_ctx_create(m, &lp, &e->lc, err, errlen)) < 0) goto fail;
    st = PEFTD_ENOMEM;
    if (kv_blocks_init(&e->kv, n_blocks) < 0 || sampler_scratch_init(&e->ss, m->cfg.vocab_size) < 0 ||
        vtc_create(&e->vtc) < 0 || (cfg->prefix_cache && pcache_init(&e->pc, n_blocks, cfg->prefix_cache_blocks) < 0))
        goto oom;
    size_t T = (size_t)lp.max_tokens, S = (size_t)cfg->max_seqs;
    e->running = calloc(S, sizeof(seq *));
    e->b_tokens = malloc(T * 4);
    e->b_pos = malloc(T * 4);
    e->b_slots = malloc(T * 4);
    e->b_qstart = malloc((S + 1) * 4);
    e->b_kvlen = malloc(S * 4);
    e->b_kvstart = malloc(S * 4);
    e->b_ropelen = malloc(S * 4);
    e->b_segs = malloc(S * sizeof(llama_segment));
    e->prefixes = calloc(S, sizeof(prefix_entry *));
    e->b_btab = malloc(S * (size_t)e->max_blocks * 4);
    /* logits rows: one sampled row per sequence plus the prompt rows scored in a step */
    e->score_rows = cfg->max_batch_tokens < ENGINE_SCORE_ROWS ? cfg->max_batch_tokens : ENGINE_SCORE_ROWS;
    size_t NL = S + (size_t)e->score_rows;
    e->b_rows = malloc(NL * 4);
    e->b_chunk = calloc(S, sizeof(int));
    e->b_logit_seq = malloc(NL * sizeof(seq *));
    e->logits = malloc(NL * (size_t)m->cfg.vocab_size * sizeof(float));
    /* device sampling: one row per sequence (only steps without scored prompt rows use it) */
    e->ds.on = (cfg->device_sampling > 0 || (cfg->device_sampling < 0 && !kb->ops->is_host)) &&
               kb->ops->supports_op(kb, KOP_SAMPLE, KDT_F32);
    e->ds.temp = malloc(S * 4), e->ds.top_p = malloc(S * 4), e->ds.logprob = malloc(S * 4);
    e->ds.top_k = malloc(S * 4), e->ds.ids = malloc(S * 4), e->ds.u = malloc(S * 8);
    if (!e->ds.temp || !e->ds.top_p || !e->ds.logprob || !e->ds.top_k || !e->ds.ids || !e->ds.u) goto oom;
    if (!e->running || !e->b_tokens || !e->b_pos || !e->b_slots || !e->b_qstart || !e->b_kvlen ||
        !e->b_btab || !e->b_rows || !e->b_chunk || !e->b_logit_seq || !e->logits || !e->b_kvstart || !e->b_ropelen ||
        !e->b_segs || !e->prefixes)
        goto oom;
    if (uv_loop_init(&e->loop) < 0) goto oom;
    uv_async_init(&e->loop, &e->wake, on_wake);
    uv_idle_init(&e->loop, &e->idle);
    e->wake.data = e->idle.data = e;
    if (cfg->store) {
        tiers_options to = {.host_bytes = cfg->host_cache_bytes, .slots = cfg->adapter_slots};
        if (model_adapter_base(m, &e->abase) < 0 || tiers_create(&to, cfg->store, &e->abase, kb, &e->loop, &e->tiers) < 0) {
            snprintf(err, errlen, "engine: cannot create the adapter tiers (slots %d)", cfg->adapter_slots);
            st = PEFTD_EINVAL;
            goto fail;
        }
        if (engine__lora_info_init(e) < 0) goto oom;
        engine__slot_pool_init(e, kb, cfg->adapter_slots);
    }
    e->stats.kv_blocks_total = n_blocks;
    engine__graphs_init(e);
    *out = e;
    return 0;
oom:
    snprintf(err, errlen, "engine: out of memory");
fail:
    engine_free(e);
    return st;
}

int engine_start(engine *e) {
    if (e->started) return PEFTD_EINVAL;
    if (uv_thread_create(&e->thread, engine_thread, e) < 0) return PEFTD_ENOMEM;
    e->started = true;
    return 0;
}

int engine_max_new_tokens(const engine *e, long long n_prompt, int n_virtual, long long requested, int *out,
                          char *msg, size_t msglen) {
    if (n_prompt < 1 || n_virtual < 0 || requested < 0) return PEFTD_EINVAL;
    long long room = (long long)e->ctx_len - n_virtual - n_prompt; /* new tokens that fit */
    long long want = requested ? requested : 1;
    if (want > room) {
        if (msg && msglen)
            snprintf(msg, msglen,
                     "This model's maximum context length is %d tokens. However, you requested %lld tokens "
                     "(%lld in the prompt, %lld in the completion). Please reduce the length of the prompt or "
                     "max_tokens.",
                     e->ctx_len, n_virtual + n_prompt + want, n_prompt, want);
        return PEFTD_ERANGE;
    }
    *out = (int)(requested ? requested : room);
    return 0;
}

/* The sampling parameters engine.h documents: ranges, ids within the vocabulary. */
static bool params_valid(const engine *e, const gen_params *p) {
    if (p->pool < ENGINE_POOL_NONE || p->pool > ENGINE_POOL_CLASSIFY || (p->pool && (p->max_tokens || p->prompt_logprobs)) ||
        p->score_from < 0)
        return false;
    if (p->max_tokens < (p->prompt_logprobs || p->pool ? 0 : 1) || p->min_tokens < 0 || p->min_tokens > p->max_tokens ||
        !(p->repetition_penalty > 0) || !(p->presence_penalty >= -2 && p->presence_penalty <= 2) ||
        !(p->frequency_penalty >= -2 && p->frequency_penalty <= 2) || p->n_bias < 0 ||
        p->n_bias > ENGINE_MAX_LOGIT_BIAS)
        return false;
    for (int i = 0; i < p->n_bias; i++)
        if (p->bias_id[i] < 0 || p->bias_id[i] >= e->m->cfg.vocab_size) return false;
    return true;
}

int engine_submit(engine *e, engine_request *r) {
    if (r->n_prompt < 1 || !params_valid(e, &r->params)) return PEFTD_EINVAL;
    const adapter *ad = r->params.adapter;
    if (ad && ad->n_layers != e->m->cfg.n_layers) return PEFTD_EINVAL;
    if (r->params.handle && !e->tiers) return PEFTD_EINVAL;
    const gen_params *gp = &r->params;
    if (gp->n_mix < 0 || gp->n_mix > ADAPTER_MAX_MIX || (gp->n_mix && (gp->handle || ad)) ||
        (gp->n_mix && gp->mix_how != ADAPTER_MIX_LINEAR && gp->mix_how != ADAPTER_MIX_CAT))
        return PEFTD_EINVAL;
    for (int i = 0; i < gp->n_mix; i++)
        if (!gp->mix_handle[i] == !gp->mix_adapter[i] || (gp->mix_handle[i] && !e->tiers) ||
            (gp->mix_adapter[i] && gp->mix_adapter[i]->n_layers != e->m->cfg.n_layers))
            return PEFTD_EINVAL;
    /* virtual tokens (prompt/prefix tuning) take positions of the context too */
    int nv = r->params.handle ? r->params.handle->meta.n_virtual : engine__n_virtual_of(ad);
    int n_new;
    int rc = engine_max_new_tokens(e, r->n_prompt, nv, r->params.max_tokens, &n_new, NULL, 0);
    if (rc) return rc;
    pthread_mutex_lock(&e->qmu);
    if (!e->accepting) {
        pthread_mutex_unlock(&e->qmu);
        return PEFTD_ECANCELED;
    }
    if (atomic_load(&e->n_queued) >= e->cfg.max_queue) {
        pthread_mutex_unlock(&e->qmu);
        return PEFTD_EBUSY;
    }
    engine_request_ref(r);
    r->t_submit_ns = engine__now_ns();
    atomic_fetch_add(&e->n_queued, 1);
    r->next = NULL;
    if (e->q_tail) e->q_tail->next = r;
    else e->q_head = r;
    e->q_tail = r;
    if (!e->wake_closed) uv_async_send(&e->wake);
    pthread_mutex_unlock(&e->qmu);
    return 0;
}

void engine_cancel(engine *e, engine_request *r) {
    atomic_store(&r->cancel, true);
    pthread_mutex_lock(&r->mu);
    bool finished = r->finished;
    pthread_mutex_unlock(&r->mu);
    /* a finished request needs no wake-up; once the engine thread is gone, wake is closed */
    pthread_mutex_lock(&e->qmu);
    if (!finished && e->started && !e->wake_closed) uv_async_send(&e->wake);
    pthread_mutex_unlock(&e->qmu);
}

int engine_get_tenant_stats(engine *e, engine_tenant_stats *out, int max) {
    return e->vtc ? vtc_snapshot(e->vtc, out, max) : 0;
}

void engine_get_stats(engine *e, engine_stats *s) {
    pthread_mutex_lock(&e->smu);
    *s = e->stats;
    pthread_mutex_unlock(&e->smu);
}

void engine_shutdown(engine *e, bool drain) {
    pthread_mutex_lock(&e->qmu);
    e->accepting = false;
    if (e->stop_mode != STOP_CANCEL) e->stop_mode = drain ? STOP_DRAIN : STOP_CANCEL;
    if (e->started && !e->wake_closed) uv_async_send(&e->wake);
    pthread_mutex_unlock(&e->qmu);
}

void engine_stop(engine *e, bool drain) {
    if (!e) return;
    engine_shutdown(e, drain);
    if (!e->started) return;
    uv_thread_join(&e->thread);
    pthread_mutex_lock(&e->qmu);
    e->started = false;
    pthread_mutex_unlock(&e->qmu);
}

void engine_free(engine *e) {
    if (!e) return;
    if (e->started) engine_stop(e, false);
    if (e->wake.loop) {
        /* the loop never ran (or has finished): close handles and run it down */
        if (!e->closing) close_all(e);
        uv_run(&e->loop, UV_RUN_DEFAULT);
        uv_loop_close(&e->loop);
    }
    /* requests still queued when the engine never started */
    engine__drain_queue(e);
    engine__reap_cancelled(e, true);
    engine__graphs_free(e);
    tiers_free(e->tiers);
    engine__slot_pool_free(e);
    engine__lora_info_free(e);
    model_adapter_base_free(&e->abase);
    vtc_free(e->vtc);
    llama_ctx_free(e->lc);
    pcache_free(&e->pc);
    kv_blocks_free(&e->kv);
    sampler_scratch_free(&e->ss);
    free(e->running);
    free(e->b_tokens);
    free(e->b_pos);
    free(e->b_slots);
    free(e->b_qstart);
    free(e->b_kvlen);
    free(e->b_kvstart);
    free(e->b_ropelen);
    free(e->b_segs);
    free(e->prefixes);
    free(e->b_btab);
    free(e->jt_off);
    free(e->jt_len);
    free(e->jt_blob);
    free(e->jt_plain);
    free(e->b_rows);
    free(e->b_chunk);
    free(e->b_logit_seq);
    free(e->logits);
    free(e->ds.temp), free(e->ds.top_p), free(e->ds.logprob), free(e->ds.top_k), free(e->ds.ids), free(e->ds.u);
    pthread_mutex_destroy(&e->qmu);
    pthread_mutex_destroy(&e->smu);
    free(e);
}
