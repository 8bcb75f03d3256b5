/* adapter_store/adapter_peft_config.c — typed, checked access to adapter_config.json fields
 * (both PEFT and AdapterHub configs), and the PEFT fields every kind must refuse when set.
 *
 * A config is user input: a field of the wrong JSON type is a PEFTD_EFORMAT naming the
 * field, never a silent default. Absent and null both mean "the library's default", as
 * they do when PEFT reads the file back with from_pretrained.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"

static const cJSON *field_of(const cJSON *obj, const char *field) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, field);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

int adapter__json_bool(adapter__ctx *c, const cJSON *obj, const char *field, bool def, bool *out) {
    const cJSON *v = field_of(obj, field);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field '%s' must be true or false", field);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* The checked narrowings every config reader goes through (issue 9 #2: a JSON number is a
 * double of any magnitude; casting one outside the target range is undefined behaviour, and
 * a float that overflows to Inf is a value the forward pass would turn into garbage). */
int adapter__num_int(adapter__ctx *c, const cJSON *v, const char *what, long long lo, long long hi, int *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: %s must be an integer", what);
    /* compared as doubles: lo/hi are exact in a double (|bounds| < 2^53), v may be 1e300 */
    if (!(v->valuedouble >= (double)lo && v->valuedouble <= (double)hi))
        return adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: %s is %g; must be an integer in [%lld, %lld]",
                             what, v->valuedouble, lo, hi);
    *out = (int)v->valuedouble;
    return 0;
}

int adapter__num_float(adapter__ctx *c, const cJSON *v, const char *what, double max_abs, double *out) {
    if (!cJSON_IsNumber(v))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: %s must be a number", what);
    if (!isfinite(v->valuedouble) || fabs(v->valuedouble) > max_abs)
        return adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: %s is %g; must be a finite number with "
                                              "magnitude at most %g",
                             what, v->valuedouble, max_abs);
    *out = v->valuedouble;
    return 0;
}

int adapter__json_num(adapter__ctx *c, const cJSON *obj, const char *field, double def, double max_abs, double *out) {
    const cJSON *v = field_of(obj, field);
    if (!v) {
        *out = def;
        return 0;
    }
    char what[96];
    snprintf(what, sizeof what, "field '%s'", field);
    return adapter__num_float(c, v, what, max_abs, out);
}

int adapter__json_int(adapter__ctx *c, const cJSON *obj, const char *field, int def, long long lo, long long hi,
                      int *out) {
    const cJSON *v = field_of(obj, field);
    if (!v) {
        *out = def;
        return 0;
    }
    char what[96];
    snprintf(what, sizeof what, "field '%s'", field);
    return adapter__num_int(c, v, what, lo, hi, out);
}

int adapter__json_str(adapter__ctx *c, const cJSON *obj, const char *field, const char *def,
                      const char **out) {
    const cJSON *v = field_of(obj, field);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsString(v))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field '%s' must be a string", field);
    *out = v->valuestring;
    return 0;
}

int adapter__json_str_list(adapter__ctx *c, const cJSON *obj, const char *field, const cJSON **out) {
    const cJSON *v = field_of(obj, field);
    *out = NULL;
    if (!v) return 0;
    const cJSON *e;
    if (!cJSON_IsArray(v))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field '%s' must be a list of strings", field);
    int n = 0;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsString(e))
            return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field '%s' must be a list of strings",
                                 field);
        if (++n > ADAPTER_MAX_PATTERNS)
            return adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: field '%s' has more than %d entries", field,
                                 ADAPTER_MAX_PATTERNS);
    }
    *out = v;
    return 0;
}

/* A field whose non-null, non-false, non-empty value changes inference. */
static bool is_set(const cJSON *v) {
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v)) return false;
    if ((cJSON_IsArray(v) || cJSON_IsObject(v)) && !v->child) return false;
    return true;
}

int adapter__peft_check_task(adapter__ctx *c) {
    /* base_model_name_or_path / revision / peft_version are informational: compatibility
     * is decided by the tensor shapes against the served base. task_type is not: a
     * classification or encoder adapter trained with another head would be served as a
     * language model and produce text its owner never trained for. */
    const cJSON *task = cJSON_GetObjectItemCaseSensitive(c->cfg, "task_type");
    if (task && !cJSON_IsNull(task)) {
        if (!cJSON_IsString(task))
            return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field 'task_type' must be a string");
        /* SEQ_CLS: its head is read after the kind's tensors (adapter_peft_seqcls.c) */
        if (strcmp(task->valuestring, "CAUSAL_LM") != 0 && strcmp(task->valuestring, "SEQ_CLS") != 0)
            return adapter__fail(c, PEFTD_EUNSUPPORTED,
                                 "adapter_config.json: task_type '%.40s' is not served: peftd generates text "
                                 "(task_type CAUSAL_LM) and classifies (SEQ_CLS, LoRA)", task->valuestring);
    }
    return 0;
}

int adapter__peft_check_common(adapter__ctx *c) {
    int rc = adapter__peft_check_task(c);
    if (rc) return rc;
    bool fifo;
    rc = adapter__json_bool(c, c->cfg, "fan_in_fan_out", false, &fifo);
    if (rc) return rc;
    if (fifo)
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: 'fan_in_fan_out: true' (GPT-2 Conv1D layout) is not served "
                             "on Llama-family bases");
    /* Fields of newer PEFT variants whose weights alone do not describe the forward pass. */
    static const char *const refused[] = {
        "layer_replication",      /* duplicates base layers */
        "target_parameters",      /* adapts nn.Parameter (MoE experts), not Linear modules */
        "trainable_token_indices",/* sparse embedding rows */
        "alora_invocation_tokens",/* activated LoRA: applies only after an invocation sequence */
        "arrow_config",           /* per-token routing among LoRA experts */
        "use_qalora",             /* quantization-aware pooling of the input */
        "use_bdlora",
        NULL,
    };
    for (int i = 0; refused[i]; i++) {
        if (is_set(cJSON_GetObjectItemCaseSensitive(c->cfg, refused[i])))
            return adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: field '%s' is set; peftd does not "
                                                        "serve this PEFT variant",
                                 refused[i]);
    }
    return 0;
}
