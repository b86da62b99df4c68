/* cuda_attention.cu - causal self-attention with grouped-query heads.
 *
 * Two implementations:
 *  - flash (bf16, head_dim 64): FlashAttention-2 style tiles on the tensor
 *    cores, bf16 in, fp32 accumulate. Forward (default: Hopper wgmma, else
 *    mma.sync m16n8k16) keeps the (T,T) scores in registers and saves only the
 *    row log-sum-exp. Backward (mma.sync): by default one fused kernel per key
 *    block that adds dQ with fp32 atomics; the deterministic mode's is two
 *    kernels: one owns a block of keys and sums dK, dV over every query (and
 *    every query head of its group), the other owns a block of queries and sums dQ.
 *  - simple (any element type, head_dim <= 256): one warp per query row,
 *    online softmax in fp32; the fp32 parity mode and other head sizes use it.
 *
 * Layout (backend.h): qkv (B,T,(nh+2*nkv)*hd) rows [q heads | k heads | v heads],
 * out (B,T,nh*hd), lse (B,nh,T). Query head h reads kv head h / (nh/nkv).
 * ANVIL_ATTENTION=simple forces the simple kernels (for tests and comparisons). */
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_cudnn.h"

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define SIMPLE_MAX_HD 256
#define SIMPLE_WARPS 8

/* ================================================================ simple */

// out = softmax(q k^T * scale, causal) v,  lse = log sum exp of each row.  One warp per (b, h, t);
// lane owns dims lane, lane+32, ...
template <typename T>
__global__ void attn_simple_fwd_kernel(T *out, float *lse, const T *qkv, int B, int T_, int nh, int nkv, int hd)
{
    const int NPL = SIMPLE_MAX_HD / 32;
    size_t wid = (size_t)blockIdx.x * SIMPLE_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (wid >= (size_t)B * nh * T_) return;
    int t = (int)(wid % T_), h = (int)(wid / T_ % nh), b = (int)(wid / T_ / nh);
    int row = (nh + 2 * nkv) * hd, kvh = h / (nh / nkv);
    float scale = 1.0f / sqrtf((float)hd);
    const T *q = qkv + ((size_t)b * T_ + t) * row + (size_t)h * hd;
    float qv[NPL], o[NPL];
#pragma unroll
    for (int k = 0; k < NPL; k++) {
        int d = lane + 32 * k;
        qv[k] = d < hd ? to_f(q[d]) : 0.0f;
        o[k] = 0;
    }
    float m = -INFINITY, l = 0;
    for (int s = 0; s <= t; s++) {
        const T *kr = qkv + ((size_t)b * T_ + s) * row + (size_t)(nh + kvh) * hd;
        const T *vr = kr + (size_t)nkv * hd;
        float dot = 0;
#pragma unroll
        for (int k = 0; k < NPL; k++) {
            int d = lane + 32 * k;
            if (d < hd) dot += qv[k] * to_f(kr[d]);
        }
        dot = warp_sum(dot) * scale;
        float mn = fmaxf(m, dot), alpha = expf(m - mn), p = expf(dot - mn);
        l = l * alpha + p;
#pragma unroll
        for (int k = 0; k < NPL; k++) {
            int d = lane + 32 * k;
            if (d < hd) o[k] = o[k] * alpha + p * to_f(vr[d]);
        }
        m = mn;
    }
    T *orow = out + ((size_t)b * T_ + t) * nh * hd + (size_t)h * hd;
#pragma unroll
    for (int k = 0; k < NPL; k++) {
        int d = lane + 32 * k;
        if (d < hd) orow[d] = from_f<T>(o[k] / l);
    }
    if (lane == 0) lse[((size_t)b * nh + h) * T_ + t] = m + logf(l);
}

// Per (b, h, t): Dt = dout . out;  dq = scale * sum_s p_s (dout . v_s - Dt) k_s
template <typename T>
__global__ void attn_simple_bwd_q_kernel(T *dqkv, float *Dbuf, const T *dout, const T *out, const float *lse,
                                         const T *qkv, int B, int T_, int nh, int nkv, int hd)
{
    const int NPL = SIMPLE_MAX_HD / 32;
    size_t wid = (size_t)blockIdx.x * SIMPLE_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (wid >= (size_t)B * nh * T_) return;
    int t = (int)(wid % T_), h = (int)(wid / T_ % nh), b = (int)(wid / T_ / nh);
    int row = (nh + 2 * nkv) * hd, kvh = h / (nh / nkv);
    float scale = 1.0f / sqrtf((float)hd);
    size_t rt = (size_t)b * T_ + t;
    const T *q = qkv + rt * row + (size_t)h * hd;
    const T *o = out + rt * nh * hd + (size_t)h * hd, *d = dout + rt * nh * hd + (size_t)h * hd;
    float qv[NPL], dv[NPL], dq[NPL], D = 0;
#pragma unroll
    for (int k = 0; k < NPL; k++) {
        int e = lane + 32 * k;
        qv[k] = e < hd ? to_f(q[e]) : 0.0f;
        dv[k] = e < hd ? to_f(d[e]) : 0.0f;
        dq[k] = 0;
        if (e < hd) D += dv[k] * to_f(o[e]);
    }
    D = warp_sum(D);
    float L = lse[((size_t)b * nh + h) * T_ + t];
    if (lane == 0) Dbuf[((size_t)b * nh + h) * T_ + t] = D;
    for (int s = 0; s <= t; s++) {
        const T *kr = qkv + ((size_t)b * T_ + s) * row + (size_t)(nh + kvh) * hd;
        const T *vr = kr + (size_t)nkv * hd;
        float dot = 0, dpv = 0;
#pragma unroll
        for (int k = 0; k < NPL; k++) {
            int e = lane + 32 * k;
            if (e < hd) {
                dot += qv[k] * to_f(kr[e]);
                dpv += dv[k] * to_f(vr[e]);
            }
        }
        dot = warp_sum(dot);
        dpv = warp_sum(dpv);
        float ps = expf(dot * scale - L);
        float ds = ps * (dpv - D) * scale;
#pragma unroll
        for (int k = 0; k < NPL; k++) {
            int e = lane + 32 * k;
            if (e < hd) dq[k] += ds * to_f(kr[e]);
        }
    }
    T *dqr = dqkv + rt * row + (size_t)h * hd;
#pragma unroll
    for (int k = 0; k < NPL; k++) {
        int e = lane + 32 * k;
        if (e < hd) dqr[e] = from_f<T>(dq[k]);
    }
}

// Per (b, kv head, s): dk_s = scale * sum_{h in group, t >= s} ds_ts q_t,  dv_s = sum p_ts dout_t
template <typename T>
__global__ void attn_simple_bwd_kv_kernel(T *dqkv, const float *Dbuf, const T *dout, const float *lse, const T *qkv,
                                          int B, int T_, int nh, int nkv, int hd)
{
    const int NPL = SIMPLE_MAX_HD / 32;
    size_t wid = (size_t)blockIdx.x * SIMPLE_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (wid >= (size_t)B * nkv * T_) return;
    int s = (int)(wid % T_), kvh = (int)(wid / T_ % nkv), b = (int)(wid / T_ / nkv);
    int row = (nh + 2 * nkv) * hd, group = nh / nkv;
    float scale = 1.0f / sqrtf((float)hd);
    size_t rs = (size_t)b * T_ + s;
    const T *kr = qkv + rs * row + (size_t)(nh + kvh) * hd, *vr = kr + (size_t)nkv * hd;
    float kv[NPL], vv[NPL], dk[NPL], dvv[NPL];
#pragma unroll
    for (int k = 0; k < NPL; k++) {
        int e = lane + 32 * k;
        kv[k] = e < hd ? to_f(kr[e]) : 0.0f;
        vv[k] = e < hd ? to_f(vr[e]) : 0.0f;
        dk[k] = dvv[k] = 0;
    }
    for (int h = kvh * group; h < (kvh + 1) * group; h++)
        for (int t = s; t < T_; t++) {
            size_t rt = (size_t)b * T_ + t;
            const T *q = qkv + rt * row + (size_t)h * hd, *d = dout + rt * nh * hd + (size_t)h * hd;
            float dot = 0, dpv = 0;
#pragma unroll
            for (int k = 0; k < NPL; k++) {
                int e = lane + 32 * k;
                if (e < hd) {
                    dot += to_f(q[e]) * kv[k];
                    dpv += to_f(d[e]) * vv[k];
                }
            }
            dot = warp_sum(dot);
            dpv = warp_sum(dpv);
            size_t li = ((size_t)b * nh + h) * T_ + t;
            float ps = expf(dot * scale - lse[li]);
            float ds = ps * (dpv - Dbuf[li]) * scale;
#pragma unroll
            for (int k = 0; k < NPL; k++) {
                int e = lane + 32 * k;
                if (e < hd) {
                    dk[k] += ds * to_f(q[e]);
                    dvv[k] += ps * to_f(d[e]);
                }
            }
        }
    T *dkr = dqkv + rs * row + (size_t)(nh + kvh) * hd, *dvr = dkr + (size_t)nkv * hd;
#pragma unroll
    for (int k = 0; k < NPL; k++) {
        int e = lane + 32 * k;
        if (e < hd) {
            dkr[e] = from_f<T>(dk[k]);
            dvr[e] = from_f<T>(dvv[k]);
        }
    }
}

/* ================================================================= flash */

#define FA_D 64                /* head_dim the flash kernels are built for */
#define FA_BLOCK 64            /* query rows and key rows per tile */
#define FA_WARPS 4             /* each warp owns 16 rows of the tile */
#define FA_THREADS (FA_WARPS * 32)
#define FA_LDS (FA_D + 8)      /* shared row stride (elements): +16 bytes keeps fragment loads conflict-free */
#define FA_TILE (FA_BLOCK * FA_LDS) /* elements of one shared tile */

typedef uint32_t u32;

__device__ __forceinline__ void mma_bf16(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* The launch order of a flash grid. zorder 1: grid (heads, B, tiles): tile t of every head before
 * tile t+1 of any, so that the heaviest tiles start first everywhere (balance, when the grid is a
 * few waves and the work per tile varies a lot: grouped-query llama-1b, T=2048); 0: grid (tiles,
 * heads, B): one head's tiles run together and share its K/V (or Q/dO) in L2 (many waves: GPT-2
 * 124M, B=64, ran 6 ms slower in z order). */
__device__ __forceinline__ void flash_block(int zorder, int &tile, int &ntile, int &head, int &b)
{
    if (zorder) tile = blockIdx.z, ntile = gridDim.z, head = blockIdx.x, b = blockIdx.y;
    else tile = blockIdx.x, ntile = gridDim.x, head = blockIdx.y, b = blockIdx.z;
}

/* Four 8x8 bf16 matrices, transposed: lane gets M_i[2(lane%4)..+1][lane/4] of matrix i in r[i];
 * lanes 8i..8i+7 give the row addresses of matrix i. */
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], const bf16 *p)
{
    unsigned addr = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ u32 pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<u32 *>(&v);
}

__device__ __forceinline__ u32 lds32(const bf16 *p) { return *reinterpret_cast<const u32 *>(p); }

/* A tile of FA_BLOCK rows x FA_D columns from rows r0.. of a strided matrix into shared memory;
 * rows at or past T are zero. */
__device__ __forceinline__ void load_tile(bf16 *dst, const bf16 *src, size_t stride, int r0, int T_)
{
    const int PER_ROW = FA_D / 8;
    for (int i = threadIdx.x; i < FA_BLOCK * PER_ROW; i += FA_THREADS) {
        int r = i / PER_ROW, c = (i % PER_ROW) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r0 + r < T_) v = *reinterpret_cast<const uint4 *>(src + (size_t)(r0 + r) * stride + c);
        *reinterpret_cast<uint4 *>(dst + r * FA_LDS + c) = v;
    }
}

