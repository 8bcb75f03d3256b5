/* server/text/tokenizer_gguf.c — builds a tokenizer from a GGUF file's tokenizer.ggml.*
 * metadata (what llama.cpp's convert_hf_to_gguf.py writes), as the same internal tables
 * tokenizer_load builds from tokenizer.json, so encode/decode/streaming are shared code.
 *
 * The target is parity with the tokenizer.json of the model the GGUF was converted from:
 *   - "gpt2" (byte-level BPE): tokens + merges (ranks in list order) + token_type; the
 *     pre-tokenizer is named by tokenizer.ggml.pre and mapped to the tokenizer.json structure
 *     that family publishes (pre_table below): "llama-bpe" (Llama 3: Split regex + ByteLevel,
 *     ignore_merges), "qwen2" (NFC + Qwen2's regex), "gpt-2", "smollm" (Digits + ByteLevel).
 *     Any other name is refused, naming the value.
 *   - "llama" (SentencePiece BPE: Llama 2, Mistral, Phi-3, Gemma 2/3): tokens + scores +
 *     token_type. The merges are derived from the scores exactly as transformers'
 *     SpmConverter (generate_merges) derives tokenizer.json's merges from tokenizer.model:
 *     every split of a piece into two vocabulary pieces, ordered by the piece's score, then
 *     the lengths of both halves (descending), ties in vocabulary order. The normalizer is the
 *     LlamaConverter's legacy one — Prepend("▁") when add_space_prefix (default true), then
 *     Replace(" " -> "▁") — which is what llama.cpp does too (a "▁" after every special
 *     token); Gemma GGUFs carry add_space_prefix = false, giving GemmaConverter's
 *     Replace-only normalizer and a decoder without Strip. Byte fallback to <0xNN>, fuse_unk.
 *     On gemma* architectures an absent "\t" piece is served by <0x09>, as
 *     GemmaConverter does. remove_extra_whitespaces is type-checked and ignored (neither
 *     transformers' Llama/Gemma converters nor llama.cpp's SPM tokenizer apply it).
 *   - token_type: CONTROL (3) and UNKNOWN (2) tokens become special added tokens,
 *     USER_DEFINED (4) non-special added tokens (normalized = false, no strip), matched in
 *     the raw text before the model as tokenizer.json's added_tokens are.
 *   - BOS/EOS: bos/eos_token_id, and what encode(add_special) adds is add_bos_token /
 *     add_eos_token, defaulting as llama.cpp does when absent (SPM: BOS on; BPE: BOS on for
 *     llama-bpe only). unk/pad/sep/cls/mask ids are range-checked when present.
 * Anything malformed (wrong key or element type, array length != token count, ids out of
 * range, merges naming unknown tokens, tokens with NUL bytes or invalid UTF-8, non-finite
 * scores) is refused with one line naming the file and key; nothing is trusted.
 *
 * Lifetime: everything is copied; the gguf_file may be closed once this returns.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/status.h"
#include "server/model/gguf.h"
#include "server/text/tokenizer_internal.h"

enum { TT_UNDEFINED = 0, TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

#define K(x) "tokenizer.ggml." x

/* Pre-tokenizers of tokenizer.ggml.pre (llama.cpp's names) as tokenizer.json spells them. */
#define LLAMA3_PATTERN                                                                                       \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define QWEN2_PATTERN                                                                                    \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

typedef enum { PRE_REGEX_BL, PRE_GPT2_BL, PRE_DIGITS_GPT2_BL } pre_shape;

typedef struct {
    const char *name;
    pre_shape shape;
    const char *pattern; /* PRE_REGEX_BL: the Split regex */
    bool nfc;            /* normalizer NFC (Qwen2) */
    bool ignore_merges;  /* Llama 3 */
    bool add_bos;        /* llama.cpp's default when add_bos_token is absent */
} pre_entry;

