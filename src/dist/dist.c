/* dist.c - data parallel and ZeRO-1/2 collectives of one optimizer step (dist.h). */
#include "dist/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "model/model.h"
#include "model/tp.h"

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
    d->grank = d->rank = d->env.rank;
    d->gworld = d->world = d->env.world;
    d->tp = o->tp > 1 ? o->tp : 1;
    if (o->zero < 0 || o->zero > 3)
        return err_set("dist.zero: %d is not available: 0 (data parallel), 1, 2 or 3", o->zero);
    if (d->tp > 1) { /* replicas of tp adjacent ranks (dist.h) */
        if (d->env.launcher == DIST_LAUNCH_NONE || d->gworld % d->tp)
            return err_set("dist.tp: %d needs a multiple of %d ranks (anvil launch --nproc %d, mpirun -np %d); this "
                           "job has %d", d->tp, d->tp, d->tp, d->tp, d->env.launcher == DIST_LAUNCH_NONE ? 1 : d->gworld);
        d->tp_rank = d->grank % d->tp;
        d->rank = d->grank / d->tp;
        d->world = d->gworld / d->tp;
    }
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
    CommSetup s = {.rank = d->grank, .world = d->gworld, .local_rank = d->env.local_rank,
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
    int pid = (int)getpid(), *all = xmalloc(sizeof(int) * (size_t)d->gworld);
    int rc = d->comm->host_all_gather(d->comm, &pid, all, sizeof(int));
    d->pid0 = all[0];
    free(all);
    if (rc || d->tp == 1) return rc;
    /* the tp group of this replica, then the data-parallel group of this tp rank (every rank makes
     * both, in this order) */
    CommSetup s = {.rank = d->grank, .world = d->gworld, .local_rank = d->env.local_rank,
                   .master_port = d->env.master_port, .mpi = d->env.launcher == DIST_LAUNCH_MPIRUN,
                   .timeout_s = d->opt.timeout_s};
    snprintf(s.master_addr, sizeof(s.master_addr), "%s", d->env.master_addr[0] ? d->env.master_addr : "127.0.0.1");
    d->world_comm = d->comm;
    d->comm = NULL;
    d->tp_comm = comm_group_create(d->world_comm, &s, d->rank, d->tp_rank, d->tp);
    if (d->tp_comm) d->comm = comm_group_create(d->world_comm, &s, d->tp_rank, d->rank, d->world);
    return d->comm ? 0 : err_prefix("dist.tp");
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
    /* the unfused integer-ternary tensors of each group: table order is group order in their segment too */
    free(d->tseg);
    free(d->tseg_done);
    d->ngroups = ng;
    d->tseg = xcalloc((size_t)ng, sizeof(*d->tseg));
    d->tseg_done = xcalloc((size_t)ng, sizeof(int));
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->kind != PARAM_TERNARY || p->fused) continue;
        size_t *t = d->tseg[params_group(pt, i)];
        t[0] = t[1] > t[0] ? MIN(t[0], p->seg) : p->seg;
        t[1] = MAX(t[1], p->seg + p->numel);
    }
}

void dist_detach(Dist *d)
{
    for (int k = 0; k < 3 && d->ps; k++) {
        if (d->gslot[k]) d->ps->be->free(d->gslot[k]);
        d->gslot[k] = NULL;
        for (int set = 0; set < 3; set++) {
            if (d->wslot[set][k]) d->ps->be->free(d->wslot[set][k]);
            d->wslot[set][k] = NULL;
        }
    }
    if (d->ps && d->q4_sharded) params_q4_point(d->ps, -1, NULL);
    if (d->ps) { /* the store no longer has views into the slots, nor the ternary hook */
        d->ps->tern_reduce = NULL;
        d->ps->tern_ctx = NULL;
        d->ps->tern_from_act = 0;
        free(d->ps->ggroup);
        free(d->ps->wgroup);
        free(d->ps->fgroup);
        d->ps->ggroup = NULL;
        d->ps->wgroup = NULL;
        d->ps->fgroup = NULL;
    }
    free(d->flo);
    free(d->fhi);
    d->flo = d->fhi = NULL;
    free(d->qseg);
    free(d->qlo);
    free(d->qhi);
    d->qseg = d->qlo = d->qhi = NULL;
    d->q4_sharded = d->frozen_sharded = 0;
    d->ps = NULL;
    d->slot_bytes = 0;
}

