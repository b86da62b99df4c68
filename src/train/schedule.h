/* schedule.h - learning-rate schedules. */
#ifndef ANVIL_TRAIN_SCHEDULE_H
#define ANVIL_TRAIN_SCHEDULE_H

typedef enum { SCHED_COSINE, SCHED_LINEAR, SCHED_CONSTANT } SchedKind;

typedef struct {
    SchedKind kind;
    float lr, min_lr;
    int warmup, total;
} Schedule;

/* "cosine" | "linear" | "constant"; -1 if unknown. */
int schedule_parse(const char *name, SchedKind *k);
/* Learning rate of 1-based step s:
 *   s <= warmup:  lr * s / warmup
 *   then, with p = (s - warmup) / (total - warmup) in [0, 1]:
 *   cosine  min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2
 *   linear  lr + (min_lr - lr) * p
 *   constant lr */
float schedule_lr(const Schedule *s, int step);

#endif
