/* clients/loadgen/loadgen_util.c — peftd-loadgen's leaf helpers: the monotonic clock, the
 * seeded choice sequence, sample lists with their percentiles, and a process's VmRSS.
 * Calls nothing else in clients/loadgen/.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clients/loadgen/loadgen_internal.h"

double lg_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* splitmix64: a seeded, reproducible choice sequence (the seed is reported). */
uint64_t lg_rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The top 53 bits as a double in [0, 1): 2^-53 per step. */
double lg_rng_unit(uint64_t *s) { return (double)(lg_rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

int lg_samples_add(samples *s, double x) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        double *p = realloc(s->v, cap * sizeof *p);
        if (!p) return -1;
        s->v = p;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void lg_samples_sort(samples *s) { qsort(s->v, s->n, sizeof(double), cmp_double); }

double lg_pct(const samples *s, double p) {
    if (!s->n) return NAN;
    size_t k = (size_t)ceil(p / 100.0 * (double)s->n);
    if (k < 1) k = 1;
    if (k > s->n) k = s->n;
    return s->v[k - 1];
}

double lg_mean(const samples *s) {
    if (!s->n) return NAN;
    double t = 0;
    for (size_t i = 0; i < s->n; i++) t += s->v[i];
    return t / (double)s->n;
}

long lg_read_rss_kib(long pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kib;
}
