/* server/api/api_console.h — the web console's embedded static files: the table that
 * server/console/embed.sh generates at build time from server/console/ (build/gen/
 * console_assets.c), served by api_console.c at / and /console/<name>. */
#ifndef PEFTD_API_CONSOLE_H
#define PEFTD_API_CONSOLE_H

#include <stddef.h>

typedef struct {
    const char *name;         /* file name: served at /console/<name> */
    const char *content_type;
    const char *etag;         /* quoted strong ETag: a prefix of the file's SHA-256 */
    const unsigned char *data;
    size_t len;
} console_asset;

extern const console_asset console_assets[];
extern const int console_n_assets;

#endif
