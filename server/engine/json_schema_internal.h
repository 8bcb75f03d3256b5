/* server/engine/json_schema_internal.h — the compiled form of a JSON schema, shared by
 * the compiler (json_schema.c) and the recognizer (json_schema_match.c). Immutable once
 * compiled. */
#ifndef PEFTD_JSON_SCHEMA_INTERNAL_H
#define PEFTD_JSON_SCHEMA_INTERNAL_H

#include <stdatomic.h>

#include "server/engine/json_schema.h"

enum {
    JN_NULL,   /* null */
    JN_BOOL,   /* true / false */
    JN_INT,    /* integer */
    JN_NUM,    /* number */
    JN_STR,    /* string: a = minLength, b = maxLength (-1: none) */
    JN_ENUM,   /* one of the literals a .. a+b-1 (compact JSON texts) */
    JN_ARR,    /* array: a = items node, b = minItems, c = maxItems (-1: none) */
    JN_OBJ,    /* object: properties a .. a+b-1 in order */
    JN_ALT,    /* one of the nodes alts[a .. a+b-1] */
    JN_REF,    /* the node a (a $ref; resolved after compiling) */
    JN_ANYOBJ, /* any object (keys: JN_STR any, values: any) */
    JN_ANYARR, /* any array */
};

typedef struct {
    uint8_t kind;
    int32_t a, b, c;
} jnode;

typedef struct {
    int32_t node;     /* the value's schema */
    int32_t lit;      /* the key as it is written: "name" (JSON string, quotes included) */
    bool required;
    int32_t next_req; /* the first required property at or after this one (object's end: b) */
} jprop;

typedef struct {
    uint32_t off, len;
} jlit;

struct jschema {
    atomic_int refs;
    jnode *nodes;
    int n_nodes;
    int32_t *need; /* [n_nodes] frames a value of the node needs to complete (INT32_MAX: none) */
    jprop *props;
    int n_props;
    int32_t *alts;
    int n_alts;
    jlit *lits;
    int n_lits;
    uint8_t *blob;
    size_t blob_len;
    int32_t root, any, str_any; /* any JSON value (JN_ALT), an unconstrained string */
};

/* json_schema_need.c. epsilon_cycle: a $ref / anyOf path from v comes back without a
 * value in between (color: [n_nodes] zeroed scratch, kept across calls). compute_need:
 * fills s->need. */
bool jschema__epsilon_cycle(const jschema *s, int32_t v, uint8_t *color);
void jschema__compute_need(jschema *s);

#endif
