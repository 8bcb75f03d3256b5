/* server/engine/engine_pool.c — prefill-only sequences that return a pooled hidden state
 * (gen_params.pool: /v1/embeddings, /v1/classify). They run in the shared step batch like
 * any other sequence; the rows to pool are logits rows whose logits nobody samples
 * (b_logit_seq NULL, as prompt_logprobs' scored rows), and after the forward pass their
 * final-normed hidden states (llama_hidden_rows) go into the sequence's double sum in
 * prompt order. A preempted sequence keeps its sum and `pooled`: recomputed rows are not
 * added twice. The sequence ends once its prompt is computed (nothing is sampled).
 * Engine thread only. */
#include <stdlib.h>
#include <string.h>

#include "server/engine/engine_internal.h"

bool engine__pool_scoring(const seq *s) {
    return s->r && s->r->params.pool == ENGINE_POOL_MEAN && s->pooled < s->r->n_prompt;
}

void engine__pool_rows(engine *e, seq *s, int c, int T, int *nl) {
    const gen_params *p = &s->r->params;
    s->score_n = 0;
    for (int j = 0; j < c; j++) {
        int pj = s->n_computed + j - s->nv; /* prompt token of this row */
        if (pj < s->pooled || pj < 0 || pj >= s->r->n_prompt) continue;
        if (p->pool == ENGINE_POOL_LAST && pj != s->r->n_prompt - 1) continue;
        if (s->score_n == 0) {
            s->score_row0 = *nl;
            s->score_j0 = pj;
        }
        e->b_rows[*nl] = T - c + j;
        e->b_logit_seq[(*nl)++] = NULL;
        s->score_n++;
    }
}

static int pool_add(engine *e, seq *s, float *buf) {
    const int H = e->m->cfg.hidden_size;
    if (!s->hsum && !(s->hsum = calloc((size_t)H, sizeof(double)))) return PEFTD_ENOMEM;
    int rc = llama_hidden_rows(e->lc, s->score_row0, s->score_n, buf);
    if (rc < 0) return rc;
    for (int k = 0; k < s->score_n; k++) {
        const float *h = buf + (size_t)k * H;
        if (s->r->params.pool == ENGINE_POOL_LAST)
            for (int i = 0; i < H; i++) s->hsum[i] = h[i];
        else
            for (int i = 0; i < H; i++) s->hsum[i] += h[i];
    }
    s->pooled = s->score_j0 + s->score_n;
    return 0;
}

static int pool_publish(engine *e, seq *s) {
    const int H = e->m->cfg.hidden_size;
    float *h = malloc((size_t)H * sizeof(float));
    if (!h || !s->hsum) {
        free(h);
        return PEFTD_ENOMEM;
    }
    double n = s->r->params.pool == ENGINE_POOL_MEAN ? (double)s->r->n_prompt : 1.0;
    for (int i = 0; i < H; i++) h[i] = (float)(s->hsum[i] / n);
    return engine__publish_hidden(s->r, h, H);
}

int engine__pool_retire(engine *e) {
    float *buf = NULL;
    int st = 0;
    for (int i = 0; i < e->n_running; i++) {
        seq *s = e->running[i];
        if (!s->r || s->r->params.pool == ENGINE_POOL_NONE) continue;
        int rc = 0;
        if (s->score_n > 0) {
            /* at most score_rows rows (MEAN, step_plan's budget) or 1 (LAST) per sequence */
            if (!buf && !(buf = malloc((size_t)e->score_rows * e->m->cfg.hidden_size * sizeof(float))))
                rc = PEFTD_ENOMEM;
            if (!rc) rc = pool_add(e, s, buf);
            s->score_n = 0;
        }
        if (!rc && s->n_computed == s->n_tokens) {
            rc = pool_publish(e, s);
            if (!rc) {
                engine__finish_request(s->r, FINISH_LENGTH, NULL);
                s->r = NULL;
            }
        }
        if (rc) {
            engine__finish_request(s->r, FINISH_ERROR, "cannot read the hidden state");
            s->r = NULL;
            st = rc;
        }
    }
    free(buf);
    return st;
}
