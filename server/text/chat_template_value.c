/* server/text/chat_template_value.c — the renderer's values with Python semantics:
 * errors and the render's memory cap, constructors, output buffers, dicts (insertion
 * ordered), scopes as jinja2 has them, truthiness, str()/repr(), == and
 * ordering, `in`. The leaf of the renderer's files (chat_template_render.h). */
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

cv ct__undef = {.t = CV_UNDEF}, ct__none = {.t = CV_NONE};
cv ct__true = {.t = CV_BOOL, .u.b = true}, ct__false = {.t = CV_BOOL, .u.b = false};

__attribute__((noreturn, format(printf, 3, 4)))
void ct__fail(ct_ctx *c, const ct_node *at, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (at) snprintf(c->err, c->errlen, "chat template line %d: %s", at->line, msg);
    else snprintf(c->err, c->errlen, "%s", msg);
    longjmp(c->jb, 1);
}

void *ct__alloc(ct_ctx *c, size_t n) {
    if (c->arena.total + n > CT_MAX_MEMORY) {
        snprintf(c->err, c->errlen, "the chat template needs more than %u MiB: larger than allowed", CT_MAX_MEMORY >> 20);
        longjmp(c->jb, 1);
    }
    void *p = ct_arena_alloc(&c->arena, n);
    if (!p) {
        snprintf(c->err, c->errlen, "out of memory");
        longjmp(c->jb, 2);
    }
    return p;
}

cv *ct__mk(ct_ctx *c, cv_type t) {
    cv *v = ct__alloc(c, sizeof *v);
    v->t = t;
    return v;
}
cv *ct__mk_str(ct_ctx *c, const char *s, size_t n) {
    cv *v = ct__mk(c, CV_STR);
    char *d = ct__alloc(c, n + 1);
    if (n) memcpy(d, s, n);
    v->u.s.p = d;
    v->u.s.n = n;
    return v;
}
cv *ct__mk_cstr(ct_ctx *c, const char *s) { return ct__mk_str(c, s, strlen(s)); }
cv *ct__mk_int(ct_ctx *c, long long i) {
    cv *v = ct__mk(c, CV_INT);
    v->u.i = i;
    return v;
}
cv *ct__mk_float(ct_ctx *c, double f) {
    cv *v = ct__mk(c, CV_FLOAT);
    v->u.f = f;
    return v;
}
cv *ct__mk_bool(bool b) { return b ? &ct__true : &ct__false; }
cv *ct__mk_list(ct_ctx *c, size_t n) {
    cv *v = ct__mk(c, CV_LIST);
    v->u.l.items = n ? ct__alloc(c, n * sizeof(cv *)) : NULL;
    v->u.l.n = n;
    return v;
}
cv *ct__mk_dict(ct_ctx *c) { return ct__mk(c, CV_DICT); }
cv *ct__mk_fn(ct_ctx *c, int id, cv *self, const char *name) {
    cv *v = ct__mk(c, CV_FUNC);
    v->u.fn.id = id;
    v->u.fn.self = self;
    v->u.fn.name = name;
    return v;
}

/* ---- buffers ---- */

