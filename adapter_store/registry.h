/* adapter_store/registry.h — served adapters by name: name -> the current version as a
 * refcounted handle.
 *
 * A request takes a reference when it is admitted by the HTTP layer (registry_acquire)
 * and drops it when it finishes (registry_release), so it keeps the version it started
 * with even if a new version is uploaded or the adapter is deleted meanwhile. A handle
 * only describes a version (astore_meta: name, version, sha256, kind, ...); the decoded
 * weights live in the tiers (tiers.h), found by the handle's sha256.
 * Thread-safe (one mutex; lookups are binary searches).
 */
#ifndef PEFTD_REGISTRY_H
#define PEFTD_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>

#include "adapter_store/store.h"

#define REGISTRY_NAME_MAX ASTORE_NAME_MAX

/* One adapter version. Immutable once published; valid while a reference is held. */
typedef struct adapter_handle {
    astore_meta meta;
    int refs;            /* registry lock: 1 while current + 1 per holder */
    bool keep_blob;      /* registry lock: registry_keep_blob() — see registry_on_retired */
} adapter_handle;

typedef struct adapter_registry adapter_registry;

int registry_create(adapter_registry **out);
/* Frees the registry and its handles. NULL is a no-op. */
void registry_free(adapter_registry *r);

/* Adapter names: 1..64 bytes, one or more '/'-separated segments (Hugging Face-style ids
 * "org/name"), each segment 1+ characters from [A-Za-z0-9._-] not starting with '.' or
 * '-' (so no empty segment, no "." or "..", no leading or trailing '/'). */
bool registry_name_valid(const char *name);
/* Tenant ids (and anything else that must stay one segment): one such segment, 1..64. */
bool registry_id_valid(const char *id);
/* Keys: a name (public) or "owner/name" (a tenant's), exactly as astore_key builds them
 * (a name's '/' written ':'). */
bool registry_key_valid(const char *key);

/* Entries are keyed like the store (store.h, owner scoping): below, `name` is such a key —
 * the plain name of a public adapter, "owner/name" of a tenant's.
 * Publishes meta as the current version of astore_key(meta->owner, meta->name) (replacing
 * any previous one, which stays valid for its holders). PEFTD_EINVAL for a bad name. */
int registry_put(adapter_registry *r, const astore_meta *meta);
/* Unpublishes name; PEFTD_ENOTFOUND when absent. */
int registry_remove(adapter_registry *r, const char *name);

/* Records that name failed to load (status + message): acquire() finds nothing, and
 * registry_failure() tells callers why. A later registry_put() of the name clears it. */
int registry_put_failure(adapter_registry *r, const char *name, int status, const char *message);
/* The recorded failure of name: its status (0 when none) and message copied to msg. */
int registry_failure(adapter_registry *r, const char *name, char *msg, size_t msglen);

/* Hot swap without losing admitted requests: before a version leaves the store (replaced
 * or deleted), the adapter service keeps its blob loadable (tiers_retain) and marks its
 * handle with registry_keep_blob(h) (h held by the caller). fn(ud, sha256) then runs once
 * for that handle, on whichever thread drops its last reference (no registry lock held):
 * when its last request has finished, or at once when none held it. Unmark with
 * keep = false if the change did not happen after all. Set fn before the registry is
 * shared. */
void registry_on_retired(adapter_registry *r, void (*fn)(void *ud, const char *sha256), void *ud);
void registry_keep_blob(adapter_registry *r, adapter_handle *h, bool keep);

/* The current version of name with one reference taken, or NULL. */
adapter_handle *registry_acquire(adapter_registry *r, const char *name);
void registry_release(adapter_registry *r, adapter_handle *h); /* NULL is a no-op */

/* Calls fn for every current version in name order, under the registry's lock (fn must
 * not call back into the registry). */
void registry_foreach(adapter_registry *r, void (*fn)(void *ud, const adapter_handle *h), void *ud);
int registry_count(adapter_registry *r);

#endif