/* A-operand fragments of the 16 rows [row0, row0+16) of a shared tile, for every k step of FA_D. */
__device__ __forceinline__ void load_a_frags(u32 (&f)[FA_D / 16][4], const bf16 *tile, int row0, int g, int tq)
{
#pragma unroll
    for (int kk = 0; kk < FA_D / 16; kk++) {
        const bf16 *p = tile + (row0 + g) * FA_LDS + kk * 16 + 2 * tq;
        f[kk][0] = lds32(p);
        f[kk][1] = lds32(p + 8 * FA_LDS);
        f[kk][2] = lds32(p + 8);
        f[kk][3] = lds32(p + 8 * FA_LDS + 8);
    }
}

/* acc (16 x 64) = A (16 x FA_D, fragments) @ tile^T, tile rows are the 64 output columns. */
__device__ __forceinline__ void mma_a_tileT(float (&acc)[8][4], const u32 (&a)[FA_D / 16][4], const bf16 *tile, int g,
                                            int tq)
{
#pragma unroll
    for (int nt = 0; nt < 8; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0;
#pragma unroll
    for (int kk = 0; kk < FA_D / 16; kk++)
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            const bf16 *p = tile + (nt * 8 + g) * FA_LDS + kk * 16 + 2 * tq;
            mma_bf16(acc[nt], a[kk], lds32(p), lds32(p + 8));
        }
}

/* acc (16 x FA_D) += P (16 x 64, fp32 accumulator layout, rounded to bf16 here) @ tile (64 x FA_D). */
__device__ __forceinline__ void mma_p_tile(float (&acc)[FA_D / 8][4], const float (&p)[8][4], const bf16 *tile,
                                           int lane)
{
#pragma unroll
    for (int kk = 0; kk < 4; kk++) { /* 16 tile rows per step */
        u32 a[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]), pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                    pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]), pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
        int mi = lane / 8, r = lane % 8;
#pragma unroll
        for (int dt = 0; dt < FA_D / 16; dt++) {
            u32 b[4];
            ldmatrix_x4_trans(b, tile + (kk * 16 + (mi & 1) * 8 + r) * FA_LDS + dt * 16 + (mi >> 1) * 8);
            mma_bf16(acc[2 * dt], a, b[0], b[1]);
            mma_bf16(acc[2 * dt + 1], a, b[2], b[3]);
        }
    }
}

// Forward: grid (nh, B, query blocks). Every flash kernel's grid has its tiles in z, the slowest
// index of the launch order, mapped so that the heaviest tiles (the last query blocks; the first
// key blocks) start first and the light ones fill the tail: with grouped-query heads a key block's
// work varies 32-fold (llama-1b, T=2048), and a heavy block started last leaves the GPU idle.
__global__ void __launch_bounds__(FA_THREADS) flash_fwd_kernel(bf16 *out, float *lse, const bf16 *qkv, int T_,
                                                               int nh, int nkv)
{
    __shared__ __align__(16) bf16 Ks[FA_BLOCK * FA_LDS];
    __shared__ __align__(16) bf16 Vs[FA_BLOCK * FA_LDS];
    int qb = gridDim.z - 1 - blockIdx.z, h = blockIdx.x, b = blockIdx.y;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    int kvh = h / (nh / nkv);
    size_t stride = (size_t)(nh + 2 * nkv) * FA_D;
    const bf16 *base = qkv + (size_t)b * T_ * stride;
    const bf16 *qsrc = base + (size_t)h * FA_D, *ksrc = base + (size_t)(nh + kvh) * FA_D,
               *vsrc = base + (size_t)(nh + nkv + kvh) * FA_D;
    int q0 = qb * FA_BLOCK;
    float c = LOG2E / sqrtf((float)FA_D); /* scores in the log2 domain */

    load_tile(Ks, qsrc, stride, q0, T_);
    __syncthreads();
    u32 qf[FA_D / 16][4];
    load_a_frags(qf, Ks, warp * 16, g, tq);
    __syncthreads();

    float o[FA_D / 8][4];
#pragma unroll
    for (int i = 0; i < FA_D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};
    int row_a = q0 + warp * 16 + g, row_b = row_a + 8; /* the two query rows of this thread */

    for (int kb = 0; kb <= qb; kb++) {
        int k0 = kb * FA_BLOCK;
        load_tile(Ks, ksrc, stride, k0, T_);
        load_tile(Vs, vsrc, stride, k0, T_);
        __syncthreads();
        float s[8][4];
        mma_a_tileT(s, qf, Ks, g, tq);
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = k0 + nt * 8 + 2 * tq + (e & 1), qrow = e < 2 ? row_a : row_b;
                float v = s[nt][e] * c;
                if (key > qrow || key >= T_) v = -INFINITY;
                s[nt][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
        float alpha[2], mu[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            float mn = fmaxf(m[r], mx[r]);
            mu[r] = mn == -INFINITY ? 0.0f : mn; /* a row with nothing visible yet stays at zero */
            alpha[r] = exp2f(m[r] - mu[r]);
            m[r] = mn;
            l[r] *= alpha[r];
        }
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = exp2f(s[nt][e] - mu[e >> 1]);
                s[nt][e] = p;
                l[e >> 1] += p;
            }
#pragma unroll
        for (int i = 0; i < FA_D / 8; i++) {
            o[i][0] *= alpha[0];
            o[i][1] *= alpha[0];
            o[i][2] *= alpha[1];
            o[i][3] *= alpha[1];
        }
        mma_p_tile(o, s, Vs, lane);
        __syncthreads(); /* before the next tiles overwrite Ks, Vs */
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    size_t ostride = (size_t)nh * FA_D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int qrow = r ? row_b : row_a;
        if (qrow >= T_) continue;
        float inv = 1.0f / l[r];
        bf16 *orow = out + ((size_t)b * T_ + qrow) * ostride + (size_t)h * FA_D;
#pragma unroll
        for (int i = 0; i < FA_D / 8; i++)
            *reinterpret_cast<u32 *>(orow + i * 8 + 2 * tq) = pack_bf16(o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
        if (tq == 0) lse[((size_t)b * nh + h) * T_ + qrow] = m[r] * LN2 + logf(l[r]);
    }
}

// Dt = dout . out per (b, h, t), stored like lse (B,nh,T). One warp per row.
__global__ void flash_bwd_dot_kernel(float *Dbuf, const bf16 *dout, const bf16 *out, int B, int T_, int nh)
{
    size_t wid = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (wid >= (size_t)B * T_ * nh) return;
    int h = (int)(wid % nh);
    size_t bt = wid / nh;
    const bf16 *d = dout + bt * nh * FA_D + (size_t)h * FA_D, *o = out + bt * nh * FA_D + (size_t)h * FA_D;
    float s = 0;
    for (int e = lane * 2; e < FA_D; e += 64) {
        float2 dd = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(d + e));
        float2 oo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(o + e));
        s += dd.x * oo.x + dd.y * oo.y;
    }
    s = warp_sum(s);
    int b = (int)(bt / T_), t = (int)(bt % T_);
    if (lane == 0) Dbuf[((size_t)b * nh + h) * T_ + t] = s;
}

// dK, dV for one block of 64 keys of one kv head: each warp owns 16 keys and, for every query head
// of the group and every query block at or after the keys, forms S^T = K Q^T, P^T, dP^T = V dO^T,
// dS^T = P^T (dP^T - D), then dV += P^T dO and dK += scale dS^T Q.
__global__ void __launch_bounds__(FA_THREADS) flash_bwd_kv_kernel(bf16 *dqkv, const bf16 *dout, const float *lse,
                                                                  const float *Dbuf, const bf16 *qkv, int T_, int nh,
                                                                  int nkv)
{
    __shared__ __align__(16) bf16 Qs[FA_BLOCK * FA_LDS];
    __shared__ __align__(16) bf16 Os[FA_BLOCK * FA_LDS]; /* dO tile (K, V staging first) */
    __shared__ float lse_s[FA_BLOCK], D_s[FA_BLOCK];
    int kb = blockIdx.z, kvh = blockIdx.x, b = blockIdx.y;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    int group = nh / nkv, nqb = gridDim.z;
    size_t stride = (size_t)(nh + 2 * nkv) * FA_D, ostride = (size_t)nh * FA_D;
    const bf16 *base = qkv + (size_t)b * T_ * stride;
    int k0 = kb * FA_BLOCK;
    float scale = 1.0f / sqrtf((float)FA_D), c = scale * LOG2E;

    load_tile(Qs, base + (size_t)(nh + kvh) * FA_D, stride, k0, T_);
    load_tile(Os, base + (size_t)(nh + nkv + kvh) * FA_D, stride, k0, T_);
    __syncthreads();
    u32 kf[FA_D / 16][4], vf[FA_D / 16][4];
    load_a_frags(kf, Qs, warp * 16, g, tq);
    load_a_frags(vf, Os, warp * 16, g, tq);

    float dk[FA_D / 8][4], dv[FA_D / 8][4];
#pragma unroll
    for (int i = 0; i < FA_D / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0;
    int key_a = k0 + warp * 16 + g, key_b = key_a + 8;

    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        const bf16 *dbase = dout + (size_t)b * T_ * ostride + (size_t)h * FA_D;
        const float *lse_h = lse + ((size_t)b * nh + h) * T_, *D_h = Dbuf + ((size_t)b * nh + h) * T_;
        for (int qb = kb; qb < nqb; qb++) {
            int q0 = qb * FA_BLOCK;
            __syncthreads(); /* everyone is done with the previous tiles */
            load_tile(Qs, base + (size_t)h * FA_D, stride, q0, T_);
            load_tile(Os, dbase, ostride, q0, T_);
            for (int i = threadIdx.x; i < FA_BLOCK; i += FA_THREADS) {
                bool ok = q0 + i < T_;
                lse_s[i] = ok ? lse_h[q0 + i] * LOG2E : 0.0f;
                D_s[i] = ok ? D_h[q0 + i] : 0.0f;
            }
            __syncthreads();
            float p[8][4], dp[8][4];
            mma_a_tileT(p, kf, Qs, g, tq);  /* S^T (16 keys x 64 queries) */
            mma_a_tileT(dp, vf, Os, g, tq); /* dP^T */
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int qi = nt * 8 + 2 * tq + (e & 1), q = q0 + qi, key = e < 2 ? key_a : key_b;
                    float pv = (key > q || q >= T_) ? 0.0f : exp2f(p[nt][e] * c - lse_s[qi]);
                    p[nt][e] = pv;
                    dp[nt][e] = pv * (dp[nt][e] - D_s[qi]); /* dS^T */
                }
            mma_p_tile(dv, p, Os, lane);
            mma_p_tile(dk, dp, Qs, lane);
        }
    }
    bf16 *dkbase = dqkv + (size_t)b * T_ * stride + (size_t)(nh + kvh) * FA_D;
    bf16 *dvbase = dkbase + (size_t)nkv * FA_D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int key = r ? key_b : key_a;
        if (key >= T_) continue;
#pragma unroll
        for (int i = 0; i < FA_D / 8; i++) {
            *reinterpret_cast<u32 *>(dkbase + (size_t)key * stride + i * 8 + 2 * tq) =
                pack_bf16(dk[i][2 * r] * scale, dk[i][2 * r + 1] * scale);
            *reinterpret_cast<u32 *>(dvbase + (size_t)key * stride + i * 8 + 2 * tq) =
                pack_bf16(dv[i][2 * r], dv[i][2 * r + 1]);
        }
    }
}

