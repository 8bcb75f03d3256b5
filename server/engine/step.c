/* server/engine/step.c — one engine step over the running sequences, in five phases:
 * plan (how many token rows each sequence gets: decode tokens first, then prefill chunks
 * within the token budget), reserve (KV blocks for those rows, with preemption by
 * recompute when the pool runs out), build (the ragged batch arrays, ordered into adapter
 * segments), run (the forward pass) and retire (fairness charges, the scored prompt rows of
 * prompt_logprobs requests, logit processing and sampling, accepting the tokens, freeing
 * finished sequences, step statistics). Engine thread only. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "server/engine/engine_internal.h"

/* What build hands to run and retire. */
typedef struct {
    int rows;        /* T: token rows in the batch */
    int seqs;        /* S: sequences with rows in it */
    int logits;      /* NL: rows whose next token is sampled */
    int segs;        /* G: adapter segments */
    int prompt_rows; /* rows that prefill a prompt (not decode) */
} step_shape;

static void fail_all_running(engine *e, const char *msg) {
    for (int i = 0; i < e->n_running; i++) {
        engine__finish_request(e->running[i]->r, FINISH_ERROR, msg);
        engine__seq_free(e, e->running[i]);
    }
    e->n_running = 0;
}

static int seq_cmp_adapter(const void *a, const void *b) {
    const seq *x = *(seq *const *)a, *y = *(seq *const *)b;
    uintptr_t px = (uintptr_t)x->ad, py = (uintptr_t)y->ad;
    if (px != py) return px < py ? -1 : 1;
    if (x->has_mix != y->has_mix) return x->has_mix ? 1 : -1; /* compositions after the base rows */
    return (x->ad_scale > y->ad_scale) - (x->ad_scale < y->ad_scale);
}

/* longrope on Phi3 (model_config.c cfg_rope_scaling): a sequence still on the short table
 * whose next row to compute lies past the original max is recomputed whole with the long
 * table, as Phi3's prepare_inputs_for_generation drops the KV cache at the decode step where
 * the length first exceeds original_max_position_embeddings: n_computed = 0 (its blocks are
 * kept and overwritten) and rope_len = its length. Also after a preemption that stopped
 * right at the crossing, so no sequence ever mixes short and long rows. */
static void step_longrope_recompute(engine *e) {
    const rope_scaling *r = &e->m->cfg.rope;
    if (r->kind != ROPE_LONGROPE) return;
    for (int i = 0; i < e->n_running; i++) {
        seq *s = e->running[i];
        int len = s->pos_off + s->n_tokens; /* last position to compute + 1 */
        if (len <= r->original_max_position_embeddings || s->rope_len > r->original_max_position_embeddings)
            continue;
        s->rope_len = len;
        s->n_computed = 0;
        pthread_mutex_lock(&e->smu);
        e->stats.rope_recomputes++;
        pthread_mutex_unlock(&e->smu);
    }
}

/* Plan: sequences of one (adapter, scale) next to each other (one segment each), then how
 * many rows each gets in b_chunk: decode tokens first (one row each), then prefill chunks
 * with what is left of the token budget. */
static void step_plan(engine *e) {
    qsort(e->running, (size_t)e->n_running, sizeof(seq *), seq_cmp_adapter);
    int budget = e->cfg.max_batch_tokens, score_budget = e->score_rows;
    memset(e->b_chunk, 0, (size_t)e->n_running * sizeof(int));
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < e->n_running; i++) {
            seq *s = e->running[i];
            int remaining = s->n_tokens - s->n_computed;
            if ((pass == 0) != (remaining == 1)) continue;
            int c = remaining < budget ? remaining : budget;
            /* a prompt still to be scored: at most score_budget rows (each may be scored) */
            bool scoring = ((s->r->params.prompt_logprobs && s->scored < s->r->n_prompt - 1) || engine__pool_scoring(s)) &&
                           pass == 1;
            if (scoring && c > score_budget) c = score_budget;
            if (c <= 0) continue;
            e->b_chunk[i] = c;
            budget -= c;
            if (scoring) score_budget -= c;
        }
}

/* Takes blocks so that the sequence's own slots cover its first `tokens` tokens. */
static int seq_reserve(engine *e, seq *s, int tokens) {
    int want = engine__blocks_needed(e, tokens);
    if (want <= s->n_blocks) return 0;
    if (engine__kv_alloc(e, want - s->n_blocks, s->blocks + s->n_blocks) < 0) return PEFTD_ENOMEM;
    s->n_blocks = want;
    return 0;
}

