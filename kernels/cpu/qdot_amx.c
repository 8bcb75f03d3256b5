/* kernels/cpu/qdot_amx.c — quantized batches on AMX-INT8 tile registers (the AMX path of
 * qmatmul.h), every type. Batches under KQ_AMX_MIN_N x rows and weight rows past the last whole
 * group of 16 go to the VNNI path, whose bits are the same.
 *
 * Q4_K, Q5_K: one tdpbusd multiplies A = 16 weight rows' unsigned codes of one 32-element chunk
 * (16 × 32 bytes; the rows are unpacked once per group of 16 into a row-major buffer) by B = 16 x
 * rows' codes of the same chunk in the tile unit's pairs-of-4 layout (8 × 64 bytes, built once per
 * call by the activation quantizer: kq_x.x16v, kernels/cpu/qx16.c), giving the 256 exact chunk sums
 * S_c[n][m] = Σ_{k<32} q·xq. A super-block's 8 chunks go to tmm0-3 in two rounds of 4 and are
 * stored to a scratch; then, per weight row n with the 16 x rows in zmm lanes, the exact totals
 * of the canonical order — I = Σ_c sc_c·S_c (vpmulld), M = Σ_j m_j·X_j (vpdpwssd on the code
 * sums kq_x.x16p) — and its f32 step, fma((float)I, d·dx), fma((float)M, −(dmin·dx)): the
 * totals and the two fmas of every other path, so the same bits (tests/unit/test_kernels_quant.c).
 * Q6_K: tdpbssd per group of 16 signed codes − 32 (amx_block6).
 * Q8_0, Q4_0: tdpbssd per block of 32 signed codes (Q8_0's A tiles load straight from the weight
 * rows, Q4_0's from its unpacked nibbles − 8), then the canonical fma per block (amx_block8).
 *
 * Tiles: tmm0-3 C (16 × 64 bytes), tmm4/tmm6 A (16 × 32), tmm5/tmm7 B (8 × 64), alternating so
 * that a load overlaps the previous product. The configuration is loaded at the start of every
 * call and released at its end (another library in the thread may use the tiles too). The
 * process asks the kernel for the tile state once (arch_prctl, kq_amx_usable). GCC's tile
 * intrinsics are asm statements that do not tell the compiler which memory they touch, hence
 * the explicit compiler barriers around them. */
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kernels/cpu/qdot_kquant_avx512.h"
#include "kernels/cpu/qdot_kquant_x86.h"
#include "kernels/cpu/qmatmul.h"

#define AMX_TGT __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define AMX_INL static inline __attribute__((always_inline)) AMX_TGT
#define AMX_BARRIER() __asm__ volatile("" ::: "memory")

/* ---- availability ---- */

#define ARCH_GET_XCOMP_PERM_ 0x1022
#define ARCH_REQ_XCOMP_PERM_ 0x1023
#define XFEATURE_XTILEDATA_ 18

static bool amx_ok;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

static void amx_probe(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    if (!(d & (1u << 24)) || !(d & (1u << 25))) return; /* AMX-TILE, AMX-INT8 */
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return; /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return; /* XTILECFG, XTILEDATA enabled by the OS */
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM_, XFEATURE_XTILEDATA_)) return;
    unsigned long perm = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM_, &perm) || !(perm & (1ul << XFEATURE_XTILEDATA_))) return;
    amx_ok = true;
}

unsigned long kq_amx_groups; /* groups of 16 weight rows done on the tiles (tests) */

bool kq_amx_usable(void) {
    pthread_once(&amx_once, amx_probe);
    return amx_ok;
}

/* ---- the product ---- */

typedef struct {
    uint8_t palette, start_row, pad[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) amx_cfg;

/* 16 weight rows unpacked: codes [16][cols], and per super-block b and row n the scales as
 * floats (Q4_K/Q5_K 8, Q6_K 16), the 4 mins pairs (m_2t | m_2t+1 << 16; Q4_K/Q5_K), d and dmin. */
typedef struct {
    uint8_t *a;
    float *sc; /* the 6-bit scales as floats (exact) */
    int32_t *mp;
    float *d, *dm;
} amx_wrows;

AMX_INL void amx_unpack(int FIVE, const uint8_t *w, size_t rb, int64_t nb, int64_t cols, const amx_wrows *u) {
    const int BB = FIVE ? 176 : 144;
    for (int n = 0; n < 16; n++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *p = w + n * rb + BB * b;
            uint8_t *dst = u->a + n * cols + 256 * b;
            for (int k = 0; k < 4; k++) _mm512_storeu_si512(dst + 64 * k, kq_q4k_codes2(FIVE, p, k));
            __m256i sc16, m32;
            kq_q4k_scales8(p, &sc16, &m32);
            const int64_t s = b * 16 + n;
            _mm256_storeu_ps(u->sc + 8 * s, _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(sc16))));
            int32_t mm[8];
            _mm256_storeu_si256((__m256i *)mm, m32);
            for (int t = 0; t < 4; t++) u->mp[4 * s + t] = mm[2 * t] | mm[2 * t + 1] << 16;
            int32_t h2;
            memcpy(&h2, p, 4);
            const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(h2));
            u->d[s] = _mm_cvtss_f32(dd);
            u->dm[s] = _mm_cvtss_f32(_mm_movehdup_ps(dd));
        }
}

