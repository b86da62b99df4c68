/* cuda_ternary.cu - the ternary ops of backend.h on the GPU: BitNet's weight and activation
 * quantizers, the relu2-GLU activation, unpacking integer-ternary weights, and the integer update of
 * every ternary tensor in one kernel. The integer update equals model/ternary.c's tern_update bit for
 * bit: a warp takes a group, its lane j sums the group's elements j, j + 32, ... in double and the lanes
 * combine in a fixed butterfly (model/ternary.h TERN_LANES: the CPU forms the same sums in the same
 * order; the products g * trit are exact, so a fused multiply-add gives the same sum), and the
 * comparisons use the same rounded values. Packed bytes shared by two groups (or two lanes) are changed
 * with a 32-bit atomicAdd of the digit's change (the digits of one byte belong to different weights, so
 * the additions commute and never carry). */
#include "backend/cuda/cuda_common.cuh"

extern "C" {
#include "model/ternary.h"
}

/* Threads per block of the element-wise kernels and of the per-row quantizer. */
#define TERN_THREADS 256
/* Blocks of the first stage of mean |w| (a fixed count: the sum's order does not depend on the GPU). */
#define WQ_PARTS 512
/* transformers' clamp of BitNet's scales (model/ternary.h TERN_EPS). */
#define TERN_EPS_F 1e-5f

/* ---- BitNet's weight quantizer ---- */

/* W: the weights' type (fp32 master, or the act compute copy: ternary_wquant_act) */
template <typename W> __global__ void absmean_partial_kernel(double *part, const W *w, size_t n)
{
    __shared__ double s[TERN_THREADS];
    double acc = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        acc += fabs((double)to_f(w[i]));
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if ((int)threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = s[0];
}

/* scale = 1 / max(mean |w|, 1e-5), in fp32 as torch forms it */
__global__ void absmean_final_kernel(float *scale, const double *part, int nparts, size_t n)
{
    if (threadIdx.x != 0) return;
    double t = 0;
    for (int k = 0; k < nparts; k++) t += part[k];
    float gamma = (float)(t / (double)n);
    if (gamma < TERN_EPS_F) gamma = TERN_EPS_F;
    *scale = 1.0f / gamma;
}

template <typename T, typename W> __global__ void wquant_kernel(T *out, const W *w, const float *scale, size_t n)
{
    float s = *scale;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float q = rintf(__fmul_rn(to_f(w[i]), s));
        q = fminf(fmaxf(q, -1.0f), 1.0f);
        out[i] = from_f<T>(__fdiv_rn(q, s));
    }
}

/* out (act T) = the quantized weights of w (n values of type W) */
template <typename T, typename W> static void wquant_run(void *out, const W *w, size_t n)
{
    if (!n) return;
    char *scr = (char *)cuda_scratch(WQ_PARTS * sizeof(double) + sizeof(float));
    double *part = (double *)scr;
    float *scale = (float *)(scr + WQ_PARTS * sizeof(double));
    absmean_partial_kernel<W><<<WQ_PARTS, TERN_THREADS, 0, g_cu.stream>>>(part, w, n);
    CUDA_CHECK_LAUNCH();
    absmean_final_kernel<<<1, 32, 0, g_cu.stream>>>(scale, part, WQ_PARTS, n);
    CUDA_CHECK_LAUNCH();
    wquant_kernel<T, W><<<grid_for(n, TERN_THREADS), TERN_THREADS, 0, g_cu.stream>>>((T *)out, w, scale, n);
    CUDA_CHECK_LAUNCH();
}

template <typename T> static void cu_ternary_wquant(void *out, const float *w, size_t n)
{
    CUDA_PROF("ternary_wquant");
    wquant_run<T, float>(out, w, n);
}

/* from the compute copy (ZeRO's BitLinear): the act values widened to fp32 exactly, then as above */
template <typename T> static void cu_ternary_wquant_act(void *out, const void *w, size_t n)
{
    CUDA_PROF("ternary_wquant_act");
    wquant_run<T, T>(out, (const T *)w, n);
}

/* ---- BitNet's activation quantizer: one block per row ---- */

template <typename T> __global__ void act_quant8_kernel(T *out, const T *inp, int C)
{
    __shared__ float s[TERN_THREADS];
    const T *x = inp + (size_t)blockIdx.x * C;
    T *o = out + (size_t)blockIdx.x * C;
    float mx = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) mx = fmaxf(mx, fabsf(to_f(x[j])));
    s[threadIdx.x] = mx;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if ((int)threadIdx.x < k) s[threadIdx.x] = fmaxf(s[threadIdx.x], s[threadIdx.x + k]);
        __syncthreads();
    }
    float amax = fmaxf(s[0], TERN_EPS_F), sc = __fdiv_rn(127.0f, amax);
    __syncthreads(); /* every thread has read s[0] before a row's writes (out may be inp) */
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float q = rintf(__fmul_rn(to_f(x[j]), sc));
        q = fminf(fmaxf(q, -128.0f), 127.0f);
        o[j] = from_f<T>(__fdiv_rn(q, sc));
    }
}

template <typename T> static void cu_act_quant8(void *out, const void *inp, int N, int C)
{
    CUDA_PROF("act_quant8");
    if (N <= 0) return;
    act_quant8_kernel<T><<<N, TERN_THREADS, 0, g_cu.stream>>>((T *)out, (const T *)inp, C);
    CUDA_CHECK_LAUNCH();
}

/* ---- relu2-GLU ---- */

template <typename T> __global__ void relu2glu_fwd_kernel(T *out, const T *inp, int N, int F)
{
    size_t n = (size_t)N * F;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x) {
        size_t i = e / F, j = e % F;
        float g = to_f(inp[i * 2 * F + j]), u = to_f(inp[i * 2 * F + F + j]);
        float r = g > 0 ? g : 0.0f;
        out[e] = from_f<T>(r * r * u);
    }
}

