/* comm_mpi.c - CPU ranks under mpirun: OpenMPI's collectives on host buffers.
 *
 * MPI is initialised here (MPI_Init_thread asking for MPI_THREAD_MULTIPLE, since the watchdog
 * thread may call MPI_Abort while the main thread is inside a collective). Counts go to MPI as
 * int: the distributed layer hands over at most one bucket (dist.bucket_mb) per call, and a larger
 * count is an error rather than a silent truncation. Reduce-scatter with MPI_IN_PLACE leaves the
 * result at the start of the buffer; it is moved to this rank's part, which is where the op table
 * promises it.
 */
#include "dist/comm.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

#ifdef ANVIL_MPI
#include <mpi.h>

#include "dist/watchdog.h"

typedef struct {
    Watchdog *wd;
    int *counts, *displs; /* world, scratch */
    MPI_Datatype elem[3]; /* contiguous byte types of 2, 4, 8 bytes for all_gather; cached */
    MPI_Comm comm;        /* MPI_COMM_WORLD, or a group of it (comm_mpi_split) */
} Mpi;

int comm_have_mpi(void) { return 1; }

static MPI_Datatype mpi_type(CommType t)
{
    return t == COMM_F32 ? MPI_FLOAT : t == COMM_F64 ? MPI_DOUBLE : MPI_INT64_T;
}

static int mpi_fail(Comm *c, const char *op, int e)
{
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(e, s, &n);
    return err_set("collective %s: MPI error: %s", op, s);
}

static int too_big(Comm *c, const char *op, size_t n)
{
    return err_set("collective %s: %zu elements exceed MPI's int count; lower dist.bucket_mb", op, n);
}

/* Run one MPI call under the watchdog, timing it. */
#define MPI_OP(c, opname, call)                                                                                       \
    do {                                                                                                               \
        Mpi *mp_ = (c)->impl;                                                                                          \
        double t0_ = comm_now();                                                                                       \
        watchdog_begin(mp_->wd, opname);                                                                               \
        int e_ = (call);                                                                                               \
        watchdog_end(mp_->wd);                                                                                         \
        (c)->busy_s += comm_now() - t0_;                                                                               \
        if (e_ != MPI_SUCCESS) return mpi_fail(c, opname, e_);                                                         \
    } while (0)

static int mpi_all_reduce(Comm *c, void *buf, size_t n, CommType t)
{
    if (c->world == 1 || !n) return 0;
    if (n > INT_MAX) return too_big(c, "all_reduce", n);
    MPI_OP(c, "all_reduce", MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, mpi_type(t), MPI_SUM, ((Mpi *)c->impl)->comm));
    return 0;
}

static int mpi_reduce_scatter(Comm *c, void *buf, const size_t *counts, CommType t)
{
    if (c->world == 1) return 0;
    Mpi *mp = c->impl;
    size_t off = 0, total = 0;
    for (int r = 0; r < c->world; r++) {
        if (counts[r] > INT_MAX) return too_big(c, "reduce_scatter", counts[r]);
        mp->counts[r] = (int)counts[r];
        if (r < c->rank) off += counts[r];
        total += counts[r];
    }
    if (!total) return 0;
    MPI_OP(c, "reduce_scatter",
           MPI_Reduce_scatter(MPI_IN_PLACE, buf, mp->counts, mpi_type(t), MPI_SUM, ((Mpi *)c->impl)->comm));
    size_t es = comm_type_size(t);
    if (off) memmove((char *)buf + off * es, buf, counts[c->rank] * es);
    return 0;
}

static MPI_Datatype elem_type(Mpi *mp, size_t elem)
{
    int k = elem == 2 ? 0 : elem == 4 ? 1 : elem == 8 ? 2 : -1;
    if (k < 0) return MPI_DATATYPE_NULL;
    if (mp->elem[k] == MPI_DATATYPE_NULL) {
        MPI_Type_contiguous((int)elem, MPI_BYTE, &mp->elem[k]);
        MPI_Type_commit(&mp->elem[k]);
    }
    return mp->elem[k];
}

static int mpi_all_gather(Comm *c, void *buf, const size_t *counts, size_t elem)
{
    if (c->world == 1) return 0;
    Mpi *mp = c->impl;
    MPI_Datatype et = elem == 1 ? MPI_BYTE : elem_type(mp, elem);
    if (et == MPI_DATATYPE_NULL) return err_set("all_gather: unsupported element size %zu", elem);
    size_t off = 0;
    for (int r = 0; r < c->world; r++) {
        if (counts[r] > INT_MAX || off > INT_MAX) return too_big(c, "all_gather", off + counts[r]);
        mp->counts[r] = (int)counts[r];
        mp->displs[r] = (int)off;
        off += counts[r];
    }
    if (!off) return 0;
    MPI_OP(c, "all_gather",
           MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, mp->counts, mp->displs, et, ((Mpi *)c->impl)->comm));
    return 0;
}

static int mpi_broadcast(Comm *c, void *buf, size_t bytes, int root)
{
    if (c->world == 1) return 0;
    for (size_t o = 0; o < bytes; o += INT_MAX) {
        int n = (int)MIN((size_t)INT_MAX, bytes - o);
        MPI_OP(c, "broadcast", MPI_Bcast((char *)buf + o, n, MPI_BYTE, root, ((Mpi *)c->impl)->comm));
    }
    return 0;
}

static int mpi_barrier(Comm *c)
{
    MPI_OP(c, "barrier", MPI_Barrier(((Mpi *)c->impl)->comm));
    return 0;
}

