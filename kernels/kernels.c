/* kernels/kernels.c — backend-independent helpers declared in kernels.h: dtype names,
 * the backend object's table set-up, and the threading contract's owner check (the
 * checked copy of a backend's table: every [engine] entry first checks the calling thread,
 * then forwards to the backend's own function).
 */
#include "kernels/kernels.h"

#include <stdlib.h>

#include "lib/log.h"

const char *kdtype_name(kdtype t) {
    switch (t) {
    case KDT_F32: return "f32";
    case KDT_F16: return "f16";
    case KDT_BF16: return "bf16";
    case KDT_Q8_0: return "q8_0";
    case KDT_Q4_K: return "q4_k";
    case KDT_Q4_0: return "q4_0";
    case KDT_Q5_K: return "q5_k";
    case KDT_Q6_K: return "q6_k";
    case KDT_Q4_K_SB8: return "q4_k_sb8";
    case KDT_Q6_K_SB16: return "q6_k_sb16";
    case KDT_Q5_0: return "q5_0";
    case KDT_Q4_1: return "q4_1";
    case KDT_Q5_1: return "q5_1";
    case KDT_IQ4_NL: return "iq4_nl";
    case KDT_IQ4_XS: return "iq4_xs";
    case KDT_Q3_K: return "q3_k";
    case KDT_Q2_K: return "q2_k";
    case KDT_COUNT: break;
    }
    return "unknown";
}

void kbackend_set_owner(kbackend *kb) {
    __atomic_store_n(&kb->owner, pthread_self(), __ATOMIC_RELAXED);
    __atomic_store_n(&kb->has_owner, 1, __ATOMIC_RELEASE);
}

void kbackend_release_owner(kbackend *kb) {
    kbackend_check_owner(kb, "kbackend_release_owner");
    __atomic_store_n(&kb->has_owner, 0, __ATOMIC_RELEASE);
}

void kbackend_check_owner(kbackend *kb, const char *fn) {
    if (!__atomic_load_n(&kb->has_owner, __ATOMIC_ACQUIRE)) return;
    if (pthread_equal(__atomic_load_n(&kb->owner, __ATOMIC_RELAXED), pthread_self())) return;
    LOGE("%s backend: %s called from a thread that does not own the backend (engine thread only: see "
         "kernels/kernels.h)",
         kb->impl_ops->name, fn);
    abort(); /* programmer error: this call would race the engine's stream and error flag */
}

/* chk_<fn>: the owner check, then the backend's own <fn>. */
#define KB_CHECKED(fn, params, args)                                                               \
    static int chk_##fn params {                                                                   \
        kbackend_check_owner(kb, #fn);                                                             \
        return kb->impl_ops->fn args;                                                              \
    }

static void *chk_alloc(kbackend *kb, size_t bytes) {
    kbackend_check_owner(kb, "alloc");
    return kb->impl_ops->alloc(kb, bytes);
}

static void chk_free(kbackend *kb, void *p) {
    kbackend_check_owner(kb, "free");
    kb->impl_ops->free(kb, p);
}

KB_CHECKED(upload, (kbackend * kb, void *dst, const void *src, size_t bytes), (kb, dst, src, bytes))
KB_CHECKED(download, (kbackend * kb, void *dst, const void *src, size_t bytes), (kb, dst, src, bytes))
KB_CHECKED(copy, (kbackend * kb, void *dst, const void *src, size_t bytes), (kb, dst, src, bytes))
KB_CHECKED(memset0, (kbackend * kb, void *dst, size_t bytes), (kb, dst, bytes))
KB_CHECKED(synchronize, (kbackend * kb), (kb))
KB_CHECKED(get_rows, (kbackend * kb, const kmat *t, const int32_t *ids, int n, float *out), (kb, t, ids, n, out))
KB_CHECKED(matmul, (kbackend * kb, const float *x, int n, const kmat *w, float *y, float beta),
           (kb, x, n, w, y, beta))
KB_CHECKED(rmsnorm, (kbackend * kb, const float *x, const kmat *w, int n, int dim, float eps, float *y),
           (kb, x, w, n, dim, eps, y))
KB_CHECKED(rope, (kbackend * kb, float *x, const int32_t *pos, int n, int nh, int hd, int rd, const krope_freqs *f),
           (kb, x, pos, n, nh, hd, rd, f))
KB_CHECKED(kv_store,
           (kbackend * kb, const float *k, const float *v, const int32_t *slots, int n, int kv_dim, kdtype kt,
            void *kc, void *vc),
           (kb, k, v, slots, n, kv_dim, kt, kc, vc))
KB_CHECKED(attention, (kbackend * kb, const kattn_args *a), (kb, a))
KB_CHECKED(swiglu, (kbackend * kb, const float *g, const float *u, int n, int dim, float *out), (kb, g, u, n, dim, out))
KB_CHECKED(add, (kbackend * kb, float *y, const float *x, int64_t n), (kb, y, x, n))
KB_CHECKED(sgmv_shrink, (kbackend * kb, const float *x, int in_dim, const ksgmv *s, float *t, int ld_t),
           (kb, x, in_dim, s, t, ld_t))
KB_CHECKED(sgmv_expand, (kbackend * kb, const float *t, int ld_t, const ksgmv *s, int out_dim, float *y),
           (kb, t, ld_t, s, out_dim, y))
