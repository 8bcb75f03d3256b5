/* server/model/model_load_gguf.c — model__load_gguf(): a GGUF file → a model whose kmat views
 * point into the read-only mapping (see model_load_gguf.h for what is read and the Q/K
 * un-permutation). Owns the one ggml-type → kdtype table, the tensor-name → view mapping and
 * the few host copies a GGUF base needs (un-permuted Q/K rows; an embedding the backend
 * cannot gather from, dequantized).
 */
#include "server/model/model_load_gguf.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lib/huge_alloc.h"
#include "lib/log.h"
#include "server/model/model_load_internal.h"

/* ggml tensor types peftd computes with, and their kdtypes: THE mapping (add a row when
 * kernels.h gains a block type, e.g. {GGUF_T_Q5_K, KDT_Q5_K}). Whether a backend runs a type
 * for an op is still asked of its supports_op. */
static const struct {
    uint32_t ggml;
    kdtype kdt;
} GGUF_KDT[] = {
    {GGUF_T_F32, KDT_F32},   {GGUF_T_F16, KDT_F16},   {GGUF_T_BF16, KDT_BF16},
    {GGUF_T_Q8_0, KDT_Q8_0}, {GGUF_T_Q4_0, KDT_Q4_0}, {GGUF_T_Q4_K, KDT_Q4_K},
    {GGUF_T_Q5_0, KDT_Q5_0}, {GGUF_T_Q4_1, KDT_Q4_1}, {GGUF_T_Q5_1, KDT_Q5_1},
    {GGUF_T_Q5_K, KDT_Q5_K}, {GGUF_T_Q6_K, KDT_Q6_K}, {GGUF_T_IQ4_NL, KDT_IQ4_NL},
    {GGUF_T_IQ4_XS, KDT_IQ4_XS}, {GGUF_T_Q3_K, KDT_Q3_K}, {GGUF_T_Q2_K, KDT_Q2_K},
};
#define N_GGUF_KDT (sizeof GGUF_KDT / sizeof GGUF_KDT[0])

bool model__gguf_kdtype(uint32_t ggml_type, kdtype *out) {
    for (size_t i = 0; i < N_GGUF_KDT; i++)
        if (GGUF_KDT[i].ggml == ggml_type) {
            *out = GGUF_KDT[i].kdt;
            return true;
        }
    return false;
}

static void gl_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void gl_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool gl_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

int model__gguf_resolve(const char *path, char *file, size_t cap, char *err, size_t errlen) {
    struct stat sb;
    bool named = gl_ends_with(path, ".gguf");
    if (stat(path, &sb) != 0 && !named) return 0; /* the HF path reports the missing directory */
    if (named || S_ISREG(sb.st_mode)) { /* a missing FILE.gguf: gguf_open names it */
        if (!named) return 0;
        if (strlen(path) >= cap) {
            gl_err(err, errlen, "%s: path too long", path);
            return PEFTD_EINVAL;
        }
        memcpy(file, path, strlen(path) + 1);
        return 1;
    }
    if (!S_ISDIR(sb.st_mode)) return 0;
    char probe[4608];
    snprintf(probe, sizeof probe, "%s/config.json", path);
    if (stat(probe, &sb) == 0) return 0;
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *e;
    int n = 0;
    char first[256] = "", second[256] = "";
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !gl_ends_with(e->d_name, ".gguf")) continue;
        if (n == 0) snprintf(first, sizeof first, "%s", e->d_name);
        else if (n == 1) snprintf(second, sizeof second, "%s", e->d_name);
        n++;
    }
    closedir(d);
    if (n == 0) return 0;
    if (n > 1) {
        gl_err(err, errlen, "%s: holds %d .gguf files (%s, %s%s) and no config.json: name the file to serve", path, n,
               first, second, n > 2 ? ", ..." : "");
        return PEFTD_EINVAL;
    }
    int k = snprintf(file, cap, "%s/%s", path, first);
    if (k < 0 || (size_t)k >= cap) {
        gl_err(err, errlen, "%s/%s: path too long", path, first);
        return PEFTD_EINVAL;
    }
    return 1;
}

