/* cuda_matmul.cu - linear layers through cuBLASLt, and the column sum used for
 * bias gradients.
 *
 * Row-major (N,IC) activations are column-major (IC,N) matrices to cuBLAS, so
 *   out (N,OC)  = inp @ W^T   is  out^T (OC,N) = op_T(W) (OC,IC) * inp^T (IC,N)   "TN"
 *   dinp (N,IC) = dout @ W    is  dinp^T (IC,N) = W^T (IC,OC) * dout^T (OC,N)      "NN"
 *   dW (OC,IC) += dout^T @ inp is dW^T (IC,OC) += inp^T (IC,N) * op_T(dout^T)    "NT"
 * bf16 mode: bf16 operands, fp32 accumulation (CUBLAS_COMPUTE_32F); dW is
 * accumulated straight into the fp32 gradient with beta = 1. fp32 mode: plain
 * fp32 (no TF32), for parity with the CPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <map>
#include <tuple>

#include "backend/cuda/cuda_common.cuh"

/* An epilogue of a product (cuBLASLt names): DEFAULT; BIAS (D += bias, bias in D's type); GELU_AUX_BIAS
 * (aux = D + bias, D = gelu(aux)); GELU_AUX (the same without a bias); DGELU (D *= gelu'(aux)). */
typedef struct {
    cublasLtEpilogue_t epi;
    const void *bias; /* BIAS, GELU_AUX_BIAS: the bias */
    void *aux;        /* GELU_AUX*: pre-activation written; DGELU: pre-activation read */
    int aux_ld;       /* leading dimension of aux (elements) */
} Epi;

/* Everything a cuBLASLt plan depends on; the pointers' alignment included,
 * since the fastest kernels need 16-byte aligned operands. */
typedef std::tuple<int, int, int, int, int, int, int, int, int, int, int, int, int, int, int> PlanKey;

#define TUNE_MAX 8
typedef struct {
    int ok; /* 0: cuBLASLt has no algorithm for this (epilogue) combination */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c, d;
    cublasLtMatmulAlgo_t algo;
    /* autotuning (below): calls so far, the heuristic's candidates until they are timed */
    int calls, ncand;
    cublasLtMatmulHeuristicResult_t *cand;
} Plan;

static std::map<PlanKey, Plan> g_plans;

static int ptr_align(const void *p)
{
    uintptr_t v = (uintptr_t)p;
    int a = 256;
    while (a > 1 && v % (uintptr_t)a) a >>= 1;
    return a;
}

static cudaDataType_t cuda_type(size_t elsize) { return elsize == 2 ? CUDA_R_16BF : CUDA_R_32F; }

static bool epi_aux(cublasLtEpilogue_t e)
{
    return e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_DGELU;
}

/* Autotuning (opts.gemm_tune): a plan key's TUNE_AFTER-th call times the first TUNE_MAX algorithms
 * cuBLASLt's heuristics rank on the call's own operands and keeps the fastest (bf16 products of at
 * least TUNE_MIN_FLOP only, not in the deterministic mode; GEMM_TUNE_OFF keeps the heuristic's first,
 * GEMM_TUNE_ALWAYS times every bf16 product at its second call, for tests). Waiting for repeated
 * calls spends the timing on shapes that recur, as every product of a training step does, and not
 * on the one-off shapes of evaluation batches of varying length. Trials write into a temporary D
 * (C stays the caller's D, so accumulating products are not disturbed); epilogue outputs (aux) are
 * rewritten by the real call. */
#define TUNE_AFTER 16
#define TUNE_MIN_FLOP 32e9
#define TUNE_REPS 5
static bool tune_always(void) { return g_cu.opts.gemm_tune == GEMM_TUNE_ALWAYS; }

/* Whether products of this element size may be timed now: bf16, tuning not off, and not in the
 * deterministic mode (a timing-dependent choice would make runs differ). Asked when a plan is made
 * and again when its candidates are due, so that switching the mode later also stops pending trials. */
static bool tune_allowed(size_t ab_size)
{
    return ab_size == 2 && !g_cu.deterministic && g_cu.opts.gemm_tune != GEMM_TUNE_OFF;
}

static int gemm_tune_candidates(size_t ab_size, int m, int n, int k)
{
    if (!tune_allowed(ab_size)) return 1;
    return 2.0 * m * n * k >= TUNE_MIN_FLOP || tune_always() ? TUNE_MAX : 1;
}

/* ANVIL_GEMM_TUNE_VERBOSE set (and not "0"): each tuned product's choice and times (read once). */
static bool tune_verbose(void)
{
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("ANVIL_GEMM_TUNE_VERBOSE");
        v = e && e[0] && strcmp(e, "0");
    }
    return v;
}

