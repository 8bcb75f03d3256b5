/* clients/peftctl/peftctl.c — the peftd command line client: upload, list, show and
 * remove adapters, and generate text with one.
 *
 *   peftctl [--url URL] [--api-key KEY] [--timeout S] COMMAND [ARGS]
 *
 * Exit codes: 0 ok, 1 the server said no (its message is printed), 2 usage or local input
 * (a missing directory, pickle-only weights), 3 no answer (cannot connect, timeout).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "clients/peftctl/pc_admin.h"
#include "clients/peftctl/pc_http.h"

#define PC_DEFAULT_URL "http://127.0.0.1:8080"
/* Server-side page cap of GET /v1/adapters. */
#define PC_PAGE_MAX 1000

static void usage(FILE *f) {
    fprintf(f,
            "usage: peftctl [--url URL] [--api-key KEY] [--timeout S] COMMAND [ARGS]\n"
            "\n"
            "commands:\n"
            "  upload NAME DIR        upload the adapter save_pretrained wrote to DIR\n"
            "                         (adapter_config.json + adapter_model.safetensors, or AdapterHub's\n"
            "                         adapter.safetensors); a progress bar on a terminal\n"
            "  ls [--limit N] [--page-size N]\n"
            "                         list stored adapters (all of them, or the first N)\n"
            "  show NAME              an adapter's details as JSON\n"
            "  rm NAME                delete an adapter\n"
            "  generate --model NAME --prompt TEXT [--max-tokens N] [--temperature T] [--stream]\n"
            "                         complete TEXT with the base model or adapter NAME\n"
            "  admin tenant create|set ID [--weight W] [--max-concurrent N] [--tokens-per-min N]\n"
            "                         [--max-storage-bytes N]; admin tenant ls | rm ID\n"
            "  admin key create TENANT | ls TENANT | revoke TENANT KEY_ID\n"
            "                         manage tenants and API keys (with the admin key as --api-key)\n"
            "\n"
            "options:\n"
            "  --url URL        the daemon (default $PEFTD_URL, else " PC_DEFAULT_URL ")\n"
            "  --api-key KEY    sent as 'Authorization: Bearer KEY' (default $PEFTD_API_KEY)\n"
            "  --timeout S      give up on a request after S seconds (default: no limit)\n"
            "  -h, --help       this help\n"
            "\n"
            "exit status: 0 ok, 1 the server refused (its message is printed), 2 usage or local\n"
            "input error, 3 no answer from the server (cannot connect, timeout)\n");
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "peftctl: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(peftctl --help for usage)\n");
    return PC_USAGE;
}

/* Options every command accepts (also before the command). Returns 1 when argv[*i] was one
 * (consumed with its value), 0 when not, -1 on a missing value. */
static int global_opt(pc_ctx *c, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    if (strcmp(a, "--url") && strcmp(a, "--api-key") && strcmp(a, "--timeout")) return 0;
    if (*i + 1 >= argc) return -1;
    const char *v = argv[++*i];
    if (!strcmp(a, "--url")) c->url = v;
    else if (!strcmp(a, "--api-key")) c->api_key = v;
    else {
        char *end = NULL;
        long t = strtol(v, &end, 10);
        if (!*v || *end || t < 0) return -1;
        c->timeout_s = t;
    }
    return 1;
}

static int parse_long(const char *flag, const char *v, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "peftctl: %s expects an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, v);
        return PC_USAGE;
    }
    *out = x;
    return 0;
}

/* Parsed JSON of a 2xx answer, or NULL after printing why (the answer was not JSON). */
static cJSON *json_of(const pc_resp *r) {
    cJSON *o = cJSON_ParseWithLength(r->body, r->len);
    if (!o) fprintf(stderr, "peftctl: the server's answer is not JSON: %.*s\n", (int)(r->len > 200 ? 200 : r->len), r->body);
    return o;
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}
static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}
static void jranks(const cJSON *o, char *buf, size_t len) {
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "ranks"), *it;
    size_t off = 0;
    buf[0] = '\0';
    cJSON_ArrayForEach(it, r) {
        if (off < len) off += (size_t)snprintf(buf + off, len - off, "%s%d", off ? "," : "", (int)it->valuedouble);
    }
    if (!off) snprintf(buf, len, "-");
}
static void human(double b, char *buf, size_t len) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB"};
    int u = 0;
    while (b >= 1024 && u < 3) {
        b /= 1024;
        u++;
    }
    snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
}