/* The directory part of path ("." when none) into m->dir, the file name less ".gguf" into
 * m->name. */
static int gl_names(model *m, const char *path, char *err, size_t errlen) {
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t dl = slash ? (size_t)(slash - path) : 0;
    if (slash && dl == 0) dl = 1; /* "/x.gguf" */
    if (dl >= sizeof m->dir) {
        gl_err(err, errlen, "%s: path too long", path);
        return PEFTD_EINVAL;
    }
    if (slash) {
        memcpy(m->dir, path, dl);
        m->dir[dl] = 0;
    } else {
        snprintf(m->dir, sizeof m->dir, ".");
    }
    size_t bl = strlen(base) - 5; /* ".gguf" */
    if (bl == 0 || bl >= sizeof m->name) {
        gl_err(err, errlen, "%s: cannot derive a model name (1..%zu bytes) from the file name", path,
               sizeof m->name - 1);
        return PEFTD_EINVAL;
    }
    memcpy(m->name, base, bl);
    m->name[bl] = 0;
    return 0;
}

typedef struct {
    model *m;
    const gguf_file *f;
    const char *label;
    bool *used; /* [tensor count] */
    char *err;
    size_t errlen;
} gl_ctx;

/* Tensor `name`: shape [rows, cols] (rows == 0: a 1-D [cols]) and a mapped type; *out views it
 * in the mapping. optional: a missing tensor leaves *out zeroed and returns 1. */
static int gl_take(gl_ctx *c, const char *name, int64_t rows, int64_t cols, bool optional, kmat *out) {
    const gguf_tensor *t = gguf_find_tensor(c->f, name);
    if (!t) {
        if (optional) return 1;
        gl_err(c->err, c->errlen, "%s: missing tensor '%s'", c->label, name);
        return PEFTD_ENOTFOUND;
    }
    bool ok = rows ? t->n_dims == 2 && t->ne[0] == cols && t->ne[1] == rows : t->n_dims == 1 && t->ne[0] == cols;
    if (!ok) {
        char got[96] = "[";
        size_t o = 1;
        for (int i = 0; i < t->n_dims && o < sizeof got; i++)
            o += (size_t)snprintf(got + o, sizeof got - o, "%s%lld", i ? ", " : "", (long long)t->ne[i]);
        if (o < sizeof got) snprintf(got + o, sizeof got - o, "]");
        if (rows)
            gl_err(c->err, c->errlen, "%s: tensor '%s' has ne %s, the metadata implies [%lld, %lld] (ne[0] = in-features)",
                   c->label, name, got, (long long)cols, (long long)rows);
        else
            gl_err(c->err, c->errlen, "%s: tensor '%s' has ne %s, the metadata implies [%lld]", c->label, name, got,
                   (long long)cols);
        return PEFTD_EFORMAT;
    }
    kdtype dt;
    if (!model__gguf_kdtype(t->type, &dt)) {
        char list[128] = "";
        for (size_t i = 0, o = 0; i < N_GGUF_KDT && o < sizeof list; i++)
            o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", gguf_type_name(GGUF_KDT[i].ggml));
        gl_err(c->err, c->errlen, "%s: tensor '%s' has type %s, which peftd cannot compute with (supported: %s)",
               c->label, name, gguf_type_name(t->type), list);
        return PEFTD_EUNSUPPORTED;
    }
    for (size_t i = 0; i < gguf_tensor_count(c->f); i++)
        if (gguf_tensor_at(c->f, i) == t) c->used[i] = true;
    out->data = t->data;
    out->dtype = dt;
    out->rows = rows ? rows : 1;
    out->cols = cols;
    c->m->weight_bytes += t->nbytes;
    return 0;
}

static int gl_takef(gl_ctx *c, int64_t rows, int64_t cols, bool optional, kmat *out, const char *fmt, int i) {
    char name[96];
    snprintf(name, sizeof name, fmt, i);
    return gl_take(c, name, rows, cols, optional, out);
}

