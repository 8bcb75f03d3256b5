/* server/text/chat_template_internal.h — what the parser's files (chat_template_parse.h)
 * and the renderer's (chat_template_render.h) share: the arena (chat_template_arena.c),
 * the AST and the values. Internal to server/text/.
 */
#ifndef PEFTD_CHAT_TEMPLATE_INTERNAL_H
#define PEFTD_CHAT_TEMPLATE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "server/text/chat_template.h"

/* A bump allocator: everything of one template (AST) or one render (values) lives in one
 * arena and goes at once, so error paths (longjmp out of a deep evaluation) leak nothing. */
typedef struct ct_block ct_block;
typedef struct {
    ct_block *head;
    size_t total; /* bytes held: renders are capped (chat_template_eval.c) */
} ct_arena;

void *ct_arena_alloc(ct_arena *a, size_t n); /* zeroed; NULL when out of memory */
void ct_arena_free(ct_arena *a);

/* ---- values ---- */
typedef enum {
    CV_UNDEF, CV_NONE, CV_BOOL, CV_INT, CV_FLOAT, CV_STR, CV_LIST, CV_DICT,
    CV_FUNC,   /* a global function or a bound method (fn.id, fn.self) */
    CV_MACRO,  /* a {% macro %} */
} cv_type;

/* What a CV_LIST stands for in Python: a list, a tuple (repr "(a, b)"), a generator (what
 * jinja2's map/select/reject/items/reverse/unique filters return: iterable once, always
 * true, no len(), not printable) or a dict view (.items()/.keys()/.values(): len() but no
 * indexing, printed as dict_items([...]) — refused). */
enum { CL_LIST = 0, CL_TUPLE, CL_GEN, CL_VIEW };

typedef struct cv cv;
struct cv {
    cv_type t;
    union {
        bool b;
        long long i;
        double f;
        struct { const char *p; size_t n; } s;
        struct { cv **items; size_t n; unsigned char kind; } l; /* CL_* */
        struct { cv **keys, **vals; size_t n, cap; bool ns; } d; /* ns: a namespace() */
        struct { int id; cv *self; const char *name; } fn;
        const struct ct_node *macro;
    } u;
};

/* ---- AST ---- */
typedef enum {
    /* statements */
    CN_TEXT, CN_OUTPUT, CN_IF, CN_FOR, CN_SET, CN_SET_BLOCK, CN_MACRO, CN_BREAK, CN_CONTINUE,
    CN_BLOCK, /* a body run in place ({% generation %}) */
    /* expressions */
    CN_CONST, CN_NAME, CN_ATTR, CN_ITEM, CN_SLICE, CN_CALL, CN_FILTER, CN_TEST, CN_BIN, CN_NOT,
    CN_NEG, CN_POS, CN_AND, CN_OR, CN_COND, CN_LIST, CN_DICT, CN_CMP,
} ct_kind;

typedef struct ct_node ct_node;
typedef struct {
    ct_node **v;
    int n;
} ct_list;

struct ct_node {
    ct_kind k;
    int line;
    const char *name;       /* NAME, ATTR, FILTER, TEST, SET target, MACRO, BIN/CMP operator */
    const char *attr;       /* SET: namespace attribute (name.attr = ...) */
    cv *value;              /* CONST */
    ct_node *a, *b, *c, *d; /* operands: obj/cond/iter/left, key/right, ... */
    ct_list args;           /* CALL/FILTER/TEST positional args; LIST items; DICT keys;
                             * FOR targets (NAME nodes); MACRO parameters (NAME nodes);
                             * CMP operands after the first */
    ct_list kwargs;         /* CALL/FILTER keyword values; DICT values; MACRO defaults
                             * (NULL entries: none) */
    const char **kwnames;   /* CALL/FILTER keyword names; CMP operators */
    ct_list body, orelse;   /* IF/FOR/SET_BLOCK/MACRO/BLOCK */
    bool negate;            /* TEST: is not */
    bool tuple;             /* LIST: a tuple literal ((a, b), a, b, ()) */
    bool uses_varargs, uses_kwargs; /* MACRO: its body reads varargs / kwargs (then extra
                             * positional / keyword arguments land there, as in jinja2) */
};

struct chat_template {
    ct_arena arena;
    ct_list body;
    char family[16];
};

/* chat_template_eval.c: renders t's body into a malloc'd string; the conversation is msgs
 * (role/content strings) or, when jmsgs is non-NULL, that JSON array. */
struct cJSON;
int ct_render(const chat_template *t, const chat_message *msgs, int n_msgs, const struct cJSON *jmsgs,
              const chat_render_opts *o, char **out, size_t *out_len, char *err, size_t errlen);

#endif
