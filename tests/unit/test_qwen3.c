/* tests/unit/test_qwen3.c — Qwen3ForCausalLM (issue 11): a tiny random Qwen3 whose head_dim
 * (32) differs from hidden_size / num_attention_heads (16), with random per-head q_norm /
 * k_norm weights, base and PEFT LoRA (q,k,v,o + MLP), against transformers + peft
 * (tests/fixtures/make_qwen3_fixtures.py -> tests/fixtures/qwen3/reference.json); the Qwen3
 * rules of config.json (head_dim default 128, attention_bias on q/k/v/o, sliding window).
 *
 * Tolerance 1e-4 on logits, as test_qwen2.c: the references are f32 math on exactly the
 * stored weights, so only summation order differs (~1e-6 at these sizes); a missing q/k
 * norm, one applied before the LoRA delta or a head_dim taken as hidden/heads moves logits
 * by far more (or fails to load).
 */
#include <cJSON.h>
#include <math.h>

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

static void case_load(const char *name, qcase *q) {
    size_t len;
    char *text = test_read_file("tests/fixtures/qwen3/reference.json", &len);
    if (!text) FAIL("cannot read tests/fixtures/qwen3/reference.json");
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

/* Every prompt position's logits through llama_forward, one sequence, one segment; split
 * into a prefill of the first n_pre tokens and single-token decode steps after it when
 * n_pre < n_ids (the normed, rotated k of earlier steps read back from the KV cache). */
static void check_case(const char *name, int n_pre) {
    qcase q;
    case_load(name, &q);
    char err[1024] = "";
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    model *m = NULL;
    adapter *ad = NULL;
    if (model_load(q.model, kb, &m, err, sizeof err) < 0) FAIL("model_load %s: %s", q.model, err);
    ASSERT_EQ(m->cfg.head_dim, 32);
    ASSERT(m->cfg.qk_norm && m->layers[0].q_norm.data && m->layers[1].k_norm.data);
    if (q.adapter[0] && model_load_adapter(m, q.adapter, &ad, err, sizeof err) < 0)
        FAIL("adapter %s: %s", q.adapter, err);
    const int bs = 4, max_blocks = 16;
    llama_ctx_params p = {.max_tokens = 64, .max_seqs = 2, .block_size = bs, .n_blocks = 32, .max_blocks = max_blocks};
    llama_ctx *c = NULL;
    if (llama_ctx_create(m, &p, &c, err, sizeof err) < 0) FAIL("llama_ctx_create: %s", err);
    int32_t pos[MAX_IDS], slots[MAX_IDS], rows[MAX_IDS], btab[16];
    for (int i = 0; i < max_blocks; i++) btab[i] = 3 + i;
    for (int j = 0; j < q.n_ids; j++) {
        pos[j] = j;
        slots[j] = btab[j / bs] * bs + j % bs;
        rows[j] = j;
    }
    float *out = malloc(sizeof(float) * (size_t)q.n_ids * VOCAB);
    for (int s0 = 0; s0 < q.n_ids;) {
        int n = s0 == 0 ? n_pre : 1;
        int32_t qstart[2] = {0, n}, kvlen[1] = {s0 + n};
        llama_segment seg = {.ad = ad, .scale = 1.0f, .row_start = 0, .row_end = n};
        llama_batch b = {.n_tokens = n, .tokens = q.ids + s0, .positions = pos + s0, .slots = slots + s0,
                         .n_seqs = 1, .q_start = qstart, .kv_len = kvlen, .block_table = btab, .n_segs = 1,
                         .segs = &seg, .n_logits = n, .logit_rows = rows};
        int st = llama_forward(c, &b, out + (size_t)s0 * VOCAB);
        if (st < 0) FAIL("%s: llama_forward: %s", name, peftd_strerror(st));
        s0 += n;
    }
    double md = 0;
    for (size_t i = 0; i < (size_t)q.n_ids * VOCAB; i++) {
        double d = fabs((double)out[i] - q.logits[i]);
        if (!(d <= md)) md = d;
    }
    printf("    %-8s prefill %2d (%d tokens): max |logit diff| %.3g\n", name, n_pre, q.n_ids, md);
    if (!(md <= TOL)) FAIL("%s: max |logit diff| %.3g > %g", name, md, TOL);
    free(out);
    free(q.logits);
    llama_ctx_free(c);
    adapter_free(ad);
    model_free(m);
    kbackend_destroy(kb);
}

TEST(qwen3_base) { check_case("base", 13); }
TEST(qwen3_lora) { check_case("lora", 13); }
TEST(qwen3_base_decode) { check_case("base", 5); }
TEST(qwen3_lora_decode) { check_case("lora", 5); }

static int parse(const char *extra, model_config *cfg, char *err, size_t errlen) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"architectures\": [\"Qwen3ForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 128, "
             "\"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"vocab_size\": 512, "
             "\"max_position_embeddings\": 8192%s}",
             extra);
    return model_config_parse(json, strlen(json), cfg, err, errlen);
}

/* transformers' Qwen3Config: head_dim defaults to 128 (not hidden/heads), attention_bias
 * (default false) on all four projections, Qwen2's sliding-window rule. */
TEST(qwen3_config_rules) {
    model_config cfg;
    char err[256] = "";
    ASSERT_EQ(parse("", &cfg, err, sizeof err), 0);
    ASSERT(cfg.qk_norm && !cfg.qkv_bias && !cfg.o_bias);
    ASSERT_EQ(cfg.head_dim, 128);
    ASSERT_EQ(cfg.sliding_window, 0);
    ASSERT_EQ(parse(", \"head_dim\": 24, \"attention_bias\": true", &cfg, err, sizeof err), 0);
    ASSERT_EQ(cfg.head_dim, 24);
    ASSERT(cfg.qkv_bias && cfg.o_bias);
    ASSERT_EQ(parse(", \"sliding_window\": 100", &cfg, err, sizeof err), 0);
    ASSERT_EQ(cfg.sliding_window, 0); /* use_sliding_window defaults to false */
    ASSERT_EQ(parse(", \"use_sliding_window\": true, \"sliding_window\": 100", &cfg, err, sizeof err), 0);
    ASSERT_EQ(cfg.sliding_window, 0); /* max_window_layers defaults to 28 >= 4 layers */
    ASSERT_EQ(parse(", \"use_sliding_window\": true, \"sliding_window\": 100, \"max_window_layers\": 2", &cfg,
                    err, sizeof err),
              0);
    ASSERT_EQ(cfg.sliding_window, 100);
    ASSERT(parse(", \"head_dim\": 31", &cfg, err, sizeof err) < 0);
}

TEST_MAIN(qwen3_base, qwen3_lora, qwen3_base_decode, qwen3_lora_decode, qwen3_config_rules)
