/* server/text/chat_template.h — a model's chat template: the Jinja `chat_template` of
 * tokenizer_config.json, rendered the way Hugging Face's
 * `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` does.
 *
 * The template is run by a small Jinja interpreter (chat_template.c: lexer and parser;
 * chat_template_eval.c: values and rendering) covering what chat templates use: text with
 * Jinja's whitespace control under HF's environment (trim_blocks, lstrip_blocks, no
 * trailing newline), {{ }}, {# #}, for (loop.*, else, filters, tuple targets, break and
 * continue), if/elif/else, set (plain, namespace attributes, block), macros, generation
 * blocks; expressions with Python semantics (+ - * / // % ** ~, comparisons, in, and/or/not,
 * conditional expressions, slices, list and dict literals, string and dict methods), the
 * common filters (trim, length, tojson, upper, lower, default, join, first, last, ...),
 * tests (defined, none, string, mapping, ...), and HF's globals raise_exception,
 * strftime_now, range, namespace. Anything outside the subset is a parse error at load, so
 * a model whose template the daemon cannot run is reported at start-up, not per request.
 *
 * Template families seen in the wild (Llama-2, Llama-3, ChatML/Qwen, Gemma, Phi, Mistral, Zephyr) are
 * also recognised by their text, for logs (chat_template_family()); rendering never
 * depends on the recognition.
 *
 * A parsed template is immutable: chat_template_render() is thread-safe.
 */
#ifndef PEFTD_CHAT_TEMPLATE_H
#define PEFTD_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct chat_template chat_template;

typedef struct {
    const char *role;     /* "system", "user", "assistant", ... (NUL-terminated) */
    const char *content;  /* UTF-8, NUL-terminated */
} chat_message;

/* Parses Jinja template text. On failure returns PEFTD_EFORMAT (or PEFTD_ENOMEM) and a
 * message with the line in err. @note caller owns *out: chat_template_free(). */
int chat_template_parse(const char *src, size_t len, chat_template **out, char *err, size_t errlen);

/* The template for a model: override_path when non-NULL and non-empty (a .json file is read
 * as a tokenizer_config.json, anything else as the Jinja text itself), else the
 * `chat_template` of <model_dir>/tokenizer_config.json — a string, or a list of
 * {"name","template"} of which "default" is used (HF's rule). Returns PEFTD_ENOTFOUND with
 * *out = NULL when the model has no template (not an error for the daemon: chat requests
 * then get a 400); other failures name the file in err. */
int chat_template_load(const char *model_dir, const char *override_path, chat_template **out, char *err,
                       size_t errlen);

void chat_template_free(chat_template *t); /* NULL is a no-op */

/* "llama-2", "llama-3" (3.x), "chatml" (Qwen), "gemma", "phi-3" (Phi-3/3.5/4-mini),
 * "mistral", "zephyr" or "custom". */
const char *chat_template_family(const chat_template *t);

struct cJSON;

typedef struct {
    bool add_generation_prompt;
    const char *bos_token;  /* NULL = undefined in the template */
    const char *eos_token;
    const char *unk_token;
    const char *pad_token;
    /* apply_chat_template(tools=...): a JSON array of tool schemas; NULL = none. */
    const struct cJSON *tools;
    /* apply_chat_template's extra keyword arguments (enable_thinking, date_string,
     * builtin_tools, ...): a JSON object whose members become template variables (they win
     * over the globals and the special tokens, as in apply_chat_template; messages, tools,
     * documents and add_generation_prompt are refused: render() would get them twice);
     * NULL = none. */
    const struct cJSON *vars;
    /* strftime_now's clock in unix seconds, shown in local time as transformers'
     * datetime.now().strftime(); 0 = the current time. */
    long long now;
} chat_render_opts;

/* Renders msgs. A template error (raise_exception, a type error, an undefined attribute)
 * returns PEFTD_EINVAL with the message in err — for raise_exception exactly the
 * template's message. @note caller frees *out with free(); NUL-terminated, *out_len
 * excludes the NUL. */
int chat_template_render(const chat_template *t, const chat_message *msgs, int n_msgs,
                         const chat_render_opts *opts, char **out, size_t *out_len, char *err,
                         size_t errlen);

/* The same with the conversation as a JSON array of message objects, passed to the template
 * as they are (tool_calls, reasoning_content, content lists of {"type": "text", ...} parts,
 * ...). JSON numbers that are whole (and within +-2^53) become ints, others floats: a float
 * written "2.0" renders as "2" (cJSON keeps no lexical form). Same errors and ownership as
 * chat_template_render; messages must be an array (PEFTD_EINVAL otherwise). */
int chat_template_render_json(const chat_template *t, const struct cJSON *messages,
                              const chat_render_opts *opts, char **out, size_t *out_len, char *err,
                              size_t errlen);

#endif
