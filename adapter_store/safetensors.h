/* adapter_store/safetensors.h — a reader for the safetensors format that treats every file
 * as hostile.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON header, then the data
 * area. The header maps tensor names to {dtype, shape, data_offsets: [begin, end]} (offsets
 * relative to the data area) and may hold a "__metadata__" object of string → string.
 *
 * What is checked before a file is accepted (anything else → a negative status and a
 * message in err naming the file and the tensor/field, never a crash or an out-of-bounds
 * read):
 *   - N ≤ ST_MAX_HEADER and N ≤ file size − 8; at most ST_MAX_NODES JSON values (counted
 *     before parsing); the header is a JSON object (cJSON), padded
 *     at most with trailing whitespace; every number in it is a non-negative integer;
 *   - names are non-empty, at most ST_MAX_NAME bytes, unique;
 *   - dtype is a known string (unknown → PEFTD_EUNSUPPORTED), shape has ≤ ST_MAX_DIMS
 *     non-negative integer dims whose product (and product × element size) does not
 *     overflow;
 *   - 0 ≤ begin ≤ end ≤ size of the data area, end − begin == numel × element size, and no
 *     two tensors share a byte.
 * Gaps between tensors and trailing bytes are tolerated (they are harmless).
 *
 * This module knows nothing about models or adapters; it only maps F32/F16/BF16 onto the
 * kernels' kdtype so callers can build kmat views.
 */
#ifndef PEFTD_SAFETENSORS_H
#define PEFTD_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

/* Header bounds (issue 9 #6: a 60 MB header of shape arrays cost 2.46 GB of RSS and 18.7 s).
 * The largest real adapter header, a rank-64 all-linear LoRA of a 70B Llama (80 layers × 7
 * modules × 2 tensors = 1120 tensors at ~130 bytes each), is ~150 kB; a base model shard of
 * a dense Llama-family model holds ≤ ~1200 tensors (≤ ~200 kB). 8 MB is a > 40x margin.
 * ST_MAX_NODES bounds the JSON values cJSON would allocate (~64 bytes each): a tensor entry
 * is ≤ 14 values (object, dtype, shape + ≤ 8 dims, data_offsets + 2), so 2^18 values hold
 * ~18,000 tensors (16x the largest real adapter) in ≤ ~17 MB of tree. Checked by a scan of
 * the text before cJSON allocates anything. */
#define ST_MAX_HEADER ((uint64_t)8 << 20)
#define ST_MAX_NODES ((size_t)1 << 18)
/* Longest tensor name accepted; real names are < 200 bytes. */
#define ST_MAX_NAME 1024
/* Most dims a tensor may have (real weights have ≤ 4). */
#define ST_MAX_DIMS 8

typedef enum {
    ST_BOOL = 0,
    ST_U8,
    ST_I8,
    ST_F8_E4M3,
    ST_F8_E5M2,
    ST_F8_E8M0,
    ST_I16,
    ST_U16,
    ST_F16,
    ST_BF16,
    ST_I32,
    ST_U32,
    ST_F32,
    ST_I64,
    ST_U64,
    ST_F64,
    ST_C64,
    ST_DTYPE_COUNT
} st_dtype;

/* One tensor of a parsed file. All pointers stay valid until st_close(). */
typedef struct {
    const char *name;         /* NUL-terminated, owned by the st_file */
    st_dtype dtype;
    int ndim;                 /* 0 (scalar) .. ST_MAX_DIMS */
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;            /* product of shape (1 for a scalar) */
    uint64_t offset;          /* begin of the bytes, relative to the data area */
    size_t nbytes;            /* numel × st_dtype_size(dtype) */
    const void *data;         /* first byte; NOT necessarily aligned to the element size */
} st_tensor;

typedef struct st_file st_file;

/* Memory-maps path (read-only, MAP_PRIVATE) and parses it.
 * @note caller owns *out: st_close(). Tensor data points into the mapping; the file must
 *       not be truncated while it is open (the kernel would raise SIGBUS on access).
 * Returns 0, PEFTD_EFORMAT / PEFTD_EUNSUPPORTED for a bad file, PEFTD_EIO or -errno when
 * the file cannot be opened or mapped, PEFTD_ENOMEM. */
int st_open(const char *path, st_file **out, char *err, size_t errlen);
/* st_open, or with read_into_memory the file read once into private huge-page-advised memory
 * instead of mapped (lib/file_map.h: FILE_MAP_READ; --no-mmap). */
int st_open_ex(const char *path, bool read_into_memory, st_file **out, char *err, size_t errlen);

/* Parses a safetensors image already in memory (uploads, tests, fuzzing).
 * @note buf is NOT copied: it must stay valid and unchanged until st_close(*out).
 *       label (may be NULL) names the data in error messages. */
int st_parse(const void *buf, size_t len, const char *label, st_file **out, char *err,
             size_t errlen);

/* st_close(NULL) is a no-op. Invalidates every pointer obtained from f. */
void st_close(st_file *f);

/* Tensor bytes [p, p + n) of a file st_open mapped or read will not be read again (a converted
 * or reordered copy stands in for them): their whole pages are given back (lib/file_map.h
 * file_map_drop); ranges outside the file's bytes, and images from st_parse, are ignored.
 * Returns the bytes given back. Not while other threads read those bytes. */
size_t st_drop_bytes(st_file *f, const void *p, size_t n);

/* Tensors in the order the header lists them. */
size_t st_count(const st_file *f);
const st_tensor *st_get(const st_file *f, size_t i); /* NULL when i >= st_count(f) */
const st_tensor *st_find(const st_file *f, const char *name); /* NULL when absent */
/* Index of t in f (for callers that keep per-tensor flags); t must come from f. */
size_t st_index(const st_file *f, const st_tensor *t);

/* "__metadata__" entries (string → string), in header order. */
size_t st_metadata_count(const st_file *f);
int st_metadata_get(const st_file *f, size_t i, const char **key, const char **value);
const char *st_metadata_find(const st_file *f, const char *key); /* NULL when absent */

/* The label given to st_parse or the path given to st_open. */
const char *st_label(const st_file *f);

/* An upper bound on the number of values cJSON would allocate for the JSON text (every
 * value but the first follows a ',' or opens a container), counted without parsing; used
 * to refuse hostile headers/configs before allocating. O(len), never reads past len. */
size_t st_json_value_bound(const char *text, size_t len);

/* Bytes per element, and the header's spelling ("F32", "BF16", ...). */
size_t st_dtype_size(st_dtype t);
const char *st_dtype_name(st_dtype t);
/* F32/F16/BF16 → *out and true; every other dtype → false. */
bool st_dtype_to_kdtype(st_dtype t, kdtype *out);

#endif
