/* server/model/gguf_tensors.c — GGUF tensor infos: the ggml type table (block sizes and
 * bytes per block, as the format publishes them), parsing of the tensor infos, the data
 * section start, extent checks (alignment, inside the file, no shared bytes) and the
 * lookups by index and name. See gguf.h for the rules. */
#include "server/model/gguf_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Smallest tensor info: name length (8) + ≥ 1 name byte + n_dims (4) + type (4) + offset (8). */
#define GGUF_MIN_TENSOR_INFO 25u

static const struct {
    const char *name;
    uint32_t block, bytes; /* elements per block, bytes per block; 0 = unknown id */
    bool supported;
} gguf_types[GGUF_T_COUNT] = {
    [0] = {"F32", 1, 4, true},        [1] = {"F16", 1, 2, true},
    [2] = {"Q4_0", 32, 18, true},     [3] = {"Q4_1", 32, 20, true},
    [6] = {"Q5_0", 32, 22, true},     [7] = {"Q5_1", 32, 24, true},
    [8] = {"Q8_0", 32, 34, true},     [9] = {"Q8_1", 32, 40, false},
    [10] = {"Q2_K", 256, 84, true},  [11] = {"Q3_K", 256, 110, true}, 
    [12] = {"Q4_K", 256, 144, true},  [13] = {"Q5_K", 256, 176, true},
    [14] = {"Q6_K", 256, 210, true},  [15] = {"Q8_K", 256, 292, false},
    [16] = {"IQ2_XXS", 256, 66, false}, [17] = {"IQ2_XS", 256, 74, false},
    [18] = {"IQ3_XXS", 256, 98, false}, [19] = {"IQ1_S", 256, 50, false},
    [20] = {"IQ4_NL", 32, 18, true},  [21] = {"IQ3_S", 256, 110, false},
    [22] = {"IQ2_S", 256, 82, false}, [23] = {"IQ4_XS", 256, 136, true},
    [24] = {"I8", 1, 1, false},       [25] = {"I16", 1, 2, false},
    [26] = {"I32", 1, 4, false},      [27] = {"I64", 1, 8, false},
    [28] = {"F64", 1, 8, false},      [29] = {"IQ1_M", 256, 56, false},
    [30] = {"BF16", 1, 2, true},      [34] = {"TQ1_0", 256, 54, false},
    [35] = {"TQ2_0", 256, 66, false}, [39] = {"MXFP4", 32, 17, false},
    [40] = {"NVFP4", 64, 36, false},  [41] = {"Q1_0", 128, 18, false},
};

const char *gguf_type_name(uint32_t t) {
    return t < GGUF_T_COUNT && gguf_types[t].name ? gguf_types[t].name : "?";
}
uint32_t gguf_type_block(uint32_t t) { return t < GGUF_T_COUNT ? gguf_types[t].block : 0; }
uint32_t gguf_type_bytes(uint32_t t) { return t < GGUF_T_COUNT ? gguf_types[t].bytes : 0; }
bool gguf_type_supported(uint32_t t) { return t < GGUF_T_COUNT && gguf_types[t].supported; }

uint64_t gguf_row_bytes(uint32_t t, int64_t n) {
    uint32_t b = gguf_type_block(t);
    if (!b || n < 0 || n % b) return 0;
    return (uint64_t)(n / b) * gguf_type_bytes(t);
}

static const char *gguf_tensor_name(const gguf_file *f, size_t i) { return f->tensors[i].name; }

/* Dims, type and offset of one tensor info (the name already read into t->name). */
static int gguf_read_tensor_info(gguf_cur *c, gguf_tensor *t, const char *ctx) {
    const char *label = c->f->label;
    uint32_t nd, type;
    int rc;
    if ((rc = gguf_read_u32(c, &nd, ctx, "n_dims")) < 0) return rc;
    if (nd > GGUF_MAX_DIMS) {
        gguf_err(c->err, c->errlen, "%s: %s: %u dims (at most %d)", label, ctx, nd, GGUF_MAX_DIMS);
        return PEFTD_EFORMAT;
    }
    t->n_dims = (int)nd;
    int64_t numel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t ne;
        if ((rc = gguf_read_u64(c, &ne, ctx, "dim")) < 0) return rc;
        if (ne == 0 || ne > (uint64_t)GGUF_MAX_NUMEL) {
            gguf_err(c->err, c->errlen, "%s: %s: dim %u is %llu (must be 1..2^48)", label, ctx,
                     d, (unsigned long long)ne);
            return PEFTD_EFORMAT;
        }
        t->ne[d] = (int64_t)ne;
        if (__builtin_mul_overflow(numel, (int64_t)ne, &numel) || numel > GGUF_MAX_NUMEL) {
            gguf_err(c->err, c->errlen, "%s: %s: element count overflows (more than 2^48)",
                     label, ctx);
            return PEFTD_EFORMAT;
        }
    }
    t->numel = numel;
    if ((rc = gguf_read_u32(c, &type, ctx, "type")) < 0) return rc;
    if (!gguf_type_block(type)) {
        gguf_err(c->err, c->errlen, "%s: %s: unknown ggml type %u", label, ctx, type);
        return PEFTD_EFORMAT;
    }
    t->type = (gguf_ttype)type;
    if (t->ne[0] % gguf_type_block(type)) {
        gguf_err(c->err, c->errlen, "%s: %s: row length %lld is not a multiple of %s's block of "
                 "%u", label, ctx, (long long)t->ne[0], gguf_type_name(type),
                 gguf_type_block(type));
        return PEFTD_EFORMAT;
    }
    /* numel ≤ 2^48 and bytes per block ≤ 292: no overflow. */
    t->nbytes = (uint64_t)(numel / gguf_type_block(type)) * gguf_type_bytes(type);
    return gguf_read_u64(c, &t->offset, ctx, "offset");
}

