/* server/text/chat_template_filters.c — jinja2's filters that chat templates use, applied
 * to an evaluated value and evaluated arguments (the evaluator evaluates them first;
 * map('name') applies another filter here). Each group returns NULL for a name it does
 * not know. */
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

static cv *attr_path(ct_ctx *c, const ct_node *at, cv *v, const cv *path) {
    const char *p = path->u.s.p, *end = p + path->u.s.n;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        if (!dot) dot = end;
        cv *key = ct__mk_str(c, p, (size_t)(dot - p));
        if (v->t == CV_UNDEF) return v;
        v = ct__get_item(c, at, v, key);
        p = dot + 1;
    }
    return v;
}


/* tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False): HF's
 * override, json.dumps with those arguments. */
static cv *filter_tojson(ct_ctx *c, const ct_node *n, cv *v, cv **args, cv **kw) {
    int na = n->args.n, nk = n->kwargs.n;
    for (int k = 0; k < nk; k++)
        if (strcmp(n->kwnames[k], "ensure_ascii") && strcmp(n->kwnames[k], "indent") &&
            strcmp(n->kwnames[k], "separators") && strcmp(n->kwnames[k], "sort_keys"))
            ct__fail(c, n, "tojson() got an unexpected keyword argument '%s'", n->kwnames[k]);
    if (na > 4) ct__fail(c, n, "tojson() takes at most 4 arguments");
    cv *asc = ct__arg_or(args, na, 0, n->kwnames, kw, nk, "ensure_ascii");
    cv *ind = ct__arg_or(args, na, 1, n->kwnames, kw, nk, "indent");
    cv *sep = ct__arg_or(args, na, 2, n->kwnames, kw, nk, "separators");
    cv *srt = ct__arg_or(args, na, 3, n->kwnames, kw, nk, "sort_keys");
    ct_json_opts o = {.item_sep = ", ", .key_sep = ": ", .ensure_ascii = asc && ct__truthy(asc),
                      .sort_keys = srt && ct__truthy(srt)};
    if (ind && ind->t != CV_NONE) {
        if (ind->t == CV_STR) {
            o.indent = ind->u.s.p;
        } else if (ind->t == CV_INT) {
            long long w = ind->u.i < 0 ? 0 : ind->u.i > 64 ? -1 : ind->u.i;
            if (w < 0) ct__fail(c, n, "tojson indent larger than 64");
            char *sp = ct__alloc(c, (size_t)w + 1);
            memset(sp, ' ', (size_t)w);
            o.indent = sp;
        } else {
            ct__fail(c, n, "tojson indent must be an integer or a string");
        }
        o.item_sep = ",";
    }
    if (sep && sep->t != CV_NONE) {
        if (sep->t != CV_LIST || sep->u.l.n != 2 || sep->u.l.items[0]->t != CV_STR || sep->u.l.items[1]->t != CV_STR)
            ct__fail(c, n, "tojson separators must be a pair of strings");
        o.item_sep = sep->u.l.items[0]->u.s.p;
        o.key_sep = sep->u.l.items[1]->u.s.p;
    }
    ct_buf b = {0};
    ct__put_json(c, &b, v, &o, 0, n);
    return ct__mk_str(c, b.p ? b.p : "", b.n);
}

