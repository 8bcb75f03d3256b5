/* server/model/tokenizer_decode.c — ids -> text: tokenizer.json decoders (Replace, ByteFallback,
 * Fuse, Strip, ByteLevel, Metaspace, Sequence), HF `decode(skip_special_tokens)`, and the
 * incremental stream used for token-by-token output.
 *
 * Decoders work like `tokenizers`' decode_chain: each one maps a list of token strings to a
 * new list, and the result is their concatenation.
 *
 * The stream keeps a small window of ids (HF DecodeStream / vLLM style): each push decodes the
 * window with and without the new id and emits the difference, holding text back while it
 * ends in U+FFFD (an incomplete UTF-8 character from byte tokens). The window is decoded in
 * "continuation" mode once earlier text exists, so rules that apply only at the start of a
 * text (Strip of the fused text, Metaspace's first token) are not applied again mid-stream.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/util/status.h"
#include "server/model/tokenizer_internal.h"

typedef enum { DEC_SEQUENCE, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_BYTELEVEL, DEC_METASPACE } dec_kind;

struct tok_decoder {
    dec_kind kind;
    tok_decoder **kids;
    size_t n_kids;
    tok_regex re;        /* Replace pattern */
    char *content;       /* Replace content; Strip / Metaspace character */
    size_t content_len;
    int start, stop;     /* Strip */
    bool prepend;        /* Metaspace: prepend_scheme != never (first token loses its marks) */
};

void tokenizer__decoder_free(tok_decoder *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n_kids; i++) tokenizer__decoder_free(d->kids[i]);
    free(d->kids);
    tokenizer__regex_free(&d->re);
    free(d->content);
    free(d);
}

static int one_char(const cJSON *v, const char *what, char **out, size_t *len, char *err, size_t errlen) {
    size_t n = cJSON_IsString(v) ? strlen(v->valuestring) : 0;
    if (!n || tokenizer__utf8_seq((const unsigned char *)v->valuestring, n) != n) {
        tokenizer__errf(err, errlen, "tokenizer.json: decoder %s must be one character", what);
        return PEFTD_EFORMAT;
    }
    *out = strdup(v->valuestring);
    *len = n;
    return *out ? 0 : PEFTD_ENOMEM;
}

int tokenizer__decoder_parse(const cJSON *node, tok_decoder **out, char *err, size_t errlen) {
    *out = NULL;
    if (!node || cJSON_IsNull(node)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (!cJSON_IsObject(node) || !cJSON_IsString(type)) {
        tokenizer__errf(err, errlen, "tokenizer.json: decoder must be null or an object with a \"type\"");
        return PEFTD_EFORMAT;
    }
    const char *ty = type->valuestring;
    tok_decoder *d = calloc(1, sizeof(*d));
    int rc = 0;
    if (!d) return PEFTD_ENOMEM;
    if (!strcmp(ty, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(node, "decoders"), *it;
        d->kind = DEC_SEQUENCE;
        if (!cJSON_IsArray(list)) {
            tokenizer__errf(err, errlen, "tokenizer.json: decoder Sequence needs a \"decoders\" list");
            rc = PEFTD_EFORMAT;
            goto fail;
        }
        int k = cJSON_GetArraySize(list);
        d->kids = calloc(k ? (size_t)k : 1, sizeof(*d->kids));
        if (!d->kids) { rc = PEFTD_ENOMEM; goto fail; }
        cJSON_ArrayForEach(it, list) {
            tok_decoder *kid = NULL;
            if ((rc = tokenizer__decoder_parse(it, &kid, err, errlen))) goto fail;
            if (kid) d->kids[d->n_kids++] = kid;
        }
    } else if (!strcmp(ty, "Replace")) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(node, "content");
        d->kind = DEC_REPLACE;
        if (!cJSON_IsString(c)) {
            tokenizer__errf(err, errlen, "tokenizer.json: decoder Replace needs a \"content\" string");
            rc = PEFTD_EFORMAT;
            goto fail;
        }
        d->content = strdup(c->valuestring);
        d->content_len = strlen(c->valuestring);
        if (!d->content) { rc = PEFTD_ENOMEM; goto fail; }
        rc = tokenizer__json_pattern(cJSON_GetObjectItemCaseSensitive(node, "pattern"), "decoder Replace.pattern",
                                     &d->re, err, errlen);
        if (rc) goto fail;
    } else if (!strcmp(ty, "ByteFallback")) {
        d->kind = DEC_BYTEFALLBACK;
    } else if (!strcmp(ty, "Fuse")) {
        d->kind = DEC_FUSE;
    } else if (!strcmp(ty, "Strip")) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(node, "start");
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(node, "stop");
        d->kind = DEC_STRIP;
        if ((rc = one_char(cJSON_GetObjectItemCaseSensitive(node, "content"), "Strip.content", &d->content,
                           &d->content_len, err, errlen)))
            goto fail;
        if (!cJSON_IsNumber(st) || !cJSON_IsNumber(sp) || st->valuedouble < 0 || sp->valuedouble < 0 ||
            st->valuedouble > 1e6 || sp->valuedouble > 1e6) {
            tokenizer__errf(err, errlen, "tokenizer.json: decoder Strip needs non-negative \"start\" and \"stop\"");
            rc = PEFTD_EFORMAT;
            goto fail;
        }
        d->start = (int)st->valuedouble;
        d->stop = (int)sp->valuedouble;
    } else if (!strcmp(ty, "ByteLevel")) {
        d->kind = DEC_BYTELEVEL;
    } else if (!strcmp(ty, "Metaspace")) {
        const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(node, "prepend_scheme");
        const cJSON *aps = cJSON_GetObjectItemCaseSensitive(node, "add_prefix_space");
        d->kind = DEC_METASPACE;
        if ((rc = one_char(cJSON_GetObjectItemCaseSensitive(node, "replacement"), "Metaspace.replacement",
                           &d->content, &d->content_len, err, errlen)))
            goto fail;
        if (cJSON_IsString(scheme)) d->prepend = strcmp(scheme->valuestring, "never") != 0;
        else d->prepend = !cJSON_IsFalse(aps);
    } else {
        tokenizer__errf(err, errlen, "tokenizer.json: unsupported decoder type '%s'", ty);
        rc = PEFTD_EUNSUPPORTED;
        goto fail;
    }
    *out = d;
    return 0;
fail:
    tokenizer__decoder_free(d);
    return rc;
}