static kmat gl_rows(const kmat *w, int64_t row0, int64_t rows) {
    kmat v = *w;
    v.data = (const uint8_t *)w->data + (size_t)row0 * kdtype_row_bytes(w->dtype, w->cols);
    v.rows = rows;
    return v;
}

static int gl_layer(gl_ctx *c, int i) {
    const model_config *cfg = &c->m->cfg;
    model_layer *l = &c->m->layers[i];
    int64_t d = cfg->hidden_size, q = (int64_t)cfg->n_heads * cfg->head_dim,
            kv = (int64_t)cfg->n_kv_heads * cfg->head_dim, ff = cfg->intermediate_size;
    int rc;
    if (cfg->fused_proj) { /* Phi-3: attn_qkv [q; k; v] and ffn_up [gate; up] (gate_up_proj) */
        kmat qkv, gu;
        if ((rc = gl_takef(c, q + 2 * kv, d, false, &qkv, "blk.%d.attn_qkv.weight", i)) < 0 ||
            (rc = gl_takef(c, 2 * ff, d, false, &gu, "blk.%d.ffn_up.weight", i)) < 0)
            return rc;
        l->wq = gl_rows(&qkv, 0, q);
        l->wk = gl_rows(&qkv, q, kv);
        l->wv = gl_rows(&qkv, q + kv, kv);
        l->w_gate = gl_rows(&gu, 0, ff);
        l->w_up = gl_rows(&gu, ff, ff);
    } else if ((rc = gl_takef(c, q, d, false, &l->wq, "blk.%d.attn_q.weight", i)) < 0 ||
               (rc = gl_takef(c, kv, d, false, &l->wk, "blk.%d.attn_k.weight", i)) < 0 ||
               (rc = gl_takef(c, kv, d, false, &l->wv, "blk.%d.attn_v.weight", i)) < 0 ||
               (rc = gl_takef(c, ff, d, false, &l->w_gate, "blk.%d.ffn_gate.weight", i)) < 0 ||
               (rc = gl_takef(c, ff, d, false, &l->w_up, "blk.%d.ffn_up.weight", i)) < 0) {
        return rc;
    }
    if ((rc = gl_takef(c, 0, d, false, &l->attn_norm, "blk.%d.attn_norm.weight", i)) < 0 ||
        (rc = gl_takef(c, d, q, false, &l->wo, "blk.%d.attn_output.weight", i)) < 0 ||
        (rc = gl_takef(c, 0, d, false, &l->ffn_norm, "blk.%d.ffn_norm.weight", i)) < 0 ||
        (rc = gl_takef(c, d, ff, false, &l->w_down, "blk.%d.ffn_down.weight", i)) < 0)
        return rc;
    if (cfg->gemma &&
        ((rc = gl_takef(c, 0, d, false, &l->post_attn_norm, "blk.%d.post_attention_norm.weight", i)) < 0 ||
         (rc = gl_takef(c, 0, d, false, &l->post_ffn_norm, "blk.%d.post_ffw_norm.weight", i)) < 0))
        return rc;
    if (cfg->qkv_bias &&
        ((rc = gl_takef(c, 0, q, false, &l->bq, "blk.%d.attn_q.bias", i)) < 0 ||
         (rc = gl_takef(c, 0, kv, false, &l->bk, "blk.%d.attn_k.bias", i)) < 0 ||
         (rc = gl_takef(c, 0, kv, false, &l->bv, "blk.%d.attn_v.bias", i)) < 0))
        return rc;
    if (cfg->o_bias && (rc = gl_takef(c, 0, d, false, &l->bo, "blk.%d.attn_output.bias", i)) < 0) return rc;
    if (cfg->qk_norm &&
        ((rc = gl_takef(c, 0, cfg->head_dim, false, &l->q_norm, "blk.%d.attn_q_norm.weight", i)) < 0 ||
         (rc = gl_takef(c, 0, cfg->head_dim, false, &l->k_norm, "blk.%d.attn_k_norm.weight", i)) < 0))
        return rc;
    return 0;
}