/* Filters on text: trim, length/count, string, safe, case, default, tojson, replace, indent. */
static cv *filter_text(ct_ctx *c, const ct_node *n, cv *v, cv **args, cv **kw) {
    const char *nm = n->name;
    int na = n->args.n, nk = n->kwargs.n;
    cv *a0 = ct__arg_or(args, na, 0, NULL, NULL, 0, "");
    if (!strcmp(nm, "trim")) {
        cv *s = ct__to_str(c, v);
        cv *chars = ct__arg_or(args, na, 0, n->kwnames, kw, nk, "chars");
        return ct__str_strip(c, s, chars && chars->t == CV_STR ? chars : NULL, true, true);
    }
    if (!strcmp(nm, "length") || !strcmp(nm, "count")) return ct__length_of(c, n, v);
    if (!strcmp(nm, "string")) return ct__to_str(c, v);
    if (!strcmp(nm, "safe") || !strcmp(nm, "e") || !strcmp(nm, "escape")) {
        if (strcmp(nm, "safe")) ct__fail(c, n, "filter '%s' is not supported", nm);
        return v->t == CV_UNDEF ? v : ct__to_str(c, v);
    }
    if (!strcmp(nm, "upper")) return ct__str_case(c, n, ct__to_str(c, v), CT_CASE_UPPER);
    if (!strcmp(nm, "lower")) return ct__str_case(c, n, ct__to_str(c, v), CT_CASE_LOWER);
    if (!strcmp(nm, "title")) return ct__str_case(c, n, ct__to_str(c, v), CT_CASE_JINJA_TITLE);
    if (!strcmp(nm, "capitalize")) return ct__str_case(c, n, ct__to_str(c, v), CT_CASE_CAPITALIZE);
    if (!strcmp(nm, "default") || !strcmp(nm, "d")) {
        cv *bo = ct__arg_or(args, na, 1, n->kwnames, kw, nk, "boolean");
        bool use = bo && ct__truthy(bo) ? !ct__truthy(v) : v->t == CV_UNDEF;
        cv *dv = ct__arg_or(args, na, 0, n->kwnames, kw, nk, "default_value");
        return use ? (dv ? dv : ct__mk_cstr(c, "")) : v;
    }
    if (!strcmp(nm, "tojson")) return filter_tojson(c, n, v, args, kw);
    if (!strcmp(nm, "replace")) {
        cv *s = ct__to_str(c, v);
        if (na < 2) ct__fail(c, n, "replace needs two arguments");
        return ct__str_replace(c, s, ct__to_str(c, args[0]), ct__to_str(c, args[1]), na > 2 && args[2]->t == CV_INT ? args[2]->u.i : -1);
    }
    if (!strcmp(nm, "indent")) {
        cv *s = ct__to_str(c, v);
        cv *w = ct__arg_or(args, na, 0, n->kwnames, kw, nk, "width");
        cv *first = ct__arg_or(args, na, 1, n->kwnames, kw, nk, "first");
        cv *blank = ct__arg_or(args, na, 2, n->kwnames, kw, nk, "blank");
        ct_buf pad = {0}, b = {0};
        if (w && w->t == CV_STR) ct__put_str(c, &pad, w);
        else for (long long i = 0; i < (w && w->t == CV_INT ? w->u.i : 4); i++) ct__buf_puts(c, &pad, " ");
        bool at_start = true, first_line = true;
        for (size_t i = 0; i <= s->u.s.n; i++) {
            if (at_start && i < s->u.s.n) {
                bool empty = s->u.s.p[i] == '\n';
                if ((!first_line || (first && ct__truthy(first))) && (!empty || (blank && ct__truthy(blank))) && pad.n)
                    ct__buf_put(c, &b, pad.p, pad.n);
                at_start = false;
            }
            if (i == s->u.s.n) break;
            ct__buf_put(c, &b, s->u.s.p + i, 1);
            if (s->u.s.p[i] == '\n') {
                at_start = true;
                first_line = false;
            }
        }
        return ct__mk_str(c, b.p ? b.p : "", b.n);
    }
    (void)a0;
    (void)kw;
    (void)nk;
    return NULL; /* not one of these */
}

