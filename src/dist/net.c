/* net.c - rendezvous and deadline-bounded transfers over TCP (net.h). */
#include "dist/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/error.h"

/* First word of every hello, so that a stray connection to the port is recognised. */
#define NET_MAGIC 0x616e766cu /* "anvl" */
/* Pause between attempts to reach a rank that is not listening yet. */
#define NET_RETRY_S 0.05
/* Longest single poll() sleep, so that deadlines are checked often. */
#define NET_POLL_MS 200

typedef struct {
    uint32_t magic;
    int32_t rank, world, port;
} Hello;

static void set_socket_opts(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int resolve_ipv4(const char *host, uint32_t *ip)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int e = getaddrinfo(host, NULL, &hints, &res);
    if (e || !res) return err_set("cannot resolve \"%s\": %s", host, gai_strerror(e));
    *ip = ((struct sockaddr_in *)res->ai_addr)->sin_addr.s_addr;
    freeaddrinfo(res);
    return 0;
}

/* A listening socket on port (0 = any free one); its port in *bound. */
static int listen_on(int port, int backlog, int *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return err_set("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, backlog)) {
        err_set("cannot listen on port %d: %s", port, strerror(errno));
        close(fd);
        return -1;
    }
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    *bound = ntohs(a.sin_port);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

int net_listen_any(int backlog, int *port) { return listen_on(0, backlog, port); }

int net_take_listener(int port)
{
    const char *v = getenv(NET_LISTEN_FD_ENV); /* removed below: a later rendezvous listens afresh */
    if (!v || !*v) return -1;
    char *end;
    long fd = strtol(v, &end, 10);
    int number = !*end && fd > 2 && fd <= 1 << 20;
    unsetenv(NET_LISTEN_FD_ENV);
    if (!number) return -1;
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int acc = 0;
    socklen_t alen = sizeof(acc);
    if (getsockname((int)fd, (struct sockaddr *)&a, &len) || a.sin_family != AF_INET || ntohs(a.sin_port) != port ||
        getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &alen) || !acc)
        return -1; /* not the socket it claims to be: listen afresh */
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    return (int)fd;
}

/* Connect to ip:port, retrying while nobody listens, until the deadline. */
static int connect_retry(uint32_t ip, int port, double deadline, int *err)
{
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return *err = errno, -1;
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = ip};
        if (!connect(fd, (struct sockaddr *)&a, sizeof(a))) {
            set_socket_opts(fd);
            return fd;
        }
        *err = errno;
        close(fd);
        if (comm_now() + NET_RETRY_S > deadline) return -1;
        usleep((useconds_t)(NET_RETRY_S * 1e6));
    }
}