void dist_free(Dist *d)
{
    dist_detach(d);
    free(d->hooks);
    free(d->hook_err);
    if (d->comm) d->comm->free(d->comm);
    if (d->tp_comm) d->tp_comm->free(d->tp_comm);
    if (d->world_comm) d->world_comm->free(d->world_comm);
    free(d->lo);
    free(d->hi);
    free(d->counts);
    free(d->bucket);
    free(d->tseg);
    free(d->tseg_done);
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

/* ZeRO 0/1: queue the buckets (last layer first) that lie at or after segment offset from:
 * all-reduced (ZeRO-0) or reduce-scattered in place (ZeRO-1: the rest of the buffer is left
 * unreduced, and the gradient norm is taken over the shards). */
static int queue_buckets(Dist *d, size_t from)
{
    Comm *c = d->comm;
    ParamStore *ps = d->ps;
    int started = 0;
    for (; d->next_bucket < d->nbuckets && d->bucket[d->next_bucket][0] >= from; d->next_bucket++) {
        size_t a = d->bucket[d->next_bucket][0], e = d->bucket[d->next_bucket][1];
        if (!started) c->start_after_compute(c); /* after the backward that wrote them */
        started = 1;
        float *g = ps->grad + (a - ps->grad_lo);
        int rc;
        if (d->opt.zero == 1) { /* the optimizer reads this rank's shard only: half the bytes of an all-reduce */
            bucket_counts(d, a, e);
            rc = c->reduce_scatter_sum(c, g, d->counts, COMM_F32);
        } else {
            rc = c->all_reduce_sum(c, g, e - a, COMM_F32);
        }
        if (rc) return err_prefix("gradients");
    }
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
    if (!dist_active(d) || !d->opt.zero || d->opt.zero >= 3 || !d->n_train) return 0;
    return gather_segment(d, ps->train_act, ps->be->act_size, "weights");
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
    double s = d && d->comm ? d->comm->take_exposed_s(d->comm) : 0;
    if (d && d->tp_comm) s += d->tp_comm->take_exposed_s(d->tp_comm); /* tensor parallel's collectives */
    return s;
}

int dist_world_gather_f64(Dist *d, const double *x, double *all, int n)
{
    Comm *c = d->world_comm ? d->world_comm : d->comm;
    if (!dist_active(d) || !c) {
        memmove(all, x, sizeof(double) * (size_t)n);
        return 0;
    }
    return c->host_all_gather(c, x, all, sizeof(double) * (size_t)n);
}

/* ---- tensor parallel: the model's group (model/tp.h ModelTp) ---- */

static void tp_reduce(Dist *d, void *buf, size_t n, int f32)
{
    Comm *c = d->tp_comm;
    c->start_after_compute(c);
    if (c->all_reduce_sum(c, buf, n, d->act_size == 2 && !f32 ? COMM_BF16 : COMM_F32))
        fatal("rank %d: tensor parallel all_reduce (tp group of job ranks %d-%d): %s", d->grank, d->rank * d->tp,
              d->rank * d->tp + d->tp - 1, err_get());
    c->compute_after_comm(c);
}

static void tp_reduce_act(void *ctx, void *buf, size_t n) { tp_reduce(ctx, buf, n, 0); }
static void tp_reduce_f32(void *ctx, float *buf, size_t n) { tp_reduce(ctx, buf, n, 1); }

static void tp_gather_f32(void *ctx, float *buf, size_t n)
{
    Dist *d = ctx;
    Comm *c = d->tp_comm;
    size_t *counts = xmalloc(sizeof(size_t) * (size_t)d->tp);
    for (int k = 0; k < d->tp; k++) counts[k] = n;
    c->start_after_compute(c);
    if (c->all_gather(c, buf, counts, sizeof(float)))
        fatal("rank %d: tensor parallel all_gather (tp group of job ranks %d-%d): %s", d->grank, d->rank * d->tp,
              d->rank * d->tp + d->tp - 1, err_get());
    c->compute_after_comm(c);
    free(counts);
}

int dist_tp_model(Dist *d, const ModelConfig *full, size_t act_size, ModelTp *tp)
{
    memset(tp, 0, sizeof(*tp));
    ModelConfig local;
    if (tp_config_local(full, d->tp, d->tp_rank, &local)) return -1;
    tp->rank = d->tp_rank;
    tp->size = d->tp;
    tp_vocab_part(full->vocab_size, d->tp, d->tp_rank, &tp->v0, &tp->vn);
    tp->full = *full;
    tp->ctx = d;
    tp->all_reduce_act = tp_reduce_act;
    tp->all_reduce_f32 = tp_reduce_f32;
    tp->all_gather_f32 = tp_gather_f32;
    d->act_size = act_size;
    return 0;
}

int dist_tp_grad_sumsq(Dist *d, const ParamStore *ps, double *sumsq)
{
    const ParamTable *pt = ps->pt;
    double s[2] = {0, 0}; /* split, whole tensors: this rank's part of the segment (ZeRO: its shard) */
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->kind != PARAM_TRAIN) continue;
        size_t a = MAX(p->seg, d->my_lo), e = MIN(p->seg + p->numel, d->my_hi);
        if (e <= a) continue;
        s[tp_param_split(p) ? 0 : 1] += ps->be->sumsq(ps->grad + (a - ps->grad_lo), e - a);
    }
    if (d->opt.zero && dist_sum_f64(d, s, 2)) return -1; /* ZeRO: the shards of the data-parallel group */
    double *all = xmalloc(sizeof(s) * (size_t)d->tp);
    int rc = dist_tp_gather(d, s, all, sizeof(s));
    double t = all[1]; /* the whole tensors: tp rank 0's sum (the same bits on every rank) */
    for (int k = 0; k < d->tp; k++) t += all[2 * k]; /* the slices, in rank order */
    free(all);
    *sumsq = t;
    return rc;
}