/* Q6_K: the codes minus 32 (signed: the offset is then inside the tile products), the 16 group
 * scales as floats (u->sc, 16 per row), d. */
AMX_INL void amx_unpack6(const uint8_t *w, size_t rb, int64_t nb, int64_t cols, const amx_wrows *u) {
    const __m512i off = _mm512_set1_epi8(32);
    for (int n = 0; n < 16; n++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *p = w + n * rb + 210 * b;
            int8_t *dst = (int8_t *)u->a + n * cols + 256 * b;
            for (int mm = 0; mm < 4; mm++) _mm512_storeu_si512(dst + 64 * mm, _mm512_sub_epi8(kq_q6k_codes2(p, mm), off));
            const int64_t s = b * 16 + n;
            _mm512_storeu_ps(u->sc + 16 * s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 192)))));
            uint16_t hd;
            memcpy(&hd, p + 208, 2);
            u->d[s] = _cvtsh_ss(hd);
        }
}

/* Pieces c0 .. c0 + 3 of super-block b: S[c] = A_c × B_c for 16 weight rows × 16 x rows. A piece
 * is a chunk of 32 unsigned codes (Q4_K, Q5_K: tdpbusd) or, SIX, a group of 16 signed codes
 * minus 32 (Q6_K: tdpbssd); its B rows start at 64·(first code / 4) of the block's x layout. */
#define AMX_PIECE(T, TA, TB, c)                                                                        \
    do {                                                                                               \
        _tile_loadd(TA, a + 256 * b + PL * (c), cols);                                                 \
        _tile_loadd(TB, xv + (c) * 16 * PL, 64);                                                       \
        if (SIX)                                                                                       \
            _tile_dpbssd(T, TA, TB);                                                                   \
        else                                                                                           \
            _tile_dpbusd(T, TA, TB);                                                                   \
    } while (0)

AMX_INL void amx_pieces4(int SIX, const uint8_t *a, int64_t cols, int64_t b, const int8_t *xv, int c0, int32_t *S) {
    const int PL = SIX ? 16 : 32; /* codes per piece */
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    AMX_PIECE(0, 4, 5, c0);
    AMX_PIECE(1, 6, 7, c0 + 1);
    AMX_PIECE(2, 4, 5, c0 + 2);
    AMX_PIECE(3, 6, 7, c0 + 3);
    _tile_stored(0, S + 256 * (c0 + 0), 64);
    _tile_stored(1, S + 256 * (c0 + 1), 64);
    _tile_stored(2, S + 256 * (c0 + 2), 64);
    _tile_stored(3, S + 256 * (c0 + 3), 64);
}

