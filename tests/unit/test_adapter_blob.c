/* tests/unit/test_adapter_blob.c — adapter_blob_write / adapter_blob_read: every fixture
 * adapter in tests/fixtures/adapters (imported against the embedded stories260K base)
 * survives write -> read with every field and every tensor byte identical; damaged blobs
 * (truncated, edited metadata, bad shapes, NaN, a base with other dims) give a clean
 * status and message; random byte flips never crash (run under `make asan`). */
#include <cJSON.h>
#include <dirent.h>
#include <sys/stat.h>

#include "adapter_store/adapter.h"
#include "adapter_store/adapter_blob.h"
#include "adapter_store/adapter_shared.h"
#include "adapter_store/safetensors.h"
#include "server/model/model.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/test.h"

#define FIXTURES "tests/fixtures/adapters"

static kbackend *KB;
static model *M;
static adapter_base BASE;

static void setup(void) {
    char err[512];
    if (KB) return;
    KB = kbackend_cpu_create(1);
    ASSERT(KB);
    if (model_load("models/stories260K", KB, &M, err, sizeof err)) FAIL("model_load: %s", err);
    ASSERT_EQ(model_adapter_base(M, &BASE), 0);
}

/* Fixture directory names (sorted, NULL-terminated); caller frees each and the array. */
static char **fixtures(int *n) {
    DIR *d = opendir(FIXTURES);
    ASSERT(d);
    char **out = calloc(64, sizeof *out);
    struct dirent *e;
    *n = 0;
    while ((e = readdir(d)) && *n < 63) {
        char p[512];
        struct stat sb;
        snprintf(p, sizeof p, FIXTURES "/%s/adapter_config.json", e->d_name);
        if (e->d_name[0] != '.' && stat(p, &sb) == 0) out[(*n)++] = strdup(e->d_name);
    }
    closedir(d);
    for (int i = 0; i < *n; i++)
        for (int j = i + 1; j < *n; j++)
            if (strcmp(out[i], out[j]) > 0) {
                char *t = out[i];
                out[i] = out[j];
                out[j] = t;
            }
    ASSERT(*n >= 10); /* the fixture set has 14 adapters of every kind */
    return out;
}

static void free_list(char **l, int n) {
    for (int i = 0; i < n; i++) free(l[i]);
    free(l);
}

static adapter *load_fixture(const char *name) {
    char dir[512], err[1024];
    adapter *a = NULL;
    setup();
    snprintf(dir, sizeof dir, FIXTURES "/%s", name);
    int rc = model_load_adapter(M, dir, &a, err, sizeof err);
    if (rc) FAIL("%s: %d %s", dir, rc, err);
    return a;
}

/* ---- byte-exact comparison of two adapters --------------------------------------- */

static void same_bytes(const void *x, const void *y, size_t n, const char *what) {
    if (!x || !y) {
        if (x != y) FAIL("%s: one side is NULL", what);
        return;
    }
    unsigned char *hx = malloc(n + 1), *hy = malloc(n + 1);
    ASSERT(hx && hy);
    ASSERT_EQ(KB->ops->download(KB, hx, x, n), 0);
    ASSERT_EQ(KB->ops->download(KB, hy, y, n), 0);
    if (memcmp(hx, hy, n)) FAIL("%s: %zu bytes differ", what, n);
    free(hx);
    free(hy);
}

static void same_mat(const kmat *x, const kmat *y, const char *what) {
    ASSERT_EQ(x->dtype, y->dtype);
    ASSERT_EQ(x->rows, y->rows);
    ASSERT_EQ(x->cols, y->cols);
    same_bytes(x->data, y->data, (size_t)(x->rows * x->cols) * kdtype_size(x->dtype), what);
}

static void same_float(float x, float y, const char *what) {
    if (memcmp(&x, &y, sizeof x)) FAIL("%s: %.9g vs %.9g", what, x, y);
}

