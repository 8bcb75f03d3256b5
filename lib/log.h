/* lib/log.h — leveled event logging to stderr, one line per event (written with one
 * stdio call, so lines from different threads never interleave).
 *
 * Level: PEFTD_LOG (debug|info|warn|error), default info, or log_set_level(). Format: text
 * ("2024-05-01T12:00:00.123Z info  message") or JSON ({"ts":"…","level":"info","msg":"…"},
 * one object per line, for log shippers). Level and format may change at any time from any
 * thread (SIGHUP reload): both are atomics read once per event.
 */
#ifndef PEFTD_LOG_H
#define PEFTD_LOG_H

#include <stddef.h>

enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };
enum { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON };

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_set_level(int level);
int log_get_level(void);
void log_set_format(int format); /* LOG_FORMAT_* */
int log_get_format(void);
/* "debug"|"info"|"warn"|"error" -> LOG_*; -1 for anything else. */
int log_level_parse(const char *s);
/* "text"|"json" -> LOG_FORMAT_*; -1 for anything else. */
int log_format_parse(const char *s);
/* UTC wall-clock time as "2024-05-01T12:00:00.123Z" into buf (at least 32 bytes). */
void log_timestamp(char *buf, size_t cap);
/* Appends the JSON string escape of s[0..n) (without quotes) to dst, which holds *len bytes
 * of cap; always NUL-terminates. Control characters become \uXXXX, invalid UTF-8 bytes
 * U+FFFD, so the result is valid JSON whatever the input. Stops (without splitting an
 * escape) when dst is full. Returns the number of input bytes consumed. */
size_t log_json_escape(char *dst, size_t cap, size_t *len, const char *s, size_t n);

#define LOGD(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define LOGI(...) log_msg(LOG_INFO, __VA_ARGS__)
#define LOGW(...) log_msg(LOG_WARN, __VA_ARGS__)
#define LOGE(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
