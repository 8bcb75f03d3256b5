/* server/engine/engine_internal.h — the request object shared by request.c (caller side)
 * and engine.c (engine side). Not for use outside server/engine/. */
#ifndef PEFTD_ENGINE_INTERNAL_H
#define PEFTD_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

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
    gen_token *prompt_lp;          /* prompt_logprobs: scored prompt tokens 1.. */
    int n_prompt_lp, prompt_lp_cap, prompt_lp_taken;
    float *hidden;                 /* pool: published with the finish (engine__publish_hidden) */
    int n_hidden;
    char *labels;                  /* ENGINE_POOL_CLASSIFY: the label names (engine_delta.labels) */
    size_t labels_len;
    bool hidden_taken;
    int32_t *bias_id;              /* owned copies behind params.bias_id / bias_val */
    float *bias_val;
    int completion_tokens;
    bool finished;
    bool finish_notified;     /* the finish's notify(ud) has returned (engine_request_wait) */
    finish_reason finish;
    char error[256];
    uint64_t t_submit_ns;          /* engine_submit (CLOCK_MONOTONIC) */
    uint64_t queue_ns;             /* submit -> first admission; 0 until admitted */
    /* engine queue link (guarded by the engine's queue lock) */
    struct engine_request *next;
    bool adapter_fetching;         /* engine thread: a fetch of its adapter was started */
    bool mix_fetching[ADAPTER_MAX_MIX]; /* the same for each adapter of a composition */
    bool skip;                     /* engine thread: passed over in this admission round */
    struct vtc_tenant *vt;         /* engine thread: its tenant's fairness counter */
    struct seq *preempted;         /* engine thread: its sequence, waiting to be recomputed */
};

/* CLOCK_MONOTONIC in nanoseconds (the queue time of engine_delta). */
static inline uint64_t engine__now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Engine side: append published text / a token record; finish. Each takes r->mu. */
int engine__publish(engine_request *r, const char *text, size_t len, const gen_token *tok,
                    int completion_tokens);
int engine__publish_prompt(engine_request *r, const gen_token *tok); /* one scored prompt token */
/* takes h and labels (malloc'd; labels may be NULL, else labels_len bytes) */
int engine__publish_hidden(engine_request *r, float *h, int n, char *labels, size_t labels_len);
void engine__finish(engine_request *r, finish_reason f, const char *error);
/* After the finish's notify: lets engine_request_wait return (the notify ud may go then). */
void engine__finish_notified(engine_request *r);
void engine__notify(engine_request *r);

/* ---------- the engine's private state (engine.c, sequence.c, scheduler.c, step.c) ---------- */

#include <uv.h>

#include "adapter_store/tiers.h"
#include "server/engine/fairness.h"
#include "server/engine/json_grammar.h"
#include "server/engine/json_schema.h"
#include "server/engine/kv_blocks.h"
#include "server/engine/prefix_cache.h"
#include "server/engine/sampling.h"
#include "server/model/llama.h"

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
    bool has_mix;             /* a composition of LoRAs (gen_params.n_mix): mix, ad NULL */
    adapter_mix mix;
    adapter *mix_pinned[ADAPTER_MAX_MIX]; /* mix.ad[i] when pinned in the tiers, else NULL */
    vtc_tenant *vt;           /* whose served tokens this sequence counts as */
    float ad_scale;
    int32_t *tokens;          /* [virtual tokens (prompt tuning) as -(k+1)] + prompt + generated */
    int n_tokens;
    int max_total;            /* n_virtual + n_prompt + max_tokens */
    int n_computed;           /* tokens whose K/V are in the cache */
    int pos_off;              /* RoPE position of tokens[0] */
    int rope_len;             /* llama_batch.rope_len (dynamic / longrope rope_scaling): the
                               * prompt's length (last position + 1); after Phi3's longrope
                               * recompute at the original max, the length then */
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
    int nv;                   /* prompt tuning's virtual tokens at the start of tokens */
    int scored;               /* prompt_logprobs: prompt tokens 1..scored are published */
    int score_row0, score_n, score_j0; /* this step: logits rows score_row0.. score prompt
                                        * tokens score_j0 + 1 .. (score_n of them) */
    double *hsum;             /* pool: sum (MEAN) or copy (LAST) of the pooled rows so far */
    int pooled;               /* pool: prompt tokens 0..pooled-1 are in hsum */
    jsong json;               /* json_object: the output so far, recognized */
    jsm *jss;                 /* json_schema: the output so far, recognized (own allocation) */
    bool pc_on;               /* prefix cache: its blocks may be shared (engine_prefix.c) */
    int pc_hashed;            /* blocks whose key is chained into pc_hash (cached or taken) */
    uint8_t pc_hash[32];      /* key of block pc_hashed - 1 (the seed when 0) */
} seq;

