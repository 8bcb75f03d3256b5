/* tests/unit/test_kernels_quant.c — the CPU backend's quantized matmul (Q8_0, Q4_0, Q5_0, Q4_1,
 * Q5_1, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K weights)
 * against quant_ref.c's dequantized weights times the exact (double) f32 activations, every
 * code path (AVX-512 VNNI, AVX2, scalar) bit-identical to the others, results per row
 * bit-identical whatever the batch and thread count, get_rows on quantized tables, and bad
 * shapes refused. Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL, IQ4_XS, Q3_K and Q2_K are tested on random valid blocks (every code, scale
 * and min pattern, not only what a quantizer emits), the other types on quant_ref's quantizer
 * output. Q4_1 / Q5_1's min m adds |m|·(|x| + d) per element to the rounding term below.
 *
 * Tolerance (derived, not tuned). The kernel computes Σ_j w_j·x̂_j where w_j is the
 * dequantized weight and x̂_j = d_b·q_j the activation quantized per block b (32 elements for
 * Q8_0/Q4_0/Q5_0, 256 for Q4_K) with d_b = max_b|x|/127 and q_j = round(x_j/d_b), so |x_j − x̂_j| <=
 * d_b/2 (blocks of 256 for every K-quant) and
 *     |Σ w·x − Σ w·x̂| <= Σ_b (d_b/2)·Σ_{j∈b} |w_j|                       (quantization)
 * The integer block sums are exact; each term then sees at most a few f32 roundings (the
 * scale products d_w·d_x, (d·sc)·d_x, dmin·m, d_x·Σq: one each) and the accumulation over at
 * most cols/4 + 8 fused adds plus the 4-level reduction, so the float error is within
 *     (cols + 16)·u·Σ_j (|w_j| + |dmin·m_j|)·(|x_j| + d_b)               (rounding)
 * (u = 2^-24; Higham §3.1 for the summation, |x̂_j| <= |x_j| + d_b/2; the Q4_K min term
 * dmin·m·d_x·Σq is bounded by the |dmin·m_j|·|x̂_j| part; Q5_K the same; Q6_K has no min: its
 * −32 offset is inside the exact integer sum). The test passes when the error is
 * within the sum of the two; a wrong block scale or a dropped block is orders outside it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/qmatmul.h"
#include "kernels/cpu/quant_ref.h"
#include "kernels/kernels.h"
#include "lib/half.h"
#include "tests/harness/test.h"

#define U_F32 (1.0 / 16777216.0)

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / 8388608.0 - 1.0);
}

/* Random weights (a few outliers, one all-zero block) quantized to dt; wd: dequantized. */
static void *make_w(kdtype dt, int rows, int cols, float **wd) {
    int64_t n = (int64_t)rows * cols;
    float *w = malloc((size_t)n * sizeof(float));
    *wd = malloc((size_t)n * sizeof(float));
    void *q = malloc(kdtype_row_bytes(dt, cols) * (size_t)rows);
    ASSERT(w && *wd && q);
    for (int64_t i = 0; i < n; i++) w[i] = frand() * (i % 97 == 5 ? 8.0f : 0.5f);
    for (int64_t i = 0; i < 32 && i < n; i++) w[i] = 0.0f;
    uint32_t qt = kdtype_ggml_type(dt);
    if (dt == KDT_Q4_0 || dt == KDT_Q5_0 || dt == KDT_Q4_1 || dt == KDT_Q5_1 || dt == KDT_IQ4_NL || dt == KDT_IQ4_XS ||
        dt == KDT_Q3_K || dt == KDT_Q2_K) {
        /* GGUF files bring the blocks: random valid ones (every code and IQ4_XS sub-block scale;
         * Q4_1 / Q5_1 a min of either sign) */
        const size_t bb = kdtype_block_bytes(dt), hb = kq_has_min(dt) ? 4 : 2;
        uint8_t *b = q;
        for (int64_t k = 0; k < n / kdtype_block_elems(dt); k++, b += bb) {
            uint16_t h = f32_to_f16(k == 0 ? 0.0f : 0.01f + 0.05f * fabsf(frand()) * (k % 7 == 3 ? 10.0f : 1.0f));
            memcpy(dt == KDT_Q3_K ? b + bb - 2 : dt == KDT_Q2_K ? b + bb - 4 : b, &h, 2); /* Q3_K: d last; Q2_K: d, dmin last */
            if (kq_has_min(dt) || dt == KDT_Q2_K) {
                uint16_t m = f32_to_f16(k == 1 ? 0.0f : 0.3f * frand());
                memcpy(dt == KDT_Q2_K ? b + bb - 2 : b + 2, &m, 2);
            }
            const size_t j0 = dt == KDT_Q3_K || dt == KDT_Q2_K ? 0 : hb,
                         j1 = dt == KDT_Q3_K ? bb - 2 : dt == KDT_Q2_K ? bb - 4 : bb;
            for (size_t j = j0; j < j1; j++) b[j] = (uint8_t)(frand() * 128.0f + 128.0f);
        }
    } else {
        int rc = dt == KDT_Q8_0   ? qref_quantize_q8_0(w, q, n)
                 : dt == KDT_Q4_K ? qref_quantize_q4_k(w, q, n)
                 : dt == KDT_Q5_K ? qref_quantize_q5_k(w, q, n)
                                  : qref_quantize_q6_k(w, q, n);
        ASSERT_EQ(rc, 0);
    }
    ASSERT_EQ(qref_dequantize(qt, q, *wd, n), 0);
    free(w);
    return q;
}

static float *make_x(int n, int cols) {
    float *x = malloc((size_t)n * cols * sizeof(float));
    ASSERT(x);
    for (int64_t i = 0; i < (int64_t)n * cols; i++) x[i] = frand() * (i % 131 == 7 ? 20.0f : 1.0f);
    if (cols >= 64) memset(x + 32, 0, 32 * sizeof(float)); /* an all-zero activation block */
    return x;
}

