/* server/api/api_adapters_upload.c — PUT /v1/adapters/{name}: a multipart/form-data
 * body with the files `save_pretrained` writes, streamed to a private staging directory
 * (adapter_service_mkdtemp) part by part, then imported by the adapter service.
 *
 * Parts are recognised by their file names, whatever their field names, so
 * `curl -F a=@adapter_config.json -F b=@adapter_model.safetensors` works. Accepted:
 * adapter_config.json, adapter_model.safetensors (PEFT), adapter.safetensors (AdapterHub);
 * README.md (the model card save_pretrained writes next to them) is read and dropped.
 * Pickle weights (*.bin, *.pt, ...) get 422: we never unpickle. Anything else gets 400
 * naming the file. The body never sits in memory: libmicrohttpd's post processor parses it
 * incrementally and hands each part's bytes to write(2).
 *
 * After the first error the rest of the body is read and thrown away (up to a cap) so the
 * client can read the answer: libmicrohttpd cannot queue a response mid-body. The staging
 * directory is removed whatever happens, at the latest when the connection closes.
 *
 * Limits: at most cfg.max_uploads uploads are open at once (each holds a staging file
 * besides its socket: http_server.c sizes both limits by RLIMIT_NOFILE); one more gets 503
 * with Retry-After before its body is read.
 *
 * The import (parse, validate, convert, serialise, LMDB put: seconds on a large adapter)
 * runs on an import thread (http_pool.c), never on the libmicrohttpd thread, which also
 * serves /health and completions: the handler suspends the connection and the import
 * resumes it when the answer is ready. u->mu orders the two as api_completions.c does: the
 * handler decides to suspend under it, the import marks itself done and resumes under it,
 * so a wake-up is never lost and a connection is never resumed twice or after it closed.
 * The upload is refcounted (the connection, the queued import): whoever drops the last
 * reference removes the staging directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cJSON.h>

#include "lib/log.h"
#include "lib/status.h"
#include "server/http/http_auth.h"
#include "server/api/api_internal.h"

/* The post processor's parse buffer (part headers, boundaries); libmicrohttpd suggests
 * 32-64 KiB for good performance with large file parts. */
#define API_UPLOAD_PP_BUFFER (64 * 1024)
/* After an error, how much more of the body we read and discard so that the client sees
 * the answer; past it the connection is closed (a 2 GiB upload of the wrong file is not
 * worth reading to the end). */
#define API_UPLOAD_DRAIN_MAX (64ull << 20)
/* adapter_config.json is refused past 1 MiB by the importer (adapter.c): past that, stop
 * staging it at once. Bounded so, it is not counted against a storage quota (what is
 * stored is the converted weights; counting the config would refuse a replacement that
 * fits exactly). */
#define API_UPLOAD_CONFIG_MAX (1ull << 20)

/* The files an upload may carry; index = part kind. */
enum { PART_CONFIG, PART_PEFT_WEIGHTS, PART_HUB_WEIGHTS, PART_COUNT };
static const char *const api_part_files[PART_COUNT] = {"adapter_config.json", "adapter_model.safetensors",
                                                       "adapter.safetensors"};
/* Extensions of pickled checkpoints (torch.save): refused, never parsed. */
static const char *const api_pickle_ext[] = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"};

#define API_PART_IGNORED (-1) /* README.md: read and dropped */

