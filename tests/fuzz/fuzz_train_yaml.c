/* fuzz_train_yaml.c - the training config parser on arbitrary YAML. */
#include "fuzz_common.h"
#include "train/train_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    TrainConfig tc;
    train_config_defaults(&tc);
    if (train_config_load_yaml(&tc, fuzz_write("run.yaml", data, size)) == 0) train_config_validate(&tc);
    return 0;
}
