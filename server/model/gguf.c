/* server/model/gguf.c — GGUF files: mapping, the header, the metadata KV pairs (every value
 * type, nested arrays) and the typed metadata lookups. The tensor infos and the ggml type
 * table are in gguf_tensors.c. See gguf.h for what is checked.
 *
 * Nothing is trusted: every count and length is compared with the bytes left before it is
 * used (never added to a position first), and counts are bounded by what the remaining bytes
 * could hold before anything is allocated for them.
 */
#include "server/model/gguf_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/file_map.h"

/* Smallest KV: a key length (8) + ≥ 1 key byte + a type (4) + ≥ 1 value byte. (An array
 * element of type string is ≥ 8 bytes, of type array ≥ 12: see gguf_read_value.) */
#define GGUF_MIN_KV 14u

static const struct {
    const char *name;
    uint32_t size; /* bytes of a scalar; 0 for string and array */
} gguf_vtypes[GGUF_VT_COUNT] = {
    [GGUF_VT_U8] = {"u8", 1},    [GGUF_VT_I8] = {"i8", 1},    [GGUF_VT_U16] = {"u16", 2},
    [GGUF_VT_I16] = {"i16", 2},  [GGUF_VT_U32] = {"u32", 4},  [GGUF_VT_I32] = {"i32", 4},
    [GGUF_VT_F32] = {"f32", 4},  [GGUF_VT_BOOL] = {"bool", 1}, [GGUF_VT_STR] = {"string", 0},
    [GGUF_VT_ARR] = {"array", 0}, [GGUF_VT_U64] = {"u64", 8}, [GGUF_VT_I64] = {"i64", 8},
    [GGUF_VT_F64] = {"f64", 8},
};

const char *gguf_vtype_name(gguf_vtype t) {
    return (unsigned)t < GGUF_VT_COUNT ? gguf_vtypes[t].name : "?";
}

void gguf_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int gguf_need(gguf_cur *c, uint64_t n, const char *ctx, const char *what) {
    size_t left = c->f->len - c->pos;
    if (n <= left) return 0;
    gguf_err(c->err, c->errlen, "%s: %s: truncated: %s needs %llu bytes at byte %zu, %zu left",
             c->f->label, ctx, what, (unsigned long long)n, c->pos, left);
    return PEFTD_EFORMAT;
}

int gguf_read_u32(gguf_cur *c, uint32_t *v, const char *ctx, const char *what) {
    int rc = gguf_need(c, 4, ctx, what);
    if (rc < 0) return rc;
    memcpy(v, c->f->buf + c->pos, 4);
    c->pos += 4;
    return 0;
}

int gguf_read_u64(gguf_cur *c, uint64_t *v, const char *ctx, const char *what) {
    int rc = gguf_need(c, 8, ctx, what);
    if (rc < 0) return rc;
    memcpy(v, c->f->buf + c->pos, 8);
    c->pos += 8;
    return 0;
}

int gguf_read_name(gguf_cur *c, uint64_t max, char **out, const char *ctx, const char *what) {
    uint64_t n;
    int rc;
    size_t at = c->pos;
    if ((rc = gguf_read_u64(c, &n, ctx, what)) < 0) return rc;
    if (n == 0 || n > max) {
        gguf_err(c->err, c->errlen, "%s: %s: %s length %llu at byte %zu (must be 1..%llu)",
                 c->f->label, ctx, what, (unsigned long long)n, at, (unsigned long long)max);
        return PEFTD_EFORMAT;
    }
    if ((rc = gguf_need(c, n, ctx, what)) < 0) return rc;
    const uint8_t *p = c->f->buf + c->pos;
    /* Control bytes (NUL, newline, ...) would cut the name short or split a message line. */
    for (uint64_t i = 0; i < n; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f) {
            gguf_err(c->err, c->errlen, "%s: %s: %s at byte %zu holds control byte 0x%02x",
                     c->f->label, ctx, what, at, p[i]);
            return PEFTD_EFORMAT;
        }
    }
    char *s = malloc(n + 1);
    if (!s) {
        gguf_err(c->err, c->errlen, "%s: out of memory", c->f->label);
        return PEFTD_ENOMEM;
    }
    memcpy(s, p, n);
    s[n] = 0;
    c->pos += n;
    *out = s;
    return 0;
}

