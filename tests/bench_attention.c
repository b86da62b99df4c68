/* bench_attention.c - times only the attention ops of the CUDA backend (bf16, causal, head_dim 64)
 * at the training shapes of docs/benchmarks.md, with CUDA events on the backend's stream.
 *
 *   make build/tests/bench_attention      (not part of `make test`; needs a CUDA build)
 *   BENCH_LABEL=name build/tests/bench_attention [REPS]
 *
 * The variant is chosen by the environment, read here once and applied with Backend.configure:
 * ANVIL_ATTENTION=auto|cudnn|anvil and ANVIL_DETERMINISTIC=1 (as anvil itself reads them,
 * backend_options_from_env), and the test knobs BENCH_ATTN_BWD=regs|shared (the fused backward's
 * K/V layout) and BENCH_ATTN_ORDER=x|z (the launch order). One process times one variant;
 * tools/gpu-attn.sh runs several side by side with the PyTorch peer
 * (tools/bench_attention_torch.py). Per shape: median of REPS forwards, then of REPS
 * backwards (each over the forward's out/lse), after warm-up. FLOPs count only the causal half:
 * forward 2 products of 2*T*T/2*hd per (b, head), backward 5 (S, dP, dV, dK, dQ) = 2.5x forward.
 * Prints one Markdown row per shape: variant | shape | fwd ms | TFLOP/s | bwd ms | TFLOP/s | both ms. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"

#ifdef ANVIL_CUDA
#include <cuda_runtime.h>

#include "backend/cuda/cuda_backend.h"

typedef struct {
    const char *name;
    int B, T, nh, nkv;
} Shape;

#define HD 64
#define WARMUP 3

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static float median(float *v, int n)
{
    qsort(v, n, sizeof(float), cmp_float);
    return n % 2 ? v[n / 2] : 0.5f * (v[n / 2 - 1] + v[n / 2]);
}

static void check(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) fatal("bench_attention: %s: %s", what, cudaGetErrorString(e));
}

/* median ms of reps calls of fwd (which = 0) or bwd (1) */
static float time_op(const Backend *be, int which, int reps, void *o, float *l, void *dq, const void *d,
                     const void *q, const Shape *s)
{
    cudaStream_t st = (cudaStream_t)cuda_stream();
    cudaEvent_t e0, e1;
    check(cudaEventCreate(&e0), "event");
    check(cudaEventCreate(&e1), "event");
    float *ms = xmalloc(sizeof(float) * reps);
    for (int i = -WARMUP; i < reps; i++) {
        check(cudaEventRecord(e0, st), "record");
        if (which == 0)
            be->attention_fwd(o, l, q, s->B, s->T, s->nh, s->nkv, HD);
        else
            be->attention_bwd(dq, d, o, l, q, s->B, s->T, s->nh, s->nkv, HD);
        check(cudaEventRecord(e1, st), "record");
        check(cudaEventSynchronize(e1), "sync");
        float t;
        check(cudaEventElapsedTime(&t, e0, e1), "elapsed");
        if (i >= 0) ms[i] = t;
    }
    check(cudaGetLastError(), "launch");
    float m = median(ms, reps);
    free(ms);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return m;
}

/* Value i of names[] given in the environment variable var (0 when unset or empty); fatal otherwise. */
static int env_choice(const char *var, const char *const *names, int n)
{
    const char *e = getenv(var);
    if (!e || !e[0]) return 0;
    for (int i = 1; i < n; i++)
        if (!strcmp(e, names[i])) return i;
    fatal("bench_attention: %s: expected %s or %s, got \"%s\"", var, names[1], names[2], e);
}

/* The backend's switches for this run: anvil's own variables, then the knobs of this benchmark. */
static BackendOptions bench_options(void)
{
    BackendOptions o = {0};
    if (backend_options_from_env(&o) < 0) fatal_err();
    static const char *const layouts[] = {"auto", "regs", "shared"}, *const orders[] = {"auto", "x", "z"};
    o.attn_bwd_layout = env_choice("BENCH_ATTN_BWD", layouts, 3);
    o.attn_launch_order = env_choice("BENCH_ATTN_ORDER", orders, 3);
    return o;
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    if (reps < 1) reps = 20;
    const char *label = getenv("BENCH_LABEL") ? getenv("BENCH_LABEL") : "default";
    BackendOptions opts = bench_options();
    const Backend *be = backend_cuda(1);
    if (!be) {
        printf("bench_attention: SKIP: %s\n", err_get());
        return 0;
    }
    be->configure(&opts);
    Shape shapes[] = {{"gpt2 B64 T1024 h12/12", 64, 1024, 12, 12}, {"llama B8 T2048 h32/4", 8, 2048, 32, 4}};
    for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++) {
        const Shape *s = &shapes[k];
        size_t nq = (size_t)s->B * s->T * (s->nh + 2 * s->nkv) * HD, no = (size_t)s->B * s->T * s->nh * HD;
        size_t nl = (size_t)s->B * s->nh * s->T;
        float *h = xmalloc(sizeof(float) * (nq > no ? nq : no));
        Rng r;
        rng_seed(&r, 1234 + k, 1);
        for (size_t i = 0; i < nq; i++) h[i] = (float)rng_normal(&r);
        void *q = be->alloc(nq * be->act_size), *dq = be->alloc(nq * be->act_size);
        be->upload_act(q, h, nq);
        for (size_t i = 0; i < no; i++) h[i] = (float)rng_normal(&r);
        void *d = be->alloc(no * be->act_size), *o = be->alloc(no * be->act_size);
        be->upload_act(d, h, no);
        float *l = be->alloc(nl * sizeof(float));
        float tf = time_op(be, 0, reps, o, l, dq, d, q, s);
        float tb = time_op(be, 1, reps, o, l, dq, d, q, s);
        double fwd_flop = 4.0 * s->B * s->nh * (double)s->T * s->T * HD / 2;
        printf("| %s | %s | %.3f | %.1f | %.3f | %.1f | %.3f |\n", label, s->name, tf, fwd_flop / tf * 1e-9,
               tb, 2.5 * fwd_flop / tb * 1e-9, tf + tb);
        fflush(stdout);
        be->free(q), be->free(dq), be->free(d), be->free(o), be->free(l);
        free(h);
    }
    return 0;
}
#else
int main(void)
{
    printf("bench_attention: SKIP: built without CUDA\n");
    return 0;
}
#endif
