/* server/tenants/tenants.h — the multi-tenant policy: who a request is (API key -> tenant
 * or admin) and what it may still do (per-tenant quotas), over tenant_store.h's records.
 *
 * Roles: with auth off every request is ANON and everything is public, as in a
 * single-user run. With auth on, a request carries `Authorization: Bearer KEY`: the admin
 * key (configured only as a sha256, or read from an environment variable and hashed at
 * start-up) makes it ADMIN; a tenant's key makes it TENANT. Keys are compared by their
 * sha256 with CRYPTO_memcmp (constant time), and never logged.
 *
 * Quotas, per tenant (limits from its record; 0 = unlimited):
 *   - in-flight completion requests: tenants_admit refuses past max_concurrent (429);
 *   - generated tokens per minute: a 60 s sliding window of one-second buckets, fed as
 *     tokens are generated (tenants_count_tokens); admission is refused while the window
 *     is full, with the seconds until enough of it expires (429 + Retry-After). A request
 *     admitted just under the limit may finish over it: its tokens still count, delaying
 *     the next admission — the limit is enforced over time, not per token;
 *   - stored adapter bytes: enforced by astore_put_scoped (507).
 * Limits live in memory (refreshed by every admin change and by tenants_reload, which the
 * daemon calls on SIGHUP); counters survive a reload.
 *
 * Thread-safety: every function may be called from any thread (one mutex; LMDB reads
 * outside it). The engine thread calls tenants_count_tokens.
 */
#ifndef PEFTD_TENANTS_H
#define PEFTD_TENANTS_H

#include <stdbool.h>

#include "adapter_store/store.h"
#include "adapter_store/tenant_store.h"

/* "pk_" + 64 hex digits: 256 random bits. */
#define TENANTS_KEY_LEN 67

typedef struct {
    bool enabled;             /* false: no authentication, everything public */
    char admin_sha256[65];    /* sha256 hex of the admin key; "" = no admin */
} tenants_config;

typedef enum {
    TENANTS_ANON = 0,         /* auth off */
    TENANTS_ADMIN,
    TENANTS_TENANT,
} tenants_role;

typedef struct {
    tenants_role role;
    char tenant[TSTORE_ID_MAX + 1]; /* TENANT: its id; otherwise "" (the public owner) */
    float weight;                   /* fair-scheduling weight (1 unless a tenant's record says) */
} tenants_principal;

typedef struct tenants tenants;

/* s must outlive the result. Loads every tenant's limits. @note caller owns *out:
 * tenants_close(). */
int tenants_open(astore *s, const tenants_config *cfg, tenants **out, char *err, size_t errlen);
void tenants_close(tenants *t); /* NULL is a no-op */
bool tenants_enabled(const tenants *t); /* NULL: false */
/* Re-reads every tenant's limits and weight from the store (SIGHUP). */
int tenants_reload(tenants *t);

/* sha256 hex of s (for the admin key and API keys). */
int tenants_sha256_hex(const char *s, char out[65]);

/* Who presents key. PEFTD_ENOTFOUND: not the admin key nor a live tenant key (401). */
int tenants_authenticate(tenants *t, const char *key, tenants_principal *out);

/* Admission of one completion request of tenant id. 0: admitted (pair with
 * tenants_finish); PEFTD_EBUSY: max_concurrent in flight; PEFTD_ERANGE: the token
 * window is full. *retry_after_s: seconds to wait (>= 1) when refused. */
int tenants_admit(tenants *t, const char *id, int *retry_after_s);
void tenants_finish(tenants *t, const char *id);
/* n more tokens generated for id (engine thread, at each delta). */
void tenants_count_tokens(tenants *t, const char *id, int n);
/* The cached record of id; PEFTD_ENOTFOUND when unknown. */
int tenants_get(tenants *t, const char *id, tstore_tenant *out);

/* Admin operations: the store's record, then the cache. Status as tenant_store.h. */
int tenants_create(tenants *t, const tstore_tenant *rec);
int tenants_update(tenants *t, const tstore_tenant *rec);
/* With its keys and adapters, atomically (tstore_tenant_delete; *removed optional). */
int tenants_delete(tenants *t, const char *id, astore_removed *removed);
/* A new random key for tenant: key (shown once, never stored) and its record. */
int tenants_key_create(tenants *t, const char *tenant, char key[TENANTS_KEY_LEN + 1], tstore_key *rec);
int tenants_key_list(tenants *t, const char *tenant, tstore_key **out, int *n); /* caller frees *out */
int tenants_key_revoke(tenants *t, const char *tenant, const char *key_id);

#endif
