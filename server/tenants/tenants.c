/* server/tenants/tenants.c — see tenants.h. Owns the in-memory table of tenants (limits
 * from the store, plus the runtime counters: requests in flight and the token window),
 * key generation and authentication.
 */
#include "server/tenants/tenants.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/log.h"
#include "lib/status.h"

/* The token window: 60 one-second buckets (tokens per *minute*). */
#define TENANTS_WINDOW_S 60

typedef struct {
    tstore_tenant rec;
    bool live;                          /* false: deleted or gone after a reload */
    uint64_t epoch;                     /* this incarnation of the slot (tickets name it) */
    int64_t inflight;                   /* sequences held by tickets */
    int64_t reserved;                   /* tokens reserved by tickets, not yet generated */
    int64_t bucket_sec[TENANTS_WINDOW_S];
    uint64_t bucket_n[TENANTS_WINDOW_S];
} tenant_state;

struct tenants {
    astore *store;
    tenants_config cfg;
    unsigned char admin_hash[32];
    bool has_admin;
    pthread_mutex_t mu;
    tenant_state *v;
    int n, cap;
    uint64_t next_epoch;
};

static int64_t now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec;
}

static int sha256_raw(const char *s, unsigned char out[32]) {
    unsigned int n = 0;
    if (!EVP_Digest(s, strlen(s), out, &n, EVP_sha256(), NULL) || n != 32) return PEFTD_EIO;
    return 0;
}

static void hex(const unsigned char *p, size_t n, char *out) {
    for (size_t i = 0; i < n; i++) snprintf(out + 2 * i, 3, "%02x", p[i]);
}

static int unhex(const char *h, unsigned char *out, size_t n) {
    if (strlen(h) != 2 * n) return PEFTD_EINVAL;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1) return PEFTD_EINVAL;
        out[i] = (unsigned char)v;
    }
    return 0;
}

int tenants_sha256_hex(const char *s, char out[65]) {
    unsigned char md[32];
    int rc = sha256_raw(s, md);
    if (rc) return rc;
    hex(md, 32, out);
    return 0;
}

/* Under mu. */
static tenant_state *find(tenants *t, const char *id) {
    for (int i = 0; i < t->n; i++)
        if (t->v[i].live && !strcmp(t->v[i].rec.id, id)) return &t->v[i];
    return NULL;
}

/* Under mu: the state of rec->id, created (or revived) when absent; limits refreshed. */
static int upsert(tenants *t, const tstore_tenant *rec) {
    tenant_state *st = find(t, rec->id);
    if (!st)
        for (int i = 0; i < t->n && !st; i++)
            if (!t->v[i].live && t->v[i].inflight == 0) st = &t->v[i]; /* reuse a free slot */
    if (!st) {
        if (t->n == t->cap) {
            int cap = t->cap ? 2 * t->cap : 16;
            tenant_state *p = realloc(t->v, (size_t)cap * sizeof *p);
            if (!p) return PEFTD_ENOMEM;
            t->v = p;
            t->cap = cap;
        }
        st = &t->v[t->n++];
        memset(st, 0, sizeof *st);
    }
    if (!st->live) {
        memset(st, 0, sizeof *st);
        st->epoch = ++t->next_epoch;
    }
    st->rec = *rec;
    st->live = true;
    return 0;
}

int tenants_reload(tenants *t) {
    tstore_tenant *recs = NULL;
    int n = 0;
    int rc = tstore_tenant_list(t->store, &recs, &n);
    if (rc) return rc;
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < t->n; i++) {
        bool keep = false;
        for (int j = 0; j < n && !keep; j++) keep = !strcmp(recs[j].id, t->v[i].rec.id);
        if (!keep) t->v[i].live = false;
    }
    for (int j = 0; j < n && !rc; j++) rc = upsert(t, &recs[j]);
    pthread_mutex_unlock(&t->mu);
    free(recs);
    if (rc == 0) LOGI("tenants: %d tenant%s loaded", n, n == 1 ? "" : "s");
    return rc;
}

