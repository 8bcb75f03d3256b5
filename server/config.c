/* server/config.c — parses conf/peftd.json (see config.h for the fields): one table of
 * every key (section, name, type, bounds, where it goes) read by one loop; the checks that
 * span keys (backend names, log level/format, store map sizes, the admin key's form) are
 * rows of the same table, run in their place. */
#include "server/config.h"

#include <cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/json_check.h"
#include "adapter_store/registry.h"
#include "lib/log.h"
#include "lib/status.h"
#include "server/model/model_quant.h"

void config_default(peftd_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->model_dir, sizeof c->model_dir, "models/stories260K");
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    c->port = 8080;
    c->threads = 0;
    snprintf(c->backend, sizeof c->backend, "auto");
    snprintf(c->weights, sizeof c->weights, "stored");
    c->mmap = true;
    c->weights_cache = true;
    c->weights_cache_max_mb = 32768;
    c->shutdown_grace_s = 10;
    c->max_body_bytes = 1 << 20;
    c->http_threads = 4;
    engine_config_default(&c->engine);
    snprintf(c->store.dir, sizeof c->store.dir, "var/store");
    c->store.map_mb = 64;
    c->store.max_map_mb = 64 * 1024;
    c->store.host_cache_mb = 256;
    c->store.slots = 64;
    c->store.max_upload_mb = 2048;
    c->store.changes_retain = 100000;
    c->store.follow_poll_ms = 200;
    snprintf(c->log.format, sizeof c->log.format, "text");
    snprintf(c->log.access, sizeof c->log.access, "stderr");
}

void config_free(peftd_config *c) {
    free(c->adapters);
    c->adapters = NULL;
    c->n_adapters = 0;
}

int config_add_adapter(peftd_config *c, const char *name, const char *dir, char *err, size_t errlen) {
    if (!registry_name_valid(name)) {
        snprintf(err, errlen,
                 "adapter name \"%.80s\" is invalid (1-64 characters, segments of [A-Za-z0-9._-] separated by '/', "
                 "none empty or starting with . or -)",
                 name);
        return PEFTD_EINVAL;
    }
    if (strlen(dir) >= sizeof c->adapters[0].dir || !dir[0]) {
        snprintf(err, errlen, "adapter \"%s\": directory path empty or too long", name);
        return PEFTD_EINVAL;
    }
    for (int i = 0; i < c->n_adapters; i++)
        if (!strcmp(c->adapters[i].name, name)) {
            snprintf(err, errlen, "adapter \"%s\" listed twice", name);
            return PEFTD_EINVAL;
        }
    struct config_adapter *a = realloc(c->adapters, (size_t)(c->n_adapters + 1) * sizeof *a);
    if (!a) return PEFTD_ENOMEM;
    c->adapters = a;
    snprintf(a[c->n_adapters].name, sizeof a->name, "%s", name);
    snprintf(a[c->n_adapters].dir, sizeof a->dir, "%s", dir);
    c->n_adapters++;
    return 0;
}

typedef enum {
    CK_STR,    /* non-empty string, copied into a char[cap] */
    CK_INT,    /* integer in [lo, hi] into an int */
    CK_SIZE,   /* integer in [lo, hi] into a size_t */
    CK_BOOL,   /* true or false into a bool; msg is the error */
    CK_IGNORE, /* allowed, not read ("comment") */
    CK_CHECK,  /* not a key: ok(c) must hold once the rows above are read; msg is the error */
} config_key_type;

typedef struct {
    const char *section; /* NULL: top level */
    const char *key;     /* CK_CHECK: the key the check is about, for nothing but reading */
    config_key_type type;
    long lo, hi;
    size_t off, cap;
    bool (*ok)(const peftd_config *c);
    const char *msg; /* after "<path>: " */
    const char *doc; /* one line for `peftd serve --help` (config_help; every key has one) */
} config_key;

