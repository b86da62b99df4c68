/* cpu_backend.c - the reference backend: fp32, C + OpenMP, matrix products
 * through BLAS (OpenBLAS). Every result is the same for any number of OpenMP
 * threads, bit for bit: reductions over rows (parameter gradients, norms' and
 * embeddings' weight gradients) are split by columns and summed in row order,
 * sums of squares go over fixed-size chunks added in chunk order, and the
 * BLAS calls work on fixed-size blocks of rows (MATMUL_ROWS), never on one
 * block per thread, because a BLAS result may depend on the block's shape. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_extra.h"
#include "backend/cpu/cpu_kv.h"
#include "core/error.h"

/* ---------------------------------------------------------------- memory */

static void *cpu_alloc(size_t bytes) { return xaligned(bytes); }
static void cpu_free(void *p) { free(p); }
static void cpu_zero(void *p, size_t bytes) { memset(p, 0, bytes); }
static void cpu_copy(void *dst, const void *src, size_t bytes)
{
    if (dst != src && bytes) memmove(dst, src, bytes);
}
static void cpu_sync(void) {}
static void cpu_cast(void *dst, const float *src, size_t n) { cpu_copy(dst, src, n * sizeof(float)); }
static void cpu_download_act(float *dst, const void *src, size_t n) { cpu_copy(dst, src, n * sizeof(float)); }
static void cpu_upload_act(void *dst, const float *src, size_t n) { cpu_copy(dst, src, n * sizeof(float)); }

/* Split [0,n) into omp_get_num_threads() contiguous ranges; this thread's range. */
static void thread_range(size_t n, size_t *lo, size_t *hi)
{
    size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
    *lo = n * t / nt;
    *hi = n * (t + 1) / nt;
}

/* ------------------------------------------------------------ embeddings */

// out (B,T,C) = wte[tokens[b,t]] + wpe[pos0 + t]
static void cpu_embed_fwd(void *out_, const int32_t *tokens, const void *wte_, const void *wpe_, int B, int T,
                          int C, int pos0)
{
    float *out = out_;
    const float *wte = wte_, *wpe = wpe_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < B * T; i++) {
        const float *e = wte + (size_t)tokens[i] * C;
        const float *p = wpe ? wpe + (size_t)(pos0 + i % T) * C : NULL;
        float *o = out + (size_t)i * C;
        for (int c = 0; c < C; c++) o[c] = e[c] + (p ? p[c] : 0.0f);
    }
}

// dwte[tokens[b,t]] += dout[b,t]; dwpe[t] += sum_b dout[b,t]. Threads own column ranges.
static void cpu_embed_bwd(float *dwte, float *dwpe, const void *dout_, const int32_t *tokens, int B, int T,
                          int C)
{
    const float *dout = dout_;
#pragma omp parallel
    {
        size_t c0, c1;
        thread_range((size_t)C, &c0, &c1);
        for (int i = 0; i < B * T; i++) {
            const float *d = dout + (size_t)i * C;
            float *e = dwte + (size_t)tokens[i] * C;
            float *p = dwpe ? dwpe + (size_t)(i % T) * C : NULL;
            for (size_t c = c0; c < c1; c++) {
                e[c] += d[c];
                if (p) p[c] += d[c];
            }
        }
    }
}

/* --------------------------------------------------------- normalization */

// LayerNorm: out = (x - mean) * rstd * w + b;  RMSNorm: out = x * rstd * w
static void norm_row(float *o, float *mean, float *rstd, const float *x, const float *w, const float *b, int C,
                     float eps, int rms)
{
    double m = 0, v = 0;
    if (!rms) {
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
    }
    for (int c = 0; c < C; c++) {
        double d = x[c] - m;
        v += d * d;
    }
    v /= C;
    float s = (float)(1.0 / sqrt(v + eps));
    float mf = (float)m;
    for (int c = 0; c < C; c++) {
        float y = (x[c] - mf) * s * w[c];
        o[c] = b ? y + b[c] : y;
    }
    if (mean) *mean = mf;
    *rstd = s;
}

static void cpu_norm_fwd(void *out, float *mean, float *rstd, const void *inp, const void *w, const void *b,
                         int N, int C, float eps, int rms)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++)
        norm_row((float *)out + (size_t)i * C, mean && !rms ? mean + i : NULL, rstd + i,
                 (const float *)inp + (size_t)i * C, w, b, C, eps, rms);
}

