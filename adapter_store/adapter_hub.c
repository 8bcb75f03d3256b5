/* adapter_store/adapter_hub.c — AdapterHub (adapters 1.3) bottleneck adapters. */
#include "adapter_store/adapter_internal.h"

int adapter__load_hub(adapter__ctx *c) {
    return adapter__fail(c, PEFTD_EUNSUPPORTED, "AdapterHub adapters: not yet");
}
