/* bench/bench_time.h — timing helpers every benchmark uses: a monotonic clock in seconds
 * and the comparison that sorts samples for medians. Header-only (static inline): the
 * benchmarks are single files built with one cc command each (bench/README.md).
 */
#ifndef PEFTD_BENCH_TIME_H
#define PEFTD_BENCH_TIME_H

#include <time.h>

/* CLOCK_MONOTONIC, seconds. */
static inline double bench_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* qsort comparison of doubles, ascending. */
static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
