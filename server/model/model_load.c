/* server/model/model_load.c — model_load() / model_free(): a Hugging Face Llama-family
 * directory (config.json + model.safetensors or a sharded model.safetensors.index.json)
 * → a model whose kmat views live in the backend's memory. A .gguf path (or a directory
 * holding exactly one .gguf and no config.json) goes to server/model/model_load_gguf.c.
 *
 * Every expected tensor is looked up by its HF name and checked (dtype f32/f16/bf16, shape
 * from the config); every tensor left over is either ignored with a debug log (buffers
 * such as rotary_emb.inv_freq, an lm_head.weight written next to tied embeddings) or, when
 * it is a bias the config does not announce (qkv_bias / o_bias), refused by name. On the CPU backend the views
 * point into the read-only mappings; other backends receive one allocation holding a copy
 * of every weight, after which the mappings are closed.
 */
#include "server/model/model.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "adapter_store/safetensors.h"
#include "server/model/gguf.h"
#include "server/model/model_quant.h"
#include "server/model/model_load_gguf.h"
#include "server/model/model_load_internal.h"
#include "lib/half.h"
#include "lib/log.h"

/* config.json is a few kB; 1 MB leaves room for verbose configs without letting a broken
 * file make us read gigabytes. */
#define ML_MAX_CONFIG_BYTES (1u << 20)
/* A 405B model's index is ~100 kB; 64 MB is generous for any real one. */
#define ML_MAX_INDEX_BYTES (64u << 20)
/* Real checkpoints have at most a few hundred shards. */
#define ML_MAX_SHARDS 4096
/* Device allocations are aligned like cudaMalloc's (256 B) so every weight starts aligned. */
#define ML_DEVICE_ALIGN 256

/* State of one load, beyond what the model keeps. */
typedef struct {
    model *m;
    const model_load_opts *opts;
    const cJSON *weight_map; /* from the index; NULL for a single model.safetensors */
    bool **used;             /* [n_shards][n_tensors]: tensors taken by the model */
    char *err;
    size_t errlen;
} ml_ctx;

static void ml_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void ml_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int ml_path(char *buf, size_t cap, const char *dir, const char *file, char *err,
                   size_t errlen) {
    int n = snprintf(buf, cap, "%s/%s", dir, file);
    if (n < 0 || (size_t)n >= cap) {
        ml_err(err, errlen, "%s/%s: path too long", dir, file);
        return PEFTD_EINVAL;
    }
    return 0;
}

/* Reads a whole regular file of at most max bytes into a NUL-terminated buffer. */
static int ml_read_file(const char *path, size_t max, char **out, size_t *len, char *err,
                        size_t errlen) {
    int rc, fd = open(path, O_RDONLY | O_CLOEXEC);
    char *buf = NULL;
    struct stat sb;
    *out = NULL;
    if (fd < 0) {
        rc = errno == ENOENT ? PEFTD_ENOTFOUND : -errno;
        ml_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return rc;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = PEFTD_EIO;
        ml_err(err, errlen, "%s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)sb.st_size > max) {
        rc = PEFTD_EFORMAT;
        ml_err(err, errlen, "%s: %lld bytes, more than the %zu allowed", path,
               (long long)sb.st_size, max);
        goto fail;
    }
    size_t n = (size_t)sb.st_size, got = 0;
    if (!(buf = malloc(n + 1))) {
        rc = PEFTD_ENOMEM;
        ml_err(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            rc = PEFTD_EIO;
            ml_err(err, errlen, "%s: read failed: %s", path, r < 0 ? strerror(errno) : "short");
            goto fail;
        }
        got += (size_t)r;
    }
    buf[n] = 0;
    close(fd);
    *out = buf;
    *len = n;
    return 0;
fail:
    free(buf);
    close(fd);
    return rc;
}

/* The served id: the directory's base name, trailing slashes ignored; "." and ".." are
 * resolved so that `peftd serve .` does not serve a model called ".". */
static int ml_set_name(model *m, const char *dir, char *err, size_t errlen) {
    char tmp[sizeof m->dir], *resolved = NULL;
    snprintf(tmp, sizeof tmp, "%s", dir);
    size_t n = strlen(tmp);
    while (n > 1 && tmp[n - 1] == '/') tmp[--n] = 0;
    const char *base = strrchr(tmp, '/') ? strrchr(tmp, '/') + 1 : tmp;
    if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
        resolved = realpath(dir, NULL);
        if (resolved) base = strrchr(resolved, '/') + 1;
    }
    int rc = 0;
    if (!*base || strlen(base) >= sizeof m->name) {
        ml_err(err, errlen, "%s: cannot derive a model name (1..%zu bytes) from the directory",
               dir, sizeof m->name - 1);
        rc = PEFTD_EINVAL;
    } else {
        memcpy(m->name, base, strlen(base) + 1);
    }
    free(resolved);
    return rc;
}