static int tune_pick(const Plan &p, const cublasLtMatmulHeuristicResult_t *res, int found, int m, int n, int k,
                     float alpha,
                     const void *A, const void *B, const void *C, int ldd, size_t d_size, float beta, const Epi &e)
{
    size_t bytes = (size_t)ldd * n * d_size;
    void *tmp = cuda_malloc(bytes);
    cudaEvent_t ev[2];
    CUDA_CHECK(cudaEventCreate(&ev[0]));
    CUDA_CHECK(cudaEventCreate(&ev[1]));
    int best = 0;
    float best_ms = 0, first_ms = 0;
    for (int i = 0; i < found; i++) {
        if (res[i].workspaceSize > g_cu.lt_workspace_size) continue;
        /* one warm-up, then TUNE_REPS back to back between two events: GPU time with the queue fed,
         * not the host's launch latency */
        bool ok = true;
        for (int r = 0; r <= TUNE_REPS && ok; r++) {
            if (r == 1) CUDA_CHECK(cudaEventRecord(ev[0], g_cu.stream));
            ok = cublasLtMatmul(g_cu.lt, p.desc, &alpha, A, p.a, B, p.b, &beta, C, p.c, tmp, p.d, &res[i].algo,
                                g_cu.lt_workspace, g_cu.lt_workspace_size, g_cu.stream) == CUBLAS_STATUS_SUCCESS;
        }
        CUDA_CHECK(cudaEventRecord(ev[1], g_cu.stream));
        CUDA_CHECK(cudaEventSynchronize(ev[1]));
        float ms = 0;
        if (ok) CUDA_CHECK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
        if (!i) first_ms = ok ? ms : 1e30f;
        /* another algorithm only when it is at least 1% faster than the heuristic's first */
        if (ok && (best_ms == 0 || ms < best_ms) && (!i || ms < 0.99f * first_ms)) best = i, best_ms = ms;
    }
    CUDA_CHECK(cudaEventDestroy(ev[0]));
    CUDA_CHECK(cudaEventDestroy(ev[1]));
    cuda_free(tmp);
    if (tune_verbose())
        fprintf(stderr, "anvil: gemm %dx%dx%d epi %d: algorithm %d of %d (%.3f ms; the first %.3f ms)\n", m, n, k,
                (int)e.epi, best, found, best_ms / TUNE_REPS, first_ms / TUNE_REPS);
    return best;
}

static PlanKey plan_key(int transa, int transb, int m, int n, int k, int lda, int ldb, int ldd, size_t ab_size,
                        size_t d_size, const Epi &e, int al_ops, int al_extra, float beta)
{
    return PlanKey(transa, transb, m, n, k, lda, ldb, ldd, (int)ab_size, (int)d_size, (int)e.epi, al_ops, al_extra,
                   beta != 0.0f, e.aux_ld);
}

/* A plan's descriptors for one shape: the operation (transposes, epilogue and its pointers) and the four
 * layouts (op(A) is (m,k), so A is stored (m,k) or (k,m)). */
static void plan_describe(Plan &p, int transa, int transb, int m, int n, int k, int lda, int ldb, int ldd,
                          size_t ab_size, size_t d_size, const Epi &e)
{
    cudaDataType_t tab = cuda_type(ab_size), td = cuda_type(d_size);
    CUDA_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &e.epi, sizeof(e.epi)));
    if (e.bias)
        CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &e.bias, sizeof(e.bias)));
    if (epi_aux(e.epi)) {
        int64_t ld = e.aux_ld;
        CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &e.aux,
                                                  sizeof(e.aux)));
        CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
    }
    CUDA_CHECK(cublasLtMatrixLayoutCreate(&p.a, tab, transa ? k : m, transa ? m : k, lda));
    CUDA_CHECK(cublasLtMatrixLayoutCreate(&p.b, tab, transb ? n : k, transb ? k : n, ldb));
    CUDA_CHECK(cublasLtMatrixLayoutCreate(&p.c, td, m, n, ldd));
    CUDA_CHECK(cublasLtMatrixLayoutCreate(&p.d, td, m, n, ldd));
}

static void plan_undescribe(Plan &p)
{
    cublasLtMatrixLayoutDestroy(p.a), cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c), cublasLtMatrixLayoutDestroy(p.d);
    cublasLtMatmulDescDestroy(p.desc);
}

/* cuBLASLt's ranked algorithms (up to want) for a described plan, within our workspace and for operands
 * aligned to al bytes (one alignment for all of them, the smallest, so that a cached plan fits every
 * call with its key). */
