/* lib/file_map.h — the bytes of a whole file, read-only, for the weight readers (GGUF,
 * safetensors). Two ways:
 *   FILE_MAP_MMAP  mapped from the page cache (the default): nothing is copied, pages are
 *                  shared with other processes. The mapping is 2 MiB-aligned and advised for
 *                  huge pages; a file of FILE_MAP_HUGE_MIN or more is faulted in at open (as
 *                  llama.cpp's MAP_POPULATE), and where the kernel's page cache has large folios
 *                  (Linux 6.x ext4, xfs, ...) each 2 MiB of it is then one page-table entry, as
 *                  read-in memory is. When the cache holds the file in small folios (a file just
 *                  written or copied: then under half of it maps whole), the cached pages are
 *                  given back (written back first; other processes' mapped pages stay) and the
 *                  file is read again through the advised mapping: one more read at start-up.
 *   FILE_MAP_READ  read once into private anonymous memory advised for transparent huge pages
 *                  (llama.cpp's --no-mmap): costs the file's size in private memory and one read
 *                  at start, and wins where the file mapping gets 4 KiB pages (a filesystem or
 *                  kernel without large folios in the page cache): a decode step walks every
 *                  weight once, and 2 MiB pages spare it most TLB misses (bench/README: the 1B
 *                  Q4_K_M decode ~7-10% faster than on 4 KiB pages).
 * Either way the bytes are PROT_READ afterwards: a stray write faults.
 * Threads: any; a file_map belongs to its caller. */
#ifndef PEFTD_FILE_MAP_H
#define PEFTD_FILE_MAP_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { FILE_MAP_MMAP = 0, FILE_MAP_READ = 1 } file_map_mode;

typedef struct {
    void *addr;  /* the file's bytes */
    size_t len;  /* the file's size */
    size_t span; /* bytes reserved at addr (munmap length; >= len) */
    long long huge_bytes; /* FILE_MAP_MMAP of a FILE_MAP_HUGE_MIN file: bytes mapped by 2 MiB
                           * entries after open; -1: not checked (small file, read in, or a kernel
                           * without MADV_POPULATE_READ or /proc) */
    bool reread;          /* the page cache's small pages were given back and the file read again */
} file_map;

/* Files from this size on are faulted in and checked for 2 MiB mappings at open (adapters and
 * test fixtures stay lazily mapped). */
#define FILE_MAP_HUGE_MIN ((size_t)64 << 20)

/* The first len (> 0) bytes of the regular file fd, as mode says. fd stays open (the caller
 * closes it; the bytes stay valid). 0, or -errno with *m zeroed (a short read: -EIO). */
int file_map_open(int fd, size_t len, file_map_mode mode, file_map *m);
/* The bytes [p, p + n) of a file_map's bytes [map, map + span) will not be read again (a
 * converted or reordered copy of a weight stands in for them): the whole pages inside
 * both ranges are given back (madvise MADV_DONTNEED; parts outside the map are ignored). Read
 * after this, they are the file's bytes again (mapped) or zeros (read in). Returns the bytes
 * given back. */
size_t file_map_drop(const void *map, size_t span, const void *p, size_t n);

/* One log line on how a checked mapping (huge_bytes >= 0) of path came out: info when most of
 * it is in 2 MiB pages, a warning naming --no-mmap when not. Nothing for unchecked ones. */
void file_map_log(const file_map *m, const char *path);

/* Releases m's bytes; a zeroed file_map is a no-op. */
void file_map_close(file_map *m);

#endif
