/* tests/unit/test_tenants.c — the tenant store (tenant_store.h), owner-scoped adapter
 * records (store.h) and the tenant policy (tenants.h): tenant CRUD and record checks,
 * keys stored as hashes only (the LMDB file never holds a key), revocation, deletion of a
 * tenant with its keys, authentication (admin / tenant / unknown), scoped names and the
 * merged visible listing, the storage quota inside the put, concurrency and token-window
 * admission, reload keeping counters.
 */
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter_store/store.h"
#include "adapter_store/tenant_store.h"
#include "server/tenants/tenants.h"
#include "tests/harness/test.h"

/* The directory of the last store open_store made (a test_tmpdir()). */
static char DIR_[128];

static astore *open_store(void) {
    snprintf(DIR_, sizeof DIR_, "%s", test_tmpdir());
    astore *s = NULL;
    char err[512];
    int rc = astore_open(DIR_, NULL, &s, err, sizeof err);
    if (rc) FAIL("astore_open: %d %s", rc, err);
    return s;
}

static tstore_tenant tenant(const char *id) {
    tstore_tenant t;
    memset(&t, 0, sizeof t);
    snprintf(t.id, sizeof t.id, "%s", id);
    t.weight = 1;
    return t;
}

/* A put of a blob of n bytes (byte value v) as owner's name. */
static int put(astore *s, const char *owner, const char *name, size_t n, unsigned char v, uint64_t quota) {
    unsigned char *b = malloc(n);
    ASSERT(b);
    memset(b, v, n);
    astore_meta m;
    memset(&m, 0, sizeof m);
    snprintf(m.name, sizeof m.name, "%s", name);
    snprintf(m.owner, sizeof m.owner, "%s", owner);
    m.kind = ADAPTER_LORA;
    unsigned char d[32];
    unsigned int dl;
    EVP_Digest(b, n, d, &dl, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) snprintf(m.sha256 + 2 * i, 3, "%02x", d[i]);
    int rc = astore_put_scoped(s, &m, quota, b, n, NULL, NULL);
    free(b);
    return rc;
}