/* rope_freqs.weight (Llama 3.x "llama3" scaling as written by the converter): per-pair
 * divisors of the base frequencies. */
static int gl_rope_freqs(gl_ctx *c) {
    model_config *cfg = &c->m->cfg;
    int half = cfg->rope.rot_dim / 2;
    kmat w;
    int rc = gl_take(c, "rope_freqs.weight", 0, half, true, &w);
    if (rc != 0) return rc < 0 ? rc : 0;
    if (w.dtype != KDT_F32 || cfg->rope.kind != ROPE_DEFAULT) {
        gl_err(c->err, c->errlen, "%s: tensor 'rope_freqs.weight' %s", c->label,
               w.dtype != KDT_F32 ? "must be F32" : "cannot be combined with rope.scaling.type");
        return PEFTD_EFORMAT;
    }
    for (int i = 0; i < half; i++) {
        float v;
        memcpy(&v, (const uint8_t *)w.data + 4 * i, 4);
        if (!(v > 0.0f && v < 1e9f)) {
            gl_err(c->err, c->errlen, "%s: tensor 'rope_freqs.weight'[%d] = %g is not a positive divisor", c->label, i,
                   (double)v);
            return PEFTD_EFORMAT;
        }
        cfg->rope.freq_factors[i] = v;
    }
    cfg->rope.kind = ROPE_FREQ_FACTORS;
    c->m->weight_bytes -= (size_t)half * 4; /* a table, not a weight */
    return 0;
}

/* rope_factors_short / _long.weight (Phi-3 longrope): already read into the config's
 * rope_scaling by model_load_gguf_config.c (type and shape checked there); taken here as
 * tables, not weights. */
static int gl_rope_factors(gl_ctx *c) {
    static const char *const names[2] = {"rope_factors_short.weight", "rope_factors_long.weight"};
    model_config *cfg = &c->m->cfg;
    if (cfg->rope.kind != ROPE_LONGROPE) return 0;
    for (int k = 0; k < 2; k++) {
        kmat w;
        int rc = gl_take(c, names[k], 0, cfg->rope.rot_dim / 2, false, &w);
        if (rc < 0) return rc;
        c->m->weight_bytes -= (size_t)w.cols * 4;
    }
    return 0;
}

/* Every tensor of the file must have been taken: anything else would change the function. */
static int gl_leftovers(gl_ctx *c) {
    for (size_t i = 0; i < gguf_tensor_count(c->f); i++) {
        if (c->used[i]) continue;
        const char *name = gguf_tensor_at(c->f, i)->name;
        gl_err(c->err, c->errlen, "%s: tensor '%s' is not part of a %s model as peftd computes it (refused: it would "
               "change the outputs)", c->label, name, c->m->cfg.architecture);
        return PEFTD_EUNSUPPORTED;
    }
    return 0;
}

/* Host bytes needed to un-permute one [rows, cols] weight (whole rows). */
static size_t gl_bytes(const kmat *w) { return (size_t)w->rows * kdtype_row_bytes(w->dtype, w->cols); }

/* llama.cpp's LlamaModel.permute, undone: GGUF row h*hd + 2j + s → HF row h*hd + s*hd/2 + j,
 * for every head h, j < hd/2, s in {0, 1}. A bias is the same with one-element rows. */
static void gl_unpermute(const kmat *src, int n_heads, uint8_t *dst) {
    size_t rb = src->rows == 1 ? kdtype_size(src->dtype) : kdtype_row_bytes(src->dtype, src->cols);
    int64_t n = src->rows == 1 ? src->cols : src->rows, hd = n / n_heads;
    const uint8_t *s = src->data;
    for (int h = 0; h < n_heads; h++)
        for (int64_t j = 0; j < hd / 2; j++)
            for (int k = 0; k < 2; k++)
                memcpy(dst + (size_t)(h * hd + k * (hd / 2) + j) * rb, s + (size_t)(h * hd + 2 * j + k) * rb, rb);
}