int dist_tp_gather(Dist *d, const void *mine, void *all, size_t bytes)
{
    if (!d->tp_comm) {
        memmove(all, mine, bytes);
        return 0;
    }
    return d->tp_comm->host_all_gather(d->tp_comm, mine, all, bytes);
}

/* ---- phase 2: the hooks (model.h ModelHooks), sharded stores ---- */

static size_t group_lo(const Dist *d, int g) { return d->ps->pt->layer_seg[g]; }
static size_t group_hi(const Dist *d, int g) { return d->ps->pt->layer_seg[g + 1]; }

/* [*a, *e) = this rank's shard within group g; 0 when empty. */
static int my_part(const Dist *d, int g, size_t *a, size_t *e)
{
    *a = MAX(group_lo(d, g), d->my_lo);
    *e = MIN(group_hi(d, g), d->my_hi);
    return *e > *a;
}

/* A hook's collective failed: keep the first message; the step reports it (dist_micro_end). */
static void hook_fail(Dist *d, const char *what)
{
    if (d->hook_rc) return;
    d->hook_rc = -1;
    err_prefix("%s", what);
    free(d->hook_err);
    d->hook_err = xstrdup(err_get());
}

static long comm_mark(Comm *c) { return c->mark ? c->mark(c) : 0; }
static void compute_after_mark(Comm *c, long mark)
{
    if (c->compute_after_mark) c->compute_after_mark(c, mark);
}

/* Elements per collective: dist.bucket_mb of fp32. */
static size_t bucket_cap(const Dist *d)
{
    size_t cap = (size_t)(d->opt.bucket_mb * (1 << 20) / sizeof(float));
    return cap < PARAM_ALIGN ? PARAM_ALIGN : cap;
}

/* buf (n fp32 values) = its sum over the ranks, in collectives of dist.bucket_mb, on the comm stream. */
static int all_reduce_f32(Dist *d, float *buf, size_t n)
{
    Comm *c = d->comm;
    size_t cap = bucket_cap(d);
    for (size_t a = 0; a < n; a += cap)
        if (c->all_reduce_sum(c, buf + a, MIN(n - a, cap), COMM_F32)) return -1;
    return 0;
}

/* The unfused integer-ternary gradients of group g (dist.h tseg), once per step: summed over the ranks. */
static int queue_tern_group(Dist *d, int g)
{
    ParamStore *ps = d->ps;
    size_t a = d->tseg[g][0], e = d->tseg[g][1];
    if (d->tseg_done[g] || e == a || !ps->tgrad) return 0;
    d->tseg_done[g] = 1;
    d->comm->start_after_compute(d->comm); /* after the backward that wrote them */
    return all_reduce_f32(d, ps->tgrad + a, e - a);
}

/* ParamStore.tern_reduce: a fused integer-ternary tensor's (or row chunk's) gradient, complete on this
 * rank, summed over the ranks before its update; the compute stream waits for it (the update reads it). */
