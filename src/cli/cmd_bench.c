/* cmd_bench.c - `anvil bench`: training-step speed, FLOP rate and memory.
 *
 * One step is train_step (src/train/step.c), the very step `anvil train` runs: zero grads,
 * forward + loss, backward, global gradient norm and clipping, AdamW (without data loading).
 * Tokens are uniform random (speed does not depend on them). After --warmup steps, --steps are
 * timed one by one (the loss read-back synchronizes each step); the median is reported.
 *
 * FLOPs per token count the products actually run (model_flops_per_token, docs/benchmarks.md):
 * 6 per trainable weight of every product, 4 per frozen one (no weight gradient), plus causal
 * attention; embedding lookups count nothing. MFU divides the achieved rate by the GPU's dense
 * bf16 peak (989 TFLOP/s, H100/H200 SXM) and, beside it, by the rate the backend's own matmul
 * reaches on a large square product measured here (the "ceiling"). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "backend/backend.h"
#include "cli/args.h"
#include "cli/bench_ablate.h"
#include "cli/cli.h"
#include "core/error.h"
#include "core/rng.h"
#include "data/shard.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "model/model.h"
#include "train/freeze.h"
#include "train/optim.h"
#include "train/step.h"
#ifdef ANVIL_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_cudnn.h"
#endif

/* Dense bf16 tensor-core peak of an H100 / H200 SXM (NVIDIA datasheets, without sparsity). */
#define H100_BF16_PEAK 989e12
/* Optimizer settings of a typical GPT-2 run; they do not change the speed. */
#define BENCH_LR 6e-4f
#define BENCH_WD 0.1f
/* The share of positions an encoder's masked-LM bench scores (BERT's masking probability). */
#define BENCH_MLM_PROB 0.15
#define BENCH_CLIP 1.0
#define GIB (1024.0 * 1024.0 * 1024.0)

typedef struct {
    const char *model, *device, *json, *data, *freeze, *lora_targets, *quant;
    int lora_r, ablate, head_unfused, accum;
    int B, T, steps, warmup, recompute, profile, ceiling_n, print_every, lr_warmup;
    int offload_opt, offload_emb; /* --offload optimizer,embeddings */
    int recompute_layers;         /* --recompute-layers K: only the first K blocks recompute (-1: all) */
    float lr;
    float dropout, attn_dropout; /* --dropout, --attn-dropout: model.dropout, model.attn_dropout */
} BenchArgs;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *x, int n)
{
    qsort(x, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: anvil bench --model PRESET_OR_DIR [--batch B] [--seq T] [--steps N] [--warmup W]\n"
               "                   [--device cpu|cuda|cuda-fp32] [--recompute 0|1|2] [--json FILE] [--profile]\n"
               "                   [--ceiling-size M] [--data TOKENS.u32 [--print-every K]] [--lr X]\n"
               "                   [--lr-warmup K] [--freeze GLOB[,GLOB...]] [--offload optimizer,embeddings]\n"
               "                   [--recompute-layers K]\n"
               "                   [--lora R [--lora-targets M[,M...]]] [--quant nf4|fp4]\n"
               "                   [--head fused|unfused] [--accum N] [--ablate] [--dropout P] [--attn-dropout P]\n"
               "defaults: --batch 4 (cpu) / 16 (gpu), --seq 64 (cpu) / the model's window (gpu), --steps 10,\n"
               "          --warmup 3, --device cpu, --recompute 0, --lr 6e-4, --lr-warmup 0, --ceiling-size 1024\n"
               "          (cpu) / 8192 (gpu; 0 skips it), --print-every 0 (off), --head fused, --accum 1\n"
               "--head unfused computes the whole (N,V) logits, their softmax and the product back, instead\n"
               "of the fused LM-head loss; --accum N runs N micro-batches of --batch per optimizer step.\n"
               "--ablate measures the configuration given and each speed/memory switch turned off in turn\n"
               "(attention kernels, bf16, recompute levels, fused LM head, GEMM tuning, accumulation 8),\n"
               "each in its own process, and prints the Markdown table (with --json, the rows as JSON).\n"
               "--data trains on a token shard (anvil prepare's .tok, llm.c's .bin) or a little-endian uint32\n"
               "token file (consecutive windows, wrapping)\n"
               "instead of random tokens and prints the loss every K steps (a training curve).\n"
               "--freeze freezes the tensors whose Hugging Face names match (as model.freeze).\n"
               "--lora R trains rank-R adapters over a frozen base (lora.targets, default all-linear);\n"
               "--quant stores the base's block linears 4-bit (QLoRA; random weights, synthetic 4-bit states).\n"
               "--dropout and --attn-dropout train with model.dropout and model.attn_dropout (default 0).\n"
               "--offload keeps the AdamW moments and/or a frozen input embedding in host memory\n"
               "(train.offload_optimizer, train.offload_embeddings); --recompute-layers K recomputes the\n"
               "first K blocks only (train.recompute_layers).\n"
               "ANVIL_ATTENTION, ANVIL_GEMM_TUNE and ANVIL_DETERMINISTIC set the backend switches.\n"
               "presets: %s\n",
            model_preset_names());
}

