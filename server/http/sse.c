/* server/http/sse.c — Server-Sent Events framing for streamed completions. */
#include "server/http/sse.h"

int sse_append_data(http_buf *out, const char *payload, size_t len) {
    int rc = http_buf_append(out, "data: ", 6);
    if (!rc) rc = http_buf_append(out, payload, len);
    if (!rc) rc = http_buf_append(out, "\n\n", 2);
    return rc;
}

int sse_append_done(http_buf *out) { return http_buf_puts(out, "data: [DONE]\n\n"); }