static cublasStatus_t plan_heuristic(const Plan &p, int al_ops, int want, cublasLtMatmulHeuristicResult_t *res,
                                     int *found)
{
    cublasLtMatmulPreference_t pref;
    CUDA_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = g_cu.lt_workspace_size;
    CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    uint32_t al = (uint32_t)al_ops;
    const cublasLtMatmulPreferenceAttributes_t al_attrs[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++) CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, al_attrs[i], &al, sizeof(al)));
    *found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g_cu.lt, p.desc, p.a, p.b, p.c, p.d, pref, want, res, found);
    CUDA_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    return st;
}

/* Ragged products (Backend.ragged_products, g_cu.ragged): a mixture-of-experts layer's expert products,
 * whose token count (n or k here; m is always a weight dimension) differs at nearly every call. A plan
 * per exact shape would ask cuBLASLt's heuristics again at almost every product (host time the GPU
 * waits through) and keep a plan for every count ever seen. Instead the algorithm is chosen once per
 * band: the shape with n and k rounded up to a multiple of RAGGED_BAND (the same key otherwise), so that
 * it depends on the band only, never on which counts came first (a resumed run makes the same
 * choices). Each call describes its exact shape for the moment of the call; should cuBLASLt refuse the
 * band's algorithm for it, the call asks the heuristic for its own shape. */
#define RAGGED_BAND 128
static std::map<PlanKey, std::pair<int, cublasLtMatmulAlgo_t>> g_bands;

static int band_up(int x) { return (x + RAGGED_BAND - 1) / RAGGED_BAND * RAGGED_BAND; }

static bool lt_matmul_ragged(int transa, int transb, int m, int n, int k, const void *A, int lda, const void *B,
                             int ldb, void *D, int ldd, size_t ab_size, size_t d_size, float alpha, float beta,
                             const Epi &e, int al_ops, int al_extra)
{
    int nb = band_up(n), kb = band_up(k);
    /* a band's layouts must still fit their leading dimensions: otherwise the exact shape is the band */
    if ((transa && kb > lda) || (!transb && kb > ldb) || (transb && nb > ldb)) nb = n, kb = k;
    PlanKey key = plan_key(transa, transb, m, nb, kb, lda, ldb, ldd, ab_size, d_size, e, al_ops, al_extra, beta);
    auto it = g_bands.find(key);
    if (it == g_bands.end()) {
        Plan bp;
        memset(&bp, 0, sizeof(bp));
        plan_describe(bp, transa, transb, m, nb, kb, lda, ldb, ldd, ab_size, d_size, e);
        cublasLtMatmulHeuristicResult_t res[1];
        int found = 0;
        cublasStatus_t st = plan_heuristic(bp, al_ops, 1, res, &found);
        plan_undescribe(bp);
        std::pair<int, cublasLtMatmulAlgo_t> v(st == CUBLAS_STATUS_SUCCESS && found, cublasLtMatmulAlgo_t());
        if (v.first) v.second = res[0].algo;
        it = g_bands.emplace(key, v).first;
    }
    Plan p;
    memset(&p, 0, sizeof(p));
    plan_describe(p, transa, transb, m, n, k, lda, ldb, ldd, ab_size, d_size, e);
    cublasStatus_t st = CUBLAS_STATUS_NOT_SUPPORTED;
    if (it->second.first)
        st = cublasLtMatmul(g_cu.lt, p.desc, &alpha, A, p.a, B, p.b, &beta, D, p.c, D, p.d, &it->second.second,
                            g_cu.lt_workspace, g_cu.lt_workspace_size, g_cu.stream);
    if (st != CUBLAS_STATUS_SUCCESS) { /* the band's algorithm does not take this shape: its own */
        cublasLtMatmulHeuristicResult_t res[1];
        int found = 0;
        st = plan_heuristic(p, al_ops, 1, res, &found);
        bool plain = e.epi == CUBLASLT_EPILOGUE_DEFAULT || e.epi == CUBLASLT_EPILOGUE_BIAS;
        if (st != CUBLAS_STATUS_SUCCESS || !found) {
            plan_undescribe(p);
            if (plain)
                fatal("cuBLASLt has no algorithm for a %dx%dx%d matmul (trans %d%d, ld %d/%d/%d, alignment %d bytes)", m,
                      n, k, transa, transb, lda, ldb, ldd, al_ops);
            return false;
        }
        CUDA_CHECK(cublasLtMatmul(g_cu.lt, p.desc, &alpha, A, p.a, B, p.b, &beta, D, p.c, D, p.d, &res[0].algo,
                                  g_cu.lt_workspace, g_cu.lt_workspace_size, g_cu.stream));
    }
    plan_undescribe(p); /* the launch has taken what it needs from the descriptors */
    return true;
}

