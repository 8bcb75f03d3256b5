/* server/api/api_lora_vllm.c — vLLM's dynamic adapter endpoints, for the tooling that
 * calls them (the Gateway API Inference Extension's LoRA syncer, vLLM scripts):
 *
 *   POST /v1/load_lora_adapter   {"lora_name", "lora_path", "load_inplace"?}
 *   POST /v1/unload_lora_adapter {"lora_name"}
 *
 * Load imports the save_pretrained directory lora_path through the same importer as an
 * upload (adapter_service_import_dir) as the public adapter lora_name; unload deletes the
 * public adapter (requests holding it finish with it). Status codes, bodies and messages
 * are vLLM's for the same bodies: 200 with the text "Success: LoRA adapter '<name>' added
 * successfully." / "... removed successfully."; errors as
 * {"error": {"message", "type", "param", "code": <status>}}:
 *   400 InvalidUserInput  a name or path missing; the name already loaded (without
 *                         load_inplace: true, which replaces it as a new version)
 *   404 NotFoundError     lora_path holds no adapter ("Loading lora X failed: No adapter
 *                         found for PATH"); unload of an unknown name
 *   400 BadRequestError   the adapter is malformed or does not fit the base (vLLM <= 0.10
 *                         answers 400 too; later versions 500)
 * peftd's own refusals in the same shape: lora_path outside store.load_roots (checked on
 * the realpath, so no symlink leads out) -> 403 PermissionDeniedError; no load_roots
 * configured -> 404 (vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING has no such route);
 * with auth on, a tenant's key -> 403 (admin only); no store -> 503; the import queue full
 * -> 503; the server stopping before the import ran -> 503.
 *
 * The checks run on the libmicrohttpd thread; the import itself (seconds for a large
 * adapter) runs on an import thread (http_pool.c, shared with uploads) with the connection
 * suspended, so the other connections of that libmicrohttpd thread (streams, /health) do
 * not wait behind it. The job is refcounted (the connection, the queued import); j->mu
 * orders suspend and resume as api_adapters_upload.c does.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cJSON.h>

#include "lib/log.h"
#include "lib/status.h"
#include "server/http/http_auth.h"
#include "server/api/api_internal.h"

/* vLLM's ErrorResponse: {"error": {"message", "type", "param": null, "code": status}}. */
static enum MHD_Result vllm_error(http_req *req, struct MHD_Connection *conn, unsigned status, const char *type,
                                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static enum MHD_Result vllm_error(http_req *req, struct MHD_Connection *conn, unsigned status, const char *type,
                                  const char *fmt, ...) {
    char msg[1024], clean[3 * 1024 + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    http_utf8_sanitize(msg, clean, sizeof clean);
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    if (err) {
        cJSON_AddStringToObject(err, "message", clean);
        cJSON_AddStringToObject(err, "type", type);
        cJSON_AddNullToObject(err, "param");
        cJSON_AddNumberToObject(err, "code", status);
    }
    if (status >= 500) LOGW("http: %u %s", status, clean);
    return http_respond_json(req, conn, status, err ? root : (cJSON_Delete(root), NULL));
}

static enum MHD_Result vllm_ok(http_req *req, struct MHD_Connection *conn, const char *name, const char *what) {
    char body[256];
    snprintf(body, sizeof body, "Success: LoRA adapter '%s' %s successfully.", name, what);
    return http_respond(req, conn, MHD_HTTP_OK, "text/plain; charset=utf-8", body, strlen(body), NULL, NULL);
}

/* The checks both routes share; the parsed body on success (caller deletes), else NULL
 * with the answer queued in *ret. */
static cJSON *lora_begin(http_req *req, struct MHD_Connection *conn, enum MHD_Result *ret) {
    api_server *s = api_of(req);
    if (!s->svc) {
        *ret = api_adapters__no_store(req, conn);
        return NULL;
    }
    if (!s->cfg.load_roots[0] || !s->cfg.load_roots[0][0]) {
        *ret = vllm_error(req, conn, MHD_HTTP_NOT_FOUND, "NotFoundError",
                          "dynamic adapter loading is off: list the directories it may read in store.load_roots");
        return NULL;
    }
    /* req->srv, not s->http: that is assigned only after the server started taking requests */
    if (http_auth_on(req->srv) && req->who.role != TENANTS_ADMIN) {
        *ret = vllm_error(req, conn, MHD_HTTP_FORBIDDEN, "PermissionDeniedError",
                          "loading and unloading adapters needs the admin key");
        return NULL;
    }
    /* a follower's catalogue is the primary's: writes go there (307, as uploads) */
    if (api_replica_refuses(req, conn, ret)) return NULL;
    cJSON *body = req->body && !http_json_has_nul(req->body, req->len) ? cJSON_ParseWithLength(req->body, req->len) : NULL;
    if (!cJSON_IsObject(body)) {
        cJSON_Delete(body);
        *ret = vllm_error(req, conn, MHD_HTTP_BAD_REQUEST, "BadRequestError", "the body must be a JSON object");
        return NULL;
    }
    return body;
}

static const char *str_field(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) && v->valuestring[0] ? v->valuestring : NULL;
}

/* path resolved (realpath) under one of the resolved roots. */
static bool under_roots(const api_server *s, const char *path) {
    for (int i = 0; i < 4 && s->cfg.load_roots[i] && s->cfg.load_roots[i][0]; i++) {
        char root[PATH_MAX];
        if (!realpath(s->cfg.load_roots[i], root)) continue;
        size_t n = strlen(root);
        if (!strncmp(path, root, n) && (path[n] == '/' || path[n] == '\0' || (n == 1 && root[0] == '/'))) return true;
    }
    return false;
}

/* Same, lexically, for a path that does not resolve: outside a root -> refused before
 * anyone learns whether it exists. */
static bool lexically_under_roots(const api_server *s, const char *path) {
    if (strstr(path, "/../") || !strncmp(path, "../", 3)) return false;
    for (int i = 0; i < 4 && s->cfg.load_roots[i] && s->cfg.load_roots[i][0]; i++) {
        size_t n = strlen(s->cfg.load_roots[i]);
        if (!strncmp(path, s->cfg.load_roots[i], n) && (path[n] == '/' || path[n] == '\0')) return true;
    }
    return false;
}

/* One load: the connection's answer-to-be, handed to an import thread. */
typedef struct lora_job {
    api_server *srv;
    struct MHD_Connection *conn;
    atomic_int refs;     /* the connection's, and the import's while queued or running */
    pthread_mutex_t mu;  /* guards done, suspended, closed */
    bool done, suspended, closed;
    char name[128];
    char path[PATH_MAX];
    int rc;
    astore_meta meta;
    char err[512];
} lora_job;

static void lora_job_unref(lora_job *j) {
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1) return;
    pthread_mutex_destroy(&j->mu);
    free(j);
}

