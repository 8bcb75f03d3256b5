/* server/engine/json_schema.c — see json_schema.h: the compiler from a JSON schema
 * (cJSON) to nodes (json_schema_internal.h): keyword audit (an unsupported keyword is
 * refused by name), $ref resolution against the root's $defs / definitions, the size
 * limits; then the checks of json_schema_need.c (a schema with no finite value, or a $ref /
 * anyOf cycle that never reaches a value, is refused). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/status.h"
#include "server/engine/json_schema_internal.h"

enum { T_NULL = 1, T_BOOL = 2, T_INT = 4, T_NUM = 8, T_STR = 16, T_ARR = 32, T_OBJ = 64 };

typedef struct {
    jschema *s;
    int cap_nodes, cap_props, cap_alts, cap_lits;
    size_t cap_blob;
    const cJSON *doc;
    struct {
        const cJSON *def;
        int32_t node;
    } *defs;
    int n_defs, cap_defs;
    char *err;
    size_t errlen;
    bool oom;
} cc;

static int fail(cc *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(cc *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
    return -1;
}
#define FAIL(c, ...) fail((c), __VA_ARGS__)

static bool grow(void **p, int *cap, int need, size_t sz) {
    if (need <= *cap) return true;
    int nc = *cap ? *cap : 16;
    while (nc < need) nc *= 2;
    void *t = realloc(*p, (size_t)nc * sz);
    if (!t) return false;
    *p = t;
    *cap = nc;
    return true;
}

static int32_t add_node(cc *c, uint8_t kind, int32_t a, int32_t b, int32_t cc_) {
    jschema *s = c->s;
    if (s->n_nodes >= JSCH_MAX_NODES)
        return FAIL(c, "the schema is too large: more than %d subschemas and enum values", JSCH_MAX_NODES);
    if (!grow((void **)&s->nodes, &c->cap_nodes, s->n_nodes + 1, sizeof(jnode))) {
        c->oom = true;
        return FAIL(c, "out of memory");
    }
    s->nodes[s->n_nodes] = (jnode){kind, a, b, cc_};
    return s->n_nodes++;
}

/* A literal: the compact JSON text of v. */
static int32_t add_lit(cc *c, const cJSON *v) {
    jschema *s = c->s;
    char *t = cJSON_PrintUnformatted(v);
    if (!t) {
        c->oom = true;
        return FAIL(c, "out of memory");
    }
    size_t n = strlen(t);
    if (s->blob_len + n > JSCH_MAX_LIT_BYTES) {
        free(t);
        return FAIL(c, "the schema is too large: property names and enum/const values over %d bytes",
                    JSCH_MAX_LIT_BYTES);
    }
    if (s->blob_len + n > c->cap_blob) {
        size_t nc = c->cap_blob ? c->cap_blob : 256;
        while (nc < s->blob_len + n) nc *= 2;
        uint8_t *b = realloc(s->blob, nc);
        if (!b) {
            free(t);
            c->oom = true;
            return FAIL(c, "out of memory");
        }
        s->blob = b;
        c->cap_blob = nc;
    }
    if (!grow((void **)&s->lits, &c->cap_lits, s->n_lits + 1, sizeof(jlit))) {
        free(t);
        c->oom = true;
        return FAIL(c, "out of memory");
    }
    memcpy(s->blob + s->blob_len, t, n);
    s->lits[s->n_lits] = (jlit){(uint32_t)s->blob_len, (uint32_t)n};
    s->blob_len += n;
    free(t);
    return s->n_lits++;
}

static bool in(const char *k, const char *const *list) {
    for (int i = 0; list[i]; i++)
        if (!strcmp(k, list[i])) return true;
    return false;
}

static const char *const ANNOTATIONS[] = {"title", "description", "$schema", "$id", "$comment", "examples",
                                          "default", "deprecated", "readOnly", "writeOnly", NULL};
static const char *const KEYWORDS[] = {"type", "properties", "required", "additionalProperties", "items", "enum",
                                       "const", "anyOf", "$ref", "$defs", "definitions", "minItems", "maxItems",
                                       "minLength", "maxLength", NULL};