static const pre_entry pre_table[] = {
    {"llama-bpe", PRE_REGEX_BL, LLAMA3_PATTERN, false, true, true}, /* Llama 3 / 3.1 / 3.2 / 3.3 */
    {"llama3", PRE_REGEX_BL, LLAMA3_PATTERN, false, true, true},
    {"llama-v3", PRE_REGEX_BL, LLAMA3_PATTERN, false, true, true},
    {"qwen2", PRE_REGEX_BL, QWEN2_PATTERN, true, false, false}, /* Qwen2 / 2.5 / 3 */
    {"gpt-2", PRE_GPT2_BL, NULL, false, false, false},
    {"smollm", PRE_DIGITS_GPT2_BL, NULL, false, false, false},
};

/* A GGUF string for a message: at most 60 bytes of whole UTF-8 characters; control bytes
 * and bytes that are not UTF-8 shown as '?', so the message stays one valid line. */
static const char *show(const char *s, size_t n, char out[64]) {
    size_t k = 0, i = 0;
    while (i < n && k < 60) {
        size_t l = tokenizer__utf8_seq((const unsigned char *)s + i, n - i);
        if (l > 1 && k + l <= 60) {
            memcpy(out + k, s + i, l);
            k += l;
            i += l;
            continue;
        }
        if (l > 1) break;
        out[k++] = l == 1 && (unsigned char)s[i] >= 0x20 && s[i] != 0x7f ? s[i] : '?';
        i++;
    }
    out[k] = 0;
    return out;
}

typedef struct {
    const gguf_file *f;
    const char *label;
    char *err;
    size_t errlen;
} gctx;

/* An optional u32-ish id key: -1 when absent; PEFTD_EFORMAT when not an integer or >= n. */
static int read_id(gctx *c, const char *key, int32_t n, int32_t *out) {
    uint64_t v;
    *out = -1;
    int rc = gguf_get_uint(c->f, key, &v, c->err, c->errlen);
    if (rc == PEFTD_ENOTFOUND) {
        if (c->err && c->errlen) c->err[0] = 0;
        return 0;
    }
    if (rc) return rc;
    if (v >= (uint64_t)n) {
        tokenizer__errf(c->err, c->errlen, "%s: %s = %llu is out of range (%d tokens)", c->label, key,
                        (unsigned long long)v, n);
        return PEFTD_EFORMAT;
    }
    *out = (int32_t)v;
    return 0;
}

static int read_bool(gctx *c, const char *key, bool dflt, bool *out) {
    *out = dflt;
    int rc = gguf_get_bool(c->f, key, out, c->err, c->errlen);
    if (rc == PEFTD_ENOTFOUND) {
        *out = dflt;
        if (c->err && c->errlen) c->err[0] = 0;
        return 0;
    }
    return rc;
}

/* An optional array of n elements of a numeric kind (ints or floats). Absent: a->count = 0. */
static int read_num_array(gctx *c, const char *key, bool floats, uint64_t n, gguf_array *a, bool *present) {
    *present = false;
    int rc = gguf_get_arr(c->f, key, GGUF_VT_COUNT, a, c->err, c->errlen);
    if (rc == PEFTD_ENOTFOUND) {
        if (c->err && c->errlen) c->err[0] = 0;
        return 0;
    }
    if (rc) return rc;
    gguf_vtype t = a->elem_type;
    bool is_float = t == GGUF_VT_F32 || t == GGUF_VT_F64;
    bool is_int = !is_float && t != GGUF_VT_STR && t != GGUF_VT_ARR && t != GGUF_VT_BOOL;
    if (floats ? !is_float : !is_int) {
        tokenizer__errf(c->err, c->errlen, "%s: %s is an array of %s, expected %s", c->label, key,
                        gguf_vtype_name(t), floats ? "f32" : "integers");
        return PEFTD_EFORMAT;
    }
    if (a->count != n) {
        tokenizer__errf(c->err, c->errlen, "%s: %s has %llu elements for %llu tokens", c->label, key,
                        (unsigned long long)a->count, (unsigned long long)n);
        return PEFTD_EFORMAT;
    }
    *present = true;
    return 0;
}

/* ---- normalizer / pre-tokenizer / decoder, built as tokenizer.json would write them ---- */

