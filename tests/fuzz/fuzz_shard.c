/* fuzz_shard.c - the batch loader on an arbitrary shard file (.bin: llm.c
 * header or anvil's format). An anvil header gets its CRC recomputed first, so
 * that mutations of the other fields reach the parser instead of stopping at
 * the checksum (which is what a crafted file would carry). */
#include <zlib.h>

#include "data/loader.h"
#include "data/shard.h"
#include "fuzz_common.h"

/* CRC field of the anvil header (shard.h) */
#define CRC_OFFSET 36

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    if (size >= SHARD_HEADER_BYTES && !memcmp(buf, SHARD_MAGIC, 8)) {
        memset(buf + CRC_OFFSET, 0, 4);
        uint32_t crc = (uint32_t)crc32(0L, buf, SHARD_HEADER_BYTES);
        for (int i = 0; i < 4; i++) buf[CRC_OFFSET + i] = (uint8_t)(crc >> (8 * i));
    }
    const char *path = fuzz_write("data.bin", buf, size);
    free(buf);
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
