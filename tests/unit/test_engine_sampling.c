/* tests/unit/test_engine_sampling.c — the engine's logit processing and prompt scoring end
 * to end on models/stories260K: greedy with repetition_penalty equals transformers'
 * generate() (ids, raw logprobs: tests/fixtures/sampling/generate.json); min_tokens keeps
 * EOS masked (and stop strings inactive) until reached; prompt_logprobs (with and without
 * generation, max_tokens 0, scored over several steps) equal the log-softmax of
 * transformers' logits (tests/fixtures/logits/stories260K.json); json_object output is
 * always a JSON-object prefix as detokenized, and a complete object (cJSON) when it stops. */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "server/engine/engine.h"
#include "server/engine/json_grammar.h"
#include "tests/harness/test.h"

typedef struct {
    kbackend *kb;
    model *m;
    tokenizer *tok;
    engine *e;
} rig;

static const char *MODEL_DIR = "models/stories260K";

static int g_kv_blocks; /* 0 = the engine's default pool */

static void rig_open(rig *r, int max_seqs, int max_batch_tokens) {
    char err[512] = "";
    memset(r, 0, sizeof *r);
    r->kb = kbackend_cpu_create(2);
    ASSERT(r->kb);
    if (model_load(MODEL_DIR, r->kb, &r->m, err, sizeof err) < 0) FAIL("model_load: %s", err);
    if (tokenizer_load(MODEL_DIR, &r->tok, err, sizeof err) < 0) FAIL("tokenizer_load: %s", err);
    engine_config c;
    engine_config_default(&c);
    c.max_seqs = max_seqs;
    c.max_batch_tokens = max_batch_tokens;
    c.kv_cache_mb = 64;
    c.kv_blocks = g_kv_blocks;
    if (engine_create(&c, r->m, r->kb, r->tok, &r->e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    ASSERT_EQ(engine_start(r->e), 0);
}

static void rig_close(rig *r) {
    engine_free(r->e);
    tokenizer_free(r->tok);
    model_free(r->m);
    kbackend_destroy(r->kb);
}

static cJSON *load_json(const char *path) {
    size_t len;
    char *t = test_read_file(path, &len);
    if (!t) FAIL("missing fixture %s", path);
    cJSON *j = cJSON_ParseWithLength(t, len);
    free(t);
    ASSERT(j);
    return j;
}

/* Runs one request to the end; d gets everything it produced. */
static void run(rig *r, const int32_t *ids, int n, const gen_params *p, engine_delta *d) {
    engine_request *q = engine_request_create(ids, n, p);
    ASSERT(q);
    int st = engine_submit(r->e, q);
    if (st < 0) FAIL("engine_submit: %s", peftd_strerror(st));
    engine_request_wait(q);
    ASSERT_EQ(engine_request_take(q, d), 0);
    ASSERT(d->finished);
    engine_request_unref(q);
}

static gen_params greedy(int max_tokens) {
    gen_params p;
    gen_params_default(&p);
    p.max_tokens = max_tokens;
    p.temperature = 0;
    p.logprobs = 0;
    return p;
}

TEST(repetition_penalty_greedy_matches_transformers_generate) {
    cJSON *doc = load_json("tests/fixtures/sampling/generate.json");
    rig r;
    rig_open(&r, 4, 64);
    const cJSON *c;
    int n_cases = 0;
    double max_lp = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "cases")) {
        int32_t ids[64];
        int n = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(c, "prompt")) ids[n++] = it->valueint;
        const cJSON *gen = cJSON_GetObjectItem(c, "generated"), *lps = cJSON_GetObjectItem(c, "raw_logprobs");
        gen_params p = greedy(cJSON_GetArraySize(gen));
        p.repetition_penalty = (float)cJSON_GetObjectItem(c, "repetition_penalty")->valuedouble;
        p.ignore_eos = true; /* generate() ran with eos_token_id None */
        engine_delta d;
        run(&r, ids, n, &p, &d);
        ASSERT_EQ(d.n_tokens, cJSON_GetArraySize(gen));
        for (int i = 0; i < d.n_tokens; i++) {
            if (d.tokens[i].id != cJSON_GetArrayItem(gen, i)->valueint)
                FAIL("case %d (rp %g) token %d: %d, transformers %d", n_cases, p.repetition_penalty, i, d.tokens[i].id,
                     cJSON_GetArrayItem(gen, i)->valueint);
            double diff = fabs(d.tokens[i].logprob - cJSON_GetArrayItem(lps, i)->valuedouble);
            if (diff > max_lp) max_lp = diff;
        }
        engine_delta_free(&d);
        n_cases++;
    }
    printf("    %d cases, raw logprob max |diff| %.3g\n", n_cases, max_lp);
    ASSERT_EQ(n_cases, 8);
    ASSERT(max_lp <= 1e-4);
    rig_close(&r);
    cJSON_Delete(doc);
}

