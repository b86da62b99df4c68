/* comm_nccl.c - GPU ranks: NCCL collectives on a dedicated CUDA stream (CUDA builds only).
 *
 * One communicator per process (one GPU per rank: the CUDA backend uses device 0, and the
 * distributed setup makes device 0 this rank's GPU through CUDA_VISIBLE_DEVICES). Every collective
 * is queued on the comm stream and returns at once; start_after_compute() makes the comm stream
 * wait for an event recorded on the compute stream (cuda_stream()), compute_after_comm() the other
 * way round, and records an event pair around that wait so that take_exposed_s() can say how long
 * the compute stream stood still for communication. Unequal parts (the last ZeRO shard is
 * shorter) run as grouped ncclReduce / ncclBroadcast calls, equal ones as ncclReduceScatter /
 * ncclAllGather, in place.
 *
 * Timeouts: each queued op leaves an event in a ring; the watchdog thread (watchdog.h) polls the
 * oldest with cudaEventQuery and ncclCommGetAsyncError, and ends the process (ncclCommAbort, exit
 * status 1, one line naming the rank and the op) when one has been pending longer than
 * dist.timeout_s or NCCL reports an error (a peer that died).
 */
#include "dist/comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

#ifdef ANVIL_CUDA
#include <cuda_runtime.h>
#include <nccl.h>
#include <pthread.h>
#include <unistd.h>

#include "backend/cuda/cuda_backend.h"
#include "dist/net.h"
#include "dist/watchdog.h"

/* Queued ops whose completion the watchdog tracks; when the ring is full the oldest is waited for. */
#define NCCL_PENDING_MAX 256
/* Event pairs around compute_after_comm per step (grows past this when needed). */
#define NCCL_PAIRS_INIT 16
/* Seconds ncclCommAbort may take before the process ends anyway. */
#define NCCL_ABORT_GRACE_S 10

/* A failed CUDA or NCCL call: err_set naming the rank, file:line and the library's message. */
#define CU_TRY(c, call)                                                                                                \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess)                                                                                         \
            return err_set("%s:%d: CUDA error: %s (in `%s`)", __FILE__, __LINE__,                 \
                           cudaGetErrorString(e_), #call);                                                             \
    } while (0)
#define NCCL_TRY(c, call)                                                                                              \
    do {                                                                                                               \
        ncclResult_t r_ = (call);                                                                                      \
        if (r_ != ncclSuccess)                                                                                         \
            return err_set("%s:%d: NCCL error: %s (in `%s`)", __FILE__, __LINE__,                 \
                           ncclGetErrorString(r_), #call);                                                             \
    } while (0)

/* The same where no error can be returned (stream-order calls): the process ends with the message. */
#define CU_FATAL(call)                                                                                                 \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess) fatal("%s:%d: CUDA error: %s (in `%s`)", __FILE__, __LINE__, cudaGetErrorString(e_), #call); \
    } while (0)

typedef struct {
    cudaEvent_t ev;
    const char *op;
    double since;
} Pending;

typedef struct {
    ncclComm_t nc;
    cudaStream_t cs, xs; /* comm stream, compute stream */
    cudaEvent_t ev_compute, ev_comm;
    Watchdog *wd;
    pthread_mutex_t mu;
    Pending pend[NCCL_PENDING_MAX];
    int head, count;
    cudaEvent_t (*pairs)[2];
    int npairs, cap_pairs;
    void *scratch; /* device staging for the host ops */
    size_t scratch_size;
    int rank;
    int split; /* made by comm_nccl_split: its parent owns MPI */
    cudaEvent_t marks[COMM_MARKS]; /* mark(): the comm stream's points, a ring */
    long nmarks;
} Nccl;

int comm_have_nccl(void) { return 1; }

static ncclDataType_t nccl_type(CommType t)
{
    return t == COMM_F32 ? ncclFloat32 : t == COMM_F64 ? ncclFloat64 : t == COMM_BF16 ? ncclBfloat16 : ncclInt64;
}

