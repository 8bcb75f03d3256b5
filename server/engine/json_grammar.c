/* server/engine/json_grammar.c — see json_grammar.h: one state machine over bytes with a
 * stack of open containers. */
#include "server/engine/json_grammar.h"

#include <string.h>

enum {
    S_TOP,        /* before the top-level object: whitespace or '{' */
    S_VALUE,      /* a value is expected */
    S_ARR_FIRST,  /* after '[': a value or ']' */
    S_OBJ_FIRST,  /* after '{': a key or '}' */
    S_OBJ_KEY,    /* after ',' in an object: a key */
    S_COLON,      /* after a key */
    S_AFTER,      /* after a value inside a container: ',' or the close */
    S_STR,        /* inside a string */
    S_ESC,        /* after '\' */
    S_HEX,        /* \u: aux hex digits left */
    S_MINUS,      /* after '-': a digit */
    S_ZERO,       /* a leading 0: '.', 'e', or the end of the number */
    S_INT,        /* integer digits */
    S_DOT,        /* after '.': a digit */
    S_FRAC,       /* fraction digits */
    S_EXP,        /* after 'e': sign or digit */
    S_EXP_SIGN,   /* after the exponent's sign: a digit */
    S_EXP_DIG,    /* exponent digits */
    S_LIT,        /* inside true / false / null */
    S_END,        /* the top-level object is complete */
};

static const char *const LITS[3] = {"true", "false", "null"};

void jsong_init(jsong *g) {
    memset(g, 0, sizeof *g);
    g->st = S_TOP;
}

static bool is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static bool is_hex(uint8_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

/* A value ended: back in its container, or the end of the text. */
static void value_done(jsong *g) {
    if (g->depth == 0) {
        g->st = S_END;
        g->done = true;
    } else {
        g->st = S_AFTER;
    }
}

static bool open_container(jsong *g, uint8_t kind) {
    if (g->depth >= JSONG_MAX_DEPTH) return false;
    g->stack[g->depth++] = kind;
    g->st = kind == 'o' ? S_OBJ_FIRST : S_ARR_FIRST;
    return true;
}

static bool close_container(jsong *g, uint8_t kind) {
    if (g->depth == 0 || g->stack[g->depth - 1] != kind) return false;
    g->depth--;
    value_done(g);
    return true;
}

/* The first byte of a value. */
static bool start_value(jsong *g, uint8_t c) {
    switch (c) {
    case '{': return open_container(g, 'o');
    case '[': return open_container(g, 'a');
    case '"': g->st = S_STR; g->key = 0; return true;
    case '-': g->st = S_MINUS; return true;
    case '0': g->st = S_ZERO; return true;
    case 't': case 'f': case 'n':
        g->lit = c == 't' ? 0 : c == 'f' ? 1 : 2;
        g->aux = 1;
        g->st = S_LIT;
        return true;
    default:
        if (c >= '1' && c <= '9') {
            g->st = S_INT;
            return true;
        }
        return false;
    }
}

/* After a value inside a container (also the byte that ended a number). */
static bool after_value(jsong *g, uint8_t c) {
    uint8_t top = g->stack[g->depth - 1];
    if (c == ',') {
        g->st = top == 'o' ? S_OBJ_KEY : S_VALUE;
        return true;
    }
    if (c == '}' || c == ']') return close_container(g, c == '}' ? 'o' : 'a');
    return false;
}

/* The byte after a number's last digit ends it: the number is a value, c is read again. */
static bool end_number(jsong *g, uint8_t c) {
    value_done(g);
    if (g->st == S_END) return false; /* never: the top level is an object */
    if (is_ws(c)) return true;
    return after_value(g, c);
}

static bool step(jsong *g, uint8_t c) {
    bool ws = is_ws(c) && g->st != S_STR && g->st != S_ESC && g->st != S_HEX;
    if (ws && ++g->ws > JSONG_MAX_WS) return false;
    if (!ws) g->ws = 0;
    switch (g->st) {
    case S_TOP: return ws || (c == '{' && open_container(g, 'o'));
    case S_END: return ws;
    case S_VALUE: return ws || start_value(g, c);
    case S_ARR_FIRST: return ws || (c == ']' ? close_container(g, 'a') : start_value(g, c));
    case S_OBJ_FIRST:
        if (ws) return true;
        if (c == '}') return close_container(g, 'o');
        __attribute__((fallthrough)); /* a key */
    case S_OBJ_KEY:
        if (ws) return true;
        if (c != '"') return false;
        g->st = S_STR;
        g->key = 1;
        return true;
    case S_COLON:
        if (ws) return true;
        if (c != ':') return false;
        g->st = S_VALUE;
        return true;
    case S_AFTER: return ws || after_value(g, c);
    case S_STR:
        if (c == '"') {
            if (g->key) g->st = S_COLON;
            else value_done(g);
            return true;
        }
        if (c == '\\') g->st = S_ESC;
        return c >= 0x20;
    case S_ESC:
        if (c == 'u') {
            g->st = S_HEX;
            g->aux = 4;
            return true;
        }
        g->st = S_STR;
        return c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't';
    case S_HEX:
        if (!is_hex(c)) return false;
        if (--g->aux == 0) g->st = S_STR;
        return true;
    case S_MINUS:
        if (c == '0') g->st = S_ZERO;
        else if (is_digit(c)) g->st = S_INT;
        else return false;
        return true;
    case S_ZERO:
    case S_INT:
        if (is_digit(c) && g->st == S_INT) return true;
        if (c == '.') g->st = S_DOT;
        else if (c == 'e' || c == 'E') g->st = S_EXP;
        else return end_number(g, c);
        return true;
    case S_DOT:
        if (!is_digit(c)) return false;
        g->st = S_FRAC;
        return true;
    case S_FRAC:
        if (is_digit(c)) return true;
        if (c == 'e' || c == 'E') {
            g->st = S_EXP;
            return true;
        }
        return end_number(g, c);
    case S_EXP:
        if (c == '+' || c == '-') g->st = S_EXP_SIGN;
        else if (is_digit(c)) g->st = S_EXP_DIG;
        else return false;
        return true;
    case S_EXP_SIGN:
        if (!is_digit(c)) return false;
        g->st = S_EXP_DIG;
        return true;
    case S_EXP_DIG: return is_digit(c) || end_number(g, c);
    case S_LIT:
        if (c != (uint8_t)LITS[g->lit][g->aux]) return false;
        if (LITS[g->lit][++g->aux] == '\0') value_done(g);
        return true;
    default: return false;
    }
}

bool jsong_feed(jsong *g, const uint8_t *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!step(g, b[i])) return false;
    return true;
}
