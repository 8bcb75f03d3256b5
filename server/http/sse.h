/* server/http/sse.h — Server-Sent Events framing (the subset OpenAI streams use):
 * "data: <payload>\n\n" events and the closing "data: [DONE]\n\n". Internal to
 * server/http/. */
#ifndef PEFTD_SSE_H
#define PEFTD_SSE_H

#include "server/http/http_request.h"

/* payload must not contain a newline (compact JSON never does). */
int sse_append_data(http_buf *out, const char *payload, size_t len);
int sse_append_done(http_buf *out);
/* Appends o as one compact-JSON event and frees o (NULL o: PEFTD_ENOMEM, the caller's
 * allocation failed). */
struct cJSON;
int sse_append_json(http_buf *out, struct cJSON *o);

#endif
