/* kernels/cpu/mm_job.h — one matmul as pool work, so that several can share one dispatch
 * (matmul_group.c). matmul.c prepares f32/f16/bf16 jobs, qmatmul.c quantized ones; the
 * group driver quantizes x once per activation layout and runs every job's row tasks in one
 * kcpu__parallel call. kcpu__matmul is the group of one. Private to kernels/cpu/. */
#ifndef PEFTD_KCPU_MM_JOB_H
#define PEFTD_KCPU_MM_JOB_H

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/qmatmul.h"

/* f32/f16/bf16 weights (matmul.c). */
typedef struct {
    const float *x;
    int64_t ldx; /* x row stride */
    int n;
    const kmat *w;
    float *y;
    float beta;
    int64_t block; /* weight rows per task */
    int use_blas;
} kcpu_mm_ctx;

/* Quantized weights (qmatmul.c); x: the group's quantized activations of w's layout. */
typedef struct {
    kq_rows_fn fn;
    kdtype dt;
    const uint8_t *w;
    size_t rb;
    int64_t rows, block;
    const kq_x *x;
    float *y;
    float beta;
} kcpu_kq_ctx;

typedef struct {
    kpool_fn task; /* (ctx, task index, thread) */
    int n_tasks;   /* 0: nothing to do (n == 0) */
    double work;   /* multiply-adds, for kcpu__parallel */
    bool quant;    /* kq (x to quantize for kq.dt's layout), else mm */
    kcpu_mm_ctx mm;
    kcpu_kq_ctx kq;
} kcpu_mm_job;

/* Validate one matmul's operands and fill job (as kbackend_ops.matmul documents; the
 * quantized job's kq.x is set by the caller). 0 or a status. */
int kcpu__mm_prepare(kcpu_backend *cb, const float *x, int n, const kmat *w, float *y, float beta, kcpu_mm_job *job);
int kcpu__qmm_prepare(kcpu_backend *cb, int n, const kmat *w, float *y, float beta, kcpu_mm_job *job);

/* Activation layouts of the quantized matmul: jobs with the same layout share one kq_x. */
typedef enum {
    KQ_LAYOUT_32 = 0, KQ_LAYOUT_K32, KQ_LAYOUT_K16, KQ_LAYOUT_K32_SB8, KQ_LAYOUT_K16_SB16, KQ_LAYOUT_COUNT
} kq_layout;
static inline kq_layout kq_layout_of(kdtype dt) {
    return !kdtype_is_kquant(dt)      ? KQ_LAYOUT_32
           : dt == KDT_Q6_K || dt == KDT_Q3_K || dt == KDT_Q2_K ? KQ_LAYOUT_K16 /* the same activation layout */
           : dt == KDT_Q4_K_SB8       ? KQ_LAYOUT_K32_SB8
           : dt == KDT_Q6_K_SB16      ? KQ_LAYOUT_K16_SB16
                                      : KQ_LAYOUT_K32;
}
/* Bytes of one layout's kq_x for n rows of cols (64-byte aligned parts), and the carving of
 * buf (64-byte aligned) into it. */
size_t kq_x_bytes(kdtype dt, int n, int64_t cols);
void kq_x_carve(kdtype dt, int n, int64_t cols, uint8_t *buf, kq_x *qx);
/* Quantizes x (n rows of qx->cols) into qx for dt's layout, on the pool. */
void kq_x_quantize(kcpu_backend *cb, kdtype dt, const float *x, kq_x *qx);

#endif
