/* server/text/chat_template_call.c — what a template can call or test: the globals
 * (raise_exception, range, namespace, dict, strftime_now), string and dict methods bound
 * by attribute lookup, jinja2's getattr and getitem, slicing, and the `is` tests. Macros are called by the
 * evaluator (chat_template_eval.c), never from here. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/status.h"
#include "server/text/chat_template_render.h"

cv *ct__arg_or(cv **args, int nargs, int i, const char **kwn, cv **kwv, int nkw, const char *name) {
    for (int k = 0; k < nkw; k++)
        if (!strcmp(kwn[k], name)) return kwv[k];
    return i < nargs ? args[i] : NULL;
}

const cv *ct__want_str(ct_ctx *c, const ct_node *at, const cv *v, const char *what) {
    if (!v || v->t != CV_STR) ct__fail(c, at, "%s must be a string, not %s", what, v ? ct__type_name(v) : "nothing");
    return v;
}

cv *ct__call_fn(ct_ctx *c, const ct_node *at, const cv *fn, cv **args, int nargs, const char **kwn, cv **kwv,
                   int nkw) {
    if (fn->t != CV_FUNC) ct__fail(c, at, "'%s' object is not callable", ct__type_name(fn));
    cv *self = fn->u.fn.self;
    cv *a0 = nargs > 0 ? args[0] : NULL, *a1 = nargs > 1 ? args[1] : NULL;
    switch (fn->u.fn.id) {
    case F_RAISE: {
        cv *m = a0 ? ct__to_str(c, a0) : ct__mk_cstr(c, "");
        snprintf(c->err, c->errlen, "%.*s", (int)m->u.s.n, m->u.s.p);
        longjmp(c->jb, 1);
    }
    case F_RANGE: {
        long long lo = 0, hi, st = 1;
        for (int i = 0; i < nargs; i++)
            if (args[i]->t != CV_INT && args[i]->t != CV_BOOL) ct__fail(c, at, "range() takes integers");
        if (nargs == 1) hi = ct__inum(a0);
        else if (nargs == 2 || nargs == 3) {
            lo = ct__inum(a0);
            hi = ct__inum(a1);
            if (nargs == 3) st = ct__inum(args[2]);
        } else ct__fail(c, at, "range() takes 1 to 3 arguments");
        if (st == 0) ct__fail(c, at, "range() step must not be zero");
        long long cnt = st > 0 ? (hi > lo ? (hi - lo + st - 1) / st : 0) : (lo > hi ? (lo - hi - st - 1) / -st : 0);
        if (cnt > 1000000) ct__fail(c, at, "range() too large");
        cv *l = ct__mk_list(c, (size_t)cnt);
        for (long long i = 0; i < cnt; i++) l->u.l.items[i] = ct__mk_int(c, lo + i * st);
        return l;
    }
    case F_NAMESPACE: case F_DICT: {
        cv *d = ct__mk_dict(c);
        d->u.d.ns = fn->u.fn.id == F_NAMESPACE;
        if (a0 && a0->t == CV_DICT)
            for (size_t i = 0; i < a0->u.d.n; i++) ct__dict_set(c, d, a0->u.d.keys[i], a0->u.d.vals[i]);
        for (int k = 0; k < nkw; k++) ct__dict_set_s(c, d, kwn[k], kwv[k]);
        return d;
    }
    case F_STRFTIME: {
        ct__want_str(c, at, a0, "strftime_now's format");
        char fmt[256], out[512];
        snprintf(fmt, sizeof fmt, "%.*s", (int)a0->u.s.n, a0->u.s.p);
        time_t now = c->now ? (time_t)c->now : time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = strftime(out, sizeof out, fmt, &tm);
        return ct__mk_str(c, out, n);
    }
    case M_STRIP: case M_LSTRIP: case M_RSTRIP: {
        cv *chars = a0 && a0->t != CV_NONE ? (cv *)ct__want_str(c, at, a0, "strip's argument") : NULL;
        int id = fn->u.fn.id;
        return ct__str_strip(c, self, chars, id != M_RSTRIP, id != M_LSTRIP);
    }
    case M_SPLIT: {
        cv *sep = ct__arg_or(args, nargs, 0, kwn, kwv, nkw, "sep"), *mx = ct__arg_or(args, nargs, 1, kwn, kwv, nkw, "maxsplit");
        if (sep && sep->t == CV_NONE) sep = NULL;
        if (sep) ct__want_str(c, at, sep, "split's separator");
        return ct__str_split(c, self, sep, mx && mx->t == CV_INT ? mx->u.i : -1);
    }
    case M_STARTSWITH: case M_ENDSWITH: {
        if (!a0) ct__fail(c, at, "%s() takes one argument", fn->u.fn.name);
        size_t cnt = a0->t == CV_LIST ? a0->u.l.n : 1;
        for (size_t i = 0; i < cnt; i++) {
            const cv *x = ct__want_str(c, at, a0->t == CV_LIST ? a0->u.l.items[i] : a0, "the prefix");
            if (x->u.s.n > self->u.s.n) continue;
            const char *p = fn->u.fn.id == M_STARTSWITH ? self->u.s.p : self->u.s.p + self->u.s.n - x->u.s.n;
            if (!memcmp(p, x->u.s.p, x->u.s.n)) return &ct__true;
        }
        return &ct__false;
    }
    case M_UPPER: return ct__str_case(c, at, self, CT_CASE_UPPER);
    case M_LOWER: return ct__str_case(c, at, self, CT_CASE_LOWER);
    case M_TITLE: return ct__str_case(c, at, self, CT_CASE_TITLE);
    case M_CAPITALIZE: return ct__str_case(c, at, self, CT_CASE_CAPITALIZE);
    case M_REPLACE:
        ct__want_str(c, at, a0, "replace's first argument");
        ct__want_str(c, at, a1, "replace's second argument");
        return ct__str_replace(c, self, a0, a1, nargs > 2 && args[2]->t == CV_INT ? args[2]->u.i : -1);
    case M_FIND: case M_COUNT: {
        ct__want_str(c, at, a0, "the substring");
        long long cnt = 0;
        for (size_t i = 0; i + a0->u.s.n <= self->u.s.n; i++)
            if (!memcmp(self->u.s.p + i, a0->u.s.p, a0->u.s.n)) {
                if (fn->u.fn.id == M_FIND) return ct__mk_int(c, (long long)ct__u8_len(self->u.s.p, i));
                cnt++;
                if (a0->u.s.n) i += a0->u.s.n - 1;
            }
        return ct__mk_int(c, fn->u.fn.id == M_FIND ? -1 : cnt);
    }
    case M_JOIN: {
        if (!a0 || a0->t != CV_LIST) ct__fail(c, at, "join() takes a list");
        ct_buf b = {0};
        for (size_t i = 0; i < a0->u.l.n; i++) {
            if (i) ct__buf_put(c, &b, self->u.s.p, self->u.s.n);
            ct__buf_put(c, &b, ct__want_str(c, at, a0->u.l.items[i], "join's items")->u.s.p, a0->u.l.items[i]->u.s.n);
        }
        return ct__mk_str(c, b.p ? b.p : "", b.n);
    }
    case M_ITEMS: case M_KEYS: case M_VALUES: {
        cv *l = ct__mk_list(c, self->u.d.n);
        l->u.l.kind = CL_VIEW;
        for (size_t i = 0; i < self->u.d.n; i++) {
            if (fn->u.fn.id == M_ITEMS) {
                cv *pair = ct__mk_list(c, 2);
                pair->u.l.kind = CL_TUPLE;
                pair->u.l.items[0] = self->u.d.keys[i];
                pair->u.l.items[1] = self->u.d.vals[i];
                l->u.l.items[i] = pair;
            } else {
                l->u.l.items[i] = fn->u.fn.id == M_KEYS ? self->u.d.keys[i] : self->u.d.vals[i];
            }
        }
        return l;
    }
    case M_GET: {
        if (!a0) ct__fail(c, at, "get() takes a key");
        cv *v = ct__dict_get(self, a0);
        return v ? v : a1 ? a1 : &ct__none;
    }
    default: ct__fail(c, at, "unknown function");
    }
}

static cv *method(ct_ctx *c, cv *obj, const char *name) {
    static const struct { const char *name; int id; bool dict; } ms[] = {
        {"strip", M_STRIP, 0}, {"lstrip", M_LSTRIP, 0}, {"rstrip", M_RSTRIP, 0}, {"split", M_SPLIT, 0},
        {"startswith", M_STARTSWITH, 0}, {"endswith", M_ENDSWITH, 0}, {"upper", M_UPPER, 0},
        {"lower", M_LOWER, 0}, {"title", M_TITLE, 0}, {"capitalize", M_CAPITALIZE, 0}, {"replace", M_REPLACE, 0},
        {"find", M_FIND, 0}, {"count", M_COUNT, 0}, {"join", M_JOIN, 0},
        {"items", M_ITEMS, 1}, {"keys", M_KEYS, 1}, {"values", M_VALUES, 1}, {"get", M_GET, 1},
    };
    if (obj->t != CV_STR && !(obj->t == CV_DICT && !obj->u.d.ns)) return NULL;
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
        if (ms[i].dict == (obj->t == CV_DICT) && !strcmp(ms[i].name, name)) return ct__mk_fn(c, ms[i].id, obj, ms[i].name);
    return NULL;
}

/* jinja2's getattr: attribute first (methods, loop fields), then item. */
cv *ct__get_attr(ct_ctx *c, const ct_node *at, cv *obj, const char *name) {
    if (obj->t == CV_UNDEF) ct__fail(c, at, "'%s' is undefined (reading its attribute '%s')", at->a && at->a->name ? at->a->name : "value", name);
    cv *m = method(c, obj, name);
    if (m) return m;
    if (obj->t == CV_DICT) {
        cv *v = ct__dict_get_s(obj, name);
        return v ? v : &ct__undef;
    }
    return &ct__undef;
}


