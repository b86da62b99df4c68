/* cuda_ops.cu - the memory-bound ops: embeddings, norms, element-wise,
 * RoPE, softmax cross-entropy, AdamW, sum of squares.
 *
 * Each op mirrors its CPU reference in src/backend/cpu/cpu_backend.c (same
 * formula, fp32 arithmetic). Rows are handled one warp per row; element-wise
 * ops use 16-byte accesses when the size and pointers allow it (W elements per
 * access), else one element per access. Parameter-gradient reductions over rows
 * are two-stage (per-chunk partials, then a fixed-order sum), never atomics. */
#include <math.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_common.cuh"

#define THREADS 256
#define WARPS_PER_BLOCK (THREADS / 32)

/* Launch kern<T, W> with the 16-byte width when vec_ok, else width 1. */
#define LAUNCH_VEC(vec, kern, grid, block, ...)                                                              \
    do {                                                                                                     \
        if (vec) kern<T, pack_width<T>()><<<(grid), (block), 0, g_cu.stream>>>(__VA_ARGS__);                 \
        else kern<T, 1><<<(grid), (block), 0, g_cu.stream>>>(__VA_ARGS__);                                  \
        CUDA_CHECK_LAUNCH();                                                                                 \
    } while (0)

/* ------------------------------------------------------------ embeddings */

// out (B,T,C) = wte[tokens[b,t]] + wpe[pos0 + t]
template <typename T, int W>
__global__ void embed_fwd_kernel(T *out, const int32_t *tokens, const T *wte, const T *wpe, int T_, int C, int pos0,
                                 size_t n)
{
    size_t stride = (size_t)gridDim.x * blockDim.x * W;
    for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * W; i < n; i += stride) {
        size_t row = i / C;
        int c = (int)(i % C);
        float e[W], p[W];
        load_f<T, W>(e, wte + (size_t)tokens[row] * C + c);
        if (wpe) {
            load_f<T, W>(p, wpe + (size_t)(pos0 + (int)(row % T_)) * C + c);
#pragma unroll
            for (int k = 0; k < W; k++) e[k] += p[k];
        }
        store_f<T, W>(out + i, e);
    }
}

/* The token ids of the last embed_fwd, copied to pinned host memory while the
 * forward runs, so that embed_bwd can group rows by token without stalling. */
static struct {
    int32_t *host;       /* pinned, cap ints: copy of the tokens */
    int32_t *plan;       /* pinned, 3*cap + 1 ints: sorted rows | unique tokens | segment starts */
    int32_t *plan_dev;   /* device copy of plan */
    size_t cap;
    const int32_t *src;  /* device pointer the copy came from */
    size_t n;
    cudaEvent_t copied, uploaded;
} g_emb;

static void emb_reserve(size_t n)
{
    if (n <= g_emb.cap) return;
    if (g_emb.host) {
        CUDA_CHECK(cudaStreamSynchronize(g_cu.stream));
        CUDA_CHECK(cudaFreeHost(g_emb.host));
        CUDA_CHECK(cudaFreeHost(g_emb.plan));
        cuda_free(g_emb.plan_dev);
    } else {
        CUDA_CHECK(cudaEventCreateWithFlags(&g_emb.copied, cudaEventDisableTiming));
        CUDA_CHECK(cudaEventCreateWithFlags(&g_emb.uploaded, cudaEventDisableTiming));
    }
    CUDA_CHECK(cudaMallocHost((void **)&g_emb.host, n * sizeof(int32_t)));
    CUDA_CHECK(cudaMallocHost((void **)&g_emb.plan, (3 * n + 1) * sizeof(int32_t)));
    g_emb.plan_dev = (int32_t *)cuda_malloc((3 * n + 1) * sizeof(int32_t));
    g_emb.cap = n;
    g_emb.src = NULL;
}

template <typename T>
static void cu_embed_fwd(void *out, const int32_t *tokens, const void *wte, const void *wpe, int B, int T_, int C,
                         int pos0)
{
    CUDA_PROF("embed_fwd");
    size_t n = (size_t)B * T_ * C;
    bool vec = vec_ok((size_t)C, pack_width<T>(), sizeof(T), out, wte, wpe);
    LAUNCH_VEC(vec, embed_fwd_kernel, grid_for(n / (vec ? pack_width<T>() : 1), THREADS), THREADS, (T *)out,
               tokens, (const T *)wte, (const T *)wpe, T_, C, pos0, n);
    size_t nt = (size_t)B * T_;
    emb_reserve(nt);
    CUDA_CHECK(cudaEventSynchronize(g_emb.uploaded)); /* the pinned buffers are free again */
    CUDA_CHECK(cudaMemcpyAsync(g_emb.host, tokens, nt * sizeof(int32_t), cudaMemcpyDeviceToHost, g_cu.stream));
    CUDA_CHECK(cudaEventRecord(g_emb.copied, g_cu.stream));
    g_emb.src = tokens;
    g_emb.n = nt;
}

// dwpe[t] += sum over b of dout[b,t]   (one thread per (t,c), b in order)
template <typename T> __global__ void embed_bwd_wpe_kernel(float *dwpe, const T *dout, int B, int T_, int C)
{
    size_t n = (size_t)T_ * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float s = 0;
        for (int b = 0; b < B; b++) s += to_f(dout[(size_t)b * n + i]);
        dwpe[i] += s;
    }
}

// dwte[tok] += sum of dout rows with that token, rows in increasing order.
// plan: rows (n) sorted by token | unique tokens (nu) | segment starts (nu + 1)
template <typename T>
__global__ void embed_bwd_wte_kernel(float *dwte, const T *dout, const int32_t *rows, const int32_t *utok,
                                     const int32_t *seg, int C)
{
    int u = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0;
    for (int k = seg[u]; k < seg[u + 1]; k++) s += to_f(dout[(size_t)rows[k] * C + c]);
    dwte[(size_t)utok[u] * C + c] += s;
}

// dwte[tokens] += dout; dwpe[t] += sum over b of dout. Either may be NULL (frozen), both too.
template <typename T>
static void cu_embed_bwd(float *dwte, float *dwpe, const void *dout, const int32_t *tokens, int B, int T_, int C)
{
    CUDA_PROF("embed_bwd");
    if (dwpe) {
        embed_bwd_wpe_kernel<T><<<grid_for((size_t)T_ * C, THREADS), THREADS, 0, g_cu.stream>>>(
            dwpe, (const T *)dout, B, T_, C);
        CUDA_CHECK_LAUNCH();
    }
    if (!dwte) return;
    size_t n = (size_t)B * T_;
    if (g_emb.src == tokens && g_emb.n == n) {
        CUDA_CHECK(cudaEventSynchronize(g_emb.copied));
    } else { /* no embed_fwd of these tokens before: fetch them now */
        emb_reserve(n);
        CUDA_CHECK(cudaEventSynchronize(g_emb.uploaded));
        CUDA_CHECK(cudaMemcpyAsync(g_emb.host, tokens, n * sizeof(int32_t), cudaMemcpyDeviceToHost, g_cu.stream));
        CUDA_CHECK(cudaStreamSynchronize(g_cu.stream));
        g_emb.src = tokens; /* the host copy now holds these ids (an encoder's word and type ids take turns) */
        g_emb.n = n;
    }
    for (size_t i = 0; i < n; i++)
        if (g_emb.host[i] < 0) fatal("embed_bwd: negative token id %d at row %zu", g_emb.host[i], i);
    /* counting sort of the rows by token: stable, so rows stay in order within a token */
    int32_t maxtok = 0;
    for (size_t i = 0; i < n; i++) maxtok = std::max(maxtok, g_emb.host[i]);
    std::vector<int32_t> start((size_t)maxtok + 2, 0);
    for (size_t i = 0; i < n; i++) start[(size_t)g_emb.host[i] + 1]++;
    for (size_t v = 0; v <= (size_t)maxtok; v++) start[v + 1] += start[v];
    int32_t *rows = g_emb.plan, *utok = g_emb.plan + n;
    std::vector<int32_t> fill(start.begin(), start.end() - 1);
    for (size_t i = 0; i < n; i++) rows[fill[(size_t)g_emb.host[i]]++] = (int32_t)i;
    int nu = 0;
    for (size_t v = 0; v <= (size_t)maxtok; v++)
        if (start[v + 1] > start[v]) utok[nu++] = (int32_t)v;
    int32_t *seg = utok + nu;
    for (int u = 0; u < nu; u++) seg[u] = start[(size_t)utok[u]];
    seg[nu] = (int32_t)n;
    size_t plan_ints = n + 2 * (size_t)nu + 1;
    CUDA_CHECK(cudaMemcpyAsync(g_emb.plan_dev, g_emb.plan, plan_ints * sizeof(int32_t), cudaMemcpyHostToDevice,
                               g_cu.stream));
    CUDA_CHECK(cudaEventRecord(g_emb.uploaded, g_cu.stream));
    dim3 grid(nu, CEIL_DIV(C, THREADS));
    embed_bwd_wte_kernel<T><<<grid, THREADS, 0, g_cu.stream>>>(dwte, (const T *)dout, g_emb.plan_dev,
                                                                g_emb.plan_dev + n, g_emb.plan_dev + n + nu, C);
    CUDA_CHECK_LAUNCH();
}

