/* tests/unit/test_adapter_kinds.c — the issue-16 adapter kinds on two bases, 32 greedy tokens each
 * (LN tuning, OFT and BOFT: also their own section at the end — blobs on both bases, the engine
 * on the attention-bias base, OFT's and BOFT's factored and dense forms against the same
 * references, refusals, LN tuning on Gemma 2 / 3, OFT / BOFT on Phi-3's fused modules):
 * the PEFT LoRA variants of make_lora_variant_fixtures.py (lora_bias, embed_tokens / lm_head LoRA,
 * ensure_weight_tying, AdaLoRA, P-tuning, prefix_projection; bias all / lora_only on the
 * attention-bias base only) and the AdapterHub kinds beyond seq_bn/double_seq_bn:
 * par_bn (parallel bottleneck), Compacter and Compacter++ (PHM layers materialised at
 * import), AdapterHub LoRA ("add") and IA3 ("scale"), prefix tuning (MLP-reparametrised and
 * flat: the table computed at import; the prompt's positions start at 0) and MAM (prefix +
 * parallel bottleneck in one adapter), made fresh and trained with adapters
 * 1.3.0 by tests/fixtures/adapters/make_hub_fixtures.py on two GQA bases (models/stories260K
 * and tests/fixtures/qwen2/llama_bias, which has attention biases), and the PEFT VeRA / LoHa /
 * LoKr fixtures of make_zoo_fixtures.py (vera and vera_b share one projection; loha with rank /
 * alpha patterns, o_proj dense by the rule; lokr, lokr_full, lokr_factor), served in the LoRA
 * form or as dense deltas per module (adapter_peft_lyco.c). Against the library's
 * reloaded model:
 *   - logits of every prompt row (all cases in one llama_forward, one segment each; and one
 *     case as prefill + one-token decode steps) within TOL, imported from the files and
 *     after a round trip through the store blob;
 *   - 32 greedy tokens through llama_forward and through the engine;
 *   - one engine batch holding every hub kind, a PEFT LoRA, a Pfeiffer bottleneck and base
 *     sequences gives each sequence the tokens and logprobs, bit for bit, it gets alone;
 *   - VeRA / LoHa / LoKr forced to each form (PEFTD_LYCO_FORM) agree with each other and PEFT,
 *     survive their blobs bit for bit; VeRA's projection slices are held once (bytes measured);
 *   - configs that are not served are refused with a line naming the field.
 * TOL 1e-4 as test_adapter_forward.c: f32 math on the stored weights, only summation order
 * differs (Compacter: its weights are formed once in double and rounded to f32 where the
 * library sums the Kronecker terms in f32 each call). A par_bn served as sequential, or an
 * IA3 vector applied to down_proj's input as PEFT does, moves logits by > 0.1 here.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "adapter_store/adapter_blob.h"
#include "adapter_store/adapter_shared.h"
#include "server/engine/engine.h"
#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/adapter_ref.h"
#include "tests/harness/seq_batch.h"
#include "tests/harness/greedy_run.h"
#include "tests/harness/test.h"

#define TOL 1e-4
#define N_GREEDY 32
#define N_KINDS 27
#define N_HUB 8 /* the first N_HUB kinds are AdapterHub's */

static const char *KINDS[N_KINDS] = {
    "hub_par_bn",      "hub_compacter", "hub_compacterpp", "hub_lora",       "hub_ia3",     "hub_prefix",
    "hub_prefix_flat", "hub_mam",       "lora_bias",       "lora_embed_head", "lora_embed_tied", "lora_mts_tied",
    "adalora",         "p_tuning",      "prefix_projection", "vera",         "vera_b",      "loha",
    "lokr",            "lokr_full",     "lokr_factor",  "ln_tuning",   "oft",         "oft_coft",
    "boft",
    "lora_bias_all",   "lora_bias_only",
};
/* the last two exist on the attention-bias base only (they train its biases) */
static bool on_base(int ki, int bi) { return bi == 1 || ki < N_KINDS - 2; }
static const char *BASES[2] = {"models/stories260K", "tests/fixtures/qwen2/llama_bias"};
static const char *FIXDIR[2] = {"tests/fixtures/adapters", "tests/fixtures/adapters_bias_base"};

typedef struct {
    kbackend *kb;
    model *m;
    tokenizer *tok;
} rig;

static void rig_open(rig *r, const char *base) {
    char err[1024] = "";
    memset(r, 0, sizeof *r);
    r->kb = kbackend_cpu_create(2);
    ASSERT(r->kb);
    if (model_load(base, r->kb, &r->m, err, sizeof err) < 0) FAIL("model_load %s: %s", base, err);
    if (tokenizer_load(base, &r->tok, err, sizeof err) < 0) FAIL("tokenizer_load %s: %s", base, err);
}

static void rig_close(rig *r) {
    tokenizer_free(r->tok);
    model_free(r->m);
    kbackend_destroy(r->kb);
}

static adapter *load_ad(rig *r, const char *dir) {
    char err[1024] = "";
    adapter *a = NULL;
    if (model_load_adapter(r->m, dir, &a, err, sizeof err) < 0) FAIL("%s: %s", dir, err);
    return a;
}

/* The adapter after a round trip through its store blob (what an upload serves). */
static adapter *via_blob(rig *r, adapter *a) {
    adapter_base base;
    void *blob = NULL;
    size_t len = 0;
    char err[512] = "";
    adapter *out = NULL;
    ASSERT_EQ(model_adapter_base(r->m, &base), 0);
    ASSERT_EQ(adapter_blob_write_base(a, &base, &blob, &len), 0);
    if (adapter_blob_read(blob, len, &base, &out, err, sizeof err) < 0) FAIL("adapter_blob_read: %s", err);
    if (adapter_install(out, r->kb, err, sizeof err) < 0) FAIL("adapter_install: %s", err);
    free(blob);
    model_adapter_base_free(&base);
    adapter_free(a);
    return out;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double md = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d; /* NaN propagates */
    }
    return md;
}

