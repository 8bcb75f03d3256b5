/* adapter_store/adapter.c — adapter import's dispatch: the public entry point
 * adapter_load_dir(): finding the files of an adapter directory (config size and value
 * bounds, pickle refusal), detecting PEFT vs AdapterHub, dispatching to the kind's loader,
 * the unexpected-tensor check, and committing the staged tensors into the adapter's host
 * block (adapter_core.c). Everything runs in host memory, on any thread: nothing here
 * touches a backend (adapter_install() does, on the engine thread).
 *
 * Nothing of the weights file is kept after loading: tensors are copied (converted where
 * needed) into host buffers, then into the adapter's block, and the mapping is closed.
 */
#include "adapter_store/adapter_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapter_store/json_check.h"

/* adapter_config.json is a few kB; a rank_pattern + alpha_pattern over every module of a
 * 126-layer model (2 × 882 keys of ~40 bytes) is ~80 kB. 1 MiB is a > 10x margin; anything
 * larger is not a config we want to parse (issue 9 #6). */
#define ADAPTER_MAX_CONFIG (1u << 20)
/* JSON values cJSON may allocate for it (~64 bytes each): that config is ~2,000 values. */
#define ADAPTER_MAX_CONFIG_VALUES 65536u

/* ---------------------------------------------------------------- files */

static int path_join(adapter__ctx *c, const char *name, char *buf, size_t n) {
    if ((size_t)snprintf(buf, n, "%s/%s", c->dir, name) >= n)
        return adapter__fail(c, PEFTD_EINVAL, "%s: path too long", c->dir);
    return 0;
}

static bool file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int read_config(adapter__ctx *c, char **text, size_t *len) {
    char path[4200];
    int rc = path_join(c, "adapter_config.json", path, sizeof path);
    if (rc) return rc;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        return adapter__fail(c, e == ENOENT ? PEFTD_EFORMAT : -e, "%s: adapter_config.json: %s", c->dir,
                             strerror(e));
    }
    char *buf = malloc(ADAPTER_MAX_CONFIG + 1);
    size_t n = buf ? fread(buf, 1, ADAPTER_MAX_CONFIG + 1, f) : 0;
    bool bad = buf && ferror(f);
    fclose(f);
    if (!buf) return adapter__fail(c, PEFTD_ENOMEM, "out of memory reading adapter_config.json");
    if (bad) {
        free(buf);
        return adapter__fail(c, PEFTD_EIO, "%s: adapter_config.json: read error", c->dir);
    }
    if (n > ADAPTER_MAX_CONFIG) {
        free(buf);
        return adapter__fail(c, PEFTD_EINVAL, "%s: adapter_config.json is larger than %u bytes", c->dir,
                             ADAPTER_MAX_CONFIG);
    }
    size_t values = st_json_value_bound(buf, n);
    if (values > ADAPTER_MAX_CONFIG_VALUES) {
        free(buf);
        return adapter__fail(c, PEFTD_EINVAL, "%s: adapter_config.json holds about %zu JSON values (at most %u)",
                             c->dir, values, ADAPTER_MAX_CONFIG_VALUES);
    }
    buf[n] = 0;
    *text = buf;
    *len = n;
    return 0;
}

typedef enum { FMT_PEFT, FMT_HUB } adapter_format;

/* The weights file of the format; a pickle-only directory is refused, never unpickled. */
static int find_weights(adapter__ctx *c, adapter_format fmt, char *path, size_t n) {
    static const char *const peft_pickles[] = {"adapter_model.bin", "pytorch_model.bin", NULL};
    static const char *const hub_pickles[] = {"pytorch_adapter.bin", NULL};
    const char *name = fmt == FMT_PEFT ? "adapter_model.safetensors" : "adapter.safetensors";
    const char *const *pickles = fmt == FMT_PEFT ? peft_pickles : hub_pickles;
    c->wname = name;
    int rc = path_join(c, name, path, n);
    if (rc) return rc;
    if (file_exists(path)) return 0;
    for (int i = 0; pickles[i]; i++) {
        char p[4200];
        rc = path_join(c, pickles[i], p, sizeof p);
        if (rc) return rc;
        if (file_exists(p))
            return adapter__fail(c, PEFTD_EUNSUPPORTED,
                                 "%s: pickle weights are not loaded; save with %s=True to get %s", pickles[i],
                                 fmt == FMT_PEFT ? "safe_serialization" : "use_safetensors", name);
    }
    return adapter__fail(c, PEFTD_EFORMAT, "%s: weights file %s is missing", c->dir, name);
}