static void cpu_add_norm_fwd(void *res, void *out, float *mean, float *rstd, const void *a, const void *b,
                             const void *w, const void *bias, int N, int C, float eps, int rms)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *r = (float *)res + (size_t)i * C;
        const float *x = (const float *)a + (size_t)i * C, *y = (const float *)b + (size_t)i * C;
        for (int c = 0; c < C; c++) r[c] = x[c] + y[c];
        norm_row((float *)out + (size_t)i * C, mean && !rms ? mean + i : NULL, rstd + i, r, w, bias, C, eps,
                 rms);
    }
}

// xhat = (x - mean) * rstd, g = dout * w
// dx += rstd * (g - mean(g) - xhat * mean(g * xhat))   [RMSNorm: no mean(g) term, mean = 0]
// dw += dout * xhat, db += dout
static void cpu_norm_bwd(void *dinp_, float *dw, float *db, const void *dout_, const void *inp_, const void *w_,
                         const float *mean, const float *rstd, int N, int C, int rms)
{
    float *dinp = dinp_;
    const float *dout = dout_, *inp = inp_, *w = w_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *d = dout + (size_t)i * C, *x = inp + (size_t)i * C;
        float m = rms ? 0.0f : mean[i], s = rstd[i];
        double gm = 0, gx = 0;
        for (int c = 0; c < C; c++) {
            float g = d[c] * w[c];
            gm += g;
            gx += (double)g * ((x[c] - m) * s);
        }
        gm /= C;
        gx /= C;
        if (rms) gm = 0;
        float *dx = dinp + (size_t)i * C;
        for (int c = 0; c < C; c++) {
            float xhat = (x[c] - m) * s;
            dx[c] += s * (float)(d[c] * w[c] - gm - xhat * gx);
        }
    }
#pragma omp parallel
    {
        size_t c0, c1;
        thread_range((size_t)C, &c0, &c1);
        for (int i = 0; i < N; i++) {
            const float *d = dout + (size_t)i * C, *x = inp + (size_t)i * C;
            float m = rms ? 0.0f : mean[i], s = rstd[i];
            for (size_t c = c0; c < c1; c++) {
                dw[c] += d[c] * ((x[c] - m) * s);
                if (db) db[c] += d[c];
            }
        }
    }
}

/* --------------------------------------------------------------- linear */

/* Matrix products run single-threaded BLAS calls on row blocks shared out to
 * our OpenMP threads: one thread pool for the whole backend (OpenBLAS's own
 * pthreads spinning against OpenMP's cost more than they gave on small and
 * mid-size products). Below this many multiply-adds one thread does it all. */
#define MATMUL_SPLIT_MIN (1L << 18)
/* Each product is cut into blocks along its output's longer side (rows or
 * columns), of a size that depends on the shape only: never one block per thread,
 * because OpenBLAS picks kernels by shape and a row's last digits would then
 * depend on the thread count. Blocks are at least MATMUL_BLOCK_MIN wide (so the
 * operand a call packs whole is reused enough) and at most MATMUL_BLOCKS_MAX per
 * product (so a wide one, the LM head, is not packed hundreds of times). */
#define MATMUL_BLOCK_MIN 128
#define MATMUL_BLOCKS_MAX 64

/* The blocks of a product with an (M, N) output: split its rows (*by_rows) or columns. */
typedef struct {
    int by_rows, n;
    size_t len, block;
} MatmulBlocks;

static MatmulBlocks matmul_blocks(size_t M, size_t N)
{
    MatmulBlocks b = {.by_rows = M >= N, .len = M >= N ? M : N};
    size_t per = (b.len + MATMUL_BLOCKS_MAX - 1) / MATMUL_BLOCKS_MAX;
    per = (per + MATMUL_BLOCK_MIN - 1) / MATMUL_BLOCK_MIN * MATMUL_BLOCK_MIN;
    b.block = MAX((size_t)MATMUL_BLOCK_MIN, per);
    b.n = (int)((b.len + b.block - 1) / b.block);
    return b;
}

static void blas_single_thread(void)
{
    static int done;
    if (!done) {
        openblas_set_num_threads(1);
        done = 1;
    }
}