static void same_adapter(const adapter *x, const adapter *y) {
    char w[128];
    int L = x->n_layers, kv = BASE.n_kv_heads * BASE.head_dim;
    ASSERT_EQ(x->kind, y->kind);
    ASSERT_STREQ(x->source, y->source);
    ASSERT_STREQ(x->sha256, y->sha256);
    ASSERT_EQ(x->n_layers, y->n_layers);
    ASSERT_EQ(x->max_rank, y->max_rank);
    ASSERT_EQ(x->n_ranks, y->n_ranks);
    for (int i = 0; i < x->n_ranks; i++) ASSERT_EQ(x->ranks[i], y->ranks[i]);
    ASSERT_EQ(x->n_virtual, y->n_virtual);
    ASSERT_EQ(x->n_params, y->n_params);
    ASSERT_EQ(x->bytes, y->bytes);
    ASSERT(x->kb == y->kb);
    ASSERT_EQ(!x->lora, !y->lora);
    ASSERT_EQ(!x->ia3, !y->ia3);
    ASSERT_EQ(!x->prefix_k, !y->prefix_k);
    ASSERT_EQ(!x->prefix_v, !y->prefix_v);
    ASSERT_EQ(!x->bn_attn, !y->bn_attn);
    ASSERT_EQ(!x->bn_ffn, !y->bn_ffn);
    for (int i = 0; x->lora && i < L * AMOD_COUNT; i++) {
        const adapter_lora *p = &x->lora[i], *q = &y->lora[i];
        int o, in;
        adapter_module_shape(&BASE, (adapter_module)(i % AMOD_COUNT), &o, &in);
        snprintf(w, sizeof w, "lora[%d]", i);
        ASSERT_EQ(p->rank, q->rank);
        same_float(p->scale, q->scale, w);
        same_mat(&p->a, &q->a, w);
        same_mat(&p->b, &q->b, w);
        same_bytes(p->dora, q->dora, (size_t)o * sizeof(float), w);
        ASSERT_EQ(!p->dora_stats, !p->dora); /* host memory: compared directly */
        ASSERT_EQ(!q->dora_stats, !q->dora);
        if (p->dora_stats && memcmp(p->dora_stats, q->dora_stats, (size_t)o * ADAPTER_DORA_STATS * sizeof(float)))
            FAIL("%s: DoRA row statistics differ", w);
        same_bytes(p->bias, q->bias, (size_t)o * sizeof(float), w);
        ASSERT_EQ(!p->base_bias.data, !q->base_bias.data);
        if (p->base_bias.data) same_mat(&p->base_bias, &q->base_bias, w);
        ASSERT_EQ(!p->delta.data, !q->delta.data);
        if (p->delta.data) same_mat(&p->delta, &q->delta, w);
    }
    const adapter_lora *tx[2] = {&x->embed_lora, &x->head_lora}, *ty[2] = {&y->embed_lora, &y->head_lora};
    for (int k = 0; k < 2; k++) {
        ASSERT_EQ(tx[k]->rank, ty[k]->rank);
        if (!tx[k]->rank) continue;
        same_float(tx[k]->scale, ty[k]->scale, k ? "head_lora" : "embed_lora");
        same_mat(&tx[k]->a, &ty[k]->a, k ? "head_lora.a" : "embed_lora.a");
        same_mat(&tx[k]->b, &ty[k]->b, k ? "head_lora.b" : "embed_lora.b");
    }
    for (int m = 0; m < AMOD_COUNT; m++) ASSERT_EQ(x->ia3_input[m], y->ia3_input[m]);
    for (int i = 0; x->ia3 && i < L * AMOD_COUNT; i++) {
        int o, in;
        adapter_module m = (adapter_module)(i % AMOD_COUNT);
        adapter_module_shape(&BASE, m, &o, &in);
        snprintf(w, sizeof w, "ia3[%d]", i);
        same_bytes(x->ia3[i], y->ia3[i], (size_t)(x->ia3_input[m] ? in : o) * sizeof(float), w);
    }
    same_mat(&x->prompt, &y->prompt, "prompt");
    for (int l = 0; x->prefix_k && l < L; l++) {
        snprintf(w, sizeof w, "prefix[%d]", l);
        same_bytes(x->prefix_k[l], y->prefix_k[l], (size_t)x->n_virtual * kv * sizeof(float), w);
        same_bytes(x->prefix_v[l], y->prefix_v[l], (size_t)x->n_virtual * kv * sizeof(float), w);
    }
    for (int l = 0; x->bn_attn && l < 2 * L; l++) {
        const adapter_bottleneck *p = l < L ? &x->bn_attn[l] : &x->bn_ffn[l - L];
        const adapter_bottleneck *q = l < L ? &y->bn_attn[l] : &y->bn_ffn[l - L];
        snprintf(w, sizeof w, "bottleneck[%d]", l);
        ASSERT_EQ(p->size, q->size);
        ASSERT_EQ(p->act, q->act);
        same_float(p->scaling, q->scaling, w);
        ASSERT_EQ(p->residual_before_ln, q->residual_before_ln);
        ASSERT_EQ(p->original_ln_before, q->original_ln_before);
        ASSERT_EQ(p->original_ln_after, q->original_ln_after);
        same_mat(&p->down, &q->down, w);
        same_mat(&p->up, &q->up, w);
        same_bytes(p->down_bias, q->down_bias, (size_t)p->size * sizeof(float), w);
        same_bytes(p->up_bias, q->up_bias, (size_t)BASE.hidden * sizeof(float), w);
    }
    ASSERT_EQ(!x->ln, !y->ln);
    for (int i = 0; x->ln && i < adapter_ln_sites(x); i++) {
        snprintf(w, sizeof w, "ln[%d]", i);
        same_mat(&x->ln[i], &y->ln[i], w);
    }
    ASSERT_EQ(!x->rot, !y->rot);
    for (int i = 0; x->rot && i < L * AMOD_COUNT; i++) { /* OFT / BOFT factors, permutations rebuilt */
        const adapter_rot *p = &x->rot[i], *q = &y->rot[i];
        int o, in;
        adapter_module_shape(&BASE, (adapter_module)(i % AMOD_COUNT), &o, &in);
        ASSERT_EQ(p->n_factors, q->n_factors);
        for (int f = 0; f < p->n_factors; f++) {
            const adapter_rot_factor *pf = &p->f[f], *qf = &q->f[f];
            snprintf(w, sizeof w, "rot[%d].f[%d]", i, f);
            ASSERT_EQ(pf->block, qf->block);
            ASSERT_EQ(pf->shared, qf->shared);
            ASSERT_EQ(pf->perm_blocks, qf->perm_blocks);
            ASSERT_EQ(pf->perm_half, qf->perm_half);
            same_mat(&pf->r, &qf->r, w);
            ASSERT_EQ(!pf->perm, !qf->perm);
            same_bytes(pf->perm, qf->perm, (size_t)in * sizeof(int32_t), w);
        }
        snprintf(w, sizeof w, "rot[%d].out_scale", i);
        ASSERT_EQ(!p->out_scale, !q->out_scale);
        same_bytes(p->out_scale, q->out_scale, (size_t)o * sizeof(float), w);
    }
    same_mat(&x->lm_head, &y->lm_head, "lm_head");
    same_mat(&x->embed, &y->embed, "embed");
}