typedef struct api_upload {
    api_server *srv;
    struct MHD_PostProcessor *pp;
    char dir[PATH_MAX];  /* staging directory ("" = none yet) */
    /* The part being received. */
    bool in_part;
    int part;            /* PART_* or API_PART_IGNORED */
    int fd;              /* its staging file, -1 when ignored */
    uint64_t part_bytes;
    char part_key[128], part_file[256];
    bool seen[PART_COUNT];
    uint64_t part_size[PART_COUNT];
    uint64_t received;   /* body bytes so far */
    /* A tenant's storage quota counts staged bytes as they arrive (adapter_service_stage_add). */
    char owner[ASTORE_NAME_MAX + 1];
    uint64_t quota;      /* 0 = none */
    uint64_t stored;     /* the owner's stored bytes at the start, minus the version replaced */
    uint64_t staged;     /* bytes counted for this upload */
    uint64_t discarded;  /* body bytes read after the first error */
    /* The first error: status != 0. */
    unsigned status;
    const char *code;
    char msg[512];
    /* The import, once the body is complete (upload_import_run on an import thread). */
    atomic_int refs;      /* the connection's, and the import's while queued or running */
    bool counted;         /* counted in srv->uploads_open */
    bool queued;          /* handed to the import pool (then counted in srv->imports_open) */
    char name[ASTORE_NAME_MAX + 1];
    uint64_t quota_bytes; /* the owner's storage limit for the import, 0 = none */
    pthread_mutex_t mu;   /* guards done, suspended, closed */
    bool done, suspended, closed;
    struct MHD_Connection *conn;
    /* The import's result: written by the import thread before done, read after. */
    int rc;
    astore_meta meta;
    char err[512];
} api_upload;

