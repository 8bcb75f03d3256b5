/* server/adapters/adapter_service.c — see adapter_service.h. Imports run on import/HTTP threads in
 * host memory only (parse, validate, convert, serialise): nothing here calls the backend,
 * which belongs to the engine thread (kernels/kernels.h). */
#include "server/adapters/adapter_service.h"

#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapter_store/adapter_blob.h"
#include "adapter_store/store_changes.h"
#include "lib/log.h"
#include "server/model/model_adapter_base.h"
#include "server/tenants/tenants.h"

struct adapter_service {
    const model *m;
    astore *store;
    adapter_registry *reg;
    tiers *tiers;
    adapter_base base;
    char fingerprint[65];
    char tmp_root[4096];
    /* Held across "store write + registry update" (imports, deletes, tenant deletion), so
     * the registry applies store changes in the store's order: an import cannot publish a
     * version after a concurrent delete removed it from the store. */
    pthread_mutex_t pub_mu;
    /* Bytes staged right now by uploads in flight, per owner (tenants only): counted
     * against the owner's storage quota as they arrive (adapter_service_stage_add). */
    pthread_mutex_t stage_mu;
    struct stage_entry {
        char owner[ASTORE_NAME_MAX + 1];
        uint64_t bytes;
    } *staged;
    int n_staged;
};

