/* cpu_moe.h - the CPU mixture-of-experts ops of the op table (backend.h): fp32, fixed-order sums. */
#ifndef ANVIL_CPU_MOE_H
#define ANVIL_CPU_MOE_H

#include <stdint.h>

void cpu_moe_route_fwd(float *probs, float *lse, int32_t *topi, float *topw, float *stats, const void *logits, int N,
                       int E, int k, int norm);
void cpu_moe_route_bwd(void *dlogits, const float *probs, const float *lse, const int32_t *topi, const float *dtopw,
                       const float *dpe, float zscale, int N, int E, int k, int norm);
void cpu_moe_sort(int32_t *perm, int32_t *pos, int *counts, const int32_t *topi, int N, int E, int k);
void cpu_moe_gather_fwd(void *xp, const void *x, const int32_t *perm, int N, int C, int k);
void cpu_moe_gather_bwd(void *dx, const void *dxp, const int32_t *pos, int N, int C, int k);
void cpu_moe_combine_fwd(void *out, const void *y, const float *topw, const int32_t *pos, int N, int C, int k);
void cpu_moe_combine_bwd(void *dy, float *dtopw, const void *dout, const void *y, const float *topw,
                         const int32_t *pos, int N, int C, int k);
void cpu_moe_gate_fwd(void *out, const void *y, const void *g, int N, int C);
void cpu_moe_gate_bwd(void *dy, void *dg, const void *dout, const void *y, const void *g, int N, int C);

#endif