static int hook_tern_reduce(void *ctx, float *grad, size_t n)
{
    Dist *d = ctx;
    Comm *c = d->comm;
    if (d->hook_rc) return -1;
    c->start_after_compute(c);
    if (all_reduce_f32(d, grad, n)) {
        hook_fail(d, "ternary gradients");
        return -1;
    }
    c->compute_after_comm(c);
    return 0;
}

int dist_reduce_grads(Dist *d, ParamStore *ps)
{
    if (!dist_active(d)) return 0;
    d->ps = ps;
    int tern = ps->tgrad && ps->pt->n_tern;
    if (!d->n_train && !tern) return 0;
    if (d->n_train && d->opt.zero <= 1 && queue_buckets(d, 0)) return -1;
    for (int g = d->ngroups - 1; tern && g >= 0; g--) /* what the hooks have not reduced */
        if (queue_tern_group(d, g)) return err_prefix("ternary gradients");
    d->comm->compute_after_comm(d->comm);
    d->next_bucket = 0;
    return 0;
}

/* ZeRO-2/3: slot k's gradients (group g) are reduced: wait for them and keep this rank's part. */
static void gslot_finish(Dist *d, int k)
{
    ParamStore *ps = d->ps;
    int g = d->gslot_group[k];
    size_t a, e;
    if (g < 0) return;
    if (d->gslot_pending[k]) {
        compute_after_mark(d->comm, d->gslot_mark[k]);
        if (my_part(d, g, &a, &e))
            ps->be->copy(ps->grad + (a - ps->grad_lo), d->gslot[k] + (a - group_lo(d, g)), (e - a) * sizeof(float));
    }
    ps->ggroup[g] = NULL;
    d->gslot_group[k] = -1;
    d->gslot_pending[k] = 0;
}

static void hook_grads_begin(void *ctx, int g)
{
    Dist *d = ctx;
    ParamStore *ps = d->ps;
    if (d->opt.zero < 2 || group_hi(d, g) == group_lo(d, g) || ps->ggroup[g]) return;
    int k = 0;
    if (g != 0) { /* slots 1 and 2 in turn: a free one, else the one reduced longest ago */
        k = d->gslot_group[1] < 0 ? 1 : d->gslot_group[2] < 0 ? 2 : d->gslot_mark[1] <= d->gslot_mark[2] ? 1 : 2;
        if (!d->gslot_pending[k] && d->gslot_group[k] >= 0)
            fatal("dist: gradient staging: groups %d and %d at once (internal error)", d->gslot_group[k], g);
        gslot_finish(d, k);
    }
    size_t n = group_hi(d, g) - group_lo(d, g), a, e;
    /* the backward adds into the slot: zero, with this rank's part holding what the shard has
     * accumulated so far (the reduction then gives the shard its sum plus every rank's new part) */
    ps->be->zero(d->gslot[k], n * sizeof(float));
    if (my_part(d, g, &a, &e))
        ps->be->copy(d->gslot[k] + (a - group_lo(d, g)), ps->grad + (a - ps->grad_lo), (e - a) * sizeof(float));
    d->gslot_group[k] = g;
    ps->ggroup[g] = d->gslot[k];
}

static void hook_grads_ready(void *ctx, int g)
{
    Dist *d = ctx;
    Comm *c = d->comm;
    if (d->opt.zero < 2) { /* whole gradients: the buckets this group completes, on the last micro-step */
        if (d->last_micro && !d->hook_rc && queue_buckets(d, group_lo(d, g))) hook_fail(d, "gradients");
        if (d->last_micro && !d->hook_rc && queue_tern_group(d, g)) hook_fail(d, "ternary gradients");
        return;
    }
    int k = g == 0 ? 0 : d->gslot_group[1] == g ? 1 : d->gslot_group[2] == g ? 2 : -1;
    if (k < 0 || d->gslot_group[k] != g) return; /* no trainable tensor in it */
    size_t lo = group_lo(d, g), hi = group_hi(d, g), cap = bucket_cap(d);
    c->start_after_compute(c);
    for (size_t a = lo; a < hi && !d->hook_rc; a += cap) {
        size_t e = MIN(hi, a + cap);
        bucket_counts(d, a, e);
        if (c->reduce_scatter_sum(c, d->gslot[k] + (a - lo), d->counts, COMM_F32)) hook_fail(d, "gradients");
    }
    d->gslot_mark[k] = comm_mark(c);
    d->gslot_pending[k] = 1;
    d->ps->ggroup[g] = NULL; /* nothing writes it again in this backward */
}