/* D (m,n) = op(A) (m,k) * op(B) (k,n) [+ beta*D], then the epilogue, column-major.
 * a_size/d_size: element bytes of A,B and of D (2 = bf16, 4 = fp32). Returns false, doing
 * nothing, when cuBLASLt offers no algorithm for an epilogue other than DEFAULT/BIAS (the
 * caller then does the work itself); fatal for those two. */
static bool lt_matmul_ab(int transa, int transb, int m, int n, int k, const void *A, int lda, const void *B, int ldb,
                         void *D, int ldd, size_t ab_size, size_t d_size, float alpha, float beta, const Epi &e)
{
    int al_ops = std::min(std::min(ptr_align(A), ptr_align(B)), ptr_align(D));
    int al_extra = (e.bias ? ptr_align(e.bias) : 0) * 1000 + (e.aux ? ptr_align(e.aux) : 0);
    if (g_cu.ragged)
        return lt_matmul_ragged(transa, transb, m, n, k, A, lda, B, ldb, D, ldd, ab_size, d_size, alpha, beta, e,
                                al_ops, al_extra);
    PlanKey key = plan_key(transa, transb, m, n, k, lda, ldb, ldd, ab_size, d_size, e, al_ops, al_extra, beta);
    auto it = g_plans.find(key);
    if (it == g_plans.end()) {
        Plan p;
        memset(&p, 0, sizeof(p));
        plan_describe(p, transa, transb, m, n, k, lda, ldb, ldd, ab_size, d_size, e);
        cublasLtMatmulHeuristicResult_t res[TUNE_MAX];
        int found = 0, want = gemm_tune_candidates(ab_size, m, n, k);
        cublasStatus_t st = plan_heuristic(p, al_ops, want, res, &found);
        bool plain = e.epi == CUBLASLT_EPILOGUE_DEFAULT || e.epi == CUBLASLT_EPILOGUE_BIAS;
        if (st != CUBLAS_STATUS_SUCCESS || !found) {
            if (plain)
                fatal("cuBLASLt has no algorithm for a %dx%dx%d matmul (trans %d%d, ld %d/%d/%d, alignment %d bytes, "
                      "%s operands, %s output): %s", m, n, k, transa, transb, lda, ldb, ldd, al_ops,
                      ab_size == 2 ? "bf16" : "fp32", d_size == 2 ? "bf16" : "fp32",
                      st == CUBLAS_STATUS_SUCCESS ? "no algorithm found" : cublasLtGetStatusString(st));
            p.ok = 0; /* remembered: the caller falls back to its own kernels */
            fprintf(stderr, "anvil: cuBLASLt has no algorithm for epilogue %d on a %dx%dx%d %s product; using "
                            "separate kernels\n", (int)e.epi, m, n, k, ab_size == 2 ? "bf16" : "fp32");
            plan_undescribe(p);
        } else {
            p.ok = 1;
            p.algo = res[0].algo;
            if (found > 1) { /* kept until the TUNE_AFTER-th call times them */
                p.cand = (cublasLtMatmulHeuristicResult_t *)xmalloc(found * sizeof(*p.cand));
                memcpy(p.cand, res, found * sizeof(*p.cand));
                p.ncand = found;
            }
        }
        it = g_plans.emplace(key, p).first;
    }
    Plan &p = it->second;
    if (!p.ok) return false;
    if (e.bias)
        CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &e.bias, sizeof(e.bias)));
    if (epi_aux(e.epi))
        CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &e.aux,
                                                  sizeof(e.aux)));
    /* after the pointers above: the trials' epilogues must read and write this call's buffers */
    if (p.cand && tune_allowed(ab_size) && ++p.calls >= (tune_always() ? 2 : TUNE_AFTER)) {
        p.algo = p.cand[tune_pick(p, p.cand, p.ncand, m, n, k, alpha, A, B, D, ldd, d_size, beta, e)].algo;
        free(p.cand);
        p.cand = NULL;
    }
    CUDA_CHECK(cublasLtMatmul(g_cu.lt, p.desc, &alpha, A, p.a, B, p.b, &beta, D, p.c, D, p.d, &p.algo,
                              g_cu.lt_workspace, g_cu.lt_workspace_size, g_cu.stream));
    return true;
}

/* lt_matmul_ab with alpha 1 (every product of the model but the adapters'). */
static bool lt_matmul_epi(int transa, int transb, int m, int n, int k, const void *A, int lda, const void *B, int ldb,
                          void *D, int ldd, size_t ab_size, size_t d_size, float beta, const Epi &e)
{
    return lt_matmul_ab(transa, transb, m, n, k, A, lda, B, ldb, D, ldd, ab_size, d_size, 1.0f, beta, e);
}