// out (N,OC) = inp (N,IC) @ w (OC,IC)^T + bias
static void cpu_matmul_fwd(void *out_, const void *inp_, const void *w, const void *bias_, int N, int IC, int OC)
{
    float *out = out_;
    const float *inp = inp_, *W = w, *bias = bias_;
    blas_single_thread();
    int split = (long)N * IC * OC >= MATMUL_SPLIT_MIN;
    MatmulBlocks b = matmul_blocks((size_t)N, (size_t)OC);
#pragma omp parallel for schedule(dynamic, 1) if (split)
    for (int k = 0; k < b.n; k++) {
        size_t a0 = (size_t)k * b.block, a1 = MIN(b.len, a0 + b.block);
        size_t r0 = b.by_rows ? a0 : 0, r1 = b.by_rows ? a1 : (size_t)N; /* out[r0:r1, c0:c1] */
        size_t c0 = b.by_rows ? 0 : a0, c1 = b.by_rows ? (size_t)OC : a1;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(r1 - r0), (int)(c1 - c0), IC, 1.0f,
                    inp + r0 * IC, IC, W + c0 * IC, IC, 0.0f, out + r0 * OC + c0, OC);
        if (bias)
            for (size_t i = r0; i < r1; i++)
                for (size_t j = c0; j < c1; j++) out[i * OC + j] += bias[j];
    }
}

// dinp (N,IC) = dout (N,OC) @ w (OC,IC);  dw (OC,IC) += dout^T @ inp;  dbias += colsum(dout)
static void cpu_matmul_bwd(void *dinp_, float *dw, float *dbias, const void *dout_, const void *inp_,
                           const void *w_, int N, int IC, int OC)
{
    float *dinp = dinp_;
    const float *dout = dout_, *inp = inp_, *w = w_;
    blas_single_thread();
    int split = (long)N * IC * OC >= MATMUL_SPLIT_MIN;
    /* blocks of dinp (N, IC), then blocks of dw (OC, IC) with the matching entries of dbias */
    MatmulBlocks bi = matmul_blocks((size_t)N, (size_t)IC), bw = matmul_blocks((size_t)OC, (size_t)IC);
    int nin = dinp ? bi.n : 0, nw = dw ? bw.n : 0;
#pragma omp parallel for schedule(dynamic, 1) if (split)
    for (int k = 0; k < nin + nw; k++) {
        const MatmulBlocks *b = k < nin ? &bi : &bw;
        size_t a0 = (size_t)(k < nin ? k : k - nin) * b->block, a1 = MIN(b->len, a0 + b->block);
        size_t r0 = b->by_rows ? a0 : 0, r1 = b->by_rows ? a1 : (k < nin ? (size_t)N : (size_t)OC);
        size_t c0 = b->by_rows ? 0 : a0, c1 = b->by_rows ? (size_t)IC : a1;
        if (k < nin) /* dinp[r0:r1, c0:c1] = dout[r0:r1] @ w[:, c0:c1] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(r1 - r0), (int)(c1 - c0), OC, 1.0f,
                        dout + r0 * OC, OC, w + c0, IC, 0.0f, dinp + r0 * IC + c0, IC);
        else /* dw[r0:r1, c0:c1] += dout[:, r0:r1]^T @ inp[:, c0:c1] */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(r1 - r0), (int)(c1 - c0), N, 1.0f,
                        dout + r0, OC, inp + c0, IC, 1.0f, dw + r0 * IC + c0, IC);
    }
    /* dbias: column sums in row order, columns shared out in fixed blocks */
    if (dbias) {
        int nb = (OC + MATMUL_BLOCK_MIN - 1) / MATMUL_BLOCK_MIN;
#pragma omp parallel for schedule(static) if (split)
        for (int k = 0; k < nb; k++) {
            size_t j0 = (size_t)k * MATMUL_BLOCK_MIN, j1 = MIN((size_t)OC, j0 + MATMUL_BLOCK_MIN);
            for (int i = 0; i < N; i++)
                for (size_t j = j0; j < j1; j++) dbias[j] += dout[(size_t)i * OC + j];
        }
    }
}

/* ----------------------------------------------------------- element-wise */

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_CUBE 0.044715f

// gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
static void cpu_gelu_fwd(void *out_, const void *inp_, size_t n)
{
    float *out = out_;
    const float *x = inp_;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        out[i] = 0.5f * v * (1.0f + tanhf(GELU_SCALE * (v + GELU_CUBE * v * v * v)));
    }
}

