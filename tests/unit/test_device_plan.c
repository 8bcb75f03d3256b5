/* tests/unit/test_device_plan.c — the device memory plan (kernels/device_plan.h) over a table
 * of cases whose expected sizes were computed by hand (the arithmetic is in the comments):
 * a tiny model that fits, the same with half the remainder for KV, one byte short of the
 * fixed parts, one block short of a context (and exactly enough), the 1B Llama shape with a
 * 128-slot pool on 140 GB free, and arguments out of range. */
#include <string.h>

#include "kernels/device_plan.h"
#include "lib/status.h"
#include "tests/harness/test.h"

/* L 2, hidden 64, inter 128, 4 heads, 2 KV heads, head_dim 16 (q_dim 64, kv_dim 32), vocab 512. */
static const device_plan_model TINY = {2, 64, 128, 4, 2, 16, 512, 1000000};
/* 4 slots of 1000 -> 1024 bytes; 2 seqs, 8 rows, rank 8, blocks of 16, headroom 100000. */
static const device_plan_config TINY_CFG = {4, 1000, 2, 8, 8, 16, 100000, 1.0, 256, 2};
/* fixed = 1000000 + 4096 (pool) + 20736 (8*4*(192+128+64+256+8)) + 4160 (2*(2048+32)) + 100000
 *       = 1128992; one KV token = 2*2*32*2 = 256 bytes, one block 4096 bytes. */
#define TINY_FIXED 1128992ull

typedef struct {
    const char *name;
    uint64_t free_bytes;
    double kv_fraction;
    int rc;
    int64_t kv_blocks;
    uint64_t unused;
    const char *msg; /* expected in err (failures) */
} row;

static const row ROWS[] = {
    /* 2000000 - 1128992 = 871008 -> 212 blocks (868352), 2656 unused */
    {"fits", 2000000, 1.0, 0, 212, 2656, NULL},
    /* half of 871008 = 435504 -> 106 blocks (434176); unused 871008 - 434176 */
    {"half for KV", 2000000, 0.5, 0, 106, 871008 - 434176, NULL},
    {"one byte short of the fixed parts", TINY_FIXED - 1, 1.0, PEFTD_ENOMEM, 0, 0, "before any KV cache"},
    /* 15 blocks = 240 tokens < 256 */
    {"one block short of a context", TINY_FIXED + 16 * 4096 - 1, 1.0, PEFTD_ENOMEM, 15, 0,
     "fewer than one context of 256"},
    {"exactly one context", TINY_FIXED + 16 * 4096, 1.0, 0, 16, 0, NULL},
};

TEST(table_of_cases) {
    for (size_t i = 0; i < sizeof ROWS / sizeof ROWS[0]; i++) {
        const row *r = &ROWS[i];
        device_plan_config c = TINY_CFG;
        c.kv_fraction = r->kv_fraction;
        device_plan p;
        char err[512];
        int rc = device_plan_make(r->free_bytes, &TINY, &c, &p, err, sizeof err);
        if (rc != r->rc) FAIL("%s: rc %d, want %d (%s)", r->name, rc, r->rc, err);
        ASSERT_EQ(p.weights, 1000000);
        ASSERT_EQ(p.slot_pool, 4096);
        ASSERT_EQ(p.activations, 20736);
        ASSERT_EQ(p.logits, 4160);
        ASSERT_EQ(p.headroom, 100000);
        ASSERT_EQ(p.kv_token_bytes, 256);
        if (r->rc == 0) {
            if (p.kv_blocks != r->kv_blocks) FAIL("%s: %lld blocks, want %lld", r->name, (long long)p.kv_blocks,
                                                  (long long)r->kv_blocks);
            ASSERT_EQ(p.kv, (uint64_t)r->kv_blocks * 4096);
            ASSERT_EQ(p.kv_tokens, r->kv_blocks * 16);
            ASSERT_EQ(p.unused, r->unused);
            ASSERT_EQ(err[0], 0);
        } else {
            if (!strstr(err, r->msg)) FAIL("%s: message '%s' lacks '%s'", r->name, err, r->msg);
            ASSERT(strstr(err, "device memory plan does not fit"));
            ASSERT(!strchr(err, '\n')); /* one start-up line */
            if (r->kv_blocks) ASSERT_EQ(p.kv_blocks, r->kv_blocks);
        }
    }
}