static bool backend_ok(const peftd_config *c) {
    return !strcmp(c->backend, "auto") || !strcmp(c->backend, "cpu") || !strcmp(c->backend, "cuda");
}
static bool weights_ok(const peftd_config *c) {
    int dt;
    return model_weights_parse(c->weights, &dt) == 0;
}
static bool kv_dtype_ok(const peftd_config *c) { return engine_kv_dtype_parse(c->engine.kv_dtype) >= 0; }
static bool store_map_ok(const peftd_config *c) { return c->store.max_map_mb >= c->store.map_mb; }
static bool follow_ok(const peftd_config *c) {
    return !c->store.follow[0] || !strncmp(c->store.follow, "http://", 7) || !strncmp(c->store.follow, "https://", 8);
}
static bool log_level_ok(const peftd_config *c) { return log_level_parse(c->log.level[0] ? c->log.level : "info") >= 0; }
static bool log_format_ok(const peftd_config *c) { return log_format_parse(c->log.format) >= 0; }
static bool admin_sha_ok(const peftd_config *c) {
    return !c->auth.admin_key_sha256[0] || strspn(c->auth.admin_key_sha256, "0123456789abcdef") == 64;
}

#define F(field) offsetof(peftd_config, field)
#define STR(sec, k, field, d) {sec, k, CK_STR, 0, 0, F(field), sizeof(((peftd_config *)0)->field), NULL, NULL, d}
#define INT(sec, k, lo, hi, field, d) {sec, k, CK_INT, lo, hi, F(field), 0, NULL, NULL, d}
#define BOOL(sec, k, field, m, d) {sec, k, CK_BOOL, 0, 0, F(field), 0, NULL, m, d}
#define IGNORE(sec, k, d) {sec, k, CK_IGNORE, 0, 0, 0, 0, NULL, NULL, d}
#define CHECK(sec, k, fn, m) {sec, k, CK_CHECK, 0, 0, 0, 0, fn, m, NULL}

