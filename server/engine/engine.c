/* server/engine/engine.c — the engine thread: submission queue, admission by KV blocks,
 * continuous batching of prefill chunks and decode tokens into one ragged step batch,
 * sampling, incremental detokenization, stop strings and output publication.
 *
 * Threads: callers touch only the submission queue (qmu) and request objects; everything
 * else here (sequences, KV blocks, the llama_ctx, the backend) belongs to the engine
 * thread. uv_async_send wakes the loop (coalesced: every wake drains the whole queue);
 * a uv_idle handle runs one step per loop iteration while there is work, so new
 * requests and cancellations are picked up between steps.
 */
#include "server/engine/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "adapter_store/registry.h"
#include "adapter_store/tiers.h"
#include "kernels/util/log.h"
#include "server/engine/engine_internal.h"
#include "server/engine/fairness.h"
#include "server/engine/kv_blocks.h"
#include "server/engine/sampling.h"
#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"

/* Prefix-tuning K/V of one adapter version, stored once in KV blocks that every running
 * sequence of that adapter shares. The prefix ends exactly at a block boundary (pad
 * unused slots first, skipped through kv_start), so sequences never write into these
 * blocks. Freed when the last sequence using it ends. */
typedef struct {
    const adapter *ad;
    char sha256[65];
    int32_t *blocks;
    int n_blocks, pad, refs;
} prefix_entry;

typedef struct seq {
    engine_request *r;
    const adapter *ad;
    adapter *pinned;          /* ad when it is pinned in the tiers' slot pool */
    vtc_tenant *vt;           /* whose served tokens this sequence counts as */
    float ad_scale;
    int32_t *tokens;          /* [virtual tokens (prompt tuning) as -(k+1)] + prompt + generated */
    int n_tokens;
    int max_total;            /* n_virtual + n_prompt + max_tokens */
    int n_computed;           /* tokens whose K/V are in the cache */
    int pos_off;              /* RoPE position of tokens[0] */
    prefix_entry *pfx;        /* shared prefix-tuning K/V, or NULL */
    int32_t *blocks;          /* own KV blocks, taken as the sequence grows (room for max_total) */
    int n_blocks;
    uint64_t admitted;        /* admission order: the latest admitted is preempted first */
    bool evicted;             /* preempted during this step, leaves the batch before it runs */
    rng_state rng;
    tokenizer_stream *ds;
    char *pending;            /* decoded text held back: may be the start of a stop string */
    size_t pending_len, pending_cap;
    size_t text_total;        /* completion bytes so far (published + pending) */
    int n_generated;
} seq;

enum { STOP_NONE = 0, STOP_DRAIN, STOP_CANCEL };

struct engine {
    engine_config cfg;
    model *m;
    kbackend *kb;
    const tokenizer *tok;
    llama_ctx *lc;
    int ctx_len, max_blocks;
    int32_t eos_id;

    /* submission side (any thread) */
    pthread_mutex_t qmu;
    engine_request *q_head, *q_tail;
    bool accepting;
    int stop_mode;            /* under qmu */
    atomic_int n_queued;      /* submitted, not yet admitted or finished */

    /* engine thread */
    uv_thread_t thread;
    bool started;
    bool wake_closed;         /* under qmu: the async handle is closing, never send to it */
    uv_loop_t loop;
    uv_async_t wake;
    uv_idle_t idle;
    bool idle_on, closing;
    engine_request *w_head, *w_tail; /* waiting (drained from the queue), FIFO */
    seq **running;
    int n_running;
    uint64_t n_admitted;
    kv_blocks kv;
    tiers *tiers;             /* adapter slot pool (NULL without a store) */
    vtc *vtc;                 /* per-tenant fairness counters */
    adapter_base abase;
    prefix_entry **prefixes;  /* [max_seqs]: at most one per running sequence; each entry is
                               * its own allocation, so sequences' pointers stay valid */
    int n_prefixes;
    sampler_scratch ss;
    /* step batch buffers (host) */
    int32_t *b_tokens, *b_pos, *b_slots, *b_qstart, *b_kvlen, *b_kvstart, *b_btab, *b_rows;
    llama_segment *b_segs;
    int *b_chunk;             /* tokens each running seq contributes to the step */
    seq **b_logit_seq;
    float *logits;

