/* adapter_store/store.c — the LMDB adapter store (schema and contract in store.h).
 *
 * Owns: the environment and its four named databases, the meta record codec (compact
 * JSON with a schema version), the blob record layout (a checksum header in front of the
 * adapter_blob bytes), blob refcounting, and map growth.
 *
 * Blob record ("blobs" value):  "PFB1" | 4 reserved zero bytes | sha256(payload) (32 bytes)
 *                               | payload (the bytes given to astore_put)
 * The key (store.h's sha256) is the adapter's content hash over the files as uploaded, so
 * it cannot check the stored bytes; the embedded checksum can, and astore_get_blob
 * verifies it on every read, so a corrupted blob is reported instead of decoded.
 *
 * Locking: LMDB serialises writers across processes, but mdb_env_set_mapsize() is only
 * allowed while this process has no transaction open. So every transaction holds map_lock
 * shared, and growing the map (or adopting another process's growth, MDB_MAP_RESIZED)
 * takes it exclusive; write_lock keeps one writer of this process at a time so a writer
 * never waits on LMDB's writer mutex while holding map_lock (which would block growth).
 */
#include "adapter_store/store.h"

#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <lmdb.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapter_store/store_internal.h"
#include "lib/log.h"

/* Version of the meta record layout and of the database set; "info"/"schema" holds it. A
 * store written by a newer peftd is refused rather than misread. */
#define ASTORE_SCHEMA 1
/* Defaults when astore_options leaves a size at 0: a 64 MiB first map (a few LoRAs of a
 * 1B model) growing up to 64 GiB of disk. */
#define ASTORE_DEFAULT_MAP ((size_t)64 << 20)
#define ASTORE_DEFAULT_MAX ((size_t)64 << 30)
/* HTTP threads, the engine's loader pool and peftctl may all read at once; LMDB's default
 * of 126 reader slots is close enough to a large thread pool to raise it. */
#define ASTORE_MAX_READERS 512

#define BLOB_MAGIC "PFB1"
#define BLOB_HDR 40 /* magic 4 + reserved 4 + sha256 32 */
/* meta, blobs, refs, info + tenant_store.c's tenants and keys, with room to spare */
#define ASTORE_MAX_DBS 8

/* ---------------------------------------------------------------- status, helpers */

/* LMDB's own codes are in [MDB_KEYEXIST, MDB_LAST_ERRCODE]; positive values are errno. */
int astore__status(int rc) {
    if (rc >= 0) return rc == 0 ? 0 : -rc;
    if (rc < MDB_KEYEXIST || rc > MDB_LAST_ERRCODE) return rc; /* already a PEFTD_E* / -errno */
    switch (rc) {
    case MDB_NOTFOUND: return PEFTD_ENOTFOUND;
    case MDB_MAP_FULL:
    case MDB_TXN_FULL: return PEFTD_ENOSPC;
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND: return PEFTD_EFORMAT;
    default: return PEFTD_EIO;
    }
}

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool sha_valid(const char *h) {
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f'))) return false;
    return h[64] == 0;
}

static bool name_valid(const char *n) {
    size_t l = n ? strnlen(n, ASTORE_NAME_MAX + 1) : 0;
    return l >= 1 && l <= ASTORE_NAME_MAX;
}

static MDB_val val_str(const char *s) { return (MDB_val){.mv_size = strlen(s), .mv_data = (void *)s}; }

static int sha256(const void *p, size_t n, unsigned char out[32]) {
    unsigned int dl = 0;
    if (!EVP_Digest(p, n, out, &dl, EVP_sha256(), NULL) || dl != 32) return PEFTD_EIO;
    return 0;
}

/* ---------------------------------------------------------------- transactions */

/* Adopts a map grown by another process (MDB_MAP_RESIZED): size 0 = "use the file's". */
static void adopt_resize(astore *s) {
    pthread_rwlock_wrlock(&s->map_lock);
    mdb_env_set_mapsize(s->env, 0);
    pthread_rwlock_unlock(&s->map_lock);
}

/* Doubles the map (capped at max_map); PEFTD_ENOSPC when it is already at the cap. */
static int grow(astore *s) {
    int rc = PEFTD_ENOSPC;
    pthread_rwlock_wrlock(&s->map_lock);
    MDB_envinfo info;
    if (mdb_env_info(s->env, &info) == 0 && info.me_mapsize < s->max_map) {
        size_t next = info.me_mapsize > s->max_map / 2 ? s->max_map : info.me_mapsize * 2;
        rc = astore__status(mdb_env_set_mapsize(s->env, next));
    }
    pthread_rwlock_unlock(&s->map_lock);
    return rc;
}

/* Starts a short read transaction; on success map_lock is held shared until read_end. */
int astore__read_begin(astore *s, MDB_txn **txn) {
    for (;;) {
        pthread_rwlock_rdlock(&s->map_lock);
        int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn);
        if (rc == 0) return 0;
        pthread_rwlock_unlock(&s->map_lock);
        if (rc != MDB_MAP_RESIZED) return astore__status(rc);
        adopt_resize(s);
    }
}

void astore__read_end(astore *s, MDB_txn *txn) {
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&s->map_lock);
}

/* A commit that could not write its pages: the filesystem is full (ENOSPC, EDQUOT), the
 * file may not grow (EFBIG: RLIMIT_FSIZE), or LMDB saw a short write, which it reports as
 * EIO (mdb_page_flush) — on a nearly full disk that is the usual case. The transaction is
 * aborted, the meta page was not written: the store keeps its last committed state. */
static bool commit_out_of_space(int rc) { return rc == ENOSPC || rc == EDQUOT || rc == EFBIG || rc == EIO; }