/* --------------------------------------------------------- normalization */

// LayerNorm: out = (x - mean) * rstd * w + b;  RMSNorm: out = x * rstd * w.  One warp per row.
// With a2 != NULL the row is first res = x + a2 (rounded to T, stored), and the norm is of res.
template <typename T, int W>
__global__ void norm_fwd_kernel(T *res, T *out, float *mean, float *rstd, const T *x, const T *a2, const T *w,
                                const T *b, int N, int C, float eps, int rms)
{
    int row = blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const T *xr = x + (size_t)row * C;
    if (a2) { /* fused residual add: the rounded sum is what gets normalized (and saved) */
        const T *ar = a2 + (size_t)row * C;
        T *rr = res + (size_t)row * C;
        for (int c = lane * W; c < C; c += 32 * W) {
            float f[W], g[W];
            load_f<T, W>(f, xr + c);
            load_f<T, W>(g, ar + c);
#pragma unroll
            for (int k = 0; k < W; k++) f[k] += g[k];
            store_f<T, W>(rr + c, f);
        }
        xr = rr; /* each lane re-reads only what it wrote itself */
    }
    float m = 0;
    if (!rms) {
        float s = 0;
        for (int c = lane * W; c < C; c += 32 * W) {
            float f[W];
            load_f<T, W>(f, xr + c);
#pragma unroll
            for (int k = 0; k < W; k++) s += f[k];
        }
        m = warp_sum(s) / C;
    }
    float v = 0;
    for (int c = lane * W; c < C; c += 32 * W) {
        float f[W];
        load_f<T, W>(f, xr + c);
#pragma unroll
        for (int k = 0; k < W; k++) v += (f[k] - m) * (f[k] - m);
    }
    float s = rsqrtf(warp_sum(v) / C + eps);
    T *o = out + (size_t)row * C;
    for (int c = lane * W; c < C; c += 32 * W) {
        float f[W], wf[W], bf[W];
        load_f<T, W>(f, xr + c);
        load_f<T, W>(wf, w + c);
        if (b) load_f<T, W>(bf, b + c);
#pragma unroll
        for (int k = 0; k < W; k++) f[k] = (f[k] - m) * s * wf[k] + (b ? bf[k] : 0.0f);
        store_f<T, W>(o + c, f);
    }
    if (lane == 0) {
        if (mean && !rms) mean[row] = m;
        rstd[row] = s;
    }
}

template <typename T>
static void norm_launch(T *res, T *out, float *mean, float *rstd, const T *x, const T *a2, const T *w, const T *b,
                        int N, int C, float eps, int rms)
{
    bool vec = vec_ok((size_t)C, pack_width<T>(), sizeof(T), x, out, a2) && vec_ok((size_t)C, pack_width<T>(),
                                                                                      sizeof(T), res, w, b);
    LAUNCH_VEC(vec, norm_fwd_kernel, CEIL_DIV(N, WARPS_PER_BLOCK), THREADS, res, out, mean, rstd, x, a2, w, b, N, C,
               eps, rms);
}

template <typename T>
static void cu_norm_fwd(void *out, float *mean, float *rstd, const void *inp, const void *w, const void *b, int N,
                        int C, float eps, int rms)
{
    CUDA_PROF("norm_fwd");
    norm_launch<T>(NULL, (T *)out, mean, rstd, (const T *)inp, NULL, (const T *)w, (const T *)b, N, C, eps, rms);
}

template <typename T>
static void cu_add_norm_fwd(void *res, void *out, float *mean, float *rstd, const void *a, const void *b,
                            const void *w, const void *bias, int N, int C, float eps, int rms)
{
    CUDA_PROF("add_norm_fwd");
    norm_launch<T>((T *)res, (T *)out, mean, rstd, (const T *)a, (const T *)b, (const T *)w, (const T *)bias, N, C,
                   eps, rms);
}

// dx += rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dout * w   [RMSNorm: no mean(g)]
template <typename T, int W>
__global__ void norm_bwd_rows_kernel(T *dinp, const T *dout, const T *inp, const T *w, const float *mean,
                                     const float *rstd, int N, int C, int rms)
{
    int row = blockIdx.x * WARPS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const T *d = dout + (size_t)row * C, *x = inp + (size_t)row * C;
    float m = rms ? 0.0f : mean[row], s = rstd[row];
    float gm = 0, gx = 0;
    for (int c = lane * W; c < C; c += 32 * W) {
        float df[W], xf[W], wf[W];
        load_f<T, W>(df, d + c);
        load_f<T, W>(xf, x + c);
        load_f<T, W>(wf, w + c);
#pragma unroll
        for (int k = 0; k < W; k++) {
            float g = df[k] * wf[k];
            gm += g;
            gx += g * ((xf[k] - m) * s);
        }
    }
    gm = rms ? 0.0f : warp_sum(gm) / C;
    gx = warp_sum(gx) / C;
    T *dx = dinp + (size_t)row * C;
    for (int c = lane * W; c < C; c += 32 * W) {
        float df[W], xf[W], wf[W], o[W];
        load_f<T, W>(df, d + c);
        load_f<T, W>(xf, x + c);
        load_f<T, W>(wf, w + c);
        load_f<T, W>(o, dx + c);
#pragma unroll
        for (int k = 0; k < W; k++) o[k] += s * (df[k] * wf[k] - gm - ((xf[k] - m) * s) * gx);
        store_f<T, W>(dx + c, o);
    }
}

// partial_w[chunk][c] = sum over the chunk's rows of dout * xhat; partial_b likewise of dout
template <typename T>
__global__ void norm_bwd_cols_kernel(float *partial_w, float *partial_b, const T *dout, const T *inp,
                                     const float *mean, const float *rstd, int N, int C, int rms, int rows_per_chunk)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int r0 = blockIdx.y * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
    float sw = 0, sb = 0;
    for (int r = r0; r < r1; r++) {
        float d = to_f(dout[(size_t)r * C + c]);
        float m = rms ? 0.0f : mean[r];
        sw += d * ((to_f(inp[(size_t)r * C + c]) - m) * rstd[r]);
        sb += d;
    }
    partial_w[(size_t)blockIdx.y * C + c] = sw;
    if (partial_b) partial_b[(size_t)blockIdx.y * C + c] = sb;
}

__global__ void partial_finish_kernel(float *dst, const float *partial, int nchunk, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0;
    for (int k = 0; k < nchunk; k++) s += partial[(size_t)k * C + c];
    dst[c] += s;
}

/* dw += the fixed-order sum of nchunk partial rows pw (C columns); db likewise of pb (either NULL: skipped). */
static void norm_bwd_finish(float *dw, float *db, const float *pw, const float *pb, int nchunk, int C)
{
    int colblocks = CEIL_DIV(C, THREADS);
    if (dw) {
        partial_finish_kernel<<<colblocks, THREADS, 0, g_cu.stream>>>(dw, pw, nchunk, C);
        CUDA_CHECK_LAUNCH();
    }
    if (db) {
        partial_finish_kernel<<<colblocks, THREADS, 0, g_cu.stream>>>(db, pb, nchunk, C);
        CUDA_CHECK_LAUNCH();
    }
}