/* sha256 over what makes adapters of one base interchangeable: architecture and shapes. */
static void fingerprint(const model *m, char out[65]) {
    const model_config *c = &m->cfg;
    char desc[512];
    int n = snprintf(desc, sizeof desc, "%s|%s|h%d|i%d|l%d|q%d|kv%d|d%d|v%d|tie%d", c->architecture, c->model_type,
                     c->hidden_size, c->intermediate_size, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim,
                     c->vocab_size, c->tie_word_embeddings);
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(desc, (size_t)n, md, &mdlen, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void sweep_staging(const char *tmp_root);

/* A replaced or deleted version's last request is done: its blob need not stay loadable. */
static void on_version_retired(void *ud, const char *sha256) {
    adapter_service *s = ud;
    tiers_release(s->tiers, sha256);
}

/* Under pub_mu, before the store drops key's current version: requests admitted on that
 * version (holding its handle) may not have loaded it yet, and must still find its blob
 * when they do — so it stays in the host tier until the version's last holder is done
 * (on_version_retired). Returns the handle (one reference held) to pass to keep_done, or
 * NULL when there is nothing to keep. */
static adapter_handle *keep_current(adapter_service *s, const char *key) {
    adapter_handle *h = s->tiers ? registry_acquire(s->reg, key) : NULL;
    if (!h) return NULL;
    int st = tiers_retain(s->tiers, h->meta.sha256);
    if (st < 0) { /* unreadable already: its requests fail with the store's reason */
        LOGW("adapter %s: cannot keep version %llu loadable for its requests: %s", key,
             (unsigned long long)h->meta.version, peftd_strerror(st));
        registry_release(s->reg, h);
        return NULL;
    }
    registry_keep_blob(s->reg, h, true);
    return h;
}

/* After the store change: done = the version left (its retirement releases the blob), or
 * not (nothing changed: undo the keep). */
static void keep_done(adapter_service *s, adapter_handle *h, bool left) {
    if (!h) return;
    if (!left) {
        registry_keep_blob(s->reg, h, false);
        tiers_release(s->tiers, h->meta.sha256);
    }
    registry_release(s->reg, h); /* may retire it now */
}

int adapter_service_create(const model *m, astore *store, adapter_registry *reg, tiers *t, const char *tmp_root,
                           adapter_service **out, char *err, size_t errlen) {
    adapter_service *s = calloc(1, sizeof *s);
    if (!s) return PEFTD_ENOMEM;
    s->m = m;
    s->store = store;
    s->reg = reg;
    s->tiers = t;
    snprintf(s->tmp_root, sizeof s->tmp_root, "%s", tmp_root);
    if (mkdir(tmp_root, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create %s: %s", tmp_root, strerror(errno));
        free(s);
        return -errno;
    }
    if (model_adapter_base(m, &s->base) < 0) {
        free(s);
        snprintf(err, errlen, "out of memory");
        return PEFTD_ENOMEM;
    }
    fingerprint(m, s->fingerprint);
    if (t) registry_on_retired(reg, on_version_retired, s);
    pthread_mutex_init(&s->pub_mu, NULL);
    pthread_mutex_init(&s->stage_mu, NULL);
    sweep_staging(tmp_root);
    *out = s;
    return 0;
}

/* Start-up: upload staging directories left by a process that died mid-upload (SIGKILL,
 * a crash, power loss). The store's exclusive lock (main.c) guarantees no other live
 * daemon stages uploads here, so every one of them is stale. */
static void sweep_staging(const char *tmp_root) {
    DIR *d = opendir(tmp_root);
    if (!d) return;
    int n = 0;
    struct dirent *e;
    char p[4400];
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, "upload-", 7)) {
            snprintf(p, sizeof p, "%s/%s", tmp_root, e->d_name);
            adapter_service_rmdir(p);
            n++;
        }
    closedir(d);
    if (n) LOGI("adapter store: removed %d stale upload staging director%s from %s", n, n == 1 ? "y" : "ies", tmp_root);
}

/* Staged files are the uploaded safetensors; what the quota counts is the stored blob,
 * which drops the safetensors header (its JSON: ~100 bytes per tensor). So an owner may
 * stage this much beyond its quota, in all its uploads together: 64 KiB holds the header
 * of an adapter with ~600 tensors, and still bounds what a dribbling tenant can park. */
#define STAGE_ALLOWANCE (64u << 10)

int adapter_service_stage_add(adapter_service *s, const char *owner, uint64_t quota, uint64_t stored, uint64_t n) {
    if (!owner || !owner[0] || !quota) return 0;
    quota = quota > UINT64_MAX - STAGE_ALLOWANCE ? UINT64_MAX : quota + STAGE_ALLOWANCE;
    int rc = 0;
    pthread_mutex_lock(&s->stage_mu);
    struct stage_entry *e = NULL;
    for (int i = 0; i < s->n_staged && !e; i++)
        if (!strcmp(s->staged[i].owner, owner)) e = &s->staged[i];
    if (!e) {
        struct stage_entry *p = realloc(s->staged, (size_t)(s->n_staged + 1) * sizeof *p);
        if (!p) {
            rc = PEFTD_ENOMEM;
            goto out;
        }
        s->staged = p;
        e = &s->staged[s->n_staged++];
        snprintf(e->owner, sizeof e->owner, "%s", owner);
        e->bytes = 0;
    }
    if (stored > quota || e->bytes > quota - stored || n > quota - stored - e->bytes) rc = -EDQUOT;
    else e->bytes += n;
out:
    pthread_mutex_unlock(&s->stage_mu);
    return rc;
}

void adapter_service_stage_release(adapter_service *s, const char *owner, uint64_t n) {
    if (!owner || !owner[0] || !n) return;
    pthread_mutex_lock(&s->stage_mu);
    for (int i = 0; i < s->n_staged; i++)
        if (!strcmp(s->staged[i].owner, owner)) {
            s->staged[i].bytes -= n <= s->staged[i].bytes ? n : s->staged[i].bytes;
            if (s->staged[i].bytes == 0) s->staged[i] = s->staged[--s->n_staged];
            break;
        }
    pthread_mutex_unlock(&s->stage_mu);
}

void adapter_service_free(adapter_service *s) {
    if (!s) return;
    pthread_mutex_destroy(&s->pub_mu);
    pthread_mutex_destroy(&s->stage_mu);
    free(s->staged);
    model_adapter_base_free(&s->base);
    free(s);
}

const char *adapter_service_base_fingerprint(const adapter_service *s) { return s->fingerprint; }

int adapter_service_mkdtemp(adapter_service *s, char *path, size_t len) {
    if ((size_t)snprintf(path, len, "%s/upload-XXXXXX", s->tmp_root) >= len) return PEFTD_EINVAL;
    return mkdtemp(path) ? 0 : -errno;
}

void adapter_service_rmdir(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        char p[4600];
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(path);
}

static void meta_from_adapter(const adapter *a, const char *name, const char *owner, const char *fp,
                              astore_meta *m) {
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->owner, sizeof m->owner, "%s", owner ? owner : "");
    m->kind = a->kind;
    snprintf(m->sha256, sizeof m->sha256, "%s", a->sha256);
    m->n_params = a->n_params;
    m->n_ranks = a->n_ranks < 8 ? a->n_ranks : 8;
    memcpy(m->ranks, a->ranks, sizeof(int) * (size_t)m->n_ranks);
    m->n_virtual = adapter_n_virtual(a);
    snprintf(m->base_fingerprint, sizeof m->base_fingerprint, "%s", fp);
    /* targets: the modules adapted in any layer */
    size_t off = 0;
    for (int mod = 0; mod < AMOD_COUNT; mod++) {
        bool used = false;
        for (int l = 0; l < a->n_layers && !used; l++) {
            if (a->lora) used = a->lora[l * AMOD_COUNT + mod].rank > 0;
            if (a->ia3) used |= a->ia3[l * AMOD_COUNT + mod] != NULL;
        }
        if (used && off < sizeof m->targets)
            off += (size_t)snprintf(m->targets + off, sizeof m->targets - off, "%s%s", off ? "," : "",
                                    adapter_module_name((adapter_module)mod));
    }
}

