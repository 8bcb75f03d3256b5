/* server/engine/json_schema_match.c — see json_schema.h: the recognizer. A thread is a
 * stack of frames, one per value being read (containers and the innermost leaf); a byte
 * steps every thread of the set; the first byte of a value expands anyOf / type lists /
 * $ref into one thread per alternative that can still complete within JSCH_MAX_DEPTH
 * (jschema.need). A number or a literal that may continue ("1" of "12") ends when a byte
 * cannot extend it: the frame is popped and the byte goes to its parent. Identical
 * threads are merged. */
#include <limits.h>
#include <string.h>

#include "server/engine/json_schema_internal.h"

enum { A_FIRST, A_AFTER, A_NEXT };                                    /* arrays */
enum { O_FIRST, O_KEYSTART, O_KEY, O_COLON, O_VALUE, O_AFTER };       /* objects */
enum { S_CHR, S_ESC, S_HEX1, S_HEX2, S_HEX3, S_HEX4 };               /* strings */
enum { N_START, N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_EXP, N_EXP_SIGN, N_EXP_DIG }; /* numbers */

typedef struct {
    int n;
    jsm_thread *t; /* [JSCH_MAX_THREADS] */
} tset;

static size_t thread_bytes(const jsm_thread *t) { return offsetof(jsm_thread, f) + (size_t)t->depth * sizeof(jsm_frame); }

static void emit(tset *o, const jsm_thread *t) {
    size_t nb = thread_bytes(t);
    for (int i = 0; i < o->n; i++)
        if (o->t[i].depth == t->depth && !memcmp(&o->t[i], t, nb)) return;
    if (o->n < JSCH_MAX_THREADS) memcpy(&o->t[o->n++], t, nb);
}

static const jnode *node_of(const jschema *s, const jsm_frame *f) { return &s->nodes[f->node]; }

/* Literal candidates lits[lo..hi) (an enum's values, an object's keys): the first at or
 * after pick that shares the first pos bytes of lits[pick] and has byte b at pos. */
static int lit_next(const jschema *s, int lo, int hi, int pick, int pos, uint8_t b) {
    const uint8_t *ref = s->blob + s->lits[pick].off;
    for (int i = pick; i < hi; i++) {
        const jlit *l = &s->lits[i];
        if ((int)l->len > pos && s->blob[l->off + pos] == b && !memcmp(s->blob + l->off, ref, (size_t)pos)) return i;
    }
    (void)lo;
    return -1;
}

static bool lit_has(const jschema *s, int hi, int pick, int pos, bool longer) {
    const uint8_t *ref = s->blob + s->lits[pick].off;
    for (int i = pick; i < hi; i++) {
        const jlit *l = &s->lits[i];
        if ((longer ? (int)l->len > pos : (int)l->len == pos) && !memcmp(s->blob + l->off, ref, (size_t)pos))
            return true;
    }
    return false;
}

/* An object's property i may be produced next at this depth (the object's frame on top). */
static bool prop_fits(const jschema *s, const jsm_thread *t, int i) {
    return s->need[s->props[i].node] <= JSCH_MAX_DEPTH - t->depth;
}

/* The first property of object frame f that may come next (at or after f->cnt, not past
 * the next required one), or -1. */
static int first_candidate(const jschema *s, const jsm_thread *t, const jsm_frame *f) {
    const jnode *n = node_of(s, f);
    int end = n->a + n->b;
    for (int i = n->a + (int)f->cnt; i < end; i++) {
        if (prop_fits(s, t, i)) return i;
        if (s->props[i].required) return -1;
    }
    return -1;
}

/* The value on top of t is complete: pop it, its container moves on. */
static void pop_done(const jschema *s, jsm_thread *t) {
    t->depth--;
    if (t->depth == 0) return;
    jsm_frame *p = &t->f[t->depth - 1];
    switch (node_of(s, p)->kind) {
    case JN_ARR:
    case JN_ANYARR:
        p->st = A_AFTER;
        p->cnt++;
        break;
    case JN_OBJ: p->st = O_AFTER; break;
    case JN_ANYOBJ: p->st = p->st == O_KEY ? O_COLON : O_AFTER; break;
    default: break;
    }
}

static void step(const jschema *s, jsm_thread *t, uint8_t b, tset *o);

