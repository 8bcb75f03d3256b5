/* server/api/api_metrics_process.c — the /metrics families a Prometheus client library
 * exports by default, under their standard names (process_cpu_seconds_total,
 * process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds,
 * process_max_fds, process_start_time_seconds: read from /proc/self, Linux), and
 * peftd_build_info{version,commit,backend} = 1. A figure that cannot be read is left out
 * (the family is not written), never reported as 0.
 */
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "server/api/api_internal.h"
#include "lib/version.h"

typedef struct {
    double cpu_s, start_s;
    uint64_t vsize, rss;
    bool stat_ok;
} proc_self;

/* Boot time (seconds since the epoch) from /proc/stat's btime; 0 when unreadable. */
static long long boot_time(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    char line[256];
    long long bt = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "btime %lld", &bt) == 1) break;
    fclose(f);
    return bt;
}

/* /proc/self/stat: fields after the ")" ending comm: 14 utime, 15 stime, 22 starttime,
 * 23 vsize, 24 rss (pages), numbered as proc(5) does. */
static void read_stat(proc_self *p) {
    char buf[2048];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *s = strrchr(buf, ')');
    if (!s) return;
    unsigned long long v[25] = {0};
    int field = 3; /* s + 2 starts at field 3 (state) */
    char *save = NULL;
    for (char *t = strtok_r(s + 2, " ", &save); t && field <= 24; t = strtok_r(NULL, " ", &save), field++)
        v[field] = strtoull(t, NULL, 10);
    if (field <= 24) return;
    long hz = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    long long bt = boot_time();
    if (hz <= 0 || page <= 0 || !bt) return;
    p->cpu_s = (double)(v[14] + v[15]) / (double)hz;
    p->start_s = (double)bt + (double)v[22] / (double)hz;
    p->vsize = v[23];
    p->rss = v[24] * (uint64_t)page;
    p->stat_ok = true;
}

static long open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    long n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory stream's own descriptor */
}

static int put(http_buf *b, const char *name, const char *type, const char *help, const char *value) {
    char line[512];
    snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", name, help, name, type, name, value);
    return http_buf_puts(b, line);
}

int api_metrics_process(api_server *s, http_buf *b) {
    char v[64], line[512];
    snprintf(line, sizeof line,
             "# HELP peftd_build_info The daemon's version, the commit it was built from and its compute backend.\n"
             "# TYPE peftd_build_info gauge\n"
             "peftd_build_info{version=\"%s\",commit=\"%s\",backend=\"%s\"} 1\n",
             PEFTD_VERSION, peftd_commit(), s->cfg.backend && s->cfg.backend[0] ? s->cfg.backend : "unknown");
    int rc = http_buf_puts(b, line);
    proc_self p = {0};
    read_stat(&p);
    if (!rc && p.stat_ok) {
        snprintf(v, sizeof v, "%.2f", p.cpu_s);
        rc = put(b, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", v);
        snprintf(v, sizeof v, "%" PRIu64, p.rss);
        if (!rc) rc = put(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", v);
        snprintf(v, sizeof v, "%" PRIu64, p.vsize);
        if (!rc) rc = put(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", v);
        snprintf(v, sizeof v, "%.2f", p.start_s);
        if (!rc)
            rc = put(b, "process_start_time_seconds", "gauge",
                     "Start time of the process since unix epoch in seconds.", v);
    }
    long fds = open_fds();
    if (!rc && fds >= 0) {
        snprintf(v, sizeof v, "%ld", fds);
        rc = put(b, "process_open_fds", "gauge", "Number of open file descriptors.", v);
    }
    struct rlimit rl;
    if (!rc && getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        if (rl.rlim_cur == RLIM_INFINITY) snprintf(v, sizeof v, "+Inf");
        else snprintf(v, sizeof v, "%llu", (unsigned long long)rl.rlim_cur);
        rc = put(b, "process_max_fds", "gauge", "Maximum number of open file descriptors.", v);
    }
    return rc;
}
