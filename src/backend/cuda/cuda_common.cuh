/* cuda_common.cuh - what every CUDA source of the backend shares: the one
 * status-check macro, the device context (stream, cuBLASLt handle, memory
 * accounting, scratch), element-type helpers and launch helpers.
 *
 * Element types: every op is a template over the act type T, either float
 * (the fp32 parity mode) or bf16. Arithmetic is always fp32 in registers;
 * T only decides what is read and written. */
#ifndef ANVIL_CUDA_COMMON_CUH
#define ANVIL_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "backend/backend.h"
#include "core/error.h"
}

typedef __nv_bfloat16 bf16;

/* ---------------------------------------------------------------- checks */

/* Print "anvil: file:line: LIB error: message (in `expr`)" and exit(1). */
[[noreturn]] void cuda_fail(const char *lib, const char *msg, const char *expr, const char *file, int line);

static inline void cuda_check_status(cudaError_t e, const char *expr, const char *file, int line)
{
    if (e != cudaSuccess) cuda_fail("CUDA", cudaGetErrorString(e), expr, file, line);
}
static inline void cuda_check_status(cublasStatus_t s, const char *expr, const char *file, int line)
{
    if (s != CUBLAS_STATUS_SUCCESS) cuda_fail("cuBLAS", cublasLtGetStatusString(s), expr, file, line);
}

/* The one check for every CUDA runtime and cuBLAS(Lt) call. */
#define CUDA_CHECK(x) cuda_check_status((x), #x, __FILE__, __LINE__)
/* After each kernel launch: catches bad launch configurations at the call site. */
#define CUDA_CHECK_LAUNCH() cuda_check_status(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

/* ---------------------------------------------------------------- context */

typedef struct {
    int ready;
    int device;
    int sm_count;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *lt_workspace;
    size_t lt_workspace_size;
    /* bytes held through cuda_malloc (buffers, scratch, workspace) and their high-water mark */
    size_t in_use, peak;
    /* 1: only kernels whose results are bit-reproducible (fixed-order reductions, no atomics);
     * 0 (default): also the faster ones that add with atomics (fused attention backward).
     * Set with the other switches by Backend.configure (opts.deterministic, mirrored here). */
    int deterministic;
    BackendOptions opts; /* the switches of backend.h, as last configured */
    int ragged; /* Backend.ragged_products: products whose token count changes from call to call */
    /* grow-only scratch for per-op temporaries (partial sums, attention row terms) */
    void *scratch;
    size_t scratch_size;
} CudaCtx;

extern CudaCtx g_cu;

/* Make the context (once). -1 with err_set() when no usable GPU exists. */
int cuda_ctx_init(void);
/* cudaMalloc with accounting; fatal with a message naming requested/free
 * bytes and what to lower. Not zeroed. */
void *cuda_malloc(size_t bytes);
void cuda_free(void *p);
/* Scratch device memory valid until the next cuda_scratch call (ops on one
 * stream run in order, so consecutive ops may reuse it). */
void *cuda_scratch(size_t bytes);

/* Per-op timing for the step breakdown (ANVIL_CUDA_PROFILE=1): each op
 * records a pair of events under its name. */
void cuda_prof_begin(const char *name);
/* Whether profiling is on, and a lasting copy of a name built at run time. */
int cuda_prof_on(void);
const char *cuda_prof_intern(const char *name);
void cuda_prof_end(void);
struct CudaProfScope {
    CudaProfScope(const char *name) { cuda_prof_begin(name); }
    ~CudaProfScope() { cuda_prof_end(); }
};
#define CUDA_PROF(name) CudaProfScope prof_scope_(name)

/* ------------------------------------------------------------- elements */

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

/* W consecutive elements loaded or stored in one access (16 bytes when W*sizeof(T) == 16). */
template <typename T, int W> struct alignas(sizeof(T) * W) Vec {
    T v[W];
};

template <typename T, int W> __device__ __forceinline__ void load_f(float (&f)[W], const T *p)
{
    Vec<T, W> x = *reinterpret_cast<const Vec<T, W> *>(p);
#pragma unroll
    for (int i = 0; i < W; i++) f[i] = to_f(x.v[i]);
}

template <typename T, int W> __device__ __forceinline__ void store_f(T *p, const float (&f)[W])
{
    Vec<T, W> x;
#pragma unroll
    for (int i = 0; i < W; i++) x.v[i] = from_f<T>(f[i]);
    *reinterpret_cast<Vec<T, W> *>(p) = x;
}

/* Elements per 16-byte access. */
template <typename T> __host__ __device__ constexpr int pack_width() { return 16 / (int)sizeof(T); }

