/* server/config.c — parses conf/peftd.json (see config.h for the fields). */
#include "server/config.h"

#include <cJSON.h>
#include <math.h>
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

/* Reads an integer field within [lo, hi]; absent is fine. */
static int get_int(const cJSON *obj, const char *key, long lo, long hi, int *out, const char *where,
                   char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) return 0;
    /* range first: casting a number outside long's range (1e300) is undefined */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi) ||
        v->valuedouble != floor(v->valuedouble)) {
        snprintf(err, errlen, "%s\"%s\" must be an integer in [%ld, %ld]", where, key, lo, hi);
        return PEFTD_EINVAL;
    }
    *out = (int)v->valuedouble;
    return 0;
}

static int get_str(const cJSON *obj, const char *key, char *out, size_t cap, const char *where, char *err,
                   size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) return 0;
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= cap || !v->valuestring[0]) {
        snprintf(err, errlen, "%s\"%s\" must be a non-empty string", where, key);
        return PEFTD_EINVAL;
    }
    snprintf(out, cap, "%s", v->valuestring);
    return 0;
}

static int check_keys(const cJSON *obj, const char *const *allowed, const char *where, char *err, size_t errlen) {
    for (const cJSON *it = obj->child; it; it = it->next) {
        bool ok = false;
        for (int i = 0; allowed[i]; i++) ok |= strcmp(it->string, allowed[i]) == 0;
        if (!ok) {
            snprintf(err, errlen, "%sunknown key \"%s\"", where, it->string);
            return PEFTD_EINVAL;
        }
    }
    return 0;
}