    pthread_mutex_t smu;
    engine_stats stats;
    unsigned step_delay_us;   /* PEFTD_DEBUG_STEP_DELAY_US: slows steps down for race tests */
};

void engine_config_default(engine_config *c) {
    c->max_seqs = 64;
    c->max_batch_tokens = 256;
    c->block_size = 16;
    c->kv_blocks = 0;
    c->kv_cache_mb = 512;
    c->max_queue = 1024;
    c->store = NULL;
    c->host_cache_bytes = (size_t)256 << 20;
    c->adapter_slots = 64;
}

int engine_context_length(const engine *e) { return e->ctx_len; }

tiers *engine_tiers(engine *e) { return e->tiers; }

/* ---------- sequences ---------- */

static void prefix_release(engine *e, prefix_entry *p) {
    if (!p || --p->refs > 0) return;
    kv_blocks_release(&e->kv, p->blocks, p->n_blocks);
    free(p->blocks);
    for (int i = 0; i < e->n_prefixes; i++)
        if (e->prefixes[i] == p) {
            e->prefixes[i] = e->prefixes[--e->n_prefixes];
            break;
        }
    free(p);
}

static void seq_free(engine *e, seq *s) {
    if (!s) return;
    if (s->vt) vtc_finish(e->vtc, s->vt);
    prefix_release(e, s->pfx);
    if (s->pinned) tiers_unpin(e->tiers, s->pinned);
    kv_blocks_release(&e->kv, s->blocks, s->n_blocks);
    tokenizer_stream_free(s->ds);
    free(s->blocks);
    free(s->tokens);
    free(s->pending);
    free(s);
}

static int blocks_needed(const engine *e, int slots) {
    return (slots + e->cfg.block_size - 1) / e->cfg.block_size;
}

/* Finishes a request the engine holds: publishes the finish, notifies, drops the ref. */
static void finish_request(engine_request *r, finish_reason f, const char *error) {
    engine__finish(r, f, error);
    engine__notify(r);
    engine_request_unref(r);
}

/* Virtual tokens a request's adapter puts before its prompt (prompt or prefix tuning). */
static int n_virtual_of(const adapter *ad) {
    return ad && (ad->kind == ADAPTER_PROMPT_TUNING || ad->kind == ADAPTER_PREFIX_TUNING) ? ad->n_virtual : 0;
}

static prefix_entry *prefix_find(engine *e, const adapter *ad) {
    for (int i = 0; i < e->n_prefixes; i++)
        if (e->prefixes[i]->ad == ad && !strcmp(e->prefixes[i]->sha256, ad->sha256)) return e->prefixes[i];
    return NULL;
}

/* Blocks a prefix-tuning adapter's shared K/V needs: padded to end on a block boundary. */
static int prefix_blocks(const engine *e, const adapter *ad, int *pad) {
    int bs = e->cfg.block_size;
    *pad = (bs - ad->n_virtual % bs) % bs;
    return (*pad + ad->n_virtual) / bs;
}

static prefix_entry *prefix_acquire(engine *e, const adapter *ad) {
    prefix_entry *p = prefix_find(e, ad);
    if (p) {
        p->refs++;
        return p;
    }
    if (e->n_prefixes >= e->cfg.max_seqs || !(p = calloc(1, sizeof *p))) return NULL;
    p->ad = ad;
    snprintf(p->sha256, sizeof p->sha256, "%s", ad->sha256);
    p->n_blocks = prefix_blocks(e, ad, &p->pad);
    p->blocks = malloc((size_t)p->n_blocks * sizeof(int32_t));
    if (!p->blocks || kv_blocks_alloc(&e->kv, p->n_blocks, p->blocks) < 0) {
        free(p->blocks);
        free(p);
        return NULL;
    }
    if (llama_store_prefix(e->lc, ad, p->blocks, p->pad) < 0) {
        kv_blocks_release(&e->kv, p->blocks, p->n_blocks);
        free(p->blocks);
        free(p);
        return NULL;
    }
    p->refs = 1;
    e->prefixes[e->n_prefixes++] = p;
    return p;
}

/* ad: the request's resident adapter (NULL = base); pinned when it came from the tiers
 * (the sequence then owns that pin). */
