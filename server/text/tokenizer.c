/* server/text/tokenizer.c — loads tokenizer.json (+ tokenizer_config.json), owns the
 * tokenizer object, matches added/special tokens, and drives encoding through the
 * `tokenizers` pipeline:
 *   added tokens (raw) -> normalizer -> added tokens (normalized) -> pre-tokenizer -> BPE
 *   -> post-processor (what add_special puts around the ids).
 *
 * BOS/EOS: the ids come from tokenizer_config.json's bos_token/eos_token. What add_special
 * adds is what transformers' AutoTokenizer adds (`tokenizer(text)`): tokenizer.json's
 * post_processor, except for the classes that rebuild it from add_bos_token/add_eos_token
 * (LlamaTokenizerFast, GemmaTokenizerFast, ...: tokenizer_class.c). Qwen2 (bos_token null)
 * adds nothing; Llama 3 (PreTrainedTokenizerFast) its TemplateProcessing's <|begin_of_text|>.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "lib/status.h"
#include "server/text/tokenizer_internal.h"

/* tokenizer.json of the largest public vocabularies is tens of MB; anything far larger is
 * not a tokenizer file. */
#define TOKENIZER_MAX_FILE (512u << 20)

static int read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? PEFTD_ENOTFOUND : PEFTD_EIO;
    int rc = 0;
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || (unsigned long)n > TOKENIZER_MAX_FILE || fseek(f, 0, SEEK_SET) != 0) {
        rc = n > 0 ? PEFTD_EFORMAT : PEFTD_EIO;
        goto done;
    }
    buf = malloc((size_t)n + 1);
    if (!buf) { rc = PEFTD_ENOMEM; goto done; }
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) { rc = PEFTD_EIO; goto done; }
    buf[n] = 0;
    *out = buf;
    *len = (size_t)n;
    buf = NULL;
done:
    free(buf);
    fclose(f);
    return rc;
}

void tokenizer_free(tokenizer *t) {
    if (!t) return;
    if (t->piece)
        for (int32_t i = 0; i < t->n_pieces; i++) free(t->piece[i]);
    free(t->piece);
    free(t->piece_len);
    for (size_t i = 0; i < t->n_orphans; i++) free(t->orphans[i]);
    free(t->orphans);
    free(t->special);
    for (size_t i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].norm);
    }
    free(t->added);
    free(t->raw_set.order);
    free(t->norm_set.order);
    tokenizer__bpe_free(&t->bpe);
    tokenizer__normalizer_free(t->normalizer);
    tokenizer__pretok_free(t->pretok);
    tokenizer__decoder_free(t->decoder);
    free(t->prefix_ids);
    free(t->suffix_ids);
    free(t);
}

/* ---- added tokens ---- */

static int grow_pieces(tokenizer *t, int32_t n) {
    if (n <= t->n_pieces) return 0;
    char **p = realloc(t->piece, (size_t)n * sizeof(*p));
    if (!p) return PEFTD_ENOMEM;
    t->piece = p;
    uint32_t *l = realloc(t->piece_len, (size_t)n * sizeof(*l));
    if (!l) return PEFTD_ENOMEM;
    t->piece_len = l;
    for (int32_t i = t->n_pieces; i < n; i++) {
        t->piece[i] = NULL;
        t->piece_len[i] = 0;
    }
    t->n_pieces = n;
    return 0;
}

