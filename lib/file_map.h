/* lib/file_map.h — the bytes of a whole file, read-only, for the weight readers (GGUF,
 * safetensors). Two ways:
 *   FILE_MAP_MMAP  mapped from the page cache (the default): nothing is copied, pages are
 *                  shared with other processes and faulted in on first use.
 *   FILE_MAP_READ  read once into private anonymous memory advised for transparent huge pages
 *                  (llama.cpp's --no-mmap): costs the file's size in private memory and one read
 *                  at start, and wins where the file mapping gets 4 KiB pages (huge pages in the
 *                  page cache are rare): a decode step walks every weight once, and 2 MiB pages
 *                  spare it most TLB misses (bench/README: the 1B Q4_K_M decode ~10% faster).
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
} file_map;

/* The first len (> 0) bytes of the regular file fd, as mode says. fd stays open (the caller
 * closes it; the bytes stay valid). 0, or -errno with *m zeroed (a short read: -EIO). */
int file_map_open(int fd, size_t len, file_map_mode mode, file_map *m);
/* The bytes [p, p + n) of a file_map's bytes [map, map + span) will not be read again (a
 * converted or reordered copy of a weight stands in for them): the whole pages inside
 * both ranges are given back (madvise MADV_DONTNEED; parts outside the map are ignored). Read
 * after this, they are the file's bytes again (mapped) or zeros (read in). Returns the bytes
 * given back. */
size_t file_map_drop(const void *map, size_t span, const void *p, size_t n);

/* Releases m's bytes; a zeroed file_map is a no-op. */
void file_map_close(file_map *m);

#endif
