/* bench/bench_adapters.c — multi-adapter serving benchmark (`make bench`).
 *
 * Loads a base model and sets of LoRA adapters in process and drives the real engine
 * (server/engine: continuous batching, adapter segments, SGMV) directly, without HTTP.
 * For each adapter shape it measures decode throughput of `seqs` concurrent greedy
 * requests (ignore_eos, short prompts, `tokens` generated tokens each) in four scenarios:
 *   a  base model only
 *   b  one LoRA for every sequence               (one SGMV segment)
 *   c  `seqs` distinct LoRAs, one per sequence    (seqs SGMV segments in one batch)
 *   d  the same distinct LoRAs served one adapter at a time, as llama.cpp's server does
 *      (it applies one adapter set to a whole batch): here every adapter has one
 *      request, so each runs alone at batch size 1; `tokens_d` tokens per adapter.
 *
 * What a rate includes: generated tokens / wall time of the decode steps only, i.e.
 * from the first token of the step that finished the prefill to the first token of
 * the last step (full engine steps in between: batch assembly, the per-step adapter
 * plan, the forward pass, sampling, detokenizing, publishing). Model/adapter loading,
 * engine creation and the prefill step are excluded. In (a)-(c) all requests are
 * submitted before the engine thread starts, so the first step prefills all of them
 * together and every later step is one decode row per sequence. In (d) only the decode
 * windows of the sequential requests are summed (switching adapters costs nothing
 * here, and its requests are shorter — less KV to attend to — both of which flatter d,
 * so c/d is conservative).
 *
 * Where the time goes (bench_prof.h): the backend is a table of functions, so the benchmark wraps
 * every op of the backend (cpu and cuda alike: the wrappers count SGMV calls, the check that
 * adapters are applied at all) and, on a synchronous backend (CPU: two clock_gettime per
 * op, ~500 ops per step: < 0.1% of a step), times each op and reports, per scenario,
 * the milliseconds per decode step in layer matmuls, lm_head, SGMV shrink, SGMV expand,
 * attention, other ops and outside any op (plan building, sampling, engine). On CUDA the
 * ops only enqueue work: the op categories are 0 and the whole step is "outside_ops".
 *
 * Noise: the machine is shared; every scenario is run `rounds` times, interleaved
 * (a b c d per shape, then the next round), and each scenario's best round counts (the
 * least disturbed one); per-round figures and ratios are in the JSON too, with the
 * share of the machine's CPU that other processes used meanwhile (/proc/stat minus
 * our own rusage). Ratios are from the same invocation.
 *
 * Output: one JSON object on stdout and in --out, then a one-line summary on stderr.
 * Usage: bench_adapters --model DIR --shape NAME:ADAPTERS_DIR[:CA_TARGET] ... [options]
 */
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "adapter_store/adapter.h"
#include "bench/bench_model_bytes.h"
#include "bench/bench_prof.h"
#include "bench/bench_time.h"
#include "kernels/kernels.h"
#include "kernels/kernels_cuda.h"
#include "lib/log.h"
#include "server/engine/engine.h"
#include "server/model/model.h"
#include "server/model/model_adapter_base.h"
#include "server/model/model_quant.h"
#include "server/runtime.h"
#include "server/text/tokenizer.h"

#define MAX_SHAPES 4
#define MAX_ROUNDS 16
#define MAX_ADAPTERS 256

/* ---------- contention: CPU time of other processes ---------- */

/* Machine-wide busy CPU seconds (/proc/stat, all cores) and this process's own CPU
 * seconds; their difference over a window is what other processes ran meanwhile. */
typedef struct {
    double prof[P_COUNT]; /* op seconds */
    uint64_t shrink_calls;
    double busy_s, own_s;
} snap;

static void snap_take(snap *sn) {
    memcpy(sn->prof, g_prof, sizeof g_prof);
    sn->shrink_calls = g_shrink_calls;
    sn->busy_s = sn->own_s = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (f) {
        unsigned long long v[8] = {0};
        if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7]) == 8)
            sn->busy_s = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
        fclose(f);
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        sn->own_s = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

/* ---------- one measured run ---------- */

typedef struct {
    double *t; /* notify times: t[k] = when token k (0-based) was published */
    int n, cap;
    int *first_seen, first_needed;
    snap *open; /* taken when the decode window opened */
} req_track;

static void on_notify(void *ud) {
    req_track *rt = ud;
    double t = bench_now_s();
    if (rt->n < rt->cap) rt->t[rt->n] = t;
    rt->n++;
    /* The prefill step's forward pass is over once every request has its first token:
     * op times from here on belong to decode steps. */
    if (rt->n == 1 && ++*rt->first_seen == rt->first_needed) snap_take(rt->open);
}

typedef struct {
    double tok_s;          /* decode tokens / decode wall time */
    double step_ms_median; /* median decode step (d: of the per-request means) */
    double step_ms_p10;    /* 10th percentile decode step (a-c): the least disturbed steps */
    double dec_tokens, dec_s, steps;
    double prof_s[P_COUNT]; /* op seconds inside the decode windows */
    double others_s;       /* CPU seconds other processes used during the windows */
    double others_cpu;     /* others_s / (window wall time x online cores) */
    double prof_ms[P_COUNT + 1]; /* per decode step; [P_COUNT] = outside ops */
} result;

