/* adapter_store/adapter_core.c — the adapter object itself, below every importer and the
 * blob codec: kind/module names and shapes, rank bookkeeping, the request-scale rule,
 * DoRA's per-scale factor, and the adapter's storage: one 64-byte aligned HOST block
 * holding every tensor (built from a staging list by adapter__stage_commit), installed
 * into a backend by adapter_install (engine thread; no copy on is_host backends), and
 * freed by adapter_free.
 *
 * The storage keeps a relocation list (block offset -> the kmat / vector pointer field of
 * the adapter that points there), so installing on a device backend is one allocation,
 * one upload of the whole block and a re-pointing of every field. Matrices held once per
 * process (adapter_shared.h: VeRA's projection) are not in the block: the storage lists
 * them as (entry, kmat) references that install points at the entry's copy on the backend
 * and adapter_free releases.
 * Calls nothing else in adapter_store but adapter_shared.c (a leaf: adapter.c, the kind
 * loaders and adapter_blob.c all call down into it).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"
#include "adapter_store/adapter_shared.h"

/* Tensors start on 64-byte boundaries inside the adapter's block (cache line / AVX-512). */
#define ADAPTER_ALIGN 64

typedef struct {
    size_t off;           /* in the block */
    kmat *mat;            /* gets .data = block + off */
    const float **vec;    /* or *vec = block + off */
    const int32_t **ivec; /* or *ivec = block + off */
} adapter_reloc;

struct adapter_storage {
    unsigned char *host;  /* the tensors in host memory; NULL once installed on a device */
    size_t bytes;         /* of the block */
    void *dev;            /* the block in a !is_host backend's memory (a->kb), or NULL */
    adapter_placer placer; /* .release set: dev belongs to a placer (slot pool), not kb */
    adapter_reloc *reloc;
    size_t n_reloc;
    struct { adapter_shared *s; kmat *mat; } *shared; /* one reference each */
    int n_shared;
    bool shared_installed; /* the references are installed on a->kb */
};

const char *adapter_kind_name(adapter_kind k) {
    switch (k) {
    case ADAPTER_LORA: return "lora";
    case ADAPTER_IA3: return "ia3";
    case ADAPTER_PROMPT_TUNING: return "prompt_tuning";
    case ADAPTER_PREFIX_TUNING: return "prefix_tuning";
    case ADAPTER_BOTTLENECK: return "bottleneck";
    case ADAPTER_LN_TUNING: return "ln_tuning";
    case ADAPTER_OFT: return "oft";
    case ADAPTER_BOFT: return "boft";
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

bool adapter_accepts_scale(adapter_kind kind) { return kind == ADAPTER_LORA; } /* not OFT / BOFT: see adapter.h */

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

/* ---------------------------------------------------------------- storage */

adapter *adapter__new(int n_layers) {
    adapter *a = calloc(1, sizeof *a);
    if (a && !(a->storage = calloc(1, sizeof *a->storage))) {
        free(a);
        return NULL;
    }
    if (a) a->n_layers = n_layers;
    return a;
}

int adapter__stage_push(adapter__stage *s, void *host, size_t bytes, bool owned, kmat *mat, const float **vec) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        adapter__item *it = realloc(s->items, cap * sizeof *it);
        if (!it) {
            if (owned) free(host);
            return PEFTD_ENOMEM;
        }
        s->items = it;
        s->cap = cap;
    }
    s->items[s->n++] = (adapter__item){.host = host, .bytes = bytes, .owned = owned, .mat = mat, .vec = vec};
    return 0;
}

int adapter__stage_push_ivec(adapter__stage *s, int32_t *host, size_t n, const int32_t **ivec) {
    int rc = adapter__stage_push(s, host, n * sizeof *host, true, NULL, NULL);
    if (rc == 0) s->items[s->n - 1].ivec = ivec;
    return rc;
}

void adapter__stage_clear(adapter__stage *s) {
    for (size_t i = 0; i < s->n; i++)
        if (s->items[i].owned) free(s->items[i].host);
    free(s->items);
    memset(s, 0, sizeof *s);
}

