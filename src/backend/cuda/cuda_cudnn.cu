/* cuda_cudnn.cu - causal attention through cuDNN's fused flash-attention engines.
 *
 * cuDNN is optional: libcudnn.so.9 is opened with dlopen at the first bf16 attention call, so the
 * binary starts and trains without it (our own kernels in cuda_attention.cu run instead). When it is
 * there, the forward and backward are expressed as cuDNN operation graphs through the backend C API
 * (tensor, matmul, pointwise and reduction descriptors: the pattern its runtime fusion engines
 * recognise as scaled dot-product attention), finalized into execution plans once per shape and
 * cached. The tensors are strided views into our buffers: q/k/v inside qkv (B,T,(nh+2*nkv)*hd),
 * out and dout (B,T,nh*hd), lse (B,nh,T) as cuDNN's stats (the natural log-sum-exp of the scaled
 * scores, which is also what our kernels keep, so either backward can follow either forward).
 *
 * Selection (cu_attention_fwd/bwd ask cudnn_attention_wanted()), by opts.attention (backend.h):
 * ATTN_IMPL_AUTO: cuDNN for T >= CUDNN_MIN_T where it loads and builds a plan for the shape, else
 * ours; ATTN_IMPL_CUDNN: cuDNN for every shape it supports, or a fatal error saying why not;
 * ATTN_IMPL_ANVIL: ours. Never in the deterministic mode (cuDNN's backward adds dQ with atomics)
 * nor in fp32 (its fused engines are fp16/bf16 only). ANVIL_CUDNN_VERBOSE=1 (a diagnostic, read
 * once) prints a line per plan and per shape left to our kernels. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_cudnn.h"

#if __has_include(<cudnn_graph.h>)
#include <cudnn_graph.h>
#define ANVIL_HAVE_CUDNN_H 1
#endif

#ifndef ANVIL_HAVE_CUDNN_H

int cudnn_attention_wanted(int T, int hd) { return 0; }
int cudnn_attention_available(void) { return 0; }
int cudnn_attention_fwd(void *, float *, const void *, int, int, int, int, int) { return 0; }
int cudnn_attention_bwd(void *, const void *, const void *, const float *, const void *, int, int, int, int, int)
{
    return 0;
}
int cudnn_attention_full_fwd(void *, float *, const void *, int, int, int, int, int) { return 0; }
int cudnn_attention_full_bwd(void *, const void *, const void *, const float *, const void *, int, int, int, int, int)
{
    return 0;
}
const char *cudnn_attention_info(void) { return "anvil kernels (built without cuDNN headers)"; }

#else

/* ---------------------------------------------------------------- the library, opened at run time */

typedef struct {
    int state; /* 0 not tried, 1 ready, -1 unavailable (why[] says why) */
    char why[300];
    char version[32];
    void *lib;
    cudnnHandle_t handle;
    size_t (*GetVersion)(void);
    const char *(*GetErrorString)(cudnnStatus_t);
    void (*GetLastErrorString)(char *, size_t);
    cudnnStatus_t (*Create)(cudnnHandle_t *);
    cudnnStatus_t (*SetStream)(cudnnHandle_t, cudaStream_t);
    cudnnStatus_t (*BackendCreateDescriptor)(cudnnBackendDescriptorType_t, cudnnBackendDescriptor_t *);
    cudnnStatus_t (*BackendDestroyDescriptor)(cudnnBackendDescriptor_t);
    cudnnStatus_t (*BackendFinalize)(cudnnBackendDescriptor_t);
    cudnnStatus_t (*BackendSetAttribute)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t,
                                         cudnnBackendAttributeType_t, int64_t, const void *);
    cudnnStatus_t (*BackendGetAttribute)(cudnnBackendDescriptor_t const, cudnnBackendAttributeName_t,
                                         cudnnBackendAttributeType_t, int64_t, int64_t *, void *);
    cudnnStatus_t (*BackendExecute)(cudnnHandle_t, cudnnBackendDescriptor_t, cudnnBackendDescriptor_t);
} CudnnLib;

static CudnnLib L;

