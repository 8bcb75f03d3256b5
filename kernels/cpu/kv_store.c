/* kernels/cpu/kv_store.c — writes this step's K/V rows into their paged-cache
 * slots (slot id = block * block_size + offset, i.e. row `slot` of the cache
 * viewed as [n_blocks * block_size, kv_dim]). */
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

int kcpu__kv_store(kbackend *kb, const float *k, const float *v, const int32_t *slots, int n,
                   int kv_dim, float *k_cache, float *v_cache) {
    (void)kb;
    if (n < 0 || kv_dim <= 0) return PEFTD_EINVAL;
    if (n == 0) return 0;
    if (!k || !v || !slots || !k_cache || !v_cache) return PEFTD_EINVAL;
    /* The cache size is not passed, so only negative slots can be refused here;
     * the KV-cache allocator owns the upper bound. */
    for (int i = 0; i < n; i++)
        if (slots[i] < 0) return PEFTD_ERANGE;
    size_t row = (size_t)kv_dim * sizeof(float);
    for (int i = 0; i < n; i++) {
        memcpy(k_cache + (int64_t)slots[i] * kv_dim, k + (int64_t)i * kv_dim, row);
        memcpy(v_cache + (int64_t)slots[i] * kv_dim, v + (int64_t)i * kv_dim, row);
    }
    return 0;
}
