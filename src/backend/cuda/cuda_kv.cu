/* cuda_kv.cu - the KV-cache ops of backend.h on the GPU: storing new keys and
 * values into the cache, and attention of a few new queries (decoding) over it.
 *
 * attention_kv_fwd is written for decoding (T = 1 new token per row, or a few):
 * one block per (row, head, query); its 8 warps take the cached keys in turn
 * (lanes split the head dimension, a warp sum gives each score), the scores go
 * to scratch memory, then softmax, then the threads split (positions x head
 * dims) for the weighted sum of the values, reduced in a fixed order. No
 * atomics, so repeated runs are bit-identical. The prompt itself (positions
 * from 0) goes through attention_fwd (flash attention) in the model code. */
#include "backend/cuda/cuda_common.cuh"

#define KV_THREADS 256
#define KV_WARPS (KV_THREADS / 32)
#define KV_MAX_HD 256 /* as the simple attention kernels */

// kcache[b, kvh, pos0 + t, d] = qkv[b, t, (nh + kvh) * hd + d];  vcache from the v part
template <typename T>
__global__ void kv_store_kernel(T *kc, T *vc, const T *qkv, int B, int T_, int nh, int nkv, int hd, int pos0,
                                int cap)
{
    size_t n = (size_t)B * T_ * nkv * hd;
    int row = (nh + 2 * nkv) * hd;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int d = (int)(i % hd);
        int h = (int)(i / hd % nkv);
        int t = (int)(i / hd / nkv % T_);
        size_t b = i / hd / nkv / T_;
        const T *r = qkv + (b * T_ + t) * row;
        size_t dst = ((b * nkv + h) * cap + (size_t)(pos0 + t)) * hd + d;
        kc[dst] = r[(size_t)(nh + h) * hd + d];
        vc[dst] = r[(size_t)(nh + nkv + h) * hd + d];
    }
}

/* Block-wide max or sum of one value per thread, in a fixed order; every thread gets the result. */
__device__ float block_reduce(float v, bool is_max, float *sm)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads(); /* sm may still be read from the previous reduction */
    if (lane == 0) sm[warp] = v;
    __syncthreads();
    float r = sm[0];
    for (int w = 1; w < KV_WARPS; w++) r = is_max ? fmaxf(r, sm[w]) : r + sm[w];
    return r;
}

// One block per (b, h, t): scores s = q . k_s * scale for s <= pos0 + t, softmax, out = sum_s p_s v_s.
// scores: scratch of (B*nh*T_) rows of smax floats.
template <typename T>
__global__ void __launch_bounds__(KV_THREADS)
    attention_kv_kernel(T *out, const T *qkv, const T *kc, const T *vc, float *scores, int T_, int nh,
                        int nkv, int hd, int pos0, int cap, int smax)
{
    __shared__ float q[KV_MAX_HD];
    __shared__ float red[KV_WARPS];
    __shared__ float part[KV_THREADS];
    int rowid = blockIdx.x;
    int t = rowid % T_, h = rowid / T_ % nh, b = rowid / T_ / nh;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int kvh = h / (nh / nkv), S = pos0 + t + 1;
    float scale = 1.0f / sqrtf((float)hd);
    const T *qr = qkv + ((size_t)b * T_ + t) * (size_t)(nh + 2 * nkv) * hd + (size_t)h * hd;
    const T *K = kc + ((size_t)b * nkv + kvh) * cap * hd;
    const T *V = vc + ((size_t)b * nkv + kvh) * cap * hd;
    float *sc = scores + (size_t)rowid * smax;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) q[d] = to_f(qr[d]);
    __syncthreads();

    /* scores: warp w takes positions w, w + 8, ...; lanes split the head dimension */
    float mx = -INFINITY;
    for (int s = warp; s < S; s += KV_WARPS) {
        const T *k = K + (size_t)s * hd;
        float dot = 0;
        for (int d = lane; d < hd; d += 32) dot += q[d] * to_f(k[d]);
        dot = warp_sum(dot) * scale;
        if (lane == 0) sc[s] = dot;
        mx = fmaxf(mx, dot);
    }
    mx = block_reduce(mx, true, red); /* also orders the score writes before the reads below */

    float sum = 0;
    for (int s = threadIdx.x; s < S; s += blockDim.x) {
        float e = expf(sc[s] - mx);
        sc[s] = e;
        sum += e;
    }
    sum = block_reduce(sum, false, red);
    float inv = 1.0f / sum;

    /* weighted sum of values: G groups of hd threads; group g takes positions g, g + G, ... */
    int G = blockDim.x / hd;
    int g = threadIdx.x / hd, d = threadIdx.x % hd;
    float acc = 0;
    if (g < G)
        for (int s = g; s < S; s += G) acc += sc[s] * to_f(V[(size_t)s * hd + d]);
    part[threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x < hd) {
        float o = 0;
        for (int k = 0; k < G; k++) o += part[k * hd + threadIdx.x];
        out[((size_t)b * T_ + t) * nh * hd + (size_t)h * hd + threadIdx.x] = from_f<T>(o * inv);
    }
}

template <typename T>
static void cu_kv_store(void *kcache, void *vcache, const void *qkv, int B, int T_, int nh, int nkv, int hd,
                        int pos0, int cap)
{
    CUDA_PROF("kv_store");
    if (pos0 < 0 || pos0 + T_ > cap)
        fatal("kv_store: positions %d..%d outside the cache (%d)", pos0, pos0 + T_ - 1, cap);
    size_t n = (size_t)B * T_ * nkv * hd;
    if (!n) return;
    kv_store_kernel<T><<<grid_for(n, 256), 256, 0, g_cu.stream>>>((T *)kcache, (T *)vcache, (const T *)qkv, B,
                                                                  T_, nh, nkv, hd, pos0, cap);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
static void cu_attention_kv_fwd(void *out, const void *qkv, const void *kcache, const void *vcache, int B,
                                int T_, int nh, int nkv, int hd, int pos0, int cap)
{
    CUDA_PROF("attention_kv_fwd");
    if (nkv <= 0 || nh % nkv)
        fatal("attention_kv_fwd: %d query heads are not a multiple of %d kv heads", nh, nkv);
    if (hd > KV_MAX_HD) fatal("attention_kv_fwd: head_dim %d is larger than the supported %d", hd, KV_MAX_HD);
    if (pos0 < 0 || pos0 + T_ > cap)
        fatal("attention_kv_fwd: positions %d..%d outside the cache (%d)", pos0, pos0 + T_ - 1, cap);
    size_t rows = (size_t)B * nh * T_;
    if (!rows) return;
    int smax = pos0 + T_;
    float *scores = (float *)cuda_scratch(rows * (size_t)smax * sizeof(float));
    attention_kv_kernel<T><<<(unsigned)rows, KV_THREADS, 0, g_cu.stream>>>(
        (T *)out, (const T *)qkv, (const T *)kcache, (const T *)vcache, scores, T_, nh, nkv, hd, pos0, cap,
        smax);
    CUDA_CHECK_LAUNCH();
}

template <typename T> void cu_fill_kv_ops(Backend *be)
{
    be->kv_store = cu_kv_store<T>;
    be->attention_kv_fwd = cu_attention_kv_fwd<T>;
}

template void cu_fill_kv_ops<float>(Backend *);
template void cu_fill_kv_ops<bf16>(Backend *);
