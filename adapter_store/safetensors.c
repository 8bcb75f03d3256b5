/* adapter_store/safetensors.c — parsing and validation of safetensors images (see
 * safetensors.h for the rules), memory-mapping of safetensors files, and lookups.
 *
 * The parse is in three passes: cJSON builds a tree of the header; a lexical pass rejects
 * any number that is not written as a plain integer (cJSON turns "3.0" and "3" into the
 * same double, and a safetensors header holds nothing but integers); then every entry is
 * checked and copied into a flat table, so the cJSON tree is freed before returning.
 */
#include "adapter_store/safetensors.h"

#include <cJSON.h>
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

/* Largest integer a double holds exactly: cJSON parses numbers as doubles, so a value
 * above this may already have been rounded and cannot be trusted. */
#define ST_MAX_EXACT_INT 9007199254740991.0

struct st_file {
    char *label;
    const uint8_t *data;   /* data area (after the header) */
    uint64_t data_len;
    void *map;             /* non-NULL when st_open mapped the file */
    size_t map_len;        /* the file's bytes */
    size_t map_span;       /* bytes reserved at map (munmap length) */
    st_tensor *tensors;    /* [n], header order */
    size_t n;
    size_t *by_name;       /* [n] indices into tensors, sorted by name */
    char **meta_keys, **meta_vals;
    size_t n_meta;
    char *names;           /* one buffer holding every tensor name */
};

static const struct {
    const char *name;
    size_t size;
} st_dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 1},         [ST_U8] = {"U8", 1},
    [ST_I8] = {"I8", 1},             [ST_F8_E4M3] = {"F8_E4M3", 1},
    [ST_F8_E5M2] = {"F8_E5M2", 1},   [ST_F8_E8M0] = {"F8_E8M0", 1},
    [ST_I16] = {"I16", 2},           [ST_U16] = {"U16", 2},
    [ST_F16] = {"F16", 2},           [ST_BF16] = {"BF16", 2},
    [ST_I32] = {"I32", 4},           [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4},           [ST_I64] = {"I64", 8},
    [ST_U64] = {"U64", 8},           [ST_F64] = {"F64", 8},
    [ST_C64] = {"C64", 8},
};

size_t st_dtype_size(st_dtype t) { return (unsigned)t < ST_DTYPE_COUNT ? st_dtypes[t].size : 0; }

const char *st_dtype_name(st_dtype t) {
    return (unsigned)t < ST_DTYPE_COUNT ? st_dtypes[t].name : "?";
}

bool st_dtype_to_kdtype(st_dtype t, kdtype *out) {
    switch (t) {
    case ST_F32: *out = KDT_F32; return true;
    case ST_F16: *out = KDT_F16; return true;
    case ST_BF16: *out = KDT_BF16; return true;
    default: return false;
    }
}

static void st_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void st_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool st_is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* The index of the '"' that closes the JSON string opening at h[i] (a '"'), or len when
 * the text ends first; a backslash escapes the byte after it. */
static size_t st_string_end(const char *h, size_t len, size_t i) {
    for (i++; i < len; i++) {
        if (h[i] == '\\') i++;
        else if (h[i] == '"') return i;
    }
    return len;
}

/* Rejects numbers written with a fraction or an exponent ("3.0", "1e3"): the text is
 * already known to be valid JSON, so outside strings a '-' or digit starts a number. */
static int st_check_integers(const char *h, size_t len, const char *label, char *err,
                             size_t errlen) {
    for (size_t i = 0; i < len; i++) {
        char c = h[i];
        if (c == '"') {
            i = st_string_end(h, len, i);
            continue;
        }
        if (c != '-' && (c < '0' || c > '9')) continue;
        size_t j = i;
        bool integral = true;
        while (j < len && (h[j] == '-' || h[j] == '+' || h[j] == '.' || h[j] == 'e' ||
                           h[j] == 'E' || (h[j] >= '0' && h[j] <= '9'))) {
            if (h[j] == '.' || h[j] == 'e' || h[j] == 'E') integral = false;
            j++;
        }
        if (!integral) {
            st_err(err, errlen, "%s: header has a non-integer number '%.*s' at byte %zu", label,
                   (int)(j - i > 32 ? 32 : j - i), h + i, i + 8);
            return PEFTD_EFORMAT;
        }
        i = j - 1;
    }
    return 0;
}

size_t st_json_value_bound(const char *h, size_t len) {
    size_t n = 1;
    for (size_t i = 0; i < len; i++) {
        char c = h[i];
        if (c == '"') i = st_string_end(h, len, i);
        else if (c == ',' || c == '[' || c == '{') n++;
    }
    return n;
}

