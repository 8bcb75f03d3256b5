/* server/api/api_health.c — GET /health: the process is alive and serving HTTP. */
#include "server/api/api_internal.h"

enum MHD_Result api_health_get(http_req *req, struct MHD_Connection *conn) {
    static const char body[] = "{\"status\":\"ok\"}";
    return http_respond(req, conn, MHD_HTTP_OK, "application/json", body, sizeof body - 1, NULL,
                        NULL);
}