/* Refuses what this compiler does not enforce, by name. */
static int audit(cc *c, const cJSON *sch, bool root) {
    const cJSON *it;
    cJSON_ArrayForEach(it, sch) {
        const char *k = it->string;
        if (in(k, ANNOTATIONS)) continue;
        if ((!strcmp(k, "$defs") || !strcmp(k, "definitions")) && !root)
            return FAIL(c, "'%s' is supported at the schema's root only", k);
        if (in(k, KEYWORDS)) continue;
        if (!strcmp(k, "pattern") || !strcmp(k, "patternProperties"))
            return FAIL(c, "'%s' is not supported: regular expressions are not enforced", k);
        if (!strcmp(k, "format"))
            return FAIL(c, "'format' (%.40s) is not supported: string formats are not enforced",
                        cJSON_IsString(it) ? it->valuestring : "?");
        return FAIL(c, "'%.64s' is not supported (keywords enforced: type, properties, required, "
                       "additionalProperties, items, enum, const, anyOf, $ref, $defs, minItems, maxItems, "
                       "minLength, maxLength)", k);
    }
    return 0;
}

/* A non-negative integer keyword; -1 when absent. */
static int get_count(cc *c, const cJSON *sch, const char *k, int32_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(sch, k);
    *out = -1;
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble > 1e6)
        return FAIL(c, "'%s' must be a non-negative integer (at most 1000000)", k);
    *out = (int32_t)v->valuedouble;
    return 0;
}

static int32_t compile(cc *c, const cJSON *sch, int depth);

static int32_t any_node(cc *c) {
    jschema *s = c->s;
    if (s->any >= 0) return s->any;
    int32_t a0 = s->n_alts;
    if (!grow((void **)&s->alts, &c->cap_alts, s->n_alts + 6, sizeof(int32_t))) {
        c->oom = true;
        return FAIL(c, "out of memory");
    }
    s->n_alts += 6;
    int32_t any = add_node(c, JN_ALT, a0, 6, 0);
    if (any < 0) return -1;
    s->any = any;
    int32_t k[6] = {add_node(c, JN_ANYOBJ, 0, 0, 0), add_node(c, JN_ANYARR, 0, 0, 0), add_node(c, JN_STR, 0, -1, 0),
                    add_node(c, JN_NUM, 0, 0, 0), add_node(c, JN_BOOL, 0, 0, 0), add_node(c, JN_NULL, 0, 0, 0)};
    for (int i = 0; i < 6; i++) {
        if (k[i] < 0) return -1;
        s->alts[a0 + i] = k[i];
    }
    s->str_any = k[2];
    return any;
}

/* A reserved list of n alternatives: returns its first index. */
static int32_t add_alts(cc *c, int n) {
    jschema *s = c->s;
    if (!grow((void **)&s->alts, &c->cap_alts, s->n_alts + n, sizeof(int32_t))) {
        c->oom = true;
        return FAIL(c, "out of memory");
    }
    int32_t a0 = s->n_alts;
    s->n_alts += n;
    return a0;
}

static int types_of(cc *c, const cJSON *t, int *mask) {
    static const char *const names[] = {"null", "boolean", "integer", "number", "string", "array", "object"};
    *mask = 0;
    const cJSON *one = t;
    bool list = cJSON_IsArray(t);
    if (list) one = t->child;
    if (list && !one) return FAIL(c, "'type' must not be an empty list");
    for (; one; one = list ? one->next : NULL) {
        if (!cJSON_IsString(one)) return FAIL(c, "'type' must be a type name or a list of them");
        int i = 0;
        while (i < 7 && strcmp(one->valuestring, names[i])) i++;
        if (i == 7) return FAIL(c, "unknown 'type' '%.40s'", one->valuestring);
        *mask |= 1 << i;
        if (!list) break;
    }
    return 0;
}

static int value_type(const cJSON *v) {
    if (cJSON_IsNull(v)) return T_NULL;
    if (cJSON_IsBool(v)) return T_BOOL;
    if (cJSON_IsNumber(v)) return v->valuedouble == floor(v->valuedouble) && fabs(v->valuedouble) < 9e15
                                      ? T_INT | T_NUM
                                      : T_NUM;
    if (cJSON_IsString(v)) return T_STR;
    if (cJSON_IsArray(v)) return T_ARR;
    return T_OBJ;
}