/* v[i] lane j <-> v[j] lane i. */
AMX_INL void amx_transpose16(__m512 v[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        v[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        v[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        v[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        v[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    /* v[4q + s] holds, in each 128-bit lane L, rows 4q .. 4q + 3 of column 4L + s */
    for (int q = 0; q < 4; q += 2)
        for (int s = 0; s < 4; s++) {
            t[4 * q + s] = _mm512_shuffle_f32x4(v[4 * q + s], v[4 * (q + 1) + s], 0x88);
            t[4 * (q + 1) + s] = _mm512_shuffle_f32x4(v[4 * q + s], v[4 * (q + 1) + s], 0xDD);
        }
    for (int s = 0; s < 4; s++) {
        v[s] = _mm512_shuffle_f32x4(t[s], t[8 + s], 0x88);
        v[8 + s] = _mm512_shuffle_f32x4(t[s], t[8 + s], 0xDD);
        v[4 + s] = _mm512_shuffle_f32x4(t[4 + s], t[12 + s], 0x88);
        v[12 + s] = _mm512_shuffle_f32x4(t[4 + s], t[12 + s], 0xDD);
    }
}

/* y[m·ldy + n] (+)= acc[n] lane m for the live x rows of block mb. */
AMX_INL void amx_store(__m512 acc[16], const kq_x *x, int64_t mb, float *y, int64_t ldy, float beta) {
    amx_transpose16(acc);
    const int mlim = x->n - 16 * (int)mb < 16 ? x->n - 16 * (int)mb : 16;
    for (int m = 0; m < mlim; m++) { /* acc[m]: x row 16mb + m, lanes = the 16 weight rows */
        float *yp = y + (16 * mb + m) * ldy;
        _mm512_storeu_ps(yp, beta != 0.0f ? _mm512_add_ps(_mm512_loadu_ps(yp), acc[m]) : acc[m]);
    }
}

/* Q6_K: 16 weight rows (unpacked in u) × x rows 16mb .. 16mb + 15. T = Σ_g sc_g·S_g with S_g the
 * signed group sums, in f32 over pairs of groups (exact: |S_g| <= 16·32·127, |sc| <= 128, a pair
 * <= 16646144 < 2^24), back to int32 and added; then fma((float)T, d·dx). */
AMX_INL void amx_block6(const amx_wrows *u, const kq_x *x, int64_t mb, float *y, int64_t ldy, float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    int32_t S[16 * 256] __attribute__((aligned(64)));
    __m512 acc[16];
    for (int n = 0; n < 16; n++) acc[n] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const int8_t *xv = x->x16v + (mb * nb + b) * 8 * 512;
        AMX_BARRIER();
        for (int g0 = 0; g0 < 16; g0 += 4) amx_pieces4(1, u->a, cols, b, xv, g0, S);
        AMX_BARRIER();
        const __m512 dx = _mm512_load_ps(x->x16d + (mb * nb + b) * 16);
#pragma GCC unroll 16
        for (int n = 0; n < 16; n++) {
            const int64_t s = b * 16 + n;
            const float *sc = u->sc + 16 * s;
            __m512i T = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int g = 0; g < 16; g += 2) {
                __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(S + 256 * g + 16 * n)), _mm512_set1_ps(sc[g]));
                f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(S + 256 * (g + 1) + 16 * n)), _mm512_set1_ps(sc[g + 1]), f);
                T = _mm512_add_epi32(T, _mm512_cvtps_epi32(f));
            }
            acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(T), _mm512_mul_ps(_mm512_set1_ps(u->d[s]), dx), acc[n]);
        }
    }
    amx_store(acc, x, mb, y, ldy, beta);
}

/* 16 weight rows (unpacked in u) × x rows 16mb .. 16mb + 15: y[m·ldy + n] (+)= the outputs. */
AMX_INL void amx_block(int FIVE, const amx_wrows *u, const kq_x *x, int64_t mb, float *y, int64_t ldy, float beta) {
    const int64_t cols = x->cols, nb = cols / 256;
    int32_t S[8 * 256] __attribute__((aligned(64)));
    __m512 acc[16];
    for (int n = 0; n < 16; n++) acc[n] = _mm512_setzero_ps();
    const __m512 neg = _mm512_set1_ps(-0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const int8_t *xv = x->x16v + (mb * nb + b) * 8 * 512;
        AMX_BARRIER();
        amx_pieces4(0, u->a, cols, b, xv, 0, S);
        amx_pieces4(0, u->a, cols, b, xv, 4, S);
        AMX_BARRIER();
        const int32_t *xp = x->x16p + (mb * nb + b) * 64;
        const __m512i X0 = _mm512_load_si512(xp), X1 = _mm512_load_si512(xp + 16), X2 = _mm512_load_si512(xp + 32),
                      X3 = _mm512_load_si512(xp + 48);
        const __m512 dx = _mm512_load_ps(x->x16d + (mb * nb + b) * 16);
#pragma GCC unroll 16
        for (int n = 0; n < 16; n++) {
            const int64_t s = b * 16 + n;
            const float *sc = u->sc + 8 * s;
            const int32_t *mp = u->mp + 4 * s;
            /* I = Σ_c sc_c·S_c in f32 over runs of G chunks, converted back to int32 and added:
             * exact, as every partial sum is an integer below 2^24 (|S_c| <= 32·15·127 for Q4_K,
             * 32·31·127 for Q5_K; sc <= 63: four Q4_K terms <= 15361920, two Q5_K terms
             * <= 15873984) — two ports' worth of 1-µop work where vpmulld is two µops on one */
            const int G = FIVE ? 2 : 4;
            __m512i I = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int c0 = 0; c0 < 8; c0 += G) {
                __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(S + 256 * c0 + 16 * n)), _mm512_set1_ps(sc[c0]));
#pragma GCC unroll 4
                for (int c = c0 + 1; c < c0 + G; c++)
                    f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(S + 256 * c + 16 * n)), _mm512_set1_ps(sc[c]), f);
                I = _mm512_add_epi32(I, _mm512_cvtps_epi32(f));
            }
            __m512i M = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_set1_epi32(mp[0]), X0);
            M = _mm512_dpwssd_epi32(M, _mm512_set1_epi32(mp[1]), X1);
            M = _mm512_dpwssd_epi32(M, _mm512_set1_epi32(mp[2]), X2);
            M = _mm512_dpwssd_epi32(M, _mm512_set1_epi32(mp[3]), X3);
            const __m512 fd = _mm512_mul_ps(_mm512_set1_ps(u->d[s]), dx);
            const __m512 fm = _mm512_xor_ps(_mm512_mul_ps(_mm512_set1_ps(u->dm[s]), dx), neg); /* −(dmin·dx) */
            acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), fd, acc[n]);
            acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(M), fm, acc[n]);
        }
    }
    amx_store(acc, x, mb, y, ldy, beta);
}

