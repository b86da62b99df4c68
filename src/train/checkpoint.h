/* checkpoint.h - training checkpoints: OUT_DIR/step-NNNNNNN/
 *
 * Each checkpoint is a Hugging Face model directory (config.json,
 * model.safetensors, generation_config.json, tokenizer files), or for a LoRA
 * run a PEFT adapter directory (adapter_config.json, adapter_model.safetensors,
 * tokenizer files; the base is not copied), plus
 *   optimizer.safetensors  fp32 Adam moments "m.<name>", "v.<name>" of the
 *                          trainable tensors under the internal parameter names
 *                          (params.h), and "master.<name>" fp32 weights when
 *                          model.safetensors is stored in bf16; frozen tensors
 *                          have no entry;
 *                          With ZeRO (dist.zero >= 1) on several ranks instead:
 *   optimizer-manifest.json  world, stage, each rank's part [lo, hi) of the trainable segment
 *                          and file, and the segment's tensor table (name, offset, numel);
 *   optimizer-rank-R-of-W.safetensors  rank R's part: "m", "v" (and "master" when the model
 *                          is stored in bf16), 1-D fp32 over [lo, hi) of the segment;
 *                          any world size or stage resumes from either layout (resharding on
 *                          load: each rank reads the parts that cover its own);
 *   ternary.safetensors    train.optimizer: ternary only: per integer-ternary tensor "trits.<name>" (U8,
 *                          packed 5 per byte), "exp.<name>" (I8 group exponents), "tacc.<name>" (I8 sign
 *                          accumulators), "eacc.<name>" (I8 scale accumulators): the whole training state
 *                          of those tensors, with no float tensor (model.safetensors holds their values
 *                          trit * 2^E, exact in fp32, so the directory stays a plain HF model);
 *   trainer_state.json     step, data loader position (global), tokens seen, the config;
 *   config.yaml            the run's full configuration.
 * It is built in a temporary directory and published with one rename, so a
 * crash never leaves a half-written checkpoint.
 */
#ifndef ANVIL_TRAIN_CHECKPOINT_H
#define ANVIL_TRAIN_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "data/loader.h"
#include "model/model.h"

struct Tokenizer;

typedef struct {
    int step;             /* optimizer steps completed */
    LoaderState loader;   /* position of the training loader after `step` */
    uint64_t tokens_seen; /* training tokens consumed */
    double elapsed_s;     /* training wall time so far */
} TrainerState;

typedef struct {
    const Model *m;
    const float *params; /* host image of the weights (pt.total, Param.offset) */
    const float *adam_m, *adam_v; /* host fp32 moments (pt.n_train, the trainable segment's layout) */
    const TrainerState *state;
    const char *config_yaml;
    const struct Tokenizer *tok; /* may be NULL */
    int bf16_weights;            /* store model.safetensors as bf16 */
    /* Non-NULL for a LoRA run: the checkpoint is a PEFT adapter directory (adapter_config.json naming
     * this base, adapter_model.safetensors) instead of a model directory; the base is not copied. */
    const char *adapter_base;
    int finished; /* the run's last step: out_dir/final points here (not at an interrupted run's) */
    /* ZeRO shards on several ranks (NULL: one optimizer.safetensors from adam_m / adam_v) */
    int world, zero;
    const size_t *shard_lo, *shard_hi; /* world parts of the trainable segment */
} CheckpointData;

/* One rank's part of the optimizer state (host fp32, hi - lo elements each). */
typedef struct {
    int rank, world;
    size_t lo, hi;
    const float *adam_m, *adam_v;
    const float *master; /* NULL unless the model is stored in bf16 */
} CheckpointShard;

/* Name of step s's directory inside out_dir (malloc'd). */
char *ckpt_dir_name(const char *out_dir, int step);
/* Write and publish out_dir/step-NNNNNNN, point out_dir/final at it, then
 * delete all but the newest `keep` checkpoints (keep 0 = all). */
int ckpt_save(const char *out_dir, const CheckpointData *d, int keep);
/* The same in steps, for several ranks writing one checkpoint (the trainer runs a status exchange
 * between the steps): the temporary directory every rank writes into (tag: rank 0's pid;
 * malloc'd); rank 0 creates it (ckpt_begin), writes the model, tokenizer, config and the optimizer
 * file or manifest (ckpt_write_main); every rank writes its shard (ckpt_write_shard); rank 0 then
 * publishes (ckpt_publish: the state file last, rename, `final`, pruning). On failure the
 * temporary directory is removed by ckpt_abort. */
char *ckpt_tmp_dir(const char *out_dir, int step, int tag);
int ckpt_begin(const char *tmp);
int ckpt_write_main(const char *tmp, const CheckpointData *d);
int ckpt_write_shard(const char *tmp, const CheckpointShard *s);
int ckpt_publish(const char *out_dir, const char *tmp, const CheckpointData *d, int keep);
void ckpt_abort(const char *tmp);
/* The newest complete checkpoint in run_dir (or run_dir itself when it is a
 * checkpoint). Returns its path (malloc'd), NULL with err_set() if none. */
char *ckpt_find_latest(const char *run_dir);
/* Read trainer_state.json. */
int ckpt_read_state(const char *ckpt_dir, TrainerState *st);
/* Read the weights into a host image (pt.total: model.safetensors, then master.* for the
 * trainable tensors when present) and the moments of the trainable tensors into host buffers
 * of pt.n_train floats (segment layout). A trainable tensor without moments is an error. */
int ckpt_read_optimizer(const char *ckpt_dir, const Model *m, float *params, float *adam_m, float *adam_v);
/* The same for the part [lo, hi) of the trainable segment (adam_m, adam_v hold hi - lo floats),
 * from either layout (optimizer.safetensors, or the shards of any world size); params gets every
 * weight. Errors name the file and what differs (a shard missing, another segment layout). */
int ckpt_read_optimizer_range(const char *ckpt_dir, const Model *m, float *params, size_t lo, size_t hi,
                              float *adam_m, float *adam_v);

/* The integer-ternary state of every PARAM_TERNARY tensor of m from ternary.safetensors, exactly
 * (nothing to do for a model without such tensors). */
int ckpt_read_ternary(const char *ckpt_dir, Model *m);
/* model.init from an integer-ternary checkpoint: the trits and exponents of every PARAM_TERNARY tensor of m
 * that dir's ternary.safetensors holds, exactly (the accumulators zero); the group must be m's. Values read
 * from model.safetensors alone would lose the exponent of a group whose trits are all zero. */
int ckpt_init_ternary(const char *dir, Model *m);
/* Whether dir holds ternary.safetensors (an integer-ternary checkpoint's state). */
int ckpt_has_ternary(const char *dir);
/* The model of such a directory for eval and generate: every tensor frozen, those whose state
 * ternary.safetensors holds kept packed as it holds them (5 trits a byte, an exponent per group;
 * ModelConfig.tern_frozen: no accumulators, no gradient), so that the products read the trits
 * (Backend.ternary_matmul_fwd); NULL with err_set() naming the file and the field or tensor. */
Model *ckpt_load_ternary_model(const char *dir, const Backend *be);

#endif
