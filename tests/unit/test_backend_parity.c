/* tests/unit/test_backend_parity.c — every op of the CUDA backend against the CPU
 * reference on the same inputs (ggml test-backend-ops style), then end-to-end greedy
 * parity on the default model with every fixture adapter.
 *
 * Op tests: odd batch sizes T = 1, 7, 133; weights in f32/f16/bf16; SGMV over the Punica
 * spreads (distinct, uniform, zipf, identical, skewed) with empty segments, a rank-0 /
 * NULL segment and mixed ranks 1-128, plus bias + activation (bottleneck adapters).
 * Every output buffer (on both backends) has SENT_BYTES of sentinel bytes on each side,
 * and unwritten outputs start as sentinel bytes, so writes out of bounds or to entries an
 * op must not touch (t beyond rank_i, skipped segments) are caught.
 *
 * Tolerance (op tests): |cuda - cpu| <= TOL_REL * (max|cpu| over the output + |cpu|).
 * Both backends read the same stored weights widened exactly to f32 and accumulate in
 * f32; only the summation order (and the bf16 hi/lo split of x in the large-n bf16
 * matmul: |x - hi - lo| <= 2^-16 |x|) and libm ulps (expf/cosf: <= 2 ulp on CUDA) differ.
 * For a dot product of K <= 2048 terms the f32 rounding error is ~sqrt(K) * 2^-24 of the
 * magnitude of its terms (~3e-6); 1e-4 leaves 30x room, while a wrong index, scale,
 * rank or layout moves results by O(1) of the output's magnitude.
 * End-to-end: greedy tokens must be identical (the references' top-2 logit gaps on the
 * fixtures are far above the ~1e-5 logit differences the ops above allow). On CUDA the engine
 * chooses tokens with the backend's sample op (engine_config.device_sampling's default), so
 * this also checks device sampling against the CPU's host sampler.
 *
 * Without a CUDA device (or in a build without the CUDA backend) every test reports
 * SKIP("no CUDA device"): skipped, never passed.
 */
#include <stdint.h>
#include <unistd.h>

#include "kernels/cpu/quant_ref.h"
#include "kernels/kernels.h"
#include "lib/half.h"
#include "server/engine/engine.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/test.h"
#ifdef PEFTD_CUDA
#include "kernels/kernels_cuda.h"
#endif

#define SENT_BYTES 256
#define SENT_BYTE 0xA5
#define TOL_REL 1e-4

static kbackend *CU, *CP;
static bool SELFTEST; /* CU is a CPU backend (PEFTD_PARITY_SELFTEST) */

static void open_backends(void) {
    /* PEFTD_PARITY_SELFTEST=1: a second CPU backend (1 thread) stands in for CUDA, to
     * check this file's own logic (sentinels, spreads, tables) on a machine without a GPU. */
    if (getenv("PEFTD_PARITY_SELFTEST")) {
        CU = kbackend_cpu_create(1);
        CP = kbackend_cpu_create(4);
        ASSERT(CU && CP);
        SELFTEST = true;
        return;
    }
#ifndef PEFTD_CUDA
    SKIP("no CUDA device (this build has no CUDA backend)");
#else
    if (!kbackend_cuda_available()) SKIP("no CUDA device");
    char err[512] = "";
    CU = kbackend_cuda_create(0, err, sizeof err);
    if (!CU) FAIL("kbackend_cuda_create: %s", err);
    CP = kbackend_cpu_create(4);
    ASSERT(CP);
#endif
}

static void close_backends(void) {
    kbackend_destroy(CU);
    kbackend_destroy(CP);
}

/* ---- a buffer on both backends, with sentinels ---- */

typedef struct {
    char *cp, *cu; /* inner regions (SENT_BYTES after each allocation's start) */
    size_t n;      /* inner bytes */
} pbuf;

/* host == NULL: the inner region starts as sentinel bytes too (an output). */
static pbuf pb_new(const void *host, size_t n) {
    pbuf b = {.n = n};
    size_t all = n + 2 * SENT_BYTES;
    unsigned char *h = malloc(all);
    ASSERT(h);
    memset(h, SENT_BYTE, all);
    if (host) memcpy(h + SENT_BYTES, host, n);
    char *p = CP->ops->alloc(CP, all), *q = CU->ops->alloc(CU, all);
    ASSERT(p && q);
    ASSERT_EQ(CP->ops->upload(CP, p, h, all), 0);
    ASSERT_EQ(CU->ops->upload(CU, q, h, all), 0);
    free(h);
    b.cp = p + SENT_BYTES;
    b.cu = q + SENT_BYTES;
    return b;
}

static void pb_free(pbuf *b) {
    if (b->cp) CP->ops->free(CP, b->cp - SENT_BYTES);
    if (b->cu) CU->ops->free(CU, b->cu - SENT_BYTES);
    memset(b, 0, sizeof *b);
}

/* Downloads one side whole; fails if a sentinel byte changed. Caller frees. */
static unsigned char *pb_get(kbackend *kb, const char *inner, size_t n, const char *what) {
    size_t all = n + 2 * SENT_BYTES;
    unsigned char *h = malloc(all);
    ASSERT(h);
    int st = kb->ops->download(kb, h, inner - SENT_BYTES, all);
    if (st) FAIL("%s: %s download: %s", what, kb->ops->name, peftd_strerror(st));
    for (size_t i = 0; i < SENT_BYTES; i++)
        if (h[i] != SENT_BYTE || h[all - 1 - i] != SENT_BYTE)
            FAIL("%s: %s wrote outside its output (sentinel byte %zu)", what, kb->ops->name, i);
    return h;
}

/* Compares an f32 output; entries still holding sentinel bytes on the CPU must hold them
 * on CUDA too (an op must not write what the reference leaves). */
static void pb_check_extra(pbuf *b, const char *what, const float *extra);
static void pb_check(pbuf *b, const char *what) { pb_check_extra(b, what, NULL); }

/* extra: per-element tolerance added to the relative one (NULL: none). */
static void pb_check_extra(pbuf *b, const char *what, const float *extra) {
    unsigned char *hp = pb_get(CP, b->cp, b->n, what), *hq = pb_get(CU, b->cu, b->n, what);
    const float *p = (const float *)(hp + SENT_BYTES), *q = (const float *)(hq + SENT_BYTES);
    size_t n = b->n / 4;
    uint32_t sent;
    memset(&sent, SENT_BYTE, 4);
    float mx = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &p[i], 4);
        if (u != sent && fabsf(p[i]) > mx) mx = fabsf(p[i]);
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t u, v;
        memcpy(&u, &p[i], 4);
        memcpy(&v, &q[i], 4);
        if (u == sent || v == sent) {
            if (u != v) FAIL("%s: element %zu: written by only one backend (cpu %08x, cuda %08x)", what, i, u, v);
            continue;
        }
        double tol = TOL_REL * (mx + fabs(p[i])) + (extra ? extra[i] : 0.0);
        if (!(fabs((double)p[i] - q[i]) <= tol))
            FAIL("%s: element %zu of %zu: cpu %.9g cuda %.9g (|diff| %.3g > tol %.3g)", what, i, n, p[i], q[i],
                 fabs((double)p[i] - q[i]), tol);
    }
    free(hp);
    free(hq);
}

/* ---- random inputs ---- */

static uint64_t RNG = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    RNG ^= RNG << 13;
    RNG ^= RNG >> 7;
    RNG ^= RNG << 17;
    return (uint32_t)(RNG >> 16);
}
static float frand(void) { return (float)((rnd() % 2000001) / 1000000.0 - 1.0); } /* [-1, 1] */

static float *rand_f32(size_t n, float scale) {
    float *v = malloc(n * sizeof *v);
    ASSERT(v);
    for (size_t i = 0; i < n; i++) v[i] = frand() * scale;
    return v;
}

/* n random weights stored in dt (host bytes, caller frees). */
static void *rand_w(kdtype dt, size_t n, float scale) {
    void *w = malloc(n * kdtype_size(dt));
    ASSERT(w);
    for (size_t i = 0; i < n; i++) {
        float f = frand() * scale;
        if (dt == KDT_F32) ((float *)w)[i] = f;
        else if (dt == KDT_F16) ((uint16_t *)w)[i] = f32_to_f16(f);
        else ((uint16_t *)w)[i] = f32_to_bf16(f);
    }
    return w;
}

static const int TS[] = {1, 7, 133};
static const kdtype DTS[] = {KDT_F32, KDT_F16, KDT_BF16};

#define BOTH(call_cp, call_cu)                                                                   \
    do {                                                                                         \
        int s1_ = (call_cp), s2_ = (call_cu);                                                    \
        if (s1_ != s2_) FAIL("status differs: cpu %s, cuda %s", peftd_strerror(s1_), peftd_strerror(s2_)); \
        ASSERT_EQ(s1_, 0);                                                                       \
    } while (0)

/* ---- ops ---- */

TEST(get_rows_parity) {
    open_backends();
    for (int d = 0; d < 3; d++)
        for (int ti = 0; ti < 3; ti++) {
            int T = TS[ti], rows = 50, cols = 67;
            void *tab = rand_w(DTS[d], (size_t)rows * cols, 2.0f);
            int32_t ids[133];
            for (int i = 0; i < T; i++) ids[i] = (int32_t)(rnd() % rows);
            pbuf pt = pb_new(tab, (size_t)rows * cols * kdtype_size(DTS[d])), pi = pb_new(ids, (size_t)T * 4),
                 po = pb_new(NULL, (size_t)T * cols * 4);
            kmat mp = {pt.cp, DTS[d], rows, cols}, mq = {pt.cu, DTS[d], rows, cols};
            BOTH(CP->ops->get_rows(CP, &mp, (int32_t *)pi.cp, T, (float *)po.cp),
                 CU->ops->get_rows(CU, &mq, (int32_t *)pi.cu, T, (float *)po.cu));
            char what[64];
            snprintf(what, sizeof what, "get_rows %s T=%d", kdtype_name(DTS[d]), T);
            pb_check(&po, what);
            pb_free(&pt), pb_free(&pi), pb_free(&po);
            free(tab);
        }
    close_backends();
}