/* Remember that an op was queued (its completion event), waiting for the oldest when full. */
static int track(Comm *c, const char *op)
{
    Nccl *n = c->impl;
    pthread_mutex_lock(&n->mu);
    if (n->count == NCCL_PENDING_MAX) {
        Pending *p = &n->pend[n->head];
        pthread_mutex_unlock(&n->mu);
        double t0 = comm_now();
        CU_TRY(c, cudaEventSynchronize(p->ev)); /* the watchdog still sees it pending while we wait */
        c->busy_s += comm_now() - t0;
        pthread_mutex_lock(&n->mu);
        n->head = (n->head + 1) % NCCL_PENDING_MAX;
        n->count--;
        if (n->count) n->pend[n->head].since = comm_now();
    }
    Pending *p = &n->pend[(n->head + n->count) % NCCL_PENDING_MAX];
    p->op = op;
    p->since = comm_now();
    cudaError_t e = cudaEventRecord(p->ev, n->cs);
    if (e == cudaSuccess) n->count++;
    pthread_mutex_unlock(&n->mu);
    return e == cudaSuccess ? 0 : err_set("cudaEventRecord: %s", cudaGetErrorString(e));
}

/* The watchdog's look at the queue: 1 (and a message) when the oldest op overran or NCCL failed. */
static int nccl_check(void *ctx, char *msg, size_t len)
{
    Comm *c = ctx;
    Nccl *n = c->impl;
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(n->nc, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress) {
        snprintf(msg, len, "NCCL: %s (%s); a peer rank died?", ncclGetErrorString(async), ncclGetLastError(n->nc));
        return 1;
    }
    int fire = 0;
    pthread_mutex_lock(&n->mu);
    while (n->count) {
        Pending *p = &n->pend[n->head];
        cudaError_t q = cudaEventQuery(p->ev);
        if (q == cudaSuccess) {
            n->head = (n->head + 1) % NCCL_PENDING_MAX;
            if (--n->count) n->pend[n->head].since = comm_now();
            continue;
        }
        if (q != cudaErrorNotReady) {
            snprintf(msg, len, "collective %s failed: %s", p->op, cudaGetErrorString(q));
            fire = 1;
        } else if (comm_now() - p->since > c->timeout_s) {
            snprintf(msg, len, "collective %s timed out after %.0f s (dist.timeout_s); a peer rank died or hangs?",
                     p->op, c->timeout_s);
            fire = 1;
        }
        break;
    }
    pthread_mutex_unlock(&n->mu);
    return fire;
}

static void nccl_abort(void *ctx)
{
    Comm *c = ctx;
    Nccl *n = c->impl;
    alarm(NCCL_ABORT_GRACE_S); /* the default SIGALRM action ends the process if the abort hangs */
    ncclCommAbort(n->nc);
}

static int nccl_all_reduce(Comm *c, void *buf, size_t count, CommType t)
{
    Nccl *n = c->impl;
    if (!count) return 0;
    NCCL_TRY(c, ncclAllReduce(buf, buf, count, nccl_type(t), ncclSum, n->nc, n->cs));
    return track(c, "all_reduce");
}

static int parts_equal(const size_t *counts, int world)
{
    for (int r = 1; r < world; r++)
        if (counts[r] != counts[0]) return 0;
    return 1;
}

static int nccl_reduce_scatter(Comm *c, void *buf, const size_t *counts, CommType t)
{
    Nccl *n = c->impl;
    size_t es = comm_type_size(t);
    if (parts_equal(counts, c->world)) {
        if (!counts[0]) return 0;
        NCCL_TRY(c, ncclReduceScatter(buf, (char *)buf + (size_t)c->rank * counts[0] * es, counts[0], nccl_type(t),
                                      ncclSum, n->nc, n->cs));
    } else {
        NCCL_TRY(c, ncclGroupStart());
        size_t off = 0;
        for (int r = 0; r < c->world; off += counts[r++]) {
            if (!counts[r]) continue;
            char *p = (char *)buf + off * es;
            NCCL_TRY(c, ncclReduce(p, p, counts[r], nccl_type(t), ncclSum, r, n->nc, n->cs));
        }
        NCCL_TRY(c, ncclGroupEnd());
    }
    return track(c, "reduce_scatter");
}

