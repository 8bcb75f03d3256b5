/* server/text/tokenizer_bpe.c — the BPE model of tokenizer.json: vocabulary (string -> id hash
 * map), merges ((left, right) -> rank, merged id hash map), and the merge loop.
 *
 * Merging follows `tokenizers` exactly: the word starts as one symbol per character (byte
 * fallback to <0xNN> tokens, else unk, fused when fuse_unk); then the pair with the lowest
 * rank is merged first, ties going to the leftmost pair, using a binary min-heap of candidate
 * pairs with lazy invalidation, so a word of n symbols costs O(n log n).
 */
#include <stdlib.h>
#include <string.h>

#include "lib/status.h"
#include "server/text/tokenizer_internal.h"

/* ---- string -> id map (open addressing, linear probing, load factor <= 1/2) ---- */

static uint64_t hash_bytes(const char *s, size_t n) {
    /* FNV-1a 64-bit, then a final mix so the low bits used for the slot index are spread. */
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

static int strmap_grow(tok_strmap *m) {
    size_t cap = m->cap ? m->cap * 2 : 1024;
    tok_strslot *s = calloc(cap, sizeof(*s));
    if (!s) return PEFTD_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].key) continue;
        size_t j = hash_bytes(m->slots[i].key, m->slots[i].len) & (cap - 1);
        while (s[j].key) j = (j + 1) & (cap - 1);
        s[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = s;
    m->cap = cap;
    return 0;
}

int tokenizer__strmap_put(tok_strmap *m, const char *key, uint32_t len, int32_t val) {
    if (2 * (m->n + 1) > m->cap) {
        int rc = strmap_grow(m);
        if (rc) return rc;
    }
    size_t j = hash_bytes(key, len) & (m->cap - 1);
    while (m->slots[j].key) {
        if (m->slots[j].len == len && !memcmp(m->slots[j].key, key, len)) {
            m->slots[j].val = val;
            return 0;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->slots[j] = (tok_strslot){key, len, val};
    m->n++;
    return 0;
}

int32_t tokenizer__strmap_get(const tok_strmap *m, const char *key, size_t len) {
    if (!m->cap) return -1;
    size_t j = hash_bytes(key, len) & (m->cap - 1);
    while (m->slots[j].key) {
        if (m->slots[j].len == len && !memcmp(m->slots[j].key, key, len)) return m->slots[j].val;
        j = (j + 1) & (m->cap - 1);
    }
    return -1;
}

void tokenizer__strmap_free(tok_strmap *m) {
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

/* ---- (left, right) -> (rank, new id) map ---- */

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static size_t pair_slot(uint64_t key, size_t cap) {
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 17) & (cap - 1);
}

static const tok_pairslot *merge_get(const tok_bpe *bpe, int32_t a, int32_t b) {
    if (!bpe->cap_merges) return NULL;
    uint64_t key = pair_key(a, b);
    size_t j = pair_slot(key, bpe->cap_merges);
    while (bpe->merges[j].key != UINT64_MAX) {
        if (bpe->merges[j].key == key) return &bpe->merges[j];
        j = (j + 1) & (bpe->cap_merges - 1);
    }
    return NULL;
}

/* Inserts or overwrites: when a pair is listed twice, the later entry wins, as when
 * `tokenizers` collects the merges into its HashMap. */
static void merge_put(tok_bpe *bpe, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    uint64_t key = pair_key(a, b);
    size_t j = pair_slot(key, bpe->cap_merges);
    while (bpe->merges[j].key != UINT64_MAX && bpe->merges[j].key != key)
        j = (j + 1) & (bpe->cap_merges - 1);
    if (bpe->merges[j].key == UINT64_MAX) bpe->n_merges++;
    bpe->merges[j] = (tok_pairslot){key, rank, new_id};
}

int tokenizer__bpe_merges_init(tok_bpe *bpe, size_t n) {
    free(bpe->merges);
    bpe->n_merges = 0;
    bpe->cap_merges = 16;
    while (bpe->cap_merges < 2 * n + 2) bpe->cap_merges *= 2;
    bpe->merges = malloc(bpe->cap_merges * sizeof(*bpe->merges));
    if (!bpe->merges) {
        bpe->cap_merges = 0;
        return PEFTD_ENOMEM;
    }
    for (size_t i = 0; i < bpe->cap_merges; i++) bpe->merges[i].key = UINT64_MAX;
    return 0;
}

void tokenizer__bpe_merge_add(tok_bpe *bpe, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    merge_put(bpe, a, b, rank, new_id);
}

void tokenizer__bpe_free(tok_bpe *bpe) {
    tokenizer__strmap_free(&bpe->vocab);
    free(bpe->merges);
    memset(bpe, 0, sizeof(*bpe));
}

/* Splits one merges entry into its two parts: "a b" (old format) or ["a", "b"]. */
static int merge_parts(const cJSON *e, const char **a, size_t *alen, const char **b, size_t *blen) {
    if (cJSON_IsString(e)) {
        const char *s = e->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' ')) return PEFTD_EFORMAT;
        *a = s;
        *alen = (size_t)(sp - s);
        *b = sp + 1;
        *blen = strlen(sp + 1);
        return 0;
    }
    if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2) {
        const cJSON *x = cJSON_GetArrayItem(e, 0), *y = cJSON_GetArrayItem(e, 1);
        if (!cJSON_IsString(x) || !cJSON_IsString(y)) return PEFTD_EFORMAT;
        *a = x->valuestring;
        *alen = strlen(x->valuestring);
        *b = y->valuestring;
        *blen = strlen(y->valuestring);
        return 0;
    }
    return PEFTD_EFORMAT;
}