int tenants_open(astore *s, const tenants_config *cfg, tenants **out, char *err, size_t errlen) {
    *out = NULL;
    tenants *t = calloc(1, sizeof *t);
    if (!t) return PEFTD_ENOMEM;
    t->store = s;
    t->cfg = *cfg;
    pthread_mutex_init(&t->mu, NULL);
    int rc = 0;
    if (cfg->admin_sha256[0]) {
        if ((rc = unhex(cfg->admin_sha256, t->admin_hash, 32)) < 0) {
            snprintf(err, errlen, "auth: the admin key's sha256 must be 64 hex digits");
            goto fail;
        }
        t->has_admin = true;
    }
    if (cfg->enabled && (rc = tenants_reload(t)) < 0) {
        snprintf(err, errlen, "auth: cannot read the tenants: %s", peftd_strerror(rc));
        goto fail;
    }
    *out = t;
    return 0;
fail:
    tenants_close(t);
    return rc;
}

void tenants_close(tenants *t) {
    if (!t) return;
    OPENSSL_cleanse(t->admin_hash, sizeof t->admin_hash);
    pthread_mutex_destroy(&t->mu);
    free(t->v);
    free(t);
}

bool tenants_enabled(const tenants *t) { return t && t->cfg.enabled; }

int tenants_authenticate(tenants *t, const char *key, tenants_principal *out) {
    memset(out, 0, sizeof *out);
    out->weight = 1.0f;
    if (!key || !*key || strlen(key) > 4096) return PEFTD_ENOTFOUND;
    unsigned char md[32];
    char h[65];
    if (sha256_raw(key, md)) return PEFTD_EIO;
    if (t->has_admin && CRYPTO_memcmp(md, t->admin_hash, 32) == 0) {
        out->role = TENANTS_ADMIN;
        return 0;
    }
    /* The lookup goes by the hash, so its timing tells an attacker about the hash of
     * their guess, not about any stored key; the stored hash is then compared in
     * constant time all the same. */
    hex(md, 32, h);
    tstore_key rec;
    unsigned char stored[32];
    int rc = tstore_key_find(t->store, h, &rec);
    if (rc == PEFTD_EINVAL) rc = PEFTD_ENOTFOUND;
    if (rc) return rc;
    if (unhex(rec.sha256, stored, 32) || CRYPTO_memcmp(stored, md, 32)) return PEFTD_ENOTFOUND;
    tstore_tenant tr;
    if ((rc = tenants_get(t, rec.tenant, &tr)) == PEFTD_ENOTFOUND) {
        /* created by another process sharing the store: adopt its record */
        if ((rc = tstore_tenant_get(t->store, rec.tenant, &tr))) return rc;
        pthread_mutex_lock(&t->mu);
        rc = upsert(t, &tr);
        pthread_mutex_unlock(&t->mu);
        if (rc) return rc;
    } else if (rc) {
        return rc;
    }
    out->role = TENANTS_TENANT;
    snprintf(out->tenant, sizeof out->tenant, "%s", rec.tenant);
    out->weight = (float)tr.weight;
    return 0;
}

int tenants_get(tenants *t, const char *id, tstore_tenant *out) {
    pthread_mutex_lock(&t->mu);
    tenant_state *st = find(t, id);
    if (st) *out = st->rec;
    pthread_mutex_unlock(&t->mu);
    return st ? 0 : PEFTD_ENOTFOUND;
}

/* Under mu: tokens (prompt + generated) counted within the window ending at now. */
static uint64_t window_used(const tenant_state *st, int64_t now) {
    uint64_t used = 0;
    for (int i = 0; i < TENANTS_WINDOW_S; i++)
        if (st->bucket_sec[i] > now - TENANTS_WINDOW_S) used += st->bucket_n[i];
    return used;
}

