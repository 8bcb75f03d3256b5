/* server/text/tokenizer.h — Hugging Face `tokenizer.json` BPE tokenizers (or the same built
 * from GGUF tokenizer.ggml.* metadata), encode and decode.
 *
 * Supports the two BPE families used by Llama-style models:
 *   - SentencePiece-style: Metaspace / Prepend+Replace normalizer ("▁"), byte fallback
 *     (<0xNN> tokens), merges by rank; decoder Replace/ByteFallback/Fuse/Strip.
 *   - byte-level (GPT-2 / Llama-3 / Qwen): ByteLevel pre-tokenizer with the Split regex
 *     exactly as tokenizer.json writes it (run with PCRE2 in UTF+UCP mode), byte->unicode map.
 * plus added/special tokens (matched before the model, as `tokenizers` does), normalizers
 * (NFC/NFKC via utf8proc, Prepend, Replace, Sequence) and BOS/EOS from tokenizer_config.json,
 * added around the text as transformers' AutoTokenizer adds them (tokenizer.json's
 * post_processor, or add_bos_token/add_eos_token for the classes that rebuild it: Llama,
 * Gemma, ...; see tokenizer_class.c). Parity with the `tokenizers` Python package and
 * AutoTokenizer is the test.
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

/* Builds the tokenizer from a GGUF file's tokenizer.ggml.* metadata (tokenizer_gguf.c says
 * how each key maps onto tokenizer.json's pipeline): model "llama" (SentencePiece BPE: merges
 * derived from the scores as transformers does) or "gpt2" (byte-level BPE with
 * tokenizer.ggml.pre one of llama-bpe, qwen2, gpt-2, smollm). Malformed or unsupported
 * metadata: a negative status (PEFTD_ENOTFOUND when the file has no tokenizer.ggml.model,
 * PEFTD_EUNSUPPORTED for an unknown model or pre name, PEFTD_EFORMAT otherwise) and one line
 * in err naming the file and key.
 * @note caller owns *out: tokenizer_free(). Everything needed is copied: f may be closed
 *       right after. Thread-safe for distinct or shared (read-only) f. */
typedef struct gguf_file gguf_file;
int tokenizer_load_gguf(const gguf_file *f, tokenizer **out, char *err, size_t errlen);

int tokenizer_vocab_size(const tokenizer *t);
int32_t tokenizer_bos_id(const tokenizer *t);  /* -1 when none */
int32_t tokenizer_eos_id(const tokenizer *t);  /* -1 when none */
bool tokenizer_adds_bos(const tokenizer *t);   /* tokenizer_config add_bos_token / post-processor */
bool tokenizer_is_special(const tokenizer *t, int32_t id);

/* Encodes len bytes of text (must be valid UTF-8, else PEFTD_EINVAL). With add_special,
 * what AutoTokenizer's `tokenizer(text)` adds (add_special_tokens=True): BOS for Llama 2/3,
 * Mistral, Gemma; nothing for Qwen2/3; Phi-3 per its add_bos_token (false in
 * Phi-3-mini-4k-instruct's published config).
 * @note caller frees *ids with free(). */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_special,
                     int32_t **ids, size_t *n_ids);

/* Decodes ids to UTF-8 text as HF `decode(ids, skip_special_tokens=skip_special)` does. The
 * text is always valid UTF-8: a run of byte-fallback tokens that is not valid UTF-8 becomes
 * one U+FFFD per byte; byte-level bytes become one U+FFFD per maximal ill-formed subsequence.
 * Unknown ids are skipped.
 * @note caller frees *text with free(); it is NUL-terminated, *len excludes the NUL. */
int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n_ids, bool skip_special,
                     char **text, size_t *len);

/* The vocabulary string of a token as stored in tokenizer.json (e.g. "▁Once", "<0x0A>",
 * "Ġthe"); NULL for an id out of range. Pointer valid for the tokenizer's lifetime. */
const char *tokenizer_piece(const tokenizer *t, int32_t id);

