/* kernels/cpu/sample.c — the CPU backend's sample op (kbackend_ops.sample) and the reference
 * math it shares with the engine's host sampler (kernels/cpu/sample_ref.h): argmax, the
 * temperature / top-k / top-p choice from a caller's uniform draw, log-sum-exp. */
#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/sample_ref.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* Reference argmax: the lowest index among equal maxima; NaN never wins (and a NaN at
 * index 0 wins by default, as nothing compares greater than it). The vector versions
 * below return exactly this index. */
static int32_t argmax_scalar(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Vector argmax (greedy sampling is 32 × 32000 logits per decode step on the engine
 * thread: ~1.5 ms scalar). Every lane keeps the largest value it has seen and the index
 * of its first occurrence, starting from x[0] with index 0 and updating only on a strict
 * ">", so a lane's index is the lowest among its elements equal to its maximum (ties
 * with x[0] keep index 0). NaN compares false and never updates a lane, as in the scalar
 * loop. The result is the lowest index over the lanes holding the overall maximum:
 * exactly argmax_scalar's. Two accumulator sets break the compare->blend dependency. */
#if defined(__AVX512F__)
int32_t ksample_argmax(const float *x, int n) {
    if (n < 64 || x[0] != x[0]) return argmax_scalar(x, n); /* x[0] NaN: index 0 */
    __m512 m0 = _mm512_set1_ps(x[0]), m1 = m0;
    __m512i i0 = _mm512_setzero_si512(), i1 = i0;
    __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step16 = _mm512_set1_epi32(16), step32 = _mm512_set1_epi32(32);
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        __mmask16 ga = _mm512_cmp_ps_mask(a, m0, _CMP_GT_OQ), gb = _mm512_cmp_ps_mask(b, m1, _CMP_GT_OQ);
        m0 = _mm512_mask_mov_ps(m0, ga, a);
        i0 = _mm512_mask_mov_epi32(i0, ga, idx);
        m1 = _mm512_mask_mov_ps(m1, gb, b);
        i1 = _mm512_mask_mov_epi32(i1, gb, _mm512_add_epi32(idx, step16));
        idx = _mm512_add_epi32(idx, step32);
    }
    for (; i < n; i += 16) {
        __mmask16 valid = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        __m512 a = _mm512_maskz_loadu_ps(valid, x + i);
        __mmask16 ga = _mm512_mask_cmp_ps_mask(valid, a, m0, _CMP_GT_OQ);
        m0 = _mm512_mask_mov_ps(m0, ga, a);
        i0 = _mm512_mask_mov_epi32(i0, ga, idx);
        idx = _mm512_add_epi32(idx, step16);
    }
    float mv[32];
    int32_t iv[32];
    _mm512_storeu_ps(mv, m0);
    _mm512_storeu_ps(mv + 16, m1);
    _mm512_storeu_si512(iv, i0);
    _mm512_storeu_si512(iv + 16, i1);
    float best_v = mv[0];
    int32_t best = iv[0];
    for (int l = 1; l < 32; l++)
        if (mv[l] > best_v || (mv[l] == best_v && iv[l] < best)) {
            best_v = mv[l];
            best = iv[l];
        }
    return best;
}
#elif defined(__AVX2__)
int32_t ksample_argmax(const float *x, int n) {
    if (n < 32 || x[0] != x[0]) return argmax_scalar(x, n);
    __m256 m0 = _mm256_set1_ps(x[0]), m1 = m0;
    __m256i i0 = _mm256_setzero_si256(), i1 = i0;
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i step8 = _mm256_set1_epi32(8), step16 = _mm256_set1_epi32(16);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        __m256 ga = _mm256_cmp_ps(a, m0, _CMP_GT_OQ), gb = _mm256_cmp_ps(b, m1, _CMP_GT_OQ);
        m0 = _mm256_blendv_ps(m0, a, ga);
        i0 = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(i0), _mm256_castsi256_ps(idx), ga));
        m1 = _mm256_blendv_ps(m1, b, gb);
        i1 = _mm256_castps_si256(
            _mm256_blendv_ps(_mm256_castsi256_ps(i1), _mm256_castsi256_ps(_mm256_add_epi32(idx, step8)), gb));
        idx = _mm256_add_epi32(idx, step16);
    }
    float mv[16];
    int32_t iv[16];
    _mm256_storeu_ps(mv, m0);
    _mm256_storeu_ps(mv + 8, m1);
    _mm256_storeu_si256((__m256i *)iv, i0);
    _mm256_storeu_si256((__m256i *)(iv + 8), i1);
    float best_v = mv[0];
    int32_t best = iv[0];
    for (int l = 1; l < 16; l++)
        if (mv[l] > best_v || (mv[l] == best_v && iv[l] < best)) {
            best_v = mv[l];
            best = iv[l];
        }
    for (; i < n; i++) /* tail: strictly greater only, later indices lose ties */
        if (x[i] > best_v) {
            best_v = x[i];
            best = i;
        }
    return best;
}
#else
int32_t ksample_argmax(const float *x, int n) { return argmax_scalar(x, n); }
#endif