typedef struct {
    const gguf_file *f;
    const char *(*name)(const gguf_file *, size_t);
} gguf_sort_ctx;

static int gguf_cmp_names(const void *a, const void *b, void *p) {
    const gguf_sort_ctx *cx = p;
    return strcmp(cx->name(cx->f, *(const size_t *)a), cx->name(cx->f, *(const size_t *)b));
}

int gguf_sort_unique(gguf_file *f, size_t *idx, size_t n,
                     const char *(*name)(const gguf_file *, size_t), const char *what, char *err,
                     size_t errlen) {
    for (size_t i = 0; i < n; i++) idx[i] = i;
    gguf_sort_ctx cx = {f, name};
    if (n > 1) qsort_r(idx, n, sizeof *idx, gguf_cmp_names, &cx);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(name(f, idx[i - 1]), name(f, idx[i])) == 0) {
            gguf_err(err, errlen, "%s: duplicate %s '%.200s'", f->label, what, name(f, idx[i]));
            return PEFTD_EFORMAT;
        }
    }
    return 0;
}

/* Validates one value of type t at c and moves past it. kv (top level only) receives the
 * value's position, string length or array facts; depth counts enclosing arrays. */
static int gguf_read_value(gguf_cur *c, uint32_t t, int depth, const char *ctx, gguf_kv *kv) {
    gguf_file *f = c->f;
    int rc;
    if (t >= GGUF_VT_COUNT) {
        gguf_err(c->err, c->errlen, "%s: %s: unknown value type %u at byte %zu", f->label, ctx,
                 t, c->pos - 4);
        return PEFTD_EFORMAT;
    }
    if (t == GGUF_VT_STR) {
        uint64_t n;
        if ((rc = gguf_read_u64(c, &n, ctx, "string length")) < 0) return rc;
        if ((rc = gguf_need(c, n, ctx, "string")) < 0) return rc;
        if (kv) kv->val = f->buf + c->pos, kv->len = n;
        c->pos += n;
        return 0;
    }
    if (t != GGUF_VT_ARR) {
        if ((rc = gguf_need(c, gguf_vtypes[t].size, ctx, gguf_vtypes[t].name)) < 0) return rc;
        if (t == GGUF_VT_BOOL && f->buf[c->pos] > 1) {
            gguf_err(c->err, c->errlen, "%s: %s: bool byte %u at byte %zu (must be 0 or 1)",
                     f->label, ctx, f->buf[c->pos], c->pos);
            return PEFTD_EFORMAT;
        }
        if (kv) kv->val = f->buf + c->pos;
        c->pos += gguf_vtypes[t].size;
        return 0;
    }
    uint32_t et;
    uint64_t n;
    if (depth >= GGUF_MAX_DEPTH) {
        gguf_err(c->err, c->errlen, "%s: %s: arrays nested deeper than %d at byte %zu", f->label,
                 ctx, GGUF_MAX_DEPTH, c->pos);
        return PEFTD_EFORMAT;
    }
    if ((rc = gguf_read_u32(c, &et, ctx, "array element type")) < 0) return rc;
    if (et >= GGUF_VT_COUNT) {
        gguf_err(c->err, c->errlen, "%s: %s: unknown array element type %u at byte %zu",
                 f->label, ctx, et, c->pos - 4);
        return PEFTD_EFORMAT;
    }
    if ((rc = gguf_read_u64(c, &n, ctx, "array count")) < 0) return rc;
    uint64_t min = et == GGUF_VT_STR ? 8 : et == GGUF_VT_ARR ? 12 : gguf_vtypes[et].size;
    size_t start = c->pos, left = f->len - c->pos;
    if (n > left / min) {
        gguf_err(c->err, c->errlen,
                 "%s: %s: array of %llu %s at byte %zu cannot fit in the %zu bytes left",
                 f->label, ctx, (unsigned long long)n, gguf_vtypes[et].name, start, left);
        return PEFTD_EFORMAT;
    }
    uint64_t *off = NULL;
    if (et == GGUF_VT_STR && kv) {
        if (n > GGUF_MAX_STR_ARRAY) {
            gguf_err(c->err, c->errlen, "%s: %s: %llu strings in one array (at most %llu)",
                     f->label, ctx, (unsigned long long)n,
                     (unsigned long long)GGUF_MAX_STR_ARRAY);
            return PEFTD_EFORMAT;
        }
        if (n && !(off = malloc(n * sizeof *off))) {
            gguf_err(c->err, c->errlen, "%s: out of memory", f->label);
            return PEFTD_ENOMEM;
        }
        kv->arr.str_off = off; /* owned by kv from here on: freed with the file */
    }
    if (et == GGUF_VT_STR || et == GGUF_VT_ARR) {
        for (uint64_t i = 0; i < n; i++) {
            if (off) off[i] = c->pos - start;
            if ((rc = gguf_read_value(c, et, depth + 1, ctx, NULL)) < 0) return rc;
        }
    } else {
        if (et == GGUF_VT_BOOL) {
            for (uint64_t i = 0; i < n; i++)
                if (f->buf[start + i] > 1) {
                    gguf_err(c->err, c->errlen, "%s: %s: bool byte %u at byte %llu", f->label,
                             ctx, f->buf[start + i], (unsigned long long)(start + i));
                    return PEFTD_EFORMAT;
                }
        }
        c->pos += n * min;
    }
    if (kv) {
        kv->val = f->buf + start;
        kv->arr.elem_type = (gguf_vtype)et;
        kv->arr.count = n;
        kv->arr.data = f->buf + start;
        kv->arr.nbytes = c->pos - start;
    }
    return 0;
}

