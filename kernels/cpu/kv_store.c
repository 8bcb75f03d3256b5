/* kernels/cpu/kv_store.c — writes this step's K/V rows into their paged-cache
 * slots (slot id = block * block_size + offset, i.e. row `slot` of the cache
 * viewed as [n_blocks * block_size, kv_dim]), as f32 or narrowed to f16. */
#include <string.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/simd.h"

int kcpu__kv_store(kbackend *kb, const float *k, const float *v, const int32_t *slots, int n,
                   int kv_dim, kdtype kv_dtype, void *k_cache, void *v_cache) {
    (void)kb;
    if (n < 0 || kv_dim <= 0) return PEFTD_EINVAL;
    if (kv_dtype != KDT_F32 && kv_dtype != KDT_F16) return PEFTD_EUNSUPPORTED;
    if (n == 0) return 0;
    if (!k || !v || !slots || !k_cache || !v_cache) return PEFTD_EINVAL;
    /* The cache size is not passed, so only negative slots can be refused here;
     * the KV-cache allocator owns the upper bound. */
    for (int i = 0; i < n; i++)
        if (slots[i] < 0) return PEFTD_ERANGE;
    if (kv_dtype == KDT_F16) {
        uint16_t *kc = k_cache, *vc = v_cache;
        for (int i = 0; i < n; i++) {
            kv_row_to_f16(k + (int64_t)i * kv_dim, kc + (int64_t)slots[i] * kv_dim, kv_dim);
            kv_row_to_f16(v + (int64_t)i * kv_dim, vc + (int64_t)slots[i] * kv_dim, kv_dim);
        }
        return 0;
    }
    float *kc = k_cache, *vc = v_cache;
    size_t row = (size_t)kv_dim * sizeof(float);
    for (int i = 0; i < n; i++) {
        memcpy(kc + (int64_t)slots[i] * kv_dim, k + (int64_t)i * kv_dim, row);
        memcpy(vc + (int64_t)slots[i] * kv_dim, v + (int64_t)i * kv_dim, row);
    }
    return 0;
}
