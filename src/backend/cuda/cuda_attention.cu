/* cuda_attention.cu - causal self-attention with grouped-query heads.
 *
 * Two implementations of our own (cuDNN's fused engines, cuda_cudnn.cu, take bf16 attention first
 * where opts.attention and cudnn_attention_wanted() allow):
 *  - flash (bf16, head_dim 64): FlashAttention-2 style tiles on the tensor cores, bf16 in, fp32
 *    accumulate. The forward runs on Hopper's wgmma (2 warpgroups, 128 query rows per block),
 *    keeps the (T,T) scores in registers and saves only the row log-sum-exp. The backward
 *    (mma.sync) is by default one fused kernel per key block that adds dQ with fp32 atomics, with
 *    the K/V fragments in registers or in shared memory (chosen by launch order); the deterministic
 *    mode's is two kernels: one owns a block of keys and sums dK, dV over every query (and every
 *    query head of its group), the other owns a block of queries and sums dQ.
 *  - simple (any element type, head_dim <= 256): one warp per query row, online softmax in fp32;
 *    the fp32 parity mode and other head sizes use it.
 * docs/cuda.md ("Kernels removed") lists the variants that lost in measurements and were deleted.
 *
 * Layout (backend.h): qkv (B,T,(nh+2*nkv)*hd) rows [q heads | k heads | v heads],
 * out (B,T,nh*hd), lse (B,nh,T). Query head h reads kv head h / (nh/nkv).
 *
 * The simple kernels, the wgmma forward and the two-kernel backward are templates over CAUSAL: true
 * is the decoders' attention (keys 0..t), false the encoders' (backend.h attention_len_fwd/bwd:
 * every query of row b attends to the keys below lens[b], clamped to 1..T; lens NULL = T). The
 * bidirectional backward runs the two-kernel path (no atomics); cuDNN's fused engines take the
 * bidirectional mode only for full rows (lens NULL: packed training rows), its graphs without the
 * causal mask (cuda_cudnn.cu has no padding mask). */
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_cudnn.h"

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define SIMPLE_MAX_HD 256
#define SIMPLE_WARPS 8

/* The keys of row b in the bidirectional mode: lens[b] clamped to 1..T (all T without lens). */
__device__ __forceinline__ int key_len(const int32_t *lens, int b, int T_)
{
    int n = lens ? lens[b] : T_;
    return n < 1 ? 1 : n > T_ ? T_ : n;
}

/* ================================================================ simple */

/* Attention probability dropout (backend.h attention_drop_fwd/bwd) in the simple kernels (DROP true):
 * probability (b, h, t, s) is dropped when its draw is below cut, the kept ones scaled by keep; the
 * draw is the CPU's (dropout_u32 of attn_dropout_index), so both drop the same elements. */
struct AttnDrop {
    uint32_t cut;
    float keep;
    uint64_t seed;
};

__device__ __forceinline__ float attn_drop_factor(const AttnDrop &dr, int b, int h, int t, int s, int nh, int T_)
{
    return dropout_u32(dr.seed, attn_dropout_index(b, h, t, s, nh, T_)) < dr.cut ? 0.0f : dr.keep;
}

