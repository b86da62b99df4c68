/* fuzz_tokenizer_json.c - tokenizer_load on an arbitrary tokenizer.json; a
 * tokenizer that loads must encode (plain and with its post-processor
 * template) and decode a fixed text without crashing. */
#include "data/tokenizer.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Tokenizer *t = tokenizer_load(fuzz_write("tokenizer.json", data, size));
    if (t) {
        static const char text[] =
            "Hello world, it's 2026!\n  \xc3\xa9t\xc3\xa9 \xe4\xb8\xad <|endoftext|> [CLS]"
            "##ing\xe2\x80\x8b\xc3\x85";
        int32_t *ids = NULL, *ty = NULL;
        long n = tokenizer_encode(t, text, sizeof(text) - 1, &ids);
        if (n > 0) free(tokenizer_decode(t, ids, (size_t)n, NULL));
        free(ids);
        n = tokenizer_encode_template(t, text, sizeof(text) - 1, "b", 1, &ids, &ty);
        if (n > 0) free(tokenizer_decode(t, ids, (size_t)n, NULL));
        free(ids);
        free(ty);
        tokenizer_free(t);
    }
    return 0;
}
