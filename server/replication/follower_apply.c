/* server/replication/follower_apply.c — a follower applying the primary's changes
 * (follower.h): one page of the feed in order, and the full resync from a snapshot.
 * Every new version's blob is fetched by its content hash and its sha256 checked against
 * the feed's "blob_sha256" before anything is stored; every store write goes through the
 * adapter service (the registry and host tier follow, hot swaps as for uploads).
 */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/store_changes.h"
#include "adapter_store/tenant_store.h"
#include "lib/log.h"
#include "lib/status.h"
#include "server/replication/follower_internal.h"

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int sha256_hex(const void *p, size_t n, char out[65]) {
    unsigned char d[32];
    unsigned int dl = 0;
    if (!EVP_Digest(p, n, d, &dl, EVP_sha256(), NULL) || dl != 32) return PEFTD_EIO;
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
    return 0;
}

/* Fetches the payload of content hash sha into *b and checks sha256(payload) == sum.
 * PEFTD_ENOTFOUND: the primary no longer has it (the name moved on since). */
static int fetch_blob(follower *f, const char *sha, const char *sum, fol_buf *b) {
    char path[160], err[512], got[65];
    long status;
    snprintf(path, sizeof path, "/v1/replication/blobs/%s", sha);
    int rc = fol_get(f, path, b, &status, err, sizeof err);
    if (rc < 0) {
        fol_set_error(f, "%s", err);
        return rc;
    }
    if (status == 404) return PEFTD_ENOTFOUND;
    if (status != 200) {
        fol_set_error(f, "GET %s%s: HTTP %ld", f->primary, path, status);
        return PEFTD_EIO;
    }
    if ((rc = sha256_hex(b->p, b->len, got)) < 0) return rc;
    if (strcmp(got, sum)) {
        fol_set_error(f, "blob %.12s: sha256 of the %zu bytes received is %.12s, the feed says %.12s: not stored", sha,
                      b->len, got, sum);
        return PEFTD_EIO;
    }
    return 0;
}

/* The meta record of a put change / snapshot entry. */
static int entry_meta(const cJSON *e, astore_meta *m) {
    char *mj = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(e, "meta"));
    if (!mj) return PEFTD_EFORMAT;
    int rc = astore_meta_parse(mj, strlen(mj), m);
    free(mj);
    return rc;
}

/* A put of key at index i is superseded when a later change of the same page replaces or
 * removes key (or its owner): its blob need not be fetched. */
static bool superseded(const cJSON *changes, int i, const char *key) {
    int n = cJSON_GetArraySize(changes);
    const char *slash = strchr(key, '/');
    for (int j = i + 1; j < n; j++) {
        const cJSON *c = cJSON_GetArrayItem(changes, j);
        const char *op = jstr(c, "op"), *k = jstr(c, "key");
        if (!op || !k) continue;
        if ((!strcmp(op, "put") || !strcmp(op, "delete")) && !strcmp(k, key)) return true;
        if (!strcmp(op, "tenant_delete") && slash && strlen(k) == (size_t)(slash - key) &&
            !strncmp(k, key, strlen(k)))
            return true;
    }
    return false;
}

static int apply_put(follower *f, const cJSON *changes, int i, uint64_t seq, const char *key, fol_buf *b) {
    const cJSON *c = cJSON_GetArrayItem(changes, i);
    astore_meta m;
    const char *sum = jstr(c, "blob_sha256");
    int rc = entry_meta(c, &m);
    if (rc < 0 || !sum) {
        fol_set_error(f, "change %llu: a put without a valid meta record / blob_sha256", (unsigned long long)seq);
        return PEFTD_EFORMAT;
    }
    if (superseded(changes, i, key)) return astore_apply_position(f->store, seq, false);
    rc = fetch_blob(f, m.sha256, sum, b);
    /* a blob is dropped only when no name refers to it: this name moved on, and a later
     * change (not in this page) carries where it went */
    if (rc == PEFTD_ENOTFOUND) return astore_apply_position(f->store, seq, false);
    if (rc < 0) return rc;
    rc = adapter_service_apply_put(f->svc, seq, &m, b->p, b->len);
    if (rc < 0) fol_set_error(f, "change %llu: storing %s: %s", (unsigned long long)seq, key, peftd_strerror(rc));
    return rc;
}

