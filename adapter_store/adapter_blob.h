/* adapter_store/adapter_blob.h — one adapter version as a single self-contained blob, the
 * form the LMDB store keeps ("version -> tensor blobs in the internal layout").
 *
 * The blob is a safetensors file: every tensor of the loaded adapter under an internal
 * name (e.g. "lora.3.q_proj.a", "lora.3.q_proj.dora", "ia3.0.down_proj", "prompt",
 * "prefix.2.k", "bn_attn.1.down", "lm_head"), in its loaded dtype, and the scalar fields
 * (kind, per-module rank and scale, n_virtual, IA3 sides, bottleneck flags/activation/
 * scaling, sha256, source, n_params, bytes) as JSON in __metadata__["peftd"], with a format
 * version. Deserialising treats the blob as hostile (it comes from disk) and checks every
 * shape against the base, so a blob written for another base is refused.
 * Everything derived at import (DoRA factors and row statistics, rsLoRA scales, prefix K/V
 * split) is stored as derived: loading a format-2 blob never needs the base weights.
 * Format history: 1 had no "lora.<l>.<m>.dora_stats"; such blobs still load, their DoRA
 * statistics recomputed from the base's host weights (adapter_base.layer_w).
 */
#ifndef PEFTD_ADAPTER_BLOB_H
#define PEFTD_ADAPTER_BLOB_H

#include <stddef.h>

#include "adapter_store/adapter.h"

#define ADAPTER_BLOB_FORMAT 2
#define ADAPTER_BLOB_FORMAT_MIN 1 /* oldest format still read */

/* Serialises an adapter whose tensors are in host memory (adapter_on_host: imported, or
 * installed on an is_host backend; PEFTD_EINVAL otherwise). Any thread, no backend call.
 * @note caller frees *blob with free(). */
int adapter_blob_write(const adapter *a, void **blob, size_t *len);

/* Same, with the base the adapter was loaded against (added: IA3 vectors are bare pointers
 * whose lengths are base dims, so adapter_blob_write() alone returns PEFTD_EINVAL for IA3,
 * and so are AdapterHub prefix tables, computed from a saved MLP whose size says nothing of
 * the KV width; every other kind's shapes follow from the adapter's own tensors). Prefer this one.
 * base may be NULL (= adapter_blob_write). @note caller frees *blob with free(). */
int adapter_blob_write_base(const adapter *a, const adapter_base *base, void **blob, size_t *len);

/* Rebuilds an adapter from a blob in host memory (one block; any thread, no backend call:
 * adapter_install() puts it on a backend). base is checked for compatibility (layers,
 * dims, vocab). @note caller owns *out: adapter_free(). */
int adapter_blob_read(const void *blob, size_t len, const adapter_base *base, adapter **out, char *err,
                      size_t errlen);

#endif
