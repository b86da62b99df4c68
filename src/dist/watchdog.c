/* watchdog.c - the collective timeout thread (watchdog.h). */
#include "dist/watchdog.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/error.h"
#include "dist/comm.h"

/* How often the thread looks (seconds): a timeout is noticed at most this late. */
#define WATCHDOG_TICK_S 0.1

struct Watchdog {
    pthread_t th;
    pthread_mutex_t mu;
    int rank, quit;
    double timeout_s;
    const char *op; /* the blocking op in progress, or NULL */
    double since;
    WatchdogCheck check;
    void (*abort_fn)(void *);
    void *ctx;
};

static void *watchdog_main(void *arg)
{
    Watchdog *w = arg;
    char msg[512];
    for (;;) {
        usleep((useconds_t)(WATCHDOG_TICK_S * 1e6));
        pthread_mutex_lock(&w->mu);
        int quit = w->quit, fire = 0;
        if (!quit && w->op && comm_now() - w->since > w->timeout_s) {
            snprintf(msg, sizeof(msg), "collective %s timed out after %.0f s (dist.timeout_s); a peer rank died or hangs?",
                     w->op, w->timeout_s);
            fire = 1;
        }
        pthread_mutex_unlock(&w->mu);
        if (quit) return NULL;
        if (!fire && w->check) fire = w->check(w->ctx, msg, sizeof(msg));
        if (fire) {
            fprintf(stderr, "anvil: rank %d: %s\n", w->rank, msg);
            fflush(stderr);
            if (w->abort_fn) w->abort_fn(w->ctx);
            _exit(1);
        }
    }
}

Watchdog *watchdog_start(int rank, double timeout_s, WatchdogCheck check, void (*abort_fn)(void *), void *ctx)
{
    Watchdog *w = xcalloc(1, sizeof(Watchdog));
    w->rank = rank;
    w->timeout_s = timeout_s;
    w->check = check;
    w->abort_fn = abort_fn;
    w->ctx = ctx;
    pthread_mutex_init(&w->mu, NULL);
    if (pthread_create(&w->th, NULL, watchdog_main, w)) fatal("rank %d: cannot start the collective watchdog", rank);
    return w;
}

void watchdog_begin(Watchdog *w, const char *op)
{
    pthread_mutex_lock(&w->mu);
    w->op = op;
    w->since = comm_now();
    pthread_mutex_unlock(&w->mu);
}

void watchdog_end(Watchdog *w)
{
    pthread_mutex_lock(&w->mu);
    w->op = NULL;
    pthread_mutex_unlock(&w->mu);
}

void watchdog_stop(Watchdog *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->quit = 1;
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
