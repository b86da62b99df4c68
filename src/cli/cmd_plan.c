/* cmd_plan.c - `anvil plan`: the memory a training run will need, and which GPUs it fits.
 *
 *   anvil plan --model PRESET_OR_DIR [--method full|lora|qlora|ternary] [--batch B] [--seq T] [--recompute R]
 *              [--lora-r R] [--gpu NAME] [--world N --zero Z] [--tp P] [--device cpu|cuda|cuda-fp32] [--json FILE]
 *
 * The breakdown comes from creating the model on a counting backend (src/report/plan.h), so
 * anvil's own buffers are counted exactly; a GPU adds its modelled workspace. Then: the largest
 * micro-batch that fits on each GPU of the table (or the named one), and the rule of thumb
 * (parameters x bytes x 1.2) beside it. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/error.h"
#include "io/fsutil.h"
#include "io/hf.h"
#include "report/plan.h"

#define GIB (1024.0 * 1024.0 * 1024.0)
/* The largest micro-batch the GPU table searches. */
#define PLAN_MAX_BATCH 1024

static void usage(FILE *f)
{
    fprintf(f, "usage: anvil plan --model PRESET_OR_DIR [--method full|lora|qlora|ternary] [--batch B] [--seq T]\n"
               "                  [--recompute 0|1|2] [--lora-r R] [--gpu NAME] [--world N --zero 0|1|2|3] [--tp P]\n"
               "                  [--device cuda|cuda-fp32|cpu] [--offload optimizer,embeddings] [--json FILE]\n"
               "  Predicted peak memory of one training step, by what holds it, and the largest micro-batch\n"
               "  that fits on common GPUs. Defaults: --method full, --batch 1, --seq the model's window,\n"
               "  --recompute 0, --lora-r 16 (all-linear), --device cuda (bf16), --world 1 --zero 0.\n"
               "  --method ternary: train.optimizer: ternary (block linears as packed trits, docs/ternary.md);\n"
               "  --ternary-embeddings 1 and --ternary-fused 1 as train.ternary.embeddings / fused (default 0).\n"
               "  --offload: the AdamW moments and/or a frozen input embedding in host memory\n"
               "  (train.offload_optimizer, train.offload_embeddings), not in the peak; --recompute-layers K:\n"
               "  only the first K blocks recompute (train.recompute_layers). --tp P: tensor parallel\n"
               "  (dist.tp): rank 0's slice of the model; --world then counts every rank.\n");
}