int astore__write_txn(astore *s, astore__write_fn fn, void *ctx) {
    int rc;
    pthread_mutex_lock(&s->write_lock);
    for (;;) {
        MDB_txn *txn = NULL;
        pthread_rwlock_rdlock(&s->map_lock);
        rc = mdb_txn_begin(s->env, NULL, 0, &txn);
        if (rc == 0) {
            rc = fn(s, txn, ctx);
            if (rc == 0) {
                rc = mdb_txn_commit(txn); /* aborts the txn itself on failure */
                if (commit_out_of_space(rc)) {
                    const char *path = "?";
                    mdb_env_get_path(s->env, &path);
                    LOGE("store %s: a commit could not be written (%s): the disk is full or the file may not grow; "
                         "nothing was changed", path, strerror(rc));
                    rc = PEFTD_ENOSPC;
                }
            } else {
                mdb_txn_abort(txn);
            }
        }
        pthread_rwlock_unlock(&s->map_lock);
        if (rc == MDB_MAP_RESIZED) {
            adopt_resize(s);
            continue;
        }
        if (rc == MDB_MAP_FULL && grow(s) == 0) continue;
        break;
    }
    pthread_mutex_unlock(&s->write_lock);
    return astore__status(rc);
}

/* ---------------------------------------------------------------- meta codec */

static const adapter_kind KINDS[] = {ADAPTER_LORA, ADAPTER_IA3, ADAPTER_PROMPT_TUNING, ADAPTER_PREFIX_TUNING,
                                     ADAPTER_BOTTLENECK};

/* Compact JSON; integers go through double, exact up to 2^53 (versions, times, bytes and
 * parameter counts stay far below). @note caller frees the result. */
static char *meta_encode(const astore_meta *m) {
    cJSON *o = cJSON_CreateObject(), *r = NULL;
    char *out = NULL;
    int nr = m->n_ranks < 0 ? 0 : m->n_ranks > 8 ? 8 : m->n_ranks;
    if (!o) return NULL;
    if (!cJSON_AddNumberToObject(o, "schema", ASTORE_SCHEMA) || !cJSON_AddStringToObject(o, "name", m->name) ||
        !cJSON_AddStringToObject(o, "owner", m->owner) ||
        !cJSON_AddStringToObject(o, "kind", adapter_kind_name(m->kind)) ||
        !cJSON_AddStringToObject(o, "sha256", m->sha256) ||
        !cJSON_AddNumberToObject(o, "version", (double)m->version) ||
        !cJSON_AddNumberToObject(o, "created", (double)m->created) ||
        !cJSON_AddNumberToObject(o, "updated", (double)m->updated) ||
        !cJSON_AddNumberToObject(o, "bytes", (double)m->bytes) ||
        !cJSON_AddNumberToObject(o, "n_params", (double)m->n_params) ||
        !(r = cJSON_AddArrayToObject(o, "ranks")) || !cJSON_AddNumberToObject(o, "n_virtual", m->n_virtual) ||
        !cJSON_AddStringToObject(o, "targets", m->targets) ||
        !cJSON_AddStringToObject(o, "base", m->base_fingerprint))
        goto fail;
    for (int i = 0; i < nr; i++) {
        cJSON *n = cJSON_CreateNumber(m->ranks[i]);
        if (!n || !cJSON_AddItemToArray(r, n)) {
            cJSON_Delete(n);
            goto fail;
        }
    }
    out = cJSON_PrintUnformatted(o);
fail:
    cJSON_Delete(o);
    return out;
}

static int json_str(const cJSON *o, const char *k, char *dst, size_t cap) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= cap) return PEFTD_EFORMAT;
    memcpy(dst, v->valuestring, strlen(v->valuestring) + 1);
    return 0;
}

/* An integral number in [lo, hi]. */
static int json_int(const cJSON *o, const char *k, double lo, double hi, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return PEFTD_EFORMAT;
    *out = v->valuedouble;
    return 0;
}

/* Decodes a meta record; records are hostile (disk), so every field is type-checked. */
static int meta_decode(const void *data, size_t len, astore_meta *m) {
    const double big = 9007199254740992.0; /* 2^53: integers beyond are not exact in JSON */
    int rc = PEFTD_EFORMAT;
    double d;
    cJSON *o = cJSON_ParseWithLength(data, len);
    memset(m, 0, sizeof *m);
    if (!cJSON_IsObject(o)) goto fail;
    if (json_int(o, "schema", 1, big, &d)) goto fail;
    if (d > ASTORE_SCHEMA) {
        rc = PEFTD_EUNSUPPORTED;
        goto fail;
    }
    char kind[32];
    if (json_str(o, "name", m->name, sizeof m->name) || json_str(o, "owner", m->owner, sizeof m->owner) ||
        json_str(o, "kind", kind, sizeof kind) || json_str(o, "sha256", m->sha256, sizeof m->sha256) ||
        json_str(o, "targets", m->targets, sizeof m->targets) ||
        json_str(o, "base", m->base_fingerprint, sizeof m->base_fingerprint) || !sha_valid(m->sha256))
        goto fail;
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++)
        if (!strcmp(kind, adapter_kind_name(KINDS[i]))) m->kind = KINDS[i];
    if (!m->kind) goto fail;
    if (json_int(o, "version", 1, big, &d)) goto fail;
    m->version = (uint64_t)d;
    if (json_int(o, "created", -big, big, &d)) goto fail;
    m->created = (int64_t)d;
    if (json_int(o, "updated", -big, big, &d)) goto fail;
    m->updated = (int64_t)d;
    if (json_int(o, "bytes", 0, big, &d)) goto fail;
    m->bytes = (uint64_t)d;
    if (json_int(o, "n_params", 0, big, &d)) goto fail;
    m->n_params = (int64_t)d;
    if (json_int(o, "n_virtual", 0, INT32_MAX, &d)) goto fail;
    m->n_virtual = (int)d;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "ranks"), *e;
    if (!cJSON_IsArray(r) || cJSON_GetArraySize(r) > 8) goto fail;
    cJSON_ArrayForEach(e, r) {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 ||
            e->valuedouble > INT32_MAX)
            goto fail;
        m->ranks[m->n_ranks++] = (int)e->valuedouble;
    }
    rc = 0;
fail:
    cJSON_Delete(o);
    return rc;
}

/* A record under key k must describe the name k, or (an owner-scoped record, store.h)
 * owner/name: anything else is a damaged store. */
