/* clients/loadgen/loadgen_args.c — peftd-loadgen's command line: the --help text, option
 * parsing with range checks, and turning the options into an lg_config (keys from a list
 * or a file, tenants, the adapter list, the base URL). Calls nothing else in
 * clients/loadgen/.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "clients/loadgen/loadgen_internal.h"

/* Options that need each other before they become an lg_config. */
typedef struct {
    const char *adapters, *prefix, *keys, *keys_file;
    int adapter_count;
} lg_args_raw;

void lg_usage(FILE *f) {
    fprintf(f,
            "usage: peftd-loadgen [options]\n"
            "  --url URL               server base URL (default http://127.0.0.1:8080)\n"
            "  --clients N             concurrent streaming clients (default 16)\n"
            "  --duration S            seconds to start new requests (default 10); in-flight ones finish\n"
            "  --tenants K             tenants (default: the number of keys, else 1)\n"
            "  --api-key K1,K2,...     one key per tenant (Authorization: Bearer); none = auth off\n"
            "  --keys-file FILE        keys, one per line\n"
            "  --adapters A,B,...      adapter names in popularity order ('-' = the base model)\n"
            "  --adapter-prefix P --adapter-count M\n"
            "                          adapters P0 .. P(M-1)\n"
            "  --zipf-s S              zipf exponent of adapter popularity (default 1.0; 0 = uniform)\n"
            "  --model NAME            the `model` when no adapter is named (default: the base, by /v1/models)\n"
            "  --max-tokens N          per request (default 64)\n"
            "  --temperature T         (default 1.0)\n"
            "  --stream / --no-stream  SSE streaming (default on)\n"
            "  --seed S                choice sequence seed (default 1)\n"
            "  --timeout S             per request (default 300)\n"
            "  --drain S               after --duration, wait this long for in-flight requests (default 120)\n"
            "  --pid P                 sample VmRSS of process P (start, after warm-up, end, max)\n"
            "  --warmup S              when the after-warm-up RSS sample is taken (default 10)\n"
            "  --json FILE             write the report as JSON\n"
            "  --quiet                 no per-failure messages\n"
            "exit status: 0 every request ok, 1 some failed, 2 usage, 3 setup error\n");
}

static int parse_num(const char *opt, const char *v, double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || !end || *end || d < lo || d > hi) {
        fprintf(stderr, "peftd-loadgen: %s expects a number in [%g, %g], got '%s'\n", opt, lo, hi, v);
        return -1;
    }
    *out = d;
    return 0;
}

/* Splits a comma-separated list into a NULL-terminated array of strdup'd, trimmed items. */
static char **split_list(const char *s, int *n) {
    int cap = 8, k = 0;
    char **v = malloc((size_t)cap * sizeof *v);
    if (!v) return NULL;
    const char *p = s;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
        if (len) {
            if (k + 1 >= cap) {
                cap *= 2;
                char **nv = realloc(v, (size_t)cap * sizeof *v);
                if (!nv) return NULL;
                v = nv;
            }
            v[k++] = strndup(p, len);
        }
        if (!e) break;
        p = e + 1;
    }
    v[k] = NULL;
    *n = k;
    return v;
}

static char **read_keys_file(const char *path, int *n) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    int cap = 8, k = 0;
    char **v = malloc((size_t)cap * sizeof *v);
    char line[4096];
    while (v && fgets(line, sizeof line, f)) {
        size_t len = strcspn(line, "\r\n");
        line[len] = 0;
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (!*p || *p == '#') continue;
        if (k + 1 >= cap) {
            cap *= 2;
            char **nv = realloc(v, (size_t)cap * sizeof *v);
            if (!nv) break;
            v = nv;
        }
        v[k++] = strdup(p);
    }
    fclose(f);
    if (v) v[k] = NULL;
    *n = k;
    return v;
}

/* The option loop: 0, LG_ARGS_HELP, or -1 (message printed). */
static int parse_options(lg_config *cfg, lg_args_raw *raw, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        double d;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            lg_usage(stdout);
            return LG_ARGS_HELP;
        }
        if (!strcmp(a, "--stream")) { cfg->stream = true; continue; }
        if (!strcmp(a, "--no-stream")) { cfg->stream = false; continue; }
        if (!strcmp(a, "--quiet")) { cfg->quiet = true; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "peftd-loadgen: %s needs a value (see --help)\n", a);
            return -1;
        }
        const char *v = argv[++i];
