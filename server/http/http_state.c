/* server/http/http_state.c — the server struct's shared questions: its resolved
 * configuration and the response counters of peftd_requests_total. A leaf of the transport:
 * http_server.c, http_errors.c and http_auth.c call it, it calls none of them. */
#include <string.h>

#include "server/http/http_internal.h"

const http_config *http_server_config(const http_server *s) { return &s->cfg; }

void http_server__count(http_server *s, const http_route *r, unsigned status) {
    const char *label = r && r->label ? r->label : "other";
    pthread_mutex_lock(&s->stats_mu);
    for (int i = 0; i < s->n_counters; i++) {
        if (!strcmp(s->counters[i].label, label) && s->counters[i].status == status) {
            s->counters[i].n++;
            goto out;
        }
    }
    if (s->n_counters < HTTP_MAX_COUNTERS)
        s->counters[s->n_counters++] = (http_counter){.label = label, .status = status, .n = 1};
out:
    pthread_mutex_unlock(&s->stats_mu);
}

int http_server_counters(http_server *s, http_counter *out, int cap) {
    pthread_mutex_lock(&s->stats_mu);
    int n = s->n_counters < cap ? s->n_counters : cap;
    memcpy(out, s->counters, (size_t)n * sizeof *out);
    pthread_mutex_unlock(&s->stats_mu);
    return n;
}