/* Every key, in the order it is read (the first error wins). */
static const config_key KEYS[] = {
    STR(NULL, "model", model_dir, "model directory (Hugging Face layout) or a .gguf file (or a directory holding one); --model"),
    STR(NULL, "host", host, "listen address (default 127.0.0.1); --host"),
    STR(NULL, "chat_template", chat_template, "chat template file overriding the model's"),
    INT(NULL, "port", 0, 65535, port, "listen port (default 8080, 0 = any free port); --port"),
    INT(NULL, "threads", 0, 1024, threads, "CPU backend worker threads (0 = one per core); --threads"),
    STR(NULL, "backend", backend, "auto | cpu | cuda (PEFTD_BACKEND overrides)"),
    IGNORE(NULL, "served_model_name",
           "string or array of at most 8: more names of the base model in `model` and /v1/models; --served-model-name"),
    CHECK(NULL, "backend", backend_ok, "\"backend\" must be \"auto\", \"cpu\" or \"cuda\""),
    STR(NULL, "weights", weights, "stored | bf16 | q8_0 | q4_k: the layer projections at load (default stored); --weights"),
    CHECK(NULL, "weights", weights_ok, "\"weights\" must be \"stored\", \"bf16\", \"q8_0\" or \"q4_k\""),
    BOOL(NULL, "weights_cache", weights_cache, "\"weights_cache\" must be true or false",
         "keep \"weights\" q8_0 / q4_k conversions in <store.dir>/weights-cache and read them back at the next start "
         "with the same weight files (checked by sha256; default true); --no-weights-cache"),
    INT(NULL, "weights_cache_max_mb", 0, 1 << 30, weights_cache_max_mb,
        "weights cache size in MiB: at start-up the least recently used conversions beyond it are removed, never the "
        "model's own (default 32768, 0 = no limit); files of moved or deleted model directories always are"),
    BOOL(NULL, "mmap", mmap, "\"mmap\" must be true or false",
         "weight files mapped read-only (default true); false: read once into private memory advised for 2 MiB "
         "pages (faster decode where file mappings get 4 KiB pages; costs the model's size in RAM); --no-mmap"),
    INT(NULL, "shutdown_grace_s", 0, 3600, shutdown_grace_s, "SIGTERM: seconds in-flight requests may finish (default 10)"),
    BOOL(NULL, "fast_prefill", fast_prefill, "\"fast_prefill\" must be true or false",
         "CPU: OpenBLAS for large f32 prefills (faster, not batch-invariant; default false)"),
    IGNORE(NULL, "comment", "free text, ignored"),
    {"http", "max_body_bytes", CK_SIZE, 1024, 1 << 30, F(max_body_bytes), 0, NULL, NULL,
     "larger request bodies get 413 (default 1 MiB)"},
    INT("http", "threads", 1, 256, http_threads, "HTTP worker threads (default 4)"),
    INT("http", "timeout_s", 0, 86400, http_timeout_s, "idle connection timeout (0 = 15 s)"),
    INT("http", "max_connections", 0, 1 << 20, http_max_connections, "open connections (0 = from RLIMIT_NOFILE)"),
    INT("http", "max_uploads", 0, 1 << 20, http_max_uploads, "adapter uploads at once (0 = from RLIMIT_NOFILE)"),
    INT("http", "import_threads", 0, 64, http_import_threads, "threads importing finished uploads (0 = 2)"),
    INT("http", "import_queue", 0, 1 << 16, http_import_queue, "finished uploads waiting to import (0 = 8 per thread)"),
    IGNORE("http", "cors_origins", "array of at most 8 origins (\"https://app.example\", or \"*\") that get CORS headers"),
    BOOL("http", "vllm_metric_aliases", http_vllm_metric_aliases, "http.vllm_metric_aliases must be true or false",
         "/metrics also gives vllm:-named families (default false)"),
    INT("engine", "max_seqs", 1, 4096, engine.max_seqs, "sequences per engine step"),
    INT("engine", "max_batch_tokens", 1, 65536, engine.max_batch_tokens, "token rows per step (bounds prefill chunks)"),
    INT("engine", "block_size", 1, 1024, engine.block_size, "KV slots per block"),
    INT("engine", "kv_blocks", 0, 1 << 24, engine.kv_blocks, "KV blocks in the pool (0 = from kv_cache_mb)"),
    INT("engine", "kv_cache_mb", 0, 1 << 22, engine.kv_cache_mb,
        "KV pool budget in MiB (0: on a GPU, from the device memory plan; on the CPU, 512)"),
    STR("engine", "kv_dtype", engine.kv_dtype, "f32 | f16: the KV cache's elements (default f32; f16: half the memory, CPU); --kv-dtype"),
    CHECK("engine", "kv_dtype", kv_dtype_ok, "engine.kv_dtype must be \"f32\" or \"f16\""),
    INT("engine", "max_context", 0, 1 << 24, engine.max_context, "longest sequence (0 = the model's, fitted to the KV pool)"),
    INT("engine", "max_queue", 1, 1 << 20, engine.max_queue, "waiting requests before 503"),
    BOOL("engine", "prefix_cache", engine.prefix_cache, "engine.prefix_cache must be true or false",
         "automatic prefix caching of full prompt KV blocks (default true)"),
    INT("engine", "prefix_cache_blocks", 0, 1 << 24, engine.prefix_cache_blocks, "cached blocks at most (0 = the pool)"),
    STR("store", "dir", store.dir, "adapter store (LMDB) directory (default var/store); --store"),
    INT("store", "map_mb", 1, 1 << 20, store.map_mb, "initial LMDB map size in MiB"),
    INT("store", "max_map_mb", 1, 1 << 24, store.max_map_mb, "map growth limit in MiB (beyond: uploads get 507)"),
    INT("store", "host_cache_mb", 1, 1 << 20, store.host_cache_mb, "host tier of adapter blobs in MiB"),
    INT("store", "slots", 1, 1 << 16, store.slots, "decoded adapters resident at once"),
    INT("store", "max_upload_mb", 1, 1 << 20, store.max_upload_mb, "PUT /v1/adapters body limit in MiB"),
    IGNORE("store", "load_roots", "array of absolute directories POST /v1/load_lora_adapter may read (at most 4)"),
    CHECK("store", "max_map_mb", store_map_ok, "store.max_map_mb must be >= store.map_mb"),
    INT("store", "changes_retain", 1, 1 << 30, store.changes_retain, "change-feed records kept for followers"),
    STR("store", "follow", store.follow, "\"\": a primary; else the primary's base URL: a read-only follower; --follow"),
    CHECK("store", "follow", follow_ok, "store.follow must be an http:// or https:// URL"),
    STR("store", "follow_key_env", store.follow_key_env, "names the variable holding the key sent to the primary"),
    INT("store", "follow_poll_ms", 10, 60000, store.follow_poll_ms, "how often a caught-up follower asks for changes"),
    STR("log", "level", log.level, "debug | info | warn | error (PEFTD_LOG when unset)"),
    STR("log", "format", log.format, "text | json"),
    STR("log", "access", log.access, "access log: stderr (default), off or a file path"),
    CHECK("log", "level", log_level_ok, "log.level must be debug, info, warn or error"),
    CHECK("log", "format", log_format_ok, "log.format must be text or json"),
    BOOL("auth", "enabled", auth.enabled, "auth.enabled must be true or false", "tenants and API keys (default false)"),
    STR("auth", "admin_key_env", auth.admin_key_env, "names the environment variable holding the admin key"),
    STR("auth", "admin_key_sha256", auth.admin_key_sha256, "or the admin key's sha256 hex"),
    BOOL("auth", "allow_unauthenticated", auth.allow_unauthenticated, "auth.allow_unauthenticated must be true or false",
         "serve beyond loopback with auth off (default false: such a host is refused)"),
    CHECK("auth", "admin_key_sha256", admin_sha_ok,
          "auth.admin_key_sha256 must be 64 lowercase hex digits (sha256sum of the key)"),
    IGNORE("auth", "comment", "free text, ignored"),
};
#define N_KEYS (sizeof KEYS / sizeof KEYS[0])