/* Preemption by recompute (vLLM's policy), step 1: the sequence gives back its KV
 * blocks, its prefix and its adapter pin at once (so the step can go on with them). */
static void seq_evict(engine *e, int i) {
    seq *s = e->running[i];
    engine__kv_release(e, s->blocks, s->n_blocks);
    s->n_blocks = 0;
    s->n_computed = 0;
    s->pc_hashed = 0;
    engine__prefix_release(e, s->pfx);
    s->pfx = NULL;
    if (s->pinned) tiers_unpin(e->tiers, s->pinned);
    s->pinned = NULL;
    for (int k = 0; k < ADAPTER_MAX_MIX; k++) {
        if (s->mix_pinned[k]) tiers_unpin(e->tiers, s->mix_pinned[k]);
        s->mix_pinned[k] = NULL;
    }
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
    memset(r->mix_fetching, 0, sizeof r->mix_fetching);
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

/* Reserve: K/V blocks for every planned chunk, decodes first; when the pool is empty,
 * preempt (maybe the sequence itself), then take the preempted ones out of the batch. */
static void step_reserve(engine *e) {
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
}

/* Build, one sequence: its block-table row (the shared prefix blocks, then its own), its
 * c token rows (token, position, KV slot) and, when the chunk ends its known tokens, the
 * row whose logits are sampled. */
static void build_seq(engine *e, seq *s, int c, step_shape *sh) {
    const int bs = e->cfg.block_size, S = sh->seqs;
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
    int T = sh->rows;
    e->b_qstart[S] = T;
    for (int j = 0; j < c; j++, T++) {
        int idx = s->n_computed + j, kv = kv_off + idx;
        e->b_tokens[T] = s->tokens[idx];
        e->b_pos[T] = s->pos_off + idx;
        e->b_slots[T] = row[kv / bs] * bs + kv % bs;
    }
    sh->rows = T;
    s->score_n = 0;
    if (s->r->params.pool) engine__pool_rows(e, s, c, T, &sh->logits);
    if (s->r->params.prompt_logprobs) {
        /* row of prompt token j scores token j + 1 (once: not again after a preemption) */
        for (int j = 0; j < c; j++) {
            int pj = s->n_computed + j - s->nv;
            if (pj < s->scored || pj < 0 || pj + 1 >= s->r->n_prompt) continue;
            if (s->score_n == 0) {
                s->score_row0 = sh->logits;
                s->score_j0 = pj;
            }
            e->b_rows[sh->logits] = T - c + j;
            e->b_logit_seq[sh->logits++] = NULL;
            s->score_n++;
        }
    }
    if (s->n_tokens - s->n_computed > 1) sh->prompt_rows += c;
    e->b_kvlen[S] = kv_off + s->n_computed + c;
    e->b_kvstart[S] = s->pfx ? s->pfx->pad : 0;
    e->b_ropelen[S] = s->rope_len;
    if (s->n_computed + c == s->n_tokens && s->r->params.max_tokens > 0) {
        e->b_rows[sh->logits] = T - 1;
        e->b_logit_seq[sh->logits++] = s;
    }
    sh->seqs++;
}

/* Build: the batch arrays of every planned chunk, a new adapter segment wherever the
 * (adapter, scale) changes. Needs at least one running sequence with rows. */
static llama_batch step_build(engine *e, step_shape *sh) {
    *sh = (step_shape){0};
    for (int i = 0; i < e->n_running; i++) {
        seq *s = e->running[i];
        int c = e->b_chunk[i], G = sh->segs;
        if (c == 0) continue;
        const adapter_mix *mix = s->has_mix ? &s->mix : NULL; /* a composition: a segment of its own */
        if (G == 0 || e->b_segs[G - 1].ad != s->ad || e->b_segs[G - 1].scale != s->ad_scale || mix ||
            e->b_segs[G - 1].mix) {
            if (G) e->b_segs[G - 1].row_end = sh->rows;
            e->b_segs[sh->segs++] =
                (llama_segment){.ad = s->ad, .scale = s->ad_scale, .row_start = sh->rows, .mix = mix};
        }
        build_seq(e, s, c, sh);
    }
    e->b_segs[sh->segs - 1].row_end = sh->rows;
    e->b_qstart[sh->seqs] = sh->rows;
    return (llama_batch){
        .n_tokens = sh->rows, .tokens = e->b_tokens, .positions = e->b_pos, .slots = e->b_slots,
        .n_seqs = sh->seqs, .q_start = e->b_qstart, .kv_len = e->b_kvlen, .block_table = e->b_btab,
        .kv_start = e->n_prefixes ? e->b_kvstart : NULL, .n_segs = sh->segs, .segs = e->b_segs,
        .n_logits = sh->logits, .logit_rows = e->b_rows, .rope_len = e->b_ropelen,
    };
}

/* Device sampling (engine_config.device_sampling) serves a step when every logits row is a
 * sampled row whose choice needs only its logits: no logit processing (penalties, bias,
 * min_tokens), no json_object mask, no top alternatives (the chosen token's logprob is
 * fine), no scored prompt rows. Otherwise the step samples on the host as before. */
static bool step_device_sampling(engine *e, const step_shape *sh) {
    if (!e->ds.on || sh->logits == 0) return false;
    for (int k = 0; k < sh->logits; k++) {
        seq *s = e->b_logit_seq[k];
        if (!s) return false;
        const gen_params *p = &s->r->params;
        if (sampler_needs_processing(p, s->n_generated) || p->json_object || p->logprobs > 0) return false;
    }
    return true;
}

/* The device half of a device-sampling step: each row's parameters and its uniform draw,
 * taken from the sequence's own RNG exactly when the host sampler would take it (one draw
 * per sampled, non-greedy token), then the backend's choice (e->ds.ids, e->ds.logprob). */
static int step_sample_device(engine *e, const step_shape *sh) {
    const int V = e->m->cfg.vocab_size;
    bool trunc = false, want_lp = false;
    for (int k = 0; k < sh->logits; k++) {
        seq *s = e->b_logit_seq[k];
        const gen_params *p = &s->r->params;
        e->ds.temp[k] = p->temperature;
        e->ds.top_k[k] = p->top_k;
        e->ds.top_p[k] = p->top_p;
        e->ds.u[k] = p->temperature > 0.0f ? rng_uniform(&s->rng) : 0.0;
        trunc |= p->temperature > 0.0f && ((p->top_k > 0 && p->top_k < V) || (p->top_p > 0.0f && p->top_p < 1.0f));
        want_lp |= p->logprobs >= 0;
    }
    return llama_sample(e->lc, sh->logits, e->ds.temp, e->ds.top_k, e->ds.top_p, e->ds.u, trunc, e->ds.ids,
                        want_lp ? e->ds.logprob : NULL);
}

/* Run: the forward pass (and, with device sampling, the token choice on the backend). A
 * failure ends every running sequence (the batch's state is unknown) and returns its status. */
static int step_run(engine *e, const llama_batch *b, const step_shape *sh, bool dev) {
    int st = dev ? engine__forward_device(e, b) : llama_forward(e->lc, b, e->logits);
    if (st >= 0 && dev) st = step_sample_device(e, sh);
    if (st < 0) {
        LOGE("engine: forward failed: %s", peftd_strerror(st));
        fail_all_running(e, "model forward failed");
    }
    return st;
}

/* Retire, scored prompt rows: the logprob of the prompt token each row predicts (and the
 * top alternatives), published in prompt order. */
static void retire_scores(engine *e) {
    const int V = e->m->cfg.vocab_size;
    for (int i = 0; i < e->n_running; i++) {
        seq *s = e->running[i];
        if (s->score_n == 0 || s->r->params.pool) continue;
        const gen_params *p = &s->r->params;
        for (int k = 0; k < s->score_n; k++) {
            int j = s->score_j0 + k;
            gen_token rec;
            sampler_logprobs(e->logits + (size_t)(s->score_row0 + k) * V, V, s->r->prompt[j + 1],
                             p->logprobs > 0 ? p->logprobs : 0, &rec);
            rec.text_offset = 0;
            if (engine__publish_prompt(s->r, &rec) < 0) break;
            s->scored = j + 1;
        }
        s->score_n = 0;
    }
}

/* Retire: the computed rows are charged to their tenants, one token is sampled for each
 * logits row and accepted, and the finished sequences are freed. Returns the tokens
 * generated. */
static int step_retire(engine *e, const step_shape *sh, bool dev) {
    for (int i = 0; i < e->n_running; i++) {
        seq *s = e->running[i];
        int c = e->b_chunk[i];
        if (c == 0) continue;
        bool decode = s->n_tokens - s->n_computed == 1;
        s->n_computed += c;
        engine__pc_insert(e, s);
        vtc_charge(e->vtc, s->vt, decode ? 0 : c, s->n_computed == s->n_tokens ? 1 : 0);
    }
    retire_scores(e);
    engine__pool_retire(e); /* failures finish the sequences concerned */
    const int V = e->m->cfg.vocab_size;
    int generated = 0;
    for (int k = 0; k < sh->logits; k++) {
        seq *s = e->b_logit_seq[k];
        if (!s) continue; /* a scored prompt row */
        const gen_params *p = &s->r->params;
        gen_token lp;
        if (dev) { /* chosen on the backend (step_sample_device) */
            lp.id = e->ds.ids[k];
            lp.logprob = p->logprobs >= 0 ? e->ds.logprob[k] : 0.0f;
            lp.n_top = 0;
            generated++;
            if (engine__seq_accept(e, s, lp.id, p->logprobs >= 0 ? &lp : NULL)) s->r = NULL;
            continue;
        }
        const float *raw = e->logits + (size_t)k * V, *use = raw;
        int n_prompt = s->n_tokens - s->n_generated;
        if (sampler_needs_processing(p, s->n_generated))
            use = sampler_process(raw, p, s->tokens, n_prompt, s->tokens + n_prompt, s->n_generated,
                                  e->eos_ids, p->ignore_eos ? 0 : e->n_eos, &e->ss);
        if ((p->json_object || p->json_schema) && !(use = engine__json_mask(e, s, use))) {
            engine__finish_request(s->r, FINISH_ERROR, "out of memory (JSON mode token table)");
            s->r = NULL;
            continue;
        }
        int32_t tok = sampler_pick_raw(use, raw, p, &s->rng, &e->ss, p->logprobs, &lp);
        if (p->json_object || p->json_schema) engine__json_advance(e, s, tok);
        generated++;
        if (engine__seq_accept(e, s, tok, p->logprobs >= 0 ? &lp : NULL)) s->r = NULL; /* finished */
    }
    for (int i = 0; i < e->n_running; i++) {
        /* max_tokens 0 (prompt_logprobs): the prompt is scored, nothing is generated */
        seq *s = e->running[i];
        if (s->r && s->r->params.max_tokens == 0 && s->n_computed == s->n_tokens) {
            engine__finish_request(s->r, FINISH_LENGTH, NULL);
            s->r = NULL;
        }
    }
    for (int i = 0; i < e->n_running;) {
        if (e->running[i]->r == NULL) {
            engine__seq_free(e, e->running[i]);
            e->running[i] = e->running[--e->n_running];
        } else {
            i++;
        }
    }
    return generated;
}

static void step_stats(engine *e, const step_shape *sh, int generated) {
    pthread_mutex_lock(&e->smu);
    for (int k = 0, lim = 1; k < ENGINE_BATCH_BUCKETS; k++, lim *= 2)
        if (k == ENGINE_BATCH_BUCKETS - 1 || sh->rows <= lim) e->stats.batch_rows_bucket[k]++;
    e->stats.batch_rows_sum += (uint64_t)sh->rows;
    e->stats.steps++;
    e->stats.tokens_generated += (uint64_t)generated;
    e->stats.prompt_tokens += (uint64_t)sh->prompt_rows;
    pthread_mutex_unlock(&e->smu);
}

bool engine__step(engine *e) {
    engine__drain_queue(e);
    engine__reap_cancelled(e, false);
    engine__admit(e);
    if (e->n_running == 0) return false;
    step_longrope_recompute(e);
    step_plan(e);
    step_reserve(e);
    if (e->n_running == 0) return true;
    step_shape sh;
    llama_batch b = step_build(e, &sh);
    bool dev = step_device_sampling(e, &sh);
    if (step_run(e, &b, &sh, dev) < 0) return true;
    step_stats(e, &sh, step_retire(e, &sh, dev));
    if (e->step_delay_us) usleep(e->step_delay_us);
    return true;
}