static int parse_args(int argc, char **argv, BenchArgs *a)
{
    memset(a, 0, sizeof(*a));
    a->device = "cpu";
    a->B = -1;
    a->T = -1;
    a->steps = 10;
    a->warmup = 3;
    a->recompute_layers = -1;
    a->accum = 1;
    a->ceiling_n = -1;
    a->lr = BENCH_LR;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(f, "--profile")) {
            a->profile = 1;
            continue;
        }
        if (!strcmp(f, "--ablate")) {
            a->ablate = 1;
            continue;
        }
        if (i + 1 >= argc) return err_set("bench: %s needs a value (try --help)", f);
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(f, "--model")) a->model = v;
        else if (!strcmp(f, "--device")) a->device = v;
        else if (!strcmp(f, "--json")) a->json = v;
        else if (!strcmp(f, "--data")) a->data = v;
        else if (!strcmp(f, "--freeze")) a->freeze = v;
        else if (!strcmp(f, "--lora")) rc = cli_int(f, v, 1, &a->lora_r);
        else if (!strcmp(f, "--lora-targets")) a->lora_targets = v;
        else if (!strcmp(f, "--quant")) a->quant = v;
        else if (!strcmp(f, "--offload")) rc = cli_offload(v, &a->offload_opt, &a->offload_emb);
        else if (!strcmp(f, "--accum")) rc = cli_int(f, v, 1, &a->accum);
        else if (!strcmp(f, "--head")) {
            if (!strcmp(v, "fused")) a->head_unfused = 0;
            else if (!strcmp(v, "unfused")) a->head_unfused = 1;
            else rc = err_set("bench: --head: expected fused or unfused, got \"%s\"", v);
        }
        else if (!strcmp(f, "--print-every")) rc = cli_int(f, v, 1, &a->print_every);
        else if (!strcmp(f, "--lr-warmup")) rc = cli_int(f, v, 0, &a->lr_warmup);
        else if (!strcmp(f, "--lr")) {
            char *end;
            a->lr = strtof(v, &end);
            if (*end || !(a->lr > 0)) rc = err_set("bench: --lr: expected a positive number, got \"%s\"", v);
        }
        else if (!strcmp(f, "--batch")) rc = cli_int(f, v, 1, &a->B);
        else if (!strcmp(f, "--seq")) rc = cli_int(f, v, 1, &a->T);
        else if (!strcmp(f, "--steps")) rc = cli_int(f, v, 1, &a->steps);
        else if (!strcmp(f, "--warmup")) rc = cli_int(f, v, 0, &a->warmup);
        else if (!strcmp(f, "--recompute")) rc = cli_int(f, v, 0, &a->recompute);
        else if (!strcmp(f, "--recompute-layers")) rc = cli_int(f, v, 0, &a->recompute_layers);
        else if (!strcmp(f, "--ceiling-size")) rc = cli_int(f, v, 0, &a->ceiling_n);
        else if (!strcmp(f, "--dropout") || !strcmp(f, "--attn-dropout")) {
            char *end;
            float p = strtof(v, &end);
            if (*end || end == v || !(p >= 0 && p < 1)) rc = err_set("bench: %s: expected a probability in [0, 1), got \"%s\"", f, v);
            else *(f[2] == 'd' ? &a->dropout : &a->attn_dropout) = p;
        }
        else return err_set("bench: unknown option \"%s\" (try --help)", f);
        if (rc) return -1;
    }
    if (!a->model) return err_set("bench: --model PRESET_OR_DIR is required (presets: %s)", model_preset_names());
    if (a->recompute > RECOMPUTE_BLOCK) return err_set("bench: --recompute: expected 0, 1 or 2, got %d", a->recompute);
    return 0;
}

