/* main.c - `anvil <command> [args]` dispatch. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

#define ANVIL_VERSION "0.1.0"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"train", cmd_train, "train CONFIG.yaml [--set key=value ...] [--resume RUN_DIR]"},
    {"launch", cmd_launch, "launch --nproc N [--device cpu|cuda] -- train CONFIG.yaml ...: N ranks on this node"},
    {"prepare", cmd_prepare, "prepare --tokenizer T --input PATH... --out DIR: text/JSONL -> token shards"},
    {"tokenize", cmd_tokenize, "tokenize --tokenizer T (--text S | --file F) [--out F.u32] [--decode]"},
    {"eval", cmd_eval, "eval (ppl | mcq | mlm) --model DIR ...: perplexity, zero-shot multiple choice, masked LM"},
    {"embed", cmd_embed, "embed --model DIR (--text S | --file F) [--pooling mean|cls]: sentence embeddings as JSON"},
    {"generate", cmd_generate, "generate --model DIR --prompt S: sample text with a KV cache"},
    {"inspect", cmd_inspect, "inspect PATH [--save OUT_DIR [--dtype f32|bf16]]: a model directory or .safetensors file"},
    {"plan", cmd_plan, "plan --model PRESET_OR_DIR [--method full|lora|qlora|ternary] --batch B --seq T: memory and GPUs"},
    {"merge", cmd_merge, "merge --model BASE --adapter DIR --out MERGED: fold a LoRA adapter into its base"},
    {"quantize", cmd_quantize, "quantize --model DIR --quant nf4|fp4 --out DIR4: bitsandbytes 4-bit layout"},
    {"bench", cmd_bench, "bench --model PRESET_OR_DIR [--device cuda]: step time, tokens/s, MFU, memory"},
    {"report", cmd_report, "report RUN_DIR [RUN_DIR ...] [--out DIR]: plots and a summary; --tensorboard RUN_DIR"},
    {"cost", cmd_cost, "cost [--bench FILE.json|RUN_DIR ...] [--tokens N] [--price GPU=USD_PER_HOUR]: time and money"},
};

static void usage(FILE *f)
{
    fprintf(f, "anvil %s - train, fine-tune and evaluate transformer language models\n\nusage:\n", ANVIL_VERSION);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  anvil %s\n", commands[i].help);
    fprintf(f, "\nRun `anvil COMMAND --help` for a command's options; docs/ has the details.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return argc < 2 ? 1 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("anvil %s\n", ANVIL_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "anvil: unknown command \"%s\" (try `anvil --help`)\n", argv[1]);
    return 1;
}
