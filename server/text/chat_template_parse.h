/* server/text/chat_template_parse.h — what the lexer (chat_template_lex.c) and the parser
 * (chat_template_parse.c) share: tokens and the parser state. Internal to server/text/.
 * Errors longjmp to the setjmp of chat_template_parse (chat_template.c): 1 for a syntax
 * error (the message in err), 2 for out of memory. Everything lives in the template's
 * arena. */
#ifndef PEFTD_CHAT_TEMPLATE_PARSE_H
#define PEFTD_CHAT_TEMPLATE_PARSE_H

#include <setjmp.h>

#include "server/text/chat_template_internal.h"

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


/* chat_template_lex.c */
__attribute__((noreturn, format(printf, 3, 4)))
void ct__parse_fail(ct_parser *p, int line, const char *fmt, ...);
void *ct__parse_alloc(ct_parser *p, size_t n); /* zeroed, from the template's arena */
char *ct__parse_strndup(ct_parser *p, const char *s, size_t n);
/* Splits s[0..len) into p->toks (text, tags and their tokens), with HF's trim_blocks and
 * lstrip_blocks whitespace rules exactly as jinja2's lexer applies them. */
void ct__lex(ct_parser *p, const char *s, size_t len);

/* chat_template_parse.c: the statements of p->toks, up to the end of the input. */
ct_list ct__parse(ct_parser *p);

#endif
