/* server/model/model_quant_cache.h — the at-load conversion's cache (config "weights_cache",
 * default on: <store.dir>/weights-cache/): the bytes model_quantize_projections produced for a
 * model directory and a target dtype, written once, read back at the next start-up instead of
 * quantizing again (a 1B model's q4_k conversion: ~10 s on 2 cores; reading it back: the file's
 * read plus one sha256 pass).
 *
 * One file per (model directory, dtype): <dir>/<sha256(realpath, dtype) hex>.pqc. Its header
 * holds
 *   - a key: sha256 over this cache's format version, the converters' fingerprint (the bytes
 *     they write for a fixed input, model_quant.c: a peftd whose quantizer writes other bytes
 *     is a miss), the dtype, the model directory's real path, and name, size, mtime and inode
 *     of each of its weight and config files (*.safetensors, *.gguf, *.json): a changed or
 *     replaced file is a miss;
 *   - the conversion plan, job by job (dtype, rows, cols, payload offset and bytes), compared
 *     with the plan of this start-up;
 *   - the payload's sha256, checked while it is read: a truncated or damaged file is a miss.
 * A miss of any kind (logged with its reason) converts again and rewrites the file (a temporary
 * file renamed over it, so a crash never leaves a half-written cache); a cache that cannot be
 * written is a logged warning, never a failed start-up. The model directory's real path is kept
 * after the plan, and a file's mtime says when it was last written or read back: mqc_prune
 * removes what no start-up can use again and the least recently used beyond a size budget
 * (config "weights_cache_max_mb"), so moved or deleted models and dtypes no longer served do
 * not fill the disk.
 * Start-up only (the loading thread; no other thread touches the files). */
#ifndef PEFTD_MODEL_QUANT_CACHE_H
#define PEFTD_MODEL_QUANT_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"
#include "server/model/model.h"

/* One converted weight as the plan places it in the payload. */
typedef struct {
    kdtype dt;
    int64_t rows, cols;
    uint64_t offset, bytes;
} mqc_job;

/* Fills mem (payload_bytes) from the cache when it holds this model's conversion to dt by
 * converters of fingerprint fp (fp_len bytes) with exactly these jobs. Returns 1 on a hit, 0 on
 * a miss (reason logged unless the file is simply absent). Never fails the load: a read error
 * is a miss. */
int mqc_read(const char *cache_dir, const model *m, kdtype dt, const void *fp, size_t fp_len, const mqc_job *jobs,
             int n_jobs, void *mem, size_t payload_bytes);

/* Writes mem as this model's conversion to dt (creating cache_dir, mode 0700). 0, or a negative
 * status with a warning logged (the caller goes on: the cache is an optimisation). */
int mqc_write(const char *cache_dir, const model *m, kdtype dt, const void *fp, size_t fp_len, const mqc_job *jobs,
              int n_jobs, const void *mem, size_t payload_bytes);

/* Removes from cache_dir (start-up, after the model's load; its file is then the most recently
 * used): files of an older cache format or not cache files at all (named *.pqc), files whose
 * model directory no longer exists (moved or deleted: a new path is a new key), temporaries left
 * by a writer that was killed (*.pqc.tmp.<pid> of a process that is gone), then the least recently
 * used files until the rest fit in max_bytes (0: no limit) — never the most recently used one,
 * whatever its size. Other files are left alone. Each removal is logged with its reason. Returns
 * the number of files removed, or a negative status (the directory unreadable; absent: 0). */
int mqc_prune(const char *cache_dir, uint64_t max_bytes);

#endif
