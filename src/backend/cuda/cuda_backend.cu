/* cuda_backend.cu - the CUDA backend: device context, memory, conversions,
 * per-op profiling, the switches (Backend.configure) and the two op tables
 * (bf16 compute / fp32 parity).
 *
 * Every op is launched on one stream, so ops run in the order the model
 * calls them and scratch memory can be reused by consecutive ops. In the
 * deterministic mode (BackendOptions.deterministic) no kernel uses atomics and
 * every reduction runs in a fixed order, so repeated runs give bit-identical
 * results; the default mode also uses the fused attention backward (fp32
 * atomics for dQ), cuDNN's attention and GEMM algorithms chosen by timing.
 * The backend reads no switch from the environment: until configure() is
 * called the options are all zero, the defaults. Only the diagnostics
 * ANVIL_CUDA_PROFILE=1 (per-op timing) and ANVIL_CUDA_MEMLOG=1 (the blocks held at the
 * high-water mark, with their call stacks, printed at exit) are read, once; neither changes a result. */
#include <dlfcn.h>
#include <execinfo.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.cuh"

CudaCtx g_cu;

/* cuBLASLt workspace: 32 MiB is what cuBLAS itself recommends for Hopper. */
#define LT_WORKSPACE_BYTES ((size_t)32 << 20)
#define MIB (1024.0 * 1024.0)

static std::unordered_map<void *, size_t> *g_sizes; /* live cuda_malloc blocks */
static char g_device_name[256];

/* ANVIL_CUDA_MEMLOG=1: every live block's call stack, and a copy of them each time the high-water mark
 * grows by 1 MiB or more (and at a reset of the mark); at exit the last copy, largest first, its frames as module+offset (for
 * addr2line on the same binary). */
#define MEMLOG_FRAMES 8
struct MemSite {
    size_t bytes;
    int n;
    void *bt[MEMLOG_FRAMES];
};
static std::unordered_map<void *, MemSite> *g_sites;
static std::vector<MemSite> *g_peak_sites;
static size_t g_peak_logged;

static void memlog_print(void)
{
    std::vector<MemSite> v = *g_peak_sites;
    std::sort(v.begin(), v.end(), [](const MemSite &a, const MemSite &b) { return a.bytes > b.bytes; });
    size_t tot = 0;
    for (const MemSite &s : v) tot += s.bytes;
    fprintf(stderr, "memlog: %zu blocks, %.1f MiB at the last logged high-water mark (peak %.1f MiB)\n", v.size(),
            tot / MIB, g_cu.peak / MIB);
    for (const MemSite &s : v) {
        if (s.bytes < ((size_t)1 << 20)) break;
        fprintf(stderr, "memlog: %10.1f MiB", s.bytes / MIB);
        for (int i = 1; i < s.n; i++) {
            Dl_info info;
            if (dladdr(s.bt[i], &info) && info.dli_fname) {
                const char *b = strrchr(info.dli_fname, '/');
                fprintf(stderr, " %s+0x%lx", b ? b + 1 : info.dli_fname,
                        (unsigned long)((char *)s.bt[i] - (char *)info.dli_fbase));
            }
        }
        fprintf(stderr, "\n");
    }
}

static void memlog_snapshot(void)
{
    g_peak_sites->clear();
    for (const auto &kv : *g_sites) g_peak_sites->push_back(kv.second);
    g_peak_logged = g_cu.in_use;
}

static void memlog_alloc(void *p, size_t bytes)
{
    MemSite s;
    s.bytes = bytes;
    s.n = backtrace(s.bt, MEMLOG_FRAMES);
    (*g_sites)[p] = s;
    if (g_cu.in_use == g_cu.peak && g_cu.in_use >= g_peak_logged + ((size_t)1 << 20)) memlog_snapshot();
}

void cuda_fail(const char *lib, const char *msg, const char *expr, const char *file, int line)
{
    fatal("%s:%d: %s error: %s (in `%s`)", file, line, lib, msg, expr);
}

int cuda_ctx_init(void)
{
    if (g_cu.ready) return 0;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        err_set("no CUDA GPU found (%s); use device: cpu",
                e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount returned 0 devices");
        cudaGetLastError(); /* clear the sticky error so later calls do not see it */
        return -1;
    }
    g_sizes = new std::unordered_map<void *, size_t>();
    const char *ml = getenv("ANVIL_CUDA_MEMLOG"); /* before the first block (the cuBLASLt workspace) */
    if (ml && atoi(ml)) {
        g_sites = new std::unordered_map<void *, MemSite>();
        g_peak_sites = new std::vector<MemSite>();
        atexit(memlog_print);
    }
    CUDA_CHECK(cudaSetDevice(0));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    snprintf(g_device_name, sizeof(g_device_name), "%s", prop.name);
    g_cu.device = 0;
    g_cu.sm_count = prop.multiProcessorCount;
    CUDA_CHECK(cudaStreamCreateWithFlags(&g_cu.stream, cudaStreamNonBlocking));
    CUDA_CHECK(cublasLtCreate(&g_cu.lt));
    g_cu.ready = 1;
    g_cu.lt_workspace_size = LT_WORKSPACE_BYTES;
    g_cu.lt_workspace = cuda_malloc(LT_WORKSPACE_BYTES);
    const char *prof = getenv("ANVIL_CUDA_PROFILE"); /* a diagnostic: events around every op */
    if (prof && atoi(prof)) cuda_prof_enable(1);
    return 0;
}