/* ANVIL_CUDNN_VERBOSE set (and not "0"): a line per plan built and per shape left to our kernels. */
static bool cudnn_verbose(void)
{
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("ANVIL_CUDNN_VERBOSE");
        v = e && e[0] && strcmp(e, "0");
    }
    return v;
}

/* opts.attention asked for cuDNN: its failures are errors instead of a fall back to our kernels. */
static bool cudnn_forced(void) { return g_cu.opts.attention == ATTN_IMPL_CUDNN; }

static int cudnn_load(void)
{
    if (L.state) return L.state > 0;
    L.state = -1;
    const char *names[] = {"libcudnn.so.9", "libcudnn.so"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && !L.lib; i++) L.lib = dlopen(names[i], RTLD_NOW);
    if (!L.lib) {
        snprintf(L.why, sizeof(L.why), "libcudnn.so.9 not found (%s); add its folder to LD_LIBRARY_PATH", dlerror());
        return 0;
    }
#define SYM(field, name)                                                                                         \
    do {                                                                                                         \
        *(void **)&L.field = dlsym(L.lib, name);                                                                 \
        if (!L.field) {                                                                                          \
            snprintf(L.why, sizeof(L.why), "libcudnn.so.9 lacks %s", name);                                      \
            return 0;                                                                                            \
        }                                                                                                        \
    } while (0)
    SYM(GetVersion, "cudnnGetVersion");
    SYM(GetErrorString, "cudnnGetErrorString");
    SYM(GetLastErrorString, "cudnnGetLastErrorString");
    SYM(Create, "cudnnCreate");
    SYM(SetStream, "cudnnSetStream");
    SYM(BackendCreateDescriptor, "cudnnBackendCreateDescriptor");
    SYM(BackendDestroyDescriptor, "cudnnBackendDestroyDescriptor");
    SYM(BackendFinalize, "cudnnBackendFinalize");
    SYM(BackendSetAttribute, "cudnnBackendSetAttribute");
    SYM(BackendGetAttribute, "cudnnBackendGetAttribute");
    SYM(BackendExecute, "cudnnBackendExecute");
#undef SYM
    size_t v = L.GetVersion();
    snprintf(L.version, sizeof(L.version), "%zu.%zu.%zu", v / 10000, v / 100 % 100, v % 100);
    if (v < 90000) {
        snprintf(L.why, sizeof(L.why), "cuDNN %s is older than 9.0", L.version);
        return 0;
    }
    cudnnStatus_t s = L.Create(&L.handle);
    if (s == CUDNN_STATUS_SUCCESS) s = L.SetStream(L.handle, g_cu.stream);
    if (s != CUDNN_STATUS_SUCCESS) {
        snprintf(L.why, sizeof(L.why), "cudnnCreate: %s", L.GetErrorString(s));
        return 0;
    }
    L.state = 1;
    return 1;
}

/* "STATUS_NAME: cuDNN's last error message" into buf (the message left out when empty). */
static const char *status_text(cudnnStatus_t s, char *buf, size_t n)
{
    char last[256] = "";
    L.GetLastErrorString(last, sizeof(last));
    snprintf(buf, n, "%s%s%s", L.GetErrorString(s), last[0] ? ": " : "", last);
    return buf;
}

/* ---------------------------------------------------------------- graph building */

/* Builds one operation graph; the first failing call is remembered in err and later calls do
 * nothing, so a graph is written straight through and checked once at the end. */
struct Graph {
    cudnnBackendDescriptor_t all[96];
    int nall = 0;
    cudnnBackendDescriptor_t ops[48];
    int nops = 0;
    int64_t next_uid = 1000; /* virtual tensors; caller tensors use small uids */
    char err[400] = "";