/* The tokens of an anvil or llm.c shard as int32, checked against the vocabulary. */
static int32_t *load_shard_tokens(const char *path, int vocab, size_t *n)
{
    Shard sh;
    if (shard_open(&sh, path)) return NULL;
    int32_t *t = xmalloc((sh.count ? sh.count : 1) * sizeof(int32_t));
    for (uint64_t i = 0; i < sh.count; i++) {
        uint32_t v = shard_token(&sh, i);
        if (v >= (uint32_t)vocab) {
            err_set("%s: token %u at index %llu is outside the model's vocabulary (%d)", path, v,
                    (unsigned long long)i, vocab);
            free(t);
            shard_close(&sh);
            return NULL;
        }
        t[i] = (int32_t)v;
    }
    *n = (size_t)sh.count;
    shard_close(&sh);
    return t;
}

/* --data: a token shard (anvil prepare's .tok, llm.c's .bin) or a raw little-endian uint32 file. */
static int32_t *load_tokens(const char *path, int vocab, size_t *n)
{
    if (shard_sniff(path) == 1) return load_shard_tokens(path, vocab, n);
    char *buf;
    size_t bytes;
    if (fs_read_file(path, &buf, &bytes)) return NULL;
    if (bytes % 4 || bytes < 8) {
        free(buf);
        err_set("%s: not a token shard, and not raw uint32 token ids (size %zu is not a multiple of 4, or too small)",
                path, bytes);
        return NULL;
    }
    *n = bytes / 4;
    int32_t *t = xmalloc(bytes);
    for (size_t i = 0; i < *n; i++) {
        const unsigned char *b = (const unsigned char *)buf + 4 * i;
        uint32_t v = b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        if (v >= (uint32_t)vocab) {
            free(buf), free(t);
            err_set("%s: token %u at index %zu is outside the model's vocabulary (%d)", path, v, i, vocab);
            return NULL;
        }
        t[i] = (int32_t)v;
    }
    free(buf);
    return t;
}

static int load_config(const char *model, ModelConfig *c)
{
    if (fs_is_dir(model)) return hf_read_config(model, c);
    if (model_preset(c, model)) return -1;
    return model_config_finish(c);
}

/* Rate of the backend's matmul_fwd on an (n,n) x (n,n)^T product: FLOP/s, median of reps. */
static double measure_ceiling(const Backend *be, int n, int reps)
{
    size_t e = (size_t)n * n;
    float *h = xmalloc(e * sizeof(float));
    Rng r;
    rng_seed(&r, 1234, 0);
    for (size_t i = 0; i < e; i++) h[i] = rng_float(&r) - 0.5f; /* random, not zeros: zeros run faster */
    void *a = be->alloc(e * be->act_size), *w = be->alloc(e * be->act_size), *o = be->alloc(e * be->act_size);
    be->upload_act(a, h, e);
    for (size_t i = 0; i < e; i++) h[i] = rng_float(&r) - 0.5f;
    be->upload_act(w, h, e);
    free(h);
    be->matmul_fwd(o, a, w, NULL, n, n, n); /* warm-up: plan, heuristics, clocks */
    be->matmul_fwd(o, a, w, NULL, n, n, n);
    be->sync();
    double *t = xmalloc(sizeof(double) * (size_t)reps);
    for (int k = 0; k < reps; k++) {
        double t0 = now_s();
        be->matmul_fwd(o, a, w, NULL, n, n, n);
        be->sync();
        t[k] = now_s() - t0;
    }
    double flops = 2.0 * n * (double)n * n / median(t, reps);
    free(t);
    be->free(a), be->free(w), be->free(o);
    return flops;
}

static double peak_memory_bytes(const Backend *be)
{
#ifdef ANVIL_CUDA
    if (strncmp(be->name, "cuda", 4) == 0) {
        size_t peak;
        cuda_mem_stats(NULL, &peak, NULL, NULL);
        return (double)peak;
    }
#endif
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss * 1024.0; /* kilobytes on Linux: the whole process, not just buffers */
}

