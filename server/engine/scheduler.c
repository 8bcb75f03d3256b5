/* server/engine/scheduler.c — what runs in each engine step: draining the submission
 * queue, admission (Virtual Token Counter fairness across tenants, adapters made resident
 * through the tiers first, KV blocks for the prompt), KV block reservation with preemption
 * by recompute when the pool runs out, and the step itself: one ragged batch of decode
 * tokens and prefill chunks ordered into adapter segments, the forward pass, sampling. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter_store/registry.h"
#include "lib/log.h"
#include "server/engine/engine_internal.h"

void engine__drain_queue(engine *e) {
    pthread_mutex_lock(&e->qmu);
    engine_request *h = e->q_head;
    e->q_head = e->q_tail = NULL;
    pthread_mutex_unlock(&e->qmu);
    while (h) {
        engine_request *n = h->next;
        h->next = NULL;
        h->vt = vtc_tenant_get(e->vtc, h->params.tenant, h->params.tenant_weight);
        if (!h->vt) { /* out of memory for a new tenant record */
            atomic_fetch_sub(&e->n_queued, 1);
            engine__finish_request(h, FINISH_ERROR, "out of memory");
            h = n;
            continue;
        }
        vtc_arrive(e->vtc, h->vt);
        if (e->w_tail) e->w_tail->next = h;
        else e->w_head = h;
        e->w_tail = h;
        h = n;
    }
}

/* Unlinks r (after prev, NULL for the head) from the waiting list. */
static void waiting_unlink(engine *e, engine_request *prev, engine_request *r) {
    if (prev) prev->next = r->next;
    else e->w_head = r->next;
    if (e->w_tail == r) e->w_tail = prev;
    r->next = NULL;
    atomic_fetch_sub(&e->n_queued, 1);
}

/* Takes a waiting request out of the queue for good and finishes it (an error, a cancel): unlinked,
 * its tenant's queue count given back, its preempted sequence (if any) freed — all before
 * engine__finish_request drops the engine's reference, after which r must not be touched. */
static void waiting_finish(engine *e, engine_request *prev, engine_request *r, finish_reason f, const char *msg) {
    waiting_unlink(e, prev, r);
    vtc_leave_queue(e->vtc, r->vt);
    if (r->preempted) {
        r->preempted->vt = NULL; /* counted as waiting, not running */
        r->preempted->r = NULL;
        engine__seq_free(e, r->preempted);
        r->preempted = NULL;
    }
    engine__finish_request(r, f, msg);
}

/* Cancels waiting and running requests whose caller asked for it (or all, on shutdown). */
void engine__reap_cancelled(engine *e, bool all) {
    engine_request **pp = &e->w_head, *prev = NULL;
    while (*pp) {
        engine_request *r = *pp;
        if (all || atomic_load(&r->cancel)) {
            waiting_finish(e, prev, r, FINISH_CANCELLED, NULL); /* *pp is now r's successor */
        } else {
            prev = r;
            pp = &r->next;
        }
    }
    for (int i = 0; i < e->n_running;) {
        seq *s = e->running[i];
        if (all || atomic_load(&s->r->cancel)) {
            engine__finish_request(s->r, FINISH_CANCELLED, NULL);
            engine__seq_free(e, s);
            e->running[i] = e->running[--e->n_running];
        } else {
            i++;
        }
    }
}

/* The resident adapter of a waiting request, pinned; NULL with *wait set while it is being
 * fetched, or NULL with *failed set and the reason in why_out when it cannot be loaded (the
 * request is left as it was: the caller takes it out of the queue, then finishes it). */
static adapter *resolve_adapter(engine *e, engine_request *r, bool *wait, bool *failed, char *why_out,
                                size_t why_len) {
    *wait = *failed = false;
    const char *sha = r->params.handle->meta.sha256;
    char msg[400];
    if (!e->tiers) {
        snprintf(msg, sizeof msg, "no adapter store is configured");
        goto fail;
    }
    adapter *a = tiers_pin(e->tiers, sha);
    if (a) return a;
    if (r->adapter_fetching) { /* our fetch ended without making it resident: why? */
        char why[256];
        if (tiers_failure(e->tiers, sha, why, sizeof why) < 0) {
            snprintf(msg, sizeof msg, "adapter %.64s could not be loaded: %.255s", r->params.handle->meta.name, why);
            goto fail;
        }
    }
    int st = tiers_fetch(e->tiers, sha, engine__on_adapter_ready, e);
    if (st < 0 && st != PEFTD_EBUSY) { /* EBUSY: every slot pinned, retried as sequences end */
        snprintf(msg, sizeof msg, "adapter %s could not be loaded: %s", r->params.handle->meta.name,
                 peftd_strerror(st));
        goto fail;
    }
    r->adapter_fetching = st == 0;
    *wait = true;
    return NULL;
fail:
    *failed = true;
    snprintf(why_out, why_len, "%s", msg);
    return NULL;
}