#define NUM(lo, hi) \
    if (parse_num(a, v, lo, hi, &d)) return -1
        if (!strcmp(a, "--url")) cfg->url = v;
        else if (!strcmp(a, "--clients")) { NUM(1, 100000); cfg->clients = (int)d; }
        else if (!strcmp(a, "--duration")) { NUM(0, 1e7); cfg->duration_s = d; }
        else if (!strcmp(a, "--tenants")) { NUM(1, LG_MAX_TENANTS); cfg->tenants = (int)d; }
        else if (!strcmp(a, "--api-key")) raw->keys = v;
        else if (!strcmp(a, "--keys-file")) raw->keys_file = v;
        else if (!strcmp(a, "--adapters")) raw->adapters = v;
        else if (!strcmp(a, "--adapter-prefix")) raw->prefix = v;
        else if (!strcmp(a, "--adapter-count")) { NUM(1, 1e6); raw->adapter_count = (int)d; }
        else if (!strcmp(a, "--zipf-s")) { NUM(0, 100); cfg->zipf_s = d; }
        else if (!strcmp(a, "--model")) cfg->model = v;
        else if (!strcmp(a, "--max-tokens")) { NUM(1, 1e6); cfg->max_tokens = (int)d; }
        else if (!strcmp(a, "--temperature")) { NUM(0, 100); cfg->temperature = d; }
        else if (!strcmp(a, "--seed")) { NUM(0, 9e15); cfg->seed = (uint64_t)d; }
        else if (!strcmp(a, "--timeout")) { NUM(0.001, 1e7); cfg->timeout_s = d; }
        else if (!strcmp(a, "--drain")) { NUM(0, 1e7); cfg->drain_s = d; }
        else if (!strcmp(a, "--pid")) { NUM(1, 1e9); cfg->pid = (long)d; }
        else if (!strcmp(a, "--warmup")) { NUM(0, 1e7); cfg->warmup_s = d; }
        else if (!strcmp(a, "--json")) cfg->json_path = v;
        else {
            fprintf(stderr, "peftd-loadgen: unknown option %s (see --help)\n", a);
            return -1;
        }
#undef NUM
    }
    return 0;
}

/* Keys (a list or a file) and the tenant count they imply: 0 or -1 (message printed). */
static int setup_keys(lg_config *cfg, const lg_args_raw *raw) {
    if (raw->keys && raw->keys_file) {
        fprintf(stderr, "peftd-loadgen: use --api-key or --keys-file, not both\n");
        return -1;
    }
    if (raw->keys) cfg->keys = split_list(raw->keys, &cfg->n_keys);
    if (raw->keys_file && !(cfg->keys = read_keys_file(raw->keys_file, &cfg->n_keys))) {
        fprintf(stderr, "peftd-loadgen: cannot read %s: %s\n", raw->keys_file, strerror(errno));
        return -1;
    }
    if ((raw->keys || raw->keys_file) && cfg->n_keys == 0) {
        fprintf(stderr, "peftd-loadgen: no API keys given\n");
        return -1;
    }
    if (!cfg->tenants) cfg->tenants = cfg->n_keys ? cfg->n_keys : 1;
    if (cfg->n_keys && cfg->n_keys != cfg->tenants) {
        fprintf(stderr, "peftd-loadgen: %d keys for %d tenants: give one key per tenant\n", cfg->n_keys,
                cfg->tenants);
        return -1;
    }
    return 0;
}

/* The adapter list in popularity order (NULL entries = the base model): 0 or -1. */
static int setup_adapters(lg_config *cfg, const lg_args_raw *raw) {
    if (raw->adapters) {
        cfg->adapters = split_list(raw->adapters, &cfg->n_adapters);
        for (int i = 0; cfg->adapters && i < cfg->n_adapters; i++)
            if (!strcmp(cfg->adapters[i], "-")) {
                free(cfg->adapters[i]);
                cfg->adapters[i] = NULL;
            }
    } else if (raw->prefix) {
        cfg->n_adapters = raw->adapter_count;
        cfg->adapters = calloc((size_t)raw->adapter_count + 1, sizeof *cfg->adapters);
        for (int i = 0; cfg->adapters && i < raw->adapter_count; i++) {
            char name[512];
            snprintf(name, sizeof name, "%s%d", raw->prefix, i);
            cfg->adapters[i] = strdup(name);
        }
    } else {
        cfg->n_adapters = 1;
        cfg->adapters = calloc(2, sizeof *cfg->adapters); /* the base model only */
    }
    if (!cfg->adapters || cfg->n_adapters < 1) {
        fprintf(stderr, "peftd-loadgen: no adapters\n");
        return -1;
    }
    return 0;
}

int lg_args_parse(lg_config *cfg, int argc, char **argv) {
    *cfg = (lg_config){.url = "http://127.0.0.1:8080", .clients = 16, .duration_s = 10, .warmup_s = 10,
                       .timeout_s = 300, .drain_s = 120, .tenants = 0, .zipf_s = 1.0, .max_tokens = 64,
                       .temperature = 1.0, .stream = true, .seed = 1};
    lg_args_raw raw = {0};
    int rc = parse_options(cfg, &raw, argc, argv);
    if (rc) return rc;
    if ((raw.adapters && raw.prefix) || (raw.prefix && raw.adapter_count < 1) || (!raw.prefix && raw.adapter_count)) {
        fprintf(stderr, "peftd-loadgen: use --adapters, or --adapter-prefix with --adapter-count\n");
        return -1;
    }
    if (setup_keys(cfg, &raw) || setup_adapters(cfg, &raw)) return -1;
    size_t ul = strlen(cfg->url);
    char *url = strdup(cfg->url);
    while (ul && url[ul - 1] == '/') url[--ul] = 0;
    cfg->url = cfg->url_buf = url;
    return 0;
}