/* The bound of the header for output (i, r); *ref: Σ wd·x in double. */
static double bound_of(kdtype dt, const float *wd, const void *wq, int r, const float *x, int cols, double *ref) {
    int64_t be = kq_act_block(dt);
    double s = 0, qerr = 0, rerr = 0;
    for (int64_t b0 = 0; b0 < cols; b0 += be) {
        double amax = 0, sw = 0;
        for (int64_t j = b0; j < b0 + be; j++) amax = fmax(amax, fabs(x[j]));
        double d = amax / 127.0;
        for (int64_t j = b0; j < b0 + be; j++) {
            double wj = wd[(int64_t)r * cols + j], mj = 0;
            if (kq_has_min(dt)) { /* the block's min: its own products and roundings */
                const uint8_t *blk =
                    (const uint8_t *)wq + kdtype_row_bytes(dt, cols) * r + kdtype_block_bytes(dt) * (j / 32);
                uint16_t h;
                memcpy(&h, blk + 2, 2);
                mj = fabs((double)f16_to_f32(h));
            } else if (dt == KDT_Q4_K || dt == KDT_Q5_K) {
                const uint8_t *blk =
                    (const uint8_t *)wq + kdtype_row_bytes(dt, cols) * r + kdtype_block_bytes(dt) * (j / 256);
                uint16_t h;
                memcpy(&h, blk + 2, 2);
                int sc, m;
                kq_q4k_scale_min(blk + 4, (int)(j % 256) / 32, &sc, &m);
                float dmin = f16_to_f32(h);
                mj = fabs((double)dmin * m);
            } else if (dt == KDT_Q2_K) { /* the group's dmin·m */
                const uint8_t *blk =
                    (const uint8_t *)wq + kdtype_row_bytes(dt, cols) * r + kdtype_block_bytes(dt) * (j / 256);
                uint16_t h;
                memcpy(&h, blk + 82, 2);
                mj = fabs((double)f16_to_f32(h) * (blk[(j % 256) / 16] >> 4));
            }
            s += wj * x[j];
            sw += fabs(wj);
            rerr += (fabs(wj) + mj) * (fabs(x[j]) + d);
        }
        qerr += d / 2 * sw;
    }
    *ref = s;
    return qerr + (cols + 16) * U_F32 * rerr + 1e-30;
}

static void run_path(kbackend *kb, kq_path p, const float *x, int n, const kmat *w, float *y, float beta) {
    kcpu__q_path = p;
    ASSERT_EQ(kb->ops->matmul(kb, x, n, w, y, beta), 0);
    kcpu__q_path = KQ_AUTO;
}

static double worst_all[12];
static void check_case(kbackend *kb, kdtype dt, int n, int rows, int cols) {
    float *wd;
    void *wq = make_w(dt, rows, cols, &wd);
    float *x = make_x(n, cols);
    kmat w = {.data = wq, .dtype = dt, .rows = rows, .cols = cols};
    int64_t ny = (int64_t)n * rows;
    float *y = test_guarded_alloc(ny), *y2 = malloc((size_t)ny * 4), *y1 = malloc((size_t)rows * 4);
    ASSERT(y2 && y1);
    for (int64_t i = 0; i < ny; i++) y[i] = NAN; /* beta 0 overwrites */
    run_path(kb, KQ_AUTO, x, n, &w, y, 0.0f);
    double worst = 0;
    for (int i = 0; i < n; i++)
        for (int r = 0; r < rows; r++) {
            double ref, tol = bound_of(dt, wd, wq, r, x + (int64_t)i * cols, cols, &ref);
            double got = y[(int64_t)i * rows + r];
            if (!(fabs(got - ref) <= tol))
                FAIL("%s n=%d rows=%d cols=%d y[%d,%d]=%.9g ref %.9g tol %.3g", kdtype_name(dt), n, rows, cols, i,
                     r, got, ref, tol);
            if (fabs(got - ref) / tol > worst) worst = fabs(got - ref) / tol;
        }
    /* every available path, bit-identical */
    static const kq_path paths[] = {KQ_AMX, KQ_VNNI, KQ_AVX2, KQ_SCALAR};
    for (int p = 0; p < 4; p++) {
        if (!kq_path_available(paths[p])) continue;
        run_path(kb, paths[p], x, n, &w, y2, 0.0f);
        if (memcmp(y, y2, (size_t)ny * 4))
            FAIL("%s n=%d rows=%d cols=%d: path %d differs from auto", kdtype_name(dt), n, rows, cols, (int)paths[p]);
        /* each row alone (n = 1) gives the same bits: batch invariance, per path */
        for (int i = 0; i < n; i += (n > 4 ? 5 : 1)) {
            run_path(kb, paths[p], x + (int64_t)i * cols, 1, &w, y1, 0.0f);
            if (memcmp(y1, y + (int64_t)i * rows, (size_t)rows * 4))
                FAIL("%s n=%d rows=%d cols=%d: row %d alone differs (path %d)", kdtype_name(dt), n, rows, cols, i,
                     (int)paths[p]);
        }
    }
    if (dt == KDT_Q4_K || dt == KDT_Q6_K) { /* the same weights reordered for the AVX2 path (SB8 / SB16):
                                             * every path, same bits */
        kdtype rt = dt == KDT_Q4_K ? KDT_Q4_K_SB8 : KDT_Q6_K_SB16;
        void *ws = malloc(kdtype_row_bytes(dt, cols) * (size_t)rows);
        ASSERT(ws);
        ASSERT_EQ(qref_reorder(kdtype_ggml_type(rt), kdtype_ggml_type(dt), wq, ws, (int64_t)rows * cols), 0);
        kmat w8 = {.data = ws, .dtype = rt, .rows = rows, .cols = cols};
        for (int p = 0; p < 4; p++) {
            if (!kq_path_available(paths[p])) continue;
            run_path(kb, paths[p], x, n, &w8, y2, 0.0f);
            if (memcmp(y, y2, (size_t)ny * 4))
                FAIL("%s n=%d rows=%d cols=%d: path %d differs from %s", kdtype_name(rt), n, rows, cols, (int)paths[p],
                     kdtype_name(dt));
            run_path(kb, paths[p], x + (int64_t)(n - 1) * cols, 1, &w8, y1, 0.0f);
            if (memcmp(y1, y + (int64_t)(n - 1) * rows, (size_t)rows * 4))
                FAIL("%s n=%d rows=%d cols=%d: last row alone differs (path %d)", kdtype_name(rt), n, rows, cols,
                     (int)paths[p]);
        }
        free(ws);
    }
    /* beta 1 adds */
    for (int64_t i = 0; i < ny; i++) y2[i] = 1.5f;
    run_path(kb, KQ_AUTO, x, n, &w, y2, 1.0f);
    for (int64_t i = 0; i < ny; i++)
        if (y2[i] != 1.5f + y[i]) FAIL("%s beta=1 y[%lld]", kdtype_name(dt), (long long)i);
    test_guarded_check_free(y, ny);
    free(y2);
    free(y1);
    free(x);
    free(wq);
    free(wd);
    int wi = dt == KDT_Q8_0 ? 0 : dt == KDT_Q4_K ? 1 : dt == KDT_Q4_0 ? 2 : dt == KDT_Q5_K ? 3 : dt == KDT_Q5_0 ? 5 : dt == KDT_Q4_1 ? 6 : dt == KDT_Q5_1 ? 7 : dt == KDT_IQ4_NL ? 8 : dt == KDT_IQ4_XS ? 9 : dt == KDT_Q3_K ? 10 : dt == KDT_Q2_K ? 11 : 4;
    if (worst > worst_all[wi]) worst_all[wi] = worst;
}

