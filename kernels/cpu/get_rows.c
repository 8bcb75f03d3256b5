/* kernels/cpu/get_rows.c — row gather: out[i,:] = f32(table[ids[i], :]), for
 * embedding lookup (f32/f16/bf16 tables, quantized tables dequantized by quant_ref.c) and
 * f32 activation gathers. */
#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/quant_ref.h"
#include "kernels/cpu/simd.h"

typedef struct {
    const kmat *t;
    const int32_t *ids;
    float *out;
} gr_ctx;

static void gr_task(void *vc, int i, int thread) {
    (void)thread;
    const gr_ctx *c = vc;
    int64_t cols = c->t->cols;
    kdtype dt = c->t->dtype;
    const char *src = (const char *)c->t->data + (size_t)c->ids[i] * kdtype_row_bytes(dt, cols);
    if (kdtype_is_quant(dt))
        qref_dequantize(kdtype_ggml_type(dt), src, c->out + (int64_t)i * cols, cols);
    else
        kv_row_to_f32(dt, src, c->out + (int64_t)i * cols, cols);
}

int kcpu__get_rows(kbackend *kb, const kmat *table, const int32_t *ids, int n, float *out) {
    if (!table || n < 0 || (!kcpu__dtype_ok(table->dtype) && !kdtype_is_quant(table->dtype)) ||
        table->rows <= 0 || table->cols <= 0 || kdtype_row_bytes(table->dtype, table->cols) == 0)
        return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!ids || !out || !table->data) return PEFTD_EINVAL;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= table->rows) return PEFTD_ERANGE;
    gr_ctx c = {.t = table, .ids = ids, .out = out};
    kcpu__parallel(kcpu__impl(kb), n, (double)n * table->cols, gr_task, &c);
    return 0;
}
