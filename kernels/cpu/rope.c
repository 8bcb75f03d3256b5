/* kernels/cpu/rope.c — in-place rotary position embedding, Hugging Face
 * "rotate_half" layout on the first rot_dim dims of each head: x[i] and
 * x[i + rot_dim/2] rotate together by pos * inv_freq[i]; dims from rot_dim on are
 * left as they are (partial rotary, transformers' Phi3 q_rot / q_pass split). Each row
 * uses its own frequency table when krope_freqs.table is given (dynamic NTK / longrope).
 * The angle is computed in f32 and cos/sin in f32 (cosf, sinf), then multiplied by the
 * scale in f32, as transformers does (freqs = pos.float() @ inv_freq.float(),
 * cos = emb.cos() * attention_scaling), so large positions round the same way as the
 * reference. */
#include <math.h>

#include "kernels/cpu/cpu_internal.h"

/* Largest head_dim supported: cos/sin tables live on the stack. The largest
 * head_dim of current Llama-family models is 256 (Gemma); 1024 leaves room. */
#define ROPE_MAX_HEAD_DIM 1024

typedef struct {
    float *x;
    const int32_t *pos;
    int n_heads, head_dim, rot_dim;
    const krope_freqs *f;
} rope_ctx;

static void rope_task(void *vc, int row, int thread) {
    (void)thread;
    const rope_ctx *c = vc;
    int half = c->rot_dim / 2;
    float cs[ROPE_MAX_HEAD_DIM / 2], sn[ROPE_MAX_HEAD_DIM / 2];
    float p = (float)c->pos[row], scale = c->f->scale;
    const float *inv = c->f->inv_freq + (c->f->table ? (int64_t)c->f->table[row] * half : 0);
    for (int i = 0; i < half; i++) {
        float a = p * inv[i];
        cs[i] = cosf(a) * scale;
        sn[i] = sinf(a) * scale;
    }
    float *x = c->x + (int64_t)row * c->n_heads * c->head_dim;
    for (int h = 0; h < c->n_heads; h++, x += c->head_dim) {
        for (int i = 0; i < half; i++) {
            float a = x[i], b = x[i + half];
            x[i] = a * cs[i] - b * sn[i];
            x[i + half] = b * cs[i] + a * sn[i];
        }
    }
}

int kcpu__rope(kbackend *kb, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
               int rot_dim, const krope_freqs *f) {
    if (n < 0 || n_heads <= 0 || head_dim <= 0 || head_dim % 2 || head_dim > ROPE_MAX_HEAD_DIM ||
        rot_dim <= 0 || rot_dim % 2 || rot_dim > head_dim)
        return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!x || !pos || !f || !f->inv_freq || f->n_tables < 1 || !isfinite(f->scale))
        return PEFTD_EINVAL;
    for (int i = 0; i < n; i++)
        if (pos[i] < 0 || (f->table && (f->table[i] < 0 || f->table[i] >= f->n_tables)))
            return PEFTD_ERANGE;
    rope_ctx c = {.x = x, .pos = pos, .n_heads = n_heads, .head_dim = head_dim,
                 .rot_dim = rot_dim, .f = f};
    /* ~20 element-ops per cos/sin pair, ~6 per rotated pair. */
    double work = (double)n * (rot_dim / 2) * (20.0 + 6.0 * n_heads);
    kcpu__parallel(kcpu__impl(kb), n, work, rope_task, &c);
    return 0;
}
