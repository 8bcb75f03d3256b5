/* tests/unit/test_rope_variants.c — rope_scaling variants (linear, llama3, yarn with derived,
 * mscale-ratio and explicit attention factors) against transformers: the inv_freq table and
 * cos/sin factor of server/model/rope_freqs.c, and the logits of a 40-token prompt through
 * model_load + llama_forward (fixtures: tests/fixtures/make_rope_fixtures.py). Tolerance as
 * tests/unit/test_llama_forward.c (1e-4: summation order only); inv_freq within 1e-6
 * relative (transformers evaluates the formulas in f32, we in double rounded once). Also the
 * refusals: dynamic, longrope, partial_rotary_factor < 1, unknown types, missing fields. */
#include <cJSON.h>
#include <math.h>

#include "server/model/llama.h"
#include "server/model/model.h"
#include "server/model/rope_freqs.h"
#include "tests/harness/test.h"

#define TOL 1e-4
#define FREQ_RTOL 1e-6
#define N_IDS 40
#define MAX_ROWS 8

typedef struct {
    float inv_freq[64];
    int n_freq;
    double attn_scaling;
    int32_t ids[N_IDS];
    int rows[MAX_ROWS], n_rows;
    float *logits; /* [n_rows, vocab] */
} rope_ref;

static void ref_load(const char *dir, int vocab, rope_ref *r) {
    char path[512];
    size_t len;
    snprintf(path, sizeof path, "%s/reference.json", dir);
    char *text = test_read_file(path, &len);
    if (!text) FAIL("cannot read %s", path);
    cJSON *root = cJSON_ParseWithLength(text, len), *v, *row;
    ASSERT(root);
    memset(r, 0, sizeof *r);
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(root, "inv_freq")) {
        ASSERT(r->n_freq < 64);
        r->inv_freq[r->n_freq++] = (float)v->valuedouble;
    }
    r->attn_scaling = cJSON_GetObjectItem(root, "attention_scaling")->valuedouble;
    int n = 0;
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(root, "input_ids")) {
        ASSERT(n < N_IDS);
        r->ids[n++] = v->valueint;
    }
    ASSERT_EQ(n, N_IDS);
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(root, "rows")) {
        ASSERT(r->n_rows < MAX_ROWS);
        r->rows[r->n_rows++] = v->valueint;
    }
    r->logits = malloc(sizeof(float) * (size_t)r->n_rows * vocab);
    ASSERT(r->logits);
    int k = 0;
    cJSON_ArrayForEach(row, cJSON_GetObjectItem(root, "logits")) {
        int col = 0;
        cJSON_ArrayForEach(v, row) r->logits[(size_t)k * vocab + col++] = (float)v->valuedouble;
        ASSERT_EQ(col, vocab);
        k++;
    }
    ASSERT_EQ(k, r->n_rows);
    cJSON_Delete(root);
    free(text);
}

static void check_freqs(const model *m, const rope_ref *r, const char *name) {
    float f[64];
    double s;
    ASSERT_EQ(m->cfg.head_dim / 2, r->n_freq);
    rope_freqs(&m->cfg, f, &s);
    double worst = 0;
    for (int i = 0; i < r->n_freq; i++) {
        double d = fabs((double)f[i] - r->inv_freq[i]) / r->inv_freq[i];
        if (!(d <= worst)) worst = d;
    }
    printf("    %s: inv_freq max rel diff %.3g, attention scaling %.9g (ref %.9g)\n", name, worst, s,
           r->attn_scaling);
    if (!(worst <= FREQ_RTOL)) FAIL("%s: inv_freq rel diff %.3g", name, worst);
    if (!(fabs(s - r->attn_scaling) <= 1e-9 * r->attn_scaling)) FAIL("%s: attention scaling", name);
}