static long long norm_index(long long i, size_t n) { return i < 0 ? i + (long long)n : i; }

/* jinja2's getitem: item first, then attribute. */
cv *ct__get_item(ct_ctx *c, const ct_node *at, cv *obj, cv *key) {
    if (obj->t == CV_UNDEF) ct__fail(c, at, "'%s' is undefined (reading an item of it)", at->a && at->a->name ? at->a->name : "value");
    if (obj->t == CV_DICT) {
        cv *v = ct__dict_get(obj, key);
        if (v) return v;
        if (key->t == CV_STR) {
            cv *m = method(c, obj, key->u.s.p);
            if (m) return m;
        }
        return &ct__undef;
    }
    if (obj->t == CV_LIST && obj->u.l.kind >= CL_GEN)
        ct__fail(c, at, "'%s' object is not subscriptable", ct__type_name(obj));
    if ((obj->t == CV_LIST || obj->t == CV_STR) && (key->t == CV_INT || key->t == CV_BOOL)) {
        size_t n = obj->t == CV_LIST ? obj->u.l.n : ct__u8_len(obj->u.s.p, obj->u.s.n);
        long long i = norm_index(ct__inum(key), n);
        if (i < 0 || (size_t)i >= n) return &ct__undef;
        if (obj->t == CV_LIST) return obj->u.l.items[i];
        size_t a = ct__u8_off(obj->u.s.p, obj->u.s.n, (size_t)i), b = ct__u8_off(obj->u.s.p, obj->u.s.n, (size_t)i + 1);
        return ct__mk_str(c, obj->u.s.p + a, b - a);
    }
    if (key->t == CV_STR) {
        cv *m = method(c, obj, key->u.s.p);
        if (m) return m;
    }
    return &ct__undef;
}

