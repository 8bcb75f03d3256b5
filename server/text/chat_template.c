/* server/text/chat_template.c — loading a chat template (tokenizer_config.json or an
 * override file), the Jinja lexer (with HF's trim_blocks + lstrip_blocks whitespace rules,
 * exactly as jinja2's lexer applies them) and the parser that turns the template into the
 * AST of chat_template_internal.h. Rendering is in chat_template_eval.c.
 */
#include <ctype.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/status.h"
#include "server/text/chat_template_internal.h"

/* ---- arena ---- */

struct ct_block {
    ct_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

#define CT_BLOCK_MIN (64 * 1024) /* most templates and renders fit in one or two blocks */

void *ct_arena_alloc(ct_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    ct_block *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > CT_BLOCK_MIN ? n : CT_BLOCK_MIN;
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
        a->total += cap;
    }
    void *p = b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

void ct_arena_free(ct_arena *a) {
    for (ct_block *b = a->head, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    a->head = NULL;
    a->total = 0;
}

/* ---- lexer ---- */

typedef enum {
    TK_EOF, TK_TEXT, TK_VAR_BEGIN, TK_VAR_END, TK_BLOCK_BEGIN, TK_BLOCK_END,
    TK_NAME, TK_STR, TK_INT, TK_FLOAT, TK_OP,
} tk_type;

typedef struct {
    tk_type t;
    const char *s; /* TEXT, NAME, STR (unescaped), OP */
    size_t n;
    long long i;
    double f;
    int line;
} ct_tok;

typedef struct {
    ct_arena *arena;
    jmp_buf jb;
    char *err;
    size_t errlen;
    ct_tok *toks;
    size_t n_toks, cap_toks, pos;
} ct_parser;

__attribute__((noreturn, format(printf, 3, 4)))
static void ct_fail(ct_parser *p, int line, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(p->err, p->errlen, "chat template line %d: %s", line, msg);
    longjmp(p->jb, 1);
}

static void *ct_alloc(ct_parser *p, size_t n) {
    void *v = ct_arena_alloc(p->arena, n);
    if (!v) {
        snprintf(p->err, p->errlen, "out of memory");
        longjmp(p->jb, 2);
    }
    return v;
}

static char *ct_strndup(ct_parser *p, const char *s, size_t n) {
    char *d = ct_alloc(p, n + 1);
    memcpy(d, s, n);
    return d;
}

static void ct_emit(ct_parser *p, tk_type t, const char *s, size_t n, int line) {
    if (p->n_toks == p->cap_toks) {
        size_t cap = p->cap_toks ? 2 * p->cap_toks : 256;
        ct_tok *nt = ct_alloc(p, cap * sizeof *nt);
        if (p->n_toks) memcpy(nt, p->toks, p->n_toks * sizeof *nt);
        p->toks = nt;
        p->cap_toks = cap;
    }
    p->toks[p->n_toks++] = (ct_tok){.t = t, .s = s, .n = n, .line = line};
}

static int ct_count_lines(const char *s, size_t n) {
    int k = 0;
    for (size_t i = 0; i < n; i++) k += s[i] == '\n';
    return k;
}

/* Python's \s for the ASCII range (what jinja2's regexes see in templates). */
static bool ct_isspace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static void ct_put_utf8(char *out, size_t *n, uint32_t cp) {
    if (cp < 0x80) out[(*n)++] = (char)cp;
    else if (cp < 0x800) {
        out[(*n)++] = (char)(0xC0 | (cp >> 6));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out[(*n)++] = (char)(0xE0 | (cp >> 12));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        out[(*n)++] = (char)(0xF0 | (cp >> 18));
        out[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    }
}

static int ct_hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A string literal starting at s[0] (the quote): unescaped as Python's unicode-escape
 * does (jinja2 decodes literals that way); returns the length consumed. */
static size_t ct_lex_string(ct_parser *p, const char *s, size_t avail, int line) {
    char q = s[0];
    size_t i = 1;
    char *out = ct_alloc(p, avail + 1);
    size_t n = 0;
    for (;;) {
        if (i >= avail) ct_fail(p, line, "unterminated string literal");
        char c = s[i];
        if (c == q) break;
        if (c != '\\') {
            out[n++] = c;
            i++;
            continue;
        }
        if (i + 1 >= avail) ct_fail(p, line, "unterminated string literal");
        char e = s[i + 1];
        i += 2;
        switch (e) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case '\\': out[n++] = '\\'; break;
        case '\'': out[n++] = '\''; break;
        case '"': out[n++] = '"'; break;
        case 'a': out[n++] = '\a'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'v': out[n++] = '\v'; break;
        case '\n': break; /* line continuation */
        case 'x': case 'u': case 'U': {
            int digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            uint32_t cp = 0;
            for (int k = 0; k < digits; k++) {
                int h = i + (size_t)k < avail ? ct_hexval(s[i + (size_t)k]) : -1;
                if (h < 0) ct_fail(p, line, "truncated \\%c escape in a string literal", e);
                cp = cp * 16 + (uint32_t)h;
            }
            i += (size_t)digits;
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                ct_fail(p, line, "invalid code point in a string literal");
            ct_put_utf8(out, &n, cp);
            break;
        }
        default:
            if (e >= '0' && e <= '7') {
                uint32_t cp = (uint32_t)(e - '0');
                for (int k = 0; k < 2 && i < avail && s[i] >= '0' && s[i] <= '7'; k++) cp = cp * 8 + (uint32_t)(s[i++] - '0');
                ct_put_utf8(out, &n, cp);
            } else { /* unknown escapes stay as written */
                out[n++] = '\\';
                out[n++] = e;
            }
        }
    }
    ct_emit(p, TK_STR, out, n, line);
    return i + 1;
}

/* The inside of a {{ }} or {% %} tag from s[*i]; stops after the closing delimiter.
 * Returns whether the closing delimiter ended in a newline (jinja2's line_starting). */
static bool ct_lex_tag(ct_parser *p, const char *s, size_t len, size_t *pi, int *line, bool block) {
    size_t i = *pi;
    int depth = 0; /* open brackets: a '}' inside them is not the end of the tag */
    for (;;) {
        while (i < len && ct_isspace(s[i])) {
            if (s[i] == '\n') (*line)++;
            i++;
        }
        if (i >= len) ct_fail(p, *line, "unexpected end of template inside a %s tag", block ? "{% %}" : "{{ }}");
        char c = s[i];
        char close = block ? '%' : '}';
        if (depth == 0) {
            size_t k = i;
            char sign = 0;
            if ((c == '-' || (block && c == '+')) && k + 2 < len && s[k + 1] == close && s[k + 2] == '}') {
                sign = c;
                k++;
            }
            if (k + 1 < len && s[k] == close && s[k + 1] == '}') {
                ct_emit(p, block ? TK_BLOCK_END : TK_VAR_END, NULL, 0, *line);
                k += 2;
                bool nl = false;
                if (sign == '-') {
                    while (k < len && ct_isspace(s[k])) {
                        nl = s[k] == '\n';
                        if (s[k] == '\n') (*line)++;
                        k++;
                    }
                } else if (block && sign != '+' && k < len && s[k] == '\n') { /* trim_blocks */
                    k++;
                    (*line)++;
                    nl = true;
                }
                *pi = k;
                return nl;
            }
        }
        if (c == '\'' || c == '"') {
            i += ct_lex_string(p, s + i, len - i, *line);
            continue;
        }
        if (isdigit((unsigned char)c)) {
            size_t k = i;
            while (k < len && (isdigit((unsigned char)s[k]) || s[k] == '_')) k++;
            bool is_float = false;
            if (k + 1 < len && s[k] == '.' && isdigit((unsigned char)s[k + 1])) {
                is_float = true;
                k++;
                while (k < len && (isdigit((unsigned char)s[k]) || s[k] == '_')) k++;
            }
            if (k < len && (s[k] == 'e' || s[k] == 'E')) {
                size_t m = k + 1;
                if (m < len && (s[m] == '+' || s[m] == '-')) m++;
                if (m < len && isdigit((unsigned char)s[m])) {
                    is_float = true;
                    k = m;
                    while (k < len && isdigit((unsigned char)s[k])) k++;
                }
            }
            char buf[64];
            size_t bn = 0;
            for (size_t m = i; m < k && bn + 1 < sizeof buf; m++)
                if (s[m] != '_') buf[bn++] = s[m];
            buf[bn] = 0;
            ct_emit(p, is_float ? TK_FLOAT : TK_INT, NULL, 0, *line);
            ct_tok *t = &p->toks[p->n_toks - 1];
            errno = 0;
            if (is_float) t->f = strtod(buf, NULL);
            else t->i = strtoll(buf, NULL, 10);
            if (errno == ERANGE) ct_fail(p, *line, "number literal out of range");
            i = k;
            continue;
        }
        if (isalpha((unsigned char)c) || c == '_') {
            size_t k = i;
            while (k < len && (isalnum((unsigned char)s[k]) || s[k] == '_')) k++;
            ct_emit(p, TK_NAME, s + i, k - i, *line);
            i = k;
            continue;
        }
        static const char *const ops2[] = {"**", "//", "==", "!=", "<=", ">="};
        size_t opn = 0;
        for (size_t m = 0; m < sizeof ops2 / sizeof ops2[0]; m++)
            if (i + 1 < len && s[i] == ops2[m][0] && s[i + 1] == ops2[m][1]) opn = 2;
        if (!opn && strchr("+-*/%~<>()[]{},.:|=", c)) opn = 1;
        if (!opn) ct_fail(p, *line, "unexpected character '%c' in a tag", c);
        if (c == '(' || c == '[' || c == '{') depth++;
        if ((c == ')' || c == ']' || c == '}') && depth > 0) depth--;
        ct_emit(p, TK_OP, s + i, opn, *line);
        i += opn;
    }
}

static void ct_lex(ct_parser *p, const char *s, size_t len) {
    size_t i = 0;
    int line = 1;
    bool line_starting = true;
    while (i < len) {
        size_t j = i;
        while (j + 1 < len && !(s[j] == '{' && (s[j + 1] == '{' || s[j + 1] == '%' || s[j + 1] == '#'))) j++;
        if (j + 1 >= len) j = len;
        size_t tn = j - i;
        if (j < len) {
            char kind = s[j + 1];
            char sign = j + 2 < len && (s[j + 2] == '-' || s[j + 2] == '+') ? s[j + 2] : 0;
            if (sign == '-') {
                while (tn > 0 && ct_isspace(s[i + tn - 1])) tn--;
            } else if (sign != '+' && kind != '{') { /* lstrip_blocks */
                size_t l_pos = 0;
                for (size_t k = tn; k > 0; k--)
                    if (s[i + k - 1] == '\n') {
                        l_pos = k;
                        break;
                    }
                if (l_pos > 0 || line_starting) {
                    bool ws = l_pos < tn;
                    for (size_t k = l_pos; k < tn; k++) ws = ws && ct_isspace(s[i + k]);
                    if (ws) tn = l_pos;
                }
            }
            if (tn) ct_emit(p, TK_TEXT, s + i, tn, line);
            line += ct_count_lines(s + i, j - i);
            size_t k = j + 2 + (sign ? 1 : 0);
            if (kind == '#') {
                /* comment: up to "#}" — "-#}" strips what follows, "#}\n" eats the newline */
                size_t e = k;
                while (e + 1 < len && !(s[e] == '#' && s[e + 1] == '}')) e++;
                if (e + 1 >= len) ct_fail(p, line, "missing end of comment tag");
                line += ct_count_lines(s + k, e - k);
                char esign = e > k && (s[e - 1] == '-' || s[e - 1] == '+') ? s[e - 1] : 0;
                k = e + 2;
                line_starting = false;
                if (esign == '-') {
                    while (k < len && ct_isspace(s[k])) {
                        line_starting = s[k] == '\n';
                        line += s[k] == '\n';
                        k++;
                    }
                } else if (esign != '+' && k < len && s[k] == '\n') {
                    k++;
                    line++;
                    line_starting = true;
                }
                i = k;
                continue;
            }
            bool block = kind == '%';
            ct_emit(p, block ? TK_BLOCK_BEGIN : TK_VAR_BEGIN, NULL, 0, line);
            line_starting = ct_lex_tag(p, s, len, &k, &line, block);
            i = k;
        } else {
            if (tn) ct_emit(p, TK_TEXT, s + i, tn, line);
            i = len;
        }
    }
    ct_emit(p, TK_EOF, NULL, 0, line);
}

/* ---- parser ---- */

static ct_tok *cur(ct_parser *p) { return &p->toks[p->pos]; }
static ct_tok *peek(ct_parser *p, size_t k) {
    size_t i = p->pos + k;
    return &p->toks[i < p->n_toks ? i : p->n_toks - 1];
}
static bool is_op(const ct_tok *t, const char *op) { return t->t == TK_OP && t->n == strlen(op) && !memcmp(t->s, op, t->n); }
static bool is_name(const ct_tok *t, const char *nm) {
    return t->t == TK_NAME && t->n == strlen(nm) && !memcmp(t->s, nm, t->n);
}
static const char *tok_desc(const ct_tok *t, char *buf, size_t n) {
    switch (t->t) {
    case TK_EOF: return "end of template";
    case TK_TEXT: return "text";
    case TK_VAR_BEGIN: return "'{{'";
    case TK_VAR_END: return "'}}'";
    case TK_BLOCK_BEGIN: return "'{%'";
    case TK_BLOCK_END: return "'%}'";
    case TK_STR: return "a string";
    case TK_INT: case TK_FLOAT: return "a number";
    default: snprintf(buf, n, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s); return buf;
    }
}
static void expect_op(ct_parser *p, const char *op) {
    char b[64];
    if (!is_op(cur(p), op)) ct_fail(p, cur(p)->line, "expected '%s', got %s", op, tok_desc(cur(p), b, sizeof b));
    p->pos++;
}
static void expect_t(ct_parser *p, tk_type t, const char *what) {
    char b[64];
    if (cur(p)->t != t) ct_fail(p, cur(p)->line, "expected %s, got %s", what, tok_desc(cur(p), b, sizeof b));
    p->pos++;
}
static const char *expect_name(ct_parser *p) {
    char b[64];
    ct_tok *t = cur(p);
    if (t->t != TK_NAME) ct_fail(p, t->line, "expected a name, got %s", tok_desc(t, b, sizeof b));
    p->pos++;
    return ct_strndup(p, t->s, t->n);
}

static ct_node *node(ct_parser *p, ct_kind k, int line) {
    ct_node *n = ct_alloc(p, sizeof *n);
    n->k = k;
    n->line = line;
    return n;
}

/* A growable list whose storage lives in the arena (the old array is simply left). */
static void list_push(ct_parser *p, ct_list *l, ct_node *n, int *cap) {
    if (l->n == *cap) {
        int c = *cap ? 2 * *cap : 4;
        ct_node **v = ct_alloc(p, (size_t)c * sizeof *v);
        if (l->n) memcpy(v, l->v, (size_t)l->n * sizeof *v);
        l->v = v;
        *cap = c;
    }
    l->v[l->n++] = n;
}

static cv *const_val(ct_parser *p, cv_type t) {
    cv *v = ct_alloc(p, sizeof *v);
    v->t = t;
    return v;
}

static ct_node *parse_expr(ct_parser *p, bool with_cond);
static ct_node *parse_unary(ct_parser *p, bool with_filter);

/* (a, b=c, ...) after the '(' was seen: positional args into n->args, keywords into
 * n->kwargs/kwnames. */
static void parse_call_args(ct_parser *p, ct_node *n) {
    int cap = 0, kcap = 0, kn = 0;
    expect_op(p, "(");
    const char **names = NULL;
    while (!is_op(cur(p), ")")) {
        if (n->args.n || n->kwargs.n) expect_op(p, ",");
        if (is_op(cur(p), ")")) break; /* trailing comma */
        if (cur(p)->t == TK_NAME && is_op(peek(p, 1), "=")) {
            const char *nm = expect_name(p);
            p->pos++;
            int before = kcap;
            list_push(p, &n->kwargs, parse_expr(p, true), &kcap);
            if (kcap != before || !names) {
                const char **nn = ct_alloc(p, (size_t)kcap * sizeof *nn);
                if (kn) memcpy(nn, names, (size_t)kn * sizeof *nn);
                names = nn;
            }
            names[kn++] = nm;
        } else {
            if (n->kwargs.n) ct_fail(p, cur(p)->line, "positional argument after a keyword argument");
            list_push(p, &n->args, parse_expr(p, true), &cap);
        }
    }
    n->kwnames = names;
    expect_op(p, ")");
}

static ct_node *parse_tuple_expr(ct_parser *p, bool with_cond) {
    int line = cur(p)->line;
    ct_node *first = parse_expr(p, with_cond);
    if (!is_op(cur(p), ",")) return first;
    ct_node *l = node(p, CN_LIST, line);
    int cap = 0;
    list_push(p, &l->args, first, &cap);
    while (is_op(cur(p), ",")) {
        p->pos++;
        if (cur(p)->t == TK_VAR_END || cur(p)->t == TK_BLOCK_END || is_op(cur(p), ")")) break;
        list_push(p, &l->args, parse_expr(p, with_cond), &cap);
    }
    return l;
}

static ct_node *parse_primary(ct_parser *p) {
    ct_tok *t = cur(p);
    char b[64];
    ct_node *n = node(p, CN_CONST, t->line);
    switch (t->t) {
    case TK_NAME:
        p->pos++;
        if (is_name(t, "true") || is_name(t, "True") || is_name(t, "false") || is_name(t, "False")) {
            n->value = const_val(p, CV_BOOL);
            n->value->u.b = t->s[0] == 't' || t->s[0] == 'T';
        } else if (is_name(t, "none") || is_name(t, "None")) {
            n->value = const_val(p, CV_NONE);
        } else {
            n->k = CN_NAME;
            n->name = ct_strndup(p, t->s, t->n);
        }
        return n;
    case TK_STR: {
        /* adjacent literals concatenate, as in Python */
        size_t total = 0, k = 0;
        while (peek(p, k)->t == TK_STR) total += peek(p, k++)->n;
        char *s = ct_alloc(p, total + 1);
        size_t off = 0;
        while (cur(p)->t == TK_STR) {
            memcpy(s + off, cur(p)->s, cur(p)->n);
            off += cur(p)->n;
            p->pos++;
        }
        n->value = const_val(p, CV_STR);
        n->value->u.s.p = s;
        n->value->u.s.n = total;
        return n;
    }
    case TK_INT:
        p->pos++;
        n->value = const_val(p, CV_INT);
        n->value->u.i = t->i;
        return n;
    case TK_FLOAT:
        p->pos++;
        n->value = const_val(p, CV_FLOAT);
        n->value->u.f = t->f;
        return n;
    case TK_OP:
        if (is_op(t, "(")) {
            p->pos++;
            if (is_op(cur(p), ")")) { /* () is an empty tuple */
                p->pos++;
                n->k = CN_LIST;
                return n;
            }
            ct_node *e = parse_tuple_expr(p, true);
            expect_op(p, ")");
            return e;
        }
        if (is_op(t, "[")) {
            p->pos++;
            n->k = CN_LIST;
            int cap = 0;
            while (!is_op(cur(p), "]")) {
                if (n->args.n) expect_op(p, ",");
                if (is_op(cur(p), "]")) break;
                list_push(p, &n->args, parse_expr(p, true), &cap);
            }
            p->pos++;
            return n;
        }
        if (is_op(t, "{")) {
            p->pos++;
            n->k = CN_DICT;
            int cap = 0, vcap = 0;
            while (!is_op(cur(p), "}")) {
                if (n->args.n) expect_op(p, ",");
                if (is_op(cur(p), "}")) break;
                list_push(p, &n->args, parse_expr(p, true), &cap);
                expect_op(p, ":");
                list_push(p, &n->kwargs, parse_expr(p, true), &vcap);
            }
            p->pos++;
            return n;
        }
        break;
    default:
        break;
    }
    ct_fail(p, t->line, "unexpected %s in an expression", tok_desc(t, b, sizeof b));
}

static ct_node *parse_postfix(ct_parser *p, ct_node *n) {
    for (;;) {
        ct_tok *t = cur(p);
        if (is_op(t, ".")) {
            p->pos++;
            ct_tok *a = cur(p);
            if (a->t == TK_INT) { /* x.0 is x[0] */
                p->pos++;
                ct_node *it = node(p, CN_ITEM, a->line), *k = node(p, CN_CONST, a->line);
                k->value = const_val(p, CV_INT);
                k->value->u.i = a->i;
                it->a = n;
                it->b = k;
                n = it;
                continue;
            }
            ct_node *at = node(p, CN_ATTR, t->line);
            at->a = n;
            at->name = expect_name(p);
            n = at;
        } else if (is_op(t, "[")) {
            p->pos++;
            ct_node *lo = NULL, *hi = NULL, *st = NULL;
            bool slice = false;
            if (!is_op(cur(p), ":")) lo = parse_expr(p, true);
            if (is_op(cur(p), ":")) {
                slice = true;
                p->pos++;
                if (!is_op(cur(p), "]") && !is_op(cur(p), ":")) hi = parse_expr(p, true);
                if (is_op(cur(p), ":")) {
                    p->pos++;
                    if (!is_op(cur(p), "]")) st = parse_expr(p, true);
                }
            }
            expect_op(p, "]");
            ct_node *it = node(p, slice ? CN_SLICE : CN_ITEM, t->line);
            it->a = n;
            it->b = lo;
            it->c = hi;
            it->d = st;
            n = it;
        } else if (is_op(t, "(")) {
            ct_node *c = node(p, CN_CALL, t->line);
            c->a = n;
            parse_call_args(p, c);
            n = c;
        } else {
            return n;
        }
    }
}

static ct_node *parse_filter_expr(ct_parser *p, ct_node *n) {
    for (;;) {
        ct_tok *t = cur(p);
        if (is_op(t, "|")) {
            p->pos++;
            ct_node *f = node(p, CN_FILTER, t->line);
            f->a = n;
            f->name = expect_name(p);
            if (is_op(cur(p), "(")) parse_call_args(p, f);
            n = f;
        } else if (is_name(t, "is")) {
            p->pos++;
            ct_node *f = node(p, CN_TEST, t->line);
            f->a = n;
            if (is_name(cur(p), "not")) {
                f->negate = true;
                p->pos++;
            }
            f->name = expect_name(p);
            ct_tok *nx = cur(p);
            if (is_op(nx, "(")) {
                parse_call_args(p, f);
            } else if ((nx->t == TK_NAME || nx->t == TK_STR || nx->t == TK_INT || nx->t == TK_FLOAT ||
                        is_op(nx, "[") || is_op(nx, "{")) &&
                       !is_name(nx, "else") && !is_name(nx, "or") && !is_name(nx, "and") &&
                       !is_name(nx, "if") && !is_name(nx, "in") && !is_name(nx, "not")) {
                int cap = 0;
                list_push(p, &f->args, parse_postfix(p, parse_primary(p)), &cap);
            }
            n = f;
        } else if (is_op(t, "(")) {
            ct_node *c = node(p, CN_CALL, t->line);
            c->a = n;
            parse_call_args(p, c);
            n = c;
        } else {
            return n;
        }
    }
}

static ct_node *parse_unary(ct_parser *p, bool with_filter) {
    ct_tok *t = cur(p);
    ct_node *n;
    if (is_op(t, "-") || is_op(t, "+")) {
        p->pos++;
        n = node(p, is_op(t, "-") ? CN_NEG : CN_POS, t->line);
        n->a = parse_unary(p, false);
    } else {
        n = parse_primary(p);
    }
    n = parse_postfix(p, n);
    if (with_filter) n = parse_filter_expr(p, n);
    return n;
}

static ct_node *binop(ct_parser *p, const char *op, ct_node *l, ct_node *r, int line) {
    ct_node *n = node(p, CN_BIN, line);
    n->name = op;
    n->a = l;
    n->b = r;
    return n;
}

static ct_node *parse_pow(ct_parser *p) {
    ct_node *l = parse_unary(p, true);
    while (is_op(cur(p), "**")) {
        int line = cur(p)->line;
        p->pos++;
        l = binop(p, "**", l, parse_unary(p, true), line);
    }
    return l;
}

static ct_node *parse_math2(ct_parser *p) {
    ct_node *l = parse_pow(p);
    for (;;) {
        ct_tok *t = cur(p);
        const char *op = is_op(t, "*") ? "*" : is_op(t, "/") ? "/" : is_op(t, "//") ? "//" : is_op(t, "%") ? "%" : NULL;
        if (!op) return l;
        p->pos++;
        l = binop(p, op, l, parse_pow(p), t->line);
    }
}

static ct_node *parse_concat(ct_parser *p) {
    ct_node *l = parse_math2(p);
    while (is_op(cur(p), "~")) {
        int line = cur(p)->line;
        p->pos++;
        l = binop(p, "~", l, parse_math2(p), line);
    }
    return l;
}

static ct_node *parse_math1(ct_parser *p) {
    ct_node *l = parse_concat(p);
    for (;;) {
        ct_tok *t = cur(p);
        const char *op = is_op(t, "+") ? "+" : is_op(t, "-") ? "-" : NULL;
        if (!op) return l;
        p->pos++;
        l = binop(p, op, l, parse_concat(p), t->line);
    }
}

static ct_node *parse_compare(ct_parser *p) {
    int line = cur(p)->line;
    ct_node *first = parse_math1(p);
    ct_node *n = NULL;
    int cap = 0, ncap = 0;
    for (;;) {
        ct_tok *t = cur(p);
        const char *op = NULL;
        static const char *const ops[] = {"==", "!=", "<", "<=", ">", ">="};
        for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
            if (is_op(t, ops[i])) op = ops[i];
        if (!op && is_name(t, "in")) op = "in";
        if (!op && is_name(t, "not") && is_name(peek(p, 1), "in")) {
            op = "notin";
            p->pos++;
        }
        if (!op) break;
        p->pos++;
        if (!n) {
            n = node(p, CN_CMP, line);
            n->a = first;
        }
        if (n->args.n == ncap) {
            ncap = ncap ? 2 * ncap : 4;
            const char **nn = ct_alloc(p, (size_t)ncap * sizeof *nn);
            if (n->args.n) memcpy(nn, n->kwnames, (size_t)n->args.n * sizeof *nn);
            n->kwnames = nn;
        }
        n->kwnames[n->args.n] = op;
        list_push(p, &n->args, parse_math1(p), &cap);
    }
    return n ? n : first;
}

static ct_node *parse_not(ct_parser *p) {
    if (is_name(cur(p), "not")) {
        ct_node *n = node(p, CN_NOT, cur(p)->line);
        p->pos++;
        n->a = parse_not(p);
        return n;
    }
    return parse_compare(p);
}

static ct_node *parse_and(ct_parser *p) {
    ct_node *l = parse_not(p);
    while (is_name(cur(p), "and")) {
        ct_node *n = node(p, CN_AND, cur(p)->line);
        p->pos++;
        n->a = l;
        n->b = parse_not(p);
        l = n;
    }
    return l;
}

static ct_node *parse_or(ct_parser *p) {
    ct_node *l = parse_and(p);
    while (is_name(cur(p), "or")) {
        ct_node *n = node(p, CN_OR, cur(p)->line);
        p->pos++;
        n->a = l;
        n->b = parse_and(p);
        l = n;
    }
    return l;
}

static ct_node *parse_expr(ct_parser *p, bool with_cond) {
    ct_node *e = parse_or(p);
    while (with_cond && is_name(cur(p), "if")) {
        ct_node *c = node(p, CN_COND, cur(p)->line);
        p->pos++;
        c->a = parse_or(p);
        c->b = e;
        if (is_name(cur(p), "else")) {
            p->pos++;
            c->c = parse_expr(p, true);
        }
        e = c;
    }
    return e;
}

/* ---- statements ---- */

static ct_list parse_body(ct_parser *p, const char *const *ends, const char **which);

static void end_tag(ct_parser *p) { expect_t(p, TK_BLOCK_END, "'%}'"); }

/* Consumes "{% name" of an end/else tag the body stopped at (parse_body leaves it). */
static void take_tag(ct_parser *p, const char *nm) {
    expect_t(p, TK_BLOCK_BEGIN, "'{%'");
    if (!is_name(cur(p), nm)) ct_fail(p, cur(p)->line, "expected '%s'", nm);
    p->pos++;
}

static ct_node *parse_if(ct_parser *p, int line) {
    ct_node *n = node(p, CN_IF, line);
    n->a = parse_tuple_expr(p, true);
    end_tag(p);
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    const char *w = NULL;
    n->body = parse_body(p, ends, &w);
    if (!strcmp(w, "elif")) {
        take_tag(p, "elif");
        int cap = 0;
        list_push(p, &n->orelse, parse_if(p, line), &cap);
        return n;
    }
    if (!strcmp(w, "else")) {
        take_tag(p, "else");
        end_tag(p);
        static const char *const e2[] = {"endif", NULL};
        n->orelse = parse_body(p, e2, &w);
    }
    take_tag(p, "endif");
    end_tag(p);
    return n;
}

static ct_node *parse_for(ct_parser *p, int line) {
    ct_node *n = node(p, CN_FOR, line);
    int cap = 0;
    bool paren = is_op(cur(p), "(");
    if (paren) p->pos++;
    for (;;) {
        ct_node *t = node(p, CN_NAME, cur(p)->line);
        t->name = expect_name(p);
        list_push(p, &n->args, t, &cap);
        if (!is_op(cur(p), ",")) break;
        p->pos++;
    }
    if (paren) expect_op(p, ")");
    if (!is_name(cur(p), "in")) ct_fail(p, cur(p)->line, "expected 'in' in a for loop");
    p->pos++;
    n->a = parse_tuple_expr(p, false);
    if (is_name(cur(p), "if")) {
        p->pos++;
        n->b = parse_expr(p, true);
    }
    if (is_name(cur(p), "recursive")) ct_fail(p, cur(p)->line, "recursive loops are not supported");
    end_tag(p);
    static const char *const ends[] = {"else", "endfor", NULL};
    const char *w = NULL;
    n->body = parse_body(p, ends, &w);
    if (!strcmp(w, "else")) {
        take_tag(p, "else");
        end_tag(p);
        static const char *const e2[] = {"endfor", NULL};
        n->orelse = parse_body(p, e2, &w);
    }
    take_tag(p, "endfor");
    end_tag(p);
    return n;
}

static ct_node *parse_set(ct_parser *p, int line) {
    ct_node *n = node(p, CN_SET, line);
    n->name = expect_name(p);
    if (is_op(cur(p), ".")) {
        p->pos++;
        n->attr = expect_name(p);
    } else if (is_op(cur(p), ",")) { /* set a, b = ... */
        int cap = 0;
        ct_node *t = node(p, CN_NAME, line);
        t->name = n->name;
        list_push(p, &n->args, t, &cap);
        while (is_op(cur(p), ",")) {
            p->pos++;
            t = node(p, CN_NAME, cur(p)->line);
            t->name = expect_name(p);
            list_push(p, &n->args, t, &cap);
        }
    }
    if (cur(p)->t == TK_BLOCK_END && !n->attr && !n->args.n) { /* {% set x %}...{% endset %} */
        end_tag(p);
        n->k = CN_SET_BLOCK;
        static const char *const ends[] = {"endset", NULL};
        const char *w = NULL;
        n->body = parse_body(p, ends, &w);
        take_tag(p, "endset");
        end_tag(p);
        return n;
    }
    expect_op(p, "=");
    n->a = parse_tuple_expr(p, true);
    end_tag(p);
    return n;
}

static ct_node *parse_macro(ct_parser *p, int line) {
    ct_node *n = node(p, CN_MACRO, line);
    n->name = expect_name(p);
    expect_op(p, "(");
    int cap = 0, dcap = 0;
    while (!is_op(cur(p), ")")) {
        if (n->args.n) expect_op(p, ",");
        if (is_op(cur(p), ")")) break;
        ct_node *a = node(p, CN_NAME, cur(p)->line);
        a->name = expect_name(p);
        list_push(p, &n->args, a, &cap);
        ct_node *def = NULL;
        if (is_op(cur(p), "=")) {
            p->pos++;
            def = parse_expr(p, true);
        } else if (n->kwargs.n && n->kwargs.v[n->kwargs.n - 1]) {
            ct_fail(p, a->line, "macro parameter without a default after one with a default");
        }
        list_push(p, &n->kwargs, def, &dcap);
    }
    p->pos++;
    end_tag(p);
    static const char *const ends[] = {"endmacro", NULL};
    const char *w = NULL;
    n->body = parse_body(p, ends, &w);
    take_tag(p, "endmacro");
    if (cur(p)->t == TK_NAME) p->pos++; /* {% endmacro name %} */
    end_tag(p);
    return n;
}

static ct_node *parse_stmt(ct_parser *p) {
    expect_t(p, TK_BLOCK_BEGIN, "'{%'");
    ct_tok *t = cur(p);
    char b[64];
    if (t->t != TK_NAME) ct_fail(p, t->line, "expected a statement, got %s", tok_desc(t, b, sizeof b));
    p->pos++;
    if (is_name(t, "if")) return parse_if(p, t->line);
    if (is_name(t, "for")) return parse_for(p, t->line);
    if (is_name(t, "set")) return parse_set(p, t->line);
    if (is_name(t, "macro")) return parse_macro(p, t->line);
    if (is_name(t, "break") || is_name(t, "continue")) {
        ct_node *n = node(p, is_name(t, "break") ? CN_BREAK : CN_CONTINUE, t->line);
        end_tag(p);
        return n;
    }
    if (is_name(t, "generation")) {
        ct_node *n = node(p, CN_BLOCK, t->line);
        end_tag(p);
        static const char *const ends[] = {"endgeneration", NULL};
        const char *w = NULL;
        n->body = parse_body(p, ends, &w);
        take_tag(p, "endgeneration");
        end_tag(p);
        return n;
    }
    ct_fail(p, t->line, "unsupported tag '%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s);
}

/* Statements up to one of ends (left unconsumed: "{%" then the name); *which = the end
 * found. ends == NULL: up to the end of the template. */
static ct_list parse_body(ct_parser *p, const char *const *ends, const char **which) {
    ct_list body = {0};
    int cap = 0;
    int start_line = cur(p)->line;
    for (;;) {
        ct_tok *t = cur(p);
        if (t->t == TK_EOF) {
            if (ends) {
                int last = 0;
                while (ends[last + 1]) last++;
                ct_fail(p, start_line, "missing '{%% %s %%}' before the end of the template", ends[last]);
            }
            return body;
        }
        if (t->t == TK_TEXT) {
            ct_node *n = node(p, CN_TEXT, t->line);
            n->value = const_val(p, CV_STR);
            n->value->u.s.p = t->s;
            n->value->u.s.n = t->n;
            list_push(p, &body, n, &cap);
            p->pos++;
            continue;
        }
        if (t->t == TK_VAR_BEGIN) {
            p->pos++;
            ct_node *n = node(p, CN_OUTPUT, t->line);
            n->a = parse_tuple_expr(p, true);
            expect_t(p, TK_VAR_END, "'}}'");
            list_push(p, &body, n, &cap);
            continue;
        }
        if (t->t == TK_BLOCK_BEGIN) {
            ct_tok *nm = peek(p, 1);
            for (int i = 0; ends && ends[i]; i++)
                if (is_name(nm, ends[i])) {
                    *which = ends[i];
                    return body;
                }
            static const char *const stray[] = {"endif", "endfor", "else", "elif", "endset", "endmacro", "endgeneration"};
            for (size_t i = 0; i < sizeof stray / sizeof stray[0]; i++)
                if (is_name(nm, stray[i])) ct_fail(p, nm->line, "unexpected '%s'", stray[i]);
            list_push(p, &body, parse_stmt(p), &cap);
            continue;
        }
        char b[64];
        ct_fail(p, t->line, "unexpected %s", tok_desc(t, b, sizeof b));
    }
}

/* ---- public ---- */

static void ct_detect_family(chat_template *t, const char *s) {
    const char *f = "custom";
    if (strstr(s, "<|start_header_id|>")) f = "llama-3";
    else if (strstr(s, "<|im_start|>")) f = "chatml";
    else if (strstr(s, "<|user|>") && strstr(s, "<|assistant|>")) f = "zephyr";
    else if (strstr(s, "[INST]") && strstr(s, "<<SYS>>")) f = "llama-2";
    else if (strstr(s, "[INST]")) f = "mistral";
    snprintf(t->family, sizeof t->family, "%s", f);
}

int chat_template_parse(const char *src, size_t len, chat_template **out, char *err, size_t errlen) {
    *out = NULL;
    chat_template *t = calloc(1, sizeof *t);
    if (!t) return PEFTD_ENOMEM;
    ct_parser p = {.arena = &t->arena, .err = err, .errlen = errlen};
    /* jinja2 normalises newlines to \n and drops one trailing newline (keep_trailing_newline
     * is False in HF's environment). */
    char *s = ct_arena_alloc(&t->arena, len + 1);
    if (!s) {
        free(t);
        return PEFTD_ENOMEM;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;
    int jr = setjmp(p.jb);
    if (jr) {
        chat_template_free(t);
        return jr == 2 ? PEFTD_ENOMEM : PEFTD_EFORMAT;
    }
    ct_lex(&p, s, n);
    t->body = parse_body(&p, NULL, NULL);
    ct_detect_family(t, s);
    *out = t;
    return 0;
}

void chat_template_free(chat_template *t) {
    if (!t) return;
    ct_arena_free(&t->arena);
    free(t);
}

const char *chat_template_family(const chat_template *t) { return t ? t->family : "none"; }

int chat_template_render(const chat_template *t, const chat_message *msgs, int n_msgs, const chat_render_opts *opts,
                         char **out, size_t *out_len, char *err, size_t errlen) {
    chat_render_opts o = {0};
    if (opts) o = *opts;
    return ct_render(t, msgs, n_msgs, &o, out, out_len, err, errlen);
}

static int ct_read_file(const char *path, char **buf, size_t *len, char *err, size_t errlen) {
    /* 4 MiB: the largest published chat templates (tool-calling ones) are ~20 KiB. */
    const long max = 4L << 20;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return errno == ENOENT ? PEFTD_ENOTFOUND : PEFTD_EIO;
    }
    char *b = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || n > max || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        snprintf(err, errlen, "%s: unreadable or larger than 4 MiB", path);
        return PEFTD_EIO;
    }
    b = malloc((size_t)n + 1);
    if (!b) {
        fclose(f);
        return PEFTD_ENOMEM;
    }
    size_t got = fread(b, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) {
        free(b);
        snprintf(err, errlen, "%s: short read", path);
        return PEFTD_EIO;
    }
    b[n] = 0;
    *buf = b;
    *len = (size_t)n;
    return 0;
}

/* The template text of a tokenizer_config.json (NULL when it has none): a string, or HF's
 * list of {"name", "template"} from which "default" is taken. */
static int ct_from_config(const char *path, const char *text, size_t len, const char **tmpl, cJSON **root,
                          char *err, size_t errlen) {
    *tmpl = NULL;
    *root = cJSON_ParseWithLength(text, len);
    if (!*root || !cJSON_IsObject(*root)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        return PEFTD_EFORMAT;
    }
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(*root, "chat_template");
    if (!ct || cJSON_IsNull(ct)) return 0;
    if (cJSON_IsString(ct)) {
        *tmpl = ct->valuestring;
        return 0;
    }
    if (cJSON_IsArray(ct)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, ct) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
            const cJSON *tp = cJSON_GetObjectItemCaseSensitive(it, "template");
            if (!cJSON_IsString(nm) || !cJSON_IsString(tp)) {
                snprintf(err, errlen, "%s: chat_template list entries must be {\"name\", \"template\"} strings", path);
                return PEFTD_EFORMAT;
            }
            if (!strcmp(nm->valuestring, "default")) *tmpl = tp->valuestring;
        }
        return 0; /* a list without "default": no template for plain chat */
    }
    snprintf(err, errlen, "%s: chat_template must be a string or a list of named templates", path);
    return PEFTD_EFORMAT;
}