/* Whether every pointer is aligned for W-element accesses and n is a multiple of W. */
static inline bool vec_ok(size_t n, int w, size_t elsize, const void *a, const void *b = nullptr,
                          const void *c = nullptr)
{
    size_t bytes = (size_t)w * elsize;
    return n % (size_t)w == 0 && (uintptr_t)a % bytes == 0 && (uintptr_t)b % bytes == 0 &&
           (uintptr_t)c % bytes == 0;
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Blocks for a grid-stride loop over n items with `threads` per block. */
static inline unsigned grid_for(size_t n, int threads)
{
    size_t b = (n + (size_t)threads - 1) / (size_t)threads;
    size_t cap = (size_t)g_cu.sm_count * 32;
    if (b > cap) b = cap;
    return (unsigned)(b ? b : 1);
}

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

/* ----------------------------------------------- entry points by file */

/* cuda_matmul.cu */
template <typename T> void cu_matmul_fwd(void *out, const void *inp, const void *w, const void *bias, int N, int IC,
                                         int OC);
template <typename T> void cu_matmul_bwd(void *dinp, float *dw, float *dbias, const void *dout, const void *inp,
                                         const void *w, int N, int IC, int OC);
/* Fused GELU products (backend.h matmul_gelu_fwd / matmul_dgelu_bwd). */
template <typename T> void cu_matmul_gelu_fwd(void *out, void *pre, const void *inp, const void *w, const void *bias,
                                              int N, int IC, int OC);
template <typename T>
void cu_matmul_dgelu_bwd(void *dpre, float *dbias_pre, float *dw, float *dbias, const void *dout, const void *act,
                         const void *pre, const void *w, int N, int IC, int OC);
/* The general row-major product of backend.h (gemm). */
void cu_ragged_products(int on);
template <typename T>
void cu_gemm(int ta, int tb, int M, int N, int K, float alpha, const void *A, int lda, const void *B, int ldb,
             float beta, void *C, int ldc, int c_f32);
/* cuda_quant4.cu: a 4-bit tensor (backend.h dequant4). */
template <typename T> void cu_dequant4(void *out, const void *q4state);
/* dst[OC] += sum over N rows of src (N,OC); deterministic (fixed order). */
template <typename T> void cu_colsum_add(float *dst, const T *src, int N, int OC);

/* Fused output layer + loss (backend.h lm_head_xent). */
template <typename T>
void cu_lm_head_xent(float *losses, void *dinp, float *dw, const void *inp, const void *w, const int32_t *targets,
                     int N, int C, int V, float dscale);

/* cuda_ops.cu: softmax cross-entropy over N rows of V logits, rows ld elements apart. */
template <typename T>
void cu_xent_rows(float *losses, T *logits, size_t ld, const int32_t *targets, int N, int V, float dscale);

/* cuda_ops.cu: element-wise op over n elements: 0: out = gelu(a); 1: out = b * gelu'(a) (out may
 * alias a or b); 2: out = a + b. */
template <typename T> void cu_eltwise(void *out, const void *a, const void *b, size_t n, int op);

/* cuda_attention.cu */
template <typename T> void cu_attention_fwd(void *out, float *lse, const void *qkv, int B, int T_, int nh, int nkv,
                                            int hd);
template <typename T> void cu_attention_bwd(void *dqkv, const void *dout, const void *out, const float *lse,
                                            const void *qkv, int B, int T_, int nh, int nkv, int hd);
/* Bidirectional attention over per-sequence key lengths (backend.h attention_len_fwd/bwd). */
template <typename T>
void cu_attention_len_fwd(void *out, float *lse, const void *qkv, const int32_t *lens, int B, int T_, int nh, int nkv,
                          int hd);
template <typename T>
void cu_attention_len_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv,
                          const int32_t *lens, int B, int T_, int nh, int nkv, int hd);
/* Attention with dropout on the probabilities (backend.h attention_drop_fwd/bwd): our flash or simple kernels. */
template <typename T>
void cu_attention_drop_fwd(void *out, float *lse, const void *qkv, const int32_t *lens, int causal, int B, int T_,
                           int nh, int nkv, int hd, float p, uint64_t seed);
template <typename T>
void cu_attention_drop_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv,
                           const int32_t *lens, int causal, int B, int T_, int nh, int nkv, int hd, float p,
                           uint64_t seed);

/* cuda_ops.cu: fills the element-wise, norm, embedding, loss and optimizer entries. */
template <typename T> void cu_fill_ops(Backend *be);
/* cuda_kv.cu: fills the KV-cache entries (kv_store, attention_kv_fwd). */
template <typename T> void cu_fill_kv_ops(Backend *be);
/* cuda_moe.cu: the mixture-of-experts ops. */
template <typename T> void cu_fill_moe_ops(Backend *be);
/* cuda_ternary.cu: fills the ternary entries (quantizers, relu2-GLU, trit unpack, integer update). */
template <typename T> void cu_fill_ternary_ops(Backend *be);

#endif
