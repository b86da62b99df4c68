/* loader.h - batches of token windows for training and evaluation.
 *
 * CONTRACT used by the training loop (src/train). The data module owns the
 * implementation and may extend this header, but not change these meanings.
 *
 * A loader yields batches of B windows of T+1 consecutive tokens:
 * inputs[b*T + t] = w[t], targets[b*T + t] = w[t+1]. The source `spec` is a
 * shard directory, a shard glob, a single shard (.bin from llm.c or anvil's
 * own format), or a text file tokenized on the fly with `tokenizer`.
 * With shuffle on, the order of windows is a deterministic permutation per
 * epoch derived from `seed`; with rank/world, rank r sees windows r, r+world,
 * ... of that order, so ranks never overlap. The state (epoch, position) is
 * small, so checkpoints store it and a resumed run sees exactly the next batch.
 */
#ifndef ANVIL_DATA_LOADER_H
#define ANVIL_DATA_LOADER_H

#include <stdint.h>

typedef struct DataLoader DataLoader;
struct SftOptions;

typedef struct {
    int B, T;
    uint64_t seed;
    int shuffle; /* 1 for training; the validation loader passes 0 */
    int rank, world;
    const char *tokenizer; /* for text sources: "gpt2", "byte", tokenizer.json, model dir */
    const struct SftOptions *sft; /* non-NULL: the source is SFT JSONL (data.format: sft, sft.h) */
    /* non-NULL: masked-LM rows (data.objective: mlm, mlm.h): window k is stream tokens
     * [k*W, k*W + W) with W = T less the template's ids, wrapped ([CLS] ... [SEP]) and masked from
     * stream (seed, global window index); targets -1 where not scored */
    const struct MlmOptions *mlm;
} LoaderOptions;

typedef struct {
    uint64_t epoch;
    uint64_t pos; /* windows (SFT: examples) consumed in this epoch by this rank */
} LoaderState;

/* Open; NULL with err_set() naming the file on failure. */
DataLoader *loader_open(const char *spec, const LoaderOptions *opt);
/* Fill inputs and targets (B*T each). Wraps to the next epoch at the end.
 * -1 with err_set() on a read error. */
int loader_next(DataLoader *dl, int32_t *inputs, int32_t *targets);
LoaderState loader_state(const DataLoader *dl);
int loader_set_state(DataLoader *dl, LoaderState st);
/* Back to epoch 0, position 0 (validation passes start here). */
void loader_reset(DataLoader *dl);
/* Total tokens in the source, and the number of distinct windows per epoch for this rank. */
uint64_t loader_num_tokens(const DataLoader *dl);
uint64_t loader_windows_per_epoch(const DataLoader *dl);
/* Largest token id + 1 that may appear (the tokenizer's vocab, or the shard header's). */
int loader_vocab_size(const DataLoader *dl);
/* Identity of the tokenizer the shards were made with ("gpt2", "byte", "hf:<hash>"), or ""
 * for text sources and llm.c shards. */
const char *loader_tokenizer_identity(const DataLoader *dl);
void loader_close(DataLoader *dl);

#endif