/* ---------------------------------------------------------------- memory */

void *cuda_malloc(size_t bytes)
{
    void *p = NULL;
    if (bytes == 0) bytes = 1;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        fatal("CUDA out of memory: asked for %.1f MiB with %.1f MiB free of %.1f MiB (anvil holds %.1f MiB); "
              "lower the batch size (--batch / train.batch_size), the sequence length (--seq), or raise "
              "activation recompute (--recompute 1 or 2)",
              bytes / MIB, fr / MIB, tot / MIB, g_cu.in_use / MIB);
    }
    (*g_sizes)[p] = bytes;
    g_cu.in_use += bytes;
    if (g_cu.in_use > g_cu.peak) g_cu.peak = g_cu.in_use;
    if (g_sites) memlog_alloc(p, bytes);
    return p;
}

void cuda_free(void *p)
{
    if (!p) return;
    auto it = g_sizes->find(p);
    if (it != g_sizes->end()) {
        g_cu.in_use -= it->second;
        g_sizes->erase(it);
    }
    if (g_sites) g_sites->erase(p);
    CUDA_CHECK(cudaFree(p));
}

void *cuda_scratch(size_t bytes)
{
    if (bytes > g_cu.scratch_size) {
        /* cudaFree waits for the device, so no queued op still reads the old block */
        cuda_free(g_cu.scratch);
        size_t grow = bytes + bytes / 4;
        g_cu.scratch = cuda_malloc(grow);
        g_cu.scratch_size = grow;
    }
    return g_cu.scratch;
}

extern "C" void cuda_mem_stats(size_t *in_use, size_t *peak, size_t *dev_free, size_t *dev_total)
{
    size_t fr = 0, tot = 0;
    if (g_cu.ready) CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
    if (in_use) *in_use = g_cu.in_use;
    if (peak) *peak = g_cu.peak;
    if (dev_free) *dev_free = fr;
    if (dev_total) *dev_total = tot;
}

extern "C" void cuda_mem_reset_peak(void)
{
    g_cu.peak = g_cu.in_use;
    if (g_sites) memlog_snapshot(); /* the blocks of the new high-water mark, from here */
}
extern "C" const char *cuda_device_name(void) { return g_device_name; }
extern "C" void *cuda_stream(void) { return (void *)g_cu.stream; }

static void *cu_alloc(size_t bytes)
{
    void *p = cuda_malloc(bytes);
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, g_cu.stream));
    return p;
}

static void cu_free_op(void *p) { cuda_free(p); }

/* Pinned, mapped host memory: with unified addressing the host pointer is the device's too. */
static void *cu_alloc_host(size_t bytes)
{
    void *p = NULL, *d = NULL;
    if (bytes == 0) bytes = 1;
    if (cudaHostAlloc(&p, bytes, cudaHostAllocMapped | cudaHostAllocPortable) != cudaSuccess) {
        cudaGetLastError();
        fatal("out of pinned host memory: asked for %.1f MiB (for state kept off the GPU: train.offload_*)",
              bytes / MIB);
    }
    CUDA_CHECK(cudaHostGetDevicePointer(&d, p, 0));
    if (d != p) fatal("cuda: pinned host memory has a device address of its own (no unified addressing)");
    memset(p, 0, bytes);
    return p;
}

static void cu_free_host(void *p)
{
    if (!p) return;
    CUDA_CHECK(cudaStreamSynchronize(g_cu.stream)); /* no queued op still reads it */
    CUDA_CHECK(cudaFreeHost(p));
}

static void cu_zero(void *p, size_t bytes)
{
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, g_cu.stream));
}

static void cu_upload(void *dst, const void *src, size_t bytes)
{
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, g_cu.stream));
    /* the host buffer may be reused by the caller right after we return */
    CUDA_CHECK(cudaStreamSynchronize(g_cu.stream));
}

static void cu_download(void *dst, const void *src, size_t bytes)
{
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, g_cu.stream));
    CUDA_CHECK(cudaStreamSynchronize(g_cu.stream));
}

static void cu_sync(void) { CUDA_CHECK(cudaStreamSynchronize(g_cu.stream)); }

static void cu_copy(void *dst, const void *src, size_t bytes)
{
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, g_cu.stream));
}