/* ZeRO-3 weight sets: 0 the trainable compute copy (groups of layer_seg, shards lo/hi), 1 the frozen
 * one (groups of the store's fseg, shards flo/fhi), 2 the 4-bit bytes (groups of qseg, shards qlo/qhi). */
static size_t wset_lo(const Dist *d, int set, int g)
{
    return set == 2 ? d->qseg[g] : set ? d->ps->fseg[g] : group_lo(d, g);
}
static size_t wset_hi(const Dist *d, int set, int g)
{
    return set == 2 ? d->qseg[g + 1] : set ? d->ps->fseg[g + 1] : group_hi(d, g);
}
/* Whether ZeRO-3 gathers the set in this run. */
static int wset_on(const Dist *d, int set) { return set == 0 || (set == 1 ? d->frozen_sharded : d->q4_sharded); }
/* Bytes of one element of the set. */
static size_t wset_elem(const Dist *d, int set) { return set == 2 ? 1 : d->ps->be->act_size; }

/* counts[r] = how much of [a, e) lies in rank r's part of the set. */
static void wset_counts(Dist *d, int set, size_t a, size_t e)
{
    if (!set) {
        bucket_counts(d, a, e);
        return;
    }
    const size_t *plo = set == 2 ? d->qlo : d->flo, *phi = set == 2 ? d->qhi : d->fhi;
    for (int r = 0; r < d->world; r++) {
        size_t lo = MAX(a, plo[r]), hi = MIN(e, phi[r]);
        d->counts[r] = hi > lo ? hi - lo : 0;
    }
}

/* ZeRO-3: the slot of the set holding group g's weights, or -1. */
static int wslot_of(const Dist *d, int set, int g)
{
    for (int k = 0; k < 3; k++)
        if (d->wslot_group[set][k] == g) return k;
    return -1;
}

/* Group g of the set is gathered in buf (NULL: no longer). */
static void wset_view(const Dist *d, int set, int g, void *buf)
{
    if (set == 2) params_q4_point(d->ps, g, buf);
    else (set ? d->ps->fgroup : d->ps->wgroup)[g] = buf;
}

/* ZeRO-3: queue the all-gather of group g's weights of the set into a free slot (nothing when it
 * is held already or no slot is free: a prefetch waits for the next call). */
static void queue_gather(Dist *d, int set, int g)
{
    ParamStore *ps = d->ps;
    const Backend *be = ps->be;
    Comm *c = d->comm;
    if (g < 0 || wset_hi(d, set, g) == wset_lo(d, set, g) || wslot_of(d, set, g) >= 0) return;
    int k = g == 0 ? 0 : d->wslot_group[set][1] < 0 ? 1 : d->wslot_group[set][2] < 0 ? 2 : -1;
    if (k < 0 || d->wslot_group[set][k] >= 0) return;
    char *slot = d->wslot[set][k];
    size_t el = wset_elem(d, set), lo = wset_lo(d, set, g), hi = wset_hi(d, set, g);
    size_t cap = bucket_cap(d) * (sizeof(float) / el); /* elements of the set in one bucket's bytes */
    size_t mlo = set == 2 ? d->my_qlo : set ? d->my_flo : d->my_lo, mhi = set == 2 ? d->my_qhi : set ? d->my_fhi : d->my_hi;
    size_t a = MAX(lo, mlo), e = MIN(hi, mhi);
    const char *src = set == 2 ? ps->q4_shard : set ? ps->frozen_act : ps->train_act;
    size_t src_lo = set == 2 ? ps->q4_lo : set ? ps->frozen_lo : ps->act_lo;
    if (e > a) be->copy(slot + (a - lo) * el, src + (a - src_lo) * el, (e - a) * el);
    c->start_after_compute(c);
    for (size_t x = lo; x < hi && !d->hook_rc; x += cap) {
        size_t y = MIN(hi, x + cap);
        wset_counts(d, set, x, y);
        if (c->all_gather(c, slot + (x - lo) * el, d->counts, el)) hook_fail(d, "weights");
    }
    d->wslot_mark[set][k] = comm_mark(c);
    d->wslot_group[set][k] = g;
    d->wslot_queued[set][k] = 1;
}