static const char *device_name(const Backend *be)
{
#ifdef ANVIL_CUDA
    if (strncmp(be->name, "cuda", 4) == 0) return cuda_device_name();
#endif
    (void)be;
    return "CPU";
}

/* --offload embeddings: the whole store, the frozen input embedding in host memory. */
static void bench_emb_host_plan(void *ctx, const ParamTable *pt, ParamAllocPlan *plan)
{
    (void)ctx;
    memset(plan, 0, sizeof(*plan));
    if (!params_emb_host_ok(pt)) fatal("bench: --offload embeddings: %s", err_get());
    plan->emb_host = 1;
}

/* The model with --freeze applied, GPT-2-initialized, with activations reserved. */
static Model *bench_model(const BenchArgs *a, const ModelConfig *c, const Backend *be)
{
    if (a->lora_r || a->quant) {
        TrainConfig tc;
        train_config_defaults(&tc);
        if (a->lora_targets && train_config_set_key(&tc, "lora.targets", a->lora_targets, "--lora-targets")) return NULL;
        const char *names[CFG_LIST_MAX];
        for (int i = 0; i < tc.lora_targets.n; i++) names[i] = tc.lora_targets.item[i];
        LoraSpec ls = {.r = a->lora_r, .alpha = 2.0f * a->lora_r};
        if (a->lora_r && lora_sites_parse(names, tc.lora_targets.n, c->family, &ls.sites))
            return err_prefix("--lora-targets"), NULL;
        if (a->lora_r && lora_sites_moe(c, &ls.sites, !a->lora_targets || !strcmp(a->lora_targets, "all-linear")))
            return err_prefix("--lora-targets"), NULL;
        Q4Spec q = {.type = -1, .blocksize = Q4_DEFAULT_BLOCKSIZE, .nested = 1};
        if (a->quant && (q.type = q4_type_parse(a->quant)) < 0)
            return err_set("--quant: expected nf4 or fp4, got \"%s\"", a->quant), NULL;
        if (!a->lora_r) return err_set("--quant: a 4-bit base trains through adapters: add --lora R"), NULL;
        if (a->offload_emb && !be->alloc_host)
            return err_set("--offload embeddings: the %s backend has no host memory for its operands", be->name), NULL;
        ModelAlloc alloc = {.plan = a->offload_emb ? bench_emb_host_plan : NULL};
        Model *m = model_create_lora_alloc(c, be, &ls, 1, 1, &q, &alloc);
        if (!m) return NULL;
        model_init_gpt2(m, 1);
        model_init_lora(m, 1);
        model_set_recompute_layers(m, a->recompute_layers);
        if (model_reserve(m, a->B, a->T, a->recompute)) {
            model_free(m);
            return NULL;
        }
        return m;
    }
    ParamKind *kinds = NULL;
    if (a->freeze) {
        TrainConfig tc;
        train_config_defaults(&tc);
        if (train_config_set_key(&tc, "model.freeze", a->freeze, "--freeze")) return NULL;
        int bad;
        kinds = freeze_kinds(&tc.freeze, c, &bad);
        if (bad) return NULL;
    }
    Model *m = model_create_kinds(c, be, kinds);
    free(kinds);
    model_init_gpt2(m, 1);
    model_set_recompute_layers(m, a->recompute_layers);
    if (model_reserve(m, a->B, a->T, a->recompute)) {
        model_free(m);
        return NULL;
    }
    return m;
}

