/* plan.h - how much memory a training run takes, before it runs (`anvil plan`, train.batch_size auto).
 *
 * The model, its activations and the optimizer are created on a planning backend whose alloc only
 * counts bytes (no memory is touched), so every buffer anvil itself allocates is counted exactly as
 * the real backends would allocate it, for any model size, in milliseconds. What a GPU backend
 * allocates for itself on top is modelled (plan_workspace): cuBLASLt's workspace, the chunk of
 * logits of the fused LM head and its padded weight copies, the 4-bit dequantization scratch, and a
 * residual for cuDNN and grow-only scratch measured on the H200 (docs/reporting.md).
 */
#ifndef ANVIL_REPORT_PLAN_H
#define ANVIL_REPORT_PLAN_H

#include <stddef.h>

#include "model/model.h"

typedef enum { PLAN_FULL, PLAN_LORA, PLAN_QLORA, PLAN_TERNARY } PlanMethod;

typedef struct {
    PlanMethod method;
    int B, T, recompute;
    int lora_r;       /* lora and qlora: rank (all-linear) */
    int act_size;     /* 2: a GPU in bf16; 4: the CPU or cuda-fp32 */
    int gpu;          /* 1: add the GPU backend's own workspace (plan_workspace) */
    int tern_embeddings, tern_fused; /* ternary: train.ternary.embeddings, train.ternary.fused */
    int keep_layers; /* train.recompute_layers: the last keep_layers blocks keep every activation (0: none) */
    int offload_opt, offload_emb; /* train.offload_optimizer / train.offload_embeddings: held in host memory */
    int world, zero;  /* data parallel: ZeRO-1 shards the master and moments over world, ZeRO-2 also the gradients, ZeRO-3 also the weights (rank 0's store, as dist_attach makes it) */
    int tp;           /* dist.tp (0 or 1: none): rank 0's slice of the model (model/tp.h) and the tp buffers;
                       * world counts every rank, so ZeRO shards over world / tp replicas */
} PlanSpec;

typedef struct {
    MemReport mem;     /* weights, master, grads, optim, acts, workspace; peak = their sum */
    double rule_gib;   /* the rule of thumb: parameters x bytes x 1.2 (see plan.c) */
} PlanResult;

int plan_method_parse(const char *s, PlanMethod *m);
const char *plan_method_name(PlanMethod m);
/* The memory of one training step of config c under s. -1 with err_set() on a bad spec. */
int plan_memory(const ModelConfig *c, const PlanSpec *s, PlanResult *r);
/* The largest micro-batch (<= b_max) whose plan fits in `bytes`, 0 when none does; with
 * divides > 0, only batch sizes that divide it (so that accumulation reaches tokens_per_step). */
int plan_max_batch(const ModelConfig *c, const PlanSpec *s, size_t bytes, int b_max, int divides);

/* A GPU of the table (configs/gpus.yaml has the same with sources). */
typedef struct {
    const char *name;
    double mem_gib;     /* memory as sold (GB of the datasheet, converted to GiB) */
    double bf16_tflops; /* dense bf16 tensor peak, without sparsity */
} PlanGpu;
const PlanGpu *plan_gpus(int *n);
const PlanGpu *plan_gpu_find(const char *name);

#endif
