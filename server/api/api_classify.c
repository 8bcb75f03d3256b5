/* server/api/api_classify.c — POST /v1/classify: label probabilities of a sequence-
 * classification adapter (PEFT task_type SEQ_CLS: LlamaForSequenceClassification + LoRA,
 * the `score` head saved from modules_to_save; adapter_peft_seqcls.c).
 *
 *   {"model": adapter (or "adapter"), "adapter_scale"?, "user"?,
 *    "input": string | [strings] | [token ids] | [[token ids]]   (1 .. API_MAX_PROMPTS)}
 *
 * As transformers pools (the last non-pad token; peftd never pads, so the input's last
 * token, a text input's BOS first): the final-normed hidden state of the last token times
 * the head, softmax over the labels (engine ENGINE_POOL_CLASSIFY, computed in double).
 * Labels are the adapter's id2label (a config.json beside it), else LABEL_<i>.
 *
 * Response: {"object":"list","model","data":[{"object":"classification","index","label",
 * "probs":{label: p, ...},"probabilities":[p_0, ...],"labels":[...]}],"usage":{...}}; label
 * is the most probable one (the lowest index among equals, as argmax).
 * The base model (no head) or an adapter without one answers 400.
 */
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "lib/status.h"
#include "server/api/api_completions.h"

static const char *const cls_keys[] = {"model", "adapter", "adapter_scale", "user", "input", NULL};

int api_classify_parse(const api_server *s, const tenants_principal *who, const char *body, size_t len, api_request *r,
                       api_err *err) {
    cJSON *root;
    int rc = api_parse_begin(who, body, len, r, &root, err);
    r->kind = API_KIND_CLASSIFY;
    if (!rc) rc = api_check_keys(root, cls_keys, "/v1/classify", err);
    if (!rc) rc = api_parse_model(s, who, root, r, err);
    if (!rc && !r->adapter)
        rc = api_fail(err, "invalid_value", "/v1/classify needs 'model' to name a sequence-classification adapter "
                                            "(PEFT task_type SEQ_CLS): the base model has no classification head");
    if (!rc && r->adapter->meta.kind != ADAPTER_LORA)
        rc = api_fail(err, "invalid_value", "'%s' is %s: sequence-classification adapters are LoRA (task_type SEQ_CLS)",
                      r->model_id, adapter_kind_name(r->adapter->meta.kind));
    if (!rc) rc = api_parse_prompts(s, root, "input", r, err);
    if (!rc) rc = api_parse_fit_prefill(s, r, err);
    r->gen.pool = ENGINE_POOL_CLASSIFY;
    return api_parse_end(rc, root, r, err);
}

static cJSON *one(const api_choice *ch, int index) {
    cJSON *d = cJSON_CreateObject(), *probs, *arr, *names;
    if (!d || !cJSON_AddStringToObject(d, "object", "classification") || !cJSON_AddNumberToObject(d, "index", index) ||
        !(probs = cJSON_AddObjectToObject(d, "probs")) || !(arr = cJSON_AddArrayToObject(d, "probabilities")) ||
        !(names = cJSON_AddArrayToObject(d, "labels")))
        goto fail;
    const char *lab = ch->labels, *best = NULL;
    float bp = -1;
    for (int i = 0; i < ch->n_hidden; i++) {
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(ch->hidden[i]));
        cJSON_AddItemToArray(names, cJSON_CreateString(lab));
        if (!cJSON_GetObjectItemCaseSensitive(probs, lab)) cJSON_AddNumberToObject(probs, lab, ch->hidden[i]);
        if (ch->hidden[i] > bp) bp = ch->hidden[i], best = lab;
        lab += strlen(lab) + 1;
    }
    if (!best || !cJSON_AddStringToObject(d, "label", best)) goto fail;
    return d;
fail:
    cJSON_Delete(d);
    return NULL;
}

cJSON *api_classify_format(api_job *job) {
    cJSON *o = cJSON_CreateObject(), *data = NULL, *u = NULL;
    if (!o || !cJSON_AddStringToObject(o, "object", "list") || !cJSON_AddStringToObject(o, "model", job->req.model_id) ||
        !(data = cJSON_AddArrayToObject(o, "data")))
        goto fail;
    for (int i = 0; i < job->n_choices; i++) {
        const api_choice *ch = &job->choices[i];
        cJSON *d = ch->hidden && ch->labels ? one(ch, i) : NULL;
        if (!d) goto fail;
        cJSON_AddItemToArray(data, d);
    }
    if (!(u = api_format_usage(job))) goto fail;
    cJSON_AddItemToObject(o, "usage", u);
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}