/* Logits (one batch; prefill + decode) and 32 greedy tokens of one fixture on base bi. */
static void check_kind(int bi, int ki, bool blob) {
    rig R;
    rig_open(&R, BASES[bi]);
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", FIXDIR[bi], KINDS[ki]);
    adapter_ref rf;
    adapter_ref_load(dir, &rf);
    ASSERT_STREQ(rf.base, BASES[bi]);
    adapter *ad = load_ad(&R, dir);
    if (blob) ad = via_blob(&R, ad);
    llama_ctx *c = seq_batch_ctx(R.m);
    seq_spec spec[ADAPTER_REF_MAX_CASES];
    float *out[ADAPTER_REF_MAX_CASES];
    for (int s = 0; s < rf.n_cases; s++) {
        spec[s] = (seq_spec){.ids = rf.ids[s], .n = rf.n_ids[s], .ad = ad};
        out[s] = malloc(sizeof(float) * (size_t)rf.n_ids[s] * rf.vocab);
    }
    seq_batch_prefill(c, R.m, spec, rf.n_cases, out);
    for (int s = 0; s < rf.n_cases; s++) {
        double md = max_diff(out[s], rf.logits[s], (size_t)rf.n_ids[s] * rf.vocab);
        printf("    %-16s %-34s%s case %d (%2d tokens): max |logit diff| %.3g\n", KINDS[ki], BASES[bi],
               blob ? " blob" : "", s, rf.n_ids[s], md);
        if (!(md <= TOL)) FAIL("%s on %s case %d: max |logit diff| %.3g > %g", KINDS[ki], BASES[bi], s, md, TOL);
    }
    int last = rf.n_cases - 1; /* the longest prompt, 3 tokens prefilled then decoded */
    seq_prefill_decode(c, R.m, &spec[last], 3, out[last]);
    double md = max_diff(out[last], rf.logits[last], (size_t)rf.n_ids[last] * rf.vocab);
    if (!(md <= TOL)) FAIL("%s on %s: prefill+decode max |logit diff| %.3g > %g", KINDS[ki], BASES[bi], md, TOL);
    for (int s = 0; s < rf.n_cases; s++) {
        int32_t g[N_GREEDY];
        ASSERT_EQ(rf.n_greedy[s], N_GREEDY);
        seq_greedy(c, R.m, &spec[s], N_GREEDY, g);
        for (int t = 0; t < N_GREEDY; t++)
            if (g[t] != rf.greedy[s][t])
                FAIL("%s on %s case %d: greedy token %d is %d, the library says %d", KINDS[ki], BASES[bi], s, t, g[t],
                     rf.greedy[s][t]);
        free(out[s]);
    }
    llama_ctx_free(c);
    adapter_free(ad);
    adapter_ref_free(&rf);
    rig_close(&R);
}

TEST(par_bn) { check_kind(0, 0, false), check_kind(1, 0, false); }
TEST(compacter) { check_kind(0, 1, false), check_kind(1, 1, false); }
TEST(compacter_plus_plus) { check_kind(0, 2, false), check_kind(1, 2, false); }
TEST(hub_lora) { check_kind(0, 3, false), check_kind(1, 3, false); }
TEST(hub_ia3) { check_kind(0, 4, false), check_kind(1, 4, false); }
TEST(hub_prefix) { check_kind(0, 5, false), check_kind(1, 5, false); }
TEST(hub_prefix_flat) { check_kind(0, 6, false), check_kind(1, 6, false); }
TEST(hub_mam) { check_kind(0, 7, false), check_kind(1, 7, false); }
TEST(peft_lora_variants_both_bases) {
    for (int k = N_HUB; k < N_KINDS; k++)
        for (int b = 0; b < 2; b++)
            if (on_base(k, b)) check_kind(b, k, false);
}
TEST(after_blob_round_trip) {
    for (int k = 0; k < N_KINDS; k++) check_kind(on_base(k, k % 2) ? k % 2 : 1, k, true);
}

/* ---- refusals: options that change the math are named, never served wrong */

/* A copy of fixture `name` in a fresh directory with config[field] = json (NULL: removed); the
 * config is AdapterHub's "config" object, or PEFT's top level for the PEFT kinds. */
static char *edited_copy(const char *name, const char *field, const char *json) {
    char src[256], *dir = malloc(64);
    snprintf(dir, 64, "/tmp/peftd-hub-XXXXXX");
    ASSERT(mkdtemp(dir));
    bool hub = !strncmp(name, "hub_", 4);
    const char *const files[] = {"adapter_config.json", hub ? "adapter.safetensors" : "adapter_model.safetensors"};
    for (int i = 0; i < 2; i++) {
        size_t len;
        snprintf(src, sizeof src, "%s/%s/%s", FIXDIR[0], name, files[i]);
        char *text = test_read_file(src, &len), path[128];
        ASSERT(text);
        if (i == 0) {
            cJSON *root = cJSON_ParseWithLength(text, len), *cfg = hub ? cJSON_GetObjectItem(root, "config") : root;
            cJSON_DeleteItemFromObject(cfg, field);
            if (json) cJSON_AddItemToObject(cfg, field, cJSON_Parse(json));
            free(text);
            text = cJSON_PrintUnformatted(root);
            len = strlen(text);
            cJSON_Delete(root);
        }
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        FILE *f = fopen(path, "wb");
        ASSERT(f && fwrite(text, 1, len, f) == len);
        fclose(f);
        free(text);
    }
    return dir;
}

