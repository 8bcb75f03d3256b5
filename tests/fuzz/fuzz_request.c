/* tests/fuzz/fuzz_request.c — libFuzzer target for the request parsers behind
 * POST /v1/completions and POST /v1/chat/completions: arbitrary bytes as the JSON body,
 * against the real default model's tokenizer, an adapter registry and a (not started)
 * engine, exactly as an HTTP thread calls them. Any accepted request must be freeable;
 * nothing may crash, leak or read out of bounds.
 *
 * Built and run by `make fuzz` (clang, -fsanitize=fuzzer,address,undefined), from the
 * repository root; seeds come from tests/fuzz/request_seeds/.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/registry.h"
#include "lib/log.h"
#include "server/engine/engine.h"
#include "server/api/api_completions.h"
#include "server/api/api_internal.h"
#include "server/text/chat_template.h"

static api_server g_srv;

static void setup(void) {
    char err[512];
    log_set_level(LOG_ERROR);
    kbackend *kb = kbackend_cpu_create(1);
    model *m = NULL;
    tokenizer *tok = NULL;
    engine *e = NULL;
    adapter_registry *reg = NULL;
    engine_config ec;
    engine_config_default(&ec);
    ec.kv_cache_mb = 16;
    if (!kb || model_load("models/stories260K", kb, &m, err, sizeof err) < 0 ||
        tokenizer_load("models/stories260K", &tok, err, sizeof err) < 0 ||
        engine_create(&ec, m, kb, tok, &e, err, sizeof err) < 0 || registry_create(&reg) < 0) {
        fprintf(stderr, "fuzz_request: set-up failed (run from the repository root): %s\n", err);
        abort();
    }
    g_srv.m = m;
    g_srv.tok = tok;
    g_srv.e = e;
    g_srv.reg = reg;
    /* a ChatML template (the chat fixture model's) so chat bodies reach the renderer */
    if (chat_template_load("tests/fixtures/models/stories260K-chat", NULL, &g_srv.chat, err, sizeof err) < 0) {
        fprintf(stderr, "fuzz_request: chat template: %s\n", err);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_srv.m) setup();
    api_request req;
    api_err err;
    if (api_request_parse(&g_srv, NULL, (const char *)data, size, &req, &err) == 0) api_request_free(&req);
    if (api_chat_parse(&g_srv, NULL, (const char *)data, size, &req, &err) == 0) api_request_free(&req);
    return 0;
}