/* The first byte b of a value of node v, pushed on t (a copy: alternatives fork). */
static void start(const jschema *s, const jsm_thread *t, int32_t v, uint8_t b, tset *o) {
    const jnode *n = &s->nodes[v];
    if (s->need[v] > JSCH_MAX_DEPTH - t->depth) return;
    if (n->kind == JN_REF) {
        start(s, t, n->a, b, o);
        return;
    }
    if (n->kind == JN_ALT) {
        for (int i = 0; i < n->b; i++) start(s, t, s->alts[n->a + i], b, o);
        return;
    }
    jsm_thread c;
    memcpy(&c, t, thread_bytes(t));
    jsm_frame *f = &c.f[c.depth++];
    memset(f, 0, sizeof *f);
    f->node = (uint32_t)v;
    switch (n->kind) {
    case JN_NULL:
    case JN_BOOL:
        f->st = 0; /* literal text matched via y */
        break;
    case JN_ENUM: f->pick = (uint32_t)n->a; break;
    case JN_STR:
        if (b != '"') return;
        emit(o, &c);
        return;
    case JN_INT:
    case JN_NUM: f->st = N_START; break;
    case JN_ARR:
    case JN_ANYARR:
        if (b != '[') return;
        f->st = A_FIRST;
        emit(o, &c);
        return;
    case JN_OBJ:
    case JN_ANYOBJ:
        if (b != '{') return;
        f->st = O_FIRST;
        emit(o, &c);
        return;
    default: return;
    }
    step(s, &c, b, o);
}

