/* server/api/api_completions_parse.c — request bodies of POST /v1/completions and
 * POST /v1/chat/completions: the JSON parse (api_parse_begin), the one reader of the
 * options both routes share into the engine's request (api_parse_common, vLLM's
 * to_sampling_params: sampling, penalties, logit_bias, min_tokens, stop, n, best_of,
 * max_tokens, stream, logprobs in each route's shape, the model/adapter), the prompts of /v1/completions and the context rule
 * (api_parse_fit: engine_max_new_tokens). Errors name the field the client sent; unknown
 * and unimplemented fields are refused by name (api_fields.c); JSON null means "not given".
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "adapter_store/json_check.h"
#include "lib/status.h"
#include "server/api/api_completions.h"
#include "server/engine/json_schema.h"

#define API_DEFAULT_MAX_TOKENS 16 /* OpenAI's default for /v1/completions */

int api_fail(api_err *err, const char *code, const char *fmt, ...) {
    va_list ap;
    err->status = MHD_HTTP_BAD_REQUEST;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return PEFTD_EINVAL;
}

const cJSON *api_field(const cJSON *root, const char *name) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);
    return it && !cJSON_IsNull(it) ? it : NULL;
}

/* True when it is a JSON number with an integral value in [lo, hi]. */
static bool api_is_int(const cJSON *it, double lo, double hi, long long *out) {
    if (!cJSON_IsNumber(it)) return false;
    double v = it->valuedouble;
    /* long long holds [-2^63, 2^63): 2^63 itself is what (double)LLONG_MAX rounds to */
    if (!isfinite(v) || v != floor(v) || v < lo || v > hi || v < -9223372036854775808.0 ||
        v >= 9223372036854775808.0)
        return false;
    *out = (long long)v;
    return true;
}

static int api_get_bool(const cJSON *root, const char *name, bool *out, api_err *err) {
    const cJSON *it = api_field(root, name);
    if (!it) return 0;
    if (!cJSON_IsBool(it)) return api_fail(err, "invalid_type", "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(it);
    return 0;
}

int api_get_int(const cJSON *root, const char *name, long long lo, long long hi,
                       long long *out, api_err *err) {
    const cJSON *it = api_field(root, name);
    if (!it) return 0;
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) ||
        it->valuedouble != floor(it->valuedouble))
        return api_fail(err, "invalid_type", "'%s' must be an integer", name);
    if (!api_is_int(it, (double)lo, (double)hi, out))
        return api_fail(err, "invalid_value", "'%s' must be between %lld and %lld, got %.17g",
                        name, lo, hi, it->valuedouble);
    return 0;
}

static int api_get_float(const cJSON *root, const char *name, double lo, double hi, bool lo_open,
                         float *out, api_err *err) {
    const cJSON *it = api_field(root, name);
    if (!it) return 0;
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble))
        return api_fail(err, "invalid_type", "'%s' must be a number", name);
    double v = it->valuedouble;
    if (v > hi || (lo_open ? v <= lo : v < lo))
        return api_fail(err, "invalid_value", "'%s' must be in %s%g, %g], got %g", name,
                        lo_open ? "(" : "[", lo, hi, v);
    *out = (float)v;
    return 0;
}

static int api_prompt_from_text(const api_server *s, const char *f, const char *text, api_prompt *p,
                                api_err *err) {
    size_t len = strlen(text);
    if (!http_utf8_valid(text, len))
        return api_fail(err, "invalid_value", "'%s' is not valid UTF-8", f);
    p->text = strdup(text);
    if (!p->text) return PEFTD_ENOMEM;
    p->text_len = len;
    int rc = tokenizer_encode(s->tok, text, len, true, &p->ids, &p->n_ids);
    if (rc) return api_fail(err, "invalid_value", "cannot tokenize '%s': %s", f, peftd_strerror(rc));
    if (p->n_ids == 0) return api_fail(err, "invalid_value", "'%s' must not be empty", f);
    return 0;
}