    ~Graph()
    {
        for (int i = 0; i < nall; i++) L.BackendDestroyDescriptor(all[i]);
    }
    bool ok() const { return !err[0]; }
    void check(cudnnStatus_t s, const char *what)
    {
        if (s == CUDNN_STATUS_SUCCESS || err[0]) return;
        char st[320];
        snprintf(err, sizeof(err), "%s: %s", what, status_text(s, st, sizeof(st)));
    }
    cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t t)
    {
        cudnnBackendDescriptor_t d = nullptr;
        if (!ok()) return nullptr;
        if (nall == (int)(sizeof(all) / sizeof(all[0]))) {
            snprintf(err, sizeof(err), "graph too large");
            return nullptr;
        }
        check(L.BackendCreateDescriptor(t, &d), "cudnnBackendCreateDescriptor");
        if (ok()) all[nall++] = d;
        return d;
    }
    void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t t, int64_t n,
             const void *v, const char *what)
    {
        if (ok()) check(L.BackendSetAttribute(d, a, t, n, v), what);
    }
    void fin(cudnnBackendDescriptor_t d, const char *what)
    {
        if (ok()) check(L.BackendFinalize(d), what);
    }

    /* A 4-D tensor. Strides in elements; virtual tensors get a fresh uid and packed strides. */
    cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t dt, const int64_t dim[4], const int64_t *stride,
                                    bool virt = false, bool by_value = false)
    {
        int64_t packed[4] = {dim[1] * dim[2] * dim[3], dim[2] * dim[3], dim[3], 1};
        if (!stride) stride = packed;
        if (uid < 0) uid = next_uid++;
        int64_t align = 16;
        cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
        set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, "tensor data type");
        set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dim, "tensor dimensions");
        set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, stride, "tensor strides");
        set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor uid");
        set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "tensor alignment");
        bool v = virt, bv = by_value;
        if (virt) set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v, "tensor virtual");
        if (by_value) set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &bv, "tensor by value");
        fin(t, "tensor finalize");
        return t;
    }
    /* A virtual fp32 (or dt) intermediate of the given dims, packed. */
    cudnnBackendDescriptor_t virt(int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                                  cudnnDataType_t dt = CUDNN_DATA_FLOAT)
    {
        int64_t dim[4] = {d0, d1, d2, d3};
        return tensor(-1, dt, dim, nullptr, true);
    }
    /* A virtual tensor with explicit strides (transposing views). */
    cudnnBackendDescriptor_t virt_strided(const int64_t dim[4], const int64_t stride[4], cudnnDataType_t dt)
    {
        return tensor(-1, dt, dim, stride, true);
    }
    /* A transposing view (RESHAPE) of x into a new virtual tensor y of dims/strides given. */
    void reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y)
    {
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
        set(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "reshape x");
        set(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "reshape y");
        fin(op, "reshape operation finalize");
        add_op(op);
    }
    /* A by-value fp32 scalar (its data pointer in the variant pack is a host float). */
    cudnnBackendDescriptor_t scalar(int64_t uid)
    {
        int64_t one[4] = {1, 1, 1, 1};
        return tensor(uid, CUDNN_DATA_FLOAT, one, one, false, true);
    }
    void add_op(cudnnBackendDescriptor_t op)
    {
        if (!ok()) return;
        if (nops == (int)(sizeof(ops) / sizeof(ops[0]))) {
            snprintf(err, sizeof(err), "too many operations");
            return;
        }
        ops[nops++] = op;
    }
    /* y = mode(x[, b[, t]]); axis >= 0 for GEN_INDEX. */
    void pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                   cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t t = nullptr, int64_t axis = -1,
                   cudnnDataType_t prec = CUDNN_DATA_FLOAT)
    {
        cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
        float one = 1.0f;
        set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
        set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, "pointwise precision");
        if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
        fin(pw, "pointwise finalize");
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
        set(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw, "pw desc");
        set(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "pw x");
        if (b) set(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, "pw b");
        set(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "pw y");
        if (t) set(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t, "pw t");
        set(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one, "pw alpha1");
        set(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one, "pw alpha2");
        fin(op, "pointwise operation finalize");
        add_op(op);
    }
    /* c = a @ b over the last two dims (batch dims broadcast), fp32 accumulation. */
    void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c)
    {
        cudnnBackendDescriptor_t mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
        cudnnDataType_t prec = CUDNN_DATA_FLOAT;
        double pad = 0.0;
        set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &prec, "matmul precision");
        set(mm, CUDNN_ATTR_MATMUL_PADDING_VALUE, CUDNN_TYPE_DOUBLE, 1, &pad, "matmul padding");
        fin(mm, "matmul finalize");
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
        set(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a, "matmul a");
        set(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, "matmul b");
        set(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c, "matmul c");
        set(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm, "matmul desc");
        fin(op, "matmul operation finalize");
        add_op(op);
    }
    /* y = reduce(x) over the dims where y has extent 1. */
    void reduction(cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y)
    {
        cudnnBackendDescriptor_t rd = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
        cudnnDataType_t prec = CUDNN_DATA_FLOAT;
        set(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode, "reduction mode");
        set(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &prec, "reduction precision");
        bool det = false;
        if (L.GetVersion() >= 91100)
            set(rd, CUDNN_ATTR_REDUCTION_IS_DETERMINISTIC, CUDNN_TYPE_BOOLEAN, 1, &det, "reduction determinism");
        fin(rd, "reduction finalize");
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
        set(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "reduction x");
        set(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "reduction y");
        set(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd, "reduction desc");
        fin(op, "reduction operation finalize");
        add_op(op);
    }
};

