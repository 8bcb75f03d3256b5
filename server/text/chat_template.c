/* server/text/chat_template.c — the public side of chat templates (chat_template.h):
 * loading one (tokenizer_config.json or an override file), parsing it (newline rules,
 * then chat_template_lex.c and chat_template_parse.c), naming its family, rendering
 * (chat_template_eval.c) and freeing it. Calls go one way: this file -> parse -> lex ->
 * arena, and this file -> eval -> filters -> call -> ops -> value -> arena.
 */
#include <ctype.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/status.h"
#include "server/text/chat_template_parse.h"

/* ---- public ---- */

static void ct_detect_family(chat_template *t, const char *s) {
    const char *f = "custom";
    if (strstr(s, "<|start_header_id|>")) f = "llama-3";
    else if (strstr(s, "<|im_start|>")) f = "chatml";
    else if (strstr(s, "<start_of_turn>")) f = "gemma";
    else if (strstr(s, "<|end|>")) f = "phi-3"; /* Phi-3/3.5 (<|user|>), Phi-4-mini ('<|' + role + '|>') */
    else if (strstr(s, "<|user|>") && strstr(s, "<|assistant|>")) f = "zephyr";
    else if (strstr(s, "[INST]") && strstr(s, "<<SYS>>")) f = "llama-2";
    else if (strstr(s, "[INST]")) f = "mistral";
    snprintf(t->family, sizeof t->family, "%s", f);
}

int chat_template_parse(const char *src, size_t len, chat_template **out, char *err, size_t errlen) {
    *out = NULL;
    chat_template *t = calloc(1, sizeof *t);
    if (!t) return PEFTD_ENOMEM;
    ct_parser p = {.arena = &t->arena, .err = err, .errlen = errlen};
    /* jinja2 normalises newlines to \n and drops one trailing newline (keep_trailing_newline
     * is False in HF's environment). */
    char *s = ct_arena_alloc(&t->arena, len + 1);
    if (!s) {
        free(t);
        return PEFTD_ENOMEM;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;
    int jr = setjmp(p.jb);
    if (jr) {
        chat_template_free(t);
        return jr == 2 ? PEFTD_ENOMEM : PEFTD_EFORMAT;
    }
    ct__lex(&p, s, n);
    t->body = ct__parse(&p);
    ct_detect_family(t, s);
    *out = t;
    return 0;
}

void chat_template_free(chat_template *t) {
    if (!t) return;
    ct_arena_free(&t->arena);
    free(t);
}

const char *chat_template_family(const chat_template *t) { return t ? t->family : "none"; }

int chat_template_render(const chat_template *t, const chat_message *msgs, int n_msgs, const chat_render_opts *opts,
                         char **out, size_t *out_len, char *err, size_t errlen) {
    chat_render_opts o = {0};
    if (opts) o = *opts;
    return ct_render(t, msgs, n_msgs, NULL, &o, out, out_len, err, errlen);
}

int chat_template_render_json(const chat_template *t, const cJSON *messages, const chat_render_opts *opts, char **out,
                              size_t *out_len, char *err, size_t errlen) {
    chat_render_opts o = {0};
    if (opts) o = *opts;
    *out = NULL;
    *out_len = 0;
    if (!cJSON_IsArray(messages)) {
        snprintf(err, errlen, "messages must be a JSON array");
        return PEFTD_EINVAL;
    }
    if (o.tools && !cJSON_IsArray(o.tools) && !cJSON_IsNull(o.tools)) {
        snprintf(err, errlen, "tools must be a JSON array");
        return PEFTD_EINVAL;
    }
    if (o.vars && !cJSON_IsObject(o.vars)) {
        snprintf(err, errlen, "chat template variables must be a JSON object");
        return PEFTD_EINVAL;
    }
    /* apply_chat_template passes these itself: render() would get them twice (TypeError) */
    static const char *const own[] = {"messages", "tools", "documents", "add_generation_prompt"};
    for (size_t i = 0; o.vars && i < sizeof own / sizeof own[0]; i++)
        if (cJSON_GetObjectItemCaseSensitive(o.vars, own[i])) {
            snprintf(err, errlen, "chat template variable '%s' is set by the renderer itself", own[i]);
            return PEFTD_EINVAL;
        }
    return ct_render(t, NULL, 0, messages, &o, out, out_len, err, errlen);
}

static int ct_read_file(const char *path, char **buf, size_t *len, char *err, size_t errlen) {
    /* 4 MiB: the largest published chat templates (tool-calling ones) are ~20 KiB. */
    const long max = 4L << 20;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return errno == ENOENT ? PEFTD_ENOTFOUND : PEFTD_EIO;
    }
    char *b = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || n > max || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        snprintf(err, errlen, "%s: unreadable or larger than 4 MiB", path);
        return PEFTD_EIO;
    }
    b = malloc((size_t)n + 1);
    if (!b) {
        fclose(f);
        return PEFTD_ENOMEM;
    }
    size_t got = fread(b, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) {
        free(b);
        snprintf(err, errlen, "%s: short read", path);
        return PEFTD_EIO;
    }
    b[n] = 0;
    *buf = b;
    *len = (size_t)n;
    return 0;
}