/* Under mu: seconds until the window's total drops below limit (>= 1). */
static int window_wait(const tenant_state *st, int64_t now, uint64_t limit) {
    uint64_t used = window_used(st, now);
    for (int d = 1; d <= TENANTS_WINDOW_S; d++) {
        /* at now + d, the buckets of seconds <= now + d - WINDOW have expired */
        int64_t s = now + d - TENANTS_WINDOW_S;
        for (int i = 0; i < TENANTS_WINDOW_S; i++)
            if (st->bucket_sec[i] == s) used -= st->bucket_n[i] <= used ? st->bucket_n[i] : used;
        if (used < limit) return d;
    }
    return TENANTS_WINDOW_S;
}

/* Under mu: n tokens into the current second's bucket. */
static void window_add(tenant_state *st, int64_t now, uint64_t n) {
    int b = (int)(now % TENANTS_WINDOW_S);
    if (st->bucket_sec[b] != now) {
        st->bucket_sec[b] = now;
        st->bucket_n[b] = 0;
    }
    st->bucket_n[b] += n;
}

int tenants_admit(tenants *t, const char *id, const tenants_cost *cost, tenants_ticket *ticket,
                  int *retry_after_s) {
    *retry_after_s = 1;
    *ticket = (tenants_ticket){.slot = -1};
    int rc = 0;
    int64_t seqs = cost->seqs > 0 ? cost->seqs : 1;
    int64_t reserve = cost->max_new > 0 ? seqs * cost->max_new : 0;
    int64_t now = now_s();
    pthread_mutex_lock(&t->mu);
    tenant_state *st = find(t, id);
    const tstore_tenant *lim = st ? &st->rec : NULL;
    if (!st) {
        rc = PEFTD_ENOTFOUND;
    } else if (lim->max_concurrent > 0 && seqs > lim->max_concurrent) {
        rc = PEFTD_EQUOTA;
        ticket->refused = TENANTS_QUOTA_NEVER_FITS;
        *retry_after_s = TENANTS_WINDOW_S;
    } else if (lim->max_concurrent > 0 && st->inflight + seqs > lim->max_concurrent) {
        rc = PEFTD_EQUOTA; /* sequences end any moment: retry after 1 s */
        ticket->refused = TENANTS_QUOTA_CONCURRENT;
    } else if (lim->tokens_per_min > 0) {
        uint64_t limit = (uint64_t)lim->tokens_per_min, used = window_used(st, now);
        if (used + (uint64_t)st->reserved >= limit) {
            rc = PEFTD_EQUOTA;
            ticket->refused = TENANTS_QUOTA_TOKENS;
            /* the window must drain below what the outstanding reservations leave free;
             * when they alone fill it, a running request has to finish first */
            *retry_after_s = (uint64_t)st->reserved < limit ? window_wait(st, now, limit - (uint64_t)st->reserved) : 1;
        }
    }
    if (rc == 0) {
        st->inflight += seqs;
        st->reserved += reserve;
        if (cost->prompt_tokens > 0) window_add(st, now, (uint64_t)cost->prompt_tokens);
        *ticket = (tenants_ticket){.slot = (int)(st - t->v), .epoch = st->epoch, .seqs = (int)seqs,
                                   .reserved = reserve};
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

/* Under mu: the state a ticket names, also a deleted tenant's (its counts must drain
 * before the slot is reused); NULL when the ticket holds nothing. */
static tenant_state *ticket_state(tenants *t, const tenants_ticket *k) {
    if (k->slot < 0 || k->slot >= t->n || t->v[k->slot].epoch != k->epoch) return NULL;
    return &t->v[k->slot];
}

void tenants_release(tenants *t, tenants_ticket *ticket) {
    if (!t || !ticket || ticket->slot < 0) return;
    pthread_mutex_lock(&t->mu);
    tenant_state *st = ticket_state(t, ticket);
    if (st) {
        st->inflight -= ticket->seqs;
        st->reserved -= ticket->reserved;
        if (st->inflight < 0 || st->reserved < 0) {
            LOGE("tenants: %s: quota counts went negative (%lld sequences, %lld tokens)", st->rec.id,
                 (long long)st->inflight, (long long)st->reserved);
            abort(); /* a refcount below zero is a programmer error (GUIDE §6) */
        }
    }
    *ticket = (tenants_ticket){.slot = -1};
    pthread_mutex_unlock(&t->mu);
}

void tenants_count_tokens(tenants *t, tenants_ticket *ticket, int n) {
    if (n <= 0 || !t || !ticket) return;
    int64_t now = now_s();
    pthread_mutex_lock(&t->mu);
    tenant_state *st = ticket_state(t, ticket);
    if (st) {
        window_add(st, now, (uint64_t)n);
        int64_t take = n < ticket->reserved ? n : ticket->reserved;
        ticket->reserved -= take;
        st->reserved -= take;
    }
    pthread_mutex_unlock(&t->mu);
}

/* ---------------------------------------------------------------- admin operations */

/* After a store change: the record as stored (created filled in) into the cache. */
static int refresh(tenants *t, const char *id) {
    tstore_tenant rec;
    int rc = tstore_tenant_get(t->store, id, &rec);
    if (rc) return rc;
    pthread_mutex_lock(&t->mu);
    rc = upsert(t, &rec);
    pthread_mutex_unlock(&t->mu);
    return rc;
}

int tenants_create(tenants *t, const tstore_tenant *rec) {
    int rc = tstore_tenant_create(t->store, rec);
    if (rc == 0) rc = refresh(t, rec->id);
    if (rc == 0) LOGI("tenants: created %s", rec->id);
    return rc;
}

int tenants_update(tenants *t, const tstore_tenant *rec) {
    int rc = tstore_tenant_update(t->store, rec);
    if (rc == 0) rc = refresh(t, rec->id);
    return rc;
}

int tenants_delete(tenants *t, const char *id, astore_removed *removed) {
    int rc = tstore_tenant_delete(t->store, id, removed);
    if (rc) return rc;
    pthread_mutex_lock(&t->mu);
    tenant_state *st = find(t, id);
    if (st) st->live = false;
    pthread_mutex_unlock(&t->mu);
    LOGI("tenants: deleted %s, its keys and its adapters", id);
    return 0;
}

int tenants_key_create(tenants *t, const char *tenant, char key[TENANTS_KEY_LEN + 1], tstore_key *rec) {
    unsigned char secret[32], kid[8];
    memset(rec, 0, sizeof *rec);
    key[0] = 0;
    if (RAND_bytes(secret, sizeof secret) != 1 || RAND_bytes(kid, sizeof kid) != 1) return PEFTD_EIO;
    memcpy(key, "pk_", 3);
    hex(secret, sizeof secret, key + 3);
    OPENSSL_cleanse(secret, sizeof secret);
    snprintf(rec->id, sizeof rec->id, "key_");
    hex(kid, sizeof kid, rec->id + 4);
    snprintf(rec->tenant, sizeof rec->tenant, "%s", tenant);
    /* "pk_" + 8 hex digits: 32 of the key's 256 bits, enough to tell keys apart */
    snprintf(rec->prefix, sizeof rec->prefix, "%.11s", key);
    rec->created = (int64_t)time(NULL);
    int rc = tenants_sha256_hex(key, rec->sha256);
    if (rc == 0) rc = tstore_key_add(t->store, rec);
    if (rc) {
        OPENSSL_cleanse(key, TENANTS_KEY_LEN + 1);
        return rc;
    }
    LOGI("tenants: %s: new key %s", tenant, rec->id); /* the id only: no part of the secret */
    return 0;
}

int tenants_key_list(tenants *t, const char *tenant, tstore_key **out, int *n) {
    return tstore_key_list(t->store, tenant, out, n);
}

int tenants_key_revoke(tenants *t, const char *tenant, const char *key_id) {
    int rc = tstore_key_revoke(t->store, tenant, key_id);
    if (rc == 0) LOGI("tenants: %s: revoked key %s", tenant, key_id);
    return rc;
}
