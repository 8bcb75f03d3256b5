/* tests/unit/test_engine_json_schema.c — response_format json_schema end to end in the
 * engine on models/stories260K: every generation (greedy and sampled) is, as detokenized,
 * a prefix the schema's recognizer accepts, and when it stops (EOS) a complete value that
 * cJSON parses; a length cut says "length"; the masked sequences share a batch with plain
 * and json_object ones, with preemptions, and every sequence's tokens and logprobs are
 * bit-identical to its run alone. (Validation against an independent validator: the integration test
 * tests/integration/test_json_schema.py, Python's jsonschema.) */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "server/engine/engine.h"
#include "server/engine/json_schema.h"
#include "tests/harness/test.h"

typedef struct {
    kbackend *kb;
    model *m;
    tokenizer *tok;
    engine *e;
} rig;

static void rig_open(rig *r, int max_seqs, int max_batch_tokens, int kv_blocks) {
    char err[512] = "";
    memset(r, 0, sizeof *r);
    r->kb = kbackend_cpu_create(2);
    ASSERT(r->kb);
    if (model_load("models/stories260K", r->kb, &r->m, err, sizeof err) < 0) FAIL("model_load: %s", err);
    if (tokenizer_load("models/stories260K", &r->tok, err, sizeof err) < 0) FAIL("tokenizer_load: %s", err);
    engine_config c;
    engine_config_default(&c);
    c.max_seqs = max_seqs;
    c.max_batch_tokens = max_batch_tokens;
    c.kv_cache_mb = 64;
    c.kv_blocks = kv_blocks; /* 0: the default pool */
    if (engine_create(&c, r->m, r->kb, r->tok, &r->e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    ASSERT_EQ(engine_start(r->e), 0);
}

static void rig_close(rig *r) {
    engine_free(r->e);
    tokenizer_free(r->tok);
    model_free(r->m);
    kbackend_destroy(r->kb);
}

static jschema *compile(const char *src) {
    cJSON *doc = cJSON_Parse(src);
    ASSERT(doc);
    jschema *s = NULL;
    char err[256] = "";
    if (jschema_compile(doc, &s, err, sizeof err)) FAIL("schema refused: %s", err);
    cJSON_Delete(doc);
    return s;
}

static const char *const SCHEMAS[] = {
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":8},\"age\":{\"type\":"
    "\"integer\"},\"pet\":{\"enum\":[\"cat\",\"dog\",null]}},\"required\":[\"name\",\"age\",\"pet\"],"
    "\"additionalProperties\":false}",
    "{\"type\":\"array\",\"items\":{\"anyOf\":[{\"type\":\"number\"},{\"type\":\"boolean\"}]},\"minItems\":1,"
    "\"maxItems\":4}",
    "{\"$defs\":{\"t\":{\"type\":\"object\",\"properties\":{\"w\":{\"type\":\"string\",\"maxLength\":4},\"k\":{"
    "\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/t\"},\"maxItems\":2}},\"required\":[\"w\"],"
    "\"additionalProperties\":false}},\"$ref\":\"#/$defs/t\"}",
    "{\"type\":[\"string\",\"null\"],\"minLength\":3,\"maxLength\":6}",
};
enum { NS = sizeof SCHEMAS / sizeof SCHEMAS[0] };

static engine_request *submit(rig *r, const int32_t *ids, int n, const gen_params *p) {
    engine_request *q = engine_request_create(ids, n, p);
    ASSERT(q);
    int st = engine_submit(r->e, q);
    if (st < 0) FAIL("engine_submit: %s", peftd_strerror(st));
    return q;
}

static void take(engine_request *q, engine_delta *d) {
    engine_request_wait(q);
    ASSERT_EQ(engine_request_take(q, d), 0);
    ASSERT(d->finished);
    engine_request_unref(q);
}

static gen_params params(int k, jschema *s) {
    gen_params p;
    gen_params_default(&p);
    p.max_tokens = 120;
    p.temperature = k % 2 ? 0.0f : 1.0f;
    p.has_seed = true;
    p.seed = (uint64_t)k;
    p.logprobs = 1;
    p.json_schema = s;
    return p;
}

static void check(const jschema *s, const char *schema, int k, const engine_delta *d, int *stops) {
    jsm m;
    jsm_init(&m, s);
    if (!jsm_feed(&m, (const uint8_t *)d->text, d->text_len))
        FAIL("schema %s run %d: output %s is not a valid prefix", schema, k, d->text);
    if (d->finish == FINISH_STOP) {
        if (!jsm_can_end(&m)) FAIL("schema %s run %d: stopped incomplete: %s", schema, k, d->text);
        cJSON *v = cJSON_Parse(d->text);
        if (!v) FAIL("schema %s run %d: stopped but cJSON cannot parse %s", schema, k, d->text);
        cJSON_Delete(v);
        (*stops)++;
    } else if (d->finish != FINISH_LENGTH) {
        FAIL("schema %s run %d: finish %d", schema, k, d->finish);
    } else if (jsm_done(&m)) {
        FAIL("schema %s run %d: complete but cut by length: %s", schema, k, d->text);
    }
}

TEST(outputs_follow_the_schema_alone_and_in_a_shared_batch) {
    rig r;
    rig_open(&r, 16, 64, 20); /* 320 KV slots for 14 x (5 + up to 120): preemptions */
    int32_t prompt[5] = {1, 403, 407, 261, 378};
    jschema *s[NS];
    for (int i = 0; i < NS; i++) s[i] = compile(SCHEMAS[i]);
    enum { RUNS = 3 * NS };
    engine_delta alone[RUNS + 2], together[RUNS + 2];
    gen_params p[RUNS + 2];
    int stops = 0;
    for (int k = 0; k < RUNS; k++) p[k] = params(k, s[k % NS]);
    /* two neighbours without a schema: a plain sampled one and a json_object one */
    gen_params_default(&p[RUNS]);
    p[RUNS].max_tokens = 60;
    p[RUNS].has_seed = true;
    p[RUNS].seed = 99;
    p[RUNS].logprobs = 0;
    p[RUNS + 1] = p[RUNS];
    p[RUNS + 1].json_object = true;
    for (int k = 0; k < RUNS + 2; k++) {
        take(submit(&r, prompt, 5, &p[k]), &alone[k]);
        if (k < RUNS) check(s[k % NS], SCHEMAS[k % NS], k, &alone[k], &stops);
        if (k < NS) printf("    %s -> %s (%s)\n", SCHEMAS[k], alone[k].text, finish_reason_str(alone[k].finish));
    }
    printf("    %d generations, %d stopped complete\n", RUNS, stops);
    ASSERT(stops >= RUNS / 2);
    engine_request *q[RUNS + 2];
    for (int k = 0; k < RUNS + 2; k++) q[k] = submit(&r, prompt, 5, &p[k]);
    for (int k = 0; k < RUNS + 2; k++) take(q[k], &together[k]);
    engine_stats st;
    engine_get_stats(r.e, &st);
    printf("    shared batch: %llu preemptions\n", (unsigned long long)st.preemptions);
    ASSERT(st.preemptions > 0); /* the recognizers survive a preemption and its recompute */
    for (int k = 0; k < RUNS + 2; k++) {
        ASSERT_EQ(alone[k].n_tokens, together[k].n_tokens);
        ASSERT_EQ(alone[k].finish, together[k].finish);
        for (int i = 0; i < alone[k].n_tokens; i++)
            if (alone[k].tokens[i].id != together[k].tokens[i].id ||
                memcmp(&alone[k].tokens[i].logprob, &together[k].tokens[i].logprob, 4))
                FAIL("request %d token %d differs in the shared batch", k, i);
        ASSERT_STREQ(alone[k].text, together[k].text);
        engine_delta_free(&alone[k]);
        engine_delta_free(&together[k]);
    }
    for (int i = 0; i < NS; i++) jschema_unref(s[i]); /* the engine's requests hold their own */
    rig_close(&r);
}

TEST(a_length_cut_says_length) {
    rig r;
    rig_open(&r, 4, 64, 0);
    jschema *s = compile(SCHEMAS[0]);
    int32_t prompt[5] = {1, 403, 407, 261, 378};
    gen_params p = params(1, s);
    p.max_tokens = 3;
    engine_delta d;
    take(submit(&r, prompt, 5, &p), &d);
    ASSERT_EQ(d.finish, FINISH_LENGTH);
    ASSERT_EQ(d.n_tokens, 3);
    int stops = 0;
    check(s, SCHEMAS[0], 0, &d, &stops);
    ASSERT(d.text[0] == '{');
    engine_delta_free(&d);
    jschema_unref(s);
    rig_close(&r);
}

TEST_MAIN(outputs_follow_the_schema_alone_and_in_a_shared_batch, a_length_cut_says_length)
