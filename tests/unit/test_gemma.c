/* tests/unit/test_gemma.c — Gemma2ForCausalLM and Gemma3ForCausalLM (text) against transformers
 * 4.57 + peft (tests/fixtures/make_gemma_fixtures.py -> tests/fixtures/gemma/): tiny random
 * models with random (1 + w) norms, soft-caps (Gemma 2), query_pre_attn_scalar != head_dim,
 * GQA 4/2, window 8 on alternating layers with prompts up to 24 tokens, and (Gemma 3) q/k norms
 * and two RoPE tables (local base 10000 on sliding layers, rope_theta + linear 8 on global ones).
 *   - base logits of every position of 5 prompts, as one prefill and as prefill 3 + decode steps;
 *   - the 32 tokens transformers' greedy generate() appends;
 *   - LoRA (all-linear), DoRA, IA3, prompt tuning and prefix tuning, each against peft;
 *   - one batch mixing base rows and every adapter: bit-identical to each sequence alone;
 *   - the config.json rules (defaults of Gemma2Config / Gemma3TextConfig, refusals), and
 *     bottleneck (AdapterHub) adapters refused on Gemma;
 *   - on the CUDA backend (skipped visibly without a device): every case above against the
 *     same references, and the greedy tokens.
 * Tolerance 1e-4 on f32 logits (reference: f32 math on the same f32 weights, so only summation
 * order and libm ulps differ).
 */
#include <cJSON.h>
#include <math.h>

#include "lib/status.h"
#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/logit_ref.h"
#include "tests/harness/test.h"
#ifdef PEFTD_CUDA
#include "kernels/kernels_cuda.h"
#endif

#define TOL 1e-4
#define REF "tests/fixtures/gemma/reference.json"
#define BS 4          /* KV block size */
#define BPS 16        /* KV blocks per sequence */
#define MAX_SEQS 8

static const char *const PROMPTS[] = {"p5", "p8", "p11", "p17", "p24"};

static void check(const char *model, const char *what, int n_pre) {
    char name[64];
    logit_case q;
    snprintf(name, sizeof name, "%s_%s", model, what);
    logit_case_load(REF, name, &q);
    logit_case_check(&q, name, n_pre, TOL, NULL, NULL);
    logit_case_free(&q);
}

static void check_base(const char *model) {
    for (size_t i = 0; i < sizeof PROMPTS / sizeof PROMPTS[0]; i++) {
        check(model, PROMPTS[i], LOGIT_REF_MAX_IDS); /* one prefill */
        check(model, PROMPTS[i], 3);                 /* prefill 3, then decode steps */
    }
}

TEST(gemma2_base) { check_base("gemma2"); }
TEST(gemma3_base) { check_base("gemma3"); }
TEST(gemma2_lora) { check("gemma2", "lora", 64); check("gemma2", "lora", 5); }
TEST(gemma3_lora) { check("gemma3", "lora", 64); check("gemma3", "lora", 5); }
TEST(gemma2_dora) { check("gemma2", "dora", 64); check("gemma2", "dora", 5); }
TEST(gemma3_dora) { check("gemma3", "dora", 64); check("gemma3", "dora", 5); }
TEST(gemma2_ia3) { check("gemma2", "ia3", 64); check("gemma2", "ia3", 5); }
TEST(gemma3_ia3) { check("gemma3", "ia3", 64); check("gemma3", "ia3", 5); }

/* ---- several sequences in one batch (virtual tokens, mixed adapters) ---- */

typedef struct {
    const adapter *ad;
    const int32_t *ids;
    int n_ids;
    float *out; /* [n_ids, vocab]: logits of the real tokens */
} gseq;

typedef struct {
    kbackend *kb;
    model *m;
    llama_ctx *c;
} grun;

#ifdef PEFTD_CUDA
static bool USE_CUDA; /* grun_open on the CUDA backend (gemma_cuda) */
#endif