static int api_prompt_from_ids(const api_server *s, const char *f, const cJSON *arr, api_prompt *p, api_err *err) {
    int n = cJSON_GetArraySize(arr);
    int vocab = tokenizer_vocab_size(s->tok);
    if (n == 0) return api_fail(err, "invalid_value", "'%s' must not be empty", f);
    p->ids = malloc((size_t)n * sizeof *p->ids);
    if (!p->ids) return PEFTD_ENOMEM;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        long long v;
        if (!api_is_int(it, 0, vocab - 1, &v))
            return api_fail(err, "invalid_value", "'%s' token ids must be integers in [0, %d)", f, vocab);
        p->ids[p->n_ids++] = (int32_t)v;
    }
    /* Token prompts are used as given (no BOS added), as OpenAI and vLLM do; the decoded
     * text is what echo shows. */
    int rc = tokenizer_decode(s->tok, p->ids, p->n_ids, true, &p->text, &p->text_len);
    if (rc) return api_fail(err, "invalid_value", "cannot decode '%s' token ids: %s", f, peftd_strerror(rc));
    return 0;
}

static bool api_all_type(const cJSON *arr, cJSON_bool (*is)(const cJSON *)) {
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) if (!is(it)) return false;
    return true;
}

int api_parse_prompts(const api_server *s, const cJSON *root, const char *f, api_request *r, api_err *err) {
    const cJSON *p = api_field(root, f);
    if (!p) return api_fail(err, "missing_field", "'%s' is required", f);
    if (cJSON_IsString(p)) {
        r->n_prompts = 1;
        return api_prompt_from_text(s, f, p->valuestring, &r->prompts[0], err);
    }
    if (!cJSON_IsArray(p))
        return api_fail(err, "invalid_type",
                        "'%s' must be a string, an array of strings, an array of token ids or an array of "
                        "token-id arrays", f);
    int n = cJSON_GetArraySize(p);
    if (n == 0) return api_fail(err, "invalid_value", "'%s' must not be empty", f);
    if (api_all_type(p, cJSON_IsNumber)) {
        r->n_prompts = 1;
        return api_prompt_from_ids(s, f, p, &r->prompts[0], err);
    }
    bool strings = api_all_type(p, cJSON_IsString), arrays = api_all_type(p, cJSON_IsArray);
    if (!strings && !arrays)
        return api_fail(err, "invalid_type",
                        "'%s' must be a string, an array of strings, an array of token ids or an array of "
                        "token-id arrays", f);
    if (n > API_MAX_PROMPTS) return api_fail(err, "invalid_value", "at most %d inputs in '%s'", API_MAX_PROMPTS, f);
    const cJSON *it;
    cJSON_ArrayForEach(it, p) {
        api_prompt *dst = &r->prompts[r->n_prompts++];
        int rc = strings ? api_prompt_from_text(s, f, it->valuestring, dst, err) : api_prompt_from_ids(s, f, it, dst, err);
        if (rc) return rc;
    }
    return 0;
}

static int api_add_stop(api_request *r, const char *s, api_err *err) {
    if (!*s) return api_fail(err, "invalid_value", "'stop' strings must not be empty");
    if (!http_utf8_valid(s, strlen(s)))
        return api_fail(err, "invalid_value", "'stop' is not valid UTF-8");
    char *copy = strdup(s);
    if (!copy) return PEFTD_ENOMEM;
    r->stop_store[r->gen.n_stop] = copy;
    r->gen.stop[r->gen.n_stop++] = copy;
    return 0;
}

static int api_parse_stop(const cJSON *root, api_request *r, api_err *err) {
    const cJSON *st = api_field(root, "stop");
    if (!st) return 0;
    if (cJSON_IsString(st)) return api_add_stop(r, st->valuestring, err);
    if (!cJSON_IsArray(st) || !api_all_type(st, cJSON_IsString))
        return api_fail(err, "invalid_type", "'stop' must be a string or an array of strings");
    if (cJSON_GetArraySize(st) > ENGINE_MAX_STOP)
        return api_fail(err, "invalid_value", "'stop' has more than %d strings", ENGINE_MAX_STOP);
    const cJSON *it;
    cJSON_ArrayForEach(it, st) {
        int rc = api_add_stop(r, it->valuestring, err);
        if (rc) return rc;
    }
    return 0;
}