template <typename T> __global__ void relu2glu_bwd_kernel(T *dinp, const T *inp, const T *dout, int N, int F)
{
    size_t n = (size_t)N * F;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x) {
        size_t i = e / F, j = e % F;
        float g = to_f(inp[i * 2 * F + j]), u = to_f(inp[i * 2 * F + F + j]), d = to_f(dout[e]);
        float r = g > 0 ? g : 0.0f;
        dinp[i * 2 * F + j] = from_f<T>(d * u * 2.0f * r);
        dinp[i * 2 * F + F + j] = from_f<T>(d * r * r);
    }
}

template <typename T> static void cu_relu2glu_fwd(void *out, const void *inp, int N, int F)
{
    CUDA_PROF("relu2glu_fwd");
    size_t n = (size_t)N * F;
    if (!n) return;
    relu2glu_fwd_kernel<T><<<grid_for(n, TERN_THREADS), TERN_THREADS, 0, g_cu.stream>>>((T *)out, (const T *)inp, N, F);
    CUDA_CHECK_LAUNCH();
}

template <typename T> static void cu_relu2glu_bwd(void *dinp, const void *inp, const void *dout, int N, int F)
{
    CUDA_PROF("relu2glu_bwd");
    size_t n = (size_t)N * F;
    if (!n) return;
    relu2glu_bwd_kernel<T><<<grid_for(n, TERN_THREADS), TERN_THREADS, 0, g_cu.stream>>>(
        (T *)dinp, (const T *)inp, (const T *)dout, N, F);
    CUDA_CHECK_LAUNCH();
}

/* ---- integer-ternary weights ---- */

/* The five base-3 digits of each byte value (0 .. 242), two bits each, in shared memory: lanes read
 * different entries (constant memory would serialize them). */
__device__ __forceinline__ void trit_table(uint16_t *lut)
{
    for (int v = threadIdx.x; v <= TRIT_BYTE_MAX; v += blockDim.x) {
        unsigned d = 0, x = (unsigned)v;
        for (int k = 0; k < TRITS_PER_BYTE; k++, x /= 3) d |= (x % 3) << (2 * k);
        lut[v] = (uint16_t)d;
    }
    __syncthreads();
}

/* Trit i (-1, 0, 1) of a packed array. */
__device__ __forceinline__ int trit_at(const uint8_t *packed, size_t i, const uint16_t *lut)
{
    return (int)((lut[packed[i / TRITS_PER_BYTE]] >> (2 * (unsigned)(i % TRITS_PER_BYTE))) & 3u) - 1;
}

/* 2^e for e in [-126, 127], exactly */
__device__ __forceinline__ float pow2f(int e) { return __int_as_float((e + 127) << 23); }

/* one thread per packed byte: its five weights, the group found once per byte */
template <typename T> __global__ void trit_unpack_kernel(T *out, TernaryTensor t)
{
    __shared__ uint16_t lut[TRIT_BYTE_MAX + 1];
    trit_table(lut);
    size_t nb = (t.n + TRITS_PER_BYTE - 1) / TRITS_PER_BYTE, G = (size_t)t.group;
    for (size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += (size_t)gridDim.x * blockDim.x) {
        unsigned d = lut[t.trits[b]];
        size_t i = b * TRITS_PER_BYTE;
        size_t g = t.n <= 0xffffffffu ? (size_t)((unsigned)i / (unsigned)G) : i / G, r = i - g * G;
        float sc = pow2f(t.exp[g]);
        for (int k = 0; k < TRITS_PER_BYTE && i < t.n; k++, i++, d >>= 2) {
            out[i] = from_f<T>((float)((int)(d & 3u) - 1) * sc);
            if (++r == G && i + 1 < t.n) r = 0, sc = pow2f(t.exp[++g]);
        }
    }
}

