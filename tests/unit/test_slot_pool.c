/* tests/unit/test_slot_pool.c — the device adapter slot pool's host logic (kernels/slot_pool.h)
 * driven by a fake device that records every device action in order and performs copies
 * only when the test "completes" the copy stream (as an asynchronous DMA would): the slot
 * sizing rule against hand-computed sizes, allocation and reuse, LRU eviction order, pinned
 * slots never evicted or overwritten, hot swap of a new version while the old one is in
 * flight, upload -> event -> compute-wait ordering, staging buffers not reused before their
 * upload completes, exhaustion as an error for the asking call only, no device alloc/free
 * after create. */
#include <string.h>

#include "kernels/slot_pool.h"
#include "lib/status.h"
#include "tests/harness/test.h"

#define MAXLOG 256
#define MAXQ 64
typedef struct {
    char log[MAXLOG][48];
    int n_log;
    int region_allocs, region_frees, host_allocs, host_frees;
    struct {
        void *dst;
        const void *src;
        size_t bytes;
    } q[MAXQ]; /* copies issued, not yet performed */
    int nq;
    int recorded[64];  /* event -> 1 when recorded and not yet complete */
    int ever[64];      /* event was recorded at least once */
    bool fail_region;
} fake;

static void logf_(fake *f, const char *s, int a) {
    ASSERT(f->n_log < MAXLOG);
    snprintf(f->log[f->n_log++], sizeof f->log[0], "%s %d", s, a);
}
static void *f_region_alloc(void *ctx, size_t bytes) {
    fake *f = ctx;
    f->region_allocs++;
    return f->fail_region ? NULL : calloc(1, bytes);
}
static void f_region_free(void *ctx, void *p) {
    ((fake *)ctx)->region_frees++;
    free(p);
}
static void *f_host_alloc(void *ctx, size_t bytes) {
    ((fake *)ctx)->host_allocs++;
    return malloc(bytes);
}
static void f_host_free(void *ctx, void *p) {
    ((fake *)ctx)->host_frees++;
    free(p);
}
static int f_copy(void *ctx, void *dst, const void *src, size_t bytes) {
    fake *f = ctx;
    ASSERT(f->nq < MAXQ);
    f->q[f->nq].dst = dst, f->q[f->nq].src = src, f->q[f->nq].bytes = bytes;
    f->nq++;
    logf_(f, "copy", (int)bytes);
    return 0;
}
static int f_record(void *ctx, int ev) {
    fake *f = ctx;
    f->recorded[ev] = 1, f->ever[ev] = 1;
    logf_(f, "record", ev);
    return 0;
}
static int f_query(void *ctx, int ev) {
    fake *f = ctx;
    return !f->recorded[ev];
}
static int f_wait(void *ctx, int ev) {
    fake *f = ctx;
    ASSERT(f->ever[ev]); /* a wait on an event never recorded would not order anything */
    logf_(f, "wait", ev);
    return 0;
}
/* The copy stream runs: every queued copy lands (reading the staging buffer NOW), every
 * recorded event completes. */
static void complete(fake *f) {
    for (int i = 0; i < f->nq; i++) memcpy(f->q[i].dst, f->q[i].src, f->q[i].bytes);
    f->nq = 0;
    memset(f->recorded, 0, sizeof f->recorded);
}
static const slot_dev_ops OPS = {f_region_alloc, f_region_free, f_host_alloc, f_host_free,
                                 f_copy,         f_record,      f_query,      f_wait};

static slot_pool *mk(fake *f, size_t slot_bytes, int n_slots, int n_staging) {
    memset(f, 0, sizeof *f);
    slot_pool *p = NULL;
    char err[160];
    ASSERT_EQ(slot_pool_create(&OPS, f, slot_bytes, n_slots, n_staging, &p, err, sizeof err), 0);
    ASSERT(p);
    return p;
}

static int load(slot_pool *p, const char *key, unsigned char fill, size_t bytes) {
    unsigned char buf[1024];
    ASSERT(bytes <= sizeof buf);
    memset(buf, fill, bytes);
    int s = -1;
    char err[160];
    int rc = slot_pool_load(p, key, buf, bytes, &s, err, sizeof err);
    memset(buf, 0xEE, sizeof buf); /* the caller may reuse its buffer at once */
    return rc < 0 ? rc : s;
}

/* Every byte of slot s's first n bytes equals v (read through slot_pool_use's address). */
static bool slot_holds(slot_pool *p, int s, unsigned char v, size_t n) {
    const unsigned char *d = slot_pool_use(p, s);
    if (!d) return false;
    for (size_t i = 0; i < n; i++)
        if (d[i] != v) return false;
    return true;
}