/* The sections (objects) of the top level, read in this order after its own keys. */
static const char *const SECTIONS[] = {"http", "engine", "store", "log", "auth"};
#define N_SECTIONS (sizeof SECTIONS / sizeof SECTIONS[0])

static bool same_section(const char *a, const char *b) { return a == b || (a && b && !strcmp(a, b)); }

static bool key_known(const char *section, const char *key) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (KEYS[i].type != CK_CHECK && same_section(KEYS[i].section, section) && !strcmp(KEYS[i].key, key))
            return true;
    if (section) return false;
    for (size_t i = 0; i < N_SECTIONS; i++)
        if (!strcmp(SECTIONS[i], key)) return true;
    return !strcmp(key, "adapters");
}

/* One row: the value of obj[k->key] (absent is fine) into c, or the check. `where` is
 * "<path>: " or "<path>: <section>.", `path` the file. */
static int apply_key(peftd_config *c, const config_key *k, const cJSON *obj, const char *where, const char *path,
                     char *err, size_t errlen) {
    char *dst = (char *)c + k->off;
    if (k->type == CK_CHECK) {
        if (k->ok(c)) return 0;
        snprintf(err, errlen, "%s: %s", path, k->msg);
        return PEFTD_EINVAL;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, k->key);
    if (!v || k->type == CK_IGNORE) return 0;
    switch (k->type) {
    case CK_STR:
        if (!cJSON_IsString(v) || strlen(v->valuestring) >= k->cap || !v->valuestring[0]) {
            snprintf(err, errlen, "%s\"%s\" must be a non-empty string", where, k->key);
            return PEFTD_EINVAL;
        }
        snprintf(dst, k->cap, "%s", v->valuestring);
        return 0;
    case CK_BOOL:
        if (!cJSON_IsBool(v)) {
            snprintf(err, errlen, "%s: %s", path, k->msg);
            return PEFTD_EINVAL;
        }
        *(bool *)dst = cJSON_IsTrue(v);
        return 0;
    default: /* CK_INT, CK_SIZE: range first: casting a number outside long's range (1e300) is undefined */
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= k->lo && v->valuedouble <= k->hi) ||
            v->valuedouble != floor(v->valuedouble)) {
            snprintf(err, errlen, "%s\"%s\" must be an integer in [%ld, %ld]", where, k->key, k->lo, k->hi);
            return PEFTD_EINVAL;
        }
        if (k->type == CK_SIZE) *(size_t *)dst = (size_t)v->valuedouble;
        else *(int *)dst = (int)v->valuedouble;
        return 0;
    }
}

/* One object (the top level when section is NULL): unknown keys refused (typos must not
 * be silently ignored), then its rows of the table in order. */
