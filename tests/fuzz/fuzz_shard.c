/* fuzz_shard.c - the batch loader on an arbitrary shard file (.bin: llm.c
 * header or anvil's format). */
#include "data/loader.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("data.bin", data, size);
    LoaderOptions o = {.B = 2, .T = 4, .seed = 1, .shuffle = 1, .rank = 0, .world = 1, .tokenizer = "byte"};
    DataLoader *dl = loader_open(path, &o);
    if (dl) {
        int32_t in[8], tg[8];
        for (int i = 0; i < 3; i++)
            if (loader_next(dl, in, tg)) break;
        loader_close(dl);
    }
    return 0;
}
