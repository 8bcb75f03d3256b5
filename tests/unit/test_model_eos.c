/* tests/unit/test_model_eos.c — the end-of-generation ids of a model directory
 * (server/model/model_eos.c): "eos_token_id" as an int, a list, absent, null or broken, and
 * generation_config.json taking precedence over config.json as in transformers'
 * GenerationConfig (the published sets: Llama 3.1 [128001, 128008, 128009], Qwen2.5
 * [151645, 151643], Gemma 3 [1, 106], Phi-3 [32000, 32001, 32007]). */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "lib/status.h"
#include "server/model/model_eos.h"
#include "tests/harness/test.h"

static int parse(const char *json, int vocab, model_eos *out, int *named, char *err, size_t errlen) {
    cJSON *root = cJSON_Parse(json);
    ASSERT(root);
    int rc = model_eos_parse(root, "generation_config.json", vocab, out, named, err, errlen);
    cJSON_Delete(root);
    return rc;
}

TEST(parse_int_list_absent_null) {
    static const struct { const char *json; int vocab; int n; int32_t ids[3]; } ok[] = {
        {"{\"eos_token_id\": 128009}", 128256, 1, {128009}},
        {"{\"eos_token_id\": [128001, 128008, 128009], \"do_sample\": true}", 128256, 3, {128001, 128008, 128009}},
        {"{\"eos_token_id\": [151645, 151643]}", 151936, 2, {151645, 151643}},
        {"{\"eos_token_id\": [1, 106]}", 262208, 2, {1, 106}},
        {"{\"eos_token_id\": [32000, 32001, 32007]}", 32064, 3, {32000, 32001, 32007}},
        {"{\"eos_token_id\": [7, 7, 3]}", 16, 2, {7, 3}}, /* duplicates dropped */
        {"{\"eos_token_id\": 0}", 1, 1, {0}},
        {"{\"eos_token_id\": 5.0}", 16, 1, {5}}, /* a whole number written as a float: json.loads gives 5.0 == 5 */
    };
    char err[256];
    model_eos e;
    int named;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        err[0] = 0;
        if (parse(ok[i].json, ok[i].vocab, &e, &named, err, sizeof err)) FAIL("%s: %s", ok[i].json, err);
        ASSERT_EQ(named, 1);
        ASSERT_EQ(e.n, ok[i].n);
        ASSERT_STREQ(e.source, "generation_config.json");
        for (int k = 0; k < ok[i].n; k++) ASSERT_EQ(e.ids[k], ok[i].ids[k]);
    }
    static const char *const none[] = {"{}", "{\"eos_token_id\": null}", "{\"eos_token_id\": []}",
                                       "{\"bos_token_id\": 1, \"pad_token_id\": 0}"};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) {
        ASSERT_EQ(parse(none[i], 16, &e, &named, err, sizeof err), 0);
        ASSERT_EQ(named, 0);
        ASSERT_EQ(e.n, 0);
    }
}

TEST(parse_refuses_bad_values_naming_the_field) {
    static const struct { const char *json; const char *msg; } bad[] = {
        {"{\"eos_token_id\": 16}", "\"eos_token_id\" 16 is outside the vocabulary [0, 16)"},
        {"{\"eos_token_id\": [2, 16]}", "outside the vocabulary"},
        {"{\"eos_token_id\": -1}", "outside the vocabulary"},
        {"{\"eos_token_id\": \"2\"}", "\"eos_token_id\" must be an integer token id or a list of them"},
        {"{\"eos_token_id\": [2, \"3\"]}", "must be an integer"},
        {"{\"eos_token_id\": [2, 2.5]}", "must be an integer"},
        {"{\"eos_token_id\": [[2]]}", "must be an integer"},
        {"{\"eos_token_id\": true}", "must be an integer"},
        {"{\"eos_token_id\": {\"id\": 2}}", "must be an integer"},
        {"{\"eos_token_id\": 1e300}", "outside the vocabulary"},
        {"{\"eos_token_id\": 2, \"eos_token_id\": 3}", "duplicate field \"eos_token_id\""},
        {"{\"eos_token_id\": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}", "more than 16 ids"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        model_eos e;
        int named;
        ASSERT_EQ(parse(bad[i].json, i + 1 == sizeof bad / sizeof bad[0] ? 100 : 16, &e, &named, err, sizeof err),
                  PEFTD_EFORMAT);
        if (!strstr(err, bad[i].msg) || strncmp(err, "generation_config.json: ", 24) != 0)
            FAIL("%s: \"%s\" lacks \"%s\"", bad[i].json, err, bad[i].msg);
    }
}

static void put(const char *dir, const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    ASSERT(f);
    fputs(text, f);
    fclose(f);
}

TEST(generation_config_wins_over_config_json) {
    char dir[] = "/tmp/peftd-eos-XXXXXX", err[512] = "", p[512];
    ASSERT(mkdtemp(dir));
    const char *cfg = "{\"vocab_size\": 512, \"eos_token_id\": [2, 9]}";
    model_eos e;
    /* no generation_config.json: config.json's whole list */
    ASSERT_EQ(model_eos_load(dir, cfg, strlen(cfg), 512, &e, err, sizeof err), 0);
    ASSERT_EQ(e.n, 2);
    ASSERT_EQ(e.ids[0], 2);
    ASSERT_EQ(e.ids[1], 9);
    ASSERT_STREQ(e.source, "config.json");
    /* generation_config.json names a set: it is the set */
    put(dir, "generation_config.json", "{\"bos_token_id\": 1, \"eos_token_id\": [2, 500, 378]}");
    ASSERT_EQ(model_eos_load(dir, cfg, strlen(cfg), 512, &e, err, sizeof err), 0);
    ASSERT_EQ(e.n, 3);
    ASSERT_EQ(e.ids[2], 378);
    ASSERT_STREQ(e.source, "generation_config.json");
    /* a generation_config.json without eos_token_id: config.json's */
    put(dir, "generation_config.json", "{\"temperature\": 0.6}");
    ASSERT_EQ(model_eos_load(dir, cfg, strlen(cfg), 512, &e, err, sizeof err), 0);
    ASSERT_EQ(e.n, 2);
    ASSERT_STREQ(e.source, "config.json");
    /* neither names one: empty (the engine falls back to the tokenizer's eos) */
    const char *cfg2 = "{\"vocab_size\": 512}";
    ASSERT_EQ(model_eos_load(dir, cfg2, strlen(cfg2), 512, &e, err, sizeof err), 0);
    ASSERT_EQ(e.n, 0);
    ASSERT(e.source == NULL);
    /* broken files are refused, naming the file */
    put(dir, "generation_config.json", "{\"eos_token_id\": [2,");
    ASSERT_EQ(model_eos_load(dir, cfg, strlen(cfg), 512, &e, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "generation_config.json: not a JSON object"));
    put(dir, "generation_config.json", "{\"eos_token_id\": 512}");
    ASSERT_EQ(model_eos_load(dir, cfg, strlen(cfg), 512, &e, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "generation_config.json: \"eos_token_id\" 512 is outside the vocabulary"));
    const char *cfg3 = "{\"eos_token_id\": \"x\"}";
    snprintf(p, sizeof p, "%s/generation_config.json", dir);
    unlink(p);
    ASSERT_EQ(model_eos_load(dir, cfg3, strlen(cfg3), 512, &e, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "config.json: \"eos_token_id\""));
    rmdir(dir);
}

TEST_MAIN(parse_int_list_absent_null, parse_refuses_bad_values_naming_the_field, generation_config_wins_over_config_json)
