/* server/api/api_models.c — GET /v1/models: the base model first, then the adapters a
 * request may name, in OpenAI's list shape (adapters carry "parent": the base, as vLLM
 * lists LoRA modules).
 *
 * The adapters are the store's (read page by page, so a large store never needs one big
 * read transaction) that were validated against this base (same fingerprint), merged by
 * name with what the registry publishes (adapters preloaded without a store, or published
 * but not stored). Both lists are in name order, so the merge is one pass.
 * With auth on, a tenant sees its own adapters and the public ones (astore_list_visible);
 * the registry merge then covers public adapters only.
 */
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "server/http/http_auth.h"
#include "server/api/api_internal.h"

/* Store entries read per LMDB read transaction while listing. */
#define API_MODELS_PAGE 256

typedef struct {
    astore_meta *v;
    int n, cap;
    bool oom;
} meta_vec;

static void collect(void *ud, const adapter_handle *h) {
    meta_vec *mv = ud;
    if (mv->oom || h->meta.owner[0]) return; /* tenants' adapters come from the store, scoped */
    if (mv->n == mv->cap) {
        int cap = mv->cap ? 2 * mv->cap : 16;
        astore_meta *p = realloc(mv->v, (size_t)cap * sizeof *p);
        if (!p) {
            mv->oom = true;
            return;
        }
        mv->v = p;
        mv->cap = cap;
    }
    mv->v[mv->n++] = h->meta;
}

static bool fill_adapter(const api_server *s, cJSON *m, const astore_meta *a) {
    return cJSON_AddStringToObject(m, "id", a->name) && cJSON_AddStringToObject(m, "object", "model") &&
           cJSON_AddNumberToObject(m, "created", (double)(a->created ? a->created : s->created)) &&
           cJSON_AddStringToObject(m, "owned_by", a->owner[0] ? a->owner : "peftd") &&
           cJSON_AddStringToObject(m, "root", a->name) && cJSON_AddStringToObject(m, "parent", s->m->name) &&
           cJSON_AddStringToObject(m, "adapter_kind", adapter_kind_name(a->kind)) &&
           cJSON_AddNumberToObject(m, "version", (double)a->version) &&
           cJSON_AddNumberToObject(m, "max_model_len", engine_context_length(s->e));
}

static bool add_adapter(const api_server *s, cJSON *data, const astore_meta *a) {
    cJSON *m = cJSON_CreateObject();
    if (!m) return false;
    if (!cJSON_AddItemToArray(data, m)) {
        cJSON_Delete(m);
        return false;
    }
    return fill_adapter(s, m, a);
}

/* Appends the merged adapter list; false when out of memory. *store_rc gets a store
 * failure (then only the registry's adapters are listed). */
static bool add_adapters(const api_server *s, const char *owner, cJSON *data, int *store_rc) {
    meta_vec reg = {0};
    if (!owner[0]) registry_foreach(s->reg, collect, &reg);
    bool ok = !reg.oom;
    int ri = 0;
    if (ok && s->store) {
        const char *fp = adapter_service_base_fingerprint(s->svc);
        astore_meta *page = malloc(API_MODELS_PAGE * sizeof *page);
        char after[ASTORE_NAME_MAX + 1] = "";
        bool more = page != NULL;
        ok = page != NULL;
        while (ok && more) {
            int n = 0;
            int rc = astore_list_visible(s->store, owner, after, API_MODELS_PAGE, page, &n, &more);
            if (rc < 0) {
                *store_rc = rc;
                break;
            }
            for (int i = 0; i < n && ok; i++) {
                const astore_meta *a = &page[i];
                while (ok && ri < reg.n && strcmp(reg.v[ri].name, a->name) < 0) ok = add_adapter(s, data, &reg.v[ri++]);
                bool published = ri < reg.n && strcmp(reg.v[ri].name, a->name) == 0;
                if (published) ri++;
                if (ok && (published || strcmp(a->base_fingerprint, fp) == 0)) ok = add_adapter(s, data, a);
            }
            if (n) snprintf(after, sizeof after, "%s", page[n - 1].name);
            else more = false;
        }
        free(page);
    }
    while (ok && ri < reg.n) ok = add_adapter(s, data, &reg.v[ri++]);
    free(reg.v);
    return ok;
}

