/* trainer.h - the training loop. */
#ifndef ANVIL_TRAIN_TRAINER_H
#define ANVIL_TRAIN_TRAINER_H

#include "model/model.h"
#include "train/train_config.h"

/* Build the model configuration a training config asks for (preset, init
 * directory, family + explicit sizes). -1 with err_set() naming the key. */
int trainer_model_config(const TrainConfig *tc, ModelConfig *cfg);

/* Run (or, with resume_dir, continue) a training run. A new run refuses an out_dir that holds
 * files unless overwrite (which removes them). Returns 0 when the run finished, 128 + the signal
 * (130 SIGINT, 143 SIGTERM) when it was interrupted and saved a checkpoint, -1 with err_set() on
 * failure. */
int trainer_run(const TrainConfig *tc, const char *resume_dir, int overwrite);

#endif
