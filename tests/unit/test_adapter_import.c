/* tests/unit/test_adapter_import.c — adapter_load_dir() against the embedded stories260K
 * base: every fixture in tests/fixtures/adapters (written by peft 0.21 / adapters 1.3)
 * loads with the right kind, ranks, scales and tensor values; synthetic PEFT and AdapterHub
 * adapters (tests/harness/adapter_syn.h writes them) cover the matching rules (lists, regexes,
 * all-linear, layers_to_transform, rank/alpha patterns), dtype handling, DoRA factors against
 * a direct double computation and the prefix K/V split. The refusals are
 * tests/unit/test_adapter_refusals.c. */
#include <cJSON.h>
#include <math.h>
#include <openssl/evp.h>
#include <unistd.h>

#include "adapter_store/safetensors.h"
#include "lib/half.h"
#include "tests/harness/adapter_syn.h"
#include "tests/harness/test.h"

#define FIXTURES "tests/fixtures/adapters"

/* ---- reading what was loaded ------------------------------------------------------ */

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
        adapter *a = syn_load_ok(dir);
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
    adapter *a = syn_load_ok(fixture("lora_bf16"));
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
    adapter *a = syn_load_ok(dir);
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
            const kmat *W = &syn_base()->layer_w[l * AMOD_COUNT + m];
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
    adapter *a = syn_load_ok(dir);
    st_file *f = open_weights(dir, "adapter_model.safetensors");
    check_lora_tensors(a, f);
    check_dora(a, f);
    st_close(f);
    adapter_free(a);
}

TEST(fixture_lm_head_modules_to_save) {
    const char *dir = fixture("lora_lm_head");
    adapter *a = syn_load_ok(dir);
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
    adapter *a = syn_load_ok(dir);
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
        adapter_module_shape(syn_base(), (adapter_module)m, &o, &in);
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
    adapter *a = syn_load_ok(dir);
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
    adapter *a = syn_load_ok(dir);
    ASSERT_EQ(a->kind, ADAPTER_PREFIX_TUNING);
    st_file *f = open_weights(dir, "adapter_model.safetensors");
    const st_tensor *t = st_find(f, "prompt_embeddings");
    int kv = syn_base()->n_kv_heads * syn_base()->head_dim, L = syn_base()->n_layers;
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
    adapter *a = syn_load_ok(dir);
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
    adapter *a = syn_load_ok(dir);
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

TEST(syn_lora_f16_basic) {
    syn *s = syn_lora(4, "F16");
    adapter *a = syn_load_ok(syn_dir(s));
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
    adapter *a = syn_load_ok(syn_dir(s));
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
    syn_cfg_set(s, "use_rslora", cJSON_CreateTrue());
    adapter *a = syn_load_ok(syn_dir(s));
    ASSERT_NEAR(a->lora[AMOD_Q].scale, 8.0 / 2.0, 1e-7); /* alpha / sqrt(4) */
    adapter_free(a);
    syn_free(s);
}

static syn *syn_lora_targets(cJSON *targets, const bool *want) {
    syn *s = syn_lora(2, "F32");
    for (int i = s->n - 1; i >= 0; i--) syn_drop(s, s->t[i].name);
    syn_cfg_set(s, "target_modules", targets);
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
    syn_cfg_set(s, "layers_to_transform", cJSON_CreateIntArray(layers, 2));
    for (int i = 0; i < 2; i++) {
        syn_lora_module(s, layers[i], AMOD_O, 2, "F32", false);
        syn_lora_module(s, layers[i], AMOD_UP, 2, "F32", false);
    }
    adapter *a = syn_load_ok(syn_dir(s));
    for (int l = 0; l < 5; l++)
        for (int m = 0; m < AMOD_COUNT; m++)
            ASSERT_EQ(a->lora[l * AMOD_COUNT + m].rank,
                      ((l == 0 || l == 2) && (m == AMOD_O || m == AMOD_UP)) ? 2 : 0);
    adapter_free(a);
    syn_lora_module(s, 1, AMOD_O, 2, "F32", false);
    syn_load_fails(syn_dir(s), PEFTD_EFORMAT, "unexpected tensor", "layers.1.self_attn.o_proj.lora_A.weight");
    syn_free(s);
}

TEST(syn_all_linear_and_regex) {
    bool want[5 * AMOD_COUNT];
    for (int i = 0; i < 5 * AMOD_COUNT; i++) want[i] = true;
    syn *s = syn_lora_targets(cJSON_CreateString("ALL-LINEAR"), want);
    adapter *a = syn_load_ok(syn_dir(s));
    check_ranks(a, want, 2);
    adapter_free(a);
    syn_free(s);

    /* fullmatch: "model\.layers\.[13]\..*(k|down)_proj" — layers 1 and 3, k_proj and down_proj */
    for (int i = 0; i < 5 * AMOD_COUNT; i++) {
        int l = i / AMOD_COUNT, m = i % AMOD_COUNT;
        want[i] = (l == 1 || l == 3) && (m == AMOD_K || m == AMOD_DOWN);
    }
    s = syn_lora_targets(cJSON_CreateString("model\\.layers\\.[13]\\..*(k|down)_proj"), want);
    a = syn_load_ok(syn_dir(s));
    check_ranks(a, want, 2);
    adapter_free(a);
    syn_free(s);

    /* a regex that only matches a prefix of the names selects nothing: fullmatch */
    s = syn_lora_targets(cJSON_CreateString("model\\.layers\\.1\\.self"), want);
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "target_modules", "matches no module");
    syn_free(s);
    /* one that fullmatches a decoder layer (not a Linear) cannot be served */
    s = syn_lora_targets(cJSON_CreateString("model\\.layers\\.1|.*q_proj"), want);
    syn_load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, "'model.layers.1'", NULL);
    syn_free(s);
}