/* Chain state: the token list and whether it has been fused into the text's single string. */
typedef struct {
    tok_pieces *toks;
    bool fused;
    bool cont;
} dec_state;

#define TOK_STR(p, i) ((p)->text.data + (p)->v[i].off)

static int dec_replace(const tok_decoder *d, const tok_pieces *in, tok_pieces *out) {
    for (size_t i = 0; i < in->n; i++) {
        size_t off = out->text.len;
        int rc = tokenizer__regex_replace(&d->re, TOK_STR(in, i), in->v[i].len, d->content, d->content_len,
                                          &out->text);
        if (!rc) rc = tokenizer__pieces_push(out, off, out->text.len - off, 0);
        if (rc) return rc;
    }
    return 0;
}

/* Parses "<0xNN>" (exactly 6 bytes, any hex case) into *b. */
static bool byte_token(const char *s, size_t len, unsigned char *b) {
    if (len != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return false;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        char c = s[k];
        int x = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (x < 0) return false;
        v = v * 16 + x;
    }
    *b = (unsigned char)v;
    return true;
}

/* Flushes pending fallback bytes: one token when they form valid UTF-8, else one U+FFFD per byte. */
static int flush_bytes(tok_buf *bytes, tok_pieces *out) {
    int rc = 0;
    if (!bytes->len) return 0;
    if (tokenizer__utf8_valid(bytes->data, bytes->len)) {
        rc = tokenizer__pieces_add(out, bytes->data, bytes->len, 0);
    } else {
        for (size_t k = 0; k < bytes->len && !rc; k++) rc = tokenizer__pieces_add(out, "\xEF\xBF\xBD", 3, 0);
    }
    bytes->len = 0;
    return rc;
}

static int dec_bytefallback(const tok_pieces *in, tok_pieces *out) {
    tok_buf bytes = {0};
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        unsigned char b;
        if (byte_token(TOK_STR(in, i), in->v[i].len, &b)) {
            rc = tokenizer__buf_append(&bytes, &b, 1);
        } else {
            rc = flush_bytes(&bytes, out);
            if (!rc) rc = tokenizer__pieces_add(out, TOK_STR(in, i), in->v[i].len, 0);
        }
    }
    if (!rc) rc = flush_bytes(&bytes, out);
    tokenizer__buf_free(&bytes);
    return rc;
}

static int dec_fuse(const tok_pieces *in, tok_pieces *out) {
    size_t off = out->text.len;
    for (size_t i = 0; i < in->n; i++) {
        int rc = tokenizer__buf_append(&out->text, TOK_STR(in, i), in->v[i].len);
        if (rc) return rc;
    }
    return tokenizer__pieces_push(out, off, out->text.len - off, 0);
}

