/* bench/bench_decode.c — one stream against the memory roofline, and start-up time
 * (`make bench`, on the Llama-3.2-1B-shaped model).
 *
 * Batch-1 decode on a CPU reads every weight byte once per token, so its ceiling is the
 * machine's streaming-read bandwidth divided by the bytes per token. This program measures
 * both in the same run, interleaved round by round so that load from other processes hits
 * both alike:
 *   bandwidth  bench_read_bandwidth(): a parallel streaming sum over a fresh buffer of
 *              --bw-mb MiB (several times the L3) on the CPU backend's own thread pool;
 *   decode     one greedy request (ignore_eos, --prompt tokens, --tokens generated) through
 *              the real engine; tokens / wall time from the first to the last token, i.e.
 *              whole engine steps (batch assembly, forward, sampling, detokenize, publish);
 *   prefill    the same request's prompt tokens / time from submit to its first token (the
 *              prompt's one prefill step; compare llama-bench's ppN with --prompt N);
 *   ratio      decode tok/s x bytes per token / bandwidth, where bytes per token = the
 *              weights a decode step reads (every weight; the embedding table only when
 *              lm_head is tied to it, as one row is gathered otherwise) + the KV cache it
 *              attends to (mean over the window).
 * Start-up: wall time of kbackend + model_load (mmap, header and shape checks) + tokenizer +
 * engine_create, i.e. what the daemon does before it can serve. "cold" first drops the
 * weight files from the page cache (posix_fadvise DONTNEED, no root needed), "warm" is the
 * same again with the files cached.
 *
 * Output: one JSON object on stdout and in --out, a one-line summary on stderr.
 * Usage: bench_decode --model DIR [--prompt 8] [--tokens 32] [--rounds 3] [--threads 0]
 *                     [--bw-mb 1024] [--target 0.70] [--startup-target 2.0] [--out FILE]
 *                     [--weights stored|bf16|q8_0|q4_k]   (at-load conversion, model_quant.h)
 *                     [--weights-cache DIR]   (its cache, model_quant_cache.h: a load that
 *                                              finds none writes it, the later ones read it;
 *                                              "cold" drops its files from the page cache too)
 *                     [--no-mmap 1]   (weight files read into huge-page memory: lib/file_map.h)
 *                     [--kv-dtype f32|f16]   (engine.kv_dtype: the KV cache's elements)
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_model_bytes.h"
#include "bench/bench_roofline.h"
#include "bench/bench_time.h"
#include "server/runtime.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/kernels.h"
#include "lib/log.h"
#include "server/engine/engine.h"
#include "server/model/model.h"
#include "server/model/model_quant.h"
#include "server/text/tokenizer.h"

#define MAX_ROUNDS 16

typedef struct {
    const char *model_dir, *out_path, *weights; /* weights: NULL = stored */
    const char *weights_cache;                  /* NULL: none (model_quant_cache.h) */
    const char *kv_dtype;                       /* engine.kv_dtype: NULL = the default (f32) */
    int prompt, tokens, rounds, threads, bw_mb, no_mmap;
    double target, startup_target;
} options;

typedef struct {
    kbackend *kb;
    model *m;
    tokenizer *tok;
    engine *e;
} served;

/* Drops every file of dir ending in suffix (*.safetensors of a model, *.pqc of a weights cache)
 * from the page cache; returns the bytes dropped. */
static size_t drop_from_page_cache(const char *dir, const char *suffix) {
    DIR *d = opendir(dir);
    size_t bytes = 0;
    if (!d) return 0;
    for (struct dirent *de; (de = readdir(d));) {
        size_t n = strlen(de->d_name), k = strlen(suffix);
        if (n < k || strcmp(de->d_name + n - k, suffix) != 0) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        off_t end = lseek(fd, 0, SEEK_END);
        if (end > 0 && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0) bytes += (size_t)end;
        close(fd);
    }
    closedir(d);
    return bytes;
}

static void served_close(served *s) {
    engine_free(s->e);
    tokenizer_free(s->tok);
    model_free(s->m);
    kbackend_destroy(s->kb);
    memset(s, 0, sizeof *s);
}