/* Admission by fairness: the next request admitted is the earliest waiting one of the
 * tenant with the smallest virtual token counter (fairness.h). A request whose adapter is
 * not resident yet stays waiting (its fetch runs on the thread pool) and is passed over
 * this round; when the chosen request's KV blocks do not fit, admission stops (nobody
 * overtakes it for memory, so long prompts are not starved). */
static void admit(engine *e) {
    for (engine_request *r = e->w_head; r; r = r->next) r->skip = false;
    while (e->n_running < e->cfg.max_seqs) {
        engine_request *best = NULL, *best_prev = NULL, *prev = NULL;
        for (engine_request *r = e->w_head; r; prev = r, r = r->next)
            if (!r->skip && (!best || r->vt->counter < best->vt->counter)) {
                best = r;
                best_prev = prev;
            }
        if (!best) break;
        engine_request *r = best;
        const adapter *ad = r->params.adapter;
        adapter *pinned = NULL;
        if (r->params.handle) {
            bool wait, failed;
            char why[400];
            pinned = resolve_adapter(e, r, &wait, &failed, why, sizeof why);
            if (failed) { /* this request alone ends; r is gone after this call */
                waiting_finish(e, best_prev, r, FINISH_ERROR, why);
                continue;
            }
            if (wait) {
                r->skip = true;
                continue;
            }
            ad = pinned;
        }
        /* blocks for the prompt (or, for a preempted sequence, everything it had) plus the
         * first generated token; one more block per running sequence stays free as
         * head-room for their next decode steps (fewer preemptions) */
        seq *pre = r->preempted;
        int nv = ad && ad->kind == ADAPTER_PROMPT_TUNING ? ad->n_virtual : 0, pad;
        int need = engine__blocks_needed(e, (pre ? pre->n_tokens : nv + r->n_prompt) + 1);
        if (ad && ad->kind == ADAPTER_PREFIX_TUNING && !engine__prefix_find(e, ad)) need += engine__prefix_blocks(e, ad, &pad);
        if (need + e->n_running > e->kv.n_free) {
            if (pinned) tiers_unpin(e->tiers, pinned);
            break;
        }
        vtc_tenant *vt = r->vt;
        waiting_unlink(e, best_prev, r);
        seq *s;
        if (pre) { /* back from preemption: recompute its K/V from all of its tokens */
            r->preempted = NULL;
            s = pre;
            s->ad = ad;
            s->pinned = pinned;
            s->n_computed = 0;
            if (ad && ad->kind == ADAPTER_PREFIX_TUNING && !(s->pfx = engine__prefix_acquire(e, ad))) {
                s->vt = NULL;
                engine__seq_free(e, s);
                s = NULL;
            }
        } else {
            s = engine__seq_create(e, r, ad, pinned);
        }
        if (!s) {
            vtc_leave_queue(e->vtc, vt);
            engine__finish_request(r, FINISH_ERROR, "out of memory admitting the request");
            continue;
        }
        s->admitted = ++e->n_admitted;
        vtc_admit(e->vtc, vt);
        s->vt = vt;
        e->running[e->n_running++] = s;
    }
}

static void fail_all_running(engine *e, const char *msg) {
    for (int i = 0; i < e->n_running; i++) {
        engine__finish_request(e->running[i]->r, FINISH_ERROR, msg);
        engine__seq_free(e, e->running[i]);
    }
    e->n_running = 0;
}

/* Takes blocks so that the sequence's own slots cover its first `tokens` tokens. */
static int seq_reserve(engine *e, seq *s, int tokens) {
    int want = engine__blocks_needed(e, tokens);
    if (want <= s->n_blocks) return 0;
    if (kv_blocks_alloc(&e->kv, want - s->n_blocks, s->blocks + s->n_blocks) < 0) return PEFTD_ENOMEM;
    s->n_blocks = want;
    return 0;
}