typedef struct {
    model *m;
    kbackend *kb;
    tokenizer *tok;
    int seqs, prompt, tokens, tokens_d;
    const char *weights; /* --weights as given ("stored" when absent) */
    size_t step_bytes;   /* weights a decode step reads, as loaded (bench_model_bytes.h) */
} bench;

static int make_engine(const bench *B, int max_seqs, int tokens, engine **e) {
    engine_config c;
    engine_config_default(&c);
    c.max_seqs = max_seqs;
    /* the whole prefill of all sequences in one step */
    c.max_batch_tokens = max_seqs * B->prompt > c.max_batch_tokens ? max_seqs * B->prompt : c.max_batch_tokens;
    /* KV for every sequence (+1 block of slack each) and a context of just that, sized here
     * rather than by kv_cache_mb to allocate only what is used (a Llama-3.x context of
     * 131072 positions would need GiBs) */
    int per_seq = (B->prompt + tokens + c.block_size - 1) / c.block_size + 1;
    c.max_context = per_seq * c.block_size;
    if (c.max_context > B->m->cfg.max_position_embeddings) c.max_context = B->m->cfg.max_position_embeddings;
    c.kv_blocks = max_seqs * per_seq;
    char err[512];
    int st = engine_create(&c, B->m, B->kb, B->tok, e, err, sizeof err);
    if (st < 0) fprintf(stderr, "bench_adapters: engine_create: %s\n", err);
    return st;
}

static void make_prompt(const bench *B, int i, int32_t *ids) {
    int32_t bos = B->m->cfg.bos_token_id >= 0 ? B->m->cfg.bos_token_id : 1;
    ids[0] = bos;
    /* distinct short prompts from the first 512 ids (ids every tokenizer here can print) */
    for (int j = 1; j < B->prompt; j++) ids[j] = 3 + (i * 37 + j * 11) % 500;
}

static int check_done(engine_request *r, int want, const char *what) {
    engine_delta d;
    if (engine_request_take(r, &d) < 0) return -1;
    int ok = d.finished && d.finish == FINISH_LENGTH && d.completion_tokens == want;
    if (!ok)
        fprintf(stderr, "bench_adapters: %s: request ended with %s after %d tokens (want %d) %s\n", what,
                d.finished ? finish_reason_str(d.finish) : "unfinished", d.completion_tokens, want, d.error);
    engine_delta_free(&d);
    return ok ? 0 : -1;
}

/* S requests of N tokens on a fresh engine, request i with adapter ads[i] (ads NULL =
 * base model), all submitted before the engine thread starts so that the first step
 * prefills all of them and every later step decodes one row per sequence. Adds the
 * decode window (tokens, seconds, steps, op seconds) to res and, when step_s is not
 * NULL, stores the N-1 decode step durations there. */
static int run_once(const bench *B, adapter *const *ads, int S, int N, int prompt_base, const char *what,
                    result *res, double *step_s) {
    int st = -1, first_seen = 0;
    engine *e = NULL;
    engine_request **rq = calloc((size_t)S, sizeof *rq);
    req_track *tr = calloc((size_t)S, sizeof *tr);
    int32_t *ids = malloc((size_t)B->prompt * sizeof(int32_t));
    snap open = {0}, end;
    if (!rq || !tr || !ids) goto out;
    if (make_engine(B, S, N, &e) < 0) goto out;
    for (int i = 0; i < S; i++) {
        gen_params p;
        gen_params_default(&p);
        p.max_tokens = N;
        p.temperature = 0.0f;
        p.ignore_eos = true;
        p.adapter = ads ? ads[i] : NULL;
        tr[i] = (req_track){.t = calloc((size_t)N, sizeof(double)), .cap = N, .first_seen = &first_seen,
                            .first_needed = S, .open = &open};
        make_prompt(B, prompt_base + i, ids);
        if (!tr[i].t || !(rq[i] = engine_request_create(ids, B->prompt, &p))) goto out;
        engine_request_set_notify(rq[i], on_notify, &tr[i]);
        if (engine_submit(e, rq[i]) < 0) goto out;
    }
    if (engine_start(e) < 0) goto out;
    for (int i = 0; i < S; i++) engine_request_wait(rq[i]);
    /* wait() returns at the finish, just before the last notify: joining the engine
     * thread makes every notification and op time visible here */
    engine_stop(e, true);
    snap_take(&end);
    for (int i = 0; i < S; i++)
        if (check_done(rq[i], N, what) < 0 || tr[i].n != N) {
            fprintf(stderr, "bench_adapters: %s: request %d: %d notifications for %d tokens\n", what, i, tr[i].n, N);
            goto out;
        }
    /* A LoRA step runs SGMV for every adapted (layer, module); none at all means the
     * adapters were silently dropped (e.g. a library built from mismatched headers) and
     * the figures would be the base model's. */
    if ((ads != NULL) != (end.shrink_calls > open.shrink_calls)) {
        fprintf(stderr, "bench_adapters: %s: %llu SGMV calls in the decode steps: adapters %s\n", what,
                (unsigned long long)(end.shrink_calls - open.shrink_calls), ads ? "NOT applied" : "applied to base?");
        goto out;
    }
    /* step k ends at the first notification of its sampling loop */
    double prev = 0;
    for (int k = 0; k < N; k++) {
        double m = INFINITY;
        for (int i = 0; i < S; i++) m = tr[i].t[k] < m ? tr[i].t[k] : m;
        if (k > 0 && step_s) step_s[k - 1] = m - prev;
        if (k == 0) res->dec_s -= m;
        if (k == N - 1) res->dec_s += m;
        prev = m;
    }
    res->dec_tokens += (double)S * (N - 1);
    res->steps += N - 1;
    for (int c = 0; c < P_COUNT; c++) res->prof_s[c] += end.prof[c] - open.prof[c];
    /* the end snapshot comes a little after the window closes (the last sampling loop
     * and the join): the window share of it is small enough to ignore */
    res->others_s += (end.busy_s - open.busy_s) - (end.own_s - open.own_s);
    st = 0;
out:
    for (int i = 0; i < S; i++) {
        engine_request_unref(rq ? rq[i] : NULL);
        if (tr) free(tr[i].t);
    }
    engine_free(e);
    free(rq);
    free(tr);
    free(ids);
    if (st < 0) fprintf(stderr, "bench_adapters: scenario %s failed\n", what);
    return st;
}

