/* lib/version.c — the build's commit (see version.h). The Makefile sets PEFTD_COMMIT for
 * this one file and rebuilds it whenever the commit changes. */
#include "lib/version.h"

#ifndef PEFTD_COMMIT
#define PEFTD_COMMIT "unknown"
#endif

const char *peftd_commit(void) { return PEFTD_COMMIT; }