cv *ct__get_slice(ct_ctx *c, const ct_node *at, cv *obj, cv *lo, cv *hi, cv *st) {
    if ((obj->t != CV_LIST && obj->t != CV_STR) || (obj->t == CV_LIST && obj->u.l.kind >= CL_GEN))
        ct__fail(c, at, "'%s' object is not subscriptable", ct__type_name(obj));
    long long n = obj->t == CV_LIST ? (long long)obj->u.l.n : (long long)ct__u8_len(obj->u.s.p, obj->u.s.n);
    long long step = st && st->t != CV_NONE ? ct__inum(st) : 1;
    if (step == 0) ct__fail(c, at, "slice step cannot be zero");
    long long a, b;
    if (step > 0) {
        a = lo && lo->t != CV_NONE ? norm_index(ct__inum(lo), (size_t)n) : 0;
        b = hi && hi->t != CV_NONE ? norm_index(ct__inum(hi), (size_t)n) : n;
        if (a < 0) a = 0;
        if (a > n) a = n;
        if (b < 0) b = 0;
        if (b > n) b = n;
    } else {
        a = lo && lo->t != CV_NONE ? norm_index(ct__inum(lo), (size_t)n) : n - 1;
        b = hi && hi->t != CV_NONE ? norm_index(ct__inum(hi), (size_t)n) : -1;
        if (a < -1) a = -1;
        if (a >= n) a = n - 1;
        if (hi && hi->t != CV_NONE && b < -1) b = -1;
        if (b >= n) b = n - 1;
    }
    long long cnt = step > 0 ? (b > a ? (b - a + step - 1) / step : 0) : (a > b ? (a - b - step - 1) / -step : 0);
    if (obj->t == CV_LIST) {
        cv *l = ct__mk_list(c, (size_t)cnt);
        l->u.l.kind = obj->u.l.kind; /* a tuple's slice is a tuple */
        for (long long i = 0; i < cnt; i++) l->u.l.items[i] = obj->u.l.items[a + i * step];
        return l;
    }
    ct_buf buf = {0};
    for (long long i = 0; i < cnt; i++) {
        size_t x = ct__u8_off(obj->u.s.p, obj->u.s.n, (size_t)(a + i * step)), y = ct__u8_off(obj->u.s.p, obj->u.s.n, (size_t)(a + i * step + 1));
        ct__buf_put(c, &buf, obj->u.s.p + x, y - x);
    }
    return ct__mk_str(c, buf.p ? buf.p : "", buf.n);
}