static int load_object(peftd_config *c, const cJSON *obj, const char *section, const char *path, char *err,
                       size_t errlen) {
    char where[512];
    if (section) snprintf(where, sizeof where, "%s: %s.", path, section);
    else snprintf(where, sizeof where, "%s: ", path);
    if (!cJSON_IsObject(obj)) {
        snprintf(err, errlen, "%s: \"%s\" must be an object", path, section);
        return PEFTD_EINVAL;
    }
    for (const cJSON *it = obj->child; it; it = it->next)
        if (!key_known(section, it->string)) {
            snprintf(err, errlen, "%sunknown key \"%s\"", where, it->string);
            return PEFTD_EINVAL;
        }
    for (size_t i = 0; i < N_KEYS; i++) {
        if (!same_section(KEYS[i].section, section)) continue;
        int st = apply_key(c, &KEYS[i], obj, where, path, err, errlen);
        if (st < 0) return st;
    }
    return 0;
}

/* "adapters": {"name": "directory", ...} */
static int load_adapters(peftd_config *c, const cJSON *ads, const char *path, char *err, size_t errlen) {
    if (!cJSON_IsObject(ads)) {
        snprintf(err, errlen, "%s: \"adapters\" must be an object of name: directory", path);
        return PEFTD_EINVAL;
    }
    for (const cJSON *it = ads->child; it; it = it->next) {
        if (!cJSON_IsString(it)) {
            snprintf(err, errlen, "%s: adapters.\"%.80s\" must be a directory path string", path, it->string);
            return PEFTD_EINVAL;
        }
        char e2[512];
        int st = config_add_adapter(c, it->string, it->valuestring, e2, sizeof e2);
        if (st < 0) {
            snprintf(err, errlen, "%s: %s", path, e2);
            return st;
        }
    }
    return 0;
}

/* "store": {"load_roots": ["/dir", ...]}: at most 4 absolute directory paths. */
static int load_roots(peftd_config *c, const cJSON *store, const char *path, char *err, size_t errlen) {
    const cJSON *roots = cJSON_GetObjectItemCaseSensitive(store, "load_roots");
    if (!roots) return 0;
    int n = cJSON_IsArray(roots) ? cJSON_GetArraySize(roots) : -1;
    int cap = (int)(sizeof c->store.load_roots / sizeof c->store.load_roots[0]);
    if (n < 0 || n > cap) {
        snprintf(err, errlen, "%s: store.load_roots must be an array of at most %d directory paths", path, cap);
        return PEFTD_EINVAL;
    }
    memset(c->store.load_roots, 0, sizeof c->store.load_roots);
    int i = 0;
    for (const cJSON *it = roots->child; it; it = it->next, i++) {
        if (!cJSON_IsString(it) || it->valuestring[0] != '/' || strlen(it->valuestring) >= sizeof c->store.load_roots[0]) {
            snprintf(err, errlen, "%s: store.load_roots[%d] must be an absolute directory path", path, i);
            return PEFTD_EINVAL;
        }
        snprintf(c->store.load_roots[i], sizeof c->store.load_roots[i], "%s", it->valuestring);
    }
    return 0;
}

