/* tests/harness/test.c — runs each registered test in its own process with a timeout. */
#include "test.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
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

int test_run_all(const char *prog, const test_entry *tests, int n, int argc, char **argv) {
    /* Per-test timeout in seconds; sanitizer builds are several times slower. */
    int timeout = getenv("TEST_TIMEOUT") ? atoi(getenv("TEST_TIMEOUT")) : 120;
    const char *only = argc > 1 ? argv[1] : NULL;
    const char *base = strrchr(prog, '/') ? strrchr(prog, '/') + 1 : prog;
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < n; i++) {
        if (only && strcmp(only, tests[i].name) != 0) continue;
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 2; }
        if (pid == 0) {
            alarm((unsigned)timeout);
            tests[i].fn();
            fflush(stdout);
            _exit(TEST_EXIT_PASS);
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
    printf("%s: %d passed, %d failed, %d skipped\n", base, passed, failed, skipped);
    return failed ? 1 : 0;
}