static size_t aligned(size_t n) { return (n + ADAPTER_ALIGN - 1) / ADAPTER_ALIGN * ADAPTER_ALIGN; }

/* Points every relocated field at base + its offset. */
static void relocate(struct adapter_storage *st, unsigned char *base) {
    for (size_t i = 0; i < st->n_reloc; i++) {
        const adapter_reloc *r = &st->reloc[i];
        if (r->mat) r->mat->data = base + r->off;
        else if (r->vec) *r->vec = (const float *)(const void *)(base + r->off);
        else *r->ivec = (const int32_t *)(const void *)(base + r->off);
    }
}

int adapter__stage_commit(adapter *a, const adapter__stage *s) {
    struct adapter_storage *st = a->storage;
    size_t total = 0;
    for (size_t i = 0; i < s->n; i++) total += aligned(s->items[i].bytes);
    if (total == 0) return 0;
    unsigned char *block = NULL;
    adapter_reloc *reloc = malloc(s->n * sizeof *reloc);
    if (!reloc || posix_memalign((void **)&block, ADAPTER_ALIGN, total) != 0) {
        free(reloc);
        return PEFTD_ENOMEM;
    }
    size_t off = 0;
    for (size_t i = 0; i < s->n; i++) {
        const adapter__item *it = &s->items[i];
        size_t pad = aligned(it->bytes);
        if (it->bytes) memcpy(block + off, it->host, it->bytes);
        memset(block + off + it->bytes, 0, pad - it->bytes); /* the whole block is defined bytes */
        reloc[i] = (adapter_reloc){.off = off, .mat = it->mat, .vec = it->vec, .ivec = it->ivec};
        off += pad;
    }
    st->host = block;
    st->bytes = total;
    st->reloc = reloc;
    st->n_reloc = s->n;
    relocate(st, block);
    return 0;
}

bool adapter_on_host(const adapter *a) { return !a->storage || !a->storage->dev; }

int adapter__attach_shared(adapter *a, adapter_shared *sh, kmat *dst) {
    struct adapter_storage *st = a->storage;
    void *p = realloc(st->shared, (size_t)(st->n_shared + 1) * sizeof *st->shared);
    if (!p) {
        adapter__shared_put(sh);
        return PEFTD_ENOMEM;
    }
    st->shared = p;
    st->shared[st->n_shared].s = sh;
    st->shared[st->n_shared++].mat = dst;
    *dst = (kmat){.data = (void *)(uintptr_t)adapter__shared_host(sh), .dtype = KDT_F32,
                  .rows = adapter__shared_rows(sh), .cols = adapter__shared_cols(sh)};
    return 0;
}

adapter_shared *adapter__shared_of(const adapter *a, const kmat *m) {
    for (int i = 0; a->storage && i < a->storage->n_shared; i++)
        if (a->storage->shared[i].mat == m) return a->storage->shared[i].s;
    return NULL;
}

void adapter_bytes_held(const adapter *a, size_t *own, size_t *shared) {
    const struct adapter_storage *st = a->storage;
    size_t sb = 0;
    for (int i = 0; st && i < st->n_shared; i++) { /* each distinct entry once */
        int j = 0;
        while (j < i && st->shared[j].s != st->shared[i].s) j++;
        if (j == i) sb += adapter__shared_bytes(st->shared[i].s);
    }
    if (own) *own = st ? st->bytes : 0;
    if (shared) *shared = sb;
}

/* Points every shared reference at its copy on kb (uploading those kb lacks); on failure
 * nothing stays installed. */
static int install_shared(adapter *a, kbackend *kb, char *err, size_t errlen) {
    struct adapter_storage *st = a->storage;
    for (int i = 0; st && i < st->n_shared; i++) {
        void *d = NULL;
        int rc = adapter__shared_install(st->shared[i].s, kb, &d, err, errlen);
        if (rc) {
            while (i-- > 0) {
                adapter__shared_uninstall(st->shared[i].s, kb);
                st->shared[i].mat->data = (void *)(uintptr_t)adapter__shared_host(st->shared[i].s);
            }
            return rc;
        }
        st->shared[i].mat->data = d;
    }
    if (st && st->n_shared) st->shared_installed = true;
    return 0;
}