/* A shard named by the index must be a plain file inside the model directory. */
static bool ml_plain_name(const char *s) {
    return *s && !strchr(s, '/') && !strstr(s, "..");
}

static int ml_shard_index(const struct model_storage *s, const char *name) {
    for (int i = 0; i < s->n_shards; i++)
        if (strcmp(s->shard_names[i], name) == 0) return i;
    return -1;
}

static int ml_open_shard(struct model_storage *s, const char *dir, const char *name, bool no_mmap, char *err,
                         size_t errlen) {
    char path[sizeof ((model *)0)->dir + 256];
    int rc = ml_path(path, sizeof path, dir, name, err, errlen);
    if (rc < 0) return rc;
    s->shard_names[s->n_shards] = strdup(name);
    if (!s->shard_names[s->n_shards]) {
        ml_err(err, errlen, "%s: out of memory", path);
        return PEFTD_ENOMEM;
    }
    rc = st_open_ex(path, no_mmap, &s->shards[s->n_shards], err, errlen);
    if (rc < 0) {
        free(s->shard_names[s->n_shards]);
        s->shard_names[s->n_shards] = NULL;
        if (rc == -ENOENT) rc = PEFTD_ENOTFOUND;
        return rc;
    }
    s->n_shards++;
    return 0;
}

static int ml_alloc_shards(struct model_storage *s, int n) {
    s->shards = calloc((size_t)n, sizeof *s->shards);
    s->shard_names = calloc((size_t)n, sizeof *s->shard_names);
    return s->shards && s->shard_names ? 0 : PEFTD_ENOMEM;
}

/* Opens every shard named by model.safetensors.index.json; *index_out keeps the parsed
 * index (its weight_map is needed for lookups) until the load ends. */
static int ml_open_index(ml_ctx *c, const char *dir, const char *path, cJSON **index_out) {
    struct model_storage *s = c->m->storage;
    char *text = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    const cJSON *e;
    int rc = ml_read_file(path, ML_MAX_INDEX_BYTES, &text, &len, c->err, c->errlen);
    if (rc < 0) return rc;
    rc = PEFTD_EFORMAT;
    root = cJSON_ParseWithLength(text, len);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        ml_err(c->err, c->errlen, "%s: %s", path,
               root ? "no \"weight_map\" object" : "not valid JSON");
        goto fail;
    }
    int n_entries = cJSON_GetArraySize(wm);
    if ((rc = ml_alloc_shards(s, n_entries < ML_MAX_SHARDS ? n_entries + 1 : ML_MAX_SHARDS)) <
        0) {
        ml_err(c->err, c->errlen, "%s: out of memory", path);
        goto fail;
    }
    rc = PEFTD_EFORMAT;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e)) {
            ml_err(c->err, c->errlen, "%s: weight_map entry '%.200s' is not a file name", path,
                   e->string);
            goto fail;
        }
        if (!ml_plain_name(e->valuestring)) {
            ml_err(c->err, c->errlen,
                   "%s: weight_map entry '%.200s' names shard \"%.200s\", which is not a plain "
                   "file name inside the model directory",
                   path, e->string, e->valuestring);
            goto fail;
        }
        if (ml_shard_index(s, e->valuestring) >= 0) continue;
        if (s->n_shards == ML_MAX_SHARDS) {
            ml_err(c->err, c->errlen, "%s: more than %d shards", path, ML_MAX_SHARDS);
            goto fail;
        }
        if ((rc = ml_open_shard(s, dir, e->valuestring, c->opts && c->opts->no_mmap, c->err, c->errlen)) < 0) goto fail;
        rc = PEFTD_EFORMAT;
    }
    if (s->n_shards == 0) {
        ml_err(c->err, c->errlen, "%s: weight_map is empty", path);
        goto fail;
    }
    /* Every entry must be where the index says, or the index and shards disagree. */
    cJSON_ArrayForEach(e, wm) {
        const st_file *f = s->shards[ml_shard_index(s, e->valuestring)];
        if (!st_find(f, e->string)) {
            ml_err(c->err, c->errlen, "%s: weight_map puts '%.200s' in %s, which does not hold it",
                   path, e->string, e->valuestring);
            goto fail;
        }
    }
    free(text);
    c->weight_map = wm;
    *index_out = root;
    return 0;
fail:
    cJSON_Delete(root);
    free(text);
    return rc;
}

