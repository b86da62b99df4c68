/* cuda_moe.cu - the mixture-of-experts ops of the op table (backend.h, docs/moe.md): routing
 * (softmax, top-k, renormalisation) and its backward, the stable sort of (token, slot) pairs by
 * expert, gather / un-permute / shared-expert gate and their backwards. The expert products
 * themselves go through the ordinary product (linear.c over each expert's contiguous rows).
 * Every sum runs in a fixed order (no atomics on values), so results are bit-reproducible. */
#include "backend/cuda/cuda_common.cuh"

#define THREADS 256
/* (token, slot) pairs per block of the sort: each block places its pairs serially, in order. */
#define SORT_CHUNK 256

/* ---------------------------------------------------------------- routing */

// per row r: probs = softmax(logits) (fp32), lse, the k largest (ties: lower index), their weights
template <typename T>
__global__ void route_fwd_kernel(float *probs, float *lse, int32_t *topi, float *topw, const T *logits, int N, int E,
                                 int k, int norm)
{
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < N; r += gridDim.x * blockDim.x) {
        const T *x = logits + (size_t)r * E;
        float *p = probs + (size_t)r * E;
        float mx = -INFINITY;
        for (int e = 0; e < E; e++) mx = fmaxf(mx, to_f(x[e]));
        float sum = 0;
        for (int e = 0; e < E; e++) sum += expf(to_f(x[e]) - mx);
        for (int e = 0; e < E; e++) p[e] = expf(to_f(x[e]) - mx) / sum;
        lse[r] = mx + logf(sum);
        int32_t *ti = topi + (size_t)r * k;
        float *tw = topw + (size_t)r * k, tsum = 0;
        for (int s = 0; s < k; s++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                bool taken = false;
                for (int t = 0; t < s; t++) taken |= ti[t] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            ti[s] = best;
            tw[s] = p[best];
            tsum += p[best];
        }
        if (norm)
            for (int s = 0; s < k; s++) tw[s] /= tsum;
    }
}

// stats[e] = sum_r probs[r,e] (block e), stats[E] = sum_r lse[r]^2 (block E): fixed-order tree sums
__global__ void route_stats_kernel(float *stats, const float *probs, const float *lse, int N, int E)
{
    __shared__ float part[THREADS];
    int e = blockIdx.x;
    float acc = 0;
    for (int r = threadIdx.x; r < N; r += blockDim.x) acc += e < E ? probs[(size_t)r * E + e] : lse[r] * lse[r];
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) stats[e] = part[0];
}

template <typename T>
static void cu_moe_route_fwd(float *probs, float *lse, int32_t *topi, float *topw, float *stats, const void *logits,
                             int N, int E, int k, int norm)
{
    CUDA_PROF("moe_route_fwd");
    if (N <= 0) return;
    route_fwd_kernel<T><<<CEIL_DIV(N, THREADS), THREADS, 0, g_cu.stream>>>(probs, lse, topi, topw, (const T *)logits,
                                                                          N, E, k, norm);
    CUDA_CHECK_LAUNCH();
    route_stats_kernel<<<E + 1, THREADS, 0, g_cu.stream>>>(stats, probs, lse, N, E);
    CUDA_CHECK_LAUNCH();
}

// dprobs[e] = dpe[e] + (the top-k weights' term); dlogits = p * (dprobs - <p, dprobs>) + zscale * lse * p
template <typename T>
__global__ void route_bwd_kernel(T *dlogits, const float *probs, const float *lse, const int32_t *topi,
                                 const float *dtopw, const float *dpe, float zscale, int N, int E, int k, int norm)
{
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < N; r += gridDim.x * blockDim.x) {
        const float *p = probs + (size_t)r * E;
        const int32_t *ti = topi + (size_t)r * k;
        const float *dw = dtopw + (size_t)r * k;
        float Z = 0, dot = 0;
        for (int s = 0; s < k; s++) Z += p[ti[s]];
        for (int s = 0; s < k; s++) dot += dw[s] * p[ti[s]] / Z;
        /* the extra term of slot s: (dw_s - dot) / Z renormalised, dw_s otherwise */
        float pd = 0;
        for (int e = 0; e < E; e++) pd += p[e] * (dpe ? dpe[e] : 0.0f);
        for (int s = 0; s < k; s++) pd += p[ti[s]] * (norm ? (dw[s] - dot) / Z : dw[s]);
        for (int e = 0; e < E; e++) {
            float dp = dpe ? dpe[e] : 0.0f;
            for (int s = 0; s < k; s++)
                if (ti[s] == e) dp += norm ? (dw[s] - dot) / Z : dw[s];
            dlogits[(size_t)r * E + e] = from_f<T>(p[e] * (dp - pd) + zscale * lse[r] * p[e]);
        }
    }
}

