/* server/engine/json_grammar.h — a byte-level recognizer of JSON prefixes, for
 * response_format {"type":"json_object"}: feeding bytes tells whether they can still
 * begin a JSON text whose top-level value is an object (RFC 8259 grammar: objects,
 * arrays, strings with escapes, numbers, true/false/null, whitespace), and when that
 * object is complete. Bytes >= 0x80 inside strings are accepted as they come (the
 * detokenizer owns UTF-8). A small value type: copy it to try a token, keep the copy when
 * the token is taken. Pure functions; no allocation. */
#ifndef PEFTD_JSON_GRAMMAR_H
#define PEFTD_JSON_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSONG_MAX_DEPTH 32 /* nesting deeper than this is refused (the prefix is invalid) */
#define JSONG_MAX_WS 20    /* consecutive whitespace bytes outside strings at most: a model
                            * that only emits spaces would never finish */

typedef struct {
    uint8_t st;       /* lexer state (json_grammar.c) */
    uint8_t depth;
    uint8_t key;      /* the open string is an object key */
    uint8_t aux;      /* literal position / \u hex digits left */
    uint8_t lit;      /* which literal: 0 true, 1 false, 2 null */
    uint8_t ws;       /* whitespace run */
    bool done;        /* the top-level object is complete: only whitespace may follow */
    uint8_t stack[JSONG_MAX_DEPTH]; /* 'o' object, 'a' array */
} jsong;

void jsong_init(jsong *g);
/* Advances g over b[0..n); false (g then undefined) when the bytes cannot continue a
 * JSON object text. */
bool jsong_feed(jsong *g, const uint8_t *b, size_t n);

#endif