static void hook_weights_need(void *ctx, int g, int next)
{
    Dist *d = ctx;
    if (d->opt.zero < 3) return;
    for (int set = 0; set < 3; set++) {
        if (!wset_on(d, set)) continue;
        if (wset_hi(d, set, g) > wset_lo(d, set, g)) {
            queue_gather(d, set, g);
            int k = wslot_of(d, set, g);
            if (k < 0) fatal("dist: ZeRO-3: no layer buffer free for group %d (internal error)", g);
            if (d->wslot_queued[set][k]) compute_after_mark(d->comm, d->wslot_mark[set][k]);
            d->wslot_queued[set][k] = 0;
            wset_view(d, set, g, d->wslot[set][k]);
        }
        queue_gather(d, set, next); /* the next layer's gather runs while this one computes */
    }
}

static void hook_weights_done(void *ctx, int g)
{
    Dist *d = ctx;
    if (d->opt.zero < 3) return;
    for (int set = 0; set < 3; set++) {
        int k = wset_on(d, set) ? wslot_of(d, set, g) : -1;
        if (k < 0) continue;
        if (d->wslot_queued[set][k]) compute_after_mark(d->comm, d->wslot_mark[set][k]); /* an unused prefetch */
        d->wslot_group[set][k] = -1;
        d->wslot_queued[set][k] = 0;
        wset_view(d, set, g, NULL);
    }
}

/* Equal parts of the frozen segment, as params_shard cuts the trainable one. */
static void frozen_shard(const ParamTable *pt, int rank, int world, size_t *lo, size_t *hi)
{
    size_t per = (pt->n_frozen + (size_t)world - 1) / (size_t)world;
    per = (per + PARAM_ALIGN - 1) / PARAM_ALIGN * PARAM_ALIGN;
    *lo = MIN(pt->n_frozen, per * (size_t)rank);
    *hi = MIN(pt->n_frozen, *lo + per);
}

void dist_alloc_plan(const Dist *d, const ParamTable *pt, ParamAllocPlan *plan)
{
    int z = dist_active(d) ? d->opt.zero : 0;
    memset(plan, 0, sizeof(*plan));
    if (z >= 1 && pt->n_train) {
        plan->lo = d->my_lo;
        plan->hi = d->my_hi;
        plan->what = PSHARD_MASTER | (z >= 2 ? PSHARD_GRAD : 0) | (z >= 3 ? PSHARD_ACT : 0);
    }
    if (z >= 3 && pt->n_frozen) {
        plan->frozen_part = 1;
        frozen_shard(pt, d->rank, d->world, &plan->flo, &plan->fhi);
    }
}

/* ZeRO-3 of the frozen dense tensors: this rank's part of the frozen segment, and layer buffers. */
static void shard_frozen(Dist *d, ParamStore *ps)
{
    const ParamTable *pt = ps->pt;
    const Backend *be = ps->be;
    int G = pt->n_layer + 2;
    d->flo = xcalloc((size_t)d->world, sizeof(size_t));
    d->fhi = xcalloc((size_t)d->world, sizeof(size_t));
    for (int r = 0; r < d->world; r++) frozen_shard(pt, r, d->world, &d->flo[r], &d->fhi[r]);
    d->my_flo = d->flo[d->rank];
    d->my_fhi = d->fhi[d->rank];
    ps->fseg = xcalloc((size_t)G + 1, sizeof(size_t));
    params_frozen_groups(pt, ps->fseg);
    params_shard_frozen(ps, d->my_flo, d->my_fhi);
    ps->fgroup = xcalloc((size_t)G, sizeof(void *));
    size_t g0 = ps->fseg[1] - ps->fseg[0], gmax = 0;
    for (int g = 1; g < G; g++) gmax = MAX(gmax, ps->fseg[g + 1] - ps->fseg[g]);
    size_t size[3] = {g0, gmax, gmax};
    for (int k = 0; k < 3; k++)
        if (size[k]) d->wslot[1][k] = be->alloc(size[k] * be->act_size), d->slot_bytes += size[k] * be->act_size;
    d->frozen_sharded = 1;
}

/* Equal parts of n bytes, each starting at a 16-byte boundary (the 4-bit segment). */
static void bytes_shard(size_t n, int rank, int world, size_t *lo, size_t *hi)
{
    size_t per = (n + (size_t)world - 1) / (size_t)world;
    per = (per + 15) / 16 * 16;
    *lo = MIN(n, per * (size_t)rank);
    *hi = MIN(n, *lo + per);
}