static int meta_decode_key(const MDB_val *k, const MDB_val *v, astore_meta *m) {
    int rc = meta_decode(v->mv_data, v->mv_size, m);
    if (rc) return rc;
    char key[ASTORE_KEY_MAX + 1];
    bool plain = strlen(m->name) == k->mv_size && !memcmp(m->name, k->mv_data, k->mv_size);
    bool scoped = astore_key(m->owner, m->name, key) == 0 && strlen(key) == k->mv_size &&
                  !memcmp(key, k->mv_data, k->mv_size);
    return plain || scoped ? 0 : PEFTD_EFORMAT;
}

/* ---------------------------------------------------------------- refs and blobs */

static int ref_get(astore *s, MDB_txn *txn, const char *sha, uint32_t *n) {
    MDB_val k = val_str(sha), v;
    int rc = mdb_get(txn, s->refs, &k, &v);
    *n = 0;
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (v.mv_size != 4) return PEFTD_EFORMAT;
    const unsigned char *p = v.mv_data;
    *n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return 0;
}

static int ref_set(astore *s, MDB_txn *txn, const char *sha, uint32_t n) {
    MDB_val k = val_str(sha);
    if (n == 0) {
        int rc = mdb_del(txn, s->refs, &k, NULL);
        return rc == MDB_NOTFOUND ? 0 : rc;
    }
    unsigned char b[4] = {(unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
                          (unsigned char)(n >> 24)};
    MDB_val v = {.mv_size = 4, .mv_data = b};
    return mdb_put(txn, s->refs, &k, &v, 0);
}

/* One more name refers to sha; stores the blob record when it is not there yet (blobs are
 * content-addressed: an existing record for the same hash is kept as is). */
static int ref_inc(astore *s, MDB_txn *txn, const char *sha, const void *blob, size_t len,
                   const unsigned char sum[32]) {
    uint32_t n;
    int rc = ref_get(s, txn, sha, &n);
    if (rc) return rc;
    if (n == UINT32_MAX) return PEFTD_ERANGE;
    MDB_val k = val_str(sha), v;
    rc = mdb_get(txn, s->blobs, &k, &v);
    if (rc == MDB_NOTFOUND) {
        /* MDB_RESERVE: write the record straight into the map, no staging copy */
        v = (MDB_val){.mv_size = BLOB_HDR + len, .mv_data = NULL};
        if ((rc = mdb_put(txn, s->blobs, &k, &v, MDB_RESERVE))) return rc;
        unsigned char *p = v.mv_data;
        memcpy(p, BLOB_MAGIC, 4);
        memset(p + 4, 0, 4);
        memcpy(p + 8, sum, 32);
        if (len) memcpy(p + BLOB_HDR, blob, len);
    } else if (rc) {
        return rc;
    }
    return ref_set(s, txn, sha, n + 1);
}

/* One name fewer refers to sha; the blob goes with the last reference (dropped[] = sha
 * then). A missing count means the records disagree: reported as a corrupt store rather
 * than aborting the daemon over bytes on disk. */
static int ref_dec(astore *s, MDB_txn *txn, const char *sha, char dropped[65]) {
    uint32_t n;
    int rc = ref_get(s, txn, sha, &n);
    if (rc) return rc;
    if (n == 0) return PEFTD_EFORMAT;
    if ((rc = ref_set(s, txn, sha, n - 1))) return rc;
    if (n == 1) {
        MDB_val k = val_str(sha);
        rc = mdb_del(txn, s->blobs, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) return rc;
        memcpy(dropped, sha, 65);
    }
    return 0;
}

/* ---------------------------------------------------------------- open / close */

typedef struct {
    astore *s;
    bool newer; /* the store's schema is newer than ours */
    unsigned found;
} open_ctx;

static int open_fn(astore *s, MDB_txn *txn, void *vctx) {
    open_ctx *c = vctx;
    int rc;
    if ((rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->meta)) ||
        (rc = mdb_dbi_open(txn, "blobs", MDB_CREATE, &s->blobs)) ||
        (rc = mdb_dbi_open(txn, "refs", MDB_CREATE, &s->refs)) ||
        (rc = mdb_dbi_open(txn, "info", MDB_CREATE, &s->info)) ||
        (rc = mdb_dbi_open(txn, "tenants", MDB_CREATE, &s->tenants)) ||
        (rc = mdb_dbi_open(txn, "keys", MDB_CREATE, &s->keys)))
        return rc;
    MDB_val k = val_str("schema"), v;
    rc = mdb_get(txn, s->info, &k, &v);
    if (rc == MDB_NOTFOUND) {
        char buf[16];
        snprintf(buf, sizeof buf, "%d", ASTORE_SCHEMA);
        v = val_str(buf);
        return mdb_put(txn, s->info, &k, &v, 0);
    }
    if (rc) return rc;
    char buf[16] = {0};
    if (v.mv_size == 0 || v.mv_size >= sizeof buf) return PEFTD_EFORMAT;
    memcpy(buf, v.mv_data, v.mv_size);
    char *end;
    unsigned long ver = strtoul(buf, &end, 10);
    if (*end || ver == 0) return PEFTD_EFORMAT;
    c->found = (unsigned)ver;
    if (ver > ASTORE_SCHEMA) {
        c->newer = true;
        return PEFTD_EUNSUPPORTED;
    }
    return 0;
}

/* LMDB's file layout (mdb.c, format version 1, 64-bit builds), read here with pread
 * before LMDB maps the file: pages 0 and 1 are meta pages, each a 16-byte page header
 * then MDB_meta { u32 magic, u32 version, void *address, size_t mapsize, MDB_db dbs[2]
 * (48 bytes each; dbs[0].md_pad holds the page size), pgno_t last_pg, txnid_t txnid }.
 * LMDB trusts last_pg: a file cut shorter than (last_pg + 1) pages is mapped anyway and
 * the first touch of a missing page is SIGBUS, killing the process before any error can
 * be returned (a crash loop under a supervisor). */