static int parse_added(tokenizer *t, const cJSON *list, char *err, size_t errlen) {
    const cJSON *it;
    if (cJSON_IsNull(list) || !list) return 0;
    if (!cJSON_IsArray(list)) {
        tokenizer__errf(err, errlen, "tokenizer.json: added_tokens must be a list");
        return PEFTD_EFORMAT;
    }
    t->added = calloc((size_t)cJSON_GetArraySize(list) + 1, sizeof(*t->added));
    if (!t->added) return PEFTD_ENOMEM;
    cJSON_ArrayForEach(it, list) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= (1 << 30) ||
            id->valuedouble != (double)(int32_t)id->valuedouble || !cJSON_IsString(content) ||
            !content->valuestring[0]) {
            tokenizer__errf(err, errlen, "tokenizer.json: added_tokens[%zu] needs an integer \"id\" and a non-empty \"content\"",
                            t->n_added);
            return PEFTD_EFORMAT;
        }
        tok_added *a = &t->added[t->n_added++];
        a->id = (int32_t)id->valuedouble;
        a->len = strlen(content->valuestring);
        a->content = strdup(content->valuestring);
        if (!a->content) return PEFTD_ENOMEM;
        if (!tokenizer__utf8_valid(a->content, a->len)) {
            tokenizer__errf(err, errlen, "tokenizer.json: added token %d is not valid UTF-8", a->id);
            return PEFTD_EFORMAT;
        }
        a->special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special"));
        /* `tokenizers` defaults: normalized = !special. */
        const cJSON *norm = cJSON_GetObjectItemCaseSensitive(it, "normalized");
        a->normalized = cJSON_IsBool(norm) ? cJSON_IsTrue(norm) : !a->special;
        a->lstrip = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "lstrip"));
        a->rstrip = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "rstrip"));
        a->single_word = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "single_word"));
        int rc = grow_pieces(t, a->id + 1);
        if (rc) return rc;
        /* The added token's content is what decode shows for its id. A model piece it
         * replaces stays alive: it is still a key of the vocab map. */
        if (t->piece[a->id] && !strcmp(t->piece[a->id], a->content)) continue;
        char *c = strdup(a->content);
        if (!c) return PEFTD_ENOMEM;
        if (t->piece[a->id]) {
            char **o = realloc(t->orphans, (t->n_orphans + 1) * sizeof(*o));
            if (!o) { free(c); return PEFTD_ENOMEM; }
            t->orphans = o;
            t->orphans[t->n_orphans++] = t->piece[a->id];
        }
        t->piece[a->id] = c;
        t->piece_len[a->id] = (uint32_t)a->len;
    }
    return 0;
}

/* Builds the first-byte index of one matching set (longest content first within a byte). */
static int build_set(tokenizer *t, tok_added_set *set, bool normalized) {
    size_t n = 0;
    set->use_norm = normalized;
    set->order = malloc((t->n_added + 1) * sizeof(*set->order));
    if (!set->order) return PEFTD_ENOMEM;
    for (int b = 0; b < 256; b++) {
        set->first[b] = (uint32_t)n;
        size_t begin = n;
        for (size_t i = 0; i < t->n_added; i++) {
            const tok_added *a = &t->added[i];
            const char *c = normalized ? a->norm : a->content;
            size_t len = normalized ? a->norm_len : a->len;
            if (a->normalized != normalized || !len || (unsigned char)c[0] != b) continue;
            /* insertion sort by length, descending: leftmost-longest wants the longest first */
            size_t k = n++;
            while (k > begin) {
                const tok_added *o = &t->added[set->order[k - 1]];
                if ((normalized ? o->norm_len : o->len) >= len) break;
                set->order[k] = set->order[k - 1];
                k--;
            }
            set->order[k] = (int32_t)i;
        }
    }
    set->first[256] = (uint32_t)n;
    return 0;
}

int tokenizer__prepare_added(tokenizer *t) {
    tok_buf b = {0};
    int rc = 0;
    t->special = calloc(t->n_pieces ? (size_t)t->n_pieces : 1, 1);
    if (!t->special) return PEFTD_ENOMEM;
    for (size_t i = 0; i < t->n_added && !rc; i++) {
        tok_added *a = &t->added[i];
        if (a->special) t->special[a->id] = 1;
        if (!a->normalized) continue;
        /* Normalized tokens are matched against normalized text, so normalize them too. */
        rc = tokenizer__normalize(t->normalizer, a->content, a->len, &b);
        if (!rc) {
            a->norm = malloc(b.len + 1);
            if (!a->norm) rc = PEFTD_ENOMEM;
            else {
                memcpy(a->norm, b.data, b.len);
                a->norm[b.len] = 0;
                a->norm_len = b.len;
            }
        }
    }
    tokenizer__buf_free(&b);
    if (!rc) rc = build_set(t, &t->raw_set, false);
    if (!rc) rc = build_set(t, &t->norm_set, true);
    return rc;
}

