/* tests/harness/adapter_syn.c — see adapter_syn.h. */
#include "tests/harness/adapter_syn.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/half.h"
#include "server/model/model.h"
#include "tests/harness/test.h"

static kbackend *KB;
static model *M;
static adapter_base BASE;

adapter_base *syn_base(void) {
    if (KB) return &BASE;
    char err[512];
    KB = kbackend_cpu_create(1);
    ASSERT(KB);
    int rc = model_load("models/stories260K", KB, &M, err, sizeof err);
    if (rc) FAIL("model_load: %s", err);
    ASSERT_EQ(model_adapter_base(M, &BASE), 0);
    return &BASE;
}

int syn_load(const char *dir, adapter **a, char *err, size_t errlen) {
    adapter_base *b = syn_base();
    err[0] = 0;
    return adapter_load_dir(dir, b, a, err, errlen);
}

adapter *syn_load_ok(const char *dir) {
    adapter *a = NULL;
    char err[1024];
    int rc = syn_load(dir, &a, err, sizeof err);
    if (rc) FAIL("%s: status %d: %s", dir, rc, err);
    ASSERT(a);
    return a;
}

void syn_load_fails(const char *dir, int want, const char *sub1, const char *sub2) {
    adapter *a = (adapter *)1;
    char err[1024];
    int rc = syn_load(dir, &a, err, sizeof err);
    if (rc != want) FAIL("%s: status %d (%s), expected %d", dir, rc, err, want);
    ASSERT(a == NULL);
    if (sub1) ASSERT_HAS(err, sub1);
    if (sub2) ASSERT_HAS(err, sub2);
}

static float synval(int seed, int64_t i) {
    uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(seed * 40503u + 17u);
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    return ((float)(h % 2001u) - 1000.0f) / 8000.0f;
}

wtensor *syn_add(syn *s, const char *dtype, int64_t d0, int64_t d1, const char *fmt, ...) {
    ASSERT(s->n < 256);
    wtensor *t = &s->t[s->n];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype);
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    int64_t n = d0 * (d1 ? d1 : 1);
    t->vals = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) t->vals[i] = synval(s->n + 1, i);
    s->n++;
    return t;
}

wtensor *syn_find(syn *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->t[i].name, name)) return &s->t[i];
    FAIL("no synthetic tensor %s", name);
}

void syn_drop(syn *s, const char *name) {
    wtensor *t = syn_find(s, name);
    free(t->vals);
    *t = s->t[--s->n];
}

void syn_write_file(const char *dir, const char *name, const void *data, size_t len) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    ASSERT(f);
    ASSERT_EQ(fwrite(data, 1, len, f), len);
    fclose(f);
}

void syn_write(syn *s, const char *dir) {
    char *cfg = cJSON_Print(s->cfg);
    syn_write_file(dir, "adapter_config.json", cfg, strlen(cfg));
    free(cfg);
    /* header JSON, padded with spaces to a multiple of 8 like the reference writer */
    size_t off = 0, cap = 65536, hl = 0;
    char *h = malloc(cap);
    hl += (size_t)snprintf(h + hl, cap - hl, "{");
    for (int i = 0; i < s->n; i++) {
        wtensor *t = &s->t[i];
        size_t esz = strcmp(t->dtype, "F32") ? 2 : 4, nb = (size_t)(t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1)) * esz;
        char shp[64];
        if (t->ndim == 2) snprintf(shp, sizeof shp, "[%lld,%lld]", (long long)t->shape[0], (long long)t->shape[1]);
        else snprintf(shp, sizeof shp, "[%lld]", (long long)t->shape[0]);
        hl += (size_t)snprintf(h + hl, cap - hl, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[%zu,%zu]}",
                               i ? "," : "", t->name, t->dtype, shp, off, off + nb);
        ASSERT(hl < cap);
        off += nb;
    }
    hl += (size_t)snprintf(h + hl, cap - hl, "}");
    while (hl % 8) h[hl++] = ' ';
    unsigned char *buf = malloc(8 + hl + off);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, h, hl);
    unsigned char *d = buf + 8 + hl;
    for (int i = 0; i < s->n; i++) {
        wtensor *t = &s->t[i];
        int64_t n = t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1);
        for (int64_t k = 0; k < n; k++) {
            if (!strcmp(t->dtype, "F32")) {
                memcpy(d, &t->vals[k], 4);
                d += 4;
            } else {
                uint16_t v = !strcmp(t->dtype, "F16") ? f32_to_f16(t->vals[k]) : f32_to_bf16(t->vals[k]);
                memcpy(d, &v, 2);
                d += 2;
            }
        }
    }
    syn_write_file(dir, s->weights, buf, 8 + hl + off);
    free(buf);
    free(h);
}

void syn_free(syn *s) {
    for (int i = 0; i < s->n; i++) free(s->t[i].vals);
    cJSON_Delete(s->cfg);
    free(s);
}