static bool file_contains(const char *path, const char *needle) {
    FILE *f = fopen(path, "rb");
    ASSERT(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ASSERT(buf && fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    bool found = memmem(buf, (size_t)n, needle, strlen(needle)) != NULL;
    free(buf);
    return found;
}

TEST(tenant_crud_and_validation) {
    astore *s = open_store();
    tstore_tenant t = tenant("acme"), g;
    t.max_concurrent = 4;
    t.tokens_per_min = 1000;
    ASSERT_EQ(tstore_tenant_create(s, &t), 0);
    ASSERT_EQ(tstore_tenant_create(s, &t), PEFTD_EEXIST);
    ASSERT_EQ(tstore_tenant_get(s, "acme", &g), 0);
    ASSERT_STREQ(g.id, "acme");
    ASSERT_EQ(g.max_concurrent, 4);
    ASSERT_EQ(g.tokens_per_min, 1000);
    ASSERT(g.created > 0);
    g.weight = 2.5;
    g.max_storage_bytes = 1 << 20;
    ASSERT_EQ(tstore_tenant_update(s, &g), 0);
    tstore_tenant u;
    ASSERT_EQ(tstore_tenant_get(s, "acme", &u), 0);
    ASSERT_NEAR(u.weight, 2.5, 0);
    ASSERT_EQ(u.max_storage_bytes, 1 << 20);
    ASSERT_EQ(u.created, g.created);
    tstore_tenant bad = tenant("a/b");
    ASSERT_EQ(tstore_tenant_create(s, &bad), PEFTD_EINVAL);
    bad = tenant("ok");
    bad.weight = 0;
    ASSERT_EQ(tstore_tenant_create(s, &bad), PEFTD_EINVAL);
    bad = tenant("ok");
    bad.max_concurrent = -1;
    ASSERT_EQ(tstore_tenant_create(s, &bad), PEFTD_EINVAL);
    tstore_tenant nobody = tenant("nobody");
    ASSERT_EQ(tstore_tenant_update(s, &nobody), PEFTD_ENOTFOUND);
    tstore_tenant b = tenant("beta");
    ASSERT_EQ(tstore_tenant_create(s, &b), 0);
    tstore_tenant *v;
    int n;
    ASSERT_EQ(tstore_tenant_list(s, &v, &n), 0);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(v[0].id, "acme");
    ASSERT_STREQ(v[1].id, "beta");
    free(v);
    astore_close(s);
}

TEST(keys_hashed_revoked_and_deleted_with_tenant) {
    astore *s = open_store();
    tenants_config cfg = {.enabled = true};
    ASSERT_EQ(tenants_sha256_hex("the-admin-key", cfg.admin_sha256), 0);
    tenants *ts;
    char err[256];
    ASSERT_EQ(tenants_open(s, &cfg, &ts, err, sizeof err), 0);
    tstore_tenant a = tenant("a"), b = tenant("b");
    ASSERT_EQ(tenants_create(ts, &a), 0);
    ASSERT_EQ(tenants_create(ts, &b), 0);
    char k1[TENANTS_KEY_LEN + 1], k2[TENANTS_KEY_LEN + 1], k3[TENANTS_KEY_LEN + 1];
    tstore_key r1, r2, r3;
    ASSERT_EQ(tenants_key_create(ts, "a", k1, &r1), 0);
    ASSERT_EQ(tenants_key_create(ts, "a", k2, &r2), 0);
    ASSERT_EQ(tenants_key_create(ts, "b", k3, &r3), 0);
    ASSERT_EQ(strlen(k1), TENANTS_KEY_LEN);
    ASSERT(strcmp(k1, k2) != 0);
    ASSERT_EQ(strncmp(r1.prefix, k1, strlen(r1.prefix)), 0);
    char k4[TENANTS_KEY_LEN + 1];
    tstore_key r4;
    ASSERT_EQ(tenants_key_create(ts, "nobody", k4, &r4), PEFTD_ENOTFOUND);
    ASSERT_STREQ(k4, ""); /* a key that was not stored is wiped, never handed out */

    tenants_principal p;
    ASSERT_EQ(tenants_authenticate(ts, k1, &p), 0);
    ASSERT_EQ(p.role, TENANTS_TENANT);
    ASSERT_STREQ(p.tenant, "a");
    ASSERT_EQ(tenants_authenticate(ts, "the-admin-key", &p), 0);
    ASSERT_EQ(p.role, TENANTS_ADMIN);
    ASSERT_STREQ(p.tenant, "");
    ASSERT_EQ(tenants_authenticate(ts, "pk_0000", &p), PEFTD_ENOTFOUND);
    ASSERT_EQ(tenants_authenticate(ts, "", &p), PEFTD_ENOTFOUND);

    tstore_key *v;
    int n;
    ASSERT_EQ(tenants_key_list(ts, "a", &v, &n), 0);
    ASSERT_EQ(n, 2);
    free(v);
    ASSERT_EQ(tenants_key_revoke(ts, "b", r1.id), PEFTD_ENOTFOUND); /* another tenant's key id */
    ASSERT_EQ(tenants_key_revoke(ts, "a", r1.id), 0);
    ASSERT_EQ(tenants_authenticate(ts, k1, &p), PEFTD_ENOTFOUND);
    ASSERT_EQ(tenants_authenticate(ts, k2, &p), 0);

    /* no key in clear in the LMDB file; its hash is there */
    char path[256], h[65];
    snprintf(path, sizeof path, "%s/data.mdb", DIR_);
    ASSERT(!file_contains(path, k1) && !file_contains(path, k2) && !file_contains(path, k3));
    ASSERT(!file_contains(path, "the-admin-key"));
    ASSERT_EQ(tenants_sha256_hex(k2, h), 0);
    ASSERT(file_contains(path, h));

    /* deleting a tenant removes its keys in the same transaction */
    ASSERT_EQ(tenants_delete(ts, "a", NULL), 0);
    ASSERT_EQ(tenants_authenticate(ts, k2, &p), PEFTD_ENOTFOUND);
    ASSERT_EQ(tstore_key_find(s, h, &r2), PEFTD_ENOTFOUND);
    ASSERT_EQ(tenants_authenticate(ts, k3, &p), 0);
    ASSERT_EQ(tenants_delete(ts, "a", NULL), PEFTD_ENOTFOUND);
    tenants_close(ts);
    astore_close(s);
}

TEST(scoped_names_visible_listing_and_storage_quota) {
    astore *s = open_store();
    ASSERT_EQ(put(s, "", "bot", 100, 1, 0), 0);    /* public */
    ASSERT_EQ(put(s, "", "zeta", 100, 2, 0), 0);   /* public */
    ASSERT_EQ(put(s, "t1", "bot", 200, 3, 0), 0);  /* t1 shadows the public bot */
    ASSERT_EQ(put(s, "t1", "alpha", 300, 4, 0), 0);
    ASSERT_EQ(put(s, "t2", "bot", 400, 5, 0), 0);  /* same name, another tenant */
    ASSERT_EQ(put(s, "t2", "a:b", 10, 6, 0), PEFTD_EINVAL); /* ':' is the key form of '/' (store.h) */
    astore_meta m;
    ASSERT_EQ(astore_get_meta_scoped(s, "t1", "bot", &m), 0);
    ASSERT_EQ(m.bytes, 200);
    ASSERT_STREQ(m.owner, "t1");
    ASSERT_EQ(astore_get_meta_scoped(s, "t2", "bot", &m), 0);
    ASSERT_EQ(m.bytes, 400);
    ASSERT_EQ(astore_get_meta_scoped(s, "", "bot", &m), 0);
    ASSERT_EQ(m.bytes, 100);
    ASSERT_EQ(astore_get_meta_scoped(s, "t2", "alpha", &m), PEFTD_ENOTFOUND);

    /* t1 sees alpha (own), bot (own, shadowing), zeta (public), in name order */
    astore_meta v[8];
    int n;
    bool more;
    ASSERT_EQ(astore_list_visible(s, "t1", "", 8, v, &n, &more), 0);
    ASSERT_EQ(n, 3);
    ASSERT(!more);
    ASSERT_STREQ(v[0].name, "alpha");
    ASSERT_STREQ(v[1].name, "bot");
    ASSERT_STREQ(v[1].owner, "t1");
    ASSERT_STREQ(v[2].name, "zeta");
    /* pages of one concatenate to the same */
    ASSERT_EQ(astore_list_visible(s, "t1", "alpha", 1, v, &n, &more), 0);
    ASSERT_EQ(n, 1);
    ASSERT(more);
    ASSERT_STREQ(v[0].name, "bot");
    ASSERT_EQ(astore_list_visible(s, "t1", "bot", 1, v, &n, &more), 0);
    ASSERT_STREQ(v[0].name, "zeta");
    /* t3 and the public view see the public ones only */
    ASSERT_EQ(astore_list_visible(s, "t3", "", 8, v, &n, &more), 0);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(v[0].owner, "");
    ASSERT_EQ(astore_list_visible(s, "", "", 8, v, &n, &more), 0);
    ASSERT_EQ(n, 2);

    uint64_t used;
    ASSERT_EQ(astore_owner_bytes(s, "t1", &used), 0);
    ASSERT_EQ(used, 500);
    /* quota: 600 bytes; a new 200-byte adapter would make 700 */
    ASSERT_EQ(put(s, "t1", "new", 200, 7, 600), -EDQUOT);
    ASSERT_EQ(astore_get_meta_scoped(s, "t1", "new", &m), PEFTD_ENOTFOUND);
    /* replacing alpha (300 -> 350) counts its new size only: 550 fits */
    ASSERT_EQ(put(s, "t1", "alpha", 350, 8, 600), 0);
    ASSERT_EQ(astore_owner_bytes(s, "t1", &used), 0);
    ASSERT_EQ(used, 550);
    ASSERT_EQ(astore_delete_scoped(s, "t2", "alpha", NULL), PEFTD_ENOTFOUND);
    ASSERT_EQ(astore_delete_scoped(s, "t1", "bot", NULL), 0);
    ASSERT_EQ(astore_get_meta_scoped(s, "", "bot", &m), 0); /* the public one stays */
    astore_close(s);
}

TEST(admission_concurrency_and_token_window) {
    astore *s = open_store();
    tenants_config cfg = {.enabled = true};
    tenants *ts;
    char err[256];
    ASSERT_EQ(tenants_open(s, &cfg, &ts, err, sizeof err), 0);
    tstore_tenant c = tenant("c"), t = tenant("t"), free_ = tenant("free");
    c.max_concurrent = 2;
    t.tokens_per_min = 50;
    ASSERT_EQ(tenants_create(ts, &c), 0);
    ASSERT_EQ(tenants_create(ts, &t), 0);
    ASSERT_EQ(tenants_create(ts, &free_), 0);
    int retry;
    const tenants_cost one = {.seqs = 1};
    tenants_ticket k1, k2, k3, kf;
    ASSERT_EQ(tenants_admit(ts, "c", &one, &k1, &retry), 0);
    ASSERT_EQ(tenants_admit(ts, "c", &one, &k2, &retry), 0);
    ASSERT_EQ(tenants_admit(ts, "c", &one, &k3, &retry), PEFTD_EQUOTA);
    ASSERT_EQ(retry, 1);
    ASSERT_EQ(tenants_admit(ts, "free", &one, &kf, &retry), 0); /* others unaffected */
    tenants_release(ts, &k1);
    tenants_release(ts, &k1); /* released twice: the second is a no-op */
    ASSERT_EQ(tenants_admit(ts, "c", &one, &k1, &retry), 0);
    tenants_release(ts, &k1);
    tenants_release(ts, &k2);
    tenants_release(ts, &kf);

    /* tokens: prompt tokens count at admission, the rest is reserved up front */
    const tenants_cost small = {.seqs = 1, .prompt_tokens = 10, .max_new = 20};
    ASSERT_EQ(tenants_admit(ts, "t", &small, &k1, &retry), 0); /* used 10 + reserved 20 */
    ASSERT_EQ(tenants_admit(ts, "t", &small, &k2, &retry), 0); /* 30 < 50 still: 20 + 40 */
    ASSERT_EQ(tenants_admit(ts, "t", &small, &k3, &retry), PEFTD_EQUOTA); /* 60 >= 50 */
    tenants_count_tokens(ts, &k1, 5);  /* reservation turns into usage: still 60 */
    ASSERT_EQ(tenants_admit(ts, "t", &small, &k3, &retry), PEFTD_EQUOTA);
    tenants_release(ts, &k1);          /* 15 of k1's reservation given back: 45 < 50 */
    ASSERT_EQ(tenants_admit(ts, "t", &small, &k3, &retry), 0); /* 55 + 40 */
    tenants_count_tokens(ts, &k2, 100); /* more than reserved (cannot happen) stays counted */
    tenants_release(ts, &k2);
    tenants_release(ts, &k3);
    ASSERT_EQ(tenants_admit(ts, "t", &one, &k1, &retry), PEFTD_EQUOTA);
    /* the tokens were counted within the last second or two: they expire in ~58-60 s */
    ASSERT(retry >= 55 && retry <= 60);
    /* a reload keeps the window; raising the limit in the store takes effect with it */
    tstore_tenant raised = t;
    raised.tokens_per_min = 1000;
    ASSERT_EQ(tstore_tenant_update(s, &raised), 0);
    ASSERT_EQ(tenants_admit(ts, "t", &one, &k1, &retry), PEFTD_EQUOTA);
    ASSERT_EQ(tenants_reload(ts), 0);
    ASSERT_EQ(tenants_admit(ts, "t", &one, &k1, &retry), 0);
    tenants_release(ts, &k1);
    tenants_close(ts);
    astore_close(s);
}

/* Issue 9 defect 5: quotas were counted per HTTP request, so one request of 16 prompts x
 * n=16 went past max_concurrent=1 and a 100 tokens/min limit by ~435x. Now a request's
 * sequences count against max_concurrent and its worst case is reserved. */
TEST(quotas_count_sequences_and_reserve_the_worst_case) {
    astore *s = open_store();
    tenants_config cfg = {.enabled = true};
    tenants *ts;
    char err[256];
    ASSERT_EQ(tenants_open(s, &cfg, &ts, err, sizeof err), 0);
    tstore_tenant c = tenant("c"), t = tenant("t");
    c.max_concurrent = 4;
    t.tokens_per_min = 100;
    ASSERT_EQ(tenants_create(ts, &c), 0);
    ASSERT_EQ(tenants_create(ts, &t), 0);
    int retry;
    tenants_ticket k1, k2;
    const tenants_cost big = {.seqs = 16 * 16, .prompt_tokens = 16 * 16 * 5, .max_new = 200};
    ASSERT_EQ(tenants_admit(ts, "c", &big, &k1, &retry), PEFTD_EQUOTA); /* can never fit */
    ASSERT(retry >= 1);
    const tenants_cost three = {.seqs = 3};
    ASSERT_EQ(tenants_admit(ts, "c", &three, &k1, &retry), 0);
    const tenants_cost two = {.seqs = 2};
    ASSERT_EQ(tenants_admit(ts, "c", &two, &k2, &retry), PEFTD_EQUOTA); /* 3 + 2 > 4 */
    tenants_release(ts, &k1);
    ASSERT_EQ(tenants_admit(ts, "c", &two, &k2, &retry), 0);
    tenants_release(ts, &k2);

    /* the big request is admitted while there is room (one request's granularity) ... */
    const tenants_cost wide = {.seqs = 4, .prompt_tokens = 20, .max_new = 200};
    ASSERT_EQ(tenants_admit(ts, "t", &wide, &k1, &retry), 0);
    /* ... and then nothing else until its reservation is used up and has expired */
    const tenants_cost tiny = {.seqs = 1, .prompt_tokens = 1, .max_new = 1};
    ASSERT_EQ(tenants_admit(ts, "t", &tiny, &k2, &retry), PEFTD_EQUOTA);
    ASSERT_EQ(retry, 1); /* the reservation alone fills the window: a request must end */
    tenants_count_tokens(ts, &k1, 30);
    tenants_release(ts, &k1); /* served 50 of 100: room again */
    ASSERT_EQ(tenants_admit(ts, "t", &tiny, &k2, &retry), 0);
    tenants_release(ts, &k2);
    tenants_close(ts);
    astore_close(s);
}

/* Issue 9 defect 4: deleting a tenant left adapters behind once a 128-row listing page
 * held none of them (public names sorting first), and a re-created tenant of the same id
 * inherited them; an upload finishing after the deletion was stored under the dead
 * owner. Now the tenant, its keys and all its adapters go in one transaction, and a
 * tenant put needs the tenant's record in its own transaction. */
TEST(tenant_delete_takes_every_adapter_and_blocks_late_uploads) {
    astore *s = open_store();
    tstore_tenant t = tenant("t"), u = tenant("u");
    ASSERT_EQ(tstore_tenant_create(s, &t), 0);
    ASSERT_EQ(tstore_tenant_create(s, &u), 0);
    /* 300 public names sorting before the tenant's, and 200 of the tenant's */
    for (int i = 0; i < 300; i++) {
        char name[16];
        snprintf(name, sizeof name, "a%03d", i);
        ASSERT_EQ(put(s, "", name, 64, (unsigned char)i, 0), 0);
    }
    for (int i = 0; i < 200; i++) {
        char name[16];
        snprintf(name, sizeof name, "z%03d", i);
        ASSERT_EQ(put(s, "t", name, 64, (unsigned char)(i % 7), 0), 0); /* blobs shared in 7s */
        ASSERT_EQ(put(s, "u", name, 64, 200, 0), 0);
    }
    astore_removed r;
    ASSERT_EQ(tstore_tenant_delete(s, "t", &r), 0);
    ASSERT_EQ(r.n_keys, 200);
    ASSERT_STREQ(r.keys[0], "t/z000");
    uint64_t used = 1;
    ASSERT_EQ(astore_owner_bytes(s, "t", &used), 0);
    ASSERT_EQ(used, 0);
    astore_meta m;
    ASSERT_EQ(astore_get_meta_scoped(s, "t", "z199", &m), PEFTD_ENOTFOUND);
    ASSERT_EQ(astore_get_meta_scoped(s, "u", "z199", &m), 0); /* other tenants keep theirs */
    ASSERT_EQ(astore_get_meta_scoped(s, "", "a000", &m), 0);  /* and the public ones stay */
    /* blobs still named by public adapters stay; the reports list each hash once */
    for (int i = 0; i < r.n_dropped; i++)
        for (int j = i + 1; j < r.n_dropped; j++) ASSERT(strcmp(r.dropped[i], r.dropped[j]) != 0);
    astore_removed_free(&r);

    /* a late upload of the deleted tenant fails and stores nothing */
    unsigned char b[32] = {1};
    astore_meta late;
    memset(&late, 0, sizeof late);
    snprintf(late.name, sizeof late.name, "late");
    snprintf(late.owner, sizeof late.owner, "t");
    late.kind = ADAPTER_LORA;
    unsigned char d[32];
    unsigned int dl;
    EVP_Digest(b, sizeof b, d, &dl, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) snprintf(late.sha256 + 2 * i, 3, "%02x", d[i]);
    ASSERT_EQ(astore_put_tenant(s, &late, 0, b, sizeof b, NULL, NULL), -ENOENT);
    ASSERT_EQ(astore_get_meta_scoped(s, "t", "late", &m), PEFTD_ENOTFOUND);

    /* re-created under the same id: an empty namespace */
    ASSERT_EQ(tstore_tenant_create(s, &t), 0);
    astore_meta v[8];
    int n;
    bool more;
    ASSERT_EQ(astore_list_visible(s, "t", "z", 8, v, &n, &more), 0);
    ASSERT_EQ(n, 0);
    ASSERT_EQ(astore_put_tenant(s, &late, 0, b, sizeof b, NULL, NULL), 0);
    ASSERT_EQ(tstore_tenant_delete(s, "t", NULL), 0);
    ASSERT_EQ(tstore_tenant_delete(s, "t", NULL), PEFTD_ENOTFOUND);
    astore_close(s);
}

TEST_MAIN(quotas_count_sequences_and_reserve_the_worst_case, tenant_crud_and_validation, keys_hashed_revoked_and_deleted_with_tenant,
          scoped_names_visible_listing_and_storage_quota, admission_concurrency_and_token_window,
          tenant_delete_takes_every_adapter_and_blocks_late_uploads)
