/* kernels/kernels_cuda.h — the CUDA backend's public entry points (C API).
 * Declared in every build; defined only when the build has the CUDA backend
 * (PEFTD_CUDA defined: the Makefile found nvcc). Callers guard their use with
 * #ifdef PEFTD_CUDA. */
#ifndef PEFTD_KERNELS_CUDA_H
#define PEFTD_KERNELS_CUDA_H

#include <stddef.h>

#include "kernels/kernels.h"

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

#ifdef __cplusplus
}
#endif

#endif
