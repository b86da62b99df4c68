/* env.c - rank, world and rendezvous from the launcher's variables (env.h). */
#include "dist/env.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

const char *dist_launcher_name(DistLauncher l)
{
    static const char *names[] = {"none", "mpirun", "torchrun", "slurm"};
    return names[l];
}

static int env_int(const char *(*get)(const char *), const char *name, int lo, int *out)
{
    const char *v = get(name);
    if (!v || !*v) return 1;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (*end || errno || x < lo || x > 1000000000L) return err_set("%s: expected an integer >= %d, got \"%s\"", name, lo, v), -1;
    *out = (int)x;
    return 0;
}

int dist_slurm_first_host(const char *list, char *out, size_t n)
{
    /* The first entry ends at a comma outside brackets; a bracket gives the first number of its
     * first range, keeping its zero padding ("node[007-9]" -> "node007"). */
    size_t o = 0;
    for (const char *s = list; *s && *s != ','; s++) {
        if (*s == '[') {
            s++;
            while (*s >= '0' && *s <= '9' && o + 1 < n) out[o++] = *s++;
            break;
        }
        if (o + 1 < n) out[o++] = *s;
    }
    out[o] = '\0';
    return o ? 0 : err_set("Slurm node list \"%s\": no host", list);
}

static const char *first_set(const char *(*get)(const char *), const char *a, const char *b, const char *c)
{
    const char *v = get(a);
    if ((!v || !*v) && b) v = get(b);
    if ((!v || !*v) && c) v = get(c);
    return v && *v ? v : NULL;
}

int dist_env_parse(DistEnv *e, const char *(*get)(const char *))
{
    memset(e, 0, sizeof(*e));
    e->world = 1;
    const char *rk, *ws, *lr;
    if (get("OMPI_COMM_WORLD_SIZE")) {
        e->launcher = DIST_LAUNCH_MPIRUN;
        rk = "OMPI_COMM_WORLD_RANK", ws = "OMPI_COMM_WORLD_SIZE", lr = "OMPI_COMM_WORLD_LOCAL_RANK";
    } else if (get("WORLD_SIZE") || get("RANK")) {
        e->launcher = DIST_LAUNCH_TORCHRUN;
        rk = "RANK", ws = "WORLD_SIZE", lr = "LOCAL_RANK";
    } else if (get("SLURM_PROCID")) {
        e->launcher = DIST_LAUNCH_SLURM;
        rk = "SLURM_PROCID", ws = get("SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS" : "SLURM_NTASKS",
        lr = "SLURM_LOCALID";
    } else {
        return 0;
    }
    int r;
    if ((r = env_int(get, ws, 1, &e->world)) != 0) return r < 0 ? -1 : err_set("%s: not set (but %s is)", ws, rk);
    if ((r = env_int(get, rk, 0, &e->rank)) != 0) return r < 0 ? -1 : err_set("%s: not set (but %s is)", rk, ws);
    if (e->rank >= e->world) return err_set("%s: rank %d is not below %s = %d", rk, e->rank, ws, e->world);
    if (env_int(get, lr, 0, &e->local_rank) < 0) return -1;
    const char *addr = get("MASTER_ADDR");
    if (addr && *addr) snprintf(e->master_addr, sizeof(e->master_addr), "%s", addr);
    if (env_int(get, "MASTER_PORT", 1, &e->master_port) < 0) return -1;
    if (e->master_port > 65535) return err_set("MASTER_PORT: %d is not a TCP port", e->master_port);
    if (e->launcher == DIST_LAUNCH_SLURM) {
        const char *nodes = first_set(get, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST");
        if (!e->master_addr[0] && nodes &&
            dist_slurm_first_host(nodes, e->master_addr, sizeof(e->master_addr)))
            return -1;
        int job = 0;
        if (!e->master_port && env_int(get, "SLURM_JOB_ID", 0, &job) == 0)
            e->master_port = DIST_SLURM_PORT_BASE + job % DIST_SLURM_PORT_SPAN;
    }
    if (e->launcher == DIST_LAUNCH_TORCHRUN && e->world > 1 && (!e->master_addr[0] || !e->master_port))
        return err_set("%s: set (world %d) but %s is not", ws, e->world, e->master_addr[0] ? "MASTER_PORT" : "MASTER_ADDR");
    if (e->launcher == DIST_LAUNCH_SLURM && e->world > 1 && (!e->master_addr[0] || !e->master_port))
        return err_set("SLURM_PROCID: set, but no rendezvous: set MASTER_ADDR and MASTER_PORT (or SLURM_JOB_ID and "
                       "SLURM_JOB_NODELIST)");
    return 0;
}
