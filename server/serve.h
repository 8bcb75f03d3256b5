/* server/serve.h — `peftd serve` after its command line is parsed (server/main.c): bring-up
 * (log settings, the listening socket, the adapter store, the runtime, preloaded adapters,
 * tenants, the HTTP server), the signal loop (SIGTERM/SIGINT drain then stop, SIGHUP
 * reload) and teardown in the reverse order. Runs on the main thread. */
#ifndef PEFTD_SERVE_H
#define PEFTD_SERVE_H

#include "server/config.h"

/* Installs plain handlers that record SIGTERM, SIGINT and SIGHUP until serve_run's loop
 * handles them (then they are replayed): call first thing, before the config is read. */
void serve_catch_signals(void);

/* Serves cfg until a signal stops it. config_path (or NULL) is re-read on SIGHUP.
 * Returns the process exit status: 0 after a clean stop, 1 when bring-up failed, 2 when
 * the log settings cannot be applied (reason on stderr). @note cfg stays the caller's. */
int serve_run(peftd_config *cfg, const char *config_path);

#endif