/* Filters on sequences: join, first/last, list, reverse, items, map, select/reject(attr), unique. */
static cv *filter_seq(ct_ctx *c, const ct_node *n, cv *v, cv **args, cv **kw) {
    const char *nm = n->name;
    int na = n->args.n, nk = n->kwargs.n;
    cv *a0 = ct__arg_or(args, na, 0, NULL, NULL, 0, "");
    if (!strcmp(nm, "join")) {
        cv *l = ct__as_list(c, n, v);
        cv *sep = ct__arg_or(args, na, 0, n->kwnames, kw, nk, "d");
        cv *attr = ct__arg_or(args, na, 1, n->kwnames, kw, nk, "attribute");
        ct_buf b = {0};
        for (size_t i = 0; i < l->u.l.n; i++) {
            if (i && sep) ct__put_str(c, &b, sep);
            ct__put_str(c, &b, attr ? attr_path(c, n, l->u.l.items[i], ct__to_str(c, attr)) : l->u.l.items[i]);
        }
        return ct__mk_str(c, b.p ? b.p : "", b.n);
    }
    if (!strcmp(nm, "first") || !strcmp(nm, "last")) {
        cv *l = ct__as_list(c, n, v);
        if (nm[0] == 'l' && l->u.l.kind == CL_GEN) ct__fail(c, n, "'generator' object is not reversible");
        if (!l->u.l.n) return &ct__undef;
        return l->u.l.items[nm[0] == 'f' ? 0 : l->u.l.n - 1];
    }
    if (!strcmp(nm, "list")) {
        cv *l = ct__as_list(c, n, v);
        if (l->u.l.kind == CL_LIST) return l;
        cv *r = ct__mk_list(c, l->u.l.n);
        for (size_t i = 0; i < l->u.l.n; i++) r->u.l.items[i] = l->u.l.items[i];
        return r;
    }
    if (!strcmp(nm, "reverse")) {
        if (v->t == CV_STR) return ct__get_slice(c, n, v, NULL, NULL, ct__mk_int(c, -1));
        cv *l = ct__as_list(c, n, v), *r = ct__mk_list(c, l->u.l.n);
        for (size_t i = 0; i < l->u.l.n; i++) r->u.l.items[i] = l->u.l.items[l->u.l.n - 1 - i];
        r->u.l.kind = CL_GEN; /* jinja2 returns a generator */
        return r;
    }
    if (!strcmp(nm, "items")) {
        if (v->t == CV_UNDEF) {
            cv *r = ct__mk_list(c, 0);
            r->u.l.kind = CL_GEN;
            return r;
        }
        if (v->t != CV_DICT) ct__fail(c, n, "items filter needs a mapping");
        cv *r = ct__call_fn(c, n, ct__mk_fn(c, M_ITEMS, v, "items"), NULL, 0, NULL, NULL, 0);
        r->u.l.kind = CL_GEN;
        return r;
    }
    if (!strcmp(nm, "map")) {
        cv *attr = ct__arg_or(NULL, 0, 0, n->kwnames, kw, nk, "attribute");
        cv *l = ct__as_list(c, n, v), *r = ct__mk_list(c, l->u.l.n);
        if (!attr && a0 && a0->t == CV_STR) {
            /* map('filtername'): only the filters that need no arguments */
            for (size_t i = 0; i < l->u.l.n; i++) {
                ct_node fake = *n;
                fake.name = ct__alloc(c, a0->u.s.n + 1);
                memcpy((char *)fake.name, a0->u.s.p, a0->u.s.n);
                fake.args.n = fake.kwargs.n = 0;
                r->u.l.items[i] = ct__filter(c, &fake, l->u.l.items[i], NULL, NULL);
            }
            r->u.l.kind = CL_GEN; /* jinja2 returns a generator */
        return r;
        }
        if (!attr) ct__fail(c, n, "map needs attribute= or a filter name");
        cv *dflt = ct__arg_or(NULL, 0, 0, n->kwnames, kw, nk, "default");
        for (size_t i = 0; i < l->u.l.n; i++) {
            cv *x = attr_path(c, n, l->u.l.items[i], ct__to_str(c, attr));
            r->u.l.items[i] = x->t == CV_UNDEF && dflt ? dflt : x;
        }
        r->u.l.kind = CL_GEN; /* jinja2 returns a generator */
        return r;
    }
    if (!strcmp(nm, "selectattr") || !strcmp(nm, "rejectattr") || !strcmp(nm, "select") || !strcmp(nm, "reject")) {
        bool attr_form = strstr(nm, "attr") != NULL, keep_if = nm[0] == 's';
        int base = attr_form ? 1 : 0;
        if (attr_form && !a0) ct__fail(c, n, "%s needs an attribute name", nm);
        cv *l = ct__as_list(c, n, v), *r = ct__mk_list(c, l->u.l.n);
        size_t k = 0;
        for (size_t i = 0; i < l->u.l.n; i++) {
            cv *x = attr_form ? attr_path(c, n, l->u.l.items[i], ct__to_str(c, a0)) : l->u.l.items[i];
            bool t;
            if (na > base) {
                cv *tn = ct__to_str(c, args[base]);
                char tname[64];
                snprintf(tname, sizeof tname, "%.*s", (int)(tn->u.s.n < 63 ? tn->u.s.n : 63), tn->u.s.p);
                t = ct__run_test(c, n, tname, x, args + base + 1, na - base - 1);
            } else {
                t = ct__truthy(x);
            }
            if (t == keep_if) r->u.l.items[k++] = l->u.l.items[i];
        }
        r->u.l.n = k;
        r->u.l.kind = CL_GEN; /* jinja2 returns a generator */
        return r;
    }
    if (!strcmp(nm, "unique")) {
        cv *l = ct__as_list(c, n, v), *r = ct__mk_list(c, l->u.l.n);
        size_t k = 0;
        for (size_t i = 0; i < l->u.l.n; i++) {
            bool seen = false;
            for (size_t j = 0; j < k && !seen; j++) seen = ct__val_eq(r->u.l.items[j], l->u.l.items[i]);
            if (!seen) r->u.l.items[k++] = l->u.l.items[i];
        }
        r->u.l.n = k;
        r->u.l.kind = CL_GEN; /* jinja2 returns a generator */
        return r;
    }
    (void)a0;
    (void)kw;
    (void)nk;
    return NULL; /* not one of these */
}