/* Removes every occurrence of path (and a '/' after it) from msg: the parsers name the
 * files they read by full path, which is the server's staging directory; tenants get the
 * file names only. */
static void scrub_path(char *msg, const char *path) {
    size_t pl = strlen(path);
    if (!pl) return;
    for (char *p; (p = strstr(msg, path));) {
        size_t cut = pl + (p[pl] == '/' ? 1 : 0);
        if (p[pl] == ':' && p[pl + 1] == ' ') cut += 2; /* "<dir>: reason" -> "reason" */
        memmove(p, p + cut, strlen(p + cut) + 1);
    }
}

bool adapter_service_name_is_base(const adapter_service *s, const char *name) {
    return name && !strcmp(name, s->m->name);
}

int adapter_service_import_dir(adapter_service *s, const char *name, const char *owner, uint64_t quota_bytes,
                               const char *dir, astore_meta *out, char *err, size_t errlen) {
    if (!registry_name_valid(name)) {
        snprintf(err, errlen, "invalid adapter name: use 1-64 characters, segments of [A-Za-z0-9._-] separated by "
                              "'/' (org/name), none empty or starting with '.' or '-'");
        return PEFTD_EINVAL;
    }
    if (adapter_service_name_is_base(s, name)) {
        /* "model": "<base id>" selects the base model: an adapter of that name could
         * never be chosen, and /v1/models would list the id twice */
        snprintf(err, errlen, "'%s' is the base model's id: choose another adapter name", name);
        return PEFTD_EEXIST;
    }
    adapter *a = NULL;
    void *blob = NULL;
    size_t len = 0;
    int st = adapter_load_dir(dir, &s->base, &a, err, errlen); /* host memory only */
    if (st < 0) {
        LOGI("adapter %s%s%s: rejected (%s)", owner ? owner : "", owner && owner[0] ? "/" : "", name, err);
        scrub_path(err, dir);
        scrub_path(err, s->tmp_root);
        return st;
    }
    if ((st = adapter_blob_write_base(a, &s->base, &blob, &len)) < 0) {
        snprintf(err, errlen, "cannot serialise the adapter: %s", peftd_strerror(st));
        goto out;
    }
    astore_meta meta, stored;
    char old_sha[65] = "";
    meta_from_adapter(a, name, owner, s->fingerprint, &meta);
    meta.bytes = len;
    char key[ASTORE_KEY_MAX + 1];
    if ((st = astore_key(owner, name, key)) < 0) goto out;
    pthread_mutex_lock(&s->pub_mu);
    adapter_handle *kept = keep_current(s, key);
    st = owner && owner[0] ? astore_put_tenant(s->store, &meta, quota_bytes, blob, len, &stored, old_sha)
                           : astore_put_scoped(s->store, &meta, quota_bytes, blob, len, &stored, old_sha);
    if (st < 0) {
        keep_done(s, kept, false);
        pthread_mutex_unlock(&s->pub_mu);
        if (st == -EDQUOT)
            snprintf(err, errlen, "the tenant's storage quota of %llu bytes would be exceeded (this version: %zu bytes)",
                     (unsigned long long)quota_bytes, len);
        else if (st == -ENOENT)
            snprintf(err, errlen, "tenant '%s' was deleted while the upload was in flight", owner);
        else
            snprintf(err, errlen, "%s",
                     st == PEFTD_ENOSPC ? "the adapter store is full (its disk, or its configured size limit): "
                                          "nothing was stored"
                                        : peftd_strerror(st));
        goto out;
    }
    if (s->tiers) tiers_offer_blob(s->tiers, stored.sha256, blob, len); /* warm: first requests skip LMDB */
    if ((st = registry_put(s->reg, &stored)) < 0) {
        keep_done(s, kept, false);
        pthread_mutex_unlock(&s->pub_mu);
        snprintf(err, errlen, "cannot publish: %s", peftd_strerror(st));
        goto out;
    }
    if (s->tiers && old_sha[0] && strcmp(old_sha, stored.sha256) != 0) tiers_forget(s->tiers, old_sha);
    keep_done(s, kept, true);
    pthread_mutex_unlock(&s->pub_mu);
    if (out) *out = stored;
    LOGI("adapter %s%s%s: stored version %llu (%s, %.1f KiB, sha256 %.12s)", stored.owner,
         stored.owner[0] ? "/" : "", name, (unsigned long long)stored.version,
         adapter_kind_name(stored.kind), (double)len / 1024, stored.sha256);
out:
    free(blob);
    adapter_free(a);
    return st;
}

