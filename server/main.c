/* server/main.c — the peftd command line.
 *
 *   peftd serve    [--config FILE] [--model DIR] [--host H] [--port N] [--threads N]
 *                  [--weights stored|bf16|q8_0|q4_k] [--no-mmap]
 *   peftd generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T] [--seed S]
 *                  [--top-p P] [--top-k K] [--threads N]
 *
 * This file parses arguments only: serve's config file and flags into a peftd_config, run
 * by serve_run (server/serve.c: bring-up, signal loop, teardown); generate's flags into
 * generate_options, run by generate_run (server/generate.c: offline generation to stdout
 * through the same runtime and engine, no server).
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/config.h"
#include "server/generate.h"
#include "server/model/model_quant.h"
#include "server/serve.h"
#include "lib/version.h"

/* Every option of each subcommand, with what it takes: one table per subcommand, read by
 * its --help and by the parser's first check (an unknown option says so; a known one
 * missing its value says that). */
typedef struct {
    const char *flag, *arg, *doc;
} cli_option;

static const cli_option SERVE_OPTS[] = {
    {"--config", "FILE", "JSON configuration file (keys below); the flags override it"},
    {"--model", "DIR", "model directory (Hugging Face layout) or .gguf file; config \"model\""},
    {"--host", "H", "listen address; config \"host\""},
    {"--port", "N", "listen port (0 = any free port); config \"port\""},
    {"--threads", "N", "CPU backend worker threads (0 = one per core); config \"threads\""},
    {"--store", "DIR", "adapter store directory; config store.dir"},
    {"--adapter", "NAME=DIR", "preload an adapter (repeatable); config \"adapters\""},
    {"--served-model-name", "NAME", "another name of the base model (repeatable); config \"served_model_name\""},
    {"--follow", "URL", "mirror the primary at URL as a read-only follower; config store.follow"},
    {"--weights", "W", "stored | bf16 | q8_0 | q4_k: convert the layer projections at load; config \"weights\""},
    {"--no-mmap", NULL, "read the weight files into (huge-page) memory instead of mapping them; config \"mmap\": false"},
    {"--no-weights-cache", NULL, "convert --weights q8_0 / q4_k at every start (no <store>/weights-cache); config \"weights_cache\": false"},
    {"--kv-dtype", "T", "f32 | f16: the KV cache's elements (f16: half the memory; CPU backend); config engine.kv_dtype"},
    {"--help", NULL, "this help"},
    {"--version", NULL, "print the version and exit"},
    {NULL, NULL, NULL},
};

static const cli_option GENERATE_OPTS[] = {
    {"--model", "DIR", "model directory or .gguf file (required)"},
    {"--prompt", "TEXT", "the prompt (required)"},
    {"--max-tokens", "N", "tokens to generate (default 16)"},
    {"--temperature", "T", "sampling temperature in [0, 100] (default 1; 0 = greedy)"},
    {"--seed", "S", "sampling seed"},
    {"--top-p", "P", "nucleus sampling in (0, 1] (default 1)"},
    {"--top-k", "K", "top-k sampling (default 0 = off)"},
    {"--threads", "N", "CPU backend worker threads (0 = one per core)"},
    {"--adapter", "DIR", "a PEFT adapter directory applied to the generation"},
    {"--adapter-scale", "X", "LoRA scale in [0, 16] (needs --adapter)"},
    {"--weights", "W", "stored | bf16 | q8_0 | q4_k: convert the layer projections at load"},
    {"--no-mmap", NULL, "read the weight files into (huge-page) memory instead of mapping them"},
    {"--help", NULL, "this help"},
    {"--version", NULL, "print the version and exit"},
    {NULL, NULL, NULL},
};

static void usage(FILE *f) {
    fprintf(f,
            "peftd " PEFTD_VERSION " — multi-tenant adapter-serving inference daemon\n"
            "usage:\n"
            "  peftd serve [--config FILE] [--model DIR] [--host H] [--port N] [--threads N]\n"
            "              [--store DIR] [--adapter NAME=DIR]... [--follow PRIMARY_URL]\n"
            "              [--weights stored|bf16|q8_0|q4_k] [--no-mmap] [--kv-dtype f32|f16]\n"
            "  peftd generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T]\n"
            "                 [--seed S] [--top-p P] [--top-k K] [--threads N]\n"
            "                 [--adapter DIR [--adapter-scale X]] [--weights stored|bf16|q8_0|q4_k]\n"
            "                 [--no-mmap]\n"
            "  peftd --version\n"
            "`peftd serve --help` and `peftd generate --help` list every option.\n");
}