int cmd_plan(int argc, char **argv)
{
    const char *model = NULL, *method = "full", *gpu = NULL, *device = "cuda", *json = NULL;
    PlanSpec s = {.method = PLAN_FULL, .B = 1, .T = -1, .recompute = 0, .lora_r = 16, .world = 1, .zero = 0};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "anvil: plan: %s needs a value (try --help)\n", f);
            return 1;
        }
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(f, "--model")) model = v;
        else if (!strcmp(f, "--method")) method = v;
        else if (!strcmp(f, "--gpu")) gpu = v;
        else if (!strcmp(f, "--device")) device = v;
        else if (!strcmp(f, "--json")) json = v;
        else if (!strcmp(f, "--batch")) rc = cli_int(f, v, 1, &s.B);
        else if (!strcmp(f, "--seq")) rc = cli_int(f, v, 1, &s.T);
        else if (!strcmp(f, "--recompute")) rc = cli_int(f, v, 0, &s.recompute);
        else if (!strcmp(f, "--lora-r")) rc = cli_int(f, v, 1, &s.lora_r);
        else if (!strcmp(f, "--world")) rc = cli_int(f, v, 1, &s.world);
        else if (!strcmp(f, "--zero")) rc = cli_int(f, v, 0, &s.zero);
        else if (!strcmp(f, "--tp")) rc = cli_int(f, v, 1, &s.tp);
        else if (!strcmp(f, "--ternary-embeddings")) rc = cli_int(f, v, 0, &s.tern_embeddings);
        else if (!strcmp(f, "--ternary-fused")) rc = cli_int(f, v, 0, &s.tern_fused);
        else if (!strcmp(f, "--recompute-layers")) {
            int k = 0;
            rc = cli_int(f, v, 0, &k);
            s.keep_layers = -1 - k; /* resolved against the model's depth below */
        }
        else if (!strcmp(f, "--offload")) rc = cli_offload(v, &s.offload_opt, &s.offload_emb);
        else {
            fprintf(stderr, "anvil: plan: unknown option \"%s\" (try --help)\n", f);
            return 1;
        }
        if (rc) {
            fprintf(stderr, "anvil: plan: %s\n", err_get());
            return 1;
        }
    }
    ModelConfig c;
    if (!model) {
        fprintf(stderr, "anvil: plan: --model PRESET_OR_DIR is required (presets: %s)\n", model_preset_names());
        return 1;
    }
    if ((fs_is_dir(model) ? hf_read_config(model, &c) : model_preset(&c, model) || model_config_finish(&c)) ||
        plan_method_parse(method, &s.method)) {
        fprintf(stderr, "anvil: plan: %s\n", err_get());
        return 1;
    }
    if (s.recompute > 2 || s.zero > 3) {
        fprintf(stderr, "anvil: plan: --recompute: expected 0, 1 or 2; --zero: 0, 1, 2 or 3\n");
        return 1;
    }
    if (strcmp(device, "cpu") && strcmp(device, "cuda") && strcmp(device, "cuda-fp32")) {
        fprintf(stderr, "anvil: plan: --device: expected cpu, cuda or cuda-fp32, got \"%s\"\n", device);
        return 1;
    }
    if (s.T < 0) s.T = c.max_seq_len;
    if (s.keep_layers < 0) s.keep_layers = MAX(0, c.n_layer - (-1 - s.keep_layers)); /* --recompute-layers K */
    s.gpu = strcmp(device, "cpu") != 0;
    s.act_size = !strcmp(device, "cuda") ? 2 : 4;
    PlanResult r;
    if (plan_memory(&c, &s, &r)) {
        fprintf(stderr, "anvil: plan: %s\n", err_get());
        return 1;
    }
    const MemReport *m = &r.mem;
    printf("plan: %s, %s, batch %d x %d, recompute %d, %s%s\n", model, plan_method_name(s.method), s.B, s.T,
           s.recompute, device, s.world > 1 ? " (per rank)" : "");
    printf("| weights | master | gradients | optimizer | activations | workspace | peak | rule of thumb |\n");
    printf("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    printf("| %.2f GiB | %.2f GiB | %.2f GiB | %.2f GiB | %.2f GiB | %.2f GiB | **%.2f GiB** | %.2f GiB |\n",
           m->weights / GIB, m->master / GIB, m->grads / GIB, m->optim / GIB, m->acts / GIB, m->workspace / GIB,
           m->peak / GIB, r.rule_gib);
    if (m->host) printf("\nHeld in host memory (--offload), not in the peak: %.2f GiB\n", m->host / GIB);
    int n;
    const PlanGpu *g = plan_gpus(&n);
    if (gpu) {
        const PlanGpu *one = plan_gpu_find(gpu);
        if (!one) {
            fprintf(stderr, "anvil: plan: --gpu: \"%s\" is not in the table (RTX 3090, RTX 4090, RTX A6000, L40S, "
                            "A100 40GB, A100 80GB, H100 PCIe, H100 SXM, H200)\n", gpu);
            return 1;
        }
        g = one, n = 1;
    }
    printf("\n| GPU | memory | dense bf16 | fits batch %d | largest micro-batch at T=%d |\n|---|---:|---:|---|---:|\n", s.B,
           s.T);
    json_t *rows = json_array();
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)(g[i].mem_gib * GIB);
        int best = plan_max_batch(&c, &s, bytes, PLAN_MAX_BATCH, 0);
        printf("| %s | %.1f GiB | %.0f TFLOP/s | %s | %d%s |\n", g[i].name, g[i].mem_gib, g[i].bf16_tflops,
               m->peak <= bytes ? "yes" : "no", best, best == PLAN_MAX_BATCH ? "+" : "");
        json_array_append_new(rows, json_pack("{s:s, s:f, s:b, s:i}", "gpu", g[i].name, "mem_gib", g[i].mem_gib,
                                              "fits", m->peak <= bytes, "max_batch", best));
    }
    int rc = 0;
    if (json) {
        json_t *j = json_pack("{s:s, s:s, s:i, s:i, s:i, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:o}", "model",
                              model, "method", plan_method_name(s.method), "batch", s.B, "seq", s.T, "recompute",
                              s.recompute, "device", device, "weights", (json_int_t)m->weights, "master",
                              (json_int_t)m->master, "gradients", (json_int_t)m->grads, "optimizer",
                              (json_int_t)m->optim, "activations", (json_int_t)m->acts, "workspace",
                              (json_int_t)m->workspace, "peak", (json_int_t)m->peak, "host", (json_int_t)m->host,
                              "rule_of_thumb_gib", r.rule_gib,
                              "gpus", rows);
        char *t = json_dumps(j, JSON_INDENT(2));
        if (!t || fs_write_atomic(json, t, strlen(t))) {
            fprintf(stderr, "anvil: plan: %s: %s\n", json, err_get());
            rc = 1;
        }
        free(t);
        json_decref(j);
    } else {
        json_decref(rows);
    }
    return rc;
}
