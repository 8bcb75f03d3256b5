/* server/text/chat_template_render.h — what the renderer's files share: the render
 * context (arena, error jump, output buffer, step and depth counters), scopes, buffers,
 * the ids of global functions and methods, and the helpers each file exports. Internal to
 * server/text/. Calls go one way: chat_template_value.c (leaf) <- chat_template_ops.c <-
 * chat_template_call.c <- chat_template_filters.c <- chat_template_eval.c.
 *
 * Every function here runs inside one render, on its thread: errors longjmp to
 * ct_render's setjmp (ct__fail), and every value lives in the render's arena. */
#ifndef PEFTD_CHAT_TEMPLATE_RENDER_H
#define PEFTD_CHAT_TEMPLATE_RENDER_H

#include <setjmp.h>

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
    long long now; /* strftime_now's clock (unix seconds); 0 = the current time */
} ct_ctx;


enum {
    F_RAISE = 1, F_RANGE, F_NAMESPACE, F_STRFTIME, F_DICT,
    M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_STARTSWITH, M_ENDSWITH, M_UPPER, M_LOWER, M_TITLE,
    M_CAPITALIZE, M_REPLACE, M_FIND, M_COUNT, M_JOIN,
    M_ITEMS, M_KEYS, M_VALUES, M_GET,
};

/* Shared constants (never written). */
extern cv ct__undef, ct__none, ct__true, ct__false;

/* chat_template_value.c: errors, allocation, constructors, buffers, dicts, scopes,
 * conversions (str, repr, json), comparisons */
__attribute__((noreturn, format(printf, 3, 4)))
void ct__fail(ct_ctx *c, const ct_node *at, const char *fmt, ...);
void *ct__alloc(ct_ctx *c, size_t n);
cv *ct__mk(ct_ctx *c, cv_type t);
cv *ct__mk_str(ct_ctx *c, const char *s, size_t n);
cv *ct__mk_cstr(ct_ctx *c, const char *s);
cv *ct__mk_int(ct_ctx *c, long long i);
cv *ct__mk_float(ct_ctx *c, double f);
cv *ct__mk_bool(bool b);
cv *ct__mk_list(ct_ctx *c, size_t n);
cv *ct__mk_dict(ct_ctx *c);
cv *ct__mk_fn(ct_ctx *c, int id, cv *self, const char *name);
void ct__buf_put(ct_ctx *c, ct_buf *b, const char *s, size_t n);
void ct__buf_puts(ct_ctx *c, ct_buf *b, const char *s);
bool ct__str_eq(const cv *a, const char *s, size_t n);
cv *ct__dict_get(const cv *d, const cv *key);
cv *ct__dict_get_s(const cv *d, const char *k);
void ct__dict_set(ct_ctx *c, cv *d, cv *key, cv *val);
void ct__dict_set_s(ct_ctx *c, cv *d, const char *k, cv *val);
ct_frame *ct__frame_new(ct_ctx *c, ct_frame *parent);
void ct__frame_set(ct_ctx *c, ct_frame *f, const char *name, cv *v);
cv *ct__frame_get(ct_frame *f, const char *name);
bool ct__truthy(const cv *v);
const char *ct__type_name(const cv *v);
void ct__put_str(ct_ctx *c, ct_buf *b, const cv *v);
void ct__put_repr(ct_ctx *c, ct_buf *b, const cv *v);
cv *ct__to_str(ct_ctx *c, const cv *v);
void ct__fmt_float(double f, char *out, size_t n); /* Python's repr(float) */
bool ct__is_num(const cv *v);
double ct__num(const cv *v);
long long ct__inum(const cv *v);
bool ct__val_eq(const cv *a, const cv *b);
int ct__val_cmp(ct_ctx *c, const ct_node *at, const cv *a, const cv *b, const char *op);
bool ct__contains(ct_ctx *c, const ct_node *at, const cv *hay, const cv *needle);
/* chat_template_ops.c: strings by code point, indexing, slicing, operators, iteration */
size_t ct__u8_len(const char *s, size_t n);
size_t ct__u8_off(const char *s, size_t n, size_t cp);
cv *ct__str_strip(ct_ctx *c, const cv *s, const cv *chars, bool left, bool right);
cv *ct__str_replace(ct_ctx *c, const cv *s, const cv *from, const cv *to, long long count);
cv *ct__str_split(ct_ctx *c, const cv *s, const cv *sep, long long maxsplit);
cv *ct__binop(ct_ctx *c, const ct_node *at, const char *op, cv *a, cv *b);
cv *ct__length_of(ct_ctx *c, const ct_node *at, const cv *v);
cv *ct__as_list(ct_ctx *c, const ct_node *at, cv *v);
/* chat_template_call.c: globals, string/dict methods, tests */
cv *ct__arg_or(cv **args, int nargs, int i, const char **kwn, cv **kwv, int nkw, const char *name);
const cv *ct__want_str(ct_ctx *c, const ct_node *at, const cv *v, const char *what);
cv *ct__call_fn(ct_ctx *c, const ct_node *at, const cv *fn, cv **args, int nargs, const char **kwn, cv **kwv, int nkw);
cv *ct__get_attr(ct_ctx *c, const ct_node *at, cv *obj, const char *name);
cv *ct__get_item(ct_ctx *c, const ct_node *at, cv *obj, cv *key);
cv *ct__get_slice(ct_ctx *c, const ct_node *at, cv *obj, cv *lo, cv *hi, cv *st);
bool ct__run_test(ct_ctx *c, const ct_node *at, const char *name, cv *v, cv **args, int nargs);

/* chat_template_case.c: Python's full case mappings (see the file) */
enum { CT_CASE_LOWER, CT_CASE_UPPER, CT_CASE_TITLE, CT_CASE_CAPITALIZE, CT_CASE_JINJA_TITLE };
cv *ct__str_case(ct_ctx *c, const ct_node *at, const cv *s, int mode);
bool ct__str_is_case(ct_ctx *c, const ct_node *at, const cv *s, bool upper); /* str.isupper / islower */
size_t ct__put_repr_u8(ct_ctx *c, ct_buf *b, const char *p, size_t n); /* repr of one non-ASCII char */

/* chat_template_json.c: a cJSON value as a template value (objects keep their order), and
 * json.dumps(v, ...) as HF's tojson filter calls it (ensure_ascii False by default). */
struct cJSON;
cv *ct__from_json(ct_ctx *c, const struct cJSON *j);
typedef struct {
    const char *indent; /* NULL: no newlines; else the text of one level ("    " for indent=4) */
    const char *item_sep, *key_sep;
    bool sort_keys, ensure_ascii;
} ct_json_opts;
void ct__put_json(ct_ctx *c, ct_buf *b, const cv *v, const ct_json_opts *o, int level, const ct_node *at);

/* chat_template_filters.c: the filter n->name applied to v with n's evaluated positional
 * args[n->args.n] and keyword values kw[n->kwargs.n] (names in n->kwnames). */
cv *ct__filter(ct_ctx *c, const ct_node *n, cv *v, cv **args, cv **kw);

#endif
