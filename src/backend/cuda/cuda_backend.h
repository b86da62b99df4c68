/* cuda_backend.h - CUDA-only services beside the op table, for bench and
 * tests (C callable). Only present in builds with ANVIL_CUDA defined. */
#ifndef ANVIL_CUDA_BACKEND_H
#define ANVIL_CUDA_BACKEND_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes held through the backend's allocator now and at most since the last
 * reset (buffers + scratch + cuBLASLt workspace; the counterpart of
 * torch.cuda.max_memory_allocated), and the device's free/total bytes. */
void cuda_mem_stats(size_t *in_use, size_t *peak, size_t *dev_free, size_t *dev_total);
void cuda_mem_reset_peak(void);
/* The device's name, e.g. "NVIDIA H100 80GB HBM3" ("" before init). */
const char *cuda_device_name(void);
/* The stream every op runs on (a cudaStream_t), for timing ops with events (tests/bench_attention.c). */
void *cuda_stream(void);

/* Per-op timing (events around every op of the table). enable(1) starts
 * collecting, print() writes "op  calls  ms/step  share" sorted by time over
 * `steps` steps and clears the totals. */
void cuda_prof_enable(int on);
void cuda_prof_print(FILE *f, int steps);

#ifdef __cplusplus
}
#endif

#endif