static void blob_of(const adapter *a, void **blob, size_t *len) {
    int rc = adapter_blob_write_base(a, &BASE, blob, len);
    if (rc) FAIL("adapter_blob_write_base: %d", rc);
    ASSERT(*blob && *len > 8);
}

/* ---- round trips -------------------------------------------------------------------- */

TEST(roundtrip_every_fixture) {
    int n;
    char **names = fixtures(&n);
    for (int i = 0; i < n; i++) {
        adapter *a = load_fixture(names[i]), *b = NULL;
        void *blob;
        size_t len;
        char err[1024];
        blob_of(a, &blob, &len);
        int rc = adapter_blob_read(blob, len, &BASE, &b, err, sizeof err);
        if (rc) FAIL("%s: read: %d %s", names[i], rc, err);
        ASSERT(b->kb == NULL && adapter_on_host(b)); /* decoded in host memory only */
        ASSERT_EQ(adapter_install(b, KB, err, sizeof err), 0);
        same_adapter(a, b);

        /* a second write of the rebuilt adapter is the same bytes: nothing drifts */
        void *blob2;
        size_t len2;
        blob_of(b, &blob2, &len2);
        ASSERT_EQ(len2, len);
        ASSERT(memcmp(blob, blob2, len) == 0);
        free(blob2);
        free(blob);
        adapter_free(b);
        adapter_free(a);
    }
    free_list(names, n);
}

/* Without the base every kind but IA3, BOFT (their vectors' lengths are base dims) and
 * AdapterHub prefix tuning serialises (its dims follow from the tensors). */
TEST(write_without_base) {
    int n;
    char **names = fixtures(&n);
    for (int i = 0; i < n; i++) {
        adapter *a = load_fixture(names[i]), *b = NULL;
        void *blob = NULL;
        size_t len = 0;
        char err[1024];
        int rc = adapter_blob_write(a, &blob, &len);
        if (a->kind == ADAPTER_IA3 || a->kind == ADAPTER_BOFT || a->prefix_from_zero) {
            ASSERT_EQ(rc, PEFTD_EINVAL);
            ASSERT(blob == NULL);
        } else {
            if (rc) FAIL("%s: write: %d", names[i], rc);
            rc = adapter_blob_read(blob, len, &BASE, &b, err, sizeof err);
            if (rc) FAIL("%s: read: %d %s", names[i], rc, err);
            ASSERT_EQ(adapter_install(b, KB, err, sizeof err), 0);
            same_adapter(a, b);
        }
        free(blob);
        adapter_free(b);
        adapter_free(a);
    }
    free_list(names, n);
}

/* ---- damaged blobs ------------------------------------------------------------------ */

