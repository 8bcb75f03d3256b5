/* server/text/tokenizer_normalize.c — tokenizer.json normalizers: NFC/NFD/NFKC/NFKD (utf8proc),
 * Lowercase, Prepend, Replace (literal or regex), Strip, Sequence. Anything else is refused
 * at load time with an error naming the type.
 */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "lib/status.h"
#include "server/text/tokenizer_internal.h"

typedef enum {
    NORM_SEQUENCE,
    NORM_NFC,
    NORM_NFD,
    NORM_NFKC,
    NORM_NFKD,
    NORM_LOWERCASE,
    NORM_PREPEND,
    NORM_REPLACE,
    NORM_STRIP,
} norm_kind;

struct tok_normalizer {
    norm_kind kind;
    tok_normalizer **kids; /* NORM_SEQUENCE */
    size_t n_kids;
    char *text;            /* Prepend: prepend; Replace: content */
    size_t text_len;
    tok_regex re;          /* Replace: pattern */
    bool left, right;      /* Strip */
};

void tokenizer__normalizer_free(tok_normalizer *n) {
    if (!n) return;
    for (size_t i = 0; i < n->n_kids; i++) tokenizer__normalizer_free(n->kids[i]);
    free(n->kids);
    free(n->text);
    tokenizer__regex_free(&n->re);
    free(n);
}

static int dup_string(const cJSON *node, const char *what, char **out, size_t *len, char *err,
                      size_t errlen) {
    if (!cJSON_IsString(node)) {
        tokenizer__errf(err, errlen, "tokenizer.json: normalizer %s must be a string", what);
        return PEFTD_EFORMAT;
    }
    *len = strlen(node->valuestring);
    *out = strdup(node->valuestring);
    return *out ? 0 : PEFTD_ENOMEM;
}

int tokenizer__normalizer_parse(const cJSON *node, tok_normalizer **out, char *err, size_t errlen) {
    *out = NULL;
    if (!node || cJSON_IsNull(node)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (!cJSON_IsObject(node) || !cJSON_IsString(type)) {
        tokenizer__errf(err, errlen, "tokenizer.json: normalizer must be null or an object with a \"type\"");
        return PEFTD_EFORMAT;
    }
    const char *ty = type->valuestring;
    tok_normalizer *n = calloc(1, sizeof(*n));
    int rc = 0;
    if (!n) return PEFTD_ENOMEM;
    if (!strcmp(ty, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(node, "normalizers");
        n->kind = NORM_SEQUENCE;
        if (!cJSON_IsArray(list)) {
            tokenizer__errf(err, errlen, "tokenizer.json: normalizer Sequence needs a \"normalizers\" list");
            rc = PEFTD_EFORMAT;
            goto fail;
        }
        int k = cJSON_GetArraySize(list);
        n->kids = calloc(k ? (size_t)k : 1, sizeof(*n->kids));
        if (!n->kids) { rc = PEFTD_ENOMEM; goto fail; }
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            tok_normalizer *kid = NULL;
            if ((rc = tokenizer__normalizer_parse(it, &kid, err, errlen))) goto fail;
            if (kid) n->kids[n->n_kids++] = kid;
        }
    } else if (!strcmp(ty, "NFC")) {
        n->kind = NORM_NFC;
    } else if (!strcmp(ty, "NFD")) {
        n->kind = NORM_NFD;
    } else if (!strcmp(ty, "NFKC")) {
        n->kind = NORM_NFKC;
    } else if (!strcmp(ty, "NFKD")) {
        n->kind = NORM_NFKD;
    } else if (!strcmp(ty, "Lowercase")) {
        n->kind = NORM_LOWERCASE;
    } else if (!strcmp(ty, "Prepend")) {
        n->kind = NORM_PREPEND;
        rc = dup_string(cJSON_GetObjectItemCaseSensitive(node, "prepend"), "Prepend.prepend", &n->text,
                        &n->text_len, err, errlen);
        if (rc) goto fail;
    } else if (!strcmp(ty, "Replace")) {
        n->kind = NORM_REPLACE;
        rc = dup_string(cJSON_GetObjectItemCaseSensitive(node, "content"), "Replace.content", &n->text,
                        &n->text_len, err, errlen);
        if (rc) goto fail;
        rc = tokenizer__json_pattern(cJSON_GetObjectItemCaseSensitive(node, "pattern"),
                                     "normalizer Replace.pattern", &n->re, err, errlen);
        if (rc) goto fail;
    } else if (!strcmp(ty, "Strip")) {
        n->kind = NORM_STRIP;
        n->left = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(node, "strip_left"));
        n->right = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(node, "strip_right"));
    } else {
        tokenizer__errf(err, errlen, "tokenizer.json: unsupported normalizer type '%s'", ty);
        rc = PEFTD_EUNSUPPORTED;
        goto fail;
    }
    *out = n;
    return 0;
