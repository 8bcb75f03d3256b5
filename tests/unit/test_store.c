/* tests/unit/test_store.c — the LMDB adapter store: put / get / list / delete, versions,
 * refcounted blob sharing, pagination over 2,500 names, map growth from a 256 KiB map,
 * PEFTD_ENOSPC at the growth limit with everything stored before intact, reopen, schema
 * refusal, checksum detection of a damaged blob, readers racing a growing writer, and
 * crash safety: a child process storing adapters is SIGKILLed at random moments and every
 * reopen must find complete, checksum-valid adapters with exact refcounts.
 *
 * In these tests meta.sha256 is the sha256 of the blob bytes themselves, so the test can
 * recompute it; in peftd it is the adapter's content hash over the uploaded files, and the
 * store's own per-blob checksum (checked by astore_get_blob) guards the bytes. */
#include <errno.h>
#include <lmdb.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "adapter_store/store.h"
#include "tests/harness/test.h"

/* ---- helpers ------------------------------------------------------------------------ */

static astore *open_store(const char *dir, size_t map, size_t max) {
    astore_options o = {.map_bytes = map, .max_map_bytes = max};
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

/* A deterministic blob of n bytes for seed. @note caller frees. */
static unsigned char *make_blob(uint64_t seed, size_t n) {
    unsigned char *b = malloc(n ? n : 1);
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        b[i] = (unsigned char)x;
    }
    return b;
}

static astore_meta meta_for(const char *name, const void *blob, size_t n) {
    astore_meta m;
    memset(&m, 0, sizeof m);
    snprintf(m.name, sizeof m.name, "%s", name);
    snprintf(m.owner, sizeof m.owner, "tenant-a");
    m.kind = ADAPTER_LORA;
    hex_sha256(blob, n, m.sha256);
    m.n_params = 12345;
    m.n_ranks = 2;
    m.ranks[0] = 8, m.ranks[1] = 16;
    snprintf(m.targets, sizeof m.targets, "q_proj,v_proj");
    snprintf(m.base_fingerprint, sizeof m.base_fingerprint, "%064d", 7);
    return m;
}

/* Puts seed's blob of n bytes as name; returns the stored meta. */
static astore_meta put(astore *s, const char *name, uint64_t seed, size_t n, char old[65]) {
    unsigned char *b = make_blob(seed, n);
    astore_meta m = meta_for(name, b, n), out;
    char tmp[65];
    int rc = astore_put(s, &m, b, n, &out, old ? old : tmp);
    if (rc) FAIL("astore_put(%s, %zu bytes): %d %s", name, n, rc, peftd_strerror(rc));
    free(b);
    return out;
}

/* The blob of meta m is there, its length is m->bytes and it hashes to m->sha256. */
static void check_blob(astore *s, const astore_meta *m) {
    void *b = NULL;
    size_t n = 0;
    char h[65];
    int rc = astore_get_blob(s, m->sha256, &b, &n);
    if (rc) FAIL("%s: astore_get_blob: %d %s", m->name, rc, peftd_strerror(rc));
    ASSERT_EQ(n, m->bytes);
    hex_sha256(b, n, h);
    ASSERT_STREQ(h, m->sha256);
    free(b);
}

/* ---- basics ------------------------------------------------------------------------- */

