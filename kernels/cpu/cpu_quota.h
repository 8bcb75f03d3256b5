/* kernels/cpu/cpu_quota.h — how many CPUs this process may really use: the affinity mask
 * capped by the cgroup CPU bandwidth quota (v2 cpu.max, v1 cpu.cfs_quota_us/period_us).
 * Used where `threads: 0` is resolved (kpool_create), so a container limited to 2 CPUs on
 * a 64-core node runs 2 workers, not 64. */
#ifndef PEFTD_CPU_QUOTA_H
#define PEFTD_CPU_QUOTA_H

/* The CPU quota, rounded up to whole CPUs, of the cgroup named by `self_cgroup` (a
 * /proc/self/cgroup-format file) under the cgroup filesystem mounted at `root`: the
 * smallest quota on the path from that cgroup up to `root` (a parent's limit binds its
 * children). v2 ("0::/path") reads <root>/<path>/cpu.max ("max 100000" = none); v1 (a
 * line whose controllers include "cpu") reads <root>/<controllers>/<path> or
 * <root>/cpu/<path> cpu.cfs_quota_us (-1 = none) and cpu.cfs_period_us. A cgroup
 * directory that does not exist under `root` (a container without a cgroup namespace
 * sees its own cgroup at the mount point) falls back to `root` itself.
 * Returns the quota in CPUs (>= 1), or 0 when there is none or nothing is readable. */
int cpu_cgroup_quota(const char *root, const char *self_cgroup);

/* CPUs usable by this process: sched_getaffinity's count (else the online count),
 * capped by cpu_cgroup_quota("/sys/fs/cgroup", "/proc/self/cgroup"). Always >= 1. */
int cpu_usable_count(void);

#endif
