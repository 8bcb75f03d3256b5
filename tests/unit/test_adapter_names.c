/* tests/unit/test_adapter_names.c — adapter names with '/' (Hugging Face-style ids
 * "org/name"): the name rules (registry_name_valid: segments, no "..", no empty segment,
 * bounded, printable ASCII only), tenant ids staying one segment, the store's key encoding
 * (astore_key: a name's '/' written ':'), keys of names without '/' exactly as before (old
 * stores read unchanged), no two (owner, name) pairs sharing a key, registry_key_valid
 * accepting exactly astore_key's outputs, and the store itself: put / get / list /
 * visible listing with pagination / delete of slashed names next to the names they could
 * be confused with, across a reopen. */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/registry.h"
#include "adapter_store/store.h"
#include "adapter_store/tenant_store.h"
#include "tests/harness/test.h"

TEST(name_rules) {
    static const char *ok[] = {"a", "org/name", "meta-llama/Llama-3.2-1B_lora.v2", "a/b/c", "A9._-/x_", "x..y/z"};
    static const char *bad[] = {"", "/", "/a", "a/", "a//b", "../a", "a/../b", "a/..", "a/./b", "a/.hidden",
                                "a/-x", "-a/b", ".a/b", "a b/c", "a/b c", "a:b", "a\\b", "a/b\n", "caf\xc3\xa9/x",
                                "a%2Fb", "a?b", "a#b"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!registry_name_valid(ok[i])) FAIL("'%s' refused", ok[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (registry_name_valid(bad[i])) FAIL("'%s' accepted", bad[i]);
    char n[80];
    memset(n, 'a', sizeof n);
    n[64] = 0;
    n[10] = '/';
    ASSERT(registry_name_valid(n)); /* 64 bytes, a slash included */
    n[64] = 'a', n[65] = 0;
    ASSERT(!registry_name_valid(n)); /* 65 */
    ASSERT(!registry_name_valid(NULL));
    /* tenant ids: one segment */
    ASSERT(registry_id_valid("tenant-1"));
    ASSERT(!registry_id_valid("x/a"));
    ASSERT(!tstore_id_valid("x/a"));
    ASSERT(!tstore_id_valid("x:a"));
    ASSERT(tstore_id_valid("x"));
}

TEST(keys_are_unambiguous_and_old_keys_unchanged) {
    char k[ASTORE_KEY_MAX + 1];
    /* names without '/': the keys every store written before had */
    ASSERT_EQ(astore_key("", "bot", k), 0);
    ASSERT_STREQ(k, "bot");
    ASSERT_EQ(astore_key("t1", "bot", k), 0);
    ASSERT_STREQ(k, "t1/bot");
    /* with '/' */
    ASSERT_EQ(astore_key("", "org/name", k), 0);
    ASSERT_STREQ(k, "org:name");
    ASSERT_EQ(astore_key("x", "a/b", k), 0);
    ASSERT_STREQ(k, "x/a:b");
    ASSERT_EQ(astore_key("", "x/a/b", k), 0);
    ASSERT_STREQ(k, "x:a:b");
    /* refused: ':' in a name, '/' or ':' in an owner */
    ASSERT_EQ(astore_key("", "a:b", k), PEFTD_EINVAL);
    ASSERT_EQ(astore_key("x/a", "b", k), PEFTD_EINVAL);
    ASSERT_EQ(astore_key("x:a", "b", k), PEFTD_EINVAL);

    /* every pair of (owner, name) from these sets gets its own key, and the key parses
     * back (registry_key_valid) only in the form astore_key builds */
    static const char *owners[] = {"", "x", "a", "org", "xa"};
    static const char *names[] = {"a", "b", "a/b", "x/a", "x/a/b", "org/name", "name", "xa/b", "x", "b/a"};
    enum { NO = sizeof owners / sizeof owners[0], NN = sizeof names / sizeof names[0] };
    static char keys[NO * NN][ASTORE_KEY_MAX + 1];
    for (int o = 0; o < NO; o++)
        for (int i = 0; i < NN; i++) {
            char *key = keys[o * NN + i];
            ASSERT_EQ(astore_key(owners[o], names[i], key), 0);
            if (!registry_key_valid(key)) FAIL("key '%s' of (%s, %s) refused", key, owners[o], names[i]);
            for (int j = 0; j < o * NN + i; j++)
                if (!strcmp(keys[j], key))
                    FAIL("(%s, %s) and (%s, %s) share key '%s'", owners[o], names[i], owners[j / NN], names[j % NN],
                         key);
        }
    static const char *not_keys[] = {"org/name/x", "x/a/b", "/a", "a/", ":a", "a:", "a::b", "x/:a", "x/a:", "x:a/b",
                                     "a//b", "x/../a", "x/a:..:b", ""};
    for (size_t i = 0; i < sizeof not_keys / sizeof not_keys[0]; i++)
        if (registry_key_valid(not_keys[i])) FAIL("'%s' accepted as a key", not_keys[i]);
}

/* ---- the store ---- */

static char DIR_[128];

static astore *open_store(void) {
    astore *s = NULL;
    char err[512];
    int rc = astore_open(DIR_, NULL, &s, err, sizeof err);
    if (rc) FAIL("astore_open: %d %s", rc, err);
    return s;
}

/* A put of a blob of 16 + v bytes (byte value v) as owner's name. */
static int put(astore *s, const char *owner, const char *name, unsigned char v) {
    size_t n = 16 + v;
    unsigned char b[16 + 256];
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
    return astore_put_scoped(s, &m, 0, b, n, NULL, NULL);
}

static void expect(astore *s, const char *owner, const char *name, unsigned char v) {
    astore_meta m;
    int rc = astore_get_meta_scoped(s, owner, name, &m);
    if (rc) FAIL("(%s, %s): %d", owner, name, rc);
    ASSERT_STREQ(m.name, name);
    ASSERT_STREQ(m.owner, owner);
    ASSERT_EQ(m.bytes, 16 + v);
}

TEST(store_slashed_names_beside_their_lookalikes) {
    snprintf(DIR_, sizeof DIR_, "%s", test_tmpdir());
    astore *s = open_store();
    /* the confusable set: public "x/a" vs tenant x's "a"; public "x/a/b" vs x's "a/b" */
    ASSERT_EQ(put(s, "", "x/a", 1), 0);
    ASSERT_EQ(put(s, "x", "a", 2), 0);
    ASSERT_EQ(put(s, "", "x/a/b", 3), 0);
    ASSERT_EQ(put(s, "x", "a/b", 4), 0);
    ASSERT_EQ(put(s, "", "org/name", 5), 0);
    ASSERT_EQ(put(s, "", "org", 6), 0);
    ASSERT_EQ(put(s, "", "org-z", 7), 0);
    ASSERT_EQ(put(s, "", "a:b", 8), PEFTD_EINVAL);
    for (int pass = 0; pass < 2; pass++) {
        expect(s, "", "x/a", 1);
        expect(s, "x", "a", 2);
        expect(s, "", "x/a/b", 3);
        expect(s, "x", "a/b", 4);
        expect(s, "", "org/name", 5);
        astore_meta m;
        ASSERT_EQ(astore_get_meta_scoped(s, "org", "name", &m), PEFTD_ENOTFOUND);
        ASSERT_EQ(astore_get_meta_scoped(s, "x", "a/b/c", &m), PEFTD_ENOTFOUND);
        /* the public view: the five public names, none of x's */
        astore_meta v[16];
        int n;
        bool more;
        ASSERT_EQ(astore_list_visible(s, "", "", 16, v, &n, &more), 0);
        ASSERT_EQ(n, 5);
        for (int i = 0; i < n; i++) ASSERT_STREQ(v[i].owner, "");
        /* x's view: its own "a" and "a/b", plus the public ones (no name in common) */
        ASSERT_EQ(astore_list_visible(s, "x", "", 16, v, &n, &more), 0);
        ASSERT_EQ(n, 7);
        /* pages of one, each after the previous name, give the same names in the same order */
        char after[ASTORE_NAME_MAX + 1] = "";
        for (int i = 0; i < 7; i++) {
            astore_meta one;
            int k;
            ASSERT_EQ(astore_list_visible(s, "x", after, 1, &one, &k, &more), 0);
            ASSERT_EQ(k, 1);
            ASSERT_STREQ(one.name, v[i].name);
            ASSERT_STREQ(one.owner, v[i].owner);
            ASSERT_EQ(more, i < 6);
            snprintf(after, sizeof after, "%s", one.name);
        }
        /* reopen: everything reads back the same */
        astore_close(s);
        s = open_store();
    }
    /* tenant x's deletion takes its two, never the public lookalikes */
    tstore_tenant t;
    memset(&t, 0, sizeof t);
    snprintf(t.id, sizeof t.id, "x");
    t.weight = 1;
    ASSERT_EQ(tstore_tenant_create(s, &t), 0);
    ASSERT_EQ(tstore_tenant_delete(s, "x", NULL), 0);
    astore_meta m;
    ASSERT_EQ(astore_get_meta_scoped(s, "x", "a", &m), PEFTD_ENOTFOUND);
    ASSERT_EQ(astore_get_meta_scoped(s, "x", "a/b", &m), PEFTD_ENOTFOUND);
    expect(s, "", "x/a", 1);
    expect(s, "", "x/a/b", 3);
    /* deleting the public "x/a" leaves "x/a/b" */
    ASSERT_EQ(astore_delete_scoped(s, "", "x/a", NULL), 0);
    ASSERT_EQ(astore_get_meta_scoped(s, "", "x/a", &m), PEFTD_ENOTFOUND);
    expect(s, "", "x/a/b", 3);
    astore_close(s);
}

TEST_MAIN(name_rules, keys_are_unambiguous_and_old_keys_unchanged, store_slashed_names_beside_their_lookalikes)