/* ZeRO-3 of the 4-bit tensors (a QLoRA base): this rank's part of their bytes, and layer buffers. */
static void shard_q4(Dist *d, ParamStore *ps)
{
    const Backend *be = ps->be;
    int G = ps->pt->n_layer + 2;
    d->qseg = xcalloc((size_t)G + 1, sizeof(size_t));
    size_t n = params_q4_layout(ps, d->qseg);
    if (!n) return;
    d->qlo = xcalloc((size_t)d->world, sizeof(size_t));
    d->qhi = xcalloc((size_t)d->world, sizeof(size_t));
    for (int r = 0; r < d->world; r++) bytes_shard(n, r, d->world, &d->qlo[r], &d->qhi[r]);
    d->my_qlo = d->qlo[d->rank];
    d->my_qhi = d->qhi[d->rank];
    params_shard_q4(ps, d->my_qlo, d->my_qhi);
    size_t g0 = d->qseg[1] - d->qseg[0], gmax = 0;
    for (int g = 1; g < G; g++) gmax = MAX(gmax, d->qseg[g + 1] - d->qseg[g]);
    size_t size[3] = {g0, gmax, gmax};
    for (int k = 0; k < 3; k++)
        if (size[k]) d->wslot[2][k] = be->alloc(size[k]), d->slot_bytes += size[k];
    d->q4_sharded = 1;
}

struct ModelHooks *dist_attach(Dist *d, ParamStore *ps)
{
    const ParamTable *pt = ps->pt;
    const Backend *be = ps->be;
    int G = pt->n_layer + 2, z = d->opt.zero;
    d->ps = ps;
    for (int k = 0; k < 3; k++) d->gslot_group[k] = d->wslot_group[0][k] = d->wslot_group[1][k] = d->wslot_group[2][k] = -1;
    if (z >= 1 && pt->n_train) {
        int what = PSHARD_MASTER | (z >= 2 ? PSHARD_GRAD : 0) | (z >= 3 ? PSHARD_ACT : 0);
        params_shard_store(ps, d->my_lo, d->my_hi, what);
        size_t g0 = pt->layer_seg[1] - pt->layer_seg[0], gmax = 0;
        for (int g = 1; g < G; g++) gmax = MAX(gmax, pt->layer_seg[g + 1] - pt->layer_seg[g]);
        size_t size[3] = {g0, gmax, gmax};
        if (z >= 2) {
            ps->ggroup = xcalloc((size_t)G, sizeof(float *));
            for (int k = 0; k < 3; k++)
                if (size[k]) d->gslot[k] = be->alloc(size[k] * sizeof(float)), d->slot_bytes += size[k] * sizeof(float);
        }
        if (z >= 3) {
            ps->wgroup = xcalloc((size_t)G, sizeof(void *));
            for (int k = 0; k < 3; k++)
                if (size[k]) d->wslot[0][k] = be->alloc(size[k] * be->act_size), d->slot_bytes += size[k] * be->act_size;
        }
    }
    if (z >= 3 && pt->n_frozen) shard_frozen(d, ps);
    if (z >= 3 && ps->q4) shard_q4(d, ps);
    ps->tern_from_act = z >= 1; /* BitLinear: the master is sharded, the compute copy whole or gathered */
    if (ps->n_fused) { /* fused integer-ternary tensors: each one's gradient summed just before its update */
        ps->tern_reduce = hook_tern_reduce;
        ps->tern_ctx = d;
    }
    ModelHooks *h = xcalloc(1, sizeof(*h));
    *h = (ModelHooks){.ctx = d, .grads_ready = hook_grads_ready};
    if (z >= 2) h->grads_begin = hook_grads_begin;
    if (z >= 3) h->weights_need = hook_weights_need, h->weights_done = hook_weights_done;
    d->hooks = h;
    return h;
}

void dist_micro_begin(Dist *d, int k, int accum)
{
    if (!dist_active(d)) return;
    d->last_micro = k == accum - 1;
    if (k == 0) d->next_bucket = 0;
    for (int g = 0; k == 0 && g < d->ngroups; g++) d->tseg_done[g] = 0;
}

int dist_micro_end(Dist *d)
{
    if (!dist_active(d)) return 0;
    for (int k = 0; k < 3 && d->ps && d->opt.zero >= 2; k++) gslot_finish(d, k);
    if (d->hook_rc) {
        d->hook_rc = 0;
        return err_set("%s", d->hook_err ? d->hook_err : "a collective failed");
    }
    return 0;
}