/* Accept one connection before the deadline; its peer address in *ip. */
static int accept_deadline(int lfd, double deadline, uint32_t *ip)
{
    for (;;) {
        struct sockaddr_in a;
        socklen_t len = sizeof(a);
        int fd = accept(lfd, (struct sockaddr *)&a, &len);
        if (fd >= 0) {
            set_socket_opts(fd);
            if (ip) *ip = a.sin_addr.s_addr;
            return fd;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -1;
        double left = deadline - comm_now();
        if (left <= 0) return errno = ETIMEDOUT, -1;
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        poll(&p, 1, (int)MIN(left * 1e3 + 1, NET_POLL_MS));
    }
}

int net_xfer(const NetGroup *g, NetXfer *x, int n, double deadline, const char *op)
{
    struct pollfd p[4];
    int idx[4];
    for (;;) {
        int k = 0;
        for (int i = 0; i < n; i++) {
            if (x[i].done == x[i].len) continue;
            p[k] = (struct pollfd){.fd = x[i].fd, .events = x[i].send ? POLLOUT : POLLIN};
            idx[k++] = i;
        }
        if (!k) return 0;
        double left = deadline - comm_now();
        if (left <= 0)
            return err_set("collective %s timed out after %.0f s (dist.timeout_s); a peer rank died or hangs? "
                           "(waiting for rank %d)",
                           op, g->timeout_s, x[idx[0]].peer);
        int r = poll(p, (nfds_t)k, (int)MIN(left * 1e3 + 1, NET_POLL_MS));
        if (r < 0 && errno != EINTR) return err_set("collective %s: poll: %s", op, strerror(errno));
        for (int j = 0; r > 0 && j < k; j++) {
            if (!p[j].revents) continue;
            NetXfer *t = &x[idx[j]];
            ssize_t m = t->send ? send(t->fd, t->buf + t->done, t->len - t->done, MSG_NOSIGNAL)
                                : recv(t->fd, t->buf + t->done, t->len - t->done, 0);
            if (m > 0) {
                t->done += (size_t)m;
            } else if (m == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                const char *why = m == 0 ? "closed the connection" : strerror(errno);
                return err_set("collective %s: lost rank %d (%s); it exited or died", op, t->peer,
                               why);
            }
        }
    }
}

static int xfer1(const NetGroup *g, int fd, int peer, int send, void *buf, size_t len, const char *op)
{
    NetXfer x = {fd, peer, send, buf, len, 0};
    return net_xfer(g, &x, 1, comm_now() + g->timeout_s, op);
}

int net_star_bcast(const NetGroup *g, void *buf, size_t n, const char *op)
{
    if (g->rank != 0) return xfer1(g, g->star[0], 0, 0, buf, n, op);
    for (int r = 1; r < g->world; r++)
        if (xfer1(g, g->star[r], r, 1, buf, n, op)) return -1;
    return 0;
}

/* Rank 0: accept world-1 hellos; fill ip[] and port[] of every rank. */
static int star_accept(NetGroup *g, int lfd, const CommSetup *s, uint32_t *ip, int32_t *port, double deadline)
{
    for (int joined = 1; joined < g->world;) {
        uint32_t peer_ip;
        int fd = accept_deadline(lfd, deadline, &peer_ip);
        if (fd < 0)
            return err_set("rendezvous on port %d: only %d of %d ranks came within %.0f s (dist.timeout_s); "
                           "were all %d started?",
                           s->master_port, joined, g->world, g->timeout_s, g->world);
        Hello h;
        NetXfer x = {fd, -1, 0, (char *)&h, sizeof(h), 0};
        if (net_xfer(g, &x, 1, deadline, "rendezvous") || h.magic != NET_MAGIC) {
            close(fd); /* not one of ours (or it died while saying hello): keep waiting */
            err_clear();
            continue;
        }
        if (h.world != g->world) {
            close(fd);
            return err_set("rendezvous: rank %d says the world has %d ranks, rank 0 says %d", h.rank,
                           h.world, g->world);
        }
        if (h.rank <= 0 || h.rank >= g->world || g->star[h.rank] >= 0) {
            close(fd);
            return err_set("rendezvous: rank %d joined twice (or is out of range); are two jobs sharing "
                           "MASTER_PORT %d?",
                           h.rank, s->master_port);
        }
        g->star[h.rank] = fd;
        ip[h.rank] = peer_ip;
        port[h.rank] = h.port;
        joined++;
    }
    return 0;
}

/* Connect the ring: to rank+1's listener, and accept rank-1 (which says who it is). */
static int ring_connect(NetGroup *g, int lfd, const uint32_t *ip, const int32_t *port, double deadline)
{
    int next = (g->rank + 1) % g->world, prev = (g->rank + g->world - 1) % g->world, err = 0;
    g->next = connect_retry(ip[next], port[next], deadline, &err);
    if (g->next < 0) return err_set("cannot reach rank %d: %s", next, strerror(err));
    int32_t me = g->rank;
    NetXfer x = {g->next, next, 1, (char *)&me, sizeof(me), 0};
    if (net_xfer(g, &x, 1, deadline, "rendezvous")) return -1;
    g->prev = accept_deadline(lfd, deadline, NULL);
    if (g->prev < 0) return err_set("rank %d did not connect within %.0f s", prev, g->timeout_s);
    int32_t who = -1;
    NetXfer y = {g->prev, prev, 0, (char *)&who, sizeof(who), 0};
    if (net_xfer(g, &y, 1, deadline, "rendezvous")) return -1;
    if (who != prev) return err_set("expected rank %d on the ring, got %d", prev, who);
    return 0;
}

int net_join(NetGroup *g, const CommSetup *s, int ring)
{
    memset(g, 0, sizeof(*g));
    g->rank = s->rank;
    g->world = s->world;
    g->timeout_s = s->timeout_s;
    g->prev = g->next = -1;
    g->star = xmalloc(sizeof(int) * (size_t)g->world);
    for (int r = 0; r < g->world; r++) g->star[r] = -1;
    if (g->world == 1) return 0;
    double deadline = comm_now() + s->timeout_s;
    uint32_t *ip = xcalloc((size_t)g->world, sizeof(uint32_t));
    int32_t *port = xcalloc((size_t)g->world, sizeof(int32_t));
    int rc = -1, star_l = -1, ring_l = -1, ring_port = 0, err = 0;
    if (resolve_ipv4(s->master_addr, &ip[0])) {
        err_prefix("rendezvous: MASTER_ADDR");
        goto out;
    }
    if (ring && (ring_l = listen_on(0, 4, &ring_port)) < 0) {
        err_prefix("rendezvous");
        goto out;
    }
    if (g->rank == 0) {
        int bound;
        /* a socket already listening on the port (anvil launch's, a group's rank 0's): no window in
         * which another process can take the port */
        star_l = s->listen_fd > 0 ? s->listen_fd : net_take_listener(s->master_port);
        if (star_l < 0) star_l = listen_on(s->master_port, g->world + 8, &bound);
        if (star_l < 0) {
            err_prefix("rendezvous on %s:%d (MASTER_PORT in use?)", s->master_addr, s->master_port);
            goto out;
        }
        port[0] = ring_port;
        if (star_accept(g, star_l, s, ip, port, deadline)) goto out;
        for (int r = 1; r < g->world; r++) {
            NetXfer x[2] = {{g->star[r], r, 1, (char *)ip, sizeof(uint32_t) * (size_t)g->world, 0},
                            {g->star[r], r, 1, (char *)port, sizeof(int32_t) * (size_t)g->world, 0}};
            if (net_xfer(g, &x[0], 1, deadline, "rendezvous") || net_xfer(g, &x[1], 1, deadline, "rendezvous"))
                goto out;
        }
    } else {
        g->star[0] = connect_retry(ip[0], s->master_port, deadline, &err);
        if (g->star[0] < 0) {
            err_set("rendezvous: cannot reach rank 0 at %s:%d within %.0f s (dist.timeout_s): %s",
                    s->master_addr, s->master_port, s->timeout_s, strerror(err));
            goto out;
        }
        Hello h = {NET_MAGIC, g->rank, g->world, ring_port};
        uint32_t ip0 = ip[0];
        NetXfer x[3] = {{g->star[0], 0, 1, (char *)&h, sizeof(h), 0},
                        {g->star[0], 0, 0, (char *)ip, sizeof(uint32_t) * (size_t)g->world, 0},
                        {g->star[0], 0, 0, (char *)port, sizeof(int32_t) * (size_t)g->world, 0}};
        for (int i = 0; i < 3; i++)
            if (net_xfer(g, &x[i], 1, deadline, "rendezvous")) goto out;
        ip[0] = ip0; /* rank 0 is reached at the address this rank used */
    }
    if (ring && ring_connect(g, ring_l, ip, port, deadline)) goto out;
    rc = 0;
out:
    if (star_l >= 0) close(star_l);
    if (ring_l >= 0) close(ring_l);
    free(ip);
    free(port);
    if (rc) net_close(g);
    return rc;
}

void net_close(NetGroup *g)
{
    for (int r = 0; g->star && r < g->world; r++)
        if (g->star[r] >= 0) close(g->star[r]);
    if (g->prev >= 0) close(g->prev);
    if (g->next >= 0) close(g->next);
    free(g->star);
    g->star = NULL;
    g->prev = g->next = -1;
}