/* Runs a request with no body; the 2xx JSON answer in *out. */
static int get_json(const pc_ctx *c, const char *method, const char *path, cJSON **out) {
    pc_req r = {.method = method, .path = path};
    pc_resp resp;
    int rc = pc_request(c, &r, &resp);
    if (rc) return rc;
    if (resp.status < 200 || resp.status >= 300) {
        rc = pc_report_error(&resp);
    } else if (!(*out = json_of(&resp))) {
        rc = PC_REFUSED;
    }
    pc_resp_free(&resp);
    return rc;
}

static char *item_path(const char *name) {
    char *esc = pc_escape(name);
    if (!esc) return NULL;
    size_t n = strlen(esc) + 32;
    char *p = malloc(n);
    if (p) snprintf(p, n, "/v1/adapters/%s", esc);
    curl_free(esc);
    return p;
}

/* ---- upload ---- */

static bool is_file(const char *dir, const char *name, char *path, size_t len) {
    struct stat st;
    snprintf(path, len, "%s/%s", dir, name);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int cmd_upload(const pc_ctx *c, int argc, char **argv) {
    const char *name = NULL, *dir = NULL;
    for (int i = 0; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1]) return usage_error("upload: unknown option %s", argv[i]);
        if (!name) name = argv[i];
        else if (!dir) dir = argv[i];
        else return usage_error("upload: unexpected argument '%s'", argv[i]);
    }
    if (!name || !dir) return usage_error("%s", "upload needs NAME and DIR");
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "peftctl: %s is not a directory\n", dir);
        return PC_USAGE;
    }
    char cfg[4096], w[4096];
    if (!is_file(dir, "adapter_config.json", cfg, sizeof cfg)) {
        fprintf(stderr, "peftctl: %s has no adapter_config.json (is it a save_pretrained directory?)\n", dir);
        return PC_USAGE;
    }
    if (!is_file(dir, "adapter_model.safetensors", w, sizeof w) && !is_file(dir, "adapter.safetensors", w, sizeof w)) {
        char tmp[4096];
        if (is_file(dir, "adapter_model.bin", tmp, sizeof tmp) || is_file(dir, "pytorch_adapter.bin", tmp, sizeof tmp))
            fprintf(stderr,
                    "peftctl: %s has pickle weights only (%s): peftd does not accept them; save with "
                    "save_pretrained(..., safe_serialization=True)\n",
                    dir, tmp);
        else
            fprintf(stderr, "peftctl: %s has no adapter_model.safetensors or adapter.safetensors\n", dir);
        return PC_USAGE;
    }

    CURL *h = curl_easy_init();
    curl_mime *mime = h ? curl_mime_init(h) : NULL;
    int rc = PC_NOCONNECT;
    char *path = item_path(name);
    if (!mime || !path) {
        fprintf(stderr, "peftctl: out of memory\n");
        goto out;
    }
    const char *files[2] = {cfg, w};
    for (int i = 0; i < 2; i++) {
        curl_mimepart *part = curl_mime_addpart(mime);
        /* curl_mime_filedata streams the file from disk and names the part after it. */
        if (!part || curl_mime_name(part, i ? "weights" : "config") != CURLE_OK ||
            curl_mime_filedata(part, files[i]) != CURLE_OK) {
            fprintf(stderr, "peftctl: cannot read %s\n", files[i]);
            rc = PC_USAGE;
            goto out;
        }
    }
    pc_req r = {.method = "PUT", .path = path, .mime = mime, .progress = true};
    pc_resp resp;
    if ((rc = pc_request(c, &r, &resp))) goto out;
    if (resp.status < 200 || resp.status >= 300) {
        rc = pc_report_error(&resp);
        pc_resp_free(&resp);
        goto out;
    }
    cJSON *o = json_of(&resp);
    pc_resp_free(&resp);
    if (!o) {
        rc = PC_REFUSED;
        goto out;
    }
    char ranks[128], size[32];
    jranks(o, ranks, sizeof ranks);
    human(jnum(o, "bytes"), size, sizeof size);
    printf("%s: version %.0f (%s)\n", jstr(o, "id"), jnum(o, "version"), jnum(o, "version") > 1 ? "replaced" : "new");
    printf("  kind     %s\n  ranks    %s\n  params   %.0f\n  stored   %s\n  sha256   %s\n", jstr(o, "kind"), ranks,
           jnum(o, "n_params"), size, jstr(o, "sha256"));
    cJSON_Delete(o);
    rc = PC_OK;
