/* comm.h - the communication op table: collectives between the ranks of one job.
 *
 * One process per rank (per GPU). A Comm is a struct of function pointers, filled by one of
 *   comm_none  one process (world 1): every op is a no-op;
 *   comm_tcp   CPU ranks over plain TCP sockets (a ring between the ranks, set up through a
 *              rendezvous on MASTER_ADDR:MASTER_PORT): what `anvil launch --device cpu` uses;
 *   comm_mpi   CPU ranks under mpirun (OpenMPI): MPI_Allreduce and friends on host buffers;
 *   comm_nccl  GPU ranks: NCCL on a dedicated CUDA stream (CUDA builds only); the unique id goes
 *              over MPI under mpirun, else over the TCP rendezvous.
 *
 * Buffers. For none/tcp/mpi every buffer is host memory (the CPU backend's memory) and every op
 * has finished when it returns. For nccl (device_buffers = 1) the buffers of the collectives are
 * device memory and an op is only queued on the comm stream when it returns: start_after_compute()
 * orders the comm stream after the compute work queued so far, compute_after_comm() orders the
 * compute work queued from then on after the comm's ops. The host_* ops always take host memory
 * and have finished when they return.
 *
 * Parts. reduce_scatter_sum and all_gather take the buffer as `world` consecutive parts in rank
 * order, counts[r] elements each (unequal counts allowed: ZeRO shards of the trainable segment,
 * params_shard). Collectives give the same bits on every rank.
 *
 * Errors and timeouts. Every op returns 0, or -1 with err_set() naming the rank, the op and the
 * peer where known. No op waits longer than timeout_s (dist.timeout_s) for its peers: a peer that
 * died or hangs ends the process with one line "anvil: rank R: collective OP timed out after S s
 * (dist.timeout_s); a peer rank died or hangs?" (mpi, nccl: a watchdog thread; tcp: poll deadlines),
 * not a silent hang.
 */
#ifndef ANVIL_DIST_COMM_H
#define ANVIL_DIST_COMM_H

#include <stddef.h>
#include <stdint.h>

/* Element types of the reductions (COMM_BF16: the CUDA backend's activations under tensor parallel;
 * summed in fp32 and rounded by the host comms, natively by NCCL; not by MPI). */
typedef enum { COMM_F32 = 0, COMM_F64 = 1, COMM_I64 = 2, COMM_BF16 = 3 } CommType;
size_t comm_type_size(CommType t);

typedef struct Comm Comm;
struct Comm {
    const char *name;   /* "none", "tcp", "mpi", "nccl" */
    int rank, world;
    int device_buffers; /* 1: the buffers of the collectives are device memory (nccl) */
    double timeout_s;   /* dist.timeout_s */
    double busy_s;      /* seconds the host spent blocked in this comm's ops since the last take_exposed */

    /* buf (n elements of t) = the sum over the ranks of every rank's buf. */
    int (*all_reduce_sum)(Comm *c, void *buf, size_t n, CommType t);
    /* buf = world parts of counts[r] elements of t; afterwards this rank's part holds the sum over
     * the ranks of that part; the other parts hold anything. */
    int (*reduce_scatter_sum)(Comm *c, void *buf, const size_t *counts, CommType t);
    /* buf = world parts of counts[r] elements of elem bytes; afterwards every part holds what its
     * rank had in it. */
    int (*all_gather)(Comm *c, void *buf, const size_t *counts, size_t elem);
    /* buf (bytes) = root's buf. */
    int (*broadcast)(Comm *c, void *buf, size_t bytes, int root);
    int (*barrier)(Comm *c);
    /* Host memory, finished on return: all (world * bytes) = every rank's `mine`, in rank order. */
    int (*host_all_gather)(Comm *c, const void *mine, void *all, size_t bytes);
    /* Stream order (no-ops for host comms; see above). */
    void (*start_after_compute)(Comm *c);
    void (*compute_after_comm)(Comm *c);
    /* Seconds of communication the compute waited for since the last call (host comms: the time
     * spent in their ops; nccl: measured with events between compute_after_comm's two sides).
     * Call after the compute work has finished (Backend.sync). */
    double (*take_exposed_s)(Comm *c);
    /* Close the connections (MPI_Finalize, ncclCommDestroy) and free c. */
    void (*free)(Comm *c);
    void *impl;
    /* Finer stream order (appended; NULL for host comms, whose ops have finished on return):
     * mark() names the point of the comm stream reached by the ops queued so far (a number that
     * increases); compute_after_mark(m) orders the compute work queued from then on after that
     * point only, not after ops queued later (ZeRO: a layer's gradient bucket or gathered weights,
     * while later layers' communication still runs). Timed like compute_after_comm. A mark older
     * than the last COMM_MARKS waits for all queued ops instead. */
    long (*mark)(Comm *c);
    void (*compute_after_mark)(Comm *c, long mark);
};

/* Marks a comm keeps apart (comm_nccl's ring of events). */
#define COMM_MARKS 64

/* How the ranks find each other (filled from the environment by dist_env_parse, env.h). */
typedef struct {
    int rank, world, local_rank;
    char master_addr[256]; /* the rendezvous host (MASTER_ADDR, or the first Slurm node) */
    int master_port;
    int mpi;               /* started by mpirun (OMPI_COMM_WORLD_*): MPI is initialised */
    double timeout_s;
    int listen_fd;         /* > 0: rank 0's socket already listening on master_port (taken over) */
} CommSetup;

/* The implementations. NULL with err_set() on failure. */
Comm *comm_none_create(void);
Comm *comm_tcp_create(const CommSetup *s);
Comm *comm_mpi_create(const CommSetup *s);
/* GPU ranks (CUDA builds; else NULL with err_set()). The CUDA backend must be initialised. */
Comm *comm_nccl_create(const CommSetup *s);
/* 1 when the binary was built with MPI / NCCL. */
int comm_have_mpi(void);
int comm_have_nccl(void);

/* MPI itself (comm_mpi.c), for comm_nccl's unique id under mpirun: init once per process,
 * broadcast bytes from root, finalize. Without MPI they fail with err_set(). */
int comm_mpi_init(int *rank, int *world);
int comm_mpi_bcast_bytes(void *buf, size_t n, int root);
void comm_mpi_finalize(void);

/* A comm of its own over a group of the job's ranks (tensor parallel: the tp ranks of one replica;
 * the ranks of one tp rank across the replicas), so that groups run their collectives independently
 * of each other. This rank is member grank of group `group` (of gsize members); every rank of the job
 * calls it, in the same order of groups. tcp: a rendezvous of the group on a free port that its rank 0
 * picks and the parent passes round (s: the parent's setup, for the address and timeout: one node);
 * mpi: MPI_Comm_split; nccl: ncclCommSplit. The parent outlives its groups. NULL with err_set(). */
Comm *comm_group_create(Comm *parent, const CommSetup *s, int group, int grank, int gsize);
/* The MPI and NCCL versions (comm_mpi.c, comm_nccl.c; NULL with err_set() when not built). */
Comm *comm_mpi_split(Comm *parent, int group, int grank);
Comm *comm_nccl_split(Comm *parent, int group, int grank);

/* out[i] += in[i] for n elements of t (the reductions' arithmetic, shared by the host comms). */
void comm_add(void *out, const void *in, size_t n, CommType t);
/* Seconds on a monotonic clock. */
double comm_now(void);

#endif
