/* optim.c - AdamW over the trainable segment (optim.h). */
#include "train/optim.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

void optim_init(Optimizer *o, const Model *m, float weight_decay)
{
    optim_init_range(o, m, weight_decay, 0, m->pt.n_train);
}

void optim_init_range(Optimizer *o, const Model *m, float weight_decay, size_t lo, size_t hi)
{
    optim_init_host(o, m, weight_decay, lo, hi, 0);
}

void optim_init_host(Optimizer *o, const Model *m, float weight_decay, size_t lo, size_t hi, int host)
{
    const ParamTable *pt = &m->pt;
    memset(o, 0, sizeof(*o));
    o->be = m->be;
    o->lo = lo;
    o->hi = hi;
    o->n = hi - lo;
    o->host = host && o->n;
    if (o->host && !m->be->alloc_host)
        fatal("train.offload_optimizer: the %s backend has no host memory for its operands", m->be->name);
    if (o->n) {
        o->m = o->host ? m->be->alloc_host(o->n * sizeof(float)) : m->be->alloc(o->n * sizeof(float));
        o->v = o->host ? m->be->alloc_host(o->n * sizeof(float)) : m->be->alloc(o->n * sizeof(float));
    }
    o->t = xcalloc((size_t)pt->n + 1, sizeof(OptTensor));
    o->param = xcalloc((size_t)pt->n + 1, sizeof(int));
    for (int i = 0; i < pt->n; i++) {
        const Param *p = &pt->p[i];
        if (p->kind != PARAM_TRAIN) continue;
        size_t a = MAX(p->seg, lo), e = MIN(p->seg + p->numel, hi);
        if (e <= a) continue; /* outside the owned part */
        o->param[o->nt] = i;
        o->t[o->nt++] = (OptTensor){a - lo, e - a, p->decay ? weight_decay : 0.0f, 1};
    }
}

void optim_free(Optimizer *o)
{
    if (o->m) (o->host ? o->be->free_host : o->be->free)(o->m);
    if (o->v) (o->host ? o->be->free_host : o->be->free)(o->v);
    free(o->t);
    free(o->param);
    free(o->tt);
    memset(o, 0, sizeof(*o));
}

void optim_set_ternary(Optimizer *o, const Model *m, const TernaryHyper *h)
{
    free(o->tt);
    o->tt = NULL;
    o->ntt = 0;
    o->th = *h;
    const ParamTable *pt = &m->pt;
    for (int i = 0; i < pt->n; i++) {
        if (pt->p[i].kind != PARAM_TERNARY || pt->p[i].fused) continue; /* fused: updated in the backward */
        if (!o->tt) o->tt = xcalloc((size_t)pt->n, sizeof(TernaryTensor));
        o->tt[o->ntt++] = m->ps.tern[i];
    }
}

void optim_step(Optimizer *o, Model *m, const AdamHyper *h)
{
    ParamStore *ps = &m->ps;
    if (o->nt) {
        /* the store may hold only a shard of each buffer (ZeRO, params_shard_store): offsets from its lo */
        if (o->lo < ps->master_lo || o->lo < ps->act_lo || o->lo < ps->grad_lo)
            fatal("optim_step: the store does not hold the optimizer's part (internal error)");
        m->be->adamw(ps->master + (o->lo - ps->master_lo), act_at(m->be, ps->train_act, o->lo - ps->act_lo),
                     ps->grad + (o->lo - ps->grad_lo), o->m, o->v, o->t, o->nt, h);
    }
    if (o->ntt && h->lr > 0) { /* a step at learning rate 0 (the auto-batch trial) moves nothing */
        TernaryHyper th = o->th;
        th.step = h->step;
        m->be->ternary_update(o->tt, o->ntt, &th);
    }
    m->ps.tern_live = 0;
}

void optim_begin_step(Optimizer *o, Model *m, int step, float lr)
{
    m->ps.tern_hyper = o->th;
    m->ps.tern_hyper.step = step;
    m->ps.tern_live = m->ps.n_fused > 0 && lr > 0;
}

size_t optim_bytes(const Optimizer *o) { return o->host ? 0 : 2 * o->n * sizeof(float); }
size_t optim_host_bytes(const Optimizer *o) { return o->host ? 2 * o->n * sizeof(float) : 0; }

void optim_download(const Optimizer *o, float *m_host, float *v_host)
{
    if (!o->n) return;
    o->be->download(m_host, o->m, o->n * sizeof(float));
    o->be->download(v_host, o->v, o->n * sizeof(float));
}

void optim_zero(Optimizer *o)
{
    if (!o->n) return;
    o->be->zero(o->m, o->n * sizeof(float));
    o->be->zero(o->v, o->n * sizeof(float));
}

void optim_upload(Optimizer *o, const float *m_host, const float *v_host)
{
    if (!o->n) return;
    o->be->upload(o->m, m_host, o->n * sizeof(float));
    o->be->upload(o->v, v_host, o->n * sizeof(float));
}