static int read_blob(const void *blob, size_t len, const adapter_base *base, char *err, size_t errlen) {
    adapter *b = (adapter *)1;
    err[0] = 0;
    int rc = adapter_blob_read(blob, len, base, &b, err, errlen);
    if (rc == 0) {
        adapter_free(b);
    } else {
        ASSERT(b == NULL);
        ASSERT(err[0]);
    }
    return rc;
}

#define ASSERT_HAS(s, sub)                                                                       \
    do {                                                                                         \
        if (!strstr((s), (sub))) FAIL("message \"%s\" does not contain \"%s\"", (s), (sub));     \
    } while (0)

TEST(truncated_blobs_fail_cleanly) {
    adapter *a = load_fixture("lora_dora");
    void *blob;
    size_t len;
    char err[1024];
    blob_of(a, &blob, &len);
    uint64_t hl;
    memcpy(&hl, blob, 8);
    size_t cuts[] = {0, 1, 7, 8, 9, 8 + (size_t)hl / 2, 8 + (size_t)hl, 8 + (size_t)hl + 1, len / 2, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        /* an exact-size copy so ASan sees any read past the cut */
        void *cp = malloc(cuts[i] ? cuts[i] : 1);
        memcpy(cp, blob, cuts[i]);
        int rc = read_blob(cp, cuts[i], &BASE, err, sizeof err);
        if (rc >= 0) FAIL("cut at %zu of %zu accepted", cuts[i], len);
        free(cp);
    }
    free(blob);
    adapter_free(a);
}

/* Rewrites the "peftd" metadata of blob through edit(); returns a new blob. */
static void *edit_meta(const void *blob, size_t len, void (*edit)(cJSON *meta, void *ud), void *ud, size_t *out_len) {
    uint64_t hl;
    memcpy(&hl, blob, 8);
    cJSON *h = cJSON_ParseWithLength((const char *)blob + 8, (size_t)hl);
    ASSERT(h);
    cJSON *md = cJSON_GetObjectItem(h, "__metadata__");
    cJSON *meta = cJSON_Parse(cJSON_GetObjectItem(md, "peftd")->valuestring);
    ASSERT(meta);
    edit(meta, ud);
    char *ms = cJSON_PrintUnformatted(meta);
    cJSON_ReplaceItemInObject(md, "peftd", cJSON_CreateString(ms));
    char *hs = cJSON_PrintUnformatted(h);
    size_t nl = strlen(hs), pad = (nl + 7) / 8 * 8, data = len - 8 - (size_t)hl;
    unsigned char *o = malloc(8 + pad + data);
    uint64_t p64 = pad;
    memcpy(o, &p64, 8);
    memcpy(o + 8, hs, nl);
    memset(o + 8 + nl, ' ', pad - nl);
    memcpy(o + 8 + pad, (const char *)blob + 8 + hl, data);
    *out_len = 8 + pad + data;
    free(ms);
    free(hs);
    cJSON_Delete(meta);
    cJSON_Delete(h);
    return o;
}

typedef struct {
    const char *key;
    cJSON *value; /* NULL: delete the key */
} edit_kv;

static void set_key(cJSON *meta, void *ud) {
    edit_kv *e = ud;
    if (e->value) cJSON_ReplaceItemInObject(meta, e->key, e->value);
    else cJSON_DeleteItemFromObject(meta, e->key);
}

static void expect_edit(const void *blob, size_t len, const char *key, cJSON *value, int want, const char *sub) {
    edit_kv e = {key, value};
    size_t n;
    char err[1024];
    void *b2 = edit_meta(blob, len, set_key, &e, &n);
    int rc = read_blob(b2, n, &BASE, err, sizeof err);
    if (rc != want) FAIL("edit %s: status %d (%s), expected %d", key, rc, err, want);
    if (sub) ASSERT_HAS(err, sub);
    free(b2);
}

static void bump_first_rank(cJSON *meta, void *ud) {
    (void)ud;
    cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItem(meta, "lora"), 0);
    cJSON_ReplaceItemInObject(e, "rank", cJSON_CreateNumber(cJSON_GetObjectItem(e, "rank")->valuedouble + 1));
}

static void dup_first_module(cJSON *meta, void *ud) {
    (void)ud;
    cJSON *arr = cJSON_GetObjectItem(meta, "lora");
    cJSON_AddItemToArray(arr, cJSON_Duplicate(cJSON_GetArrayItem(arr, 0), 1));
}

static void nan_scale(cJSON *meta, void *ud) {
    (void)ud;
    cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItem(meta, "lora"), 0);
    cJSON_ReplaceItemInObject(e, "scale", cJSON_CreateString("nan"));
}

