/* server/replication/follower.c — the follower's thread (contract in follower.h): its
 * libcurl client, the poll loop over the primary's change feed, and the status that
 * /ready and /metrics report. Applying a page and the full resync: follower_apply.c.
 */
#include "server/replication/follower.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapter_store/store_changes.h"
#include "lib/log.h"
#include "lib/status.h"
#include "server/replication/follower_internal.h"

#define PAGE 256
/* A transfer's limits: a blob of a few hundred MB over a LAN fits the total; a primary
 * that accepts nothing is given up on quickly (and retried). */
#define CONNECT_MS 2000L
#define TRANSFER_MS 600000L

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void fol_buf_free(fol_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

static size_t on_data(char *p, size_t sz, size_t n, void *ud) {
    fol_buf *b = ud;
    size_t add = sz * n;
    if (b->len + add + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 4096;
        while (c < b->len + add + 1) c *= 2;
        char *q = realloc(b->p, c);
        if (!q) return 0; /* aborts the transfer */
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->len, p, add);
    b->len += add;
    b->p[b->len] = 0;
    return add;
}

/* Aborts a transfer in flight when the follower stops. */
static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un) {
    return atomic_load(&((follower *)ud)->stop) ? 1 : 0;
}

int fol_get(follower *f, const char *path, fol_buf *b, long *status, char *err, size_t errlen) {
    CURL *c = f->curl;
    char url[1200];
    b->len = 0;
    if (b->p) b->p[0] = 0;
    *status = 0;
    snprintf(url, sizeof url, "%s%s", f->primary, path);
    struct curl_slist *h = NULL;
    if (f->auth[0]) h = curl_slist_append(h, f->auth);
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    /* a follower given another follower's URL is redirected (307) to the primary */
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 3L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, TRANSFER_MS);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, f);
    if (h) curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(h);
    if (rc != CURLE_OK) {
        snprintf(err, errlen, "GET %s: %s", url, curl_easy_strerror(rc));
        return rc == CURLE_OUT_OF_MEMORY || rc == CURLE_WRITE_ERROR ? PEFTD_ENOMEM : PEFTD_EIO;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    if (!b->p) { /* an empty body: still a string */
        b->p = calloc(1, 1);
        if (!b->p) return PEFTD_ENOMEM;
        b->cap = 1;
    }
    return 0;
}

void fol_set_error(follower *f, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&f->mu);
    bool changed = strcmp(msg, f->st.error) != 0;
    snprintf(f->st.error, sizeof f->st.error, "%s", msg);
    pthread_mutex_unlock(&f->mu);
    if (changed && msg[0]) LOGW("replication: %s", msg);
}

static void set_reachable(follower *f, bool ok, uint64_t primary_last) {
    pthread_mutex_lock(&f->mu);
    if (ok != f->st.reachable) {
        if (ok) LOGI("replication: primary %s reachable", f->primary);
        else LOGW("replication: primary %s unreachable: serving the adapters stored here", f->primary);
    }
    f->st.reachable = ok;
    if (ok) f->st.primary_last = primary_last;
    pthread_mutex_unlock(&f->mu);
}

/* Waits ms unless the follower is stopping. */
static void nap(follower *f, int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&f->mu);
    if (!atomic_load(&f->stop)) pthread_cond_timedwait(&f->cv, &f->mu, &ts);
    pthread_mutex_unlock(&f->mu);
}

static uint64_t json_u64(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) && v->valuedouble >= 0 ? (uint64_t)v->valuedouble : 0;
}

/* One poll: a page of the feed applied. Returns the changes handled (0: nothing new), or
 * a negative status (unreachable, or a change that could not be applied yet). */
