/* server/config.h — the daemon's configuration: conf/peftd.json, overridden by flags. */
#ifndef PEFTD_CONFIG_H
#define PEFTD_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "server/engine/engine.h"
#include "server/http/http_server.h"

typedef struct {
    char model_dir[4096];
    char chat_template[4096]; /* "chat_template": a template file overriding the model's ("" = the model's) */
    char host[256];
    int port;
    int threads;              /* CPU backend worker threads (0 = one per core) */
    bool fast_prefill;        /* CPU: OpenBLAS for big f32 batches (faster, not batch-invariant) */
    char backend[16];         /* "auto" (CUDA when a device exists, else CPU) | "cpu" | "cuda" */
    char weights[16];         /* layer projections at load: "stored" | "bf16" | "q8_0" | "q4_k"
                               * (server/model/model_quant.h) */
    bool mmap;                /* weight files mapped (default) or read into huge-page memory
                               * (false; --no-mmap: model_load_opts.no_mmap) */
    bool weights_cache;       /* "weights" q8_0 / q4_k conversions kept in <store.dir>/weights-cache
                               * and read back at the next start (default true; --no-weights-cache;
                               * server/model/model_quant_cache.h) */
    int weights_cache_max_mb; /* its size budget, applied at start-up by mqc_prune (0 = no limit) */
    int shutdown_grace_s;     /* SIGTERM: let in-flight requests finish this long, then cancel */
    size_t max_body_bytes;
    int http_threads;
    int http_timeout_s;       /* idle connection timeout (0 = the server's default) */
    int http_max_connections; /* 0 = derived from the file-descriptor limit */
    int http_max_uploads;     /* adapter uploads at once; 0 = derived from the file-descriptor limit */
    int http_import_threads;  /* threads importing finished uploads; 0 = 2 */
    int http_import_queue;    /* finished uploads waiting for an import thread; 0 = 8 per thread */
    char cors_origins[8][256];  /* http.cors_origins: browser origins allowed ("" = unused) */
    char served_model_names[8][128]; /* "served_model_name": aliases the base model also answers to
                                      * in `model` and is listed under in /v1/models ("" = unused) */
    bool http_vllm_metric_aliases; /* http.vllm_metric_aliases: /metrics also gives the vllm:-named
                                    * families an endpoint picker reads by default (api_metrics_vllm.c) */
    engine_config engine;
    struct {
        char dir[4096];       /* LMDB environment directory (created if absent) */
        int map_mb;           /* initial map size */
        int max_map_mb;       /* growth limit: beyond it uploads answer 507 */
        int host_cache_mb;    /* host tier of adapter blobs */
        int slots;            /* decoded adapters resident at once */
        int max_upload_mb;    /* PUT /v1/adapters body limit */
        char load_roots[4][4096]; /* store.load_roots: directories POST /v1/load_lora_adapter may
                                   * import from ("" = unused; none = the endpoint answers 404) */
        int changes_retain;   /* change-feed records kept for followers (store_changes.h) */
        char follow[512];     /* "": a primary; else the primary's base URL: this peftd is a
                               * read-only follower mirroring it (server/replication/) */
        char follow_key_env[128]; /* names the variable holding the key sent to the primary */
        int follow_poll_ms;   /* how often a caught-up follower asks for new changes */
    } store;
    struct {                  /* "log": reloaded on SIGHUP */
        char level[16];       /* debug|info|warn|error; "" = PEFTD_LOG or info */
        char format[16];      /* text|json: event and access lines */
        char access[4096];    /* access log: "stderr" (default), "off" or a file path */
    } log;
    struct {                  /* "auth": tenants and API keys (server/tenants/tenants.h) */
        bool enabled;         /* default false: a local single-user run needs no key */
        char admin_key_env[128];     /* names the environment variable holding the admin key */
        char admin_key_sha256[65];   /* or the key's sha256 hex: the key itself never sits in a file */
        bool allow_unauthenticated;  /* listen beyond loopback with auth off: must be said explicitly */
    } auth;
    int n_adapters;           /* "adapters": {"name": "dir", ...} preloaded at start-up */
    struct config_adapter {
        char name[65];
        char dir[4096];
    } *adapters;
} peftd_config;

void config_default(peftd_config *c);
void config_free(peftd_config *c); /* frees the adapter list */
/* Appends one preloaded adapter (also used by `--adapter NAME=DIR`). */
int config_add_adapter(peftd_config *c, const char *name, const char *dir, char *err, size_t errlen);
/* Adds one alias of the base model ("served_model_name", `--served-model-name`). */
int config_add_served_name(peftd_config *c, const char *name, char *err, size_t errlen);
/* Reads a JSON config file over the current values; unknown keys are errors (typos must
 * not be silently ignored). @note err gets a message naming the key on failure. */
int config_load(peftd_config *c, const char *path, char *err, size_t errlen);

/* `peftd serve --help`'s configuration part: every key of the file (from the one table
 * config_load reads, so none can go undocumented) with its type, range and a line of
 * description, then every environment variable the daemon reads. */
void config_help(FILE *f);
int config_key_count(void); /* the keys config_help lists (tests compare) */
/* Auth is on by default where it matters: a host beyond loopback (anything but 127.x.x.x,
 * ::1, localhost) with auth.enabled false is refused unless auth.allow_unauthenticated is
 * true. Returns 0, or PEFTD_EINVAL with a message naming the fields. */
int config_check_exposure(const peftd_config *c, char *err, size_t errlen);

#endif
