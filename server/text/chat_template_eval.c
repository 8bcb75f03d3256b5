/* server/text/chat_template_eval.c — rendering a parsed chat template: expression
 * evaluation, macro calls, and the statements (output, if, for with loop.*, set, set
 * blocks, macros, break/continue) with scopes as jinja2 has them (a for loop's body gets
 * a fresh scope each iteration; sets inside do not leak out); ct_render sets up the
 * globals and the context. Values, operators, calls and filters are in the files of
 * chat_template_render.h.
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

#include <cJSON.h>

#include "lib/status.h"
#include "server/text/chat_template_render.h"

enum { CT_NEXT = 0, CT_BREAK, CT_CONTINUE };

static cv *eval(ct_ctx *c, ct_frame *f, const ct_node *n);
static int render_body(ct_ctx *c, ct_frame *f, const ct_list *body);

static cv *call_macro(ct_ctx *c, const ct_node *at, const ct_node *m, cv **args, int nargs, const char **kwn, cv **kwv,
                      int nkw) {
    if (++c->depth > CT_MAX_DEPTH) ct__fail(c, at, "macros nested deeper than %d", CT_MAX_DEPTH);
    if (++c->steps > CT_MAX_STEPS) ct__fail(c, at, "the chat template ran longer than allowed");
    if (nargs > m->args.n && !m->uses_varargs)
        ct__fail(c, at, "macro '%s' takes not more than %d argument(s)", m->name, m->args.n);
    ct_frame *f = ct__frame_new(c, c->globals);
    cv *va = ct__mk_list(c, nargs > m->args.n ? (size_t)(nargs - m->args.n) : 0), *kwd = ct__mk_dict(c);
    va->u.l.kind = CL_TUPLE;
    for (int i = m->args.n; i < nargs; i++) va->u.l.items[i - m->args.n] = args[i];
    for (int k = 0; k < nkw; k++) {
        bool known = false;
        for (int i = 0; i < m->args.n && !known; i++) known = !strcmp(kwn[k], m->args.v[i]->name);
        if (known) continue;
        if (!m->uses_kwargs) ct__fail(c, at, "macro '%s' takes no keyword argument '%s'", m->name, kwn[k]);
        ct__dict_set_s(c, kwd, kwn[k], kwv[k]);
    }
    if (m->uses_varargs) ct__frame_set(c, f, "varargs", va);
    if (m->uses_kwargs) ct__frame_set(c, f, "kwargs", kwd);
    for (int i = 0; i < m->args.n; i++) {
        const char *pn = m->args.v[i]->name;
        cv *v = NULL;
        if (i < nargs) v = args[i];
        for (int k = 0; k < nkw; k++)
            if (!strcmp(kwn[k], pn)) v = kwv[k];
        if (!v) v = m->kwargs.v[i] ? eval(c, f, m->kwargs.v[i]) : &ct__undef;
        ct__frame_set(c, f, pn, v);
    }
    ct_buf *saved = c->out, b = {0};
    c->out = &b;
    render_body(c, f, &m->body);
    c->out = saved;
    c->depth--;
    return ct__mk_str(c, b.p ? b.p : "", b.n);
}

/* Expressions. The dispatch over the node kinds stays one switch (about 85 lines): each
 * case is a line or two that hands off to a helper, and splitting it would scatter the
 * one place that says how every kind evaluates. */
