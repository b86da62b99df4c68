/* grouped_gemm_probe.cu - times the three expert products of one mixture-of-experts layer two ways on
 * the GPU: a loop of one cuBLASLt product per expert (what src/model/moe.c ran before the grouped
 * products) and one cublasGemmGroupedBatchedEx call over all experts, on the same bf16 operands, and
 * checks that the two agree. Shapes default to moe-1b's (E 8, top-2, d 1024, expert d_ff 2816, B*T 16384).
 *   nvcc -O2 -arch=sm_90a tools/grouped_gemm_probe.cu -lcublas -lcublasLt -o build/grouped_gemm_probe
 *   build/grouped_gemm_probe [tokens] [experts] [top_k] [d_model] [d_ff] [skew]
 * skew > 0 gives expert e a share proportional to (1 + skew)^-e (a collapsing router). */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)
#define CB(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "%s: status %d\n", #x, (int)s_); exit(1); } } while (0)

static cublasLtHandle_t g_lt;
static void *g_ws;
static const size_t WS = 64u << 20;

/* column-major D (m,n) = op(A) op(B) + beta D, bf16 operands, D bf16 or fp32 */
static void lt(int ta, int tb, int m, int n, int k, const void *A, int lda, const void *B, int ldb, float beta, void *D,
               int ldd, cudaDataType_t td, cudaStream_t s)
{
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
    CB(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CB(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &oa, sizeof(oa)));
    CB(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &ob, sizeof(ob)));
    CB(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, ta ? k : m, ta ? m : k, lda));
    CB(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, tb ? n : k, tb ? k : n, ldb));
    CB(cublasLtMatrixLayoutCreate(&ld, td, m, n, ldd));
    cublasLtMatmulPreference_t pref;
    CB(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = WS;
    CB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t r;
    int found = 0;
    CB(cublasLtMatmulAlgoGetHeuristic(g_lt, desc, la, lb, ld, ld, pref, 1, &r, &found));
    float one = 1.0f;
    CB(cublasLtMatmul(g_lt, desc, &one, A, la, B, lb, &beta, D, ld, D, ld, &r.algo, g_ws, WS, s));
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(desc);
}

__global__ void fill(__nv_bfloat16 *x, size_t n, unsigned seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
        x[i] = __float2bfloat16(((float)(h & 0xffff) / 65536.0f - 0.5f) * 0.1f);
    }
}

template <typename T> static double maxdiff(const T *a, const T *b, size_t n)
{
    std::vector<T> x(n), y(n);
    CK(cudaMemcpy(x.data(), a, n * sizeof(T), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(y.data(), b, n * sizeof(T), cudaMemcpyDeviceToHost));
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)(float)x[i] - (double)(float)y[i]);
        if (d > m) m = d;
    }
    return m;
}

