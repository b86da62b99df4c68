/* test.h - a tiny test harness.
 *
 * Each test program defines test functions, registers them in main() with
 * RUN(fn), and ends with `return test_summary();`, which prints
 * "N passed, N failed" (one check = one count) and returns nonzero on failure.
 */
#ifndef ANVIL_TEST_H
#define ANVIL_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed, test_failed;
static const char *test_current = "";

#define CHECK(cond)                                                                              \
    do {                                                                                         \
        if (cond) test_passed++;                                                                 \
        else {                                                                                   \
            test_failed++;                                                                       \
            fprintf(stderr, "FAIL %s:%d [%s]: %s\n", __FILE__, __LINE__, test_current, #cond);   \
        }                                                                                        \
    } while (0)

#define CHECKF(cond, ...)                                                                        \
    do {                                                                                         \
        if (cond) test_passed++;                                                                 \
        else {                                                                                   \
            test_failed++;                                                                       \
            fprintf(stderr, "FAIL %s:%d [%s]: %s: ", __FILE__, __LINE__, test_current, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fputc('\n', stderr);                                                                 \
        }                                                                                        \
    } while (0)

/* |a-b| <= tol * max(1, |b|) */
#define CHECK_CLOSE(a, b, tol)                                                                   \
    do {                                                                                         \
        double a_ = (a), b_ = (b);                                                               \
        double d_ = fabs(a_ - b_), s_ = fabs(b_) > 1 ? fabs(b_) : 1;                             \
        CHECKF(d_ <= (tol) * s_ && !isnan(a_), "%s=%.9g %s=%.9g diff %.3g", #a, a_, #b, b_, d_); \
    } while (0)

#define RUN(fn)                                                                                  \
    do {                                                                                         \
        test_current = #fn;                                                                      \
        int f0_ = test_failed;                                                                   \
        fn();                                                                                    \
        fprintf(stderr, "%s %s\n", test_failed == f0_ ? "ok  " : "FAIL", #fn);                   \
    } while (0)

static inline int test_summary(void)
{
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

/* A program that cannot run here (no GPU): say why, and end with
 * "N passed, N failed, 1 skipped" so that the runner shows it as skipped, not as 0 tests. */
static inline int test_skip(const char *prog, const char *why)
{
    printf("%s: skipped: %s\n", prog, why);
    printf("%d passed, %d failed, 1 skipped\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

/* Path of the repository's test fixtures and of ../shared/data (may be absent). */
static inline const char *test_fixtures(void)
{
    const char *e = getenv("ANVIL_FIXTURES");
    return e ? e : "tests/fixtures";
}
static inline const char *test_shared_data(void)
{
    const char *e = getenv("ANVIL_SHARED_DATA");
    return e ? e : "../shared/data";
}

/* max |a-b| / max|b| over n values (relative error in the inf norm). */
static inline double rel_err_max(const float *a, const float *b, size_t n)
{
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (isnan(a[i])) return INFINITY;
        if (d > md) md = d;
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return mb > 0 ? md / mb : md;
}

#endif
