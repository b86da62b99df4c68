/* dist.c - data parallel and ZeRO-1/2 collectives of one optimizer step (dist.h). */
#include "dist/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"

static const char *env_get(const char *name) { return getenv(name); }

static int on_cuda(const DistOptions *o) { return !strncmp(o->device, "cuda", 4); }

/* Device 0 of the CUDA backend = this rank's GPU: entry local_rank of CUDA_VISIBLE_DEVICES (or GPU
 * local_rank when it is unset); a list of one entry is the launcher's choice (srun --gpus-per-task)
 * and is kept. */
static int select_gpu(const Dist *d)
{
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    char pick[64];
    int lr = d->env.local_rank;
    if (vis && *vis) {
        int n = 1;
        for (const char *s = vis; *s; s++) n += *s == ',';
        if (n == 1) return 0;
        if (lr >= n)
            return err_set("local rank %d but CUDA_VISIBLE_DEVICES lists %d GPUs (\"%s\")", lr, n, vis);
        const char *s = vis;
        for (int i = 0; i < lr; i++) s = strchr(s, ',') + 1;
        size_t len = strcspn(s, ",");
        snprintf(pick, sizeof(pick), "%.*s", (int)MIN(len, sizeof(pick) - 1), s);
    } else {
        snprintf(pick, sizeof(pick), "%d", lr);
    }
    setenv("CUDA_VISIBLE_DEVICES", pick, 1);
    return 0;
}

int dist_init_env(Dist *d, const DistOptions *o)
{
    memset(d, 0, sizeof(*d));
    d->opt = *o;
    if (dist_env_parse(&d->env, env_get)) return err_prefix("dist");
    d->rank = d->env.rank;
    d->world = d->env.world;
    if (o->zero < 0 || o->zero > 2)
        return err_set("dist.zero: %d is not available: 0 (data parallel), 1 or 2%s", o->zero,
                       o->zero == 3 ? " (ZeRO-3, sharded parameters, is not yet implemented: phase 2 of the distributed "
                                      "work, docs/distributed.md)"
                                    : "");
    if (d->env.launcher != DIST_LAUNCH_NONE && on_cuda(o) && select_gpu(d)) return -1;
    return 0;
}

static Comm *make_comm(Dist *d)
{
    const DistOptions *o = &d->opt;
    const char *want = o->comm && *o->comm ? o->comm : "auto";
    if (d->env.launcher == DIST_LAUNCH_NONE) {
        if (strcmp(want, "auto") && strcmp(want, "none"))
            err_set("dist.comm: %s needs a launcher (anvil launch, mpirun, srun); this is a single process", want);
        else
            return comm_none_create();
        return NULL;
    }
    int mpirun = d->env.launcher == DIST_LAUNCH_MPIRUN;
    if (!strcmp(want, "auto")) want = on_cuda(o) ? "nccl" : mpirun ? "mpi" : "tcp";
    CommSetup s = {.rank = d->rank, .world = d->world, .local_rank = d->env.local_rank,
                   .master_port = d->env.master_port, .mpi = mpirun, .timeout_s = o->timeout_s};
    snprintf(s.master_addr, sizeof(s.master_addr), "%s", d->env.master_addr[0] ? d->env.master_addr : "127.0.0.1");
    if (!strcmp(want, "nccl")) {
        if (!on_cuda(o)) return err_set("dist.comm: nccl needs device: cuda"), NULL;
        return comm_nccl_create(&s);
    }
    if (on_cuda(o)) return err_set("dist.comm: %s moves host memory; device %s needs nccl", want, o->device), NULL;
    if (!strcmp(want, "mpi")) {
        if (!mpirun) return err_set("dist.comm: mpi needs ranks started by mpirun (OMPI_COMM_WORLD_* unset)"), NULL;
        return comm_mpi_create(&s);
    }
    if (!strcmp(want, "tcp")) {
        if (mpirun && !d->env.master_port)
            return err_set("dist.comm: tcp under mpirun needs MASTER_ADDR and MASTER_PORT"), NULL;
        return comm_tcp_create(&s);
    }
    return err_set("dist.comm: expected auto, tcp, mpi or nccl, got \"%s\"", want), NULL;
}

int dist_connect(Dist *d)
{
    d->comm = make_comm(d);
    if (!d->comm) return -1;
    d->active = d->env.launcher != DIST_LAUNCH_NONE;
    int pid = (int)getpid(), *all = xmalloc(sizeof(int) * (size_t)d->world);
    int rc = d->comm->host_all_gather(d->comm, &pid, all, sizeof(int));
    d->pid0 = all[0];
    free(all);
    return rc;
}

