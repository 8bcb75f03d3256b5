/* kernels/cpu/backend_cpu.c — the CPU backend object: its kbackend_ops table,
 * memory (64-byte aligned host malloc; from 2 MiB up, 2 MiB-aligned and advised for huge
 * pages, lib/huge_alloc.h; is_host: upload/download/copy are memcpy) and its
 * life cycle. The ops live in one file per op family (matmul.c, norm.c, ...); what they
 * share with each other (scratch, dispatch) is in cpu_runtime.c, below them all. */
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/qmatmul.h"
#include "lib/huge_alloc.h"
#include "lib/log.h"

/* OpenBLAS prototype; not in every cblas.h. */
void openblas_set_num_threads(int num_threads);

/* Buffers of 2 MiB and more (the KV cache's layers, a step's activations) in huge pages:
 * attention reads K/V pieces at a kv_dim stride, a new 4 KiB page every slot or two. One
 * decode row of the 1B shape over 928 slots from DRAM, 2 threads: f32 K/V 294-317 -> 252-259
 * us a layer in 2 MiB pages, 169-177 with attention's L2 prefetch (which alone gains nothing
 * on 4 KiB pages); f16 218-233 -> 179-181 -> 119-121. */
static void *kcpu_alloc(kbackend *kb, size_t bytes) {
    (void)kb;
    if (bytes >= ((size_t)2 << 20)) return huge_alloc(bytes); /* 2 MiB-aligned; free() releases it */
    void *p = NULL;
    /* 0 bytes still gets a valid, unique, freeable pointer. */
    if (posix_memalign(&p, KCPU_ALIGN, bytes ? bytes : KCPU_ALIGN) != 0) return NULL;
    return p;
}

static void kcpu_free(kbackend *kb, void *p) {
    (void)kb;
    free(p);
}

static int kcpu_copy(kbackend *kb, void *dst, const void *src, size_t bytes) {
    (void)kb;
    if (bytes && (!dst || !src)) return PEFTD_EINVAL;
    if (bytes) memmove(dst, src, bytes);
    return 0;
}

static int kcpu_memset0(kbackend *kb, void *dst, size_t bytes) {
    (void)kb;
    if (bytes && !dst) return PEFTD_EINVAL;
    if (bytes) memset(dst, 0, bytes);
    return 0;
}

static int kcpu_synchronize(kbackend *kb) {
    (void)kb;
    return 0;
}

/* Every op takes weights in each float dtype; the quantized dtypes are weights of matmul
 * (quantized dot products) and get_rows (dequantized rows) only. */
static bool kcpu_supports_op(const kbackend *kb, kop op, kdtype dt) {
    (void)kb;
    if ((unsigned)op >= KOP_COUNT) return false;
    if (op == KOP_SAMPLE || op == KOP_SEG_ROTATE) return dt == KDT_F32; /* f32 logits / rotations */
    if (op == KOP_KV_STORE || op == KOP_ATTENTION) return dt == KDT_F32 || dt == KDT_F16; /* the K/V cache's dtype */
    if (kdtype_is_quant(dt)) return op == KOP_MATMUL || op == KOP_GET_ROWS;
    return kcpu__dtype_ok(dt);
}

/* Q4_K as KDT_Q4_K_SB8 where the AVX2 path multiplies (qmatmul.h): same results, fewer
 * instructions. */
static kdtype kcpu_preferred_dtype(const kbackend *kb, kop op, kdtype dt) {
    (void)kb;
    return op == KOP_MATMUL ? kq_preferred_dtype(dt) : dt;
}

static size_t kcpu_sgmv_workspace(const kbackend *kb, int n_rows, int max_rank) {
    (void)kb;
    return n_rows > 0 && max_rank > 0 ? (size_t)n_rows * (size_t)max_rank * sizeof(float) : 0;
}

static void kcpu_destroy(kbackend *kb) {
    kcpu_backend *cb = kcpu__impl(kb);
    kpool_free(cb->pool);
    if (cb->scratch)
        for (int i = 0; i < cb->n_threads; i++) free(cb->scratch[i]);
    free(cb->scratch);
    free(cb->qbuf);
    free(cb);
}

static const kbackend_ops kcpu_ops = {
    .name = "cpu",
    .destroy = kcpu_destroy,
    .alloc = kcpu_alloc,
    .free = kcpu_free,
    .upload = kcpu_copy,
    .download = kcpu_copy,
    .memset0 = kcpu_memset0,
    .synchronize = kcpu_synchronize,
    .get_rows = kcpu__get_rows,
    .matmul = kcpu__matmul,
    .matmul_group = kcpu__matmul_group,
    .preferred_dtype = kcpu_preferred_dtype,
    .rmsnorm = kcpu__rmsnorm,
    .rope = kcpu__rope,
    .kv_store = kcpu__kv_store,
    .attention = kcpu__attention,
    .swiglu = kcpu__swiglu,
    .add = kcpu__add,
    .sgmv_shrink = kcpu__sgmv_shrink,
    .sgmv_expand = kcpu__sgmv_expand,
    .seg_scale = kcpu__seg_scale,
    .is_host = true,
    .copy = kcpu_copy,
    .supports_op = kcpu_supports_op,
    .sgmv_workspace = kcpu_sgmv_workspace,
    .add_bias = kcpu__add_bias,
    .geglu = kcpu__geglu,
    .softcap = kcpu__softcap,
    .sample = kcpu__sample,
    .seg_rotate = kcpu__seg_rotate,
};

void kbackend_cpu_set_fast_prefill(kbackend *kb, bool on) {
    if (kb && kb->impl_ops == &kcpu_ops) kcpu__impl(kb)->fast_prefill = on;
}

kbackend *kbackend_cpu_create(int n_threads) {
    kcpu_backend *cb = calloc(1, sizeof *cb);
    if (!cb) return NULL;
    kbackend__init(&cb->base, &kcpu_ops, cb);
    if (kpool_create(n_threads, &cb->pool) != 0) {
        free(cb);
        return NULL;
    }
    cb->n_threads = kpool_n_threads(cb->pool);
    cb->scratch = calloc((size_t)cb->n_threads, sizeof *cb->scratch);
    if (!cb->scratch) {
        kcpu_destroy(&cb->base);
        return NULL;
    }
    /* OpenBLAS is called from inside our pool's tasks on disjoint row slices:
     * its own threads would oversubscribe the cores, so it runs single-threaded
     * in whichever thread calls it. (Process-wide setting.) */
    openblas_set_num_threads(1);
    LOGD("cpu backend: %d threads", cb->n_threads);
    return &cb->base;
}