TEST(edited_metadata_fails_cleanly) {
    adapter *a = load_fixture("lora_dora");
    void *blob;
    size_t len;
    char err[1024];
    blob_of(a, &blob, &len);
    expect_edit(blob, len, "format", cJSON_CreateNumber(ADAPTER_BLOB_FORMAT + 1), PEFTD_EUNSUPPORTED, "format");
    expect_edit(blob, len, "format", NULL, PEFTD_EFORMAT, "format");
    expect_edit(blob, len, "kind", cJSON_CreateString("mystery"), PEFTD_EFORMAT, "mystery");
    expect_edit(blob, len, "kind", cJSON_CreateString("ia3"), PEFTD_EFORMAT, NULL);
    expect_edit(blob, len, "sha256", cJSON_CreateString("xyz"), PEFTD_EFORMAT, "sha256");
    expect_edit(blob, len, "n_layers", cJSON_CreateNumber(BASE.n_layers + 1), PEFTD_EINVAL, "layers");
    expect_edit(blob, len, "max_rank", cJSON_CreateNumber(1), PEFTD_EFORMAT, "max_rank");
    expect_edit(blob, len, "n_virtual", cJSON_CreateNumber(4), PEFTD_EFORMAT, "n_virtual");
    expect_edit(blob, len, "n_params", cJSON_CreateNumber(-1), PEFTD_EFORMAT, "n_params");
    expect_edit(blob, len, "lora", cJSON_CreateArray(), PEFTD_EFORMAT, "unexpected tensor");
    expect_edit(blob, len, "source", cJSON_CreateNumber(3), PEFTD_EFORMAT, "source");

    size_t n;
    void *b2 = edit_meta(blob, len, bump_first_rank, NULL, &n);
    ASSERT_EQ(read_blob(b2, n, &BASE, err, sizeof err), PEFTD_EINVAL); /* shape no longer matches */
    ASSERT_HAS(err, ".a' does not fit base stories260K (expected shape [");
    free(b2);
    b2 = edit_meta(blob, len, dup_first_module, NULL, &n);
    ASSERT_EQ(read_blob(b2, n, &BASE, err, sizeof err), PEFTD_EFORMAT);
    ASSERT_HAS(err, "twice");
    free(b2);
    b2 = edit_meta(blob, len, nan_scale, NULL, &n);
    ASSERT_EQ(read_blob(b2, n, &BASE, err, sizeof err), PEFTD_EFORMAT);
    ASSERT_HAS(err, "scale");
    free(b2);

    /* no metadata at all: some other safetensors file */
    static const char other[] = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    unsigned char raw[8 + sizeof other + 4] = {0};
    raw[0] = (unsigned char)(sizeof other - 1);
    memcpy(raw + 8, other, sizeof other - 1);
    ASSERT_EQ(read_blob(raw, 8 + sizeof other - 1 + 4, &BASE, err, sizeof err), PEFTD_EFORMAT);
    ASSERT_HAS(err, "metadata");
    free(blob);
    adapter_free(a);
}

/* VeRA's shared projection slices (metadata "shared", tensors shared.<k>, "a_shared" per module):
 * every inconsistency is refused with its one line, and nothing stays held afterwards. */
static void shared_index(cJSON *meta, void *ud) {
    cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItem(meta, "lora"), 0);
    cJSON_ReplaceItemInObject(e, "a_shared", cJSON_CreateNumber(*(double *)ud));
}

static void shared_rows(cJSON *meta, void *ud) {
    (void)ud;
    cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItem(meta, "shared"), 0);
    cJSON_ReplaceItemInObject(e, "rows", cJSON_CreateNumber(cJSON_GetObjectItem(e, "rows")->valuedouble + 1));
}

TEST(edited_shared_slices_fail_cleanly) {
    adapter *a = load_fixture("vera");
    void *blob, *b2;
    size_t len, n;
    char err[1024];
    int entries0, entries;
    blob_of(a, &blob, &len);
    adapter__shared_stats(&entries0, NULL);
    ASSERT_EQ(entries0, 2); /* a's two slices */
    double idx[3] = {99, -1, 1}; /* out of range twice, then the slice of another width */
    const char *want[3] = {"a_shared", "a_shared", "not the"};
    int code[3] = {PEFTD_EFORMAT, PEFTD_EFORMAT, PEFTD_EINVAL};
    for (int k = 0; k < 3; k++) {
        b2 = edit_meta(blob, len, shared_index, &idx[k], &n);
        ASSERT_EQ(read_blob(b2, n, &BASE, err, sizeof err), code[k]);
        ASSERT_HAS(err, want[k]);
        free(b2);
    }
    b2 = edit_meta(blob, len, shared_rows, NULL, &n);
    ASSERT_EQ(read_blob(b2, n, &BASE, err, sizeof err), PEFTD_EFORMAT);
    ASSERT_HAS(err, "shared.0");
    free(b2);
    expect_edit(blob, len, "shared", NULL, PEFTD_EFORMAT, "a_shared"); /* modules name a slice not there */
    adapter__shared_stats(&entries, NULL);
    ASSERT_EQ(entries, entries0); /* nothing left held by the failed reads */
    free(blob);
    adapter_free(a);
    adapter__shared_stats(&entries, NULL);
    ASSERT_EQ(entries, 0);
}