#define LMDB_META_OFF 16      /* page header */
#define LMDB_MAGIC 0xBEEFC0DEu
#define LMDB_DATA_VERSION 1u
#define LMDB_META_LEN 136     /* through txnid: 16 + 4 + 4 + 8 + 8 + 96 + 8 + 8 - 16 */

typedef struct {
    uint32_t psize;
    uint64_t last_pg, txnid;
    bool ok;
} lmdb_meta_view;

static uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static lmdb_meta_view read_meta_at(int fd, off_t off) {
    unsigned char b[LMDB_META_OFF + LMDB_META_LEN];
    lmdb_meta_view m = {0};
    if (pread(fd, b, sizeof b, off) != (ssize_t)sizeof b) return m;
    const unsigned char *mm = b + LMDB_META_OFF;
    if (rd32(mm) != LMDB_MAGIC || rd32(mm + 4) != LMDB_DATA_VERSION) return m;
    m.psize = rd32(mm + 24);
    m.last_pg = rd64(mm + 120);
    m.txnid = rd64(mm + 128);
    /* LMDB's page sizes are powers of two from 4 KiB (its minimum here) to 64 KiB */
    m.ok = m.psize >= 512 && m.psize <= 65536 && (m.psize & (m.psize - 1)) == 0;
    return m;
}

/* Refuses a data.mdb whose size is below what its newest meta page says is in use. An
 * absent or empty file is a new store (LMDB initialises it); unreadable metas are left to
 * LMDB, which reports MDB_INVALID without touching the map. */
static int check_data_file(const char *path, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 0 : -errno;
    struct stat sb;
    int rc = 0;
    if (fstat(fd, &sb) < 0) {
        rc = -errno;
        goto out;
    }
    if (sb.st_size == 0) goto out;
    lmdb_meta_view m0 = read_meta_at(fd, 0), m1 = {0};
    if (m0.ok) m1 = read_meta_at(fd, (off_t)m0.psize);
    if (!m0.ok) goto out;
    const lmdb_meta_view *m = m1.ok && m1.psize == m0.psize && m1.txnid > m0.txnid ? &m1 : &m0;
    /* 2 meta pages at least, and every page up to last_pg */
    uint64_t pages = m->last_pg + 1 < 2 ? 2 : m->last_pg + 1;
    if (pages > (uint64_t)INT64_MAX / m->psize || (uint64_t)sb.st_size < pages * m->psize) {
        set_err(err, errlen,
                "%s is truncated or damaged: %lld bytes, but its last committed transaction uses %llu pages of "
                "%u bytes (%llu bytes); restore it from a backup (refusing to map it: that would crash)",
                path, (long long)sb.st_size, (unsigned long long)pages, m->psize,
                (unsigned long long)(pages * m->psize));
        rc = PEFTD_EFORMAT;
    }
out:
    close(fd);
    return rc;
}

/* An exclusive, non-blocking flock on <dir>/peftd.lock, held by *fd until it is closed
 * (the kernel drops it when the process dies, so a crash never leaves a stale lock). The
 * holder's pid is written in the file, for the message of whoever is refused. */
static int lock_dir(const char *dir, int *fd, char *err, size_t errlen) {
    char path[4200];
    snprintf(path, sizeof path, "%s/peftd.lock", dir);
    *fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (*fd < 0) {
        int rc = -errno;
        set_err(err, errlen, "cannot open the lock file %s: %s", path, strerror(errno));
        return rc;
    }
    if (flock(*fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(*fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        close(*fd);
        *fd = -1;
        if (e == EWOULDBLOCK) {
            set_err(err, errlen, "the store %s is in use by another process%s%s%s (lock %s)", dir,
                    pid[0] ? " (pid " : "", pid, pid[0] ? ")" : "", path);
            return PEFTD_EBUSY;
        }
        set_err(err, errlen, "cannot lock %s: %s", path, strerror(e));
        return -e;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(*fd, 0) == 0 && pwrite(*fd, pid, (size_t)n, 0) != n) { /* informative only */ }
    return 0;
}

static size_t round_page(size_t n, bool up) {
    long ps = sysconf(_SC_PAGESIZE);
    size_t p = ps > 0 ? (size_t)ps : 4096;
    return up ? (n + p - 1) / p * p : n / p * p;
}

int astore_open(const char *dir, const astore_options *opt, astore **out, char *err, size_t errlen) {
    int rc;
    astore *s = NULL;
    bool locks = false;
    *out = NULL;
    if (err && errlen) err[0] = 0;
    if (!dir || !*dir) {
        set_err(err, errlen, "astore_open: no directory");
        return PEFTD_EINVAL;
    }
    if (mkdir(dir, 0700) && errno != EEXIST) {
        rc = -errno;
        set_err(err, errlen, "%s: cannot create the store directory: %s", dir, strerror(errno));
        return rc;
    }
    int lock_fd = -1;
    if (opt && opt->exclusive && (rc = lock_dir(dir, &lock_fd, err, errlen))) return rc;
    size_t map = round_page(opt && opt->map_bytes ? opt->map_bytes : ASTORE_DEFAULT_MAP, true);
    size_t max = round_page(opt && opt->max_map_bytes ? opt->max_map_bytes : ASTORE_DEFAULT_MAX, false);
    if (max < map) max = map;

    s = calloc(1, sizeof *s);
    if (!s) {
        set_err(err, errlen, "out of memory");
        if (lock_fd >= 0) close(lock_fd);
        return PEFTD_ENOMEM;
    }
    s->lock_fd = lock_fd;
    s->max_map = max;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    /* growth must not starve behind a steady stream of readers */
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&s->map_lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&s->write_lock, NULL);
    locks = true;

    if ((rc = mdb_env_create(&s->env)) || (rc = mdb_env_set_maxdbs(s->env, ASTORE_MAX_DBS)) ||
        (rc = mdb_env_set_maxreaders(s->env, ASTORE_MAX_READERS))) {
        set_err(err, errlen, "%s: lmdb: %s", dir, mdb_strerror(rc));
        rc = astore__status(rc);
        goto fail;
    }
    /* A new store starts at the configured map; an existing one opens with the size it
     * last grew to (LMDB takes the file's size when none is set before mdb_env_open). */
    char data[4200];
    struct stat sb;
    snprintf(data, sizeof data, "%s/data.mdb", dir);
    if ((rc = check_data_file(data, err, errlen))) {
        if (!err || !err[0]) set_err(err, errlen, "%s: %s", data, strerror(-rc));
        goto fail;
    }
    if (stat(data, &sb) != 0 && (rc = mdb_env_set_mapsize(s->env, map))) {
        set_err(err, errlen, "%s: cannot size the map: %s", dir, mdb_strerror(rc));
        rc = astore__status(rc);
        goto fail;
    }
    /* No MDB_NOSYNC / MDB_NOMETASYNC / MDB_WRITEMAP: every commit is durable and a SIGKILL
     * or power loss leaves the last committed state. MDB_NOTLS: read transactions are not
     * bound to threads (HTTP handlers come from a pool). */
    rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0600);
    if (rc) {
        set_err(err, errlen, "%s: cannot open the LMDB store: %s", dir, mdb_strerror(rc));
        rc = astore__status(rc);
        goto fail;
    }
    MDB_envinfo info;
    if ((rc = mdb_env_info(s->env, &info)) ||
        (info.me_mapsize < map && (rc = mdb_env_set_mapsize(s->env, map)))) {
        set_err(err, errlen, "%s: cannot size the map: %s", dir, mdb_strerror(rc));
        rc = astore__status(rc);
        goto fail;
    }
    /* a process killed inside a read transaction leaves its reader slot behind; freeing
     * them lets LMDB reuse the pages those stale readers pinned */
    int dead = 0;
    mdb_reader_check(s->env, &dead);

    open_ctx oc = {.s = s};
    rc = astore__write_txn(s, open_fn, &oc);
    if (rc) {
        if (oc.newer) {
            set_err(err, errlen, "%s: store schema %u is newer than this peftd's (%d): upgrade peftd", dir, oc.found,
                    ASTORE_SCHEMA);
        } else {
            set_err(err, errlen, "%s: cannot open the store's databases: %s", dir, peftd_strerror(rc));
        }
        goto fail;
    }
    *out = s;
    return 0;
fail:
    if (s->env) mdb_env_close(s->env);
    if (locks) {
        pthread_rwlock_destroy(&s->map_lock);
        pthread_mutex_destroy(&s->write_lock);
    }
    if (s->lock_fd >= 0) close(s->lock_fd);
    free(s);
    return rc;
}