static void print_result(const BenchArgs *a, const ModelConfig *c, const Model *m, const Backend *be, double step,
                         double fpt, double ceiling, double peak_mem, const MemReport *mr)
{
    int is_cpu = !strcmp(a->device, "cpu");
    char accs[32] = "";
    if (a->accum > 1) snprintf(accs, sizeof(accs), " x %d micro-batches", a->accum);
    double tok_s = (double)a->accum * a->B * a->T / step, rate = fpt * tok_s;
    printf("model %s (%s, %.1fM params: %.1fM trainable, %.1fM frozen of which %.1fM 4-bit), device %s (%s), "
           "batch %d x %d%s, recompute %d%s\n",
           a->model, model_family_name(c->family), param_count_all(&m->pt) / 1e6, param_count(&m->pt) / 1e6,
           (param_count_all(&m->pt) - param_count(&m->pt)) / 1e6, param_count_kind(&m->pt, PARAM_NF4) / 1e6,
           be->name, device_name(be), a->B, a->T, accs, a->recompute, a->head_unfused ? ", LM head unfused" : "");
    if (c->moe_experts > 0)
        printf("experts %d top-%d: %.1fM parameters active per token; FLOPs and MFU count the active experts only\n",
               c->moe_experts, c->moe_top_k, param_count_active(&m->pt, c) / 1e6);
    printf("step %.2f ms (median of %d after %d warm-up), %.0f tokens/s\n", step * 1e3, a->steps, a->warmup, tok_s);
    printf("%.6g FLOP/token (products run: 6 per trainable weight, 4 per frozen, + attention), %.2f TFLOP/s "
           "achieved (%.1f GFLOP/s)\n",
           fpt, rate / 1e12, rate / 1e9);
    if (ceiling > 0)
        printf("matmul ceiling (%s %dx%dx%d): %.2f TFLOP/s (%.1f GFLOP/s); step reaches %.1f%% of it\n", be->name,
               a->ceiling_n, a->ceiling_n, a->ceiling_n, ceiling / 1e12, ceiling / 1e9, 100 * rate / ceiling);
    if (!is_cpu)
        printf("MFU %.1f%% of %.0f TFLOP/s (H100/H200 SXM dense bf16)\n", 100 * rate / H100_BF16_PEAK,
               H100_BF16_PEAK / 1e12);
    char line[512];
    mem_report_format(mr, line, sizeof(line));
    printf("memory: %s\n", line);
    printf("peak memory %.2f GiB (%s)\n", peak_mem / GIB,
           is_cpu ? "process max RSS" : "high-water of backend allocations");
    /* what each rank of a data-parallel run would hold per trainable parameter, from the allocations
     * measured here: ZeRO-1/2 shard the optimizer moments over the ranks (docs/distributed.md) */
    double P = (double)param_count(&m->pt), whole = (mr->weights + mr->master + mr->grads) / P, mom = mr->optim / P;
    if (P > 0)
        printf("state per rank, bytes per trainable parameter: dist.zero 0 %.2f | dist.zero 1 or 2 over 2 / 4 / 8 "
               "ranks %.2f / %.2f / %.2f\n",
               whole + mom, whole + mom / 2, whole + mom / 4, whole + mom / 8);
    char mfu[32] = "-", of_ceiling[32] = "-"; /* "-": not meaningful (CPU) or not measured (--ceiling-size 0) */
    if (!is_cpu) snprintf(mfu, sizeof(mfu), "%.1f%%", 100 * rate / H100_BF16_PEAK);
    if (ceiling > 0) snprintf(of_ceiling, sizeof(of_ceiling), "%.1f%%", 100 * rate / ceiling);
    printf("| impl | model | device | B | T | recompute | step ms | tokens/s | TFLOP/s | MFU | of ceiling | "
           "peak GiB |\n");
    printf("| anvil | %s | %s | %d | %d | %d | %.1f | %.0f | %.2f | %s | %s | %.2f |\n", a->model, device_name(be),
           a->B, a->T, a->recompute, step * 1e3, tok_s, rate / 1e12, mfu, of_ceiling, peak_mem / GIB);
}

