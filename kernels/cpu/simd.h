/* kernels/cpu/simd.h — the CPU backend's vector abstraction (kv_*): one f32
 * vector type of KV_W lanes with loads that widen f16/bf16 to f32 in registers.
 * AVX-512 (16 lanes) when __AVX512F__, else AVX2+FMA+F16C (8 lanes), else scalar
 * (1 lane). Partial loads (kv_*_part, 0 < n < KV_W lanes) read only n elements
 * and zero the rest, so row tails never read past the end of a buffer; partial
 * stores write only n. kv_store_f16 narrows to f16 (the K/V cache's f16 mode). */
#ifndef PEFTD_KCPU_SIMD_H
#define PEFTD_KCPU_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "lib/half.h"

/* kv_store_f16's conversion: f32 -> f16 rounded to nearest even (lib/half.h's f32_to_f16 for
 * every non-NaN value). */
#define KV__F16_RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define KV_W 16
typedef __m512 kv_f32;
static inline kv_f32 kv_zero(void) { return _mm512_setzero_ps(); }
static inline kv_f32 kv_set1(float a) { return _mm512_set1_ps(a); }
static inline kv_f32 kv_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void kv_store(float *p, kv_f32 v) { _mm512_storeu_ps(p, v); }
static inline __mmask16 kv__mask(int n) { return (__mmask16)((1u << n) - 1u); }
static inline kv_f32 kv_load_part(const float *p, int n) { return _mm512_maskz_loadu_ps(kv__mask(n), p); }
static inline void kv_store_part(float *p, kv_f32 v, int n) { _mm512_mask_storeu_ps(p, kv__mask(n), v); }
/* bf16 is the top half of an f32: widen to 32 bits and shift left by 16. */
static inline kv_f32 kv__bf16_widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
static inline kv_f32 kv_load_bf16(const uint16_t *p) { return kv__bf16_widen(_mm256_loadu_si256((const __m256i *)p)); }
static inline kv_f32 kv_load_bf16_part(const uint16_t *p, int n) {
    return kv__bf16_widen(_mm256_maskz_loadu_epi16(kv__mask(n), p));
}
static inline kv_f32 kv_load_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline kv_f32 kv_load_f16_part(const uint16_t *p, int n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(kv__mask(n), p));
}
static inline void kv_store_f16(uint16_t *p, kv_f32 v) { _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, KV__F16_RNE)); }
static inline void kv_store_f16_part(uint16_t *p, kv_f32 v, int n) {
    _mm256_mask_storeu_epi16(p, kv__mask(n), _mm512_cvtps_ph(v, KV__F16_RNE));
}
static inline kv_f32 kv_fmadd(kv_f32 a, kv_f32 b, kv_f32 c) { return _mm512_fmadd_ps(a, b, c); }
static inline kv_f32 kv_add(kv_f32 a, kv_f32 b) { return _mm512_add_ps(a, b); }
static inline kv_f32 kv_mul(kv_f32 a, kv_f32 b) { return _mm512_mul_ps(a, b); }
static inline kv_f32 kv_sub(kv_f32 a, kv_f32 b) { return _mm512_sub_ps(a, b); }
static inline kv_f32 kv_div(kv_f32 a, kv_f32 b) { return _mm512_div_ps(a, b); }
static inline kv_f32 kv_max(kv_f32 a, kv_f32 b) { return _mm512_max_ps(a, b); }
static inline float kv_hmax(kv_f32 v) { return _mm512_reduce_max_ps(v); }
static inline float kv_hsum(kv_f32 v) { return _mm512_reduce_add_ps(v); }

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KV_W 8
typedef __m256 kv_f32;
static inline kv_f32 kv_zero(void) { return _mm256_setzero_ps(); }
static inline kv_f32 kv_set1(float a) { return _mm256_set1_ps(a); }
static inline kv_f32 kv_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void kv_store(float *p, kv_f32 v) { _mm256_storeu_ps(p, v); }
static inline kv_f32 kv_load_part(const float *p, int n) {
    float b[KV_W] = {0};
    memcpy(b, p, (size_t)n * sizeof *p);
    return _mm256_loadu_ps(b);
}
static inline void kv_store_part(float *p, kv_f32 v, int n) {
    float b[KV_W];
    _mm256_storeu_ps(b, v);
    memcpy(p, b, (size_t)n * sizeof *p);
}
static inline kv_f32 kv__bf16_widen(__m128i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline kv_f32 kv_load_bf16(const uint16_t *p) { return kv__bf16_widen(_mm_loadu_si128((const __m128i *)p)); }
static inline kv_f32 kv_load_bf16_part(const uint16_t *p, int n) {
    uint16_t b[KV_W] = {0};
    memcpy(b, p, (size_t)n * sizeof *p);
    return kv_load_bf16(b);
}
static inline kv_f32 kv_load_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
static inline kv_f32 kv_load_f16_part(const uint16_t *p, int n) {
    uint16_t b[KV_W] = {0};
    memcpy(b, p, (size_t)n * sizeof *p);
    return kv_load_f16(b);
}
static inline void kv_store_f16(uint16_t *p, kv_f32 v) { _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, KV__F16_RNE)); }
static inline void kv_store_f16_part(uint16_t *p, kv_f32 v, int n) {
    uint16_t b[KV_W];
    kv_store_f16(b, v);
    memcpy(p, b, (size_t)n * sizeof *p);
}
static inline kv_f32 kv_fmadd(kv_f32 a, kv_f32 b, kv_f32 c) { return _mm256_fmadd_ps(a, b, c); }
static inline kv_f32 kv_add(kv_f32 a, kv_f32 b) { return _mm256_add_ps(a, b); }
static inline kv_f32 kv_mul(kv_f32 a, kv_f32 b) { return _mm256_mul_ps(a, b); }
static inline kv_f32 kv_sub(kv_f32 a, kv_f32 b) { return _mm256_sub_ps(a, b); }
static inline kv_f32 kv_div(kv_f32 a, kv_f32 b) { return _mm256_div_ps(a, b); }
static inline kv_f32 kv_max(kv_f32 a, kv_f32 b) { return _mm256_max_ps(a, b); }
static inline float kv_hmax(kv_f32 v) {
    float b[KV_W], m;
    _mm256_storeu_ps(b, v);
    m = b[0];
    for (int i = 1; i < KV_W; i++) m = b[i] > m ? b[i] : m;
    return m;
}
static inline float kv_hsum(kv_f32 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#else
#define KV_W 1
typedef float kv_f32;
static inline kv_f32 kv_zero(void) { return 0.0f; }
static inline kv_f32 kv_set1(float a) { return a; }
static inline kv_f32 kv_load(const float *p) { return *p; }
static inline void kv_store(float *p, kv_f32 v) { *p = v; }
static inline kv_f32 kv_load_part(const float *p, int n) { (void)n; return *p; }
static inline void kv_store_part(float *p, kv_f32 v, int n) { (void)n; *p = v; }
static inline kv_f32 kv_load_bf16(const uint16_t *p) { return bf16_to_f32(*p); }
static inline kv_f32 kv_load_bf16_part(const uint16_t *p, int n) { (void)n; return bf16_to_f32(*p); }
static inline kv_f32 kv_load_f16(const uint16_t *p) { return f16_to_f32(*p); }
static inline kv_f32 kv_load_f16_part(const uint16_t *p, int n) { (void)n; return f16_to_f32(*p); }
static inline void kv_store_f16(uint16_t *p, kv_f32 v) { *p = f32_to_f16(v); }
static inline void kv_store_f16_part(uint16_t *p, kv_f32 v, int n) { (void)n; *p = f32_to_f16(v); }
static inline kv_f32 kv_fmadd(kv_f32 a, kv_f32 b, kv_f32 c) { return a * b + c; }
static inline kv_f32 kv_add(kv_f32 a, kv_f32 b) { return a + b; }
static inline kv_f32 kv_mul(kv_f32 a, kv_f32 b) { return a * b; }
static inline kv_f32 kv_sub(kv_f32 a, kv_f32 b) { return a - b; }
static inline kv_f32 kv_div(kv_f32 a, kv_f32 b) { return a / b; }
static inline kv_f32 kv_max(kv_f32 a, kv_f32 b) { return a > b ? a : b; }
static inline float kv_hmax(kv_f32 v) { return v; }
static inline float kv_hsum(kv_f32 v) { return v; }
#endif

/* e^x lane by lane, within ~2 ulp of the correctly rounded result. AVX-512:
 * x = n·ln2 + r with n = round(x/ln2), |r| <= ln2/2 (Cody-Waite: ln2 split in
 * a float and its remainder, exact enough with FMA); e^r by its Taylor series
 * to degree 7, whose truncation error r^8/8! <= 5.2e-9 is below u/8 relative;
 * 2^n applied by vscalefps, which saturates to inf / 0 and propagates NaN.
 * AVX2: the same (2^n in two steps, below). Scalar builds: expf per lane. */
#if KV_W == 16
static inline kv_f32 kv_exp(kv_f32 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693147182464599609375f); /* float(ln 2) */
    const __m512 ln2_lo = _mm512_set1_ps(-1.904654299957768e-09f);  /* ln 2 - ln2_hi */
    /* Clamp first: e^-104 rounds to 0 and e^89 overflows in f32, and beyond
     * that range the reduction would lose r entirely. (max/min return their
     * second operand on NaN, so NaN passes through.) */
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
#elif KV_W == 8
/* AVX2: the same reduction and polynomial; 2^n (n in [-150, 129] after the clamp) applied as
 * (p·2^⌊n/2⌋)·2^(n-⌊n/2⌋), two normal powers of two: the first product is exact, the second
 * rounds once — vscalefps's result, subnormals and overflow to inf included. */
static inline kv_f32 kv_exp(kv_f32 x) {
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693147182464599609375f);
    const __m256 ln2_lo = _mm256_set1_ps(-1.904654299957768e-09f);
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);
    r = _mm256_fnmadd_ps(n, ln2_lo, r);
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i ni = _mm256_cvtps_epi32(n); /* NaN x: garbage powers, but p is NaN */
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}
#else
static inline kv_f32 kv_exp(kv_f32 x) {
    float b[KV_W];
    kv_store(b, x);
    for (int i = 0; i < KV_W; i++) b[i] = expf(b[i]);
    return kv_load(b);
}
#endif

