/* server/text/chat_template_arena.c — the bump allocator of chat_template_internal.h: one
 * arena per parsed template (its AST) and one per render (its values). The leaf of the
 * chat template files: the parser and the renderer both allocate here. */
#include <stdlib.h>
#include <string.h>

#include "server/text/chat_template_internal.h"

struct ct_block {
    ct_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

#define CT_BLOCK_MIN (64 * 1024) /* most templates and renders fit in one or two blocks */

void *ct_arena_alloc(ct_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    ct_block *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > CT_BLOCK_MIN ? n : CT_BLOCK_MIN;
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
        a->total += cap;
    }
    void *p = b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

void ct_arena_free(ct_arena *a) {
    for (ct_block *b = a->head, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    a->head = NULL;
    a->total = 0;
}