/* Eight consecutive outputs as one 16-byte store (bf16) or two (fp32). */
template <typename T> __device__ __forceinline__ void store8(T *dst, const float *v);
template <> __device__ __forceinline__ void store8<bf16>(bf16 *dst, const float *v)
{
    uint4 q;
    unsigned *w = (unsigned *)&q;
    for (int k = 0; k < 4; k++) {
        bf16 a = from_f<bf16>(v[2 * k]), b = from_f<bf16>(v[2 * k + 1]);
        w[k] = (unsigned)*(unsigned short *)&a | ((unsigned)*(unsigned short *)&b << 16);
    }
    *(uint4 *)dst = q;
}
template <> __device__ __forceinline__ void store8<float>(float *dst, const float *v)
{
    ((float4 *)dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
    ((float4 *)dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

/* The eight weights i0 .. i0 + 7 of t (i0 + 8 <= t.n; groups of at least 8 weights, so the chunk meets at most
 * one group boundary) as floats: the 2 or 3 packed bytes it spans (nb: t's bytes), the group of i0 and its
 * successor's scale. small: t.n fits 32 bits (32-bit divisions). */
__device__ __forceinline__ void trit_decode8(float *v, const TernaryTensor &t, size_t i0, size_t nb, int small,
                                             const uint16_t *lut)
{
    size_t G = (size_t)t.group;
    size_t g = small ? (size_t)((unsigned)i0 / (unsigned)G) : i0 / G, r = i0 - g * G;
    size_t b0 = small ? (size_t)((unsigned)i0 / 5u) : i0 / 5;
    unsigned k0 = (unsigned)(i0 - b0 * 5);
    uint32_t D = (uint32_t)lut[t.trits[b0]] | ((uint32_t)lut[t.trits[b0 + 1]] << 10) |
                 (b0 + 2 < nb ? (uint32_t)lut[t.trits[b0 + 2]] << 20 : 0u);
    float sc = pow2f(t.exp[g]), sc1 = r + 7 >= G ? pow2f(t.exp[g + 1]) : sc;
#pragma unroll
    for (int k = 0; k < 8; k++)
        v[k] = (float)((int)((D >> (2 * (k0 + (unsigned)k))) & 3u) - 1) * (r + (size_t)k < G ? sc : sc1);
}

/* The same values by chunks of eight outputs per thread (out 16-byte aligned): one coalesced vector store
 * per chunk instead of five scattered 2-byte stores per packed byte. The 2 or 3 bytes a chunk spans come
 * from the cache; the last n % 8 outputs one by one. */
template <typename T> __global__ void trit_unpack8_kernel(T *out, TernaryTensor t)
{
    __shared__ uint16_t lut[TRIT_BYTE_MAX + 1];
    trit_table(lut);
    size_t n8 = t.n / 8, nb = (t.n + TRITS_PER_BYTE - 1) / TRITS_PER_BYTE, G = (size_t)t.group;
    int small = t.n <= 0xffffffffu;
    for (size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x; c <= n8; c += (size_t)gridDim.x * blockDim.x) {
        size_t i0 = c * 8;
        if (c == n8) { /* the tail */
            for (size_t i = i0; i < t.n; i++)
                out[i] = from_f<T>((float)trit_at(t.trits, i, lut) * pow2f(t.exp[i / G]));
            continue;
        }
        float v[8];
        trit_decode8(v, t, i0, nb, small, lut);
        store8<T>(out + i0, v);
    }
}

template <typename T> static void cu_trit_unpack(void *out, const TernaryTensor *t)
{
    CUDA_PROF("trit_unpack");
    size_t nb = (t->n + 4) / 5;
    if (!nb) return;
    if (t->group >= 8 && ((uintptr_t)out & 15) == 0) {
        trit_unpack8_kernel<T><<<grid_for(t->n / 8 + 1, TERN_THREADS), TERN_THREADS, 0, g_cu.stream>>>((T *)out, *t);
    } else {
        trit_unpack_kernel<T><<<grid_for(nb, TERN_THREADS), TERN_THREADS, 0, g_cu.stream>>>((T *)out, *t);
    }
    CUDA_CHECK_LAUNCH();
}

/* ---- the product read from packed trits (few rows of x) ---- */

/* Eight consecutive x values (16-byte aligned) as floats. */
template <typename T> __device__ __forceinline__ void load8f(float (&f)[8], const T *p);
template <> __device__ __forceinline__ void load8f<bf16>(float (&f)[8], const bf16 *p) { load_f<bf16, 8>(f, p); }
template <> __device__ __forceinline__ void load8f<float>(float (&f)[8], const float *p)
{
    float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

#define TMM_THREADS 256

/* The end of a few-rows product: each lane's partial sums of the warp's WR rows x NT rows of x reduced over
 * the lanes by a butterfly (every lane then holds every sum), and lane r * NT + n writes (n, o0 + r) with
 * its bias. */
template <typename T, int WR, int NT>
__device__ __forceinline__ void trit_mm_finish(float (&acc)[WR][NT], T *out, const T *bias, int lane, int o0, int N,
                                               int O)
{
#pragma unroll
    for (int r = 0; r < WR; r++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) acc[r][n] += __shfl_xor_sync(0xffffffffu, acc[r][n], off);
#pragma unroll
    for (int r = 0; r < WR; r++)
#pragma unroll
        for (int n = 0; n < NT; n++)
            if (lane == r * NT + n && n < N && o0 + r < O) {
                float v = acc[r][n] + (bias ? to_f(bias[o0 + r]) : 0.0f);
                out[(size_t)n * O + o0 + r] = from_f<T>(v);
            }
}

/* out (N, O) = x (N, K) @ W^T (+ bias) for N <= NT: warp w takes WR rows of W, o0 .. o0 + WR - 1, and its
 * lane the chunks of eight weights k0 = 8 lane + 256 j of each row, U chunks per trip: the trip first
 * decodes every one of its WR x U chunks (trit_decode8: the packed bytes and exponents of all of them
 * requested together, no branch between them), then loads the U chunks' x values of the N rows once for
 * all WR rows, then multiplies; fp32 sums reduced over the lanes by a butterfly. K % 8 == 0, x 16-byte
 * aligned, groups of at least 8 (ternary_matmul_fwd checks). */
template <typename T, int NT, int WR, int U>
__global__ void __launch_bounds__(TMM_THREADS) trit_mm_small_kernel(T *out, const T *x, TernaryTensor t,
                                                                    const T *bias, int N, int K, int O)
{
    __shared__ uint16_t lut[TRIT_BYTE_MAX + 1];
    trit_table(lut);
    int lane = threadIdx.x & 31;
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5), nwarp = (int)((gridDim.x * blockDim.x) >> 5);
    size_t nb = (t.n + TRITS_PER_BYTE - 1) / TRITS_PER_BYTE;
    int small = t.n <= 0xffffffffu;
    for (int o0 = warp * WR; o0 < O; o0 += nwarp * WR) {
        float acc[WR][NT];
#pragma unroll
        for (int r = 0; r < WR; r++)
#pragma unroll
            for (int n = 0; n < NT; n++) acc[r][n] = 0.0f;
        for (int kb = lane * 8; kb < K; kb += 256 * U) {
            float w[WR][U][8];
#pragma unroll
            for (int r = 0; r < WR; r++) {
                size_t row = (size_t)(o0 + r < O ? o0 + r : O - 1) * (size_t)K; /* a last partial warp re-reads row O - 1 */
#pragma unroll
                for (int u = 0; u < U; u++) {
                    int k0 = kb + 256 * u;
                    if (k0 < K) {
                        trit_decode8(w[r][u], t, row + (size_t)k0, nb, small, lut);
                    } else {
#pragma unroll
                        for (int k = 0; k < 8; k++) w[r][u][k] = 0.0f;
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                int k0 = kb + 256 * u;
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    float xv[8];
                    if (n < N && k0 < K) {
                        load8f<T>(xv, x + (size_t)n * K + k0);
                    } else {
#pragma unroll
                        for (int k = 0; k < 8; k++) xv[k] = 0.0f;
                    }
#pragma unroll
                    for (int r = 0; r < WR; r++)
#pragma unroll
                        for (int k = 0; k < 8; k++) acc[r][n] = fmaf(w[r][u][k], xv[k], acc[r][n]);
                }
            }
        }
        trit_mm_finish<T, WR, NT>(acc, out, bias, lane, o0, N, O);
    }
}

template <typename T, int NT, int WR, int U>
static void trit_mm_small_run(void *out, const void *x, const TernaryTensor *t, const void *bias, int N, int K, int O)
{
    static_assert(WR * NT <= 32, "a lane per output of a warp");
    int warps = (O + WR - 1) / WR, per_block = TMM_THREADS / 32;
    unsigned blocks = (unsigned)((warps + per_block - 1) / per_block);
    trit_mm_small_kernel<T, NT, WR, U><<<blocks, TMM_THREADS, 0, g_cu.stream>>>((T *)out, (const T *)x, *t,
                                                                              (const T *)bias, N, K, O);
    CUDA_CHECK_LAUNCH();
}

/* Layout 4: a warp's TMB_WR rows are one stretch of the flat weights, o0 K .. (o0 + TMB_WR) K, and its lanes
 * take the 40-weight chunks of the packing that meet it (weight 40 c = byte 8 c: two aligned 32-bit words),
 * lane l the chunks c0 + l + 32 j. A chunk is five runs of 8 weights; K and the group being multiples of 8
 * (and at least 40: at most one row and one group boundary in a chunk), a run lies in one row and one
 * group, and its x values are one 16-byte vector. The eight bytes go through the table once; a run's
 * digits sit at fixed places in them, so its decode is shifts by constants, and each weight becomes a
 * float by an OR into 2^23's bits. A run's 8 products are summed unscaled, then scaled by its group's
 * 2^E into its row's sum; runs of the next warp's rows (a chunk the two share) are left to it. */
#define TMB_WR 4
template <typename T, int NT>
__global__ void __launch_bounds__(TMM_THREADS) trit_mm_bytes_kernel(T *out, const T *x, TernaryTensor t,
                                                                    const T *bias, int N, int K, int O)
{
    __shared__ uint16_t lut[TRIT_BYTE_MAX + 1];
    trit_table(lut);
    int lane = threadIdx.x & 31;
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5), nwarp = (int)((gridDim.x * blockDim.x) >> 5);
    size_t nb = (t.n + TRITS_PER_BYTE - 1) / TRITS_PER_BYTE, nw = (nb + 3) / 4; /* the 32-bit words of trits */
    const uint32_t *words = (const uint32_t *)t.trits;
    size_t G = (size_t)t.group, KK = (size_t)K;
    int small = t.n <= 0xffffffffu;
    for (int o0 = warp * TMB_WR; o0 < O; o0 += nwarp * TMB_WR) {
        int o1 = o0 + TMB_WR < O ? o0 + TMB_WR : O;
        size_t c0 = (size_t)o0 * KK / 40, c1 = ((size_t)o1 * KK + 39) / 40;
        float acc[TMB_WR][NT];
#pragma unroll
        for (int r = 0; r < TMB_WR; r++)
#pragma unroll
            for (int n = 0; n < NT; n++) acc[r][n] = 0.0f;
        for (size_t c = c0 + (size_t)lane; c < c1; c += 32) {
            uint32_t wd[2] = {words[2 * c], 2 * c + 1 < nw ? words[2 * c + 1] : 0x79797979u}; /* 121: five zeros */
            uint32_t L[8];
#pragma unroll
            for (int b = 0; b < 8; b++) {
                uint32_t v = (wd[b >> 2] >> (8 * (b & 3))) & 0xffu;
                L[b] = lut[v > TRIT_BYTE_MAX ? 121u : v]; /* bytes past the tensor: its last word's tail */
            }
            size_t f = 40 * c;
            size_t row = small ? (size_t)((unsigned)f / (unsigned)K) : f / KK;
            size_t g = small ? (size_t)((unsigned)f / (unsigned)G) : f / G;
            size_t rb = (row + 1) * KK, gb = (g + 1) * G;
            float sc0 = pow2f(t.exp[g]), sc1 = gb < t.n ? pow2f(t.exp[g + 1]) : sc0;
#pragma unroll
            for (int sr = 0; sr < 5; sr++) {
                size_t fr = f + 8 * (size_t)sr;
                int rr = (int)(row + (fr >= rb ? 1 : 0)) - o0; /* the run's row within the warp's */
                const int a = (8 * sr) / 5, sh = 2 * (8 * sr - 5 * a); /* compile-time: the run's first byte and digit */
                uint32_t D = (L[a] | (L[a + 1] << 10) | (a + 2 < 8 ? L[a + 2] << 20 : 0u)) >> sh;
                float w[8];
#pragma unroll
                for (int k = 0; k < 8; k++) /* 2^23 + code, less 2^23 + 1: code - 1, exactly */
                    w[k] = __int_as_float(0x4B000000 | ((D >> (2 * k)) & 3u)) - 8388609.0f;
                float sc = fr >= gb ? sc1 : sc0;
                bool mine = rr >= 0 && rr < o1 - o0;
                const T *xr = x + (mine ? fr - (size_t)(rr + o0) * KK : 0);
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    float xv[8], p = 0.0f;
                    if (mine && n < N) load8f<T>(xv, xr + (size_t)n * KK);
                    else
#pragma unroll
                        for (int k = 0; k < 8; k++) xv[k] = 0.0f;
#pragma unroll
                    for (int k = 0; k < 8; k++) p = fmaf(w[k], xv[k], p);
#pragma unroll
                    for (int q = 0; q < TMB_WR; q++) acc[q][n] = fmaf(rr == q ? p : 0.0f, sc, acc[q][n]);
                }
            }
        }
        trit_mm_finish<T, TMB_WR, NT>(acc, out, bias, lane, o0, N, O);
    }
}

/* Whether layout 4 takes this product: K and the group multiples of 8 and at least 40, whole 32-bit words of trits. */
static bool trit_mm_bytes_ok(const TernaryTensor *t, int K)
{
    return K % 8 == 0 && K >= 40 && t->group % 8 == 0 && t->group >= 40 && ((uintptr_t)t->trits & 3) == 0;
}

template <typename T, int NT>
static void trit_mm_bytes_run(void *out, const void *x, const TernaryTensor *t, const void *bias, int N, int K, int O)
{
    static_assert(TMB_WR * NT <= 32, "a lane per output of a warp");
    int warps = (O + TMB_WR - 1) / TMB_WR, per_block = TMM_THREADS / 32;
    unsigned blocks = (unsigned)((warps + per_block - 1) / per_block);
    trit_mm_bytes_kernel<T, NT><<<blocks, TMM_THREADS, 0, g_cu.stream>>>((T *)out, (const T *)x, *t, (const T *)bias,
                                                                       N, K, O);
    CUDA_CHECK_LAUNCH();
}

/* The layout (rows of W per warp, chunks per trip) of variant v (BackendOptions.tern_mm_variant) for NT. */
template <typename T, int NT>
static void trit_mm_small_layout(int v, void *out, const void *x, const TernaryTensor *t, const void *bias, int N,
                                 int K, int O)
{
    if (v == 4 && trit_mm_bytes_ok(t, K)) trit_mm_bytes_run<T, NT>(out, x, t, bias, N, K, O);
    else if (v == 1) trit_mm_small_run<T, NT, 4, 1>(out, x, t, bias, N, K, O);
    else if (v == 2) trit_mm_small_run<T, NT, 2, 2>(out, x, t, bias, N, K, O);
    else trit_mm_small_run<T, NT, 1, 4>(out, x, t, bias, N, K, O);
}

template <typename T>
static void cu_ternary_matmul_fwd(void *out, const void *x, const TernaryTensor *t, const void *bias, void *scratch,
                                  int N, int K, int O)
{
    if (N >= 1 && N <= TERN_MM_SMALL_N && K % 8 == 0 && t->group >= 8 && ((uintptr_t)x & 15) == 0 &&
        t->n == (size_t)O * (size_t)K) {
        CUDA_PROF("ternary_mm_small");
        /* measured on the H200 (docs/ternary.md): layout 4 (byte-aligned chunks) the fastest at one row and
         * about it at two, layout 2 (two rows, two chunks a trip) at four */
        int v = g_cu.opts.tern_mm_variant ? g_cu.opts.tern_mm_variant : N <= 2 && trit_mm_bytes_ok(t, K) ? 4 : 2;
        if (N == 1) trit_mm_small_layout<T, 1>(v, out, x, t, bias, N, K, O);
        else if (N == 2) trit_mm_small_layout<T, 2>(v, out, x, t, bias, N, K, O);
        else trit_mm_small_layout<T, 4>(v, out, x, t, bias, N, K, O);
        return;
    }
    cu_trit_unpack<T>(scratch, t);
    cu_matmul_fwd<T>(out, x, scratch, bias, N, K, O);
}

__device__ __forceinline__ int sat8(int v) { return v > 127 ? 127 : v < -128 ? -128 : v; }

/* Add d * 3^k to byte `byte` of packed through its aligned 32-bit word (the array's allocation is
 * rounded up to 4 bytes, params.c). */
__device__ __forceinline__ void trit_add(uint8_t *packed, size_t byte, int d, int k)
{
    int p = 1;
    for (int q = 0; q < k; q++) p *= 3;
    unsigned *word = (unsigned *)(packed + (byte & ~(size_t)3));
    unsigned shift = 8u * (unsigned)(byte & 3);
    atomicAdd(word, (unsigned)(d * p) << shift); /* d < 0: two's complement wraps to the same byte */
}

/* Group g of tensor t by one warp (lane = the thread's lane): the update of backend.h TernaryHyper. */
__device__ __forceinline__ void update_group(const TernaryTensor &t, size_t g, const TernaryHyper &h, int scale_step,
                                             int lane, const uint16_t *lut)
{
    size_t lo = g * (size_t)t.group, hi = lo + (size_t)t.group < t.n ? lo + (size_t)t.group : t.n;
    double sabs = 0, sg = 0;
    for (size_t i = lo + (size_t)lane; i < hi; i += TERN_LANES) {
        double gi = (double)t.grad[i];
        sabs = __dadd_rn(sabs, fabs(gi));
        sg = __dadd_rn(sg, __dmul_rn(gi, (double)trit_at(t.trits, i, lut)));
    }
    for (int off = TERN_LANES / 2; off > 0; off >>= 1) { /* every lane ends with the same bits */
        sabs = __dadd_rn(sabs, __shfl_xor_sync(0xffffffffu, sabs, off));
        sg = __dadd_rn(sg, __shfl_xor_sync(0xffffffffu, sg, off));
    }
    double cut = __dmul_rn((double)h.deadzone, __ddiv_rn(sabs, (double)(hi - lo)));
    for (size_t i = lo + (size_t)lane; i < hi; i += TERN_LANES) {
        double gi = (double)t.grad[i];
        int vote = gi == 0 || fabs(gi) < cut ? 0 : gi > 0 ? -1 : 1;
        int a = sat8(t.tacc[i] + vote);
        if (a >= h.threshold || a <= -h.threshold) {
            int d = a > 0 ? 1 : -1, tr = trit_at(t.trits, i, lut) + d; /* other digits may change: no carry */
            if (tr >= -1 && tr <= 1) trit_add(t.trits, i / TRITS_PER_BYTE, d, (int)(i % TRITS_PER_BYTE));
            a = 0;
        }
        t.tacc[i] = (int8_t)a;
    }
    if (lane) return;
    int ea = sat8(t.eacc[g] + (sg < 0 ? 1 : sg > 0 ? -1 : 0));
    if (scale_step) {
        if (2 * (ea < 0 ? -ea : ea) >= h.scale_every) {
            int e = t.exp[g] + (ea > 0 ? 1 : -1);
            t.exp[g] = (int8_t)(e < h.exp_min ? h.exp_min : e > h.exp_max ? h.exp_max : e);
        }
        ea = 0;
    }
    t.eacc[g] = (int8_t)ea;
}

/* The same for a whole group of 32 K weights with everything in registers: the lane's K gradients,
 * accumulators and trits are loaded together up front (one round trip to memory instead of a chain of
 * them), and the sums run in the generic path's order (element lane + 32 j for j = 0 .. K-1), so the
 * results are the same bits. The lane's own digits cannot change under it: other lanes' atomics add to
 * other digits of a shared byte, never carrying into this one. */
template <int K>
__device__ __forceinline__ void update_group_regs(const TernaryTensor &t, size_t g, const TernaryHyper &h,
                                                  int scale_step, int lane, const uint16_t *lut)
{
    size_t lo = g * (size_t)(TERN_LANES * K);
    float gv[K];
    int ta[K], tr[K];
#pragma unroll
    for (int j = 0; j < K; j++) {
        size_t i = lo + (size_t)lane + (size_t)(TERN_LANES * j);
        gv[j] = t.grad[i];
        ta[j] = t.tacc[i];
        tr[j] = trit_at(t.trits, i, lut);
    }
    double sabs = 0, sg = 0;
#pragma unroll
    for (int j = 0; j < K; j++) {
        double gi = (double)gv[j];
        sabs = __dadd_rn(sabs, fabs(gi));
        sg = __dadd_rn(sg, __dmul_rn(gi, (double)tr[j]));
    }
    for (int off = TERN_LANES / 2; off > 0; off >>= 1) {
        sabs = __dadd_rn(sabs, __shfl_xor_sync(0xffffffffu, sabs, off));
        sg = __dadd_rn(sg, __shfl_xor_sync(0xffffffffu, sg, off));
    }
    double cut = __dmul_rn((double)h.deadzone, __ddiv_rn(sabs, (double)(TERN_LANES * K)));
#pragma unroll
    for (int j = 0; j < K; j++) {
        size_t i = lo + (size_t)lane + (size_t)(TERN_LANES * j);
        double gi = (double)gv[j];
        int vote = gi == 0 || fabs(gi) < cut ? 0 : gi > 0 ? -1 : 1;
        int a = sat8(ta[j] + vote);
        if (a >= h.threshold || a <= -h.threshold) {
            int d = a > 0 ? 1 : -1, nt = tr[j] + d;
            if (nt >= -1 && nt <= 1) trit_add(t.trits, i / TRITS_PER_BYTE, d, (int)(i % TRITS_PER_BYTE));
            a = 0;
        }
        t.tacc[i] = (int8_t)a;
    }
    if (lane) return;
    int ea = sat8(t.eacc[g] + (sg < 0 ? 1 : sg > 0 ? -1 : 0));
    if (scale_step) {
        if (2 * (ea < 0 ? -ea : ea) >= h.scale_every) {
            int e = t.exp[g] + (ea > 0 ? 1 : -1);
            t.exp[g] = (int8_t)(e < h.exp_min ? h.exp_min : e > h.exp_max ? h.exp_max : e);
        }
        ea = 0;
    }
    t.eacc[g] = (int8_t)ea;
}

/* Group g: in registers when it is whole and 32, 64, 128 or 256 weights, else the generic loop. */
__device__ __forceinline__ void update_any(const TernaryTensor &t, size_t g, const TernaryHyper &h, int scale_step,
                                           int lane, const uint16_t *lut)
{
    size_t G = (size_t)t.group;
    if ((g + 1) * G <= t.n) {
        switch (t.group) {
        case 32: update_group_regs<1>(t, g, h, scale_step, lane, lut); return;
        case 64: update_group_regs<2>(t, g, h, scale_step, lane, lut); return;
        case 128: update_group_regs<4>(t, g, h, scale_step, lane, lut); return;
        case 256: update_group_regs<8>(t, g, h, scale_step, lane, lut); return;
        default: break;
        }
    }
    update_group(t, g, h, scale_step, lane, lut);
}

#define TERN_WARPS (TERN_THREADS / TERN_LANES)

/* One warp per group of every tensor; gstart (nt + 1) are the tensors' first group numbers. */
__global__ void ternary_update_kernel(const TernaryTensor *ts, const size_t *gstart, int nt, TernaryHyper h)
{
    __shared__ uint16_t lut[TRIT_BYTE_MAX + 1];
    trit_table(lut);
    size_t total = gstart[nt];
    int scale_step = h.scale_every > 0 && h.step % h.scale_every == 0, lane = threadIdx.x % TERN_LANES;
    for (size_t G = (size_t)blockIdx.x * TERN_WARPS + threadIdx.x / TERN_LANES; G < total;
         G += (size_t)gridDim.x * TERN_WARPS) {
        int lo_t = 0, hi_t = nt - 1; /* the tensor holding group G: the last with gstart <= G */
        while (lo_t < hi_t) {
            int mid = (lo_t + hi_t + 1) / 2;
            if (gstart[mid] <= G) lo_t = mid;
            else hi_t = mid - 1;
        }
        update_any(ts[lo_t], G - gstart[lo_t], h, scale_step, lane, lut);
    }
}

/* The same for one tensor, passed by value (the fused update inside the backward: no copy, no wait). */
__global__ void ternary_update1_kernel(TernaryTensor t, size_t ng, TernaryHyper h)
{
    __shared__ uint16_t lut[TRIT_BYTE_MAX + 1];
    trit_table(lut);
    int scale_step = h.scale_every > 0 && h.step % h.scale_every == 0, lane = threadIdx.x % TERN_LANES;
    for (size_t g = (size_t)blockIdx.x * TERN_WARPS + threadIdx.x / TERN_LANES; g < ng; g += (size_t)gridDim.x * TERN_WARPS)
        update_any(t, g, h, scale_step, lane, lut);
}

static void cu_ternary_update(const TernaryTensor *ts, int nt, const TernaryHyper *h)
{
    CUDA_PROF("ternary_update");
    if (nt <= 0) return;
    if (nt == 1) {
        size_t ng = tern_groups(ts[0].n, ts[0].group);
        ternary_update1_kernel<<<grid_for(ng, TERN_WARPS), TERN_THREADS, 0, g_cu.stream>>>(ts[0], ng, *h);
        CUDA_CHECK_LAUNCH();
        return;
    }
    size_t *gs = (size_t *)malloc(((size_t)nt + 1) * sizeof(size_t));
    gs[0] = 0;
    for (int k = 0; k < nt; k++) gs[k + 1] = gs[k] + tern_groups(ts[k].n, ts[k].group);
    size_t bytes_t = (size_t)nt * sizeof(TernaryTensor), bytes_g = ((size_t)nt + 1) * sizeof(size_t);
    char *d = (char *)cuda_scratch(bytes_t + bytes_g);
    /* copies from pageable memory return once the host arrays are staged, so they may be freed then;
     * the kernel after them on the stream sees the data */
    CUDA_CHECK(cudaMemcpyAsync(d, ts, bytes_t, cudaMemcpyHostToDevice, g_cu.stream));
    CUDA_CHECK(cudaMemcpyAsync(d + bytes_t, gs, bytes_g, cudaMemcpyHostToDevice, g_cu.stream));
    ternary_update_kernel<<<grid_for(gs[nt], TERN_WARPS), TERN_THREADS, 0, g_cu.stream>>>(
        (const TernaryTensor *)d, (const size_t *)(d + bytes_t), nt, *h);
    CUDA_CHECK_LAUNCH();
    free(gs);
}

/* ---- BitNet under tensor parallel: per-slice statistics, and what finishes from the group's ---- */

/* *sum = the sum of the first stage's parts (a fixed order) */
__global__ void abs_sum_final_kernel(double *sum, const double *part, int nparts)
{
    if (threadIdx.x != 0) return;
    double t = 0;
    for (int k = 0; k < nparts; k++) t += part[k];
    *sum = t;
}

template <typename T> static void cu_ternary_abs_sum(double *sum, const void *w, int w_act, size_t n)
{
    CUDA_PROF("ternary_abs_sum");
    double *part = (double *)cuda_scratch(WQ_PARTS * sizeof(double));
    if (w_act) absmean_partial_kernel<T><<<WQ_PARTS, TERN_THREADS, 0, g_cu.stream>>>(part, (const T *)w, n);
    else absmean_partial_kernel<float><<<WQ_PARTS, TERN_THREADS, 0, g_cu.stream>>>(part, (const float *)w, n);
    CUDA_CHECK_LAUNCH();
    abs_sum_final_kernel<<<1, 32, 0, g_cu.stream>>>(sum, part, WQ_PARTS);
    CUDA_CHECK_LAUNCH();
}

/* scale = 1 / max((float)(S / count), 1e-5), S the nsums sums at stride, in order */
__global__ void sums_scale_kernel(float *scale, const double *sums, int nsums, int stride, double count)
{
    if (threadIdx.x != 0) return;
    double t = 0;
    for (int k = 0; k < nsums; k++) t += sums[(size_t)k * stride];
    float gamma = count > 0 ? (float)(t / count) : 0.0f;
    if (gamma < TERN_EPS_F) gamma = TERN_EPS_F;
    *scale = 1.0f / gamma;
}

template <typename T>
static void cu_ternary_wquant_sums(void *out, const void *w, int w_act, size_t n, const double *sums, int nsums,
                                   int stride, double count)
{
    CUDA_PROF("ternary_wquant_sums");
    if (!n) return;
    float *scale = (float *)cuda_scratch(sizeof(float));
    sums_scale_kernel<<<1, 32, 0, g_cu.stream>>>(scale, sums, nsums, stride, count);
    CUDA_CHECK_LAUNCH();
    if (w_act)
        wquant_kernel<T, T><<<grid_for(n, TERN_THREADS), TERN_THREADS, 0, g_cu.stream>>>((T *)out, (const T *)w, scale, n);
    else
        wquant_kernel<T, float><<<grid_for(n, TERN_THREADS), TERN_THREADS, 0, g_cu.stream>>>((T *)out, (const float *)w,
                                                                                             scale, n);
    CUDA_CHECK_LAUNCH();
}

/* the block's max of v (every thread gets it) */
__device__ float block_max(float v, float *s)
{
    s[threadIdx.x] = v;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if ((int)threadIdx.x < k) s[threadIdx.x] = fmaxf(s[threadIdx.x], s[threadIdx.x + k]);
        __syncthreads();
    }
    float r = s[0];
    __syncthreads();
    return r;
}

/* the block's sum of v in double, in a fixed tree order (every thread gets it) */
__device__ double block_sum_f64(double v, double *s)
{
    s[threadIdx.x] = v;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if ((int)threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
        __syncthreads();
    }
    double r = s[0];
    __syncthreads();
    return r;
}

template <typename T> __global__ void act_absmax_kernel(float *amax, const T *inp, int C)
{
    __shared__ float s[TERN_THREADS];
    const T *x = inp + (size_t)blockIdx.x * C;
    float mx = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) mx = fmaxf(mx, fabsf(to_f(x[j])));
    mx = block_max(mx, s);
    if (threadIdx.x == 0) amax[blockIdx.x] = mx;
}

