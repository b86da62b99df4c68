/* fuzz_hf_config.c - hf_read_config on an arbitrary config.json. */
#include "fuzz_common.h"
#include "io/hf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ModelConfig c;
    fuzz_write("config.json", data, size);
    hf_read_config(fuzz_dir(), &c);
    return 0;
}
