/* fuzz_train_yaml.c - the training config parser on arbitrary YAML. The defaults are set once
 * (train_config_defaults sets every key through the key table, input-independent work that
 * took a third of each run) and copied into each input's config. */
#include "fuzz_common.h"
#include "train/train_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static TrainConfig defaults, tc;
    static int ready;
    if (!ready) {
        train_config_defaults(&defaults);
        ready = 1;
    }
    tc = defaults;
    if (train_config_load_yaml(&tc, fuzz_write("run.yaml", data, size)) == 0) train_config_validate(&tc);
    return 0;
}