TEST(get_rows_out_of_range_is_reported) {
    open_backends();
    float tab[4 * 8] = {0};
    int32_t ids[2] = {1, 4};
    pbuf pt = pb_new(tab, sizeof tab), pi = pb_new(ids, sizeof ids), po = pb_new(NULL, 2 * 8 * 4);
    kmat mq = {pt.cu, KDT_F32, 4, 8};
    /* The CPU refuses at once; on CUDA the ids are device-resident: the kernel flags it
     * and the next synchronize reports it. */
    int st = CU->ops->get_rows(CU, &mq, (int32_t *)pi.cu, 2, (float *)po.cu);
    if (st == 0) st = CU->ops->synchronize(CU);
    ASSERT_EQ(st, PEFTD_ERANGE);
    ASSERT_EQ(CU->ops->synchronize(CU), 0); /* the flag is cleared once reported */
    pb_free(&pt), pb_free(&pi), pb_free(&po);
    close_backends();
}

static void matmul_case(kdtype dt, int n, int in, int out, float beta) {
    void *w = rand_w(dt, (size_t)in * out, 0.5f);
    float *x = rand_f32((size_t)n * in, 1.0f), *y0 = rand_f32((size_t)n * out, 1.0f);
    pbuf pw = pb_new(w, (size_t)in * out * kdtype_size(dt)), px = pb_new(x, (size_t)n * in * 4),
         py = pb_new(y0, (size_t)n * out * 4);
    kmat mp = {pw.cp, dt, out, in}, mq = {pw.cu, dt, out, in};
    BOTH(CP->ops->matmul(CP, (float *)px.cp, n, &mp, (float *)py.cp, beta),
         CU->ops->matmul(CU, (float *)px.cu, n, &mq, (float *)py.cu, beta));
    char what[96];
    snprintf(what, sizeof what, "matmul %s n=%d in=%d out=%d beta=%g", kdtype_name(dt), n, in, out, beta);
    pb_check(&py, what);
    pb_free(&pw), pb_free(&px), pb_free(&py);
    free(w), free(x), free(y0);
}

TEST(matmul_parity) {
    open_backends();
    /* in = 136, 2048, 8192: CUDA's one-row shared-memory GEMV at T = 1 (tail only, one and
     * four rounds of 8 loads); 45: the scalar path */
    static const int shapes[][2] = {{67, 45}, {256, 136}, {2048, 96}, {64, 2048}, {40, 8192}};
    for (int d = 0; d < 3; d++)
        for (int ti = 0; ti < 3; ti++)
            for (int s = 0; s < 5; s++)
                for (int b = 0; b < 2; b++) matmul_case(DTS[d], TS[ti], shapes[s][0], shapes[s][1], (float)b);
    matmul_case(KDT_BF16, 9, 512, 384, 1.0f); /* just past the GEMV path */
    matmul_case(KDT_BF16, 64, 2048, 512, 0.0f); /* decode batch 64 */
    close_backends();
}

/* matmul_group (q/k/v, gate/up): each output within tolerance of the CPU's group, and on CUDA
 * bit-identical to that weight's own matmul (the grouped GEMV launch runs the same blocks). */
static void matmul_group_case(kdtype dt, int n, int in, float beta) {
    enum { G = 3 };
    const int outs[G] = {64, 32, 40};
    pbuf pw[G], py[G], pz[G];
    void *w[G];
    float *y0[G];
    kmat mp[G], mq[G];
    const kmat *wp[G], *wq[G];
    float *yp[G], *yq[G];
    float *x = rand_f32((size_t)n * in, 1.0f);
    pbuf px = pb_new(x, (size_t)n * in * 4);
    for (int g = 0; g < G; g++) {
        w[g] = rand_w(dt, (size_t)in * outs[g], 0.5f);
        y0[g] = rand_f32((size_t)n * outs[g], 1.0f);
        pw[g] = pb_new(w[g], (size_t)in * outs[g] * kdtype_size(dt));
        py[g] = pb_new(y0[g], (size_t)n * outs[g] * 4);
        pz[g] = pb_new(y0[g], (size_t)n * outs[g] * 4);
        mp[g] = (kmat){pw[g].cp, dt, outs[g], in};
        mq[g] = (kmat){pw[g].cu, dt, outs[g], in};
        wp[g] = &mp[g], wq[g] = &mq[g];
        yp[g] = (float *)py[g].cp, yq[g] = (float *)py[g].cu;
    }
    BOTH(kops_matmul_group(CP, (float *)px.cp, n, G, wp, yp, beta),
         kops_matmul_group(CU, (float *)px.cu, n, G, wq, yq, beta));
    for (int g = 0; g < G; g++) {
        char what[96];
        snprintf(what, sizeof what, "matmul_group %s n=%d in=%d weight %d beta=%g", kdtype_name(dt), n, in, g, beta);
        pb_check(&py[g], what);
        ASSERT_EQ(CU->ops->matmul(CU, (float *)px.cu, n, &mq[g], (float *)pz[g].cu, beta), 0);
        unsigned char *a = pb_get(CU, py[g].cu, py[g].n, what), *b = pb_get(CU, pz[g].cu, pz[g].n, what);
        if (memcmp(a, b, py[g].n + 2 * SENT_BYTES)) FAIL("%s: the group differs from the weight's own matmul", what);
        free(a), free(b);
        pb_free(&pw[g]), pb_free(&py[g]), pb_free(&pz[g]);
        free(w[g]), free(y0[g]);
    }
    pb_free(&px);
    free(x);
}

TEST(matmul_group_parity) {
    open_backends();
    for (int d = 0; d < 3; d++)
        for (int b = 0; b < 2; b++) {
            matmul_group_case(DTS[d], 1, 256, (float)b);  /* one launch */
            matmul_group_case(DTS[d], 7, 136, (float)b);  /* one launch, another width */
            matmul_group_case(DTS[d], 3, 2048, (float)b); /* one launch, loads batched (kcuda_dot8_rows) */
            matmul_group_case(DTS[d], 1, 2048, (float)b); /* one row: x in shared memory */
            matmul_group_case(DTS[d], 33, 256, (float)b); /* past the GEMV rows: one matmul each */
        }
    close_backends();
}

/* rows × in weights of a GGUF block type in wq (row bytes rb): quantized from random floats where
 * quant_ref.c has the type's quantizer, otherwise random blocks (every byte random) whose f16
 * scales are set to 2^-9 .. 2^-7 of either sign, so the values stay within a few units. */
static void qmatmul_weights(kdtype dt, const float *wf, unsigned char *wq, size_t rb, int rows, int in) {
    int (*qz)(const float *, void *, int64_t) = dt == KDT_Q8_0 ? qref_quantize_q8_0 : dt == KDT_Q4_K ? qref_quantize_q4_k
                                                : dt == KDT_Q5_K ? qref_quantize_q5_k : dt == KDT_Q6_K ? qref_quantize_q6_k
                                                : dt == KDT_Q4_0 ? qref_quantize_q4_0 : dt == KDT_Q5_0 ? qref_quantize_q5_0
                                                : dt == KDT_Q4_1 ? qref_quantize_q4_1 : dt == KDT_Q5_1 ? qref_quantize_q5_1 : NULL;
    if (qz) {
        for (int r = 0; r < rows; r++) ASSERT_EQ(qz(wf + (size_t)r * in, wq + (size_t)r * rb, in), 0);
        return;
    }
    /* f16 fields: IQ4_NL / IQ4_XS d at 0; Q3_K d at 108; Q2_K d, dmin at 80, 82 */
    const int bb = (int)kdtype_row_bytes(dt, kdtype_block_elems(dt)), d0 = dt == KDT_Q3_K ? 108 : dt == KDT_Q2_K ? 80 : 0;
    const int nf = dt == KDT_Q2_K ? 2 : 1;
    for (size_t i = 0; i < rb * (size_t)rows; i++) wq[i] = (unsigned char)rnd();
    for (size_t b = 0; b < rb * (size_t)rows; b += (size_t)bb)
        for (int f = 0; f < nf; f++) {
            float a = frand();
            uint16_t h = (uint16_t)((a < 0 ? 0x8000u : 0) | (uint32_t)(0x1800 + (int)(fabsf(a) * 2047.0f)));
            wq[b + (size_t)d0 + 2 * (size_t)f] = (unsigned char)h, wq[b + (size_t)d0 + 2 * (size_t)f + 1] = (unsigned char)(h >> 8);
        }
}

/* A quantized embedding table (every GGUF block type): both backends dequantize the gathered
 * rows exactly (CPU: quant_ref.c; CUDA: qdequant.h, checked against it on the host by
 * test_cuda_qdequant), so the rows are bit-identical, sentinels included. */