TEST(min_tokens_masks_eos_until_reached) {
    rig r;
    rig_open(&r, 4, 64);
    const int32_t *eos;
    ASSERT(engine_stop_ids(r.e, &eos) >= 1);
    int32_t bos = 1, bid[1] = {eos[0]};
    float bval[1] = {100.0f}; /* EOS is always the best token */
    gen_params p = greedy(20);
    p.n_bias = 1;
    p.bias_id = bid;
    p.bias_val = bval;
    engine_delta d;
    run(&r, &bos, 1, &p, &d);
    ASSERT_EQ(d.finish, FINISH_STOP);
    ASSERT_EQ(d.completion_tokens, 1);
    engine_delta_free(&d);
    p.min_tokens = 7;
    run(&r, &bos, 1, &p, &d);
    ASSERT_EQ(d.finish, FINISH_STOP);
    ASSERT_EQ(d.completion_tokens, 8); /* 7 tokens, then the EOS */
    for (int i = 0; i < 7; i++) ASSERT(d.tokens[i].id != eos[0]);
    ASSERT_EQ(d.tokens[7].id, eos[0]);
    engine_delta_free(&d);
    rig_close(&r);
}

TEST(min_tokens_holds_stop_strings_back) {
    rig r;
    rig_open(&r, 4, 64);
    int32_t bos = 1;
    gen_params p = greedy(30);
    p.ignore_eos = true;
    engine_delta d;
    run(&r, &bos, 1, &p, &d);
    /* a stop string taken from the start of the plain greedy text */
    char stop[8];
    ASSERT(d.text_len > 8);
    memcpy(stop, d.text + 1, 4);
    stop[4] = 0;
    char *full = strdup(d.text);
    engine_delta_free(&d);
    p.stop[0] = stop;
    p.n_stop = 1;
    run(&r, &bos, 1, &p, &d);
    ASSERT_EQ(d.finish, FINISH_STOP);
    ASSERT(d.completion_tokens < 5);
    engine_delta_free(&d);
    p.min_tokens = 30;
    run(&r, &bos, 1, &p, &d);
    ASSERT_EQ(d.finish, FINISH_LENGTH);
    ASSERT_EQ(d.completion_tokens, 30);
    ASSERT_STREQ(d.text, full);
    engine_delta_free(&d);
    free(full);
    rig_close(&r);
}

/* prompt_logprobs vs log_softmax of transformers' logits, for every fixture prompt, with
 * max_tokens 0 and 3, in one step and in several (max_batch_tokens 8, 5 prompt rows each). */
static void check_prompt_scores(int max_batch_tokens, int max_tokens, int k) {
    cJSON *doc = load_json("tests/fixtures/logits/stories260K.json");
    rig r;
    rig_open(&r, 4, max_batch_tokens);
    int V = r.m->cfg.vocab_size;
    double maxd = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "cases")) {
        int32_t ids[64];
        int n = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(c, "input_ids")) ids[n++] = it->valueint;
        gen_params p = greedy(max_tokens);
        p.prompt_logprobs = true;
        p.logprobs = k;
        engine_delta d;
        run(&r, ids, n, &p, &d);
        ASSERT_EQ(d.n_prompt_lp, n - 1);
        ASSERT_EQ(d.completion_tokens, max_tokens);
        ASSERT_EQ(d.finish, FINISH_LENGTH);
        const cJSON *rows = cJSON_GetObjectItem(c, "logits");
        for (int i = 0; i + 1 < n; i++) {
            const cJSON *row = cJSON_GetArrayItem(rows, i);
            double mx = -1e30, sum = 0;
            for (int v = 0; v < V; v++) mx = fmax(mx, cJSON_GetArrayItem(row, v)->valuedouble);
            for (int v = 0; v < V; v++) sum += exp(cJSON_GetArrayItem(row, v)->valuedouble - mx);
            double lse = mx + log(sum);
            const gen_token *t = &d.prompt_tokens_lp[i];
            ASSERT_EQ(t->id, ids[i + 1]);
            maxd = fmax(maxd, fabs(t->logprob - (cJSON_GetArrayItem(row, ids[i + 1])->valuedouble - lse)));
            ASSERT_EQ(t->n_top, k);
            for (int j = 0; j < t->n_top; j++)
                maxd = fmax(maxd, fabs(t->top_logprob[j] - (cJSON_GetArrayItem(row, t->top_id[j])->valuedouble - lse)));
            for (int j = 1; j < t->n_top; j++) ASSERT(t->top_logprob[j] <= t->top_logprob[j - 1]);
        }
        engine_delta_free(&d);
    }
    printf("    max_batch_tokens %d, max_tokens %d: prompt logprob max |diff| %.3g\n", max_batch_tokens, max_tokens,
           maxd);
    ASSERT(maxd <= 1e-4);
    rig_close(&r);
    cJSON_Delete(doc);
}