template <typename T> static void cu_act_absmax(float *amax, const void *inp, int N, int C)
{
    CUDA_PROF("act_absmax");
    if (N <= 0) return;
    act_absmax_kernel<T><<<N, TERN_THREADS, 0, g_cu.stream>>>(amax, (const T *)inp, C);
    CUDA_CHECK_LAUNCH();
}

/* act_quant8_kernel's arithmetic with the row's absmax the largest of the P parts of amax (P, N) */
template <typename T> __global__ void act_quant8_amax_kernel(T *out, const T *inp, const float *amax, int P, int N, int C)
{
    const T *x = inp + (size_t)blockIdx.x * C;
    T *o = out + (size_t)blockIdx.x * C;
    float mx = 0;
    for (int k = 0; k < P; k++) mx = fmaxf(mx, amax[(size_t)k * N + blockIdx.x]);
    float sc = __fdiv_rn(127.0f, fmaxf(mx, TERN_EPS_F));
    for (int j = threadIdx.x; j < C; j += blockDim.x) { /* each element read before its own write */
        float q = rintf(__fmul_rn(to_f(x[j]), sc));
        q = fminf(fmaxf(q, -128.0f), 127.0f);
        o[j] = from_f<T>(__fdiv_rn(q, sc));
    }
}

template <typename T> static void cu_act_quant8_amax(void *out, const void *inp, const float *amax, int P, int N, int C)
{
    CUDA_PROF("act_quant8_amax");
    if (N <= 0) return;
    act_quant8_amax_kernel<T><<<N, TERN_THREADS, 0, g_cu.stream>>>((T *)out, (const T *)inp, amax, P, N, C);
    CUDA_CHECK_LAUNCH();
}