/* ------------------------------------------------------------ conversions */

/* Host <-> device transfers of act values go through an fp32 scratch of at most this many values. */
static const size_t CONVERT_CHUNK = (size_t)4 << 20;

template <typename Tout, typename Tin> __global__ void convert_kernel(Tout *dst, const Tin *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = from_f<Tout>(to_f(src[i]));
}

template <typename Tout, typename Tin> static void convert(Tout *dst, const Tin *src, size_t n)
{
    if (!n) return;
    convert_kernel<Tout, Tin><<<grid_for(n, 256), 256, 0, g_cu.stream>>>(dst, src, n);
    CUDA_CHECK_LAUNCH();
}

template <typename T> static void cu_cast_to_act(void *dst, const float *src, size_t n)
{
    if ((const void *)dst == (const void *)src) return;
    CUDA_PROF("cast_to_act");
    convert<T, float>((T *)dst, src, n);
}

template <typename T> static void cu_download_act(float *host_dst, const void *src, size_t n)
{
    if (sizeof(T) == sizeof(float)) {
        cu_download(host_dst, src, n * sizeof(float));
        return;
    }
    /* by chunks: the grow-only scratch must not keep the largest tensor's fp32 size (a 7B model's
     * embedding: 625 MiB) for the rest of the run */
    float *tmp = (float *)cuda_scratch(std::min(n, CONVERT_CHUNK) * sizeof(float));
    for (size_t i = 0; i < n; i += CONVERT_CHUNK) {
        size_t c = std::min(n - i, CONVERT_CHUNK);
        convert<float, T>(tmp, (const T *)src + i, c);
        cu_download(host_dst + i, tmp, c * sizeof(float));
    }
}

template <typename T> static void cu_upload_act(void *dst, const float *host_src, size_t n)
{
    if (sizeof(T) == sizeof(float)) {
        cu_upload(dst, host_src, n * sizeof(float));
        return;
    }
    float *tmp = (float *)cuda_scratch(std::min(n, CONVERT_CHUNK) * sizeof(float));
    for (size_t i = 0; i < n; i += CONVERT_CHUNK) { /* cu_upload waits: the next chunk may reuse tmp */
        size_t c = std::min(n - i, CONVERT_CHUNK);
        cu_upload(tmp, host_src + i, c * sizeof(float));
        convert<T, float>((T *)dst + i, tmp, c);
    }
}

/* ------------------------------------------------------------ profiling */

/* Events recorded before a flush; a step of a 24-layer model makes ~600 op calls. */
#define PROF_MAX_EVENTS 8192

static struct {
    int on;
    int n;            /* completed pairs pending */
    int open;         /* a begin without its end */
    cudaEvent_t *ev;  /* 2 * PROF_MAX_EVENTS */
    const char **name;
    std::unordered_map<std::string, std::pair<double, long>> *total; /* ms, calls */
} g_prof;

static void prof_flush(void)
{
    if (!g_prof.n) return;
    CUDA_CHECK(cudaEventSynchronize(g_prof.ev[2 * g_prof.n - 1]));
    for (int i = 0; i < g_prof.n; i++) {
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, g_prof.ev[2 * i], g_prof.ev[2 * i + 1]));
        auto &t = (*g_prof.total)[g_prof.name[i]];
        t.first += ms;
        t.second += 1;
    }
    g_prof.n = 0;
}

extern "C" void cuda_prof_enable(int on)
{
    if (on && !g_prof.ev) {
        g_prof.ev = (cudaEvent_t *)xcalloc(2 * PROF_MAX_EVENTS, sizeof(cudaEvent_t));
        g_prof.name = (const char **)xcalloc(PROF_MAX_EVENTS, sizeof(char *));
        for (int i = 0; i < 2 * PROF_MAX_EVENTS; i++) CUDA_CHECK(cudaEventCreate(&g_prof.ev[i]));
        g_prof.total = new std::unordered_map<std::string, std::pair<double, long>>();
    }
    g_prof.on = on;
}

int cuda_prof_on(void) { return g_prof.on; }

const char *cuda_prof_intern(const char *name)
{
    static std::set<std::string> *names = new std::set<std::string>();
    return names->insert(name).first->c_str();
}

void cuda_prof_begin(const char *name)
{
    if (!g_prof.on || g_prof.open) return; /* ops that call ops are timed as the outer one */
    if (g_prof.n == PROF_MAX_EVENTS) prof_flush();
    g_prof.name[g_prof.n] = name;
    CUDA_CHECK(cudaEventRecord(g_prof.ev[2 * g_prof.n], g_cu.stream));
    g_prof.open = 1;
}

void cuda_prof_end(void)
{
    if (!g_prof.on || !g_prof.open) return;
    CUDA_CHECK(cudaEventRecord(g_prof.ev[2 * g_prof.n + 1], g_cu.stream));
    g_prof.open = 0;
    g_prof.n++;
}

