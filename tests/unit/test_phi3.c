/* tests/unit/test_phi3.c — Phi3ForCausalLM (issue 11): a tiny random Phi-3 whose fused
 * qkv_proj / gate_up_proj are split into row views at load, base and PEFT LoRA / DoRA / IA3
 * on the fused modules (split at import), against transformers + peft
 * (tests/fixtures/make_phi3_fixtures.py -> tests/fixtures/phi3/reference.json); the config
 * rules: partial_rotary_factor < 1 served (reference_partial.json), longrope refused, sliding_window honoured as Mistral;
 * a PEFT target that does not exist on Phi-3 (q_proj) refused.
 *
 * Tolerance 1e-4 on logits, as test_qwen2.c: only summation order differs.
 */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/test.h"

#define TOL 1e-4
#define VOCAB 512
#define MAX_IDS 32

typedef struct {
    char model[128], adapter[128];
    int n_ids;
    int32_t ids[MAX_IDS];
    float *logits; /* [n_ids, VOCAB] */
} qcase;

static void case_load(const char *file, const char *name, qcase *q) {
    size_t len;
    char *text = test_read_file(file, &len);
    if (!text) FAIL("cannot read %s", file);
    cJSON *root = cJSON_ParseWithLength(text, len);
    ASSERT(root);
    const cJSON *c = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "cases"), name), *v, *r;
    if (!c) FAIL("reference.json: no case %s", name);
    memset(q, 0, sizeof *q);
    snprintf(q->model, sizeof q->model, "%s", cJSON_GetObjectItem(c, "model")->valuestring);
    const cJSON *ad = cJSON_GetObjectItem(c, "adapter");
    if (cJSON_IsString(ad)) snprintf(q->adapter, sizeof q->adapter, "%s", ad->valuestring);
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "input_ids")) {
        ASSERT(q->n_ids < MAX_IDS);
        q->ids[q->n_ids++] = v->valueint;
    }
    q->logits = malloc(sizeof(float) * (size_t)q->n_ids * VOCAB);
    int row = 0;
    cJSON_ArrayForEach(r, cJSON_GetObjectItem(c, "logits")) {
        int col = 0;
        cJSON_ArrayForEach(v, r) q->logits[(size_t)row * VOCAB + col++] = (float)v->valuedouble;
        ASSERT_EQ(col, VOCAB);
        row++;
    }
    ASSERT_EQ(row, q->n_ids);
    cJSON_Delete(root);
    free(text);
}

/* Every prompt position's logits through llama_forward, one sequence, one segment. */
static void check_case_in(const char *file, const char *name) {
    qcase q;
    case_load(file, name, &q);
    char err[1024] = "";
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    model *m = NULL;
    adapter *ad = NULL;
    if (model_load(q.model, kb, &m, err, sizeof err) < 0) FAIL("model_load %s: %s", q.model, err);
    if (q.adapter[0] && model_load_adapter(m, q.adapter, &ad, err, sizeof err) < 0)
        FAIL("adapter %s: %s", q.adapter, err);
    const int bs = 4, max_blocks = 16;
    llama_ctx_params p = {.max_tokens = 64, .max_seqs = 2, .block_size = bs, .n_blocks = 32, .max_blocks = max_blocks};
    llama_ctx *c = NULL;
    if (llama_ctx_create(m, &p, &c, err, sizeof err) < 0) FAIL("llama_ctx_create: %s", err);
    int32_t pos[MAX_IDS], slots[MAX_IDS], rows[MAX_IDS], btab[16], qstart[2] = {0, q.n_ids}, kvlen[1] = {q.n_ids};
    for (int i = 0; i < max_blocks; i++) btab[i] = 3 + i;
    for (int j = 0; j < q.n_ids; j++) {
        pos[j] = j;
        slots[j] = btab[j / bs] * bs + j % bs;
        rows[j] = j;
    }
    llama_segment seg = {.ad = ad, .scale = 1.0f, .row_start = 0, .row_end = q.n_ids};
    llama_batch b = {.n_tokens = q.n_ids, .tokens = q.ids, .positions = pos, .slots = slots, .n_seqs = 1,
                     .q_start = qstart, .kv_len = kvlen, .block_table = btab, .n_segs = 1, .segs = &seg,
                     .n_logits = q.n_ids, .logit_rows = rows};
    float *out = malloc(sizeof(float) * (size_t)q.n_ids * VOCAB);
    int st = llama_forward(c, &b, out);
    if (st < 0) FAIL("%s: llama_forward: %s", name, peftd_strerror(st));
    double md = 0;
    for (size_t i = 0; i < (size_t)q.n_ids * VOCAB; i++) {
        double d = fabs((double)out[i] - q.logits[i]);
        if (!(d <= md)) md = d;
    }
    printf("    %-16s (%d tokens): max |logit diff| %.3g\n", name, q.n_ids, md);
    if (!(md <= TOL)) FAIL("%s: max |logit diff| %.3g > %g", name, md, TOL);
    free(out);
    free(q.logits);
    llama_ctx_free(c);
    adapter_free(ad);
    model_free(m);
    kbackend_destroy(kb);
}

