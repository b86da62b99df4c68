/* train_config.h - the training run's configuration: YAML file + --set overrides.
 *
 * Every key lives in one table (train_config.c) with its type, default and
 * documentation; docs/config.md is generated from it (`anvil train --keys`)
 * and a test checks that the two agree. An unknown key is an error naming it.
 */
#ifndef ANVIL_TRAIN_CONFIG_H
#define ANVIL_TRAIN_CONFIG_H

#include <stdint.h>

#define CFG_PATH_MAX 1024
#define CFG_LIST_MAX 64  /* items of a list-valued key */
#define CFG_ITEM_MAX 128 /* bytes of one item */

/* A list-valued key (YAML sequence of strings; --set k=a,b). */
typedef struct {
    int n;
    char item[CFG_LIST_MAX][CFG_ITEM_MAX];
} CfgList;

typedef struct {
    /* model */
    char model_preset[64];
    char model_init[CFG_PATH_MAX];
    char model_family[16];
    int n_layer, n_head, n_kv_head, d_model, d_ff, max_seq_len, vocab_size;
    float rope_theta;
    int tie_embeddings; /* -1 = the preset's / family's choice */
    int qkv_bias;       /* -1 = family default */
    /* model.moe (docs/moe.md): 0 = the preset's / default */
    int moe_experts, moe_top_k, moe_d_ff, moe_every, moe_shared;
    int moe_norm_topk;  /* -1 = the default (true) */
    float moe_aux_coef, moe_z_coef, moe_jitter;
    CfgList freeze;     /* model.freeze: globs over HF tensor names */
    float dropout, attn_dropout; /* model.dropout, model.attn_dropout (training only) */
    char quant[8];      /* model.quant: none, nf4, fp4 */
    int quant_double, quant_blocksize;
    char ternary[16];   /* model.ternary: "" (the family's: bitnet for bitnet), none, bitnet */
    /* integer ternary training (train.optimizer: ternary, docs/ternary.md) */
    char optimizer[16]; /* train.optimizer: adamw, ternary */
    int tern_group, tern_threshold, tern_scale_every, tern_embeddings, tern_fused, tern_chunk_rows;
    float tern_deadzone;
    /* lora */
    int lora_r;
    float lora_alpha, lora_dropout;
    CfgList lora_targets;
    int lora_rslora;
    char lora_init[CFG_PATH_MAX];
    /* data */
    char data_train[CFG_PATH_MAX];
    char data_val[CFG_PATH_MAX];
    char data_tokenizer[CFG_PATH_MAX];
    char data_format[16];        /* text (token windows) or sft (instruction JSONL, src/data/sft.h) */
    char data_chat_template[32]; /* sft: "" (the tokenizer's own), none, or a family (src/data/chat.h) */
    char data_train_on[16];      /* sft: completion or all */
    int data_pack;               /* sft: pack examples into rows (not supported yet) */
    char data_objective[16];     /* causal (next token) or mlm (masked LM, src/data/mlm.h) */
    float data_mlm_prob;         /* mlm: chance that a token (or word) is chosen */
    int data_mlm_whole_word;     /* mlm: choose whole words */
    /* train */
    int steps, batch_size, seq_len;
    long tokens_per_step;
    float lr, min_lr;
    int warmup_steps;
    char schedule[16];
    float weight_decay, grad_clip, beta1, beta2, eps;
    uint64_t seed;
    int recompute;
    int recompute_layers;   /* train.recompute_layers: -1 all blocks, else the first N */
    int offload_optimizer;  /* train.offload_optimizer: AdamW moments in host memory */
    int offload_embeddings; /* train.offload_embeddings: a frozen input embedding in host memory */
    int deterministic; /* 1: bit-reproducible device kernels only (train.deterministic) */
    int log_every;
    int log_tensorboard; /* log.tensorboard: write TensorBoard event files into out_dir */
    float log_flush_s;   /* log.flush_s */
    /* eval */
    int eval_every, eval_steps;
    char eval_mcq_task[32];
    char eval_mcq_data[CFG_PATH_MAX];
    int eval_mcq_every, eval_mcq_limit;
    /* checkpoint */
    int ckpt_every, ckpt_keep;
    char ckpt_dtype[8];
    /* run */
    char out_dir[CFG_PATH_MAX];
    char device[32];
    /* distributed training (src/dist, docs/distributed.md) */
    int dist_zero;        /* dist.zero: 0 data parallel, 1 sharded optimizer state, 2 + sharded gradients */
    int dist_tp;          /* dist.tp: tensor-parallel ranks (1 only, for now) */
    float dist_timeout_s; /* dist.timeout_s */
    float dist_bucket_mb; /* dist.bucket_mb */
    char dist_comm[16];   /* dist.comm: auto, tcp, mpi, nccl */
    /* backend switches that change numerics (backend.h BackendOptions) */
    char attention[16]; /* auto, cudnn, anvil */
    char gemm_tune[16]; /* auto, off, always */
} TrainConfig;

/* All keys at their defaults. */
void train_config_defaults(TrainConfig *tc);
/* Apply a YAML file (nested mappings of scalars). -1 with err_set()
 * ("FILE:LINE: key: problem") on a syntax error, unknown key or bad value. */
int train_config_load_yaml(TrainConfig *tc, const char *path);
/* Apply one "a.b=value" override (from --set). */
int train_config_set(TrainConfig *tc, const char *assignment);
/* Set one key from its text value; `where` prefixes error messages. */
int train_config_set_key(TrainConfig *tc, const char *key, const char *value, const char *where);
/* Warnings about values that are legal but probably not meant (min_lr above lr, ...), one line each. */
#include <stdio.h>
void train_config_warn(const TrainConfig *tc, FILE *f);
/* Cross-field checks (positive sizes, known schedule, ...). */
int train_config_validate(const TrainConfig *tc);
/* The whole configuration as YAML text (malloc'd), every key, for
 * trainer_state.json and the run directory. */
char *train_config_to_yaml(const TrainConfig *tc);
/* Print the key reference as a Markdown table (docs/config.md). */
void train_config_print_keys(void);

#endif
