/* server/text/tokenizer_decode.c — ids -> text: tokenizer.json decoders (Replace, ByteFallback,
 * Fuse, Strip, ByteLevel, Metaspace, Sequence), HF `decode(skip_special_tokens)`, and the
 * incremental stream used for token-by-token output.
 *
 * Decoders work like `tokenizers`' decode_chain: each one maps a list of token strings to a
 * new list, and the result is their concatenation.
 *
 * The stream (contract in tokenizer.h) keeps a window of ids since its last cut. Each push
 * finds the last boundary k in the window that no later id can move (stream_final: not inside
 * a trailing byte-fallback run; not inside or after an incomplete byte-level character),
 * decodes window[0..k) and emits what was not emitted yet; the text emitted so far is checked
 * to be a prefix of that decode. Once window[0..k) decodes to non-empty text it is dropped
 * and the rest is decoded in "continuation" mode, so rules that apply only at the start of a
 * text (Strip of the fused text, Metaspace's first token) are not applied again mid-stream.
 */
#include <stdlib.h>
#include <string.h>

#include "lib/status.h"
#include "server/text/tokenizer_internal.h"

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

/* A piece's bytes; "" while the text buffer is unallocated (only empty pieces exist then:
 * Fuse of no tokens), as NULL + 0 is undefined behaviour. */
#define TOK_STR(p, i) ((p)->text.data ? (p)->text.data + (p)->v[i].off : "")

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

/* Parses "<0xNN>" (exactly 6 bytes, any hex case) into *b. `tokenizers` reads NN with Rust's
 * u8::from_str_radix, which also takes "+N": "<0x+F>" is byte 0x0F there, and here. */
