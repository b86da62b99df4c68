/* dist.h - data parallel training over a Comm: who this rank is, which shard of the trainable
 * segment it owns (ZeRO), and the gradient and weight collectives of one optimizer step.
 *
 * Data parallel (dist.zero 0): every rank keeps the whole state, runs its own micro-batches, and
 * after the LAST micro-step of an accumulation the gradient of the trainable segment is summed
 * over the ranks (each rank's loss gradient is already scaled by 1 / the scored targets of the
 * whole global step), in buckets of dist.bucket_mb, last layer first, on the comm stream; every
 * rank then makes the same update.
 * ZeRO-1: the optimizer state (the fp32 master and the moments) exists only for this rank's shard
 * (params_shard); gradients are reduce-scattered in place in the whole gradient buffer (each rank
 * needs its shard's sum only), each rank updates its shard, and the updated compute weights are
 * all-gathered; the gradient norm is the square root of the sum over the ranks of the shards' sums
 * of squares. ZeRO-2: the gradient buffer itself is only the shard (plus staging buffers that the
 * backward writes layer by layer, reduce-scattered on every micro-step). ZeRO-3: the compute
 * weights too are only the shard; each layer is all-gathered into a layer buffer before use. The
 * model's hooks (dist_attach) drive all of it layer by layer; checkpoints gather the fp32 master
 * for their moment (dist_params_whole).
 */
#ifndef ANVIL_DIST_DIST_H
#define ANVIL_DIST_DIST_H

#include <stddef.h>

#include "dist/comm.h"
#include "dist/env.h"
#include "model/params.h"

struct ModelHooks;

/* dist.* keys (train_config.h) the layer needs. */
typedef struct {
    int zero;          /* 0, 1, 2, 3 */
    int tp;            /* dist.tp: tensor-parallel ranks per data-parallel replica (0 or 1: none) */
    double timeout_s;  /* dist.timeout_s */
    double bucket_mb;  /* dist.bucket_mb: MiB of fp32 gradient per bucket */
    const char *comm;  /* dist.comm: auto, tcp, mpi, nccl */
    const char *device;/* the run's device: cpu, cuda, cuda-fp32 */
} DistOptions;

typedef struct {
    DistEnv env;
    DistOptions opt;
    /* The data-parallel group: comm, rank and world below are those of the data-parallel replicas
     * (everything of data parallel and ZeRO runs over it). Tensor parallel (dist.tp P > 1): the job's
     * G ranks form G / P replicas of P adjacent ranks (Megatron's layout: job rank g is tp rank g % P
     * of replica g / P); comm then joins the ranks of one tp rank across the replicas, tp_comm the P
     * ranks of this replica, world_comm the whole job. With P = 1 comm is the job's comm, rank and
     * world the job's, tp_comm and world_comm NULL. */
    Comm *comm;
    int rank, world;
    int tp, tp_rank;     /* P, and this rank's place in its replica */
    int grank, gworld;   /* the job's rank and size */
    Comm *tp_comm, *world_comm;
    size_t act_size;     /* the backend's activation bytes (dist_tp_model: bf16 or fp32 sums) */
    int active;          /* a launcher started this rank: the collectives run (also for world 1) */
    int pid0;            /* rank 0's process id (names the checkpoint's temporary directory) */
    /* the trainable segment: every rank's shard [lo[r], hi[r]) (ZeRO), this rank's in my_lo/my_hi
     * (the whole segment for dist.zero 0) */
    size_t n_train, *lo, *hi, my_lo, my_hi;
    size_t (*bucket)[2]; /* [begin, end) of each bucket, last layer first */
    int nbuckets;
    size_t *counts;      /* world, scratch */

    /* The store the hooks work on (dist_attach) and the hooks (model.h ModelHooks). */
    ParamStore *ps;
    struct ModelHooks *hooks;
    int last_micro;      /* the current micro-step is its step's last (ZeRO 0/1 reduce only then) */
    /* train.optimizer: ternary, the tensors updated after the backward (not fused): [tseg[g][0],
     * tseg[g][1]) of the ternary gradient segment (ParamStore.tgrad) holds group g's, summed over the
     * ranks when the backward finishes the group on the last micro-step (tseg_done[g]) */
    size_t (*tseg)[2];
    int *tseg_done, ngroups;
    int next_bucket;     /* ZeRO 0/1: the buckets queued so far in this step's reduction */
    int hook_rc;         /* -1 when a hook's collective failed; its message in hook_err */
    char *hook_err;
    /* ZeRO-2/3: gradient staging (slot 0 for group 0, slots 1 and 2 for the others, in turn);
     * ZeRO-3: gathered layers (the same three slots). Each slot holds one group or none (-1). */
    float *gslot[3];
    int gslot_group[3], gslot_pending[3];
    long gslot_mark[3];
    /* set 0 the trainable compute copy, set 1 the frozen one (ZeRO-3 shards dense frozen tensors
     * too: flo/fhi every rank's part of the frozen segment, my_flo/my_fhi this rank's), set 2 the
     * 4-bit tensors' bytes (params_q4_layout: qseg where each group lies, qlo/qhi the ranks' parts) */
    void *wslot[3][3];
    int wslot_group[3][3], wslot_queued[3][3];
    long wslot_mark[3][3];
    size_t *flo, *fhi, my_flo, my_fhi;
    int frozen_sharded;
    size_t *qseg, *qlo, *qhi, my_qlo, my_qhi;
    int q4_sharded;
    size_t slot_bytes;   /* backend bytes of the slots above */
    /* dist_params_whole: the whole fp32 master (and frozen copy) while a checkpoint is read or written */
    float *whole, *saved_master;
    size_t saved_lo, saved_n;
    int saved_alias;
    void *whole_frozen, *saved_frozen;
    size_t saved_flo, saved_fn;
    void *whole_q4; /* every group's 4-bit bytes (params_q4_point(-1)) */
} Dist;

