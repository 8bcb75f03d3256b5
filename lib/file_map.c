/* lib/file_map.c — a whole file's bytes, mapped or read into huge-page-advised anonymous
 * memory (lib/file_map.h). */
#include "lib/file_map.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lib/log.h"

#define HUGE_PAGE ((size_t)2 << 20)
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14; an older kernel refuses it and nothing is checked */
#endif

static int read_all(int fd, char *dst, size_t len) {
    size_t done = 0;
    while (done < len) {
        size_t want = len - done > ((size_t)1 << 30) ? (size_t)1 << 30 : len - done;
        ssize_t n = pread(fd, dst + done, want, (off_t)done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -errno;
        if (n == 0) return -EIO; /* the file shrank under us */
        done += (size_t)n;
    }
    return 0;
}

/* bytes (a whole number of pages, > 0) of fresh anonymous memory with protection prot at a 2 MiB
 * boundary: one huge page more is reserved and the ends trimmed, since only aligned 2 MiB
 * ranges can be backed by huge pages (not every kernel aligns large mappings itself).
 * MAP_FAILED with errno on failure. */
static char *reserve_aligned(size_t bytes, int prot) {
    size_t reserve = bytes + HUGE_PAGE;
    if (reserve < bytes) {
        errno = EOVERFLOW;
        return MAP_FAILED;
    }
    char *raw = mmap(NULL, reserve, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return MAP_FAILED;
    char *p = (char *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    if (p > raw) munmap(raw, (size_t)(p - raw));
    if (raw + reserve > p + bytes) munmap(p + bytes, (size_t)(raw + reserve - (p + bytes)));
    return p;
}

/* The file mapped read-only at a 2 MiB-aligned address and advised for huge pages: where the
 * page cache holds the file in 2 MiB folios (a filesystem with large folios, read with this
 * advice in force: the fault path then reads ahead in 2 MiB folios), each is mapped by one
 * page-table entry, and a decode step that walks every weight is spared the TLB misses of
 * 4 KiB pages. Elsewhere the advice does nothing and the mapping is an ordinary one. */
static void *map_file_aligned(int fd, size_t len) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), mapped = (len + page - 1) / page * page;
    char *p = reserve_aligned(mapped, PROT_NONE);
    if (p == MAP_FAILED) return MAP_FAILED;
    /* MAP_FIXED replaces the reservation's pages with the file's */
    if (mmap(p, len, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0) == MAP_FAILED) {
        int e = errno;
        munmap(p, mapped);
        errno = e;
        return MAP_FAILED;
    }
#ifdef MADV_HUGEPAGE
    if (len >= HUGE_PAGE) (void)madvise(p, len / HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE); /* advice only */
#endif
    return p;
}

/* Whether huge bytes of a len-byte file's mapping is most of its whole 2 MiB ranges. */
static bool mostly_huge(size_t len, long long huge) { return huge >= (long long)(len / HUGE_PAGE * HUGE_PAGE / 2); }

/* Bytes of the mapping that starts at addr that are mapped by 2 MiB page-table entries
 * (/proc/self/smaps: FilePmdMapped), or -1 when that cannot be read. */
static long long pmd_mapped_bytes(const void *addr) {
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f) return -1;
    char line[512];
    long long kb = -1;
    bool ours = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char dash;
        if (sscanf(line, "%lx%c%lx ", &lo, &dash, &hi) == 3 && dash == '-') { /* a mapping's first line */
            if (ours) break;
            ours = lo == (uintptr_t)addr;
        } else if (ours && sscanf(line, "FilePmdMapped: %lld kB", &kb) == 1) {
            break;
        }
    }
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* Faults every page of [p, p + len) in now (as llama.cpp's MAP_POPULATE) and returns how many
 * bytes ended up in 2 MiB mappings, or -1 when the kernel cannot say. */
static long long populate(void *p, size_t len) {
    if (madvise(p, len, MADV_POPULATE_READ) != 0) return -1;
    return pmd_mapped_bytes(p);
}

static int open_mapped(int fd, size_t len, file_map *m) {
    char *p = map_file_aligned(fd, len);
    if (p == MAP_FAILED) return -errno;
    *m = (file_map){.addr = p, .len = len, .span = len, .huge_bytes = -1};
    if (len < FILE_MAP_HUGE_MIN) return 0;
    m->huge_bytes = populate(p, len);
    if (m->huge_bytes < 0 || mostly_huge(len, m->huge_bytes)) return 0;
    /* The page cache holds this file in small folios (it was written, or read without the huge
     * page advice): its 2 MiB-aligned ranges cannot be mapped whole. Give the cached pages back
     * (written back first; pages other processes map stay) and read the file again through
     * the advised mapping, whose faults read ahead in 2 MiB folios. */
    munmap(p, len);
    (void)fdatasync(fd);
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if ((p = map_file_aligned(fd, len)) == MAP_FAILED) {
        int e = errno;
        memset(m, 0, sizeof *m);
        return -e;
    }
    *m = (file_map){.addr = p, .len = len, .span = len, .huge_bytes = populate(p, len), .reread = true};
    return 0;
}

int file_map_open(int fd, size_t len, file_map_mode mode, file_map *m) {
    memset(m, 0, sizeof *m);
    if (len == 0) return -EINVAL;
    if (mode == FILE_MAP_MMAP) return open_mapped(fd, len, m);
    /* Whole 2 MiB pages, so the last one can be huge too. */
    size_t span = (len + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    if (span < len) return -EOVERFLOW;
    char *p = reserve_aligned(span, PROT_READ | PROT_WRITE);
    if (p == MAP_FAILED) return -errno;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, span, MADV_HUGEPAGE); /* advice: without THP the read still works */
#endif
    int rc = read_all(fd, p, len);
    if (rc == 0 && mprotect(p, span, PROT_READ) != 0) rc = -errno;
    if (rc < 0) {
        munmap(p, span);
        return rc;
    }
    *m = (file_map){.addr = p, .len = len, .span = span, .huge_bytes = -1};
    return 0;
}

size_t file_map_drop(const void *map, size_t span, const void *p, size_t n) {
    if (!map || !p || n == 0) return 0;
    uintptr_t mlo = (uintptr_t)map, mhi = mlo + span, lo = (uintptr_t)p, hi = lo + n;
    if (hi < lo || mhi < mlo) return 0;
    if (lo < mlo) lo = mlo;
    if (hi > mhi) hi = mhi;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    lo = (lo + page - 1) & ~(page - 1);
    hi &= ~(page - 1);
    if (hi <= lo) return 0;
    return madvise((void *)lo, (size_t)(hi - lo), MADV_DONTNEED) == 0 ? (size_t)(hi - lo) : 0;
}

void file_map_log(const file_map *m, const char *path) {
    if (m->huge_bytes < 0) return;
    const double mb = (double)m->huge_bytes / 1e6, all = (double)m->len / 1e6;
    if (mostly_huge(m->len, m->huge_bytes))
        LOGI("%s: mapped, %.0f of %.0f MB in 2 MiB pages%s", path, mb, all,
             m->reread ? " (the page cache held it in small pages: given back and read again)" : "");
    else
        LOGW("%s: mapped, only %.0f of %.0f MB in 2 MiB pages (no large folios in this page cache%s): decode "
             "walks it on 4 KiB pages; --no-mmap reads it into huge pages",
             path, mb, all, m->reread ? ", even after reading it again" : "");
}

void file_map_close(file_map *m) {
    if (m->addr) munmap(m->addr, m->span);
    memset(m, 0, sizeof *m);
}
