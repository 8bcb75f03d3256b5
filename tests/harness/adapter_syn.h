/* tests/harness/adapter_syn.h — synthetic adapters for the import tests
 * (tests/unit/test_adapter_import.c, test_adapter_refusals.c): a PEFT / AdapterHub adapter
 * described in memory (config JSON + named tensors with deterministic values), written as
 * adapter_config.json + safetensors into a fresh test_tmpdir() directory, and loaded against
 * the embedded stories260K base with the status and message checked.
 *
 * Threads: a test's own (forked) process; the base is loaded once per process, on first use. */
#ifndef PEFTD_TEST_ADAPTER_SYN_H
#define PEFTD_TEST_ADAPTER_SYN_H

#include <cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "adapter_store/adapter.h"
#include "server/model/model_adapter_base.h"

#define ASSERT_HAS(s, sub)                                                                        \
    do {                                                                                          \
        if (!strstr((s), (sub))) FAIL("message \"%s\" does not contain \"%s\"", (s), (sub));      \
    } while (0)

/* The stories260K base the adapters are checked against (loaded on the first call). */
adapter_base *syn_base(void);
/* adapter_load_dir(dir) against syn_base(): its status (err filled on failure). */
int syn_load(const char *dir, adapter **a, char *err, size_t errlen);
/* Loads dir, failing the test on any error. */
adapter *syn_load_ok(const char *dir);
/* Loads dir expecting status want and an error naming every given substring (NULL: none). */
void syn_load_fails(const char *dir, int want, const char *sub1, const char *sub2);

typedef struct {
    char name[256];
    char dtype[8]; /* "F32", "F16" or "BF16" */
    int ndim;
    int64_t shape[2];
    float *vals; /* f32 source values (rounded to dtype when written) */
} wtensor;

typedef struct {
    wtensor t[256];
    int n;
    cJSON *cfg;
    const char *weights; /* file name */
} syn;

/* Adds a [d0] (d1 == 0) or [d0, d1] tensor named by fmt, values from its index; returns it. */
wtensor *syn_add(syn *s, const char *dtype, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
wtensor *syn_find(syn *s, const char *name); /* fails the test when absent */
void syn_drop(syn *s, const char *name);
void syn_write_file(const char *dir, const char *name, const void *data, size_t len);
/* Writes s's config and weights (safetensors, header padded to 8 like the reference writer). */
void syn_write(syn *s, const char *dir);
void syn_free(syn *s);
/* LoRA A/B (and DoRA magnitude) of module m (adapter_module) in layer l. */
void syn_lora_module(syn *s, int l, int m, int r, const char *dtype, bool dora);
/* A PEFT LoRA: r, alpha 8, target_modules [q_proj, v_proj], every layer, in dtype. */
syn *syn_lora(int r, const char *dtype);
/* An AdapterHub bottleneck named name: reduction factor rf, mh_adapter mh, every layer. */
syn *syn_hub(const char *name, double rf, bool mh);
/* Replaces a top-level config field (syn_cfg_set) or one of AdapterHub's "config" fields. */
void syn_cfg_set(syn *s, const char *field, cJSON *v);
void syn_hub_set(syn *s, const char *field, cJSON *v);
/* Writes s to a fresh directory; returns it (valid until the next call). */
const char *syn_dir(syn *s);

#endif
