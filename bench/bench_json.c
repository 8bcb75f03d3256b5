/* bench/bench_json.c — what response_format json_schema costs the other sequences of a
 * shared batch (`make bench`). The token mask is computed on the engine thread, per masked
 * sequence and step, before sampling: every sequence of the step waits for it.
 *
 * Each round runs three batches of --seqs sequences, --tokens generated tokens each
 * (greedy, ignore_eos for the plain ones, the same random prompts):
 *   plain   --seqs plain sequences;
 *   string  --seqs - 1 plain + 1 with a schema whose output is strings (most bytes are
 *           allowed inside a string: nearly every token is tried whole — the costly case);
 *   ints    --seqs - 1 plain + 1 with a schema whose output is integers (few bytes allowed).
 * The schemas keep their sequence running for --tokens tokens (minItems past the end).
 * Step time = the batch's wall time / --tokens (admission and prefill included, the same
 * for all three). The plain sequences' tokens must be identical in the three batches (the
 * benchmark fails otherwise: the mask must not touch the other sequences).
 * Output: one JSON object on stdout and in --out, a one-line summary on stderr; medians.
 * Usage: bench_json --model DIR [--seqs 8] [--tokens 64] [--rounds 3] [--threads 0] [--out FILE]
 */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_time.h"
#include "kernels/kernels.h"
#include "lib/log.h"
#include "server/engine/engine.h"
#include "server/engine/json_schema.h"
#include "server/model/model.h"
#include "server/text/tokenizer.h"

#define MAX_ROUNDS 16
#define MAX_SEQS 64
#define PROMPT 8

typedef struct {
    const char *model_dir, *out_path;
    int seqs, tokens, rounds, threads;
} options;

static const char *const SCHEMA_STRING = "{\"type\":\"array\",\"items\":{\"type\":\"string\",\"minLength\":40},"
                                         "\"minItems\":10000}";
static const char *const SCHEMA_INTS = "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":10000}";

static jschema *compile(const char *src) {
    cJSON *doc = cJSON_Parse(src);
    jschema *s = NULL;
    char err[256];
    if (!doc || jschema_compile(doc, &s, err, sizeof err)) {
        fprintf(stderr, "bench_json: schema: %s\n", err);
        exit(1);
    }
    cJSON_Delete(doc);
    return s;
}

/* One batch: seq 0 carries schema (NULL: plain); returns the wall time; plain sequences'
 * tokens into toks[i * tokens ..]. */
static double batch(engine *e, const options *o, int32_t prompts[][PROMPT], jschema *schema, int32_t *toks) {
    engine_request *q[MAX_SEQS];
    double t0 = bench_now_s();
    for (int i = 0; i < o->seqs; i++) {
        gen_params p;
        gen_params_default(&p);
        p.max_tokens = o->tokens;
        p.temperature = 0;
        p.logprobs = 0;
        if (i == 0 && schema) p.json_schema = schema;
        else p.ignore_eos = true;
        q[i] = engine_request_create(prompts[i], PROMPT, &p);
        if (!q[i] || engine_submit(e, q[i]) < 0) {
            fprintf(stderr, "bench_json: submit failed\n");
            exit(1);
        }
    }
    for (int i = 0; i < o->seqs; i++) engine_request_wait(q[i]);
    double t = bench_now_s() - t0;
    for (int i = 0; i < o->seqs; i++) {
        engine_delta d;
        if (engine_request_take(q[i], &d) < 0 || d.finish == FINISH_ERROR || d.n_tokens != o->tokens) {
            fprintf(stderr, "bench_json: sequence %d: %d tokens, finish %d (%s)\n", i, d.n_tokens, d.finish,
                    d.error);
            exit(1);
        }
        for (int k = 0; k < o->tokens; k++) toks[(size_t)i * o->tokens + k] = d.tokens[k].id;
        engine_delta_free(&d);
        engine_request_unref(q[i]);
    }
    return t;
}

static int parse(int argc, char **argv, options *o) {
    *o = (options){.seqs = 8, .tokens = 64, .rounds = 3};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--model")) o->model_dir = v;
        else if (!strcmp(k, "--out")) o->out_path = v;
        else if (!strcmp(k, "--seqs")) o->seqs = atoi(v);
        else if (!strcmp(k, "--tokens")) o->tokens = atoi(v);
        else if (!strcmp(k, "--rounds")) o->rounds = atoi(v);
        else if (!strcmp(k, "--threads")) o->threads = atoi(v);
        else return -1;
    }
    if (!o->model_dir || o->seqs < 2 || o->seqs > MAX_SEQS || o->tokens < 1 || o->rounds < 1 ||
        o->rounds > MAX_ROUNDS)
        return -1;
    return 0;
}

