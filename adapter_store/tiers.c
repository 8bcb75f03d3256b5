/* adapter_store/tiers.c — see tiers.h.
 *
 * Slots and fetches belong to the engine thread; the host tier and the counters have
 * their own locks (HTTP threads offer blobs, pool threads read them). A fetch decodes the
 * blob into host memory on a pool thread; its completion (engine thread) installs it into
 * the backend (adapter_install) and into a slot: the only upload of adapter weights. Lookups are linear
 * scans: a slot pool holds tens to a few hundred adapters, and a scan of a few hundred
 * 65-byte keys per admission is noise next to a decode step.
 *
 * Capacity is a soft bound for slots: a finished fetch is installed even when every slot
 * is pinned (evicting unpinned ones first), and the pool shrinks back as pins drop, so a
 * decoded adapter is never thrown away while requests wait for it.
 */
#include "adapter_store/tiers.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_blob.h"
#include "kernels/slot_pool.h"
#include "lib/log.h"

typedef struct {
    char sha[65];
    void *blob;
    size_t len;
    uint64_t tick;
    int keep;        /* tiers_retain holds: never evicted while > 0 */
    bool forgotten;  /* tiers_forget came while kept: dropped at the last release */
} host_entry;

typedef struct {
    char sha[65];
    adapter *a;
    int pins;
    uint64_t tick;
    int pslot;       /* its device slot pool slot, or -1 (no pool) */
} slot;

typedef struct {
    void (*cb)(void *ud);
    void *ud;
} waiter;

typedef struct fetch {
    uv_work_t req;
    tiers *t;
    char sha[65];
    uint64_t start_ns;
    /* worker results */
    adapter *a;
    int status;
    char err[256];
    bool host_hit;
    waiter *w;
    int n_w, cap_w;
} fetch;

typedef struct {
    char sha[65];
    int status;
    char msg[256];
} failure;

struct tiers {
    tiers_options opt;
    astore *store;
    const adapter_base *base;
    kbackend *kb;
    uv_loop_t *loop;
    uint64_t tick;
    /* engine thread */
    slot *slots;
    int n_slots, cap_slots;
    fetch **inflight;
    int n_inflight, cap_inflight;
    failure fail[16]; /* the most recent fetch failures (ring) */
    int n_fail;
    /* host tier */
    pthread_mutex_t hmu;
    host_entry *host;
    int n_host, cap_host;
    size_t host_used;
    uint64_t htick;
    /* counters */
    pthread_mutex_t smu;
    slot_pool *pool; /* device slot pool (tiers_set_device_pool), or NULL */
    const char *placing; /* the sha fetch_done is placing */
    int placed;          /* the pool slot the last place() took */
    tiers_stats st;
};

int tiers_create(const tiers_options *opt, astore *store, const adapter_base *base, kbackend *kb, uv_loop_t *loop,
                 tiers **out) {
    if (opt->slots < 1) return PEFTD_EINVAL;
    tiers *t = calloc(1, sizeof *t);
    if (!t) return PEFTD_ENOMEM;
    t->opt = *opt;
    t->store = store;
    t->base = base;
    t->kb = kb;
    t->loop = loop;
    pthread_mutex_init(&t->hmu, NULL);
    pthread_mutex_init(&t->smu, NULL);
    t->st.slots_total = opt->slots;
    *out = t;
    return 0;
}

void tiers_free(tiers *t) {
    if (!t) return;
    /* fetches still queued: their after-work runs when the loop runs; the engine drains the
     * loop before freeing, so none is left here */
    for (int i = 0; i < t->n_slots; i++) adapter_free(t->slots[i].a);
    for (int i = 0; i < t->n_host; i++) free(t->host[i].blob);
    free(t->slots);
    free(t->inflight);
    free(t->host);
    pthread_mutex_destroy(&t->hmu);
    pthread_mutex_destroy(&t->smu);
    free(t);
}

#define BUMP(t, field, by)                                                                    \
    do {                                                                                      \
        pthread_mutex_lock(&(t)->smu);                                                        \
        (t)->st.field += (by);                                                                \
        pthread_mutex_unlock(&(t)->smu);                                                      \
    } while (0)

