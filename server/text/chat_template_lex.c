/* server/text/chat_template_lex.c — the Jinja lexer of chat templates: text, {{ }}, {% %}
 * and {# #} with HF's trim_blocks + lstrip_blocks whitespace rules (exactly as jinja2's
 * lexer applies them), string escapes, numbers, names and operators; and the parser's
 * error and allocation helpers. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/text/chat_template_parse.h"

__attribute__((noreturn, format(printf, 3, 4)))
void ct__parse_fail(ct_parser *p, int line, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(p->err, p->errlen, "chat template line %d: %s", line, msg);
    longjmp(p->jb, 1);
}

void *ct__parse_alloc(ct_parser *p, size_t n) {
    void *v = ct_arena_alloc(p->arena, n);
    if (!v) {
        snprintf(p->err, p->errlen, "out of memory");
        longjmp(p->jb, 2);
    }
    return v;
}

char *ct__parse_strndup(ct_parser *p, const char *s, size_t n) {
    char *d = ct__parse_alloc(p, n + 1);
    memcpy(d, s, n);
    return d;
}

static void ct_emit(ct_parser *p, tk_type t, const char *s, size_t n, int line) {
    if (p->n_toks == p->cap_toks) {
        size_t cap = p->cap_toks ? 2 * p->cap_toks : 256;
        ct_tok *nt = ct__parse_alloc(p, cap * sizeof *nt);
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
    char *out = ct__parse_alloc(p, avail + 1);
    size_t n = 0;
    for (;;) {
        if (i >= avail) ct__parse_fail(p, line, "unterminated string literal");
        char c = s[i];
        if (c == q) break;
        if (c != '\\') {
            out[n++] = c;
            i++;
            continue;
        }
        if (i + 1 >= avail) ct__parse_fail(p, line, "unterminated string literal");
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
                if (h < 0) ct__parse_fail(p, line, "truncated \\%c escape in a string literal", e);
                cp = cp * 16 + (uint32_t)h;
            }
            i += (size_t)digits;
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                ct__parse_fail(p, line, "invalid code point in a string literal");
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
        if (i >= len) ct__parse_fail(p, *line, "unexpected end of template inside a %s tag", block ? "{% %}" : "{{ }}");
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
            if (errno == ERANGE) ct__parse_fail(p, *line, "number literal out of range");
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
        if (!opn) ct__parse_fail(p, *line, "unexpected character '%c' in a tag", c);
        if (c == '(' || c == '[' || c == '{') depth++;
        if ((c == ')' || c == ']' || c == '}') && depth > 0) depth--;
        ct_emit(p, TK_OP, s + i, opn, *line);
        i += opn;
    }
}

void ct__lex(ct_parser *p, const char *s, size_t len) {
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
                if (e + 1 >= len) ct__parse_fail(p, line, "missing end of comment tag");
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