/* A JSON number holding an exact integer in [0, 2^53). */
static bool st_json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0.0 && d <= ST_MAX_EXACT_INT) || d != (double)(uint64_t)d) return false;
    *out = (uint64_t)d;
    return true;
}

static int st_parse_dtype(const cJSON *v, st_dtype *out, const char *label, const char *name,
                          char *err, size_t errlen) {
    if (!cJSON_IsString(v)) {
        st_err(err, errlen, "%s: tensor '%s': \"dtype\" is not a string", label, name);
        return PEFTD_EFORMAT;
    }
    for (int t = 0; t < ST_DTYPE_COUNT; t++) {
        if (strcmp(v->valuestring, st_dtypes[t].name) == 0) {
            *out = (st_dtype)t;
            return 0;
        }
    }
    st_err(err, errlen, "%s: tensor '%s': unknown or unsupported dtype \"%.32s\"", label, name,
           v->valuestring);
    return PEFTD_EUNSUPPORTED;
}

static int st_parse_shape(const cJSON *v, st_tensor *t, const char *label, char *err,
                          size_t errlen) {
    if (!cJSON_IsArray(v)) {
        st_err(err, errlen, "%s: tensor '%s': \"shape\" is not an array", label, t->name);
        return PEFTD_EFORMAT;
    }
    int nd = cJSON_GetArraySize(v);
    if (nd > ST_MAX_DIMS) {
        st_err(err, errlen, "%s: tensor '%s': %d dims, at most %d supported", label, t->name, nd,
               ST_MAX_DIMS);
        return PEFTD_EFORMAT;
    }
    uint64_t numel = 1;
    int d = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        uint64_t dim;
        if (!st_json_uint(e, &dim)) {
            st_err(err, errlen, "%s: tensor '%s': shape[%d] is not a non-negative integer", label,
                   t->name, d);
            return PEFTD_EFORMAT;
        }
        if (__builtin_mul_overflow(numel, dim, &numel) || numel > (uint64_t)INT64_MAX) {
            st_err(err, errlen, "%s: tensor '%s': element count overflows", label, t->name);
            return PEFTD_EFORMAT;
        }
        t->shape[d++] = (int64_t)dim;
    }
    t->ndim = nd;
    t->numel = (int64_t)numel;
    return 0;
}

static int st_parse_offsets(const cJSON *v, uint64_t *begin, uint64_t *end, const char *label,
                            const char *name, char *err, size_t errlen) {
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2 ||
        !st_json_uint(cJSON_GetArrayItem(v, 0), begin) ||
        !st_json_uint(cJSON_GetArrayItem(v, 1), end)) {
        st_err(err, errlen,
               "%s: tensor '%s': \"data_offsets\" is not an array of 2 non-negative integers",
               label, name);
        return PEFTD_EFORMAT;
    }
    return 0;
}

static void st_fmt_shape(const st_tensor *t, char *buf, size_t cap) {
    size_t off = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->ndim && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? ", " : "",
                                (long long)t->shape[i]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
}

