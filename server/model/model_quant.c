/* server/model/model_quant.c — at-load conversion of the layer projections (model_quant.h):
 * rows widened to f32, then quantized (Q4_K / Q5_K by kernels/cpu/quant_fast.c, bit-identical
 * to quant_ref.c's search and ~8× faster; Q8_0, Q4_0, Q6_K by quant_ref.c) or rounded to bf16,
 * in parallel over the weights on plain threads (this runs at load, before the engine). */
#include "server/model/model_quant.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cpu/quant_fast.h"
#include "kernels/cpu/quant_ref.h"
#include "lib/half.h"
#include "lib/huge_alloc.h"
#include "lib/log.h"
#include "server/model/model_quant_cache.h"

#define MQ_ALIGN 64

int model_weights_parse(const char *s, int *dt) {
    if (!s || !strcmp(s, "stored")) *dt = -1;
    else if (!strcmp(s, "bf16")) *dt = KDT_BF16;
    else if (!strcmp(s, "q8_0")) *dt = KDT_Q8_0;
    else if (!strcmp(s, "q4_k")) *dt = KDT_Q4_K;
    else return PEFTD_EINVAL;
    return 0;
}

typedef struct {
    kmat *w;         /* the view to repoint (NULL: a later row range of the weight before it) */
    kmat src;        /* its stored form */
    kdtype dt;       /* its new dtype */
    uint8_t *dst;
} mq_job;

typedef struct {
    mq_job *jobs;
    int n_jobs;
    int next; /* atomic */
    int rc;   /* atomic: first failure */
} mq_ctx;

static void mq_row_f32(const kmat *w, int64_t r, float *out) {
    const uint8_t *p = (const uint8_t *)w->data + kdtype_row_bytes(w->dtype, w->cols) * (size_t)r;
    for (int64_t k = 0; k < w->cols; k++) {
        if (w->dtype == KDT_F32) {
            memcpy(&out[k], p + 4 * k, 4);
        } else {
            uint16_t h;
            memcpy(&h, p + 2 * k, 2);
            out[k] = w->dtype == KDT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
        }
    }
}

static int mq_convert(const mq_job *j) {
    int64_t cols = j->src.cols;
    kdtype dt = j->dt;
    if (kdtype_is_quant(j->src.dtype)) /* a reordering (model_reorder_projections): rows are contiguous */
        return qfast_reorder(kdtype_ggml_type(dt), kdtype_ggml_type(j->src.dtype), j->src.data, j->dst,
                            j->src.rows * cols);
    size_t rb = kdtype_row_bytes(dt, cols);
    float *row = malloc((size_t)cols * sizeof *row);
    if (!row) return PEFTD_ENOMEM;
    int rc = 0;
    for (int64_t r = 0; r < j->src.rows && rc == 0; r++) {
        mq_row_f32(&j->src, r, row);
        uint8_t *d = j->dst + rb * (size_t)r;
        if (dt == KDT_Q8_0) rc = qref_quantize_q8_0(row, d, cols);
        else if (dt == KDT_Q4_K) rc = qfast_quantize_q4_k(row, d, cols);
        else if (dt == KDT_Q5_K) rc = qfast_quantize_q5_k(row, d, cols);
        else if (dt == KDT_Q6_K) rc = qref_quantize_q6_k(row, d, cols);
        else if (dt == KDT_Q4_0) rc = qref_quantize_q4_0(row, d, cols);
        else
            for (int64_t k = 0; k < cols; k++) {
                uint16_t h = dt == KDT_F16 ? f32_to_f16(row[k]) : f32_to_bf16(row[k]);
                memcpy(d + 2 * k, &h, 2);
            }
    }
    free(row);
    return rc;
}

