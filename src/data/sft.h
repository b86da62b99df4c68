/* sft.h - instruction data (data.format: sft): JSONL conversations -> examples of token ids with
 * a scored mask -> B x T rows of (inputs, targets) for the trainer.
 *
 * A record (one JSON object per line; blank lines skipped) is either
 *   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   or
 *   {"prompt": "...", "completion": "..."}.
 * With a chat template in effect (data.chat_template names a family, or the tokenizer's
 * tokenizer_config.json has one that chat.h recognises) messages are rendered with it and
 * a prompt/completion record is one user turn + one assistant turn; the scored tokens are those
 * whose text overlaps an assistant span (chat.h: content + end-of-turn marker), as transformers'
 * return_assistant_tokens_mask computes from token offsets. Without a template (data.chat_template:
 * none, or a tokenizer without one) only prompt/completion records are accepted, encoded as TRL's
 * SFTTrainer does: ids = [BOS when the tokenizer adds one] + encode(prompt + completion) + [EOS]
 * (no EOS added when the completion already ends with the EOS text), the first
 * len([BOS] + encode(prompt)) ids unscored. data.train_on: all scores every token.
 *
 * Batching: one example per row, right-padded (no packing: examples sharing a row would attend to
 * each other without per-example attention segments, which the backends do not have; docs/sft.md).
 * Row b: inputs[b*T + t] = ids[t], targets[b*T + t] = ids[t+1] when token t+1 is scored, else -1;
 * positions past the example hold the pad id (EOS, or 0) with target -1. Examples longer than
 * T + 1 tokens keep their first T + 1 (the end is cut, with its end-of-turn token); examples with
 * no scored target left are dropped; both are counted in the line printed when the loader opens.
 * Order: a per-epoch shuffle of the examples keyed by (seed, epoch); rank r of world takes
 * positions r, r + world, ... of it; the state (epoch, pos) is LoaderState's, so a resumed run
 * sees exactly the next batch.
 */
#ifndef ANVIL_DATA_SFT_H
#define ANVIL_DATA_SFT_H

#include <stddef.h>
#include <stdint.h>

#include "data/loader.h"
#include "data/tokenizer.h"

typedef struct SftOptions {
    const char *chat_template; /* "" or NULL: the tokenizer's own; "none"; or chatml|llama2|... */
    int train_on_all;          /* data.train_on: all (else completion/assistant tokens only) */
    int pack;                  /* data.pack: not supported yet (an error) */
} SftOptions;

/* One encoded example: n ids and, per id, 1 when it is scored (as a target). */
typedef struct {
    int32_t *ids;
    uint8_t *mask;
    size_t n, cap;
} SftExample;

typedef struct SftEncoder SftEncoder;

/* An encoder for records tokenized with tok; tok_spec (a directory or tokenizer.json, or NULL) is
 * where the tokenizer's chat template is looked for. NULL with err_set() on a bad option or an
 * unrecognised template. tok must outlive the encoder. */
SftEncoder *sft_encoder_new(const Tokenizer *tok, const char *tok_spec, const SftOptions *o);
void sft_encoder_free(SftEncoder *e);
/* "chat template llama3 (DIR/tokenizer_config.json: chat_template)", "no chat template", ... */
const char *sft_encoder_describe(const SftEncoder *e);
/* Encode one JSONL line (len bytes) into *out (reset first). 0, 1 for a blank line, or -1 with
 * err_set("field: problem") naming the field (messages[2].role, prompt, ...). */
int sft_encode_json(SftEncoder *e, const char *line, size_t len, SftExample *out);
void sft_example_free(SftExample *x);

/* ---- the loader (reached through loader_open with LoaderOptions.sft set) ------------------- */

typedef struct SftLoader SftLoader;

typedef struct {
    uint64_t records;   /* JSONL records read */
    uint64_t examples;  /* kept */
    uint64_t truncated; /* longer than T + 1 tokens, cut */
    uint64_t dropped;   /* no scored target (after truncation) */
    uint64_t tokens, scored;
} SftStats;

/* Read and encode the whole file (JSONL, .gz too). NULL with err_set("FILE:LINE: field: ...").
 * Prints one summary line to stdout. */
SftLoader *sft_loader_open(const char *path, const LoaderOptions *opt);
int sft_loader_next(SftLoader *l, int32_t *inputs, int32_t *targets);
LoaderState sft_loader_state(const SftLoader *l);
int sft_loader_set_state(SftLoader *l, LoaderState st);
void sft_loader_reset(SftLoader *l);
uint64_t sft_loader_num_tokens(const SftLoader *l);
uint64_t sft_loader_examples_per_epoch(const SftLoader *l);
int sft_loader_vocab_size(const SftLoader *l);
SftStats sft_loader_stats(const SftLoader *l);
void sft_loader_close(SftLoader *l);

#endif