enum { STOP_NONE = 0, STOP_DRAIN, STOP_CANCEL };

/* Prompt rows scored per step at most (prompt_logprobs), beyond the one sampled row per
 * sequence: bounds the logits buffer; a longer prompt is scored over several steps. */
#define ENGINE_SCORE_ROWS 64

struct engine {
    engine_config cfg;
    model *m;
    kbackend *kb;
    const tokenizer *tok;
    llama_ctx *lc;
    int ctx_len, max_blocks;
    kdtype kv_dtype;          /* the KV cache's elements (cfg.kv_dtype parsed) */
    /* the ids that end a generation (finish_reason "stop", not emitted as text): the
     * model's generation_config.json / config.json eos set, else the tokenizer's eos */
    int32_t eos_ids[MODEL_MAX_EOS];
    int n_eos;

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
    pcache pc;                /* automatic prefix caching (unallocated when off) */
    tiers *tiers;             /* adapter slot pool (NULL without a store) */
    struct slot_pool *spool;  /* device slot pool under tiers (engine_slot_pool.c), or NULL */
    struct engine_graphs *graphs; /* decode-step graphs (engine_graphs.c), NULL when off */
    void *spool_dev;          /* its device-ops context */
    void (*adapter_ready)(void *e); /* engine.c's wake-up when a fetch ends (tiers_fetch callback) */
    vtc *vtc;                 /* per-tenant fairness counters */
    adapter_base abase;
    prefix_entry **prefixes;  /* [max_seqs]: at most one per running sequence; each entry is
                               * its own allocation, so sequences' pointers stay valid */
    int n_prefixes;
    sampler_scratch ss;
    /* step batch buffers (host) */
    int32_t *b_tokens, *b_pos, *b_slots, *b_qstart, *b_kvlen, *b_kvstart, *b_btab, *b_rows, *b_ropelen;
    llama_segment *b_segs;
    int *b_chunk;             /* tokens each running seq contributes to the step */
    seq **b_logit_seq;        /* per logits row: the sequence sampling from it, NULL for a
                               * prompt row being scored */
    int score_rows;           /* scored prompt rows per step at most */
    /* json_mask.c: the bytes each token adds (jt_len -1: never allowed), built at the
     * first json_object request */
    bool jt_ready;
    int32_t *jt_off, *jt_len;
    uint8_t *jt_blob;
    uint8_t *jt_plain;        /* [V] 1: the token's bytes are all plain string characters
                               * (json_schema.h jsm_plain_room) */
    float *logits;
    struct {                  /* device sampling (engine_config.device_sampling), per row */
        bool on;
        float *temp, *top_p, *logprob;
        int32_t *top_k, *ids;
        double *u;
    } ds;

    pthread_mutex_t smu;
    engine_stats stats;
    engine_lora_info *lora_pub;  /* under smu: the published adapter view (lora_info.c) */
    engine_lora_info *lora_work; /* engine thread: the next one, swapped in under smu */
    unsigned step_delay_us;   /* PEFTD_DEBUG_STEP_DELAY_US: slows steps down for race tests */
};

/* engine_pool.c: prefill-only sequences that return a pooled hidden state (gen_params.pool) */
/* build: marks the rows of s's chunk (the last c batch rows before T) that are pooled as
 * logits rows (b_logit_seq NULL) from logits row *nl on; sets score_row0 / score_n / score_j0 */
void engine__pool_rows(engine *e, seq *s, int c, int T, int *nl);
/* retire: adds the pooled rows of every running sequence to its hsum and finishes the
 * sequences whose prompt is computed, publishing the hidden state; a failure finishes the
 * sequence concerned with an error (and is returned). */
int engine__pool_retire(engine *e);
/* admission: ENGINE_ERR_CLASSIFIER_ONLY when r would sample or score tokens through the
 * lm_head of a SEQ_CLS adapter (trained for its classification head, not for text), else NULL */
const char *engine__pool_refusal(const engine_request *r, const adapter *ad);
/* s still has prompt rows to pool under step_plan's score_rows budget (ENGINE_POOL_MEAN) */
bool engine__pool_scoring(const seq *s);

