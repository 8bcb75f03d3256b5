/* tests/unit/test_rope_seqlen.c — the sequence-length-dependent rope_scaling types through
 * model_load + llama_forward against transformers 4.57.6 (fixtures: tests/fixtures/
 * rope_seqlen, make_seqlen_rope_fixtures.py): "dynamic" (NTK; tiny Llama, max_position 32,
 * factor 2 and 4) and "longrope" (tiny Phi3, original max 16 of 64: Phi-3.5 style full
 * rotary, Phi-4-mini style partial_rotary_factor 0.75, and a PEFT LoRA on the latter).
 * Per case: the tables of rope_freqs_key vs the rotary module's inv_freq at given lengths;
 * the prefill logits of a prompt shorter and one longer than the original max (one forward
 * with rope_len NULL, and again in chunks with rope_len = the prompt length); greedy
 * generation as generate() does it: the prompt, then one decode row per step with rope_len
 * = the prompt length, and for longrope Phi3's full recompute when the length crosses the
 * original max — every step's logits within 1e-4 and the argmax token. Negative controls
 * show the checks see a missing recompute and per-chunk (wrong) sequence lengths. */
#include <cJSON.h>
#include <math.h>

#include "lib/status.h"
#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "server/model/rope_freqs.h"
#include "tests/harness/test.h"

#define TOL 1e-4
#define MAX_IDS 64

static cJSON *ref_load(const char *dir) {
    char path[256];
    size_t len;
    snprintf(path, sizeof path, "%s/reference.json", dir);
    char *text = test_read_file(path, &len);
    if (!text) FAIL("cannot read %s (missing fixture)", path);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) FAIL("%s: bad JSON", path);
    return root;
}

static int ids_of(const cJSON *arr, int32_t *ids) {
    int n = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr) {
        ASSERT(n < MAX_IDS);
        ids[n++] = v->valueint;
    }
    return n;
}

/* max |a - ref row| over vocab entries */
static double row_diff(const float *a, const cJSON *row, int vocab) {
    ASSERT_EQ(cJSON_GetArraySize(row), vocab);
    double md = 0;
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, row) {
        double d = fabs((double)a[i++] - v->valuedouble);
        if (!(d <= md)) md = d;
    }
    return md;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

typedef struct {
    kbackend *kb;
    model *m;
    adapter *ad;
    llama_ctx *c;
    int vocab;
    float *out; /* [MAX_IDS, vocab] */
} rig;

static void rig_open(rig *r, const char *dir, const char *adapter_dir) {
    char err[1024] = "";
    memset(r, 0, sizeof *r);
    r->kb = kbackend_cpu_create(2);
    ASSERT(r->kb);
    if (model_load(dir, r->kb, &r->m, err, sizeof err) < 0) FAIL("model_load %s: %s", dir, err);
    if (adapter_dir && model_load_adapter(r->m, adapter_dir, &r->ad, err, sizeof err) < 0)
        FAIL("adapter %s: %s", adapter_dir, err);
    llama_ctx_params p = {.max_tokens = MAX_IDS, .max_seqs = 2, .block_size = 4, .n_blocks = 32, .max_blocks = 16};
    if (llama_ctx_create(r->m, &p, &r->c, err, sizeof err) < 0) FAIL("llama_ctx_create: %s", err);
    r->vocab = r->m->cfg.vocab_size;
    r->out = malloc(sizeof(float) * MAX_IDS * (size_t)r->vocab);
    ASSERT(r->out);
}

static void rig_close(rig *r) {
    free(r->out);
    llama_ctx_free(r->c);
    adapter_free(r->ad);
    model_free(r->m);
    kbackend_destroy(r->kb);
}

/* Rows [n0, n0 + n) of ids at positions n0.. (earlier K/V from the cache); rope_len < 0:
 * NULL (the batch's own max position + 1). Logits of every row land in r->out[0 .. n). */
