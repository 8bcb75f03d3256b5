/* kernels/slot_pool.c — the device adapter slot pool's allocation and residency logic
 * (slot_pool.h): fixed-size slots in one region, pinned staging, upload events, LRU among
 * unpinned complete slots, retire for hot swap. Touches the device only through
 * slot_dev_ops. Linear scans: a pool holds tens to a few hundred slots. */
#include "kernels/slot_pool.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/status.h"

typedef enum { SLOT_FREE = 0, SLOT_LOADING, SLOT_READY } slot_state;

typedef struct {
    char key[65];
    slot_state state;
    int pins;
    uint64_t tick;   /* LRU clock at the last find/load/use */
    bool retired;    /* freed at its last unpin; never found again */
    bool waited;     /* the compute stream already waits for this load's event */
    int stage;       /* staging buffer of the upload in flight, -1 when none */
} slot_ent;

typedef struct {
    void *host;      /* pinned, slot_bytes */
    bool busy;       /* an upload from it may still be reading it */
} stage_ent;

struct slot_pool {
    const slot_dev_ops *dev;
    void *ctx;
    size_t slot_bytes;
    int n_slots, n_staging;
    unsigned char *region;
    slot_ent *slots;
    stage_ent *stages;
    uint64_t clock, layout_gen;
    slot_pool_stats st;
};

static size_t align_up(size_t n) { return (n + SLOT_POOL_ALIGN - 1) / SLOT_POOL_ALIGN * SLOT_POOL_ALIGN; }

