/* server/model/gguf.h — a reader for GGUF files (llama.cpp's model format) that treats every
 * file as hostile.
 *
 * Layout (all little-endian): magic "GGUF", u32 version (2 or 3), u64 tensor count, u64 KV
 * count; the KV pairs (key: u64 length + bytes; u32 value type; value); the tensor infos
 * (name: u64 length + bytes; u32 n_dims; u64 ne[n_dims], ne[0] the fastest-varying row
 * length; u32 ggml type; u64 offset relative to the data section); zero padding up to
 * general.alignment (u32, default 32); the data section. Strings are length-prefixed, never
 * NUL-terminated. Arrays are u32 element type + u64 count + elements (arrays may nest).
 *
 * What is checked before a file is accepted (anything else → a negative PEFTD_E* status and
 * one message in err naming the file and the key/tensor/byte offset; never a crash or an
 * out-of-bounds read):
 *   - magic, version 2/3 (v1 and big-endian files refused by name), counts bounded by what
 *     the file could hold (every KV ≥ 14 bytes, every tensor info ≥ 25 bytes) before
 *     anything is allocated;
 *   - every read inside the buffer (overflow-safe: lengths and counts are compared with the
 *     bytes left, never added to a pointer first); keys and names non-empty, ≤ GGUF_MAX_KEY /
 *     GGUF_MAX_NAME bytes, without control bytes (so every message is one line), unique; value types known; arrays nested at
 *     most GGUF_MAX_DEPTH deep; string arrays ≤ GGUF_MAX_STR_ARRAY elements; bool bytes 0/1;
 *   - general.alignment, when present, is a u32 power of two ≤ GGUF_MAX_ALIGN;
 *   - tensors: 0 ≤ n_dims ≤ GGUF_MAX_DIMS, every ne > 0, the element count ≤ GGUF_MAX_NUMEL
 *     (no overflow), a known ggml type (unknown ids → PEFTD_EFORMAT), ne[0] a multiple of the
 *     type's block size, offset a multiple of the alignment, [offset, offset + bytes) inside
 *     the data section, and no two tensors sharing a byte.
 * Known ggml types that peftd cannot compute with (Q4_1, Q5_0, IQ*, ...) are accepted by the
 * reader (their sizes are known, so the file is fully validated); gguf_type_supported() says
 * which ones the rest of peftd handles, and a user of a tensor must refuse the others.
 *
 * Lifetime and threads: a gguf_file is immutable after gguf_open/gguf_parse returns; every
 * pointer obtained from it (keys, strings, arrays, tensor views and data) stays valid until
 * gguf_close(). Any number of threads may read one gguf_file concurrently; gguf_close must
 * not race with any other use. The mapped file must not be truncated while open (the kernel
 * would raise SIGBUS on access).
 */
#ifndef PEFTD_GGUF_H
#define PEFTD_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/status.h"

#define GGUF_MAX_DIMS 4
/* Longest key / tensor name accepted (ggml's own tensor names are ≤ 63 bytes). */
#define GGUF_MAX_KEY 1024
#define GGUF_MAX_NAME 1024
/* Array nesting depth (real files nest at most 1: arrays of strings/numbers). */
#define GGUF_MAX_DEPTH 4
/* Strings in one array (vocabularies are ≤ 262,144): bounds the index built per array. */
#define GGUF_MAX_STR_ARRAY ((uint64_t)1 << 24)
#define GGUF_MAX_ALIGN ((uint32_t)1 << 16)
#define GGUF_DEFAULT_ALIGN 32u
/* Elements in one tensor (2^48: a 400B-parameter model's largest tensor is < 2^32). */
#define GGUF_MAX_NUMEL ((int64_t)1 << 48)