/* enum / const: the values of the allowed types. */
static int32_t compile_enum(cc *c, const cJSON *sch, int types) {
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(sch, "enum"), *co = cJSON_GetObjectItemCaseSensitive(sch, "const");
    if (en && co) return FAIL(c, "'enum' and 'const' together are not supported");
    const cJSON *it;
    cJSON_ArrayForEach(it, sch) {
        if (in(it->string, ANNOTATIONS) || !strcmp(it->string, "type") || !strcmp(it->string, "enum") ||
            !strcmp(it->string, "const") || !strcmp(it->string, "$defs") || !strcmp(it->string, "definitions"))
            continue;
        return FAIL(c, "'%s' together with '%s' is not supported", en ? "enum" : "const", it->string);
    }
    if (en && (!cJSON_IsArray(en) || !en->child)) return FAIL(c, "'enum' must be a non-empty array");
    if (en && cJSON_GetArraySize(en) > JSCH_MAX_ENUM)
        return FAIL(c, "'enum' has more than %d values", JSCH_MAX_ENUM);
    int32_t l0 = c->s->n_lits, n = 0;
    for (const cJSON *v = en ? en->child : co; v; v = en ? v->next : NULL) {
        if (value_type(v) & types) {
            if (add_lit(c, v) < 0) return -1;
            n++;
        }
        if (!en) break;
    }
    if (n == 0) return FAIL(c, "no '%s' value has the schema's 'type'", en ? "enum" : "const");
    return add_node(c, JN_ENUM, l0, n, 0);
}

static int32_t compile_object(cc *c, const cJSON *sch, int depth) {
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(sch, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(sch, "required");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(sch, "additionalProperties");
    if (props && !cJSON_IsObject(props)) return FAIL(c, "'properties' must be an object");
    if (req && !cJSON_IsArray(req)) return FAIL(c, "'required' must be an array of property names");
    if (addl && !cJSON_IsBool(addl))
        return FAIL(c, "'additionalProperties' as a schema is not supported (only false or true)");
    const cJSON *r;
    cJSON_ArrayForEach(r, req) {
        if (!cJSON_IsString(r)) return FAIL(c, "'required' must be an array of property names");
        if (!cJSON_GetObjectItemCaseSensitive(props, r->valuestring))
            return FAIL(c, "required property '%.64s' is not in 'properties'", r->valuestring);
    }
    if (!props && !cJSON_IsFalse(addl)) { /* any object */
        if (any_node(c) < 0) return -1;
        return add_node(c, JN_ANYOBJ, 0, 0, 0);
    }
    jschema *s = c->s;
    int n = cJSON_GetArraySize(props);
    if (s->n_props + n > JSCH_MAX_PROPS)
        return FAIL(c, "the schema is too large: more than %d properties", JSCH_MAX_PROPS);
    if (!grow((void **)&s->props, &c->cap_props, s->n_props + n, sizeof(jprop))) {
        c->oom = true;
        return FAIL(c, "out of memory");
    }
    int32_t p0 = s->n_props;
    s->n_props += n;
    int i = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, props) {
        cJSON *key = cJSON_CreateString(p->string);
        if (!key) {
            c->oom = true;
            return FAIL(c, "out of memory");
        }
        int32_t lit = add_lit(c, key);
        cJSON_Delete(key);
        if (lit < 0) return -1;
        bool required = false;
        cJSON_ArrayForEach(r, req) required |= !strcmp(r->valuestring, p->string);
        s->props[p0 + i] = (jprop){-1, lit, required, n};
        i++;
    }
    int32_t node = add_node(c, JN_OBJ, p0, n, 0);
    if (node < 0) return -1;
    i = 0;
    cJSON_ArrayForEach(p, props) {
        int32_t v = compile(c, p, depth + 1);
        if (v < 0) return -1;
        s->props[p0 + i++].node = v;
    }
    for (int k = n - 1, next = n; k >= 0; k--) {
        if (s->props[p0 + k].required) next = k;
        s->props[p0 + k].next_req = next;
    }
    return node;
}

static int32_t compile_array(cc *c, const cJSON *sch, int depth) {
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(sch, "items");
    int32_t lo, hi;
    if (get_count(c, sch, "minItems", &lo) || get_count(c, sch, "maxItems", &hi)) return -1;
    if (items && cJSON_IsArray(items)) return FAIL(c, "'items' as a list (tuple validation) is not supported");
    int32_t node = add_node(c, JN_ARR, -1, lo < 0 ? 0 : lo, hi);
    if (node < 0) return -1;
    int32_t it = items ? compile(c, items, depth + 1) : any_node(c);
    if (it < 0) return -1;
    c->s->nodes[node].a = it;
    return node;
}

