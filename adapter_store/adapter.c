/* adapter_store/adapter.c — the kind-independent half of adapter import: finding and
 * hashing the files of an adapter directory, detecting PEFT vs AdapterHub, dispatching to
 * the kind's loader, tensor checks and dtype conversion, and the final upload of every
 * staged tensor into one backend block per adapter. Also the small name/shape helpers of
 * adapter.h and adapter_free().
 *
 * Nothing of the weights file is kept after loading: tensors are copied (converted where
 * needed) into host buffers, uploaded, and the mapping is closed.
 */
#include "adapter_store/adapter_internal.h"

#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapter_store/json_check.h"
#include "lib/half.h"

/* adapter_config.json is a few kB; a rank_pattern + alpha_pattern over every module of a
 * 126-layer model (2 × 882 keys of ~40 bytes) is ~80 kB. 1 MiB is a > 10x margin; anything
 * larger is not a config we want to parse (issue 9 #6). */
#define ADAPTER_MAX_CONFIG (1u << 20)
/* JSON values cJSON may allocate for it (~64 bytes each): that config is ~2,000 values. */
#define ADAPTER_MAX_CONFIG_VALUES 65536u
/* Tensors start on 64-byte boundaries inside the adapter's block (cache line / AVX-512). */
#define ADAPTER_ALIGN 64

struct adapter_storage {
    void *block; /* backend memory holding every tensor; NULL when none */
};

const char *adapter_kind_name(adapter_kind k) {
    switch (k) {
    case ADAPTER_LORA: return "lora";
    case ADAPTER_IA3: return "ia3";
    case ADAPTER_PROMPT_TUNING: return "prompt_tuning";
    case ADAPTER_PREFIX_TUNING: return "prefix_tuning";
    case ADAPTER_BOTTLENECK: return "bottleneck";
    }
    return "?";
}

const char *adapter_module_name(adapter_module m) {
    static const char *const names[AMOD_COUNT] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                  "gate_proj", "up_proj", "down_proj"};
    return (unsigned)m < AMOD_COUNT ? names[m] : "?";
}

void adapter_module_shape(const adapter_base *b, adapter_module m, int *out, int *in) {
    int q = b->n_heads * b->head_dim, kv = b->n_kv_heads * b->head_dim;
    int o = 0, i = 0;
    switch (m) {
    case AMOD_Q: o = q, i = b->hidden; break;
    case AMOD_K:
    case AMOD_V: o = kv, i = b->hidden; break;
    case AMOD_O: o = b->hidden, i = q; break;
    case AMOD_GATE:
    case AMOD_UP: o = b->intermediate, i = b->hidden; break;
    case AMOD_DOWN: o = b->hidden, i = b->intermediate; break;
    default: break;
    }
    if (out) *out = o;
    if (in) *in = i;
}

