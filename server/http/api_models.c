/* server/http/api_models.c — GET /v1/models: the served base model in OpenAI's list shape
 * (adapters join this list once the adapter store serves them). */
#include <cJSON.h>

#include "server/http/http_internal.h"

enum MHD_Result api_models_get(http_req *req, struct MHD_Connection *conn) {
    const http_server *s = req->srv;
    cJSON *root = cJSON_CreateObject();
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON *m = cJSON_CreateObject();
    if (!cJSON_AddStringToObject(root, "object", "list") || !data || !m) goto fail;
    cJSON_AddItemToArray(data, m);
    if (!cJSON_AddStringToObject(m, "id", s->m->name) ||
        !cJSON_AddStringToObject(m, "object", "model") ||
        !cJSON_AddNumberToObject(m, "created", (double)s->created) ||
        !cJSON_AddStringToObject(m, "owned_by", "peftd") ||
        !cJSON_AddStringToObject(m, "root", s->m->name) ||
        !cJSON_AddNumberToObject(m, "max_model_len", engine_context_length(s->e)))
        goto fail;
    return http_respond_json(req, conn, MHD_HTTP_OK, root);
fail:
    cJSON_Delete(root);
    return http_respond_json(req, conn, MHD_HTTP_OK, NULL);
}
