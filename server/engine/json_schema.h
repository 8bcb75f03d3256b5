/* server/engine/json_schema.h — response_format {"type":"json_schema"}: a JSON schema
 * compiled to a byte-level recognizer of the JSON texts that validate against it.
 *
 * Supported subset (OpenAI structured outputs'): type (object, array, string, number,
 * integer, boolean, null, and lists of them), properties + required (+ additionalProperties
 * false or true: only the declared properties are produced, in the declared order), items,
 * enum, const, anyOf, $ref ("#", "#/$defs/NAME", "#/definitions/NAME"; recursion allowed),
 * $defs/definitions, minItems/maxItems, minLength/maxLength; annotations (title,
 * description, $schema, $id, $comment, examples, default, name, strict) are ignored. Every
 * other keyword (pattern, format, minimum, oneOf, allOf, ...) is refused by name.
 *
 * Produced texts are compact: no whitespace outside strings; strings are UTF-8 (\u
 * escapes of surrogates are not produced); numbers have at most JSCH_MAX_DIGITS integer
 * digits, 8 fraction and 2 exponent digits; integers no fraction or exponent. Every prefix
 * the recognizer accepts can be completed into a valid text within JSCH_MAX_DEPTH
 * nesting (an alternative that cannot is not offered).
 *
 * Compile on any thread; a compiled jschema is immutable and refcounted (jschema_ref /
 * jschema_unref from any thread). A jsm (the recognizer's state) is a plain value owned by
 * one thread: copy it to try bytes. */
#ifndef PEFTD_JSON_SCHEMA_H
#define PEFTD_JSON_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cJSON;

#define JSCH_MAX_NODES 4096     /* compiled schema nodes (each subschema, enum value) */
#define JSCH_MAX_SCHEMA_DEPTH 24 /* nesting of the schema document itself */
#define JSCH_MAX_PROPS 1024     /* properties in all objects together */
#define JSCH_MAX_ENUM 512       /* values of one enum */
#define JSCH_MAX_LIT_BYTES 65536 /* property names and enum/const values, encoded */
#define JSCH_MAX_DEPTH 24       /* nesting of a produced value (containers and the leaf) */
#define JSCH_MAX_THREADS 8      /* alternatives followed at once (anyOf, type lists) */
#define JSCH_MAX_DIGITS 12      /* integer digits of a produced number */

typedef struct jschema jschema;

/* Compiles schema (the "schema" member of response_format.json_schema). 0 and *out (one
 * reference), or PEFTD_EINVAL with a one-line message in err naming the keyword / limit
 * (PEFTD_ENOMEM when out of memory). */
int jschema_compile(const struct cJSON *schema, jschema **out, char *err, size_t errlen);
jschema *jschema_ref(jschema *s);
void jschema_unref(jschema *s); /* NULL is a no-op */

typedef struct {
    uint32_t node;
    uint8_t st;    /* kind-specific state */
    uint8_t x;     /* string: UTF-8 continuation bytes left; number: digits in this part */
    uint16_t y;    /* literal / key: bytes matched; string: the UTF-8 lead byte */
    uint32_t cnt;  /* string: characters; array: items; object: next property index */
    uint32_t pick; /* literal / key: the candidate matched so far */
} jsm_frame;

typedef struct {
    uint8_t depth; /* 0: the value is complete */
    jsm_frame f[JSCH_MAX_DEPTH];
} jsm_thread;

/* The set of schema paths the text so far can be on (alternatives are followed in
 * parallel; beyond JSCH_MAX_THREADS the later ones are dropped, which narrows what may be
 * produced, never widens it). */
typedef struct {
    const jschema *s;
    int n;
    jsm_thread t[JSCH_MAX_THREADS];
} jsm;

void jsm_init(jsm *m, const jschema *s);
/* Advances m over b[0..n); false (m then undefined) when no valid text begins so. */
bool jsm_feed(jsm *m, const uint8_t *b, size_t n);
/* Whether b[0..n) may come next, m unchanged (scratch: work space). */
bool jsm_try(const jsm *m, const uint8_t *b, size_t n, jsm scratch[2]);
/* When every path is inside a string, between characters: how many more plain characters
 * (0x20..0x7e but '"' and '\\', one byte each) may come at most (INT_MAX: no maxLength);
 * else -1. The engine's mask decides tokens made only of plain characters with it. */
int jsm_plain_room(const jsm *m);
/* Copies m into out (only the live part). */
void jsm_copy(jsm *out, const jsm *m);
/* The text so far is a complete valid value (it may still continue: a number). */
bool jsm_can_end(const jsm *m);
/* The text is complete and nothing may follow. */
bool jsm_done(const jsm *m);

#endif
