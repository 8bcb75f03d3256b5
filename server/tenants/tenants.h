/* server/tenants/tenants.h — the multi-tenant policy: who a request is (API key -> tenant
 * or admin) and what it may still do (per-tenant quotas), over tenant_store.h's records.
 *
 * Roles: with auth off every request is ANON and everything is public, as in a
 * single-user run. With auth on, a request carries `Authorization: Bearer KEY`: the admin
 * key (configured only as a sha256, or read from an environment variable and hashed at
 * start-up) makes it ADMIN; a tenant's key makes it TENANT. Keys are compared by their
 * sha256 with CRYPTO_memcmp (constant time), and never logged.
 *
 * Quotas, per tenant (limits from its record; 0 = unlimited), held by a ticket from
 * tenants_admit to tenants_release:
 *   - max_concurrent counts *sequences* (prompts × n of each request in flight), not HTTP
 *     requests: a request is admitted only if its sequences fit beside those in flight;
 *   - tokens_per_min counts prompt and generated tokens (as OpenAI's TPM does) in a 60 s
 *     sliding window of one-second buckets. Admission charges the prompt tokens at once
 *     and *reserves* the request's worst case for the rest (sequences × max_tokens); the
 *     reservation turns into usage as tokens are generated (tenants_count_tokens) and
 *     what is left of it is given back at release. A request is admitted while
 *     used + reserved < limit, so the tokens served in any 60 s window stay within the
 *     limit plus the largest single request's reservation;
 *   - refusals are 429 with the seconds to wait (Retry-After);
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
#include <stdint.h>

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

/* Which quota refused an admission (tenants_admit's PEFTD_EQUOTA). */
typedef enum {
    TENANTS_QUOTA_NONE = 0,
    TENANTS_QUOTA_CONCURRENT,   /* its sequences do not fit beside those in flight */
    TENANTS_QUOTA_NEVER_FITS,   /* it alone has more sequences than max_concurrent */
    TENANTS_QUOTA_TOKENS,       /* the token window plus reservations reach tokens_per_min */
} tenants_quota;

/* A request's hold on its tenant's quotas. Filled by tenants_admit; the fields are the
 * tenants module's (read them, never write them). @note not thread-safe by itself: the
 * tenants mutex guards it inside tenants_count_tokens / tenants_release. */
typedef struct {
    int slot;                 /* the tenant's state; -1: holds nothing */
    uint64_t epoch;           /* that state's incarnation (a deleted tenant's slot is reused) */
    int seqs;                 /* sequences counted against max_concurrent */
    int64_t reserved;         /* tokens still reserved against tokens_per_min */
    tenants_quota refused;    /* after a PEFTD_EQUOTA refusal: which quota */
} tenants_ticket;

/* What a request needs: seqs sequences (prompts × n), prompt_tokens over all of them
 * (each sequence's prompt counted once per sequence), at most max_new generated tokens
 * per sequence. */
typedef struct {
    int seqs;
    int64_t prompt_tokens;
    int64_t max_new;
} tenants_cost;

/* Admission of one completion request of tenant id. 0: admitted, *ticket held (pair with
 * tenants_release). Refusals (nothing held, *retry_after_s >= 1 seconds to wait):
 * PEFTD_EQUOTA: a quota refuses it, ticket->refused says which (tenants_quota);
 * PEFTD_ENOTFOUND: unknown tenant. */
int tenants_admit(tenants *t, const char *id, const tenants_cost *cost, tenants_ticket *ticket,
                  int *retry_after_s);
/* Gives back what ticket holds (the unused reservation, its sequences); then it holds
 * nothing. A ticket that holds nothing is a no-op. */
void tenants_release(tenants *t, tenants_ticket *ticket);
/* n more tokens generated under ticket (engine thread, at each delta): counted in the
 * window, taken out of the ticket's reservation. */
void tenants_count_tokens(tenants *t, tenants_ticket *ticket, int n);
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