/* The one-pass norm backward: a lane holds P packs of a row (P <= NORM_MAX_PACKS: rows up to
 * 32*W*8 elements, 2048 in bf16). With P <= NORM_KEEP_PACKS the row stays in registers between
 * the two passes; longer rows (RMSNorm only: no bias sums to hold) are read again (from L1). */
#define NORM_MAX_PACKS 8
#define NORM_KEEP_PACKS 4

// norm_bwd_rows_kernel and the column partials in one pass: block blockIdx.x owns rows
// [r0, r0 + rows_per_block); each warp takes every WARPS_PER_BLOCK-th of them, keeps its lanes'
// sums of dout * xhat (and of dout when HAS_B) in registers, and the warps' sums are added in warp
// order: partial_w[block][c], partial_b[block][c].
template <typename T, int W, int P, bool KEEP, bool HAS_B>
__global__ void __launch_bounds__(THREADS) norm_bwd_fused_kernel(T *dinp, float *partial_w, float *partial_b,
                                                                 const T *dout, const T *inp, const T *w,
                                                                 const float *mean, const float *rstd, int N, int C,
                                                                 int rms, int rows_per_block)
{
    __shared__ float red[WARPS_PER_BLOCK][32 * W];
    const int KP = KEEP ? P : 1; /* packs held between the passes */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int r0 = blockIdx.x * rows_per_block, r1 = min(N, r0 + rows_per_block);
    float aw[P][W], ab[HAS_B ? P : 1][W];
#pragma unroll
    for (int p = 0; p < P; p++)
#pragma unroll
        for (int k = 0; k < W; k++) {
            aw[p][k] = 0;
            if (HAS_B) ab[HAS_B ? p : 0][k] = 0;
        }
    for (int row = r0 + warp; row < r1; row += WARPS_PER_BLOCK) {
        const T *d = dout + (size_t)row * C, *x = inp + (size_t)row * C;
        float m = rms ? 0.0f : mean[row], s = rstd[row];
        float dk[KP][W], xk[KP][W], gm = 0, gx = 0;
#pragma unroll
        for (int p = 0; p < P; p++) {
            int c = (p * 32 + lane) * W;
            if (c >= C) continue;
            float df[W], xh[W], wf[W];
            load_f<T, W>(df, d + c);
            load_f<T, W>(xh, x + c);
            load_f<T, W>(wf, w + c);
#pragma unroll
            for (int k = 0; k < W; k++) {
                xh[k] = (xh[k] - m) * s;
                float g = df[k] * wf[k];
                gm += g;
                gx += g * xh[k];
                if (KEEP) dk[KEEP ? p : 0][k] = df[k], xk[KEEP ? p : 0][k] = xh[k];
            }
        }
        gm = rms ? 0.0f : warp_sum(gm) / C;
        gx = warp_sum(gx) / C;
        T *dx = dinp + (size_t)row * C;
#pragma unroll
        for (int p = 0; p < P; p++) {
            int c = (p * 32 + lane) * W;
            if (c >= C) continue;
            float df[W], xh[W], wf[W], o[W];
            if (KEEP) {
#pragma unroll
                for (int k = 0; k < W; k++) df[k] = dk[KEEP ? p : 0][k], xh[k] = xk[KEEP ? p : 0][k];
            } else {
                load_f<T, W>(df, d + c);
                load_f<T, W>(xh, x + c);
#pragma unroll
                for (int k = 0; k < W; k++) xh[k] = (xh[k] - m) * s;
            }
            load_f<T, W>(wf, w + c);
            load_f<T, W>(o, dx + c);
#pragma unroll
            for (int k = 0; k < W; k++) {
                o[k] += s * (df[k] * wf[k] - gm - xh[k] * gx);
                aw[p][k] += df[k] * xh[k];
                if (HAS_B) ab[HAS_B ? p : 0][k] += df[k];
            }
            store_f<T, W>(dx + c, o);
        }
    }
    /* the warps' sums, one pack of columns (32*W) at a time */
#pragma unroll
    for (int p = 0; p < P; p++)
        for (int which = 0; which < (HAS_B ? 2 : 1); which++) {
#pragma unroll
            for (int k = 0; k < W; k++) red[warp][lane * W + k] = which ? ab[HAS_B ? p : 0][k] : aw[p][k];
            __syncthreads();
            float *dst = (which ? partial_b : partial_w) + (size_t)blockIdx.x * C;
            for (int j = threadIdx.x; j < 32 * W; j += THREADS) {
                int c = p * 32 * W + j;
                if (c >= C) continue;
                float sum = 0;
                for (int k = 0; k < WARPS_PER_BLOCK; k++) sum += red[k][j];
                dst[c] = sum;
            }
            __syncthreads();
        }
}

/* The one-pass norm backward where the row fits (16-byte accesses; rows past NORM_KEEP_PACKS packs
 * per lane only without a bias); false when it does not (the caller uses the two kernels). dw may be
 * NULL when db is not (its partial sums are then formed and left unused). */
template <typename T>
static bool norm_bwd_fused(T *dinp, float *dw, float *db, const T *dout, const T *inp, const T *w, const float *mean,
                           const float *rstd, int N, int C, int rms)
{
    const int W = pack_width<T>();
    int P = CEIL_DIV(C, 32 * W);
    if (P > (db ? NORM_KEEP_PACKS : NORM_MAX_PACKS) || !vec_ok((size_t)C, W, sizeof(T), dinp, dout, inp) ||
        !vec_ok((size_t)C, W, sizeof(T), w))
        return false;
    /* a few blocks per SM, each a contiguous run of rows */
    int nblock = std::max(1, std::min(4 * g_cu.sm_count, CEIL_DIV(N, WARPS_PER_BLOCK)));
    int rows_per_block = CEIL_DIV(N, nblock);
    nblock = CEIL_DIV(N, rows_per_block);
    float *pw = (float *)cuda_scratch(2 * (size_t)nblock * C * sizeof(float));
    float *pb = db ? pw + (size_t)nblock * C : NULL;
#define NORM_FUSED_LAUNCH(PP, KEEP, HB)                                                                              \
    norm_bwd_fused_kernel<T, W, PP, KEEP, HB><<<nblock, THREADS, 0, g_cu.stream>>>(dinp, pw, pb, dout, inp, w, mean, \
                                                                                  rstd, N, C, rms, rows_per_block)
#define NORM_FUSED_KEEP(PP) (db ? NORM_FUSED_LAUNCH(PP, true, true) : NORM_FUSED_LAUNCH(PP, true, false))
    switch (P) {
    case 1: NORM_FUSED_KEEP(1); break;
    case 2: NORM_FUSED_KEEP(2); break;
    case 3: NORM_FUSED_KEEP(3); break;
    case 4: NORM_FUSED_KEEP(4); break;
    case 5: NORM_FUSED_LAUNCH(5, false, false); break;
    case 6: NORM_FUSED_LAUNCH(6, false, false); break;
    case 7: NORM_FUSED_LAUNCH(7, false, false); break;
    default: NORM_FUSED_LAUNCH(8, false, false); break;
    }
#undef NORM_FUSED_KEEP
#undef NORM_FUSED_LAUNCH
    CUDA_CHECK_LAUNCH();
    norm_bwd_finish(dw, db, pw, pb, nblock, C);
    return true;
}

/* The previous two kernels, for rows the one-pass kernel does not take: dinp by rows (also alone,
 * for frozen weights), then the column partials of dw and db and their fixed-order sums. */
