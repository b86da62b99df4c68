/* fuzz_gpt2_roundtrip.c - GPT-2 byte-level BPE: decode(encode(x)) == x for
 * any bytes (invalid UTF-8 included). Special-token text is excluded. */
#define _GNU_SOURCE /* memmem */
#include "data/tokenizer.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static Tokenizer *t;
    if (!t && !(t = tokenizer_load("gpt2"))) abort();
    if (memmem(data, size, "<|", 2)) return 0;
    int32_t *ids = NULL;
    long n = tokenizer_encode(t, (const char *)data, size, &ids);
    if (n < 0) return 0; /* rejected input is fine; crashing is not */
    size_t len = 0;
    char *back = tokenizer_decode(t, ids, (size_t)n, &len);
    if (len != size || memcmp(back, data, size)) abort();
    free(back);
    free(ids);
    return 0;
}
