/* adapter_store/adapter_stage.c — the per-load helpers every kind loader uses, all on host
 * memory: error messages, tensor lookup and shape/dtype checks, dtype conversion with the
 * finite-value check, staging converted copies for the adapter's block, and the sha256 of
 * the files as uploaded (the cache key). Calls only adapter_core.c below it.
 */
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"
#include "lib/half.h"

int adapter__fail(adapter__ctx *c, int status, const char *fmt, ...) {
    if (c->err && c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* ---------------------------------------------------------------- tensors */

const st_tensor *adapter__take(adapter__ctx *c, const char *name) {
    const st_tensor *t = st_find(c->st, name);
    if (t) c->used[st_index(c->st, t)] = true;
    return t;
}

static void shape_str(const st_tensor *t, char *buf, size_t n) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

static int check_dtype(adapter__ctx *c, const st_tensor *t, kdtype *kd) {
    kdtype k;
    if (!st_dtype_to_kdtype(t->dtype, &k))
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "%s: tensor '%s' has dtype %s (only F32, F16 and BF16 are served)",
                             c->wname, t->name, st_dtype_name(t->dtype));
    if (kd) *kd = k;
    return 0;
}

int adapter__expect(adapter__ctx *c, const char *name, int ndim, int64_t d0, int64_t d1,
                    const st_tensor **out) {
    const st_tensor *t = adapter__take(c, name);
    if (!t)
        return adapter__fail(c, PEFTD_EFORMAT,
                             "%s: tensor '%s' is expected by adapter_config.json but missing",
                             c->wname, name);
    bool ok = t->ndim == ndim && t->shape[0] == d0 && (ndim < 2 || t->shape[1] == d1);
    if (!ok) {
        char got[128], want[64];
        shape_str(t, got, sizeof got);
        if (ndim == 1) snprintf(want, sizeof want, "[%lld]", (long long)d0);
        else snprintf(want, sizeof want, "[%lld, %lld]", (long long)d0, (long long)d1);
        return adapter__fail(c, PEFTD_EINVAL, "%s: tensor '%s' has shape %s, expected %s for base %s",
                             c->wname, name, got, want, c->base->name);
    }
    int rc = check_dtype(c, t, NULL);
    if (rc) return rc;
    *out = t;
    return 0;
}

float adapter__elem(const void *data, kdtype dt, size_t i) {
    const unsigned char *p = (const unsigned char *)data + i * kdtype_size(dt);
    if (dt == KDT_F32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p, 2);
    return dt == KDT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

/* Copies t into a new host buffer of dtype dt, rejecting NaN/Inf. Only same-dtype copies
 * and widening to f32 are asked for, so no value can overflow on the way. */
static int convert(adapter__ctx *c, const st_tensor *t, kdtype dt, void **out) {
    kdtype src = KDT_F32;
    int rc = check_dtype(c, t, &src);
    if (rc) return rc;
    size_t n = (size_t)t->numel, esz = kdtype_size(dt);
    unsigned char *h = malloc(n ? n * esz : 1);
    if (!h) return adapter__fail(c, PEFTD_ENOMEM, "out of memory copying tensor '%s'", t->name);
    for (size_t i = 0; i < n; i++) {
        float v = adapter__elem(t->data, src, i);
        if (!isfinite(v)) {
            free(h);
            return adapter__fail(c, PEFTD_EINVAL, "%s: tensor '%s' holds a non-finite value (%s) at element %zu",
                                 c->wname, t->name, isnan(v) ? "NaN" : "Inf", i);
        }
        if (dt == src) {
            memcpy(h + i * esz, (const unsigned char *)t->data + i * esz, esz);
        } else if (dt == KDT_F32) {
            memcpy(h + i * 4, &v, 4);
        } else {
            uint16_t w = dt == KDT_F16 ? f32_to_f16(v) : f32_to_bf16(v);
            memcpy(h + i * 2, &w, 2);
        }
    }
    *out = h;
    return 0;
}

static int stage_push(adapter__ctx *c, void *host, size_t bytes, kmat *mat, const float **vec) {
    if (adapter__stage_push(&c->stage, host, bytes, true, mat, vec))
        return adapter__fail(c, PEFTD_ENOMEM, "out of memory staging adapter tensors");
    return 0;
}

int adapter__stage_mat(adapter__ctx *c, const st_tensor *t, kdtype dt, kmat *dst, const void **host) {
    void *h = NULL;
    int rc = convert(c, t, dt, &h);
    if (rc) return rc;
    dst->dtype = dt;
    dst->rows = t->ndim == 2 ? t->shape[0] : 1;
    dst->cols = t->ndim == 2 ? t->shape[1] : (t->ndim == 1 ? t->shape[0] : 1);
    dst->data = NULL;
    if (host) *host = h;
    return stage_push(c, h, (size_t)t->numel * kdtype_size(dt), dst, NULL);
}

int adapter__stage_vec(adapter__ctx *c, const st_tensor *t, const float **dst) {
    void *h = NULL;
    int rc = convert(c, t, KDT_F32, &h);
    if (rc) return rc;
    return stage_push(c, h, (size_t)t->numel * sizeof(float), NULL, dst);
}

int adapter__stage_own(adapter__ctx *c, float *v, size_t n, const float **dst) {
    return stage_push(c, v, n * sizeof(float), NULL, dst);
}

int adapter__stage_own_mat(adapter__ctx *c, float *m, int64_t rows, int64_t cols, kmat *dst) {
    dst->dtype = KDT_F32;
    dst->rows = rows;
    dst->cols = cols;
    dst->data = NULL;
    return stage_push(c, m, (size_t)rows * (size_t)cols * sizeof(float), dst, NULL);
}

int adapter__to_f32(adapter__ctx *c, const st_tensor *t, float **out) {
    void *h = NULL;
    int rc = convert(c, t, KDT_F32, &h);
    if (rc == 0) *out = h;
    return rc;
}

/* ---------------------------------------------------------------- hashing */

/* sha256 over the config bytes followed by the weights file bytes, as lowercase hex. */
int adapter__hash_files(adapter__ctx *c, const char *cfg, size_t cfg_len, const char *wpath) {
    int rc = 0;
    FILE *f = NULL;
    unsigned char *buf = NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL) || !EVP_DigestUpdate(md, cfg, cfg_len)) {
        rc = adapter__fail(c, PEFTD_ENOMEM, "sha256: cannot initialise the digest");
        goto fail;
    }
    f = fopen(wpath, "rb");
    buf = malloc(1 << 20);
    if (!f || !buf) {
        rc = adapter__fail(c, f ? PEFTD_ENOMEM : PEFTD_EIO, "%s: cannot read for hashing", wpath);
        goto fail;
    }
    size_t n;
    while ((n = fread(buf, 1, 1 << 20, f)) > 0) {
        if (!EVP_DigestUpdate(md, buf, n)) {
            rc = adapter__fail(c, PEFTD_EIO, "sha256: digest update failed");
            goto fail;
        }
    }
    if (ferror(f)) {
        rc = adapter__fail(c, PEFTD_EIO, "%s: read error while hashing", wpath);
        goto fail;
    }
    unsigned char dg[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    if (!EVP_DigestFinal_ex(md, dg, &dl) || dl != 32) {
        rc = adapter__fail(c, PEFTD_EIO, "sha256: digest final failed");
        goto fail;
    }
    for (unsigned i = 0; i < 32; i++) snprintf(c->a->sha256 + 2 * i, 3, "%02x", dg[i]);
fail:
    free(buf);
    if (f) fclose(f);
    EVP_MD_CTX_free(md);
    return rc;
}
