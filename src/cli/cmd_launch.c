/* cmd_launch.c - `anvil launch --nproc N [--device cpu|cuda] [--master-port P] -- train CONFIG ...`
 *
 * Starts N ranks of this binary on this node, like torchrun --nproc_per_node: child k gets
 * RANK=k, WORLD_SIZE=N, LOCAL_RANK=k, LOCAL_WORLD_SIZE=N, MASTER_ADDR (127.0.0.1 unless set) and
 * MASTER_PORT (a free port unless given), and finds the others through the TCP rendezvous
 * (src/dist/net.h); CPU ranks then use the TCP comm, GPU ranks NCCL, each rank its own GPU.
 * --device D is passed on to train as --set device=D.
 *
 * The ranks run in their own process group, so that a terminal's Ctrl-C reaches the launcher
 * only; SIGINT and SIGTERM are forwarded to every rank (SIGINT: the ranks agree to stop after the
 * current step and write a checkpoint). When a rank fails (non-zero exit or a signal) the launcher
 * names it on one line, stops the others (SIGTERM, then SIGKILL after LAUNCH_GRACE_S) and exits
 * with status 1. Each rank also dies with the launcher (PR_SET_PDEATHSIG).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/error.h"
#include "dist/comm.h"
#include "dist/net.h"

/* Seconds the other ranks get to exit after SIGTERM before SIGKILL. */
#define LAUNCH_GRACE_S 10
/* Most ranks one node runs (a sanity bound on --nproc). */
#define LAUNCH_NPROC_MAX 1024

static const char *launch_usage =
    "usage: anvil launch --nproc N [--device cpu|cuda] [--master-port P] -- COMMAND ARGS...\n"
    "  e.g. anvil launch --nproc 2 --device cpu -- train configs/tiny.yaml\n"
    "Starts N ranks on this node (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set for each),\n"
    "forwards SIGINT/SIGTERM, and stops them all when one fails. docs/distributed.md has the details.\n";

static volatile sig_atomic_t pending_sig;
static void on_signal(int sig) { pending_sig = sig; }

static void set_env_int(const char *name, int v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%d", v);
    setenv(name, buf, 1);
}

/* In the child: this rank's environment, then exec this binary with the command. */
static void child_exec(int rank, int n, const char *addr, int port, int lfd, char **cmd)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    set_env_int("RANK", rank);
    set_env_int("WORLD_SIZE", n);
    set_env_int("LOCAL_RANK", rank);
    set_env_int("LOCAL_WORLD_SIZE", n);
    setenv("MASTER_ADDR", addr, 1);
    set_env_int("MASTER_PORT", port);
    /* rank 0 takes over the launcher's listening socket; the others do not hold it */
    if (lfd >= 0 && rank == 0)
        set_env_int(NET_LISTEN_FD_ENV, lfd);
    else {
        unsetenv(NET_LISTEN_FD_ENV);
        if (lfd >= 0) close(lfd);
    }
    /* the ranks of this launch are torchrun-style, whatever started the launcher */
    const char *clear[] = {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"};
    for (size_t i = 0; i < ARRAY_LEN(clear); i++) unsetenv(clear[i]);
    execv("/proc/self/exe", cmd);
    fprintf(stderr, "anvil: launch: rank %d: cannot run /proc/self/exe: %s\n", rank, strerror(errno));
    _exit(127);
}