TEST(get_rows_quant_parity) {
    open_backends();
    static const kdtype QDTS[] = {KDT_Q8_0, KDT_Q4_K, KDT_Q5_K, KDT_Q6_K, KDT_Q4_0, KDT_Q5_0,
                                  KDT_Q4_1, KDT_Q5_1, KDT_IQ4_NL, KDT_IQ4_XS, KDT_Q3_K, KDT_Q2_K};
    for (int d = 0; d < (int)(sizeof QDTS / sizeof QDTS[0]); d++)
        for (int ti = 0; ti < 3; ti++) {
            const kdtype dt = QDTS[d];
            const int T = TS[ti], rows = 37, cols = 768;
            const size_t rb = kdtype_row_bytes(dt, cols);
            float *wf = rand_f32((size_t)rows * cols, 0.5f);
            unsigned char *tab = malloc(rb * rows);
            ASSERT(tab);
            qmatmul_weights(dt, wf, tab, rb, rows, cols);
            int32_t ids[133];
            for (int i = 0; i < T; i++) ids[i] = (int32_t)(rnd() % rows);
            pbuf pt = pb_new(tab, rb * rows), pi = pb_new(ids, (size_t)T * 4), po = pb_new(NULL, (size_t)T * cols * 4);
            kmat mp = {pt.cp, dt, rows, cols}, mq = {pt.cu, dt, rows, cols};
            ASSERT(CU->ops->supports_op(CU, KOP_GET_ROWS, dt));
            BOTH(CP->ops->get_rows(CP, &mp, (int32_t *)pi.cp, T, (float *)po.cp),
                 CU->ops->get_rows(CU, &mq, (int32_t *)pi.cu, T, (float *)po.cu));
            char what[64];
            snprintf(what, sizeof what, "get_rows %s T=%d", kdtype_name(dt), T);
            pb_check(&po, what);
            unsigned char *a = pb_get(CP, po.cp, po.n, what), *b = pb_get(CU, po.cu, po.n, what);
            if (memcmp(a, b, po.n + 2 * SENT_BYTES)) FAIL("%s: rows not bit-identical", what);
            free(a), free(b);
            pb_free(&pt), pb_free(&pi), pb_free(&po);
            free(wf), free(tab);
        }
    close_backends();
}

/* Quantized weights: CUDA's matmul of GGUF block bytes (every type kcuda__qdtype_ok takes)
 * against the CPU backend's f32 matmul of the same weights dequantized by the scalar reference
 * (quant_ref.c, bit-identical to gguf-py): CUDA dequantizes exactly and keeps x in f32, so the
 * f32 tolerance applies.
 * Self-test: the stand-in (the CPU backend's quantized path) also rounds x to 8 bits per
 * block (32 or 256 elements: |x - x̂| <= amax_block/254; the bound takes the type's weight
 * block, never smaller than its activation block), so each output gets that bound,
 * Σ_k |w_k|·amax_block(k)/254, on top (x 1.01 for the f32 scale products). */
static void qmatmul_case(kdtype dt, int n, int in, int out, float beta) {
    float *wf = rand_f32((size_t)in * out, 0.5f), *wd = malloc((size_t)in * out * 4);
    size_t rb = kdtype_row_bytes(dt, in);
    unsigned char *wq = malloc(rb * (size_t)out);
    ASSERT(wd && wq);
    qmatmul_weights(dt, wf, wq, rb, out, in);
    ASSERT_EQ(qref_dequantize(kdtype_ggml_type(dt), wq, wd, (int64_t)in * out), 0);
    float *x = rand_f32((size_t)n * in, 1.0f), *y0 = rand_f32((size_t)n * out, 1.0f), *extra = NULL;
    if (SELFTEST) {
        int64_t blk = kdtype_block_elems(dt);
        extra = calloc((size_t)n * out, sizeof *extra);
        ASSERT(extra);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < out; j++) {
                double e = 0;
                for (int64_t b = 0; b < in; b += blk) {
                    float amax = 0, wsum = 0;
                    for (int64_t k = b; k < b + blk; k++) {
                        amax = fmaxf(amax, fabsf(x[(size_t)i * in + k]));
                        wsum += fabsf(wd[(size_t)j * in + k]);
                    }
                    e += (double)wsum * amax / 254.0;
                }
                extra[(size_t)i * out + j] = (float)(e * 1.01);
            }
    }
    pbuf pwd = pb_new(wd, (size_t)in * out * 4), pwq = pb_new(wq, rb * (size_t)out), px = pb_new(x, (size_t)n * in * 4),
         py = pb_new(y0, (size_t)n * out * 4);
    kmat mp = {pwd.cp, KDT_F32, out, in}, mq = {pwq.cu, dt, out, in};
    ASSERT(CU->ops->supports_op(CU, KOP_MATMUL, dt));
    BOTH(CP->ops->matmul(CP, (float *)px.cp, n, &mp, (float *)py.cp, beta),
         CU->ops->matmul(CU, (float *)px.cu, n, &mq, (float *)py.cu, beta));
    char what[96];
    snprintf(what, sizeof what, "matmul %s n=%d in=%d out=%d beta=%g", kdtype_name(dt), n, in, out, beta);
    pb_check_extra(&py, what, extra);
    pb_free(&pwd), pb_free(&pwq), pb_free(&px), pb_free(&py);
    free(wf), free(wd), free(wq), free(x), free(y0), free(extra);
}

TEST(qmatmul_parity) {
    open_backends();
    static const kdtype QDTS[] = {KDT_Q8_0, KDT_Q4_K, KDT_Q5_K, KDT_Q6_K, KDT_Q4_0, KDT_Q5_0,
                                  KDT_Q4_1, KDT_Q5_1, KDT_IQ4_NL, KDT_IQ4_XS, KDT_Q3_K, KDT_Q2_K};
    static const int shapes[][2] = {{256, 45}, {512, 136}, {2048, 96}};
    /* Q8_0 / Q4_K every shape and beta; the other types (the same kernels, another dequantizer)
     * every path (T = 1, 7: GEMV; 133: dequantize + SGEMM) on two shapes, beta alternating —
     * fewer launches for the sanitizer runs of tests/gpu/run.sh (120 s for every op test) */
    for (int d = 0; d < (int)(sizeof QDTS / sizeof QDTS[0]); d++)
        for (int ti = 0; ti < 3; ti++)
            for (int s = 0; s < 3; s++)
                for (int b = 0; b < 2; b++)
                    if (d < 2 || (s < 2 && b == ((ti + s) & 1)))
                        qmatmul_case(QDTS[d], TS[ti], shapes[s][0], shapes[s][1], (float)b);
    qmatmul_case(KDT_Q4_K, 9, 512, 384, 1.0f);  /* just past the GEMV path */
    qmatmul_case(KDT_Q8_0, 64, 2048, 512, 0.0f); /* decode batch 64 */
    qmatmul_case(KDT_Q6_K, 9, 512, 384, 0.0f);  /* the Q4_K_M head's type past the GEMV path */
    qmatmul_case(KDT_Q3_K, 33, 768, 200, 1.0f);
    close_backends();
}

TEST(rmsnorm_parity) {
    open_backends();
    for (int d = 0; d < 3; d++)
        for (int ti = 0; ti < 3; ti++)
            for (int di = 0; di < 5; di++) {
                /* CUDA's register-resident widths (<= 256, 1024, 2048, 4096) and its strided path */
                static const int DIMS[] = {67, 1000, 2048, 3001, 4500};
                int T = TS[ti], dim = DIMS[di];
                void *w = rand_w(DTS[d], (size_t)dim, 1.5f);
                float *x = rand_f32((size_t)T * dim, 3.0f);
                pbuf pw = pb_new(w, (size_t)dim * kdtype_size(DTS[d])), px = pb_new(x, (size_t)T * dim * 4),
                     py = pb_new(NULL, (size_t)T * dim * 4);
                kmat mp = {pw.cp, DTS[d], 1, dim}, mq = {pw.cu, DTS[d], 1, dim};
                BOTH(CP->ops->rmsnorm(CP, (float *)px.cp, &mp, T, dim, 1e-5f, (float *)py.cp),
                     CU->ops->rmsnorm(CU, (float *)px.cu, &mq, T, dim, 1e-5f, (float *)py.cu));
                char what[64];
                snprintf(what, sizeof what, "rmsnorm %s T=%d dim=%d", kdtype_name(DTS[d]), T, dim);
                pb_check(&py, what);
                /* in place */
                BOTH(CP->ops->rmsnorm(CP, (float *)px.cp, &mp, T, dim, 1e-5f, (float *)px.cp),
                     CU->ops->rmsnorm(CU, (float *)px.cu, &mq, T, dim, 1e-5f, (float *)px.cu));
                pb_check(&px, what);
                pb_free(&pw), pb_free(&px), pb_free(&py);
                free(w), free(x);
            }
    close_backends();
}

TEST(rope_parity) {
    open_backends();
    static const int hds[] = {6, 64, 128};
    /* rd 1: partial rotary, rot_dim = 3/4 of head_dim rounded down to even (Phi-4-mini).
     * Odd cases: 3 per-row tables (dynamic NTK / longrope) and a cos/sin scale. */
    for (int ti = 0; ti < 3; ti++)
        for (int h = 0; h < 6; h++) {
            int T = TS[ti], hd = hds[h % 3], nh = 5, rot = h < 3 ? hd : hd * 3 / 4 / 2 * 2;
            int nt = h % 2 ? 3 : 1;
            float *x = rand_f32((size_t)T * nh * hd, 2.0f), inv[3 * 64];
            for (int t = 0; t < nt; t++)
                for (int i = 0; i < rot / 2; i++) inv[t * (rot / 2) + i] = powf(10000.0f * (1 + t), -2.0f * i / rot);
            int32_t pos[133], tab[133];
            for (int i = 0; i < T; i++) pos[i] = (int32_t)(rnd() % 4096), tab[i] = (int32_t)(rnd() % nt);
            pbuf px = pb_new(x, (size_t)T * nh * hd * 4), pp = pb_new(pos, (size_t)T * 4),
                 pf = pb_new(inv, (size_t)nt * (rot / 2) * 4), pt = pb_new(tab, (size_t)T * 4);
            float sc = nt > 1 ? 1.2247449f : 1.0f;
            krope_freqs fc = {(float *)pf.cp, nt, nt > 1 ? (int32_t *)pt.cp : NULL, sc},
                        fu = {(float *)pf.cu, nt, nt > 1 ? (int32_t *)pt.cu : NULL, sc};
            BOTH(CP->ops->rope(CP, (float *)px.cp, (int32_t *)pp.cp, T, nh, hd, rot, &fc),
                 CU->ops->rope(CU, (float *)px.cu, (int32_t *)pp.cu, T, nh, hd, rot, &fu));
            char what[80];
            snprintf(what, sizeof what, "rope T=%d head_dim=%d rot_dim=%d tables=%d", T, hd, rot, nt);
            pb_check(&px, what);
            pb_free(&px), pb_free(&pp), pb_free(&pf), pb_free(&pt);
            free(x);
        }
    close_backends();
}

