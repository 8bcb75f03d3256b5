/* tests/unit/test_file_map.c — lib/file_map.c: a file's bytes mapped (FILE_MAP_MMAP) or read
 * into huge-page-advised anonymous memory (FILE_MAP_READ, --no-mmap): the same bytes either
 * way (a size that is not a whole number of pages or 2 MiB), the read copy 2 MiB aligned with
 * whole 2 MiB pages reserved, read-only afterwards (a write faults), a file shorter than asked
 * refused with -EIO, length 0 with -EINVAL; file_map_drop gives back whole pages only. */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/file_map.h"
#include "tests/harness/test.h"

#define MIB ((size_t)1 << 20)

/* A temporary file of n pseudo-random bytes; returns its fd (unlinked) and the bytes. */
static int temp_file(size_t n, unsigned char **bytes) {
    char path[] = "/tmp/peftd-file-map-XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    unlink(path);
    unsigned char *b = malloc(n);
    ASSERT(b);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        b[i] = (unsigned char)x;
    }
    for (size_t o = 0; o < n; o += 65536) { /* in 64 KiB pieces, as converters and cp write */
        size_t k = n - o < 65536 ? n - o : 65536;
        ASSERT_EQ((size_t)write(fd, b + o, k), k);
    }
    *bytes = b;
    return fd;
}

TEST(both_modes_same_bytes) {
    size_t n = 3 * MIB + 4097;
    unsigned char *b;
    int fd = temp_file(n, &b);
    file_map m, r;
    ASSERT_EQ(file_map_open(fd, n, FILE_MAP_MMAP, &m), 0);
    ASSERT_EQ(file_map_open(fd, n, FILE_MAP_READ, &r), 0);
    close(fd);
    ASSERT(m.len == n && r.len == n && m.span == n);
    ASSERT(!memcmp(m.addr, b, n) && !memcmp(r.addr, b, n));
    ASSERT((uintptr_t)r.addr % (2 * MIB) == 0);
    ASSERT(r.span == 4 * MIB); /* whole 2 MiB pages */
    file_map_close(&m);
    file_map_close(&r);
    ASSERT(r.addr == NULL && r.span == 0);
    file_map_close(&r); /* a zeroed map: no-op */
    free(b);
}

TEST(read_copy_is_read_only) {
    unsigned char *b;
    int fd = temp_file(MIB, &b);
    file_map r;
    ASSERT_EQ(file_map_open(fd, MIB, FILE_MAP_READ, &r), 0);
    close(fd);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL); /* not a sanitizer's handler: die of the signal */
        ((volatile unsigned char *)r.addr)[100] = 1; /* must fault */
        _exit(0);
    }
    int st;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGSEGV) FAIL("a write into the read-in weights did not fault");
    ASSERT_EQ(((unsigned char *)r.addr)[100], b[100]);
    file_map_close(&r);
    free(b);
}

TEST(short_file_and_empty_refused) {
    unsigned char *b;
    int fd = temp_file(1000, &b);
    file_map r;
    ASSERT_EQ(file_map_open(fd, 5000, FILE_MAP_READ, &r), -EIO); /* the file shrank after stat */
    ASSERT(r.addr == NULL);
    ASSERT_EQ(file_map_open(fd, 0, FILE_MAP_READ, &r), -EINVAL);
    ASSERT_EQ(file_map_open(fd, 0, FILE_MAP_MMAP, &r), -EINVAL);
    ASSERT_EQ(file_map_open(-1, 10, FILE_MAP_READ, &r), -EBADF);
    close(fd);
    free(b);
}

/* file_map_drop: only the whole pages inside both the range and the map go back; a mapped file
 * reads its bytes again there, a read copy reads zeros; the bytes around stay; a range outside
 * the map, a NULL map and an empty range give back nothing. */
