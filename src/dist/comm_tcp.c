/* comm_tcp.c - CPU ranks over TCP: ring collectives between the ranks of `anvil launch`.
 *
 * The ranks form a ring (net.h): rank r sends to r+1 and receives from r-1, both at once in one
 * poll loop, so neither side blocks the other whatever the socket buffers. Reduce-scatter of
 * world parts takes world-1 steps: at step s rank r sends part r-s-1 (its partial sum) and adds
 * the received part r-s-2 into its own copy; after the last step part r holds the full sum on rank
 * r, each part summed once, in a fixed order. All-gather passes parts around the same way
 * (part r-s at step s), so an all-reduce (reduce-scatter + all-gather) gives every rank the same
 * bits. Broadcast streams the buffer from the root along the ring in chunks.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "dist/comm.h"
#include "dist/net.h"

/* Bytes per piece of a broadcast along the ring (pipelined: rank r forwards piece k while
 * receiving piece k+1). */
#define TCP_BCAST_CHUNK ((size_t)1 << 20)

typedef struct {
    NetGroup g;
    char *tmp; /* grow-only receive buffer of a reduce-scatter */
    size_t tmp_size;
    size_t *offs; /* world + 1 part offsets, scratch */
} Tcp;

static Tcp *tcp_of(Comm *c) { return c->impl; }

static void part_offsets(const size_t *counts, int world, size_t *offs)
{
    offs[0] = 0;
    for (int r = 0; r < world; r++) offs[r + 1] = offs[r] + counts[r];
}

static int mod(int a, int w) { return ((a % w) + w) % w; }

static int ring_reduce_scatter(Comm *c, void *buf, const size_t *counts, CommType t, const char *op)
{
    Tcp *tc = tcp_of(c);
    int w = c->world, r = c->rank;
    size_t es = comm_type_size(t), maxp = 0;
    part_offsets(counts, w, tc->offs);
    for (int i = 0; i < w; i++) maxp = MAX(maxp, counts[i]);
    if (maxp * es > tc->tmp_size) {
        free(tc->tmp);
        tc->tmp_size = maxp * es;
        tc->tmp = xmalloc(tc->tmp_size);
    }
    double deadline = comm_now() + c->timeout_s;
    for (int s = 0; s < w - 1; s++) {
        int ps = mod(r - s - 1, w), pr = mod(r - s - 2, w);
        NetXfer x[2] = {{tc->g.next, mod(r + 1, w), 1, (char *)buf + tc->offs[ps] * es, counts[ps] * es, 0},
                        {tc->g.prev, mod(r - 1, w), 0, tc->tmp, counts[pr] * es, 0}};
        if (net_xfer(&tc->g, x, 2, deadline, op)) return -1;
        comm_add((char *)buf + tc->offs[pr] * es, tc->tmp, counts[pr], t);
    }
    return 0;
}

static int ring_all_gather(Comm *c, void *buf, const size_t *counts, size_t es, const char *op)
{
    Tcp *tc = tcp_of(c);
    int w = c->world, r = c->rank;
    part_offsets(counts, w, tc->offs);
    double deadline = comm_now() + c->timeout_s;
    for (int s = 0; s < w - 1; s++) {
        int ps = mod(r - s, w), pr = mod(r - s - 1, w);
        NetXfer x[2] = {{tc->g.next, mod(r + 1, w), 1, (char *)buf + tc->offs[ps] * es, counts[ps] * es, 0},
                        {tc->g.prev, mod(r - 1, w), 0, (char *)buf + tc->offs[pr] * es, counts[pr] * es, 0}};
        if (net_xfer(&tc->g, x, 2, deadline, op)) return -1;
    }
    return 0;
}

static int tcp_reduce_scatter(Comm *c, void *buf, const size_t *counts, CommType t)
{
    if (c->world == 1) return 0;
    double t0 = comm_now();
    int rc = ring_reduce_scatter(c, buf, counts, t, "reduce_scatter");
    c->busy_s += comm_now() - t0;
    return rc;
}