/* The adapter called name, for who: *out holds one registry reference, or an error. */
static int api_lookup_adapter(const api_server *s, const tenants_principal *who, const char *name,
                              adapter_handle **out, api_err *err) {
    *out = NULL;
    /* A tenant's name resolves to its own adapter first, then to the public one; another
     * tenant's is never looked at, so it answers exactly like a missing one. */
    const char *owner = who ? who->tenant : "";
    char own[ASTORE_KEY_MAX + 1] = "", pub[ASTORE_KEY_MAX + 1] = "", why[400];
    bool own_failed = false;
    /* registry keys (store.h): a name that is not one (no valid name) finds nothing */
    bool valid = registry_name_valid(name) && astore_key("", name, pub) == 0;
    if (valid && owner[0] && astore_key(owner, name, own) == 0) {
        *out = registry_acquire(s->reg, own);
        own_failed = !*out && registry_failure(s->reg, own, why, sizeof why) < 0;
    }
    if (!*out && !own_failed && valid) *out = registry_acquire(s->reg, pub);
    if (!*out && (own_failed || (valid && registry_failure(s->reg, pub, why, sizeof why) < 0))) {
        api_fail(err, "adapter_load_failed", "The adapter '%s' could not be loaded: %s", name, why);
        err->status = 422; /* Unprocessable Content: the adapter exists but cannot be served */
        return PEFTD_EINVAL;
    }
    if (!*out) {
        api_fail(err, "model_not_found", "The model or adapter '%.*s' does not exist (serving '%s')",
                 (int)http_utf8_prefix(name, 200), name, s->m->name);
        err->status = MHD_HTTP_NOT_FOUND;
        return PEFTD_ENOTFOUND;
    }
    return 0;
}

/* `adapters`: [{"name", "weight"?}, ...] composed per request (adapter_mix.h), `combination`
 * "linear" (default, PEFT's) or "cat"; with `model` the base (or absent) and no `adapter`. */
static int api_parse_mix(const api_server *s, const tenants_principal *who, const cJSON *root, api_request *r,
                         api_err *err) {
    const cJSON *list = api_field(root, "adapters"), *how = api_field(root, "combination"), *it;
    if (!list) {
        if (how) return api_fail(err, "invalid_value", "'combination' applies to 'adapters' (a composition)");
        return 0;
    }
    int n = cJSON_GetArraySize(list);
    if (!cJSON_IsArray(list) || n < 1 || n > ADAPTER_MAX_MIX)
        return api_fail(err, "invalid_type", "'adapters' must be an array of 1 to %d {\"name\", \"weight\"} objects",
                        ADAPTER_MAX_MIX);
    const cJSON *m = api_field(root, "model"), *a = api_field(root, "adapter");
    if ((a && !cJSON_IsNull(a)) || (m && cJSON_IsString(m) && !api_is_base(s, m->valuestring)))
        return api_fail(err, "invalid_value",
                        "'adapters' composes adapters on the base model: 'model' must name the base ('%s') or be "
                        "omitted, and 'adapter' must be absent",
                        s->m->name);
    adapter_mix_kind k = ADAPTER_MIX_LINEAR;
    if (how && (!cJSON_IsString(how) || adapter_mix_kind_parse(how->valuestring, &k) < 0))
        return api_fail(err, "invalid_value", "'combination' must be \"linear\" (PEFT's, the default) or \"cat\" "
                        "(the weighted sum of the adapters' deltas)");
    r->gen.mix_how = (int)k;
    int i = 0;
    cJSON_ArrayForEach(it, list) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name"),
                    *w = cJSON_GetObjectItemCaseSensitive(it, "weight"), *f;
        if (!cJSON_IsObject(it) || !cJSON_IsString(nm) || !nm->valuestring[0])
            return api_fail(err, "invalid_type", "'adapters[%d]' must be an object with a string 'name'", i);
        cJSON_ArrayForEach(f, it) if (strcmp(f->string, "name") && strcmp(f->string, "weight"))
            return api_fail(err, "invalid_value", "'adapters[%d]': unknown field '%.64s' (name, weight)", i, f->string);
        double wv = 1.0;
        if (w) {
            if (!cJSON_IsNumber(w) || !(fabs(w->valuedouble) <= ADAPTER_MIX_MAX_WEIGHT))
                return api_fail(err, "invalid_value", "'adapters[%d].weight' must be a number in [-%g, %g]", i,
                                ADAPTER_MIX_MAX_WEIGHT, ADAPTER_MIX_MAX_WEIGHT);
            wv = w->valuedouble;
        }
        int rc = api_lookup_adapter(s, who, nm->valuestring, &r->mix[i], err);
        if (rc) return rc;
        r->gen.n_mix = i + 1; /* released by api_request_free from here on */
        if (r->mix[i]->meta.kind != ADAPTER_LORA)
            return api_fail(err, "invalid_value", "'adapters[%d]': '%s' is %s; only LoRA adapters compose", i,
                            nm->valuestring, adapter_kind_name(r->mix[i]->meta.kind));
        r->gen.mix_handle[i] = r->mix[i];
        r->gen.mix_weight[i] = (float)wv;
        i++;
    }
    return 0;
}

