/* tests/unit/test_decode_graph.c — host logic of graph-replayed decode steps
 * (kernels/decode_graph.h): bucket sets and choice, padding a batch (exact arrays), the
 * capture/replay/eager decision over a sequence of steps (warm-up, capture, replay,
 * invalidation on a slot-pool layout or buffer change, giving up after failed captures,
 * disabled, too large), the env switch; and on the CPU backend, that padded rows are masked:
 * kv_store + attention + SGMV over a padded bucket give the real rows bit-identical results
 * and leave every real KV slot untouched. */
#include <stdlib.h>
#include <string.h>

#include "kernels/decode_graph.h"
#include "kernels/kernels.h"
#include "lib/status.h"
#include "tests/harness/test.h"

TEST(bucket_sets_and_choice) {
    decode_buckets b;
    ASSERT_EQ(decode_buckets_init(&b, 64), 0);
    static const int want64[] = {1, 2, 4, 8, 16, 32, 64};
    ASSERT_EQ(b.n, 7);
    for (int i = 0; i < 7; i++) ASSERT_EQ(b.size[i], want64[i]);
    ASSERT_EQ(decode_buckets_init(&b, 48), 0);
    ASSERT_EQ(b.n, 7);
    ASSERT_EQ(b.size[5], 32);
    ASSERT_EQ(b.size[6], 48);
    ASSERT_EQ(decode_bucket_for(&b, 33), 6);
    ASSERT_EQ(decode_bucket_for(&b, 32), 5);
    ASSERT_EQ(decode_bucket_for(&b, 3), 2);
    ASSERT_EQ(decode_bucket_for(&b, 1), 0);
    ASSERT_EQ(decode_bucket_for(&b, 49), -1);
    ASSERT_EQ(decode_bucket_for(&b, 0), -1);
    ASSERT_EQ(decode_buckets_init(&b, 1), 0);
    ASSERT_EQ(b.n, 1);
    ASSERT_EQ(b.size[0], 1);
    ASSERT_EQ(decode_buckets_init(&b, 0), PEFTD_EINVAL);
}

typedef struct {
    int32_t ids[8], pos[8], slot[8], len[8], q[9], bt[16], ss[10], sa[9];
    uint8_t mask[8];
} padbuf;
static decode_padded padded(padbuf *p) {
    memset(p, 0x7f, sizeof *p); /* every entry must be written */
    decode_padded o = {p->ids, p->pos, p->slot, p->len, p->q, p->bt, p->ss, p->sa, p->mask};
    return o;
}

TEST(padding_a_batch_to_its_bucket) {
    /* 3 sequences, 2 blocks each; segments [0,2) on adapter slot 5, [2,3) none. */
    int32_t ids[] = {11, 12, 13}, pos[] = {7, 3, 0}, slot[] = {23, 35, 40}, len[] = {8, 4, 1};
    int32_t bt[] = {1, 2, 2, 0, 2, 0}, ss[] = {0, 2, 3}, sa[] = {5, -1};
    decode_batch in = {3, ids, pos, slot, len, bt, 2, 2, ss, sa};
    padbuf pb;
    decode_padded o = padded(&pb);
    ASSERT_EQ(decode_pad(&in, 4, 63, 3, &o), 0);
    static const int32_t w_ids[] = {11, 12, 13, 0}, w_pos[] = {7, 3, 0, 0}, w_slot[] = {23, 35, 40, 63},
                         w_len[] = {8, 4, 1, 1}, w_q[] = {0, 1, 2, 3, 4}, w_bt[] = {1, 2, 2, 0, 2, 0, 3, 3},
                         w_ss[] = {0, 2, 3, 4, 4, 4}, w_sa[] = {5, -1, -1, -1, -1};
    static const uint8_t w_mask[] = {1, 1, 1, 0};
    ASSERT(!memcmp(pb.ids, w_ids, sizeof w_ids) && !memcmp(pb.pos, w_pos, sizeof w_pos));
    ASSERT(!memcmp(pb.slot, w_slot, sizeof w_slot) && !memcmp(pb.len, w_len, sizeof w_len));
    ASSERT(!memcmp(pb.q, w_q, sizeof w_q) && !memcmp(pb.bt, w_bt, sizeof w_bt));
    ASSERT(!memcmp(pb.ss, w_ss, sizeof w_ss) && !memcmp(pb.sa, w_sa, sizeof w_sa));
    ASSERT(!memcmp(pb.mask, w_mask, sizeof w_mask));
    /* A full bucket: no padding rows, the padding segment is empty. */
    o = padded(&pb);
    ASSERT_EQ(decode_pad(&in, 3, 63, 3, &o), 0);
    static const int32_t f_ss[] = {0, 2, 3, 3, 3};
    ASSERT(!memcmp(pb.ss, f_ss, sizeof f_ss));
    ASSERT_EQ(pb.sa[2], -1);
    ASSERT_EQ(pb.sa[3], -1);
    /* Refusals: a bucket too small, segments not covering the rows, decreasing starts. */
    ASSERT_EQ(decode_pad(&in, 2, 63, 3, &o), PEFTD_EINVAL);
    int32_t bad[] = {0, 2, 2};
    in.seg_start = bad;
    ASSERT_EQ(decode_pad(&in, 4, 63, 3, &o), PEFTD_EINVAL);
    int32_t dec[] = {0, 3, 2};
    in.seg_start = dec;
    ASSERT_EQ(decode_pad(&in, 4, 63, 3, &o), PEFTD_EINVAL);
    in.seg_start = ss;
    ASSERT_EQ(decode_pad(&in, 4, -1, 3, &o), PEFTD_EINVAL);
}

