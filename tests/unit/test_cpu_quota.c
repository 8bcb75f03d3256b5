/* tests/unit/test_cpu_quota.c — `threads: 0` honours the cgroup CPU quota: cpu_cgroup_quota
 * on fake cgroup v2 and v1 trees (cpu.max, cpu.cfs_quota_us/period_us, nested limits, no
 * limit, a cgroup path missing under the mount), and cpu_usable_count / kpool_create(0)
 * never above the affinity mask. */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/cpu/cpu_quota.h"
#include "kernels/cpu/threadpool.h"
#include "tests/harness/test.h"

static char root[256];

static void mk(const char *rel) {
    char p[512], *s;
    snprintf(p, sizeof p, "%s/%s", root, rel);
    for (s = p + strlen(root) + 1; (s = strchr(s, '/')); s++) {
        *s = '\0';
        mkdir(p, 0755);
        *s = '/';
    }
    mkdir(p, 0755);
}

static void put(const char *rel, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    FILE *f = fopen(p, "w");
    if (!f) FAIL("cannot write %s", p);
    fputs(text, f);
    fclose(f);
}

static const char *fresh(void) {
    /* the harness's directory for this test, removed when the binary ends */
    snprintf(root, sizeof root, "%s", test_tmpdir());
    return root;
}

static int quota(const char *self) {
    char fs[512], sf[512];
    snprintf(fs, sizeof fs, "%s/fs", root);
    snprintf(sf, sizeof sf, "%s/%s", root, self);
    return cpu_cgroup_quota(fs, sf);
}

TEST(v2_quota_rounds_up) {
    fresh();
    mk("fs/kubepods/pod1");
    put("self", "0::/kubepods/pod1\n");
    put("fs/kubepods/pod1/cpu.max", "150000 100000\n");
    ASSERT_EQ(quota("self"), 2);
    put("fs/kubepods/pod1/cpu.max", "200000 100000\n");
    ASSERT_EQ(quota("self"), 2);
    put("fs/kubepods/pod1/cpu.max", "50000 100000\n");
    ASSERT_EQ(quota("self"), 1);
}

TEST(v2_max_is_no_limit) {
    fresh();
    mk("fs/a");
    put("self", "0::/a\n");
    put("fs/a/cpu.max", "max 100000\n");
    ASSERT_EQ(quota("self"), 0);
}

TEST(v2_parent_limit_binds) {
    fresh();
    mk("fs/parent/child");
    put("self", "0::/parent/child\n");
    put("fs/parent/cpu.max", "300000 100000\n");
    put("fs/parent/child/cpu.max", "max 100000\n");
    ASSERT_EQ(quota("self"), 3);
    put("fs/parent/child/cpu.max", "800000 100000\n");
    ASSERT_EQ(quota("self"), 3);
    put("fs/parent/child/cpu.max", "100000 100000\n");
    ASSERT_EQ(quota("self"), 1);
}

TEST(v2_namespaced_root) {  /* a container: "0::/" and its own cgroup at the mount point */
    fresh();
    mk("fs");
    put("self", "0::/\n");
    put("fs/cpu.max", "400000 100000\n");
    ASSERT_EQ(quota("self"), 4);
}

TEST(v2_missing_path_falls_back_to_mount) {
    fresh();
    mk("fs");
    put("self", "0::/system.slice/docker-abc.scope\n");
    put("fs/cpu.max", "250000 100000\n");
    ASSERT_EQ(quota("self"), 3);
}

TEST(v1_cfs_quota) {
    fresh();
    mk("fs/cpu,cpuacct/docker/abc");
    put("self", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n");
    put("fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "200000\n");
    put("fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    ASSERT_EQ(quota("self"), 2);
    put("fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n");
    ASSERT_EQ(quota("self"), 0);
}

TEST(v1_cpu_mount_name) {  /* controllers mounted at <root>/cpu */
    fresh();
    mk("fs/cpu/x");
    put("self", "3:cpuacct,cpu:/x\n");
    put("fs/cpu/x/cpu.cfs_quota_us", "50000\n");
    put("fs/cpu/x/cpu.cfs_period_us", "100000\n");
    ASSERT_EQ(quota("self"), 1);
}

TEST(unreadable_is_no_limit) {
    fresh();
    mk("fs");
    ASSERT_EQ(quota("no-such-file"), 0);
    put("self", "garbage\n0::/\n");
    ASSERT_EQ(quota("self"), 0);
    put("fs/cpu.max", "nonsense\n");
    ASSERT_EQ(quota("self"), 0);
}

TEST(usable_count_within_affinity) {
    cpu_set_t set;
    ASSERT(sched_getaffinity(0, sizeof set, &set) == 0);
    int n = cpu_usable_count();
    ASSERT(n >= 1);
    ASSERT(n <= CPU_COUNT(&set));
    int q = cpu_cgroup_quota("/sys/fs/cgroup", "/proc/self/cgroup");
    if (q > 0) ASSERT(n <= q);
    kpool *p = NULL;
    ASSERT_EQ(kpool_create(0, &p), 0);
    ASSERT_EQ(kpool_n_threads(p), n);
    kpool_free(p);
}

TEST_MAIN(v2_quota_rounds_up, v2_max_is_no_limit, v2_parent_limit_binds, v2_namespaced_root,
          v2_missing_path_falls_back_to_mount, v1_cfs_quota, v1_cpu_mount_name,
          unreadable_is_no_limit, usable_count_within_affinity)