TEST(qmatmul_vs_dequant_reference) {
    static const int NS[] = {1, 2, 5, 20, 32};
    static const int THREADS[] = {1, 3};
    for (int t = 0; t < 2; t++) {
        kbackend *kb = kbackend_cpu_create(THREADS[t]);
        ASSERT(kb);
        for (int ni = 0; ni < 5; ni++) {
            static const int Q8_COLS[] = {32, 96, 256, 544};
            static const int ROWS[] = {1, 7, 37};
            for (int c = 0; c < 4; c++)
                for (int r = 0; r < 3; r++) check_case(kb, KDT_Q8_0, NS[ni], ROWS[r], Q8_COLS[c]);
            for (int c = 0; c < 4; c++)
                for (int r = 0; r < 3; r++) check_case(kb, KDT_Q4_0, NS[ni], ROWS[r], Q8_COLS[c]);
            static const kdtype B32[] = {KDT_Q5_0, KDT_Q4_1, KDT_Q5_1, KDT_IQ4_NL};
            for (int t = 0; t < 4; t++)
                for (int c = 0; c < 4; c++)
                    for (int r = 0; r < 3; r++) check_case(kb, B32[t], NS[ni], ROWS[r], Q8_COLS[c]);
            static const int Q4_COLS[] = {256, 768};
            static const kdtype KT[] = {KDT_Q4_K, KDT_Q5_K, KDT_Q6_K, KDT_IQ4_XS, KDT_Q3_K, KDT_Q2_K}; /* blocks of 256 */
            for (int k = 0; k < 6; k++)
                for (int c = 0; c < 2; c++)
                    for (int r = 0; r < 3; r++) check_case(kb, KT[k], NS[ni], ROWS[r], Q4_COLS[c]);
        }
        kbackend_destroy(kb);
    }
    fprintf(stderr, "  max |err| / bound: q8_0 %.3f, q4_k %.3f, q4_0 %.3f, q5_k %.3f, q6_k %.3f, q5_0 %.3f, q4_1 %.3f, "
            "q5_1 %.3f, iq4_nl %.3f, iq4_xs %.3f, q3_k %.3f, q2_k %.3f\n", worst_all[0], worst_all[1], worst_all[2],
            worst_all[3], worst_all[4], worst_all[5], worst_all[6], worst_all[7], worst_all[8], worst_all[9], worst_all[10],
            worst_all[11]);
}

/* Q4_K's SB8 and Q6_K's SB16 reorderings (kernels.h): bijections on the codes (there and back
 * gives the same bytes; dequantizing either gives the same floats), refused for other types and
 * partial blocks; the AVX2 path prefers them for Q4_K and Q6_K only; and (SB8) at the 16-bit lanes' bound — every code
 * 15, every scale 63, x codes all +127 or all −127, so each lane sums 16 products of 1905 =
 * 30480 — the tiles give the natural order's bits (a wrapped lane would be off by 65536·sc). */