fail:
    tokenizer__normalizer_free(n);
    return rc;
}

static int apply_utf8proc(const char *in, size_t len, utf8proc_option_t opts, tok_buf *out) {
    utf8proc_uint8_t *res = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)in, (utf8proc_ssize_t)len, &res,
                                      opts | UTF8PROC_STABLE);
    if (n < 0) return n == UTF8PROC_ERROR_NOMEM ? PEFTD_ENOMEM : PEFTD_EINVAL;
    int rc = tokenizer__buf_append(out, res, (size_t)n);
    free(res);
    return rc;
}

static int apply_lowercase(const char *in, size_t len, tok_buf *out) {
    size_t i = 0;
    while (i < len) {
        int32_t cp;
        char enc[8];
        size_t k = tokenizer__utf8_next(in + i, len - i, &cp), m;
        i += k;
        if (cp == 0x130) {
            /* Rust's char::to_lowercase: the one unconditional multi-char lowercase mapping
             * (LATIN CAPITAL I WITH DOT ABOVE -> i + COMBINING DOT ABOVE). */
            m = tokenizer__utf8_put('i', enc);
            m += tokenizer__utf8_put(0x307, enc + m);
        } else {
            m = tokenizer__utf8_put(utf8proc_tolower(cp), enc);
        }
        int rc = tokenizer__buf_append(out, enc, m);
        if (rc) return rc;
    }
    return 0;
}

static int apply_strip(const tok_normalizer *n, const char *in, size_t len, tok_buf *out) {
    size_t a = 0, b = len;
    while (n->left && a < b) {
        int32_t cp;
        size_t k = tokenizer__utf8_next(in + a, b - a, &cp);
        if (!tokenizer__is_space(cp)) break;
        a += k;
    }
    while (n->right && b > a) {
        size_t s = b - 1;
        while (s > a && ((unsigned char)in[s] & 0xC0) == 0x80) s--;
        int32_t cp;
        tokenizer__utf8_next(in + s, b - s, &cp);
        if (!tokenizer__is_space(cp)) break;
        b = s;
    }
    return tokenizer__buf_append(out, in + a, b - a);
}

/* Applies one normalizer, in -> out (out is empty on entry). */
static int apply_one(const tok_normalizer *n, const char *in, size_t len, tok_buf *out) {
    switch (n->kind) {
    case NORM_NFC: return apply_utf8proc(in, len, UTF8PROC_COMPOSE, out);
    case NORM_NFD: return apply_utf8proc(in, len, UTF8PROC_DECOMPOSE, out);
    case NORM_NFKC: return apply_utf8proc(in, len, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, out);
    case NORM_NFKD: return apply_utf8proc(in, len, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, out);
    case NORM_LOWERCASE: return apply_lowercase(in, len, out);
    case NORM_PREPEND: {
        /* `tokenizers` prepends nothing to an empty string. */
        int rc = len ? tokenizer__buf_append(out, n->text, n->text_len) : 0;
        return rc ? rc : tokenizer__buf_append(out, in, len);
    }
    case NORM_REPLACE: return tokenizer__regex_replace(&n->re, in, len, n->text, n->text_len, out);
    case NORM_STRIP: return apply_strip(n, in, len, out);
    case NORM_SEQUENCE: break;
    }
    return PEFTD_EINVAL;
}

int tokenizer__normalize(const tok_normalizer *n, const char *in, size_t len, tok_buf *out) {
    out->len = 0;
    if (!n) return tokenizer__buf_append(out, in, len);
    if (n->kind != NORM_SEQUENCE) return apply_one(n, in, len, out);
    /* Ping-pong between out and a scratch buffer, one normalizer at a time. */
    tok_buf tmp = {0};
    int rc = tokenizer__buf_append(out, in, len);
    for (size_t i = 0; i < n->n_kids && !rc; i++) {
        tmp.len = 0;
        rc = tokenizer__normalize(n->kids[i], out->data, out->len, &tmp);
        if (!rc) {
            tok_buf sw = *out;
            *out = tmp;
            tmp = sw;
        }
    }
    tokenizer__buf_free(&tmp);
    return rc;
}
