/* server/http/api_models.c — GET /v1/models: the base model and the served adapters in
 * OpenAI's list shape (adapters carry "parent": the base, as vLLM lists LoRA modules). */
#include <cJSON.h>

#include "server/http/http_internal.h"

typedef struct {
    const http_server *s;
    cJSON *data;
    bool oom;
} list_ctx;

static void add_adapter(void *ud, const adapter_handle *h) {
    list_ctx *c = ud;
    const char *name = h->meta.name;
    cJSON *m = cJSON_CreateObject();
    if (!m || !cJSON_AddItemToArray(c->data, m) || !cJSON_AddStringToObject(m, "id", name) ||
        !cJSON_AddStringToObject(m, "object", "model") ||
        !cJSON_AddNumberToObject(m, "created", (double)c->s->created) ||
        !cJSON_AddStringToObject(m, "owned_by", "peftd") || !cJSON_AddStringToObject(m, "root", name) ||
        !cJSON_AddStringToObject(m, "parent", c->s->m->name) ||
        !cJSON_AddStringToObject(m, "adapter_kind", adapter_kind_name(h->meta.kind)) ||
        !cJSON_AddNumberToObject(m, "max_model_len", engine_context_length(c->s->e)))
        c->oom = true;
}

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
    list_ctx c = {.s = s, .data = data};
    registry_foreach(s->reg, add_adapter, &c);
    if (c.oom) goto fail;
    return http_respond_json(req, conn, MHD_HTTP_OK, root);
fail:
    cJSON_Delete(root);
    return http_respond_json(req, conn, MHD_HTTP_OK, NULL);
}