static void refused(rig *R, const char *name, const char *field, const char *json, const char *want) {
    char *dir = edited_copy(name, field, json), err[1024] = "", cmd[160];
    adapter *a = NULL;
    int st = model_load_adapter(R->m, dir, &a, err, sizeof err);
    if (st >= 0) FAIL("%s with config.%s = %s loaded", name, field, json ? json : "(absent)");
    if (!strstr(err, want)) FAIL("%s with config.%s = %s: message '%s' does not name '%s'", name, field, json, err, want);
    printf("    refused: %s\n", err);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ASSERT_EQ(system(cmd), 0);
    free(dir);
}

TEST(refusals_name_the_field) {
    rig R;
    rig_open(&R, BASES[0]);
    refused(&R, "hub_lora", "use_gating", "true", "use_gating");
    refused(&R, "hub_lora", "use_dora", "true", "use_dora");
    refused(&R, "hub_lora", "vera_d", "0.1", "vera_d");
    refused(&R, "hub_lora", "composition_mode", "\"mul\"", "composition_mode");
    refused(&R, "hub_lora", "attn_matrices", "[\"q\", \"o\"]", "attn_matrices");
    refused(&R, "hub_lora", "r", "8", "lora_A"); /* the tensors say 4 */
    refused(&R, "hub_ia3", "r", "2", "r 1");
    refused(&R, "hub_par_bn", "original_ln_after", "false", "original_ln_after");
    refused(&R, "hub_compacter", "phm_dim", "3", "phm_dim");
    refused(&R, "hub_compacter", "shared_phm_rule", "false", "phm_rule");
    refused(&R, "hub_prefix", "use_gating", "true", "use_gating");
    refused(&R, "hub_prefix", "leave_out", "[1]", "leave_out");
    refused(&R, "hub_prefix", "prefix_length", "7", "wte.weight");
    refused(&R, "hub_compacter", "architecture", "\"union\"", "union");
    refused(&R, "hub_mam", "configs", "[{\"architecture\": \"lora\"}]", "lora");
    /* VeRA / LoHa / LoKr: what is not served is named, never served wrong */
    refused(&R, "vera", "save_projection", "false", "save_projection");
    refused(&R, "vera", "bias", "\"all\"", "'bias'");
    refused(&R, "vera", "fan_in_fan_out", "true", "fan_in_fan_out");
    refused(&R, "vera", "r", "8", "vera_A"); /* the tensors say 16 */
    refused(&R, "loha", "use_effective_conv2d", "true", "use_effective_conv2d");
    refused(&R, "lokr", "use_effective_conv2d", "true", "use_effective_conv2d");
    refused(&R, "lokr", "task_type", "\"SEQ_2_SEQ_LM\"", "task_type");
    refused(&R, "loha", "r", "3", "hada_w1_a"); /* q_proj's tensors say 4 */
    rig_close(&R);
}

/* VeRA's projection slices are held once per process (adapter_shared.h): the vera and vera_b
 * fixtures share one projection (same PRNG key, r, widths), so their modules of one input width
 * read the same A, held once however many adapters and modules read it; copying it per module
 * (PEFTD_VERA_SHARED=0) gives bit-identical logits in one batch, for more bytes per adapter; a
 * blob writes each slice once and reading it back finds the held slice. */
TEST(vera_projection_held_once) {
    rig R;
    rig_open(&R, BASES[0]);
    int e0, e1, e2;
    size_t b0, b1;
    adapter__shared_stats(&e0, &b0);
    adapter *v[2] = {load_ad(&R, "tests/fixtures/adapters/vera"), load_ad(&R, "tests/fixtures/adapters/vera_b")};
    adapter__shared_stats(&e1, &b1);
    ASSERT_EQ(e1 - e0, 2); /* vera_A[:, :64] and vera_A[:, :172] */
    int same = 0;
    for (int i = 0; i < R.m->cfg.n_layers * AMOD_COUNT; i++)
        for (int j = 0; j < R.m->cfg.n_layers * AMOD_COUNT; j++) {
            const adapter_lora *x = &v[0]->lora[i], *y = &v[1]->lora[j];
            if (!x->rank || !y->rank || x->a.cols != y->a.cols) continue;
            ASSERT(x->a.data == y->a.data);
            same++;
        }
    ASSERT(same > 0);
    setenv("PEFTD_VERA_SHARED", "0", 1);
    adapter *u[2] = {load_ad(&R, "tests/fixtures/adapters/vera"), load_ad(&R, "tests/fixtures/adapters/vera_b")};
    unsetenv("PEFTD_VERA_SHARED");
    adapter__shared_stats(&e2, NULL);
    ASSERT_EQ(e2, e1);
    size_t own[4], sh[4], blob_len[4];
    adapter *all[4] = {v[0], v[1], u[0], u[1]};
    for (int k = 0; k < 4; k++) {
        adapter_bytes_held(all[k], &own[k], &sh[k]);
        adapter_base base;
        void *blob = NULL;
        ASSERT_EQ(model_adapter_base(R.m, &base), 0);
        ASSERT_EQ(adapter_blob_write_base(all[k], &base, &blob, &blob_len[k]), 0);
        if (k < 2) { /* read back: the slices are found, not added */
            adapter *w = NULL;
            char err[512];
            if (adapter_blob_read(blob, blob_len[k], &base, &w, err, sizeof err) < 0) FAIL("blob: %s", err);
            adapter__shared_stats(&e2, NULL);
            ASSERT_EQ(e2, e1);
            for (int i = 0; i < R.m->cfg.n_layers * AMOD_COUNT; i++) ASSERT(w->lora[i].a.data == all[k]->lora[i].a.data);
            adapter_free(w);
        }
        free(blob);
        model_adapter_base_free(&base);
    }
    ASSERT_EQ(sh[2] + sh[3], 0);
    ASSERT_EQ(sh[0], b1 - b0);
    ASSERT_EQ(sh[1], b1 - b0);
    for (int k = 0; k < 2; k++)
        printf("    %-7s bytes held: shared %zu own + %zu of slices held once (2 adapters: %zu each on average), "
               "unshared %zu; blob %zu vs %zu\n",
               k ? "vera_b" : "vera", own[k], sh[k], own[k] + sh[k] / 2, own[k + 2], blob_len[k], blob_len[k + 2]);
    ASSERT(own[2] > own[0] + sh[0] && own[3] > own[1] + sh[1]);
    adapter_ref rf;
    adapter_ref_load("tests/fixtures/adapters/vera", &rf);
    int last = rf.n_cases - 1;
    size_t nv = (size_t)rf.n_ids[last] * rf.vocab;
    llama_ctx *c = seq_batch_ctx(R.m);
    seq_spec sp[4];
    float *o[4];
    for (int k = 0; k < 4; k++) {
        sp[k] = (seq_spec){.ids = rf.ids[last], .n = rf.n_ids[last], .ad = all[k]};
        ASSERT((o[k] = malloc(sizeof(float) * nv)));
    }
    seq_batch_prefill(c, R.m, sp, 4, o);
    ASSERT(!memcmp(o[0], o[2], sizeof(float) * nv));
    ASSERT(!memcmp(o[1], o[3], sizeof(float) * nv));
    ASSERT(max_diff(o[0], rf.logits[last], nv) <= TOL);
    ASSERT(max_diff(o[0], o[1], nv) > 1e-3); /* two adapters, one projection */
    for (int k = 0; k < 4; k++) {
        free(o[k]);
        adapter_free(all[k]);
    }
    adapter__shared_stats(&e2, NULL);
    ASSERT_EQ(e2, e0); /* the last holder gone, the slices are freed */
    llama_ctx_free(c);
    adapter_ref_free(&rf);
    rig_close(&R);
}