static int ml_open_weights(ml_ctx *c, const char *dir, cJSON **index_out) {
    char path[sizeof c->m->dir + 64];
    struct stat sb;
    int rc = ml_path(path, sizeof path, dir, "model.safetensors.index.json", c->err, c->errlen);
    if (rc < 0) return rc;
    *index_out = NULL;
    if (stat(path, &sb) == 0) return ml_open_index(c, dir, path, index_out);
    if (errno != ENOENT) {
        ml_err(c->err, c->errlen, "%s: %s", path, strerror(errno));
        return -errno;
    }
    if ((rc = ml_alloc_shards(c->m->storage, 1)) < 0) {
        ml_err(c->err, c->errlen, "%s: out of memory", dir);
        return rc;
    }
    rc = ml_open_shard(c->m->storage, dir, "model.safetensors", c->opts && c->opts->no_mmap, c->err, c->errlen);
    if (rc == PEFTD_ENOTFOUND)
        ml_err(c->err, c->errlen,
               "%s: neither model.safetensors nor model.safetensors.index.json found (.bin "
               "pickle checkpoints are not read)",
               dir);
    return rc;
}

static void ml_fmt_shape(const st_tensor *t, char *buf, size_t cap) {
    size_t off = 0;
    buf[0] = 0;
    off += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->ndim && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? ", " : "",
                                (long long)t->shape[i]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
}

/* Finds tensor `name`, checks dtype and shape ([cols] when rows == 0, else [rows, cols]) and
 * points *out at its bytes in the mapping. */
static int ml_take(ml_ctx *c, const char *name, int64_t rows, int64_t cols, kmat *out) {
    struct model_storage *s = c->m->storage;
    int shard = 0;
    if (c->weight_map) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(c->weight_map, name);
        if (!e) {
            ml_err(c->err, c->errlen, "%s: missing tensor '%s' (not in the index's weight_map)",
                   c->m->dir, name);
            return PEFTD_ENOTFOUND;
        }
        shard = ml_shard_index(s, e->valuestring);
    }
    const st_file *f = s->shards[shard];
    const char *file = s->shard_names[shard];
    const st_tensor *t = st_find(f, name);
    if (!t) {
        ml_err(c->err, c->errlen, "%s: missing tensor '%s'", file, name);
        return PEFTD_ENOTFOUND;
    }
    kdtype dt;
    if (!st_dtype_to_kdtype(t->dtype, &dt)) {
        ml_err(c->err, c->errlen, "%s: tensor '%s' has dtype %s (only F32, F16, BF16)", file,
               name, st_dtype_name(t->dtype));
        return PEFTD_EUNSUPPORTED;
    }
    bool ok = rows ? t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols
                   : t->ndim == 1 && t->shape[0] == cols;
    if (!ok) {
        char got[128];
        ml_fmt_shape(t, got, sizeof got);
        if (rows)
            ml_err(c->err, c->errlen, "%s: tensor '%s' has shape %s, config expects [%lld, %lld]",
                   file, name, got, (long long)rows, (long long)cols);
        else
            ml_err(c->err, c->errlen, "%s: tensor '%s' has shape %s, config expects [%lld]",
                   file, name, got, (long long)cols);
        return PEFTD_EFORMAT;
    }
    c->used[shard][st_index(f, t)] = true;
    out->data = t->data;
    out->dtype = dt;
    out->rows = rows ? rows : 1;
    out->cols = cols;
    c->m->weight_bytes += t->nbytes;
    return 0;
}

/* The projection biases the config announces: 1-D [out] tensors (Qwen2: q/k/v; Llama
 * attention_bias: q/k/v/o); and Qwen3's per-head q_norm / k_norm weights, 1-D [head_dim]. */
static int ml_take_biases(ml_ctx *c, int i) {
    const model_config *cfg = &c->m->cfg;
    model_layer *l = &c->m->layers[i];
    int64_t d = cfg->hidden_size, q = (int64_t)cfg->n_heads * cfg->head_dim,
            kv = (int64_t)cfg->n_kv_heads * cfg->head_dim;
    struct {
        bool want;
        const char *suffix;
        int64_t cols;
        kmat *dst;
    } b[] = {
        {cfg->qkv_bias, "self_attn.q_proj.bias", q, &l->bq},
        {cfg->qkv_bias, "self_attn.k_proj.bias", kv, &l->bk},
        {cfg->qkv_bias, "self_attn.v_proj.bias", kv, &l->bv},
        {cfg->o_bias, "self_attn.o_proj.bias", d, &l->bo},
        {cfg->qk_norm, "self_attn.q_norm.weight", cfg->head_dim, &l->q_norm},
        {cfg->qk_norm, "self_attn.k_norm.weight", cfg->head_dim, &l->k_norm},
    };
    for (size_t k = 0; k < sizeof b / sizeof b[0]; k++) {
        char name[128];
        if (!b[k].want) continue;
        snprintf(name, sizeof name, "model.layers.%d.%s", i, b[k].suffix);
        int rc = ml_take(c, name, 0, b[k].cols, b[k].dst);
        if (rc < 0) return rc;
    }
    return 0;
}

