/* tests/harness/test.c — runs each registered test in its own process with a timeout.
 *
 * A passing test's process leaves with exit(), not _exit(), so the sanitizers' exit-time
 * checks (LeakSanitizer's leak report under `make asan`) run and turn a leak into a
 * failure. Tests run from the repository root whatever the working directory was: the
 * root is found from the binary's own location (/proc/self/exe), so relative fixture
 * paths resolve the same from anywhere, and a missing fixture is a failure, not a skip.
 * Owns the per-run temporary directory that test_tmpdir() hands out pieces of. */
#include "test.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Exit codes a child uses to report its outcome to the parent. */
enum { TEST_EXIT_PASS = 0, TEST_EXIT_FAIL = 1, TEST_EXIT_SKIP = 77 };

void test_fail_(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "    %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    _exit(TEST_EXIT_FAIL);
}

void test_skip_(const char *why) {
    fprintf(stderr, "    skipped: %s\n", why);
    fflush(stderr);
    _exit(TEST_EXIT_SKIP);
}

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

void test_rng_seed(uint64_t s) { g_rng = s * 0x9e3779b97f4a7c15ull + 1; }

uint32_t test_rng_u32(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}

float test_rng_f(void) { return (float)test_rng_u32() / 2147483648.0f - 1.0f; }

void test_fill(float *p, int64_t n) {
    for (int64_t i = 0; i < n; i++) p[i] = test_rng_f();
}

float *test_guarded_alloc(int64_t n) {
    float *b = malloc((size_t)(n + 2 * TEST_CANARY_N) * sizeof(float));
    if (!b) FAIL("out of memory");
    for (int i = 0; i < TEST_CANARY_N; i++) b[i] = b[n + TEST_CANARY_N + i] = TEST_CANARY_V;
    return b + TEST_CANARY_N;
}

void test_guarded_check_free(float *p, int64_t n) {
    float *b = p - TEST_CANARY_N;
    for (int i = 0; i < TEST_CANARY_N; i++) {
        if (b[i] != TEST_CANARY_V) FAIL("write before buffer at -%d", TEST_CANARY_N - i);
        if (b[n + TEST_CANARY_N + i] != TEST_CANARY_V) FAIL("write after buffer at +%d", i);
    }
    free(b);
}

char *test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) { buf[n] = 0; if (len) *len = (size_t)n; }
    return buf;
}

/* test_tmpdir's root: made in the runner before the tests fork, removed after them. */
static char g_tmp_root[PATH_MAX];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

const char *test_tmpdir(void) {
    static char dir[PATH_MAX + 16];
    if (!g_tmp_root[0]) FAIL("test_tmpdir: no per-run directory (mkdtemp failed in the runner)");
    snprintf(dir, sizeof dir, "%s/t-XXXXXX", g_tmp_root);
    if (!mkdtemp(dir)) FAIL("test_tmpdir: mkdtemp under %s: %s", g_tmp_root, strerror(errno));
    return dir;
}

/* The repository root: the nearest directory above the running binary that holds this
 * harness's header (binaries live in <root>/<build dir>/tests/). 0, or -1 if none. */
static int find_repo_root(char *out, size_t len) {
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0) return -1;
    path[n] = 0;
    for (char *slash = strrchr(path, '/'); slash && slash != path; slash = strrchr(path, '/')) {
        *slash = 0;
        char probe[PATH_MAX + 32];
        struct stat sb;
        snprintf(probe, sizeof probe, "%s/tests/harness/test.h", path);
        if (stat(probe, &sb) == 0 && (size_t)snprintf(out, len, "%s", path) < len) return 0;
    }
    return -1;
}

int test_run_all(const char *prog, const test_entry *tests, int n, int argc, char **argv) {
    /* Per-test timeout in seconds; sanitizer builds are several times slower. */
    int timeout = getenv("TEST_TIMEOUT") ? atoi(getenv("TEST_TIMEOUT")) : 120;
    /* argv[1..]: the names of the tests to run (none: all); a name that matches no test
     * fails the run, so a typo in a filter list cannot pass by running nothing. */
    const char *base = strrchr(prog, '/') ? strrchr(prog, '/') + 1 : prog;
    char root[PATH_MAX];
    if (find_repo_root(root, sizeof root) < 0 || chdir(root) < 0) {
        fprintf(stderr, "%s: cannot find the repository root above this binary\n", base);
        printf("%s: 0 passed, 1 failed, 0 skipped\n", base);
        return 1;
    }
    snprintf(g_tmp_root, sizeof g_tmp_root, "/tmp/peftd-%.64s-XXXXXX", base);
    if (!mkdtemp(g_tmp_root)) g_tmp_root[0] = 0;
    int passed = 0, failed = 0, skipped = 0;
    for (int a = 1; a < argc; a++) {
        int found = 0;
        for (int i = 0; i < n && !found; i++) found = !strcmp(argv[a], tests[i].name);
        if (!found) {
            fprintf(stderr, "%s: no test is named '%s'\n", base, argv[a]);
            failed++;
        }
    }
    for (int i = 0; i < n; i++) {
        int wanted = argc < 2;
        for (int a = 1; a < argc && !wanted; a++) wanted = !strcmp(argv[a], tests[i].name);
        if (!wanted) continue;
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 2; }
        if (pid == 0) {
            alarm((unsigned)timeout);
            tests[i].fn();
            fflush(stdout);
            exit(TEST_EXIT_PASS); /* exit(): LeakSanitizer's check runs (a leak fails the test) */
        }
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        const char *verdict;
        if (WIFEXITED(st) && WEXITSTATUS(st) == TEST_EXIT_PASS) { verdict = "ok"; passed++; }
        else if (WIFEXITED(st) && WEXITSTATUS(st) == TEST_EXIT_SKIP) { verdict = "SKIP"; skipped++; }
        else {
            failed++;
            verdict = "FAIL";
            if (WIFSIGNALED(st))
                fprintf(stderr, "    killed by signal %d%s\n", WTERMSIG(st),
                        WTERMSIG(st) == SIGALRM ? " (timeout)" : "");
        }
        printf("  %-4s %s.%s\n", verdict, base, tests[i].name);
    }
    if (g_tmp_root[0]) nftw(g_tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    printf("%s: %d passed, %d failed, %d skipped\n", base, passed, failed, skipped);
    return failed ? 1 : 0;
}