TEST(sizing_rule_matches_hand_computed_sizes) {
    /* 1B Llama shape, rank 16, bf16, all seven linears: per layer A = 16 * (6*2048 + 8192) * 2
     * = 655360, B = 16 * (2048+512+512+2048+8192+8192+2048) * 2 = 753664, vectors = 23552 * 4
     * = 94208 -> 1503232 per layer, x16 layers = 24051712 bytes. */
    int in[7] = {2048, 2048, 2048, 2048, 2048, 2048, 8192}, out[7] = {2048, 512, 512, 2048, 8192, 8192, 2048};
    ASSERT_EQ(slot_pool_slot_bytes(16, 7, in, out, 16, 2), 24051712);
    /* rank-8 q,v: A 8*2048*2 *2 = 65536, B 8*(2048+512)*2 = 40960, vec (2048+512)*4 = 10240. */
    int in2[2] = {2048, 2048}, out2[2] = {2048, 512};
    ASSERT_EQ(slot_pool_slot_bytes(16, 2, in2, out2, 8, 2), 16 * (65536 + 40960 + 10240));
    /* Every tensor rounds up to 256 bytes: in 3, out 5, rank 1, f32 -> 3 x 256. */
    int a = 3, b = 5;
    ASSERT_EQ(slot_pool_slot_bytes(1, 1, &a, &b, 1, 4), 768);
    ASSERT_EQ(slot_pool_slot_bytes(1, 1, &a, &b, 0, 4), 0);
    ASSERT_EQ(slot_pool_slot_bytes(1, 1, &a, &b, 1, 3), 0);
}

TEST(one_region_allocated_once_and_reused) {
    fake f;
    slot_pool *p = mk(&f, 1000, 3, 2);
    ASSERT_EQ(f.region_allocs, 1);
    ASSERT_EQ(f.host_allocs, 2);
    ASSERT_EQ(slot_pool_slot_size(p), 1024); /* rounded up to SLOT_POOL_ALIGN */
    int a = load(p, "aaa", 1, 100);
    ASSERT(a >= 0);
    ASSERT_EQ(f.nq, 1);
    ASSERT(!slot_pool_ready(p, a));
    complete(&f);
    ASSERT_EQ(slot_pool_poll(p), 0);
    ASSERT(slot_pool_ready(p, a));
    ASSERT(slot_holds(p, a, 1, 100));
    int logged = f.n_log;
    ASSERT_EQ(load(p, "aaa", 9, 100), a); /* resident: no copy, no event */
    ASSERT_EQ(f.n_log, logged);
    ASSERT_EQ(slot_pool_find(p, "aaa"), a);
    ASSERT_EQ(slot_pool_find(p, "zzz"), -1);
    /* Fill, evict and refill many times: still one region, no frees. */
    char k[16];
    for (int i = 0; i < 50; i++) {
        snprintf(k, sizeof k, "k%d", i);
        ASSERT(load(p, k, (unsigned char)i, 64) >= 0);
        complete(&f);
    }
    ASSERT_EQ(f.region_allocs, 1);
    ASSERT_EQ(f.region_frees, 0);
    slot_pool_stats st;
    slot_pool_get_stats(p, &st);
    ASSERT_EQ(st.loads, 51);
    ASSERT_EQ(st.evictions, 48);
    ASSERT_EQ(st.hits, 1);
    ASSERT_EQ(st.misses, 1);
    slot_pool_free(p);
    ASSERT_EQ(f.region_frees, 1);
    ASSERT_EQ(f.host_frees, 2);
}

TEST(lru_eviction_order) {
    fake f;
    slot_pool *p = mk(&f, 256, 3, 1);
    int a = load(p, "a", 1, 10);
    complete(&f);
    int b = load(p, "b", 2, 10);
    complete(&f);
    int c = load(p, "c", 3, 10);
    complete(&f);
    ASSERT(a >= 0 && b >= 0 && c >= 0 && a != b && b != c && a != c);
    ASSERT_EQ(slot_pool_find(p, "a"), a);     /* a is now the most recent: b is the LRU */
    ASSERT_EQ(load(p, "d", 4, 10), b);
    complete(&f);
    ASSERT_EQ(slot_pool_find(p, "b"), -1);
    ASSERT(slot_pool_use(p, a) != NULL);      /* a step used a: c is the LRU */
    ASSERT_EQ(load(p, "e", 5, 10), c);
    complete(&f);
    ASSERT_EQ(load(p, "f", 6, 10), b);        /* then d (loaded before a's use, e after it) */
    complete(&f);
    ASSERT(slot_holds(p, b, 6, 10) && slot_holds(p, c, 5, 10) && slot_holds(p, a, 1, 10));
    slot_pool_free(p);
}