/* Everything the daemon does before serving; the wall time in *secs. */
static int served_open(const options *o, served *s, double *secs) {
    char err[1024];
    engine_config c;
    memset(s, 0, sizeof *s);
    double t0 = bench_now_s();
    if (!(s->kb = kbackend_cpu_create(o->threads))) {
        fprintf(stderr, "bench_decode: cannot create the CPU backend\n");
        return -1;
    }
    model_load_opts mo = {.weights = -1, .threads = o->threads, .no_mmap = o->no_mmap != 0,
                          .weights_cache = o->weights_cache};
    if (model_weights_parse(o->weights, &mo.weights) < 0) {
        fprintf(stderr, "bench_decode: --weights must be stored, bf16, q8_0 or q4_k\n");
        return -1;
    }
    if (model_load_ex(o->model_dir, s->kb, &mo, &s->m, err, sizeof err) < 0 ||
        runtime_tokenizer_load(s->m, &s->tok, err, sizeof err) < 0) {
        fprintf(stderr, "bench_decode: %s: %s\n", o->model_dir, err);
        return -1;
    }
    engine_config_default(&c);
    c.max_seqs = 1;
    if (o->kv_dtype) snprintf(c.kv_dtype, sizeof c.kv_dtype, "%s", o->kv_dtype);
    c.max_context = o->prompt + o->tokens + 16;
    if (c.max_context > s->m->cfg.max_position_embeddings) c.max_context = s->m->cfg.max_position_embeddings;
    if (engine_create(&c, s->m, s->kb, s->tok, &s->e, err, sizeof err) < 0 || engine_start(s->e) < 0) {
        fprintf(stderr, "bench_decode: engine: %s\n", err);
        return -1;
    }
    *secs = bench_now_s() - t0;
    return 0;
}

typedef struct {
    double *t;
    int n, cap;
} stamps;

static void on_token(void *ud) {
    stamps *st = ud;
    if (st->n < st->cap) st->t[st->n] = bench_now_s();
    st->n++;
}

/* One greedy request of o->tokens tokens; decode tokens per second, or -1. *prefill_tok_s
 * (when not NULL): prompt tokens / time from submit to the first token (the prompt's prefill
 * step, which samples that token). */
static double decode_once(const options *o, served *s, int round, double *prefill_tok_s) {
    gen_params p;
    gen_params_default(&p);
    p.max_tokens = o->tokens;
    p.temperature = 0.0f;
    p.ignore_eos = true;
    int32_t ids[4096];
    ids[0] = s->m->cfg.bos_token_id >= 0 ? s->m->cfg.bos_token_id : 1;
    for (int j = 1; j < o->prompt; j++) ids[j] = 3 + (round * 37 + j * 11) % 500;
    stamps st = {.t = calloc((size_t)o->tokens, sizeof(double)), .cap = o->tokens};
    engine_request *r = st.t ? engine_request_create(ids, o->prompt, &p) : NULL;
    double tok_s = -1;
    if (!r) goto out;
    engine_request_set_notify(r, on_token, &st);
    double t_submit = bench_now_s();
    if (engine_submit(s->e, r) < 0) goto out;
    engine_request_wait(r);
    /* wait() returns at the finish, just before the last token's notification */
    double t_end = bench_now_s();
    engine_delta d;
    if (engine_request_take(r, &d) == 0) {
        if (d.finished && d.finish == FINISH_LENGTH && d.completion_tokens == o->tokens && st.n >= 1)
        {
            tok_s = (o->tokens - 1) / (t_end - st.t[0]);
            if (prefill_tok_s) *prefill_tok_s = o->prompt / (st.t[0] - t_submit);
        }
        else
            fprintf(stderr, "bench_decode: request ended with %s after %d tokens %s\n",
                    d.finished ? finish_reason_str(d.finish) : "unfinished", d.completion_tokens, d.error);
        engine_delta_free(&d);
    }
out:
    engine_request_unref(r);
    free(st.t);
    return tok_s;
}

/* Bytes one decode step reads at context length ctx: every weight as loaded (after any
 * --weights conversion; the embedding table only when lm_head is tied to it) + the KV cache. */
static double bytes_per_token(const model *m, double ctx, size_t kv_elem) {
    const model_config *c = &m->cfg;
    double kv = ctx * c->n_kv_heads * c->head_dim * (double)kv_elem * 2.0 * c->n_layers;
    return bench_step_weight_bytes(m) + kv;
}

