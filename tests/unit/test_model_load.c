/* tests/unit/test_model_load.c — model_config_parse() and model_load()/model_free():
 * the embedded stories260K model, tiny models written by the test into a temporary
 * directory (f32, bf16/f16 mixes, tied/untied, two shards with an index), broken configs
 * and broken weight sets (each error must name the offending field, tensor or file), and
 * the copy path of a non-CPU backend through a fake backend. */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/half.h"
#include "server/model/model.h"
#include "tests/harness/test.h"

#define STORIES "models/stories260K"

/* ---- tiny models ------------------------------------------------------------------ */

/* Shapes of the tiny model: vocab 16, hidden 8, 2 heads of 4, 1 KV head, FFN 12, 2 layers. */
enum { TV = 16, TD = 8, TH = 2, TKV = 1, THD = 4, TFF = 12, TL = 2 };

static const char *TINY_CONFIG =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"vocab_size\":16,"
    "\"hidden_size\":8,\"intermediate_size\":12,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":2,\"num_key_value_heads\":1,\"max_position_embeddings\":64,"
    "\"rms_norm_eps\":1e-05,\"tie_word_embeddings\":false,\"bos_token_id\":1,"
    "\"eos_token_id\":2,\"torch_dtype\":\"float32\"}";

static const char *TINY_CONFIG_TIED =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":16,\"hidden_size\":8,"
    "\"intermediate_size\":12,\"num_hidden_layers\":2,\"num_attention_heads\":2,"
    "\"num_key_value_heads\":1,\"tie_word_embeddings\":true}";

typedef struct {
    char name[96];
    char dtype[8];
    int ndim;
    int64_t shape[2];
} tspec;

typedef struct {
    tspec t[64];
    int n;
} tlist;

static void tl_add(tlist *l, const char *name, const char *dtype, int64_t rows, int64_t cols) {
    ASSERT(l->n < 64);
    tspec *t = &l->t[l->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype);
    t->ndim = rows ? 2 : 1;
    t->shape[0] = rows ? rows : cols;
    t->shape[1] = cols;
}

static tspec *tl_find(tlist *l, const char *name) {
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->t[i].name, name) == 0) return &l->t[i];
    FAIL("no tensor %s in the list", name);
}

static void tl_remove(tlist *l, const char *name) {
    tspec *t = tl_find(l, name);
    *t = l->t[--l->n];
}

/* Every tensor of the tiny model in `dtype`, plus lm_head.weight when asked. */
static void tiny_tensors(tlist *l, const char *dtype, bool lm_head) {
    l->n = 0;
    tl_add(l, "model.embed_tokens.weight", dtype, TV, TD);
    for (int i = 0; i < TL; i++) {
        char n[96];
#define ADD(suffix, r, c)                                                 \
    snprintf(n, sizeof n, "model.layers.%d.%s", i, suffix);                \
    tl_add(l, n, dtype, r, c)
        ADD("input_layernorm.weight", 0, TD);
        ADD("self_attn.q_proj.weight", TH * THD, TD);
        ADD("self_attn.k_proj.weight", TKV * THD, TD);
        ADD("self_attn.v_proj.weight", TKV * THD, TD);
        ADD("self_attn.o_proj.weight", TD, TH * THD);
        ADD("post_attention_layernorm.weight", 0, TD);
        ADD("mlp.gate_proj.weight", TFF, TD);
        ADD("mlp.up_proj.weight", TFF, TD);
        ADD("mlp.down_proj.weight", TD, TFF);
#undef ADD
    }
    tl_add(l, "model.norm.weight", dtype, 0, TD);
    if (lm_head) tl_add(l, "lm_head.weight", dtype, TV, TD);
}

static size_t dtype_bytes(const char *dt) {
    if (!strcmp(dt, "F32") || !strcmp(dt, "I32")) return 4;
    if (!strcmp(dt, "F16") || !strcmp(dt, "BF16")) return 2;
    if (!strcmp(dt, "F64")) return 8;
    FAIL("dtype %s", dt);
}

static int64_t numel(const tspec *t) { return t->ndim == 2 ? t->shape[0] * t->shape[1] : t->shape[0]; }

/* Element j of the tensor with id k: exact in f32, f16 and bf16 for the tiny sizes
 * (k + j/4 < 64 needs at most 8 significant bits). */
static float tval(int k, int64_t j) { return (float)k + 0.25f * (float)j; }

/* Tensor ids are hashes of the name so that values do not depend on file or order. */
static int tid(const char *name) {
    unsigned h = 7;
    for (const char *p = name; *p; p++) h = h * 31 + (unsigned char)*p;
    return (int)(h % 24);
}

static void write_file(const char *dir, const char *name, const void *data, size_t len) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ASSERT(f);
    ASSERT_EQ(fwrite(data, 1, len, f), len);
    ASSERT_EQ(fclose(f), 0);
}

static void write_text(const char *dir, const char *name, const char *text) {
    write_file(dir, name, text, strlen(text));
}

/* Writes the listed tensors as a safetensors file, data packed in list order (so an odd
 * number of 2-byte elements before an f32 tensor leaves it unaligned, as a file may). */
static void write_st(const char *dir, const char *file, const tlist *l) {
    size_t cap = 16384, hl = 0, off = 0;
    char *h = malloc(cap);
    hl += (size_t)snprintf(h + hl, cap - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < l->n; i++) {
        const tspec *t = &l->t[i];
        size_t nb = (size_t)numel(t) * dtype_bytes(t->dtype);
        if (t->ndim == 2)
            hl += (size_t)snprintf(h + hl, cap - hl,
                                   ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],"
                                   "\"data_offsets\":[%zu,%zu]}",
                                   t->name, t->dtype, (long long)t->shape[0],
                                   (long long)t->shape[1], off, off + nb);
        else
            hl += (size_t)snprintf(h + hl, cap - hl,
                                   ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],"
                                   "\"data_offsets\":[%zu,%zu]}",
                                   t->name, t->dtype, (long long)t->shape[0], off, off + nb);
        off += nb;
        ASSERT(hl < cap - 256);
    }
    hl += (size_t)snprintf(h + hl, cap - hl, "}");
    while (hl % 8) h[hl++] = ' '; /* pad like the reference writer: the data area is 8-aligned */
    size_t len = 8 + hl + off;
    uint8_t *b = calloc(1, len);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, h, hl);
    uint8_t *p = b + 8 + hl;
    for (int i = 0; i < l->n; i++) {
        const tspec *t = &l->t[i];
        int k = tid(t->name);
        for (int64_t j = 0; j < numel(t); j++) {
            float v = tval(k, j);
            if (!strcmp(t->dtype, "F32")) { memcpy(p, &v, 4); p += 4; }
            else if (!strcmp(t->dtype, "BF16")) { uint16_t u = f32_to_bf16(v); memcpy(p, &u, 2); p += 2; }
            else if (!strcmp(t->dtype, "F16")) { uint16_t u = f32_to_f16(v); memcpy(p, &u, 2); p += 2; }
            else if (!strcmp(t->dtype, "F64")) { double d = v; memcpy(p, &d, 8); p += 8; }
            else { int32_t x = (int32_t)j; memcpy(p, &x, 4); p += 4; }
        }
    }
    write_file(dir, file, b, len);
    free(b);
    free(h);
}

