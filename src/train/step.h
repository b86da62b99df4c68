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
} StepResult;

/* Count the scored targets of a batch (host). */
long step_count_scored(const StepBatch *b);
/* One step. -1 with err_set() when no target of the step is scored. */
int train_step(Model *m, Optimizer *o, const StepBatch *b, const StepHyper *h, StepResult *r);

#endif
