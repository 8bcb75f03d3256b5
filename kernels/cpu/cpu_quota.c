/* kernels/cpu/cpu_quota.c — the cgroup CPU quota (v1 and v2) and the affinity mask behind
 * `threads: 0` (contract in cpu_quota.h). */
#include "kernels/cpu/cpu_quota.h"

#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Reads up to two integers ("max" reads as -1) from dir/name; returns how many. */
static int read_nums(const char *dir, const char *name, long long *a, long long *b) {
    char path[PATH_MAX], w1[32] = "", w2[32] = "";
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int n = fscanf(f, "%31s %31s", w1, w2);
    fclose(f);
    if (n >= 1) *a = strcmp(w1, "max") ? strtoll(w1, NULL, 10) : -1;
    if (n >= 2) *b = strtoll(w2, NULL, 10);
    return n < 0 ? 0 : n;
}

/* The quota (whole CPUs, rounded up) set in one cgroup directory, 0 if none. */
static int dir_quota(const char *dir, int v2) {
    long long quota = -1, period = 0;
    if (v2) {
        if (read_nums(dir, "cpu.max", &quota, &period) < 2) return 0;
    } else {
        long long unused;
        if (read_nums(dir, "cpu.cfs_quota_us", &quota, &unused) < 1) return 0;
        if (read_nums(dir, "cpu.cfs_period_us", &period, &unused) < 1) return 0;
    }
    if (quota <= 0 || period <= 0) return 0;
    long long cpus = (quota + period - 1) / period;
    return cpus > INT_MAX ? INT_MAX : (int)(cpus < 1 ? 1 : cpus);
}

/* Smallest quota from base/rel up to base (0 = none); rel is "/" or "/a/b". */
static int walk_quota(const char *base, const char *rel, int v2) {
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s%s", base, rel) >= (int)sizeof dir || !is_dir(dir))
        snprintf(dir, sizeof dir, "%s", base);
    size_t base_len = strlen(base);
    int best = 0;
    for (;;) {
        int q = dir_quota(dir, v2);
        if (q > 0 && (best == 0 || q < best)) best = q;
        char *slash = strrchr(dir, '/');
        if (strlen(dir) <= base_len || !slash || (size_t)(slash - dir) < base_len) break;
        *slash = '\0';
    }
    return best;
}

int cpu_cgroup_quota(const char *root, const char *self_cgroup) {
    FILE *f = fopen(self_cgroup, "r");
    if (!f) return 0;
    char line[4096];
    int best = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c1 = '\0';
        *c2 = '\0';
        const char *ctrls = c1 + 1, *path = c2 + 1;
        int q = 0;
        char base[PATH_MAX];
        if (!strcmp(line, "0") && !*ctrls) {
            q = walk_quota(root, path, 1);
        } else {
            char list[256];
            snprintf(list, sizeof list, ",%s,", ctrls);
            if (!strstr(list, ",cpu,")) continue;
            if (snprintf(base, sizeof base, "%s/%s", root, ctrls) >= (int)sizeof base || !is_dir(base))
                snprintf(base, sizeof base, "%s/cpu", root);
            q = walk_quota(base, path, 0);
        }
        if (q > 0 && (best == 0 || q < best)) best = q;
    }
    fclose(f);
    return best;
}

int cpu_usable_count(void) {
    int n = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n <= 0) {
        long on = sysconf(_SC_NPROCESSORS_ONLN);
        n = on > 0 ? (int)on : 1;
    }
    int q = cpu_cgroup_quota("/sys/fs/cgroup", "/proc/self/cgroup");
    return q > 0 && q < n ? q : n;
}
