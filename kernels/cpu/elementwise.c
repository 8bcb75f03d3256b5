/* kernels/cpu/elementwise.c — elementwise ops on f32 activations: swiglu
 * (silu(gate) * up, with the vector exp of simd.h), geglu (gelu_tanh(gate) * up) and softcap
 * (tanh(y / c) * c) with libm's double tanh per element (the same value for an element
 * wherever it sits in a batch), add (y += x) and add_bias (y[i,:] += b). Large arrays are
 * split into chunks across the pool. */
#include <math.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/simd.h"

/* Elements per task: 16 Ki floats = 64 KiB per operand, large enough that the
 * per-task overhead is noise, small enough to balance a few hundred rows. */
#define EW_CHUNK 16384

typedef struct {
    const float *a; /* gate / x */
    const float *b; /* up */
    float *out;     /* out / y */
    int64_t n;
} ew_ctx;

static void ew_range(const ew_ctx *c, int task, int64_t *i0, int64_t *i1) {
    *i0 = (int64_t)task * EW_CHUNK;
    *i1 = *i0 + EW_CHUNK < c->n ? *i0 + EW_CHUNK : c->n;
}

static void swiglu_task(void *vc, int task, int thread) {
    (void)thread;
    const ew_ctx *c = vc;
    int64_t i0, i1;
    ew_range(c, task, &i0, &i1);
    const kv_f32 one = kv_set1(1.0f), zero = kv_zero();
    int64_t i = i0;
    for (; i + KV_W <= i1; i += KV_W) {
        kv_f32 g = kv_load(c->a + i);
        kv_store(c->out + i, kv_mul(kv_div(g, kv_add(one, kv_exp(kv_sub(zero, g)))), kv_load(c->b + i)));
    }
    /* The tail goes through the same vector exp (masked), never libm's expf: an element's
     * value must not depend on whether the batch's size puts it in a vector or the tail,
     * or a row would compute differently alone than inside a batch. */
    if (i < i1) {
        int r = (int)(i1 - i);
        kv_f32 g = kv_load_part(c->a + i, r);
        kv_store_part(c->out + i, kv_mul(kv_div(g, kv_add(one, kv_exp(kv_sub(zero, g)))), kv_load_part(c->b + i, r)), r);
    }
}

/* torch's gelu(approximate='tanh') in double: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
static inline float gelu_tanh(float v) {
    const double k = 0.7978845608028654, x = v; /* sqrt(2 / pi) */
    return (float)(0.5 * x * (1.0 + tanh(k * (x + 0.044715 * x * x * x))));
}

static void geglu_task(void *vc, int task, int thread) {
    (void)thread;
    const ew_ctx *c = vc;
    int64_t i0, i1;
    ew_range(c, task, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) c->out[i] = gelu_tanh(c->a[i]) * c->b[i];
}

typedef struct {
    float *y;
    float cap;
    int64_t n;
} softcap_ctx;

static void softcap_task(void *vc, int task, int thread) {
    (void)thread;
    const softcap_ctx *c = vc;
    int64_t i0 = (int64_t)task * EW_CHUNK, i1 = i0 + EW_CHUNK < c->n ? i0 + EW_CHUNK : c->n;
    for (int64_t i = i0; i < i1; i++) c->y[i] = (float)tanh((double)(c->y[i] / c->cap)) * c->cap;
}

static void add_task(void *vc, int task, int thread) {
    (void)thread;
    const ew_ctx *c = vc;
    int64_t i0, i1;
    ew_range(c, task, &i0, &i1);
    int64_t i = i0;
    for (; i + KV_W <= i1; i += KV_W) kv_store(c->out + i, kv_add(kv_load(c->out + i), kv_load(c->a + i)));
    if (i < i1) {
        int r = (int)(i1 - i);
        kv_store_part(c->out + i, kv_add(kv_load_part(c->out + i, r), kv_load_part(c->a + i, r)), r);
    }
}