static seq *seq_create(engine *e, engine_request *r, const adapter *ad, adapter *pinned) {
    seq *s = calloc(1, sizeof *s);
    if (!s) {
        if (pinned) tiers_unpin(e->tiers, pinned);
        return NULL;
    }
    s->pinned = pinned;
    int nv = ad && ad->kind == ADAPTER_PROMPT_TUNING ? ad->n_virtual : 0;
    s->r = r;
    s->ad = ad;
    s->ad_scale = r->params.adapter_scale;
    s->max_total = nv + r->n_prompt + r->params.max_tokens;
    s->tokens = malloc((size_t)s->max_total * sizeof(int32_t));
    s->blocks = malloc((size_t)blocks_needed(e, s->max_total) * sizeof(int32_t));
    s->ds = tokenizer_stream_new(e->tok, true);
    if (!s->tokens || !s->blocks || !s->ds) goto fail;
    /* prompt tuning: the virtual tokens are the first positions (0..nv-1), marked -(k+1) */
    for (int k = 0; k < nv; k++) s->tokens[k] = -(k + 1);
    memcpy(s->tokens + nv, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    s->n_tokens = nv + r->n_prompt;
    if (tokenizer_stream_prime(s->ds, r->prompt, (size_t)r->n_prompt) < 0) goto fail;
    /* blocks are taken step by step as K/V are written (seq_reserve) */
    if (ad && ad->kind == ADAPTER_PREFIX_TUNING) {
        /* PEFT passes the prefix as past key/values: the prompt's positions continue after it */
        s->pos_off = ad->n_virtual;
        if (!(s->pfx = prefix_acquire(e, ad))) goto fail;
    }
    uint64_t seed = r->params.has_seed ? r->params.seed
                                       : (uint64_t)uv_hrtime() ^ ((uint64_t)(uintptr_t)r << 16);
    rng_seed(&s->rng, seed);
    return s;
fail:
    seq_free(e, s);
    return NULL;
}

/* ---------- queue ---------- */

static void drain_queue(engine *e) {
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
            finish_request(h, FINISH_ERROR, "out of memory");
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

static void on_idle(uv_idle_t *h);

static void ensure_idle(engine *e) {
    if (!e->idle_on && !e->closing && (e->w_head || e->n_running)) {
        uv_idle_start(&e->idle, on_idle);
        e->idle_on = true;
    }
}

/* Cancels waiting and running requests whose caller asked for it (or all, on shutdown). */
static void reap_cancelled(engine *e, bool all) {
    engine_request **pp = &e->w_head, *prev = NULL;
    while (*pp) {
        engine_request *r = *pp;
        if (all || atomic_load(&r->cancel)) {
            *pp = r->next;
            if (e->w_tail == r) e->w_tail = prev;
            r->next = NULL;
            atomic_fetch_sub(&e->n_queued, 1);
            vtc_leave_queue(e->vtc, r->vt);
            if (r->preempted) {
                r->preempted->vt = NULL; /* already counted as waiting, not running */
                r->preempted->r = NULL;
                seq_free(e, r->preempted);
                r->preempted = NULL;
            }
            finish_request(r, FINISH_CANCELLED, NULL);
        } else {
            prev = r;
            pp = &r->next;
        }
    }
    for (int i = 0; i < e->n_running;) {
        seq *s = e->running[i];
        if (all || atomic_load(&s->r->cancel)) {
            finish_request(s->r, FINISH_CANCELLED, NULL);
            seq_free(e, s);
            e->running[i] = e->running[--e->n_running];
        } else {
            i++;
        }
    }
}

static void on_adapter_ready(void *ud);

/* Unlinks r (after prev, NULL for the head) from the waiting list. */
static void waiting_unlink(engine *e, engine_request *prev, engine_request *r) {
    if (prev) prev->next = r->next;
    else e->w_head = r->next;
    if (e->w_tail == r) e->w_tail = prev;
    r->next = NULL;
    atomic_fetch_sub(&e->n_queued, 1);
}

/* The resident adapter of a waiting request, pinned; NULL with *wait set while it is being
 * fetched, or NULL with *failed set (and the request finished) when it cannot be loaded. */
static adapter *resolve_adapter(engine *e, engine_request *r, bool *wait, bool *failed) {
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
    int st = tiers_fetch(e->tiers, sha, on_adapter_ready, e);
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
    finish_request(r, FINISH_ERROR, msg);
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
            pinned = resolve_adapter(e, r, &wait, &failed);
            if (failed) { /* already finished (its engine reference went with it) */
                if (best_prev) best_prev->next = r->next;
                else e->w_head = r->next;
                if (e->w_tail == r) e->w_tail = best_prev;
                atomic_fetch_sub(&e->n_queued, 1);
                vtc_leave_queue(e->vtc, r->vt);
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
        int need = blocks_needed(e, (pre ? pre->n_tokens : nv + r->n_prompt) + 1);
        if (ad && ad->kind == ADAPTER_PREFIX_TUNING && !prefix_find(e, ad)) need += prefix_blocks(e, ad, &pad);
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
            if (ad && ad->kind == ADAPTER_PREFIX_TUNING && !(s->pfx = prefix_acquire(e, ad))) {
                s->vt = NULL;
                seq_free(e, s);
                s = NULL;
            }
        } else {
            s = seq_create(e, r, ad, pinned);
        }
        if (!s) {
            vtc_leave_queue(e->vtc, vt);
            finish_request(r, FINISH_ERROR, "out of memory admitting the request");
            continue;
        }
        s->admitted = ++e->n_admitted;
        vtc_admit(e->vtc, vt);
        s->vt = vt;
        e->running[e->n_running++] = s;
    }
}

/* ---------- output ---------- */

static int pending_append(seq *s, const char *p, size_t n) {
    if (n == 0) return 0; /* an empty piece may come with p == NULL */
    if (s->pending_len + n > s->pending_cap) {
        size_t cap = s->pending_cap ? s->pending_cap : 64;
        while (cap < s->pending_len + n) cap *= 2;
        char *t = realloc(s->pending, cap);
        if (!t) return PEFTD_ENOMEM;
        s->pending = t;
        s->pending_cap = cap;
    }
    memcpy(s->pending + s->pending_len, p, n);
    s->pending_len += n;
    return 0;
}

/* Looks for stop strings in the held-back text. Returns the number of pending bytes that
 * are safe to publish; *stopped is set when a stop string matched (text before it is kept). */
static size_t scan_stops(const seq *s, bool *stopped) {
    const gen_params *p = &s->r->params;
    const char *t = s->pending;
    size_t n = s->pending_len, first = n;
    *stopped = false;
    for (int i = 0; i < p->n_stop; i++) {
        const char *hit = memmem(t, n, p->stop[i], strlen(p->stop[i]));
        if (hit && (size_t)(hit - t) < first) {
            first = (size_t)(hit - t);
            *stopped = true;
        }
    }
    if (*stopped) return first;
    /* hold back the longest tail that is a proper prefix of some stop string */
    size_t hold = 0;
    for (int i = 0; i < p->n_stop; i++) {
        size_t ls = strlen(p->stop[i]);
        for (size_t k = ls - 1 < n ? ls - 1 : n; k > hold; k--)
            if (memcmp(t + n - k, p->stop[i], k) == 0) {
                hold = k;
                break;
            }
    }
    return n - hold;
}

/* Consumes a sampled token: detokenize, stop strings, limits, publish. Returns true when
 * the sequence finished. */
static bool seq_accept(engine *e, seq *s, int32_t tok, const gen_token *lp) {
    engine_request *r = s->r;
    s->tokens[s->n_tokens++] = tok;
    s->n_generated++;
    finish_reason fin = FINISH_NONE;
    gen_token rec;
    if (lp) {
        rec = *lp;
        rec.text_offset = s->text_total;
    }
    size_t publish = 0;
    bool is_eos = tok == e->eos_id && !r->params.ignore_eos;
    if (is_eos) {
        fin = FINISH_STOP;
        publish = s->pending_len; /* nothing can complete a stop string any more */
    } else {
        const char *piece = NULL;
        size_t len = 0;
        if (tokenizer_stream_push(s->ds, tok, &piece, &len) < 0 || pending_append(s, piece, len) < 0) {
            finish_request(r, FINISH_ERROR, "detokenization failed");
            return true;
        }
        s->text_total += len;
        bool stopped = false;
        publish = scan_stops(s, &stopped);
        if (stopped) fin = FINISH_STOP;
    }
    if (fin == FINISH_NONE && (s->n_generated >= r->params.max_tokens || s->n_tokens >= e->ctx_len))
        fin = FINISH_LENGTH;
    if (fin == FINISH_LENGTH || is_eos) {
        /* the end: release bytes the detokenizer held back (an incomplete UTF-8 tail) */
        const char *piece = NULL;
        size_t len = 0;
        if (tokenizer_stream_flush(s->ds, &piece, &len) == 0 && len && pending_append(s, piece, len) == 0) {
            s->text_total += len;
            bool stopped = false;
            publish = scan_stops(s, &stopped);
            if (stopped) fin = FINISH_STOP;
            else publish = s->pending_len;
        } else {
            publish = s->pending_len;
        }
    }
    engine__publish(r, s->pending, publish, lp ? &rec : NULL, s->n_generated);
    if (fin == FINISH_NONE) {
        if (s->pending_len > publish) memmove(s->pending, s->pending + publish, s->pending_len - publish);
        s->pending_len -= publish;
        engine__notify(r);
        return false;
    }
    s->pending_len = 0;
    finish_request(r, fin, NULL);
    return true;
}

/* ---------- the step ---------- */

static void fail_all_running(engine *e, const char *msg) {
    for (int i = 0; i < e->n_running; i++) {
        finish_request(e->running[i]->r, FINISH_ERROR, msg);
        seq_free(e, e->running[i]);
    }
    e->n_running = 0;
}

/* Takes blocks so that the sequence's own slots cover its first `tokens` tokens. */
static int seq_reserve(engine *e, seq *s, int tokens) {
    int want = blocks_needed(e, tokens);
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
    prefix_release(e, s->pfx);
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
static bool engine_step(engine *e) {
    drain_queue(e);
    reap_cancelled(e, false);
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
        if (seq_accept(e, s, tok, p->logprobs >= 0 ? &lp : NULL)) s->r = NULL; /* finished */
    }
    for (int i = 0; i < e->n_running;) {
        if (e->running[i]->r == NULL) {
            seq_free(e, e->running[i]);
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
    drain_queue(e);
    if (mode == STOP_CANCEL) reap_cancelled(e, true);
    if (!e->w_head && e->n_running == 0) close_all(e);
}

static void update_gauges(engine *e) {
    pthread_mutex_lock(&e->smu);
    e->stats.running = e->n_running;
    e->stats.waiting = atomic_load(&e->n_queued);
    e->stats.kv_blocks_used = kv_blocks_used(&e->kv);
    pthread_mutex_unlock(&e->smu);
}

static void on_idle(uv_idle_t *h) {
    engine *e = h->data;
    bool worked = engine_step(e);
    update_gauges(e);
    check_stop(e);
    if (!worked && !e->closing) {
        uv_idle_stop(&e->idle);
        e->idle_on = false;
    }
}

static void on_adapter_ready(void *ud) {
    engine *e = ud;
    ensure_idle(e); /* the next step retries admission */
}

static void on_wake(uv_async_t *h) {
    engine *e = h->data;
    drain_queue(e);
    reap_cancelled(e, false);
    update_gauges(e);
    check_stop(e);
    ensure_idle(e);
}

static void engine_thread(void *arg) {
    engine *e = arg;
    uv_run(&e->loop, UV_RUN_DEFAULT);
}

/* ---------- public API ---------- */

int engine_create(const engine_config *cfg, model *m, kbackend *kb, const tokenizer *tok, engine **out,
                  char *err, size_t errlen) {
    engine *e = calloc(1, sizeof *e);
    if (!e) return PEFTD_ENOMEM;
    e->cfg = *cfg;
    e->m = m;
    e->kb = kb;
    e->tok = tok;
    e->ctx_len = m->cfg.max_position_embeddings;
    /* The attention kernels see the whole context; a sliding-window model (Mistral) is exact
     * only while the context fits the window, so the window caps the context length. */
    if (m->cfg.sliding_window > 0 && m->cfg.sliding_window < e->ctx_len) e->ctx_len = m->cfg.sliding_window;
    e->eos_id = tokenizer_eos_id(tok) >= 0 ? tokenizer_eos_id(tok) : m->cfg.eos_token_id;
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
    /* a sequence's own blocks plus, for prefix tuning, the shared prefix blocks before them */
    e->max_blocks = 2 * blocks_needed(e, e->ctx_len);
    int n_blocks = cfg->kv_blocks;
    if (n_blocks <= 0) {
        const model_config *mc = &m->cfg;
        size_t per_block = (size_t)cfg->block_size * mc->n_kv_heads * mc->head_dim * sizeof(float) * 2 *
                           (size_t)mc->n_layers;
        size_t budget = (size_t)(cfg->kv_cache_mb > 0 ? cfg->kv_cache_mb : 512) << 20;
        size_t cap = (size_t)cfg->max_seqs * e->max_blocks; /* more could never be used */
        n_blocks = (int)(budget / per_block < cap ? budget / per_block : cap);
    }
    if (n_blocks < blocks_needed(e, e->ctx_len)) {
        /* at least one full-context sequence must fit, or long prompts could never run */
        snprintf(err, errlen, "engine: KV cache of %d blocks cannot hold one %d-token sequence (%d blocks)",
                 n_blocks, e->ctx_len, blocks_needed(e, e->ctx_len));
        goto fail;
    }
    e->cfg.kv_blocks = n_blocks;
    llama_ctx_params lp = {.max_tokens = cfg->max_batch_tokens + cfg->max_seqs, .max_seqs = cfg->max_seqs,
                           .block_size = cfg->block_size, .n_blocks = n_blocks, .max_blocks = e->max_blocks};
    /* + max_seqs rows: a step holds every decode row plus a prefill chunk of the budget */
    if ((st = llama_ctx_create(m, &lp, &e->lc, err, errlen)) < 0) goto fail;
    st = PEFTD_ENOMEM;
    if (kv_blocks_init(&e->kv, n_blocks) < 0 || sampler_scratch_init(&e->ss, m->cfg.vocab_size) < 0 ||
        vtc_create(&e->vtc) < 0)
        goto oom;
    size_t T = (size_t)lp.max_tokens, S = (size_t)cfg->max_seqs;
    e->running = calloc(S, sizeof(seq *));
    e->b_tokens = malloc(T * 4);
    e->b_pos = malloc(T * 4);
    e->b_slots = malloc(T * 4);
    e->b_qstart = malloc((S + 1) * 4);
    e->b_kvlen = malloc(S * 4);
    e->b_kvstart = malloc(S * 4);
    e->b_segs = malloc(S * sizeof(llama_segment));
    e->prefixes = calloc(S, sizeof(prefix_entry *));
    e->b_btab = malloc(S * (size_t)e->max_blocks * 4);
    e->b_rows = malloc(S * 4);
    e->b_chunk = calloc(S, sizeof(int));
    e->b_logit_seq = malloc(S * sizeof(seq *));
    e->logits = malloc(S * (size_t)m->cfg.vocab_size * sizeof(float));
    if (!e->running || !e->b_tokens || !e->b_pos || !e->b_slots || !e->b_qstart || !e->b_kvlen ||
        !e->b_btab || !e->b_rows || !e->b_chunk || !e->b_logit_seq || !e->logits || !e->b_kvstart ||
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
    }
    e->stats.kv_blocks_total = n_blocks;
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

int engine_submit(engine *e, engine_request *r) {
    if (r->n_prompt < 1 || r->params.max_tokens < 1) return PEFTD_EINVAL;
    const adapter *ad = r->params.adapter;
    if (ad && ad->n_layers != e->m->cfg.n_layers) return PEFTD_EINVAL;
    if (r->params.handle && !e->tiers) return PEFTD_EINVAL;
    /* virtual tokens (prompt/prefix tuning) take positions of the context too */
    int nv = r->params.handle ? r->params.handle->meta.n_virtual : n_virtual_of(ad);
    if ((int64_t)nv + r->n_prompt + r->params.max_tokens > e->ctx_len) return PEFTD_ERANGE;
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
    drain_queue(e);
    reap_cancelled(e, true);
    tiers_free(e->tiers);
    model_adapter_base_free(&e->abase);
    vtc_free(e->vtc);
    llama_ctx_free(e->lc);
    kv_blocks_free(&e->kv);
    sampler_scratch_free(&e->ss);
    free(e->running);
    free(e->b_tokens);
    free(e->b_pos);
    free(e->b_slots);
    free(e->b_qstart);
    free(e->b_kvlen);
    free(e->b_kvstart);
    free(e->b_segs);
    free(e->prefixes);
    free(e->b_btab);
    free(e->b_rows);
    free(e->b_chunk);
    free(e->b_logit_seq);
    free(e->logits);
    pthread_mutex_destroy(&e->qmu);
    pthread_mutex_destroy(&e->smu);
    free(e);
}