/* Suffix matching is on "." boundaries: "proj" names no module. */
TEST(syn_list_suffix_match_needs_dot) {
    bool want[5 * AMOD_COUNT] = {false};
    const char *tm[] = {"proj"};
    syn *s = syn_lora_targets(cJSON_CreateStringArray(tm, 1), want);
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "'proj'", "not found in base");
    syn_free(s);
    /* a full module name works as an exact key */
    const char *tm2[] = {"model.layers.4.mlp.gate_proj"};
    want[4 * AMOD_COUNT + AMOD_GATE] = true;
    s = syn_lora_targets(cJSON_CreateStringArray(tm2, 1), want);
    adapter *a = syn_load_ok(syn_dir(s));
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
    syn_cfg_set(s, "rank_pattern", rp);
    cJSON *ap = cJSON_CreateObject();
    cJSON_AddNumberToObject(ap, "v_proj", 2.5);
    syn_cfg_set(s, "alpha_pattern", ap);
    for (int l = 0; l < 5; l++) {
        syn_lora_module(s, l, AMOD_Q, l >= 3 ? 6 : 3, "F32", false);
        syn_lora_module(s, l, AMOD_V, 4, "F32", false);
    }
    adapter *a = syn_load_ok(syn_dir(s));
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
    syn_cfg_set(s, "use_dora", cJSON_CreateTrue());
    const char *tm[] = {"k_proj", "down_proj"};
    syn_cfg_set(s, "target_modules", cJSON_CreateStringArray(tm, 2));
    for (int l = 0; l < 5; l++) {
        syn_lora_module(s, l, AMOD_K, 3, "BF16", true);
        syn_lora_module(s, l, AMOD_DOWN, 3, "BF16", true);
    }
    const char *d = syn_dir(s);
    adapter *a = syn_load_ok(d);
    st_file *f = open_weights(d, "adapter_model.safetensors");
    check_dora(a, f);
    st_close(f);
    adapter_free(a);
    syn_free(s);
}

TEST(syn_modules_to_save) {
    syn *s = syn_lora(2, "F32");
    const char *mts[] = {"lm_head", "embed_tokens"};
    syn_cfg_set(s, "modules_to_save", cJSON_CreateStringArray(mts, 2));
    wtensor *h = syn_add(s, "BF16", 512, 64, "base_model.model.lm_head.weight");
    syn_add(s, "F32", 512, 64, "base_model.model.model.embed_tokens.weight");
    adapter *a = syn_load_ok(syn_dir(s));
    ASSERT_EQ(a->lm_head.dtype, KDT_BF16); /* full replacements keep their stored dtype */
    ASSERT_EQ(mat_at(&a->lm_head, 7, 3), bf16_to_f32(f32_to_bf16(h->vals[7 * 64 + 3])));
    ASSERT_EQ(a->embed.rows, 512);
    adapter_free(a);
    /* the lm_head tensor is required once listed */
    syn_drop(s, "base_model.model.lm_head.weight");
    syn_load_fails(syn_dir(s), PEFTD_EFORMAT, "base_model.model.lm_head.weight", "missing");
    syn_free(s);
}