/* Filters on numbers: int, float, abs, round. */
static cv *filter_num(ct_ctx *c, const ct_node *n, cv *v, cv **args, cv **kw) {
    const char *nm = n->name;
    int na = n->args.n, nk = n->kwargs.n;
    cv *a0 = ct__arg_or(args, na, 0, NULL, NULL, 0, "");
    if (!strcmp(nm, "int")) {
        if (v->t == CV_INT) return v;
        if (v->t == CV_FLOAT) return ct__mk_int(c, (long long)v->u.f);
        if (v->t == CV_BOOL) return ct__mk_int(c, v->u.b);
        if (v->t == CV_STR) {
            char tmp[64];
            snprintf(tmp, sizeof tmp, "%.*s", (int)(v->u.s.n < 63 ? v->u.s.n : 63), v->u.s.p);
            char *e = NULL;
            long long x = strtoll(tmp, &e, 10);
            if (e && e != tmp && !*e) return ct__mk_int(c, x);
            double d = strtod(tmp, &e);
            if (e && e != tmp && !*e) return ct__mk_int(c, (long long)d);
        }
        return a0 ? a0 : ct__mk_int(c, 0);
    }
    if (!strcmp(nm, "float")) {
        if (ct__is_num(v)) return ct__mk_float(c, ct__num(v));
        if (v->t == CV_STR) {
            char tmp[64];
            snprintf(tmp, sizeof tmp, "%.*s", (int)(v->u.s.n < 63 ? v->u.s.n : 63), v->u.s.p);
            char *e = NULL;
            double d = strtod(tmp, &e);
            if (e && e != tmp && !*e) return ct__mk_float(c, d);
        }
        return a0 ? a0 : ct__mk_float(c, 0);
    }
    if (!strcmp(nm, "abs")) {
        if (!ct__is_num(v)) ct__fail(c, n, "bad operand type for abs(): '%s'", ct__type_name(v));
        return v->t == CV_FLOAT ? ct__mk_float(c, fabs(v->u.f)) : ct__mk_int(c, llabs(ct__inum(v)));
    }
    if (!strcmp(nm, "round")) {
        /* jinja2: "common" is Python's round(value, precision) (half to even on the exact
         * binary value; an int stays an int); "floor"/"ceil" scale, apply, divide */
        if (!ct__is_num(v)) ct__fail(c, n, "round needs a number");
        cv *pr = ct__arg_or(args, na, 0, n->kwnames, kw, nk, "precision");
        cv *me = ct__arg_or(args, na, 1, n->kwnames, kw, nk, "method");
        long long p = pr && pr->t == CV_INT ? pr->u.i : 0;
        if (pr && pr->t != CV_INT) ct__fail(c, n, "round precision must be an integer");
        if (p < 0 || p > 30) ct__fail(c, n, "round precision %lld is not supported (0 to 30)", p);
        const char *method = me ? ct__want_str(c, n, me, "round's method")->u.s.p : "common";
        if (!strcmp(method, "common")) {
            if (v->t != CV_FLOAT) return ct__mk_int(c, ct__inum(v));
            if (!isfinite(v->u.f)) return v;
            char tmp[400];
            snprintf(tmp, sizeof tmp, "%.*f", (int)p, v->u.f); /* exact decimal, ties to even */
            return ct__mk_float(c, strtod(tmp, NULL));
        }
        if (strcmp(method, "floor") && strcmp(method, "ceil"))
            ct__fail(c, n, "method must be common, ceil or floor");
        double m = pow(10, (double)p), x = ct__num(v) * m;
        return ct__mk_float(c, (method[0] == 'f' ? floor(x) : ceil(x)) / m);
    }
    (void)a0;
    (void)kw;
    (void)nk;
    return NULL; /* not one of these */
}

cv *ct__filter(ct_ctx *c, const ct_node *n, cv *v, cv **args, cv **kw) {
    cv *r = filter_text(c, n, v, args, kw);
    if (!r) r = filter_seq(c, n, v, args, kw);
    if (!r) r = filter_num(c, n, v, args, kw);
    if (!r) ct__fail(c, n, "no filter named '%s'", n->name);
    return r;
}