static void cpu_gelu_bwd(void *dinp_, const void *inp_, const void *dout_, size_t n)
{
    float *dinp = dinp_;
    const float *x = inp_, *dout = dout_;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float u = GELU_SCALE * (v + GELU_CUBE * v * v * v);
        float th = tanhf(u);
        float sech2 = 1.0f - th * th;
        float g = 0.5f * (1.0f + th) + 0.5f * v * sech2 * GELU_SCALE * (1.0f + 3.0f * GELU_CUBE * v * v);
        dinp[i] = dout[i] * g;
    }
}

// out (N,F) = silu(gate) * up, inp rows [gate (F) | up (F)]
static void cpu_swiglu_fwd(void *out_, const void *inp_, int N, int F)
{
    float *out = out_;
    const float *inp = inp_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *g = inp + (size_t)i * 2 * F, *u = g + F;
        float *o = out + (size_t)i * F;
        for (int j = 0; j < F; j++) {
            float s = 1.0f / (1.0f + expf(-g[j]));
            o[j] = g[j] * s * u[j];
        }
    }
}

// dgate = dout * up * s * (1 + g (1 - s)),  dup = dout * g * s,  s = sigmoid(g)
static void cpu_swiglu_bwd(void *dinp_, const void *inp_, const void *dout_, int N, int F)
{
    float *dinp = dinp_;
    const float *inp = inp_, *dout = dout_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *g = inp + (size_t)i * 2 * F, *u = g + F, *d = dout + (size_t)i * F;
        float *dg = dinp + (size_t)i * 2 * F, *du = dg + F;
        for (int j = 0; j < F; j++) {
            float s = 1.0f / (1.0f + expf(-g[j]));
            float dj = d[j];
            du[j] = dj * g[j] * s;
            dg[j] = dj * u[j] * s * (1.0f + g[j] * (1.0f - s));
        }
    }
}

static void cpu_add(void *out_, const void *a_, const void *b_, size_t n)
{
    float *out = out_;
    const float *a = a_, *b = b_;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/* ------------------------------------------------------------- attention */

// For each (b, kv head) the threads own every query head of the group, so the
// k/v gradients of a group are written by one thread (deterministic, no races).
static void cpu_attention_fwd(void *out_, float *lse, const void *qkv_, int B, int T, int nh, int nkv, int hd)
{
    float *out = out_;
    const float *qkv = qkv_;
    int row = (nh + 2 * nkv) * hd, group = nh / nkv;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel
    {
        float *p = xmalloc((size_t)T * sizeof(float));
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < nh; h++) {
                int kvh = h / group;
                for (int t = 0; t < T; t++) {
                    const float *q = qkv + ((size_t)b * T + t) * row + (size_t)h * hd;
                    float mx = -INFINITY;
                    for (int s = 0; s <= t; s++) {
                        const float *k = qkv + ((size_t)b * T + s) * row + (size_t)(nh + kvh) * hd;
                        float dot = 0;
                        for (int d = 0; d < hd; d++) dot += q[d] * k[d];
                        p[s] = dot * scale;
                        if (p[s] > mx) mx = p[s];
                    }
                    double sum = 0;
                    for (int s = 0; s <= t; s++) {
                        p[s] = expf(p[s] - mx);
                        sum += p[s];
                    }
                    float inv = (float)(1.0 / sum);
                    float *o = out + ((size_t)b * T + t) * nh * hd + (size_t)h * hd;
                    for (int d = 0; d < hd; d++) o[d] = 0;
                    for (int s = 0; s <= t; s++) {
                        const float *v = qkv + ((size_t)b * T + s) * row + (size_t)(nh + nkv + kvh) * hd;
                        float w = p[s] * inv;
                        for (int d = 0; d < hd; d++) o[d] += w * v[d];
                    }
                    lse[((size_t)b * nh + h) * T + t] = mx + (float)log(sum);
                }
            }
        free(p);
    }
}

