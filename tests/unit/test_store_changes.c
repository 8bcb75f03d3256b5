/* tests/unit/test_store_changes.c — the store's change feed and the follower's apply
 * (adapter_store/store_changes.h): sequence order and record contents for every kind of
 * catalogue write, failed writes leaving no record (same transaction), a SIGKILLed
 * writer whose feed still replays to exactly the store it left, retention with the
 * resync signal, idempotent in-order apply with the position persisted across reopen,
 * and the snapshot of a full resync.
 */
#include <cJSON.h>
#include <errno.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <unistd.h>

#include "adapter_store/store.h"
#include "adapter_store/store_changes.h"
#include "adapter_store/tenant_store.h"
#include "tests/harness/test.h"

static astore *open_store(const char *dir, uint64_t retain) {
    astore_options o = {.changes_retain = retain};
    astore *s = NULL;
    char err[512];
    int rc = astore_open(dir, &o, &s, err, sizeof err);
    if (rc) FAIL("astore_open(%s): %d %s", dir, rc, err);
    return s;
}

static void hex_sha256(const void *p, size_t n, char out[65]) {
    unsigned char d[32];
    unsigned int dl = 0;
    ASSERT(EVP_Digest(p, n, d, &dl, EVP_sha256(), NULL) && dl == 32);
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* A blob of 64..1087 bytes determined by seed; meta.sha256 is its sha256. */
static astore_meta blob_for(const char *owner, const char *name, uint64_t seed, unsigned char buf[1100], size_t *n) {
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 7;
    *n = 64 + (size_t)(seed % 1024);
    for (size_t i = 0; i < *n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = (unsigned char)x;
    }
    astore_meta m;
    memset(&m, 0, sizeof m);
    snprintf(m.name, sizeof m.name, "%s", name);
    snprintf(m.owner, sizeof m.owner, "%s", owner);
    m.kind = ADAPTER_LORA;
    m.n_ranks = 1;
    m.ranks[0] = 4;
    hex_sha256(buf, *n, m.sha256);
    return m;
}

static astore_meta put(astore *s, const char *owner, const char *name, uint64_t seed) {
    unsigned char b[1100];
    size_t n;
    astore_meta m = blob_for(owner, name, seed, b, &n), out;
    int rc = astore_put_scoped(s, &m, 0, b, n, &out, NULL);
    if (rc) FAIL("put %s: %d", name, rc);
    return out;
}

/* The feed after `after` as a parsed array (caller deletes). */
static cJSON *feed(astore *s, uint64_t after, int limit, bool *resync) {
    char *j;
    int n;
    uint64_t last, oldest;
    bool rs;
    int rc = astore_changes_read(s, after, limit, &j, &n, &last, &oldest, &rs);
    if (rc) FAIL("astore_changes_read: %d", rc);
    cJSON *a = cJSON_Parse(j);
    free(j);
    ASSERT(cJSON_IsArray(a) && cJSON_GetArraySize(a) == n);
    if (resync) *resync = rs;
    return a;
}

static const char *str(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

TEST(sequence_order_every_write) {
    astore *s = open_store(test_tmpdir(), 0);
    put(s, "", "alpha", 1);
    put(s, "", "beta", 2);
    astore_meta a2 = put(s, "", "alpha", 3);
    ASSERT(a2.version == 2);
    ASSERT(astore_delete_scoped(s, "", "beta", NULL) == 0);
    tstore_tenant t = {.id = "acme", .weight = 1};
    ASSERT(tstore_tenant_create(s, &t) == 0);
    tstore_key k = {.id = "key_0123456789abcdef", .tenant = "acme", .prefix = "pk-abc"};
    memset(k.sha256, 'a', 64);
    ASSERT(tstore_key_add(s, &k) == 0);
    put(s, "acme", "bot", 4);
    ASSERT(tstore_key_revoke(s, "acme", "key_0123456789abcdef") == 0);
    ASSERT(tstore_tenant_delete(s, "acme", NULL) == 0);
    static const char *ops[] = {"put", "put", "put", "delete", "tenant_put", "key_put", "put", "key_revoke",
                                "tenant_delete"};
    static const char *keys[] = {"alpha", "beta", "alpha", "beta", "acme", NULL, "acme/bot", "acme", "acme"};
    cJSON *a = feed(s, 0, 100, NULL);
    ASSERT_EQ(cJSON_GetArraySize(a), 9);
    for (int i = 0; i < 9; i++) {
        cJSON *c = cJSON_GetArrayItem(a, i);
        ASSERT(num(c, "seq") == i + 1);
        if (strcmp(str(c, "op"), ops[i])) FAIL("change %d: op %s, want %s", i + 1, str(c, "op"), ops[i]);
        if (keys[i] && strcmp(str(c, "key"), keys[i])) FAIL("change %d: key %s", i + 1, str(c, "key"));
    }
    /* the third change is alpha's v2 with its blob's checksum and the stored meta */
    cJSON *c3 = cJSON_GetArrayItem(a, 2), *m = cJSON_GetObjectItemCaseSensitive(c3, "meta");
    ASSERT(num(m, "version") == 2);
    ASSERT(!strcmp(str(m, "sha256"), a2.sha256));
    unsigned char b[1100];
    size_t n;
    char want[65];
    blob_for("", "alpha", 3, b, &n);
    hex_sha256(b, n, want); /* the payload's checksum (here equal to meta.sha256) */
    ASSERT(!strcmp(str(c3, "blob_sha256"), want));
    ASSERT(!strcmp(str(cJSON_GetArrayItem(a, 7), "key_id"), "key_0123456789abcdef"));
    cJSON_Delete(a);
    /* pages: after 4, 2 at a time */
    a = feed(s, 4, 2, NULL);
    ASSERT_EQ(cJSON_GetArraySize(a), 2);
    ASSERT(num(cJSON_GetArrayItem(a, 0), "seq") == 5 && num(cJSON_GetArrayItem(a, 1), "seq") == 6);
    cJSON_Delete(a);
    astore_close(s);
}

/* The store's own API takes any name bytes: a record naming one stays valid JSON. */
TEST(odd_keys_stay_json) {
    astore *s = open_store(test_tmpdir(), 0);
    unsigned char b[1100];
    size_t n;
    astore_meta m = blob_for("", "we\"ird\\na\nme", 11, b, &n);
    ASSERT(astore_put(s, &m, b, n, NULL, NULL) == 0);
    cJSON *a = feed(s, 0, 10, NULL);
    ASSERT(!strcmp(str(cJSON_GetArrayItem(a, 0), "key"), "we\"ird\\na\nme"));
    cJSON_Delete(a);
    char *j;
    ASSERT(astore_snapshot(s, &j) == 0);
    cJSON *o = cJSON_Parse(j);
    free(j);
    ASSERT(o && !strcmp(str(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "adapters"), 0), "key"),
                        "we\"ird\\na\nme"));
    cJSON_Delete(o);
    astore_close(s);
}

