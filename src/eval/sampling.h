/* sampling.h - the next token from a row of logits.
 *
 * temperature 0 is greedy (argmax; the lowest id among equal maxima, as
 * torch.argmax). Otherwise, in the order of transformers' logits warpers:
 * logits / temperature, then top-k (keep every logit >= the k-th largest),
 * then top-p (keep the most probable tokens, best first, while the probability
 * of the ones before is < p), then a draw from the renormalised softmax with
 * the caller's Rng (so a seed gives the same tokens on every run).
 */
#ifndef ANVIL_EVAL_SAMPLING_H
#define ANVIL_EVAL_SAMPLING_H

#include <stdint.h>

#include "core/rng.h"

typedef struct {
    float temperature; /* 0: greedy */
    int top_k;         /* 0: off */
    float top_p;       /* 1: off; in (0, 1] */
} SamplerOptions;

/* A candidate token: its scaled logit and id. */
typedef struct {
    float z;
    int32_t id;
} SampleCand;

typedef struct {
    SamplerOptions o;
    int V;
    float *tmp;       /* (V) scratch for the top-k selection */
    SampleCand *cand; /* (V) scratch */
} Sampler;

/* -1 with err_set() for an option out of range (named as the CLI flag). */
int sampler_check(const SamplerOptions *o);
void sampler_init(Sampler *s, const SamplerOptions *o, int V);
void sampler_free(Sampler *s);
/* The next token for one row of V logits (not modified). */
int32_t sampler_next(Sampler *s, const float *logits, Rng *rng);
/* Index of the largest of n values (the first one on ties). */
int32_t argmax_f32(const float *x, int n);

#endif