// p_s = exp(score_s - lse), D = dout . out, ds_s = p_s (dout . v_s - D)
// dq = scale sum_s ds_s k_s, dk_s += scale ds_s q, dv_s += p_s dout
static void cpu_attention_bwd(void *dqkv_, const void *dout_, const void *out_, const float *lse,
                              const void *qkv_, int B, int T, int nh, int nkv, int hd)
{
    float *dqkv = dqkv_;
    const float *dout = dout_, *out = out_, *qkv = qkv_;
    int row = (nh + 2 * nkv) * hd, group = nh / nkv;
    float scale = 1.0f / sqrtf((float)hd);
    /* k and v gradients accumulate: clear them (q gradients are written whole). */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < B * T; i++) memset(dqkv + (size_t)i * row + (size_t)nh * hd, 0, sizeof(float) * 2 * nkv * hd);
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int kvh = 0; kvh < nkv; kvh++)
                for (int h = kvh * group; h < (kvh + 1) * group; h++)
                    for (int t = 0; t < T; t++) {
                        size_t rt = (size_t)b * T + t;
                        const float *q = qkv + rt * row + (size_t)h * hd;
                        const float *o = out + rt * nh * hd + (size_t)h * hd;
                        const float *d = dout + rt * nh * hd + (size_t)h * hd;
                        float *dq = dqkv + rt * row + (size_t)h * hd;
                        float l = lse[((size_t)b * nh + h) * T + t];
                        float D = 0;
                        for (int e = 0; e < hd; e++) D += d[e] * o[e];
                        for (int e = 0; e < hd; e++) dq[e] = 0;
                        for (int s = 0; s <= t; s++) {
                            size_t rs = (size_t)b * T + s;
                            const float *k = qkv + rs * row + (size_t)(nh + kvh) * hd;
                            const float *v = qkv + rs * row + (size_t)(nh + nkv + kvh) * hd;
                            float dot = 0, dpv = 0;
                            for (int e = 0; e < hd; e++) {
                                dot += q[e] * k[e];
                                dpv += d[e] * v[e];
                            }
                            float ps = expf(dot * scale - l);
                            float ds = ps * (dpv - D) * scale;
                            float *dk = dqkv + rs * row + (size_t)(nh + kvh) * hd;
                            float *dv = dqkv + rs * row + (size_t)(nh + nkv + kvh) * hd;
                            for (int e = 0; e < hd; e++) {
                                dq[e] += ds * k[e];
                                dk[e] += ds * q[e];
                                dv[e] += ps * d[e];
                            }
                        }
                    }
}

// Rotate-half RoPE: for i < hd/2, angle = pos * inv_freq[i]:
//   x1' = x1 cos - x2 sin,  x2' = x2 cos + x1 sin   (x1 = x[i], x2 = x[i + hd/2])
// The backward applies the transposed rotation (sin -> -sin).
static void rope_apply(float *qkv, const float *inv_freq, int B, int T, int nh, int nkv, int hd, int pos0,
                       float sign)
{
    int row = (nh + 2 * nkv) * hd, half = hd / 2, nrot = nh + nkv;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < B * T; i++) {
        int pos = pos0 + i % T;
        float *r = qkv + (size_t)i * row;
        for (int j = 0; j < half; j++) {
            float ang = (float)pos * inv_freq[j]; /* rounded to fp32 as HF does */
            float c = (float)cos((double)ang), s = sign * (float)sin((double)ang);
            for (int h = 0; h < nrot; h++) {
                float *x = r + (size_t)h * hd;
                float x1 = x[j], x2 = x[j + half];
                x[j] = x1 * c - x2 * s;
                x[j + half] = x2 * c + x1 * s;
            }
        }
    }
}

static void cpu_rope_fwd(void *qkv, const float *inv_freq, int B, int T, int nh, int nkv, int hd, int pos0)
{
    rope_apply(qkv, inv_freq, B, T, nh, nkv, hd, pos0, 1.0f);
}

static void cpu_rope_bwd(void *dqkv, const float *inv_freq, int B, int T, int nh, int nkv, int hd, int pos0)
{
    rope_apply(dqkv, inv_freq, B, T, nh, nkv, hd, pos0, -1.0f);
}

/* ------------------------------------------------------------------ loss */

// loss = logsumexp(l) - l[target];  dl = (softmax(l) - onehot(target)) * dscale
// One pass for the max, one for exp (kept in place when the gradient is wanted), one to scale.
static void cpu_xent_fwd_bwd(float *losses, void *logits_, const int32_t *targets, int N, int V, float dscale)
{
    float *logits = logits_;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *l = logits + (size_t)i * V;
        int tg = targets[i];
        if (tg < 0) {
            losses[i] = 0;
            if (dscale != 0) memset(l, 0, sizeof(float) * V);
            continue;
        }
        float mx = -INFINITY;
        for (int j = 0; j < V; j++) mx = l[j] > mx ? l[j] : mx;
        float target_logit = l[tg];
        double sum = 0;
        if (dscale != 0) {
            for (int j = 0; j < V; j++) {
                l[j] = expf(l[j] - mx);
                sum += l[j];
            }
            float scale = (float)(dscale / sum);
            for (int j = 0; j < V; j++) l[j] *= scale;
            l[tg] -= dscale;
        } else {
            for (int j = 0; j < V; j++) sum += expf(l[j] - mx);
        }
        losses[i] = mx + (float)log(sum) - target_logit;
    }
}

