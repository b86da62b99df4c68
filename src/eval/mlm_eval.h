/* mlm_eval.h - masked-LM evaluation of an encoder (`anvil eval mlm`, docs/encoders.md).
 *
 * Two sources:
 *   text (a file, tokenized): windows of the token stream in the tokenizer's template ([CLS] ...
 *     [SEP]) of up to T ids, the last one shorter (padded), masked as training masks them
 *     (data/mlm.h) from --seed: row k draws from stream (seed, k), so a seed fixes the masking;
 *   pre-masked JSONL: one object per line with "input_ids" and "labels" (negative, e.g. -100 =
 *     not scored), optionally "attention_mask" (ones, then zeros: right padding), scored as given.
 * The loss is the mean cross-entropy over every scored label; the accuracy the share of scored
 * labels that are the logits' argmax (the first maximum).
 */
#ifndef ANVIL_EVAL_MLM_EVAL_H
#define ANVIL_EVAL_MLM_EVAL_H

#include <stdint.h>

#include "data/mlm.h"
#include "model/model.h"

typedef struct {
    long rows, scored, correct;
    double loss_sum;
} MlmEvalResult;

typedef struct {
    int T;     /* ids per row (text), or the longest row accepted (JSONL) */
    int batch; /* rows per forward (results do not depend on it) */
    uint64_t seed;
} MlmEvalOptions;

/* Score B rows of up to T ids (labels negative where not scored, lengths NULL = all T), adding to r. */
void mlm_eval_batch(Model *m, const int32_t *inputs, const int32_t *labels, const int32_t *lengths, int B,
                    int T, MlmEvalResult *r);
/* The text source: ids (n, no template), masked with o (and opt->seed). -1 with err_set() on failure. */
int mlm_eval_text(Model *m, const MlmOptions *o, const int32_t *ids, size_t n, const MlmEvalOptions *opt,
                  MlmEvalResult *r);
/* Pre-masked JSONL at path. -1 with err_set() naming the file, line and field. */
int mlm_eval_jsonl(Model *m, const char *path, const MlmEvalOptions *opt, MlmEvalResult *r);

#endif