static cJSON *obj_type(const char *type) {
    cJSON *o = cJSON_CreateObject();
    if (o && !cJSON_AddStringToObject(o, "type", type)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* {"type": "Replace", "pattern": {"String": from}, "content": to} */
static cJSON *replace_node(const char *from, const char *to) {
    cJSON *o = obj_type("Replace"), *p = cJSON_CreateObject();
    if (!o || !p || !cJSON_AddStringToObject(p, "String", from) || !cJSON_AddItemToObject(o, "pattern", p) ||
        !cJSON_AddStringToObject(o, "content", to)) {
        if (p && (!o || !cJSON_GetObjectItemCaseSensitive(o, "pattern"))) cJSON_Delete(p);
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *seq_node(const char *type, const char *list_key, cJSON **items, int n) {
    cJSON *o = obj_type(type), *l = cJSON_CreateArray();
    bool ok = o && l;
    for (int i = 0; i < n; i++) {
        if (ok && items[i] && cJSON_AddItemToArray(l, items[i])) continue;
        ok = false;
        cJSON_Delete(items[i]);
    }
    if (!ok || !cJSON_AddItemToObject(o, list_key, l)) {
        cJSON_Delete(l);
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *bytelevel_node(bool use_regex) {
    cJSON *o = obj_type("ByteLevel");
    if (o && (!cJSON_AddFalseToObject(o, "add_prefix_space") || !cJSON_AddBoolToObject(o, "use_regex", use_regex))) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *split_node(const char *regex) {
    cJSON *o = obj_type("Split"), *p = cJSON_CreateObject();
    if (!o || !p || !cJSON_AddStringToObject(p, "Regex", regex) || !cJSON_AddItemToObject(o, "pattern", p) ||
        !cJSON_AddStringToObject(o, "behavior", "Isolated") || !cJSON_AddFalseToObject(o, "invert")) {
        if (p && (!o || !cJSON_GetObjectItemCaseSensitive(o, "pattern"))) cJSON_Delete(p);
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *digits_node(void) {
    cJSON *o = obj_type("Digits");
    if (o && !cJSON_AddTrueToObject(o, "individual_digits")) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* Parses the three stages from their JSON; each node is consumed (NULL means "none"). */
static int set_stages(tokenizer *t, cJSON *norm, bool want_norm, cJSON *pre, bool want_pre, cJSON *dec,
                      char *err, size_t errlen) {
    int rc = 0;
    if ((want_norm && !norm) || (want_pre && !pre) || !dec) rc = PEFTD_ENOMEM;
    if (!rc) rc = tokenizer__normalizer_parse(norm, &t->normalizer, err, errlen);
    if (!rc) rc = tokenizer__pretok_parse(pre, &t->pretok, err, errlen);
    if (!rc) rc = tokenizer__decoder_parse(dec, &t->decoder, err, errlen);
    cJSON_Delete(norm);
    cJSON_Delete(pre);
    cJSON_Delete(dec);
    return rc;
}

static int stages_spm(tokenizer *t, bool add_space_prefix, char *err, size_t errlen) {
    cJSON *norm;
    if (add_space_prefix) {
        cJSON *prep = obj_type("Prepend");
        if (prep && !cJSON_AddStringToObject(prep, "prepend", "\xe2\x96\x81")) {
            cJSON_Delete(prep);
            prep = NULL;
        }
        cJSON *items[2] = {prep, replace_node(" ", "\xe2\x96\x81")};
        norm = seq_node("Sequence", "normalizers", items, 2);
    } else {
        norm = replace_node(" ", "\xe2\x96\x81");
    }
    cJSON *d[4] = {replace_node("\xe2\x96\x81", " "), obj_type("ByteFallback"), obj_type("Fuse"), NULL};
    int nd = 3;
    if (add_space_prefix) {
        cJSON *s = obj_type("Strip");
        if (s && (!cJSON_AddStringToObject(s, "content", " ") || !cJSON_AddNumberToObject(s, "start", 1) ||
                  !cJSON_AddNumberToObject(s, "stop", 0))) {
            cJSON_Delete(s);
            s = NULL;
        }
        d[nd++] = s;
    }
    cJSON *dec = seq_node("Sequence", "decoders", d, nd);
    return set_stages(t, norm, true, NULL, false, dec, err, errlen);
}

static int stages_bpe(tokenizer *t, const pre_entry *pe, char *err, size_t errlen) {
    cJSON *norm = pe->nfc ? obj_type("NFC") : NULL, *pre;
    if (pe->shape == PRE_REGEX_BL) {
        cJSON *items[2] = {split_node(pe->pattern), bytelevel_node(false)};
        pre = seq_node("Sequence", "pretokenizers", items, 2);
    } else if (pe->shape == PRE_DIGITS_GPT2_BL) {
        cJSON *items[2] = {digits_node(), bytelevel_node(true)};
        pre = seq_node("Sequence", "pretokenizers", items, 2);
    } else {
        pre = bytelevel_node(true);
    }
    return set_stages(t, norm, pe->nfc, pre, true, obj_type("ByteLevel"), err, errlen);
}

/* ---- merges ---- */

/* "a b" merges of a gpt2 vocabulary, ranked in list order. */
static int merges_from_list(gctx *c, tokenizer *t) {
    gguf_array m;
    int rc = gguf_get_arr(c->f, K("merges"), GGUF_VT_STR, &m, c->err, c->errlen);
    if (rc == PEFTD_ENOTFOUND) {
        tokenizer__errf(c->err, c->errlen, "%s: tokenizer.ggml.model is \"gpt2\" but tokenizer.ggml.merges is missing",
                        c->label);
        return PEFTD_EFORMAT;
    }
    if (rc) return rc;
    if (m.count > (1u << 26)) {
        tokenizer__errf(c->err, c->errlen, "%s: tokenizer.ggml.merges has %llu entries", c->label,
                        (unsigned long long)m.count);
        return PEFTD_EFORMAT;
    }
    if ((rc = tokenizer__bpe_merges_init(&t->bpe, (size_t)m.count))) return rc;
    tok_buf joined = {0};
    for (uint64_t i = 0; i < m.count && !rc; i++) {
        const char *s;
        size_t len;
        if ((rc = gguf_arr_str(&m, i, &s, &len))) break;
        const char *sp = memchr(s, ' ', len);
        size_t al = sp ? (size_t)(sp - s) : 0, bl = sp ? len - al - 1 : 0;
        char a64[64], b64[64];
        if (!sp || !al || !bl || memchr(sp + 1, ' ', bl)) {
            tokenizer__errf(c->err, c->errlen, "%s: tokenizer.ggml.merges[%llu] '%s' is not two tokens split by one space",
                            c->label, (unsigned long long)i, show(s, len, a64));
            rc = PEFTD_EFORMAT;
            break;
        }
        joined.len = 0;
        if ((rc = tokenizer__buf_append(&joined, s, al)) || (rc = tokenizer__buf_append(&joined, sp + 1, bl))) break;
        int32_t ia = tokenizer__strmap_get(&t->bpe.vocab, s, al);
        int32_t ib = tokenizer__strmap_get(&t->bpe.vocab, sp + 1, bl);
        int32_t ij = tokenizer__strmap_get(&t->bpe.vocab, joined.data, joined.len);
        if (ia < 0 || ib < 0 || ij < 0) {
            tokenizer__errf(c->err, c->errlen,
                            "%s: tokenizer.ggml.merges[%llu] ('%s' '%s') names a token missing from tokenizer.ggml.tokens",
                            c->label, (unsigned long long)i, show(s, al, a64), show(sp + 1, bl, b64));
            rc = PEFTD_EFORMAT;
            break;
        }
        tokenizer__bpe_merge_add(&t->bpe, ia, ib, (int32_t)i, ij);
    }
    tokenizer__buf_free(&joined);
    return rc;
}

typedef struct {
    int32_t l, r, merged;
    float score;
    uint32_t llen, rlen; /* code points of each half */
    uint32_t seq;        /* order of generation */
} spm_merge;

static int cmp_lr(const void *x, const void *y) {
    const spm_merge *a = x, *b = y;
    if (a->l != b->l) return a->l < b->l ? -1 : 1;
    return a->r < b->r ? -1 : a->r > b->r;
}

/* Score, then the halves' lengths, all descending; then generation order (a stable sort). */
static int cmp_rank(const void *x, const void *y) {
    const spm_merge *a = x, *b = y;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    if (a->llen != b->llen) return a->llen > b->llen ? -1 : 1;
    if (a->rlen != b->rlen) return a->rlen > b->rlen ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static int32_t vocab_get(const tokenizer *t, const char *s, size_t len, int32_t tab_id) {
    int32_t id = tokenizer__strmap_get(&t->bpe.vocab, s, len);
    if (id < 0 && tab_id >= 0 && len == 1 && s[0] == '\t') id = tab_id;
    return id;
}

/* transformers' generate_merges over the vocabulary with the GGUF scores. */
static int merges_from_scores(tokenizer *t, const float *scores, int32_t tab_id) {
    int32_t n = t->n_pieces;
    spm_merge *v = NULL;
    size_t nv = 0, cap = 0;
    uint8_t *done = calloc((size_t)n, 1);
    int rc = done ? 0 : PEFTD_ENOMEM;
    for (int32_t i = 0; i < n && !rc; i++) {
        const char *p = t->piece[i];
        size_t len = t->piece_len[i];
        if (!len) continue;
        /* A piece listed twice counts once, at its first position, with its last id's score
         * (Python's dict(vocab_scores)); the vocab maps it to that last id. */
        int32_t last = tokenizer__strmap_get(&t->bpe.vocab, p, len);
        if (last < 0 || done[last]) continue;
        done[last] = 1;
        size_t start = nv;
        uint32_t lcp = 0, total = 0;
        for (size_t k = 0; k < len;) {
            k += tokenizer__utf8_seq((const unsigned char *)p + k, len - k);
            total++;
        }
        for (size_t k = 0; k < len;) {
            size_t step = tokenizer__utf8_seq((const unsigned char *)p + k, len - k);
            k += step;
            lcp++;
            if (k >= len) break;
            int32_t l = vocab_get(t, p, k, tab_id), r = l >= 0 ? vocab_get(t, p + k, len - k, tab_id) : -1;
            if (l < 0 || r < 0) continue;
            if (nv == cap) {
                size_t nc = cap ? cap * 2 : 4096;
                spm_merge *nvv = realloc(v, nc * sizeof(*v));
                if (!nvv) { rc = PEFTD_ENOMEM; break; }
                v = nvv;
                cap = nc;
            }
            v[nv++] = (spm_merge){l, r, last, scores[last], lcp, total - lcp, 0};
        }
        if (nv - start > 1) qsort(v + start, nv - start, sizeof(*v), cmp_lr);
    }
    if (!rc && nv > (size_t)INT32_MAX) rc = PEFTD_ENOMEM;
    for (size_t i = 0; i < nv && !rc; i++) v[i].seq = (uint32_t)i;
    if (!rc && nv) qsort(v, nv, sizeof(*v), cmp_rank);
    if (!rc) rc = tokenizer__bpe_merges_init(&t->bpe, nv);
    for (size_t i = 0; i < nv && !rc; i++) tokenizer__bpe_merge_add(&t->bpe, v[i].l, v[i].r, (int32_t)i, v[i].merged);
    free(v);
    free(done);
    return rc;
}

/* ---- vocabulary ---- */

static bool is_added_type(int64_t ty) { return ty == TT_UNKNOWN || ty == TT_CONTROL || ty == TT_USER; }

/* Copies tokens into t->piece and fills the vocab map. For "llama" every piece goes in, in id
 * order (a duplicate maps to its last id, as tokenizer.json's vocab object would); for "gpt2"
 * the added tokens (control / user-defined / unknown) only where no model token has the text:
 * in tokenizer.json they live in added_tokens, not in model.vocab. */
static int read_vocab(gctx *c, tokenizer *t, const gguf_array *tok, const gguf_array *types, bool have_types,
                      bool spm) {
    int32_t n = (int32_t)tok->count;
    int rc = 0;
    t->piece = calloc((size_t)n, sizeof(*t->piece));
    t->piece_len = calloc((size_t)n, sizeof(*t->piece_len));
    if (!t->piece || !t->piece_len) return PEFTD_ENOMEM;
    t->n_pieces = n;
    for (int32_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        char buf[64];
        if ((rc = gguf_arr_str(tok, (uint64_t)i, &s, &len))) return rc;
        if (memchr(s, 0, len) || !tokenizer__utf8_valid(s, len) || len > (1u << 20)) {
            tokenizer__errf(c->err, c->errlen, "%s: tokenizer.ggml.tokens[%d] ('%s') is not a valid token (%s)", c->label,
                            i, show(s, len, buf), len > (1u << 20) ? "over 1 MiB" : memchr(s, 0, len) ? "NUL byte" : "invalid UTF-8");
            return PEFTD_EFORMAT;
        }
        if (!(t->piece[i] = malloc(len + 1))) return PEFTD_ENOMEM;
        memcpy(t->piece[i], s, len);
        t->piece[i][len] = 0;
        t->piece_len[i] = (uint32_t)len;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int32_t i = 0; i < n; i++) {
            int64_t ty = TT_NORMAL;
            if (have_types && (rc = gguf_arr_int(types, (uint64_t)i, &ty))) return rc;
            if (!t->piece_len[i]) continue;
            bool added = !spm && is_added_type(ty);
            if (added != (pass == 1)) continue;
            if (added && tokenizer__strmap_get(&t->bpe.vocab, t->piece[i], t->piece_len[i]) >= 0) continue;
            if ((rc = tokenizer__strmap_put(&t->bpe.vocab, t->piece[i], t->piece_len[i], i))) return rc;
        }
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof(name), "<0x%02X>", b);
        t->bpe.byte_ids[b] = tokenizer__strmap_get(&t->bpe.vocab, name, 6);
    }
    return 0;
}

/* Control / unknown tokens as special added tokens, user-defined ones as plain added tokens. */
static int read_added(tokenizer *t, const gguf_array *types, bool have_types) {
    int rc;
    t->added = calloc((size_t)t->n_pieces + 1, sizeof(*t->added));
    if (!t->added) return PEFTD_ENOMEM;
    for (int32_t i = 0; have_types && i < t->n_pieces; i++) {
        int64_t ty;
        if ((rc = gguf_arr_int(types, (uint64_t)i, &ty))) return rc;
        if (!is_added_type(ty) || !t->piece_len[i]) continue;
        tok_added *a = &t->added[t->n_added];
        if (!(a->content = strdup(t->piece[i]))) return PEFTD_ENOMEM;
        a->len = t->piece_len[i];
        a->id = i;
        a->special = ty != TT_USER;
        t->n_added++;
    }
    return 0;
}

static int check_types(gctx *c, const gguf_array *types, bool have_types) {
    for (uint64_t i = 0; have_types && i < types->count; i++) {
        int64_t ty;
        int rc = gguf_arr_int(types, i, &ty);
        if (rc) return rc;
        if (ty < TT_UNDEFINED || ty > TT_BYTE) {
            tokenizer__errf(c->err, c->errlen, "%s: tokenizer.ggml.token_type[%llu] = %lld is not a token type (0..6)",
                            c->label, (unsigned long long)i, (long long)ty);
            return PEFTD_EFORMAT;
        }
    }
    return 0;
}

/* ---- BOS / EOS ---- */

static int set_specials(gctx *c, tokenizer *t, bool spm, bool dflt_bos) {
    int32_t n = t->n_pieces, unk, other;
    int rc;
    if ((rc = read_id(c, K("bos_token_id"), n, &t->bos_id)) || (rc = read_id(c, K("eos_token_id"), n, &t->eos_id)) ||
        (rc = read_id(c, K("unknown_token_id"), n, &unk)))
        return rc;
    static const char *others[] = {K("padding_token_id"), K("seperator_token_id"), K("separator_token_id"),
                                   K("cls_token_id"), K("mask_token_id"), K("eot_token_id"), K("eom_token_id")};
    for (size_t i = 0; i < sizeof(others) / sizeof(*others); i++)
        if ((rc = read_id(c, others[i], n, &other))) return rc;
    if (spm) {
        /* llama.cpp's SPM defaults when the ids are absent: <unk> 0, <s> 1, </s> 2. */
        if (unk < 0 && n > 0) unk = 0;
        if (t->bos_id < 0 && n > 1 && gguf_find_key(c->f, K("bos_token_id")) < 0) t->bos_id = 1;
        if (t->eos_id < 0 && n > 2 && gguf_find_key(c->f, K("eos_token_id")) < 0) t->eos_id = 2;
        t->bpe.unk_id = unk;
    }
    bool add_bos, add_eos;
    if ((rc = read_bool(c, K("add_bos_token"), dflt_bos, &add_bos)) ||
        (rc = read_bool(c, K("add_eos_token"), false, &add_eos)))
        return rc;
    if ((add_bos && t->bos_id < 0) || (add_eos && t->eos_id < 0)) {
        tokenizer__errf(c->err, c->errlen, "%s: tokenizer.ggml.add_%s_token is true but there is no %s_token_id",
                        c->label, add_bos && t->bos_id < 0 ? "bos" : "eos", add_bos && t->bos_id < 0 ? "bos" : "eos");
        return PEFTD_EFORMAT;
    }
    if (add_bos) {
        if (!(t->prefix_ids = malloc(sizeof(int32_t)))) return PEFTD_ENOMEM;
        t->prefix_ids[0] = t->bos_id;
        t->n_prefix = 1;
    }
    if (add_eos) {
        if (!(t->suffix_ids = malloc(sizeof(int32_t)))) return PEFTD_ENOMEM;
        t->suffix_ids[0] = t->eos_id;
        t->n_suffix = 1;
    }
    return 0;
}

/* ---- the loader ---- */

static int load(gctx *c, tokenizer *t) {
    const char *ms, *ps = NULL;
    size_t ml, pl = 0;
    char buf[64];
    int rc = gguf_get_str(c->f, K("model"), &ms, &ml, c->err, c->errlen);
    if (rc == PEFTD_ENOTFOUND) {
        tokenizer__errf(c->err, c->errlen, "%s: no tokenizer.ggml.model: the file carries no tokenizer", c->label);
        return rc;
    }
    if (rc) return rc;
    bool spm = ml == 5 && !memcmp(ms, "llama", 5), bpe = ml == 4 && !memcmp(ms, "gpt2", 4);
    if (!spm && !bpe) {
        tokenizer__errf(c->err, c->errlen, "%s: tokenizer.ggml.model '%s' is not supported (peftd reads \"llama\" and \"gpt2\")",
                        c->label, show(ms, ml, buf));
        return PEFTD_EUNSUPPORTED;
    }
    rc = gguf_get_str(c->f, K("pre"), &ps, &pl, c->err, c->errlen);
    if (rc && rc != PEFTD_ENOTFOUND) return rc;
    const pre_entry *pe = NULL;
    if (bpe) {
        for (size_t i = 0; ps && i < sizeof(pre_table) / sizeof(*pre_table); i++)
            if (strlen(pre_table[i].name) == pl && !memcmp(pre_table[i].name, ps, pl)) pe = &pre_table[i];
        if (!pe && ps) {
            tokenizer__errf(c->err, c->errlen,
                            "%s: tokenizer.ggml.pre '%s' is not a pre-tokenizer peftd knows (llama-bpe, qwen2, gpt-2, smollm)",
                            c->label, show(ps, pl, buf));
            return PEFTD_EUNSUPPORTED;
        }
        if (!pe) {
            tokenizer__errf(c->err, c->errlen,
                            "%s: tokenizer.ggml.model is \"gpt2\" but tokenizer.ggml.pre is missing (peftd knows llama-bpe, qwen2, gpt-2, smollm)",
                            c->label);
            return PEFTD_EUNSUPPORTED;
        }
    }

    gguf_array tok, types, sc;
    bool have_types, have_scores;
    rc = gguf_get_arr(c->f, K("tokens"), GGUF_VT_STR, &tok, c->err, c->errlen);
    if (rc == PEFTD_ENOTFOUND) tokenizer__errf(c->err, c->errlen, "%s: tokenizer.ggml.tokens is missing", c->label);
    if (rc) return rc == PEFTD_ENOTFOUND ? PEFTD_EFORMAT : rc;
    if (tok.count == 0 || tok.count > GGUF_MAX_STR_ARRAY) {
        tokenizer__errf(c->err, c->errlen, "%s: tokenizer.ggml.tokens has %llu tokens", c->label,
                        (unsigned long long)tok.count);
        return PEFTD_EFORMAT;
    }
    if ((rc = read_num_array(c, K("token_type"), false, tok.count, &types, &have_types))) return rc;
    if ((rc = check_types(c, &types, have_types))) return rc;
    if ((rc = read_num_array(c, K("scores"), true, tok.count, &sc, &have_scores))) return rc;
    if (spm && !have_scores) {
        tokenizer__errf(c->err, c->errlen, "%s: tokenizer.ggml.model is \"llama\" but tokenizer.ggml.scores is missing",
                        c->label);
        return PEFTD_EFORMAT;
    }
    if ((rc = read_vocab(c, t, &tok, &types, have_types, spm))) return rc;

    bool add_space_prefix, remove_ws;
    if ((rc = read_bool(c, K("add_space_prefix"), spm, &add_space_prefix)) ||
        (rc = read_bool(c, K("remove_extra_whitespaces"), false, &remove_ws)))
        return rc;
    if (spm) {
        float *scores = malloc((size_t)tok.count * sizeof(float));
        if (!scores) return PEFTD_ENOMEM;
        for (uint64_t i = 0; i < tok.count && !rc; i++) {
            double d;
            if ((rc = gguf_arr_float(&sc, i, &d))) break;
            if (!isfinite(d) || fabs(d) > 3e38) {
                tokenizer__errf(c->err, c->errlen, "%s: tokenizer.ggml.scores[%llu] is not a finite f32", c->label,
                                (unsigned long long)i);
                rc = PEFTD_EFORMAT;
            }
            scores[i] = (float)d;
        }
        /* GemmaConverter serves a missing "\t" piece with the <0x09> byte token. */
        int32_t tab_id = -1;
        const char *arch;
        size_t al;
        if (!rc && !gguf_get_str(c->f, "general.architecture", &arch, &al, NULL, 0) && al >= 5 &&
            !memcmp(arch, "gemma", 5) && tokenizer__strmap_get(&t->bpe.vocab, "\t", 1) < 0)
            tab_id = t->bpe.byte_ids['\t'];
        if (!rc) rc = merges_from_scores(t, scores, tab_id);
        free(scores);
        if (rc) return rc;
        t->bpe.byte_fallback = true;
        t->bpe.fuse_unk = true;
        if ((rc = stages_spm(t, add_space_prefix, c->err, c->errlen))) return rc;
    } else {
        if ((rc = merges_from_list(c, t))) return rc;
        t->bpe.ignore_merges = pe->ignore_merges;
        if ((rc = stages_bpe(t, pe, c->err, c->errlen))) return rc;
    }
    if ((rc = read_added(t, &types, have_types))) return rc;
    if ((rc = set_specials(c, t, spm, spm ? true : pe->add_bos))) return rc;
    return tokenizer__prepare_added(t);
}

int tokenizer_load_gguf(const gguf_file *f, tokenizer **out, char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    if (!f || !out) return PEFTD_EINVAL;
    *out = NULL;
    tokenizer *t = calloc(1, sizeof(*t));
    if (!t) return PEFTD_ENOMEM;
    t->bos_id = t->eos_id = -1;
    t->bpe.unk_id = -1;
    for (int i = 0; i < 256; i++) t->bpe.byte_ids[i] = -1;
    gctx c = {f, gguf_label(f) ? gguf_label(f) : "gguf", err, errlen};
    int rc = load(&c, t);
    if (rc) {
        tokenizer_free(t);
        if (err && errlen && !err[0])
            tokenizer__errf(err, errlen, "%s: tokenizer.ggml.*: %s", c.label, peftd_strerror(rc));
        return rc;
    }
    *out = t;
    return 0;
}