void astore_close(astore *s) {
    if (!s) return;
    mdb_env_close(s->env);
    if (s->lock_fd >= 0) close(s->lock_fd);
    pthread_rwlock_destroy(&s->map_lock);
    pthread_mutex_destroy(&s->write_lock);
    free(s);
}

/* ---------------------------------------------------------------- owner scoping */

int astore_key(const char *owner, const char *name, char out[ASTORE_KEY_MAX + 1]) {
    out[0] = 0;
    if (!owner || !name_valid(name) || strchr(name, '/') || strnlen(owner, ASTORE_NAME_MAX + 1) > ASTORE_NAME_MAX ||
        strchr(owner, '/'))
        return PEFTD_EINVAL;
    snprintf(out, ASTORE_KEY_MAX + 1, "%s%s%s", owner, owner[0] ? "/" : "", name);
    return 0;
}

/* Positions cur at the first key starting with prefix; MDB_NOTFOUND when there is none. */
static int prefix_first(MDB_cursor *cur, const char *prefix, MDB_val *k, MDB_val *v) {
    *k = val_str(prefix);
    int rc = mdb_cursor_get(cur, k, v, MDB_SET_RANGE);
    if (rc == 0 && (k->mv_size < strlen(prefix) || memcmp(k->mv_data, prefix, strlen(prefix)))) rc = MDB_NOTFOUND;
    return rc;
}

/* Sum of the bytes of owner's records (keys "owner/..."), inside txn. */
static int owner_bytes_txn(astore *s, MDB_txn *txn, const char *owner, uint64_t *sum) {
    char prefix[ASTORE_NAME_MAX + 2];
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    astore_meta m;
    *sum = 0;
    snprintf(prefix, sizeof prefix, "%s/", owner);
    int rc = mdb_cursor_open(txn, s->meta, &cur);
    if (rc) return rc;
    for (rc = prefix_first(cur, prefix, &k, &v); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < strlen(prefix) || memcmp(k.mv_data, prefix, strlen(prefix))) break;
        if ((rc = meta_decode_key(&k, &v, &m))) break;
        *sum += m.bytes;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : rc;
}

int astore_owner_bytes(astore *s, const char *owner, uint64_t *bytes) {
    *bytes = 0;
    if (!s || !owner || !*owner || strchr(owner, '/')) return PEFTD_EINVAL;
    MDB_txn *txn;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    rc = owner_bytes_txn(s, txn, owner, bytes);
    astore__read_end(s, txn);
    return astore__status(rc);
}

/* ---------------------------------------------------------------- put / delete */

typedef struct {
    const astore_meta *in;
    const char *key;         /* the record's key: the name, or owner/name (scoped) */
    uint64_t quota;          /* scoped puts: the owner's byte limit (0 = none) */
    bool need_tenant;        /* astore_put_tenant: the owner's tenant record must exist */
    const void *blob;
    size_t len;
    unsigned char sum[32];
    int64_t now;
    astore_meta out;
    char dropped[65];
} put_ctx;