template <typename T>
static void cu_moe_route_bwd(void *dlogits, const float *probs, const float *lse, const int32_t *topi,
                             const float *dtopw, const float *dpe, float zscale, int N, int E, int k, int norm)
{
    CUDA_PROF("moe_route_bwd");
    if (N <= 0) return;
    route_bwd_kernel<T><<<CEIL_DIV(N, THREADS), THREADS, 0, g_cu.stream>>>((T *)dlogits, probs, lse, topi, dtopw, dpe,
                                                                          zscale, N, E, k, norm);
    CUDA_CHECK_LAUNCH();
}

/* ------------------------------------------------------------------- sort */

// bc[b * E + e] = pairs of chunk b routed to expert e
__global__ void sort_count_kernel(int *bc, const int32_t *topi, int NK, int E)
{
    extern __shared__ int cnt[];
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    int i0 = blockIdx.x * SORT_CHUNK;
    for (int i = i0 + threadIdx.x; i < min(NK, i0 + SORT_CHUNK); i += blockDim.x) atomicAdd(&cnt[topi[i]], 1);
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) bc[(size_t)blockIdx.x * E + e] = cnt[e];
}

// counts[e] = sum_b bc[b, e]; bc becomes each chunk's first row for e: offset[e] + pairs of earlier chunks
__global__ void sort_scan_kernel(int *bc, int *counts, int nb, int E)
{
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int c = 0;
        for (int b = 0; b < nb; b++) c += bc[(size_t)b * E + e];
        counts[e] = c;
    }
    __syncthreads();
    if (threadIdx.x == 0) { /* exclusive scan over the experts into counts[E + e] */
        int off = 0;
        for (int e = 0; e < E; e++) {
            counts[E + e] = off;
            off += counts[e];
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int run = counts[E + e];
        for (int b = 0; b < nb; b++) {
            int c = bc[(size_t)b * E + e];
            bc[(size_t)b * E + e] = run;
            run += c;
        }
    }
}

// each chunk places its pairs in slot order (one thread: stable within the chunk)
__global__ void sort_place_kernel(int32_t *perm, int32_t *pos, int *bc, const int32_t *topi, int NK, int E)
{
    if (threadIdx.x != 0) return;
    int *base = bc + (size_t)blockIdx.x * E;
    int i0 = blockIdx.x * SORT_CHUNK;
    for (int i = i0; i < min(NK, i0 + SORT_CHUNK); i++) {
        int j = base[topi[i]]++;
        perm[j] = i;
        pos[i] = j;
    }
}

static void cu_moe_sort(int32_t *perm, int32_t *pos, int *counts, const int32_t *topi, int N, int E, int k)
{
    CUDA_PROF("moe_sort");
    int NK = N * k, nb = CEIL_DIV(NK, SORT_CHUNK);
    if (NK <= 0) return;
    int *bc = (int *)cuda_scratch(((size_t)nb * E + 2 * (size_t)E) * sizeof(int)), *dcounts = bc + (size_t)nb * E;
    sort_count_kernel<<<nb, THREADS, (size_t)E * sizeof(int), g_cu.stream>>>(bc, topi, NK, E);
    CUDA_CHECK_LAUNCH();
    sort_scan_kernel<<<1, THREADS, 0, g_cu.stream>>>(bc, dcounts, nb, E);
    CUDA_CHECK_LAUNCH();
    sort_place_kernel<<<nb, 32, 0, g_cu.stream>>>(perm, pos, bc, topi, NK, E);
    CUDA_CHECK_LAUNCH();
    /* the host needs the counts for the per-expert products */
    CUDA_CHECK(cudaMemcpyAsync(counts, dcounts, (size_t)E * sizeof(int), cudaMemcpyDeviceToHost, g_cu.stream));
    CUDA_CHECK(cudaStreamSynchronize(g_cu.stream));
}