static void upload_fail(api_upload *u, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Staging could not write: a full disk or quota (ENOSPC, EDQUOT), a file-size limit
 * (EFBIG), or an I/O error on write (EIO: a short write on a full disk, a failed
 * writeback reported at close) is "insufficient storage" (507), never a 500: the client
 * can retry later or elsewhere. The message names no server path. */
static bool staging_full(int e) { return e == ENOSPC || e == EDQUOT || e == EFBIG || e == EIO; }

static void upload_fail_errno(api_upload *u, int e, const char *what) {
    if (staging_full(e))
        upload_fail(u, MHD_HTTP_INSUFFICIENT_STORAGE, "insufficient_storage",
                    "%s: the server is out of storage space (%s)", what, strerror(e));
    else
        upload_fail(u, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal_error", "%s: %s", what, strerror(e));
}
static void upload_fail(api_upload *u, unsigned status, const char *code, const char *fmt, ...) {
    if (u->status) return; /* the first error is the one reported */
    u->status = status;
    u->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(u->msg, sizeof u->msg, fmt, ap);
    va_end(ap);
}

static void upload_close_part(api_upload *u) {
    if (u->fd >= 0) {
        if (close(u->fd) < 0) upload_fail_errno(u, errno, "writing the upload");
        u->fd = -1;
    }
    if (u->in_part && u->part >= 0) u->part_size[u->part] = u->part_bytes;
    u->in_part = false;
}

/* Drops what is staged: the files, the directory and the quota count. */
static void upload_unstage(api_upload *u) {
    if (u->fd >= 0) {
        close(u->fd);
        u->fd = -1;
    }
    if (u->dir[0]) adapter_service_rmdir(u->dir);
    u->dir[0] = '\0';
    adapter_service_stage_release(u->srv->svc, u->owner, u->staged);
    u->staged = 0;
}

static void upload_unref(api_upload *u) {
    if (!u || atomic_fetch_sub(&u->refs, 1) != 1) return;
    if (u->pp) MHD_destroy_post_processor(u->pp); /* only the connection's side has one */
    upload_unstage(u);
    if (u->counted) atomic_fetch_sub(&u->srv->uploads_open, 1);
    pthread_mutex_destroy(&u->mu);
    free(u);
}

static bool has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcasecmp(s + n - k, suf) == 0;
}

/* A client string for an error message: valid UTF-8 cut at a character, else a marker. */
static int shown_len(const char *s, size_t max) {
    return http_utf8_valid(s, strlen(s)) ? (int)http_utf8_prefix(s, max) : 0;
}
static const char *shown(const char *s) { return http_utf8_valid(s, strlen(s)) ? s : "(not UTF-8)"; }

/* A new part starts: decide what it is and open its staging file. */
static void upload_start_part(api_upload *u, const char *key, const char *filename) {
    u->in_part = true;
    u->part = API_PART_IGNORED;
    u->fd = -1;
    u->part_bytes = 0;
    snprintf(u->part_key, sizeof u->part_key, "%s", key ? key : "");
    snprintf(u->part_file, sizeof u->part_file, "%s", filename ? filename : "");
    if (!filename || !filename[0]) {
        upload_fail(u, MHD_HTTP_BAD_REQUEST, "invalid_upload",
                    "form field '%.*s' is not a file: send the adapter's files as file parts "
                    "(curl -F a=@adapter_config.json -F b=@adapter_model.safetensors)",
                    shown_len(u->part_key, 100), shown(u->part_key));
        return;
    }
    /* Clients send base names; a path (some send one) counts by its last component. */
    const char *base = filename;
    for (const char *p = filename; *p; p++)
        if (*p == '/' || *p == '\\') base = p + 1;
    for (int i = 0; i < PART_COUNT; i++) {
        if (strcmp(base, api_part_files[i]) != 0) continue;
        if (u->seen[i]) {
            upload_fail(u, MHD_HTTP_BAD_REQUEST, "invalid_upload", "the upload has two %s parts", api_part_files[i]);
            return;
        }
        char path[PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/%s", u->dir, api_part_files[i]);
        u->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (u->fd < 0) {
            upload_fail_errno(u, errno, "cannot stage the upload");
            return;
        }
        u->seen[i] = true;
        u->part = i;
        return;
    }
    if (strcmp(base, "README.md") == 0) return; /* the model card: not needed to serve */
    for (size_t i = 0; i < sizeof api_pickle_ext / sizeof api_pickle_ext[0]; i++)
        if (has_suffix(base, api_pickle_ext[i])) {
            upload_fail(u, MHD_HTTP_UNPROCESSABLE_CONTENT, "unsupported_format",
                        "pickle weights are not accepted ('%.*s'): save the adapter with safetensors "
                        "(save_pretrained(..., safe_serialization=True))",
                        shown_len(base, 100), shown(base));
            return;
        }
    upload_fail(u, MHD_HTTP_BAD_REQUEST, "invalid_upload",
                "unknown file '%.*s' in the upload: expected adapter_config.json with adapter_model.safetensors "
                "(PEFT) or adapter.safetensors (AdapterHub)",
                shown_len(base, 100), shown(base));
}

static void upload_write(api_upload *u, const char *data, size_t size) {
    u->part_bytes += size;
    if (u->part == PART_CONFIG && u->part_bytes > API_UPLOAD_CONFIG_MAX) {
        upload_fail(u, MHD_HTTP_CONTENT_TOO_LARGE, "upload_too_large", "adapter_config.json is over %llu bytes",
                    (unsigned long long)API_UPLOAD_CONFIG_MAX);
        return;
    }
    if (u->fd >= 0 && size && u->part != PART_CONFIG) {
        int rc = adapter_service_stage_add(u->srv->svc, u->owner, u->quota, u->stored, size);
        if (rc < 0) {
            if (rc == -EDQUOT)
                upload_fail(u, MHD_HTTP_INSUFFICIENT_STORAGE, "insufficient_storage",
                            "the upload is over the tenant's storage quota of %llu bytes (%llu bytes stored, "
                            "uploads in flight count as they arrive)",
                            (unsigned long long)u->quota, (unsigned long long)u->stored);
            else
                upload_fail(u, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal_error", "out of memory");
            return;
        }
        u->staged += size;
    }
    while (u->fd >= 0 && size) {
        ssize_t w = write(u->fd, data, size);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            upload_fail_errno(u, w < 0 ? errno : ENOSPC, "cannot stage the upload");
            return;
        }
        data += w;
        size -= (size_t)w;
    }
}

/* libmicrohttpd's iterator: called with consecutive pieces of each part's value. A part
 * starts at offset 0; a zero-length call at offset 0 may precede the first bytes of the
 * same part, so a part only counts as new when its key or file name differ or the
 * current one already has bytes. */
static enum MHD_Result upload_iter(void *cls, enum MHD_ValueKind kind, const char *key, const char *filename,
                                   const char *content_type, const char *transfer_encoding, const char *data,
                                   uint64_t off, size_t size) {
    api_upload *u = cls;
    if (u->status) return MHD_NO;
    if (off == 0) {
        bool same = u->in_part && u->part_bytes == 0 && strcmp(u->part_key, key ? key : "") == 0 &&
                    strcmp(u->part_file, filename ? filename : "") == 0;
        if (!same) {
            upload_close_part(u);
            upload_start_part(u, key, filename);
        }
    }
    if (!u->status && size) upload_write(u, data, size);
    return u->status ? MHD_NO : MHD_YES;
}

enum MHD_Result api_adapters_put_begin(http_req *req, struct MHD_Connection *conn) {
    api_server *s = api_of(req);
    req->answered = true; /* until the upload is set up, every return below answers */
    enum MHD_Result ret;
    if (api_replica_refuses(req, conn, &ret)) return ret;
    if (!s->svc) return api_adapters__no_store(req, conn);
    const char *name = req->arg ? req->arg : "";
    if (!registry_name_valid(name)) return api_adapters__bad_name(req, conn, name);
    if (adapter_service_name_is_base(s->svc, name))
        return http_error(req, conn, MHD_HTTP_CONFLICT, "name_conflict",
                          "'%s' is the base model's id: choose another adapter name", name);

    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!ct || strncasecmp(ct, "multipart/form-data", 19) != 0)
        return http_error(req, conn, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                          "an adapter upload is multipart/form-data with the files save_pretrained writes "
                          "(curl -T won't do: use curl -F a=@adapter_config.json -F b=@adapter_model.safetensors)");
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        errno = 0;
        unsigned long long v = strtoull(cl, NULL, 10);
        if (errno == ERANGE || v > s->cfg.max_upload_bytes)
            return http_error(req, conn, MHD_HTTP_CONTENT_TOO_LARGE, "upload_too_large",
                              "upload of %s bytes is over the limit of %llu bytes", cl,
                              (unsigned long long)s->cfg.max_upload_bytes);
    }

    /* One descriptor more than a connection: bounded before anything is staged. */
    int open_now = atomic_fetch_add(&s->uploads_open, 1);
    if (open_now >= s->cfg.max_uploads) {
        atomic_fetch_sub(&s->uploads_open, 1);
        char msg[160];
        snprintf(msg, sizeof msg, "too many adapter uploads in progress (at most %d at once): retry later",
                 s->cfg.max_uploads);
        return http_error_hdr(req, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "overloaded", MHD_HTTP_HEADER_RETRY_AFTER,
                              "1", msg);
    }
    api_upload *u = calloc(1, sizeof *u);
    if (!u) {
        atomic_fetch_sub(&s->uploads_open, 1);
        return api_fail_status(req, conn, PEFTD_ENOMEM, "receiving the upload", NULL);
    }
    u->srv = s;
    u->fd = -1;
    u->counted = true;
    atomic_init(&u->refs, 1);
    pthread_mutex_init(&u->mu, NULL);
    u->conn = conn;
    snprintf(u->name, sizeof u->name, "%s", name);
    snprintf(u->owner, sizeof u->owner, "%s", http_owner(req));
    if (u->owner[0]) {
        tstore_tenant t = {0};
        astore_meta old;
        if (tenants_get(s->cfg.tenants, u->owner, &t) == 0 && t.max_storage_bytes > 0) {
            u->quota = (uint64_t)t.max_storage_bytes;
            astore_owner_bytes(s->store, u->owner, &u->stored);
            if (astore_get_meta_scoped(s->store, u->owner, name, &old) == 0)
                u->stored -= old.bytes <= u->stored ? old.bytes : u->stored;
        }
    }
    int rc = adapter_service_mkdtemp(s->svc, u->dir, sizeof u->dir);
    if (rc < 0) {
        u->dir[0] = '\0';
        upload_unref(u);
        return api_fail_status(req, conn, rc, "cannot stage the upload", NULL);
    }
    u->pp = MHD_create_post_processor(conn, API_UPLOAD_PP_BUFFER, upload_iter, u);
    if (!u->pp) {
        upload_unref(u);
        return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_upload",
                          "cannot parse this multipart/form-data body (missing boundary?)");
    }
    req->ctx = u;
    req->answered = false;
    return MHD_YES;
}

