/* bench/bench_prefix.c — automatic prefix caching: time to first token of a request that
 * shares a long prefix with an earlier one (`make bench`).
 *
 * Each round draws a fresh random prefix (--prefix tokens, so no round hits an earlier
 * round's blocks) and two suffixes (--suffix tokens). On an engine with the prefix cache:
 *   first   prefix + suffix A, alone: its TTFT computes every prompt row;
 *   second  prefix + suffix B, after the first finished: its full prefix blocks come from
 *           the cache, only the rest is computed.
 * The same second request then runs on an engine without the cache (the reference): its
 * tokens and logprobs must be bit-identical to the cached run's (the benchmark fails
 * otherwise). TTFT = submit to the first generated token (max_tokens 1: the request's
 * finish), through the real engine (admission, steps, sampling, publish).
 * Output: one JSON object on stdout and in --out, a one-line summary on stderr; the ratio
 * reported is the median over rounds of first / second.
 * Usage: bench_prefix --model DIR [--prefix 400] [--suffix 16] [--rounds 3] [--threads 0]
 *                     [--target 5] [--out FILE]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_time.h"
#include "kernels/kernels.h"
#include "lib/log.h"
#include "server/engine/engine.h"
#include "server/model/model.h"
#include "server/text/tokenizer.h"

#define MAX_ROUNDS 16
#define MAX_TOP 5

typedef struct {
    const char *model_dir, *out_path;
    int prefix, suffix, rounds, threads;
    double target;
} options;

typedef struct {
    int32_t id;
    float lp;
    float top[MAX_TOP];
} first_token;

static engine *open_engine(model *m, kbackend *kb, const tokenizer *tok, bool cache, int ctx) {
    engine_config c;
    engine_config_default(&c);
    c.max_seqs = 4;
    c.kv_cache_mb = 256;
    c.max_context = ctx;
    c.prefix_cache = cache;
    engine *e = NULL;
    char err[512];
    if (engine_create(&c, m, kb, tok, &e, err, sizeof err) < 0 || engine_start(e) < 0) {
        fprintf(stderr, "bench_prefix: engine: %s\n", err);
        exit(1);
    }
    return e;
}

/* One request of max_tokens 1; returns its TTFT in seconds, its token in *out. */
static double ttft(engine *e, const int32_t *ids, int n, first_token *out) {
    gen_params p;
    gen_params_default(&p);
    p.max_tokens = 1;
    p.temperature = 0;
    p.logprobs = MAX_TOP;
    p.ignore_eos = true;
    engine_request *q = engine_request_create(ids, n, &p);
    double t0 = bench_now_s();
    if (!q || engine_submit(e, q) < 0) {
        fprintf(stderr, "bench_prefix: submit failed\n");
        exit(1);
    }
    engine_request_wait(q);
    double t = bench_now_s() - t0;
    engine_delta d;
    if (engine_request_take(q, &d) < 0 || d.n_tokens != 1 || d.finish == FINISH_ERROR) {
        fprintf(stderr, "bench_prefix: generation failed: %s\n", d.error);
        exit(1);
    }
    memset(out, 0, sizeof *out);
    out->id = d.tokens[0].id;
    out->lp = d.tokens[0].logprob;
    for (int k = 0; k < d.tokens[0].n_top && k < MAX_TOP; k++) out->top[k] = d.tokens[0].top_logprob[k];
    engine_delta_free(&d);
    engine_request_unref(q);
    return t;
}

static void random_ids(int32_t *ids, int n, unsigned seed, int vocab) {
    unsigned x = seed * 2654435761u + 12345u;
    for (int i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        ids[i] = 3 + (int32_t)((x >> 8) % (unsigned)(vocab - 3));
    }
}

/* Round r's two prompts: the same random prefix, different random suffixes. */
static void make_pair(int32_t *a, int32_t *b, const options *o, int r, int vocab) {
    random_ids(a, o->prefix, 1000u + (unsigned)r, vocab);
    memcpy(b, a, (size_t)o->prefix * sizeof(int32_t));
    random_ids(a + o->prefix, o->suffix, 2000u + (unsigned)r, vocab);
    random_ids(b + o->prefix, o->suffix, 3000u + (unsigned)r, vocab);
}

static int parse(int argc, char **argv, options *o) {
    *o = (options){.prefix = 400, .suffix = 16, .rounds = 3, .target = 5.0};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--model")) o->model_dir = v;
        else if (!strcmp(k, "--out")) o->out_path = v;
        else if (!strcmp(k, "--prefix")) o->prefix = atoi(v);
        else if (!strcmp(k, "--suffix")) o->suffix = atoi(v);
        else if (!strcmp(k, "--rounds")) o->rounds = atoi(v);
        else if (!strcmp(k, "--threads")) o->threads = atoi(v);
        else if (!strcmp(k, "--target")) o->target = atof(v);
        else return -1;
    }
    if (!o->model_dir || o->prefix < 1 || o->suffix < 1 || o->rounds < 1 || o->rounds > MAX_ROUNDS) return -1;
    return 0;
}