static bool is_word_char(int32_t cp) {
    if (cp == '_') return true;
    utf8proc_category_t c = utf8proc_category(cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
           (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

/* Code point ending at s[end) (end > 0). */
static int32_t cp_before(const char *s, size_t end, size_t *start) {
    size_t k = end - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    int32_t cp;
    tokenizer__utf8_next(s + k, end - k, &cp);
    if (start) *start = k;
    return cp;
}

/* Next added-token match in s[from..len), as `tokenizers`' find_matches: leftmost-longest,
 * single_word filter, lstrip/rstrip widening (never into the previous match, `floor`).
 * Returns 1 with [*ms, *me) and the token index, 0 when none. */
static int next_added(const tokenizer *t, const tok_added_set *set, const char *s, size_t len, size_t from,
                      size_t floor, size_t *ms, size_t *me, int32_t *idx) {
    if (set->first[256] == 0) return 0;
    for (size_t i = from; i < len;) {
        unsigned char b = (unsigned char)s[i];
        int32_t hit = -1;
        size_t hit_len = 0;
        for (uint32_t k = set->first[b]; k < set->first[b + 1]; k++) {
            const tok_added *a = &t->added[set->order[k]];
            const char *c = set->use_norm ? a->norm : a->content;
            size_t cl = set->use_norm ? a->norm_len : a->len;
            if (cl <= len - i && !memcmp(s + i, c, cl)) {
                hit = set->order[k];
                hit_len = cl;
                break;
            }
        }
        if (hit < 0) {
            i++;
            continue;
        }
        const tok_added *a = &t->added[hit];
        size_t start = i, stop = i + hit_len;
        if (a->single_word) {
            bool before_ok = start == 0 || !is_word_char(cp_before(s, start, NULL));
            int32_t cp = 0;
            if (stop < len) tokenizer__utf8_next(s + stop, len - stop, &cp);
            bool after_ok = stop == len || !is_word_char(cp);
            if (!before_ok || !after_ok) {
                /* A discarded match still consumes its text, as in the Rust find_iter loop. */
                i = stop;
                continue;
            }
        }
        if (a->lstrip) {
            size_t k = start, ks;
            while (k > floor && tokenizer__is_space(cp_before(s, k, &ks))) k = ks;
            start = k;
        }
        if (a->rstrip) {
            while (stop < len) {
                int32_t cp;
                size_t n = tokenizer__utf8_next(s + stop, len - stop, &cp);
                if (!tokenizer__is_space(cp)) break;
                stop += n;
            }
        }
        *ms = start;
        *me = stop;
        *idx = hit;
        return 1;
    }
    return 0;
}

/* ---- post-processor ---- */

static int ids_append(int32_t **v, size_t *n, const int32_t *src, size_t k) {
    if (!k) return 0;
    int32_t *nv = realloc(*v, (*n + k) * sizeof(*nv));
    if (!nv) return PEFTD_ENOMEM;
    memcpy(nv + *n, src, k * sizeof(*src));
    *v = nv;
    *n += k;
    return 0;
}

/* Wraps the current prefix/suffix with a new processor's own: new = pre + old + suf. */
static int wrap(tokenizer *t, const int32_t *pre, size_t npre, const int32_t *suf, size_t nsuf) {
    int32_t *p = NULL;
    size_t np = 0;
    int rc = ids_append(&p, &np, pre, npre);
    if (!rc) rc = ids_append(&p, &np, t->prefix_ids, t->n_prefix);
    if (rc) { free(p); return rc; }
    free(t->prefix_ids);
    t->prefix_ids = p;
    t->n_prefix = np;
    return ids_append(&t->suffix_ids, &t->n_suffix, suf, nsuf);
}

static int template_ids(const cJSON *specials, const char *name, int32_t **v, size_t *n, char *err,
                        size_t errlen) {
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(specials, name);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(sp, "ids"), *it;
    if (!cJSON_IsArray(ids)) {
        tokenizer__errf(err, errlen, "tokenizer.json: TemplateProcessing special token '%.40s' has no \"ids\"", name);
        return PEFTD_EFORMAT;
    }
    cJSON_ArrayForEach(it, ids) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= (1 << 30)) {
            tokenizer__errf(err, errlen, "tokenizer.json: TemplateProcessing special token '%.40s' has a bad id", name);
            return PEFTD_EFORMAT;
        }
        int32_t id = (int32_t)it->valuedouble;
        int rc = ids_append(v, n, &id, 1);
        if (rc) return rc;
    }
    return 0;
}

static int parse_template(tokenizer *t, const cJSON *node, char *err, size_t errlen) {
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(node, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(node, "special_tokens"), *it;
    int32_t *pre = NULL, *suf = NULL;
    size_t npre = 0, nsuf = 0;
    bool seen_a = false;
    int rc = 0;
    if (!cJSON_IsArray(single)) {
        tokenizer__errf(err, errlen, "tokenizer.json: TemplateProcessing needs a \"single\" list");
        return PEFTD_EFORMAT;
    }
    cJSON_ArrayForEach(it, single) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        const cJSON *sq = cJSON_GetObjectItemCaseSensitive(it, "Sequence");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(st, "id");
        if (cJSON_IsObject(sq) && !seen_a) {
            seen_a = true;
        } else if (cJSON_IsString(name)) {
            rc = seen_a ? template_ids(specials, name->valuestring, &suf, &nsuf, err, errlen)
                        : template_ids(specials, name->valuestring, &pre, &npre, err, errlen);
            if (rc) goto done;
        } else {
            tokenizer__errf(err, errlen, "tokenizer.json: TemplateProcessing \"single\" has an unsupported piece");
            rc = PEFTD_EUNSUPPORTED;
            goto done;
        }
    }
    if (!seen_a) {
        tokenizer__errf(err, errlen, "tokenizer.json: TemplateProcessing \"single\" has no $A sequence");
        rc = PEFTD_EFORMAT;
        goto done;
    }
    rc = wrap(t, pre, npre, suf, nsuf);
done:
    free(pre);
    free(suf);
    return rc;
}

/* RobertaProcessing / BertProcessing: {"cls": [token, id], "sep": [token, id]} -> cls $A sep. */
static int parse_cls_sep(tokenizer *t, const cJSON *node, const char *ty, char *err, size_t errlen) {
    const cJSON *cls = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(node, "cls"), 1);
    const cJSON *sep = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(node, "sep"), 1);
    if (!cJSON_IsNumber(cls) || !cJSON_IsNumber(sep) || !(cls->valuedouble >= 0 && cls->valuedouble < (1 << 30)) ||
        !(sep->valuedouble >= 0 && sep->valuedouble < (1 << 30)) || cls->valuedouble != floor(cls->valuedouble) ||
        sep->valuedouble != floor(sep->valuedouble)) {
        tokenizer__errf(err, errlen, "tokenizer.json: %s needs \"cls\" and \"sep\" as [token, id]", ty);
        return PEFTD_EFORMAT;
    }
    int32_t c = (int32_t)cls->valuedouble, s = (int32_t)sep->valuedouble;
    return wrap(t, &c, 1, &s, 1);
}