/* `model` names the base model or an adapter (as vLLM and LoRAX do); the extension field
 * `adapter` names an adapter explicitly and wins; `adapters` composes several (api_parse_mix).
 * A missing model means the base model (llama.cpp does the same). Takes one registry
 * reference on each chosen adapter. */
int api_parse_model(const api_server *s, const tenants_principal *who, const cJSON *root, api_request *r,
                    api_err *err) {
    const cJSON *m = api_field(root, "model"), *a = api_field(root, "adapter");
    if (m && !cJSON_IsString(m)) return api_fail(err, "invalid_type", "'model' must be a string");
    if (a && !cJSON_IsNull(a) && !cJSON_IsString(a))
        return api_fail(err, "invalid_type", "'adapter' must be a string");
    const char *name = a && cJSON_IsString(a) && a->valuestring[0] ? a->valuestring
                       : m && !api_is_base(s, m->valuestring) ? m->valuestring
                                                              : NULL;
    /* the base echoes the name it was asked by (an alias: --served-model-name) */
    snprintf(r->model_id, sizeof r->model_id, "%s", m && !name ? m->valuestring : s->m->name);
    r->reg = s->reg;
    if (api_field(root, "adapters") || api_field(root, "combination")) {
        int rc = api_parse_mix(s, who, root, r, err);
        if (rc || !r->gen.n_mix) return rc;
        const cJSON *sc = api_field(root, "adapter_scale");
        return sc ? api_get_float(root, "adapter_scale", 0, ADAPTER_MAX_REQUEST_SCALE, false, &r->gen.adapter_scale,
                                  err)
                  : 0;
    }
    if (!name) return 0;
    int rc = api_lookup_adapter(s, who, name, &r->adapter, err);
    if (rc) return rc;
    snprintf(r->model_id, sizeof r->model_id, "%s", name);
    r->gen.handle = r->adapter;
    const cJSON *sc = api_field(root, "adapter_scale");
    if (sc) {
        /* adapter_check_scale's rule (the CLI's): LoRA family, DoRA included, in [0, 16] */
        if (!adapter_accepts_scale(r->adapter->meta.kind))
            return api_fail(err, "invalid_value", "'adapter_scale' applies to LoRA adapters only ('%s' is %s)",
                            name, adapter_kind_name(r->adapter->meta.kind));
        int rc = api_get_float(root, "adapter_scale", 0, ADAPTER_MAX_REQUEST_SCALE, false, &r->gen.adapter_scale, err);
        if (rc) return rc;
    }
    return 0;
}