static int write_json(const BenchArgs *a, const Backend *be, double step, double fpt, double ceiling,
                      double peak_mem, float first_loss, float last_loss, const char *attn, const MemReport *mr)
{
    double tok_s = (double)a->accum * a->B * a->T / step, rate = fpt * tok_s;
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:s}",
                          "impl", "anvil", "model", a->model, "device", be->name, "device_name", device_name(be),
                          "batch", a->B, "seq", a->T, "recompute", a->recompute, "steps", a->steps, "step_ms",
                          step * 1e3, "tokens_per_s", tok_s, "flops_per_token", fpt, "tflops", rate / 1e12, "mfu_989",
                          rate / H100_BF16_PEAK, "ceiling_tflops", ceiling / 1e12, "of_ceiling",
                          ceiling > 0 ? rate / ceiling : 0.0, "peak_gib", peak_mem / GIB, "final_loss",
                          (double)last_loss, "attention", attn);
    json_object_set_new(j, "first_loss", json_real(first_loss));
    json_t *mem = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "weights", (json_int_t)mr->weights, "master",
                            (json_int_t)mr->master, "gradients", (json_int_t)mr->grads, "optimizer",
                            (json_int_t)mr->optim, "activations", (json_int_t)mr->acts, "workspace",
                            (json_int_t)mr->workspace, "peak", (json_int_t)mr->peak);
    json_object_set_new(j, "memory_bytes", mem);
    json_object_set_new(j, "accum", json_integer(a->accum));
    json_object_set_new(j, "head", json_string(a->head_unfused ? "unfused" : "fused"));
    char *s = json_dumps(j, JSON_INDENT(2));
    int rc = 0;
    if (!s || fs_write_atomic(a->json, s, strlen(s))) {
        fprintf(stderr, "anvil: bench: %s: %s\n", a->json, err_get());
        rc = 1;
    }
    free(s);
    json_decref(j);
    return rc;
}