TEST(drop_gives_back_whole_pages_only) {
    size_t n = 3 * MIB + 4097, page = (size_t)sysconf(_SC_PAGESIZE);
    unsigned char *b;
    int fd = temp_file(n, &b);
    for (int mode = 0; mode < 2; mode++) {
        file_map m;
        ASSERT_EQ(file_map_open(fd, n, mode ? FILE_MAP_READ : FILE_MAP_MMAP, &m), 0);
        unsigned char *p = m.addr;
        /* [page + 100, 5 pages + 7): pages 2, 3, 4 are whole inside it */
        ASSERT_EQ(file_map_drop(m.addr, m.span, p + page + 100, 4 * page - 93), 3 * page);
        for (size_t i = 0; i < 6 * page; i++) {
            bool inside = i >= 2 * page && i < 5 * page;
            unsigned char want = inside && mode ? 0 : b[i];
            if (p[i] != want) FAIL("mode %d byte %zu: %u, want %u", mode, i, p[i], want);
        }
        ASSERT(memcmp(p + 6 * page, b + 6 * page, n - 6 * page) == 0);
        ASSERT_EQ(file_map_drop(m.addr, m.span, p + m.span + page, 8 * page), 0); /* outside */
        ASSERT_EQ(file_map_drop(NULL, m.span, p, 8 * page), 0);
        ASSERT_EQ(file_map_drop(m.addr, m.span, p + 2 * page, 0), 0);
        ASSERT_EQ(file_map_drop(m.addr, m.span, p + 10, page), 0); /* no whole page inside */
        /* a range running past the end: clipped to the map */
        ASSERT_EQ(file_map_drop(m.addr, m.span, p + (m.span / page - 2) * page, 4 * page), 2 * page);
        file_map_close(&m);
    }
    close(fd);
    free(b);
}

/* Mapping a large file (FILE_MAP_HUGE_MIN or more, written in 64 KiB pieces: the page cache
 * then holds small folios): the mapping is 2 MiB-aligned, faulted in
 * and checked (huge_bytes within the file), the bytes are the file's, and where this kernel
 * maps it in 2 MiB pages at all, a second open finds the cache already in large folios (no
 * second re-read) and maps it huge again. A small file stays unchecked (huge_bytes -1). Dropping
 * a range of the huge mapping still gives back its whole pages and reads the file again. */
TEST(mapped_large_file_aligned_and_checked) {
    const size_t n = FILE_MAP_HUGE_MIN + 12345, page = (size_t)sysconf(_SC_PAGESIZE);
    unsigned char *b;
    int fd = temp_file(n, &b);
    file_map m;
    ASSERT_EQ(file_map_open(fd, n, FILE_MAP_MMAP, &m), 0);
    ASSERT((uintptr_t)m.addr % (2 * MIB) == 0);
    ASSERT(m.len == n && m.span == n);
    ASSERT(m.huge_bytes >= -1 && m.huge_bytes <= (long long)n);
    ASSERT(!memcmp(m.addr, b, n));
    const long long half = (long long)(n / (2 * MIB) * (2 * MIB) / 2);
    if (m.huge_bytes >= half) { /* this kernel maps file pages huge: the cache now keeps them so */
        file_map again;
        ASSERT_EQ(file_map_open(fd, n, FILE_MAP_MMAP, &again), 0);
        ASSERT(!again.reread && again.huge_bytes >= half);
        ASSERT(!memcmp(again.addr, b, n));
        file_map_close(&again);
    } else {
        fprintf(stderr, "  note: file pages are not mapped in 2 MiB pages here (huge_bytes %lld): the reuse half "
                        "is not checked\n", m.huge_bytes);
    }
    unsigned char *p = m.addr;
    ASSERT_EQ(file_map_drop(m.addr, m.span, p + 3 * MIB + 100, 2 * page), page);
    ASSERT(!memcmp(p + 3 * MIB, b + 3 * MIB, 4 * page));
    file_map_close(&m);

    file_map small;
    ASSERT_EQ(file_map_open(fd, 3 * MIB, FILE_MAP_MMAP, &small), 0);
    ASSERT(small.huge_bytes == -1 && !small.reread && (uintptr_t)small.addr % (2 * MIB) == 0);
    ASSERT(!memcmp(small.addr, b, 3 * MIB));
    file_map_close(&small);
    close(fd);
    free(b);
}

TEST_MAIN(both_modes_same_bytes, read_copy_is_read_only, short_file_and_empty_refused, drop_gives_back_whole_pages_only,
          mapped_large_file_aligned_and_checked)