/* sequence.c: sequences, the shared prefix-tuning KV, output */
void engine__finish_request(engine_request *r, finish_reason f, const char *error);
/* engine_slot_pool.c: on a device backend (CUDA builds), one pre-allocated device slot pool
 * behind e->tiers (PEFTD_SLOT_POOL=0: off; PEFTD_SLOT_MAX_RANK sizes a slot, default 16);
 * a pool that cannot be created is logged and the tiers allocate per adapter as before.
 * Bring-up/tear-down thread; free after tiers_free. */
void engine__slot_pool_init(engine *e, kbackend *kb, int slots);
/* Bytes of one pool slot for e's model (the rule of slot_pool_slot_bytes at
 * PEFTD_SLOT_MAX_RANK, f32, all seven linears); *rank gets that rank. */
size_t engine__slot_bytes(const engine *e, int *rank);
bool engine__slot_pool_wanted(const engine *e, const kbackend *kb);
/* engine_device_plan.c: with engine.kv_cache_mb 0 on a device backend (CUDA builds), the KV
 * budget from the device memory plan (kernels/device_plan.h: cudaMemGetInfo, weights, slot
 * pool, activations, logits, 1 GiB headroom, 90% of the rest); logs the plan's line. 0 and
 * *budget untouched otherwise; PEFTD_ENOMEM with the plan's one line in err when it does not
 * fit. Bring-up thread. */
/* engine_graphs.c: PEFTD_CUDA_GRAPHS=1 turns decode-step graphs on (init at create, free at
 * engine_free). engine__forward_device is llama_forward(lc, b, NULL) for a device-sampling
 * step, as transfers + ops passes, captured/replayed on CUDA. Engine thread. */
typedef struct engine_graphs engine_graphs;
void engine__graphs_init(engine *e);
void engine__graphs_free(engine *e);
int engine__forward_device(engine *e, const llama_batch *b);
void engine__graphs_stats(const engine *e, uint64_t *captures, uint64_t *replays);
int engine__device_kv_budget(const engine *e, size_t *budget, char *err, size_t errlen);
void engine__slot_pool_free(engine *e);
int engine__blocks_needed(const engine *e, int slots);
int engine__n_virtual_of(const adapter *ad);
prefix_entry *engine__prefix_find(engine *e, const adapter *ad);
int engine__prefix_blocks(const engine *e, const adapter *ad, int *pad);
prefix_entry *engine__prefix_acquire(engine *e, const adapter *ad);
void engine__prefix_release(engine *e, prefix_entry *p);
seq *engine__seq_create(engine *e, engine_request *r, const adapter *ad, adapter *pinned);
void engine__seq_free(engine *e, seq *s);
bool engine__seq_accept(engine *e, seq *s, int32_t tok, const gen_token *lp);
bool engine__is_eos(const engine *e, int32_t tok);

/* engine_prefix.c: automatic prefix caching; every KV block of a sequence is taken and
 * given back through kv_alloc / kv_release (cached blocks are refcounted) */
bool engine__pc_enabled(const engine *e);
void engine__pc_seed(engine *e, seq *s);
void engine__pc_lookup(engine *e, seq *s);
void engine__pc_insert(engine *e, seq *s);
int engine__kv_available(const engine *e);
int engine__kv_alloc(engine *e, int n, int32_t *out);
void engine__kv_release(engine *e, const int32_t *ids, int n);

/* json_mask.c: response_format json_object / json_schema. mask: logits (may be
 * e->ss.work) with every token that cannot continue s's JSON object (or its schema's
 * text) masked, in e->ss.work; NULL when out of memory. advance: s's recognizer over the
 * sampled token. */
const float *engine__json_mask(engine *e, const seq *s, const float *logits);
void engine__json_advance(engine *e, seq *s, int32_t tok);

/* scheduler.c: the waiting queue, cancellation, admission (engine thread) */
void engine__drain_queue(engine *e);
void engine__reap_cancelled(engine *e, bool all);
void engine__admit(engine *e);

/* lora_info.c: the adapter view (engine thread; allocated with the tiers) */
int engine__lora_info_init(engine *e);
void engine__lora_info_refresh(engine *e);
void engine__lora_info_free(engine *e);

/* step.c: one step (drain, reap, admit, then plan, reserve with preemption, build, run,
 * retire) over the running sequences; false when there was nothing to run (engine thread) */
bool engine__step(engine *e);

#endif
