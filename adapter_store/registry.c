/* adapter_store/registry.c — see registry.h. Entries are kept sorted by key in an array
 * (binary search); every handle carries a refcount: one for being current under a name,
 * one per request holding it. A replaced or removed handle is freed by its last release. */
#include "adapter_store/registry.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"

typedef struct {
    char name[ASTORE_KEY_MAX + 1]; /* the key: astore_key(owner, name) */
    adapter_handle *v;
} entry;

typedef struct {
    char name[ASTORE_KEY_MAX + 1];
    int status;
    char *message;
} failure;

struct adapter_registry {
    pthread_mutex_t mu;
    void (*on_retired)(void *ud, const char *sha256); /* set before use; called unlocked */
    void *on_retired_ud;
    failure *fail;
    int n_fail;
    entry *e;
    int n, cap;
};

int registry_create(adapter_registry **out) {
    adapter_registry *r = calloc(1, sizeof *r);
    if (!r) return PEFTD_ENOMEM;
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return 0;
}

void registry_free(adapter_registry *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        if (r->e[i].v->refs > 1) LOGW("registry: adapter %s freed while still held", r->e[i].name);
        free(r->e[i].v);
    }
    for (int i = 0; i < r->n_fail; i++) free(r->fail[i].message);
    free(r->fail);
    free(r->e);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* One segment: [A-Za-z0-9._-] from n bytes, not starting with '.' or '-' (so never "." or ".."). */
static bool segment_valid(const char *s, size_t n) {
    if (n < 1 || s[0] == '.' || s[0] == '-') return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return false;
    }
    return true;
}

bool registry_id_valid(const char *id) {
    size_t n = id ? strnlen(id, REGISTRY_NAME_MAX + 1) : 0;
    return n <= REGISTRY_NAME_MAX && segment_valid(id, n);
}

bool registry_name_valid(const char *name) {
    size_t n = name ? strnlen(name, REGISTRY_NAME_MAX + 1) : 0;
    if (n < 1 || n > REGISTRY_NAME_MAX) return false;
    const char *p = name, *end = name + n;
    for (;;) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *seg_end = slash ? slash : end;
        if (!segment_valid(p, (size_t)(seg_end - p))) return false; /* also refuses an empty segment */
        if (!slash) return true;
        p = slash + 1;
    }
}

bool registry_key_valid(const char *key) {
    if (!key || strnlen(key, ASTORE_KEY_MAX + 1) > ASTORE_KEY_MAX) return false;
    const char *slash = strchr(key, '/');
    char owner[REGISTRY_NAME_MAX + 1] = "", name[ASTORE_KEY_MAX + 1], back[ASTORE_KEY_MAX + 1];
    const char *enc = key;
    if (slash) {
        size_t n = (size_t)(slash - key);
        if (n > REGISTRY_NAME_MAX) return false;
        memcpy(owner, key, n);
        owner[n] = 0;
        if (!registry_id_valid(owner)) return false;
        enc = slash + 1;
    }
    /* the name part is in key form (store.h: its '/' written ':'): decode, validate, and
     * the key must be exactly what astore_key builds back */
    snprintf(name, sizeof name, "%s", enc);
    for (char *p = name; *p; p++)
        if (*p == ':') *p = '/';
    return registry_name_valid(name) && astore_key(owner, name, back) == 0 && !strcmp(back, key);
}

/* Index of key name, or -(insertion point) - 1. Under mu. */
static int find(const adapter_registry *r, const char *name) {
    int lo = 0, hi = r->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(name, r->e[mid].name);
        if (c == 0) return mid;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return -lo - 1;
}

/* Drops one reference of v (under mu); when it was the last, frees v and, when its blob was
 * kept, copies its sha256 to retired (else leaves it ""), to report once unlocked. */
static void drop_ref(adapter_handle *v, char retired[65]) {
    retired[0] = 0;
    if (--v->refs == 0) {
        if (v->keep_blob) memcpy(retired, v->meta.sha256, 65);
        free(v);
    }
}

void registry_keep_blob(adapter_registry *r, adapter_handle *h, bool keep) {
    pthread_mutex_lock(&r->mu);
    h->keep_blob = keep;
    pthread_mutex_unlock(&r->mu);
}

static void report_retired(adapter_registry *r, const char retired[65]) {
    if (retired[0] && r->on_retired) r->on_retired(r->on_retired_ud, retired);
}

void registry_on_retired(adapter_registry *r, void (*fn)(void *ud, const char *sha256), void *ud) {
    r->on_retired = fn;
    r->on_retired_ud = ud;
}

/* Under mu. */
static void clear_failure(adapter_registry *r, const char *name) {
    for (int i = 0; i < r->n_fail; i++)
        if (!strcmp(r->fail[i].name, name)) {
            free(r->fail[i].message);
            r->fail[i] = r->fail[--r->n_fail];
            return;
        }
}

