/* kernels/cpu/cpu_internal.h — what the CPU backend's files share (kcpu__*):
 * the backend struct (pool + per-thread scratch), the parallel helper, and the
 * op entry points that backend_cpu.c puts in its kbackend_ops table. */
#ifndef PEFTD_KCPU_INTERNAL_H
#define PEFTD_KCPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/threadpool.h"
#include "kernels/kernels.h"

/* Cache-line (and AVX-512 vector) size: aligned rows never split a line. */
#define KCPU_ALIGN 64

typedef struct {
    kbackend base; /* base.impl points back to this struct */
    kpool *pool;
    int n_threads;
    float **scratch;      /* [n_threads] 64-byte aligned buffers */
    size_t scratch_cap;   /* floats in each */
    bool fast_prefill;    /* allow OpenBLAS for large f32 batches (not batch-invariant) */
    void *qbuf;           /* qmatmul.c: the quantized activations of one call (grown, kept) */
    size_t qbuf_cap;      /* bytes */
} kcpu_backend;

static inline kcpu_backend *kcpu__impl(kbackend *kb) { return (kcpu_backend *)kb->impl; }

/* Ensures every thread's scratch holds at least n floats (contents not kept).
 * Call from the dispatching thread, before kcpu__parallel. */
int kcpu__scratch_reserve(kcpu_backend *cb, size_t n);

static inline float *kcpu__scratch(kcpu_backend *cb, int thread) { return cb->scratch[thread]; }

/* Runs fn over n_tasks on the pool, or inline on the caller when `work` (a rough
 * count of multiply-adds or element ops) is too small to pay for a dispatch. */
void kcpu__parallel(kcpu_backend *cb, int n_tasks, double work, kpool_fn fn, void *ctx);

/* kcpu__parallel with kpool_parallel_shares: for tasks whose neighbours read adjacent memory
 * (weight rows, a slot's K/V heads). */
void kcpu__parallel_shares(kcpu_backend *cb, int n_tasks, double work, kpool_fn fn, void *ctx);

/* Matmul path override for tests and benchmarks (not for production use):
 * KCPU_MM_AUTO picks by shape; the others force register tiles or OpenBLAS
 * (f32 weights only; f16/bf16 always use the tiles) so both paths can be
 * checked and timed at every shape. Process-wide; not
 * synchronised: set it before issuing ops. */
typedef enum { KCPU_MM_AUTO = 0, KCPU_MM_TILES, KCPU_MM_BLAS } kcpu_mm_path;
extern kcpu_mm_path kcpu__mm_path;

int kcpu__get_rows(kbackend *kb, const kmat *table, const int32_t *ids, int n, float *out);
/* matmul_group.c (jobs from matmul.c / qmatmul.c, mm_job.h); matmul is the group of one. */
int kcpu__matmul(kbackend *kb, const float *x, int n, const kmat *w, float *y, float beta);
int kcpu__matmul_group(kbackend *kb, const float *x, int n, int count, const kmat *const *w, float *const *y,
                       float beta);
int kcpu__rmsnorm(kbackend *kb, const float *x, const kmat *w, int n, int dim, float eps, float *y);
int kcpu__rope(kbackend *kb, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
               int rot_dim, const krope_freqs *f);
int kcpu__kv_store(kbackend *kb, const float *k, const float *v, const int32_t *slots, int n,
                   int kv_dim, kdtype kv_dtype, void *k_cache, void *v_cache);
int kcpu__attention(kbackend *kb, const kattn_args *a);
int kcpu__swiglu(kbackend *kb, const float *gate, const float *up, int n, int dim, float *out);
int kcpu__add(kbackend *kb, float *y, const float *x, int64_t n);
int kcpu__geglu(kbackend *kb, const float *gate, const float *up, int n, int dim, float *out);
int kcpu__softcap(kbackend *kb, float *y, int64_t n, float cap);
int kcpu__sample(kbackend *kb, const ksample_args *a);
int kcpu__add_bias(kbackend *kb, float *y, int n, const kmat *b);
int kcpu__sgmv_shrink(kbackend *kb, const float *x, int in_dim, const ksgmv *s, float *t, int ld_t);
int kcpu__sgmv_expand(kbackend *kb, const float *t, int ld_t, const ksgmv *s, int out_dim, float *y);
int kcpu__seg_scale(kbackend *kb, float *y, int dim, int n_segs, const int32_t *seg_start,
                    const float *const *v);
int kcpu__seg_rotate(kbackend *kb, const float *x, int dim, const ksegrot *s, float *y);

static inline int kcpu__dtype_ok(kdtype t) { return t == KDT_F32 || t == KDT_F16 || t == KDT_BF16; }

#endif