template <typename T>
static void norm_bwd_rows(T *dinp, const T *dout, const T *inp, const T *w, const float *mean, const float *rstd,
                          int N, int C, int rms)
{
    bool vec = vec_ok((size_t)C, pack_width<T>(), sizeof(T), dinp, dout, inp) &&
               vec_ok((size_t)C, pack_width<T>(), sizeof(T), w);
    LAUNCH_VEC(vec, norm_bwd_rows_kernel, CEIL_DIV(N, WARPS_PER_BLOCK), THREADS, dinp, dout, inp, w, mean, rstd, N, C,
               rms);
}

template <typename T>
static void norm_bwd_cols(float *dw, float *db, const T *dout, const T *inp, const float *mean, const float *rstd,
                          int N, int C, int rms)
{
    /* column partials: enough chunks to fill the GPU, at least 32 rows each */
    int colblocks = CEIL_DIV(C, THREADS);
    int nchunk = std::max(1, std::min(CEIL_DIV(4 * g_cu.sm_count, colblocks), CEIL_DIV(N, 32)));
    int rows_per_chunk = CEIL_DIV(N, nchunk);
    nchunk = CEIL_DIV(N, rows_per_chunk);
    float *pw = (float *)cuda_scratch(2 * (size_t)nchunk * C * sizeof(float));
    float *pb = db ? pw + (size_t)nchunk * C : NULL;
    norm_bwd_cols_kernel<T><<<dim3(colblocks, nchunk), THREADS, 0, g_cu.stream>>>(pw, pb, dout, inp, mean, rstd, N,
                                                                                 C, rms, rows_per_chunk);
    CUDA_CHECK_LAUNCH();
    norm_bwd_finish(dw, db, pw, pb, nchunk, C);
}

// dinp += d(norm)/d(inp); dw += sum of dout * xhat; db += sum of dout. dw and db may be NULL (frozen
// weights): with both NULL only dinp is formed, without any column sums.
template <typename T>
static void cu_norm_bwd(void *dinp, float *dw, float *db, const void *dout, const void *inp, const void *w,
                        const float *mean, const float *rstd, int N, int C, int rms)
{
    CUDA_PROF("norm_bwd");
    T *dx = (T *)dinp;
    const T *d = (const T *)dout, *x = (const T *)inp, *wt = (const T *)w;
    bool sums = dw || db;
    if (sums && norm_bwd_fused<T>(dx, dw, db, d, x, wt, mean, rstd, N, C, rms)) return;
    norm_bwd_rows<T>(dx, d, x, wt, mean, rstd, N, C, rms);
    if (sums) norm_bwd_cols<T>(dw, db, d, x, mean, rstd, N, C, rms);
}

/* ----------------------------------------------------------- element-wise */

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_CUBE 0.044715f

__device__ __forceinline__ float gelu_f(float v)
{
    return 0.5f * v * (1.0f + tanhf(GELU_SCALE * (v + GELU_CUBE * v * v * v)));
}

__device__ __forceinline__ float gelu_grad_f(float v)
{
    float th = tanhf(GELU_SCALE * (v + GELU_CUBE * v * v * v));
    float sech2 = 1.0f - th * th;
    return 0.5f * (1.0f + th) + 0.5f * v * sech2 * GELU_SCALE * (1.0f + 3.0f * GELU_CUBE * v * v);
}

#define GELU_RSQRT2 0.70710678118654752f  /* 1/sqrt(2) */
#define GELU_RSQRT2PI 0.39894228040143268f /* 1/sqrt(2 pi) */

// the exact GELU 0.5 x (1 + erf(x / sqrt 2)) and its derivative Phi(x) + x phi(x)
__device__ __forceinline__ float gelu_erf_f(float v) { return 0.5f * v * (1.0f + erff(v * GELU_RSQRT2)); }
__device__ __forceinline__ float gelu_erf_grad_f(float v)
{
    return 0.5f * (1.0f + erff(v * GELU_RSQRT2)) + v * expf(-0.5f * v * v) * GELU_RSQRT2PI;
}

/* op 0: out = gelu(a);  1: out = b * gelu'(a);  2: out = a + b;  3: out = gelu_erf(a);  4: out = b * gelu_erf'(a) */
template <typename T, int W> __global__ void eltwise_kernel(T *out, const T *a, const T *b, size_t n, int op)
{
    size_t stride = (size_t)gridDim.x * blockDim.x * W;
    for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * W; i < n; i += stride) {
        float x[W], y[W];
        load_f<T, W>(x, a + i);
        if (op != 0 && op != 3) load_f<T, W>(y, b + i);
#pragma unroll
        for (int k = 0; k < W; k++)
            x[k] = op == 0   ? gelu_f(x[k])
                   : op == 1 ? y[k] * gelu_grad_f(x[k])
                   : op == 2 ? x[k] + y[k]
                   : op == 3 ? gelu_erf_f(x[k])
                             : y[k] * gelu_erf_grad_f(x[k]);
        store_f<T, W>(out + i, x);
    }
}

template <typename T> void cu_eltwise(void *out, const void *a, const void *b, size_t n, int op)
{
    if (!n) return;
    const int PW = pack_width<T>();
    bool vec = vec_ok(n, PW, sizeof(T), out, a, b);
    LAUNCH_VEC(vec, eltwise_kernel, grid_for(n / (vec ? PW : 1), THREADS), THREADS, (T *)out, (const T *)a,
               (const T *)b, n, op);
}

template void cu_eltwise<float>(void *, const void *, const void *, size_t, int);
template void cu_eltwise<bf16>(void *, const void *, const void *, size_t, int);

template <typename T> static void cu_gelu_fwd(void *out, const void *inp, size_t n)
{
    CUDA_PROF("gelu_fwd");
    cu_eltwise<T>(out, inp, NULL, n, 0);
}
template <typename T> static void cu_gelu_bwd(void *dinp, const void *inp, const void *dout, size_t n)
{
    CUDA_PROF("gelu_bwd");
    cu_eltwise<T>(dinp, inp, dout, n, 1);
}
template <typename T> static void cu_add(void *out, const void *a, const void *b, size_t n)
{
    CUDA_PROF("add");
    cu_eltwise<T>(out, a, b, n, 2);
}
template <typename T> static void cu_gelu_erf_fwd(void *out, const void *inp, size_t n)
{
    CUDA_PROF("gelu_erf_fwd");
    cu_eltwise<T>(out, inp, NULL, n, 3);
}
template <typename T> static void cu_gelu_erf_bwd(void *dinp, const void *inp, const void *dout, size_t n)
{
    CUDA_PROF("gelu_erf_bwd");
    cu_eltwise<T>(dinp, inp, dout, n, 4);
}

/* Rows of C elements between index lists (backend.h gather_rows / scatter_rows): dst row
 * (dst_idx ? dst_idx[m] : m) = src row (src_idx ? src_idx[m] : m), m < M. */
template <typename T, int W>
__global__ void copy_rows_kernel(T *dst, const T *src, const int32_t *dst_idx, const int32_t *src_idx, int M, int C)
{
    size_t n = (size_t)M * C, stride = (size_t)gridDim.x * blockDim.x * W;
    for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * W; i < n; i += stride) {
        size_t m = i / C, c = i % C;
        size_t rd = dst_idx ? (size_t)dst_idx[m] : m, rs = src_idx ? (size_t)src_idx[m] : m;
        *reinterpret_cast<Vec<T, W> *>(dst + rd * C + c) = *reinterpret_cast<const Vec<T, W> *>(src + rs * C + c);
    }
}

template <typename T> static void copy_rows(void *dst, const void *src, const int32_t *di, const int32_t *si, int M, int C)
{
    if (M <= 0) return;
    const int PW = pack_width<T>();
    bool vec = C % PW == 0 && vec_ok((size_t)M * C, PW, sizeof(T), dst, src);
    size_t n = (size_t)M * C;
    LAUNCH_VEC(vec, copy_rows_kernel, grid_for(n / (vec ? PW : 1), THREADS), THREADS, (T *)dst, (const T *)src, di, si,
               M, C);
}
template <typename T> static void cu_gather_rows(void *out, const void *inp, const int32_t *idx, int M, int C)
{
    CUDA_PROF("gather_rows");
    copy_rows<T>(out, inp, NULL, idx, M, C);
}
template <typename T> static void cu_scatter_rows(void *dinp, const void *dout, const int32_t *idx, int M, int C)
{
    CUDA_PROF("scatter_rows");
    copy_rows<T>(dinp, dout, idx, NULL, M, C);
}