/* Preemption by recompute (vLLM's policy), step 1: the sequence gives back its KV
 * blocks, its prefix and its adapter pin at once (so the step can go on with them). */
static void seq_evict(engine *e, int i) {
    seq *s = e->running[i];
    kv_blocks_release(&e->kv, s->blocks, s->n_blocks);
    s->n_blocks = 0;
    s->n_computed = 0;
    engine__prefix_release(e, s->pfx);
    s->pfx = NULL;
    if (s->pinned) tiers_unpin(e->tiers, s->pinned);
    s->pinned = NULL;
    s->evicted = true;
    e->b_chunk[i] = 0;
    pthread_mutex_lock(&e->smu);
    e->stats.preemptions++;
    pthread_mutex_unlock(&e->smu);
}

/* Step 2: it waits again at the head of the queue with everything it generated; when
 * re-admitted its tokens are prefilled again (bit-identical K/V: the kernels are
 * batch-invariant) and generation continues where it stopped. */
static void seq_requeue(engine *e, int i) {
    seq *s = e->running[i];
    engine_request *r = s->r;
    s->evicted = false;
    r->preempted = s;
    r->adapter_fetching = false;
    vtc_requeue(e->vtc, s->vt);
    r->next = e->w_head;
    e->w_head = r;
    if (!e->w_tail) e->w_tail = r;
    atomic_fetch_add(&e->n_queued, 1);
    e->running[i] = e->running[--e->n_running];
    e->b_chunk[i] = e->b_chunk[e->n_running];
}

/* The running sequence to preempt for memory: the one whose tenant has been served the
 * most (highest virtual counter), latest admitted among equals. */
static int preempt_victim(engine *e) {
    int v = -1;
    for (int i = 0; i < e->n_running; i++) {
        const seq *s = e->running[i], *w = v >= 0 ? e->running[v] : NULL;
        if (s->evicted) continue;
        double cs = s->vt ? s->vt->counter : 0, cw = w && w->vt ? w->vt->counter : 0;
        if (!w || cs > cw || (cs == cw && s->admitted > w->admitted)) v = i;
    }
    return v;
}

static int seq_cmp_adapter(const void *a, const void *b) {
    const seq *x = *(seq *const *)a, *y = *(seq *const *)b;
    uintptr_t px = (uintptr_t)x->ad, py = (uintptr_t)y->ad;
    if (px != py) return px < py ? -1 : 1;
    return (x->ad_scale > y->ad_scale) - (x->ad_scale < y->ad_scale);
}