TEST(prompt_logprobs_match_transformers) {
    check_prompt_scores(64, 0, 3);
    check_prompt_scores(64, 3, 0);
    check_prompt_scores(8, 0, 5);
    check_prompt_scores(8, 2, 2);
}

TEST(scoring_does_not_change_generation) {
    rig r;
    rig_open(&r, 4, 8);
    int32_t ids[12] = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 400, 428};
    gen_params p = greedy(16);
    engine_delta a, b;
    run(&r, ids, 12, &p, &a);
    p.prompt_logprobs = true;
    run(&r, ids, 12, &p, &b);
    ASSERT_EQ(a.n_tokens, b.n_tokens);
    for (int i = 0; i < a.n_tokens; i++) {
        ASSERT_EQ(a.tokens[i].id, b.tokens[i].id);
        ASSERT(a.tokens[i].logprob == b.tokens[i].logprob);
    }
    ASSERT_EQ(a.n_prompt_lp, 0);
    ASSERT_EQ(b.n_prompt_lp, 11);
    engine_delta_free(&a);
    engine_delta_free(&b);
    rig_close(&r);
}

/* Eight requests in one shared batch, half scoring their prompt and half with penalties,
 * in a KV pool so small that sequences are preempted (some mid-prompt) and recomputed:
 * each gets exactly its solo output, every prompt token scored once, bit-identical. */
TEST(shared_batch_with_preemption_keeps_scores_and_penalties_exact) {
    enum { N = 8, NEW = 60 };
    cJSON *doc = load_json("tests/fixtures/logits/stories260K.json");
    const cJSON *ids_j = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "cases"), 2), "input_ids");
    int32_t ids[64];
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, ids_j) ids[n++] = it->valueint;
    rig r;
    g_kv_blocks = 14; /* 224 slots; 8 x (24 + 60) = 672 wanted */
    rig_open(&r, N, 16);
    g_kv_blocks = 0;
    gen_params p[N];
    engine_delta alone[N], together[N];
    for (int i = 0; i < N; i++) {
        p[i] = greedy(NEW);
        p[i].ignore_eos = true;
        p[i].prompt_logprobs = i % 2 == 0;
        p[i].logprobs = i % 4;
        p[i].repetition_penalty = i % 2 ? 1.0f + 0.2f * (float)i : 1.0f;
        p[i].frequency_penalty = i % 3 == 1 ? 0.7f : 0.0f;
        p[i].presence_penalty = i % 3 == 2 ? 0.5f : 0.0f;
        run(&r, ids + (i % 3), n - (i % 3), &p[i], &alone[i]);
    }
    engine_request *q[N];
    for (int i = 0; i < N; i++) {
        q[i] = engine_request_create(ids + (i % 3), n - (i % 3), &p[i]);
        ASSERT(q[i] && engine_submit(r.e, q[i]) == 0);
    }
    for (int i = 0; i < N; i++) {
        engine_request_wait(q[i]);
        ASSERT_EQ(engine_request_take(q[i], &together[i]), 0);
        engine_request_unref(q[i]);
    }
    engine_stats st;
    engine_get_stats(r.e, &st);
    printf("    preemptions: %llu\n", (unsigned long long)st.preemptions);
    ASSERT(st.preemptions > 0);
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(together[i].n_tokens, NEW);
        ASSERT_EQ(together[i].n_prompt_lp, p[i].prompt_logprobs ? n - (i % 3) - 1 : 0);
        ASSERT_EQ(together[i].n_prompt_lp, alone[i].n_prompt_lp);
        for (int k = 0; k < NEW; k++)
            if (alone[i].tokens[k].id != together[i].tokens[k].id ||
                memcmp(&alone[i].tokens[k].logprob, &together[i].tokens[k].logprob, 4))
                FAIL("request %d token %d differs in the shared batch", i, k);
        for (int k = 0; k < together[i].n_prompt_lp; k++) {
            const gen_token *a = &alone[i].prompt_tokens_lp[k], *b = &together[i].prompt_tokens_lp[k];
            bool same = a->id == b->id && !memcmp(&a->logprob, &b->logprob, 4) && a->n_top == b->n_top;
            for (int j = 0; same && j < a->n_top; j++)
                same = a->top_id[j] == b->top_id[j] && !memcmp(&a->top_logprob[j], &b->top_logprob[j], 4);
            if (!same) FAIL("request %d prompt token %d scored differently in the shared batch", i, k + 1);
        }
        ASSERT_STREQ(alone[i].text, together[i].text);
        engine_delta_free(&alone[i]);
        engine_delta_free(&together[i]);
    }
    rig_close(&r);
    cJSON_Delete(doc);
}

