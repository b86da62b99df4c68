/* cuda_quant4.cu - 4-bit dequantization on the GPU (see cuda_quant4.h).
 * One thread per value: value e is the high (even e) or low nibble of byte
 * e/2, scaled by its block's absmax. The nested absmax is map8[q] *
 * nested_absmax + offset with __fmul_rn / __fadd_rn so that nvcc cannot fuse
 * it into an FMA (bitsandbytes rounds the product first, as quant4.c does). */
#include "backend/cuda/cuda_common.cuh"

extern "C" {
#include "backend/cuda/cuda_quant4.h"
}

/* Threads per block of the dequantization kernel. */
#define Q4_THREADS 256

/* The two 4-bit codes, NF4 then FP4, copied from q4_code() on first use. */
__constant__ float q4_codes[2][16];
static int q4_codes_ready;

static void q4_codes_upload(void)
{
    if (q4_codes_ready) return;
    float c[2][16];
    memcpy(c[0], q4_code(Q4_NF4), sizeof(c[0]));
    memcpy(c[1], q4_code(Q4_FP4), sizeof(c[1]));
    CUDA_CHECK(cudaMemcpyToSymbol(q4_codes, c, sizeof(c)));
    q4_codes_ready = 1;
}

template <typename T> __device__ inline T q4_store(float x);
template <> __device__ inline float q4_store<float>(float x)
{
    return x;
}
template <> __device__ inline bf16 q4_store<bf16>(float x)
{
    return __float2bfloat16_rn(x);
}

/* out[i] = value e0 + i, for i < count. */
template <typename T> __global__ void q4_dequantize_kernel(Q4State s, int64_t e0, int64_t count, T *out)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    int64_t e = e0 + i, b = e / s.blocksize;
    uint8_t byte = s.packed[e >> 1];
    uint8_t q = (e & 1) ? byte & 0xF : byte >> 4;
    float scale = s.absmax
                      ? s.absmax[b]
                      : __fadd_rn(__fmul_rn(s.map8[s.qabsmax[b]], s.nested_absmax[b / s.nested_blocksize]),
                                  s.nested_offset);
    out[i] = q4_store<T>(__fmul_rn(q4_codes[s.type == Q4_NF4 ? 0 : 1][q], scale));
}

template <typename T>
static void q4_launch(const Q4State *s, int64_t cols, int64_t r0, int64_t r1, T *out, void *stream)
{
    q4_codes_upload();
    int64_t count = (r1 - r0) * cols;
    if (count <= 0) return;
    int64_t blocks = (count + Q4_THREADS - 1) / Q4_THREADS;
    q4_dequantize_kernel<T>
        <<<(unsigned)blocks, Q4_THREADS, 0, (cudaStream_t)stream>>>(*s, r0 * cols, count, out);
    CUDA_CHECK_LAUNCH();
}

/* Groups of eight values: four packed bytes in one load, one block scale (blocks are multiples of 8
 * values), eight outputs in one 16-byte (bf16) or two (fp32) stores. A thread takes U groups a block's
 * width apart, so that each of its loads and stores is coalesced across the warp, and issues the U loads
 * before the first use (more bytes in flight). The 16 codes sit in shared memory: the nibbles of a warp
 * differ, and constant memory serializes lanes that read different addresses (measured on the H200: 57%
 * of a QLoRA step at B=1, T=512 before). The block index is a shift (bitsandbytes' block sizes are
 * powers of two). The same products as the kernel above, so the same bits. */
#define Q4_UNROLL 4
template <typename T> __global__ void q4_dequantize8_kernel(Q4State s, int64_t n8, int shift, int nshift, T *out)
{
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = q4_codes[s.type == Q4_NF4 ? 0 : 1][threadIdx.x];
    __syncthreads();
    int64_t g0 = (int64_t)blockIdx.x * blockDim.x * Q4_UNROLL + threadIdx.x;
    uint32_t w[Q4_UNROLL];
#pragma unroll
    for (int u = 0; u < Q4_UNROLL; u++) {
        int64_t g = g0 + (int64_t)u * blockDim.x;
        w[u] = g < n8 ? *reinterpret_cast<const uint32_t *>(s.packed + g * 4) : 0u;
    }
#pragma unroll
    for (int u = 0; u < Q4_UNROLL; u++) {
        int64_t g = g0 + (int64_t)u * blockDim.x;
        if (g >= n8) break;
        int64_t e = g * 8, b = e >> shift;
        float scale = s.absmax ? s.absmax[b]
                               : __fadd_rn(__fmul_rn(s.map8[s.qabsmax[b]],
                                                     s.nested_absmax[nshift >= 0 ? b >> nshift : b / s.nested_blocksize]),
                                           s.nested_offset);
        Vec<T, 8> v;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint32_t byte = (w[u] >> (8 * k)) & 0xFF;
            v.v[2 * k] = q4_store<T>(__fmul_rn(code[byte >> 4], scale));
            v.v[2 * k + 1] = q4_store<T>(__fmul_rn(code[byte & 0xF], scale));
        }
        if (sizeof(T) == 2) {
            *reinterpret_cast<Vec<T, 8> *>(out + e) = v;
        } else {
#pragma unroll
            for (int k = 0; k < 8; k++) out[e + k] = v.v[k];
        }
    }
}

/* The whole tensor into out: the 8-wide kernel over the bulk, the 1-wide one over a tail. */
template <typename T> void cu_dequant4(void *out, const void *q4state)
{
    CUDA_PROF("dequant4");
    const Q4State *s = (const Q4State *)q4state;
    q4_codes_upload();
    int shift = 0;
    while ((1 << shift) < s->blocksize) shift++;
    int pow2 = (1 << shift) == s->blocksize, nshift = 0;
    while (s->nested_blocksize > 0 && (1 << nshift) < s->nested_blocksize) nshift++;
    if (s->nested_blocksize <= 0 || (1 << nshift) != s->nested_blocksize) nshift = -1;
    int64_t n8 = ((uintptr_t)out % 16 == 0 && (uintptr_t)s->packed % 4 == 0 && s->blocksize % 8 == 0 && pow2)
                     ? s->n / 8
                     : 0;
    if (n8) {
        int64_t per = (int64_t)Q4_THREADS * Q4_UNROLL;
        q4_dequantize8_kernel<T><<<(unsigned)((n8 + per - 1) / per), Q4_THREADS, 0, g_cu.stream>>>(*s, n8, shift, nshift,
                                                                                                   (T *)out);
        CUDA_CHECK_LAUNCH();
    }
    int64_t done = n8 * 8;
    int64_t rest = s->n - done;
    if (rest > 0) {
        q4_dequantize_kernel<T><<<(unsigned)((rest + Q4_THREADS - 1) / Q4_THREADS), Q4_THREADS, 0, g_cu.stream>>>(
            *s, done, rest, (T *)out + done);
        CUDA_CHECK_LAUNCH();
    }
}
template void cu_dequant4<float>(void *, const void *);
template void cu_dequant4<bf16>(void *, const void *);

extern "C" void cuda_q4_dequantize_rows(const Q4State *s, int64_t cols, int64_t r0, int64_t r1, float *out,
                                        void *stream)
{
    q4_launch<float>(s, cols, r0, r1, out, stream);
}

extern "C" void cuda_q4_dequantize_rows_bf16(const Q4State *s, int64_t cols, int64_t r0, int64_t r1,
                                             uint16_t *out, void *stream)
{
    q4_launch<bf16>(s, cols, r0, r1, (bf16 *)out, stream);
}