static void run(rig *r, const int32_t *ids, int n0, int n, int rope_len) {
    int32_t pos[MAX_IDS], slots[MAX_IDS], rows[MAX_IDS], btab[16];
    for (int i = 0; i < 16; i++) btab[i] = 3 + i;
    for (int j = 0; j < n; j++) {
        pos[j] = n0 + j;
        slots[j] = btab[(n0 + j) / 4] * 4 + (n0 + j) % 4;
        rows[j] = j;
    }
    int32_t qstart[2] = {0, n}, kvlen[1] = {n0 + n}, rl[1] = {rope_len};
    llama_segment seg = {.ad = r->ad, .scale = 1.0f, .row_start = 0, .row_end = n};
    llama_batch b = {.n_tokens = n, .tokens = ids + n0, .positions = pos, .slots = slots, .n_seqs = 1,
                     .q_start = qstart, .kv_len = kvlen, .block_table = btab, .n_segs = 1, .segs = &seg,
                     .n_logits = n, .logit_rows = rows, .rope_len = rope_len < 0 ? NULL : rl};
    int st = llama_forward(r->c, &b, r->out);
    if (st < 0) FAIL("llama_forward: %s", peftd_strerror(st));
}

static void check_tables(const model *m, const cJSON *ref, const char *name) {
    const model_config *cfg = &m->cfg;
    int half = cfg->rope.rot_dim / 2;
    float f[ROPE_MAX_PAIRS];
    const cJSON *t;
    double worst = 0;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(ref, "tables")) {
        int len = atoi(t->string);
        ASSERT_EQ(cJSON_GetArraySize(t), half);
        rope_freqs_key(cfg, rope_table_key(cfg, len), f);
        for (int i = 0; i < half; i++) {
            double want = cJSON_GetArrayItem(t, i)->valuedouble, d = fabs(f[i] - want) / fabs(want);
            if (!(d <= 2e-6)) FAIL("%s: table at length %d, [%d] = %.9g, transformers %.9g", name, len, i, f[i], want);
            if (d > worst) worst = d;
        }
    }
    double s;
    rope_freqs(cfg, f, &s);
    double want = cJSON_GetObjectItem(ref, "attention_scaling")->valuedouble;
    printf("    %-16s tables: max rel diff %.3g; attention scaling %.9g (ref %.9g)\n", name, worst, s, want);
    ASSERT_NEAR(s, want, 1e-12);
}

/* Each prefill prompt: one forward (rope_len NULL), then in chunks of 7 with rope_len = n. */
static double check_prefill(rig *r, const cJSON *ref, const char *name) {
    double worst = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(ref, "prefill")) {
        int32_t ids[MAX_IDS];
        int n = ids_of(cJSON_GetObjectItem(p, "input_ids"), ids);
        for (int mode = 0; mode < 2; mode++) {
            float *all = malloc(sizeof(float) * (size_t)n * r->vocab);
            ASSERT(all);
            for (int s0 = 0; s0 < n;) {
                int k = mode == 0 ? n : (n - s0 < 7 ? n - s0 : 7);
                run(r, ids, s0, k, mode == 0 ? -1 : n);
                memcpy(all + (size_t)s0 * r->vocab, r->out, sizeof(float) * (size_t)k * r->vocab);
                s0 += k;
            }
            double md = 0;
            const cJSON *row, *rows = cJSON_GetObjectItem(p, "rows");
            int i = 0;
            cJSON_ArrayForEach(row, cJSON_GetObjectItem(p, "logits")) {
                int at = cJSON_GetArrayItem(rows, i++)->valueint;
                double d = row_diff(all + (size_t)at * r->vocab, row, r->vocab);
                if (d > md) md = d;
            }
            free(all);
            printf("    %-16s prefill %2d tokens, %s: max |logit diff| %.3g\n", name, n,
                   mode == 0 ? "one forward" : "chunks of 7, rope_len = n", md);
            if (!(md <= TOL)) FAIL("%s: prefill of %d: max |logit diff| %.3g", name, n, md);
            if (md > worst) worst = md;
        }
    }
    return worst;
}

/* generate(): the prompt (rope_len = its length), then decode rows; longrope with recompute:
 * at the step whose new row would be past the original max, everything again with rope_len
 * = the length (Phi3's prepare_inputs_for_generation). Returns the max |logit diff|; *tok_ok
 * = every argmax equals the reference token. */
