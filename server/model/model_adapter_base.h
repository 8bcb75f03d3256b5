/* server/model/model_adapter_base.h — the bridge from a loaded model to adapter_store. */
#ifndef PEFTD_MODEL_ADAPTER_BASE_H
#define PEFTD_MODEL_ADAPTER_BASE_H

#include "adapter_store/adapter.h"
#include "server/model/model.h"

/* Fills b from m; b->layer_w is allocated: model_adapter_base_free(). */
int model_adapter_base(const model *m, adapter_base *b);
void model_adapter_base_free(adapter_base *b);

/* adapter_load_dir() against m (host memory), then adapter_install() on m->kb: call it on
 * the thread that owns m->kb (kernels.h: before the engine starts, or on the engine
 * thread), e.g. the CLI's --adapter and tests. Daemon imports use adapter_load_dir alone.
 * @note caller owns *out: adapter_free() (on that same thread when the backend is not is_host). */
int model_load_adapter(const model *m, const char *dir, adapter **out, char *err, size_t errlen);

#endif