// out (N,F) = silu(gate) * up; inp rows [gate (F) | up (F)]. A warp walks whole rows (grid-stride over
// rows, its lanes over a row's W-element vectors), so no element index is divided by F.
template <typename T, int W> __global__ void swiglu_fwd_kernel(T *out, const T *inp, int N, int F)
{
    size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32, warps = (size_t)gridDim.x * blockDim.x / 32;
    for (size_t row = warp; row < (size_t)N; row += warps)
    for (int j = (int)(threadIdx.x % 32) * W; j < F; j += 32 * W) {
        size_t i = row * F + j;
        const T *g = inp + row * 2 * F + j;
        float gf[W], uf[W];
        load_f<T, W>(gf, g);
        load_f<T, W>(uf, g + F);
#pragma unroll
        for (int k = 0; k < W; k++) gf[k] = gf[k] / (1.0f + expf(-gf[k])) * uf[k];
        store_f<T, W>(out + i, gf);
    }
}

// dgate = dout * up * s * (1 + g (1 - s)),  dup = dout * g * s,  s = sigmoid(g)
template <typename T, int W> __global__ void swiglu_bwd_kernel(T *dinp, const T *inp, const T *dout, int N, int F)
{
    size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32, warps = (size_t)gridDim.x * blockDim.x / 32;
    for (size_t row = warp; row < (size_t)N; row += warps)
    for (int j = (int)(threadIdx.x % 32) * W; j < F; j += 32 * W) {
        size_t i = row * F + j;
        const T *g = inp + row * 2 * F + j;
        T *dg = dinp + row * 2 * F + j;
        float gf[W], uf[W], df[W], dgf[W], duf[W];
        load_f<T, W>(gf, g);
        load_f<T, W>(uf, g + F);
        load_f<T, W>(df, dout + i);
#pragma unroll
        for (int k = 0; k < W; k++) {
            float s = 1.0f / (1.0f + expf(-gf[k]));
            duf[k] = df[k] * gf[k] * s;
            dgf[k] = df[k] * uf[k] * s * (1.0f + gf[k] * (1.0f - s));
        }
        store_f<T, W>(dg, dgf);
        store_f<T, W>(dg + F, duf);
    }
}

/* One warp per row, up to the grid-stride cap (the rows are the warps' loop). */
static inline unsigned swiglu_grid(int N) { return grid_for((size_t)N * 32, THREADS); }

template <typename T> static void cu_swiglu_fwd(void *out, const void *inp, int N, int F)
{
    CUDA_PROF("swiglu_fwd");
    const int PW = pack_width<T>();
    bool vec = vec_ok((size_t)F, PW, sizeof(T), out, inp);
    LAUNCH_VEC(vec, swiglu_fwd_kernel, swiglu_grid(N), THREADS, (T *)out, (const T *)inp, N, F);
}

template <typename T> static void cu_swiglu_bwd(void *dinp, const void *inp, const void *dout, int N, int F)
{
    CUDA_PROF("swiglu_bwd");
    const int PW = pack_width<T>();
    bool vec = vec_ok((size_t)F, PW, sizeof(T), dinp, inp, dout);
    LAUNCH_VEC(vec, swiglu_bwd_kernel, swiglu_grid(N), THREADS, (T *)dinp, (const T *)inp, (const T *)dout, N, F);
}

/* ------------------------------------------------------------------ RoPE */

// For i < hd/2, angle = pos * inv_freq[i] (fp32, as HF), cos/sin in double as the CPU:
//   x1' = x1 cos - x2 sin,  x2' = x2 cos + x1 sin;   backward: sin -> -sin.
// One thread per (row, i), looping over the q and k heads.
template <typename T>
__global__ void rope_kernel(T *qkv, const float *inv_freq, int N, int T_, int nh, int nkv, int hd, int pos0,
                            float sign)
{
    int half = hd / 2, row = (nh + 2 * nkv) * hd;
    size_t n = (size_t)N * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        size_t r = idx / half;
        int j = (int)(idx % half);
        int pos = pos0 + (int)(r % T_);
        float ang = (float)pos * inv_freq[j];
        double sd, cd;
        sincos((double)ang, &sd, &cd);
        float c = (float)cd, s = sign * (float)sd;
        T *x = qkv + r * row;
        for (int h = 0; h < nh + nkv; h++) {
            float x1 = to_f(x[(size_t)h * hd + j]), x2 = to_f(x[(size_t)h * hd + j + half]);
            x[(size_t)h * hd + j] = from_f<T>(x1 * c - x2 * s);
            x[(size_t)h * hd + j + half] = from_f<T>(x2 * c + x1 * s);
        }
    }
}

// The same with V consecutive i per thread (half % V == 0, rows aligned to V elements): each head's
// two halves move as V-element vectors, so a warp reads and writes whole 32-byte sectors with a
// quarter of the instructions; the angles, cos and sin are those of rope_kernel, value for value.
template <typename T, int V>
__global__ void rope_vec_kernel(T *qkv, const float *inv_freq, int N, int T_, int nh, int nkv, int hd, int pos0,
                                float sign)
{
    int half = hd / 2, per_row = half / V, row = (nh + 2 * nkv) * hd;
    size_t n = (size_t)N * per_row;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
        size_t r = idx / per_row;
        int j0 = (int)(idx % per_row) * V;
        int pos = pos0 + (int)(r % T_);
        float c[V], sn[V];
#pragma unroll
        for (int k = 0; k < V; k++) {
            float ang = (float)pos * inv_freq[j0 + k];
            double sd, cd;
            sincos((double)ang, &sd, &cd);
            c[k] = (float)cd;
            sn[k] = sign * (float)sd;
        }
        T *x = qkv + r * row + j0;
#pragma unroll 4
        for (int h = 0; h < nh + nkv; h++) {
            float x1[V], x2[V];
            load_f<T, V>(x1, x + (size_t)h * hd);
            load_f<T, V>(x2, x + (size_t)h * hd + half);
            float y1[V], y2[V];
#pragma unroll
            for (int k = 0; k < V; k++) {
                y1[k] = x1[k] * c[k] - x2[k] * sn[k];
                y2[k] = x2[k] * c[k] + x1[k] * sn[k];
            }
            store_f<T, V>(x + (size_t)h * hd, y1);
            store_f<T, V>(x + (size_t)h * hd + half, y2);
        }
    }
}

template <typename T>
static void rope_launch(void *qkv, const float *inv_freq, int B, int T_, int nh, int nkv, int hd, int pos0, float sign)
{
    const int V = 4;
    int half = hd / 2;
    if (half % V == 0 && ((uintptr_t)qkv % (V * sizeof(T))) == 0) {
        size_t n = (size_t)B * T_ * (half / V);
        rope_vec_kernel<T, V><<<grid_for(n, THREADS), THREADS, 0, g_cu.stream>>>((T *)qkv, inv_freq, B * T_, T_, nh,
                                                                                 nkv, hd, pos0, sign);
    } else {
        size_t n = (size_t)B * T_ * half;
        rope_kernel<T><<<grid_for(n, THREADS), THREADS, 0, g_cu.stream>>>((T *)qkv, inv_freq, B * T_, T_, nh, nkv, hd,
                                                                          pos0, sign);
    }
    CUDA_CHECK_LAUNCH();
}

template <typename T>
static void cu_rope_fwd(void *qkv, const float *inv_freq, int B, int T_, int nh, int nkv, int hd, int pos0)
{
    CUDA_PROF("rope_fwd");
    rope_launch<T>(qkv, inv_freq, B, T_, nh, nkv, hd, pos0, 1.0f);
}

template <typename T>
static void cu_rope_bwd(void *dqkv, const float *inv_freq, int B, int T_, int nh, int nkv, int hd, int pos0)
{
    CUDA_PROF("rope_bwd");
    rope_launch<T>(dqkv, inv_freq, B, T_, nh, nkv, hd, pos0, -1.0f);
}

