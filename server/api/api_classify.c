/* server/api/api_classify.c — POST /v1/classify: label probabilities of a sequence-
 * classification adapter (PEFT task_type SEQ_CLS, the `score` head in modules_to_save).
 * Not served yet: the adapter import does not carry the classification head (the import
 * refuses task_type SEQ_CLS with a message naming it), so the route answers 400 naming
 * what is missing. The request shape it will read: {"model": adapter, "input": ...}. */
#include <cJSON.h>

#include "lib/status.h"
#include "server/api/api_completions.h"

int api_classify_parse(const api_server *s, const tenants_principal *who, const char *body, size_t len, api_request *r,
                       api_err *err) {
    cJSON *root;
    int rc = api_parse_begin(who, body, len, r, &root, err);
    r->kind = API_KIND_CLASSIFY;
    if (!rc)
        rc = api_fail(err, "unsupported_task", "/v1/classify is not served yet: SEQ_CLS adapters (task_type SEQ_CLS, "
                                               "the 'score' head) cannot be imported by this version");
    return api_parse_end(rc, root, r, err);
}

cJSON *api_classify_format(api_job *job) { return NULL; }
