/* server/model/gguf_internal.h — what gguf.c (header, metadata, lookups) and gguf_tensors.c
 * (type table, tensor infos) share: the file object, the bounds-checked read cursor and the
 * error helper. Not for use outside server/model/gguf*.c. */
#ifndef PEFTD_GGUF_INTERNAL_H
#define PEFTD_GGUF_INTERNAL_H

#include "server/model/gguf.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader reads little-endian values in place: little-endian hosts only"
#endif

typedef struct {
    char *key;           /* NUL-terminated copy */
    gguf_vtype type;
    const uint8_t *val;  /* the value's bytes (strings: after the u64 length) */
    uint64_t len;        /* strings: byte length */
    gguf_array arr;      /* arrays */
} gguf_kv;

struct gguf_file {
    char *label;
    const uint8_t *buf;
    size_t len;
    void *map;           /* non-NULL when gguf_open mapped the file */
    size_t map_len;
    uint32_t version, alignment;
    uint64_t data_off;
    gguf_kv *kvs;
    size_t n_kv;
    size_t *kv_sorted;   /* indices into kvs, sorted by key */
    gguf_tensor *tensors;
    size_t n_tensors;
    size_t *t_sorted;    /* indices into tensors, sorted by name */
};

/* A read position in the buffer; every read checks the bytes left first. */
typedef struct {
    gguf_file *f;
    size_t pos;
    char *err;
    size_t errlen;
} gguf_cur;

void gguf_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Fails with a "truncated" message unless n bytes are left; what names the field. */
int gguf_need(gguf_cur *c, uint64_t n, const char *ctx, const char *what);
int gguf_read_u32(gguf_cur *c, uint32_t *v, const char *ctx, const char *what);
int gguf_read_u64(gguf_cur *c, uint64_t *v, const char *ctx, const char *what);
/* A length-prefixed name copied NUL-terminated (1 ≤ length ≤ max, no control byte). */
int gguf_read_name(gguf_cur *c, uint64_t max, char **out, const char *ctx, const char *what);
/* Sorts idx[0..n) by name(i) and fails with "duplicate <what> '<name>'" on a repeat. */
int gguf_sort_unique(gguf_file *f, size_t *idx, size_t n, const char *(*name)(const gguf_file *, size_t),
                     const char *what, char *err, size_t errlen);
/* Reads the tensor infos at c (n of them), the data section start and validates extents. */
int gguf_parse_tensors(gguf_cur *c, uint64_t n, char *err, size_t errlen);

#endif
