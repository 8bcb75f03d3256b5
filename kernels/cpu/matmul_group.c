/* kernels/cpu/matmul_group.c — kbackend_ops.matmul and .matmul_group on the CPU: every
 * matmul is a group (of one, or q/k/v, gate/up over the same x). The group's jobs are
 * prepared by matmul.c / qmatmul.c (mm_job.h), x is quantized once per activation layout the
 * quantized weights need (Q8_0/Q4_0, Q4_K/Q5_K, Q6_K), and all the jobs' row tasks run in
 * one pool dispatch. A row's result is the same bits as its matmul alone: tasks split weight
 * rows, never a dot product. */
#include <stdlib.h>

#include "kernels/cpu/mm_job.h"

typedef struct {
    kcpu_mm_job *jobs;
    int count;
    int first[KMATMUL_GROUP_MAX + 1]; /* first[g]: the group's first task of job g */
} mm_group_ctx;

static void mm_group_task(void *vc, int task, int thread) {
    const mm_group_ctx *c = vc;
    int g = 0;
    while (task >= c->first[g + 1]) g++;
    kcpu_mm_job *j = &c->jobs[g];
    j->task(j->quant ? (void *)&j->kq : (void *)&j->mm, task - c->first[g], thread);
}

int kcpu__matmul_group(kbackend *kb, const float *x, int n, int count, const kmat *const *w, float *const *y,
                       float beta) {
    if (count < 1 || count > KMATMUL_GROUP_MAX || !w || !y) return PEFTD_EINVAL;
    kcpu_backend *cb = kcpu__impl(kb);
    kcpu_mm_job jobs[KMATMUL_GROUP_MAX];
    for (int g = 0; g < count; g++) {
        int rc = kcpu__mm_prepare(cb, x, n, w[g], y[g], beta, &jobs[g]);
        if (rc) return rc;
    }
    if (n == 0) return 0;
    if (!x) return PEFTD_EINVAL;
    for (int g = 0; g < count; g++) /* one x, as documented: an output may not overlap it */
        if (w[g]->cols != w[0]->cols) return PEFTD_EINVAL;

    /* quantized activations: one kq_x per layout in use, carved from the kept buffer */
    kdtype lay_dt[KQ_LAYOUT_COUNT];
    bool used[KQ_LAYOUT_COUNT] = {false};
    size_t bytes = 0;
    for (int g = 0; g < count; g++)
        if (jobs[g].quant && !used[kq_layout_of(jobs[g].kq.dt)]) {
            kq_layout L = kq_layout_of(jobs[g].kq.dt);
            used[L] = true;
            lay_dt[L] = jobs[g].kq.dt;
            bytes += kq_x_bytes(lay_dt[L], n, w[g]->cols);
        }
    kq_x qx[KQ_LAYOUT_COUNT];
    if (bytes) {
        if (bytes > cb->qbuf_cap) { /* kept across calls: no allocation (or page faults) per step */
            size_t cap = bytes > 2 * cb->qbuf_cap ? bytes : 2 * cb->qbuf_cap;
            void *nb;
            if (posix_memalign(&nb, 64, cap)) return PEFTD_ENOMEM;
            free(cb->qbuf);
            cb->qbuf = nb;
            cb->qbuf_cap = cap;
        }
        uint8_t *p = cb->qbuf;
        for (int L = 0; L < KQ_LAYOUT_COUNT; L++) {
            if (!used[L]) continue;
            kq_x_carve(lay_dt[L], n, w[0]->cols, p, &qx[L]);
            p += kq_x_bytes(lay_dt[L], n, w[0]->cols);
            kq_x_quantize(cb, lay_dt[L], x, &qx[L]);
        }
    }

    mm_group_ctx c = {.jobs = jobs, .count = count};
    double work = 0;
    for (int g = 0; g < count; g++) {
        if (jobs[g].quant) jobs[g].kq.x = &qx[kq_layout_of(jobs[g].kq.dt)];
        c.first[g + 1] = c.first[g] + jobs[g].n_tasks;
        work += jobs[g].work;
    }
    kcpu__parallel_shares(cb, c.first[count], work, mm_group_task, &c);
    return 0;
}

int kcpu__matmul(kbackend *kb, const float *x, int n, const kmat *w, float *y, float beta) {
    return kcpu__matmul_group(kb, x, n, 1, &w, &y, beta);
}