// dot[row] = sum_c (a * w) * (b * s[row]), each product in fp32, the sum in double
template <typename T>
__global__ void rms_row_dot_kernel(double *dot, const T *a, const T *b, const T *w, const float *s, int C)
{
    __shared__ double sh[TERN_THREADS];
    size_t r = blockIdx.x;
    const T *ar = a + r * C, *br = b + r * C;
    float sr = s ? s[r] : 1.0f;
    double t = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float x = to_f(ar[c]), y = to_f(br[c]);
        if (w) x = __fmul_rn(x, to_f(w[c]));
        if (s) y = __fmul_rn(y, sr);
        t += (double)x * (double)y;
    }
    t = block_sum_f64(t, sh);
    if (threadIdx.x == 0) dot[r] = t;
}

template <typename T>
static void cu_rms_row_dot(double *dot, const void *a, const void *b, const void *w, const float *s, int N, int C)
{
    CUDA_PROF("rms_row_dot");
    if (N <= 0) return;
    rms_row_dot_kernel<T><<<N, TERN_THREADS, 0, g_cu.stream>>>(dot, (const T *)a, (const T *)b, (const T *)w, s, C);
    CUDA_CHECK_LAUNCH();
}

__device__ double parts_sum(const double *x, int P, int N, int r)
{
    double t = 0;
    for (int k = 0; k < P; k++) t += x[(size_t)k * N + r];
    return t;
}

