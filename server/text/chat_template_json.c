/* server/text/chat_template_json.c — JSON (cJSON) to template values: the conversation,
 * tools and extra variables of chat_template_render_json() become the values jinja2 would
 * see from Python's json.loads (objects keep their key order; whole numbers are ints). */
#include <math.h>
#include <setjmp.h>
#include <string.h>

#include <cJSON.h>

#include "server/text/chat_template_render.h"

#define CT_JSON_MAX_DEPTH 64

static cv *from_json(ct_ctx *c, const cJSON *j, int depth) {
    if (depth > CT_JSON_MAX_DEPTH) ct__fail(c, NULL, "messages: JSON nested deeper than %d", CT_JSON_MAX_DEPTH);
    if (cJSON_IsNull(j)) return &ct__none;
    if (cJSON_IsBool(j)) return ct__mk_bool(cJSON_IsTrue(j));
    if (cJSON_IsString(j)) return ct__mk_cstr(c, j->valuestring);
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (isfinite(d) && d == floor(d) && fabs(d) <= 9007199254740992.0) return ct__mk_int(c, (long long)d);
        return ct__mk_float(c, d);
    }
    if (cJSON_IsArray(j)) {
        cv *l = ct__mk_list(c, (size_t)cJSON_GetArraySize(j));
        size_t i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, j) l->u.l.items[i++] = from_json(c, it, depth + 1);
        return l;
    }
    if (cJSON_IsObject(j)) {
        cv *d = ct__mk_dict(c);
        const cJSON *it;
        cJSON_ArrayForEach(it, j) ct__dict_set_s(c, d, it->string ? it->string : "", from_json(c, it, depth + 1));
        return d;
    }
    ct__fail(c, NULL, "messages: an unsupported JSON value");
}

cv *ct__from_json(ct_ctx *c, const cJSON *j) { return from_json(c, j, 0); }
