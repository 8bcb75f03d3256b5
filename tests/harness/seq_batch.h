/* tests/harness/seq_batch.h — driving llama_forward the way the engine does, for tests that
 * compare against references without the engine: sequences from an empty KV cache, each with
 * its own adapter (or none), laid out as the engine lays them out (prompt tuning: virtual
 * token rows -(k+1) before the prompt; prefix tuning: the adapter's K/V in the sequence's
 * first blocks, padded to end on a block boundary, kv_start = the pad, real positions from
 * n_virtual on). Two uses:
 *   seq_batch_prefill: one llama_forward over all sequences at once (one adapter segment per
 *                      sequence), every real token's logits;
 *   seq_prefill_decode: one sequence, a prefill then one-token decode steps, every logit;
 *   seq_greedy:        one sequence, a prefill then one-token decode steps, argmax each step.
 * Failures end the test (FAIL). */
#ifndef PEFTD_TEST_SEQ_BATCH_H
#define PEFTD_TEST_SEQ_BATCH_H

#include <stdint.h>

#include "server/model/llama.h"

#define SEQ_BATCH_MAX_SEQS 16
#define SEQ_BATCH_BLOCK 4        /* KV slots per block */
#define SEQ_BATCH_SEQ_BLOCKS 32  /* blocks per sequence (128 slots: prefix + prompt + generated) */

typedef struct {
    const int32_t *ids; /* the real prompt tokens */
    int n;
    const adapter *ad;  /* NULL = base */
    const adapter_mix *mix; /* a composition of LoRAs instead (ad NULL), or NULL */
    float scale;        /* the request's adapter_scale; 0 = 1 */
} seq_spec;

/* A context sized for SEQ_BATCH_MAX_SEQS sequences of SEQ_BATCH_SEQ_BLOCKS blocks. @note
 * caller owns it: llama_ctx_free(). */
llama_ctx *seq_batch_ctx(model *m);

/* out[i]: [spec[i].n, vocab] logits of sequence i's real tokens (caller-allocated). */
void seq_batch_prefill(llama_ctx *c, const model *m, const seq_spec *spec, int n_seqs, float *const *out);

/* One sequence as a prefill of its first n_pre real tokens (with its virtual rows) and then
 * one-token decode steps: out [spec->n, vocab], every real token's logits. */
void seq_prefill_decode(llama_ctx *c, const model *m, const seq_spec *spec, int n_pre, float *out);

/* n_new greedy tokens after the prompt (ties: the lowest id). */
void seq_greedy(llama_ctx *c, const model *m, const seq_spec *spec, int n_new, int32_t *out);

#endif