TEST(qmatmul_q4k_sb8_reorder) {
    enum { ROWS = 9, COLS = 512 };
    float *wd;
    uint8_t *wq = make_w(KDT_Q4_K, ROWS, COLS, &wd);
    size_t bytes = kdtype_row_bytes(KDT_Q4_K, COLS) * ROWS;
    uint8_t *ws = malloc(bytes), *back = malloc(bytes);
    float *d1 = malloc((size_t)ROWS * COLS * 4), *d2 = malloc((size_t)ROWS * COLS * 4);
    ASSERT(ws && back && d1 && d2);
    ASSERT_EQ(qref_reorder(QREF_Q4_K_SB8, QREF_Q4_K, wq, ws, (int64_t)ROWS * COLS), 0);
    ASSERT(memcmp(ws, wq, bytes) != 0);
    ASSERT_EQ(qref_reorder(QREF_Q4_K, QREF_Q4_K_SB8, ws, back, (int64_t)ROWS * COLS), 0);
    ASSERT(memcmp(back, wq, bytes) == 0);
    ASSERT_EQ(qref_dequantize(QREF_Q4_K, wq, d1, (int64_t)ROWS * COLS), 0);
    ASSERT_EQ(qref_dequantize(QREF_Q4_K_SB8, ws, d2, (int64_t)ROWS * COLS), 0);
    ASSERT(memcmp(d1, d2, (size_t)ROWS * COLS * 4) == 0);
    /* element 87 = 32j + 16h + 4k + e (j 2, h 1, k 1, e 3): SB8 byte 32k + 4j + e = 43, high nibble;
     * Q4_K byte 32·(87/64) + 87%32 = 55, low nibble (87%64 < 32) */
    ASSERT_EQ(ws[16 + 43] >> 4, wq[16 + 55] & 15);
    ASSERT_EQ(qref_reorder(QREF_Q4_K_SB8, QREF_Q6_K, wq, ws, 256), PEFTD_EUNSUPPORTED);
    ASSERT_EQ(qref_reorder(QREF_Q6_K_SB16, QREF_Q4_K, wq, ws, 256), PEFTD_EUNSUPPORTED);
    ASSERT_EQ(qref_reorder(QREF_Q6_K_SB16, QREF_Q6_K, wq, ws, 100), PEFTD_EINVAL);
    { /* Q6_K <-> SB16: there and back, same floats; element 16g + 2t + o at register t, byte 2g + o */
        float *w6d;
        uint8_t *w6 = make_w(KDT_Q6_K, ROWS, COLS, &w6d), *s6 = malloc(210 * ROWS * 2), *b6 = malloc(210 * ROWS * 2);
        ASSERT(s6 && b6);
        ASSERT_EQ(qref_reorder(QREF_Q6_K_SB16, QREF_Q6_K, w6, s6, (int64_t)ROWS * COLS), 0);
        ASSERT_EQ(qref_reorder(QREF_Q6_K, QREF_Q6_K_SB16, s6, b6, (int64_t)ROWS * COLS), 0);
        ASSERT(memcmp(b6, w6, 210 * ROWS * 2) == 0 && memcmp(s6, w6, 192) != 0);
        ASSERT(memcmp(s6 + 192, w6 + 192, 18) == 0); /* scales and d stay */
        ASSERT_EQ(qref_dequantize(QREF_Q6_K_SB16, s6, d2, (int64_t)ROWS * COLS), 0);
        ASSERT(memcmp(w6d, d2, (size_t)ROWS * COLS * 4) == 0);
        /* element 165 = 16·10 + 2·2 + 1 (g 10, t 2, o 1): ql byte 32·1 + 21, low nibble; qh byte 128 + 21,
         * bits 4-5. In ggml's order element 165 = 128 + 32·1 + 5: ql byte 64 + 32 + 5 nibble 0, qh 128 + 32 + 5 bits 2-3 */
        ASSERT_EQ(s6[53] & 15, w6[101] & 15);
        ASSERT_EQ(s6[128 + 21] >> 4 & 3, w6[165] >> 2 & 3);
        free(w6);
        free(w6d);
        free(s6);
        free(b6);
    }
    ASSERT_EQ(qref_reorder(QREF_Q4_K_SB8, QREF_Q4_K, wq, ws, 255), PEFTD_EINVAL);
    kq_path was = kcpu__q_path;
    kcpu__q_path = KQ_AVX2;
    ASSERT_EQ(kq_preferred_dtype(KDT_Q4_K), kq_path_available(KQ_AVX2) ? KDT_Q4_K_SB8 : KDT_Q4_K);
    ASSERT_EQ(kq_preferred_dtype(KDT_Q6_K), kq_path_available(KQ_AVX2) ? KDT_Q6_K_SB16 : KDT_Q6_K);
    ASSERT_EQ(kq_preferred_dtype(KDT_Q5_K), KDT_Q5_K);
    ASSERT_EQ(kq_preferred_dtype(KDT_Q8_0), KDT_Q8_0);
    kcpu__q_path = KQ_SCALAR;
    ASSERT_EQ(kq_preferred_dtype(KDT_Q4_K), KDT_Q4_K);
    kcpu__q_path = was;

    /* the bound: all codes 15, all scales and mins 63 */
    for (int r = 0; r < ROWS; r++)
        for (int b = 0; b < COLS / 256; b++) {
            uint8_t *blk = wq + kdtype_row_bytes(KDT_Q4_K, COLS) * r + 144 * b;
            uint16_t h = f32_to_f16(0.001f * (float)(r + 1)), hm = f32_to_f16(0.0005f);
            memcpy(blk, &h, 2);
            memcpy(blk + 2, &hm, 2);
            memset(blk + 4, 0xff, 12);
            memset(blk + 16, 0xff, 128);
        }
    ASSERT_EQ(qref_reorder(QREF_Q4_K_SB8, QREF_Q4_K, wq, ws, (int64_t)ROWS * COLS), 0);
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    enum { N = 6 };
    float *x = malloc((size_t)N * COLS * 4), *ya = malloc((size_t)N * ROWS * 4), *yb = malloc((size_t)N * ROWS * 4);
    ASSERT(x && ya && yb);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < COLS; j++) x[i * COLS + j] = i % 2 ? -3.0f : 2.5f; /* codes ±127 */
    kmat w4 = {.data = wq, .dtype = KDT_Q4_K, .rows = ROWS, .cols = COLS};
    kmat w8 = {.data = ws, .dtype = KDT_Q4_K_SB8, .rows = ROWS, .cols = COLS};
    run_path(kb, KQ_SCALAR, x, N, &w4, ya, 0.0f);
    static const kq_path paths[] = {KQ_AVX2, KQ_SCALAR};
    for (int p = 0; p < 2; p++) {
        if (!kq_path_available(paths[p])) continue;
        run_path(kb, paths[p], x, N, &w8, yb, 0.0f);
        if (memcmp(ya, yb, (size_t)N * ROWS * 4)) FAIL("q4_k_sb8 at the lane bound: path %d differs", (int)paths[p]);
        run_path(kb, paths[p], x, 1, &w8, yb, 0.0f);
        if (memcmp(ya, yb, (size_t)ROWS * 4)) FAIL("q4_k_sb8 at the lane bound, one row: path %d differs", (int)paths[p]);
    }
    /* and the value itself (row 0): per super-block I = Σ_j 63·Σ 15·127 = 63·256·15·127 and
     * M = Σ_j 63·X_j = 63·256·127, d = 0.001, dmin = 0.0005 (as f16), dx = 2.5/127 */
    double want = 0;
    for (int b = 0; b < COLS / 256; b++) {
        double I = 63.0 * 256 * 15 * 127, M = 63.0 * 256 * 127;
        want += I * (double)f16_to_f32(f32_to_f16(0.001f)) * (2.5 / 127) - M * (double)f16_to_f32(f32_to_f16(0.0005f)) * (2.5 / 127);
    }
    if (!(fabs(ya[0] - want) <= 1e-4 * fabs(want))) FAIL("lane bound value %.9g, want %.9g", ya[0], want);
    { /* SB16 at its bound: every code 63 (two vpmaddubsw pairs of 2·63·127 = 32004 per 16-bit lane),
       * scales ±127/−128, x codes ±127 */
        size_t rb6 = kdtype_row_bytes(KDT_Q6_K, COLS);
        uint8_t *q6 = malloc(rb6 * ROWS), *s6 = malloc(rb6 * ROWS);
        ASSERT(q6 && s6);
        for (int r = 0; r < ROWS; r++)
            for (int b = 0; b < COLS / 256; b++) {
                uint8_t *blk = q6 + rb6 * r + 210 * b;
                memset(blk, 0xff, 192);
                for (int g = 0; g < 16; g++) blk[192 + g] = (uint8_t)(int8_t)(g % 3 == 0 ? -128 : g % 3 == 1 ? 127 : -77);
                uint16_t h = f32_to_f16(0.002f * (float)(r + 1));
                memcpy(blk + 208, &h, 2);
            }
        ASSERT_EQ(qref_reorder(QREF_Q6_K_SB16, QREF_Q6_K, q6, s6, (int64_t)ROWS * COLS), 0);
        kmat w6 = {.data = q6, .dtype = KDT_Q6_K, .rows = ROWS, .cols = COLS};
        kmat w16 = {.data = s6, .dtype = KDT_Q6_K_SB16, .rows = ROWS, .cols = COLS};
        run_path(kb, KQ_SCALAR, x, N, &w6, ya, 0.0f);
        for (int p = 0; p < 2; p++) {
            if (!kq_path_available(paths[p])) continue;
            run_path(kb, paths[p], x, N, &w16, yb, 0.0f);
            if (memcmp(ya, yb, (size_t)N * ROWS * 4)) FAIL("q6_k_sb16 at the lane bound: path %d differs", (int)paths[p]);
            run_path(kb, paths[p], x + COLS, 1, &w16, yb, 0.0f);
            if (memcmp(ya + ROWS, yb, (size_t)ROWS * 4)) FAIL("q6_k_sb16 at the lane bound, one row: path %d differs", (int)paths[p]);
        }
        free(q6);
        free(s6);
    }
    kbackend_destroy(kb);
    free(x);
    free(ya);
    free(yb);
    free(ws);
    free(back);
    free(d1);
    free(d2);
    free(wq);
    free(wd);
}