/* Read the environment (env.h) and, for CUDA ranks, make device 0 this rank's GPU
 * (CUDA_VISIBLE_DEVICES), before the backend starts. -1 with err_set(). */
int dist_init_env(Dist *d, const DistOptions *o);
/* Connect the ranks (the comm the device and launcher call for; none for a plain single process).
 * After the backend exists. -1 with err_set() naming the rank. */
int dist_connect(Dist *d);
/* Shards and buckets for the model's trainable segment. */
void dist_setup_params(Dist *d, const ParamTable *pt);
/* What this rank's store of a model with table pt holds from the start (dist_attach keeps the same
 * parts): after dist_setup_params of that table; nothing sharded for dist.zero 0 or one process. */
void dist_alloc_plan(const Dist *d, const ParamTable *pt, ParamAllocPlan *plan);
void dist_free(Dist *d);
/* 1 when the collectives run: the rank was started by a launcher (anvil launch, mpirun, srun),
 * also with one rank, so that `anvil launch --nproc 1` runs the distributed code path. */
static inline int dist_active(const Dist *d) { return d && d->active; }

/* Shard the store as the stage keeps it (after the optimizer exists; docs/distributed.md "What each
 * ZeRO stage keeps per GPU"): ZeRO >= 1 the fp32 master, ZeRO >= 2 the gradient (plus staging
 * buffers of one group and two layers), ZeRO-3 the compute copy (plus buffers of the gathered
 * embeddings and two layers). Returns the hooks to set as the model's (Model.hooks): they queue each
 * group's gradient reduction as backward finishes it, and ZeRO-3's per-layer all-gathers. */
struct ModelHooks *dist_attach(Dist *d, ParamStore *ps);
/* Free the buffers of dist_attach and the store's views into them (before the model is freed). */
void dist_detach(Dist *d);
/* Before micro-step k of a step of accum: ZeRO 0/1 reduce during the last one's backward only. */
void dist_micro_begin(Dist *d, int k, int accum);
/* After a micro-step's backward: ZeRO-2/3 wait for its gradient buckets and add them into this
 * rank's shard. -1 with err_set() when a collective of the hooks failed. */
int dist_micro_end(Dist *d);
/* The gradient collective after the last micro-step (see above): what the hooks have not queued
 * yet, then the compute waits for the communication. */
int dist_reduce_grads(Dist *d, ParamStore *ps);
/* ZeRO 1/2: every rank's updated shard of the compute weights to every rank (ZeRO-3 keeps them
 * sharded). */
int dist_gather_weights(Dist *d, ParamStore *ps);
/* ZeRO >= 1: make the store whole for reading or writing every tensor (params_download /
 * params_upload: a checkpoint, a resume): the fp32 master all-gathered into a temporary buffer
 * (nothing when the store already serves every tensor). dist_params_reshard() keeps this rank's
 * shard of it (with any values uploaded meanwhile) and frees the buffer. */
int dist_params_whole(Dist *d, ParamStore *ps);
void dist_params_reshard(Dist *d, ParamStore *ps);
/* Backend bytes of the staging and layer buffers (ZeRO-2/3). */
size_t dist_slot_bytes(const Dist *d);
/* x[i] = the sum over the ranks of x[i] (n host doubles), added in rank order, so that every rank
 * gets the same bits. */
int dist_sum_f64(Dist *d, double *x, int n);
/* all (world * n host doubles) = every rank's x, in rank order. */
int dist_gather_f64(Dist *d, const double *x, double *all, int n);
/* Seconds the compute waited for communication since the last call (Comm.take_exposed_s). */
double dist_take_exposed(Dist *d);

/* The job's rank 0 (writes checkpoints and metrics). */
static inline int dist_main(const Dist *d) { return d->grank == 0; }
/* As dist_gather_f64 over the whole job (gworld parts; every replica's every rank). */
int dist_world_gather_f64(Dist *d, const double *x, double *all, int n);

struct ModelTp;
/* Tensor parallel: this rank's group for a model of config full (model/tp.h): rank, size, the
 * vocabulary slice and the collectives over tp_comm (sums in the act dtype of act_size bytes).
 * -1 with err_set() when the config cannot be split (tp_config_local). */
int dist_tp_model(Dist *d, const ModelConfig *full, size_t act_size, struct ModelTp *tp);
/* The squared gradient norm of the whole model under tensor parallel, after the reduction: the split
 * tensors' sums of squares added over the tp group, the whole (replicated) tensors' once (ZeRO: over
 * the shards of the data-parallel group first). */
int dist_tp_grad_sumsq(Dist *d, const ParamStore *ps, double *sumsq);
/* all (P * bytes, host) = every tp rank's mine (host), in tp rank order. */
int dist_tp_gather(Dist *d, const void *mine, void *all, size_t bytes);

#endif