/* The plain product, with the BIAS epilogue when bias is not NULL. */
static void lt_matmul(int transa, int transb, int m, int n, int k, const void *A, int lda, const void *B, int ldb,
                      void *D, int ldd, size_t ab_size, size_t d_size, float beta, const void *bias)
{
    Epi e = {bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT, bias, NULL, 0};
    lt_matmul_epi(transa, transb, m, n, k, A, lda, B, ldb, D, ldd, ab_size, d_size, beta, e);
}

// out (N,OC) = inp (N,IC) @ w (OC,IC)^T + bias
/* "op N x IC -> OC" when profiling, so that the breakdown shows each layer's products */
static const char *shape_name(const char *op, int N, int IC, int OC)
{
    if (!cuda_prof_on()) return op;
    char buf[96];
    snprintf(buf, sizeof(buf), "%s %dx%d->%d", op, N, IC, OC);
    return cuda_prof_intern(buf);
}

/* cuBLASLt wants the rows of D 16-byte aligned; an output width such as GPT-2's vocabulary
 * (50257) is computed into a scratch of rows padded to LT_ROW_ALIGN bytes, then copied. */
#define LT_ROW_ALIGN 16

template <typename T>
void cu_matmul_fwd(void *out, const void *inp, const void *w, const void *bias, int N, int IC, int OC)
{
    CUDA_PROF(shape_name("matmul_fwd", N, IC, OC));
    size_t row = (size_t)OC * sizeof(T);
    if (row % LT_ROW_ALIGN == 0) {
        lt_matmul(1, 0, OC, N, IC, w, IC, inp, IC, out, OC, sizeof(T), sizeof(T), 0.0f, bias);
        return;
    }
    int OCp = (int)(((row + LT_ROW_ALIGN - 1) / LT_ROW_ALIGN) * LT_ROW_ALIGN / sizeof(T));
    void *tmp = cuda_scratch((size_t)N * OCp * sizeof(T));
    lt_matmul(1, 0, OC, N, IC, w, IC, inp, IC, tmp, OCp, sizeof(T), sizeof(T), 0.0f, bias);
    CUDA_CHECK(cudaMemcpy2DAsync(out, row, tmp, (size_t)OCp * sizeof(T), row, N, cudaMemcpyDeviceToDevice,
                                 g_cu.stream));
}

// dst[i] += src[i]
__global__ void add_f32_kernel(float *dst, const float *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] += src[i];
}

static void add_f32(float *dst, const float *src, size_t n)
{
    add_f32_kernel<<<grid_for(n, 256), 256, 0, g_cu.stream>>>(dst, src, n);
    CUDA_CHECK_LAUNCH();
}

/* dw (OC,IC) += dout^T @ inp, and dbias (OC) += colsum(dout) when dbias is not NULL (our column sum:
 * cuBLASLt's bias-gradient epilogues measured slower, docs/cuda.md "Kernels removed"). */
template <typename T>
static void weight_grad(float *dw, float *dbias, const void *dout, const void *inp, int N, int IC, int OC)
{
    lt_matmul(0, 1, IC, OC, N, inp, IC, dout, OC, dw, IC, sizeof(T), sizeof(float), 1.0f, NULL);
    if (dbias) cu_colsum_add<T>(dbias, (const T *)dout, N, OC);
}

// dinp (N,IC) = dout @ w;  dw (OC,IC) += dout^T @ inp;  dbias (OC) += colsum(dout)
template <typename T>
void cu_matmul_bwd(void *dinp, float *dw, float *dbias, const void *dout, const void *inp, const void *w, int N,
                   int IC, int OC)
{
    CUDA_PROF(shape_name("matmul_bwd", N, IC, OC));
    size_t row = (size_t)OC * sizeof(T);
    if (row % LT_ROW_ALIGN) { /* rows of dout not 16-byte aligned: use a padded copy (see matmul_fwd) */
        int ldo = (int)(((row + LT_ROW_ALIGN - 1) / LT_ROW_ALIGN) * LT_ROW_ALIGN / sizeof(T));
        void *dpad = cuda_scratch((size_t)N * ldo * sizeof(T));
        CUDA_CHECK(cudaMemcpy2DAsync(dpad, (size_t)ldo * sizeof(T), dout, row, row, N, cudaMemcpyDeviceToDevice,
                                     g_cu.stream));
        if (dinp) lt_matmul(0, 0, IC, N, OC, w, IC, dpad, ldo, dinp, IC, sizeof(T), sizeof(T), 0.0f, NULL);
        if (dw) lt_matmul(0, 1, IC, OC, N, inp, IC, dpad, ldo, dw, IC, sizeof(T), sizeof(float), 1.0f, NULL);
        if (dbias) cu_colsum_add<T>(dbias, (const T *)dout, N, OC);
        return;
    }
    if (dinp) lt_matmul(0, 0, IC, N, OC, w, IC, dout, OC, dinp, IC, sizeof(T), sizeof(T), 0.0f, NULL);
    if (dw) weight_grad<T>(dw, dbias, dout, inp, N, IC, OC);
    else if (dbias) cu_colsum_add<T>(dbias, (const T *)dout, N, OC);
}

