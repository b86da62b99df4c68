/* cpu_ternary.c - the CPU versions of the ternary ops (backend.h): the host arithmetic of
 * model/ternary.h over fp32 act buffers. */
#include <math.h>

#include "backend/cpu/cpu_extra.h"
#include "model/ternary.h"

void cpu_ternary_wquant(void *out, const float *w, size_t n) { tern_wquant(out, w, n); }

/* act is fp32 on the CPU: the compute copy holds the master's values */
void cpu_ternary_wquant_act(void *out, const void *w, size_t n) { tern_wquant(out, w, n); }

void cpu_act_quant8(void *out_, const void *inp_, int N, int C)
{
    float *out = out_;
    const float *inp = inp_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) tern_act_quant_row(out + (size_t)i * C, inp + (size_t)i * C, C);
}

// out (N,F) = relu(gate)^2 * up, inp rows [gate (F) | up (F)]
void cpu_relu2glu_fwd(void *out_, const void *inp_, int N, int F)
{
    float *out = out_;
    const float *inp = inp_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *g = inp + (size_t)i * 2 * F, *u = g + F;
        float *o = out + (size_t)i * F;
        for (int j = 0; j < F; j++) {
            float r = g[j] > 0 ? g[j] : 0.0f;
            o[j] = r * r * u[j];
        }
    }
}

// dgate = dout * up * 2 relu(g),  dup = dout * relu(g)^2
void cpu_relu2glu_bwd(void *dinp_, const void *inp_, const void *dout_, int N, int F)
{
    float *dinp = dinp_;
    const float *inp = inp_, *dout = dout_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *g = inp + (size_t)i * 2 * F, *u = g + F, *d = dout + (size_t)i * F;
        float *dg = dinp + (size_t)i * 2 * F, *du = dg + F;
        for (int j = 0; j < F; j++) {
            float r = g[j] > 0 ? g[j] : 0.0f;
            du[j] = d[j] * r * r;
            dg[j] = d[j] * u[j] * 2.0f * r;
        }
    }
}

void cpu_trit_unpack(void *out, const TernaryTensor *t) { tern_to_f32(out, t->trits, t->exp, t->n, t->group); }

/* tensors in parallel (each one's groups share packed bytes, so a tensor stays on one thread) */
void cpu_ternary_update(const TernaryTensor *ts, int nt, const TernaryHyper *h)
{
    tern_tables_init();
#pragma omp parallel for schedule(dynamic)
    for (int k = 0; k < nt; k++) tern_update(&ts[k], h);
}