out:
    free(path);
    curl_mime_free(mime);
    if (h) curl_easy_cleanup(h);
    return rc;
}

/* ---- ls / show / rm ---- */

static int cmd_ls(const pc_ctx *c, int argc, char **argv) {
    long limit = 0, page = 100;
    for (int i = 0; i < argc; i++) {
        if ((!strcmp(argv[i], "--limit") || !strcmp(argv[i], "--page-size")) && i + 1 < argc) {
            bool lim = !strcmp(argv[i], "--limit");
            int rc = parse_long(argv[i], argv[i + 1], 1, lim ? 1000000000L : PC_PAGE_MAX, lim ? &limit : &page);
            if (rc) return rc;
            i++;
        } else {
            return usage_error("ls: unexpected argument '%s'", argv[i]);
        }
    }
    char after[256] = "";
    long shown = 0;
    bool header = false;
    for (;;) {
        long want = limit && limit - shown < page ? limit - shown : page;
        char path[512];
        char *esc = pc_escape(after);
        snprintf(path, sizeof path, "/v1/adapters?limit=%ld%s%s", want, after[0] ? "&after=" : "", esc ? esc : "");
        curl_free(esc);
        cJSON *o = NULL;
        int rc = get_json(c, "GET", path, &o);
        if (rc) return rc;
        const cJSON *data = cJSON_GetObjectItemCaseSensitive(o, "data"), *it;
        if (!header) {
            printf("%-32s %7s %-14s %-10s %12s %10s  %s\n", "NAME", "VERSION", "KIND", "RANKS", "PARAMS", "SIZE",
                   "UPDATED");
            header = true;
        }
        cJSON_ArrayForEach(it, data) {
            char ranks[64], size[32], when[32] = "-";
            jranks(it, ranks, sizeof ranks);
            human(jnum(it, "bytes"), size, sizeof size);
            time_t t = (time_t)jnum(it, "updated");
            struct tm tm;
            if (t && gmtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M:%SZ", &tm);
            printf("%-32s %7.0f %-14s %-10s %12.0f %10s  %s\n", jstr(it, "id"), jnum(it, "version"), jstr(it, "kind"),
                   ranks, jnum(it, "n_params"), size, when);
            shown++;
        }
        const cJSON *more = cJSON_GetObjectItemCaseSensitive(o, "has_more");
        snprintf(after, sizeof after, "%s", jstr(o, "last_id"));
        bool again = cJSON_IsTrue(more) && after[0] && (!limit || shown < limit);
        cJSON_Delete(o);
        if (!again) break;
    }
    return PC_OK;
}

static int one_name(const char *cmd, int argc, char **argv, const char **name) {
    if (argc != 1 || (argv[0][0] == '-' && argv[0][1])) {
        fprintf(stderr, "peftctl: %s needs exactly one NAME\n(peftctl --help for usage)\n", cmd);
        return PC_USAGE;
    }
    *name = argv[0];
    return 0;
}

static int cmd_show(const pc_ctx *c, int argc, char **argv) {
    const char *name;
    int rc = one_name("show", argc, argv, &name);
    if (rc) return rc;
    char *path = item_path(name);
    cJSON *o = NULL;
    rc = path ? get_json(c, "GET", path, &o) : PC_NOCONNECT;
    free(path);
    if (rc) return rc;
    char *text = cJSON_Print(o);
    if (text) printf("%s\n", text);
    cJSON_free(text);
    cJSON_Delete(o);
    return PC_OK;
}

static int cmd_rm(const pc_ctx *c, int argc, char **argv) {
    const char *name;
    int rc = one_name("rm", argc, argv, &name);
    if (rc) return rc;
    char *path = item_path(name);
    cJSON *o = NULL;
    rc = path ? get_json(c, "DELETE", path, &o) : PC_NOCONNECT;
    free(path);
    if (rc) return rc;
    printf("deleted %s\n", name);
    cJSON_Delete(o);
    return PC_OK;
}

/* ---- generate ---- */

typedef struct {
    char *line; /* SSE bytes not yet split into lines */
    size_t len, cap;
    bool done;
    bool failed;
    int last_char; /* last byte printed, to end the output with a newline */
} sse_state;

static void print_text(sse_state *s, const char *t) {
    size_t n = strlen(t);
    if (!n) return;
    fwrite(t, 1, n, stdout);
    fflush(stdout);
    s->last_char = (unsigned char)t[n - 1];
}

/* One SSE line: "data: {...}" or "data: [DONE]". */
static void sse_line(sse_state *s, const char *l) {
    if (strncmp(l, "data: ", 6) != 0) return;
    l += 6;
    if (!strcmp(l, "[DONE]")) {
        s->done = true;
        return;
    }
    cJSON *o = cJSON_Parse(l);
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
    if (err) {
        fprintf(stderr, "\npeftctl: %s\n", jstr(err, "message"));
        s->failed = true;
    }
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0);
    if (ch) print_text(s, jstr(ch, "text"));
    cJSON_Delete(o);
}