// pre (N,OC) = inp @ w^T + bias;  out = gelu(pre)   (backend.h matmul_gelu_fwd)
template <typename T>
void cu_matmul_gelu_fwd(void *out, void *pre, const void *inp, const void *w, const void *bias, int N, int IC, int OC)
{
    CUDA_PROF(shape_name("matmul_gelu_fwd", N, IC, OC));
    Epi e = {bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX, bias, pre, OC};
    if (lt_matmul_epi(1, 0, OC, N, IC, w, IC, inp, IC, out, OC, sizeof(T), sizeof(T), 0.0f, e)) return;
    /* no epilogue algorithm for this shape: the plain product, then the GELU kernel */
    lt_matmul(1, 0, OC, N, IC, w, IC, inp, IC, pre, OC, sizeof(T), sizeof(T), 0.0f, bias);
    cu_eltwise<T>(out, pre, NULL, (size_t)N * OC, 0);
}

// dpre (N,IC) = (dout @ w) * gelu'(pre);  dbias_pre (IC) += colsum(dpre);  dw (OC,IC) += dout^T @ act;
// dbias (OC) += colsum(dout)   (backend.h matmul_dgelu_bwd)
template <typename T>
void cu_matmul_dgelu_bwd(void *dpre, float *dbias_pre, float *dw, float *dbias, const void *dout, const void *act,
                         const void *pre, const void *w, int N, int IC, int OC)
{
    CUDA_PROF(shape_name("matmul_dgelu_bwd", N, IC, OC));
    Epi e = {CUBLASLT_EPILOGUE_DGELU, NULL, (void *)pre, IC};
    if (!lt_matmul_epi(0, 0, IC, N, OC, w, IC, dout, OC, dpre, IC, sizeof(T), sizeof(T), 0.0f, e)) {
        /* no epilogue algorithm for this shape: the plain product, then gelu' in place */
        lt_matmul(0, 0, IC, N, OC, w, IC, dout, OC, dpre, IC, sizeof(T), sizeof(T), 0.0f, NULL);
        cu_eltwise<T>(dpre, pre, dpre, (size_t)N * IC, 1);
    }
    if (dbias_pre) cu_colsum_add<T>(dbias_pre, (const T *)dpre, N, IC);
    if (dw) weight_grad<T>(dw, dbias, dout, act, N, IC, OC);
    else if (dbias) cu_colsum_add<T>(dbias, (const T *)dout, N, OC);
}

/* ------------------------------------------------------- LM head + loss */

/* The vocabulary is padded to a multiple of this many entries inside the op: cuBLASLt runs the
 * output layer's three products several times slower when a dimension is odd (GPT-2: 50257), and
 * 64 keeps every logit row 128-byte aligned. The padded weight rows are zero, so the padded
 * logits are exactly 0 and add nothing to dinp. */
#define VOCAB_PAD 64
/* Bytes of logits per chunk: large enough for efficient products, small beside the activations. */
#define LM_HEAD_CHUNK_BYTES ((size_t)1 << 30)
/* Chunk rows are a multiple of this (the products' tile size). */
#define LM_HEAD_ROW_ALIGN 128

/* grow-only device buffers of the op: logits chunk, padded weight copy, padded weight gradient */
static struct {
    void *logits, *wpad;
    float *dwpad;
    size_t logits_size, wpad_size, dwpad_size;
} g_head;

static void *grow(void *p, size_t *have, size_t need)
{
    if (need <= *have) return p;
    cuda_free(p); /* waits for the device: no queued op still uses it */
    *have = need;
    return cuda_malloc(need);
}