int main(int argc, char **argv)
{
    int N = argc > 1 ? atoi(argv[1]) : 16384, E = argc > 2 ? atoi(argv[2]) : 8, k = argc > 3 ? atoi(argv[3]) : 2;
    int C = argc > 4 ? atoi(argv[4]) : 1024, F = argc > 5 ? atoi(argv[5]) : 2816;
    double skew = argc > 6 ? atof(argv[6]) : 0.0;
    int R = N * k, F2 = 2 * F;
    std::vector<int> cnt(E);
    double wsum = 0;
    for (int e = 0; e < E; e++) wsum += pow(1.0 + skew, -e);
    int left = R;
    for (int e = 0; e < E; e++) {
        cnt[e] = e == E - 1 ? left : (int)(R * pow(1.0 + skew, -e) / wsum);
        left -= cnt[e];
    }
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    CB(cublasLtCreate(&g_lt));
    cublasHandle_t h;
    CB(cublasCreate(&h));
    CB(cublasSetStream(h, s));
    CK(cudaMalloc(&g_ws, WS));
    CB(cublasSetWorkspace(h, g_ws, WS));
    __nv_bfloat16 *x, *w1, *w2, *hid, *act, *y, *dy, *dact, *dh, *dx, *hid2, *dx2;
    float *g1, *g1b;
    size_t nW1 = (size_t)E * F2 * C, nW2 = (size_t)E * C * F;
    CK(cudaMalloc(&x, (size_t)R * C * 2)); CK(cudaMalloc(&w1, nW1 * 2)); CK(cudaMalloc(&w2, nW2 * 2));
    CK(cudaMalloc(&hid, (size_t)R * F2 * 2)); CK(cudaMalloc(&hid2, (size_t)R * F2 * 2));
    CK(cudaMalloc(&act, (size_t)R * F * 2)); CK(cudaMalloc(&y, (size_t)R * C * 2));
    CK(cudaMalloc(&dy, (size_t)R * C * 2)); CK(cudaMalloc(&dact, (size_t)R * F * 2));
    CK(cudaMalloc(&dh, (size_t)R * F2 * 2)); CK(cudaMalloc(&dx, (size_t)R * C * 2)); CK(cudaMalloc(&dx2, (size_t)R * C * 2));
    CK(cudaMalloc(&g1, nW1 * 4)); CK(cudaMalloc(&g1b, nW1 * 4));
    fill<<<1024, 256, 0, s>>>(x, (size_t)R * C, 1); fill<<<1024, 256, 0, s>>>(w1, nW1, 2);
    fill<<<1024, 256, 0, s>>>(w2, nW2, 3); fill<<<1024, 256, 0, s>>>(act, (size_t)R * F, 4);
    fill<<<1024, 256, 0, s>>>(dy, (size_t)R * C, 5); fill<<<1024, 256, 0, s>>>(dh, (size_t)R * F2, 6);
    CK(cudaMemsetAsync(g1, 0, nW1 * 4, s)); CK(cudaMemsetAsync(g1b, 0, nW1 * 4, s));
    std::vector<size_t> off(E + 1, 0);
    for (int e = 0; e < E; e++) off[e + 1] = off[e] + cnt[e];

    /* the three products of the first expert layer (fc: x -> [gate|up]) as moe.c forms them:
     * fwd   h_e (n, 2F) = x_e (n, C) @ W1_e^T         column-major: (2F, n) = T(W1_e) (2F, C) * x_e (C, n)
     * dinp  dx_e (n, C) = dh_e (n, 2F) @ W1_e         column-major: (C, n) = W1_e (C, 2F) * dh_e (2F, n)
     * dW    G1_e (2F, C) += dh_e^T @ x_e              column-major: (C, 2F) = x_e (C, n) * T(dh_e) (n, 2F) */
    auto loop = [&](int which) {
        for (int e = 0; e < E; e++) {
            int n = cnt[e];
            if (!n) continue;
            const __nv_bfloat16 *xe = x + off[e] * C, *dhe = dh + off[e] * F2, *W = w1 + (size_t)e * F2 * C;
            if (which == 0) lt(1, 0, F2, n, C, W, C, xe, C, 0.0f, hid + off[e] * F2, F2, CUDA_R_16BF, s);
            if (which == 1) lt(0, 0, C, n, F2, W, C, dhe, F2, 0.0f, dx + off[e] * C, C, CUDA_R_16BF, s);
            if (which == 2) lt(0, 1, C, F2, n, xe, C, dhe, F2, 1.0f, g1 + (size_t)e * F2 * C, C, CUDA_R_32F, s);
        }
    };
    /* grouped: one group per expert (group_size 1), pointer arrays on the device */
    std::vector<const void *> hA(E), hB(E);
    std::vector<void *> hC(E);
    const void **dA, **dB;
    void **dC;
    CK(cudaMalloc(&dA, E * sizeof(void *))); CK(cudaMalloc(&dB, E * sizeof(void *))); CK(cudaMalloc(&dC, E * sizeof(void *)));
    auto grouped = [&](int which) {
        std::vector<cublasOperation_t> ta(E), tb(E);
        std::vector<int> m(E), n(E), kk(E), lda(E), ldb(E), ldc(E), gs(E, 1);
        std::vector<float> al(E, 1.0f), be(E, which == 2 ? 1.0f : 0.0f);
        int G = 0;
        for (int e = 0; e < E; e++) {
            int ne = cnt[e];
            if (!ne) continue;
            const __nv_bfloat16 *xe = x + off[e] * C, *dhe = dh + off[e] * F2, *W = w1 + (size_t)e * F2 * C;
            if (which == 0) ta[G] = CUBLAS_OP_T, tb[G] = CUBLAS_OP_N, m[G] = F2, n[G] = ne, kk[G] = C, hA[G] = W,
                            lda[G] = C, hB[G] = xe, ldb[G] = C, hC[G] = hid2 + off[e] * F2, ldc[G] = F2;
            if (which == 1) ta[G] = CUBLAS_OP_N, tb[G] = CUBLAS_OP_N, m[G] = C, n[G] = ne, kk[G] = F2, hA[G] = W,
                            lda[G] = C, hB[G] = dhe, ldb[G] = F2, hC[G] = dx2 + off[e] * C, ldc[G] = C;
            if (which == 2) ta[G] = CUBLAS_OP_N, tb[G] = CUBLAS_OP_T, m[G] = C, n[G] = F2, kk[G] = ne, hA[G] = xe,
                            lda[G] = C, hB[G] = dhe, ldb[G] = F2, hC[G] = g1b + (size_t)e * F2 * C, ldc[G] = C;
            G++;
        }
        CK(cudaMemcpyAsync(dA, hA.data(), G * sizeof(void *), cudaMemcpyHostToDevice, s));
        CK(cudaMemcpyAsync(dB, hB.data(), G * sizeof(void *), cudaMemcpyHostToDevice, s));
        CK(cudaMemcpyAsync(dC, hC.data(), G * sizeof(void *), cudaMemcpyHostToDevice, s));
        CB(cublasGemmGroupedBatchedEx(h, ta.data(), tb.data(), m.data(), n.data(), kk.data(), al.data(), dA,
                                      CUDA_R_16BF, lda.data(), dB, CUDA_R_16BF, ldb.data(), be.data(), dC,
                                      which == 2 ? CUDA_R_32F : CUDA_R_16BF, ldc.data(), G, gs.data(),
                                      CUBLAS_COMPUTE_32F));
    };
    const char *names[3] = {"fwd   h = x W1^T", "dinp  dx = dh W1", "dW    G1 += dh^T x"};
    double flops = 2.0 * R * C * F2;
    printf("tokens %d, experts %d, top-%d, d %d, d_ff %d, skew %.2f; rows per expert:", N, E, k, C, F, skew);
    for (int e = 0; e < E; e++) printf(" %d", cnt[e]);
    printf("\n| product | loop ms | grouped ms | loop TFLOP/s | grouped TFLOP/s | max |diff| |\n|---|---:|---:|---:|---:|---:|\n");
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
    for (int which = 0; which < 3; which++) {
        float tl = 0, tg = 0;
        const int reps = 20;
        for (int pass = 0; pass < 2; pass++) { /* pass 0 warms both up (heuristics, plans) */
            CK(cudaMemsetAsync(g1, 0, nW1 * 4, s)); CK(cudaMemsetAsync(g1b, 0, nW1 * 4, s));
            int nr = pass ? reps : 1;
            CK(cudaEventRecord(a, s));
            for (int r = 0; r < nr; r++) loop(which);
            CK(cudaEventRecord(b, s)); CK(cudaEventSynchronize(b));
            CK(cudaEventElapsedTime(&tl, a, b));
            CK(cudaEventRecord(a, s));
            for (int r = 0; r < nr; r++) grouped(which);
            CK(cudaEventRecord(b, s)); CK(cudaEventSynchronize(b));
            CK(cudaEventElapsedTime(&tg, a, b));
            tl /= nr, tg /= nr;
        }
        double d = which == 0 ? maxdiff(hid, hid2, (size_t)R * F2) : which == 1 ? maxdiff(dx, dx2, (size_t)R * C)
                                                                             : maxdiff(g1, g1b, nW1);
        printf("| %s | %.3f | %.3f | %.0f | %.0f | %.3g |\n", names[which], tl, tg, flops / tl / 1e9, flops / tg / 1e9, d);
    }
    return 0;
}