double ksample_lse(const float *x, int n) {
    float mx = x[ksample_argmax(x, n)];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)x[i] - mx);
    return mx + log(sum);
}

/* Sort context for qsort_r: descending probability, then ascending id (deterministic). */
static int cmp_desc(const void *a, const void *b, void *ctx) {
    const float *p = ctx;
    int32_t ia = *(const int32_t *)a, ib = *(const int32_t *)b;
    if (p[ia] > p[ib]) return -1;
    if (p[ia] < p[ib]) return 1;
    return (ia > ib) - (ia < ib);
}

int32_t ksample_pick_ref(const float *logits, int V, float temperature, int top_k, float top_p, double u,
                         float *probs, int32_t *idx) {
    if (temperature <= 0.0f) return ksample_argmax(logits, V);
    float mx = logits[ksample_argmax(logits, V)];
    double inv_t = 1.0 / temperature, sum = 0;
    for (int i = 0; i < V; i++) {
        probs[i] = (float)exp(((double)logits[i] - mx) * inv_t);
        sum += probs[i];
    }
    int n = V;
    int truncate = (top_k > 0 && top_k < V) || (top_p > 0.0f && top_p < 1.0f);
    if (truncate) {
        for (int i = 0; i < V; i++) idx[i] = i;
        qsort_r(idx, (size_t)V, sizeof(int32_t), cmp_desc, probs);
        if (top_k > 0 && top_k < n) n = top_k;
        if (top_p > 0.0f && top_p < 1.0f) {
            double kept = 0, lim = top_p * sum;
            int j = 0;
            /* smallest prefix whose mass reaches top_p (at least one token) */
            while (j < n) {
                kept += probs[idx[j++]];
                if (kept >= lim) break;
            }
            n = j;
        }
        sum = 0;
        for (int j = 0; j < n; j++) sum += probs[idx[j]];
    }
    double target = u * sum, acc = 0;
    for (int j = 0; j < n; j++) {
        int32_t id = truncate ? idx[j] : j;
        acc += probs[id];
        if (target < acc) return id;
    }
    return truncate ? idx[n - 1] : ksample_argmax(logits, V); /* rounding at the tail */
}

int kcpu__sample(kbackend *kb, const ksample_args *a) {
    (void)kb;
    if (!a || a->n_rows < 0 || a->vocab < 1 || a->ld < a->vocab || !a->logits || !a->temperature || !a->top_k ||
        !a->top_p || !a->u || !a->ids)
        return PEFTD_EINVAL;
    if (a->n_rows == 0) return 0;
    float *probs = NULL;
    int32_t *idx = NULL;
    for (int r = 0; r < a->n_rows; r++) {
        const float *x = a->logits + (size_t)r * (size_t)a->ld;
        int trunc = (a->top_k[r] > 0 && a->top_k[r] < a->vocab) || (a->top_p[r] > 0.0f && a->top_p[r] < 1.0f);
        if (a->temperature[r] > 0.0f && trunc && !a->any_truncated) {
            free(probs);
            free(idx);
            return PEFTD_EINVAL;
        }
        if (a->temperature[r] > 0.0f && !probs) {
            probs = malloc((size_t)a->vocab * sizeof(float));
            idx = malloc((size_t)a->vocab * sizeof(int32_t));
            if (!probs || !idx) {
                free(probs);
                free(idx);
                return PEFTD_ENOMEM;
            }
        }
        a->ids[r] = ksample_pick_ref(x, a->vocab, a->temperature[r], a->top_k[r], a->top_p[r], a->u[r], probs, idx);
        if (a->logprob) a->logprob[r] = (float)(x[a->ids[r]] - ksample_lse(x, a->vocab));
    }
    free(probs);
    free(idx);
    return 0;
}