TEST(put_get_versions_delete) {
    astore *s = open_store(test_tmpdir(), 0, 0);
    char old[65] = "x";
    time_t t0 = time(NULL);
    astore_meta a1 = put(s, "alpha", 1, 1000, old);
    ASSERT_STREQ(old, "");
    ASSERT_EQ(a1.version, 1);
    ASSERT_EQ(a1.bytes, 1000);
    ASSERT(a1.created >= t0 && a1.created == a1.updated);

    astore_meta g;
    ASSERT_EQ(astore_get_meta(s, "alpha", &g), 0);
    ASSERT_STREQ(g.name, "alpha");
    ASSERT_STREQ(g.owner, "tenant-a");
    ASSERT_EQ(g.kind, ADAPTER_LORA);
    ASSERT_STREQ(g.sha256, a1.sha256);
    ASSERT_EQ(g.version, 1);
    ASSERT_EQ(g.n_params, 12345);
    ASSERT_EQ(g.n_ranks, 2);
    ASSERT_EQ(g.ranks[1], 16);
    ASSERT_STREQ(g.targets, "q_proj,v_proj");
    ASSERT_STREQ(g.base_fingerprint, a1.base_fingerprint);
    check_blob(s, &g);

    /* new content: version 2, created kept, the old blob is dropped and reported */
    astore_meta a2 = put(s, "alpha", 2, 2000, old);
    ASSERT_EQ(a2.version, 2);
    ASSERT_EQ(a2.created, a1.created);
    ASSERT_STREQ(old, a1.sha256);
    void *b;
    size_t n;
    ASSERT_EQ(astore_get_blob(s, a1.sha256, &b, &n), PEFTD_ENOTFOUND);
    check_blob(s, &a2);

    /* same content again: version 3, nothing dropped */
    astore_meta a3 = put(s, "alpha", 2, 2000, old);
    ASSERT_EQ(a3.version, 3);
    ASSERT_STREQ(old, "");
    check_blob(s, &a3);

    ASSERT_EQ(astore_get_meta(s, "beta", &g), PEFTD_ENOTFOUND);
    ASSERT_EQ(astore_delete(s, "alpha", old), 0);
    ASSERT_STREQ(old, a2.sha256);
    ASSERT_EQ(astore_get_meta(s, "alpha", &g), PEFTD_ENOTFOUND);
    ASSERT_EQ(astore_get_blob(s, a2.sha256, &b, &n), PEFTD_ENOTFOUND);
    ASSERT_EQ(astore_delete(s, "alpha", old), PEFTD_ENOTFOUND);

    /* a name deleted and uploaded again starts over at version 1 */
    ASSERT_EQ(put(s, "alpha", 3, 10, NULL).version, 1);

    /* bad arguments */
    unsigned char x = 0;
    astore_meta bad = meta_for("", &x, 1);
    ASSERT_EQ(astore_put(s, &bad, &x, 1, NULL, NULL), PEFTD_EINVAL);
    bad = meta_for("ok", &x, 1);
    bad.sha256[3] = 'G';
    ASSERT_EQ(astore_put(s, &bad, &x, 1, NULL, NULL), PEFTD_EINVAL);
    bad = meta_for("ok", &x, 1);
    memset(bad.name, 'n', ASTORE_NAME_MAX + 1); /* no terminator inside the field */
    ASSERT_EQ(astore_put(s, &bad, &x, 1, NULL, NULL), PEFTD_EINVAL);
    bad = meta_for("ok", &x, 1);
    bad.kind = (adapter_kind)0;
    ASSERT_EQ(astore_put(s, &bad, &x, 1, NULL, NULL), PEFTD_EINVAL);
    bad = meta_for("ok", &x, 1);
    bad.n_params = -5; /* would be refused when read back: never written */
    ASSERT_EQ(astore_put(s, &bad, &x, 1, NULL, NULL), PEFTD_EINVAL);
    ASSERT_EQ(astore_get_meta(s, "ok", &g), PEFTD_ENOTFOUND);
    ASSERT_EQ(astore_get_blob(s, "abc", &b, &n), PEFTD_EINVAL);

    uint64_t cnt;
    ASSERT_EQ(astore_count(s, &cnt), 0);
    ASSERT_EQ(cnt, 1);
    astore_close(s);
    astore_close(NULL);
}