/* ------------------------------------------------------------------ loss */

#define XENT_THREADS 512
#define LOG2E_F 1.4426950408889634f

/* Block-wide reduction of (max, sum of exp) pairs in a fixed order. */
__device__ void block_max_sum(float &m, float &s)
{
    __shared__ float sm_m[32], sm_s[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        float mm = fmaxf(m, m2);
        s = (m == -INFINITY ? 0.0f : s * __expf(m - mm)) + (m2 == -INFINITY ? 0.0f : s2 * __expf(m2 - mm));
        m = mm;
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_s[warp] = s;
    }
    __syncthreads();
    float mm = -INFINITY;
    for (int k = 0; k < nw; k++) mm = fmaxf(mm, sm_m[k]);
    float ss = 0;
    for (int k = 0; k < nw; k++) ss += sm_m[k] == -INFINITY ? 0.0f : sm_s[k] * expf(sm_m[k] - mm);
    m = mm;
    s = ss;
}

__device__ __forceinline__ void online_add(float &m, float &s, float x)
{
    if (x > m) {
        s = s * __expf(m - x) + 1.0f;
        m = x;
    } else {
        s += __expf(x - m);
    }
}

// loss = logsumexp(l) - l[target];  l <- (softmax(l) - onehot(target)) * dscale.  One block per row;
// the row is split into an unaligned head, a body of 16-byte packs and a tail.
template <typename T>
__global__ void xent_kernel(float *losses, T *logits, size_t ld, const int32_t *targets, int V, float dscale)
{
    const int PW = pack_width<T>();
    int row = blockIdx.x;
    T *l = logits + (size_t)row * ld;
    int tg = targets[row];
    if (tg < 0) {
        if (threadIdx.x == 0) losses[row] = 0;
        if (dscale != 0)
            for (int j = threadIdx.x; j < V; j += blockDim.x) l[j] = from_f<T>(0.0f);
        return;
    }
    int head = (int)(((16 - (uintptr_t)l % 16) % 16) / sizeof(T));
    if (head > V) head = V;
    int nvec = (V - head) / PW, body_end = head + nvec * PW;
    float m = -INFINITY, s = 0;
    for (int j = threadIdx.x; j < head; j += blockDim.x) online_add(m, s, to_f(l[j]));
    for (int j = body_end + threadIdx.x; j < V; j += blockDim.x) online_add(m, s, to_f(l[j]));
    for (int k = threadIdx.x; k < nvec; k += blockDim.x) {
        float f[PW];
        load_f<T, PW>(f, l + head + (size_t)k * PW);
#pragma unroll
        for (int i = 0; i < PW; i++) online_add(m, s, f[i]);
    }
    block_max_sum(m, s);
    float lse = m + logf(s);
    if (threadIdx.x == 0) losses[row] = lse - to_f(l[tg]);
    if (dscale == 0) return;
    __syncthreads(); /* l[tg] is read above before anyone overwrites it */
    for (int j = threadIdx.x; j < head; j += blockDim.x)
        l[j] = from_f<T>(expf(to_f(l[j]) - lse) * dscale - (j == tg ? dscale : 0.0f));
    for (int j = body_end + threadIdx.x; j < V; j += blockDim.x)
        l[j] = from_f<T>(expf(to_f(l[j]) - lse) * dscale - (j == tg ? dscale : 0.0f));
    for (int k = threadIdx.x; k < nvec; k += blockDim.x) {
        float f[PW];
        int j0 = head + k * PW;
        load_f<T, PW>(f, l + j0);
#pragma unroll
        for (int i = 0; i < PW; i++) f[i] = expf(f[i] - lse) * dscale - (j0 + i == tg ? dscale : 0.0f);
        store_f<T, PW>(l + j0, f);
    }
}

/* The one-pass cross-entropy: a row of up to XENT1_THREADS * XENT1_PACKS 16-byte packs lives in
 * registers (GPT-2's 50257 bf16 logits: 7 packs per thread), so it is read once and written once. */
#define XENT1_THREADS 768
#define XENT1_PACKS 9

/* Block-wide max, then sum, in a fixed order (warp shuffles, then warps in order). */
__device__ float block_reduce(float v, bool is_max)
{
    __shared__ float sm[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    __syncthreads(); /* sm is reused by consecutive calls */
    if (lane == 0) sm[warp] = v;
    __syncthreads();
    float r = is_max ? -INFINITY : 0.0f;
    for (int k = 0; k < nw; k++) r = is_max ? fmaxf(r, sm[k]) : r + sm[k];
    return r;
}

/* Element i of a pack as fp32. For bf16 through volatile asm, so that the compiler converts again in
 * each pass instead of keeping every converted value alive (which spilled registers). */
template <typename T, int W> __device__ __forceinline__ float pack_elem(const Vec<T, W> &x, int i) { return to_f(x.v[i]); }
template <> __device__ __forceinline__ float pack_elem<bf16, 8>(const Vec<bf16, 8> &x, int i)
{
    uint32_t u = reinterpret_cast<const uint32_t *>(x.v)[i / 2], r;
    if (i % 2) asm volatile("and.b32 %0, %1, 0xffff0000;" : "=r"(r) : "r"(u));
    else asm volatile("shl.b32 %0, %1, 16;" : "=r"(r) : "r"(u));
    return __uint_as_float(r);
}

// As xent_kernel, for rows whose start is 16-byte aligned and that fit in the block's registers:
// max, then sum of exp2((l - max) * log2e), then (softmax - onehot) * dscale, from one read.
template <typename T>
__global__ void __launch_bounds__(XENT1_THREADS) xent_onepass_kernel(float *losses, T *logits, size_t ld,
                                                                     const int32_t *targets, int V, float dscale)
{
    const int PW = pack_width<T>();
    int row = blockIdx.x;
    T *l = logits + (size_t)row * ld;
    int tg = targets[row];
    if (tg < 0) {
        if (threadIdx.x == 0) losses[row] = 0;
        if (dscale != 0)
            for (int j = threadIdx.x; j < V; j += blockDim.x) l[j] = from_f<T>(0.0f);
        return;
    }
    int nvec = V / PW, tail = nvec * PW; /* whole packs, then the last V % PW elements */
    Vec<T, PW> x[XENT1_PACKS];
    float m = -INFINITY;
#pragma unroll
    for (int p = 0; p < XENT1_PACKS; p++) {
        int k = p * XENT1_THREADS + threadIdx.x;
        if (k < nvec) {
            x[p] = *reinterpret_cast<const Vec<T, PW> *>(l + (size_t)k * PW);
#pragma unroll
            for (int i = 0; i < PW; i++) m = fmaxf(m, pack_elem<T, PW>(x[p], i));
        }
    }
    T xt = threadIdx.x < V - tail ? l[tail + threadIdx.x] : from_f<T>(0.0f);
    if (threadIdx.x < V - tail) m = fmaxf(m, to_f(xt));
    float lt = threadIdx.x == 0 ? to_f(l[tg]) : 0.0f; /* read before the barriers below */
    m = block_reduce(m, true);
    float ml = m * LOG2E_F, s = 0;
#pragma unroll
    for (int p = 0; p < XENT1_PACKS; p++) {
        int k = p * XENT1_THREADS + threadIdx.x;
        if (k < nvec)
#pragma unroll
            for (int i = 0; i < PW; i++) s += exp2f(pack_elem<T, PW>(x[p], i) * LOG2E_F - ml);
    }
    if (threadIdx.x < V - tail) s += exp2f(to_f(xt) * LOG2E_F - ml);
    s = block_reduce(s, false);
    float lse = m + logf(s);
    if (threadIdx.x == 0) losses[row] = lse - lt;
    if (dscale == 0) return;
    /* l[tg] was read before the reductions' barriers, so the row may be overwritten now */
    float lsel = lse * LOG2E_F;
#pragma unroll
    for (int p = 0; p < XENT1_PACKS; p++) {
        int k = p * XENT1_THREADS + threadIdx.x;
        if (k < nvec) {
            float f[PW];
#pragma unroll
            for (int i = 0; i < PW; i++)
                f[i] = exp2f(pack_elem<T, PW>(x[p], i) * LOG2E_F - lsel) * dscale - (k * PW + i == tg ? dscale : 0.0f);
            store_f<T, PW>(l + (size_t)k * PW, f);
        }
    }
    if (threadIdx.x < V - tail)
        l[tail + threadIdx.x] =
            from_f<T>(exp2f(to_f(xt) * LOG2E_F - lsel) * dscale - (tail + (int)threadIdx.x == tg ? dscale : 0.0f));
}

template <typename T>
void cu_xent_rows(float *losses, T *logits, size_t ld, const int32_t *targets, int N, int V, float dscale)
{
    if (N <= 0) return;
    const int PW = pack_width<T>();
    /* the one-pass kernel where the row fits its registers and is 16-byte aligned, else the two-pass one */
    bool one = (size_t)V <= (size_t)XENT1_THREADS * XENT1_PACKS * PW && (uintptr_t)logits % 16 == 0 &&
               (ld * sizeof(T)) % 16 == 0 && V % PW < XENT1_THREADS;
    if (one) xent_onepass_kernel<T><<<N, XENT1_THREADS, 0, g_cu.stream>>>(losses, logits, ld, targets, V, dscale);
    else xent_kernel<T><<<N, XENT_THREADS, 0, g_cu.stream>>>(losses, logits, ld, targets, V, dscale);
    CUDA_CHECK_LAUNCH();
}
template void cu_xent_rows<float>(float *, float *, size_t, const int32_t *, int, int, float);
template void cu_xent_rows<bf16>(float *, bf16 *, size_t, const int32_t *, int, int, float);

template <typename T>
static void cu_xent_fwd_bwd(float *losses, void *logits, const int32_t *targets, int N, int V, float dscale)
{
    CUDA_PROF("xent");
    cu_xent_rows<T>(losses, (T *)logits, (size_t)V, targets, N, V, dscale);
}

/* The cross-entropy over vocabulary chunks (backend.h xent_chunk_stats / xent_chunk_grad): one block
 * per row; stats (max, sum of exp(l - max), target logit) fold in one chunk at a time. */
template <typename T>
__global__ void xent_chunk_stats_kernel(float *stats, const T *logits, const int32_t *targets, int V, int v0)
{
    int row = blockIdx.x, tg = targets[row];
    float *st = stats + 3 * (size_t)row;
    if (tg < 0) {
        if (v0 == 0 && threadIdx.x == 0) st[0] = -INFINITY, st[1] = 0.0f, st[2] = 0.0f;
        return;
    }
    const T *l = logits + (size_t)row * V;
    float m = -INFINITY, s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) online_add(m, s, to_f(l[j]));
    block_max_sum(m, s);
    if (threadIdx.x != 0) return;
    float m0 = v0 == 0 ? -INFINITY : st[0], s0 = v0 == 0 ? 0.0f : st[1];
    float mm = fmaxf(m0, m);
    st[1] = (m0 == -INFINITY ? 0.0f : s0 * expf(m0 - mm)) + (m == -INFINITY ? 0.0f : s * expf(m - mm));
    st[0] = mm;
    if (v0 == 0) st[2] = 0.0f;
    if (tg >= v0 && tg < v0 + V) st[2] = to_f(l[tg - v0]);
}

