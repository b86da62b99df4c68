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
 *   trainer_state.json     step, data loader position, tokens seen, the config;
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
} CheckpointData;

/* Name of step s's directory inside out_dir (malloc'd). */
char *ckpt_dir_name(const char *out_dir, int step);
/* Write and publish out_dir/step-NNNNNNN, point out_dir/final at it, then
 * delete all but the newest `keep` checkpoints (keep 0 = all). */
int ckpt_save(const char *out_dir, const CheckpointData *d, int keep);
/* The newest complete checkpoint in run_dir (or run_dir itself when it is a
 * checkpoint). Returns its path (malloc'd), NULL with err_set() if none. */
char *ckpt_find_latest(const char *run_dir);
/* Read trainer_state.json. */
int ckpt_read_state(const char *ckpt_dir, TrainerState *st);
/* Read the weights into a host image (pt.total: model.safetensors, then master.* for the
 * trainable tensors when present) and the moments of the trainable tensors into host buffers
 * of pt.n_train floats (segment layout). A trainable tensor without moments is an error. */
int ckpt_read_optimizer(const char *ckpt_dir, const Model *m, float *params, float *adam_m, float *adam_v);

#endif