TEST(shared_blobs_are_refcounted) {
    astore *s = open_store(test_tmpdir(), 0, 0);
    char old[65];
    astore_stats st;
    astore_meta x = put(s, "x", 42, 5000, old);
    astore_meta y = put(s, "y", 42, 5000, old);
    ASSERT_STREQ(x.sha256, y.sha256);
    ASSERT_EQ(astore_get_stats(s, &st), 0);
    ASSERT_EQ(st.entries, 2);
    ASSERT_EQ(st.blobs, 1);

    /* x moves on: the shared blob stays for y */
    put(s, "x", 43, 5000, old);
    ASSERT_STREQ(old, "");
    check_blob(s, &y);
    ASSERT_EQ(astore_get_stats(s, &st), 0);
    ASSERT_EQ(st.blobs, 2);

    /* x comes back to y's content: shares again */
    put(s, "x", 42, 5000, old);
    ASSERT_EQ(astore_get_stats(s, &st), 0);
    ASSERT_EQ(st.blobs, 1);

    ASSERT_EQ(astore_delete(s, "x", old), 0);
    ASSERT_STREQ(old, ""); /* y still uses it */
    check_blob(s, &y);
    ASSERT_EQ(astore_delete(s, "y", old), 0);
    ASSERT_STREQ(old, y.sha256);
    ASSERT_EQ(astore_get_stats(s, &st), 0);
    ASSERT_EQ(st.entries, 0);
    ASSERT_EQ(st.blobs, 0);
    astore_close(s);
}

TEST(pagination_2500_names) {
    enum { N = 2500 };
    astore *s = open_store(test_tmpdir(), 1 << 20, 256 << 20);
    /* inserted in a scrambled order; names of different lengths test byte order */
    for (int i = 0; i < N; i++) {
        int k = (int)(((unsigned)i * 1543u) % N);
        char name[32];
        snprintf(name, sizeof name, "ad-%d", k);
        put(s, name, (uint64_t)(k % 50), 64 + (size_t)(k % 50), NULL);
    }
    uint64_t cnt;
    ASSERT_EQ(astore_count(s, &cnt), 0);
    ASSERT_EQ(cnt, N);
    char after[ASTORE_NAME_MAX + 1] = "", prev[ASTORE_NAME_MAX + 1] = "";
    astore_meta page[97];
    int total = 0, pages = 0;
    bool more = true, *seen = calloc(N, 1);
    while (more) {
        int n = -1;
        ASSERT_EQ(astore_list(s, after, 97, page, &n, &more), 0);
        ASSERT(n == 97 || !more);
        for (int i = 0; i < n; i++) {
            ASSERT(strcmp(page[i].name, prev) > 0); /* strictly increasing: no dupes */
            memcpy(prev, page[i].name, sizeof prev);
            int k = atoi(page[i].name + 3);
            ASSERT(k >= 0 && k < N && !seen[k]);
            seen[k] = true;
        }
        total += n;
        pages++;
        if (n) memcpy(after, page[n - 1].name, sizeof after);
    }
    ASSERT_EQ(total, N);
    ASSERT_EQ(pages, (N + 96) / 97);
    /* a cursor between names, past the end, and limit 0 */
    int n;
    ASSERT_EQ(astore_list(s, "ad-1000x", 2, page, &n, &more), 0);
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(page[0].name, "ad-1001");
    ASSERT_EQ(astore_list(s, "zzz", 5, page, &n, &more), 0);
    ASSERT_EQ(n, 0);
    ASSERT(!more);
    ASSERT_EQ(astore_list(s, "", 0, page, &n, &more), 0);
    ASSERT_EQ(n, 0);
    ASSERT(more);
    astore_stats st;
    ASSERT_EQ(astore_get_stats(s, &st), 0);
    ASSERT_EQ(st.blobs, 50);
    free(seen);
    astore_close(s);
}

/* ---- map size ----------------------------------------------------------------------- */