static bool on_sse(void *ud, const char *data, size_t n) {
    sse_state *s = ud;
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + n + 1) cap *= 2;
        char *p = realloc(s->line, cap);
        if (!p) return false;
        s->line = p;
        s->cap = cap;
    }
    memcpy(s->line + s->len, data, n);
    s->len += n;
    s->line[s->len] = '\0';
    char *start = s->line, *nl;
    while ((nl = memchr(start, '\n', (size_t)(s->line + s->len - start)))) {
        *nl = '\0';
        if (nl > start && nl[-1] == '\r') nl[-1] = '\0';
        sse_line(s, start);
        start = nl + 1;
    }
    s->len -= (size_t)(start - s->line);
    memmove(s->line, start, s->len + 1);
    return true;
}

static int cmd_generate(const pc_ctx *c, int argc, char **argv) {
    const char *model = NULL, *prompt = NULL;
    long max_tokens = -1;
    double temperature = -1;
    bool stream = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--stream")) {
            stream = true;
            continue;
        }
        if (strcmp(a, "--model") && strcmp(a, "--prompt") && strcmp(a, "--max-tokens") && strcmp(a, "--temperature"))
            return usage_error("generate: unexpected argument '%s'", a);
        if (i + 1 >= argc) return usage_error("generate: %s needs a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--max-tokens")) {
            int rc = parse_long(a, v, 1, 1L << 30, &max_tokens);
            if (rc) return rc;
        } else {
            char *end = NULL;
            temperature = strtod(v, &end);
            if (!*v || *end || !(temperature >= 0 && temperature <= 100))
                return usage_error("generate: --temperature expects a number >= 0, got '%s'", v);
        }
    }
    if (!model || !prompt) return usage_error("%s", "generate needs --model NAME and --prompt TEXT");

    cJSON *req = cJSON_CreateObject();
    if (!cJSON_AddStringToObject(req, "model", model) || !cJSON_AddStringToObject(req, "prompt", prompt) ||
        (max_tokens > 0 && !cJSON_AddNumberToObject(req, "max_tokens", (double)max_tokens)) ||
        (temperature >= 0 && !cJSON_AddNumberToObject(req, "temperature", temperature)) ||
        (stream && !cJSON_AddBoolToObject(req, "stream", true))) {
        cJSON_Delete(req);
        fprintf(stderr, "peftctl: out of memory\n");
        return PC_NOCONNECT;
    }
    char *body = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (!body) return PC_NOCONNECT;
    sse_state s = {.last_char = '\n'};
    pc_req r = {.method = "POST", .path = "/v1/completions", .json = body, .on_chunk = stream ? on_sse : NULL,
                .ud = &s};
    pc_resp resp;
    int rc = pc_request(c, &r, &resp);
    cJSON_free(body);
    if (rc) {
        free(s.line);
        return rc;
    }
    if (resp.status < 200 || resp.status >= 300) {
        rc = pc_report_error(&resp);
    } else if (stream) {
        if (s.len) sse_line(&s, s.line);
        if (!s.done && !s.failed) {
            fprintf(stderr, "\npeftctl: the stream ended without [DONE]\n");
            rc = PC_NOCONNECT;
        } else if (s.failed) {
            rc = PC_REFUSED;
        }
    } else {
        cJSON *o = json_of(&resp);
        const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0);
        if (!ch) rc = PC_REFUSED;
        else print_text(&s, jstr(ch, "text"));
        cJSON_Delete(o);
    }
    /* End the output with a newline on a terminal, so the prompt starts on its own line;
     * piped output stays exactly the generated text. */
    if (s.last_char != '\n' && isatty(STDOUT_FILENO)) putchar('\n');
    free(s.line);
    pc_resp_free(&resp);
    return rc;
}

