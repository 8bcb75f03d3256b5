/* tests/unit/test_adapter_import.c — adapter_load_dir() against the embedded stories260K
 * base: every fixture in tests/fixtures/adapters (written by peft 0.21 / adapters 1.3)
 * loads with the right kind, ranks, scales and tensor values; synthetic PEFT and AdapterHub
 * adapters written by this test (a small safetensors writer) cover the matching rules
 * (lists, regexes, all-linear, layers_to_transform, rank/alpha patterns), dtype handling,
 * DoRA factors against a direct double computation, the prefix K/V split, and every
 * refusal: each must give the exact status and name the offending field/tensor/file. */
#include <cJSON.h>
#include <ftw.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapter_store/adapter.h"
#include "adapter_store/safetensors.h"
#include "lib/half.h"
#include "server/model/model.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/test.h"

#define FIXTURES "tests/fixtures/adapters"
/* adapter_internal.h's ADAPTER_MAX_PATTERNS (not a public header) */
#define ADAPTER_MAX_PATTERNS_FOR_TEST 1024

#define ASSERT_HAS(s, sub)                                                                        \
    do {                                                                                          \
        if (!strstr((s), (sub))) FAIL("message \"%s\" does not contain \"%s\"", (s), (sub));      \
    } while (0)

/* ---- base ------------------------------------------------------------------------- */

static kbackend *KB;
static model *M;
static adapter_base BASE;

static void setup(void) {
    char err[512];
    KB = kbackend_cpu_create(1);
    ASSERT(KB);
    int rc = model_load("models/stories260K", KB, &M, err, sizeof err);
    if (rc) FAIL("model_load: %s", err);
    ASSERT_EQ(model_adapter_base(M, &BASE), 0);
}

static int load(const char *dir, adapter **a, char *err, size_t errlen) {
    if (!KB) setup();
    err[0] = 0;
    return adapter_load_dir(dir, &BASE, a, err, errlen);
}

static adapter *load_ok(const char *dir) {
    adapter *a = NULL;
    char err[1024];
    int rc = load(dir, &a, err, sizeof err);
    if (rc) FAIL("%s: status %d: %s", dir, rc, err);
    ASSERT(a);
    return a;
}

/* Loads dir expecting status want and an error naming every given substring. */
static void load_fails(const char *dir, int want, const char *sub1, const char *sub2) {
    adapter *a = (adapter *)1;
    char err[1024];
    int rc = load(dir, &a, err, sizeof err);
    if (rc != want) FAIL("%s: status %d (%s), expected %d", dir, rc, err, want);
    ASSERT(a == NULL);
    if (sub1) ASSERT_HAS(err, sub1);
    if (sub2) ASSERT_HAS(err, sub2);
}

static float mat_at(const kmat *m, int64_t r, int64_t c) {
    const unsigned char *p = (const unsigned char *)m->data + (size_t)(r * m->cols + c) * kdtype_size(m->dtype);
    if (m->dtype == KDT_F32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p, 2);
    return m->dtype == KDT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

static float st_at(const st_tensor *t, size_t i) {
    const unsigned char *p = (const unsigned char *)t->data + i * st_dtype_size(t->dtype);
    if (t->dtype == ST_F32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p, 2);
    return t->dtype == ST_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

/* Every element of m equals the file's tensor (conversion to f32 is exact). */
static void assert_mat_eq(const kmat *m, const st_tensor *t) {
    ASSERT(m->data);
    ASSERT_EQ(m->rows * m->cols, t->numel);
    for (int64_t i = 0; i < t->numel; i++)
        if (mat_at(m, i / m->cols, i % m->cols) != st_at(t, (size_t)i))
            FAIL("%s[%lld]: %g != %g", t->name, (long long)i, mat_at(m, i / m->cols, i % m->cols), st_at(t, (size_t)i));
}

static void assert_vec_eq(const float *v, const st_tensor *t) {
    ASSERT(v);
    for (int64_t i = 0; i < t->numel; i++)
        if (v[i] != st_at(t, (size_t)i)) FAIL("%s[%lld]: %g != %g", t->name, (long long)i, v[i], st_at(t, (size_t)i));
}

static const char *fixture(const char *name) {
    static char p[256];
    snprintf(p, sizeof p, FIXTURES "/%s", name);
    char cfg[300];
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", p);
    if (access(cfg, R_OK) != 0) FAIL("committed fixture %s is missing", cfg);
    return p;
}

static st_file *open_weights(const char *dir, const char *file) {
    char p[512], err[256];
    st_file *f = NULL;
    snprintf(p, sizeof p, "%s/%s", dir, file);
    if (st_open(p, &f, err, sizeof err)) FAIL("%s", err);
    return f;
}

static int module_of(const char *s) {
    for (int m = 0; m < AMOD_COUNT; m++)
        if (!strcmp(s, adapter_module_name((adapter_module)m))) return m;
    return -1;
}

/* Checks every lora_A / lora_B tensor of a PEFT file against the loaded adapter. */
static void check_lora_tensors(const adapter *a, st_file *f) {
    int n_lora = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_get(f, i);
        int l;
        char grp[16], mod[16], ab;
        if (sscanf(t->name, "base_model.model.model.layers.%d.%15[a-z_].%15[a-z_].lora_%c.weight", &l, grp, mod, &ab) !=
                4 ||
            (ab != 'A' && ab != 'B'))
            continue;
        int m = module_of(mod);
        ASSERT(m >= 0 && l >= 0 && l < a->n_layers);
        const adapter_lora *L = &a->lora[l * AMOD_COUNT + m];
        ASSERT_EQ(L->rank, ab == 'A' ? t->shape[0] : t->shape[1]);
        assert_mat_eq(ab == 'A' ? &L->a : &L->b, t);
        n_lora++;
    }
    ASSERT(n_lora > 0);
    /* modules without tensors are not adapted */
    int n_adapted = 0;
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) n_adapted += a->lora[i].rank > 0;
    ASSERT_EQ(n_adapted * 2, n_lora);
}

static cJSON *read_json(const char *dir, const char *file) {
    char p[512];
    size_t len;
    snprintf(p, sizeof p, "%s/%s", dir, file);
    char *s = test_read_file(p, &len);
    ASSERT(s);
    cJSON *j = cJSON_Parse(s);
    free(s);
    ASSERT(j);
    return j;
}

/* ---- fixtures --------------------------------------------------------------------- */

/* Plain fixtures (no patterns): every module's scale is alpha/r (or alpha/sqrt(r)). */
TEST(fixture_lora_values_and_scales) {
    static const char *const names[] = {"lora_r1_all", "lora_r8_all", "lora_r64_all", "lora_rslora",
                                        "lora_bf16",   "lora_layers", "lora_lm_head"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const char *dir = fixture(names[k]);
        adapter *a = load_ok(dir);
        ASSERT_EQ(a->kind, ADAPTER_LORA);
        ASSERT_STREQ(adapter_kind_name(a->kind), "lora");
        ASSERT_EQ(strlen(a->sha256), 64);
        st_file *f = open_weights(dir, "adapter_model.safetensors");
        check_lora_tensors(a, f);
        cJSON *cfg = read_json(dir, "adapter_config.json");
        double alpha = cJSON_GetObjectItem(cfg, "lora_alpha")->valuedouble;
        bool rs = cJSON_IsTrue(cJSON_GetObjectItem(cfg, "use_rslora"));
        const cJSON *rp = cJSON_GetObjectItem(cfg, "rank_pattern");
        for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) {
            const adapter_lora *L = &a->lora[i];
            if (!L->rank) continue;
            if (!rp->child) ASSERT_NEAR(L->scale, rs ? alpha / sqrt(L->rank) : alpha / L->rank, 1e-6);
            ASSERT(L->dora == NULL);
        }
        int64_t np = 0;
        size_t nb = 0;
        for (size_t i = 0; i < st_count(f); i++) np += st_get(f, i)->numel, nb += st_get(f, i)->nbytes;
        ASSERT_EQ(a->n_params, np);
        ASSERT_EQ(a->bytes, nb);
        cJSON_Delete(cfg);
        st_close(f);
        adapter_free(a);
    }
}

TEST(fixture_lora_bf16_stays_bf16) {
    adapter *a = load_ok(fixture("lora_bf16"));
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++)
        if (a->lora[i].rank) {
            ASSERT_EQ(a->lora[i].a.dtype, KDT_BF16);
            ASSERT_EQ(a->lora[i].b.dtype, KDT_BF16);
        }
    adapter_free(a);
}

/* lora_patterns: target regex over layers 0/2/4; rank_pattern {"layers\.2\.mlp\.down_proj": 16,
 * "model.layers.0.self_attn.q_proj": 12, "q_proj": 2} and alpha_pattern {"mlp\.(gate|up)_proj":
 * 3, "v_proj": 32} over r=4, alpha=8, first match in file order (PEFT get_pattern_key). */