// dQ for one block of 64 queries of one head: for every key block at or before it,
// S = Q K^T, P, dP = dO V^T, dS = P (dP - D), dQ += scale dS K.
__global__ void __launch_bounds__(FA_THREADS) flash_bwd_q_kernel(bf16 *dqkv, const bf16 *dout, const float *lse,
                                                                 const float *Dbuf, const bf16 *qkv, int T_, int nh,
                                                                 int nkv)
{
    __shared__ __align__(16) bf16 Ks[FA_BLOCK * FA_LDS];
    __shared__ __align__(16) bf16 Vs[FA_BLOCK * FA_LDS];
    int qb = gridDim.z - 1 - blockIdx.z, h = blockIdx.x, b = blockIdx.y;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    int kvh = h / (nh / nkv);
    size_t stride = (size_t)(nh + 2 * nkv) * FA_D, ostride = (size_t)nh * FA_D;
    const bf16 *base = qkv + (size_t)b * T_ * stride;
    int q0 = qb * FA_BLOCK;
    float scale = 1.0f / sqrtf((float)FA_D), c = scale * LOG2E;

    load_tile(Ks, base + (size_t)h * FA_D, stride, q0, T_);
    load_tile(Vs, dout + (size_t)b * T_ * ostride + (size_t)h * FA_D, ostride, q0, T_);
    __syncthreads();
    u32 qf[FA_D / 16][4], df[FA_D / 16][4];
    load_a_frags(qf, Ks, warp * 16, g, tq);
    load_a_frags(df, Vs, warp * 16, g, tq);
    int row_a = q0 + warp * 16 + g, row_b = row_a + 8;
    const float *lse_h = lse + ((size_t)b * nh + h) * T_, *D_h = Dbuf + ((size_t)b * nh + h) * T_;
    float L[2], Dr[2];
    L[0] = row_a < T_ ? lse_h[row_a] * LOG2E : 0.0f;
    L[1] = row_b < T_ ? lse_h[row_b] * LOG2E : 0.0f;
    Dr[0] = row_a < T_ ? D_h[row_a] : 0.0f;
    Dr[1] = row_b < T_ ? D_h[row_b] : 0.0f;

    float dq[FA_D / 8][4];
#pragma unroll
    for (int i = 0; i < FA_D / 8; i++) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0;

    for (int kb = 0; kb <= qb; kb++) {
        int k0 = kb * FA_BLOCK;
        __syncthreads();
        load_tile(Ks, base + (size_t)(nh + kvh) * FA_D, stride, k0, T_);
        load_tile(Vs, base + (size_t)(nh + nkv + kvh) * FA_D, stride, k0, T_);
        __syncthreads();
        float p[8][4], dp[8][4];
        mma_a_tileT(p, qf, Ks, g, tq);
        mma_a_tileT(dp, df, Vs, g, tq);
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = k0 + nt * 8 + 2 * tq + (e & 1), r = e >> 1, q = r ? row_b : row_a;
                float pv = (key > q || key >= T_ || q >= T_) ? 0.0f : exp2f(p[nt][e] * c - L[r]);
                dp[nt][e] = pv * (dp[nt][e] - Dr[r]);
            }
        mma_p_tile(dq, dp, Ks, lane);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int q = r ? row_b : row_a;
        if (q >= T_) continue;
        bf16 *dqr = dqkv + ((size_t)b * T_ + q) * stride + (size_t)h * FA_D;
#pragma unroll
        for (int i = 0; i < FA_D / 8; i++)
            *reinterpret_cast<u32 *>(dqr + i * 8 + 2 * tq) = pack_bf16(dq[i][2 * r] * scale, dq[i][2 * r + 1] * scale);
    }
}

/* ========================================================= flash, v2
 * The same three kernels with (1) K/V (or Q/dO) tiles double-buffered through cp.async, so the
 * next tile streams in while the current one is multiplied, and (2) B fragments of the score
 * products read with ldmatrix (one x4 load per two mma instead of four 32-bit loads).
 * ANVIL_ATTENTION=flash1 selects the kernels above (for comparison). */

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], const bf16 *p)
{
    unsigned addr = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

/* load_tile through the async copy engine: rows at or past T are zero-filled (src-size 0). */
__device__ __forceinline__ void cp_async_tile(bf16 *dst, const bf16 *src, size_t stride, int r0, int T_)
{
    const int PER_ROW = FA_D / 8;
    for (int i = threadIdx.x; i < FA_BLOCK * PER_ROW; i += FA_THREADS) {
        int r = i / PER_ROW, c = (i % PER_ROW) * 8;
        bool ok = r0 + r < T_;
        const bf16 *g = src + (size_t)(ok ? r0 + r : 0) * stride + c;
        unsigned sa = (unsigned)__cvta_generic_to_shared(dst + r * FA_LDS + c);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(g), "r"(ok ? 16 : 0));
    }
}

/* mma_a_tileT with ldmatrix: matrix i of lane group i is rows (i>>1)*8.. and columns (i&1)*8.. of a
 * 16x16 block, giving b0b1 / b2b3 of two adjacent n-tiles. */