static void uninstall_shared(adapter *a, kbackend *kb) {
    struct adapter_storage *st = a->storage;
    for (int i = 0; st && st->shared_installed && i < st->n_shared; i++) {
        adapter__shared_uninstall(st->shared[i].s, kb);
        st->shared[i].mat->data = (void *)(uintptr_t)adapter__shared_host(st->shared[i].s);
    }
    if (st) st->shared_installed = false;
}

int adapter_install(adapter *a, kbackend *kb, char *err, size_t errlen) {
    struct adapter_storage *st = a->storage;
    if (err && errlen) err[0] = 0;
    if (a->kb) {
        if (a->kb == kb) return 0;
        if (err && errlen) snprintf(err, errlen, "the adapter is installed on another backend");
        return PEFTD_EINVAL;
    }
    int rc = install_shared(a, kb, err, errlen);
    if (rc) return rc;
    if (kb->ops->is_host || !st || st->bytes == 0) { /* host memory is the backend's memory */
        a->kb = kb;
        return 0;
    }
    void *dev = kb->ops->alloc(kb, st->bytes);
    if (!dev) {
        uninstall_shared(a, kb);
        if (err && errlen)
            snprintf(err, errlen, "cannot allocate %zu bytes of %s memory for the adapter", st->bytes, kb->ops->name);
        return PEFTD_ENOMEM;
    }
    rc = kb->ops->upload(kb, dev, st->host, st->bytes);
    if (rc == 0) rc = kb->ops->synchronize(kb);
    if (rc) {
        kb->ops->free(kb, dev);
        uninstall_shared(a, kb);
        if (err && errlen) snprintf(err, errlen, "uploading the adapter to %s: %s", kb->ops->name, peftd_strerror(rc));
        return rc;
    }
    relocate(st, dev);
    free(st->host);
    st->host = NULL;
    st->dev = dev;
    a->kb = kb;
    return 0;
}

int adapter_install_placed(adapter *a, kbackend *kb, const adapter_placer *p, char *err, size_t errlen) {
    struct adapter_storage *st = a->storage;
    if (!p || !p->place || !p->release || a->kb || kb->ops->is_host || !st || st->bytes == 0)
        return adapter_install(a, kb, err, errlen);
    if (err && errlen) err[0] = 0;
    int rc = install_shared(a, kb, err, errlen); /* outside the slot: its own allocation(s) */
    if (rc) return rc;
    void *dev = NULL;
    rc = p->place(p->ud, st->host, st->bytes, &dev, err, errlen);
    if (rc < 0) {
        uninstall_shared(a, kb);
        return rc;
    }
    relocate(st, dev);
    free(st->host);
    st->host = NULL;
    st->dev = dev;
    st->placer = *p;
    a->kb = kb;
    return 0;
}

void adapter_free(adapter *a) {
    if (!a) return;
    if (a->storage) {
        if (a->storage->dev && a->storage->placer.release)
            a->storage->placer.release(a->storage->placer.ud, a->storage->dev);
        else if (a->storage->dev)
            a->kb->ops->free(a->kb, a->storage->dev);
        if (a->kb) uninstall_shared(a, a->kb);
        for (int i = 0; i < a->storage->n_shared; i++) adapter__shared_put(a->storage->shared[i].s);
        free(a->storage->shared);
        free(a->storage->host);
        free(a->storage->reloc);
        free(a->storage);
    }
    for (int i = 0; a->lora && i < a->n_layers * AMOD_COUNT; i++) free(a->lora[i].dora_stats);
    free(a->lora);
    free(a->ln);
    for (int i = 0; a->rot && i < a->n_layers * AMOD_COUNT; i++) free(a->rot[i].f);
    free(a->rot);
    free(a->ia3);
    free(a->prefix_k);
    free(a->prefix_v);
    free(a->bn_attn);
    free(a->bn_ffn);
    free(a->labels);
    free(a);
}
