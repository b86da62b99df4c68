/* fuzz_sft.c - SFT records (JSONL) and chat-template strings on arbitrary bytes.
 *
 * The first byte picks a tokenizer and a template: the byte tokenizer, or the chat fixtures'
 * byte-level (Qwen2 style), sentencepiece (LLaMA-2 style) and Phi-3 style (rstrip tokens)
 * tokenizers, each with every family, so the renderers and the token/text alignment meet odd text.
 * The rest is read as JSONL records and, as a whole, as a Jinja chat_template string for the
 * recogniser (rendering a fixed conversation when it is accepted). */
#include "fuzz_common.h"

#include "core/error.h"
#include "data/chat.h"
#include "data/sft.h"
#include "data/tokenizer.h"

static const char *const TOKS[] = {"byte", "tests/fixtures/chat/chatml_qwen2", "tests/fixtures/chat/llama2",
                                   "tests/fixtures/chat/phi3"};
static const char *const TEMPLATES[] = {"none", "",       "chatml", "llama2", "llama3",
                                        "mistral", "zephyr", "gemma", "phi3"};
#define N_TOKS (sizeof(TOKS) / sizeof(TOKS[0]))
#define N_TEMPLATES (sizeof(TEMPLATES) / sizeof(TEMPLATES[0]))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static Tokenizer *tok[N_TOKS];
    static SftEncoder *enc[N_TOKS][N_TEMPLATES][2];
    if (!tok[0]) {
        for (size_t i = 0; i < N_TOKS; i++) {
            if (!(tok[i] = tokenizer_load(TOKS[i]))) fatal_err();
            for (size_t j = 0; j < N_TEMPLATES; j++)
                for (int all = 0; all < 2; all++) {
                    SftOptions o = {.chat_template = TEMPLATES[j], .train_on_all = all};
                    enc[i][j][all] = sft_encoder_new(tok[i], TOKS[i], &o); /* NULL: this pair is refused */
                }
        }
    }
    if (!size) return 0;
    unsigned pick = data[0];
    SftEncoder *e = enc[pick % N_TOKS][(pick / N_TOKS) % N_TEMPLATES][(pick >> 7) & 1];
    data++, size--;
    SftExample x = {0};
    for (size_t p = 0; e && p < size;) {
        const uint8_t *nl = memchr(data + p, '\n', size - p);
        size_t end = nl ? (size_t)(nl - data) : size;
        if (sft_encode_json(e, (const char *)data + p, end - p, &x) == 0)
            for (size_t i = 0; i < x.n; i++)
                if (x.ids[i] < 0 || x.mask[i] > 1) abort();
        p = end + 1;
    }
    sft_example_free(&x);
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    ChatTemplate ct;
    if (chat_template_detect(s, "fuzz", &ct) == 0) {
        ChatMessage m[3] = {{ROLE_SYSTEM, "S", 1}, {ROLE_USER, " u ", 3}, {ROLE_ASSISTANT, "a\n", 2}};
        ChatText t = {0};
        for (int first = 0; first < 2; first++)
            if (chat_render(&ct, m + first, 3 - first, "<s>", "</s>", &t) == 0)
                for (int k = 0; k < t.n_spans; k++)
                    if (t.spans[k].start > t.spans[k].end || t.spans[k].end > t.len) abort();
        chat_text_free(&t);
    }
    chat_template_free(&ct);
    free(s);
    return 0;
}
