/* server/engine/engine.h — the engine: one thread that owns the model, the KV cache and the
 * backend, and runs continuous batching over the requests posted to it.
 *
 * Data flow: a caller (HTTP thread, `peftd generate`) tokenizes a prompt, creates an
 * engine_request and submits it. The engine thread (a libuv loop) drains its submission
 * queue on every wake-up (uv_async_send coalesces), admits requests fairly across tenants
 * (Virtual Token Counter) once their adapter is resident and their prompt's KV blocks fit,
 * and runs steps: each step is one ragged batch of prefill chunks and decode tokens from
 * all running sequences, grouped into adapter segments. KV blocks are taken as sequences
 * grow; when the pool runs out, the most-served tenant's latest sequence is preempted and
 * later recomputed (bit-identical: the kernels are batch-invariant). Full prompt blocks are
 * cached by key (adapter version + token hash chain) and shared by later sequences that
 * start with the same tokens (engine_prefix.c); unreferenced ones are evicted LRU. Sampled tokens are appended to the request's output under the
 * request's lock and the request's notify callback is called (from the engine thread,
 * with no lock held). The caller takes the new output with engine_request_take().
 * Cancelling (client gone) frees the sequence's KV blocks at the next step.
 *
 * Lifetime: engine_request is refcounted. The creator holds one reference; the engine
 * holds another from engine_submit() until the request is finished. notify may be called
 * until the engine drops its reference; after a request reports finished, no further
 * notify calls happen.
 */
#ifndef PEFTD_ENGINE_H
#define PEFTD_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapter_store/adapter_mix.h"
#include "kernels/kernels.h"
#include "server/model/model.h"
#include "server/text/tokenizer.h"

#define ENGINE_MAX_LOGPROBS 20 /* OpenAI's limit for top logprobs */
#define ENGINE_MAX_STOP 16     /* stop strings per request */
#define ENGINE_MAX_LOGIT_BIAS 1024 /* logit_bias entries per request */

typedef struct engine engine;
typedef struct engine_request engine_request;

typedef struct {
    int max_seqs;          /* running sequences per step (batch width) */
    int max_batch_tokens;  /* token rows per step (bounds prefill chunk size) */
    int block_size;        /* KV slots per block */
    int kv_blocks;         /* KV blocks in the pool; 0 = as many as kv_cache_mb allows */
    int kv_cache_mb;       /* KV memory budget (all layers, K and V) when kv_blocks == 0; 0: on a
                            * device backend from the device memory plan (engine_device_plan.c),
                            * on the CPU 512 */
    int max_context;       /* longest sequence (prompt + completion), tokens; 0 = the model's
                            * max_position_embeddings, lowered to what the KV pool holds */
    int max_queue;         /* waiting requests before submit answers PEFTD_EBUSY */
    struct astore *store;  /* adapter store behind gen_params.handle (NULL: no handles) */
    size_t host_cache_bytes; /* host tier of adapter blobs */
    int adapter_slots;     /* decoded adapters resident at once (the slot pool) */
    bool prefix_cache;     /* automatic prefix caching: full prompt KV blocks shared by key
                            * (adapter version + token hash chain, engine_prefix.c); outputs
                            * are bit-identical with and without it */
    int prefix_cache_blocks; /* cached blocks at most (referenced or not); 0 = the pool */
    int device_sampling;   /* choose tokens on the backend (kbackend_ops.sample) and download
                            * one id per sequence instead of vocab logits, in steps where every
                            * row needs only its logits (no logit processing, json_object or top
                            * logprobs; otherwise the step samples on the host as before).
                            * -1 (default): where the backend's memory is not host memory
                            * (CUDA); 1: always (the CPU backend too: tests); 0: never.
                            * Tokens are the same either way (the same math, the same draws). */
    char kv_dtype[8];      /* the KV cache's elements: "f32" (default; "" too) or "f16" (half the
                            * memory and attention reads, llama.cpp's default; K/V rounded to
                            * f16 as stored, attention in f32; where the backend supports it:
                            * the CPU) */
} engine_config;

/* Defaults sized for the CPU backend and small models. */
void engine_config_default(engine_config *c);

/* [any] The kdtype an engine_config.kv_dtype names ("" or "f32": KDT_F32, "f16": KDT_F16), or -1. */
int engine_kv_dtype_parse(const char *s);

/* gen_params.pool: the hidden state after the model's final norm (transformers'
 * last_hidden_state) of the last prompt token, or the mean over the prompt tokens (virtual
 * prompt-tuning tokens excluded; summed in prompt order in double, so it does not depend on
 * how the prompt was chunked or batched). */
