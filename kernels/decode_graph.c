/* kernels/decode_graph.c — buckets, padding and the capture/replay decision for graph-replayed
 * decode steps (decode_graph.h). */
#include "kernels/decode_graph.h"

#include <stdlib.h>
#include <string.h>

#include "lib/status.h"

int decode_buckets_init(decode_buckets *b, int max_rows) {
    if (!b || max_rows < 1) return PEFTD_EINVAL;
    memset(b, 0, sizeof *b);
    for (long s = 1; s < max_rows && b->n < DECODE_GRAPH_MAX_BUCKETS - 1; s *= 2) b->size[b->n++] = (int)s;
    b->size[b->n++] = max_rows;
    return 0;
}

int decode_bucket_for(const decode_buckets *b, int n_rows) {
    if (!b || n_rows < 1) return -1;
    for (int i = 0; i < b->n; i++)
        if (b->size[i] >= n_rows) return i;
    return -1;
}

int decode_pad(const decode_batch *in, int bucket, int32_t trash_slot, int32_t trash_block, decode_padded *out) {
    if (!in || !out || in->n < 0 || bucket < in->n || bucket < 1 || in->max_blocks < 1 || in->n_segs < 0 ||
        in->n_segs > bucket || trash_slot < 0 || trash_block < 0)
        return PEFTD_EINVAL;
    int n = in->n;
    if (n > 0 && (!in->ids || !in->pos || !in->kv_slot || !in->kv_len || !in->block_table)) return PEFTD_EINVAL;
    if (in->n_segs > 0) {
        if (!in->seg_start || !in->seg_adapter || in->seg_start[0] != 0 || in->seg_start[in->n_segs] != n)
            return PEFTD_EINVAL;
        for (int s = 0; s < in->n_segs; s++)
            if (in->seg_start[s + 1] < in->seg_start[s]) return PEFTD_EINVAL;
    } else if (n > 0) {
        return PEFTD_EINVAL; /* rows with no segment: the step always has one (adapter -1 or not) */
    }
    int mb = in->max_blocks;
    for (int r = 0; r < bucket; r++) {
        bool real = r < n;
        out->ids[r] = real ? in->ids[r] : 0;
        out->pos[r] = real ? in->pos[r] : 0;
        out->kv_slot[r] = real ? in->kv_slot[r] : trash_slot;
        out->kv_len[r] = real ? in->kv_len[r] : 1;
        out->q_start[r] = r;
        out->row_mask[r] = real;
        int32_t *bt = out->block_table + (size_t)r * mb;
        if (real) memcpy(bt, in->block_table + (size_t)r * mb, (size_t)mb * sizeof *bt);
        else
            for (int j = 0; j < mb; j++) bt[j] = trash_block;
    }
    out->q_start[bucket] = bucket;
    int s = 0;
    for (; s < in->n_segs; s++) {
        out->seg_start[s] = in->seg_start[s];
        out->seg_adapter[s] = in->seg_adapter[s];
    }
    out->seg_start[s] = n; /* the padding segment [n, bucket): no adapter */
    out->seg_adapter[s] = -1;
    for (int t = s + 1; t <= bucket; t++) { /* then empty segments */
        out->seg_start[t] = bucket;
        out->seg_adapter[t] = -1;
    }
    out->seg_start[bucket + 1] = bucket;
    return 0;
}

bool decode_graph_enabled(void) {
    const char *v = getenv("PEFTD_CUDA_GRAPHS");
    return v && !strcmp(v, "1");
}

int decode_graphs_init(decode_graphs *g, int max_rows, bool enabled) {
    if (!g) return PEFTD_EINVAL;
    memset(g, 0, sizeof *g);
    g->enabled = enabled;
    return decode_buckets_init(&g->buckets, max_rows);
}

static bool same_key(const decode_graph_key *a, const decode_graph_key *b) {
    return a->layout_gen == b->layout_gen && a->buffers_gen == b->buffers_gen && a->max_blocks == b->max_blocks;
}

decode_action decode_graphs_plan(decode_graphs *g, int n_rows, const decode_graph_key *k, int *bucket,
                                 bool *invalidate) {
    if (invalidate) *invalidate = false;
    if (bucket) *bucket = n_rows;
    int i = g && k ? decode_bucket_for(&g->buckets, n_rows) : -1;
    if (!g || !g->enabled || i < 0) {
        if (g) g->eager_steps++;
        return DECODE_EAGER;
    }
    decode_graph_state *s = &g->st[i];
    if (s->fails >= DECODE_GRAPH_MAX_FAILS) {
        g->eager_steps++;
        return DECODE_EAGER; /* unpadded: no graph will use the padding */
    }
    if (bucket) *bucket = g->buckets.size[i];
    if (!same_key(&s->key, k)) {
        if (s->valid) {
            g->invalidations++;
            if (invalidate) *invalidate = true;
        }
        s->valid = false;
        s->warmed = false;
        s->key = *k;
    }
    if (s->valid) {
        g->replays++;
        return DECODE_REPLAY;
    }
    if (!s->warmed) {
        s->warmed = true;
        g->eager_steps++;
        return DECODE_EAGER;
    }
    return DECODE_CAPTURE;
}

void decode_graphs_captured(decode_graphs *g, int n_rows, bool ok) {
    int i = g ? decode_bucket_for(&g->buckets, n_rows) : -1;
    if (i < 0) return;
    if (ok) {
        g->st[i].valid = true;
        g->captures++;
    } else {
        g->st[i].fails++;
        g->capture_failures++;
    }
}

void decode_graphs_invalidate_all(decode_graphs *g) {
    if (!g) return;
    for (int i = 0; i < g->buckets.n; i++) {
        if (g->st[i].valid) g->invalidations++;
        g->st[i].valid = g->st[i].warmed = false;
    }
}