/* Row view [row0, row0 + rows) of a weight (rows are contiguous: no copy). */
static kmat ml_rows(const kmat *w, int64_t row0, int64_t rows) {
    kmat v = *w;
    v.data = (const uint8_t *)w->data + (size_t)row0 * kdtype_row_bytes(w->dtype, w->cols);
    v.rows = rows;
    return v;
}

/* Phi-3: self_attn.qkv_proj.weight [q + kv + kv, hidden] (rows q; k; v, as Phi3Attention
 * slices its output) and mlp.gate_up_proj.weight [2 * inter, hidden] (chunk(2): gate; up),
 * split into the row views the forward uses. */
static int ml_take_fused(ml_ctx *c, int i, int64_t q, int64_t kv, int64_t ff) {
    model_layer *l = &c->m->layers[i];
    int64_t d = c->m->cfg.hidden_size;
    char name[128];
    kmat qkv, gu;
    int rc;
    snprintf(name, sizeof name, "model.layers.%d.self_attn.qkv_proj.weight", i);
    if ((rc = ml_take(c, name, q + 2 * kv, d, &qkv)) < 0) return rc;
    snprintf(name, sizeof name, "model.layers.%d.mlp.gate_up_proj.weight", i);
    if ((rc = ml_take(c, name, 2 * ff, d, &gu)) < 0) return rc;
    l->wq = ml_rows(&qkv, 0, q);
    l->wk = ml_rows(&qkv, q, kv);
    l->wv = ml_rows(&qkv, q + kv, kv);
    l->w_gate = ml_rows(&gu, 0, ff);
    l->w_up = ml_rows(&gu, ff, ff);
    return 0;
}

static int ml_take_layer(ml_ctx *c, int i) {
    const model_config *cfg = &c->m->cfg;
    model_layer *l = &c->m->layers[i];
    int64_t d = cfg->hidden_size, q = (int64_t)cfg->n_heads * cfg->head_dim,
            kv = (int64_t)cfg->n_kv_heads * cfg->head_dim, ff = cfg->intermediate_size;
    int rc;
    if (cfg->fused_proj && (rc = ml_take_fused(c, i, q, kv, ff)) < 0) return rc;
    /* Gemma: post_attention_layernorm normalises the attention output; the MLP's input norm
     * is pre_feedforward_layernorm and its output norm post_feedforward_layernorm. */
    bool g = cfg->gemma;
    struct {
        const char *suffix;
        int64_t rows, cols;
        kmat *dst;
    } w[] = {
        {"input_layernorm.weight", 0, d, &l->attn_norm},
        {"self_attn.q_proj.weight", q, d, &l->wq},
        {"self_attn.k_proj.weight", kv, d, &l->wk},
        {"self_attn.v_proj.weight", kv, d, &l->wv},
        {"self_attn.o_proj.weight", d, q, &l->wo},
        {"post_attention_layernorm.weight", 0, d, g ? &l->post_attn_norm : &l->ffn_norm},
        {"mlp.gate_proj.weight", ff, d, &l->w_gate},
        {"mlp.up_proj.weight", ff, d, &l->w_up},
        {"mlp.down_proj.weight", d, ff, &l->w_down},
        {g ? "pre_feedforward_layernorm.weight" : NULL, 0, d, &l->ffn_norm},
        {g ? "post_feedforward_layernorm.weight" : NULL, 0, d, &l->post_ffn_norm},
    };
    for (size_t k = 0; k < sizeof w / sizeof w[0]; k++) {
        char name[128];
        if (!w[k].suffix) continue;
        if (cfg->fused_proj && w[k].dst->data) continue; /* split from a fused weight */
        snprintf(name, sizeof name, "model.layers.%d.%s", i, w[k].suffix);
        if ((rc = ml_take(c, name, w[k].rows, w[k].cols, w[k].dst)) < 0) return rc;
    }
    return ml_take_biases(c, i);
}

/* Gemma's norms scale by (1 + w), computed in f32 (Gemma2RMSNorm: x * (1 + w.float())): every
 * norm view is repointed at an f32 copy holding 1 + w (exact: one f32 add, as torch does), so
 * the rmsnorm op needs no variant. One host allocation, kept for the model's lifetime (the CPU
 * backend uses it in place; other backends upload it with the weights). */