/* PEFT prefix layout with known values: element (t, 2l+side, j) = t*1000 + (2l+side)*100 + j/100 */
TEST(syn_prefix_split) {
    syn_base();
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
    adapter *a = syn_load_ok(d);
    ASSERT_EQ(a->n_virtual, 3);
    for (int l = 0; l < 5; l++)
        for (int r = 0; r < 3; r++)
            for (int j = 0; j < 32; j++) {
                ASSERT_EQ(a->prefix_k[l][r * 32 + j], (float)(r * 1000 + (2 * l) * 100) + (float)j / 100);
                ASSERT_EQ(a->prefix_v[l][r * 32 + j], (float)(r * 1000 + (2 * l + 1) * 100) + (float)j / 100);
            }
    adapter_free(a);
    /* token_dim must be the KV width (head_dim × n_kv_heads), not hidden */
    syn_cfg_set(s, "token_dim", cJSON_CreateNumber(64));
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "token_dim 64", NULL);
    syn_cfg_set(s, "token_dim", cJSON_CreateNumber(32));
    /* prefix_projection: the saved table is already the projected one (issue 16): same load */
    syn_cfg_set(s, "prefix_projection", cJSON_CreateTrue());
    a = syn_load_ok(syn_dir(s));
    ASSERT_EQ(a->prefix_k[1][0], (float)(0 * 1000 + 2 * 100));
    adapter_free(a);
    syn_cfg_set(s, "prefix_projection", cJSON_CreateString("yes"));
    syn_load_fails(syn_dir(s), PEFTD_EFORMAT, "prefix_projection", NULL);
    syn_free(s);
}

/* hidden // 2.5 = 25 (Python floor division), gelu → exact erf GELU, scaling copied. */
TEST(syn_hub_bottleneck) {
    syn *s = syn_hub("mine", 2.5, true);
    adapter *a = syn_load_ok(syn_dir(s));
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
        syn_hub_set(s, cases[i].field, cJSON_Parse(cases[i].json));
        syn_load_fails(syn_dir(s), PEFTD_EUNSUPPORTED, cases[i].want, NULL);
        syn_free(s);
    }
    /* served since issue 16: par_bn reads the residual stream; Compacter's PHM factors are
     * expected instead of plain weights (test_adapter_kinds.c checks both against the library) */
    syn *s = syn_hub("x", 16, false);
    syn_hub_set(s, "is_parallel", cJSON_CreateTrue());
    adapter *par = syn_load_ok(syn_dir(s));
    ASSERT(par->bn_ffn[0].parallel);
    adapter_free(par);
    syn_free(s);
    s = syn_hub("x", 16, false);
    syn_hub_set(s, "phm_layer", cJSON_CreateTrue());
    syn_load_fails(syn_dir(s), PEFTD_EFORMAT, "phm_layer", "W_left");
    syn_free(s);
    s = syn_hub("x", 16, false);
    syn_hub_set(s, "leave_out", cJSON_CreateIntArray((int[]){7}, 1));
    syn_load_fails(syn_dir(s), PEFTD_EINVAL, "leave_out", NULL);
    syn_free(s);
    /* a left-out layer has no adapter: its tensors are then unexpected */
    s = syn_hub("x", 16, false);
    syn_hub_set(s, "leave_out", cJSON_CreateIntArray((int[]){2}, 1));
    syn_load_fails(syn_dir(s), PEFTD_EFORMAT, "unexpected tensor", "model.layers.2.output_adapters");
    syn_free(s);
}

TEST_MAIN(fixture_lora_values_and_scales, fixture_lora_bf16_stays_bf16, fixture_lora_patterns, fixture_dora_factor,
          fixture_lm_head_modules_to_save, fixture_ia3, fixture_prompt_tuning, fixture_prefix_tuning,
          fixture_pfeiffer, fixture_houlsby, fixture_sha256_is_content_hash, syn_lora_f16_basic,
          syn_lora_mixed_dtypes_become_f32, syn_rslora_scale, syn_layers_to_transform, syn_all_linear_and_regex,
          syn_list_suffix_match_needs_dot, syn_rank_alpha_patterns, syn_dora_factor, syn_modules_to_save,
          syn_prefix_split, syn_hub_bottleneck, syn_hub_unsupported_options)
