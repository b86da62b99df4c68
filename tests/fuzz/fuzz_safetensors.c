/* fuzz_safetensors.c - st_open on arbitrary bytes; every accepted tensor must
 * be fully readable (the validator guarantees the bounds). */
#include "fuzz_common.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    StFile f;
    const char *path = fuzz_write("model.safetensors", data, size);
    if (st_open(&f, path) == 0) {
        for (int i = 0; i < f.n; i++) {
            const StTensor *t = &f.t[i];
            uint8_t sum = 0; /* touch every byte: ASan catches a read past the mapping */
            for (size_t b = 0; b < t->nbytes; b++) sum += ((const uint8_t *)t->data)[b];
            if (sum == 1 && t->nbytes == 0) abort(); /* impossible; keeps the loop */
            if (t->numel < (1u << 20)) {
                float *out = malloc((t->numel ? t->numel : 1) * sizeof(float));
                st_to_f32(t, out);
                free(out);
            }
        }
        st_close(&f);
    }
    return 0;
}
