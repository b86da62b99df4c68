/* prepare.h - text / JSONL corpora -> token shards (`anvil prepare`).
 *
 * Pipeline: one reader thread cuts the inputs into chunks of documents,
 * N worker threads tokenize chunks, the calling thread writes them in input
 * order, so the output is identical for any thread count. Layout of DIR:
 *   DIR/train/shard_000000.tok ...   DIR/val/shard_000000.tok ...   DIR/manifest.json
 * Every document is followed by the tokenizer's end-of-text id (and preceded
 * by BOS when the tokenizer's post-processor adds one, as LLaMA's does).
 * Shards hold exactly shard_tokens tokens (the last of each split fewer);
 * documents run across shard boundaries. docs/data.md has the details.
 */
#ifndef ANVIL_DATA_PREPARE_H
#define ANVIL_DATA_PREPARE_H

#include <stdint.h>

/* How plain-text files are cut into documents. */
enum {
    PREP_DOCS_FILE,  /* a whole file is one document (the default) */
    PREP_DOCS_BLANK, /* documents are separated by blank lines */
    PREP_DOCS_LINE,  /* every non-empty line is a document */
};

typedef struct {
    const char *tokenizer;     /* gpt2, byte, tokenizer.json, model directory */
    const char *const *inputs; /* files or directories (searched recursively) */
    int n_inputs;
    const char *out_dir;
    double val_fraction;     /* fraction of documents (by hash) that go to val/ */
    uint64_t seed;           /* of the train/val split */
    const char *jsonl_field; /* text field of JSONL records ("text") */
    int jsonl_field_given;   /* 1: the user named it (an error when no input is JSON) */
    int doc_mode;            /* PREP_DOCS_* for plain text */
    int threads;             /* tokenizer threads (<= 0: all cores) */
    uint64_t shard_tokens;   /* tokens per shard */
    int overwrite;           /* replace an earlier prepare's output in out_dir */
    int progress;            /* 1: progress bar on stderr (the CLI passes isatty(2)) */
} PrepareOptions;

typedef struct {
    uint64_t files, docs, docs_val, tokens_train, tokens_val, bytes_in;
    int shards_train, shards_val;
    double seconds;
    int signal; /* the SIGINT / SIGTERM that stopped the run, else 0 */
} PrepareStats;

/* Run; -1 with err_set() naming the file (and line) on failure, in which case
 * nothing of this run is left behind: no shard, no temp file, no directory it
 * created. An input without text, and a --val-fraction that gives an empty
 * split, are errors. On SIGINT/SIGTERM the run stops the same way and reports
 * the signal in stats->signal (the caller may then re-raise it). */
int prepare_run(const PrepareOptions *opt, PrepareStats *stats);

#endif
