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

/* ---- BitNet under tensor parallel: per-slice statistics and what finishes from the group's ---- */

/* act is fp32 on the CPU: w_act changes nothing; summed in index order, as tern_wquant sums */
void cpu_ternary_abs_sum(double *sum, const void *w_, int w_act, size_t n)
{
    const float *w = w_;
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fabs((double)w[i]);
    *sum = s;
}

void cpu_ternary_wquant_sums(void *out, const void *w, int w_act, size_t n, const double *sums, int nsums, int stride,
                             double count)
{
    double s = 0;
    for (int k = 0; k < nsums; k++) s += sums[(size_t)k * stride];
    tern_wquant_gamma(out, w, n, count > 0 ? (float)(s / count) : 0.0f);
}

void cpu_act_absmax(float *amax, const void *inp_, int N, int C)
{
    const float *inp = inp_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float mx = 0;
        for (int j = 0; j < C; j++) mx = fmaxf(mx, fabsf(x[j]));
        amax[i] = mx;
    }
}

void cpu_act_quant8_amax(void *out_, const void *inp_, const float *amax, int P, int N, int C)
{
    float *out = out_;
    const float *inp = inp_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float mx = 0;
        for (int k = 0; k < P; k++) mx = fmaxf(mx, amax[(size_t)k * N + i]);
        tern_act_quant_row_amax(out + (size_t)i * C, inp + (size_t)i * C, C, mx);
    }
}

// dot[i] = sum_c (a * w) * (b * s[i]): the sums of norm_row (a = b = x) and norm_bwd (dout * w, x * rstd)
void cpu_rms_row_dot(double *dot, const void *a_, const void *b_, const void *w_, const float *s, int N, int C)
{
    const float *a = a_, *b = b_, *w = w_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *ar = a + (size_t)i * C, *br = b + (size_t)i * C;
        float si = s ? s[i] : 1.0f;
        double t = 0;
        for (int c = 0; c < C; c++) t += (double)(w ? ar[c] * w[c] : ar[c]) * (double)(s ? br[c] * si : br[c]);
        dot[i] = t;
    }
}

static double parts_sum(const double *x, int P, int N, int i)
{
    double t = 0;
    for (int k = 0; k < P; k++) t += x[(size_t)k * N + i];
    return t;
}

void cpu_rms_split_fwd(void *out_, float *rstd, const void *x_, const void *w_, const double *ss, int P, int N, int C,
                       int Cn, float eps)
{
    float *out = out_;
    const float *x = x_, *w = w_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float s = (float)(1.0 / sqrt(parts_sum(ss, P, N, i) / Cn + eps));
        const float *xr = x + (size_t)i * C;
        float *o = out + (size_t)i * C;
        for (int c = 0; c < C; c++) o[c] = xr[c] * s * w[c];
        rstd[i] = s;
    }
}

void cpu_rms_split_bwd(void *dinp_, float *dw, const void *dout_, const void *x_, const void *w_, const float *rstd,
                       const double *dot, int P, int N, int C, int Cn)
{
    float *dinp = dinp_;
    const float *dout = dout_, *x = x_, *w = w_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *d = dout + (size_t)i * C, *xr = x + (size_t)i * C;
        float s = rstd[i];
        double gx = parts_sum(dot, P, N, i) / Cn;
        float *dx = dinp + (size_t)i * C;
        for (int c = 0; c < C; c++) {
            float xhat = xr[c] * s;
            dx[c] += s * (float)(d[c] * w[c] - xhat * gx);
        }
    }
    if (!dw) return;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++)
        for (int i = 0; i < N; i++) dw[c] += dout[(size_t)i * C + c] * (x[(size_t)i * C + c] * rstd[i]);
}