static char *make_dir(void) {
    char *d = strdup("/tmp/peftd_model_XXXXXX");
    ASSERT(mkdtemp(d));
    return d;
}

/* Tests run in their own processes; the directory is removed on success paths. */
static void rm_dir(char *dir) {
    DIR *d = opendir(dir);
    ASSERT(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
    free(dir);
}

/* A tiny model directory: config + single safetensors file of `l`. */
static char *tiny_dir(const char *config, const tlist *l) {
    char *d = make_dir();
    write_text(d, "config.json", config);
    write_st(d, "model.safetensors", l);
    return d;
}

static float kval(const kmat *m, int64_t j) {
    uint16_t u;
    float f;
    switch (m->dtype) {
    case KDT_F32: memcpy(&f, (const uint8_t *)m->data + 4 * j, 4); return f;
    case KDT_BF16: memcpy(&u, (const uint8_t *)m->data + 2 * j, 2); return bf16_to_f32(u);
    case KDT_F16: memcpy(&u, (const uint8_t *)m->data + 2 * j, 2); return f16_to_f32(u);
    default: break; /* quantized dtypes: not loaded by this test (test_quant_model.c) */
    }
    return NAN;
}

/* Every element of m equals what write_st wrote for `name`. */
static void check_values(const kmat *m, const char *name) {
    int k = tid(name);
    for (int64_t j = 0; j < m->rows * m->cols; j++)
        if (kval(m, j) != tval(k, j)) FAIL("%s[%lld] = %g, want %g", name, (long long)j, kval(m, j), tval(k, j));
}

static void check_tiny_shapes(const model *m) {
    ASSERT_EQ(m->cfg.vocab_size, TV);
    ASSERT_EQ(m->cfg.head_dim, THD);
    ASSERT_EQ(m->embed.rows, TV);
    ASSERT_EQ(m->embed.cols, TD);
    ASSERT_EQ(m->final_norm.rows, 1);
    ASSERT_EQ(m->final_norm.cols, TD);
    ASSERT_EQ(m->lm_head.rows, TV);
    for (int i = 0; i < TL; i++) {
        const model_layer *l = &m->layers[i];
        ASSERT_EQ(l->attn_norm.rows, 1);
        ASSERT_EQ(l->attn_norm.cols, TD);
        ASSERT_EQ(l->wq.rows, TH * THD);
        ASSERT_EQ(l->wk.rows, TKV * THD);
        ASSERT_EQ(l->wv.rows, TKV * THD);
        ASSERT_EQ(l->wv.cols, TD);
        ASSERT_EQ(l->wo.rows, TD);
        ASSERT_EQ(l->wo.cols, TH * THD);
        ASSERT_EQ(l->w_gate.rows, TFF);
        ASSERT_EQ(l->w_up.cols, TD);
        ASSERT_EQ(l->w_down.rows, TD);
        ASSERT_EQ(l->w_down.cols, TFF);
        ASSERT_EQ(l->ffn_norm.cols, TD);
    }
}

static void check_tiny_values(const model *m) {
    check_values(&m->embed, "model.embed_tokens.weight");
    check_values(&m->final_norm, "model.norm.weight");
    check_values(&m->layers[1].wk, "model.layers.1.self_attn.k_proj.weight");
    check_values(&m->layers[0].w_down, "model.layers.0.mlp.down_proj.weight");
    check_values(&m->layers[1].ffn_norm, "model.layers.1.post_attention_layernorm.weight");
}

static size_t tl_bytes(const tlist *l, const char *skip) {
    size_t b = 0;
    for (int i = 0; i < l->n; i++)
        if (!skip || strcmp(l->t[i].name, skip) != 0)
            b += (size_t)numel(&l->t[i]) * dtype_bytes(l->t[i].dtype);
    return b;
}

/* Loads dir and expects failure `want` with every needle in the message. */
static void expect_load_fail(const char *dir, int want, const char *needle1, const char *needle2) {
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    model *m = (model *)1;
    char err[1024] = "";
    int rc = model_load(dir, kb, &m, err, sizeof err);
    if (rc != want) FAIL("rc %d (%s), want %d (%s); err: %s", rc, peftd_strerror(rc), want, peftd_strerror(want), err);
    ASSERT(m == NULL);
    if (needle1 && !strstr(err, needle1)) FAIL("error \"%s\" lacks \"%s\"", err, needle1);
    if (needle2 && !strstr(err, needle2)) FAIL("error \"%s\" lacks \"%s\"", err, needle2);
    kbackend_destroy(kb);
}

static model *load_ok(const char *dir, kbackend *kb) {
    model *m = NULL;
    char err[1024] = "";
    int rc = model_load(dir, kb, &m, err, sizeof err);
    if (rc) FAIL("model_load(%s): %d %s", dir, rc, err);
    ASSERT(m);
    return m;
}

/* ---- stories260K --------------------------------------------------------------------- */

TEST(stories260K_loads) {
    struct stat sb;
    if (stat(STORIES "/model.safetensors", &sb) != 0) FAIL("the committed model " STORIES " is missing");
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    model *m = load_ok(STORIES "/", kb);
    const model_config *c = &m->cfg;
    ASSERT_STREQ(m->name, "stories260K");
    ASSERT_STREQ(c->architecture, "LlamaForCausalLM");
    ASSERT_STREQ(c->model_type, "llama");
    ASSERT_EQ(c->hidden_size, 64);
    ASSERT_EQ(c->n_layers, 5);
    ASSERT_EQ(c->n_heads, 8);
    ASSERT_EQ(c->n_kv_heads, 4);
    ASSERT_EQ(c->head_dim, 8);
    ASSERT_EQ(c->vocab_size, 512);
    ASSERT_EQ(c->intermediate_size, 172);
    ASSERT_EQ(c->max_position_embeddings, 512);
    ASSERT_NEAR(c->rms_norm_eps, 1e-5, 1e-12);
    ASSERT_NEAR(c->rope_theta, 10000.0, 0);
    ASSERT(c->tie_word_embeddings);
    ASSERT_EQ(c->bos_token_id, 1);
    ASSERT_EQ(c->eos_token_id, 2);
    ASSERT_STREQ(c->torch_dtype, "float32");
    ASSERT_EQ(c->sliding_window, 0);

    ASSERT_EQ(m->embed.dtype, KDT_F32);
    ASSERT_EQ(m->embed.rows, 512);
    ASSERT_EQ(m->embed.cols, 64);
    ASSERT(m->lm_head.data == m->embed.data);
    ASSERT_EQ(m->final_norm.cols, 64);
    for (int i = 0; i < 5; i++) {
        const model_layer *l = &m->layers[i];
        ASSERT_EQ(l->wq.rows, 64);
        ASSERT_EQ(l->wq.cols, 64);
        ASSERT_EQ(l->wk.rows, 32);
        ASSERT_EQ(l->wv.rows, 32);
        ASSERT_EQ(l->wo.rows, 64);
        ASSERT_EQ(l->w_gate.rows, 172);
        ASSERT_EQ(l->w_gate.cols, 64);
        ASSERT_EQ(l->w_up.rows, 172);
        ASSERT_EQ(l->w_down.rows, 64);
        ASSERT_EQ(l->w_down.cols, 172);
        ASSERT_EQ(l->attn_norm.rows, 1);
        ASSERT_EQ(l->ffn_norm.cols, 64);
    }
    /* Every tensor is f32: 512·64 + 5·(2·64 + 64·64·2 + 32·64·2 + 3·172·64) + 64 floats. */
    size_t floats = 512 * 64 + 5 * (2 * 64 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64) + 64;
    ASSERT_EQ(m->weight_bytes, floats * 4);
    /* The view is the file's bytes: compare one row with a plain read of the file. */
    size_t len;
    char *file = test_read_file(STORIES "/model.safetensors", &len);
    ASSERT(file);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | (uint8_t)file[i];
    ASSERT(len > 8 + hl + 4 * 64);
    ASSERT_EQ(memcmp((const uint8_t *)m->embed.data, file + 8 + hl, 4 * 64), 0);
    free(file);
    model_free(m);
    kbackend_destroy(kb);
}

/* ---- tiny models, good ----------------------------------------------------------------- */

TEST(tiny_f32_untied) {
    tlist l;
    tiny_tensors(&l, "F32", true);
    char *dir = tiny_dir(TINY_CONFIG, &l);
    kbackend *kb = kbackend_cpu_create(1);
    model *m = load_ok(dir, kb);
    check_tiny_shapes(m);
    check_tiny_values(m);
    check_values(&m->lm_head, "lm_head.weight");
    ASSERT(m->lm_head.data != m->embed.data);
    ASSERT_EQ(m->weight_bytes, tl_bytes(&l, NULL));
    ASSERT_STREQ(m->name, strrchr(dir, '/') + 1);
    ASSERT_STREQ(m->dir, dir);
    ASSERT(m->kb == kb);
    model_free(m);
    model_free(NULL);
    kbackend_destroy(kb);
    rm_dir(dir);
}

TEST(tiny_bf16_f16_mixed) {
    tlist l;
    tiny_tensors(&l, "BF16", true);
    /* Norms f32, one projection f16, and the odd 2-byte elements before them leave the f32
     * tensors unaligned in the file. */
    snprintf(tl_find(&l, "model.layers.0.input_layernorm.weight")->dtype, 8, "F32");
    snprintf(tl_find(&l, "model.norm.weight")->dtype, 8, "F32");
    snprintf(tl_find(&l, "model.layers.0.mlp.down_proj.weight")->dtype, 8, "F16");
    /* A leading ignored buffer of one bf16 element shifts every later tensor by 2 bytes. */
    tl_add(&l, "model.rotary_emb.inv_freq", "BF16", 0, 1);
    tspec odd = l.t[l.n - 1];
    memmove(&l.t[1], &l.t[0], (size_t)(l.n - 1) * sizeof l.t[0]);
    l.t[0] = odd;
    char *dir = tiny_dir(TINY_CONFIG, &l);
    kbackend *kb = kbackend_cpu_create(1);
    model *m = load_ok(dir, kb);
    check_tiny_shapes(m);
    check_tiny_values(m);
    ASSERT_EQ(m->embed.dtype, KDT_BF16);
    ASSERT_EQ(m->lm_head.dtype, KDT_BF16);
    ASSERT_EQ(m->layers[0].attn_norm.dtype, KDT_F32);
    ASSERT_EQ(m->layers[1].attn_norm.dtype, KDT_BF16);
    ASSERT_EQ(m->layers[0].w_down.dtype, KDT_F16);
    ASSERT_EQ(m->layers[1].w_down.dtype, KDT_BF16);
    ASSERT_EQ(m->final_norm.dtype, KDT_F32);
    ASSERT_EQ((uintptr_t)m->final_norm.data % 4, 2); /* zero-copy keeps the file's alignment */
    ASSERT_EQ(m->weight_bytes, tl_bytes(&l, "model.rotary_emb.inv_freq"));
    model_free(m);
    kbackend_destroy(kb);
    rm_dir(dir);
}

TEST(tiny_tied_lm_head_present_uses_embed) {
    tlist l;
    tiny_tensors(&l, "F32", true);
    char *dir = tiny_dir(TINY_CONFIG_TIED, &l);
    kbackend *kb = kbackend_cpu_create(1);
    model *m = load_ok(dir, kb);
    ASSERT(m->cfg.tie_word_embeddings);
    ASSERT(m->lm_head.data == m->embed.data);
    ASSERT_EQ(m->lm_head.rows, TV);
    ASSERT_EQ(m->weight_bytes, tl_bytes(&l, "lm_head.weight"));
    ASSERT_EQ(m->cfg.bos_token_id, -1);
    ASSERT_EQ(m->cfg.max_position_embeddings, 2048); /* LlamaConfig's default */
    model_free(m);
    kbackend_destroy(kb);
    rm_dir(dir);
}

TEST(tiny_tied_without_lm_head) {
    tlist l;
    tiny_tensors(&l, "F16", false);
    char *dir = tiny_dir(TINY_CONFIG_TIED, &l);
    kbackend *kb = kbackend_cpu_create(1);
    model *m = load_ok(dir, kb);
    check_tiny_values(m);
    ASSERT(m->lm_head.data == m->embed.data);
    ASSERT_EQ(m->weight_bytes, tl_bytes(&l, NULL));
    model_free(m);
    kbackend_destroy(kb);
    rm_dir(dir);
}

TEST(extra_buffers_ignored) {
    tlist l;
    tiny_tensors(&l, "F32", true);
    tl_add(&l, "model.layers.0.self_attn.rotary_emb.inv_freq", "F32", 0, THD / 2);
    tl_add(&l, "model.layers.1.self_attn.rotary_emb.inv_freq", "F32", 0, THD / 2);
    char *dir = tiny_dir(TINY_CONFIG, &l);
    kbackend *kb = kbackend_cpu_create(1);
    model *m = load_ok(dir, kb);
    ASSERT_EQ(m->weight_bytes, tl_bytes(&l, NULL) - 2 * (THD / 2) * 4);
    model_free(m);
    kbackend_destroy(kb);
    rm_dir(dir);
}

TEST(trailing_slashes_in_dir) {
    tlist l;
    tiny_tensors(&l, "F32", true);
    char *dir = tiny_dir(TINY_CONFIG, &l), with[512];
    snprintf(with, sizeof with, "%s///", dir);
    kbackend *kb = kbackend_cpu_create(1);
    model *m = load_ok(with, kb);
    ASSERT_STREQ(m->name, strrchr(dir, '/') + 1);
    model_free(m);
    /* "." resolves to the real directory name. */
    char cwd[512];
    ASSERT(getcwd(cwd, sizeof cwd));
    ASSERT_EQ(chdir(dir), 0);
    m = load_ok(".", kb);
    ASSERT_STREQ(m->name, strrchr(dir, '/') + 1);
    model_free(m);
    ASSERT_EQ(chdir(cwd), 0);
    kbackend_destroy(kb);
    rm_dir(dir);
}

/* Layer 0 and the embeddings in shard 1, the rest in shard 2. */
static void split_shards(const tlist *all, tlist *a, tlist *b) {
    a->n = b->n = 0;
    for (int i = 0; i < all->n; i++) {
        const char *n = all->t[i].name;
        tlist *dst = strstr(n, "layers.0.") || strstr(n, "embed") ? a : b;
        dst->t[dst->n++] = all->t[i];
    }
}

/* An index mapping every tensor of a to fa and of b to fb; extra is appended verbatim. */
static void write_index(const char *dir, const tlist *a, const char *fa, const tlist *b,
                        const char *fb, const char *extra) {
    char *j = malloc(16384);
    size_t n = (size_t)snprintf(j, 16384, "{\"metadata\":{\"total_size\":0},\"weight_map\":{");
    bool first = true;
    for (int s = 0; s < 2; s++) {
        const tlist *l = s ? b : a;
        for (int i = 0; i < l->n; i++) {
            n += (size_t)snprintf(j + n, 16384 - n, "%s\"%s\":\"%s\"", first ? "" : ",",
                                  l->t[i].name, s ? fb : fa);
            first = false;
        }
    }
    snprintf(j + n, 16384 - n, "%s}}", extra ? extra : "");
    write_text(dir, "model.safetensors.index.json", j);
    free(j);
}

TEST(two_shards_with_index) {
    tlist all, a, b;
    tiny_tensors(&all, "BF16", true);
    split_shards(&all, &a, &b);
    char *dir = make_dir();
    write_text(dir, "config.json", TINY_CONFIG);
    write_st(dir, "model-00001-of-00002.safetensors", &a);
    write_st(dir, "model-00002-of-00002.safetensors", &b);
    write_index(dir, &a, "model-00001-of-00002.safetensors", &b,
                "model-00002-of-00002.safetensors", NULL);
    kbackend *kb = kbackend_cpu_create(1);
    model *m = load_ok(dir, kb);
    check_tiny_shapes(m);
    check_tiny_values(m);
    check_values(&m->lm_head, "lm_head.weight");
    check_values(&m->layers[0].wq, "model.layers.0.self_attn.q_proj.weight");
    check_values(&m->layers[1].wq, "model.layers.1.self_attn.q_proj.weight");
    ASSERT_EQ(m->weight_bytes, tl_bytes(&all, NULL));
    model_free(m);
    kbackend_destroy(kb);
    rm_dir(dir);
}

TEST(index_takes_precedence_over_single_file) {
    /* A stale model.safetensors next to an index is not read: the index wins, as in
     * transformers. The stale file here is garbage, so reading it would fail. */
    tlist all, a, b;
    tiny_tensors(&all, "F32", true);
    split_shards(&all, &a, &b);
    char *dir = make_dir();
    write_text(dir, "config.json", TINY_CONFIG);
    write_text(dir, "model.safetensors", "garbage!garbage!");
    write_st(dir, "a.safetensors", &a);
    write_st(dir, "b.safetensors", &b);
    write_index(dir, &a, "a.safetensors", &b, "b.safetensors", NULL);
    kbackend *kb = kbackend_cpu_create(1);
    model *m = load_ok(dir, kb);
    model_free(m);
    kbackend_destroy(kb);
    rm_dir(dir);
}

/* ---- tiny models, broken weights ----------------------------------------------------- */

TEST(missing_tensor_named) {
    tlist l;
    tiny_tensors(&l, "F32", true);
    tl_remove(&l, "model.layers.1.mlp.up_proj.weight");
    char *dir = tiny_dir(TINY_CONFIG, &l);
    expect_load_fail(dir, PEFTD_ENOTFOUND, "model.layers.1.mlp.up_proj.weight", "model.safetensors");
    rm_dir(dir);
}

TEST(missing_lm_head_untied) {
    tlist l;
    tiny_tensors(&l, "F32", false);
    char *dir = tiny_dir(TINY_CONFIG, &l);
    expect_load_fail(dir, PEFTD_ENOTFOUND, "lm_head.weight", NULL);
    rm_dir(dir);
}

TEST(wrong_shape_named) {
    tlist l;
    tiny_tensors(&l, "F32", true);
    tspec *t = tl_find(&l, "model.layers.1.self_attn.k_proj.weight");
    t->shape[0] = TD; /* a model without GQA: [8, 8] instead of [4, 8] */
    char *dir = tiny_dir(TINY_CONFIG, &l);
    expect_load_fail(dir, PEFTD_EFORMAT, "model.layers.1.self_attn.k_proj.weight", "[8, 8]");
    rm_dir(dir);

    /* Transposed down_proj. */
    tiny_tensors(&l, "F32", true);
    t = tl_find(&l, "model.layers.0.mlp.down_proj.weight");
    t->shape[0] = TFF;
    t->shape[1] = TD;
    dir = tiny_dir(TINY_CONFIG, &l);
    expect_load_fail(dir, PEFTD_EFORMAT, "model.layers.0.mlp.down_proj.weight", "[8, 12]");
    rm_dir(dir);

    /* A norm written 2-D. */
    tiny_tensors(&l, "F32", true);
    t = tl_find(&l, "model.norm.weight");
    t->ndim = 2;
    t->shape[0] = 1;
    t->shape[1] = TD;
    dir = tiny_dir(TINY_CONFIG, &l);
    expect_load_fail(dir, PEFTD_EFORMAT, "model.norm.weight", "[1, 8]");
    rm_dir(dir);

    /* Embeddings for a different vocabulary. */
    tiny_tensors(&l, "F32", true);
    tl_find(&l, "model.embed_tokens.weight")->shape[0] = TV + 1;
    dir = tiny_dir(TINY_CONFIG, &l);
    expect_load_fail(dir, PEFTD_EFORMAT, "model.embed_tokens.weight", "[17, 8]");
    rm_dir(dir);
}

TEST(wrong_dtype_named) {
    tlist l;
    tiny_tensors(&l, "F32", true);
    snprintf(tl_find(&l, "model.layers.0.self_attn.v_proj.weight")->dtype, 8, "F64");
    char *dir = tiny_dir(TINY_CONFIG, &l);
    expect_load_fail(dir, PEFTD_EUNSUPPORTED, "model.layers.0.self_attn.v_proj.weight", "F64");
    rm_dir(dir);

    tiny_tensors(&l, "F32", true);
    snprintf(tl_find(&l, "model.layers.1.input_layernorm.weight")->dtype, 8, "I32");
    dir = tiny_dir(TINY_CONFIG, &l);
    expect_load_fail(dir, PEFTD_EUNSUPPORTED, "model.layers.1.input_layernorm.weight", "I32");
    rm_dir(dir);
}

TEST(bias_rejected_by_name) {
    tlist l;
    tiny_tensors(&l, "F32", true);
    tl_add(&l, "model.layers.1.self_attn.q_proj.bias", "F32", 0, TH * THD);
    char *dir = tiny_dir(TINY_CONFIG, &l);
    expect_load_fail(dir, PEFTD_EUNSUPPORTED, "model.layers.1.self_attn.q_proj.bias", "bias");
    rm_dir(dir);
}

TEST(no_weights_file) {
    char *dir = make_dir();
    write_text(dir, "config.json", TINY_CONFIG);
    expect_load_fail(dir, PEFTD_ENOTFOUND, "model.safetensors", dir);
    /* A pickle checkpoint is never read. */
    write_text(dir, "pytorch_model.bin", "PK");
    expect_load_fail(dir, PEFTD_ENOTFOUND, "model.safetensors", NULL);
    rm_dir(dir);
}

TEST(no_config) {
    tlist l;
    tiny_tensors(&l, "F32", true);
    char *dir = make_dir();
    write_st(dir, "model.safetensors", &l);
    expect_load_fail(dir, PEFTD_ENOTFOUND, "config.json", dir);
    rm_dir(dir);
    expect_load_fail("/nonexistent/peftd-model", PEFTD_ENOTFOUND, "/nonexistent/peftd-model", NULL);
}

TEST(hostile_weights_file) {
    char *dir = make_dir();
    write_text(dir, "config.json", TINY_CONFIG);
    /* Header length far beyond the file. */
    write_text(dir, "model.safetensors", "\xff\xff\xff\x7f\x00\x00\x00\x00{}");
    expect_load_fail(dir, PEFTD_EFORMAT, "model.safetensors", "header length");
    write_text(dir, "model.safetensors", "");
    expect_load_fail(dir, PEFTD_EFORMAT, "model.safetensors", NULL);
    rm_dir(dir);
}

TEST(broken_config_through_load) {
    tlist l;
    tiny_tensors(&l, "F32", true);
    char *dir = tiny_dir("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":16}", &l);
    expect_load_fail(dir, PEFTD_EFORMAT, "hidden_size", dir);
    rm_dir(dir);
    dir = tiny_dir("{\"architectures\":", &l);
    expect_load_fail(dir, PEFTD_EFORMAT, "config.json", "JSON");
    rm_dir(dir);
    /* config.json larger than the 1 MB bound. */
    size_t big = (1u << 20) + 16;
    char *text = malloc(big + 1);
    memset(text, ' ', big);
    memcpy(text, "{}", 2);
    text[big] = 0;
    dir = tiny_dir(text, &l);
    expect_load_fail(dir, PEFTD_EFORMAT, "config.json", "bytes");
    rm_dir(dir);
    free(text);
}

/* ---- shards, broken ------------------------------------------------------------------- */

static char *sharded_dir(const char *fa_in_index, const char *extra) {
    tlist all, a, b;
    tiny_tensors(&all, "F32", true);
    split_shards(&all, &a, &b);
    char *dir = make_dir();
    write_text(dir, "config.json", TINY_CONFIG);
    write_st(dir, "a.safetensors", &a);
    write_st(dir, "b.safetensors", &b);
    write_index(dir, &a, fa_in_index, &b, "b.safetensors", extra);
    return dir;
}

TEST(shard_path_escaping_rejected) {
    static const char *bad[] = {"../a.safetensors", "/etc/passwd", "sub/a.safetensors", "..", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *dir = sharded_dir(bad[i], NULL);
        char quoted[64];
        snprintf(quoted, sizeof quoted, "\"%s\"", bad[i]);
        expect_load_fail(dir, PEFTD_EFORMAT, quoted, "not a plain file name");
        rm_dir(dir);
    }
}

TEST(shard_missing_file) {
    char *dir = sharded_dir("gone.safetensors", NULL);
    expect_load_fail(dir, PEFTD_ENOTFOUND, "gone.safetensors", NULL);
    rm_dir(dir);
}

TEST(index_disagrees_with_shards) {
    /* The index says a tensor of shard b lives in a. */
    char *dir = sharded_dir("a.safetensors", ",\"model.norm.weight\":\"a.safetensors\"");
    expect_load_fail(dir, PEFTD_EFORMAT, "model.norm.weight", "a.safetensors");
    rm_dir(dir);
    /* A tensor in a shard but absent from the index is missing for the loader. */
    tlist all, a, b;
    tiny_tensors(&all, "F32", true);
    split_shards(&all, &a, &b);
    dir = make_dir();
    write_text(dir, "config.json", TINY_CONFIG);
    write_st(dir, "a.safetensors", &a);
    write_st(dir, "b.safetensors", &b);
    tlist b2 = b;
    tl_remove(&b2, "model.layers.1.mlp.gate_proj.weight");
    write_index(dir, &a, "a.safetensors", &b2, "b.safetensors", NULL);
    expect_load_fail(dir, PEFTD_ENOTFOUND, "model.layers.1.mlp.gate_proj.weight", "weight_map");
    rm_dir(dir);
}

TEST(index_malformed) {
    char *dir = sharded_dir("a.safetensors", NULL);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":[]}");
    expect_load_fail(dir, PEFTD_EFORMAT, "weight_map", NULL);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{}}");
    expect_load_fail(dir, PEFTD_EFORMAT, "empty", NULL);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"x\":3}}");
    expect_load_fail(dir, PEFTD_EFORMAT, "'x'", NULL);
    write_text(dir, "model.safetensors.index.json", "not json");
    expect_load_fail(dir, PEFTD_EFORMAT, "model.safetensors.index.json", "JSON");
    rm_dir(dir);
}