/* One step over every running sequence. Returns false when there was nothing to do. */
bool engine__step(engine *e) {
    engine__drain_queue(e);
    engine__reap_cancelled(e, false);
    admit(e);
    if (e->n_running == 0) return false;

    const int bs = e->cfg.block_size;
    /* sequences of one (adapter, scale) next to each other: one segment each */
    qsort(e->running, (size_t)e->n_running, sizeof(seq *), seq_cmp_adapter);
    /* how many rows each sequence gets: decode tokens first (one row each), then prefill
     * chunks with what is left of the token budget */
    int budget = e->cfg.max_batch_tokens, T = 0, S = 0, NL = 0, G = 0, prompt_rows = 0;
    memset(e->b_chunk, 0, (size_t)e->n_running * sizeof(int));
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < e->n_running; i++) {
            seq *s = e->running[i];
            int remaining = s->n_tokens - s->n_computed;
            if ((pass == 0) != (remaining == 1)) continue;
            int c = remaining < budget ? remaining : budget;
            if (c <= 0) continue;
            e->b_chunk[i] = c;
            budget -= c;
        }
    /* K/V blocks for every chunk, decodes first; when the pool is empty, preempt (maybe the
     * sequence itself), then take the preempted ones out of the batch */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < e->n_running; i++) {
            seq *s = e->running[i];
            int c = e->b_chunk[i];
            if (c == 0 || s->evicted || (pass == 0) != (s->n_tokens - s->n_computed == 1)) continue;
            while (seq_reserve(e, s, s->n_computed + c) < 0) {
                int v = preempt_victim(e);
                seq_evict(e, v);
                if (v == i) break;
            }
        }
    for (int i = 0; i < e->n_running; i++)
        if (e->running[i]->evicted) {
            seq_requeue(e, i);
            i--; /* slot i now holds the last sequence: look at it too */
        }
    if (e->n_running == 0) return true;
    for (int i = 0; i < e->n_running; i++) {
        seq *s = e->running[i];
        int c = e->b_chunk[i];
        if (c == 0) continue;
        if (G == 0 || e->b_segs[G - 1].ad != s->ad || e->b_segs[G - 1].scale != s->ad_scale) {
            if (G) e->b_segs[G - 1].row_end = T;
            e->b_segs[G++] = (llama_segment){.ad = s->ad, .scale = s->ad_scale, .row_start = T};
        }
        int kv_off = s->pfx ? s->pfx->n_blocks * bs : 0; /* own slots start after the prefix blocks */
        int32_t *row = e->b_btab + (size_t)S * e->max_blocks;
        int nb = 0;
        if (s->pfx) {
            memcpy(row, s->pfx->blocks, (size_t)s->pfx->n_blocks * sizeof(int32_t));
            nb = s->pfx->n_blocks;
        }
        memcpy(row + nb, s->blocks, (size_t)s->n_blocks * sizeof(int32_t));
        nb += s->n_blocks;
        memset(row + nb, 0, (size_t)(e->max_blocks - nb) * sizeof(int32_t));
        e->b_qstart[S] = T;
        for (int j = 0; j < c; j++, T++) {
            int idx = s->n_computed + j, kv = kv_off + idx;
            e->b_tokens[T] = s->tokens[idx];
            e->b_pos[T] = s->pos_off + idx;
            e->b_slots[T] = row[kv / bs] * bs + kv % bs;
        }
        if (s->n_tokens - s->n_computed > 1) prompt_rows += c;
        e->b_kvlen[S] = kv_off + s->n_computed + c;
        e->b_kvstart[S] = s->pfx ? s->pfx->pad : 0;
        if (s->n_computed + c == s->n_tokens) {
            e->b_rows[NL] = T - 1;
            e->b_logit_seq[NL++] = s;
        }
        S++;
    }
    e->b_segs[G - 1].row_end = T;
    e->b_qstart[S] = T;
    llama_batch b = {
        .n_tokens = T, .tokens = e->b_tokens, .positions = e->b_pos, .slots = e->b_slots,
        .n_seqs = S, .q_start = e->b_qstart, .kv_len = e->b_kvlen, .block_table = e->b_btab,
        .kv_start = e->n_prefixes ? e->b_kvstart : NULL, .n_segs = G, .segs = e->b_segs,
        .n_logits = NL, .logit_rows = e->b_rows,
    };
    int st = llama_forward(e->lc, &b, e->logits);
    if (st < 0) {
        LOGE("engine: forward failed: %s", peftd_strerror(st));
        fail_all_running(e, "model forward failed");
        return true;
    }
    for (int i = 0; i < e->n_running; i++) {
        seq *s = e->running[i];
        int c = e->b_chunk[i];
        if (c == 0) continue;
        bool decode = s->n_tokens - s->n_computed == 1;
        s->n_computed += c;
        vtc_charge(e->vtc, s->vt, decode ? 0 : c, s->n_computed == s->n_tokens ? 1 : 0);
    }
    int generated = 0;
    for (int k = 0; k < NL; k++) {
        seq *s = e->b_logit_seq[k];
        const gen_params *p = &s->r->params;
        gen_token lp;
        int32_t tok = sampler_pick(e->logits + (size_t)k * e->m->cfg.vocab_size, p, &s->rng, &e->ss,
                                   p->logprobs, &lp);
        generated++;
        if (engine__seq_accept(e, s, tok, p->logprobs >= 0 ? &lp : NULL)) s->r = NULL; /* finished */
    }
    for (int i = 0; i < e->n_running;) {
        if (e->running[i]->r == NULL) {
            engine__seq_free(e, e->running[i]);
            e->running[i] = e->running[--e->n_running];
        } else {
            i++;
        }
    }
    pthread_mutex_lock(&e->smu);
    for (int k = 0, lim = 1; k < ENGINE_BATCH_BUCKETS; k++, lim *= 2)
        if (k == ENGINE_BATCH_BUCKETS - 1 || T <= lim) e->stats.batch_rows_bucket[k]++;
    e->stats.batch_rows_sum += (uint64_t)T;
    e->stats.steps++;
    e->stats.tokens_generated += (uint64_t)generated;
    e->stats.prompt_tokens += (uint64_t)prompt_rows;
    pthread_mutex_unlock(&e->smu);
    if (e->step_delay_us) usleep(e->step_delay_us);
    return true;
}