extern "C" void cuda_prof_print(FILE *f, int steps)
{
    if (!g_prof.total) return;
    prof_flush();
    std::vector<std::pair<std::string, std::pair<double, long>>> rows(g_prof.total->begin(), g_prof.total->end());
    std::sort(rows.begin(), rows.end(), [](auto &a, auto &b) { return a.second.first > b.second.first; });
    double sum = 0;
    for (auto &r : rows) sum += r.second.first;
    if (steps < 1) steps = 1;
    fprintf(f, "| op | calls/step | ms/step | share |\n|---|---:|---:|---:|\n");
    for (auto &r : rows)
        fprintf(f, "| %s | %.0f | %.3f | %.1f%% |\n", r.first.c_str(), (double)r.second.second / steps,
                r.second.first / steps, sum > 0 ? 100.0 * r.second.first / sum : 0.0);
    fprintf(f, "| total (sum of ops) | | %.3f | |\n", sum / steps);
    g_prof.total->clear();
}

/* ------------------------------------------------------------ the tables */

/* One set of switches for the whole context (both tables). A value outside its range is a bug of
 * the caller (the config and environment parsers accept only the names of backend.h). */
static void cu_configure(const BackendOptions *o)
{
    const struct {
        const char *name;
        int value, max;
    } f[] = {{"attention", o->attention, ATTN_IMPL_ANVIL},
             {"gemm_tune", o->gemm_tune, GEMM_TUNE_ALWAYS},
             {"deterministic", o->deterministic, 1},
             {"lm_head_chunk_rows", o->lm_head_chunk_rows, INT32_MAX},
             {"attn_bwd_layout", o->attn_bwd_layout, 2},
             {"attn_launch_order", o->attn_launch_order, 2},
             {"tern_mm_variant", o->tern_mm_variant, 4}};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        if (f[i].value < 0 || f[i].value > f[i].max)
            fatal("cuda: configure: %s = %d is out of range (0 .. %d)", f[i].name, f[i].value, f[i].max);
    g_cu.opts = *o;
    g_cu.deterministic = o->deterministic != 0;
}

static void cu_mem_stats_op(size_t *in_use, size_t *peak) { cuda_mem_stats(in_use, peak, NULL, NULL); }

template <typename T> static void fill_table(Backend *be, const char *name)
{
    memset(be, 0, sizeof(*be));
    be->name = name;
    be->act_dtype = sizeof(T) == 2 ? DTYPE_BF16 : DTYPE_F32;
    be->act_size = sizeof(T);
    be->alloc = cu_alloc;
    be->free = cu_free_op;
    be->alloc_host = cu_alloc_host;
    be->free_host = cu_free_host;
    be->zero = cu_zero;
    be->upload = cu_upload;
    be->download = cu_download;
    be->sync = cu_sync;
    be->cast_to_act = cu_cast_to_act<T>;
    be->download_act = cu_download_act<T>;
    be->upload_act = cu_upload_act<T>;
    be->matmul_fwd = cu_matmul_fwd<T>;
    be->matmul_bwd = cu_matmul_bwd<T>;
    be->attention_fwd = cu_attention_fwd<T>;
    be->attention_bwd = cu_attention_bwd<T>;
    be->attention_len_fwd = cu_attention_len_fwd<T>;
    be->attention_len_bwd = cu_attention_len_bwd<T>;
    be->attention_drop_fwd = cu_attention_drop_fwd<T>;
    be->attention_drop_bwd = cu_attention_drop_bwd<T>;
    be->lm_head_xent = cu_lm_head_xent<T>;
    be->matmul_gelu_fwd = cu_matmul_gelu_fwd<T>;
    be->matmul_dgelu_bwd = cu_matmul_dgelu_bwd<T>;
    be->gemm = cu_gemm<T>;
    be->ragged_products = cu_ragged_products;
    be->dequant4 = cu_dequant4<T>;
    be->configure = cu_configure;
    be->mem_stats = cu_mem_stats_op;
    be->mem_reset_peak = cuda_mem_reset_peak;
    be->copy = cu_copy;
    cu_fill_ops<T>(be);
    cu_fill_kv_ops<T>(be);
    cu_fill_moe_ops<T>(be);
    cu_fill_ternary_ops<T>(be);
}

static Backend g_table_bf16, g_table_f32;

extern "C" const Backend *backend_cuda(int bf16_mode)
{
    if (cuda_ctx_init()) return NULL;
    if (bf16_mode) {
        if (!g_table_bf16.name) fill_table<bf16>(&g_table_bf16, "cuda");
        return &g_table_bf16;
    }
    if (!g_table_f32.name) fill_table<float>(&g_table_f32, "cuda-fp32");
    return &g_table_f32;
}