static void grun_open(grun *r, const char *dir) {
    char err[1024] = "";
#ifdef PEFTD_CUDA
    r->kb = USE_CUDA ? kbackend_cuda_create(0, err, sizeof err) : kbackend_cpu_create(2);
#else
    r->kb = kbackend_cpu_create(2);
#endif
    if (!r->kb) FAIL("backend: %s", err);
    if (model_load(dir, r->kb, &r->m, err, sizeof err) < 0) FAIL("model_load %s: %s", dir, err);
    llama_ctx_params p = {.max_tokens = 256, .max_seqs = MAX_SEQS, .block_size = BS,
                          .n_blocks = 1 + MAX_SEQS * BPS, .max_blocks = BPS};
    if (llama_ctx_create(r->m, &p, &r->c, err, sizeof err) < 0) FAIL("llama_ctx_create: %s", err);
}

static void grun_close(grun *r) {
    llama_ctx_free(r->c);
    model_free(r->m);
    kbackend_destroy(r->kb);
}

static adapter *load_adapter(const grun *r, const char *dir) {
    char err[1024] = "";
    adapter *ad = NULL;
    if (model_load_adapter(r->m, dir, &ad, err, sizeof err) < 0) FAIL("adapter %s: %s", dir, err);
    return ad;
}

/* Sequence i in KV blocks 1 + i*BPS ..; its prefix (prefix tuning) first, padded to a block
 * boundary (kv_start = pad), then its prompt-tuning virtual tokens, then its ids. Step 0 takes
 * up to n_pre tokens of every sequence, each later step one token of every unfinished one. */
static void run_batch(grun *r, gseq *s, int n) {
    int vocab = r->m->cfg.vocab_size;
    int32_t btab[MAX_SEQS * BPS], pad[MAX_SEQS], nvp[MAX_SEQS], npf[MAX_SEQS], total[MAX_SEQS], done[MAX_SEQS];
    ASSERT(n <= MAX_SEQS);
    for (int i = 0; i < n; i++) {
        for (int b = 0; b < BPS; b++) btab[i * BPS + b] = 1 + i * BPS + b;
        const adapter *ad = s[i].ad;
        nvp[i] = ad && ad->kind == ADAPTER_PROMPT_TUNING ? ad->n_virtual : 0;
        npf[i] = ad && ad->kind == ADAPTER_PREFIX_TUNING ? ad->n_virtual : 0;
        pad[i] = npf[i] ? (BS - npf[i] % BS) % BS : 0;
        total[i] = nvp[i] + s[i].n_ids;
        done[i] = 0;
        ASSERT(pad[i] + npf[i] + total[i] <= BPS * BS);
        if (npf[i]) ASSERT_EQ(llama_store_prefix(r->c, ad, btab + i * BPS, pad[i]), 0);
    }
    int32_t tok[256], pos[256], slot[256], rows[256], qs[MAX_SEQS + 1], kvl[MAX_SEQS], kvs[MAX_SEQS],
        bt[MAX_SEQS * BPS];
    int dst_seq[256], dst_row[256];
    llama_segment seg[MAX_SEQS];
    float *lg = malloc(sizeof(float) * 256 * (size_t)vocab);
    ASSERT(lg);
    for (int step = 0;; step++) {
        int T = 0, S = 0, NL = 0;
        for (int i = 0; i < n; i++) {
            int k = step == 0 ? (s[i].n_ids < 3 ? total[i] : nvp[i] + 3) : 1;
            if (done[i] >= total[i]) continue;
            if (k > total[i] - done[i]) k = total[i] - done[i];
            qs[S] = T;
            memcpy(bt + S * BPS, btab + i * BPS, sizeof(int32_t) * BPS);
            seg[S] = (llama_segment){.ad = s[i].ad, .scale = 1.0f, .row_start = T, .row_end = T + k};
            for (int j = done[i]; j < done[i] + k; j++, T++) {
                int sl = pad[i] + npf[i] + j;
                tok[T] = j < nvp[i] ? -(j + 1) : s[i].ids[j - nvp[i]];
                pos[T] = npf[i] + j;
                slot[T] = btab[i * BPS + sl / BS] * BS + sl % BS;
                if (j >= nvp[i]) {
                    dst_seq[NL] = i;
                    dst_row[NL] = j - nvp[i];
                    rows[NL++] = T;
                }
            }
            done[i] += k;
            kvl[S] = pad[i] + npf[i] + done[i];
            kvs[S] = pad[i];
            S++;
        }
        if (S == 0) break;
        qs[S] = T;
        llama_batch b = {.n_tokens = T, .tokens = tok, .positions = pos, .slots = slot, .n_seqs = S,
                         .q_start = qs, .kv_len = kvl, .block_table = bt, .kv_start = kvs, .n_segs = S,
                         .segs = seg, .n_logits = NL, .logit_rows = rows};
        int st = llama_forward(r->c, &b, lg);
        if (st < 0) FAIL("llama_forward: %s", peftd_strerror(st));
        for (int k = 0; k < NL; k++)
            memcpy(s[dst_seq[k]].out + (size_t)dst_row[k] * vocab, lg + (size_t)k * vocab, sizeof(float) * vocab);
    }
    free(lg);
}

