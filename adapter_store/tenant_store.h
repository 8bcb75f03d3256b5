/* adapter_store/tenant_store.h — tenants and their API keys, stored in the adapter store's
 * LMDB environment (store.h) so that one directory holds a deployment's whole state and
 * a tenant's records and adapters share its backups.
 *
 * Schema (two named databases; values are compact JSON with a "schema" version, decoded
 * as hostile input like store.c's meta records):
 *   "tenants"  key  <tenant id>          value  {"schema":1,"id","weight","max_concurrent",
 *                                                "tokens_per_min","max_storage_bytes","created"}
 *   "keys"     key  <sha256 hex of key>  value  {"schema":1,"id","tenant","prefix","sha256","created"}
 * An API key is never stored: only the sha256 of it. Keys are 256-bit random secrets
 * (server/tenants/tenants.c), so a plain sha256 is enough — a slow password hash only
 * matters for low-entropy secrets. "prefix" is the key's first characters (shown in
 * listings so an operator can tell keys apart; 32 bits of 256, useless for guessing).
 * Limits of 0 mean "unlimited". A tenant's deletion removes its keys and its adapters in
 * the same transaction, so neither can outlive its tenant.
 *
 * Thread-safety: as store.h (any thread; short read transactions, values copied out).
 */
#ifndef PEFTD_TENANT_STORE_H
#define PEFTD_TENANT_STORE_H

#include <stdint.h>

#include "adapter_store/store.h"

#define TSTORE_ID_MAX ASTORE_NAME_MAX

typedef struct {
    char id[TSTORE_ID_MAX + 1];    /* [A-Za-z0-9._-], 1..64, not starting with '.' or '-' */
    double weight;                 /* fair-scheduling weight, > 0 */
    int64_t max_concurrent;        /* sequences in flight (prompts x n per request); 0 = unlimited */
    int64_t tokens_per_min;        /* prompt + generated tokens per 60 s; 0 = unlimited */
    int64_t max_storage_bytes;     /* sum of the tenant's adapter blob bytes; 0 = unlimited */
    int64_t created;               /* unix seconds */
} tstore_tenant;

typedef struct {
    char id[32];                   /* "key_" + 16 hex digits: how admins name a key */
    char tenant[TSTORE_ID_MAX + 1];
    char prefix[16];               /* the key's first characters */
    char sha256[65];               /* sha256 hex of the key */
    int64_t created;
} tstore_key;

/* Tenant ids: one segment of adapter names' rules, never '/' (registry_id_valid). */
bool tstore_id_valid(const char *id);

/* PEFTD_EEXIST when the id is taken; PEFTD_EINVAL for an invalid record. */
int tstore_tenant_create(astore *s, const tstore_tenant *t);
/* Replaces an existing tenant's record (created is kept); PEFTD_ENOTFOUND when absent. */
int tstore_tenant_update(astore *s, const tstore_tenant *t);
int tstore_tenant_get(astore *s, const char *id, tstore_tenant *out);
/* Every tenant in id order. @note caller frees *out. */
int tstore_tenant_list(astore *s, tstore_tenant **out, int *n);
/* Removes the tenant, all its keys and all its adapters (the meta records under
 * "<id>/", with their blob references) in one transaction, so the id's namespace is empty
 * for a tenant re-created under it; an upload racing the deletion fails
 * (astore_put_tenant). *removed (optional) reports the adapters' keys and dropped blob
 * hashes for the registry and caches (@note caller frees it: astore_removed_free).
 * PEFTD_ENOTFOUND when absent. */
int tstore_tenant_delete(astore *s, const char *id, astore_removed *removed);

/* Adds a key record (k->tenant must exist: PEFTD_ENOTFOUND otherwise). */
int tstore_key_add(astore *s, const tstore_key *k);
/* The key record whose sha256 hex is sha; PEFTD_ENOTFOUND when none. */
int tstore_key_find(astore *s, const char *sha, tstore_key *out);
/* The keys of tenant (every key when tenant is NULL), in hash order. @note caller frees *out. */
int tstore_key_list(astore *s, const char *tenant, tstore_key **out, int *n);
/* Deletes tenant's key named key_id; PEFTD_ENOTFOUND when it has none by that id. */
int tstore_key_revoke(astore *s, const char *tenant, const char *key_id);

#endif