__device__ __forceinline__ void mma_a_tileT_ldm(float (&acc)[8][4], const u32 (&a)[FA_D / 16][4], const bf16 *tile,
                                                int lane)
{
#pragma unroll
    for (int nt = 0; nt < 8; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0;
    int mi = lane / 8, r = lane % 8;
#pragma unroll
    for (int kk = 0; kk < FA_D / 16; kk++)
#pragma unroll
        for (int np = 0; np < 4; np++) {
            u32 b[4];
            ldmatrix_x4(b, tile + (np * 16 + (mi >> 1) * 8 + r) * FA_LDS + kk * 16 + (mi & 1) * 8);
            mma_bf16(acc[2 * np], a[kk], b[0], b[1]);
            mma_bf16(acc[2 * np + 1], a[kk], b[2], b[3]);
        }
}

__global__ void __launch_bounds__(FA_THREADS, 4) flash2_fwd_kernel(bf16 *out, float *lse, const bf16 *qkv, int T_,
                                                                int nh, int nkv, int zorder)
{
    __shared__ __align__(16) bf16 Ks[2][FA_BLOCK * FA_LDS];
    __shared__ __align__(16) bf16 Vs[2][FA_BLOCK * FA_LDS];
    int tile, ntile, h, b;
    flash_block(zorder, tile, ntile, h, b);
    int qb = ntile - 1 - tile; /* the heaviest (last) query blocks first */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    int kvh = h / (nh / nkv);
    size_t stride = (size_t)(nh + 2 * nkv) * FA_D;
    const bf16 *base = qkv + (size_t)b * T_ * stride;
    const bf16 *qsrc = base + (size_t)h * FA_D, *ksrc = base + (size_t)(nh + kvh) * FA_D,
               *vsrc = base + (size_t)(nh + nkv + kvh) * FA_D;
    int q0 = qb * FA_BLOCK;
    float c = LOG2E / sqrtf((float)FA_D);

    cp_async_tile(Ks[1], qsrc, stride, q0, T_);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    u32 qf[FA_D / 16][4];
    load_a_frags(qf, Ks[1], warp * 16, g, tq);
    __syncthreads(); /* Ks[1] is refilled below */
    cp_async_tile(Ks[0], ksrc, stride, 0, T_);
    cp_async_tile(Vs[0], vsrc, stride, 0, T_);
    cp_async_commit();

    float o[FA_D / 8][4];
#pragma unroll
    for (int i = 0; i < FA_D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};
    int row_a = q0 + warp * 16 + g, row_b = row_a + 8;

    for (int kb = 0; kb <= qb; kb++) {
        int k0 = kb * FA_BLOCK, buf = kb & 1;
        if (kb < qb) { /* next tiles stream in while this one is used */
            cp_async_tile(Ks[buf ^ 1], ksrc, stride, k0 + FA_BLOCK, T_);
            cp_async_tile(Vs[buf ^ 1], vsrc, stride, k0 + FA_BLOCK, T_);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        float s[8][4];
        mma_a_tileT_ldm(s, qf, Ks[buf], lane);
        float mx[2] = {-INFINITY, -INFINITY};
        bool edge = kb == qb || k0 + FA_BLOCK > T_; /* only the diagonal and the last tile need a mask */
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = k0 + nt * 8 + 2 * tq + (e & 1), qrow = e < 2 ? row_a : row_b;
                float v = s[nt][e] * c;
                if (edge && (key > qrow || key >= T_)) v = -INFINITY;
                s[nt][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
        float alpha[2], mu[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            float mn = fmaxf(m[r], mx[r]);
            mu[r] = mn == -INFINITY ? 0.0f : mn;
            alpha[r] = exp2f(m[r] - mu[r]);
            m[r] = mn;
            l[r] *= alpha[r];
        }
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = exp2f(s[nt][e] - mu[e >> 1]);
                s[nt][e] = p;
                l[e >> 1] += p;
            }
#pragma unroll
        for (int i = 0; i < FA_D / 8; i++) {
            o[i][0] *= alpha[0];
            o[i][1] *= alpha[0];
            o[i][2] *= alpha[1];
            o[i][3] *= alpha[1];
        }
        mma_p_tile(o, s, Vs[buf], lane);
        __syncthreads(); /* this buffer is refilled next iteration */
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    size_t ostride = (size_t)nh * FA_D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int qrow = r ? row_b : row_a;
        if (qrow >= T_) continue;
        float inv = 1.0f / l[r];
        bf16 *orow = out + ((size_t)b * T_ + qrow) * ostride + (size_t)h * FA_D;
#pragma unroll
        for (int i = 0; i < FA_D / 8; i++)
            *reinterpret_cast<u32 *>(orow + i * 8 + 2 * tq) = pack_bf16(o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
        if (tq == 0) lse[((size_t)b * nh + h) * T_ + qrow] = m[r] * LN2 + logf(l[r]);
    }
}

__global__ void __launch_bounds__(FA_THREADS) flash2_bwd_kv_kernel(bf16 *dqkv, const bf16 *dout, const float *lse,
                                                                   const float *Dbuf, const bf16 *qkv, int T_, int nh,
                                                                   int nkv, int zorder)
{
    __shared__ __align__(16) bf16 Qs[2][FA_BLOCK * FA_LDS];
    __shared__ __align__(16) bf16 Os[2][FA_BLOCK * FA_LDS];
    __shared__ float lse_s[2][FA_BLOCK], D_s[2][FA_BLOCK];
    int kb, nqb, kvh, b; /* the heaviest (first) key blocks first */
    flash_block(zorder, kb, nqb, kvh, b);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    int group = nh / nkv;
    size_t stride = (size_t)(nh + 2 * nkv) * FA_D, ostride = (size_t)nh * FA_D;
    const bf16 *base = qkv + (size_t)b * T_ * stride;
    int k0 = kb * FA_BLOCK;
    float scale = 1.0f / sqrtf((float)FA_D), c = scale * LOG2E;

    cp_async_tile(Qs[0], base + (size_t)(nh + kvh) * FA_D, stride, k0, T_);
    cp_async_tile(Os[0], base + (size_t)(nh + nkv + kvh) * FA_D, stride, k0, T_);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    u32 kf[FA_D / 16][4], vf[FA_D / 16][4];
    load_a_frags(kf, Qs[0], warp * 16, g, tq);
    load_a_frags(vf, Os[0], warp * 16, g, tq);
    __syncthreads();

    /* iterations: every (query head of the group, query block at or after this key block) */
    int nq = nqb - kb, nit = group * nq;
    auto issue = [&](int it, int buf) {
        int h = kvh * group + it / nq, q0 = (kb + it % nq) * FA_BLOCK;
        cp_async_tile(Qs[buf], base + (size_t)h * FA_D, stride, q0, T_);
        cp_async_tile(Os[buf], dout + (size_t)b * T_ * ostride + (size_t)h * FA_D, ostride, q0, T_);
        cp_async_commit();
        const float *lse_h = lse + ((size_t)b * nh + h) * T_, *D_h = Dbuf + ((size_t)b * nh + h) * T_;
        for (int i = threadIdx.x; i < FA_BLOCK; i += FA_THREADS) {
            bool ok = q0 + i < T_;
            lse_s[buf][i] = ok ? lse_h[q0 + i] * LOG2E : 0.0f;
            D_s[buf][i] = ok ? D_h[q0 + i] : 0.0f;
        }
    };

    float dk[FA_D / 8][4], dv[FA_D / 8][4];
#pragma unroll
    for (int i = 0; i < FA_D / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0;
    int key_a = k0 + warp * 16 + g, key_b = key_a + 8;

    issue(0, 0);
    for (int it = 0; it < nit; it++) {
        int buf = it & 1, q0 = (kb + it % nq) * FA_BLOCK;
        if (it + 1 < nit) {
            issue(it + 1, buf ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        float p[8][4], dp[8][4];
        mma_a_tileT_ldm(p, kf, Qs[buf], lane);  /* S^T (16 keys x 64 queries) */
        mma_a_tileT_ldm(dp, vf, Os[buf], lane); /* dP^T */
        bool edge = q0 == k0 || q0 + FA_BLOCK > T_;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int qi = nt * 8 + 2 * tq + (e & 1), q = q0 + qi, key = e < 2 ? key_a : key_b;
                float pv = (edge && (key > q || q >= T_)) ? 0.0f : exp2f(p[nt][e] * c - lse_s[buf][qi]);
                p[nt][e] = pv;
                dp[nt][e] = pv * (dp[nt][e] - D_s[buf][qi]);
            }
        mma_p_tile(dv, p, Os[buf], lane);
        mma_p_tile(dk, dp, Qs[buf], lane);
        __syncthreads();
    }
    bf16 *dkbase = dqkv + (size_t)b * T_ * stride + (size_t)(nh + kvh) * FA_D;
    bf16 *dvbase = dkbase + (size_t)nkv * FA_D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int key = r ? key_b : key_a;
        if (key >= T_) continue;
#pragma unroll
        for (int i = 0; i < FA_D / 8; i++) {
            *reinterpret_cast<u32 *>(dkbase + (size_t)key * stride + i * 8 + 2 * tq) =
                pack_bf16(dk[i][2 * r] * scale, dk[i][2 * r + 1] * scale);
            *reinterpret_cast<u32 *>(dvbase + (size_t)key * stride + i * 8 + 2 * tq) =
                pack_bf16(dv[i][2 * r], dv[i][2 * r + 1]);
        }
    }
}

__global__ void __launch_bounds__(FA_THREADS, 3) flash2_bwd_q_kernel(bf16 *dqkv, const bf16 *dout, const float *lse,
                                                                  const float *Dbuf, const bf16 *qkv, int T_, int nh,
                                                                  int nkv, int zorder)
{
    __shared__ __align__(16) bf16 Ks[2][FA_BLOCK * FA_LDS];
    __shared__ __align__(16) bf16 Vs[2][FA_BLOCK * FA_LDS];
    int tile, ntile, h, b;
    flash_block(zorder, tile, ntile, h, b);
    int qb = ntile - 1 - tile; /* the heaviest (last) query blocks first */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    int kvh = h / (nh / nkv);
    size_t stride = (size_t)(nh + 2 * nkv) * FA_D, ostride = (size_t)nh * FA_D;
    const bf16 *base = qkv + (size_t)b * T_ * stride;
    const bf16 *ksrc = base + (size_t)(nh + kvh) * FA_D, *vsrc = base + (size_t)(nh + nkv + kvh) * FA_D;
    int q0 = qb * FA_BLOCK;
    float scale = 1.0f / sqrtf((float)FA_D), c = scale * LOG2E;

    cp_async_tile(Ks[0], base + (size_t)h * FA_D, stride, q0, T_);
    cp_async_tile(Vs[0], dout + (size_t)b * T_ * ostride + (size_t)h * FA_D, ostride, q0, T_);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    u32 qf[FA_D / 16][4], df[FA_D / 16][4];
    load_a_frags(qf, Ks[0], warp * 16, g, tq);
    load_a_frags(df, Vs[0], warp * 16, g, tq);
    __syncthreads();
    cp_async_tile(Ks[0], ksrc, stride, 0, T_);
    cp_async_tile(Vs[0], vsrc, stride, 0, T_);
    cp_async_commit();

    int row_a = q0 + warp * 16 + g, row_b = row_a + 8;
    const float *lse_h = lse + ((size_t)b * nh + h) * T_, *D_h = Dbuf + ((size_t)b * nh + h) * T_;
    float L[2], Dr[2];
    L[0] = row_a < T_ ? lse_h[row_a] * LOG2E : 0.0f;
    L[1] = row_b < T_ ? lse_h[row_b] * LOG2E : 0.0f;
    Dr[0] = row_a < T_ ? D_h[row_a] : 0.0f;
    Dr[1] = row_b < T_ ? D_h[row_b] : 0.0f;

    float dq[FA_D / 8][4];
#pragma unroll
    for (int i = 0; i < FA_D / 8; i++) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0;

    for (int kb = 0; kb <= qb; kb++) {
        int k0 = kb * FA_BLOCK, buf = kb & 1;
        if (kb < qb) {
            cp_async_tile(Ks[buf ^ 1], ksrc, stride, k0 + FA_BLOCK, T_);
            cp_async_tile(Vs[buf ^ 1], vsrc, stride, k0 + FA_BLOCK, T_);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        float p[8][4], dp[8][4];
        mma_a_tileT_ldm(p, qf, Ks[buf], lane);
        mma_a_tileT_ldm(dp, df, Vs[buf], lane);
        bool edge = kb == qb || k0 + FA_BLOCK > T_ || q0 + FA_BLOCK > T_;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = k0 + nt * 8 + 2 * tq + (e & 1), r = e >> 1, q = r ? row_b : row_a;
                float pv = (edge && (key > q || key >= T_ || q >= T_)) ? 0.0f : exp2f(p[nt][e] * c - L[r]);
                dp[nt][e] = pv * (dp[nt][e] - Dr[r]);
            }
        mma_p_tile(dq, dp, Ks[buf], lane);
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int q = r ? row_b : row_a;
        if (q >= T_) continue;
        bf16 *dqr = dqkv + ((size_t)b * T_ + q) * stride + (size_t)h * FA_D;
#pragma unroll
        for (int i = 0; i < FA_D / 8; i++)
            *reinterpret_cast<u32 *>(dqr + i * 8 + 2 * tq) = pack_bf16(dq[i][2 * r] * scale, dq[i][2 * r + 1] * scale);
    }
}

/* ================================================ flash, forward with 128-row tiles
 * The v2 forward with 128 query rows per block, so that each K/V tile read from memory serves
 * twice the rows, in two shapes: WARPS=8 warps of MT=1 m-tile (16 rows) each, or WARPS=4 warps of
 * MT=2 m-tiles (32 rows), which also reuses every B fragment read from shared memory for two
 * products. A warp skips the key tiles wholly above its rows (causal); the softmax scale is folded
 * into one multiply-add before exp2. ANVIL_ATTENTION_FWD=mma selects 4x2 (the default before the
 * wgmma forward below), =128 8x1
 * (measured slower than v2 on the H100: 128 registers with spills), =64 the v2 forward. */

/* rows r0 .. r0+nrows-1 of a strided matrix into a shared tile (row stride FA_LDS) through cp.async,
 * with nthreads threads; rows at or past T are zero-filled */
__device__ __forceinline__ void cp_async_rows(bf16 *dst, const bf16 *src, size_t stride, int r0, int nrows, int T_,
                                              int nthreads)
{
    const int PER_ROW = FA_D / 8;
    for (int i = threadIdx.x; i < nrows * PER_ROW; i += nthreads) {
        int r = i / PER_ROW, c = (i % PER_ROW) * 8;
        bool ok = r0 + r < T_;
        const bf16 *g = src + (size_t)(ok ? r0 + r : 0) * stride + c;
        unsigned sa = (unsigned)__cvta_generic_to_shared(dst + r * FA_LDS + c);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(g), "r"(ok ? 16 : 0));
    }
}

/* acc[mt] (16 x 64) = A[mt] (16 x FA_D) @ tile^T for MT m-tiles, each B fragment read once */
template <int MT>
__device__ __forceinline__ void mma_mt_tileT(float (&acc)[MT][8][4], const u32 (&a)[MT][FA_D / 16][4], const bf16 *tile,
                                             int lane)
{
#pragma unroll
    for (int t = 0; t < MT; t++)
#pragma unroll
        for (int nt = 0; nt < 8; nt++) acc[t][nt][0] = acc[t][nt][1] = acc[t][nt][2] = acc[t][nt][3] = 0;
    int mi = lane / 8, r = lane % 8;
#pragma unroll
    for (int kk = 0; kk < FA_D / 16; kk++)
#pragma unroll
        for (int np = 0; np < 4; np++) {
            u32 b[4];
            ldmatrix_x4(b, tile + (np * 16 + (mi >> 1) * 8 + r) * FA_LDS + kk * 16 + (mi & 1) * 8);
#pragma unroll
            for (int t = 0; t < MT; t++) {
                mma_bf16(acc[t][2 * np], a[t][kk], b[0], b[1]);
                mma_bf16(acc[t][2 * np + 1], a[t][kk], b[2], b[3]);
            }
        }
}

/* acc[mt] (16 x FA_D) += P[mt] (16 x 64, rounded to bf16) @ tile (64 x FA_D), each B fragment read once */
template <int MT>
__device__ __forceinline__ void mma_mt_p_tile(float (&acc)[MT][FA_D / 8][4], const float (&p)[MT][8][4],
                                              const bf16 *tile, int lane)
{
    int mi = lane / 8, r = lane % 8;
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        u32 a[MT][4];
#pragma unroll
        for (int t = 0; t < MT; t++) {
            a[t][0] = pack_bf16(p[t][2 * kk][0], p[t][2 * kk][1]);
            a[t][1] = pack_bf16(p[t][2 * kk][2], p[t][2 * kk][3]);
            a[t][2] = pack_bf16(p[t][2 * kk + 1][0], p[t][2 * kk + 1][1]);
            a[t][3] = pack_bf16(p[t][2 * kk + 1][2], p[t][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dt = 0; dt < FA_D / 16; dt++) {
            u32 b[4];
            ldmatrix_x4_trans(b, tile + (kk * 16 + (mi & 1) * 8 + r) * FA_LDS + dt * 16 + (mi >> 1) * 8);
#pragma unroll
            for (int t = 0; t < MT; t++) {
                mma_bf16(acc[t][2 * dt], a[t], b[0], b[1]);
                mma_bf16(acc[t][2 * dt + 1], a[t], b[2], b[3]);
            }
        }
    }
}

template <int WARPS, int MT>
__global__ void __launch_bounds__(WARPS * 32, 2) flash3_fwd_kernel(bf16 *out, float *lse, const bf16 *qkv, int T_,
                                                                   int nh, int nkv, int zorder)
{
    const int THREADS_ = WARPS * 32, ROWS = 16 * MT * WARPS, WROWS = 16 * MT;
    static_assert(ROWS == 2 * FA_BLOCK, "the Q tile is staged across Ks[0] and Ks[1]");
    __shared__ __align__(16) bf16 Ks[2][FA_TILE];
    __shared__ __align__(16) bf16 Vs[2][FA_TILE];
    int tile, ntile, h, b;
    flash_block(zorder, tile, ntile, h, b);
    int qb = ntile - 1 - tile; /* the heaviest (last) query blocks first */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    int kvh = h / (nh / nkv);
    size_t stride = (size_t)(nh + 2 * nkv) * FA_D;
    const bf16 *base = qkv + (size_t)b * T_ * stride;
    const bf16 *qsrc = base + (size_t)h * FA_D, *ksrc = base + (size_t)(nh + kvh) * FA_D,
               *vsrc = base + (size_t)(nh + nkv + kvh) * FA_D;
    int q0 = qb * ROWS;
    float c = LOG2E / sqrtf((float)FA_D); /* scores in the log2 domain */

    cp_async_rows(&Ks[0][0], qsrc, stride, q0, ROWS, T_, THREADS_);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    u32 qf[MT][FA_D / 16][4];
#pragma unroll
    for (int t = 0; t < MT; t++) load_a_frags(qf[t], &Ks[0][0], warp * WROWS + 16 * t, g, tq);
    __syncthreads(); /* Ks is refilled below */
    cp_async_rows(Ks[0], ksrc, stride, 0, FA_BLOCK, T_, THREADS_);
    cp_async_rows(Vs[0], vsrc, stride, 0, FA_BLOCK, T_, THREADS_);
    cp_async_commit();

    float o[MT][FA_D / 8][4];
#pragma unroll
    for (int t = 0; t < MT; t++)
#pragma unroll
        for (int i = 0; i < FA_D / 8; i++) o[t][i][0] = o[t][i][1] = o[t][i][2] = o[t][i][3] = 0;
    float m[MT][2], l[MT][2]; /* m: raw (unscaled) running max */
#pragma unroll
    for (int t = 0; t < MT; t++) m[t][0] = m[t][1] = -INFINITY, l[t][0] = l[t][1] = 0;
    int wrow0 = q0 + warp * WROWS;
    int nkb = min(CEIL_DIV(q0 + ROWS, FA_BLOCK), CEIL_DIV(T_, FA_BLOCK));

    for (int kb = 0; kb < nkb; kb++) {
        int k0 = kb * FA_BLOCK, buf = kb & 1;
        if (kb + 1 < nkb) { /* next tiles stream in while this one is used */
            cp_async_rows(Ks[buf ^ 1], ksrc, stride, k0 + FA_BLOCK, FA_BLOCK, T_, THREADS_);
            cp_async_rows(Vs[buf ^ 1], vsrc, stride, k0 + FA_BLOCK, FA_BLOCK, T_, THREADS_);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (k0 <= wrow0 + WROWS - 1) { /* else every key of the tile is above this warp's rows */
            float s[MT][8][4];
            mma_mt_tileT<MT>(s, qf, Ks[buf], lane);
            bool edge = k0 + FA_BLOCK - 1 > wrow0 || k0 + FA_BLOCK > T_;
#pragma unroll
            for (int t = 0; t < MT; t++) {
                int row_a = wrow0 + 16 * t + g, row_b = row_a + 8;
                float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int key = k0 + nt * 8 + 2 * tq + (e & 1), qrow = e < 2 ? row_a : row_b;
                        if (edge && (key > qrow || key >= T_)) s[t][nt][e] = -INFINITY;
                        mx[e >> 1] = fmaxf(mx[e >> 1], s[t][nt][e]);
                    }
                float alpha[2], mu[2];
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                    float mn = fmaxf(m[t][r], mx[r]);
                    mu[r] = mn == -INFINITY ? 0.0f : mn * c; /* a row with nothing visible yet stays at zero */
                    alpha[r] = exp2f(fmaf(m[t][r], c, -mu[r]));
                    m[t][r] = mn;
                    l[t][r] *= alpha[r];
                }
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float p = exp2f(fmaf(s[t][nt][e], c, -mu[e >> 1]));
                        s[t][nt][e] = p;
                        l[t][e >> 1] += p;
                    }
#pragma unroll
                for (int i = 0; i < FA_D / 8; i++) {
                    o[t][i][0] *= alpha[0];
                    o[t][i][1] *= alpha[0];
                    o[t][i][2] *= alpha[1];
                    o[t][i][3] *= alpha[1];
                }
            }
            mma_mt_p_tile<MT>(o, s, Vs[buf], lane);
        }
        __syncthreads(); /* this buffer is refilled next iteration */
    }
    size_t ostride = (size_t)nh * FA_D;
#pragma unroll
    for (int t = 0; t < MT; t++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float lr = l[t][r];
            lr += __shfl_xor_sync(0xffffffffu, lr, 1);
            lr += __shfl_xor_sync(0xffffffffu, lr, 2);
            int qrow = wrow0 + 16 * t + g + 8 * r;
            if (qrow >= T_) continue;
            float inv = 1.0f / lr;
            bf16 *orow = out + ((size_t)b * T_ + qrow) * ostride + (size_t)h * FA_D;
#pragma unroll
            for (int i = 0; i < FA_D / 8; i++)
                *reinterpret_cast<u32 *>(orow + i * 8 + 2 * tq) =
                    pack_bf16(o[t][i][2 * r] * inv, o[t][i][2 * r + 1] * inv);
            if (tq == 0) lse[((size_t)b * nh + h) * T_ + qrow] = m[t][r] * c * LN2 + logf(lr);
        }
}

/* ================================================ flash, forward on wgmma (sm_90a)
 * Hopper's warpgroup products: 2 warpgroups of 4 warps, 64 query rows each (128 per block), K/V
 * tiles of 64 keys double-buffered through cp.async. Per tile and warpgroup, S (64 x 64) = Q K^T is
 * 4 wgmma m64n64k16 with both operands read by the tensor cores from shared memory (Q and K tiles
 * "K-major": head_dim contiguous), the online softmax runs on the accumulators in registers, and
 * O += P V is 4 wgmma with P from registers (the accumulator layout of S is the A-fragment layout,
 * as in FlashAttention-3) and V from shared memory ("MN-major": V's rows are the k dimension). Tiles
 * are stored with the 128-byte swizzle (16-byte chunk j of row r at chunk j ^ (r % 8)), which the
 * descriptors name, so the tensor cores read them without bank conflicts. */

#define WG_ROWS 64                         /* query rows per warpgroup */
#define WG_TILE_BYTES (FA_BLOCK * FA_D * 2) /* one 64 x 64 bf16 tile, 128-byte rows: 8 KB */
/* dynamic shared memory of NWG warpgroups: Q (NWG x 64 rows), K[2], V[2], slack to align to 1024 bytes */
#define WG_SMEM(NWG) ((NWG) * WG_TILE_BYTES + 4 * WG_TILE_BYTES + 1024)

/* rows r0 .. r0+nrows-1 (FA_D = 64 columns: 128 bytes) into a 128-byte-swizzled tile through
 * cp.async; rows at or past T are zero-filled */
__device__ __forceinline__ void cp_async_sw128(unsigned dst, const bf16 *src, size_t stride, int r0, int nrows,
                                               int T_, int nthreads)
{
    for (int i = threadIdx.x; i < nrows * 8; i += nthreads) {
        int r = i / 8, j = i % 8;
        bool ok = r0 + r < T_;
        const bf16 *g = src + (size_t)(ok ? r0 + r : 0) * stride + j * 8;
        unsigned sa = dst + r * 128 + ((j ^ (r & 7)) << 4);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(g), "r"(ok ? 16 : 0));
    }
}

/* wgmma shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte
 * offsets (>> 4 each), swizzle mode 1 in bits 62-63. Tiles of 8-row groups 1024 bytes apart. */
__device__ __forceinline__ uint64_t wg_desc(unsigned addr, unsigned lbo, unsigned sbo)
{
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) |
           ((uint64_t)((sbo >> 4) & 0x3FFF) << 32) | ((uint64_t)1 << 62);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

#define WG_ACC32(d)                                                                                              \
    "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),     \
        "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), \
        "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), \
        "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
        "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define WG_D32                                                                                                   \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
    "%23, %24, %25, %26, %27, %28, %29, %30, %31}"