TEST(capture_replay_and_invalidation_sequence) {
    decode_graphs g;
    ASSERT_EQ(decode_graphs_init(&g, 64, true), 0);
    decode_graph_key k = {1, 1, 4};
    int bucket = 0;
    bool inv = true;
    ASSERT_EQ(decode_graphs_plan(&g, 3, &k, &bucket, &inv), DECODE_EAGER); /* warm-up */
    ASSERT_EQ(bucket, 4);
    ASSERT(!inv);
    ASSERT_EQ(decode_graphs_plan(&g, 4, &k, &bucket, &inv), DECODE_CAPTURE);
    decode_graphs_captured(&g, 4, true);
    ASSERT_EQ(decode_graphs_plan(&g, 3, &k, &bucket, &inv), DECODE_REPLAY);
    ASSERT_EQ(decode_graphs_plan(&g, 4, &k, &bucket, &inv), DECODE_REPLAY);
    ASSERT_EQ(bucket, 4);
    ASSERT_EQ(decode_graphs_plan(&g, 5, &k, &bucket, &inv), DECODE_EAGER); /* bucket 8 warms up */
    ASSERT_EQ(bucket, 8);
    /* A slot's contents changed (the pool's layout_gen moved): bucket 4 recaptures. */
    k.layout_gen = 2;
    ASSERT_EQ(decode_graphs_plan(&g, 2 + 1, &k, &bucket, &inv), DECODE_EAGER);
    ASSERT(inv);
    ASSERT_EQ(decode_graphs_plan(&g, 3, &k, &bucket, &inv), DECODE_CAPTURE);
    ASSERT(!inv); /* nothing valid left to destroy */
    decode_graphs_captured(&g, 3, true);
    ASSERT_EQ(decode_graphs_plan(&g, 3, &k, &bucket, &inv), DECODE_REPLAY);
    /* A fixed buffer was reallocated. */
    k.buffers_gen = 2;
    ASSERT_EQ(decode_graphs_plan(&g, 3, &k, &bucket, &inv), DECODE_EAGER);
    ASSERT(inv);
    ASSERT_EQ(g.invalidations, 2);
    ASSERT_EQ(g.captures, 2);
    ASSERT_EQ(g.replays, 3);
    /* Too large for any bucket: eager, unpadded. */
    ASSERT_EQ(decode_graphs_plan(&g, 65, &k, &bucket, &inv), DECODE_EAGER);
    ASSERT_EQ(bucket, 65);
    /* Two failed captures: bucket 16 stays eager, unpadded. */
    ASSERT_EQ(decode_graphs_plan(&g, 9, &k, &bucket, &inv), DECODE_EAGER);
    for (int i = 0; i < DECODE_GRAPH_MAX_FAILS; i++) {
        ASSERT_EQ(decode_graphs_plan(&g, 9, &k, &bucket, &inv), DECODE_CAPTURE);
        decode_graphs_captured(&g, 9, false);
    }
    ASSERT_EQ(decode_graphs_plan(&g, 9, &k, &bucket, &inv), DECODE_EAGER);
    ASSERT_EQ(bucket, 9);
    ASSERT_EQ(g.capture_failures, 2);
    decode_graphs_invalidate_all(&g);
    ASSERT_EQ(decode_graphs_plan(&g, 3, &k, &bucket, &inv), DECODE_EAGER);
    /* Disabled: always eager, never padded. */
    ASSERT_EQ(decode_graphs_init(&g, 64, false), 0);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(decode_graphs_plan(&g, 3, &k, &bucket, &inv), DECODE_EAGER);
        ASSERT_EQ(bucket, 3);
    }
}

TEST(env_switch_is_off_by_default) {
    unsetenv("PEFTD_CUDA_GRAPHS");
    ASSERT(!decode_graph_enabled());
    setenv("PEFTD_CUDA_GRAPHS", "0", 1);
    ASSERT(!decode_graph_enabled());
    setenv("PEFTD_CUDA_GRAPHS", "1", 1);
    ASSERT(decode_graph_enabled());
    unsetenv("PEFTD_CUDA_GRAPHS");
}

/* CPU backend: 3 real decode rows padded to 4. KV: 4 blocks of 4 slots, kv_dim 8 (2 KV heads
 * of 4, 4 query heads); block 3 is the trash block, slot 15 the trash slot. */
