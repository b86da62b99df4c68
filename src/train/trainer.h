/* trainer.h - the training loop. */
#ifndef ANVIL_TRAIN_TRAINER_H
#define ANVIL_TRAIN_TRAINER_H

#include "model/model.h"
#include "train/train_config.h"

/* Build the model configuration a training config asks for (preset, init
 * directory, family + explicit sizes). -1 with err_set() naming the key. */
int trainer_model_config(const TrainConfig *tc, ModelConfig *cfg);

/* Run (or, with resume_dir, continue) a training run. Returns 0 on success,
 * -1 with err_set() on failure. */
int trainer_run(const TrainConfig *tc, const char *resume_dir);

#endif