TEST(map_grows_from_256k) {
    astore *s = open_store(test_tmpdir(), 256 << 10, 256 << 20);
    astore_stats st;
    ASSERT_EQ(astore_get_stats(s, &st), 0);
    ASSERT_EQ(st.map_bytes, 256 << 10);
    astore_meta m[120];
    for (int i = 0; i < 120; i++) {
        char name[16];
        snprintf(name, sizeof name, "g%03d", i);
        m[i] = put(s, name, (uint64_t)i + 1000, 40000 + (size_t)i * 977, NULL);
    }
    ASSERT_EQ(astore_get_stats(s, &st), 0);
    ASSERT(st.map_bytes >= st.used_bytes);
    ASSERT(st.map_bytes > (1u << 22));       /* ~7 MB of blobs: grew past 4 MiB */
    ASSERT_EQ(st.map_bytes & (st.map_bytes - 1), 0); /* by doubling */
    for (int i = 0; i < 120; i++) check_blob(s, &m[i]);
    astore_close(s);
}

TEST(full_store_enospc_keeps_everything) {
    const char *dir = test_tmpdir();
    astore *s = open_store(dir, 256 << 10, 1 << 20);
    astore_meta m[64];
    int n = 0, rc = 0;
    for (; n < 64; n++) {
        char name[16];
        snprintf(name, sizeof name, "f%02d", n);
        unsigned char *b = make_blob((uint64_t)n + 7, 60000);
        astore_meta in = meta_for(name, b, 60000);
        rc = astore_put(s, &in, b, 60000, &m[n], NULL);
        free(b);
        if (rc) break;
    }
    ASSERT_EQ(rc, PEFTD_ENOSPC);
    ASSERT(n >= 8 && n < 20); /* 1 MiB holds a dozen 60 kB blobs */
    astore_meta g;
    char name[16];
    snprintf(name, sizeof name, "f%02d", n);
    ASSERT_EQ(astore_get_meta(s, name, &g), PEFTD_ENOTFOUND);
    astore_stats st;
    ASSERT_EQ(astore_get_stats(s, &st), 0);
    ASSERT_EQ(st.map_bytes, 1 << 20);
    ASSERT_EQ(st.entries, n);

    /* replacing an existing name with a blob that does not fit leaves the old version */
    unsigned char *big = make_blob(999, 900000);
    astore_meta in = meta_for("f00", big, 900000);
    char old[65] = "x";
    ASSERT_EQ(astore_put(s, &in, big, 900000, NULL, old), PEFTD_ENOSPC);
    ASSERT_STREQ(old, "");
    free(big);
    ASSERT_EQ(astore_get_meta(s, "f00", &g), 0);
    ASSERT_EQ(g.version, 1);
    for (int i = 0; i < n; i++) check_blob(s, &m[i]);

    /* deleting makes room again (LMDB reuses a freed page once no snapshot can see it,
     * so free a few) */
    for (int i = 1; i <= 4; i++) {
        snprintf(name, sizeof name, "f%02d", i);
        ASSERT_EQ(astore_delete(s, name, NULL), 0);
    }
    put(s, "after", 5, 60000, NULL);
    astore_close(s);

    /* and it all survives a reopen */
    s = open_store(dir, 256 << 10, 1 << 20);
    for (int i = 0; i < n; i++)
        if (i < 1 || i > 4) check_blob(s, &m[i]);
    astore_close(s);
}

TEST(reopen_keeps_everything) {
    const char *d = test_tmpdir();
    astore *s = open_store(d, 256 << 10, 64 << 20);
    astore_meta m[40];
    for (int i = 0; i < 40; i++) {
        char name[16];
        snprintf(name, sizeof name, "r%02d", i);
        m[i] = put(s, name, (uint64_t)i, 30000, NULL);
    }
    astore_stats st1, st2;
    ASSERT_EQ(astore_get_stats(s, &st1), 0);
    astore_close(s);
    /* a smaller configured map does not shrink the one the store grew to */
    s = open_store(d, 256 << 10, 64 << 20);
    ASSERT_EQ(astore_get_stats(s, &st2), 0);
    ASSERT_EQ(st2.entries, 40);
    ASSERT_EQ(st2.blobs, 40);
    ASSERT(st2.map_bytes >= st1.map_bytes);
    for (int i = 0; i < 40; i++) {
        astore_meta g;
        ASSERT_EQ(astore_get_meta(s, m[i].name, &g), 0);
        ASSERT_STREQ(g.sha256, m[i].sha256);
        ASSERT_EQ(g.created, m[i].created);
        check_blob(s, &g);
    }
    ASSERT_EQ(put(s, "r00", 1000, 10, NULL).version, 2);
    astore_close(s);
}

