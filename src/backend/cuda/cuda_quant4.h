/* cuda_quant4.h - dequantizing bitsandbytes 4-bit weights on the GPU, the
 * device side of src/model/quant4.h (docs/finetuning.md). Not wired into the
 * op table yet: the parameter store and linear.c will call it per tile.
 *
 * The Q4State passed holds DEVICE pointers (packed, absmax or qabsmax +
 * nested_absmax + map8); type, blocksize, n, nested_blocksize and
 * nested_offset are plain values. Results equal q4_dequantize_rows /
 * q4_dequantize_rows_bf16 bit for bit (the same fp32 products, no fused
 * multiply-add in the nested absmax). */
#ifndef ANVIL_CUDA_QUANT4_H
#define ANVIL_CUDA_QUANT4_H

#include <stdint.h>

#include "model/quant4.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Rows [r0, r1) of a row-major (rows, cols) weight into out ((r1-r0) x cols,
 * device memory), fp32 or bf16, on `stream` (a cudaStream_t; NULL: the default
 * stream). Asynchronous; launch errors exit through CUDA_CHECK. */
void cuda_q4_dequantize_rows(const Q4State *s, int64_t cols, int64_t r0, int64_t r1, float *out,
                             void *stream);
void cuda_q4_dequantize_rows_bf16(const Q4State *s, int64_t cols, int64_t r0, int64_t r1, uint16_t *out,
                                  void *stream);

#ifdef __cplusplus
}
#endif

#endif