/* A finalized plan and what executing it needs. */
typedef struct {
    int used;
    int bwd;
    int B, T, nh, nkv, hd;
    int causal;                    /* 0: no mask (encoders' full rows) */
    cudnnBackendDescriptor_t plan; /* NULL: this shape is not supported (why in the log) */
    int64_t workspace;             /* the plan's own */
    size_t fe_bytes;               /* backward: dQ accumulator and softmax_sum before the plan's workspace */
} Plan;

#define MAX_PLANS 16
static Plan g_plans[MAX_PLANS];
static void *g_ws;
static int g_plans_ok, g_plans_failed, g_plans_limited;
static size_t g_ws_size;

/* Finalize g's operation graph into the first execution plan the heuristics offer that builds. */
static cudnnBackendDescriptor_t finalize_plan(Graph &g, int64_t *workspace)
{
    cudnnBackendDescriptor_t og = g.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    g.set(og, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g.nops, g.ops, "graph ops");
    g.set(og, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &L.handle, "graph handle");
    g.fin(og, "operation graph finalize");
    cudnnBackendDescriptor_t heur = g.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    g.set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &og, "heuristics graph");
    g.set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
    g.fin(heur, "heuristics finalize");
    if (!g.ok()) return nullptr;
    int64_t n = 0;
    g.check(L.BackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n, nullptr),
            "heuristics result count");
    if (!g.ok()) return nullptr;
    if (n <= 0) {
        snprintf(g.err, sizeof(g.err), "no cuDNN engine supports this graph");
        return nullptr;
    }
    if (n > 8) n = 8;
    cudnnBackendDescriptor_t cfg[8];
    for (int64_t i = 0; i < n; i++) cfg[i] = g.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    int64_t got = 0;
    g.check(L.BackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &got, cfg),
            "heuristics results");
    if (!g.ok()) return nullptr;
    char first_err[400] = "";
    for (int64_t i = 0; i < got; i++) {
        cudnnBackendDescriptor_t plan = nullptr;
        if (L.BackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan) != CUDNN_STATUS_SUCCESS) break;
        cudnnStatus_t s =
            L.BackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &L.handle);
        if (s == CUDNN_STATUS_SUCCESS)
            s = L.BackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                      &cfg[i]);
        if (s == CUDNN_STATUS_SUCCESS) s = L.BackendFinalize(plan);
        int64_t ws = 0, cnt = 0;
        if (s == CUDNN_STATUS_SUCCESS)
            s = L.BackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &cnt, &ws);
        if (s == CUDNN_STATUS_SUCCESS) {
            *workspace = ws;
            return plan;
        }
        if (!first_err[0]) {
            char st[320];
            snprintf(first_err, sizeof(first_err), "execution plan: %s", status_text(s, st, sizeof(st)));
        }
        L.BackendDestroyDescriptor(plan);
    }
    snprintf(g.err, sizeof(g.err), "%s", first_err[0] ? first_err : "no execution plan");
    return nullptr;
}

/* ---------------------------------------------------------------- the attention graphs */