/* ---- what lies on disk -------------------------------------------------------------- */

/* Opens the raw environment to tamper with it like a disk fault or a newer peftd would. */
static void raw_put(const char *dir, const char *db, const char *key, void (*edit)(MDB_val *v, void *ud), void *ud) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    ASSERT_EQ(mdb_env_create(&env), 0);
    ASSERT_EQ(mdb_env_set_maxdbs(env, 8), 0);
    ASSERT_EQ(mdb_env_open(env, dir, 0, 0600), 0);
    ASSERT_EQ(mdb_txn_begin(env, NULL, 0, &txn), 0);
    ASSERT_EQ(mdb_dbi_open(txn, db, 0, &dbi), 0);
    MDB_val k = {strlen(key), (void *)key}, v;
    ASSERT_EQ(mdb_get(txn, dbi, &k, &v), 0);
    void *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    v.mv_data = copy;
    edit(&v, ud);
    ASSERT_EQ(mdb_put(txn, dbi, &k, &v, 0), 0);
    ASSERT_EQ(mdb_txn_commit(txn), 0);
    free(copy);
    mdb_env_close(env);
}

static void flip_last_byte(MDB_val *v, void *ud) {
    (void)ud;
    ((unsigned char *)v->mv_data)[v->mv_size - 1] ^= 0x40;
}

static void set_schema_99(MDB_val *v, void *ud) {
    (void)ud;
    v->mv_data = "99";
    v->mv_size = 2;
}

TEST(damaged_blob_detected) {
    const char *d = test_tmpdir();
    astore *s = open_store(d, 0, 0);
    astore_meta m = put(s, "a", 1, 4096, NULL);
    astore_close(s);
    raw_put(d, "blobs", m.sha256, flip_last_byte, NULL);
    s = open_store(d, 0, 0);
    void *b = (void *)1;
    size_t n = 1;
    ASSERT_EQ(astore_get_blob(s, m.sha256, &b, &n), PEFTD_EIO);
    ASSERT(b == NULL && n == 0);
    astore_close(s);
}

TEST(newer_schema_refused) {
    const char *d = test_tmpdir();
    astore *s = open_store(d, 0, 0);
    put(s, "a", 1, 100, NULL);
    astore_close(s);
    raw_put(d, "info", "schema", set_schema_99, NULL);
    astore_options o = {0};
    char err[512];
    s = (astore *)1;
    ASSERT_EQ(astore_open(d, &o, &s, err, sizeof err), PEFTD_EUNSUPPORTED);
    ASSERT(s == NULL);
    if (!strstr(err, "99") || !strstr(err, "newer")) FAIL("message: %s", err);
}

/* ---- threads -------------------------------------------------------------------------- */

typedef struct {
    astore *s;
    volatile int *stop;
    int reads;
    int errors;
} reader_arg;

static void *reader(void *p) {
    reader_arg *r = p;
    astore_meta page[16];
    while (!*r->stop) {
        int n;
        bool more;
        if (astore_list(r->s, "", 16, page, &n, &more)) r->errors++;
        for (int i = 0; i < n; i++) {
            void *b;
            size_t len;
            char h[65];
            if (astore_get_blob(r->s, page[i].sha256, &b, &len)) {
                /* the name may have moved on since the list: only a vanished blob is fine */
                astore_meta g;
                if (astore_get_meta(r->s, page[i].name, &g) == 0 && !strcmp(g.sha256, page[i].sha256)) r->errors++;
                continue;
            }
            hex_sha256(b, len, h);
            if (strcmp(h, page[i].sha256)) r->errors++;
            free(b);
            r->reads++;
        }
    }
    return NULL;
}