template <typename T>
__global__ void xent_chunk_grad_kernel(float *losses, T *logits, const float *stats, const int32_t *targets, int V,
                                       int v0, float dscale)
{
    int row = blockIdx.x, tg = targets[row];
    const float *st = stats + 3 * (size_t)row;
    if (losses && threadIdx.x == 0) losses[row] = tg < 0 ? 0.0f : st[0] + logf(st[1]) - st[2];
    if (!logits) return;
    T *l = logits + (size_t)row * V;
    float scale = tg < 0 ? 0.0f : dscale / st[1], m = st[0];
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        l[j] = from_f<T>(tg < 0 ? 0.0f : expf(to_f(l[j]) - m) * scale - (v0 + j == tg ? dscale : 0.0f));
}

template <typename T>
static void cu_xent_chunk_stats(float *stats, const void *logits, const int32_t *targets, int N, int V, int v0)
{
    CUDA_PROF("xent_chunk_stats");
    if (N <= 0) return;
    xent_chunk_stats_kernel<T><<<N, XENT_THREADS, 0, g_cu.stream>>>(stats, (const T *)logits, targets, V, v0);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
static void cu_xent_chunk_grad(float *losses, void *logits, const float *stats, const int32_t *targets, int N, int V,
                               int v0, float dscale)
{
    CUDA_PROF("xent_chunk_grad");
    if (N <= 0) return;
    xent_chunk_grad_kernel<T><<<N, XENT_THREADS, 0, g_cu.stream>>>(losses, (T *)logits, stats, targets, V, v0, dscale);
    CUDA_CHECK_LAUNCH();
}

/* Vocabulary-parallel cross-entropy (backend.h xent_vp_stats / xent_vp_finish): one block per row
 * of this rank's slice [v0, v0 + V) of the vocabulary. */
template <typename T>
__global__ void xent_vp_stats_kernel(float *stats, const T *logits, const int32_t *targets, int V, int v0)
{
    int row = blockIdx.x;
    const T *l = logits + (size_t)row * V;
    float m = -INFINITY, s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) online_add(m, s, to_f(l[j]));
    block_max_sum(m, s);
    if (threadIdx.x) return;
    int t = targets[row] - v0;
    stats[3 * (size_t)row] = m;
    stats[3 * (size_t)row + 1] = s;
    stats[3 * (size_t)row + 2] = targets[row] >= 0 && t >= 0 && t < V ? to_f(l[t]) : 0.0f;
}

template <typename T>
__global__ void xent_vp_finish_kernel(float *losses, T *logits, const int32_t *targets, const float *stats, int P,
                                      int N, int V, int v0, float dscale)
{
    int row = blockIdx.x;
    T *l = logits + (size_t)row * V;
    if (targets[row] < 0) {
        if (threadIdx.x == 0) losses[row] = 0;
        if (dscale != 0)
            for (int j = threadIdx.x; j < V; j += blockDim.x) l[j] = from_f<T>(0.0f);
        return;
    }
    float M = -INFINITY, zt = 0, sum = 0; /* every thread combines the P slices, in rank order */
    for (int r = 0; r < P; r++) {
        const float *st = stats + ((size_t)r * N + row) * 3;
        M = fmaxf(M, st[0]);
        zt += st[2];
    }
    for (int r = 0; r < P; r++) {
        const float *st = stats + ((size_t)r * N + row) * 3;
        if (st[0] > -INFINITY) sum += st[1] * expf(st[0] - M);
    }
    float lse = M + logf(sum);
    if (threadIdx.x == 0) losses[row] = lse - zt;
    if (dscale == 0) return;
    int t = targets[row] - v0;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        l[j] = from_f<T>(expf(to_f(l[j]) - lse) * dscale - (j == t ? dscale : 0.0f));
}