TEST(failed_writes_leave_no_record) {
    astore *s = open_store(test_tmpdir(), 0);
    put(s, "", "alpha", 1);
    unsigned char b[1100];
    size_t n;
    /* a tenant that does not exist: the put fails inside its transaction */
    astore_meta m = blob_for("ghost", "x", 5, b, &n);
    ASSERT(astore_put_tenant(s, &m, 0, b, n, NULL, NULL) == -ENOENT);
    /* over quota */
    tstore_tenant t = {.id = "small", .weight = 1};
    ASSERT(tstore_tenant_create(s, &t) == 0);
    m = blob_for("small", "y", 6, b, &n);
    ASSERT(astore_put_tenant(s, &m, 10, b, n, NULL, NULL) == -EDQUOT);
    ASSERT(astore_delete_scoped(s, "", "nope", NULL) == PEFTD_ENOTFOUND);
    ASSERT(tstore_tenant_create(s, &t) == PEFTD_EEXIST);
    uint64_t last, oldest;
    ASSERT(astore_changes_info(s, &last, &oldest) == 0);
    ASSERT(last == 2 && oldest == 1); /* alpha's put, the tenant's creation */
    astore_close(s);
}

/* Applies the feed of src after `after` to dst in order; returns how many were applied
 * (1 = already applied counts as not applied). */
static int replay(astore *src, astore *dst, uint64_t after) {
    cJSON *a = feed(src, after, 100000, NULL), *c;
    int applied = 0;
    cJSON_ArrayForEach(c, a) {
        uint64_t seq = (uint64_t)num(c, "seq");
        const char *op = str(c, "op"), *key = str(c, "key");
        int rc;
        if (!strcmp(op, "put")) {
            astore_meta m;
            char *mj = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(c, "meta"));
            ASSERT(mj && astore_meta_parse(mj, strlen(mj), &m) == 0);
            free(mj);
            void *blob;
            size_t n;
            rc = astore_get_blob(src, m.sha256, &blob, &n);
            if (rc == PEFTD_ENOTFOUND) { /* a blob is dropped only when the name moved on:
                                          * a later change supersedes this one */
                rc = astore_apply_position(dst, seq, false);
                applied += rc == 0;
                continue;
            }
            if (rc) FAIL("blob of %s: %d", key, rc);
            rc = astore_apply_put(dst, seq, &m, blob, n, NULL, NULL);
            free(blob);
        } else if (!strcmp(op, "delete")) {
            rc = astore_apply_delete(dst, seq, key, NULL);
        } else {
            char *rj = NULL;
            cJSON *r = cJSON_GetObjectItemCaseSensitive(c, "record");
            if (r) rj = cJSON_PrintUnformatted(r);
            rc = astore_apply_tenant(dst, seq, op, key, rj, str(c, "key_id"), NULL);
            free(rj);
        }
        if (rc < 0) FAIL("apply %llu %s %s: %d", (unsigned long long)seq, op, key, rc);
        applied += rc == 0;
    }
    cJSON_Delete(a);
    return applied;
}