void ct__buf_put(ct_ctx *c, ct_buf *b, const char *s, size_t n) {
    if (!n) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        if (cap > CT_MAX_OUTPUT) ct__fail(c, NULL, "the rendered chat template is larger than %u bytes", CT_MAX_OUTPUT);
        char *p = ct__alloc(c, cap); /* the old block stays in the arena: simpler than realloc + longjmp */
        if (b->n) memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
void ct__buf_puts(ct_ctx *c, ct_buf *b, const char *s) { ct__buf_put(c, b, s, strlen(s)); }

/* ---- dicts ---- */

bool ct__str_eq(const cv *a, const char *s, size_t n) { return a->t == CV_STR && a->u.s.n == n && !memcmp(a->u.s.p, s, n); }


cv *ct__dict_get(const cv *d, const cv *key) {
    for (size_t i = 0; i < d->u.d.n; i++)
        if (ct__val_eq(d->u.d.keys[i], key)) return d->u.d.vals[i];
    return NULL;
}
cv *ct__dict_get_s(const cv *d, const char *k) {
    size_t n = strlen(k);
    for (size_t i = 0; i < d->u.d.n; i++)
        if (ct__str_eq(d->u.d.keys[i], k, n)) return d->u.d.vals[i];
    return NULL;
}
void ct__dict_set(ct_ctx *c, cv *d, cv *key, cv *val) {
    for (size_t i = 0; i < d->u.d.n; i++)
        if (ct__val_eq(d->u.d.keys[i], key)) {
            d->u.d.vals[i] = val;
            return;
        }
    if (d->u.d.n == d->u.d.cap) {
        size_t cap = d->u.d.cap ? 2 * d->u.d.cap : 8;
        cv **k = ct__alloc(c, cap * sizeof *k), **v = ct__alloc(c, cap * sizeof *v);
        if (d->u.d.n) {
            memcpy(k, d->u.d.keys, d->u.d.n * sizeof *k);
            memcpy(v, d->u.d.vals, d->u.d.n * sizeof *v);
        }
        d->u.d.keys = k;
        d->u.d.vals = v;
        d->u.d.cap = cap;
    }
    d->u.d.keys[d->u.d.n] = key;
    d->u.d.vals[d->u.d.n++] = val;
}
void ct__dict_set_s(ct_ctx *c, cv *d, const char *k, cv *val) { ct__dict_set(c, d, ct__mk_cstr(c, k), val); }

/* ---- scopes ---- */

ct_frame *ct__frame_new(ct_ctx *c, ct_frame *parent) {
    ct_frame *f = ct__alloc(c, sizeof *f);
    f->parent = parent;
    return f;
}
void ct__frame_set(ct_ctx *c, ct_frame *f, const char *name, cv *v) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->names[i], name)) {
            f->vals[i] = v;
            return;
        }
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 8;
        const char **nn = ct__alloc(c, (size_t)cap * sizeof *nn);
        cv **vv = ct__alloc(c, (size_t)cap * sizeof *vv);
        if (f->n) {
            memcpy(nn, f->names, (size_t)f->n * sizeof *nn);
            memcpy(vv, f->vals, (size_t)f->n * sizeof *vv);
        }
        f->names = nn;
        f->vals = vv;
        f->cap = cap;
    }
    f->names[f->n] = name;
    f->vals[f->n++] = v;
}
cv *ct__frame_get(ct_frame *f, const char *name) {
    for (; f; f = f->parent)
        for (int i = f->n - 1; i >= 0; i--)
            if (!strcmp(f->names[i], name)) return f->vals[i];
    return NULL;
}

/* ---- conversions ---- */

bool ct__truthy(const cv *v) {
    switch (v->t) {
    case CV_UNDEF: case CV_NONE: return false;
    case CV_BOOL: return v->u.b;
    case CV_INT: return v->u.i != 0;
    case CV_FLOAT: return v->u.f != 0;
    case CV_STR: return v->u.s.n != 0;
    case CV_LIST: return v->u.l.kind == CL_GEN || v->u.l.n != 0; /* a generator is always true */
    case CV_DICT: return v->u.d.n != 0;
    default: return true;
    }
}

const char *ct__type_name(const cv *v) {
    static const char *const names[] = {"undefined", "NoneType", "bool", "int", "float", "str", "list", "dict", "function", "macro"};
    if (v->t == CV_DICT && v->u.d.ns) return "Namespace";
    if (v->t == CV_LIST && v->u.l.kind != CL_LIST)
        return v->u.l.kind == CL_TUPLE ? "tuple" : v->u.l.kind == CL_GEN ? "generator" : "dict view";
    return names[v->t];
}

/* Python's repr of a float: the shortest digits that read back the same, ".0" on
 * integral values, exponent form outside [1e-4, 1e16). */