/* rope_kv_store: CUDA's one kernel against the CPU's three calls (kops_rope_kv_store's
 * composition), and bit for bit against CUDA's own rope, rope, kv_store (the op's contract);
 * partial rotary, per-row tables, GQA, slots scattered over a larger cache. */
TEST(rope_kv_store_parity) {
    open_backends();
    static const int hds[] = {64, 128};
    for (int ti = 0; ti < 3; ti++)
        for (int c = 0; c < 4; c++) {
            int T = TS[ti], hd = hds[c % 2], rot = c < 2 ? hd : hd * 3 / 4 / 2 * 2, nt = c % 2 ? 3 : 1;
            int nh = 6, nkv = 2, kv_dim = nkv * hd, n_slots = T + 9;
            float *q = rand_f32((size_t)T * nh * hd, 2.0f), *k = rand_f32((size_t)T * kv_dim, 2.0f),
                  *v = rand_f32((size_t)T * kv_dim, 2.0f), inv[3 * 64];
            for (int t = 0; t < nt; t++)
                for (int i = 0; i < rot / 2; i++) inv[t * (rot / 2) + i] = powf(10000.0f * (1 + t), -2.0f * i / rot);
            int32_t pos[133], tab[133], slot[133];
            for (int i = 0; i < T; i++) {
                pos[i] = (int32_t)(rnd() % 4096), tab[i] = (int32_t)(rnd() % nt);
                slot[i] = (int32_t)((i * 5 + 3) % n_slots); /* distinct: gcd(5, T + 9) = 1 for T in TS */
            }
            pbuf pq = pb_new(q, (size_t)T * nh * hd * 4), pk = pb_new(k, (size_t)T * kv_dim * 4),
                 pv = pb_new(v, (size_t)T * kv_dim * 4), pp = pb_new(pos, (size_t)T * 4),
                 pf = pb_new(inv, (size_t)nt * (rot / 2) * 4), pt = pb_new(tab, (size_t)T * 4),
                 ps = pb_new(slot, (size_t)T * 4), kc = pb_new(NULL, (size_t)n_slots * kv_dim * 4),
                 vc = pb_new(NULL, (size_t)n_slots * kv_dim * 4);
            float sc = nt > 1 ? 1.2247449f : 1.0f;
            krope_freqs fc = {(float *)pf.cp, nt, nt > 1 ? (int32_t *)pt.cp : NULL, sc},
                        fu = {(float *)pf.cu, nt, nt > 1 ? (int32_t *)pt.cu : NULL, sc};
            /* CUDA's three separate ops first, on copies: the reference bits */
            pbuf q2 = pb_new(q, pq.n), k2 = pb_new(k, pk.n), kc2 = pb_new(NULL, kc.n), vc2 = pb_new(NULL, vc.n);
            ASSERT_EQ(CU->ops->rope(CU, (float *)q2.cu, (int32_t *)pp.cu, T, nh, hd, rot, &fu), 0);
            ASSERT_EQ(CU->ops->rope(CU, (float *)k2.cu, (int32_t *)pp.cu, T, nkv, hd, rot, &fu), 0);
            ASSERT_EQ(CU->ops->kv_store(CU, (float *)k2.cu, (float *)pv.cu, (int32_t *)ps.cu, T, kv_dim, KDT_F32,
                                        (float *)kc2.cu, (float *)vc2.cu), 0);
            BOTH(kops_rope_kv_store(CP, (float *)pq.cp, (float *)pk.cp, (float *)pv.cp, (int32_t *)pp.cp, T, nh, nkv, hd,
                                    rot, &fc, (int32_t *)ps.cp, KDT_F32, (float *)kc.cp, (float *)vc.cp),
                 kops_rope_kv_store(CU, (float *)pq.cu, (float *)pk.cu, (float *)pv.cu, (int32_t *)pp.cu, T, nh, nkv, hd,
                                    rot, &fu, (int32_t *)ps.cu, KDT_F32, (float *)kc.cu, (float *)vc.cu));
            char what[96];
            snprintf(what, sizeof what, "rope_kv_store T=%d head_dim=%d rot_dim=%d tables=%d", T, hd, rot, nt);
            pb_check(&pq, what), pb_check(&pk, what), pb_check(&kc, what), pb_check(&vc, what);
            pbuf *one[4] = {&pq, &pk, &kc, &vc}, *sep[4] = {&q2, &k2, &kc2, &vc2};
            for (int b = 0; b < 4; b++) {
                unsigned char *x = pb_get(CU, one[b]->cu, one[b]->n, what), *y = pb_get(CU, sep[b]->cu, sep[b]->n, what);
                if (memcmp(x, y, one[b]->n + 2 * SENT_BYTES)) FAIL("%s: buffer %d differs from rope, rope, kv_store", what, b);
                free(x), free(y);
            }
            pbuf *all[] = {&pq, &pk, &pv, &pp, &pf, &pt, &ps, &kc, &vc, &q2, &k2, &kc2, &vc2};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pb_free(all[i]);
            free(q), free(k), free(v);
        }
    close_backends();
}

/* matmul_glu: CUDA's one-row fused kernel (n = 1) and its three-step fallback (n = 3) against
 * the CPU's three steps (tolerance), and bit for bit against CUDA's own matmul_group + swiglu /
 * geglu (the op's contract); both gated units, every dense dtype. */