/* logprobs in the route's shape: completions' integer k; chat's boolean plus top_logprobs k. */
static int api_parse_logprobs(const cJSON *root, bool chat, api_request *r, api_err *err) {
    long long v = -1;
    int rc;
    const cJSON *lp = api_field(root, "logprobs");
    if (!chat) {
        if (lp && cJSON_IsBool(lp))
            return api_fail(err, "invalid_type",
                            "'logprobs' must be an integer (0..%d) on /v1/completions", ENGINE_MAX_LOGPROBS);
        if ((rc = api_get_int(root, "logprobs", 0, ENGINE_MAX_LOGPROBS, &v, err))) return rc;
        r->gen.logprobs = (int)v;
        return 0;
    }
    if (lp && !cJSON_IsBool(lp))
        return api_fail(err, "invalid_type", "'logprobs' must be a boolean on /v1/chat/completions");
    bool on = lp && cJSON_IsTrue(lp);
    if (api_field(root, "top_logprobs")) {
        v = 0;
        if ((rc = api_get_int(root, "top_logprobs", 0, ENGINE_MAX_LOGPROBS, &v, err))) return rc;
        if (!on) return api_fail(err, "invalid_value", "'top_logprobs' requires 'logprobs' to be true");
    } else if (on) {
        v = 0;
    }
    r->gen.logprobs = (int)v;
    r->chat_logprobs = v >= 0;
    return 0;
}

/* The new tokens asked for: completions' max_tokens (default 16); chat's
 * max_completion_tokens, or max_tokens (its older name), or 0 = as many as fit (OpenAI
 * generates up to the context when no limit is given). Errors name the field sent. */
static int api_parse_max_tokens(const cJSON *root, bool chat, long long *out, api_err *err) {
    const char *name = chat && api_field(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    *out = chat ? 0 : API_DEFAULT_MAX_TOKENS;
    /* completions: max_tokens 0 with echo scores the prompt (api_request_parse checks echo);
     * anything else below 1 reads the same on both routes */
    const cJSON *it = api_field(root, name);
    if (!chat && it && cJSON_IsNumber(it) && it->valuedouble == 0) {
        *out = 0;
        return 0;
    }
    return api_get_int(root, name, 1, 1LL << 40, out, err);
}

/* logit_bias: {"token id": bias in [-100, 100]}; ids must be in the model's vocabulary. */
static int api_parse_logit_bias(const api_server *s, const cJSON *root, api_request *r, api_err *err) {
    const cJSON *lb = api_field(root, "logit_bias");
    if (!lb) return 0;
    if (!cJSON_IsObject(lb))
        return api_fail(err, "invalid_type", "'logit_bias' must be an object mapping token ids to biases");
    int n = cJSON_GetArraySize(lb), vocab = s->m->cfg.vocab_size;
    if (n > ENGINE_MAX_LOGIT_BIAS)
        return api_fail(err, "invalid_value", "'logit_bias' has %d entries, at most %d", n, ENGINE_MAX_LOGIT_BIAS);
    if (n == 0) return 0;
    r->bias_id = malloc((size_t)n * sizeof *r->bias_id);
    r->bias_val = malloc((size_t)n * sizeof *r->bias_val);
    if (!r->bias_id || !r->bias_val) return PEFTD_ENOMEM;
    const cJSON *it;
    cJSON_ArrayForEach(it, lb) {
        char *end = NULL;
        const char *k = it->string;
        long long id = strtoll(k, &end, 10);
        if (!*k || *end || k[0] == '+' || k[0] == ' ' || id < 0 || id >= vocab)
            return api_fail(err, "invalid_value", "'logit_bias' key '%.32s' is not a token id in [0, %d)", k, vocab);
        if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < -100 || it->valuedouble > 100)
            return api_fail(err, "invalid_value", "'logit_bias' value of token %s must be a number in [-100, 100]", k);
        r->bias_id[r->gen.n_bias] = (int32_t)id;
        r->bias_val[r->gen.n_bias++] = (float)it->valuedouble;
    }
    r->gen.bias_id = r->bias_id;
    r->gen.bias_val = r->bias_val;
    return 0;
}