/* The template text of a tokenizer_config.json (NULL when it has none): a string, or HF's
 * list of {"name", "template"} from which "default" is taken. */
static int ct_from_config(const char *path, const char *text, size_t len, const char **tmpl, cJSON **root,
                          char *err, size_t errlen) {
    *tmpl = NULL;
    *root = cJSON_ParseWithLength(text, len);
    if (!*root || !cJSON_IsObject(*root)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        return PEFTD_EFORMAT;
    }
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(*root, "chat_template");
    if (!ct || cJSON_IsNull(ct)) return 0;
    if (cJSON_IsString(ct)) {
        *tmpl = ct->valuestring;
        return 0;
    }
    if (cJSON_IsArray(ct)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, ct) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
            const cJSON *tp = cJSON_GetObjectItemCaseSensitive(it, "template");
            if (!cJSON_IsString(nm) || !cJSON_IsString(tp)) {
                snprintf(err, errlen, "%s: chat_template list entries must be {\"name\", \"template\"} strings", path);
                return PEFTD_EFORMAT;
            }
            if (!strcmp(nm->valuestring, "default")) *tmpl = tp->valuestring;
        }
        return 0; /* a list without "default": no template for plain chat */
    }
    snprintf(err, errlen, "%s: chat_template must be a string or a list of named templates", path);
    return PEFTD_EFORMAT;
}

int chat_template_load(const char *model_dir, const char *override_path, chat_template **out, char *err,
                       size_t errlen) {
    *out = NULL;
    char path[4200];
    bool from_override = override_path && override_path[0];
    if (from_override) snprintf(path, sizeof path, "%s", override_path);
    else snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    char *buf = NULL;
    size_t len = 0;
    int rc = ct_read_file(path, &buf, &len, err, errlen);
    if (rc == PEFTD_ENOTFOUND && !from_override) {
        snprintf(err, errlen, "%s has no tokenizer_config.json", model_dir);
        return PEFTD_ENOTFOUND;
    }
    if (rc) return rc;
    size_t pl = strlen(path);
    bool json = pl >= 5 && !strcmp(path + pl - 5, ".json");
    cJSON *root = NULL;
    const char *tmpl = buf;
    size_t tlen = len;
    if (json) {
        rc = ct_from_config(path, buf, len, &tmpl, &root, err, errlen);
        if (!rc && !tmpl) {
            snprintf(err, errlen, "%s has no chat_template", path);
            rc = PEFTD_ENOTFOUND;
        }
        if (!rc) tlen = strlen(tmpl);
    }
    if (!rc) {
        char perr[480] = "";
        rc = chat_template_parse(tmpl, tlen, out, perr, sizeof perr);
        if (rc) snprintf(err, errlen, "%s: %s", path, perr[0] ? perr : peftd_strerror(rc));
    }
    cJSON_Delete(root);
    free(buf);
    return rc;
}