static void matmul_glu_case(kdtype dt, int n, int in, int rows, kact act) {
    void *wg = rand_w(dt, (size_t)rows * in, 0.5f), *wu = rand_w(dt, (size_t)rows * in, 0.5f);
    float *x = rand_f32((size_t)n * in, 1.0f);
    size_t wb = (size_t)rows * in * kdtype_size(dt), ob = (size_t)n * rows * 4;
    pbuf pg = pb_new(wg, wb), pu = pb_new(wu, wb), px = pb_new(x, (size_t)n * in * 4), po = pb_new(NULL, ob),
         pup = pb_new(NULL, ob), po2 = pb_new(NULL, ob), pup2 = pb_new(NULL, ob);
    kmat gp = {pg.cp, dt, rows, in}, up = {pu.cp, dt, rows, in}, gq = {pg.cu, dt, rows, in}, uq = {pu.cu, dt, rows, in};
    BOTH(kops_matmul_glu(CP, (float *)px.cp, n, &gp, &up, act, (float *)pup.cp, (float *)po.cp),
         kops_matmul_glu(CU, (float *)px.cu, n, &gq, &uq, act, (float *)pup.cu, (float *)po.cu));
    char what[96];
    snprintf(what, sizeof what, "matmul_glu %s n=%d in=%d rows=%d %s", kdtype_name(dt), n, in, rows,
             act == KACT_SILU ? "silu" : "gelu_tanh");
    pb_check(&po, what);
    /* CUDA's three steps: the reference bits */
    const kmat *w[2] = {&gq, &uq};
    float *y[2] = {(float *)po2.cu, (float *)pup2.cu};
    ASSERT_EQ(kops_matmul_group(CU, (float *)px.cu, n, 2, w, y, 0.0f), 0);
    int st = act == KACT_SILU ? CU->ops->swiglu(CU, y[0], y[1], n, rows, y[0])
                              : CU->ops->geglu(CU, y[0], y[1], n, rows, y[0]);
    ASSERT_EQ(st, 0);
    unsigned char *a = pb_get(CU, po.cu, ob, what), *b = pb_get(CU, po2.cu, ob, what);
    if (memcmp(a, b, ob + 2 * SENT_BYTES)) FAIL("%s: differs from matmul_group + the gated unit", what);
    free(a), free(b);
    pbuf *all[] = {&pg, &pu, &px, &po, &pup, &po2, &pup2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pb_free(all[i]);
    free(wg), free(wu), free(x);
}

TEST(matmul_glu_parity) {
    open_backends();
    for (int d = 0; d < 3; d++)
        for (int a = 0; a < 2; a++) {
            kact act = a ? KACT_GELU_TANH : KACT_SILU;
            matmul_glu_case(DTS[d], 1, 2048, 96, act); /* fused: one round of 8 loads per lane */
            matmul_glu_case(DTS[d], 1, 136, 40, act);  /* fused: the tail loop only */
            matmul_glu_case(DTS[d], 3, 256, 72, act);  /* the three steps inside the op */
        }
    close_backends();
}

TEST(swiglu_add_parity) {
    open_backends();
    for (int ti = 0; ti < 3; ti++) {
        int T = TS[ti], dim = 67;
        size_t n = (size_t)T * dim;
        float *g = rand_f32(n, 6.0f), *u = rand_f32(n, 2.0f);
        pbuf pg = pb_new(g, n * 4), pu = pb_new(u, n * 4), po = pb_new(NULL, n * 4);
        BOTH(CP->ops->swiglu(CP, (float *)pg.cp, (float *)pu.cp, T, dim, (float *)po.cp),
             CU->ops->swiglu(CU, (float *)pg.cu, (float *)pu.cu, T, dim, (float *)po.cu));
        pb_check(&po, "swiglu");
        BOTH(CP->ops->swiglu(CP, (float *)pg.cp, (float *)pu.cp, T, dim, (float *)pg.cp),
             CU->ops->swiglu(CU, (float *)pg.cu, (float *)pu.cu, T, dim, (float *)pg.cu));
        pb_check(&pg, "swiglu in place");
        BOTH(CP->ops->add(CP, (float *)pu.cp, (float *)po.cp, (int64_t)n),
             CU->ops->add(CU, (float *)pu.cu, (float *)po.cu, (int64_t)n));
        pb_check(&pu, "add");
        pb_free(&pg), pb_free(&pu), pb_free(&po);
        free(g), free(u);
    }
    close_backends();
}

/* ---- paged KV: kv_store then attention ---- */

static void attention_case(int n_seqs, const int *n_q, const int *kv_len, const int *kv_start, int n_heads,
                           int n_kv, int hd, int bs, int window, float softcap) {
    int kv_dim = n_kv * hd, max_blocks = 0, T = 0, n_blocks = 0;
    for (int s = 0; s < n_seqs; s++) {
        int nb = (kv_len[s] + bs - 1) / bs;
        if (nb > max_blocks) max_blocks = nb;
        n_blocks += nb;
        T += n_q[s];
    }
    n_blocks += 3; /* spare blocks nobody uses */
    /* Block ids: a shuffled permutation, so sequences' blocks interleave in the pool. */
    size_t btab_n = (size_t)(n_seqs > 0 ? n_seqs : 1) * (size_t)(max_blocks > 0 ? max_blocks : 1);
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)n_blocks), *btab = calloc(btab_n, 4);
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)(rnd() % (uint32_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    int next = 0;
    int32_t q_start[16], kvl[16], kvs[16];
    q_start[0] = 0;
    for (int s = 0; s < n_seqs; s++) {
        for (int b = 0; b < (kv_len[s] + bs - 1) / bs; b++) btab[s * max_blocks + b] = perm[next++];
        /* blocks a sequence skips entirely (before kv_start) may be unset (-1) */
        if (kv_start)
            for (int b = 0; b < kv_start[s] / bs; b++) btab[s * max_blocks + b] = -1;
        q_start[s + 1] = q_start[s] + n_q[s];
        kvl[s] = kv_len[s];
        kvs[s] = kv_start ? kv_start[s] : 0;
    }
    /* Every slot of every sequence's mapped blocks gets K/V through kv_store (one call), at
     * block*bs+off. Slots are distinct within a call (kv_store's contract: the engine writes
     * each slot once per step), so unmapped blocks (-1, before kv_start) are not written. */
    int n_slots_total = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int j = 0; j < kv_len[s]; j++) n_slots_total += btab[s * max_blocks + j / bs] >= 0;
    int32_t *slots = malloc(sizeof(int32_t) * (size_t)(n_slots_total ? n_slots_total : 1));
    int k = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int j = 0; j < kv_len[s]; j++) {
            int32_t blk = btab[s * max_blocks + j / bs];
            if (blk >= 0) slots[k++] = blk * bs + j % bs;
        }
    size_t cache_floats = (size_t)n_blocks * bs * kv_dim;
    float *kk = rand_f32((size_t)n_slots_total * kv_dim, 1.0f), *vv = rand_f32((size_t)n_slots_total * kv_dim, 1.0f);
    float *q = rand_f32((size_t)T * n_heads * hd, softcap > 0 ? 8.0f : 1.0f); /* scores past the cap */
    pbuf pk = pb_new(kk, (size_t)n_slots_total * kv_dim * 4), pv = pb_new(vv, (size_t)n_slots_total * kv_dim * 4),
         ps = pb_new(slots, (size_t)n_slots_total * 4), kc = pb_new(NULL, cache_floats * 4),
         vc = pb_new(NULL, cache_floats * 4), pq = pb_new(q, (size_t)T * n_heads * hd * 4),
         po = pb_new(NULL, (size_t)T * n_heads * hd * 4), pqs = pb_new(q_start, (size_t)(n_seqs + 1) * 4),
         pkl = pb_new(kvl, (size_t)n_seqs * 4), pks = pb_new(kvs, (size_t)n_seqs * 4),
         pbt = pb_new(btab, (size_t)n_seqs * (max_blocks ? max_blocks : 1) * 4);
    BOTH(CP->ops->kv_store(CP, (float *)pk.cp, (float *)pv.cp, (int32_t *)ps.cp, n_slots_total, kv_dim, KDT_F32,
                           (float *)kc.cp, (float *)vc.cp),
         CU->ops->kv_store(CU, (float *)pk.cu, (float *)pv.cu, (int32_t *)ps.cu, n_slots_total, kv_dim, KDT_F32,
                           (float *)kc.cu, (float *)vc.cu));
    pb_check(&kc, "kv_store k_cache");
    pb_check(&vc, "kv_store v_cache");
    kattn_args a = {.n_seqs = n_seqs, .max_blocks = max_blocks, .block_size = bs, .n_heads = n_heads,
                    .n_kv_heads = n_kv, .head_dim = hd, .scale = 1.0f / sqrtf((float)hd), .window = window,
                    .softcap = softcap};
    kattn_args ap = a, aq = a;
    ap.q_start = (int32_t *)pqs.cp, ap.kv_len = (int32_t *)pkl.cp, ap.block_table = (int32_t *)pbt.cp;
    ap.q = (float *)pq.cp, ap.k_cache = (float *)kc.cp, ap.v_cache = (float *)vc.cp, ap.out = (float *)po.cp;
    ap.kv_start = kv_start ? (int32_t *)pks.cp : NULL;
    aq.q_start = (int32_t *)pqs.cu, aq.kv_len = (int32_t *)pkl.cu, aq.block_table = (int32_t *)pbt.cu;
    aq.q = (float *)pq.cu, aq.k_cache = (float *)kc.cu, aq.v_cache = (float *)vc.cu, aq.out = (float *)po.cu;
    aq.kv_start = kv_start ? (int32_t *)pks.cu : NULL;
    aq.max_rows = T; /* the grid sized to the rows (0, not known, in the window cases below) */
    if (window) aq.max_rows = 0;
    BOTH(CP->ops->attention(CP, &ap), CU->ops->attention(CU, &aq));
    char what[96];
    snprintf(what, sizeof what, "attention seqs=%d heads=%d/%d hd=%d bs=%d%s window=%d softcap=%g", n_seqs, n_heads,
             n_kv, hd, bs, kv_start ? " kv_start" : "", window, softcap);
    pb_check(&po, what);
    pbuf *all[] = {&pk, &pv, &ps, &kc, &vc, &pq, &po, &pqs, &pkl, &pks, &pbt};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pb_free(all[i]);
    free(perm), free(btab), free(slots), free(kk), free(vv), free(q);
}

TEST(kv_store_attention_parity) {
    open_backends();
    /* decode rows, prefill chunks, an empty sequence, a 1-slot sequence, 133 rows */
    static const int nq1[] = {1, 7, 1, 20, 0, 1}, kv1[] = {33, 7, 100, 40, 5, 1};
    attention_case(6, nq1, kv1, NULL, 8, 2, 64, 16, 0, 0.0f);
    attention_case(6, nq1, kv1, NULL, 4, 4, 40, 16, 0, 0.0f);  /* MHA, head_dim not a multiple of 32 */
    attention_case(6, nq1, kv1, NULL, 12, 3, 128, 7, 0, 0.0f); /* block size not a power of two */
    static const int nq2[] = {133}, kv2[] = {133};
    attention_case(1, nq2, kv2, NULL, 8, 2, 64, 16, 0, 0.0f);
    static const int nq3[] = {1, 3, 1}, kv3[] = {300, 50, 2100}, ks3[] = {32, 16, 64};
    attention_case(3, nq3, kv3, ks3, 32, 8, 64, 16, 0, 0.0f); /* kv_start (shared-prefix padding), long context */
    close_backends();
}

/* Sliding window (kattn_args.window): prefill rows on both sides of the edge, decode rows far
 * past it, kv_start, a window of 1 and one longer than every context. */
TEST(attention_window_parity) {
    open_backends();
    static const int nq[] = {1, 20, 1, 9, 3}, kv[] = {300, 20, 9, 40, 2100}, ks[] = {32, 0, 0, 16, 64};
    static const int ws[] = {1, 8, 100, 4096};
    for (int i = 0; i < 4; i++) {
        attention_case(5, nq, kv, NULL, 8, 2, 64, 16, ws[i], 0.0f);
        attention_case(5, nq, kv, ks, 12, 3, 40, 7, ws[i], 0.0f);
    }
    close_backends();
}

/* Gemma 2 attention logit soft-capping (kattn_args.softcap), with and without a window. */
TEST(attention_softcap_parity) {
    open_backends();
    static const int nq[] = {1, 20, 1, 9}, kv[] = {300, 20, 9, 40};
    static const float caps[] = {5.0f, 50.0f};
    for (int i = 0; i < 2; i++) {
        attention_case(4, nq, kv, NULL, 8, 4, 64, 16, 0, caps[i]);
        attention_case(4, nq, kv, NULL, 4, 2, 256, 16, 8, caps[i]); /* Gemma's head_dim 256 */
    }
    close_backends();
}

/* Gemma's GeGLU (gelu tanh) and the final-logit soft-cap. */
TEST(geglu_softcap_parity) {
    open_backends();
    for (int ti = 0; ti < 3; ti++) {
        int T = TS[ti], dim = 67;
        size_t n = (size_t)T * dim;
        float *g = rand_f32(n, 6.0f), *u = rand_f32(n, 2.0f), *y = rand_f32(n, 90.0f);
        pbuf pg = pb_new(g, n * 4), pu = pb_new(u, n * 4), po = pb_new(NULL, n * 4), py = pb_new(y, n * 4);
        BOTH(CP->ops->geglu(CP, (float *)pg.cp, (float *)pu.cp, T, dim, (float *)po.cp),
             CU->ops->geglu(CU, (float *)pg.cu, (float *)pu.cu, T, dim, (float *)po.cu));
        pb_check(&po, "geglu");
        BOTH(CP->ops->geglu(CP, (float *)pg.cp, (float *)pu.cp, T, dim, (float *)pg.cp),
             CU->ops->geglu(CU, (float *)pg.cu, (float *)pu.cu, T, dim, (float *)pg.cu));
        pb_check(&pg, "geglu in place");
        BOTH(CP->ops->softcap(CP, (float *)py.cp, (int64_t)n, 30.0f), CU->ops->softcap(CU, (float *)py.cu, (int64_t)n, 30.0f));
        pb_check(&py, "softcap");
        pb_free(&pg), pb_free(&pu), pb_free(&po), pb_free(&py);
        free(g), free(u), free(y);
    }
    close_backends();
}