/* The value of an uppercase hex digit ('0'-'9', 'A'-'F'), or -1. */
static int upper_hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* model.merges into bpe's merge table (ranks in list order); each part and the merged
 * piece must be in the vocab. bpe->merges is freed by tokenizer__bpe_free, also on error. */
static int read_merges(tok_bpe *bpe, const cJSON *merges, char *err, size_t errlen) {
    const cJSON *it;
    char *joined = NULL;
    int rc = 0;
    int n_merges = cJSON_GetArraySize(merges);
    if ((rc = tokenizer__bpe_merges_init(bpe, (size_t)n_merges))) goto out;
    int32_t rank = 0;
    cJSON_ArrayForEach(it, merges) {
        const char *a, *b;
        size_t al, bl;
        if (merge_parts(it, &a, &al, &b, &bl)) {
            tokenizer__errf(err, errlen, "tokenizer.json: model.merges[%d] is not \"a b\" or [\"a\", \"b\"]", rank);
            rc = PEFTD_EFORMAT;
            goto out;
        }
        char *nj = realloc(joined, al + bl + 1);
        if (!nj) { rc = PEFTD_ENOMEM; goto out; }
        joined = nj;
        memcpy(joined, a, al);
        memcpy(joined + al, b, bl);
        int32_t ia = tokenizer__strmap_get(&bpe->vocab, a, al);
        int32_t ib = tokenizer__strmap_get(&bpe->vocab, b, bl);
        int32_t ij = tokenizer__strmap_get(&bpe->vocab, joined, al + bl);
        if (ia < 0 || ib < 0 || ij < 0) {
            tokenizer__errf(err, errlen, "tokenizer.json: model.merges[%d] ('%.*s' '%.*s') uses a token missing from the vocab",
                            rank, (int)(al > 40 ? 40 : al), a, (int)(bl > 40 ? 40 : bl), b);
            rc = PEFTD_EFORMAT;
            goto out;
        }
        merge_put(bpe, ia, ib, rank, ij);
        rank++;
    }
out:
    free(joined);
    return rc;
}