/* Llama: Q/K weights (and biases) un-permuted into one host buffer; other weights stay views.
 * The file's permuted bytes are read no more: their whole pages are given back (mapped: page
 * cache; --no-mmap: private memory that would otherwise be held twice). Returns those bytes. */
static size_t gl_llama_unpermute(gl_ctx *c, uint8_t **cursor) {
    model *m = c->m;
    size_t dropped = 0;
    for (int i = 0; i < m->cfg.n_layers; i++) {
        model_layer *l = &m->layers[i];
        kmat *ws[4] = {&l->wq, &l->wk, &l->bq, &l->bk};
        int heads[4] = {m->cfg.n_heads, m->cfg.n_kv_heads, m->cfg.n_heads, m->cfg.n_kv_heads};
        for (int k = 0; k < 4; k++) {
            if (!ws[k]->data) continue;
            const void *file_bytes = ws[k]->data;
            gl_unpermute(ws[k], heads[k], *cursor);
            ws[k]->data = *cursor;
            *cursor += (gl_bytes(ws[k]) + 63) / 64 * 64;
            dropped += gguf_drop_bytes(m->storage->gguf, file_bytes, gl_bytes(ws[k]));
        }
    }
    return dropped;
}

/* The host buffer: un-permuted Q/K (llama). A quantized embedding stays as stored: both
 * backends gather from every block type (model__check_ops refuses one a backend cannot). */
static int gl_host_copies(gl_ctx *c) {
    model *m = c->m;
    bool permuted = strcmp(m->cfg.model_type, "llama") == 0;
    size_t total = 0;
    if (permuted)
        for (int i = 0; i < m->cfg.n_layers; i++) {
            const model_layer *l = &m->layers[i];
            const kmat *ws[4] = {&l->wq, &l->wk, &l->bq, &l->bk};
            for (int k = 0; k < 4; k++)
                if (ws[k]->data) total += (gl_bytes(ws[k]) + 63) / 64 * 64;
        }
    if (!total) return 0;
    uint8_t *buf = huge_alloc(total); /* walked whole by every decode step */
    if (!buf) {
        gl_err(c->err, c->errlen, "%s: out of memory (%zu bytes of host copies)", c->label, total);
        return PEFTD_ENOMEM;
    }
    m->storage->gguf_host = buf;
    uint8_t *cur = buf;
    size_t dropped = permuted ? gl_llama_unpermute(c, &cur) : 0;
    if (permuted)
        LOGI("model %s: Q/K rows un-permuted from llama.cpp's RoPE layout to the Hugging Face layout (%zu bytes "
             "copied; %.1f MB of the file's pages given back)", m->name, (size_t)(cur - buf), (double)dropped / 1e6);
    return 0;
}

/* --weights on a GGUF: only float projections can be converted (model_quant.h reads floats);
 * then the backend's preferred layouts (model__convert). */
static int gl_convert(gl_ctx *c, const model_load_opts *opts) {
    for (int i = 0; opts && opts->weights >= 0 && i < c->m->cfg.n_layers; i++) {
        const model_layer *l = &c->m->layers[i];
        const kmat *p[7] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
        for (int k = 0; k < 7; k++)
            if (kdtype_is_quant(p[k]->dtype) && p[k]->dtype != (kdtype)opts->weights) {
                gl_err(c->err, c->errlen, "%s: \"weights\": \"%s\" cannot convert this file's %s tensors (a GGUF's "
                       "quantized tensors are used as stored: use \"weights\": \"stored\")", c->label,
                       kdtype_name((kdtype)opts->weights), kdtype_name(p[k]->dtype));
                return PEFTD_EUNSUPPORTED;
            }
    }
    return model__convert(c->m, opts, c->err, c->errlen);
}

