/* kernels/cuda/decode_graph_cuda.cu — capture and replay of decode steps as CUDA graphs on the
 * backend's op stream (kernels_cuda.h: kbackend_cuda_graph_*). Which bucket to capture, when
 * to replay or recapture, and the padding are host logic in kernels/decode_graph.c. Off by
 * default (PEFTD_CUDA_GRAPHS=1) until a GPU run validates replay against eager steps.
 * Compile-checked here; run by tests/gpu/run.sh on a GPU. */
#include "kernels/cuda/cuda_internal.h"

extern "C" {
#include "kernels/kernels_cuda.h"
}

extern "C" int kbackend_cuda_graph_begin(kbackend *kb) {
    if (!kb || kb->ops->is_host) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    /* ThreadLocal: only this (the engine) thread's unsafe calls invalidate the capture. */
    CUDA_CHECK(cudaStreamBeginCapture(cb->stream, cudaStreamCaptureModeThreadLocal));
    return 0;
}

extern "C" int kbackend_cuda_graph_end(kbackend *kb, void **graph) {
    if (!kb || kb->ops->is_host || !graph) return PEFTD_EINVAL;
    *graph = NULL;
    kcuda_backend *cb = kcuda__impl(kb);
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(cb->stream, &g);
    if (e != cudaSuccess || !g) {
        (void)cudaGetLastError(); /* an invalidated capture: the caller runs the step eagerly */
        if (g) (void)cudaGraphDestroy(g);
        LOGW("cuda: decode graph capture failed: %s", cudaGetErrorString(e));
        return PEFTD_EBACKEND;
    }
    cudaGraphExec_t x = NULL;
    e = cudaGraphInstantiate(&x, g, 0);
    (void)cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        LOGW("cuda: decode graph instantiation failed: %s", cudaGetErrorString(e));
        return PEFTD_EBACKEND;
    }
    *graph = (void *)x;
    return 0;
}

extern "C" int kbackend_cuda_graph_launch(kbackend *kb, void *graph) {
    if (!kb || kb->ops->is_host || !graph) return PEFTD_EINVAL;
    kcuda_backend *cb = kcuda__impl(kb);
    int rc = kcuda__enter_op(cb);
    if (rc) return rc;
    CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)graph, cb->stream));
    return 0;
}

extern "C" void kbackend_cuda_graph_destroy(void *graph) {
    if (graph) (void)cudaGraphExecDestroy((cudaGraphExec_t)graph);
}