/* Every path available here is exercised (the machine's CPU decides which). */
/* The activation quantizer on rounding ties (x/d = k + 0.5 exactly: d = max|x|/127 is a power
 * of two) and on NaN (skipped by the max, coded 0): the AVX2 block quantizer gives the scalar
 * path's bits, and a row with a NaN gives the bits of the same row with a 0 there. */
TEST(qmatmul_quantizer_ties_and_nan) {
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    static const kdtype DT[] = {KDT_Q8_0, KDT_Q4_K, KDT_Q6_K};
    const int rows = 8, cols = 512;
    for (int t = 0; t < 3; t++) {
        float *wd;
        void *wq = make_w(DT[t], rows, cols, &wd);
        kmat w = {.data = wq, .dtype = DT[t], .rows = rows, .cols = cols};
        float x[3 * 512], ya[3 * 8], ys[3 * 8];
        for (int j = 0; j < cols; j++) {
            float d = (j / 32) % 2 ? 0.25f : 4.0f;                /* 2^k: x/d exact */
            x[j] = (j % 32 == 0 ? 127.0f : (float)(j % 23 - 11) + 0.5f) * d;
        }
        memcpy(x + cols, x, sizeof(float) * cols);
        memcpy(x + 2 * cols, x, sizeof(float) * cols);
        x[cols + 37] = NAN;   /* row 1: a NaN ... */
        x[2 * cols + 37] = 0; /* row 2: ... and a 0 in its place */
        run_path(kb, KQ_SCALAR, x, 3, &w, ys, 0.0f);
        if (kq_path_available(KQ_AVX2)) {
            run_path(kb, KQ_AVX2, x, 3, &w, ya, 0.0f);
            if (memcmp(ya, ys, sizeof ys)) FAIL("%s: AVX2 quantizer differs from scalar on ties/NaN", kdtype_name(DT[t]));
        } else {
            fprintf(stderr, "  %s: no AVX2 here, the scalar quantizer alone\n", kdtype_name(DT[t]));
        }
        for (int r = 0; r < rows; r++) {
            ASSERT(isfinite(ys[rows + r]));
            if (memcmp(&ys[rows + r], &ys[2 * rows + r], 4)) FAIL("%s: a NaN activation is not coded 0", kdtype_name(DT[t]));
        }
        free(wq);
        free(wd);
    }
    kbackend_destroy(kb);
}

/* matmul_group: weights of every activation layout (Q8_0, Q4_K, Q6_K) and an f32 one over
 * one x give each weight's matmul bits; bad groups are refused. */
TEST(matmul_group_equals_each_matmul) {
    static const int NS[] = {1, 5, 32};
    static const int THREADS[] = {1, 3};
    const int cols = 512, rows[4] = {37, 64, 16, 8};
    static const kdtype DT[4] = {KDT_Q4_K, KDT_Q6_K, KDT_Q8_0, KDT_F32};
    for (int t = 0; t < 2; t++) {
        kbackend *kb = kbackend_cpu_create(THREADS[t]);
        ASSERT(kb);
        kmat w[4];
        void *wq[4];
        float *wd[4];
        for (int g = 0; g < 4; g++) {
            if (DT[g] == KDT_F32) {
                wd[g] = NULL;
                wq[g] = make_x(rows[g], cols);
            } else {
                wq[g] = make_w(DT[g], rows[g], cols, &wd[g]);
            }
            w[g] = (kmat){.data = wq[g], .dtype = DT[g], .rows = rows[g], .cols = cols};
        }
        for (int k = 0; k < 3; k++) {
            int n = NS[k];
            float *x = make_x(n, cols), *ya[4], *yb[4];
            const kmat *wp[4] = {&w[0], &w[1], &w[2], &w[3]};
            for (int g = 0; g < 4; g++) {
                ya[g] = malloc(sizeof(float) * n * rows[g]);
                yb[g] = malloc(sizeof(float) * n * rows[g]);
                ASSERT(ya[g] && yb[g]);
                ASSERT_EQ(kb->ops->matmul(kb, x, n, &w[g], ya[g], 0.0f), 0);
            }
            ASSERT_EQ(kops_matmul_group(kb, x, n, 4, wp, yb, 0.0f), 0);
            for (int g = 0; g < 4; g++)
                if (memcmp(ya[g], yb[g], sizeof(float) * n * rows[g]))
                    FAIL("group of 4, weight %d (%s), n=%d threads=%d: differs from its matmul", g,
                         kdtype_name(DT[g]), n, THREADS[t]);
            /* beta 1 adds, in the group as alone */
            ASSERT_EQ(kops_matmul_group(kb, x, n, 2, wp + 1, yb + 1, 1.0f), 0);
            for (int i = 0; i < n * rows[1]; i++)
                if (yb[1][i] != ya[1][i] + ya[1][i]) FAIL("group beta=1 [%d]", i);
            for (int g = 0; g < 4; g++) {
                free(ya[g]);
                free(yb[g]);
            }
            free(x);
        }
        /* refused: no weights, too many, different widths */
        float xs[512] = {0}, y1[64];
        float *yp[5] = {y1, y1, y1, y1, y1};
        const kmat *w5[5] = {&w[0], &w[0], &w[0], &w[0], &w[0]};
        ASSERT_EQ(kops_matmul_group(kb, xs, 1, 0, w5, yp, 0.0f), PEFTD_EINVAL);
        ASSERT_EQ(kops_matmul_group(kb, xs, 1, KMATMUL_GROUP_MAX + 1, w5, yp, 0.0f), PEFTD_EINVAL);
        kmat narrow = w[3];
        narrow.cols = 256;
        const kmat *wn[2] = {&w[3], &narrow};
        ASSERT_EQ(kops_matmul_group(kb, xs, 1, 2, wn, yp, 0.0f), PEFTD_EINVAL);
        for (int g = 0; g < 4; g++) {
            free(wq[g]);
            free(wd[g]);
        }
        kbackend_destroy(kb);
    }
}

