/* tests/harness/greedy_run.c — see greedy_run.h. */
#include "tests/harness/greedy_run.h"

#include <stdio.h>

#include "tests/harness/test.h"

void greedy_submit(engine *e, greedy_run *rn, const int32_t *ids, int n, int max_tokens, const adapter *ad,
                   float scale, const adapter_mix *mx) {
    ASSERT(max_tokens <= GREEDY_RUN_MAX);
    gen_params p;
    gen_params_default(&p);
    p.max_tokens = max_tokens;
    p.temperature = 0;
    p.logprobs = 0; /* token ids and logprobs in the deltas */
    p.ignore_eos = true;
    p.adapter = ad;
    p.adapter_scale = scale;
    if (mx) {
        p.n_mix = mx->n;
        p.mix_how = (int)mx->how;
        for (int i = 0; i < mx->n; i++) p.mix_adapter[i] = mx->ad[i], p.mix_weight[i] = mx->weight[i];
    }
    rn->q = engine_request_create(ids, n, &p);
    ASSERT(rn->q);
    int st = engine_submit(e, rn->q);
    if (st < 0) FAIL("engine_submit: %s", peftd_strerror(st));
}

void greedy_collect(greedy_run *rn, char *error, size_t errlen) {
    engine_request_wait(rn->q);
    engine_delta d;
    ASSERT_EQ(engine_request_take(rn->q, &d), 0);
    if (error) snprintf(error, errlen, "%s", d.finish == FINISH_ERROR ? d.error : "");
    else if (d.finish == FINISH_ERROR) FAIL("generation failed: %s", d.error);
    rn->n = 0;
    for (int i = 0; i < d.n_tokens && i < GREEDY_RUN_MAX; i++) {
        rn->lps[rn->n] = d.tokens[i].logprob;
        rn->ids[rn->n++] = d.tokens[i].id;
    }
    engine_delta_free(&d);
    engine_request_unref(rn->q);
}