/* OFT / BOFT rotation metadata ("rot": [{layer, module, out_scale, factors: [{block, shared,
 * perm_blocks, perm_half}]}]) edited: each lie is refused with a line naming the rotation. */
typedef struct {
    const char *field; /* of the first module's first factor, or of the module with factor < 0 */
    int factor;
    cJSON *value;
} rot_edit;

static void edit_rot(cJSON *meta, void *ud) {
    rot_edit *e = ud;
    cJSON *m = cJSON_GetArrayItem(cJSON_GetObjectItem(meta, "rot"), 0);
    if (!strcmp(e->field, "dup")) {
        cJSON_AddItemToArray(cJSON_GetObjectItem(meta, "rot"), cJSON_Duplicate(m, 1));
        return;
    }
    cJSON *o = e->factor < 0 ? m : cJSON_GetArrayItem(cJSON_GetObjectItem(m, "factors"), e->factor);
    cJSON_ReplaceItemInObject(o, e->field, e->value);
}

static void expect_rot_edit(const void *blob, size_t len, const char *field, int factor, cJSON *value, int want,
                            const char *sub) {
    rot_edit e = {field, factor, value};
    size_t n;
    char err[1024];
    void *b2 = edit_meta(blob, len, edit_rot, &e, &n);
    int rc = read_blob(b2, n, &BASE, err, sizeof err);
    if (rc != want) FAIL("rot edit %s: status %d (%s), expected %d", field, rc, err, want);
    if (sub) ASSERT_HAS(err, sub);
    free(b2);
}

TEST(edited_rotation_metadata_fails_cleanly) {
    adapter *a = load_fixture("boft"), *o = load_fixture("oft_coft");
    void *blob, *oblob;
    size_t len, olen;
    blob_of(a, &blob, &len);
    blob_of(o, &oblob, &olen);
    expect_rot_edit(blob, len, "block", 0, cJSON_CreateNumber(5), PEFTD_EINVAL, "does not fit");
    expect_rot_edit(blob, len, "block", 0, cJSON_CreateNumber(8), PEFTD_EINVAL, "does not fit base");
    expect_rot_edit(blob, len, "perm_blocks", 0, cJSON_CreateNumber(3), PEFTD_EINVAL, "permutation");
    expect_rot_edit(blob, len, "perm_half", 0, cJSON_CreateNumber(64), PEFTD_EINVAL, "permutation");
    expect_rot_edit(blob, len, "shared", 0, cJSON_CreateTrue(), PEFTD_EINVAL, "permutation");
    expect_rot_edit(blob, len, "factors", -1, cJSON_CreateArray(), PEFTD_EFORMAT, "factors");
    expect_rot_edit(blob, len, "out_scale", -1, cJSON_CreateFalse(), PEFTD_EFORMAT, "unexpected tensor");
    expect_rot_edit(blob, len, "dup", -1, NULL, PEFTD_EFORMAT, "twice");
    expect_rot_edit(oblob, olen, "out_scale", -1, cJSON_CreateTrue(), PEFTD_EFORMAT, ".s' is missing");
    expect_rot_edit(oblob, olen, "shared", 0, cJSON_CreateFalse(), PEFTD_EINVAL, "does not fit base");
    free(blob), free(oblob);
    adapter_free(a), adapter_free(o);
}

/* A NaN written into a tensor's data is refused naming the tensor. */
TEST(non_finite_values_refused) {
    adapter *a = load_fixture("lora_r8_all");
    void *blob;
    size_t len;
    char err[1024];
    blob_of(a, &blob, &len);
    st_file *f;
    ASSERT_EQ(st_parse(blob, len, "t", &f, err, sizeof err), 0);
    const st_tensor *t = st_find(f, "lora.1.v_proj.b");
    ASSERT(t && t->dtype == ST_F32);
    size_t off = (size_t)((const unsigned char *)t->data - (const unsigned char *)blob) + 4 * 3;
    st_close(f);
    float nan = NAN;
    memcpy((unsigned char *)blob + off, &nan, 4);
    ASSERT_EQ(read_blob(blob, len, &BASE, err, sizeof err), PEFTD_EINVAL);
    ASSERT_HAS(err, "lora.1.v_proj.b");
    ASSERT_HAS(err, "non-finite");
    free(blob);
    adapter_free(a);
}

