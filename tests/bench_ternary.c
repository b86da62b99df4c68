/* bench_ternary.c - times the product of an integer-ternary weight (Backend.ternary_matmul_fwd) on the
 * CUDA backend against the two ways of doing it from a bf16 copy: unpacking the trits first
 * (trit_unpack + matmul_fwd, what the product does above TERN_MM_SMALL_N rows) and the cuBLASLt bf16
 * product alone over weights already held in bf16 (matmul_fwd: the dense model's cost), at the block
 * shapes of bitnet-3b and llama2-7b and N rows of x from 1 (one token being decoded) to a training batch.
 *
 *   make build/tests/bench_ternary      (not part of `make test`; needs a CUDA build)
 *   build/tests/bench_ternary [REPS]
 *
 * bf16 activations, groups of 128 weights, random trits. Per case the median of REPS calls after
 * warm-up, with CUDA events on the backend's stream. Prints one Markdown row per (shape, N): the times in
 * microseconds (for N <= TERN_MM_SMALL_N the few-rows kernel in each of its layouts too,
 * BackendOptions.tern_mm_variant 1-4, and as the automatic choice picks), the packed product's weight
 * bandwidth (packed bytes over its time) and its speed-up over each bf16 way. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/ternary.h"

#ifdef ANVIL_CUDA
#include <cuda_runtime.h>

#include "backend/cuda/cuda_backend.h"

#define WARMUP 5
#define GROUP 128

typedef struct {
    const char *name;
    int K, O;
} Shape;

enum { OP_PACKED, OP_UNPACK, OP_BF16 };

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void check(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) fatal("bench_ternary: %s: %s", what, cudaGetErrorString(e));
}

/* median microseconds of reps calls of op */
static float time_op(const Backend *be, int op, int reps, void *out, const void *x, const TernaryTensor *t,
                     void *wbf, int N, int K, int O)
{
    cudaStream_t st = (cudaStream_t)cuda_stream();
    cudaEvent_t e0, e1;
    check(cudaEventCreate(&e0), "event");
    check(cudaEventCreate(&e1), "event");
    float *us = xmalloc(sizeof(float) * reps);
    for (int i = -WARMUP; i < reps; i++) {
        check(cudaEventRecord(e0, st), "record");
        if (op == OP_PACKED) {
            be->ternary_matmul_fwd(out, x, t, NULL, wbf, N, K, O);
        } else if (op == OP_UNPACK) {
            be->trit_unpack(wbf, t);
            be->matmul_fwd(out, x, wbf, NULL, N, K, O);
        } else {
            be->matmul_fwd(out, x, wbf, NULL, N, K, O);
        }
        check(cudaEventRecord(e1, st), "record");
        check(cudaEventSynchronize(e1), "sync");
        float ms;
        check(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
        if (i >= 0) us[i] = 1000.0f * ms;
    }
    check(cudaGetLastError(), "launch");
    qsort(us, reps, sizeof(float), cmp_float);
    float m = reps % 2 ? us[reps / 2] : 0.5f * (us[reps / 2 - 1] + us[reps / 2]);
    free(us);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return m;
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 50;
    if (reps < 1) reps = 50;
    const Backend *be = backend_cuda(1);
    if (!be) {
        printf("bench_ternary: SKIP: %s\n", err_get());
        return 0;
    }
    BackendOptions opts = {0};
    if (backend_options_from_env(&opts) < 0) fatal_err();
    be->configure(&opts);
    const Shape shapes[] = {
        {"bitnet-3b qkv", 3200, 9600},  {"bitnet-3b o", 3200, 3200},     {"bitnet-3b gate_up", 3200, 17280},
        {"bitnet-3b down", 8640, 3200}, {"llama2-7b gate_up", 4096, 22016}, {"llama2-7b down", 11008, 4096},
    };
    const int Ns[] = {1, 2, 4, 8, 16, 64, 512, 4096};
    const int nN = (int)(sizeof(Ns) / sizeof(Ns[0]));
    int Nmax = Ns[nN - 1];
    printf("| shape (K x O) | N | packed us (layout 1 / 2 / 3 / 4) | packed us (auto) | unpack + cuBLASLt us | "
           "cuBLASLt bf16 us | packed GB/s (auto) | auto vs unpack | auto vs bf16 |\n");
    printf("|---|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int K = shapes[s].K, O = shapes[s].O;
        size_t n = (size_t)O * K, nb = trit_bytes(n), ng = tern_groups(n, GROUP);
        Rng r;
        rng_seed(&r, 99 + s, 1);
        uint8_t *tr = xmalloc(nb);
        int8_t *ex = xmalloc(ng);
        for (size_t i = 0; i < nb; i++) tr[i] = (uint8_t)(rng_u64(&r) % (TRIT_BYTE_MAX + 1));
        for (size_t i = 0; i < ng; i++) ex[i] = (int8_t)(-6 + (int)(rng_u64(&r) % 3));
        TernaryTensor t = {.n = n, .group = GROUP};
        t.trits = be->alloc((nb + 3) / 4 * 4);
        be->upload(t.trits, tr, nb);
        t.exp = be->alloc(ng);
        be->upload(t.exp, ex, ng);
        float *h = xmalloc(sizeof(float) * (size_t)Nmax * K);
        for (size_t i = 0; i < (size_t)Nmax * K; i++) h[i] = (float)rng_normal(&r);
        void *x = be->alloc((size_t)Nmax * K * be->act_size), *out = be->alloc((size_t)Nmax * O * be->act_size);
        void *wbf = be->alloc(n * be->act_size);
        be->upload_act(x, h, (size_t)Nmax * K);
        for (int k = 0; k < nN; k++) {
            int N = Ns[k];
            char lay[64] = "-";
            if (N <= TERN_MM_SMALL_N) { /* each layout of the few-rows kernel (BackendOptions.tern_mm_variant) */
                float tv[4];
                for (int v = 1; v <= 4; v++) {
                    BackendOptions o = opts;
                    o.tern_mm_variant = v;
                    be->configure(&o);
                    tv[v - 1] = time_op(be, OP_PACKED, reps, out, x, &t, wbf, N, K, O);
                }
                be->configure(&opts);
                snprintf(lay, sizeof(lay), "%.1f / %.1f / %.1f / %.1f", tv[0], tv[1], tv[2], tv[3]);
            }
            float tp = time_op(be, OP_PACKED, reps, out, x, &t, wbf, N, K, O);
            float tu = time_op(be, OP_UNPACK, reps, out, x, &t, wbf, N, K, O);
            be->trit_unpack(wbf, &t); /* the bf16 weights for the dense product */
            float tb = time_op(be, OP_BF16, reps, out, x, &t, wbf, N, K, O);
            printf("| %s (%d x %d) | %d | %s | %.1f | %.1f | %.1f | %.0f | %.2fx | %.2fx |\n", shapes[s].name, K, O, N,
                   lay, tp, tu, tb, (double)nb / (tp * 1e3), tu / tp, tb / tp);
        }
        be->free(t.trits), be->free(t.exp), be->free(x), be->free(out), be->free(wbf);
        free(tr), free(ex), free(h);
    }
    return 0;
}
#else
int main(void)
{
    printf("bench_ternary: SKIP: built without CUDA\n");
    return 0;
}
#endif