static void finish_result(result *r) {
    r->tok_s = r->dec_tokens / r->dec_s;
    double in_ops = 0;
    for (int c = 0; c < P_COUNT; c++) {
        r->prof_ms[c] = 1e3 * r->prof_s[c] / r->steps;
        in_ops += r->prof_ms[c];
    }
    r->prof_ms[P_COUNT] = 1e3 * r->dec_s / r->steps - in_ops;
    r->others_cpu = r->others_s / (r->dec_s * (double)sysconf(_SC_NPROCESSORS_ONLN));
    if (r->others_cpu < 0) r->others_cpu = 0; /* jiffy rounding */
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(double), bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Scenarios a-c: seqs concurrent requests. */
static int run_batch(const bench *B, adapter *const *ads, const char *what, result *res) {
    memset(res, 0, sizeof *res);
    double *steps = calloc((size_t)B->tokens, sizeof(double));
    if (!steps || run_once(B, ads, B->seqs, B->tokens, 0, what, res, steps) < 0) {
        free(steps);
        return -1;
    }
    finish_result(res);
    res->step_ms_median = 1e3 * median(steps, B->tokens - 1); /* sorts steps */
    res->step_ms_p10 = 1e3 * steps[(B->tokens - 1) / 10];
    free(steps);
    return 0;
}

/* Scenario d: one request per adapter, one after another, batch size 1 (a fresh
 * engine each; its creation is outside the measured window). */
static int run_serial(const bench *B, adapter *const *ads, int n_ads, result *res) {
    memset(res, 0, sizeof *res);
    double *means = calloc((size_t)n_ads, sizeof(double));
    if (!means) return -1;
    for (int i = 0; i < n_ads; i++) {
        double s0 = res->dec_s;
        if (run_once(B, ads + i, 1, B->tokens_d, i, "d", res, NULL) < 0) {
            free(means);
            return -1;
        }
        means[i] = (res->dec_s - s0) / (B->tokens_d - 1);
    }
    finish_result(res);
    res->step_ms_median = 1e3 * median(means, n_ads);
    res->step_ms_p10 = 1e3 * means[n_ads / 10];
    free(means);
    return 0;
}

/* ---------- adapters ---------- */

enum { SC_A, SC_B, SC_C, SC_D, SC_COUNT };
static const char *const sc_name[SC_COUNT] = {"a", "b", "c", "d"};

typedef struct {
    char name[64];
    char dir[4096];
    double ca_target; /* 0 = none */
    adapter *ads[MAX_ADAPTERS];
    int n_ads;
    int seqs; /* concurrent sequences in a-c */
    result r[SC_COUNT][MAX_ROUNDS]; /* per scenario and round */
    int best[SC_COUNT];              /* round with the highest tok/s */
} shape;

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Loads the first `want` adapter directories under sh->dir (sorted by name). */
static int load_adapters(const bench *B, shape *sh, int want) {
    DIR *d = opendir(sh->dir);
    if (!d) {
        fprintf(stderr, "bench_adapters: cannot open %s\n", sh->dir);
        return -1;
    }
    char *names[MAX_ADAPTERS];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < MAX_ADAPTERS)
        if (de->d_name[0] != '.') names[n++] = strdup(de->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    int st = 0;
    if (n < want) {
        fprintf(stderr, "bench_adapters: %s has %d adapters, need %d\n", sh->dir, n, want);
        st = -1;
    }
    for (int i = 0; i < n && st == 0 && sh->n_ads < want; i++) {
        char path[8192], err[1024];
        snprintf(path, sizeof path, "%s/%s", sh->dir, names[i]);
        if (model_load_adapter(B->m, path, &sh->ads[sh->n_ads], err, sizeof err) < 0) {
            fprintf(stderr, "bench_adapters: %s: %s\n", path, err);
            st = -1;
        } else if (sh->ads[sh->n_ads]->kind != ADAPTER_LORA) {
            fprintf(stderr, "bench_adapters: %s is not a LoRA adapter\n", path);
            adapter_free(sh->ads[sh->n_ads]);
            st = -1;
        } else {
            sh->n_ads++;
        }
    }
    for (int i = 0; i < n; i++) free(names[i]);
    return st;
}

/* Bytes of A and B one decode step reads for this adapter: every adapted (layer,
 * module) pair's two matrices, once per step whatever the number of rows using it. */
static size_t lora_step_bytes(const adapter *ad) {
    size_t s = 0;
    for (int i = 0; i < ad->n_layers * AMOD_COUNT; i++) {
        const adapter_lora *l = &ad->lora[i];
        if (l->rank <= 0) continue;
        s += (size_t)(l->a.rows * l->a.cols) * kdtype_size(l->a.dtype);
        s += (size_t)(l->b.rows * l->b.cols) * kdtype_size(l->b.dtype);
    }
    return s;
}

static kdtype lora_dtype(const adapter *ad) {
    for (int i = 0; i < ad->n_layers * AMOD_COUNT; i++)
        if (ad->lora[i].rank > 0) return ad->lora[i].a.dtype;
    return KDT_F32;
}

/* ---------- output ---------- */

static void cpu_model(char *out, size_t n) {
    snprintf(out, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10)) continue;
        char *v = strchr(line, ':');
        if (!v) break;
        v++;
        while (*v == ' ' || *v == '\t') v++;
        v[strcspn(v, "\n")] = 0;
        /* JSON-safe: the field is plain ASCII in practice; drop quotes and backslashes */
        size_t j = 0;
        for (size_t i = 0; v[i] && j + 1 < n; i++)
            if (v[i] != '"' && v[i] != '\\') out[j++] = v[i];
        out[j] = 0;
        break;
    }
    fclose(f);
}