/* d (64 x 64, accumulator layout: d[j][e] of n8 block j as mma.sync's C) += A (64 x 16, shared, K-major)
 * @ B (16 x 64, shared, K-major: B's rows are the 64 output columns) */
__device__ __forceinline__ void wgmma_ss(float (&d)[8][4], uint64_t da, uint64_t db)
{
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_D32 ", %32, %33, 1, 1, 1, 0, 0;\n"
                 : WG_ACC32(d)
                 : "l"(da), "l"(db));
}

/* d += A (64 x 16, registers: mma.sync's A-fragment layout per warp) @ B (16 x 64, shared, MN-major) */
__device__ __forceinline__ void wgmma_rs(float (&d)[8][4], const u32 (&a)[4], uint64_t db)
{
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_D32
                 ", {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
                 : WG_ACC32(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

/* NWG warpgroups (NWG x 64 query rows) per block: 2 (two blocks per SM) or 1 (four per SM) */
template <int NWG>
__global__ void __launch_bounds__(NWG * 128, 4 / NWG) flash_wg_fwd_kernel(bf16 *out, float *lse, const bf16 *qkv,
                                                                          int T_, int nh, int nkv, int zorder)
{
    const int THREADS_ = NWG * 128, ROWS = NWG * WG_ROWS;
    extern __shared__ __align__(16) unsigned char wg_smem[];
    unsigned sbase = ((unsigned)__cvta_generic_to_shared(wg_smem) + 1023u) & ~1023u;
    unsigned Qsa = sbase, Ksa = Qsa + NWG * WG_TILE_BYTES, Vsa = Ksa + 2 * WG_TILE_BYTES; /* K, V: [2] */
    int tile, ntile, h, b;
    flash_block(zorder, tile, ntile, h, b);
    int qb = ntile - 1 - tile; /* the heaviest (last) query blocks first */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    int wg = warp / 4, wr = warp % 4; /* warpgroup; warp within it (its 16 rows of the 64) */
    int kvh = h / (nh / nkv);
    size_t stride = (size_t)(nh + 2 * nkv) * FA_D;
    const bf16 *base = qkv + (size_t)b * T_ * stride;
    const bf16 *qsrc = base + (size_t)h * FA_D, *ksrc = base + (size_t)(nh + kvh) * FA_D,
               *vsrc = base + (size_t)(nh + nkv + kvh) * FA_D;
    int q0 = qb * ROWS;
    float c = LOG2E / sqrtf((float)FA_D); /* scores in the log2 domain */

    cp_async_sw128(Qsa, qsrc, stride, q0, ROWS, T_, THREADS_);
    cp_async_sw128(Ksa, ksrc, stride, 0, FA_BLOCK, T_, THREADS_);
    cp_async_sw128(Vsa, vsrc, stride, 0, FA_BLOCK, T_, THREADS_);
    cp_async_commit();

    float o[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0}; /* m: raw (unscaled) running max */
    int wrow0 = q0 + wg * WG_ROWS;                      /* this warpgroup's first row */
    int row_a = wrow0 + wr * 16 + g, row_b = row_a + 8;  /* this thread's two rows */
    int nkb = min(CEIL_DIV(q0 + ROWS, FA_BLOCK), CEIL_DIV(T_, FA_BLOCK));
    uint64_t dq = wg_desc(Qsa + wg * WG_TILE_BYTES, 16, 1024);

    for (int kb = 0; kb < nkb; kb++) {
        int k0 = kb * FA_BLOCK, buf = kb & 1;
        if (kb + 1 < nkb) { /* next tiles stream in while this one is used */
            cp_async_sw128(Ksa + (buf ^ 1) * WG_TILE_BYTES, ksrc, stride, k0 + FA_BLOCK, FA_BLOCK, T_, THREADS_);
            cp_async_sw128(Vsa + (buf ^ 1) * WG_TILE_BYTES, vsrc, stride, k0 + FA_BLOCK, FA_BLOCK, T_, THREADS_);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        /* cp.async wrote through the generic proxy; the tensor cores read through the async one */
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
        if (k0 <= wrow0 + WG_ROWS - 1) { /* else every key of the tile is after this warpgroup's rows */
            float s[8][4];
#pragma unroll
            for (int i = 0; i < 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0;
            uint64_t dk = wg_desc(Ksa + buf * WG_TILE_BYTES, 16, 1024);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < FA_D / 16; kk++) wgmma_ss(s, dq + 2 * kk, dk + 2 * kk); /* +32 bytes per step */
            wg_commit();
            wg_wait0();
            bool edge = k0 + FA_BLOCK - 1 > wrow0 || k0 + FA_BLOCK > T_;
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int key = k0 + nt * 8 + 2 * tq + (e & 1), qrow = e < 2 ? row_a : row_b;
                    if (edge && (key > qrow || key >= T_)) s[nt][e] = -INFINITY;
                    mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
                }
            float alpha[2], mu[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                float mn = fmaxf(m[r], mx[r]);
                mu[r] = mn == -INFINITY ? 0.0f : mn * c; /* a row with nothing visible yet stays at zero */
                alpha[r] = exp2f(fmaf(m[r], c, -mu[r]));
                m[r] = mn;
                l[r] *= alpha[r];
            }
            u32 pa[4][4]; /* P in bf16 as the A fragments of the 4 k-steps (16 keys each) */
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                float p0 = exp2f(fmaf(s[nt][0], c, -mu[0])), p1 = exp2f(fmaf(s[nt][1], c, -mu[0]));
                float p2 = exp2f(fmaf(s[nt][2], c, -mu[1])), p3 = exp2f(fmaf(s[nt][3], c, -mu[1]));
                l[0] += p0 + p1;
                l[1] += p2 + p3;
                pa[nt / 2][(nt & 1) * 2] = pack_bf16(p0, p1);
                pa[nt / 2][(nt & 1) * 2 + 1] = pack_bf16(p2, p3);
            }
#pragma unroll
            for (int i = 0; i < 8; i++) {
                o[i][0] *= alpha[0];
                o[i][1] *= alpha[0];
                o[i][2] *= alpha[1];
                o[i][3] *= alpha[1];
            }
            uint64_t dv = wg_desc(Vsa + buf * WG_TILE_BYTES, 1024, 1024);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < FA_BLOCK / 16; kk++) wgmma_rs(o, pa[kk], dv + 128 * kk); /* +2048 bytes: 16 keys */
            wg_commit();
            wg_wait0();
        }
        __syncthreads(); /* this buffer is refilled next iteration */
    }
    size_t ostride = (size_t)nh * FA_D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float lr = l[r];
        lr += __shfl_xor_sync(0xffffffffu, lr, 1);
        lr += __shfl_xor_sync(0xffffffffu, lr, 2);
        int qrow = r ? row_b : row_a;
        if (qrow >= T_) continue;
        float inv = 1.0f / lr;
        bf16 *orow = out + ((size_t)b * T_ + qrow) * ostride + (size_t)h * FA_D;
#pragma unroll
        for (int i = 0; i < 8; i++)
            *reinterpret_cast<u32 *>(orow + i * 8 + 2 * tq) = pack_bf16(o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
        if (tq == 0) lse[((size_t)b * nh + h) * T_ + qrow] = m[r] * c * LN2 + logf(lr);
    }
}

