/* server/model/llama_rope.c — the rotary frequencies of a llama_ctx and of one step. Static
 * rope_scaling kinds use one table for every row. dynamic (NTK) and longrope depend on the
 * sequence length of the forward that computes a row (transformers' seq_len =
 * max(position_ids) + 1): row r of sequence s at position p uses the table of
 * max(rope_len[s], p + 1) (model_config.c cfg_rope_scaling has the semantics), one table per
 * distinct key in the step (rope_freqs.c rope_table_key), uploaded with a row -> table index. */
#include <math.h>
#include <stdlib.h>

#include "server/model/llama_internal.h"
#include "server/model/rope_freqs.h"

int llama__rope_init(llama_ctx *c) {
    const model_config *cfg = &c->m->cfg;
    kbackend *kb = c->kb;
    int half = cfg->rope.rot_dim / 2;
    /* dynamic: table 0 (unscaled) + one per row at most; longrope: short, long */
    c->rope_max_tables = cfg->rope.kind == ROPE_DYNAMIC ? c->p.max_tokens + 1
                         : cfg->rope.kind == ROPE_LONGROPE ? 2 : 1;
    size_t tab_bytes = (size_t)c->rope_max_tables * half * sizeof(float);
    if (!(c->inv_freq = kb->ops->alloc(kb, tab_bytes))) return PEFTD_ENOMEM;
    if (!(c->rope_host = malloc(tab_bytes))) return PEFTD_ENOMEM;
    if (rope_seqlen_dependent(cfg)) {
        if (!(c->d_rope_tab = kb->ops->alloc(kb, (size_t)c->p.max_tokens * 4)) ||
            !(c->rope_tab = malloc((size_t)c->p.max_tokens * 4)) ||
            !(c->rope_keys = malloc((size_t)c->rope_max_tables * sizeof(int))))
            return PEFTD_ENOMEM;
    }
    double s;
    rope_freqs(cfg, c->rope_host, &s);
    if (cfg->rope.kind == ROPE_LONGROPE) rope_freqs_key(cfg, 1, c->rope_host + half);
    /* transformers multiplies cos and sin by s (yarn, longrope): the op does the same, in
     * f32, on the rotated dims only (partial rotary passes the rest unscaled) */
    c->rope_scale = (float)s;
    c->attn_scale = 1.0f / sqrtf((float)cfg->head_dim);
    int n0 = cfg->rope.kind == ROPE_LONGROPE ? 2 : 1;
    return kb->ops->upload(kb, c->inv_freq, c->rope_host, (size_t)n0 * half * sizeof(float));
}

void llama__rope_free(llama_ctx *c) {
    free(c->rope_host);
    free(c->rope_tab);
    free(c->rope_keys);
}

/* dynamic: the table index of key (0 = unscaled), adding a table to the step when new. */
static int dynamic_table(llama_ctx *c, int key, int *n_tables) {
    if (key == 0) return 0;
    for (int t = *n_tables - 1; t >= 1; t--)
        if (c->rope_keys[t] == key) return t;
    int t = (*n_tables)++, half = c->m->cfg.rope.rot_dim / 2;
    c->rope_keys[t] = key;
    rope_freqs_key(&c->m->cfg, key, c->rope_host + (size_t)t * half);
    return t;
}

int llama__rope_step(llama_ctx *c, const llama_batch *b, krope_freqs *f) {
    const model_config *cfg = &c->m->cfg;
    *f = (krope_freqs){.inv_freq = c->inv_freq, .n_tables = 1, .table = NULL, .scale = c->rope_scale};
    if (!rope_seqlen_dependent(cfg)) return 0;
    bool dynamic = cfg->rope.kind == ROPE_DYNAMIC;
    int n_tables = dynamic ? 1 : 2, half = cfg->rope.rot_dim / 2;
    for (int s = 0; s < b->n_seqs; s++) {
        int r0 = b->q_start[s], r1 = b->q_start[s + 1], floor = 0;
        if (r0 < 0 || r1 < r0 || r1 > b->n_tokens) return PEFTD_EINVAL;
        if (b->rope_len) {
            floor = b->rope_len[s];
        } else { /* one forward call per sequence: transformers' max(position_ids) + 1 */
            for (int r = r0; r < r1; r++)
                if (b->positions[r] + 1 > floor) floor = b->positions[r] + 1;
        }
        for (int r = r0; r < r1; r++) {
            int len = b->positions[r] + 1 > floor ? b->positions[r] + 1 : floor;
            int key = rope_table_key(cfg, len);
            c->rope_tab[r] = dynamic ? dynamic_table(c, key, &n_tables) : key;
        }
    }
    kbackend *kb = c->kb;
    if (n_tables > 1 && dynamic)
        CHECK(kb->ops->upload(kb, c->inv_freq + half, c->rope_host + half,
                              (size_t)(n_tables - 1) * half * sizeof(float)));
    CHECK(kb->ops->upload(kb, c->d_rope_tab, c->rope_tab, (size_t)b->n_tokens * 4));
    f->n_tables = n_tables;
    f->table = c->d_rope_tab;
    return 0;
}
