/* adapter_store/store_internal.h — what store.c shares with the other files that keep
 * records in the store's LMDB environment (tenant_store.c): the environment, its named
 * databases and the transaction helpers with their locking and map growth. Nothing
 * outside adapter_store/ includes this header.
 */
#ifndef PEFTD_STORE_INTERNAL_H
#define PEFTD_STORE_INTERNAL_H

#include <lmdb.h>
#include <pthread.h>

#include "adapter_store/store.h"

struct astore {
    MDB_env *env;
    MDB_dbi meta, blobs, refs, info;
    MDB_dbi tenants, keys; /* tenant_store.h's schema */
    size_t max_map;
    int lock_fd;           /* astore_options.exclusive: the flocked <dir>/peftd.lock; -1 = none */
    pthread_mutex_t write_lock;
    pthread_rwlock_t map_lock;
};

/* An LMDB or errno-style code as a project status (0 stays 0). */
int astore__status(int rc);

/* Starts a short read transaction; map_lock is held shared until astore__read_end. */
int astore__read_begin(astore *s, MDB_txn **txn);
void astore__read_end(astore *s, MDB_txn *txn);

/* The body of a write transaction: returns 0 to commit, an MDB or PEFTD code to abort. It
 * may run several times (after the map grew), so it must only write into txn and ctx. */
typedef int (*astore__write_fn)(astore *s, MDB_txn *txn, void *ctx);

/* Deletes every record owner owns (keys "owner/...") inside txn, with their blob
 * references (a blob goes with its last reference), and appends the deleted keys and the
 * dropped hashes to *r (may be NULL). owner must be a valid, non-empty tenant id. */
int astore__delete_owner_txn(astore *s, MDB_txn *txn, const char *owner, astore_removed *r);

/* Runs fn in one write transaction, growing the map and retrying on MDB_MAP_FULL; beyond
 * max_map the transaction is aborted (nothing changed) and PEFTD_ENOSPC returned. */
int astore__write_txn(astore *s, astore__write_fn fn, void *ctx);

#endif