static int nccl_all_gather(Comm *c, void *buf, const size_t *counts, size_t elem)
{
    Nccl *n = c->impl;
    if (parts_equal(counts, c->world)) {
        if (!counts[0]) return 0;
        size_t bytes = counts[0] * elem;
        NCCL_TRY(c, ncclAllGather((char *)buf + (size_t)c->rank * bytes, buf, bytes, ncclUint8, n->nc, n->cs));
    } else {
        NCCL_TRY(c, ncclGroupStart());
        size_t off = 0;
        for (int r = 0; r < c->world; off += counts[r++]) {
            if (!counts[r]) continue;
            char *p = (char *)buf + off * elem;
            NCCL_TRY(c, ncclBroadcast(p, p, counts[r] * elem, ncclUint8, r, n->nc, n->cs));
        }
        NCCL_TRY(c, ncclGroupEnd());
    }
    return track(c, "all_gather");
}

static int nccl_broadcast(Comm *c, void *buf, size_t bytes, int root)
{
    Nccl *n = c->impl;
    if (!bytes) return 0;
    NCCL_TRY(c, ncclBroadcast(buf, buf, bytes, ncclUint8, root, n->nc, n->cs));
    return track(c, "broadcast");
}

/* Wait on the host for the comm stream, under the watchdog. */
static int comm_sync(Comm *c, const char *op)
{
    Nccl *n = c->impl;
    double t0 = comm_now();
    watchdog_begin(n->wd, op);
    cudaError_t e = cudaStreamSynchronize(n->cs);
    watchdog_end(n->wd);
    c->busy_s += comm_now() - t0;
    return e == cudaSuccess ? 0 : err_set("%s: %s", op, cudaGetErrorString(e));
}

static int nccl_host_all_gather(Comm *c, const void *mine, void *all, size_t bytes)
{
    Nccl *n = c->impl;
    size_t need = bytes * (size_t)c->world;
    if (need > n->scratch_size) {
        if (n->scratch) CU_TRY(c, cudaFree(n->scratch));
        CU_TRY(c, cudaMalloc(&n->scratch, need));
        n->scratch_size = need;
    }
    char *mine_dev = (char *)n->scratch + (size_t)c->rank * bytes;
    CU_TRY(c, cudaMemcpyAsync(mine_dev, mine, bytes, cudaMemcpyHostToDevice, n->cs));
    NCCL_TRY(c, ncclAllGather(mine_dev, n->scratch, bytes, ncclUint8, n->nc, n->cs));
    CU_TRY(c, cudaMemcpyAsync(all, n->scratch, need, cudaMemcpyDeviceToHost, n->cs));
    return comm_sync(c, "all_gather");
}

static int nccl_barrier(Comm *c)
{
    char one = 1, *all = xmalloc((size_t)c->world);
    int rc = nccl_host_all_gather(c, &one, all, 1);
    free(all);
    return rc ? err_prefix("barrier") : 0;
}

static void nccl_start_after_compute(Comm *c)
{
    Nccl *n = c->impl;
    CU_FATAL(cudaEventRecord(n->ev_compute, n->xs));
    CU_FATAL(cudaStreamWaitEvent(n->cs, n->ev_compute, 0));
}