void dist_setup_params(Dist *d, const ParamTable *pt)
{
    int w = d->world;
    free(d->lo);
    free(d->hi);
    free(d->counts);
    free(d->bucket);
    d->n_train = pt->n_train;
    d->lo = xcalloc((size_t)w, sizeof(size_t));
    d->hi = xcalloc((size_t)w, sizeof(size_t));
    d->counts = xcalloc((size_t)w, sizeof(size_t));
    for (int r = 0; r < w; r++) params_shard(pt, r, w, &d->lo[r], &d->hi[r]);
    d->my_lo = d->opt.zero ? d->lo[d->rank] : 0;
    d->my_hi = d->opt.zero ? d->hi[d->rank] : pt->n_train;
    /* buckets: the groups of layer_seg from the head back to the embeddings (the order backward
     * finishes them), merged up to the bucket size and cut where one group is larger */
    size_t cap = (size_t)(d->opt.bucket_mb * (1 << 20) / sizeof(float));
    if (cap < PARAM_ALIGN) cap = PARAM_ALIGN;
    int ng = pt->n_layer + 2, n = 0, max = ng + (int)(pt->n_train / cap) + 2;
    d->bucket = xcalloc((size_t)max, sizeof(*d->bucket));
    size_t end = pt->n_train, begin = end;
    for (int g = ng - 1; g >= 0; g--) {
        begin = pt->layer_seg[g];
        while (end - begin >= cap) { /* full buckets from the end of the pending range */
            d->bucket[n][0] = end - cap;
            d->bucket[n][1] = end;
            n++;
            end -= cap;
        }
        if (g == 0 && end > begin) {
            d->bucket[n][0] = begin;
            d->bucket[n][1] = end;
            n++;
        }
    }
    d->nbuckets = n;
}

void dist_free(Dist *d)
{
    if (d->comm) d->comm->free(d->comm);
    free(d->lo);
    free(d->hi);
    free(d->counts);
    free(d->bucket);
    memset(d, 0, sizeof(*d));
}

/* counts[r] = how much of [a, e) lies in rank r's shard. */
static void bucket_counts(Dist *d, size_t a, size_t e)
{
    for (int r = 0; r < d->world; r++) {
        size_t lo = MAX(a, d->lo[r]), hi = MIN(e, d->hi[r]);
        d->counts[r] = hi > lo ? hi - lo : 0;
    }
}

int dist_reduce_grads(Dist *d, ParamStore *ps)
{
    if (!dist_active(d) || !d->n_train) return 0;
    Comm *c = d->comm;
    c->start_after_compute(c);
    for (int b = 0; b < d->nbuckets; b++) {
        size_t a = d->bucket[b][0], e = d->bucket[b][1];
        int rc;
        if (d->opt.zero >= 2) {
            bucket_counts(d, a, e);
            rc = c->reduce_scatter_sum(c, ps->grad + a, d->counts, COMM_F32);
        } else {
            rc = c->all_reduce_sum(c, ps->grad + a, e - a, COMM_F32);
        }
        if (rc) return err_prefix("gradients");
    }
    c->compute_after_comm(c);
    return 0;
}

/* All-gather a segment-shaped buffer of elem-byte elements, bucket by bucket. */
static int gather_segment(Dist *d, void *base, size_t elem, const char *what)
{
    Comm *c = d->comm;
    c->start_after_compute(c);
    for (int b = 0; b < d->nbuckets; b++) {
        size_t a = d->bucket[b][0], e = d->bucket[b][1];
        bucket_counts(d, a, e);
        if (c->all_gather(c, (char *)base + a * elem, d->counts, elem)) return err_prefix("%s", what);
    }
    c->compute_after_comm(c);
    return 0;
}

int dist_gather_weights(Dist *d, ParamStore *ps)
{
    if (!dist_active(d) || !d->opt.zero || !d->n_train) return 0;
    return gather_segment(d, ps->train_act, ps->be->act_size, "weights");
}

int dist_gather_master(Dist *d, ParamStore *ps)
{
    if (!dist_active(d) || !d->opt.zero || !d->n_train || (void *)ps->master == ps->train_act) return 0;
    return gather_segment(d, ps->master, sizeof(float), "master weights");
}

int dist_gather_f64(Dist *d, const double *x, double *all, int n)
{
    if (!dist_active(d)) {
        memmove(all, x, sizeof(double) * (size_t)n);
        return 0;
    }
    return d->comm->host_all_gather(d->comm, x, all, sizeof(double) * (size_t)n);
}

int dist_sum_f64(Dist *d, double *x, int n)
{
    if (!dist_active(d)) return 0;
    double *all = xmalloc(sizeof(double) * (size_t)n * (size_t)d->world);
    int rc = dist_gather_f64(d, x, all, n);
    for (int i = 0; !rc && i < n; i++) {
        double s = 0;
        for (int r = 0; r < d->world; r++) s += all[(size_t)r * n + i];
        x[i] = s;
    }
    free(all);
    return rc;
}

double dist_take_exposed(Dist *d)
{
    return d && d->comm ? d->comm->take_exposed_s(d->comm) : 0;
}