static int ml_gemma_norms(ml_ctx *c) {
    model *m = c->m;
    int L = m->cfg.n_layers;
    kmat **all = malloc(((size_t)L * 6 + 1) * sizeof *all);
    if (!all) return PEFTD_ENOMEM;
    int n = 0;
    size_t total = 0;
    all[n++] = &m->final_norm;
    for (int i = 0; i < L; i++) {
        model_layer *l = &m->layers[i];
        kmat *ns[] = {&l->attn_norm, &l->post_attn_norm, &l->ffn_norm, &l->post_ffn_norm, &l->q_norm, &l->k_norm};
        for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++)
            if (ns[j]->data) all[n++] = ns[j];
    }
    for (int i = 0; i < n; i++) total += (size_t)all[i]->cols;
    float *buf = m->storage->gemma_norms = malloc(total * sizeof(float));
    if (!buf) {
        free(all);
        return PEFTD_ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        kmat *w = all[i];
        for (int64_t j = 0; j < w->cols; j++) {
            float v;
            if (w->dtype == KDT_F32) {
                memcpy(&v, (const uint8_t *)w->data + 4 * j, 4); /* unaligned-safe */
            } else {
                uint16_t h;
                memcpy(&h, (const uint8_t *)w->data + 2 * j, 2);
                v = w->dtype == KDT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
            }
            buf[j] = 1.0f + v;
        }
        w->data = buf;
        w->dtype = KDT_F32;
        buf += w->cols;
    }
    free(all);
    return 0;
}

static bool ml_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Tensors the model did not take: biases the config does not announce (mlp biases, a q_proj
 * bias without attention_bias) change the output, so they are refused; other
 * leftovers (rotary_emb.inv_freq buffers, an lm_head next to tied embeddings) are not
 * needed to compute the same function. */
static int ml_check_leftovers(ml_ctx *c) {
    const struct model_storage *s = c->m->storage;
    for (int k = 0; k < s->n_shards; k++) {
        for (size_t i = 0; i < st_count(s->shards[k]); i++) {
            if (c->used[k][i]) continue;
            const char *name = st_get(s->shards[k], i)->name;
            if (ml_ends_with(name, ".bias")) {
                ml_err(c->err, c->errlen, "%s: tensor '%s': biases are not supported",
                       s->shard_names[k], name);
                return PEFTD_EUNSUPPORTED;
            }
            LOGD("model %s: ignoring tensor '%s' in %s", c->m->name, name, s->shard_names[k]);
        }
    }
    return 0;
}

/* Non-CPU backends: one allocation, every weight copied in at a 256-byte aligned offset;
 * the layers' host views are kept (host_layers) and so are the mappings. */
static int ml_upload(ml_ctx *c) {
    model *m = c->m;
    kbackend *kb = m->kb;
    int n = 3 + 17 * m->cfg.n_layers;
    kmat **all = malloc((size_t)n * sizeof *all);
    if (!all) {
        ml_err(c->err, c->errlen, "%s: out of memory", m->dir);
        return PEFTD_ENOMEM;
    }
    int k = 0;
    all[k++] = &m->embed;
    all[k++] = &m->final_norm;
    if (!m->cfg.tie_word_embeddings) all[k++] = &m->lm_head;
    for (int i = 0; i < m->cfg.n_layers; i++) {
        model_layer *l = &m->layers[i];
        kmat *ws[] = {&l->attn_norm, &l->wq, &l->wk, &l->wv, &l->wo,
                      &l->ffn_norm, &l->w_gate, &l->w_up, &l->w_down};
        for (size_t j = 0; j < sizeof ws / sizeof ws[0]; j++) all[k++] = ws[j];
        kmat *bs[] = {&l->bq, &l->bk, &l->bv, &l->bo, &l->q_norm, &l->k_norm, &l->post_attn_norm, &l->post_ffn_norm};
        for (size_t j = 0; j < sizeof bs / sizeof bs[0]; j++)
            if (bs[j]->data) all[k++] = bs[j];
    }
    size_t total = 0;
    for (int i = 0; i < k; i++) {
        size_t bytes = (size_t)all[i]->rows * kdtype_row_bytes(all[i]->dtype, all[i]->cols);
        total += (bytes + ML_DEVICE_ALIGN - 1) / ML_DEVICE_ALIGN * ML_DEVICE_ALIGN;
    }
    int rc = 0;
    if (!(m->storage->host_layers = malloc((size_t)m->cfg.n_layers * sizeof(model_layer)))) {
        ml_err(c->err, c->errlen, "%s: out of memory", m->dir);
        rc = PEFTD_ENOMEM;
        goto out;
    }
    memcpy(m->storage->host_layers, m->layers, (size_t)m->cfg.n_layers * sizeof(model_layer));
    m->host_layers = m->storage->host_layers;
    uint8_t *dev = kb->ops->alloc(kb, total);
    if (!dev) {
        ml_err(c->err, c->errlen, "%s: backend %s cannot allocate %zu bytes of weights", m->dir,
               kb->ops->name, total);
        rc = PEFTD_ENOMEM;
        goto out;
    }
    m->storage->device = dev;
    size_t off = 0;
    for (int i = 0; i < k; i++) {
        size_t bytes = (size_t)all[i]->rows * kdtype_row_bytes(all[i]->dtype, all[i]->cols);
        if ((rc = kb->ops->upload(kb, dev + off, all[i]->data, bytes)) < 0) {
            ml_err(c->err, c->errlen, "%s: upload of %zu bytes to backend %s failed: %s", m->dir,
                   bytes, kb->ops->name, peftd_strerror(rc));
            goto out;
        }
        all[i]->data = dev + off;
        off += (bytes + ML_DEVICE_ALIGN - 1) / ML_DEVICE_ALIGN * ML_DEVICE_ALIGN;
    }
    if (m->cfg.tie_word_embeddings) m->lm_head = m->embed;
    /* Uploads may still read the mappings until the stream is drained. */
    if ((rc = kb->ops->synchronize(kb)) < 0) {
        ml_err(c->err, c->errlen, "%s: backend %s failed after the upload: %s", m->dir,
               kb->ops->name, peftd_strerror(rc));
        goto out;
    }
out:
    free(all);
    return rc;
}

