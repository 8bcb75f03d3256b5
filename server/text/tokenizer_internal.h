/* server/text/tokenizer_internal.h — declarations shared by the tokenizer_*.c files only.
 *
 * The tokenizer mirrors the `tokenizers` pipeline: added-token split -> normalizer ->
 * pre-tokenizer -> BPE model -> post-processor (encode), and id -> piece -> decoder chain
 * (decode). Each stage lives in its own file:
 *   tokenizer.c            loading tokenizer.json / tokenizer_config.json, added tokens, encode driver
 *   tokenizer_text.c       byte buffers, span lists, UTF-8 checks, lossy UTF-8, byte-level map, PCRE2
 *   tokenizer_normalize.c  normalizers
 *   tokenizer_pretok.c     pre-tokenizers
 *   tokenizer_bpe.c        the BPE model (vocab and merge maps, merge loop)
 *   tokenizer_decode.c     decoders, decode, incremental stream
 *   tokenizer_class.c      which add-BOS/EOS rule the tokenizer class applies (transformers)
 *   tokenizer_gguf.c       the same tables built from a GGUF file's tokenizer.ggml.* metadata
 * Everything here is immutable once loaded, so encode/decode need no locks.
 */
#ifndef PEFTD_TOKENIZER_INTERNAL_H
#define PEFTD_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cJSON.h>
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/text/tokenizer.h"

/* ---- text helpers (tokenizer_text.c) ---- */

typedef struct {
    char *data;
    size_t len, cap;
} tok_buf;

int tokenizer__buf_reserve(tok_buf *b, size_t extra);
int tokenizer__buf_append(tok_buf *b, const void *p, size_t n);
void tokenizer__buf_free(tok_buf *b);

/* A list of pieces, each a span of one shared text buffer. */
enum { TOK_SPAN_START = 1 }; /* the piece begins at offset 0 of the original text */
typedef struct {
    size_t off, len;
    unsigned flags;
} tok_span;

typedef struct {
    tok_buf text;
    tok_span *v;
    size_t n, cap;
} tok_pieces;

int tokenizer__pieces_push(tok_pieces *p, size_t off, size_t len, unsigned flags);
/* Appends bytes to the text and a span covering them. */
int tokenizer__pieces_add(tok_pieces *p, const char *s, size_t len, unsigned flags);
void tokenizer__pieces_reset(tok_pieces *p);
void tokenizer__pieces_free(tok_pieces *p);

/* Length of the UTF-8 sequence starting at s[0] when it is well-formed (1..4), else 0. */
size_t tokenizer__utf8_seq(const unsigned char *s, size_t avail);
bool tokenizer__utf8_valid(const char *s, size_t len);
/* Decodes one code point from well-formed UTF-8; returns its byte length. */
size_t tokenizer__utf8_next(const char *s, size_t len, int32_t *cp);
size_t tokenizer__utf8_put(int32_t cp, char out[4]);
/* Appends s to out, replacing each maximal ill-formed subsequence by U+FFFD as Rust's
 * String::from_utf8_lossy does. */
int tokenizer__utf8_lossy(tok_buf *out, const char *s, size_t len);

/* Unicode White_Space, as Rust's char::is_whitespace. */
bool tokenizer__is_space(int32_t cp);

/* GPT-2's byte <-> printable code point map used by ByteLevel. */
typedef struct {
    char enc[256][2];      /* UTF-8 of the code point for each byte (1 or 2 bytes) */
    uint8_t enc_len[256];
    int16_t dec[324];      /* code point (< 324) -> byte, or -1 */
} tok_bytemap;
const tok_bytemap *tokenizer__bytemap(void);

/* PCRE2 pattern in UTF + UCP mode: the pre-tokenizer regexes as tokenizer.json writes them. */
typedef struct {
    pcre2_code *code;
} tok_regex;

typedef struct {
    size_t start, end;
} tok_match;

int tokenizer__regex_compile(tok_regex *re, const char *pattern, size_t len, bool literal,
                             char *err, size_t errlen);
void tokenizer__regex_free(tok_regex *re);
/* All non-overlapping matches of re in s, left to right (empty matches included).
 * @note caller frees *m with free(). */
int tokenizer__regex_find_all(const tok_regex *re, const char *s, size_t len, tok_match **m,
                              size_t *n);
/* Replaces every match of re in s with `with`, appending the result to out. */
int tokenizer__regex_replace(const tok_regex *re, const char *s, size_t len, const char *with,
                             size_t with_len, tok_buf *out);

/* Error message helper: writes "tokenizer.json: <fmt>" style text into err. */
void tokenizer__errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Compiles a tokenizers Pattern: a JSON string or {"String": s} (literal) or {"Regex": r}.
 * An empty literal leaves re->code NULL: it never matches. */
int tokenizer__json_pattern(const cJSON *node, const char *where, tok_regex *re, char *err,
                            size_t errlen);

/* ---- normalizers (tokenizer_normalize.c) ---- */

typedef struct tok_normalizer tok_normalizer;
int tokenizer__normalizer_parse(const cJSON *node, tok_normalizer **out, char *err, size_t errlen);
void tokenizer__normalizer_free(tok_normalizer *n);
/* Normalizes in[0..len) into out (replacing its contents). */
int tokenizer__normalize(const tok_normalizer *n, const char *in, size_t len, tok_buf *out);

/* ---- pre-tokenizers (tokenizer_pretok.c) ---- */