/* A base with other dims refuses every fixture's blob (the recorded dims, then shapes). */
TEST(other_base_refused) {
    int n;
    char **names = fixtures(&n);
    setup();
    adapter_base small = BASE, deep = BASE, wide_kv = BASE, vocab = BASE;
    snprintf(small.name, sizeof small.name, "tiny-synthetic");
    small.hidden = BASE.hidden / 2;
    small.intermediate = BASE.intermediate / 2;
    small.n_heads = BASE.n_heads / 2;
    small.n_kv_heads = BASE.n_kv_heads / 2 ? BASE.n_kv_heads / 2 : 1;
    deep.n_layers = BASE.n_layers + 1;
    wide_kv.n_kv_heads = BASE.n_kv_heads * 2;
    wide_kv.n_heads = BASE.n_heads * 2;
    vocab.vocab = BASE.vocab + 1;
    for (int i = 0; i < n; i++) {
        adapter *a = load_fixture(names[i]);
        void *blob;
        size_t len;
        char err[1024];
        blob_of(a, &blob, &len);
        int rc = read_blob(blob, len, &small, err, sizeof err);
        if (rc != PEFTD_EINVAL) FAIL("%s on a smaller base: %d (%s)", names[i], rc, err);
        rc = read_blob(blob, len, &deep, err, sizeof err);
        if (rc != PEFTD_EINVAL) FAIL("%s on a deeper base: %d (%s)", names[i], rc, err);
        ASSERT_HAS(err, "layers");
        rc = read_blob(blob, len, &wide_kv, err, sizeof err);
        if (rc != PEFTD_EINVAL) FAIL("%s on a base with more heads: %d (%s)", names[i], rc, err);
        /* the blob records the whole base it was validated against: even a vocab its
         * tensors do not depend on makes it another base */
        rc = read_blob(blob, len, &vocab, err, sizeof err);
        if (rc != PEFTD_EINVAL) FAIL("%s on a base with another vocab: %d (%s)", names[i], rc, err);
        ASSERT_HAS(err, "vocab");
        free(blob);
        adapter_free(a);
    }
    free_list(names, n);
}

/* ---- fuzz-ish: random byte flips never crash ---------------------------------------- */

TEST(random_flips_never_crash) {
    int n;
    char **names = fixtures(&n);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int accepted = 0, refused = 0;
    for (int i = 0; i < n; i++) {
        adapter *a = load_fixture(names[i]);
        void *blob;
        size_t len;
        char err[1024];
        blob_of(a, &blob, &len);
        uint64_t hl;
        memcpy(&hl, blob, 8);
        unsigned char *cp = malloc(len);
        for (int it = 0; it < 150; it++) {
            memcpy(cp, blob, len);
            int flips = 1 + (int)(seed % 4);
            for (int f = 0; f < flips; f++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                /* most flips land in the 8-byte length + JSON header, where parsing happens */
                size_t span = (seed >> 40) % 4 ? 8 + (size_t)hl : len;
                size_t pos = (size_t)(seed >> 20) % span;
                cp[pos] ^= (unsigned char)(1u << ((seed >> 8) % 8));
            }
            int rc = read_blob(cp, len, &BASE, err, sizeof err);
            if (rc == 0) accepted++;
            else refused++;
        }
        free(cp);
        free(blob);
        adapter_free(a);
    }
    ASSERT(refused > 0);
    printf("  flips: %d accepted (value-only changes), %d refused\n", accepted, refused);
    free_list(names, n);
}

/* A format-1 blob (before DoRA row statistics, issue 9 #13): blob minus every
 * "*.dora_stats" tensor, data repacked, format 1. */