static int dec_strip(const tok_decoder *d, const dec_state *st, const tok_pieces *in, tok_pieces *out) {
    for (size_t i = 0; i < in->n; i++) {
        const char *s = TOK_STR(in, i);
        size_t len = in->v[i].len, a = 0, b = len, cl = d->content_len;
        /* A fused continuation window is the middle of a text whose start was already stripped. */
        int start = (st->cont && st->fused && i == 0) ? 0 : d->start;
        for (int k = 0; k < start && a + cl <= b && !memcmp(s + a, d->content, cl); k++) a += cl;
        for (int k = 0; k < d->stop && b >= a + cl && !memcmp(s + b - cl, d->content, cl); k++) b -= cl;
        int rc = tokenizer__pieces_add(out, s + a, b - a, 0);
        if (rc) return rc;
    }
    return 0;
}

static int dec_bytelevel(const tok_pieces *in, tok_pieces *out) {
    const tok_bytemap *bm = tokenizer__bytemap();
    tok_buf bytes = {0};
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *s = TOK_STR(in, i);
        size_t len = in->v[i].len;
        for (size_t j = 0; j < len && !rc;) {
            int32_t cp;
            size_t k = tokenizer__utf8_next(s + j, len - j, &cp);
            if (cp < 324 && bm->dec[cp] >= 0) {
                unsigned char b = (unsigned char)bm->dec[cp];
                rc = tokenizer__buf_append(&bytes, &b, 1);
            } else {
                /* Characters outside the byte map (e.g. in added tokens) pass through as UTF-8. */
                rc = tokenizer__buf_append(&bytes, s + j, k);
            }
            j += k;
        }
    }
    if (!rc) {
        size_t off = out->text.len;
        rc = tokenizer__utf8_lossy(&out->text, bytes.data ? bytes.data : "", bytes.len);
        if (!rc) rc = tokenizer__pieces_push(out, off, out->text.len - off, 0);
    }
    tokenizer__buf_free(&bytes);
    return rc;
}

static int dec_metaspace(const tok_decoder *d, const dec_state *st, const tok_pieces *in, tok_pieces *out) {
    for (size_t i = 0; i < in->n; i++) {
        const char *s = TOK_STR(in, i);
        size_t len = in->v[i].len, off = out->text.len, cl = d->content_len;
        /* `tokenizers` drops every replacement mark of the text's first token (not just one). */
        bool first = i == 0 && !st->cont && d->prepend;
        int rc = 0;
        for (size_t j = 0; j < len && !rc;) {
            if (j + cl <= len && !memcmp(s + j, d->content, cl)) {
                if (!first) rc = tokenizer__buf_append(&out->text, " ", 1);
                j += cl;
            } else {
                rc = tokenizer__buf_append(&out->text, s + j, 1);
                j++;
            }
        }
        if (!rc) rc = tokenizer__pieces_push(out, off, out->text.len - off, 0);
        if (rc) return rc;
    }
    return 0;
}

static int dec_apply(const tok_decoder *d, dec_state *st, tok_pieces *scratch) {
    if (d->kind == DEC_SEQUENCE) {
        for (size_t i = 0; i < d->n_kids; i++) {
            int rc = dec_apply(d->kids[i], st, scratch);
            if (rc) return rc;
        }
        return 0;
    }
    tokenizer__pieces_reset(scratch);
    int rc = 0;
    switch (d->kind) {
    case DEC_REPLACE: rc = dec_replace(d, st->toks, scratch); break;
    case DEC_BYTEFALLBACK: rc = dec_bytefallback(st->toks, scratch); break;
    case DEC_FUSE: rc = dec_fuse(st->toks, scratch); st->fused = true; break;
    case DEC_STRIP: rc = dec_strip(d, st, st->toks, scratch); break;
    case DEC_BYTELEVEL: rc = dec_bytelevel(st->toks, scratch); st->fused = true; break;
    case DEC_METASPACE: rc = dec_metaspace(d, st, st->toks, scratch); break;
    case DEC_SEQUENCE: break;
    }
    if (!rc) {
        tok_pieces sw = *st->toks;
        *st->toks = *scratch;
        *scratch = sw;
    }
    return rc;
}

int tokenizer__decode_ids(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special, bool cont,
                          tok_buf *out) {
    tok_pieces toks = {0}, scratch = {0};
    int rc = 0;
    out->len = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        int32_t id = ids[i];
        /* Unknown ids are skipped, as `tokenizers` does (id_to_token gives None). */
        if (id < 0 || id >= t->n_pieces || !t->piece[id]) continue;
        if (skip_special && t->special[id]) continue;
        rc = tokenizer__pieces_add(&toks, t->piece[id], t->piece_len[id], 0);
    }
    if (!rc && t->decoder) {
        dec_state st = {&toks, false, cont};
        rc = dec_apply(t->decoder, &st, &scratch);
    }
    for (size_t i = 0; i < toks.n && !rc; i++) {
        /* Without a decoder `tokenizers` joins the tokens with spaces. */
        if (!t->decoder && (i > 0 || cont)) rc = tokenizer__buf_append(out, " ", 1);
        if (!rc) rc = tokenizer__buf_append(out, TOK_STR(&toks, i), toks.v[i].len);
    }
    if (!rc) rc = tokenizer__buf_append(out, "", 0); /* NUL-terminate even when empty */
    tokenizer__pieces_free(&toks);
    tokenizer__pieces_free(&scratch);
    return rc;
}