static void print_result(FILE *f, const char *key, const result *r, const char *tail) {
    fprintf(f,
            "      \"%s\": {\"tok_s\": %.2f, \"step_ms_median\": %.3f, \"step_ms_p10\": %.3f, \"decode_tokens\": %.0f, "
            "\"decode_s\": %.3f, \"others_cpu\": %.3f,\n",
            key, r->tok_s, r->step_ms_median, r->step_ms_p10, r->dec_tokens, r->dec_s, r->others_cpu);
    fprintf(f, "            \"ms_per_step\": {");
    for (int c = 0; c <= P_COUNT; c++)
        fprintf(f, "\"%s\": %.3f%s", c < P_COUNT ? prof_name[c] : "outside_ops", r->prof_ms[c], c < P_COUNT ? ", " : "");
    fprintf(f, "}}%s\n", tail);
}

static double p10_tok_s(const result *r, int seqs) { return 1e3 * seqs / r->step_ms_p10; }

/* Per round: every scenario's tok/s, the round's own ratios and how busy the rest of
 * the machine was. */
static void print_rounds(FILE *f, const shape *h, int rounds) {
    fprintf(f, "      \"rounds\": [\n");
    for (int r = 0; r < rounds; r++) {
        const result *x = h->r[SC_A] + r, *c = h->r[SC_C] + r;
        fprintf(f, "        {");
        for (int k = 0; k < SC_COUNT; k++) fprintf(f, "\"%s\": %.2f, ", sc_name[k], h->r[k][r].tok_s);
        /* the same at each scenario's 10th-percentile step: less sensitive to disturbances */
        fprintf(f, "\"p10\": {");
        for (int k = 0; k < SC_COUNT; k++)
            fprintf(f, "\"%s\": %.2f%s", sc_name[k], p10_tok_s(h->r[k] + r, k == SC_D ? 1 : h->seqs),
                    k + 1 < SC_COUNT ? ", " : "}, ");
        double others = 0;
        for (int k = 0; k < SC_COUNT; k++) others += h->r[k][r].others_cpu / SC_COUNT;
        fprintf(f, "\"c_over_a\": %.4f, \"c_over_d\": %.4f, \"others_cpu\": %.3f}%s\n", c->tok_s / x->tok_s,
                c->tok_s / h->r[SC_D][r].tok_s, others, r + 1 < rounds ? "," : "");
    }
    fprintf(f, "      ],\n");
}

static const char *module_list(const adapter *ad, char *buf, size_t n) {
    bool used[AMOD_COUNT] = {false};
    for (int i = 0; i < ad->n_layers * AMOD_COUNT; i++)
        if (ad->lora[i].rank > 0) used[i % AMOD_COUNT] = true;
    size_t o = 0;
    buf[0] = 0;
    for (int m = 0; m < AMOD_COUNT; m++)
        if (used[m]) o += (size_t)snprintf(buf + o, o < n ? n - o : 0, "%s\"%s\"", o ? ", " : "", adapter_module_name(m));
    return buf;
}