static int put_fn(astore *s, MDB_txn *txn, void *vctx) {
    put_ctx *p = vctx;
    astore_meta old;
    bool had = false;
    MDB_val k = val_str(p->key), v;
    p->dropped[0] = 0;
    int rc;
    if (p->need_tenant) {
        /* in the same transaction as the put: a tenant deleted before it commits (its
         * adapters with it, tenant_store.c) makes this put fail, never outlive it */
        MDB_val tk = val_str(p->in->owner), tv;
        rc = mdb_get(txn, s->tenants, &tk, &tv);
        if (rc == MDB_NOTFOUND) return -ENOENT;
        if (rc) return rc;
    }
    rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == 0) {
        if ((rc = meta_decode(v.mv_data, v.mv_size, &old))) return rc;
        had = true;
    } else if (rc != MDB_NOTFOUND) {
        return rc;
    }
    if (p->quota) {
        /* inside the write transaction, so two concurrent uploads cannot both fit */
        uint64_t used = 0;
        if ((rc = owner_bytes_txn(s, txn, p->in->owner, &used))) return rc;
        if (had) used -= used >= old.bytes ? old.bytes : used;
        if (used + p->len > p->quota) return -EDQUOT;
    }
    p->out = *p->in;
    p->out.version = had ? old.version + 1 : 1;
    p->out.created = had ? old.created : p->now;
    p->out.updated = p->now;
    p->out.bytes = p->len;
    if (!had || strcmp(old.sha256, p->in->sha256)) {
        if ((rc = ref_inc(s, txn, p->in->sha256, p->blob, p->len, p->sum))) return rc;
        if (had && (rc = ref_dec(s, txn, old.sha256, p->dropped))) return rc;
    }
    char *json = meta_encode(&p->out);
    if (!json) return PEFTD_ENOMEM;
    v = val_str(json);
    rc = mdb_put(txn, s->meta, &k, &v, 0);
    free(json);
    return rc;
}

/* What meta_decode would refuse must never be written: one bad field would make the
 * record (and every listing page holding it) unreadable. */
static bool meta_storable(const astore_meta *m) {
    bool kind = false;
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++) kind |= m->kind == KINDS[i];
    if (!kind || !name_valid(m->name) || !sha_valid(m->sha256) || strnlen(m->owner, sizeof m->owner) > ASTORE_NAME_MAX ||
        strnlen(m->targets, sizeof m->targets) >= sizeof m->targets ||
        strnlen(m->base_fingerprint, sizeof m->base_fingerprint) >= sizeof m->base_fingerprint ||
        m->n_params < 0 || m->n_params > ((int64_t)1 << 53) || m->n_virtual < 0 || m->n_ranks < 0 || m->n_ranks > 8)
        return false;
    for (int i = 0; i < m->n_ranks; i++)
        if (m->ranks[i] < 0) return false;
    return true;
}

static int put_key(astore *s, const astore_meta *meta, const char *key, uint64_t quota, bool need_tenant,
                   const void *blob, size_t len, astore_meta *stored, char old_sha256[65]) {
    if (old_sha256) old_sha256[0] = 0;
    if (!s || !meta || (!blob && len) || !meta_storable(meta)) return PEFTD_EINVAL;
    if (len > SIZE_MAX - BLOB_HDR) return PEFTD_ENOSPC;
    put_ctx p = {.in = meta, .key = key, .quota = quota, .need_tenant = need_tenant, .blob = blob, .len = len,
                 .now = (int64_t)time(NULL)};
    /* hashed before the transaction: a write txn blocks every other writer */
    int rc = sha256(blob ? blob : "", len, p.sum);
    if (rc) return rc;
    if ((rc = astore__write_txn(s, put_fn, &p))) return rc;
    if (stored) *stored = p.out;
    if (old_sha256) memcpy(old_sha256, p.dropped, 65);
    return 0;
}

int astore_put(astore *s, const astore_meta *meta, const void *blob, size_t len, astore_meta *stored,
               char old_sha256[65]) {
    return put_key(s, meta, meta ? meta->name : NULL, 0, false, blob, len, stored, old_sha256);
}

int astore_put_scoped(astore *s, const astore_meta *meta, uint64_t quota_bytes, const void *blob, size_t len,
                      astore_meta *stored, char old_sha256[65]) {
    char key[ASTORE_KEY_MAX + 1];
    if (old_sha256) old_sha256[0] = 0;
    if (!meta || astore_key(meta->owner, meta->name, key)) return PEFTD_EINVAL;
    return put_key(s, meta, key, meta->owner[0] ? quota_bytes : 0, false, blob, len, stored, old_sha256);
}

int astore_put_tenant(astore *s, const astore_meta *meta, uint64_t quota_bytes, const void *blob, size_t len,
                      astore_meta *stored, char old_sha256[65]) {
    char key[ASTORE_KEY_MAX + 1];
    if (old_sha256) old_sha256[0] = 0;
    if (!meta || !meta->owner[0] || astore_key(meta->owner, meta->name, key)) return PEFTD_EINVAL;
    return put_key(s, meta, key, quota_bytes, true, blob, len, stored, old_sha256);
}

void astore_removed_free(astore_removed *r) {
    if (!r) return;
    free(r->keys);
    free(r->dropped);
    memset(r, 0, sizeof *r);
}

static int removed_add(astore_removed *r, const char *key, const char *dropped) {
    if (!r) return 0;
    if (key) {
        void *p = realloc(r->keys, (size_t)(r->n_keys + 1) * sizeof *r->keys);
        if (!p) return PEFTD_ENOMEM;
        r->keys = p;
        snprintf(r->keys[r->n_keys++], sizeof r->keys[0], "%s", key);
    }
    if (dropped && dropped[0]) {
        void *p = realloc(r->dropped, (size_t)(r->n_dropped + 1) * sizeof *r->dropped);
        if (!p) return PEFTD_ENOMEM;
        r->dropped = p;
        snprintf(r->dropped[r->n_dropped++], sizeof r->dropped[0], "%s", dropped);
    }
    return 0;
}