TEST(llama_1b_with_128_slots_on_140_gb) {
    /* 16 layers, hidden 2048, inter 8192, 32 heads, 8 KV heads, head_dim 64, vocab 128256,
     * bf16 weights 2471628800 bytes; 128 slots of 24051712 (rank-16 all-linear, test_slot_pool)
     * = 3078619136; 64 seqs, 576 rows (64 + a 512-token chunk), rank 16:
     * activations 576*4*(6144+4096+1024+16384+16) = 63737856; logits 64*(128256*4+32) =
     * 32835584; headroom 1 GiB. fixed = 6720563200; rest = 133279436800; one KV token =
     * 2*16*512*2 = 32768 bytes, a block of 16 = 524288 -> 254210 blocks, 184320 unused. */
    device_plan_model m = {16, 2048, 8192, 32, 8, 64, 128256, 2471628800ull};
    device_plan_config c = {128, 24051712, 64, 576, 16, 16, 1ull << 30, 1.0, 131072, 2};
    device_plan p;
    char err[512], line[512];
    ASSERT_EQ(device_plan_make(140000000000ull, &m, &c, &p, err, sizeof err), 0);
    ASSERT_EQ(p.slot_pool, 3078619136ull);
    ASSERT_EQ(p.activations, 63737856);
    ASSERT_EQ(p.logits, 32835584);
    ASSERT_EQ(p.kv_token_bytes, 32768);
    ASSERT_EQ(p.kv_blocks, 254210);
    ASSERT_EQ(p.kv_tokens, 254210 * 16);
    ASSERT_EQ(p.unused, 184320);
    ASSERT_EQ(p.weights + p.slot_pool + p.activations + p.logits + p.headroom + p.kv + p.unused, 140000000000ull);
    device_plan_describe(&p, line, sizeof line);
    ASSERT(strstr(line, "254210 blocks, 4067360 tokens"));
    ASSERT(strstr(line, "adapter slots 2.87"));
    /* 78 GB of weights on an 80 GB card: (78e9 + the same pool, activations, logits, headroom)
     * / 2^30 = 76.60 GiB needed of 74.51 free -> the one line says why. */
    m.weight_bytes = 78000000000ull;
    ASSERT_EQ(device_plan_make(80000000000ull, &m, &c, &p, err, sizeof err), PEFTD_ENOMEM);
    ASSERT(strstr(err, "74.51 GiB free < 76.60 GiB"));
    /* f32 K/V (the kernels today): a token costs twice as much, a block 1048576 bytes:
     * 133279436800 / 1048576 = 127105 blocks, the same 184320 bytes unused. */
    m.weight_bytes = 2471628800ull;
    c.kv_elem_bytes = 4;
    ASSERT_EQ(device_plan_make(140000000000ull, &m, &c, &p, err, sizeof err), 0);
    ASSERT_EQ(p.kv_token_bytes, 65536);
    ASSERT_EQ(p.kv_blocks, 127105);
    ASSERT_EQ(p.unused, 184320);
    c.kv_elem_bytes = 3;
    ASSERT_EQ(device_plan_make(140000000000ull, &m, &c, &p, err, sizeof err), PEFTD_EINVAL);
}

TEST(arguments_out_of_range) {
    device_plan p;
    char err[256];
    device_plan_config c = TINY_CFG;
    c.kv_fraction = 0;
    ASSERT_EQ(device_plan_make(1u << 30, &TINY, &c, &p, err, sizeof err), PEFTD_EINVAL);
    ASSERT(strstr(err, "out of range"));
    c = TINY_CFG;
    c.max_rows = 1; /* fewer rows than sequences */
    ASSERT_EQ(device_plan_make(1u << 30, &TINY, &c, &p, err, sizeof err), PEFTD_EINVAL);
    device_plan_model m = TINY;
    m.n_kv_heads = 0;
    ASSERT_EQ(device_plan_make(1u << 30, &m, &TINY_CFG, &p, err, sizeof err), PEFTD_EINVAL);
    ASSERT_EQ(device_plan_make(1u << 30, NULL, &TINY_CFG, &p, err, sizeof err), PEFTD_EINVAL);
}

TEST_MAIN(table_of_cases, llama_1b_with_128_slots_on_140_gb, arguments_out_of_range)