int registry_put_failure(adapter_registry *r, const char *name, int status, const char *message) {
    if (!registry_key_valid(name) || status >= 0) return PEFTD_EINVAL;
    char *m = strdup(message ? message : "");
    if (!m) return PEFTD_ENOMEM;
    pthread_mutex_lock(&r->mu);
    clear_failure(r, name);
    failure *f = realloc(r->fail, (size_t)(r->n_fail + 1) * sizeof *f);
    if (!f) {
        pthread_mutex_unlock(&r->mu);
        free(m);
        return PEFTD_ENOMEM;
    }
    r->fail = f;
    snprintf(f[r->n_fail].name, sizeof f->name, "%s", name);
    f[r->n_fail].status = status;
    f[r->n_fail].message = m;
    r->n_fail++;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

int registry_failure(adapter_registry *r, const char *name, char *msg, size_t msglen) {
    int st = 0;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n_fail; i++)
        if (!strcmp(r->fail[i].name, name)) {
            st = r->fail[i].status;
            snprintf(msg, msglen, "%s", r->fail[i].message);
            break;
        }
    pthread_mutex_unlock(&r->mu);
    return st;
}

int registry_put(adapter_registry *r, const astore_meta *meta) {
    char name[ASTORE_KEY_MAX + 1];
    if (!registry_name_valid(meta->name) || (meta->owner[0] && !registry_id_valid(meta->owner)) ||
        astore_key(meta->owner, meta->name, name))
        return PEFTD_EINVAL;
    adapter_handle *v = calloc(1, sizeof *v);
    if (!v) return PEFTD_ENOMEM;
    v->meta = *meta;
    v->refs = 1;
    char retired[65] = "";
    pthread_mutex_lock(&r->mu);
    clear_failure(r, name);
    int i = find(r, name), st = 0;
    if (i >= 0) {
        adapter_handle *old = r->e[i].v;
        r->e[i].v = v;
        drop_ref(old, retired);
    } else {
        i = -i - 1;
        if (r->n == r->cap) {
            int cap = r->cap ? 2 * r->cap : 16;
            entry *p = realloc(r->e, (size_t)cap * sizeof *p);
            if (!p) {
                pthread_mutex_unlock(&r->mu);
                free(v);
                return PEFTD_ENOMEM;
            }
            r->e = p;
            r->cap = cap;
        }
        memmove(&r->e[i + 1], &r->e[i], (size_t)(r->n - i) * sizeof(entry));
        memset(&r->e[i], 0, sizeof(entry));
        strcpy(r->e[i].name, name);
        r->e[i].v = v;
        r->n++;
    }
    pthread_mutex_unlock(&r->mu);
    report_retired(r, retired);
    return st;
}

int registry_remove(adapter_registry *r, const char *name) {
    char retired[65] = "";
    pthread_mutex_lock(&r->mu);
    int i = find(r, name), st = PEFTD_ENOTFOUND;
    if (i >= 0) {
        adapter_handle *v = r->e[i].v;
        memmove(&r->e[i], &r->e[i + 1], (size_t)(r->n - i - 1) * sizeof(entry));
        r->n--;
        drop_ref(v, retired);
        st = 0;
    }
    pthread_mutex_unlock(&r->mu);
    report_retired(r, retired);
    return st;
}

adapter_handle *registry_acquire(adapter_registry *r, const char *name) {
    adapter_handle *h = NULL;
    pthread_mutex_lock(&r->mu);
    int i = find(r, name);
    if (i >= 0) {
        h = r->e[i].v;
        h->refs++;
    }
    pthread_mutex_unlock(&r->mu);
    return h;
}

void registry_release(adapter_registry *r, adapter_handle *h) {
    if (!h) return;
    pthread_mutex_lock(&r->mu);
    if (h->refs <= 1) {
        /* a current handle has refs >= 1 for being current: reaching 0 here means more
         * releases than acquires, and freeing it would leave the name dangling */
        bool current = false;
        char key[ASTORE_KEY_MAX + 1];
        astore_key(h->meta.owner, h->meta.name, key);
        int i = find(r, key);
        current = i >= 0 && r->e[i].v == h;
        if (current || h->refs <= 0) {
            pthread_mutex_unlock(&r->mu);
            LOGE("registry_release: more releases than acquires of %s", h->meta.name);
            abort(); /* programmer error */
        }
    }
    char retired[65];
    drop_ref(h, retired);
    pthread_mutex_unlock(&r->mu);
    report_retired(r, retired);
}

void registry_foreach(adapter_registry *r, void (*fn)(void *ud, const adapter_handle *h), void *ud) {
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n; i++) fn(ud, r->e[i].v);
    pthread_mutex_unlock(&r->mu);
}

int registry_count(adapter_registry *r) {
    pthread_mutex_lock(&r->mu);
    int n = r->n;
    pthread_mutex_unlock(&r->mu);
    return n;
}