/* Every meta record of a equals b's (name, owner, sha, version, times, bytes). */
static void same_catalogue(astore *a, astore *b) {
    enum { MAX = 512 };
    static astore_meta ma[MAX], mb[MAX];
    int na, nb;
    bool more;
    ASSERT(astore_list(a, "", MAX, ma, &na, &more) == 0 && !more);
    ASSERT(astore_list(b, "", MAX, mb, &nb, &more) == 0 && !more);
    ASSERT_EQ(na, nb);
    for (int i = 0; i < na; i++)
        if (memcmp(&ma[i], &mb[i], sizeof ma[i]))
            FAIL("%s/%s differs (version %llu vs %llu)", ma[i].owner, ma[i].name, (unsigned long long)ma[i].version,
                 (unsigned long long)mb[i].version);
    astore_stats sa, sb;
    ASSERT(astore_get_stats(a, &sa) == 0 && astore_get_stats(b, &sb) == 0);
    ASSERT(sa.blobs == sb.blobs);
}

TEST(idempotent_apply_and_position) {
    char src_dir[4200], dst_dir[4200];
    snprintf(src_dir, sizeof src_dir, "%s/p", test_tmpdir());
    snprintf(dst_dir, sizeof dst_dir, "%s/f", test_tmpdir());
    astore *p = open_store(src_dir, 0), *f = open_store(dst_dir, 0);
    for (int i = 0; i < 20; i++) {
        char name[16];
        snprintf(name, sizeof name, "a%d", i % 7);
        put(p, "", name, (uint64_t)i);
    }
    ASSERT(astore_delete_scoped(p, "", "a3", NULL) == 0);
    tstore_tenant t = {.id = "acme", .weight = 2};
    ASSERT(tstore_tenant_create(p, &t) == 0);
    put(p, "acme", "bot", 99);
    ASSERT_EQ(replay(p, f, 0), 23);
    same_catalogue(p, f);
    /* the same changes again: nothing applied, nothing changed */
    ASSERT_EQ(replay(p, f, 0), 0);
    same_catalogue(p, f);
    uint64_t pos;
    ASSERT(astore_replica_seq(f, &pos) == 0 && pos == 23);
    /* the follower's own feed stays empty: applied changes are not re-published */
    uint64_t last, oldest;
    ASSERT(astore_changes_info(f, &last, &oldest) == 0 && last == 0);
    /* reopen: the position survives; only the new changes apply */
    astore_close(f);
    f = open_store(dst_dir, 0);
    put(p, "", "a1", 1000);
    ASSERT(tstore_tenant_delete(p, "acme", NULL) == 0);
    ASSERT_EQ(replay(p, f, 0), 2);
    same_catalogue(p, f);
    tstore_tenant got;
    ASSERT(tstore_tenant_get(f, "acme", &got) == PEFTD_ENOTFOUND);
    astore_close(p);
    astore_close(f);
}

TEST(retention_and_resync) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", test_tmpdir());
    astore *s = open_store(dir, 5);
    for (int i = 0; i < 12; i++) put(s, "", "a", (uint64_t)i);
    uint64_t last, oldest;
    ASSERT(astore_changes_info(s, &last, &oldest) == 0);
    ASSERT(last == 12 && oldest == 8);
    bool resync;
    cJSON *a = feed(s, 3, 100, &resync);
    ASSERT(resync && cJSON_GetArraySize(a) == 0);
    cJSON_Delete(a);
    a = feed(s, 7, 100, &resync); /* 8..12 are all there */
    ASSERT(!resync && cJSON_GetArraySize(a) == 5);
    cJSON_Delete(a);
    a = feed(s, 12, 100, &resync);
    ASSERT(!resync && cJSON_GetArraySize(a) == 0);
    cJSON_Delete(a);
    /* numbers never repeat across a reopen */
    astore_close(s);
    s = open_store(dir, 5);
    put(s, "", "b", 77);
    ASSERT(astore_changes_info(s, &last, &oldest) == 0);
    if (last != 13 || oldest != 9) FAIL("last %llu oldest %llu", (unsigned long long)last, (unsigned long long)oldest);
    astore_close(s);
}