/* ---------- host tier ---------- */

/* Under hmu: evicts least recently used blobs until `need` more bytes fit. */
static void host_make_room(tiers *t, size_t need) {
    while (t->host_used + need > t->opt.host_bytes) {
        int lru = -1;
        for (int i = 0; i < t->n_host; i++)
            if (!t->host[i].keep && (lru < 0 || t->host[i].tick < t->host[lru].tick)) lru = i;
        if (lru < 0) break; /* only kept blobs left: they go when released */
        t->host_used -= t->host[lru].len;
        free(t->host[lru].blob);
        t->host[lru] = t->host[--t->n_host];
        BUMP(t, host_evictions, 1);
    }
}

/* Under hmu: the host entry of sha256, or NULL. */
static host_entry *host_find(tiers *t, const char *sha256) {
    for (int i = 0; i < t->n_host; i++)
        if (!strcmp(t->host[i].sha, sha256)) return &t->host[i];
    return NULL;
}

/* Under hmu: adds blob (owned from here on) as sha256's entry, kept keep times. */
static int host_add(tiers *t, const char *sha256, void *blob, size_t len, int keep) {
    host_make_room(t, len);
    if (t->n_host == t->cap_host) {
        int cap = t->cap_host ? 2 * t->cap_host : 16;
        host_entry *h = realloc(t->host, (size_t)cap * sizeof *h);
        if (!h) {
            free(blob);
            return PEFTD_ENOMEM;
        }
        t->host = h;
        t->cap_host = cap;
    }
    host_entry *e = &t->host[t->n_host++];
    *e = (host_entry){.blob = blob, .len = len, .tick = ++t->htick, .keep = keep};
    snprintf(e->sha, sizeof e->sha, "%s", sha256);
    t->host_used += len;
    return 0;
}

/* Under hmu: removes entry e. */
static void host_remove(tiers *t, host_entry *e) {
    t->host_used -= e->len;
    free(e->blob);
    *e = t->host[--t->n_host];
}

int tiers_offer_blob(tiers *t, const char *sha256, const void *blob, size_t len) {
    if (len > t->opt.host_bytes) return 0; /* larger than the whole tier: not cached */
    void *copy = malloc(len);
    if (!copy) return PEFTD_ENOMEM;
    memcpy(copy, blob, len);
    pthread_mutex_lock(&t->hmu);
    host_entry *e = host_find(t, sha256);
    int rc = 0;
    if (e) { /* already there: refresh */
        e->tick = ++t->htick;
        free(copy);
    } else {
        rc = host_add(t, sha256, copy, len, 0);
    }
    pthread_mutex_unlock(&t->hmu);
    return rc;
}

/* Under hmu: one more keep of sha256's entry; false when it is not in the tier. */
static bool host_keep(tiers *t, const char *sha256) {
    host_entry *e = host_find(t, sha256);
    if (!e) return false;
    e->keep++;
    e->forgotten = false;
    return true;
}

int tiers_retain(tiers *t, const char *sha256) {
    pthread_mutex_lock(&t->hmu);
    bool kept = host_keep(t, sha256);
    pthread_mutex_unlock(&t->hmu);
    if (kept) return 0;
    void *blob = NULL;
    size_t len = 0;
    int rc = astore_get_blob(t->store, sha256, &blob, &len); /* outside the lock: LMDB I/O */
    if (rc) return rc;
    pthread_mutex_lock(&t->hmu);
    if (host_keep(t, sha256)) free(blob); /* another thread brought it meanwhile */
    else rc = host_add(t, sha256, blob, len, 1);
    pthread_mutex_unlock(&t->hmu);
    return rc;
}

void tiers_release(tiers *t, const char *sha256) {
    pthread_mutex_lock(&t->hmu);
    host_entry *e = host_find(t, sha256);
    if (e && e->keep > 0 && --e->keep == 0) {
        if (e->forgotten) host_remove(t, e);
        else host_make_room(t, 0); /* the tier may be over budget while it was kept */
    }
    pthread_mutex_unlock(&t->hmu);
}