/* Q8_0 / Q4_0: 16 weight rows × x rows 16mb .. 16mb + 15. Per block c, one tdpbssd gives the
 * 256 exact block sums S_c (signed codes × signed codes, 32 per sum); then per weight row n, with
 * the x rows in lanes, the canonical step acc = fma((float)S_c, dw·dx, acc) in block order.
 * A: Q8_0's codes straight from the weight rows (stride rb, 2 bytes of scale skipped), Q4_0's
 * from the unpacked buffer u->a (stride cols); dw: u->d[c·16 + n]. */
AMX_INL void amx_block8(const uint8_t *a0, size_t as, int BB, const amx_wrows *u, const kq_x *x, int64_t mb, float *y,
                        int64_t ldy, float beta) {
    const int64_t cols = x->cols, nc = cols / 32;
    int32_t S[4 * 256] __attribute__((aligned(64)));
    __m512 acc[16];
    for (int n = 0; n < 16; n++) acc[n] = _mm512_setzero_ps();
    const int8_t *xv0 = x->x16v + mb * nc * 512;
    const float *dx0 = x->x16d + mb * nc * 16;
    for (int64_t c0 = 0; c0 < nc; c0 += 4) {
        const int k = nc - c0 < 4 ? (int)(nc - c0) : 4;
        AMX_BARRIER();
        /* tmm0-3: C of blocks c0 .. c0 + 3; A in tmm4 / tmm6, B in tmm5 / tmm7 alternately */
#define AMX_B8(T, TA, TB, j)                                           \
        if ((j) < k) {                                                 \
            _tile_zero(T);                                             \
            _tile_loadd(TA, a0 + BB * (c0 + (j)), as);                 \
            _tile_loadd(TB, xv0 + (c0 + (j)) * 512, 64);               \
            _tile_dpbssd(T, TA, TB);                                   \
            _tile_stored(T, S + 256 * (j), 64);                        \
        }
        AMX_B8(0, 4, 5, 0)
        AMX_B8(1, 6, 7, 1)
        AMX_B8(2, 4, 5, 2)
        AMX_B8(3, 6, 7, 3)
#undef AMX_B8
        AMX_BARRIER();
        for (int j = 0; j < k; j++) {
            const __m512 dx = _mm512_load_ps(dx0 + 16 * (c0 + j));
            const float *d = u->d + 16 * (c0 + j);
#pragma GCC unroll 16
            for (int n = 0; n < 16; n++)
                acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(S + 256 * j + 16 * n)),
                                         _mm512_mul_ps(_mm512_set1_ps(d[n]), dx), acc[n]);
        }
    }
    amx_store(acc, x, mb, y, ldy, beta);
}

/* Q8_0 / Q4_0 weight rows w .. w + 15·rb: the block scales as floats, u->d[c·16 + n]; Q4_0's codes
 * (nibble − 8, low nibbles first) into u->a [16][cols]. Touching every block also brings the
 * rows in (the scale sits in each block's first bytes). */