TEST(fixture_lora_patterns) {
    const char *dir = fixture("lora_patterns");
    adapter *a = load_ok(dir);
    st_file *f = open_weights(dir, "adapter_model.safetensors");
    check_lora_tensors(a, f);
    for (int l = 0; l < 5; l++) {
        for (int m = 0; m < AMOD_COUNT; m++) {
            const adapter_lora *L = &a->lora[l * AMOD_COUNT + m];
            if (l % 2) {
                ASSERT_EQ(L->rank, 0);
                continue;
            }
            int r = 4;
            double alpha = 8;
            if (m == AMOD_Q) r = l == 0 ? 12 : 2;
            if (m == AMOD_DOWN && l == 2) r = 16;
            if (m == AMOD_GATE || m == AMOD_UP) alpha = 3;
            if (m == AMOD_V) alpha = 32;
            ASSERT_EQ(L->rank, r);
            ASSERT_NEAR(L->scale, alpha / r, 1e-6);
        }
    }
    ASSERT_EQ(a->max_rank, 16);
    ASSERT_EQ(a->n_ranks, 4);
    ASSERT_EQ(a->ranks[0], 2);
    ASSERT_EQ(a->ranks[3], 16);
    st_close(f);
    adapter_free(a);
}

/* dora[j] = m[j] / ||W[j,:] + scale·(B·A)[j,:]||, computed here in double from the file. */
static void check_dora(const adapter *a, st_file *f) {
    int n = 0;
    for (int l = 0; l < a->n_layers; l++) {
        for (int m = 0; m < AMOD_COUNT; m++) {
            const adapter_lora *L = &a->lora[l * AMOD_COUNT + m];
            if (!L->rank) continue;
            char name[256];
            snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.%s.lora_magnitude_vector", l,
                     m <= AMOD_O ? "self_attn" : "mlp", adapter_module_name((adapter_module)m));
            const st_tensor *mag = st_find(f, name);
            ASSERT(mag && L->dora);
            const kmat *W = &BASE.layer_w[l * AMOD_COUNT + m];
            for (int64_t j = 0; j < L->b.rows; j++) {
                double s = 0;
                for (int64_t i = 0; i < L->a.cols; i++) {
                    double d = 0;
                    for (int k = 0; k < L->rank; k++) d += (double)mat_at(&L->b, j, k) * mat_at(&L->a, k, i);
                    double w = mat_at(W, j, i) + (double)L->scale * d;
                    s += w * w;
                }
                double want = st_at(mag, (size_t)j) / sqrt(s);
                /* f32 storage of a double: relative 2^-24 plus slack for the sum order */
                ASSERT_NEAR(L->dora[j], want, 1e-6 * fabs(want) + 1e-12);
            }
            n++;
        }
    }
    ASSERT(n > 0);
}

TEST(fixture_dora_factor) {
    const char *dir = fixture("lora_dora");
    adapter *a = load_ok(dir);
    st_file *f = open_weights(dir, "adapter_model.safetensors");
    check_lora_tensors(a, f);
    check_dora(a, f);
    st_close(f);
    adapter_free(a);
}

TEST(fixture_lm_head_modules_to_save) {
    const char *dir = fixture("lora_lm_head");
    adapter *a = load_ok(dir);
    st_file *f = open_weights(dir, "adapter_model.safetensors");
    const st_tensor *t = st_find(f, "base_model.model.lm_head.weight");
    ASSERT(t);
    ASSERT_EQ(a->lm_head.rows, 512);
    ASSERT_EQ(a->lm_head.cols, 64);
    assert_mat_eq(&a->lm_head, t);
    t = st_find(f, "base_model.model.model.embed_tokens.weight");
    if (t) assert_mat_eq(&a->embed, t);
    else ASSERT(a->embed.data == NULL);
    st_close(f);
    adapter_free(a);
}

TEST(fixture_ia3) {
    const char *dir = fixture("ia3");
    adapter *a = load_ok(dir);
    ASSERT_EQ(a->kind, ADAPTER_IA3);
    ASSERT(a->ia3_input[AMOD_DOWN]);
    ASSERT(!a->ia3_input[AMOD_K] && !a->ia3_input[AMOD_V]);
    st_file *f = open_weights(dir, "adapter_model.safetensors");
    int n = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_get(f, i);
        int l;
        char grp[16], mod[16];
        ASSERT_EQ(sscanf(t->name, "base_model.model.model.layers.%d.%15[a-z_].%15[a-z_].ia3_l", &l, grp, mod), 3);
        int m = module_of(mod);
        int o, in;
        adapter_module_shape(&BASE, (adapter_module)m, &o, &in);
        ASSERT_EQ(t->numel, a->ia3_input[m] ? in : o);
        assert_vec_eq(a->ia3[l * AMOD_COUNT + m], t);
        n++;
    }
    ASSERT(n > 0);
    st_close(f);
    adapter_free(a);
}

TEST(fixture_prompt_tuning) {
    const char *dir = fixture("prompt_tuning");
    adapter *a = load_ok(dir);
    ASSERT_EQ(a->kind, ADAPTER_PROMPT_TUNING);
    st_file *f = open_weights(dir, "adapter_model.safetensors");
    const st_tensor *t = st_find(f, "prompt_embeddings");
    ASSERT_EQ(a->n_virtual, t->shape[0]);
    ASSERT_EQ(a->prompt.cols, 64);
    ASSERT_EQ(a->prompt.dtype, KDT_F32);
    assert_mat_eq(&a->prompt, t);
    st_close(f);
    adapter_free(a);
}

/* Row t of prompt_embeddings is [2·L, n_kv_heads, head_dim]: K of layer l = slice 2l. */
TEST(fixture_prefix_tuning) {
    const char *dir = fixture("prefix_tuning");
    adapter *a = load_ok(dir);
    ASSERT_EQ(a->kind, ADAPTER_PREFIX_TUNING);
    st_file *f = open_weights(dir, "adapter_model.safetensors");
    const st_tensor *t = st_find(f, "prompt_embeddings");
    int kv = BASE.n_kv_heads * BASE.head_dim, L = BASE.n_layers;
    ASSERT_EQ(a->n_virtual, t->shape[0]);
    ASSERT_EQ(t->shape[1], 2 * L * kv);
    for (int l = 0; l < L; l++)
        for (int r = 0; r < a->n_virtual; r++)
            for (int j = 0; j < kv; j++) {
                ASSERT_EQ(a->prefix_k[l][r * kv + j], st_at(t, (size_t)r * 2 * L * kv + (size_t)(2 * l) * kv + j));
                ASSERT_EQ(a->prefix_v[l][r * kv + j], st_at(t, (size_t)r * 2 * L * kv + (size_t)(2 * l + 1) * kv + j));
            }
    st_close(f);
    adapter_free(a);
}

static void check_bottleneck(const char *name, bool mh, kact act) {
    const char *dir = fixture(name);
    adapter *a = load_ok(dir);
    ASSERT_EQ(a->kind, ADAPTER_BOTTLENECK);
    cJSON *j = read_json(dir, "adapter_config.json");
    const cJSON *c = cJSON_GetObjectItem(j, "config");
    int size = (int)(64 / cJSON_GetObjectItem(c, "reduction_factor")->valuedouble);
    st_file *f = open_weights(dir, "adapter.safetensors");
    for (int l = 0; l < a->n_layers; l++) {
        for (int p = 0; p < 2; p++) {
            const adapter_bottleneck *B = p ? &a->bn_ffn[l] : &a->bn_attn[l];
            if (!p && !mh) {
                ASSERT_EQ(B->size, 0);
                continue;
            }
            ASSERT_EQ(B->size, size);
            ASSERT_EQ(B->act, act);
            ASSERT_NEAR(B->scaling, cJSON_GetObjectItem(c, "scaling")->valuedouble, 0);
            ASSERT_EQ(B->residual_before_ln, cJSON_IsTrue(cJSON_GetObjectItem(c, "residual_before_ln")));
            ASSERT_EQ(B->original_ln_before, cJSON_IsTrue(cJSON_GetObjectItem(c, "original_ln_before")));
            ASSERT_EQ(B->original_ln_after, cJSON_IsTrue(cJSON_GetObjectItem(c, "original_ln_after")));
            char pre[256], nm[320];
            snprintf(pre, sizeof pre, "model.layers.%d.%s.adapters.%s.", l, p ? "output_adapters" : "attention_adapters",
                     name);
            snprintf(nm, sizeof nm, "%sadapter_down.0.weight", pre);
            assert_mat_eq(&B->down, st_find(f, nm));
            snprintf(nm, sizeof nm, "%sadapter_down.0.bias", pre);
            assert_vec_eq(B->down_bias, st_find(f, nm));
            snprintf(nm, sizeof nm, "%sadapter_up.weight", pre);
            assert_mat_eq(&B->up, st_find(f, nm));
            snprintf(nm, sizeof nm, "%sadapter_up.bias", pre);
            assert_vec_eq(B->up_bias, st_find(f, nm));
        }
    }
    ASSERT_EQ(a->max_rank, size);
    cJSON_Delete(j);
    st_close(f);
    adapter_free(a);
}

TEST(fixture_pfeiffer) { check_bottleneck("pfeiffer", false, KACT_RELU); }
TEST(fixture_houlsby) { check_bottleneck("houlsby", true, KACT_SILU); }

/* sha256 = hash(adapter_config.json bytes ‖ weights bytes). */
TEST(fixture_sha256_is_content_hash) {
    const char *dir = fixture("lora_r8_all");
    adapter *a = load_ok(dir);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    static const char *const files[] = {"adapter_config.json", "adapter_model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char p[512];
        size_t len;
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        char *s = test_read_file(p, &len);
        ASSERT(s);
        EVP_DigestUpdate(md, s, len);
        free(s);
    }
    unsigned char dg[32];
    unsigned dl;
    EVP_DigestFinal_ex(md, dg, &dl);
    EVP_MD_CTX_free(md);
    char hex[65];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", dg[i]);
    ASSERT_STREQ(a->sha256, hex);
    adapter_free(a);
}

