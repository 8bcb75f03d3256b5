/* server/model/model_eos.c — the end-of-generation ids of a model directory
 * (model_eos.h): generation_config.json's eos_token_id, else config.json's. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/status.h"
#include "server/model/model_eos.h"

/* generation_config.json is a few hundred bytes; anything past 1 MiB is not one. */
#define EOS_MAX_FILE (1L << 20)

static bool is_id(const cJSON *v, int vocab) {
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble) &&
           v->valuedouble >= 0 && v->valuedouble < vocab;
}

static int add_id(model_eos *out, const cJSON *v, const char *file, int vocab, char *err, size_t errlen) {
    if (!is_id(v, vocab)) {
        if (cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble))
            snprintf(err, errlen, "%s: \"eos_token_id\" %.17g is outside the vocabulary [0, %d)", file, v->valuedouble,
                     vocab);
        else
            snprintf(err, errlen, "%s: \"eos_token_id\" must be an integer token id or a list of them", file);
        return PEFTD_EFORMAT;
    }
    int32_t id = (int32_t)v->valuedouble;
    for (int i = 0; i < out->n; i++)
        if (out->ids[i] == id) return 0;
    if (out->n == MODEL_MAX_EOS) {
        snprintf(err, errlen, "%s: \"eos_token_id\" lists more than %d ids", file, MODEL_MAX_EOS);
        return PEFTD_EFORMAT;
    }
    out->ids[out->n++] = id;
    return 0;
}

int model_eos_parse(const cJSON *root, const char *file, int vocab, model_eos *out, int *named, char *err,
                    size_t errlen) {
    memset(out, 0, sizeof *out);
    *named = 0;
    const cJSON *v = NULL, *c;
    cJSON_ArrayForEach(c, root) {
        if (!c->string || strcmp(c->string, "eos_token_id") != 0) continue;
        if (v) {
            snprintf(err, errlen, "%s: duplicate field \"eos_token_id\"", file);
            return PEFTD_EFORMAT;
        }
        v = c;
    }
    if (!v || cJSON_IsNull(v)) return 0;
    int rc;
    if (cJSON_IsArray(v)) {
        if (cJSON_GetArraySize(v) == 0) return 0; /* as config.json's parser: no such token */
        cJSON_ArrayForEach(c, v) if ((rc = add_id(out, c, file, vocab, err, errlen)) < 0) return rc;
    } else if ((rc = add_id(out, v, file, vocab, err, errlen)) < 0) {
        return rc;
    }
    out->source = file;
    *named = 1;
    return 0;
}

static int read_small(const char *path, char **buf, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return PEFTD_ENOTFOUND;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return PEFTD_EIO;
    }
    char *b = malloc(EOS_MAX_FILE + 1);
    if (!b) {
        fclose(f);
        return PEFTD_ENOMEM;
    }
    size_t n = fread(b, 1, EOS_MAX_FILE + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > EOS_MAX_FILE) {
        free(b);
        snprintf(err, errlen, "%s: %s", path, bad ? "read error" : "larger than 1 MiB");
        return PEFTD_EIO;
    }
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

static int from_generation_config(const char *dir, int vocab, model_eos *out, int *named, char *err, size_t errlen) {
    char path[4200];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    char *text = NULL;
    size_t len = 0;
    *named = 0;
    int rc = read_small(path, &text, &len, err, errlen);
    if (rc == PEFTD_ENOTFOUND) return 0;
    if (rc < 0) return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        cJSON_Delete(root);
        return PEFTD_EFORMAT;
    }
    rc = model_eos_parse(root, "generation_config.json", vocab, out, named, err, errlen);
    cJSON_Delete(root);
    return rc;
}

int model_eos_load(const char *dir, const char *config_json, size_t config_len, int vocab, model_eos *out, char *err,
                   size_t errlen) {
    int named = 0;
    int rc = from_generation_config(dir, vocab, out, &named, err, errlen);
    if (rc < 0 || named) return rc;
    cJSON *root = cJSON_ParseWithLength(config_json, config_len);
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "config.json: not a JSON object");
        cJSON_Delete(root);
        return PEFTD_EFORMAT;
    }
    rc = model_eos_parse(root, "config.json", vocab, out, &named, err, errlen);
    cJSON_Delete(root);
    return rc;
}