int adapter_service_delete(adapter_service *s, const char *owner, const char *name) {
    char old_sha[65] = "", key[ASTORE_KEY_MAX + 1];
    if (astore_key(owner, name, key) < 0) return PEFTD_EINVAL;
    pthread_mutex_lock(&s->pub_mu);
    adapter_handle *kept = keep_current(s, key);
    int st = astore_delete_scoped(s->store, owner, name, old_sha);
    if (st == 0) {
        registry_remove(s->reg, key);
        if (s->tiers && old_sha[0]) tiers_forget(s->tiers, old_sha);
    }
    keep_done(s, kept, st == 0);
    pthread_mutex_unlock(&s->pub_mu);
    if (st < 0) return st;
    LOGI("adapter %s: deleted", key);
    return 0;
}

int adapter_service_delete_tenant(adapter_service *s, tenants *ts, const char *id) {
    astore_removed r;
    pthread_mutex_lock(&s->pub_mu);
    int st = tenants_delete(ts, id, &r);
    if (st == 0) {
        for (int i = 0; i < r.n_keys; i++) registry_remove(s->reg, r.keys[i]);
        for (int i = 0; s->tiers && i < r.n_dropped; i++) tiers_forget(s->tiers, r.dropped[i]);
    }
    pthread_mutex_unlock(&s->pub_mu);
    if (st == 0) LOGI("tenant %s: %d adapters deleted with it", id, r.n_keys);
    astore_removed_free(&r);
    return st;
}

/* ---------------------------------------------------------------- replication */

/* Publishes a replicated version, or records why it cannot be served here. */
static int publish_replica(adapter_service *s, const char *key, const astore_meta *m) {
    if (strcmp(m->base_fingerprint, s->fingerprint) != 0) {
        LOGW("adapter %s: replicated version %llu is for another base model (fingerprint %.12s), not served", key,
             (unsigned long long)m->version, m->base_fingerprint);
        registry_remove(s->reg, key);
        registry_put_failure(s->reg, key, PEFTD_EINVAL, "stored for another base model; upload it again for this one");
        return 0;
    }
    if (adapter_service_name_is_base(s, m->name)) {
        registry_remove(s->reg, key);
        return 0;
    }
    return registry_put(s->reg, m);
}

