/* tests/unit/test_chat_template.c — the chat-template interpreter against transformers.
 *
 * tests/fixtures/chat/chat_fixtures.json (made by make_chat_fixtures.py with
 * `tokenizer.apply_chat_template(..., tokenize=False)`) holds, per template family
 * (Llama-2, Llama-3, ChatML, Qwen2, Mistral v0.1/v0.3, Zephyr, a feature "stress" template,
 * and the published Llama 3.1/3.2, Qwen2.5, Qwen3, Gemma 2/3, Phi-3/3.5, Phi-4-mini templates
 * with tools, tool calls, reasoning and content parts; plus one-line "jinja" templates on
 * Python semantics), conversations with and without system messages, multi-turn, unicode,
 * empty messages and raise_exception paths, add_generation_prompt on and off, and 24 seeded
 * random conversations per published template.
 * Every rendering must match byte for byte; raise_exception cases must fail with the
 * template's message. Also: loading (tokenizer_config.json string / named list / none,
 * override files), parse errors with line numbers, and hostile templates that must stop.
 */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "lib/status.h"
#include "server/text/chat_template.h"
#include "tests/harness/test.h"

#define FIX "tests/fixtures/chat/chat_fixtures.json"

static int render(const char *tmpl, const chat_message *m, int n, bool agp, const char *bos, const char *eos,
                  char **out, char *err, size_t errlen) {
    chat_template *t = NULL;
    int rc = chat_template_parse(tmpl, strlen(tmpl), &t, err, errlen);
    if (rc) return rc;
    chat_render_opts o = {.add_generation_prompt = agp, .bos_token = bos, .eos_token = eos};
    size_t len;
    rc = chat_template_render(t, m, n, &o, out, &len, err, errlen);
    chat_template_free(t);
    return rc;
}

TEST(fixtures_match_transformers_byte_for_byte) {
    size_t len;
    char *text = test_read_file(FIX, &len);
    if (!text) FAIL("cannot read %s", FIX);
    cJSON *root = cJSON_Parse(text);
    const cJSON *templates = cJSON_GetObjectItem(root, "templates"), *cases = cJSON_GetObjectItem(root, "cases");
    ASSERT(cJSON_IsObject(templates) && cJSON_IsArray(cases));
    /* strftime_now: the fixtures pin transformers' datetime.now() to "now" in UTC */
    setenv("TZ", "UTC", 1);
    tzset();
    int n_cases = 0, n_err = 0, n_raise = 0, n_tools = 0, bad = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *family = cJSON_GetObjectItem(c, "family")->valuestring;
        const cJSON *own = cJSON_GetObjectItem(c, "template");
        const cJSON *tj = own ? own : cJSON_GetObjectItem(templates, family);
        if (!cJSON_IsString(tj)) FAIL("case %d (%s): no template", n_cases, family);
        const char *tmpl = tj->valuestring;
        const cJSON *bos = cJSON_GetObjectItem(c, "bos_token"), *eos = cJSON_GetObjectItem(c, "eos_token");
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages");
        const cJSON *tools = cJSON_GetObjectItem(c, "tools"), *vars = cJSON_GetObjectItem(c, "kwargs");
        const cJSON *now = cJSON_GetObjectItem(c, "now");
        bool agp = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
        const cJSON *exp = cJSON_GetObjectItem(c, "expected"), *experr = cJSON_GetObjectItem(c, "error");
        const cJSON *errtype = cJSON_GetObjectItem(c, "error_type");
        char *out = NULL, err[512] = "";
        chat_template *t = NULL;
        int rc = chat_template_parse(tmpl, strlen(tmpl), &t, err, sizeof err);
        if (!rc) {
            chat_render_opts o = {.add_generation_prompt = agp,
                                  .bos_token = cJSON_IsString(bos) ? bos->valuestring : NULL,
                                  .eos_token = cJSON_IsString(eos) ? eos->valuestring : NULL,
                                  .tools = cJSON_IsArray(tools) ? tools : NULL,
                                  .vars = cJSON_IsObject(vars) ? vars : NULL,
                                  .now = cJSON_IsNumber(now) ? (long long)now->valuedouble : 0};
            size_t olen;
            rc = chat_template_render_json(t, msgs, &o, &out, &olen, err, sizeof err);
            chat_template_free(t);
        }
        n_cases++;
        n_tools += cJSON_IsArray(tools);
        int n = cJSON_GetArraySize(msgs);
        if (exp) {
            if (rc || strcmp(out, exp->valuestring) != 0) {
                size_t k = 0;
                if (!rc)
                    while (out[k] && out[k] == exp->valuestring[k]) k++;
                fprintf(stderr, "case %d (%s, %d messages, agp=%d): %s\n  got:      \"%s\"\n  expected: \"%s\"\n  first difference at byte %zu\n",
                        n_cases - 1, family, n, agp, rc ? err : "mismatch", rc ? "" : out, exp->valuestring, k);
                bad++;
            }
        } else {
            /* raise_exception: exactly the template's message; other template errors
             * (jinja2's UndefinedError, TypeError, ...) need only fail */
            bool raise = cJSON_IsString(errtype) && !strcmp(errtype->valuestring, "TemplateError");
            n_err++;
            n_raise += raise;
            if (rc != PEFTD_EINVAL || (raise && strcmp(err, experr->valuestring) != 0)) {
                fprintf(stderr, "case %d (%s): expected error \"%s\", got rc %d \"%s\"\n", n_cases - 1, family,
                        experr->valuestring, rc, rc ? err : out);
                bad++;
            }
        }
        free(out);
    }
    cJSON_Delete(root);
    free(text);
    fprintf(stderr, "%d cases (%d errors, %d raise_exception; %d with tools), %d mismatches\n", n_cases, n_err, n_raise,
            n_tools, bad);
    ASSERT(n_cases >= 560);
    ASSERT(n_raise >= 60);
    ASSERT(n_tools >= 100);
    ASSERT_EQ(bad, 0);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    ASSERT(f);
    fputs(text, f);
    fclose(f);
}

