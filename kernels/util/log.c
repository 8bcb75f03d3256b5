/* kernels/util/log.c — see log.h. */
#include "kernels/util/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int g_level = -1;

void log_set_level(int level) { g_level = level; }

static int current_level(void) {
    if (g_level >= 0) return g_level;
    const char *e = getenv("PEFTD_LOG");
    g_level = LOG_INFO;
    if (e) {
        if (!strcmp(e, "debug")) g_level = LOG_DEBUG;
        else if (!strcmp(e, "warn")) g_level = LOG_WARN;
        else if (!strcmp(e, "error")) g_level = LOG_ERROR;
    }
    return g_level;
}

void log_msg(int level, const char *fmt, ...) {
    if (level < current_level()) return;
    static const char *names[] = {"debug", "info", "warn", "error"};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s\n", tm.tm_year + 1900, tm.tm_mon + 1,
            tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, names[level], msg);
}
