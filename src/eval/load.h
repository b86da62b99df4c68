/* load.h - the model of `anvil eval` and `anvil generate`: a Hugging Face model
 * directory, or a preset name (gpt2-124m, llama-1b, ...) with random GPT-2-style
 * weights, which is enough to measure speed (tools/bench_eval.sh). */
#ifndef ANVIL_EVAL_LOAD_H
#define ANVIL_EVAL_LOAD_H

#include "backend/backend.h"
#include "model/model.h"

/* The backend for `device`, configured for evaluation: GEMM autotuning off (evaluation shapes
 * change from batch to batch and runs are short, so the tuning that pays in training costs more
 * than it saves, docs/cuda.md), other switches at their defaults; ANVIL_ATTENTION,
 * ANVIL_GEMM_TUNE and ANVIL_DETERMINISTIC override them. NULL with err_set() naming --device. */
const Backend *eval_backend(const char *device);
/* The model, every tensor frozen (no master, no gradients), with the PEFT adapter directory
 * `adapter` over it when not NULL. NULL with err_set() naming spec when it is neither a loadable
 * directory nor a preset. */
Model *eval_load_model(const char *spec, const char *adapter, const Backend *be);

#endif