static cv *eval(ct_ctx *c, ct_frame *f, const ct_node *n) {
    switch (n->k) {
    case CN_CONST: return n->value;
    case CN_NAME: {
        cv *v = ct__frame_get(f, n->name);
        return v ? v : &ct__undef;
    }
    case CN_ATTR: return ct__get_attr(c, n, eval(c, f, n->a), n->name);
    case CN_ITEM: return ct__get_item(c, n, eval(c, f, n->a), eval(c, f, n->b));
    case CN_SLICE: {
        cv *o = eval(c, f, n->a);
        return ct__get_slice(c, n, o, n->b ? eval(c, f, n->b) : NULL, n->c ? eval(c, f, n->c) : NULL,
                         n->d ? eval(c, f, n->d) : NULL);
    }
    case CN_CALL: {
        cv *fn = eval(c, f, n->a);
        if (fn->t == CV_UNDEF) ct__fail(c, n, "'%s' is undefined", n->a->name ? n->a->name : "function");
        cv **args = n->args.n ? ct__alloc(c, (size_t)n->args.n * sizeof *args) : NULL;
        cv **kw = n->kwargs.n ? ct__alloc(c, (size_t)n->kwargs.n * sizeof *kw) : NULL;
        for (int i = 0; i < n->args.n; i++) args[i] = eval(c, f, n->args.v[i]);
        for (int i = 0; i < n->kwargs.n; i++) kw[i] = eval(c, f, n->kwargs.v[i]);
        if (fn->t == CV_MACRO) return call_macro(c, n, fn->u.macro, args, n->args.n, n->kwnames, kw, n->kwargs.n);
        return ct__call_fn(c, n, fn, args, n->args.n, n->kwnames, kw, n->kwargs.n);
    }
    case CN_FILTER: {
        cv *v = eval(c, f, n->a);
        cv **args = n->args.n ? ct__alloc(c, (size_t)n->args.n * sizeof *args) : NULL;
        cv **kw = n->kwargs.n ? ct__alloc(c, (size_t)n->kwargs.n * sizeof *kw) : NULL;
        for (int i = 0; i < n->args.n; i++) args[i] = eval(c, f, n->args.v[i]);
        for (int i = 0; i < n->kwargs.n; i++) kw[i] = eval(c, f, n->kwargs.v[i]);
        return ct__filter(c, n, v, args, kw);
    }
    case CN_TEST: {
        cv *v = eval(c, f, n->a);
        cv **args = n->args.n ? ct__alloc(c, (size_t)n->args.n * sizeof *args) : NULL;
        for (int i = 0; i < n->args.n; i++) args[i] = eval(c, f, n->args.v[i]);
        return ct__mk_bool(ct__run_test(c, n, n->name, v, args, n->args.n) != n->negate);
    }
    case CN_BIN: return ct__binop(c, n, n->name, eval(c, f, n->a), eval(c, f, n->b));
    case CN_NOT: return ct__mk_bool(!ct__truthy(eval(c, f, n->a)));
    case CN_NEG: case CN_POS: {
        cv *v = eval(c, f, n->a);
        if (!ct__is_num(v)) ct__fail(c, n, "bad operand type for unary %c: '%s'", n->k == CN_NEG ? '-' : '+', ct__type_name(v));
        if (n->k == CN_POS) return v;
        return v->t == CV_FLOAT ? ct__mk_float(c, -v->u.f) : ct__mk_int(c, -ct__inum(v));
    }
    case CN_AND: {
        cv *a = eval(c, f, n->a);
        return ct__truthy(a) ? eval(c, f, n->b) : a;
    }
    case CN_OR: {
        cv *a = eval(c, f, n->a);
        return ct__truthy(a) ? a : eval(c, f, n->b);
    }
    case CN_COND:
        if (ct__truthy(eval(c, f, n->a))) return eval(c, f, n->b);
        return n->c ? eval(c, f, n->c) : &ct__undef;
    case CN_LIST: {
        cv *l = ct__mk_list(c, (size_t)n->args.n);
        l->u.l.kind = n->tuple ? CL_TUPLE : CL_LIST;
        for (int i = 0; i < n->args.n; i++) l->u.l.items[i] = eval(c, f, n->args.v[i]);
        return l;
    }
    case CN_DICT: {
        cv *d = ct__mk_dict(c);
        for (int i = 0; i < n->args.n; i++) ct__dict_set(c, d, eval(c, f, n->args.v[i]), eval(c, f, n->kwargs.v[i]));
        return d;
    }
    case CN_CMP: {
        cv *l = eval(c, f, n->a);
        for (int i = 0; i < n->args.n; i++) {
            cv *r = eval(c, f, n->args.v[i]);
            const char *op = n->kwnames[i];
            bool ok;
            if (!strcmp(op, "==")) ok = ct__val_eq(l, r);
            else if (!strcmp(op, "!=")) ok = !ct__val_eq(l, r);
            else if (!strcmp(op, "in")) ok = ct__contains(c, n, r, l);
            else if (!strcmp(op, "notin")) ok = !ct__contains(c, n, r, l);
            else {
                int k = ct__val_cmp(c, n, l, r, op);
                ok = !strcmp(op, "<") ? k < 0 : !strcmp(op, "<=") ? k <= 0 : !strcmp(op, ">") ? k > 0 : k >= 0;
            }
            if (!ok) return &ct__false;
            l = r;
        }
        return &ct__true;
    }
    default: ct__fail(c, n, "internal error: statement in an expression");
    }
}

