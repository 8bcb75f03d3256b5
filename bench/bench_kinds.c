/* bench/bench_kinds.c — what each adapter kind, and a composition of two LoRAs, costs in a
 * shared batch (`make bench`, issue 16).
 *
 * One engine per run, `seqs` concurrent greedy requests (ignore_eos, `prompt`-token prompts,
 * `tokens` generated each), all submitted before the engine starts (one prefill step, then one
 * decode row per sequence per step). The rows:
 *   base        no adapter
 *   lora        the reference: sequence i uses LoRA i mod n of --lora (rank 16, all linear layers)
 *   <kind>      sequence i uses adapter i mod n of that kind's set (--kind NAME:DIR): a mixed
 *               batch of distinct adapters of one kind
 *               (n: the set's size, at most --distinct, default 8, for every row alike);
 *               NAME:DIR:lora|dense|factored loads the set in that form: LoKr / LoHa / VeRA
 *               modules as LoRA pairs or dense (PEFTD_LYCO_FORM), OFT / BOFT modules factored
 *               (seg_rotate) or dense (PEFTD_ROT_FORM); dense sets both
 *   mix-linear2 sequence i composes LoRAs i and i+1 (mod n) of --lora, weights 0.5 / 0.5, "linear"
 *               (PEFT's: 4 (A, B) pairs per module)
 *   mix-cat2    the same pairs, "cat" (the weighted sum of the two deltas: 2 pairs)
 * Rate: decode tokens / wall time from the first decode step's start (every request has its
 * first token) to the last token; loading and the prefill are outside. Every row runs `rounds`
 * times, interleaved (all rows, then the next round); a row's best round counts (the least
 * disturbed on a shared machine). Ratios (to base, to lora) come from the same invocation.
 * Output: JSON on stdout and in --out; a one-line summary per row on stderr.
 * Usage: bench_kinds --model DIR --lora DIR [--kind NAME:DIR ...] [--seqs 32] [--prompt 8]
 *        [--tokens 32] [--rounds 3] [--distinct 8] [--threads 0] [--out FILE]
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_mix.h"
#include "bench/bench_time.h"
#include "lib/log.h"
#include "server/engine/engine.h"
#include "server/model/model.h"
#include "server/model/model_adapter_base.h"
#include "server/runtime.h"
#include "server/text/tokenizer.h"

#define MAX_ROWS 40
#define MAX_SET 64
#define MAX_ROUNDS 16

typedef enum { ROW_BASE, ROW_SET, ROW_MIX } row_type;

typedef struct {
    char name[64], dir[1024];
    char form[16];              /* ROW_SET: lora|dense|factored while its adapters load ("" = the rules) */
    row_type type;
    adapter_mix_kind how;       /* ROW_MIX */
    adapter *ads[MAX_SET];      /* ROW_SET (ROW_MIX: the lora row's) */
    int n_ads;
    double tok_s[MAX_ROUNDS];
    char kind[32];
} row;

typedef struct {
    model *m;
    kbackend *kb;
    tokenizer *tok;
    int seqs, prompt, tokens;
    int distinct; /* a set's row uses at most this many of its adapters (the same for every row) */
} bench;

typedef struct {
    double first, last;
    int n;
} track;

static void on_token(void *ud) {
    track *t = ud;
    double now = bench_now_s();
    if (t->n++ == 0) t->first = now;
    t->last = now;
}