int config_load(peftd_config *c, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open", path);
        return PEFTD_EIO;
    }
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    bool too_big = !feof(f);
    fclose(f);
    if (too_big) {
        snprintf(err, errlen, "%s: larger than 64 KiB", path);
        return PEFTD_EINVAL;
    }
    buf[n] = 0;
    cJSON *root = cJSON_ParseWithLength(buf, n);
    if (!root || !cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        cJSON_Delete(root);
        return PEFTD_EFORMAT;
    }
    if (json_duplicate_key(root)) {
        snprintf(err, errlen, "%s: the key \"%.64s\" appears twice in one object", path, json_duplicate_key(root));
        cJSON_Delete(root);
        return PEFTD_EFORMAT;
    }
    char where[512];
    snprintf(where, sizeof where, "%s: ", path);
    static const char *const top[] = {"model", "host", "port", "threads", "fast_prefill", "backend", "shutdown_grace_s", "http",
                                      "engine", "adapters", "store", "log", "auth", "chat_template", "comment", NULL};
    static const char *const http_keys[] = {"max_body_bytes", "threads",     "timeout_s",    "max_connections",
                                            "max_uploads",    "import_threads", "import_queue", NULL};
    static const char *const engine_keys[] = {"max_seqs", "max_batch_tokens", "block_size", "kv_blocks",
                                              "kv_cache_mb", "max_queue", NULL};
    static const char *const store_keys[] = {"dir", "map_mb", "max_map_mb", "host_cache_mb", "slots",
                                             "max_upload_mb", NULL};
    int st = check_keys(root, top, where, err, errlen);
    int body = (int)c->max_body_bytes;
    if (!st) st = get_str(root, "model", c->model_dir, sizeof c->model_dir, where, err, errlen);
    if (!st) st = get_str(root, "host", c->host, sizeof c->host, where, err, errlen);
    if (!st) st = get_str(root, "chat_template", c->chat_template, sizeof c->chat_template, where, err, errlen);
    if (!st) st = get_int(root, "port", 0, 65535, &c->port, where, err, errlen);
    if (!st) st = get_int(root, "threads", 0, 1024, &c->threads, where, err, errlen);
    if (!st) st = get_str(root, "backend", c->backend, sizeof c->backend, where, err, errlen);
    if (!st && strcmp(c->backend, "auto") && strcmp(c->backend, "cpu") && strcmp(c->backend, "cuda")) {
        snprintf(err, errlen, "%s\"backend\" must be \"auto\", \"cpu\" or \"cuda\"", where);
        st = PEFTD_EINVAL;
    }
    if (!st) st = get_int(root, "shutdown_grace_s", 0, 3600, &c->shutdown_grace_s, where, err, errlen);
    const cJSON *fp = cJSON_GetObjectItemCaseSensitive(root, "fast_prefill");
    if (!st && fp) {
        if (!cJSON_IsBool(fp)) {
            snprintf(err, errlen, "%s\"fast_prefill\" must be true or false", where);
            st = PEFTD_EINVAL;
        } else {
            c->fast_prefill = cJSON_IsTrue(fp);
        }
    }
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(root, "http");
    if (!st && h) {
        snprintf(where, sizeof where, "%s: http.", path);
        if (!cJSON_IsObject(h)) {
            snprintf(err, errlen, "%s: \"http\" must be an object", path);
            st = PEFTD_EINVAL;
        }
        if (!st) st = check_keys(h, http_keys, where, err, errlen);
        if (!st) st = get_int(h, "max_body_bytes", 1024, 1 << 30, &body, where, err, errlen);
        if (!st) st = get_int(h, "threads", 1, 256, &c->http_threads, where, err, errlen);
        if (!st) st = get_int(h, "timeout_s", 0, 86400, &c->http_timeout_s, where, err, errlen);
        if (!st) st = get_int(h, "max_connections", 0, 1 << 20, &c->http_max_connections, where, err, errlen);
        if (!st) st = get_int(h, "max_uploads", 0, 1 << 20, &c->http_max_uploads, where, err, errlen);
        if (!st) st = get_int(h, "import_threads", 0, 64, &c->http_import_threads, where, err, errlen);
        if (!st) st = get_int(h, "import_queue", 0, 1 << 16, &c->http_import_queue, where, err, errlen);
    }
    c->max_body_bytes = (size_t)body;
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(root, "engine");
    if (!st && en) {
        snprintf(where, sizeof where, "%s: engine.", path);
        engine_config *ec = &c->engine;
        if (!cJSON_IsObject(en)) {
            snprintf(err, errlen, "%s: \"engine\" must be an object", path);
            st = PEFTD_EINVAL;
        }
        if (!st) st = check_keys(en, engine_keys, where, err, errlen);
        if (!st) st = get_int(en, "max_seqs", 1, 4096, &ec->max_seqs, where, err, errlen);
        if (!st) st = get_int(en, "max_batch_tokens", 1, 65536, &ec->max_batch_tokens, where, err, errlen);
        if (!st) st = get_int(en, "block_size", 1, 1024, &ec->block_size, where, err, errlen);
        if (!st) st = get_int(en, "kv_blocks", 0, 1 << 24, &ec->kv_blocks, where, err, errlen);
        if (!st) st = get_int(en, "kv_cache_mb", 1, 1 << 22, &ec->kv_cache_mb, where, err, errlen);
        if (!st) st = get_int(en, "max_queue", 1, 1 << 20, &ec->max_queue, where, err, errlen);
    }
    const cJSON *sto = cJSON_GetObjectItemCaseSensitive(root, "store");
    if (!st && sto) {
        snprintf(where, sizeof where, "%s: store.", path);
        if (!cJSON_IsObject(sto)) {
            snprintf(err, errlen, "%s: \"store\" must be an object", path);
            st = PEFTD_EINVAL;
        }
        if (!st) st = check_keys(sto, store_keys, where, err, errlen);
        if (!st) st = get_str(sto, "dir", c->store.dir, sizeof c->store.dir, where, err, errlen);
        if (!st) st = get_int(sto, "map_mb", 1, 1 << 20, &c->store.map_mb, where, err, errlen);
        if (!st) st = get_int(sto, "max_map_mb", 1, 1 << 24, &c->store.max_map_mb, where, err, errlen);
        if (!st) st = get_int(sto, "host_cache_mb", 1, 1 << 20, &c->store.host_cache_mb, where, err, errlen);
        if (!st) st = get_int(sto, "slots", 1, 1 << 16, &c->store.slots, where, err, errlen);
        if (!st) st = get_int(sto, "max_upload_mb", 1, 1 << 20, &c->store.max_upload_mb, where, err, errlen);
        if (!st && c->store.max_map_mb < c->store.map_mb) {
            snprintf(err, errlen, "%s: store.max_map_mb must be >= store.map_mb", path);
            st = PEFTD_EINVAL;
        }
    }
    const cJSON *lg = cJSON_GetObjectItemCaseSensitive(root, "log");
    if (!st && lg) {
        static const char *const log_keys[] = {"level", "format", "access", NULL};
        snprintf(where, sizeof where, "%s: log.", path);
        if (!cJSON_IsObject(lg)) {
            snprintf(err, errlen, "%s: \"log\" must be an object", path);
            st = PEFTD_EINVAL;
        }
        if (!st) st = check_keys(lg, log_keys, where, err, errlen);
        if (!st) st = get_str(lg, "level", c->log.level, sizeof c->log.level, where, err, errlen);
        if (!st) st = get_str(lg, "format", c->log.format, sizeof c->log.format, where, err, errlen);
        if (!st) st = get_str(lg, "access", c->log.access, sizeof c->log.access, where, err, errlen);
        if (!st && log_level_parse(c->log.level[0] ? c->log.level : "info") < 0) {
            snprintf(err, errlen, "%s: log.level must be debug, info, warn or error", path);
            st = PEFTD_EINVAL;
        }
        if (!st && log_format_parse(c->log.format) < 0) {
            snprintf(err, errlen, "%s: log.format must be text or json", path);
            st = PEFTD_EINVAL;
        }
    }
    const cJSON *au = cJSON_GetObjectItemCaseSensitive(root, "auth");
    if (!st && au) {
        static const char *const auth_keys[] = {"enabled", "admin_key_env", "admin_key_sha256", "comment", NULL};
        snprintf(where, sizeof where, "%s: auth.", path);
        const cJSON *en2 = cJSON_GetObjectItemCaseSensitive(au, "enabled");
        if (!cJSON_IsObject(au)) {
            snprintf(err, errlen, "%s: \"auth\" must be an object", path);
            st = PEFTD_EINVAL;
        }
        if (!st) st = check_keys(au, auth_keys, where, err, errlen);
        if (!st && en2 && !cJSON_IsBool(en2)) {
            snprintf(err, errlen, "%s: auth.enabled must be true or false", path);
            st = PEFTD_EINVAL;
        }
        if (!st && en2) c->auth.enabled = cJSON_IsTrue(en2);
        if (!st) st = get_str(au, "admin_key_env", c->auth.admin_key_env, sizeof c->auth.admin_key_env, where, err, errlen);
        if (!st)
            st = get_str(au, "admin_key_sha256", c->auth.admin_key_sha256, sizeof c->auth.admin_key_sha256, where, err,
                         errlen);
        if (!st && c->auth.admin_key_sha256[0] && strspn(c->auth.admin_key_sha256, "0123456789abcdef") != 64) {
            snprintf(err, errlen, "%s: auth.admin_key_sha256 must be 64 lowercase hex digits (sha256sum of the key)", path);
            st = PEFTD_EINVAL;
        }
    }
    const cJSON *ads = cJSON_GetObjectItemCaseSensitive(root, "adapters");
    if (!st && ads) {
        if (!cJSON_IsObject(ads)) {
            snprintf(err, errlen, "%s: \"adapters\" must be an object of name: directory", path);
            st = PEFTD_EINVAL;
        }
        for (const cJSON *it = ads ? ads->child : NULL; !st && it; it = it->next) {
            if (!cJSON_IsString(it)) {
                snprintf(err, errlen, "%s: adapters.\"%.80s\" must be a directory path string", path, it->string);
                st = PEFTD_EINVAL;
                break;
            }
            char e2[512];
            if ((st = config_add_adapter(c, it->string, it->valuestring, e2, sizeof e2)) < 0)
                snprintf(err, errlen, "%s: %s", path, e2);
        }
    }
    cJSON_Delete(root);
    return st;
}
