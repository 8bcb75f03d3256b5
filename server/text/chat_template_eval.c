/* server/text/chat_template_eval.c — rendering a parsed chat template: the values (Python
 * semantics: truthiness, ==, +, str(), repr(), json.dumps), scopes as jinja2 has them (a
 * for loop's body gets a fresh scope each iteration; sets inside do not leak out), the
 * filters, tests, globals and string/dict methods chat templates use.
 *
 * Errors (raise_exception, type errors, undefined attributes, runaway loops) longjmp out
 * of the evaluation; every value lives in the render's arena, so nothing leaks.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/status.h"
#include "server/text/chat_template_internal.h"

/* Bounds that keep a hostile template (or conversation) from spinning or exhausting
 * memory: no real chat template comes near them. */
#define CT_MAX_STEPS 10000000LL   /* loop iterations + macro calls per render */
#define CT_MAX_DEPTH 64           /* nested macro calls */
#define CT_MAX_OUTPUT (64u << 20) /* bytes of rendered text, and of any one string */
#define CT_MAX_MEMORY (512u << 20) /* bytes of values of one render */

typedef struct ct_frame {
    struct ct_frame *parent;
    const char **names;
    cv **vals;
    int n, cap;
} ct_frame;

typedef struct {
    char *p;
    size_t n, cap;
} ct_buf;

typedef struct {
    ct_arena arena;
    jmp_buf jb;
    char *err;
    size_t errlen;
    ct_buf *out;
    long long steps;
    int depth;
    ct_frame *globals;
} ct_ctx;

enum { CT_NEXT = 0, CT_BREAK, CT_CONTINUE };

enum {
    F_RAISE = 1, F_RANGE, F_NAMESPACE, F_STRFTIME, F_DICT,
    M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_STARTSWITH, M_ENDSWITH, M_UPPER, M_LOWER, M_TITLE,
    M_CAPITALIZE, M_REPLACE, M_FIND, M_COUNT, M_JOIN,
    M_ITEMS, M_KEYS, M_VALUES, M_GET,
};

static cv V_UNDEF = {.t = CV_UNDEF}, V_NONE = {.t = CV_NONE};
static cv V_TRUE = {.t = CV_BOOL, .u.b = true}, V_FALSE = {.t = CV_BOOL, .u.b = false};

__attribute__((noreturn, format(printf, 3, 4)))
static void fail(ct_ctx *c, const ct_node *at, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (at) snprintf(c->err, c->errlen, "chat template line %d: %s", at->line, msg);
    else snprintf(c->err, c->errlen, "%s", msg);
    longjmp(c->jb, 1);
}