/* Metadata value types (the on-disk ids). */
typedef enum {
    GGUF_VT_U8 = 0,
    GGUF_VT_I8 = 1,
    GGUF_VT_U16 = 2,
    GGUF_VT_I16 = 3,
    GGUF_VT_U32 = 4,
    GGUF_VT_I32 = 5,
    GGUF_VT_F32 = 6,
    GGUF_VT_BOOL = 7,
    GGUF_VT_STR = 8,
    GGUF_VT_ARR = 9,
    GGUF_VT_U64 = 10,
    GGUF_VT_I64 = 11,
    GGUF_VT_F64 = 12,
    GGUF_VT_COUNT
} gguf_vtype;

/* ggml tensor types (the on-disk ids; gaps are ids ggml retired). */
typedef enum {
    GGUF_T_F32 = 0,
    GGUF_T_F16 = 1,
    GGUF_T_Q4_0 = 2,
    GGUF_T_Q4_1 = 3,
    GGUF_T_Q5_0 = 6,
    GGUF_T_Q5_1 = 7,
    GGUF_T_Q8_0 = 8,
    GGUF_T_Q8_1 = 9,
    GGUF_T_Q2_K = 10,
    GGUF_T_Q3_K = 11,
    GGUF_T_Q4_K = 12,
    GGUF_T_Q5_K = 13,
    GGUF_T_Q6_K = 14,
    GGUF_T_Q8_K = 15,
    GGUF_T_IQ4_NL = 20,
    GGUF_T_IQ4_XS = 23,
    GGUF_T_BF16 = 30,
    GGUF_T_COUNT = 42 /* one past the largest id the type table knows */
} gguf_ttype;

/* An array value. Elements of fixed size lie packed at data (little-endian, NOT aligned:
 * read them with the gguf_arr_* accessors). Valid until gguf_close. */
typedef struct {
    gguf_vtype elem_type;
    uint64_t count;
    const uint8_t *data;       /* first element's bytes in the file */
    uint64_t nbytes;           /* bytes of all elements */
    const uint64_t *str_off;   /* string arrays: count offsets of each u64 length, from data */
} gguf_array;

/* A tensor view. ne[0] is the row length (contiguous), as ggml orders dims; dims past
 * n_dims are 1. data points into the mapping / buffer at data section + offset: aligned in
 * memory to gguf_alignment() when the buffer is (a mapping is page-aligned). */
typedef struct {
    const char *name;          /* NUL-terminated copy */
    gguf_ttype type;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    int64_t numel;
    uint64_t offset;           /* relative to the data section */
    uint64_t nbytes;           /* numel / block size × bytes per block */
    const void *data;
} gguf_tensor;

typedef struct gguf_file gguf_file;

/* Memory-maps path (read-only, MAP_PRIVATE) and parses it.
 * @note caller owns *out: gguf_close(). Returns 0, PEFTD_EFORMAT for a malformed file,
 *       PEFTD_EUNSUPPORTED for v1 / big-endian / a newer version, PEFTD_EIO or -errno when
 *       the file cannot be opened or mapped, PEFTD_ENOMEM. */
int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen);
/* gguf_open, or with read_into_memory the file read once into private huge-page-advised
 * memory instead of mapped (lib/file_map.h: FILE_MAP_READ; --no-mmap). */
int gguf_open_ex(const char *path, bool read_into_memory, gguf_file **out, char *err, size_t errlen);

/* Parses a GGUF image already in memory (tests, fuzzing). buf is NOT copied: it must stay
 * valid and unchanged until gguf_close(*out). label (may be NULL) names it in messages. */
int gguf_parse(const void *buf, size_t len, const char *label, gguf_file **out, char *err,
               size_t errlen);

/* gguf_close(NULL) is a no-op. Invalidates every pointer obtained from f. */
void gguf_close(gguf_file *f);

/* Tensor bytes [p, p + n) of a file gguf_open mapped or read will not be read again (the model
 * holds a converted or reordered copy): their whole pages are given back (lib/file_map.h
 * file_map_drop); ranges outside the file's bytes, and files from gguf_parse, are ignored.
 * Returns the bytes given back. Not while other threads read those bytes. */
size_t gguf_drop_bytes(gguf_file *f, const void *p, size_t n);

