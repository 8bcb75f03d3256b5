/* tests/harness/seq_batch.c — see seq_batch.h. */
#include "tests/harness/seq_batch.h"

#include <stdlib.h>

#include "lib/status.h"
#include "tests/harness/test.h"

#define MAX_ROWS 512

/* Where sequence i's rows and KV slots go. Sequence i owns blocks 1 + i·SEQ_BLOCKS .. */
typedef struct {
    int nv_prompt, nv_prefix, pad, kv_off, pos_off;
    int32_t btab[SEQ_BATCH_SEQ_BLOCKS];
} layout;

static void layout_init(llama_ctx *c, const adapter *ad, int i, layout *L) {
    const int bs = SEQ_BATCH_BLOCK;
    memset(L, 0, sizeof *L);
    for (int b = 0; b < SEQ_BATCH_SEQ_BLOCKS; b++) L->btab[b] = 1 + i * SEQ_BATCH_SEQ_BLOCKS + b;
    if (ad && ad->kind == ADAPTER_PROMPT_TUNING) L->nv_prompt = ad->n_virtual;
    if (adapter_has_prefix(ad)) {
        L->nv_prefix = ad->n_virtual;
        L->pad = (bs - L->nv_prefix % bs) % bs;
        L->kv_off = L->pad + L->nv_prefix;
        L->pos_off = ad->prefix_from_zero ? 0 : L->nv_prefix; /* AdapterHub: from 0 */
        int st = llama_store_prefix(c, ad, L->btab, L->pad);
        if (st < 0) FAIL("llama_store_prefix: %s", peftd_strerror(st));
    }
}

/* The step arrays of one sequence: its token rows j0 .. j1-1 (virtual prompt rows first). */
typedef struct {
    int32_t tokens[MAX_ROWS], pos[MAX_ROWS], slots[MAX_ROWS], rows[MAX_ROWS];
    int32_t qstart[SEQ_BATCH_MAX_SEQS + 1], kvlen[SEQ_BATCH_MAX_SEQS], kvstart[SEQ_BATCH_MAX_SEQS];
    int32_t btab[SEQ_BATCH_MAX_SEQS * SEQ_BATCH_SEQ_BLOCKS];
    llama_segment segs[SEQ_BATCH_MAX_SEQS];
    int T, S, NL;
} step;

static void step_add(step *s, const layout *L, const seq_spec *sp, const int32_t *ids, int j0, int j1,
                     bool all_logits) {
    const adapter *ad = sp->ad;
    const int bs = SEQ_BATCH_BLOCK;
    if (s->S >= SEQ_BATCH_MAX_SEQS || s->T + (j1 - j0) > MAX_ROWS) FAIL("seq_batch: step too large");
    if (L->kv_off + j1 > SEQ_BATCH_SEQ_BLOCKS * bs) FAIL("seq_batch: sequence too long");
    s->qstart[s->S] = s->T;
    s->segs[s->S] =
        (llama_segment){.ad = ad, .scale = sp->scale != 0.0f ? sp->scale : 1.0f, .row_start = s->T,
                        .row_end = s->T + j1 - j0, .mix = sp->mix};
    memcpy(s->btab + s->S * SEQ_BATCH_SEQ_BLOCKS, L->btab, sizeof L->btab);
    for (int j = j0; j < j1; j++, s->T++) {
        int kv = L->kv_off + j;
        s->tokens[s->T] = j < L->nv_prompt ? -(j + 1) : ids[j - L->nv_prompt];
        s->pos[s->T] = L->pos_off + j;
        s->slots[s->T] = L->btab[kv / bs] * bs + kv % bs;
        if (all_logits ? j >= L->nv_prompt : j == j1 - 1) s->rows[s->NL++] = s->T;
    }
    s->kvlen[s->S] = L->kv_off + j1;
    s->kvstart[s->S] = L->pad;
    s->S++;
    s->qstart[s->S] = s->T;
}

static void step_run(llama_ctx *c, step *s, float *out) {
    llama_batch b = {.n_tokens = s->T, .tokens = s->tokens, .positions = s->pos, .slots = s->slots,
                     .n_seqs = s->S, .q_start = s->qstart, .kv_len = s->kvlen, .block_table = s->btab,
                     .kv_start = s->kvstart, .n_segs = s->S, .segs = s->segs, .n_logits = s->NL,
                     .logit_rows = s->rows};
    int st = llama_forward(c, &b, out);
    if (st < 0) FAIL("llama_forward: %s", peftd_strerror(st));
}

llama_ctx *seq_batch_ctx(model *m) {
    llama_ctx_params p = {.max_tokens = MAX_ROWS, .max_seqs = SEQ_BATCH_MAX_SEQS, .block_size = SEQ_BATCH_BLOCK,
                          .n_blocks = 1 + SEQ_BATCH_MAX_SEQS * SEQ_BATCH_SEQ_BLOCKS,
                          .max_blocks = SEQ_BATCH_SEQ_BLOCKS};
    llama_ctx *c = NULL;
    char err[512] = "";
    if (llama_ctx_create(m, &p, &c, err, sizeof err) < 0) FAIL("llama_ctx_create: %s", err);
    return c;
}

void seq_batch_prefill(llama_ctx *c, const model *m, const seq_spec *spec, int n_seqs, float *const *out) {
    static step s;
    memset(&s, 0, sizeof s);
    layout L;
    int V = m->cfg.vocab_size, n_rows = 0;
    for (int i = 0; i < n_seqs; i++) {
        layout_init(c, spec[i].ad, i, &L);
        step_add(&s, &L, &spec[i], spec[i].ids, 0, L.nv_prompt + spec[i].n, true);
        n_rows += spec[i].n;
    }
    float *all = malloc(sizeof(float) * (size_t)n_rows * V);
    ASSERT(all);
    step_run(c, &s, all);
    for (int i = 0, r = 0; i < n_seqs; r += spec[i].n, i++)
        memcpy(out[i], all + (size_t)r * V, sizeof(float) * (size_t)spec[i].n * V);
    free(all);
}

void seq_prefill_decode(llama_ctx *c, const model *m, const seq_spec *spec, int n_pre, float *out) {
    static step s;
    layout L;
    int V = m->cfg.vocab_size;
    layout_init(c, spec->ad, 0, &L);
    if (n_pre < 1 || n_pre > spec->n) n_pre = spec->n;
    for (int j0 = 0, k = 0; k < spec->n;) {
        int j1 = k == 0 ? L.nv_prompt + n_pre : j0 + 1;
        memset(&s, 0, sizeof s);
        step_add(&s, &L, spec, spec->ids, j0, j1, true);
        step_run(c, &s, out + (size_t)k * V);
        k += s.NL;
        j0 = j1;
    }
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

void seq_greedy(llama_ctx *c, const model *m, const seq_spec *spec, int n_new, int32_t *out) {
    static step s;
    layout L;
    int V = m->cfg.vocab_size, n = spec->n;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n + n_new));
    float *lg = malloc(sizeof(float) * (size_t)V);
    ASSERT(ids && lg);
    memcpy(ids, spec->ids, sizeof(int32_t) * (size_t)n);
    layout_init(c, spec->ad, 0, &L);
    for (int k = 0; k < n_new; k++) {
        memset(&s, 0, sizeof s);
        int j0 = k == 0 ? 0 : L.nv_prompt + n + k - 1, j1 = L.nv_prompt + n + k;
        step_add(&s, &L, spec, ids, j0, j1, false);
        step_run(c, &s, lg);
        out[k] = ids[n + k] = argmax(lg, V);
    }
    free(lg);
    free(ids);
}