static double max_diff(const float *a, const float *b, size_t n) {
    double md = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d;
    }
    return md;
}

/* A virtual-token adapter (prompt / prefix tuning) against peft's logits of the real tokens. */
static void check_virtual(const char *model, const char *kind) {
    char name[64];
    logit_case q;
    snprintf(name, sizeof name, "%s_%s", model, kind);
    logit_case_load(REF, name, &q);
    grun r;
    grun_open(&r, q.model);
    adapter *ad = load_adapter(&r, q.adapter);
    gseq s = {.ad = ad, .ids = q.ids, .n_ids = q.n_ids, .out = malloc(sizeof(float) * q.n_ids * q.vocab)};
    ASSERT(s.out);
    run_batch(&r, &s, 1);
    double md = max_diff(s.out, q.logits, (size_t)q.n_ids * q.vocab);
    printf("    %-16s %d virtual tokens + %d: max |logit diff| %.3g\n", name, ad->n_virtual, q.n_ids, md);
    if (!(md <= TOL)) FAIL("%s: max |logit diff| %.3g > %g", name, md, TOL);
    free(s.out);
    adapter_free(ad);
    grun_close(&r);
    logit_case_free(&q);
}

TEST(gemma2_prompt_tuning) { check_virtual("gemma2", "prompt"); }
TEST(gemma3_prompt_tuning) { check_virtual("gemma3", "prompt"); }
TEST(gemma2_prefix_tuning) { check_virtual("gemma2", "prefix"); }
TEST(gemma3_prefix_tuning) { check_virtual("gemma3", "prefix"); }

/* base, every adapter kind, base again (other prompt) in one batch: each sequence's logits
 * bit-identical to the same sequence run alone. */
static void check_mixed(const char *model) {
    static const char *const kinds[] = {NULL, "lora", "dora", "ia3", "prompt", "prefix", NULL};
    enum { N = 7 };
    char dir[128];
    logit_case q[N];
    grun r;
    snprintf(dir, sizeof dir, "tests/fixtures/gemma/%s", model);
    grun_open(&r, dir);
    adapter *ad[N] = {0};
    gseq s[N], solo;
    for (int i = 0; i < N; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s_%s", model, kinds[i] ? kinds[i] : i ? "p11" : "p24");
        logit_case_load(REF, name, &q[i]);
        if (kinds[i]) ad[i] = load_adapter(&r, q[i].adapter);
        s[i] = (gseq){.ad = ad[i], .ids = q[i].ids, .n_ids = q[i].n_ids,
                      .out = malloc(sizeof(float) * q[i].n_ids * q[i].vocab)};
        ASSERT(s[i].out);
    }
    run_batch(&r, s, N);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        size_t n = (size_t)q[i].n_ids * q[i].vocab;
        solo = s[i];
        solo.out = malloc(sizeof(float) * n);
        ASSERT(solo.out);
        run_batch(&r, &solo, 1);
        if (memcmp(solo.out, s[i].out, sizeof(float) * n) != 0)
            FAIL("%s %s: batch logits differ from solo (max %.3g)", model, kinds[i] ? kinds[i] : "base",
                 max_diff(solo.out, s[i].out, n));
        double md = max_diff(s[i].out, q[i].logits, n);
        if (!(md <= TOL)) FAIL("%s %s in the mixed batch: max |logit diff| %.3g", model, kinds[i] ? kinds[i] : "base", md);
        if (md > worst) worst = md;
        free(solo.out);
    }
    printf("    %s mixed batch of %d: bit-identical to solo, max |logit diff| vs reference %.3g\n", model, N, worst);
    for (int i = 0; i < N; i++) {
        free(s[i].out);
        adapter_free(ad[i]);
        logit_case_free(&q[i]);
    }
    grun_close(&r);
}