/* Checks one tensor entry and fills t (t->name already set). */
static int st_parse_tensor(st_file *f, const cJSON *entry, st_tensor *t, char *err,
                           size_t errlen) {
    const char *label = f->label;
    if (!cJSON_IsObject(entry)) {
        st_err(err, errlen, "%s: tensor '%s': entry is not an object", label, t->name);
        return PEFTD_EFORMAT;
    }
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL, *c;
    /* Walk the keys ourselves: cJSON keeps duplicate keys and a lookup would silently pick
     * the first, so a file could mean different things to different readers. Unknown keys
     * are ignored, as the reference implementation does. */
    cJSON_ArrayForEach(c, entry) {
        const cJSON **slot = strcmp(c->string, "dtype") == 0          ? &dtype
                             : strcmp(c->string, "shape") == 0        ? &shape
                             : strcmp(c->string, "data_offsets") == 0 ? &offs
                                                                      : NULL;
        if (!slot) continue;
        if (*slot) {
            st_err(err, errlen, "%s: tensor '%s': duplicate key \"%s\"", label, t->name,
                   c->string);
            return PEFTD_EFORMAT;
        }
        *slot = c;
    }
    const char *missing = !dtype ? "dtype" : !shape ? "shape" : !offs ? "data_offsets" : NULL;
    if (missing) {
        st_err(err, errlen, "%s: tensor '%s': missing \"%s\"", label, t->name, missing);
        return PEFTD_EFORMAT;
    }
    int rc;
    uint64_t begin, end, nbytes;
    if ((rc = st_parse_dtype(dtype, &t->dtype, label, t->name, err, errlen)) < 0) return rc;
    if ((rc = st_parse_shape(shape, t, label, err, errlen)) < 0) return rc;
    if ((rc = st_parse_offsets(offs, &begin, &end, label, t->name, err, errlen)) < 0) return rc;
    if (begin > end || end > f->data_len) {
        st_err(err, errlen,
               "%s: tensor '%s': data_offsets [%llu, %llu] outside the data area of %llu bytes",
               label, t->name, (unsigned long long)begin, (unsigned long long)end,
               (unsigned long long)f->data_len);
        return PEFTD_EFORMAT;
    }
    if (__builtin_mul_overflow((uint64_t)t->numel, (uint64_t)st_dtype_size(t->dtype), &nbytes)) {
        st_err(err, errlen, "%s: tensor '%s': byte size of %lld %s elements overflows", label,
               t->name, (long long)t->numel, st_dtype_name(t->dtype));
        return PEFTD_EFORMAT;
    }
    if (nbytes != end - begin) {
        char shp[160];
        st_fmt_shape(t, shp, sizeof shp);
        st_err(err, errlen,
               "%s: tensor '%s': data_offsets span %llu bytes, but %s shape %s needs %llu",
               label, t->name, (unsigned long long)(end - begin), st_dtype_name(t->dtype), shp,
               (unsigned long long)nbytes);
        return PEFTD_EFORMAT;
    }
    t->offset = begin;
    t->nbytes = (size_t)nbytes;
    t->data = f->data + begin;
    return 0;
}

static int st_cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int st_parse_metadata(st_file *f, const cJSON *meta, char *err, size_t errlen) {
    if (cJSON_IsNull(meta)) return 0;
    if (!cJSON_IsObject(meta)) {
        st_err(err, errlen, "%s: \"__metadata__\" is not an object", f->label);
        return PEFTD_EFORMAT;
    }
    size_t n = (size_t)cJSON_GetArraySize(meta);
    f->meta_keys = calloc(n ? n : 1, sizeof(char *));
    f->meta_vals = calloc(n ? n : 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_vals) goto nomem;
    const cJSON *c;
    cJSON_ArrayForEach(c, meta) {
        if (!cJSON_IsString(c)) {
            st_err(err, errlen, "%s: \"__metadata__\" value of \"%.64s\" is not a string",
                   f->label, c->string);
            return PEFTD_EFORMAT;
        }
        f->meta_keys[f->n_meta] = strdup(c->string);
        f->meta_vals[f->n_meta] = strdup(c->valuestring);
        f->n_meta++;
        if (!f->meta_keys[f->n_meta - 1] || !f->meta_vals[f->n_meta - 1]) goto nomem;
    }
    /* cJSON keeps duplicate keys; reject them so a lookup cannot depend on which one wins.
     * Sorting a copy keeps this O(n log n) on a hostile 100 MB header. */
    char **keys = malloc((n ? n : 1) * sizeof(char *));
    if (!keys) goto nomem;
    memcpy(keys, f->meta_keys, n * sizeof(char *));
    qsort(keys, n, sizeof(char *), st_cmp_str);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(keys[i - 1], keys[i]) == 0) {
            st_err(err, errlen, "%s: duplicate \"__metadata__\" key \"%.64s\"", f->label,
                   keys[i]);
            free(keys);
            return PEFTD_EFORMAT;
        }
    }
    free(keys);
    return 0;
nomem:
    st_err(err, errlen, "%s: out of memory reading \"__metadata__\"", f->label);
    return PEFTD_ENOMEM;
}

static int st_cmp_name(const void *a, const void *b, void *ctx) {
    const st_tensor *tab = ctx;
    return strcmp(tab[*(const size_t *)a].name, tab[*(const size_t *)b].name);
}

static int st_cmp_offset(const void *a, const void *b, void *ctx) {
    const st_tensor *tab = ctx, *x = &tab[*(const size_t *)a], *y = &tab[*(const size_t *)b];
    return x->offset < y->offset ? -1 : x->offset > y->offset ? 1 : 0;
}

