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

void config_default(peftd_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->model_dir, sizeof c->model_dir, "models/stories260K");
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    c->port = 8080;
    c->threads = 0;
    snprintf(c->backend, sizeof c->backend, "auto");
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
        snprintf(err, errlen, "adapter name \"%.80s\" is invalid (1-64 of [A-Za-z0-9._-], not starting with . or -)",
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
} config_key;

static bool backend_ok(const peftd_config *c) {
    return !strcmp(c->backend, "auto") || !strcmp(c->backend, "cpu") || !strcmp(c->backend, "cuda");
}
static bool store_map_ok(const peftd_config *c) { return c->store.max_map_mb >= c->store.map_mb; }
static bool log_level_ok(const peftd_config *c) { return log_level_parse(c->log.level[0] ? c->log.level : "info") >= 0; }
static bool log_format_ok(const peftd_config *c) { return log_format_parse(c->log.format) >= 0; }
static bool admin_sha_ok(const peftd_config *c) {
    return !c->auth.admin_key_sha256[0] || strspn(c->auth.admin_key_sha256, "0123456789abcdef") == 64;
}

#define F(field) offsetof(peftd_config, field)
#define STR(sec, k, field) {sec, k, CK_STR, 0, 0, F(field), sizeof(((peftd_config *)0)->field), NULL, NULL}
#define INT(sec, k, lo, hi, field) {sec, k, CK_INT, lo, hi, F(field), 0, NULL, NULL}
#define CHECK(sec, k, fn, m) {sec, k, CK_CHECK, 0, 0, 0, 0, fn, m}

/* Every key, in the order it is read (the first error wins). */
static const config_key KEYS[] = {
    STR(NULL, "model", model_dir),
    STR(NULL, "host", host),
    STR(NULL, "chat_template", chat_template),
    INT(NULL, "port", 0, 65535, port),
    INT(NULL, "threads", 0, 1024, threads),
    STR(NULL, "backend", backend),
    CHECK(NULL, "backend", backend_ok, "\"backend\" must be \"auto\", \"cpu\" or \"cuda\""),
    INT(NULL, "shutdown_grace_s", 0, 3600, shutdown_grace_s),
    {NULL, "fast_prefill", CK_BOOL, 0, 0, F(fast_prefill), 0, NULL, "\"fast_prefill\" must be true or false"},
    {NULL, "comment", CK_IGNORE, 0, 0, 0, 0, NULL, NULL},
    {"http", "max_body_bytes", CK_SIZE, 1024, 1 << 30, F(max_body_bytes), 0, NULL, NULL},
    INT("http", "threads", 1, 256, http_threads),
    INT("http", "timeout_s", 0, 86400, http_timeout_s),
    INT("http", "max_connections", 0, 1 << 20, http_max_connections),
    INT("http", "max_uploads", 0, 1 << 20, http_max_uploads),
    INT("http", "import_threads", 0, 64, http_import_threads),
    INT("http", "import_queue", 0, 1 << 16, http_import_queue),
    {"http", "vllm_metric_aliases", CK_BOOL, 0, 0, F(http_vllm_metric_aliases), 0, NULL,
     "http.vllm_metric_aliases must be true or false"},
    INT("engine", "max_seqs", 1, 4096, engine.max_seqs),
    INT("engine", "max_batch_tokens", 1, 65536, engine.max_batch_tokens),
    INT("engine", "block_size", 1, 1024, engine.block_size),
    INT("engine", "kv_blocks", 0, 1 << 24, engine.kv_blocks),
    INT("engine", "kv_cache_mb", 1, 1 << 22, engine.kv_cache_mb),
    INT("engine", "max_context", 0, 1 << 24, engine.max_context),
    INT("engine", "max_queue", 1, 1 << 20, engine.max_queue),
    STR("store", "dir", store.dir),
    INT("store", "map_mb", 1, 1 << 20, store.map_mb),
    INT("store", "max_map_mb", 1, 1 << 24, store.max_map_mb),
    INT("store", "host_cache_mb", 1, 1 << 20, store.host_cache_mb),
    INT("store", "slots", 1, 1 << 16, store.slots),
    INT("store", "max_upload_mb", 1, 1 << 20, store.max_upload_mb),
    {"store", "load_roots", CK_IGNORE, 0, 0, 0, 0, NULL, NULL}, /* load_roots() below */
    CHECK("store", "max_map_mb", store_map_ok, "store.max_map_mb must be >= store.map_mb"),
    STR("log", "level", log.level),
    STR("log", "format", log.format),
    STR("log", "access", log.access),
    CHECK("log", "level", log_level_ok, "log.level must be debug, info, warn or error"),
    CHECK("log", "format", log_format_ok, "log.format must be text or json"),
    {"auth", "enabled", CK_BOOL, 0, 0, F(auth.enabled), 0, NULL, "auth.enabled must be true or false"},
    STR("auth", "admin_key_env", auth.admin_key_env),
    STR("auth", "admin_key_sha256", auth.admin_key_sha256),
    {"auth", "allow_unauthenticated", CK_BOOL, 0, 0, F(auth.allow_unauthenticated), 0, NULL,
     "auth.allow_unauthenticated must be true or false"},
    CHECK("auth", "admin_key_sha256", admin_sha_ok,
          "auth.admin_key_sha256 must be 64 lowercase hex digits (sha256sum of the key)"),
    {"auth", "comment", CK_IGNORE, 0, 0, 0, 0, NULL, NULL},
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
    const cJSON *ads = cJSON_GetObjectItemCaseSensitive(root, "adapters");
    if (!st && ads) st = load_adapters(c, ads, path, err, errlen);
    cJSON_Delete(root);
    return st;
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
