/* fuzz_peft.c - a PEFT adapter directory: one selector byte, adapter_config.json, a NUL byte, then
 * adapter_model.safetensors (fuzz_split_files). The selector picks the base the adapter is read
 * over: the tiny llama, gpt2, Mixtral or Qwen2-MoE of tests/fixtures (their config.json, read once;
 * run from the repository root, as tools/fuzz.sh does). peft_read_config must accept or refuse the
 * config with an error; an accepted one (rank at most MAX_R) builds the adapted model and reads its
 * weights, refusing a missing tensor, a wrong shape or dtype, a non-finite value or an extra
 * tensor, without a crash. */
#include "backend/backend.h"
#include "core/error.h"
#include "fuzz_common.h"
#include "io/hf.h"
#include "io/peft.h"
#include "model/model.h"

/* The harness's own bound: a rank up to 65536 is valid, but its tensors are large for a fuzz input. */
#define MAX_R 64

static const char *const BASES[] = {"tests/fixtures/llama/model", "tests/fixtures/gpt2/model",
                                    "tests/fixtures/moe/mixtral/model", "tests/fixtures/moe/qwen2_moe/model"};
#define NBASES (sizeof(BASES) / sizeof(BASES[0]))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ModelConfig cfg[NBASES];
    static char dir[160];
    if (!dir[0]) {
        for (size_t k = 0; k < NBASES; k++)
            if (hf_read_config(BASES[k], &cfg[k])) {
                fprintf(stderr, "fuzz_peft: %s (run from the repository root)\n", err_get());
                abort();
            }
        snprintf(dir, sizeof(dir), "%s/adapter", fuzz_dir());
        mkdir(dir, 0700);
    }
    if (!size) return 0;
    const ModelConfig *c = &cfg[data[0] % NBASES];
    fuzz_split_files(dir, data + 1, size - 1, "adapter_config.json", "adapter_model.safetensors");
    LoraSpec ls;
    char base[256];
    if (peft_read_config(dir, c, &ls, base, sizeof(base)) != 0) return 0;
    if (ls.r > MAX_R) return 0;
    Model *m = model_create_lora(c, backend_cpu(), &ls, 1, 3, NULL);
    peft_read_weights(dir, m);
    model_free(m);
    return 0;
}