int main(int argc, char **argv) {
    pc_ctx c = {.url = getenv("PEFTD_URL"), .api_key = getenv("PEFTD_API_KEY")};
    if (!c.url || !c.url[0]) c.url = PC_DEFAULT_URL;
    int i = 1;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return PC_OK;
        }
        int g = global_opt(&c, argc, argv, &i);
        if (g < 0) return usage_error("%s needs a valid value", argv[i]);
        if (g == 0) break;
    }
    if (i >= argc) {
        usage(stderr);
        return PC_USAGE;
    }
    const char *cmd = argv[i++];
    /* Global options may follow the command too: pull them out of its arguments. */
    char **rest = malloc(sizeof(char *) * (size_t)(argc - i + 1));
    int n = 0;
    if (!rest) return PC_USAGE;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            free(rest);
            return PC_OK;
        }
        int g = global_opt(&c, argc, argv, &i);
        if (g < 0) {
            free(rest);
            return usage_error("%s needs a valid value", argv[i]);
        }
        if (g == 0) rest[n++] = argv[i];
    }
    rest[n] = NULL;
    if (strncmp(c.url, "http://", 7) != 0 && strncmp(c.url, "https://", 8) != 0) {
        free(rest);
        return usage_error("--url must start with http:// or https:// (got '%s')", c.url);
    }

    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc;
    if (!strcmp(cmd, "upload")) rc = cmd_upload(&c, n, rest);
    else if (!strcmp(cmd, "ls") || !strcmp(cmd, "list")) rc = cmd_ls(&c, n, rest);
    else if (!strcmp(cmd, "show")) rc = cmd_show(&c, n, rest);
    else if (!strcmp(cmd, "rm") || !strcmp(cmd, "delete")) rc = cmd_rm(&c, n, rest);
    else if (!strcmp(cmd, "generate")) rc = cmd_generate(&c, n, rest);
    else if (!strcmp(cmd, "admin")) rc = pc_admin_main(&c, n, rest);
    else rc = usage_error("unknown command '%s'", cmd);
    curl_global_cleanup();
    free(rest);
    return rc;
}
