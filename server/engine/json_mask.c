/* server/engine/json_mask.c — response_format json_object / json_schema on the engine
 * thread: the bytes each token adds to the text (built once, at the first such request),
 * the mask that leaves only tokens keeping the output a JSON-object prefix or a prefix of
 * a text valid against the schema (EOS only once it is complete, and then nothing else),
 * and the per-sequence recognizer's advance over the sampled token. The mask is a CPU pass
 * over the vocabulary per step and sequence: the 256 possible first bytes are tried on a
 * copy of the recognizer, then the whole bytes of each token whose first byte may come. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "server/engine/engine_internal.h"

/* The text token id adds in the middle of a text (after "a"): " Once" for "▁Once"; a byte
 * token's byte; -1 for special tokens and ids the tokenizer does not know; 0 bytes for
 * tokens that add nothing (they are never allowed: they would not advance the text). */
static int json_table(engine *e) {
    int V = e->m->cfg.vocab_size, tv = tokenizer_vocab_size(e->tok);
    int32_t *ctx = NULL;
    size_t n_ctx = 0, cap = 1 << 16, used = 0;
    e->jt_off = malloc((size_t)V * sizeof(int32_t));
    e->jt_len = malloc((size_t)V * sizeof(int32_t));
    e->jt_blob = malloc(cap);
    e->jt_plain = calloc((size_t)V, 1);
    tokenizer_stream *st = tokenizer_stream_new(e->tok, true);
    if (!e->jt_off || !e->jt_len || !e->jt_blob || !e->jt_plain || !st ||
        tokenizer_encode(e->tok, "a", 1, false, &ctx, &n_ctx) < 0 || n_ctx == 0)
        goto fail;
    for (int id = 0; id < V; id++) {
        unsigned char raw[256];
        size_t n = 0;
        const char *piece = NULL, *tail = NULL;
        size_t len = 0, tlen = 0;
        e->jt_off[id] = (int32_t)used;
        e->jt_len[id] = -1;
        if (id >= tv || tokenizer_is_special(e->tok, id)) continue;
        if (tokenizer_token_bytes(e->tok, id, raw, sizeof raw, &n) == 0) {
            piece = (const char *)raw;
            len = n;
        } else {
            if (tokenizer_stream_prime(st, &ctx[n_ctx - 1], 1) < 0 || tokenizer_stream_push(st, id, &piece, &len) < 0)
                continue;
            if (len < sizeof raw) memcpy(raw, piece, len);
            if (len >= sizeof raw || tokenizer_stream_flush(st, &tail, &tlen) < 0 || len + tlen > sizeof raw) continue;
            memcpy(raw + len, tail, tlen);
            piece = (const char *)raw;
            len += tlen;
        }
        if (used + len > cap) {
            while (used + len > cap) cap *= 2;
            uint8_t *t = realloc(e->jt_blob, cap);
            if (!t) goto fail;
            e->jt_blob = t;
        }
        memcpy(e->jt_blob + used, piece, len);
        used += len;
        e->jt_len[id] = (int32_t)len;
        bool plain = len > 0;
        for (size_t i = 0; plain && i < len; i++)
            plain = raw[i] >= 0x20 && raw[i] < 0x7f && raw[i] != '"' && raw[i] != '\\';
        e->jt_plain[id] = plain;
    }
    tokenizer_stream_free(st);
    free(ctx);
    e->jt_ready = true;
    return 0;
fail:
    tokenizer_stream_free(st);
    free(ctx);
    free(e->jt_off);
    free(e->jt_len);
    free(e->jt_blob);
    free(e->jt_plain);
    e->jt_off = e->jt_len = NULL;
    e->jt_blob = e->jt_plain = NULL;
    return PEFTD_ENOMEM;
}

/* One recognizer, either kind: whether the bytes may come next. */
typedef struct {
    const seq *s;
    jsm tmp[2];
} tryer;

static bool try_bytes(tryer *t, const uint8_t *b, size_t n) {
    if (t->s->jss) return jsm_try(t->s->jss, b, n, t->tmp);
    jsong g = t->s->json;
    return jsong_feed(&g, b, n);
}

const float *engine__json_mask(engine *e, const seq *s, const float *logits) {
    const int V = e->m->cfg.vocab_size;
    if (!e->jt_ready && json_table(e) < 0) return NULL;
    float *w = e->ss.work;
    if (logits != w) memcpy(w, logits, (size_t)V * sizeof(float));
    bool done = s->jss ? jsm_done(s->jss) : s->json.done;
    bool can_end = s->jss ? jsm_can_end(s->jss) : s->json.done;
    /* the first byte decides most tokens: 256 tries, then only tokens whose first byte
     * may come are tried whole */
    static _Thread_local tryer t;
    t.s = s;
    bool first[256];
    for (int c = 0; c < 256; c++) first[c] = !done && try_bytes(&t, (const uint8_t[]){(uint8_t)c}, 1);
    /* inside a string: a token of plain characters only needs room (most of a vocabulary) */
    int room = s->jss ? jsm_plain_room(s->jss) : -1;
    int allowed = 0;
    for (int id = 0; id < V; id++) {
        if (engine__is_eos(e, id)) {
            if (!can_end) w[id] = -INFINITY;
            else if (w[id] > -INFINITY) allowed++;
            continue;
        }
        if (w[id] == -INFINITY) continue;
        int32_t len = e->jt_len[id];
        const uint8_t *b = e->jt_blob + e->jt_off[id];
        if (len <= 0 || !first[b[0]] ||
            (room >= 0 && e->jt_plain[id] ? len > room : len > 1 && !try_bytes(&t, b, (size_t)len)))
            w[id] = -INFINITY;
        else
            allowed++;
    }
    if (allowed == 0) /* nothing can continue it: end here (EOS unmasked) */
        for (int i = 0; i < e->n_eos; i++) w[e->eos_ids[i]] = 0;
    return w;
}

void engine__json_advance(engine *e, seq *s, int32_t tok) {
    if (engine__is_eos(e, tok) || tok < 0 || tok >= e->m->cfg.vocab_size || e->jt_len[tok] <= 0) return;
    if (s->jss) jsm_feed(s->jss, e->jt_blob + e->jt_off[tok], (size_t)e->jt_len[tok]);
    else jsong_feed(&s->json, e->jt_blob + e->jt_off[tok], (size_t)e->jt_len[tok]);
}