/* ------------------------------------------------- gather and un-permute */

template <typename T> __global__ void gather_fwd_kernel(T *xp, const T *x, const int32_t *perm, size_t NKC, int C, int k)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < NKC; i += (size_t)gridDim.x * blockDim.x) {
        size_t j = i / C, c = i % C;
        xp[i] = x[(size_t)(perm[j] / k) * C + c];
    }
}

template <typename T> static void cu_moe_gather_fwd(void *xp, const void *x, const int32_t *perm, int N, int C, int k)
{
    CUDA_PROF("moe_gather_fwd");
    size_t n = (size_t)N * k * C;
    if (!n) return;
    gather_fwd_kernel<T><<<grid_for(n, THREADS), THREADS, 0, g_cu.stream>>>((T *)xp, (const T *)x, perm, n, C, k);
    CUDA_CHECK_LAUNCH();
}

template <typename T> __global__ void gather_bwd_kernel(T *dx, const T *dxp, const int32_t *pos, size_t NC, int C, int k)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < NC; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / C, c = i % C;
        float acc = 0;
        for (int s = 0; s < k; s++) acc += to_f(dxp[(size_t)pos[r * k + s] * C + c]);
        dx[i] = from_f<T>(acc);
    }
}

template <typename T> static void cu_moe_gather_bwd(void *dx, const void *dxp, const int32_t *pos, int N, int C, int k)
{
    CUDA_PROF("moe_gather_bwd");
    size_t n = (size_t)N * C;
    if (!n) return;
    gather_bwd_kernel<T><<<grid_for(n, THREADS), THREADS, 0, g_cu.stream>>>((T *)dx, (const T *)dxp, pos, n, C, k);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
__global__ void combine_fwd_kernel(T *out, const T *y, const float *topw, const int32_t *pos, size_t NC, int C, int k)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < NC; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / C, c = i % C;
        float acc = 0;
        for (int s = 0; s < k; s++) acc += topw[r * k + s] * to_f(y[(size_t)pos[r * k + s] * C + c]);
        out[i] = from_f<T>(acc);
    }
}

template <typename T>
static void cu_moe_combine_fwd(void *out, const void *y, const float *topw, const int32_t *pos, int N, int C, int k)
{
    CUDA_PROF("moe_combine_fwd");
    size_t n = (size_t)N * C;
    if (!n) return;
    combine_fwd_kernel<T><<<grid_for(n, THREADS), THREADS, 0, g_cu.stream>>>((T *)out, (const T *)y, topw, pos, n, C, k);
    CUDA_CHECK_LAUNCH();
}

// dy row pos[i] = topw[i] * dout row i / k (element-parallel)
template <typename T>
__global__ void combine_bwd_dy_kernel(T *dy, const T *dout, const float *topw, const int32_t *pos, size_t NKC, int C,
                                      int k)
{
    for (size_t q = blockIdx.x * (size_t)blockDim.x + threadIdx.x; q < NKC; q += (size_t)gridDim.x * blockDim.x) {
        size_t i = q / C, c = q % C;
        dy[(size_t)pos[i] * C + c] = from_f<T>(topw[i] * to_f(dout[(i / k) * C + c]));
    }
}

// dtopw[i] = <dout row i / k, y row pos[i]>: one warp per slot
template <typename T>
__global__ void combine_bwd_dw_kernel(float *dtopw, const T *dout, const T *y, const int32_t *pos, int NK, int C, int k)
{
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (warp >= NK) return;
    const T *d = dout + (size_t)(warp / k) * C, *v = y + (size_t)pos[warp] * C;
    float acc = 0;
    for (int c = lane; c < C; c += 32) acc += to_f(d[c]) * to_f(v[c]);
    acc = warp_sum(acc);
    if (lane == 0) dtopw[warp] = acc;
}