enum { ENGINE_POOL_NONE = 0, ENGINE_POOL_LAST = 1, ENGINE_POOL_MEAN = 2,
       /* the LAST state through the adapter's SEQ_CLS head (adapter.cls_head): hidden holds
        * softmax(head · h) (n_labels floats, computed in double) and labels their names; an
        * adapter without a head finishes with FINISH_ERROR and ENGINE_ERR_NOT_CLASSIFIER */
       ENGINE_POOL_CLASSIFY = 3 };
/* what completions / scores under a SEQ_CLS adapter finish with (FINISH_ERROR); embeddings
 * (pool LAST / MEAN) of such an adapter are served */
#define ENGINE_ERR_CLASSIFIER_ONLY "the adapter is a sequence classifier (PEFT task_type SEQ_CLS): it serves /v1/classify and /v1/embeddings, not text or token scores"
/* The start of the error of a request whose composition the adapters cannot form
 * (adapter_mix_check: DoRA, biases, "linear" across ranks, ...): a client error, not an engine one. */
#define ENGINE_ERR_MIX "the adapters cannot be composed: "
#define ENGINE_ERR_NOT_CLASSIFIER "the adapter has no sequence-classification head (PEFT task_type SEQ_CLS)"

typedef struct {
    int max_tokens;            /* >= 1; 0 only with prompt_logprobs or pool (prefill only) */
    float temperature;         /* 0 = greedy (argmax) */
    float top_p;               /* (0, 1] */
    int top_k;                 /* 0 = off */
    uint64_t seed;             /* used when has_seed: same seed + same prompt => same output */
    bool has_seed;
    int logprobs;              /* -1 = off; else also return this many top alternatives (0..20) */
    bool ignore_eos;           /* keep generating past EOS */
    /* Logit processing before temperature / top-k / top-p, in this order (vLLM's):
     *   1. min_tokens: until min_tokens tokens were generated, the eos ids (engine_stop_ids)
     *      get -inf and stop strings do not end the sequence;
     *   2. logit_bias: bias_val[i] is added to the logit of bias_id[i];
     *   3. repetition_penalty (HF RepetitionPenaltyLogitsProcessor, vLLM): the logit l of
     *      every token in the prompt or the output becomes l / p when l > 0, else l * p;
     *   4. frequency / presence penalty (OpenAI, vLLM): l -= frequency * c + presence * (c > 0),
     *      c = the token's count in the output (generated tokens only, as vLLM).
     * Log-probabilities stay those of the raw logits (vLLM v1's default "raw_logprobs"). */
    float presence_penalty;    /* [-2, 2], 0 = off */
    float frequency_penalty;   /* [-2, 2], 0 = off */
    float repetition_penalty;  /* > 0, 1 = off */
    int min_tokens;            /* 0 = off; <= max_tokens */
    int n_bias;                /* 0..ENGINE_MAX_LOGIT_BIAS */
    const int32_t *bias_id;    /* [n_bias] token ids < vocab; copied by engine_request_create */
    const float *bias_val;     /* [n_bias] */
    bool json_object;          /* response_format json_object: only tokens that keep the
                                * output a prefix of a JSON object (json_grammar.h) are
                                * sampled, EOS only once it is complete (then only EOS) */
    struct jschema *json_schema; /* response_format json_schema (json_schema.h), or NULL: only
                                * tokens that keep the output a prefix of a text valid
                                * against it, EOS only once it is complete; the caller keeps
                                * its reference, engine_request_create takes its own */
    bool prompt_logprobs;      /* also score the prompt: logprobs (top `logprobs` >= 0
                                * alternatives) of prompt tokens 1.., see engine_delta */
    int score_from;            /* prompt_logprobs: score prompt tokens score_from.. only (0 or 1 =
                                * all from 1); the blocks of tokens before it may come from the
                                * prefix cache (/v1/score shares a prompt across candidates) */
    int pool;                  /* ENGINE_POOL_*, with max_tokens 0 and no prompt_logprobs: the
                                * request ends after its prompt and returns a pooled final-normed
                                * hidden state in engine_delta.hidden (engine_pool.c) */
    int n_stop;
    char *stop[ENGINE_MAX_STOP]; /* NUL-terminated; copied by engine_request_create */
    /* The adapter, one of (or neither = the base model):
     *   handle  — a published version (registry.h); the engine makes it resident through
     *             its tiers (store -> host tier -> slot) before admitting the request;
     *             the caller keeps its reference until the request finished.
     *   adapter — an already loaded adapter the caller keeps alive (offline use, tests). */
    const struct adapter_handle *handle;
    const struct adapter *adapter;
    float adapter_scale;       /* strength of LoRA-family adapters (default 1.0) */
    /* A composition of LoRA adapters (adapter_mix.h) instead of handle / adapter: n_mix
     * (1..ADAPTER_MAX_MIX, 0 = none) entries, each a handle (made resident and pinned like
     * `handle`, the caller keeps its references) or an already loaded adapter (offline use,
     * tests), with its weight; mix_how an adapter_mix_kind. adapter_scale multiplies the
     * composed delta. One the adapters cannot form finishes with FINISH_ERROR and an error
     * starting with ENGINE_ERR_MIX. */
    int n_mix;
    const struct adapter_handle *mix_handle[ADAPTER_MAX_MIX];
    const struct adapter *mix_adapter[ADAPTER_MAX_MIX];
    float mix_weight[ADAPTER_MAX_MIX];
    int mix_how;
    /* Fair scheduling (Virtual Token Counter): requests are grouped by tenant; when the
     * engine is saturated each tenant gets a share of served tokens proportional to its
     * weight. "" = the anonymous / single-user tenant. */
    char tenant[65];
    float tenant_weight;       /* > 0; default 1.0 */
} gen_params;