/* One run of row r: decode tokens per second, or a negative value on failure. */
static double run_row(const bench *B, const row *r, const row *lora) {
    engine_config c;
    engine_config_default(&c);
    c.max_seqs = B->seqs;
    c.max_batch_tokens = B->seqs * B->prompt > c.max_batch_tokens ? B->seqs * B->prompt : c.max_batch_tokens;
    int per_seq = (B->prompt + B->tokens + 64 + c.block_size - 1) / c.block_size + 1; /* + virtual tokens */
    c.max_context = per_seq * c.block_size;
    if (c.max_context > B->m->cfg.max_position_embeddings) c.max_context = B->m->cfg.max_position_embeddings;
    c.kv_blocks = B->seqs * (per_seq + 8);
    engine *e = NULL;
    char err[512];
    if (engine_create(&c, B->m, B->kb, B->tok, &e, err, sizeof err) < 0) {
        fprintf(stderr, "bench_kinds: engine_create: %s\n", err);
        return -1;
    }
    engine_request *rq[MAX_SET * 4] = {0};
    track tr[MAX_SET * 4];
    int32_t ids[256];
    double rate = -1;
    for (int i = 0; i < B->seqs; i++) {
        gen_params p;
        gen_params_default(&p);
        p.max_tokens = B->tokens;
        p.temperature = 0;
        p.ignore_eos = true;
        int na = r->n_ads < B->distinct ? r->n_ads : B->distinct, nl = lora->n_ads < B->distinct ? lora->n_ads : B->distinct;
        if (r->type == ROW_SET) p.adapter = r->ads[i % na];
        if (r->type == ROW_MIX) {
            p.n_mix = 2;
            p.mix_how = (int)r->how;
            p.mix_adapter[0] = lora->ads[i % nl];
            p.mix_adapter[1] = lora->ads[(i + 1) % nl];
            p.mix_weight[0] = p.mix_weight[1] = 0.5f;
        }
        ids[0] = B->m->cfg.bos_token_id >= 0 ? B->m->cfg.bos_token_id : 1;
        for (int j = 1; j < B->prompt; j++) ids[j] = 3 + (i * 37 + j * 11) % 500;
        tr[i] = (track){0};
        if (!(rq[i] = engine_request_create(ids, B->prompt, &p))) goto out;
        engine_request_set_notify(rq[i], on_token, &tr[i]);
        if (engine_submit(e, rq[i]) < 0) goto out;
    }
    if (engine_start(e) < 0) goto out;
    for (int i = 0; i < B->seqs; i++) engine_request_wait(rq[i]);
    engine_stop(e, true);
    double t0 = 0, t1 = 0;
    for (int i = 0; i < B->seqs; i++) {
        engine_delta d;
        if (engine_request_take(rq[i], &d) < 0) goto out;
        bool ok = d.finish == FINISH_LENGTH && d.completion_tokens == B->tokens;
        if (!ok) fprintf(stderr, "bench_kinds: %s: request %d: %s %s\n", r->name, i, finish_reason_str(d.finish), d.error);
        engine_delta_free(&d);
        if (!ok || tr[i].n != B->tokens) goto out;
        t0 = tr[i].first > t0 ? tr[i].first : t0; /* the prefill step is over for everyone */
        t1 = tr[i].last > t1 ? tr[i].last : t1;
    }
    rate = (double)B->seqs * (B->tokens - 1) / (t1 - t0);
out:
    for (int i = 0; i < B->seqs; i++) engine_request_unref(rq[i]);
    engine_free(e);
    return rate;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int load_set(const bench *B, row *r) {
    DIR *d = opendir(r->dir);
    if (!d) {
        fprintf(stderr, "bench_kinds: cannot open %s\n", r->dir);
        return -1;
    }
    char *names[MAX_SET];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < MAX_SET)
        if (de->d_name[0] != '.') names[n++] = strdup(de->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    int st = n > 0 ? 0 : -1;
    if (!strcmp(r->form, "lora") || !strcmp(r->form, "dense")) setenv("PEFTD_LYCO_FORM", r->form, 1);
    if (!strcmp(r->form, "factored") || !strcmp(r->form, "dense")) setenv("PEFTD_ROT_FORM", r->form, 1);
    for (int i = 0; i < n && st == 0; i++) {
        char path[2200], err[1024];
        snprintf(path, sizeof path, "%s/%s", r->dir, names[i]);
        if (model_load_adapter(B->m, path, &r->ads[r->n_ads], err, sizeof err) < 0) {
            fprintf(stderr, "bench_kinds: %s: %s\n", path, err);
            st = -1;
        } else {
            r->n_ads++;
        }
    }
    unsetenv("PEFTD_LYCO_FORM");
    unsetenv("PEFTD_ROT_FORM");
    for (int i = 0; i < n; i++) free(names[i]);
    if (st == 0) snprintf(r->kind, sizeof r->kind, "%s", adapter_kind_name(r->ads[0]->kind));
    return st;
}

static double best(const row *r, int rounds) {
    double b = -1;
    for (int k = 0; k < rounds; k++) b = r->tok_s[k] > b ? r->tok_s[k] : b;
    return b;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *out = NULL;
    bench B = {.seqs = 32, .prompt = 8, .tokens = 32, .distinct = 8};
    int rounds = 3, threads = 0, n = 0;
    static row rows[MAX_ROWS];
    rows[n++] = (row){.name = "base", .type = ROW_BASE};
    rows[n++] = (row){.name = "lora", .type = ROW_SET};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        i++;
        if (!strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "--lora")) snprintf(rows[1].dir, sizeof rows[1].dir, "%s", v);
        else if (!strcmp(a, "--kind") && n < MAX_ROWS - 2) {
            const char *c = strchr(v, ':');
            if (!c || c == v || (size_t)(c - v) >= sizeof rows[n].name) goto usage;
            rows[n] = (row){.type = ROW_SET};
            snprintf(rows[n].name, sizeof rows[n].name, "%.*s", (int)(c - v), v);
            snprintf(rows[n].dir, sizeof rows[n].dir, "%s", c + 1);
            char *f = strrchr(rows[n].dir, ':'); /* NAME:DIR:lora|dense|factored — one form forced */
            if (f && (!strcmp(f + 1, "lora") || !strcmp(f + 1, "dense") || !strcmp(f + 1, "factored"))) {
                snprintf(rows[n].form, sizeof rows[n].form, "%s", f + 1);
                *f = 0;
            }
            n++;
        } else if (!strcmp(a, "--seqs")) B.seqs = atoi(v);
        else if (!strcmp(a, "--prompt")) B.prompt = atoi(v);
        else if (!strcmp(a, "--tokens")) B.tokens = atoi(v);
        else if (!strcmp(a, "--rounds")) rounds = atoi(v);
        else if (!strcmp(a, "--distinct")) B.distinct = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--out")) out = v;
        else goto usage;
    }
    if (!model_dir || !rows[1].dir[0] || B.seqs < 2 || B.seqs > MAX_SET * 4 || B.prompt < 2 || B.prompt > 256 ||
        B.tokens < 2 || rounds < 1 || rounds > MAX_ROUNDS || B.distinct < 1)
        goto usage;
    rows[n++] = (row){.name = "mix-linear2", .type = ROW_MIX, .how = ADAPTER_MIX_LINEAR, .kind = "lora x2"};
    rows[n++] = (row){.name = "mix-cat2", .type = ROW_MIX, .how = ADAPTER_MIX_CAT, .kind = "lora x2"};
    log_set_level(LOG_WARN);
    char err[1024];
    if (!(B.kb = kbackend_cpu_create(threads)) || model_load(model_dir, B.kb, &B.m, err, sizeof err) < 0 ||
        runtime_tokenizer_load(B.m, &B.tok, err, sizeof err) < 0) {
        fprintf(stderr, "bench_kinds: %s\n", err);
        return 1;
    }
    for (int i = 1; i < n; i++)
        if (rows[i].type == ROW_SET && load_set(&B, &rows[i]) < 0) return 1;
    for (int k = 0; k < rounds; k++)
        for (int i = 0; i < n; i++) {
            rows[i].tok_s[k] = run_row(&B, &rows[i], &rows[1]);
            if (rows[i].tok_s[k] < 0) return 1;
            fprintf(stderr, "bench_kinds: round %d %-14s %8.1f tok/s\n", k + 1, rows[i].name, rows[i].tok_s[k]);
        }
    double base = best(&rows[0], rounds), lora = best(&rows[1], rounds);
    FILE *f = out ? fopen(out, "w") : NULL;
    for (int pass = 0; pass < 2; pass++) {
        FILE *o = pass ? f : stdout;
        if (!o) continue;
        fprintf(o, "{\"bench\": \"kinds\", \"model\": \"%s\", \"seqs\": %d, \"prompt\": %d, \"tokens\": %d, \"rounds\": %d,\n"
                   " \"note\": \"decode tok/s of a %d-sequence batch, best of %d interleaved rounds; <kind>: sequence i uses "
                   "adapter i mod n of the set (n <= %d); mix-*: sequence i composes LoRAs i, i+1 (mod n) of the lora set\",\n \"rows\": [\n",
                model_dir, B.seqs, B.prompt, B.tokens, rounds, B.seqs, rounds, B.distinct);
        for (int i = 0; i < n; i++) {
            double t = best(&rows[i], rounds);
            fprintf(o, "  {\"row\": \"%s\", \"served_as\": \"%s\", \"adapters\": %d, \"tok_s\": %.1f, \"vs_base\": %.3f, "
                       "\"vs_lora_r16\": %.3f, \"rounds_tok_s\": [",
                    rows[i].name, rows[i].type == ROW_BASE ? "base" : rows[i].kind,
                    rows[i].type == ROW_MIX     ? 2
                    : rows[i].n_ads < B.distinct ? rows[i].n_ads
                                                 : B.distinct,
                    t, t / base, t / lora);
            for (int k = 0; k < rounds; k++) fprintf(o, "%s%.1f", k ? ", " : "", rows[i].tok_s[k]);
            fprintf(o, "]}%s\n", i + 1 < n ? "," : "");
        }
        fprintf(o, " ]}\n");
    }
    if (f) fclose(f);
    for (int i = 0; i < n; i++) {
        double t = best(&rows[i], rounds);
        fprintf(stderr, "bench_kinds: %-14s %8.1f tok/s  %.3f x base  %.3f x lora-r16\n", rows[i].name, t, t / base,
                t / lora);
    }
    for (int i = 1; i < n; i++)
        for (int k = 0; k < rows[i].n_ads; k++) adapter_free(rows[i].ads[k]);
    tokenizer_free(B.tok);
    model_free(B.m);
    kbackend_destroy(B.kb);
    return 0;
usage:
    fprintf(stderr, "usage: bench_kinds --model DIR --lora DIR [--kind NAME:DIR ...] [--seqs 32] [--prompt 8] "
                    "[--tokens 32] [--rounds 3] [--distinct 8] [--threads 0] [--out FILE]\n");
    return 2;
}
