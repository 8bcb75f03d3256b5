/* server/model/model_quant_cache.c — the at-load conversion's cache files (model_quant_cache.h:
 * key, plan check, payload sha256, atomic rewrite, pruning). */
#include "server/model/model_quant_cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/status.h"

#define MQC_MAGIC "PEFTDQC2" /* 2: the model directory's path follows the plan */
#define MQC_ALIGN 4096
#define MQC_CHUNK ((size_t)8 << 20)
#define MQC_MAX_JOBS 65536

/* The file: header, then n_jobs job records, the model directory's real path (src_len bytes, no
 * NUL: what mqc_prune checks), zero padding to payload_offset (a multiple of MQC_ALIGN), then the
 * payload. Integers little-endian (x86 and arm64 hosts: native). */
typedef struct {
    char magic[8];
    uint32_t n_jobs, src_len;
    uint64_t payload_offset, payload_bytes;
    uint8_t key[32], payload_sha256[32];
} mqc_header;

typedef struct {
    uint32_t dt, reserved;
    int64_t rows, cols;
    uint64_t offset, bytes;
} mqc_record;

_Static_assert(sizeof(mqc_header) == 96 && sizeof(mqc_record) == 40, "cache file layout");

/* sha256 of the pieces fed through it; NULL md on an OpenSSL failure (then every use fails). */
static EVP_MD_CTX *mqc_md_new(void) {
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md && !EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(md);
        md = NULL;
    }
    return md;
}

static int mqc_md_done(EVP_MD_CTX *md, uint8_t out[32]) {
    unsigned len = 0;
    int ok = md && EVP_DigestFinal_ex(md, out, &len) && len == 32;
    EVP_MD_CTX_free(md);
    return ok ? 0 : PEFTD_EIO;
}