/* Sorts by name (kept for st_find) and rejects duplicates; then rejects overlapping bytes. */
static int st_check_table(st_file *f, char *err, size_t errlen) {
    int rc = 0;
    size_t *idx = NULL;
    f->by_name = malloc((f->n ? f->n : 1) * sizeof(size_t));
    idx = malloc((f->n ? f->n : 1) * sizeof(size_t));
    if (!f->by_name || !idx) {
        st_err(err, errlen, "%s: out of memory", f->label);
        rc = PEFTD_ENOMEM;
        goto out;
    }
    size_t m = 0;
    for (size_t i = 0; i < f->n; i++) {
        f->by_name[i] = i;
        if (f->tensors[i].nbytes) idx[m++] = i; /* empty tensors own no bytes */
    }
    qsort_r(f->by_name, f->n, sizeof(size_t), st_cmp_name, f->tensors);
    for (size_t i = 1; i < f->n; i++) {
        const char *a = f->tensors[f->by_name[i - 1]].name, *b = f->tensors[f->by_name[i]].name;
        if (strcmp(a, b) == 0) {
            st_err(err, errlen, "%s: duplicate tensor name '%s'", f->label, a);
            rc = PEFTD_EFORMAT;
            goto out;
        }
    }
    qsort_r(idx, m, sizeof(size_t), st_cmp_offset, f->tensors);
    for (size_t i = 1; i < m; i++) {
        const st_tensor *a = &f->tensors[idx[i - 1]], *b = &f->tensors[idx[i]];
        if (b->offset < a->offset + a->nbytes) {
            st_err(err, errlen, "%s: tensors '%s' and '%s' overlap", f->label, a->name, b->name);
            rc = PEFTD_EFORMAT;
            goto out;
        }
    }
out:
    free(idx);
    return rc;
}

static int st_parse_header(st_file *f, const uint8_t *buf, size_t len, char *err,
                           size_t errlen) {
    const char *label = f->label;
    cJSON *root = NULL;
    int rc = PEFTD_EFORMAT;
    if (len < 8) {
        st_err(err, errlen, "%s: %zu bytes, too short for the 8-byte header length", label, len);
        return PEFTD_EFORMAT;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen == 0 || hlen > ST_MAX_HEADER || hlen > len - 8) {
        st_err(err, errlen, "%s: header length %llu is %s", label, (unsigned long long)hlen,
               hlen == 0 ? "zero" : hlen > ST_MAX_HEADER ? "over the 8 MiB limit"
                                                         : "beyond the end of the file");
        return PEFTD_EFORMAT;
    }
    const char *h = (const char *)buf + 8, *end = NULL;
    size_t nodes = st_json_value_bound(h, (size_t)hlen);
    if (nodes > ST_MAX_NODES) {
        st_err(err, errlen, "%s: header holds about %zu JSON values, over the limit of %zu", label, nodes,
               ST_MAX_NODES);
        return PEFTD_EFORMAT;
    }
    f->data = buf + 8 + hlen;
    f->data_len = len - 8 - hlen;

    root = cJSON_ParseWithLengthOpts(h, (size_t)hlen, &end, 0);
    if (!root) {
        size_t at = end && end >= h && end <= h + hlen ? (size_t)(end - h) : 0;
        st_err(err, errlen, "%s: header is not valid JSON (near byte %zu)", label, at + 8);
        goto fail;
    }
    /* Writers pad the header with spaces so the data area is aligned; nothing else may
     * follow the JSON value. */
    for (const char *p = end; p < h + hlen; p++) {
        if (!st_is_space(*p)) {
            st_err(err, errlen, "%s: unexpected byte 0x%02x after the header JSON at byte %zu",
                   label, (unsigned char)*p, (size_t)(p - h) + 8);
            goto fail;
        }
    }
    if (!cJSON_IsObject(root)) {
        st_err(err, errlen, "%s: header is not a JSON object", label);
        goto fail;
    }
    if ((rc = st_check_integers(h, (size_t)(end - h), label, err, errlen)) < 0) goto fail;
    rc = PEFTD_EFORMAT;

    /* Size the flat tables: count the tensors and their name bytes. */
    size_t n = 0, name_bytes = 0;
    const cJSON *meta = NULL, *c;
    cJSON_ArrayForEach(c, root) {
        size_t nl = strlen(c->string);
        if (strcmp(c->string, "__metadata__") == 0) {
            if (meta) {
                st_err(err, errlen, "%s: duplicate \"__metadata__\"", label);
                goto fail;
            }
            meta = c;
            continue;
        }
        if (nl == 0 || nl > ST_MAX_NAME) {
            st_err(err, errlen, "%s: tensor name of %zu bytes (must be 1..%d): '%.64s'", label,
                   nl, ST_MAX_NAME, c->string);
            goto fail;
        }
        n++;
        name_bytes += nl + 1;
    }
    if (meta && (rc = st_parse_metadata(f, meta, err, errlen)) < 0) goto fail;
    rc = PEFTD_ENOMEM;
    f->tensors = calloc(n ? n : 1, sizeof(st_tensor));
    f->names = malloc(name_bytes ? name_bytes : 1);
    if (!f->tensors || !f->names) {
        st_err(err, errlen, "%s: out of memory for %zu tensors", label, n);
        goto fail;
    }
    char *np = f->names;
    cJSON_ArrayForEach(c, root) {
        if (c == meta) continue;
        st_tensor *t = &f->tensors[f->n];
        size_t nl = strlen(c->string);
        memcpy(np, c->string, nl + 1);
        t->name = np;
        np += nl + 1;
        f->n++;
        if ((rc = st_parse_tensor(f, c, t, err, errlen)) < 0) goto fail;
    }
    cJSON_Delete(root);
    root = NULL;
    return st_check_table(f, err, errlen);
fail:
    cJSON_Delete(root);
    return rc;
}