TEST(gemma2_mixed_batch) { check_mixed("gemma2"); }
TEST(gemma3_mixed_batch) { check_mixed("gemma3"); }

/* ---- greedy decoding: transformers' generate(do_sample=False), 32 new tokens ---- */

static void check_greedy(const char *model) {
    size_t len;
    char *text = test_read_file(REF, &len);
    if (!text) FAIL("cannot read %s", REF);
    cJSON *root = cJSON_ParseWithLength(text, len);
    ASSERT(root);
    const cJSON *g = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "greedy"), model), *v;
    if (!g) FAIL("%s: no greedy reference for %s", REF, model);
    int32_t ids[64], want[64];
    int n = 0, nw = 0;
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(g, "prompt")) ids[n++] = v->valueint;
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(g, "tokens")) want[nw++] = v->valueint;
    ASSERT_EQ(nw, 32);
    grun r;
    grun_open(&r, cJSON_GetObjectItem(g, "model")->valuestring);
    int vocab = r.m->cfg.vocab_size;
    float *lg = malloc(sizeof(float) * (size_t)vocab);
    ASSERT(lg);
    int32_t btab[BPS], pos[64], slot[64];
    for (int b = 0; b < BPS; b++) btab[b] = 1 + b;
    for (int j = 0; j < 64; j++) {
        pos[j] = j;
        slot[j] = btab[j / BS] * BS + j % BS;
    }
    for (int done = 0, k = 0; k < nw; k++) {
        int t = done == 0 ? n : 1;
        int32_t qs[2] = {0, t}, kvl[1] = {done + t}, row = t - 1;
        llama_batch b = {.n_tokens = t, .tokens = ids + done, .positions = pos + done, .slots = slot + done,
                         .n_seqs = 1, .q_start = qs, .kv_len = kvl, .block_table = btab, .n_logits = 1,
                         .logit_rows = &row};
        ASSERT_EQ(llama_forward(r.c, &b, lg), 0);
        done += t;
        int best = 0;
        for (int i = 1; i < vocab; i++)
            if (lg[i] > lg[best]) best = i;
        if (best != want[k]) FAIL("%s greedy token %d: %d, transformers %d", model, k, best, want[k]);
        ids[n++] = best;
    }
    printf("    %s: 32 greedy tokens identical to transformers\n", model);
    free(lg);
    grun_close(&r);
    cJSON_Delete(root);
    free(text);
}

TEST(gemma2_greedy) { check_greedy("gemma2"); }
TEST(gemma3_greedy) { check_greedy("gemma3"); }

/* Every case on CUDA (one sequence at a time; prefill 3 + decode), against the references. */
TEST(gemma_cuda) {
#ifndef PEFTD_CUDA
    SKIP("no CUDA device (this build has no CUDA backend)");
#else
    if (!kbackend_cuda_available()) SKIP("no CUDA device");
    static const char *const cases[] = {"p5", "p8", "p11", "p17", "p24", "lora", "dora", "ia3", "prompt", "prefix"};
    static const char *const models[] = {"gemma2", "gemma3"};
    USE_CUDA = true;
    for (int mi = 0; mi < 2; mi++) {
        double worst = 0;
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            char name[64];
            logit_case q;
            snprintf(name, sizeof name, "%s_%s", models[mi], cases[ci]);
            logit_case_load(REF, name, &q);
            grun r;
            grun_open(&r, q.model);
            adapter *ad = q.adapter[0] ? load_adapter(&r, q.adapter) : NULL;
            gseq s = {.ad = ad, .ids = q.ids, .n_ids = q.n_ids, .out = malloc(sizeof(float) * q.n_ids * q.vocab)};
            ASSERT(s.out);
            run_batch(&r, &s, 1);
            double md = max_diff(s.out, q.logits, (size_t)q.n_ids * q.vocab);
            if (!(md <= TOL)) FAIL("cuda %s: max |logit diff| %.3g > %g", name, md, TOL);
            if (md > worst) worst = md;
            free(s.out);
            adapter_free(ad);
            grun_close(&r);
            logit_case_free(&q);
        }
        printf("    cuda %s: %zu cases, max |logit diff| %.3g\n", models[mi], sizeof cases / sizeof cases[0], worst);
        check_greedy(models[mi]);
    }
    USE_CUDA = false;
