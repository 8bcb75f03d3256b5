/* bench/bench_gpu.c — the read bandwidth behind the decode roofline (tests/gpu/run.sh).
 *
 * A decode step reads every weight byte once and writes almost nothing, so its roofline is
 * bytes read / READ bandwidth (not half a copy's: a copy's read and write streams share the
 * bus differently than a pure read). Measured here with a read-only reduction over a fresh
 * buffer far larger than the last-level cache:
 *   --backend cuda (default): kbackend_cuda_read_bandwidth() (kernels/cuda/membw.cu), a
 *                   grid-stride xor of 16-byte words, best of --passes after a warm-up,
 *                   over --mb MiB (default 1024: ~20x the H200's 50 MB L2);
 *   --backend cpu:  bench_read_bandwidth() (bench/bench_roofline.h), the parallel streaming
 *                   sum the CPU benchmarks use (the GPU script's CPU dry run, GPU_DRYRUN=1).
 * Prints {"backend", "read_gbps", "bytes", "passes", "method"} (GB = 10^9 bytes).
 * Exit 3 with a message when the CUDA backend or a device is missing, 1 on other errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_roofline.h"
#include "kernels/kernels.h"
#include "kernels/kernels_cuda.h"

static int usage(void) {
    fprintf(stderr, "usage: bench_gpu [--backend cuda|cpu] [--mb 1024] [--passes 10]\n");
    return 2;
}

static int cuda_bw(size_t bytes, int passes, double *gbps) {
#ifndef PEFTD_CUDA
    (void)bytes, (void)passes, (void)gbps;
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
    int st = kbackend_cuda_read_bandwidth(kb, bytes, passes, gbps);
    kbackend_destroy(kb);
    if (st < 0) {
        fprintf(stderr, "bench_gpu: read bandwidth: %s\n", peftd_strerror(st));
        return 1;
    }
    return 0;
#endif
}

int main(int argc, char **argv) {
    const char *backend = "cuda";
    long mb = 1024;
    int passes = 10;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage();
        if (!strcmp(argv[i], "--backend") && (!strcmp(v, "cuda") || !strcmp(v, "cpu"))) backend = v;
        else if (!strcmp(argv[i], "--mb") && atol(v) >= 1) mb = atol(v);
        else if (!strcmp(argv[i], "--passes") && atoi(v) >= 1) passes = atoi(v);
        else return usage();
        i++;
    }
    size_t bytes = (size_t)mb << 20;
    double gbps = 0;
    const char *method;
    if (!strcmp(backend, "cuda")) {
        int rc = cuda_bw(bytes, passes, &gbps);
        if (rc) return rc;
        method = "read-only xor reduction kernel (16-byte loads, grid-stride), best pass";
    } else {
        kpool *pool = NULL;
        if (kpool_create(0, &pool) < 0) {
            fprintf(stderr, "bench_gpu: cannot start the CPU pool\n");
            return 1;
        }
        gbps = bench_read_bandwidth(pool, bytes); /* best of 5 */
        kpool_free(pool);
        passes = 5;
        method = "parallel streaming sum on the CPU pool (bench_roofline.h), best pass";
        if (gbps <= 0) {
            fprintf(stderr, "bench_gpu: cannot allocate %zu bytes\n", bytes);
            return 1;
        }
    }
    printf("{\"backend\": \"%s\", \"read_gbps\": %.1f, \"bytes\": %zu, \"passes\": %d, \"method\": \"%s\"}\n", backend,
           gbps, bytes, passes, method);
    return 0;
}
