/* cpu_extra.h - CPU versions of the fused ops appended to the op table
 * (backend.h); each is composed of the CPU backend's own ops. */
#ifndef ANVIL_CPU_EXTRA_H
#define ANVIL_CPU_EXTRA_H

#include <stdint.h>

void cpu_lm_head_xent(float *losses, void *dinp, float *dw, const void *inp, const void *w, const int32_t *targets,
                      int N, int C, int V, float dscale);

void cpu_matmul_gelu_fwd(void *out, void *pre, const void *inp, const void *w, const void *bias, int N, int IC,
                         int OC);
void cpu_matmul_dgelu_bwd(void *dpre, float *dbias_pre, float *dw, float *dbias, const void *dout, const void *act,
                          const void *pre, const void *w, int N, int IC, int OC);

void cpu_xent_chunk_stats(float *stats, const void *logits, const int32_t *targets, int N, int V, int v0);
void cpu_xent_chunk_grad(float *losses, void *logits, const float *stats, const int32_t *targets, int N, int V,
                         int v0, float dscale);
void cpu_xent_vp_stats(float *stats, const void *logits, const int32_t *targets, int N, int V, int v0);
void cpu_xent_vp_finish(float *losses, void *logits, const int32_t *targets, const float *stats, int P, int N, int V,
                        int v0, float dscale);

/* 1 when a row's matrix product has the same bits at any position inside a tile (cpu_backend.c):
 * then the cached forward of generation equals the training forward bit for bit. */
int cpu_blas_position_free(void);
/* cpu_ternary.c: the ternary ops (backend.h) */
#include <stddef.h>
#include "backend/backend.h"
void cpu_ternary_wquant(void *out, const float *w, size_t n);
void cpu_ternary_wquant_act(void *out, const void *w, size_t n);
void cpu_act_quant8(void *out, const void *inp, int N, int C);
void cpu_relu2glu_fwd(void *out, const void *inp, int N, int F);
void cpu_relu2glu_bwd(void *dinp, const void *inp, const void *dout, int N, int F);
void cpu_trit_unpack(void *out, const TernaryTensor *t);
void cpu_ternary_update(const TernaryTensor *ts, int nt, const TernaryHyper *h);
/* BitNet under tensor parallel (backend.h) */
void cpu_ternary_abs_sum(double *sum, const void *w, int w_act, size_t n);
void cpu_ternary_wquant_sums(void *out, const void *w, int w_act, size_t n, const double *sums, int nsums, int stride,
                             double count);
void cpu_act_absmax(float *amax, const void *inp, int N, int C);
void cpu_act_quant8_amax(void *out, const void *inp, const float *amax, int P, int N, int C);
void cpu_rms_row_dot(double *dot, const void *a, const void *b, const void *w, const float *s, int N, int C);
void cpu_rms_split_fwd(void *out, float *rstd, const void *x, const void *w, const double *ss, int P, int N, int C,
                       int Cn, float eps);
void cpu_rms_split_bwd(void *dinp, float *dw, const void *dout, const void *x, const void *w, const float *rstd,
                       const double *dot, int P, int N, int C, int Cn);

#endif
