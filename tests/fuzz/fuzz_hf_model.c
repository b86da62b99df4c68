/* fuzz_hf_model.c - a model directory: config.json, a NUL byte, then
 * model.safetensors (fuzz_split_model). hf_read_config checks the config
 * against the tensor headers; a config it accepts must then read its weights
 * (small models only) without a crash or an allocation beyond the file. */
#include "fuzz_common.h"
#include "io/bnb.h"
#include "io/hf.h"

/* Largest parameter buffer the harness allocates (elements): the checks must
 * have tied a larger config to a file that big, which a fuzz input is not. */
#define MAX_PARAMS (1u << 22)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char dir[160];
    if (!dir[0]) {
        snprintf(dir, sizeof(dir), "%s/model", fuzz_dir());
        mkdir(dir, 0700);
    }
    fuzz_split_model(dir, data, size);
    ModelConfig c;
    if (hf_read_config(dir, &c) != 0) return 0;
    ParamTable pt;
    param_table_build(&pt, &c);
    if (pt.total <= MAX_PARAMS) {
        float *buf = malloc((pt.total ? pt.total : 1) * sizeof(float));
        hf_read_weights(dir, &c, &pt, buf);
        free(buf);
    }
    /* hf_check_shapes: the weights hold >= 2 bytes per parameter, and they are in the input; a BitNet
     * directory may hold transformers' packed BitLinear weights, 2 bits per parameter, and a
     * bitsandbytes 4-bit one (its config says so) 4 bits */
    BnbConfig bc;
    size_t need = c.ternary == TERNARY_BITNET ? pt.total / 4 : bnb_read_config(dir, &bc) == 1 ? pt.total / 2 : pt.total * 2;
    if (hf_has_weights(dir) && need > size) abort();
    param_table_free(&pt);
    return 0;
}