TEST(load_from_model_dirs_and_overrides) {
    char err[512];
    chat_template *t = (chat_template *)1;
    /* the default model ships no template */
    ASSERT_EQ(chat_template_load("models/stories260K", NULL, &t, err, sizeof err), PEFTD_ENOTFOUND);
    ASSERT(t == NULL);
    /* the test model dir has a ChatML one */
    ASSERT_EQ(chat_template_load("tests/fixtures/models/stories260K-chat", NULL, &t, err, sizeof err), 0);
    ASSERT_STREQ(chat_template_family(t), "chatml");
    chat_message m[] = {{"user", "Hi"}};
    chat_render_opts o = {.add_generation_prompt = true};
    char *out;
    size_t len;
    ASSERT_EQ(chat_template_render(t, m, 1, &o, &out, &len, err, sizeof err), 0);
    ASSERT_STREQ(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    ASSERT_EQ(len, strlen(out));
    free(out);
    chat_template_free(t);

    char dir[] = "/tmp/peftd-chat-XXXXXX";
    ASSERT(mkdtemp(dir));
    char p1[256], p2[256], p3[256];
    /* a list of named templates: "default" is used */
    snprintf(p1, sizeof p1, "%s/tokenizer_config.json", dir);
    write_file(p1, "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, "
                   "{\"name\": \"default\", \"template\": \"{{ bos_token }}[INST] {{ messages[0].content }} [/INST]\"}]}");
    ASSERT_EQ(chat_template_load(dir, NULL, &t, err, sizeof err), 0);
    ASSERT_STREQ(chat_template_family(t), "mistral");
    o.bos_token = "<s>";
    ASSERT_EQ(chat_template_render(t, m, 1, &o, &out, &len, err, sizeof err), 0);
    ASSERT_STREQ(out, "<s>[INST] Hi [/INST]");
    free(out);
    chat_template_free(t);
    /* an override as raw Jinja text wins over the model's */
    snprintf(p2, sizeof p2, "%s/override.jinja", dir);
    write_file(p2, "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}\n");
    ASSERT_EQ(chat_template_load(dir, p2, &t, err, sizeof err), 0);
    ASSERT_EQ(chat_template_render(t, m, 1, &o, &out, &len, err, sizeof err), 0);
    ASSERT_STREQ(out, "<user>Hi"); /* jinja2 drops the one trailing newline */
    free(out);
    chat_template_free(t);
    /* a .json override without a template, a missing override, a broken template */
    snprintf(p3, sizeof p3, "%s/empty.json", dir);
    write_file(p3, "{\"bos_token\": \"<s>\"}");
    ASSERT_EQ(chat_template_load(dir, p3, &t, err, sizeof err), PEFTD_ENOTFOUND);
    ASSERT(strstr(err, "has no chat_template"));
    ASSERT(chat_template_load(dir, "/nonexistent/x.jinja", &t, err, sizeof err) < 0);
    ASSERT(strstr(err, "/nonexistent/x.jinja"));
    write_file(p2, "line one\n{% for m in messages %}\n{{ m.content \n");
    ASSERT_EQ(chat_template_load(dir, p2, &t, err, sizeof err), PEFTD_EFORMAT);
    ASSERT(strstr(err, "override.jinja"));
    unlink(p1);
    unlink(p2);
    unlink(p3);
    rmdir(dir);
}

TEST(parse_errors_name_the_line) {
    static const struct { const char *src; const char *msg; } cases[] = {
        {"a\nb\n{% for x in y %}never closed", "missing '{% endfor %}'"},
        {"{% if x %}\n{% endfor %}", "line 2: unexpected 'endfor'"},
        {"{{ 1 + }}", "unexpected '}}'"},
        {"{% include 'x' %}", "unsupported tag 'include'"},
        {"{{ 'unterminated }}", "unterminated string"},
        {"{# no end", "missing end of comment"},
        {"{{ a ! b }}", "unexpected character '!'"},
        {"{% raw %}{{ x }}{% endraw %}", "unsupported tag 'raw'"},
        {"{% filter upper %}x{% endfilter %}", "unsupported tag 'filter'"},
        {"{% for m in messages recursive %}{% endfor %}", "recursive loops are not supported"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        chat_template *t = NULL;
        char err[512] = "";
        ASSERT_EQ(chat_template_parse(cases[i].src, strlen(cases[i].src), &t, err, sizeof err), PEFTD_EFORMAT);
        ASSERT(t == NULL);
        if (!strstr(err, cases[i].msg)) FAIL("template %zu: \"%s\" lacks \"%s\"", i, err, cases[i].msg);
    }
}

TEST(runtime_errors_and_hostile_templates_stop) {
    chat_message m[] = {{"user", "Hi"}};
    static const struct { const char *src; const char *msg; } cases[] = {
        {"{{ raise_exception('no ' ~ messages[0].role ~ 's here') }}", "no users here"},
        {"{{ undefined_thing.attr }}", "undefined"},
        {"{{ 'a' + 1 }}", "unsupported operand"},
        {"{{ 1 // 0 }}", "division"},
        {"{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}", "than allowed"},
        {"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "nested deeper"},
        {"{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
         "larger than"},
        {"{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "larger than"},
        {"{% for i in range(1000) %}{{ 'y' * 1000000 }}{% endfor %}", "larger than"},
        /* what jinja2 renders but peftd cannot match: refused, never rendered differently */
        {"{{ messages|map(attribute='role') }}", "prints a generator"},      /* <generator object at 0x...> */
        {"{{ messages[0].keys() }}", "prints a dict view"},                  /* dict_keys([...]) */
        {"{{ raise_exception }}", "prints a function"},
        {"{{ 9223372036854775807 + 1 }}", "integer overflow"},               /* Python's big ints */
        {"{{ 2 ** 64 }}", "integer overflow"},
        {"{{ '\xe1\xbe\xb3'|upper }}", "upper() of U+1FB3 is not supported"}, /* iota subscript */
        {"{{ [2, 1]|sort }}", "no filter named 'sort'"},
        {"{{ '{}'.format(1) }}", "'format' is undefined"},
        {"{{ messages|map(attribute='role')|length }}", "has no len()"},
        {"{{ 1.5|round(-1) }}", "not supported"},
        {"{{ x|tojson }}", "not JSON serializable"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = NULL, err[512] = "";
        int rc = render(cases[i].src, m, 1, true, "<s>", "</s>", &out, err, sizeof err);
        if (rc == 0) FAIL("template %zu rendered \"%.80s\"", i, out);
        if (!strstr(err, cases[i].msg)) FAIL("template %zu: \"%s\" lacks \"%s\"", i, err, cases[i].msg);
        ASSERT(out == NULL);
        if (i == 0) ASSERT_STREQ(err, "no users here"); /* exactly the template's message */
    }
}

TEST(family_names_and_json_api) {
    size_t len;
    char *text = test_read_file(FIX, &len), err[256];
    ASSERT(text);
    cJSON *root = cJSON_Parse(text);
    static const struct { const char *fixture, *family; } fam[] = {
        {"llama-3.1", "llama-3"}, {"llama-3.2", "llama-3"}, {"qwen2.5", "chatml"}, {"qwen3", "chatml"},
        {"gemma-2", "gemma"}, {"gemma-3", "gemma"}, {"phi-3", "phi-3"}, {"phi-3.5", "phi-3"}, {"phi-4-mini", "phi-3"},
        {"zephyr", "zephyr"}, {"llama-2", "llama-2"}, {"mistral-v0.3", "mistral"},
    };
    for (size_t i = 0; i < sizeof fam / sizeof fam[0]; i++) {
        const char *src = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "templates"), fam[i].fixture)->valuestring;
        chat_template *t = NULL;
        ASSERT_EQ(chat_template_parse(src, strlen(src), &t, err, sizeof err), 0);
        if (strcmp(chat_template_family(t), fam[i].family)) FAIL("%s: %s", fam[i].fixture, chat_template_family(t));
        chat_template_free(t);
    }
    cJSON_Delete(root);
    free(text);
    /* the JSON entry point: argument types, and strftime_now on the real clock when now = 0 */
    const char *src = "{{ strftime_now('%Y') }}|{{ tools|length }}|{{ x }}";
    chat_template *t = NULL;
    ASSERT_EQ(chat_template_parse(src, strlen(src), &t, err, sizeof err), 0);
    cJSON *msgs = cJSON_Parse("[]"), *obj = cJSON_Parse("{}"), *tools = cJSON_Parse("[{\"a\": 1}, 2]");
    cJSON *vars = cJSON_Parse("{\"x\": \"v\", \"tools\": []}");
    chat_render_opts o = {0};
    char *out = NULL;
    ASSERT_EQ(chat_template_render_json(t, obj, &o, &out, &len, err, sizeof err), PEFTD_EINVAL);
    ASSERT(strstr(err, "messages must be a JSON array"));
    o.tools = obj;
    ASSERT_EQ(chat_template_render_json(t, msgs, &o, &out, &len, err, sizeof err), PEFTD_EINVAL);
    o.tools = tools;
    o.vars = msgs;
    ASSERT_EQ(chat_template_render_json(t, msgs, &o, &out, &len, err, sizeof err), PEFTD_EINVAL);
    o.vars = NULL;
    ASSERT_EQ(chat_template_render_json(t, msgs, &o, &out, &len, err, sizeof err), 0);
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    char want[64];
    snprintf(want, sizeof want, "%d|2|", tm.tm_year + 1900);
    ASSERT_STREQ(out, want);
    free(out);
    o.vars = vars; /* tools= and a variable named tools: a TypeError in transformers */
    ASSERT_EQ(chat_template_render_json(t, msgs, &o, &out, &len, err, sizeof err), PEFTD_EINVAL);
    ASSERT(strstr(err, "'tools' is set by the renderer"));
    cJSON_DeleteItemFromObject(vars, "tools");
    ASSERT_EQ(chat_template_render_json(t, msgs, &o, &out, &len, err, sizeof err), 0);
    snprintf(want, sizeof want, "%d|2|v", tm.tm_year + 1900);
    ASSERT_STREQ(out, want);
    free(out);
    chat_template_free(t);
    cJSON_Delete(msgs);
    cJSON_Delete(obj);
    cJSON_Delete(tools);
    cJSON_Delete(vars);
}

TEST(undefined_tokens_and_empty_conversations) {
    char *out = NULL, err[256];
    /* bos_token not given: undefined, prints nothing, `is defined` is false */
    ASSERT_EQ(render("[{{ bos_token }}]{{ 'd' if bos_token is defined else 'u' }}{{ messages|length }}", NULL, 0, false, NULL,
                     NULL, &out, err, sizeof err),
              0);
    ASSERT_STREQ(out, "[]u0");
    free(out);
}

TEST_MAIN(fixtures_match_transformers_byte_for_byte, load_from_model_dirs_and_overrides, parse_errors_name_the_line,
          runtime_errors_and_hostile_templates_stop, family_names_and_json_api, undefined_tokens_and_empty_conversations)
