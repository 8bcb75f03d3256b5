/* bench/bench_rotate.c — what an OFT / BOFT module costs per token served factored (seg_rotate
 * of the projection's input, kernels/cpu/rotate.c) against the dense materialised delta it
 * replaced (an f32 ΔW = W·(R − I) [out, in] added by a second matmul, beta = 1), and against
 * the base projection itself (bf16 [out, in] matmul), on the CPU backend.
 *
 * Shapes: the fixtures' modules (stories260K: hidden 64, intermediate 172, OFT blocks of 16 —
 * 4 on down_proj — and BOFT 3 factors of blocks of 4; llama_bias: hidden 64, intermediate 128)
 * and the Llama-3.2-1B shape (hidden 2048, intermediate 8192, kv 512) with OFT blocks of 32
 * (PEFT's default oft_block_size) and BOFT 2 factors of blocks of 8. Per row: the multiply-adds
 * and the bytes of adapter data read (factored: F·in·b floats + an int32 index per non-identity
 * permutation; dense: in·out floats), and the measured time per token for T = 1 (a decode row)
 * and T = 32 rows of one segment: the median of `reps` calls after a warm-up. The numbers are
 * random (the cost does not depend on them).
 * Output: JSON on stdout; a line per row on stderr.
 * Usage: bench_rotate [--threads 2] [--reps 21]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"
#include "bench/bench_time.h"
#include "kernels/kernels.h"
#include "lib/half.h"

typedef struct {
    const char *shape, *module, *kind;
    int in, out, block, factors;
} row;

static const row ROWS[] = {
    {"stories260K", "q_proj", "oft", 64, 64, 16, 1},
    {"stories260K", "gate_proj", "oft", 64, 172, 16, 1},
    {"stories260K", "down_proj", "oft", 172, 64, 4, 1},
    {"stories260K", "q_proj", "boft", 64, 64, 4, 3},
    {"llama_bias", "k_proj", "oft", 64, 32, 16, 1},
    {"llama_bias", "down_proj", "oft", 128, 64, 16, 1},
    {"1B", "q_proj", "oft", 2048, 2048, 32, 1},
    {"1B", "k_proj", "oft", 2048, 512, 32, 1},
    {"1B", "gate_proj", "oft", 2048, 8192, 32, 1},
    {"1B", "down_proj", "oft", 8192, 2048, 32, 1},
    {"1B", "q_proj", "boft", 2048, 2048, 8, 2},
    {"1B", "down_proj", "boft", 8192, 2048, 8, 2},
};
#define N_ROWS (int)(sizeof ROWS / sizeof ROWS[0])

static float frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) / 16777216.0 - 0.5);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return v[n / 2];
}

/* One timed call: 0 = seg_rotate (x -> xr), 1 = the dense delta matmul (y += x·ΔWᵀ), 2 = the base
 * bf16 matmul (y = x·Wᵀ). */
typedef struct {
    kbackend *kb;
    const float *x;
    float *xr, *y;
    int n, in;
    const ksegrot *s;
    const kmat *dw, *w;
} job;

static int run(const job *j, int which) {
    if (which == 0) return j->kb->ops->seg_rotate(j->kb, j->x, j->in, j->s, j->xr);
    if (which == 1) return j->kb->ops->matmul(j->kb, j->x, j->n, j->dw, j->y, 1.0f);
    return j->kb->ops->matmul(j->kb, j->x, j->n, j->w, j->y, 0.0f);
}

/* Median seconds of reps calls (after 2 warm-up calls). */
static double time_op(const job *j, int which, int reps) {
    double t[64];
    for (int w = 0; w < 2 + reps; w++) {
        double t0 = bench_now_s();
        if (run(j, which) != 0) {
            fprintf(stderr, "bench_rotate: op %d failed\n", which);
            exit(1);
        }
        if (w >= 2) t[w - 2] = bench_now_s() - t0;
    }
    return median(t, reps);
}

