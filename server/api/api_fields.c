/* server/api/api_fields.c — the field audit of POST /v1/completions and
 * POST /v1/chat/completions: every top-level key of a request body is either read by
 * the one parse path (api_completions_parse.c, api_chat.c) or answered with a 400 that
 * names it. Nothing is silently dropped: an OpenAI field peftd does not implement says
 * so, an unknown key (a typo, a field of a newer API) is refused as unknown. JSON null
 * means "not given" for the known fields (OpenAI's SDKs send nulls), so a null there is
 * accepted; an unknown key is refused whatever its value.
 */
#include <string.h>

#include <cJSON.h>

#include "server/api/api_completions.h"

/* Read by both routes (api_parse_common). */
static const char *const both_fields[] = {
    "model", "adapter", "adapter_scale", "adapters", "combination", "temperature", "top_p", "top_k", "seed", "logprobs", "n",
    "max_tokens", "stream", "stream_options", "user", "ignore_eos", "stop", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "logit_bias", "min_tokens", "response_format", NULL,
};
static const char *const completions_fields[] = {"prompt", "echo", "best_of", NULL};
static const char *const chat_fields[] = {"messages", "max_completion_tokens", "top_logprobs",
                                          "add_generation_prompt", NULL};

/* OpenAI fields that are not implemented: refused by name, with what to do instead. */
static const struct {
    const char *name;
    int route; /* 0 both, 1 completions only, 2 chat only */
    const char *why;
} refused[] = {
    {"suffix", 1, "insertion (suffix) is not implemented"},
    {"tools", 2, "tool calling is not implemented"},
    {"tool_choice", 2, "tool calling is not implemented"},
    {"parallel_tool_calls", 2, "tool calling is not implemented"},
    {"functions", 2, "function calling is not implemented"},
    {"function_call", 2, "function calling is not implemented"},
    {"audio", 2, "audio output is not implemented"},
    {"modalities", 2, "output modalities other than text are not implemented"},
    {"prediction", 2, "predicted outputs are not implemented"},
    {"reasoning_effort", 2, "reasoning effort is not implemented"},
    {"web_search_options", 2, "web search is not implemented"},
    {"store", 2, "stored completions are not implemented"},
    {"metadata", 2, "stored completions (metadata) are not implemented"},
    {"service_tier", 0, "service tiers are not implemented"},
};

static bool in_list(const char *const *list, const char *key) {
    for (int i = 0; list[i]; i++)
        if (!strcmp(list[i], key)) return true;
    return false;
}

/* response_format: {"type":"text"} is what peftd does anyway; {"type":"json_object"} and
 * {"type":"json_schema","json_schema":{"name","schema","strict","description"}} are read
 * by api_parse_common (grammar-constrained decoding: json_grammar.h, json_schema.h; the
 * schema itself is compiled, and refused by keyword, there). Here: the shape. */
static int check_json_schema(const cJSON *rf, api_err *err) {
    const cJSON *it;
    cJSON_ArrayForEach(it, rf) {
        if (strcmp(it->string, "type") && strcmp(it->string, "json_schema"))
            return api_fail(err, "unknown_parameter", "unknown field 'response_format.%.64s'", it->string);
    }
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
    if (!cJSON_IsObject(js))
        return api_fail(err, "invalid_type", "'response_format.json_schema' must be an object with 'name' and 'schema'");
    cJSON_ArrayForEach(it, js) {
        const char *k = it->string;
        if (!strcmp(k, "name")) {
            const char *n = cJSON_IsString(it) ? it->valuestring : NULL;
            size_t L = n ? strlen(n) : 0;
            bool ok = L >= 1 && L <= 64;
            for (size_t i = 0; ok && i < L; i++)
                ok = (n[i] >= 'a' && n[i] <= 'z') || (n[i] >= 'A' && n[i] <= 'Z') || (n[i] >= '0' && n[i] <= '9') ||
                     n[i] == '_' || n[i] == '-';
            if (!ok)
                return api_fail(err, "invalid_value", "'response_format.json_schema.name' must be 1 to 64 of a-z, "
                                                       "A-Z, 0-9, '_' and '-'");
        } else if (!strcmp(k, "strict")) {
            if (!cJSON_IsBool(it) && !cJSON_IsNull(it))
                return api_fail(err, "invalid_type", "'response_format.json_schema.strict' must be a boolean");
        } else if (!strcmp(k, "description")) {
            if (!cJSON_IsString(it) && !cJSON_IsNull(it))
                return api_fail(err, "invalid_type", "'response_format.json_schema.description' must be a string");
        } else if (strcmp(k, "schema")) {
            return api_fail(err, "unknown_parameter", "unknown field 'response_format.json_schema.%.64s'", k);
        }
    }
    if (!cJSON_GetObjectItemCaseSensitive(js, "name"))
        return api_fail(err, "invalid_value", "'response_format.json_schema.name' is required");
    const cJSON *sch = cJSON_GetObjectItemCaseSensitive(js, "schema");
    if (!cJSON_IsObject(sch))
        return api_fail(err, "invalid_value", "'response_format.json_schema.schema' is required (a JSON schema object)");
    return 0;
}

static int check_response_format(const cJSON *root, api_err *err) {
    const cJSON *rf = api_field(root, "response_format");
    if (!rf) return 0;
    const cJSON *type = cJSON_IsObject(rf) ? cJSON_GetObjectItemCaseSensitive(rf, "type") : NULL;
    if (!cJSON_IsString(type))
        return api_fail(err, "invalid_type", "'response_format' must be an object with a string 'type'");
    if (!strcmp(type->valuestring, "text") || !strcmp(type->valuestring, "json_object")) return 0;
    if (!strcmp(type->valuestring, "json_schema")) return check_json_schema(rf, err);
    return api_fail(err, "invalid_value",
                    "'response_format' type must be 'text', 'json_object' or 'json_schema' (got '%.64s')",
                    type->valuestring);
}

int api_check_fields(const cJSON *root, bool chat, api_err *err) {
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        const char *k = it->string;
        if (in_list(both_fields, k) || in_list(chat ? chat_fields : completions_fields, k)) continue;
        for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
            if (strcmp(refused[i].name, k) != 0 || refused[i].route == (chat ? 1 : 2)) continue;
            if (cJSON_IsNull(it)) goto next; /* null: not given */
            if (!strcmp(k, "store") && cJSON_IsFalse(it)) goto next; /* store: false asks for nothing */
            if (!strcmp(k, "service_tier") && cJSON_IsString(it) &&
                (!strcmp(it->valuestring, "auto") || !strcmp(it->valuestring, "default")))
                goto next;
            return api_fail(err, "unsupported_parameter", "'%s' is not supported: %s", k, refused[i].why);
        }
        return api_fail(err, "unknown_parameter", "unknown field '%.64s' on %s: peftd does not ignore fields it does "
                        "not implement", k, chat ? "/v1/chat/completions" : "/v1/completions");
    next:;
    }
    return check_response_format(root, err);
}

int api_check_keys(const cJSON *root, const char *const *keys, const char *route, api_err *err) {
    for (const cJSON *it = root->child; it; it = it->next)
        if (!in_list(keys, it->string))
            return api_fail(err, "unknown_parameter", "'%.64s' is not a parameter of %s", it->string, route);
    return 0;
}