template <typename T>
static void cu_moe_combine_bwd(void *dy, float *dtopw, const void *dout, const void *y, const float *topw,
                               const int32_t *pos, int N, int C, int k)
{
    CUDA_PROF("moe_combine_bwd");
    size_t n = (size_t)N * k * C;
    if (!n) return;
    combine_bwd_dy_kernel<T><<<grid_for(n, THREADS), THREADS, 0, g_cu.stream>>>((T *)dy, (const T *)dout, topw, pos, n,
                                                                               C, k);
    CUDA_CHECK_LAUNCH();
    int NK = N * k;
    combine_bwd_dw_kernel<T><<<CEIL_DIV(NK, THREADS / 32), THREADS, 0, g_cu.stream>>>(dtopw, (const T *)dout,
                                                                                     (const T *)y, pos, NK, C, k);
    CUDA_CHECK_LAUNCH();
}

/* ------------------------------------------------------ shared expert gate */

template <typename T> __global__ void gate_fwd_kernel(T *out, const T *y, const T *g, size_t NC, int C)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < NC; i += (size_t)gridDim.x * blockDim.x) {
        float s = 1.0f / (1.0f + expf(-to_f(g[i / C])));
        out[i] = from_f<T>(to_f(out[i]) + s * to_f(y[i]));
    }
}

template <typename T> static void cu_moe_gate_fwd(void *out, const void *y, const void *g, int N, int C)
{
    CUDA_PROF("moe_gate_fwd");
    size_t n = (size_t)N * C;
    if (!n) return;
    gate_fwd_kernel<T><<<grid_for(n, THREADS), THREADS, 0, g_cu.stream>>>((T *)out, (const T *)y, (const T *)g, n, C);
    CUDA_CHECK_LAUNCH();
}

// one warp per row: dy = sigmoid(g) dout; dg = sigmoid'(g) <dout, y>
template <typename T> __global__ void gate_bwd_kernel(T *dy, T *dg, const T *dout, const T *y, const T *g, int N, int C)
{
    int r = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (r >= N) return;
    float s = 1.0f / (1.0f + expf(-to_f(g[r]))), acc = 0;
    for (int c = lane; c < C; c += 32) {
        size_t i = (size_t)r * C + c;
        dy[i] = from_f<T>(s * to_f(dout[i]));
        acc += to_f(dout[i]) * to_f(y[i]);
    }
    acc = warp_sum(acc);
    if (lane == 0) dg[r] = from_f<T>(acc * s * (1.0f - s));
}

template <typename T>
static void cu_moe_gate_bwd(void *dy, void *dg, const void *dout, const void *y, const void *g, int N, int C)
{
    CUDA_PROF("moe_gate_bwd");
    if (N <= 0) return;
    gate_bwd_kernel<T><<<CEIL_DIV(N, THREADS / 32), THREADS, 0, g_cu.stream>>>((T *)dy, (T *)dg, (const T *)dout,
                                                                              (const T *)y, (const T *)g, N, C);
    CUDA_CHECK_LAUNCH();
}

/* ------------------------------------------------------------------ table */

template <typename T> void cu_fill_moe_ops(Backend *be)
{
    be->moe_route_fwd = cu_moe_route_fwd<T>;
    be->moe_route_bwd = cu_moe_route_bwd<T>;
    be->moe_sort = cu_moe_sort;
    be->moe_gather_fwd = cu_moe_gather_fwd<T>;
    be->moe_gather_bwd = cu_moe_gather_bwd<T>;
    be->moe_combine_fwd = cu_moe_combine_fwd<T>;
    be->moe_combine_bwd = cu_moe_combine_bwd<T>;
    be->moe_gate_fwd = cu_moe_gate_fwd<T>;
    be->moe_gate_bwd = cu_moe_gate_bwd<T>;
}

template void cu_fill_moe_ops<float>(Backend *);
template void cu_fill_moe_ops<bf16>(Backend *);
