/* server/http/http_server.c — the libmicrohttpd daemon: start/stop, the access handler
 * (body accumulation with a size limit, routing by path and method over the table the
 * application handed over), the request-completed callback that hands a request's end
 * to its route (a client that went away cancels its work there), the request counters.
 *
 * MHD runs in epoll mode with its own polling thread(s) and suspend/resume enabled, so a
 * request waiting for the engine costs a suspended connection, not a blocked thread.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/status.h"
#include "server/http/http_auth.h"
#include "server/http/http_internal.h"

/* Defaults for fields left 0 in http_config. 1 MiB holds any completion request with a
 * prompt that fits a context window many times over. */
#define HTTP_DEFAULT_MAX_BODY (1u << 20)
/* 2 GiB holds a rank-64 LoRA on every linear layer of a 7B model in f32 (~640 MiB) with
 * room for larger bases; uploads stream to disk, so the limit bounds disk, not memory. */
#define HTTP_DEFAULT_MAX_UPLOAD (2ull << 30)
/* The default connection limit is what the descriptor limit allows (see http_size_fds),
 * at most this: 64 Ki idle connections cost 64 Ki descriptors and MHD's 32 KiB pools
 * (2 GiB, mostly untouched), no threads. */
#define HTTP_DEFAULT_MAX_CONNECTIONS 65536
/* Descriptors kept back from connections and upload staging files for everything else:
 * stdio, the LMDB environment (data.mdb, lock.mdb, the store's lock file), the access log,
 * the config file on SIGHUP, the model's files while they are opened (a sharded
 * checkpoint's shards, tokenizer, template), libuv (per loop: epoll, eventfd, signal pipe;
 * the serve loop, the engine's, the threadpool's wake-ups) and the listening socket. A
 * daemon at rest holds 28 descriptors (measured: stories260K, 4 HTTP threads, 8 of them
 * the threads'): the base is that, less the threads', twice over, rounded up. */
#define HTTP_FD_RESERVE_BASE 64
/* Per libmicrohttpd thread: its epoll descriptor and its eventfd (inter-thread wake-up). */
#define HTTP_FD_PER_HTTP_THREAD 2
/* Per import thread: adapter_config.json and the weights file it reads, the directory
 * stream of a staging removal, one spare for LMDB's file operations (map growth). */
#define HTTP_FD_PER_IMPORT_THREAD 4
/* The derived upload limit takes a quarter of what the reserve leaves, the connection
 * limit the rest: uploads held open fill at most a third of the connections, the other
 * two thirds always serve completions. At most this many: each open upload also holds a
 * 64 KiB multipart buffer and libmicrohttpd's connection pool (~100 KiB in all). */
#define HTTP_UPLOAD_SHARE 4
#define HTTP_DEFAULT_MAX_UPLOADS 1024
/* Import threads: an import is seconds of CPU on a large adapter; two keep one slow
 * import from holding every other upload's answer without taking cores from decoding. */
#define HTTP_DEFAULT_IMPORT_THREADS 2
/* Finished uploads that may wait for an import thread, per thread (beyond: 503). */
#define HTTP_IMPORT_QUEUE_PER_THREAD 8
/* Idle connections (no byte in either direction; suspended ones — waiting on the engine —
 * never time out) are closed after this long. Short on purpose: libmicrohttpd 0.9.75 in
 * epoll mode occasionally misses a peer's close, and the timeout is what reclaims such a
 * connection; 15 s is still far above any client's think time between keep-alive requests
 * in practice (nginx's keepalive_timeout default is 75 s, most clients reconnect anyway). */
#define HTTP_DEFAULT_TIMEOUT_S 15
/* A chunked (length-less) body past the limit is read and discarded so that the client
 * can read its 413; past this many times the limit we stop reading and close instead. */
#define HTTP_DRAIN_FACTOR 4


static const http_route *http_find_route(const http_server *s, const char *url) {
    for (int i = 0; i < s->n_routes; i++) {
        const http_route *r = &s->routes[i];
        if (r->prefix ? strncmp(url, r->path, strlen(r->path)) == 0 : strcmp(url, r->path) == 0)
            return r;
    }
    return NULL;
}