/* ================================================ flash, fused backward
 * The fast (default, non-deterministic) backward: one kernel per block of 64 keys of one kv
 * head, as FlashAttention-2. Besides dK and dV (as flash2_bwd_kv_kernel) it forms
 * dQ += dS K for the query block of each iteration and adds it with fp32 atomics into dqacc
 * (B, nh, T, FA_D), so S and dP are computed once (5 tile products instead of the 7 of the
 * two-kernel path). The order of the atomic additions varies from run to run, so dQ is not
 * bit-reproducible; the deterministic mode keeps the two kernels above. */

/* dynamic shared memory of the fused kernel: K, dS^T, Q[2], dO[2] tiles, lse/D rows [2]; V (LOWREG) */
#define FA_FUSED_SMEM (6 * FA_TILE * sizeof(bf16) + 4 * FA_BLOCK * sizeof(float))
#define FA_FUSED_SMEM_LOWREG (FA_FUSED_SMEM + FA_TILE * sizeof(bf16))

// D = dout . out per (b, h, t) as flash_bwd_dot_kernel, and the row's dqacc (64 floats) zeroed.
__global__ void flash_bwd_dot_zero_kernel(float *Dbuf, float *dqacc, const bf16 *dout, const bf16 *out, int B,
                                          int T_, int nh)
{
    size_t wid = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (wid >= (size_t)B * T_ * nh) return;
    int h = (int)(wid % nh);
    size_t bt = wid / nh;
    const bf16 *d = dout + bt * nh * FA_D + (size_t)h * FA_D, *o = out + bt * nh * FA_D + (size_t)h * FA_D;
    float2 dd = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(d + 2 * lane));
    float2 oo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(o + 2 * lane));
    float s = warp_sum(dd.x * oo.x + dd.y * oo.y);
    int b = (int)(bt / T_), t = (int)(bt % T_);
    size_t row = ((size_t)b * nh + h) * T_ + t;
    if (lane == 0) Dbuf[row] = s;
    *reinterpret_cast<float2 *>(dqacc + row * FA_D + 2 * lane) = make_float2(0.0f, 0.0f);
}

// dQ (in dqkv's q part) = scale * dqacc, 8 elements per thread
__global__ void flash_dq_convert_kernel(bf16 *dqkv, const float *dqacc, int B, int T_, int nh, int nkv, float scale)
{
    size_t n8 = (size_t)B * T_ * nh * (FA_D / 8);
    size_t stride = (size_t)(nh + 2 * nkv) * FA_D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % (FA_D / 8)) * 8;
        size_t row = i / (FA_D / 8); /* (b, h, t) */
        int t = (int)(row % T_), h = (int)(row / T_ % nh), b = (int)(row / T_ / nh);
        const float4 *src = reinterpret_cast<const float4 *>(dqacc + row * FA_D + c);
        float4 x = src[0], y = src[1];
        uint4 v = make_uint4(pack_bf16(x.x * scale, x.y * scale), pack_bf16(x.z * scale, x.w * scale),
                             pack_bf16(y.x * scale, y.y * scale), pack_bf16(y.z * scale, y.w * scale));
        *reinterpret_cast<uint4 *>(dqkv + ((size_t)b * T_ + t) * stride + (size_t)h * FA_D + c) = v;
    }
}

/* A-operand fragments of the 16 rows [row0, row0+16) of a shared tile with ldmatrix (as load_a_frags). */
__device__ __forceinline__ void load_a_frags_ldm(u32 (&f)[FA_D / 16][4], const bf16 *tile, int row0, int lane)
{
    int mi = lane / 8, r8 = lane % 8;
#pragma unroll
    for (int kk = 0; kk < FA_D / 16; kk++)
        ldmatrix_x4(f[kk], tile + (row0 + (mi & 1) * 8 + r8) * FA_LDS + kk * 16 + (mi >> 1) * 8);
}

/* LOWREG: K and V fragments are read from shared memory in every iteration instead of living in
 * registers (32 fewer; 168 with a few spills), for 3 blocks per SM instead of 2: the default for
 * grids of many waves (cu_attention_bwd). */
template <bool LOWREG>
__global__ void __launch_bounds__(FA_THREADS, LOWREG ? 3 : 2) flash_bwd_fused_kernel(bf16 *dqkv, float *dqacc,
                                                                                  const bf16 *dout, const float *lse,
                                                                                  const float *Dbuf, const bf16 *qkv,
                                                                                  int T_, int nh, int nkv, int zorder)
{
    extern __shared__ __align__(16) unsigned char fa_smem[];
    bf16 *Ks = reinterpret_cast<bf16 *>(fa_smem); /* this block's keys, kept for dQ = dS K */
    bf16 *dSs = Ks + FA_TILE;                      /* dS^T (keys x queries) of the iteration */
    bf16 *Qs = dSs + FA_TILE, *Os = Qs + 2 * FA_TILE; /* [2] each: Q and dO tiles */
    float *lse_s = reinterpret_cast<float *>(Os + 2 * FA_TILE), *D_s = lse_s + 2 * FA_BLOCK; /* [2][FA_BLOCK] */
    bf16 *Vs = reinterpret_cast<bf16 *>(D_s + 2 * FA_BLOCK); /* LOWREG: this block's values */
    int kb, nqb, kvh, b; /* the heaviest (first) key blocks first */
    flash_block(zorder, kb, nqb, kvh, b);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    int mi = lane / 8, r8 = lane % 8;
    int group = nh / nkv;
    size_t stride = (size_t)(nh + 2 * nkv) * FA_D, ostride = (size_t)nh * FA_D;
    const bf16 *base = qkv + (size_t)b * T_ * stride;
    int k0 = kb * FA_BLOCK;
    float scale = 1.0f / sqrtf((float)FA_D), c = scale * LOG2E;

    cp_async_tile(Ks, base + (size_t)(nh + kvh) * FA_D, stride, k0, T_);
    cp_async_tile(LOWREG ? Vs : Qs, base + (size_t)(nh + nkv + kvh) * FA_D, stride, k0, T_); /* V (staged) */
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    u32 kf[FA_D / 16][4], vf[FA_D / 16][4];
    if (!LOWREG) {
        load_a_frags(kf, Ks, warp * 16, g, tq);
        load_a_frags(vf, Qs, warp * 16, g, tq);
        __syncthreads(); /* Qs[0] is refilled below */
    }

    /* iterations: every (query head of the group, query block at or after this key block) */
    int nq = nqb - kb, nit = group * nq;
    auto issue = [&](int it, int buf) {
        int h = kvh * group + it / nq, q0 = (kb + it % nq) * FA_BLOCK;
        cp_async_tile(Qs + buf * FA_TILE, base + (size_t)h * FA_D, stride, q0, T_);
        cp_async_tile(Os + buf * FA_TILE, dout + (size_t)b * T_ * ostride + (size_t)h * FA_D, ostride, q0, T_);
        cp_async_commit();
        const float *lse_h = lse + ((size_t)b * nh + h) * T_, *D_h = Dbuf + ((size_t)b * nh + h) * T_;
        for (int i = threadIdx.x; i < FA_BLOCK; i += FA_THREADS) {
            bool ok = q0 + i < T_;
            lse_s[buf * FA_BLOCK + i] = ok ? lse_h[q0 + i] * LOG2E : 0.0f;
            D_s[buf * FA_BLOCK + i] = ok ? D_h[q0 + i] : 0.0f;
        }
    };

    float dk[FA_D / 8][4], dv[FA_D / 8][4];
#pragma unroll
    for (int i = 0; i < FA_D / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0;
    int key_a = k0 + warp * 16 + g, key_b = key_a + 8;

    issue(0, 0);
    for (int it = 0; it < nit; it++) {
        int buf = it & 1, h = kvh * group + it / nq, q0 = (kb + it % nq) * FA_BLOCK;
        const bf16 *Qb = Qs + buf * FA_TILE, *Ob = Os + buf * FA_TILE;
        const float *lse_b = lse_s + buf * FA_BLOCK, *D_b = D_s + buf * FA_BLOCK;
        if (it + 1 < nit) {
            issue(it + 1, buf ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); /* tiles of this iteration are in; every warp is done with the last dS^T */
        float p[8][4], dp[8][4];
        if (LOWREG) load_a_frags_ldm(kf, Ks, warp * 16, lane);
        mma_a_tileT_ldm(p, kf, Qb, lane); /* S^T (16 keys x 64 queries) */
        if (LOWREG) load_a_frags_ldm(vf, Vs, warp * 16, lane);
        mma_a_tileT_ldm(dp, vf, Ob, lane); /* dP^T */
        bool edge = q0 == k0 || q0 + FA_BLOCK > T_;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int qi = nt * 8 + 2 * tq + (e & 1), q = q0 + qi, key = e < 2 ? key_a : key_b;
                float pv = (edge && (key > q || q >= T_)) ? 0.0f : exp2f(p[nt][e] * c - lse_b[qi]);
                p[nt][e] = pv;
                dp[nt][e] = pv * (dp[nt][e] - D_b[qi]); /* dS^T */
            }
        mma_p_tile(dv, p, Ob, lane);
        mma_p_tile(dk, dp, Qb, lane);
        /* dS^T to shared memory, rounded to bf16 as for dK: row = key, column = query */
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int r = 0; r < 2; r++)
                *reinterpret_cast<u32 *>(dSs + (warp * 16 + g + 8 * r) * FA_LDS + nt * 8 + 2 * tq) =
                    pack_bf16(dp[nt][2 * r], dp[nt][2 * r + 1]);
        __syncthreads(); /* dS^T complete; also every warp is done with Qb, Ob (refilled next) */
        /* dQ rows warp*16.. (16 queries x FA_D) = dS (queries x 64 keys) @ K (64 keys x FA_D). The A
         * fragments are dS^T read transposed: matrix mi covers queries +(mi&1)*8, keys +(mi>>1)*8. */
        float dq[FA_D / 8][4];
#pragma unroll
        for (int i = 0; i < FA_D / 8; i++) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0;
#pragma unroll
        for (int kk = 0; kk < FA_BLOCK / 16; kk++) {
            u32 a[4];
            ldmatrix_x4_trans(a, dSs + (kk * 16 + (mi >> 1) * 8 + r8) * FA_LDS + warp * 16 + (mi & 1) * 8);
#pragma unroll
            for (int dt = 0; dt < FA_D / 16; dt++) {
                u32 bq[4];
                ldmatrix_x4_trans(bq, Ks + (kk * 16 + (mi & 1) * 8 + r8) * FA_LDS + dt * 16 + (mi >> 1) * 8);
                mma_bf16(dq[2 * dt], a, bq[0], bq[1]);
                mma_bf16(dq[2 * dt + 1], a, bq[2], bq[3]);
            }
        }
        float *dqh = dqacc + ((size_t)b * nh + h) * T_ * FA_D;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int q = q0 + warp * 16 + g + 8 * r;
            if (q >= T_) continue;
#pragma unroll
            for (int i = 0; i < FA_D / 8; i++)
                atomicAdd(reinterpret_cast<float2 *>(dqh + (size_t)q * FA_D + i * 8 + 2 * tq),
                          make_float2(dq[i][2 * r], dq[i][2 * r + 1]));
        }
    }
    bf16 *dkbase = dqkv + (size_t)b * T_ * stride + (size_t)(nh + kvh) * FA_D;
    bf16 *dvbase = dkbase + (size_t)nkv * FA_D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int key = r ? key_b : key_a;
        if (key >= T_) continue;
