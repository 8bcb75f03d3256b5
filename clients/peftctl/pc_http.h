/* clients/peftctl/pc_http.h — peftctl's HTTP layer over libcurl: one request at a time,
 * the whole answer collected (or handed over piece by piece for streams), the server's
 * OpenAI-style error message extracted, and the exit codes the commands return.
 */
#ifndef PEFTCTL_HTTP_H
#define PEFTCTL_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <curl/curl.h>

/* Exit codes. */
enum {
    PC_OK = 0,
    PC_REFUSED = 1,   /* the server answered with an error */
    PC_USAGE = 2,     /* bad arguments or local input */
    PC_NOCONNECT = 3, /* no answer: cannot connect, timeout, broken transfer */
};

typedef struct {
    const char *url;     /* base URL, no trailing slash needed */
    const char *api_key; /* NULL = no Authorization header */
    long timeout_s;      /* whole-request timeout; 0 = none */
} pc_ctx;

typedef struct {
    long status;
    char *body; /* NUL-terminated; caller frees with pc_resp_free */
    size_t len;
} pc_resp;

/* Called with each piece of a 2xx answer as it arrives (streams); return false to stop. */
typedef bool (*pc_chunk_fn)(void *ud, const char *data, size_t n);

typedef struct {
    const char *method;    /* "GET", "PUT", ... */
    const char *path;      /* "/v1/adapters", with query */
    const char *json;      /* JSON body, or NULL */
    curl_mime *mime;       /* multipart body, or NULL */
    bool progress;         /* upload progress bar on stderr */
    pc_chunk_fn on_chunk;  /* stream 2xx bodies here instead of collecting them */
    void *ud;
} pc_req;

/* Runs the request. PC_OK when an HTTP answer arrived (any status, in *out);
 * PC_NOCONNECT (message printed) when none did. */
int pc_request(const pc_ctx *c, const pc_req *r, pc_resp *out);
void pc_resp_free(pc_resp *r);

/* For a non-2xx answer: prints "peftctl: <server's message> (HTTP <status>)" and returns
 * PC_REFUSED. */
int pc_report_error(const pc_resp *r);

/* name percent-encoded for a path segment. @note caller frees with curl_free(). */
char *pc_escape(const char *name);

#endif
