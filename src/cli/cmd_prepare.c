/* cmd_prepare.c - `anvil prepare`: text / JSONL -> token shards (src/data/prepare.c).
 *
 *   anvil prepare --tokenizer T --input PATH... --out DIR [--val-fraction F]
 *                 [--jsonl-field text] [--threads N] [--docs file|blank|line]
 *                 [--shard-tokens N] [--seed S] [--overwrite] [--no-progress]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/error.h"
#include "data/prepare.h"

/* llm.c's shard size: 100M tokens (200 MB of uint16) per shard. */
#define DEFAULT_SHARD_TOKENS 100000000ULL
#define DEFAULT_SPLIT_SEED 1337

static void prepare_usage(FILE *f)
{
    fprintf(f,
            "usage: anvil prepare --tokenizer T --input PATH... --out DIR [options]\n"
            "  --tokenizer T        gpt2, byte, a tokenizer.json, or a model directory\n"
            "  --input PATH...      text or JSONL files (.gz too), directories (recursive: .txt .md .jsonl)\n"
            "  --out DIR            writes DIR/train/shard_*.tok, DIR/val/shard_*.tok, DIR/manifest.json\n"
            "  --val-fraction F     fraction of documents for validation (default 0)\n"
            "  --jsonl-field NAME   text field of JSON records (default text): .jsonl/.ndjson files hold one\n"
            "                       record per line; a .json file holds an array of records or strings\n"
            "                       (or JSONL)\n"
            "  --docs MODE          plain text documents: file (a whole file, default), blank (blank-line\n"
            "                       separated paragraphs), line (every non-empty line)\n"
            "  --threads N          tokenizer threads (default: all cores)\n"
            "  --shard-tokens N     tokens per shard (default 100000000)\n"
            "  --seed S             seed of the train/val split (default %d)\n"
            "  --overwrite          replace an earlier prepare's output in DIR\n"
            "  --no-progress        no progress bar (it is shown only when stderr is a terminal)\n",
            DEFAULT_SPLIT_SEED);
}

static int parse_u64(const char *flag, const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || s[0] == '-')
        return err_set("prepare: %s: expected a non-negative integer, got \"%s\"", flag, s);
    *out = v;
    return 0;
}

int cmd_prepare(int argc, char **argv)
{
    PrepareOptions o = {.jsonl_field = "text",
                        .doc_mode = PREP_DOCS_FILE,
                        .shard_tokens = DEFAULT_SHARD_TOKENS,
                        .seed = DEFAULT_SPLIT_SEED,
                        .progress = isatty(2)};
    const char **inputs = xcalloc((size_t)argc + 1, sizeof(char *));
    int n_in = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        uint64_t v = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            prepare_usage(stdout);
            free(inputs);
            return 0;
        } else if (!strcmp(a, "--tokenizer") && has)
            o.tokenizer = argv[++i];
        else if (!strcmp(a, "--input") && has) {
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2)) inputs[n_in++] = argv[++i];
        } else if (!strcmp(a, "--out") && has)
            o.out_dir = argv[++i];
        else if (!strcmp(a, "--val-fraction") && has) {
            char *end;
            o.val_fraction = strtod(argv[++i], &end);
            if (*end || o.val_fraction < 0 || o.val_fraction > 1)
                fatal("prepare: --val-fraction: expected a number in [0, 1], got \"%s\"", argv[i]);
        } else if (!strcmp(a, "--jsonl-field") && has) {
            o.jsonl_field = argv[++i];
            o.jsonl_field_given = 1;
        }
        else if (!strcmp(a, "--docs") && has) {
            const char *m = argv[++i];
            if (!strcmp(m, "file"))
                o.doc_mode = PREP_DOCS_FILE;
            else if (!strcmp(m, "blank"))
                o.doc_mode = PREP_DOCS_BLANK;
            else if (!strcmp(m, "line"))
                o.doc_mode = PREP_DOCS_LINE;
            else
                fatal("prepare: --docs: expected file, blank or line, got \"%s\"", m);
        } else if (!strcmp(a, "--threads") && has) {
            if (parse_u64(a, argv[++i], &v) || v > 1024) fatal_err();
            o.threads = (int)v;
        } else if (!strcmp(a, "--shard-tokens") && has) {
            if (parse_u64(a, argv[++i], &v) || v == 0)
                fatal("prepare: --shard-tokens: expected a positive integer");
            o.shard_tokens = v;
        } else if (!strcmp(a, "--seed") && has) {
            if (parse_u64(a, argv[++i], &v)) fatal_err();
            o.seed = v;
        } else if (!strcmp(a, "--overwrite"))
            o.overwrite = 1;
        else if (!strcmp(a, "--no-progress"))
            o.progress = 0;
        else {
            fprintf(stderr, "anvil: prepare: unknown or incomplete option \"%s\"\n", a);
            prepare_usage(stderr);
            free(inputs);
            return 1;
        }
    }
    if (!o.tokenizer || !n_in || !o.out_dir) {
        fprintf(stderr, "anvil: prepare: need --tokenizer, --input and --out\n");
        prepare_usage(stderr);
        free(inputs);
        return 1;
    }
    o.inputs = inputs;
    o.n_inputs = n_in;
    PrepareStats st;
    int rc = prepare_run(&o, &st);
    free(inputs);
    if (rc && st.signal) { /* the message, then die of the signal as the shell expects */
        fprintf(stderr, "anvil: %s\n", err_get());
        signal(st.signal, SIG_DFL);
        raise(st.signal);
    }
    if (rc) fatal_err();
    int threads = o.threads > 0 ? o.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    fprintf(stderr,
            "prepare: %llu files, %llu documents (%llu val), %llu tokens: train %llu in %d shards, val %llu "
            "in %d "
            "shards; %.1f MB in %.3f s (%.1f MB/s, %d threads) -> %s\n",
            (unsigned long long)st.files, (unsigned long long)st.docs, (unsigned long long)st.docs_val,
            (unsigned long long)(st.tokens_train + st.tokens_val), (unsigned long long)st.tokens_train,
            st.shards_train, (unsigned long long)st.tokens_val, st.shards_val, (double)st.bytes_in / 1e6,
            st.seconds, st.seconds > 0 ? (double)st.bytes_in / st.seconds / 1e6 : 0.0, threads, o.out_dir);
    return 0;
}