/* Copies the blob of sha256 out of the host tier; false when absent. */
static bool host_get(tiers *t, const char *sha256, void **blob, size_t *len) {
    bool found = false;
    pthread_mutex_lock(&t->hmu);
    for (int i = 0; i < t->n_host; i++)
        if (!strcmp(t->host[i].sha, sha256)) {
            *blob = malloc(t->host[i].len);
            if (*blob) {
                memcpy(*blob, t->host[i].blob, t->host[i].len);
                *len = t->host[i].len;
                t->host[i].tick = ++t->htick;
                found = true;
            }
            break;
        }
    pthread_mutex_unlock(&t->hmu);
    return found;
}

void tiers_forget(tiers *t, const char *sha256) {
    pthread_mutex_lock(&t->hmu);
    host_entry *e = host_find(t, sha256);
    if (e && e->keep) e->forgotten = true; /* still needed: dropped at its last release */
    else if (e) host_remove(t, e);
    pthread_mutex_unlock(&t->hmu);
}

/* ---------- slots (engine thread) ---------- */

/* Publishes the slot gauges for other threads' tiers_get_stats(). */
static void slot_gauges(tiers *t) {
    int pinned = 0;
    for (int i = 0; i < t->n_slots; i++) pinned += t->slots[i].pins > 0;
    pthread_mutex_lock(&t->smu);
    t->st.slots_used = t->n_slots;
    t->st.slots_pinned = pinned;
    pthread_mutex_unlock(&t->smu);
}

static slot *slot_find(tiers *t, const char *sha256) {
    for (int i = 0; i < t->n_slots; i++)
        if (!strcmp(t->slots[i].sha, sha256)) return &t->slots[i];
    return NULL;
}

static void slot_evict_lru(tiers *t) {
    int lru = -1;
    for (int i = 0; i < t->n_slots; i++)
        if (t->slots[i].pins == 0 && (lru < 0 || t->slots[i].tick < t->slots[lru].tick)) lru = i;
    if (lru < 0) return;
    adapter_free(t->slots[lru].a);
    t->slots[lru] = t->slots[--t->n_slots];
    BUMP(t, slot_evictions, 1);
}

adapter *tiers_pin(tiers *t, const char *sha256) {
    slot *s = slot_find(t, sha256);
    if (!s) {
        BUMP(t, slot_misses, 1);
        return NULL;
    }
    /* the compute stream waits for the slot's upload before the steps that will read it */
    if (t->pool && s->pslot >= 0 && !slot_pool_use(t->pool, s->pslot)) {
        BUMP(t, slot_misses, 1);
        return NULL;
    }
    s->pins++;
    s->tick = ++t->tick;
    BUMP(t, slot_hits, 1);
    slot_gauges(t);
    return s->a;
}

void tiers_unpin(tiers *t, adapter *a) {
    for (int i = 0; i < t->n_slots; i++)
        if (t->slots[i].a == a) {
            if (t->slots[i].pins <= 0) {
                LOGE("tiers_unpin: adapter not pinned");
                abort(); /* programmer error: unbalanced pin/unpin would free a live adapter */
            }
            t->slots[i].pins--;
            break;
        }
    while (t->n_slots > t->opt.slots) { /* shrink back after an over-capacity install */
        int before = t->n_slots;
        slot_evict_lru(t);
        if (t->n_slots == before) break;
    }
    slot_gauges(t);
}

static int slot_install(tiers *t, const char *sha256, adapter *a) {
    while (t->n_slots >= t->opt.slots) {
        int before = t->n_slots;
        slot_evict_lru(t);
        if (t->n_slots == before) break; /* everything pinned: go over capacity */
    }
    if (t->n_slots == t->cap_slots) {
        int cap = t->cap_slots ? 2 * t->cap_slots : t->opt.slots + 4;
        slot *s = realloc(t->slots, (size_t)cap * sizeof *s);
        if (!s) return PEFTD_ENOMEM;
        t->slots = s;
        t->cap_slots = cap;
    }
    slot *s = &t->slots[t->n_slots++];
    memset(s, 0, sizeof *s);
    snprintf(s->sha, sizeof s->sha, "%s", sha256);
    s->a = a;
    s->tick = ++t->tick;
    s->pslot = t->pool ? t->placed : -1;
    slot_gauges(t);
    return 0;
}

