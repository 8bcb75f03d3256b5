/* kernels/cuda/slot_pool_cuda.cu — the CUDA side of the adapter slot pool (kernels/slot_pool.h):
 * a slot_dev_ops table whose region is one cudaMalloc, whose staging buffers are cudaMallocHost
 * (so the copies really are asynchronous), whose uploads run on a dedicated non-blocking copy
 * stream with one cudaEvent per event id, and whose compute_wait is a cudaStreamWaitEvent of
 * the backend's op stream (no host block). The allocation/residency logic is all in
 * slot_pool.c. Compile-checked here; run by tests/gpu/run.sh on a GPU. */
#include <stdlib.h>

#include "kernels/cuda/cuda_internal.h"

extern "C" {
#include "kernels/kernels_cuda.h"
}

typedef struct {
    kcuda_backend *cb;
    cudaStream_t copy;
    cudaEvent_t *ev;
    int n_ev;
} kcuda_slot_dev;

static int bad_ev(const kcuda_slot_dev *d, int ev) { return ev < 0 || ev >= d->n_ev; }

static void *sd_region_alloc(void *ctx, size_t bytes) {
    kcuda_slot_dev *d = (kcuda_slot_dev *)ctx;
    void *p = NULL;
    if (cudaSetDevice(d->cb->device) != cudaSuccess || cudaMalloc(&p, bytes) != cudaSuccess) {
        LOGW("cuda: slot pool region of %zu bytes: %s", bytes, cudaGetErrorString(cudaGetLastError()));
        return NULL;
    }
    return p;
}
static void sd_region_free(void *ctx, void *p) {
    (void)ctx;
    if (p) (void)cudaFree(p); /* at pool teardown only */
}
static void *sd_host_alloc(void *ctx, size_t bytes) {
    (void)ctx;
    void *p = NULL;
    if (cudaMallocHost(&p, bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return p;
}
static void sd_host_free(void *ctx, void *p) {
    (void)ctx;
    if (p) (void)cudaFreeHost(p);
}
static int sd_copy(void *ctx, void *dst, const void *src, size_t bytes) {
    kcuda_slot_dev *d = (kcuda_slot_dev *)ctx;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, d->copy));
    return 0;
}
static int sd_record(void *ctx, int ev) {
    kcuda_slot_dev *d = (kcuda_slot_dev *)ctx;
    if (bad_ev(d, ev)) return PEFTD_EINVAL;
    CUDA_CHECK(cudaEventRecord(d->ev[ev], d->copy));
    return 0;
}
static int sd_query(void *ctx, int ev) {
    kcuda_slot_dev *d = (kcuda_slot_dev *)ctx;
    if (bad_ev(d, ev)) return PEFTD_EINVAL;
    cudaError_t e = cudaEventQuery(d->ev[ev]);
    if (e == cudaSuccess) return 1;
    if (e == cudaErrorNotReady) {
        (void)cudaGetLastError();
        return 0;
    }
    return kcuda__fail("cudaEventQuery", cudaGetErrorString(e), __FILE__, __LINE__);
}
static int sd_wait(void *ctx, int ev) {
    kcuda_slot_dev *d = (kcuda_slot_dev *)ctx;
    if (bad_ev(d, ev)) return PEFTD_EINVAL;
    CUDA_CHECK(cudaStreamWaitEvent(d->cb->stream, d->ev[ev], 0));
    return 0;
}

static const slot_dev_ops KCUDA_SLOT_OPS = {sd_region_alloc, sd_region_free, sd_host_alloc, sd_host_free,
                                            sd_copy,         sd_record,      sd_query,      sd_wait};

extern "C" void kbackend_cuda_slot_dev_free(void *ctx) {
    kcuda_slot_dev *d = (kcuda_slot_dev *)ctx;
    if (!d) return;
    (void)cudaSetDevice(d->cb->device);
    if (d->copy) (void)cudaStreamSynchronize(d->copy);
    for (int i = 0; d->ev && i < d->n_ev; i++)
        if (d->ev[i]) (void)cudaEventDestroy(d->ev[i]);
    if (d->copy) (void)cudaStreamDestroy(d->copy);
    free(d->ev);
    free(d);
}

extern "C" int kbackend_cuda_slot_dev(kbackend *kb, int n_events, const slot_dev_ops **ops, void **ctx) {
    if (!kb || kb->ops->is_host || n_events < 1 || !ops || !ctx) return PEFTD_EINVAL;
    *ops = NULL;
    *ctx = NULL;
    kcuda_slot_dev *d = (kcuda_slot_dev *)calloc(1, sizeof *d);
    if (!d || !(d->ev = (cudaEvent_t *)calloc((size_t)n_events, sizeof *d->ev))) {
        free(d);
        return PEFTD_ENOMEM;
    }
    d->cb = kcuda__impl(kb);
    d->n_ev = n_events;
    int rc = 0;
    if (cudaSetDevice(d->cb->device) != cudaSuccess ||
        cudaStreamCreateWithFlags(&d->copy, cudaStreamNonBlocking) != cudaSuccess)
        rc = kcuda__fail("slot pool copy stream", cudaGetErrorString(cudaGetLastError()), __FILE__, __LINE__);
    for (int i = 0; rc == 0 && i < n_events; i++)
        if (cudaEventCreateWithFlags(&d->ev[i], cudaEventDisableTiming) != cudaSuccess)
            rc = kcuda__fail("slot pool events", cudaGetErrorString(cudaGetLastError()), __FILE__, __LINE__);
    if (rc) {
        kbackend_cuda_slot_dev_free(d);
        return rc;
    }
    *ops = &KCUDA_SLOT_OPS;
    *ctx = d;
    return 0;
}