/* ---- synthetic adapters ----------------------------------------------------------- */

typedef struct {
    char name[256];
    char dtype[8];
    int ndim;
    int64_t shape[2];
    float *vals; /* f32 source values (rounded to dtype when written) */
} wtensor;

typedef struct {
    wtensor t[256];
    int n;
    cJSON *cfg;
    const char *weights; /* file name */
} syn;

static float synval(int seed, int64_t i) {
    uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(seed * 40503u + 17u);
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    return ((float)(h % 2001u) - 1000.0f) / 8000.0f;
}

static wtensor *syn_add(syn *s, const char *dtype, int64_t d0, int64_t d1, const char *fmt, ...) {
    ASSERT(s->n < 256);
    wtensor *t = &s->t[s->n];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype);
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    int64_t n = d0 * (d1 ? d1 : 1);
    t->vals = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) t->vals[i] = synval(s->n + 1, i);
    s->n++;
    return t;
}

static wtensor *syn_find(syn *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->t[i].name, name)) return &s->t[i];
    FAIL("no synthetic tensor %s", name);
}

static void syn_drop(syn *s, const char *name) {
    wtensor *t = syn_find(s, name);
    free(t->vals);
    *t = s->t[--s->n];
}

static void write_file(const char *dir, const char *name, const void *data, size_t len) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    ASSERT(f);
    ASSERT_EQ(fwrite(data, 1, len, f), len);
    fclose(f);
}

static void syn_write(syn *s, const char *dir) {
    char *cfg = cJSON_Print(s->cfg);
    write_file(dir, "adapter_config.json", cfg, strlen(cfg));
    free(cfg);
    /* header JSON, padded with spaces to a multiple of 8 like the reference writer */
    size_t off = 0, cap = 65536, hl = 0;
    char *h = malloc(cap);
    hl += (size_t)snprintf(h + hl, cap - hl, "{");
    for (int i = 0; i < s->n; i++) {
        wtensor *t = &s->t[i];
        size_t esz = strcmp(t->dtype, "F32") ? 2 : 4, nb = (size_t)(t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1)) * esz;
        char shp[64];
        if (t->ndim == 2) snprintf(shp, sizeof shp, "[%lld,%lld]", (long long)t->shape[0], (long long)t->shape[1]);
        else snprintf(shp, sizeof shp, "[%lld]", (long long)t->shape[0]);
        hl += (size_t)snprintf(h + hl, cap - hl, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[%zu,%zu]}",
                               i ? "," : "", t->name, t->dtype, shp, off, off + nb);
        ASSERT(hl < cap);
        off += nb;
    }
    hl += (size_t)snprintf(h + hl, cap - hl, "}");
    while (hl % 8) h[hl++] = ' ';
    unsigned char *buf = malloc(8 + hl + off);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, h, hl);
    unsigned char *d = buf + 8 + hl;
    for (int i = 0; i < s->n; i++) {
        wtensor *t = &s->t[i];
        int64_t n = t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1);
        for (int64_t k = 0; k < n; k++) {
            if (!strcmp(t->dtype, "F32")) {
                memcpy(d, &t->vals[k], 4);
                d += 4;
            } else {
                uint16_t v = !strcmp(t->dtype, "F16") ? f32_to_f16(t->vals[k]) : f32_to_bf16(t->vals[k]);
                memcpy(d, &v, 2);
                d += 2;
            }
        }
    }
    write_file(dir, s->weights, buf, 8 + hl + off);
    free(buf);
    free(h);
}

static void syn_free(syn *s) {
    for (int i = 0; i < s->n; i++) free(s->t[i].vals);
    cJSON_Delete(s->cfg);
    free(s);
}

/* Every directory the tests write lives under one root that the parent process creates
 * before forking the tests and removes when it exits (the runner only). */
static char ROOT[64];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    return remove(path);
}

static pid_t ROOT_OWNER; /* the runner: tests are forked children that also run destructors */

__attribute__((constructor)) static void make_root(void) {
    snprintf(ROOT, sizeof ROOT, "/tmp/peftd_adapter_XXXXXX");
    if (!mkdtemp(ROOT)) ROOT[0] = 0;
    ROOT_OWNER = getpid();
}

__attribute__((destructor)) static void rm_root(void) {
    if (ROOT[0] && getpid() == ROOT_OWNER) nftw(ROOT, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static char *tmpdir(void) {
    static char d[96];
    static int n;
    ASSERT(ROOT[0]);
    snprintf(d, sizeof d, "%s/%d_%d", ROOT, (int)getpid(), n++);
    ASSERT_EQ(mkdir(d, 0700), 0);
    return d;
}

static const char *group(int m) { return m <= AMOD_O ? "self_attn" : "mlp"; }

static void syn_lora_module(syn *s, int l, int m, int r, const char *dtype, bool dora) {
    int o, in;
    adapter_module_shape(&BASE, (adapter_module)m, &o, &in);
    const char *mn = adapter_module_name((adapter_module)m);
    syn_add(s, dtype, r, in, "base_model.model.model.layers.%d.%s.%s.lora_A.weight", l, group(m), mn);
    syn_add(s, dtype, o, r, "base_model.model.model.layers.%d.%s.%s.lora_B.weight", l, group(m), mn);
    if (dora) {
        wtensor *t = syn_add(s, "F32", o, 0, "base_model.model.model.layers.%d.%s.%s.lora_magnitude_vector", l,
                             group(m), mn);
        for (int j = 0; j < o; j++) t->vals[j] = 0.5f + fabsf(t->vals[j]);
    }
}

/* A PEFT LoRA: r, alpha 8, target_modules [q_proj, v_proj], every layer, in dtype. */
static syn *syn_lora(int r, const char *dtype) {
    if (!KB) setup();
    syn *s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(s->cfg, "peft_type", "LORA");
    cJSON_AddStringToObject(s->cfg, "base_model_name_or_path", "models/stories260K");
    cJSON_AddNumberToObject(s->cfg, "r", r);
    cJSON_AddNumberToObject(s->cfg, "lora_alpha", 8);
    cJSON_AddStringToObject(s->cfg, "bias", "none");
    cJSON_AddFalseToObject(s->cfg, "fan_in_fan_out");
    cJSON_AddFalseToObject(s->cfg, "use_rslora");
    cJSON_AddFalseToObject(s->cfg, "use_dora");
    cJSON_AddItemToObject(s->cfg, "rank_pattern", cJSON_CreateObject());
    cJSON_AddItemToObject(s->cfg, "alpha_pattern", cJSON_CreateObject());
    const char *tm[] = {"q_proj", "v_proj"};
    cJSON_AddItemToObject(s->cfg, "target_modules", cJSON_CreateStringArray(tm, 2));
    for (int l = 0; l < 5; l++) {
        syn_lora_module(s, l, AMOD_Q, r, dtype, false);
        syn_lora_module(s, l, AMOD_V, r, dtype, false);
    }
    return s;
}

static void cfg_set(syn *s, const char *field, cJSON *v) {
    cJSON_DeleteItemFromObject(s->cfg, field);
    cJSON_AddItemToObject(s->cfg, field, v);
}

/* Writes s to a fresh directory; returns it (static buffer). */
static const char *syn_dir(syn *s) {
    const char *d = tmpdir();
    syn_write(s, d);
    return d;
}

TEST(syn_lora_f16_basic) {
    syn *s = syn_lora(4, "F16");
    adapter *a = load_ok(syn_dir(s));
    ASSERT_EQ(a->kind, ADAPTER_LORA);
    ASSERT_EQ(a->n_layers, 5);
    ASSERT_EQ(a->max_rank, 4);
    ASSERT_EQ(a->n_ranks, 1);
    ASSERT_EQ(a->ranks[0], 4);
    ASSERT_EQ(a->n_params, 5 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4));
    ASSERT_EQ(a->bytes, (size_t)a->n_params * 2);
    for (int l = 0; l < 5; l++) {
        for (int m = 0; m < AMOD_COUNT; m++) {
            const adapter_lora *L = &a->lora[l * AMOD_COUNT + m];
            if (m != AMOD_Q && m != AMOD_V) {
                ASSERT_EQ(L->rank, 0);
                continue;
            }
            ASSERT_EQ(L->rank, 4);
            ASSERT_NEAR(L->scale, 2.0, 0);
            ASSERT_EQ(L->a.dtype, KDT_F16);
            ASSERT_EQ(L->a.rows, 4);
            ASSERT_EQ(L->a.cols, 64);
            ASSERT_EQ(L->b.rows, m == AMOD_Q ? 64 : 32);
            char nm[128];
            snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.self_attn.%s.lora_B.weight", l,
                     adapter_module_name((adapter_module)m));
            wtensor *t = syn_find(s, nm);
            for (int k = 0; k < 16; k++)
                ASSERT_EQ(mat_at(&L->b, k / 4, k % 4), f16_to_f32(f32_to_f16(t->vals[k])));
        }
    }
    adapter_free(a);
    syn_free(s);
}