static int gl_load(gl_ctx *c, const model_load_opts *opts) {
    model *m = c->m;
    const model_config *cfg = &m->cfg;
    int rc;
    if (!(c->used = calloc(gguf_tensor_count(c->f) + 1, sizeof *c->used)) ||
        !(m->layers = calloc((size_t)cfg->n_layers, sizeof *m->layers))) {
        gl_err(c->err, c->errlen, "%s: out of memory", c->label);
        return PEFTD_ENOMEM;
    }
    if ((rc = gl_take(c, "token_embd.weight", cfg->vocab_size, cfg->hidden_size, false, &m->embed)) < 0) return rc;
    for (int i = 0; i < cfg->n_layers; i++)
        if ((rc = gl_layer(c, i)) < 0) return rc;
    if ((rc = gl_take(c, "output_norm.weight", 0, cfg->hidden_size, false, &m->final_norm)) < 0) return rc;
    if (cfg->tie_word_embeddings) m->lm_head = m->embed;
    else if ((rc = gl_take(c, "output.weight", cfg->vocab_size, cfg->hidden_size, false, &m->lm_head)) < 0)
        return rc;
    if ((rc = gl_rope_freqs(c)) < 0 || (rc = gl_rope_factors(c)) < 0 || (rc = gl_leftovers(c)) < 0 || (rc = gl_host_copies(c)) < 0) return rc;
    m->host_layers = m->layers;
    if ((rc = gl_convert(c, opts)) < 0) return rc;
    if ((rc = model__check_ops(m, c->err, c->errlen)) < 0) return rc;
    if (!m->kb->ops->is_host && (rc = model__upload(m, c->err, c->errlen)) < 0) return rc;
    return 0;
}

/* tokenizer.chat_template as a NUL-terminated copy (absent: NULL). */
static int gl_chat_template(gl_ctx *c) {
    const char *s;
    size_t n;
    char e[256] = "";
    int rc = gguf_get_str(c->f, "tokenizer.chat_template", &s, &n, e, sizeof e);
    if (rc == PEFTD_ENOTFOUND) return 0;
    if (rc < 0) {
        gl_err(c->err, c->errlen, "%s: %s", c->label, e);
        return rc;
    }
    char *t = malloc(n + 1);
    if (!t) return PEFTD_ENOMEM;
    memcpy(t, s, n);
    t[n] = 0;
    c->m->storage->chat_template = t;
    c->m->chat_template = t;
    return 0;
}

int model__load_gguf(model *m, const char *path, const model_load_opts *opts, char *err, size_t errlen) {
    int rc;
    if ((rc = gl_names(m, path, err, errlen)) < 0) return rc;
    if ((rc = gguf_open_ex(path, opts && opts->no_mmap, &m->storage->gguf, err, errlen)) < 0) return rc;
    m->gguf = m->storage->gguf;
    gl_ctx c = {.m = m, .f = m->storage->gguf, .label = path, .err = err, .errlen = errlen};
    if ((rc = model__gguf_config(c.f, path, &m->cfg, &m->eos, err, errlen)) < 0) return rc;
    if ((rc = gl_chat_template(&c)) < 0) return rc;
    rc = gl_load(&c, opts);
    free(c.used);
    if (rc < 0) return rc;
    char types[128] = "";
    size_t o = 0;
    for (size_t k = 0; k < N_GGUF_KDT && o < sizeof types; k++) {
        int n = 0;
        for (size_t i = 0; i < gguf_tensor_count(c.f); i++) n += gguf_tensor_at(c.f, i)->type == GGUF_KDT[k].ggml;
        if (n) o += (size_t)snprintf(types + o, sizeof types - o, "%s%d %s", o ? ", " : "", n, gguf_type_name(GGUF_KDT[k].ggml));
    }
    LOGI("model %s: GGUF %s (%s), %d layers, hidden %d, %d/%d heads, vocab %d, %.1f MB of weights, tensors: %s%s",
         m->name, path, m->cfg.architecture, m->cfg.n_layers, m->cfg.hidden_size, m->cfg.n_heads, m->cfg.n_kv_heads,
         m->cfg.vocab_size, (double)m->weight_bytes / 1e6, types, m->cfg.tie_word_embeddings ? ", tied embeddings" : "");
    return 0;
}
