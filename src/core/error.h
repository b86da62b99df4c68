/* error.h - error reporting and checked allocation.
 *
 * Library code reports failures by returning -1 (or NULL) after recording a
 * one-line message with err_set(); the CLI prints it as "anvil: <message>" and
 * exits 1. fatal() is for conditions no caller can recover from (out of
 * memory, internal invariants). Messages name the file and the field:
 *   "config.yaml: train.lr: expected a number, got \"fast\""
 */
#ifndef ANVIL_ERROR_H
#define ANVIL_ERROR_H

#include <stddef.h>

#define ANVIL_ERR_MAX 1024

/* Record a message for the current thread (printf format). Always returns -1
 * so that `return err_set(...)` reads naturally. */
int err_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prefix the current message with "prefix: " (to add context on the way up). */
int err_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The last message recorded on this thread ("" if none). */
const char *err_get(void);
void err_clear(void);

/* Print "anvil: <fmt>" to stderr and exit(1). */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Print "anvil: <last err_set message>" and exit(1). */
void fatal_err(void) __attribute__((noreturn));

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
/* 64-byte aligned allocation, zeroed; free with free(). */
void *xaligned(size_t n);

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