/* attribute lookup for map/selectattr: "a.b" paths, as jinja2's make_attrgetter */

/* ---- statements ---- */

static void assign(ct_ctx *c, ct_frame *f, const ct_node *n, cv *v) {
    if (n->attr) {
        cv *ns = ct__frame_get(f, n->name);
        if (!ns || ns->t != CV_DICT || !ns->u.d.ns) ct__fail(c, n, "cannot assign attribute on non-namespace object");
        ct__dict_set_s(c, ns, n->attr, v);
        return;
    }
    if (n->args.n) {
        cv *l = ct__as_list(c, n, v);
        if (l->u.l.n != (size_t)n->args.n) ct__fail(c, n, "cannot unpack %zu values into %d names", l->u.l.n, n->args.n);
        for (int i = 0; i < n->args.n; i++) ct__frame_set(c, f, n->args.v[i]->name, l->u.l.items[i]);
        return;
    }
    ct__frame_set(c, f, n->name, v);
}

static int render_for(ct_ctx *c, ct_frame *f, const ct_node *n) {
    cv *seq = ct__as_list(c, n, eval(c, f, n->a));
    if (n->b) { /* for x in xs if cond: filtered before loop.* is computed, as jinja2 does */
        cv *keep = ct__mk_list(c, seq->u.l.n);
        size_t k = 0;
        for (size_t i = 0; i < seq->u.l.n; i++) {
            ct_frame *tf = ct__frame_new(c, f);
            cv *item = seq->u.l.items[i];
            if (n->args.n == 1) ct__frame_set(c, tf, n->args.v[0]->name, item);
            else {
                cv *parts = ct__as_list(c, n, item);
                if (parts->u.l.n != (size_t)n->args.n) ct__fail(c, n, "cannot unpack loop item into %d names", n->args.n);
                for (int j = 0; j < n->args.n; j++) ct__frame_set(c, tf, n->args.v[j]->name, parts->u.l.items[j]);
            }
            if (ct__truthy(eval(c, tf, n->b))) keep->u.l.items[k++] = item;
        }
        keep->u.l.n = k;
        seq = keep;
    }
    size_t len = seq->u.l.n;
    if (!len) return render_body(c, ct__frame_new(c, f), &n->orelse) == CT_BREAK ? CT_NEXT : CT_NEXT;
    for (size_t i = 0; i < len; i++) {
        if (++c->steps > CT_MAX_STEPS) ct__fail(c, n, "the chat template ran longer than allowed");
        ct_frame *it = ct__frame_new(c, f);
        cv *loop = ct__mk_dict(c);
        ct__dict_set_s(c, loop, "index", ct__mk_int(c, (long long)i + 1));
        ct__dict_set_s(c, loop, "index0", ct__mk_int(c, (long long)i));
        ct__dict_set_s(c, loop, "revindex", ct__mk_int(c, (long long)(len - i)));
        ct__dict_set_s(c, loop, "revindex0", ct__mk_int(c, (long long)(len - i - 1)));
        ct__dict_set_s(c, loop, "first", ct__mk_bool(i == 0));
        ct__dict_set_s(c, loop, "last", ct__mk_bool(i + 1 == len));
        ct__dict_set_s(c, loop, "length", ct__mk_int(c, (long long)len));
        ct__dict_set_s(c, loop, "depth", ct__mk_int(c, 1));
        ct__dict_set_s(c, loop, "depth0", ct__mk_int(c, 0));
        ct__dict_set_s(c, loop, "previtem", i ? seq->u.l.items[i - 1] : &ct__undef);
        ct__dict_set_s(c, loop, "nextitem", i + 1 < len ? seq->u.l.items[i + 1] : &ct__undef);
        ct__frame_set(c, it, "loop", loop);
        cv *item = seq->u.l.items[i];
        if (n->args.n == 1) ct__frame_set(c, it, n->args.v[0]->name, item);
        else {
            cv *parts = ct__as_list(c, n, item);
            if (parts->u.l.n != (size_t)n->args.n) ct__fail(c, n, "cannot unpack loop item into %d names", n->args.n);
            for (int j = 0; j < n->args.n; j++) ct__frame_set(c, it, n->args.v[j]->name, parts->u.l.items[j]);
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
        case CN_TEXT: ct__buf_put(c, c->out, n->value->u.s.p, n->value->u.s.n); break;
        case CN_OUTPUT: ct__put_str(c, c->out, eval(c, f, n->a)); break;
        case CN_IF: {
            int r = render_body(c, f, ct__truthy(eval(c, f, n->a)) ? &n->body : &n->orelse);
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
            ct__frame_set(c, f, n->name, ct__mk_str(c, b.p ? b.p : "", b.n));
            break;
        }
        case CN_MACRO: {
            cv *m = ct__mk(c, CV_MACRO);
            m->u.macro = n;
            ct__frame_set(c, f, n->name, m);
            break;
        }
        case CN_BREAK: return CT_BREAK;
        case CN_CONTINUE: return CT_CONTINUE;
        case CN_BLOCK: {
            int r = render_body(c, f, &n->body);
            if (r != CT_NEXT) return r;
            break;
        }
        default: ct__fail(c, n, "internal error: expression as a statement");
        }
    }
    return CT_NEXT;
}