#pragma unroll
        for (int i = 0; i < FA_D / 8; i++) {
            *reinterpret_cast<u32 *>(dkbase + (size_t)key * stride + i * 8 + 2 * tq) =
                pack_bf16(dk[i][2 * r] * scale, dk[i][2 * r + 1] * scale);
            *reinterpret_cast<u32 *>(dvbase + (size_t)key * stride + i * 8 + 2 * tq) =
                pack_bf16(dv[i][2 * r], dv[i][2 * r + 1]);
        }
    }
}

/* ================================================ flash, fused backward over 128 keys
 * The fused backward with 128 keys per block: 8 warps of 16 keys each (as above) share every Q/dO
 * tile (64 queries) and the dQ product, so the fp32 dQ atomics (T^2 d / (2 x keys per block)
 * floats per head) and the Q/dO/lse/D loads per FLOP are halved. dQ (64 queries x FA_D) = dS (64 x
 * 128 keys) K (128 keys x FA_D) is split 4 (16 queries) x 2 (32 columns) over the warps. On the
 * diagonal, warps whose keys all lie after the tile's queries skip their products, and dQ reads
 * only the keys at or before the tile's last query. One block of 8 warps per SM (246 registers).
 * ANVIL_ATTENTION_BWD=128 selects it: measured slower than the 64-key kernel on the H100 (GPT-2
 * 2.08 vs 1.86 ms, llama-1b 2.26 vs 2.06 ms per layer; two blocks of 4 warps per SM overlap one
 * block's barriers with the other's products, one block of 8 cannot). */

#define FB_KEYS (2 * FA_BLOCK) /* keys per block */
#define FB_WARPS (FB_KEYS / 16)
#define FB_THREADS (FB_WARPS * 32)
/* dynamic shared memory: K (128 rows), dS^T (128 keys x 64 queries), Q[2], dO[2] (64 rows), lse/D [2] */
#define FB_SMEM (4 * FB_KEYS * FA_LDS * sizeof(bf16) + 4 * FA_BLOCK * sizeof(float))

__global__ void __launch_bounds__(FB_THREADS, 1) flash_bwd_fused128_kernel(bf16 *dqkv, float *dqacc, const bf16 *dout,
                                                                          const float *lse, const float *Dbuf,
                                                                          const bf16 *qkv, int T_, int nh, int nkv,
                                                                          int zorder)
{
    extern __shared__ __align__(16) unsigned char fa_smem[];
    bf16 *Ks = reinterpret_cast<bf16 *>(fa_smem);    /* FB_KEYS rows: this block's keys, for dQ = dS K */
    bf16 *dSs = Ks + FB_KEYS * FA_LDS;                /* FB_KEYS rows: dS^T (keys x queries) */
    bf16 *Qs = dSs + FB_KEYS * FA_LDS;                /* [2] Q tiles of FA_BLOCK rows (V staged first) */
    bf16 *Os = Qs + 2 * FA_TILE;                      /* [2] dO tiles */
    float *lse_s = reinterpret_cast<float *>(Os + 2 * FA_TILE), *D_s = lse_s + 2 * FA_BLOCK; /* [2][FA_BLOCK] */
    int kb, nkb, kvh, b; /* the heaviest (first) key blocks first */
    flash_block(zorder, kb, nkb, kvh, b);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    int mi = lane / 8, r8 = lane % 8;
    int group = nh / nkv, nqb = CEIL_DIV(T_, FA_BLOCK);
    size_t stride = (size_t)(nh + 2 * nkv) * FA_D, ostride = (size_t)nh * FA_D;
    const bf16 *base = qkv + (size_t)b * T_ * stride;
    int k0 = kb * FB_KEYS;
    float scale = 1.0f / sqrtf((float)FA_D), c = scale * LOG2E;

    cp_async_rows(Ks, base + (size_t)(nh + kvh) * FA_D, stride, k0, FB_KEYS, T_, FB_THREADS);
    cp_async_rows(Qs, base + (size_t)(nh + nkv + kvh) * FA_D, stride, k0, FB_KEYS, T_, FB_THREADS); /* V */
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    u32 kf[FA_D / 16][4], vf[FA_D / 16][4];
    load_a_frags(kf, Ks, warp * 16, g, tq);
    load_a_frags(vf, Qs, warp * 16, g, tq);
    __syncthreads(); /* Qs is refilled below */

    /* iterations: every (query head of the group, query block of 64 at or after k0) */
    int qb0 = k0 / FA_BLOCK, nq = nqb - qb0, nit = group * nq;
    auto issue = [&](int it, int buf) {
        int h = kvh * group + it / nq, q0 = (qb0 + it % nq) * FA_BLOCK;
        cp_async_rows(Qs + buf * FA_TILE, base + (size_t)h * FA_D, stride, q0, FA_BLOCK, T_, FB_THREADS);
        cp_async_rows(Os + buf * FA_TILE, dout + (size_t)b * T_ * ostride + (size_t)h * FA_D, ostride, q0,
                      FA_BLOCK, T_, FB_THREADS);
        cp_async_commit();
        const float *lse_h = lse + ((size_t)b * nh + h) * T_, *D_h = Dbuf + ((size_t)b * nh + h) * T_;
        for (int i = threadIdx.x; i < FA_BLOCK; i += FB_THREADS) {
            bool ok = q0 + i < T_;
            lse_s[buf * FA_BLOCK + i] = ok ? lse_h[q0 + i] * LOG2E : 0.0f;
            D_s[buf * FA_BLOCK + i] = ok ? D_h[q0 + i] : 0.0f;
        }
    };

    float dk[FA_D / 8][4], dv[FA_D / 8][4];
#pragma unroll
    for (int i = 0; i < FA_D / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0;
    int key_a = k0 + warp * 16 + g, key_b = key_a + 8;
    int qw = warp & 3, cw = warp >> 2; /* dQ: this warp's 16 queries and 32 columns */

    issue(0, 0);
    for (int it = 0; it < nit; it++) {
        int buf = it & 1, h = kvh * group + it / nq, q0 = (qb0 + it % nq) * FA_BLOCK;
        const bf16 *Qb = Qs + buf * FA_TILE, *Ob = Os + buf * FA_TILE;
        const float *lse_b = lse_s + buf * FA_BLOCK, *D_b = D_s + buf * FA_BLOCK;
        if (it + 1 < nit) {
            issue(it + 1, buf ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); /* tiles of this iteration are in; every warp is done with the last dS^T */
        /* key steps of 16 at or before the tile's last query: warps at or past it see only zeros */
        int kend = min(FB_WARPS, (q0 + FA_BLOCK - k0) / 16);
        if (warp < kend) {
            float p[8][4], dp[8][4];
            mma_a_tileT_ldm(p, kf, Qb, lane); /* S^T (16 keys x 64 queries) */
            mma_a_tileT_ldm(dp, vf, Ob, lane); /* dP^T */
            bool edge = q0 < k0 + FB_KEYS || q0 + FA_BLOCK > T_;
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int qi = nt * 8 + 2 * tq + (e & 1), q = q0 + qi, key = e < 2 ? key_a : key_b;
                    float pv = (edge && (key > q || q >= T_)) ? 0.0f : exp2f(p[nt][e] * c - lse_b[qi]);
                    p[nt][e] = pv;
                    dp[nt][e] = pv * (dp[nt][e] - D_b[qi]); /* dS^T */
                }
            mma_p_tile(dv, p, Ob, lane);
            mma_p_tile(dk, dp, Qb, lane);
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int r = 0; r < 2; r++)
                    *reinterpret_cast<u32 *>(dSs + (warp * 16 + g + 8 * r) * FA_LDS + nt * 8 + 2 * tq) =
                        pack_bf16(dp[nt][2 * r], dp[nt][2 * r + 1]);
        }
        __syncthreads(); /* dS^T complete; also every warp is done with Qb, Ob (refilled next) */
        /* dQ rows qw*16.., columns cw*32.. (16 x 32) = dS (16 queries x keys) @ K (keys x 32). The A
         * fragments are dS^T read transposed: matrix mi covers queries +(mi&1)*8, keys +(mi>>1)*8. */
        float dq[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0;
#pragma unroll
        for (int kk = 0; kk < FB_WARPS; kk++) {
            if (kk < kend) {
                u32 a[4];
                ldmatrix_x4_trans(a, dSs + (kk * 16 + (mi >> 1) * 8 + r8) * FA_LDS + qw * 16 + (mi & 1) * 8);
#pragma unroll
                for (int dt = 0; dt < 2; dt++) {
                    u32 bq[4];
                    ldmatrix_x4_trans(bq, Ks + (kk * 16 + (mi & 1) * 8 + r8) * FA_LDS + cw * 32 + dt * 16 +
                                              (mi >> 1) * 8);
                    mma_bf16(dq[2 * dt], a, bq[0], bq[1]);
                    mma_bf16(dq[2 * dt + 1], a, bq[2], bq[3]);
                }
            }
        }
        float *dqh = dqacc + ((size_t)b * nh + h) * T_ * FA_D;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int q = q0 + qw * 16 + g + 8 * r;
            if (q >= T_) continue;
#pragma unroll
            for (int i = 0; i < 4; i++)
                atomicAdd(reinterpret_cast<float2 *>(dqh + (size_t)q * FA_D + cw * 32 + i * 8 + 2 * tq),
                          make_float2(dq[i][2 * r], dq[i][2 * r + 1]));
        }
    }
    bf16 *dkbase = dqkv + (size_t)b * T_ * stride + (size_t)(nh + kvh) * FA_D;
    bf16 *dvbase = dkbase + (size_t)nkv * FA_D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int key = r ? key_b : key_a;
        if (key >= T_) continue;
#pragma unroll
        for (int i = 0; i < FA_D / 8; i++) {
            *reinterpret_cast<u32 *>(dkbase + (size_t)key * stride + i * 8 + 2 * tq) =
                pack_bf16(dk[i][2 * r] * scale, dk[i][2 * r + 1] * scale);
            *reinterpret_cast<u32 *>(dvbase + (size_t)key * stride + i * 8 + 2 * tq) =
                pack_bf16(dv[i][2 * r], dv[i][2 * r + 1]);
        }
    }
}

/* ============================================================== dispatch */

/* 0: simple kernels, 1: flash v1, 2: flash v2 (two-kernel backward), 3: flash v2 forward with the
 * fused backward (the default where it applies, unless the context is deterministic). */
template <typename T> static int flash_version(int hd, const void *qkv)
{
    if (!std::is_same<T, bf16>::value || hd != FA_D || (uintptr_t)qkv % 16) return 0;
    const char *e = getenv("ANVIL_ATTENTION");
    if (e && !strcmp(e, "simple")) return 0;
    if (e && !strcmp(e, "flash1")) return 1;
    if ((e && !strcmp(e, "flash2")) || g_cu.deterministic) return 2;
    return 3;
}

