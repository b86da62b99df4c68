/* ranks.h - forked ranks of one job for the distributed tests: the parent holds a listening socket
 * on a free port and hands it to rank 0 (NET_LISTEN_FD_ENV, as `anvil launch` does), so that no other
 * test running at the same time can take the port in between. Include after test.h. */
#ifndef ANVIL_TESTS_RANKS_H
#define ANVIL_TESTS_RANKS_H

#include <sys/wait.h>
#include <unistd.h>

#include "dist/net.h"

/* fn(rank, port) in n forked processes; each must exit 0. */
static inline void run_ranks(int n, int (*fn)(int rank, int port), const char *what)
{
    int port = 0, lfd = net_listen_any(n + 8, &port);
    CHECKF(lfd >= 0, "%s: %s", what, err_get());
    if (lfd < 0) return;
    pid_t pids[64];
    fflush(stdout);
    fflush(stderr);
    for (int r = 0; r < n && r < 64; r++) {
        pids[r] = fork();
        if (pids[r] == 0) {
            if (r == 0) {
                char b[16];
                snprintf(b, sizeof(b), "%d", lfd);
                setenv(NET_LISTEN_FD_ENV, b, 1);
            } else
                close(lfd);
            _exit(fn(r, port));
        }
    }
    close(lfd);
    for (int r = 0; r < n && r < 64; r++) {
        int st;
        waitpid(pids[r], &st, 0);
        CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: rank %d", what, r);
    }
}

#endif