TEST(snapshot_resync) {
    char src_dir[4200], dst_dir[4200];
    snprintf(src_dir, sizeof src_dir, "%s/p", test_tmpdir());
    snprintf(dst_dir, sizeof dst_dir, "%s/f", test_tmpdir());
    astore *p = open_store(src_dir, 3), *f = open_store(dst_dir, 0);
    for (int i = 0; i < 10; i++) {
        char name[16];
        snprintf(name, sizeof name, "n%d", i);
        put(p, "", name, (uint64_t)i + 1);
    }
    char *j;
    ASSERT(astore_snapshot(p, &j) == 0);
    cJSON *o = cJSON_Parse(j), *e;
    free(j);
    ASSERT(num(o, "seq") == 10);
    cJSON *ads = cJSON_GetObjectItemCaseSensitive(o, "adapters");
    ASSERT_EQ(cJSON_GetArraySize(ads), 10);
    cJSON_ArrayForEach(e, ads) {
        astore_meta m;
        char *mj = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(e, "meta"));
        ASSERT(astore_meta_parse(mj, strlen(mj), &m) == 0);
        free(mj);
        void *blob;
        size_t n;
        char sum[65];
        ASSERT(astore_get_blob(p, m.sha256, &blob, &n) == 0);
        hex_sha256(blob, n, sum);
        ASSERT(!strcmp(sum, str(e, "blob_sha256")));
        ASSERT(astore_apply_put(f, 0, &m, blob, n, NULL, NULL) == 0);
        free(blob);
    }
    cJSON_Delete(o);
    ASSERT(astore_apply_position(f, 10, true) == 0);
    same_catalogue(p, f);
    uint64_t pos;
    ASSERT(astore_replica_seq(f, &pos) == 0 && pos == 10);
    astore_close(p);
    astore_close(f);
}

/* Each store has its own feed id, kept across reopens; a follower records the one it
 * resynced from; a reader ahead of the feed (another history) is told to resync. */
TEST(feed_identity) {
    char a_dir[4200], b_dir[4200], a1[33], a2[33], b1[33], got[33];
    snprintf(a_dir, sizeof a_dir, "%s", test_tmpdir());
    snprintf(b_dir, sizeof b_dir, "%s", test_tmpdir());
    astore *a = open_store(a_dir, 0), *b = open_store(b_dir, 0);
    ASSERT(astore_feed_id(a, a1) == 0 && astore_feed_id(b, b1) == 0);
    ASSERT(strlen(a1) == 32 && strspn(a1, "0123456789abcdef") == 32);
    ASSERT(strcmp(a1, b1) != 0);
    astore_close(a);
    a = open_store(a_dir, 0);
    ASSERT(astore_feed_id(a, a2) == 0 && !strcmp(a1, a2));
    ASSERT(astore_replica_feed(b, got) == 0 && got[0] == 0);
    ASSERT(astore_apply_resynced(b, 42, a1) == 0);
    uint64_t pos;
    ASSERT(astore_replica_feed(b, got) == 0 && !strcmp(got, a1));
    ASSERT(astore_replica_seq(b, &pos) == 0 && pos == 42);
    put(a, "", "x", 1);
    bool resync;
    cJSON *arr = feed(a, 42, 10, &resync); /* a reader at 42 of a feed that has 1 */
    ASSERT(resync);
    cJSON_Delete(arr);
    astore_close(a);
    astore_close(b);
}

/* A child storing adapters is SIGKILLed at a random moment, many times: after each kill,
 * replaying the feed onto an empty store gives exactly the catalogue left behind (the
 * feed and the store were written in the same transactions). */
TEST(sigkill_feed_matches_store) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/p", test_tmpdir());
    srand(1234);
    for (int round = 0; round < 6; round++) {
        pid_t pid = fork();
        ASSERT(pid >= 0);
        if (pid == 0) {
            astore *s = open_store(dir, 0);
            for (uint64_t i = 0;; i++) {
                char name[16];
                snprintf(name, sizeof name, "k%llu", (unsigned long long)(i % 13));
                put(s, "", name, i + (uint64_t)round * 100000);
                if (i % 5 == 4) astore_delete_scoped(s, "", name, NULL);
            }
        }
        usleep((useconds_t)(20000 + rand() % 80000));
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        char fdir[4200];
        snprintf(fdir, sizeof fdir, "%s/f%d", test_tmpdir(), round);
        astore *p = open_store(dir, 0), *f = open_store(fdir, 0);
        replay(p, f, 0);
        same_catalogue(p, f);
        astore_close(p);
        astore_close(f);
    }
}

TEST_MAIN(sequence_order_every_write, odd_keys_stay_json, failed_writes_leave_no_record, idempotent_apply_and_position,
          retention_and_resync, snapshot_resync, feed_identity, sigkill_feed_matches_store)