/* ---- non-CPU backends: a fake backend over malloc ------------------------------------ */

static int fake_allocs, fake_frees, fake_uploads, fake_fail_alloc;
static size_t fake_bytes;
static uint8_t *fake_base;

static void fake_destroy(kbackend *kb) { free(kb); }
static void *fake_alloc(kbackend *kb, size_t n) {
    if (fake_fail_alloc) return NULL;
    fake_allocs++;
    fake_bytes = n;
    return fake_base = malloc(n);
}
static void fake_free(kbackend *kb, void *p) {
    fake_frees++;
    free(p);
}
static int fake_upload(kbackend *kb, void *dst, const void *src, size_t n) {
    ASSERT((uint8_t *)dst >= fake_base && (uint8_t *)dst + n <= fake_base + fake_bytes);
    ASSERT((((uint8_t *)dst - fake_base) & 255) == 0); /* weights start 256-byte aligned */
    fake_uploads++;
    memcpy(dst, src, n);
    return 0;
}
static int fake_sync(kbackend *kb) { return 0; }
static bool fake_supports(const kbackend *kb, kop op, kdtype dt) { return true; }

static const kbackend_ops fake_ops = {
    .name = "fake",
    .destroy = fake_destroy,
    .alloc = fake_alloc,
    .free = fake_free,
    .upload = fake_upload,
    .synchronize = fake_sync,
    .supports_op = fake_supports, /* is_host false: the model is copied */
};

