/* test_cuda_kv.c - the KV-cache ops and everything built on them on the GPU, against the
 * CPU backend: kv_store and attention_kv_fwd op by op (decode and multi-token steps, GQA,
 * head dims 12..256), the cached forward of whole models (both families), greedy generation
 * (fp32 mode must reproduce transformers' continuation), perplexity and multiple choice.
 * fp32 mode ("cuda-fp32") with tight tolerances, bf16 mode ("cuda") with bf16 ones.
 * Prints "skipped: no GPU" and passes when no GPU is usable. tools/gpu-check.sh runs it. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "data/textio.h"
#include "data/tokenizer.h"
#include "eval/generate.h"
#include "eval/mcq.h"
#include "eval/ppl.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "model/infer.h"
#include "model/model.h"
#include "test.h"

/* max|gpu - cpu| / max|cpu| */
#define TOL_OP_F32 1e-5
#define TOL_OP_BF16 2e-2    /* one bf16 rounding of the output, fp32 arithmetic inside */
#define TOL_MODEL_F32 1e-4  /* logits after a few layers of fp32 matmuls (cuBLASLt's order) */
#define TOL_MODEL_BF16 0.15 /* bf16 weights and activations of the large-init fixtures, layers deep */
#define TOL_NLL_F32 1e-4    /* relative, mean NLL */
#define TOL_NLL_BF16 3e-2

static const Backend *cpu;

static float bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

static void *up(const Backend *be, const float *h, size_t n)
{
    void *d = be->alloc(n * be->act_size + 16);
    be->upload_act(d, h, n);
    return d;
}

static float *down(const Backend *be, const void *d, size_t n)
{
    float *h = xmalloc(n * sizeof(float) + 4);
    be->download_act(h, d, n);
    return h;
}

/* Positions 0..pos0-1 stored in one kv_store, then T new ones stored and attended to: the
 * GPU result against causal attention over the whole sequence on the CPU. */
static void check_attention_kv(const Backend *gpu, int B, int T, int nh, int nkv, int hd, int pos0, int cap,
                               uint64_t seed)
{
    int S = pos0 + T, row = (nh + 2 * nkv) * hd;
    size_t nfull = (size_t)B * S * row;
    float *qkv = xmalloc(nfull * sizeof(float));
    Rng r;
    rng_seed(&r, seed, 3);
    for (size_t i = 0; i < nfull; i++) qkv[i] = (float)rng_normal(&r);
    if (gpu->act_dtype == DTYPE_BF16)
        for (size_t i = 0; i < nfull; i++) qkv[i] = bf16_round(qkv[i]);
    /* CPU reference: attention over the full sequence */
    float *ref = xmalloc((size_t)B * S * nh * hd * sizeof(float)),
          *lse = xmalloc((size_t)B * nh * S * sizeof(float));
    cpu->attention_fwd(ref, lse, qkv, B, S, nh, nkv, hd);
    /* the prefix and the new rows as separate (B, len, row) blocks */
    float *pre = xmalloc(((size_t)B * pos0 + 1) * row * sizeof(float)),
          *suf = xmalloc((size_t)B * T * row * sizeof(float));
    for (int b = 0; b < B; b++) {
        memcpy(pre + (size_t)b * pos0 * row, qkv + (size_t)b * S * row, (size_t)pos0 * row * sizeof(float));
        memcpy(suf + (size_t)b * T * row, qkv + ((size_t)b * S + pos0) * row,
               (size_t)T * row * sizeof(float));
    }
    size_t ncache = (size_t)B * nkv * cap * hd;
    void *kc = gpu->alloc(ncache * gpu->act_size), *vc = gpu->alloc(ncache * gpu->act_size);
    void *dpre = up(gpu, pre, (size_t)B * pos0 * row + 1), *dsuf = up(gpu, suf, (size_t)B * T * row);
    void *dout = gpu->alloc((size_t)B * T * nh * hd * gpu->act_size);
    if (pos0) gpu->kv_store(kc, vc, dpre, B, pos0, nh, nkv, hd, 0, cap);
    gpu->kv_store(kc, vc, dsuf, B, T, nh, nkv, hd, pos0, cap);
    gpu->attention_kv_fwd(dout, dsuf, kc, vc, B, T, nh, nkv, hd, pos0, cap);
    float *out = down(gpu, dout, (size_t)B * T * nh * hd);
    float *want = xmalloc((size_t)B * T * nh * hd * sizeof(float));
    for (int b = 0; b < B; b++)
        memcpy(want + (size_t)b * T * nh * hd, ref + ((size_t)b * S + pos0) * nh * hd,
               (size_t)T * nh * hd * sizeof(float));
    double e = rel_err_max(out, want, (size_t)B * T * nh * hd);
    double tol = gpu->act_dtype == DTYPE_BF16 ? TOL_OP_BF16 : TOL_OP_F32;
    CHECKF(e <= tol, "[%s] B %d T %d nh %d nkv %d hd %d pos0 %d: rel err %.3g > %.3g", gpu->name, B, T, nh,
           nkv, hd, pos0, e, tol);
    /* the cache holds exactly the k and v values (a copy, no rounding beyond the act type) */
    float *kh = down(gpu, kc, ncache), *vh = down(gpu, vc, ncache);
    float *kw = xcalloc(ncache, sizeof(float)), *vw = xcalloc(ncache, sizeof(float));
    cpu->kv_store(kw, vw, qkv, B, S, nh, nkv, hd, 0, cap); /* all S positions at once on the CPU */
    int same = 1;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nkv; h++)
            for (int s = 0; s < S; s++)
                for (int d = 0; d < hd; d++) {
                    size_t i = (((size_t)b * nkv + h) * cap + s) * hd + d;
                    same &= kh[i] == kw[i] && vh[i] == vw[i];
                }
    CHECKF(same, "[%s] kv_store: the cache differs from the CPU's", gpu->name);
    void *bufs[] = {kc, vc, dpre, dsuf, dout};
    for (size_t i = 0; i < ARRAY_LEN(bufs); i++) gpu->free(bufs[i]);
    free(qkv);
    free(ref);
    free(lse);
    free(pre);
    free(suf);
    free(out);
    free(want);
    free(kh);
    free(vh);
    free(kw);
    free(vw);
}