/* The logit processing of engine.h: penalties, min_tokens, logit_bias. */
static int api_parse_penalties(const api_server *s, const cJSON *root, api_request *r, api_err *err) {
    int rc;
    long long v = 0;
    if ((rc = api_get_float(root, "presence_penalty", -2, 2, false, &r->gen.presence_penalty, err)) ||
        (rc = api_get_float(root, "frequency_penalty", -2, 2, false, &r->gen.frequency_penalty, err)) ||
        (rc = api_get_float(root, "repetition_penalty", 0, 1e4, true, &r->gen.repetition_penalty, err)) ||
        (rc = api_get_int(root, "min_tokens", 0, 1 << 30, &v, err)))
        return rc;
    r->gen.min_tokens = (int)v;
    return api_parse_logit_bias(s, root, r, err);
}

static int api_parse_options(const cJSON *root, bool chat, api_request *r, long long *max_tokens, api_err *err) {
    int rc;
    long long v;
    /* A JSON number reaches us as a double: integers beyond 2^53 are not exact there (2^60
     * and 2^60 + 1 read the same), so a seed must stay within it rather than two seeds
     * silently meaning one. Negative seeds wrap to uint64. */
    const double seed_lim = 9007199254740992.0;
    if ((rc = api_get_float(root, "temperature", 0, 2, false, &r->gen.temperature, err)) ||
        (rc = api_get_float(root, "top_p", 0, 1, true, &r->gen.top_p, err)))
        return rc;
    v = r->gen.top_k;
    if ((rc = api_get_int(root, "top_k", -1, 1 << 30, &v, err))) return rc;
    r->gen.top_k = v < 0 ? 0 : (int)v; /* -1 (vLLM's "off") is the engine's 0 */

    if (api_field(root, "seed")) {
        const cJSON *it = api_field(root, "seed");
        long long sv;
        if (!api_is_int(it, -seed_lim, seed_lim, &sv))
            return api_fail(err, "invalid_value", "'seed' must be an integer between -2^53 and 2^53 (JSON numbers "
                                                   "past that are not exact)");
        r->gen.seed = (uint64_t)sv;
        r->gen.has_seed = true;
    }
    if ((rc = api_parse_logprobs(root, chat, r, err))) return rc;
    v = 1;
    if ((rc = api_get_int(root, "n", 1, API_MAX_N, &v, err))) return rc;
    r->n = (int)v;
    if ((rc = api_parse_max_tokens(root, chat, max_tokens, err))) return rc;

    if ((rc = api_get_bool(root, "stream", &r->stream, err)) ||
        (!chat && (rc = api_get_bool(root, "echo", &r->echo, err))) || /* chat has no echo */
        (rc = api_get_bool(root, "ignore_eos", &r->gen.ignore_eos, err)))
        return rc;
    const cJSON *so = api_field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) return api_fail(err, "invalid_type", "'stream_options' must be an object");
        const cJSON *iu = api_field(so, "include_usage");
        if (iu && !cJSON_IsBool(iu))
            return api_fail(err, "invalid_type", "'stream_options.include_usage' must be a boolean");
        r->include_usage = iu && cJSON_IsTrue(iu);
    }
    const cJSON *rf = api_field(root, "response_format"); /* its type was checked by api_check_fields */
    const char *rft = rf ? cJSON_GetObjectItemCaseSensitive(rf, "type")->valuestring : "text";
    if (strcmp(rft, "text") != 0 && r->gen.ignore_eos)
        return api_fail(err, "invalid_value", "'ignore_eos' cannot be combined with 'response_format' %s (the "
                                               "value ends the generation)", rft);
    if (!strcmp(rft, "json_object")) r->gen.json_object = true;
    if (!strcmp(rft, "json_schema")) { /* the shape was checked by api_check_fields */
        const cJSON *sch = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(rf, "json_schema"), "schema");
        char msg[256];
        int crc = jschema_compile(sch, &r->gen.json_schema, msg, sizeof msg);
        if (crc) return api_fail(err, "invalid_value", "'response_format.json_schema.schema': %s", msg);
    }
    const cJSON *user = api_field(root, "user");
    if (user && !cJSON_IsString(user)) return api_fail(err, "invalid_type", "'user' must be a string");
    return api_parse_stop(root, r, err);
}

