/* lib/log.c — see log.h. */
#include "lib/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Atomic int g_level = -1; /* -1: not read from PEFTD_LOG yet */
static _Atomic int g_format = LOG_FORMAT_TEXT;

void log_set_level(int level) { atomic_store(&g_level, level); }
void log_set_format(int format) { atomic_store(&g_format, format == LOG_FORMAT_JSON ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT); }
int log_get_format(void) { return atomic_load(&g_format); }

int log_level_parse(const char *s) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; s && i < 4; i++)
        if (!strcmp(s, names[i])) return i;
    return -1;
}

int log_format_parse(const char *s) {
    if (s && !strcmp(s, "text")) return LOG_FORMAT_TEXT;
    if (s && !strcmp(s, "json")) return LOG_FORMAT_JSON;
    return -1;
}

int log_get_level(void) {
    int l = atomic_load(&g_level);
    if (l >= 0) return l;
    l = log_level_parse(getenv("PEFTD_LOG"));
    if (l < 0) l = LOG_INFO;
    /* A racing log_set_level wins over the environment's default. */
    int expected = -1;
    atomic_compare_exchange_strong(&g_level, &expected, l);
    return atomic_load(&g_level);
}

void log_timestamp(char *buf, size_t cap) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 when invalid (overlongs,
 * surrogates and code points above U+10FFFF are invalid). */
static size_t utf8_seq_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t k;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) { k = 2; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { k = 3; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { k = 4; cp = c & 0x07; }
    else return 0;
    if (n < k) return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((k == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return k;
}

size_t log_json_escape(char *dst, size_t cap, size_t *len, const char *s, size_t n) {
    size_t i = 0, o = *len;
    if (!cap) return 0;
    while (i < n) {
        const unsigned char *u = (const unsigned char *)s + i;
        char esc[8];
        const char *piece = esc;
        size_t plen, used = 1;
        switch (*u) {
        case '"': piece = "\\\""; plen = 2; break;
        case '\\': piece = "\\\\"; plen = 2; break;
        case '\n': piece = "\\n"; plen = 2; break;
        case '\r': piece = "\\r"; plen = 2; break;
        case '\t': piece = "\\t"; plen = 2; break;
        default:
            if (*u < 0x20 || *u == 0x7F) {
                snprintf(esc, sizeof esc, "\\u%04x", *u);
                plen = 6;
            } else if (*u < 0x80) {
                piece = (const char *)u;
                plen = 1;
            } else if ((used = utf8_seq_len(u, n - i)) != 0) {
                piece = (const char *)u;
                plen = used;
            } else {
                piece = "\\ufffd";
                plen = 6;
                used = 1;
            }
        }
        if (o + plen + 1 > cap) break;
        memcpy(dst + o, piece, plen);
        o += plen;
        i += used;
    }
    dst[o < cap ? o : cap - 1] = '\0';
    *len = o;
    return i;
}

void log_msg(int level, const char *fmt, ...) {
    if (level < log_get_level()) return;
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (level < LOG_DEBUG || level > LOG_ERROR) level = LOG_ERROR;
    char ts[40];
    log_timestamp(ts, sizeof ts);
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (log_get_format() == LOG_FORMAT_JSON) {
        /* Worst case every byte of msg becomes a 6-byte escape. */
        char line[sizeof msg * 6 + 128];
        size_t len = (size_t)snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts, names[level]);
        log_json_escape(line, sizeof line - 3, &len, msg, strlen(msg));
        memcpy(line + len, "\"}\n", 4);
        fputs(line, stderr);
    } else {
        /* One event, one line: control characters and bytes that are not UTF-8 (messages
         * quote client input — names, config values) are written as \xNN, so nobody can
         * forge a log line or send the terminal escapes. */
        char line[sizeof msg * 4 + 1];
        size_t o = 0, n = strlen(msg);
        for (size_t i = 0; i < n;) {
            const unsigned char *u = (const unsigned char *)msg + i;
            size_t k = *u >= 0x20 && *u != 0x7F ? (*u < 0x80 ? 1 : utf8_seq_len(u, n - i)) : 0;
            if (k) {
                memcpy(line + o, u, k);
                o += k;
                i += k;
            } else {
                o += (size_t)snprintf(line + o, sizeof line - o, "\\x%02x", *u);
                i++;
            }
        }
        line[o] = 0;
        fprintf(stderr, "%s %-5s %s\n", ts, names[level], line);
    }
}