static void *alloc(ct_ctx *c, size_t n) {
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

static cv *mk(ct_ctx *c, cv_type t) {
    cv *v = alloc(c, sizeof *v);
    v->t = t;
    return v;
}
static cv *mk_str(ct_ctx *c, const char *s, size_t n) {
    cv *v = mk(c, CV_STR);
    char *d = alloc(c, n + 1);
    if (n) memcpy(d, s, n);
    v->u.s.p = d;
    v->u.s.n = n;
    return v;
}
static cv *mk_cstr(ct_ctx *c, const char *s) { return mk_str(c, s, strlen(s)); }
static cv *mk_int(ct_ctx *c, long long i) {
    cv *v = mk(c, CV_INT);
    v->u.i = i;
    return v;
}
static cv *mk_float(ct_ctx *c, double f) {
    cv *v = mk(c, CV_FLOAT);
    v->u.f = f;
    return v;
}
static cv *mk_bool(bool b) { return b ? &V_TRUE : &V_FALSE; }
static cv *mk_list(ct_ctx *c, size_t n) {
    cv *v = mk(c, CV_LIST);
    v->u.l.items = n ? alloc(c, n * sizeof(cv *)) : NULL;
    v->u.l.n = n;
    return v;
}
static cv *mk_dict(ct_ctx *c) { return mk(c, CV_DICT); }
static cv *mk_fn(ct_ctx *c, int id, cv *self, const char *name) {
    cv *v = mk(c, CV_FUNC);
    v->u.fn.id = id;
    v->u.fn.self = self;
    v->u.fn.name = name;
    return v;
}

/* ---- buffers ---- */

static void buf_put(ct_ctx *c, ct_buf *b, const char *s, size_t n) {
    if (!n) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        if (cap > CT_MAX_OUTPUT) fail(c, NULL, "the rendered chat template is larger than %u bytes", CT_MAX_OUTPUT);
        char *p = alloc(c, cap); /* the old block stays in the arena: simpler than realloc + longjmp */
        if (b->n) memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void buf_puts(ct_ctx *c, ct_buf *b, const char *s) { buf_put(c, b, s, strlen(s)); }

/* ---- dicts ---- */

static bool str_eq(const cv *a, const char *s, size_t n) { return a->t == CV_STR && a->u.s.n == n && !memcmp(a->u.s.p, s, n); }

static bool val_eq(const cv *a, const cv *b);

static cv *dict_get(const cv *d, const cv *key) {
    for (size_t i = 0; i < d->u.d.n; i++)
        if (val_eq(d->u.d.keys[i], key)) return d->u.d.vals[i];
    return NULL;
}
static cv *dict_get_s(const cv *d, const char *k) {
    size_t n = strlen(k);
    for (size_t i = 0; i < d->u.d.n; i++)
        if (str_eq(d->u.d.keys[i], k, n)) return d->u.d.vals[i];
    return NULL;
}
static void dict_set(ct_ctx *c, cv *d, cv *key, cv *val) {
    for (size_t i = 0; i < d->u.d.n; i++)
        if (val_eq(d->u.d.keys[i], key)) {
            d->u.d.vals[i] = val;
            return;
        }
    if (d->u.d.n == d->u.d.cap) {
        size_t cap = d->u.d.cap ? 2 * d->u.d.cap : 8;
        cv **k = alloc(c, cap * sizeof *k), **v = alloc(c, cap * sizeof *v);
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
static void dict_set_s(ct_ctx *c, cv *d, const char *k, cv *val) { dict_set(c, d, mk_cstr(c, k), val); }

/* ---- scopes ---- */

static ct_frame *frame_new(ct_ctx *c, ct_frame *parent) {
    ct_frame *f = alloc(c, sizeof *f);
    f->parent = parent;
    return f;
}
static void frame_set(ct_ctx *c, ct_frame *f, const char *name, cv *v) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->names[i], name)) {
            f->vals[i] = v;
            return;
        }
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 8;
        const char **nn = alloc(c, (size_t)cap * sizeof *nn);
        cv **vv = alloc(c, (size_t)cap * sizeof *vv);
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
static cv *frame_get(ct_frame *f, const char *name) {
    for (; f; f = f->parent)
        for (int i = f->n - 1; i >= 0; i--)
            if (!strcmp(f->names[i], name)) return f->vals[i];
    return NULL;
}

/* ---- conversions ---- */

static bool truthy(const cv *v) {
    switch (v->t) {
    case CV_UNDEF: case CV_NONE: return false;
    case CV_BOOL: return v->u.b;
    case CV_INT: return v->u.i != 0;
    case CV_FLOAT: return v->u.f != 0;
    case CV_STR: return v->u.s.n != 0;
    case CV_LIST: return v->u.l.n != 0;
    case CV_DICT: return v->u.d.n != 0;
    default: return true;
    }
}

static const char *type_name(const cv *v) {
    static const char *const names[] = {"undefined", "NoneType", "bool", "int", "float", "str", "list", "dict", "function", "macro"};
    if (v->t == CV_DICT && v->u.d.ns) return "Namespace";
    return names[v->t];
}

/* Python's repr of a float: the shortest digits that read back the same, ".0" on
 * integral values, exponent form outside [1e-4, 1e16). */
static void fmt_float(double f, char *out, size_t n) {
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

static void put_repr(ct_ctx *c, ct_buf *b, const cv *v);

/* str(v) as Python prints it (what {{ v }} shows); undefined prints as nothing. */
static void put_str(ct_ctx *c, ct_buf *b, const cv *v) {
    char tmp[64];
    switch (v->t) {
    case CV_UNDEF: return;
    case CV_NONE: buf_puts(c, b, "None"); return;
    case CV_BOOL: buf_puts(c, b, v->u.b ? "True" : "False"); return;
    case CV_INT: snprintf(tmp, sizeof tmp, "%lld", v->u.i); buf_puts(c, b, tmp); return;
    case CV_FLOAT: fmt_float(v->u.f, tmp, sizeof tmp); buf_puts(c, b, tmp); return;
    case CV_STR: buf_put(c, b, v->u.s.p, v->u.s.n); return;
    default: put_repr(c, b, v);
    }
}

static void put_repr(ct_ctx *c, ct_buf *b, const cv *v) {
    switch (v->t) {
    case CV_STR: {
        /* Python picks double quotes when the string has a ' and no " */
        bool sq = memchr(v->u.s.p, '\'', v->u.s.n) != NULL, dq = memchr(v->u.s.p, '"', v->u.s.n) != NULL;
        char q = sq && !dq ? '"' : '\'';
        buf_put(c, b, &q, 1);
        for (size_t i = 0; i < v->u.s.n; i++) {
            unsigned char ch = (unsigned char)v->u.s.p[i];
            char tmp[8];
            if (ch == '\\') buf_puts(c, b, "\\\\");
            else if (ch == (unsigned char)q) { buf_puts(c, b, q == '\'' ? "\\'" : "\\\""); }
            else if (ch == '\n') buf_puts(c, b, "\\n");
            else if (ch == '\r') buf_puts(c, b, "\\r");
            else if (ch == '\t') buf_puts(c, b, "\\t");
            else if (ch < 0x20 || ch == 0x7f) {
                snprintf(tmp, sizeof tmp, "\\x%02x", ch);
                buf_puts(c, b, tmp);
            } else buf_put(c, b, (const char *)&ch, 1);
        }
        buf_put(c, b, &q, 1);
        return;
    }
    case CV_LIST:
        buf_puts(c, b, "[");
        for (size_t i = 0; i < v->u.l.n; i++) {
            if (i) buf_puts(c, b, ", ");
            put_repr(c, b, v->u.l.items[i]);
        }
        buf_puts(c, b, "]");
        return;
    case CV_DICT:
        if (v->u.d.ns) {
            buf_puts(c, b, "<Namespace>");
            return;
        }
        buf_puts(c, b, "{");
        for (size_t i = 0; i < v->u.d.n; i++) {
            if (i) buf_puts(c, b, ", ");
            put_repr(c, b, v->u.d.keys[i]);
            buf_puts(c, b, ": ");
            put_repr(c, b, v->u.d.vals[i]);
        }
        buf_puts(c, b, "}");
        return;
    case CV_FUNC: case CV_MACRO: buf_puts(c, b, "<function>"); return;
    case CV_UNDEF: return;
    default: put_str(c, b, v);
    }
}

static cv *to_str(ct_ctx *c, const cv *v) {
    if (v->t == CV_STR) return (cv *)v;
    ct_buf b = {0};
    put_str(c, &b, v);
    cv *s = mk(c, CV_STR);
    s->u.s.p = b.p ? b.p : "";
    s->u.s.n = b.n;
    return s;
}

/* json.dumps(v, ensure_ascii=False, indent=indent) — HF's tojson. */
static void put_json(ct_ctx *c, ct_buf *b, const cv *v, int indent, int level, const ct_node *at) {
    char tmp[64];
    switch (v->t) {
    case CV_NONE: case CV_UNDEF: buf_puts(c, b, "null"); return;
    case CV_BOOL: buf_puts(c, b, v->u.b ? "true" : "false"); return;
    case CV_INT: snprintf(tmp, sizeof tmp, "%lld", v->u.i); buf_puts(c, b, tmp); return;
    case CV_FLOAT:
        if (isnan(v->u.f)) buf_puts(c, b, "NaN");
        else if (isinf(v->u.f)) buf_puts(c, b, v->u.f < 0 ? "-Infinity" : "Infinity");
        else {
            fmt_float(v->u.f, tmp, sizeof tmp);
            buf_puts(c, b, tmp);
        }
        return;
    case CV_STR:
        buf_puts(c, b, "\"");
        for (size_t i = 0; i < v->u.s.n; i++) {
            unsigned char ch = (unsigned char)v->u.s.p[i];
            switch (ch) {
            case '"': buf_puts(c, b, "\\\""); break;
            case '\\': buf_puts(c, b, "\\\\"); break;
            case '\n': buf_puts(c, b, "\\n"); break;
            case '\r': buf_puts(c, b, "\\r"); break;
            case '\t': buf_puts(c, b, "\\t"); break;
            case '\b': buf_puts(c, b, "\\b"); break;
            case '\f': buf_puts(c, b, "\\f"); break;
            default:
                if (ch < 0x20) {
                    snprintf(tmp, sizeof tmp, "\\u%04x", ch);
                    buf_puts(c, b, tmp);
                } else buf_put(c, b, (const char *)&ch, 1);
            }
        }
        buf_puts(c, b, "\"");
        return;
    case CV_LIST: case CV_DICT: {
        bool list = v->t == CV_LIST;
        size_t n = list ? v->u.l.n : v->u.d.n;
        buf_puts(c, b, list ? "[" : "{");
        if (!n) {
            buf_puts(c, b, list ? "]" : "}");
            return;
        }
        for (size_t i = 0; i < n; i++) {
            if (i) buf_puts(c, b, indent >= 0 ? "," : ", ");
            if (indent >= 0) {
                buf_puts(c, b, "\n");
                for (int k = 0; k < indent * (level + 1); k++) buf_puts(c, b, " ");
            }
            if (list) {
                put_json(c, b, v->u.l.items[i], indent, level + 1, at);
            } else {
                const cv *k = v->u.d.keys[i];
                if (k->t != CV_STR) {
                    buf_puts(c, b, "\"");
                    put_str(c, b, k);
                    buf_puts(c, b, "\"");
                } else {
                    put_json(c, b, k, indent, level + 1, at);
                }
                buf_puts(c, b, ": ");
                put_json(c, b, v->u.d.vals[i], indent, level + 1, at);
            }
        }
        if (indent >= 0) {
            buf_puts(c, b, "\n");
            for (int k = 0; k < indent * level; k++) buf_puts(c, b, " ");
        }
        buf_puts(c, b, list ? "]" : "}");
        return;
    }
    default: fail(c, at, "Object of type %s is not JSON serializable", type_name(v));
    }
}

/* ---- comparisons ---- */

static bool is_num(const cv *v) { return v->t == CV_INT || v->t == CV_FLOAT || v->t == CV_BOOL; }
static double num(const cv *v) { return v->t == CV_FLOAT ? v->u.f : v->t == CV_INT ? (double)v->u.i : v->u.b; }
static long long inum(const cv *v) { return v->t == CV_INT ? v->u.i : v->u.b; }

static bool val_eq(const cv *a, const cv *b) {
    if (is_num(a) && is_num(b)) {
        if (a->t != CV_FLOAT && b->t != CV_FLOAT) return inum(a) == inum(b);
        return num(a) == num(b);
    }
    if (a->t != b->t) return false;
    switch (a->t) {
    case CV_UNDEF: case CV_NONE: return true;
    case CV_STR: return a->u.s.n == b->u.s.n && !memcmp(a->u.s.p, b->u.s.p, a->u.s.n);
    case CV_LIST:
        if (a->u.l.n != b->u.l.n) return false;
        for (size_t i = 0; i < a->u.l.n; i++)
            if (!val_eq(a->u.l.items[i], b->u.l.items[i])) return false;
        return true;
    case CV_DICT:
        if (a->u.d.n != b->u.d.n) return false;
        for (size_t i = 0; i < a->u.d.n; i++) {
            const cv *o = dict_get(b, a->u.d.keys[i]);
            if (!o || !val_eq(a->u.d.vals[i], o)) return false;
        }
        return true;
    default: return a == b;
    }
}

static int val_cmp(ct_ctx *c, const ct_node *at, const cv *a, const cv *b, const char *op) {
    if (is_num(a) && is_num(b)) {
        double x = num(a), y = num(b);
        return x < y ? -1 : x > y;
    }
    if (a->t == CV_STR && b->t == CV_STR) {
        size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
        int r = memcmp(a->u.s.p, b->u.s.p, n);
        if (r) return r < 0 ? -1 : 1;
        return a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n;
    }
    fail(c, at, "'%s' not supported between instances of '%s' and '%s'", op, type_name(a), type_name(b));
}

static bool contains(ct_ctx *c, const ct_node *at, const cv *hay, const cv *needle) {
    switch (hay->t) {
    case CV_STR:
        if (needle->t != CV_STR) fail(c, at, "'in <string>' requires string as left operand, not %s", type_name(needle));
        if (!needle->u.s.n) return true;
        for (size_t i = 0; i + needle->u.s.n <= hay->u.s.n; i++)
            if (!memcmp(hay->u.s.p + i, needle->u.s.p, needle->u.s.n)) return true;
        return false;
    case CV_LIST:
        for (size_t i = 0; i < hay->u.l.n; i++)
            if (val_eq(hay->u.l.items[i], needle)) return true;
        return false;
    case CV_DICT: return dict_get(hay, needle) != NULL;
    case CV_UNDEF: fail(c, at, "argument of type 'Undefined' is not iterable");
    default: fail(c, at, "argument of type '%s' is not iterable", type_name(hay));
    }
}

/* ---- UTF-8 helpers (Python indexes strings by code point) ---- */

static size_t u8_len(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}
/* byte offset of code point index cp (cp <= length) */
static size_t u8_off(const char *s, size_t n, size_t cp) {
    size_t i = 0, k = 0;
    while (i < n) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (k == cp) return i;
            k++;
        }
        i++;
    }
    return n;
}

static bool py_space(const char *s, size_t n, size_t i, size_t *w) {
    unsigned char ch = (unsigned char)s[i];
    *w = 1;
    if (ch == ' ' || (ch >= 0x09 && ch <= 0x0d) || (ch >= 0x1c && ch <= 0x1f)) return true;
    /* U+0085, U+00A0 (C2 85, C2 A0), U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000, U+1680 */
    if (ch == 0xC2 && i + 1 < n && ((unsigned char)s[i + 1] == 0x85 || (unsigned char)s[i + 1] == 0xA0)) {
        *w = 2;
        return true;
    }
    if (ch == 0xE2 && i + 2 < n) {
        unsigned char b1 = (unsigned char)s[i + 1], b2 = (unsigned char)s[i + 2];
        if ((b1 == 0x80 && (b2 <= 0x8A || b2 == 0xA8 || b2 == 0xA9 || b2 == 0xAF)) || (b1 == 0x81 && b2 == 0x9F)) {
            *w = 3;
            return true;
        }
    }
    if (ch == 0xE3 && i + 2 < n && (unsigned char)s[i + 1] == 0x80 && (unsigned char)s[i + 2] == 0x80) {
        *w = 3;
        return true;
    }
    if (ch == 0xE1 && i + 2 < n && (unsigned char)s[i + 1] == 0x9A && (unsigned char)s[i + 2] == 0x80) {
        *w = 3;
        return true;
    }
    return false;
}

/* str.strip / lstrip / rstrip, with chars = NULL for whitespace */
static cv *str_strip(ct_ctx *c, const cv *s, const cv *chars, bool left, bool right) {
    const char *p = s->u.s.p;
    size_t a = 0, b = s->u.s.n, w;
    if (!chars) {
        while (left && a < b && py_space(p, b, a, &w)) a += w;
        while (right && b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
            if (!py_space(p, b, st, &w) || st + w != b) break;
            b = st;
        }
    } else {
        /* chars is treated bytewise: enough for the ASCII sets templates pass */
        while (left && a < b && memchr(chars->u.s.p, p[a], chars->u.s.n)) a++;
        while (right && b > a && memchr(chars->u.s.p, p[b - 1], chars->u.s.n)) b--;
    }
    return mk_str(c, p + a, b - a);
}

static cv *str_case(ct_ctx *c, const cv *s, int mode) { /* 0 lower, 1 upper, 2 title, 3 capitalize */
    cv *r = mk_str(c, s->u.s.p, s->u.s.n);
    char *p = (char *)r->u.s.p;
    bool prev_alpha = false;
    for (size_t i = 0; i < r->u.s.n; i++) {
        char ch = p[i];
        bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
        bool up = mode == 1 || (mode == 2 && alpha && !prev_alpha) || (mode == 3 && i == 0);
        if (up && ch >= 'a' && ch <= 'z') p[i] = (char)(ch - 32);
        else if (!up && ch >= 'A' && ch <= 'Z') p[i] = (char)(ch + 32);
        prev_alpha = mode == 2 ? alpha || (unsigned char)ch >= 0x80 : alpha;
    }
    return r;
}

static cv *str_replace(ct_ctx *c, const cv *s, const cv *from, const cv *to, long long count) {
    ct_buf b = {0};
    size_t i = 0;
    long long done = 0;
    if (!from->u.s.n) {
        /* Python inserts `to` between every character (and at both ends) */
        for (size_t k = 0; k <= s->u.s.n; k++) {
            if (count < 0 || done < count) {
                if (k == 0 || k == s->u.s.n || ((unsigned char)s->u.s.p[k] & 0xC0) != 0x80) {
                    buf_put(c, &b, to->u.s.p, to->u.s.n);
                    done++;
                }
            }
            if (k < s->u.s.n) buf_put(c, &b, s->u.s.p + k, 1);
        }
    } else {
        while (i < s->u.s.n) {
            if ((count < 0 || done < count) && i + from->u.s.n <= s->u.s.n &&
                !memcmp(s->u.s.p + i, from->u.s.p, from->u.s.n)) {
                buf_put(c, &b, to->u.s.p, to->u.s.n);
                i += from->u.s.n;
                done++;
            } else {
                buf_put(c, &b, s->u.s.p + i, 1);
                i++;
            }
        }
    }
    return mk_str(c, b.p ? b.p : "", b.n);
}

static cv *str_split(ct_ctx *c, const cv *s, const cv *sep, long long maxsplit) {
    cv *out = mk_list(c, 0);
    size_t cap = 0;
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, i = 0, w;
#define PUSH(str, len)                                                                  \
    do {                                                                                \
        if (out->u.l.n == cap) {                                                        \
            size_t nc = cap ? 2 * cap : 8;                                              \
            cv **it = alloc(c, nc * sizeof *it);                                        \
            if (out->u.l.n) memcpy(it, out->u.l.items, out->u.l.n * sizeof *it);        \
            out->u.l.items = it;                                                        \
            cap = nc;                                                                   \
        }                                                                               \
        out->u.l.items[out->u.l.n++] = mk_str(c, (str), (len));                         \
    } while (0)
    if (!sep) {
        long long splits = 0;
        while (i < n) {
            while (i < n && py_space(p, n, i, &w)) i += w;
            if (i >= n) break;
            if (maxsplit >= 0 && splits >= maxsplit) {
                size_t e = n;
                while (e > i) {
                    size_t st = e - 1;
                    while (st > i && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
                    if (!py_space(p, n, st, &w)) break;
                    e = st;
                }
                PUSH(p + i, e - i);
                break;
            }
            size_t st = i;
            while (i < n && !py_space(p, n, i, &w)) i++;
            PUSH(p + st, i - st);
            splits++;
        }
    } else {
        if (!sep->u.s.n) fail(c, NULL, "empty separator");
        long long splits = 0;
        size_t st = 0;
        while (i + sep->u.s.n <= n && (maxsplit < 0 || splits < maxsplit)) {
            if (!memcmp(p + i, sep->u.s.p, sep->u.s.n)) {
                PUSH(p + st, i - st);
                i += sep->u.s.n;
                st = i;
                splits++;
            } else {
                i++;
            }
        }
        PUSH(p + st, n - st);
    }
#undef PUSH
    return out;
}

/* ---- evaluation ---- */

static cv *eval(ct_ctx *c, ct_frame *f, const ct_node *n);
static int render_body(ct_ctx *c, ct_frame *f, const ct_list *body);

static cv *call_macro(ct_ctx *c, const ct_node *at, const ct_node *m, cv **args, int nargs, const char **kwn, cv **kwv,
                      int nkw) {
    if (++c->depth > CT_MAX_DEPTH) fail(c, at, "macros nested deeper than %d", CT_MAX_DEPTH);
    if (++c->steps > CT_MAX_STEPS) fail(c, at, "the chat template ran longer than allowed");
    if (nargs > m->args.n) fail(c, at, "macro '%s' takes not more than %d argument(s)", m->name, m->args.n);
    ct_frame *f = frame_new(c, c->globals);
    for (int i = 0; i < m->args.n; i++) {
        const char *pn = m->args.v[i]->name;
        cv *v = NULL;
        if (i < nargs) v = args[i];
        for (int k = 0; k < nkw; k++)
            if (!strcmp(kwn[k], pn)) v = kwv[k];
        if (!v) v = m->kwargs.v[i] ? eval(c, f, m->kwargs.v[i]) : &V_UNDEF;
        frame_set(c, f, pn, v);
    }
    ct_buf *saved = c->out, b = {0};
    c->out = &b;
    render_body(c, f, &m->body);
    c->out = saved;
    c->depth--;
    return mk_str(c, b.p ? b.p : "", b.n);
}

static cv *arg_or(cv **args, int nargs, int i, const char **kwn, cv **kwv, int nkw, const char *name) {
    for (int k = 0; k < nkw; k++)
        if (!strcmp(kwn[k], name)) return kwv[k];
    return i < nargs ? args[i] : NULL;
}

static const cv *want_str(ct_ctx *c, const ct_node *at, const cv *v, const char *what) {
    if (!v || v->t != CV_STR) fail(c, at, "%s must be a string, not %s", what, v ? type_name(v) : "nothing");
    return v;
}

static cv *call_fn(ct_ctx *c, const ct_node *at, const cv *fn, cv **args, int nargs, const char **kwn, cv **kwv,
                   int nkw) {
    if (fn->t == CV_MACRO) return call_macro(c, at, fn->u.macro, args, nargs, kwn, kwv, nkw);
    if (fn->t != CV_FUNC) fail(c, at, "'%s' object is not callable", type_name(fn));
    cv *self = fn->u.fn.self;
    cv *a0 = nargs > 0 ? args[0] : NULL, *a1 = nargs > 1 ? args[1] : NULL;
    switch (fn->u.fn.id) {
    case F_RAISE: {
        cv *m = a0 ? to_str(c, a0) : mk_cstr(c, "");
        snprintf(c->err, c->errlen, "%.*s", (int)m->u.s.n, m->u.s.p);
        longjmp(c->jb, 1);
    }
    case F_RANGE: {
        long long lo = 0, hi, st = 1;
        for (int i = 0; i < nargs; i++)
            if (args[i]->t != CV_INT && args[i]->t != CV_BOOL) fail(c, at, "range() takes integers");
        if (nargs == 1) hi = inum(a0);
        else if (nargs == 2 || nargs == 3) {
            lo = inum(a0);
            hi = inum(a1);
            if (nargs == 3) st = inum(args[2]);
        } else fail(c, at, "range() takes 1 to 3 arguments");
        if (st == 0) fail(c, at, "range() step must not be zero");
        long long cnt = st > 0 ? (hi > lo ? (hi - lo + st - 1) / st : 0) : (lo > hi ? (lo - hi - st - 1) / -st : 0);
        if (cnt > 1000000) fail(c, at, "range() too large");
        cv *l = mk_list(c, (size_t)cnt);
        for (long long i = 0; i < cnt; i++) l->u.l.items[i] = mk_int(c, lo + i * st);
        return l;
    }
    case F_NAMESPACE: case F_DICT: {
        cv *d = mk_dict(c);
        d->u.d.ns = fn->u.fn.id == F_NAMESPACE;
        if (a0 && a0->t == CV_DICT)
            for (size_t i = 0; i < a0->u.d.n; i++) dict_set(c, d, a0->u.d.keys[i], a0->u.d.vals[i]);
        for (int k = 0; k < nkw; k++) dict_set_s(c, d, kwn[k], kwv[k]);
        return d;
    }
    case F_STRFTIME: {
        want_str(c, at, a0, "strftime_now's format");
        char fmt[256], out[512];
        snprintf(fmt, sizeof fmt, "%.*s", (int)a0->u.s.n, a0->u.s.p);
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = strftime(out, sizeof out, fmt, &tm);
        return mk_str(c, out, n);
    }
    case M_STRIP: case M_LSTRIP: case M_RSTRIP: {
        cv *chars = a0 && a0->t != CV_NONE ? (cv *)want_str(c, at, a0, "strip's argument") : NULL;
        int id = fn->u.fn.id;
        return str_strip(c, self, chars, id != M_RSTRIP, id != M_LSTRIP);
    }
    case M_SPLIT: {
        cv *sep = arg_or(args, nargs, 0, kwn, kwv, nkw, "sep"), *mx = arg_or(args, nargs, 1, kwn, kwv, nkw, "maxsplit");
        if (sep && sep->t == CV_NONE) sep = NULL;
        if (sep) want_str(c, at, sep, "split's separator");
        return str_split(c, self, sep, mx && mx->t == CV_INT ? mx->u.i : -1);
    }
    case M_STARTSWITH: case M_ENDSWITH: {
        if (!a0) fail(c, at, "%s() takes one argument", fn->u.fn.name);
        size_t cnt = a0->t == CV_LIST ? a0->u.l.n : 1;
        for (size_t i = 0; i < cnt; i++) {
            const cv *x = want_str(c, at, a0->t == CV_LIST ? a0->u.l.items[i] : a0, "the prefix");
            if (x->u.s.n > self->u.s.n) continue;
            const char *p = fn->u.fn.id == M_STARTSWITH ? self->u.s.p : self->u.s.p + self->u.s.n - x->u.s.n;
            if (!memcmp(p, x->u.s.p, x->u.s.n)) return &V_TRUE;
        }
        return &V_FALSE;
    }
    case M_UPPER: return str_case(c, self, 1);
    case M_LOWER: return str_case(c, self, 0);
    case M_TITLE: return str_case(c, self, 2);
    case M_CAPITALIZE: return str_case(c, self, 3);
    case M_REPLACE:
        want_str(c, at, a0, "replace's first argument");
        want_str(c, at, a1, "replace's second argument");
        return str_replace(c, self, a0, a1, nargs > 2 && args[2]->t == CV_INT ? args[2]->u.i : -1);
    case M_FIND: case M_COUNT: {
        want_str(c, at, a0, "the substring");
        long long cnt = 0;
        for (size_t i = 0; i + a0->u.s.n <= self->u.s.n; i++)
            if (!memcmp(self->u.s.p + i, a0->u.s.p, a0->u.s.n)) {
                if (fn->u.fn.id == M_FIND) return mk_int(c, (long long)u8_len(self->u.s.p, i));
                cnt++;
                if (a0->u.s.n) i += a0->u.s.n - 1;
            }
        return mk_int(c, fn->u.fn.id == M_FIND ? -1 : cnt);
    }
    case M_JOIN: {
        if (!a0 || a0->t != CV_LIST) fail(c, at, "join() takes a list");
        ct_buf b = {0};
        for (size_t i = 0; i < a0->u.l.n; i++) {
            if (i) buf_put(c, &b, self->u.s.p, self->u.s.n);
            buf_put(c, &b, want_str(c, at, a0->u.l.items[i], "join's items")->u.s.p, a0->u.l.items[i]->u.s.n);
        }
        return mk_str(c, b.p ? b.p : "", b.n);
    }
    case M_ITEMS: case M_KEYS: case M_VALUES: {
        cv *l = mk_list(c, self->u.d.n);
        for (size_t i = 0; i < self->u.d.n; i++) {
            if (fn->u.fn.id == M_ITEMS) {
                cv *pair = mk_list(c, 2);
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
        if (!a0) fail(c, at, "get() takes a key");
        cv *v = dict_get(self, a0);
        return v ? v : a1 ? a1 : &V_NONE;
    }
    default: fail(c, at, "unknown function");
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
        if (ms[i].dict == (obj->t == CV_DICT) && !strcmp(ms[i].name, name)) return mk_fn(c, ms[i].id, obj, ms[i].name);
    return NULL;
}

/* jinja2's getattr: attribute first (methods, loop fields), then item. */
static cv *get_attr(ct_ctx *c, const ct_node *at, cv *obj, const char *name) {
    if (obj->t == CV_UNDEF) fail(c, at, "'%s' is undefined (reading its attribute '%s')", at->a && at->a->name ? at->a->name : "value", name);
    cv *m = method(c, obj, name);
    if (m) return m;
    if (obj->t == CV_DICT) {
        cv *v = dict_get_s(obj, name);
        return v ? v : &V_UNDEF;
    }
    return &V_UNDEF;
}

static long long norm_index(long long i, size_t n) { return i < 0 ? i + (long long)n : i; }

/* jinja2's getitem: item first, then attribute. */
static cv *get_item(ct_ctx *c, const ct_node *at, cv *obj, cv *key) {
    if (obj->t == CV_UNDEF) fail(c, at, "'%s' is undefined (reading an item of it)", at->a && at->a->name ? at->a->name : "value");
    if (obj->t == CV_DICT) {
        cv *v = dict_get(obj, key);
        if (v) return v;
        if (key->t == CV_STR) {
            cv *m = method(c, obj, key->u.s.p);
            if (m) return m;
        }
        return &V_UNDEF;
    }
    if ((obj->t == CV_LIST || obj->t == CV_STR) && (key->t == CV_INT || key->t == CV_BOOL)) {
        size_t n = obj->t == CV_LIST ? obj->u.l.n : u8_len(obj->u.s.p, obj->u.s.n);
        long long i = norm_index(inum(key), n);
        if (i < 0 || (size_t)i >= n) return &V_UNDEF;
        if (obj->t == CV_LIST) return obj->u.l.items[i];
        size_t a = u8_off(obj->u.s.p, obj->u.s.n, (size_t)i), b = u8_off(obj->u.s.p, obj->u.s.n, (size_t)i + 1);
        return mk_str(c, obj->u.s.p + a, b - a);
    }
    if (key->t == CV_STR) {
        cv *m = method(c, obj, key->u.s.p);
        if (m) return m;
    }
    return &V_UNDEF;
}

static cv *get_slice(ct_ctx *c, const ct_node *at, cv *obj, cv *lo, cv *hi, cv *st) {
    if (obj->t != CV_LIST && obj->t != CV_STR) fail(c, at, "'%s' object is not subscriptable", type_name(obj));
    long long n = obj->t == CV_LIST ? (long long)obj->u.l.n : (long long)u8_len(obj->u.s.p, obj->u.s.n);
    long long step = st && st->t != CV_NONE ? inum(st) : 1;
    if (step == 0) fail(c, at, "slice step cannot be zero");
    long long a, b;
    if (step > 0) {
        a = lo && lo->t != CV_NONE ? norm_index(inum(lo), (size_t)n) : 0;
        b = hi && hi->t != CV_NONE ? norm_index(inum(hi), (size_t)n) : n;
        if (a < 0) a = 0;
        if (a > n) a = n;
        if (b < 0) b = 0;
        if (b > n) b = n;
    } else {
        a = lo && lo->t != CV_NONE ? norm_index(inum(lo), (size_t)n) : n - 1;
        b = hi && hi->t != CV_NONE ? norm_index(inum(hi), (size_t)n) : -1;
        if (a < -1) a = -1;
        if (a >= n) a = n - 1;
        if (hi && hi->t != CV_NONE && b < -1) b = -1;
        if (b >= n) b = n - 1;
    }
    long long cnt = step > 0 ? (b > a ? (b - a + step - 1) / step : 0) : (a > b ? (a - b - step - 1) / -step : 0);
    if (obj->t == CV_LIST) {
        cv *l = mk_list(c, (size_t)cnt);
        for (long long i = 0; i < cnt; i++) l->u.l.items[i] = obj->u.l.items[a + i * step];
        return l;
    }
    ct_buf buf = {0};
    for (long long i = 0; i < cnt; i++) {
        size_t x = u8_off(obj->u.s.p, obj->u.s.n, (size_t)(a + i * step)), y = u8_off(obj->u.s.p, obj->u.s.n, (size_t)(a + i * step + 1));
        buf_put(c, &buf, obj->u.s.p + x, y - x);
    }
    return mk_str(c, buf.p ? buf.p : "", buf.n);
}

static cv *binop(ct_ctx *c, const ct_node *at, const char *op, cv *a, cv *b) {
    if (!strcmp(op, "~")) {
        ct_buf buf = {0};
        put_str(c, &buf, a);
        put_str(c, &buf, b);
        return mk_str(c, buf.p ? buf.p : "", buf.n);
    }
    if (a->t == CV_UNDEF || b->t == CV_UNDEF)
        fail(c, at, "'%s' is undefined", a->t == CV_UNDEF ? (at->a->name ? at->a->name : "value") : (at->b->name ? at->b->name : "value"));
    if (!strcmp(op, "+")) {
        if (a->t == CV_STR && b->t == CV_STR) {
            if (a->u.s.n + b->u.s.n > CT_MAX_OUTPUT) fail(c, at, "a string larger than %u bytes", CT_MAX_OUTPUT);
            cv *r = mk(c, CV_STR);
            char *p = alloc(c, a->u.s.n + b->u.s.n + 1);
            memcpy(p, a->u.s.p, a->u.s.n);
            memcpy(p + a->u.s.n, b->u.s.p, b->u.s.n);
            r->u.s.p = p;
            r->u.s.n = a->u.s.n + b->u.s.n;
            return r;
        }
        if (a->t == CV_LIST && b->t == CV_LIST) {
            cv *r = mk_list(c, a->u.l.n + b->u.l.n);
            for (size_t i = 0; i < a->u.l.n; i++) r->u.l.items[i] = a->u.l.items[i];
            for (size_t i = 0; i < b->u.l.n; i++) r->u.l.items[a->u.l.n + i] = b->u.l.items[i];
            return r;
        }
    }
    if (!strcmp(op, "*") && ((a->t == CV_STR && b->t == CV_INT) || (a->t == CV_INT && b->t == CV_STR))) {
        const cv *s = a->t == CV_STR ? a : b;
        long long k = a->t == CV_INT ? a->u.i : b->u.i;
        if (k > 0 && (unsigned long long)k * s->u.s.n > CT_MAX_OUTPUT) fail(c, at, "string repetition too large");
        ct_buf buf = {0};
        for (long long i = 0; i < k; i++) buf_put(c, &buf, s->u.s.p, s->u.s.n);
        return mk_str(c, buf.p ? buf.p : "", buf.n);
    }
    if (!is_num(a) || !is_num(b))
        fail(c, at, "unsupported operand type(s) for %s: '%s' and '%s'", op, type_name(a), type_name(b));
    bool ints = a->t != CV_FLOAT && b->t != CV_FLOAT;
    if (!strcmp(op, "/")) {
        if (num(b) == 0) fail(c, at, "division by zero");
        return mk_float(c, num(a) / num(b));
    }
    if (ints) {
        long long x = inum(a), y = inum(b);
        if (!strcmp(op, "+")) return mk_int(c, x + y);
        if (!strcmp(op, "-")) return mk_int(c, x - y);
        if (!strcmp(op, "*")) return mk_int(c, x * y);
        if (!strcmp(op, "//") || !strcmp(op, "%")) {
            if (y == 0) fail(c, at, "integer division or modulo by zero");
            long long q = x / y, r = x % y;
            if (r != 0 && ((r < 0) != (y < 0))) {
                q--;
                r += y;
            }
            return mk_int(c, op[0] == '%' ? r : q);
        }
        if (!strcmp(op, "**")) {
            if (y < 0) return mk_float(c, pow((double)x, (double)y));
            long long r = 1;
            for (long long i = 0; i < y && i < 64; i++) r *= x;
            return mk_int(c, r);
        }
    }
    double x = num(a), y = num(b);
    if (!strcmp(op, "+")) return mk_float(c, x + y);
    if (!strcmp(op, "-")) return mk_float(c, x - y);
    if (!strcmp(op, "*")) return mk_float(c, x * y);
    if (!strcmp(op, "**")) return mk_float(c, pow(x, y));
    if (y == 0) fail(c, at, "float division or modulo by zero");
    double q = floor(x / y);
    return mk_float(c, op[0] == '%' ? x - q * y : q);
}

static cv *length_of(ct_ctx *c, const ct_node *at, const cv *v) {
    switch (v->t) {
    case CV_STR: return mk_int(c, (long long)u8_len(v->u.s.p, v->u.s.n));
    case CV_LIST: return mk_int(c, (long long)v->u.l.n);
    case CV_DICT: return mk_int(c, (long long)v->u.d.n);
    case CV_UNDEF: return mk_int(c, 0);
    default: fail(c, at, "object of type '%s' has no len()", type_name(v));
    }
}

/* Iterating: lists, dict keys, string characters; undefined iterates as empty. */
static cv *as_list(ct_ctx *c, const ct_node *at, cv *v) {
    if (v->t == CV_LIST) return v;
    if (v->t == CV_UNDEF || v->t == CV_NONE) {
        if (v->t == CV_NONE) fail(c, at, "'NoneType' object is not iterable");
        return mk_list(c, 0);
    }
    if (v->t == CV_DICT) {
        cv *l = mk_list(c, v->u.d.n);
        for (size_t i = 0; i < v->u.d.n; i++) l->u.l.items[i] = v->u.d.keys[i];
        return l;
    }
    if (v->t == CV_STR) {
        size_t n = u8_len(v->u.s.p, v->u.s.n);
        cv *l = mk_list(c, n);
        for (size_t i = 0; i < n; i++) {
            size_t a = u8_off(v->u.s.p, v->u.s.n, i), b = u8_off(v->u.s.p, v->u.s.n, i + 1);
            l->u.l.items[i] = mk_str(c, v->u.s.p + a, b - a);
        }
        return l;
    }
    fail(c, at, "'%s' object is not iterable", type_name(v));
}

static bool run_test(ct_ctx *c, const ct_node *at, const char *name, cv *v, cv **args, int nargs) {
    cv *a0 = nargs ? args[0] : NULL;
    if (!strcmp(name, "defined")) return v->t != CV_UNDEF;
    if (!strcmp(name, "undefined")) return v->t == CV_UNDEF;
    if (!strcmp(name, "none")) return v->t == CV_NONE;
    if (!strcmp(name, "string")) return v->t == CV_STR;
    if (!strcmp(name, "mapping")) return v->t == CV_DICT;
    if (!strcmp(name, "sequence")) return v->t == CV_LIST || v->t == CV_STR || v->t == CV_DICT;
    if (!strcmp(name, "iterable")) return v->t == CV_LIST || v->t == CV_STR || v->t == CV_DICT;
    if (!strcmp(name, "number")) return v->t == CV_INT || v->t == CV_FLOAT || v->t == CV_BOOL;
    if (!strcmp(name, "integer")) return v->t == CV_INT;
    if (!strcmp(name, "float")) return v->t == CV_FLOAT;
    if (!strcmp(name, "boolean")) return v->t == CV_BOOL;
    if (!strcmp(name, "true")) return v->t == CV_BOOL && v->u.b;
    if (!strcmp(name, "false")) return v->t == CV_BOOL && !v->u.b;
    if (!strcmp(name, "callable")) return v->t == CV_FUNC || v->t == CV_MACRO;
    if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (v->t != CV_INT) fail(c, at, "'%s' test needs an integer", name);
        return (((v->u.i % 2) + 2) % 2 == 1) == (name[0] == 'o');
    }
    if (!strcmp(name, "divisibleby")) {
        if (v->t != CV_INT || !a0 || a0->t != CV_INT || a0->u.i == 0) fail(c, at, "'divisibleby' needs integers");
        return v->u.i % a0->u.i == 0;
    }
    if (!a0 && (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "sameas") || !strcmp(name, "in") ||
                !strcmp(name, "ne") || !strcmp(name, "lt") || !strcmp(name, "gt")))
        fail(c, at, "test '%s' needs an argument", name);
    if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==")) return val_eq(v, a0);
    if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !val_eq(v, a0);
    if (!strcmp(name, "sameas")) return v == a0 || (v->t <= CV_BOOL && val_eq(v, a0) && v->t == a0->t);
    if (!strcmp(name, "in")) return contains(c, at, a0, v);
    if (!strcmp(name, "lt") || !strcmp(name, "lessthan")) return val_cmp(c, at, v, a0, "<") < 0;
    if (!strcmp(name, "gt") || !strcmp(name, "greaterthan")) return val_cmp(c, at, v, a0, ">") > 0;
    if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        if (v->t != CV_STR) return false;
        cv *t = str_case(c, v, name[0] == 'u');
        return val_eq(t, v);
    }
    fail(c, at, "unknown test '%s'", name);
}

static cv *eval_filter(ct_ctx *c, ct_frame *f, const ct_node *n, cv *v);

static cv *eval(ct_ctx *c, ct_frame *f, const ct_node *n) {
    switch (n->k) {
    case CN_CONST: return n->value;
    case CN_NAME: {
        cv *v = frame_get(f, n->name);
        return v ? v : &V_UNDEF;
    }
    case CN_ATTR: return get_attr(c, n, eval(c, f, n->a), n->name);
    case CN_ITEM: return get_item(c, n, eval(c, f, n->a), eval(c, f, n->b));
    case CN_SLICE: {
        cv *o = eval(c, f, n->a);
        return get_slice(c, n, o, n->b ? eval(c, f, n->b) : NULL, n->c ? eval(c, f, n->c) : NULL,
                         n->d ? eval(c, f, n->d) : NULL);
    }
    case CN_CALL: {
        cv *fn = eval(c, f, n->a);
        if (fn->t == CV_UNDEF) fail(c, n, "'%s' is undefined", n->a->name ? n->a->name : "function");
        cv **args = n->args.n ? alloc(c, (size_t)n->args.n * sizeof *args) : NULL;
        cv **kw = n->kwargs.n ? alloc(c, (size_t)n->kwargs.n * sizeof *kw) : NULL;
        for (int i = 0; i < n->args.n; i++) args[i] = eval(c, f, n->args.v[i]);
        for (int i = 0; i < n->kwargs.n; i++) kw[i] = eval(c, f, n->kwargs.v[i]);
        return call_fn(c, n, fn, args, n->args.n, n->kwnames, kw, n->kwargs.n);
    }
    case CN_FILTER: return eval_filter(c, f, n, eval(c, f, n->a));
    case CN_TEST: {
        cv *v = eval(c, f, n->a);
        cv **args = n->args.n ? alloc(c, (size_t)n->args.n * sizeof *args) : NULL;
        for (int i = 0; i < n->args.n; i++) args[i] = eval(c, f, n->args.v[i]);
        return mk_bool(run_test(c, n, n->name, v, args, n->args.n) != n->negate);
    }
    case CN_BIN: return binop(c, n, n->name, eval(c, f, n->a), eval(c, f, n->b));
    case CN_NOT: return mk_bool(!truthy(eval(c, f, n->a)));
    case CN_NEG: case CN_POS: {
        cv *v = eval(c, f, n->a);
        if (!is_num(v)) fail(c, n, "bad operand type for unary %c: '%s'", n->k == CN_NEG ? '-' : '+', type_name(v));
        if (n->k == CN_POS) return v;
        return v->t == CV_FLOAT ? mk_float(c, -v->u.f) : mk_int(c, -inum(v));
    }
    case CN_AND: {
        cv *a = eval(c, f, n->a);
        return truthy(a) ? eval(c, f, n->b) : a;
    }
    case CN_OR: {
        cv *a = eval(c, f, n->a);
        return truthy(a) ? a : eval(c, f, n->b);
    }
    case CN_COND:
        if (truthy(eval(c, f, n->a))) return eval(c, f, n->b);
        return n->c ? eval(c, f, n->c) : &V_UNDEF;
    case CN_LIST: {
        cv *l = mk_list(c, (size_t)n->args.n);
        for (int i = 0; i < n->args.n; i++) l->u.l.items[i] = eval(c, f, n->args.v[i]);
        return l;
    }
    case CN_DICT: {
        cv *d = mk_dict(c);
        for (int i = 0; i < n->args.n; i++) dict_set(c, d, eval(c, f, n->args.v[i]), eval(c, f, n->kwargs.v[i]));
        return d;
    }
    case CN_CMP: {
        cv *l = eval(c, f, n->a);
        for (int i = 0; i < n->args.n; i++) {
            cv *r = eval(c, f, n->args.v[i]);
            const char *op = n->kwnames[i];
            bool ok;
            if (!strcmp(op, "==")) ok = val_eq(l, r);
            else if (!strcmp(op, "!=")) ok = !val_eq(l, r);
            else if (!strcmp(op, "in")) ok = contains(c, n, r, l);
            else if (!strcmp(op, "notin")) ok = !contains(c, n, r, l);
            else {
                int k = val_cmp(c, n, l, r, op);
                ok = !strcmp(op, "<") ? k < 0 : !strcmp(op, "<=") ? k <= 0 : !strcmp(op, ">") ? k > 0 : k >= 0;
            }
            if (!ok) return &V_FALSE;
            l = r;
        }
        return &V_TRUE;
    }
    default: fail(c, n, "internal error: statement in an expression");
    }
}

/* attribute lookup for map/selectattr: "a.b" paths, as jinja2's make_attrgetter */
static cv *attr_path(ct_ctx *c, const ct_node *at, cv *v, const cv *path) {
    const char *p = path->u.s.p, *end = p + path->u.s.n;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        if (!dot) dot = end;
        cv *key = mk_str(c, p, (size_t)(dot - p));
        if (v->t == CV_UNDEF) return v;
        v = get_item(c, at, v, key);
        p = dot + 1;
    }
    return v;
}

static cv *eval_filter(ct_ctx *c, ct_frame *f, const ct_node *n, cv *v) {
    int na = n->args.n, nk = n->kwargs.n;
    cv **args = na ? alloc(c, (size_t)na * sizeof *args) : NULL;
    cv **kw = nk ? alloc(c, (size_t)nk * sizeof *kw) : NULL;
    for (int i = 0; i < na; i++) args[i] = eval(c, f, n->args.v[i]);
    for (int i = 0; i < nk; i++) kw[i] = eval(c, f, n->kwargs.v[i]);
    const char *nm = n->name;
    cv *a0 = arg_or(args, na, 0, NULL, NULL, 0, "");
    if (!strcmp(nm, "trim")) {
        cv *s = to_str(c, v);
        cv *chars = arg_or(args, na, 0, n->kwnames, kw, nk, "chars");
        return str_strip(c, s, chars && chars->t == CV_STR ? chars : NULL, true, true);
    }
    if (!strcmp(nm, "length") || !strcmp(nm, "count")) return length_of(c, n, v);
    if (!strcmp(nm, "string")) return to_str(c, v);
    if (!strcmp(nm, "safe") || !strcmp(nm, "e") || !strcmp(nm, "escape")) {
        if (strcmp(nm, "safe")) fail(c, n, "filter '%s' is not supported", nm);
        return v->t == CV_UNDEF ? v : to_str(c, v);
    }
    if (!strcmp(nm, "upper")) return str_case(c, to_str(c, v), 1);
    if (!strcmp(nm, "lower")) return str_case(c, to_str(c, v), 0);
    if (!strcmp(nm, "title")) return str_case(c, to_str(c, v), 2);
    if (!strcmp(nm, "capitalize")) return str_case(c, to_str(c, v), 3);
    if (!strcmp(nm, "default") || !strcmp(nm, "d")) {
        cv *bo = arg_or(args, na, 1, n->kwnames, kw, nk, "boolean");
        bool use = bo && truthy(bo) ? !truthy(v) : v->t == CV_UNDEF;
        cv *dv = arg_or(args, na, 0, n->kwnames, kw, nk, "default_value");
        return use ? (dv ? dv : mk_cstr(c, "")) : v;
    }
    if (!strcmp(nm, "tojson")) {
        cv *ind = arg_or(args, na, 0, n->kwnames, kw, nk, "indent");
        ct_buf b = {0};
        put_json(c, &b, v, ind && ind->t == CV_INT ? (int)ind->u.i : -1, 0, n);
        return mk_str(c, b.p ? b.p : "", b.n);
    }
    if (!strcmp(nm, "join")) {
        cv *l = as_list(c, n, v);
        cv *sep = arg_or(args, na, 0, n->kwnames, kw, nk, "d");
        cv *attr = arg_or(args, na, 1, n->kwnames, kw, nk, "attribute");
        ct_buf b = {0};
        for (size_t i = 0; i < l->u.l.n; i++) {
            if (i && sep) put_str(c, &b, sep);
            put_str(c, &b, attr ? attr_path(c, n, l->u.l.items[i], to_str(c, attr)) : l->u.l.items[i]);
        }
        return mk_str(c, b.p ? b.p : "", b.n);
    }
    if (!strcmp(nm, "first") || !strcmp(nm, "last")) {
        cv *l = as_list(c, n, v);
        if (!l->u.l.n) return &V_UNDEF;
        return l->u.l.items[nm[0] == 'f' ? 0 : l->u.l.n - 1];
    }
    if (!strcmp(nm, "list")) return as_list(c, n, v);
    if (!strcmp(nm, "reverse")) {
        if (v->t == CV_STR) return get_slice(c, n, v, NULL, NULL, mk_int(c, -1));
        cv *l = as_list(c, n, v), *r = mk_list(c, l->u.l.n);
        for (size_t i = 0; i < l->u.l.n; i++) r->u.l.items[i] = l->u.l.items[l->u.l.n - 1 - i];
        return r;
    }
    if (!strcmp(nm, "items")) {
        if (v->t == CV_UNDEF) return mk_list(c, 0);
        if (v->t != CV_DICT) fail(c, n, "items filter needs a mapping");
        return call_fn(c, n, mk_fn(c, M_ITEMS, v, "items"), NULL, 0, NULL, NULL, 0);
    }
    if (!strcmp(nm, "int")) {
        if (v->t == CV_INT) return v;
        if (v->t == CV_FLOAT) return mk_int(c, (long long)v->u.f);
        if (v->t == CV_BOOL) return mk_int(c, v->u.b);
        if (v->t == CV_STR) {
            char tmp[64];
            snprintf(tmp, sizeof tmp, "%.*s", (int)(v->u.s.n < 63 ? v->u.s.n : 63), v->u.s.p);
            char *e = NULL;
            long long x = strtoll(tmp, &e, 10);
            if (e && e != tmp && !*e) return mk_int(c, x);
            double d = strtod(tmp, &e);
            if (e && e != tmp && !*e) return mk_int(c, (long long)d);
        }
        return a0 ? a0 : mk_int(c, 0);
    }
    if (!strcmp(nm, "float")) {
        if (is_num(v)) return mk_float(c, num(v));
        if (v->t == CV_STR) {
            char tmp[64];
            snprintf(tmp, sizeof tmp, "%.*s", (int)(v->u.s.n < 63 ? v->u.s.n : 63), v->u.s.p);
            char *e = NULL;
            double d = strtod(tmp, &e);
            if (e && e != tmp && !*e) return mk_float(c, d);
        }
        return a0 ? a0 : mk_float(c, 0);
    }
    if (!strcmp(nm, "abs")) {
        if (!is_num(v)) fail(c, n, "bad operand type for abs(): '%s'", type_name(v));
        return v->t == CV_FLOAT ? mk_float(c, fabs(v->u.f)) : mk_int(c, llabs(inum(v)));
    }
    if (!strcmp(nm, "replace")) {
        cv *s = to_str(c, v);
        if (na < 2) fail(c, n, "replace needs two arguments");
        return str_replace(c, s, to_str(c, args[0]), to_str(c, args[1]), na > 2 && args[2]->t == CV_INT ? args[2]->u.i : -1);
    }
    if (!strcmp(nm, "map")) {
        cv *attr = arg_or(NULL, 0, 0, n->kwnames, kw, nk, "attribute");
        cv *l = as_list(c, n, v), *r = mk_list(c, l->u.l.n);
        if (!attr && a0 && a0->t == CV_STR) {
            /* map('filtername'): only the filters that need no arguments */
            for (size_t i = 0; i < l->u.l.n; i++) {
                ct_node fake = *n;
                fake.name = alloc(c, a0->u.s.n + 1);
                memcpy((char *)fake.name, a0->u.s.p, a0->u.s.n);
                fake.args.n = fake.kwargs.n = 0;
                r->u.l.items[i] = eval_filter(c, f, &fake, l->u.l.items[i]);
            }
            return r;
        }
        if (!attr) fail(c, n, "map needs attribute= or a filter name");
        cv *dflt = arg_or(NULL, 0, 0, n->kwnames, kw, nk, "default");
        for (size_t i = 0; i < l->u.l.n; i++) {
            cv *x = attr_path(c, n, l->u.l.items[i], to_str(c, attr));
            r->u.l.items[i] = x->t == CV_UNDEF && dflt ? dflt : x;
        }
        return r;
    }
    if (!strcmp(nm, "selectattr") || !strcmp(nm, "rejectattr") || !strcmp(nm, "select") || !strcmp(nm, "reject")) {
        bool attr_form = strstr(nm, "attr") != NULL, keep_if = nm[0] == 's';
        int base = attr_form ? 1 : 0;
        if (attr_form && !a0) fail(c, n, "%s needs an attribute name", nm);
        cv *l = as_list(c, n, v), *r = mk_list(c, l->u.l.n);
        size_t k = 0;
        for (size_t i = 0; i < l->u.l.n; i++) {
            cv *x = attr_form ? attr_path(c, n, l->u.l.items[i], to_str(c, a0)) : l->u.l.items[i];
            bool t;
            if (na > base) {
                cv *tn = to_str(c, args[base]);
                char tname[64];
                snprintf(tname, sizeof tname, "%.*s", (int)(tn->u.s.n < 63 ? tn->u.s.n : 63), tn->u.s.p);
                t = run_test(c, n, tname, x, args + base + 1, na - base - 1);
            } else {
                t = truthy(x);
            }
            if (t == keep_if) r->u.l.items[k++] = l->u.l.items[i];
        }
        r->u.l.n = k;
        return r;
    }
    if (!strcmp(nm, "unique")) {
        cv *l = as_list(c, n, v), *r = mk_list(c, l->u.l.n);
        size_t k = 0;
        for (size_t i = 0; i < l->u.l.n; i++) {
            bool seen = false;
            for (size_t j = 0; j < k && !seen; j++) seen = val_eq(r->u.l.items[j], l->u.l.items[i]);
            if (!seen) r->u.l.items[k++] = l->u.l.items[i];
        }
        r->u.l.n = k;
        return r;
    }
    if (!strcmp(nm, "round")) {
        if (!is_num(v)) fail(c, n, "round needs a number");
        cv *pr = arg_or(args, na, 0, n->kwnames, kw, nk, "precision");
        double m = pow(10, pr && pr->t == CV_INT ? (double)pr->u.i : 0);
        return mk_float(c, round(num(v) * m) / m);
    }
    if (!strcmp(nm, "indent")) {
        cv *s = to_str(c, v);
        cv *w = arg_or(args, na, 0, n->kwnames, kw, nk, "width");
        cv *first = arg_or(args, na, 1, n->kwnames, kw, nk, "first");
        cv *blank = arg_or(args, na, 2, n->kwnames, kw, nk, "blank");
        ct_buf pad = {0}, b = {0};
        if (w && w->t == CV_STR) put_str(c, &pad, w);
        else for (long long i = 0; i < (w && w->t == CV_INT ? w->u.i : 4); i++) buf_puts(c, &pad, " ");
        bool at_start = true, first_line = true;
        for (size_t i = 0; i <= s->u.s.n; i++) {
            if (at_start && i < s->u.s.n) {
                bool empty = s->u.s.p[i] == '\n';
                if ((!first_line || (first && truthy(first))) && (!empty || (blank && truthy(blank))) && pad.n)
                    buf_put(c, &b, pad.p, pad.n);
                at_start = false;
            }
            if (i == s->u.s.n) break;
            buf_put(c, &b, s->u.s.p + i, 1);
            if (s->u.s.p[i] == '\n') {
                at_start = true;
                first_line = false;
            }
        }
        return mk_str(c, b.p ? b.p : "", b.n);
    }
    fail(c, n, "no filter named '%s'", nm);
}

/* ---- statements ---- */

static void assign(ct_ctx *c, ct_frame *f, const ct_node *n, cv *v) {
    if (n->attr) {
        cv *ns = frame_get(f, n->name);
        if (!ns || ns->t != CV_DICT || !ns->u.d.ns) fail(c, n, "cannot assign attribute on non-namespace object");
        dict_set_s(c, ns, n->attr, v);
        return;
    }
    if (n->args.n) {
        cv *l = as_list(c, n, v);
        if (l->u.l.n != (size_t)n->args.n) fail(c, n, "cannot unpack %zu values into %d names", l->u.l.n, n->args.n);
        for (int i = 0; i < n->args.n; i++) frame_set(c, f, n->args.v[i]->name, l->u.l.items[i]);
        return;
    }
    frame_set(c, f, n->name, v);
}

static int render_for(ct_ctx *c, ct_frame *f, const ct_node *n) {
    cv *seq = as_list(c, n, eval(c, f, n->a));
    if (n->b) { /* for x in xs if cond: filtered before loop.* is computed, as jinja2 does */
        cv *keep = mk_list(c, seq->u.l.n);
        size_t k = 0;
        for (size_t i = 0; i < seq->u.l.n; i++) {
            ct_frame *tf = frame_new(c, f);
            cv *item = seq->u.l.items[i];
            if (n->args.n == 1) frame_set(c, tf, n->args.v[0]->name, item);
            else {
                cv *parts = as_list(c, n, item);
                if (parts->u.l.n != (size_t)n->args.n) fail(c, n, "cannot unpack loop item into %d names", n->args.n);
                for (int j = 0; j < n->args.n; j++) frame_set(c, tf, n->args.v[j]->name, parts->u.l.items[j]);
            }
            if (truthy(eval(c, tf, n->b))) keep->u.l.items[k++] = item;
        }
        keep->u.l.n = k;
        seq = keep;
    }
    size_t len = seq->u.l.n;
    if (!len) return render_body(c, frame_new(c, f), &n->orelse) == CT_BREAK ? CT_NEXT : CT_NEXT;
    for (size_t i = 0; i < len; i++) {
        if (++c->steps > CT_MAX_STEPS) fail(c, n, "the chat template ran longer than allowed");
        ct_frame *it = frame_new(c, f);
        cv *loop = mk_dict(c);
        dict_set_s(c, loop, "index", mk_int(c, (long long)i + 1));
        dict_set_s(c, loop, "index0", mk_int(c, (long long)i));
        dict_set_s(c, loop, "revindex", mk_int(c, (long long)(len - i)));
        dict_set_s(c, loop, "revindex0", mk_int(c, (long long)(len - i - 1)));
        dict_set_s(c, loop, "first", mk_bool(i == 0));
        dict_set_s(c, loop, "last", mk_bool(i + 1 == len));
        dict_set_s(c, loop, "length", mk_int(c, (long long)len));
        dict_set_s(c, loop, "depth", mk_int(c, 1));
        dict_set_s(c, loop, "depth0", mk_int(c, 0));
        dict_set_s(c, loop, "previtem", i ? seq->u.l.items[i - 1] : &V_UNDEF);
        dict_set_s(c, loop, "nextitem", i + 1 < len ? seq->u.l.items[i + 1] : &V_UNDEF);
        frame_set(c, it, "loop", loop);
        cv *item = seq->u.l.items[i];
        if (n->args.n == 1) frame_set(c, it, n->args.v[0]->name, item);
        else {
            cv *parts = as_list(c, n, item);
            if (parts->u.l.n != (size_t)n->args.n) fail(c, n, "cannot unpack loop item into %d names", n->args.n);
            for (int j = 0; j < n->args.n; j++) frame_set(c, it, n->args.v[j]->name, parts->u.l.items[j]);
        }
        int r = render_body(c, it, &n->body);
        if (r == CT_BREAK) break;
    }
    return CT_NEXT;
}

static int render_body(ct_ctx *c, ct_frame *f, const ct_list *body) {
    for (int i = 0; i < body->n; i++) {
        const ct_node *n = body->v[i];
        switch (n->k) {
        case CN_TEXT: buf_put(c, c->out, n->value->u.s.p, n->value->u.s.n); break;
        case CN_OUTPUT: put_str(c, c->out, eval(c, f, n->a)); break;
        case CN_IF: {
            int r = render_body(c, f, truthy(eval(c, f, n->a)) ? &n->body : &n->orelse);
            if (r != CT_NEXT) return r;
            break;
        }
        case CN_FOR: render_for(c, f, n); break;
        case CN_SET: assign(c, f, n, eval(c, f, n->a)); break;
        case CN_SET_BLOCK: {
            ct_buf *saved = c->out, b = {0};
            c->out = &b;
            render_body(c, f, &n->body);
            c->out = saved;
            frame_set(c, f, n->name, mk_str(c, b.p ? b.p : "", b.n));
            break;
        }
        case CN_MACRO: {
            cv *m = mk(c, CV_MACRO);
            m->u.macro = n;
            frame_set(c, f, n->name, m);
            break;
        }
        case CN_BREAK: return CT_BREAK;
        case CN_CONTINUE: return CT_CONTINUE;
        case CN_BLOCK: {
            int r = render_body(c, f, &n->body);
            if (r != CT_NEXT) return r;
            break;
        }
        default: fail(c, n, "internal error: expression as a statement");
        }
    }
    return CT_NEXT;
}

int ct_render(const chat_template *t, const chat_message *msgs, int n_msgs, const chat_render_opts *o, char **out,
              size_t *out_len, char *err, size_t errlen) {
    *out = NULL;
    *out_len = 0;
    /* On the heap: the context changes between setjmp and longjmp, and only objects not
     * local to the setjmp caller keep defined values across the jump (C11 7.13.2.1). */
    ct_ctx *const cp = calloc(1, sizeof *cp);
    ct_buf *const bp = calloc(1, sizeof *bp);
    if (!cp || !bp) {
        free(cp);
        free(bp);
        return PEFTD_ENOMEM;
    }
    cp->err = err;
    cp->errlen = errlen;
    cp->out = bp;
    int jr = setjmp(cp->jb);
    if (jr) {
        ct_arena_free(&cp->arena);
        free(cp);
        free(bp);
        return jr == 2 ? PEFTD_ENOMEM : PEFTD_EINVAL;
    }
    ct_frame *g = frame_new(cp, NULL);
    cv *ml = mk_list(cp, (size_t)(n_msgs > 0 ? n_msgs : 0));
    for (int i = 0; i < n_msgs; i++) {
        cv *m = mk_dict(cp);
        dict_set_s(cp, m, "role", mk_cstr(cp, msgs[i].role));
        dict_set_s(cp, m, "content", mk_cstr(cp, msgs[i].content));
        ml->u.l.items[i] = m;
    }
    frame_set(cp, g, "raise_exception", mk_fn(cp, F_RAISE, NULL, "raise_exception"));
    frame_set(cp, g, "range", mk_fn(cp, F_RANGE, NULL, "range"));
    frame_set(cp, g, "namespace", mk_fn(cp, F_NAMESPACE, NULL, "namespace"));
    frame_set(cp, g, "dict", mk_fn(cp, F_DICT, NULL, "dict"));
    frame_set(cp, g, "strftime_now", mk_fn(cp, F_STRFTIME, NULL, "strftime_now"));
    frame_set(cp, g, "messages", ml);
    frame_set(cp, g, "tools", &V_NONE);
    frame_set(cp, g, "documents", &V_NONE);
    frame_set(cp, g, "add_generation_prompt", mk_bool(o->add_generation_prompt));
    if (o->bos_token) frame_set(cp, g, "bos_token", mk_cstr(cp, o->bos_token));
    if (o->eos_token) frame_set(cp, g, "eos_token", mk_cstr(cp, o->eos_token));
    if (o->unk_token) frame_set(cp, g, "unk_token", mk_cstr(cp, o->unk_token));
    if (o->pad_token) frame_set(cp, g, "pad_token", mk_cstr(cp, o->pad_token));
    /* the template's top level is its own scope above the globals, as in jinja2 */
    cp->globals = frame_new(cp, g); /* macros see the top level's names, as in jinja2 */
    render_body(cp, cp->globals, &t->body);
    char *res = malloc(bp->n + 1);
    if (!res) {
        ct_arena_free(&cp->arena);
        free(cp);
        free(bp);
        return PEFTD_ENOMEM;
    }
    if (bp->n) memcpy(res, bp->p, bp->n);
    res[bp->n] = 0;
    *out = res;
    *out_len = bp->n;
    ct_arena_free(&cp->arena);
    free(cp);
    free(bp);
    return 0;
}
