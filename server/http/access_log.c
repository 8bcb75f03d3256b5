/* server/http/access_log.c — see access_log.h. */
#include "server/http/access_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "server/http/http_metrics.h"

/* The sink: fd -1 = off. Lines are written with one write(2) on an O_APPEND descriptor, so
 * concurrent lines never interleave; the lock only orders a reconfiguration against
 * writers. */
static pthread_rwlock_t g_sink_mu = PTHREAD_RWLOCK_INITIALIZER;
static int g_fd = STDERR_FILENO;
static bool g_fd_owned;
static _Atomic int g_format = LOG_FORMAT_TEXT;

int access_log_configure(const char *path, int format) {
    int fd = -1;
    bool owned = false;
    if (!path || !*path || !strcmp(path, "off")) fd = -1;
    else if (!strcmp(path, "-") || !strcmp(path, "stderr")) fd = STDERR_FILENO;
    else {
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd < 0) return -errno;
        owned = true;
    }
    pthread_rwlock_wrlock(&g_sink_mu);
    if (g_fd_owned) close(g_fd);
    g_fd = fd;
    g_fd_owned = owned;
    atomic_store(&g_format, format == LOG_FORMAT_JSON ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT);
    pthread_rwlock_unlock(&g_sink_mu);
    return 0;
}

void access_log_close(void) { access_log_configure("off", LOG_FORMAT_TEXT); }

static bool id_char_ok(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == ':' || c == '-';
}

/* A client id is echoed in a header and logged: only short ids of safe characters. */
static bool client_id_ok(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 64) return false;
    for (size_t i = 0; i < n; i++)
        if (!id_char_ok(s[i])) return false;
    return true;
}

void access_log_begin(http_access *a, struct MHD_Connection *conn, const char *method, const char *url,
                      uint64_t seq) {
    a->t0_ns = http_now_ns();
    const char *cid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (client_id_ok(cid)) {
        snprintf(a->id, sizeof a->id, "%s", cid);
        a->client_id = true;
    } else {
        /* The same scrambling as completion ids: unique, but no request count leaks. */
        snprintf(a->id, sizeof a->id, "req-%016" PRIx64, seq * UINT64_C(0x9E3779B97F4A7C15));
    }
    snprintf(a->method, sizeof a->method, "%s", method ? method : "");
    snprintf(a->path, sizeof a->path, "%s", url ? url : "");
}

void access_log_adopt_id(http_access *a, const char *id) {
    if (!a->client_id && id && *id) snprintf(a->id, sizeof a->id, "%s", id);
}

void access_log_response(http_access *a, struct MHD_Response *resp, unsigned status, size_t body_len) {
    if (a->id[0]) MHD_add_response_header(resp, "X-Request-Id", a->id);
    a->status = status;
    a->bytes = body_len;
}

static void client_addr(struct MHD_Connection *conn, char *out, size_t cap) {
    snprintf(out, cap, "-");
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)cap);
}

static const char *termination_name(enum MHD_RequestTerminationCode toe) {
    switch (toe) {
    case MHD_REQUEST_TERMINATED_COMPLETED_OK: return "ok";
    case MHD_REQUEST_TERMINATED_WITH_ERROR: return "error";
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED: return "timeout";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN: return "shutdown";
    case MHD_REQUEST_TERMINATED_READ_ERROR: return "read_error";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT: return "client_abort";
    default: return "other";
    }
}

/* Appends ,"key":"escaped value". */
static void put_str(char *line, size_t cap, size_t *len, const char *key, const char *v) {
    size_t n = *len;
    int w = snprintf(line + n, cap - n, ",\"%s\":\"", key);
    if (w < 0 || (size_t)w >= cap - n) return;
    n += (size_t)w;
    log_json_escape(line, cap - 2, &n, v, strlen(v));
    line[n++] = '"';
    line[n] = '\0';
    *len = n;
}