static void *as_format1(const void *blob, size_t len, size_t *out_len) {
    uint64_t hl;
    memcpy(&hl, blob, 8);
    cJSON *h = cJSON_ParseWithLength((const char *)blob + 8, (size_t)hl), *t;
    ASSERT(h);
    const unsigned char *data = (const unsigned char *)blob + 8 + hl;
    unsigned char *nd = malloc(len);
    size_t off = 0;
    cJSON *nh = cJSON_CreateObject();
    cJSON_ArrayForEach(t, h) {
        if (!strcmp(t->string, "__metadata__")) {
            cJSON *meta = cJSON_Parse(cJSON_GetObjectItem(t, "peftd")->valuestring);
            cJSON_ReplaceItemInObject(meta, "format", cJSON_CreateNumber(1));
            char *ms = cJSON_PrintUnformatted(meta);
            cJSON *md = cJSON_AddObjectToObject(nh, "__metadata__");
            cJSON_AddStringToObject(md, "peftd", ms);
            free(ms);
            cJSON_Delete(meta);
            continue;
        }
        if (strstr(t->string, ".dora_stats")) continue;
        cJSON *o = cJSON_GetObjectItem(t, "data_offsets");
        size_t a = (size_t)cJSON_GetArrayItem(o, 0)->valuedouble, b = (size_t)cJSON_GetArrayItem(o, 1)->valuedouble;
        memcpy(nd + off, data + a, b - a);
        cJSON *c = cJSON_Duplicate(t, 1), *no = cJSON_CreateArray();
        cJSON_AddItemToArray(no, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(no, cJSON_CreateNumber((double)(off + b - a)));
        cJSON_ReplaceItemInObject(c, "data_offsets", no);
        cJSON_AddItemToObject(nh, t->string, c);
        off += b - a;
    }
    char *hs = cJSON_PrintUnformatted(nh);
    size_t nl = strlen(hs), pad = (nl + 7) / 8 * 8;
    unsigned char *out = malloc(8 + pad + off);
    uint64_t p64 = pad;
    memcpy(out, &p64, 8);
    memcpy(out + 8, hs, nl);
    memset(out + 8 + nl, ' ', pad - nl);
    memcpy(out + 8 + pad, nd, off);
    *out_len = 8 + pad + off;
    free(hs);
    free(nd);
    cJSON_Delete(nh);
    cJSON_Delete(h);
    return out;
}

/* DoRA blobs carry the row statistics of request scales != 1 (format 2); a format-1 blob
 * stored before still loads, its statistics recomputed from the base's host weights: the
 * factors at scale 0.5 agree with the imported adapter's to f32 rounding. A DoRA module
 * whose statistics tensor is missing in a format-2 blob is refused by name. */
TEST(dora_stats_in_blobs_and_format1_blobs_recomputed) {
    adapter *a = load_fixture("lora_dora"), *b = NULL;
    void *blob, *old;
    size_t len, old_len;
    char err[1024];
    blob_of(a, &blob, &len);
    old = as_format1(blob, len, &old_len);
    ASSERT(old_len < len);
    int rc = adapter_blob_read(old, old_len, &BASE, &b, err, sizeof err);
    if (rc) FAIL("format 1 blob: %d %s", rc, err);
    int checked = 0;
    double worst = 0;
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) {
        const adapter_lora *p = &a->lora[i], *q = &b->lora[i];
        if (!p->dora) continue;
        ASSERT(q->dora_stats);
        int64_t o = p->b.rows;
        float *fp = malloc((size_t)o * sizeof *fp), *fq = malloc((size_t)o * sizeof *fq);
        adapter_dora_scale_vector(p->dora_stats, o, 0.5, fp);
        adapter_dora_scale_vector(q->dora_stats, o, 0.5, fq);
        for (int64_t j = 0; j < o; j++) {
            double d = fabs((double)fp[j] - fq[j]) / fabs((double)fp[j]);
            if (d > worst) worst = d;
        }
        free(fp);
        free(fq);
        checked++;
    }
    printf("  %d DoRA modules: format-1 factors at scale 0.5 within %.3g (relative)\n", checked, worst);
    ASSERT(checked > 0);
    /* m is recovered as f·||W + ΔW|| in f32: a few ulps */
    ASSERT(worst < 1e-6);
    adapter_free(b);
    free(old);

    /* format 2 without a module's statistics: refused naming the tensor */
    uint64_t hl;
    memcpy(&hl, blob, 8);
    char *hdr = strndup((const char *)blob + 8, (size_t)hl);
    char *at = strstr(hdr, ".dora_stats\"");
    ASSERT(at);
    at[1] = 'X'; /* "lora.0.q_proj.Xora_stats": an unexpected tensor, and the real one missing */
    memcpy((char *)blob + 8, hdr, (size_t)hl);
    rc = read_blob(blob, len, &BASE, err, sizeof err);
    ASSERT_EQ(rc, PEFTD_EFORMAT);
    ASSERT_HAS(err, "dora_stats");
    free(hdr);
    free(blob);
    adapter_free(a);
}

TEST_MAIN(roundtrip_every_fixture, write_without_base, truncated_blobs_fail_cleanly, edited_metadata_fails_cleanly,
          edited_shared_slices_fail_cleanly, non_finite_values_refused, other_base_refused, random_flips_never_crash,
          dora_stats_in_blobs_and_format1_blobs_recomputed, edited_rotation_metadata_fails_cleanly)