int adapter_service_apply_put(adapter_service *s, uint64_t seq, const astore_meta *meta, const void *blob,
                              size_t len) {
    char key[ASTORE_KEY_MAX + 1], dropped[65] = "";
    astore_meta stored;
    if (astore_key(meta->owner, meta->name, key) < 0) return PEFTD_EINVAL;
    pthread_mutex_lock(&s->pub_mu);
    adapter_handle *kept = keep_current(s, key);
    int st = astore_apply_put(s->store, seq, meta, blob, len, &stored, dropped);
    if (st != 0) {
        keep_done(s, kept, false);
        pthread_mutex_unlock(&s->pub_mu);
        return st;
    }
    if (s->tiers) tiers_offer_blob(s->tiers, stored.sha256, blob, len);
    st = publish_replica(s, key, &stored);
    if (s->tiers && dropped[0] && strcmp(dropped, stored.sha256) != 0) tiers_forget(s->tiers, dropped);
    keep_done(s, kept, true);
    pthread_mutex_unlock(&s->pub_mu);
    if (st == 0)
        LOGI("adapter %s: replicated version %llu (change %llu, sha256 %.12s)", key,
             (unsigned long long)stored.version, (unsigned long long)seq, stored.sha256);
    return st;
}

int adapter_service_apply_delete(adapter_service *s, uint64_t seq, const char *key) {
    char dropped[65] = "";
    pthread_mutex_lock(&s->pub_mu);
    adapter_handle *kept = keep_current(s, key);
    int st = astore_apply_delete(s->store, seq, key, dropped);
    if (st == 0) {
        registry_remove(s->reg, key);
        if (s->tiers && dropped[0]) tiers_forget(s->tiers, dropped);
    }
    keep_done(s, kept, st == 0);
    pthread_mutex_unlock(&s->pub_mu);
    if (st == 0) LOGI("adapter %s: deleted (replicated change %llu)", key, (unsigned long long)seq);
    return st;
}

int adapter_service_apply_tenant(adapter_service *s, tenants *ts, uint64_t seq, const char *op, const char *key,
                                 const char *record, const char *key_id) {
    astore_removed r;
    pthread_mutex_lock(&s->pub_mu);
    int st = astore_apply_tenant(s->store, seq, op, key, record, key_id, &r);
    if (st == 0) {
        for (int i = 0; i < r.n_keys; i++) registry_remove(s->reg, r.keys[i]);
        for (int i = 0; s->tiers && i < r.n_dropped; i++) tiers_forget(s->tiers, r.dropped[i]);
        astore_removed_free(&r);
    }
    pthread_mutex_unlock(&s->pub_mu);
    if (st == 0 && ts) tenants_reload(ts);
    return st;
}

int adapter_service_publish_all(adapter_service *s, int *n_published, int *n_skipped) {
    *n_published = *n_skipped = 0;
    char after[ASTORE_KEY_MAX + 1] = "";
    enum { PAGE = 256 };
    astore_meta *page = malloc(PAGE * sizeof *page);
    if (!page) return PEFTD_ENOMEM;
    for (;;) {
        int n = 0;
        bool more = false;
        int st = astore_list(s->store, after, PAGE, page, &n, &more);
        if (st < 0) {
            free(page);
            return st;
        }
        for (int i = 0; i < n; i++) {
            char key[ASTORE_KEY_MAX + 1];
            if (astore_key(page[i].owner, page[i].name, key) < 0) continue;
            if (strcmp(page[i].base_fingerprint, s->fingerprint) != 0) {
                LOGW("adapter %s: stored for another base model (fingerprint %.12s), not served", key,
                     page[i].base_fingerprint);
                registry_put_failure(s->reg, key, PEFTD_EINVAL,
                                     "stored for another base model; upload it again for this one");
                (*n_skipped)++;
                continue;
            }
            if (adapter_service_name_is_base(s, page[i].name)) {
                LOGW("adapter %s: named like the base model, not served (rename it: upload it under another "
                     "name and delete this one)", key);
                (*n_skipped)++;
                continue;
            }
            if (registry_put(s->reg, &page[i]) == 0) (*n_published)++;
        }
        /* astore_list pages by key (owner/name for a tenant's record) */
        if (n > 0) astore_key(page[n - 1].owner, page[n - 1].name, after);
        if (!more || n == 0) break;
    }
    free(page);
    return 0;
}
