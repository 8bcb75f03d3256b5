/* tests/unit/test_slot_pool_adapter.c — the slot pool under real adapters: a fixture adapter
 * (stories260K + tests/fixtures/adapters) installed through adapter_install_placed into a
 * slot pool on a non-host fake backend (the path adapter_store/tiers.c takes on CUDA): every
 * LoRA matrix then points into the pool's slot and holds the same bytes as a host-only copy
 * of the adapter; the backend's own alloc is never called; adapter_free gives the slot back
 * (retire); an adapter larger than a slot is refused with PEFTD_E2BIG and stays on the host,
 * installable the ordinary way. VeRA's projection slices (adapter_shared.h) live outside the
 * slot: the first adapter placed uploads each slice once into the backend's own memory, a second
 * adapter with the same projection reads those copies (placed or installed the ordinary way),
 * and the last one freed frees them. */
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter.h"
#include "kernels/slot_pool.h"
#include "lib/status.h"
#include "server/model/model.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/slot_placer.h"
#include "tests/harness/test.h"

/* Device side: host memory, copies land at once, events are always complete. */
static int n_copies;
static void *d_alloc(void *c, size_t n) { return calloc(1, n); }
static void d_free(void *c, void *p) { free(p); }
static int d_copy(void *c, void *dst, const void *src, size_t n) {
    memcpy(dst, src, n);
    n_copies++;
    return 0;
}
static int d_rec(void *c, int ev) { return 0; }
static int d_query(void *c, int ev) { return 1; }
static int d_wait(void *c, int ev) { return 0; }
static const slot_dev_ops DEV = {d_alloc, d_free, d_alloc, d_free, d_copy, d_rec, d_query, d_wait};

/* A backend that is not host memory; its alloc/free count calls (the placed path makes none). */
static int kb_allocs, kb_frees;
static void *f_alloc(kbackend *kb, size_t n) {
    kb_allocs++;
    return malloc(n ? n : 1);
}
static void f_free(kbackend *kb, void *p) {
    kb_frees++;
    free(p);
}
static int f_upload(kbackend *kb, void *d, const void *s, size_t n) {
    memcpy(d, s, n);
    return 0;
}
static int f_sync(kbackend *kb) { return 0; }
static void f_destroy(kbackend *kb) {}
static const kbackend_ops FAKE = {.name = "fake-device", .destroy = f_destroy, .alloc = f_alloc, .free = f_free,
                                  .upload = f_upload, .synchronize = f_sync};

static model *M;
static adapter_base BASE;
static kbackend *CPU;
static void setup(void) {
    char err[512];
    if (M) return;
    CPU = kbackend_cpu_create(1);
    ASSERT(CPU);
    if (model_load("models/stories260K", CPU, &M, err, sizeof err)) FAIL("model_load: %s", err);
    ASSERT_EQ(model_adapter_base(M, &BASE), 0);
}
static adapter *host_adapter(const char *name) {
    char dir[256], err[1024];
    snprintf(dir, sizeof dir, "tests/fixtures/adapters/%s", name);
    adapter *a = NULL;
    if (adapter_load_dir(dir, &BASE, &a, err, sizeof err)) FAIL("%s: %s", dir, err);
    return a;
}
static size_t kmat_bytes(const kmat *m) { return (size_t)m->rows * kdtype_row_bytes(m->dtype, m->cols); }

TEST(lora_installed_into_a_slot_reads_the_same_bytes) {
    setup();
    slot_pool *pool = NULL;
    char err[256];
    ASSERT_EQ(slot_pool_create(&DEV, NULL, 8u << 20, 4, 1, &pool, err, sizeof err), 0);
    kbackend kb;
    kbackend__init(&kb, &FAKE, NULL);
    adapter *ref = host_adapter("lora_dora"), *a = host_adapter("lora_dora");
    slot_placer_ud u = {pool, "sha-lora-dora", -1};
    adapter_placer pl = slot_placer(&u);
    kb_allocs = kb_frees = n_copies = 0;
    ASSERT_EQ(adapter_install_placed(a, &kb, &pl, err, sizeof err), 0);
    ASSERT(u.slot >= 0);
    ASSERT_EQ(kb_allocs, 0);
    ASSERT_EQ(n_copies, 1); /* the whole block, one copy */
    ASSERT(!adapter_on_host(a));
    const unsigned char *lo = slot_pool_addr(pool, u.slot), *hi = lo + slot_pool_slot_size(pool);
    int checked = 0;
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) {
        const adapter_lora *L = &a->lora[i], *R = &ref->lora[i];
        ASSERT_EQ(L->rank, R->rank);
        if (!L->rank) continue;
        const kmat *mats[2] = {&L->a, &L->b}, *refs[2] = {&R->a, &R->b};
        for (int k = 0; k < 2; k++) {
            const unsigned char *p = mats[k]->data;
            size_t n = kmat_bytes(mats[k]);
            ASSERT(n > 0 && p >= lo && p + n <= hi);
            ASSERT(!memcmp(p, refs[k]->data, n));
            checked++;
        }
        if (L->dora) {
            ASSERT((const unsigned char *)L->dora >= lo && (const unsigned char *)L->dora < hi);
            ASSERT(!memcmp(L->dora, R->dora, (size_t)L->b.rows * sizeof(float)));
        }
    }
    ASSERT(checked >= 2);
    adapter_free(a); /* the slot goes back to the pool, no backend free */
    ASSERT_EQ(kb_frees, 0);
    ASSERT(slot_pool_addr(pool, u.slot) == NULL);
    ASSERT_EQ(slot_pool_find(pool, "sha-lora-dora"), -1);
    adapter_free(ref);
    slot_pool_free(pool);
}