TEST(qmatmul_paths_present) {
    ASSERT(kq_path_available(KQ_SCALAR));
    fprintf(stderr, "  paths: amx %d vnni %d avx2 %d scalar 1 (auto = %d)\n", kq_path_available(KQ_AMX),
            kq_path_available(KQ_VNNI), kq_path_available(KQ_AVX2), (int)kq_best_path());
}

/* The paths that read the x16 layout (qx16.c), on their own shapes: AMX (every quantized type)
 * and the AVX2 and VNNI Q8_0 / Q4_0 batch tiles. Whole and partial groups of 16 (and halves of 8) x rows, weight
 * rows past the last group of 16 (AMX) or strip of 4 (AVX2), 1 and 2 threads, beta 0 and 1 —
 * bit-identical to the scalar path, and the tiles did compute (their counters moved); and one
 * x row (decode). */
static void x16_tiles_equal_scalar(kq_path path) {
    /* the AVX2 path also multiplies Q4_K / Q6_K reordered (SB8 / SB16; the other paths forward them to it) */
    static const kdtype DT[] = {KDT_Q4_K, KDT_Q5_K, KDT_Q6_K, KDT_Q8_0, KDT_Q4_0, KDT_Q5_0, KDT_Q4_1, KDT_Q5_1,
                                KDT_IQ4_NL, KDT_IQ4_XS, KDT_Q3_K, KDT_Q2_K, KDT_Q4_K_SB8, KDT_Q6_K_SB16};
    /* n = 1: the decode tiles (AMX forwards them to AVX-512) at the same integer bounds */
    static const int NS[] = {16, 17, 40, 1, 9};
    const int rows = 53;
    for (int th = 1; th <= 2; th++) {
        kbackend *kb = kbackend_cpu_create(th);
        ASSERT(kb);
        for (int t = 0; t < (path == KQ_AVX2 ? 14 : 12); t++)
            for (int k = 0; k < 5; k++) {
                /* Q5_0, Q4_1, Q5_1, IQ4_NL, IQ4_XS, Q3_K, Q2_K have no AMX tiles: asked for AMX, their VNNI ones
                 * run (Q3_K, Q2_K: the VNNI path's K-quant tiles, Q6_K's on 3- and 2-bit codes) */
                const bool amx = path == KQ_AMX && DT[t] != KDT_Q5_0 && DT[t] != KDT_IQ4_NL && DT[t] != KDT_IQ4_XS &&
                                 DT[t] != KDT_Q3_K && DT[t] != KDT_Q2_K && !kq_has_min(DT[t]);
                const kq_path counted = path == KQ_AMX && !amx ? KQ_VNNI : path;
                const int n = NS[k];
                const kdtype bt = DT[t] == KDT_Q4_K_SB8 ? KDT_Q4_K : DT[t] == KDT_Q6_K_SB16 ? KDT_Q6_K : DT[t];
                /* Q8_0/Q4_0/Q5_0: 33 blocks (a last chunk of 4 with one block, a last x piece of 32 codes) */
                const int cols = kdtype_block_elems(DT[t]) == 256 ? 1024 : 1056;
                float *wd;
                void *wq = make_w(bt, rows, cols, &wd);
                float *x = make_x(n, cols);
                if (k == 1 || k == 3) { /* the integer bounds: every code, scale and min at its maximum, x at
                               * +127 (126 once per chunk) — the chunk sums, and the AMX path's f32 partial
                               * sums of them, at their largest (kq_rows_amx's exactness) */
                    const size_t bb = kdtype_block_bytes(bt);
                    for (size_t blk = 0; blk < (size_t)rows * (size_t)(cols / kdtype_block_elems(bt)); blk++) {
                        uint8_t *q = (uint8_t *)wq + blk * bb;
                        if (bt == KDT_Q6_K) { /* codes 63 (q − 32 = 31), scales −127 (odd products); d kept */
                            memset(q, 0xFF, 192);
                            memset(q + 192, 0x81, 16);
                        } else if (bt == KDT_Q8_0)
                            memset(q + 2, 0x80, 32); /* codes −128 (a GGUF may hold them; our quantizer never does) */
                        else if (bt == KDT_Q4_0 || bt == KDT_IQ4_NL)
                            memset(q + 2, 0x00, 16); /* codes −8; IQ4_NL's level −127 */
                        else if (bt == KDT_IQ4_XS) { /* scales 63 (ls − 32 = 31), levels −127; d kept */
                            memset(q + 2, 0xFF, 6);
                            memset(q + 8, 0x00, 128);
                        } else if (bt == KDT_Q3_K) { /* codes 7 (q − 4 = 3: the 16-bit sums' largest, 4·4·7·127),
                                                    * scales 0 (sc − 32 = −32: the offset's factor 128); d kept */
                            memset(q, 0xFF, 96);
                            memset(q + 96, 0x00, 12);
                        } else if (bt == KDT_Q2_K) { /* codes 3, scales and mins 15; d and dmin kept */
                            memset(q, 0xFF, 80);
                        }
                        else if (bt == KDT_Q5_0)
                            memset(q + 2, 0x00, 20); /* codes −16 */
                        else if (kq_has_min(bt))
                            memset(q + 4, 0xFF, bb - 4); /* codes 15 / 31; d and m kept */
                        else
                            memset(q + 4, 0xFF, bb - 4); /* scales, mins 63; codes 15 / 31 */
                    }
                    for (int i = 0; i < n * cols; i++) x[i] = i % 32 == 5 ? 126.0f / 127.0f : 1.0f; /* odd sums */
                }
                if (bt != DT[t]) { /* reordered in place: same bytes per block */
                    const size_t nbytes = kdtype_row_bytes(bt, cols) * (size_t)rows;
                    void *ws = malloc(nbytes);
                    ASSERT(ws);
                    ASSERT_EQ(qref_reorder(kdtype_ggml_type(DT[t]), kdtype_ggml_type(bt), wq, ws, (int64_t)rows * cols), 0);
                    memcpy(wq, ws, nbytes);
                    free(ws);
                }
                kmat w = {.data = wq, .dtype = DT[t], .rows = rows, .cols = cols};
                float *ya = malloc(sizeof(float) * n * rows), *ys = malloc(sizeof(float) * n * rows);
                ASSERT(ya && ys);
                unsigned long *counter = amx ? &kq_amx_groups : counted == KQ_VNNI ? &kq_vnni_x16_strips : &kq_avx2_x16_strips;
                unsigned long g0 = __atomic_load_n(counter, __ATOMIC_RELAXED);
                unsigned long v0 = __atomic_load_n(&kq_vnni_x16_strips, __ATOMIC_RELAXED);
                for (int beta = 0; beta < 2; beta++) {
                    for (int i = 0; i < n * rows; i++) ya[i] = ys[i] = beta ? 0.25f * (float)(i % 7) : NAN;
                    run_path(kb, path, x, n, &w, ya, (float)beta);
                    run_path(kb, KQ_SCALAR, x, n, &w, ys, (float)beta);
                    if (memcmp(ya, ys, sizeof(float) * n * rows))
                        FAIL("%s n=%d threads=%d beta=%d: path %d differs from scalar", kdtype_name(DT[t]), n, th,
                             beta, (int)path);
                }
                /* two calls (beta 0, 1): AMX 3 groups of 16 rows each, AVX2 / VNNI 14 strips of <= 4 */
                const bool tiled = amx ? n >= KQ_AMX_MIN_N : n >= KQ_X16_MIN_N;
                const unsigned long want = amx ? 2 * 3 : 2 * 14, got = __atomic_load_n(counter, __ATOMIC_RELAXED) - g0;
                if (tiled && got < want) FAIL("%s n=%d: the tiles did not run (%lu)", kdtype_name(DT[t]), n, got);
                if (!amx && !tiled && got) FAIL("%s n=%d: the x16 tile ran (%lu)", kdtype_name(DT[t]), n, got);
                /* AMX hands batches of 8-15 rows to VNNI's x16 tiles */
                if (amx && !tiled && n >= KQ_X16_MIN_N &&
                    __atomic_load_n(&kq_vnni_x16_strips, __ATOMIC_RELAXED) - v0 < 2 * 14)
                    FAIL("%s n=%d: AMX did not hand the batch to the VNNI x16 tile", kdtype_name(DT[t]), n);
                free(ya);
                free(ys);
                free(x);
                free(wq);
                free(wd);
            }
        kbackend_destroy(kb);
    }
}

