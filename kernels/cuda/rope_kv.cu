/* kernels/cuda/rope_kv.cu — rope_kv_store on the CUDA backend: rope(q), rope(k) and
 * kv_store(k, v) of a layer in one launch (contract: kbackend_ops.rope_kv_store in
 * kernels/kernels.h), the same bits as the three ops (kcuda_rope_pair is their one formula,
 * the stores copy). A decode step's layer ran them as three kernels of ~2-4 us each.
 *
 * Block (row, c) takes work items [c * RKV_THREADS, (c + 1) * RKV_THREADS) of its row, in
 * this order: the q pairs (n_heads * rot/2), the k pairs (n_kv_heads * rot/2: rotated in
 * place and stored rotated), k's dims past rot_dim (partial rotary: stored as they are), v's
 * n_kv_heads * head_dim elements (stored). As the separate ops: a row whose position or
 * table index is out of range is not rotated and raises the error flag (its k is stored
 * unrotated); a row whose slot is negative is not stored and raises it. */
#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/norm_rope_elementwise.h"
#include "kernels/cuda/rope_kv.h"

#define RKV_THREADS 256

__global__ void k_rope_kv_store(float *q, float *k, const float *v, const int32_t *pos, int n_heads, int n_kv_heads,
                                int head_dim, int rot_dim, const float *inv_freq, const int32_t *table, int n_tables,
                                float scale, const int32_t *slots, float *kc, float *vc, int *err) {
    const int row = blockIdx.x, half = rot_dim / 2, kv_dim = n_kv_heads * head_dim;
    const int32_t p = pos[row], t = table ? table[row] : 0, s = slots[row];
    const bool rot_ok = p >= 0 && t >= 0 && t < n_tables, store_ok = s >= 0;
    if (threadIdx.x == 0 && blockIdx.y == 0 && (!rot_ok || !store_ok)) kcuda_flag(err, KCUDA_ERR_RANGE);
    const float *inv = rot_ok ? inv_freq + (int64_t)t * half : inv_freq;
    float *kr = k + (int64_t)row * kv_dim, *kd = store_ok ? kc + (int64_t)s * kv_dim : kc;
    int w = (int)blockIdx.y * RKV_THREADS + (int)threadIdx.x;
    const int nq = n_heads * half, nk = n_kv_heads * half, npass = n_kv_heads * (head_dim - rot_dim);
    if (w < nq) { /* a q pair */
        if (rot_ok) kcuda_rope_pair(q + ((int64_t)row * n_heads + w / half) * head_dim, w % half, half, p,
                                    inv[w % half], scale);
        return;
    }
    w -= nq;
    if (w < nk) { /* a k pair: rotated, then stored */
        int h = w / half, i = w % half;
        float *kh = kr + (int64_t)h * head_dim;
        if (rot_ok) kcuda_rope_pair(kh, i, half, p, inv[i], scale);
        if (store_ok) {
            kd[(int64_t)h * head_dim + i] = kh[i];
            kd[(int64_t)h * head_dim + i + half] = kh[i + half];
        }
        return;
    }
    w -= nk;
    if (!store_ok) return;
    if (w < npass) { /* k's dims [rot_dim, head_dim) of a head */
        int h = w / (head_dim - rot_dim), d = rot_dim + w % (head_dim - rot_dim);
        kd[(int64_t)h * head_dim + d] = kr[(int64_t)h * head_dim + d];
        return;
    }
    w -= npass;
    if (w < kv_dim) vc[(int64_t)s * kv_dim + w] = v[(int64_t)row * kv_dim + w]; /* store_ok: s >= 0 */
}

extern "C" int kcuda__rope_kv_store(kbackend *kb, float *q, float *k, const float *v, const int32_t *pos, int n,
                                    int n_heads, int n_kv_heads, int head_dim, int rot_dim, const krope_freqs *f,
                                    const int32_t *slots, kdtype kv_dtype, void *k_cache, void *v_cache) {
    /* the checks of rope (on q, then on k) and of kv_store, in that order */
    int rc = kcuda__rope_check(q, pos, n, n_heads, head_dim, rot_dim, f);
    if (rc == 0) rc = kcuda__rope_check(k, pos, n, n_kv_heads, head_dim, rot_dim, f);
    if (rc) return rc;
    if ((int64_t)n_kv_heads * head_dim > INT32_MAX / 4) return PEFTD_EUNSUPPORTED;
    if (n == 0) return 0;
    if (!v || !slots || !k_cache || !v_cache) return PEFTD_EINVAL;
    if (kv_dtype != KDT_F32) return PEFTD_EUNSUPPORTED; /* f32 K/V only (supports_op) */
    int64_t items = (int64_t)n_heads * (rot_dim / 2) + (int64_t)n_kv_heads * (rot_dim / 2) +
                    (int64_t)n_kv_heads * (head_dim - rot_dim) + (int64_t)n_kv_heads * head_dim;
    if (items > INT32_MAX - RKV_THREADS) return PEFTD_EUNSUPPORTED;
    unsigned gy = kcuda__blocks(items, RKV_THREADS);
    if (gy > 65535) return PEFTD_EUNSUPPORTED;
    kcuda_backend *cb = kcuda__impl(kb);
    if ((rc = kcuda__enter_op(cb)) != 0) return rc;
    k_rope_kv_store<<<dim3((unsigned)n, gy), RKV_THREADS, 0, cb->stream>>>(
        q, k, v, pos, n_heads, n_kv_heads, head_dim, rot_dim, f->inv_freq, f->table, f->n_tables, f->scale, slots,
        (float *)k_cache, (float *)v_cache, cb->d_err);
    KCUDA_LAUNCH_CHECK();
    return 0;
}