static int mpi_host_all_gather(Comm *c, const void *mine, void *all, size_t bytes)
{
    memmove((char *)all + (size_t)c->rank * bytes, mine, bytes);
    if (c->world == 1) return 0;
    if (bytes > INT_MAX) return too_big(c, "all_gather", bytes);
    MPI_OP(c, "all_gather",
           MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, all, (int)bytes, MPI_BYTE, ((Mpi *)c->impl)->comm));
    return 0;
}

static void mpi_order(Comm *c) {}

static double mpi_take_exposed(Comm *c)
{
    double s = c->busy_s;
    c->busy_s = 0;
    return s;
}

static void mpi_abort(void *ctx) { MPI_Abort(MPI_COMM_WORLD, 1); }

static void mpi_free(Comm *c)
{
    Mpi *mp = c->impl;
    watchdog_stop(mp->wd);
    for (int k = 0; k < 3; k++)
        if (mp->elem[k] != MPI_DATATYPE_NULL) MPI_Type_free(&mp->elem[k]);
    free(mp->counts);
    free(mp->displs);
    int fin = 0, split = mp->comm != MPI_COMM_WORLD;
    MPI_Finalized(&fin);
    if (split && !fin) MPI_Comm_free(&mp->comm);
    free(mp);
    free(c);
    if (!split && !fin) MPI_Finalize(); /* a group leaves MPI to the job's comm */
}

/* MPI itself, once per process (comm_nccl uses it to pass the unique id under mpirun). */
int comm_mpi_init(int *rank, int *world)
{
    int init = 0, provided = 0;
    MPI_Initialized(&init);
    if (!init && MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        return err_set("MPI_Init_thread failed (started by mpirun?)");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, world);
    return 0;
}

int comm_mpi_bcast_bytes(void *buf, size_t n, int root)
{
    return MPI_Bcast(buf, (int)n, MPI_BYTE, root, MPI_COMM_WORLD) == MPI_SUCCESS ? 0
                                                                                   : err_set("MPI_Bcast failed");
}

void comm_mpi_finalize(void)
{
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Finalize();
}

Comm *comm_mpi_create(const CommSetup *s)
{
    int rank, world;
    if (comm_mpi_init(&rank, &world)) return NULL;
    if (rank != s->rank || world != s->world) {
        err_set("MPI says rank %d of %d, the environment (OMPI_COMM_WORLD_*) says %d of %d", rank,
                world, s->rank, s->world);
        return NULL;
    }
    Mpi *mp = xcalloc(1, sizeof(Mpi));
    mp->comm = MPI_COMM_WORLD;
    mp->counts = xcalloc((size_t)world, sizeof(int));
    mp->displs = xcalloc((size_t)world, sizeof(int));
    for (int k = 0; k < 3; k++) mp->elem[k] = MPI_DATATYPE_NULL;
    mp->wd = watchdog_start(rank, s->timeout_s, NULL, mpi_abort, NULL);
    Comm *c = xcalloc(1, sizeof(Comm));
    *c = (Comm){.name = "mpi", .rank = rank, .world = world, .timeout_s = s->timeout_s,
                .all_reduce_sum = mpi_all_reduce, .reduce_scatter_sum = mpi_reduce_scatter,
                .all_gather = mpi_all_gather, .broadcast = mpi_broadcast, .barrier = mpi_barrier,
                .host_all_gather = mpi_host_all_gather, .start_after_compute = mpi_order,
                .compute_after_comm = mpi_order, .take_exposed_s = mpi_take_exposed, .free = mpi_free, .impl = mp};
    return c;
}

/* A group of the job's ranks (comm_group_create): MPI_Comm_split with the group as the colour and the
 * rank in it as the key; every rank of the job calls it. */
Comm *comm_mpi_split(Comm *parent, int group, int grank)
{
    MPI_Comm sub;
    int e = MPI_Comm_split(((Mpi *)parent->impl)->comm, group, grank, &sub);
    if (e != MPI_SUCCESS) return mpi_fail(parent, "split", e), NULL;
    int rank, world;
    MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN);
    MPI_Comm_rank(sub, &rank);
    MPI_Comm_size(sub, &world);
    Mpi *mp = xcalloc(1, sizeof(Mpi));
    mp->comm = sub;
    mp->counts = xcalloc((size_t)world, sizeof(int));
    mp->displs = xcalloc((size_t)world, sizeof(int));
    for (int k = 0; k < 3; k++) mp->elem[k] = MPI_DATATYPE_NULL;
    mp->wd = watchdog_start(parent->rank, parent->timeout_s, NULL, mpi_abort, NULL); /* messages name the job's rank */
    Comm *c = xcalloc(1, sizeof(Comm));
    *c = *parent;
    c->rank = rank;
    c->world = world;
    c->busy_s = 0;
    c->impl = mp;
    return c;
}

#else /* built without MPI */

Comm *comm_mpi_split(Comm *parent, int group, int grank)
{
    comm_mpi_init(NULL, NULL);
    return NULL;
}

int comm_have_mpi(void) { return 0; }
int comm_mpi_init(int *rank, int *world) { return err_set("this anvil was built without MPI (install libopenmpi-dev and rebuild)"); }
int comm_mpi_bcast_bytes(void *buf, size_t n, int root) { return comm_mpi_init(NULL, NULL); }
void comm_mpi_finalize(void) {}
Comm *comm_mpi_create(const CommSetup *s)
{
    comm_mpi_init(NULL, NULL);
    return NULL;
}

#endif