static int ew_tasks(int64_t n) {
    int64_t t = (n + EW_CHUNK - 1) / EW_CHUNK;
    return t > INT32_MAX ? -1 : (int)t;
}

int kcpu__swiglu(kbackend *kb, const float *gate, const float *up, int n, int dim, float *out) {
    if (n < 0 || dim <= 0) return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!gate || !up || !out) return PEFTD_EINVAL;
    ew_ctx c = {.a = gate, .b = up, .out = out, .n = (int64_t)n * dim};
    /* expf is ~20 element-ops. */
    kcpu__parallel(kcpu__impl(kb), ew_tasks(c.n), (double)c.n * 20, swiglu_task, &c);
    return 0;
}

int kcpu__geglu(kbackend *kb, const float *gate, const float *up, int n, int dim, float *out) {
    if (n < 0 || dim <= 0) return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!gate || !up || !out) return PEFTD_EINVAL;
    ew_ctx c = {.a = gate, .b = up, .out = out, .n = (int64_t)n * dim};
    int t = ew_tasks(c.n);
    if (t < 0) return PEFTD_EUNSUPPORTED;
    /* libm tanh is ~40 element-ops. */
    kcpu__parallel(kcpu__impl(kb), t, (double)c.n * 40, geglu_task, &c);
    return 0;
}

int kcpu__softcap(kbackend *kb, float *y, int64_t n, float cap) {
    if (n < 0 || !(cap > 0.0f) || !isfinite(cap)) return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!y) return PEFTD_EINVAL;
    softcap_ctx c = {.y = y, .cap = cap, .n = n};
    int t = ew_tasks(n);
    if (t < 0) return PEFTD_EUNSUPPORTED;
    kcpu__parallel(kcpu__impl(kb), t, (double)n * 40, softcap_task, &c);
    return 0;
}

int kcpu__add(kbackend *kb, float *y, const float *x, int64_t n) {
    if (n < 0) return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!y || !x) return PEFTD_EINVAL;
    ew_ctx c = {.a = x, .out = y, .n = n};
    int t = ew_tasks(n);
    if (t < 0) return PEFTD_EUNSUPPORTED;
    kcpu__parallel(kcpu__impl(kb), t, (double)n, add_task, &c);
    return 0;
}

/* add_bias: one task per row; the bias is widened to f32 once per call (like rmsnorm's
 * weight) into thread 0's scratch, which no task uses during this op. */
typedef struct {
    float *y;
    const float *b;
    int dim;
} bias_ctx;

static void add_bias_task(void *vc, int task, int thread) {
    (void)thread;
    const bias_ctx *c = vc;
    float *y = c->y + (int64_t)task * c->dim;
    int i = 0;
    for (; i + KV_W <= c->dim; i += KV_W) kv_store(y + i, kv_add(kv_load(y + i), kv_load(c->b + i)));
    if (i < c->dim) {
        int r = c->dim - i;
        kv_store_part(y + i, kv_add(kv_load_part(y + i, r), kv_load_part(c->b + i, r)), r);
    }
}

int kcpu__add_bias(kbackend *kb, float *y, int n, const kmat *b) {
    if (!b || n < 0 || b->rows != 1 || b->cols <= 0 || b->cols > INT32_MAX || !kcpu__dtype_ok(b->dtype))
        return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!y || !b->data) return PEFTD_EINVAL;
    kcpu_backend *cb = kcpu__impl(kb);
    bias_ctx c = {.y = y, .dim = (int)b->cols};
    /* f32 too: the view may sit at any byte offset of a mapping (unaligned-safe copy) */
    int rc = kcpu__scratch_reserve(cb, (size_t)c.dim);
    if (rc) return rc;
    float *b32 = kcpu__scratch(cb, 0);
    kv_row_to_f32(b->dtype, b->data, b32, c.dim);
    c.b = b32;
    kcpu__parallel(cb, n, (double)n * c.dim, add_bias_task, &c);
    return 0;
}
