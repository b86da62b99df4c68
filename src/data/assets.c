/* assets.c - the GPT-2 vocabulary files, embedded into the binary at build time
 * so that `--tokenizer gpt2` works from any working directory.
 *
 * The paths are relative to the repository root, where make runs the compiler.
 * Source: assets/gpt2/ (OpenAI GPT-2 release, MIT license in assets/gpt2/LICENSE).
 */
#define INCBIN(sym, file)                                                                                    \
    __asm__(".section .rodata\n"                                                                             \
            ".global " #sym "\n"                                                                             \
            ".balign 16\n" #sym ":\n"                                                                        \
            ".incbin \"" file "\"\n"                                                                         \
            ".global " #sym "_end\n" #sym "_end:\n"                                                          \
            ".byte 0\n"                                                                                      \
            ".previous\n")

INCBIN(anvil_gpt2_encoder_json, "assets/gpt2/encoder.json");
INCBIN(anvil_gpt2_vocab_bpe, "assets/gpt2/vocab.bpe");
