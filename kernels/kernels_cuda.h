/* kernels/kernels_cuda.h — the CUDA backend's public entry points (C API).
 * Declared in every build; defined only when the build has the CUDA backend
 * (PEFTD_CUDA defined: the Makefile found nvcc). Callers guard their use with
 * #ifdef PEFTD_CUDA. */
#ifndef PEFTD_KERNELS_CUDA_H
#define PEFTD_KERNELS_CUDA_H

#include <stddef.h>

#include "kernels/kernels.h"
#include "kernels/slot_pool.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when the CUDA runtime sees at least one usable device, else 0 (no driver, no
 * device, or a driver too old for this runtime). Never aborts; cheap to call again. */
int kbackend_cuda_available(void);

/* CUDA backend on `device` (an ordinal of cudaGetDeviceCount). On failure returns NULL
 * and writes why into err (errlen bytes, NUL-terminated).
 * Threads: kernels.h's contract (every [engine] call from the owner, the engine thread).
 * Uploads/memsets made before the first op (model load on the bring-up thread) run on a
 * separate upload stream and return when their copy is complete.
 * Errors found by kernels on device-resident arguments (a token id or KV slot out of
 * range) are reported by the next synchronize/download as PEFTD_ERANGE.
 * @note caller owns the result: kbackend_destroy(). */
kbackend *kbackend_cuda_create(int device, char *err, size_t errlen);

/* The device's read bandwidth in GB/s (10^9 bytes/s) into *gbps: the best of `passes` timed
 * runs (after one warm-up) of a read-only reduction kernel over a fresh device buffer of
 * `bytes` (make it many times the L2: 1 GiB on an H200 with 50 MB of L2). The denominator
 * of the decode roofline (a decode step reads its weights and writes almost nothing).
 * kb must be a CUDA backend; PEFTD_EINVAL otherwise or for bytes < 1 MiB or passes < 1,
 * PEFTD_EBACKEND (logged) when the buffer cannot be allocated or a launch fails.
 * Threads: an [engine] call (kernels.h): the owner, or the only thread using kb. */
int kbackend_cuda_read_bandwidth(kbackend *kb, size_t bytes, int passes, double *gbps);

/* ---- the adapter slot pool's device side (kernels/slot_pool.h; kernels/cuda/slot_pool_cuda.cu) ----
 * A slot_dev_ops table over kb's device: one cudaMalloc'd region, cudaMallocHost staging, a
 * dedicated copy stream (non-blocking) for the uploads, n_events cudaEvents (timing off)
 * recorded on it, and cudaStreamWaitEvent of kb's compute stream. *ctx is its state.
 * Threads: an [engine] call, like every use of the table it returns.
 * @note caller owns *ctx: kbackend_cuda_slot_dev_free() after slot_pool_free(). */
int kbackend_cuda_slot_dev(kbackend *kb, int n_events, const slot_dev_ops **ops, void **ctx);
void kbackend_cuda_slot_dev_free(void *ctx);

/* Free and total bytes of kb's device (cudaMemGetInfo): the device memory plan's input.
 * PEFTD_EINVAL when kb is not a CUDA backend. Threads: an [engine] call. */
int kbackend_cuda_mem_info(kbackend *kb, size_t *free_bytes, size_t *total_bytes);

/* ---- decode-step graphs (kernels/decode_graph.h; kernels/cuda/decode_graph_cuda.cu) ----
 * begin_capture: kb's compute stream starts capturing (cudaStreamCaptureModeThreadLocal);
 * every op until end_capture is recorded, not run. end_capture instantiates the graph into
 * *graph (NULL and a status when the capture was invalidated, e.g. an op synchronised).
 * launch replays it on the compute stream. Every step input must already sit in the
 * buffers the captured ops read. Threads: [engine] calls. */
int kbackend_cuda_graph_begin(kbackend *kb);
int kbackend_cuda_graph_end(kbackend *kb, void **graph);
int kbackend_cuda_graph_launch(kbackend *kb, void *graph);
void kbackend_cuda_graph_destroy(void *graph);

#ifdef __cplusplus
}
#endif

#endif
