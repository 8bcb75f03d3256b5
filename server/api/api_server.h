/* server/api/api_server.h — the OpenAI-compatible API served over the HTTP transport:
 * POST /v1/completions and /v1/chat/completions (JSON or SSE), GET /v1/models, the adapter
 * resource (PUT multipart upload / GET / DELETE /v1/adapters/{name}, GET /v1/adapters),
 * tenant administration (/v1/admin/tenants...), GET /health, /ready and /metrics.
 *
 * The API layer parses and validates requests, tokenizes prompts, submits engine_requests
 * and formats the engine's output on the transport's threads; it never touches the model
 * or the backend. A client that disconnects cancels its request.
 */
#ifndef PEFTD_API_SERVER_H
#define PEFTD_API_SERVER_H

#include <stddef.h>

#include "adapter_store/registry.h"
#include "adapter_store/store.h"
#include "server/adapters/adapter_service.h"
#include "server/engine/engine.h"
#include "server/http/http_server.h"

typedef struct api_server api_server;

/* Loads the chat template (cfg->chat_template, else the model's), starts the import
 * threads and the HTTP transport on cfg->listen_fd (taken over: closed on failure too).
 * @note caller owns *out: api_server_stop(). e, tok, m, reg, store and svc must outlive it;
 * store and svc may both be NULL (no adapter store: /v1/adapters answers 503 and
 * /v1/models lists the registry). */
int api_server_start(const http_config *cfg, engine *e, const tokenizer *tok, const model *m, adapter_registry *reg,
                     astore *store, adapter_service *svc, api_server **out, char *err, size_t errlen);
int api_server_port(const api_server *a); /* the bound port */
/* Stops accepting, cancels in-flight requests' engine work (resuming their connections),
 * abandons queued imports, lets finished answers reach their clients (bounded), stops the
 * transport, frees. NULL is a no-op. */
void api_server_stop(api_server *a);

#endif