/* b's KV_W elements from i (or its n < KV_W last ones), f32 or f16 widened (f16 != 0): one
 * loader for code built for both (attention's K/V). */
static inline kv_f32 kv_load_any(int f16, const void *b, int64_t i) {
    return f16 ? kv_load_f16((const uint16_t *)b + i) : kv_load((const float *)b + i);
}
static inline kv_f32 kv_load_any_part(int f16, const void *b, int64_t i, int n) {
    return f16 ? kv_load_f16_part((const uint16_t *)b + i, n) : kv_load_part((const float *)b + i, n);
}

/* The lanes kv_dot sums (two FMA chains over alternate KV_W pieces, added), b f32 or (f16)
 * f16 widened as loaded: kv_dot(a, b, n) is kv_hsum of this; several of them at once go
 * through kv_hsum_each (same bits). */
static inline __attribute__((always_inline)) kv_f32 kv__dot_lanes(int f16, const float *a, const void *b, int64_t n) {
    kv_f32 acc0 = kv_zero(), acc1 = kv_zero();
    int64_t i = 0;
    for (; i + 2 * KV_W <= n; i += 2 * KV_W) {
        acc0 = kv_fmadd(kv_load(a + i), kv_load_any(f16, b, i), acc0);
        acc1 = kv_fmadd(kv_load(a + i + KV_W), kv_load_any(f16, b, i + KV_W), acc1);
    }
    for (; i + KV_W <= n; i += KV_W) acc0 = kv_fmadd(kv_load(a + i), kv_load_any(f16, b, i), acc0);
    if (i < n) acc1 = kv_fmadd(kv_load_part(a + i, (int)(n - i)), kv_load_any_part(f16, b, i, (int)(n - i)), acc1);
    return kv_add(acc0, acc1);
}
static inline kv_f32 kv_dot_lanes(const float *a, const float *b, int64_t n) { return kv__dot_lanes(0, a, b, n); }