static int tcp_all_gather(Comm *c, void *buf, const size_t *counts, size_t elem)
{
    if (c->world == 1) return 0;
    double t0 = comm_now();
    int rc = ring_all_gather(c, buf, counts, elem, "all_gather");
    c->busy_s += comm_now() - t0;
    return rc;
}

static int tcp_all_reduce(Comm *c, void *buf, size_t n, CommType t)
{
    if (c->world == 1) return 0;
    double t0 = comm_now();
    size_t *counts = xmalloc(sizeof(size_t) * (size_t)c->world);
    for (int r = 0; r < c->world; r++) counts[r] = n / (size_t)c->world + ((size_t)r < n % (size_t)c->world);
    int rc = ring_reduce_scatter(c, buf, counts, t, "all_reduce") ||
             ring_all_gather(c, buf, counts, comm_type_size(t), "all_reduce");
    free(counts);
    c->busy_s += comm_now() - t0;
    return rc ? -1 : 0;
}

static int tcp_broadcast(Comm *c, void *buf, size_t bytes, int root)
{
    if (c->world == 1) return 0;
    Tcp *tc = tcp_of(c);
    int w = c->world, r = c->rank, last = mod(root - 1, w);
    double t0 = comm_now(), deadline = t0 + c->timeout_s;
    int rc = 0;
    for (size_t o = 0; o < bytes && !rc; o += TCP_BCAST_CHUNK) {
        size_t n = MIN(TCP_BCAST_CHUNK, bytes - o);
        if (r != root) {
            NetXfer x = {tc->g.prev, mod(r - 1, w), 0, (char *)buf + o, n, 0};
            rc = net_xfer(&tc->g, &x, 1, deadline, "broadcast");
        }
        if (!rc && r != last) {
            NetXfer x = {tc->g.next, mod(r + 1, w), 1, (char *)buf + o, n, 0};
            rc = net_xfer(&tc->g, &x, 1, deadline, "broadcast");
        }
    }
    c->busy_s += comm_now() - t0;
    return rc;
}

static int tcp_host_all_gather(Comm *c, const void *mine, void *all, size_t bytes)
{
    memmove((char *)all + (size_t)c->rank * bytes, mine, bytes);
    if (c->world == 1) return 0;
    size_t *counts = xmalloc(sizeof(size_t) * (size_t)c->world);
    for (int r = 0; r < c->world; r++) counts[r] = bytes;
    double t0 = comm_now();
    int rc = ring_all_gather(c, all, counts, 1, "all_gather");
    c->busy_s += comm_now() - t0;
    free(counts);
    return rc;
}

static int tcp_barrier(Comm *c)
{
    if (c->world == 1) return 0;
    char mine = 1, *all = xmalloc((size_t)c->world);
    int rc = tcp_host_all_gather(c, &mine, all, 1);
    free(all);
    return rc ? err_prefix("barrier") : 0;
}

static void tcp_order(Comm *c) {}

static double tcp_take_exposed(Comm *c)
{
    double s = c->busy_s;
    c->busy_s = 0;
    return s;
}

static void tcp_free(Comm *c)
{
    Tcp *tc = tcp_of(c);
    net_close(&tc->g);
    free(tc->tmp);
    free(tc->offs);
    free(tc);
    free(c);
}

Comm *comm_tcp_create(const CommSetup *s)
{
    Tcp *tc = xcalloc(1, sizeof(Tcp));
    if (net_join(&tc->g, s, 1)) {
        free(tc);
        return NULL;
    }
    tc->offs = xmalloc(sizeof(size_t) * ((size_t)s->world + 1));
    Comm *c = xcalloc(1, sizeof(Comm));
    *c = (Comm){.name = "tcp", .rank = s->rank, .world = s->world, .timeout_s = s->timeout_s,
                .all_reduce_sum = tcp_all_reduce, .reduce_scatter_sum = tcp_reduce_scatter,
                .all_gather = tcp_all_gather, .broadcast = tcp_broadcast, .barrier = tcp_barrier,
                .host_all_gather = tcp_host_all_gather, .start_after_compute = tcp_order,
                .compute_after_comm = tcp_order, .take_exposed_s = tcp_take_exposed, .free = tcp_free, .impl = tc};
    return c;
}