static int dispatch_peft(adapter__ctx *c) {
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(c->root, "peft_type");
    if (!cJSON_IsString(pt))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field 'peft_type' must be a string");
    const char *t = pt->valuestring;
    if (!strcmp(t, "LORA")) return adapter__load_lora(c);
    if (!strcmp(t, "ADALORA")) return adapter__load_adalora(c); /* converted to LoRA at import */
    if (!strcmp(t, "VERA")) return adapter__load_vera(c);       /* these three as well (or dense, per module) */
    if (!strcmp(t, "LOHA")) return adapter__load_loha(c);
    if (!strcmp(t, "LOKR")) return adapter__load_lokr(c);
    if (!strcmp(t, "OFT")) return adapter__load_oft(c); /* input rotations, or dense deltas per module */
    if (!strcmp(t, "BOFT")) return adapter__load_boft(c);
    if (!strcmp(t, "IA3")) return adapter__load_ia3(c);
    if (!strcmp(t, "LN_TUNING")) return adapter__load_ln_tuning(c);
    if (!strcmp(t, "PROMPT_TUNING")) return adapter__load_prompt(c);
    if (!strcmp(t, "P_TUNING")) return adapter__load_prompt(c); /* the saved table is the encoder's output */
    if (!strcmp(t, "PREFIX_TUNING")) return adapter__load_prefix(c);
    return adapter__fail(c, PEFTD_EUNSUPPORTED,
                         "adapter_config.json: peft_type '%.64s' is not served (LORA, ADALORA, VERA, LOHA, LOKR, "
                         "OFT, BOFT, IA3, LN_TUNING, PROMPT_TUNING, P_TUNING, PREFIX_TUNING are)",
                         t);
}

int adapter_load_dir(const char *dir, const adapter_base *base, adapter **out, char *err, size_t errlen) {
    adapter__ctx c = {.dir = dir, .base = base, .err = err, .errlen = errlen};
    char *text = NULL;
    size_t text_len = 0;
    char wpath[4200];
    int rc;
    if (err && errlen) err[0] = 0;
    *out = NULL;
    if (!dir || !base || base->n_layers <= 0 || base->hidden <= 0)
        return adapter__fail(&c, PEFTD_EINVAL, "adapter_load_dir: missing directory or base");
    if (strlen(dir) >= sizeof((adapter *)0)->source)
        return adapter__fail(&c, PEFTD_EINVAL, "%.64s...: path too long", dir);

    if (!(c.a = adapter__new(base->n_layers))) {
        rc = adapter__fail(&c, PEFTD_ENOMEM, "out of memory");
        goto fail;
    }
    snprintf(c.a->source, sizeof c.a->source, "%s", dir);

    if ((rc = read_config(&c, &text, &text_len))) goto fail;
    c.root = cJSON_ParseWithLength(text, text_len);
    if (!c.root) {
        rc = adapter__fail(&c, PEFTD_EFORMAT, "%s: adapter_config.json is not valid JSON", dir);
        goto fail;
    }
    if (!cJSON_IsObject(c.root)) {
        rc = adapter__fail(&c, PEFTD_EFORMAT, "%s: adapter_config.json is not a JSON object", dir);
        goto fail;
    }
    if (json_duplicate_key(c.root)) { /* save_pretrained never writes one; readers disagree on which wins */
        rc = adapter__fail(&c, PEFTD_EFORMAT, "%s: adapter_config.json has the key \"%.64s\" twice", dir,
                           json_duplicate_key(c.root));
        goto fail;
    }
    adapter_format fmt;
    const cJSON *hub_cfg = cJSON_GetObjectItemCaseSensitive(c.root, "config");
    if (cJSON_GetObjectItemCaseSensitive(c.root, "peft_type")) {
        fmt = FMT_PEFT;
        c.cfg = c.root;
    } else if (hub_cfg) {
        if (!cJSON_IsObject(hub_cfg)) {
            rc = adapter__fail(&c, PEFTD_EFORMAT, "adapter_config.json: field 'config' must be an object");
            goto fail;
        }
        fmt = FMT_HUB;
        c.cfg = (cJSON *)hub_cfg;
    } else {
        rc = adapter__fail(&c, PEFTD_EFORMAT,
                           "%s: adapter_config.json has neither 'peft_type' (PEFT) nor 'config' (AdapterHub)", dir);
        goto fail;
    }

    if ((rc = find_weights(&c, fmt, wpath, sizeof wpath))) goto fail;
    if ((rc = st_open(wpath, &c.st, err, errlen))) goto fail;
    c.used = calloc(st_count(c.st) + 1, sizeof *c.used);
    if (!c.used) {
        rc = adapter__fail(&c, PEFTD_ENOMEM, "out of memory");
        goto fail;
    }

    rc = fmt == FMT_PEFT ? dispatch_peft(&c) : adapter__load_hub(&c);
    if (!rc && fmt == FMT_PEFT) rc = adapter__load_seq_cls(&c);
    if (rc) goto fail;

    for (size_t i = 0; i < st_count(c.st); i++) {
        const st_tensor *t = st_get(c.st, i);
        if (!c.used[i]) {
            rc = adapter__fail(&c, PEFTD_EFORMAT, "%s: unexpected tensor '%s' (not implied by adapter_config.json)",
                               c.wname, t->name);
            goto fail;
        }
        c.a->n_params += t->numel;
        c.a->bytes += t->nbytes;
    }
    if ((rc = adapter__hash_files(&c, text, text_len, wpath)) || (rc = adapter__seq_cls_rehash(&c))) goto fail;
    if (adapter__stage_commit(c.a, &c.stage)) {
        rc = adapter__fail(&c, PEFTD_ENOMEM, "%s: out of memory for the adapter's tensors", dir);
        goto fail;
    }

    adapter__regex_free(&c);
    adapter__stage_clear(&c.stage);
    free(c.used);
    st_close(c.st);
    cJSON_Delete(c.root);
    free(text);
    *out = c.a;
    return 0;
fail:
    adapter__regex_free(&c);
    adapter__stage_clear(&c.stage);
    free(c.used);
    st_close(c.st);
    cJSON_Delete(c.root);
    free(text);
    adapter_free(c.a);
    return rc;
}