// per chunk of rows: logits = inp @ wp^T (Vp columns); xent in place over the first V (losses,
// dlogits); dinp = dlogits @ wp;  dwp += dlogits^T @ inp;  at the end dw += dwp[:V]
template <typename T>
void cu_lm_head_xent(float *losses, void *dinp, float *dw, const void *inp, const void *w, const int32_t *targets,
                     int N, int C, int V, float dscale)
{
    int Vp = CEIL_DIV(V, VOCAB_PAD) * VOCAB_PAD;
    size_t chunk_rows = LM_HEAD_CHUNK_BYTES / ((size_t)Vp * sizeof(T));
    int forced = g_cu.opts.lm_head_chunk_rows; /* tests: force several chunks */
    if (forced > 0) chunk_rows = (size_t)forced;
    int rows_max = (int)std::min((size_t)N, std::max((size_t)1, chunk_rows));
    int nchunk = CEIL_DIV(N, rows_max);
    rows_max = CEIL_DIV(N, nchunk); /* about equal chunks, */
    if (forced <= 0) rows_max = std::min(N, CEIL_DIV(rows_max, LM_HEAD_ROW_ALIGN) * LM_HEAD_ROW_ALIGN); /* tile-sized */
    T *logits = (T *)(g_head.logits = grow(g_head.logits, &g_head.logits_size, (size_t)rows_max * Vp * sizeof(T)));
    const T *wp = (const T *)w;
    float *dwp = dw;
    bool pad = Vp != V, train = dscale != 0;
    if (pad) { /* zero-padded copies of the weight and its gradient */
        CUDA_PROF("lm_head pad");
        size_t wbytes = (size_t)V * C * sizeof(T), pbytes = (size_t)Vp * C * sizeof(T);
        g_head.wpad = grow(g_head.wpad, &g_head.wpad_size, pbytes);
        CUDA_CHECK(cudaMemcpyAsync(g_head.wpad, w, wbytes, cudaMemcpyDeviceToDevice, g_cu.stream));
        CUDA_CHECK(cudaMemsetAsync((char *)g_head.wpad + wbytes, 0, pbytes - wbytes, g_cu.stream));
        wp = (const T *)g_head.wpad;
        if (train && dw) {
            size_t gbytes = (size_t)Vp * C * sizeof(float);
            dwp = g_head.dwpad = (float *)grow(g_head.dwpad, &g_head.dwpad_size, gbytes);
            CUDA_CHECK(cudaMemsetAsync(dwp, 0, gbytes, g_cu.stream));
        }
    }
    const T *x = (const T *)inp;
    for (int r0 = 0; r0 < N; r0 += rows_max) {
        int rows = std::min(rows_max, N - r0);
        const T *xr = x + (size_t)r0 * C;
        {
            CUDA_PROF("lm_head fwd");
            lt_matmul(1, 0, Vp, rows, C, wp, C, xr, C, logits, Vp, sizeof(T), sizeof(T), 0.0f, NULL);
        }
        {
            CUDA_PROF("lm_head xent");
            cu_xent_rows<T>(losses + r0, logits, (size_t)Vp, targets + r0, rows, V, dscale);
        }
        if (!train) continue;
        if (dinp) {
            CUDA_PROF("lm_head dinp");
            lt_matmul(0, 0, C, rows, Vp, wp, C, logits, Vp, (T *)dinp + (size_t)r0 * C, C, sizeof(T), sizeof(T),
                      0.0f, NULL);
        }
        if (dw) {
            CUDA_PROF("lm_head dw");
            lt_matmul(0, 1, C, Vp, rows, xr, C, logits, Vp, dwp, C, sizeof(T), sizeof(float), 1.0f, NULL);
        }
    }
    if (pad && train && dw) {
        CUDA_PROF("lm_head pad");
        size_t n = (size_t)V * C; /* the first V rows of the padded gradient */
        add_f32(dw, dwp, n);
    }
}

template void cu_lm_head_xent<float>(float *, void *, float *, const void *, const void *, const int32_t *, int, int,
                                     int, float);
template void cu_lm_head_xent<bf16>(float *, void *, float *, const void *, const void *, const int32_t *, int, int,
                                    int, float);

/* ------------------------------------------------------------ column sums */

/* Threads of a block: 32 across columns (W columns each) x COLSUM_ROWS down rows. */
#define COLSUM_ROWS 8

// partial[chunk][c] = sum over rows of this chunk of src[r][c]
template <typename T, int W>
__global__ void colsum_partial_kernel(float *partial, const T *src, int N, int OC, int rows_per_chunk)
{
    __shared__ float sm[COLSUM_ROWS][32 * W];
    int c0 = (blockIdx.x * 32 + threadIdx.x) * W;
    int r0 = blockIdx.y * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
    float acc[W];
#pragma unroll
    for (int i = 0; i < W; i++) acc[i] = 0;
    if (c0 < OC) {
        for (int r = r0 + threadIdx.y; r < r1; r += COLSUM_ROWS) {
            float f[W];
            load_f<T, W>(f, src + (size_t)r * OC + c0);
#pragma unroll
            for (int i = 0; i < W; i++) acc[i] += f[i];
        }
    }
#pragma unroll
    for (int i = 0; i < W; i++) sm[threadIdx.y][threadIdx.x * W + i] = acc[i];
    __syncthreads();
    if (threadIdx.y == 0 && c0 < OC) {
#pragma unroll
        for (int i = 0; i < W; i++) {
            float s = 0;
            for (int y = 0; y < COLSUM_ROWS; y++) s += sm[y][threadIdx.x * W + i];
            partial[(size_t)blockIdx.y * OC + c0 + i] = s;
        }
    }
}