static void print_opts(FILE *f, const cli_option *o) {
    fprintf(f, "options:\n");
    for (; o->flag; o++) {
        char head[64];
        snprintf(head, sizeof head, "%s%s%s", o->flag, o->arg ? " " : "", o->arg ? o->arg : "");
        fprintf(f, "  %-26s %s\n", head, o->doc);
    }
}

static void serve_help(FILE *f) {
    fprintf(f, "usage: peftd serve [options]\nRuns the HTTP server (OpenAI-compatible API; README \"HTTP API\").\n");
    print_opts(f, SERVE_OPTS);
    config_help(f);
}

static void generate_help(FILE *f) {
    fprintf(f, "usage: peftd generate --model DIR --prompt TEXT [options]\n"
               "Generates offline to stdout through the same engine (no server).\n");
    print_opts(f, GENERATE_OPTS);
    fprintf(f, "environment variables:\n  %-26s %s\n  %-26s %s\n", "PEFTD_LOG",
            "log level: debug | info | warn | error", "PEFTD_BACKEND", "auto | cpu | cuda");
}

/* argv[*i] against opts: 1 with *value set (NULL for a flag without one) and *i advanced,
 * 0 for --help / --version (handled by the caller), -1 after printing the error. */
static int next_opt(int argc, char **argv, int *i, const cli_option *opts, const char **value) {
    const char *a = argv[*i];
    const cli_option *o = opts;
    while (o->flag && strcmp(o->flag, a)) o++;
    if (!o->flag) {
        fprintf(stderr, "peftd %s: unknown option '%s' (see peftd %s --help)\n", argv[1], a, argv[1]);
        return -1;
    }
    *value = NULL;
    if (!o->arg) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "peftd %s: %s needs a value (%s)\n", argv[1], a, o->arg);
        return -1;
    }
    *value = argv[++*i];
    return 1;
}

static int parse_long(const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "peftd: %s expects an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi)) {
        fprintf(stderr, "peftd: %s expects a number in [%g, %g], got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int cmd_generate(int argc, char **argv) {
    generate_options o = {.max_tokens = 16, .temperature = 1.0, .top_p = 1.0, .adapter_scale = 1.0};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        int k = next_opt(argc, argv, &i, GENERATE_OPTS, &v);
        if (k < 0) return 2;
        if (!strcmp(a, "--help")) {
            generate_help(stdout);
            return 0;
        }
        if (!strcmp(a, "--version")) {
            printf("peftd %s (commit %s)\n", PEFTD_VERSION, peftd_commit());
            return 0;
        }
        if (!strcmp(a, "--model")) o.model_dir = v;
        else if (!strcmp(a, "--prompt")) o.prompt = v;
        else if (!strcmp(a, "--adapter")) o.adapter_dir = v;
        else if (!strcmp(a, "--weights")) o.weights = v;
        else if (!strcmp(a, "--no-mmap")) o.no_mmap = true;
        else if (!strcmp(a, "--adapter-scale")) { if (parse_float(a, v, 0, 16, &o.adapter_scale)) return 2; o.scale_set = true; }
        else if (!strcmp(a, "--max-tokens")) { if (parse_long(a, v, 1, INT_MAX / 2, &o.max_tokens)) return 2; }
        else if (!strcmp(a, "--temperature")) { if (parse_float(a, v, 0, 100, &o.temperature)) return 2; }
        else if (!strcmp(a, "--top-p")) { if (parse_float(a, v, 1e-6, 1, &o.top_p)) return 2; }
        else if (!strcmp(a, "--top-k")) { if (parse_long(a, v, 0, INT_MAX, &o.top_k)) return 2; }
        else if (!strcmp(a, "--threads")) { if (parse_long(a, v, 0, 1024, &o.threads)) return 2; }
        else if (!strcmp(a, "--seed")) { if (parse_long(a, v, LONG_MIN, LONG_MAX, &o.seed)) return 2; o.has_seed = true; }
    }
    if (!o.model_dir || !o.prompt) {
        fprintf(stderr, "peftd generate: --model and --prompt are required\n");
        return 2;
    }
    return generate_run(&o);
}

