/* server/text/chat_template_parse.c — the parser: expressions (jinja2's precedence: or,
 * and, not, comparisons, ~, + -, * / // %, **, unary, filters and tests, postfix calls,
 * attributes, items and slices) and statements (if, for, set, set blocks, macros,
 * break/continue, generation blocks) into the AST of chat_template_internal.h. */
#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/text/chat_template_parse.h"

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
    if (!is_op(cur(p), op)) ct__parse_fail(p, cur(p)->line, "expected '%s', got %s", op, tok_desc(cur(p), b, sizeof b));
    p->pos++;
}
static void expect_t(ct_parser *p, tk_type t, const char *what) {
    char b[64];
    if (cur(p)->t != t) ct__parse_fail(p, cur(p)->line, "expected %s, got %s", what, tok_desc(cur(p), b, sizeof b));
    p->pos++;
}
static const char *expect_name(ct_parser *p) {
    char b[64];
    ct_tok *t = cur(p);
    if (t->t != TK_NAME) ct__parse_fail(p, t->line, "expected a name, got %s", tok_desc(t, b, sizeof b));
    p->pos++;
    return ct__parse_strndup(p, t->s, t->n);
}

static ct_node *node(ct_parser *p, ct_kind k, int line) {
    ct_node *n = ct__parse_alloc(p, sizeof *n);
    n->k = k;
    n->line = line;
    return n;
}

/* A growable list whose storage lives in the arena (the old array is simply left). */
static void list_push(ct_parser *p, ct_list *l, ct_node *n, int *cap) {
    if (l->n == *cap) {
        int c = *cap ? 2 * *cap : 4;
        ct_node **v = ct__parse_alloc(p, (size_t)c * sizeof *v);
        if (l->n) memcpy(v, l->v, (size_t)l->n * sizeof *v);
        l->v = v;
        *cap = c;
    }
    l->v[l->n++] = n;
}

static cv *const_val(ct_parser *p, cv_type t) {
    cv *v = ct__parse_alloc(p, sizeof *v);
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
                const char **nn = ct__parse_alloc(p, (size_t)kcap * sizeof *nn);
                if (kn) memcpy(nn, names, (size_t)kn * sizeof *nn);
                names = nn;
            }
            names[kn++] = nm;
        } else {
            if (n->kwargs.n) ct__parse_fail(p, cur(p)->line, "positional argument after a keyword argument");
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
    l->tuple = true;
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
            n->name = ct__parse_strndup(p, t->s, t->n);
        }
        return n;
    case TK_STR: {
        /* adjacent literals concatenate, as in Python */
        size_t total = 0, k = 0;
        while (peek(p, k)->t == TK_STR) total += peek(p, k++)->n;
        char *s = ct__parse_alloc(p, total + 1);
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
                n->tuple = true;
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
    ct__parse_fail(p, t->line, "unexpected %s in an expression", tok_desc(t, b, sizeof b));
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
            const char **nn = ct__parse_alloc(p, (size_t)ncap * sizeof *nn);
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
    if (!is_name(cur(p), nm)) ct__parse_fail(p, cur(p)->line, "expected '%s'", nm);
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
    if (!is_name(cur(p), "in")) ct__parse_fail(p, cur(p)->line, "expected 'in' in a for loop");
    p->pos++;
    n->a = parse_tuple_expr(p, false);
    if (is_name(cur(p), "if")) {
        p->pos++;
        n->b = parse_expr(p, true);
    }
    if (is_name(cur(p), "recursive")) ct__parse_fail(p, cur(p)->line, "recursive loops are not supported");
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

/* Whether the tree under n reads the name nm (jinja2 gives a macro varargs / kwargs only
 * when its body does). */
static bool reads_name(const ct_node *n, const char *nm) {
    if (!n) return false;
    if (n->k == CN_NAME && !strcmp(n->name, nm)) return true;
    if (reads_name(n->a, nm) || reads_name(n->b, nm) || reads_name(n->c, nm) || reads_name(n->d, nm)) return true;
    const ct_list *ls[] = {&n->args, &n->kwargs, &n->body, &n->orelse};
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < ls[k]->n; i++)
            if (reads_name(ls[k]->v[i], nm)) return true;
    return false;
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
            ct__parse_fail(p, a->line, "macro parameter without a default after one with a default");
        }
        list_push(p, &n->kwargs, def, &dcap);
    }
    p->pos++;
    end_tag(p);
    static const char *const ends[] = {"endmacro", NULL};
    const char *w = NULL;
    n->body = parse_body(p, ends, &w);
    take_tag(p, "endmacro");
    for (int i = 0; i < n->body.n; i++) {
        n->uses_varargs |= reads_name(n->body.v[i], "varargs");
        n->uses_kwargs |= reads_name(n->body.v[i], "kwargs");
    }
    if (cur(p)->t == TK_NAME) p->pos++; /* {% endmacro name %} */
    end_tag(p);
    return n;
}

static ct_node *parse_stmt(ct_parser *p) {
    expect_t(p, TK_BLOCK_BEGIN, "'{%'");
    ct_tok *t = cur(p);
    char b[64];
    if (t->t != TK_NAME) ct__parse_fail(p, t->line, "expected a statement, got %s", tok_desc(t, b, sizeof b));
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
    ct__parse_fail(p, t->line, "unsupported tag '%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s);
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
                ct__parse_fail(p, start_line, "missing '{%% %s %%}' before the end of the template", ends[last]);
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
                if (is_name(nm, stray[i])) ct__parse_fail(p, nm->line, "unexpected '%s'", stray[i]);
            list_push(p, &body, parse_stmt(p), &cap);
            continue;
        }
        char b[64];
        ct__parse_fail(p, t->line, "unexpected %s", tok_desc(t, b, sizeof b));
    }
}

ct_list ct__parse(ct_parser *p) { return parse_body(p, NULL, NULL); }