TEST(syn_lora_mixed_dtypes_become_f32) {
    syn *s = syn_lora(2, "BF16");
    syn_drop(s, "base_model.model.model.layers.3.self_attn.v_proj.lora_A.weight");
    wtensor *t = syn_add(s, "F16", 2, 64, "base_model.model.model.layers.3.self_attn.v_proj.lora_A.weight");
    adapter *a = load_ok(syn_dir(s));
    for (int i = 0; i < 5 * AMOD_COUNT; i++)
        if (a->lora[i].rank) {
            ASSERT_EQ(a->lora[i].a.dtype, KDT_F32);
            ASSERT_EQ(a->lora[i].b.dtype, KDT_F32);
        }
    const adapter_lora *L = &a->lora[3 * AMOD_COUNT + AMOD_V];
    for (int k = 0; k < 128; k++) ASSERT_EQ(mat_at(&L->a, k / 64, k % 64), f16_to_f32(f32_to_f16(t->vals[k])));
    adapter_free(a);
    syn_free(s);
}

TEST(syn_rslora_scale) {
    syn *s = syn_lora(4, "F32");
    cfg_set(s, "use_rslora", cJSON_CreateTrue());
    adapter *a = load_ok(syn_dir(s));
    ASSERT_NEAR(a->lora[AMOD_Q].scale, 8.0 / 2.0, 1e-7); /* alpha / sqrt(4) */
    adapter_free(a);
    syn_free(s);
}

static syn *syn_lora_targets(cJSON *targets, const bool *want) {
    syn *s = syn_lora(2, "F32");
    for (int i = s->n - 1; i >= 0; i--) syn_drop(s, s->t[i].name);
    cfg_set(s, "target_modules", targets);
    for (int l = 0; l < 5; l++)
        for (int m = 0; m < AMOD_COUNT; m++)
            if (want[l * AMOD_COUNT + m]) syn_lora_module(s, l, m, 2, "F32", false);
    return s;
}

static void check_ranks(const adapter *a, const bool *want, int r) {
    for (int i = 0; i < 5 * AMOD_COUNT; i++) ASSERT_EQ(a->lora[i].rank, want[i] ? r : 0);
}

/* layers_to_transform [0, 2] with a list: other layers are untouched; their tensors are then
 * unexpected. */
TEST(syn_layers_to_transform) {
    bool none[5 * AMOD_COUNT] = {false};
    const char *tm[] = {"o_proj", "up_proj"};
    syn *s = syn_lora_targets(cJSON_CreateStringArray(tm, 2), none);
    int layers[] = {0, 2};
    cfg_set(s, "layers_to_transform", cJSON_CreateIntArray(layers, 2));
    for (int i = 0; i < 2; i++) {
        syn_lora_module(s, layers[i], AMOD_O, 2, "F32", false);
        syn_lora_module(s, layers[i], AMOD_UP, 2, "F32", false);
    }
    adapter *a = load_ok(syn_dir(s));
    for (int l = 0; l < 5; l++)
        for (int m = 0; m < AMOD_COUNT; m++)
            ASSERT_EQ(a->lora[l * AMOD_COUNT + m].rank,
                      ((l == 0 || l == 2) && (m == AMOD_O || m == AMOD_UP)) ? 2 : 0);
    adapter_free(a);
    syn_lora_module(s, 1, AMOD_O, 2, "F32", false);
    load_fails(syn_dir(s), PEFTD_EFORMAT, "unexpected tensor", "layers.1.self_attn.o_proj.lora_A.weight");
    syn_free(s);
}

TEST(syn_all_linear_and_regex) {
    bool want[5 * AMOD_COUNT];
    for (int i = 0; i < 5 * AMOD_COUNT; i++) want[i] = true;
    syn *s = syn_lora_targets(cJSON_CreateString("ALL-LINEAR"), want);
    adapter *a = load_ok(syn_dir(s));
    check_ranks(a, want, 2);
    adapter_free(a);
    syn_free(s);

    /* fullmatch: "model\.layers\.[13]\..*(k|down)_proj" — layers 1 and 3, k_proj and down_proj */
    for (int i = 0; i < 5 * AMOD_COUNT; i++) {
        int l = i / AMOD_COUNT, m = i % AMOD_COUNT;
        want[i] = (l == 1 || l == 3) && (m == AMOD_K || m == AMOD_DOWN);
    }
    s = syn_lora_targets(cJSON_CreateString("model\\.layers\\.[13]\\..*(k|down)_proj"), want);
    a = load_ok(syn_dir(s));
    check_ranks(a, want, 2);
    adapter_free(a);
    syn_free(s);

    /* a regex that only matches a prefix of the names selects nothing: fullmatch */
    s = syn_lora_targets(cJSON_CreateString("model\\.layers\\.1\\.self"), want);
    load_fails(syn_dir(s), PEFTD_EINVAL, "target_modules", "matches no module");
    syn_free(s);
    /* one that fullmatches a decoder layer (not a Linear) cannot be served */
    s = syn_lora_targets(cJSON_CreateString("model\\.layers\\.1|.*q_proj"), want);
    load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "'model.layers.1'", NULL);
    syn_free(s);
}

/* Suffix matching is on "." boundaries: "proj" names no module. */
TEST(syn_list_suffix_match_needs_dot) {
    bool want[5 * AMOD_COUNT] = {false};
    const char *tm[] = {"proj"};
    syn *s = syn_lora_targets(cJSON_CreateStringArray(tm, 1), want);
    load_fails(syn_dir(s), PEFTD_EINVAL, "'proj'", "not found in base");
    syn_free(s);
    /* a full module name works as an exact key */
    const char *tm2[] = {"model.layers.4.mlp.gate_proj"};
    want[4 * AMOD_COUNT + AMOD_GATE] = true;
    s = syn_lora_targets(cJSON_CreateStringArray(tm2, 1), want);
    adapter *a = load_ok(syn_dir(s));
    check_ranks(a, want, 2);
    adapter_free(a);
    syn_free(s);
}

/* First matching key in file order wins; keys are regexes matched at a "." boundary. */
TEST(syn_rank_alpha_patterns) {
    syn *s = syn_lora(4, "F32");
    for (int i = s->n - 1; i >= 0; i--) syn_drop(s, s->t[i].name);
    cJSON *rp = cJSON_CreateObject();
    cJSON_AddNumberToObject(rp, "layers\\.[34]\\.self_attn\\.q_proj", 6);
    cJSON_AddNumberToObject(rp, "q_proj", 3);
    cJSON_AddNumberToObject(rp, "layers.4.self_attn.q_proj", 1); /* shadowed by the first key */
    cJSON_AddNumberToObject(rp, "_proj", 5);                      /* "_proj" is not a whole segment */
    cfg_set(s, "rank_pattern", rp);
    cJSON *ap = cJSON_CreateObject();
    cJSON_AddNumberToObject(ap, "v_proj", 2.5);
    cfg_set(s, "alpha_pattern", ap);
    for (int l = 0; l < 5; l++) {
        syn_lora_module(s, l, AMOD_Q, l >= 3 ? 6 : 3, "F32", false);
        syn_lora_module(s, l, AMOD_V, 4, "F32", false);
    }
    adapter *a = load_ok(syn_dir(s));
    for (int l = 0; l < 5; l++) {
        const adapter_lora *q = &a->lora[l * AMOD_COUNT + AMOD_Q], *v = &a->lora[l * AMOD_COUNT + AMOD_V];
        ASSERT_EQ(q->rank, l >= 3 ? 6 : 3);
        ASSERT_NEAR(q->scale, 8.0 / q->rank, 1e-6);
        ASSERT_EQ(v->rank, 4);
        ASSERT_NEAR(v->scale, 2.5 / 4, 1e-7);
    }
    ASSERT_EQ(a->n_ranks, 3);
    adapter_free(a);
    syn_free(s);
}

TEST(syn_dora_factor) {
    syn *s = syn_lora(3, "BF16");
    for (int i = s->n - 1; i >= 0; i--) syn_drop(s, s->t[i].name);
    cfg_set(s, "use_dora", cJSON_CreateTrue());
    const char *tm[] = {"k_proj", "down_proj"};
    cfg_set(s, "target_modules", cJSON_CreateStringArray(tm, 2));
    for (int l = 0; l < 5; l++) {
        syn_lora_module(s, l, AMOD_K, 3, "BF16", true);
        syn_lora_module(s, l, AMOD_DOWN, 3, "BF16", true);
    }
    const char *d = syn_dir(s);
    adapter *a = load_ok(d);
    st_file *f = open_weights(d, "adapter_model.safetensors");
    check_dora(a, f);
    st_close(f);
    adapter_free(a);
    syn_free(s);
}

TEST(syn_modules_to_save) {
    syn *s = syn_lora(2, "F32");
    const char *mts[] = {"lm_head", "embed_tokens"};
    cfg_set(s, "modules_to_save", cJSON_CreateStringArray(mts, 2));
    wtensor *h = syn_add(s, "BF16", 512, 64, "base_model.model.lm_head.weight");
    syn_add(s, "F32", 512, 64, "base_model.model.model.embed_tokens.weight");
    adapter *a = load_ok(syn_dir(s));
    ASSERT_EQ(a->lm_head.dtype, KDT_BF16); /* full replacements keep their stored dtype */
    ASSERT_EQ(mat_at(&a->lm_head, 7, 3), bf16_to_f32(f32_to_bf16(h->vals[7 * 64 + 3])));
    ASSERT_EQ(a->embed.rows, 512);
    adapter_free(a);
    /* the lm_head tensor is required once listed */
    syn_drop(s, "base_model.model.lm_head.weight");
    load_fails(syn_dir(s), PEFTD_EFORMAT, "base_model.model.lm_head.weight", "missing");
    syn_free(s);
}

