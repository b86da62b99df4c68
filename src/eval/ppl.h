/* ppl.h - perplexity of a token sequence with a fixed-length model, by the
 * sliding-window procedure of the Hugging Face guide "Perplexity of
 * fixed-length models" (docs/eval.md):
 *
 *   for begin in 0, stride, 2*stride, ...:
 *       end = min(begin + ctx, n);  trg_len = end - prev_end
 *       window = ids[begin:end]; its labels before the last trg_len are ignored
 *       (and, as the model shifts labels, the window's first token is never scored)
 *       prev_end = end; stop after the window that reaches n
 *
 * so every window scores only tokens that no earlier window scored, each with
 * as much context as its window gives; with stride = ctx the first token of
 * every window goes unscored. The reported NLL is the mean over exactly the
 * scored tokens. (The guide's own loop weights each window's mean by
 * trg_len - 1, which differs slightly when windows overlap; that number is
 * reported too, as hf_doc_nll.) Windows run `batch` at a time.
 */
#ifndef ANVIL_EVAL_PPL_H
#define ANVIL_EVAL_PPL_H

#include <stddef.h>
#include <stdint.h>

#include "data/tokenizer.h"
#include "model/model.h"

typedef struct {
    int ctx;    /* window length (<= the model's max_seq_len) */
    int stride; /* 1 <= stride <= ctx */
    int batch;  /* windows per forward */
} PplOptions;

typedef struct {
    uint64_t tokens;   /* scored */
    double nll_sum;    /* nats */
    double nll, ppl;   /* mean NLL per scored token, exp(nll) */
    uint64_t bytes;    /* UTF-8 bytes of the scored tokens (tokenizer given), else 0 */
    double bpb;        /* bits per byte: nll_sum / ln 2 / bytes */
    double hf_doc_nll; /* the guide's loop: sum_w mean_w * (trg_len_w - 1) / sum_w (trg_len_w - 1) */
    uint64_t hf_doc_tokens;
    int windows;
} PplResult;

/* Evaluate ids[0..n) (n >= 2). With tok, also counts the bytes of the scored
 * tokens (for bits per byte). Reserves the model's activations for batch x ctx
 * (recompute level 2: no backward follows). -1 with err_set() on bad options, and when
 * the mean NLL or the perplexity is not finite (NaN or overflow). */
int ppl_run(Model *m, const int32_t *ids, size_t n, const PplOptions *o, const Tokenizer *tok, PplResult *r);

#endif