// out = softmax(q k^T * scale, causal or over the row's keys) v,  lse = log sum exp of each row.  One
// warp per (b, h, t); lane owns dims lane, lane+32, ...
template <typename T, bool CAUSAL, bool DROP = false>
__global__ void attn_simple_fwd_kernel(T *out, float *lse, const T *qkv, int B, int T_, int nh, int nkv, int hd,
                                       const int32_t *lens, AttnDrop dr = AttnDrop{})
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
    int ns = CAUSAL ? t + 1 : key_len(lens, b, T_);
    for (int s = 0; s < ns; s++) {
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
        float pv = p; /* the dropped probability weighs v; the normalizer l sums the undropped ones */
        if (DROP) pv *= attn_drop_factor(dr, b, h, t, s, nh, T_);
#pragma unroll
        for (int k = 0; k < NPL; k++) {
            int d = lane + 32 * k;
            if (d < hd) o[k] = o[k] * alpha + pv * to_f(vr[d]);
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
template <typename T, bool CAUSAL, bool DROP = false>
__global__ void attn_simple_bwd_q_kernel(T *dqkv, float *Dbuf, const T *dout, const T *out, const float *lse,
                                         const T *qkv, int B, int T_, int nh, int nkv, int hd, const int32_t *lens,
                                         AttnDrop dr = AttnDrop{})
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
    int ns = CAUSAL ? t + 1 : key_len(lens, b, T_);
    for (int s = 0; s < ns; s++) {
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
        if (DROP) dpv *= attn_drop_factor(dr, b, h, t, s, nh, T_);
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
// (bidirectional: over every t when s is one of the row's keys, else zero)
template <typename T, bool CAUSAL, bool DROP = false>
__global__ void attn_simple_bwd_kv_kernel(T *dqkv, const float *Dbuf, const T *dout, const float *lse, const T *qkv,
                                          int B, int T_, int nh, int nkv, int hd, const int32_t *lens,
                                          AttnDrop dr = AttnDrop{})
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
    int t0 = CAUSAL ? s : (s < key_len(lens, b, T_) ? 0 : T_);
    for (int h = kvh * group; h < (kvh + 1) * group; h++)
        for (int t = t0; t < T_; t++) {
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
            float ps = expf(dot * scale - lse[li]), pv = ps;
            if (DROP) {
                float f = attn_drop_factor(dr, b, h, t, s, nh, T_);
                dpv *= f;
                pv = ps * f;
            }
            float ds = ps * (dpv - Dbuf[li]) * scale;
#pragma unroll
            for (int k = 0; k < NPL; k++) {
                int e = lane + 32 * k;
                if (e < hd) {
                    dk[k] += ds * to_f(q[e]);
                    dvv[k] += pv * to_f(d[e]);
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

/* ========================================================= flash, two-kernel backward
 * The deterministic mode's backward (FlashAttention-2's layout, no atomics): one kernel owns a
 * block of 64 keys and sums dK, dV over every query (and every query head of its group), the other
 * owns a block of 64 queries and sums dQ. K/V (or Q/dO) tiles are double-buffered through cp.async,
 * so the next tile streams in while the current one is multiplied, and B fragments of the score
 * products are read with ldmatrix (one x4 load per two mma). */

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

template <bool CAUSAL, bool DROP = false>
__global__ void __launch_bounds__(FA_THREADS) flash2_bwd_kv_kernel(bf16 *dqkv, const bf16 *dout, const float *lse,
                                                                   const float *Dbuf, const bf16 *qkv, int T_, int nh,
                                                                   int nkv, int zorder, const int32_t *lens,
                                                                   AttnDrop dr = AttnDrop{})
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

    /* iterations: every (query head of the group, query block at or after this key block; bidirectional:
     * every query block, none when the block holds no key of the row) */
    int len = CAUSAL ? T_ : key_len(lens, b, T_);
    int qstart = CAUSAL ? kb : 0, nq = nqb - qstart, nit = (CAUSAL || k0 < len) ? group * nq : 0;
    auto issue = [&](int it, int buf) {
        int h = kvh * group + it / nq, q0 = (qstart + it % nq) * FA_BLOCK;
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

    if (nit) issue(0, 0);
    for (int it = 0; it < nit; it++) {
        int buf = it & 1, q0 = (qstart + it % nq) * FA_BLOCK;
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
        bool edge = CAUSAL ? (q0 == k0 || q0 + FA_BLOCK > T_) : (k0 + FA_BLOCK > len || q0 + FA_BLOCK > T_);
        int hq = kvh * group + it / nq; /* this iteration's query head (dropout's draw index) */
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int qi = nt * 8 + 2 * tq + (e & 1), q = q0 + qi, key = e < 2 ? key_a : key_b;
                bool hidden = CAUSAL ? (key > q || q >= T_) : (key >= len || q >= T_);
                float pv = (edge && hidden) ? 0.0f : exp2f(p[nt][e] * c - lse_s[buf][qi]);
                if (DROP) { /* dV from the dropped P; dP through the same mask */
                    float f = attn_drop_factor(dr, b, hq, q, key, nh, T_);
                    p[nt][e] = pv * f;
                    dp[nt][e] = pv * (dp[nt][e] * f - D_s[buf][qi]);
                } else {
                    p[nt][e] = pv;
                    dp[nt][e] = pv * (dp[nt][e] - D_s[buf][qi]);
                }
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

template <bool CAUSAL, bool DROP = false>
__global__ void __launch_bounds__(FA_THREADS, 3) flash2_bwd_q_kernel(bf16 *dqkv, const bf16 *dout, const float *lse,
                                                                  const float *Dbuf, const bf16 *qkv, int T_, int nh,
                                                                  int nkv, int zorder, const int32_t *lens,
                                                                  AttnDrop dr = AttnDrop{})
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

    int len = CAUSAL ? T_ : key_len(lens, b, T_), nkb = CAUSAL ? qb + 1 : CEIL_DIV(len, FA_BLOCK);
    for (int kb = 0; kb < nkb; kb++) {
        int k0 = kb * FA_BLOCK, buf = kb & 1;
        if (kb + 1 < nkb) {
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
        bool edge = CAUSAL ? (kb == qb || k0 + FA_BLOCK > T_ || q0 + FA_BLOCK > T_)
                           : (k0 + FA_BLOCK > len || q0 + FA_BLOCK > T_);
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = k0 + nt * 8 + 2 * tq + (e & 1), r = e >> 1, q = r ? row_b : row_a;
                bool hidden = CAUSAL ? (key > q || key >= T_ || q >= T_) : (key >= len || q >= T_);
                float pv = (edge && hidden) ? 0.0f : exp2f(p[nt][e] * c - L[r]);
                if (DROP) dp[nt][e] *= attn_drop_factor(dr, b, h, q, key, nh, T_);
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
#define WG_GROUPS 2                        /* warpgroups per block (128 query rows; 2 blocks per SM) */
#define WG_THREADS (WG_GROUPS * 128)
#define WG_TILE_BYTES (FA_BLOCK * FA_D * 2) /* one 64 x 64 bf16 tile, 128-byte rows: 8 KB */
/* dynamic shared memory: Q (WG_GROUPS x 64 rows), K[2], V[2], slack to align to 1024 bytes */
#define WG_SMEM (WG_GROUPS * WG_TILE_BYTES + 4 * WG_TILE_BYTES + 1024)

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

template <bool CAUSAL, bool DROP = false>
__global__ void __launch_bounds__(WG_THREADS, 4 / WG_GROUPS) flash_wg_fwd_kernel(bf16 *out, float *lse,
                                                                                const bf16 *qkv, int T_, int nh,
                                                                                int nkv, int zorder,
                                                                                const int32_t *lens,
                                                                                AttnDrop dr = AttnDrop{})
{
    const int THREADS_ = WG_THREADS, ROWS = WG_GROUPS * WG_ROWS;
    extern __shared__ __align__(16) unsigned char wg_smem[];
    unsigned sbase = ((unsigned)__cvta_generic_to_shared(wg_smem) + 1023u) & ~1023u;
    unsigned Qsa = sbase, Ksa = Qsa + WG_GROUPS * WG_TILE_BYTES, Vsa = Ksa + 2 * WG_TILE_BYTES; /* K, V: [2] */
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
    int len = CAUSAL ? T_ : key_len(lens, b, T_);
    int nkb = CAUSAL ? min(CEIL_DIV(q0 + ROWS, FA_BLOCK), CEIL_DIV(T_, FA_BLOCK)) : CEIL_DIV(len, FA_BLOCK);
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
        if (!CAUSAL || k0 <= wrow0 + WG_ROWS - 1) { /* else every key of the tile is after this warpgroup's rows */
            float s[8][4];
#pragma unroll
            for (int i = 0; i < 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0;
            uint64_t dk = wg_desc(Ksa + buf * WG_TILE_BYTES, 16, 1024);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < FA_D / 16; kk++) wgmma_ss(s, dq + 2 * kk, dk + 2 * kk); /* +32 bytes per step */
            wg_commit();
            wg_wait0();
            bool edge = CAUSAL ? (k0 + FA_BLOCK - 1 > wrow0 || k0 + FA_BLOCK > T_) : k0 + FA_BLOCK > len;
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int key = k0 + nt * 8 + 2 * tq + (e & 1), qrow = e < 2 ? row_a : row_b;
                    if (edge && (CAUSAL ? (key > qrow || key >= T_) : key >= len)) s[nt][e] = -INFINITY;
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
                if (DROP) { /* the normalizer l sums the undropped P; the product takes the dropped one */
                    int key = k0 + nt * 8 + 2 * tq;
                    p0 *= attn_drop_factor(dr, b, h, row_a, key, nh, T_);
                    p1 *= attn_drop_factor(dr, b, h, row_a, key + 1, nh, T_);
                    p2 *= attn_drop_factor(dr, b, h, row_b, key, nh, T_);
                    p3 *= attn_drop_factor(dr, b, h, row_b, key + 1, nh, T_);
                }
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
 * bit-reproducible; the deterministic mode runs the two kernels above. */

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

/* ============================================================== dispatch */

/* Whether a call runs the flash kernels (bf16, head_dim 64, 16-byte aligned rows) or the simple ones. */
template <typename T> static bool flash_applies(int hd, const void *qkv)
{
    return std::is_same<T, bf16>::value && hd == FA_D && (uintptr_t)qkv % 16 == 0;
}

static void check_shape(int nh, int nkv, int hd)
{
    if (nkv <= 0 || nh % nkv) fatal("attention: %d query heads are not a multiple of %d kv heads", nh, nkv);
    if (hd > SIMPLE_MAX_HD) fatal("attention: head_dim %d is larger than the supported %d", hd, SIMPLE_MAX_HD);
}

/* Launch order (flash_block) for a grid of nblock blocks of which per_sm fit on an SM: z order when
 * it is at most FLASH_ZORDER_WAVES waves; opts.attn_launch_order 1 (x) or 2 (z) forces one (tests). */
#define FLASH_ZORDER_WAVES 8
static int flash_zorder(size_t nblock, int per_sm)
{
    if (g_cu.opts.attn_launch_order == 1) return 0;
    if (g_cu.opts.attn_launch_order == 2) return 1;
    return nblock <= (size_t)FLASH_ZORDER_WAVES * per_sm * g_cu.sm_count;
}

static dim3 flash_grid(int zorder, int ntile, int heads, int B)
{
    return zorder ? dim3(heads, B, ntile) : dim3(ntile, heads, B);
}

/* Blocks per SM of the flash kernels (their __launch_bounds__ minimums; measured register use). */
#define WG_FWD_PER_SM 2
#define FA_BWD_KV_PER_SM 2
#define FA_BWD_Q_PER_SM 3

// out (B,T,nh*64), lse (B,nh,T) from qkv: the wgmma forward, 128 query rows per block (DROP: with dropout
// on the probabilities, attention_drop_fwd)
template <bool CAUSAL, bool DROP = false>
static void flash_fwd(bf16 *out, float *lse, const bf16 *qkv, int B, int T_, int nh, int nkv, const int32_t *lens,
                      AttnDrop dr = AttnDrop{})
{
    static bool smem_set = false;
    if (!smem_set) { /* over the 48 KB a block gets without asking */
        CUDA_CHECK(cudaFuncSetAttribute(flash_wg_fwd_kernel<CAUSAL, DROP>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)WG_SMEM));
        smem_set = true;
    }
    int nt = CEIL_DIV(T_, WG_GROUPS * WG_ROWS), z = flash_zorder((size_t)nt * nh * B, WG_FWD_PER_SM);
    flash_wg_fwd_kernel<CAUSAL, DROP><<<flash_grid(z, nt, nh, B), WG_THREADS, WG_SMEM, g_cu.stream>>>(
        out, lse, qkv, T_, nh, nkv, z, lens, dr);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
void cu_attention_fwd(void *out, float *lse, const void *qkv, int B, int T_, int nh, int nkv, int hd)
{
    CUDA_PROF("attention_fwd");
    check_shape(nh, nkv, hd);
    if (std::is_same<T, bf16>::value && (uintptr_t)qkv % 16 == 0 && (uintptr_t)out % 16 == 0 &&
        cudnn_attention_wanted(T_, hd) && cudnn_attention_fwd(out, lse, qkv, B, T_, nh, nkv, hd))
        return;
    if (flash_applies<T>(hd, qkv)) {
        flash_fwd<true>((bf16 *)out, lse, (const bf16 *)qkv, B, T_, nh, nkv, nullptr);
        return;
    }
    size_t warps = (size_t)B * nh * T_;
    attn_simple_fwd_kernel<T, true><<<CEIL_DIV(warps, SIMPLE_WARPS), SIMPLE_WARPS * 32, 0, g_cu.stream>>>(
        (T *)out, lse, (const T *)qkv, B, T_, nh, nkv, hd, nullptr);
    CUDA_CHECK_LAUNCH();
}

/* The fused backward (default mode): D and a zeroed fp32 dQ accumulator dqacc (B,nh,T,64), one kernel
 * per block of 64 keys (dK, dV; dQ by atomics), then dQ = scale * dqacc in bf16. The K/V fragments are
 * read from shared memory in every iteration for grids of many waves (x order: 3 blocks per SM; GPT-2
 * 1.80 vs 1.86 ms per layer) and kept in registers for few (z order: 2 per SM; llama-1b 2.06 vs 2.13);
 * opts.attn_bwd_layout 1 (registers) or 2 (shared memory) forces one. */
static void flash_bwd_fused(bf16 *dqkv, const bf16 *dout, const bf16 *out, const float *lse, const bf16 *qkv, int B,
                            int T_, int nh, int nkv)
{
    size_t rows = (size_t)B * T_ * nh, dlen = CEIL_DIV(rows, 64) * 64; /* dqacc 16-byte aligned after D */
    float *Dbuf = (float *)cuda_scratch((dlen + rows * FA_D) * sizeof(float)), *dqacc = Dbuf + dlen;
    flash_bwd_dot_zero_kernel<<<CEIL_DIV(rows, 8), 256, 0, g_cu.stream>>>(Dbuf, dqacc, dout, out, B, T_, nh);
    CUDA_CHECK_LAUNCH();
    static bool smem_set = false;
    if (!smem_set) { /* over the 48 KB a block gets without asking */
        CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_fused_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)FA_FUSED_SMEM));
        CUDA_CHECK(cudaFuncSetAttribute(flash_bwd_fused_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)FA_FUSED_SMEM_LOWREG));
        smem_set = true;
    }
    int nt = CEIL_DIV(T_, FA_BLOCK), z = flash_zorder((size_t)nt * nkv * B, FA_BWD_KV_PER_SM);
    dim3 grid = flash_grid(z, nt, nkv, B);
    int layout = g_cu.opts.attn_bwd_layout;
    bool lowreg = layout == 1 ? false : layout == 2 ? true : !z;
    if (lowreg)
        flash_bwd_fused_kernel<true><<<grid, FA_THREADS, FA_FUSED_SMEM_LOWREG, g_cu.stream>>>(
            dqkv, dqacc, dout, lse, Dbuf, qkv, T_, nh, nkv, z);
    else
        flash_bwd_fused_kernel<false><<<grid, FA_THREADS, FA_FUSED_SMEM, g_cu.stream>>>(dqkv, dqacc, dout, lse, Dbuf,
                                                                                      qkv, T_, nh, nkv, z);
    CUDA_CHECK_LAUNCH();
    size_t n8 = rows * (FA_D / 8);
    flash_dq_convert_kernel<<<grid_for(n8, 256), 256, 0, g_cu.stream>>>(dqkv, dqacc, B, T_, nh, nkv,
                                                                      1.0f / sqrtf((float)FA_D));
    CUDA_CHECK_LAUNCH();
}

/* The two-kernel backward (deterministic mode, and every bidirectional call): D, then dK, dV per key
 * block and dQ per query block. */
template <bool CAUSAL, bool DROP = false>
static void flash_bwd_two_kernels(bf16 *dqkv, const bf16 *dout, const bf16 *out, const float *lse, const bf16 *qkv,
                                  int B, int T_, int nh, int nkv, const int32_t *lens, AttnDrop dr = AttnDrop{})
{
    size_t rows = (size_t)B * T_ * nh;
    float *Dbuf = (float *)cuda_scratch(CEIL_DIV(rows, 64) * 64 * sizeof(float));
    flash_bwd_dot_kernel<<<CEIL_DIV(rows, 8), 256, 0, g_cu.stream>>>(Dbuf, dout, out, B, T_, nh);
    CUDA_CHECK_LAUNCH();
    int nt = CEIL_DIV(T_, FA_BLOCK);
    int zkv = flash_zorder((size_t)nt * nkv * B, FA_BWD_KV_PER_SM);
    int zq = flash_zorder((size_t)nt * nh * B, FA_BWD_Q_PER_SM);
    flash2_bwd_kv_kernel<CAUSAL, DROP><<<flash_grid(zkv, nt, nkv, B), FA_THREADS, 0, g_cu.stream>>>(
        dqkv, dout, lse, Dbuf, qkv, T_, nh, nkv, zkv, lens, dr);
    CUDA_CHECK_LAUNCH();
    flash2_bwd_q_kernel<CAUSAL, DROP><<<flash_grid(zq, nt, nh, B), FA_THREADS, 0, g_cu.stream>>>(
        dqkv, dout, lse, Dbuf, qkv, T_, nh, nkv, zq, lens, dr);
    CUDA_CHECK_LAUNCH();
}

/* The simple backward: D and dQ per query row, then dK, dV per key row. */
template <typename T, bool CAUSAL>
static void simple_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv, int B, int T_,
                       int nh, int nkv, int hd, const int32_t *lens)
{
    size_t rows = (size_t)B * T_ * nh, wkv = (size_t)B * nkv * T_;
    float *Dbuf = (float *)cuda_scratch(CEIL_DIV(rows, 64) * 64 * sizeof(float));
    attn_simple_bwd_q_kernel<T, CAUSAL><<<CEIL_DIV(rows, SIMPLE_WARPS), SIMPLE_WARPS * 32, 0, g_cu.stream>>>(
        (T *)dqkv, Dbuf, (const T *)dout, (const T *)out, lse, (const T *)qkv, B, T_, nh, nkv, hd, lens);
    CUDA_CHECK_LAUNCH();
    attn_simple_bwd_kv_kernel<T, CAUSAL><<<CEIL_DIV(wkv, SIMPLE_WARPS), SIMPLE_WARPS * 32, 0, g_cu.stream>>>(
        (T *)dqkv, Dbuf, (const T *)dout, lse, (const T *)qkv, B, T_, nh, nkv, hd, lens);
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
    if (flash_applies<T>(hd, qkv)) {
        const bf16 *q = (const bf16 *)qkv, *d = (const bf16 *)dout, *o = (const bf16 *)out;
        /* the fused kernel writes dQ in 16-byte stores */
        if (!g_cu.deterministic && (uintptr_t)dqkv % 16 == 0)
            flash_bwd_fused((bf16 *)dqkv, d, o, lse, q, B, T_, nh, nkv);
        else
            flash_bwd_two_kernels<true>((bf16 *)dqkv, d, o, lse, q, B, T_, nh, nkv, nullptr);
        return;
    }
    simple_bwd<T, true>(dqkv, dout, out, lse, qkv, B, T_, nh, nkv, hd, nullptr);
}

/* The bidirectional attention of encoders (backend.h attention_len_fwd/bwd): the flash kernels for
 * bf16 and head_dim 64, else the simple ones; lens is backend memory (B) or NULL. */
template <typename T>
void cu_attention_len_fwd(void *out, float *lse, const void *qkv, const int32_t *lens, int B, int T_, int nh, int nkv,
                          int hd)
{
    CUDA_PROF("attention_len_fwd");
    check_shape(nh, nkv, hd);
    /* full rows (no lengths: packed training rows): cuDNN's fused engines without a mask */
    if (!lens && std::is_same<T, bf16>::value && (uintptr_t)qkv % 16 == 0 && (uintptr_t)out % 16 == 0 &&
        cudnn_attention_wanted(T_, hd) && cudnn_attention_full_fwd(out, lse, qkv, B, T_, nh, nkv, hd))
        return;
    if (flash_applies<T>(hd, qkv)) {
        flash_fwd<false>((bf16 *)out, lse, (const bf16 *)qkv, B, T_, nh, nkv, lens);
        return;
    }
    size_t warps = (size_t)B * nh * T_;
    attn_simple_fwd_kernel<T, false><<<CEIL_DIV(warps, SIMPLE_WARPS), SIMPLE_WARPS * 32, 0, g_cu.stream>>>(
        (T *)out, lse, (const T *)qkv, B, T_, nh, nkv, hd, lens);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
void cu_attention_len_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv,
                          const int32_t *lens, int B, int T_, int nh, int nkv, int hd)
{
    CUDA_PROF("attention_len_bwd");
    check_shape(nh, nkv, hd);
    if (!lens && std::is_same<T, bf16>::value && (uintptr_t)qkv % 16 == 0 && (uintptr_t)dqkv % 16 == 0 &&
        (uintptr_t)dout % 16 == 0 && (uintptr_t)out % 16 == 0 && cudnn_attention_wanted(T_, hd) &&
        cudnn_attention_full_bwd(dqkv, dout, out, lse, qkv, B, T_, nh, nkv, hd))
        return;
    if (flash_applies<T>(hd, qkv)) {
        flash_bwd_two_kernels<false>((bf16 *)dqkv, (const bf16 *)dout, (const bf16 *)out, lse, (const bf16 *)qkv, B,
                                     T_, nh, nkv, lens);
        return;
    }
    simple_bwd<T, false>(dqkv, dout, out, lse, qkv, B, T_, nh, nkv, hd, lens);
}

/* Attention with dropout on the probabilities (backend.h attention_drop_fwd/bwd, training with
 * model.attn_dropout > 0): our kernels with the draw compiled in (DROP), never cuDNN's fused engines
 * (whose dropout masks are not ours), whatever opts.attention says. bf16 with head_dim 64: the wgmma
 * flash forward and the two-kernel flash backward (atomic-free, so deterministic in every mode); other
 * shapes and fp32: the simple kernels. */
static AttnDrop attn_drop_make(float p, uint64_t seed)
{
    AttnDrop dr;
    dr.cut = dropout_cut(p);
    dr.keep = dr.cut ? 1.0f / (1.0f - p) : 1.0f; /* a p below 2^-32 drops nothing and scales nothing (the CPU's) */
    dr.seed = seed;
    return dr;
}

template <typename T>
void cu_attention_drop_fwd(void *out, float *lse, const void *qkv, const int32_t *lens, int causal, int B, int T_,
                           int nh, int nkv, int hd, float p, uint64_t seed)
{
    CUDA_PROF("attention_drop_fwd");
    check_shape(nh, nkv, hd);
    AttnDrop dr = attn_drop_make(p, seed);
    if (flash_applies<T>(hd, qkv)) {
        if (causal) flash_fwd<true, true>((bf16 *)out, lse, (const bf16 *)qkv, B, T_, nh, nkv, nullptr, dr);
        else flash_fwd<false, true>((bf16 *)out, lse, (const bf16 *)qkv, B, T_, nh, nkv, lens, dr);
        return;
    }
    size_t warps = (size_t)B * nh * T_;
    unsigned grid = (unsigned)CEIL_DIV(warps, SIMPLE_WARPS);
    if (causal)
        attn_simple_fwd_kernel<T, true, true><<<grid, SIMPLE_WARPS * 32, 0, g_cu.stream>>>(
            (T *)out, lse, (const T *)qkv, B, T_, nh, nkv, hd, nullptr, dr);
    else
        attn_simple_fwd_kernel<T, false, true><<<grid, SIMPLE_WARPS * 32, 0, g_cu.stream>>>(
            (T *)out, lse, (const T *)qkv, B, T_, nh, nkv, hd, lens, dr);
    CUDA_CHECK_LAUNCH();
}

template <typename T, bool CAUSAL>
static void simple_drop_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv, int B,
                            int T_, int nh, int nkv, int hd, const int32_t *lens, AttnDrop dr)
{
    size_t rows = (size_t)B * T_ * nh, wkv = (size_t)B * nkv * T_;
    float *Dbuf = (float *)cuda_scratch(CEIL_DIV(rows, 64) * 64 * sizeof(float));
    attn_simple_bwd_q_kernel<T, CAUSAL, true><<<CEIL_DIV(rows, SIMPLE_WARPS), SIMPLE_WARPS * 32, 0, g_cu.stream>>>(
        (T *)dqkv, Dbuf, (const T *)dout, (const T *)out, lse, (const T *)qkv, B, T_, nh, nkv, hd, lens, dr);
    CUDA_CHECK_LAUNCH();
    attn_simple_bwd_kv_kernel<T, CAUSAL, true><<<CEIL_DIV(wkv, SIMPLE_WARPS), SIMPLE_WARPS * 32, 0, g_cu.stream>>>(
        (T *)dqkv, Dbuf, (const T *)dout, lse, (const T *)qkv, B, T_, nh, nkv, hd, lens, dr);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
void cu_attention_drop_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv,
                           const int32_t *lens, int causal, int B, int T_, int nh, int nkv, int hd, float p,
                           uint64_t seed)
{
    CUDA_PROF("attention_drop_bwd");
    check_shape(nh, nkv, hd);
    AttnDrop dr = attn_drop_make(p, seed);
    if (flash_applies<T>(hd, qkv)) {
        const bf16 *q = (const bf16 *)qkv, *d = (const bf16 *)dout, *o = (const bf16 *)out;
        if (causal) flash_bwd_two_kernels<true, true>((bf16 *)dqkv, d, o, lse, q, B, T_, nh, nkv, nullptr, dr);
        else flash_bwd_two_kernels<false, true>((bf16 *)dqkv, d, o, lse, q, B, T_, nh, nkv, lens, dr);
        return;
    }
    if (causal) simple_drop_bwd<T, true>(dqkv, dout, out, lse, qkv, B, T_, nh, nkv, hd, nullptr, dr);
    else simple_drop_bwd<T, false>(dqkv, dout, out, lse, qkv, B, T_, nh, nkv, hd, lens, dr);
}

template void cu_attention_drop_fwd<float>(void *, float *, const void *, const int32_t *, int, int, int, int, int,
                                           int, float, uint64_t);
template void cu_attention_drop_fwd<bf16>(void *, float *, const void *, const int32_t *, int, int, int, int, int,
                                          int, float, uint64_t);
template void cu_attention_drop_bwd<float>(void *, const void *, const void *, const float *, const void *,
                                           const int32_t *, int, int, int, int, int, int, float, uint64_t);
template void cu_attention_drop_bwd<bf16>(void *, const void *, const void *, const float *, const void *,
                                          const int32_t *, int, int, int, int, int, int, float, uint64_t);
template void cu_attention_fwd<float>(void *, float *, const void *, int, int, int, int, int);
template void cu_attention_fwd<bf16>(void *, float *, const void *, int, int, int, int, int);
template void cu_attention_bwd<float>(void *, const void *, const void *, const float *, const void *, int, int, int,
                                      int, int);
template void cu_attention_bwd<bf16>(void *, const void *, const void *, const float *, const void *, int, int, int,
                                     int, int);
template void cu_attention_len_fwd<float>(void *, float *, const void *, const int32_t *, int, int, int, int, int);
template void cu_attention_len_fwd<bf16>(void *, float *, const void *, const int32_t *, int, int, int, int, int);
template void cu_attention_len_bwd<float>(void *, const void *, const void *, const float *, const void *,
                                          const int32_t *, int, int, int, int, int);
template void cu_attention_len_bwd<bf16>(void *, const void *, const void *, const float *, const void *,
                                         const int32_t *, int, int, int, int, int);
