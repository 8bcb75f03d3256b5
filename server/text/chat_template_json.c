/* server/text/chat_template_json.c — JSON both ways: cJSON to template values (the
 * conversation, tools and extra variables of chat_template_render_json() become the values
 * jinja2 would see from Python's json.loads: objects keep their key order, whole numbers
 * are ints), and values to text as HF's tojson filter writes them (json.dumps with
 * indent, separators, sort_keys, ensure_ascii). */
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
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
        if (isfinite(d) && d == floor(d)) {
            /* past 2^53 a double no longer holds the integer JSON wrote: refuse, not round */
            if (fabs(d) > 9007199254740992.0) ct__fail(c, NULL, "messages: the integer %.17g is too large", d);
            return ct__mk_int(c, (long long)d);
        }
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

/* ---- json.dumps ---- */

static void put_json_str(ct_ctx *c, ct_buf *b, const char *p, size_t n, bool ascii) {
    char tmp[16];
    ct__buf_puts(c, b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        switch (ch) {
        case '"': ct__buf_puts(c, b, "\\\""); continue;
        case '\\': ct__buf_puts(c, b, "\\\\"); continue;
        case '\n': ct__buf_puts(c, b, "\\n"); continue;
        case '\r': ct__buf_puts(c, b, "\\r"); continue;
        case '\t': ct__buf_puts(c, b, "\\t"); continue;
        case '\b': ct__buf_puts(c, b, "\\b"); continue;
        case '\f': ct__buf_puts(c, b, "\\f"); continue;
        default: break;
        }
        if (ch < 0x20 || (ascii && ch == 0x7f)) {
            snprintf(tmp, sizeof tmp, "\\u%04x", ch);
            ct__buf_puts(c, b, tmp);
        } else if (ascii && ch >= 0x80) {
            /* one UTF-8 sequence as \uXXXX (a surrogate pair above U+FFFF), as Python */
            int len = ch >= 0xF0 ? 4 : ch >= 0xE0 ? 3 : 2;
            unsigned cp = ch & (0x7F >> len);
            for (int k = 1; k < len && i + 1 < n; k++) cp = (cp << 6) | ((unsigned char)p[++i] & 0x3F);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else {
                snprintf(tmp, sizeof tmp, "\\u%04x", cp);
            }
            ct__buf_puts(c, b, tmp);
        } else {
            ct__buf_put(c, b, p + i, 1);
        }
    }
    ct__buf_puts(c, b, "\"");
}

static void newline(ct_ctx *c, ct_buf *b, const ct_json_opts *o, int level) {
    ct__buf_puts(c, b, "\n");
    for (int k = 0; k < level; k++) ct__buf_puts(c, b, o->indent);
}

/* a dict key as json.dumps writes it: str as is, None/bool/int/float converted */
static void put_json_key(ct_ctx *c, ct_buf *b, const cv *k, const ct_json_opts *o, const ct_node *at) {
    char tmp[64];
    switch (k->t) {
    case CV_STR: put_json_str(c, b, k->u.s.p, k->u.s.n, o->ensure_ascii); return;
    case CV_NONE: ct__buf_puts(c, b, "\"null\""); return;
    case CV_BOOL: ct__buf_puts(c, b, k->u.b ? "\"true\"" : "\"false\""); return;
    case CV_INT: snprintf(tmp, sizeof tmp, "\"%lld\"", k->u.i); ct__buf_puts(c, b, tmp); return;
    case CV_FLOAT: ct__fmt_float(k->u.f, tmp + 1, sizeof tmp - 2); tmp[0] = '"'; strcat(tmp, "\""); ct__buf_puts(c, b, tmp); return;
    default: ct__fail(c, at, "keys must be str, int, float, bool or None, not %s", ct__type_name(k));
    }
}

/* the order json.dumps(sort_keys=True) writes a dict's members in (string keys only) */
static size_t *key_order(ct_ctx *c, const cv *d, bool sort, const ct_node *at) {
    size_t n = d->u.d.n, *ord = ct__alloc(c, (n ? n : 1) * sizeof *ord);
    for (size_t i = 0; i < n; i++) ord[i] = i;
    if (!sort) return ord;
    for (size_t i = 0; i < n; i++)
        if (d->u.d.keys[i]->t != CV_STR) ct__fail(c, at, "tojson(sort_keys=True) needs string keys");
    for (size_t i = 1; i < n; i++) /* insertion sort: dicts in templates are small */
        for (size_t j = i; j > 0 && ct__val_cmp(c, at, d->u.d.keys[ord[j - 1]], d->u.d.keys[ord[j]], ">") > 0; j--) {
            size_t t = ord[j];
            ord[j] = ord[j - 1];
            ord[j - 1] = t;
        }
    return ord;
}

void ct__put_json(ct_ctx *c, ct_buf *b, const cv *v, const ct_json_opts *o, int level, const ct_node *at) {
    char tmp[64];
    if (level > CT_JSON_MAX_DEPTH) ct__fail(c, at, "tojson: nested deeper than %d", CT_JSON_MAX_DEPTH);
    switch (v->t) {
    case CV_NONE: ct__buf_puts(c, b, "null"); return;
    case CV_BOOL: ct__buf_puts(c, b, v->u.b ? "true" : "false"); return;
    case CV_INT: snprintf(tmp, sizeof tmp, "%lld", v->u.i); ct__buf_puts(c, b, tmp); return;
    case CV_FLOAT:
        if (isnan(v->u.f)) ct__buf_puts(c, b, "NaN");
        else if (isinf(v->u.f)) ct__buf_puts(c, b, v->u.f < 0 ? "-Infinity" : "Infinity");
        else {
            ct__fmt_float(v->u.f, tmp, sizeof tmp);
            ct__buf_puts(c, b, tmp);
        }
        return;
    case CV_STR: put_json_str(c, b, v->u.s.p, v->u.s.n, o->ensure_ascii); return;
    case CV_LIST: case CV_DICT: {
        bool list = v->t == CV_LIST;
        if ((list && v->u.l.kind >= CL_GEN) || (!list && v->u.d.ns))
            ct__fail(c, at, "Object of type %s is not JSON serializable", ct__type_name(v));
        size_t n = list ? v->u.l.n : v->u.d.n;
        ct__buf_puts(c, b, list ? "[" : "{");
        if (!n) {
            ct__buf_puts(c, b, list ? "]" : "}");
            return;
        }
        size_t *ord = list ? NULL : key_order(c, v, o->sort_keys, at);
        for (size_t i = 0; i < n; i++) {
            if (i) ct__buf_puts(c, b, o->item_sep);
            if (o->indent) newline(c, b, o, level + 1);
            if (list) {
                ct__put_json(c, b, v->u.l.items[i], o, level + 1, at);
            } else {
                put_json_key(c, b, v->u.d.keys[ord[i]], o, at);
                ct__buf_puts(c, b, o->key_sep);
                ct__put_json(c, b, v->u.d.vals[ord[i]], o, level + 1, at);
            }
        }
        if (o->indent) newline(c, b, o, level);
        ct__buf_puts(c, b, list ? "]" : "}");
        return;
    }
    default: /* undefined, functions, macros: json.dumps raises TypeError */
        ct__fail(c, at, "Object of type %s is not JSON serializable", v->t == CV_UNDEF ? "Undefined" : ct__type_name(v));
    }
}
