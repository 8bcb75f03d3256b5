/* server/text/tokenizer_pretok.c — tokenizer.json pre-tokenizers: Split (PCRE2 regex exactly as
 * written, or a literal; all five split behaviours, invert), ByteLevel (GPT-2 regex, prefix
 * space, byte -> printable character map), Metaspace (prepend schemes always/first/never,
 * optional split), Digits, Sequence. Others are refused at load with an error naming them.
 *
 * A pre-tokenizer rewrites a list of pieces into a new list; empty pieces are dropped, as
 * `tokenizers` drops empty splits. TOK_SPAN_START marks the piece that begins at offset 0 of
 * the original text (Metaspace's "first" scheme prepends only there).
 */
#include <stdlib.h>
#include <string.h>

#include "lib/status.h"
#include "server/text/tokenizer_internal.h"

/* The regex `tokenizers` hard-codes for ByteLevel(use_regex=true) (GPT-2's). */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

typedef enum { PRE_SEQUENCE, PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE } pre_kind;

typedef enum {
    SPLIT_REMOVED,
    SPLIT_ISOLATED,
    SPLIT_MERGED_PREV,
    SPLIT_MERGED_NEXT,
    SPLIT_CONTIGUOUS,
} split_behavior;

typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_scheme;

struct tok_pretok {
    pre_kind kind;
    tok_pretok **kids;
    size_t n_kids;
    tok_regex re;             /* Split pattern; ByteLevel GPT-2 regex (use_regex); Metaspace split */
    split_behavior behavior;
    bool invert;
    bool add_prefix_space;    /* ByteLevel */
    bool use_regex;           /* ByteLevel */
    char repl[8];             /* Metaspace replacement character (UTF-8) */
    size_t repl_len;
    prepend_scheme scheme;    /* Metaspace */
    bool split;               /* Metaspace */
};

void tokenizer__pretok_free(tok_pretok *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n_kids; i++) tokenizer__pretok_free(p->kids[i]);
    free(p->kids);
    tokenizer__regex_free(&p->re);
    free(p);
}

static bool json_bool(const cJSON *obj, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static int parse_split(const cJSON *node, tok_pretok *p, char *err, size_t errlen) {
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                  "Contiguous"};
    const cJSON *beh = cJSON_GetObjectItemCaseSensitive(node, "behavior");
    int rc = tokenizer__json_pattern(cJSON_GetObjectItemCaseSensitive(node, "pattern"),
                                     "pre_tokenizer Split.pattern", &p->re, err, errlen);
    if (rc) return rc;
    if (!cJSON_IsString(beh)) {
        tokenizer__errf(err, errlen, "tokenizer.json: pre_tokenizer Split needs a \"behavior\" string");
        return PEFTD_EFORMAT;
    }
    for (int i = 0; i < 5; i++)
        if (!strcmp(beh->valuestring, names[i])) {
            p->behavior = (split_behavior)i;
            p->invert = json_bool(node, "invert", false);
            return 0;
        }
    tokenizer__errf(err, errlen, "tokenizer.json: unsupported Split behavior '%s'", beh->valuestring);
    return PEFTD_EUNSUPPORTED;
}