static unsigned http_method_flag(const char *method) {
    static const struct {
        const char *name;
        unsigned flag;
    } methods[] = {
        {MHD_HTTP_METHOD_GET, HTTP_M_GET},     {MHD_HTTP_METHOD_HEAD, HTTP_M_HEAD},
        {MHD_HTTP_METHOD_POST, HTTP_M_POST},   {MHD_HTTP_METHOD_PUT, HTTP_M_PUT},
        {MHD_HTTP_METHOD_DELETE, HTTP_M_DELETE}, {MHD_HTTP_METHOD_PATCH, HTTP_M_PATCH},
    };
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (strcmp(method, methods[i].name) == 0) return methods[i].flag;
    return HTTP_M_OTHER;
}

static int http_hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static int http_body_append(http_req *req, const char *data, size_t n) {
    if (req->too_large || req->len + n > req->srv->cfg.max_body_bytes) {
        req->too_large = true;
        req->len += n; /* counts discarded bytes, for the drain cap */
        return 0;
    }
    if (req->len + n + 1 > req->cap) {
        size_t cap = req->cap ? req->cap : 4096;
        while (cap < req->len + n + 1) cap *= 2;
        char *p = realloc(req->body, cap);
        if (!p) return PEFTD_ENOMEM;
        req->body = p;
        req->cap = cap;
    }
    memcpy(req->body + req->len, data, n);
    req->len += n;
    req->body[req->len] = '\0';
    return 0;
}

/* First call for a request: route it and check a declared Content-Length against the
 * limit. Answering 413 before reading the body lets MHD close the connection without
 * reading megabytes we would throw away. An adapter upload (PUT /v1/adapters/{name}) has
 * its own limit and streams its body to disk (api_adapters.c). */
typedef struct {
    int content_length, transfer_encoding, authorization;
} http_framing;

static enum MHD_Result http_count_framing(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    http_framing *f = cls;
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) f->content_length++;
    else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) f->transfer_encoding++;
    else if (!strcasecmp(key, MHD_HTTP_HEADER_AUTHORIZATION)) f->authorization++;
    return MHD_YES;
}

static enum MHD_Result http_first_call(http_server *s, struct MHD_Connection *conn,
                                       const char *url, const char *method, void **con_cls) {
    http_req *req = calloc(1, sizeof *req);
    if (!req) return MHD_NO;
    req->srv = s;
    req->app = s->app;
    access_log_begin(&req->acc, conn, method, url, atomic_fetch_add(&s->next_id, 1));
    const http_route *r = http_find_route(s, url);
    req->route = r;
    req->method = http_method_flag(method);
    req->keep_body = r && (r->methods & req->method & (HTTP_M_POST | HTTP_M_PATCH));
    *con_cls = req;
    if (r && r->prefix && !(req->arg = strdup(url + strlen(r->path)))) return MHD_NO;
    /* Request smuggling behind a proxy: two framings that disagree, or two credentials of
     * which a proxy and peftd may each read another, are refused before anything else
     * (uploads and authentication included). */
    http_framing fr = {0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, http_count_framing, &fr);
    if (fr.content_length > 1 || (fr.content_length && fr.transfer_encoding) || fr.authorization > 1) {
        req->answered = true;
        return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_request",
                          fr.authorization > 1  ? "more than one Authorization header"
                          : fr.content_length > 1 ? "more than one Content-Length header"
                                                  : "both Content-Length and Transfer-Encoding");
    }
    enum MHD_Result denied;
    http_cors_begin(req, conn);
    if (http_cors_preflight(req, conn, method, &denied)) return denied;
    if (!http_auth_request(req, conn, url, &denied)) return denied;

    if (r && r->begin && (r->stream_methods & req->method)) return r->begin(req, conn);

    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(cl, &end, 10);
        if (errno == ERANGE || v > s->cfg.max_body_bytes) {
            req->too_large = true;
            req->answered = true;
            return http_error(req, conn, MHD_HTTP_CONTENT_TOO_LARGE, NULL,
                              "request body of %s bytes is over the limit of %zu bytes", cl,
                              s->cfg.max_body_bytes);
        }
    }
    return MHD_YES;
}