int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n_ids, bool skip_special, char **text,
                     size_t *len) {
    tok_buf out = {0};
    if (!t || (!ids && n_ids) || !text) return PEFTD_EINVAL;
    int rc = tokenizer__decode_ids(t, ids, n_ids, skip_special, false, &out);
    if (rc) {
        tokenizer__buf_free(&out);
        return rc;
    }
    *text = out.data;
    if (len) *len = out.len;
    return 0;
}

/* ---- incremental stream ---- */

struct tokenizer_stream {
    const tokenizer *t;
    bool skip_special;
    bool cont;       /* visible text precedes ids[0] */
    int32_t *ids;    /* the window */
    size_t n, cap;
    size_t read;     /* ids[0..read) were already emitted */
    tok_buf prev, cur, piece;
};

tokenizer_stream *tokenizer_stream_new(const tokenizer *t, bool skip_special) {
    if (!t) return NULL;
    tokenizer_stream *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->t = t;
    s->skip_special = skip_special;
    return s;
}

void tokenizer_stream_free(tokenizer_stream *s) {
    if (!s) return;
    free(s->ids);
    tokenizer__buf_free(&s->prev);
    tokenizer__buf_free(&s->cur);
    tokenizer__buf_free(&s->piece);
    free(s);
}

static bool visible(const tokenizer *t, int32_t id, bool skip_special) {
    return id >= 0 && id < t->n_pieces && t->piece[id] && !(skip_special && t->special[id]);
}

static int stream_append(tokenizer_stream *s, const int32_t *ids, size_t n) {
    if (s->n + n > s->cap) {
        size_t cap = s->cap ? s->cap : 16;
        while (cap < s->n + n) cap *= 2;
        int32_t *v = realloc(s->ids, cap * sizeof(*v));
        if (!v) return PEFTD_ENOMEM;
        s->ids = v;
        s->cap = cap;
    }
    memcpy(s->ids + s->n, ids, n * sizeof(*ids));
    s->n += n;
    return 0;
}

/* Drops the emitted ids ids[0..read) from the window, remembering whether they showed text. */
static void stream_advance(tokenizer_stream *s) {
    for (size_t i = 0; i < s->read; i++) s->cont = s->cont || visible(s->t, s->ids[i], s->skip_special);
    memmove(s->ids, s->ids + s->read, (s->n - s->read) * sizeof(*s->ids));
    s->n -= s->read;
    s->read = s->n;
}

static bool ends_with_fffd(const tok_buf *b) {
    return b->len >= 3 && !memcmp(b->data + b->len - 3, "\xEF\xBF\xBD", 3);
}

/* Emits decode(window) minus decode(window[0..read)); with `force`, even when it ends in U+FFFD. */
static int stream_emit(tokenizer_stream *s, bool force, const char **piece, size_t *len) {
    int rc = tokenizer__decode_ids(s->t, s->ids, s->read, s->skip_special, s->cont, &s->prev);
    if (!rc) rc = tokenizer__decode_ids(s->t, s->ids, s->n, s->skip_special, s->cont, &s->cur);
    s->piece.len = 0;
    if (!rc) rc = tokenizer__buf_append(&s->piece, "", 0);
    if (rc) return rc;
    if (s->cur.len > s->prev.len && (force || !ends_with_fffd(&s->cur))) {
        rc = tokenizer__buf_append(&s->piece, s->cur.data + s->prev.len, s->cur.len - s->prev.len);
        if (rc) return rc;
        /* The next window starts where this one's emitted prefix ended (HF's prefix_offset). */
        stream_advance(s);
    }
    *piece = s->piece.data;
    if (len) *len = s->piece.len;
    return 0;
}

int tokenizer_stream_push(tokenizer_stream *s, int32_t id, const char **piece, size_t *len) {
    if (!s || !piece) return PEFTD_EINVAL;
    int rc = stream_append(s, &id, 1);
    return rc ? rc : stream_emit(s, false, piece, len);
}

int tokenizer_stream_prime(tokenizer_stream *s, const int32_t *ids, size_t n_ids) {
    if (!s || (!ids && n_ids)) return PEFTD_EINVAL;
    int rc = stream_append(s, ids, n_ids);
    /* Context counts as emitted: the next push decodes it only as the prefix to subtract. */
    if (!rc) s->read = s->n;
    return rc;
}

int tokenizer_stream_flush(tokenizer_stream *s, const char **piece, size_t *len) {
    if (!s || !piece) return PEFTD_EINVAL;
    return stream_emit(s, true, piece, len);
}
