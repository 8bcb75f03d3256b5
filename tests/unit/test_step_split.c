/* tests/unit/test_step_split.c — the model step split for graph capture (kernels/step_split.h)
 * on the CPU backend: a mixed-adapter step (stories260K; base, LoRA rank 8 all-linear, DoRA,
 * IA3, bf16 LoRA rows in one llama_forward) run as a transfers-only pass then an ops-only pass
 * gives logits bit-identical to the same step unsplit, and the ops-only pass is capturable:
 * no allocation or free, every host wait after the last op, every transfer already made by the
 * first pass (a step that needed one of the skipped transfers would differ); the step's
 * signature is the same in both passes and for the same batch again, and differs for another. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/step_split.h"
#include "server/model/llama.h"
#include "server/model/model.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/seq_batch.h"
#include "tests/harness/test.h"

#define NS 5
static const char *const ADS[NS] = {NULL, "lora_r8_all", "lora_dora", "ia3", "lora_bf16"};
static const int LEN[NS] = {5, 7, 4, 6, 3};

TEST(split_step_equals_unsplit_step_and_is_capturable) {
    char err[1024];
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    model *m = NULL;
    if (model_load("models/stories260K", kb, &m, err, sizeof err)) FAIL("model_load: %s", err);
    adapter *ad[NS] = {0};
    seq_spec spec[NS];
    int32_t ids[NS][8];
    float *ref[NS], *got[NS], *junk[NS];
    int V = m->cfg.vocab_size;
    for (int i = 0; i < NS; i++) {
        if (ADS[i]) {
            char dir[256];
            snprintf(dir, sizeof dir, "tests/fixtures/adapters/%s", ADS[i]);
            if (model_load_adapter(m, dir, &ad[i], err, sizeof err)) FAIL("%s: %s", ADS[i], err);
        }
        for (int k = 0; k < LEN[i]; k++) ids[i][k] = (int32_t)((i * 37 + k * 11 + 1) % V);
        spec[i] = (seq_spec){.ids = ids[i], .n = LEN[i], .ad = ad[i]};
        ref[i] = malloc(sizeof(float) * LEN[i] * V);
        got[i] = malloc(sizeof(float) * LEN[i] * V);
        junk[i] = malloc(sizeof(float) * LEN[i] * V);
        ASSERT(ref[i] && got[i] && junk[i]);
        memset(got[i], 0, sizeof(float) * LEN[i] * V);
    }
    llama_ctx *a = seq_batch_ctx(m), *b = seq_batch_ctx(m);
    seq_batch_prefill(a, m, spec, NS, ref);
    /* b: one ordinary step first (first use of an adapter may allocate, e.g. DoRA vectors),
     * then the split step over the same KV slots. */
    seq_batch_prefill(b, m, spec, NS, junk);
    for (int i = 0; i < NS; i++)
        if (memcmp(ref[i], junk[i], sizeof(float) * LEN[i] * V)) FAIL("unsplit rerun differs at %d", i);
    step_split s;
    step_split_begin(&s, kb, STEP_PASS_TRANSFERS);
    seq_batch_prefill(b, m, spec, NS, junk);
    step_split_end(&s);
    ASSERT(s.n_transfers > 0);
    ASSERT_EQ(s.n_ops, 0);
    ASSERT_EQ(s.n_alloc, 0);
    int transfers = s.n_transfers;
    uint64_t sig = s.sig;
    step_split_begin(&s, kb, STEP_PASS_OPS);
    seq_batch_prefill(b, m, spec, NS, got);
    step_split_end(&s);
    ASSERT(kb->ops != &s.table); /* restored */
    ASSERT(s.n_ops > 20 * m->cfg.n_layers / 2);
    ASSERT_EQ(s.n_skipped, transfers); /* the same transfers, skipped this time */
    ASSERT(step_split_capturable(&s));
    ASSERT(s.sig == sig); /* both passes see the same calls */
    /* The same step again: the same signature; one sequence fewer: another. */
    step_split_begin(&s, kb, STEP_PASS_TRANSFERS);
    seq_batch_prefill(b, m, spec, NS, junk);
    step_split_end(&s);
    ASSERT(s.sig == sig);
    step_split_begin(&s, kb, STEP_PASS_TRANSFERS);
    seq_batch_prefill(b, m, spec, NS - 1, junk);
    step_split_end(&s);
    ASSERT(s.sig != sig);
    for (int i = 0; i < NS; i++)
        if (memcmp(ref[i], got[i], sizeof(float) * LEN[i] * V))
            FAIL("sequence %d (%s): split step logits differ", i, ADS[i] ? ADS[i] : "base");
    /* And the checks can fail: an ops pass that allocates is not capturable. */
    step_split_begin(&s, kb, STEP_PASS_OPS);
    void *p = kb->ops->alloc(kb, 64);
    kb->ops->free(kb, p);
    step_split_end(&s);
    ASSERT(!step_split_capturable(&s));
    llama_ctx_free(a);
    llama_ctx_free(b);
    for (int i = 0; i < NS; i++) free(ref[i]), free(got[i]), free(junk[i]), adapter_free(ad[i]);
    model_free(m);
    kbackend_destroy(kb);
}

/* Every op skips the transfers pass, the grouped matmul too (it was left unwrapped: replayed
 * decode steps computed q/k/v and gate/up twice, once in the transfers pass). */
TEST(grouped_matmul_is_an_op_of_the_split) {
    kbackend *kb = kbackend_cpu_create(1);
    ASSERT(kb);
    ASSERT(kb->ops->matmul_group); /* the CPU backend has it: its wrapper is what is tested */
    enum { IN = 16, OUT = 8 };
    float x[IN], w0[OUT * IN], w1[OUT * IN], y0[OUT], y1[OUT];
    for (int i = 0; i < IN; i++) x[i] = (float)(i % 5) - 2.0f;
    for (int i = 0; i < OUT * IN; i++) w0[i] = (float)(i % 7) * 0.25f, w1[i] = (float)(i % 3) - 1.0f;
    kmat m0 = {w0, KDT_F32, OUT, IN}, m1 = {w1, KDT_F32, OUT, IN};
    const kmat *ws[2] = {&m0, &m1};
    float *ys[2] = {y0, y1};
    step_split s;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < OUT; i++) y0[i] = y1[i] = 1234.0f;
        step_split_begin(&s, kb, pass == 0 ? STEP_PASS_TRANSFERS : STEP_PASS_OPS);
        ASSERT_EQ(kops_matmul_group(kb, x, 1, 2, ws, ys, 0.0f), 0);
        step_split_end(&s);
        ASSERT_EQ(s.n_ops, pass);
        ASSERT_EQ(s.n_skipped, 1 - pass);
        if (pass == 0) {
            for (int i = 0; i < OUT; i++) ASSERT(y0[i] == 1234.0f && y1[i] == 1234.0f);
        } else {
            float dot = 0.0f;
            for (int k = 0; k < IN; k++) dot += x[k] * w1[k];
            ASSERT(y0[0] != 1234.0f && fabsf(y1[0] - dot) < 1e-4f);
        }
    }
    kbackend_destroy(kb);
}

TEST_MAIN(split_step_equals_unsplit_step_and_is_capturable, grouped_matmul_is_an_op_of_the_split)