/* ---- the engine: greedy tokens and one mixed batch */

typedef greedy_run run;

static void submit(engine *e, run *rn, const int32_t *ids, int n, const adapter *ad) {
    greedy_submit(e, rn, ids, n, N_GREEDY, ad, 1.0f, NULL);
}

static void collect(run *rn) { greedy_collect(rn, NULL, 0); }

/* ads[0..na) on rig R (+ base sequences), P prompts each: alone, each of the first nk (refs
 * rf, names for messages) gives the library's 32 greedy tokens; then all together in one batch,
 * every sequence its solo tokens and logprobs bit for bit. */
enum { ENGINE_P = 3, ENGINE_MAX_AD = 32 };
static void engine_alone_together(rig *R, adapter *const *ads, int na, const adapter_ref *rf, int nk,
                                  const char *const *names, const char *where) {
    ASSERT(na <= ENGINE_MAX_AD);
    const int P = ENGINE_P, N = (na + 1) * P;
    engine_config ec;
    engine_config_default(&ec);
    ec.max_seqs = N;
    ec.max_batch_tokens = 64;
    ec.kv_cache_mb = 64;
    engine *e = NULL;
    char err[512];
    if (engine_create(&ec, R->m, R->kb, R->tok, &e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    ASSERT_EQ(engine_start(e), 0);
    static run alone[(ENGINE_MAX_AD + 1) * ENGINE_P], together[(ENGINE_MAX_AD + 1) * ENGINE_P];
    for (int i = 0; i < N; i++) {
        int a = i / P, k = i % P;
        submit(e, &alone[i], rf[0].ids[k], rf[0].n_ids[k], a < na ? ads[a] : NULL);
        collect(&alone[i]);
        ASSERT_EQ(alone[i].n, N_GREEDY);
        if (a < nk)
            for (int t = 0; t < N_GREEDY; t++)
                if (alone[i].ids[t] != rf[a].greedy[k][t])
                    FAIL("%s case %d (engine, %s): greedy token %d is %d, the library says %d", names[a], k, where, t,
                         alone[i].ids[t], rf[a].greedy[k][t]);
    }
    for (int i = 0; i < N; i++)
        submit(e, &together[i], rf[0].ids[i % P], rf[0].n_ids[i % P], i / P < na ? ads[i / P] : NULL);
    for (int i = 0; i < N; i++) collect(&together[i]);
    for (int i = 0; i < N; i++)
        for (int t = 0; t < N_GREEDY; t++)
            if (alone[i].ids[t] != together[i].ids[t] || memcmp(&alone[i].lps[t], &together[i].lps[t], 4))
                FAIL("sequence %d (adapter %d): token %d (or its logprob, bit for bit) differs in the mixed batch", i,
                     i / P, t);
    engine_free(e);
}

TEST(engine_greedy_and_mixed_batch) {
    enum { NK = N_KINDS - 2, NA = NK + 2 }; /* kinds on stories260K + a PEFT LoRA + Pfeiffer, + base */
    rig R;
    rig_open(&R, BASES[0]);
    adapter *ads[NA];
    adapter_ref rf[NK];
    char dir[256];
    for (int k = 0; k < NK; k++) {
        snprintf(dir, sizeof dir, "%s/%s", FIXDIR[0], KINDS[k]);
        ads[k] = load_ad(&R, dir);
        adapter_ref_load(dir, &rf[k]);
    }
    ads[NK] = load_ad(&R, "tests/fixtures/adapters/lora_r8_all");
    ads[NK + 1] = load_ad(&R, "tests/fixtures/adapters/pfeiffer");
    engine_alone_together(&R, ads, NA, rf, NK, KINDS, BASES[0]);
    for (int i = 0; i < NA; i++) adapter_free(ads[i]);
    for (int k = 0; k < NK; k++) adapter_ref_free(&rf[k]);
    rig_close(&R);
}

/* VeRA's, LoHa's and LoKr's two forms (adapter_peft_lyco.c): every module forced to the LoRA form,
 * every module forced dense, and the rule's mix give the library's logits and agree with each
 * other, also at a request scale of 0.5 (dense rows scaled through the scratch path) in one
 * batch, and each form gives the same logits bit for bit after a round trip through its blob
 * (the dense deltas are a blob field). Within TOL of the library, and of each other within
 * forms_tol(): 1e-5, or 8 f32 ulps of the largest |logit| where that is more (stories260K's
 * logits reach 18, ulp 1.9e-6: its forms differ by up to 6.5 ulps = 1.24e-5; the bias base's by
 * 1.2e-6). That difference is summation order only — x·ΔWᵀ vs (x·Aᵀ)·Bᵀ in f32, each rounded
 * differently through 5 layers — and smaller than what either form shows against PEFT itself
 * (1.5e-5 to 2.2e-5 there, like every LoRA kind). */
static double forms_tol(const adapter_ref *rf) {
    float mx = 0;
    for (int s = 0; s < rf->n_cases; s++)
        for (size_t i = 0; i < (size_t)rf->n_ids[s] * rf->vocab; i++) mx = fmaxf(mx, fabsf(rf->logits[s][i]));
    double ulp8 = 8 * (nextafterf(mx, INFINITY) - mx);
    return ulp8 > 1e-5 ? ulp8 : 1e-5;
}

TEST(lyco_forms_agree) {
    static const char *const forms[3] = {"lora", "dense", "auto"};
    for (int bi = 0; bi < 2; bi++)
        for (int ki = N_HUB; ki < N_KINDS; ki++) {
            if ((strncmp(KINDS[ki], "lokr", 4) && strncmp(KINDS[ki], "vera", 4) && strcmp(KINDS[ki], "loha")) ||
                !on_base(ki, bi))
                continue;
            rig R;
            rig_open(&R, BASES[bi]);
            char dir[256];
            snprintf(dir, sizeof dir, "%s/%s", FIXDIR[bi], KINDS[ki]);
            adapter_ref rf;
            adapter_ref_load(dir, &rf);
            int last = rf.n_cases - 1;
            size_t nv = (size_t)rf.n_ids[last] * rf.vocab;
            float *out[3][2];
            adapter *ad[3];
            llama_ctx *c = seq_batch_ctx(R.m);
            for (int f = 0; f < 3; f++) {
                setenv("PEFTD_LYCO_FORM", forms[f], 1);
                ad[f] = load_ad(&R, dir);
                for (int s = 0; s < 2; s++) ASSERT((out[f][s] = malloc(sizeof(float) * nv)));
            }
            unsetenv("PEFTD_LYCO_FORM");
            /* the three forms side by side in one batch, at scale 1 and at 0.5 */
            for (int s = 0; s < 2; s++) {
                seq_spec sp[3];
                float *o[3];
                for (int f = 0; f < 3; f++) {
                    sp[f] = (seq_spec){.ids = rf.ids[last], .n = rf.n_ids[last], .ad = ad[f], .scale = s ? 0.5f : 1.0f};
                    o[f] = out[f][s];
                }
                seq_batch_prefill(c, R.m, sp, 3, o);
            }
            double ftol = forms_tol(&rf);
            for (int f = 0; f < 3; f++) {
                double md = max_diff(out[f][0], rf.logits[last], nv), mf = max_diff(out[f][0], out[0][0], nv),
                       mh = max_diff(out[f][1], out[0][1], nv);
                size_t own, shared;
                adapter_bytes_held(ad[f], &own, &shared);
                printf("    %-11s on %-32s form %-5s: vs peft %.3g, vs the LoRA form %.3g (scale 0.5: %.3g; "
                       "tol %.3g); bytes held %zu + shared %zu\n",
                       KINDS[ki], BASES[bi], forms[f], md, mf, mh, ftol, own, shared);
                if (!(md <= TOL) || !(mf <= ftol) || !(mh <= ftol))
                    FAIL("%s form %s: %.3g vs peft, %.3g / %.3g vs the LoRA form", KINDS[ki], forms[f], md, mf, mh);
            }
            ASSERT(max_diff(out[0][1], out[0][0], nv) > 1e-3); /* scale 0.5 really changes the output */
            seq_spec sp[3]; /* each form through its blob, the same batch again: bit for bit */
            float *o[3];
            for (int f = 0; f < 3; f++) {
                ad[f] = via_blob(&R, ad[f]);
                sp[f] = (seq_spec){.ids = rf.ids[last], .n = rf.n_ids[last], .ad = ad[f], .scale = 1.0f};
                o[f] = out[f][1];
            }
            seq_batch_prefill(c, R.m, sp, 3, o);
            for (int f = 0; f < 3; f++)
                if (memcmp(out[f][1], out[f][0], sizeof(float) * nv))
                    FAIL("%s form %s: logits differ after the blob round trip", KINDS[ki], forms[f]);
            for (int f = 0; f < 3; f++) {
                adapter_free(ad[f]);
                free(out[f][0]);
                free(out[f][1]);
            }
            llama_ctx_free(c);
            adapter_ref_free(&rf);
            rig_close(&R);
        }
}

/* ---- LN tuning, OFT and BOFT (tests/fixtures/adapters/make_rotation_fixtures.py): the blob on
 * both bases (after_blob_round_trip takes one base per kind), the engine's greedy tokens and a
 * mixed batch on the attention-bias base (engine_greedy_and_mixed_batch runs stories260K), OFT's
 * and BOFT's two forms, and refusals. */

static const char *const ROT_KINDS[] = {"ln_tuning", "oft", "oft_coft", "boft"};
#define N_ROT 4

static int kind_index(const char *name) {
    for (int k = 0; k < N_KINDS; k++)
        if (!strcmp(KINDS[k], name)) return k;
    FAIL("fixture %s is not in KINDS", name);
    return -1;
}

TEST(rotation_kinds_blob_both_bases) {
    for (int r = 0; r < N_ROT; r++)
        for (int b = 0; b < 2; b++) check_kind(b, kind_index(ROT_KINDS[r]), true);
}

/* On the attention-bias base: each rotation kind's 32 greedy tokens through the engine equal the
 * library's, and one batch of them all (3 prompts each) + lora_bias + base sequences gives every
 * sequence its solo tokens and logprobs bit for bit. */
TEST(rotation_kinds_engine_bias_base) {
    enum { NA = N_ROT + 1 };
    rig R;
    rig_open(&R, BASES[1]);
    adapter *ads[NA];
    adapter_ref rf[N_ROT];
    char dir[256];
    for (int k = 0; k < N_ROT; k++) {
        snprintf(dir, sizeof dir, "%s/%s", FIXDIR[1], ROT_KINDS[k]);
        ads[k] = load_ad(&R, dir);
        adapter_ref_load(dir, &rf[k]);
    }
    snprintf(dir, sizeof dir, "%s/lora_bias", FIXDIR[1]);
    ads[N_ROT] = load_ad(&R, dir);
    engine_alone_together(&R, ads, NA, rf, N_ROT, ROT_KINDS, BASES[1]);
    for (int i = 0; i < NA; i++) adapter_free(ads[i]);
    for (int k = 0; k < N_ROT; k++) adapter_ref_free(&rf[k]);
    rig_close(&R);
}

/* OFT's and BOFT's two forms (adapter_rot.c's rule): every module factored (seg_rotate), every
 * module dense (ΔW = diag(s)·W·Rotᵀ − W from the base weights) and the rule's choice, side by
 * side in one batch on both bases: each within TOL of the same library reference, and of the
 * factored form within 5e-5 (f32 rounding of ΔW vs the rotated activations), and each form's
 * logits bit for bit the same after its blob round trip. The fixtures' shapes (blocks of 4 to
 * 16, in = 64 to 172) pick the factored form. */
static void rot_form_shape(const adapter *a, int form) {
    int rot = 0, dense = 0;
    for (int i = 0; i < a->n_layers * AMOD_COUNT; i++) {
        rot += a->rot && a->rot[i].n_factors > 0;
        dense += a->lora && a->lora[i].delta.data != NULL;
        ASSERT(!(a->rot && a->rot[i].n_factors > 0 && a->lora && a->lora[i].delta.data)); /* one form per module */
    }
    ASSERT(form == 1 ? rot == 0 && dense > 0 : rot > 0 && dense == 0);
}

TEST(rotation_forms_agree) {
    static const char *const forms[3] = {"factored", "dense", "auto"};
    static const char *const names[3] = {"oft", "oft_coft", "boft"};
    for (int bi = 0; bi < 2; bi++)
        for (int ni = 0; ni < 3; ni++) {
            rig R;
            rig_open(&R, BASES[bi]);
            char dir[256];
            snprintf(dir, sizeof dir, "%s/%s", FIXDIR[bi], names[ni]);
            adapter_ref rf;
            adapter_ref_load(dir, &rf);
            int last = rf.n_cases - 1;
            size_t nv = (size_t)rf.n_ids[last] * rf.vocab;
            adapter *ad[3];
            float *out[3], *again[3];
            seq_spec sp[3];
            for (int f = 0; f < 3; f++) {
                setenv("PEFTD_ROT_FORM", forms[f], 1);
                ad[f] = load_ad(&R, dir);
                rot_form_shape(ad[f], f);
                ASSERT((out[f] = malloc(sizeof(float) * nv)) && (again[f] = malloc(sizeof(float) * nv)));
                sp[f] = (seq_spec){.ids = rf.ids[last], .n = rf.n_ids[last], .ad = ad[f]};
            }
            unsetenv("PEFTD_ROT_FORM");
            if (ni == 2) {
                const adapter_rot *q0 = &ad[0]->rot[AMOD_Q];
                /* PEFT's factor 0 (applied last) is the identity permutation */
                ASSERT(q0->n_factors == 3 && !q0->f[2].perm && q0->f[0].perm && q0->f[1].perm);
                ASSERT(q0->out_scale && !ad[1]->rot[AMOD_Q].out_scale);
            }
            llama_ctx *c = seq_batch_ctx(R.m);
            seq_batch_prefill(c, R.m, sp, 3, out);
            for (int f = 0; f < 3; f++) {
                double md = max_diff(out[f], rf.logits[last], nv), mf = max_diff(out[f], out[0], nv);
                printf("    %-8s on %-32s form %-8s: vs peft %.3g, vs the factored form %.3g\n", names[ni],
                       BASES[bi], forms[f], md, mf);
                if (!(md <= TOL) || !(mf <= 5e-5))
                    FAIL("%s form %s: %.3g vs peft, %.3g vs factored", names[ni], forms[f], md, mf);
                ad[f] = via_blob(&R, ad[f]);
                rot_form_shape(ad[f], f);
                sp[f].ad = ad[f];
            }
            seq_batch_prefill(c, R.m, sp, 3, again);
            for (int f = 0; f < 3; f++)
                if (memcmp(again[f], out[f], sizeof(float) * nv))
                    FAIL("%s form %s: logits differ after the blob round trip", names[ni], forms[f]);
            for (int f = 0; f < 3; f++) adapter_free(ad[f]), free(out[f]), free(again[f]);
            llama_ctx_free(c);
            adapter_ref_free(&rf);
            rig_close(&R);
        }
}

/* Loads an edited copy (edited_copy, stories260K): want NULL = must load; else must be refused
 * naming `want`. */
static void peft_edit(rig *R, const char *name, const char *field, const char *json, const char *want) {
    char *dir = edited_copy(name, field, json), err[1024] = "", cmd[160];
    adapter *a = NULL;
    int st = model_load_adapter(R->m, dir, &a, err, sizeof err);
    if (!want && st < 0) FAIL("%s with %s = %s: refused: %s", name, field, json ? json : "(absent)", err);
    if (want && st >= 0) FAIL("%s with %s = %s loaded", name, field, json ? json : "(absent)");
    if (want && !strstr(err, want)) FAIL("%s with %s = %s: message '%s' does not name '%s'", name, field, json, err, want);
    if (want) printf("    refused: %s\n", err);
    adapter_free(a);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ASSERT_EQ(system(cmd), 0);
    free(dir);
}

TEST(rotation_refusals_name_the_field) {
    rig R;
    rig_open(&R, BASES[0]);
    peft_edit(&R, "oft", "bias", "\"all\"", "bias");
    peft_edit(&R, "oft", "r", "4", "oft_block_size");                     /* r and oft_block_size both set */
    peft_edit(&R, "oft", "oft_block_size", "8", "oft_R");                 /* the tensors hold blocks of 16 */
    peft_edit(&R, "oft", "fan_in_fan_out", "true", "fan_in_fan_out");
    peft_edit(&R, "oft", "target_modules", "[\"q_proj\", \"lm_head\"]", "lm_head");
    peft_edit(&R, "oft", "module_dropout", "0.1", NULL);                  /* training-only: served */
    peft_edit(&R, "oft_coft", "eps", "0", "eps");
    peft_edit(&R, "boft", "bias", "\"boft_only\"", "bias");
    peft_edit(&R, "boft", "boft_block_size", "8", "boft_R");
    peft_edit(&R, "boft", "boft_n_butterfly_factor", "2", "boft_R");      /* the tensors hold 3 factors */
    peft_edit(&R, "boft", "boft_dropout", "0.1", NULL);                   /* training-only: served */
    peft_edit(&R, "ln_tuning", "target_modules", "[\"q_norm\"]", "q_norm");
    /* no adapter scale on these kinds (PEFT's OFT / BOFT set_scale warns and keeps 1) */
    for (int r = 0; r < N_ROT; r++) {
        char dir[256], err[256];
        snprintf(dir, sizeof dir, "%s/%s", FIXDIR[0], ROT_KINDS[r]);
        adapter *a = load_ad(&R, dir);
        ASSERT_EQ(adapter_check_scale(a, 0.5, err, sizeof err), PEFTD_EINVAL);
        ASSERT(strstr(err, "adapter_scale") && strstr(err, adapter_kind_name(a->kind)));
        ASSERT_STREQ(adapter_kind_name(a->kind), r == 0 ? "ln_tuning" : r == 3 ? "boft" : "oft");
        adapter_free(a);
    }
    rig_close(&R);
}

/* A fixture on a third base (no tokenizer needed): logits (one batch and prefill + decode)
 * within TOL, 32 greedy tokens, the blob, and one batch of the adapter's cases beside base rows
 * and the base's LoRA fixture `lora`, bit-identical to each alone. Returns nothing; the adapter
 * is checked by `probe` first (NULL: no extra check). */
static void check_fixture(const char *base, const char *dir, const char *lora, void (*probe)(const adapter *)) {
    char err[512] = "";
    rig R = {0};
    ASSERT((R.kb = kbackend_cpu_create(2)));
    if (model_load(base, R.kb, &R.m, err, sizeof err) < 0) FAIL("model_load %s: %s", base, err);
    adapter_ref rf;
    adapter_ref_load(dir, &rf);
    ASSERT_STREQ(rf.base, base);
    adapter *ad = load_ad(&R, dir), *lo = load_ad(&R, lora);
    if (probe) probe(ad);
    for (int blob = 0; blob < 2; blob++) {
        if (blob) ad = via_blob(&R, ad);
        llama_ctx *c = seq_batch_ctx(R.m);
        seq_spec spec[ADAPTER_REF_MAX_CASES * 3];
        float *out[ADAPTER_REF_MAX_CASES * 3], *solo;
        int n = 0;
        for (int k = 0; k < rf.n_cases; k++) /* the adapter's cases, then base and LoRA rows between */
            for (int j = 0; j < 3; j++) {
                spec[n] = (seq_spec){.ids = rf.ids[k], .n = rf.n_ids[k], .ad = j == 0 ? ad : j == 1 ? NULL : lo};
                ASSERT((out[n] = malloc(sizeof(float) * (size_t)rf.n_ids[k] * rf.vocab)));
                n++;
            }
        seq_batch_prefill(c, R.m, spec, n, out);
        for (int i = 0; i < n; i++) {
            size_t nv = (size_t)spec[i].n * rf.vocab;
            ASSERT((solo = malloc(sizeof(float) * nv)));
            seq_batch_prefill(c, R.m, &spec[i], 1, &solo);
            if (memcmp(solo, out[i], nv * sizeof(float)))
                FAIL("%s: sequence %d (%s) differs alone and in the mixed batch", dir, i,
                     spec[i].ad == ad ? adapter_kind_name(ad->kind) : spec[i].ad ? "lora" : "base");
            free(solo);
            if (spec[i].ad != ad) continue;
            double md = max_diff(out[i], rf.logits[i / 3], nv);
            printf("    %-16s %-28s%s case %d (%2d tokens): max |logit diff| %.3g\n", strrchr(dir, '/') + 1, base,
                   blob ? " blob" : "", i / 3, spec[i].n, md);
            if (!(md <= TOL)) FAIL("%s case %d: max |logit diff| %.3g > %g", dir, i / 3, md, TOL);
        }
        int last = rf.n_cases - 1;
        seq_spec one = {.ids = rf.ids[last], .n = rf.n_ids[last], .ad = ad};
        seq_prefill_decode(c, R.m, &one, 3, out[3 * last]); /* the last case's own buffer */
        double md = max_diff(out[3 * last], rf.logits[last], (size_t)rf.n_ids[last] * rf.vocab);
        if (!(md <= TOL)) FAIL("%s: prefill+decode max |logit diff| %.3g > %g", dir, md, TOL);
        for (int k = 0; k < rf.n_cases; k++) {
            int32_t g[N_GREEDY];
            seq_spec sk = {.ids = rf.ids[k], .n = rf.n_ids[k], .ad = ad};
            seq_greedy(c, R.m, &sk, N_GREEDY, g);
            for (int t = 0; t < N_GREEDY; t++)
                if (g[t] != rf.greedy[k][t])
                    FAIL("%s case %d: greedy token %d is %d, the library says %d", dir, k, t, g[t], rf.greedy[k][t]);
        }
        for (int i = 0; i < n; i++) free(out[i]);
        llama_ctx_free(c);
    }
    adapter_free(ad);
    adapter_free(lo);
    adapter_ref_free(&rf);
    model_free(R.m);
    kbackend_destroy(R.kb);
}

/* LN tuning on Gemma 2 / Gemma 3 (tests/fixtures/gemma/<model>_ln_tuning): all 4 L + 1 norms,
 * the post-norms on the sub-layer outputs included, stored as the base's 1 + w. */
static void gemma_post_norms(const adapter *a) {
    ASSERT(a->ln[adapter_ln_post(a, 0, 0)].data && a->ln[adapter_ln_post(a, 0, 1)].data);
}
TEST(ln_tuning_gemma2) {
    check_fixture("tests/fixtures/gemma/gemma2", "tests/fixtures/gemma/gemma2_ln_tuning", "tests/fixtures/gemma/gemma2_lora",
                  gemma_post_norms);
}
TEST(ln_tuning_gemma3) {
    check_fixture("tests/fixtures/gemma/gemma3", "tests/fixtures/gemma/gemma3_ln_tuning", "tests/fixtures/gemma/gemma3_lora",
                  gemma_post_norms);
}

/* OFT and BOFT on Phi-3's fused qkv_proj / gate_up_proj (tests/fixtures/phi3/oft, boft): one
 * rotation of the shared input per fused module (q, k and v each rotate it alike), BOFT's boft_s
 * split by the fused output's rows. */
static void phi3_fused(const adapter *a) {
    const adapter_rot *q = &a->rot[AMOD_Q], *v = &a->rot[AMOD_V];
    ASSERT(q->n_factors > 0 && q->n_factors == v->n_factors && q->f[0].block == v->f[0].block);
    ASSERT(!memcmp(q->f[0].r.data, v->f[0].r.data, (size_t)(q->f[0].r.rows * q->f[0].r.cols) * sizeof(float)));
    ASSERT(a->kind == ADAPTER_OFT || (q->out_scale && v->out_scale && q->out_scale[0] != v->out_scale[0]));
}
/* The dense form on the fused modules: each part's delta from its own rows of the fused weight
 * (BOFT: its rows of boft_s folded in), nothing rotated. */
static void phi3_fused_dense(const adapter *a) {
    ASSERT(a->lora && a->lora[AMOD_Q].delta.data && a->lora[AMOD_V].delta.data && a->lora[AMOD_UP].delta.data);
    ASSERT(!a->rot[AMOD_Q].n_factors && !a->rot[AMOD_Q].out_scale);
}
TEST(oft_boft_phi3_fused) {
    check_fixture("tests/fixtures/phi3/model", "tests/fixtures/phi3/oft", "tests/fixtures/phi3/lora", phi3_fused);
    check_fixture("tests/fixtures/phi3/model", "tests/fixtures/phi3/boft", "tests/fixtures/phi3/lora", phi3_fused);
    setenv("PEFTD_ROT_FORM", "dense", 1);
    check_fixture("tests/fixtures/phi3/model", "tests/fixtures/phi3/oft", "tests/fixtures/phi3/lora", phi3_fused_dense);
    check_fixture("tests/fixtures/phi3/model", "tests/fixtures/phi3/boft", "tests/fixtures/phi3/lora", phi3_fused_dense);
    unsetenv("PEFTD_ROT_FORM");
}

TEST_MAIN(par_bn, compacter, compacter_plus_plus, hub_lora, hub_ia3, hub_prefix, hub_prefix_flat, hub_mam,
          peft_lora_variants_both_bases, after_blob_round_trip,
          refusals_name_the_field, vera_projection_held_once,
          engine_greedy_and_mixed_batch, lyco_forms_agree,
          rotation_kinds_blob_both_bases, rotation_kinds_engine_bias_base, rotation_forms_agree,
          rotation_refusals_name_the_field, ln_tuning_gemma2, ln_tuning_gemma3, oft_boft_phi3_fused)
