/* adapter_store/adapter_shared.c — the process-wide, content-keyed, refcounted table of
 * matrices several adapters read (adapter_shared.h says why and who calls it). A short
 * linked list under one mutex: a process holds a handful of entries (one per distinct VeRA
 * projection slice), so lookups are linear.
 */
#include "adapter_store/adapter_shared.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/status.h"

#define SHARED_ALIGN 64 /* as the adapters' blocks: cache line / AVX-512 */

typedef struct {
    kbackend *kb;
    void *dev;
    int refs;
} shared_dev;

struct adapter_shared {
    unsigned char key[32]; /* sha256 of the f32 bytes */
    int64_t rows, cols;
    size_t bytes;
    float *host;
    int refs;
    shared_dev *devs;
    int n_devs;
    adapter_shared *next;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static adapter_shared *head;

static int sha256(const void *p, size_t n, unsigned char out[32]) {
    unsigned int len = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) && EVP_DigestUpdate(md, p, n) &&
             EVP_DigestFinal_ex(md, out, &len) && len == 32;
    EVP_MD_CTX_free(md);
    return ok ? 0 : PEFTD_ENOMEM;
}

int adapter__shared_get(const float *data, int64_t rows, int64_t cols, adapter_shared **out) {
    *out = NULL;
    if (!data || rows <= 0 || cols <= 0 || rows > INT32_MAX || cols > INT32_MAX) return PEFTD_EINVAL;
    size_t bytes = (size_t)rows * (size_t)cols * sizeof(float);
    unsigned char key[32];
    if (sha256(data, bytes, key)) return PEFTD_ENOMEM;
    pthread_mutex_lock(&mu);
    for (adapter_shared *s = head; s; s = s->next)
        if (s->rows == rows && s->cols == cols && !memcmp(s->key, key, 32) && !memcmp(s->host, data, bytes)) {
            s->refs++;
            *out = s;
            pthread_mutex_unlock(&mu);
            return 0;
        }
    adapter_shared *s = calloc(1, sizeof *s);
    void *h = NULL;
    if (!s || posix_memalign(&h, SHARED_ALIGN, bytes) != 0) {
        free(s);
        pthread_mutex_unlock(&mu);
        return PEFTD_ENOMEM;
    }
    memcpy(h, data, bytes);
    memcpy(s->key, key, 32);
    s->rows = rows, s->cols = cols, s->bytes = bytes, s->host = h, s->refs = 1;
    s->next = head;
    head = s;
    *out = s;
    pthread_mutex_unlock(&mu);
    return 0;
}

void adapter__shared_ref(adapter_shared *s) {
    pthread_mutex_lock(&mu);
    if (s->refs <= 0) {
        LOGE("adapter_shared: a reference taken on a freed entry");
        abort();
    }
    s->refs++;
    pthread_mutex_unlock(&mu);
}

void adapter__shared_put(adapter_shared *s) {
    if (!s) return;
    pthread_mutex_lock(&mu);
    if (s->refs <= 0) {
        LOGE("adapter_shared: reference count below zero");
        abort();
    }
    if (--s->refs > 0) {
        pthread_mutex_unlock(&mu);
        return;
    }
    if (s->n_devs) { /* every holder uninstalls before it puts (adapter_free) */
        LOGE("adapter_shared: last reference dropped with %d device copies left", s->n_devs);
        abort();
    }
    adapter_shared **p = &head;
    while (*p != s) p = &(*p)->next;
    *p = s->next;
    pthread_mutex_unlock(&mu);
    free(s->host);
    free(s->devs);
    free(s);
}

const float *adapter__shared_host(const adapter_shared *s) { return s->host; }
int64_t adapter__shared_rows(const adapter_shared *s) { return s->rows; }
int64_t adapter__shared_cols(const adapter_shared *s) { return s->cols; }
size_t adapter__shared_bytes(const adapter_shared *s) { return s->bytes; }

int adapter__shared_install(adapter_shared *s, kbackend *kb, void **data, char *err, size_t errlen) {
    if (kb->ops->is_host) {
        *data = s->host;
        return 0;
    }
    pthread_mutex_lock(&mu);
    for (int i = 0; i < s->n_devs; i++)
        if (s->devs[i].kb == kb) {
            s->devs[i].refs++;
            *data = s->devs[i].dev;
            pthread_mutex_unlock(&mu);
            return 0;
        }
    int rc = 0;
    shared_dev *d = realloc(s->devs, (size_t)(s->n_devs + 1) * sizeof *d);
    void *dev = d ? kb->ops->alloc(kb, s->bytes) : NULL;
    if (d) s->devs = d;
    if (!dev) {
        rc = PEFTD_ENOMEM;
        if (err && errlen)
            snprintf(err, errlen, "cannot allocate %zu bytes of %s memory for a shared adapter matrix", s->bytes,
                     kb->ops->name);
    } else if ((rc = kb->ops->upload(kb, dev, s->host, s->bytes)) == 0 && (rc = kb->ops->synchronize(kb)) == 0) {
        s->devs[s->n_devs++] = (shared_dev){.kb = kb, .dev = dev, .refs = 1};
        *data = dev;
    } else {
        kb->ops->free(kb, dev);
        if (err && errlen)
            snprintf(err, errlen, "uploading a shared adapter matrix to %s: %s", kb->ops->name, peftd_strerror(rc));
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

void adapter__shared_uninstall(adapter_shared *s, kbackend *kb) {
    if (kb->ops->is_host) return;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < s->n_devs; i++) {
        shared_dev *d = &s->devs[i];
        if (d->kb != kb) continue;
        if (--d->refs == 0) {
            kb->ops->free(kb, d->dev);
            *d = s->devs[--s->n_devs];
        }
        pthread_mutex_unlock(&mu);
        return;
    }
    pthread_mutex_unlock(&mu);
    LOGE("adapter_shared: uninstall from a backend it is not installed on");
    abort();
}

void adapter__shared_stats(int *entries, size_t *bytes) {
    int n = 0;
    size_t b = 0;
    pthread_mutex_lock(&mu);
    for (const adapter_shared *s = head; s; s = s->next) n++, b += s->bytes;
    pthread_mutex_unlock(&mu);
    if (entries) *entries = n;
    if (bytes) *bytes = b;
}