/* Dot product of two f32 vectors of length n (any n >= 0). */
static inline float kv_dot(const float *a, const float *b, int64_t n) { return kv_hsum(kv_dot_lanes(a, b, n)); }

/* dst[i] = f16(src[i]) (round to nearest even), i < n. */
static inline void kv_row_to_f16(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + KV_W <= n; i += KV_W) kv_store_f16(dst + i, kv_load(src + i));
    if (i < n) kv_store_f16_part(dst + i, kv_load_part(src + i, (int)(n - i)), (int)(n - i));
}

/* y[i] += b * x[i], i < n. */
static inline void kv_axpy(float *y, float b, const float *x, int64_t n) {
    kv_f32 vb = kv_set1(b);
    int64_t i = 0;
    for (; i + KV_W <= n; i += KV_W) kv_store(y + i, kv_fmadd(vb, kv_load(x + i), kv_load(y + i)));
    if (i < n) {
        int r = (int)(n - i);
        kv_store_part(y + i, kv_fmadd(vb, kv_load_part(x + i, r), kv_load_part(y + i, r)), r);
    }
}

/* y[i] = a * y[i] + b * x[i], i < n. */
static inline void kv_scale_axpy(float *y, float a, float b, const float *x, int64_t n) {
    kv_f32 va = kv_set1(a), vb = kv_set1(b);
    int64_t i = 0;
    for (; i + KV_W <= n; i += KV_W)
        kv_store(y + i, kv_fmadd(vb, kv_load(x + i), kv_mul(va, kv_load(y + i))));
    if (i < n) {
        int r = (int)(n - i);
        kv_store_part(y + i, kv_fmadd(vb, kv_load_part(x + i, r), kv_mul(va, kv_load_part(y + i, r))), r);
    }
}


