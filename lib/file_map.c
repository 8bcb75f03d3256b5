/* lib/file_map.c — a whole file's bytes, mapped or read into huge-page-advised anonymous
 * memory (lib/file_map.h). */
#include "lib/file_map.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HUGE_PAGE ((size_t)2 << 20)

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

int file_map_open(int fd, size_t len, file_map_mode mode, file_map *m) {
    memset(m, 0, sizeof *m);
    if (len == 0) return -EINVAL;
    if (mode == FILE_MAP_MMAP) {
        void *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) return -errno;
        *m = (file_map){.addr = p, .len = len, .span = len};
        return 0;
    }
    /* Whole 2 MiB pages, so the last one can be huge too. */
    size_t span = (len + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    if (span < len) return -EOVERFLOW;
    /* Reserve one page more and trim to a 2 MiB boundary: only aligned 2 MiB ranges can be
     * backed by huge pages (not every kernel aligns large anonymous mappings itself). */
    size_t reserve = span + HUGE_PAGE;
    if (reserve < span) return -EOVERFLOW;
    char *raw = mmap(NULL, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return -errno;
    char *p = (char *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    if (p > raw) munmap(raw, (size_t)(p - raw));
    if (raw + reserve > p + span) munmap(p + span, (size_t)(raw + reserve - (p + span)));
#ifdef MADV_HUGEPAGE
    (void)madvise(p, span, MADV_HUGEPAGE); /* advice: without THP the read still works */
#endif
    int rc = read_all(fd, p, len);
    if (rc == 0 && mprotect(p, span, PROT_READ) != 0) rc = -errno;
    if (rc < 0) {
        munmap(p, span);
        return rc;
    }
    *m = (file_map){.addr = p, .len = len, .span = span};
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

void file_map_close(file_map *m) {
    if (m->addr) munmap(m->addr, m->span);
    memset(m, 0, sizeof *m);
}