TEST(an_adapter_larger_than_a_slot_stays_on_the_host) {
    setup();
    slot_pool *pool = NULL;
    char err[256];
    ASSERT_EQ(slot_pool_create(&DEV, NULL, 256, 2, 1, &pool, err, sizeof err), 0);
    kbackend kb;
    kbackend__init(&kb, &FAKE, NULL);
    adapter *a = host_adapter("lora_bf16");
    slot_placer_ud u = {pool, "sha-big", -1};
    adapter_placer pl = slot_placer(&u);
    kb_allocs = kb_frees = 0;
    ASSERT_EQ(adapter_install_placed(a, &kb, &pl, err, sizeof err), PEFTD_E2BIG);
    ASSERT(strstr(err, "a pool slot holds 256"));
    ASSERT(adapter_on_host(a));
    ASSERT_EQ(adapter_install(a, &kb, err, sizeof err), 0); /* what tiers.c falls back to */
    ASSERT_EQ(kb_allocs, 1);
    adapter_free(a);
    ASSERT_EQ(kb_frees, 1);
    /* On a host backend the placer is not used at all. */
    adapter *h = host_adapter("lora_bf16");
    n_copies = 0;
    ASSERT_EQ(adapter_install_placed(h, CPU, &pl, err, sizeof err), 0);
    ASSERT_EQ(n_copies, 0);
    ASSERT(adapter_on_host(h));
    adapter_free(h);
    slot_pool_free(pool);
}

TEST(vera_slices_are_uploaded_once_beside_the_slots) {
    setup();
    slot_pool *pool = NULL;
    char err[256];
    ASSERT_EQ(slot_pool_create(&DEV, NULL, 1u << 20, 4, 1, &pool, err, sizeof err), 0);
    kbackend kb;
    kbackend__init(&kb, &FAKE, NULL);
    adapter *ref = host_adapter("vera"), *a = host_adapter("vera"), *b = host_adapter("vera_b");
    size_t own, shared;
    adapter_bytes_held(a, &own, &shared);
    ASSERT_EQ(shared, (size_t)16 * (64 + 172) * sizeof(float)); /* r 16: vera_A[:, :64] and [:, :172] */
    slot_placer_ud ua = {pool, "sha-vera", -1}, ub = {pool, "sha-vera-b", -1};
    adapter_placer pa = slot_placer(&ua), pb = slot_placer(&ub);
    kb_allocs = kb_frees = 0;
    ASSERT_EQ(adapter_install_placed(a, &kb, &pa, err, sizeof err), 0);
    ASSERT_EQ(kb_allocs, 2); /* the two slices; the block went into the slot */
    ASSERT_EQ(adapter_install_placed(b, &kb, &pb, err, sizeof err), 0);
    ASSERT_EQ(kb_allocs, 2); /* the same slices: nothing more */
    const unsigned char *lo = slot_pool_addr(pool, ua.slot), *hi = lo + slot_pool_slot_size(pool);
    int n = 0;
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) {
        const adapter_lora *L = &a->lora[i], *R = &ref->lora[i];
        if (!L->rank) continue;
        const unsigned char *pa_ = L->a.data, *pb_ = L->b.data;
        ASSERT(pa_ < lo || pa_ >= hi);   /* A: a shared copy, outside the slot */
        ASSERT(pb_ >= lo && pb_ < hi);   /* B (λs folded in): in the adapter's slot */
        ASSERT(pa_ != R->a.data);        /* the device copy, not the host one */
        ASSERT(!memcmp(pa_, R->a.data, kmat_bytes(&R->a)));
        ASSERT(!memcmp(pb_, R->b.data, kmat_bytes(&R->b)));
        for (int j = 0; j < b->n_layers * AMOD_COUNT; j++)
            if (b->lora[j].rank && b->lora[j].a.cols == L->a.cols) ASSERT(b->lora[j].a.data == L->a.data);
        n++;
    }
    ASSERT_EQ(n, 20);
    adapter *c = host_adapter("vera"); /* installed the ordinary way: its block, the same slices */
    ASSERT_EQ(adapter_install(c, &kb, err, sizeof err), 0);
    ASSERT_EQ(kb_allocs, 3);
    for (int i = 0; i < c->n_layers * AMOD_COUNT; i++) ASSERT(c->lora[i].a.data == a->lora[i].a.data);
    adapter_free(c);
    ASSERT_EQ(kb_frees, 1);
    kb_frees = 0;
    adapter_free(a);
    ASSERT_EQ(kb_frees, 0); /* b still reads the slices */
    adapter_free(b);
    ASSERT_EQ(kb_frees, 2);
    adapter_free(ref);
    slot_pool_free(pool);
}

TEST_MAIN(lora_installed_into_a_slot_reads_the_same_bytes, an_adapter_larger_than_a_slot_stays_on_the_host,
          vera_slices_are_uploaded_once_beside_the_slots)
