/* watchdog.h - a thread that ends the process when a collective overruns dist.timeout_s.
 *
 * MPI and NCCL have no timeout of their own that we can rely on: a rank whose peer died or hangs
 * would wait forever inside MPI_Allreduce or behind an NCCL kernel. The comm marks each blocking
 * op (watchdog_begin / watchdog_end); the thread wakes every WATCHDOG_TICK_S and, when an op has
 * run longer than the timeout or the comm's own check reports a failure (NCCL: an unfinished
 * queued op, an asynchronous error), prints one line
 *   anvil: rank R: collective OP timed out after S s (dist.timeout_s); a peer rank died or hangs?
 * calls the comm's abort (MPI_Abort, ncclCommAbort) and exits with status 1.
 */
#ifndef ANVIL_DIST_WATCHDOG_H
#define ANVIL_DIST_WATCHDOG_H

#include <stddef.h>

typedef struct Watchdog Watchdog;

/* check (may be NULL): called on each tick; returns 1 with a message in msg (n bytes) when the job
 * must end. abort_fn (may be NULL) runs after the message, before _exit(1). */
typedef int (*WatchdogCheck)(void *ctx, char *msg, size_t n);
Watchdog *watchdog_start(int rank, double timeout_s, WatchdogCheck check, void (*abort_fn)(void *), void *ctx);
void watchdog_begin(Watchdog *w, const char *op);
void watchdog_end(Watchdog *w);
void watchdog_stop(Watchdog *w);

#endif