static double run_generation(rig *r, const cJSON *gen, bool recompute, bool *tok_ok) {
    int32_t seq[MAX_IDS];
    int n_p = ids_of(cJSON_GetObjectItem(gen, "prompt"), seq);
    const cJSON *toks = cJSON_GetObjectItem(gen, "tokens"), *lg = cJSON_GetObjectItem(gen, "logits");
    int n_new = cJSON_GetArraySize(toks);
    ASSERT(n_p + n_new <= MAX_IDS && cJSON_GetArraySize(lg) == n_new);
    for (int i = 0; i < n_new; i++) seq[n_p + i] = cJSON_GetArrayItem(toks, i)->valueint;
    const model_config *cfg = &r->m->cfg;
    int omax = cfg->rope.original_max_position_embeddings, rope_len = n_p;
    bool longrope = cfg->rope.kind == ROPE_LONGROPE;
    double md = 0;
    *tok_ok = true;
    run(r, seq, 0, n_p, rope_len);
    for (int step = 0; step < n_new; step++) {
        const float *last = r->out;
        if (step == 0) {
            last = r->out + (size_t)(n_p - 1) * r->vocab;
        }
        double d = row_diff(last, cJSON_GetArrayItem(lg, step), r->vocab);
        if (d > md) md = d;
        if (argmax(last, r->vocab) != seq[n_p + step]) *tok_ok = false;
        if (step + 1 == n_new) break;
        int p = n_p + step; /* position of the row fed next: the token just generated */
        if (recompute && longrope && p + 1 > omax && rope_len <= omax) {
            rope_len = p + 1;
            run(r, seq, 0, p + 1, rope_len);
            memmove(r->out, r->out + (size_t)p * r->vocab, sizeof(float) * (size_t)r->vocab);
        } else {
            run(r, seq, p, 1, rope_len);
        }
    }
    return md;
}

static void check_case(const char *name) {
    char dir[128];
    snprintf(dir, sizeof dir, "tests/fixtures/rope_seqlen/%s", name);
    cJSON *ref = ref_load(dir);
    rig r;
    rig_open(&r, dir, NULL);
    check_tables(r.m, ref, name);
    check_prefill(&r, ref, name);
    bool tok_ok;
    const cJSON *gen = cJSON_GetObjectItem(ref, "generate");
    ASSERT(gen);
    double md = run_generation(&r, gen, true, &tok_ok);
    printf("    %-16s generate %d tokens: max |logit diff| over steps %.3g, tokens %s\n", name,
           cJSON_GetArraySize(cJSON_GetObjectItem(gen, "tokens")), md, tok_ok ? "equal" : "DIFFER");
    if (!(md <= TOL) || !tok_ok) FAIL("%s: generation differs from transformers", name);
    if (r.m->cfg.rope.kind == ROPE_LONGROPE) { /* the recompute is what makes it match */
        double bad = run_generation(&r, gen, false, &tok_ok);
        printf("    %-16s   without the recompute at the original max: %.3g\n", name, bad);
        ASSERT(bad > 1e-2);
    }
    rig_close(&r);
    cJSON_Delete(ref);
}

TEST(dynamic_factor2) { check_case("dynamic-2"); }
TEST(dynamic_factor4_legacy_type_key) { check_case("dynamic-4"); }
TEST(longrope_phi35_full_rotary) { check_case("longrope-full"); }
TEST(longrope_phi4mini_partial_rotary) { check_case("longrope-partial"); }

TEST(longrope_lora) {
    cJSON *ref = ref_load("tests/fixtures/rope_seqlen/longrope-lora");
    rig r;
    rig_open(&r, cJSON_GetObjectItem(ref, "model")->valuestring, "tests/fixtures/rope_seqlen/longrope-lora");
    ASSERT_EQ(r.m->cfg.rope.kind, ROPE_LONGROPE);
    check_prefill(&r, ref, "longrope-lora");
    rig_close(&r);
    cJSON_Delete(ref);
}

/* Chunked prefill of a prompt past max_position_embeddings with each chunk as its own
 * forward (rope_len NULL: the chunk's max position + 1) is NOT what transformers computes for
 * one prompt: the per-row rule (rope_len = prompt length) is needed. */
