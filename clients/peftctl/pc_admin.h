/* clients/peftctl/pc_admin.h — `peftctl admin ...`: tenants and API keys over
 * /v1/admin/tenants (the daemon's admin key as --api-key / PEFTD_API_KEY).
 */
#ifndef PEFTCTL_ADMIN_H
#define PEFTCTL_ADMIN_H

#include "clients/peftctl/pc_http.h"

/* argv: what follows "admin" (tenant create|ls|rm|set, key create|ls|revoke). Returns an
 * exit code (pc_http.h). */
int pc_admin_main(const pc_ctx *c, int argc, char **argv);

#endif