TEST(device_backend_gets_a_copy) {
    tlist l;
    tiny_tensors(&l, "BF16", true);
    snprintf(tl_find(&l, "model.norm.weight")->dtype, 8, "F32");
    char *dir = tiny_dir(TINY_CONFIG, &l);
    kbackend *kb = calloc(1, sizeof *kb);
    kbackend__init(kb, &fake_ops, NULL);
    model *m = load_ok(dir, kb);
    ASSERT_EQ(fake_allocs, 1);
    ASSERT_EQ(fake_uploads, 3 + 9 * TL);
    ASSERT(fake_bytes >= m->weight_bytes);
    /* Every view is inside the device allocation, with the file's values. */
    const uint8_t *lo = fake_base, *hi = fake_base + fake_bytes;
    ASSERT((const uint8_t *)m->embed.data >= lo && (const uint8_t *)m->embed.data < hi);
    ASSERT((const uint8_t *)m->layers[1].w_down.data >= lo && (const uint8_t *)m->layers[1].w_down.data < hi);
    check_tiny_shapes(m);
    check_tiny_values(m);
    check_values(&m->lm_head, "lm_head.weight");
    ASSERT(m->lm_head.data != m->embed.data);
    /* The mappings are gone: the files can be removed while the model lives. */
    rm_dir(dir);
    check_tiny_values(m);
    model_free(m);
    ASSERT_EQ(fake_frees, 1);

    /* Tied: lm_head follows embed into device memory. */
    dir = tiny_dir(TINY_CONFIG_TIED, &l);
    m = load_ok(dir, kb);
    ASSERT(m->lm_head.data == m->embed.data);
    ASSERT((const uint8_t *)m->lm_head.data >= fake_base);
    model_free(m);

    fake_fail_alloc = 1;
    char err[512];
    ASSERT_EQ(model_load(dir, kb, &m, err, sizeof err), PEFTD_ENOMEM);
    ASSERT(strstr(err, "fake"));
    rm_dir(dir);
    kbackend_destroy(kb);
}