// dst[c] += sum over chunks of partial[chunk][c], chunks in order
__global__ void colsum_finish_kernel(float *dst, const float *partial, int nchunk, int OC)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= OC) return;
    float s = 0;
    for (int k = 0; k < nchunk; k++) s += partial[(size_t)k * OC + c];
    dst[c] += s;
}

template <typename T> void cu_colsum_add(float *dst, const T *src, int N, int OC)
{
    const int W = pack_width<T>();
    bool vec = vec_ok((size_t)OC, W, sizeof(T), src);
    int w = vec ? W : 1;
    int colblocks = CEIL_DIV(OC, 32 * w);
    /* enough chunks to fill the GPU a few times over, each at least 64 rows */
    int nchunk = CEIL_DIV(4 * g_cu.sm_count, colblocks);
    nchunk = std::max(1, std::min(nchunk, CEIL_DIV(N, 64)));
    int rows_per_chunk = CEIL_DIV(N, nchunk);
    nchunk = CEIL_DIV(N, rows_per_chunk);
    float *partial = (float *)cuda_scratch((size_t)nchunk * OC * sizeof(float));
    dim3 grid(colblocks, nchunk), block(32, COLSUM_ROWS);
    if (vec)
        colsum_partial_kernel<T, W><<<grid, block, 0, g_cu.stream>>>(partial, src, N, OC, rows_per_chunk);
    else
        colsum_partial_kernel<T, 1><<<grid, block, 0, g_cu.stream>>>(partial, src, N, OC, rows_per_chunk);
    CUDA_CHECK_LAUNCH();
    colsum_finish_kernel<<<CEIL_DIV(OC, 256), 256, 0, g_cu.stream>>>(dst, partial, nchunk, OC);
    CUDA_CHECK_LAUNCH();
}

// C (M,N) = alpha op(A) op(B) + beta C, row-major (backend.h gemm): the column-major product
// C^T = op(B)^T op(A)^T, i.e. B first. Each row of C is a column of C^T: computed alone by cuBLASLt.
template <typename T>
void cu_gemm(int ta, int tb, int M, int N, int K, float alpha, const void *A, int lda, const void *B, int ldb,
             float beta, void *C, int ldc, int c_f32)
{
    CUDA_PROF(shape_name("gemm", M, K, N));
    Epi e = {CUBLASLT_EPILOGUE_DEFAULT, NULL, NULL, 0};
    lt_matmul_ab(tb, ta, N, M, K, B, ldb, A, lda, C, ldc, sizeof(T), c_f32 ? sizeof(float) : sizeof(T), alpha, beta,
                 e);
}

void cu_ragged_products(int on) { g_cu.ragged = on; }

template void cu_gemm<float>(int, int, int, int, int, float, const void *, int, const void *, int, float, void *, int,
                             int);
template void cu_gemm<bf16>(int, int, int, int, int, float, const void *, int, const void *, int, float, void *, int,
                            int);
template void cu_matmul_fwd<float>(void *, const void *, const void *, const void *, int, int, int);
template void cu_matmul_fwd<bf16>(void *, const void *, const void *, const void *, int, int, int);
template void cu_matmul_bwd<float>(void *, float *, float *, const void *, const void *, const void *, int, int, int);
template void cu_matmul_bwd<bf16>(void *, float *, float *, const void *, const void *, const void *, int, int, int);
template void cu_matmul_gelu_fwd<float>(void *, void *, const void *, const void *, const void *, int, int, int);
template void cu_matmul_gelu_fwd<bf16>(void *, void *, const void *, const void *, const void *, int, int, int);
template void cu_matmul_dgelu_bwd<float>(void *, float *, float *, float *, const void *, const void *, const void *,
                                         const void *, int, int, int);
template void cu_matmul_dgelu_bwd<bf16>(void *, float *, float *, float *, const void *, const void *, const void *,
                                        const void *, int, int, int);
template void cu_colsum_add<float>(float *, const float *, int, int);
template void cu_colsum_add<bf16>(float *, const bf16 *, int, int);
