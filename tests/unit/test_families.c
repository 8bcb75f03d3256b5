/* tests/unit/test_families.c — per-family conformance (Llama 3.x, Qwen2, Qwen3, Phi-3,
 * Mistral) against transformers 4.57 + peft 0.21 (tests/fixtures/make_family_fixtures.py ->
 * tests/fixtures/families/<family>/): for each family's tiny random f32 model
 *   - base logits on 5 prompts (6..45 tokens: longer than the sliding window of Qwen2/Phi-3/
 *     Mistral, beyond Llama 3's original_max_position_embeddings 16), every position, as one
 *     prefill and as a short prefill + one-token decode steps;
 *   - 32 greedy tokens identical to transformers' generate(do_sample=False), for the base and
 *     with each adapter (peft's generate());
 *   - LoRA (all-linear; fused qkv_proj / gate_up_proj on Phi-3), DoRA, IA3, prompt tuning and
 *     prefix tuning (on the windowed bases too: peft passes the prefix as a plain DynamicCache,
 *     so the window counts the prefix slots as positions 0..n_virtual-1 before the prompt's)
 *     on 2 prompts each, both ways;
 *   - a mixed batch: base + every adapter kind on both prompts in one llama_forward, each
 *     sequence's logits bit-identical (memcmp) to the sequence run alone;
 *   - the engine (scheduler, shared prefix blocks, chunked prefill) serving base + every kind
 *     at once: the same 32 greedy tokens as transformers / peft.
 * Tolerance 1e-4 on logits (f32 references; only summation order differs).
 */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>

#include "server/engine/engine.h"
#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/seq_batch.h"
#include "tests/harness/greedy_run.h"
#include "tests/harness/test.h"

#define TOL 1e-4
#define N_GREEDY 32
#define MAX_CASES 16
#define MAX_IDS 64

static const char *KINDS[] = {"lora", "dora", "ia3", "prompt", "prefix"};
#define N_KINDS 5

typedef struct {
    char name[32], adapter[160];
    int n;
    int32_t ids[MAX_IDS];
    const float *logits; /* into family_ref.all */
} ref_case;

typedef struct {
    char family[16], dir[128], model[160];
    int vocab, window, n_cases, n_greedy_ids;
    int32_t greedy_ids[MAX_IDS], greedy[N_GREEDY], greedy_ad[N_KINDS][N_GREEDY];
    ref_case cases[MAX_CASES];
    float *all;
} family_ref;

static void ids_from(const cJSON *arr, int32_t *ids, int *n, int max) {
    const cJSON *v;
    *n = 0;
    cJSON_ArrayForEach(v, arr) {
        ASSERT(*n < max);
        ids[(*n)++] = v->valueint;
    }
}

static void ref_load(const char *family, family_ref *r) {
    char path[256];
    size_t len, blen;
    memset(r, 0, sizeof *r);
    snprintf(r->family, sizeof r->family, "%s", family);
    snprintf(r->dir, sizeof r->dir, "tests/fixtures/families/%s", family);
    snprintf(path, sizeof path, "%s/reference.json", r->dir);
    char *text = test_read_file(path, &len);
    if (!text) FAIL("cannot read %s", path);
    snprintf(path, sizeof path, "%s/logits.bin", r->dir);
    r->all = (float *)test_read_file(path, &blen);
    if (!r->all) FAIL("cannot read %s", path);
    cJSON *root = cJSON_ParseWithLength(text, len), *c;
    ASSERT(root);
    r->vocab = cJSON_GetObjectItem(root, "vocab")->valueint;
    r->window = cJSON_GetObjectItem(root, "window")->valueint;
    snprintf(r->model, sizeof r->model, "%s", cJSON_GetObjectItem(root, "model")->valuestring);
    const cJSON *g = cJSON_GetObjectItem(root, "greedy");
    ids_from(cJSON_GetObjectItem(g, "input_ids"), r->greedy_ids, &r->n_greedy_ids, MAX_IDS);
    int ng;
    ids_from(cJSON_GetObjectItem(g, "tokens"), r->greedy, &ng, N_GREEDY);
    ASSERT_EQ(ng, N_GREEDY);
    for (int k = 0; k < N_KINDS; k++) {
        const cJSON *t = cJSON_GetObjectItem(cJSON_GetObjectItem(g, "adapters"), KINDS[k]);
        if (!t) FAIL("%s: no greedy tokens for %s", r->dir, KINDS[k]);
        ids_from(t, r->greedy_ad[k], &ng, N_GREEDY);
        ASSERT_EQ(ng, N_GREEDY);
    }
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        ASSERT(r->n_cases < MAX_CASES);
        ref_case *q = &r->cases[r->n_cases++];
        snprintf(q->name, sizeof q->name, "%s", c->string);
        const cJSON *ad = cJSON_GetObjectItem(c, "adapter");
        if (cJSON_IsString(ad)) snprintf(q->adapter, sizeof q->adapter, "%s", ad->valuestring);
        ids_from(cJSON_GetObjectItem(c, "input_ids"), q->ids, &q->n, MAX_IDS);
        size_t off = (size_t)cJSON_GetObjectItem(c, "offset")->valuedouble;
        ASSERT((off + (size_t)q->n * r->vocab) * sizeof(float) <= blen);
        q->logits = r->all + off;
    }
    cJSON_Delete(root);
    free(text);
}