enum MHD_Result api_adapters_put_data(http_req *req, const char *data, size_t n) {
    api_upload *u = req->ctx;
    u->received += n;
    if (!u->status && u->received > u->srv->cfg.max_upload_bytes)
        upload_fail(u, MHD_HTTP_CONTENT_TOO_LARGE, "upload_too_large", "upload is over the limit of %llu bytes",
                    (unsigned long long)u->srv->cfg.max_upload_bytes);
    if (!u->status && MHD_post_process(u->pp, data, n) != MHD_YES)
        upload_fail(u, MHD_HTTP_BAD_REQUEST, "invalid_upload", "malformed multipart/form-data body");
    if (u->status) {
        /* Stop staging: drop the parser, the files and their quota count now, keep only
         * the answer (the rest of the body is read and discarded). */
        if (u->pp) {
            MHD_destroy_post_processor(u->pp);
            u->pp = NULL;
        }
        upload_unstage(u);
        u->discarded += n;
        if (u->discarded > API_UPLOAD_DRAIN_MAX) {
            LOGD("http: upload: closing after %llu discarded bytes (%s)", (unsigned long long)u->discarded, u->msg);
            return MHD_NO;
        }
    }
    return MHD_YES;
}

/* Import thread: the import itself, then wake the connection. Abandoned (the server
 * stops first): nothing is imported, the answer is 503. */
