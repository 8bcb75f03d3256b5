/* server/api/api_completions.h — the pieces of POST /v1/completions shared by its three
 * files: the validated request (api_completions_parse.c), the in-flight job and its
 * choices (api_completions.c), and the JSON / SSE formatting (api_completions_format.c).
 * Internal to server/api/.
 */
#ifndef PEFTD_API_COMPLETIONS_H
#define PEFTD_API_COMPLETIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/api/api_internal.h"

#define API_MAX_N 16        /* choices per prompt (OpenAI's n) */
#define API_MAX_PROMPTS 16  /* prompts per request when prompt is an array of strings */

typedef struct {
    int32_t *ids;           /* what the engine gets (BOS included for text prompts) */
    size_t n_ids;
    char *text;             /* the prompt as text, for echo */
    size_t text_len;
} api_prompt;

/* What a job answers: a completion (chat: .chat), or one of the prefill-only routes whose
 * sequences end after their prompt (api_score.c, api_embeddings.c, api_classify.c). */
typedef enum { API_KIND_COMPLETION = 0, API_KIND_SCORE, API_KIND_EMBEDDINGS, API_KIND_CLASSIFY } api_kind;

/* A validated request. @note owns everything it points to: api_request_free(). */
typedef struct {
    api_kind kind;
    int score_prompt;       /* score: tokens of the shared prompt (candidate i is prompts[i]
                             * = prompt + candidate; gen.score_from = score_prompt) */
    bool base64;            /* embeddings: encoding_format "base64" (little-endian f32) */
    bool normalize;         /* embeddings: divide by the L2 norm */
    api_prompt prompts[API_MAX_PROMPTS];
    int n_prompts;
    int n;                  /* choices per prompt */
    int best_of;            /* candidates per prompt (>= n): the n best are returned */
    bool score_only;        /* echo + max_tokens 0: gen.max_tokens 0, the prompt is scored */
    bool hide_logprobs;     /* gen.logprobs was raised to 0 for best_of alone: not shown */
    gen_params gen;         /* gen.stop[] point into stop_store, gen.bias_* into bias_* */
    int32_t *bias_id;
    float *bias_val;
    char *stop_store[ENGINE_MAX_STOP];
    bool stream, echo, include_usage;
    bool chat;              /* POST /v1/chat/completions (api_chat.c): chat response shapes */
    bool chat_logprobs;     /* chat: logprobs=true (gen.logprobs holds top_logprobs) */
    adapter_handle *adapter; /* the adapter chosen by `model` / `adapter`, one reference held */
    adapter_handle *mix[ADAPTER_MAX_MIX]; /* `adapters` (a composition, gen.n_mix of them), one
                                           * reference held on each */
    adapter_registry *reg;  /* where that reference goes back */
    struct tenants *tenants; /* set when gen.tenant's quota admitted it: released by api_request_free */
    tenants_ticket ticket;  /* what that admission holds (sequences, reserved tokens) */
    char model_id[160];     /* the id echoed in responses */
} api_request;

void api_request_free(api_request *r);

/* A validation failure: status, OpenAI error code (NULL for the default), message. */
typedef struct {
    unsigned status;
    const char *code;
    char message[512];
} api_err;