/* Readers on other threads while the writer grows the map many times over. */
TEST(readers_during_growth) {
    astore *s = open_store(test_tmpdir(), 256 << 10, 512 << 20);
    volatile int stop = 0;
    reader_arg ra[4];
    pthread_t th[4];
    put(s, "seed", 1, 1000, NULL);
    for (int i = 0; i < 4; i++) {
        ra[i] = (reader_arg){.s = s, .stop = &stop};
        ASSERT_EQ(pthread_create(&th[i], NULL, reader, &ra[i]), 0);
    }
    for (int i = 0; i < 150; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%02d", i % 30);
        put(s, name, (uint64_t)i, 20000 + (size_t)i * 1500, NULL);
    }
    stop = 1;
    int reads = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ASSERT_EQ(ra[i].errors, 0);
        reads += ra[i].reads;
    }
    ASSERT(reads > 0);
    astore_stats st;
    ASSERT_EQ(astore_get_stats(s, &st), 0);
    ASSERT(st.map_bytes >= (8u << 20));
    astore_close(s);
}

/* ---- crash safety --------------------------------------------------------------------- */

#define CRASH_NAMES 24

/* The child: stores (and now and then deletes) adapters of varying sizes until killed. */
static void crash_child(const char *dir, uint64_t seed) {
    astore_options o = {.map_bytes = 256 << 10, .max_map_bytes = 256 << 20};
    astore *s = NULL;
    char err[256];
    if (astore_open(dir, &o, &s, err, sizeof err)) _exit(3);
    uint64_t x = seed;
    for (;;) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        char name[16];
        snprintf(name, sizeof name, "c%02d", (int)((x >> 33) % CRASH_NAMES));
        if ((x >> 20) % 10 == 0) {
            astore_delete(s, name, NULL);
            continue;
        }
        /* 1 B .. 256 KiB, and a few larger ones that force map growth */
        size_t n = (x >> 40) % 8 == 0 ? 300000 + (size_t)((x >> 10) % 700000) : 1 + (size_t)((x >> 12) % 262144);
        unsigned char *b = make_blob(x % 64, n);
        astore_meta m = meta_for(name, b, n);
        if (astore_put(s, &m, b, n, NULL, NULL)) _exit(4);
        free(b);
    }
}

/* Every listed name's blob is there and whole; no blob is orphaned; refcounts are exact
 * (deleting every name leaves no blob behind). */
static int verify_store(const char *dir, bool drain) {
    astore *s = open_store(dir, 256 << 10, 256 << 20);
    astore_meta page[CRASH_NAMES + 1];
    int n;
    bool more;
    ASSERT_EQ(astore_list(s, "", CRASH_NAMES + 1, page, &n, &more), 0);
    ASSERT(!more);
    char shas[CRASH_NAMES][65];
    int distinct = 0;
    for (int i = 0; i < n; i++) {
        check_blob(s, &page[i]);
        bool dup = false;
        for (int j = 0; j < distinct; j++) dup |= !strcmp(shas[j], page[i].sha256);
        if (!dup) memcpy(shas[distinct++], page[i].sha256, 65);
    }
    astore_stats st;
    ASSERT_EQ(astore_get_stats(s, &st), 0);
    ASSERT_EQ(st.entries, n);
    ASSERT_EQ(st.blobs, distinct);
    if (drain) {
        for (int i = 0; i < n; i++) ASSERT_EQ(astore_delete(s, page[i].name, NULL), 0);
        ASSERT_EQ(astore_get_stats(s, &st), 0);
        ASSERT_EQ(st.entries, 0);
        ASSERT_EQ(st.blobs, 0);
    }
    astore_close(s);
    return n;
}