/* "http": {"cors_origins": ["https://app.example", ...]}: scheme://host[:port] or "*". */
static int load_cors(peftd_config *c, const cJSON *http, const char *path, char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(http, "cors_origins");
    if (!v) return 0;
    int cap = (int)(sizeof c->cors_origins / sizeof c->cors_origins[0]);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > cap) {
        snprintf(err, errlen, "%s: http.cors_origins must be an array of at most %d origins", path, cap);
        return PEFTD_EINVAL;
    }
    memset(c->cors_origins, 0, sizeof c->cors_origins);
    int i = 0;
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        const char *o = cJSON_IsString(it) ? it->valuestring : NULL;
        bool ok = o && strlen(o) < sizeof c->cors_origins[0] &&
                  (!strcmp(o, "*") || ((!strncmp(o, "http://", 7) || !strncmp(o, "https://", 8)) &&
                                       !strchr(strstr(o, "//") + 2, '/') && strspn(o, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:/[]") == strlen(o)));
        if (!ok) {
            snprintf(err, errlen, "%s: http.cors_origins[%d] must be \"*\" or an origin like \"https://host[:port]\" (no path)",
                     path, i);
            return PEFTD_EINVAL;
        }
        snprintf(c->cors_origins[i], sizeof c->cors_origins[i], "%s", o);
    }
    return 0;
}

/* "served_model_name": a name or an array of at most 8 (the same rules as adapter names,
 * "/" allowed: Hugging Face ids). */
static int load_served(peftd_config *c, const cJSON *root, const char *path, char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "served_model_name");
    if (!v) return 0;
    int cap = (int)(sizeof c->served_model_names / sizeof c->served_model_names[0]);
    if (cJSON_IsString(v)) return config_add_served_name(c, v->valuestring, err, errlen);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > cap) {
        snprintf(err, errlen, "%s: \"served_model_name\" must be a name or an array of at most %d names", path, cap);
        return PEFTD_EINVAL;
    }
    for (const cJSON *it = v->child; it; it = it->next) {
        int st = cJSON_IsString(it) ? config_add_served_name(c, it->valuestring, err, errlen) : PEFTD_EINVAL;
        if (st < 0) {
            if (!cJSON_IsString(it)) snprintf(err, errlen, "%s: \"served_model_name\" entries must be strings", path);
            return st;
        }
    }
    return 0;
}

int config_add_served_name(peftd_config *c, const char *name, char *err, size_t errlen) {
    int cap = (int)(sizeof c->served_model_names / sizeof c->served_model_names[0]), n = 0;
    size_t len = strlen(name);
    bool ok = len > 0 && len < sizeof c->served_model_names[0] && name[0] != '.' && name[0] != '-' && name[0] != '/' &&
              name[len - 1] != '/' && strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-/:") == len &&
              !strstr(name, "..") && !strstr(name, "//");
    if (!ok) {
        snprintf(err, errlen, "served model name \"%.80s\" is invalid (1-127 of [A-Za-z0-9._-/:], not starting with . - or /)",
                 name);
        return PEFTD_EINVAL;
    }
    while (n < cap && c->served_model_names[n][0]) {
        if (!strcmp(c->served_model_names[n], name)) return 0;
        n++;
    }
    if (n == cap) {
        snprintf(err, errlen, "at most %d served model names", cap);
        return PEFTD_EINVAL;
    }
    snprintf(c->served_model_names[n], sizeof c->served_model_names[n], "%s", name);
    return 0;
}

/* The file as a JSON object with no duplicate keys, or NULL with err set (*st the status). */
static cJSON *read_json(const char *path, int *st, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open", path);
        *st = PEFTD_EIO;
        return NULL;
    }
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    bool too_big = !feof(f);
    fclose(f);
    *st = PEFTD_EINVAL;
    if (too_big) {
        snprintf(err, errlen, "%s: larger than 64 KiB", path);
        return NULL;
    }
    buf[n] = 0;
    *st = PEFTD_EFORMAT;
    cJSON *root = cJSON_ParseWithLength(buf, n);
    if (!root || !cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        cJSON_Delete(root);
        return NULL;
    }
    if (json_duplicate_key(root)) {
        snprintf(err, errlen, "%s: the key \"%.64s\" appears twice in one object", path, json_duplicate_key(root));
        cJSON_Delete(root);
        return NULL;
    }
    *st = 0;
    return root;
}

int config_load(peftd_config *c, const char *path, char *err, size_t errlen) {
    int st;
    cJSON *root = read_json(path, &st, err, errlen);
    if (!root) return st;
    st = load_object(c, root, NULL, path, err, errlen);
    for (size_t i = 0; !st && i < N_SECTIONS; i++) {
        const cJSON *sec = cJSON_GetObjectItemCaseSensitive(root, SECTIONS[i]);
        if (sec) st = load_object(c, sec, SECTIONS[i], path, err, errlen);
    }
    const cJSON *store = cJSON_GetObjectItemCaseSensitive(root, "store");
    if (!st && store) st = load_roots(c, store, path, err, errlen);
    if (!st) st = load_served(c, root, path, err, errlen);
    const cJSON *http = cJSON_GetObjectItemCaseSensitive(root, "http");
    if (!st && http) st = load_cors(c, http, path, err, errlen);
    const cJSON *ads = cJSON_GetObjectItemCaseSensitive(root, "adapters");
    if (!st && ads) st = load_adapters(c, ads, path, err, errlen);
    cJSON_Delete(root);
    return st;
}