static const char *gguf_kv_name(const gguf_file *f, size_t i) { return f->kvs[i].key; }

static int gguf_read_kvs(gguf_cur *c, uint64_t n, char *err, size_t errlen) {
    gguf_file *f = c->f;
    int rc;
    if (n > (f->len - c->pos) / GGUF_MIN_KV) {
        gguf_err(err, errlen, "%s: %llu metadata entries cannot fit in a file of %zu bytes",
                 f->label, (unsigned long long)n, f->len);
        return PEFTD_EFORMAT;
    }
    if (n && (!(f->kvs = calloc(n, sizeof *f->kvs)) || !(f->kv_sorted = malloc(n * sizeof(size_t))))) {
        gguf_err(err, errlen, "%s: out of memory", f->label);
        return PEFTD_ENOMEM;
    }
    char ctx[GGUF_MAX_KEY + 16];
    for (uint64_t i = 0; i < n; i++) {
        gguf_kv *kv = &f->kvs[i];
        snprintf(ctx, sizeof ctx, "metadata entry %llu", (unsigned long long)i);
        if ((rc = gguf_read_name(c, GGUF_MAX_KEY, &kv->key, ctx, "key")) < 0) return rc;
        f->n_kv = i + 1; /* the key is owned by f now */
        snprintf(ctx, sizeof ctx, "key '%.200s'", kv->key);
        uint32_t t;
        if ((rc = gguf_read_u32(c, &t, ctx, "value type")) < 0) return rc;
        kv->type = (gguf_vtype)t;
        if ((rc = gguf_read_value(c, t, 0, ctx, kv)) < 0) return rc;
    }
    return gguf_sort_unique(f, f->kv_sorted, f->n_kv, gguf_kv_name, "metadata key", err, errlen);
}