const char *gguf_label(const gguf_file *f);
uint32_t gguf_version(const gguf_file *f);
uint32_t gguf_alignment(const gguf_file *f);
uint64_t gguf_data_offset(const gguf_file *f); /* file offset of the data section */

/* --- metadata ------------------------------------------------------------------------- */
size_t gguf_kv_count(const gguf_file *f);
const char *gguf_kv_key(const gguf_file *f, size_t i);     /* NULL when i is out of range */
gguf_vtype gguf_kv_type(const gguf_file *f, size_t i);     /* GGUF_VT_COUNT when out of range */
long gguf_find_key(const gguf_file *f, const char *key);   /* index, or -1 when absent */
const char *gguf_vtype_name(gguf_vtype t);                 /* "u32", "string", ... */

/* Typed lookups: 0 and *out set; PEFTD_ENOTFOUND when the key is absent; PEFTD_EFORMAT when
 * the value has another type (the message names the key and both types). err may be NULL. */
int gguf_get_u8(const gguf_file *f, const char *key, uint8_t *out, char *err, size_t errlen);
int gguf_get_i8(const gguf_file *f, const char *key, int8_t *out, char *err, size_t errlen);
int gguf_get_u16(const gguf_file *f, const char *key, uint16_t *out, char *err, size_t errlen);
int gguf_get_i16(const gguf_file *f, const char *key, int16_t *out, char *err, size_t errlen);
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, char *err, size_t errlen);
int gguf_get_i32(const gguf_file *f, const char *key, int32_t *out, char *err, size_t errlen);
int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out, char *err, size_t errlen);
int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out, char *err, size_t errlen);
int gguf_get_f32(const gguf_file *f, const char *key, float *out, char *err, size_t errlen);
int gguf_get_f64(const gguf_file *f, const char *key, double *out, char *err, size_t errlen);
int gguf_get_bool(const gguf_file *f, const char *key, bool *out, char *err, size_t errlen);
/* *s points at the bytes in the file (NOT NUL-terminated), *len their count. */
int gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len, char *err,
                 size_t errlen);
/* An array whose elements have type elem (GGUF_VT_COUNT: any element type). */
int gguf_get_arr(const gguf_file *f, const char *key, gguf_vtype elem, gguf_array *out,
                 char *err, size_t errlen);
/* Any integer type (u8..i64) whose value is ≥ 0: writers disagree on u32 vs u64 for sizes. */
int gguf_get_uint(const gguf_file *f, const char *key, uint64_t *out, char *err,
                  size_t errlen);

/* Array elements (i < a->count, else PEFTD_ERANGE; wrong element type → PEFTD_EFORMAT). */
int gguf_arr_int(const gguf_array *a, uint64_t i, int64_t *out); /* integers and bool; a u64
                                                                    above INT64_MAX → ERANGE */
int gguf_arr_float(const gguf_array *a, uint64_t i, double *out); /* f32, f64 */
int gguf_arr_str(const gguf_array *a, uint64_t i, const char **s, size_t *len);
int gguf_arr_arr(const gguf_array *a, uint64_t i, gguf_array *out); /* nested arrays (O(i)) */

/* --- tensors -------------------------------------------------------------------------- */
size_t gguf_tensor_count(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, size_t i);     /* NULL out of range */
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name); /* NULL absent */

/* Type facts: name ("Q4_K"; "?" unknown), elements per block and bytes per block (0 when the
 * id is unknown), and whether peftd computes with it (F32 F16 BF16 Q8_0 Q4_0 Q5_0 Q4_1 Q5_1 IQ4_NL IQ4_XS Q2_K Q3_K Q4_K Q5_K Q6_K). */
const char *gguf_type_name(uint32_t t);
uint32_t gguf_type_block(uint32_t t);
uint32_t gguf_type_bytes(uint32_t t);
bool gguf_type_supported(uint32_t t);
/* Bytes of a row of n elements: n / block × bytes per block; 0 when n is not a multiple of
 * the block size or the type is unknown. */
uint64_t gguf_row_bytes(uint32_t t, int64_t n);

#endif