TEST(qmatmul_amx_tiles_equal_scalar) {
    if (!kq_path_available(KQ_AMX)) SKIP("no AMX-INT8 on this CPU (or the kernel refused the tile state)");
    x16_tiles_equal_scalar(KQ_AMX);
}

TEST(qmatmul_avx2_x16_tiles_equal_scalar) {
    if (!kq_path_available(KQ_AVX2)) SKIP("no AVX2 on this CPU");
    x16_tiles_equal_scalar(KQ_AVX2);
}

TEST(qmatmul_vnni_x16_tiles_equal_scalar) {
    if (!kq_path_available(KQ_VNNI)) SKIP("no AVX-512 VNNI on this CPU");
    x16_tiles_equal_scalar(KQ_VNNI);
}

/* Rows wider than the x16 strips' old stack buffers (cols 18944 = Qwen2.5-7B's down_proj, past
 * 16384): the tiles still run (their strips in the thread's scratch) and give the scalar bits. */
TEST(qmatmul_x16_tiles_wide_rows) {
    static const kdtype DT[] = {KDT_Q4_K, KDT_Q6_K, KDT_Q8_0, KDT_Q4_0, KDT_Q5_0, KDT_Q4_1, KDT_Q5_1, KDT_IQ4_NL, KDT_IQ4_XS,
                                KDT_Q3_K, KDT_Q2_K};
    static const kq_path P[] = {KQ_AVX2, KQ_VNNI};
    const int rows = 6, cols = 18944, n = 9;
    int ran = 0;
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    for (int p = 0; p < 2; p++) {
        if (!kq_path_available(P[p])) continue;
        unsigned long *counter = P[p] == KQ_VNNI ? &kq_vnni_x16_strips : &kq_avx2_x16_strips;
        for (int t = 0; t < 11; t++) {
            float *wd;
            void *wq = make_w(DT[t], rows, cols, &wd);
            float *x = make_x(n, cols), *ya = malloc(sizeof(float) * n * rows), *ys = malloc(sizeof(float) * n * rows);
            ASSERT(ya && ys);
            kmat w = {.data = wq, .dtype = DT[t], .rows = rows, .cols = cols};
            unsigned long g0 = __atomic_load_n(counter, __ATOMIC_RELAXED);
            run_path(kb, P[p], x, n, &w, ya, 0.0f);
            if (__atomic_load_n(counter, __ATOMIC_RELAXED) == g0) FAIL("%s cols %d path %d: the x16 tile did not run", kdtype_name(DT[t]), cols, (int)P[p]);
            run_path(kb, KQ_SCALAR, x, n, &w, ys, 0.0f);
            if (memcmp(ya, ys, sizeof(float) * n * rows)) FAIL("%s cols %d path %d differs from scalar", kdtype_name(DT[t]), cols, (int)P[p]);
            ran++;
            free(ya);
            free(ys);
            free(x);
            free(wq);
            free(wd);
        }
    }
    kbackend_destroy(kb);
    if (!ran) SKIP("neither AVX2 nor AVX-512 VNNI on this CPU");
}

TEST(qget_rows_dequantizes) {
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    static const kdtype DT[] = {KDT_Q8_0, KDT_Q4_K, KDT_Q4_0, KDT_Q5_K, KDT_Q6_K, KDT_Q5_0, KDT_Q4_1, KDT_Q5_1, KDT_IQ4_NL,
                                KDT_IQ4_XS, KDT_Q3_K, KDT_Q2_K};
    for (int k = 0; k < 12; k++) {
        kdtype dt = DT[k];
        int rows = 9, cols = kdtype_block_elems(dt) == 256 ? 512 : 96;
        float *wd;
        void *wq = make_w(dt, rows, cols, &wd);
        kmat t = {.data = wq, .dtype = dt, .rows = rows, .cols = cols};
        int32_t ids[3] = {8, 0, 3};
        float *out = test_guarded_alloc(3 * cols);
        ASSERT_EQ(kb->ops->get_rows(kb, &t, ids, 3, out), 0);
        for (int i = 0; i < 3; i++)
            ASSERT(!memcmp(out + i * cols, wd + (int64_t)ids[i] * cols, (size_t)cols * 4));
        ASSERT(kb->ops->supports_op(kb, KOP_GET_ROWS, dt));
        ids[1] = rows;
        ASSERT_EQ(kb->ops->get_rows(kb, &t, ids, 3, out), PEFTD_ERANGE);
        test_guarded_check_free(out, 3 * cols);
        free(wq);
        free(wd);
    }
    kbackend_destroy(kb);
}

