/* cpu_backend.c - the reference backend: fp32, C + OpenMP, matrix products
 * through BLAS (OpenBLAS). Every result is the same for any number of OpenMP
 * threads, bit for bit: reductions over rows (parameter gradients, norms' and
 * embeddings' weight gradients) are split by columns and summed in row order,
 * sums of squares go over fixed-size chunks added in chunk order, and every
 * row of a BLAS product is computed inside a full tile of MATMUL_ROW_TILE rows
 * (a BLAS result may depend on the shape of the call a row is in). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_extra.h"
#include "model/ternary.h"
#include "backend/cpu/cpu_moe.h"
#include "backend/cpu/cpu_kv.h"
#include "core/error.h"
#include "model/quant4.h"

/* ---------------------------------------------------------------- memory */

/* Every block carries its size in a header of one alignment unit, so that mem_stats can count
 * what the backend holds (the model's memory report and its tests read it). */
#define CPU_ALLOC_HEADER 64
static size_t g_in_use, g_peak;

static void *cpu_alloc(size_t bytes)
{
    char *p = xaligned(bytes + CPU_ALLOC_HEADER);
    *(size_t *)p = bytes;
    size_t now = __atomic_add_fetch(&g_in_use, bytes, __ATOMIC_RELAXED);
    if (now > g_peak) g_peak = now;
    return p + CPU_ALLOC_HEADER;
}

static void cpu_free(void *p)
{
    if (!p) return;
    char *base = (char *)p - CPU_ALLOC_HEADER;
    __atomic_sub_fetch(&g_in_use, *(size_t *)base, __ATOMIC_RELAXED);
    free(base);
}

/* Host memory for state a device backend would keep off the device: the CPU's own, not counted (as a
 * device backend does not count it), so that both report the same split. */
static void *cpu_alloc_host(size_t bytes)
{
    void *p = xaligned(bytes ? bytes : 1);
    memset(p, 0, bytes);
    return p;
}

static void cpu_mem_stats(size_t *in_use, size_t *peak)
{
    if (in_use) *in_use = g_in_use;
    if (peak) *peak = g_peak;
}

static void cpu_mem_reset_peak(void) { g_peak = g_in_use; }

/* The CPU is always deterministic and has a single attention and GEMM path. */
static void cpu_configure(const BackendOptions *o) { (void)o; }
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
    if (!dwte && !dwpe) return; /* frozen embeddings */
