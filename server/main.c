/* server/main.c — the peftd command line.
 *
 *   peftd serve    [--config FILE] [--model DIR] [--host H] [--port N] [--threads N]
 *                  [--weights stored|bf16|q8_0|q4_k]
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

#define PEFTD_VERSION "0.1.0"

static void usage(FILE *f) {
    fprintf(f,
            "peftd " PEFTD_VERSION " — multi-tenant adapter-serving inference daemon\n"
            "usage:\n"
            "  peftd serve [--config FILE] [--model DIR] [--host H] [--port N] [--threads N]\n"
            "              [--store DIR] [--adapter NAME=DIR]... [--weights stored|bf16|q8_0|q4_k]\n"
            "  peftd generate --model DIR --prompt TEXT [--max-tokens N] [--temperature T]\n"
            "                 [--seed S] [--top-p P] [--top-k K] [--threads N]\n"
            "                 [--adapter DIR [--adapter-scale X]] [--weights stored|bf16|q8_0|q4_k]\n");
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
        const char *a = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "peftd: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--model")) o.model_dir = v;
        else if (!strcmp(a, "--prompt")) o.prompt = v;
        else if (!strcmp(a, "--adapter")) o.adapter_dir = v;
        else if (!strcmp(a, "--weights")) o.weights = v;
        else if (!strcmp(a, "--adapter-scale")) { if (parse_float(a, v, 0, 16, &o.adapter_scale)) return 2; o.scale_set = true; }
        else if (!strcmp(a, "--max-tokens")) { if (parse_long(a, v, 1, INT_MAX / 2, &o.max_tokens)) return 2; }
        else if (!strcmp(a, "--temperature")) { if (parse_float(a, v, 0, 100, &o.temperature)) return 2; }
        else if (!strcmp(a, "--top-p")) { if (parse_float(a, v, 1e-6, 1, &o.top_p)) return 2; }
        else if (!strcmp(a, "--top-k")) { if (parse_long(a, v, 0, INT_MAX, &o.top_k)) return 2; }
        else if (!strcmp(a, "--threads")) { if (parse_long(a, v, 0, 1024, &o.threads)) return 2; }
        else if (!strcmp(a, "--seed")) { if (parse_long(a, v, LONG_MIN, LONG_MAX, &o.seed)) return 2; o.has_seed = true; }
        else {
            fprintf(stderr, "peftd: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
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
        const char *a = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "peftd: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
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
        else if (!strcmp(a, "--store")) snprintf(cfg->store.dir, sizeof cfg->store.dir, "%s", v);
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
        } else {
            fprintf(stderr, "peftd: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    return 0;
}

static int cmd_serve(int argc, char **argv) {
    /* A SIGTERM while the model loads, or after /health answers but before the loop's
     * handlers exist, is recorded and acted on once they do (exit 0), not the default
     * action's death by signal. */
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
        printf("peftd %s\n", PEFTD_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "serve")) return cmd_serve(argc, argv);
    if (!strcmp(argv[1], "generate")) return cmd_generate(argc, argv);
    fprintf(stderr, "peftd: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