TEST(qmatmul_bad_args_and_caps) {
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    uint8_t buf[1024] = {0};
    float x[512] = {0}, y[8];
    kmat w = {.data = buf, .dtype = KDT_Q8_0, .rows = 1, .cols = 48}; /* not a multiple of 32 */
    ASSERT_EQ(kb->ops->matmul(kb, x, 1, &w, y, 0.0f), PEFTD_EINVAL);
    w = (kmat){.data = buf, .dtype = KDT_Q4_K, .rows = 1, .cols = 128}; /* not a multiple of 256 */
    ASSERT_EQ(kb->ops->matmul(kb, x, 1, &w, y, 0.0f), PEFTD_EINVAL);
    w.cols = 256;
    ASSERT_EQ(kb->ops->matmul(kb, x, 1, &w, y, 0.5f), PEFTD_EINVAL);
    ASSERT(kb->ops->supports_op(kb, KOP_MATMUL, KDT_Q8_0));
    ASSERT(kb->ops->supports_op(kb, KOP_MATMUL, KDT_Q4_K));
    ASSERT(kb->ops->supports_op(kb, KOP_GET_ROWS, KDT_Q4_K));
    ASSERT(kb->ops->supports_op(kb, KOP_MATMUL, KDT_Q4_0));
    ASSERT(kb->ops->supports_op(kb, KOP_MATMUL, KDT_Q5_K));
    ASSERT(kb->ops->supports_op(kb, KOP_MATMUL, KDT_Q6_K));
    ASSERT_EQ(kdtype_row_bytes(KDT_Q5_K, 512), (size_t)352);
    ASSERT_EQ(kdtype_row_bytes(KDT_Q6_K, 512), (size_t)420);
    ASSERT_EQ(kdtype_row_bytes(KDT_Q6_K, 200), (size_t)0);
    ASSERT_EQ(kdtype_ggml_type(KDT_Q5_K), 13u);
    ASSERT_EQ(kdtype_ggml_type(KDT_Q6_K), 14u);
    ASSERT_STREQ(kdtype_name(KDT_Q6_K), "q6_k");
    w = (kmat){.data = buf, .dtype = KDT_Q6_K, .rows = 1, .cols = 32}; /* not a multiple of 256 */
    ASSERT_EQ(kb->ops->matmul(kb, x, 1, &w, y, 0.0f), PEFTD_EINVAL);
    ASSERT_EQ(kdtype_row_bytes(KDT_Q4_0, 64), (size_t)36);
    ASSERT(kb->ops->supports_op(kb, KOP_MATMUL, KDT_Q5_0));
    ASSERT(kb->ops->supports_op(kb, KOP_GET_ROWS, KDT_Q5_0));
    ASSERT_EQ(kdtype_row_bytes(KDT_Q5_0, 64), (size_t)44);
    ASSERT_EQ(kdtype_row_bytes(KDT_Q5_0, 48), (size_t)0);
    ASSERT_EQ(kdtype_ggml_type(KDT_Q5_0), 6u);
    ASSERT_STREQ(kdtype_name(KDT_Q5_0), "q5_0");
    ASSERT(kb->ops->supports_op(kb, KOP_MATMUL, KDT_Q4_1) && kb->ops->supports_op(kb, KOP_MATMUL, KDT_Q5_1));
    ASSERT_EQ(kdtype_row_bytes(KDT_Q4_1, 64), (size_t)40);
    ASSERT_EQ(kdtype_row_bytes(KDT_Q5_1, 64), (size_t)48);
    ASSERT_EQ(kdtype_ggml_type(KDT_Q4_1), 3u);
    ASSERT_EQ(kdtype_ggml_type(KDT_Q5_1), 7u);
    ASSERT_STREQ(kdtype_name(KDT_Q5_1), "q5_1");
    static const struct { /* the types GGUF files bring: caps, row sizes, ids, names; a partial block refused */
        kdtype dt;
        int64_t cols;
        size_t row_bytes;
        uint32_t ggml;
        const char *name;
    } F[] = {{KDT_IQ4_NL, 64, 36, 20, "iq4_nl"}, {KDT_IQ4_XS, 512, 272, 23, "iq4_xs"}, {KDT_Q3_K, 512, 220, 11, "q3_k"},
             {KDT_Q2_K, 512, 168, 10, "q2_k"}};
    for (size_t k = 0; k < sizeof F / sizeof F[0]; k++) {
        ASSERT(kb->ops->supports_op(kb, KOP_MATMUL, F[k].dt) && kb->ops->supports_op(kb, KOP_GET_ROWS, F[k].dt));
        ASSERT_EQ(kdtype_row_bytes(F[k].dt, F[k].cols), F[k].row_bytes);
        ASSERT_EQ(kdtype_row_bytes(F[k].dt, kdtype_block_elems(F[k].dt) == 256 ? 288 : 48), (size_t)0); /* partial block */
        ASSERT_EQ(kdtype_ggml_type(F[k].dt), F[k].ggml);
        ASSERT_STREQ(kdtype_name(F[k].dt), F[k].name);
        if (kdtype_block_elems(F[k].dt) == 256) {
            w = (kmat){.data = buf, .dtype = F[k].dt, .rows = 1, .cols = 288}; /* not a multiple of 256 */
            ASSERT_EQ(kb->ops->matmul(kb, x, 1, &w, y, 0.0f), PEFTD_EINVAL);
        }
    }
    ASSERT(!kb->ops->supports_op(kb, KOP_RMSNORM, KDT_Q8_0));
    ASSERT(!kb->ops->supports_op(kb, KOP_SGMV, KDT_Q8_0));
    ASSERT(!kb->ops->supports_op(kb, KOP_ADD, KDT_Q4_K));
    kmat nw = {.data = buf, .dtype = KDT_Q8_0, .rows = 1, .cols = 32};
    ASSERT_EQ(kb->ops->rmsnorm(kb, x, &nw, 1, 32, 1e-5f, y), PEFTD_EINVAL);
    ASSERT_EQ(kdtype_row_bytes(KDT_Q8_0, 64), (size_t)68);
    ASSERT_EQ(kdtype_row_bytes(KDT_Q4_K, 512), (size_t)288);
    ASSERT_EQ(kdtype_row_bytes(KDT_Q4_K, 100), (size_t)0);
    ASSERT_STREQ(kdtype_name(KDT_Q4_K), "q4_k");
    kbackend_destroy(kb);
}

TEST_MAIN(qmatmul_paths_present, qmatmul_q4k_sb8_reorder, matmul_group_equals_each_matmul, qmatmul_quantizer_ties_and_nan, qmatmul_vs_dequant_reference, qmatmul_amx_tiles_equal_scalar, qmatmul_avx2_x16_tiles_equal_scalar, qmatmul_vnni_x16_tiles_equal_scalar, qmatmul_x16_tiles_wide_rows, qget_rows_dequantizes, qmatmul_bad_args_and_caps)