/* adapter_placer over the device slot pool: the fetched version's block goes into a slot
 * (an async upload on the pool's copy stream); freeing the adapter retires the slot. */
static int pool_place(void *ud, const void *host, size_t bytes, void **dev, char *err, size_t errlen) {
    tiers *t = ud;
    int slot = -1;
    int rc = slot_pool_load(t->pool, t->placing, host, bytes, &slot, err, errlen);
    /* both staging buffers still uploading: they finish within milliseconds, so wait here
     * (a pinned-full pool is different: that fails this fetch) */
    while (rc == PEFTD_EBUSY && slot_pool_staging_busy(t->pool)) {
        if ((rc = slot_pool_poll(t->pool)) < 0) return rc;
        sched_yield();
        rc = slot_pool_load(t->pool, t->placing, host, bytes, &slot, err, errlen);
    }
    if (rc < 0) return rc;
    t->placed = slot;
    *dev = slot_pool_addr(t->pool, slot);
    return 0;
}

static void pool_release(void *ud, void *dev) {
    tiers *t = ud;
    int slot = slot_pool_slot_at(t->pool, dev);
    if (slot < 0) return;
    char key[65];
    for (int i = 0; i < t->n_slots; i++)
        if (t->slots[i].pslot == slot) {
            memcpy(key, t->slots[i].sha, sizeof key);
            slot_pool_retire(t->pool, key);
            return;
        }
}

void tiers_set_device_pool(tiers *t, slot_pool *pool) {
    t->pool = pool;
}

/* ---------- fetch ---------- */

static void record_failure(tiers *t, const char *sha256, int status, const char *msg) {
    failure *f = &t->fail[t->n_fail++ % 16];
    snprintf(f->sha, sizeof f->sha, "%s", sha256);
    f->status = status;
    snprintf(f->msg, sizeof f->msg, "%s", msg);
}

int tiers_failure(tiers *t, const char *sha256, char *msg, size_t len) {
    int n = t->n_fail < 16 ? t->n_fail : 16;
    for (int k = 0; k < n; k++) {
        const failure *f = &t->fail[(t->n_fail - 1 - k) % 16];
        if (!strcmp(f->sha, sha256)) {
            snprintf(msg, len, "%s", f->msg);
            return f->status;
        }
    }
    return 0;
}

static void fetch_work(uv_work_t *req) {
    fetch *f = req->data;
    tiers *t = f->t;
    void *blob = NULL;
    size_t len = 0;
    f->host_hit = host_get(t, f->sha, &blob, &len);
    if (!f->host_hit) {
        f->status = astore_get_blob(t->store, f->sha, &blob, &len);
        if (f->status < 0) {
            snprintf(f->err, sizeof f->err, "reading the adapter from the store failed: %s",
                     peftd_strerror(f->status));
            return;
        }
        tiers_offer_blob(t, f->sha, blob, len);
    }
    /* decoding is host-only (no backend call from this pool thread); fetch_done installs */
    f->status = adapter_blob_read(blob, len, t->base, &f->a, f->err, sizeof f->err);
    free(blob);
}