static int gguf_cmp_offset(const void *a, const void *b, void *p) {
    const gguf_tensor *ts = p;
    uint64_t x = ts[*(const size_t *)a].offset, y = ts[*(const size_t *)b].offset;
    return x < y ? -1 : x > y;
}

/* Aligned offsets, every tensor inside the data section, no two sharing a byte. */
static int gguf_check_extents(gguf_file *f, char *err, size_t errlen) {
    uint64_t data_len = f->len - f->data_off;
    for (size_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset % f->alignment) {
            gguf_err(err, errlen, "%s: tensor '%.200s': offset %llu is not a multiple of the "
                     "alignment %u", f->label, t->name, (unsigned long long)t->offset,
                     f->alignment);
            return PEFTD_EFORMAT;
        }
        if (t->offset > data_len || t->nbytes > data_len - t->offset) {
            gguf_err(err, errlen, "%s: tensor '%.200s': bytes [%llu, +%llu) of the data section "
                     "run past the end of the file (data section: %llu bytes at byte %llu)",
                     f->label, t->name, (unsigned long long)t->offset,
                     (unsigned long long)t->nbytes, (unsigned long long)data_len,
                     (unsigned long long)f->data_off);
            return PEFTD_EFORMAT;
        }
        t->data = f->buf + f->data_off + t->offset;
    }
    /* Overlaps: neighbours in offset order must not share a byte (every tensor has ≥ 1). */
    size_t *idx = malloc((f->n_tensors ? f->n_tensors : 1) * sizeof *idx);
    if (!idx) {
        gguf_err(err, errlen, "%s: out of memory", f->label);
        return PEFTD_ENOMEM;
    }
    for (size_t i = 0; i < f->n_tensors; i++) idx[i] = i;
    qsort_r(idx, f->n_tensors, sizeof *idx, gguf_cmp_offset, f->tensors);
    for (size_t i = 1; i < f->n_tensors; i++) {
        const gguf_tensor *a = &f->tensors[idx[i - 1]], *b = &f->tensors[idx[i]];
        if (a->offset + a->nbytes > b->offset) {
            gguf_err(err, errlen, "%s: tensors '%.200s' and '%.200s' overlap (offsets %llu and "
                     "%llu)", f->label, a->name, b->name, (unsigned long long)a->offset,
                     (unsigned long long)b->offset);
            free(idx);
            return PEFTD_EFORMAT;
        }
    }
    free(idx);
    return 0;
}

int gguf_parse_tensors(gguf_cur *c, uint64_t n, char *err, size_t errlen) {
    gguf_file *f = c->f;
    int rc;
    if (n > (f->len - c->pos) / GGUF_MIN_TENSOR_INFO) {
        gguf_err(err, errlen, "%s: %llu tensors cannot fit in the %zu bytes left at byte %zu",
                 f->label, (unsigned long long)n, f->len - c->pos, c->pos);
        return PEFTD_EFORMAT;
    }
    if (n && (!(f->tensors = calloc(n, sizeof *f->tensors)) ||
              !(f->t_sorted = malloc(n * sizeof(size_t))))) {
        gguf_err(err, errlen, "%s: out of memory", f->label);
        return PEFTD_ENOMEM;
    }
    char ctx[GGUF_MAX_NAME + 16];
    for (uint64_t i = 0; i < n; i++) {
        gguf_tensor *t = &f->tensors[i];
        char *name = NULL;
        snprintf(ctx, sizeof ctx, "tensor info %llu", (unsigned long long)i);
        if ((rc = gguf_read_name(c, GGUF_MAX_NAME, &name, ctx, "tensor name")) < 0) return rc;
        t->name = name;
        f->n_tensors = i + 1; /* the name is owned by f now */
        snprintf(ctx, sizeof ctx, "tensor '%.200s'", name);
        if ((rc = gguf_read_tensor_info(c, t, ctx)) < 0) return rc;
    }
    /* The data section starts at the next multiple of the alignment. */
    uint64_t a = f->alignment, start = ((uint64_t)c->pos + a - 1) / a * a;
    if (start > f->len) {
        if (n) {
            gguf_err(err, errlen, "%s: truncated: the data section (byte %llu) starts past the "
                     "end of the file (%zu bytes)", f->label, (unsigned long long)start, f->len);
            return PEFTD_EFORMAT;
        }
        start = f->len;
    }
    f->data_off = start;
    if ((rc = gguf_sort_unique(f, f->t_sorted, f->n_tensors, gguf_tensor_name, "tensor name",
                               err, errlen)) < 0)
        return rc;
    return gguf_check_extents(f, err, errlen);
}

size_t gguf_tensor_count(const gguf_file *f) { return f->n_tensors; }

const gguf_tensor *gguf_tensor_at(const gguf_file *f, size_t i) {
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    size_t lo = 0, hi = f->t_sorted ? f->n_tensors : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->tensors[f->t_sorted[mid]].name, name);
        if (c == 0) return &f->tensors[f->t_sorted[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}
