/* tests/harness/test_dtype.h — test data in the kernels' storage dtypes, shared by the
 * kernel tests (test_kernels_cpu, test_sgmv_cpu). Header-only (static inline) so the
 * harness itself (test.c) stays free of the kernels' headers.
 */
#ifndef PEFTD_TEST_DTYPE_H
#define PEFTD_TEST_DTYPE_H

#include <stdint.h>
#include <stdlib.h>

#include "kernels/kernels.h"
#include "lib/half.h"
#include "tests/harness/test.h"

/* The n values rounded to dtype dt in place, and their storage in that dtype.
 * @note caller frees the result. */
static inline void *test_to_dtype(kdtype dt, float *vals, int64_t n) {
    void *s = malloc((size_t)(n ? n : 1) * kdtype_size(dt));
    ASSERT(s);
    for (int64_t i = 0; i < n; i++) {
        if (dt == KDT_F32) ((float *)s)[i] = vals[i];
        else if (dt == KDT_F16) vals[i] = f16_to_f32(((uint16_t *)s)[i] = f32_to_f16(vals[i]));
        else vals[i] = bf16_to_f32(((uint16_t *)s)[i] = f32_to_bf16(vals[i]));
    }
    return s;
}

#endif