/* ---- SGMV ---- */

typedef enum { SP_DISTINCT, SP_UNIFORM, SP_ZIPF, SP_IDENTICAL, SP_SKEWED, SP_N } spread;
static const char *SPREAD_NAMES[] = {"distinct", "uniform", "zipf", "identical", "skewed"};

/* Segment sizes for T rows (sum = T), with empty segments mixed in; returns n_segs. */
static int spread_sizes(spread sp, int T, int *sz, int cap) {
    int n = 0;
    switch (sp) {
    case SP_DISTINCT: for (int i = 0; i < T && n < cap; i++) sz[n++] = 1; break;
    case SP_UNIFORM: {
        int per = T >= 4 ? T / 4 : 1;
        for (int left = T; left > 0 && n < cap; left -= per) sz[n++] = left < per ? left : per;
        break;
    }
    case SP_ZIPF: { /* sizes ~ T / (k+1) / H */
        int left = T;
        for (int k = 0; left > 0 && n < cap; k++) {
            int s = (int)(T / (2.0 * (k + 1)));
            if (s < 1) s = 1;
            if (s > left) s = left;
            sz[n++] = s;
            left -= s;
        }
        break;
    }
    case SP_IDENTICAL: sz[n++] = T; break;
    case SP_SKEWED: {
        int big = T - T / 8;
        if (big < 1) big = 1;
        sz[n++] = big;
        for (int left = T - big; left > 0 && n < cap; left--) sz[n++] = 1;
        break;
    }
    default: break;
    }
    /* an empty segment at the front and one in the middle */
    if (n + 2 <= cap) {
        memmove(sz + 1, sz, sizeof(int) * (size_t)n);
        sz[0] = 0;
        n++;
        int mid = n / 2 + 1;
        memmove(sz + mid + 1, sz + mid, sizeof(int) * (size_t)(n - mid));
        sz[mid] = 0;
        n++;
    }
    return n;
}

static void sgmv_case(kdtype dt, int T, spread sp, int in, int out, bool bottleneck) {
    enum { CAP = 160 };
    static const int RANKS[] = {1, 4, 8, 16, 32, 64, 128, 3};
    int sz[CAP];
    int n = spread_sizes(sp, T, sz, CAP);
    int32_t seg[CAP + 1], rank[CAP], act[CAP];
    float scale[CAP];
    void *ap[CAP], *aq[CAP], *bp[CAP], *bq[CAP];
    float *bap[CAP], *baq[CAP], *bbp[CAP], *bbq[CAP];
    pbuf wa[CAP], wb[CAP], ba[CAP], bb[CAP];
    int ld = 0, max_rows = 0;
    seg[0] = 0;
    for (int i = 0; i < n; i++) {
        seg[i + 1] = seg[i] + sz[i];
        if (sz[i] > max_rows) max_rows = sz[i];
        rank[i] = RANKS[rnd() % 8];
        if (i == 2) rank[i] = 0; /* rank 0: skipped */
        scale[i] = 0.25f + (float)(rnd() % 8) / 4.0f;
        act[i] = bottleneck ? (int32_t)(rnd() % (KACT_SIGMOID + 1)) : KACT_NONE;
        if (rank[i] > ld) ld = rank[i];
        memset(&wa[i], 0, sizeof wa[i]), memset(&wb[i], 0, sizeof wb[i]);
        memset(&ba[i], 0, sizeof ba[i]), memset(&bb[i], 0, sizeof bb[i]);
        ap[i] = aq[i] = bp[i] = bq[i] = NULL;
        bap[i] = baq[i] = bbp[i] = bbq[i] = NULL;
        if (rank[i] == 0 || i == 3) continue; /* i == 3: NULL A/B with a rank: skipped too */
        void *A = rand_w(dt, (size_t)rank[i] * in, 0.5f), *B = rand_w(dt, (size_t)out * rank[i], 0.5f);
        wa[i] = pb_new(A, (size_t)rank[i] * in * kdtype_size(dt));
        wb[i] = pb_new(B, (size_t)out * rank[i] * kdtype_size(dt));
        ap[i] = wa[i].cp, aq[i] = wa[i].cu, bp[i] = wb[i].cp, bq[i] = wb[i].cu;
        free(A), free(B);
        if (bottleneck && i % 2 == 0) {
            float *x1 = rand_f32((size_t)rank[i], 0.5f), *x2 = rand_f32((size_t)out, 0.5f);
            ba[i] = pb_new(x1, (size_t)rank[i] * 4), bb[i] = pb_new(x2, (size_t)out * 4);
            bap[i] = (float *)ba[i].cp, baq[i] = (float *)ba[i].cu, bbp[i] = (float *)bb[i].cp, bbq[i] = (float *)bb[i].cu;
            free(x1), free(x2);
        }
    }
    int ld_t = ld + 3; /* wider than any rank: entries past rank_i must stay untouched */
    float *x = rand_f32((size_t)T * in, 1.0f), *y0 = rand_f32((size_t)T * out, 1.0f);
    pbuf px = pb_new(x, (size_t)T * in * 4), py = pb_new(y0, (size_t)T * out * 4),
         pt = pb_new(NULL, (size_t)T * ld_t * 4), pseg = pb_new(seg, (size_t)(n + 1) * 4),
         prank = pb_new(rank, (size_t)n * 4), pscale = pb_new(scale, (size_t)n * 4), pact = pb_new(act, (size_t)n * 4);
    /* pointer tables: each backend gets its own pointers */
    pbuf tab[6];
    void **srcp[6] = {ap, bp, (void **)bap, (void **)bbp}, **srcq[6] = {aq, bq, (void **)baq, (void **)bbq};
    for (int k = 0; k < 4; k++) {
        tab[k] = pb_new(NULL, (size_t)n * sizeof(void *));
        ASSERT_EQ(CP->ops->upload(CP, tab[k].cp, srcp[k], (size_t)n * sizeof(void *)), 0);
        ASSERT_EQ(CU->ops->upload(CU, tab[k].cu, srcq[k], (size_t)n * sizeof(void *)), 0);
    }
    ksgmv sp_ = {.n_segs = n, .seg_start = (int32_t *)pseg.cp, .a = (const void *const *)tab[0].cp,
                 .b = (const void *const *)tab[1].cp, .rank = (int32_t *)prank.cp, .scale = (float *)pscale.cp,
                 .bias_a = bottleneck ? (const float *const *)tab[2].cp : NULL,
                 .bias_b = bottleneck ? (const float *const *)tab[3].cp : NULL,
                 .act = bottleneck ? (int32_t *)pact.cp : NULL, .dtype = dt};
    ksgmv sq_ = {.n_segs = n, .seg_start = (int32_t *)pseg.cu, .a = (const void *const *)tab[0].cu,
                 .b = (const void *const *)tab[1].cu, .rank = (int32_t *)prank.cu, .scale = (float *)pscale.cu,
                 .bias_a = bottleneck ? (const float *const *)tab[2].cu : NULL,
                 .bias_b = bottleneck ? (const float *const *)tab[3].cu : NULL,
                 .act = bottleneck ? (int32_t *)pact.cu : NULL, .dtype = dt, .max_rows = max_rows};
    char what[128];
    snprintf(what, sizeof what, "sgmv %s T=%d %s in=%d out=%d%s", kdtype_name(dt), T, SPREAD_NAMES[sp], in, out,
             bottleneck ? " bias+act" : "");
    BOTH(CP->ops->sgmv_shrink(CP, (float *)px.cp, in, &sp_, (float *)pt.cp, ld_t),
         CU->ops->sgmv_shrink(CU, (float *)px.cu, in, &sq_, (float *)pt.cu, ld_t));
    pb_check(&pt, what);
    /* Row slices (max_rows: a long segment spread over more blocks) never change a value:
     * with max_rows 0 (one slice walks every row group) t and y are the same bits. */
    ksgmv sq0 = sq_;
    sq0.max_rows = 0;
    unsigned char *t_sliced = pb_get(CU, pt.cu, pt.n, what);
    ASSERT_EQ(CU->ops->sgmv_shrink(CU, (float *)px.cu, in, &sq0, (float *)pt.cu, ld_t), 0);
    {
        unsigned char *t_whole = pb_get(CU, pt.cu, pt.n, what);
        if (memcmp(t_sliced, t_whole, pt.n + 2 * SENT_BYTES) != 0) FAIL("%s: shrink t depends on max_rows", what);
        free(t_whole);
    }
    free(t_sliced);
    /* expand reads t: entries the shrink left unwritten must not be read, but give both
     * backends the same defined t (the CPU's) so y compares exactly what expand does */
    {
        unsigned char *h = pb_get(CP, pt.cp, pt.n, what);
        ASSERT_EQ(CU->ops->upload(CU, pt.cu - SENT_BYTES, h, pt.n + 2 * SENT_BYTES), 0);
        free(h);
    }
    pbuf py0 = pb_new(y0, (size_t)T * out * 4); /* y before expand, for the max_rows 0 run */
    BOTH(CP->ops->sgmv_expand(CP, (float *)pt.cp, ld_t, &sp_, out, (float *)py.cp),
         CU->ops->sgmv_expand(CU, (float *)pt.cu, ld_t, &sq_, out, (float *)py.cu));
    pb_check(&py, what);
    ASSERT_EQ(CU->ops->sgmv_expand(CU, (float *)pt.cu, ld_t, &sq0, out, (float *)py0.cu), 0);
    {
        unsigned char *y_sliced = pb_get(CU, py.cu, py.n, what), *y_whole = pb_get(CU, py0.cu, py0.n, what);
        if (memcmp(y_sliced, y_whole, py.n + 2 * SENT_BYTES) != 0) FAIL("%s: expand y depends on max_rows", what);
        free(y_sliced), free(y_whole);
    }
    pb_free(&py0);
    pbuf *all[] = {&px, &py, &pt, &pseg, &prank, &pscale, &pact, &tab[0], &tab[1], &tab[2], &tab[3]};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pb_free(all[i]);
    for (int i = 0; i < n; i++) pb_free(&wa[i]), pb_free(&wb[i]), pb_free(&ba[i]), pb_free(&bb[i]);
    free(x), free(y0);
}