static void *mq_worker(void *vc) {
    mq_ctx *c = vc;
    for (;;) {
        int i = __atomic_fetch_add(&c->next, 1, __ATOMIC_RELAXED);
        if (i >= c->n_jobs) break;
        int rc = mq_convert(&c->jobs[i]);
        if (rc < 0) {
            int zero = 0;
            __atomic_compare_exchange_n(&c->rc, &zero, rc, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

/* Runs c's jobs on up to n_threads threads (<= 0: one per online core), the caller's among
 * them; returns the thread count used. */
static int mq_run(mq_ctx *c, int n_threads) {
    if (n_threads <= 0) n_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n_threads < 1) n_threads = 1;
    if (n_threads > c->n_jobs) n_threads = c->n_jobs;
    pthread_t th[64];
    if (n_threads > 64) n_threads = 64;
    int started = 0;
    for (int t = 1; t < n_threads; t++)
        if (pthread_create(&th[started], NULL, mq_worker, c) == 0) started++;
    mq_worker(c);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    return started + 1;
}

static const char *const MQ_NAMES[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

/* The plan being built: jobs may be NULL (count only). */
typedef struct {
    model *m;
    kdtype dt;
    mq_job *jobs;
    int n, kept;
    size_t bytes; /* the new tensors' size */
} mq_plan_ctx;

static void mq_add(mq_plan_ctx *p, kmat *w, kdtype to) {
    size_t sz = (kdtype_row_bytes(to, w->cols) * (size_t)w->rows + MQ_ALIGN - 1) / MQ_ALIGN * MQ_ALIGN;
    if (p->jobs) /* dst: an offset, rebased once the buffer exists */
        p->jobs[p->n] = (mq_job){.w = w, .src = *w, .dt = to, .dst = (uint8_t *)(uintptr_t)p->bytes};
    p->bytes += sz;
    p->n++;
}

/* The dtype a float tensor goes to: dt when its rows are whole blocks, else (q8_0 only, as
 * llama.cpp's converter falls back) F16, else -1 (kept as stored). */
static int mq_target(const mq_plan_ctx *p, const kmat *w) {
    if (kdtype_row_bytes(p->dt, w->cols) > 0) return (int)p->dt;
    if (p->dt == KDT_Q8_0 && w->dtype != KDT_F16) return KDT_F16;
    return -1;
}

/* Lists the tensors to convert (the rule: model_quant.h). */
static void mq_plan(mq_plan_ctx *p, bool log) {
    model *m = p->m;
    const kbackend *kb = m->kb;
    p->n = p->kept = 0;
    p->bytes = 0;
    for (int i = 0; i < m->cfg.n_layers; i++) {
        model_layer *l = &m->layers[i];
        kmat *w[7] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
        for (int k = 0; k < 7; k++) {
            if (w[k]->dtype == p->dt) continue;
            if (kdtype_is_quant(w[k]->dtype)) { /* already quantized (a GGUF block type): kept as stored */
                p->kept++;
                continue;
            }
            int to = mq_target(p, w[k]);
            if (log && i == 0 && to != (int)p->dt)
                LOGW("model %s: %s has %lld in-features, not a multiple of %s's block (%lld): it %s %s", m->name,
                     MQ_NAMES[k], (long long)w[k]->cols, kdtype_name(p->dt), (long long)kdtype_block_elems(p->dt),
                     to < 0 ? "stays" : "becomes", kdtype_name(to < 0 ? w[k]->dtype : (kdtype)to));
            if (to < 0 || to == (int)w[k]->dtype) {
                p->kept++;
                continue;
            }
            mq_add(p, w[k], (kdtype)to);
        }
    }
    if (p->dt != KDT_Q8_0) return;
    /* q8_0 is llama.cpp's `convert_hf_to_gguf.py --outtype q8_0`: token_embd and output too,
     * when the backend gathers / multiplies that dtype (capability, asked here). */
    struct {
        kmat *w;
        kop op;
    } top[2] = {{&m->embed, KOP_GET_ROWS}, {m->cfg.tie_word_embeddings ? NULL : &m->lm_head, KOP_MATMUL}};
    for (int k = 0; k < 2; k++) {
        kmat *w = top[k].w;
        if (!w || !w->data || kdtype_is_quant(w->dtype)) continue;
        int to = mq_target(p, w);
        if (to < 0 || to == (int)w->dtype || !kb->ops->supports_op(kb, top[k].op, (kdtype)to)) {
            if (log && to >= 0 && to != (int)w->dtype)
                LOGW("model %s: backend %s cannot %s %s weights: %s stays %s", m->name, kb->ops->name,
                     k ? "multiply" : "gather from", kdtype_name((kdtype)to), k ? "lm_head" : "embed_tokens",
                     kdtype_name(w->dtype));
            continue;
        }
        mq_add(p, w, (kdtype)to);
    }
}

/* What this build's converters write for a fixed input (2 rows × 512 columns of seeded values
 * over several magnitudes), once per distinct target dtype of the plan, in plan order: part of
 * the weights cache's key, so a peftd whose quantizer writes other bytes never reads another's
 * cache. Returns the bytes written to fp (at most MQ_FP_MAX), 0 when a conversion fails. */
#define MQ_FP_COLS 512
#define MQ_FP_MAX (4 * 2 * MQ_FP_COLS * 2)
static size_t mq_fingerprint(const mq_job *jobs, int n, uint8_t *fp) {
    float in[2 * MQ_FP_COLS];
    uint32_t x = 12345;
    for (int i = 0; i < 2 * MQ_FP_COLS; i++) { /* exact in any float mode: integers times powers of 2 */
        x = x * 1664525u + 1013904223u;
        in[i] = (float)((int32_t)(x >> 8) - (1 << 23)) * 0x1p-23f * (float)(1 << (i / 32 % 7)) * 0x1p-6f;
    }
    kdtype seen[4];
    int n_seen = 0;
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        bool dup = false;
        for (int k = 0; k < n_seen; k++) dup |= seen[k] == jobs[i].dt;
        if (dup || n_seen == 4) continue;
        seen[n_seen++] = jobs[i].dt;
        mq_job j = {.src = {.data = in, .dtype = KDT_F32, .rows = 2, .cols = MQ_FP_COLS}, .dt = jobs[i].dt, .dst = fp + len};
        size_t bytes = 2 * kdtype_row_bytes(jobs[i].dt, MQ_FP_COLS);
        if (bytes == 0 || len + bytes > MQ_FP_MAX || mq_convert(&j) < 0) return 0;
        len += bytes;
    }
    return len;
}

/* The plan as the cache records it (offsets relative to the buffer). NULL when out of memory. */
static mqc_job *mq_cache_jobs(const mq_job *jobs, int n, const uint8_t *mem) {
    mqc_job *cj = malloc((size_t)n * sizeof *cj);
    for (int i = 0; cj && i < n; i++)
        cj[i] = (mqc_job){.dt = jobs[i].dt, .rows = jobs[i].src.rows, .cols = jobs[i].src.cols,
                          .offset = (uint64_t)(jobs[i].dst - mem),
                          .bytes = kdtype_row_bytes(jobs[i].dt, jobs[i].src.cols) * (size_t)jobs[i].src.rows};
    return cj;
}

int model_quantize_projections(model *m, kdtype dt, int n_threads, const char *cache_dir, void **buf, char *err,
                               size_t errlen) {
    *buf = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    mq_plan_ctx p = {.m = m, .dt = dt};
    mq_plan(&p, true);
    int n = p.n;
    if (n == 0) return 0;
    mq_job *jobs = calloc((size_t)n, sizeof *jobs);
    uint8_t *mem = NULL;
    if (!jobs || !(mem = huge_alloc(p.bytes))) {
        free(jobs);
        snprintf(err, errlen, "%s: out of memory converting the weights to %s (%zu bytes)", m->dir, kdtype_name(dt),
                 p.bytes);
        return PEFTD_ENOMEM;
    }
    p.jobs = jobs;
    mq_plan(&p, false);
    size_t before = 0;
    for (int i = 0; i < n; i++) {
        jobs[i].dst = mem + (size_t)(uintptr_t)jobs[i].dst;
        before += kdtype_row_bytes(jobs[i].src.dtype, jobs[i].src.cols) * (size_t)jobs[i].src.rows;
    }
    /* quantized targets only: a bf16 rounding costs about what reading it back would */
    mqc_job *cj = cache_dir && kdtype_is_quant(dt) ? mq_cache_jobs(jobs, n, mem) : NULL;
    uint8_t fp[MQ_FP_MAX];
    size_t fp_len = cj ? mq_fingerprint(jobs, n, fp) : 0;
    if (!fp_len) free(cj), cj = NULL;
    bool cached = cj && mqc_read(cache_dir, m, dt, fp, fp_len, cj, n, mem, p.bytes) == 1;
    if (!cached) {
        mq_ctx c = {.jobs = jobs, .n_jobs = n};
        n_threads = mq_run(&c, n_threads);
        if (c.rc < 0) {
            snprintf(err, errlen, "%s: converting the weights to %s failed: %s", m->dir, kdtype_name(dt),
                     peftd_strerror(c.rc));
            free(cj);
            free(jobs);
            free(mem);
            return c.rc;
        }
    }
    for (int i = 0; i < n; i++) {
        jobs[i].w->data = jobs[i].dst;
        jobs[i].w->dtype = jobs[i].dt;
    }
    if (m->cfg.tie_word_embeddings) m->lm_head = m->embed;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    if (cached)
        LOGI("model %s: %d weights converted to %s read from the weights cache in %.1f ms: %.1f MB -> %.1f MB%s",
             m->name, n, kdtype_name(dt), ms, (double)before / 1e6, (double)p.bytes / 1e6,
             p.kept ? " (some projections kept as stored: block size or already quantized)" : "");
    else
        LOGI("model %s: %d weights converted to %s in %.1f ms on %d thread(s): %.1f MB -> %.1f MB%s", m->name, n,
             kdtype_name(dt), ms, n_threads, (double)before / 1e6, (double)p.bytes / 1e6,
             p.kept ? " (some projections kept as stored: block size or already quantized)" : "");
    if (cj && !cached) mqc_write(cache_dir, m, dt, fp, fp_len, cj, n, mem, p.bytes); /* failure: logged, not fatal */
    free(cj);
    free(jobs);
    *buf = mem;
    return 0;
}

#define MR_CHUNK ((size_t)8 << 20)

/* The weights model_reorder_projections reorders: the layer projections and an untied lm_head
 * whose dtype the backend prefers in another layout for MATMUL. jobs NULL: count only. */
static int mr_plan(model *m, mq_job *jobs, size_t *bytes) {
    const kbackend *kb = m->kb;
    int n = 0;
    *bytes = 0;
    for (int i = 0; i <= m->cfg.n_layers; i++) {
        model_layer *l = i < m->cfg.n_layers ? &m->layers[i] : NULL;
        kmat *w[7] = {0};
        if (l) {
            kmat *p[7] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
            memcpy(w, p, sizeof p);
        } else if (m->lm_head.data && m->lm_head.data != m->embed.data) {
            w[0] = &m->lm_head;
        } else if (m->lm_head.data == m->embed.data && m->embed.data) {
            /* tied: the one table is the lm_head's matmul and the embedding's gather; reordered
             * only where the backend gathers from the new dtype too (model_reorder_projections
             * points lm_head at it afterwards) */
            kdtype to = kops_preferred_dtype(kb, KOP_MATMUL, m->embed.dtype);
            if (to != m->embed.dtype && kb->ops->supports_op(kb, KOP_GET_ROWS, to)) w[0] = &m->embed;
        }
        for (int k = 0; k < 7; k++) {
            if (!w[k] || !w[k]->data) continue;
            kdtype to = kops_preferred_dtype(kb, KOP_MATMUL, w[k]->dtype);
            if (to == w[k]->dtype) continue;
            /* jobs of at most MR_CHUNK bytes (a 1B model's tied table is 215 MB: one job would be
             * one thread's); the first carries the view to repoint */
            size_t rb = kdtype_row_bytes(to, w[k]->cols);
            int64_t step = (int64_t)(MR_CHUNK / rb) > 0 ? (int64_t)(MR_CHUNK / rb) : 1;
            for (int64_t r0 = 0; r0 < w[k]->rows; r0 += step) {
                if (jobs) {
                    kmat part = *w[k];
                    part.data = (const uint8_t *)w[k]->data + rb * (size_t)r0;
                    part.rows = r0 + step < w[k]->rows ? step : w[k]->rows - r0;
                    jobs[n] = (mq_job){.w = r0 ? NULL : w[k], .src = part, .dt = to,
                                       .dst = (uint8_t *)(uintptr_t)(*bytes + rb * (size_t)r0)};
                }
                n++;
            }
            *bytes += (rb * (size_t)w[k]->rows + MQ_ALIGN - 1) / MQ_ALIGN * MQ_ALIGN;
        }
    }
    return n;
}

int model_reorder_projections(model *m, int n_threads, void **buf, char *err, size_t errlen) {
    *buf = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    size_t bytes;
    int n = mr_plan(m, NULL, &bytes);
    if (n == 0) return 0;
    mq_job *jobs = calloc((size_t)n, sizeof *jobs);
    uint8_t *mem = NULL;
    if (!jobs || !(mem = huge_alloc(bytes))) {
        free(jobs);
        snprintf(err, errlen, "%s: out of memory reordering the weights for backend %s (%zu bytes)", m->dir,
                 m->kb->ops->name, bytes);
        return PEFTD_ENOMEM;
    }
    mr_plan(m, jobs, &bytes);
    for (int i = 0; i < n; i++) jobs[i].dst = mem + (size_t)(uintptr_t)jobs[i].dst;
    mq_ctx c = {.jobs = jobs, .n_jobs = n};
    n_threads = mq_run(&c, n_threads);
    if (c.rc < 0) {
        snprintf(err, errlen, "%s: reordering the weights for backend %s failed: %s", m->dir, m->kb->ops->name,
                 peftd_strerror(c.rc));
        free(jobs);
        free(mem);
        return c.rc;
    }
    char what[160] = "";
    for (int i = 0, o = 0; i < n; i++) {
        bool seen = false;
        for (int k = 0; k < i; k++) seen |= jobs[k].src.dtype == jobs[i].src.dtype;
        if (!seen && o < (int)sizeof what)
            o += snprintf(what + o, sizeof what - (size_t)o, "%s%s -> %s", o ? ", " : "", kdtype_name(jobs[i].src.dtype),
                          kdtype_name(jobs[i].dt));
    }
    bool tied = m->lm_head.data == m->embed.data;
    int n_weights = 0;
    for (int i = 0; i < n; i++) {
        if (!jobs[i].w) continue; /* a later part of the weight before it */
        jobs[i].w->data = jobs[i].dst;
        jobs[i].w->dtype = jobs[i].dt;
        n_weights++;
    }
    if (tied) m->lm_head = m->embed;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    LOGI("model %s: %d weights reordered for backend %s's matmul (%s; same results) in %.1f ms on %d thread(s): "
         "%.1f MB", m->name, n_weights, m->kb->ops->name, what, ms, n_threads, (double)bytes / 1e6);
    free(jobs);
    *buf = mem;
    return 0;
}
