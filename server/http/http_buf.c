/* server/http/http_buf.c — the growable byte buffer the HTTP code builds bodies and SSE
 * streams in, and the strict UTF-8 check applied to request bodies and prompts.
 */
#include <stdlib.h>
#include <string.h>

#include "lib/status.h"
#include "server/http/http_request.h"

int http_buf_append(http_buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            if (cap > SIZE_MAX / 2) return PEFTD_ENOMEM;
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (!p) return PEFTD_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int http_buf_puts(http_buf *b, const char *s) { return http_buf_append(b, s, strlen(s)); }

void http_buf_reset(http_buf *b) {
    b->len = 0;
    if (b->p) b->p[0] = '\0';
}

void http_buf_free(http_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Bytes of the valid UTF-8 character at s[0..n), or 0 when it is not one. Overlong forms,
 * UTF-16 surrogates and values past Unicode are all invalid (RFC 3629 §3). */
static size_t utf8_char_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t need;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0) { need = 1; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { need = 2; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { need = 3; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (n <= need) return 0;
    for (size_t k = 1; k <= need; k++) {
        if ((s[k] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return need + 1;
}

bool http_utf8_valid(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0, k; i < n; i += k)
        if (!(k = utf8_char_len(s + i, n - i))) return false;
    return true;
}

size_t http_utf8_sanitize(const char *in, char *out, size_t outlen) {
    static const char repl[] = "\xEF\xBF\xBD"; /* U+FFFD */
    const unsigned char *s = (const unsigned char *)in;
    size_t n = strlen(in), o = 0;
    if (!outlen) return 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_char_len(s + i, n - i);
        const char *src = k ? in + i : repl;
        size_t len = k ? k : 3;
        if (o + len >= outlen) break; /* never a partial character */
        memcpy(out + o, src, len);
        o += len;
        i += k ? k : 1;
    }
    out[o] = 0;
    return o;
}

size_t http_utf8_prefix(const char *s, size_t max) {
    size_t n = strnlen(s, max + 1);
    if (n <= max) return n;
    /* Back up over continuation bytes so the cut lands on a character boundary. */
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    return n;
}

bool http_json_has_nul(const char *body, size_t len) {
    if (memchr(body, 0, len)) return true;
    for (const char *p = body; (p = memchr(p, '\\', (size_t)(body + len - p))) != NULL;) {
        size_t run = 0; /* a run of backslashes: pairs are escaped backslashes */
        while (p + run < body + len && p[run] == '\\') run++;
        p += run;
        if ((run & 1) && body + len - p >= 5 && !memcmp(p, "u0000", 5)) return true;
    }
    return false;
}
