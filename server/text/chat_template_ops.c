/* server/text/chat_template_ops.c — operations on values: strings indexed by code point
 * as Python does (strip, replace, split), the binary operators, len() and iteration. Uses chat_template_value.c only. */
#include <limits.h>
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

/* ---- UTF-8 helpers (Python indexes strings by code point) ---- */

size_t ct__u8_len(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}
/* byte offset of code point index cp (cp <= length) */
size_t ct__u8_off(const char *s, size_t n, size_t cp) {
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
cv *ct__str_strip(ct_ctx *c, const cv *s, const cv *chars, bool left, bool right) {
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
    return ct__mk_str(c, p + a, b - a);
}

cv *ct__str_replace(ct_ctx *c, const cv *s, const cv *from, const cv *to, long long count) {
    ct_buf b = {0};
    size_t i = 0;
    long long done = 0;
    if (!from->u.s.n) {
        /* Python inserts `to` between every character (and at both ends) */
        for (size_t k = 0; k <= s->u.s.n; k++) {
            if (count < 0 || done < count) {
                if (k == 0 || k == s->u.s.n || ((unsigned char)s->u.s.p[k] & 0xC0) != 0x80) {
                    ct__buf_put(c, &b, to->u.s.p, to->u.s.n);
                    done++;
                }
            }
            if (k < s->u.s.n) ct__buf_put(c, &b, s->u.s.p + k, 1);
        }
    } else {
        while (i < s->u.s.n) {
            if ((count < 0 || done < count) && i + from->u.s.n <= s->u.s.n &&
                !memcmp(s->u.s.p + i, from->u.s.p, from->u.s.n)) {
                ct__buf_put(c, &b, to->u.s.p, to->u.s.n);
                i += from->u.s.n;
                done++;
            } else {
                ct__buf_put(c, &b, s->u.s.p + i, 1);
                i++;
            }
        }
    }
    return ct__mk_str(c, b.p ? b.p : "", b.n);
}

cv *ct__str_split(ct_ctx *c, const cv *s, const cv *sep, long long maxsplit) {
    cv *out = ct__mk_list(c, 0);
    size_t cap = 0;
    const char *p = s->u.s.p;
    size_t n = s->u.s.n, i = 0, w;
#define PUSH(str, len)                                                                  \
    do {                                                                                \
        if (out->u.l.n == cap) {                                                        \
            size_t nc = cap ? 2 * cap : 8;                                              \
            cv **it = ct__alloc(c, nc * sizeof *it);                                        \
            if (out->u.l.n) memcpy(it, out->u.l.items, out->u.l.n * sizeof *it);        \
            out->u.l.items = it;                                                        \
            cap = nc;                                                                   \
        }                                                                               \
        out->u.l.items[out->u.l.n++] = ct__mk_str(c, (str), (len));                         \
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
        if (!sep->u.s.n) ct__fail(c, NULL, "empty separator");
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

cv *ct__binop(ct_ctx *c, const ct_node *at, const char *op, cv *a, cv *b) {
    if (!strcmp(op, "~")) {
        ct_buf buf = {0};
        ct__put_str(c, &buf, a);
        ct__put_str(c, &buf, b);
        return ct__mk_str(c, buf.p ? buf.p : "", buf.n);
    }
    if (a->t == CV_UNDEF || b->t == CV_UNDEF)
        ct__fail(c, at, "'%s' is undefined", a->t == CV_UNDEF ? (at->a->name ? at->a->name : "value") : (at->b->name ? at->b->name : "value"));
    if (!strcmp(op, "+")) {
        if (a->t == CV_STR && b->t == CV_STR) {
            if (a->u.s.n + b->u.s.n > CT_MAX_OUTPUT) ct__fail(c, at, "a string larger than %u bytes", CT_MAX_OUTPUT);
            cv *r = ct__mk(c, CV_STR);
            char *p = ct__alloc(c, a->u.s.n + b->u.s.n + 1);
            memcpy(p, a->u.s.p, a->u.s.n);
            memcpy(p + a->u.s.n, b->u.s.p, b->u.s.n);
            r->u.s.p = p;
            r->u.s.n = a->u.s.n + b->u.s.n;
            return r;
        }
        if (a->t == CV_LIST && b->t == CV_LIST) {
            if (a->u.l.kind != b->u.l.kind || a->u.l.kind >= CL_GEN)
                ct__fail(c, at, "unsupported operand type(s) for +: '%s' and '%s'", ct__type_name(a), ct__type_name(b));
            cv *r = ct__mk_list(c, a->u.l.n + b->u.l.n);
            r->u.l.kind = a->u.l.kind;
            for (size_t i = 0; i < a->u.l.n; i++) r->u.l.items[i] = a->u.l.items[i];
            for (size_t i = 0; i < b->u.l.n; i++) r->u.l.items[a->u.l.n + i] = b->u.l.items[i];
            return r;
        }
    }
    if (!strcmp(op, "*") && ((a->t == CV_STR && b->t == CV_INT) || (a->t == CV_INT && b->t == CV_STR))) {
        const cv *s = a->t == CV_STR ? a : b;
        long long k = a->t == CV_INT ? a->u.i : b->u.i;
        if (k > 0 && (unsigned long long)k * s->u.s.n > CT_MAX_OUTPUT) ct__fail(c, at, "string repetition too large");
        ct_buf buf = {0};
        for (long long i = 0; i < k; i++) ct__buf_put(c, &buf, s->u.s.p, s->u.s.n);
        return ct__mk_str(c, buf.p ? buf.p : "", buf.n);
    }
    if (!ct__is_num(a) || !ct__is_num(b))
        ct__fail(c, at, "unsupported operand type(s) for %s: '%s' and '%s'", op, ct__type_name(a), ct__type_name(b));
    bool ints = a->t != CV_FLOAT && b->t != CV_FLOAT;
    if (!strcmp(op, "/")) {
        if (ct__num(b) == 0) ct__fail(c, at, "division by zero");
        return ct__mk_float(c, ct__num(a) / ct__num(b));
    }
    if (ints) {
        /* Python's ints do not overflow; past 64 bits peftd refuses rather than wrap */
        long long x = ct__inum(a), y = ct__inum(b), r = 0;
        bool ovf = false;
        if (!strcmp(op, "+")) ovf = __builtin_add_overflow(x, y, &r);
        else if (!strcmp(op, "-")) ovf = __builtin_sub_overflow(x, y, &r);
        else if (!strcmp(op, "*")) ovf = __builtin_mul_overflow(x, y, &r);
        if (ovf) ct__fail(c, at, "integer overflow in %s: past 64 bits", op);
        if (!strcmp(op, "+") || !strcmp(op, "-") || !strcmp(op, "*")) return ct__mk_int(c, r);
        if (!strcmp(op, "//") || !strcmp(op, "%")) {
            if (y == 0) ct__fail(c, at, "integer division or modulo by zero");
            if (x == LLONG_MIN && y == -1) ct__fail(c, at, "integer overflow in %s: past 64 bits", op);
            long long q = x / y, r = x % y;
            if (r != 0 && ((r < 0) != (y < 0))) {
                q--;
                r += y;
            }
            return ct__mk_int(c, op[0] == '%' ? r : q);
        }
        if (!strcmp(op, "**")) {
            if (y < 0) return ct__mk_float(c, pow((double)x, (double)y));
            if (x == 0 || x == 1) return ct__mk_int(c, y == 0 ? 1 : x);
            if (x == -1) return ct__mk_int(c, y % 2 ? -1 : 1);
            r = 1; /* |x| >= 2 overflows within 63 steps */
            for (long long i = 0; i < y; i++)
                if (__builtin_mul_overflow(r, x, &r)) ct__fail(c, at, "integer overflow in **: past 64 bits");
            return ct__mk_int(c, r);
        }
    }
    double x = ct__num(a), y = ct__num(b);
    if (!strcmp(op, "+")) return ct__mk_float(c, x + y);
    if (!strcmp(op, "-")) return ct__mk_float(c, x - y);
    if (!strcmp(op, "*")) return ct__mk_float(c, x * y);
    if (!strcmp(op, "**")) return ct__mk_float(c, pow(x, y));
    if (y == 0) ct__fail(c, at, "float division or modulo by zero");
    double q = floor(x / y);
    return ct__mk_float(c, op[0] == '%' ? x - q * y : q);
}

cv *ct__length_of(ct_ctx *c, const ct_node *at, const cv *v) {
    switch (v->t) {
    case CV_STR: return ct__mk_int(c, (long long)ct__u8_len(v->u.s.p, v->u.s.n));
    case CV_LIST:
        if (v->u.l.kind == CL_GEN) ct__fail(c, at, "object of type 'generator' has no len()");
        return ct__mk_int(c, (long long)v->u.l.n);
    case CV_DICT: return ct__mk_int(c, (long long)v->u.d.n);
    case CV_UNDEF: return ct__mk_int(c, 0);
    default: ct__fail(c, at, "object of type '%s' has no len()", ct__type_name(v));
    }
}

/* Iterating: lists, dict keys, string characters; undefined iterates as empty. */
cv *ct__as_list(ct_ctx *c, const ct_node *at, cv *v) {
    if (v->t == CV_LIST) return v;
    if (v->t == CV_UNDEF || v->t == CV_NONE) {
        if (v->t == CV_NONE) ct__fail(c, at, "'NoneType' object is not iterable");
        return ct__mk_list(c, 0);
    }
    if (v->t == CV_DICT) {
        cv *l = ct__mk_list(c, v->u.d.n);
        for (size_t i = 0; i < v->u.d.n; i++) l->u.l.items[i] = v->u.d.keys[i];
        return l;
    }
    if (v->t == CV_STR) {
        size_t n = ct__u8_len(v->u.s.p, v->u.s.n);
        cv *l = ct__mk_list(c, n);
        for (size_t i = 0; i < n; i++) {
            size_t a = ct__u8_off(v->u.s.p, v->u.s.n, i), b = ct__u8_off(v->u.s.p, v->u.s.n, i + 1);
            l->u.l.items[i] = ct__mk_str(c, v->u.s.p + a, b - a);
        }
        return l;
    }
    ct__fail(c, at, "'%s' object is not iterable", ct__type_name(v));
}