/* Caller tensors' uids (the variant pack maps them to pointers). */
enum { U_Q = 1, U_K, U_V, U_O, U_STATS, U_SCALE, U_DO, U_DQ, U_DK, U_DV, U_NEG_INF, U_ONE, U_DQ_ACC, U_SOFTMAX_SUM };

/* Strided [B, heads, T, hd] views of q/k/v inside qkv and of out/dout. */
struct Views {
    int64_t q_dim[4], kv_dim[4], qkv_stride[4], kt_dim[4], kt_stride[4];
    int64_t o_dim[4], o_stride[4], stats_dim[4], stats_stride[4];
    Views(int B, int T, int nh, int nkv, int hd)
    {
        int64_t W = (int64_t)(nh + 2 * nkv) * hd, C = (int64_t)nh * hd;
        int64_t qd[4] = {B, nh, T, hd}, kd[4] = {B, nkv, T, hd}, qs[4] = {T * W, hd, W, 1};
        int64_t ktd[4] = {B, nkv, hd, T}, kts[4] = {T * W, hd, 1, W};
        int64_t os[4] = {T * C, hd, C, 1}, sd[4] = {B, nh, T, 1}, ss[4] = {(int64_t)nh * T, T, 1, 1};
        memcpy(q_dim, qd, sizeof(qd)), memcpy(kv_dim, kd, sizeof(kd)), memcpy(qkv_stride, qs, sizeof(qs));
        memcpy(kt_dim, ktd, sizeof(ktd)), memcpy(kt_stride, kts, sizeof(kts));
        memcpy(o_dim, qd, sizeof(qd)), memcpy(o_stride, os, sizeof(os));
        memcpy(stats_dim, sd, sizeof(sd)), memcpy(stats_stride, ss, sizeof(ss));
    }
};

#include "backend/cuda/cuda_cudnn_graphs.inc"

/* The backward's fp32 dQ accumulator at the start of the workspace (rounded up to 256 bytes); the
 * row sums softmax_sum follow it, then the plan's own workspace. */
static size_t dq_acc_bytes(int B, int T, int nh, int hd) { return CEIL_DIV((size_t)B * nh * T * hd * 4, 256) * 256; }

