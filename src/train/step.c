/* step.c - one optimizer step (step.h). */
#include "train/step.h"

#include <math.h>

#include "core/error.h"

/* torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing. */
#define CLIP_EPS 1e-6

long step_count_scored(const StepBatch *b)
{
    long n = 0;
    size_t per = (size_t)b->B * b->T;
    for (int k = 0; k < b->accum; k++)
        for (size_t i = 0; i < per; i++) n += b->tg[k][i] >= 0;
    return n;
}

int train_step(Model *m, Optimizer *o, const StepBatch *b, const StepHyper *h, StepResult *r)
{
    return train_step_dist(m, o, NULL, b, h, r);
}

int train_step_dist(Model *m, Optimizer *o, Dist *d, const StepBatch *b, const StepHyper *h, StepResult *r)
{
    const Backend *be = m->be;
    int dp = dist_active(d);
    long local = step_count_scored(b), scored = local;
    if (dp) { /* the loss scale counts every rank's targets (exact in a double below 2^53) */
        double x = (double)local;
        if (dist_sum_f64(d, &x, 1)) return -1;
        scored = (long)x;
    }
    if (!scored) return err_set("no target of the step's %d micro-batches is scored", b->accum);
    if (m->ps.n_fused && b->accum > 1)
        return err_set("train.ternary.fused: the ternary tensors are updated inside each backward, so a step must be "
                       "one micro-batch (train.tokens_per_step = batch_size x seq_len), got %d", b->accum);
    model_zero_grad(m);
    optim_begin_step(o, m, h->step, h->lr);
    double loss_sum = 0;
    for (int k = 0; k < b->accum; k++) {
        /* a dropout stream per (seed, step, micro-step): a resumed run draws the same masks */
        m->dropout_seed = (h->seed * 0x9e3779b97f4a7c15ULL + (uint64_t)h->step) * 4096u + (uint64_t)k;
        if (dp) dist_micro_begin(d, k, b->accum);
        model_forward(m, b->in[k], b->tg[k], b->B, b->T, (float)(1.0 / (double)scored), NULL);
        loss_sum += m->loss_sum;
        model_backward(m);
        if (dp && dist_micro_end(d)) return -1;
    }
    /* the model's hooks (dist_attach) queued each group's reduction as backward finished it: ZeRO
     * 0/1 on the last micro-step only, ZeRO-2/3 on every one (each rank keeps only its shard) */
    if (dp && dist_reduce_grads(d, &m->ps)) return -1;
    double sums[2] = {loss_sum, 0}, gnorm;
    if (dp && d->tp > 1) { /* tensor parallel: each rank holds slices (dist.h dist_tp_grad_sumsq) */
        if (dist_tp_grad_sumsq(d, &m->ps, &gnorm) || dist_sum_f64(d, sums, 1)) return -1;
        gnorm = sqrt(gnorm);
    } else if (dp && d->opt.zero >= 1) { /* each rank holds its shard's summed gradient only */
        size_t lo = d->my_lo - m->ps.grad_lo, n = d->my_hi - d->my_lo; /* ZeRO-1: inside the whole buffer */
        sums[1] = n ? be->sumsq(m->ps.grad + lo, n) : 0.0;
        if (dist_sum_f64(d, sums, 2)) return -1;
        gnorm = sqrt(sums[1]);
    } else {
        gnorm = m->pt.n_train ? sqrt(be->sumsq(m->ps.grad, m->pt.n_train)) : 0.0;
        if (dp && dist_sum_f64(d, sums, 1)) return -1;
    }
    loss_sum = sums[0];
    float clip = 1.0f;
    if (h->grad_clip > 0 && gnorm > h->grad_clip) clip = (float)(h->grad_clip / (gnorm + CLIP_EPS));
    AdamHyper ah = {.lr = h->lr, .beta1 = h->beta1, .beta2 = h->beta2, .eps = h->eps, .step = h->step,
                    .grad_scale = clip};
    optim_step(o, m, &ah);
    if (dp && dist_gather_weights(d, &m->ps)) return -1;
    be->sync();
    r->loss = loss_sum / (double)scored;
    r->scored = scored;
    r->grad_norm = gnorm;
    r->clip_scale = clip;
    r->local_scored = local;
    return 0;
}