int adapter__fail(adapter__ctx *c, int status, const char *fmt, ...) {
    if (c->err && c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return status;
}

void adapter__note_rank(adapter *a, int r) {
    if (r > a->max_rank) a->max_rank = r;
    for (int i = 0; i < a->n_ranks; i++)
        if (a->ranks[i] == r) return;
    if (a->n_ranks < (int)(sizeof a->ranks / sizeof a->ranks[0])) {
        /* kept sorted so reports are stable whatever order modules are visited in */
        int i = a->n_ranks++;
        while (i > 0 && a->ranks[i - 1] > r) {
            a->ranks[i] = a->ranks[i - 1];
            i--;
        }
        a->ranks[i] = r;
    }
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
    adapter__stage *s = &c->stage;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        adapter__item *it = realloc(s->items, cap * sizeof *it);
        if (!it) {
            free(host);
            return adapter__fail(c, PEFTD_ENOMEM, "out of memory staging adapter tensors");
        }
        s->items = it;
        s->cap = cap;
    }
    s->items[s->n++] = (adapter__item){.host = host, .bytes = bytes, .mat = mat, .vec = vec};
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

int adapter__to_f32(adapter__ctx *c, const st_tensor *t, float **out) {
    void *h = NULL;
    int rc = convert(c, t, KDT_F32, &h);
    if (rc == 0) *out = h;
    return rc;
}

static void stage_clear(adapter__stage *s) {
    for (size_t i = 0; i < s->n; i++) free(s->items[i].host);
    free(s->items);
    memset(s, 0, sizeof *s);
}

/* One alloc for every staged tensor, then one upload each; pointers are patched only once
 * the whole adapter is in place. */
static int stage_upload(adapter__ctx *c) {
    adapter *a = c->a;
    kbackend *kb = a->kb;
    size_t total = 0;
    for (size_t i = 0; i < c->stage.n; i++)
        total += (c->stage.items[i].bytes + ADAPTER_ALIGN - 1) / ADAPTER_ALIGN * ADAPTER_ALIGN;
    if (total == 0) return 0;
    unsigned char *block = kb->ops->alloc(kb, total);
    if (!block)
        return adapter__fail(c, PEFTD_ENOMEM, "%s: cannot allocate %zu bytes of %s memory for the adapter",
                             c->dir, total, kb->ops->name);
    a->storage->block = block;
    size_t off = 0;
    for (size_t i = 0; i < c->stage.n; i++) {
        adapter__item *it = &c->stage.items[i];
        int rc = kb->ops->upload(kb, block + off, it->host, it->bytes);
        if (rc) return adapter__fail(c, rc, "%s: uploading adapter tensors: %s", c->dir, peftd_strerror(rc));
        if (it->mat) it->mat->data = block + off;
        else *it->vec = (const float *)(const void *)(block + off);
        off += (it->bytes + ADAPTER_ALIGN - 1) / ADAPTER_ALIGN * ADAPTER_ALIGN;
    }
    return kb->ops->synchronize(kb);
}

/* ---------------------------------------------------------------- files */

static int path_join(adapter__ctx *c, const char *name, char *buf, size_t n) {
    if ((size_t)snprintf(buf, n, "%s/%s", c->dir, name) >= n)
        return adapter__fail(c, PEFTD_EINVAL, "%s: path too long", c->dir);
    return 0;
}

static bool file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int read_config(adapter__ctx *c, char **text, size_t *len) {
    char path[4200];
    int rc = path_join(c, "adapter_config.json", path, sizeof path);
    if (rc) return rc;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        return adapter__fail(c, e == ENOENT ? PEFTD_EFORMAT : -e, "%s: adapter_config.json: %s", c->dir,
                             strerror(e));
    }
    char *buf = malloc(ADAPTER_MAX_CONFIG + 1);
    size_t n = buf ? fread(buf, 1, ADAPTER_MAX_CONFIG + 1, f) : 0;
    bool bad = buf && ferror(f);
    fclose(f);
    if (!buf) return adapter__fail(c, PEFTD_ENOMEM, "out of memory reading adapter_config.json");
    if (bad) {
        free(buf);
        return adapter__fail(c, PEFTD_EIO, "%s: adapter_config.json: read error", c->dir);
    }
    if (n > ADAPTER_MAX_CONFIG) {
        free(buf);
        return adapter__fail(c, PEFTD_EINVAL, "%s: adapter_config.json is larger than %u bytes", c->dir,
                             ADAPTER_MAX_CONFIG);
    }
    size_t values = st_json_value_bound(buf, n);
    if (values > ADAPTER_MAX_CONFIG_VALUES) {
        free(buf);
        return adapter__fail(c, PEFTD_EINVAL, "%s: adapter_config.json holds about %zu JSON values (at most %u)",
                             c->dir, values, ADAPTER_MAX_CONFIG_VALUES);
    }
    buf[n] = 0;
    *text = buf;
    *len = n;
    return 0;
}