static int parse_post(tokenizer *t, const cJSON *node, char *err, size_t errlen) {
    if (!node || cJSON_IsNull(node)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (!cJSON_IsString(type)) {
        tokenizer__errf(err, errlen, "tokenizer.json: post_processor must be null or an object with a \"type\"");
        return PEFTD_EFORMAT;
    }
    const char *ty = type->valuestring;
    if (!strcmp(ty, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(node, "processors"), *it;
        if (!cJSON_IsArray(list)) {
            tokenizer__errf(err, errlen, "tokenizer.json: post_processor Sequence needs a \"processors\" list");
            return PEFTD_EFORMAT;
        }
        cJSON_ArrayForEach(it, list) {
            int rc = parse_post(t, it, err, errlen);
            if (rc) return rc;
        }
        return 0;
    }
    if (!strcmp(ty, "TemplateProcessing")) return parse_template(t, node, err, errlen);
    if (!strcmp(ty, "ByteLevel")) return 0; /* only trims offsets; ids are unchanged */
    if (!strcmp(ty, "RobertaProcessing") || !strcmp(ty, "BertProcessing")) return parse_cls_sep(t, node, ty, err, errlen);
    tokenizer__errf(err, errlen, "tokenizer.json: unsupported post_processor type '%s'", ty);
    return PEFTD_EUNSUPPORTED;
}

/* ---- tokenizer_config.json ---- */

static int32_t token_id(const tokenizer *t, const char *s) {
    for (size_t i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].content, s)) return t->added[i].id;
    return tokenizer__strmap_get(&t->bpe.vocab, s, strlen(s));
}

