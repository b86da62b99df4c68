/* freeze.h - model.freeze: which tensors of a model are frozen, from globs over the Hugging Face
 * tensor names a user sees in the checkpoint (fnmatch(3) patterns: *, ?, [0-9]).
 *
 * A tensor is frozen when a pattern matches every HF name it is stored under; our fused tensors
 * (llama's q/k/v as one qkv weight, gate/up as one fc weight) freeze only as a whole, so a pattern
 * that matches part of one (q_proj but not k_proj) is an error naming the tensor. A pattern that
 * matches nothing is an error naming the pattern.
 */
#ifndef ANVIL_TRAIN_FREEZE_H
#define ANVIL_TRAIN_FREEZE_H

#include "model/params.h"
#include "train/train_config.h"

/* kinds[i] for each tensor of the config's table (param_table_build order); NULL (no error) when
 * no pattern is given. NULL with err_set() on a bad pattern. free() the result. */
ParamKind *freeze_kinds(const CfgList *patterns, const ModelConfig *cfg, int *err);
/* train.optimizer: ternary: the block linears (and, with embeddings, wte and an untied head) that are
 * still PARAM_TRAIN in kinds become PARAM_TERNARY. kinds NULL: every tensor trainable so far; returns
 * kinds, or the new array (the caller frees it). */
ParamKind *ternary_kinds(const ModelConfig *cfg, ParamKind *kinds, int embeddings);

#endif
