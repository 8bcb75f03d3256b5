/* kernels/kernels.c — backend-independent helpers declared in kernels.h. */
#include "kernels/kernels.h"

const char *kdtype_name(kdtype t) {
    switch (t) {
    case KDT_F32: return "f32";
    case KDT_F16: return "f16";
    case KDT_BF16: return "bf16";
    }
    return "unknown";
}