static int parse_args(int argc, char **argv, options *o) {
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--model")) o->model_dir = v;
        else if (!strcmp(a, "--out")) o->out_path = v;
        else if (!strcmp(a, "--prompt")) o->prompt = atoi(v);
        else if (!strcmp(a, "--tokens")) o->tokens = atoi(v);
        else if (!strcmp(a, "--rounds")) o->rounds = atoi(v);
        else if (!strcmp(a, "--threads")) o->threads = atoi(v);
        else if (!strcmp(a, "--weights")) o->weights = v;
        else if (!strcmp(a, "--weights-cache")) o->weights_cache = v;
        else if (!strcmp(a, "--no-mmap")) o->no_mmap = atoi(v);
        else if (!strcmp(a, "--kv-dtype")) o->kv_dtype = v;
        else if (!strcmp(a, "--bw-mb")) o->bw_mb = atoi(v);
        else if (!strcmp(a, "--target")) o->target = atof(v);
        else if (!strcmp(a, "--startup-target")) o->startup_target = atof(v);
        else return -1;
    }
    if (argc % 2 == 0 || !o->model_dir || engine_kv_dtype_parse(o->kv_dtype) < 0 || o->prompt < 1 ||
        o->prompt > 4096 || o->tokens < 3 || o->rounds < 1 || o->rounds > MAX_ROUNDS || o->bw_mb < 64)
        return -1;
    return 0;
}

typedef struct {
    double cold_s, warm_s, dropped_gb;
    double bw[MAX_ROUNDS], tok_s[MAX_ROUNDS], prefill_tok_s[MAX_ROUNDS];
    double best_bw, best_tok_s, bytes, ratio;
} results;

static void print_json(FILE *f, const options *o, const served *s, const results *r) {
    const model_config *c = &s->m->cfg;
    char date[64];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    fprintf(f, "{\n  \"bench\": \"bench_decode\",\n  \"date\": \"%s\",\n", date);
    fprintf(f,
            "  \"model\": {\"dir\": \"%s\", \"architecture\": \"%s\", \"hidden\": %d, \"layers\": %d, \"heads\": %d, "
            "\"kv_heads\": %d, \"intermediate\": %d, \"vocab\": %d, \"tied\": %s, \"dtype\": \"%s\", "
            "\"rope\": %d, \"weight_bytes\": %zu},\n",
            s->m->dir, c->architecture, c->hidden_size, c->n_layers, c->n_heads, c->n_kv_heads,
            c->intermediate_size, c->vocab_size, c->tie_word_embeddings ? "true" : "false",
            kdtype_name(s->m->layers[0].wq.dtype), (int)c->rope.kind, s->m->weight_bytes);
    fprintf(f, "  \"threads\": %d, \"online_cores\": %ld, \"prompt\": %d, \"tokens\": %d, \"bw_buffer_mb\": %d, \"no_mmap\": %s,"
            " \"kv_dtype\": \"%s\", \"weights_cache\": %s,\n",
            o->threads, sysconf(_SC_NPROCESSORS_ONLN), o->prompt, o->tokens, o->bw_mb, o->no_mmap ? "true" : "false",
            o->kv_dtype ? o->kv_dtype : "f32", o->weights_cache ? "true" : "false");
    fprintf(f, "  \"startup_s\": {\"cold\": %.3f, \"warm\": %.3f, \"dropped_from_page_cache_gb\": %.2f, \"target\": %.1f},\n",
            r->cold_s, r->warm_s, r->dropped_gb, o->startup_target);
    fprintf(f, "  \"rounds\": [");
    for (int i = 0; i < o->rounds; i++)
        fprintf(f, "%s{\"read_gb_s\": %.2f, \"decode_tok_s\": %.3f, \"ratio\": %.4f, \"prefill_tok_s\": %.1f}",
                i ? ", " : "", r->bw[i], r->tok_s[i], r->tok_s[i] * r->bytes / (r->bw[i] * 1e9), r->prefill_tok_s[i]);
    fprintf(f, "],\n  \"bytes_per_token\": %.0f,\n", r->bytes);
    fprintf(f,
            "  \"best\": {\"read_gb_s\": %.2f, \"decode_tok_s\": %.3f, \"decode_gb_s\": %.2f, \"roofline_tok_s\": %.3f, "
            "\"ratio\": %.4f, \"target\": %.2f, \"met\": %s}\n}\n",
            r->best_bw, r->best_tok_s, r->best_tok_s * r->bytes / 1e9, r->best_bw * 1e9 / r->bytes, r->ratio, o->target,
            r->ratio >= o->target && r->warm_s <= o->startup_target ? "true" : "false");
}

