/* lib/huge_alloc.c — 2 MiB-aligned, huge-page-advised allocations (lib/huge_alloc.h). */
#include "lib/huge_alloc.h"

#include <stdlib.h>
#include <sys/mman.h>

#define HUGE_PAGE ((size_t)2 << 20)

void *huge_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes == 0 || posix_memalign(&p, bytes >= HUGE_PAGE ? HUGE_PAGE : 64, bytes)) return NULL;
#ifdef MADV_HUGEPAGE
    if (bytes >= HUGE_PAGE) (void)madvise(p, bytes / HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE);
#endif
    return p;
}