TEST(sgmv_lora_parity) {
    open_backends();
    for (int d = 0; d < 3; d++)
        for (int ti = 0; ti < 3; ti++)
            for (int sp = 0; sp < SP_N; sp++) sgmv_case(DTS[d], TS[ti], (spread)sp, 96, 136, false);
    sgmv_case(KDT_BF16, 64, SP_DISTINCT, 2048, 2048, false); /* 1B-shape decode, 64 adapters */
    sgmv_case(KDT_BF16, 64, SP_IDENTICAL, 2048, 8192, false); /* 1B-shape decode, one adapter */
    sgmv_case(KDT_BF16, 64, SP_IDENTICAL, 8192, 2048, false); /* ... down_proj: in 8192 */
    close_backends();
}

TEST(sgmv_bottleneck_parity) {
    open_backends();
    for (int d = 0; d < 3; d++)
        for (int ti = 0; ti < 3; ti++)
            for (int sp = 0; sp < SP_N; sp++) sgmv_case(DTS[d], TS[ti], (spread)sp, 67, 45, true);
    close_backends();
}

TEST(seg_scale_parity) {
    open_backends();
    for (int ti = 0; ti < 3; ti++)
        for (int sp = 0; sp < SP_N; sp++) {
            int T = TS[ti], dim = 67, sz[160];
            int n = spread_sizes((spread)sp, T, sz, 160);
            int32_t seg[161];
            seg[0] = 0;
            pbuf vec[160];
            void *vp[160], *vq[160];
            for (int i = 0; i < n; i++) {
                seg[i + 1] = seg[i] + sz[i];
                memset(&vec[i], 0, sizeof vec[i]);
                vp[i] = vq[i] = NULL;
                if (i % 3 == 1) continue; /* NULL: segment untouched */
                float *v = rand_f32((size_t)dim, 2.0f);
                vec[i] = pb_new(v, (size_t)dim * 4);
                vp[i] = vec[i].cp, vq[i] = vec[i].cu;
                free(v);
            }
            float *y = rand_f32((size_t)T * dim, 1.0f);
            pbuf py = pb_new(y, (size_t)T * dim * 4), ps = pb_new(seg, (size_t)(n + 1) * 4),
                 pt = pb_new(NULL, (size_t)n * sizeof(void *));
            ASSERT_EQ(CP->ops->upload(CP, pt.cp, vp, (size_t)n * sizeof(void *)), 0);
            ASSERT_EQ(CU->ops->upload(CU, pt.cu, vq, (size_t)n * sizeof(void *)), 0);
            BOTH(CP->ops->seg_scale(CP, (float *)py.cp, dim, n, (int32_t *)ps.cp, (const float *const *)pt.cp),
                 CU->ops->seg_scale(CU, (float *)py.cu, dim, n, (int32_t *)ps.cu, (const float *const *)pt.cu));
            char what[64];
            snprintf(what, sizeof what, "seg_scale T=%d %s", T, SPREAD_NAMES[sp]);
            pb_check(&py, what);
            pb_free(&py), pb_free(&ps), pb_free(&pt);
            for (int i = 0; i < n; i++) pb_free(&vec[i]);
            free(y);
        }
    close_backends();
}

/* ---- seg_rotate (OFT / BOFT input rotations) ----
 * Chains per segment: none (rows copied), one shared block of 16, two factors (blocks of 12 —
 * 32 at dim 8192 — through a random permutation, then 8), and one dense block of dim (one rotation over the whole input, dims
 * up to 96); dim 8192 takes the shared-memory opt-in path on CUDA (2·dim floats > 48 KiB). Both
 * backends accumulate each output with FMAs in the same order, so they should agree to the bit;
 * TOL_REL is the bound asserted. */
static void rot_case(int dim, int T, spread sp) {
    enum { NCH = 4 };
    int sz[160], n = spread_sizes(sp, T, sz, 160);
    int nf[NCH] = {0, 1, 2, dim <= 96 ? 1 : 0}, blocks[NCH][2] = {{0, 0}, {16, 0}, {dim % 12 ? 32 : 12, 8}, {dim, 0}};
    pbuf rb[NCH][2], pbm[NCH][2], chain[NCH];
    krot_factor kp[NCH][2], kq[NCH][2];
    memset(rb, 0, sizeof rb), memset(pbm, 0, sizeof pbm), memset(chain, 0, sizeof chain);
    for (int ch = 0; ch < NCH; ch++) {
        for (int f = 0; f < nf[ch]; f++) {
            int b = blocks[ch][f];
            bool shared = ch == 1, perm = ch == 2 && f == 0;
            size_t nr = (size_t)(shared ? b : dim) * b;
            float *r = rand_f32(nr, 1.0f / sqrtf((float)b));
            rb[ch][f] = pb_new(r, nr * 4);
            free(r);
            kp[ch][f] = (krot_factor){.r = (float *)rb[ch][f].cp, .block = b, .shared = shared};
            kq[ch][f] = (krot_factor){.r = (float *)rb[ch][f].cu, .block = b, .shared = shared};
            if (perm) {
                int32_t *g = malloc((size_t)dim * 4);
                for (int i = 0; i < dim; i++) g[i] = i;
                for (int i = dim - 1; i > 0; i--) {
                    int j = (int)(rnd() % (uint32_t)(i + 1)), t = g[i];
                    g[i] = g[j], g[j] = t;
                }
                pbm[ch][f] = pb_new(g, (size_t)dim * 4);
                free(g);
                kp[ch][f].perm = (int32_t *)pbm[ch][f].cp, kq[ch][f].perm = (int32_t *)pbm[ch][f].cu;
            }
        }
        if (!nf[ch]) continue;
        chain[ch] = pb_new(NULL, (size_t)nf[ch] * sizeof(krot_factor));
        ASSERT_EQ(CP->ops->upload(CP, chain[ch].cp, kp[ch], (size_t)nf[ch] * sizeof(krot_factor)), 0);
        ASSERT_EQ(CU->ops->upload(CU, chain[ch].cu, kq[ch], (size_t)nf[ch] * sizeof(krot_factor)), 0);
    }
    int32_t seg[161], nfac[160];
    void *fp[160], *fq[160];
    seg[0] = 0;
    for (int i = 0; i < n; i++) {
        int ch = i % NCH;
        seg[i + 1] = seg[i] + sz[i];
        nfac[i] = nf[ch];
        fp[i] = nf[ch] ? chain[ch].cp : NULL, fq[i] = nf[ch] ? chain[ch].cu : NULL;
    }
    float *x = rand_f32((size_t)T * dim, 1.0f);
    pbuf px = pb_new(x, (size_t)T * dim * 4), py = pb_new(NULL, (size_t)T * dim * 4),
         ps = pb_new(seg, (size_t)(n + 1) * 4), pn = pb_new(nfac, (size_t)n * 4),
         pt = pb_new(NULL, (size_t)n * sizeof(void *));
    ASSERT_EQ(CP->ops->upload(CP, pt.cp, fp, (size_t)n * sizeof(void *)), 0);
    ASSERT_EQ(CU->ops->upload(CU, pt.cu, fq, (size_t)n * sizeof(void *)), 0);
    ksegrot sc = {.n_segs = n, .seg_start = (int32_t *)ps.cp, .n_factors = (int32_t *)pn.cp,
                  .factors = (const krot_factor *const *)pt.cp, .max_block = dim};
    ksegrot su = sc;
    su.seg_start = (int32_t *)ps.cu, su.n_factors = (int32_t *)pn.cu, su.factors = (const krot_factor *const *)pt.cu;
    BOTH(CP->ops->seg_rotate(CP, (float *)px.cp, dim, &sc, (float *)py.cp),
         CU->ops->seg_rotate(CU, (float *)px.cu, dim, &su, (float *)py.cu));
    char what[64];
    snprintf(what, sizeof what, "seg_rotate dim=%d T=%d %s", dim, T, SPREAD_NAMES[sp]);
    pb_check(&py, what);
    pb_free(&px), pb_free(&py), pb_free(&ps), pb_free(&pn), pb_free(&pt);
    for (int ch = 0; ch < NCH; ch++) {
        for (int f = 0; f < 2; f++) pb_free(&rb[ch][f]), pb_free(&pbm[ch][f]);
        pb_free(&chain[ch]);
    }
    free(x);
}

TEST(seg_rotate_parity) {
    open_backends();
    for (int ti = 0; ti < 3; ti++)
        for (int sp = 0; sp < SP_N; sp++) rot_case(96, TS[ti], (spread)sp);
    rot_case(8192, 7, SP_UNIFORM);
    close_backends();
}

/* ---- sample (on-device token choice) ----
 * The same logits, parameters and uniform draws on both backends must give the same ids.
 * Rows cycle through greedy, plain temperature, top-k, top-p, both, and "off" values of each;
 * some rows hold tied maxima (lowest id wins) and -inf entries; the ld - vocab padding columns
 * hold 1e30 (read beyond vocab = a wrong id). ids: exact. logprob: |diff| <= 1e-5: both take
 * x[id] - logsumexp in double (CUDA adds the terms in a tree, ~1e-15 relative) and on CUDA a
 * truncating row's logsumexp passes through f32 (<= 0.5 ulp of |lse| < 20: ~1e-6). */