int main(int argc, char **argv) {
    options o;
    if (parse(argc, argv, &o) < 0) {
        fprintf(stderr, "usage: bench_json --model DIR [--seqs 8] [--tokens 64] [--rounds 3] [--threads 0] [--out FILE]\n");
        return 2;
    }
    log_set_level(LOG_WARN);
    char err[512];
    kbackend *kb = kbackend_cpu_create(o.threads);
    model *m = NULL;
    tokenizer *tok = NULL;
    engine *e = NULL;
    if (!kb || model_load(o.model_dir, kb, &m, err, sizeof err) < 0 || tokenizer_load(o.model_dir, &tok, err, sizeof err) < 0) {
        fprintf(stderr, "bench_json: %s\n", err);
        return 1;
    }
    engine_config c;
    engine_config_default(&c);
    c.max_seqs = o.seqs;
    c.kv_cache_mb = 256;
    c.max_context = PROMPT + o.tokens + 8;
    if (engine_create(&c, m, kb, tok, &e, err, sizeof err) < 0 || engine_start(e) < 0) {
        fprintf(stderr, "bench_json: engine: %s\n", err);
        return 1;
    }
    int32_t prompts[MAX_SEQS][PROMPT];
    unsigned x = 12345u;
    for (int i = 0; i < o.seqs; i++)
        for (int k = 0; k < PROMPT; k++) {
            x = x * 1103515245u + 12345u;
            prompts[i][k] = 3 + (int32_t)((x >> 8) % (unsigned)(tokenizer_vocab_size(tok) - 3));
        }
    jschema *s_str = compile(SCHEMA_STRING), *s_int = compile(SCHEMA_INTS);
    size_t n = (size_t)o.seqs * o.tokens;
    int32_t *ref = malloc(n * sizeof(int32_t)), *got = malloc(n * sizeof(int32_t));
    double t_plain[MAX_ROUNDS], t_str[MAX_ROUNDS], t_int[MAX_ROUNDS];
    bool identical = true;
    batch(e, &o, prompts, NULL, ref); /* warm-up (and the reference tokens) */
    for (int r = 0; r < o.rounds; r++) {
        t_plain[r] = batch(e, &o, prompts, NULL, got) / o.tokens;
        identical = identical && !memcmp(ref, got, n * sizeof(int32_t));
        t_str[r] = batch(e, &o, prompts, s_str, got) / o.tokens;
        identical = identical && !memcmp(ref + o.tokens, got + o.tokens, (n - (size_t)o.tokens) * sizeof(int32_t));
        t_int[r] = batch(e, &o, prompts, s_int, got) / o.tokens;
        identical = identical && !memcmp(ref + o.tokens, got + o.tokens, (n - (size_t)o.tokens) * sizeof(int32_t));
    }
    qsort(t_plain, (size_t)o.rounds, sizeof(double), bench_cmp_double);
    qsort(t_str, (size_t)o.rounds, sizeof(double), bench_cmp_double);
    qsort(t_int, (size_t)o.rounds, sizeof(double), bench_cmp_double);
    int mid = o.rounds / 2;
    char json[1024];
    snprintf(json, sizeof json,
             "{\"bench\": \"json_schema_step\", \"model\": \"%s\", \"vocab\": %d, \"tokenizer_vocab\": %d, "
             "\"seqs\": %d, \"tokens\": %d, \"rounds\": %d, \"step_plain_ms\": %.3f, \"step_with_string_schema_ms\": "
             "%.3f, \"step_with_int_schema_ms\": %.3f, \"ratio_string\": %.3f, \"ratio_int\": %.3f, "
             "\"others_identical\": %s}\n",
             o.model_dir, m->cfg.vocab_size, tokenizer_vocab_size(tok), o.seqs, o.tokens, o.rounds, t_plain[mid] * 1e3,
             t_str[mid] * 1e3, t_int[mid] * 1e3, t_str[mid] / t_plain[mid], t_int[mid] / t_plain[mid],
             identical ? "true" : "false");
    fputs(json, stdout);
    if (o.out_path) {
        FILE *f = fopen(o.out_path, "w");
        if (f) {
            fputs(json, f);
            fclose(f);
        }
    }
    fprintf(stderr, "bench: json_schema, %d seqs (vocab %d): step %.2f ms plain, %.2f ms with a string-schema sequence "
                    "(%.2fx), %.2f ms with an integer-schema one (%.2fx); other sequences %s\n",
            o.seqs, m->cfg.vocab_size, t_plain[mid] * 1e3, t_str[mid] * 1e3, t_str[mid] / t_plain[mid],
            t_int[mid] * 1e3, t_int[mid] / t_plain[mid], identical ? "identical" : "DIFFER");
    engine_free(e);
    jschema_unref(s_str);
    jschema_unref(s_int);
    free(ref);
    free(got);
    tokenizer_free(tok);
    model_free(m);
    kbackend_destroy(kb);
    return identical ? 0 : 1;
}