void gen_params_default(gen_params *p);

typedef enum {
    FINISH_NONE = 0,   /* still running */
    FINISH_LENGTH,     /* max_tokens or the context length reached */
    FINISH_STOP,       /* EOS or a stop string */
    FINISH_CANCELLED,  /* cancelled by the caller or shutdown */
    FINISH_ERROR,      /* engine/backend error: message in error */
} finish_reason;

const char *finish_reason_str(finish_reason f); /* "length", "stop", ... (OpenAI names) */

typedef struct {
    int32_t id;
    float logprob;                         /* log-softmax of the sampled token (temperature 1) */
    int n_top;
    int32_t top_id[ENGINE_MAX_LOGPROBS];
    float top_logprob[ENGINE_MAX_LOGPROBS];
    size_t text_offset;                    /* offset of this token's text in the completion */
} gen_token;

/* New output taken from a request (engine_request_take). @note caller frees with
 * engine_delta_free(). */
typedef struct {
    char *text;            /* new completion text since the last take (NUL-terminated) */
    size_t text_len;
    gen_token *tokens;     /* new tokens since the last take (NULL unless logprobs >= 0) */
    int n_tokens;
    /* prompt_logprobs: scored prompt tokens since the last take, prompt[1..] in order
     * (prompt[0] has none); all of them arrive before the first generated token */
    gen_token *prompt_tokens_lp;
    int n_prompt_lp;
    float *hidden;         /* pool: the pooled hidden state (hidden_size floats), set in the
                            * take that reports the finish (NULL otherwise) */
    int n_hidden;
    char *labels;          /* ENGINE_POOL_CLASSIFY: n_hidden label names, each NUL-terminated,
                            * one after the other (with hidden) */
    bool finished;
    finish_reason finish;
    char error[256];
    int prompt_tokens;     /* usage */
    int completion_tokens; /* usage: tokens generated so far */
    uint64_t queue_ns;     /* time from engine_submit to its first admission; 0 until admitted */
} engine_delta;

void engine_delta_free(engine_delta *d);

/* Creates a request for prompt ids (copied). Returns NULL on allocation failure.
 * @note caller owns one reference: engine_request_unref(). */
engine_request *engine_request_create(const int32_t *prompt, int n_prompt, const gen_params *p);
/* notify(ud) runs on the engine thread whenever new output or the finish is available. */
void engine_request_set_notify(engine_request *r, void (*notify)(void *ud), void *ud);
void engine_request_ref(engine_request *r);
void engine_request_unref(engine_request *r); /* NULL is a no-op */
/* Moves the output produced since the previous take into d. Never blocks on the engine. */
int engine_request_take(engine_request *r, engine_delta *d);
/* Blocks until the request finished and the finish's notify(ud) call (if any) has returned,
 * so ud may be released as soon as this returns (for offline use and tests). */
void engine_request_wait(engine_request *r);

/* @note caller owns *out: engine_free(). model, kb and tok must outlive the engine. */
int engine_create(const engine_config *cfg, model *m, kbackend *kb, const tokenizer *tok,
                  engine **out, char *err, size_t errlen);
int engine_start(engine *e);   /* starts the engine thread */

/* Queues a request. PEFTD_ERANGE: prompt + max_tokens exceed the context length (or the
 * KV pool); PEFTD_EBUSY: the queue is full; PEFTD_ECANCELED: shutting down.
 * On success the engine holds its own reference. */