typedef struct tok_pretok tok_pretok;
int tokenizer__pretok_parse(const cJSON *node, tok_pretok **out, char *err, size_t errlen);
void tokenizer__pretok_free(tok_pretok *p);
/* Splits/rewrites the pieces in *io (replaced with the result; scratch is reused storage). */
int tokenizer__pretokenize(const tok_pretok *p, tok_pieces *io, tok_pieces *scratch);

/* ---- BPE model (tokenizer_bpe.c) ---- */

typedef struct {
    const char *key; /* points into the tokenizer's piece strings */
    uint32_t len;
    int32_t val;
} tok_strslot;

typedef struct {
    tok_strslot *slots;
    size_t cap; /* power of two */
    size_t n;
} tok_strmap;

int tokenizer__strmap_put(tok_strmap *m, const char *key, uint32_t len, int32_t val);
int32_t tokenizer__strmap_get(const tok_strmap *m, const char *key, size_t len); /* -1 if absent */
void tokenizer__strmap_free(tok_strmap *m);

typedef struct {
    uint64_t key; /* left id << 32 | right id; UINT64_MAX = empty */
    int32_t rank, new_id;
} tok_pairslot;

typedef struct {
    tok_strmap vocab;           /* piece -> id */
    tok_pairslot *merges;       /* open addressing, cap_merges power of two */
    size_t cap_merges, n_merges;
    int32_t unk_id;             /* -1 when none */
    bool fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_ids[256];      /* "<0xNN>" ids (byte fallback), -1 when absent */
} tok_bpe;

/* Parses model{type:BPE,...}: fills bpe and the model's id -> piece table. */
int tokenizer__bpe_parse(const cJSON *model, tok_bpe *bpe, char ***pieces, uint32_t **piece_len,
                         int32_t *n_pieces, char *err, size_t errlen);
void tokenizer__bpe_free(tok_bpe *bpe);
/* An empty merge table sized for n merges (replacing any table bpe had). */
int tokenizer__bpe_merges_init(tok_bpe *bpe, size_t n);
/* Adds merge (a, b) -> new_id with its rank; a pair added twice keeps the later entry. The
 * table must have room: at most the n given to tokenizer__bpe_merges_init. */
void tokenizer__bpe_merge_add(tok_bpe *bpe, int32_t a, int32_t b, int32_t rank, int32_t new_id);
/* Tokenizes one pre-token, appending ids to *ids. */
int tokenizer__bpe_encode(const tok_bpe *bpe, const char *s, size_t len, int32_t **ids,
                          size_t *n, size_t *cap);

/* ---- decoders (tokenizer_decode.c) ---- */

typedef struct tok_decoder tok_decoder;
int tokenizer__decoder_parse(const cJSON *node, tok_decoder **out, char *err, size_t errlen);
void tokenizer__decoder_free(tok_decoder *d);

/* ---- tokenizer class rules (tokenizer_class.c) ---- */

/* A transformers tokenizer class that rebuilds the post_processor from add_bos_token /
 * add_eos_token, with its constructor's defaults. */
typedef struct {
    const char *cls;
    const char *bos, *eos; /* default bos_token / eos_token */
    bool add_bos, add_eos; /* default add_bos_token / add_eos_token */
} tok_class_rule;

/* The rule AutoTokenizer applies to the tokenizer in dir (tok_cfg: its tokenizer_config.json,
 * or NULL when absent; config.json is read when that names no class), or NULL when the class
 * keeps tokenizer.json's post_processor as it is. */
const tok_class_rule *tokenizer__class_rule(const char *dir, const cJSON *tok_cfg);

/* ---- the tokenizer ---- */

typedef struct {
    char *content;
    size_t len;
    char *norm; /* content after the normalizer (for normalized tokens) */
    size_t norm_len;
    int32_t id;
    bool special, normalized, lstrip, rstrip, single_word;
} tok_added;

/* Added tokens matched leftmost-longest in one pass: candidates indexed by first byte. */
typedef struct {
    int32_t *order;      /* indices into tokenizer.added, grouped by first byte, longest first */
    uint32_t first[257]; /* order[first[b] .. first[b+1]) start with byte b */
    bool use_norm;       /* match the normalized content */
} tok_added_set;

struct tokenizer {
    tok_bpe bpe;
    char **piece;        /* id -> token string (added tokens override the model's), NULL if gap */
    uint32_t *piece_len;
    int32_t n_pieces;    /* max id + 1 */
    char **orphans;      /* model pieces replaced by added tokens (still vocab-map keys) */
    size_t n_orphans;
    uint8_t *special;    /* id -> 1 when it is a special added token */
    tok_added *added;
    size_t n_added;
    tok_added_set raw_set, norm_set;
    tok_normalizer *normalizer;
    tok_pretok *pretok;
    tok_decoder *decoder;
    int32_t *prefix_ids, *suffix_ids; /* what add_special puts around a single sequence */
    size_t n_prefix, n_suffix;
    int32_t bos_id, eos_id;
};

/* Marks the special added tokens (t->special, sized n_pieces) and builds the added-token
 * matching sets; needs t->normalizer (normalized tokens are matched after it). */
int tokenizer__prepare_added(tokenizer *t);

/* Decodes ids with the decoder chain. With `cont`, the ids continue earlier visible text:
 * start-of-text rules (Strip of a fused text's start, Metaspace's first token) do not apply,
 * so decode(all) == decode(head) + decode_cont(tail) whenever head decodes to non-empty text
 * and ends where the stream may cut (not inside a byte-fallback run or an incomplete
 * byte-level character; see tokenizer_decode.c). */
int tokenizer__decode_ids(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                          bool cont, tok_buf *out);

#endif