/* Magic, version, counts, metadata, alignment, then the tensor infos (gguf_tensors.c). */
static int gguf_parse_file(gguf_file *f, char *err, size_t errlen) {
    gguf_cur c = {f, 0, err, errlen};
    const char *ctx = "header";
    int rc;
    if ((rc = gguf_need(&c, 4, ctx, "magic")) < 0) return rc;
    if (memcmp(f->buf, "FUGG", 4) == 0) {
        gguf_err(err, errlen, "%s: big-endian GGUF file: only little-endian GGUF is supported",
                 f->label);
        return PEFTD_EUNSUPPORTED;
    }
    if (memcmp(f->buf, "GGUF", 4) != 0) {
        gguf_err(err, errlen, "%s: not a GGUF file (magic %02x %02x %02x %02x, want \"GGUF\")",
                 f->label, f->buf[0], f->buf[1], f->buf[2], f->buf[3]);
        return PEFTD_EFORMAT;
    }
    c.pos = 4;
    uint64_t n_tensors, n_kv;
    if ((rc = gguf_read_u32(&c, &f->version, ctx, "version")) < 0) return rc;
    if ((f->version & 0xffffu) == 0 && f->version != 0) {
        gguf_err(err, errlen, "%s: big-endian GGUF file (version bytes %08x): only "
                 "little-endian GGUF is supported", f->label, f->version);
        return PEFTD_EUNSUPPORTED;
    }
    if (f->version != 2 && f->version != 3) {
        gguf_err(err, errlen, "%s: GGUF version %u is not supported (versions 2 and 3 are)%s",
                 f->label, f->version, f->version == 1 ? ": re-convert the model" : "");
        return f->version == 0 ? PEFTD_EFORMAT : PEFTD_EUNSUPPORTED;
    }
    if ((rc = gguf_read_u64(&c, &n_tensors, ctx, "tensor count")) < 0) return rc;
    if ((rc = gguf_read_u64(&c, &n_kv, ctx, "metadata count")) < 0) return rc;
    if ((rc = gguf_read_kvs(&c, n_kv, err, errlen)) < 0) return rc;
    f->alignment = GGUF_DEFAULT_ALIGN;
    long ai = gguf_find_key(f, "general.alignment");
    if (ai >= 0) {
        uint32_t a;
        if ((rc = gguf_get_u32(f, "general.alignment", &a, err, errlen)) < 0) return rc;
        if (a == 0 || (a & (a - 1)) != 0 || a > GGUF_MAX_ALIGN) {
            gguf_err(err, errlen, "%s: general.alignment %u is not a power of two in 1..%u",
                     f->label, a, GGUF_MAX_ALIGN);
            return PEFTD_EFORMAT;
        }
        f->alignment = a;
    }
    return gguf_parse_tensors(&c, n_tensors, err, errlen);
}

static gguf_file *gguf_new(const char *label) {
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    if (!(f->label = strdup(label ? label : "gguf"))) {
        free(f);
        return NULL;
    }
    return f;
}