static void test_attention_kv(const Backend *gpu)
{
    int cases[][7] = {
        /* B, T, nh, nkv, hd, pos0, cap */
        {1, 1, 12, 12, 64, 37, 64}, {2, 1, 12, 12, 64, 0, 8},   {3, 3, 8, 2, 128, 5, 16},
        {1, 1, 4, 1, 12, 200, 256}, {2, 2, 2, 2, 256, 9, 11},   {4, 1, 16, 4, 64, 600, 640},
        {1, 5, 6, 3, 16, 0, 5},     {2, 1, 4, 2, 48, 300, 301},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        int *c = cases[i];
        check_attention_kv(gpu, c[0], c[1], c[2], c[3], c[4], c[5], c[6], i);
    }
}

/* -------------------------------------------------------------- models */

static Model *load(const char *dir, const Backend *be)
{
    Model *m = hf_load_model(dir, be, 0);
    CHECKF(m != NULL, "%s: %s", dir, err_get());
    return m;
}

/* The cached forward (prompt of 6 in chunks of 4, then single tokens, 2 rows) on both backends. */
static void check_cached_model(const Backend *gpu, const char *dir)
{
    Model *mc = load(dir, cpu), *mg = load(dir, gpu);
    if (!mc || !mg) goto out;
    int V = mc->cfg.vocab_size, B = 2, T = MIN(mc->cfg.max_seq_len, 24), P = 6;
    KVCache *kc = kv_cache_create(mc, B, T, 4), *kg = kv_cache_create(mg, B, T, 4);
    int32_t *ids = xmalloc((size_t)B * T * sizeof(int32_t)), step[2];
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)((i * 31 + 7) % V);
    int32_t prompt[12];
    for (int b = 0; b < B; b++) memcpy(prompt + b * P, ids + (size_t)b * T, (size_t)P * sizeof(int32_t));
    const float *lc = model_forward_cached(mc, kc, prompt, P);
    const float *lg = model_forward_cached(mg, kg, prompt, P);
    double worst = 0;
    for (int t = P; lc && lg; t++) {
        worst = fmax(worst, rel_err_max(lg, lc, (size_t)B * V));
        if (t == T) break;
        for (int b = 0; b < B; b++) step[b] = ids[(size_t)b * T + t];
        lc = model_forward_cached(mc, kc, step, 1);
        lg = model_forward_cached(mg, kg, step, 1);
    }
    double tol = gpu->act_dtype == DTYPE_BF16 ? TOL_MODEL_BF16 : TOL_MODEL_F32;
    fprintf(stderr, "  [%s] %s: cached logits rel err %.3g\n", gpu->name, dir, worst);
    CHECKF(worst <= tol, "[%s] %s: cached logits rel err %.3g > %.3g", gpu->name, dir, worst, tol);
    kv_cache_free(mc, kc);
    kv_cache_free(mg, kg);
    free(ids);
out:
    model_free(mc);
    model_free(mg);
}

/* transformers' greedy continuation (tests/fixtures/NAME/reference.safetensors) */
static void check_greedy(const Backend *gpu, const char *name)
{
    char dir[512], ref[512];
    snprintf(dir, sizeof(dir), "%s/%s/model", test_fixtures(), name);
    snprintf(ref, sizeof(ref), "%s/%s/reference.safetensors", test_fixtures(), name);
    StFile f;
    if (st_open(&f, ref)) {
        CHECKF(0, "%s", err_get());
        return;
    }
    const StTensor *tp = st_find(&f, "greedy.prompt"), *to = st_find(&f, "greedy.output");
    Model *m = load(dir, gpu);
    if (m && tp && to) {
        int P = (int)tp->shape[1], NEW = (int)to->shape[1];
        GenOptions o = {.max_tokens = NEW, .sampler = {0.0f, 0, 1.0f}, .batch = 2, .eos_id = -1};
        GenResult r;
        CHECKF(generate_run(m, tp->data, P, &o, &r) == 0, "%s", err_get());
        int same = r.n_ids[0] == NEW && !memcmp(r.ids[0], to->data, (size_t)NEW * sizeof(int32_t));
        int agree = 0;
        for (int k = 0; k < r.n_ids[0] && k < NEW; k++)
            agree += r.ids[0][k] == ((const int32_t *)to->data)[k];
        if (gpu->act_dtype == DTYPE_F32)
            CHECKF(same, "[%s] %s: greedy differs from transformers' generate()", gpu->name, name);
        else
            fprintf(stderr, "  [%s] %s: greedy agrees with transformers on %d of %d tokens (bf16)\n",
                    gpu->name, name, agree, NEW);
        CHECK(r.n_ids[1] == r.n_ids[0] && !memcmp(r.ids[0], r.ids[1], (size_t)r.n_ids[0] * sizeof(int32_t)));
        gen_result_free(&r);
    }
    model_free(m);
    st_close(&f);
}