/* Lane q of the result = kv_hsum(acc[q]), bit for bit, for every q < KV_W (SGMV expand's
 * outputs, attention's scores). AVX-512: a transpose-and-add tree (halves, quarters, pairs,
 * then lanes: 15 add + 30 shuffles for 16 vectors; each level kv_hsum's pairing) followed by
 * one permute back to output order; AVX2 the same shape for 8; the order of the additions for
 * a given q is fixed, whatever the other accumulators hold. */
static inline __attribute__((always_inline)) kv_f32 kv_hsum_each(const kv_f32 acc[KV_W]) {
#if KV_W == 16
    __m512 h[8], qv[4], p[2];
    /* 512 -> 256: h[m] lanes 0-7 = acc[2m] halves summed, lanes 8-15 = acc[2m+1]'s */
#pragma GCC unroll 8
    for (int m = 0; m < 8; m++)
        h[m] = _mm512_add_ps(_mm512_shuffle_f32x4(acc[2 * m], acc[2 * m + 1], 0x44),
                             _mm512_shuffle_f32x4(acc[2 * m], acc[2 * m + 1], 0xEE));
    /* 256 -> 128: quarter j of qv[m] holds the 4 partial sums of acc[4m + j] */
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++)
        qv[m] = _mm512_add_ps(_mm512_shuffle_f32x4(h[2 * m], h[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(h[2 * m], h[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    /* 128 -> 64 within each quarter j: p[m] = [acc[8m+j] 2 partials, acc[8m+4+j] 2 partials] */
#pragma GCC unroll 2
    for (int m = 0; m < 2; m++)
        p[m] = _mm512_add_ps(_mm512_shuffle_ps(qv[2 * m], qv[2 * m + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(qv[2 * m], qv[2 * m + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* 64 -> 32: lane 4j + m holds the full sum of acc[4m + j] */
    __m512 f = _mm512_add_ps(_mm512_shuffle_ps(p[0], p[1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_ps(p[0], p[1], _MM_SHUFFLE(3, 1, 3, 1)));
    /* out lane q = acc[q] lives at lane 4·(q%4) + q/4 */
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(idx, f);
#elif KV_W == 8
    /* AVX2: kv_hsum's order for each acc[q] — (lane k + lane k+4), then (k=0 + k=2), (k=1 +
     * k=3), then those two — computed for the 8 accumulators at once (22 instructions; 8 scalar
     * sums stored and reloaded as a vector stalled on store forwarding), so the same bits. */
    __m256 s[4], u[2];
    /* s[m] = [acc[2m] lo + hi | acc[2m+1] lo + hi] */
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++)
        s[m] = _mm256_add_ps(_mm256_permute2f128_ps(acc[2 * m], acc[2 * m + 1], 0x20),
                             _mm256_permute2f128_ps(acc[2 * m], acc[2 * m + 1], 0x31));
    /* u[m] = [acc[4m] (0+2, 1+3), acc[4m+2] (0+2, 1+3) | acc[4m+1] .., acc[4m+3] ..] */
#pragma GCC unroll 2
    for (int m = 0; m < 2; m++)
        u[m] = _mm256_add_ps(_mm256_shuffle_ps(s[2 * m], s[2 * m + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(s[2 * m], s[2 * m + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* lanes [acc 0, 2, 4, 6 | 1, 3, 5, 7], each (0+2) + (1+3) */
    const __m256 f = _mm256_add_ps(_mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
#else
    float b[KV_W];
    for (int q = 0; q < KV_W; q++) b[q] = kv_hsum(acc[q]);
    return kv_load(b);
#endif
}

/* In place: v[l] lane q becomes the old v[q] lane l for l, q < KV_W (a KV_W × KV_W transpose;
 * AVX-512 64 shuffles in four rounds — pairs, quads, 128-bit halves twice — AVX2 24 in three). */
static inline __attribute__((always_inline)) void kv_transpose(kv_f32 v[KV_W]) {
#if KV_W == 16
    __m512 t[16], u[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) { /* per 128-bit lane: [a0 b0 a1 b1], [a2 b2 a3 b3] */
        t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) { /* u[4i + k], 128-bit lane q: rows 4i..4i+3 of column 4q + k */
        u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) { /* column 4q + k gathers lane q of u[k], u[4 + k], u[8 + k], u[12 + k] */
        const __m512 x0 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88), y0 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xDD);
        const __m512 x1 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88), y1 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xDD);
        v[k] = _mm512_shuffle_f32x4(x0, x1, 0x88);
        v[8 + k] = _mm512_shuffle_f32x4(x0, x1, 0xDD);
        v[4 + k] = _mm512_shuffle_f32x4(y0, y1, 0x88);
        v[12 + k] = _mm512_shuffle_f32x4(y0, y1, 0xDD);
    }
#elif KV_W == 8
    __m256 t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
        v[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
#else
    (void)v; /* KV_W 1: a 1 × 1 transpose leaves v as it is */
#endif
}

/* dst[i] = f32(src[i]), i < n, for a row stored in dtype dt (0 f32, 1 f16, 2 bf16:
 * the kdtype values; taken as int so this header does not need kernels.h). */
static inline void kv_row_to_f32(int dt, const void *src, float *dst, int64_t n) {
    if (dt == 0) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    const uint16_t *s = src;
    int64_t i = 0;
    for (; i + KV_W <= n; i += KV_W) kv_store(dst + i, dt == 1 ? kv_load_f16(s + i) : kv_load_bf16(s + i));
    if (i < n) {
        int r = (int)(n - i);
        kv_store_part(dst + i, dt == 1 ? kv_load_f16_part(s + i, r) : kv_load_bf16_part(s + i, r), r);
    }
}

#endif
