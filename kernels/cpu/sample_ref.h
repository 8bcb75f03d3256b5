/* kernels/cpu/sample_ref.h — the token-choice math shared by the engine's host sampler
 * (server/engine/sampling.c) and the CPU backend's sample op (kernels/cpu/sample.c), so both
 * give the same id for the same logits and uniform draw, bit for bit: argmax, the
 * temperature / top-k / top-p choice from a given u, and the log-sum-exp of logprobs.
 * Pure functions over host memory; any thread (no shared state). */
#ifndef PEFTD_KSAMPLE_REF_H
#define PEFTD_KSAMPLE_REF_H

#include <stdint.h>

/* The lowest index among equal maxima of x[0..n); NaN never wins (a NaN at index 0 wins by
 * default, as nothing compares greater than it). Vectorised (AVX-512 / AVX2), same index. */
int32_t ksample_argmax(const float *x, int n);

/* log(sum_i exp(x_i)) over x[0..n), in double around the max (over up to 256K logits f32
 * would lose ~1e-7 relative). */
double ksample_lse(const float *x, int n);

/* The id chosen from logits[0..n) (kernels.h's ksample_args): temperature <= 0 greedy;
 * otherwise p_i = (float)exp((x_i - max) / T) (double math), top_k (<= 0 or >= n: off) and
 * top_p (<= 0 or >= 1: off) truncation in (descending p, ascending id) order, and the id at
 * u·(kept mass) of the cumulative sum (u in [0, 1)). probs and idx: caller scratch of n. */
int32_t ksample_pick_ref(const float *logits, int n, float temperature, int top_k, float top_p, double u,
                         float *probs, int32_t *idx);

#endif
