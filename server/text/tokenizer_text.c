/* server/text/tokenizer_text.c — text plumbing for the tokenizer: growable byte buffers,
 * piece (span) lists, UTF-8 validation/decoding, lossy UTF-8 repair exactly as Rust's
 * from_utf8_lossy does it, GPT-2's byte-level character map, and the PCRE2 wrapper that
 * runs tokenizer.json's regexes (UTF + UCP mode, JIT when available).
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/status.h"
#include "server/text/tokenizer_internal.h"

int tokenizer__buf_reserve(tok_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return PEFTD_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int tokenizer__buf_append(tok_buf *b, const void *p, size_t n) {
    int rc = tokenizer__buf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0; /* keep it a C string for callers that hand it out */
    return 0;
}

void tokenizer__buf_free(tok_buf *b) {
    free(b->data);
    memset(b, 0, sizeof(*b));
}

int tokenizer__pieces_push(tok_pieces *p, size_t off, size_t len, unsigned flags) {
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        tok_span *v = realloc(p->v, cap * sizeof(*v));
        if (!v) return PEFTD_ENOMEM;
        p->v = v;
        p->cap = cap;
    }
    p->v[p->n++] = (tok_span){off, len, flags};
    return 0;
}

int tokenizer__pieces_add(tok_pieces *p, const char *s, size_t len, unsigned flags) {
    size_t off = p->text.len;
    int rc = tokenizer__buf_append(&p->text, s, len);
    return rc ? rc : tokenizer__pieces_push(p, off, len, flags);
}

void tokenizer__pieces_reset(tok_pieces *p) {
    p->text.len = 0;
    p->n = 0;
}

void tokenizer__pieces_free(tok_pieces *p) {
    tokenizer__buf_free(&p->text);
    free(p->v);
    memset(p, 0, sizeof(*p));
}

/* Well-formed UTF-8 per Unicode Table 3-7. Returns the sequence length when s starts with a
 * complete well-formed sequence; otherwise 0 and *bad = the length of the maximal subpart
 * (the prefix of a well-formed sequence that is present, at least 1 byte). */
static size_t utf8_check(const unsigned char *s, size_t avail, size_t *bad) {
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c == 0xE0) { need = 3; lo = 0xA0; }
    else if (c == 0xED) { need = 3; hi = 0x9F; }
    else if (c >= 0xE1 && c <= 0xEF) need = 3;
    else if (c == 0xF0) { need = 4; lo = 0x90; }
    else if (c == 0xF4) { need = 4; hi = 0x8F; }
    else if (c >= 0xF1 && c <= 0xF3) need = 4;
    else { *bad = 1; return 0; }
    size_t i = 1;
    for (; i < need && i < avail; i++) {
        unsigned b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
    }
    if (i == need) return need;
    *bad = i;
    return 0;
}

size_t tokenizer__utf8_seq(const unsigned char *s, size_t avail) {
    size_t bad;
    return avail ? utf8_check(s, avail, &bad) : 0;
}

bool tokenizer__utf8_valid(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        if (u[i] < 0x80) { i++; continue; }
        size_t n = tokenizer__utf8_seq(u + i, len - i);
        if (!n) return false;
        i += n;
    }
    return true;
}

size_t tokenizer__utf8_next(const char *s, size_t len, int32_t *cp) {
    const unsigned char *u = (const unsigned char *)s;
    size_t n = tokenizer__utf8_seq(u, len);
    switch (n) {
    case 1: *cp = u[0]; break;
    case 2: *cp = ((u[0] & 0x1F) << 6) | (u[1] & 0x3F); break;
    case 3: *cp = ((u[0] & 0x0F) << 12) | ((u[1] & 0x3F) << 6) | (u[2] & 0x3F); break;
    case 4:
        *cp = ((u[0] & 0x07) << 18) | ((u[1] & 0x3F) << 12) | ((u[2] & 0x3F) << 6) | (u[3] & 0x3F);
        break;
    default: *cp = 0xFFFD; n = len ? 1 : 0; break;
    }
    return n;
}

size_t tokenizer__utf8_put(int32_t cp, char out[4]) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int tokenizer__utf8_lossy(tok_buf *out, const char *s, size_t len) {
    static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of the pending well-formed stretch */
    int rc = tokenizer__buf_reserve(out, len);
    if (rc) return rc;
    while (i < len) {
        size_t bad = 0, n = u[i] < 0x80 ? 1 : utf8_check(u + i, len - i, &bad);
        if (n) { i += n; continue; }
        if ((rc = tokenizer__buf_append(out, s + run, i - run))) return rc;
        if ((rc = tokenizer__buf_append(out, fffd, 3))) return rc;
        i += bad;
        run = i;
    }
    return tokenizer__buf_append(out, s + run, len - run);
}

/* GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the other 68 bytes
 * to U+0100.. in byte order, so every byte becomes a visible, non-space character. */
static tok_bytemap g_bytemap;
static pthread_once_t g_bytemap_once = PTHREAD_ONCE_INIT;