int astore__delete_owner_txn(astore *s, MDB_txn *txn, const char *owner, astore_removed *r) {
    char prefix[ASTORE_NAME_MAX + 2];
    size_t pl = (size_t)snprintf(prefix, sizeof prefix, "%s/", owner);
    if (!owner[0] || strchr(owner, '/') || pl >= sizeof prefix) return PEFTD_EINVAL;
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    astore_meta m;
    int rc = mdb_cursor_open(txn, s->meta, &cur);
    if (rc) return rc;
    /* every key of the owner's block, however many public or other owners' keys sort
     * around it: the cursor stays inside the "owner/" prefix (MDB_NEXT after
     * mdb_cursor_del yields the record that followed the deleted one) */
    for (rc = prefix_first(cur, prefix, &k, &v); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < pl || memcmp(k.mv_data, prefix, pl)) break;
        char key[ASTORE_KEY_MAX + 1], dropped[65] = "";
        if (k.mv_size > ASTORE_KEY_MAX) {
            rc = PEFTD_EFORMAT;
            break;
        }
        memcpy(key, k.mv_data, k.mv_size);
        key[k.mv_size] = 0;
        if ((rc = meta_decode_key(&k, &v, &m))) break;
        if ((rc = mdb_cursor_del(cur, 0))) break;
        if ((rc = ref_dec(s, txn, m.sha256, dropped))) break;
        if ((rc = removed_add(r, key, dropped))) break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

typedef struct {
    const char *key;
    char dropped[65];
} del_ctx;

static int del_fn(astore *s, MDB_txn *txn, void *vctx) {
    del_ctx *d = vctx;
    astore_meta old;
    MDB_val k = val_str(d->key), v;
    d->dropped[0] = 0;
    int rc = mdb_get(txn, s->meta, &k, &v);
    if (rc) return rc;
    if ((rc = meta_decode(v.mv_data, v.mv_size, &old))) return rc;
    if ((rc = mdb_del(txn, s->meta, &k, NULL))) return rc;
    return ref_dec(s, txn, old.sha256, d->dropped);
}

int astore_delete(astore *s, const char *name, char old_sha256[65]) {
    if (old_sha256) old_sha256[0] = 0;
    if (!s || !name_valid(name)) return PEFTD_EINVAL;
    del_ctx d = {.key = name};
    int rc = astore__write_txn(s, del_fn, &d);
    if (rc == 0 && old_sha256) memcpy(old_sha256, d.dropped, 65);
    return rc;
}

int astore_delete_scoped(astore *s, const char *owner, const char *name, char old_sha256[65]) {
    char key[ASTORE_KEY_MAX + 1];
    if (old_sha256) old_sha256[0] = 0;
    if (!s || astore_key(owner, name, key)) return PEFTD_EINVAL;
    del_ctx d = {.key = key};
    int rc = astore__write_txn(s, del_fn, &d);
    if (rc == 0 && old_sha256) memcpy(old_sha256, d.dropped, 65);
    return rc;
}

/* ---------------------------------------------------------------- reads */

int astore_get_meta_scoped(astore *s, const char *owner, const char *name, astore_meta *out) {
    char key[ASTORE_KEY_MAX + 1];
    if (astore_key(owner, name, key)) return PEFTD_EINVAL;
    return astore_get_meta(s, key, out);
}

int astore_get_meta(astore *s, const char *name, astore_meta *out) {
    if (!s || !out || !name || !*name || strnlen(name, ASTORE_KEY_MAX + 1) > ASTORE_KEY_MAX) return PEFTD_EINVAL;
    MDB_txn *txn;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    MDB_val k = val_str(name), v;
    rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == 0) rc = meta_decode_key(&k, &v, out);
    astore__read_end(s, txn);
    return astore__status(rc);
}

int astore_get_blob(astore *s, const char *sha, void **blob, size_t *len) {
    if (blob) *blob = NULL;
    if (len) *len = 0;
    if (!s || !blob || !len || !sha || strnlen(sha, 65) != 64 || !sha_valid(sha)) return PEFTD_EINVAL;
    MDB_txn *txn;
    unsigned char want[32], got[32];
    void *copy = NULL;
    size_t n = 0;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    MDB_val k = val_str(sha), v;
    rc = mdb_get(txn, s->blobs, &k, &v);
    if (rc == 0) {
        if (v.mv_size < BLOB_HDR || memcmp(v.mv_data, BLOB_MAGIC, 4)) {
            rc = PEFTD_EFORMAT;
        } else {
            n = v.mv_size - BLOB_HDR;
            copy = malloc(n ? n : 1);
            if (!copy) {
                rc = PEFTD_ENOMEM;
            } else {
                memcpy(want, (const unsigned char *)v.mv_data + 8, 32);
                memcpy(copy, (const unsigned char *)v.mv_data + BLOB_HDR, n);
            }
        }
    }
    astore__read_end(s, txn);
    rc = astore__status(rc);
    /* verified after the transaction ended: hashing megabytes need not pin the snapshot */
    if (rc == 0 && (rc = sha256(copy, n, got)) == 0 && memcmp(want, got, 32)) rc = PEFTD_EIO;
    if (rc) {
        free(copy);
        return rc;
    }
    *blob = copy;
    *len = n;
    return 0;
}

int astore_list(astore *s, const char *after, int limit, astore_meta *out, int *n, bool *more) {
    if (n) *n = 0;
    if (more) *more = false;
    if (!s || !n || (limit > 0 && !out)) return PEFTD_EINVAL;
    if (!after) after = "";
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    MDB_val k = val_str(after), v;
    if ((rc = mdb_cursor_open(txn, s->meta, &cur))) goto done;
    if (*after) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        if (rc == 0 && k.mv_size == strlen(after) && !memcmp(k.mv_data, after, k.mv_size))
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    } else {
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    }
    int i = 0;
    while (rc == 0 && i < limit) {
        if ((rc = meta_decode_key(&k, &v, &out[i]))) goto done;
        i++;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (rc == 0 && more) *more = true;
    if (rc == MDB_NOTFOUND) rc = 0;
    *n = i;
done:
    if (cur) mdb_cursor_close(cur);
    astore__read_end(s, txn);
    return astore__status(rc);
}

int astore_count(astore *s, uint64_t *n) {
    if (!s || !n) return PEFTD_EINVAL;
    MDB_txn *txn;
    MDB_stat st;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    rc = mdb_stat(txn, s->meta, &st);
    astore__read_end(s, txn);
    if (rc == 0) *n = st.ms_entries;
    return astore__status(rc);
}