void ct__fmt_float(double f, char *out, size_t n) {
    if (isnan(f)) {
        snprintf(out, n, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(out, n, f < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f) break;
    }
    /* tmp is d.ddde[+-]XX: rebuild it in Python's style */
    char digits[24];
    int nd = 0;
    const char *q = tmp;
    bool neg = *q == '-';
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int exp = atoi(q + 1);
    char res[64];
    size_t r = 0;
    if (neg) res[r++] = '-';
    if (exp < -4 || exp >= 16) {
        res[r++] = digits[0];
        if (nd > 1) {
            res[r++] = '.';
            for (int i = 1; i < nd; i++) res[r++] = digits[i];
        }
        r += (size_t)snprintf(res + r, sizeof res - r, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        res[r++] = '0';
        res[r++] = '.';
        for (int i = 0; i < -exp - 1; i++) res[r++] = '0';
        for (int i = 0; i < nd; i++) res[r++] = digits[i];
    } else {
        for (int i = 0; i <= exp; i++) res[r++] = i < nd ? digits[i] : '0';
        res[r++] = '.';
        if (nd > exp + 1)
            for (int i = exp + 1; i < nd; i++) res[r++] = digits[i];
        else res[r++] = '0';
    }
    res[r] = 0;
    snprintf(out, n, "%s", res);
}


/* str(v) as Python prints it (what {{ v }} shows); undefined prints as nothing. */
void ct__put_str(ct_ctx *c, ct_buf *b, const cv *v) {
    char tmp[64];
    switch (v->t) {
    case CV_UNDEF: return;
    case CV_NONE: ct__buf_puts(c, b, "None"); return;
    case CV_BOOL: ct__buf_puts(c, b, v->u.b ? "True" : "False"); return;
    case CV_INT: snprintf(tmp, sizeof tmp, "%lld", v->u.i); ct__buf_puts(c, b, tmp); return;
    case CV_FLOAT: ct__fmt_float(v->u.f, tmp, sizeof tmp); ct__buf_puts(c, b, tmp); return;
    case CV_STR: ct__buf_put(c, b, v->u.s.p, v->u.s.n); return;
    default: ct__put_repr(c, b, v);
    }
}

void ct__put_repr(ct_ctx *c, ct_buf *b, const cv *v) {
    switch (v->t) {
    case CV_STR: {
        /* Python picks double quotes when the string has a ' and no " */
        bool sq = memchr(v->u.s.p, '\'', v->u.s.n) != NULL, dq = memchr(v->u.s.p, '"', v->u.s.n) != NULL;
        char q = sq && !dq ? '"' : '\'';
        ct__buf_put(c, b, &q, 1);
        for (size_t i = 0; i < v->u.s.n; i++) {
            unsigned char ch = (unsigned char)v->u.s.p[i];
            char tmp[8];
            if (ch == '\\') ct__buf_puts(c, b, "\\\\");
            else if (ch == (unsigned char)q) { ct__buf_puts(c, b, q == '\'' ? "\\'" : "\\\""); }
            else if (ch == '\n') ct__buf_puts(c, b, "\\n");
            else if (ch == '\r') ct__buf_puts(c, b, "\\r");
            else if (ch == '\t') ct__buf_puts(c, b, "\\t");
            else if (ch < 0x20 || ch == 0x7f) {
                snprintf(tmp, sizeof tmp, "\\x%02x", ch);
                ct__buf_puts(c, b, tmp);
            } else if (ch >= 0x80) {
                i += ct__put_repr_u8(c, b, v->u.s.p + i, v->u.s.n - i) - 1;
            } else ct__buf_put(c, b, (const char *)&ch, 1);
        }
        ct__buf_put(c, b, &q, 1);
        return;
    }
    case CV_LIST:
        if (v->u.l.kind >= CL_GEN) /* Python prints an object address or dict_items([...]) */
            ct__fail(c, NULL, "the chat template prints a %s, which peftd cannot render", ct__type_name(v));
        ct__buf_puts(c, b, v->u.l.kind == CL_TUPLE ? "(" : "[");
        for (size_t i = 0; i < v->u.l.n; i++) {
            if (i) ct__buf_puts(c, b, ", ");
            ct__put_repr(c, b, v->u.l.items[i]);
        }
        ct__buf_puts(c, b, v->u.l.kind != CL_TUPLE ? "]" : v->u.l.n == 1 ? ",)" : ")");
        return;
    case CV_DICT:
        if (v->u.d.ns) ct__buf_puts(c, b, "<Namespace ");
        ct__buf_puts(c, b, "{");
        for (size_t i = 0; i < v->u.d.n; i++) {
            if (i) ct__buf_puts(c, b, ", ");
            ct__put_repr(c, b, v->u.d.keys[i]);
            ct__buf_puts(c, b, ": ");
            ct__put_repr(c, b, v->u.d.vals[i]);
        }
        ct__buf_puts(c, b, v->u.d.ns ? "}>" : "}");
        return;
    case CV_FUNC: case CV_MACRO: /* Python prints an object address: nothing to match */
        ct__fail(c, NULL, "the chat template prints a %s, which peftd cannot render", v->t == CV_FUNC ? "function" : "macro");
    case CV_UNDEF: return;
    default: ct__put_str(c, b, v);
    }
}

cv *ct__to_str(ct_ctx *c, const cv *v) {
    if (v->t == CV_STR) return (cv *)v;
    ct_buf b = {0};
    ct__put_str(c, &b, v);
    cv *s = ct__mk(c, CV_STR);
    s->u.s.p = b.p ? b.p : "";
    s->u.s.n = b.n;
    return s;
}

/* ---- comparisons ---- */

bool ct__is_num(const cv *v) { return v->t == CV_INT || v->t == CV_FLOAT || v->t == CV_BOOL; }
double ct__num(const cv *v) { return v->t == CV_FLOAT ? v->u.f : v->t == CV_INT ? (double)v->u.i : v->u.b; }
long long ct__inum(const cv *v) { return v->t == CV_INT ? v->u.i : v->u.b; }

bool ct__val_eq(const cv *a, const cv *b) {
    if (ct__is_num(a) && ct__is_num(b)) {
        if (a->t != CV_FLOAT && b->t != CV_FLOAT) return ct__inum(a) == ct__inum(b);
        return ct__num(a) == ct__num(b);
    }
    if (a->t != b->t) return false;
    switch (a->t) {
    case CV_UNDEF: case CV_NONE: return true;
    case CV_STR: return a->u.s.n == b->u.s.n && !memcmp(a->u.s.p, b->u.s.p, a->u.s.n);
    case CV_LIST:
        if (a->u.l.n != b->u.l.n || a->u.l.kind != b->u.l.kind) return false;
        for (size_t i = 0; i < a->u.l.n; i++)
            if (!ct__val_eq(a->u.l.items[i], b->u.l.items[i])) return false;
        return true;
    case CV_DICT:
        if (a->u.d.n != b->u.d.n) return false;
        for (size_t i = 0; i < a->u.d.n; i++) {
            const cv *o = ct__dict_get(b, a->u.d.keys[i]);
            if (!o || !ct__val_eq(a->u.d.vals[i], o)) return false;
        }
        return true;
    default: return a == b;
    }
}

int ct__val_cmp(ct_ctx *c, const ct_node *at, const cv *a, const cv *b, const char *op) {
    if (ct__is_num(a) && ct__is_num(b)) {
        double x = ct__num(a), y = ct__num(b);
        return x < y ? -1 : x > y;
    }
    if (a->t == CV_STR && b->t == CV_STR) {
        size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
        int r = memcmp(a->u.s.p, b->u.s.p, n);
        if (r) return r < 0 ? -1 : 1;
        return a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n;
    }
    ct__fail(c, at, "'%s' not supported between instances of '%s' and '%s'", op, ct__type_name(a), ct__type_name(b));
}

bool ct__contains(ct_ctx *c, const ct_node *at, const cv *hay, const cv *needle) {
    switch (hay->t) {
    case CV_STR:
        if (needle->t != CV_STR) ct__fail(c, at, "'in <string>' requires string as left operand, not %s", ct__type_name(needle));
        if (!needle->u.s.n) return true;
        for (size_t i = 0; i + needle->u.s.n <= hay->u.s.n; i++)
            if (!memcmp(hay->u.s.p + i, needle->u.s.p, needle->u.s.n)) return true;
        return false;
    case CV_LIST:
        for (size_t i = 0; i < hay->u.l.n; i++)
            if (ct__val_eq(hay->u.l.items[i], needle)) return true;
        return false;
    case CV_DICT: return ct__dict_get(hay, needle) != NULL;
    case CV_UNDEF: ct__fail(c, at, "argument of type 'Undefined' is not iterable");
    default: ct__fail(c, at, "argument of type '%s' is not iterable", ct__type_name(hay));
    }
}