static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static bool is_hex(uint8_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

/* A number's next byte; 1 taken, 0 not a number byte here, -1 the number cannot continue
 * and cannot end here either. */
static int number_byte(jsm_frame *f, bool integer, uint8_t b) {
    switch (f->st) {
    case N_START:
        if (b == '-') return f->st = N_MINUS, 1;
        __attribute__((fallthrough));
    case N_MINUS:
        if (b == '0') return f->st = N_ZERO, f->x = 1, 1;
        if (is_digit(b)) return f->st = N_INT, f->x = 1, 1;
        return -1;
    case N_INT:
        if (is_digit(b)) return f->x < JSCH_MAX_DIGITS ? (f->x++, 1) : 0;
        __attribute__((fallthrough));
    case N_ZERO:
        if (integer) return 0;
        if (b == '.') return f->st = N_DOT, f->x = 0, 1;
        if (b == 'e' || b == 'E') return f->st = N_EXP, 1;
        return 0;
    case N_DOT:
        return is_digit(b) ? (f->st = N_FRAC, f->x = 1, 1) : -1;
    case N_FRAC:
        if (is_digit(b)) return f->x < 8 ? (f->x++, 1) : 0;
        if (b == 'e' || b == 'E') return f->st = N_EXP, 1;
        return 0;
    case N_EXP:
        if (b == '+' || b == '-') return f->st = N_EXP_SIGN, 1;
        __attribute__((fallthrough));
    case N_EXP_SIGN:
        return is_digit(b) ? (f->st = N_EXP_DIG, f->x = 1, 1) : -1;
    case N_EXP_DIG:
        if (is_digit(b)) return f->x < 2 ? (f->x++, 1) : 0;
        return 0;
    default: return -1;
    }
}

static bool number_complete(const jsm_frame *f) {
    return f->st == N_ZERO || f->st == N_INT || f->st == N_FRAC || f->st == N_EXP_DIG;
}

/* A string byte (after the opening quote). */
static bool string_byte(const jnode *n, jsm_frame *f, uint8_t b, bool *closed) {
    *closed = false;
    if (f->x) { /* a UTF-8 continuation byte */
        uint8_t lo = 0x80, hi = 0xBF;
        if (f->y == 0xE0) lo = 0xA0;      /* no overlong forms */
        else if (f->y == 0xED) hi = 0x9F; /* no surrogates */
        else if (f->y == 0xF0) lo = 0x90;
        else if (f->y == 0xF4) hi = 0x8F; /* <= U+10FFFF */
        if (b < lo || b > hi) return false;
        f->y = 0;
        f->x--;
        return true;
    }
    switch (f->st) {
    case S_ESC:
        if (b == 'u') return f->st = S_HEX1, true;
        f->st = S_CHR;
        return b == '"' || b == '\\' || b == '/' || b == 'b' || b == 'f' || b == 'n' || b == 'r' || b == 't';
    case S_HEX1:
        if (!is_hex(b) || b == 'd' || b == 'D') return false; /* no surrogate escapes */
        f->st = S_HEX2;
        return true;
    case S_HEX2:
    case S_HEX3:
    case S_HEX4:
        if (!is_hex(b)) return false;
        f->st = f->st == S_HEX4 ? S_CHR : f->st + 1;
        return true;
    default: break;
    }
    if (b == '"') {
        if ((int32_t)f->cnt < n->a) return false;
        *closed = true;
        return true;
    }
    if (b < 0x20 || (b >= 0x80 && b < 0xC2) || b > 0xF4) return false;
    if (n->b >= 0 && (int32_t)f->cnt >= n->b) return false; /* only the closing quote */
    f->cnt++;
    if (b == '\\') f->st = S_ESC;
    else if (b >= 0xC2) {
        f->x = b >= 0xF0 ? 3 : b >= 0xE0 ? 2 : 1;
        f->y = b;
    }
    return true;
}

static void step(const jschema *s, jsm_thread *t, uint8_t b, tset *o) {
    if (t->depth == 0) return; /* complete: nothing follows */
    jsm_frame *f = &t->f[t->depth - 1];
    const jnode *n = node_of(s, f);
    switch (n->kind) {
    case JN_NULL:
    case JN_BOOL:
    case JN_ENUM: {
        static const char *const lits[3] = {"null", "true", "false"};
        if (n->kind != JN_ENUM) { /* the literal text: pick is which one */
            if (f->y == 0) {
                int k = n->kind == JN_NULL ? (b == 'n' ? 0 : -1) : b == 't' ? 1 : b == 'f' ? 2 : -1;
                if (k < 0) return;
                f->pick = (uint32_t)k;
            } else if ((uint8_t)lits[f->pick][f->y] != b) {
                return;
            }
            if (lits[f->pick][++f->y] == '\0') pop_done(s, t);
            emit(o, t);
            return;
        }
        int hi = n->a + n->b;
        int k = lit_next(s, n->a, hi, (int)f->pick, f->y, b);
        if (k < 0) { /* the literal may have ended before b ("1" then ",") */
            if (f->y > 0 && lit_has(s, hi, (int)f->pick, f->y, false)) {
                pop_done(s, t);
                step(s, t, b, o);
            }
            return;
        }
        f->pick = (uint32_t)k;
        f->y++;
        if (!lit_has(s, hi, k, f->y, true)) pop_done(s, t); /* complete: nothing longer */
        emit(o, t);
        return;
    }
    case JN_INT:
    case JN_NUM: {
        int r = number_byte(f, n->kind == JN_INT, b);
        if (r > 0) {
            emit(o, t);
        } else if (r == 0 && number_complete(f)) {
            pop_done(s, t);
            step(s, t, b, o);
        }
        return;
    }
    case JN_STR: {
        bool closed;
        if (!string_byte(n, f, b, &closed)) return;
        if (closed) pop_done(s, t);
        emit(o, t);
        return;
    }
    case JN_ARR:
    case JN_ANYARR: {
        int32_t items = n->kind == JN_ARR ? n->a : s->any, lo = n->kind == JN_ARR ? n->b : 0,
                hi = n->kind == JN_ARR ? n->c : -1;
        bool more = (hi < 0 || (int32_t)f->cnt < hi) && s->need[items] <= JSCH_MAX_DEPTH - t->depth;
        if ((f->st == A_FIRST || f->st == A_AFTER) && b == ']') {
            if ((int32_t)f->cnt < lo) return;
            pop_done(s, t);
            emit(o, t);
            return;
        }
        if (f->st == A_AFTER) {
            if (b != ',' || !more) return;
            f->st = A_NEXT;
            emit(o, t);
            return;
        }
        if (!more) return;
        start(s, t, items, b, o);
        return;
    }
    case JN_ANYOBJ:
        switch (f->st) {
        case O_FIRST:
        case O_AFTER:
            if (b == '}') {
                pop_done(s, t);
                emit(o, t);
                return;
            }
            if (f->st == O_AFTER) {
                if (b == ',') f->st = O_KEYSTART, emit(o, t);
                return;
            }
            __attribute__((fallthrough));
        case O_KEYSTART:
            if (b != '"' || s->need[s->any] > JSCH_MAX_DEPTH - t->depth) return;
            f->st = O_KEY; /* the key is a string frame above; its end moves to O_COLON */
            start(s, t, s->str_any, b, o);
            return;
        case O_COLON:
            if (b == ':') f->st = O_VALUE, emit(o, t);
            return;
        case O_VALUE: start(s, t, s->any, b, o); return;
        default: return;
        }
    case JN_OBJ: {
        const jprop *props = s->props;
        bool closable = f->cnt >= (uint32_t)n->b || props[n->a + (int)f->cnt].next_req == n->b;
        switch (f->st) {
        case O_FIRST:
        case O_AFTER:
            if (b == '}') {
                if (!closable) return;
                pop_done(s, t);
                emit(o, t);
                return;
            }
            if (f->st == O_AFTER) {
                if (b == ',' && first_candidate(s, t, f) >= 0) f->st = O_KEYSTART, emit(o, t);
                return;
            }
            __attribute__((fallthrough));
        case O_KEYSTART: {
            int k = first_candidate(s, t, f);
            if (b != '"' || k < 0) return;
            f->st = O_KEY;
            f->pick = (uint32_t)props[k].lit;
            f->y = 1;
            emit(o, t);
            return;
        }
        case O_KEY: {
            /* candidates: properties cnt .. the next required one (keys are all different
             * and end with their quote, so one is complete at most); the first one that
             * shares the bytes matched so far and has b next */
            int p0 = n->a + (int)f->cnt, nr = props[p0].next_req, end = n->a + (nr < n->b ? nr + 1 : n->b);
            const uint8_t *cur = s->blob + s->lits[f->pick].off;
            for (int i = p0; i < end; i++) {
                const jlit *l = &s->lits[props[i].lit];
                if (l->len <= f->y || s->blob[l->off + f->y] != b || memcmp(s->blob + l->off, cur, f->y) ||
                    !prop_fits(s, t, i))
                    continue;
                f->pick = (uint32_t)props[i].lit;
                if (++f->y == l->len) {
                    f->st = O_COLON;
                    f->cnt = (uint32_t)(i - n->a); /* the chosen property, until its value */
                }
                emit(o, t);
                return;
            }
            return;
        }
        case O_COLON:
            if (b != ':') return;
            f->st = O_VALUE;
            emit(o, t);
            return;
        case O_VALUE: {
            int pi = n->a + (int)f->cnt;
            f->cnt++; /* the value done, the next property is after it */
            start(s, t, props[pi].node, b, o);
            return;
        }
        default: return;
        }
    }
    default: return;
    }
}

void jsm_init(jsm *m, const jschema *s) {
    m->s = s;
    m->n = 1;
    memset(&m->t[0], 0, sizeof m->t[0]);
    m->t[0].depth = 0xff; /* before the value: marks the start */
}

static void feed_byte(const jschema *s, const jsm *in, uint8_t b, jsm *out) {
    tset o = {0, out->t};
    for (int i = 0; i < in->n; i++) {
        const jsm_thread *t = &in->t[i];
        if (t->depth == 0xff) {
            jsm_thread e;
            memset(&e, 0, sizeof e); /* padding too: threads are compared with memcmp */
            start(s, &e, s->root, b, &o);
            continue;
        }
        jsm_thread c;
        memcpy(&c, t, thread_bytes(t));
        step(s, &c, b, &o);
    }
    out->s = s;
    out->n = o.n;
}

void jsm_copy(jsm *out, const jsm *m) {
    out->s = m->s;
    out->n = m->n;
    for (int i = 0; i < m->n; i++)
        memcpy(&out->t[i], &m->t[i], m->t[i].depth == 0xff ? sizeof m->t[i] : thread_bytes(&m->t[i]));
}

bool jsm_try(const jsm *m, const uint8_t *b, size_t n, jsm scratch[2]) {
    const jsm *cur = m;
    for (size_t i = 0; i < n; i++) {
        jsm *nxt = &scratch[i & 1];
        feed_byte(m->s, cur, b[i], nxt);
        if (nxt->n == 0) return false;
        cur = nxt;
    }
    return cur->n > 0;
}

bool jsm_feed(jsm *m, const uint8_t *b, size_t n) {
    jsm tmp[2];
    if (n == 0) return m->n > 0;
    if (!jsm_try(m, b, n, tmp)) {
        m->n = 0;
        return false;
    }
    jsm_copy(m, &tmp[(n - 1) & 1]);
    return true;
}

int jsm_plain_room(const jsm *m) {
    int room = -1;
    for (int i = 0; i < m->n; i++) {
        const jsm_thread *t = &m->t[i];
        if (t->depth == 0 || t->depth == 0xff) return -1;
        const jsm_frame *f = &t->f[t->depth - 1];
        const jnode *n = node_of(m->s, f);
        if (n->kind != JN_STR || f->st != S_CHR || f->x) return -1;
        int r = n->b < 0 ? INT_MAX : n->b - (int)f->cnt;
        if (r > room) room = r;
    }
    return room;
}

bool jsm_can_end(const jsm *m) {
    for (int i = 0; i < m->n; i++) {
        const jsm_thread *t = &m->t[i];
        if (t->depth == 0) return true;
        if (t->depth == 0xff) continue;
        /* a number / literal that may continue, with nothing open below it */
        if (t->depth != 1) continue;
        const jsm_frame *f = &t->f[0];
        const jnode *n = node_of(m->s, f);
        if ((n->kind == JN_INT || n->kind == JN_NUM) && number_complete(f)) return true;
        if (n->kind == JN_ENUM && f->y > 0 && lit_has(m->s, n->a + n->b, (int)f->pick, f->y, false)) return true;
    }
    return false;
}

bool jsm_done(const jsm *m) {
    for (int i = 0; i < m->n; i++)
        if (m->t[i].depth != 0) return false;
    return m->n > 0;
}