/* The id of the byte token for c (byte fallback: "<0x7D>"). */
static int32_t byte_token(const tokenizer *t, unsigned char c) {
    for (int32_t id = 0; id < tokenizer_vocab_size(t); id++) {
        unsigned char b[8];
        size_t n;
        if (tokenizer_token_bytes(t, id, b, sizeof b, &n) == 0 && n == 1 && b[0] == c) return id;
    }
    FAIL("no byte token for 0x%02x", c);
}

TEST(json_object_output_is_an_object_prefix_and_ends_complete) {
    rig r;
    rig_open(&r, 8, 64);
    const int32_t *eos;
    ASSERT(engine_stop_ids(r.e, &eos) >= 1);
    int32_t prompt[5] = {1, 403, 407, 261, 378}, bid[2] = {byte_token(r.tok, '}'), eos[0]};
    float bval[2] = {10.0f, 100.0f}; /* close when allowed; EOS as soon as allowed */
    int stops = 0;
    for (int k = 0; k < 12; k++) {
        gen_params p = greedy(120);
        p.temperature = 1.0f;
        p.has_seed = true;
        p.seed = (uint64_t)k;
        p.json_object = true;
        p.n_bias = k < 8 ? 1 : 2;
        p.bias_id = bid;
        p.bias_val = bval;
        engine_delta d;
        run(&r, prompt, 5, &p, &d);
        jsong g;
        jsong_init(&g);
        if (!jsong_feed(&g, (const uint8_t *)d.text, d.text_len)) FAIL("seed %d: not a JSON-object prefix: %s", k, d.text);
        if (d.finish == FINISH_STOP) {
            ASSERT(g.done);
            cJSON *o = cJSON_Parse(d.text);
            if (!cJSON_IsObject(o)) FAIL("seed %d: stopped but cJSON reads no object: %s", k, d.text);
            cJSON_Delete(o);
            ASSERT_EQ(d.tokens[d.n_tokens - 1].id, eos[0]);
            stops++;
        } else {
            ASSERT_EQ(d.finish, FINISH_LENGTH);
        }
        engine_delta_free(&d);
    }
    printf("    12 json_object generations, %d complete objects\n", stops);
    fflush(stdout);
    ASSERT(stops >= 3);
    rig_close(&r);
}

TEST(invalid_parameters_are_refused) {
    rig r;
    rig_open(&r, 4, 64);
    int32_t bos = 1, bad[1] = {100000};
    float val[1] = {1};
    gen_params p = greedy(4);
    p.max_tokens = 0; /* only with prompt_logprobs */
    engine_request *q = engine_request_create(&bos, 1, &p);
    ASSERT_EQ(engine_submit(r.e, q), PEFTD_EINVAL);
    engine_request_unref(q);
    p = greedy(4);
    p.min_tokens = 5;
    q = engine_request_create(&bos, 1, &p);
    ASSERT_EQ(engine_submit(r.e, q), PEFTD_EINVAL);
    engine_request_unref(q);
    p = greedy(4);
    p.n_bias = 1;
    p.bias_id = bad;
    p.bias_val = val;
    q = engine_request_create(&bos, 1, &p);
    ASSERT_EQ(engine_submit(r.e, q), PEFTD_EINVAL);
    engine_request_unref(q);
    p = greedy(4);
    p.repetition_penalty = 0;
    q = engine_request_create(&bos, 1, &p);
    ASSERT_EQ(engine_submit(r.e, q), PEFTD_EINVAL);
    engine_request_unref(q);
    rig_close(&r);
}

TEST_MAIN(repetition_penalty_greedy_matches_transformers_generate, min_tokens_masks_eos_until_reached,
          min_tokens_holds_stop_strings_back, prompt_logprobs_match_transformers, scoring_does_not_change_generation,
          shared_batch_with_preemption_keeps_scores_and_penalties_exact,
          json_object_output_is_an_object_prefix_and_ends_complete, invalid_parameters_are_refused)
