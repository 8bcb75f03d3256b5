/* adapter_store/adapter_shared.h — immutable f32 matrices that several adapters (and several
 * modules of one adapter) read, held ONCE per process instead of once per holder: VeRA's
 * frozen random projection, whose slice vera_A[:, :in] is the same bytes for every module of
 * that input width and for every adapter made with the same PRNG key and shapes
 * (adapter_peft_lyco.c). Internal to adapter_store (adapter_core.c attaches them to an
 * adapter; the VeRA loader and the blob reader create them).
 *
 * Keyed by content, as every cache in peftd: sha256 of the f32 bytes plus the shape; a hit
 * is also compared byte for byte, so two different matrices can never be confused. An entry
 * keeps its host copy while any holder references it, and one device copy per non-host
 * backend it was installed on (uploaded by the first install on that backend, freed by the
 * last uninstall there).
 *
 * Why not inside the adapter's block: an adapter is one immutable host block that
 * adapter_install uploads in one piece (or places into a slot of the device slot pool) and
 * frees in one piece. A shared matrix has its own lifetime (the longest of its holders), so
 * it lives beside the block: the adapter keeps a list of (entry, kmat) references that
 * install points at the entry's copy on that backend and adapter_free releases. On a device
 * the shared copies are ordinary backend allocations, outside the slot pool.
 *
 * Threads: get / put may run on any thread (one process-wide mutex). install / uninstall
 * for a non-host backend run on that backend's owner thread, as adapter_install does.
 * Refcounts abort below zero.
 */
#ifndef PEFTD_ADAPTER_SHARED_H
#define PEFTD_ADAPTER_SHARED_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

typedef struct adapter_shared adapter_shared;

/* The entry holding f32 [rows, cols] `data` (copied when new), with one more reference.
 * 0, or PEFTD_ENOMEM / PEFTD_EINVAL (bad shape). @note the caller owns the reference:
 * adapter__shared_put. */
int adapter__shared_get(const float *data, int64_t rows, int64_t cols, adapter_shared **out);
/* One more reference to s (which the caller holds one of). */
void adapter__shared_ref(adapter_shared *s);
/* Drops one reference; the last one frees the host copy (it must have no device copy left). */
void adapter__shared_put(adapter_shared *s);

/* The entry's f32 data in host memory, valid while a reference is held; its shape and bytes. */
const float *adapter__shared_host(const adapter_shared *s);
int64_t adapter__shared_rows(const adapter_shared *s);
int64_t adapter__shared_cols(const adapter_shared *s);
size_t adapter__shared_bytes(const adapter_shared *s);

/* The entry's data as kb's ops read it: the host copy on is_host backends (nothing counted);
 * otherwise its copy in kb's memory, uploaded on first use and counted. 0 or a negative
 * status with the reason in err. Thread: kb's owner. */
int adapter__shared_install(adapter_shared *s, kbackend *kb, void **data, char *err, size_t errlen);
/* Undoes one adapter__shared_install on a non-host kb (the last one frees that copy). */
void adapter__shared_uninstall(adapter_shared *s, kbackend *kb);

/* Live entries and the host bytes they hold (tests and reporting). */
void adapter__shared_stats(int *entries, size_t *bytes);

#endif