int gguf_parse(const void *buf, size_t len, const char *label, gguf_file **out, char *err,
               size_t errlen) {
    *out = NULL;
    gguf_file *f = gguf_new(label);
    if (!f) {
        gguf_err(err, errlen, "%s: out of memory", label ? label : "gguf");
        return PEFTD_ENOMEM;
    }
    f->buf = buf;
    f->len = buf ? len : 0;
    int rc = gguf_parse_file(f, err, errlen);
    if (rc < 0) {
        gguf_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen) {
    return gguf_open_ex(path, false, out, err, errlen);
}

int gguf_open_ex(const char *path, bool read_into_memory, gguf_file **out, char *err, size_t errlen) {
    *out = NULL;
    int rc, fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        gguf_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return rc;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        rc = -errno;
        gguf_err(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    if (!S_ISREG(sb.st_mode)) {
        gguf_err(err, errlen, "%s: not a regular file", path);
        close(fd);
        return PEFTD_EIO;
    }
    /* A zero-length mmap fails; under 24 bytes cannot hold the header anyway. */
    if (sb.st_size < 24) {
        gguf_err(err, errlen, "%s: %lld bytes, too short for a GGUF header (24 bytes)", path,
                 (long long)sb.st_size);
        close(fd);
        return PEFTD_EFORMAT;
    }
    file_map fm;
    int merr = file_map_open(fd, (size_t)sb.st_size, read_into_memory ? FILE_MAP_READ : FILE_MAP_MMAP, &fm);
    close(fd);
    if (merr < 0) {
        gguf_err(err, errlen, "%s: %s of %lld bytes failed: %s", path, read_into_memory ? "reading" : "mmap",
                 (long long)sb.st_size, strerror(-merr));
        return PEFTD_EIO;
    }
    file_map_log(&fm, path);
    gguf_file *f = gguf_new(path);
    if (!f) {
        file_map_close(&fm);
        gguf_err(err, errlen, "%s: out of memory", path);
        return PEFTD_ENOMEM;
    }
    f->map = fm.addr;
    f->map_len = fm.span;
    f->buf = fm.addr;
    f->len = fm.len;
    if ((rc = gguf_parse_file(f, err, errlen)) < 0) {
        gguf_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

size_t gguf_drop_bytes(gguf_file *f, const void *p, size_t n) {
    return f && f->map ? file_map_drop(f->map, f->map_len, p, n) : 0;
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    for (size_t i = 0; i < f->n_kv; i++) {
        free(f->kvs[i].key);
        free((void *)f->kvs[i].arr.str_off);
    }
    for (size_t i = 0; i < f->n_tensors; i++) free((void *)f->tensors[i].name);
    free(f->kvs);
    free(f->kv_sorted);
    free(f->tensors);
    free(f->t_sorted);
    free(f->label);
    free(f);
}

const char *gguf_label(const gguf_file *f) { return f->label; }
uint32_t gguf_version(const gguf_file *f) { return f->version; }
uint32_t gguf_alignment(const gguf_file *f) { return f->alignment; }
uint64_t gguf_data_offset(const gguf_file *f) { return f->data_off; }
size_t gguf_kv_count(const gguf_file *f) { return f->n_kv; }

const char *gguf_kv_key(const gguf_file *f, size_t i) {
    return i < f->n_kv ? f->kvs[i].key : NULL;
}

gguf_vtype gguf_kv_type(const gguf_file *f, size_t i) {
    return i < f->n_kv ? f->kvs[i].type : GGUF_VT_COUNT;
}

long gguf_find_key(const gguf_file *f, const char *key) {
    size_t lo = 0, hi = f->kv_sorted ? f->n_kv : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->kvs[f->kv_sorted[mid]].key, key);
        if (c == 0) return (long)f->kv_sorted[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* The entry for key with type want, or NULL and the error in err / *rc. */
static const gguf_kv *gguf_lookup(const gguf_file *f, const char *key, gguf_vtype want,
                                  int *rc, char *err, size_t errlen) {
    long i = gguf_find_key(f, key);
    if (i < 0) {
        gguf_err(err, errlen, "%s: metadata key '%s' not found", f->label, key);
        *rc = PEFTD_ENOTFOUND;
        return NULL;
    }
    const gguf_kv *kv = &f->kvs[i];
    if (kv->type != want) {
        gguf_err(err, errlen, "%s: metadata key '%s' is %s, expected %s", f->label, key,
                 gguf_vtype_name(kv->type), gguf_vtype_name(want));
        *rc = PEFTD_EFORMAT;
        return NULL;
    }
    return kv;
}

#define GGUF_GETTER(fn, T, VT)                                                             \
    int fn(const gguf_file *f, const char *key, T *out, char *err, size_t errlen) {       \
        int rc = 0;                                                                        \
        const gguf_kv *kv = gguf_lookup(f, key, VT, &rc, err, errlen);                    \
        if (!kv) return rc;                                                                \
        memcpy(out, kv->val, sizeof(T));                                                   \
        return 0;                                                                          \
    }
GGUF_GETTER(gguf_get_u8, uint8_t, GGUF_VT_U8)
GGUF_GETTER(gguf_get_i8, int8_t, GGUF_VT_I8)
GGUF_GETTER(gguf_get_u16, uint16_t, GGUF_VT_U16)
GGUF_GETTER(gguf_get_i16, int16_t, GGUF_VT_I16)
GGUF_GETTER(gguf_get_u32, uint32_t, GGUF_VT_U32)
GGUF_GETTER(gguf_get_i32, int32_t, GGUF_VT_I32)
GGUF_GETTER(gguf_get_u64, uint64_t, GGUF_VT_U64)
GGUF_GETTER(gguf_get_i64, int64_t, GGUF_VT_I64)
GGUF_GETTER(gguf_get_f32, float, GGUF_VT_F32)
GGUF_GETTER(gguf_get_f64, double, GGUF_VT_F64)

int gguf_get_bool(const gguf_file *f, const char *key, bool *out, char *err, size_t errlen) {
    int rc = 0;
    const gguf_kv *kv = gguf_lookup(f, key, GGUF_VT_BOOL, &rc, err, errlen);
    if (!kv) return rc;
    *out = kv->val[0] != 0;
    return 0;
}

int gguf_get_str(const gguf_file *f, const char *key, const char **s, size_t *len, char *err,
                 size_t errlen) {
    int rc = 0;
    const gguf_kv *kv = gguf_lookup(f, key, GGUF_VT_STR, &rc, err, errlen);
    if (!kv) return rc;
    *s = (const char *)kv->val;
    *len = (size_t)kv->len;
    return 0;
}

int gguf_get_arr(const gguf_file *f, const char *key, gguf_vtype elem, gguf_array *out,
                 char *err, size_t errlen) {
    int rc = 0;
    const gguf_kv *kv = gguf_lookup(f, key, GGUF_VT_ARR, &rc, err, errlen);
    if (!kv) return rc;
    if (elem != GGUF_VT_COUNT && kv->arr.elem_type != elem) {
        gguf_err(err, errlen, "%s: metadata key '%s' is an array of %s, expected an array of %s",
                 f->label, key, gguf_vtype_name(kv->arr.elem_type), gguf_vtype_name(elem));
        return PEFTD_EFORMAT;
    }
    *out = kv->arr;
    return 0;
}

/* Reads an integer of type t at p into *out (false for a non-integer type). */
static bool gguf_int_at(gguf_vtype t, const uint8_t *p, int64_t *out, bool *u64big) {
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
            uint64_t u64; int64_t i64; } v;
    if (t >= GGUF_VT_COUNT || gguf_vtypes[t].size == 0 || t == GGUF_VT_F32 || t == GGUF_VT_F64)
        return false;
    memcpy(&v, p, gguf_vtypes[t].size);
    *u64big = false;
    switch (t) {
    case GGUF_VT_U8: case GGUF_VT_BOOL: *out = v.u8; break;
    case GGUF_VT_I8: *out = v.i8; break;
    case GGUF_VT_U16: *out = v.u16; break;
    case GGUF_VT_I16: *out = v.i16; break;
    case GGUF_VT_U32: *out = v.u32; break;
    case GGUF_VT_I32: *out = v.i32; break;
    case GGUF_VT_U64: *u64big = v.u64 > (uint64_t)INT64_MAX; *out = (int64_t)(v.u64 & INT64_MAX); break;
    default: *out = v.i64; break;
    }
    return true;
}

int gguf_get_uint(const gguf_file *f, const char *key, uint64_t *out, char *err,
                  size_t errlen) {
    long i = gguf_find_key(f, key);
    if (i < 0) {
        gguf_err(err, errlen, "%s: metadata key '%s' not found", f->label, key);
        return PEFTD_ENOTFOUND;
    }
    const gguf_kv *kv = &f->kvs[i];
    int64_t v;
    bool big;
    if (kv->type == GGUF_VT_BOOL || !gguf_int_at(kv->type, kv->val, &v, &big)) {
        gguf_err(err, errlen, "%s: metadata key '%s' is %s, expected an unsigned integer",
                 f->label, key, gguf_vtype_name(kv->type));
        return PEFTD_EFORMAT;
    }
    if (v < 0) {
        gguf_err(err, errlen, "%s: metadata key '%s' is negative (%lld)", f->label, key,
                 (long long)v);
        return PEFTD_ERANGE;
    }
    *out = big ? (uint64_t)v | ((uint64_t)1 << 63) : (uint64_t)v;
    return 0;
}

int gguf_arr_int(const gguf_array *a, uint64_t i, int64_t *out) {
    if (i >= a->count) return PEFTD_ERANGE;
    uint32_t sz = a->elem_type < GGUF_VT_COUNT ? gguf_vtypes[a->elem_type].size : 0;
    bool big;
    if (!sz || !gguf_int_at(a->elem_type, a->data + i * sz, out, &big)) return PEFTD_EFORMAT;
    return big ? PEFTD_ERANGE : 0;
}

int gguf_arr_float(const gguf_array *a, uint64_t i, double *out) {
    if (i >= a->count) return PEFTD_ERANGE;
    if (a->elem_type == GGUF_VT_F32) {
        float v;
        memcpy(&v, a->data + i * 4, 4);
        *out = v;
    } else if (a->elem_type == GGUF_VT_F64) {
        memcpy(out, a->data + i * 8, 8);
    } else {
        return PEFTD_EFORMAT;
    }
    return 0;
}

/* Bytes of one element of type et at p (validated at parse: safe to walk). */
static uint64_t gguf_elem_bytes(gguf_vtype et, const uint8_t *p) {
    if (gguf_vtypes[et].size) return gguf_vtypes[et].size;
    uint64_t n;
    if (et == GGUF_VT_STR) {
        memcpy(&n, p, 8);
        return 8 + n;
    }
    uint32_t inner;
    memcpy(&inner, p, 4);
    memcpy(&n, p + 4, 8);
    if (gguf_vtypes[inner].size) return 12 + n * gguf_vtypes[inner].size;
    uint64_t off = 12;
    for (uint64_t k = 0; k < n; k++) off += gguf_elem_bytes((gguf_vtype)inner, p + off);
    return off;
}

/* Byte offset of element i of a string or array array. */
static uint64_t gguf_arr_offset(const gguf_array *a, uint64_t i) {
    if (a->str_off) return a->str_off[i];
    uint64_t off = 0;
    for (uint64_t k = 0; k < i; k++) off += gguf_elem_bytes(a->elem_type, a->data + off);
    return off;
}

int gguf_arr_str(const gguf_array *a, uint64_t i, const char **s, size_t *len) {
    if (i >= a->count) return PEFTD_ERANGE;
    if (a->elem_type != GGUF_VT_STR) return PEFTD_EFORMAT;
    const uint8_t *p = a->data + gguf_arr_offset(a, i);
    uint64_t n;
    memcpy(&n, p, 8);
    *s = (const char *)p + 8;
    *len = (size_t)n;
    return 0;
}

int gguf_arr_arr(const gguf_array *a, uint64_t i, gguf_array *out) {
    if (i >= a->count) return PEFTD_ERANGE;
    if (a->elem_type != GGUF_VT_ARR) return PEFTD_EFORMAT;
    const uint8_t *p = a->data + gguf_arr_offset(a, i);
    uint32_t et;
    uint64_t n;
    memcpy(&et, p, 4);
    memcpy(&n, p + 4, 8);
    *out = (gguf_array){(gguf_vtype)et, n, p + 12, gguf_elem_bytes(GGUF_VT_ARR, p) - 12, NULL};
    return 0;
}
