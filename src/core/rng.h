/* rng.h - deterministic random numbers (xoshiro256** seeded by splitmix64).
 *
 * The whole state is four uint64 words, so checkpoints store it exactly and a
 * resumed run draws the same numbers as an uninterrupted one.
 */
#ifndef ANVIL_RNG_H
#define ANVIL_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} Rng;

/* Seed from one 64-bit value and a stream id (independent streams for
 * e.g. init of tensor #k, data shuffle of epoch #e). */
void rng_seed(Rng *r, uint64_t seed, uint64_t stream);
uint64_t rng_u64(Rng *r);
/* Uniform in [0, 1) with 24 bits (float) or 53 bits (double). */
float rng_float(Rng *r);
double rng_double(Rng *r);
/* Uniform integer in [0, n), unbiased. */
uint64_t rng_below(Rng *r, uint64_t n);
/* Standard normal (Box-Muller on doubles). */
double rng_normal(Rng *r);
/* splitmix64 step: a good 64-bit mixer for deriving seeds. */
uint64_t rng_mix(uint64_t x);

#endif