/* "#", "#/$defs/NAME", "#/definitions/NAME" (JSON pointer escapes ~0 ~1). */
static int32_t compile_ref(cc *c, const cJSON *ref, int depth) {
    if (!cJSON_IsString(ref)) return FAIL(c, "'$ref' must be a string");
    const char *r = ref->valuestring;
    if (!strcmp(r, "#")) return 0; /* node 0: the root's reference */
    const char *name = NULL, *where = NULL;
    if (!strncmp(r, "#/$defs/", 8)) name = r + 8, where = "$defs";
    else if (!strncmp(r, "#/definitions/", 14)) name = r + 14, where = "definitions";
    if (!name || !*name) return FAIL(c, "'$ref' '%.64s' is not supported (only '#', '#/$defs/NAME', '#/definitions/NAME')", r);
    char key[256];
    size_t k = 0;
    for (const char *p = name; *p; p++) {
        if (k + 1 >= sizeof key) return FAIL(c, "'$ref' '%.64s...' is too long", r);
        if (*p == '/') return FAIL(c, "'$ref' '%.64s' is not supported (nested paths)", r);
        if (*p == '~' && (p[1] == '0' || p[1] == '1')) key[k++] = p[1] == '0' ? '~' : '/', p++;
        else key[k++] = *p;
    }
    key[k] = '\0';
    const cJSON *defs = cJSON_GetObjectItemCaseSensitive(c->doc, where);
    const cJSON *def = cJSON_IsObject(defs) ? cJSON_GetObjectItemCaseSensitive(defs, key) : NULL;
    if (!def) return FAIL(c, "'$ref' '%.64s' names no definition in the schema's '%s'", r, where);
    for (int i = 0; i < c->n_defs; i++)
        if (c->defs[i].def == def) return c->defs[i].node;
    int32_t node = add_node(c, JN_REF, -1, 0, 0);
    if (node < 0) return -1;
    if (!grow((void **)&c->defs, &c->cap_defs, c->n_defs + 1, sizeof *c->defs)) {
        c->oom = true;
        return FAIL(c, "out of memory");
    }
    c->defs[c->n_defs].def = def;
    c->defs[c->n_defs++].node = node;
    int32_t body = compile(c, def, depth + 1);
    if (body < 0) return -1;
    c->s->nodes[node].a = body;
    return node;
}

/* Only annotations (and, at the root, $defs) may stand beside this keyword. */
static int alone(cc *c, const cJSON *sch, const char *kw) {
    const cJSON *it;
    cJSON_ArrayForEach(it, sch) {
        if (!strcmp(it->string, kw) || in(it->string, ANNOTATIONS) || !strcmp(it->string, "$defs") ||
            !strcmp(it->string, "definitions"))
            continue;
        return FAIL(c, "'%s' together with '%s' is not supported", kw, it->string);
    }
    return 0;
}