/* ---- model_config_parse ----------------------------------------------------------------- */

static int parse(const char *json, model_config *c, char *err, size_t errlen) {
    err[0] = 0;
    return model_config_parse(json, strlen(json), c, err, errlen);
}

/* The tiny config with field `key` set to the JSON text `value`, or removed (NULL). */
static char *with_field(const char *key, const char *value) {
    static const char *base[][2] = {
        {"architectures", "[\"LlamaForCausalLM\"]"}, {"vocab_size", "16"},
        {"hidden_size", "8"}, {"intermediate_size", "12"}, {"num_hidden_layers", "2"},
        {"num_attention_heads", "2"}, {"num_key_value_heads", "1"},
    };
    static char buf[4096];
    size_t n = (size_t)snprintf(buf, sizeof buf, "{");
    bool found = false;
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++) {
        const char *v = base[i][1];
        if (strcmp(base[i][0], key) == 0) {
            found = true;
            if (!value) continue;
            v = value;
        }
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s\"%s\":%s", n > 1 ? "," : "",
                              base[i][0], v);
    }
    if (!found) n += (size_t)snprintf(buf + n, sizeof buf - n, ",\"%s\":%s", key, value);
    snprintf(buf + n, sizeof buf - n, "}");
    return buf;
}

static void expect_config_fail(const char *json, int want, const char *needle) {
    model_config c;
    char err[512];
    int rc = parse(json, &c, err, sizeof err);
    if (rc != want) FAIL("%s: rc %d (%s), want %d; err: %s", json, rc, peftd_strerror(rc), want, err);
    if (needle && !strstr(err, needle)) FAIL("%s: error \"%s\" lacks \"%s\"", json, err, needle);
    ASSERT_EQ(c.vocab_size, 0); /* cleared on failure */
}

