/* kernels/util/log.h — leveled logging to stderr (one line per event, thread-safe via stdio locking).
 * Level from PEFTD_LOG (debug|info|warn|error), default info. */
#ifndef PEFTD_LOG_H
#define PEFTD_LOG_H

enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_set_level(int level);

#define LOGD(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define LOGI(...) log_msg(LOG_INFO, __VA_ARGS__)
#define LOGW(...) log_msg(LOG_WARN, __VA_ARGS__)
#define LOGE(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