#define NB 4
#define BS 4
#define KVD 8
#define QD 16
#define IN 16
#define RK 2
static void run_rows(kbackend *kb, const decode_padded *d, int rows, const float *x, const float *q, const float *kv,
                     float *kc, float *vc, float *att, float *y, const float *A, float *t) {
    ASSERT_EQ(kb->ops->kv_store(kb, kv, kv + rows * KVD, d->kv_slot, rows, KVD, KDT_F32, kc, vc), 0);
    kattn_args a = {rows, d->q_start, d->kv_len, d->block_table, 2, BS, 4, 2, 4, 0.5f, q, kc, vc, att,
                    NULL, 0, 0, rows, KDT_F32};
    ASSERT_EQ(kb->ops->attention(kb, &a), 0);
    /* SGMV shrink with segment tables from the padding: adapter slot -> A pointer. */
    const void *ap[9];
    int32_t rank[9];
    float sc[9];
    int n_segs = rows + 1;
    for (int s = 0; s < n_segs; s++) {
        ap[s] = d->seg_adapter[s] >= 0 ? (const void *)(A + d->seg_adapter[s] * RK * IN) : NULL;
        rank[s] = d->seg_adapter[s] >= 0 ? RK : 0;
        sc[s] = 1;
    }
    ksgmv s = {n_segs, d->seg_start, ap, ap, rank, sc, NULL, NULL, NULL, KDT_F32, 0};
    ASSERT_EQ(kb->ops->sgmv_shrink(kb, x, IN, &s, t, RK), 0);
    memcpy(y, t, sizeof(float) * rows * RK);
}

TEST(padded_rows_are_masked_on_the_cpu_backend) {
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    test_rng_seed(7);
    float kc0[NB * BS * KVD], vc0[NB * BS * KVD], A[2 * RK * IN];
    test_fill(kc0, NB * BS * KVD);
    test_fill(vc0, NB * BS * KVD);
    test_fill(A, 2 * RK * IN);
    float x[4 * IN], q[4 * QD], kv[2 * 4 * KVD];
    test_fill(x, 4 * IN);
    test_fill(q, 4 * QD);
    test_fill(kv, 2 * 4 * KVD);
    /* seq 0: blocks {0,1}, writes slot 5 (kv_len 6); seq 1: block {2}, slot 9 (kv_len 2);
     * seq 2: block {1}, slot 7 (kv_len 4). Segments: [0,2) adapter 1, [2,3) adapter 0. */
    int32_t ids[] = {1, 2, 3}, pos[] = {5, 1, 3}, slot[] = {5, 9, 7}, len[] = {6, 2, 4};
    int32_t bt[] = {0, 1, 2, 0, 1, 0}, ss[] = {0, 2, 3}, sa[] = {1, 0};
    decode_batch in = {3, ids, pos, slot, len, bt, 2, 2, ss, sa};
    padbuf p3, p4;
    decode_padded d3 = padded(&p3), d4 = padded(&p4);
    ASSERT_EQ(decode_pad(&in, 3, 15, 3, &d3), 0);
    ASSERT_EQ(decode_pad(&in, 4, 15, 3, &d4), 0);
    float kc3[NB * BS * KVD], vc3[NB * BS * KVD], kc4[NB * BS * KVD], vc4[NB * BS * KVD];
    memcpy(kc3, kc0, sizeof kc0), memcpy(vc3, vc0, sizeof vc0), memcpy(kc4, kc0, sizeof kc0),
        memcpy(vc4, vc0, sizeof vc0);
    float kv3[2 * 3 * KVD]; /* the unpadded call's k then v rows */
    memcpy(kv3, kv, sizeof(float) * 3 * KVD);
    memcpy(kv3 + 3 * KVD, kv + 4 * KVD, sizeof(float) * 3 * KVD);
    float att3[3 * QD], att4[4 * QD], y3[3 * RK], y4[4 * RK], t[4 * RK];
    run_rows(kb, &d3, 3, x, q, kv3, kc3, vc3, att3, y3, A, t);
    run_rows(kb, &d4, 4, x, q, kv, kc4, vc4, att4, y4, A, t);
    ASSERT(!memcmp(att3, att4, sizeof att3)); /* real rows bit-identical */
    ASSERT(!memcmp(y3, y4, sizeof y3));
    /* Every KV slot but the trash slot is as the unpadded step left it. */
    for (int s = 0; s < NB * BS; s++) {
        if (s == 15) continue;
        ASSERT(!memcmp(kc3 + s * KVD, kc4 + s * KVD, KVD * sizeof(float)));
        ASSERT(!memcmp(vc3 + s * KVD, vc4 + s * KVD, KVD * sizeof(float)));
    }
    ASSERT(memcmp(kc4 + 15 * KVD, kc0 + 15 * KVD, KVD * sizeof(float))); /* the pad wrote its own slot */
    kbackend_destroy(kb);
}

TEST_MAIN(bucket_sets_and_choice, padding_a_batch_to_its_bucket, capture_replay_and_invalidation_sequence,
          env_switch_is_off_by_default, padded_rows_are_masked_on_the_cpu_backend)