/* bos_token / eos_token: a string, or an AddedToken object {"content": ...}; null means none;
 * a missing key means the class default (dflt, NULL when none). *name gets the token text. */
static int32_t config_token(const tokenizer *t, const cJSON *cfg, const char *key, const char *dflt,
                            const char **name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    *name = cJSON_IsString(v) ? v->valuestring : v ? NULL : dflt;
    return *name ? token_id(t, *name) : -1;
}

/* add_bos_token / add_eos_token: the class default when absent; else the value as Python
 * tests it (transformers passes it on as is): null, 0, "" and empty lists are false. */
static bool config_flag(const cJSON *cfg, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!v) return dflt;
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    if (cJSON_IsNumber(v)) return v->valuedouble != 0;
    if (cJSON_IsString(v)) return v->valuestring[0] != 0;
    return (cJSON_IsArray(v) || cJSON_IsObject(v)) && v->child;
}

/* A class that rebuilds the post_processor (tokenizer_class.c): "[bos] $A [eos]" from
 * add_bos_token / add_eos_token, replacing tokenizer.json's template, as transformers does. */
static int apply_class_rule(tokenizer *t, const cJSON *cfg, const tok_class_rule *r, const char *bos,
                            const char *eos, char *err, size_t errlen) {
    bool add_bos = config_flag(cfg, "add_bos_token", r->add_bos);
    bool add_eos = config_flag(cfg, "add_eos_token", r->add_eos);
    const char *what[2] = {"bos_token", "eos_token"}, *tok[2] = {bos, eos};
    int32_t id[2] = {t->bos_id, t->eos_id};
    bool add[2] = {add_bos, add_eos};
    for (int i = 0; i < 2; i++) {
        if (add[i] && !tok[i]) {
            tokenizer__errf(err, errlen, "tokenizer_config.json: add_%s is true but %s is null (%s)", what[i],
                            what[i], r->cls);
            return PEFTD_EFORMAT;
        }
        if (add[i] && id[i] < 0) {
            tokenizer__errf(err, errlen, "tokenizer_config.json: %s '%.60s' is not in the vocabulary", what[i], tok[i]);
            return PEFTD_EFORMAT;
        }
    }
    free(t->prefix_ids);
    free(t->suffix_ids);
    t->prefix_ids = t->suffix_ids = NULL;
    t->n_prefix = t->n_suffix = 0;
    return wrap(t, &t->bos_id, add_bos ? 1 : 0, &t->eos_id, add_eos ? 1 : 0);
}

/* tokenizer_config.json (optional): BOS/EOS ids, and the class's add-BOS/EOS rule. */
static int load_config(tokenizer *t, const char *dir, char *err, size_t errlen) {
    char path[4096];
    char *text = NULL;
    size_t len = 0;
    cJSON *cfg = NULL;
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    int rc = read_file(path, &text, &len);
    if (rc && rc != PEFTD_ENOTFOUND) {
        tokenizer__errf(err, errlen, "%s: cannot read (%s)", path, peftd_strerror(rc));
        return rc;
    }
    if (!rc) {
        cfg = cJSON_ParseWithLength(text, len);
        free(text);
        if (!cJSON_IsObject(cfg)) {
            cJSON_Delete(cfg);
            tokenizer__errf(err, errlen, "%s: not a JSON object", path);
            return PEFTD_EFORMAT;
        }
    }
    const tok_class_rule *r = tokenizer__class_rule(dir, cfg);
    const char *bos, *eos;
    t->bos_id = config_token(t, cfg, "bos_token", r ? r->bos : NULL, &bos);
    t->eos_id = config_token(t, cfg, "eos_token", r ? r->eos : NULL, &eos);
    rc = r ? apply_class_rule(t, cfg, r, bos, eos, err, errlen) : 0;
    cJSON_Delete(cfg);
    return rc;
}