template <typename T>
__global__ void rms_split_fwd_kernel(T *out, float *rstd, const T *x, const T *w, const double *ss, int P, int N, int C,
                                     int Cn, float eps)
{
    int r = blockIdx.x;
    float s = (float)(1.0 / sqrt(parts_sum(ss, P, N, r) / Cn + (double)eps));
    const T *xr = x + (size_t)r * C;
    T *o = out + (size_t)r * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = from_f<T>(to_f(xr[c]) * s * to_f(w[c]));
    if (threadIdx.x == 0) rstd[r] = s;
}

template <typename T>
static void cu_rms_split_fwd(void *out, float *rstd, const void *x, const void *w, const double *ss, int P, int N, int C,
                             int Cn, float eps)
{
    CUDA_PROF("rms_split_fwd");
    if (N <= 0) return;
    rms_split_fwd_kernel<T><<<N, TERN_THREADS, 0, g_cu.stream>>>((T *)out, rstd, (const T *)x, (const T *)w, ss, P, N,
                                                                  C, Cn, eps);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
__global__ void rms_split_dx_kernel(T *dinp, const T *dout, const T *x, const T *w, const float *rstd, const double *dot,
                                    int P, int N, int C, int Cn)
{
    int r = blockIdx.x;
    float s = rstd[r];
    double gx = parts_sum(dot, P, N, r) / Cn;
    const T *d = dout + (size_t)r * C, *xr = x + (size_t)r * C;
    T *dx = dinp + (size_t)r * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float xhat = to_f(xr[c]) * s;
        dx[c] = from_f<T>(to_f(dx[c]) + s * (float)(to_f(d[c]) * to_f(w[c]) - xhat * gx));
    }
}