/* Appends text for the text format: the value with anything but printable ASCII as '?'. */
static void put_plain(char *dst, size_t cap, const char *v) {
    size_t i = 0;
    for (; v[i] && i + 1 < cap; i++) dst[i] = (v[i] > 0x20 && v[i] < 0x7F && v[i] != '"') ? v[i] : '?';
    dst[i] = '\0';
}

void access_log_end(http_access *a, struct MHD_Connection *conn, enum MHD_RequestTerminationCode toe) {
    if (!a->id[0]) return; /* never began (allocation failure) */
    uint64_t dur_ns = http_now_ns() - a->t0_ns;
    if (a->generation) http_histogram_observe_ns(&http_metrics_get()->e2e, dur_ns);
    const char *tenant = a->tenant, *model = a->model, *adapter = a->adapter;
    int prompt_tokens = a->prompt_tokens, completion_tokens = a->completion_tokens;
    uint64_t bytes = a->bytes;
    /* A status queued but never sent (client gone) still says what we answered. */
    unsigned status = a->status;
    if (!status) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_HTTP_STATUS);
        if (ci) status = ci->http_status;
    }
    char client[INET6_ADDRSTRLEN + 1];
    client_addr(conn, client, sizeof client);

    pthread_rwlock_rdlock(&g_sink_mu);
    int fd = g_fd, format = atomic_load(&g_format);
    if (fd < 0) {
        pthread_rwlock_unlock(&g_sink_mu);
        return;
    }
    char ts[40];
    log_timestamp(ts, sizeof ts);
    /* path (200 bytes) is the only long field: 6x for escapes plus the fixed fields fit. */
    char line[4096];
    size_t len;
    if (format == LOG_FORMAT_JSON) {
        len = (size_t)snprintf(line, sizeof line, "{\"ts\":\"%s\",\"type\":\"access\"", ts);
        put_str(line, sizeof line, &len, "id", a->id);
        put_str(line, sizeof line, &len, "method", a->method);
        put_str(line, sizeof line, &len, "path", a->path);
        len += (size_t)snprintf(line + len, sizeof line - len,
                                ",\"status\":%u,\"duration_ms\":%.3f,\"bytes\":%" PRIu64, status,
                                (double)dur_ns / 1e6, bytes);
        put_str(line, sizeof line, &len, "tenant", tenant);
        put_str(line, sizeof line, &len, "model", model);
        put_str(line, sizeof line, &len, "adapter", adapter);
        len += (size_t)snprintf(line + len, sizeof line - len, ",\"prompt_tokens\":%d,\"completion_tokens\":%d",
                                prompt_tokens < 0 ? 0 : prompt_tokens, completion_tokens < 0 ? 0 : completion_tokens);
        put_str(line, sizeof line, &len, "client", client);
        put_str(line, sizeof line, &len, "termination", termination_name(toe));
        if (len > sizeof line - 3) len = sizeof line - 3;
        memcpy(line + len, "}\n", 3);
        len += 2;
    } else {
        char path[sizeof a->path], meth[sizeof a->method], ten[65], mod[160];
        put_plain(path, sizeof path, a->path);
        put_plain(meth, sizeof meth, a->method);
        put_plain(ten, sizeof ten, tenant[0] ? tenant : "-");
        put_plain(mod, sizeof mod, model[0] ? model : "-");
        int w = snprintf(line, sizeof line,
                         "%s info  access %s %s %s %u %.3fms %" PRIu64 "B tenant=%s model=%s tokens=%d+%d client=%s %s\n",
                         ts, a->id, meth, path, status, (double)dur_ns / 1e6, bytes, ten, mod,
                         prompt_tokens < 0 ? 0 : prompt_tokens, completion_tokens < 0 ? 0 : completion_tokens,
                         client, termination_name(toe));
        len = w < 0 ? 0 : (size_t)w < sizeof line ? (size_t)w : sizeof line - 1;
        if (len && line[len - 1] != '\n') line[len - 1] = '\n';
    }
    ssize_t wr = write(fd, line, len);
    (void)wr; /* a full disk or closed stderr must not fail the request */
    pthread_rwlock_unlock(&g_sink_mu);
}