/* PEFT prefix layout with known values: element (t, 2l+side, j) = t*1000 + (2l+side)*100 + j/100 */
TEST(syn_prefix_split) {
    if (!KB) setup();
    syn *s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(s->cfg, "peft_type", "PREFIX_TUNING");
    cJSON_AddNumberToObject(s->cfg, "num_virtual_tokens", 3);
    cJSON_AddNumberToObject(s->cfg, "num_layers", 5);
    cJSON_AddNumberToObject(s->cfg, "token_dim", 32);
    cJSON_AddNumberToObject(s->cfg, "num_attention_heads", 4);
    cJSON_AddFalseToObject(s->cfg, "prefix_projection");
    wtensor *t = syn_add(s, "F32", 3, 2 * 5 * 32, "prompt_embeddings");
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 320; c++) t->vals[r * 320 + c] = (float)(r * 1000 + (c / 32) * 100) + (float)(c % 32) / 100;
    const char *d = syn_dir(s);
    adapter *a = load_ok(d);
    ASSERT_EQ(a->n_virtual, 3);
    for (int l = 0; l < 5; l++)
        for (int r = 0; r < 3; r++)
            for (int j = 0; j < 32; j++) {
                ASSERT_EQ(a->prefix_k[l][r * 32 + j], (float)(r * 1000 + (2 * l) * 100) + (float)j / 100);
                ASSERT_EQ(a->prefix_v[l][r * 32 + j], (float)(r * 1000 + (2 * l + 1) * 100) + (float)j / 100);
            }
    adapter_free(a);
    /* token_dim must be the KV width (head_dim × n_kv_heads), not hidden */
    cfg_set(s, "token_dim", cJSON_CreateNumber(64));
    load_fails(syn_dir(s), PEFTD_EINVAL, "token_dim 64", NULL);
    cfg_set(s, "token_dim", cJSON_CreateNumber(32));
    /* prefix_projection: the saved table is already the projected one (issue 16): same load */
    cfg_set(s, "prefix_projection", cJSON_CreateTrue());
    a = load_ok(syn_dir(s));
    ASSERT_EQ(a->prefix_k[1][0], (float)(0 * 1000 + 2 * 100));
    adapter_free(a);
    cfg_set(s, "prefix_projection", cJSON_CreateString("yes"));
    load_fails(syn_dir(s), PEFTD_EFORMAT, "prefix_projection", NULL);
    syn_free(s);
}

static syn *syn_hub(const char *name, double rf, bool mh) {
    if (!KB) setup();
    syn *s = calloc(1, sizeof *s);
    s->weights = "adapter.safetensors";
    s->cfg = cJSON_CreateObject();
    cJSON *c = cJSON_AddObjectToObject(s->cfg, "config");
    cJSON_AddBoolToObject(c, "mh_adapter", mh);
    cJSON_AddTrueToObject(c, "output_adapter");
    cJSON_AddNumberToObject(c, "reduction_factor", rf);
    cJSON_AddStringToObject(c, "non_linearity", "gelu");
    cJSON_AddTrueToObject(c, "original_ln_before");
    cJSON_AddTrueToObject(c, "original_ln_after");
    cJSON_AddTrueToObject(c, "residual_before_ln");
    cJSON_AddFalseToObject(c, "ln_before");
    cJSON_AddFalseToObject(c, "ln_after");
    cJSON_AddFalseToObject(c, "use_gating");
    cJSON_AddNumberToObject(c, "scaling", 0.5);
    cJSON_AddItemToObject(c, "leave_out", cJSON_CreateArray());
    cJSON_AddStringToObject(s->cfg, "name", name);
    cJSON_AddNumberToObject(s->cfg, "hidden_size", 64);
    int size = (int)floor(64 / rf);
    for (int l = 0; l < 5; l++) {
        for (int p = mh ? 0 : 1; p < 2; p++) {
            const char *pl = p ? "output_adapters" : "attention_adapters";
            syn_add(s, "F32", size, 64, "model.layers.%d.%s.adapters.%s.adapter_down.0.weight", l, pl, name);
            syn_add(s, "F32", size, 0, "model.layers.%d.%s.adapters.%s.adapter_down.0.bias", l, pl, name);
            syn_add(s, "F32", 64, size, "model.layers.%d.%s.adapters.%s.adapter_up.weight", l, pl, name);
            syn_add(s, "F32", 64, 0, "model.layers.%d.%s.adapters.%s.adapter_up.bias", l, pl, name);
        }
    }
    return s;
}

static void hub_set(syn *s, const char *field, cJSON *v) {
    cJSON *c = cJSON_GetObjectItem(s->cfg, "config");
    cJSON_DeleteItemFromObject(c, field);
    cJSON_AddItemToObject(c, field, v);
}

/* hidden // 2.5 = 25 (Python floor division), gelu → exact erf GELU, scaling copied. */
TEST(syn_hub_bottleneck) {
    syn *s = syn_hub("mine", 2.5, true);
    adapter *a = load_ok(syn_dir(s));
    ASSERT_EQ(a->kind, ADAPTER_BOTTLENECK);
    ASSERT_EQ(a->bn_attn[2].size, 25);
    ASSERT_EQ(a->bn_ffn[4].size, 25);
    ASSERT_EQ(a->bn_ffn[4].act, KACT_GELU);
    ASSERT_NEAR(a->bn_ffn[4].scaling, 0.5, 0);
    ASSERT_EQ(a->max_rank, 25);
    wtensor *t = syn_find(s, "model.layers.3.output_adapters.adapters.mine.adapter_up.bias");
    ASSERT_EQ(a->bn_ffn[3].up_bias[63], t->vals[63]);
    adapter_free(a);
    syn_free(s);
}

TEST(syn_hub_unsupported_options) {
    static const struct {
        const char *field;
        const char *json;
        const char *want;
    } cases[] = {
        {"use_gating", "true", "use_gating"},          {"ln_after", "true", "ln_after"},
        {"non_linearity", "\"mish\"", "mish"},         {"scaling", "\"channel\"", "channel"},
        {"architecture", "\"fusion\"", "architecture"}, {"residual_before_ln", "\"post_add\"", "post_add"},
        {"inv_adapter", "\"nice\"", "inv_adapter"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        syn *s = syn_hub("x", 16, false);
        hub_set(s, cases[i].field, cJSON_Parse(cases[i].json));
        load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, cases[i].want, NULL);
        syn_free(s);
    }
    /* served since issue 16: par_bn reads the residual stream; Compacter's PHM factors are
     * expected instead of plain weights (test_adapter_kinds.c checks both against the library) */
    syn *s = syn_hub("x", 16, false);
    hub_set(s, "is_parallel", cJSON_CreateTrue());
    adapter *par = load_ok(syn_dir(s));
    ASSERT(par->bn_ffn[0].parallel);
    adapter_free(par);
    syn_free(s);
    s = syn_hub("x", 16, false);
    hub_set(s, "phm_layer", cJSON_CreateTrue());
    load_fails(syn_dir(s), PEFTD_EFORMAT, "phm_layer", "W_left");
    syn_free(s);
    s = syn_hub("x", 16, false);
    hub_set(s, "leave_out", cJSON_CreateIntArray((int[]){7}, 1));
    load_fails(syn_dir(s), PEFTD_EINVAL, "leave_out", NULL);
    syn_free(s);
    /* a left-out layer has no adapter: its tensors are then unexpected */
    s = syn_hub("x", 16, false);
    hub_set(s, "leave_out", cJSON_CreateIntArray((int[]){2}, 1));
    load_fails(syn_dir(s), PEFTD_EFORMAT, "unexpected tensor", "model.layers.2.output_adapters");
    syn_free(s);
}

/* ---- refusals ---------------------------------------------------------------------- */

TEST(err_unknown_peft_type) {
    syn *s = syn_lora(2, "F32");
    cfg_set(s, "peft_type", cJSON_CreateString("FOURIERFT"));
    load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "peft_type", "FOURIERFT");
    syn_free(s);
}

TEST(err_fan_in_fan_out_and_bias) {
    syn *s = syn_lora(2, "F32");
    cfg_set(s, "fan_in_fan_out", cJSON_CreateTrue());
    load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "fan_in_fan_out", NULL);
    cfg_set(s, "fan_in_fan_out", cJSON_CreateFalse());
    /* trained biases (issue 16): on a bias-free base PEFT saves none, so "lora_only" / "all"
     * load as plain LoRA; a value PEFT does not know is malformed */
    cfg_set(s, "bias", cJSON_CreateString("lora_only"));
    adapter_free(load_ok(syn_dir(s)));
    cfg_set(s, "bias", cJSON_CreateString("some"));
    load_fails(syn_dir(s), PEFTD_EFORMAT, "'bias'", "some");
    cfg_set(s, "bias", cJSON_CreateString("none"));
    /* lora_bias: true needs lora_B.bias of every adapted module */
    cfg_set(s, "lora_bias", cJSON_CreateTrue());
    load_fails(syn_dir(s), PEFTD_EFORMAT, "lora_B.bias", "missing");
    cfg_set(s, "lora_bias", cJSON_CreateFalse());
    cfg_set(s, "layer_replication", cJSON_Parse("[[0, 2]]"));
    load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "layer_replication", NULL);
    syn_free(s);
}