static const float SAMPLE_T[] = {0.0f, 0.8f, 1.0f, 1.3f, 0.7f, 1.0f, 2.0f};
static const int32_t SAMPLE_K[] = {0, 0, 40, 0, 5, 1000000, 1};
static const float SAMPLE_P[] = {0.0f, 1.0f, 0.0f, 0.9f, 0.5f, 0.3f, 0.95f};
#define N_SAMPLE_CFG 7

static void sample_case(int T, int V, bool truncating) {
    const int ld = V + 3;
    float *x = rand_f32((size_t)T * ld, 6.0f);
    float temp[133];
    int32_t k[133];
    float tp[133];
    double u[133];
    for (int r = 0; r < T; r++) {
        float *row = x + (size_t)r * ld;
        for (int c = V; c < ld; c++) row[c] = 1e30f;
        if (r % 5 == 3) row[V / 3] = row[V / 2] = 7.0f; /* tied maxima */
        if (r % 4 == 1) row[r % V] = -INFINITY;
        int c = truncating ? r % N_SAMPLE_CFG : (r % 2 ? 1 : 0);
        temp[r] = SAMPLE_T[c];
        k[r] = SAMPLE_K[c];
        tp[r] = SAMPLE_P[c];
        u[r] = (double)(rnd() % 1000003) / 1000003.0;
    }
    pbuf px = pb_new(x, (size_t)T * ld * 4), pt = pb_new(temp, (size_t)T * 4), pk = pb_new(k, (size_t)T * 4),
         pp = pb_new(tp, (size_t)T * 4), pu = pb_new(u, (size_t)T * 8), pid = pb_new(NULL, (size_t)T * 4),
         plp = pb_new(NULL, (size_t)T * 4);
    ksample_args ap = {T, V, (const float *)px.cp, ld, (const float *)pt.cp, (const int32_t *)pk.cp,
                       (const float *)pp.cp, (const double *)pu.cp, (int32_t *)pid.cp, (float *)plp.cp, truncating};
    ksample_args aq = {T, V, (const float *)px.cu, ld, (const float *)pt.cu, (const int32_t *)pk.cu,
                       (const float *)pp.cu, (const double *)pu.cu, (int32_t *)pid.cu, (float *)plp.cu, truncating};
    BOTH(CP->ops->sample(CP, &ap), CU->ops->sample(CU, &aq));
    char what[96];
    snprintf(what, sizeof what, "sample T=%d vocab=%d %s", T, V, truncating ? "with top-k/top-p" : "greedy/temperature");
    unsigned char *ip = pb_get(CP, pid.cp, pid.n, what), *iq = pb_get(CU, pid.cu, pid.n, what);
    unsigned char *lp = pb_get(CP, plp.cp, plp.n, what), *lq = pb_get(CU, plp.cu, plp.n, what);
    for (int r = 0; r < T; r++) {
        int32_t a, b;
        float la, lb;
        memcpy(&a, ip + SENT_BYTES + 4 * r, 4), memcpy(&b, iq + SENT_BYTES + 4 * r, 4);
        memcpy(&la, lp + SENT_BYTES + 4 * r, 4), memcpy(&lb, lq + SENT_BYTES + 4 * r, 4);
        if (a < 0 || a >= V) FAIL("%s: row %d: cpu id %d outside the vocabulary", what, r, a);
        if (a != b) FAIL("%s: row %d (T %g k %d p %g u %.6f): cpu id %d, cuda id %d", what, r, temp[r], k[r], tp[r], u[r], a, b);
        if (!(fabsf(la - lb) <= 1e-5f)) FAIL("%s: row %d: logprob cpu %.9g cuda %.9g", what, r, la, lb);
    }
    free(ip), free(iq), free(lp), free(lq);
    pb_free(&px), pb_free(&pt), pb_free(&pk), pb_free(&pp), pb_free(&pu), pb_free(&pid), pb_free(&plp);
    free(x);
}

TEST(sample_parity) {
    open_backends();
    ASSERT(CU->ops->supports_op(CU, KOP_SAMPLE, KDT_F32));
    for (int ti = 0; ti < 3; ti++)
        for (int v = 0; v < 2; v++) {
            sample_case(TS[ti], v ? 32000 : 1000, true);
            sample_case(TS[ti], v ? 32000 : 1000, false);
        }
    close_backends();
}

/* ---- end to end: greedy tokens on the default model, CPU vs CUDA ---- */

#define N_GREEDY 24
static const char *FIXTURES[] = {
    NULL, /* the base model alone */
    "lora_r1_all", "lora_r8_all", "lora_r64_all", "lora_rslora", "lora_dora", "lora_patterns", "lora_layers",
    "lora_lm_head", "lora_bf16", "ia3", "prompt_tuning", "prefix_tuning", "pfeiffer", "houlsby",
    "oft", "oft_coft", "boft", "ln_tuning",
};
#define N_FIXTURES (int)(sizeof FIXTURES / sizeof FIXTURES[0])

typedef struct {
    kbackend *kb;
    model *m;
    tokenizer *tok;
    adapter *ad[N_FIXTURES];
    engine *e;
} rig;

static void rig_open(rig *r, kbackend *kb) {
    char err[1024] = "";
    memset(r, 0, sizeof *r);
    r->kb = kb;
    if (model_load("models/stories260K", kb, &r->m, err, sizeof err) < 0) FAIL("model_load: %s", err);
    if (tokenizer_load("models/stories260K", &r->tok, err, sizeof err) < 0) FAIL("tokenizer_load: %s", err);
    for (int i = 1; i < N_FIXTURES; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, "tests/fixtures/adapters/%s", FIXTURES[i]);
        if (model_load_adapter(r->m, dir, &r->ad[i], err, sizeof err) < 0) FAIL("%s: %s", FIXTURES[i], err);
    }
    engine_config ec;
    engine_config_default(&ec);
    ec.max_seqs = N_FIXTURES;
    ec.max_batch_tokens = 64;
    ec.kv_cache_mb = 64;
    if (engine_create(&ec, r->m, kb, r->tok, &r->e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    ASSERT_EQ(engine_start(r->e), 0);
}

static void rig_close(rig *r) {
    engine_free(r->e);
    for (int i = 0; i < N_FIXTURES; i++) adapter_free(r->ad[i]);
    tokenizer_free(r->tok);
    model_free(r->m);
}

/* All fixtures (and the base) submitted at once: one mixed-adapter batch per step. */
static void greedy_all(rig *r, int32_t out[N_FIXTURES][N_GREEDY]) {
    static const char *prompts[] = {"Once upon a time", "The little dog", "Lily and Tom", "One day"};
    engine_request *q[N_FIXTURES];
    for (int i = 0; i < N_FIXTURES; i++) {
        int32_t *ids;
        size_t n;
        const char *t = prompts[i % 4];
        ASSERT_EQ(tokenizer_encode(r->tok, t, strlen(t), true, &ids, &n), 0);
        gen_params p;
        gen_params_default(&p);
        p.max_tokens = N_GREEDY;
        p.temperature = 0;
        p.logprobs = 0; /* token ids come back only with logprobs >= 0 */
        p.ignore_eos = true;
        p.adapter = r->ad[i];
        q[i] = engine_request_create(ids, (int)n, &p);
        ASSERT(q[i]);
        free(ids);
        int st = engine_submit(r->e, q[i]);
        if (st < 0) FAIL("engine_submit: %s", peftd_strerror(st));
    }
    for (int i = 0; i < N_FIXTURES; i++) {
        int n = 0;
        for (;;) { /* wait returns at the finish; take until it is seen */
            engine_request_wait(q[i]);
            engine_delta d;
            ASSERT_EQ(engine_request_take(q[i], &d), 0);
            if (d.finish == FINISH_ERROR)
                FAIL("%s: generation failed: %s", FIXTURES[i] ? FIXTURES[i] : "base", d.error);
            for (int k = 0; k < d.n_tokens && n < N_GREEDY; k++) out[i][n++] = d.tokens[k].id;
            int done = d.finish != FINISH_NONE;
            if (done && n < N_GREEDY) FAIL("%s: finished (%d) after %d tokens", FIXTURES[i] ? FIXTURES[i] : "base", (int)d.finish, n);
            engine_delta_free(&d);
            if (done) break;
        }
        ASSERT_EQ(n, N_GREEDY);
        engine_request_unref(q[i]);
    }
}

TEST(greedy_tokens_cpu_equal_cuda) {
    open_backends();
    static int32_t a[N_FIXTURES][N_GREEDY], b[N_FIXTURES][N_GREEDY];
    rig rc, rg;
    rig_open(&rc, CP);
    greedy_all(&rc, a);
    rig_close(&rc);
    rig_open(&rg, CU);
    greedy_all(&rg, b);
    rig_close(&rg);
    for (int i = 0; i < N_FIXTURES; i++)
        for (int k = 0; k < N_GREEDY; k++)
            if (a[i][k] != b[i][k])
                FAIL("%s: greedy token %d: cpu %d, cuda %d", FIXTURES[i] ? FIXTURES[i] : "base", k, a[i][k], b[i][k]);
    close_backends();
}

TEST_MAIN(get_rows_parity, get_rows_out_of_range_is_reported, get_rows_quant_parity, matmul_parity, matmul_group_parity, qmatmul_parity, rmsnorm_parity, rope_parity,
          rope_kv_store_parity, matmul_glu_parity,
          swiglu_add_parity, kv_store_attention_parity, attention_window_parity, attention_softcap_parity,
          geglu_softcap_parity, sgmv_lora_parity,
          sgmv_bottleneck_parity, seg_scale_parity, seg_rotate_parity, sample_parity, greedy_tokens_cpu_equal_cuda)