/* Environment variables the daemon reads (besides the one auth.admin_key_env names). */
static const struct {
    const char *name, *doc;
} ENV_VARS[] = {
    {"PEFTD_LOG", "log level when log.level is unset: debug | info | warn | error"},
    {"PEFTD_BACKEND", "overrides \"backend\": auto | cpu | cuda"},
    {"PEFTD_DEBUG_IMPORT_DELAY_MS", "test hook: every adapter import waits this long"},
    {"PEFTD_DEBUG_STEP_DELAY_US", "test hook: every engine step waits this long"},
    {"PEFTD_CPU_QPATH", "quantized matmul path: amx | vnni | avx2 | scalar (default: the best this CPU has)"},
    {"PEFTD_SLOT_POOL", "CUDA: 0 = no device adapter slot pool (an allocation per adapter instead)"},
    {"PEFTD_SLOT_MAX_RANK", "CUDA: LoRA rank a slot pool slot is sized for (all linears, f32; default 16)"},
    {"PEFTD_CUDA_GRAPHS", "1 = decode steps captured/replayed as CUDA graphs (default off: not yet validated)"},
    {"PEFTD_LYCO_FORM", "VeRA / LoHa / LoKr modules: lora | dense forces one form (default: per module, the one "
                        "reading fewer bytes: dense where rank*(in+out) > in*out)"},
    {"PEFTD_VERA_SHARED", "0 = copy VeRA's projection slices into every adapter (default: held once per process)"},
    {"PEFTD_ROT_FORM", "OFT / BOFT modules: factored | dense forces one form (default: per module, the one reading "
                       "fewer bytes: dense where out*in < the factors' blocks and permutations)"},
};

void config_help(FILE *f) {
    fprintf(f, "configuration file keys (--config FILE; unknown keys are an error):\n");
    for (size_t i = 0; i < N_KEYS; i++) {
        const config_key *k = &KEYS[i];
        if (k->type == CK_CHECK) continue;
        char name[64], range[48] = "";
        snprintf(name, sizeof name, "%s%s%s", k->section ? k->section : "", k->section ? "." : "", k->key);
        if (k->type == CK_INT || k->type == CK_SIZE) snprintf(range, sizeof range, " [%ld..%ld]", k->lo, k->hi);
        const char *type = k->type == CK_STR    ? "string"
                           : k->type == CK_BOOL ? "bool"
                           : k->type == CK_IGNORE ? (strcmp(k->key, "comment") ? "array" : "string")
                                                  : "int";
        fprintf(f, "  %-26s %s%s: %s\n", name, type, range, k->doc);
    }
    fprintf(f, "  %-26s %s: %s\n", "adapters", "object", "{\"name\": \"dir\", ...} preloaded at start-up; --adapter");
    fprintf(f, "environment variables:\n");
    for (size_t i = 0; i < sizeof ENV_VARS / sizeof ENV_VARS[0]; i++)
        fprintf(f, "  %-26s %s\n", ENV_VARS[i].name, ENV_VARS[i].doc);
    fprintf(f, "  %-26s %s\n", "(auth.admin_key_env)", "the variable that key names holds the admin key");
}

int config_key_count(void) {
    int n = 1; /* "adapters" */
    for (size_t i = 0; i < N_KEYS; i++) n += KEYS[i].type != CK_CHECK;
    return n;
}

int config_check_exposure(const peftd_config *c, char *err, size_t errlen) {
    const char *h = c->host;
    bool loopback = !strncmp(h, "127.", 4) || !strcmp(h, "::1") || !strcmp(h, "[::1]") || !strcmp(h, "localhost");
    if (loopback || c->auth.enabled || c->auth.allow_unauthenticated) return 0;
    snprintf(err, errlen,
             "host %s listens beyond loopback with auth.enabled false: turn auth on (auth.enabled, "
             "auth.admin_key_env) or set auth.allow_unauthenticated true to serve without keys", h);
    return PEFTD_EINVAL;
}