TEST(config_defaults) {
    model_config c;
    char err[512];
    ASSERT_EQ(parse(with_field("num_key_value_heads", NULL), &c, err, sizeof err), 0);
    ASSERT_STREQ(c.architecture, "LlamaForCausalLM");
    ASSERT_STREQ(c.model_type, "");
    ASSERT_EQ(c.n_kv_heads, 2);
    ASSERT_EQ(c.head_dim, 4);
    ASSERT_NEAR(c.rope_theta, 10000.0, 0);
    ASSERT_NEAR(c.rms_norm_eps, 1e-6, 1e-13);
    ASSERT(!c.tie_word_embeddings);
    ASSERT_EQ(c.bos_token_id, -1);
    ASSERT_EQ(c.eos_token_id, -1);
    ASSERT_STREQ(c.torch_dtype, "");
    ASSERT_EQ(c.max_position_embeddings, 2048);
    ASSERT_EQ(c.sliding_window, 0);
    /* Nulls count as absent. */
    ASSERT_EQ(parse(with_field("head_dim", "null"), &c, err, sizeof err), 0);
    ASSERT_EQ(c.head_dim, 4);
    ASSERT_EQ(parse(with_field("num_key_value_heads", "null"), &c, err, sizeof err), 0);
    ASSERT_EQ(c.n_kv_heads, 2);
    ASSERT_EQ(parse(with_field("rope_scaling", "null"), &c, err, sizeof err), 0);
    ASSERT_EQ(parse(with_field("rope_scaling", "{\"rope_type\":\"default\"}"), &c, err, sizeof err), 0);
}