int ct_render(const chat_template *t, const chat_message *msgs, int n_msgs, const cJSON *jmsgs,
              const chat_render_opts *o, char **out, size_t *out_len, char *err, size_t errlen) {
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
    cp->now = o->now;
    int jr = setjmp(cp->jb);
    if (jr) {
        ct_arena_free(&cp->arena);
        free(cp);
        free(bp);
        return jr == 2 ? PEFTD_ENOMEM : PEFTD_EINVAL;
    }
    ct_frame *g = ct__frame_new(cp, NULL);
    cv *ml;
    if (jmsgs) {
        ml = ct__from_json(cp, jmsgs);
    } else {
        ml = ct__mk_list(cp, (size_t)(n_msgs > 0 ? n_msgs : 0));
        for (int i = 0; i < n_msgs; i++) {
            cv *m = ct__mk_dict(cp);
            ct__dict_set_s(cp, m, "role", ct__mk_cstr(cp, msgs[i].role));
            ct__dict_set_s(cp, m, "content", ct__mk_cstr(cp, msgs[i].content));
            ml->u.l.items[i] = m;
        }
    }
    ct__frame_set(cp, g, "raise_exception", ct__mk_fn(cp, F_RAISE, NULL, "raise_exception"));
    ct__frame_set(cp, g, "range", ct__mk_fn(cp, F_RANGE, NULL, "range"));
    ct__frame_set(cp, g, "namespace", ct__mk_fn(cp, F_NAMESPACE, NULL, "namespace"));
    ct__frame_set(cp, g, "dict", ct__mk_fn(cp, F_DICT, NULL, "dict"));
    ct__frame_set(cp, g, "strftime_now", ct__mk_fn(cp, F_STRFTIME, NULL, "strftime_now"));
    ct__frame_set(cp, g, "messages", ml);
    ct__frame_set(cp, g, "tools", o->tools ? ct__from_json(cp, o->tools) : &ct__none);
    ct__frame_set(cp, g, "documents", &ct__none);
    ct__frame_set(cp, g, "add_generation_prompt", ct__mk_bool(o->add_generation_prompt));
    if (o->bos_token) ct__frame_set(cp, g, "bos_token", ct__mk_cstr(cp, o->bos_token));
    if (o->eos_token) ct__frame_set(cp, g, "eos_token", ct__mk_cstr(cp, o->eos_token));
    if (o->unk_token) ct__frame_set(cp, g, "unk_token", ct__mk_cstr(cp, o->unk_token));
    if (o->pad_token) ct__frame_set(cp, g, "pad_token", ct__mk_cstr(cp, o->pad_token));
    if (o->vars) { /* render(**kwargs): the caller's variables win over the globals */
        cv *vars = ct__from_json(cp, o->vars);
        for (size_t i = 0; i < vars->u.d.n; i++) ct__frame_set(cp, g, vars->u.d.keys[i]->u.s.p, vars->u.d.vals[i]);
    }
    /* the template's top level is its own scope above the globals, as in jinja2 */
    cp->globals = ct__frame_new(cp, g); /* macros see the top level's names, as in jinja2 */
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
