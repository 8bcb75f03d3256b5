/* server/http/sse.c — Server-Sent Events framing for streamed completions. */
#include "server/http/sse.h"

#include <cJSON.h>
#include <string.h>

int sse_append_data(http_buf *out, const char *payload, size_t len) {
    int rc = http_buf_append(out, "data: ", 6);
    if (!rc) rc = http_buf_append(out, payload, len);
    if (!rc) rc = http_buf_append(out, "\n\n", 2);
    return rc;
}

int sse_append_done(http_buf *out) { return http_buf_puts(out, "data: [DONE]\n\n"); }

int sse_append_json(http_buf *out, cJSON *o) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) return PEFTD_ENOMEM;
    int rc = sse_append_data(out, s, strlen(s));
    cJSON_free(s);
    return rc;
}