/* Import thread. Abandoned (the server stops first): nothing is imported, the answer is 503. */
static void lora_import_run(void *arg, bool abandoned) {
    lora_job *j = arg;
    j->rc = abandoned ? PEFTD_ECANCELED
                      : adapter_service_import_dir(j->srv->svc, j->name, "", 0, j->path, &j->meta, j->err, sizeof j->err);
    pthread_mutex_lock(&j->mu);
    j->done = true;
    if (j->suspended && !j->closed) {
        j->suspended = false;
        MHD_resume_connection(j->conn);
    }
    pthread_mutex_unlock(&j->mu);
    lora_job_unref(j); /* the import's reference */
}

static enum MHD_Result lora_answer(http_req *req, struct MHD_Connection *conn, lora_job *j) {
    const char *name = j->name, *err = j->err;
    int rc = j->rc;
    if (rc == 0) {
        LOGI("http: loaded adapter %s (version %llu) from %s", name, (unsigned long long)j->meta.version, j->path);
        return vllm_ok(req, conn, name, "added");
    }
    if (rc == PEFTD_ECANCELED)
        return vllm_error(req, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "ServiceUnavailableError",
                          "Loading lora %s failed: the server is shutting down", name);
    if (rc == PEFTD_EFORMAT || rc == PEFTD_EUNSUPPORTED || rc == PEFTD_EINVAL || rc == PEFTD_EEXIST)
        return vllm_error(req, conn, MHD_HTTP_BAD_REQUEST, "BadRequestError", "Loading lora %s failed: %s", name,
                          err[0] ? err : peftd_strerror(rc));
    const api_status_map *m = api_status_http(rc);
    return vllm_error(req, conn, m->http,
                      m->http == MHD_HTTP_INSUFFICIENT_STORAGE ? "InsufficientStorageError" : "InternalServerError",
                      "Loading lora %s failed: %s", name, err[0] ? err : peftd_strerror(rc));
}

/* The route's resume hook (req->ctx is the job): answer once the import is done, else
 * (a spurious wake-up) suspend again. */
enum MHD_Result api_lora_load_resume(http_req *req, struct MHD_Connection *conn) {
    lora_job *j = req->ctx;
    pthread_mutex_lock(&j->mu);
    if (!j->done) {
        j->suspended = true;
        MHD_suspend_connection(conn);
        pthread_mutex_unlock(&j->mu);
        return MHD_YES;
    }
    pthread_mutex_unlock(&j->mu);
    return lora_answer(req, conn, j);
}

void api_lora_load_closed(http_req *req, enum MHD_RequestTerminationCode toe) {
    (void)toe;
    lora_job *j = req->ctx;
    req->ctx = NULL;
    pthread_mutex_lock(&j->mu);
    j->closed = true;
    pthread_mutex_unlock(&j->mu);
    atomic_fetch_sub(&api_of(req)->imports_open, 1);
    lora_job_unref(j);
}

/* Queues the import of resolved as name and suspends the connection; the answer comes
 * from api_lora_load_resume. */