static int32_t compile(cc *c, const cJSON *sch, int depth) {
    if (depth > JSCH_MAX_SCHEMA_DEPTH)
        return FAIL(c, "the schema nests deeper than %d levels", JSCH_MAX_SCHEMA_DEPTH);
    if (cJSON_IsTrue(sch)) return any_node(c);
    if (!cJSON_IsObject(sch)) return FAIL(c, "a schema must be an object (or true)");
    if (audit(c, sch, sch == c->doc)) return -1;
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(sch, "$ref");
    if (ref) return alone(c, sch, "$ref") ? -1 : compile_ref(c, ref, depth);
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(sch, "anyOf");
    if (any) {
        if (alone(c, sch, "anyOf")) return -1;
        if (!cJSON_IsArray(any) || !any->child) return FAIL(c, "'anyOf' must be a non-empty array of schemas");
        int n = cJSON_GetArraySize(any);
        int32_t a0 = add_alts(c, n);
        if (a0 < 0) return -1;
        int32_t node = add_node(c, JN_ALT, a0, n, 0);
        if (node < 0) return -1;
        int i = 0;
        const cJSON *alt;
        cJSON_ArrayForEach(alt, any) {
            int32_t v = compile(c, alt, depth + 1);
            if (v < 0) return -1;
            c->s->alts[a0 + i++] = v;
        }
        return node;
    }
    int types = 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(sch, "type");
    if (t && types_of(c, t, &types)) return -1;
    if (cJSON_GetObjectItemCaseSensitive(sch, "enum") || cJSON_GetObjectItemCaseSensitive(sch, "const"))
        return compile_enum(c, sch, t ? (types & T_NUM ? types | T_INT : types) : 0x7f);
    if (!t) { /* the types the keywords constrain (a narrower output is still valid); else any */
        if (cJSON_GetObjectItemCaseSensitive(sch, "properties") || cJSON_GetObjectItemCaseSensitive(sch, "required") ||
            cJSON_GetObjectItemCaseSensitive(sch, "additionalProperties"))
            types |= T_OBJ;
        if (cJSON_GetObjectItemCaseSensitive(sch, "items") || cJSON_GetObjectItemCaseSensitive(sch, "minItems") ||
            cJSON_GetObjectItemCaseSensitive(sch, "maxItems"))
            types |= T_ARR;
        if (cJSON_GetObjectItemCaseSensitive(sch, "minLength") || cJSON_GetObjectItemCaseSensitive(sch, "maxLength"))
            types |= T_STR;
        if (!types) return any_node(c);
    }
    int32_t k[7], n = 0;
    if (types & T_OBJ) k[n++] = compile_object(c, sch, depth);
    if (types & T_ARR) k[n++] = compile_array(c, sch, depth);
    if (types & T_STR) {
        int32_t lo, hi;
        if (get_count(c, sch, "minLength", &lo) || get_count(c, sch, "maxLength", &hi)) return -1;
        k[n++] = add_node(c, JN_STR, lo < 0 ? 0 : lo, hi, 0);
    }
    if (types & T_NUM) k[n++] = add_node(c, JN_NUM, 0, 0, 0);
    else if (types & T_INT) k[n++] = add_node(c, JN_INT, 0, 0, 0);
    if (types & T_BOOL) k[n++] = add_node(c, JN_BOOL, 0, 0, 0);
    if (types & T_NULL) k[n++] = add_node(c, JN_NULL, 0, 0, 0);
    for (int i = 0; i < n; i++)
        if (k[i] < 0) return -1;
    if (n == 1) return k[0];
    int32_t a0 = add_alts(c, n);
    if (a0 < 0) return -1;
    memcpy(c->s->alts + a0, k, (size_t)n * sizeof(int32_t));
    return add_node(c, JN_ALT, a0, n, 0);
}

int jschema_compile(const cJSON *schema, jschema **out, char *err, size_t errlen) {
    *out = NULL;
    cc c = {.doc = schema, .err = err, .errlen = errlen};
    c.s = calloc(1, sizeof *c.s);
    if (!c.s) return PEFTD_ENOMEM;
    atomic_init(&c.s->refs, 1);
    c.s->any = c.s->str_any = -1;
    int rc = PEFTD_EINVAL;
    if (add_node(&c, JN_REF, -1, 0, 0) != 0) goto fail; /* node 0: "#" */
    int32_t root = compile(&c, schema, 0);
    if (root < 0) goto fail;
    c.s->nodes[0].a = root;
    c.s->root = 0;
    uint8_t *color = calloc((size_t)c.s->n_nodes, 1);
    c.s->need = malloc((size_t)c.s->n_nodes * sizeof(int32_t));
    if (!color || !c.s->need) {
        free(color);
        c.oom = true;
        goto fail;
    }
    for (int v = 0; v < c.s->n_nodes; v++) {
        if (jschema__epsilon_cycle(c.s, v, color)) {
            free(color);
            FAIL(&c, "a '$ref' / 'anyOf' cycle never reaches a value");
            goto fail;
        }
    }
    free(color);
    jschema__compute_need(c.s);
    if (c.s->need[0] > JSCH_MAX_DEPTH) {
        FAIL(&c, "the schema admits no value nested at most %d deep (a required recursion, minLength > "
                 "maxLength or minItems > maxItems)", JSCH_MAX_DEPTH);
        goto fail;
    }
    free(c.defs);
    *out = c.s;
    return 0;
fail:
    if (c.oom) rc = PEFTD_ENOMEM;
    free(c.defs);
    c.s->refs = 1;
    jschema_unref(c.s);
    return rc;
}

jschema *jschema_ref(jschema *s) {
    atomic_fetch_add(&s->refs, 1);
    return s;
}

void jschema_unref(jschema *s) {
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1) return;
    free(s->nodes);
    free(s->need);
    free(s->props);
    free(s->alts);
    free(s->lits);
    free(s->blob);
    free(s);
}