/* The 40-token prompt as one prefill (block size 4, logits for every row). */
static void check_variant(const char *name) {
    char dir[256], err[512] = "";
    snprintf(dir, sizeof dir, "tests/fixtures/rope/%s", name);
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    model *m = NULL;
    if (model_load(dir, kb, &m, err, sizeof err) < 0) FAIL("model_load(%s): %s", dir, err);
    int vocab = m->cfg.vocab_size, bs = 4;
    rope_ref r;
    ref_load(dir, vocab, &r);
    check_freqs(m, &r, name);
    llama_ctx_params p = {.max_tokens = 64, .max_seqs = 1, .block_size = bs, .n_blocks = 16, .max_blocks = 16};
    llama_ctx *c = NULL;
    if (llama_ctx_create(m, &p, &c, err, sizeof err) < 0) FAIL("llama_ctx_create: %s", err);
    int32_t pos[N_IDS], slots[N_IDS], rows[N_IDS], btab[16], qstart[2] = {0, N_IDS}, kvlen[1] = {N_IDS};
    for (int b = 0; b < 16; b++) btab[b] = 15 - b;
    for (int j = 0; j < N_IDS; j++) {
        pos[j] = j;
        slots[j] = btab[j / bs] * bs + j % bs;
        rows[j] = j;
    }
    llama_batch b = {.n_tokens = N_IDS, .tokens = r.ids, .positions = pos, .slots = slots, .n_seqs = 1,
                     .q_start = qstart, .kv_len = kvlen, .block_table = btab, .n_logits = N_IDS,
                     .logit_rows = rows};
    float *out = malloc(sizeof(float) * N_IDS * (size_t)vocab);
    ASSERT(out);
    ASSERT_EQ(llama_forward(c, &b, out), 0);
    double worst = 0;
    for (int k = 0; k < r.n_rows; k++)
        for (int i = 0; i < vocab; i++) {
            double d = fabs((double)out[(size_t)r.rows[k] * vocab + i] - r.logits[(size_t)k * vocab + i]);
            if (!(d <= worst)) worst = d;
        }
    printf("    %s: max |logit diff| = %.3g\n", name, worst);
    if (!(worst <= TOL)) FAIL("%s: max |logit diff| %.3g > %.1g", name, worst, TOL);
    free(out);
    free(r.logits);
    llama_ctx_free(c);
    model_free(m);
    kbackend_destroy(kb);
}

TEST(rope_linear) { check_variant("linear"); }
TEST(rope_linear_legacy_type_key) { check_variant("linear-legacy-type"); }
TEST(rope_llama3) { check_variant("llama3"); }
TEST(rope_yarn) { check_variant("yarn"); }
TEST(rope_yarn_mscale_ratio) { check_variant("yarn-mscale"); }
TEST(rope_yarn_explicit_attention_factor) { check_variant("yarn-attn-factor"); }

static int parse_with(const char *extra, model_config *c, char *err, size_t errlen) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":512,\"hidden_size\":64,"
             "\"intermediate_size\":32,\"num_hidden_layers\":1,\"num_attention_heads\":4,"
             "\"max_position_embeddings\":256%s}",
             extra);
    return model_config_parse(json, strlen(json), c, err, errlen);
}

TEST(rope_scaling_refusals) {
    static const struct {
        const char *extra, *msg;
        int st;
    } cases[] = {
        {",\"rope_scaling\":{\"rope_type\":\"dynamic\"}", "rope_scaling needs \"factor\"", PEFTD_EFORMAT},
        {",\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":[1,1,1,1,1,1,1,1],"
         "\"long_factor\":[1,1,1,1,1,1,1,1]}",
         "type \"longrope\" is only supported on Phi3ForCausalLM", PEFTD_EUNSUPPORTED},
        {",\"rope_scaling\":{\"type\":\"su\",\"factor\":2.0}", "(type \"su\") is not supported",
         PEFTD_EUNSUPPORTED},
        {",\"partial_rotary_factor\":0.5", "partial_rotary_factor 0.5 is not supported", PEFTD_EUNSUPPORTED},
        {",\"rope_scaling\":{\"rope_type\":\"linear\"}", "rope_scaling needs \"factor\"", PEFTD_EFORMAT},
        {",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,"
         "\"high_freq_factor\":4.0}",
         "needs \"original_max_position_embeddings\"", PEFTD_EFORMAT},
        {",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":-1}", "\"factor\" must be a number",
         PEFTD_ERANGE},
        {",\"rope_scaling\":[1]", "must be an object or null", PEFTD_EFORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        model_config c;
        char err[256] = "";
        int st = parse_with(cases[i].extra, &c, err, sizeof err);
        if (st != cases[i].st || !strstr(err, cases[i].msg))
            FAIL("case %zu: st %d err \"%s\" (want %d, \"%s\")", i, st, err, cases[i].st, cases[i].msg);
    }
    model_config c;
    char err[256] = "";
    ASSERT_EQ(parse_with(",\"rope_scaling\":{\"rope_type\":\"default\"},\"partial_rotary_factor\":1.0", &c, err,
                         sizeof err),
              0);
    ASSERT_EQ(c.rope.kind, ROPE_DEFAULT);
    ASSERT_EQ(parse_with(",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}", &c, err, sizeof err), 0);
    ASSERT_EQ(c.rope.kind, ROPE_YARN);
    ASSERT_EQ(c.rope.original_max_position_embeddings, 256);
    ASSERT(c.rope.beta_fast == 32 && c.rope.beta_slow == 1 && c.rope.truncate && c.rope.attention_factor < 0);
}

TEST_MAIN(rope_linear, rope_linear_legacy_type_key, rope_llama3, rope_yarn, rope_yarn_mscale_ratio,
          rope_yarn_explicit_attention_factor, rope_scaling_refusals)
