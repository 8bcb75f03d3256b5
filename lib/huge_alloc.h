/* lib/huge_alloc.h — host memory for weights that a decode step walks whole: 2 MiB-aligned
 * and advised for transparent huge pages, so each 2 MiB is one TLB entry instead of 512
 * (the un-permuted Q/K copies of a GGUF llama, reordered or at-load quantized projections).
 * The advice is only advice: without THP the memory is ordinary.
 * Threads: any. Lifetime: the caller's; free() releases it. */
#ifndef PEFTD_HUGE_ALLOC_H
#define PEFTD_HUGE_ALLOC_H

#include <stddef.h>

/* bytes (> 0) of uninitialised memory, 2 MiB-aligned when bytes >= 2 MiB (64-byte aligned
 * below that); NULL when out of memory. */
void *huge_alloc(size_t bytes);

#endif