static Plan *plan_for(int bwd, int B, int T, int nh, int nkv, int hd, int causal)
{
    for (int i = 0; i < MAX_PLANS; i++) {
        Plan *p = &g_plans[i];
        if (p->used && p->bwd == bwd && p->B == B && p->T == T && p->nh == nh && p->nkv == nkv && p->hd == hd &&
            p->causal == causal)
            return p;
    }
    Plan *p = nullptr;
    for (int i = 0; i < MAX_PLANS && !p; i++)
        if (!g_plans[i].used) p = &g_plans[i];
    if (!p) return nullptr; /* cache full: our kernels take shapes beyond the first MAX_PLANS */
    *p = Plan{1, bwd, B, T, nh, nkv, hd, causal, nullptr, 0, 0};
    if (bwd) p->fe_bytes = dq_acc_bytes(B, T, nh, hd) + CEIL_DIV((size_t)B * nh * T * 4, 256) * 256;
    Graph g;
    /* known limits of some versions: our kernels take these shapes, also when cuDNN is asked for */
    const char *limit = nullptr;
    if (bwd && L.GetVersion() < 91600 && T % 128)
        limit = "before 9.16 its backward needs T % 128 == 0";
    else if (L.GetVersion() >= 91000 && L.GetVersion() < 91002)
        limit = "9.10.0 and 9.10.1 have known attention bugs (9.10.2+ is fine)";
    if (limit) {
        static int told_limit;
        if (!told_limit++ || cudnn_verbose())
            fprintf(stderr, "anvil: cuDNN %s: %s; attention %s for T=%d on anvil kernels\n", L.version, limit,
                    bwd ? "backward" : "forward", T);
        g_plans_limited++;
        return p;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (bwd)
        build_bwd(g, B, T, nh, nkv, hd, causal);
    else
        build_fwd(g, B, T, nh, nkv, hd, causal);
    if (g.ok()) p->plan = finalize_plan(g, &p->workspace);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (p->plan && cudnn_verbose())
        fprintf(stderr,
                "anvil: cuDNN %s attention %s plan for B=%d T=%d heads %d/%d hd %d: %.1f ms, workspace %.1f MiB\n",
                L.version, bwd ? "backward" : "forward", B, T, nh, nkv, hd,
                (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6,
                (p->workspace + p->fe_bytes) / 1048576.0);
    if (p->plan)
        g_plans_ok++;
    else {
        g_plans_failed++;
        snprintf(L.why, sizeof(L.why), "%s", g.err);
        static int told;
        if (cudnn_forced())
            fatal("cuDNN %s attention %s (B=%d T=%d heads %d/%d hd %d): %s", L.version, bwd ? "backward" : "forward",
                  B, T, nh, nkv, hd, g.err);
        if (!told++ || cudnn_verbose())
            fprintf(stderr, "anvil: cuDNN %s attention %s not used for B=%d T=%d hd=%d: %s\n", L.version,
                    bwd ? "backward" : "forward", B, T, hd, g.err);
    }
    return p;
}

static void *workspace(int64_t bytes)
{
    if ((size_t)bytes > g_ws_size) {
        if (g_ws) cuda_free(g_ws);
        g_ws = cuda_malloc((size_t)bytes);
        g_ws_size = (size_t)bytes;
    }
    return g_ws;
}

/* ws: the plan's workspace (after the fe_bytes the caller placed its own tensors in). */
static void execute(Plan *p, int n, const int64_t *uids, void *const *ptrs, void *ws)
{
    cudnnBackendDescriptor_t vp = nullptr;
    cudnnStatus_t s = L.BackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
    if (s == CUDNN_STATUS_SUCCESS)
        s = L.BackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids);
    if (s == CUDNN_STATUS_SUCCESS)
        s = L.BackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs);
    if (s == CUDNN_STATUS_SUCCESS)
        s = L.BackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
    if (s == CUDNN_STATUS_SUCCESS) s = L.BackendFinalize(vp);
    if (s == CUDNN_STATUS_SUCCESS) s = L.BackendExecute(L.handle, p->plan, vp);
    if (vp) L.BackendDestroyDescriptor(vp);
    if (s != CUDNN_STATUS_SUCCESS) {
        char st[320];
        fatal("cuDNN %s attention %s: %s", L.version, p->bwd ? "backward" : "forward", status_text(s, st, sizeof(st)));
    }
}

/* ---------------------------------------------------------------- entry points */

/* Below this many positions the automatic choice keeps our kernels: building a cuDNN plan costs
 * tens of milliseconds per new shape (its kernels are compiled at run time), which short sequences
 * of varying length (multiple-choice scoring, generation prefill) would pay again and again for
 * little gain. Training shapes are longer and repeat every step. */
#define CUDNN_MIN_T 256

/* cuDNN's fused attention takes head dims that are multiples of 8; others run zero-padded to the next
 * one (pad_heads below). */
static int hd_padded(int hd) { return (hd + 7) / 8 * 8; }

int cudnn_attention_wanted(int T, int hd)
{
    int impl = g_cu.opts.attention;
    if (g_cu.deterministic || hd_padded(hd) > 128 || (impl != ATTN_IMPL_AUTO && impl != ATTN_IMPL_CUDNN)) return 0;
    bool forced = cudnn_forced();
    if (!forced && T < CUDNN_MIN_T) return 0;
    /* a forced layout of our fused backward (a test knob) asks for our kernels, as auto would not */
    if (!forced && g_cu.opts.attn_bwd_layout) return 0;
    if (!cudnn_load()) {
        if (forced) fatal("attention: cudnn was asked for (backend.attention / ANVIL_ATTENTION), but %s", L.why);
        return 0;
    }
    return 1;
}

int cudnn_attention_available(void) { return cudnn_load(); }

/* The forward with or without the causal mask (the unmasked graph has no -inf scalar, so its
 * variant pack leaves that uid out: it is the last one). */
