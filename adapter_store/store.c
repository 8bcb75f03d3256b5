/* adapter_store/store.c — the LMDB adapter store's environment (schema and contract in
 * store.h; what the store's files share in store_internal.h).
 *
 * Owns: opening and closing the environment and its named databases (with the checks
 * made before LMDB maps a file: truncation, the exclusive lock), the transaction helpers
 * with their locking and map growth, the read-and-decode of one record, and the
 * environment-wide counts. The meta record codec is store_meta.c's, blob records and
 * refcounts store_blobs.c's.
 *
 * Locking: LMDB serialises writers across processes, but mdb_env_set_mapsize() is only
 * allowed while this process has no transaction open. So every transaction holds map_lock
 * shared, and growing the map (or adopting another process's growth, MDB_MAP_RESIZED)
 * takes it exclusive; write_lock keeps one writer of this process at a time so a writer
 * never waits on LMDB's writer mutex while holding map_lock (which would block growth).
 */
#include "adapter_store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapter_store/store_internal.h"
#include "lib/log.h"

/* Defaults when astore_options leaves a size at 0: a 64 MiB first map (a few LoRAs of a
 * 1B model) growing up to 64 GiB of disk. */
#define ASTORE_DEFAULT_MAP ((size_t)64 << 20)
#define ASTORE_DEFAULT_MAX ((size_t)64 << 30)
/* HTTP threads, the engine's loader pool and peftctl may all read at once; LMDB's default
 * of 126 reader slots is close enough to a large thread pool to raise it. */
#define ASTORE_MAX_READERS 512

/* Change records kept when astore_options.changes_retain is 0. */
#define ASTORE_DEFAULT_RETAIN 100000

/* meta, blobs, refs, info + tenant_store.c's tenants and keys + changes, with room to spare */
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

/* One record read and decoded inside a short read transaction. */
int astore__get_decoded(astore *s, MDB_dbi dbi, const char *key, astore__decode_fn decode, void *out) {
    MDB_txn *txn;
    int rc = astore__read_begin(s, &txn);
    if (rc) return rc;
    MDB_val k = astore__val_str(key), v;
    rc = mdb_get(txn, dbi, &k, &v);
    if (rc == 0) rc = decode(&k, &v, out);
    astore__read_end(s, txn);
    return astore__status(rc);
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
        (rc = mdb_dbi_open(txn, "keys", MDB_CREATE, &s->keys)) ||
        (rc = mdb_dbi_open(txn, "changes", MDB_CREATE, &s->changes)))
        return rc;
    if ((rc = astore__feed_init_txn(s, txn))) return rc;
    MDB_val k = astore__val_str("schema"), v;
    rc = mdb_get(txn, s->info, &k, &v);
    if (rc == MDB_NOTFOUND) {
        char buf[16];
        snprintf(buf, sizeof buf, "%d", ASTORE_SCHEMA);
        v = astore__val_str(buf);
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
    s->retain = opt && opt->changes_retain ? opt->changes_retain : ASTORE_DEFAULT_RETAIN;
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

/* ---------------------------------------------------------------- counts */

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