TEST(err_pickle_weights_refused) {
    syn *s = syn_lora(2, "F32");
    const char *d = syn_dir(s);
    char p[512];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
    ASSERT_EQ(unlink(p), 0);
    /* a pickle header: the loader must refuse by name, never read it */
    write_file(d, "adapter_model.bin", "\x80\x02}q\x00.", 6);
    load_fails(d, PEFTD_EUNSUPPORTED, "adapter_model.bin", "pickle weights are not loaded; save with safe_serialization=True");
    syn_free(s);

    s = syn_hub("x", 16, false);
    d = syn_dir(s);
    snprintf(p, sizeof p, "%s/adapter.safetensors", d);
    ASSERT_EQ(unlink(p), 0);
    write_file(d, "pytorch_adapter.bin", "\x80\x02}q\x00.", 6);
    load_fails(d, PEFTD_EUNSUPPORTED, "pytorch_adapter.bin", "pickle weights are not loaded");
    syn_free(s);
}

TEST(err_missing_files) {
    syn *s = syn_lora(2, "F32");
    const char *d = syn_dir(s);
    char p[512];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
    ASSERT_EQ(unlink(p), 0);
    load_fails(d, PEFTD_EFORMAT, "adapter_model.safetensors", "missing");
    snprintf(p, sizeof p, "%s/adapter_config.json", d);
    ASSERT_EQ(unlink(p), 0);
    load_fails(d, PEFTD_EFORMAT, "adapter_config.json", NULL);
    syn_free(s);
}

TEST(err_wrong_shape) {
    syn *s = syn_lora(4, "F32");
    syn_drop(s, "base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight");
    syn_add(s, "F32", 4, 32, "base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight");
    load_fails(syn_dir(s), PEFTD_EINVAL, "'base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight' has shape [4, 32]",
               "expected [4, 64]");
    syn_free(s);
    /* a rank that disagrees with r is a shape error too */
    s = syn_lora(4, "F32");
    syn_drop(s, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
    syn_add(s, "F32", 64, 8, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
    load_fails(syn_dir(s), PEFTD_EINVAL, "q_proj.lora_B.weight' has shape [64, 8]", "expected [64, 4]");
    syn_free(s);
}

/* LyCORIS CP form (conv layers' core tensor hada_t1 / lokr_t2) is refused naming the tensor;
 * the same adapters without it load. */
TEST(err_lycoris_cp_form) {
    static const char *const TYPES[2] = {"LOHA", "LOKR"};
    for (int k = 0; k < 2; k++) {
        for (int with_cp = 0; with_cp < 2; with_cp++) {
            if (!KB) setup();
            syn *s = calloc(1, sizeof *s);
            s->weights = "adapter_model.safetensors";
            s->cfg = cJSON_CreateObject();
            cJSON_AddStringToObject(s->cfg, "peft_type", TYPES[k]);
            cJSON_AddStringToObject(s->cfg, "base_model_name_or_path", "models/stories260K");
            cJSON_AddNumberToObject(s->cfg, "r", 2);
            cJSON_AddNumberToObject(s->cfg, "alpha", 4);
            const char *tm[] = {"q_proj"};
            cJSON_AddItemToObject(s->cfg, "target_modules", cJSON_CreateStringArray(tm, 1));
            const char *pre = "base_model.model.model.layers.%d.self_attn.q_proj.%s";
            for (int l = 0; l < 5; l++) {
                if (k == 0) { /* LoHa: w1 = w1_a w1_b, w2 = w2_a w2_b over [64, 64] */
                    syn_add(s, "F32", 64, 2, pre, l, "hada_w1_a");
                    syn_add(s, "F32", 2, 64, pre, l, "hada_w1_b");
                    syn_add(s, "F32", 64, 2, pre, l, "hada_w2_a");
                    syn_add(s, "F32", 2, 64, pre, l, "hada_w2_b");
                    if (with_cp && l == 3) syn_add(s, "F32", 2, 2, pre, l, "hada_t1");
                } else { /* LoKr: kron(w1 [8, 8], w2 [8, 8]) with w2 factored */
                    syn_add(s, "F32", 8, 8, pre, l, "lokr_w1");
                    syn_add(s, "F32", 8, 2, pre, l, "lokr_w2_a");
                    syn_add(s, "F32", 2, 8, pre, l, "lokr_w2_b");
                    if (with_cp && l == 3) syn_add(s, "F32", 2, 2, pre, l, "lokr_t2");
                }
            }
            const char *d = syn_dir(s);
            if (with_cp) load_fails(d, PEFTD_EUNSUPPORTED, k == 0 ? "layers.3.self_attn.q_proj.hada_t1" : "layers.3.self_attn.q_proj.lokr_t2",
                                    "CP form");
            else adapter_free(load_ok(d));
            syn_free(s);
        }
    }
}

TEST(err_non_finite) {
    syn *s = syn_lora(2, "F32");
    syn_find(s, "base_model.model.model.layers.4.self_attn.q_proj.lora_B.weight")->vals[5] = NAN;
    load_fails(syn_dir(s), PEFTD_EINVAL, "layers.4.self_attn.q_proj.lora_B.weight", "NaN");
    syn_free(s);
    s = syn_lora(2, "F16");
    syn_find(s, "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight")->vals[0] = 1e6f; /* f16 → Inf */
    load_fails(syn_dir(s), PEFTD_EINVAL, "layers.1.self_attn.v_proj.lora_A.weight", "Inf");
    syn_free(s);
    s = syn_hub("x", 16, false);
    syn_find(s, "model.layers.0.output_adapters.adapters.x.adapter_up.bias")->vals[3] = -INFINITY;
    load_fails(syn_dir(s), PEFTD_EINVAL, "adapter_up.bias", "Inf");
    syn_free(s);
}

TEST(err_targets_the_base_lacks) {
    syn *s = syn_lora(2, "F32");
    const char *tm[] = {"q_proj", "c_attn"};
    cfg_set(s, "target_modules", cJSON_CreateStringArray(tm, 2));
    load_fails(syn_dir(s), PEFTD_EINVAL, "c_attn", "not found in base");
    const char *tm2[] = {"q_proj", "v_proj", "lm_head"};
    cfg_set(s, "target_modules", cJSON_CreateStringArray(tm2, 3));
    /* lm_head is a LoRA target since issue 16: its tensors are then required */
    load_fails(syn_dir(s), PEFTD_EFORMAT, "lm_head.lora_A.weight", "missing");
    const char *tm4[] = {"q_proj", "input_layernorm"};
    cfg_set(s, "target_modules", cJSON_CreateStringArray(tm4, 2));
    load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "input_layernorm", NULL);
    const char *tm3[] = {"q_proj", "v_proj"};
    cfg_set(s, "target_modules", cJSON_CreateStringArray(tm3, 2));
    cfg_set(s, "layers_to_transform", cJSON_CreateIntArray((int[]){1, 5}, 2));
    load_fails(syn_dir(s), PEFTD_EINVAL, "layers_to_transform", "is 5; must be an integer in [0, 4]");
    cfg_set(s, "layers_to_transform", cJSON_CreateNumber(9));
    load_fails(syn_dir(s), PEFTD_EINVAL, "layers_to_transform", "is 9; must be an integer in [0, 4]");
    syn_free(s);
}

TEST(err_missing_and_unexpected_tensors) {
    syn *s = syn_lora(2, "F32");
    syn_drop(s, "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight");
    load_fails(syn_dir(s), PEFTD_EFORMAT, "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight", "missing");
    syn_free(s);
    s = syn_lora(2, "F32");
    syn_add(s, "F32", 64, 0, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias");
    load_fails(syn_dir(s), PEFTD_EFORMAT, "unexpected tensor", "q_proj.lora_B.bias");
    syn_free(s);
}

TEST(base_model_name_is_informational) {
    syn *s = syn_lora(2, "F32");
    cfg_set(s, "base_model_name_or_path", cJSON_CreateString("meta-llama/Llama-2-70b-hf"));
    cfg_set(s, "revision", cJSON_CreateString("main"));
    adapter *a = load_ok(syn_dir(s));
    adapter_free(a);
    syn_free(s);
}

TEST(err_config_types) {
    static const struct {
        const char *field, *json, *want;
    } cases[] = {
        {"r", "\"4\"", "'r'"},
        {"r", "2.5", "'r'"},
        {"lora_alpha", "\"8\"", "'lora_alpha'"},
        {"use_dora", "\"yes\"", "'use_dora'"},
        {"target_modules", "5", "'target_modules'"},
        {"target_modules", "[\"q_proj\", 3]", "'target_modules'"},
        {"target_modules", "\"(unclosed\"", "invalid regex"},
        {"rank_pattern", "[]", "'rank_pattern'"},
        {"rank_pattern", "{\"q_proj\": \"big\"}", "rank_pattern['q_proj']"},
        {"layers_to_transform", "\"0\"", "'layers_to_transform'"},
        {"modules_to_save", "\"lm_head\"", "'modules_to_save'"},
        {"peft_type", "7", "'peft_type'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        syn *s = syn_lora(2, "F32");
        cfg_set(s, cases[i].field, cJSON_Parse(cases[i].json));
        load_fails(syn_dir(s), PEFTD_EFORMAT, cases[i].want, NULL);
        syn_free(s);
    }
    syn *s = syn_lora(2, "F32");
    const char *d = syn_dir(s);
    write_file(d, "adapter_config.json", "[1, 2]", 6);
    load_fails(d, PEFTD_EFORMAT, "not a JSON object", NULL);
    write_file(d, "adapter_config.json", "{\"peft_type\": \"LORA\",", 21);
    load_fails(d, PEFTD_EFORMAT, "not valid JSON", NULL);
    write_file(d, "adapter_config.json", "{\"hello\": 1}", 12);
    load_fails(d, PEFTD_EFORMAT, "peft_type", NULL);
    write_file(d, "adapter_config.json", "{\"config\": 1}", 13);
    load_fails(d, PEFTD_EFORMAT, "'config'", NULL);
    syn_free(s);
}

TEST(err_ia3_and_prompt) {
    if (!KB) setup();
    syn *s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"IA3\",\"target_modules\":[\"k_proj\",\"down_proj\"],"
                         "\"feedforward_modules\":[\"down_proj\"],\"fan_in_fan_out\":false}");
    for (int l = 0; l < 5; l++) {
        syn_add(s, "BF16", 32, 1, "base_model.model.model.layers.%d.self_attn.k_proj.ia3_l", l);
        syn_add(s, "BF16", 1, 172, "base_model.model.model.layers.%d.mlp.down_proj.ia3_l", l);
    }
    adapter *a = load_ok(syn_dir(s));
    ASSERT(a->ia3_input[AMOD_DOWN] && !a->ia3_input[AMOD_K]);
    ASSERT(a->ia3[AMOD_V] == NULL);
    ASSERT_EQ(a->ia3[2 * AMOD_COUNT + AMOD_DOWN][171],
              bf16_to_f32(f32_to_bf16(syn_find(s, "base_model.model.model.layers.2.mlp.down_proj.ia3_l")->vals[171])));
    adapter_free(a);
    /* an output-side vector where the config says feedforward (input side) */
    cfg_set(s, "feedforward_modules", cJSON_CreateStringArray((const char *[]){"k_proj"}, 1));
    load_fails(syn_dir(s), PEFTD_EINVAL, "k_proj.ia3_l' has shape [32, 1]", "expected [1, 64]");
    cfg_set(s, "feedforward_modules", cJSON_CreateStringArray((const char *[]){"o_proj"}, 1));
    load_fails(syn_dir(s), PEFTD_EFORMAT, "feedforward_modules", "o_proj");
    syn_free(s);

    s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":4,\"token_dim\":64}");
    syn_add(s, "F16", 4, 64, "prompt_embeddings");
    a = load_ok(syn_dir(s));
    ASSERT_EQ(a->n_virtual, 4);
    ASSERT_EQ(a->prompt.dtype, KDT_F32);
    adapter_free(a);
    cfg_set(s, "num_virtual_tokens", cJSON_CreateNumber(5));
    load_fails(syn_dir(s), PEFTD_EINVAL, "prompt_embeddings", "expected [5, 64]");
    syn_free(s);
}

/* Issue 9 #2: numbers a config may hold but the forward cannot use (a float that overflows
 * when narrowed, an index/count outside int) are refused at import with PEFTD_EINVAL (HTTP
 * 422) naming the field. Before: lora_alpha 1e308 / 3.5e38 / alpha_pattern 1e308 / hub
 * scaling loaded (scale Inf, every completion failed), layers_to_transform [1e300] and
 * reduction_factor 1e-300 were float->int casts out of range (undefined behaviour). */
TEST(err_numbers_the_forward_cannot_use) {
    static const struct {
        const char *field, *json, *want;
    } lora[] = {
        {"lora_alpha", "1e308", "'lora_alpha' is 1e+308"},
        {"lora_alpha", "3.5e38", "'lora_alpha' is 3.5e+38"},
        {"lora_alpha", "-2e6", "'lora_alpha' is -2e+06"},
        {"alpha_pattern", "{\"q_proj\": 1e308}", "alpha_pattern['q_proj'] is 1e+308"},
        {"r", "1e300", "'r' is 1e+300"},
        {"r", "0", "'r' is 0"},
        {"rank_pattern", "{\"v_proj\": 1e300}", "rank_pattern['v_proj'] is 1e+300"},
        {"layers_to_transform", "[1e300]", "'layers_to_transform'"},
        {"layers_to_transform", "[-1e300]", "'layers_to_transform'"},
        {"layers_to_transform", "1e300", "'layers_to_transform'"},
    };
    for (size_t i = 0; i < sizeof lora / sizeof lora[0]; i++) {
        syn *s = syn_lora(2, "F32");
        cfg_set(s, lora[i].field, cJSON_Parse(lora[i].json));
        load_fails(syn_dir(s), PEFTD_EINVAL, lora[i].want, NULL);
        syn_free(s);
    }
    static const struct {
        const char *field, *json, *want;
    } hub[] = {
        {"scaling", "1e308", "'scaling' is 1e+308"},
        {"scaling", "3.5e38", "'scaling' is 3.5e+38"},
        {"reduction_factor", "1e-300", "reduction_factor 1e-300"},
        {"reduction_factor", "{\"default\": 1e-300}", "reduction_factor"},
        {"leave_out", "[1e300]", "leave_out"},
    };
    for (size_t i = 0; i < sizeof hub / sizeof hub[0]; i++) {
        syn *s = syn_hub("x", 16, false);
        hub_set(s, hub[i].field, cJSON_Parse(hub[i].json));
        load_fails(syn_dir(s), PEFTD_EINVAL, hub[i].want, NULL);
        syn_free(s);
    }
    syn *s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":1e300,\"token_dim\":64}");
    syn_add(s, "F32", 4, 64, "prompt_embeddings");
    load_fails(syn_dir(s), PEFTD_EINVAL, "'num_virtual_tokens' is 1e+300", NULL);
    cfg_set(s, "num_virtual_tokens", cJSON_CreateNumber(4));
    cfg_set(s, "token_dim", cJSON_Parse("-1e300"));
    load_fails(syn_dir(s), PEFTD_EINVAL, "'token_dim'", NULL);
    syn_free(s);
    /* the largest accepted values still load and give a finite scale */
    s = syn_lora(2, "F32");
    cfg_set(s, "lora_alpha", cJSON_CreateNumber(1e6));
    adapter *a = load_ok(syn_dir(s));
    ASSERT_NEAR(a->lora[AMOD_Q].scale, 5e5, 0);
    adapter_free(a);
    syn_free(s);
}

