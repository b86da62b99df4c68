/* cpu_moe.c - routing, permutation and combination of the MoE MLP on the CPU (backend.h, docs/moe.md).
 * Every sum runs in a fixed order, so results do not depend on the thread count. */
#include "backend/cpu/cpu_moe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

// probs = softmax(logits) per row (fp32); lse = logsumexp; topi/topw = the k largest, descending
void cpu_moe_route_fwd(float *probs, float *lse, int32_t *topi, float *topw, float *stats, const void *logits_,
                       int N, int E, int k, int norm)
{
    const float *logits = logits_;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        const float *x = logits + (size_t)r * E;
        float *p = probs + (size_t)r * E;
        float mx = -INFINITY;
        for (int e = 0; e < E; e++) mx = fmaxf(mx, x[e]);
        double sum = 0;
        for (int e = 0; e < E; e++) sum += exp((double)x[e] - mx);
        for (int e = 0; e < E; e++) p[e] = (float)(exp((double)x[e] - mx) / sum);
        lse[r] = (float)(mx + log(sum));
        /* selection: k passes, each the largest not yet taken (ties: the lower index) */
        int32_t *ti = topi + (size_t)r * k;
        float *tw = topw + (size_t)r * k;
        double tsum = 0;
        for (int s = 0; s < k; s++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int t = 0; t < s; t++) taken |= ti[t] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            ti[s] = best;
            tw[s] = p[best];
            tsum += p[best];
        }
        if (norm)
            for (int s = 0; s < k; s++) tw[s] = (float)(tw[s] / tsum);
    }
    for (int e = 0; e <= E; e++) stats[e] = 0;
    double *acc = xcalloc((size_t)E + 1, sizeof(double));
    for (int r = 0; r < N; r++) {
        for (int e = 0; e < E; e++) acc[e] += probs[(size_t)r * E + e];
        acc[E] += (double)lse[r] * lse[r];
    }
    for (int e = 0; e <= E; e++) stats[e] = (float)acc[e];
    free(acc);
}

// dprobs = dpe + d(topw)/d(probs)^T dtopw;  dlogits = p * (dprobs - <p, dprobs>) + zscale * lse * p
void cpu_moe_route_bwd(void *dlogits_, const float *probs, const float *lse, const int32_t *topi, const float *dtopw,
                       const float *dpe, float zscale, int N, int E, int k, int norm)
{
    float *dlogits = dlogits_;
#pragma omp parallel
    {
        double *dp = xmalloc((size_t)E * sizeof(double));
#pragma omp for schedule(static)
        for (int r = 0; r < N; r++) {
            const float *p = probs + (size_t)r * E;
            const int32_t *ti = topi + (size_t)r * k;
            const float *dw = dtopw + (size_t)r * k;
            for (int e = 0; e < E; e++) dp[e] = dpe ? dpe[e] : 0.0;
            if (norm) { /* w_s = p_s / Z, Z = sum_t p_t: dp_u += (dw_u - sum_s dw_s w_s) / Z */
                double Z = 0, dot = 0;
                for (int s = 0; s < k; s++) Z += p[ti[s]];
                for (int s = 0; s < k; s++) dot += (double)dw[s] * p[ti[s]] / Z;
                for (int s = 0; s < k; s++) dp[ti[s]] += (dw[s] - dot) / Z;
            } else {
                for (int s = 0; s < k; s++) dp[ti[s]] += dw[s];
            }
            double pd = 0;
            for (int e = 0; e < E; e++) pd += p[e] * dp[e];
            float *dl = dlogits + (size_t)r * E;
            for (int e = 0; e < E; e++) dl[e] = (float)(p[e] * (dp[e] - pd) + (double)zscale * lse[r] * p[e]);
        }
        free(dp);
    }
}

// counting sort of the N*k slots by expert, stable
void cpu_moe_sort(int32_t *perm, int32_t *pos, int *counts, const int32_t *topi, int N, int E, int k)
{
    size_t nk = (size_t)N * k;
    int *off = xcalloc((size_t)E + 1, sizeof(int));
    for (int e = 0; e < E; e++) counts[e] = 0;
    for (size_t i = 0; i < nk; i++) {
        int e = topi[i];
        if (e < 0 || e >= E) fatal("moe_sort: expert %d out of range 0..%d (internal error)", e, E - 1);
        counts[e]++;
    }
    for (int e = 0; e < E; e++) off[e + 1] = off[e] + counts[e];
    for (size_t i = 0; i < nk; i++) {
        int j = off[topi[i]]++;
        perm[j] = (int32_t)i;
        pos[i] = j;
    }
    free(off);
}

void cpu_moe_gather_fwd(void *xp_, const void *x_, const int32_t *perm, int N, int C, int k)
{
    float *xp = xp_;
    const float *x = x_;
#pragma omp parallel for schedule(static)
    for (size_t j = 0; j < (size_t)N * k; j++)
        memcpy(xp + j * C, x + (size_t)(perm[j] / k) * C, (size_t)C * sizeof(float));
}

void cpu_moe_gather_bwd(void *dx_, const void *dxp_, const int32_t *pos, int N, int C, int k)
{
    float *dx = dx_;
    const float *dxp = dxp_;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        float *o = dx + (size_t)r * C;
        for (int c = 0; c < C; c++) o[c] = 0;
        for (int s = 0; s < k; s++) {
            const float *g = dxp + (size_t)pos[(size_t)r * k + s] * C;
            for (int c = 0; c < C; c++) o[c] += g[c];
        }
    }
}

void cpu_moe_combine_fwd(void *out_, const void *y_, const float *topw, const int32_t *pos, int N, int C, int k)
{
    float *out = out_;
    const float *y = y_;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        float *o = out + (size_t)r * C;
        for (int c = 0; c < C; c++) o[c] = 0;
        for (int s = 0; s < k; s++) {
            float w = topw[(size_t)r * k + s];
            const float *v = y + (size_t)pos[(size_t)r * k + s] * C;
            for (int c = 0; c < C; c++) o[c] += w * v[c];
        }
    }
}

void cpu_moe_combine_bwd(void *dy_, float *dtopw, const void *dout_, const void *y_, const float *topw,
                         const int32_t *pos, int N, int C, int k)
{
    float *dy = dy_;
    const float *dout = dout_, *y = y_;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        const float *d = dout + (size_t)r * C;
        for (int s = 0; s < k; s++) {
            size_t i = (size_t)r * k + s, j = (size_t)pos[i];
            float w = topw[i];
            const float *v = y + j * C;
            float *g = dy + j * C;
            double dot = 0;
            for (int c = 0; c < C; c++) {
                g[c] = w * d[c];
                dot += (double)d[c] * v[c];
            }
            dtopw[i] = (float)dot;
        }
    }
}

void cpu_moe_gate_fwd(void *out_, const void *y_, const void *g_, int N, int C)
{
    float *out = out_;
    const float *y = y_, *g = g_;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        float s = 1.0f / (1.0f + expf(-g[r]));
        for (int c = 0; c < C; c++) out[(size_t)r * C + c] += s * y[(size_t)r * C + c];
    }
}

void cpu_moe_gate_bwd(void *dy_, void *dg_, const void *dout_, const void *y_, const void *g_, int N, int C)
{
    float *dy = dy_, *dg = dg_;
    const float *dout = dout_, *y = y_, *g = g_;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        float s = 1.0f / (1.0f + expf(-g[r]));
        double dot = 0;
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)r * C + c;
            dy[i] = s * dout[i];
            dot += (double)dout[i] * y[i];
        }
        dg[r] = (float)(dot * s * (1.0f - s));
    }
}
