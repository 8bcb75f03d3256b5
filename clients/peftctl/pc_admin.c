/* clients/peftctl/pc_admin.c — `peftctl admin`: see pc_admin.h. Tenants are listed as a
 * table, a new key is printed once (it cannot be shown again: the daemon keeps its hash
 * only), keys are listed by id and prefix.
 */
#include "clients/peftctl/pc_admin.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int admin_usage(const char *msg) {
    fprintf(stderr,
            "peftctl: %s\n"
            "usage: peftctl admin tenant create ID [--weight W] [--max-concurrent N] [--tokens-per-min N]\n"
            "                                      [--max-storage-bytes N]\n"
            "       peftctl admin tenant set ID [same options]\n"
            "       peftctl admin tenant ls | rm ID\n"
            "       peftctl admin key create TENANT | ls TENANT | revoke TENANT KEY_ID\n",
            msg);
    return PC_USAGE;
}

/* Sends method path with an optional JSON body; *out gets the 2xx answer's JSON. */
static int call(const pc_ctx *c, const char *method, const char *path, const cJSON *body, cJSON **out) {
    char *json = body ? cJSON_PrintUnformatted(body) : NULL;
    pc_req r = {.method = method, .path = path, .json = json};
    pc_resp resp;
    *out = NULL;
    int rc = pc_request(c, &r, &resp);
    free(json);
    if (rc) return rc;
    if (resp.status < 200 || resp.status >= 300) rc = pc_report_error(&resp);
    else if (!(*out = cJSON_ParseWithLength(resp.body, resp.len))) {
        fprintf(stderr, "peftctl: the server's answer is not JSON\n");
        rc = PC_REFUSED;
    }
    pc_resp_free(&resp);
    return rc;
}