TEST(pinned_and_loading_slots_are_never_evicted) {
    fake f;
    slot_pool *p = mk(&f, 256, 2, 2);
    int a = load(p, "a", 1, 32), b = load(p, "b", 2, 32);
    complete(&f);
    ASSERT_EQ(slot_pool_pin(p, a), 0);
    ASSERT_EQ(slot_pool_pin(p, a), 0);
    ASSERT_EQ(slot_pool_pin(p, b), 0);
    unsigned char buf[32] = {0};
    int s = 7;
    char err[160];
    ASSERT_EQ(slot_pool_load(p, "c", buf, 32, &s, err, sizeof err), PEFTD_EBUSY);
    ASSERT_EQ(s, -1);
    ASSERT(strstr(err, "all 2 device adapter slots are pinned"));
    ASSERT_EQ(f.nq, 0); /* nothing was written */
    ASSERT(slot_holds(p, a, 1, 32) && slot_holds(p, b, 2, 32));
    ASSERT_EQ(slot_pool_find(p, "a"), a);
    ASSERT_EQ(slot_pool_unpin(p, b), 0);
    ASSERT_EQ(load(p, "c", 3, 32), b); /* a keeps both pins: b, though more recent, goes */
    ASSERT_EQ(slot_pool_unpin(p, a), 0);
    /* a is pinned once more; c is loading (unpinned but its upload is in flight) */
    ASSERT_EQ(load(p, "d", 4, 32), PEFTD_EBUSY);
    complete(&f);
    ASSERT_EQ(load(p, "d", 4, 32), b);
    complete(&f);
    ASSERT(slot_holds(p, a, 1, 32) && slot_holds(p, b, 4, 32));
    ASSERT_EQ(slot_pool_unpin(p, a), 0);
    ASSERT_EQ(slot_pool_unpin(p, a), PEFTD_EINVAL); /* more unpins than pins */
    slot_pool_stats st;
    slot_pool_get_stats(p, &st);
    ASSERT_EQ(st.busy_refusals, 2);
    ASSERT_EQ(st.pinned, 0);
    slot_pool_free(p);
}

TEST(hot_swap_keeps_the_old_version_while_in_flight) {
    fake f;
    slot_pool *p = mk(&f, 256, 3, 1);
    int v1 = load(p, "sha-v1", 0x11, 64);
    complete(&f);
    ASSERT_EQ(slot_pool_pin(p, v1), 0); /* a sequence admitted on v1 is decoding */
    uint64_t g0 = slot_pool_layout_gen(p);
    int v2 = load(p, "sha-v2", 0x22, 64);
    ASSERT(v2 >= 0 && v2 != v1);
    ASSERT(slot_pool_layout_gen(p) != g0); /* a slot's contents changed */
    complete(&f);
    slot_pool_retire(p, "sha-v1");
    ASSERT_EQ(slot_pool_find(p, "sha-v1"), -1); /* new requests no longer find v1 ... */
    ASSERT(slot_holds(p, v1, 0x11, 64));         /* ... but the running sequence reads it intact */
    ASSERT_EQ(slot_pool_pin(p, v1), PEFTD_EINVAL); /* nobody new may pin a retired version */
    uint64_t g1 = slot_pool_layout_gen(p);
    ASSERT_EQ(slot_pool_unpin(p, v1), 0);       /* its last unpin frees the slot */
    ASSERT(slot_pool_layout_gen(p) != g1);
    ASSERT(slot_pool_use(p, v1) == NULL);
    int other = load(p, "x", 0x33, 64);         /* free slots first, then the freed v1 slot */
    complete(&f);
    int again = load(p, "y", 0x44, 64);
    complete(&f);
    ASSERT(other != v2 && again != v2 && (other == v1 || again == v1));
    ASSERT(slot_holds(p, v2, 0x22, 64));
    /* Retiring an unpinned version frees it at once; retiring an absent key is a no-op. */
    slot_pool_retire(p, "sha-v2");
    ASSERT(slot_pool_use(p, v2) == NULL);
    slot_pool_retire(p, "absent");
    slot_pool_stats st;
    slot_pool_get_stats(p, &st);
    ASSERT_EQ(st.used, 2);
    ASSERT_EQ(st.evictions, 0); /* no LRU victim was needed */
    slot_pool_free(p);
}