/* The compute stream waits for event ev of the comm stream, timed by an event pair around the wait. */
static void compute_wait(Nccl *n, cudaEvent_t ev)
{
    if (n->npairs == n->cap_pairs) {
        int cap = n->cap_pairs ? 2 * n->cap_pairs : NCCL_PAIRS_INIT;
        n->pairs = xrealloc(n->pairs, sizeof(*n->pairs) * (size_t)cap);
        for (int i = n->cap_pairs; i < cap; i++) {
            CU_FATAL(cudaEventCreate(&n->pairs[i][0]));
            CU_FATAL(cudaEventCreate(&n->pairs[i][1]));
        }
        n->cap_pairs = cap;
    }
    cudaEvent_t *p = n->pairs[n->npairs++];
    CU_FATAL(cudaEventRecord(p[0], n->xs)); /* the compute work so far is done */
    CU_FATAL(cudaStreamWaitEvent(n->xs, ev, 0));
    CU_FATAL(cudaEventRecord(p[1], n->xs)); /* ... and so is the communication */
}

static void nccl_compute_after_comm(Comm *c)
{
    Nccl *n = c->impl;
    CU_FATAL(cudaEventRecord(n->ev_comm, n->cs));
    compute_wait(n, n->ev_comm);
}

static long nccl_mark(Comm *c)
{
    Nccl *n = c->impl;
    CU_FATAL(cudaEventRecord(n->marks[n->nmarks % COMM_MARKS], n->cs));
    return n->nmarks++;
}

static void nccl_compute_after_mark(Comm *c, long mark)
{
    Nccl *n = c->impl;
    if (mark < 0 || mark >= n->nmarks) return;
    if (mark < n->nmarks - COMM_MARKS) { /* its event was recorded again since: wait for everything */
        nccl_compute_after_comm(c);
        return;
    }
    compute_wait(n, n->marks[mark % COMM_MARKS]);
}

static double nccl_take_exposed(Comm *c)
{
    Nccl *n = c->impl;
    double s = 0;
    for (int i = 0; i < n->npairs; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, n->pairs[i][0], n->pairs[i][1]) == cudaSuccess) s += ms * 1e-3;
    }
    n->npairs = 0;
    s += c->busy_s; /* host ops (losses, counts, metrics) block the host */
    c->busy_s = 0;
    return s;
}

static void nccl_free(Comm *c)
{
    Nccl *n = c->impl;
    comm_sync(c, "shutdown");
    watchdog_stop(n->wd);
    ncclCommDestroy(n->nc);
    for (int i = 0; i < NCCL_PENDING_MAX; i++) cudaEventDestroy(n->pend[i].ev);
    for (int i = 0; i < n->cap_pairs; i++) {
        cudaEventDestroy(n->pairs[i][0]);
        cudaEventDestroy(n->pairs[i][1]);
    }
    cudaEventDestroy(n->ev_compute);
    cudaEventDestroy(n->ev_comm);
    for (int i = 0; i < COMM_MARKS; i++) cudaEventDestroy(n->marks[i]);
    cudaStreamDestroy(n->cs);
    if (n->scratch) cudaFree(n->scratch);
    free(n->pairs);
    pthread_mutex_destroy(&n->mu);
    int split = n->split;
    free(n);
    free(c);
    if (!split) comm_mpi_finalize();
}

/* The unique id: rank 0 makes it; MPI or the TCP rendezvous carries it to the others. */
static int exchange_id(const CommSetup *s, ncclUniqueId *id)
{
    if (s->rank == 0 && ncclGetUniqueId(id) != ncclSuccess) return err_set("ncclGetUniqueId failed");
    if (s->mpi) {
        int rank, world;
        if (comm_mpi_init(&rank, &world) || comm_mpi_bcast_bytes(id, sizeof(*id), 0))
            return err_prefix("NCCL id over MPI");
        return 0;
    }
    NetGroup g;
    if (net_join(&g, s, 0)) return -1;
    int rc = net_star_bcast(&g, id, sizeof(*id), "nccl id");
    net_close(&g);
    return rc;
}