static int path_of(char *buf, size_t cap, const char *a, const char *b, const char *c2) {
    char *ea = a ? pc_escape(a) : NULL, *eb = b ? pc_escape(b) : NULL;
    int n = snprintf(buf, cap, "/v1/admin/tenants%s%s%s%s%s", a ? "/" : "", ea ? ea : "", c2 ? c2 : "",
                     b ? "/" : "", eb ? eb : "");
    curl_free(ea);
    curl_free(eb);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static const char *str(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static void print_tenant(const cJSON *t) {
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(t, "limits");
    printf("%-24s %6g %14.0f %14.0f %18.0f\n", str(t, "id"), num(t, "weight"), num(l, "max_concurrent"),
           num(l, "tokens_per_min"), num(l, "max_storage_bytes"));
}

/* create / set: the options into a {"weight", "limits"} body. */
static int tenant_write(const pc_ctx *c, bool create, int argc, char **argv) {
    if (argc < 1 || argv[0][0] == '-') return admin_usage(create ? "tenant create needs an ID" : "tenant set needs an ID");
    cJSON *body = cJSON_CreateObject(), *limits = cJSON_CreateObject(), *out = NULL;
    int rc = PC_OK;
    if (create) cJSON_AddStringToObject(body, "id", argv[0]);
    static const struct {
        const char *opt, *field;
    } lim[] = {{"--max-concurrent", "max_concurrent"},
               {"--tokens-per-min", "tokens_per_min"},
               {"--max-storage-bytes", "max_storage_bytes"}};
    for (int i = 1; i < argc && rc == PC_OK; i += 2) {
        char *end = NULL;
        if (i + 1 >= argc) {
            rc = admin_usage("an option needs a value");
            break;
        }
        double v = strtod(argv[i + 1], &end);
        if (!*argv[i + 1] || *end || v < 0) {
            rc = admin_usage("option values are numbers >= 0");
            break;
        }
        bool known = false;
        if (!strcmp(argv[i], "--weight")) {
            cJSON_AddNumberToObject(body, "weight", v);
            known = true;
        }
        for (size_t j = 0; j < sizeof lim / sizeof lim[0]; j++)
            if (!strcmp(argv[i], lim[j].opt)) {
                cJSON_AddNumberToObject(limits, lim[j].field, v);
                known = true;
            }
        if (!known) rc = admin_usage("unknown option");
    }
    if (rc == PC_OK) {
        char path[512];
        if (limits->child) {
            cJSON_AddItemToObject(body, "limits", limits);
            limits = NULL;
        }
        if (path_of(path, sizeof path, create ? NULL : argv[0], NULL, NULL)) rc = admin_usage("ID too long");
        else rc = call(c, create ? "POST" : "PATCH", path, body, &out);
    }
    if (rc == PC_OK) print_tenant(out);
    cJSON_Delete(limits);
    cJSON_Delete(body);
    cJSON_Delete(out);
    return rc;
}

static int cmd_tenant(const pc_ctx *c, int argc, char **argv) {
    if (argc < 1) return admin_usage("admin tenant needs create, ls, rm or set");
    const char *sub = argv[0];
    cJSON *out = NULL;
    char path[512];
    int rc;
    if (!strcmp(sub, "create") || !strcmp(sub, "set")) return tenant_write(c, !strcmp(sub, "create"), argc - 1, argv + 1);
    if (!strcmp(sub, "ls") || !strcmp(sub, "list")) {
        if ((rc = call(c, "GET", "/v1/admin/tenants", NULL, &out))) return rc;
        printf("%-24s %6s %14s %14s %18s\n", "ID", "WEIGHT", "CONCURRENT", "TOKENS/MIN", "STORAGE_BYTES");
        const cJSON *t;
        cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(out, "data")) print_tenant(t);
        cJSON_Delete(out);
        return PC_OK;
    }
    if (!strcmp(sub, "rm") || !strcmp(sub, "delete")) {
        if (argc != 2) return admin_usage("tenant rm needs exactly one ID");
        if (path_of(path, sizeof path, argv[1], NULL, NULL)) return admin_usage("ID too long");
        if ((rc = call(c, "DELETE", path, NULL, &out))) return rc;
        printf("deleted tenant %s (its keys and adapters too)\n", argv[1]);
        cJSON_Delete(out);
        return PC_OK;
    }
    return admin_usage("unknown tenant command");
}

static int cmd_key(const pc_ctx *c, int argc, char **argv) {
    if (argc < 2) return admin_usage("admin key needs create|ls TENANT or revoke TENANT KEY_ID");
    const char *sub = argv[0];
    cJSON *out = NULL;
    char path[512];
    int rc;
    if (!strcmp(sub, "revoke")) {
        if (argc != 3) return admin_usage("key revoke needs TENANT and KEY_ID");
        if (path_of(path, sizeof path, argv[1], argv[2], "/keys")) return admin_usage("argument too long");
        if ((rc = call(c, "DELETE", path, NULL, &out))) return rc;
        printf("revoked %s\n", argv[2]);
        cJSON_Delete(out);
        return PC_OK;
    }
    if (argc != 2) return admin_usage("key create / ls need exactly one TENANT");
    if (path_of(path, sizeof path, argv[1], NULL, "/keys")) return admin_usage("TENANT too long");
    if (!strcmp(sub, "create")) {
        cJSON *empty = cJSON_CreateObject();
        rc = call(c, "POST", path, empty, &out);
        cJSON_Delete(empty);
        if (rc) return rc;
        /* the key goes to stdout alone on its last line, so `| tail -1` captures it */
        fprintf(stderr, "new key %s for %s: store it now, it cannot be shown again\n", str(out, "id"), argv[1]);
        printf("%s\n", str(out, "key"));
        cJSON_Delete(out);
        return PC_OK;
    }
    if (!strcmp(sub, "ls") || !strcmp(sub, "list")) {
        if ((rc = call(c, "GET", path, NULL, &out))) return rc;
        printf("%-22s %-14s %s\n", "KEY_ID", "PREFIX", "CREATED");
        const cJSON *k;
        cJSON_ArrayForEach(k, cJSON_GetObjectItemCaseSensitive(out, "data"))
            printf("%-22s %-14s %.0f\n", str(k, "id"), str(k, "prefix"), num(k, "created"));
        cJSON_Delete(out);
        return PC_OK;
    }
    return admin_usage("unknown key command");
}

int pc_admin_main(const pc_ctx *c, int argc, char **argv) {
    if (argc < 1) return admin_usage("admin needs tenant or key");
    if (!strcmp(argv[0], "tenant")) return cmd_tenant(c, argc - 1, argv + 1);
    if (!strcmp(argv[0], "key")) return cmd_key(c, argc - 1, argv + 1);
    return admin_usage("admin needs tenant or key");
}