int cmd_bench(int argc, char **argv)
{
    BenchArgs a;
    if (parse_args(argc, argv, &a)) {
        fprintf(stderr, "anvil: %s\n", err_get());
        return 1;
    }
    ModelConfig c;
    if (load_config(a.model, &c)) {
        fprintf(stderr, "anvil: bench: %s\n", err_get());
        return 1;
    }
    c.dropout = a.dropout; /* checked by parse_args */
    c.attn_dropout = a.attn_dropout;
    int is_cpu = !strcmp(a.device, "cpu");
    if (a.B < 0) a.B = is_cpu ? 4 : 16;
    if (a.T < 0) a.T = is_cpu ? 64 : c.max_seq_len;
    if (a.ceiling_n < 0) a.ceiling_n = is_cpu ? 1024 : 8192;
    if (a.ablate) {
        AblateSpec as = {.model = a.model, .device = a.device, .json = a.json, .B = a.B, .T = a.T,
                         .recompute = a.recompute, .accum = a.accum, .head_unfused = a.head_unfused};
        return bench_ablate(argc, argv, &as);
    }
    BackendOptions bo = {0};
    const Backend *be = backend_options_from_env(&bo) < 0 ? NULL : backend_get(a.device);
    if (!be) {
        fprintf(stderr, "anvil: bench: %s\n", err_get());
        return 1;
    }
    be->configure(&bo);
    Model *m = bench_model(&a, &c, be);
    if (!m) {
        fprintf(stderr, "anvil: bench: %s\n", err_get());
        return 1;
    }
    m->head_unfused = a.head_unfused;
    Optimizer opt;
    optim_init_host(&opt, m, BENCH_WD, 0, m->pt.n_train, a.offload_opt);
    int N = a.accum * a.B * a.T; /* tokens per optimizer step */
    int32_t *in = xmalloc(sizeof(int32_t) * (size_t)(N + 1));
    Rng r;
    rng_seed(&r, 42, 0);
    for (int i = 0; i <= N; i++) in[i] = (int32_t)rng_below(&r, (uint64_t)c.vocab_size);
    size_t ntok = 0, pos = 0;
    int32_t *data = NULL;
    if (a.data && !(data = load_tokens(a.data, c.vocab_size, &ntok))) {
        fprintf(stderr, "anvil: bench: %s\n", err_get());
        return 1;
    }
    if (data && ntok < (size_t)N + 1) {
        fprintf(stderr, "anvil: bench: %s: %zu tokens, fewer than one batch (%d)\n", a.data, ntok, N + 1);
        return 1;
    }

    int total = a.warmup + a.steps;
    double *times = xmalloc(sizeof(double) * (size_t)total);
    float first_loss = 0, last_loss = 0;
    /* micro-batch k is rows k*B.. of the step's batch: the same tokens whatever --accum splits them into */
    int32_t **mins = xmalloc(sizeof(int32_t *) * (size_t)a.accum), **mtgs = xmalloc(sizeof(int32_t *) * (size_t)a.accum);
    for (int k = 0; k < a.accum; k++) mins[k] = in + (size_t)k * a.B * a.T, mtgs[k] = mins[k] + 1;
    /* an encoder scores a fixed random BENCH_MLM_PROB of the positions (masked LM: the head runs on those
     * rows only); the inputs stay as they are, which changes the loss, not the work */
    int32_t *mlm_tg = NULL;
    uint8_t *mlm_pick = NULL;
    if (c.bidirectional) {
        mlm_tg = xmalloc(sizeof(int32_t) * (size_t)N);
        mlm_pick = xmalloc((size_t)N);
        for (int i = 0; i < N; i++) mlm_pick[i] = rng_double(&r) < BENCH_MLM_PROB;
        for (int i = 0; i < N; i++) mlm_tg[i] = mlm_pick[i] ? in[i] : -1;
        for (int k = 0; k < a.accum; k++) mtgs[k] = mlm_tg + (size_t)k * a.B * a.T;
    }
    StepBatch batch = {.B = a.B, .T = a.T, .accum = a.accum, .in = mins, .tg = mtgs};
    for (int s = 0; s < total; s++) {
#ifdef ANVIL_CUDA
        if (a.profile && s == a.warmup) cuda_prof_enable(1);
#endif
        if (data) { /* the next N+1 tokens (inputs and shifted targets), wrapping at the end */
            if (pos + (size_t)N + 1 > ntok) pos = 0;
            memcpy(in, data + pos, sizeof(int32_t) * (size_t)(N + 1));
            pos += (size_t)N;
            for (int i = 0; mlm_tg && i < N; i++) mlm_tg[i] = mlm_pick[i] ? in[i] : -1;
        }
        be->sync();
        double t0 = now_s();
        float lr = a.lr_warmup && s < a.lr_warmup ? a.lr * (s + 1) / a.lr_warmup : a.lr; /* linear warm-up */
        StepHyper h = {.lr = lr, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step = s + 1, .grad_clip = BENCH_CLIP};
        StepResult res;
        if (train_step(m, &opt, &batch, &h, &res)) {
            fprintf(stderr, "anvil: bench: %s\n", err_get());
            return 1;
        }
        times[s] = now_s() - t0;
        float loss = (float)res.loss;
        if (s == 0) first_loss = loss;
        if (a.print_every && (s % a.print_every == 0 || s == total - 1))
            printf("step %d loss %.9g norm %.6g\n", s, loss, res.grad_norm);
        last_loss = loss;
        if (!isfinite(loss)) {
            fprintf(stderr, "anvil: bench: loss is %g at step %d\n", loss, s);
            return 1;
        }
    }
    double step = median(times + a.warmup, a.steps);
    double fpt = model_flops_per_token(m, a.T);
    double peak_mem = peak_memory_bytes(be);
    MemReport mr;
    model_mem_report(m, optim_bytes(&opt), &mr);
    mr.host += optim_host_bytes(&opt);
#ifdef ANVIL_CUDA
    if (a.profile) {
        printf("\nper-op time of one step (%s, events around each op, median-free mean over %d steps):\n",
               be->name, a.steps);
        cuda_prof_print(stdout, a.steps);
        cuda_prof_enable(0);
    }
#endif
    double ceiling = a.ceiling_n > 0 ? measure_ceiling(be, a.ceiling_n, is_cpu ? 3 : 20) : 0;
    printf("loss %.4f -> %.4f over %d steps (%s)\n", first_loss, last_loss, total, data ? a.data : "random tokens");
    print_result(&a, &c, m, be, step, fpt, ceiling, peak_mem, &mr);
    const char *attn = "anvil kernels";
#ifdef ANVIL_CUDA
    if (!is_cpu) attn = cudnn_attention_info();
#endif
    /* training attention with dropout on its probabilities runs anvil's kernels (backend.h attention_drop_fwd) */
    if (c.attn_dropout > 0 && !is_cpu) attn = "anvil's kernels (model.attn_dropout > 0: not cuDNN)";
    printf("attention: %s | backend.attention %s | backend.gemm_tune %s | deterministic %s\n", attn,
           backend_attention_name(bo.attention), backend_gemm_tune_name(bo.gemm_tune), bo.deterministic ? "on" : "off");
    int rc = a.json ? write_json(&a, be, step, fpt, ceiling, peak_mem, first_loss, last_loss, attn, &mr) : 0;
    free(times), free(in), free(data), free(mins), free(mtgs), free(mlm_tg), free(mlm_pick);
    optim_free(&opt);
    model_free(m);
    return rc;
}