static int attention_fwd_graph(void *out, float *lse, const void *qkv, int B, int T, int nh, int nkv, int hd,
                               int causal, float scale)
{
    Plan *p = plan_for(0, B, T, nh, nkv, hd, causal);
    if (!p || !p->plan) return 0;
    const bf16 *q = (const bf16 *)qkv;
    float neg_inf = -INFINITY;
    int64_t uids[] = {U_Q, U_K, U_V, U_O, U_STATS, U_SCALE, U_NEG_INF};
    void *ptrs[] = {(void *)q, (void *)(q + (size_t)nh * hd), (void *)(q + (size_t)(nh + nkv) * hd), out, lse,
                    &scale, &neg_inf};
    execute(p, causal ? 7 : 6, uids, ptrs, p->workspace ? workspace(p->workspace) : nullptr);
    return 1;
}

/* Head dims that are not a multiple of 8 (BitNet b1.58 3B: 100): q, k, v (and for the backward out and
 * dout) copied into buffers whose heads are zero-padded to hp = hd_padded(hd) columns, cuDNN run at hp
 * with the softmax scale of hd, and the first hd columns of each head copied back. The padded columns
 * of q and k add zero to every score and those of v give zero output columns, so the attention is
 * hd's; the padded gradient columns are dropped. The buffers are one grow-only block. */
static void *g_pad;
static size_t g_pad_size;

static bf16 *pad_block(size_t elems)
{
    if (elems * sizeof(bf16) > g_pad_size) {
        if (g_pad) cuda_free(g_pad);
        g_pad_size = elems * sizeof(bf16);
        g_pad = cuda_malloc(g_pad_size);
    }
    return (bf16 *)g_pad;
}

/* dst (rows, hp) = src (rows, hd) with zero columns after hd. */
static void pad_heads(bf16 *dst, const void *src, size_t rows, int hd, int hp)
{
    CUDA_CHECK(cudaMemset2DAsync(dst + hd, (size_t)hp * 2, 0, (size_t)(hp - hd) * 2, rows, g_cu.stream));
    CUDA_CHECK(cudaMemcpy2DAsync(dst, (size_t)hp * 2, src, (size_t)hd * 2, (size_t)hd * 2, rows,
                                 cudaMemcpyDeviceToDevice, g_cu.stream));
}

/* dst (rows, hd) = the first hd columns of src (rows, hp). */
static void unpad_heads(void *dst, const bf16 *src, size_t rows, int hd, int hp)
{
    CUDA_CHECK(cudaMemcpy2DAsync(dst, (size_t)hd * 2, src, (size_t)hp * 2, (size_t)hd * 2, rows,
                                 cudaMemcpyDeviceToDevice, g_cu.stream));
}

static int attention_fwd_any(void *out, float *lse, const void *qkv, int B, int T, int nh, int nkv, int hd, int causal)
{
    float scale = 1.0f / sqrtf((float)hd);
    int hp = hd_padded(hd);
    if (hp == hd) return attention_fwd_graph(out, lse, qkv, B, T, nh, nkv, hd, causal, scale);
    Plan *pl = plan_for(0, B, T, nh, nkv, hp, causal); /* before any copy: an unsupported shape costs nothing */
    if (!pl || !pl->plan) return 0;
    size_t rq = (size_t)B * T * (nh + 2 * nkv), ro = (size_t)B * T * nh;
    bf16 *q = pad_block((rq + ro) * hp), *o = q + rq * hp;
    pad_heads(q, qkv, rq, hd, hp);
    if (!attention_fwd_graph(o, lse, q, B, T, nh, nkv, hp, causal, scale)) return 0;
    unpad_heads(out, o, ro, hd, hp);
    return 1;
}

int cudnn_attention_fwd(void *out, float *lse, const void *qkv, int B, int T, int nh, int nkv, int hd)
{
    return attention_fwd_any(out, lse, qkv, B, T, nh, nkv, hd, 1);
}

int cudnn_attention_full_fwd(void *out, float *lse, const void *qkv, int B, int T, int nh, int nkv, int hd)
{
    return attention_fwd_any(out, lse, qkv, B, T, nh, nkv, hd, 0);
}

/* The backward with or without the causal mask; the -inf scalar's uid is left out of the unmasked
 * graph's variant pack. */