static enum MHD_Result lora_queue(http_req *req, struct MHD_Connection *conn, const char *name, const char *resolved) {
    api_server *s = api_of(req);
    lora_job *j = calloc(1, sizeof *j);
    if (!j || strlen(name) >= sizeof j->name || strlen(resolved) >= sizeof j->path) {
        free(j);
        return vllm_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "InternalServerError",
                          "Loading lora %s failed: out of memory", name);
    }
    j->srv = s;
    j->conn = conn;
    pthread_mutex_init(&j->mu, NULL);
    snprintf(j->name, sizeof j->name, "%s", name);
    snprintf(j->path, sizeof j->path, "%s", resolved);
    atomic_init(&j->refs, 2); /* the connection's and the import's, before it can run */
    atomic_fetch_add(&s->imports_open, 1);
    int rc = http_pool_submit(s->imports, lora_import_run, j);
    if (rc < 0) {
        atomic_fetch_sub(&s->imports_open, 1);
        pthread_mutex_destroy(&j->mu);
        free(j);
        return vllm_error(req, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "ServiceUnavailableError",
                          "Loading lora %s failed: %s", name,
                          rc == PEFTD_EBUSY ? "too many adapter imports waiting: retry later"
                                            : "the server is shutting down");
    }
    req->ctx = j;
    return api_lora_load_resume(req, conn);
}

enum MHD_Result api_lora_load(http_req *req, struct MHD_Connection *conn) {
    api_server *s = api_of(req);
    enum MHD_Result ret;
    cJSON *body = lora_begin(req, conn, &ret);
    if (!body) return ret;
    const char *name = str_field(body, "lora_name"), *path = str_field(body, "lora_path");
    bool inplace = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "load_inplace"));
    char resolved[PATH_MAX], cfg_file[PATH_MAX + 32];
    astore_meta meta;
    struct stat sb;
    if (!name || !path) {
        ret = vllm_error(req, conn, MHD_HTTP_BAD_REQUEST, "InvalidUserInput",
                         "Both 'lora_name' and 'lora_path' must be provided.");
    } else if (!registry_name_valid(name)) {
        ret = vllm_error(req, conn, MHD_HTTP_BAD_REQUEST, "InvalidUserInput",
                         "lora_name '%.64s' is invalid: 1-64 characters, segments of [A-Za-z0-9._-] separated by "
                         "'/' (org/name), none empty or starting with . or -", name);
    } else if (!inplace && astore_get_meta_scoped(s->store, "", name, &meta) == 0) {
        ret = vllm_error(req, conn, MHD_HTTP_BAD_REQUEST, "InvalidUserInput",
                         "The lora adapter '%s' has already been loaded. If you want to load the adapter in place, "
                         "set 'load_inplace' to True.", name);
    } else if (!realpath(path, resolved)) {
        ret = lexically_under_roots(s, path)
                  ? vllm_error(req, conn, MHD_HTTP_NOT_FOUND, "NotFoundError",
                               "Loading lora %s failed: No adapter found for %.512s", name, path)
                  : vllm_error(req, conn, MHD_HTTP_FORBIDDEN, "PermissionDeniedError",
                               "lora_path %.512s is outside the directories in store.load_roots", path);
    } else if (!under_roots(s, resolved)) {
        ret = vllm_error(req, conn, MHD_HTTP_FORBIDDEN, "PermissionDeniedError",
                         "lora_path %.512s is outside the directories in store.load_roots", path);
    } else if (snprintf(cfg_file, sizeof cfg_file, "%s/adapter_config.json", resolved) < 0 || stat(resolved, &sb) ||
               !S_ISDIR(sb.st_mode) || stat(cfg_file, &sb) || !S_ISREG(sb.st_mode)) {
        ret = vllm_error(req, conn, MHD_HTTP_NOT_FOUND, "NotFoundError",
                         "Loading lora %s failed: No adapter found for %.512s", name, path);
    } else {
        ret = lora_queue(req, conn, name, resolved);
    }
    cJSON_Delete(body);
    return ret;
}

enum MHD_Result api_lora_unload(http_req *req, struct MHD_Connection *conn) {
    api_server *s = api_of(req);
    enum MHD_Result ret;
    cJSON *body = lora_begin(req, conn, &ret);
    if (!body) return ret;
    const char *name = str_field(body, "lora_name");
    int rc = name && registry_name_valid(name) ? adapter_service_delete(s->svc, "", name) : PEFTD_ENOTFOUND;
    if (!name)
        ret = vllm_error(req, conn, MHD_HTTP_BAD_REQUEST, "InvalidUserInput",
                         "'lora_name' needs to be provided to unload a LoRA adapter.");
    else if (rc == PEFTD_ENOTFOUND)
        ret = vllm_error(req, conn, MHD_HTTP_NOT_FOUND, "NotFoundError", "The lora adapter '%.64s' cannot be found.",
                         name);
    else if (rc < 0)
        ret = vllm_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "InternalServerError",
                         "Failed to remove lora adapter '%s': %s", name, peftd_strerror(rc));
    else
        ret = vllm_ok(req, conn, name, "removed");
    cJSON_Delete(body);
    return ret;
}