TEST(sigkill_at_random_moments) {
    const char *d = test_tmpdir();
    uint64_t r = (uint64_t)time(NULL) ^ (uint64_t)getpid() << 20;
    int iters = 24, total = 0, exited = 0;
    for (int it = 0; it < iters; it++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        pid_t pid = fork();
        ASSERT(pid >= 0);
        if (pid == 0) crash_child(d, r | 1);
        /* 5..250 ms: from mid-open to dozens of commits, landing anywhere inside a put */
        usleep((useconds_t)(5000 + (r >> 33) % 245000));
        kill(pid, SIGKILL);
        int status;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status)) exited++;
        total += verify_store(d, it == iters - 1);
    }
    ASSERT_EQ(exited, 0); /* the child never gave up on an error */
    ASSERT(total > 0);
    printf("  %d kills, %d adapters verified in total\n", iters, total);
}

/* Issue 9 defect 9: a data.mdb cut short (a full disk during a copy, a bad restore) made
 * LMDB SIGBUS inside astore_list at start-up. Every truncation point past the meta pages
 * must be refused with PEFTD_EFORMAT and a message naming the file, never a crash (the
 * harness forks each test: a SIGBUS fails it). */
TEST(truncated_data_file_refused) {
    const char *dir = test_tmpdir();
    char d[128], path[160];
    snprintf(d, sizeof d, "%s", dir);
    snprintf(path, sizeof path, "%s/data.mdb", d);
    astore *s = open_store(d, 1 << 20, 8 << 20);
    for (int i = 0; i < 20; i++) {
        char name[32];
        snprintf(name, sizeof name, "a%02d", i);
        put(s, name, (uint64_t)i + 1, 20000, NULL);
    }
    astore_close(s);
    struct stat sb;
    ASSERT_EQ(stat(path, &sb), 0);
    off_t full = sb.st_size;
    ASSERT(full > 64 * 1024);
    /* cut at several points: just past the two meta pages, mid-file, one page short */
    off_t cuts[] = {2 * 4096 + 100, full / 2, full - 4096};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        ASSERT_EQ(truncate(path, cuts[i]), 0);
        astore_options o = {.map_bytes = 1 << 20, .max_map_bytes = 8 << 20};
        char err[512] = "";
        astore *t = NULL;
        ASSERT_EQ(astore_open(d, &o, &t, err, sizeof err), PEFTD_EFORMAT);
        ASSERT(t == NULL);
        ASSERT(strstr(err, path) && strstr(err, "truncated"));
    }
}

/* Issue 9 defect 11: two processes on one store disagree about its contents. The
 * exclusive lock is a flock on an open file description, so a second open in the same
 * process conflicts just like another process; closing releases it. */
TEST(exclusive_lock_refuses_a_second_opener) {
    const char *dir = test_tmpdir();
    astore_options o = {.map_bytes = 1 << 20, .max_map_bytes = 8 << 20, .exclusive = true};
    astore *a = NULL, *b = NULL;
    char err[512] = "";
    ASSERT_EQ(astore_open(dir, &o, &a, err, sizeof err), 0);
    ASSERT_EQ(astore_open(dir, &o, &b, err, sizeof err), PEFTD_EBUSY);
    ASSERT(b == NULL);
    ASSERT(strstr(err, "in use by another process") && strstr(err, "peftd.lock"));
    char pid[32];
    snprintf(pid, sizeof pid, "pid %ld", (long)getpid());
    ASSERT(strstr(err, pid));
    astore_close(a);
    ASSERT_EQ(astore_open(dir, &o, &b, err, sizeof err), 0);
    astore_close(b);
}

TEST_MAIN(put_get_versions_delete, shared_blobs_are_refcounted, pagination_2500_names, map_grows_from_256k,
          full_store_enospc_keeps_everything, reopen_keeps_everything, damaged_blob_detected, newer_schema_refused,
          readers_during_growth, sigkill_at_random_moments, truncated_data_file_refused,
          exclusive_lock_refuses_a_second_opener)