/* A Comm of rank of world with its stream, events and watchdog, before its NCCL communicator. */
static Comm *nccl_comm_new(int rank, int world, double timeout_s)
{
    Comm *c = xcalloc(1, sizeof(Comm));
    Nccl *n = xcalloc(1, sizeof(Nccl));
    *c = (Comm){.name = "nccl", .rank = rank, .world = world, .device_buffers = 1, .timeout_s = timeout_s,
                .all_reduce_sum = nccl_all_reduce, .reduce_scatter_sum = nccl_reduce_scatter,
                .all_gather = nccl_all_gather, .broadcast = nccl_broadcast, .barrier = nccl_barrier,
                .host_all_gather = nccl_host_all_gather, .start_after_compute = nccl_start_after_compute,
                .compute_after_comm = nccl_compute_after_comm, .take_exposed_s = nccl_take_exposed,
                .mark = nccl_mark, .compute_after_mark = nccl_compute_after_mark,
                .free = nccl_free, .impl = n};
    n->rank = rank;
    n->xs = (cudaStream_t)cuda_stream();
    pthread_mutex_init(&n->mu, NULL);
    cudaError_t e = cudaStreamCreateWithFlags(&n->cs, cudaStreamNonBlocking);
    for (int i = 0; e == cudaSuccess && i < NCCL_PENDING_MAX; i++)
        e = cudaEventCreateWithFlags(&n->pend[i].ev, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&n->ev_compute, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&n->ev_comm, cudaEventDisableTiming);
    for (int i = 0; e == cudaSuccess && i < COMM_MARKS; i++)
        e = cudaEventCreateWithFlags(&n->marks[i], cudaEventDisableTiming);
    if (e != cudaSuccess) {
        err_set("the comm stream: %s", cudaGetErrorString(e));
        free(n);
        free(c);
        return NULL;
    }
    n->wd = watchdog_start(rank, timeout_s, nccl_check, nccl_abort, c);
    return c;
}

Comm *comm_nccl_create(const CommSetup *s)
{
    ncclUniqueId id;
    if (exchange_id(s, &id)) return NULL;
    Comm *c = nccl_comm_new(s->rank, s->world, s->timeout_s);
    if (!c) return NULL;
    Nccl *n = c->impl;
    /* ncclCommInitRank waits for every rank: the watchdog bounds that wait too */
    watchdog_begin(n->wd, "nccl init");
    ncclResult_t r = ncclCommInitRank(&n->nc, s->world, id, s->rank);
    watchdog_end(n->wd);
    if (r != ncclSuccess) {
        err_set("ncclCommInitRank: %s", ncclGetErrorString(r));
        return NULL; /* the process ends on this error; nothing to unwind */
    }
    return c;
}

/* A group of the parent's ranks (comm_group_create): ncclCommSplit with the group as the colour and
 * the rank in it as the key; every parent rank calls it. Its own comm stream, ordered against the
 * compute stream as the parent's. */
Comm *comm_nccl_split(Comm *parent, int group, int grank)
{
    Nccl *pn = parent->impl;
    Comm *c = nccl_comm_new(parent->rank, 0, parent->timeout_s); /* messages name the job's rank */
    if (!c) return NULL;
    Nccl *n = c->impl;
    n->split = 1;
    watchdog_begin(n->wd, "nccl split");
    ncclResult_t r = ncclCommSplit(pn->nc, group, grank, &n->nc, NULL);
    watchdog_end(n->wd);
    if (r != ncclSuccess) {
        err_set("ncclCommSplit: %s", ncclGetErrorString(r));
        return NULL;
    }
    int size = 0;
    if (ncclCommCount(n->nc, &size) != ncclSuccess) return err_set("ncclCommCount failed"), NULL;
    c->rank = grank;
    c->world = size;
    return c;
}

#else /* built without CUDA */

int comm_have_nccl(void) { return 0; }
Comm *comm_nccl_create(const CommSetup *s)
{
    err_set("this anvil was built without CUDA, so without NCCL");
    return NULL;
}
Comm *comm_nccl_split(Comm *parent, int group, int grank)
{
    err_set("this anvil was built without CUDA, so without NCCL");
    return NULL;
}

#endif
