/* comm.c - what every Comm shares, and comm_none (one process: every op is a no-op). */
#include "dist/comm.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"

size_t comm_type_size(CommType t)
{
    return t == COMM_BF16 ? 2 : t == COMM_F32 ? 4 : 8;
}

/* bf16 <-> fp32 (round to nearest even), for COMM_BF16 sums on the host */
static float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}
static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

void comm_add(void *out, const void *in, size_t n, CommType t)
{
    switch (t) {
    case COMM_F32: {
        float *o = out;
        const float *x = in;
        for (size_t i = 0; i < n; i++) o[i] += x[i];
        break;
    }
    case COMM_F64: {
        double *o = out;
        const double *x = in;
        for (size_t i = 0; i < n; i++) o[i] += x[i];
        break;
    }
    case COMM_I64: {
        int64_t *o = out;
        const int64_t *x = in;
        for (size_t i = 0; i < n; i++) o[i] += x[i];
        break;
    }
    case COMM_BF16: {
        uint16_t *o = out;
        const uint16_t *x = in;
        for (size_t i = 0; i < n; i++) o[i] = f32_to_bf16(bf16_to_f32(o[i]) + bf16_to_f32(x[i]));
        break;
    }
    }
}

double comm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- comm_none ---- */

static int none_all_reduce(Comm *c, void *buf, size_t n, CommType t) { return 0; }
static int none_reduce_scatter(Comm *c, void *buf, const size_t *counts, CommType t) { return 0; }
static int none_all_gather(Comm *c, void *buf, const size_t *counts, size_t elem) { return 0; }
static int none_broadcast(Comm *c, void *buf, size_t bytes, int root) { return 0; }
static int none_barrier(Comm *c) { return 0; }
static int none_host_all_gather(Comm *c, const void *mine, void *all, size_t bytes)
{
    if (all != mine) memmove(all, mine, bytes);
    return 0;
}
static void none_order(Comm *c) {}
static double none_take_exposed(Comm *c) { return 0; }
static void none_free(Comm *c) { free(c); }

Comm *comm_none_create(void)
{
    Comm *c = xcalloc(1, sizeof(Comm));
    *c = (Comm){.name = "none", .rank = 0, .world = 1, .all_reduce_sum = none_all_reduce,
                .reduce_scatter_sum = none_reduce_scatter, .all_gather = none_all_gather,
                .broadcast = none_broadcast, .barrier = none_barrier, .host_all_gather = none_host_all_gather,
                .start_after_compute = none_order, .compute_after_comm = none_order,
                .take_exposed_s = none_take_exposed, .free = none_free};
    return c;
}

/* ---- groups of a job's ranks (comm_group_create) ---- */

#include "dist/net.h"

/* TCP: the group's rank 0 listens on a free port, every rank learns it through the parent, and the
 * group meets there as a job of its own. */
static Comm *tcp_group(Comm *parent, const CommSetup *s, int group, int grank, int gsize)
{
    int lport = -1, lfd = grank == 0 ? net_listen_any(gsize + 8, &lport) : -1;
    int mine[3] = {group, grank, grank == 0 ? lport : 0}; /* -1: none found (all fail below) */
    int *all = xmalloc(sizeof(mine) * (size_t)parent->world), port = -1;
    int rc = parent->host_all_gather(parent, mine, all, sizeof(mine));
    for (int k = 0; !rc && k < parent->world; k++)
        if (all[3 * k] == group && all[3 * k + 1] == 0) port = all[3 * k + 2];
    free(all);
    if (rc || port <= 0) {
        if (lfd >= 0) close(lfd);
        if (!rc) err_set("comm: group %d: its rank 0 found no free TCP port", group);
        return NULL;
    }
    CommSetup gs = *s;
    gs.rank = grank;
    gs.world = gsize;
    gs.master_port = port;
    gs.listen_fd = lfd > 0 ? lfd : 0;
    return comm_tcp_create(&gs);
}

Comm *comm_group_create(Comm *parent, const CommSetup *s, int group, int grank, int gsize)
{
    if (grank < 0 || grank >= gsize || gsize > parent->world)
        return err_set("comm: rank %d of a group of %d in a job of %d (internal error)", grank, gsize, parent->world),
               NULL;
    if (gsize == parent->world) { /* the whole job: a comm of its own all the same (freed separately) */
        if (!strcmp(parent->name, "none")) return comm_none_create();
    }
    if (!strcmp(parent->name, "nccl")) return comm_nccl_split(parent, group, grank);
    if (!strcmp(parent->name, "mpi")) return comm_mpi_split(parent, group, grank);
    if (!strcmp(parent->name, "tcp")) return tcp_group(parent, s, group, grank, gsize);
    if (gsize == 1) return comm_none_create();
    return err_set("comm: groups of a %s comm (internal error)", parent->name), NULL;
}