static void check_shape(int nh, int nkv, int hd)
{
    if (nkv <= 0 || nh % nkv) fatal("attention: %d query heads are not a multiple of %d kv heads", nh, nkv);
    if (hd > SIMPLE_MAX_HD) fatal("attention: head_dim %d is larger than the supported %d", hd, SIMPLE_MAX_HD);
}

/* Launch order (flash_block) for a grid of nblock blocks of which per_sm fit on an SM: z order when
 * it is at most FLASH_ZORDER_WAVES waves. ANVIL_ATTENTION_ORDER=x|z forces one (tests). */
#define FLASH_ZORDER_WAVES 8
static int flash_zorder(size_t nblock, int per_sm)
{
    const char *e = getenv("ANVIL_ATTENTION_ORDER");
    if (e && !strcmp(e, "x")) return 0;
    if (e && !strcmp(e, "z")) return 1;
    return nblock <= (size_t)FLASH_ZORDER_WAVES * per_sm * g_cu.sm_count;
}

static dim3 flash_grid(int zorder, int ntile, int heads, int B)
{
    return zorder ? dim3(heads, B, ntile) : dim3(ntile, heads, B);
}

/* Blocks per SM of the flash kernels (their __launch_bounds__ minimums; measured register use). */
#define FA2_FWD_PER_SM 4
#define FA3_FWD_PER_SM 2
#define FA_BWD_KV_PER_SM 2
#define FA_BWD_Q_PER_SM 3
#define FB_PER_SM 1

template <typename T>
void cu_attention_fwd(void *out, float *lse, const void *qkv, int B, int T_, int nh, int nkv, int hd)
{
    CUDA_PROF("attention_fwd");
    check_shape(nh, nkv, hd);
    if (std::is_same<T, bf16>::value && (uintptr_t)qkv % 16 == 0 && (uintptr_t)out % 16 == 0 &&
        cudnn_attention_wanted(T_, hd) && cudnn_attention_fwd(out, lse, qkv, B, T_, nh, nkv, hd))
        return;
    int v = flash_version<T>(hd, qkv);
    const bf16 *q = (const bf16 *)qkv;
    if (v >= 2) {
        /* default: wgmma, 2 warpgroups (128 rows); ANVIL_ATTENTION_FWD=wgmma1: 1 warpgroup; =mma: mma.sync 4 warps
         * x 2 m-tiles (128 rows); =64: v2 (64 rows); =128: mma.sync 8 warps x 1 */
        const char *e = getenv("ANVIL_ATTENTION_FWD");
        if (e && !strcmp(e, "64")) {
            int nt = CEIL_DIV(T_, FA_BLOCK), z = flash_zorder((size_t)nt * nh * B, FA2_FWD_PER_SM);
            flash2_fwd_kernel<<<flash_grid(z, nt, nh, B), FA_THREADS, 0, g_cu.stream>>>((bf16 *)out, lse, q, T_, nh,
                                                                                       nkv, z);
        } else {
            int nt = CEIL_DIV(T_, 2 * FA_BLOCK), z = flash_zorder((size_t)nt * nh * B, FA3_FWD_PER_SM);
            if (!e || !strcmp(e, "wgmma")) {
                static bool smem_set = false;
                if (!smem_set) { /* over the 48 KB a block gets without asking */
                    CUDA_CHECK(cudaFuncSetAttribute(flash_wg_fwd_kernel<2>,
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)WG_SMEM(2)));
                    smem_set = true;
                }
                flash_wg_fwd_kernel<2><<<flash_grid(z, nt, nh, B), 256, WG_SMEM(2), g_cu.stream>>>((bf16 *)out, lse, q,
                                                                                                 T_, nh, nkv, z);
            } else if (e && !strcmp(e, "wgmma1")) { /* one warpgroup (64 rows) per block, 4 blocks per SM */
                int nt1 = CEIL_DIV(T_, WG_ROWS), z1 = flash_zorder((size_t)nt1 * nh * B, 4);
                flash_wg_fwd_kernel<1><<<flash_grid(z1, nt1, nh, B), 128, WG_SMEM(1), g_cu.stream>>>(
                    (bf16 *)out, lse, q, T_, nh, nkv, z1);
            } else if (!strcmp(e, "128"))
                flash3_fwd_kernel<8, 1><<<flash_grid(z, nt, nh, B), 256, 0, g_cu.stream>>>((bf16 *)out, lse, q, T_, nh,
                                                                                           nkv, z);
            else /* "mma" (or any other value) */
                flash3_fwd_kernel<4, 2><<<flash_grid(z, nt, nh, B), 128, 0, g_cu.stream>>>((bf16 *)out, lse, q, T_, nh,
                                                                                           nkv, z);
        }
    } else if (v == 1) {
        dim3 grid(nh, B, CEIL_DIV(T_, FA_BLOCK));
        flash_fwd_kernel<<<grid, FA_THREADS, 0, g_cu.stream>>>((bf16 *)out, lse, q, T_, nh, nkv);
    } else {
        size_t warps = (size_t)B * nh * T_;
        attn_simple_fwd_kernel<T><<<CEIL_DIV(warps, SIMPLE_WARPS), SIMPLE_WARPS * 32, 0, g_cu.stream>>>(
            (T *)out, lse, (const T *)qkv, B, T_, nh, nkv, hd);
    }
    CUDA_CHECK_LAUNCH();
}

template <typename T>
void cu_attention_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv, int B,
                      int T_, int nh, int nkv, int hd)
{
    CUDA_PROF("attention_bwd");
    check_shape(nh, nkv, hd);
    if (std::is_same<T, bf16>::value && (uintptr_t)qkv % 16 == 0 && (uintptr_t)dqkv % 16 == 0 &&
        (uintptr_t)dout % 16 == 0 && (uintptr_t)out % 16 == 0 && cudnn_attention_wanted(T_, hd) &&
        cudnn_attention_bwd(dqkv, dout, out, lse, qkv, B, T_, nh, nkv, hd))
        return;
    int v = flash_version<T>(hd, qkv);
    if (v == 3 && (uintptr_t)dqkv % 16) v = 2; /* dQ is written in 16-byte stores */
    size_t rows = (size_t)B * T_ * nh;
    int nt = CEIL_DIV(T_, FA_BLOCK);
    const bf16 *q = (const bf16 *)qkv, *d = (const bf16 *)dout;
    /* scratch: D (B,nh,T) and, for the fused backward, dqacc (B,nh,T,FA_D) fp32 after it (16-byte aligned) */
    size_t dlen = CEIL_DIV(rows, 64) * 64;
    float *Dbuf = (float *)cuda_scratch((dlen + (v == 3 ? rows * FA_D : 0)) * sizeof(float));
    if (v == 3) {
        float *dqacc = Dbuf + dlen;
        flash_bwd_dot_zero_kernel<<<CEIL_DIV(rows, 8), 256, 0, g_cu.stream>>>(Dbuf, dqacc, d, (const bf16 *)out, B,
                                                                               T_, nh);
        CUDA_CHECK_LAUNCH();
        static bool smem_set = false;
        if (!smem_set) { /* over the 48 KB a block gets without asking */
            CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_fused_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)FA_FUSED_SMEM));
            CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_fused_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)FA_FUSED_SMEM_LOWREG));
            CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_fused128_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)FB_SMEM));
            smem_set = true;
        }
        /* default: 64 keys per block, K/V fragments from shared memory (lowreg, 3 blocks per SM) for grids of
         * many waves (x order) and from registers (2 per SM) for few (z order): measured 2-3% faster on
         * GPT-2's grid, 3-4% slower on llama-1b's. ANVIL_ATTENTION_BWD=64: registers always, =lowreg:
         * shared always, =128: 128 keys per block */
        const char *e = getenv("ANVIL_ATTENTION_BWD");
        if (!e || strcmp(e, "128")) {
            int z = flash_zorder((size_t)nt * nkv * B, FA_BWD_KV_PER_SM);
            dim3 grid = flash_grid(z, nt, nkv, B);
            bool lowreg = e ? !strcmp(e, "lowreg") : !z;
            if (lowreg)
                flash_bwd_fused_kernel<true><<<grid, FA_THREADS, FA_FUSED_SMEM_LOWREG, g_cu.stream>>>(
                    (bf16 *)dqkv, dqacc, d, lse, Dbuf, q, T_, nh, nkv, z);
            else
                flash_bwd_fused_kernel<false><<<grid, FA_THREADS, FA_FUSED_SMEM, g_cu.stream>>>(
                    (bf16 *)dqkv, dqacc, d, lse, Dbuf, q, T_, nh, nkv, z);
        } else {
            int nt128 = CEIL_DIV(T_, FB_KEYS), z = flash_zorder((size_t)nt128 * nkv * B, FB_PER_SM);
            flash_bwd_fused128_kernel<<<flash_grid(z, nt128, nkv, B), FB_THREADS, FB_SMEM, g_cu.stream>>>(
                (bf16 *)dqkv, dqacc, d, lse, Dbuf, q, T_, nh, nkv, z);
        }
        CUDA_CHECK_LAUNCH();
        size_t n8 = rows * (FA_D / 8);
        flash_dq_convert_kernel<<<grid_for(n8, 256), 256, 0, g_cu.stream>>>((bf16 *)dqkv, dqacc, B, T_, nh, nkv,
                                                                          1.0f / sqrtf((float)FA_D));
    } else if (v) {
        flash_bwd_dot_kernel<<<CEIL_DIV(rows, 8), 256, 0, g_cu.stream>>>(Dbuf, d, (const bf16 *)out, B, T_, nh);
        CUDA_CHECK_LAUNCH();
        if (v == 2) {
            int zkv = flash_zorder((size_t)nt * nkv * B, FA_BWD_KV_PER_SM);
            int zq = flash_zorder((size_t)nt * nh * B, FA_BWD_Q_PER_SM);
            flash2_bwd_kv_kernel<<<flash_grid(zkv, nt, nkv, B), FA_THREADS, 0, g_cu.stream>>>(
                (bf16 *)dqkv, d, lse, Dbuf, q, T_, nh, nkv, zkv);
            CUDA_CHECK_LAUNCH();
            flash2_bwd_q_kernel<<<flash_grid(zq, nt, nh, B), FA_THREADS, 0, g_cu.stream>>>((bf16 *)dqkv, d, lse, Dbuf,
                                                                                         q, T_, nh, nkv, zq);
        } else {
            dim3 gkv(nkv, B, nt), gq(nh, B, nt);
            flash_bwd_kv_kernel<<<gkv, FA_THREADS, 0, g_cu.stream>>>((bf16 *)dqkv, d, lse, Dbuf, q, T_, nh, nkv);
            CUDA_CHECK_LAUNCH();
            flash_bwd_q_kernel<<<gq, FA_THREADS, 0, g_cu.stream>>>((bf16 *)dqkv, d, lse, Dbuf, q, T_, nh, nkv);
        }
    } else {
        size_t wq = (size_t)B * nh * T_, wkv = (size_t)B * nkv * T_;
        attn_simple_bwd_q_kernel<T><<<CEIL_DIV(wq, SIMPLE_WARPS), SIMPLE_WARPS * 32, 0, g_cu.stream>>>(
            (T *)dqkv, Dbuf, (const T *)dout, (const T *)out, lse, (const T *)qkv, B, T_, nh, nkv, hd);
        CUDA_CHECK_LAUNCH();
        attn_simple_bwd_kv_kernel<T><<<CEIL_DIV(wkv, SIMPLE_WARPS), SIMPLE_WARPS * 32, 0, g_cu.stream>>>(
            (T *)dqkv, Dbuf, (const T *)dout, lse, (const T *)qkv, B, T_, nh, nkv, hd);
    }
    CUDA_CHECK_LAUNCH();
}

template void cu_attention_fwd<float>(void *, float *, const void *, int, int, int, int, int);
template void cu_attention_fwd<bf16>(void *, float *, const void *, int, int, int, int, int);
template void cu_attention_bwd<float>(void *, const void *, const void *, const float *, const void *, int, int, int,
                                      int, int);
template void cu_attention_bwd<bf16>(void *, const void *, const void *, const float *, const void *, int, int, int,
                                     int, int);