KB_CHECKED(add_bias, (kbackend * kb, float *y, int n, const kmat *b), (kb, y, n, b))
KB_CHECKED(geglu, (kbackend * kb, const float *g, const float *u, int n, int dim, float *out), (kb, g, u, n, dim, out))
KB_CHECKED(softcap, (kbackend * kb, float *y, int64_t n, float cap), (kb, y, n, cap))
KB_CHECKED(sample, (kbackend * kb, const ksample_args *a), (kb, a))
KB_CHECKED(matmul_group,
           (kbackend * kb, const float *x, int n, int count, const kmat *const *w, float *const *y, float beta),
           (kb, x, n, count, w, y, beta))
KB_CHECKED(seg_scale, (kbackend * kb, float *y, int dim, int n, const int32_t *seg, const float *const *v),
           (kb, y, dim, n, seg, v))
KB_CHECKED(seg_rotate, (kbackend * kb, const float *x, int dim, const ksegrot *s, float *y), (kb, x, dim, s, y))
KB_CHECKED(matmul_glu,
           (kbackend * kb, const float *x, int n, const kmat *wg, const kmat *wu, kact act, float *up, float *out),
           (kb, x, n, wg, wu, act, up, out))
KB_CHECKED(rope_kv_store,
           (kbackend * kb, float *q, float *k, const float *v, const int32_t *pos, int n, int nh, int nkv, int hd,
            int rd, const krope_freqs *f, const int32_t *slots, kdtype kt, void *kc, void *vc),
           (kb, q, k, v, pos, n, nh, nkv, hd, rd, f, slots, kt, kc, vc))

int kops_matmul_group(kbackend *kb, const float *x, int n, int count, const kmat *const *w, float *const *y,
                      float beta) {
    if (kb->ops->matmul_group) return kb->ops->matmul_group(kb, x, n, count, w, y, beta);
    if (count < 1 || count > KMATMUL_GROUP_MAX || !w || !y) return PEFTD_EINVAL;
    for (int g = 0; g < count; g++) {
        int rc = kb->ops->matmul(kb, x, n, w[g], y[g], beta);
        if (rc) return rc;
    }
    return 0;
}

int kops_rope_kv_store(kbackend *kb, float *q, float *k, const float *v, const int32_t *pos, int n, int n_heads,
                       int n_kv_heads, int head_dim, int rot_dim, const krope_freqs *f, const int32_t *slots,
                       kdtype kv_dtype, void *k_cache, void *v_cache) {
    if (kb->ops->rope_kv_store)
        return kb->ops->rope_kv_store(kb, q, k, v, pos, n, n_heads, n_kv_heads, head_dim, rot_dim, f, slots, kv_dtype,
                                      k_cache, v_cache);
    int rc = kb->ops->rope(kb, q, pos, n, n_heads, head_dim, rot_dim, f);
    if (rc == 0) rc = kb->ops->rope(kb, k, pos, n, n_kv_heads, head_dim, rot_dim, f);
    if (rc == 0) rc = kb->ops->kv_store(kb, k, v, slots, n, n_kv_heads * head_dim, kv_dtype, k_cache, v_cache);
    return rc;
}

int kops_matmul_glu(kbackend *kb, const float *x, int n, const kmat *w_gate, const kmat *w_up, kact act, float *up,
                    float *out) {
    if (kb->ops->matmul_glu) return kb->ops->matmul_glu(kb, x, n, w_gate, w_up, act, up, out);
    if (!w_gate || !w_up || w_gate->rows > INT32_MAX || (act != KACT_SILU && act != KACT_GELU_TANH))
        return PEFTD_EINVAL;
    const kmat *w[2] = {w_gate, w_up};
    float *y[2] = {out, up};
    int rc = kops_matmul_group(kb, x, n, 2, w, y, 0.0f);
    if (rc) return rc;
    int dim = (int)w_gate->rows;
    return act == KACT_SILU ? kb->ops->swiglu(kb, out, up, n, dim, out) : kb->ops->geglu(kb, out, up, n, dim, out);
}

kdtype kops_preferred_dtype(const kbackend *kb, kop op, kdtype dt) {
    return kb->ops->preferred_dtype ? kb->ops->preferred_dtype(kb, op, dt) : dt;
}

void kbackend__init(kbackend *kb, const kbackend_ops *ops, void *impl) {
    kb->impl = impl;
    kb->impl_ops = ops;
    kb->checked = *ops;
    kb->has_owner = 0;
#ifdef NDEBUG
    kb->ops = ops;
#else
    kbackend_ops *c = &kb->checked;
    c->alloc = chk_alloc;
    c->free = chk_free;
    c->upload = chk_upload;
    c->download = chk_download;
    c->copy = chk_copy;
    c->memset0 = chk_memset0;
    c->synchronize = chk_synchronize;
    c->get_rows = chk_get_rows;
    c->matmul = chk_matmul;
    c->rmsnorm = chk_rmsnorm;
    c->rope = chk_rope;
    c->kv_store = chk_kv_store;
    c->attention = chk_attention;
    c->swiglu = chk_swiglu;
    c->add = chk_add;
    c->sgmv_shrink = chk_sgmv_shrink;
    c->sgmv_expand = chk_sgmv_expand;
    c->seg_scale = chk_seg_scale;
    c->add_bias = chk_add_bias;
    c->geglu = chk_geglu;
    c->softcap = chk_softcap;
    c->sample = chk_sample;
    c->seg_rotate = chk_seg_rotate;
    if (ops->matmul_group) c->matmul_group = chk_matmul_group;
    if (ops->rope_kv_store) c->rope_kv_store = chk_rope_kv_store;
    if (ops->matmul_glu) c->matmul_glu = chk_matmul_glu;
    kb->ops = c;
#endif
}
