/* kernels/step_split.h — runs one model step (llama_forward) split the way a CUDA graph needs
 * it: a pass that performs only the step's host -> device transfers (uploads), then a
 * pass that performs only its ops, which is what a graph captures (kernels/decode_graph.h) and
 * replays after the next step's transfer-only pass. Implemented by swapping kb->ops for a
 * wrapping table for the duration of a pass.
 *
 * In the OPS pass it also checks the step is capturable: no allocation or free, no transfer
 * that the transfer-only pass did not already make (they are skipped, so a step that depends
 * on one would compute something else: tests/unit/test_step_split.c compares with an unsplit
 * step bit for bit), and downloads/synchronize only after the last op (a graph cannot contain
 * them: they run after the replay). The counters say what happened.
 *
 * Either pass also computes sig (below): the key under which a captured graph may replay.
 *
 * Threads: the engine thread (the pass uses kb like any [engine] call); one pass at a time
 * per thread. */
#ifndef PEFTD_STEP_SPLIT_H
#define PEFTD_STEP_SPLIT_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kernels.h"

typedef enum {
    STEP_PASS_TRANSFERS = 1, /* uploads (and alloc/free) run; ops and downloads are skipped */
    STEP_PASS_OPS,           /* ops (memset0 and copy included: graph nodes), downloads,
                              * synchronize run; uploads are skipped */
} step_pass;

typedef struct {
    kbackend *kb;
    const kbackend_ops *saved;
    kbackend_ops table;
    step_pass pass;
    int n_ops, n_transfers, n_skipped;
    int n_alloc;            /* alloc/free calls (in the OPS pass: not capturable) */
    int last_op, first_sync; /* call indices (-1: none) */
    int calls;
    uint64_t sig;           /* hash of every call with its host arguments (pointers, sizes,
                             * shapes, scalars) in order: two steps with the same sig issue the
                             * same ops on the same buffers, so one's graph replays the other */
} step_split;

/* Starts a pass on kb: kb->ops is the wrapper until step_split_end. */
void step_split_begin(step_split *s, kbackend *kb, step_pass pass);
void step_split_end(step_split *s);
/* After an OPS pass: no allocation, and no download/synchronize before the last op. */
bool step_split_capturable(const step_split *s);

#endif