/* best_of (completions): best_of candidates per prompt, the n with the highest cumulative
 * logprob are returned; not with stream (OpenAI's and vLLM's rule). */
static int api_parse_best_of(const cJSON *root, api_request *r, api_err *err) {
    long long v = r->n;
    int rc = api_get_int(root, "best_of", 1, API_MAX_N, &v, err);
    if (rc) return rc;
    if (v < r->n) return api_fail(err, "invalid_value", "'best_of' (%lld) must be at least 'n' (%d)", v, r->n);
    if (v > r->n && r->stream) return api_fail(err, "invalid_value", "'best_of' greater than 'n' cannot be streamed");
    r->best_of = (int)v;
    return 0;
}

int api_parse_common(const api_server *s, const tenants_principal *who, const cJSON *root, bool chat,
                     api_request *r, long long *max_tokens, api_err *err) {
    int rc = api_check_fields(root, chat, err);
    if (!rc) rc = api_parse_options(root, chat, r, max_tokens, err);
    if (!rc) rc = api_parse_penalties(s, root, r, err);
    r->best_of = r->n;
    if (!rc && !chat) rc = api_parse_best_of(root, r, err);
    return rc ? rc : api_parse_model(s, who, root, r, err);
}

int api_parse_fit(const api_server *s, api_request *r, long long max_tokens, api_err *err) {
    /* prompt/prefix tuning's virtual tokens take context positions too */
    int n_virtual = r->adapter ? r->adapter->meta.n_virtual : 0;
    for (int i = 0; i < r->n_prompts; i++) {
        int rc = engine_max_new_tokens(s->e, (long long)r->prompts[i].n_ids, n_virtual, max_tokens, &r->gen.max_tokens,
                                       err->message, sizeof err->message);
        if (rc == PEFTD_ERANGE) {
            const api_status_map *m = api_status_http(rc);
            err->status = m->http;
            err->code = m->code;
        }
        if (rc) return rc;
    }
    if (r->score_only) r->gen.max_tokens = 0; /* echo + max_tokens 0: the prompt fits, nothing is generated */
    if (r->gen.min_tokens > r->gen.max_tokens)
        return api_fail(err, "invalid_value", "'min_tokens' (%d) must not exceed max_tokens (%d)", r->gen.min_tokens,
                        r->gen.max_tokens);
    return 0;
}

int api_parse_fit_prefill(const api_server *s, api_request *r, api_err *err) {
    int n_virtual = r->adapter ? r->adapter->meta.n_virtual : 0, unused;
    for (int i = 0; i < r->n_prompts; i++) {
        /* engine_submit's rule (it keeps room for one token even when nothing is generated) */
        int rc = engine_max_new_tokens(s->e, (long long)r->prompts[i].n_ids, n_virtual, 1, &unused,
                                       err->message, sizeof err->message);
        if (rc == PEFTD_ERANGE) {
            snprintf(err->message, sizeof err->message,
                     "input %d is %zu tokens (+%d virtual): more than this model's context length of %d", i,
                     r->prompts[i].n_ids, n_virtual, engine_context_length(s->e));
            err->status = 413;
            err->code = "context_length_exceeded";
        }
        if (rc) return rc;
    }
    r->gen.max_tokens = 0;
    return 0;
}

