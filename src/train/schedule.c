#include "train/schedule.h"

#include <math.h>
#include <string.h>

int schedule_parse(const char *name, SchedKind *k)
{
    if (!strcmp(name, "cosine")) *k = SCHED_COSINE;
    else if (!strcmp(name, "linear")) *k = SCHED_LINEAR;
    else if (!strcmp(name, "constant")) *k = SCHED_CONSTANT;
    else return -1;
    return 0;
}

float schedule_lr(const Schedule *s, int step)
{
    if (s->warmup > 0 && step <= s->warmup) return s->lr * (float)step / (float)s->warmup;
    if (s->kind == SCHED_CONSTANT) return s->lr;
    int span = s->total - s->warmup;
    double p = span > 0 ? (double)(step - s->warmup) / span : 1.0;
    if (p < 0) p = 0;
    if (p > 1) p = 1;
    if (s->kind == SCHED_LINEAR) return (float)(s->lr + (s->min_lr - s->lr) * p);
    return (float)(s->min_lr + (s->lr - s->min_lr) * 0.5 * (1.0 + cos(M_PI * p)));
}