AMX_INL void amx_unpack8(kdtype dt, const uint8_t *w, size_t rb, int64_t cols, const amx_wrows *u) {
    const int64_t nc = cols / 32;
    const int BB = dt == KDT_Q8_0 ? 34 : 18;
    for (int n = 0; n < 16; n++)
        for (int64_t c = 0; c < nc; c++) {
            const uint8_t *p = w + n * rb + BB * c;
            uint16_t h;
            memcpy(&h, p, 2);
            u->d[c * 16 + n] = _cvtsh_ss(h);
            if (dt == KDT_Q4_0) {
                const __m128i q = _mm_loadu_si128((const __m128i *)(p + 2)), m4 = _mm_set1_epi8(15);
                const __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
                _mm256_storeu_si256((__m256i *)(u->a + n * cols + 32 * c), _mm256_sub_epi8(v, _mm256_set1_epi8(8)));
            }
        }
}

static AMX_TGT void amx_rows(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y,
                             int64_t ldy, float beta) {
    const int64_t cols = x->cols, nb = cols / 256, groups = (r1 - r0) / 16, mblocks = (x->n + 15) / 16;
    const bool six = dt == KDT_Q6_K, q8 = !kdtype_is_kquant(dt);
    /* scratch: codes [16][cols] (Q8_0: none, its tiles load the rows), then the scales */
    const size_t abytes = dt == KDT_Q8_0 ? 0 : (size_t)16 * (size_t)cols;
    const size_t sbytes = q8 ? (size_t)(cols / 32) * 16 * 4 : (size_t)nb * 16 * (16 + 4 + 1 + 1) * 4;
    uint8_t *ws = NULL;
    if (groups > 0 && posix_memalign((void **)&ws, 64, abytes + sbytes)) ws = NULL;
    if (!ws) { /* no scratch: the VNNI path (same bits) */
        kq_rows_vnni(dt, w, rb, r0, r1, x, y, ldy, beta);
        return;
    }
    amx_wrows u = {.a = ws};
    if (q8) u.d = (float *)(ws + abytes);
    else {
        u.sc = (float *)(ws + abytes);
        u.mp = (int32_t *)(u.sc + nb * 16 * 16);
        u.d = (float *)(u.mp + nb * 16 * 4);
        u.dm = u.d + nb * 16;
    }
    amx_cfg cfg = {.palette = 1};
    for (int t = 0; t < 4; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    /* A: 16 weight rows × one chunk (32) or group (16) of codes; B: the x codes, K/4 rows */
    cfg.rows[4] = cfg.rows[6] = 16, cfg.colsb[4] = cfg.colsb[6] = six ? 16 : 32;
    cfg.rows[5] = cfg.rows[7] = six ? 4 : 8, cfg.colsb[5] = cfg.colsb[7] = 64;
    AMX_BARRIER();
    _tile_loadconfig(&cfg);
    for (int64_t g = 0; g < groups; g++) {
        const int64_t r = r0 + 16 * g;
        if (q8) {
            amx_unpack8(dt, w + r * rb, rb, cols, &u);
            for (int64_t mb = 0; mb < mblocks; mb++) {
                if (dt == KDT_Q8_0) amx_block8(w + r * rb + 2, rb, 34, &u, x, mb, y + r, ldy, beta);
                else amx_block8(u.a, (size_t)cols, 32, &u, x, mb, y + r, ldy, beta);
            }
        } else if (six) {
            amx_unpack6(w + r * rb, rb, nb, cols, &u);
            for (int64_t mb = 0; mb < mblocks; mb++) amx_block6(&u, x, mb, y + r, ldy, beta);
        } else {
            amx_unpack(dt == KDT_Q5_K, w + r * rb, rb, nb, cols, &u);
            for (int64_t mb = 0; mb < mblocks; mb++) amx_block(dt == KDT_Q5_K, &u, x, mb, y + r, ldy, beta);
        }
    }
    _tile_release();
    AMX_BARRIER();
    free(ws);
    __atomic_fetch_add(&kq_amx_groups, (unsigned long)groups, __ATOMIC_RELAXED);
    if (r0 + 16 * groups < r1) kq_rows_vnni(dt, w, rb, r0 + 16 * groups, r1, x, y, ldy, beta);
}

void kq_rows_amx(kdtype dt, const uint8_t *w, size_t rb, int64_t r0, int64_t r1, const kq_x *x, float *y, int64_t ldy,
                 float beta) {
    if (!x->x16v || x->n < KQ_AMX_MIN_N) {
        kq_rows_vnni(dt, w, rb, r0, r1, x, y, ldy, beta);
        return;
    }
    amx_rows(dt, w, rb, r0, r1, x, y, ldy, beta);
}