/* (a) runs the same base model for every shape: its best over all shapes' rounds is the
 * least disturbed measurement of one and the same thing. */
static const result *best_base(const shape *sh, int n_sh, int rounds) {
    const result *best = &sh[0].r[SC_A][0];
    for (int s = 0; s < n_sh; s++)
        for (int r = 0; r < rounds; r++)
            if (sh[s].r[SC_A][r].tok_s > best->tok_s) best = &sh[s].r[SC_A][r];
    return best;
}

static void print_json(FILE *f, const bench *B, shape *sh, int n_sh, int rounds, int threads, double cd_target,
                       double elapsed) {
    const model_config *mc = &B->m->cfg;
    char cpu[256], date[64], mods[256];
    cpu_model(cpu, sizeof cpu);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    fprintf(f, "{\n  \"bench\": \"bench_adapters\",\n  \"date\": \"%s\",\n", date);
    fprintf(f, "  \"setup\": {\n    \"cpu\": \"%s\", \"online_cores\": %ld, \"threads\": %d, \"backend\": \"%s\",\n", cpu,
            sysconf(_SC_NPROCESSORS_ONLN), threads, B->kb->ops->name);
    fprintf(f,
            "    \"model\": {\"dir\": \"%s\", \"hidden\": %d, \"layers\": %d, \"heads\": %d, \"kv_heads\": %d, "
            "\"intermediate\": %d, \"vocab\": %d, \"tied\": %s, \"weights\": \"%s\", \"dtype\": \"%s\", "
            "\"weight_bytes_stored\": %zu, \"step_weight_bytes\": %zu},\n",
            B->m->dir, mc->hidden_size, mc->n_layers, mc->n_heads, mc->n_kv_heads, mc->intermediate_size,
            mc->vocab_size, mc->tie_word_embeddings ? "true" : "false", B->weights, kdtype_name(B->m->layers[0].wq.dtype),
            B->m->weight_bytes, B->step_bytes);
    fprintf(f,
            "    \"seqs\": %d, \"prompt_tokens\": %d, \"gen_tokens\": %d, \"gen_tokens_d_per_adapter\": %d, "
            "\"rounds\": %d,\n",
            B->seqs, B->prompt, B->tokens, B->tokens_d, rounds);
    fprintf(f, "    \"sampling\": \"greedy, ignore_eos\",\n");
    fprintf(f, "    \"op_timing\": \"%s\", \"empty_sync_us\": %.2f,\n",
            g_timed == PROF_SYNC    ? "each op waited for (--sync-ops), less one empty wait: tok/s are not the backend's"
            : g_timed == PROF_TIMED ? "synchronous ops, wall time each"
                                    : "none (asynchronous backend)",
            g_sync_s * 1e6);
    fprintf(f,
            "    \"measure\": \"decode tokens / wall time of the decode steps (engine steps: batch assembly, adapter "
            "plan, forward, sampling, detokenize, publish; prefill step, loading and engine creation excluded); "
            "each scenario: the best of the rounds (rounds run a, b, c, d per shape, interleaved); d: one request per "
            "adapter at batch 1, decode windows summed; others_cpu: share of the machine's CPU other processes used "
            "meanwhile; a (the base model, the same for every shape) is the best over all shapes' rounds\",\n");
    fprintf(f, "    \"elapsed_s\": %.1f\n  },\n  \"shapes\": [\n", elapsed);
    for (int s = 0; s < n_sh; s++) {
        shape *h = &sh[s];
        const adapter *a0 = h->ads[0];
        size_t one = lora_step_bytes(a0), all = 0;
        for (int i = 0; i < B->seqs; i++) all += lora_step_bytes(h->ads[i]);
        const result *ra = best_base(sh, n_sh, rounds), *rb = &h->r[SC_B][h->best[SC_B]];
        const result *rc = &h->r[SC_C][h->best[SC_C]], *rd = &h->r[SC_D][h->best[SC_D]];
        double ca = rc->tok_s / ra->tok_s, cd = rc->tok_s / rd->tok_s;
        fprintf(f, "    {\n      \"name\": \"%s\", \"adapters_dir\": \"%s\", \"rank\": %d, \"targets\": [%s], "
                   "\"adapter_dtype\": \"%s\",\n",
                h->name, h->dir, a0->max_rank, module_list(a0, mods, sizeof mods), kdtype_name(lora_dtype(a0)));
        fprintf(f,
                "      \"bytes\": {\"base_weights\": %zu, \"adapter_one\": %zu, \"adapter_file_tensors\": %zu, "
                "\"step_adapters_b\": %zu, \"step_adapters_c\": %zu, \"c_adapters_over_base\": %.4f,\n"
                "                \"step_total_a\": %zu, \"step_total_b\": %zu, \"step_total_c\": %zu},\n",
                B->step_bytes, one, a0->bytes, one, all, (double)all / (double)B->step_bytes, B->step_bytes,
                B->step_bytes + one, B->step_bytes + all);
        print_rounds(f, h, rounds);
        fprintf(f, "      \"best_round\": {\"a\": %d, \"b\": %d, \"c\": %d, \"d\": %d},\n", h->best[SC_A] + 1,
                h->best[SC_B] + 1, h->best[SC_C] + 1, h->best[SC_D] + 1);
        print_result(f, "a", ra, ",");
        print_result(f, "b", rb, ",");
        print_result(f, "c", rc, ",");
        print_result(f, "d", rd, ",");
        fprintf(f,
                "      \"c_over_a\": %.4f, \"c_over_d\": %.4f, \"b_over_a\": %.4f,\n"
                "      \"effective_gb_s\": {\"a\": %.2f, \"b\": %.2f, \"c\": %.2f},\n",
                ca, cd, rb->tok_s / ra->tok_s, 1e-9 * B->step_bytes * ra->tok_s / B->seqs,
                1e-9 * (B->step_bytes + one) * rb->tok_s / B->seqs, 1e-9 * (B->step_bytes + all) * rc->tok_s / B->seqs);
        fprintf(f, "      \"targets\": {\"c_over_a_min\": %.2f, \"c_over_d_min\": %.2f, \"met\": %s}\n    }%s\n",
                h->ca_target, cd_target, (ca >= h->ca_target && cd >= cd_target) ? "true" : "false",
                s + 1 < n_sh ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
}

/* ---------- main ---------- */

static void usage(void) {
    fprintf(stderr,
            "usage: bench_adapters --model DIR --shape NAME:ADAPTERS_DIR[:CA_TARGET] [--shape ...]\n"
            "       [--seqs 32] [--prompt 8] [--tokens 64] [--tokens-d 16] [--rounds 3] [--threads 0]\n"
            "       [--cd-target 4] [--out FILE] [--only a|b|c|d (one scenario, no JSON: for perf)]\n"
            "       [--backend cpu|cuda (cuda: no per-op split, ops are asynchronous)]\n"
            "       [--sync-ops 1 (wait after every op and time it: a per-op split on cuda; tok/s not the backend's)]\n"
            "       [--weights stored|bf16|q8_0|q4_k (the layer projections converted at load, model_quant.h)]\n");
}

/* The command line (usage() above). */
typedef struct {
    const char *model_dir, *out_path, *backend;
    const char *weights;       /* --weights: NULL = as stored (model_quant.h) */
    int rounds, threads, only; /* only: one scenario (SC_*) for profiling, or -1 */
    int sync_ops;              /* --sync-ops 1: wait after every op to time it (bench_prof.h) */
    double cd_target;
} options;

/* One --shape NAME:ADAPTERS_DIR[:CA_TARGET]; -1 when malformed. */
static int parse_shape(const char *v, shape *h) {
    const char *c1 = strchr(v, ':');
    if (!c1 || c1 == v || (size_t)(c1 - v) >= sizeof h->name) return -1;
    memcpy(h->name, v, (size_t)(c1 - v));
    snprintf(h->dir, sizeof h->dir, "%s", c1 + 1);
    char *c2 = strrchr(h->dir, ':');
    if (c2) {
        h->ca_target = atof(c2 + 1);
        *c2 = 0;
    }
    return 0;
}

/* Fills *o, *B's sizes and sh[0..*n_sh); -1 (after usage()) on a bad command line. */
static int parse_args(int argc, char **argv, options *o, bench *B, shape *sh, int *n_sh) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        i++;
        if (!v) ok = 0;
        else if (!strcmp(a, "--model")) o->model_dir = v;
        else if (!strcmp(a, "--weights")) o->weights = v;
        else if (!strcmp(a, "--out")) o->out_path = v;
        else if (!strcmp(a, "--seqs")) B->seqs = atoi(v);
        else if (!strcmp(a, "--prompt")) B->prompt = atoi(v);
        else if (!strcmp(a, "--tokens")) B->tokens = atoi(v);
        else if (!strcmp(a, "--tokens-d")) B->tokens_d = atoi(v);
        else if (!strcmp(a, "--rounds")) o->rounds = atoi(v);
        else if (!strcmp(a, "--threads")) o->threads = atoi(v);
        else if (!strcmp(a, "--backend") && (!strcmp(v, "cpu") || !strcmp(v, "cuda"))) o->backend = v;
        else if (!strcmp(a, "--cd-target")) o->cd_target = atof(v);
        else if (!strcmp(a, "--sync-ops")) o->sync_ops = atoi(v) != 0;
        else if (!strcmp(a, "--only") && v[0] >= 'a' && v[0] <= 'd' && !v[1]) o->only = v[0] - 'a';
        else if (!strcmp(a, "--shape") && *n_sh < MAX_SHAPES) ok = parse_shape(v, &sh[(*n_sh)++]) == 0;
        else ok = 0;
        if (!ok) {
            usage();
            return -1;
        }
    }
    if (!o->model_dir || *n_sh == 0 || B->seqs < 1 || B->seqs > MAX_ADAPTERS || B->prompt < 1 || B->tokens < 3 ||
        B->tokens_d < 3 || o->rounds < 1 || o->rounds > MAX_ROUNDS) {
        usage();
        return -1;
    }
    return 0;
}

