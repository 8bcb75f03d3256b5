/* server/engine/engine_pool.c — prefill-only sequences that return a pooled hidden state
 * (gen_params.pool: /v1/embeddings, /v1/classify). They run in the shared step batch like
 * any other sequence; the rows to pool are logits rows whose logits nobody samples
 * (b_logit_seq NULL, as prompt_logprobs' scored rows), and after the forward pass their
 * final-normed hidden states (llama_hidden_rows) go into the sequence's double sum in
 * prompt order. A preempted sequence keeps its sum and `pooled`: recomputed rows are not
 * added twice. The sequence ends once its prompt is computed (nothing is sampled).
 * Engine thread only. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "server/engine/engine_internal.h"

const char *engine__pool_refusal(const engine_request *r, const adapter *ad) {
    return ad && ad->cls_head.data && r->params.pool == ENGINE_POOL_NONE ? ENGINE_ERR_CLASSIFIER_ONLY : NULL;
}

bool engine__pool_scoring(const seq *s) {
    return s->r && s->r->params.pool == ENGINE_POOL_MEAN && s->pooled < s->r->n_prompt;
}

void engine__pool_rows(engine *e, seq *s, int c, int T, int *nl) {
    const gen_params *p = &s->r->params;
    s->score_n = 0;
    for (int j = 0; j < c; j++) {
        int pj = s->n_computed + j - s->nv; /* prompt token of this row */
        if (pj < s->pooled || pj < 0 || pj >= s->r->n_prompt) continue;
        if (p->pool != ENGINE_POOL_MEAN && pj != s->r->n_prompt - 1) continue;
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
        if (s->r->params.pool != ENGINE_POOL_MEAN)
            for (int i = 0; i < H; i++) s->hsum[i] = h[i];
        else
            for (int i = 0; i < H; i++) s->hsum[i] += h[i];
    }
    s->pooled = s->score_j0 + s->score_n;
    return 0;
}

/* ENGINE_POOL_CLASSIFY: softmax(head · h) in double over the adapter's labels, and their
 * names one after the other. The head is read back from the adapter's backend memory (a
 * few KB: n_labels x hidden F32). */
static int pool_classify(engine *e, seq *s) {
    const adapter *ad = s->ad;
    const int H = e->m->cfg.hidden_size;
    if (!ad || !ad->cls_head.data || ad->n_labels < 1 || ad->cls_head.cols != H) return PEFTD_EUNSUPPORTED;
    int L = ad->n_labels;
    float *w = malloc((size_t)L * H * sizeof(float)), *p = malloc((size_t)L * sizeof(float));
    double *z = malloc((size_t)L * sizeof(double));
    size_t len = 0;
    for (int i = 0; i < L; i++) len += strlen(ad->labels[i]) + 1;
    char *names = malloc(len);
    int rc = !w || !p || !z || !names ? PEFTD_ENOMEM : 0;
    if (!rc) rc = e->kb->ops->download(e->kb, w, ad->cls_head.data, (size_t)L * H * sizeof(float));
    if (!rc) rc = e->kb->ops->synchronize(e->kb);
    if (!rc) {
        double mx = -1e300, sum = 0;
        for (int j = 0; j < L; j++) {
            double acc = 0;
            for (int i = 0; i < H; i++) acc += (double)w[(size_t)j * H + i] * (float)s->hsum[i];
            z[j] = acc;
            if (acc > mx) mx = acc;
        }
        for (int j = 0; j < L; j++) sum += exp(z[j] - mx);
        for (int j = 0; j < L; j++) p[j] = (float)(exp(z[j] - mx) / sum);
        size_t o = 0;
        for (int i = 0; i < L; i++) {
            size_t k = strlen(ad->labels[i]) + 1;
            memcpy(names + o, ad->labels[i], k);
            o += k;
        }
        rc = engine__publish_hidden(s->r, p, L, names, len);
        p = NULL;
        names = NULL;
    }
    free(w);
    free(p);
    free(z);
    free(names);
    return rc;
}

static int pool_publish(engine *e, seq *s) {
    const int H = e->m->cfg.hidden_size;
    if (!s->hsum) return PEFTD_ENOMEM;
    if (s->r->params.pool == ENGINE_POOL_CLASSIFY) return pool_classify(e, s);
    float *h = malloc((size_t)H * sizeof(float));
    if (!h) return PEFTD_ENOMEM;
    double n = s->r->params.pool == ENGINE_POOL_MEAN ? (double)s->r->n_prompt : 1.0;
    for (int i = 0; i < H; i++) h[i] = (float)(s->hsum[i] / n);
    return engine__publish_hidden(s->r, h, H, NULL, 0);
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
            engine__finish_request(s->r, FINISH_ERROR,
                                   rc == PEFTD_EUNSUPPORTED ? ENGINE_ERR_NOT_CLASSIFIER : "cannot read the hidden state");
            s->r = NULL;
            st = rc;
        }
    }
    free(buf);
    return st;
}