static void say(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

size_t slot_pool_slot_bytes(int n_layers, int n_targets, const int *in_dims, const int *out_dims, int max_rank,
                            int dtype_bytes) {
    if (n_layers < 1 || n_targets < 1 || !in_dims || !out_dims || max_rank < 1 ||
        (dtype_bytes != 2 && dtype_bytes != 4))
        return 0;
    size_t per_layer = 0;
    for (int i = 0; i < n_targets; i++) {
        if (in_dims[i] < 1 || out_dims[i] < 1) return 0;
        per_layer += align_up((size_t)max_rank * (size_t)in_dims[i] * (size_t)dtype_bytes);  /* A */
        per_layer += align_up((size_t)out_dims[i] * (size_t)max_rank * (size_t)dtype_bytes); /* B */
        per_layer += align_up((size_t)out_dims[i] * sizeof(float));                          /* vector */
    }
    return per_layer * (size_t)n_layers;
}

int slot_pool_create(const slot_dev_ops *dev, void *ctx, size_t slot_bytes, int n_slots, int n_staging,
                     slot_pool **out, char *err, size_t errlen) {
    say(err, errlen, "%s", "");
    if (!out) return PEFTD_EINVAL;
    *out = NULL;
    if (!dev || !dev->region_alloc || !dev->region_free || !dev->host_alloc || !dev->host_free || !dev->copy_async ||
        !dev->event_record || !dev->event_query || !dev->compute_wait || slot_bytes == 0 || n_slots < 1 ||
        n_staging < 1) {
        say(err, errlen, "slot pool: bad arguments (slot_bytes %zu, slots %d, staging %d)", slot_bytes, n_slots,
            n_staging);
        return PEFTD_EINVAL;
    }
    slot_bytes = align_up(slot_bytes);
    if (slot_bytes > SIZE_MAX / (size_t)n_slots) {
        say(err, errlen, "slot pool: %d slots of %zu bytes overflow", n_slots, slot_bytes);
        return PEFTD_EINVAL;
    }
    slot_pool *p = calloc(1, sizeof *p);
    if (!p || !(p->slots = calloc((size_t)n_slots, sizeof *p->slots)) ||
        !(p->stages = calloc((size_t)n_staging, sizeof *p->stages))) {
        if (p) free(p->slots);
        free(p);
        say(err, errlen, "slot pool: out of host memory");
        return PEFTD_ENOMEM;
    }
    p->dev = dev;
    p->ctx = ctx;
    p->slot_bytes = slot_bytes;
    p->n_slots = n_slots;
    p->n_staging = n_staging;
    p->st.total = n_slots;
    for (int i = 0; i < n_slots; i++) p->slots[i].stage = -1;
    p->region = dev->region_alloc(ctx, slot_bytes * (size_t)n_slots);
    if (!p->region) {
        say(err, errlen, "slot pool: cannot allocate %d slots x %zu bytes (%.1f MiB) of device memory", n_slots,
            slot_bytes, (double)slot_bytes * n_slots / 1048576.0);
        slot_pool_free(p);
        return PEFTD_ENOMEM;
    }
    for (int i = 0; i < n_staging; i++)
        if (!(p->stages[i].host = dev->host_alloc(ctx, slot_bytes))) {
            say(err, errlen, "slot pool: cannot allocate %zu bytes of pinned host staging", slot_bytes);
            slot_pool_free(p);
            return PEFTD_ENOMEM;
        }
    *out = p;
    return 0;
}

void slot_pool_free(slot_pool *p) {
    if (!p) return;
    for (int i = 0; p->stages && i < p->n_staging; i++)
        if (p->stages[i].host) p->dev->host_free(p->ctx, p->stages[i].host);
    if (p->region) p->dev->region_free(p->ctx, p->region);
    free(p->stages);
    free(p->slots);
    free(p);
}

static bool valid(const slot_pool *p, int slot) { return p && slot >= 0 && slot < p->n_slots; }

static void gauges(slot_pool *p) {
    int used = 0, pinned = 0, loading = 0;
    for (int i = 0; i < p->n_slots; i++) {
        used += p->slots[i].state != SLOT_FREE;
        pinned += p->slots[i].pins > 0;
        loading += p->slots[i].state == SLOT_LOADING;
    }
    p->st.used = used, p->st.pinned = pinned, p->st.loading = loading;
}

static int lookup(const slot_pool *p, const char *key) {
    for (int i = 0; i < p->n_slots; i++)
        if (p->slots[i].state != SLOT_FREE && !p->slots[i].retired && !strcmp(p->slots[i].key, key)) return i;
    return -1;
}

int slot_pool_find(slot_pool *p, const char *key) {
    if (!p || !key) return -1;
    int s = lookup(p, key);
    if (s < 0) {
        p->st.misses++;
        return -1;
    }
    p->st.hits++;
    p->slots[s].tick = ++p->clock;
    return s;
}

static void release(slot_pool *p, int s) {
    slot_ent *e = &p->slots[s];
    memset(e->key, 0, sizeof e->key);
    e->state = SLOT_FREE;
    e->retired = false;
    e->waited = false;
    e->pins = 0;
    p->layout_gen++;
}

int slot_pool_poll(slot_pool *p) {
    if (!p) return PEFTD_EINVAL;
    int loading = 0;
    for (int i = 0; i < p->n_slots; i++) {
        slot_ent *e = &p->slots[i];
        if (e->state != SLOT_LOADING) continue;
        int q = p->dev->event_query(p->ctx, i);
        if (q < 0) return q;
        if (q == 0) {
            loading++;
            continue;
        }
        e->state = SLOT_READY;
        if (e->retired && e->pins == 0) release(p, i); /* retired while its upload was in flight */
    }
    for (int j = 0; j < p->n_staging; j++) {
        if (!p->stages[j].busy) continue;
        int q = p->dev->event_query(p->ctx, p->n_slots + j);
        if (q < 0) return q;
        if (q) p->stages[j].busy = false;
    }
    for (int i = 0; i < p->n_slots; i++) /* a completed load no longer holds its staging buffer */
        if (p->slots[i].stage >= 0 && !p->stages[p->slots[i].stage].busy) p->slots[i].stage = -1;
    gauges(p);
    return loading;
}

bool slot_pool_staging_busy(const slot_pool *p) {
    if (!p) return false;
    for (int j = 0; j < p->n_staging; j++)
        if (!p->stages[j].busy) return false;
    return true;
}

bool slot_pool_ready(const slot_pool *p, int slot) { return valid(p, slot) && p->slots[slot].state == SLOT_READY; }

/* A slot to load into: a free one, else the least recently used complete, unpinned one. */
static int take_slot(slot_pool *p) {
    int lru = -1;
    for (int i = 0; i < p->n_slots; i++) {
        const slot_ent *e = &p->slots[i];
        if (e->state == SLOT_FREE) return i;
        if (e->state == SLOT_READY && e->pins == 0 && (lru < 0 || e->tick < p->slots[lru].tick)) lru = i;
    }
    if (lru >= 0) {
        release(p, lru);
        p->st.evictions++;
    }
    return lru;
}

static int take_stage(slot_pool *p) {
    for (int j = 0; j < p->n_staging; j++)
        if (!p->stages[j].busy) return j;
    return -1;
}

int slot_pool_load(slot_pool *p, const char *key, const void *host, size_t bytes, int *slot, char *err,
                   size_t errlen) {
    say(err, errlen, "%s", "");
    if (!p || !key || !slot || strlen(key) >= sizeof p->slots[0].key || (bytes && !host)) return PEFTD_EINVAL;
    *slot = -1;
    int s = lookup(p, key);
    if (s >= 0) {
        p->slots[s].tick = ++p->clock;
        *slot = s;
        return 0;
    }
    if (bytes > p->slot_bytes) {
        say(err, errlen, "adapter %.12s needs %zu bytes of device memory; a pool slot holds %zu (raise the slot "
            "pool's max rank)", key, bytes, p->slot_bytes);
        return PEFTD_E2BIG;
    }
    int rc = slot_pool_poll(p);
    if (rc < 0) return rc;
    int j = take_stage(p);
    if (j < 0) {
        p->st.busy_refusals++;
        say(err, errlen, "adapter %.12s: all %d staging buffers are still uploading (retry next step)", key,
            p->n_staging);
        return PEFTD_EBUSY;
    }
    s = take_slot(p);
    if (s < 0) {
        p->st.busy_refusals++;
        say(err, errlen, "adapter %.12s: all %d device adapter slots are pinned by running sequences or loading",
            key, p->n_slots);
        return PEFTD_EBUSY;
    }
    slot_ent *e = &p->slots[s];
    unsigned char *dst = p->region + (size_t)s * p->slot_bytes;
    if (bytes) memcpy(p->stages[j].host, host, bytes);
    rc = bytes ? p->dev->copy_async(p->ctx, dst, p->stages[j].host, bytes) : 0;
    if (rc == 0) rc = p->dev->event_record(p->ctx, s);
    if (rc == 0) rc = p->dev->event_record(p->ctx, p->n_slots + j);
    if (rc < 0) {
        /* The slot's old contents may be partly overwritten: it stays free. */
        p->layout_gen++;
        gauges(p);
        say(err, errlen, "adapter %.12s: upload to the device failed (%d)", key, rc);
        return rc;
    }
    snprintf(e->key, sizeof e->key, "%s", key);
    e->state = SLOT_LOADING;
    e->pins = 0;
    e->retired = false;
    e->waited = false;
    e->stage = j;
    e->tick = ++p->clock;
    p->stages[j].busy = true;
    p->layout_gen++;
    p->st.loads++;
    gauges(p);
    *slot = s;
    return 0;
}

int slot_pool_pin(slot_pool *p, int slot) {
    if (!valid(p, slot) || p->slots[slot].state == SLOT_FREE || p->slots[slot].retired) return PEFTD_EINVAL;
    p->slots[slot].pins++;
    p->slots[slot].tick = ++p->clock;
    gauges(p);
    return 0;
}

int slot_pool_unpin(slot_pool *p, int slot) {
    if (!valid(p, slot) || p->slots[slot].pins <= 0) return PEFTD_EINVAL;
    slot_ent *e = &p->slots[slot];
    /* A retired slot whose upload is still in flight is freed by retire's next pass. */
    if (--e->pins == 0 && e->retired && e->state == SLOT_READY) release(p, slot);
    gauges(p);
    return 0;
}

void *slot_pool_use(slot_pool *p, int slot) {
    if (!valid(p, slot) || p->slots[slot].state == SLOT_FREE) return NULL;
    slot_ent *e = &p->slots[slot];
    if (!e->waited) {
        if (p->dev->compute_wait(p->ctx, slot) < 0) return NULL;
        e->waited = true;
    }
    e->tick = ++p->clock;
    return p->region + (size_t)slot * p->slot_bytes;
}

void slot_pool_retire(slot_pool *p, const char *key) {
    if (!p || !key) return;
    int s = lookup(p, key);
    if (s < 0) return;
    p->slots[s].retired = true;
    (void)slot_pool_poll(p);
    if (p->slots[s].pins == 0 && p->slots[s].state == SLOT_READY) release(p, s);
    gauges(p);
}

void *slot_pool_addr(const slot_pool *p, int slot) {
    if (!valid(p, slot) || p->slots[slot].state == SLOT_FREE) return NULL;
    return p->region + (size_t)slot * p->slot_bytes;
}

int slot_pool_slot_at(const slot_pool *p, const void *dev) {
    if (!p || !dev) return -1;
    const unsigned char *d = dev;
    if (d < p->region || d >= p->region + (size_t)p->n_slots * p->slot_bytes) return -1;
    int s = (int)((size_t)(d - p->region) / p->slot_bytes);
    return p->slots[s].state == SLOT_FREE ? -1 : s;
}

uint64_t slot_pool_layout_gen(const slot_pool *p) { return p ? p->layout_gen : 0; }
size_t slot_pool_slot_size(const slot_pool *p) { return p ? p->slot_bytes : 0; }
void slot_pool_get_stats(const slot_pool *p, slot_pool_stats *s) {
    if (p && s) *s = p->st;
}