static void check_case(const char *name) { check_case_in("tests/fixtures/phi3/reference.json", name); }

TEST(phi3_base) { check_case("base"); }
/* partial_rotary_factor 0.75 (Phi-4-mini): rot_dim 12 of head_dim 16 rotate, 4 pass through. */
TEST(phi3_partial_rotary) { check_case_in("tests/fixtures/phi3/reference_partial.json", "partial"); }
TEST(phi3_lora) { check_case("lora"); }
TEST(phi3_dora) { check_case("dora"); }
TEST(phi3_ia3) { check_case("ia3"); }

static int parse(const char *extra, model_config *cfg, char *err, size_t errlen) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"architectures\": [\"Phi3ForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128, "
             "\"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"vocab_size\": 512, "
             "\"max_position_embeddings\": 8192%s}",
             extra);
    return model_config_parse(json, strlen(json), cfg, err, errlen);
}

TEST(phi3_config_rules) {
    model_config cfg;
    char err[256] = "";
    ASSERT_EQ(parse("", &cfg, err, sizeof err), 0);
    ASSERT(cfg.fused_proj && !cfg.qkv_bias && !cfg.o_bias);
    ASSERT_EQ(parse(", \"sliding_window\": 2047", &cfg, err, sizeof err), 0);
    ASSERT_EQ(cfg.sliding_window, 2047);
    ASSERT_EQ(cfg.rope.rot_dim, 16);
    ASSERT_EQ(parse(", \"partial_rotary_factor\": 0.75", &cfg, err, sizeof err), 0);
    ASSERT_EQ(cfg.rope.rot_dim, 12);
    /* int(16 * 0.1) = 1: an odd rotary width cannot pair halves. */
    ASSERT_EQ(parse(", \"partial_rotary_factor\": 0.1", &cfg, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "partial_rotary_factor"));
    ASSERT_EQ(parse(", \"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [1], \"long_factor\": [1]}",
                    &cfg, err, sizeof err),
              PEFTD_EUNSUPPORTED);
    ASSERT(strstr(err, "longrope"));
}

/* PEFT keys on Phi-3 are the fused names: a q_proj target names nothing in the base. */
TEST(phi3_unfused_target_refused) {
    char err[1024] = "", dir[] = "/tmp/peftd_phi3_XXXXXX", path[600];
    ASSERT(mkdtemp(dir));
    kbackend *kb = kbackend_cpu_create(1);
    model *m = NULL;
    adapter *ad = NULL;
    if (model_load("tests/fixtures/phi3/model", kb, &m, err, sizeof err) < 0) FAIL("model_load: %s", err);
    size_t len;
    char *cfg = test_read_file("tests/fixtures/phi3/lora/adapter_config.json", &len);
    ASSERT(cfg);
    char *hit = strstr(cfg, "\"qkv_proj\"");
    ASSERT(hit);
    memcpy(hit, "\"q_proj\"  ", 10);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "w");
    ASSERT(f);
    fwrite(cfg, 1, len, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    char *weights = realpath("tests/fixtures/phi3/lora/adapter_model.safetensors", NULL);
    ASSERT(weights);
    ASSERT_EQ(symlink(weights, path), 0);
    free(weights);
    ASSERT(model_load_adapter(m, dir, &ad, err, sizeof err) < 0);
    ASSERT(strstr(err, "q_proj"));
    unlink(path);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    unlink(path);
    rmdir(dir);
    free(cfg);
    model_free(m);
    kbackend_destroy(kb);
}

TEST_MAIN(phi3_base, phi3_partial_rotary, phi3_lora, phi3_dora, phi3_ia3, phi3_config_rules, phi3_unfused_target_refused)
