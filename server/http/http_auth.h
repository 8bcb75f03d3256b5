/* server/http/http_auth.h — authentication of HTTP requests (Authorization: Bearer KEY)
 * and the owner scope handlers read from an authenticated request.
 *
 * Auth is on when the server was started with tenants (http_config.tenants) whose config
 * enables it. Then every route but /health, /ready and /metrics needs a valid key:
 * missing, unknown or revoked -> 401 with `WWW-Authenticate: Bearer`; /v1/admin/... needs
 * the admin key (a tenant's key -> 403). The principal lands in http_req.who; its tenant
 * id is the owner scope of every adapter operation (store.h, owner scoping).
 */
#ifndef PEFTD_HTTP_AUTH_H
#define PEFTD_HTTP_AUTH_H

#include "server/http/http_request.h"

/* First call of a request: authenticates it. false: an error response was queued (req->answered
 * set) and *ret is what the access handler returns. */
bool http_auth_request(http_req *req, struct MHD_Connection *conn, const char *url, enum MHD_Result *ret);

/* Auth is on: adapters are owner-scoped. */
bool http_auth_on(const http_server *s);
/* The owner scope of the request's adapter operations: its tenant id, "" for the admin
 * (public adapters) and for everything with auth off. */
const char *http_owner(const http_req *req);

#endif