int engine_submit(engine *e, engine_request *r);
/* Idempotent; the request finishes with FINISH_CANCELLED at the next step. */
void engine_cancel(engine *e, engine_request *r);

/* Automatic prefix caching is on (engine_config.prefix_cache). */
bool engine_prefix_cache_on(const engine *e);

/* Context length (max_position_embeddings) and the model's served id. */
int engine_context_length(const engine *e);

/* The ids that end a generation (see engine_create: generation_config.json's eos set, else
 * config.json's, else the tokenizer's eos): *ids points into the engine; returns the count. */
int engine_stop_ids(const engine *e, const int32_t **ids);

/* The one context rule (the HTTP routes and engine_submit use it): n_virtual (prompt /
 * prefix tuning) + n_prompt + the new tokens must fit the context length. requested >= 1
 * asks for that many new tokens; requested == 0 asks for as many as fit (at least 1).
 * Returns 0 with *out = the new tokens; PEFTD_EINVAL for an empty prompt or requested < 0;
 * PEFTD_ERANGE when they do not fit, with msg (may be NULL) naming the numbers. */
int engine_max_new_tokens(const engine *e, long long n_prompt, int n_virtual, long long requested, int *out,
                          char *msg, size_t msglen);

/* The engine's adapter tiers (NULL without a store); tiers_offer_blob / tiers_forget /
 * tiers_get_stats may be called from any thread. */
struct tiers *engine_tiers(engine *e);

#define ENGINE_BATCH_BUCKETS 8 /* step batch-size histogram: <=1, 2, 4, 8, 16, 32, 64, +Inf rows */

typedef struct {
    int running, waiting;
    int kv_blocks_total, kv_blocks_used;
    uint64_t steps, tokens_generated, prompt_tokens;
    uint64_t preemptions;                           /* sequences preempted (recomputed later) */
    uint64_t rope_recomputes;                       /* longrope: sequences recomputed at the original max */
    uint64_t batch_rows_bucket[ENGINE_BATCH_BUCKETS]; /* cumulative counts per upper bound */
    uint64_t batch_rows_sum;                        /* token rows over all steps */
    /* automatic prefix caching: prompt tokens looked up at admission (queries) and those
     * found cached (hits, whole blocks); blocks evicted; blocks cached now */
    uint64_t prefix_cache_queries, prefix_cache_hits, prefix_cache_evictions;
    int prefix_cache_blocks;
} engine_stats;

/* Per-tenant served tokens (prompt + generated), for metrics and fairness tests. Copies
 * up to max entries; returns how many. */
typedef struct {
    char tenant[65];
    uint64_t prompt_tokens, generated_tokens;
    int running, waiting;
} engine_tenant_stats;
int engine_get_tenant_stats(engine *e, engine_tenant_stats *out, int max);

/* The adapter view of the engine (vLLM's lora_requests_info shape, lora_info.c): the
 * content hashes resident in the slot pool and the adapters that queued requests wait
 * for, i.e. whose current version is not resident. Refreshed by the engine thread after
 * every step and after an adapter fetch ends; at most ENGINE_LORA_LIST_MAX of each are
 * listed (n_*_total counts them all). */
#define ENGINE_LORA_LIST_MAX 256
#define ENGINE_LORA_KEY_MAX 130 /* "owner/name" (64 + 1 + 64) + NUL */
typedef struct {
    int max_lora;                                  /* slot pool capacity */
    int n_resident, n_resident_total;
    char resident[ENGINE_LORA_LIST_MAX][65];       /* sha256 hex of resident versions */
    int n_waiting, n_waiting_total;
    char waiting[ENGINE_LORA_LIST_MAX][ENGINE_LORA_KEY_MAX]; /* registry keys, distinct, in queue order */
    double updated;                                /* unix seconds of the refresh */
} engine_lora_info;
/* Any thread: copies the latest view into *out. PEFTD_ENOTFOUND without a store (no
 * slot pool). */
int engine_get_lora_info(engine *e, engine_lora_info *out);
void engine_get_stats(engine *e, engine_stats *s);

/* Non-blocking: stops accepting work (submit answers PEFTD_ECANCELED); with drain, running
 * and queued requests still finish, otherwise they are cancelled at the next step. The
 * engine thread exits once nothing is left; engine_stop() joins it. */
void engine_shutdown(engine *e, bool drain);

/* Stops accepting work; with drain, running and queued requests finish first, otherwise
 * they are cancelled. Joins the engine thread. Safe to call from any non-engine thread. */
void engine_stop(engine *e, bool drain);
void engine_free(engine *e); /* stops (without drain) if still running; NULL is a no-op */

#endif