static enum MHD_Result http_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_data_size,
                                    void **con_cls) {
    http_server *s = cls;
    if (!*con_cls) return http_first_call(s, conn, url, method, con_cls);
    http_req *req = *con_cls;

    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (req->ctx && req->route->data) return req->route->data(req, upload_data, n);
        if (!req->keep_body || req->answered) {
            req->len += n;
            return req->len > HTTP_DRAIN_FACTOR * s->cfg.max_body_bytes ? MHD_NO : MHD_YES;
        }
        if (http_body_append(req, upload_data, n)) return MHD_NO;
        if (req->too_large && req->len > HTTP_DRAIN_FACTOR * s->cfg.max_body_bytes) return MHD_NO;
        return MHD_YES;
    }

    if (req->answered) return MHD_YES; /* the first call already queued the answer */
    if (req->ctx && req->route->resume) return req->route->resume(req, conn);

    const http_route *r = req->route;
    /* The path is client bytes (percent-decoded by MHD): quote it only when it is valid
     * UTF-8, so the JSON error stays valid. */
    const char *shown = http_utf8_valid(url, strlen(url)) ? url : "(non-UTF-8 path)";
    int shown_len = (int)http_utf8_prefix(shown, 200);
    const char *meth = http_utf8_valid(method, strlen(method)) ? method : "?";
    int meth_len = (int)http_utf8_prefix(meth, 16);
    if (!r)
        return http_error(req, conn, MHD_HTTP_NOT_FOUND, "not_found", "no route for %.*s %.*s",
                          meth_len, meth, shown_len, shown);
    if (!(r->methods & req->method)) {
        char msg[256];
        snprintf(msg, sizeof msg, "method %.*s is not allowed on %s%s (use %s)", meth_len, meth,
                 r->path, r->prefix ? "{name}" : "", r->allow);
        return http_error_hdr(req, conn, MHD_HTTP_METHOD_NOT_ALLOWED, NULL, MHD_HTTP_HEADER_ALLOW,
                              r->allow, msg);
    }
    if (req->too_large)
        return http_error(req, conn, MHD_HTTP_CONTENT_TOO_LARGE, NULL,
                          "request body is over the limit of %zu bytes", s->cfg.max_body_bytes);
    if (req->keep_body && req->body && http_json_has_nul(req->body, req->len))
        return http_error(req, conn, MHD_HTTP_BAD_REQUEST, "invalid_value",
                          "NUL characters (\\u0000) are not accepted in request bodies");
    return r->handle(req, conn);
}

static void http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                           enum MHD_RequestTerminationCode toe) {
    http_req *req = *con_cls;
    if (!req) return;
    *con_cls = NULL;
    if (req->ctx && req->route->closed) req->route->closed(req, toe);
    access_log_end(&req->acc, conn, toe);
    free(req->arg);
    free(req->body);
    free(req);
}

/* Percent-decoding of paths and query arguments (MHD_OPTION_UNESCAPE_CALLBACK): as
 * libmicrohttpd's, except that %00 becomes 0xFF instead of a NUL. A decoded NUL would end
 * the C string, so PUT /v1/adapters/a%00b would act on "a"; 0xFF is never valid UTF-8 and
 * no name or id accepts it, so such a path is refused (400) wherever a name is read. */