int astore_get_stats(astore *s, astore_stats *st) {
    if (!s || !st) return PEFTD_EINVAL;
    memset(st, 0, sizeof *st);
    MDB_txn *txn;
    MDB_stat ms, bs, es;
    MDB_envinfo info;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    if (!(rc = mdb_stat(txn, s->meta, &ms)) && !(rc = mdb_stat(txn, s->blobs, &bs)) &&
        !(rc = mdb_env_stat(s->env, &es)) && !(rc = mdb_env_info(s->env, &info))) {
        st->map_bytes = info.me_mapsize;
        /* pages up to the last one in use (free pages inside are reused before growth) */
        st->used_bytes = (uint64_t)(info.me_last_pgno + 1) * es.ms_psize;
        st->entries = ms.ms_entries;
        st->blobs = bs.ms_entries;
    }
    astore__read_end(s, txn);
    return astore__status(rc);
}

/* One side of astore_list_visible's merge: a cursor over either the owner's keys
 * ("owner/" prefix) or the public ones (no '/'), with the current record's name. */
typedef struct {
    MDB_cursor *cur;
    const char *prefix; /* "owner/", or NULL for the public side */
    MDB_val k, v;
    int rc;             /* 0: positioned on a record; MDB_NOTFOUND: exhausted */
} vis_side;

static const char *vis_name(const vis_side *x, size_t *len) {
    size_t skip = x->prefix ? strlen(x->prefix) : 0;
    *len = x->k.mv_size - skip;
    return (const char *)x->k.mv_data + skip;
}

/* Settles x on a record of its side at or after its current position. */
static void vis_settle(vis_side *x) {
    while (x->rc == 0) {
        const char *kd = x->k.mv_data;
        if (x->prefix) {
            size_t pl = strlen(x->prefix);
            if (x->k.mv_size < pl || memcmp(kd, x->prefix, pl)) x->rc = MDB_NOTFOUND;
            return;
        }
        const char *slash = memchr(kd, '/', x->k.mv_size);
        if (!slash) return;
        /* an owner's block of keys: jump past all of it ('0' follows '/' in ASCII) */
        char next[ASTORE_KEY_MAX + 2];
        size_t ol = (size_t)(slash - kd);
        if (ol > ASTORE_KEY_MAX) {
            x->rc = MDB_CORRUPTED;
            return;
        }
        memcpy(next, kd, ol);
        next[ol] = '0';
        next[ol + 1] = 0;
        x->k = val_str(next);
        x->rc = mdb_cursor_get(x->cur, &x->k, &x->v, MDB_SET_RANGE);
    }
}

/* Positions x at the first record of its side whose name is after `after`. */
static void vis_start(vis_side *x, const char *after) {
    char seek[ASTORE_KEY_MAX + 2];
    snprintf(seek, sizeof seek, "%s%s", x->prefix ? x->prefix : "", after);
    x->k = val_str(seek);
    x->rc = seek[0] ? mdb_cursor_get(x->cur, &x->k, &x->v, MDB_SET_RANGE)
                    : mdb_cursor_get(x->cur, &x->k, &x->v, MDB_FIRST);
    vis_settle(x);
    size_t nl;
    const char *n = x->rc == 0 ? vis_name(x, &nl) : NULL;
    if (n && after[0] && nl == strlen(after) && !memcmp(n, after, nl)) {
        x->rc = mdb_cursor_get(x->cur, &x->k, &x->v, MDB_NEXT);
        vis_settle(x);
    }
}

static void vis_next(vis_side *x) {
    x->rc = mdb_cursor_get(x->cur, &x->k, &x->v, MDB_NEXT);
    vis_settle(x);
}

static int vis_cmp(const vis_side *a, const vis_side *b) {
    size_t la, lb;
    const char *na = vis_name(a, &la), *nb = vis_name(b, &lb);
    int c = memcmp(na, nb, la < lb ? la : lb);
    return c ? c : (la > lb) - (la < lb);
}

int astore_list_visible(astore *s, const char *owner, const char *after, int limit, astore_meta *out, int *n,
                        bool *more) {
    if (n) *n = 0;
    if (more) *more = false;
    if (!s || !n || !owner || strchr(owner, '/') || strlen(owner) > ASTORE_NAME_MAX || (limit > 0 && !out))
        return PEFTD_EINVAL;
    if (!after) after = "";
    if (strlen(after) > ASTORE_NAME_MAX || strchr(after, '/')) return PEFTD_EINVAL;
    char prefix[ASTORE_NAME_MAX + 2];
    snprintf(prefix, sizeof prefix, "%s/", owner);
    vis_side own = {.prefix = prefix, .rc = MDB_NOTFOUND}, pub = {.prefix = NULL};
    MDB_txn *txn;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    if ((rc = mdb_cursor_open(txn, s->meta, &pub.cur))) goto done;
    if (owner[0] && (rc = mdb_cursor_open(txn, s->meta, &own.cur))) goto done;
    vis_start(&pub, after);
    if (own.cur) vis_start(&own, after);
    int i = 0;
    /* merge by name; an owner's record shadows the public one of the same name */
    for (;;) {
        if ((pub.rc && pub.rc != MDB_NOTFOUND) || (own.rc && own.rc != MDB_NOTFOUND)) {
            rc = pub.rc && pub.rc != MDB_NOTFOUND ? pub.rc : own.rc;
            goto done;
        }
        if (pub.rc && own.rc) break;
        if (i == limit) {
            if (more) *more = true;
            break;
        }
        int c = pub.rc ? 1 : own.rc ? -1 : vis_cmp(&pub, &own);
        vis_side *take = c < 0 ? &pub : &own;
        if ((rc = meta_decode_key(&take->k, &take->v, &out[i]))) goto done;
        i++;
        if (c == 0) vis_next(&pub);
        vis_next(take);
    }
    *n = i;
    rc = 0;
done:
    if (pub.cur) mdb_cursor_close(pub.cur);
    if (own.cur) mdb_cursor_close(own.cur);
    astore__read_end(s, txn);
    return astore__status(rc);
}
