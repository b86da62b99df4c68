#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Thread_local char err_buf[ANVIL_ERR_MAX];

int err_set(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof(err_buf), fmt, ap);
    va_end(ap);
    return -1;
}

int err_prefix(const char *fmt, ...)
{
    char old[ANVIL_ERR_MAX];
    va_list ap;
    memcpy(old, err_buf, sizeof(old));
    va_start(ap, fmt);
    int n = vsnprintf(err_buf, sizeof(err_buf), fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof(err_buf)) {
        size_t room = sizeof(err_buf) - (size_t)n;
        size_t len = strlen(old);
        if (room > 2) {
            memcpy(err_buf + n, ": ", 2);
            n += 2;
            room -= 2;
            if (len >= room) len = room - 1;
            memcpy(err_buf + n, old, len);
            err_buf[n + len] = '\0';
        }
    }
    return -1;
}

const char *err_get(void) { return err_buf; }

void err_clear(void) { err_buf[0] = '\0'; }

/* The line is formatted first and written with one write(2): the ranks of a job share one stderr, and a
 * line written in pieces interleaves with another rank's (seen under `anvil launch` in make test). */
void fatal(const char *fmt, ...)
{
    char line[4096];
    va_list ap;
    fflush(stdout);
    int n = snprintf(line, sizeof(line), "anvil: ");
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : MIN((size_t)m, sizeof(line) - (size_t)n - 2));
    line[len++] = '\n';
    fflush(stderr);
    if (write(STDERR_FILENO, line, len) < 0) { /* nothing more to do: the exit status still says it */
    }
    exit(1);
}

void fatal_err(void) { fatal("%s", err_buf[0] ? err_buf : "unknown error"); }

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) fatal("out of memory allocating %zu bytes", n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) fatal("out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) fatal("out of memory reallocating %zu bytes", n);
    return q;
}

char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

void *xaligned(size_t n)
{
    /* 64 bytes: one cache line, and enough for any SIMD width we use. */
    size_t rounded = (n + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) fatal("out of memory allocating %zu bytes", n);
    memset(p, 0, rounded ? rounded : 64);
    return p;
}