static st_file *st_new(const char *label) {
    st_file *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->label = strdup(label ? label : "safetensors");
    if (!f->label) {
        free(f);
        return NULL;
    }
    return f;
}

int st_parse(const void *buf, size_t len, const char *label, st_file **out, char *err,
             size_t errlen) {
    *out = NULL;
    if (!buf && len) {
        st_err(err, errlen, "%s: NULL buffer", label ? label : "safetensors");
        return PEFTD_EINVAL;
    }
    st_file *f = st_new(label);
    if (!f) {
        st_err(err, errlen, "%s: out of memory", label ? label : "safetensors");
        return PEFTD_ENOMEM;
    }
    int rc = st_parse_header(f, buf, len, err, errlen);
    if (rc < 0) {
        st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int st_open(const char *path, st_file **out, char *err, size_t errlen) {
    return st_open_ex(path, false, out, err, errlen);
}

int st_open_ex(const char *path, bool read_into_memory, st_file **out, char *err, size_t errlen) {
    *out = NULL;
    int rc, fd = -1;
    st_file *f = st_new(path);
    if (!f) {
        st_err(err, errlen, "%s: out of memory", path);
        return PEFTD_ENOMEM;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        st_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        rc = -errno;
        st_err(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        rc = PEFTD_EIO;
        st_err(err, errlen, "%s: not a regular file", path);
        goto fail;
    }
    /* A zero-length mmap fails; anything under 8 bytes is malformed anyway. */
    if (sb.st_size < 8) {
        rc = PEFTD_EFORMAT;
        st_err(err, errlen, "%s: %lld bytes, too short for the 8-byte header length", path,
               (long long)sb.st_size);
        goto fail;
    }
    file_map fm;
    rc = file_map_open(fd, (size_t)sb.st_size, read_into_memory ? FILE_MAP_READ : FILE_MAP_MMAP, &fm);
    if (rc < 0) {
        st_err(err, errlen, "%s: %s of %lld bytes failed: %s", path, read_into_memory ? "reading" : "mmap",
               (long long)sb.st_size, strerror(-rc));
        rc = PEFTD_EIO;
        goto fail;
    }
    file_map_log(&fm, path);
    f->map = fm.addr;
    f->map_len = fm.len;
    f->map_span = fm.span;
    close(fd);
    fd = -1;
    if ((rc = st_parse_header(f, f->map, f->map_len, err, errlen)) < 0) goto fail;
    *out = f;
    return 0;
fail:
    if (fd >= 0) close(fd);
    st_close(f);
    return rc;
}

size_t st_drop_bytes(st_file *f, const void *p, size_t n) {
    return f && f->map ? file_map_drop(f->map, f->map_span, p, n) : 0;
}

void st_close(st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_span);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->tensors);
    free(f->by_name);
    free(f->names);
    free(f->label);
    free(f);
}

size_t st_count(const st_file *f) { return f->n; }

const st_tensor *st_get(const st_file *f, size_t i) { return i < f->n ? &f->tensors[i] : NULL; }

size_t st_index(const st_file *f, const st_tensor *t) { return (size_t)(t - f->tensors); }

const st_tensor *st_find(const st_file *f, const char *name) {
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const st_tensor *t = &f->tensors[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

size_t st_metadata_count(const st_file *f) { return f->n_meta; }

int st_metadata_get(const st_file *f, size_t i, const char **key, const char **value) {
    if (i >= f->n_meta) return PEFTD_ERANGE;
    *key = f->meta_keys[i];
    *value = f->meta_vals[i];
    return 0;
}

const char *st_metadata_find(const st_file *f, const char *key) {
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

const char *st_label(const st_file *f) { return f->label; }