#endif
}

/* The fixtures' models really are what they claim (so the checks above cover those paths). */
TEST(gemma_fixture_configs) {
    char err[1024] = "";
    kbackend *kb = kbackend_cpu_create(1);
    model *m = NULL;
    ASSERT(kb);
    if (model_load("tests/fixtures/gemma/gemma2", kb, &m, err, sizeof err) < 0) FAIL("%s", err);
    const model_config *c = &m->cfg;
    ASSERT(c->gemma && c->embed_scale_virtual && !c->qk_norm && c->tie_word_embeddings);
    ASSERT(c->attn_softcap == 5.0f && c->final_softcap == 3.0f && c->query_pre_attn_scalar == 24.0f);
    ASSERT(c->sliding_window == 8 && c->layer_window[0] && !c->layer_window[1] && c->layer_window[2]);
    ASSERT(c->rope_local_theta == 0 && m->layers[0].post_attn_norm.data && m->layers[2].post_ffn_norm.data);
    model_free(m);
    if (model_load("tests/fixtures/gemma/gemma3", kb, &m, err, sizeof err) < 0) FAIL("%s", err);
    c = &m->cfg;
    ASSERT(c->gemma && !c->embed_scale_virtual && c->qk_norm && c->head_dim == 32);
    ASSERT(c->attn_softcap == 0 && c->final_softcap == 0 && c->query_pre_attn_scalar == 20.0f);
    ASSERT(c->rope_local_theta == 10000.0f && c->rope_theta == 100000.0f && c->rope.kind == ROPE_LINEAR);
    ASSERT(c->layer_window[0] && !c->layer_window[1] && c->layer_window[2] && !c->layer_window[3]);
    ASSERT(m->layers[1].q_norm.data && m->layers[1].k_norm.data);
    model_free(m);
    kbackend_destroy(kb);
}

/* AdapterHub bottleneck adapters sit on the residual stream, which Gemma's post-norms change:
 * refused by name at import (the Pfeiffer fixture has the hidden size of these bases). */
TEST(gemma_refuses_bottleneck) {
    grun r;
    char err[1024] = "";
    adapter *ad = NULL;
    grun_open(&r, "tests/fixtures/gemma/gemma2");
    int rc = model_load_adapter(r.m, "tests/fixtures/adapters/pfeiffer", &ad, err, sizeof err);
    printf("    refused: %s\n", err);
    ASSERT_EQ(rc, PEFTD_EUNSUPPORTED);
    ASSERT(ad == NULL && strstr(err, "bottleneck") && strstr(err, "post-norms"));
    grun_close(&r);
}

/* ---- config.json rules ---- */

static int parse(const char *arch, const char *extra, model_config *cfg, char *err, size_t errlen) {
    char json[2048];
    snprintf(json, sizeof json,
             "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"hidden_size\": 64, "
             "\"intermediate_size\": 128, \"num_hidden_layers\": 12, \"num_attention_heads\": 4, "
             "\"vocab_size\": 512%s}",
             arch, strcmp(arch, "Gemma2ForCausalLM") ? "gemma3_text" : "gemma2", extra);
    return model_config_parse(json, strlen(json), cfg, err, errlen);
}

static bool refused(const char *arch, const char *extra, const char *field) {
    model_config cfg;
    char err[512] = "";
    int rc = parse(arch, extra, &cfg, err, sizeof err);
    printf("    refused: %s\n", err);
    return rc < 0 && strstr(err, field) != NULL;
}