int tokenizer__bpe_parse(const cJSON *model, tok_bpe *bpe, char ***pieces_out,
                         uint32_t **piece_len_out, int32_t *n_out, char *err, size_t errlen) {
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    const cJSON *it;
    char **pieces = NULL;
    uint32_t *plen = NULL;
    int32_t n = 0;
    int rc = 0;

    memset(bpe, 0, sizeof(*bpe));
    bpe->unk_id = -1;
    for (int i = 0; i < 256; i++) bpe->byte_ids[i] = -1;
    if (!cJSON_IsObject(vocab)) {
        tokenizer__errf(err, errlen, "tokenizer.json: model.vocab must be an object");
        return PEFTD_EFORMAT;
    }
    if (!cJSON_IsArray(merges)) {
        tokenizer__errf(err, errlen, "tokenizer.json: model.merges must be a list");
        return PEFTD_EFORMAT;
    }
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0) {
        /* Dropout is random by design: parity with a fixed reference is impossible. */
        tokenizer__errf(err, errlen, "tokenizer.json: unsupported BPE dropout %g", dropout->valuedouble);
        return PEFTD_EUNSUPPORTED;
    }
    static const char *affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(model, affixes[i]);
        if (cJSON_IsString(a) && a->valuestring[0]) {
            tokenizer__errf(err, errlen, "tokenizer.json: unsupported BPE %s '%s'", affixes[i], a->valuestring);
            return PEFTD_EUNSUPPORTED;
        }
    }
    bpe->fuse_unk = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "fuse_unk"));
    bpe->byte_fallback = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
    bpe->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));

    /* id -> piece table sized by the largest id. */
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= (1 << 30) ||
            it->valuedouble != (double)(int32_t)it->valuedouble) {
            tokenizer__errf(err, errlen, "tokenizer.json: model.vocab id of '%.40s' is not a valid id", it->string);
            return PEFTD_EFORMAT;
        }
        if ((int32_t)it->valuedouble + 1 > n) n = (int32_t)it->valuedouble + 1;
    }
    pieces = calloc(n ? (size_t)n : 1, sizeof(*pieces));
    plen = calloc(n ? (size_t)n : 1, sizeof(*plen));
    if (!pieces || !plen) { rc = PEFTD_ENOMEM; goto fail; }
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = (int32_t)it->valuedouble;
        size_t len = strlen(it->string);
        if (pieces[id]) {
            tokenizer__errf(err, errlen, "tokenizer.json: model.vocab id %d is used twice", id);
            rc = PEFTD_EFORMAT;
            goto fail;
        }
        if (!tokenizer__utf8_valid(it->string, len)) { /* cJSON passes raw bytes through */
            tokenizer__errf(err, errlen, "tokenizer.json: model.vocab piece of id %d is not valid UTF-8", id);
            rc = PEFTD_EFORMAT;
            goto fail;
        }
        if (!(pieces[id] = strdup(it->string))) { rc = PEFTD_ENOMEM; goto fail; }
        plen[id] = (uint32_t)len;
        if ((rc = tokenizer__strmap_put(&bpe->vocab, pieces[id], (uint32_t)len, id))) goto fail;
        /* "<0xNN>" pieces serve byte fallback (uppercase hex, as `tokenizers` formats them). */
        if (len == 6 && !memcmp(pieces[id], "<0x", 3) && pieces[id][5] == '>') {
            /* exactly two uppercase hex digits: strtol would also take a sign or a space
             * ("<0x-1>" once indexed byte_ids[-1]) */
            int hi = upper_hex_digit(pieces[id][3]), lo = upper_hex_digit(pieces[id][4]);
            if (hi >= 0 && lo >= 0) bpe->byte_ids[hi * 16 + lo] = id;
        }
    }

    if ((rc = read_merges(bpe, merges, err, errlen))) goto fail;
    if (cJSON_IsString(unk)) {
        bpe->unk_id = tokenizer__strmap_get(&bpe->vocab, unk->valuestring, strlen(unk->valuestring));
        if (bpe->unk_id < 0) {
            tokenizer__errf(err, errlen, "tokenizer.json: model.unk_token '%.40s' is not in the vocab", unk->valuestring);
            rc = PEFTD_EFORMAT;
            goto fail;
        }
    }
    *pieces_out = pieces;
    *piece_len_out = plen;
    *n_out = n;
    return 0;
fail:
    if (pieces)
        for (int32_t i = 0; i < n; i++) free(pieces[i]);
    free(pieces);
    free(plen);
    tokenizer__bpe_free(bpe);
    return rc;
}

/* ---- the merge loop ---- */

typedef struct {
    int32_t id, prev, next; /* prev/next: symbol indices, -1 at the ends */
    uint32_t len;           /* bytes covered; 0 = merged away */
} sym;

typedef struct {
    int32_t rank, pos, new_id;
} cand;

/* Min-heap order: lower rank first, then leftmost position (as `tokenizers`' Merge Ord). */
static bool cand_less(cand a, cand b) { return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos; }

typedef struct {
    cand *v;
    size_t n, cap;
} heap;

static int heap_push(heap *h, cand c) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 32;
        cand *v = realloc(h->v, cap * sizeof(*v));
        if (!v) return PEFTD_ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(c, h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = c;
    return 0;
}

static cand heap_pop(heap *h) {
    cand top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        cand best = last;
        if (l < h->n && cand_less(h->v[l], best)) { m = l; best = h->v[l]; }
        if (r < h->n && cand_less(h->v[r], best)) m = r;
        if (m == i) break;
        h->v[i] = h->v[m];
        i = m;
    }
    if (h->n) h->v[i] = last;
    return top;
}