TEST(dynamic_chunks_need_rope_len) {
    cJSON *ref = ref_load("tests/fixtures/rope_seqlen/dynamic-2");
    rig r;
    rig_open(&r, "tests/fixtures/rope_seqlen/dynamic-2", NULL);
    const cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItem(ref, "prefill"), 1);
    int32_t ids[MAX_IDS];
    int n = ids_of(cJSON_GetObjectItem(p, "input_ids"), ids);
    ASSERT(n > r.m->cfg.max_position_embeddings);
    for (int s0 = 0; s0 < n; s0 += 7) run(&r, ids, s0, n - s0 < 7 ? n - s0 : 7, -1);
    const cJSON *rows = cJSON_GetObjectItem(p, "rows"), *lg = cJSON_GetObjectItem(p, "logits");
    int last = cJSON_GetArraySize(rows) - 1;
    ASSERT_EQ(cJSON_GetArrayItem(rows, last)->valueint, n - 1);
    int k = (n - 1) % 7;
    double d = row_diff(r.out + (size_t)k * r.vocab, cJSON_GetArrayItem(lg, last), r.vocab);
    printf("    last row with per-chunk lengths: |logit diff| %.3g\n", d);
    ASSERT(d > 1e-2);
    rig_close(&r);
    cJSON_Delete(ref);
}

TEST(seqlen_rope_config_rules) {
    model_config c;
    char err[512] = "";
    const char *phi3 = "{\"architectures\":[\"Phi3ForCausalLM\"],\"vocab_size\":512,\"hidden_size\":64,"
                       "\"intermediate_size\":32,\"num_hidden_layers\":1,\"num_attention_heads\":4,"
                       "\"max_position_embeddings\":131072,%s}";
    char json[1024];
    /* Phi-3.5-mini: original 4096, factor 32 -> sqrt(1 + ln 32 / ln 4096) */
    snprintf(json, sizeof json, phi3,
             "\"original_max_position_embeddings\":4096,\"rope_scaling\":{\"type\":\"longrope\","
             "\"short_factor\":[1,1,1,1,1,1,1,1],\"long_factor\":[2,2,2,2,2,2,2,2]}");
    ASSERT_EQ(model_config_parse(json, strlen(json), &c, err, sizeof err), 0);
    ASSERT_EQ(c.rope.kind, ROPE_LONGROPE);
    ASSERT_EQ(c.rope.original_max_position_embeddings, 4096);
    ASSERT_NEAR(c.rope.attention_factor, sqrt(1 + log(32.0) / log(4096.0)), 1e-12);
    ASSERT_EQ(rope_table_key(&c, 4096), 0);
    ASSERT_EQ(rope_table_key(&c, 4097), 1);
    /* explicit attention_factor; legacy "su" type; default original max 4096 */
    snprintf(json, sizeof json, phi3,
             "\"rope_scaling\":{\"type\":\"su\",\"attention_factor\":1.5,"
             "\"short_factor\":[1,1,1,1,1,1,1,1],\"long_factor\":[2,2,2,2,2,2,2,2]}");
    ASSERT_EQ(model_config_parse(json, strlen(json), &c, err, sizeof err), 0);
    ASSERT_EQ(c.rope.kind, ROPE_LONGROPE);
    ASSERT_EQ(c.rope.original_max_position_embeddings, 4096);
    ASSERT_NEAR(c.rope.attention_factor, 1.5, 0);
    /* refusals name the field */
    snprintf(json, sizeof json, phi3,
             "\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":[1,1,1,1,1,1,1,1],"
             "\"long_factor\":[2,2,2,2,2,2,2]}");
    ASSERT_EQ(model_config_parse(json, strlen(json), &c, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "\"long_factor\" must be a list of 8 numbers"));
    snprintf(json, sizeof json, phi3,
             "\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":[1,1,1,1,1,1,1,-1],"
             "\"long_factor\":[2,2,2,2,2,2,2,2]}");
    ASSERT_EQ(model_config_parse(json, strlen(json), &c, err, sizeof err), PEFTD_ERANGE);
    ASSERT(strstr(err, "\"short_factor\"[7]"));
    snprintf(json, sizeof json, phi3, "\"rope_scaling\":{\"rope_type\":\"dynamic\",\"factor\":2.0}");
    ASSERT_EQ(model_config_parse(json, strlen(json), &c, err, sizeof err), PEFTD_EUNSUPPORTED);
    ASSERT(strstr(err, "\"dynamic\" is not supported on Phi3ForCausalLM"));
}

TEST_MAIN(dynamic_factor2, dynamic_factor4_legacy_type_key, longrope_phi35_full_rotary,
          longrope_phi4mini_partial_rotary, longrope_lora, dynamic_chunks_need_rope_len,
          seqlen_rope_config_rules)