/* Gemma2Config / Gemma3TextConfig defaults (transformers 4.57). */
TEST(gemma_config_defaults) {
    model_config c;
    char err[512] = "";
    ASSERT_EQ(parse("Gemma2ForCausalLM", "", &c, err, sizeof err), 0);
    ASSERT(c.gemma && c.embed_scale_virtual && !c.qk_norm && c.tie_word_embeddings);
    ASSERT(c.head_dim == 256 && c.query_pre_attn_scalar == 256.0f && c.attn_softcap == 50.0f && c.final_softcap == 30.0f);
    ASSERT(c.max_position_embeddings == 8192 && c.sliding_window == 4096 && c.rope_theta == 10000.0f);
    for (int l = 0; l < 12; l++) ASSERT_EQ(c.layer_window[l], l % 2 == 0); /* (i + 1) % 2 != 0 */
    ASSERT_EQ(parse("Gemma2ForCausalLM", ", \"attn_logit_softcapping\": null, \"final_logit_softcapping\": null, "
                    "\"sliding_window\": 100000",
                    &c, err, sizeof err),
              0);
    ASSERT(c.attn_softcap == 0 && c.final_softcap == 0 && c.sliding_window == 0 && !c.layer_window[0]);
    ASSERT(c.layer_local[0] && !c.layer_local[1]);
    ASSERT_EQ(parse("Gemma3ForCausalLM", "", &c, err, sizeof err), 0);
    ASSERT(c.gemma && !c.embed_scale_virtual && c.qk_norm && c.head_dim == 256);
    ASSERT(c.attn_softcap == 0 && c.final_softcap == 0 && c.rope_theta == 1e6f && c.rope_local_theta == 10000.0f);
    for (int l = 0; l < 12; l++) ASSERT_EQ(c.layer_window[l], (l + 1) % 6 != 0); /* pattern 6 */
    ASSERT_EQ(parse("Gemma3ForCausalLM", ", \"sliding_window_pattern\": 3, \"rope_local_base_freq\": 5000", &c, err,
                    sizeof err),
              0);
    for (int l = 0; l < 12; l++) ASSERT_EQ(c.layer_window[l], (l + 1) % 3 != 0);
    ASSERT(c.rope_local_theta == 5000.0f);
}

TEST(gemma_config_refusals) {
    ASSERT(refused("Gemma3ForConditionalGeneration", "", "Gemma3ForConditionalGeneration"));
    ASSERT(refused("Gemma2ForCausalLM", ", \"hidden_activation\": \"gelu\"", "hidden_activation"));
    ASSERT(refused("Gemma3ForCausalLM", ", \"use_bidirectional_attention\": true", "use_bidirectional_attention"));
    ASSERT(refused("Gemma2ForCausalLM", ", \"layer_types\": [\"full_attention\"]", "layer_types"));
    ASSERT(refused("Gemma3ForCausalLM", ", \"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2}",
                   "rope_scaling"));
    ASSERT(refused("Gemma2ForCausalLM", ", \"attn_logit_softcapping\": -1", "attn_logit_softcapping"));
    model_config c;
    char err[512] = "";
    const char *mm = "{\"architectures\": [\"Gemma3ForCausalLM\"], \"model_type\": \"gemma3\", \"hidden_size\": 64, "
                     "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                     "\"vocab_size\": 512}";
    ASSERT(model_config_parse(mm, strlen(mm), &c, err, sizeof err) < 0 && strstr(err, "model_type"));
}

TEST_MAIN(gemma_fixture_configs, gemma_config_defaults, gemma_config_refusals, gemma2_base, gemma3_base, gemma2_lora,
          gemma3_lora, gemma2_dora, gemma3_dora, gemma2_ia3, gemma3_ia3, gemma2_prompt_tuning, gemma3_prompt_tuning,
          gemma2_prefix_tuning, gemma3_prefix_tuning, gemma2_greedy, gemma3_greedy, gemma2_mixed_batch,
          gemma3_mixed_batch, gemma_refuses_bottleneck, gemma_cuda)
