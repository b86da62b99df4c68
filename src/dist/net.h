/* net.h - TCP plumbing of the distributed layer: the rendezvous on MASTER_ADDR:MASTER_PORT and
 * deadline-bounded transfers (src/dist/net.c).
 *
 * Rendezvous: rank 0 listens on the master port; every other rank connects to it (retrying until
 * the deadline, since rank 0 may start later) and says who it is. Rank 0 checks that the world
 * sizes agree and no rank came twice, then sends every rank the address and ring port of every
 * other one, so that each rank can connect to the next (rank + 1) and accept the previous one.
 * The star connections (rank 0 <-> r) stay open for net_star_bcast (the NCCL unique id).
 */
#ifndef ANVIL_DIST_NET_H
#define ANVIL_DIST_NET_H

#include <stddef.h>

#include "dist/comm.h"

typedef struct {
    int rank, world;
    int *star;    /* rank 0: star[r] = the connection to rank r (star[0] = -1); others: star[0] = to rank 0 */
    int prev, next; /* ring connections (-1 when world == 1, or before net_ring) */
    double timeout_s;
} NetGroup;

/* One transfer of a poll loop: send or receive len bytes on fd to / from rank `peer`. */
typedef struct {
    int fd, peer, send;
    char *buf;
    size_t len, done;
} NetXfer;

/* Join the group (the star); with ring = 1 also connect the ring. -1 with err_set() naming the
 * rank, the address and what failed (a peer that never came: after timeout_s). */
int net_join(NetGroup *g, const CommSetup *s, int ring);
void net_close(NetGroup *g);
/* Run the transfers until all are done, at most until `deadline` (comm_now() seconds).
 * -1 with err_set("rank R: collective OP ...") naming the peer that closed, or the timeout. */
int net_xfer(const NetGroup *g, NetXfer *x, int n, double deadline, const char *op);
/* Rank 0's buf (n bytes) to every rank over the star. */
int net_star_bcast(const NetGroup *g, void *buf, size_t n, const char *op);
/* A socket listening on a free port (its number in *port) that stays open, so that nobody else can
 * take the port before it is used: `anvil launch` hands it to rank 0 (NET_LISTEN_FD_ENV), a group's
 * rank 0 to its rendezvous (CommSetup.listen_fd). -1 with err_set(). */
int net_listen_any(int backlog, int *port);
#define NET_LISTEN_FD_ENV "ANVIL_RENDEZVOUS_FD"
/* The inherited listener of NET_LISTEN_FD_ENV when it is a socket listening on `port`, else -1; the
 * variable is removed either way, so it is taken at most once. */
int net_take_listener(int port);

#endif