/* dw[c] += sum over rows of dout * xhat: a thread per column (the rows in order) */
template <typename T>
__global__ void rms_split_dw_kernel(float *dw, const T *dout, const T *x, const float *rstd, int N, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float t = 0;
    for (int r = 0; r < N; r++) t += to_f(dout[(size_t)r * C + c]) * (to_f(x[(size_t)r * C + c]) * rstd[r]);
    dw[c] += t;
}

template <typename T>
static void cu_rms_split_bwd(void *dinp, float *dw, const void *dout, const void *x, const void *w, const float *rstd,
                             const double *dot, int P, int N, int C, int Cn)
{
    CUDA_PROF("rms_split_bwd");
    if (N <= 0) return;
    rms_split_dx_kernel<T><<<N, TERN_THREADS, 0, g_cu.stream>>>((T *)dinp, (const T *)dout, (const T *)x, (const T *)w,
                                                                 rstd, dot, P, N, C, Cn);
    CUDA_CHECK_LAUNCH();
    if (!dw) return;
    rms_split_dw_kernel<T><<<CEIL_DIV(C, TERN_THREADS), TERN_THREADS, 0, g_cu.stream>>>(dw, (const T *)dout,
                                                                                       (const T *)x, rstd, N, C);
    CUDA_CHECK_LAUNCH();
}

template <typename T> void cu_fill_ternary_ops(Backend *be)
{
    be->ternary_wquant = cu_ternary_wquant<T>;
    be->ternary_wquant_act = cu_ternary_wquant_act<T>;
    be->act_quant8 = cu_act_quant8<T>;
    be->relu2glu_fwd = cu_relu2glu_fwd<T>;
    be->relu2glu_bwd = cu_relu2glu_bwd<T>;
    be->trit_unpack = cu_trit_unpack<T>;
    be->ternary_matmul_fwd = cu_ternary_matmul_fwd<T>;
    be->ternary_update = cu_ternary_update;
    be->ternary_abs_sum = cu_ternary_abs_sum<T>;
    be->ternary_wquant_sums = cu_ternary_wquant_sums<T>;
    be->act_absmax = cu_act_absmax<T>;
    be->act_quant8_amax = cu_act_quant8_amax<T>;
    be->rms_row_dot = cu_rms_row_dot<T>;
    be->rms_split_fwd = cu_rms_split_fwd<T>;
    be->rms_split_bwd = cu_rms_split_bwd<T>;
}

template void cu_fill_ternary_ops<float>(Backend *);
template void cu_fill_ternary_ops<bf16>(Backend *);