static void fetch_done(uv_work_t *req, int uv_status) {
    fetch *f = req->data;
    tiers *t = f->t;
    for (int i = 0; i < t->n_inflight; i++)
        if (t->inflight[i] == f) {
            t->inflight[i] = t->inflight[--t->n_inflight];
            break;
        }
    if (uv_status < 0 && f->status >= 0) {
        f->status = PEFTD_ECANCELED;
        snprintf(f->err, sizeof f->err, "adapter load cancelled");
    }
    /* engine thread: the one place a fetched adapter's weights reach the backend */
    if (f->status >= 0 && t->pool) {
        /* make room in the pool the LRU way first: the pool has as many slots as the tier */
        while (t->n_slots >= t->opt.slots) {
            int before = t->n_slots;
            slot_evict_lru(t);
            if (t->n_slots == before) break;
        }
        adapter_placer pl = {pool_place, pool_release, t};
        t->placing = f->sha;
        t->placed = -1;
        f->status = adapter_install_placed(f->a, t->kb, &pl, f->err, sizeof f->err);
        t->placing = NULL;
        if (f->status == PEFTD_E2BIG) { /* larger than a slot: its own allocation, as without a pool */
            LOGI("adapter %.12s: %s; allocated on its own", f->sha, f->err);
            t->placed = -1;
            f->status = adapter_install(f->a, t->kb, f->err, sizeof f->err);
        }
    } else if (f->status >= 0) {
        f->status = adapter_install(f->a, t->kb, f->err, sizeof f->err);
    }
    if (f->status >= 0 && slot_install(t, f->sha, f->a) < 0) {
        f->status = PEFTD_ENOMEM;
        snprintf(f->err, sizeof f->err, "out of memory installing the adapter");
    }
    if (f->status < 0) {
        adapter_free(f->a);
        record_failure(t, f->sha, f->status, f->err);
        LOGW("adapter %.12s: load failed: %s", f->sha, f->err);
        BUMP(t, load_failures, 1);
    } else {
        pthread_mutex_lock(&t->smu);
        t->st.loads++;
        if (f->host_hit) t->st.host_hits++;
        else t->st.host_misses++;
        t->st.load_seconds_sum += (double)(uv_hrtime() - f->start_ns) * 1e-9;
        pthread_mutex_unlock(&t->smu);
    }
    for (int i = 0; i < f->n_w; i++) f->w[i].cb(f->w[i].ud);
    free(f->w);
    free(f);
}

int tiers_fetch(tiers *t, const char *sha256, void (*on_ready)(void *ud), void *ud) {
    if (slot_find(t, sha256)) return 0;
    fetch *f = NULL;
    for (int i = 0; i < t->n_inflight && !f; i++)
        if (!strcmp(t->inflight[i]->sha, sha256)) f = t->inflight[i];
    if (!f) {
        int pinned = 0;
        for (int i = 0; i < t->n_slots; i++) pinned += t->slots[i].pins > 0;
        if (pinned >= t->opt.slots) return PEFTD_EBUSY;
        if (t->n_inflight == t->cap_inflight) {
            int cap = t->cap_inflight ? 2 * t->cap_inflight : 8;
            fetch **p = realloc(t->inflight, (size_t)cap * sizeof *p);
            if (!p) return PEFTD_ENOMEM;
            t->inflight = p;
            t->cap_inflight = cap;
        }
        if (!(f = calloc(1, sizeof *f))) return PEFTD_ENOMEM;
        f->t = t;
        snprintf(f->sha, sizeof f->sha, "%s", sha256);
        f->start_ns = uv_hrtime();
        f->req.data = f;
        for (int k = 0; k < 16; k++) /* a new attempt: forget an old failure of this hash */
            if (!strcmp(t->fail[k].sha, sha256)) t->fail[k].sha[0] = 0;
        int st = uv_queue_work(t->loop, &f->req, fetch_work, fetch_done);
        if (st < 0) {
            free(f);
            return PEFTD_EBACKEND;
        }
        t->inflight[t->n_inflight++] = f;
    }
    if (on_ready) {
        if (f->n_w == f->cap_w) {
            int cap = f->cap_w ? 2 * f->cap_w : 4;
            waiter *w = realloc(f->w, (size_t)cap * sizeof *w);
            if (!w) return PEFTD_ENOMEM;
            f->w = w;
            f->cap_w = cap;
        }
        f->w[f->n_w++] = (waiter){on_ready, ud};
    }
    return 0;
}

int tiers_resident(const tiers *t, char (*out)[65], int max) {
    for (int i = 0; i < t->n_slots && i < max; i++) memcpy(out[i], t->slots[i].sha, 65);
    return t->n_slots;
}

void tiers_get_stats(tiers *t, tiers_stats *s) {
    pthread_mutex_lock(&t->smu);
    *s = t->st;
    pthread_mutex_unlock(&t->smu);
    pthread_mutex_lock(&t->hmu);
    s->host_bytes_used = t->host_used;
    pthread_mutex_unlock(&t->hmu);
}