TEST(upload_event_and_wait_ordering) {
    fake f;
    slot_pool *p = mk(&f, 512, 4, 1);
    int a = load(p, "a", 7, 300);
    /* copy (from the staging buffer), then the slot's event, then the staging buffer's */
    ASSERT_EQ(f.n_log, 3);
    ASSERT_STREQ(f.log[0], "copy 300");
    char want[48];
    snprintf(want, sizeof want, "record %d", a);
    ASSERT_STREQ(f.log[1], want);
    ASSERT_STREQ(f.log[2], "record 4"); /* n_slots + staging index 0 */
    /* A step reading a: the compute stream waits on a's event, once per load. */
    ASSERT(slot_pool_use(p, a) != NULL);
    snprintf(want, sizeof want, "wait %d", a);
    ASSERT_EQ(f.n_log, 4);
    ASSERT_STREQ(f.log[3], want);
    ASSERT(slot_pool_use(p, a) != NULL);
    ASSERT_EQ(f.n_log, 4);
    /* One staging buffer, still uploading: a second load is refused, not corrupted. */
    unsigned char buf[300];
    memset(buf, 8, sizeof buf);
    int s = -1;
    char err[160];
    ASSERT_EQ(slot_pool_load(p, "b", buf, 300, &s, err, sizeof err), PEFTD_EBUSY);
    ASSERT(strstr(err, "staging"));
    ASSERT(slot_pool_staging_busy(p));
    ASSERT_EQ(f.nq, 1);
    complete(&f); /* the DMA reads staging now: it must still hold a's bytes */
    ASSERT(slot_pool_staging_busy(p)); /* until a poll sees the event */
    ASSERT_EQ(slot_pool_poll(p), 0);
    ASSERT(!slot_pool_staging_busy(p));
    ASSERT(slot_holds(p, a, 7, 300));
    int b = load(p, "b", 8, 300);
    ASSERT(b >= 0 && b != a);
    complete(&f);
    ASSERT(slot_holds(p, b, 8, 300) && slot_holds(p, a, 7, 300));
    /* Each wait in the log comes after the record of the same event. */
    for (int i = 0; i < f.n_log; i++) {
        int ev;
        if (sscanf(f.log[i], "wait %d", &ev) != 1) continue;
        snprintf(want, sizeof want, "record %d", ev);
        int rec = -1;
        for (int j = 0; j < i; j++)
            if (!strcmp(f.log[j], want)) rec = j;
        ASSERT(rec >= 0);
    }
    slot_pool_free(p);
}

TEST(exhaustion_and_oversize_fail_only_the_asking_load) {
    fake f;
    slot_pool *p = mk(&f, 256, 1, 1);
    int a = load(p, "a", 1, 256);
    complete(&f);
    ASSERT_EQ(slot_pool_pin(p, a), 0);
    unsigned char big[300] = {0};
    int s = 3;
    char err[200];
    ASSERT_EQ(slot_pool_load(p, "big", big, 300, &s, err, sizeof err), PEFTD_E2BIG);
    ASSERT(strstr(err, "needs 300 bytes") && strstr(err, "holds 256"));
    ASSERT_EQ(load(p, "b", 2, 16), PEFTD_EBUSY);
    ASSERT(slot_holds(p, a, 1, 256));
    ASSERT_EQ(slot_pool_find(p, "a"), a);
    ASSERT_EQ(slot_pool_load(p, NULL, big, 1, &s, err, sizeof err), PEFTD_EINVAL);
    ASSERT_EQ(slot_pool_pin(p, 5), PEFTD_EINVAL);
    slot_pool_free(p);
}

TEST(create_failures_say_why) {
    fake f;
    memset(&f, 0, sizeof f);
    f.fail_region = true;
    slot_pool *p = (slot_pool *)&f;
    char err[200];
    ASSERT_EQ(slot_pool_create(&OPS, &f, 1 << 20, 128, 2, &p, err, sizeof err), PEFTD_ENOMEM);
    ASSERT(p == NULL);
    ASSERT(strstr(err, "cannot allocate 128 slots x 1048576 bytes (128.0 MiB)"));
    ASSERT_EQ(f.host_allocs, 0);
    ASSERT_EQ(slot_pool_create(&OPS, &f, 0, 4, 1, &p, err, sizeof err), PEFTD_EINVAL);
    ASSERT_EQ(slot_pool_create(&OPS, &f, 256, 0, 1, &p, err, sizeof err), PEFTD_EINVAL);
}

TEST_MAIN(sizing_rule_matches_hand_computed_sizes, one_region_allocated_once_and_reused, lru_eviction_order,
          pinned_and_loading_slots_are_never_evicted, hot_swap_keeps_the_old_version_while_in_flight,
          upload_event_and_wait_ordering, exhaustion_and_oversize_fail_only_the_asking_load,
          create_failures_say_why)