/* A 400 validation failure with an OpenAI error code and message; returns PEFTD_EINVAL. */
int api_fail(api_err *err, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* An integer field root[name]: absent keeps *out; not an integer (no float->int cast of
 * a huge or fractional number happens) or out of [lo, hi] is a 400 naming the field. */
int api_get_int(const struct cJSON *root, const char *name, long long lo, long long hi, long long *out,
                api_err *err);
/* root[name], or NULL when absent or JSON null (OpenAI treats null as "not given"). */
const struct cJSON *api_field(const struct cJSON *root, const char *name);

/* The steps both routes take (api_completions_parse.c):
 * begin: clears r (engine defaults, who's tenant and weight) and err, then parses body
 *   into *root: valid UTF-8 JSON, one object, no duplicate key, nothing after it.
 * common: reads the options both routes share from root into r (sampling, seed, stop, n,
 *   stream, stream_options, user, ignore_eos, logprobs in the route's shape, echo on
 *   completions only) and the model / adapter (one registry reference); *max_tokens gets
 *   the new tokens asked for (chat: max_completion_tokens or max_tokens, 0 = as many as fit).
 * end: maps PEFTD_ENOMEM to a 500, deletes root, frees r on failure; returns rc. */
int api_parse_begin(const tenants_principal *who, const char *body, size_t len, api_request *r,
                    struct cJSON **root, api_err *err);
int api_parse_common(const api_server *s, const tenants_principal *who, const struct cJSON *root, bool chat,
                     api_request *r, long long *max_tokens, api_err *err);
int api_parse_end(int rc, struct cJSON *root, api_request *r, api_err *err);

/* The model / adapter of root ("model", the "adapter" extension): the rules and errors of
 * both completion routes (a tenant's own adapter, then the public one; another tenant's
 * answers 404 like a missing one); takes one registry reference into r->adapter. */
int api_parse_model(const api_server *s, const tenants_principal *who, const struct cJSON *root, api_request *r,
                    api_err *err);

/* api_fields.c: every top-level key of root is one the route reads, else a 400 naming it
 * (unsupported_parameter for OpenAI fields peftd does not implement, unknown_parameter
 * for the rest); response_format other than {"type":"text"} is refused. */
int api_check_fields(const struct cJSON *root, bool chat, api_err *err);

/* Parses and validates a JSON body, tokenizes the prompts. who (NULL = anonymous) scopes
 * the adapter lookup (its own, then public: http_auth.h) and fills gen.tenant /
 * gen.tenant_weight. On failure fills err and returns a negative status. */
int api_request_parse(const api_server *s, const tenants_principal *who, const char *body, size_t len,
                      api_request *out, api_err *err);

/* The context rule (engine_max_new_tokens) for every prompt of r: sets gen.max_tokens to
 * max_tokens, or to as many as fit when it is 0; a prompt that does not fit is the table's
 * PEFTD_ERANGE answer with a message naming the numbers. */
int api_parse_fit(const api_server *s, api_request *r, long long max_tokens, api_err *err);

/* One engine request's state. The pend_* fields and the finish fields are written by the
 * engine thread's notify under the job's mutex; the rest belongs to the HTTP side. */
typedef struct api_choice {
    struct api_job *job;
    engine_request *r;
    int index;              /* OpenAI choice index: prompt * n + i */
    int prompt;             /* index into req.prompts */
    atomic_bool submitted;  /* engine_submit accepted it: cancel it if the client leaves */

    http_buf pend_text;
    gen_token *pend_tok;
    int n_pend_tok, cap_pend_tok;
    gen_token *pend_ptok;   /* echo + logprobs: scored prompt tokens 1.. not yet collected */
    int n_pend_ptok, cap_pend_ptok;
    double cum_logprob;     /* best_of: sum of the generated tokens' logprobs (under mu) */
    float *hidden;          /* pool (embeddings, classify): the pooled hidden state or the label
                             * probabilities (under mu) */
    int n_hidden;
    char *labels;           /* classify: n_hidden label names, NUL-separated (engine_delta.labels) */
    bool finished;
    finish_reason finish;
    char error[256];
    int completion_tokens;
    uint64_t t_last_ns;     /* last token delta (http_metrics_on_tokens); 0 = none yet */
    bool queue_seen;        /* its queue time went to peftd_request_queue_seconds */

    /* HTTP side */
    http_buf text;          /* non-streaming: the whole completion */
    gen_token *tok;         /* non-streaming: all tokens (logprobs) */
    int n_tok, cap_tok;
    gen_token *ptok;        /* the scored prompt tokens collected so far */
    int n_ptok, cap_ptok;
    int32_t last_id;        /* previous token, the context for a token's text */
    bool echo_sent, finish_sent;
    bool role_sent;         /* chat streaming: the delta.role chunk went out */
    bool has_lp_base;       /* streaming: the echoed prompt's logprobs went out ... */
    size_t lp_base;         /* ... and the generated tokens' text_offset continue from here */
} api_choice;

typedef struct api_job {
    atomic_int refs;        /* connection + one per running engine request + stream reader */
    pthread_mutex_t mu;     /* guards suspended, closed and the choices' pend/finish fields */
    api_server *srv;
    struct MHD_Connection *conn;  /* valid until closed */
    api_request req;
    api_choice *choices;
    int n_choices;
    bool suspended;         /* the connection is suspended waiting for news */
    bool closed;            /* the connection is gone: never resume it */
    bool in_list;           /* linked in srv->jobs */
    bool deferred;          /* score: choices 1.. are submitted when choice 0 finished */
    struct api_job *prev, *next;

    char id[48];            /* "cmpl-..." */
    time_t created;
    uint64_t t0_ns;         /* request arrival (monotonic): TTFT starts here */
    uint64_t bytes_sent;    /* streaming: bytes handed to MHD, for the access log */
    http_buf out;           /* streaming: formatted SSE not yet handed to MHD */
    size_t out_pos;
    bool done;              /* streaming: [DONE] formatted */
} api_job;

/* ---- the prefill-only routes (same job machinery, tenants, quotas and metrics) ---- */
/* Same contract as api_request_parse. */
int api_score_parse(const api_server *s, const tenants_principal *who, const char *body, size_t len,
                    api_request *out, api_err *err);
int api_embeddings_parse(const api_server *s, const tenants_principal *who, const char *body, size_t len,
                         api_request *out, api_err *err);
int api_classify_parse(const api_server *s, const tenants_principal *who, const char *body, size_t len,
                       api_request *out, api_err *err);
/* Response bodies of finished jobs; NULL when out of memory. */
struct cJSON *api_score_format(api_job *job);
struct cJSON *api_embeddings_format(api_job *job);
struct cJSON *api_classify_format(api_job *job);
/* The prompt(s) of root[field] (a string, an array of strings, an array of token ids or an
 * array of token-id arrays; text gets the tokenizer's BOS) into r->prompts / r->n_prompts. */
int api_parse_prompts(const api_server *s, const struct cJSON *root, const char *field, api_request *r, api_err *err);
/* api_fields.c: every top-level key of root is in keys (NULL-terminated), else a 400 naming
 * it and the route. */
int api_check_keys(const struct cJSON *root, const char *const *keys, const char *route, api_err *err);
/* The prefill-only routes' fit: every prompt fits the context (nothing is generated); too
 * long is 413 context_length_exceeded. Sets gen.max_tokens 0. */
int api_parse_fit_prefill(const api_server *s, api_request *r, api_err *err);

/* ---- api_completions_format.c ---- */
#define API_TOKEN_MAX_BYTES 256 /* a token's bytes: longer pieces are cut in "bytes" */
/* A token's text for logprobs (valid UTF-8): what it adds after prev (-1: none), or, for a
 * byte token that is only part of a character, OpenAI's "bytes:\\xe4" spelling. With bytes,
 * also its raw bytes (the byte itself for a byte token) in bytes[0..*n_bytes), at most cap.
 * @note caller frees the result; NULL when out of memory. */
char *api_token_text(const tokenizer *tok, int32_t prev, int32_t id, unsigned char *bytes, size_t cap,
                     size_t *n_bytes);
/* The OpenAI completions logprobs object for toks (text_offset shifted by offset_base);
 * updates *last_id. */
struct cJSON *api_format_logprobs(const tokenizer *tok, const gen_token *toks, int n,
                                  size_t offset_base, int32_t *last_id);
/* The completions logprobs object of an echoed prompt (api_format_logprobs's shape): the
 * first token with null logprob and null top_logprobs, then pt[i] for token i + 1;
 * text_offset is the running length of the token strings (as vLLM). */
struct cJSON *api_format_prompt_logprobs(const tokenizer *tok, const api_prompt *p, const gen_token *pt, int n_pt,
                                         size_t *end);
/* *end (may be NULL): where the next token's text_offset starts (the generated tokens'
 * offsets continue from there, as vLLM's do). */
/* Appends toks to a logprobs object made by one of the two functions above. */
int api_format_logprobs_append(struct cJSON *o, const tokenizer *tok, const gen_token *toks, int n,
                               size_t offset_base, int32_t *last_id);
/* Streaming: the chunk of an echoed prompt with its logprobs object lp (taken). */
int api_format_prompt_chunk(api_job *job, api_choice *ch, const api_prompt *p, struct cJSON *lp, http_buf *out);
/* Non-streaming response body for a finished job: with best_of > n, per prompt the n
 * candidates with the highest cumulative logprob, renumbered p * n + rank. */
struct cJSON *api_format_response(api_job *job);
/* One SSE chunk for choice ch: text, its tokens, finish_reason when finish is set.
 * Appends "data: {...}\n\n" to out. */
int api_format_chunk(api_job *job, api_choice *ch, const char *text, size_t text_len,
                     const gen_token *toks, int n_toks, size_t offset_base, bool finish,
                     http_buf *out);
/* {"prompt_tokens","completion_tokens","total_tokens"} over all prompts and choices (both
 * routes); NULL when out of memory. */
struct cJSON *api_format_usage(const api_job *job);
/* The closing chunks of both routes: usage (when asked) and "data: [DONE]". */
int api_format_stream_end(api_job *job, http_buf *out);
/* An error as an SSE event ("data: {"error":{...}}"), for failures after the 200. */
int api_format_stream_error(const char *message, http_buf *out);

/* ---- api_chat.c: POST /v1/chat/completions on this machinery ---- */
/* Validates the messages, reads the shared options (api_parse_common), applies the model's
 * chat template and tokenizes it into the one prompt; sets req.chat. Same contract as
 * api_request_parse. */
int api_chat_parse(const api_server *s, const tenants_principal *who, const char *body, size_t len,
                   api_request *out, api_err *err);
void api_chat_job_init(api_job *job); /* "chatcmpl-" ids */
/* /tokenize's conversation (api_tokenize.c): root's "messages" (and add_generation_prompt)
 * through the chat template as api_chat_parse renders them, tokenized without an added BOS
 * unless add_special. Fills p (text and ids); 400 in err as api_chat_parse's. */
int api_chat_tokenize(const api_server *s, const struct cJSON *root, bool add_special, api_prompt *p, api_err *err);
/* The chat shapes of api_format_response / _chunk (they call these when job->req.chat is
 * set) and api_format_stream_end's chunk head {"id","object","created","model","system_fingerprint"}. */
struct cJSON *api_chat_format_head(const api_job *job, const char *object);
struct cJSON *api_chat_format_response(api_job *job);
int api_chat_format_chunk(api_job *job, api_choice *ch, const char *text, size_t text_len,
                          const gen_token *toks, int n_toks, bool finish, http_buf *out);

#endif
