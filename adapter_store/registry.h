/* adapter_store/registry.h — served adapters by name, with reference counts.
 *
 * A name maps to one loaded adapter version. A request takes a reference when it is
 * admitted (registry_acquire) and drops it when it finishes (registry_release), so an
 * adapter replaced or removed meanwhile stays alive until its last request is done.
 * Thread-safe (one mutex; every operation is O(log n) or a list walk for listing).
 */
#ifndef PEFTD_REGISTRY_H
#define PEFTD_REGISTRY_H

#include <stddef.h>

#include "adapter_store/adapter.h"

#define REGISTRY_NAME_MAX 64

typedef struct adapter_registry adapter_registry;

int registry_create(adapter_registry **out);
/* Frees the registry and every adapter no request holds any more. NULL is a no-op. */
void registry_free(adapter_registry *r);

/* Names: 1..64 characters from [A-Za-z0-9._-], not starting with '.' or '-'. */
bool registry_name_valid(const char *name);

/* Adds (or replaces) name → a; the registry owns a from now on. A replaced version is
 * freed when its last reference is released. PEFTD_EINVAL for a bad name. */
int registry_put(adapter_registry *r, const char *name, adapter *a);
/* Records that name failed to load (status + message): acquire() finds nothing, and
 * registry_failure() tells callers why, so a request naming it gets the real reason.
 * A later registry_put() of the name clears it. */
int registry_put_failure(adapter_registry *r, const char *name, int status, const char *message);
/* The recorded failure of name: its status (0 when none) and message copied to msg. */
int registry_failure(adapter_registry *r, const char *name, char *msg, size_t msglen);

/* Removes name; PEFTD_ENOTFOUND when absent. */
int registry_remove(adapter_registry *r, const char *name);

/* The current version of name with one reference taken, or NULL. */
adapter *registry_acquire(adapter_registry *r, const char *name);
void registry_release(adapter_registry *r, adapter *a); /* NULL is a no-op */

/* Calls fn for every name in name order (under the registry's lock: fn must not call
 * back into the registry). */
void registry_foreach(adapter_registry *r, void (*fn)(void *ud, const char *name, const adapter *a), void *ud);
int registry_count(adapter_registry *r);

#endif