static size_t http_unescape(void *cls, struct MHD_Connection *conn, char *s) {
    (void)cls, (void)conn;
    char *w = s;
    for (const char *r = s; *r; r++) {
        int hi, lo;
        if (*r == '%' && (hi = http_hexval(r[1])) >= 0 && (lo = http_hexval(r[2])) >= 0) {
            unsigned char c = (unsigned char)(hi << 4 | lo);
            *w++ = (char)(c ? c : 0xFF);
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return (size_t)(w - s);
}

static void http_mhd_log(void *cls, const char *fmt, va_list ap) {
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    /* MHD reports routine events (a client closing mid-response) as errors: debug level. */
    LOGD("http: libmicrohttpd: %s", msg);
}

/* Sizes the connection and upload limits by the descriptor limit. An open connection
 * holds one descriptor, an upload being received two (its socket and its staging file):
 * sized for one each, held-open uploads ran the daemon out of descriptors and a normal
 * request's connection could not be accepted. At its connection limit MHD stops accepting,
 * and new clients wait in the listen backlog; so uploads get their own limit, below the
 * connection limit, and both fit the descriptors left after a reserve. The soft limit
 * (often 1024) is first raised to the hard one. Fills c->max_connections and
 * c->max_uploads (0 = derived); an explicit pair that does not fit fails the start. */
static int http_size_fds(http_config *c, char *err, size_t errlen) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        snprintf(err, errlen, "http: getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        return -errno;
    }
    long long reserve = HTTP_FD_RESERVE_BASE + (long long)HTTP_FD_PER_HTTP_THREAD * c->threads +
                        (long long)HTTP_FD_PER_IMPORT_THREAD * c->import_threads;
    rlim_t was = rl.rlim_cur;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < rl.rlim_max) {
        /* an unlimited hard limit cannot be the soft one (fs.nr_open caps it): ask for
         * what the default limits need */
        rlim_t want = rl.rlim_max != RLIM_INFINITY ? rl.rlim_max
                                                   : (rlim_t)(HTTP_DEFAULT_MAX_CONNECTIONS + HTTP_DEFAULT_MAX_UPLOADS +
                                                              reserve);
        struct rlimit raised = {.rlim_cur = want, .rlim_max = rl.rlim_max};
        if (want > rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &raised) == 0) rl.rlim_cur = want;
    }
    long long nofile = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (rlim_t)1 << 30 ? 1ll << 30
                                                                                  : (long long)rl.rlim_cur;
    long long avail = nofile - reserve;
    long long conns = c->max_connections, uploads = c->max_uploads;
    if (!conns && !uploads) {
        uploads = avail / HTTP_UPLOAD_SHARE;
        if (uploads > HTTP_DEFAULT_MAX_UPLOADS) uploads = HTTP_DEFAULT_MAX_UPLOADS;
        conns = avail - uploads;
        if (conns > HTTP_DEFAULT_MAX_CONNECTIONS) conns = HTTP_DEFAULT_MAX_CONNECTIONS;
    } else if (!uploads) {
        uploads = conns / (HTTP_UPLOAD_SHARE - 1);
        if (uploads > avail - conns) uploads = avail - conns;
        if (uploads > HTTP_DEFAULT_MAX_UPLOADS) uploads = HTTP_DEFAULT_MAX_UPLOADS;
    } else if (!conns) {
        conns = avail - uploads;
        if (conns > HTTP_DEFAULT_MAX_CONNECTIONS) conns = HTTP_DEFAULT_MAX_CONNECTIONS;
    }
    /* at least one upload, and at least one connection that is not an upload */
    if (uploads < 1 || conns <= uploads || conns + uploads > avail) {
        snprintf(err, errlen,
                 "http: %lld connections and %lld uploads at once do not fit RLIMIT_NOFILE %lld: %lld descriptors "
                 "are kept for the store, logs, model files, libuv and the threads, each connection takes one "
                 "and each upload one more (its staging file), and connections must outnumber uploads; lower "
                 "http.max_connections / http.max_uploads or raise the limit (ulimit -n, systemd LimitNOFILE=)",
                 conns, uploads, nofile, reserve);
        return PEFTD_EINVAL;
    }
    c->max_connections = (int)conns;
    c->max_uploads = (int)uploads;
    LOGI("http: descriptors: RLIMIT_NOFILE %lld (soft limit was %lld), %lld reserved (%d + %d per HTTP thread + "
         "%d per import thread): max_connections %d, max_uploads %d",
         nofile, was == RLIM_INFINITY ? -1ll : (long long)was, reserve, HTTP_FD_RESERVE_BASE, HTTP_FD_PER_HTTP_THREAD,
         HTTP_FD_PER_IMPORT_THREAD, c->max_connections, c->max_uploads);
    return 0;
}