int api_parse_begin(const tenants_principal *who, const char *body, size_t len, api_request *r, cJSON **root,
                    api_err *err) {
    memset(r, 0, sizeof *r);
    *root = NULL;
    gen_params_default(&r->gen);
    /* the engine's fair scheduler groups by tenant: "" is the anonymous/admin tenant */
    if (who) {
        snprintf(r->gen.tenant, sizeof r->gen.tenant, "%s", who->tenant);
        if (who->weight > 0) r->gen.tenant_weight = who->weight;
    }
    r->gen.logprobs = -1;
    r->n = 1;
    err->status = MHD_HTTP_BAD_REQUEST;
    err->code = NULL;
    err->message[0] = '\0';

    if (!body || len == 0) return api_fail(err, "invalid_json", "the request body is empty");
    if (!http_utf8_valid(body, len))
        return api_fail(err, "invalid_json", "the request body is not valid UTF-8");
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(body, len, &end, false);
    int rc = 0;
    if (!o)
        return api_fail(err, "invalid_json", "the request body is not valid JSON (near byte %td)",
                        end ? end - body : (ptrdiff_t)0);
    while (end && end < body + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    if (end == body + len && json_duplicate_key(o))
        rc = api_fail(err, "invalid_json", "the key \"%.64s\" appears twice in one object: say it once",
                      json_duplicate_key(o));
    else if (end != body + len)
        rc = api_fail(err, "invalid_json", "unexpected data after the JSON object (byte %td)",
                      end ? end - body : (ptrdiff_t)0);
    else if (!cJSON_IsObject(o))
        rc = api_fail(err, "invalid_json", "the request body must be a JSON object");
    if (rc) cJSON_Delete(o);
    else *root = o;
    return rc;
}

int api_parse_end(int rc, cJSON *root, api_request *r, api_err *err) {
    if (rc == PEFTD_ENOMEM) {
        err->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        err->code = NULL;
        snprintf(err->message, sizeof err->message, "out of memory");
    }
    cJSON_Delete(root);
    if (rc) api_request_free(r);
    return rc;
}

int api_request_parse(const api_server *s, const tenants_principal *who, const char *body, size_t len,
                      api_request *r, api_err *err) {
    cJSON *root;
    long long max_tokens = 0;
    int rc = api_parse_begin(who, body, len, r, &root, err);
    if (!rc) rc = api_parse_common(s, who, root, false, r, &max_tokens, err);
    if (!rc && max_tokens == 0) {
        /* OpenAI's legacy scoring idiom: echo the prompt (with its logprobs), generate nothing */
        if (!r->echo) rc = api_fail(err, "invalid_value", "'max_tokens' must be at least 1 (0 only with 'echo': true)");
        r->score_only = true;
    }
    /* echo + logprobs: the prompt tokens' logprobs too (the engine scores every prompt row) */
    if (!rc && r->echo && (r->gen.logprobs >= 0 || r->score_only)) r->gen.prompt_logprobs = true;
    if (!rc && r->best_of > r->n && r->gen.logprobs < 0) {
        /* best_of ranks by cumulative logprob: the engine reports them, the response does not */
        r->gen.logprobs = 0;
        r->hide_logprobs = true;
    }
    if (!rc) rc = api_parse_prompts(s, root, "prompt", r, err);
    if (!rc) rc = api_parse_fit(s, r, max_tokens, err);
    return api_parse_end(rc, root, r, err);
}

void api_request_free(api_request *r) {
    for (int i = 0; i < API_MAX_PROMPTS; i++) {
        free(r->prompts[i].ids);
        free(r->prompts[i].text);
        r->prompts[i] = (api_prompt){0};
    }
    for (int i = 0; i < ENGINE_MAX_STOP; i++) {
        free(r->stop_store[i]);
        r->stop_store[i] = NULL;
    }
    free(r->bias_id);
    free(r->bias_val);
    jschema_unref(r->gen.json_schema);
    r->gen.json_schema = NULL;
    r->bias_id = NULL;
    r->bias_val = NULL;
    r->gen.n_bias = 0;
    r->n_prompts = 0;
    r->gen.n_stop = 0;
    if (r->adapter) registry_release(r->reg, r->adapter);
    r->adapter = NULL;
    for (int i = 0; i < ADAPTER_MAX_MIX; i++) {
        if (r->mix[i]) registry_release(r->reg, r->mix[i]);
        r->mix[i] = NULL;
        r->gen.mix_handle[i] = NULL;
    }
    r->gen.n_mix = 0;
    r->gen.handle = NULL;
    if (r->tenants) tenants_release(r->tenants, &r->ticket);
    r->tenants = NULL;
}