#pragma omp parallel
    {
        size_t c0, c1;
        thread_range((size_t)C, &c0, &c1);
        for (int i = 0; i < B * T; i++) {
            const float *d = dout + (size_t)i * C;
            float *e = dwte ? dwte + (size_t)tokens[i] * C : NULL;
            float *p = dwpe ? dwpe + (size_t)(i % T) * C : NULL;
            for (size_t c = c0; c < c1; c++) {
                if (e) e[c] += d[c];
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
    if (!dw && !db) return; /* frozen norm weights: no parameter gradients */
#pragma omp parallel
    {
        size_t c0, c1;
        thread_range((size_t)C, &c0, &c1);
        for (int i = 0; i < N; i++) {
            const float *d = dout + (size_t)i * C, *x = inp + (size_t)i * C;
            float m = rms ? 0.0f : mean[i], s = rstd[i];
            for (size_t c = c0; c < c1; c++) {
                if (dw) dw[c] += d[c] * ((x[c] - m) * s);
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
/* Every row of a product is computed inside a full tile of MATMUL_ROW_TILE rows: thread ranges
 * start at multiples of the tile and a last partial tile is padded with zero rows. OpenBLAS's
 * kernels give a row a result that depends on the edge handling of the call it is in (rows of a
 * 5-row call differ in the last bits from the same rows of a 24-row call); inside full tiles
 * they do not, so each output row depends on its input row and the weights alone: the same bits
 * for any batch size, any row offset and any thread count (the cached forward of generation
 * equals the training forward bit for bit, tests/test_engine.c). The tile must be a multiple of
 * the row unrolling of the sgemm kernel OpenBLAS picks for the CPU: 16 for Sandybridge and
 * SkylakeX, 12/24 for Haswell and Zen (measured with OpenBLAS 0.3.21 on an AMD EPYC: a row's bits
 * agree across calls of 12, 24, 36, 48 ... rows and differ across 16, 32, 64). 48 covers both. */
#define MATMUL_ROW_TILE 48

static void blas_single_thread(void)
{
    static int done;
    if (!done) {
        openblas_set_num_threads(1);
        done = 1;
    }
}

/* 1 when this OpenBLAS kernel gives a row of a MATMUL_ROW_TILE-row product the same bits at every
 * position inside the tile (Sandybridge, SkylakeX), 0 when it does not (Haswell and Zen: rows 6-11
 * of every 12 round differently from rows 0-5). Probed once with one row moved through the tile.
 * Where it is 0, a row's result still does not depend on the thread count or the batch size at a
 * fixed position, but a row computed at another position (the cached forward of generation) can
 * differ from the training forward in the last bits. */
int cpu_blas_position_free(void)
{
    static int v = -1;
    if (v >= 0) return v;
    blas_single_thread();
    enum { IC = 64, OC = 64 };
    float *a = xcalloc((size_t)MATMUL_ROW_TILE * IC, sizeof(float)), *w = xmalloc(sizeof(float) * OC * IC);
    float *o = xmalloc(sizeof(float) * MATMUL_ROW_TILE * OC), *ref = xmalloc(sizeof(float) * OC);
    uint32_t r = 12345;
    for (int i = 0; i < OC * IC; i++) w[i] = (float)((r = r * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
    float x[IC];
    for (int i = 0; i < IC; i++) x[i] = (float)((r = r * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
    v = 1;
    for (int p = 0; p < MATMUL_ROW_TILE && v; p++) {
        memset(a, 0, sizeof(float) * MATMUL_ROW_TILE * IC);
        memcpy(a + (size_t)p * IC, x, sizeof(x));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, MATMUL_ROW_TILE, OC, IC, 1.0f, a, IC, w, IC, 0.0f, o, OC);
        if (p == 0) memcpy(ref, o, sizeof(float) * OC);
        else v = !memcmp(ref, o + (size_t)p * OC, sizeof(float) * OC);
    }
    free(a), free(w), free(o), free(ref);
    return v;
}

/* This thread's tiles [t0, t1) of ntile (contiguous ranges, as thread_range). */
static void tile_range(size_t ntile, size_t *t0, size_t *t1) { thread_range(ntile, t0, t1); }

/* out (M,OC) = inp (M,IC) @ w^T for rows that form whole tiles, or the last partial tile through
 * a zero-padded copy. ld of out is OC, of inp IC. */
static void rows_product(float *out, const float *inp, const float *w, size_t M, int IC, int OC, int transw)
{
    if (M == 0) return;
    size_t full = M / MATMUL_ROW_TILE * MATMUL_ROW_TILE, tail = M - full;
    CBLAS_TRANSPOSE tw = transw ? CblasTrans : CblasNoTrans;
    int ldw = transw ? IC : OC;
    if (full)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tw, (int)full, OC, IC, 1.0f, inp, IC, w, ldw, 0.0f, out, OC);
    if (!tail) return;
    float *pin = xcalloc((size_t)MATMUL_ROW_TILE * IC, sizeof(float));
    float *pout = xmalloc((size_t)MATMUL_ROW_TILE * OC * sizeof(float));
    memcpy(pin, inp + full * IC, tail * IC * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tw, MATMUL_ROW_TILE, OC, IC, 1.0f, pin, IC, w, ldw, 0.0f, pout, OC);
    memcpy(out + full * OC, pout, tail * OC * sizeof(float));
    free(pin);
    free(pout);
}

/* The rows [r0, r1) of an (N, ...) product this thread computes: whole tiles, the partial tile
 * going to the thread that owns the last one. */
static void thread_rows(size_t N, size_t *r0, size_t *r1)
{
    size_t ntile = (N + MATMUL_ROW_TILE - 1) / MATMUL_ROW_TILE, t0, t1;
    tile_range(ntile, &t0, &t1);
    *r0 = MIN(N, t0 * MATMUL_ROW_TILE);
    *r1 = MIN(N, t1 * MATMUL_ROW_TILE);
}

// out (N,OC) = inp (N,IC) @ w (OC,IC)^T + bias
static void cpu_matmul_fwd(void *out_, const void *inp_, const void *w, const void *bias_, int N, int IC, int OC)
{
    float *out = out_;
    const float *inp = inp_, *bias = bias_;
    blas_single_thread();
    int split = (long)N * IC * OC >= MATMUL_SPLIT_MIN;
#pragma omp parallel if (split)
    {
        size_t r0, r1;
        thread_rows((size_t)N, &r0, &r1);
        if (r1 > r0) {
            rows_product(out + r0 * OC, inp + r0 * IC, w, r1 - r0, IC, OC, 1);
            if (bias)
                for (size_t i = r0; i < r1; i++)
                    for (int j = 0; j < OC; j++) out[i * OC + j] += bias[j];
        }
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
#pragma omp parallel if (split)
    {
        size_t r0, r1, o0, o1;
        thread_rows((size_t)N, &r0, &r1);
        /* each thread owns rows o0..o1 of dw and entries o0..o1 of dbias, in whole tiles */
        thread_rows((size_t)OC, &o0, &o1);
        if (dinp && r1 > r0) rows_product(dinp + r0 * IC, dout + r0 * OC, w, r1 - r0, OC, IC, 0);
        if (dw && o1 > o0)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(o1 - o0), IC, N, 1.0f, dout + o0, OC, inp, IC,
                        1.0f, dw + o0 * IC, IC);
        if (dbias)
            for (int i = 0; i < N; i++)
                for (size_t j = o0; j < o1; j++) dbias[j] += dout[(size_t)i * OC + j];
    }
}

// C (M,N) = alpha * op(A) @ op(B) + beta * C  (backend.h gemm). With ta 0 the rows of C go through
// full tiles (MATMUL_ROW_TILE) of a product into a scratch, then C = tmp + beta * C, so that a row's
// result does not depend on M, its position or beta's path.
static void cpu_gemm(int ta, int tb, int M, int N, int K, float alpha, const void *A_, int lda, const void *B_,
                     int ldb, float beta, void *C_, int ldc, int c_f32)
{
    const float *A = A_, *B = B_;
    float *C = C_;
    (void)c_f32; /* act and fp32 are the same type here */
    blas_single_thread();
    CBLAS_TRANSPOSE tA = ta ? CblasTrans : CblasNoTrans, tB = tb ? CblasTrans : CblasNoTrans;
    if (ta) { /* a reduction over A's rows (weight gradients): one call, the same for any thread count */
        cblas_sgemm(CblasRowMajor, tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    size_t ntile = ((size_t)M + MATMUL_ROW_TILE - 1) / MATMUL_ROW_TILE;
    int split = (long)M * N * K >= MATMUL_SPLIT_MIN;
#pragma omp parallel if (split)
    {
        float *pa = xmalloc((size_t)MATMUL_ROW_TILE * K * sizeof(float));
        float *pc = xmalloc((size_t)MATMUL_ROW_TILE * N * sizeof(float));
#pragma omp for schedule(static)
        for (size_t t = 0; t < ntile; t++) {
            size_t r0 = t * MATMUL_ROW_TILE, rows = MIN((size_t)MATMUL_ROW_TILE, (size_t)M - r0);
            memset(pa, 0, (size_t)MATMUL_ROW_TILE * K * sizeof(float));
            for (size_t i = 0; i < rows; i++) memcpy(pa + i * K, A + (r0 + i) * lda, (size_t)K * sizeof(float));
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tB, MATMUL_ROW_TILE, N, K, alpha, pa, K, B, ldb, 0.0f, pc, N);
            for (size_t i = 0; i < rows; i++) {
                float *c = C + (r0 + i) * ldc;
                const float *p = pc + i * N;
                if (beta == 0.0f)
                    for (int j = 0; j < N; j++) c[j] = p[j];
                else
                    for (int j = 0; j < N; j++) c[j] = p[j] + beta * c[j];
            }
        }
        free(pa);
        free(pc);
    }
}

static void cpu_dropout(void *out_, const void *inp_, size_t n, float p, uint64_t seed)
{
    float *out = out_;
    const float *inp = inp_;
    uint32_t cut = (uint32_t)fmin(4294967295.0, (double)p * 4294967296.0);
    float keep = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = dropout_u32(seed, i) < cut ? 0.0f : inp[i] * keep;
}

static void cpu_jitter(void *out_, const void *inp_, size_t n, float eps, uint64_t seed)
{
    float *out = out_;
    const float *inp = inp_;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = inp[i] * jitter_factor(seed, i, eps);
}

static void cpu_dequant4(void *out, const void *q4state) { q4_dequantize((const Q4State *)q4state, out); }

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

#define GELU_RSQRT2 0.7071067811865476  /* 1/sqrt(2) */
#define GELU_RSQRT2PI 0.3989422804014327 /* 1/sqrt(2 pi) */

// gelu(x) = 0.5 x (1 + erf(x / sqrt 2))   (exact; HF "gelu", torch's default); in double
static void cpu_gelu_erf_fwd(void *out_, const void *inp_, size_t n)
{
    float *out = out_;
    const float *x = inp_;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        out[i] = (float)(0.5 * v * (1.0 + erf(v * GELU_RSQRT2)));
    }
}

// gelu'(x) = Phi(x) + x phi(x) = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)
static void cpu_gelu_erf_bwd(void *dinp_, const void *inp_, const void *dout_, size_t n)
{
    float *dinp = dinp_;
    const float *x = inp_, *dout = dout_;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        double g = 0.5 * (1.0 + erf(v * GELU_RSQRT2)) + v * exp(-0.5 * v * v) * GELU_RSQRT2PI;
        dinp[i] = (float)(dout[i] * g);
    }
}

// out[m] = inp[idx[m]] (rows of C)
static void cpu_gather_rows(void *out, const void *inp, const int32_t *idx, int M, int C)
{
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++)
        memcpy((float *)out + (size_t)m * C, (const float *)inp + (size_t)idx[m] * C, (size_t)C * sizeof(float));
}

// dinp[idx[m]] = dout[m]
static void cpu_scatter_rows(void *dinp, const void *dout, const int32_t *idx, int M, int C)
{
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++)
        memcpy((float *)dinp + (size_t)idx[m] * C, (const float *)dout + (size_t)m * C, (size_t)C * sizeof(float));
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
/* The keys query t of row b attends to: 0..t (causal), or 0..lengths[b]-1 (bidirectional; all T
 * without lengths), lengths clamped to 1..T as the CUDA kernels do. */
static int attn_keys(int causal, const int32_t *lengths, int b, int t, int T)
{
    if (causal) return t + 1;
    int n = lengths ? lengths[b] : T;
    return n < 1 ? 1 : n > T ? T : n;
}

/* Attention probability dropout (attention_drop_fwd/bwd): cut 0 = none; else probability (b, h, t, s) is
 * dropped when its draw (backend.h attn_dropout_index) is below cut, and the kept ones are scaled by keep. */
typedef struct {
    uint32_t cut;
    float keep;
    uint64_t seed;
} AttnDrop;

/* The factor of probability (b, h, t, s): 0 when dropped, else keep. */
static float attn_drop_factor(const AttnDrop *dr, int b, int h, int t, int s, int nh, int T)
{
    return dropout_u32(dr->seed, attn_dropout_index(b, h, t, s, nh, T)) < dr->cut ? 0.0f : dr->keep;
}

static void attention_fwd_mode(void *out_, float *lse, const void *qkv_, int B, int T, int nh, int nkv, int hd,
                               int causal, const int32_t *lengths, const AttnDrop *dr)
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
                    int ns = attn_keys(causal, lengths, b, t, T);
                    float mx = -INFINITY;
                    for (int s = 0; s < ns; s++) {
                        const float *k = qkv + ((size_t)b * T + s) * row + (size_t)(nh + kvh) * hd;
                        float dot = 0;
                        for (int d = 0; d < hd; d++) dot += q[d] * k[d];
                        p[s] = dot * scale;
                        if (p[s] > mx) mx = p[s];
                    }
                    double sum = 0;
                    for (int s = 0; s < ns; s++) {
                        p[s] = expf(p[s] - mx);
                        sum += p[s];
                    }
                    float inv = ns ? (float)(1.0 / sum) : 0.0f; /* no key: zero output */
                    float *o = out + ((size_t)b * T + t) * nh * hd + (size_t)h * hd;
                    for (int d = 0; d < hd; d++) o[d] = 0;
                    for (int s = 0; s < ns; s++) {
                        const float *v = qkv + ((size_t)b * T + s) * row + (size_t)(nh + nkv + kvh) * hd;
                        float w = p[s] * inv;
                        if (dr->cut) w *= attn_drop_factor(dr, b, h, t, s, nh, T);
                        for (int d = 0; d < hd; d++) o[d] += w * v[d];
                    }
                    lse[((size_t)b * nh + h) * T + t] = ns ? mx + (float)log(sum) : 0.0f;
                }
            }
        free(p);
    }
}

static void cpu_attention_fwd(void *out, float *lse, const void *qkv, int B, int T, int nh, int nkv, int hd)
{
    AttnDrop none = {0};
    attention_fwd_mode(out, lse, qkv, B, T, nh, nkv, hd, 1, NULL, &none);
}

static void cpu_attention_len_fwd(void *out, float *lse, const void *qkv, const int32_t *lengths, int B, int T, int nh,
                                  int nkv, int hd)
{
    AttnDrop none = {0};
    attention_fwd_mode(out, lse, qkv, B, T, nh, nkv, hd, 0, lengths, &none);
}

// p_s = exp(score_s - lse), D = dout . out, ds_s = p_s (dout . v_s - D)
// dq = scale sum_s ds_s k_s, dk_s += scale ds_s q, dv_s += p_s dout
// With dropout factor f_s (0 or 1/(1-p)): ds_s = p_s (f_s dout . v_s - D), dv_s += f_s p_s dout
static void attention_bwd_mode(void *dqkv_, const void *dout_, const void *out_, const float *lse,
                               const void *qkv_, int B, int T, int nh, int nkv, int hd, int causal,
                               const int32_t *lengths, const AttnDrop *dr)
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
                        int ns = attn_keys(causal, lengths, b, t, T);
                        for (int s = 0; s < ns; s++) {
                            size_t rs = (size_t)b * T + s;
                            const float *k = qkv + rs * row + (size_t)(nh + kvh) * hd;
                            const float *v = qkv + rs * row + (size_t)(nh + nkv + kvh) * hd;
                            float dot = 0, dpv = 0;
                            for (int e = 0; e < hd; e++) {
                                dot += q[e] * k[e];
                                dpv += d[e] * v[e];
                            }
                            float ps = expf(dot * scale - l), pv = ps;
                            if (dr->cut) {
                                float f = attn_drop_factor(dr, b, h, t, s, nh, T);
                                dpv *= f;
                                pv = ps * f;
                            }
                            float ds = ps * (dpv - D) * scale;
                            float *dk = dqkv + rs * row + (size_t)(nh + kvh) * hd;
                            float *dv = dqkv + rs * row + (size_t)(nh + nkv + kvh) * hd;
                            for (int e = 0; e < hd; e++) {
                                dq[e] += ds * k[e];
                                dk[e] += ds * q[e];
                                dv[e] += pv * d[e];
                            }
                        }
                    }
}

