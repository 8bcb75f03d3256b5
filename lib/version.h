/* lib/version.h — the daemon's version and the commit it was built from (--version,
 * peftd_build_info on /metrics). */
#ifndef PEFTD_VERSION_H
#define PEFTD_VERSION_H

#define PEFTD_VERSION "0.1.0"

/* The git commit of the build (make passes PEFTD_COMMIT to lib/version.c; "unknown"
 * outside a git checkout). */
const char *peftd_commit(void);

#endif
