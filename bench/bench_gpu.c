/* bench/bench_gpu.c — device memory bandwidth for the decode roofline (tests/gpu/run.sh).
 *
 * Measures device-to-device copy bandwidth on the CUDA backend's memory with the
 * backend's own ops (alloc + a device-side copy through get_rows of an f32 table, which
 * reads and writes every byte once), best of 10 passes over a 1 GiB buffer, and prints
 * {"copy_gbps": ...} (bytes read + written per second / 1e9). The decode roofline is
 * then weight_bytes / (copy_gbps/2 * 1e9 read-only bytes per second): a batch-1 decode
 * step reads every weight byte once. Exits 3 with a message when no device is present. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_time.h"
#include "kernels/kernels.h"
#include "kernels/kernels_cuda.h"

int main(void) {
#ifndef PEFTD_CUDA
    fprintf(stderr, "bench_gpu: this build has no CUDA backend\n");
    return 3;
#else
    if (!kbackend_cuda_available()) {
        fprintf(stderr, "bench_gpu: no CUDA device\n");
        return 3;
    }
    char err[512];
    kbackend *kb = kbackend_cuda_create(0, err, sizeof err);
    if (!kb) {
        fprintf(stderr, "bench_gpu: %s\n", err);
        return 1;
    }
    /* 1 GiB table of 8192-float rows, gathered in order into a second 1 GiB buffer. */
    const int cols = 8192, rows = (1 << 30) / (cols * 4);
    float *src = kb->ops->alloc(kb, (size_t)rows * cols * 4), *dst = kb->ops->alloc(kb, (size_t)rows * cols * 4);
    int32_t *ids_h = malloc(sizeof(int32_t) * rows), *ids = kb->ops->alloc(kb, sizeof(int32_t) * rows);
    if (!src || !dst || !ids || !ids_h) {
        fprintf(stderr, "bench_gpu: out of device memory\n");
        return 1;
    }
    for (int i = 0; i < rows; i++) ids_h[i] = i;
    if (kb->ops->upload(kb, ids, ids_h, sizeof(int32_t) * rows) || kb->ops->memset0(kb, src, (size_t)rows * cols * 4)) {
        fprintf(stderr, "bench_gpu: upload failed\n");
        return 1;
    }
    kmat t = {src, KDT_F32, rows, cols};
    double best = 1e30;
    for (int pass = 0; pass < 11; pass++) {
        if (kb->ops->synchronize(kb)) return 1;
        double t0 = bench_now_s();
        if (kb->ops->get_rows(kb, &t, ids, rows, dst) || kb->ops->synchronize(kb)) {
            fprintf(stderr, "bench_gpu: copy failed\n");
            return 1;
        }
        double dt = bench_now_s() - t0;
        if (pass > 0 && dt < best) best = dt; /* pass 0 warms up */
    }
    double gbps = 2.0 * rows * (double)cols * 4 / best / 1e9;
    printf("{\"copy_gbps\": %.1f, \"read_gbps\": %.1f, \"bytes\": %zu}\n", gbps, gbps / 2, (size_t)rows * cols * 4);
    kb->ops->free(kb, src);
    kb->ops->free(kb, dst);
    kb->ops->free(kb, ids);
    free(ids_h);
    kbackend_destroy(kb);
    return 0;
#endif
}