static const ref_case *ref_find(const family_ref *r, const char *name) {
    for (int i = 0; i < r->n_cases; i++)
        if (!strcmp(r->cases[i].name, name)) return &r->cases[i];
    FAIL("%s: no case %s", r->dir, name);
    return NULL;
}

/* One family's model (CPU backend) and its adapters, loaded once per test. */
typedef struct {
    family_ref ref;
    kbackend *kb;
    model *m;
    adapter *ad[N_KINDS];
    llama_ctx *c;
} rig;

static void rig_open(rig *R, const char *family) {
    char err[1024] = "", dir[256];
    memset(R, 0, sizeof *R);
    ref_load(family, &R->ref);
    R->kb = kbackend_cpu_create(2);
    ASSERT(R->kb);
    if (model_load(R->ref.model, R->kb, &R->m, err, sizeof err) < 0) FAIL("model_load %s: %s", R->ref.model, err);
    ASSERT_EQ(R->m->cfg.vocab_size, R->ref.vocab);
    ASSERT_EQ(R->m->cfg.sliding_window, R->ref.window);
    for (int k = 0; k < N_KINDS; k++) {
        snprintf(dir, sizeof dir, "%s/%s", R->ref.dir, KINDS[k]);
        if (model_load_adapter(R->m, dir, &R->ad[k], err, sizeof err) < 0) FAIL("%s: %s", dir, err);
    }
    R->c = seq_batch_ctx(R->m);
}

static void rig_close(rig *R) {
    llama_ctx_free(R->c);
    for (int k = 0; k < N_KINDS; k++) adapter_free(R->ad[k]);
    model_free(R->m);
    kbackend_destroy(R->kb);
    free(R->ref.all);
}

static const adapter *case_adapter(const rig *R, const ref_case *q) {
    if (!q->adapter[0]) return NULL;
    for (int k = 0; k < N_KINDS; k++)
        if (strstr(q->adapter, KINDS[k]) && !strcmp(strrchr(q->adapter, '/') + 1, KINDS[k])) return R->ad[k];
    FAIL("case %s: unknown adapter %s", q->name, q->adapter);
    return NULL;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double md = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d;
    }
    return md;
}

/* A case's logits as one prefill and as a 3-token prefill + decode steps. */
static double check_case(rig *R, const ref_case *q) {
    size_t n = (size_t)q->n * R->ref.vocab;
    float *out = malloc(sizeof(float) * n);
    ASSERT(out);
    seq_spec sp = {.ids = q->ids, .n = q->n, .ad = case_adapter(R, q)};
    float *outs[1] = {out};
    seq_batch_prefill(R->c, R->m, &sp, 1, outs);
    double a = max_diff(out, q->logits, n);
    seq_prefill_decode(R->c, R->m, &sp, 3, out);
    double b = max_diff(out, q->logits, n);
    printf("    %-8s %-8s (%2d tokens): max |logit diff| prefill %.3g, decode %.3g\n", R->ref.family, q->name,
           q->n, a, b);
    if (!(a <= TOL) || !(b <= TOL)) FAIL("%s %s: max |logit diff| %.3g / %.3g > %g", R->ref.family, q->name, a, b, TOL);
    free(out);
    return a > b ? a : b;
}

static void check_base(const char *family) {
    rig R;
    rig_open(&R, family);
    char name[16];
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof name, "base%d", i);
        check_case(&R, ref_find(&R.ref, name));
    }
    rig_close(&R);
}

static void check_greedy(const char *family) {
    rig R;
    rig_open(&R, family);
    int32_t got[N_GREEDY];
    for (int k = -1; k < N_KINDS; k++) {
        seq_spec sp = {.ids = R.ref.greedy_ids, .n = R.ref.n_greedy_ids, .ad = k < 0 ? NULL : R.ad[k]};
        const int32_t *want = k < 0 ? R.ref.greedy : R.ref.greedy_ad[k];
        seq_greedy(R.c, R.m, &sp, N_GREEDY, got);
        for (int i = 0; i < N_GREEDY; i++)
            if (got[i] != want[i])
                FAIL("%s %s: greedy token %d is %d, transformers/peft say %d", family, k < 0 ? "base" : KINDS[k], i,
                     got[i], want[i]);
    }
    printf("    %-8s %d greedy tokens identical: base and %d adapter kinds (prompt %d tokens)\n", family, N_GREEDY,
           N_KINDS, R.ref.n_greedy_ids);
    rig_close(&R);
}

static void check_adapters(const char *family) {
    rig R;
    rig_open(&R, family);
    char name[16];
    for (int k = 0; k < N_KINDS; k++)
        for (int p = 1; p <= 2; p++) {
            snprintf(name, sizeof name, "%s%d", KINDS[k], p);
            check_case(&R, ref_find(&R.ref, name));
        }
    rig_close(&R);
}