static int mqc_sha256(const void *p, size_t n, uint8_t out[32]) {
    EVP_MD_CTX *md = mqc_md_new();
    int ok = md && EVP_DigestUpdate(md, p, n);
    int rc = mqc_md_done(md, out);
    return rc < 0 ? rc : ok ? 0 : PEFTD_EIO;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool mqc_keyed_file(const char *name) {
    size_t n = strlen(name);
    static const char *SUF[] = {".safetensors", ".gguf", ".json"};
    for (int i = 0; i < 3; i++) {
        size_t k = strlen(SUF[i]);
        if (n > k && strcmp(name + n - k, SUF[i]) == 0) return true;
    }
    return false;
}

/* The key (header above), the file's path and the model directory's real path. */
static int mqc_key(const char *cache_dir, const model *m, kdtype dt, const void *fp, size_t fp_len, uint8_t key[32],
                   char *path, size_t pathlen, char real[PATH_MAX]) {
    if (!realpath(m->dir, real)) return -errno;
    uint8_t slot[32];
    char head[PATH_MAX + 64];
    int hl = snprintf(head, sizeof head, "peftd weights cache\n%s\n%s\n", kdtype_name(dt), real);
    int rc = mqc_sha256(head, (size_t)hl, slot);
    if (rc < 0) return rc;
    char hex[65];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", slot[i]);
    if ((size_t)snprintf(path, pathlen, "%s/%s.pqc", cache_dir, hex) >= pathlen) return PEFTD_E2BIG;

    DIR *d = opendir(real);
    if (!d) return -errno;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    rc = 0;
    while ((de = readdir(d))) {
        if (!mqc_keyed_file(de->d_name)) continue;
        if (n == cap) {
            char **g = realloc(names, (cap = cap ? 2 * cap : 16) * sizeof *names);
            if (!g) { rc = PEFTD_ENOMEM; break; }
            names = g;
        }
        if (!(names[n] = strdup(de->d_name))) { rc = PEFTD_ENOMEM; break; }
        n++;
    }
    closedir(d);
    if (rc == 0) qsort(names, n, sizeof *names, by_name);
    EVP_MD_CTX *md = mqc_md_new();
    hl = snprintf(head, sizeof head, "peftd weights cache 2\n%s\n%s\n%zu\n", kdtype_name(dt), real, fp_len);
    if (!md || !EVP_DigestUpdate(md, head, (size_t)hl) || !EVP_DigestUpdate(md, fp, fp_len)) rc = rc ? rc : PEFTD_EIO;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char full[PATH_MAX + 256], line[512];
        struct stat st;
        snprintf(full, sizeof full, "%s/%s", real, names[i]);
        if (stat(full, &st) != 0) { rc = -errno; break; }
        if (!S_ISREG(st.st_mode)) continue;
        int ll = snprintf(line, sizeof line, "%s %lld %lld.%09ld %llu\n", names[i], (long long)st.st_size,
                          (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec, (unsigned long long)st.st_ino);
        if (!EVP_DigestUpdate(md, line, (size_t)ll)) rc = PEFTD_EIO;
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    int rc2 = mqc_md_done(md, key);
    return rc ? rc : rc2;
}

static void mqc_records(const mqc_job *jobs, int n, mqc_record *r) {
    for (int i = 0; i < n; i++)
        r[i] = (mqc_record){.dt = (uint32_t)jobs[i].dt, .rows = jobs[i].rows, .cols = jobs[i].cols,
                            .offset = jobs[i].offset, .bytes = jobs[i].bytes};
}

static uint64_t mqc_payload_offset(int n_jobs, size_t src_len) {
    uint64_t end = sizeof(mqc_header) + (uint64_t)n_jobs * sizeof(mqc_record) + src_len;
    return (end + MQC_ALIGN - 1) / MQC_ALIGN * MQC_ALIGN;
}

/* Reads exactly len bytes at off. */
static int mqc_pread(int fd, void *buf, size_t len, uint64_t off) {
    uint8_t *p = buf;
    while (len) {
        ssize_t k = pread(fd, p, len, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return k < 0 ? -errno : PEFTD_EFORMAT;
        p += k, len -= (size_t)k, off += (uint64_t)k;
    }
    return 0;
}

static int mqc_write_all(int fd, const void *buf, size_t len) {
    const uint8_t *p = buf;
    while (len) {
        ssize_t k = write(fd, p, len);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -errno;
        p += k, len -= (size_t)k;
    }
    return 0;
}

int mqc_read(const char *cache_dir, const model *m, kdtype dt, const void *fp, size_t fp_len, const mqc_job *jobs,
             int n_jobs, void *mem, size_t payload_bytes) {
    uint8_t key[32];
    char path[PATH_MAX + 80], real[PATH_MAX];
    if (n_jobs <= 0 || n_jobs > MQC_MAX_JOBS || mqc_key(cache_dir, m, dt, fp, fp_len, key, path, sizeof path, real) < 0)
        return 0;
    size_t src_len = strlen(real);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0; /* never written: the common miss, not logged */
    const char *why = NULL;
    mqc_header h;
    mqc_record *want = malloc((size_t)n_jobs * sizeof *want), *have = malloc((size_t)n_jobs * sizeof *have);
    struct stat st;
    EVP_MD_CTX *md = NULL;
    if (!want || !have) why = "out of memory";
    else if (fstat(fd, &st) != 0 || mqc_pread(fd, &h, sizeof h, 0) < 0) why = "unreadable header";
    else if (memcmp(h.magic, MQC_MAGIC, 8) != 0) why = "not a weights cache file";
    else if (memcmp(h.key, key, 32) != 0) why = "made from other weight files or by converters that write other bytes";
    else if (h.n_jobs != (uint32_t)n_jobs || h.src_len != src_len || h.payload_bytes != payload_bytes ||
             h.payload_offset != mqc_payload_offset(n_jobs, src_len))
        why = "another conversion plan";
    else if ((uint64_t)st.st_size != h.payload_offset + h.payload_bytes) why = "truncated or padded";
    else if (mqc_pread(fd, have, (size_t)n_jobs * sizeof *have, sizeof h) < 0) why = "unreadable plan";
    else {
        mqc_records(jobs, n_jobs, want);
        if (memcmp(want, have, (size_t)n_jobs * sizeof *want) != 0) why = "another conversion plan";
    }
    if (!why) { /* the payload, hashed as it is read */
        md = mqc_md_new();
        uint8_t sum[32];
        for (size_t at = 0; !why && at < payload_bytes; at += MQC_CHUNK) {
            size_t len = payload_bytes - at < MQC_CHUNK ? payload_bytes - at : MQC_CHUNK;
            if (mqc_pread(fd, (uint8_t *)mem + at, len, h.payload_offset + at) < 0) why = "unreadable payload";
            else if (!md || !EVP_DigestUpdate(md, (uint8_t *)mem + at, len)) why = "sha256 failed";
        }
        int rc = mqc_md_done(md, sum);
        if (!why && (rc < 0 || memcmp(sum, h.payload_sha256, 32) != 0)) why = "payload sha256 mismatch (damaged)";
    }
    if (!why) (void)futimens(fd, NULL); /* used now: mqc_prune evicts the least recently used */
    close(fd);
    free(want), free(have);
    if (why) {
        LOGW("model %s: weights cache %s not used (%s): converting again", m->name, path, why);
        return 0;
    }
    return 1;
}

int mqc_write(const char *cache_dir, const model *m, kdtype dt, const void *fp, size_t fp_len, const mqc_job *jobs,
              int n_jobs, const void *mem, size_t payload_bytes) {
    uint8_t key[32];
    char path[PATH_MAX + 80], tmp[PATH_MAX + 120] = "", real[PATH_MAX];
    int rc = 0, fd = -1;
    mqc_record *rec = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (n_jobs <= 0 || n_jobs > MQC_MAX_JOBS) return PEFTD_EINVAL;
    if (mkdir(cache_dir, 0700) != 0 && errno != EEXIST) {
        rc = -errno;
        goto out;
    }
    if ((rc = mqc_key(cache_dir, m, dt, fp, fp_len, key, path, sizeof path, real)) < 0) goto out;
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    size_t src_len = strlen(real);
    mqc_header h = {.n_jobs = (uint32_t)n_jobs, .src_len = (uint32_t)src_len,
                    .payload_offset = mqc_payload_offset(n_jobs, src_len), .payload_bytes = payload_bytes};
    memcpy(h.magic, MQC_MAGIC, 8);
    memcpy(h.key, key, 32);
    if ((rc = mqc_sha256(mem, payload_bytes, h.payload_sha256)) < 0) goto out;
    size_t head = (size_t)h.payload_offset;
    if (!(rec = calloc(1, head))) {
        rc = PEFTD_ENOMEM;
        goto out;
    }
    memcpy(rec, &h, sizeof h);
    mqc_records(jobs, n_jobs, (mqc_record *)((uint8_t *)rec + sizeof h));
    memcpy((uint8_t *)rec + sizeof h + (size_t)n_jobs * sizeof(mqc_record), real, src_len);
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
        rc = -errno;
        goto out;
    }
    if ((rc = mqc_write_all(fd, rec, head)) < 0 || (rc = mqc_write_all(fd, mem, payload_bytes)) < 0) goto out;
    if (fsync(fd) != 0) {
        rc = -errno;
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = -errno;
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = -errno;
        goto out;
    }
    int dfd = open(cache_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) fsync(dfd), close(dfd);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    LOGI("model %s: %s weights written to the weights cache %s (%.1f MB in %.1f ms)", m->name, kdtype_name(dt), path,
         (double)payload_bytes / 1e6, (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
out:
    if (fd >= 0) close(fd);
    if (rc < 0) {
        if (*tmp) unlink(tmp);
        LOGW("model %s: weights cache in %s not written (%s): the next start converts again", m->name, cache_dir,
             peftd_strerror(rc));
    }
    free(rec);
    return rc;
}

/* ---- pruning ---- */

typedef struct {
    char *name;
    uint64_t bytes;
    struct timespec used; /* mtime: written, or read back by mqc_read */
} mqc_entry;

static int by_recent_use(const void *a, const void *b) { /* most recent first, then by name */
    const mqc_entry *x = a, *y = b;
    if (x->used.tv_sec != y->used.tv_sec) return x->used.tv_sec > y->used.tv_sec ? -1 : 1;
    if (x->used.tv_nsec != y->used.tv_nsec) return x->used.tv_nsec > y->used.tv_nsec ? -1 : 1;
    return strcmp(x->name, y->name);
}

static bool mqc_has_suffix(const char *name, const char *suf) {
    size_t n = strlen(name), k = strlen(suf);
    return n > k && strcmp(name + n - k, suf) == 0;
}

/* Why a cache file can never be used again (static text, or written into buf), or NULL: it can. */
static const char *mqc_unusable(int dfd, const char *name, char *buf, size_t buflen) {
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return NULL; /* gone meanwhile, or not ours to judge */
    mqc_header h = {0};
    const char *why = NULL;
    char src[PATH_MAX];
    struct stat st;
    if (mqc_pread(fd, &h, sizeof h, 0) < 0 || memcmp(h.magic, MQC_MAGIC, 8) != 0)
        why = memcmp(h.magic, "PEFTDQC", 7) == 0 ? "an older cache format" : "not a weights cache file";
    else if (h.n_jobs == 0 || h.n_jobs > MQC_MAX_JOBS || h.src_len == 0 || h.src_len >= sizeof src ||
             mqc_pread(fd, src, h.src_len, sizeof h + (uint64_t)h.n_jobs * sizeof(mqc_record)) < 0)
        why = "unreadable header";
    else {
        src[h.src_len] = 0;
        if (stat(src, &st) != 0 && (errno == ENOENT || errno == ENOTDIR)) {
            snprintf(buf, buflen, "its model directory %s no longer exists", src);
            why = buf;
        }
    }
    close(fd);
    return why;
}

/* A "<file>.tmp.<pid>" left by a writer that is no longer running (killed mid-write). */
static bool mqc_orphan_tmp(const char *name) {
    const char *t = strstr(name, ".pqc.tmp.");
    if (!t) return false;
    char *end;
    errno = 0;
    long pid = strtol(t + 9, &end, 10);
    if (errno || *end || pid <= 0 || pid == (long)getpid()) return false;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

int mqc_prune(const char *cache_dir, uint64_t max_bytes) {
    DIR *d = opendir(cache_dir);
    if (!d) return errno == ENOENT ? 0 : -errno;
    int dfd = dirfd(d), removed = 0, rc = 0;
    mqc_entry *keep = NULL;
    size_t n = 0, cap = 0;
    uint64_t removed_bytes = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *name = de->d_name, *why = NULL;
        char buf[PATH_MAX + 64];
        struct stat st;
        if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) continue;
        if (mqc_has_suffix(name, ".pqc")) why = mqc_unusable(dfd, name, buf, sizeof buf);
        else if (mqc_orphan_tmp(name)) why = "a write interrupted (its process is gone)";
        else continue; /* not this cache's file: left alone */
        if (why) {
            if (unlinkat(dfd, name, 0) == 0) {
                LOGI("weights cache: removed %s/%s (%s; %.1f MB)", cache_dir, name, why, (double)st.st_size / 1e6);
                removed++, removed_bytes += (uint64_t)st.st_size;
            }
            continue;
        }
        if (n == cap) {
            mqc_entry *g = realloc(keep, (cap = cap ? 2 * cap : 16) * sizeof *keep);
            if (!g) { rc = PEFTD_ENOMEM; break; }
            keep = g;
        }
        if (!(keep[n].name = strdup(name))) { rc = PEFTD_ENOMEM; break; }
        keep[n].bytes = (uint64_t)st.st_size;
        keep[n].used = st.st_mtim;
        n++;
    }
    if (rc == 0 && n > 0) {
        qsort(keep, n, sizeof *keep, by_recent_use);
        uint64_t total = keep[0].bytes; /* the most recently used file stays, whatever its size */
        for (size_t i = 1; i < n; i++) {
            if (max_bytes == 0 || total + keep[i].bytes <= max_bytes) {
                total += keep[i].bytes;
                continue;
            }
            if (unlinkat(dfd, keep[i].name, 0) == 0) {
                LOGI("weights cache: removed %s/%s (least recently used; the cache keeps %.1f of at most %.1f MB)",
                     cache_dir, keep[i].name, (double)total / 1e6, (double)max_bytes / 1e6);
                removed++, removed_bytes += keep[i].bytes;
            }
        }
    }
    for (size_t i = 0; i < n; i++) free(keep[i].name);
    free(keep);
    closedir(d);
    if (removed) LOGI("weights cache %s: %d file(s) removed, %.1f MB freed", cache_dir, removed, (double)removed_bytes / 1e6);
    return rc < 0 ? rc : removed;
}
