/* step.h - one optimizer step, shared by `anvil train` and `anvil bench`.
 *
 * zero the gradients; for each micro-batch, forward + loss + backward with the loss gradient
 * scaled by 1 / (targets scored over ALL micro-batches of the step), so that accumulating
 * micro-batches with different numbers of ignored targets gives exactly the gradient of one big
 * batch (Hugging Face's num_items_in_batch); the global gradient norm over the trainable tensors;
 * clipping; AdamW.
 */
#ifndef ANVIL_TRAIN_STEP_H
#define ANVIL_TRAIN_STEP_H

#include "dist/dist.h"
#include "model/model.h"
#include "train/optim.h"

typedef struct {
    int B, T, accum;
    int32_t *const *in; /* accum micro-batches of B*T host token ids */
    int32_t *const *tg; /* their targets (negative = not scored) */
} StepBatch;

typedef struct {
    float lr, beta1, beta2, eps;
    int step;        /* 1-based, for Adam's bias correction */
    float grad_clip; /* clip the global norm to this (0 = off) */
    uint64_t seed;   /* the run's seed: with step and micro-step, the adapters' dropout stream */
} StepHyper;

typedef struct {
    double loss;      /* mean loss over the step's scored targets */
    long scored;      /* targets scored */
    double grad_norm; /* global norm of the trainable gradients, before clipping */
    float clip_scale; /* the factor the gradients were multiplied by (1 = not clipped) */
    long local_scored; /* targets scored by this rank's micro-batches (data parallel) */
} StepResult;

/* Count the scored targets of a batch (host). */
long step_count_scored(const StepBatch *b);
/* One step. -1 with err_set() when no target of the step is scored. */
int train_step(Model *m, Optimizer *o, const StepBatch *b, const StepHyper *h, StepResult *r);
/* One data-parallel step (dist.h): b is this rank's share of the global batch; the loss scale
 * counts the scored targets of every rank's micro-batches, the gradient is reduced over the ranks
 * after the last micro-step, o owns this rank's shard under ZeRO; r->loss is the global mean and
 * r->scored the global count. d NULL (or inactive) = train_step. */
int train_step_dist(Model *m, Optimizer *o, Dist *d, const StepBatch *b, const StepHyper *h, StepResult *r);

#endif
