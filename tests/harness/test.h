/* tests/harness/test.h — the unit-test harness (libuv test/ style).
 *
 * A test file defines tests with TEST(name) and lists them once with
 * TEST_MAIN(name, ...). Each test runs in its own forked process with a
 * timeout, so a crash or hang fails that test only. A test may call
 * SKIP("why") to report itself skipped (never counted as passed).
 * `binary [NAME...]` runs the named tests only (an unknown name counts as a failure).
 * The binary prints one line per test and a closing summary line
 *   "<binary>: N passed, N failed, N skipped"
 * that tests/run_tests.sh adds up.
 */
#ifndef PEFTD_TEST_H
#define PEFTD_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
typedef struct { const char *name; test_fn fn; } test_entry;

int test_run_all(const char *prog, const test_entry *tests, int n, int argc, char **argv);
void test_fail_(const char *file, int line, const char *fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
void test_skip_(const char *why) __attribute__((noreturn));

#define TEST(name) static void name(void)

#define TEST_MAIN(...)                                                              \
    int main(int argc, char **argv) {                                               \
        static const test_fn fns_[] = {__VA_ARGS__};                                \
        static const char names_[] = #__VA_ARGS__;                                  \
        enum { N_ = sizeof(fns_) / sizeof(fns_[0]) };                               \
        test_entry t_[N_];                                                          \
        static char buf_[sizeof(names_)];                                           \
        memcpy(buf_, names_, sizeof(names_));                                       \
        char *save_ = NULL, *tok_ = strtok_r(buf_, ", \t\n", &save_);               \
        for (int i_ = 0; i_ < N_; i_++) {                                           \
            t_[i_].fn = fns_[i_];                                                   \
            t_[i_].name = tok_ ? tok_ : "?";                                        \
            tok_ = strtok_r(NULL, ", \t\n", &save_);                                \
        }                                                                           \
        return test_run_all(argv[0], t_, N_, argc, argv);                           \
    }

#define SKIP(why) test_skip_(why)
#define FAIL(...) test_fail_(__FILE__, __LINE__, __VA_ARGS__)

#define ASSERT(expr)                                                                \
    do { if (!(expr)) FAIL("assertion failed: %s", #expr); } while (0)

#define ASSERT_EQ(a, b)                                                             \
    do {                                                                            \
        long long a_ = (long long)(a), b_ = (long long)(b);                         \
        if (a_ != b_) FAIL("%s == %s: %lld != %lld", #a, #b, a_, b_);               \
    } while (0)

#define ASSERT_NE(a, b)                                                             \
    do {                                                                            \
        long long a_ = (long long)(a), b_ = (long long)(b);                         \
        if (a_ == b_) FAIL("%s != %s: both %lld", #a, #b, a_);                      \
    } while (0)

#define ASSERT_STREQ(a, b)                                                          \
    do {                                                                            \
        const char *a_ = (a), *b_ = (b);                                            \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                      \
            FAIL("%s == %s:\n  \"%s\"\n  \"%s\"", #a, #b, a_ ? a_ : "(null)",      \
                 b_ ? b_ : "(null)");                                               \
    } while (0)

/* |a-b| <= tol; NaN never passes. */
#define ASSERT_NEAR(a, b, tol)                                                      \
    do {                                                                            \
        double a_ = (double)(a), b_ = (double)(b), t_ = (double)(tol);              \
        if (!(fabs(a_ - b_) <= t_))                                                 \
            FAIL("%s ~= %s: %.9g vs %.9g (|diff| %.3g > tol %.3g)", #a, #b, a_, b_, \
                 fabs(a_ - b_), t_);                                                \
    } while (0)

/* Deterministic test data: a xorshift generator (per test process), uniform floats in
 * [-1, 1), and float buffers with TEST_CANARY_N guard floats on both sides — any change to
 * a guard means an out-of-bounds write (checked and freed by test_guarded_check_free). */
#define TEST_CANARY_N 64
#define TEST_CANARY_V (-12345.678f)
void test_rng_seed(uint64_t s);
uint32_t test_rng_u32(void);
float test_rng_f(void);
void test_fill(float *p, int64_t n);
float *test_guarded_alloc(int64_t n);
void test_guarded_check_free(float *p, int64_t n);

/* Reads a whole file into a NUL-terminated buffer (caller frees); NULL on error. */
char *test_read_file(const char *path, size_t *len);

/* A new, empty directory for the calling test, under one directory per run of the binary
 * (/tmp/peftd-<binary>-XXXXXX) that test_run_all makes before it forks the tests and
 * removes, with everything in it, when they are done (tests end in exit(), so a failing
 * test's files go too). Fails the test when it cannot be made.
 * @note the path is in a static buffer, overwritten by the next call: copy it to keep it. */
const char *test_tmpdir(void);

#endif