int fol_apply_page(follower *f, const cJSON *changes) {
    fol_buf b = {0};
    int n = cJSON_GetArraySize(changes), done = 0, rc = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *c = cJSON_GetArrayItem(changes, i), *sv = cJSON_GetObjectItemCaseSensitive(c, "seq");
        const char *op = jstr(c, "op"), *key = jstr(c, "key");
        if (!cJSON_IsNumber(sv) || sv->valuedouble < 1 || !op || !key) {
            fol_set_error(f, "change #%d of the page is malformed", i);
            rc = PEFTD_EFORMAT;
            break;
        }
        uint64_t seq = (uint64_t)sv->valuedouble;
        if (!strcmp(op, "put")) {
            rc = apply_put(f, changes, i, seq, key, &b);
        } else if (!strcmp(op, "delete")) {
            rc = adapter_service_apply_delete(f->svc, seq, key);
        } else if (!strcmp(op, "tenant_put") || !strcmp(op, "tenant_delete") || !strcmp(op, "key_put") ||
                   !strcmp(op, "key_revoke")) {
            char *rec = NULL;
            const cJSON *r = cJSON_GetObjectItemCaseSensitive(c, "record");
            if (r && !(rec = cJSON_PrintUnformatted(r))) rc = PEFTD_ENOMEM;
            else rc = adapter_service_apply_tenant(f->svc, f->ts, seq, op, key, rec, jstr(c, "key_id"));
            free(rec);
        } else {
            fol_set_error(f, "change %llu: unknown operation '%.32s' (a newer primary? upgrade this follower)",
                          (unsigned long long)seq, op);
            rc = PEFTD_EUNSUPPORTED;
        }
        if (rc < 0) {
            if (rc != PEFTD_EIO && rc != PEFTD_EUNSUPPORTED && rc != PEFTD_EFORMAT)
                fol_set_error(f, "change %llu (%s %s): %s", (unsigned long long)seq, op, key, peftd_strerror(rc));
            break;
        }
        done++;
    }
    fol_buf_free(&b);
    return rc < 0 ? rc : done;
}

/* ---------------------------------------------------------------- full resync */

static bool in_list(const cJSON *arr, const char *field, const char *v) {
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        const char *s = jstr(e, field);
        if (s && !strcmp(s, v)) return true;
    }
    return false;
}

/* The snapshot's tenants and keys in, then every local one it lacks out. */
static int resync_tenants(follower *f, const cJSON *tenants_a, const cJSON *keys_a) {
    const cJSON *e;
    int rc = 0;
    cJSON_ArrayForEach(e, tenants_a) {
        char *rec = cJSON_PrintUnformatted(e);
        const char *id = jstr(e, "id");
        rc = rec && id ? adapter_service_apply_tenant(f->svc, f->ts, 0, "tenant_put", id, rec, NULL) : PEFTD_EFORMAT;
        free(rec);
        if (rc < 0) return rc;
    }
    cJSON_ArrayForEach(e, keys_a) {
        char *rec = cJSON_PrintUnformatted(e);
        const char *sha = jstr(e, "sha256");
        rc = rec && sha ? adapter_service_apply_tenant(f->svc, f->ts, 0, "key_put", sha, rec, NULL) : PEFTD_EFORMAT;
        free(rec);
        if (rc < 0) return rc;
    }
    tstore_key *ks = NULL;
    int nk = 0;
    if ((rc = tstore_key_list(f->store, NULL, &ks, &nk)) < 0) return rc;
    for (int i = 0; i < nk && rc >= 0; i++)
        if (!in_list(keys_a, "sha256", ks[i].sha256))
            rc = adapter_service_apply_tenant(f->svc, f->ts, 0, "key_delete", ks[i].sha256, NULL, NULL);
    free(ks);
    tstore_tenant *ts = NULL;
    int nt = 0;
    if (rc < 0 || (rc = tstore_tenant_list(f->store, &ts, &nt)) < 0) return rc;
    for (int i = 0; i < nt && rc >= 0; i++)
        if (!in_list(tenants_a, "id", ts[i].id))
            rc = adapter_service_apply_tenant(f->svc, f->ts, 0, "tenant_delete", ts[i].id, NULL, NULL);
    free(ts);
    return rc < 0 ? rc : 0;
}