/* The backend, the model, its tokenizer and every shape's adapters into *B; -1 with a
 * message on stderr. */
static int load_all(const options *o, bench *B, shape *sh, int n_sh) {
    char err[1024];
    if (!strcmp(o->backend, "cuda")) {
#ifdef PEFTD_CUDA
        B->kb = kbackend_cuda_create(0, err, sizeof err);
        if (!B->kb) {
            fprintf(stderr, "bench_adapters: cannot create the CUDA backend: %s\n", err);
            return -1;
        }
#else
        fprintf(stderr, "bench_adapters: --backend cuda: this build has no CUDA backend\n");
        return -1;
#endif
    } else {
        B->kb = kbackend_cpu_create(o->threads);
    }
    if (!B->kb) {
        fprintf(stderr, "bench_adapters: cannot create the CPU backend\n");
        return -1;
    }
    model_load_opts mo = {.weights = -1, .threads = o->threads};
    if (model_weights_parse(o->weights, &mo.weights) < 0) {
        fprintf(stderr, "bench_adapters: --weights must be stored, bf16, q8_0 or q4_k\n");
        return -1;
    }
    if (model_load_ex(o->model_dir, B->kb, &mo, &B->m, err, sizeof err) < 0) {
        fprintf(stderr, "bench_adapters: model_load %s: %s\n", o->model_dir, err);
        return -1;
    }
    if (runtime_tokenizer_load(B->m, &B->tok, err, sizeof err) < 0) {
        fprintf(stderr, "bench_adapters: tokenizer_load %s: %s\n", o->model_dir, err);
        return -1;
    }
    for (int s = 0; s < n_sh; s++)
        if (load_adapters(B, &sh[s], B->seqs) < 0) return -1;
    return 0;
}