/* ------------------------------------------------------------- optimizer */

// As torch.optim.AdamW: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps), bc_i = 1 - beta_i^step.
static void cpu_adamw(float *params, void *params_act, const float *grads, float *m, float *v,
                      const OptTensor *tensors, int ntensors, const AdamHyper *h)
{
    float bc1 = 1.0f - powf(h->beta1, (float)h->step);
    float bc2 = 1.0f - powf(h->beta2, (float)h->step);
    float step_size = h->lr / bc1, bc2_sqrt = sqrtf(bc2);
    for (int k = 0; k < ntensors; k++) {
        const OptTensor *t = &tensors[k];
        if (!t->trainable) continue;
        float decay = 1.0f - h->lr * t->weight_decay;
        float *p = params + t->offset, *mm = m + t->offset, *vv = v + t->offset;
        const float *g = grads + t->offset;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < t->numel; i++) {
            float gi = g[i] * h->grad_scale;
            mm[i] = h->beta1 * mm[i] + (1.0f - h->beta1) * gi;
            vv[i] = h->beta2 * vv[i] + (1.0f - h->beta2) * gi * gi;
            float denom = sqrtf(vv[i]) / bc2_sqrt + h->eps;
            p[i] = p[i] * decay - step_size * mm[i] / denom;
        }
    }
    (void)params_act; /* fp32 backend: the compute copy is the master buffer */
}

static double cpu_sumsq(const float *x, size_t n)
{
    /* fixed-size chunks summed in order: the result does not depend on threads */
    enum { CHUNK = 1 << 16 };
    size_t nchunk = (n + CHUNK - 1) / CHUNK;
    double *part = xcalloc(nchunk ? nchunk : 1, sizeof(double));
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunk; c++) {
        double s = 0;
        size_t end = MIN(n, (c + 1) * (size_t)CHUNK);
        for (size_t i = c * CHUNK; i < end; i++) s += (double)x[i] * x[i];
        part[c] = s;
    }
    double total = 0;
    for (size_t c = 0; c < nchunk; c++) total += part[c];
    free(part);
    return total;
}

static void cpu_scale(float *x, float s, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

static const Backend cpu_backend = {
    .name = "cpu",
    .act_dtype = DTYPE_F32,
    .act_size = sizeof(float),
    .alloc = cpu_alloc,
    .free = cpu_free,
    .zero = cpu_zero,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sync = cpu_sync,
    .cast_to_act = cpu_cast,
    .download_act = cpu_download_act,
    .upload_act = cpu_upload_act,
    .embed_fwd = cpu_embed_fwd,
    .embed_bwd = cpu_embed_bwd,
    .norm_fwd = cpu_norm_fwd,
    .norm_bwd = cpu_norm_bwd,
    .add_norm_fwd = cpu_add_norm_fwd,
    .matmul_fwd = cpu_matmul_fwd,
    .matmul_bwd = cpu_matmul_bwd,
    .gelu_fwd = cpu_gelu_fwd,
    .gelu_bwd = cpu_gelu_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .swiglu_bwd = cpu_swiglu_bwd,
    .add = cpu_add,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .rope_fwd = cpu_rope_fwd,
    .rope_bwd = cpu_rope_bwd,
    .xent_fwd_bwd = cpu_xent_fwd_bwd,
    .adamw = cpu_adamw,
    .sumsq = cpu_sumsq,
    .scale = cpu_scale,
    .lm_head_xent = cpu_lm_head_xent,
    .kv_store = cpu_kv_store,
    .attention_kv_fwd = cpu_attention_kv_fwd,
    .matmul_gelu_fwd = cpu_matmul_gelu_fwd,
    .matmul_dgelu_bwd = cpu_matmul_dgelu_bwd,
};

const Backend *backend_cpu(void) { return &cpu_backend; }