/* Issue 9 #12: AdapterHub wirings the forward cannot run were accepted, then failed every
 * step (plan build) and with it every other sequence of the batch. Refused at import now;
 * residual_before_ln false without original_ln_before is the served math and loads. */
TEST(err_hub_residual_wiring_not_served) {
    syn *s = syn_hub("x", 16, false);
    hub_set(s, "original_ln_after", cJSON_CreateFalse());
    load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "original_ln_after is false", NULL);
    syn_free(s);
    s = syn_hub("x", 16, false); /* original_ln_before true */
    hub_set(s, "residual_before_ln", cJSON_CreateFalse());
    load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "residual_before_ln is false", NULL);
    hub_set(s, "original_ln_before", cJSON_CreateFalse());
    adapter *a = load_ok(syn_dir(s));
    for (int l = 0; l < 5; l++) {
        ASSERT(a->bn_ffn[l].size > 0);
        ASSERT(a->bn_ffn[l].residual_before_ln && a->bn_ffn[l].original_ln_after && !a->bn_ffn[l].original_ln_before);
    }
    adapter_free(a);
    syn_free(s);
}

/* Issue 9 #6: 20 catastrophic rank_pattern regexes in an 814-byte config held a thread for
 * 12 s. Every match now runs under PCRE2 match/depth limits, pattern maps and lists are
 * capped, and the config's size and JSON value count are bounded before parsing. Each
 * hostile config below is refused with PEFTD_EINVAL (422) and the reason; on the old code
 * the first one ran until the harness timeout (exponential backtracking on every key). */