static void cpu_attention_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv,
                              int B, int T, int nh, int nkv, int hd)
{
    AttnDrop none = {0};
    attention_bwd_mode(dqkv, dout, out, lse, qkv, B, T, nh, nkv, hd, 1, NULL, &none);
}

static void cpu_attention_len_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv,
                                  const int32_t *lengths, int B, int T, int nh, int nkv, int hd)
{
    AttnDrop none = {0};
    attention_bwd_mode(dqkv, dout, out, lse, qkv, B, T, nh, nkv, hd, 0, lengths, &none);
}

static AttnDrop attn_drop_make(float p, uint64_t seed)
{
    return (AttnDrop){.cut = dropout_cut(p), .keep = 1.0f / (1.0f - p), .seed = seed};
}

static void cpu_attention_drop_fwd(void *out, float *lse, const void *qkv, const int32_t *lengths, int causal, int B,
                                   int T, int nh, int nkv, int hd, float p, uint64_t seed)
{
    AttnDrop dr = attn_drop_make(p, seed);
    attention_fwd_mode(out, lse, qkv, B, T, nh, nkv, hd, causal, causal ? NULL : lengths, &dr);
}

static void cpu_attention_drop_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv,
                                   const int32_t *lengths, int causal, int B, int T, int nh, int nkv, int hd, float p,
                                   uint64_t seed)
{
    AttnDrop dr = attn_drop_make(p, seed);
    attention_bwd_mode(dqkv, dout, out, lse, qkv, B, T, nh, nkv, hd, causal, causal ? NULL : lengths, &dr);
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

/* Up to TERN_MM_SMALL_N rows of x read from the packed trits (decoding: unpacking the whole tensor first
 * would cost more than the product); more rows: W unpacked (exact in fp32) and the ordinary product. */
static void cpu_ternary_matmul_fwd(void *out, const void *x, const TernaryTensor *t, const void *bias, void *scratch,
                                   int N, int K, int O)
{
    if (N >= 1 && N <= TERN_MM_SMALL_N && t->n == (size_t)O * (size_t)K) {
        tern_matmul_rows(out, x, t, bias, N, K, O);
        return;
    }
    cpu_trit_unpack(scratch, t);
    cpu_matmul_fwd(out, x, scratch, bias, N, K, O);
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
    .gemm = cpu_gemm,
    .dropout = cpu_dropout,
    .jitter = cpu_jitter,
    .ternary_abs_sum = cpu_ternary_abs_sum,
    .ternary_wquant_sums = cpu_ternary_wquant_sums,
    .act_absmax = cpu_act_absmax,
    .act_quant8_amax = cpu_act_quant8_amax,
    .rms_row_dot = cpu_rms_row_dot,
    .rms_split_fwd = cpu_rms_split_fwd,
    .rms_split_bwd = cpu_rms_split_bwd,
    .dequant4 = cpu_dequant4,
    .moe_route_fwd = cpu_moe_route_fwd,
    .moe_route_bwd = cpu_moe_route_bwd,
    .moe_sort = cpu_moe_sort,
    .moe_gather_fwd = cpu_moe_gather_fwd,
    .moe_gather_bwd = cpu_moe_gather_bwd,
    .moe_combine_fwd = cpu_moe_combine_fwd,
    .moe_combine_bwd = cpu_moe_combine_bwd,
    .moe_gate_fwd = cpu_moe_gate_fwd,
    .moe_gate_bwd = cpu_moe_gate_bwd,
    .ternary_wquant = cpu_ternary_wquant,
    .ternary_wquant_act = cpu_ternary_wquant_act,
    .act_quant8 = cpu_act_quant8,
    .relu2glu_fwd = cpu_relu2glu_fwd,
    .relu2glu_bwd = cpu_relu2glu_bwd,
    .trit_unpack = cpu_trit_unpack,
    .ternary_matmul_fwd = cpu_ternary_matmul_fwd,
    .ternary_update = cpu_ternary_update,
    .configure = cpu_configure,
    .mem_stats = cpu_mem_stats,
    .mem_reset_peak = cpu_mem_reset_peak,
    .alloc_host = cpu_alloc_host,
    .free_host = free,
    .copy = cpu_copy,
    .attention_len_fwd = cpu_attention_len_fwd,
    .attention_len_bwd = cpu_attention_len_bwd,
    .gelu_erf_fwd = cpu_gelu_erf_fwd,
    .gelu_erf_bwd = cpu_gelu_erf_bwd,
    .gather_rows = cpu_gather_rows,
    .scatter_rows = cpu_scatter_rows,
    .xent_chunk_stats = cpu_xent_chunk_stats,
    .xent_chunk_grad = cpu_xent_chunk_grad,
    .attention_drop_fwd = cpu_attention_drop_fwd,
    .attention_drop_bwd = cpu_attention_drop_bwd,
    .xent_vp_stats = cpu_xent_vp_stats,
    .xent_vp_finish = cpu_xent_vp_finish,
};

const Backend *backend_cpu(void) { return &cpu_backend; }