static int parse_metaspace(const cJSON *node, tok_pretok *p, char *err, size_t errlen) {
    const cJSON *repl = cJSON_GetObjectItemCaseSensitive(node, "replacement");
    const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(node, "prepend_scheme");
    if (!cJSON_IsString(repl) || !repl->valuestring[0] ||
        tokenizer__utf8_seq((const unsigned char *)repl->valuestring, strlen(repl->valuestring)) !=
            strlen(repl->valuestring)) {
        tokenizer__errf(err, errlen, "tokenizer.json: Metaspace replacement must be one character");
        return PEFTD_EFORMAT;
    }
    p->repl_len = strlen(repl->valuestring);
    memcpy(p->repl, repl->valuestring, p->repl_len);
    if (cJSON_IsString(scheme)) {
        if (!strcmp(scheme->valuestring, "always")) p->scheme = PREPEND_ALWAYS;
        else if (!strcmp(scheme->valuestring, "first")) p->scheme = PREPEND_FIRST;
        else if (!strcmp(scheme->valuestring, "never")) p->scheme = PREPEND_NEVER;
        else {
            tokenizer__errf(err, errlen, "tokenizer.json: unsupported Metaspace prepend_scheme '%s'",
                            scheme->valuestring);
            return PEFTD_EUNSUPPORTED;
        }
    } else {
        /* Files from tokenizers < 0.14 say add_prefix_space instead (true = always). */
        p->scheme = json_bool(node, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
    }
    p->split = json_bool(node, "split", true);
    if (p->split) {
        p->behavior = SPLIT_MERGED_NEXT;
        return tokenizer__regex_compile(&p->re, p->repl, p->repl_len, true, err, errlen);
    }
    return 0;
}

int tokenizer__pretok_parse(const cJSON *node, tok_pretok **out, char *err, size_t errlen) {
    *out = NULL;
    if (!node || cJSON_IsNull(node)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (!cJSON_IsObject(node) || !cJSON_IsString(type)) {
        tokenizer__errf(err, errlen, "tokenizer.json: pre_tokenizer must be null or an object with a \"type\"");
        return PEFTD_EFORMAT;
    }
    const char *ty = type->valuestring;
    tok_pretok *p = calloc(1, sizeof(*p));
    int rc = 0;
    if (!p) return PEFTD_ENOMEM;
    if (!strcmp(ty, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(node, "pretokenizers"), *it;
        p->kind = PRE_SEQUENCE;
        if (!cJSON_IsArray(list)) {
            tokenizer__errf(err, errlen, "tokenizer.json: pre_tokenizer Sequence needs a \"pretokenizers\" list");
            rc = PEFTD_EFORMAT;
            goto fail;
        }
        int k = cJSON_GetArraySize(list);
        p->kids = calloc(k ? (size_t)k : 1, sizeof(*p->kids));
        if (!p->kids) { rc = PEFTD_ENOMEM; goto fail; }
        cJSON_ArrayForEach(it, list) {
            tok_pretok *kid = NULL;
            if ((rc = tokenizer__pretok_parse(it, &kid, err, errlen))) goto fail;
            if (kid) p->kids[p->n_kids++] = kid;
        }
    } else if (!strcmp(ty, "Split")) {
        p->kind = PRE_SPLIT;
        if ((rc = parse_split(node, p, err, errlen))) goto fail;
    } else if (!strcmp(ty, "ByteLevel")) {
        p->kind = PRE_BYTELEVEL;
        p->add_prefix_space = json_bool(node, "add_prefix_space", true);
        p->use_regex = json_bool(node, "use_regex", true);
        p->behavior = SPLIT_ISOLATED;
        if (p->use_regex &&
            (rc = tokenizer__regex_compile(&p->re, GPT2_PATTERN, sizeof(GPT2_PATTERN) - 1, false, err, errlen)))
            goto fail;
    } else if (!strcmp(ty, "Metaspace")) {
        p->kind = PRE_METASPACE;
        if ((rc = parse_metaspace(node, p, err, errlen))) goto fail;
    } else if (!strcmp(ty, "Digits")) {
        /* Digits = Split on char::is_numeric (\p{N}): each digit alone, or runs kept together. */
        p->kind = PRE_SPLIT;
        p->behavior = json_bool(node, "individual_digits", false) ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS;
        if ((rc = tokenizer__regex_compile(&p->re, "\\p{N}", 5, false, err, errlen))) goto fail;
    } else {
        tokenizer__errf(err, errlen, "tokenizer.json: unsupported pre_tokenizer type '%s'", ty);
        rc = PEFTD_EUNSUPPORTED;
        goto fail;
    }
    *out = p;
    return 0;
fail:
    tokenizer__pretok_free(p);
    return rc;
}

/* One split segment: [start, end) of the piece and whether it is a pattern match. */
typedef struct {
    size_t start, end;
    bool match;
} seg;

/* Splits one piece s[0..len) by re with the given behaviour (NormalizedString::split), adding
 * the non-empty results to out. */
static int split_piece(const tok_regex *re, split_behavior beh, bool invert, const char *s,
                       size_t len, unsigned flags, tok_pieces *out) {
    tok_match *m = NULL;
    size_t nm = 0, ns = 0, prev = 0;
    int rc = tokenizer__regex_find_all(re, s, len, &m, &nm);
    if (rc) return rc;
    seg *v = malloc((2 * nm + 2) * sizeof(*v));
    if (!v) { free(m); return PEFTD_ENOMEM; }
    for (size_t i = 0; i < nm; i++) {
        if (m[i].start != prev) v[ns++] = (seg){prev, m[i].start, false};
        v[ns++] = (seg){m[i].start, m[i].end, true};
        prev = m[i].end;
    }
    if (prev != len || ns == 0) v[ns++] = (seg){prev, len, false};
    free(m);
    if (invert)
        for (size_t i = 0; i < ns; i++) v[i].match = !v[i].match;

    /* Fold the segments per behaviour; `keep[i]` = false drops segment i (Removed). */
    size_t nout = 0;
    bool prev_match = false;
    switch (beh) {
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < ns; i++) v[nout++] = (seg){v[i].start, v[i].end, false};
        break;
    case SPLIT_REMOVED:
        for (size_t i = 0; i < ns; i++)
            if (!v[i].match) v[nout++] = v[i];
        break;
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < ns; i++) {
            if (nout && v[i].match == prev_match) v[nout - 1].end = v[i].end;
            else v[nout++] = (seg){v[i].start, v[i].end, false};
            prev_match = v[i].match;
        }
        break;
    case SPLIT_MERGED_PREV:
        for (size_t i = 0; i < ns; i++) {
            if (v[i].match && !prev_match && nout) v[nout - 1].end = v[i].end;
            else v[nout++] = (seg){v[i].start, v[i].end, false};
            prev_match = v[i].match;
        }
        break;
    case SPLIT_MERGED_NEXT: {
        /* Walk backwards: a match glues onto the segment that follows it. */
        size_t w = ns;
        for (size_t k = ns; k-- > 0;) {
            if (v[k].match && !prev_match && w < ns) v[w].start = v[k].start;
            else v[--w] = (seg){v[k].start, v[k].end, false};
            prev_match = v[k].match;
        }
        memmove(v, v + w, (ns - w) * sizeof(*v));
        nout = ns - w;
        break;
    }
    }
    for (size_t i = 0; i < nout && !rc; i++)
        if (v[i].end > v[i].start)
            rc = tokenizer__pieces_add(out, s + v[i].start, v[i].end - v[i].start,
                                       v[i].start == 0 ? flags : 0);
    free(v);
    return rc;
}

static int metaspace_piece(const tok_pretok *p, const char *s, size_t len, unsigned flags,
                           tok_pieces *out) {
    tok_buf b = {0};
    int rc = 0;
    for (size_t i = 0; i < len && !rc; i++)
        rc = s[i] == ' ' ? tokenizer__buf_append(&b, p->repl, p->repl_len) : tokenizer__buf_append(&b, s + i, 1);
    if (rc) goto done;
    bool starts = b.len >= p->repl_len && !memcmp(b.data, p->repl, p->repl_len);
    bool prepend = len && !starts &&
                   (p->scheme == PREPEND_ALWAYS || (p->scheme == PREPEND_FIRST && (flags & TOK_SPAN_START)));
    if (prepend) {
        tok_buf c = {0};
        rc = tokenizer__buf_append(&c, p->repl, p->repl_len);
        if (!rc) rc = tokenizer__buf_append(&c, b.data, b.len);
        tokenizer__buf_free(&b);
        b = c;
        if (rc) goto done;
    }
    if (p->split) rc = split_piece(&p->re, SPLIT_MERGED_NEXT, false, b.data, b.len, flags, out);
    else if (b.len) rc = tokenizer__pieces_add(out, b.data, b.len, flags);
done:
    tokenizer__buf_free(&b);
    return rc;
}

static int bytelevel_piece(const tok_pretok *p, const char *s, size_t len, unsigned flags,
                           tok_pieces *out) {
    const tok_bytemap *bm = tokenizer__bytemap();
    tok_buf pre = {0};
    size_t first = out->n;
    int rc = 0;
    if (p->add_prefix_space && len && s[0] != ' ') {
        if ((rc = tokenizer__buf_append(&pre, " ", 1)) || (rc = tokenizer__buf_append(&pre, s, len))) goto done;
        s = pre.data;
        len = pre.len;
    }
    if (p->use_regex) rc = split_piece(&p->re, SPLIT_ISOLATED, false, s, len, flags, out);
    else if (len) rc = tokenizer__pieces_add(out, s, len, flags);
    if (rc) goto done;
    /* Map each new piece's bytes to the printable characters, appending the mapped text at the
     * end of the buffer and re-pointing the span there. */
    for (size_t i = first; i < out->n && !rc; i++) {
        size_t off = out->v[i].off, n = out->v[i].len, noff = out->text.len;
        if ((rc = tokenizer__buf_reserve(&out->text, 2 * n))) break;
        for (size_t j = 0; j < n; j++) {
            unsigned char c = (unsigned char)out->text.data[off + j];
            memcpy(out->text.data + out->text.len, bm->enc[c], bm->enc_len[c]);
            out->text.len += bm->enc_len[c];
        }
        out->v[i].off = noff;
        out->v[i].len = out->text.len - noff;
    }
done:
    tokenizer__buf_free(&pre);
    return rc;
}

static int pretok_one(const tok_pretok *p, const tok_pieces *in, tok_pieces *out) {
    int rc = 0;
    tokenizer__pieces_reset(out);
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *s = in->text.data + in->v[i].off;
        size_t len = in->v[i].len;
        unsigned fl = in->v[i].flags;
        switch (p->kind) {
        case PRE_SPLIT: rc = split_piece(&p->re, p->behavior, p->invert, s, len, fl, out); break;
        case PRE_BYTELEVEL: rc = bytelevel_piece(p, s, len, fl, out); break;
        case PRE_METASPACE: rc = metaspace_piece(p, s, len, fl, out); break;
        case PRE_SEQUENCE: rc = PEFTD_EINVAL; break;
        }
    }
    return rc;
}

int tokenizer__pretokenize(const tok_pretok *p, tok_pieces *io, tok_pieces *scratch) {
    if (!p) return 0;
    if (p->kind != PRE_SEQUENCE) {
        int rc = pretok_one(p, io, scratch);
        if (!rc) {
            tok_pieces sw = *io;
            *io = *scratch;
            *scratch = sw;
        }
        return rc;
    }
    for (size_t i = 0; i < p->n_kids; i++) {
        int rc = tokenizer__pretokenize(p->kids[i], io, scratch);
        if (rc) return rc;
    }
    return 0;
}