/* The frozen copy whole (ZeRO-3 shards it), for dist_params_whole. */
static int frozen_whole(Dist *d, ParamStore *ps)
{
    const Backend *be = ps->be;
    size_t n = ps->pt->n_frozen, cap = bucket_cap(d);
    if (!d->frozen_sharded || d->whole_frozen || ps->frozen_n == n) return 0;
    d->whole_frozen = be->alloc(n * be->act_size);
    be->copy(act_at(be, d->whole_frozen, ps->frozen_lo), ps->frozen_act, ps->frozen_n * be->act_size);
    d->saved_frozen = ps->frozen_act;
    d->saved_flo = ps->frozen_lo;
    d->saved_fn = ps->frozen_n;
    ps->frozen_act = d->whole_frozen;
    ps->frozen_lo = 0;
    ps->frozen_n = n;
    Comm *c = d->comm;
    c->start_after_compute(c);
    for (size_t x = 0; x < n; x += cap) {
        size_t y = MIN(n, x + cap);
        wset_counts(d, 1, x, y);
        if (c->all_gather(c, act_at(be, d->whole_frozen, x), d->counts, be->act_size)) return err_prefix("frozen weights");
    }
    c->compute_after_comm(c);
    return 0;
}

/* The 4-bit bytes whole (ZeRO-3 shards them), for dist_params_whole: every part points into them. */
static int q4_whole(Dist *d, ParamStore *ps)
{
    const Backend *be = ps->be;
    int G = ps->pt->n_layer + 2;
    size_t n = d->q4_sharded ? d->qseg[G] : 0, cap = bucket_cap(d) * sizeof(float);
    if (!n || d->whole_q4) return 0;
    char *w = d->whole_q4 = be->alloc(n);
    if (ps->q4_n) be->copy(w + ps->q4_lo, ps->q4_shard, ps->q4_n);
    Comm *c = d->comm;
    c->start_after_compute(c);
    for (size_t x = 0; x < n; x += cap) {
        size_t y = MIN(n, x + cap);
        wset_counts(d, 2, x, y);
        if (c->all_gather(c, w + x, d->counts, 1)) return err_prefix("4-bit weights");
    }
    c->compute_after_comm(c);
    params_q4_point(ps, -1, w);
    return 0;
}

int dist_params_whole(Dist *d, ParamStore *ps)
{
    size_t n = ps->pt->n_train;
    if (!dist_active(d) || !d->opt.zero) return 0;
    if (frozen_whole(d, ps) || q4_whole(d, ps)) return -1;
    if (!n || d->whole) return 0;
    if (ps->master_n == n || (ps->master_alias && ps->act_n == n)) return 0; /* it serves every tensor now */
    const Backend *be = ps->be;
    d->whole = be->alloc(n * sizeof(float));
    be->copy(d->whole + ps->master_lo, ps->master, ps->master_n * sizeof(float));
    d->saved_master = ps->master;
    d->saved_lo = ps->master_lo;
    d->saved_n = ps->master_n;
    d->saved_alias = ps->master_alias;
    ps->master = d->whole;
    ps->master_lo = 0;
    ps->master_n = n;
    ps->master_alias = 0;
    return gather_segment(d, d->whole, sizeof(float), "master weights");
}

void dist_params_reshard(Dist *d, ParamStore *ps)
{
    if (d->whole_q4) { /* packed again from wherever the parts point (a resume may have uploaded them anew) */
        params_shard_q4(ps, d->my_qlo, d->my_qhi);
        ps->be->free(d->whole_q4);
        d->whole_q4 = NULL;
    }
    if (d->whole_frozen) {
        const Backend *be = ps->be;
        be->copy(d->saved_frozen, act_at(be, d->whole_frozen, d->saved_flo), d->saved_fn * be->act_size);
        be->free(d->whole_frozen);
        ps->frozen_act = d->saved_frozen;
        ps->frozen_lo = d->saved_flo;
        ps->frozen_n = d->saved_fn;
        d->whole_frozen = NULL;
    }
    if (!d->whole) return;
    ps->be->copy(d->saved_master, d->whole + d->saved_lo, d->saved_n * sizeof(float));
    ps->be->free(d->whole);
    ps->master = d->saved_master;
    ps->master_lo = d->saved_lo;
    ps->master_n = d->saved_n;
    ps->master_alias = d->saved_alias;
    d->whole = NULL;
}

size_t dist_slot_bytes(const Dist *d) { return d ? d->slot_bytes : 0; }
