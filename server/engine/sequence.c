/* server/engine/sequence.c — one sequence's life on the engine thread: creation from a
 * request (virtual tokens, detokenizer priming, the RNG), the prefix-tuning K/V it shares
 * with the other sequences of its adapter, and what happens to each sampled token:
 * incremental detokenization, stop strings held back until they can no longer match
 * (not before min_tokens), EOS / length limits, publication to the request. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter_store/registry.h"
#include "lib/log.h"
#include "server/engine/engine_internal.h"

void engine__prefix_release(engine *e, prefix_entry *p) {
    if (!p || --p->refs > 0) return;
    engine__kv_release(e, p->blocks, p->n_blocks);
    free(p->blocks);
    for (int i = 0; i < e->n_prefixes; i++)
        if (e->prefixes[i] == p) {
            e->prefixes[i] = e->prefixes[--e->n_prefixes];
            break;
        }
    free(p);
}

void engine__seq_free(engine *e, seq *s) {
    if (!s) return;
    if (s->vt) vtc_finish(e->vtc, s->vt);
    engine__prefix_release(e, s->pfx);
    if (s->pinned) tiers_unpin(e->tiers, s->pinned);
    for (int i = 0; i < ADAPTER_MAX_MIX; i++)
        if (s->mix_pinned[i]) tiers_unpin(e->tiers, s->mix_pinned[i]);
    engine__kv_release(e, s->blocks, s->n_blocks);
    tokenizer_stream_free(s->ds);
    free(s->blocks);
    free(s->tokens);
    free(s->pending);
    free(s->jss);
    free(s->hsum);
    free(s);
}

int engine__blocks_needed(const engine *e, int slots) {
    return (slots + e->cfg.block_size - 1) / e->cfg.block_size;
}

/* Finishes a request the engine holds: publishes the finish, notifies, drops the ref. */
void engine__finish_request(engine_request *r, finish_reason f, const char *error) {
    engine__finish(r, f, error);
    engine__notify(r);
    engine__finish_notified(r); /* only now may a waiter release the notify's ud */
    engine_request_unref(r);
}

/* Virtual tokens a request's adapter puts before its prompt (prompt or prefix tuning). */
int engine__n_virtual_of(const adapter *ad) {
    return adapter_n_virtual(ad);
}

prefix_entry *engine__prefix_find(engine *e, const adapter *ad) {
    for (int i = 0; i < e->n_prefixes; i++)
        if (e->prefixes[i]->ad == ad && !strcmp(e->prefixes[i]->sha256, ad->sha256)) return e->prefixes[i];
    return NULL;
}

/* Blocks a prefix-tuning adapter's shared K/V needs: padded to end on a block boundary. */
int engine__prefix_blocks(const engine *e, const adapter *ad, int *pad) {
    int bs = e->cfg.block_size;
    *pad = (bs - ad->n_virtual % bs) % bs;
    return (*pad + ad->n_virtual) / bs;
}

prefix_entry *engine__prefix_acquire(engine *e, const adapter *ad) {
    prefix_entry *p = engine__prefix_find(e, ad);
    if (p) {
        p->refs++;
        return p;
    }
    if (e->n_prefixes >= e->cfg.max_seqs || !(p = calloc(1, sizeof *p))) return NULL;
    p->ad = ad;
    snprintf(p->sha256, sizeof p->sha256, "%s", ad->sha256);
    p->n_blocks = engine__prefix_blocks(e, ad, &p->pad);
    p->blocks = malloc((size_t)p->n_blocks * sizeof(int32_t));
    if (!p->blocks || engine__kv_alloc(e, p->n_blocks, p->blocks) < 0) {
        free(p->blocks);
        free(p);
        return NULL;
    }
    if (llama_store_prefix(e->lc, ad, p->blocks, p->pad) < 0) {
        engine__kv_release(e, p->blocks, p->n_blocks);
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
seq *engine__seq_create(engine *e, engine_request *r, const adapter *ad, adapter *pinned) {
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
    s->blocks = malloc((size_t)engine__blocks_needed(e, s->max_total) * sizeof(int32_t));
    s->ds = tokenizer_stream_new(e->tok, true);
    if (!s->tokens || !s->blocks || !s->ds) goto fail;
    /* prompt tuning: the virtual tokens are the first positions (0..nv-1), marked -(k+1) */
    for (int k = 0; k < nv; k++) s->tokens[k] = -(k + 1);
    memcpy(s->tokens + nv, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    s->n_tokens = nv + r->n_prompt;
    s->nv = nv;
    if (r->params.prompt_logprobs && r->params.score_from > 1) s->scored = r->params.score_from - 1;
    if (tokenizer_stream_prime(s->ds, r->prompt, (size_t)r->n_prompt) < 0) goto fail;
    /* blocks are taken step by step as K/V are written (seq_reserve) */
    if (adapter_has_prefix(ad)) {
        /* PEFT passes the prefix as past key/values: the prompt's positions continue after it;
         * AdapterHub concatenates it inside attention: the prompt starts at position 0 */
        s->pos_off = ad->prefix_from_zero ? 0 : ad->n_virtual;
        if (!(s->pfx = engine__prefix_acquire(e, ad))) goto fail;
    }
    s->rope_len = s->pos_off + s->n_tokens;
    jsong_init(&s->json);
    if (r->params.json_schema) {
        if (!(s->jss = malloc(sizeof *s->jss))) goto fail;
        jsm_init(s->jss, r->params.json_schema);
    }
    uint64_t seed = r->params.has_seed ? r->params.seed
                                       : (uint64_t)uv_hrtime() ^ ((uint64_t)(uintptr_t)r << 16);
    rng_seed(&s->rng, seed);
    return s;
fail:
    engine__seq_free(e, s);
    return NULL;
}

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

bool engine__is_eos(const engine *e, int32_t tok) {
    for (int i = 0; i < e->n_eos; i++)
        if (e->eos_ids[i] == tok) return true;
    return false;
}

/* Consumes a sampled token: detokenize, stop strings, limits, publish. Returns true when
 * the sequence finished. */
bool engine__seq_accept(engine *e, seq *s, int32_t tok, const gen_token *lp) {
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
    bool is_eos = engine__is_eos(e, tok) && !r->params.ignore_eos;
    if (is_eos) {
        fin = FINISH_STOP;
        publish = s->pending_len; /* nothing can complete a stop string any more */
    } else {
        const char *piece = NULL;
        size_t len = 0;
        if (tokenizer_stream_push(s->ds, tok, &piece, &len) < 0 || pending_append(s, piece, len) < 0) {
            engine__finish_request(r, FINISH_ERROR, "detokenization failed");
            return true;
        }
        s->text_total += len;
        bool stopped = false;
        /* before min_tokens no stop string ends it: the text so far goes out as it is */
        publish = s->n_generated < r->params.min_tokens ? s->pending_len : scan_stops(s, &stopped);
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
            publish = s->n_generated < r->params.min_tokens ? s->pending_len : scan_stops(s, &stopped);
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
    engine__finish_request(r, fin, NULL);
    return true;
}
