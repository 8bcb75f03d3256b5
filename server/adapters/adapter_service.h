/* server/adapters/adapter_service.h — adapter lifecycle operations behind the HTTP API and
 * start-up: import (validate against the base -> serialise -> one LMDB transaction ->
 * publish in the registry -> warm the host tier), delete, and publishing the store's
 * contents at start-up. Thread-safe: HTTP threads call it concurrently.
 */
#ifndef PEFTD_ADAPTER_SERVICE_H
#define PEFTD_ADAPTER_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapter_store/registry.h"
#include "adapter_store/store.h"
#include "adapter_store/tiers.h"
#include "server/model/model.h"

typedef struct adapter_service adapter_service;

/* m, store and reg must outlive the service. tiers may be NULL (offline use); it is only
 * used to warm/drop host-tier copies. @note caller owns *out: adapter_service_free(). */
int adapter_service_create(const model *m, astore *store, adapter_registry *reg, tiers *t, const char *tmp_root,
                           adapter_service **out, char *err, size_t errlen);
void adapter_service_free(adapter_service *s);

/* A private, empty temporary directory under tmp_root for staging one upload's files.
 * @note the caller removes it with adapter_service_rmdir() when done. */
int adapter_service_mkdtemp(adapter_service *s, char *path, size_t len);
void adapter_service_rmdir(const char *path); /* removes the files in it and the directory */
/* adapter_service_create removes every tmp_root/upload-* left by a dead process. */

/* Staging accounting: n more bytes of an upload by owner are about to be written to its
 * staging file. With quota > 0, -EDQUOT when stored (the owner's stored bytes, minus the
 * version being replaced) + everything owner stages right now + n would exceed it plus a
 * 64 KiB allowance (the safetensors headers that the stored form drops); else counted
 * until released. owner "" or quota 0: not counted, 0. */
int adapter_service_stage_add(adapter_service *s, const char *owner, uint64_t quota, uint64_t stored, uint64_t n);
void adapter_service_stage_release(adapter_service *s, const char *owner, uint64_t n);

/* Validates the save_pretrained files in dir against the base and stores them as the new
 * version of name owned by owner ("" = public; a tenant's adapter is stored and published
 * under "owner/name", store.h), then publishes that version. quota_bytes > 0: the owner's
 * storage limit (astore_put_scoped). On failure nothing changes; the status tells the
 * HTTP status: PEFTD_EFORMAT malformed (400), PEFTD_EUNSUPPORTED / PEFTD_EINVAL not
 * servable on this base (422), PEFTD_ENOSPC store full / -EDQUOT over quota (507); err
 * names the reason (file names, never the server's paths); PEFTD_EEXIST: name is the base
 * model's id; -ENOENT: the owner's tenant was deleted before the adapter could be
 * stored (nothing stored). *out (optional) receives the stored meta.
 * Any thread (import pool): host memory only, no backend call (kernels.h). */
int adapter_service_import_dir(adapter_service *s, const char *name, const char *owner, uint64_t quota_bytes,
                               const char *dir, astore_meta *out, char *err, size_t errlen);

/* true when name is the base model's id, which no adapter may take (import refuses it
 * with PEFTD_EEXIST, start-up skips a stored one). */
bool adapter_service_name_is_base(const adapter_service *s, const char *name);

/* Removes owner's name from the store and the registry (requests holding it finish with
 * it). PEFTD_ENOTFOUND when owner has no adapter by that name. */
int adapter_service_delete(adapter_service *s, const char *owner, const char *name);

struct tenants;
/* Deletes tenant id with its keys and every adapter it owns in one store transaction
 * (tenants_delete), then drops those adapters from the registry and the host tier. An
 * upload of that tenant finishing later fails (-ENOENT from the import).
 * PEFTD_ENOTFOUND when there is no such tenant. */
int adapter_service_delete_tenant(adapter_service *s, struct tenants *ts, const char *id);

/* Follower side (server/replication/): the primary's change seq, applied through the same
 * store-then-registry path as an import, under the same lock, so a hot swap behaves
 * identically (requests holding the old version finish on it). meta is the primary's
 * record (version and times kept), blob its verified payload. A version for another base
 * is stored (the catalogue stays whole) but not served, as at start-up. 1: seq was
 * applied before (nothing changed); seq 0: a resync's write (store_changes.h). */
int adapter_service_apply_put(adapter_service *s, uint64_t seq, const astore_meta *meta, const void *blob,
                              size_t len);
int adapter_service_apply_delete(adapter_service *s, uint64_t seq, const char *key);
/* A tenant / key change (astore_apply_tenant); a tenant's deletion also drops its
 * adapters from the registry and the host tier. ts (may be NULL) re-reads its limits. */
int adapter_service_apply_tenant(adapter_service *s, struct tenants *ts, uint64_t seq, const char *op,
                                 const char *key, const char *record, const char *key_id);

/* Start-up: publishes every stored adapter validated against this base (same
 * fingerprint); the others are logged and skipped. */
int adapter_service_publish_all(adapter_service *s, int *n_published, int *n_skipped);

/* The base's fingerprint (sha256 hex of its architecture and shapes). */
const char *adapter_service_base_fingerprint(const adapter_service *s);

#endif