/* --only: one scenario per round and shape with its op split, no JSON (a profiling aid
 * under perf record). same: room for B->seqs adapters. */
static int run_only(const bench *B, shape *sh, int n_sh, const options *o, adapter **same) {
    for (int r = 0; r < o->rounds; r++)
        for (int s = 0; s < n_sh; s++) {
            shape *h = &sh[s];
            int only = o->only;
            for (int i = 0; i < B->seqs; i++) same[i] = h->ads[0];
            result *x = &h->r[only][r];
            int st = only == SC_D   ? run_serial(B, h->ads, B->seqs, x)
                     : only == SC_A ? run_batch(B, NULL, "a", x)
                                    : run_batch(B, only == SC_B ? same : h->ads, sc_name[only], x);
            if (st < 0) return -1;
            fprintf(stderr, "  %s %s: %.1f tok/s; ms/step:", h->name, sc_name[only], x->tok_s);
            for (int c = 0; c <= P_COUNT; c++)
                fprintf(stderr, " %s %.2f", c < P_COUNT ? prof_name[c] : "outside_ops", x->prof_ms[c]);
            fprintf(stderr, "\n");
        }
    return 0;
}

/* Every round of the four scenarios for every shape, a progress line each; keeps each
 * scenario's best round in h->best. same: room for B->seqs adapters. */
static int run_rounds(const bench *B, shape *sh, int n_sh, int rounds, adapter **same) {
    for (int r = 0; r < rounds; r++)
        for (int s = 0; s < n_sh; s++) {
            shape *h = &sh[s];
            h->seqs = B->seqs;
            for (int i = 0; i < B->seqs; i++) same[i] = h->ads[0];
            if (run_batch(B, NULL, "a", &h->r[SC_A][r]) < 0 || run_batch(B, same, "b", &h->r[SC_B][r]) < 0 ||
                run_batch(B, h->ads, "c", &h->r[SC_C][r]) < 0 || run_serial(B, h->ads, B->seqs, &h->r[SC_D][r]) < 0)
                return -1;
            fprintf(stderr, "  round %d %-8s a %6.1f  b %6.1f  c %6.1f  d %6.1f tok/s  c/a %.3f c/d %.2f  (others %.0f%% cpu)\n",
                    r + 1, h->name, h->r[SC_A][r].tok_s, h->r[SC_B][r].tok_s, h->r[SC_C][r].tok_s, h->r[SC_D][r].tok_s,
                    h->r[SC_C][r].tok_s / h->r[SC_A][r].tok_s, h->r[SC_C][r].tok_s / h->r[SC_D][r].tok_s,
                    100 * h->r[SC_C][r].others_cpu);
            fprintf(stderr, "          p10 steps: a %6.1f  b %6.1f  c %6.1f  d %6.1f tok/s  c/a %.3f c/d %.2f\n",
                    p10_tok_s(&h->r[SC_A][r], B->seqs), p10_tok_s(&h->r[SC_B][r], B->seqs),
                    p10_tok_s(&h->r[SC_C][r], B->seqs), p10_tok_s(&h->r[SC_D][r], 1),
                    h->r[SC_A][r].step_ms_p10 / h->r[SC_C][r].step_ms_p10,
                    B->seqs * h->r[SC_D][r].step_ms_p10 / h->r[SC_C][r].step_ms_p10);
            for (int k = 0; k < SC_COUNT; k++)
                if (h->r[k][r].tok_s > h->r[k][h->best[k]].tok_s) h->best[k] = r;
        }
    return 0;
}

