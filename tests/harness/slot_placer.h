/* tests/harness/slot_placer.h — an adapter_placer (adapter_store/adapter.h) over a slot pool
 * (kernels/slot_pool.h) for tests, as adapter_store/tiers.c places fetched versions: place()
 * loads the block into a slot under `key`, release() retires it (checking the address is
 * that slot's). */
#ifndef PEFTD_TEST_SLOT_PLACER_H
#define PEFTD_TEST_SLOT_PLACER_H

#include "adapter_store/adapter.h"
#include "kernels/slot_pool.h"
#include "tests/harness/test.h"

typedef struct {
    slot_pool *pool;
    const char *key;
    int slot; /* the slot place() took, -1 before */
} slot_placer_ud;

static inline int slot_placer_place(void *ud, const void *host, size_t bytes, void **dev, char *err,
                                    size_t errlen) {
    slot_placer_ud *u = ud;
    int rc = slot_pool_load(u->pool, u->key, host, bytes, &u->slot, err, errlen);
    if (rc == 0) *dev = slot_pool_addr(u->pool, u->slot);
    return rc;
}

static inline void slot_placer_release(void *ud, void *dev) {
    slot_placer_ud *u = ud;
    ASSERT_EQ(slot_pool_slot_at(u->pool, dev), u->slot);
    slot_pool_retire(u->pool, u->key);
}

static inline adapter_placer slot_placer(slot_placer_ud *u) {
    adapter_placer p = {slot_placer_place, slot_placer_release, u};
    return p;
}

#endif