int main(int argc, char **argv) {
    int threads = 2, reps = 21;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
    }
    if (reps < 1 || reps > 64) reps = 21;
    kbackend *kb = kbackend_cpu_create(threads);
    if (!kb) return 1;
    unsigned seed = 7;
    printf("{\"bench\": \"rotate\", \"backend\": \"cpu\", \"threads\": %d, \"reps\": %d, \"rows\": [\n", threads, reps);
    for (int ri = 0; ri < N_ROWS; ri++) {
        const row *R = &ROWS[ri];
        const int T = 32, in = R->in, out = R->out, b = R->block, F = R->factors;
        float *x = malloc(sizeof(float) * T * in), *xr = malloc(sizeof(float) * T * in),
              *y = malloc(sizeof(float) * T * out), *dw = malloc(sizeof(float) * (size_t)out * in);
        uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)out * in);
        float *rblk[8];
        int32_t *perm[8] = {0};
        krot_factor kf[8];
        int n_perm = 0;
        for (size_t i = 0; i < (size_t)T * in; i++) x[i] = frand(&seed);
        for (size_t i = 0; i < (size_t)out * in; i++) dw[i] = frand(&seed) * 0.01f, wb[i] = f32_to_bf16(frand(&seed));
        for (int f = 0; f < F; f++) {
            rblk[f] = malloc(sizeof(float) * (size_t)in * b);
            for (size_t i = 0; i < (size_t)in * b; i++) rblk[f][i] = frand(&seed);
            bool ident = true;
            if (F > 1) { /* PEFT's butterfly of factor f (adapter__butterfly_perm) */
                perm[f] = malloc(sizeof(int32_t) * in);
                if (adapter__butterfly_perm(in, (in / b) >> f, b / 2, perm[f], &ident)) return 1;
                if (ident) free(perm[f]), perm[f] = NULL;
            }
            n_perm += !ident;
            kf[f] = (krot_factor){.r = rblk[f], .perm = perm[f], .block = b};
        }
        const krot_factor *fp = kf;
        int32_t nf = F;
        kmat dwm = {.data = dw, .dtype = KDT_F32, .rows = out, .cols = in};
        kmat wbm = {.data = wb, .dtype = KDT_BF16, .rows = out, .cols = in};
        double per_tok[2][3];
        for (int ti = 0; ti < 2; ti++) {
            int n = ti ? T : 1;
            int32_t seg[2] = {0, n};
            ksegrot s = {.n_segs = 1, .seg_start = seg, .n_factors = &nf, .factors = &fp, .max_block = b};
            job jb = {.kb = kb, .x = x, .xr = xr, .y = y, .n = n, .in = in, .s = &s, .dw = &dwm, .w = &wbm};
            for (int k = 0; k < 3; k++) per_tok[ti][k] = time_op(&jb, k, reps) / n;
        }
        double mac_f = (double)F * in * b, mac_d = (double)in * out;
        double bytes_f = 4.0 * F * in * b + 4.0 * n_perm * in, bytes_d = 4.0 * in * out;
        printf("  {\"shape\": \"%s\", \"module\": \"%s\", \"kind\": \"%s\", \"in\": %d, \"out\": %d, \"block\": %d, "
               "\"factors\": %d, \"macs_factored\": %.0f, \"macs_dense_delta\": %.0f, \"bytes_factored\": %.0f, "
               "\"bytes_dense_delta\": %.0f, \"ns_per_token_t1\": {\"factored\": %.1f, \"dense_delta\": %.1f, "
               "\"base_bf16\": %.1f}, \"ns_per_token_t32\": {\"factored\": %.1f, \"dense_delta\": %.1f, "
               "\"base_bf16\": %.1f}}%s\n",
               R->shape, R->module, R->kind, in, out, b, F, mac_f, mac_d, bytes_f, bytes_d, per_tok[0][0] * 1e9,
               per_tok[0][1] * 1e9, per_tok[0][2] * 1e9, per_tok[1][0] * 1e9, per_tok[1][1] * 1e9,
               per_tok[1][2] * 1e9, ri + 1 < N_ROWS ? "," : "");
        fprintf(stderr,
                "%-11s %-9s %-4s in %5d out %5d b %2d F %d | MACs/token factored %9.0f dense %10.0f (%5.1fx) | "
                "ns/token T=1 factored %8.1f dense %9.1f base %9.1f | T=32 factored %7.1f dense %8.1f base %8.1f\n",
                R->shape, R->module, R->kind, in, out, b, F, mac_f, mac_d, mac_d / mac_f, per_tok[0][0] * 1e9,
                per_tok[0][1] * 1e9, per_tok[0][2] * 1e9, per_tok[1][0] * 1e9, per_tok[1][1] * 1e9,
                per_tok[1][2] * 1e9);
        for (int f = 0; f < F; f++) free(rblk[f]), free(perm[f]);
        free(x), free(xr), free(y), free(dw), free(wb);
    }
    printf("]}\n");
    kbackend_destroy(kb);
    return 0;
}