/* Whether the backend's op family op takes w in its stored dtype (supports_op). */
static int ml_check_op(ml_ctx *c, const kmat *w, kop op, const char *what) {
    const kbackend *kb = c->m->kb;
    if (kb->ops->supports_op(kb, op, w->dtype)) return 0;
    ml_err(c->err, c->errlen, "%s: backend %s cannot run %s weights of dtype %s", c->m->dir, kb->ops->name, what,
           kdtype_name(w->dtype));
    return PEFTD_EUNSUPPORTED;
}

/* Asks the backend about every weight before any is uploaded. */
static int ml_check_ops(ml_ctx *c) {
    const model *m = c->m;
    int rc;
    if ((rc = ml_check_op(c, &m->embed, KOP_GET_ROWS, "embed_tokens")) < 0 ||
        (rc = ml_check_op(c, &m->final_norm, KOP_RMSNORM, "norm")) < 0 ||
        (rc = ml_check_op(c, &m->lm_head, KOP_MATMUL, "lm_head")) < 0)
        return rc;
    for (int i = 0; i < m->cfg.n_layers; i++) {
        const model_layer *l = &m->layers[i];
        const kmat *norms[] = {&l->attn_norm, &l->ffn_norm, &l->q_norm, &l->k_norm, &l->post_attn_norm,
                               &l->post_ffn_norm};
        const kmat *proj[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
        for (int j = 0; j < 6; j++)
            if (norms[j]->data && (rc = ml_check_op(c, norms[j], KOP_RMSNORM, "layer norm")) < 0) return rc;
        for (int j = 0; j < 7; j++)
            if ((rc = ml_check_op(c, proj[j], KOP_MATMUL, "projection")) < 0) return rc;
        const kmat *bias[] = {&l->bq, &l->bk, &l->bv, &l->bo};
        for (int j = 0; j < 4; j++)
            if (bias[j]->data && (rc = ml_check_op(c, bias[j], KOP_ADD, "projection bias")) < 0) return rc;
    }
    return 0;
}

static int ml_convert_weights(ml_ctx *c);

/* The views a conversion may repoint: every layer's 7 projections, then embed and lm_head. */
static int ml_conv_views(model *m, kmat **v) {
    int n = 0;
    for (int i = 0; i < m->cfg.n_layers; i++) {
        model_layer *l = &m->layers[i];
        kmat *p[7] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
        for (int k = 0; k < 7; k++) v[n++] = p[k];
    }
    v[n++] = &m->embed;
    v[n++] = &m->lm_head;
    return n;
}

/* After ml_convert: the file bytes of every view it repointed (before[i] -> *now[i]) are read no
 * more, unless a view still points into them; their pages go back (mapped: page cache; read in
 * with --no-mmap: private memory that would otherwise be held twice). */
static void ml_drop_replaced(model *m, const kmat *before, kmat **now, int n) {
    const struct model_storage *s = m->storage;
    size_t dropped = 0;
    for (int i = 0; i < n; i++) {
        if (!before[i].data || before[i].data == now[i]->data) continue;
        bool seen = false; /* a tied lm_head: the embedding's range, once */
        for (int k = 0; k < i; k++) seen |= before[k].data == before[i].data;
        if (seen) continue;
        const uint8_t *lo = before[i].data;
        size_t len = kdtype_row_bytes(before[i].dtype, before[i].cols) * (size_t)before[i].rows;
        bool used = false;
        for (int j = 0; j < n && !used; j++) {
            const uint8_t *q = now[j]->data;
            size_t ql = kdtype_row_bytes(now[j]->dtype, now[j]->cols) * (size_t)now[j]->rows;
            used = q && q < lo + len && lo < q + ql;
        }
        if (used) continue;
        if (s->gguf) dropped += gguf_drop_bytes(s->gguf, lo, len);
        for (int k = 0; k < s->n_shards; k++) dropped += st_drop_bytes(s->shards[k], lo, len);
    }
    if (dropped) LOGI("model %s: %.1f MB of the weight files' pages given back (converted or reordered copies "
                      "stand in for them)", m->name, (double)dropped / 1e6);
}

/* At-load "weights" (model_quant.h): asked of the backend first (capability, not name), then
 * the projections converted on the host before any upload; then the backend's preferred
 * layouts; then the replaced file bytes given back. */
static int ml_convert(ml_ctx *c) {
    int n = 7 * c->m->cfg.n_layers + 2;
    kmat **now = malloc(sizeof *now * (size_t)n), *before = malloc(sizeof *before * (size_t)n);
    if (!now || !before) {
        free(now);
        free(before);
        ml_err(c->err, c->errlen, "%s: out of memory", c->m->dir);
        return PEFTD_ENOMEM;
    }
    ml_conv_views(c->m, now);
    for (int i = 0; i < n; i++) before[i] = *now[i];
    int rc = ml_convert_weights(c);
    if (rc == 0) ml_drop_replaced(c->m, before, now, n);
    free(now);
    free(before);
    return rc;
}

static int ml_convert_weights(ml_ctx *c) {
    int dt = c->opts ? c->opts->weights : -1, threads = c->opts ? c->opts->threads : 0, rc;
    const kbackend *kb = c->m->kb;
    if (dt >= 0 && !kb->ops->supports_op(kb, KOP_MATMUL, (kdtype)dt)) {
        ml_err(c->err, c->errlen, "%s: \"weights\": \"%s\" is not supported by backend %s (its matmul does not take %s "
               "weights); use \"weights\": \"stored\" or the cpu backend", c->m->dir, kdtype_name((kdtype)dt),
               kb->ops->name, kdtype_name((kdtype)dt));
        return PEFTD_EUNSUPPORTED;
    }
    if (dt >= 0 &&
        (rc = model_quantize_projections(c->m, (kdtype)dt, threads, c->opts ? c->opts->weights_cache : NULL,
                                         &c->m->storage->converted, c->err, c->errlen)) < 0)
        return rc;
    /* then the layout the backend prefers (capability: preferred_dtype), same results */
    return model_reorder_projections(c->m, threads, &c->m->storage->reordered, c->err, c->errlen);
}

int model__check_ops(model *m, char *err, size_t errlen) {
    ml_ctx c = {.m = m, .err = err, .errlen = errlen};
    return ml_check_ops(&c);
}

int model__upload(model *m, char *err, size_t errlen) {
    ml_ctx c = {.m = m, .err = err, .errlen = errlen};
    return ml_upload(&c);
}

int model__convert(model *m, const model_load_opts *opts, char *err, size_t errlen) {
    ml_ctx c = {.m = m, .opts = opts, .err = err, .errlen = errlen};
    return ml_convert(&c);
}

static int ml_load(ml_ctx *c, const char *dir) {
    model *m = c->m;
    char path[sizeof m->dir + 64], *text = NULL;
    size_t len = 0;
    cJSON *index = NULL;
    int rc;
    if ((rc = ml_path(path, sizeof path, dir, "config.json", c->err, c->errlen)) < 0 ||
        (rc = ml_read_file(path, ML_MAX_CONFIG_BYTES, &text, &len, c->err, c->errlen)) < 0)
        goto out;
    if ((rc = model_config_parse(text, len, &m->cfg, c->err, c->errlen)) < 0) {
        /* Prefix the directory so a log line says which model's config is broken. */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", c->err ? c->err : "");
        ml_err(c->err, c->errlen, "%s/%s", dir, msg);
        goto out;
    }
    if ((rc = model_eos_load(dir, text, len, m->cfg.vocab_size, &m->eos, c->err, c->errlen)) < 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", c->err ? c->err : "");
        ml_err(c->err, c->errlen, "%s/%s", dir, msg);
        goto out;
    }
    if (m->eos.n > 1) {
        char ids[MODEL_MAX_EOS * 12] = "";
        for (int i = 0, o = 0; i < m->eos.n && o < (int)sizeof ids; i++)
            o += snprintf(ids + o, sizeof ids - (size_t)o, "%s%d", i ? ", " : "", (int)m->eos.ids[i]);
        LOGI("model %s: generation stops on any of the eos ids [%s] (%s)", dir, ids, m->eos.source);
    }
    if ((rc = ml_open_weights(c, dir, &index)) < 0) goto out;

    const struct model_storage *s = m->storage;
    c->used = calloc((size_t)s->n_shards, sizeof *c->used);
    m->layers = calloc((size_t)m->cfg.n_layers, sizeof *m->layers);
    rc = PEFTD_ENOMEM;
    if (!c->used || !m->layers) goto nomem;
    for (int k = 0; k < s->n_shards; k++)
        if (!(c->used[k] = calloc(st_count(s->shards[k]) + 1, sizeof(bool)))) goto nomem;

    const model_config *cfg = &m->cfg;
    if ((rc = ml_take(c, "model.embed_tokens.weight", cfg->vocab_size, cfg->hidden_size,
                      &m->embed)) < 0)
        goto out;
    for (int i = 0; i < cfg->n_layers; i++)
        if ((rc = ml_take_layer(c, i)) < 0) goto out;
    if ((rc = ml_take(c, "model.norm.weight", 0, cfg->hidden_size, &m->final_norm)) < 0) goto out;
    if (cfg->tie_word_embeddings)
        m->lm_head = m->embed;
    else if ((rc = ml_take(c, "lm_head.weight", cfg->vocab_size, cfg->hidden_size,
                           &m->lm_head)) < 0)
        goto out;
    if ((rc = ml_check_leftovers(c)) < 0) goto out;
    if (cfg->gemma && (rc = ml_gemma_norms(c)) < 0) goto nomem;
    /* CPU: zero-copy views into the mappings. safetensors offsets are only aligned to the
     * writer's padding (often not to the element size: a bf16 tensor of odd length shifts
     * every later f32 tensor by 2 bytes), so the CPU kernels must load weights with
     * unaligned-safe accesses (memcpy / unaligned SIMD loads), never by casting. */
    m->host_layers = m->layers;
    if ((rc = ml_convert(c)) < 0) goto out;
    if ((rc = ml_check_ops(c)) < 0) goto out;
    if (!m->kb->ops->is_host && (rc = ml_upload(c)) < 0) goto out;
    goto out;
nomem:
    ml_err(c->err, c->errlen, "%s: out of memory", dir);
out:
    if (c->used)
        for (int k = 0; k < m->storage->n_shards; k++) free(c->used[k]);
    free(c->used);
    c->used = NULL;
    cJSON_Delete(index);
    free(text);
    return rc;
}

int model_load(const char *dir, kbackend *kb, model **out, char *err, size_t errlen) {
    return model_load_ex(dir, kb, NULL, out, err, errlen);
}

int model_load_ex(const char *dir, kbackend *kb, const model_load_opts *opts, model **out, char *err,
                  size_t errlen) {
    *out = NULL;
    if (!dir || !kb || !kb->ops) {
        ml_err(err, errlen, "model_load: NULL directory or backend");
        return PEFTD_EINVAL;
    }
    model *m = calloc(1, sizeof *m);
    if (m) m->storage = calloc(1, sizeof *m->storage);
    if (!m || !m->storage) {
        free(m);
        ml_err(err, errlen, "%s: out of memory", dir);
        return PEFTD_ENOMEM;
    }
    m->kb = kb;
    int rc;
    if (strlen(dir) >= sizeof m->dir) {
        ml_err(err, errlen, "model directory path longer than %zu bytes", sizeof m->dir - 1);
        rc = PEFTD_EINVAL;
        goto fail;
    }
    char gguf_file_path[sizeof m->dir];
    if ((rc = model__gguf_resolve(dir, gguf_file_path, sizeof gguf_file_path, err, errlen)) < 0) goto fail;
    if (rc == 1) {
        if ((rc = model__load_gguf(m, gguf_file_path, opts, err, errlen)) < 0) goto fail;
        *out = m;
        return 0;
    }
    memcpy(m->dir, dir, strlen(dir) + 1);
    if ((rc = ml_set_name(m, dir, err, errlen)) < 0) goto fail;
    ml_ctx c = {.m = m, .opts = opts, .err = err, .errlen = errlen};
    if ((rc = ml_load(&c, dir)) < 0) goto fail;
    LOGI("model %s: %s, %d layers, hidden %d, %d/%d heads, vocab %d, %.1f MB of weights in %d "
         "file(s)%s",
         m->name, m->cfg.architecture, m->cfg.n_layers, m->cfg.hidden_size, m->cfg.n_heads,
         m->cfg.n_kv_heads, m->cfg.vocab_size, (double)m->weight_bytes / 1e6,
         m->storage->n_shards, m->cfg.tie_word_embeddings ? ", tied embeddings" : "");
    *out = m;
    return 0;
fail:
    model_free(m);
    return rc;
}

void model_free(model *m) {
    if (!m) return;
    struct model_storage *s = m->storage;
    if (s) {
        if (s->device) m->kb->ops->free(m->kb, s->device);
        for (int i = 0; i < s->n_shards; i++) {
            st_close(s->shards[i]);
            free(s->shard_names[i]);
        }
        free(s->shards);
        free(s->shard_names);
        free(s->host_layers);
        free(s->gemma_norms);
        free(s->converted);
        free(s->reordered);
        gguf_close(s->gguf);
        free(s->gguf_host);
        free(s->chat_template);
        free(s);
    }
    free(m->layers);
    free(m);
}