/* The one-line summary on stderr: best rounds, ratios against their targets. */
static void print_summary(const bench *B, shape *sh, int n_sh, const options *o) {
    char line[2048];
    const char *m = o->model_dir;
    size_t n = (size_t)snprintf(line, sizeof line, "bench: %s %s, %d seqs, %d threads |",
                                strrchr(m, '/') ? strrchr(m, '/') + 1 : m, kdtype_name(B->m->layers[0].wq.dtype),
                                B->seqs, o->threads);
    for (int s = 0; s < n_sh && n < sizeof line; s++) {
        shape *h = &sh[s];
        double a = best_base(sh, n_sh, o->rounds)->tok_s, b = h->r[SC_B][h->best[SC_B]].tok_s;
        double c = h->r[SC_C][h->best[SC_C]].tok_s, d = h->r[SC_D][h->best[SC_D]].tok_s;
        n += (size_t)snprintf(line + n, sizeof line - n,
                              " %s: a %.0f b %.0f c %.0f d %.0f tok/s, c/a %.2f%s c/d %.1f%s |", h->name, a, b, c, d,
                              c / a, h->ca_target > 0 ? (c / a >= h->ca_target ? " (ok)" : " (MISS)") : "", c / d,
                              c / d >= o->cd_target ? " (ok)" : " (MISS)");
    }
    fprintf(stderr, "%s\n", line);
}

int main(int argc, char **argv) {
    options o = {.backend = "cpu", .rounds = 3, .only = -1, .cd_target = 4.0};
    shape *sh = calloc(MAX_SHAPES, sizeof *sh);
    int n_sh = 0, rc = 1;
    bench B = {.seqs = 32, .prompt = 8, .tokens = 64, .tokens_d = 16};
    adapter **same = NULL;
    if (!sh) return 1;
    if (parse_args(argc, argv, &o, &B, sh, &n_sh) < 0) {
        free(sh);
        return 2;
    }
    log_set_level(LOG_WARN);
    double t_start = bench_now_s();
    if (o.threads <= 0) o.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (load_all(&o, &B, sh, n_sh) < 0) goto out;
    B.weights = o.weights ? o.weights : "stored";
    B.step_bytes = (size_t)bench_step_weight_bytes(B.m);
    fprintf(stderr, "bench_adapters: model %s (%.1f MB; weights %s: %.1f MB read a step), %d threads, %d seqs x %d tokens, %d rounds\n",
            o.model_dir, B.m->weight_bytes / 1e6, B.weights, B.step_bytes / 1e6, o.threads, B.seqs, B.tokens, o.rounds);
    /* Every backend runs through the wrappers (the SGMV count that proves adapters are
     * applied); only synchronous ops are timed: a backend whose memory is host memory runs
     * its ops before returning (CPU), a device backend (CUDA) only enqueues them. */
    prof_install(B.kb, B.m->cfg.vocab_size, o.sync_ops ? PROF_SYNC : B.kb->ops->is_host ? PROF_TIMED : PROF_OFF);
    if (o.sync_ops)
        fprintf(stderr, "bench_adapters: --sync-ops: every op waited for and timed, less an empty wait of %.1f us; "
                        "tok/s are not the backend's\n", g_sync_s * 1e6);
    if (!(same = malloc((size_t)B.seqs * sizeof *same))) goto out;
    if (o.only >= 0) {
        rc = run_only(&B, sh, n_sh, &o, same) < 0;
        goto out;
    }
    if (run_rounds(&B, sh, n_sh, o.rounds, same) < 0) goto out;
    prof_uninstall(B.kb);
    double elapsed = bench_now_s() - t_start;
    print_json(stdout, &B, sh, n_sh, o.rounds, o.threads, o.cd_target, elapsed);
    fflush(stdout);
    if (o.out_path) {
        FILE *f = fopen(o.out_path, "w");
        if (!f) {
            fprintf(stderr, "bench_adapters: cannot write %s\n", o.out_path);
            goto out;
        }
        print_json(f, &B, sh, n_sh, o.rounds, o.threads, o.cd_target, elapsed);
        fclose(f);
    }
    print_summary(&B, sh, n_sh, &o);
    rc = 0;
out:
    free(same);
    for (int s = 0; s < n_sh; s++)
        for (int i = 0; i < sh[s].n_ads; i++) adapter_free(sh[s].ads[i]);
    free(sh);
    tokenizer_free(B.tok);
    model_free(B.m);
    kbackend_destroy(B.kb);
    return rc;
}