/* ---- loading ---- */

static int parse_tokenizer_json(tokenizer *t, const cJSON *root, char *err, size_t errlen) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    int rc;
    if (!cJSON_IsObject(model)) {
        tokenizer__errf(err, errlen, "tokenizer.json: missing \"model\" object");
        return PEFTD_EFORMAT;
    }
    /* Files from early `tokenizers` versions leave out the BPE model's type. */
    if (type && !cJSON_IsString(type)) {
        tokenizer__errf(err, errlen, "tokenizer.json: model.type must be a string");
        return PEFTD_EFORMAT;
    }
    if (type ? strcmp(type->valuestring, "BPE") != 0 : !cJSON_GetObjectItemCaseSensitive(model, "merges")) {
        tokenizer__errf(err, errlen, "tokenizer.json: unsupported model type '%s' (only BPE)",
                        type ? type->valuestring : "(none)");
        return PEFTD_EUNSUPPORTED;
    }
    if ((rc = tokenizer__bpe_parse(model, &t->bpe, &t->piece, &t->piece_len, &t->n_pieces, err, errlen))) return rc;
    if ((rc = parse_added(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), err, errlen))) return rc;
    if ((rc = tokenizer__normalizer_parse(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), &t->normalizer, err,
                                          errlen)))
        return rc;
    if ((rc = tokenizer__pretok_parse(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), &t->pretok, err,
                                      errlen)))
        return rc;
    if ((rc = tokenizer__decoder_parse(cJSON_GetObjectItemCaseSensitive(root, "decoder"), &t->decoder, err, errlen)))
        return rc;
    if ((rc = parse_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), err, errlen))) return rc;
    for (size_t i = 0; i < t->n_prefix + t->n_suffix; i++) {
        int32_t id = i < t->n_prefix ? t->prefix_ids[i] : t->suffix_ids[i - t->n_prefix];
        if (id >= t->n_pieces || !t->piece[id]) {
            tokenizer__errf(err, errlen, "tokenizer.json: post_processor uses unknown id %d", id);
            return PEFTD_EFORMAT;
        }
    }
    return tokenizer__prepare_added(t);
}

int tokenizer_load(const char *dir, tokenizer **out, char *err, size_t errlen) {
    char path[4096];
    char *text = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    tokenizer *t = NULL;
    int rc;
    if (err && errlen) err[0] = 0;
    if (!dir || !out) return PEFTD_EINVAL;
    *out = NULL;
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    if ((rc = read_file(path, &text, &len))) {
        tokenizer__errf(err, errlen, "%s: cannot read (%s)", path, peftd_strerror(rc));
        return rc;
    }
    root = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(root)) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= text && at <= text + len ? (long)(at - text) : -1;
        tokenizer__errf(err, errlen, "tokenizer.json: not a valid JSON object (parse error near byte %ld)", off);
        rc = PEFTD_EFORMAT;
        goto fail;
    }
    t = calloc(1, sizeof(*t));
    if (!t) { rc = PEFTD_ENOMEM; goto fail; }
    t->bos_id = t->eos_id = -1;
    if ((rc = parse_tokenizer_json(t, root, err, errlen))) goto fail;
    if ((rc = load_config(t, dir, err, errlen))) goto fail;
    cJSON_Delete(root);
    free(text);
    *out = t;
    return 0;
fail:
    cJSON_Delete(root);
    free(text);
    tokenizer_free(t);
    if (err && errlen && !err[0]) tokenizer__errf(err, errlen, "%s: %s", path, peftd_strerror(rc));
    return rc;
}

/* ---- accessors ---- */

int tokenizer_vocab_size(const tokenizer *t) { return t ? t->n_pieces : 0; }
int32_t tokenizer_bos_id(const tokenizer *t) { return t ? t->bos_id : -1; }
int32_t tokenizer_eos_id(const tokenizer *t) { return t ? t->eos_id : -1; }

