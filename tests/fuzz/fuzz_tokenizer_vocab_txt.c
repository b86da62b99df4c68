/* fuzz_tokenizer_vocab_txt.c - tokenizer_load on a directory holding an
 * arbitrary BERT vocab.txt and, when the input has a 0xFF byte, a
 * tokenizer_config.json (the bytes after it); a tokenizer that loads must
 * encode (plain and with its template), and decode, a fixed text. */
#include <string.h>

#include "data/tokenizer.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *sep = memchr(data, 0xFF, size);
    size_t vlen = sep ? (size_t)(sep - data) : size;
    fuzz_write("vocab.txt", data, vlen);
    char cfg[256];
    snprintf(cfg, sizeof(cfg), "%s/tokenizer_config.json", fuzz_dir());
    if (sep)
        fuzz_write("tokenizer_config.json", sep + 1, size - vlen - 1);
    else
        unlink(cfg);
    Tokenizer *t = tokenizer_load(fuzz_dir());
    if (t) {
        static const char text[] =
            "Hello [CLS] w\xc3\xb6rld, it's 2026!\n  \xe4\xb8\xad##x [MASK]\xe2\x80\x8b";
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