TEST(config_explicit_values) {
    model_config c;
    char err[512];
    const char *j =
        "{\"architectures\":[\"MistralForCausalLM\"],\"model_type\":\"mistral\","
        "\"vocab_size\":32000,\"hidden_size\":5120,\"intermediate_size\":14336,"
        "\"num_hidden_layers\":40,\"num_attention_heads\":32,\"num_key_value_heads\":8,"
        "\"head_dim\":128,\"max_position_embeddings\":1024000,\"rms_norm_eps\":1e-05,"
        "\"rope_theta\":1000000.0,\"tie_word_embeddings\":false,\"hidden_act\":\"silu\","
        "\"bos_token_id\":1,\"eos_token_id\":[2,7],\"dtype\":\"bfloat16\","
        "\"sliding_window\":4096,\"rope_scaling\":null,\"attention_bias\":false}";
    ASSERT_EQ(parse(j, &c, err, sizeof err), 0);
    ASSERT_STREQ(c.architecture, "MistralForCausalLM");
    ASSERT_STREQ(c.model_type, "mistral");
    ASSERT_EQ(c.vocab_size, 32000);
    ASSERT_EQ(c.hidden_size, 5120);
    ASSERT_EQ(c.head_dim, 128); /* not 5120 / 32 */
    ASSERT_EQ(c.n_kv_heads, 8);
    ASSERT_EQ(c.max_position_embeddings, 1024000);
    ASSERT_NEAR(c.rope_theta, 1e6, 0);
    ASSERT_NEAR(c.rms_norm_eps, 1e-5, 1e-12);
    ASSERT_EQ(c.bos_token_id, 1);
    ASSERT_EQ(c.eos_token_id, 2);
    ASSERT_STREQ(c.torch_dtype, "bfloat16");
    ASSERT_EQ(c.sliding_window, 4096);

    /* Qwen2 applies its sliding window only with use_sliding_window. */
    const char *q = "{\"architectures\":[\"Qwen2ForCausalLM\"],\"vocab_size\":16,\"hidden_size\":8,"
                    "\"intermediate_size\":12,\"num_hidden_layers\":2,\"num_attention_heads\":2,"
                    "\"sliding_window\":32,\"max_position_embeddings\":64,\"eos_token_id\":[],"
                    "\"hidden_act\":\"swish\",\"torch_dtype\":\"float16\",\"dtype\":\"bfloat16\"}";
    ASSERT_EQ(parse(q, &c, err, sizeof err), 0);
    ASSERT_EQ(c.sliding_window, 0);
    ASSERT_EQ(c.eos_token_id, -1);
    ASSERT_STREQ(c.torch_dtype, "float16");
    ASSERT_EQ(parse(with_field("max_position_embeddings", "64,\"sliding_window\":64"), &c, err, sizeof err), 0);
    ASSERT_EQ(c.sliding_window, 0); /* a window covering the whole context is no window */
    ASSERT_EQ(parse(with_field("tie_word_embeddings", "true"), &c, err, sizeof err), 0);
    ASSERT(c.tie_word_embeddings);
    /* Trailing whitespace and a NUL terminator counted in len are fine. */
    char buf[1024];
    snprintf(buf, sizeof buf, "%s \n", with_field("vocab_size", "16"));
    ASSERT_EQ(model_config_parse(buf, strlen(buf) + 1, &c, err, sizeof err), 0);
}

TEST(config_missing_fields) {
    static const char *req[] = {"architectures", "vocab_size", "hidden_size", "intermediate_size",
                                "num_hidden_layers", "num_attention_heads"};
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
        expect_config_fail(with_field(req[i], NULL), PEFTD_EFORMAT, req[i]);
        expect_config_fail(with_field(req[i], "null"), PEFTD_EFORMAT, req[i]);
    }
}