/* sha256 over the config bytes followed by the weights file bytes, as lowercase hex. */
static int hash_files(adapter__ctx *c, const char *cfg, size_t cfg_len, const char *wpath) {
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

typedef enum { FMT_PEFT, FMT_HUB } adapter_format;

/* The weights file of the format; a pickle-only directory is refused, never unpickled. */
static int find_weights(adapter__ctx *c, adapter_format fmt, char *path, size_t n) {
    static const char *const peft_pickles[] = {"adapter_model.bin", "pytorch_model.bin", NULL};
    static const char *const hub_pickles[] = {"pytorch_adapter.bin", NULL};
    const char *name = fmt == FMT_PEFT ? "adapter_model.safetensors" : "adapter.safetensors";
    const char *const *pickles = fmt == FMT_PEFT ? peft_pickles : hub_pickles;
    c->wname = name;
    int rc = path_join(c, name, path, n);
    if (rc) return rc;
    if (file_exists(path)) return 0;
    for (int i = 0; pickles[i]; i++) {
        char p[4200];
        rc = path_join(c, pickles[i], p, sizeof p);
        if (rc) return rc;
        if (file_exists(p))
            return adapter__fail(c, PEFTD_EUNSUPPORTED,
                                 "%s: pickle weights are not loaded; save with %s=True to get %s", pickles[i],
                                 fmt == FMT_PEFT ? "safe_serialization" : "use_safetensors", name);
    }
    return adapter__fail(c, PEFTD_EFORMAT, "%s: weights file %s is missing", c->dir, name);
}

static int dispatch_peft(adapter__ctx *c) {
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(c->root, "peft_type");
    if (!cJSON_IsString(pt))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field 'peft_type' must be a string");
    const char *t = pt->valuestring;
    if (!strcmp(t, "LORA")) return adapter__load_lora(c);
    if (!strcmp(t, "IA3")) return adapter__load_ia3(c);
    if (!strcmp(t, "PROMPT_TUNING")) return adapter__load_prompt(c);
    if (!strcmp(t, "PREFIX_TUNING")) return adapter__load_prefix(c);
    return adapter__fail(c, PEFTD_EUNSUPPORTED,
                         "adapter_config.json: peft_type '%.64s' is not served (LORA, IA3, PROMPT_TUNING, "
                         "PREFIX_TUNING are)",
                         t);
}

bool adapter_accepts_scale(adapter_kind kind) { return kind == ADAPTER_LORA; }

int adapter_check_scale(const adapter *a, double scale, char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    if (!adapter_accepts_scale(a->kind)) {
        if (err && errlen)
            snprintf(err, errlen, "adapter_scale applies to LoRA adapters only (this adapter is %s)",
                     adapter_kind_name(a->kind));
        return PEFTD_EINVAL;
    }
    if (!(scale >= 0 && scale <= ADAPTER_MAX_REQUEST_SCALE)) {
        if (err && errlen) snprintf(err, errlen, "adapter_scale %g is outside [0, %g]", scale, ADAPTER_MAX_REQUEST_SCALE);
        return PEFTD_EINVAL;
    }
    return 0;
}

void adapter_dora_scale_vector(const float *stats, int64_t rows, double t, float *out) {
    for (int64_t j = 0; j < rows; j++) {
        const float *s = stats + j * ADAPTER_DORA_STATS;
        double n2 = (double)s[1] + 2 * t * s[2] + t * t * s[3];
        out[j] = n2 > 0 ? (float)(s[0] / sqrt(n2)) : 0.0f;
    }
}

void adapter_free(adapter *a) {
    if (!a) return;
    if (a->storage) {
        if (a->storage->block) a->kb->ops->free(a->kb, a->storage->block);
        free(a->storage);
    }
    for (int i = 0; a->lora && i < a->n_layers * AMOD_COUNT; i++) free(a->lora[i].dora_stats);
    free(a->lora);
    free(a->ia3);
    free(a->prefix_k);
    free(a->prefix_v);
    free(a->bn_attn);
    free(a->bn_ffn);
    free(a);
}

int adapter_load_dir(const char *dir, const adapter_base *base, kbackend *kb, adapter **out, char *err,
                     size_t errlen) {
    adapter__ctx c = {.dir = dir, .base = base, .err = err, .errlen = errlen};
    char *text = NULL;
    size_t text_len = 0;
    char wpath[4200];
    int rc;
    if (err && errlen) err[0] = 0;
    *out = NULL;
    if (!dir || !base || !kb || base->n_layers <= 0 || base->hidden <= 0)
        return adapter__fail(&c, PEFTD_EINVAL, "adapter_load_dir: missing directory, base or backend");
    if (strlen(dir) >= sizeof((adapter *)0)->source)
        return adapter__fail(&c, PEFTD_EINVAL, "%.64s...: path too long", dir);

    c.a = calloc(1, sizeof *c.a);
    if (c.a) c.a->storage = calloc(1, sizeof *c.a->storage);
    if (!c.a || !c.a->storage) {
        rc = adapter__fail(&c, PEFTD_ENOMEM, "out of memory");
        goto fail;
    }
    c.a->kb = kb;
    c.a->n_layers = base->n_layers;
    snprintf(c.a->source, sizeof c.a->source, "%s", dir);

    if ((rc = read_config(&c, &text, &text_len))) goto fail;
    c.root = cJSON_ParseWithLength(text, text_len);
    if (!c.root) {
        rc = adapter__fail(&c, PEFTD_EFORMAT, "%s: adapter_config.json is not valid JSON", dir);
        goto fail;
    }
    if (!cJSON_IsObject(c.root)) {
        rc = adapter__fail(&c, PEFTD_EFORMAT, "%s: adapter_config.json is not a JSON object", dir);
        goto fail;
    }
    if (json_duplicate_key(c.root)) { /* save_pretrained never writes one; readers disagree on which wins */
        rc = adapter__fail(&c, PEFTD_EFORMAT, "%s: adapter_config.json has the key \"%.64s\" twice", dir,
                           json_duplicate_key(c.root));
        goto fail;
    }
    adapter_format fmt;
    const cJSON *hub_cfg = cJSON_GetObjectItemCaseSensitive(c.root, "config");
    if (cJSON_GetObjectItemCaseSensitive(c.root, "peft_type")) {
        fmt = FMT_PEFT;
        c.cfg = c.root;
    } else if (hub_cfg) {
        if (!cJSON_IsObject(hub_cfg)) {
            rc = adapter__fail(&c, PEFTD_EFORMAT, "adapter_config.json: field 'config' must be an object");
            goto fail;
        }
        fmt = FMT_HUB;
        c.cfg = (cJSON *)hub_cfg;
    } else {
        rc = adapter__fail(&c, PEFTD_EFORMAT,
                           "%s: adapter_config.json has neither 'peft_type' (PEFT) nor 'config' (AdapterHub)", dir);
        goto fail;
    }

    if ((rc = find_weights(&c, fmt, wpath, sizeof wpath))) goto fail;
    if ((rc = st_open(wpath, &c.st, err, errlen))) goto fail;
    c.used = calloc(st_count(c.st) + 1, sizeof *c.used);
    if (!c.used) {
        rc = adapter__fail(&c, PEFTD_ENOMEM, "out of memory");
        goto fail;
    }

    rc = fmt == FMT_PEFT ? dispatch_peft(&c) : adapter__load_hub(&c);
    if (rc) goto fail;

    for (size_t i = 0; i < st_count(c.st); i++) {
        const st_tensor *t = st_get(c.st, i);
        if (!c.used[i]) {
            rc = adapter__fail(&c, PEFTD_EFORMAT, "%s: unexpected tensor '%s' (not implied by adapter_config.json)",
                               c.wname, t->name);
            goto fail;
        }
        c.a->n_params += t->numel;
        c.a->bytes += t->nbytes;
    }
    if ((rc = hash_files(&c, text, text_len, wpath))) goto fail;
    if ((rc = stage_upload(&c))) goto fail;

    adapter__regex_free(&c);
    stage_clear(&c.stage);
    free(c.used);
    st_close(c.st);
    cJSON_Delete(c.root);
    free(text);
    *out = c.a;
    return 0;
fail:
    adapter__regex_free(&c);
    stage_clear(&c.stage);
    free(c.used);
    st_close(c.st);
    cJSON_Delete(c.root);
    free(text);
    adapter_free(c.a);
    return rc;
}
