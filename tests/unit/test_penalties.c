/* tests/unit/test_penalties.c — the sampler's logit processing (sampler_process: min_tokens,
 * logit_bias, repetition / frequency / presence penalties) against references computed
 * outside peftd: transformers' RepetitionPenaltyLogitsProcessor and vLLM's formulas
 * (tests/fixtures/sampling/make_penalty_fixtures.py -> penalties.json), plus the
 * when-to-process rule and the raw-logprob contract of sampler_pick_raw. */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "server/engine/sampling.h"
#include "tests/harness/test.h"

#define FIX "tests/fixtures/sampling/penalties.json"

static int ids_of(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        ASSERT(n < cap);
        out[n++] = (int32_t)it->valueint;
    }
    return n;
}

static void params_of(const cJSON *pj, gen_params *p, int32_t *bid, float *bval) {
    gen_params_default(p);
    const cJSON *it;
    if ((it = cJSON_GetObjectItem(pj, "repetition_penalty"))) p->repetition_penalty = (float)it->valuedouble;
    if ((it = cJSON_GetObjectItem(pj, "frequency_penalty"))) p->frequency_penalty = (float)it->valuedouble;
    if ((it = cJSON_GetObjectItem(pj, "presence_penalty"))) p->presence_penalty = (float)it->valuedouble;
    if ((it = cJSON_GetObjectItem(pj, "min_tokens"))) p->min_tokens = it->valueint;
    const cJSON *lb = cJSON_GetObjectItem(pj, "logit_bias"), *e;
    cJSON_ArrayForEach(e, lb) {
        bid[p->n_bias] = (int32_t)atoi(e->string);
        bval[p->n_bias++] = (float)e->valuedouble;
    }
    p->bias_id = bid;
    p->bias_val = bval;
}

TEST(processing_matches_transformers_and_vllm_formulas) {
    size_t len;
    char *txt = test_read_file(FIX, &len);
    if (!txt) FAIL("missing fixture %s (run tests/fixtures/sampling/make_penalty_fixtures.py)", FIX);
    cJSON *doc = cJSON_ParseWithLength(txt, len);
    ASSERT(doc);
    int V = cJSON_GetObjectItem(doc, "vocab")->valueint;
    sampler_scratch s;
    ASSERT_EQ(sampler_scratch_init(&s, V), 0);
    const cJSON *c;
    int n_cases = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "cases")) {
        int32_t prompt[64], output[64], eos[8], bid[64];
        float bval[64], logits[256];
        int np = ids_of(cJSON_GetObjectItem(c, "prompt"), prompt, 64);
        int no = ids_of(cJSON_GetObjectItem(c, "output"), output, 64);
        int ne = ids_of(cJSON_GetObjectItem(c, "eos"), eos, 8);
        gen_params p;
        params_of(cJSON_GetObjectItem(c, "params"), &p, bid, bval);
        ASSERT(V <= 256);
        for (int i = 0; i < V; i++) logits[i] = (float)cJSON_GetArrayItem(cJSON_GetObjectItem(c, "logits"), i)->valuedouble;
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        /* the engine's path: unprocessed logits when nothing applies */
        const float *w = sampler_needs_processing(&p, no) ? sampler_process(logits, &p, prompt, np, output, no, eos, ne, &s)
                                                          : logits;
        double maxd = 0;
        for (int i = 0; i < V; i++) {
            const cJSON *x = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "expected"), i);
            if (cJSON_IsNull(x)) {
                if (!(isinf(w[i]) && w[i] < 0)) FAIL("%s: id %d is %g, expected -inf", name, i, w[i]);
                continue;
            }
            double d = fabs(w[i] - x->valuedouble);
            if (d > maxd) maxd = d;
        }
        if (maxd > 1e-5) FAIL("%s: max |diff| %g > 1e-5", name, maxd);
        printf("    %-22s max |diff| %.3g\n", name, maxd);
        for (int i = 0; i < V; i++) ASSERT_EQ(s.count[i], 0); /* scratch left clean */
        n_cases++;
    }
    ASSERT_EQ(n_cases, 7);
    sampler_scratch_free(&s);
    cJSON_Delete(doc);
    free(txt);
}

TEST(needs_processing_only_when_something_applies) {
    gen_params p;
    gen_params_default(&p);
    ASSERT(!sampler_needs_processing(&p, 0));
    p.frequency_penalty = 0.5f;
    ASSERT(!sampler_needs_processing(&p, 0)); /* no output yet: nothing to count */
    ASSERT(sampler_needs_processing(&p, 1));
    gen_params_default(&p);
    p.min_tokens = 2;
    ASSERT(sampler_needs_processing(&p, 1));
    ASSERT(!sampler_needs_processing(&p, 2));
    gen_params_default(&p);
    p.repetition_penalty = 1.1f;
    ASSERT(sampler_needs_processing(&p, 0)); /* the prompt counts */
}

TEST(greedy_follows_processed_logits_logprobs_stay_raw) {
    float raw[5] = {3.0f, 2.0f, 1.0f, 0.0f, -1.0f};
    int32_t bid[1] = {0};
    float bval[1] = {-10.0f};
    gen_params p;
    gen_params_default(&p);
    p.temperature = 0;
    p.n_bias = 1;
    p.bias_id = bid;
    p.bias_val = bval;
    sampler_scratch s;
    ASSERT_EQ(sampler_scratch_init(&s, 5), 0);
    rng_state r;
    rng_seed(&r, 7);
    const float *w = sampler_process(raw, &p, NULL, 0, NULL, 0, NULL, 0, &s);
    gen_token lp;
    int32_t tok = sampler_pick_raw(w, raw, &p, &r, &s, 2, &lp);
    ASSERT_EQ(tok, 1);
    double lse = 0;
    for (int i = 0; i < 5; i++) lse += exp(raw[i]);
    lse = log(lse);
    ASSERT(fabs(lp.logprob - (2.0 - lse)) < 1e-6);
    ASSERT_EQ(lp.top_id[0], 0); /* the raw distribution's best, not the biased one */
    sampler_scratch_free(&s);
}

TEST_MAIN(processing_matches_transformers_and_vllm_formulas, needs_processing_only_when_something_applies,
          greedy_follows_processed_logits_logprobs_stay_raw)
