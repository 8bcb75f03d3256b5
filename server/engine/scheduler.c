/* server/engine/scheduler.c — who runs next: draining the submission queue into the
 * waiting list, cancelling waiting and running requests, and admission (Virtual Token
 * Counter fairness across tenants, adapters made resident through the tiers first, KV
 * blocks for the prompt). The step that runs the admitted sequences is step.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* The resident adapter of handle h (a waiting request's), pinned; NULL with *wait set while it
 * is being fetched (*fetching: whether this request started a fetch), or NULL with *failed set
 * and the reason in why_out when it cannot be loaded (the request is left as it was: the
 * caller takes it out of the queue, then finishes it). */
static adapter *resolve_handle(engine *e, const struct adapter_handle *h, bool *fetching, bool *wait, bool *failed,
                               char *why_out, size_t why_len) {
    *wait = *failed = false;
    const char *sha = h->meta.sha256;
    char msg[400];
    if (!e->tiers) {
        snprintf(msg, sizeof msg, "no adapter store is configured");
        goto fail;
    }
    adapter *a = tiers_pin(e->tiers, sha);
    if (a) return a;
    if (*fetching) { /* our fetch ended without making it resident: why? */
        char why[256];
        if (tiers_failure(e->tiers, sha, why, sizeof why) < 0) {
            snprintf(msg, sizeof msg, "adapter %.64s could not be loaded: %.255s", h->meta.name, why);
            goto fail;
        }
    }
    int st = tiers_fetch(e->tiers, sha, e->adapter_ready, e);
    if (st < 0 && st != PEFTD_EBUSY) { /* EBUSY: every slot pinned, retried as sequences end */
        snprintf(msg, sizeof msg, "adapter %s could not be loaded: %s", h->meta.name, peftd_strerror(st));
        goto fail;
    }
    *fetching = st == 0;
    *wait = true;
    return NULL;
fail:
    *failed = true;
    snprintf(why_out, why_len, "%s", msg);
    return NULL;
}


/* The adapters of a waiting request's composition, resident and pinned into pins[] (NULL for
 * the offline ones), checked (adapter_mix_check) into *m: 1 ready; 0 some still being fetched
 * (nothing stays pinned); -1 it cannot be served, the reason in why (nothing stays pinned). */
static int resolve_mix(engine *e, engine_request *r, adapter_mix *m, adapter **pins, char *why, size_t why_len) {
    const gen_params *p = &r->params;
    bool waiting = false;
    memset(m, 0, sizeof *m);
    m->n = p->n_mix;
    m->how = (adapter_mix_kind)p->mix_how;
    for (int i = 0; i < p->n_mix; i++) {
        pins[i] = NULL;
        m->weight[i] = p->mix_weight[i];
        if (!p->mix_handle[i]) {
            m->ad[i] = p->mix_adapter[i];
            continue;
        }
        bool wait, failed;
        pins[i] = resolve_handle(e, p->mix_handle[i], &r->mix_fetching[i], &wait, &failed, why, why_len);
        if (failed) {
            for (int j = 0; j < i; j++)
                if (pins[j]) tiers_unpin(e->tiers, pins[j]);
            return -1;
        }
        waiting |= wait;
        m->ad[i] = pins[i];
    }
    char err[400];
    int rc = waiting ? 0 : adapter_mix_check(m, err, sizeof err) < 0 ? -1 : 1;
    if (rc < 0) snprintf(why, why_len, "%s%s", ENGINE_ERR_MIX, err);
    if (rc <= 0)
        for (int i = 0; i < p->n_mix; i++)
            if (pins[i]) tiers_unpin(e->tiers, pins[i]), pins[i] = NULL;
    return rc;
}

/* Admission by fairness: the next request admitted is the earliest waiting one of the
 * tenant with the smallest virtual token counter (fairness.h). A request whose adapter is
 * not resident yet stays waiting (its fetch runs on the thread pool) and is passed over
 * this round; when the chosen request's KV blocks do not fit, admission stops (nobody
 * overtakes it for memory, so long prompts are not starved). */
void engine__admit(engine *e) {
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
        adapter *pinned = NULL, *mix_pins[ADAPTER_MAX_MIX] = {0};
        adapter_mix mix = {.n = 0};
        if (r->params.n_mix) {
            char why[512];
            int st = resolve_mix(e, r, &mix, mix_pins, why, sizeof why);
            if (st < 0) {
                waiting_finish(e, best_prev, r, FINISH_ERROR, why);
                continue;
            }
            if (st == 0) {
                r->skip = true;
                continue;
            }
        } else if (r->params.handle) {
            bool wait, failed;
            char why[400];
            pinned = resolve_handle(e, r->params.handle, &r->adapter_fetching, &wait, &failed, why, sizeof why);
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
        if (adapter_has_prefix(ad) && !engine__prefix_find(e, ad)) need += engine__prefix_blocks(e, ad, &pad);
        if (need + e->n_running > engine__kv_available(e)) {
            if (pinned) tiers_unpin(e->tiers, pinned);
            for (int i = 0; i < r->params.n_mix; i++)
                if (mix_pins[i]) tiers_unpin(e->tiers, mix_pins[i]);
            break;
        }
        vtc_tenant *vt = r->vt;
        waiting_unlink(e, best_prev, r);
        const char *why = pre ? NULL : engine__pool_refusal(r, ad);
        if (why) { /* a classifier's adapter asked for text or token scores */
            if (pinned) tiers_unpin(e->tiers, pinned);
            for (int i = 0; i < r->params.n_mix; i++)
                if (mix_pins[i]) tiers_unpin(e->tiers, mix_pins[i]);
            vtc_leave_queue(e->vtc, vt);
            engine__finish_request(r, FINISH_ERROR, why);
            continue;
        }
        seq *s;
        if (pre) { /* back from preemption: recompute its K/V from all of its tokens */
            r->preempted = NULL;
            s = pre;
            s->ad = ad;
            s->pinned = pinned;
            if (s->has_mix) {
                s->mix = mix;
                memcpy(s->mix_pinned, mix_pins, sizeof mix_pins);
            }
            s->n_computed = 0;
            if (adapter_has_prefix(ad) && !(s->pfx = engine__prefix_acquire(e, ad))) {
                s->vt = NULL;
                engine__seq_free(e, s);
                s = NULL;
            }
        } else {
            s = engine__seq_create(e, r, ad, pinned);
            if (s && r->params.n_mix) {
                s->has_mix = true;
                s->mix = mix;
                memcpy(s->mix_pinned, mix_pins, sizeof mix_pins);
            } else if (!s) {
                for (int i = 0; i < r->params.n_mix; i++)
                    if (mix_pins[i]) tiers_unpin(e->tiers, mix_pins[i]);
            }
            uint64_t now = engine__now_ns();
            pthread_mutex_lock(&r->mu);
            if (!r->queue_ns) r->queue_ns = now > r->t_submit_ns ? now - r->t_submit_ns : 1;
            pthread_mutex_unlock(&r->mu);
        }
        if (!s) {
            vtc_leave_queue(e->vtc, vt);
            engine__finish_request(r, FINISH_ERROR, "out of memory admitting the request");
            continue;
        }
        engine__pc_lookup(e, s); /* cached prompt blocks: n_computed starts after them */
        s->admitted = ++e->n_admitted;
        vtc_admit(e->vtc, vt);
        s->vt = vt;
        e->running[e->n_running++] = s;
    }
}