bool tokenizer_adds_bos(const tokenizer *t) {
    return t && t->n_prefix > 0 && (t->bos_id < 0 || t->prefix_ids[0] == t->bos_id);
}

bool tokenizer_is_special(const tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_pieces && t->special[id];
}

const char *tokenizer_piece(const tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_pieces ? t->piece[id] : NULL;
}

/* ---- encoding ---- */

typedef struct {
    int32_t *ids;
    size_t n, cap;
    tok_buf norm;
    tok_pieces pieces, scratch;
} enc_ctx;

static int push_id(enc_ctx *c, int32_t id) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        int32_t *v = realloc(c->ids, cap * sizeof(*v));
        if (!v) return PEFTD_ENOMEM;
        c->ids = v;
        c->cap = cap;
    }
    c->ids[c->n++] = id;
    return 0;
}

/* Pre-tokenizes and runs the model on one stretch of normalized text. */
static int encode_words(const tokenizer *t, enc_ctx *c, const char *s, size_t len, bool at_start) {
    tokenizer__pieces_reset(&c->pieces);
    int rc = tokenizer__pieces_add(&c->pieces, s, len, at_start ? TOK_SPAN_START : 0);
    if (!rc) rc = tokenizer__pretokenize(t->pretok, &c->pieces, &c->scratch);
    for (size_t i = 0; i < c->pieces.n && !rc; i++)
        rc = tokenizer__bpe_encode(&t->bpe, c->pieces.text.data + c->pieces.v[i].off, c->pieces.v[i].len, &c->ids,
                                   &c->n, &c->cap);
    return rc;
}

/* Normalizes one stretch of raw text, then splits it on the normalized added tokens. */
static int encode_segment(const tokenizer *t, enc_ctx *c, const char *s, size_t len, bool at_start) {
    int rc = tokenizer__normalize(t->normalizer, s, len, &c->norm);
    if (rc) return rc;
    /* c->norm is reused by nested calls: work on a private copy of the normalized text. */
    char *ns = malloc(c->norm.len + 1);
    if (!ns) return PEFTD_ENOMEM;
    size_t nl = c->norm.len, pos = 0, ms, me;
    memcpy(ns, c->norm.data, nl);
    int32_t idx;
    while (!rc && next_added(t, &t->norm_set, ns, nl, pos, pos, &ms, &me, &idx)) {
        if (ms > pos) rc = encode_words(t, c, ns + pos, ms - pos, at_start && pos == 0);
        if (!rc) rc = push_id(c, t->added[idx].id);
        pos = me;
    }
    if (!rc && pos < nl) rc = encode_words(t, c, ns + pos, nl - pos, at_start && pos == 0);
    free(ns);
    return rc;
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_special, int32_t **ids,
                     size_t *n_ids) {
    if (!t || (!text && len) || !ids || !n_ids) return PEFTD_EINVAL;
    if (len && !tokenizer__utf8_valid(text, len)) return PEFTD_EINVAL;
    enc_ctx c = {0};
    size_t pos = 0, ms, me;
    int32_t idx;
    int rc = 0;
    if (add_special)
        for (size_t i = 0; i < t->n_prefix && !rc; i++) rc = push_id(&c, t->prefix_ids[i]);
    while (!rc && next_added(t, &t->raw_set, text, len, pos, pos, &ms, &me, &idx)) {
        if (ms > pos) rc = encode_segment(t, &c, text + pos, ms - pos, pos == 0);
        if (!rc) rc = push_id(&c, t->added[idx].id);
        pos = me;
    }
    if (!rc && pos < len) rc = encode_segment(t, &c, text + pos, len - pos, pos == 0);
    if (add_special)
        for (size_t i = 0; i < t->n_suffix && !rc; i++) rc = push_id(&c, t->suffix_ids[i]);
    tokenizer__buf_free(&c.norm);
    tokenizer__pieces_free(&c.pieces);
    tokenizer__pieces_free(&c.scratch);
    if (rc) {
        free(c.ids);
        return rc;
    }
    if (!c.ids && !(c.ids = malloc(sizeof(int32_t)))) return PEFTD_ENOMEM; /* never hand out NULL */
    *ids = c.ids;
    *n_ids = c.n;
    return 0;
}
