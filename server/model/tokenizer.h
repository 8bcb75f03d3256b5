/* server/model/tokenizer.h — Hugging Face `tokenizer.json` BPE tokenizers, encode and decode.
 *
 * Supports the two BPE families used by Llama-style models:
 *   - SentencePiece-style: Metaspace / Prepend+Replace normalizer ("▁"), byte fallback
 *     (<0xNN> tokens), merges by rank; decoder Replace/ByteFallback/Fuse/Strip.
 *   - byte-level (GPT-2 / Llama-3 / Qwen): ByteLevel pre-tokenizer with the Split regex
 *     exactly as tokenizer.json writes it (run with PCRE2 in UTF+UCP mode), byte->unicode map.
 * plus added/special tokens (matched before the model, as `tokenizers` does), normalizers
 * (NFC/NFKC via utf8proc, Prepend, Replace, Sequence) and BOS/EOS/add_bos_token from
 * tokenizer_config.json. Parity with the `tokenizers` Python package is the test.
 *
 * A loaded tokenizer is immutable: all functions taking `const tokenizer *` are thread-safe.
 */
#ifndef PEFTD_TOKENIZER_H
#define PEFTD_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer;

/* Loads <dir>/tokenizer.json and (optional) <dir>/tokenizer_config.json.
 * On failure returns a negative status and writes a message to err.
 * @note caller owns *out: tokenizer_free(). */
int tokenizer_load(const char *dir, tokenizer **out, char *err, size_t errlen);
void tokenizer_free(tokenizer *t); /* NULL is a no-op */

int tokenizer_vocab_size(const tokenizer *t);
int32_t tokenizer_bos_id(const tokenizer *t);  /* -1 when none */
int32_t tokenizer_eos_id(const tokenizer *t);  /* -1 when none */
bool tokenizer_adds_bos(const tokenizer *t);   /* tokenizer_config add_bos_token / post-processor */
bool tokenizer_is_special(const tokenizer *t, int32_t id);

/* Encodes len bytes of text (must be valid UTF-8, else PEFTD_EINVAL). With add_special,
 * the BOS token is prepended when the tokenizer config asks for it (as HF's
 * `tokenizer(text)` / `encode(add_special_tokens=True)` does).
 * @note caller frees *ids with free(). */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_special,
                     int32_t **ids, size_t *n_ids);

/* Decodes ids to UTF-8 text as HF `decode(ids, skip_special_tokens=skip_special)` does
 * (invalid byte sequences from byte fallback become U+FFFD).
 * @note caller frees *text with free(); it is NUL-terminated, *len excludes the NUL. */
int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n_ids, bool skip_special,
                     char **text, size_t *len);

/* The vocabulary string of a token as stored in tokenizer.json (e.g. "▁Once", "<0x0A>",
 * "Ġthe"); NULL for an id out of range. Pointer valid for the tokenizer's lifetime. */
const char *tokenizer_piece(const tokenizer *t, int32_t id);

/* Incremental decoding for streaming: feed ids one at a time; each call returns the text
 * that became final with that id. Concatenating all returned pieces equals
 * tokenizer_decode() of all ids fed so far (with the same skip_special), and a piece never
 * ends inside a UTF-8 character (incomplete bytes are held back until complete).
 * @note caller owns the stream: tokenizer_stream_free(); *piece points into the stream and
 * is valid until the next call. */
typedef struct tokenizer_stream tokenizer_stream;
tokenizer_stream *tokenizer_stream_new(const tokenizer *t, bool skip_special);
void tokenizer_stream_free(tokenizer_stream *s);
int tokenizer_stream_push(tokenizer_stream *s, int32_t id, const char **piece, size_t *len);
/* Feeds context ids (e.g. the prompt) without emitting their text, so that the pieces of
 * later ids are exactly decode(context + generated) minus decode(context) — a generated
 * "▁there" after "Once upon a time" yields " there", as vLLM's incremental detokenizer does. */
int tokenizer_stream_prime(tokenizer_stream *s, const int32_t *ids, size_t n_ids);
/* Emits whatever text is still held back (a trailing incomplete or invalid byte sequence,
 * as U+FFFD) — call at the end of a sequence so the pieces add up to the full decode. */
int tokenizer_stream_flush(tokenizer_stream *s, const char **piece, size_t *len);

#endif