static void upload_import_run(void *arg, bool abandoned) {
    api_upload *u = arg;
    if (abandoned) {
        u->rc = PEFTD_ECANCELED;
    } else {
        u->rc = adapter_service_import_dir(u->srv->svc, u->name, u->owner, u->quota_bytes, u->dir, &u->meta, u->err,
                                           sizeof u->err);
    }
    /* Stored (or not): the staged files and their quota count go now, not when the
     * connection closes. The connection's side no longer touches them once queued. */
    upload_unstage(u);
    pthread_mutex_lock(&u->mu);
    u->done = true;
    if (u->suspended && !u->closed) {
        u->suspended = false;
        MHD_resume_connection(u->conn);
    }
    pthread_mutex_unlock(&u->mu);
    upload_unref(u); /* the import's reference */
}

/* The import's answer. The upload stays with the connection (req->ctx) until it closes
 * (api_adapters_closed uncounts the import then: the shutdown waits for these answers). */
static enum MHD_Result upload_answer(http_req *req, struct MHD_Connection *conn, api_upload *u) {
    if (u->rc == PEFTD_ECANCELED)
        return http_error_hdr(req, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting_down", NULL, NULL,
                              "the server is shutting down: the adapter was not stored");
    /* the importer (adapter_store) reports a well-formed adapter that does not fit the
     * base as PEFTD_EINVAL: here that is the adapter's content, not the request's (422) */
    if (u->rc < 0) return api_fail_status(req, conn, u->rc == PEFTD_EINVAL ? PEFTD_EUNSUPPORTED : u->rc, "adapter rejected", u->err);
    cJSON *o = api_adapter_meta_json(&u->meta);
    return http_respond_json(req, conn, u->meta.version <= 1 ? MHD_HTTP_CREATED : MHD_HTTP_OK, o);
}

/* Suspends the connection until the import is done, or answers when it already is. */
static enum MHD_Result upload_wait(http_req *req, struct MHD_Connection *conn, api_upload *u) {
    pthread_mutex_lock(&u->mu);
    if (!u->done) {
        u->suspended = true;
        MHD_suspend_connection(conn);
        pthread_mutex_unlock(&u->mu);
        return MHD_YES;
    }
    pthread_mutex_unlock(&u->mu);
    return upload_answer(req, conn, u);
}