static const char *group(int m) { return m <= AMOD_O ? "self_attn" : "mlp"; }

void syn_lora_module(syn *s, int l, int m, int r, const char *dtype, bool dora) {
    int o, in;
    adapter_module_shape(syn_base(), (adapter_module)m, &o, &in);
    const char *mn = adapter_module_name((adapter_module)m);
    syn_add(s, dtype, r, in, "base_model.model.model.layers.%d.%s.%s.lora_A.weight", l, group(m), mn);
    syn_add(s, dtype, o, r, "base_model.model.model.layers.%d.%s.%s.lora_B.weight", l, group(m), mn);
    if (dora) {
        wtensor *t = syn_add(s, "F32", o, 0, "base_model.model.model.layers.%d.%s.%s.lora_magnitude_vector", l,
                             group(m), mn);
        for (int j = 0; j < o; j++) t->vals[j] = 0.5f + fabsf(t->vals[j]);
    }
}

syn *syn_lora(int r, const char *dtype) {
    syn_base();
    syn *s = calloc(1, sizeof *s);
    s->weights = "adapter_model.safetensors";
    s->cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(s->cfg, "peft_type", "LORA");
    cJSON_AddStringToObject(s->cfg, "base_model_name_or_path", "models/stories260K");
    cJSON_AddNumberToObject(s->cfg, "r", r);
    cJSON_AddNumberToObject(s->cfg, "lora_alpha", 8);
    cJSON_AddStringToObject(s->cfg, "bias", "none");
    cJSON_AddFalseToObject(s->cfg, "fan_in_fan_out");
    cJSON_AddFalseToObject(s->cfg, "use_rslora");
    cJSON_AddFalseToObject(s->cfg, "use_dora");
    cJSON_AddItemToObject(s->cfg, "rank_pattern", cJSON_CreateObject());
    cJSON_AddItemToObject(s->cfg, "alpha_pattern", cJSON_CreateObject());
    const char *tm[] = {"q_proj", "v_proj"};
    cJSON_AddItemToObject(s->cfg, "target_modules", cJSON_CreateStringArray(tm, 2));
    for (int l = 0; l < 5; l++) {
        syn_lora_module(s, l, AMOD_Q, r, dtype, false);
        syn_lora_module(s, l, AMOD_V, r, dtype, false);
    }
    return s;
}

void syn_cfg_set(syn *s, const char *field, cJSON *v) {
    cJSON_DeleteItemFromObject(s->cfg, field);
    cJSON_AddItemToObject(s->cfg, field, v);
}

const char *syn_dir(syn *s) {
    const char *d = test_tmpdir();
    syn_write(s, d);
    return d;
}

syn *syn_hub(const char *name, double rf, bool mh) {
    syn_base();
    syn *s = calloc(1, sizeof *s);
    s->weights = "adapter.safetensors";
    s->cfg = cJSON_CreateObject();
    cJSON *c = cJSON_AddObjectToObject(s->cfg, "config");
    cJSON_AddBoolToObject(c, "mh_adapter", mh);
    cJSON_AddTrueToObject(c, "output_adapter");
    cJSON_AddNumberToObject(c, "reduction_factor", rf);
    cJSON_AddStringToObject(c, "non_linearity", "gelu");
    cJSON_AddTrueToObject(c, "original_ln_before");
    cJSON_AddTrueToObject(c, "original_ln_after");
    cJSON_AddTrueToObject(c, "residual_before_ln");
    cJSON_AddFalseToObject(c, "ln_before");
    cJSON_AddFalseToObject(c, "ln_after");
    cJSON_AddFalseToObject(c, "use_gating");
    cJSON_AddNumberToObject(c, "scaling", 0.5);
    cJSON_AddItemToObject(c, "leave_out", cJSON_CreateArray());
    cJSON_AddStringToObject(s->cfg, "name", name);
    cJSON_AddNumberToObject(s->cfg, "hidden_size", 64);
    int size = (int)floor(64 / rf);
    for (int l = 0; l < 5; l++) {
        for (int p = mh ? 0 : 1; p < 2; p++) {
            const char *pl = p ? "output_adapters" : "attention_adapters";
            syn_add(s, "F32", size, 64, "model.layers.%d.%s.adapters.%s.adapter_down.0.weight", l, pl, name);
            syn_add(s, "F32", size, 0, "model.layers.%d.%s.adapters.%s.adapter_down.0.bias", l, pl, name);
            syn_add(s, "F32", 64, size, "model.layers.%d.%s.adapters.%s.adapter_up.weight", l, pl, name);
            syn_add(s, "F32", 64, 0, "model.layers.%d.%s.adapters.%s.adapter_up.bias", l, pl, name);
        }
    }
    return s;
}

void syn_hub_set(syn *s, const char *field, cJSON *v) {
    cJSON *c = cJSON_GetObjectItem(s->cfg, "config");
    cJSON_DeleteItemFromObject(c, field);
    cJSON_AddItemToObject(c, field, v);
}
