/* fuzz_ternary_ckpt.c - the ternary.safetensors of an integer-ternary checkpoint, as `anvil eval` and
 * `anvil generate` read it (src/train/checkpoint.c ckpt_load_ternary_model): the input is the file, beside
 * the config.json and model.safetensors of tests/fixtures/ternary/ckpt (a 1-layer model trained 3 steps
 * by `anvil train tests/fixtures/ternary/ckpt/made_by.yaml`, its embedding, head and block linears ternary,
 * groups of 40; run from the repository root, as tools/fuzz.sh does). The loader must accept the file or
 * refuse it with an error (a missing or bad "group", a tensor the model lacks, a wrong dtype or size, no
 * trits at all), never crash or read past it; an accepted model must run a forward. */
#include <limits.h>

#include "backend/backend.h"
#include "core/error.h"
#include "fuzz_common.h"
#include "model/model.h"
#include "train/checkpoint.h"

#define BASE "tests/fixtures/ternary/ckpt"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char dir[160];
    if (!dir[0]) {
        snprintf(dir, sizeof(dir), "%s/ckpt", fuzz_dir());
        mkdir(dir, 0700);
        const char *names[] = {"config.json", "model.safetensors"};
        for (int k = 0; k < 2; k++) {
            char src[PATH_MAX], dst[256], cwd[PATH_MAX];
            if (!getcwd(cwd, sizeof(cwd))) abort();
            snprintf(src, sizeof(src), "%s/%s/%s", cwd, BASE, names[k]);
            snprintf(dst, sizeof(dst), "%s/%s", dir, names[k]);
            unlink(dst);
            if (access(src, R_OK) || symlink(src, dst)) {
                fprintf(stderr, "fuzz_ternary_ckpt: %s: missing (run from the repository root)\n", src);
                abort();
            }
        }
    }
    char path[256];
    snprintf(path, sizeof(path), "%s/ternary.safetensors", dir);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    Model *m = ckpt_load_ternary_model(dir, backend_cpu());
    if (!m) return 0;
    int32_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    if (model_reserve(m, 1, 8, 0) == 0) model_forward(m, ids, ids, 1, 8, 0.0f, NULL); /* the packed weights in use */
    model_free(m);
    return 0;
}