int chat_template_load(const char *model_dir, const char *override_path, chat_template **out, char *err,
                       size_t errlen) {
    *out = NULL;
    char path[4200];
    bool from_override = override_path && override_path[0];
    if (from_override) snprintf(path, sizeof path, "%s", override_path);
    else snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    char *buf = NULL;
    size_t len = 0;
    int rc = ct_read_file(path, &buf, &len, err, errlen);
    if (rc == PEFTD_ENOTFOUND && !from_override) {
        snprintf(err, errlen, "%s has no tokenizer_config.json", model_dir);
        return PEFTD_ENOTFOUND;
    }
    if (rc) return rc;
    size_t pl = strlen(path);
    bool json = pl >= 5 && !strcmp(path + pl - 5, ".json");
    cJSON *root = NULL;
    const char *tmpl = buf;
    size_t tlen = len;
    if (json) {
        rc = ct_from_config(path, buf, len, &tmpl, &root, err, errlen);
        if (!rc && !tmpl) {
            snprintf(err, errlen, "%s has no chat_template", path);
            rc = PEFTD_ENOTFOUND;
        }
        if (!rc) tlen = strlen(tmpl);
    }
    if (!rc) {
        char perr[480] = "";
        rc = chat_template_parse(tmpl, tlen, out, perr, sizeof perr);
        if (rc) snprintf(err, errlen, "%s: %s", path, perr[0] ? perr : peftd_strerror(rc));
    }
    cJSON_Delete(root);
    free(buf);
    return rc;
}