static int sym_push(sym **v, size_t *n, size_t *cap, int32_t id, uint32_t len) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 32;
        sym *nv = realloc(*v, c * sizeof(*nv));
        if (!nv) return PEFTD_ENOMEM;
        *v = nv;
        *cap = c;
    }
    int32_t i = (int32_t)*n;
    (*v)[i] = (sym){id, i - 1, -1, len};
    if (i > 0) (*v)[i - 1].next = i;
    (*n)++;
    return 0;
}

static int push_ids(int32_t **ids, size_t *n, size_t *cap, int32_t id) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        int32_t *v = realloc(*ids, c * sizeof(*v));
        if (!v) return PEFTD_ENOMEM;
        *ids = v;
        *cap = c;
    }
    (*ids)[(*n)++] = id;
    return 0;
}

int tokenizer__bpe_encode(const tok_bpe *bpe, const char *s, size_t len, int32_t **ids, size_t *n,
                          size_t *cap) {
    if (!len) return 0;
    if (bpe->ignore_merges) {
        /* Llama-3 style: a pre-token that is itself in the vocab is emitted whole. */
        int32_t id = tokenizer__strmap_get(&bpe->vocab, s, len);
        if (id >= 0) return push_ids(ids, n, cap, id);
    }
    sym *w = NULL;
    size_t nw = 0, capw = 0;
    heap h = {0};
    int rc = 0;
    int32_t unk = -1; /* pending (possibly fused) unk */
    uint32_t unk_len = 0;

    for (size_t i = 0; i < len && !rc;) {
        size_t cl = tokenizer__utf8_seq((const unsigned char *)s + i, len - i);
        if (!cl) cl = 1; /* cannot happen on validated text; keep the loop finite */
        int32_t id = tokenizer__strmap_get(&bpe->vocab, s + i, cl);
        if (id >= 0) {
            if (unk >= 0) {
                rc = sym_push(&w, &nw, &capw, unk, unk_len);
                unk = -1;
            }
            if (!rc) rc = sym_push(&w, &nw, &capw, id, (uint32_t)cl);
        } else {
            bool all = bpe->byte_fallback;
            for (size_t k = 0; k < cl && all; k++) all = bpe->byte_ids[(unsigned char)s[i + k]] >= 0;
            if (all) {
                for (size_t k = 0; k < cl && !rc; k++)
                    rc = sym_push(&w, &nw, &capw, bpe->byte_ids[(unsigned char)s[i + k]], 1);
            } else if (bpe->unk_id >= 0) {
                if (unk >= 0 && bpe->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    if (unk >= 0) rc = sym_push(&w, &nw, &capw, unk, unk_len);
                    unk = bpe->unk_id;
                    unk_len = (uint32_t)cl;
                }
            }
            /* No byte fallback and no unk: the character is dropped, as `tokenizers` does. */
        }
        i += cl;
    }
    if (!rc && unk >= 0) rc = sym_push(&w, &nw, &capw, unk, unk_len);
    if (rc) goto done;

    for (size_t i = 0; i + 1 < nw && !rc; i++) {
        const tok_pairslot *m = merge_get(bpe, w[i].id, w[i + 1].id);
        if (m) rc = heap_push(&h, (cand){m->rank, (int32_t)i, m->new_id});
    }
    while (h.n && !rc) {
        cand top = heap_pop(&h);
        sym *cur = &w[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        sym right = w[cur->next];
        /* Skip stale candidates: the pair at this position changed since it was queued. */
        const tok_pairslot *m = merge_get(bpe, cur->id, right.id);
        if (!m || m->new_id != top.new_id) continue;
        int32_t next_pos = cur->next;
        cur->id = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        w[next_pos].len = 0;
        if (right.next >= 0) w[right.next].prev = top.pos;
        if (cur->prev >= 0) {
            const tok_pairslot *pm = merge_get(bpe, w[cur->prev].id, cur->id);
            if (pm) rc = heap_push(&h, (cand){pm->rank, cur->prev, pm->new_id});
        }
        if (!rc && cur->next >= 0) {
            const tok_pairslot *nm = merge_get(bpe, cur->id, w[cur->next].id);
            if (nm) rc = heap_push(&h, (cand){nm->rank, top.pos, nm->new_id});
        }
    }
    for (size_t i = 0; i < nw && !rc; i++)
        if (w[i].len) rc = push_ids(ids, n, cap, w[i].id);
done:
    free(w);
    free(h.v);
    return rc;
}