static bool fill_base(const api_server *s, cJSON *m, const char *id) {
    return cJSON_AddStringToObject(m, "id", id) && cJSON_AddStringToObject(m, "object", "model") &&
           cJSON_AddNumberToObject(m, "created", (double)s->created) &&
           cJSON_AddStringToObject(m, "owned_by", "peftd") && cJSON_AddStringToObject(m, "root", s->m->name) &&
           cJSON_AddNumberToObject(m, "max_model_len", engine_context_length(s->e));
}

enum MHD_Result api_models_get(http_req *req, struct MHD_Connection *conn) {
    const api_server *s = api_of(req);
    cJSON *root = cJSON_CreateObject();
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON *m = cJSON_CreateObject();
    if (!cJSON_AddStringToObject(root, "object", "list") || !data || !m) {
        cJSON_Delete(m);
        goto fail;
    }
    cJSON_AddItemToArray(data, m);
    if (!fill_base(s, m, s->m->name)) goto fail;
    for (int i = 0; i < 8; i++) { /* the aliases (--served-model-name), after the base's own name */
        const char *alias = s->cfg.served_names[i];
        if (!alias || !alias[0] || !strcmp(alias, s->m->name)) continue;
        cJSON *a = cJSON_CreateObject();
        if (!a) goto fail;
        if (!cJSON_AddItemToArray(data, a)) {
            cJSON_Delete(a);
            goto fail;
        }
        if (!fill_base(s, a, alias)) goto fail;
    }
    int store_rc = 0;
    if (!add_adapters(s, http_owner(req), data, &store_rc)) goto fail;
    if (store_rc < 0) {
        cJSON_Delete(root);
        return api_fail_status(req, conn, store_rc, "listing the stored adapters", NULL);
    }
    return http_respond_json(req, conn, MHD_HTTP_OK, root);
fail:
    cJSON_Delete(root);
    return http_respond_json(req, conn, MHD_HTTP_OK, NULL);
}

/* registry_foreach: the public published version of one name. */
typedef struct {
    const char *name;
    astore_meta meta;
    bool found;
} find_one;

static void find_published(void *ud, const adapter_handle *h) {
    find_one *f = ud;
    if (!f->found && !h->meta.owner[0] && !strcmp(h->meta.name, f->name)) {
        f->meta = h->meta;
        f->found = true;
    }
}

/* GET /v1/models/{id} (the SDK's models.retrieve): the entry /v1/models lists for id, by
 * the same rules (the caller's own adapter, then a public one stored for this base or
 * published); anything else, another tenant's adapter included, is 404 model_not_found,
 * so a tenant cannot probe for names it may not use. */
enum MHD_Result api_models_item(http_req *req, struct MHD_Connection *conn) {
    api_server *s = api_of(req);
    const char *id = req->arg ? req->arg : "";
    cJSON *m = cJSON_CreateObject();
    if (!m) return http_respond_json(req, conn, MHD_HTTP_OK, NULL);
    if (api_is_base(s, id)) {
        if (!fill_base(s, m, id)) goto oom;
        return http_respond_json(req, conn, MHD_HTTP_OK, m);
    }
    find_one f = {.name = id};
    if (registry_name_valid(id)) {
        const char *owner = http_owner(req);
        int rc = PEFTD_ENOTFOUND;
        if (s->store) {
            const char *fp = adapter_service_base_fingerprint(s->svc);
            if (owner[0]) rc = astore_get_meta_scoped(s->store, owner, id, &f.meta);
            if (rc == PEFTD_ENOTFOUND) rc = astore_get_meta_scoped(s->store, "", id, &f.meta);
            if (rc < 0 && rc != PEFTD_ENOTFOUND) {
                cJSON_Delete(m);
                return api_fail_status(req, conn, rc, "reading the adapter", NULL);
            }
            f.found = rc == 0 && !strcmp(f.meta.base_fingerprint, fp);
        }
        if (!f.found && !(rc == 0 && f.meta.owner[0])) registry_foreach(s->reg, find_published, &f);
    }
    if (!f.found) {
        cJSON_Delete(m);
        return http_error(req, conn, MHD_HTTP_NOT_FOUND, "model_not_found", "The model '%.*s' does not exist",
                          (int)http_utf8_prefix(http_utf8_valid(id, strlen(id)) ? id : "", 200), id);
    }
    if (!fill_adapter(s, m, &f.meta)) goto oom;
    return http_respond_json(req, conn, MHD_HTTP_OK, m);
oom:
    cJSON_Delete(m);
    return http_respond_json(req, conn, MHD_HTTP_OK, NULL);
}