/* serve's flags over the config file's values. Returns 0 or the exit status (2). */
static int parse_serve_flags(int argc, char **argv, peftd_config *cfg) {
    char err[1024] = "";
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (next_opt(argc, argv, &i, SERVE_OPTS, &v) < 0) return 2;
        long n;
        if (!strcmp(a, "--config")) continue;
        else if (!strcmp(a, "--model")) snprintf(cfg->model_dir, sizeof cfg->model_dir, "%s", v);
        else if (!strcmp(a, "--host")) snprintf(cfg->host, sizeof cfg->host, "%s", v);
        else if (!strcmp(a, "--port")) { if (parse_long(a, v, 0, 65535, &n)) return 2; cfg->port = (int)n; }
        else if (!strcmp(a, "--threads")) { if (parse_long(a, v, 0, 1024, &n)) return 2; cfg->threads = (int)n; }
        else if (!strcmp(a, "--weights")) {
            int dt;
            if (model_weights_parse(v, &dt) < 0) {
                fprintf(stderr, "peftd: --weights must be stored, bf16, q8_0 or q4_k, got '%s'\n", v);
                return 2;
            }
            snprintf(cfg->weights, sizeof cfg->weights, "%s", v);
        }
        else if (!strcmp(a, "--no-mmap")) cfg->mmap = false;
        else if (!strcmp(a, "--no-weights-cache")) cfg->weights_cache = false;
        else if (!strcmp(a, "--kv-dtype")) {
            if (engine_kv_dtype_parse(v) < 0) {
                fprintf(stderr, "peftd: --kv-dtype must be f32 or f16, got '%s'\n", v);
                return 2;
            }
            snprintf(cfg->engine.kv_dtype, sizeof cfg->engine.kv_dtype, "%s", v);
        }
        else if (!strcmp(a, "--store")) snprintf(cfg->store.dir, sizeof cfg->store.dir, "%s", v);
        else if (!strcmp(a, "--follow")) {
            if (strncmp(v, "http://", 7) && strncmp(v, "https://", 8)) {
                fprintf(stderr, "peftd: --follow expects an http:// or https:// URL, got '%s'\n", v);
                return 2;
            }
            snprintf(cfg->store.follow, sizeof cfg->store.follow, "%s", v);
        }
        else if (!strcmp(a, "--served-model-name")) {
            if (config_add_served_name(cfg, v, err, sizeof err) < 0) {
                fprintf(stderr, "peftd: %s\n", err);
                return 2;
            }
        }
        else if (!strcmp(a, "--adapter")) {
            char name[128];
            const char *eq = strchr(v, '=');
            if (!eq || (size_t)(eq - v) >= sizeof name) {
                fprintf(stderr, "peftd: --adapter expects NAME=DIR, got '%s'\n", v);
                return 2;
            }
            memcpy(name, v, (size_t)(eq - v));
            name[eq - v] = 0;
            if (config_add_adapter(cfg, name, eq + 1, err, sizeof err) < 0) {
                fprintf(stderr, "peftd: %s\n", err);
                return 2;
            }
        }
    }
    return 0;
}

static int cmd_serve(int argc, char **argv) {
    /* A SIGTERM while the model loads, or after /health answers but before the loop's
     * handlers exist, is recorded and acted on once they do (exit 0), not the default
     * action's death by signal. */
    for (int i = 2; i < argc; i++) { /* --help / --version before anything else, wherever they are */
        const cli_option *o = SERVE_OPTS;
        while (o->flag && strcmp(o->flag, argv[i])) o++;
        if (o->flag && o->arg) i++; /* an option's value is not an option */
        else if (!strcmp(argv[i], "--help")) {
            serve_help(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--version")) {
            printf("peftd %s (commit %s)\n", PEFTD_VERSION, peftd_commit());
            return 0;
        }
    }
    serve_catch_signals();
    /* A file-size limit (RLIMIT_FSIZE) must fail the write that passes it (EFBIG: the
     * upload answers 507), not kill the daemon with SIGXFSZ's default action. */
    signal(SIGXFSZ, SIG_IGN);
    peftd_config cfg;
    config_default(&cfg);
    char err[1024] = "";
    const char *config_path = NULL;
    for (int i = 2; i < argc; i++) /* the config file first, so flags override it */
        if (!strcmp(argv[i], "--config") && i + 1 < argc) config_path = argv[i + 1];
    if (config_path && config_load(&cfg, config_path, err, sizeof err) < 0) {
        fprintf(stderr, "peftd: %s\n", err);
        return 2;
    }
    int rc = parse_serve_flags(argc, argv, &cfg);
    if (!rc) rc = serve_run(&cfg, config_path);
    config_free(&cfg);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("peftd %s (commit %s)\n", PEFTD_VERSION, peftd_commit());
        return 0;
    }
    if (!strcmp(argv[1], "serve")) return cmd_serve(argc, argv);
    if (!strcmp(argv[1], "generate")) return cmd_generate(argc, argv);
    fprintf(stderr, "peftd: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