static int attention_bwd_graph(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv, int B,
                               int T, int nh, int nkv, int hd, int causal, float scale)
{
    Plan *p = plan_for(1, B, T, nh, nkv, hd, causal);
    if (!p || !p->plan) return 0;
    const bf16 *q = (const bf16 *)qkv;
    bf16 *dq = (bf16 *)dqkv;
    float neg_inf = -INFINITY, one = 1.0f;
    char *ws = (char *)workspace((int64_t)p->fe_bytes + p->workspace);
    float *dq_acc = (float *)ws, *ssum = (float *)(ws + dq_acc_bytes(B, T, nh, hd));
    if (L.GetVersion() < 90600) /* older engines expect a zeroed accumulator */
        CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, (size_t)B * nh * T * hd * 4, g_cu.stream));
    int64_t uids[] = {U_Q, U_K, U_V, U_O, U_STATS, U_SCALE, U_DO, U_DQ, U_DK, U_DV, U_NEG_INF, U_ONE, U_DQ_ACC,
                      U_SOFTMAX_SUM};
    void *ptrs[] = {(void *)q,
                    (void *)(q + (size_t)nh * hd),
                    (void *)(q + (size_t)(nh + nkv) * hd),
                    (void *)out,
                    (void *)lse,
                    &scale,
                    (void *)dout,
                    dq,
                    dq + (size_t)nh * hd,
                    dq + (size_t)(nh + nkv) * hd,
                    &neg_inf,
                    &one,
                    dq_acc,
                    ssum};
    if (!causal) { /* drop U_NEG_INF (index 10) from the pack */
        for (int i = 10; i < 13; i++) uids[i] = uids[i + 1], ptrs[i] = ptrs[i + 1];
    }
    execute(p, causal ? 14 : 13, uids, ptrs, p->workspace ? ws + p->fe_bytes : nullptr);
    return 1;
}

static int attention_bwd_any(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv, int B,
                             int T, int nh, int nkv, int hd, int causal)
{
    float scale = 1.0f / sqrtf((float)hd);
    int hp = hd_padded(hd);
    if (hp == hd) return attention_bwd_graph(dqkv, dout, out, lse, qkv, B, T, nh, nkv, hd, causal, scale);
    Plan *pl = plan_for(1, B, T, nh, nkv, hp, causal); /* before any copy: an unsupported shape costs nothing */
    if (!pl || !pl->plan) return 0;
    size_t rq = (size_t)B * T * (nh + 2 * nkv), ro = (size_t)B * T * nh;
    bf16 *q = pad_block((2 * rq + 2 * ro) * hp), *dq = q + rq * hp, *o = dq + rq * hp, *d = o + ro * hp;
    pad_heads(q, qkv, rq, hd, hp);
    pad_heads(o, out, ro, hd, hp);
    pad_heads(d, dout, ro, hd, hp);
    if (!attention_bwd_graph(dq, d, o, lse, q, B, T, nh, nkv, hp, causal, scale)) return 0;
    unpad_heads(dqkv, dq, rq, hd, hp);
    return 1;
}

int cudnn_attention_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv, int B,
                        int T, int nh, int nkv, int hd)
{
    return attention_bwd_any(dqkv, dout, out, lse, qkv, B, T, nh, nkv, hd, 1);
}

int cudnn_attention_full_bwd(void *dqkv, const void *dout, const void *out, const float *lse, const void *qkv, int B,
                             int T, int nh, int nkv, int hd)
{
    return attention_bwd_any(dqkv, dout, out, lse, qkv, B, T, nh, nkv, hd, 0);
}

const char *cudnn_attention_info(void)
{
    static char buf[400];
    if (g_plans_ok && !g_plans_failed && !g_plans_limited)
        snprintf(buf, sizeof(buf), "cuDNN %s fused attention", L.version);
    else if (g_plans_ok)
        snprintf(buf, sizeof(buf), "cuDNN %s fused attention, some shapes on anvil kernels", L.version);
    else
        snprintf(buf, sizeof(buf), "anvil kernels%s%s%s", L.why[0] ? " (cuDNN: " : "", L.why, L.why[0] ? ")" : "");
    return buf;
}

#endif