/* ppl and mcq on the GPU against the CPU, on the eval fixture model with a tokenizer */
static void check_eval(const Backend *gpu)
{
    char dir[512], txt[512], data[512];
    snprintf(dir, sizeof(dir), "%s/eval/gpt2", test_fixtures());
    snprintf(txt, sizeof(txt), "%s/eval/ppl.txt", test_fixtures());
    snprintf(data, sizeof(data), "%s/eval/hellaswag.jsonl", test_fixtures());
    Model *mc = load(dir, cpu), *mg = load(dir, gpu);
    Tokenizer *tok = tokenizer_load(dir);
    size_t len;
    char *text = text_read_file(txt, &len);
    if (!mc || !mg || !tok || !text) goto out;
    int32_t *ids = NULL;
    long n = tokenizer_encode(tok, text, len, &ids);
    PplOptions po = {.ctx = 64, .stride = 24, .batch = 4};
    PplResult rc, rg;
    CHECK(ppl_run(mc, ids, (size_t)n, &po, tok, &rc) == 0);
    CHECKF(ppl_run(mg, ids, (size_t)n, &po, tok, &rg) == 0, "%s", err_get());
    double tol = gpu->act_dtype == DTYPE_BF16 ? TOL_NLL_BF16 : TOL_NLL_F32;
    CHECK(rg.tokens == rc.tokens);
    CHECKF(fabs(rg.nll - rc.nll) <= tol * rc.nll, "[%s] ppl nll %.6f vs cpu %.6f", gpu->name, rg.nll, rc.nll);
    free(ids);
    McqSet set;
    if (!mcq_load(data, MCQ_HELLASWAG, 0, 0, &set)) {
        McqOptions mo = {.ctx = 64, .batch = 3};
        McqResult a, b;
        CHECK(mcq_score(mc, tok, &set, &mo, &a) == 0);
        CHECKF(mcq_score(mg, tok, &set, &mo, &b) == 0, "%s", err_get());
        double worst = 0;
        for (int i = 0; i < set.n; i++)
            for (int c = 0; c < set.items[i].n; c++) worst = fmax(worst, fabs(a.ll[i][c] - b.ll[i][c]));
        double ll_tol = gpu->act_dtype == DTYPE_BF16 ? 0.5 : 1e-3; /* nats, sums over ~10 tokens */
        CHECKF(worst <= ll_tol, "[%s] mcq log-likelihoods differ by %.3g", gpu->name, worst);
        if (gpu->act_dtype == DTYPE_F32) CHECK(a.acc == b.acc && a.acc_norm == b.acc_norm);
        mcq_result_free(&a);
        mcq_result_free(&b);
        mcq_set_free(&set);
    }
out:
    free(text);
    if (tok) tokenizer_free(tok);
    model_free(mc);
    model_free(mg);
}

static const Backend *g_gpu;

static void test_ops(void)
{
    test_attention_kv(g_gpu);
}

static void test_models(void)
{
    const char *names[] = {"gpt2", "llama", "qwen2"};
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        char dir[512];
        snprintf(dir, sizeof(dir), "%s/%s/model", test_fixtures(), names[i]);
        check_cached_model(g_gpu, dir);
        check_greedy(g_gpu, names[i]);
    }
}

static void test_eval(void)
{
    check_eval(g_gpu);
}

int main(void)
{
    cpu = backend_cpu();
    const Backend *gpu16 = backend_cuda(1);
    if (getenv("ANVIL_TEST_CUDA_SELFCHECK")) gpu16 = cpu; /* the test against itself, for test bugs */
    if (!gpu16) {
        char why[ANVIL_ERR_MAX + 16];
        snprintf(why, sizeof(why), "no GPU (%s)", err_get());
        return test_skip("test_cuda_kv", why);
    }
    const Backend *gpu32 = gpu16 == cpu ? cpu : backend_cuda(0);
    const Backend *gpus[2] = {gpu32, gpu16};
    for (int k = 0; k < 2; k++) {
        g_gpu = gpus[k];
        fprintf(stderr, "== %s\n", g_gpu->name);
        RUN(test_ops);
        RUN(test_models);
        RUN(test_eval);
    }
    return test_summary();
}
