/* ternary.h - the arithmetic of ternary weights on the host: BitNet b1.58's quantizers
 * (transformers' WeightQuant / ActQuant) and the integer-ternary tensors of train.optimizer: ternary
 * (packed trits, power-of-two group scales, int8 accumulators; backend.h TernaryTensor). The CPU
 * backend runs these functions; the CUDA kernels compute the same values (docs/ternary.md).
 */
#ifndef ANVIL_MODEL_TERNARY_H
#define ANVIL_MODEL_TERNARY_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"

/* transformers clamps BitNet's scales below by this (WeightQuant, ActQuant: clamp_(min=1e-5)). */
#define TERN_EPS 1e-5f
/* The 8-bit activation range of ActQuant: [-128, 127], scale 127 / absmax. */
#define TERN_ACT_QP 127.0f
#define TERN_ACT_QN -128.0f
/* Trits per byte of the packed form (3^5 = 243 <= 256) and the largest valid byte. */
#define TRITS_PER_BYTE 5
#define TRIT_BYTE_MAX 242
/* The integer update's sums per group run in this fixed order on every backend (a GPU warp's): partial
 * sum j over the group's elements j, j + TERN_LANES, ... in index order, then the butterfly
 * s[j] += s[j ^ off] for off = TERN_LANES/2 .. 1; the result is s[0]. */
#define TERN_LANES 32
/* The most rows of x whose product with an integer-ternary weight the backends read from the packed
 * trits (Backend.ternary_matmul_fwd; more rows: unpacked and the ordinary product). Measured on
 * the H200 (tests/bench_ternary.c, docs/ternary.md): up to 4 rows the packed kernel beats unpacking
 * first at every block shape of bitnet-3b and llama2-7b but one; at 8 the unpacked path wins everywhere. */
#define TERN_MM_SMALL_N 4
/* The range of a group's scale exponent (2^-40 .. 2^20 covers every fp32 weight a model has). */
#define TERN_EXP_MIN (-40)
#define TERN_EXP_MAX 20

/* BitNet's weight quantizer over n fp32 values: out = clamp(round(w / gamma), -1, 1) * gamma in the
 * form torch computes it (s = 1 / max(mean |w|, 1e-5); q / s); returns gamma. out may be w. */
float tern_wquant(float *out, const float *w, size_t n);
/* The same with gamma given (the mean |w| of a whole tensor of which w is a slice: tensor parallel). */
float tern_wquant_gamma(float *out, const float *w, size_t n, float gamma);
/* BitNet's activation quantizer, one row of C values (out may be x). */
void tern_act_quant_row(float *out, const float *x, int C);
/* The same with the row's absmax given (the max |x| of a whole row of which x is a slice). */
void tern_act_quant_row_amax(float *out, const float *x, int C, float amax);

/* Bytes of n packed trits and groups of a tensor. */
static inline size_t trit_bytes(size_t n) { return (n + TRITS_PER_BYTE - 1) / TRITS_PER_BYTE; }
static inline size_t tern_groups(size_t n, int group) { return (n + (size_t)group - 1) / (size_t)group; }
/* Trit i of a packed array (-1, 0, 1), and setting it. */
int trit_get(const uint8_t *packed, size_t i);
void trit_set(uint8_t *packed, size_t i, int t);
/* Pack n trits (-1..1) into trit_bytes(n) bytes (the digits past n are trit 0), and back. */
void trit_pack(uint8_t *packed, const int8_t *t, size_t n);
void trit_unpack_i8(int8_t *t, const uint8_t *packed, size_t n);

/* A tensor's integer state from fp32 values: per group E = round(log2(max(mean |w|, tiny))) clamped to
 * [TERN_EXP_MIN, TERN_EXP_MAX], trit = clamp(round(w / 2^E), -1, 1); accumulators zero. A group whose
 * values are already trit x 2^E (every nonzero |w| the same power of two in range) keeps that E and those
 * trits, so that tern_to_f32 and back is exact (a group of zeros gets TERN_EXP_MIN). Host arrays. */
void tern_from_f32(uint8_t *trits, int8_t *exp, const float *w, size_t n, int group);
/* The values trit * 2^E (exact in fp32 and bf16). */
void tern_to_f32(float *w, const uint8_t *trits, const int8_t *exp, size_t n, int group);
/* out (N, O) = x (N, K) @ W^T + bias (O, may be NULL), W (O, K) the values trit * 2^exp of t (host arrays;
 * t->n = O x K), read from the packed trits: each row's products with the trits of a group summed in
 * fp32, then scaled by the group's 2^E (the CPU backend's product for up to TERN_MM_SMALL_N rows of x:
 * decoding, where unpacking the whole tensor first would cost more than the product). */
void tern_matmul_rows(float *out, const float *x, const TernaryTensor *t, const float *bias, int N, int K, int O);
/* The update of backend.h TernaryHyper on one tensor whose arrays are host memory (tensors are
 * independent: several may be updated at once by different threads after tern_tables_init). */
void tern_tables_init(void);
void tern_update(const TernaryTensor *t, const TernaryHyper *h);

#endif