bool ct__run_test(ct_ctx *c, const ct_node *at, const char *name, cv *v, cv **args, int nargs) {
    cv *a0 = nargs ? args[0] : NULL;
    if (!strcmp(name, "defined")) return v->t != CV_UNDEF;
    if (!strcmp(name, "undefined")) return v->t == CV_UNDEF;
    if (!strcmp(name, "none")) return v->t == CV_NONE;
    if (!strcmp(name, "string")) return v->t == CV_STR;
    if (!strcmp(name, "mapping")) return v->t == CV_DICT;
    if (!strcmp(name, "sequence")) return (v->t == CV_LIST && v->u.l.kind < CL_GEN) || v->t == CV_STR || v->t == CV_DICT;
    /* jinja2's Undefined iterates (as nothing) */
    if (!strcmp(name, "iterable")) return v->t == CV_LIST || v->t == CV_STR || v->t == CV_DICT || v->t == CV_UNDEF;
    if (!strcmp(name, "number")) return v->t == CV_INT || v->t == CV_FLOAT || v->t == CV_BOOL;
    if (!strcmp(name, "integer")) return v->t == CV_INT;
    if (!strcmp(name, "float")) return v->t == CV_FLOAT;
    if (!strcmp(name, "boolean")) return v->t == CV_BOOL;
    if (!strcmp(name, "true")) return v->t == CV_BOOL && v->u.b;
    if (!strcmp(name, "false")) return v->t == CV_BOOL && !v->u.b;
    if (!strcmp(name, "callable")) return v->t == CV_FUNC || v->t == CV_MACRO;
    if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (v->t != CV_INT) ct__fail(c, at, "'%s' test needs an integer", name);
        return (((v->u.i % 2) + 2) % 2 == 1) == (name[0] == 'o');
    }
    if (!strcmp(name, "divisibleby")) {
        if (v->t != CV_INT || !a0 || a0->t != CV_INT || a0->u.i == 0) ct__fail(c, at, "'divisibleby' needs integers");
        return v->u.i % a0->u.i == 0;
    }
    if (!a0 && (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "sameas") || !strcmp(name, "in") ||
                !strcmp(name, "ne") || !strcmp(name, "lt") || !strcmp(name, "gt")))
        ct__fail(c, at, "test '%s' needs an argument", name);
    if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==")) return ct__val_eq(v, a0);
    if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !ct__val_eq(v, a0);
    if (!strcmp(name, "sameas")) return v == a0 || (v->t <= CV_BOOL && ct__val_eq(v, a0) && v->t == a0->t);
    if (!strcmp(name, "in")) return ct__contains(c, at, a0, v);
    if (!strcmp(name, "lt") || !strcmp(name, "lessthan")) return ct__val_cmp(c, at, v, a0, "<") < 0;
    if (!strcmp(name, "gt") || !strcmp(name, "greaterthan")) return ct__val_cmp(c, at, v, a0, ">") > 0;
    if (!strcmp(name, "lower") || !strcmp(name, "upper")) return v->t == CV_STR && ct__str_is_case(c, at, v, name[0] == 'u');
    ct__fail(c, at, "unknown test '%s'", name);
}