template <typename T>
static void cu_xent_vp_stats(float *stats, const void *logits, const int32_t *targets, int N, int V, int v0)
{
    CUDA_PROF("xent_vp_stats");
    if (N <= 0) return;
    xent_vp_stats_kernel<T><<<N, XENT_THREADS, 0, g_cu.stream>>>(stats, (const T *)logits, targets, V, v0);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
static void cu_xent_vp_finish(float *losses, void *logits, const int32_t *targets, const float *stats, int P, int N,
                              int V, int v0, float dscale)
{
    CUDA_PROF("xent_vp_finish");
    if (N <= 0) return;
    xent_vp_finish_kernel<T><<<N, XENT_THREADS, 0, g_cu.stream>>>(losses, (T *)logits, targets, stats, P, N, V, v0,
                                                                  dscale);
    CUDA_CHECK_LAUNCH();
}

/* ------------------------------------------------------------- optimizer */

/* A piece of one tensor updated by one block. */
typedef struct {
    size_t start;
    unsigned n;
    float weight_decay;
} AdamChunk;

#define ADAM_CHUNK 65536 /* elements per block: large enough to amortize, small enough to balance */

// As torch.optim.AdamW: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps); act copy <- p
template <typename T>
__global__ void adamw_kernel(float *params, T *params_act, const float *grads, float *m, float *v,
                             const AdamChunk *chunks, float lr, float beta1, float beta2, float eps,
                             float step_size, float bc2_sqrt, float grad_scale)
{
    AdamChunk ch = chunks[blockIdx.x];
    float decay = 1.0f - __fmul_rn(lr, ch.weight_decay); /* rounded as the CPU computes it */
    for (unsigned k = threadIdx.x; k < ch.n; k += blockDim.x) {
        size_t i = ch.start + k;
        float gi = grads[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        float p = params[i] * decay - step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
        params[i] = p;
        if (params_act) params_act[i] = from_f<T>(p);
    }
}

static struct {
    std::vector<AdamChunk> host;
    AdamChunk *dev;
    size_t cap;
} g_adam;

template <typename T>
static void cu_adamw(float *params, void *params_act, const float *grads, float *m, float *v,
                     const OptTensor *tensors, int ntensors, const AdamHyper *h)
{
    CUDA_PROF("adamw");
    float bc1 = 1.0f - powf(h->beta1, (float)h->step);
    float bc2 = 1.0f - powf(h->beta2, (float)h->step);
    std::vector<AdamChunk> chunks;
    for (int k = 0; k < ntensors; k++) {
        const OptTensor *t = &tensors[k];
        if (!t->trainable) continue;
        for (size_t s = 0; s < t->numel; s += ADAM_CHUNK)
            chunks.push_back({t->offset + s, (unsigned)std::min((size_t)ADAM_CHUNK, t->numel - s),
                              t->weight_decay});
    }
    if (chunks.empty()) return;
    bool same = chunks.size() == g_adam.host.size() &&
                !memcmp(chunks.data(), g_adam.host.data(), chunks.size() * sizeof(AdamChunk));
    if (!same) { /* the table is the same every step: uploaded once */
        if (chunks.size() > g_adam.cap) {
            cuda_free(g_adam.dev);
            g_adam.dev = (AdamChunk *)cuda_malloc(chunks.size() * sizeof(AdamChunk));
            g_adam.cap = chunks.size();
        }
        CUDA_CHECK(cudaMemcpyAsync(g_adam.dev, chunks.data(), chunks.size() * sizeof(AdamChunk),
                                   cudaMemcpyHostToDevice, g_cu.stream));
        CUDA_CHECK(cudaStreamSynchronize(g_cu.stream)); /* chunks (pageable) must outlive the copy */
        g_adam.host = chunks;
    }
    T *act = (params_act && params_act != (void *)params) ? (T *)params_act : NULL;
    adamw_kernel<T><<<(unsigned)chunks.size(), THREADS, 0, g_cu.stream>>>(params, act, grads, m, v, g_adam.dev, h->lr,
                                                                          h->beta1, h->beta2, h->eps, h->lr / bc1,
                                                                          sqrtf(bc2), h->grad_scale);
    CUDA_CHECK_LAUNCH();
}

/* Fixed grid for sums of squares, so the summation order depends on n alone. */
#define SUMSQ_BLOCKS 1024

__global__ void sumsq_partial_kernel(double *partial, const float *x, size_t n)
{
    __shared__ double sm[THREADS];
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * x[i];
    sm[threadIdx.x] = s;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) sm[threadIdx.x] += sm[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = sm[0];
}

static double cu_sumsq(const float *x, size_t n)
{
    CUDA_PROF("sumsq");
    if (!n) return 0;
    double *partial = (double *)cuda_scratch(SUMSQ_BLOCKS * sizeof(double));
    sumsq_partial_kernel<<<SUMSQ_BLOCKS, THREADS, 0, g_cu.stream>>>(partial, x, n);
    CUDA_CHECK_LAUNCH();
    double host[SUMSQ_BLOCKS];
    CUDA_CHECK(cudaMemcpyAsync(host, partial, sizeof(host), cudaMemcpyDeviceToHost, g_cu.stream));
    CUDA_CHECK(cudaStreamSynchronize(g_cu.stream));
    double total = 0;
    for (int k = 0; k < SUMSQ_BLOCKS; k++) total += host[k];
    return total;
}

__global__ void scale_kernel(float *x, float s, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= s;
}

static void cu_scale(float *x, float s, size_t n)
{
    CUDA_PROF("scale");
    if (!n) return;
    scale_kernel<<<grid_for(n, THREADS), THREADS, 0, g_cu.stream>>>(x, s, n);
    CUDA_CHECK_LAUNCH();
}

/* ------------------------------------------------------------ the table */

// out = inp / (1 - p) where dropout_u32(seed, i) >= cut, else 0 (backend.h dropout)
template <typename T>
__global__ void dropout_kernel(T *out, const T *inp, size_t n, uint32_t cut, float keep, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f<T>(dropout_u32(seed, i) < cut ? 0.0f : to_f(inp[i]) * keep);
}

template <typename T> static void cu_dropout(void *out, const void *inp, size_t n, float p, uint64_t seed)
{
    CUDA_PROF("dropout");
    if (!n) return;
    uint32_t cut = (uint32_t)fmin(4294967295.0, (double)p * 4294967296.0);
    dropout_kernel<T><<<grid_for(n, THREADS), THREADS, 0, g_cu.stream>>>((T *)out, (const T *)inp, n, cut,
                                                                         1.0f / (1.0f - p), seed);
    CUDA_CHECK_LAUNCH();
}

// out = inp * jitter_factor(seed, i, eps) (backend.h jitter; in place allowed)
template <typename T> __global__ void jitter_kernel(T *out, const T *inp, size_t n, float eps, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f<T>(__fmul_rn(to_f(inp[i]), jitter_factor(seed, i, eps)));
}

template <typename T> static void cu_jitter(void *out, const void *inp, size_t n, float eps, uint64_t seed)
{
    CUDA_PROF("jitter");
    if (!n) return;
    jitter_kernel<T><<<grid_for(n, THREADS), THREADS, 0, g_cu.stream>>>((T *)out, (const T *)inp, n, eps, seed);
    CUDA_CHECK_LAUNCH();
}

template <typename T> void cu_fill_ops(Backend *be)
{
    be->dropout = cu_dropout<T>;
    be->jitter = cu_jitter<T>;
    be->embed_fwd = cu_embed_fwd<T>;
    be->embed_bwd = cu_embed_bwd<T>;
    be->norm_fwd = cu_norm_fwd<T>;
    be->norm_bwd = cu_norm_bwd<T>;
    be->add_norm_fwd = cu_add_norm_fwd<T>;
    be->gelu_fwd = cu_gelu_fwd<T>;
    be->gelu_bwd = cu_gelu_bwd<T>;
    be->swiglu_fwd = cu_swiglu_fwd<T>;
    be->swiglu_bwd = cu_swiglu_bwd<T>;
    be->add = cu_add<T>;
    be->gelu_erf_fwd = cu_gelu_erf_fwd<T>;
    be->gelu_erf_bwd = cu_gelu_erf_bwd<T>;
    be->gather_rows = cu_gather_rows<T>;
    be->scatter_rows = cu_scatter_rows<T>;
    be->rope_fwd = cu_rope_fwd<T>;
    be->rope_bwd = cu_rope_bwd<T>;
    be->xent_fwd_bwd = cu_xent_fwd_bwd<T>;
    be->xent_chunk_stats = cu_xent_chunk_stats<T>;
    be->xent_chunk_grad = cu_xent_chunk_grad<T>;
    be->xent_vp_stats = cu_xent_vp_stats<T>;
    be->xent_vp_finish = cu_xent_vp_finish<T>;
    be->adamw = cu_adamw<T>;
    be->sumsq = cu_sumsq;
    be->scale = cu_scale;
}

template void cu_fill_ops<float>(Backend *);
template void cu_fill_ops<bf16>(Backend *);