static int http_resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *sslen,
                        char *err, size_t errlen) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int g = getaddrinfo(host && *host ? host : NULL, portstr, &hints, &res);
    if (g != 0 || !res) {
        snprintf(err, errlen, "cannot resolve host '%s': %s", host ? host : "", gai_strerror(g));
        return PEFTD_EINVAL;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* SO_REUSEADDR only: on Linux it lets a restarted daemon bind while its predecessor's
 * connections sit in TIME_WAIT, but never a second listener on the same address (that
 * is SO_REUSEPORT, which libmicrohttpd's LISTENING_ADDRESS_REUSE sets and which let two
 * daemons share a port, answering alternately). listen() right away so that a second
 * daemon's bind fails even while this one is still loading its model. */
int http_listen(const char *host, int port, int *fd_out, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    *fd_out = -1;
    if (port < 0 || port > 65535) {
        snprintf(err, errlen, "port %d is out of range", port);
        return PEFTD_EINVAL;
    }
    int rc = http_resolve(host, port, &ss, &sslen, err, errlen);
    if (rc) return rc;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return rc;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sslen) < 0 || listen(fd, SOMAXCONN) < 0) {
        rc = -errno;
        if (errno == EADDRINUSE) snprintf(err, errlen, "address already in use (another peftd, or another server)");
        else snprintf(err, errlen, "%s", strerror(errno));
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

int http_config_resolve(http_config *c, char *err, size_t errlen) {
    if (!c->max_body_bytes) c->max_body_bytes = HTTP_DEFAULT_MAX_BODY;
    if (!c->max_upload_bytes) c->max_upload_bytes = HTTP_DEFAULT_MAX_UPLOAD;
    if (c->threads < 1) c->threads = 1;
    if (c->import_threads < 1) c->import_threads = HTTP_DEFAULT_IMPORT_THREADS;
    if (c->import_queue < 1) c->import_queue = HTTP_IMPORT_QUEUE_PER_THREAD * c->import_threads;
    if (c->max_connections < 0) c->max_connections = 0;
    if (c->max_uploads < 0) c->max_uploads = 0;
    if (c->timeout_s < 1) c->timeout_s = HTTP_DEFAULT_TIMEOUT_S;
    return http_size_fds(c, err, errlen);
}

int http_server_start(const http_config *cfg, const http_route *routes, int n_routes, void *app,
                      http_server **out, char *err, size_t errlen) {
    *out = NULL;
    if (!cfg || !routes || n_routes < 1 || cfg->listen_fd < 0 || !cfg->max_connections) {
        snprintf(err, errlen, "http: invalid configuration");
        if (cfg && cfg->listen_fd >= 0) close(cfg->listen_fd);
        return PEFTD_EINVAL;
    }
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "http: out of memory");
        close(cfg->listen_fd);
        return PEFTD_ENOMEM;
    }
    s->cfg = *cfg;
    s->routes = routes;
    s->n_routes = n_routes;
    s->app = app;
    atomic_init(&s->stopping, false);
    atomic_init(&s->next_id, ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid());
    pthread_mutex_init(&s->stats_mu, NULL);
    int rc;

    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;
    if (getsockname(cfg->listen_fd, (struct sockaddr *)&ss, &sslen) < 0) {
        rc = -errno;
        snprintf(err, errlen, "http: the listening socket: %s", strerror(errno));
        goto fail;
    }

    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    /* The logger goes first: MHD logs through the default logger until it sees it. */
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)http_mhd_log, s},
        {MHD_OPTION_LISTEN_SOCKET, cfg->listen_fd, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, s->cfg.max_connections, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, s->cfg.timeout_s, NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)http_completed, s},
        {MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)http_unescape, NULL},
        {s->cfg.threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, s->cfg.threads, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    s->mhd = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, http_handler, s,
                              MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
    if (!s->mhd) {
        snprintf(err, errlen, "http: cannot start libmicrohttpd on %s:%d", cfg->host ? cfg->host : "*", cfg->port);
        rc = PEFTD_EIO;
        goto fail_mhd; /* a failed start may already have closed the socket */
    }

    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    s->port = cfg->port;
    if (info && getsockname(info->listen_fd, (struct sockaddr *)&bound, &blen) == 0) {
        if (bound.ss_family == AF_INET)
            s->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        else if (bound.ss_family == AF_INET6)
            s->port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    }
    LOGI("http: listening on %s:%d (%d thread%s, body limit %zu bytes, %d connections, %d uploads, %d import "
         "thread%s)",
         cfg->host ? cfg->host : "*", s->port, s->cfg.threads, s->cfg.threads > 1 ? "s" : "",
         s->cfg.max_body_bytes, s->cfg.max_connections, s->cfg.max_uploads, s->cfg.import_threads,
         s->cfg.import_threads > 1 ? "s" : "");
    *out = s;
    return 0;
fail:
    close(cfg->listen_fd);
fail_mhd:
    pthread_mutex_destroy(&s->stats_mu);
    free(s);
    return rc;
}

int http_server_port(const http_server *s) { return s ? s->port : -1; }
bool http_server_stopping(const http_server *s) { return atomic_load(&s->stopping); }

void http_server_quiesce(http_server *s) {
    if (!s || atomic_exchange(&s->stopping, true)) return;
    /* Stop accepting first, so no new connection races the application's resume pass. */
    MHD_socket lfd = MHD_quiesce_daemon(s->mhd);
    if (lfd != MHD_INVALID_SOCKET) close(lfd);
}

void http_server_stop(http_server *s) {
    if (!s) return;
    http_server_quiesce(s);
    MHD_stop_daemon(s->mhd);
    pthread_mutex_destroy(&s->stats_mu);
    LOGI("http: stopped");
    free(s);
}