/* The snapshot's adapters in (those not already here at the same version), then every
 * local one it lacks out. */
static int resync_adapters(follower *f, const cJSON *ads) {
    fol_buf b = {0};
    const cJSON *e;
    int rc = 0;
    cJSON_ArrayForEach(e, ads) {
        astore_meta m, have;
        const char *key = jstr(e, "key"), *sum = jstr(e, "blob_sha256");
        if (!key || !sum || (rc = entry_meta(e, &m)) < 0) {
            rc = PEFTD_EFORMAT;
            break;
        }
        if (astore_get_meta(f->store, key, &have) == 0 && have.version == m.version && !strcmp(have.sha256, m.sha256))
            continue;
        if ((rc = fetch_blob(f, m.sha256, sum, &b)) < 0) break; /* gone meanwhile: the next try resyncs again */
        if ((rc = adapter_service_apply_put(f->svc, 0, &m, b.p, b.len)) < 0) break;
    }
    fol_buf_free(&b);
    if (rc < 0) return rc;
    enum { P = 256 };
    astore_meta *page = malloc(P * sizeof *page);
    char after[ASTORE_KEY_MAX + 1] = "";
    if (!page) return PEFTD_ENOMEM;
    for (;;) {
        int n = 0;
        bool more = false;
        if ((rc = astore_list(f->store, after, P, page, &n, &more)) < 0) break;
        for (int i = 0; i < n && rc >= 0; i++) {
            char key[ASTORE_KEY_MAX + 1];
            if (astore_key(page[i].owner, page[i].name, key) < 0) continue;
            if (!in_list(ads, "key", key)) rc = adapter_service_apply_delete(f->svc, 0, key);
        }
        if (rc < 0 || !more || n == 0) break;
        astore_key(page[n - 1].owner, page[n - 1].name, after);
    }
    free(page);
    return rc < 0 ? rc : 0;
}

int fol_resync(follower *f) {
    fol_buf b = {0};
    char err[512];
    long status;
    int rc = fol_get(f, "/v1/replication/snapshot", &b, &status, err, sizeof err);
    if (rc < 0) {
        fol_set_error(f, "%s", err);
        fol_buf_free(&b);
        return rc;
    }
    cJSON *o = status == 200 ? cJSON_Parse(b.p) : NULL;
    fol_buf_free(&b);
    const char *feed = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "feed_id"));
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(o, "seq"),
                *ads = cJSON_GetObjectItemCaseSensitive(o, "adapters"),
                *tn = cJSON_GetObjectItemCaseSensitive(o, "tenants"), *ks = cJSON_GetObjectItemCaseSensitive(o, "keys");
    if (!cJSON_IsNumber(seq) || !feed || strlen(feed) > 32 || !cJSON_IsArray(ads) || !cJSON_IsArray(tn) ||
        !cJSON_IsArray(ks)) {
        fol_set_error(f, "GET %s/v1/replication/snapshot: HTTP %ld, not a snapshot", f->primary, status);
        cJSON_Delete(o);
        return PEFTD_EIO;
    }
    if ((rc = resync_tenants(f, tn, ks)) >= 0 && (rc = resync_adapters(f, ads)) >= 0)
        rc = astore_apply_resynced(f->store, (uint64_t)seq->valuedouble, feed);
    if (rc >= 0)
        LOGI("replication: resynced in full at change %llu (%d adapters)", (unsigned long long)seq->valuedouble,
             cJSON_GetArraySize(ads));
    else if (rc != PEFTD_EIO)
        fol_set_error(f, "full resync: %s", peftd_strerror(rc));
    cJSON_Delete(o);
    return rc < 0 ? rc : 0;
}