static void bytemap_init(void) {
    int next = 256;
    for (int i = 0; i < 324; i++) g_bytemap.dec[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        int cp = keep ? b : next++;
        char tmp[4];
        size_t n = tokenizer__utf8_put(cp, tmp);
        memcpy(g_bytemap.enc[b], tmp, n);
        g_bytemap.enc_len[b] = (uint8_t)n;
        g_bytemap.dec[cp] = (int16_t)b;
    }
}

const tok_bytemap *tokenizer__bytemap(void) {
    pthread_once(&g_bytemap_once, bytemap_init);
    return &g_bytemap;
}

void tokenizer__errf(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int tokenizer__regex_compile(tok_regex *re, const char *pattern, size_t len, bool literal,
                             char *err, size_t errlen) {
    int code = 0;
    PCRE2_SIZE off = 0;
    /* PCRE2 refuses UCP together with LITERAL; a literal needs no character classes. */
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    re->code = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &code, &off, NULL);
    if (!re->code) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof(msg));
        tokenizer__errf(err, errlen, "tokenizer.json: regex '%.*s' does not compile at offset %zu: %s",
                        (int)(len > 80 ? 80 : len), pattern, (size_t)off, (const char *)msg);
        return PEFTD_EFORMAT;
    }
    /* JIT is a speed-up only: a failure (no JIT support) leaves the interpreter in use. */
    (void)pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);
    return 0;
}

void tokenizer__regex_free(tok_regex *re) {
    if (re && re->code) pcre2_code_free(re->code);
    if (re) re->code = NULL;
}

/* One match at or after `start`; 1 found, 0 none, <0 error. Input is already valid UTF-8. */
static int regex_match_at(const tok_regex *re, pcre2_match_data *md, const char *s, size_t len,
                          size_t start, tok_match *m) {
    int rc = pcre2_match(re->code, (PCRE2_SPTR)s, len, start, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        /* Long whitespace runs can exhaust the JIT's small default stack; the interpreter
         * keeps its backtracking state on the heap. */
        rc = pcre2_match(re->code, (PCRE2_SPTR)s, len, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                         md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) return rc == PCRE2_ERROR_NOMEMORY ? PEFTD_ENOMEM : PEFTD_EINVAL;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    m->start = ov[0];
    m->end = ov[1];
    return 1;
}

int tokenizer__regex_find_all(const tok_regex *re, const char *s, size_t len, tok_match **out,
                              size_t *n_out) {
    tok_match *v = NULL, m;
    size_t n = 0, cap = 0, pos = 0;
    int rc = 0;
    *out = NULL;
    *n_out = 0;
    if (!re->code) return 0;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re->code, NULL);
    if (!md) return PEFTD_ENOMEM;
    while (pos <= len) {
        rc = regex_match_at(re, md, s, len, pos, &m);
        if (rc <= 0) break;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            tok_match *nv = realloc(v, cap * sizeof(*v));
            if (!nv) { rc = PEFTD_ENOMEM; break; }
            v = nv;
        }
        v[n++] = m;
        if (m.end > m.start) {
            pos = m.end;
        } else {
            /* An empty match: step over one character, as Oniguruma's find_iter does. */
            if (m.end >= len) break;
            int32_t cp;
            pos = m.end + tokenizer__utf8_next(s + m.end, len - m.end, &cp);
        }
    }
    pcre2_match_data_free(md);
    if (rc < 0) {
        free(v);
        return rc;
    }
    *out = v;
    *n_out = n;
    return 0;
}

int tokenizer__regex_replace(const tok_regex *re, const char *s, size_t len, const char *with,
                             size_t with_len, tok_buf *out) {
    tok_match *m = NULL;
    size_t n = 0, pos = 0;
    int rc = tokenizer__regex_find_all(re, s, len, &m, &n);
    if (rc) return rc;
    for (size_t i = 0; i < n && !rc; i++) {
        rc = tokenizer__buf_append(out, s + pos, m[i].start - pos);
        if (!rc) rc = tokenizer__buf_append(out, with, with_len);
        pos = m[i].end;
    }
    if (!rc) rc = tokenizer__buf_append(out, s + pos, len - pos);
    free(m);
    return rc;
}

int tokenizer__json_pattern(const cJSON *node, const char *where, tok_regex *re, char *err,
                            size_t errlen) {
    const cJSON *str = NULL, *rx = NULL;
    re->code = NULL;
    if (cJSON_IsString(node)) str = node;
    else if (cJSON_IsObject(node)) {
        str = cJSON_GetObjectItemCaseSensitive(node, "String");
        rx = cJSON_GetObjectItemCaseSensitive(node, "Regex");
    }
    if (rx && cJSON_IsString(rx))
        return tokenizer__regex_compile(re, rx->valuestring, strlen(rx->valuestring), false, err, errlen);
    if (str && cJSON_IsString(str)) {
        size_t n = strlen(str->valuestring);
        /* An empty literal never matches in `tokenizers`; a NULL code means the same here. */
        return n ? tokenizer__regex_compile(re, str->valuestring, n, true, err, errlen) : 0;
    }
    tokenizer__errf(err, errlen,
                    "tokenizer.json: %s: pattern must be a string, {\"String\": ...} or {\"Regex\": ...}",
                    where);
    return PEFTD_EFORMAT;
}

bool tokenizer__is_space(int32_t cp) {
    /* Unicode White_Space (what Rust's char::is_whitespace tests). */
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}