static void describe(int status, char *buf, size_t n)
{
    if (WIFSIGNALED(status))
        snprintf(buf, n, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(buf, n, "exited with status %d", WEXITSTATUS(status));
}

/* Stop every rank still running: SIGTERM (and SIGCONT, for a stopped one), then SIGKILL after the
 * grace period; reap them all. */
static void stop_all(pid_t *pids, int n, int *alive)
{
    for (int k = 0; k < n; k++)
        if (pids[k] > 0) {
            kill(pids[k], SIGTERM);
            kill(pids[k], SIGCONT);
        }
    time_t t0 = time(NULL);
    while (*alive > 0) {
        int status;
        pid_t p = waitpid(-1, &status, WNOHANG);
        if (p > 0) {
            for (int k = 0; k < n; k++)
                if (pids[k] == p) pids[k] = -1;
            (*alive)--;
            continue;
        }
        if (time(NULL) - t0 >= LAUNCH_GRACE_S) {
            for (int k = 0; k < n; k++)
                if (pids[k] > 0) kill(pids[k], SIGKILL);
            t0 = time(NULL) + 3600; /* once */
        }
        usleep(50 * 1000);
    }
}

int cmd_launch(int argc, char **argv)
{
    int nproc = 0, port = 0, i;
    const char *device = NULL;
    for (i = 1; i < argc && strcmp(argv[i], "--"); i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(launch_usage, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--nproc") && i + 1 < argc) {
            if (cli_int("--nproc", argv[++i], 1, &nproc)) goto bad;
        } else if (!strcmp(argv[i], "--master-port") && i + 1 < argc) {
            if (cli_int("--master-port", argv[++i], 1, &port)) goto bad;
        } else if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            device = argv[++i];
        } else {
            fprintf(stderr, "anvil: launch: unknown option \"%s\" (see anvil launch --help)\n", argv[i]);
            return 1;
        }
    }
    if (i + 1 >= argc || !nproc) {
        fputs(launch_usage, stderr);
        return 1;
    }
    if (nproc > LAUNCH_NPROC_MAX) {
        fprintf(stderr, "anvil: launch: --nproc %d: at most %d ranks on one node\n", nproc, LAUNCH_NPROC_MAX);
        return 1;
    }
    if (port > 65535) {
        fprintf(stderr, "anvil: launch: --master-port %d is not a TCP port\n", port);
        return 1;
    }
    char **cmd_args = argv + i + 1;
    int ncmd = argc - i - 1;
    if (device && strcmp(cmd_args[0], "train")) {
        fprintf(stderr, "anvil: launch: --device applies to train, not to \"%s\"\n", cmd_args[0]);
        return 1;
    }
    /* argv of each rank: anvil COMMAND ARGS... [--set device=D] */
    char devset[64];
    char **cmd = xcalloc((size_t)ncmd + 4, sizeof(char *));
    cmd[0] = "anvil";
    for (int k = 0; k < ncmd; k++) cmd[k + 1] = cmd_args[k];
    if (device) {
        snprintf(devset, sizeof(devset), "device=%s", device);
        cmd[ncmd + 1] = "--set";
        cmd[ncmd + 2] = devset;
    }
    const char *addr = getenv("MASTER_ADDR") && *getenv("MASTER_ADDR") ? getenv("MASTER_ADDR") : "127.0.0.1";
    if (!port && getenv("MASTER_PORT")) port = atoi(getenv("MASTER_PORT"));
    /* a free port is held open from here until rank 0 takes the socket over: choosing a port and
     * binding it later would let another process (another launch's rank) take it in between */
    int lfd = -1;
    if (!port && (lfd = net_listen_any(nproc + 8, &port)) < 0) {
        fprintf(stderr, "anvil: launch: no free TCP port for the rendezvous: %s\n", err_get());
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    fflush(stdout);
    fflush(stderr);
    pid_t *pids = xcalloc((size_t)nproc, sizeof(pid_t)), pgid = 0;
    int alive = 0, rc = 0, forwarded = 0;
    for (int k = 0; k < nproc; k++) {
        pid_t p = fork();
        if (p < 0) {
            fprintf(stderr, "anvil: launch: cannot start rank %d: %s\n", k, strerror(errno));
            stop_all(pids, nproc, &alive);
            return 1;
        }
        if (p == 0) {
            signal(SIGINT, SIG_DFL);
            signal(SIGTERM, SIG_DFL);
            setpgid(0, pgid); /* the ranks' own group: a terminal's Ctrl-C reaches the launcher only */
            child_exec(k, nproc, addr, port, lfd, cmd);
        }
        setpgid(p, pgid);
        if (!pgid) pgid = p;
        pids[k] = p;
        alive++;
    }
    if (lfd >= 0) close(lfd); /* rank 0 has it now */
    while (alive > 0) {
        int status;
        pid_t p = waitpid(-1, &status, 0);
        if (p < 0) {
            if (errno != EINTR) break;
            if (pending_sig) { /* forward to every rank */
                int sig = pending_sig;
                pending_sig = 0;
                forwarded = sig;
                for (int k = 0; k < nproc; k++)
                    if (pids[k] > 0) kill(pids[k], sig);
            }
            continue;
        }
        int k = 0;
        while (k < nproc && pids[k] != p) k++;
        if (k == nproc) continue;
        pids[k] = -1;
        alive--;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
        /* a rank that stopped for the signal we forwarded, with its checkpoint: the others do too */
        if (forwarded && WIFEXITED(status) && WEXITSTATUS(status) == 128 + forwarded) {
            if (!rc) rc = 128 + forwarded;
            continue;
        }
        char what[128];
        describe(status, what, sizeof(what));
        fprintf(stderr, "anvil: launch: rank %d (pid %d) %s; stopping the other %d rank(s)\n", k, (int)p, what, alive);
        fflush(stderr);
        rc = 1; /* a failure outranks an interrupt */
        stop_all(pids, nproc, &alive);
    }
    free(pids);
    free(cmd);
    return rc;
bad:
    fprintf(stderr, "anvil: launch: %s\n", err_get());
    return 1;
}