static int poll_once(follower *f, fol_buf *b) {
    uint64_t pos = 0;
    int rc = astore_replica_seq(f->store, &pos);
    if (rc < 0) {
        fol_set_error(f, "cannot read the replication position: %s", peftd_strerror(rc));
        return rc;
    }
    char path[128], err[512];
    long status;
    snprintf(path, sizeof path, "/v1/replication/changes?after=%" PRIu64 "&limit=%d", pos, PAGE);
    if ((rc = fol_get(f, path, b, &status, err, sizeof err)) < 0) {
        set_reachable(f, false, 0);
        fol_set_error(f, "%s", err);
        return rc;
    }
    cJSON *o = status == 200 ? cJSON_Parse(b->p) : NULL;
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(o, "changes");
    if (!cJSON_IsArray(ch)) {
        set_reachable(f, status != 0, 0);
        fol_set_error(f, "GET %s%s: HTTP %ld, not a change feed page: %.120s", f->primary, path, status,
                      b->p ? b->p : "");
        cJSON_Delete(o);
        return PEFTD_EIO;
    }
    uint64_t last = json_u64(o, "last_seq");
    set_reachable(f, true, last);
    bool resync = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "resync"));
    /* the position counts in the history of the feed it was taken from: another feed
     * behind this URL (a first sync, a primary restored from a backup or replaced) means
     * starting over from a snapshot; so does the primary saying it no longer has ours */
    char mine[33] = "";
    const char *theirs = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "feed_id"));
    astore_replica_feed(f->store, mine);
    bool other_feed = theirs && strcmp(theirs, mine) != 0;
    int n = cJSON_GetArraySize(ch);
    if (resync || other_feed) {
        if (!mine[0])
            LOGI("replication: first sync: copying the primary's catalogue at change %" PRIu64, last);
        else if (other_feed)
            LOGW("replication: the primary's change feed is not the one followed so far (restored or replaced "
                 "primary): full resync");
        else
            LOGW("replication: position %" PRIu64 " is older than the primary's retained history: full resync", pos);
        resync = true;
        rc = fol_resync(f);
        n = PAGE; /* ask again at once: changes made during the resync follow it */
    } else {
        rc = fol_apply_page(f, ch);
    }
    cJSON_Delete(o);
    if (rc < 0) return rc;
    fol_set_error(f, "%s", "");
    uint64_t now_pos = pos;
    astore_replica_seq(f->store, &now_pos);
    pthread_mutex_lock(&f->mu);
    f->st.applied = now_pos;
    if (resync) f->st.resyncs++;
    else f->st.applied_total += (uint64_t)rc;
    if (now_pos >= last) f->caught_up_at = mono_s();
    pthread_mutex_unlock(&f->mu);
    return n;
}

static void *run(void *arg) {
    follower *f = arg;
    fol_buf b = {0};
    int backoff = f->poll_ms;
    while (!atomic_load(&f->stop)) {
        int n = poll_once(f, &b);
        if (n < 0) {
            nap(f, backoff);
            backoff = backoff * 2 > 2000 ? 2000 : backoff * 2; /* an absent primary: ask less often */
        } else {
            backoff = f->poll_ms;
            if (n < PAGE) nap(f, f->poll_ms); /* caught up: a full page means more is waiting */
        }
    }
    fol_buf_free(&b);
    return NULL;
}

int follower_start(const char *primary, const char *bearer, int poll_ms, astore *store, adapter_service *svc,
                   struct tenants *ts, follower **out, char *err, size_t errlen) {
    *out = NULL;
    size_t pl = primary ? strlen(primary) : 0;
    while (pl && primary[pl - 1] == '/') pl--;
    if (!pl || pl >= sizeof((follower *)0)->primary || !store || !svc) {
        snprintf(err, errlen, "replication: invalid primary URL");
        return PEFTD_EINVAL;
    }
    follower *f = calloc(1, sizeof *f);
    if (!f) return PEFTD_ENOMEM;
    memcpy(f->primary, primary, pl);
    if (bearer && bearer[0]) snprintf(f->auth, sizeof f->auth, "Authorization: Bearer %s", bearer);
    snprintf(f->st.primary, sizeof f->st.primary, "%s", f->primary);
    f->poll_ms = poll_ms > 0 ? poll_ms : 200;
    f->store = store;
    f->svc = svc;
    f->ts = ts;
    f->caught_up_at = mono_s();
    astore_replica_seq(store, &f->st.applied);
    atomic_init(&f->stop, false);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    f->curl = curl_easy_init();
    int rc = f->curl ? pthread_create(&f->thread, NULL, run, f) : ENOMEM;
    if (rc) {
        snprintf(err, errlen, "replication: cannot start the follower thread: %s", strerror(rc));
        if (f->curl) curl_easy_cleanup(f->curl);
        pthread_mutex_destroy(&f->mu);
        pthread_cond_destroy(&f->cv);
        free(f);
        return -rc;
    }
    LOGI("replication: following %s from change %" PRIu64 " (poll %d ms)", f->primary, f->st.applied, f->poll_ms);
    *out = f;
    return 0;
}

void follower_stop(follower *f) {
    if (!f) return;
    pthread_mutex_lock(&f->mu);
    atomic_store(&f->stop, true);
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thread, NULL);
    curl_easy_cleanup(f->curl);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
}

void follower_get_status(follower *f, follower_status *out) {
    pthread_mutex_lock(&f->mu);
    *out = f->st;
    bool caught_up = f->st.reachable && f->st.applied >= f->st.primary_last;
    out->lag_s = caught_up ? 0.0 : mono_s() - f->caught_up_at;
    pthread_mutex_unlock(&f->mu);
}