int main(int argc, char **argv) {
    options o = {.prompt = 8, .tokens = 32, .rounds = 3, .bw_mb = 1024, .target = 0.70, .startup_target = 2.0};
    if (parse_args(argc, argv, &o) < 0) {
        fprintf(stderr, "usage: bench_decode --model DIR [--prompt 8] [--tokens 32] [--rounds 3] [--threads 0]\n"
                        "       [--bw-mb 1024] [--target 0.70] [--startup-target 2.0] [--out FILE]\n"
                        "       [--weights stored|bf16|q8_0|q4_k] [--weights-cache DIR] [--no-mmap 1]\n"
                        "       [--kv-dtype f32|f16]\n");
        return 2;
    }
    log_set_level(LOG_WARN);
    if (o.threads <= 0) o.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    results r = {0};
    served s;
    r.dropped_gb = drop_from_page_cache(o.model_dir, ".safetensors") / 1e9;
    if (o.weights_cache) r.dropped_gb += drop_from_page_cache(o.weights_cache, ".pqc") / 1e9;
    if (served_open(&o, &s, &r.cold_s) < 0) return 1;
    served_close(&s);
    if (served_open(&o, &s, &r.warm_s) < 0) return 1;
    fprintf(stderr, "bench_decode: %s: start-up %.3f s cold, %.3f s warm; %d rounds of %d tokens\n", o.model_dir,
            r.cold_s, r.warm_s, o.rounds, o.tokens);
    kpool *pool = kcpu__impl(s.kb)->pool;
    if (decode_once(&o, &s, 0, NULL) < 0) return 1; /* warm-up: pages in the weights */
    r.bytes = bytes_per_token(s.m, o.prompt + o.tokens / 2.0, kdtype_size((kdtype)engine_kv_dtype_parse(o.kv_dtype)));
    for (int i = 0; i < o.rounds; i++) {
        r.bw[i] = bench_read_bandwidth(pool, (size_t)o.bw_mb << 20);
        r.tok_s[i] = decode_once(&o, &s, i + 1, &r.prefill_tok_s[i]);
        if (r.bw[i] <= 0 || r.tok_s[i] <= 0) return 1;
        if (r.bw[i] > r.best_bw) r.best_bw = r.bw[i];
        if (r.tok_s[i] > r.best_tok_s) r.best_tok_s = r.tok_s[i];
        fprintf(stderr, "  round %d: read %.2f GB/s, decode %.3f tok/s (%.2f GB/s), ratio %.3f; prefill %.0f tok/s\n",
                i + 1, r.bw[i], r.tok_s[i], r.tok_s[i] * r.bytes / 1e9, r.tok_s[i] * r.bytes / (r.bw[i] * 1e9),
                r.prefill_tok_s[i]);
    }
    r.ratio = r.best_tok_s * r.bytes / (r.best_bw * 1e9);
    print_json(stdout, &o, &s, &r);
    if (o.out_path) {
        FILE *f = fopen(o.out_path, "w");
        if (f) {
            print_json(f, &o, &s, &r);
            fclose(f);
        }
    }
    fprintf(stderr,
            "bench: %s batch-1 decode %.2f tok/s = %.2f GB/s of %.2f GB/s read bandwidth: %.2f of the roofline%s; "
            "start-up %.2f s warm, %.2f s cold%s\n",
            strrchr(o.model_dir, '/') ? strrchr(o.model_dir, '/') + 1 : o.model_dir, r.best_tok_s,
            r.best_tok_s * r.bytes / 1e9, r.best_bw, r.ratio, r.ratio >= o.target ? " (ok)" : " (MISS)", r.warm_s,
            r.cold_s, r.warm_s <= o.startup_target ? " (ok)" : " (MISS)");
    served_close(&s);
    return 0;
}