TEST(config_wrong_types) {
    expect_config_fail(with_field("hidden_size", "\"8\""), PEFTD_EFORMAT, "hidden_size");
    expect_config_fail(with_field("hidden_size", "8.5"), PEFTD_EFORMAT, "hidden_size");
    expect_config_fail(with_field("vocab_size", "[16]"), PEFTD_EFORMAT, "vocab_size");
    expect_config_fail(with_field("num_hidden_layers", "true"), PEFTD_EFORMAT, "num_hidden_layers");
    expect_config_fail(with_field("tie_word_embeddings", "1"), PEFTD_EFORMAT, "tie_word_embeddings");
    expect_config_fail(with_field("rms_norm_eps", "\"1e-5\""), PEFTD_EFORMAT, "rms_norm_eps");
    expect_config_fail(with_field("rope_theta", "{}"), PEFTD_EFORMAT, "rope_theta");
    expect_config_fail(with_field("architectures", "\"LlamaForCausalLM\""), PEFTD_EFORMAT, "architectures");
    expect_config_fail(with_field("architectures", "[]"), PEFTD_EFORMAT, "architectures");
    expect_config_fail(with_field("architectures", "[3]"), PEFTD_EFORMAT, "architectures");
    expect_config_fail(with_field("model_type", "7"), PEFTD_EFORMAT, "model_type");
    expect_config_fail(with_field("torch_dtype", "32"), PEFTD_EFORMAT, "torch_dtype");
    expect_config_fail(with_field("torch_dtype", "\"a-very-long-dtype-name\""), PEFTD_EFORMAT, "torch_dtype");
    expect_config_fail(with_field("bos_token_id", "\"1\""), PEFTD_EFORMAT, "bos_token_id");
    expect_config_fail(with_field("eos_token_id", "[2,\"x\"]"), PEFTD_EFORMAT, "eos_token_id");
    expect_config_fail(with_field("eos_token_id", "16"), PEFTD_EFORMAT, "eos_token_id");
    expect_config_fail(with_field("bos_token_id", "-1"), PEFTD_EFORMAT, "bos_token_id");
    expect_config_fail(with_field("rope_scaling", "\"linear\""), PEFTD_EFORMAT, "rope_scaling");
    expect_config_fail(with_field("use_sliding_window", "\"yes\""), PEFTD_EFORMAT, "use_sliding_window");
}

TEST(config_bounds) {
    expect_config_fail(with_field("hidden_size", "0"), PEFTD_ERANGE, "hidden_size");
    expect_config_fail(with_field("hidden_size", "-8"), PEFTD_ERANGE, "hidden_size");
    expect_config_fail(with_field("num_hidden_layers", "0"), PEFTD_ERANGE, "num_hidden_layers");
    expect_config_fail(with_field("vocab_size", "1000000000"), PEFTD_ERANGE, "vocab_size");
    expect_config_fail(with_field("vocab_size", "1e300"), PEFTD_ERANGE, "vocab_size");
    expect_config_fail(with_field("intermediate_size", "4294967296"), PEFTD_ERANGE, "intermediate_size");
    expect_config_fail(with_field("num_attention_heads", "100000"), PEFTD_ERANGE, "num_attention_heads");
    expect_config_fail(with_field("num_key_value_heads", "0"), PEFTD_ERANGE, "num_key_value_heads");
    expect_config_fail(with_field("max_position_embeddings", "0"), PEFTD_ERANGE, "max_position_embeddings");
    expect_config_fail(with_field("head_dim", "4096"), PEFTD_ERANGE, "head_dim");
    expect_config_fail(with_field("rms_norm_eps", "0"), PEFTD_ERANGE, "rms_norm_eps");
    expect_config_fail(with_field("rms_norm_eps", "-1e-5"), PEFTD_ERANGE, "rms_norm_eps");
    expect_config_fail(with_field("rope_theta", "0"), PEFTD_ERANGE, "rope_theta");
    expect_config_fail(with_field("rope_theta", "1e300"), PEFTD_ERANGE, "rope_theta");
}

TEST(config_heads_must_divide) {
    expect_config_fail(with_field("num_attention_heads", "3"), PEFTD_EFORMAT, "num_attention_heads");
    expect_config_fail(with_field("num_key_value_heads", "3"), PEFTD_EFORMAT, "num_key_value_heads");
    expect_config_fail(with_field("num_key_value_heads", "4"), PEFTD_EFORMAT, "num_key_value_heads");
    expect_config_fail(with_field("head_dim", "3"), PEFTD_EFORMAT, "head_dim");
    /* hidden 8 / 3 heads is fine when head_dim is explicit (heads need not tile hidden). */
    model_config c;
    char err[512];
    ASSERT_EQ(parse(with_field("num_attention_heads", "3,\"head_dim\":2"),
                    &c, err, sizeof err),
              0);
}

TEST(config_unsupported) {
    expect_config_fail(with_field("architectures", "[\"GPT2LMHeadModel\"]"), PEFTD_EUNSUPPORTED,
                       "GPT2LMHeadModel");
    /* Qwen3ForCausalLM is served since issue 11 (tests/unit/test_qwen3.c), Gemma2/Gemma3ForCausalLM
     * since tests/unit/test_gemma.c; Gemma 1 is not */
    expect_config_fail(with_field("architectures", "[\"GemmaForCausalLM\"]"), PEFTD_EUNSUPPORTED,
                       "GemmaForCausalLM");
    /* linear, llama3, yarn and dynamic are served (tests/unit/test_rope_variants.c,
     * test_rope_seqlen.c); longrope only on Phi3ForCausalLM */
    expect_config_fail(with_field("rope_scaling", "{\"type\":\"ntk\",\"factor\":2.0}"),
                       PEFTD_EUNSUPPORTED, "rope_scaling");
    expect_config_fail(with_field("rope_scaling", "{\"rope_type\":\"longrope\",\"factor\":8.0}"),
                       PEFTD_EUNSUPPORTED, "longrope");
    expect_config_fail(with_field("hidden_act", "\"gelu\""), PEFTD_EUNSUPPORTED, "gelu");
    /* attention_bias = true is served since issue 11 (tests/unit/test_qwen2.c) */
    expect_config_fail(with_field("mlp_bias", "true"), PEFTD_EUNSUPPORTED, "mlp_bias");
}

TEST(config_not_json) {
    expect_config_fail("", PEFTD_EFORMAT, "JSON");
    expect_config_fail("{", PEFTD_EFORMAT, "JSON");
    expect_config_fail("[1,2]", PEFTD_EFORMAT, "object");
    expect_config_fail("{} trailing", PEFTD_EFORMAT, "after");
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", with_field("hidden_size", "8,\"hidden_size\":16"));
    expect_config_fail(buf, PEFTD_EFORMAT, "duplicate field \"hidden_size\"");
}

TEST_MAIN(stories260K_loads, tiny_f32_untied, tiny_bf16_f16_mixed,
          tiny_tied_lm_head_present_uses_embed, tiny_tied_without_lm_head, extra_buffers_ignored,
          trailing_slashes_in_dir, two_shards_with_index, index_takes_precedence_over_single_file,
          missing_tensor_named, missing_lm_head_untied, wrong_shape_named, wrong_dtype_named,
          bias_rejected_by_name, no_weights_file, no_config, hostile_weights_file,
          broken_config_through_load, shard_path_escaping_rejected, shard_missing_file,
          index_disagrees_with_shards, index_malformed, device_backend_gets_a_copy,
          config_defaults, config_explicit_values, config_missing_fields, config_wrong_types,
          config_bounds, config_heads_must_divide, config_unsupported, config_not_json)