/* base + every kind, prompts 1 and 2, in one llama_forward; each sequence alone after. */
static void check_mixed(const char *family) {
    rig R;
    rig_open(&R, family);
    enum { N = 2 * (N_KINDS + 1) };
    seq_spec sp[N];
    float *together[N], *alone;
    const ref_case *qs[N];
    char name[16];
    for (int i = 0; i < N; i++) {
        int k = i / 2 - 1, p = 1 + i % 2; /* rows: base1, base2, lora1, lora2, ... */
        snprintf(name, sizeof name, "%s%d", k < 0 ? "base" : KINDS[k], p);
        qs[i] = ref_find(&R.ref, name);
        sp[i] = (seq_spec){.ids = qs[i]->ids, .n = qs[i]->n, .ad = k < 0 ? NULL : R.ad[k]};
        together[i] = malloc(sizeof(float) * (size_t)qs[i]->n * R.ref.vocab);
        ASSERT(together[i]);
    }
    seq_batch_prefill(R.c, R.m, sp, N, together);
    for (int i = 0; i < N; i++) {
        size_t n = (size_t)qs[i]->n * R.ref.vocab;
        ASSERT((alone = malloc(sizeof(float) * n)));
        seq_batch_prefill(R.c, R.m, &sp[i], 1, &alone);
        if (memcmp(alone, together[i], sizeof(float) * n))
            FAIL("%s: %s in the mixed batch differs from alone (max |diff| %.3g)", family, qs[i]->name,
                 max_diff(alone, together[i], n));
        if (!(max_diff(alone, qs[i]->logits, n) <= TOL)) FAIL("%s: %s off the reference", family, qs[i]->name);
        free(alone);
        free(together[i]);
    }
    printf("    %-8s mixed batch of %d sequences (base + %d adapter kinds): bit-identical to alone\n", family, N,
           N_KINDS);
    rig_close(&R);
}

/* The serving path: the engine runs base + every adapter kind at once from the greedy prompt
 * (a 12-token step budget mixes chunked prefills with other sequences' decodes), each
 * sequence's 32 greedy tokens those of transformers / peft. The stories260K tokenizer only
 * detokenizes (ids < 256 are in its vocabulary); EOS is ignored. */
static void check_engine(const char *family) {
    rig R;
    rig_open(&R, family);
    char err[1024] = "";
    tokenizer *tok = NULL;
    if (tokenizer_load("models/stories260K", &tok, err, sizeof err) < 0) FAIL("tokenizer_load: %s", err);
    engine_config ec;
    engine_config_default(&ec);
    ec.max_seqs = N_KINDS + 1;
    ec.max_batch_tokens = 12;
    ec.kv_cache_mb = 16;
    engine *e = NULL;
    if (engine_create(&ec, R.m, R.kb, tok, &e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    ASSERT_EQ(engine_start(e), 0);
    static greedy_run q[N_KINDS + 1];
    for (int k = -1; k < N_KINDS; k++)
        greedy_submit(e, &q[k + 1], R.ref.greedy_ids, R.ref.n_greedy_ids, N_GREEDY, k < 0 ? NULL : R.ad[k], 1.0f, NULL);
    for (int k = -1; k < N_KINDS; k++) {
        const int32_t *want = k < 0 ? R.ref.greedy : R.ref.greedy_ad[k];
        char gerr[256];
        greedy_collect(&q[k + 1], gerr, sizeof gerr);
        if (gerr[0]) FAIL("%s: generation failed: %s", family, gerr);
        ASSERT_EQ(q[k + 1].n, N_GREEDY);
        for (int i = 0; i < N_GREEDY; i++)
            if (q[k + 1].ids[i] != want[i])
                FAIL("%s %s (engine): greedy token %d is %d, transformers/peft say %d", family,
                     k < 0 ? "base" : KINDS[k], i, q[k + 1].ids[i], want[i]);
    }
    printf("    %-8s engine: base + %d adapter kinds at once, %d greedy tokens each identical\n", family, N_KINDS,
           N_GREEDY);
    engine_free(e);
    tokenizer_free(tok);
    rig_close(&R);
}

#define FAMILY(f)                                  \
    TEST(f##_base) { check_base(#f); }             \
    TEST(f##_greedy) { check_greedy(#f); }         \
    TEST(f##_adapters) { check_adapters(#f); }     \
    TEST(f##_mixed_batch) { check_mixed(#f); }     \
    TEST(f##_engine) { check_engine(#f); }

FAMILY(llama3)
FAMILY(qwen2)
FAMILY(qwen3)
FAMILY(phi3)
FAMILY(mistral)

TEST_MAIN(llama3_base, llama3_greedy, llama3_adapters, llama3_mixed_batch, llama3_engine, qwen2_base, qwen2_greedy,
          qwen2_adapters, qwen2_mixed_batch, qwen2_engine, qwen3_base, qwen3_greedy, qwen3_adapters,
          qwen3_mixed_batch, qwen3_engine, phi3_base, phi3_greedy, phi3_adapters, phi3_mixed_batch, phi3_engine,
          mistral_base, mistral_greedy, mistral_adapters, mistral_mixed_batch, mistral_engine)
