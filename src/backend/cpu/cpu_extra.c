/* cpu_extra.c - the fused ops appended to the op table, written with the CPU
 * backend's own ops (so they are exactly as tested as those). */
#include "backend/cpu/cpu_extra.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"

/* Rows per chunk of the fused LM head: a 256 x V fp32 block (51 MB for the
 * GPT-2 vocabulary) instead of the whole (N,V) logits. */
#define LM_HEAD_CHUNK_ROWS 256

// for each chunk of rows: logits = inp @ w^T; losses, dlogits = xent(logits);
// dinp = dlogits @ w; dw += dlogits^T @ inp
void cpu_lm_head_xent(float *losses, void *dinp, float *dw, const void *inp, const void *w, const int32_t *targets,
                      int N, int C, int V, float dscale)
{
    const Backend *be = backend_cpu();
    int rows_max = MIN(N, LM_HEAD_CHUNK_ROWS);
    float *logits = xmalloc((size_t)rows_max * V * sizeof(float));
    for (int r0 = 0; r0 < N; r0 += rows_max) {
        int rows = MIN(rows_max, N - r0);
        const float *x = (const float *)inp + (size_t)r0 * C;
        be->matmul_fwd(logits, x, w, NULL, rows, C, V);
        be->xent_fwd_bwd(losses + r0, logits, targets + r0, rows, V, dscale);
        if (dscale != 0)
            be->matmul_bwd(dinp ? (float *)dinp + (size_t)r0 * C : NULL, dw, NULL, logits, x, w, rows, C, V);
    }
    free(logits);
}

// per row: m' = max(m, max l); s' = s exp(m - m') + sum exp(l - m'); the target's logit when it lies here
void cpu_xent_chunk_stats(float *stats, const void *logits_, const int32_t *targets, int N, int V, int v0)
{
    const float *logits = logits_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *st = stats + 3 * (size_t)i;
        if (v0 == 0) st[0] = -INFINITY, st[1] = 0.0f, st[2] = 0.0f;
        int tg = targets[i];
        if (tg < 0) continue;
        const float *l = logits + (size_t)i * V;
        float mx = st[0];
        for (int j = 0; j < V; j++) mx = l[j] > mx ? l[j] : mx;
        double sum = st[0] == -INFINITY ? 0.0 : (double)st[1] * exp((double)st[0] - mx);
        for (int j = 0; j < V; j++) sum += expf(l[j] - mx);
        st[0] = mx;
        st[1] = (float)sum;
        if (tg >= v0 && tg < v0 + V) st[2] = l[tg - v0];
    }
}

// losses = max + log(sum) - target logit; dl = (exp(l - max) / sum - onehot) * dscale
void cpu_xent_chunk_grad(float *losses, void *logits_, const float *stats, const int32_t *targets, int N, int V,
                         int v0, float dscale)
{
    float *logits = logits_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *st = stats + 3 * (size_t)i;
        int tg = targets[i];
        if (losses) losses[i] = tg < 0 ? 0.0f : st[0] + (float)log((double)st[1]) - st[2];
        if (!logits) continue;
        float *l = logits + (size_t)i * V;
        if (tg < 0) {
            memset(l, 0, sizeof(float) * V);
            continue;
        }
        float scale = (float)(dscale / st[1]);
        for (int j = 0; j < V; j++) l[j] = expf(l[j] - st[0]) * scale;
        if (tg >= v0 && tg < v0 + V) l[tg - v0] -= dscale;
    }
}

// pre = inp @ w^T + bias;  out = gelu(pre)
void cpu_matmul_gelu_fwd(void *out, void *pre, const void *inp, const void *w, const void *bias, int N, int IC,
                         int OC)
{
    const Backend *be = backend_cpu();
    be->matmul_fwd(pre, inp, w, bias, N, IC, OC);
    be->gelu_fwd(out, pre, (size_t)N * OC);
}

// dpre = (dout @ w) * gelu'(pre);  dbias_pre += colsum(dpre);  dw += dout^T @ act;  dbias += colsum(dout)
void cpu_matmul_dgelu_bwd(void *dpre, float *dbias_pre, float *dw, float *dbias, const void *dout, const void *act,
                          const void *pre, const void *w, int N, int IC, int OC)
{
    const Backend *be = backend_cpu();
    be->matmul_bwd(dpre, dw, dbias, dout, act, w, N, IC, OC);
    be->gelu_bwd(dpre, pre, dpre, (size_t)N * IC);
    /* the column sum alone: matmul_bwd without dinp and dw (IC = 1: no operand is read) */
    if (dbias_pre) be->matmul_bwd(NULL, NULL, dbias_pre, dpre, NULL, NULL, N, 1, IC);
}

// Vocabulary-parallel cross-entropy, this rank's slice [v0, v0 + V) of each row (backend.h):
// stats = (max m, sum exp(z - m), target logit or 0).
void cpu_xent_vp_stats(float *stats, const void *logits_, const int32_t *targets, int N, int V, int v0)
{
    const float *logits = logits_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *l = logits + (size_t)i * V;
        float mx = -INFINITY;
        for (int j = 0; j < V; j++) mx = l[j] > mx ? l[j] : mx;
        double sum = 0;
        for (int j = 0; j < V; j++) sum += expf(l[j] - mx);
        int t = targets[i] - v0;
        stats[3 * (size_t)i] = mx;
        stats[3 * (size_t)i + 1] = (float)sum;
        stats[3 * (size_t)i + 2] = targets[i] >= 0 && t >= 0 && t < V ? l[t] : 0.0f;
    }
}

// lse = M + log sum_r s_r exp(m_r - M) over the P slices (M their largest max); loss = lse - z_target;
// logits <- (exp(z - lse) - onehot) * dscale over this slice.
void cpu_xent_vp_finish(float *losses, void *logits_, const int32_t *targets, const float *stats, int P, int N, int V,
                        int v0, float dscale)
{
    float *logits = logits_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *l = logits + (size_t)i * V;
        if (targets[i] < 0) {
            losses[i] = 0;
            if (dscale != 0) memset(l, 0, sizeof(float) * V);
            continue;
        }
        float M = -INFINITY, zt = 0;
        for (int r = 0; r < P; r++) {
            const float *st = stats + ((size_t)r * N + i) * 3;
            M = st[0] > M ? st[0] : M;
            zt += st[2];
        }
        double sum = 0;
        for (int r = 0; r < P; r++) {
            const float *st = stats + ((size_t)r * N + i) * 3;
            if (st[0] > -INFINITY) sum += (double)st[1] * exp((double)st[0] - M);
        }
        float lse = M + (float)log(sum);
        losses[i] = lse - zt;
        if (dscale == 0) continue;
        for (int j = 0; j < V; j++) l[j] = expf(l[j] - lse) * dscale;
        int t = targets[i] - v0;
        if (t >= 0 && t < V) l[t] -= dscale;
    }
}