enum MHD_Result api_adapters_put_finish(http_req *req, struct MHD_Connection *conn) {
    api_server *s = api_of(req);
    api_upload *u = req->ctx;
    if (!u) return http_error(req, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "no upload in progress");
    if (u->queued) return upload_wait(req, conn, u); /* resumed by the import */
    if (!u->status) {
        enum MHD_Result ok = MHD_destroy_post_processor(u->pp);
        u->pp = NULL;
        upload_close_part(u);
        if (ok != MHD_YES)
            upload_fail(u, MHD_HTTP_BAD_REQUEST, "invalid_upload",
                        "malformed multipart/form-data body (truncated, or no closing boundary)");
    }
    if (!u->status && !u->seen[PART_CONFIG])
        upload_fail(u, MHD_HTTP_BAD_REQUEST, "invalid_upload",
                    "the upload has no adapter_config.json part (or it was empty)");
    if (!u->status && u->seen[PART_PEFT_WEIGHTS] && u->seen[PART_HUB_WEIGHTS])
        upload_fail(u, MHD_HTTP_BAD_REQUEST, "invalid_upload",
                    "the upload has both adapter_model.safetensors (PEFT) and adapter.safetensors "
                    "(AdapterHub): send one");
    if (!u->status && !u->seen[PART_PEFT_WEIGHTS] && !u->seen[PART_HUB_WEIGHTS])
        upload_fail(u, MHD_HTTP_BAD_REQUEST, "invalid_upload",
                    "the upload has no weights part: adapter_model.safetensors (PEFT) or adapter.safetensors "
                    "(AdapterHub)");
    if (u->status) {
        enum MHD_Result ret = http_error(req, conn, u->status, u->code, "%s", u->msg);
        upload_unref(u);
        req->ctx = NULL;
        return ret;
    }
    /* a tenant's upload is its own (a public name is shadowed, not replaced) and counts
     * against its storage quota; the admin's is public */
    tstore_tenant t = {0};
    if (u->owner[0]) tenants_get(s->cfg.tenants, u->owner, &t);
    u->quota_bytes = (uint64_t)t.max_storage_bytes;
    u->queued = true;
    atomic_fetch_add(&u->refs, 1); /* the import's, before it can run */
    atomic_fetch_add(&s->imports_open, 1);
    int rc = http_pool_submit(s->imports, upload_import_run, u);
    if (rc < 0) {
        u->queued = false;
        atomic_fetch_sub(&s->imports_open, 1);
        atomic_fetch_sub(&u->refs, 1); /* never the last: the connection holds one */
        enum MHD_Result ret = api_fail_status(req, conn, rc, "cannot import the upload",
                                              rc == PEFTD_EBUSY       ? "too many adapter imports waiting: retry later"
                                              : rc == PEFTD_ECANCELED ? "the server is shutting down"
                                                                      : NULL);
        upload_unref(u);
        req->ctx = NULL;
        return ret;
    }
    LOGI("http: upload %s%s%s: %llu bytes received, importing", u->owner, u->owner[0] ? "/" : "", u->name,
         (unsigned long long)u->received);
    return upload_wait(req, conn, u);
}

void api_adapters_closed(http_req *req, enum MHD_RequestTerminationCode toe) {
    (void)toe;
    api_upload *u = req->ctx;
    req->ctx = NULL;
    if (u->pp) {
        MHD_destroy_post_processor(u->pp); /* the connection's: never on an import thread */
        u->pp = NULL;
    }
    pthread_mutex_lock(&u->mu);
    u->closed = true;
    pthread_mutex_unlock(&u->mu);
    if (u->queued) atomic_fetch_sub(&api_of(req)->imports_open, 1);
    upload_unref(u);
}