/* The raw bytes a byte token stands for, whatever its neighbours: a byte-fallback token
 * "<0xE4>" is the byte 0xE4, a byte-level piece ("Ã¤", "Ġthe") its mapped bytes — which may
 * be part of a character and so not valid UTF-8 alone. PEFTD_ENOTFOUND for a token whose
 * text is what decode makes of it (a SentencePiece word piece, an unknown id);
 * PEFTD_ERANGE when more than cap bytes. */
int tokenizer_token_bytes(const tokenizer *t, int32_t id, unsigned char *out, size_t cap, size_t *n);

/* Incremental decoding for streaming (one stream per sequence; a stream is not thread-safe).
 *
 * Contract. Let ids be the ids pushed since the stream began (or since the last prime or
 * flush, see below) and D = tokenizer_decode(ids, skip_special):
 *  - push(id) returns the text that became final with id: text no later id can change. It is
 *    often empty (a skipped special token, an unknown id, text still held back).
 *  - Emitted text is never retracted or changed: each piece extends the ones before.
 *  - After tokenizer_stream_flush(), the pieces concatenated equal D byte for byte (and D
 *    equals `tokenizers`' decode(ids, skip_special_tokens)).
 *  - Every piece is valid UTF-8 on its own: it ends on a character boundary, so each can go
 *    into a JSON string or an SSE event as it is.
 * What is held back, and until when:
 *  - Byte fallback ("<0xNN>" tokens): a run of consecutive byte tokens decodes as one unit:
 *    its UTF-8 when the whole run is valid, else one U+FFFD per byte (as `tokenizers`'
 *    ByteFallback decoder does). One more byte can turn a complete "é" into "���", so the text
 *    of a run is held until a token that is not a byte token ends it (a skipped special token
 *    or unknown id does not: decode drops those first), or until the flush. A long run of byte
 *    tokens therefore streams as one piece when it ends.
 *  - Byte-level (GPT-2 / Llama-3): the bytes are decoded as one string, each maximal
 *    ill-formed subsequence becoming one U+FFFD; only an incomplete character at the end is
 *    held (at most 3 bytes), until it completes or can no longer complete.
 *  - Decoder chains whose decode of a prefix is not a prefix of the whole decode (a Replace or
 *    Metaspace after Fuse, a Strip of the text's end, ...; none of the supported families):
 *    everything is held until the flush.
 * Byte tokens are recognised by their vocabulary strings (as ByteFallback sees them).
 * @note caller owns the stream: tokenizer_stream_free(); *piece points into the stream, is
 * NUL-terminated, and is valid until the next call. */
typedef struct tokenizer_stream tokenizer_stream;
tokenizer_stream *tokenizer_stream_new(const tokenizer *t, bool skip_special);
void tokenizer_stream_free(tokenizer_stream *s); /* NULL is a no-op */
int tokenizer_stream_push(tokenizer_stream *s, int32_t id, const char **piece, size_t *len);
/* Feeds context ids (e.g. the prompt) without emitting their text. The context ends at a hard
 * boundary: its text counts as final, so later pieces add up to decode(context + generated)
 * minus decode(context) whenever the context does not end inside a byte-fallback run or an
 * incomplete character (always true for a prompt encoded from text by a byte-level tokenizer);
 * otherwise the context's open end stays as decode(context) shows it and the generated ids
 * start afresh (a prompt "中" as byte tokens followed by generated "文" streams "文", not
 * "中文"). A generated "▁there" after "Once upon a time" yields " there", as vLLM's
 * incremental detokenizer does; a context whose text is empty (BOS alone) leaves
 * start-of-text rules to the generated text ("▁Once" after BOS yields "Once"). */
int tokenizer_stream_prime(tokenizer_stream *s, const int32_t *ids, size_t n_ids);
/* Emits everything still held back and ends the segment: the pieces now add up to the full
 * decode. Call it at the end of a sequence. Ids pushed afterwards start a new segment, as
 * after a prime. */
int tokenizer_stream_flush(tokenizer_stream *s, const char **piece, size_t *len);

#endif
