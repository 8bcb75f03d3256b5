/* server/http/http_internal.h — what the transport's own files share (http_server.c owns
 * the server struct). Nothing outside server/http/ includes this header.
 */
#ifndef PEFTD_HTTP_INTERNAL_H
#define PEFTD_HTTP_INTERNAL_H

#include "server/http/http_server.h"

/* Counts a queued response in peftd_requests_total under r's label ("other" for NULL).
 * Any thread. */
void http_server__count(http_server *s, const http_route *r, unsigned status);

#endif
