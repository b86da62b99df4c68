/* mcq.h - zero-shot multiple-choice scoring as lm-evaluation-harness does it
 * (docs/eval.md has the conventions with their sources).
 *
 * Every item becomes one request (context, continuation) per choice; its
 * score is the log-likelihood of the continuation's tokens given the context:
 *   hellaswag   context = preprocess(activity_label + ": " + ctx_a + " " + capitalize(ctx_b)),
 *               continuation = " " + preprocess(ending)
 *   piqa        "Question: " + goal + "\nAnswer:"      / " " + sol1, " " + sol2
 *   arc         "Question: " + question + "\nAnswer:"  / " " + choices.text[i]
 *   winogrande  partial scoring: sentence[:blank] + option_i / " " + sentence[blank+1:].strip()
 *   generic     context / " " + choices[i]
 * Tokens: the context's trailing whitespace moves to the continuation; then
 * cont = encode(context + continuation)[len(encode(context)):] (encode adds the
 * tokenizer's BOS if it adds one, unless no_bos); inputs = (ctx + cont)[-(window + 1):][:-1], so a
 * context longer than the window is cut from the left ("truncated").
 * Metrics: acc = argmax ll; acc_norm = argmax ll / characters of the choice (lm-eval's
 * acc_norm); acc_bytes = argmax ll / UTF-8 bytes of the choice (lm-eval's acc_bytes).
 * WinoGrande reports acc only (as lm-eval). Requests of similar length are packed
 * into one forward (right padding, targets -1 outside the continuation).
 */
#ifndef ANVIL_EVAL_MCQ_H
#define ANVIL_EVAL_MCQ_H

#include "data/tokenizer.h"
#include "model/model.h"

typedef enum { MCQ_HELLASWAG, MCQ_PIQA, MCQ_ARC, MCQ_WINOGRANDE, MCQ_GENERIC } McqTask;

/* "hellaswag", "piqa", "arc", "winogrande", "generic"; -1 with err_set() if unknown. */
int mcq_task_parse(const char *name, McqTask *t);
const char *mcq_task_name(McqTask t);

typedef struct {
    int line;      /* 1-based line of the JSONL file */
    int n;         /* choices */
    int gold;      /* index of the right choice */
    char **ctx;    /* (n) request contexts (the same string for every choice but in WinoGrande) */
    char **cont;   /* (n) continuations, the target delimiter " " included */
    char **choice; /* (n) the choice text whose length normalizes acc_norm / acc_bytes */
} McqItem;

typedef struct {
    char *path;
    McqTask task;
    McqItem *items;
    int n;
    int skipped; /* malformed lines skipped (skip_bad) */
} McqSet;

/* Read a dataset's JSONL file (gzip when it ends in .gz); blank lines are ignored.
 * A malformed line is "FILE:LINE: what": with skip_bad it is printed as a warning on
 * stderr and counted in set->skipped, else -1 with err_set(). limit > 0 keeps the
 * first `limit` items. */
int mcq_load(const char *path, McqTask task, int limit, int skip_bad, McqSet *set);
void mcq_set_free(McqSet *set);

typedef struct {
    int ctx;    /* window (<= the model's max_seq_len) */
    int batch;  /* rows per forward at a full window; shorter requests pack batch*ctx tokens */
    int no_bos; /* encode without special tokens (lm-eval add_bos_token=False; default: the
                 * tokenizer's own, as lm-eval 0.4.13's add_bos_token=None) */
} McqOptions;

typedef struct {
    int items, requests; /* scored */
    int truncated;       /* scored items whose context was cut from the left */
    int too_long;        /* items not scored: a continuation alone exceeds the window */
    int has_norm;        /* acc_norm, acc_bytes defined (every task but WinoGrande) */
    double acc, acc_norm, acc_bytes;
    long tokens; /* input tokens of all requests (without padding) */
    double seconds;
    /* per item of the set (n_items); predictions are -1 for the items not scored */
    int n_items;
    double **ll; /* [item][choice] */
    int *pred, *pred_norm, *pred_bytes, *item_truncated, *item_too_long;
} McqResult;

/* Score every item. Reserves the model's activations for batch x ctx if they do not
 * fit already (recompute level 2 when none exist: no backward follows). An item with a
 * continuation longer than the window cannot be scored (lm-eval stops there): it is left
 * out and counted in too_long. -1 with err_set() on bad options or when no item fits. */
int mcq_score(Model *m, const Tokenizer *tok, const McqSet *set, const McqOptions *o, McqResult *r);
void mcq_result_free(McqResult *r);

/* Exposed for tests: HellaSwag's preprocess() and Python's str.capitalize() / str.strip(),
 * returning malloc'd strings. */
char *mcq_hellaswag_preprocess(const char *s);
char *mcq_py_capitalize(const char *s);
char *mcq_py_strip(const char *s);

#endif