TEST(err_hostile_patterns_and_configs) {
    syn *s = syn_lora(2, "F32");
    cJSON *rp = cJSON_CreateObject();
    for (int i = 0; i < 20; i++) {
        char k[64];
        snprintf(k, sizeof k, "(.*.*.*.*.*.*.*.*.*.*)*[#%%]%d", i);
        cJSON_AddNumberToObject(rp, k, 4);
    }
    cfg_set(s, "rank_pattern", rp);
    load_fails(syn_dir(s), PEFTD_EINVAL, "rank_pattern", "exceeds the match limits");
    /* target_modules as a regex goes through the same limits */
    cfg_set(s, "rank_pattern", cJSON_CreateObject());
    cfg_set(s, "target_modules", cJSON_CreateString("(.*.*.*.*.*.*.*.*.*.*)*[#%]"));
    load_fails(syn_dir(s), PEFTD_EINVAL, "target_modules", "exceeds the match limits");
    cfg_set(s, "target_modules", cJSON_CreateStringArray((const char *[]){"q_proj", "v_proj"}, 2));
    /* more pattern keys than any real model has modules */
    rp = cJSON_CreateObject();
    for (int i = 0; i < ADAPTER_MAX_PATTERNS_FOR_TEST + 1; i++) {
        char k[64];
        snprintf(k, sizeof k, "model.layers.%d.self_attn.q_proj", i);
        cJSON_AddNumberToObject(rp, k, 2);
    }
    cfg_set(s, "alpha_pattern", rp);
    load_fails(syn_dir(s), PEFTD_EINVAL, "alpha_pattern", "at most 1024");
    cfg_set(s, "alpha_pattern", cJSON_CreateObject());
    /* a list of 1025 modules_to_save */
    cJSON *l = cJSON_CreateArray();
    for (int i = 0; i < ADAPTER_MAX_PATTERNS_FOR_TEST + 1; i++) cJSON_AddItemToArray(l, cJSON_CreateString("score"));
    cfg_set(s, "modules_to_save", l);
    load_fails(syn_dir(s), PEFTD_EINVAL, "modules_to_save", "more than 1024 entries");
    cfg_set(s, "modules_to_save", cJSON_CreateNull());
    /* a config of 70,000 JSON values (a few hundred kB) and one over 1 MiB */
    l = cJSON_CreateArray();
    for (int i = 0; i < 70000; i++) cJSON_AddItemToArray(l, cJSON_CreateNumber(0));
    cfg_set(s, "padding", l);
    load_fails(syn_dir(s), PEFTD_EINVAL, "adapter_config.json holds about", "JSON values");
    char *big = malloc((1u << 20) + 2);
    ASSERT(big);
    memset(big, 'x', (1u << 20) + 1);
    big[(1u << 20) + 1] = 0;
    cfg_set(s, "padding", cJSON_CreateString(big));
    free(big);
    load_fails(syn_dir(s), PEFTD_EINVAL, "adapter_config.json is larger than", NULL);
    syn_free(s);
}

TEST(names_and_shapes) {
    if (!KB) setup();
    adapter_free(NULL);
    ASSERT_STREQ(adapter_kind_name(ADAPTER_BOTTLENECK), "bottleneck");
    ASSERT_STREQ(adapter_kind_name(ADAPTER_PREFIX_TUNING), "prefix_tuning");
    ASSERT_STREQ(adapter_module_name(AMOD_GATE), "gate_proj");
    int o, in;
    adapter_module_shape(&BASE, AMOD_K, &o, &in);
    ASSERT_EQ(o, 32);
    ASSERT_EQ(in, 64);
    adapter_module_shape(&BASE, AMOD_DOWN, &o, &in);
    ASSERT_EQ(o, 64);
    ASSERT_EQ(in, 172);
}

/* Issue 9 import gaps: a LoRA rank above max(in, out) of its module (stories260K q_proj is
 * [64, 64], v_proj [32, 64]) or above the absolute bound (one huge rank sized the engine's
 * SGMV workspace for the whole batch and failed every sequence of the step), and prompt
 * tuning with num_virtual_tokens >= the base's context (512 positions: no room for a
 * prompt). Both loaded on the old code; now PEFTD_EINVAL (HTTP 422) naming the field. */
TEST(err_rank_and_virtual_tokens_beyond_the_base) {
    syn *s = syn_lora(65, "F32");
    load_fails(syn_dir(s), PEFTD_EINVAL, "field 'r' is 65", "max(in, out) = 64");
    syn_free(s);
    s = syn_lora(64, "F32"); /* == max(in, out): served */
    adapter *a = load_ok(syn_dir(s));
    ASSERT_EQ(a->max_rank, 64);
    adapter_free(a);
    syn_free(s);
    s = syn_lora(2, "F32");
    cJSON *rp = cJSON_CreateObject();
    cJSON_AddNumberToObject(rp, "v_proj", 65);
    cfg_set(s, "rank_pattern", rp);
    for (int l = 0; l < 5; l++) {
        char n[128];
        snprintf(n, sizeof n, "base_model.model.model.layers.%d.self_attn.v_proj.lora_A.weight", l);
        syn_drop(s, n);
        snprintf(n, sizeof n, "base_model.model.model.layers.%d.self_attn.v_proj.lora_B.weight", l);
        syn_drop(s, n);
        syn_lora_module(s, l, AMOD_V, 65, "F32", false);
    }
    load_fails(syn_dir(s), PEFTD_EINVAL, "rank_pattern['v_proj'] is 65", "v_proj [32, 64]");
    syn_free(s);
    s = syn_lora(2, "F32");
    cfg_set(s, "r", cJSON_CreateNumber(5000));
    load_fails(syn_dir(s), PEFTD_EINVAL, "'r'", "4096");
    syn_free(s);

    s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":512,\"token_dim\":64}");
    syn_add(s, "F32", 512, 64, "prompt_embeddings");
    load_fails(syn_dir(s), PEFTD_EINVAL, "'num_virtual_tokens' is 512", "context of 512");
    syn_free(s);
    s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"PREFIX_TUNING\",\"num_virtual_tokens\":600,\"num_layers\":5,"
                         "\"token_dim\":32,\"num_attention_heads\":4}");
    syn_add(s, "F32", 600, 320, "prompt_embeddings");
    load_fails(syn_dir(s), PEFTD_EINVAL, "'num_virtual_tokens' is 600", "no room for a prompt");
    syn_free(s);
    s = calloc(1, sizeof *s); /* 511: one position left, served */
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":511,\"token_dim\":64}");
    syn_add(s, "F32", 511, 64, "prompt_embeddings");
    a = load_ok(syn_dir(s));
    adapter_free(a);
    syn_free(s);
}

/* Non-finite values in the half-precision encodings themselves (exponent all ones): bf16
 * NaN / Inf, f16 NaN, in LoRA, DoRA magnitude and prompt tables, each refused naming the
 * tensor. */
TEST(err_non_finite_half_encodings) {
    syn *s = syn_lora(2, "BF16");
    syn_find(s, "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight")->vals[7] = NAN;
    load_fails(syn_dir(s), PEFTD_EINVAL, "layers.2.self_attn.q_proj.lora_A.weight", "NaN");
    syn_free(s);
    s = syn_lora(2, "BF16");
    syn_find(s, "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight")->vals[1] = INFINITY;
    load_fails(syn_dir(s), PEFTD_EINVAL, "layers.0.self_attn.v_proj.lora_B.weight", "Inf");
    syn_free(s);
    s = syn_lora(2, "F16");
    syn_find(s, "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight")->vals[0] = NAN;
    load_fails(syn_dir(s), PEFTD_EINVAL, "layers.3.self_attn.q_proj.lora_B.weight", "NaN");
    syn_free(s);
    s = syn_lora(2, "F32");
    cfg_set(s, "use_dora", cJSON_CreateTrue());
    for (int l = 0; l < 5; l++)
        for (int m = AMOD_Q; m <= AMOD_V; m += AMOD_V - AMOD_Q) {
            int o;
            adapter_module_shape(&BASE, (adapter_module)m, &o, NULL);
            wtensor *t = syn_add(s, "BF16", o, 0, "base_model.model.model.layers.%d.self_attn.%s.lora_magnitude_vector",
                                 l, adapter_module_name((adapter_module)m));
            for (int j = 0; j < o; j++) t->vals[j] = 1.0f;
            if (l == 4 && m == AMOD_V) t->vals[3] = -INFINITY;
        }
    load_fails(syn_dir(s), PEFTD_EINVAL, "layers.4.self_attn.v_proj.lora_magnitude_vector", "Inf");
    syn_free(s);
    s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_Parse("{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":4,\"token_dim\":64}");
    syn_add(s, "BF16", 4, 64, "prompt_embeddings")->vals[100] = NAN;
    load_fails(syn_dir(s), PEFTD_EINVAL, "prompt_embeddings", "NaN");
    syn_free(s);
}

TEST_MAIN(fixture_lora_values_and_scales, fixture_lora_bf16_stays_bf16, fixture_lora_patterns, fixture_dora_factor,
          fixture_lm_head_modules_to_save, fixture_ia3, fixture_prompt_tuning, fixture_prefix_tuning, fixture_pfeiffer,
          fixture_houlsby, fixture_sha256_is_content_hash, syn_lora_f16_basic, syn_lora_mixed_dtypes_become_f32,
          syn_rslora_scale, syn_layers_to_transform, syn_all_linear_and_regex, syn_list_suffix_match_needs_dot,
          syn_rank_alpha_patterns, syn_dora_factor, syn_modules_to_save, syn_prefix_split, syn_hub_bottleneck,
          syn_hub_unsupported_options, err_unknown_peft_type, err_fan_in_fan_out_and_bias, err_pickle_weights_refused,
          err_missing_files, err_wrong_shape, err_lycoris_cp_form, err_non_finite, err_targets_the_base_lacks,
          err_missing_and_unexpected_tensors, base_model_name_is_informational, err_config_types, err_ia3_and_prompt,
          names_and_shapes, err_numbers_the_forward_cannot_use, err_hub_residual_wiring_not_served,
          err_hostile_patterns_and_configs, err_rank_and_virtual_tokens_beyond_the_base,
          err_non_finite_half_encodings)