int main(int argc, char **argv) {
    options o;
    if (parse(argc, argv, &o) < 0) {
        fprintf(stderr, "usage: bench_prefix --model DIR [--prefix 400] [--suffix 16] [--rounds 3] [--threads 0] "
                        "[--target 5] [--out FILE]\n");
        return 2;
    }
    log_set_level(LOG_WARN);
    char err[512];
    kbackend *kb = kbackend_cpu_create(o.threads);
    model *m = NULL;
    tokenizer *tok = NULL;
    if (!kb || model_load(o.model_dir, kb, &m, err, sizeof err) < 0 || tokenizer_load(o.model_dir, &tok, err, sizeof err) < 0) {
        fprintf(stderr, "bench_prefix: %s\n", err);
        return 1;
    }
    int n = o.prefix + o.suffix, ctx = n + 16;
    int32_t *a = malloc((size_t)n * sizeof(int32_t)), *b = malloc((size_t)n * sizeof(int32_t));
    double t_first[MAX_ROUNDS], t_second[MAX_ROUNDS], t_nocache[MAX_ROUNDS], ratio[MAX_ROUNDS];
    first_token fb[MAX_ROUNDS], fref;
    bool identical = true;
    /* one engine at a time owns the backend: the cached runs, then the reference */
    engine *on = open_engine(m, kb, tok, true, ctx);
    for (int r = 0; r < o.rounds; r++) {
        make_pair(a, b, &o, r, m->cfg.vocab_size);
        first_token fa;
        t_first[r] = ttft(on, a, n, &fa);
        t_second[r] = ttft(on, b, n, &fb[r]);
        ratio[r] = t_first[r] / t_second[r];
    }
    engine_stats st;
    engine_get_stats(on, &st);
    engine_free(on);
    engine *off = open_engine(m, kb, tok, false, ctx);
    for (int r = 0; r < o.rounds; r++) {
        make_pair(a, b, &o, r, m->cfg.vocab_size);
        t_nocache[r] = ttft(off, b, n, &fref);
        identical = identical && !memcmp(&fb[r], &fref, sizeof fref);
    }
    engine_free(off);
    qsort(ratio, (size_t)o.rounds, sizeof(double), bench_cmp_double);
    qsort(t_first, (size_t)o.rounds, sizeof(double), bench_cmp_double);
    qsort(t_second, (size_t)o.rounds, sizeof(double), bench_cmp_double);
    qsort(t_nocache, (size_t)o.rounds, sizeof(double), bench_cmp_double);
    int mid = o.rounds / 2;
    char json[1024];
    snprintf(json, sizeof json,
             "{\"bench\": \"prefix_cache_ttft\", \"model\": \"%s\", \"prefix_tokens\": %d, \"suffix_tokens\": %d, "
             "\"rounds\": %d, \"ttft_first_ms\": %.3f, \"ttft_second_cached_ms\": %.3f, "
             "\"ttft_second_uncached_ms\": %.3f, \"ratio_median\": %.2f, \"ratio_min\": %.2f, \"target\": %.1f, "
             "\"hits_tokens\": %llu, \"queries_tokens\": %llu, \"identical_tokens_and_logprobs\": %s}\n",
             o.model_dir, o.prefix, o.suffix, o.rounds, t_first[mid] * 1e3, t_second[mid] * 1e3, t_nocache[mid] * 1e3,
             ratio[mid], ratio[0], o.target, (unsigned long long)st.prefix_cache_hits,
             (unsigned long long)st.prefix_cache_queries, identical ? "true" : "false");
    fputs(json, stdout);
    if (o.out_path) {
        FILE *f = fopen(o.out_path, "w");
        if (f) {
            fputs(json, f);
            fclose(f);
        }
    }
    fprintf(stderr, "bench: prefix cache TTFT, %d-token shared prefix + %d: first %.1f ms, second %.1f ms (uncached %.1f ms), "
                    "ratio %.1fx (target >= %.0fx)%s, outputs %s\n",
            o.prefix, o.suffix, t_first[mid] * 1e3, t_second[mid] * 1e3, t_nocache[mid] * 1e3, ratio[mid], o.target,
            ratio[mid] >= o.target ? " (ok)" : " (MISS)", identical ? "identical" : "DIFFER");
    free(a);
    free(b);
    tokenizer_free(tok);
    model_free(m);
    kbackend_destroy(kb);
    return identical ? 0 : 1;
}