static bool byte_token(const char *s, size_t len, unsigned char *b) {
    if (len != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return false;
    int v = 0;
    for (int k = s[3] == '+' ? 4 : 3; k < 5; k++) {
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

/* Appends the bytes a ByteLevel decoder reads from one token: each character mapped back to its
 * byte, or, when any character of the token is outside the byte map (e.g. an added token
 * "é中"), the token's own UTF-8 unchanged — per token, as `tokenizers` does. */
static int bytelevel_bytes(const char *s, size_t len, tok_buf *bytes) {
    const tok_bytemap *bm = tokenizer__bytemap();
    size_t start = bytes->len;
    for (size_t j = 0; j < len;) {
        int32_t cp;
        size_t k = tokenizer__utf8_next(s + j, len - j, &cp);
        if (cp >= 324 || bm->dec[cp] < 0) {
            bytes->len = start;
            return tokenizer__buf_append(bytes, s, len);
        }
        unsigned char b = (unsigned char)bm->dec[cp];
        int rc = tokenizer__buf_append(bytes, &b, 1);
        if (rc) return rc;
        j += k;
    }
    return 0;
}

/* How many bytes bytelevel_bytes() appends for the token. */
static size_t bytelevel_len(const char *s, size_t len) {
    const tok_bytemap *bm = tokenizer__bytemap();
    size_t n = 0;
    for (size_t j = 0; j < len; n++) {
        int32_t cp;
        j += tokenizer__utf8_next(s + j, len - j, &cp);
        if (cp >= 324 || bm->dec[cp] < 0) return len;
    }
    return n;
}

static int dec_bytelevel(const tok_pieces *in, tok_pieces *out) {
    tok_buf bytes = {0};
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) rc = bytelevel_bytes(TOK_STR(in, i), in->v[i].len, &bytes);
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

/* How the stream finds text that later ids cannot change (see tokenizer.h for the contract).
 * PIECEWISE: per-token decoders (Replace, Strip, Metaspace, ByteFallback), at most one Fuse,
 *   then Strips that keep the text's end (stop == 0): decode(head) is a prefix of
 *   decode(head + more) whenever head does not end inside a byte-fallback run.
 * BYTELEVEL: ByteLevel, then such Strips: the bytes are decoded lossily as one string, so
 *   decode(head) is a prefix of decode(head + more) whenever head's bytes do not end in an
 *   incomplete UTF-8 sequence.
 * WHOLE: any other chain (a Replace or Metaspace over the fused text, a Strip of its end, ...):
 *   nothing is final before the flush. */
typedef enum { STREAM_PIECEWISE, STREAM_BYTELEVEL, STREAM_WHOLE } stream_mode;

/* Leaves of a decoder chain in order (Sequence flattened); returns how many, or -1 when more
 * than max (then the chain is treated as WHOLE). */
static int dec_leaves(const tok_decoder *d, const tok_decoder **out, int n, int max) {
    if (!d || n < 0) return n;
    if (d->kind != DEC_SEQUENCE) {
        if (n >= max) return -1;
        out[n] = d;
        return n + 1;
    }
    for (size_t i = 0; i < d->n_kids && n >= 0; i++) n = dec_leaves(d->kids[i], out, n, max);
    return n;
}

static stream_mode stream_mode_of(const tok_decoder *d, bool *bytefallback) {
    const tok_decoder *leaf[32]; /* real chains have at most 5 decoders */
    int n = dec_leaves(d, leaf, 0, 32), i = 0;
    stream_mode mode = STREAM_PIECEWISE;
    *bytefallback = false;
    if (n < 0) return STREAM_WHOLE;
    if (n > 0 && leaf[0]->kind == DEC_BYTELEVEL) {
        mode = STREAM_BYTELEVEL;
        i = 1;
    } else {
        for (; i < n && leaf[i]->kind != DEC_FUSE; i++) {
            if (leaf[i]->kind == DEC_BYTEFALLBACK) *bytefallback = true;
            else if (leaf[i]->kind != DEC_REPLACE && leaf[i]->kind != DEC_STRIP && leaf[i]->kind != DEC_METASPACE)
                return STREAM_WHOLE;
        }
        if (i < n) i++; /* the Fuse */
    }
    for (; i < n; i++)
        if (leaf[i]->kind != DEC_STRIP || leaf[i]->stop != 0) return STREAM_WHOLE;
    return mode;
}

int tokenizer_token_bytes(const tokenizer *t, int32_t id, unsigned char *out, size_t cap, size_t *n) {
    *n = 0;
    if (!t || id < 0 || id >= t->n_pieces || !t->piece[id]) return PEFTD_ENOTFOUND;
    bool bytefallback = false;
    stream_mode mode = t->decoder ? stream_mode_of(t->decoder, &bytefallback) : STREAM_PIECEWISE;
    unsigned char b;
    if (bytefallback && byte_token(t->piece[id], t->piece_len[id], &b)) {
        if (cap < 1) return PEFTD_ERANGE;
        out[0] = b;
        *n = 1;
        return 0;
    }
    if (mode != STREAM_BYTELEVEL) return PEFTD_ENOTFOUND;
    tok_buf bytes = {0};
    int rc = bytelevel_bytes(t->piece[id], t->piece_len[id], &bytes);
    if (!rc && bytes.len > cap) rc = PEFTD_ERANGE;
    if (!rc) {
        if (bytes.len) memcpy(out, bytes.data, bytes.len);
        *n = bytes.len;
    }
    tokenizer__buf_free(&bytes);
    return rc;
}

struct tokenizer_stream {
    const tokenizer *t;
    bool skip_special;
    stream_mode mode;
    bool bytefallback; /* PIECEWISE chain with a ByteFallback decoder */
    bool cont;         /* non-empty text precedes ids[0] (start-of-text rules are done) */
    int32_t *ids;      /* the window: ids since the last cut */
    size_t n, cap;
    size_t run;        /* bytefallback: where the trailing run of byte tokens starts, or n */
    tok_buf done;      /* decode(window[0..k)) already emitted, k the last final boundary */
    tok_buf cur, piece, bytes;
};

tokenizer_stream *tokenizer_stream_new(const tokenizer *t, bool skip_special) {
    if (!t) return NULL;
    tokenizer_stream *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->t = t;
    s->skip_special = skip_special;
    s->mode = t->decoder ? stream_mode_of(t->decoder, &s->bytefallback) : STREAM_PIECEWISE;
    return s;
}

void tokenizer_stream_free(tokenizer_stream *s) {
    if (!s) return;
    free(s->ids);
    tokenizer__buf_free(&s->done);
    tokenizer__buf_free(&s->cur);
    tokenizer__buf_free(&s->piece);
    tokenizer__buf_free(&s->bytes);
    free(s);
}

/* Whether decode keeps id (the rule of tokenizer__decode_ids). */
static bool visible(const tokenizer *t, int32_t id, bool skip_special) {
    return id >= 0 && id < t->n_pieces && t->piece[id] && !(skip_special && t->special[id]);
}

static bool is_byte_token(const tokenizer *t, int32_t id) {
    unsigned char b;
    return byte_token(t->piece[id], t->piece_len[id], &b);
}

/* Appends ids to the window, keeping s->run: a byte token starts a run unless one is open, a
 * visible other token closes it; skipped ids do not end a run (decode drops them first). */
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
    bool open = s->run < s->n;
    for (size_t i = 0; i < n; i++) {
        if (!visible(s->t, ids[i], s->skip_special)) continue;
        bool byte = is_byte_token(s->t, ids[i]);
        if (byte && !open) s->run = s->n + i;
        open = byte;
    }
    s->n += n;
    if (!open) s->run = s->n;
    return 0;
}

/* Length of the unit a lossy UTF-8 decode (Rust's from_utf8_lossy) reads at b[0..avail): a
 * well-formed character, or a maximal ill-formed subsequence (one U+FFFD). *open is set when
 * the unit is a proper prefix of a well-formed character cut by the end of the input: more
 * bytes could still complete it. */
static size_t utf8_unit(const unsigned char *b, size_t avail, bool *open) {
    unsigned c = b[0];
    size_t need = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 1;
    /* The second byte's range depends on the lead (no overlongs, surrogates, > U+10FFFF). */
    unsigned lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80, hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
    size_t k = 1;
    *open = false;
    for (; k < need; k++) {
        if (k == avail) {
            *open = true;
            break;
        }
        unsigned x = b[k];
        if (k == 1 ? (x < lo || x > hi) : (x & 0xC0) != 0x80) break;
    }
    return k;
}

/* The largest k <= n such that no id appended later can change decode(window[0..k)) other than
 * by extending it. */
static int stream_final(tokenizer_stream *s, size_t *k_out) {
    const tokenizer *t = s->t;
    size_t k = s->n;
    if (s->mode == STREAM_WHOLE) {
        k = 0;
    } else if (s->mode == STREAM_PIECEWISE && s->bytefallback) {
        /* A trailing run of byte tokens may still grow, and a grown run may decode differently
         * (one invalid byte turns the whole run into U+FFFDs): stop before the run. */
        k = s->run;
    } else if (s->mode == STREAM_BYTELEVEL) {
        /* The lossy decode reads the window's bytes in units (characters, ill-formed runs):
         * decode(window[0..k)) is final when its bytes end on a unit boundary before the last,
         * open unit (an incomplete character that later bytes may complete). */
        s->bytes.len = 0;
        for (size_t i = 0; i < s->n; i++) {
            if (!visible(t, s->ids[i], s->skip_special)) continue;
            int rc = bytelevel_bytes(t->piece[s->ids[i]], t->piece_len[s->ids[i]], &s->bytes);
            if (rc) return rc;
        }
        const unsigned char *b = (const unsigned char *)s->bytes.data;
        size_t len = s->bytes.len, fin = 0; /* fin: the last unit boundary that is final */
        for (size_t u = 0; u < len;) {
            bool open;
            size_t ul = utf8_unit(b + u, len - u, &open);
            if (open) break;
            u += ul;
            fin = u;
        }
        /* The last id boundary at or before fin that is also a unit boundary: walk the ids
         * forward, keeping the unit walk in step with their byte offsets. */
        size_t off = 0, u = 0;
        k = 0;
        for (size_t i = 0; i < s->n; i++) {
            if (visible(t, s->ids[i], s->skip_special)) off += bytelevel_len(t->piece[s->ids[i]], t->piece_len[s->ids[i]]);
            if (off > fin) break;
            while (u < off) {
                bool open;
                u += utf8_unit(b + u, len - u, &open);
            }
            if (u == off) k = i + 1;
        }
    }
    *k_out = k;
    return 0;
}

/* Decodes window[0..k) and emits what `done` does not hold yet; then, when the decoded text is
 * non-empty (or follows text), drops window[0..k): the rest decodes as a continuation. With
 * `quiet` the new text is recorded but not emitted (priming). */
static int stream_step(tokenizer_stream *s, size_t k, bool quiet, const char **piece, size_t *len) {
    int rc = tokenizer__decode_ids(s->t, s->ids, k, s->skip_special, s->cont, &s->cur);
    s->piece.len = 0;
    if (rc) return rc;
    /* The contract's invariant: emitted text is a prefix of every later decode. Should a decoder
     * chain break it, fail rather than emit text that contradicts what was sent. */
    if (s->cur.len < s->done.len || (s->done.len && memcmp(s->cur.data, s->done.data, s->done.len)))
        return PEFTD_EFORMAT;
    if (!quiet) rc = tokenizer__buf_append(&s->piece, s->cur.data + s->done.len, s->cur.len - s->done.len);
    if (!rc) rc = tokenizer__buf_append(&s->piece, "", 0); /* NUL-terminate even when empty */
    if (rc) return rc;
    if (k > 0 && (s->cont || s->cur.len > 0)) {
        memmove(s->ids, s->ids + k, (s->n - k) * sizeof(*s->ids));
        s->n -= k;
        /* A final cut never falls inside the open run; a forced one (flush, prime) ends it. */
        s->run = s->run >= k ? s->run - k : s->n;
        s->cont = true;
        s->done.len = 0;
    } else {
        tok_buf sw = s->done;
        s->done = s->cur;
        s->cur = sw;
    }
    if (piece) *piece = s->piece.data;
    if (len) *len = s->piece.len;
    return 0;
}

int tokenizer_stream_push(tokenizer_stream *s, int32_t id, const char **piece, size_t *len) {
    size_t k = 0;
    if (!s || !piece) return PEFTD_EINVAL;
    int rc = stream_append(s, &id, 1);
    if (!rc) rc = stream_final(s, &k);
    return rc ? rc : stream_step(s, k, false, piece, len);
}

int tokenizer_stream_prime(tokenizer_stream *s, const int32_t *ids, size_t n_ids) {
    if (!s || (!ids && n_ids)) return PEFTD_EINVAL;
    int rc = stream_append(s, ids, n_ids);
    /* WHOLE chains cut at the context whatever it decodes to: holding it would not make the
     * decode of context + generated text extend the context's. */
    if (!rc && s->mode == STREAM_WHOLE) {
        rc = tokenizer__decode_ids(s->t, s->ids, s->n, s->skip_special, s->cont, &s->cur);
        if (!rc) {
            s->cont = s->cont || s->cur.len > 0;
            s->n = s->run = 0;
            s->done.len = 0;
        }
        return rc;
    }
    return rc ? rc : stream_step(s, s->n, true, NULL, NULL);
}

int tokenizer_stream_flush(tokenizer_stream *s, const char **piece, size_t *len) {
    if (!s || !piece) return PEFTD_EINVAL;
    return stream_step(s, s->n, false, piece, len);
}
